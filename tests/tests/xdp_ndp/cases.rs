//! The IPv6 rows of the tier-2 rule table (`xdp.rs`): neighbour solicitations
//! for a VIP (answered as MASTER, dropped otherwise), and IPv6 traffic to a
//! VIP. `check_case` maps `VIP6_1` → VHID 1 and `VIP6_2` → VHID 2.
//!
//! The expected advertisements are written out byte by byte here, with the
//! checksum over the pseudo-header computed by `inet_checksum`, so that they
//! share no code with the program (which takes them from
//! `carp_common::ndp`).
use std::net::Ipv6Addr;

use carp_common::Reason;
use carp_tests::xdp_run::{frames::*, XDP_DROP, XDP_PASS, XDP_TX};

use super::{Case, ExpectedAdvert, Output, Role, IF_MAC, PEER_MAC};

pub const VIP6_1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x65);
pub const VIP6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66);
const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const OTHER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x07);
/// No VIP, but in VIP6_1's `VIPS6_SLOTS` slot: the slot (naming VIP6_1),
/// or the hash when the slot is shared, has to say no.
const NON_VIP6_IN_SLOT: Ipv6Addr = same_slot6(VIP6_1, 1);

/// Another address in the `VIPS6_SLOTS` slot of `a`
/// (`carp_common::vip6_slot` folds the XOR of the four 32-bit words):
/// flipping the bits of `k` in the last two words keeps their XOR.
const fn same_slot6(a: Ipv6Addr, k: u32) -> Ipv6Addr {
    let k = k as u128;
    Ipv6Addr::from_bits(a.to_bits() ^ (k << 32) ^ k)
}

/// An IPv6 packet with a 40-byte header.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, hop_limit]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// `icmp` with its ICMPv6 checksum (RFC 4443 §2.3) filled in.
fn with_icmp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, mut icmp: Vec<u8>) -> Vec<u8> {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = inet_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// `ff02::1:ffXX:XXXX`, the solicited-node group of `a`, and its MAC.
fn solicited_node(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = a.octets();
    let group = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ]);
    (group, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// A neighbour solicitation for `target` from `src` (to the solicited-node
/// group), with hop limit `hop` and `options` after the 24 fixed bytes.
fn ns(src: Ipv6Addr, target: Ipv6Addr, hop: u8, options: &[u8]) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(options);
    let icmp = with_icmp6_checksum(src, group, icmp);
    eth(
        group_mac,
        PEER_MAC,
        ETH_P_IPV6,
        &ipv6(src, group, 58, hop, &icmp),
    )
}

/// The source link-layer address option of a solicitation from `PEER_MAC`.
fn slla() -> Vec<u8> {
    let mut o = vec![1, 1];
    o.extend_from_slice(&PEER_MAC);
    o
}

/// The advertisement the MASTER of `vhid` must send for `vip`: from the
/// vMAC and the VIP to `dst`/`dst_mac`, hop limit 255, with `flags`
/// (0x80 Router, 0x40 Solicited, 0x20 Override) and the vMAC as target
/// link-layer address.
fn na(vhid: u8, vip: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], flags: u8) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, flags, 0, 0, 0];
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&vmac(vhid));
    let icmp = with_icmp6_checksum(vip, dst, icmp);
    eth(
        dst_mac,
        vmac(vhid),
        ETH_P_IPV6,
        &ipv6(vip, dst, 58, 255, &icmp),
    )
}

/// ff02::12, the IPv6 CARP group, and its MAC.
const CARP_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
const CARP_GROUP_MAC_V6: [u8; 6] = [0x33, 0x33, 0, 0, 0, 0x12];

/// An IPv6 frame from the vMAC of VHID 1 and `PEER_IP6` to ff02::12 with
/// next header 112, hop limit `hop` and `payload`.
fn carp6_frame(hop: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        CARP_GROUP_MAC_V6,
        vmac(1),
        ETH_P_IPV6,
        &ipv6(PEER_IP6, CARP_GROUP_V6, 112, hop, payload),
    )
}

/// Adverts over IPv6 (next header 112 to ff02::12): copied to the ring as
/// family 6 with the whole source, under the IPv4 advert's rules (hop limit
/// 255, configured VHID, checksum over the CARP header alone); VRRPv3 over
/// IPv6 passes untouched.
fn advert6_cases() -> Vec<Case> {
    use Reason::*;
    let (m, b) = (Role::Master, Role::Backup);
    let advert = carp_advert(1, 100, 1, 0x0102_0304_0506_0708);
    let record = || {
        Some(ExpectedAdvert {
            src_mac: vmac(1),
            src: PEER_IP6.into(),
            dst: CARP_GROUP_V6.into(),
            ttl: 255,
            payload: advert,
        })
    };
    let row = |name, frame, vhid1, verdict, counters, advert| Case {
        name,
        frame,
        vhid1,
        vhid2: b,
        verdict,
        output: Output::Unchanged,
        counters,
        advert,
    };
    let mut bad_sum = advert;
    bad_sum[6] ^= 0x01;
    // VRRPv3 (RFC 5798 §5.1) over IPv6: version 3, type 1, one address.
    let mut vrrp3 = vec![0x31, 1, 100, 1, 0x00, 100, 0, 0];
    vrrp3.extend_from_slice(&VIP6_1.octets());
    // A hop-by-hop options header (8 bytes of padding) in front of the advert.
    let mut hbh = vec![112, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&advert);
    let behind_hbh = eth(
        CARP_GROUP_MAC_V6,
        vmac(1),
        ETH_P_IPV6,
        &ipv6(PEER_IP6, CARP_GROUP_V6, 0, 255, &hbh),
    );
    // The header announces 36 bytes, the frame carries 20.
    let cut = carp6_frame(255, &advert)[..14 + 40 + 20].to_vec();
    let mut padded = carp6_frame(255, &advert);
    padded.extend_from_slice(&[0; 6]);
    vec![
        row(
            "IPv6 CARP advert to ff02::12 as BACKUP: copied to the ring (family 6), passed",
            carp6_frame(255, &advert),
            b,
            XDP_PASS,
            &[(CarpAdvert, 1)],
            record(),
        ),
        row(
            "IPv6 CARP advert as MASTER: copied to the ring, passed",
            carp6_frame(255, &advert),
            m,
            XDP_PASS,
            &[(CarpAdvert, 1)],
            record(),
        ),
        row(
            "IPv6 CARP advert with Ethernet padding: still CARP",
            padded,
            b,
            XDP_PASS,
            &[(CarpAdvert, 1)],
            record(),
        ),
        row(
            "IPv6 CARP advert with hop limit 254: dropped",
            carp6_frame(254, &advert),
            b,
            XDP_DROP,
            &[(CarpBadTtl, 1)],
            None,
        ),
        row(
            "IPv6 CARP advert with a bad checksum: dropped",
            carp6_frame(255, &bad_sum),
            b,
            XDP_DROP,
            &[(CarpBadChecksum, 1)],
            None,
        ),
        row(
            "IPv6 CARP advert for an unconfigured VHID: dropped",
            carp6_frame(255, &carp_advert(9, 0, 1, 1)),
            b,
            XDP_DROP,
            &[(CarpUnknownVhid, 1)],
            None,
        ),
        row(
            "IPv6 CARP advert cut short in the frame: dropped",
            cut,
            b,
            XDP_DROP,
            &[(CarpShort, 1)],
            None,
        ),
        row(
            "VRRPv3 over IPv6 (0x31) to ff02::12: passed untouched",
            carp6_frame(255, &vrrp3),
            b,
            XDP_PASS,
            &[(Proto112Other, 1)],
            None,
        ),
        row(
            "IPv6 CARP advert behind a hop-by-hop header: not looked for, passed",
            behind_hbh,
            b,
            XDP_PASS,
            &[(PassUnrelated, 1)],
            None,
        ),
    ]
}

fn udp6_to(dst: Ipv6Addr) -> Vec<u8> {
    ipv6(OTHER_IP6, dst, 17, 64, &udp(33333, 53, b"carp-test"))
}

pub fn cases() -> Vec<Case> {
    use Reason::*;
    let (m, b) = (Role::Master, Role::Backup);
    let case = |name, frame, vhid1, vhid2, verdict, output, counters| Case {
        name,
        frame,
        vhid1,
        vhid2,
        verdict,
        output,
        counters,
        advert: None,
    };
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let solicited = na(1, VIP6_1, PEER_IP6, PEER_MAC, 0xe0);
    let nonce = [14, 1, 1, 2, 3, 4, 5, 6];
    // Truncated: the header announces 32 bytes of ICMPv6, the frame has 20.
    let short_ns = ns(PEER_IP6, VIP6_1, 255, &slla())[..14 + 40 + 20].to_vec();
    // Payload length 16 (and 16 bytes there): too short for any NS.
    let mut tiny_ns = ns(PEER_IP6, VIP6_1, 255, &[])[..14 + 40 + 16].to_vec();
    tiny_ns[18..20].copy_from_slice(&16u16.to_be_bytes());
    let mut padded_ns = ns(PEER_IP6, VIP6_1, 255, &slla());
    padded_ns.extend_from_slice(&[0; 10]);
    let mut vmac6_to_if = eth(vmac(1), PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_1));
    vmac6_to_if[..6].copy_from_slice(&IF_MAC);
    let mut rows = vec![
        case(
            "NS for an IPv6 VIP as MASTER: NA from the vMAC (R, S, O; TLLA = vMAC)",
            ns(PEER_IP6, VIP6_1, 255, &slla()),
            m,
            b,
            XDP_TX,
            Output::Exact(solicited.clone()),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS for an IPv6 VIP as MASTER near its deadline: answered (precise clock)",
            ns(PEER_IP6, VIP6_1, 255, &slla()),
            Role::MasterNearDeadline,
            b,
            XDP_TX,
            Output::Exact(solicited.clone()),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS without options for an IPv6 VIP as MASTER: the frame grows to the NA",
            ns(PEER_IP6, VIP6_1, 255, &[]),
            m,
            b,
            XDP_TX,
            Output::Exact(solicited.clone()),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS with two options and Ethernet padding as MASTER: the frame shrinks to the NA",
            {
                let mut f = ns(PEER_IP6, VIP6_1, 255, &[slla(), nonce.to_vec()].concat());
                f.extend_from_slice(&[0; 6]);
                f
            },
            m,
            b,
            XDP_TX,
            Output::Exact(solicited.clone()),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS with trailing bytes past the payload as MASTER: answered, trimmed",
            padded_ns,
            m,
            b,
            XDP_TX,
            Output::Exact(solicited),
            &[(NdpReplied, 1)],
        ),
        case(
            "DAD NS (from ::) for an IPv6 VIP as MASTER: defended, NA to ff02::1 without S",
            ns(Ipv6Addr::UNSPECIFIED, VIP6_1, 255, &nonce),
            m,
            b,
            XDP_TX,
            Output::Exact(na(1, VIP6_1, all_nodes, all_nodes_mac, 0xa0)),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS for the other VHID's IPv6 VIP as MASTER of VHID 2: NA from vMAC 2",
            ns(PEER_IP6, VIP6_2, 255, &slla()),
            b,
            m,
            XDP_TX,
            Output::Exact(na(2, VIP6_2, PEER_IP6, PEER_MAC, 0xe0)),
            &[(NdpReplied, 1)],
        ),
        case(
            "NS for an IPv6 VIP as BACKUP: dropped (the kernel must not answer)",
            ns(PEER_IP6, VIP6_1, 255, &slla()),
            b,
            m,
            XDP_DROP,
            Output::Unchanged,
            &[(NdpDroppedNotMaster, 1)],
        ),
        case(
            "NS for an IPv6 VIP as INIT: dropped",
            ns(PEER_IP6, VIP6_1, 255, &slla()),
            Role::Init,
            m,
            XDP_DROP,
            Output::Unchanged,
            &[(NdpDroppedNotMaster, 1)],
        ),
        case(
            "NS for an IPv6 VIP as MASTER past expiry: dropped",
            ns(PEER_IP6, VIP6_1, 255, &slla()),
            Role::MasterExpired,
            m,
            XDP_DROP,
            Output::Unchanged,
            &[(NdpDroppedNotMaster, 1)],
        ),
        case(
            "DAD NS for an IPv6 VIP as BACKUP: dropped",
            ns(Ipv6Addr::UNSPECIFIED, VIP6_1, 255, &[]),
            b,
            m,
            XDP_DROP,
            Output::Unchanged,
            &[(NdpDroppedNotMaster, 1)],
        ),
        case(
            "NS for another address: passed",
            ns(PEER_IP6, OTHER_IP6, 255, &slla()),
            m,
            m,
            XDP_PASS,
            Output::Unchanged,
            &[(PassUnrelated, 1)],
        ),
        case(
            "NS for an IPv6 VIP with hop limit 64 (routed, invalid): left to the kernel",
            ns(PEER_IP6, VIP6_1, 64, &slla()),
            b,
            b,
            XDP_PASS,
            Output::Unchanged,
            &[(PassUnrelated, 1)],
        ),
        case(
            "NS truncated by the frame: dropped as malformed",
            short_ns,
            m,
            b,
            XDP_DROP,
            Output::Unchanged,
            &[(DropMalformed, 1)],
        ),
        case(
            "NS with an ICMP length of 16: dropped as malformed",
            tiny_ns,
            m,
            b,
            XDP_DROP,
            Output::Unchanged,
            &[(DropMalformed, 1)],
        ),
        case(
            "ICMPv6 header missing from the frame: dropped as malformed",
            eth(
                IF_MAC,
                PEER_MAC,
                ETH_P_IPV6,
                &ipv6(PEER_IP6, VIP6_1, 58, 255, &[]),
            ),
            m,
            b,
            XDP_DROP,
            Output::Unchanged,
            &[(DropMalformed, 1)],
        ),
        case(
            "IPv6 EtherType with a truncated header: dropped as malformed",
            eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_1)[..30]),
            m,
            b,
            XDP_DROP,
            Output::Unchanged,
            &[(DropMalformed, 1)],
        ),
        case(
            "ICMPv6 echo request to an IPv6 VIP as MASTER: passed",
            eth(
                IF_MAC,
                PEER_MAC,
                ETH_P_IPV6,
                &ipv6(PEER_IP6, VIP6_1, 58, 64, &[128, 0, 0, 0, 0, 1, 0, 1]),
            ),
            m,
            b,
            XDP_PASS,
            Output::Unchanged,
            &[(VipPassed, 1)],
        ),
        case(
            "IPv6 to an IPv6 VIP as MASTER: passed",
            eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_1)),
            m,
            b,
            XDP_PASS,
            Output::Unchanged,
            &[(VipPassed, 1)],
        ),
        case(
            "IPv6 to an IPv6 VIP as BACKUP: dropped",
            eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_1)),
            b,
            m,
            XDP_DROP,
            Output::Unchanged,
            &[(VipDroppedNotMaster, 1)],
        ),
        case(
            "IPv6 to an IPv6 VIP via the vMAC as MASTER: rewritten",
            eth(vmac(1), PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_1)),
            m,
            b,
            XDP_PASS,
            Output::Exact(vmac6_to_if),
            &[(VmacRewritten, 1)],
        ),
        case(
            "IPv6 to a BACKUP's IPv6 VIP through a MASTER vMAC: dropped",
            eth(vmac(1), PEER_MAC, ETH_P_IPV6, &udp6_to(VIP6_2)),
            m,
            b,
            XDP_DROP,
            Output::Unchanged,
            &[(VipDroppedNotMaster, 1)],
        ),
        case(
            "IPv6 to a non-VIP in the sole IPv6 VIP's prefilter slot: passed",
            eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(NON_VIP6_IN_SLOT)),
            m,
            m,
            XDP_PASS,
            Output::Unchanged,
            &[(PassUnrelated, 1)],
        ),
        case(
            "NS for a non-VIP in the sole IPv6 VIP's prefilter slot: passed",
            ns(PEER_IP6, NON_VIP6_IN_SLOT, 255, &slla()),
            m,
            m,
            XDP_PASS,
            Output::Unchanged,
            &[(PassUnrelated, 1)],
        ),
        case(
            "IPv6 to another address: passed",
            eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(OTHER_IP6)),
            b,
            b,
            XDP_PASS,
            Output::Unchanged,
            &[(PassUnrelated, 1)],
        ),
    ];
    rows.extend(advert6_cases());
    rows
}

#[test]
fn vips6_round_trip() {
    use carp_tests::netns::require_root;
    use carp_user::xdp::XdpInstance;
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    assert_eq!(inst.vip6(VIP6_1).expect("lookup"), None);
    inst.add_vip6(VIP6_1, 1).expect("add");
    assert_eq!(inst.vip6(VIP6_1).expect("lookup"), Some(1));
    inst.add_vip6(VIP6_1, 3).expect("move to another VHID");
    assert_eq!(inst.vip6(VIP6_1).expect("lookup"), Some(3));
    assert!(inst.add_vip6(VIP6_2, 0).is_err(), "VHID 0 is refused");
    inst.remove_vip6(VIP6_1).expect("remove");
    inst.remove_vip6(VIP6_1)
        .expect("removing an absent VIP is fine");
    assert_eq!(inst.vip6(VIP6_1).expect("lookup"), None);
}

/// The `VIPS6_SLOTS` prefilter follows IPv6 VIPs that come and go: an
/// address in an empty slot is no VIP (the slot says so, no hash), a sole VIP
/// is answered from its slot, and two VIPs that share a slot (beside a
/// non-VIP that shares it too) are both found through the `VIPS6` hash, by
/// `carp_xdp` (traffic, neighbour solicitations) and `carp_tc_egress`.
#[test]
fn vip6_prefilter_follows_vips_sharing_a_slot() {
    use super::verdict_and_reason;
    use carp_tests::netns::require_root;
    use carp_tests::xdp_run::{run_tc, TC_ACT_OK};
    use carp_user::xdp::XdpInstance;
    use Reason::*;

    if !require_root() {
        return;
    }
    // In the same prefilter slot as VIP6_1 and NON_VIP6_IN_SLOT.
    const VIP6_1B: Ipv6Addr = same_slot6(VIP6_1, 2);
    let slot_of = |a: Ipv6Addr| carp_common::vip6_slot(&a.octets());
    for a in [VIP6_1B, NON_VIP6_IN_SLOT] {
        assert_eq!(slot_of(a), slot_of(VIP6_1), "{a}");
    }
    assert_ne!(slot_of(OTHER_IP6), slot_of(VIP6_1));
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.set_vhid(1, Role::Backup.entry()).expect("set vhid");
    inst.set_vhid(2, Role::Master.entry()).expect("set vhid");
    let ip = |dst| eth(IF_MAC, PEER_MAC, ETH_P_IPV6, &udp6_to(dst));
    let solicit = |target| ns(PEER_IP6, target, 255, &slla());
    let slot = |inst: &XdpInstance| inst.vip6_slot(VIP6_1).expect("slot");
    let check = |inst: &XdpInstance, frame: Vec<u8>, want: (u32, Reason), what: &str| {
        assert_eq!(verdict_and_reason(inst, &frame), want, "{what}");
    };
    // The source MAC `carp_tc_egress` gives a frame from `src`.
    let egress_src = |inst: &XdpInstance, src: Ipv6Addr| {
        let frame = eth(
            PEER_MAC,
            IF_MAC,
            ETH_P_IPV6,
            &ipv6(src, PEER_IP6, 17, 64, &udp(53, 33333, b"carp-test")),
        );
        let res = run_tc(inst.tc_egress_program().expect("program"), &frame, 1).expect("run");
        assert_eq!(res.verdict, TC_ACT_OK);
        <[u8; 6]>::try_from(&res.output[6..12]).expect("source MAC")
    };

    assert_eq!(slot(&inst).count, 0);
    check(&inst, ip(VIP6_1), (XDP_PASS, PassUnrelated), "no VIPs yet");
    check(
        &inst,
        solicit(VIP6_1),
        (XDP_PASS, PassUnrelated),
        "NS, no VIPs yet",
    );

    // Other IPv6 VIPs elsewhere leave this slot empty: its addresses are
    // no VIPs without a look at the hash.
    inst.add_vip6(VIP6_2, 2).expect("add VIP6_2");
    assert_eq!(slot(&inst).count, 0, "VIP6_2 is in another slot");
    check(
        &inst,
        ip(VIP6_1),
        (XDP_PASS, PassUnrelated),
        "empty slot beside VIP6_2",
    );

    // One VIP in the slot: the slot names it and answers for it.
    inst.add_vip6(VIP6_1, 1).expect("add VIP6_1");
    assert_eq!(
        (slot(&inst).count, slot(&inst).addr, slot(&inst).vhid),
        (1, VIP6_1.octets(), 1)
    );
    check(
        &inst,
        ip(VIP6_1),
        (XDP_DROP, VipDroppedNotMaster),
        "sole VIP6_1, BACKUP",
    );
    check(
        &inst,
        solicit(VIP6_1),
        (XDP_DROP, NdpDroppedNotMaster),
        "NS for the sole VIP6_1, BACKUP",
    );
    check(
        &inst,
        ip(NON_VIP6_IN_SLOT),
        (XDP_PASS, PassUnrelated),
        "non-VIP in the slot beside the sole VIP6_1",
    );
    inst.add_vip6(VIP6_1, 2)
        .expect("move the sole VIP6_1 to VHID 2");
    assert_eq!((slot(&inst).count, slot(&inst).vhid), (1, 2));
    check(
        &inst,
        ip(VIP6_1),
        (XDP_PASS, VipPassed),
        "sole VIP6_1 moved to the MASTER VHID",
    );
    check(
        &inst,
        solicit(VIP6_1),
        (XDP_TX, NdpReplied),
        "NS for the sole VIP6_1, MASTER",
    );
    assert_eq!(egress_src(&inst, VIP6_1), vmac(2), "egress, sole VIP6_1");

    // Two VIPs in the slot: both through the hash.
    inst.add_vip6(VIP6_1, 1).expect("and back");
    inst.add_vip6(VIP6_1B, 2).expect("add VIP6_1B");
    inst.add_vip6(VIP6_1B, 2).expect("add VIP6_1B again");
    assert_eq!(slot(&inst).count, 2, "a VIP added twice is counted once");
    check(
        &inst,
        ip(VIP6_1),
        (XDP_DROP, VipDroppedNotMaster),
        "VIP6_1 sharing the slot, BACKUP",
    );
    check(
        &inst,
        ip(VIP6_1B),
        (XDP_PASS, VipPassed),
        "VIP6_1B sharing the slot, MASTER",
    );
    check(
        &inst,
        solicit(VIP6_1B),
        (XDP_TX, NdpReplied),
        "NS for VIP6_1B sharing the slot, MASTER",
    );
    check(
        &inst,
        solicit(VIP6_1),
        (XDP_DROP, NdpDroppedNotMaster),
        "NS for VIP6_1 sharing the slot, BACKUP",
    );
    check(
        &inst,
        ip(NON_VIP6_IN_SLOT),
        (XDP_PASS, PassUnrelated),
        "non-VIP in the shared slot",
    );
    check(
        &inst,
        solicit(NON_VIP6_IN_SLOT),
        (XDP_PASS, PassUnrelated),
        "NS for a non-VIP in the shared slot",
    );
    assert_eq!(egress_src(&inst, VIP6_1B), vmac(2), "egress, VIP6_1B");
    assert_eq!(egress_src(&inst, VIP6_1), IF_MAC, "egress, VIP6_1 (BACKUP)");

    // Removing one of the two names the other in the slot again.
    inst.remove_vip6(VIP6_1B).expect("remove VIP6_1B");
    assert_eq!(
        (slot(&inst).count, slot(&inst).addr, slot(&inst).vhid),
        (1, VIP6_1.octets(), 1)
    );
    check(
        &inst,
        ip(VIP6_1),
        (XDP_DROP, VipDroppedNotMaster),
        "VIP6_1 after VIP6_1B went",
    );
    check(
        &inst,
        ip(VIP6_1B),
        (XDP_PASS, PassUnrelated),
        "VIP6_1B removed",
    );
    inst.remove_vip6(VIP6_1B)
        .expect("removing an absent VIP is fine");
    assert_eq!(
        slot(&inst).count,
        1,
        "removing an absent VIP keeps the count"
    );

    inst.remove_vip6(VIP6_1).expect("remove VIP6_1");
    assert_eq!(slot(&inst).count, 0, "the slot after every VIP in it went");
    check(&inst, ip(VIP6_1), (XDP_PASS, PassUnrelated), "all removed");
    check(
        &inst,
        ip(VIP6_2),
        (XDP_PASS, VipPassed),
        "VIP6_2 in its own slot stays",
    );
}

/// `carp_tc_egress` for IPv6: a frame from the interface MAC with an IPv6
/// VIP as source leaves from the virtual MAC while its VHID is MASTER;
/// anything else leaves as it came (the IPv4 rows are in `xdp.rs`).
#[test]
fn tc_egress_sources_master_ipv6_vip_traffic_from_the_vmac() {
    use carp_tests::netns::require_root;
    use carp_tests::xdp_run::{run_tc, TC_ACT_OK};
    use carp_user::xdp::XdpInstance;
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.add_vip6(VIP6_1, 1).expect("add vip");
    inst.add_vip6(VIP6_2, 2).expect("add vip");
    let from = |src_mac: [u8; 6], src: Ipv6Addr| {
        eth(
            PEER_MAC,
            src_mac,
            ETH_P_IPV6,
            &ipv6(src, PEER_IP6, 17, 64, &udp(53, 33333, b"carp-test")),
        )
    };
    // (name, VHID 1's role, VHID 2's role, frame, the source MAC expected out)
    type EgressCase = (&'static str, Role, Role, Vec<u8>, Option<[u8; 6]>);
    let cases: Vec<EgressCase> = vec![
        (
            "VIP6_1 as MASTER",
            Role::Master,
            Role::Backup,
            from(IF_MAC, VIP6_1),
            Some(vmac(1)),
        ),
        (
            "VIP6_2 as MASTER of VHID 2",
            Role::Backup,
            Role::Master,
            from(IF_MAC, VIP6_2),
            Some(vmac(2)),
        ),
        (
            "VIP6_1 as BACKUP",
            Role::Backup,
            Role::Master,
            from(IF_MAC, VIP6_1),
            None,
        ),
        (
            "VIP6_1 as expired MASTER",
            Role::MasterExpired,
            Role::Master,
            from(IF_MAC, VIP6_1),
            None,
        ),
        (
            "another IPv6 source",
            Role::Master,
            Role::Master,
            from(IF_MAC, OTHER_IP6),
            None,
        ),
        (
            "VIP6_1 from another MAC",
            Role::Master,
            Role::Master,
            from(PEER_MAC, VIP6_1),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (name, vhid1, vhid2, frame, new_src) in cases {
        inst.set_vhid(1, vhid1.entry()).expect("set vhid");
        inst.set_vhid(2, vhid2.entry()).expect("set vhid");
        let res = run_tc(inst.tc_egress_program().expect("program"), &frame, 1)
            .unwrap_or_else(|e| panic!("{name}: test run: {e:?}"));
        let mut want = frame.clone();
        if let Some(src) = new_src {
            want[6..12].copy_from_slice(&src);
        }
        if res.verdict != TC_ACT_OK || res.output != want {
            failures.push(format!(
                "{name}: verdict {} output {:02x?}",
                res.verdict, res.output
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
