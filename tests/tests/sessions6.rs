//! Tier 3: IPv6 sessions through the router pair across a failover, carried
//! by the conntrack state `[sync]` replicated (issue "parity" §1): the IPv6
//! counterpart of `sessions.rs`, with the same flows and the same faults.
//!
//! The lab runs with IPv6 on both sides ([`LabOptions::ipv6`]): the client
//! in 2001:db8:77::/64 with its default route via the LAN VHID's IPv6 VIP,
//! the server in 2001:db8:88::/64 with its default route via the WAN VHID's,
//! routed without NAT (NAT66 is rare; a stateful forward filter is what IPv6
//! routers run). The routers' stateful ruleset is `table inet`, so it judges
//! IPv6 exactly as IPv4: forward policy drop, established/related accept,
//! invalid drop, new only from `lan0` to `wan0`, strict TCP tracking
//! (`nf_conntrack_tcp_loose=0`). A router without a session's conntrack
//! entry therefore drops the TCP session both ways as `ct state invalid`,
//! and the UDP stream (the client asked once; the server sends every 20 ms)
//! as a new connection from the WAN: only replicated IPv6 entries let the
//! new master carry them. A 1 ms ICMPv6 ping to the server (a new
//! connection any router accepts) measures the failover gap.
//!
//! * `sessions6_survive_*` (sync on; `kill -9`, SIGTERM, fw1's LAN link
//!   down, fw1's death with all its links down at once): both IPv6 entries
//!   are on fw2 before the fault; the TCP session loses no line, the UDP
//!   stream comes back through fw2 within a generous margin of the failover
//!   gap (the tight figures are printed), the ping continues.
//! * `sessions6_die_without_sync_kill9`: the negative control, proving the
//!   scenario can fail: without sync fw2 has neither entry, and the TCP
//!   session and the UDP stream die at the failover.
//!
//! [`LabOptions::ipv6`]: carp_tests::lab::LabOptions::ipv6

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use carp_tests::fault::{through_fault, Fault, Outcome, BEFORE_FAULT};
use carp_tests::lab::{LabOptions, Router, CLIENT_IP6, SERVER_IP6};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{in_netns, serial, Pair};
use carp_tests::sessions::{
    conntrack_list6, CtEntry, SessionOptions, Sessions, TCP_ECHO_PORT, UDP_STREAM_PORT,
};
use carp_tests::util::poll_until;

/// How long the replicated entries may take to show up on fw2.
const T_REPLICATED: Duration = Duration::from_secs(3);

/// The session's two flows, by IP protocol and server port.
const FLOWS: [(u8, u16); 2] = [(6, TCP_ECHO_PORT), (17, UDP_STREAM_PORT)];

/// The IPv6 conntrack entry in `ns` of the flow of protocol `proto` from the
/// client to `port` on the server, under its own addresses (no NAT).
fn flow_entry(ns: &NetNs, proto: u8, port: u16) -> Option<CtEntry> {
    let list = conntrack_list6(ns).unwrap_or_else(|e| panic!("{}: {e:#}", ns.name()));
    list.into_iter().find(|e| {
        e.protonum == proto
            && e.orig.src == IpAddr::V6(CLIENT_IP6)
            && e.orig.dst == IpAddr::V6(SERVER_IP6)
            && e.orig.dport == Some(port)
            && e.reply.dst == IpAddr::V6(CLIENT_IP6)
    })
}

/// Both flows' entries in `ns`, in [`FLOWS`] order.
fn flow_entries(ns: &NetNs) -> [Option<CtEntry>; 2] {
    FLOWS.map(|(proto, port)| flow_entry(ns, proto, port))
}

fn describe(entries: &[Option<CtEntry>]) -> String {
    entries
        .iter()
        .map(|e| {
            e.as_ref()
                .map_or_else(|| "none".to_owned(), |e| e.line.clone())
        })
        .collect::<Vec<_>>()
        .join("\n       ")
}

/// A stateful IPv6 pair (sync on or off), fw1 MASTER of both VHIDs; the
/// IPv6 TCP session, UDP stream and ICMPv6 ping; the state checked on both
/// routers; the fault on fw1; fw2 MASTER of both plus [`AFTER_TAKEOVER`];
/// the flows stopped and drained. Prints everything.
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
    let sessions = Sessions::start(
        &pair.lab,
        SessionOptions {
            ipv6: true,
            ..SessionOptions::default()
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{name}: the IPv6 flows did not start: {e:#}\n{}",
            pair.logs()
        )
    });
    // The forward filter applies to IPv6: the WAN cannot open a connection
    // to the LAN (a timeout; a refusal would mean the SYN reached the client).
    let server = pair.lab.server().name().to_owned();
    let inbound = in_netns(&server, || {
        TcpStream::connect_timeout(
            &SocketAddrV6::new(CLIENT_IP6, TCP_ECHO_PORT, 0, 0).into(),
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
    sleep(BEFORE_FAULT.saturating_sub(sessions.age()));

    // fw1 forwards both flows and tracks them; fw2 has them only through sync.
    let on_fw1 = flow_entries(pair.lab.router(Router::Fw1));
    let mut on_fw2 = [None, None];
    let replicated = poll_until(T_REPLICATED, Duration::from_millis(100), || {
        on_fw2 = flow_entries(pair.lab.router(Router::Fw2));
        on_fw2.iter().all(Option::is_some)
    });
    eprintln!(
        "before the fault:\n  fw1: {}\n  fw2: {}",
        describe(&on_fw1),
        describe(&on_fw2)
    );
    let [tcp1, udp1] = on_fw1.map(|e| {
        e.unwrap_or_else(|| {
            panic!(
                "{name}: fw1 does not track both IPv6 flows\n{}",
                pair.logs()
            )
        })
    });
    assert_eq!(
        tcp1.state.as_deref(),
        Some("ESTABLISHED"),
        "{name}: {tcp1:?}"
    );
    assert!(tcp1.assured, "{name}: {tcp1:?}");
    // The stream came back through fw1: a replied entry.
    assert!(!udp1.unreplied, "{name}: {udp1:?}");
    if sync {
        assert!(
            replicated,
            "{name}: the IPv6 entries did not all reach fw2 within {T_REPLICATED:?}\n{}",
            pair.logs()
        );
        for (on1, on2) in [&tcp1, &udp1].into_iter().zip(&on_fw2) {
            let on2 = on2.as_ref().expect("replicated");
            assert_eq!(on2.key(), on1.key(), "{name}: fw2 holds another tuple");
            assert_eq!(on2.state, on1.state, "{name}: {on2:?}");
        }
    } else {
        assert!(
            on_fw2.iter().all(Option::is_none),
            "{name}: fw2 tracks a flow without sync: {on_fw2:?}"
        );
    }

    let o = through_fault(&mut pair, sessions, fault, &name, |pair| {
        eprintln!(
            "after the takeover:\n  fw2: {}",
            describe(&flow_entries(pair.lab.router(Router::Fw2)))
        )
    });
    let (report, fault_at) = (&o.report, o.fault_at);
    // Whatever the outcome: both flows were routed, not translated, and
    // carried data before the fault; the ping was ICMPv6.
    for f in [&report.tcp, &report.udp] {
        assert_eq!(
            f.server_saw.map(|a| a.ip()),
            Some(IpAddr::V6(CLIENT_IP6)),
            "{name}: the server must see the client's own IPv6 address: {f}"
        );
        assert!(
            matches!(f.server_saw, Some(SocketAddr::V6(_))),
            "{name}: {f}"
        );
        assert!(
            f.arrivals.first().is_some_and(|&a| a < fault_at),
            "{name}: nothing before the fault: {f}"
        );
    }
    assert_eq!(report.icmp.target, IpAddr::V6(SERVER_IP6), "{name}");
    (pair, o)
}

#[test]
fn sessions6_survive_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::Kill9);
    o.assert_survived(&pair, "the IPv6 flows");
}

#[test]
fn sessions6_survive_sigterm() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::SigTerm);
    o.assert_survived(&pair, "the IPv6 flows");
}

#[test]
fn sessions6_survive_lan_down() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::LanDown);
    o.assert_survived(&pair, "the IPv6 flows");
    o.assert_handed_over(&pair);
}

#[test]
fn sessions6_survive_node_death() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::NodeDeath);
    o.assert_survived(&pair, "the IPv6 flows");
}

/// The negative control: without state replication fw2 has no entry for
/// either flow: it drops the TCP session both ways as `ct state invalid`
/// (never creating an entry from a mid-stream segment) and the server's
/// datagrams as a new connection from the WAN, so both die, while the ping
/// (a new connection from the LAN) continues through fw2.
#[test]
fn sessions6_die_without_sync_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(false, Fault::Kill9);
    let r = &o.report;
    let why = r.death_failures(o.fault_at, o.takeover);
    assert!(
        why.is_empty(),
        "IPv6 without sync: {why:?}: the scenario cannot fail\n{r}\n{}",
        pair.logs()
    );
    assert_eq!(
        flow_entries(pair.lab.router(Router::Fw2)),
        [None, None],
        "fw2 picked a flow up mid-stream without sync"
    );
}
