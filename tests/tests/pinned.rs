//! Tier 3: the data path outlives its controller (docs/design.md, "Pinned
//! data path"). Each router has its own bpffs in the host's mount namespace
//! (`Lab::bpffs`), so the XDP and TC links a controller pins there survive a
//! SIGKILL; the sync peer's hello tells the master when its backup would take
//! over, and the MASTER entries end just before that.
//!
//! Bounds are generous correctness bounds (a noisy 2-core VM); the tight
//! figures come from `cargo xtask bench failover`. Every scenario also checks,
//! over its whole window, that no two routers answered at once: vMAC frames
//! per switch port (`watch::vmac_overlaps`) and the ARP census.

use std::time::{Duration, Instant};

use carp_tests::lab::{LabOptions, NodeParams, Router, LAN_VHID, LAN_VIP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{serial, Pair};
use carp_tests::probe::ProbeReport;
use carp_tests::watch::{arp_census, describe_tenures, tenures, vmac_overlaps, Capture};

/// The outage a SIGKILL or SIGSTOP of the master's controller may cost here.
/// Unpinned it is the master-down interval (3.4 s); pinned without a sync
/// peer, the backup's skew (0.39 s); pinned with one, about the 2 ms margin.
const MAX_GAP: Duration = Duration::from_millis(150);

fn sync_pair(pinned: bool) -> Pair {
    let params = |advskew| NodeParams {
        sync: true,
        pinned,
        ..NodeParams::with_advskew(advskew)
    };
    let mut pair =
        Pair::new(LabOptions::default(), [params(0), params(100)]).expect("building the lab");
    pair.start_standard();
    // The master's deadlines move only once fw2's hello has arrived.
    wait_for_backup_hello(&mut pair);
    pair
}

/// Until fw1's status shows its sync peer up and reporting VHIDs.
fn wait_for_backup_hello(pair: &mut Pair) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let st = pair.node(Router::Fw1).status_json(Duration::from_secs(2));
        let expires = st["vhids"]
            .as_array()
            .and_then(|v| v.first())
            .and_then(|v| v["master_expires_in_ms"].as_i64())
            .unwrap_or(0);
        // 3 s + fw2's 100/256 s − 2 ms: beyond 3 s once the hello counts.
        if expires > 3_050 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "fw1's MASTER deadline never moved to fw2's takeover\n{}",
        pair.logs()
    );
}

/// No two switch ports carried one virtual MAC at once over the capture.
fn assert_no_two_answerers(pair: &Pair, capture: Capture, what: &str) {
    let t0 = capture.started();
    let frames = capture.stop().expect("capture on the switch ports");
    let overlaps = vmac_overlaps(
        &frames,
        Duration::from_millis(1500),
        Duration::from_millis(5),
    );
    assert!(
        overlaps.is_empty(),
        "{what}: a virtual MAC came from both routers at once; tenures:\n{}\n{}",
        describe_tenures(&tenures(&frames, Duration::from_millis(1500)), t0),
        pair.logs()
    );
}

fn assert_single_arp_answerer(pair: &Pair, master: Router, what: &str) {
    let census = arp_census(&pair.lab, LAN_VIP, 5, Duration::from_millis(50))
        .expect("ARP census on the LAN switch");
    if let Err(e) = census.check_single(master, carp_tests::lab::vmac(LAN_VHID)) {
        panic!("{what}: {e}\n{}", pair.logs());
    }
}

fn wait_master(pair: &mut Pair, r: Router, within: Duration) {
    for vhid in [LAN_VHID, WAN_VHID] {
        let ok = pair.node(r).wait_for_state(vhid, "MASTER", within);
        assert!(ok, "{} never took VHID {vhid}\n{}", r.name(), pair.logs());
    }
}

fn assert_gap(rep: &ProbeReport, what: &str, pair: &Pair) {
    eprintln!("{what}: {rep}");
    assert!(rep.duplicates == 0, "{what}: duplicates: {rep}");
    assert!(
        rep.max_gap < MAX_GAP,
        "{what}: outage {:?} (bound {MAX_GAP:?}): {rep}\n{}",
        rep.max_gap,
        pair.logs()
    );
}

fn link_has_xdp(pair: &Pair, r: Router, dev: &str) -> bool {
    Pair::sh(pair.router_ns(r), &["ip", "link", "show", "dev", dev]).contains("xdp")
}

/// kill -9 of the master's controller: its pinned program answers until
/// just before fw2 takes over, then falls silent; fw2 takes over; the outage
/// is milliseconds, and no instant has two answerers.
fn kill9_scenario(pinned: bool) {
    let _g = serial();
    let mut pair = sync_pair(pinned);
    assert_eq!(
        pair.lab.pins(Router::Fw1, "lan0"),
        ["tc_link", "vhids", "xdp_link_generic"],
        "fw1's pins\n{}",
        pair.logs()
    );
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let probe = pair.probe_through(Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(300));
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    wait_master(&mut pair, Router::Fw2, Duration::from_secs(6));
    let rep = probe.wait().expect("probe");
    assert_gap(&rep, "kill -9 of the master", &pair);
    // The dead controller's program is still attached, and silent.
    assert!(link_has_xdp(&pair, Router::Fw1, "lan0"));
    assert_single_arp_answerer(&pair, Router::Fw2, "after kill -9");
    assert_no_two_answerers(&pair, capture, "kill -9");
}

#[test]
fn kill9_of_the_master_costs_milliseconds_with_a_pinned_data_path() {
    if !require_root() {
        return;
    }
    kill9_scenario(true);
}

/// The same with the data path unpinned (it dies with the process): the
/// outage is the master-down interval, and the check above catches it.
#[test]
#[should_panic(expected = "outage")]
fn kill9_without_pins_is_caught_by_the_outage_check() {
    if !require_root() {
        panic!("outage check not run: not root");
    }
    let _g = serial();
    let mut pair = sync_pair(false);
    assert!(pair.lab.pins(Router::Fw1, "lan0").is_empty());
    let probe = pair.probe_through(Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(300));
    pair.node(Router::Fw1).kill9().unwrap();
    wait_master(&mut pair, Router::Fw2, Duration::from_secs(6));
    let rep = probe.wait().expect("probe");
    assert_gap(&rep, "kill -9 of an unpinned master", &pair);
}

#[test]
fn sigstop_of_the_master_costs_milliseconds() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = sync_pair(true);
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let probe = pair.probe_through(Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(300));
    pair.node(Router::Fw1).sigstop().unwrap();
    wait_master(&mut pair, Router::Fw2, Duration::from_secs(6));
    let rep = probe.wait().expect("probe");
    assert_gap(&rep, "SIGSTOP of the master", &pair);
    assert_single_arp_answerer(&pair, Router::Fw2, "while fw1 is stopped");
    // The window checked for two answerers ends before SIGCONT: the return
    // is a preemption like any other (failover.rs covers it).
    assert_no_two_answerers(&pair, capture, "SIGSTOP");
    pair.node(Router::Fw1).sigcont().unwrap();
    wait_master(&mut pair, Router::Fw1, Duration::from_secs(10));
}

/// A controller restarted right after a kill -9 takes the pinned links over
/// (same links, its own program swapped in) and keeps the dead one's MASTER
/// entries until their deadlines: no outage beyond the bound across the
/// kill and the restart. An orderly stop then removes every pin and the
/// attachments with them.
#[test]
fn a_restart_takes_the_pins_over_and_an_orderly_stop_removes_them() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = sync_pair(true);
    let link_ids = |pair: &Pair| {
        Pair::sh(
            pair.router_ns(Router::Fw1),
            &["ip", "-d", "link", "show", "dev", "lan0"],
        )
    };
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let probe = pair.probe_through(Duration::from_secs(8));
    std::thread::sleep(Duration::from_millis(300));
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    let before = link_ids(&pair);
    pair.start(Router::Fw1);
    let t0 = Instant::now();
    while !pair
        .node(Router::Fw1)
        .log()
        .contains("took over the pinned data path")
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = pair.node(Router::Fw1).log();
    assert!(
        log.contains("took over the pinned data path"),
        "the restarted fw1 did not take the pins over\n{}",
        pair.logs()
    );
    assert!(
        link_has_xdp(&pair, Router::Fw1, "lan0"),
        "{}",
        link_ids(&pair)
    );
    assert_ne!(
        before,
        link_ids(&pair),
        "the program in the link was not swapped"
    );
    let rep = probe.wait().expect("probe");
    assert_gap(&rep, "kill -9 and restart", &pair);
    // fw1 (the better node) is MASTER again in the end, alone.
    wait_master(&mut pair, Router::Fw1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200));
    assert_single_arp_answerer(&pair, Router::Fw1, "after the restart");
    assert_no_two_answerers(&pair, capture, "kill -9 and restart");

    pair.node(Router::Fw1).sigterm().unwrap();
    let st = pair.node(Router::Fw1).wait_exit(Duration::from_secs(6));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", pair.logs());
    for dev in ["lan0", "wan0"] {
        assert!(
            pair.lab.pins(Router::Fw1, dev).is_empty(),
            "pins of {dev} left after an orderly stop: {:?}",
            pair.lab.pins(Router::Fw1, dev)
        );
        assert!(
            !link_has_xdp(&pair, Router::Fw1, dev),
            "XDP left on {dev} after an orderly stop"
        );
    }
}
