//! `carp_sync` end to end: two namespaces joined by a veth pair, the sync
//! program attached (generic mode) on the receiving side with the sender as
//! its only peer, and real protocol-240 packets from a raw socket on the
//! sending side. Checks that the kernel path agrees with the test-run table
//! (tests/xdp.rs): a frame with TTL 255 reaches a raw IP socket and counts
//! `sync_frame`; one with TTL 64 is dropped in XDP, counted `sync_bad_ttl`,
//! and never reaches the socket.
//!
//! Root only: without root it prints `SKIPPED (not root): <test>` (fails under `CI=true`).
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use carp_common::Reason;
use carp_tests::netns::{require_root, NetNs, PREFIX_ROOT};
use carp_tests::pair::in_netns;
use carp_tests::xdp_run::frames::sync_frame;
use carp_user::xdp::{AttachMode, SyncXdp};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 2);

fn raw_240() -> Socket {
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(240))).expect("raw socket, proto 240")
}

#[test]
fn sync_frames_over_veth_reach_the_socket_only_when_valid() {
    if !require_root() {
        return;
    }
    let pid = std::process::id();
    // Guards first: they drop last, after the program and the sockets.
    let a = NetNs::new(format!("{PREFIX_ROOT}{pid}-sx-a")).expect("namespace a");
    let b = NetNs::new(format!("{PREFIX_ROOT}{pid}-sx-b")).expect("namespace b");
    a.ip([
        "link",
        "add",
        "sxa",
        "type",
        "veth",
        "peer",
        "name",
        "sxb",
        "netns",
        b.name(),
    ])
    .expect("veth pair");
    a.ip(["addr", "add", &format!("{SENDER_IP}/24"), "dev", "sxa"])
        .expect("address a");
    b.ip(["addr", "add", &format!("{RECEIVER_IP}/24"), "dev", "sxb"])
        .expect("address b");
    for (ns, dev) in [(&a, "sxa"), (&b, "sxb")] {
        ns.ip(["link", "set", "lo", "up"]).expect("lo up");
        ns.ip(["link", "set", dev, "up"]).expect("veth up");
    }

    let sync = in_netns(b.name(), || {
        SyncXdp::load("sxb", AttachMode::Generic, &[SENDER_IP])
    })
    .expect("load and attach carp_sync on sxb");
    assert_eq!(sync.attachment(), Some(("sxb", AttachMode::Generic)));
    let link = b.ip(["link", "show", "sxb"]).expect("ip link show");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"),
        "sxb has no generic XDP program: {}",
        String::from_utf8_lossy(&link.stdout)
    );

    let receiver = in_netns(b.name(), raw_240);
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let sender = in_netns(a.name(), raw_240);
    let to = SockAddr::from(SocketAddrV4::new(RECEIVER_IP, 0));
    let bad = sync_frame(b"routed: TTL 64, must be dropped in XDP");
    let good = sync_frame(b"on link: TTL 255, must reach user space");
    // The bad one first: once the good one has arrived, so would have the bad one.
    sender.set_ttl(64).expect("ttl 64");
    sender.send_to(&bad, &to).expect("send TTL 64");
    sender.set_ttl(255).expect("ttl 255");
    sender.send_to(&good, &to).expect("send TTL 255");

    // A raw IPv4 socket reads the IP header too; compare payloads.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut linger = None;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < deadline && linger.is_none_or(|t| Instant::now() < t) {
        let Ok(n) = receiver.recv(&mut buf) else {
            continue;
        };
        // SAFETY: recv initialised the first n bytes.
        let pkt: Vec<u8> = buf[..n]
            .iter()
            .map(|x| unsafe { x.assume_init() })
            .collect();
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let (ttl, payload) = (pkt[8], pkt[ihl..].to_vec());
        if payload == good && linger.is_none() {
            linger = Some(Instant::now() + Duration::from_millis(300));
        }
        received.push((ttl, payload));
    }
    let goods = received.iter().filter(|(_, p)| *p == good).count();
    let bads = received.iter().filter(|(_, p)| *p == bad).count();
    assert_eq!(goods, 1, "the valid frame must reach the raw socket once");
    assert_eq!(bads, 0, "the TTL-64 frame must not reach the raw socket");
    assert!(received.iter().all(|(ttl, _)| *ttl == 255), "{received:?}");

    let c = sync.counters().expect("counters");
    let sync_counts: Vec<(&str, u64)> = Reason::SYNC_PROGRAM
        .iter()
        .filter(|r| r.label().starts_with("sync_"))
        .map(|&r| (r.label(), c[r as usize]))
        .collect();
    assert_eq!(
        sync_counts,
        vec![
            ("sync_frame", 1),
            ("sync_bad_ttl", 1),
            ("sync_bad_source", 0),
            ("sync_bad_version", 0),
            ("sync_bad_length", 0),
            ("sync_fragment", 0),
        ]
    );
    // ARP (and IPv6 link-local chatter) went through as unrelated traffic.
    assert!(c[Reason::PassUnrelated as usize] >= 1, "{c:?}");
    assert_eq!(c[Reason::DropMalformed as usize], 0, "{c:?}");
    let reader = sync.counters_reader().expect("reader");
    assert_eq!(reader.read().expect("read")[Reason::SyncFrame as usize], 1);

    // Detaching leaves an ordinary link: the TTL-64 frame now gets through.
    let mut sync = sync;
    sync.detach().expect("detach");
    let link = b.ip(["link", "show", "sxb"]).expect("ip link show");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "still attached: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    sender.set_ttl(64).expect("ttl 64");
    sender.send_to(&bad, &to).expect("send TTL 64");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        if let Ok(n) = receiver.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            let pkt: Vec<u8> = buf[..n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            seen = pkt[ihl..] == bad[..];
        }
    }
    assert!(
        seen,
        "without carp_sync the TTL-64 frame reaches the socket"
    );
    drop((sender, receiver, sync));
}
