//! Tier 3: fast mode (`advbase_ms`, docs/protocol.md §2 "Fast mode (advbase 0)")
//! with two controllers, each its own process in its own namespace, on the lab
//! topology: both VHIDs at `advbase_ms = 50`, fw1 advskew 0, fw2 advskew 100
//! (fw2's master-down interval: 3 × 50 ms + 50 ms × 100/256 = 169.5 ms).
//!
//! Bounds are correctness bounds, generous for a loaded 2-core VM (a takeover
//! well within 500 ms, no takeover in a 10 s steady run); tight numbers belong
//! to the benchmarks.

use std::path::Path;
use std::time::{Duration, Instant};

use carp_tests::lab::{vmac, LabOptions, NodeParams, Router, Switch, LAN_VHID, LAN_VIP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::node::{carp_bin, vhid_state};
use carp_tests::pair::{metric_value, serial, Pair};
use carp_tests::watch::{arp_census, describe_tenures, tenures, vmac_overlaps, Capture, Frame};
use carp_user::wire::carp;

const ADVBASE_MS: u64 = 50;
/// fw2's master-down interval: 3 × 50 ms + 50 ms × 100/256.
const FW2_MASTER_DOWN: Duration = Duration::from_micros(169_531);
/// The generous bound on a hard failover (kill -9, link down).
const TAKEOVER_BOUND: Duration = Duration::from_millis(500);
/// A fast master's frames are at most one interval (50 ms) apart; 120 ms
/// keeps a tenure whole on a loaded machine without joining two tenures
/// across a takeover (which leaves a gap of a master-down interval).
const TENURE_GAP: Duration = Duration::from_millis(120);
/// As in failover.rs: the old master's frames may go on this long after the
/// new master's first one (a preemption race inside one host).
const CROSSING: Duration = Duration::from_millis(5);

/// Rewrites a lab config into fast mode: every `advbase = N` line becomes
/// `advbase_ms = 50` (the lab writes one per VHID).
fn to_fast_mode(path: &Path) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = String::new();
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with("advbase = ") {
            out.push_str(&format!("advbase_ms = {ADVBASE_MS}\n"));
            n += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(n, 2, "expected one advbase line per VHID in:\n{text}");
    std::fs::write(path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// [`Pair::standard`] in fast mode: fw1 advskew 0 started first, fw2 advskew
/// 100; returns once fw1 is MASTER of both VHIDs and fw2 BACKUP.
fn fast_pair() -> Pair {
    let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
    let mut pair = Pair::new(LabOptions::default(), params).expect("building the lab");
    for r in Router::ALL {
        to_fast_mode(&pair.config_path(r));
    }
    pair.start_standard();
    pair
}

/// `carp_transitions_total` summed over every series of both nodes.
fn transitions(pair: &Pair) -> u64 {
    Router::ALL
        .into_iter()
        .map(|r| pair.transitions(r).values().sum::<u64>())
        .sum()
}

/// A CARP advert in a captured frame, parsed (and its checksum checked) by
/// carp-user's codec.
fn advert(f: &Frame) -> Option<carp::Repr> {
    let b = &f.bytes;
    if b.get(12..14) != Some(&[0x08, 0x00]) || b.get(23) != Some(&112) {
        return None;
    }
    let ihl = usize::from(b[14] & 0x0f) * 4;
    carp::Repr::parse_bytes(b.get(14 + ihl..)?).ok()
}

/// (arrival, advert) of the adverts `router` sent on `sw` for `vhid`.
fn adverts_of(
    frames: &[Frame],
    sw: Switch,
    router: Router,
    vhid: u8,
) -> Vec<(Instant, carp::Repr)> {
    frames
        .iter()
        .filter(|f| f.switch == sw && f.router == router)
        .filter_map(|f| advert(f).map(|a| (f.at, a)))
        .filter(|(_, a)| a.vhid == vhid)
        .collect()
}

/// Panics if a virtual MAC came from both routers' ports at once.
fn assert_one_vmac_port_at_a_time(pair: &Pair, frames: &[Frame], t0: Instant, what: &str) {
    let overlaps = vmac_overlaps(frames, TENURE_GAP, CROSSING);
    assert!(
        overlaps.is_empty(),
        "{what}: a virtual MAC came from both routers at once ({} overlaps); tenures:\n{}\n{}",
        overlaps.len(),
        describe_tenures(&tenures(frames, TENURE_GAP), t0),
        pair.logs()
    );
}

/// One reply per broadcast ARP request for the LAN VIP, from `master`'s port
/// and the virtual MAC (counted on the LAN switch).
fn assert_single_arp_answerer(pair: &Pair, master: Router, what: &str) {
    let census = arp_census(&pair.lab, LAN_VIP, 5, Duration::from_millis(50))
        .expect("ARP census on the LAN switch");
    if let Err(e) = census.check_single(master, vmac(LAN_VHID)) {
        panic!("{what}: {e}\n{}", pair.logs());
    }
}

/// When `r` last changed state, from its status (`last_transition_secs_ago`
/// of `vhid`), at the latest.
fn last_transition(pair: &mut Pair, r: Router, vhid: u8) -> Instant {
    let st = pair.node(r).status_json(Duration::from_secs(2));
    let after = Instant::now();
    let v = st["vhids"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["id"] == vhid))
        .unwrap_or_else(|| panic!("no VHID {vhid} in {st}"));
    let ago = v["last_transition_secs_ago"]
        .as_f64()
        .unwrap_or_else(|| panic!("no last transition in {v}"));
    after - Duration::from_secs_f64(ago)
}

/// Waits until `r` is MASTER of both VHIDs (the status is polled, so the
/// time it returns is late by a poll; the takeover time comes from the
/// status' own record, [`last_transition`]).
fn wait_master(pair: &mut Pair, r: Router, within: Duration) {
    for vhid in [LAN_VHID, WAN_VHID] {
        let ok = pair.node(r).wait_for_state(vhid, "MASTER", within);
        assert!(ok, "{} never took VHID {vhid}\n{}", r.name(), pair.logs());
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn fast_mode_holds_steady_and_takes_over_after_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = fast_pair();

    // Status and metrics show the fast base; the wire carries advbase 0.
    for r in Router::ALL {
        let st = pair.node(r).status_json(Duration::from_secs(3));
        for v in st["vhids"].as_array().expect("vhids") {
            assert_eq!(v["advbase"], 0, "{}: {v}", r.name());
            assert_eq!(v["advbase_ms"], ADVBASE_MS, "{}: {v}", r.name());
        }
        let m = pair.metrics(r);
        assert!(
            m.lines()
                .any(|l| l == "carp_vhid_advbase_seconds{vhid=\"1\",interface=\"lan0\"} 0.05"),
            "{}: carp_vhid_advbase_seconds missing or wrong:\n{m}",
            r.name()
        );
    }

    // 10 s steady: no transition on either node, fw1's adverts every ~50 ms
    // with advbase 0, never a gap the backup would take for a dead master.
    let received = |pair: &Pair, result: &str| {
        metric_value(
            &pair.metrics(Router::Fw2),
            &format!(
                "carp_adverts_received_total{{vhid=\"1\",interface=\"lan0\",result=\"{result}\"}}"
            ),
        )
    };
    let ok_before = received(&pair, "ok");
    let before = transitions(&pair);
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let t0 = capture.started();
    std::thread::sleep(Duration::from_secs(10));
    let frames = capture.stop().expect("capture");
    let after = transitions(&pair);
    assert_eq!(
        after,
        before,
        "transitions during a 10 s steady run\n{}",
        pair.logs()
    );
    assert_one_vmac_port_at_a_time(&pair, &frames, t0, "steady state");
    assert!(
        frames
            .iter()
            .all(|f| f.router == Router::Fw1 || f.vmac_vhid().is_none()),
        "fw2 sent from a virtual MAC while BACKUP\n{}",
        describe_tenures(&tenures(&frames, TENURE_GAP), t0)
    );
    for (sw, vhid) in [(Switch::Lan, LAN_VHID), (Switch::Wan, WAN_VHID)] {
        let ads = adverts_of(&frames, sw, Router::Fw1, vhid);
        assert!(
            ads.len() >= 160,
            "VHID {vhid}: {} adverts from fw1 in 10 s, expected ~200",
            ads.len()
        );
        assert!(
            ads.iter().all(|(_, a)| a.advbase == 0 && a.advskew == 0),
            "VHID {vhid}: fw1's adverts must say advbase 0, advskew 0: {:?}",
            ads.iter()
                .map(|(_, a)| (a.advbase, a.advskew))
                .collect::<Vec<_>>()
        );
        let mut gaps: Vec<Duration> = ads.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort();
        let median = gaps[gaps.len() / 2];
        let max = *gaps.last().expect("gaps");
        eprintln!(
            "fast mode, VHID {vhid}: {} adverts in 10 s, interval median {:.2} ms, max {:.2} ms",
            ads.len(),
            ms(median),
            ms(max)
        );
        assert!(
            (Duration::from_millis(45)..=Duration::from_millis(60)).contains(&median),
            "VHID {vhid}: median advert interval {:.2} ms, expected ~50",
            ms(median)
        );
        assert!(
            max < FW2_MASTER_DOWN,
            "VHID {vhid}: an advert gap of {:.1} ms reached fw2's master-down interval",
            ms(max)
        );
    }
    // fw2 heard them all as fast-mode adverts, none over the XDP budget.
    let ok = received(&pair, "ok") - ok_before;
    assert!(ok >= 160, "fw2 accepted {ok} adverts in 10 s");
    assert_eq!(received(&pair, "fast_mode_mismatch"), 0);
    assert_eq!(pair.xdp_counter(Router::Fw2, "lan0", "carp_over_budget"), 0);
    assert_single_arp_answerer(&pair, Router::Fw1, "steady state");

    // kill -9 of the master: fw2 takes over after its master-down interval.
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let t0 = capture.started();
    let probe = pair.probe_through(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    wait_master(&mut pair, Router::Fw2, Duration::from_secs(3));
    let took = last_transition(&mut pair, Router::Fw2, LAN_VHID);
    let rep = probe.wait().expect("probe");
    std::thread::sleep(Duration::from_millis(200));
    let frames = capture.stop().expect("capture");
    let after_kill = took.saturating_duration_since(killed);
    // On the wire: fw1's last LAN advert to fw2's first.
    let last_fw1 = adverts_of(&frames, Switch::Lan, Router::Fw1, LAN_VHID)
        .into_iter()
        .filter(|(_, a)| !a.is_bow_out())
        .map(|(at, _)| at)
        .max()
        .expect("fw1 advertised before the kill");
    let first_fw2 = adverts_of(&frames, Switch::Lan, Router::Fw2, LAN_VHID)
        .into_iter()
        .map(|(at, a)| {
            assert_eq!((a.advbase, a.advskew), (0, 100), "fw2's advert");
            at
        })
        .min()
        .expect("fw2 advertised after the takeover");
    let wire_gap = first_fw2.saturating_duration_since(last_fw1);
    eprintln!(
        "fast mode kill -9: fw2 MASTER {:.1} ms after the kill (status), adverts fw1 -> fw2 {:.1} ms apart \
         (master-down {:.1} ms); {rep}",
        ms(after_kill),
        ms(wire_gap),
        ms(FW2_MASTER_DOWN)
    );
    assert!(
        after_kill < TAKEOVER_BOUND,
        "fw2 took over {:.1} ms after the kill\n{}",
        ms(after_kill),
        pair.logs()
    );
    assert!(
        wire_gap < TAKEOVER_BOUND,
        "{:.1} ms from fw1's last advert to fw2's first",
        ms(wire_gap)
    );
    // Not before fw2's master-down interval (less the wire's jitter): it
    // waited for the master to be gone.
    assert!(
        wire_gap + Duration::from_millis(10) >= FW2_MASTER_DOWN,
        "fw2 took over {:.1} ms after fw1's last advert, before its master-down interval",
        ms(wire_gap)
    );
    assert!(
        rep.max_gap < TAKEOVER_BOUND && rep.duplicates == 0 && rep.received > 0,
        "client -> server through the VIPs across the kill: {rep}"
    );
    assert_one_vmac_port_at_a_time(&pair, &frames, t0, "kill -9");
    assert_single_arp_answerer(&pair, Router::Fw2, "after kill -9");

    // A restarted fw1 (the better node, preempt on) takes both VHIDs back.
    pair.start(Router::Fw1);
    pair.wait_roles(Router::Fw1, Duration::from_secs(5));
    assert_single_arp_answerer(&pair, Router::Fw1, "after preempting back");
}

#[test]
fn fast_mode_link_down_moves_both_vhids() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = fast_pair();
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let t0 = capture.started();
    let probe = pair.probe_through(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let down = Instant::now();
    pair.lab.set_link(Router::Fw1, "lan0", false).unwrap();
    // LAN: fw1 goes INIT and falls silent, fw2 takes over after its
    // master-down interval; WAN: fw1's demotion (advskew 240) makes fw2
    // preempt at once.
    wait_master(&mut pair, Router::Fw2, Duration::from_secs(3));
    let lan = last_transition(&mut pair, Router::Fw2, LAN_VHID).saturating_duration_since(down);
    let wan = last_transition(&mut pair, Router::Fw2, WAN_VHID).saturating_duration_since(down);
    let rep = probe.wait().expect("probe");
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(2));
    assert_eq!(vhid_state(&st, LAN_VHID).as_deref(), Some("INIT"), "{st}");
    assert_eq!(vhid_state(&st, WAN_VHID).as_deref(), Some("BACKUP"), "{st}");
    eprintln!(
        "fast mode link down: fw2 MASTER of LAN after {:.1} ms, of WAN after {:.1} ms; {rep}",
        ms(lan),
        ms(wan)
    );
    assert!(
        lan < TAKEOVER_BOUND && wan < TAKEOVER_BOUND,
        "{:.1} / {:.1} ms\n{}",
        ms(lan),
        ms(wan),
        pair.logs()
    );
    assert!(
        rep.max_gap < TAKEOVER_BOUND && rep.duplicates == 0,
        "client -> server through the VIPs across the link loss: {rep}"
    );

    pair.lab.set_link(Router::Fw1, "lan0", true).unwrap();
    pair.wait_roles(Router::Fw1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let frames = capture.stop().expect("capture");
    assert_one_vmac_port_at_a_time(&pair, &frames, t0, "link down and up");
    assert_single_arp_answerer(&pair, Router::Fw1, "after the link came back");
}

/// `carp check` (no root needed): `advbase` and `advbase_ms` together are
/// refused with the field and the reason; `advbase_ms` alone is accepted.
#[test]
fn check_refuses_advbase_with_advbase_ms() {
    let dir = std::env::temp_dir().join(format!("{}fast", carp_tests::netns::unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let vhid = "[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"secret\"\n";
    let check = |name: &str, extra: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("[node]\nname = \"fw1\"\n{vhid}{extra}")).unwrap();
        std::process::Command::new(carp_bin())
            .args(["check", "-c"])
            .arg(&p)
            .output()
            .unwrap()
    };
    let out = check("both.toml", "advbase = 1\nadvbase_ms = 50\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "vhid[0].advbase_ms: advbase and advbase_ms are mutually exclusive: \
         set advbase (whole seconds) or advbase_ms (fast mode), not both"
    );
    let out = check("range.toml", "advbase_ms = 5\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "vhid[0].advbase_ms: 5 is out of range 10..=999"
    );
    let out = check("fast.toml", "advbase_ms = 50\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
