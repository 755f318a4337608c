//! Tier 3, issue "Hold up under attack" §2: an attacker on the LAN (the client
//! namespace, and the server on the WAN) against a running pair, each node its
//! own process. Serial and root-only like the other tier-3 suites.
//!
//! - `replayed_adverts_from_rotating_sources_change_nothing`: one genuine
//!   advert of the master, captured on the LAN, re-sent 10/s for 6 s from
//!   rotating source addresses (on the LAN subnet and off it) with advskew
//!   rewritten to 0, then 10/s for 6 s as a bow-out (advbase/advskew 255). The
//!   digest does not cover advbase/advskew, so every copy authenticates.
//!   Before the fix (counters tracked per source address only) the first
//!   phase pushed the master back and the second made the backup take over:
//!   checked once with the cross-source checks of `replay::Tracker::check`
//!   and the subnet check of `accept::accept` disabled (`if false && ...`):
//!   the test failed on the transition counters (fw1 stepped back once, fw2
//!   became MASTER 5 times; every copy was `ok`).
//! - `advert_flood_changes_nothing`: several threads send bad-digest adverts
//!   for both VHIDs from several sources as fast as they can for 5 s. Checked
//!   once on a program without the advert budget (`within_budget` disabled):
//!   see the test's doc comment.
//!
//! Both assert that fw1 stays MASTER and fw2 BACKUP, that no transition
//! happened, and that a 2 ms ICMP probe client → server through the VIPs saw
//! no gap (nothing lost, or no silence of 50 ms or more).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carp_tests::lab::{Router, LAN_VHID, SERVER_IP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{in_netns, metric_value, serial, Pair};
use carp_tests::probe::{Probe, ProbeOptions, ProbeReport};
use carp_user::packet::FrameSender;
use carp_user::wire::{carp, frame};

/// `carp_transitions_total` series of both nodes, by node and series.
fn transitions(pair: &Pair) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in Router::ALL {
        for (labels, v) in pair.transitions(r) {
            out.insert(format!("{} {labels}", r.name()), v);
        }
    }
    out
}

fn probe(pair: &Pair, duration: Duration) -> Probe {
    Probe::start(
        pair.lab.client().name(),
        SERVER_IP,
        ProbeOptions {
            interval: Duration::from_millis(2),
            duration,
            reply_wait: Duration::from_millis(500),
        },
    )
    .expect("starting the probe")
}

fn assert_no_gap(rep: &ProbeReport, what: &str, pair: &Pair) {
    println!(
        "{what}: probe sent {} lost {} max gap {:?} duplicates {}",
        rep.sent, rep.lost, rep.max_gap, rep.duplicates
    );
    assert!(
        rep.lost == 0 || rep.max_gap < Duration::from_millis(50),
        "{what}: probe gap: {rep:?}\n{}",
        pair.logs()
    );
}

fn assert_pair_unchanged(pair: &mut Pair, before: &BTreeMap<String, u64>, what: &str) {
    for v in pair.vhids() {
        assert_eq!(
            pair.node(Router::Fw1).state(v).as_deref(),
            Some("MASTER"),
            "{what}: fw1 lost VHID {v}\n{}",
            pair.logs()
        );
        assert_eq!(
            pair.node(Router::Fw2).state(v).as_deref(),
            Some("BACKUP"),
            "{what}: fw2 left BACKUP for VHID {v}\n{}",
            pair.logs()
        );
    }
    let after = transitions(pair);
    assert_eq!(
        &after,
        before,
        "{what}: transitions happened\n{}",
        pair.logs()
    );
}

/// The first CARP advert of VHID `vhid` from `from` seen on `dev` in `ns`
/// (an `AF_PACKET` socket, as a sniffer on the LAN would have it).
fn capture_advert(ns: &str, dev: &'static str, from: Ipv4Addr, vhid: u8) -> carp::Repr {
    in_netns(ns, move || {
        let idx = nix::net::if_::if_nametoindex(dev).expect("interface index");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2)/bind(2)/setsockopt(2) on a fresh descriptor.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        unsafe {
            assert_eq!(
                libc::bind(
                    fd,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32
                ),
                0
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        let found = loop {
            assert!(
                Instant::now() < deadline,
                "no advert of VHID {vhid} from {from} captured"
            );
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 14 + 20 + 36 {
                continue;
            }
            let f = &buf[..n as usize];
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if f[12..14] != [0x08, 0x00] || f[14 + 9] != 112 || f[14 + 12..14 + 16] != from.octets()
            {
                continue;
            }
            let Ok(pkt) = carp::Packet::new_checked(&f[14 + ihl..]) else {
                continue;
            };
            if let Ok(r) = carp::Repr::parse(&pkt) {
                if r.vhid == vhid && r.advbase != 255 {
                    break r;
                }
            }
        };
        unsafe { libc::close(fd) };
        found
    })
}

/// A locally administered unicast MAC for forged frames: never a virtual MAC,
/// so the LAN switch does not move the VIP's MAC to the attacker's port (that
/// would be another attack, on the switch, not on CARP).
fn attacker_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0xa7, b[0], b[1], b[2], b[3]]
}

#[test]
fn replayed_adverts_from_rotating_sources_change_nothing() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    // fw2 must have heard fw1 advertise in +1 steps for a while.
    std::thread::sleep(Duration::from_secs(3));
    let before = transitions(&pair);
    let captured = capture_advert(
        pair.lab.client().name(),
        "eth0",
        Router::Fw1.lan_ip(),
        LAN_VHID,
    );
    println!(
        "captured fw1's advert: counter {:#x}, advbase {}, advskew {}",
        captured.counter, captured.advbase, captured.advskew
    );

    let p = probe(&pair, Duration::from_secs(13));
    let client = pair.lab.client().name().to_owned();
    let sent = in_netns(&client, move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0 in the client");
        let tx = FrameSender::open(idx).expect("packet socket");
        let mut k = 0u32;
        for (advbase, advskew) in [(captured.advbase, 0u8), (255, 255)] {
            for i in 0..60u32 {
                k += 1;
                let mut forged = captured;
                forged.advbase = advbase;
                forged.advskew = advskew;
                // Rotating sources: on the LAN subnet, and every third off it.
                let src = if i % 3 == 2 {
                    Ipv4Addr::new(10, 66, (k / 200) as u8, (k % 200) as u8 + 1)
                } else {
                    Ipv4Addr::new(10, 77, 0, 20 + (k % 60) as u8)
                };
                // Serializing recomputes the CARP checksum; the digest is kept.
                let f = frame::advert_ipv4(attacker_mac(k), src, &forged, k as u16);
                tx.send(&f).expect("send");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        k
    });
    let rep = p.wait().expect("probe");
    println!("sent {sent} replayed adverts");
    for r in Router::ALL {
        let m = pair.metrics(r);
        for res in ["ok", "replay", "own", "off_subnet", "bad_digest"] {
            let series = format!(
                "carp_adverts_received_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\",result=\"{res}\"}}"
            );
            println!("{} {res}: {}", r.name(), metric_value(&m, &series));
        }
    }
    assert_pair_unchanged(&mut pair, &before, "replay");
    assert_no_gap(&rep, "replay", &pair);
    // Every copy reached both nodes and was refused there, not silently lost.
    let refused = |r: Router, res: &str| {
        metric_value(
            &pair.metrics(r),
            &format!("carp_adverts_received_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\",result=\"{res}\"}}"),
        )
    };
    assert_eq!(refused(Router::Fw1, "off_subnet"), 40);
    assert_eq!(refused(Router::Fw2, "off_subnet"), 40);
    assert!(
        refused(Router::Fw1, "own") >= 80,
        "fw1 refuses its own counter as own"
    );
    assert!(
        refused(Router::Fw2, "replay") >= 80,
        "fw2 refuses the master's counter as a replay"
    );
}

/// Bad-digest adverts for both VHIDs (LAN from the client, WAN from the
/// server), from 8 sources per sender thread, as fast as the lab sends them
/// for 5 s (at most 20 M frames per thread). The XDP budget
/// (`ADVERT_BUDGET_RATE` per sender and of new senders per VHID, 256/s) keeps
/// all but a trickle out of the
/// ring and the controller; the warning limiter keeps the log quiet.
///
/// Checked once on the old program (`within_budget` disabled in `carp-ebpf`):
/// every copy went to the ring, fw1's lan0 counted 59 744 `carp_ring_full`
/// (genuine adverts are lost with them) and its controller authenticated
/// 76 472 bad adverts in 5 s; the test failed on the XDP counters. The warning
/// limiter (`accept::WarnLimiter`) has its own unit test.
#[test]
fn advert_flood_changes_nothing() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    std::thread::sleep(Duration::from_secs(2));
    let before = transitions(&pair);
    let p = probe(&pair, Duration::from_secs(7));
    std::thread::sleep(Duration::from_millis(500));

    const THREADS_PER_SIDE: u32 = 2;
    const MAX_PER_THREAD: u64 = 20_000_000;
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let started = Instant::now();
    for (ns, vhid, vip, net) in [
        (
            pair.lab.client().name().to_owned(),
            LAN_VHID,
            carp_tests::lab::LAN_VIP,
            [10, 77, 0],
        ),
        (
            pair.lab.server().name().to_owned(),
            WAN_VHID,
            carp_tests::lab::WAN_VIP,
            [10, 88, 0],
        ),
    ] {
        for t in 0..THREADS_PER_SIDE {
            let (stop, total, ns) = (stop.clone(), total.clone(), ns.clone());
            handles.push(std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
                    let tx = FrameSender::open(idx).expect("packet socket");
                    let frames: Vec<Vec<u8>> = (0..8u32)
                        .map(|i| {
                            let n = t * 8 + i;
                            let bad = carp::Repr::new_advert(
                                vhid,
                                1,
                                0,
                                u64::from(n),
                                b"not-the-password",
                                &[vip],
                                &[],
                            );
                            let src = Ipv4Addr::new(net[0], net[1], net[2], 150 + n as u8);
                            frame::advert_ipv4(
                                attacker_mac(0x1000 * u32::from(vhid) + n),
                                src,
                                &bad,
                                n as u16,
                            )
                        })
                        .collect();
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let mut n = 0u64;
                    while n < MAX_PER_THREAD
                        && Instant::now() < deadline
                        && !stop.load(Ordering::Relaxed)
                    {
                        for f in &frames {
                            if tx.send(f).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                })
            }));
        }
    }
    for h in handles {
        h.join().expect("sender thread");
    }
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let sent = total.load(Ordering::Relaxed);
    let rep = p.wait().expect("probe");
    println!(
        "flood: {sent} adverts in {secs:.1} s = {:.0}/s from {} threads",
        sent as f64 / secs,
        2 * THREADS_PER_SIDE
    );
    for r in Router::ALL {
        for (dev, vhid) in [("lan0", LAN_VHID), ("wan0", WAN_VHID)] {
            let m = pair.metrics(r);
            let x = |reason: &str| {
                metric_value(
                    &m,
                    &format!("carp_xdp_packets_total{{interface=\"{dev}\",reason=\"{reason}\"}}"),
                )
            };
            let bad = metric_value(
                &m,
                &format!("carp_adverts_received_total{{vhid=\"{vhid}\",interface=\"{dev}\",result=\"bad_digest\"}}"),
            );
            println!(
                "{} {dev}: xdp carp_advert {} carp_over_budget {} carp_ring_full {}; controller bad_digest {bad}",
                r.name(),
                x("carp_advert"),
                x("carp_over_budget"),
                x("carp_ring_full"),
            );
            assert!(
                x("carp_over_budget") > 0,
                "{} {dev}: nothing over budget",
                r.name()
            );
            assert_eq!(
                x("carp_ring_full"),
                0,
                "{} {dev}: the ring overflowed",
                r.name()
            );
        }
    }
    assert_pair_unchanged(&mut pair, &before, "flood");
    assert_no_gap(&rep, "flood", &pair);
}
