//! Tier 3: an IPv6-only VHID on interfaces without any IPv4 address. The
//! lab is built with IPv6 ([`LabOptions::ipv6`]), the routers' `lan0` lose
//! their IPv4 addresses, and the LAN VHID has the IPv6 VIP only.
//!
//! What it shows: the controller starts on an interface without IPv4 (no
//! IPv4 source is needed for a VHID without IPv4 addresses), the pair
//! elects one MASTER on adverts to `ff02::12` alone, and neither node puts
//! an IPv4 advert or an ARP packet from the virtual MAC on the wire (the
//! BSDs' rule: a family's copy only for addresses of that family; counted
//! by a bridge rule on the switch); the VIP answers ping6 through fw1, and
//! through fw2 after a SIGTERM bow-out and after a `kill -9`.
//!
//! [`LabOptions::ipv6`]: carp_tests::lab::LabOptions::ipv6
use std::time::Duration;

use carp_common::virtual_mac;
use carp_tests::lab::{
    format_mac, LabOptions, NodeParams, Router, Switch, LAN_VHID, LAN_VIP6, NET6_PREFIX,
};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{ping3_ok, serial, Pair};
use carp_tests::util::poll_until;

/// Counts, without dropping, what an IPv6-only VHID must never send across
/// the LAN switch: IPv4 protocol 112 and ARP from the virtual MAC.
fn count_ipv4_from_the_vhid(ns: &NetNs) {
    let vmac = format_mac(virtual_mac(LAN_VHID));
    Pair::sh(ns, &["nft", "add", "table", "bridge", "carp_v4_watch"]);
    Pair::sh(
        ns,
        &[
            "nft",
            "add chain bridge carp_v4_watch forward { type filter hook forward priority 0; policy accept; }",
        ],
    );
    Pair::sh(
        ns,
        &[
            "nft",
            "add rule bridge carp_v4_watch forward ether type ip ip protocol 112 counter",
        ],
    );
    let arp =
        format!("add rule bridge carp_v4_watch forward ether saddr {vmac} ether type arp counter");
    Pair::sh(ns, &["nft", &arp]);
}

/// The packet counts of the two watch rules, in rule order.
fn ipv4_counts(ns: &NetNs) -> Vec<u64> {
    let text = Pair::sh(ns, &["nft", "list", "table", "bridge", "carp_v4_watch"]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let counts: Vec<u64> = words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "two counters expected:\n{text}");
    counts
}

/// ping6 until it answers, for at most `within`.
fn ping6_answers(pair: &Pair, within: Duration) -> bool {
    poll_until(within, Duration::from_millis(100), || {
        ping3_ok(pair.lab.client(), LAN_VIP6).0
    })
}

#[test]
fn ipv6_only_vhid_without_ipv4_on_the_link_elects_and_fails_over() {
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
        pair.replace_in_config(
            r,
            &format!("addresses = [\"10.77.0.1/24\", \"{LAN_VIP6}/{NET6_PREFIX}\"]"),
            &format!("addresses = [\"{LAN_VIP6}/{NET6_PREFIX}\"]"),
        );
        let ns = pair.router_ns(r);
        Pair::sh(ns, &["ip", "-4", "addr", "flush", "dev", "lan0"]);
        let left = Pair::sh(ns, &["ip", "-4", "-o", "addr", "show", "dev", "lan0"]);
        assert!(left.trim().is_empty(), "lan0 kept IPv4: {left}");
    }
    count_ipv4_from_the_vhid(pair.lab.switch(Switch::Lan));

    pair.start_standard();
    // Steady for longer than the master-down interval (3 s + skew): one
    // MASTER, fw2 never was one.
    std::thread::sleep(Duration::from_secs(4));
    pair.wait_roles(Router::Fw1, Duration::from_millis(100));
    assert_eq!(
        pair.times_master(Router::Fw2),
        0,
        "fw2 was MASTER at some point\n{}",
        pair.logs()
    );
    let (ok, text) = ping3_ok(pair.lab.client(), LAN_VIP6);
    assert!(
        ok,
        "ping6 to the VIP through fw1 failed:\n{text}\n{}",
        pair.logs()
    );

    // SIGTERM: fw1 bows out over IPv6 and fw2 takes over at once; fw1
    // back preempts; kill -9: fw2 takes over when the IPv6 adverts stop.
    // The VIP answers ping6 through fw2 after each takeover.
    pair.bow_out_return_and_kill(LAN_VHID, |pair, when| {
        assert!(
            ping6_answers(pair, Duration::from_secs(5)),
            "the VIP does not answer ping6 through fw2 {when}\n{}",
            pair.logs()
        );
    });

    // Neither node sent an IPv4 advert or an ARP packet for the VHID, in
    // all those elections and takeovers.
    assert_eq!(
        ipv4_counts(pair.lab.switch(Switch::Lan)),
        [0, 0],
        "IPv4 adverts / ARP from the virtual MAC seen on the switch\n{}",
        pair.logs()
    );
}
