//! Tier 3: two controllers, each its own process in its own namespace, on the
//! lab topology (client — LAN bridge — fw1/fw2 — WAN bridge — server).
//!
//! Bounds here are correctness bounds (a takeover happens, within a generous
//! limit); the failover numbers themselves come from `cargo xtask bench failover`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use carp_tests::lab::{format_mac, vmac, Router, Switch, CLIENT_IP, LAN_VHID, LAN_VIP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{in_netns, metric_value, ping3, serial, Pair};
use carp_tests::util::inet_checksum;
use carp_tests::watch::{
    arp_census, describe_frames, describe_tenures, late_bow_outs, tenures, vmac_overlaps, Capture,
    Frame,
};
use carp_user::packet::FrameSender;
use carp_user::wire::{carp, frame};

const T_ELECT: Duration = Duration::from_secs(10);

/// Waits until `r` is MASTER of the LAN VHID (within a master-down interval
/// and slack) and then of the WAN VHID.
fn wait_takeover(pair: &mut Pair, r: Router) {
    for (vhid, within) in [(LAN_VHID, 6), (WAN_VHID, 2)] {
        let ok = pair
            .node(r)
            .wait_for_state(vhid, "MASTER", Duration::from_secs(within));
        assert!(ok, "{} never took VHID {vhid}\n{}", r.name(), pair.logs());
    }
}

/// Broadcast ARP requests for the LAN VIP sent by [`assert_single_arp_answerer`].
const ARP_REQUESTS: usize = 5;

/// Exactly one reply per broadcast ARP request for the LAN VIP, all from
/// `master`'s switch port and from the virtual MAC: counted on the LAN
/// switch's router ports (`carp_tests::watch::arp_census`), so a second
/// answerer shows up as extra replies on the other port.
fn assert_single_arp_answerer(pair: &Pair, master: Router, what: &str) {
    let census = arp_census(&pair.lab, LAN_VIP, ARP_REQUESTS, Duration::from_millis(50))
        .expect("ARP census on the LAN switch");
    if let Err(e) = census.check_single(master, vmac(LAN_VHID)) {
        panic!("{what}: {e}\n{}", pair.logs());
    }
}

/// Frames of one master's tenure are at most one advbase (1 s) apart; 1.5 s
/// keeps a tenure whole without joining two tenures across a takeover.
const TENURE_GAP: Duration = Duration::from_millis(1500);

/// How long the old master's frames may go on after the new master's first
/// frame: the preemption race, where a master sends its scheduled advert
/// before it has received the better one's (seen here: a few µs, both in
/// the same millisecond). Anything longer, or a frame in the middle of the
/// other port's tenure, is two masters (`watch::vmac_overlaps`).
const CROSSING: Duration = Duration::from_millis(5);

/// Over a capture of the router ports of both switches: no two ports carried
/// frames from one virtual MAC in overlapping intervals (two masters at
/// once), and the last port to carry each VHID's vMAC is `master`'s.
fn assert_one_vmac_port_at_a_time(pair: &Pair, capture: Capture, master: Router, what: &str) {
    let t0 = capture.started();
    let frames = capture.stop().expect("capture on the switch ports");
    check_vmac_frames(pair, &frames, t0, master, what);
}

fn check_vmac_frames(pair: &Pair, frames: &[Frame], t0: Instant, master: Router, what: &str) {
    let ts = tenures(frames, TENURE_GAP);
    let shown = describe_tenures(&ts, t0);
    let overlaps = vmac_overlaps(frames, TENURE_GAP, CROSSING);
    if let Some((a, b)) = overlaps.first() {
        let from = a.first.max(b.first).saturating_duration_since(t0);
        let to = a.last.min(b.last).saturating_duration_since(t0);
        let around = describe_frames(
            frames,
            t0,
            from.saturating_sub(Duration::from_millis(50)),
            to + Duration::from_millis(50),
        );
        panic!(
            "{what}: a virtual MAC came from both routers at once ({} overlaps); tenures:\n{shown}\nframes around the first:\n{around}\n{}",
            overlaps.len(),
            pair.logs()
        );
    }
    for (sw, vhid) in [(Switch::Lan, LAN_VHID), (Switch::Wan, WAN_VHID)] {
        let last = ts
            .iter()
            .filter(|t| t.switch == sw && t.vhid == vhid)
            .max_by_key(|t| t.last);
        let last = last.unwrap_or_else(|| {
            panic!("{what}: no frame from the vMAC of VHID {vhid} on {sw:?}; tenures:\n{shown}")
        });
        assert_eq!(
            last.router, master,
            "{what}: VHID {vhid}'s vMAC last came from the wrong port; tenures:\n{shown}"
        );
    }
}

/// Captures for `window` (≥ 2 advertisements) and checks that only
/// `master`'s ports carried vMAC frames.
fn assert_vmac_port(pair: &Pair, master: Router, window: Duration) {
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    std::thread::sleep(window);
    let t0 = capture.started();
    let frames = capture.stop().expect("capture");
    check_vmac_frames(pair, &frames, t0, master, "steady state");
    let other: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.vmac_vhid().is_some() && f.router != master)
        .collect();
    assert!(
        other.is_empty(),
        "{} frames from a vMAC on {}'s ports, expected none",
        other.len(),
        master.other().name()
    );
}

#[test]
fn election_picks_the_better_node_and_xdp_is_the_only_answerer() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();

    for r in Router::ALL {
        let ns = pair.router_ns(r);
        // Group membership and the unicast filter, as a real NIC needs them.
        let maddr = Pair::sh(ns, &["ip", "maddr", "show", "dev", "lan0"]);
        assert!(
            maddr.contains("224.0.0.18"),
            "{}: 224.0.0.18 not joined on lan0:\n{maddr}",
            r.name()
        );
        let fdb = Pair::sh(ns, &["bridge", "fdb", "show", "dev", "lan0", "self"]);
        assert!(
            fdb.contains(&format_mac(vmac(LAN_VHID))),
            "{}: vMAC missing from lan0's unicast filter:\n{fdb}",
            r.name()
        );
        let fdb = Pair::sh(ns, &["bridge", "fdb", "show", "dev", "wan0", "self"]);
        assert!(
            fdb.contains(&format_mac(vmac(WAN_VHID))),
            "{}: vMAC missing from wan0's unicast filter:\n{fdb}",
            r.name()
        );
        let ign = Pair::sh(ns, &["sysctl", "-n", "net.ipv4.conf.lan0.arp_ignore"]);
        assert_eq!(ign.trim(), "1");
        let link = Pair::sh(ns, &["ip", "link", "show", "dev", "lan0"]);
        assert!(
            link.contains("xdpgeneric"),
            "{}: XDP not attached in generic mode on veth:\n{link}",
            r.name()
        );
        let st = pair.node(r).status_json(Duration::from_secs(3));
        assert_eq!(st["vhids"][0]["xdp_mode"], "generic");
    }

    // The client reaches the server through both VIPs (forwarding via the vMAC).
    let rep = pair
        .probe_through(Duration::from_millis(500))
        .wait()
        .expect("probe");
    assert!(
        rep.lost == 0 && rep.duplicates == 0,
        "client -> server through the VIPs: {rep}"
    );
    assert_single_arp_answerer(&pair, Router::Fw1, "steady state");
    assert_vmac_port(&pair, Router::Fw1, Duration::from_millis(2500));
    // The answers came from fw1's XDP program, none from fw2's.
    assert!(pair.xdp_counter(Router::Fw1, "lan0", "arp_replied") >= ARP_REQUESTS as u64);
    assert_eq!(pair.xdp_counter(Router::Fw2, "lan0", "arp_replied"), 0);
    // Every request was broadcast, so fw2's program saw (and dropped) each.
    assert!(pair.xdp_counter(Router::Fw2, "lan0", "arp_dropped_not_master") >= ARP_REQUESTS as u64);
    assert!(pair.xdp_counter(Router::Fw2, "lan0", "carp_advert") > 0);
    let m = pair.metrics(Router::Fw2);
    assert!(
        metric_value(
            &m,
            "carp_adverts_received_total{vhid=\"1\",interface=\"lan0\",result=\"ok\"}"
        ) > 0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "carp_vhid_state{vhid=\"1\",interface=\"lan0\"}"),
        1
    );
}

#[test]
fn kill9_of_the_master_moves_both_vhids_and_leaves_a_silent_node() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    // From before the fault to after the preemption back: one port at a time.
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let probe = pair.probe_through(Duration::from_secs(7));
    std::thread::sleep(Duration::from_millis(300));
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    wait_takeover(&mut pair, Router::Fw2);
    let rep = probe.wait().expect("probe");
    // The pinned data path answers until the dead-man deadline (3 s after
    // the last advert: without a sync peer fw1 does not know fw2's skew),
    // and fw2 takes over 100/256 s later; slack for a loaded machine
    // (pinned.rs has the millisecond case, with sync).
    assert!(
        rep.max_gap < Duration::from_millis(1500),
        "outage too long: {rep}"
    );
    assert!(rep.received > 0 && rep.duplicates == 0, "{rep}");
    // The dead node is silent: its pinned XDP program is still attached but
    // its MASTER entries have expired, and the kernel does not answer ARP.
    let link = Pair::sh(
        pair.router_ns(Router::Fw1),
        &["ip", "link", "show", "dev", "lan0"],
    );
    assert!(
        link.contains("xdp"),
        "the pinned XDP program must outlive the controller:\n{link}"
    );
    assert_single_arp_answerer(&pair, Router::Fw2, "after kill -9");
    let rep = pair
        .probe_through(Duration::from_millis(300))
        .wait()
        .expect("probe");
    assert!(rep.lost == 0, "after takeover: {rep}");

    // A restarted controller joins as any node does, and preempts back (it is better).
    pair.start(Router::Fw1);
    pair.wait_roles(Router::Fw1, T_ELECT);
    assert_single_arp_answerer(&pair, Router::Fw1, "after preempting back");
    // Another advertisement from the new master before the capture ends.
    std::thread::sleep(Duration::from_millis(1200));
    assert_one_vmac_port_at_a_time(&pair, capture, Router::Fw1, "kill -9 and back");

    // The restarted controller recognises the holder device the killed one made
    // (by its alias) and removes it on an orderly stop.
    pair.node(Router::Fw1).sigterm().unwrap();
    let st = pair.node(Router::Fw1).wait_exit(Duration::from_secs(6));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", pair.logs());
    let link = Pair::sh(pair.router_ns(Router::Fw1), &["ip", "link", "show"]);
    assert!(
        !link.contains("carp0"),
        "holder left behind after a restart:\n{link}"
    );
}

#[test]
fn sigstop_of_the_master_expires_its_entries_and_sigcont_converges() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    pair.node(Router::Fw1).sigstop().unwrap();
    wait_takeover(&mut pair, Router::Fw2);
    // fw1 is stalled but its XDP program still runs: its MASTER entries have
    // expired (dead-man switch), so it answers nothing.
    assert_single_arp_answerer(&pair, Router::Fw2, "while fw1 is stopped");
    let rep = pair
        .probe_through(Duration::from_millis(300))
        .wait()
        .expect("probe");
    assert!(
        rep.lost == 0 && rep.duplicates == 0,
        "while fw1 is stopped: {rep}"
    );

    pair.node(Router::Fw1).sigcont().unwrap();
    // One master again (fw1, the better one, preempts back).
    pair.wait_roles(Router::Fw1, T_ELECT);
    std::thread::sleep(Duration::from_millis(500));
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    assert_single_arp_answerer(&pair, Router::Fw1, "after SIGCONT");
    std::thread::sleep(Duration::from_millis(700));
    assert_one_vmac_port_at_a_time(&pair, capture, Router::Fw1, "SIGSTOP and SIGCONT");
}

#[test]
fn sigterm_bows_out_hands_over_and_cleans_up() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    let probe = pair.probe_through(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    pair.node(Router::Fw1).sigterm().unwrap();
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", Duration::from_secs(2)),
        "{}",
        pair.logs()
    );
    let handover = t0.elapsed();
    let st = pair
        .node(Router::Fw1)
        .wait_exit(Duration::from_secs(5))
        .expect("fw1 exits after SIGTERM");
    assert!(st.success(), "fw1 exit status {st:?}\n{}", pair.logs());
    let rep = probe.wait().expect("probe");
    // A bow-out hands over at once, not after a master-down interval.
    assert!(
        handover < Duration::from_secs(2),
        "bow-out handover took {handover:?}"
    );
    assert!(
        rep.max_gap < Duration::from_millis(500),
        "orderly stop lost too much: {rep}"
    );
    assert_eq!(rep.duplicates, 0);
    // It removed what it added.
    let ns = pair.router_ns(Router::Fw1);
    let addrs = Pair::sh(ns, &["ip", "-4", "addr", "show"]);
    assert!(
        !addrs.contains(&format!("{LAN_VIP}/32")),
        "VIP left behind:\n{addrs}"
    );
    let link = Pair::sh(ns, &["ip", "link", "show"]);
    assert!(
        !link.contains("xdp") && !link.contains("carp0"),
        "XDP or holder left behind:\n{link}"
    );
    let ign = Pair::sh(ns, &["sysctl", "-n", "net.ipv4.conf.lan0.arp_ignore"]);
    assert_eq!(ign.trim(), "0", "arp_ignore not restored");
    let fdb = Pair::sh(ns, &["bridge", "fdb", "show", "dev", "lan0", "self"]);
    assert!(
        !fdb.contains(&format_mac(vmac(LAN_VHID))),
        "unicast filter entry left behind:\n{fdb}"
    );
    assert_single_arp_answerer(&pair, Router::Fw2, "after the bow-out");
    // The bow-out's copies are not master traffic (the vMAC check leaves
    // them out), but the copies fw1 sends after fw2 took over re-point the
    // switch at fw1 until fw2's next frame from the vMAC: fw2 answers each
    // with an advert at once, so that lasts well under a probe interval.
    let t0 = capture.started();
    let frames = capture.stop().expect("capture on the switch ports");
    check_vmac_frames(&pair, &frames, t0, Router::Fw2, "bow-out");
    let late = late_bow_outs(&frames, TENURE_GAP);
    for b in &late {
        let answer = frames
            .iter()
            .filter(|f| {
                f.router == Router::Fw2
                    && f.switch == b.switch
                    && f.vmac_vhid() == b.vmac_vhid()
                    && f.at >= b.at
            })
            .map(|f| f.at.duration_since(b.at))
            .min();
        assert!(
            answer.is_some_and(|d| d < Duration::from_millis(20)),
            "a bow-out copy from fw1 at {:?} after the start left the vMAC on fw1's port \
             (fw2's next frame: {answer:?}); frames:\n{}",
            b.at.duration_since(t0),
            describe_frames(&frames, t0, Duration::ZERO, Duration::from_secs(5))
        );
    }
    eprintln!(
        "bow-out: {} copies after fw2 took over, each answered by fw2",
        late.len()
    );
}

#[test]
fn link_down_on_the_master_lan_moves_both_vhids_and_back() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    pair.lab.set_link(Router::Fw1, "lan0", false).unwrap();
    // fw1's LAN VHID goes INIT; the demotion moves its WAN VHID too.
    for v in [WAN_VHID, LAN_VHID] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(v, "MASTER", Duration::from_secs(6)),
            "VHID {v}\n{}",
            pair.logs()
        );
    }
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(st["demotion"], 240, "{st}");
    assert_eq!(
        carp_tests::node::vhid_state(&st, LAN_VHID).as_deref(),
        Some("INIT"),
        "{st}"
    );
    assert_eq!(
        carp_tests::node::vhid_state(&st, WAN_VHID).as_deref(),
        Some("BACKUP"),
        "{st}"
    );
    let rep = pair
        .probe_through(Duration::from_millis(300))
        .wait()
        .expect("probe");
    assert!(
        rep.lost == 0,
        "traffic must use fw2 for both directions: {rep}"
    );

    pair.lab.set_link(Router::Fw1, "lan0", true).unwrap();
    pair.wait_roles(Router::Fw1, T_ELECT);
    let st = pair.node(Router::Fw1).status_json(Duration::from_secs(3));
    assert_eq!(st["demotion"], 0, "{st}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_one_vmac_port_at_a_time(&pair, capture, Router::Fw1, "link down and up");
}

/// Sends forged and malformed adverts from the client, as an attacker on the LAN would.
fn inject_from_client(pair: &Pair, frames: Vec<Vec<u8>>, rounds: u32) {
    in_netns(pair.lab.client().name(), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0 in the client");
        let tx = FrameSender::open(idx).expect("packet socket");
        for _ in 0..rounds {
            for f in &frames {
                tx.send(f).expect("send");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn forged_and_malformed_adverts_are_counted_and_change_nothing() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let vips = [LAN_VIP];
    // A "better" master with the wrong password: must not win fw2 over, nor push fw1 back.
    let forged = carp::Repr::new_advert(LAN_VHID, 1, 0, 42, b"wrong", &vips, &[]);
    let forged = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &forged, 1);
    // Right password but TTL 254 (crossed a router): dropped in XDP.
    let good = carp::Repr::new_advert(LAN_VHID, 1, 0, 43, b"secret", &vips, &[]);
    let mut bad_ttl = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &good, 2);
    bad_ttl[14 + 8] = 254;
    fix_ip_checksum(&mut bad_ttl);
    // Truncated CARP payload (IP total length says 20 + 20).
    let mut short = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &good, 3);
    short.truncate(14 + 20 + 20);
    short[14 + 2..14 + 4].copy_from_slice(&40u16.to_be_bytes());
    fix_ip_checksum(&mut short);
    // Bad CARP checksum.
    let mut bad_sum = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &good, 4);
    bad_sum[14 + 20 + 6] ^= 0xff;
    // An unknown VHID.
    let other = carp::Repr::new_advert(77, 1, 0, 44, b"secret", &vips, &[]);
    let other = frame::advert_ipv4(frame::virtual_mac(77), CLIENT_IP, &other, 5);
    // Right password, advbase 0 (sub-second mode, not configured here): would
    // win every election if believed; counted and ignored instead.
    let fast = carp::Repr::new_advert(LAN_VHID, 0, 0, 45, b"secret", &vips, &[]);
    let fast = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &fast, 7);
    // Garbage after the IP header with proto 112.
    let mut garbage = frame::advert_ipv4(frame::virtual_mac(LAN_VHID), CLIENT_IP, &good, 6);
    for b in &mut garbage[14 + 20..] {
        *b = 0x5a;
    }

    let before_t = transitions(&pair);
    inject_from_client(
        &pair,
        vec![forged, bad_ttl, short, bad_sum, other, garbage, fast],
        30,
    );
    std::thread::sleep(Duration::from_millis(300));
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
    assert_eq!(
        transitions(&pair),
        before_t,
        "forged adverts caused transitions\n{}",
        pair.logs()
    );
    for r in Router::ALL {
        let m = pair.metrics(r);
        let bad_digest = metric_value(
            &m,
            "carp_adverts_received_total{vhid=\"1\",interface=\"lan0\",result=\"bad_digest\"}",
        );
        assert!(
            bad_digest >= 30,
            "{}: bad_digest = {bad_digest}\n{m}",
            r.name()
        );
        let fast = metric_value(&m, "carp_adverts_received_total{vhid=\"1\",interface=\"lan0\",result=\"fast_mode_mismatch\"}");
        assert!(fast >= 30, "{}: fast_mode_mismatch = {fast}", r.name());
        for reason in [
            "carp_bad_ttl",
            "carp_short",
            "carp_bad_checksum",
            "carp_unknown_vhid",
            "proto112_other",
        ] {
            let n = pair.xdp_counter(r, "lan0", reason);
            assert!(n >= 30, "{}: {reason} = {n}", r.name());
        }
    }
    assert_single_arp_answerer(&pair, Router::Fw1, "after the forgeries");
}

/// `carp_transitions_total` summed over every series of both nodes.
fn transitions(pair: &Pair) -> u64 {
    Router::ALL
        .into_iter()
        .map(|r| pair.transitions(r).values().sum::<u64>())
        .sum()
}

fn fix_ip_checksum(f: &mut [u8]) {
    f[14 + 10] = 0;
    f[14 + 11] = 0;
    let ck = inet_checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&ck.to_be_bytes());
}

#[test]
fn vrrp_on_the_same_segment_passes_untouched() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let pair = Pair::standard();
    // A VRRPv3 advertisement (RFC 5798 §5.1) for VRID 1, like keepalived sends:
    // same protocol number, same group, same virtual MAC as our VHID 1.
    let mut vrrp = vec![0u8; 14 + 20 + 12];
    vrrp[..6].copy_from_slice(&frame::CARP_GROUP_MAC_V4);
    vrrp[6..12].copy_from_slice(&vmac(LAN_VHID));
    vrrp[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut vrrp[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&32u16.to_be_bytes());
    ip[8] = 255;
    ip[9] = carp_common::IPPROTO_CARP;
    ip[12..16].copy_from_slice(&CLIENT_IP.octets());
    ip[16..20].copy_from_slice(&carp_common::CARP_GROUP_V4.octets());
    let v = &mut vrrp[34..];
    v[0] = 0x31; // version 3, type 1
    v[1] = 1; // VRID
    v[2] = 100; // priority
    v[3] = 1; // count
    v[4..6].copy_from_slice(&100u16.to_be_bytes()); // max adver int (centiseconds)
    v[8..12].copy_from_slice(&Ipv4Addr::new(10, 77, 0, 200).octets());
    fix_ip_checksum(&mut vrrp);
    let token = [0x31u8, 1, 100, 1];

    // Listen on fw2 for proto 112 and count what arrives with our VRRP header.
    let fw2 = pair.router_ns(Router::Fw2).name().to_owned();
    let listener = std::thread::spawn(move || {
        in_netns(&fw2, move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(i32::from(
                    carp_common::IPPROTO_CARP,
                ))),
            )
            .expect("raw socket");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut seen = 0;
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
            while Instant::now() < deadline {
                if let Ok(n) = s.recv(&mut buf) {
                    // SAFETY: recv initialised the first n bytes.
                    let b: Vec<u8> = buf[..n]
                        .iter()
                        .map(|x| unsafe { x.assume_init() })
                        .collect();
                    if n >= 24 && b[20..24] == token {
                        seen += 1;
                    }
                }
            }
            seen
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    inject_from_client(&pair, vec![vrrp], 10);
    let seen = listener.join().unwrap();
    assert_eq!(seen, 10, "VRRP adverts must reach fw2's stack untouched");
    for r in Router::ALL {
        assert!(
            pair.xdp_counter(r, "lan0", "proto112_other") >= 10,
            "{}",
            r.name()
        );
    }
    let mut pair = pair;
    pair.wait_roles(Router::Fw1, Duration::from_secs(1));
}

/// An AF_PACKET socket on `dev` of namespace `ns`, receiving every frame
/// (ETH_P_ALL) with a receive timeout. A socket stays in the namespace it was
/// made in, so it is created on a thread that entered `ns` and read here.
fn packet_socket(ns: &str, dev: &'static str, timeout: Duration) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    in_netns(ns, move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscalls with valid arguments; the fd is owned at once.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(dev).expect("interface name");
            let index = libc::if_nametoindex(name.as_ptr());
            assert!(index != 0, "{dev}: {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: timeout.subsec_micros() as libc::suseconds_t,
            };
            let rc = libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            assert!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            fd
        }
    })
}

/// docs/protocol.md §3: what the MASTER sends from a VIP leaves from the virtual
/// MAC (the TC egress program), as on FreeBSD, so the LAN switch keeps the
/// vMAC on the MASTER's port. The client pings the LAN VIP and captures the
/// echo replies on its own interface.
#[test]
fn master_vip_traffic_leaves_from_the_virtual_mac() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let pair = Pair::standard();
    let client = pair.lab.client();
    let sock = packet_socket(client.name(), "eth0", Duration::from_millis(500));
    let ping = ping3(client, LAN_VIP);
    assert!(
        ping.status.success(),
        "ping {LAN_VIP}: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        pair.logs()
    );
    // Echo replies (ICMP type 0) from the VIP to the client: their Ethernet
    // sources. The socket buffer holds everything since it was bound; a read
    // that times out means it is drained. Bounded by a frame count as well.
    let mut sources = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..1000 {
        // SAFETY: reading into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n < 0 {
            break;
        }
        let f = &buf[..n as usize];
        let ihl = f.get(14).map_or(0, |b| usize::from(b & 0x0f) * 4);
        let is_reply = f.len() >= 14 + 20
            && f[12..14] == [0x08, 0x00]
            && f[23] == 1
            && f[26..30] == LAN_VIP.octets()
            && f[30..34] == CLIENT_IP.octets()
            && f.get(14 + ihl) == Some(&0);
        if is_reply {
            sources.push(format_mac(f[6..12].try_into().expect("6 bytes")));
        }
    }
    assert!(
        sources.len() >= 3,
        "expected 3 echo replies from {LAN_VIP} on the client, saw {sources:?}"
    );
    let want = format_mac(vmac(LAN_VHID));
    assert_eq!(want, "00:00:5e:00:01:01");
    assert!(
        sources.iter().all(|s| *s == want),
        "echo replies from {LAN_VIP} must leave from {want}, got {sources:?}\n{}",
        pair.logs()
    );
    assert_vmac_port(&pair, Router::Fw1, Duration::from_millis(2500));
}

/// The broken setup the checkers above exist for: with advertisements
/// dropped between the routers, both become MASTER of both VHIDs and both
/// XDP programs answer ARP for the VIP. The ARP census and the vMAC capture
/// must see it (this keeps proving that they can fail); once the adverts
/// flow again, fw2 yields and the same checks pass.
#[test]
fn checkers_see_two_masters_when_adverts_are_blocked() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let capture = Capture::start(&pair.lab).expect("capture on the switch ports");
    pair.block_adverts_between_routers(true);
    // fw2 stops hearing fw1 and takes over after master-down; fw1 hears
    // nobody and stays MASTER.
    wait_takeover(&mut pair, Router::Fw2);
    for v in pair.vhids() {
        assert_eq!(
            pair.node(Router::Fw1).state(v).as_deref(),
            Some("MASTER"),
            "fw1 must still be MASTER of VHID {v} (adverts blocked)\n{}",
            pair.logs()
        );
    }
    // Two more adverts from each.
    std::thread::sleep(Duration::from_millis(2500));

    // 1. The ARP census sees two answerers.
    let census = arp_census(&pair.lab, LAN_VIP, ARP_REQUESTS, Duration::from_millis(50))
        .expect("ARP census");
    assert_eq!(
        census.answerers(),
        vec![Router::Fw1, Router::Fw2],
        "both XDP programs must answer: {census:?}"
    );
    assert_eq!(census.total(), 2 * ARP_REQUESTS, "{census:?}");
    let err = census
        .check_single(Router::Fw1, vmac(LAN_VHID))
        .expect_err("the single-answerer check must fail with two masters");
    assert!(err.contains("two answerers"), "{err}");
    eprintln!("broken setup, ARP check: {err}");

    // 2. The vMAC capture sees both ports sending from each vMAC at once.
    let t0 = capture.started();
    let frames = capture.stop().expect("capture");
    let overlaps = vmac_overlaps(&frames, TENURE_GAP, CROSSING);
    let shown = describe_tenures(&tenures(&frames, TENURE_GAP), t0);
    for (sw, vhid) in [(Switch::Lan, LAN_VHID), (Switch::Wan, WAN_VHID)] {
        assert!(
            overlaps
                .iter()
                .any(|(a, b)| a.switch == sw && a.vhid == vhid && a.router != b.router),
            "two masters of VHID {vhid} not seen on {sw:?}; tenures:\n{shown}"
        );
    }
    eprintln!(
        "broken setup, vMAC check: {} overlapping tenures:\n{shown}",
        overlaps.len()
    );

    // Adverts flow again: fw2 hears the better master and yields; one
    // answerer, one port.
    pair.block_adverts_between_routers(false);
    pair.wait_roles(Router::Fw1, T_ELECT);
    assert_single_arp_answerer(&pair, Router::Fw1, "after unblocking");
    assert_vmac_port(&pair, Router::Fw1, Duration::from_millis(2500));
}
