//! Tier 3: live configuration reload on SIGHUP, two controllers in the lab
//! topology. A bad file or a change that needs a restart is refused with the
//! field and the reason, and the controller keeps its last good state; a valid
//! one is applied without a restart.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use carp_tests::lab::{format_mac, vmac, NodeParams, Router, LAN_VHID, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{metric_value, ping3, serial, Pair};
use carp_tests::watch::{arp_census, ArpCensus};

const T_ELECT: Duration = Duration::from_secs(10);
/// A reload is handled by the controller's event loop within milliseconds;
/// this only bounds a stuck one.
const T_RELOAD: Duration = Duration::from_secs(5);
/// A VIP that the lab does not configure, in the LAN.
const EXTRA_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

const REFUSED: &str = r#"carp_config_reloads_total{result="refused"}"#;
const APPLIED: &str = r#"carp_config_reloads_total{result="applied"}"#;

/// Writes `text` as `r`'s config file (what an operator edits before SIGHUP).
fn write_config(pair: &Pair, r: Router, text: &str) {
    let path = pair.config_path(r);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `r`'s config as the lab writes it, with the LAN VHID's addresses replaced.
fn config_with_lan_addresses(pair: &Pair, r: Router, addresses: &[&str]) -> String {
    let params = &pair.params[r as usize];
    let text = pair.lab.router_config(r, params);
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let old = "addresses = [\"10.77.0.1/24\"]";
    assert!(text.contains(old), "unexpected lab config:\n{text}");
    text.replacen(old, &format!("addresses = [{}]", list.join(", ")), 1)
}

/// Sends SIGHUP to `r` and waits until the reload counter `series` reaches `want`.
fn sighup_and_wait(pair: &mut Pair, r: Router, series: &str, want: u64) {
    pair.node(r)
        .sighup()
        .unwrap_or_else(|e| panic!("SIGHUP to {}: {e:#}", r.name()));
    let deadline = Instant::now() + T_RELOAD;
    loop {
        let got = metric_value(&pair.metrics(r), series);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {series} is {got}, expected {want} within {T_RELOAD:?}\n{}",
            r.name(),
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `carp_transitions_total` of `r`, summed over the series of the LAN and
/// WAN VHIDs.
fn transitions(pair: &Pair, r: Router) -> u64 {
    let ours = [(LAN_VHID, "lan0"), (WAN_VHID, "wan0")]
        .map(|(vhid, dev)| format!("{{vhid=\"{vhid}\",interface=\"{dev}\",to="));
    pair.transitions(r)
        .into_iter()
        .filter(|(labels, _)| ours.iter().any(|p| labels.starts_with(p.as_str())))
        .map(|(_, v)| v)
        .sum()
}

fn assert_still_running(pair: &mut Pair, r: Router) {
    assert!(
        !pair.node(r).is_exited(),
        "{} exited after SIGHUP\n{}",
        r.name(),
        pair.logs()
    );
}

/// `advskew` of VHID `vhid` in `r`'s status JSON.
fn status_advskew(pair: &mut Pair, r: Router, vhid: u8) -> u64 {
    let st = pair.node(r).status_json(Duration::from_secs(3));
    st["vhids"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["id"] == u64::from(vhid)))
        .and_then(|v| v["advskew"].as_u64())
        .unwrap_or_else(|| panic!("no advskew for VHID {vhid} in {st}"))
}

fn holder_addresses(pair: &Pair, r: Router) -> String {
    Pair::sh(
        pair.router_ns(r),
        &["ip", "-4", "addr", "show", "dev", "carp0"],
    )
}

#[test]
fn reload_refuses_a_broken_config_and_keeps_running_as_master() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let before = transitions(&pair, Router::Fw1);
    let good = pair.lab.router_config(Router::Fw1, &pair.params[0]);
    assert!(good.contains("advskew = 0"), "{good}");
    write_config(
        &pair,
        Router::Fw1,
        &good.replacen("advskew = 0", "advskew = 300", 1),
    );
    sighup_and_wait(&mut pair, Router::Fw1, REFUSED, 1);
    // Longer than a master-down interval: a reload that broke anything would show.
    std::thread::sleep(Duration::from_millis(3500));
    assert_still_running(&mut pair, Router::Fw1);
    // `carp status` reads the (broken) file too, so ask the metrics first.
    let m = pair.metrics(Router::Fw1);
    for series in [
        r#"carp_vhid_state{vhid="1",interface="lan0"}"#,
        r#"carp_vhid_state{vhid="2",interface="wan0"}"#,
    ] {
        assert_eq!(metric_value(&m, series), 2, "{series} not MASTER:\n{m}");
    }
    write_config(&pair, Router::Fw1, &good);
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    assert_eq!(
        transitions(&pair, Router::Fw1),
        before,
        "a refused reload must not move anything\n{}",
        pair.logs()
    );
    let m = pair.metrics(Router::Fw1);
    assert_eq!(metric_value(&m, APPLIED), 0, "{m}");
    assert_eq!(status_advskew(&mut pair, Router::Fw1, LAN_VHID), 0);
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("config reload refused: vhid[0].advskew"),
        "the log must name the field:\n{log}"
    );
}

#[test]
fn reload_of_a_worse_advskew_hands_both_vhids_over() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    pair.set_params(Router::Fw1, NodeParams::with_advskew(200))
        .expect("rewriting fw1's config");
    let t0 = Instant::now();
    sighup_and_wait(&mut pair, Router::Fw1, APPLIED, 1);
    // fw1 advertises advskew 200 at once; fw2 (100, preempt) takes over on it.
    pair.wait_roles(Router::Fw2, Duration::from_secs(4));
    let took = t0.elapsed();
    assert_still_running(&mut pair, Router::Fw1);
    for vhid in [LAN_VHID, WAN_VHID] {
        assert_eq!(status_advskew(&mut pair, Router::Fw1, vhid), 200);
    }
    let m = pair.metrics(Router::Fw1);
    assert_eq!(metric_value(&m, REFUSED), 0, "{m}");
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("config reloaded: vhid 1 on lan0: advskew 0 -> 200"),
        "summary missing:\n{log}"
    );
    eprintln!("handover after reload: {took:?}");
}

#[test]
fn reload_adds_and_removes_a_vip() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let client = pair.lab.client().name().to_owned();

    // Not there yet: nobody answers.
    let c = census(&pair, EXTRA_VIP, 2);
    assert_eq!(
        c.total(),
        0,
        "{EXTRA_VIP} answered before it was configured: {c:?}"
    );

    for r in Router::ALL {
        let text = config_with_lan_addresses(&pair, r, &["10.77.0.1/24", "10.77.0.2/24"]);
        write_config(&pair, r, &text);
        sighup_and_wait(&mut pair, r, APPLIED, 1);
    }
    for r in Router::ALL {
        assert!(
            holder_addresses(&pair, r).contains("10.77.0.2/32"),
            "{}: {EXTRA_VIP}/32 missing on the holder\n{}",
            r.name(),
            pair.logs()
        );
    }
    // The master alone answers ARP for it, from the virtual MAC, once per
    // request (counted per switch port: a second answerer would show).
    if let Err(e) = census(&pair, EXTRA_VIP, 3).check_single(Router::Fw1, vmac(LAN_VHID)) {
        panic!("{EXTRA_VIP}: {e}\n{}", pair.logs());
    }
    assert!(pair.xdp_counter(Router::Fw1, "lan0", "arp_replied") >= 3);
    assert_eq!(pair.xdp_counter(Router::Fw2, "lan0", "arp_replied"), 0);
    // And the client reaches it (the master's kernel answers the ping).
    let ping = ping3(pair.lab.client(), EXTRA_VIP);
    assert!(
        ping.status.success(),
        "ping {EXTRA_VIP} from {client} failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // Both nodes agree on the VIP list (it is in the digest): once both have
    // reloaded, fw2 accepts every advert of fw1's. (One advert sent between the
    // two reloads may have been refused, as between two BSD nodes.)
    let bad = |pair: &Pair| {
        metric_value(
            &pair.metrics(Router::Fw2),
            "carp_adverts_received_total{vhid=\"1\",interface=\"lan0\",result=\"bad_digest\"}",
        )
    };
    let before = bad(&pair);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(bad(&pair), before, "digests still differ\n{}", pair.logs());
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));

    // Removed again: no answer, no /32.
    for r in Router::ALL {
        let text = config_with_lan_addresses(&pair, r, &["10.77.0.1/24"]);
        write_config(&pair, r, &text);
        sighup_and_wait(&mut pair, r, APPLIED, 2);
    }
    for r in Router::ALL {
        let addrs = holder_addresses(&pair, r);
        assert!(
            !addrs.contains("10.77.0.2/32"),
            "{}: {EXTRA_VIP}/32 still on the holder:\n{addrs}",
            r.name()
        );
        assert!(addrs.contains("10.77.0.1/32"), "{}: {addrs}", r.name());
    }
    // The client's neighbour entry would let a ping through without ARP.
    let _ = pair
        .lab
        .client()
        .exec_unchecked(["ip", "neigh", "flush", "dev", "eth0"]);
    let c = census(&pair, EXTRA_VIP, 2);
    assert_eq!(
        c.total(),
        0,
        "{EXTRA_VIP} still answered after its removal: {c:?}"
    );
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
}

#[test]
fn reload_refuses_a_new_metrics_listen_as_needing_a_restart() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let before = transitions(&pair, Router::Fw1);
    // Written directly: `pair.metrics` keeps reading the running port.
    let moved = NodeParams {
        metrics_listen: Some("127.0.0.1:9702".into()),
        ..pair.params[0].clone()
    };
    let text = pair.lab.router_config(Router::Fw1, &moved);
    write_config(&pair, Router::Fw1, &text);
    sighup_and_wait(&mut pair, Router::Fw1, REFUSED, 1);
    assert_still_running(&mut pair, Router::Fw1);
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    assert_eq!(transitions(&pair, Router::Fw1), before);
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("config reload refused: node.metrics_listen:")
            && log.contains("needs a restart"),
        "the log must name the field and say why:\n{log}"
    );
}

/// A third VHID on the LAN, as both nodes would add it.
const VHID3_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

fn config_with_vhid3(pair: &Pair, r: Router, advskew: u8) -> String {
    let params = &pair.params[r as usize];
    format!(
        "{}\n[[vhid]]\nid = 3\ninterface = \"lan0\"\naddresses = [\"{VHID3_VIP}/24\"]\n\
         password = \"three\"\nadvskew = {advskew}\n",
        pair.lab.router_config(r, params)
    )
}

#[test]
fn reload_adds_a_vhid_and_a_removed_master_bows_out() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    for (r, skew) in [(Router::Fw1, 0), (Router::Fw2, 100)] {
        let text = config_with_vhid3(&pair, r, skew);
        write_config(&pair, r, &text);
        sighup_and_wait(&mut pair, r, APPLIED, 1);
    }
    // A new VHID starts like at start-up: BACKUP, then the better node wins.
    assert!(
        pair.node(Router::Fw1).wait_for_state(3, "MASTER", T_ELECT),
        "fw1 never became MASTER of VHID 3\n{}",
        pair.logs()
    );
    assert!(
        pair.node(Router::Fw2).wait_for_state(3, "BACKUP", T_ELECT),
        "fw2 is not BACKUP of VHID 3\n{}",
        pair.logs()
    );
    if let Err(e) = census(&pair, VHID3_VIP, 3).check_single(Router::Fw1, vmac(3)) {
        panic!("VHID 3's VIP: {e}\n{}", pair.logs());
    }
    let m = pair.metrics(Router::Fw1);
    assert_eq!(
        metric_value(&m, r#"carp_vhid_state{vhid="3",interface="lan0"}"#),
        2,
        "{m}"
    );
    // The existing VHIDs did not move.
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));

    // Removed from the master only: it bows out, fw2 takes over at once
    // (not after a master-down interval).
    let text = pair.lab.router_config(Router::Fw1, &pair.params[0]);
    write_config(&pair, Router::Fw1, &text);
    let t0 = Instant::now();
    sighup_and_wait(&mut pair, Router::Fw1, APPLIED, 2);
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(3, "MASTER", Duration::from_millis(2500)),
        "fw2 did not take VHID 3 over after fw1's bow-out\n{}",
        pair.logs()
    );
    eprintln!("VHID 3 handed over {:?} after the reload", t0.elapsed());
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(st["vhids"].as_array().map(Vec::len), Some(2), "{st}");
    let m = pair.metrics(Router::Fw1);
    // Its series are gone. (An advert of fw2's that was already in the ring may
    // still be counted as `unknown_vhid`, truthfully.)
    for gone in [
        r#"carp_vhid_state{vhid="3""#,
        r#"carp_adverts_sent_total{vhid="3""#,
        r#"carp_transitions_total{vhid="3""#,
    ] {
        assert!(!m.contains(gone), "{gone} left on fw1:\n{m}");
    }
    let fdb = Pair::sh(
        pair.router_ns(Router::Fw1),
        &["bridge", "fdb", "show", "dev", "lan0", "self"],
    );
    assert!(
        !fdb.contains(&format_mac(vmac(3))),
        "fw1 kept VHID 3's vMAC in its unicast filter:\n{fdb}"
    );
    assert!(!holder_addresses(&pair, Router::Fw1).contains("10.77.0.3/32"));
    // fw2 answers alone now.
    if let Err(e) = census(&pair, VHID3_VIP, 3).check_single(Router::Fw2, vmac(3)) {
        panic!("VHID 3's VIP after the handover: {e}\n{}", pair.logs());
    }
    assert!(pair.xdp_counter(Router::Fw2, "lan0", "arp_replied") >= 3);
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
}

/// Broadcast ARP requests for `vip` from the client, replies counted per
/// switch port (`carp_tests::watch`): sees a second answerer, which `arping`
/// cannot.
fn census(pair: &Pair, vip: Ipv4Addr, requests: usize) -> ArpCensus {
    arp_census(&pair.lab, vip, requests, Duration::from_millis(50)).expect("ARP census")
}
