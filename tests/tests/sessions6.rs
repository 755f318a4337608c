//! Tier 3: an IPv6 TCP session through the router pair across a failover,
//! carried by the conntrack state `[sync]` replicated (issue "parity" §1).
//!
//! The lab runs with IPv6 on both sides ([`LabOptions::ipv6`]): the client
//! in 2001:db8:77::/64 with its default route via the LAN VHID's IPv6 VIP,
//! the server in 2001:db8:88::/64 with its default route via the WAN VHID's,
//! routed without NAT (NAT66 is rare; a stateful forward filter is what IPv6
//! routers run). The routers' stateful ruleset is `table inet`, so it judges
//! IPv6 exactly as IPv4: forward policy drop, established/related accept,
//! invalid drop, new only from `lan0` to `wan0`, strict TCP tracking
//! (`nf_conntrack_tcp_loose=0`). A router without the session's conntrack
//! entry therefore drops both directions of it as `ct state invalid`; only
//! a replicated IPv6 entry lets the new master carry it.
//!
//! * `sessions6_survive_kill9` / `sessions6_survive_sigterm` (sync on): the
//!   IPv6 entry is on fw2 before the fault, and the session loses no line.
//! * `sessions6_die_without_sync_kill9`: the negative control, proving the
//!   scenario can fail: without sync the session dies at the failover.
//!
//! A 1 ms IPv4 ping through the same two VHIDs measures the failover gap,
//! printed beside the IPv6 session's stall at the failover. Times are not
//! asserted (the machine is shared); loss is.
//!
//! [`LabOptions::ipv6`]: carp_tests::lab::LabOptions::ipv6

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use carp_tests::lab::{LabOptions, Router, CLIENT_IP6, LAN_VHID, SERVER_IP6, WAN_VHID};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{in_netns, serial, Pair};
use carp_tests::probe::ProbeReport;
use carp_tests::sessions::{conntrack_list6, CtEntry, FlowOptions, FlowReport, TcpEcho};
use carp_tests::util::poll_until;

/// The session runs this long before the fault.
const BEFORE_FAULT: Duration = Duration::from_millis(1500);
/// And this long after fw2 holds both VHIDs.
const AFTER_TAKEOVER: Duration = Duration::from_secs(2);
/// Master-down (3 s + 100/256 s) with ample slack for a loaded machine.
const T_TAKEOVER: Duration = Duration::from_secs(15);
/// How long a replicated entry may take to show up on fw2.
const T_REPLICATED: Duration = Duration::from_secs(3);
/// How long after fw2 is seen MASTER the failover may still show in the
/// session (the status poll lags the takeover; the first segments through
/// fw2 resolve neighbours).
const FAILOVER_SLACK: Duration = Duration::from_millis(500);
const ECHO_PORT: u16 = carp_tests::sessions::TCP_ECHO_PORT;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9` of the master's controller.
    Kill9,
    /// SIGTERM of the master's controller (it bows out).
    SigTerm,
}

struct Outcome {
    tcp: FlowReport,
    /// The IPv4 ping through the same VHIDs: the failover gap.
    icmp: ProbeReport,
    /// Offset of the fault from the start of the session.
    fault_at: Duration,
    /// From the fault until fw2 was MASTER of both VHIDs.
    takeover: Duration,
}

/// The session's IPv6 conntrack entry in `ns`: TCP from the client to the
/// echo port of the server, under its own addresses (no NAT).
fn session_entry(ns: &NetNs) -> Option<CtEntry> {
    let list = conntrack_list6(ns).unwrap_or_else(|e| panic!("{}: {e:#}", ns.name()));
    list.into_iter().find(|e| {
        e.protonum == 6
            && e.orig.src == IpAddr::V6(CLIENT_IP6)
            && e.orig.dst == IpAddr::V6(SERVER_IP6)
            && e.orig.dport == Some(ECHO_PORT)
            && e.reply.dst == IpAddr::V6(CLIENT_IP6)
    })
}

/// The longest time between consecutive echoes that overlaps `from..to`
/// (the failover), and where it began: the run's longest stall
/// ([`FlowReport::max_stall`]) may be scheduling noise elsewhere on a busy
/// machine. A session that died stalls from its last echo to its end.
fn stall_within(t: &FlowReport, from: Duration, to: Duration) -> (Duration, Duration) {
    let mut bounds = t.arrivals.clone();
    if t.died.is_some() {
        bounds.push(t.elapsed);
    }
    bounds
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default()
}

fn describe(e: &Option<CtEntry>) -> String {
    e.as_ref()
        .map_or_else(|| "none".to_owned(), |e| e.line.clone())
}

/// A stateful IPv6 pair (sync on or off), fw1 MASTER of both VHIDs; the
/// IPv6 TCP session and the IPv4 ping; the state checked on both routers;
/// the fault on fw1; fw2 MASTER of both plus [`AFTER_TAKEOVER`]; the
/// session drained. Prints everything.
fn scenario(sync: bool, fault: Fault) -> (Pair, Outcome) {
    let name = format!(
        "IPv6 {fault:?} with sync {}",
        if sync { "on" } else { "off" }
    );
    eprintln!("=== {name}");
    let mut pair = Pair::stateful_with(
        LabOptions {
            ipv6: true,
            ..LabOptions::default()
        },
        sync,
    );
    let opts = FlowOptions::default();
    let t_probe = Instant::now();
    let icmp = pair.probe_through(opts.max_duration);
    // The session's offsets count from here (the connect comes just after).
    let start = Instant::now();
    let tcp = TcpEcho::start(
        pair.lab.client().name(),
        pair.lab.server().name(),
        SocketAddrV6::new(SERVER_IP6, ECHO_PORT, 0, 0),
        opts,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{name}: the IPv6 session did not start: {e:#}\n{}",
            pair.logs()
        )
    });
    // The forward filter applies to IPv6: the WAN cannot open a connection
    // to the LAN (a timeout; a refusal would mean the SYN reached the client).
    let server = pair.lab.server().name().to_owned();
    let inbound = in_netns(&server, || {
        TcpStream::connect_timeout(
            &SocketAddrV6::new(CLIENT_IP6, ECHO_PORT, 0, 0).into(),
            Duration::from_secs(1),
        )
        .map(drop)
        .map_err(|e| e.kind())
    });
    assert_eq!(
        inbound,
        Err(ErrorKind::TimedOut),
        "{name}: WAN-initiated IPv6"
    );
    sleep(BEFORE_FAULT.saturating_sub(start.elapsed()));

    // fw1 forwards the session and tracks it; fw2 has it only through sync.
    let on_fw1 = session_entry(pair.lab.router(Router::Fw1));
    let mut on_fw2 = None;
    let replicated = poll_until(T_REPLICATED, Duration::from_millis(100), || {
        on_fw2 = session_entry(pair.lab.router(Router::Fw2));
        on_fw2.is_some()
    });
    eprintln!(
        "before the fault:\n  fw1: {}\n  fw2: {}",
        describe(&on_fw1),
        describe(&on_fw2)
    );
    let fw1 = on_fw1.unwrap_or_else(|| panic!("{name}: fw1 does not track the IPv6 session"));
    assert_eq!(fw1.state.as_deref(), Some("ESTABLISHED"), "{name}: {fw1:?}");
    assert!(fw1.assured, "{name}: {fw1:?}");
    if sync {
        let fw2 = on_fw2.unwrap_or_else(|| {
            panic!(
                "{name}: the IPv6 entry did not reach fw2 within {T_REPLICATED:?}\n{}",
                pair.logs()
            )
        });
        assert_eq!(fw2.key(), fw1.key(), "{name}: fw2 holds another tuple");
        assert_eq!(fw2.state.as_deref(), Some("ESTABLISHED"), "{name}: {fw2:?}");
    } else {
        assert!(!replicated, "{name}: fw2 tracks the session without sync");
    }

    let fault_at = start.elapsed();
    let t_fault = Instant::now();
    match fault {
        Fault::Kill9 => {
            pair.node(Router::Fw1).kill9().unwrap();
            pair.node(Router::Fw1)
                .wait_exit(Duration::from_secs(2))
                .expect("fw1 exits on SIGKILL");
        }
        Fault::SigTerm => pair.node(Router::Fw1).sigterm().unwrap(),
    }
    for vhid in [LAN_VHID, WAN_VHID] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(vhid, "MASTER", T_TAKEOVER),
            "{name}: fw2 did not take VHID {vhid} within {T_TAKEOVER:?}\n{}",
            pair.logs()
        );
    }
    let takeover = t_fault.elapsed();
    sleep(AFTER_TAKEOVER);
    eprintln!(
        "after the takeover:\n  fw2: {}",
        describe(&session_entry(pair.lab.router(Router::Fw2)))
    );
    let tcp = tcp
        .finish()
        .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", pair.logs()));
    icmp.stop();
    let icmp = icmp.wait().expect("the ping");
    // The ping's offsets count from its own start, a little before the session's.
    let ping_gap_at = icmp.gap_start.as_secs_f64() - (start - t_probe).as_secs_f64();
    let (stall, stall_at) = stall_within(&tcp, fault_at, fault_at + takeover + FAILOVER_SLACK);
    eprintln!(
        "{name}: fault at +{:.3} s, fw2 MASTER of both VHIDs {:.3} s later\n  ipv6 {tcp}\n  \
         ipv6 session stall at the failover: {:.1} ms from +{:.3} s; failover gap (ipv4 1 ms \
         ping through the same VIPs, longest of the run): {:.1} ms from +{ping_gap_at:.3} s\n  \
         {icmp}",
        fault_at.as_secs_f64(),
        takeover.as_secs_f64(),
        stall.as_secs_f64() * 1e3,
        stall_at.as_secs_f64(),
        icmp.max_gap.as_secs_f64() * 1e3,
    );
    // Whatever the outcome: the session was routed, not translated, and
    // carried data before the fault.
    assert_eq!(
        tcp.server_saw.map(|a| a.ip()),
        Some(IpAddr::V6(CLIENT_IP6)),
        "{name}: the server must see the client's own IPv6 address: {tcp}"
    );
    assert!(
        matches!(tcp.server_saw, Some(SocketAddr::V6(_))),
        "{name}: {tcp}"
    );
    assert!(
        tcp.arrivals.first().is_some_and(|&a| a < fault_at),
        "{name}: no echo before the fault: {tcp}"
    );
    (
        pair,
        Outcome {
            tcp,
            icmp,
            fault_at,
            takeover,
        },
    )
}

fn assert_survived(pair: &Pair, o: &Outcome) {
    let t = &o.tcp;
    assert!(
        t.survived()
            && t.sent == t.received
            && t.received_after(o.fault_at + o.takeover) > 0
            && o.icmp.continued(),
        "the IPv6 session did not survive the failover (takeover {:.3} s):\n  {t}\n  {}\n{}",
        o.takeover.as_secs_f64(),
        o.icmp,
        pair.logs()
    );
}

#[test]
fn sessions6_survive_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::Kill9);
    assert_survived(&pair, &o);
}

#[test]
fn sessions6_survive_sigterm() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::SigTerm);
    assert_survived(&pair, &o);
}

/// The negative control: without state replication fw2 has no entry for
/// the session, drops both directions as `ct state invalid` (never creating
/// one from a mid-stream segment), and the session dies, while the ping
/// (new state per echo request) continues through fw2.
#[test]
fn sessions6_die_without_sync_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(false, Fault::Kill9);
    assert!(
        !o.tcp.survived(),
        "the IPv6 session survived without sync: the scenario cannot fail\n  {}",
        o.tcp
    );
    assert_eq!(
        o.tcp.received_after(o.fault_at + o.takeover),
        0,
        "no echo may come back through fw2 without the entry\n  {}",
        o.tcp
    );
    assert!(
        session_entry(pair.lab.router(Router::Fw2)).is_none(),
        "fw2 picked the session up mid-stream without sync"
    );
    assert!(
        o.icmp.continued(),
        "the ping must continue through fw2: {}\n{}",
        o.icmp,
        pair.logs()
    );
}
