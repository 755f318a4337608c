//! Tier 3: the data path under attack (issue "Hold up under attack" §4),
//! the parts that only show with real controllers in the lab namespaces:
//! nobody answers ARP for a VIP off the CARP interfaces, and the sysctls a
//! controller changed go back to what they were before it, even when an
//! earlier run was killed with SIGKILL.
//!
//! The XDP rules of §4 (VLAN tags, a VIP behind another VHID's vMAC) are
//! test-run cases in `xdp.rs`.

use std::time::{Duration, Instant};

use carp_tests::lab::{LabOptions, NodeParams, Router, LAN_VHID, LAN_VIP, WAN_VIP};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{arping, serial, Pair};
use carp_user::netlink::sysctl_state_path;

fn sysctl(ns: &NetNs, key: &str) -> String {
    Pair::sh(ns, &["sysctl", "-n", key]).trim().to_string()
}

/// Waits until `r`'s controller reports its LAN VHID, i.e. has finished its
/// start (the control socket answers earlier, before the sysctls are set).
fn wait_started(pair: &mut Pair, r: Router) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pair.node(r).state(LAN_VHID).is_none() {
        assert!(
            Instant::now() < deadline && !pair.node(r).is_exited(),
            "{} did not start\n{}",
            r.name(),
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel answers ARP for any local address on any interface unless told
/// otherwise, and the VIPs are local addresses (holder device) on both nodes:
/// without the fix, an ARP request for the LAN VIP on the sync link was
/// answered by the kernel of the node on the other end, MASTER or not
/// (checked before the fix: fw1 answered 2 of 2 requests from fw2 on sync0,
/// and fw2 those from fw1).
#[test]
fn no_arp_answer_for_a_vip_off_the_carp_interfaces() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let pair = Pair::standard();

    for r in Router::ALL {
        let ns = pair.router_ns(r);
        // The link itself answers: the peer's own sync address is found.
        let (sent, replies, _) = arping(ns, "sync0", r.other().sync_ip(), 2);
        assert_eq!(
            replies,
            sent,
            "{}: no ARP answer for {}'s own sync address on sync0\n{}",
            r.name(),
            r.other().name(),
            pair.logs()
        );
        for vip in [LAN_VIP, WAN_VIP] {
            let (_, replies, macs) = arping(ns, "sync0", vip, 2);
            assert_eq!(
                replies,
                0,
                "{}: {} answered ARP for the VIP {vip} on sync0 (from {macs:?})",
                r.name(),
                r.other().name()
            );
        }
        assert_eq!(sysctl(ns, "net.ipv4.conf.all.arp_ignore"), "1");
        assert_eq!(sysctl(ns, "net.ipv4.conf.all.arp_announce"), "2");
    }
    // The client on the LAN still gets its one answer, from the vMAC.
    let (sent, replies, macs) = arping(pair.lab.client(), "eth0", LAN_VIP, 2);
    assert_eq!(replies, sent, "client: ARP for the LAN VIP unanswered");
    assert_eq!(macs.len(), 1, "client: ARP answered from {macs:?}");
}

/// SIGKILL, restart, SIGTERM: the sysctls end as they were before the first
/// run. Without the fix the restarted controller took the values the killed
/// one had set (arp_ignore=1) for the originals and "restored" those (checked
/// before the fix: lan0 arp_ignore stayed 1).
#[test]
fn sysctls_restored_to_the_originals_after_kill9_and_restart() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
    let mut pair = Pair::new(LabOptions::default(), params).expect("building the lab");
    let fw1 = Router::Fw1;
    let keys = [
        ("net.ipv4.conf.lan0.arp_ignore", "0"),
        ("net.ipv4.conf.lan0.arp_announce", "0"),
        ("net.ipv4.conf.wan0.arp_ignore", "0"),
        ("net.ipv4.conf.all.arp_ignore", "0"),
        ("net.ipv4.conf.all.arp_announce", "0"),
    ];
    for (k, v) in keys {
        pair.router_ns(fw1).sysctl(k, v).expect("sysctl");
    }
    let state_file = sysctl_state_path(&pair.lab.control_socket(fw1));
    let _ = std::fs::remove_file(&state_file);

    pair.start(fw1);
    wait_started(&mut pair, fw1);
    for (k, _) in &keys {
        let want = if k.ends_with("arp_announce") {
            "2"
        } else {
            "1"
        };
        assert_eq!(sysctl(pair.router_ns(fw1), k), want, "{k} while running");
    }
    assert!(
        state_file.is_file(),
        "no state file {} while running",
        state_file.display()
    );

    pair.node(fw1).kill9().expect("kill -9");
    assert!(pair.node(fw1).wait_exit(Duration::from_secs(5)).is_some());
    // Left as the killed run set them (harmless without XDP), with the originals on disk.
    assert_eq!(
        sysctl(pair.router_ns(fw1), "net.ipv4.conf.lan0.arp_ignore"),
        "1"
    );
    assert!(state_file.is_file(), "the state file must survive SIGKILL");

    pair.start(fw1);
    wait_started(&mut pair, fw1);
    assert_eq!(
        sysctl(pair.router_ns(fw1), "net.ipv4.conf.lan0.arp_ignore"),
        "1"
    );
    pair.node(fw1).sigterm().expect("SIGTERM");
    let st = pair.node(fw1).wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "orderly stop: {st:?}\n{}",
        pair.logs()
    );
    for (k, v) in keys {
        assert_eq!(
            sysctl(pair.router_ns(fw1), k),
            v,
            "{k} after kill -9, restart and SIGTERM\n{}",
            pair.logs()
        );
    }
    assert!(
        !state_file.exists(),
        "the state file {} must go with an orderly stop",
        state_file.display()
    );
}
