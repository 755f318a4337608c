//! Tier 3: state replication between two `carp` processes over `sync0`, on
//! the stateful NAT lab: loss repair, a restarted backup (bulk transfer and
//! its demotion, then a failover that keeps every session), forged frames.
//! (Session survival across each kind of failover is `sessions.rs`.)
use std::net::{IpAddr, Ipv4Addr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use carp_tests::lab::{LabOptions, NodeParams, Router, LAN_VHID, WAN_VHID};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{in_netns, metric_value, serial, Pair};
use carp_tests::sessions::{
    conntrack_list, lan_nat_entries, missing_from, SessionOptions, Sessions,
};
use carp_user::conntrack::netlink::{Conntrack, CtFamily};
use carp_user::conntrack::{status, CtEntry, Tuple, L4};

/// Destination port of the entries these tests insert (no lab flow uses it).
const TEST_PORT: u16 = 9999;

/// `n` ASSURED UDP entries 10.77.a.b:p -> 10.88.0.100:9999.
fn test_entries(n: u32) -> Vec<CtEntry> {
    (0..n)
        .map(|i| {
            let orig = Tuple {
                src: IpAddr::V4(Ipv4Addr::new(10, 77, 100 + (i / 60_000) as u8, 1)),
                dst: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 100)),
                proto: 17,
                l4: L4::Ports {
                    src: 2000 + (i % 60_000) as u16,
                    dst: TEST_PORT,
                },
            };
            CtEntry {
                mark: 7,
                status: status::CONFIRMED | status::SEEN_REPLY | status::ASSURED,
                ..CtEntry::new(orig, 600)
            }
        })
        .collect()
}

/// Installs `entries` in `ns`'s kernel (as traffic would create them: the
/// controller sees events from another socket), in batches of `batch` with
/// `pause` between.
fn insert(ns: &NetNs, entries: Vec<CtEntry>, batch: usize, pause: Duration) {
    in_netns(ns.name(), move || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        for chunk in entries.chunks(batch) {
            ct.install(chunk).expect("install");
            sleep(pause);
        }
    });
}

/// How many entries of the test port `ns`'s kernel holds.
fn test_entries_in(ns: &NetNs) -> usize {
    in_netns(ns.name(), || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        let mut n = 0;
        ct.dump_with(CtFamily::V4, |e| {
            if matches!(e.orig.l4, L4::Ports { dst: TEST_PORT, .. }) && e.orig.proto == 17 {
                n += 1;
            }
        })
        .expect("dump");
        n
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        sleep(Duration::from_millis(50));
    }
    eprintln!("timed out after {timeout:?}: {what}");
    false
}

/// Drops one frame in ten of protocol 240 leaving `sync0` (numgen: there
/// is no netem here), counted.
fn lossy_sync_link(ns: &NetNs) {
    let rules = "table ip sync_loss {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    oifname \"sync0\" ip protocol 240 numgen random mod 10 == 0 counter drop\n  }\n}\n";
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("nft rules");
    assert!(
        child.wait().expect("nft").success(),
        "loading the loss rule"
    );
}

fn dropped_by_loss_rule(ns: &NetNs) -> u64 {
    let out = ns
        .exec(["nft", "list", "table", "ip", "sync_loss"])
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sync_repairs_ten_percent_loss_every_state_on_both() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let pair = Pair::stateful(true);
    for r in Router::ALL {
        lossy_sync_link(pair.lab.router(r));
    }
    const N: u32 = 5_000;
    let t0 = Instant::now();
    insert(
        pair.lab.router(Router::Fw1),
        test_entries(N),
        250,
        Duration::from_millis(20),
    );
    let all = wait_for("fw2 holds every state", Duration::from_secs(30), || {
        test_entries_in(pair.lab.router(Router::Fw2)) == N as usize
    });
    let fw2_has = test_entries_in(pair.lab.router(Router::Fw2));
    let m1 = pair.metrics(Router::Fw1);
    let retransmits = metric_value(&m1, "carp_sync_retransmits_total");
    let dropped = dropped_by_loss_rule(pair.lab.router(Router::Fw1));
    eprintln!(
        "10% loss: fw2 has {fw2_has}/{N} after {:.2} s; fw1 dropped {dropped} sync frames, retransmitted {retransmits}",
        t0.elapsed().as_secs_f64()
    );
    assert!(all, "fw2 holds {fw2_has} of {N} states\n{}", pair.logs());
    assert!(
        dropped > 0,
        "the loss rule dropped nothing: the test proves nothing"
    );
    assert!(
        retransmits > 0,
        "loss repaired without a retransmission?\n{m1}"
    );
    // Every lab and test state of fw1 is on fw2 (the kernels' own listing).
    let a = conntrack_list(pair.lab.router(Router::Fw1)).expect("fw1 list");
    let b = conntrack_list(pair.lab.router(Router::Fw2)).expect("fw2 list");
    let missing: Vec<String> = missing_from(&a, &b)
        .into_iter()
        .filter(|e| !e.line.contains("10.99.0.") && !e.line.contains("dport=9701"))
        .map(|e| e.line.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "missing on fw2:\n{}",
        missing.join("\n")
    );
}

#[test]
fn sync_restarted_backup_gets_the_table_demoted_then_keeps_sessions() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let mut pair = Pair::stateful(true);
    let sessions = Sessions::start(&pair.lab, SessionOptions::default()).expect("flows");
    const N: u32 = 20_000;
    insert(
        pair.lab.router(Router::Fw1),
        test_entries(N),
        1000,
        Duration::ZERO,
    );
    assert!(wait_for(
        "fw2 holds the states",
        Duration::from_secs(20),
        || { test_entries_in(pair.lab.router(Router::Fw2)) == N as usize }
    ));

    // The backup dies and comes back with an empty table (a reboot).
    pair.node(Router::Fw2).kill9().expect("kill fw2");
    pair.node(Router::Fw2).wait_exit(Duration::from_secs(2));
    pair.lab
        .router(Router::Fw2)
        .exec(["conntrack", "-F"])
        .expect("flush fw2's table");
    assert_eq!(test_entries_in(pair.lab.router(Router::Fw2)), 0);
    let log_before = std::fs::read_to_string(pair.log_path(Router::Fw2)).unwrap_or_default();
    pair.start(Router::Fw2);
    assert!(
        wait_for("fw2's bulk transfer ends", Duration::from_secs(20), || {
            let log = std::fs::read_to_string(pair.log_path(Router::Fw2)).unwrap_or_default();
            log.len() > log_before.len() && log[log_before.len()..].contains("bulk done")
        }),
        "{}",
        pair.logs()
    );
    let log = std::fs::read_to_string(pair.log_path(Router::Fw2)).unwrap_or_default();
    let run = &log[log_before.len()..];
    let demoted_at = run
        .find("VHIDs demoted")
        .expect("fw2 demoted itself while waiting");
    let done_at = run.find("bulk done").expect("bulk done");
    assert!(demoted_at < done_at);
    assert!(
        !run[..done_at].contains("to=\"master\""),
        "fw2 became MASTER before it had the table:\n{run}"
    );
    assert_eq!(
        test_entries_in(pair.lab.router(Router::Fw2)),
        N as usize,
        "the bulk brought every state"
    );
    // While the table came in, fw2's installer left the event groups its
    // installs fill; it must have rejoined them: a flow that starts on fw2
    // now reaches fw1 at once, not with the next sweep (`refresh_interval`,
    // 20 s).
    assert!(
        run[..done_at].contains("event groups left"),
        "fw2 kept its event groups during the bulk:\n{run}"
    );
    assert!(
        wait_for(
            "fw2 rejoins its event groups",
            Duration::from_secs(5),
            || {
                let log = std::fs::read_to_string(pair.log_path(Router::Fw2)).unwrap_or_default();
                log[log_before.len()..].contains("event groups rejoined")
            }
        ),
        "{}",
        pair.logs()
    );
    const LOCAL: u32 = 5;
    let local = test_entries(N + LOCAL).split_off(N as usize);
    insert(pair.lab.router(Router::Fw2), local, 1, Duration::ZERO);
    assert!(
        wait_for(
            "a flow new on fw2 reaches fw1",
            Duration::from_secs(3),
            || test_entries_in(pair.lab.router(Router::Fw1)) == (N + LOCAL) as usize
        ),
        "{}",
        pair.logs()
    );
    pair.wait_roles(Router::Fw1, Duration::from_secs(10));

    // Now the master dies: every session goes on through fw2.
    let fault_at = sessions.age();
    pair.node(Router::Fw1).kill9().expect("kill fw1");
    pair.wait_roles(Router::Fw2, Duration::from_secs(15));
    sleep(Duration::from_secs(2));
    let r = sessions.finish().expect("flows");
    eprintln!("after the backup's restart and a kill -9 of the master:\n{r}");
    assert!(
        r.tcp.survived()
            && r.udp.survived()
            && r.icmp_continued()
            && r.tcp.received_after(fault_at) > 0
            && r.udp.received_after(fault_at) > 0,
        "sessions did not survive:\n{r}\n{}",
        pair.logs()
    );
    let _ = (LAN_VHID, WAN_VHID);
}

/// A frame from the sync link with a bad tag (the peer's address, TTL 255,
/// right version and length: XDP passes it) is counted as `bad_tag` and
/// installs nothing; one with TTL 64 is dropped by XDP; one forged on the LAN
/// (from the client, to fw1's LAN address) is dropped by the CARP
/// interface's program as `proto240_dropped`.
#[test]
fn sync_forged_frames_are_counted_and_install_nothing() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let pair = Pair::stateful(true);
    let fw1 = Router::Fw1;
    let before = test_entries_in(pair.lab.router(fw1));
    // A well-formed insert of a test entry, signed with the wrong key.
    let mut b = carp_user::wire::sync::FrameBuilder::new(1480, 42, u64::MAX / 2, 1);
    assert!(b.push_insert(&test_entries(1)[0]));
    let forged = b.finish(b"not-the-key-not-the-key-not-the-key!");
    let send = |ttl: u32| {
        let frame = forged.clone();
        in_netns(pair.lab.router(Router::Fw2).name(), move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(240)),
            )
            .expect("raw socket");
            s.set_ttl(ttl).expect("ttl");
            s.bind_device(Some(b"sync0")).expect("bind sync0");
            let to = std::net::SocketAddr::from((Ipv4Addr::new(10, 99, 0, 1), 0));
            s.send_to(&frame, &to.into()).expect("send");
        });
    };
    let series = "carp_sync_frames_total{direction=\"in\",result=\"bad_tag\"}";
    let bad_tag_before = metric_value(&pair.metrics(fw1), series);
    let ttl_before = pair.xdp_counter(fw1, "sync0", "sync_bad_ttl");
    send(255);
    send(64);
    let lan_before = pair.xdp_counter(fw1, "lan0", "proto240_dropped");
    {
        let frame = forged.clone();
        in_netns(pair.lab.client().name(), move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(240)),
            )
            .expect("raw socket");
            s.set_ttl(255).expect("ttl");
            let to = std::net::SocketAddr::from((Router::Fw1.lan_ip(), 0));
            s.send_to(&frame, &to.into()).expect("send");
        });
    }
    assert!(wait_for(
        "proto240_dropped on lan0",
        Duration::from_secs(5),
        || { pair.xdp_counter(fw1, "lan0", "proto240_dropped") == lan_before + 1 }
    ));
    assert!(wait_for("bad_tag counted", Duration::from_secs(5), || {
        metric_value(&pair.metrics(fw1), series) == bad_tag_before + 1
    }));
    assert_eq!(
        pair.xdp_counter(fw1, "sync0", "sync_bad_ttl"),
        ttl_before + 1
    );
    sleep(Duration::from_millis(300));
    assert_eq!(
        test_entries_in(pair.lab.router(fw1)),
        before,
        "an unauthenticated frame installed a state"
    );
}

/// The kernel sends no event when traffic merely refreshes a timeout, so
/// without the periodic refresh the backup's copy of a long UDP stream would
/// expire while the master's lives. With UDP timeouts of 5/6 s and a 1 s
/// refresh, the copy must still be there after 15 s, and carry the stream
/// through a failover. (Run with `refresh_s = 3600` the copy is gone after
/// ~6 s and the stream dies: checked by hand when this test was written.)
#[test]
fn sync_backup_copy_lives_as_long_as_the_master_one() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let refresh_s = 1;
    let params = |advskew| NodeParams {
        sync: true,
        sync_refresh_s: Some(refresh_s),
        ..NodeParams::with_advskew(advskew)
    };
    let mut pair = Pair::new(LabOptions::default(), [params(0), params(100)]).expect("lab");
    pair.lab.make_stateful().expect("ruleset");
    for r in Router::ALL {
        let ns = pair.lab.router(r);
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "5")
            .expect("sysctl");
        ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "6")
            .expect("sysctl");
    }
    pair.start_standard();
    let sessions = Sessions::start(&pair.lab, SessionOptions::default()).expect("flows");
    sleep(Duration::from_secs(15));
    let udp_on = |r: Router| {
        lan_nat_entries(pair.lab.router(r))
            .unwrap_or_default()
            .iter()
            .filter(|e| e.proto == "udp")
            .count()
    };
    assert_eq!(udp_on(Router::Fw1), 1, "the stream's entry lives on fw1");
    assert_eq!(
        udp_on(Router::Fw2),
        1,
        "fw2's copy expired while fw1's lives\n{}",
        pair.logs()
    );
    let fault_at = sessions.age();
    pair.node(Router::Fw1).kill9().expect("kill fw1");
    pair.wait_roles(Router::Fw2, Duration::from_secs(15));
    sleep(Duration::from_secs(2));
    let r = sessions.finish().expect("flows");
    eprintln!("15 s of a UDP stream with 6 s timeouts, then kill -9:\n{r}");
    assert!(
        r.udp.survived() && r.udp.received_after(fault_at) > 0,
        "the UDP stream died:\n{r}\n{}",
        pair.logs()
    );
}
