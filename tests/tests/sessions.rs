//! Tier 3: session survival across a failover of a stateful NAT router pair.
//!
//! Both routers run the lab's nftables ruleset ([`Lab::make_stateful`]:
//! forward policy drop, only LAN-initiated connections, source NAT of the LAN
//! to the WAN VIP, strict TCP tracking). A TCP echo session, a UDP stream
//! that only the NAT binding can carry, and a 1 ms ping run from the client
//! to the server while the master fails; the backup can carry the first two
//! only if it has their conntrack entries, i.e. with `[sync]` on.
//!
//! * `sessions_survive_*` (sync on): every flow must survive (every line
//!   echoed, the UDP stream back within a generous margin of the ping's
//!   failover gap). They fail until the sync engine replicates the conntrack
//!   entries over `sync0`.
//! * `sessions_die_without_sync_kill9`: the negative control, proving the
//!   scenarios can fail: without sync the TCP session and the UDP stream die.
//! * `stateful_lab_*`: the lab itself (flows, NAT, ruleset) before any fault.
//!
//! `sessions6.rs` runs the same flows and faults over IPv6 (routed, no NAT).
//!
//! Run one by name, e.g.
//! `cargo test -p carp-tests --test sessions sessions_survive_kill9 -- --nocapture`.
//!
//! [`Lab::make_stateful`]: carp_tests::lab::Lab::make_stateful

use std::net::{SocketAddrV4, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use carp_tests::fault::{through_fault, Fault, Outcome, BEFORE_FAULT};
use carp_tests::lab::{Router, CLIENT_IP, WAN_VIP};
use carp_tests::netns::require_root;
use carp_tests::pair::{in_netns, serial, Pair};
use carp_tests::sessions::{conntrack_count, lan_nat_entries, SessionOptions, Sessions};

/// Lab-flow entries on each router, for the log (and for the sync engine's
/// "every state present on both").
fn conntrack_summary(pair: &Pair) -> String {
    let mut s = String::new();
    for r in Router::ALL {
        let ns = pair.lab.router(r);
        let total = conntrack_count(ns).map_or_else(|e| format!("? ({e:#})"), |n| n.to_string());
        let nat = lan_nat_entries(ns).unwrap_or_default();
        s.push_str(&format!(
            "  {}: {total} conntrack entries, {} NATed LAN flows\n",
            r.name(),
            nat.len()
        ));
        for e in nat {
            s.push_str(&format!("    {e}\n"));
        }
    }
    s
}

/// A stateful pair (sync on or off), fw1 MASTER of both VHIDs; the three
/// flows; the fault on fw1; fw2 MASTER of both plus [`AFTER_TAKEOVER`]; the
/// flows stopped and drained. Prints everything.
fn scenario(sync: bool, fault: Fault) -> (Pair, Outcome) {
    let name = format!("{fault:?} with sync {}", if sync { "on" } else { "off" });
    eprintln!("=== {name}");
    let mut pair = Pair::stateful(sync);
    let sessions = Sessions::start(&pair.lab, SessionOptions::default())
        .unwrap_or_else(|e| panic!("{name}: flows did not start: {e:#}\n{}", pair.logs()));
    sleep(BEFORE_FAULT);
    eprintln!("before the fault:\n{}", conntrack_summary(&pair));
    let o = through_fault(&mut pair, sessions, fault, &name, |pair| {
        eprintln!("after the takeover:\n{}", conntrack_summary(pair))
    });
    let (report, fault_at) = (&o.report, o.fault_at);
    // Whatever the outcome, the flows ran through the NAT before the fault.
    for f in [&report.tcp, &report.udp] {
        assert!(f.nated(), "{name}: the server must see the WAN VIP: {f}");
        assert!(
            f.arrivals.first().is_some_and(|&a| a < fault_at),
            "{name}: no traffic before the fault: {f}"
        );
    }
    (pair, o)
}

#[test]
fn sessions_survive_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::Kill9);
    o.assert_survived(&pair, "sessions");
}

#[test]
fn sessions_survive_lan_down() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::LanDown);
    o.assert_survived(&pair, "sessions");
    o.assert_handed_over(&pair);
}

#[test]
fn sessions_survive_sigterm() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::SigTerm);
    o.assert_survived(&pair, "sessions");
}

#[test]
fn sessions_survive_node_death() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(true, Fault::NodeDeath);
    o.assert_survived(&pair, "sessions");
}

/// The negative control: without state replication, fw2 has no conntrack
/// entry for the session: it drops the client's segments as `ct state
/// invalid` and the server's datagrams have no NAT binding to follow. The
/// ping continues (each echo request is a new connection).
#[test]
fn sessions_die_without_sync_kill9() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let (pair, o) = scenario(false, Fault::Kill9);
    let r = &o.report;
    // Survival, or a datagram through fw2 without the binding, would mean
    // the scenario cannot tell sync from no sync; a stopped ping, that fw2
    // forwards nothing at all (then the deaths would prove nothing).
    let why = r.death_failures(o.fault_at, o.takeover);
    assert!(
        why.is_empty(),
        "without sync: {why:?}: the scenario cannot fail\n{r}\n{}",
        pair.logs()
    );
    // fw2 never had the session's entries (only new ICMP ones).
    let fw2 = lan_nat_entries(pair.lab.router(Router::Fw2)).unwrap();
    assert!(
        fw2.iter().all(|e| e.protonum == 1),
        "fw2 has non-ICMP NAT state without sync: {fw2:?}"
    );
}

/// Before any fault: the flows run through fw1's NAT, fw1 holds their state,
/// fw2 (no sync) none, and the WAN cannot open connections to the LAN.
#[test]
fn stateful_lab_nats_lan_flows_and_blocks_wan_initiated() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let pair = Pair::stateful(false);
    let sessions = Sessions::start(&pair.lab, SessionOptions::default())
        .unwrap_or_else(|e| panic!("flows did not start: {e:#}\n{}", pair.logs()));
    sleep(Duration::from_millis(500));

    let fw1 = lan_nat_entries(pair.lab.router(Router::Fw1)).unwrap();
    let fw2 = lan_nat_entries(pair.lab.router(Router::Fw2)).unwrap();
    eprintln!("{}", conntrack_summary(&pair));
    for proto in [6u8, 17, 1] {
        assert!(
            fw1.iter().any(|e| e.protonum == proto),
            "fw1 has no NAT entry of protocol {proto}: {fw1:#?}"
        );
    }
    let tcp = fw1.iter().find(|e| e.protonum == 6).unwrap();
    assert_eq!(tcp.state.as_deref(), Some("ESTABLISHED"), "{tcp:?}");
    assert!(tcp.assured && tcp.orig.src == CLIENT_IP && tcp.reply.dst == WAN_VIP);
    assert!(fw2.is_empty(), "fw2 carries nothing: {fw2:#?}");
    assert!(conntrack_count(pair.lab.router(Router::Fw1)).unwrap() >= 3);

    // WAN-initiated: dropped by the forward policy (a timeout; a refusal
    // would mean the SYN reached the client).
    let server = pair.lab.server().name().to_owned();
    let res = in_netns(&server, || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(CLIENT_IP, 7101).into(),
            Duration::from_secs(1),
        )
        .map(drop)
        .map_err(|e| e.kind())
    });
    assert_eq!(res, Err(std::io::ErrorKind::TimedOut));

    let r = sessions.finish().expect("finishing the flows");
    eprintln!("{r}");
    assert!(r.survived(), "{r}");
    assert!(r.tcp.nated() && r.udp.nated(), "{r}");
    assert!(r.tcp.received >= 20 && r.udp.received >= 20, "{r}");
    assert_eq!(r.icmp.lost, 0, "{r}");
    // In steady state nothing stalls for long.
    assert!(r.tcp.max_stall < Duration::from_millis(500), "{r}");
    assert!(r.udp.max_stall < Duration::from_millis(500), "{r}");
}
