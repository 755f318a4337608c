//! Tier 2: the XDP program run by the kernel (`BPF_PROG_TEST_RUN`) on crafted
//! frames, table-driven like katran's fixtures: input frame, map setup,
//! expected verdict, expected output bytes, expected counter deltas (every
//! reason not listed must stay 0) and, for advertisements, the ring record.
//!
//! Nothing is attached to any interface. Needs root: without it the tests
//! print "SKIPPED (not root): <test>" and return, or fail when `CI=true`.
use std::net::{IpAddr, Ipv4Addr};

use carp_common::{
    Reason, VhidEntry, VhidState, ADVERT_BUDGET_BURST, CARP_GROUP_V4, CARP_TTL, IPPROTO_CARP,
    IPPROTO_SYNC,
};
use carp_tests::netns::require_root;
use carp_tests::xdp_run::{
    drain_records, frames::*, run, run_tc, RunResult, TC_ACT_OK, XDP_DROP, XDP_PASS, XDP_TX,
};
use carp_user::wire::frame::CARP_GROUP_MAC_V4;
use carp_user::xdp::{ktime_now_ns, SyncXdp, XdpError, XdpInstance};

/// The IPv6 rows (neighbour discovery, IPv6 VIPs).
#[path = "xdp_ndp/cases.rs"]
mod ndp;

const IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xcc, 0xdd, 0x02];
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xee, 0xff, 0x03];
const VIP1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
const VIP_UNCONF: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 109);
/// No VIP, but in VIP1's `VIPS4_SLOTS` prefilter slot: the slot (naming
/// VIP1), or the hash when the slot is shared, has to say no.
const NON_VIP_IN_SLOT: Ipv4Addr = same_slot(VIP1, 1);

/// Another address in the prefilter slot of `a` (`carp_common::vip_slot`):
/// flipping bit `14 + j` also flips bit `j` of the fold, so flipping both
/// keeps it, for every set bit `j` of `k` (`k` < 2^14).
const fn same_slot(a: Ipv4Addr, k: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(a.to_bits() ^ (k << 14) ^ k)
}
const OWN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Map state before a case: VHID 1 and 2 configured as the case says, VIP1 →
/// VHID 1, VIP2 → VHID 2, and VIP_UNCONF → VHID 9, which no case configures.
#[derive(Clone, Copy, Debug)]
enum Role {
    Master,
    /// MASTER whose dead-man expiry is in the past (1 ns ago: the program
    /// must read the precise clock to see it).
    MasterExpired,
    /// MASTER whose deadline is near (15 ms ahead, inside the coarse clock's
    /// slack): the program decides with the precise clock, and it is valid.
    MasterNearDeadline,
    Backup,
    Init,
}

impl Role {
    fn entry(self) -> VhidEntry {
        let now = ktime_now_ns();
        match self {
            Role::Master => VhidEntry::new(VhidState::Master, now + 3_600_000_000_000),
            Role::MasterExpired => VhidEntry::new(VhidState::Master, now - 1),
            Role::MasterNearDeadline => VhidEntry::new(VhidState::Master, now + 15_000_000),
            Role::Backup => VhidEntry::new(VhidState::Backup, 0),
            Role::Init => VhidEntry::new(VhidState::Init, 0),
        }
    }
}

enum Output {
    /// The frame must come out exactly as it went in.
    Unchanged,
    /// The frame must come out as these bytes.
    Exact(Vec<u8>),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    vhid1: Role,
    vhid2: Role,
    verdict: u32,
    output: Output,
    /// Counter deltas; every other reason must stay 0.
    counters: &'static [(Reason, u64)],
    /// For adverts: the ring must hold exactly one record with these fields.
    advert: Option<ExpectedAdvert>,
}

struct ExpectedAdvert {
    src_mac: [u8; 6],
    /// IPv4 or IPv6: the record's family must match.
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    payload: [u8; 36],
}

fn udp_to(dst: Ipv4Addr) -> Vec<u8> {
    ipv4(PEER_IP, dst, 17, 64, &udp(33333, 53, b"carp-test"))
}

fn arp_request(eth_dst: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    eth(
        eth_dst,
        PEER_MAC,
        ETH_P_ARP,
        &arp(1, PEER_MAC, spa, [0; 6], tpa),
    )
}

/// The reply the MASTER must produce for `arp_request(_, PEER_IP, vip)`.
fn arp_reply(vhid: u8, vip: Ipv4Addr) -> Vec<u8> {
    eth(
        PEER_MAC,
        vmac(vhid),
        ETH_P_ARP,
        &arp(2, vmac(vhid), vip, PEER_MAC, PEER_IP),
    )
}

fn carp_frame(ttl: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        CARP_GROUP_MAC_V4,
        vmac(1),
        ETH_P_IP,
        &ipv4(PEER_IP, CARP_GROUP_V4, IPPROTO_CARP, ttl, payload),
    )
}

/// A CARP advert from a unicast peer (docs/protocol.md §1 "Unicast peers"):
/// to our interface MAC and own address, from the peer's interface MAC, as the
/// kernel sends it for a raw IPv4 socket (ours and FreeBSD's unicast mode).
fn carp_unicast(ttl: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        IF_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(PEER_IP, OWN_IP, IPPROTO_CARP, ttl, payload),
    )
}

/// VRRPv2 (RFC 3768 §5.1) advertisement: starts with 0x21 like CARP.
fn vrrp2(vrid: u8, addrs: &[Ipv4Addr]) -> Vec<u8> {
    let mut v = vec![0x21, vrid, 100, addrs.len() as u8, 0, 1, 0, 0];
    for a in addrs {
        v.extend_from_slice(&a.octets());
    }
    v.extend_from_slice(&[0; 8]); // authentication data
    let sum = inet_checksum(&v);
    v[6..8].copy_from_slice(&sum.to_be_bytes());
    v
}

/// `dst`/`PEER_MAC`, then one VLAN tag (TPID `tpid`: 0x8100 802.1Q or 0x88a8
/// 802.1ad, VID `vid`, priority 0), then `inner` and `payload`: the frame as a
/// parent interface sees it when the tag is not stripped by hardware.
fn tagged(dst: [u8; 6], tpid: u16, vid: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut tag = Vec::with_capacity(4 + payload.len());
    tag.extend_from_slice(&vid.to_be_bytes());
    tag.extend_from_slice(&inner.to_be_bytes());
    tag.extend_from_slice(payload);
    eth(dst, PEER_MAC, tpid, &tag)
}

/// The one case that is run after [`ADVERT_BUDGET_BURST`] identical runs of
/// its frame (in the same test run, counted in its expected counters; their
/// ring records are skipped): the burst passes, the next
/// advert of the same sender is over budget. Keyed by name so that the other
/// cases need no extra field. Fails on a program without the budget (every
/// copy went to the ring; checked once).
const OVER_BUDGET_CASE: &str =
    "CARP advert after a burst of 64 from the same sender: over budget, dropped, not in the ring";

fn warmup_runs(case: &Case) -> u32 {
    if case.name == OVER_BUDGET_CASE {
        ADVERT_BUDGET_BURST as u32
    } else {
        0
    }
}

fn cases() -> Vec<Case> {
    use Reason::*;
    let advert = carp_advert(1, 0, 1, 0x1122_3344_5566_7788);
    let mut bad_sum = advert;
    bad_sum[7] ^= 0x01;
    let mut vmac_to_if = eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP));
    vmac_to_if[..6].copy_from_slice(&IF_MAC);
    let mut vmac6_to_if = eth(vmac(1), PEER_MAC, ETH_P_IPV6, &[0x60; 40]);
    vmac6_to_if[..6].copy_from_slice(&IF_MAC);
    let mut padded_arp = arp_request(BROADCAST, PEER_IP, VIP1);
    padded_arp.resize(60, 0);
    let mut padded_reply = arp_reply(1, VIP1);
    padded_reply.resize(60, 0);
    let vrrp3 = {
        // VRRPv3 (RFC 5798 §5.1): version 3, type 1, one IPv4 address.
        let mut v = vec![0x31, 1, 100, 1, 0x00, 100, 0, 0];
        v.extend_from_slice(&VIP1.octets());
        v
    };
    let mut non_eth_arp = arp(1, PEER_MAC, PEER_IP, [0; 6], VIP1);
    non_eth_arp[1] = 6; // htype 6 (IEEE 802)

    let m = Role::Master;
    let b = Role::Backup;
    vec![
        Case {
            name: OVER_BUDGET_CASE,
            frame: carp_frame(255, &advert),
            vhid1: Role::Backup,
            vhid2: Role::Backup,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpAdvert, ADVERT_BUDGET_BURST), (CarpOverBudget, 1)],
            advert: None,
        },
        // --- ARP ---------------------------------------------------------
        Case {
            name: "ARP request for a VIP as MASTER: answered from the vMAC",
            frame: arp_request(BROADCAST, PEER_IP, VIP1),
            vhid1: m,
            vhid2: b,
            verdict: XDP_TX,
            output: Output::Exact(arp_reply(1, VIP1)),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP as MASTER near its deadline: answered (precise clock)",
            frame: arp_request(BROADCAST, PEER_IP, VIP1),
            vhid1: Role::MasterNearDeadline,
            vhid2: b,
            verdict: XDP_TX,
            output: Output::Exact(arp_reply(1, VIP1)),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP, unicast to the interface MAC, as MASTER",
            frame: arp_request(IF_MAC, PEER_IP, VIP1),
            vhid1: m,
            vhid2: b,
            verdict: XDP_TX,
            output: Output::Exact(arp_reply(1, VIP1)),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "ARP request padded to 60 bytes: reply keeps the padding",
            frame: padded_arp,
            vhid1: m,
            vhid2: b,
            verdict: XDP_TX,
            output: Output::Exact(padded_reply),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP of the other VHID, MASTER of VHID 2",
            frame: arp_request(BROADCAST, PEER_IP, VIP2),
            vhid1: b,
            vhid2: m,
            verdict: XDP_TX,
            output: Output::Exact(arp_reply(2, VIP2)),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP as BACKUP: dropped",
            frame: arp_request(BROADCAST, PEER_IP, VIP1),
            vhid1: b,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(ArpDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP as INIT: dropped",
            frame: arp_request(BROADCAST, PEER_IP, VIP1),
            vhid1: Role::Init,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(ArpDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP as MASTER past expiry: dropped (dead-man switch)",
            frame: arp_request(BROADCAST, PEER_IP, VIP1),
            vhid1: Role::MasterExpired,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(ArpDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a VIP whose VHID is not configured: dropped",
            frame: arp_request(BROADCAST, PEER_IP, VIP_UNCONF),
            vhid1: m,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(ArpDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "ARP probe (sender 0.0.0.0, RFC 5227) for a VIP as MASTER: answered",
            frame: arp_request(BROADCAST, Ipv4Addr::UNSPECIFIED, VIP1),
            vhid1: m,
            vhid2: b,
            verdict: XDP_TX,
            output: Output::Exact(eth(
                PEER_MAC,
                vmac(1),
                ETH_P_ARP,
                &arp(2, vmac(1), VIP1, PEER_MAC, Ipv4Addr::UNSPECIFIED),
            )),
            counters: &[(ArpReplied, 1)],
            advert: None,
        },
        Case {
            name: "gratuitous ARP for a VIP: passed",
            frame: arp_request(BROADCAST, VIP1, VIP1),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "ARP reply for a VIP: passed",
            frame: eth(
                IF_MAC,
                PEER_MAC,
                ETH_P_ARP,
                &arp(2, PEER_MAC, VIP1, IF_MAC, OWN_IP),
            ),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a non-VIP: passed",
            frame: arp_request(BROADCAST, PEER_IP, OWN_IP),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a non-VIP in a VIP's prefilter slot, MASTER: passed",
            frame: arp_request(BROADCAST, PEER_IP, NON_VIP_IN_SLOT),
            vhid1: m,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "ARP request for a non-VIP in a VIP's prefilter slot, BACKUP: passed",
            frame: arp_request(BROADCAST, PEER_IP, NON_VIP_IN_SLOT),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "ARP with a non-Ethernet hardware type: passed",
            frame: eth(BROADCAST, PEER_MAC, ETH_P_ARP, &non_eth_arp),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(ArpPassed, 1)],
            advert: None,
        },
        Case {
            name: "truncated ARP frame (20 of 28 bytes): dropped as malformed",
            frame: arp_request(BROADCAST, PEER_IP, VIP1)[..14 + 20].to_vec(),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(DropMalformed, 1)],
            advert: None,
        },
        Case {
            name: "ARP EtherType with no ARP header at all: dropped as malformed",
            frame: eth(BROADCAST, PEER_MAC, ETH_P_ARP, &[]),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(DropMalformed, 1)],
            advert: None,
        },
        // --- CARP and other protocol 112 ---------------------------------
        Case {
            name: "valid CARP advertisement: copied to the ring, passed",
            frame: carp_frame(255, &advert),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(CarpAdvert, 1)],
            advert: Some(ExpectedAdvert {
                src_mac: vmac(1),
                src: PEER_IP.into(),
                dst: CARP_GROUP_V4.into(),
                ttl: 255,
                payload: advert,
            }),
        },
        Case {
            name: "valid CARP advertisement with Ethernet padding after it: still CARP",
            frame: {
                let mut f = carp_frame(255, &advert);
                f.extend_from_slice(&[0; 6]);
                f
            },
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(CarpAdvert, 1)],
            advert: Some(ExpectedAdvert {
                src_mac: vmac(1),
                src: PEER_IP.into(),
                dst: CARP_GROUP_V4.into(),
                ttl: 255,
                payload: advert,
            }),
        },
        // Unicast peers: the program does not look at the destination, so a
        // unicast advert is judged (and copied) exactly like one to the group;
        // user space decides who may send it (`accept.rs`, `not_peer`).
        Case {
            name: "unicast CARP advert to the interface MAC and address, BACKUP: copied to the ring, passed",
            frame: carp_unicast(255, &advert),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(CarpAdvert, 1)],
            advert: Some(ExpectedAdvert {
                src_mac: PEER_MAC,
                src: PEER_IP.into(),
                dst: OWN_IP.into(),
                ttl: 255,
                payload: advert,
            }),
        },
        Case {
            name: "unicast CARP advert to the interface MAC and address, MASTER: copied to the ring, passed",
            frame: carp_unicast(255, &advert),
            vhid1: m,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(CarpAdvert, 1)],
            advert: Some(ExpectedAdvert {
                src_mac: PEER_MAC,
                src: PEER_IP.into(),
                dst: OWN_IP.into(),
                ttl: 255,
                payload: advert,
            }),
        },
        Case {
            name: "unicast CARP advert with TTL 254 (routed): dropped like a multicast one",
            frame: carp_unicast(254, &advert),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpBadTtl, 1)],
            advert: None,
        },
        Case {
            name: "unicast CARP advert with a bad checksum: dropped",
            frame: carp_unicast(255, &bad_sum),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpBadChecksum, 1)],
            advert: None,
        },
        Case {
            name: "CARP advertisement cut to 30 bytes (authlen 7): dropped as short",
            frame: carp_frame(255, &advert[..30]),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpShort, 1)],
            advert: None,
        },
        Case {
            name: "0x21 payload of 6 bytes: dropped as short",
            frame: carp_frame(255, &advert[..6]),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpShort, 1)],
            advert: None,
        },
        Case {
            name: "IP header announcing more payload than the frame carries: short",
            frame: {
                let mut f = carp_frame(255, &advert);
                f.truncate(f.len() - 4);
                f
            },
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpShort, 1)],
            advert: None,
        },
        Case {
            name: "CARP advertisement with TTL 254: dropped",
            frame: carp_frame(254, &advert),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpBadTtl, 1)],
            advert: None,
        },
        Case {
            name: "CARP advertisement with a bad checksum: dropped",
            frame: carp_frame(255, &bad_sum),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpBadChecksum, 1)],
            advert: None,
        },
        Case {
            name: "CARP advertisement for an unconfigured VHID: dropped",
            frame: carp_frame(255, &carp_advert(9, 0, 1, 1)),
            vhid1: b,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(CarpUnknownVhid, 1)],
            advert: None,
        },
        Case {
            name: "VRRPv3 advertisement (0x31): passed untouched",
            frame: carp_frame(255, &vrrp3),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(Proto112Other, 1)],
            advert: None,
        },
        Case {
            name: "VRRPv2 advertisement with one address (0x21, 20 bytes): passed",
            frame: carp_frame(255, &vrrp2(1, &[VIP1])),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(Proto112Other, 1)],
            advert: None,
        },
        Case {
            name: "VRRPv2 advertisement with five addresses (0x21, 36 bytes): passed",
            frame: carp_frame(255, &vrrp2(1, &[VIP1, VIP2, OWN_IP, PEER_IP, REMOTE_IP])),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(Proto112Other, 1)],
            advert: None,
        },
        Case {
            name: "VRRPv2 advertisement with seven addresses (0x21, count 7, 44 bytes): passed",
            frame: carp_frame(255, &vrrp2(1, &[VIP1; 7])),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(Proto112Other, 1)],
            advert: None,
        },
        // --- protocol 240 off the sync link --------------------------------
        Case {
            name: "sync frame (proto 240) on a CARP interface: dropped (sync link only)",
            frame: eth(
                IF_MAC,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(PEER_IP, OWN_IP, IPPROTO_SYNC, CARP_TTL, &[0xC1; 56]),
            ),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(Proto240Dropped, 1)],
            advert: None,
        },
        Case {
            name: "proto 240 to a VIP through the vMAC as MASTER: dropped before the VIP rules",
            frame: eth(
                vmac(1),
                PEER_MAC,
                ETH_P_IP,
                &ipv4(PEER_IP, VIP1, IPPROTO_SYNC, CARP_TTL, &[5; 60]),
            ),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(Proto240Dropped, 1)],
            advert: None,
        },
        // --- virtual MAC -------------------------------------------------
        Case {
            name: "forwarded frame to the vMAC as MASTER: destination rewritten to IF_MAC",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Exact(vmac_to_if.clone()),
            counters: &[(VmacRewritten, 1)],
            advert: None,
        },
        Case {
            name: "forwarded frame to the vMAC as MASTER near its deadline: rewritten (precise clock)",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: Role::MasterNearDeadline,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Exact(vmac_to_if),
            counters: &[(VmacRewritten, 1)],
            advert: None,
        },
        Case {
            name: "IPv6 frame to the vMAC as MASTER: rewritten too",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IPV6, &[0x60; 40]),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Exact(vmac6_to_if),
            counters: &[(VmacRewritten, 1)],
            advert: None,
        },
        Case {
            name: "frame to the vMAC as BACKUP: dropped",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: b,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VmacDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "frame to the vMAC as MASTER past expiry: dropped",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: Role::MasterExpired,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VmacDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "frame to the vMAC of an unconfigured VHID: unrelated",
            frame: eth(vmac(9), PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: m,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(PassUnrelated, 1)],
            advert: None,
        },
        Case {
            name: "VIP packet to the vMAC of an unconfigured VHID: VIP rule applies",
            frame: eth(vmac(9), PEER_MAC, ETH_P_IP, &udp_to(VIP2)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        // A frame to VHID 1's vMAC that carries a packet to a VIP of VHID 2 is
        // judged by VHID 2 too (issue "Hold up under attack" §4.2). Before the
        // fix, the vMAC rule returned first: the first case passed (rewritten,
        // vmac_rewritten) and so did the unconfigured-VHID one (checked once).
        Case {
            name: "vMAC of VHID 1 (MASTER) carrying IPv4 to a VIP of VHID 2 (BACKUP): dropped",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP2)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "vMAC of VHID 1 (MASTER) carrying IPv4 to a VIP of VHID 2 (MASTER past expiry): dropped",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP2)),
            vhid1: m,
            vhid2: Role::MasterExpired,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "vMAC of VHID 1 (MASTER) carrying IPv4 to a VIP of an unconfigured VHID: dropped",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP_UNCONF)),
            vhid1: m,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "vMAC of VHID 1 carrying IPv4 to a VIP of VHID 2, both MASTER: rewritten, passed",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP2)),
            vhid1: m,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Exact({
                let mut f = eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP2));
                f[..6].copy_from_slice(&IF_MAC);
                f
            }),
            counters: &[(VmacRewritten, 1)],
            advert: None,
        },
        Case {
            name: "vMAC of VHID 1 (MASTER) carrying IPv4 to its own VIP: rewritten, passed",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP1)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Exact({
                let mut f = eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP1));
                f[..6].copy_from_slice(&IF_MAC);
                f
            }),
            counters: &[(VmacRewritten, 1)],
            advert: None,
        },
        Case {
            name: "vMAC of VHID 1 (BACKUP) carrying IPv4 to a VIP of VHID 2 (MASTER): dropped by the vMAC rule",
            frame: eth(vmac(1), PEER_MAC, ETH_P_IP, &udp_to(VIP2)),
            vhid1: b,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VmacDroppedNotMaster, 1)],
            advert: None,
        },
        // --- VLAN-tagged frames on the parent (issue §4.1) -----------------
        // A tagged frame belongs to the VLAN sub-interface (its own XDP
        // instance, its own VHIDs), never to the parent's VHID of the same
        // number. Before the fix the vMAC cases were judged by the parent's
        // VHID 1 (rewritten as MASTER, dropped as BACKUP) and the others
        // counted as pass_unrelated.
        Case {
            name: "802.1Q frame to the vMAC, parent MASTER: passed untouched, vlan_passed",
            frame: tagged(vmac(1), 0x8100, 10, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1Q frame to the vMAC, parent BACKUP: passed untouched, vlan_passed",
            frame: tagged(vmac(1), 0x8100, 10, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: b,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1ad (QinQ) frame to the vMAC, parent BACKUP: passed untouched",
            frame: tagged(
                vmac(1),
                0x88a8,
                100,
                0x8100,
                &[&[0x00, 0x0a, 0x08, 0x00][..], &udp_to(VIP1)].concat(),
            ),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1Q IPv4 to a VIP, parent BACKUP: passed untouched (VIP rule not applied)",
            frame: tagged(IF_MAC, 0x8100, 10, ETH_P_IP, &udp_to(VIP1)),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1Q ARP request for a VIP, parent MASTER: passed unchanged, not answered",
            frame: tagged(
                BROADCAST,
                0x8100,
                10,
                ETH_P_ARP,
                &arp(1, PEER_MAC, PEER_IP, [0; 6], VIP1),
            ),
            vhid1: m,
            vhid2: m,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1Q ARP request for a VIP, parent BACKUP: passed unchanged, not dropped",
            frame: tagged(
                BROADCAST,
                0x8100,
                10,
                ETH_P_ARP,
                &arp(1, PEER_MAC, PEER_IP, [0; 6], VIP1),
            ),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        Case {
            name: "802.1Q tag with nothing after it: passed, vlan_passed (not parsed)",
            frame: eth(vmac(1), PEER_MAC, 0x8100, &[]),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VlanPassed, 1)],
            advert: None,
        },
        // --- VIPs ----------------------------------------------------------
        Case {
            name: "IPv4 packet to a VIP as MASTER: passed",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP1)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(VipPassed, 1)],
            advert: None,
        },
        Case {
            name: "IPv4 packet to a VIP as BACKUP: dropped",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP1)),
            vhid1: b,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        Case {
            name: "IPv4 packet to a VIP whose VHID is not configured: dropped",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP_UNCONF)),
            vhid1: m,
            vhid2: m,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(VipDroppedNotMaster, 1)],
            advert: None,
        },
        // --- everything else -----------------------------------------------
        Case {
            name: "unrelated IPv4 to the interface MAC: passed",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(OWN_IP)),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(PassUnrelated, 1)],
            advert: None,
        },
        Case {
            name: "IPv4 to a non-VIP in a VIP's prefilter slot, BACKUP: passed",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(NON_VIP_IN_SLOT)),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(PassUnrelated, 1)],
            advert: None,
        },
        Case {
            name: "unrelated IPv4 to another host's MAC: passed",
            frame: eth(OTHER_MAC, PEER_MAC, ETH_P_IP, &udp_to(REMOTE_IP)),
            vhid1: b,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(PassUnrelated, 1)],
            advert: None,
        },
        Case {
            name: "IPv4 EtherType with a truncated IP header: dropped as malformed",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP1)[..12]),
            vhid1: m,
            vhid2: b,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            counters: &[(DropMalformed, 1)],
            advert: None,
        },
        Case {
            name: "bare 14-byte Ethernet header of another protocol: passed",
            frame: eth(BROADCAST, PEER_MAC, 0x88cc, &[]),
            vhid1: m,
            vhid2: b,
            verdict: XDP_PASS,
            output: Output::Unchanged,
            counters: &[(PassUnrelated, 1)],
            advert: None,
        },
    ]
}

fn check_case(case: &Case) -> Result<(), String> {
    let mut inst = XdpInstance::load(IF_MAC).map_err(|e| format!("load: {e:?}"))?;
    inst.set_vhid(1, case.vhid1.entry())
        .map_err(|e| e.to_string())?;
    inst.set_vhid(2, case.vhid2.entry())
        .map_err(|e| e.to_string())?;
    inst.add_vip(VIP1, 1).map_err(|e| e.to_string())?;
    inst.add_vip(VIP2, 2).map_err(|e| e.to_string())?;
    inst.add_vip(VIP_UNCONF, 9).map_err(|e| e.to_string())?;
    inst.add_vip6(ndp::VIP6_1, 1).map_err(|e| e.to_string())?;
    inst.add_vip6(ndp::VIP6_2, 2).map_err(|e| e.to_string())?;
    let mut ring = inst
        .take_adverts()
        .expect("ring present")
        .map_err(|e| e.to_string())?;

    // Warm-up runs go in the same test run (repeat), so that no refill time
    // passes between them and the checked run, which is the last one.
    let warmup = warmup_runs(case);
    let before_ns = ktime_now_ns();
    let RunResult {
        verdict, output, ..
    } = run(
        inst.program().map_err(|e| e.to_string())?,
        &case.frame,
        1 + warmup,
    )
    .map_err(|e| format!("test run: {e}"))?;
    let after_ns = ktime_now_ns();

    let mut problems = Vec::new();
    if verdict != case.verdict {
        problems.push(format!("verdict {verdict}, expected {}", case.verdict));
    }
    let want = match &case.output {
        Output::Unchanged => &case.frame,
        Output::Exact(bytes) => bytes,
    };
    if &output != want {
        problems.push(format!(
            "output\n    got  {}\n    want {}",
            hex(&output),
            hex(want)
        ));
    }
    let counters = inst.counters().map_err(|e| e.to_string())?;
    for reason in Reason::ALL {
        let want = case
            .counters
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n);
        let got = counters[reason as usize];
        if got != want {
            problems.push(format!(
                "counter {} = {got}, expected {want}",
                reason.label()
            ));
        }
    }
    let records = drain_records(&mut ring);
    let records = records.get(warmup as usize..).unwrap_or_default();
    match (&case.advert, records) {
        (None, []) => {}
        (None, recs) => problems.push(format!("unexpected ring records: {recs:?}")),
        (Some(want), [rec]) => {
            // IPv4 in the first 4 bytes, the rest zero; IPv6 whole.
            let wire = |a: IpAddr| match a {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (4u8, b)
                }
                IpAddr::V6(a) => (6u8, a.octets()),
            };
            let (family, src) = wire(want.src);
            let (_, dst) = wire(want.dst);
            if rec.family != family
                || rec.ttl != want.ttl
                || rec.src_mac != want.src_mac
                || rec.src_addr != src
                || rec.dst_addr != dst
                || rec.payload != want.payload
                || rec._pad != [0; 4]
            {
                problems.push(format!("ring record {rec:?} does not match"));
            }
            if !(before_ns..=after_ns).contains(&rec.ktime_ns) {
                problems.push(format!(
                    "ring record time {} outside the run [{before_ns}, {after_ns}]",
                    rec.ktime_ns
                ));
            }
        }
        (Some(_), recs) => problems.push(format!("expected 1 ring record, got {}", recs.len())),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n  "))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn rule_table() {
    if !require_root() {
        return;
    }
    let mut cases = cases();
    cases.extend(ndp::cases());
    let mut failures = Vec::new();
    for case in &cases {
        match check_case(case) {
            Ok(()) => println!("ok   {}", case.name),
            Err(e) => {
                println!("FAIL {}\n  {e}", case.name);
                failures.push(format!("{}:\n  {e}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} XDP cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The kernel refuses test runs on frames shorter than an Ethernet header
/// (`bpf_test_init`: size < ETH_HLEN → EINVAL), so that case cannot reach the
/// program; this pins the assumption the program's "short frame" rule rests on.
#[test]
fn frame_shorter_than_ethernet_is_refused_by_the_kernel() {
    if !require_root() {
        return;
    }
    let inst = XdpInstance::load(IF_MAC).expect("load");
    let frame = eth(BROADCAST, PEER_MAC, ETH_P_ARP, &[])[..13].to_vec();
    let err = run(inst.program().expect("program"), &frame, 1)
        .expect_err("the kernel accepted a 13-byte XDP test frame");
    let errno = match &err {
        aya::programs::ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    assert_eq!(errno, Some(libc::EINVAL), "expected EINVAL, got {err:?}");
    assert_eq!(
        inst.counters().expect("counters"),
        [0; Reason::COUNT as usize]
    );
}

/// A full ring: the advert is still passed and counted as `CarpRingFull`.
/// 1024 runs (64 from each of 16 senders, within each sender's advert budget);
/// the 64 KiB ring holds 585 records of 104 + 8 header bytes, but only the
/// invariants are asserted.
#[test]
fn full_ring_still_passes_and_counts() {
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.set_vhid(1, Role::Backup.entry()).expect("set vhid");
    let mut ring = inst.take_adverts().expect("ring present").expect("ring");
    assert!(
        inst.take_adverts().is_none(),
        "the ring can be taken only once"
    );
    // 16 senders × one advert budget (64) each, the budgets reset between
    // them: 1024 adverts, none over budget.
    let frame_from = |i: u8| {
        eth(
            CARP_GROUP_MAC_V4,
            vmac(1),
            ETH_P_IP,
            &ipv4(
                Ipv4Addr::new(192, 0, 2, 10 + i),
                CARP_GROUP_V4,
                IPPROTO_CARP,
                CARP_TTL,
                &carp_advert(1, 0, 1, 42),
            ),
        )
    };
    for i in 0..16u8 {
        // A full budget for each batch (the VHID's shared budget included).
        inst.reset_advert_budget().expect("reset the advert budget");
        let res = run(inst.program().expect("program"), &frame_from(i), 64).expect("test run");
        assert_eq!(res.verdict, XDP_PASS);
    }
    let frame = frame_from(16);
    let c = inst.counters().expect("counters");
    let (adverts, full) = (
        c[Reason::CarpAdvert as usize],
        c[Reason::CarpRingFull as usize],
    );
    assert_eq!(adverts + full, 1024, "counters {c:?}");
    assert!(full > 0 && adverts > 0, "ring never filled: {c:?}");
    assert_eq!(drain_records(&mut ring).len() as u64, adverts);
    // Drained: the next advert fits again.
    run(inst.program().expect("program"), &frame, 1).expect("test run");
    assert_eq!(
        inst.counters().expect("counters")[Reason::CarpAdvert as usize],
        adverts + 1
    );
}

/// Map writes through the wrapper are what the program sees, and clearing works.
#[test]
fn wrapper_maps_round_trip() {
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    assert_eq!(inst.vhid(1).expect("vhid"), VhidEntry::default());
    let e = VhidEntry::new(VhidState::Master, 12345);
    inst.set_vhid(1, e).expect("set");
    assert_eq!(inst.vhid(1).expect("vhid"), e);
    assert!(inst.set_vhid(0, e).is_err(), "VHID 0 must be refused");
    inst.add_vip(VIP1, 1).expect("add vip");
    // Master with the expiry 12345 ns after boot: long past, so not MASTER.
    let frame = eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP1));
    let prog = inst.program().expect("program");
    assert_eq!(run(prog, &frame, 1).expect("run").verdict, XDP_DROP);
    inst.set_vhid(1, Role::Master.entry()).expect("set");
    assert_eq!(
        run(inst.program().expect("program"), &frame, 1)
            .expect("run")
            .verdict,
        XDP_PASS
    );
    inst.remove_vip(VIP1).expect("remove vip");
    inst.remove_vip(VIP1)
        .expect("removing an absent VIP is fine");
    let c0 = inst.counters().expect("counters");
    assert_eq!(
        run(inst.program().expect("program"), &frame, 1)
            .expect("run")
            .verdict,
        XDP_PASS
    );
    let c1 = inst.counters().expect("counters");
    assert_eq!(
        c1[Reason::PassUnrelated as usize],
        c0[Reason::PassUnrelated as usize] + 1
    );
    inst.clear_vhid(1).expect("clear");
    assert_eq!(
        inst.vhid(1).expect("vhid").state,
        VhidState::Unconfigured as u32
    );
    // Repeated runs are summed over CPUs and counted once each.
    run(inst.program().expect("program"), &frame, 100).expect("run");
    let c2 = inst.counters().expect("counters");
    assert_eq!(
        c2[Reason::PassUnrelated as usize],
        c1[Reason::PassUnrelated as usize] + 100
    );
}

/// `carp_tc_egress` (docs/protocol.md §3): an IPv4 frame from the interface MAC
/// with a VIP source leaves from `00:00:5e:00:01:VHID` while that VHID is
/// MASTER, and every other frame leaves byte for byte as it came; always
/// `TC_ACT_OK`, and the program counts nothing.
#[test]
fn tc_egress_sources_master_vip_traffic_from_the_vmac() {
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.add_vip(VIP1, 1).expect("add vip");
    inst.add_vip(VIP2, 2).expect("add vip");
    inst.add_vip(VIP_UNCONF, 9).expect("add vip");
    let from = |src_mac: [u8; 6], src: Ipv4Addr| {
        eth(
            PEER_MAC,
            src_mac,
            ETH_P_IP,
            &ipv4(src, PEER_IP, 17, 64, &udp(53, 33333, b"carp-test")),
        )
    };
    // (name, VHID 1 role, VHID 2 role, frame, expected Ethernet source or None for unchanged)
    type TcCase = (&'static str, Role, Role, Vec<u8>, Option<[u8; 6]>);
    let cases: Vec<TcCase> = vec![
        (
            "VIP1 as MASTER",
            Role::Master,
            Role::Backup,
            from(IF_MAC, VIP1),
            Some(vmac(1)),
        ),
        (
            "VIP2 as MASTER of VHID 2",
            Role::Backup,
            Role::Master,
            from(IF_MAC, VIP2),
            Some(vmac(2)),
        ),
        (
            "VIP1 as BACKUP",
            Role::Backup,
            Role::Master,
            from(IF_MAC, VIP1),
            None,
        ),
        (
            "VIP1 as INIT",
            Role::Init,
            Role::Master,
            from(IF_MAC, VIP1),
            None,
        ),
        (
            "VIP1 as expired MASTER",
            Role::MasterExpired,
            Role::Master,
            from(IF_MAC, VIP1),
            None,
        ),
        (
            "VIP of an unconfigured VHID",
            Role::Master,
            Role::Master,
            from(IF_MAC, VIP_UNCONF),
            None,
        ),
        (
            "own address as MASTER",
            Role::Master,
            Role::Master,
            from(IF_MAC, OWN_IP),
            None,
        ),
        (
            "non-VIP past the prefilter",
            Role::Master,
            Role::Master,
            from(IF_MAC, NON_VIP_IN_SLOT),
            None,
        ),
        (
            "VIP1 from another MAC",
            Role::Master,
            Role::Master,
            from(OTHER_MAC, VIP1),
            None,
        ),
        (
            "ARP from the interface",
            Role::Master,
            Role::Master,
            eth(
                BROADCAST,
                IF_MAC,
                ETH_P_ARP,
                &arp(1, IF_MAC, VIP1, [0; 6], PEER_IP),
            ),
            None,
        ),
    ];
    // No truncated-IPv4 case: the kernel refuses to build a test skb whose
    // IPv4 header is cut short (EINVAL), so the program's length check cannot
    // be reached from here.
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
                "{name}: verdict {} output\n  {}\nwant\n  {}",
                res.verdict,
                hex(&res.output),
                hex(&want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        inst.counters().expect("counters"),
        [0; Reason::COUNT as usize],
        "the egress program counts nothing"
    );
}

/// Runs `frame` once; returns the verdict and the one reason it counted.
fn verdict_and_reason(inst: &XdpInstance, frame: &[u8]) -> (u32, Reason) {
    let before = inst.counters().expect("counters");
    let res = run(inst.program().expect("program"), frame, 1).expect("test run");
    let after = inst.counters().expect("counters");
    let counted: Vec<(Reason, u64)> = Reason::ALL
        .into_iter()
        .map(|r| (r, after[r as usize] - before[r as usize]))
        .filter(|&(_, n)| n != 0)
        .collect();
    match counted.as_slice() {
        [(reason, 1)] => (res.verdict, *reason),
        _ => panic!("one run counted {counted:?}"),
    }
}

/// The dead-man check's jiffies cache (`MASTER_UNTIL` in carp-ebpf) never
/// outlives the entry it was computed for: after MASTER packets have filled
/// it, the controller rewriting the entry as BACKUP, or as MASTER with a
/// deadline in the past (a new deadline), is obeyed from the next packet.
#[test]
fn a_cached_master_entry_rewritten_is_obeyed_at_once() {
    use Reason::*;

    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.add_vip(VIP1, 1).expect("add VIP1");
    let arp = arp_request(BROADCAST, PEER_IP, VIP1);
    let to_vip = eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(VIP1));
    for (rewrite, what) in [
        (Role::Backup.entry(), "rewritten as BACKUP"),
        (
            Role::MasterExpired.entry(),
            "rewritten as MASTER with a past deadline",
        ),
    ] {
        inst.set_vhid(1, Role::Master.entry()).expect("set MASTER");
        for _ in 0..3 {
            assert_eq!(verdict_and_reason(&inst, &arp), (XDP_TX, ArpReplied));
            assert_eq!(verdict_and_reason(&inst, &to_vip), (XDP_PASS, VipPassed));
        }
        inst.set_vhid(1, rewrite).expect("rewrite");
        assert_eq!(
            verdict_and_reason(&inst, &arp),
            (XDP_DROP, ArpDroppedNotMaster),
            "{what}"
        );
        assert_eq!(
            verdict_and_reason(&inst, &to_vip),
            (XDP_DROP, VipDroppedNotMaster),
            "{what}"
        );
    }
}

/// The `VIPS4_SLOTS` prefilter follows VIPs that come and go, including two
/// VIPs that share a slot (and a non-VIP that shares it too): every verdict
/// is the one the VIP set implies, whatever the order of changes.
#[test]
fn vip_prefilter_follows_vips_sharing_a_slot() {
    use Reason::*;

    if !require_root() {
        return;
    }
    // In the same prefilter slot as VIP1 and NON_VIP_IN_SLOT.
    const VIP1B: Ipv4Addr = same_slot(VIP1, 2);
    for a in [VIP1B, NON_VIP_IN_SLOT] {
        assert_eq!(
            carp_common::vip_slot(a.octets()),
            carp_common::vip_slot(VIP1.octets())
        );
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    inst.set_vhid(1, Role::Backup.entry()).expect("set vhid");
    inst.set_vhid(2, Role::Master.entry()).expect("set vhid");
    let ip = |dst| eth(IF_MAC, PEER_MAC, ETH_P_IP, &udp_to(dst));
    let arp = |tpa| arp_request(BROADCAST, PEER_IP, tpa);
    let count = |inst: &XdpInstance| inst.vip_slot_count(VIP1).expect("slot count");
    let check = |inst: &XdpInstance, frame: Vec<u8>, want: (u32, Reason), what: &str| {
        assert_eq!(verdict_and_reason(inst, &frame), want, "{what}");
    };

    let key = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let slot = |inst: &XdpInstance| inst.vip_slot(VIP1).expect("slot");
    assert_eq!(count(&inst), 0);
    check(&inst, ip(VIP1), (XDP_PASS, PassUnrelated), "no VIPs yet");

    // One VIP in the slot: the slot names it, and the program answers
    // from the slot (the hash is not asked).
    inst.add_vip(VIP1, 1).expect("add VIP1");
    assert_eq!(
        (slot(&inst).count, slot(&inst).addr, slot(&inst).vhid),
        (1, key(VIP1), 1)
    );
    check(
        &inst,
        ip(VIP1),
        (XDP_DROP, VipDroppedNotMaster),
        "sole VIP1, BACKUP",
    );
    check(
        &inst,
        ip(NON_VIP_IN_SLOT),
        (XDP_PASS, PassUnrelated),
        "non-VIP in the slot beside the sole VIP1",
    );
    inst.add_vip(VIP1, 2).expect("move the sole VIP1 to VHID 2");
    assert_eq!((slot(&inst).count, slot(&inst).vhid), (1, 2));
    check(
        &inst,
        ip(VIP1),
        (XDP_PASS, VipPassed),
        "sole VIP1 moved to the MASTER VHID",
    );
    inst.add_vip(VIP1, 1).expect("and back");
    inst.add_vip(VIP1B, 2).expect("add VIP1B");
    assert_eq!(count(&inst), 2);
    check(
        &inst,
        ip(VIP1),
        (XDP_DROP, VipDroppedNotMaster),
        "VIP1, BACKUP",
    );
    check(&inst, ip(VIP1B), (XDP_PASS, VipPassed), "VIP1B, MASTER");
    check(
        &inst,
        arp(VIP1B),
        (XDP_TX, ArpReplied),
        "ARP for VIP1B, MASTER",
    );
    check(
        &inst,
        ip(NON_VIP_IN_SLOT),
        (XDP_PASS, PassUnrelated),
        "non-VIP .101",
    );
    check(
        &inst,
        arp(NON_VIP_IN_SLOT),
        (XDP_PASS, ArpPassed),
        "ARP for non-VIP .101",
    );

    // Adding a VIP that is there is idempotent: counted once.
    inst.add_vip(VIP1B, 2).expect("add VIP1B again");
    assert_eq!(count(&inst), 2, "a VIP added twice is counted once");

    // Removing one of the two keeps the other behind the filter, named in
    // the slot again.
    inst.remove_vip(VIP1B).expect("remove VIP1B");
    assert_eq!(count(&inst), 1);
    assert_eq!((slot(&inst).addr, slot(&inst).vhid), (key(VIP1), 1));
    check(
        &inst,
        ip(VIP1),
        (XDP_DROP, VipDroppedNotMaster),
        "VIP1 after VIP1B went",
    );
    check(
        &inst,
        arp(VIP1),
        (XDP_DROP, ArpDroppedNotMaster),
        "ARP for VIP1 after VIP1B went",
    );
    check(&inst, ip(VIP1B), (XDP_PASS, PassUnrelated), "VIP1B removed");
    check(
        &inst,
        arp(VIP1B),
        (XDP_PASS, ArpPassed),
        "ARP for VIP1B removed",
    );
    inst.remove_vip(VIP1B)
        .expect("removing an absent VIP is fine");
    assert_eq!(
        count(&inst),
        1,
        "removing an absent VIP must not lower the count"
    );

    // Re-adding brings it back; re-adding with another VHID moves it.
    inst.add_vip(VIP1B, 2).expect("re-add VIP1B");
    assert_eq!(count(&inst), 2);
    check(
        &inst,
        ip(VIP1B),
        (XDP_PASS, VipPassed),
        "VIP1B re-added, MASTER",
    );
    inst.add_vip(VIP1B, 1).expect("move VIP1B to VHID 1");
    assert_eq!(count(&inst), 2, "moving a VIP does not count it again");
    check(
        &inst,
        ip(VIP1B),
        (XDP_DROP, VipDroppedNotMaster),
        "VIP1B moved to the BACKUP VHID",
    );

    inst.remove_vip(VIP1).expect("remove VIP1");
    inst.remove_vip(VIP1B).expect("remove VIP1B");
    check(&inst, ip(VIP1), (XDP_PASS, PassUnrelated), "all removed");
    for a in [VIP1, VIP1B, NON_VIP_IN_SLOT] {
        assert_eq!(
            inst.vip_slot_count(a).expect("slot count"),
            0,
            "the slot of {a} after every VIP went"
        );
    }
}

/// An insert the kernel refuses (map full) leaves the prefilter as it was,
/// and replacing a VIP still works when the map is full.
#[test]
fn vip_prefilter_unchanged_by_a_failed_insert() {
    if !require_root() {
        return;
    }
    let mut inst = XdpInstance::load(IF_MAC).expect("load");
    // 1024 VIPs 10.0.0.0 .. 10.0.3.255, the last two in one slot (the rest
    // each in its own: one /18).
    let shared = same_slot(Ipv4Addr::new(10, 0, 0, 7), 3);
    for i in 0..carp_common::MAX_VIPS - 1 {
        inst.add_vip(Ipv4Addr::from_bits(0x0a00_0000 + i), 1)
            .expect("add VIP");
    }
    inst.add_vip(shared, 1).expect("add the VIP sharing a slot");
    let seven = Ipv4Addr::new(10, 0, 0, 7);
    assert_eq!(inst.vip_slot_count(seven).expect("count"), 2);
    // Another address of that slot, and one of a sole VIP's slot.
    let refused = [
        same_slot(seven, 5),
        same_slot(Ipv4Addr::new(10, 0, 0, 8), 5),
    ];
    for a in refused {
        let before = inst.vip_slot(a).expect("slot");
        assert!(
            inst.add_vip(a, 1).is_err(),
            "the VIP map holds only MAX_VIPS entries"
        );
        assert_eq!(
            inst.vip_slot(a).expect("slot"),
            before,
            "{a}: slot changed by a refused insert"
        );
    }
    inst.add_vip(seven, 2).expect("replacing in a full map");
    assert_eq!(inst.vip_slot_count(seven).expect("count"), 2);
    inst.set_vhid(2, Role::Backup.entry()).expect("set vhid");
    let frame = eth(
        IF_MAC,
        PEER_MAC,
        ETH_P_IP,
        &udp_to(Ipv4Addr::new(10, 0, 0, 7)),
    );
    assert_eq!(
        verdict_and_reason(&inst, &frame),
        (XDP_DROP, Reason::VipDroppedNotMaster)
    );
}

/// The benchmark runs, measures the paths it names (it checks its counters,
/// verdicts and frames), and reports plausible numbers.
///
/// `CARP_XDP_BENCH=precise` turns the smoke test into a measurement:
/// `sudo -E CARP_XDP_BENCH=precise cargo test -p carp-tests --test xdp
/// bench_classes -- --nocapture`.
#[test]
fn bench_classes_smoke() {
    use carp_tests::xdp_run::{bench_classes, BenchOptions};

    if !require_root() {
        return;
    }
    let opts = match std::env::var("CARP_XDP_BENCH").as_deref() {
        Ok("precise") => BenchOptions::PRECISE,
        _ => BenchOptions::SMOKE,
    };
    let rows = bench_classes(opts).expect("bench");
    assert_eq!(rows.len(), 16);
    println!(
        "{:46} {:12} {:>9} {:>9} {:>8}",
        "class", "method", "carp_xdp", "empty", "diff"
    );
    for r in &rows {
        assert!(
            r.ns_per_packet > 0.0 && r.empty_ns_per_packet > 0.0,
            "{r:?}"
        );
        println!(
            "{:46} {:12} {:6.1} ns {:6.1} ns {:+5.1} ns",
            r.class,
            r.method.to_string(),
            r.ns_per_packet,
            r.empty_ns_per_packet,
            r.overhead_ns()
        );
    }
}

// --- carp_sync: the program of the sync interface ----------------------------

const SYNC_OWN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SYNC_PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SYNC_PEER2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const SYNC_STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

struct SyncCase {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// Counter deltas; every other reason must stay 0. The frame must always
    /// come out unchanged (the program never rewrites).
    counters: &'static [(Reason, u64)],
}

/// Ethernet/IPv4 frame from `src` to the sync address with `ip_payload`.
fn sync_ip(src: Ipv4Addr, proto: u8, ttl: u8, frags: u16, ip_payload: &[u8]) -> Vec<u8> {
    eth(
        IF_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_full(src, SYNC_OWN, proto, ttl, frags, &[], ip_payload),
    )
}

/// A sync frame as the peer sends it: proto 240, TTL 255, DF.
fn sync_from(src: Ipv4Addr, frame: &[u8]) -> Vec<u8> {
    sync_ip(src, IPPROTO_SYNC, CARP_TTL, 0x4000, frame)
}

fn sync_cases() -> Vec<SyncCase> {
    use Reason::*;
    let good = sync_frame(&[0x11; 48]);
    let with_len = |len: u16| {
        let mut f = good.clone();
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f
    };
    let good_len = good.len() as u16;
    let mut pfsync = good.clone();
    pfsync[0] = 5; // pfsync(4) version 5 in the same byte
    let mut flags = good.clone();
    flags[1] = 0x01;
    // 40 bytes, self-consistent length field: too short for header + tag.
    let mut short40 = sync_frame(&[])[..40].to_vec();
    short40[2..4].copy_from_slice(&40u16.to_be_bytes());
    let mut padded = sync_from(SYNC_PEER, &sync_frame(&[]));
    padded.extend_from_slice(&[0; 6]);
    let with_options = eth(
        IF_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4_full(
            SYNC_PEER,
            SYNC_OWN,
            IPPROTO_SYNC,
            CARP_TTL,
            0x4000,
            &[0x01, 0x01, 0x01, 0x00], // NOP NOP NOP EOL
            &good,
        ),
    );
    let mut ihl4 = sync_from(SYNC_PEER, &good);
    ihl4[14] = 0x44;
    let full = sync_from(SYNC_PEER, &good);
    let truncated = full[..full.len() - 10].to_vec();
    let link_local = |last: u8| {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfe, 0x80]);
        a[15] = last;
        a
    };

    vec![
        // --- accepted ----------------------------------------------------
        SyncCase {
            name: "sync frame from the peer: passed",
            frame: sync_from(SYNC_PEER, &good),
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        SyncCase {
            name: "sync frame from the second peer: passed",
            frame: sync_from(SYNC_PEER2, &good),
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        SyncCase {
            name: "minimal 56-byte sync frame (no records): passed",
            frame: sync_from(SYNC_PEER, &sync_frame(&[])),
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        SyncCase {
            name: "sync frame with IPv4 options (IHL 6): passed",
            frame: with_options,
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        SyncCase {
            name: "sync frame followed by Ethernet padding: passed",
            frame: padded,
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        SyncCase {
            name: "sync frame without DF (flags 0): passed",
            frame: sync_ip(SYNC_PEER, IPPROTO_SYNC, CARP_TTL, 0, &good),
            verdict: XDP_PASS,
            counters: &[(SyncFrame, 1)],
        },
        // --- dropped -----------------------------------------------------
        SyncCase {
            name: "sync frame with TTL 64: dropped",
            frame: sync_ip(SYNC_PEER, IPPROTO_SYNC, 64, 0x4000, &good),
            verdict: XDP_DROP,
            counters: &[(SyncBadTtl, 1)],
        },
        SyncCase {
            name: "sync frame with TTL 254 from a stranger: TTL checked first",
            frame: sync_ip(SYNC_STRANGER, IPPROTO_SYNC, 254, 0x4000, &good),
            verdict: XDP_DROP,
            counters: &[(SyncBadTtl, 1)],
        },
        SyncCase {
            name: "sync frame from a source that is no peer: dropped",
            frame: sync_from(SYNC_STRANGER, &good),
            verdict: XDP_DROP,
            counters: &[(SyncBadSource, 1)],
        },
        SyncCase {
            name: "sync frame from the sync address itself: dropped",
            frame: sync_from(SYNC_OWN, &good),
            verdict: XDP_DROP,
            counters: &[(SyncBadSource, 1)],
        },
        SyncCase {
            name: "version 5 (pfsync): dropped",
            frame: sync_from(SYNC_PEER, &pfsync),
            verdict: XDP_DROP,
            counters: &[(SyncBadVersion, 1)],
        },
        SyncCase {
            name: "flags 1: dropped as a bad version",
            frame: sync_from(SYNC_PEER, &flags),
            verdict: XDP_DROP,
            counters: &[(SyncBadVersion, 1)],
        },
        SyncCase {
            name: "length field 4 more than the payload: dropped",
            frame: sync_from(SYNC_PEER, &with_len(good_len + 4)),
            verdict: XDP_DROP,
            counters: &[(SyncBadLength, 1)],
        },
        SyncCase {
            name: "length field 1 less than the payload: dropped",
            frame: sync_from(SYNC_PEER, &with_len(good_len - 1)),
            verdict: XDP_DROP,
            counters: &[(SyncBadLength, 1)],
        },
        SyncCase {
            name: "40-byte payload with a matching length field: too short, dropped",
            frame: sync_from(SYNC_PEER, &short40),
            verdict: XDP_DROP,
            counters: &[(SyncBadLength, 1)],
        },
        SyncCase {
            name: "3-byte payload: too short to read, dropped",
            frame: sync_from(SYNC_PEER, &[0xc1, 0, 0]),
            verdict: XDP_DROP,
            counters: &[(SyncBadLength, 1)],
        },
        SyncCase {
            name: "empty payload: dropped",
            frame: sync_from(SYNC_PEER, &[]),
            verdict: XDP_DROP,
            counters: &[(SyncBadLength, 1)],
        },
        SyncCase {
            name: "first fragment (MF set): dropped",
            frame: sync_ip(SYNC_PEER, IPPROTO_SYNC, CARP_TTL, 0x2000, &good),
            verdict: XDP_DROP,
            counters: &[(SyncFragment, 1)],
        },
        SyncCase {
            name: "last fragment (offset 16, no MF): dropped",
            frame: sync_ip(SYNC_PEER, IPPROTO_SYNC, CARP_TTL, 2, &good[16..]),
            verdict: XDP_DROP,
            counters: &[(SyncFragment, 1)],
        },
        SyncCase {
            name: "fragment from a stranger: source checked first",
            frame: sync_ip(SYNC_STRANGER, IPPROTO_SYNC, CARP_TTL, 0x2000, &good),
            verdict: XDP_DROP,
            counters: &[(SyncBadSource, 1)],
        },
        // --- everything else passes ---------------------------------------
        SyncCase {
            name: "ARP request for the sync address: passed",
            frame: eth(
                BROADCAST,
                PEER_MAC,
                ETH_P_ARP,
                &arp(1, PEER_MAC, SYNC_PEER, [0; 6], SYNC_OWN),
            ),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "ICMP echo request from the peer: passed",
            frame: sync_ip(SYNC_PEER, 1, 64, 0x4000, &icmp_echo(7, 1, b"ping")),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "TCP SYN to the sync address from a stranger: passed",
            frame: sync_ip(SYNC_STRANGER, 6, 64, 0x4000, &tcp_syn(40000, 22)),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "UDP fragment with TTL 1: not ours, passed",
            frame: sync_ip(SYNC_STRANGER, 17, 1, 0x2000, &udp(1, 2, b"x")),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "CARP advertisement on the sync link: not ours, passed",
            frame: sync_ip(
                SYNC_PEER,
                IPPROTO_CARP,
                CARP_TTL,
                0,
                &carp_advert(1, 0, 1, 1),
            ),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "IPv6 neighbour solicitation: passed",
            frame: eth(
                [0x33, 0x33, 0xff, 0, 0, 1],
                PEER_MAC,
                ETH_P_IPV6,
                &ipv6_ns(link_local(2), link_local(1), PEER_MAC),
            ),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        SyncCase {
            name: "bare 14-byte Ethernet header of another protocol: passed",
            frame: eth(BROADCAST, PEER_MAC, 0x88cc, &[]),
            verdict: XDP_PASS,
            counters: &[(PassUnrelated, 1)],
        },
        // --- malformed -----------------------------------------------------
        SyncCase {
            name: "IPv4 EtherType with a 12-byte IP header: dropped as malformed",
            frame: sync_from(SYNC_PEER, &good)[..14 + 12].to_vec(),
            verdict: XDP_DROP,
            counters: &[(DropMalformed, 1)],
        },
        SyncCase {
            name: "bare Ethernet header with the IPv4 EtherType: dropped as malformed",
            frame: eth(IF_MAC, PEER_MAC, ETH_P_IP, &[]),
            verdict: XDP_DROP,
            counters: &[(DropMalformed, 1)],
        },
        SyncCase {
            name: "protocol 240 with IHL 4: dropped as malformed",
            frame: ihl4,
            verdict: XDP_DROP,
            counters: &[(DropMalformed, 1)],
        },
        SyncCase {
            name: "sync frame cut 10 bytes short of its IP total length: malformed",
            frame: truncated,
            verdict: XDP_DROP,
            counters: &[(DropMalformed, 1)],
        },
    ]
}

fn check_sync_case(case: &SyncCase) -> Result<(), String> {
    let sync = SyncXdp::load_unattached(&[SYNC_PEER, SYNC_PEER2]).map_err(|e| format!("{e:?}"))?;
    let RunResult {
        verdict, output, ..
    } = run(sync.program().map_err(|e| e.to_string())?, &case.frame, 1)
        .map_err(|e| format!("test run: {e}"))?;
    let mut problems = Vec::new();
    if verdict != case.verdict {
        problems.push(format!("verdict {verdict}, expected {}", case.verdict));
    }
    if output != case.frame {
        problems.push(format!(
            "output\n    got  {}\n    want {}",
            hex(&output),
            hex(&case.frame)
        ));
    }
    let counters = sync.counters().map_err(|e| e.to_string())?;
    for reason in Reason::ALL {
        let want = case
            .counters
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n);
        let got = counters[reason as usize];
        if got != want {
            problems.push(format!(
                "counter {} = {got}, expected {want}",
                reason.label()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n  "))
    }
}

#[test]
fn sync_rule_table() {
    if !require_root() {
        return;
    }
    let cases = sync_cases();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            case.counters
                .iter()
                .all(|(r, _)| Reason::SYNC_PROGRAM.contains(r)),
            "{}: a reason carp_sync cannot count",
            case.name
        );
        match check_sync_case(case) {
            Ok(()) => println!("ok   {}", case.name),
            Err(e) => {
                println!("FAIL {}\n  {e}", case.name);
                failures.push(format!("{}:\n  {e}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} carp_sync cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `SyncXdp::set_peers` replaces the set (what the program accepts follows
/// it), ignores duplicates, refuses more than `MAX_SYNC_PEERS`, and swaps
/// a full set for another full one; the counters reader sees the same counts.
#[test]
fn sync_peers_replace_the_set() {
    use Reason::*;

    if !require_root() {
        return;
    }
    let mut sync = SyncXdp::load_unattached(&[SYNC_PEER, SYNC_PEER2, SYNC_PEER]).expect("load");
    assert_eq!(sync.attachment(), None);
    assert_eq!(sync.peers().expect("peers"), vec![SYNC_PEER, SYNC_PEER2]);
    let good = sync_frame(&[]);
    let reason_for = |sync: &SyncXdp, src: Ipv4Addr| {
        let before = sync.counters().expect("counters");
        let res = run(sync.program().expect("program"), &sync_from(src, &good), 1).expect("run");
        let after = sync.counters().expect("counters");
        let counted: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|&r| after[r as usize] != before[r as usize])
            .collect();
        assert_eq!(counted.len(), 1, "{counted:?}");
        (res.verdict, counted[0])
    };
    assert_eq!(reason_for(&sync, SYNC_PEER), (XDP_PASS, SyncFrame));
    assert_eq!(reason_for(&sync, SYNC_STRANGER), (XDP_DROP, SyncBadSource));

    sync.set_peers(&[SYNC_PEER2, SYNC_STRANGER])
        .expect("set peers");
    assert_eq!(
        sync.peers().expect("peers"),
        vec![SYNC_STRANGER, SYNC_PEER2]
    );
    assert_eq!(reason_for(&sync, SYNC_PEER), (XDP_DROP, SyncBadSource));
    assert_eq!(reason_for(&sync, SYNC_PEER2), (XDP_PASS, SyncFrame));
    assert_eq!(reason_for(&sync, SYNC_STRANGER), (XDP_PASS, SyncFrame));

    // Too many: refused, the set is unchanged.
    let max = carp_common::MAX_SYNC_PEERS;
    let many: Vec<Ipv4Addr> = (0..=max)
        .map(|i| Ipv4Addr::new(10, 1, 0, i as u8))
        .collect();
    match sync.set_peers(&many) {
        Err(XdpError::TooManySyncPeers { count, max: m }) => {
            assert_eq!((count, m), (max as usize + 1, max));
        }
        other => panic!("expected TooManySyncPeers, got {other:?}"),
    }
    assert_eq!(
        sync.peers().expect("peers"),
        vec![SYNC_STRANGER, SYNC_PEER2]
    );

    // A full set replaced by another full, disjoint one (stale ones go first).
    let full_a: Vec<Ipv4Addr> = (0..max).map(|i| Ipv4Addr::new(10, 2, 0, i as u8)).collect();
    let full_b: Vec<Ipv4Addr> = (0..max).map(|i| Ipv4Addr::new(10, 3, 0, i as u8)).collect();
    sync.set_peers(&full_a).expect("set full a");
    assert_eq!(sync.peers().expect("peers"), full_a);
    // Half kept, half new: more than the map holds at once.
    let half: Vec<Ipv4Addr> = full_a[..max as usize / 2]
        .iter()
        .chain(&full_b[..max as usize / 2])
        .copied()
        .collect();
    sync.set_peers(&half).expect("set half");
    let mut want = half.clone();
    want.sort();
    assert_eq!(sync.peers().expect("peers"), want);
    sync.set_peers(&full_b).expect("set full b");
    assert_eq!(sync.peers().expect("peers"), full_b);
    assert_eq!(reason_for(&sync, full_b[3]), (XDP_PASS, SyncFrame));
    assert_eq!(reason_for(&sync, full_a[3]), (XDP_DROP, SyncBadSource));
    sync.set_peers(&[]).expect("clear");
    assert!(sync.peers().expect("peers").is_empty());
    assert_eq!(reason_for(&sync, full_b[3]), (XDP_DROP, SyncBadSource));

    let reader = sync.counters_reader().expect("reader");
    assert_eq!(reader.reasons(), &Reason::SYNC_PROGRAM[..]);
    assert_eq!(
        reader.read().expect("read"),
        sync.counters().expect("counters")
    );
    assert_eq!(reader.read().expect("read")[SyncFrame as usize], 4);
    let carp = XdpInstance::load(IF_MAC).expect("load");
    assert_eq!(
        carp.counters_reader().expect("reader").reasons(),
        &Reason::CARP_PROGRAM[..]
    );
}
