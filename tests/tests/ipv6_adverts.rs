//! Tier 3: CARP advertisements over IPv6 alone. The LAN VHID gets an IPv6
//! VIP, so each advert also goes to `ff02::12` (docs/protocol.md §1 "Over
//! IPv6"); the LAN switch drops IPv4 protocol 112 between its ports (an
//! nftables bridge rule: the routers take adverts in XDP, before their own
//! nftables, so the switch is where to block them), so only the IPv6 copies
//! get across.
//!
//! What it shows: the pair elects exactly one MASTER and stays so (without
//! the IPv6 adverts both would be MASTER after the master-down interval),
//! the adverts on the wire are the ones the BSDs send (to `ff02::12`, hop
//! limit 255, from the sender's link-local address and the virtual MAC), and
//! the pair fails over through them: a SIGTERM bow-out, then, with fw1 back
//! and preempting, a `kill -9`.
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use carp_common::virtual_mac;
use carp_tests::lab::{LabOptions, NodeParams, Router, Switch, LAN_VHID, LAN_VIP6, NET6_PREFIX};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{serial, Pair};
use carp_user::wire::advert6::{parse_ipv6_advert, CARP_GROUP_V6};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);

/// Drops IPv4 protocol 112 forwarded by the switch in `ns` (a bridge table,
/// as `Pair::block_adverts_between_routers` does, on one switch).
fn block_ipv4_adverts(ns: &NetNs) {
    Pair::sh(ns, &["nft", "add", "table", "bridge", "carp_v4_block"]);
    Pair::sh(
        ns,
        &[
            "nft",
            "add chain bridge carp_v4_block forward { type filter hook forward priority 0; policy accept; }",
        ],
    );
    Pair::sh(
        ns,
        &[
            "nft",
            "add rule bridge carp_v4_block forward ether type ip ip protocol 112 counter drop",
        ],
    );
}

/// Packets the block rule dropped so far.
fn blocked(ns: &NetNs) -> u64 {
    blocked_or_counted(ns, "carp_v4_block")
}

/// The packets of the first counter in bridge table `table`.
fn blocked_or_counted(ns: &NetNs, table: &str) -> u64 {
    let text = Pair::sh(ns, &["nft", "list", "table", "bridge", table]);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {table}:\n{text}"))
}

/// The link-local address of `dev` in `ns`.
fn link_local(ns: &NetNs, dev: &str) -> Ipv6Addr {
    let text = Pair::sh(
        ns,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
        ],
    );
    text.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on {dev}: {text:?}"))
}

/// The first frame of a pcap file (classic format, either byte order).
fn first_frame(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("reading the capture");
    assert!(
        bytes.len() > 24 + 16,
        "empty capture ({} bytes)",
        bytes.len()
    );
    let le = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let word = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let caplen = word(24 + 8) as usize;
    bytes[40..40 + caplen].to_vec()
}

#[test]
fn ipv6_adverts_alone_elect_one_master_and_fail_over() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
    let opts = LabOptions {
        with_wan: false,
        ..LabOptions::default()
    };
    let mut pair = Pair::new(opts, params).expect("building the lab");
    for r in Router::ALL {
        pair.replace_in_config(
            r,
            "addresses = [\"10.77.0.1/24\"]",
            &format!("addresses = [\"10.77.0.1/24\", \"{VIP6}/64\"]"),
        );
    }
    block_ipv4_adverts(pair.lab.switch(Switch::Lan));

    // One advert as fw2 receives it: on its switch port, past the rule.
    let pcap = std::env::temp_dir().join(format!("carp-adv6-{}.pcap", std::process::id()));
    let port = pair.lab.switch_port(Switch::Lan, Router::Fw2);
    let capture = std::process::Command::new("ip")
        .args(["netns", "exec", pair.lab.switch(Switch::Lan).name()])
        .args([
            "timeout", "15", "tcpdump", "-i", port, "-c", "1", "-U", "-w",
        ])
        .arg(&pcap)
        .arg("ip6 and ip6[6] == 112")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting tcpdump on the switch");
    // tcpdump needs a moment to open its socket.
    std::thread::sleep(Duration::from_millis(1500));
    pair.start_standard();

    let fw1_ll = link_local(pair.router_ns(Router::Fw1), "lan0");
    let done = capture.wait_with_output().expect("tcpdump");
    assert!(
        done.status.success(),
        "no IPv6 advert captured\n{}",
        pair.logs()
    );
    let frame = first_frame(&pcap);
    let _ = std::fs::remove_file(&pcap);
    let adv = parse_ipv6_advert(&frame)
        .unwrap_or_else(|e| panic!("captured frame is no IPv6 advert ({e}): {frame:02x?}"));
    assert_eq!(adv.dst_ip, CARP_GROUP_V6);
    assert_eq!(adv.dst_mac, [0x33, 0x33, 0, 0, 0, 0x12]);
    assert_eq!(adv.hop_limit, 255);
    assert_eq!(adv.src_ip, fw1_ll, "not from fw1's link-local address");
    assert_eq!(adv.src_mac, virtual_mac(LAN_VHID));
    assert_eq!((adv.carp.vhid, adv.carp.advskew), (LAN_VHID, 0));

    // Steady: longer than the master-down interval (3 s + skew), one
    // MASTER, and IPv4 adverts kept being dropped meanwhile.
    let before = blocked(pair.lab.switch(Switch::Lan));
    std::thread::sleep(Duration::from_secs(5));
    pair.wait_roles(Router::Fw1, Duration::from_millis(100));
    let after = blocked(pair.lab.switch(Switch::Lan));
    assert!(
        after > before,
        "the switch dropped no IPv4 advert ({before} -> {after}): the test proves nothing"
    );
    assert_eq!(
        pair.times_master(Router::Fw2),
        0,
        "fw2 was MASTER at some point\n{}",
        pair.logs()
    );

    // SIGTERM: fw1 bows out over IPv6 and fw2 takes over at once; fw1
    // back preempts (fw2 steps back on its IPv6 adverts); kill -9: fw2
    // takes over when the IPv6 adverts stop.
    pair.bow_out_return_and_kill(LAN_VHID, |_, _| {});
}

/// Drops both groups' adverts on the LAN switch (IPv4 protocol 112 of any
/// destination, IPv6 next header 112 to `ff02::12`) and counts the IPv6
/// unicast adverts it lets through.
fn only_ipv6_unicast_adverts(ns: &NetNs) {
    Pair::sh(ns, &["nft", "add", "table", "bridge", "carp_uni6"]);
    Pair::sh(
        ns,
        &[
            "nft",
            "add chain bridge carp_uni6 forward { type filter hook forward priority 0; policy accept; }",
        ],
    );
    for rule in [
        "add rule bridge carp_uni6 forward ether type ip ip protocol 112 drop",
        "add rule bridge carp_uni6 forward ether type ip6 ip6 nexthdr 112 ip6 daddr ff02::12 drop",
        "add rule bridge carp_uni6 forward ether type ip6 ip6 nexthdr 112 counter accept",
    ] {
        Pair::sh(ns, &["nft", rule]);
    }
}

/// IPv6 unicast peers (docs/protocol.md §1 "Unicast peers"): each router
/// lists the other's global address on the LAN as its only peer, both
/// groups are dropped on the switch, and the pair elects one MASTER on
/// unicast IPv6 adverts (hop limit 255, from the address the peer lists),
/// then fails over on SIGTERM and `kill -9`.
#[test]
fn ipv6_unicast_peers_alone_elect_one_master_and_fail_over() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
    let opts = LabOptions {
        with_wan: false,
        ipv6: true,
        ..LabOptions::default()
    };
    let mut pair = Pair::new(opts, params).expect("building the lab");
    for r in Router::ALL {
        let line = format!("addresses = [\"10.77.0.1/24\", \"{LAN_VIP6}/{NET6_PREFIX}\"]");
        pair.replace_in_config(
            r,
            &line,
            &format!("{line}\npeers = [\"{}\"]", r.other().lan_ip6()),
        );
    }
    let lan = pair.lab.switch(Switch::Lan);
    only_ipv6_unicast_adverts(lan);
    pair.start_standard();
    let before = blocked_or_counted(pair.lab.switch(Switch::Lan), "carp_uni6");
    std::thread::sleep(Duration::from_secs(4));
    pair.wait_roles(Router::Fw1, Duration::from_millis(100));
    assert!(
        blocked_or_counted(pair.lab.switch(Switch::Lan), "carp_uni6") > before,
        "no IPv6 unicast advert crossed the switch\n{}",
        pair.logs()
    );
    assert_eq!(
        pair.times_master(Router::Fw2),
        0,
        "fw2 was MASTER at some point\n{}",
        pair.logs()
    );

    // The bow-out and the adverts whose end the takeover waits for are
    // unicast IPv6 now.
    pair.bow_out_return_and_kill(LAN_VHID, |_, _| {});
}
