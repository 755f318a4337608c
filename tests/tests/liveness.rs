//! Tier 3: timing and link state that do not depend on other work going well.
//!
//! - A master whose adverts fail (here: an nftables `netdev` egress rule on its
//!   `lan0` dropping protocol 112, which makes the `AF_PACKET` send fail with
//!   ENOBUFS) stops answering at its dead-man deadline: the deadline moves only
//!   with adverts that were sent (`carp-user/src/deadman.rs`).
//! - Link monitoring (`carp-user/src/linkwatch.rs`): lost link notifications
//!   (netlink overrun) are repaired by reading every CARP interface again; a
//!   deleted CARP interface puts its VHIDs in INIT; a re-created one stops the
//!   controller with a clear message.
//!
//! Each test was checked failing before its fix (see the test's comment).

use std::time::{Duration, Instant};

use carp_tests::lab::{vmac, Router, Switch, LAN_NET_PREFIX, LAN_VHID, LAN_VIP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{serial, Pair};
use carp_tests::watch::arp_census;

const ARP_REQUESTS: usize = 5;

fn census(pair: &Pair) -> carp_tests::watch::ArpCensus {
    arp_census(&pair.lab, LAN_VIP, ARP_REQUESTS, Duration::from_millis(50))
        .expect("ARP census on the LAN switch")
}

fn nft(pair: &Pair, r: Router, script: &str) {
    Pair::sh(pair.router_ns(r), &["nft", script]);
}

fn vhid_status(st: &serde_json::Value, vhid: u8) -> serde_json::Value {
    st["vhids"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == vhid))
        .cloned()
        .unwrap_or_default()
}

/// fw1 is MASTER; its LAN adverts start failing at T0. Its last advert left
/// within a second before T0, so it answers ARP for the VIP until at least
/// T0 + 2 s and not after last advert + 3 s; fw2, hearing nothing, takes over
/// at ~T0 + 3.4 s. At T0 + 5 s only fw2 may answer. Before the fix (the
/// deadline was written when the election asked to advertise, sent or not),
/// fw1 kept answering: two answerers on the census at T0 + 5 s (checked).
#[test]
fn failing_adverts_stop_the_master_answering_at_its_deadline() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let dropped_before = pair.xdp_counter(Router::Fw1, "lan0", "arp_dropped_not_master");
    nft(&pair, Router::Fw1, "add table netdev carpt_block");
    nft(
        &pair,
        Router::Fw1,
        "add chain netdev carpt_block out { type filter hook egress device lan0 priority 0; }",
    );
    nft(
        &pair,
        Router::Fw1,
        "add rule netdev carpt_block out ip protocol 112 drop",
    );
    let t0 = Instant::now();

    // Within the deadline fw1 still answers, alone.
    std::thread::sleep(Duration::from_millis(800));
    let early = census(&pair);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the early census ran late ({:?})",
        t0.elapsed()
    );
    if let Err(e) = early.check_single(Router::Fw1, vmac(LAN_VHID)) {
        panic!("before the deadline: {e}\n{}", pair.logs());
    }

    // fw2 takes over after its master-down interval.
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", Duration::from_secs(6)),
        "fw2 never took over\n{}",
        pair.logs()
    );
    let settle = Duration::from_secs(5).saturating_sub(t0.elapsed());
    std::thread::sleep(settle);
    let late = census(&pair);
    if let Err(e) = late.check_single(Router::Fw2, vmac(LAN_VHID)) {
        panic!(
            "after fw1's deadline only fw2 may answer: {e}\n{}",
            pair.logs()
        );
    }
    // fw1's controller still believes it is MASTER (it hears only a slower
    // master); its data path does not: ARP requests are dropped as not master.
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    let lan = vhid_status(&st, LAN_VHID);
    assert_eq!(lan["state"], "MASTER", "{st}");
    assert!(
        lan["master_expires_in_ms"]
            .as_i64()
            .is_some_and(|ms| ms < 0),
        "the MASTER entry must have expired: {st}"
    );
    let metrics = pair.metrics(Router::Fw1);
    let errors = carp_tests::pair::metric_value(
        &metrics,
        &format!("carp_adverts_send_errors_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\"}}"),
    );
    assert!(errors >= 3, "send errors counted: {errors}\n{metrics}");
    let dropped = pair.xdp_counter(Router::Fw1, "lan0", "arp_dropped_not_master");
    assert!(
        dropped >= dropped_before + ARP_REQUESTS as u64,
        "fw1's XDP drops the requests as not master: {dropped_before} -> {dropped}"
    );
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("advert not sent: the dead-man deadline was not moved"),
        "{log}"
    );

    // Adverts leave again: fw1's deadline moves, fw2 hears the better master
    // and steps back.
    nft(&pair, Router::Fw1, "delete table netdev carpt_block");
    pair.wait_roles(Router::Fw1, Duration::from_secs(6));
    let back = census(&pair);
    if let Err(e) = back.check_single(Router::Fw1, vmac(LAN_VHID)) {
        panic!("after recovery: {e}\n{}", pair.logs());
    }
}

/// Toggles a non-CARP link in `r`'s namespace often enough to overrun a
/// stopped controller's link-notification socket.
fn flood_link_events(pair: &Pair, r: Router) {
    let ns = pair.router_ns(r);
    let _ = ns.exec_unchecked(["ip", "link", "del", "noise0"]);
    Pair::sh(
        ns,
        &[
            "ip", "link", "add", "noise0", "type", "veth", "peer", "name", "noise1",
        ],
    );
    let mut batch = String::new();
    for _ in 0..1500 {
        batch.push_str("link set noise0 up\nlink set noise0 down\n");
    }
    let path = pair.dir.join("noise.batch");
    std::fs::write(&path, batch).expect("writing the ip batch");
    Pair::sh(ns, &["ip", "-batch", path.to_str().expect("utf-8 path")]);
}

/// fw1's controller is stopped while so many link notifications arrive that
/// its socket overruns, and only then does lan0 go down (that notification is
/// lost). After SIGCONT it must read the link state again: LAN VHID INIT,
/// demotion 240, fw2 MASTER of both. Then the same with lan0 coming back up:
/// the missed link-up must not leave the VHID in INIT. Before the fix the
/// overrun was ignored and fw1 stayed MASTER of the LAN VHID with
/// `link_up: true` (checked).
#[test]
fn lost_link_notifications_are_read_again() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();

    pair.node(Router::Fw1).sigstop().unwrap();
    flood_link_events(&pair, Router::Fw1);
    pair.lab.set_link(Router::Fw1, "lan0", false).unwrap();
    pair.node(Router::Fw1).sigcont().unwrap();
    assert!(
        pair.node(Router::Fw1)
            .wait_for_state(LAN_VHID, "INIT", Duration::from_secs(3)),
        "the lost link-down was never noticed\n{}",
        pair.logs()
    );
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(st["demotion"], 240, "{st}");
    assert_eq!(vhid_status(&st, LAN_VHID)["link_up"], false, "{st}");
    for v in [LAN_VHID, WAN_VHID] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(v, "MASTER", Duration::from_secs(6)),
            "VHID {v}\n{}",
            pair.logs()
        );
    }
    let log = pair.node(Router::Fw1).log();
    assert!(log.contains("netlink overrun"), "{log}");

    pair.node(Router::Fw1).sigstop().unwrap();
    flood_link_events(&pair, Router::Fw1);
    pair.lab.set_link(Router::Fw1, "lan0", true).unwrap();
    pair.node(Router::Fw1).sigcont().unwrap();
    pair.wait_roles(Router::Fw1, Duration::from_secs(10));
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(st["demotion"], 0, "{st}");
}

/// fw1's lan0 is deleted: its LAN VHID goes INIT and the demotion hands the
/// WAN VHID to fw2. A new lan0 (new ifindex, no XDP) makes fw1's controller
/// stop in order and exit non-zero with a message naming it; started again,
/// it runs on the new lan0 and takes both VHIDs back. Before the fix the
/// re-created lan0 was ignored and fw1 sat in INIT for ever, running
/// (checked).
#[test]
fn deleted_carp_interface_goes_init_and_a_new_one_stops_the_controller() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let fw1 = pair.router_ns(Router::Fw1).name().to_owned();
    let lan = pair.lab.switch(Switch::Lan).name().to_owned();

    Pair::sh(pair.router_ns(Router::Fw1), &["ip", "link", "del", "lan0"]);
    for v in [LAN_VHID, WAN_VHID] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(v, "MASTER", Duration::from_secs(6)),
            "VHID {v}\n{}",
            pair.logs()
        );
    }
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(vhid_status(&st, LAN_VHID)["state"], "INIT", "{st}");
    assert_eq!(vhid_status(&st, WAN_VHID)["state"], "BACKUP", "{st}");
    assert_eq!(st["demotion"], 240, "{st}");
    assert!(
        pair.node(Router::Fw1)
            .log()
            .contains("CARP interface deleted"),
        "{}",
        pair.logs()
    );

    // The same cable, plugged in again: a new veth named lan0.
    let fw1_ns = pair.router_ns(Router::Fw1);
    Pair::sh(
        fw1_ns,
        &[
            "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "fw1", "netns", &lan,
        ],
    );
    let sw = pair.lab.switch(Switch::Lan);
    Pair::sh(sw, &["ip", "link", "set", "fw1", "master", "br0"]);
    Pair::sh(sw, &["ip", "link", "set", "fw1", "up"]);
    Pair::sh(
        fw1_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/{LAN_NET_PREFIX}", Router::Fw1.lan_ip()),
            "dev",
            "lan0",
        ],
    );
    Pair::sh(fw1_ns, &["ip", "link", "set", "lan0", "up"]);
    let status = pair.node(Router::Fw1).wait_exit(Duration::from_secs(8));
    let log = pair.node(Router::Fw1).log();
    let status = status.unwrap_or_else(|| panic!("fw1 ({fw1}) kept running\n{log}"));
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(log.contains("CARP interface lan0 was re-created"), "{log}");

    pair.start(Router::Fw1);
    pair.wait_roles(Router::Fw1, Duration::from_secs(10));
}
