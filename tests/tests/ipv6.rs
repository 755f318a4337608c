//! Tier 3: an IPv6 VIP through a failover, on the lab with IPv6
//! ([`LabOptions::ipv6`]): the client and the routers' LAN ports have
//! addresses in 2001:db8:77::/64, and the LAN VHID has the IPv6 VIP
//! 2001:db8:77::1 next to its IPv4 one.
//!
//! What it shows: the client resolves the VIP to the virtual MAC (the
//! MASTER's XDP program answers its neighbour solicitation, the BACKUP's
//! drops it), the VIP answers ping6, and after the MASTER stops the new
//! MASTER answers on the same MAC and announces the VIP (its unsolicited
//! neighbour advertisement is captured on the client); an IPv6 VIP added
//! to the new MASTER by SIGHUP answers too.
//!
//! [`LabOptions::ipv6`]: carp_tests::lab::LabOptions::ipv6
use std::net::Ipv6Addr;
use std::time::Duration;

use carp_common::virtual_mac;
use carp_tests::lab::{format_mac, LabOptions, NodeParams, Router, LAN_VHID, LAN_VIP6 as VIP6};
use carp_tests::netns::require_root;
use carp_tests::pair::{ping3_ok, serial, Pair};

#[test]
fn ipv6_vip_answers_through_a_failover() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
    let opts = LabOptions {
        ipv6: true,
        ..LabOptions::default()
    };
    let mut pair = Pair::new(opts, params).expect("building the lab");
    pair.start_standard();

    for r in Router::ALL {
        let held = Pair::sh(
            pair.router_ns(r),
            &["ip", "-6", "addr", "show", "dev", "carp0"],
        );
        assert!(
            held.contains(&format!("{VIP6}/128")),
            "{}: the holder lacks the IPv6 VIP:\n{held}",
            r.name()
        );
    }
    let (ok, text) = ping3_ok(pair.lab.client(), VIP6);
    assert!(
        ok,
        "ping6 to the VIP through fw1 failed:\n{text}\n{}",
        pair.logs()
    );
    let neigh = Pair::sh(
        pair.lab.client(),
        &["ip", "-6", "neigh", "show", &VIP6.to_string()],
    );
    let vmac = format_mac(virtual_mac(LAN_VHID));
    assert!(
        neigh.contains(&vmac),
        "the client resolved the VIP to {neigh:?}, not the virtual MAC {vmac}"
    );
    assert!(pair.xdp_counter(Router::Fw1, "lan0", "ndp_replied") >= 1);
    assert_eq!(pair.xdp_counter(Router::Fw2, "lan0", "ndp_replied"), 0);

    // fw1 leaves (SIGTERM: bow-out), fw2 takes over and announces the VIP:
    // the client sees its unsolicited advertisement (to ff02::1, from the
    // virtual MAC).
    let capture = std::process::Command::new("ip")
        .args(["netns", "exec", pair.lab.client().name()])
        .args([
            "timeout", "15", "tcpdump", "-i", "eth0", "-n", "-l", "-e", "-c", "1",
        ])
        .arg("icmp6 and ip6[40] == 136 and ip6 dst ff02::1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting tcpdump on the client");
    // tcpdump needs a moment to open its socket.
    std::thread::sleep(Duration::from_millis(1500));
    pair.node(Router::Fw1).sigterm().expect("SIGTERM to fw1");
    assert!(
        pair.node(Router::Fw1)
            .wait_exit(Duration::from_secs(10))
            .is_some(),
        "fw1 did not stop\n{}",
        pair.logs()
    );
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", Duration::from_secs(10)),
        "fw2 did not take over\n{}",
        pair.logs()
    );
    let announced = capture.wait_with_output().expect("tcpdump");
    let announced = String::from_utf8_lossy(&announced.stdout);
    assert!(
        announced.contains(&vmac) && announced.contains(&format!("tgt is {VIP6}")),
        "no unsolicited neighbour advertisement for the VIP from the vMAC: {announced:?}\n{}",
        pair.logs()
    );
    let (ok, text) = ping3_ok(pair.lab.client(), VIP6);
    assert!(
        ok,
        "ping6 to the VIP through fw2 failed:\n{text}\n{}",
        pair.logs()
    );
    // A second IPv6 VIP by reload (SIGHUP) on the new MASTER: it answers
    // at once (holder, `VIPS6`, unsolicited advertisement).
    let second = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 2);
    pair.replace_in_config(
        Router::Fw2,
        &format!("\"{VIP6}/64\""),
        &format!("\"{VIP6}/64\", \"{second}/64\""),
    );
    pair.node(Router::Fw2).sighup().expect("SIGHUP to fw2");
    let reached =
        carp_tests::util::poll_until(Duration::from_secs(5), Duration::from_millis(200), || {
            ping3_ok(pair.lab.client(), second).0
        });
    assert!(
        reached,
        "the IPv6 VIP added by reload does not answer\n{}",
        pair.logs()
    );
    // The holder device goes with the controller that created it; either
    // way no address of fw1 is the VIP any more.
    let gone = Pair::sh(pair.router_ns(Router::Fw1), &["ip", "-6", "addr", "show"]);
    assert!(
        !gone.contains(&format!(" {VIP6}/")),
        "fw1 left its IPv6 VIP behind:\n{gone}"
    );
}
