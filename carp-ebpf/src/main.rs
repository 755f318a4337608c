//! The CARP data path: one XDP program per CARP interface.
//!
//! The program is thin on purpose (katran's rule): it parses, looks up a map
//! that user space owns, acts, and counts. Every decision that needs policy
//! (which VHID is MASTER, until when, which addresses are virtual) is a map
//! entry written by the controller; failover is one write of a [`VhidEntry`].
//!
//! Rules, applied in this order (docs/design.md, "The data path"), first match wins:
//!
//! 0. VLAN-tagged frame (outer EtherType 802.1Q `0x8100` or 802.1ad `0x88a8`):
//!    passed untouched whatever it carries (`VlanPassed`). It belongs to the VLAN
//!    sub-interface, whose own VHIDs (and own XDP instance) decide; the parent's
//!    VHID of the same number must not. No rule below looks inside a tag.
//! 1. ARP request (Ethernet/IPv4, op 1, not gratuitous) for a VIP, whatever the
//!    destination MAC: MASTER answers in place with `XDP_TX` from the virtual
//!    MAC; otherwise drop. Any other ARP passes.
//! 2. IPv4 protocol 112, or IPv6 next header 112 (right after the fixed
//!    header, to any destination; `ff02::12` for the group): a CARP
//!    advertisement (version 2, type 1, 36 bytes,
//!    authlen 7) is validated (TTL or hop limit 255, configured VHID, checksum), held to
//!    its sender's token budget (`ADVERT_SENDERS`, `ADVERT_SHARED`: over
//!    budget is dropped as `CarpOverBudget`), copied to the `ADVERTS` ring
//!    buffer and passed; anything else with protocol 112
//!    (VRRP shares the number, VRRPv3 over IPv6 too) passes untouched.
//! 3. Frame to the virtual MAC `00:00:5e:00:01:VHID` of a configured VHID:
//!    MASTER rewrites the destination to the interface MAC and passes (so the
//!    kernel treats it as `PACKET_HOST`); otherwise drop. If it carries IPv4
//!    to a VIP of another VHID, that VHID must be MASTER too, or the frame is
//!    dropped as `VipDroppedNotMaster` (a BACKUP's VIP is not reachable
//!    through the vMAC of a VHID this node is MASTER of).
//! 4. IPv4 packet to a VIP: MASTER passes, otherwise drop. (`VIPS4_SLOTS`
//!    answers for almost every address, VIPs included, before the `VIPS4`
//!    hash lookup.)
//! 5. IPv6 (rules 3 and 4 apply to it as to IPv4, with `VIPS6_SLOTS` before
//!    `VIPS6`): a neighbour solicitation (ICMPv6 135, hop limit 255, code 0)
//!    whose target is a VIP comes first: MASTER rewrites it into the
//!    neighbour advertisement from the virtual MAC and sends it back
//!    (`XDP_TX`), otherwise drop ([`neighbor_solicitation`]).
//! 6. Anything else passes.
//!
//! Every exit counts exactly one [`Reason`] in `COUNTERS`.
//!
//! A third program, `carp_sync`, goes on the dedicated sync interface (its own
//! loaded instance of this object, so its own `COUNTERS`): it drops sync
//! frames (IPv4 protocol 240) that cannot be genuine, so that the sync
//! engine's raw socket only sees frames worth authenticating, and passes
//! everything else untouched (see [`try_carp_sync`]).
//!
//! A second, TC egress program of the same object (`carp_tc_egress`, so it
//! reads the same maps) gives the MASTER's VIP traffic the virtual MAC as its
//! Ethernet source (docs/protocol.md §3), as FreeBSD's carp(4) does, so switches
//! keep learning the virtual MAC on the MASTER's port. It never drops and
//! counts nothing.
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        TC_ACT_OK,
    },
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_xdp_adjust_tail},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
    Global,
};
use carp_common::{
    ndp, virtual_mac, AdvertBudget, AdvertRecord, AdvertSender, Reason, Verdict, VhidEntry,
    VhidState, Vip6Slot, VipSlot, ADVERT_RING_BYTES, ADVERT_SENDERS_MAX, CARP_ADVERT_LEN, CARP_TTL,
    IPPROTO_CARP, IPPROTO_SYNC, MAX_SYNC_PEERS, MAX_VHIDS, MAX_VIPS, SYNC_MIN_LEN, SYNC_VERSION,
    VIPS_SLOTS_LEN, VMAC_PREFIX,
};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Per-VHID role of this interface, index = VHID (1..=255; slot 0 unused).
/// Written whole by the controller (one `bpf_map_update_elem`), read here on
/// every ARP request for a VIP, every frame to a virtual MAC, every VIP packet
/// and every advertisement. A zeroed slot is `Unconfigured`.
#[map]
static VHIDS: Array<VhidEntry> = Array::with_max_entries(MAX_VHIDS, 0);

/// IPv4 VIP → VHID. Key: the address's 4 network-order bytes read as a native
/// u32 (`u32::from_ne_bytes(addr.octets())`), i.e. exactly the bytes on the
/// wire, so the program never swaps. Value: the VHID (u32, 1..=255).
#[map]
static VIPS4: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Prefilter in front of `VIPS4`: index = the address folded to 14 bits
/// (`carp_common::vip_slot`), value = how many keys of `VIPS4` fall in that
/// slot and, if exactly one, which and its VHID ([`VipSlot`]; user space
/// keeps it, see `carp_common::names::VIPS4_SLOTS`). A zero proves the
/// address is no VIP; a one answers for the address whether it is that VIP or
/// not. Only a slot shared by two or more VIPs needs the hash: the verifier
/// inlines array lookups into a bounds check and a load, where a hash lookup
/// is a call that hashes the key (about 30 ns per packet, `bench_classes`).
#[map]
static VIPS4_SLOTS: Array<VipSlot> = Array::with_max_entries(VIPS_SLOTS_LEN, 0);

/// IPv6 VIP → VHID. Key: the address's 16 wire-order bytes. Value: the VHID
/// (u32, 1..=255).
#[map]
static VIPS6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Prefilter in front of `VIPS6`, as `VIPS4_SLOTS` is in front of `VIPS4`:
/// index = `carp_common::vip6_slot`, value = a [`Vip6Slot`] (see
/// `carp_common::names::VIPS6_SLOTS`). Every IPv6 packet's destination (or
/// neighbour solicitation's target, or egress source) is looked up, so
/// without it every IPv6 packet would pay the hash.
#[map]
static VIPS6_SLOTS: Array<Vip6Slot> = Array::with_max_entries(VIPS_SLOTS_LEN, 0);

/// Packets per exit reason, index = `Reason as u32`, one slot per CPU (no
/// atomics on the fast path); user space sums over CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// CARP advertisements that passed the kernel checks, as [`AdvertRecord`]s with
/// their arrival time, for the controller to authenticate (HMAC) and elect on.
#[map]
static ADVERTS: RingBuf = RingBuf::with_byte_size(ADVERT_RING_BYTES, 0);

/// Advert budget per sender (VHID, source MAC, source IPv4): a token bucket
/// ([`AdvertBudget`]: `ADVERT_BUDGET_RATE` per second, burst
/// `ADVERT_BUDGET_BURST`) checked before the ring, so one flooding sender
/// cannot take the ring or the controller's time from the others. An LRU
/// hash: a sender that keeps advertising (the genuine master, once a second)
/// stays on the kernel's active list, while one-shot senders of a flood from
/// rotating addresses are evicted first. Updated in place without locks: two
/// CPUs racing on one entry may let an advert or two more through, which
/// only matters to a flood and stays bounded by the refill.
#[map]
static ADVERT_SENDERS: LruHashMap<AdvertSender, AdvertBudget> =
    LruHashMap::with_max_entries(ADVERT_SENDERS_MAX, 0);

/// Per VHID (index), the budget shared by senders not yet in
/// `ADVERT_SENDERS` and by busy senders (more than `ADVERT_QUIET` adverts in
/// about a second): a flood from any number of sources, new or known, puts at
/// most `ADVERT_BUDGET_RATE` adverts per second per VHID into the ring. A
/// quiet sender (the genuine master, heard once per advbase) never needs it,
/// so a flood cannot starve it.
#[map]
static ADVERT_SHARED: Array<AdvertBudget> = Array::with_max_entries(MAX_VHIDS, 0);

/// Sync peers for `carp_sync`: IPv4 address (4 network-order bytes read as a
/// native u32, like `VIPS4`) → 1. Written by the controller at load (a
/// changed `[sync]` needs a restart); a sync frame from any other source is dropped.
#[map]
static SYNC_PEERS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_SYNC_PEERS, 0);

/// The MAC address of the interface this instance is attached to, set at load
/// time with `EbpfLoader::override_global("IF_MAC", &[u8; 6], true)` (aya's
/// `Pod` covers `[u8; N]`, so the array is set as is). Read-only: it lives in
/// `.rodata`, which the kernel freezes, so the verifier may treat it as known.
#[unsafe(no_mangle)]
static IF_MAC: Global<[u8; 6]> = Global::new([0; 6]);

/// How far `jiffies` may lag the monotonic clock, with room to spare (ns);
/// set at load (see `carp_user::xdp::coarse_slack_ns`). A MASTER entry is
/// trusted from the jiffies cache ([`MASTER_UNTIL`]) only until this long
/// before its deadline; then the precise clock decides. The default,
/// `u64::MAX`, never trusts the cache.
#[unsafe(no_mangle)]
static COARSE_SLACK_NS: Global<u64> = Global::new(u64::MAX);

/// One jiffy in ns (`1e9 / HZ`: the resolution of CLOCK_MONOTONIC_COARSE),
/// set at load; 0 (the default) disables the jiffies cache.
#[unsafe(no_mangle)]
static TICK_NS: Global<u64> = Global::new(0);

/// The dead-man check without a clock on the fast path: per CPU and VHID,
/// the MASTER deadline last checked with the precise clock and the jiffy up
/// to which that deadline is certainly ahead (see [`is_master`]). Per CPU, so
/// no two CPUs race on a slot; tagged with the deadline, so an entry the
/// controller rewrote (a new deadline, a step back) never meets a stale slot.
#[map]
static MASTER_UNTIL: PerCpuArray<MasterUntil> = PerCpuArray::with_max_entries(MAX_VHIDS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct MasterUntil {
    deadline_ns: u64,
    until_jiffies: u64,
}

/// EtherTypes as they sit in memory (network order read as native u16).
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_ARP: u16 = 0x0806u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
/// VLAN tag protocol identifiers: 802.1Q (C-tag) and 802.1ad (S-tag, QinQ),
/// the two the Linux VLAN driver speaks.
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
/// First byte of a CARP advertisement: version 2, type 1 (carp(4)). A VRRPv2
/// advertisement starts with the same byte (RFC 3768 §5.3.1).
const CARP_V2_ADVERT: u8 = 0x21;
/// CARP `authlen` (counter + SHA-1 digest in 32-bit words); at the same offset
/// VRRPv2 carries its "count IP addrs".
const CARP_AUTHLEN: u8 = 7;
/// The 8-byte fixed header of VRRPv2 (RFC 3768 §5.1), which also covers
/// CARP's authlen: a 0x21 payload shorter than this is neither protocol.
const PROTO112_MIN: usize = 8;

// The verdicts of `carp_common::Reason` are `xdp_action` values.
const _: () = assert!(
    Verdict::Drop as u32 == XDP_DROP
        && Verdict::Pass as u32 == XDP_PASS
        && Verdict::Tx as u32 == XDP_TX
);

/// Main program: classify, count exactly one reason, return its verdict.
#[xdp]
pub fn carp_xdp(ctx: XdpContext) -> u32 {
    let reason = classify(&ctx);
    count(reason);
    reason.verdict() as u32
}

/// The sync interface's program: drops sync frames that cannot be genuine,
/// passes the rest (see [`try_carp_sync`]); counts exactly one reason.
#[xdp]
pub fn carp_sync(ctx: XdpContext) -> u32 {
    let (Ok(reason) | Err(reason)) = try_carp_sync(&ctx);
    count(reason);
    reason.verdict() as u32
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot of this map; XDP runs with preemption off, so
        // no other writer touches this CPU's copy meanwhile.
        unsafe { *slot += 1 };
    }
}

/// Benchmark baseline: the cost of running any XDP program at all.
#[xdp]
pub fn carp_xdp_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Egress (TC, `clsact` egress or TCX): an IPv4 or IPv6 frame this interface
/// sends from its own MAC with a VIP as IP source leaves with the source
/// `00:00:5e:00:01:VHID` while that VHID is MASTER (carp(4) on FreeBSD sources
/// its VIP traffic from the virtual MAC; docs/protocol.md §3). Everything else is
/// left alone. Always `TC_ACT_OK`: egress is never the place to drop, and a
/// BACKUP's stack does not send from a VIP it does not own anyway.
#[classifier]
pub fn carp_tc_egress(ctx: TcContext) -> i32 {
    vmac_source(&ctx);
    TC_ACT_OK as i32
}

/// Rewrites the Ethernet source of `ctx`'s frame if the rule above applies
/// (IPv4 with a `VIPS4` source, or IPv6 with a `VIPS6` one). Headers the
/// stack built itself are in the linear part of the skb, so a frame whose
/// Ethernet and IP headers are not is not one of ours and is left alone.
#[inline(always)]
fn vmac_source(ctx: &TcContext) {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN > end {
        return;
    }
    let eth = start as *mut EthHdr;
    // SAFETY: the Ethernet header was checked to lie inside the linear data.
    let (ether_type, src_mac) = unsafe { ((*eth).ether_type, (*eth).src_addr) };
    // Only frames from this interface's own MAC: a frame already sent from a
    // virtual MAC (or bridged from elsewhere) keeps its source.
    if src_mac != IF_MAC.load() {
        return;
    }
    let vip = if ether_type == ETH_P_IP {
        if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
            return;
        }
        let iph = (start + EthHdr::LEN) as *const Ipv4Hdr;
        // SAFETY: checked just above.
        vip_vhid(unsafe { (*iph).src_addr })
    } else if ether_type == ETH_P_IPV6 {
        if start + EthHdr::LEN + Ipv6Hdr::LEN > end {
            return;
        }
        let ip6 = (start + EthHdr::LEN) as *const Ipv6Hdr;
        // SAFETY: checked just above; copied to the stack for the lookup.
        let src = unsafe { (*ip6).src_addr };
        vip6_vhid(&src)
    } else {
        return;
    };
    let Some(vhid) = vip else {
        return;
    };
    if !vhid_is_master(vhid) {
        return;
    }
    // The Ethernet header is not covered by any checksum: a plain store.
    unsafe { (*eth).src_addr = virtual_mac(vhid as u8) };
}

/// The only bounds check: a pointer to a `T` at `offset` bytes into the frame,
/// or `None` if the frame ends before it does.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn vhid_entry(vhid: u32) -> Option<VhidEntry> {
    VHIDS.get(vhid).copied()
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether `entry` (of `vhid`) is MASTER now ([`VhidEntry::is_master_at`]),
/// without reading a clock on most packets. The monotonic clock is a helper
/// call that costs more than the rest of a forwarded packet (about 20 ns in a
/// VM, and the coarse one as much; `bench_classes`), where `jiffies` is a
/// variable. So the precise clock is read once per CPU and deadline, and the
/// answer kept as "certainly ahead until jiffy J": J = the jiffy at that read
/// + (time left − `COARSE_SLACK_NS`) / `TICK_NS`. Jiffies never run ahead of
/// the clock, and they lag it by less than the slack (a tick, or a few under
/// NOHZ; the slack is 4 ticks and at least 20 ms), so while jiffies < J the
/// deadline is ahead; within the slack of the deadline, every packet reads
/// the precise clock, and the expiry is exact. A clock is read only for a
/// MASTER entry (an argument would be evaluated before the state is looked
/// at).
#[inline(always)]
fn is_master(vhid: u32, entry: &VhidEntry) -> bool {
    if entry.state != VhidState::Master as u32 {
        return false;
    }
    // SAFETY: helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let slot = MASTER_UNTIL.get_ptr_mut(vhid);
    if let Some(slot) = slot {
        // SAFETY: this CPU's copy; XDP and TC run with preemption off.
        let s = unsafe { *slot };
        if s.deadline_ns == entry.master_expires_ns && jiffies < s.until_jiffies {
            return true;
        }
    }
    let now = now_ns();
    if !entry.is_master_at(now) {
        return false;
    }
    let (tick, slack) = (TICK_NS.load(), COARSE_SLACK_NS.load());
    let left = entry.master_expires_ns - now;
    if let Some(slot) = slot {
        if tick > 0 && left > slack {
            // SAFETY: as above.
            unsafe {
                *slot = MasterUntil {
                    deadline_ns: entry.master_expires_ns,
                    until_jiffies: jiffies + (left - slack) / tick,
                }
            };
        }
    }
    true
}

/// Whether `vhid` is configured here and MASTER now.
#[inline(always)]
fn vhid_is_master(vhid: u32) -> bool {
    vhid_entry(vhid).is_some_and(|e| is_master(vhid, &e))
}

/// The VHID of the IPv4 VIP `addr` (4 bytes as on the wire), or `None` if
/// `addr` is no VIP. The prefilter answers for most addresses, VIPs
/// included; the hash only for a slot two or more VIPs share.
#[inline(always)]
fn vip_vhid(addr: [u8; 4]) -> Option<u32> {
    let key = u32::from_ne_bytes(addr);
    let slot = VIPS4_SLOTS.get(carp_common::vip_slot(addr))?;
    if let Some(answer) = slot.lookup(&key) {
        return answer;
    }
    // SAFETY: the value is copied out at once (hash map values stay valid
    // for the program's RCU section even if user space deletes the element).
    unsafe { VIPS4.get(key) }.copied()
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Reason {
    // A frame shorter than Ethernet has no EtherType to announce anything:
    // not ours (drivers drop runts long before this anyway).
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Reason::PassUnrelated;
    };
    // SAFETY (all packet reads below): each pointer came from `ptr_at`, which
    // checked that the whole object lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    // Tagged frames belong to the VLAN sub-interface (its own VHIDs, its own
    // XDP instance when one is configured there): the parent neither answers,
    // rewrites nor drops them, and looks inside no tag. A tag the NIC (or
    // veth) strips into the skb's metadata is invisible here: see
    // docs/design.md, "VLANs".
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Reason::VlanPassed;
    }
    if ether_type == ETH_P_ARP {
        return arp(ctx, eth);
    }

    if ether_type == ETH_P_IP {
        let Some(iph) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
            return Reason::DropMalformed;
        };
        let proto = unsafe { (*iph).proto };
        if proto == IPPROTO_CARP {
            return proto112(ctx, eth, iph);
        }
        // Sync frames are accepted on the sync link only (`carp_sync`).
        if proto == IPPROTO_SYNC {
            return Reason::Proto240Dropped;
        }
        // The vMAC rule is written out in both branches (it is inlined) so
        // that the verifier keeps the IPv4 bounds check on this path: carried
        // across a join in an Option, LLVM turned it into a flag and the
        // verifier lost the packet range. Here it is combined with the VIP
        // rule, which needs only the destination address: read it now, while
        // the bounds check of `iph` certainly holds, and pass it by value.
        let dst = unsafe { (*iph).dst_addr };
        return vmac_vip4(eth, dst);
    }
    if ether_type == ETH_P_IPV6 {
        return ipv6(ctx, eth);
    }
    if let Some(verdict) = vmac(eth) {
        return verdict;
    }
    Reason::PassUnrelated
}

/// The VHID whose virtual MAC `eth` is sent to, with its entry, if that VHID
/// is configured here; `None` for any other destination, and for the vMAC of
/// a VHID not configured here (the next rules decide).
#[inline(always)]
fn vmac_target(eth: *mut EthHdr) -> Option<(u32, VhidEntry)> {
    let dst = unsafe { (*eth).dst_addr };
    if dst[..5] != VMAC_PREFIX {
        return None;
    }
    let vhid = u32::from(dst[5]);
    let entry = vhid_entry(vhid)?;
    if entry.state == VhidState::Unconfigured as u32 {
        return None;
    }
    Some((vhid, entry))
}

/// Forwarded traffic sent to the virtual MAC: make it look as if it were
/// sent to this interface, so the stack takes it as PACKET_HOST and routes it.
#[inline(always)]
fn vmac_accept(eth: *mut EthHdr) -> Reason {
    unsafe { (*eth).dst_addr = IF_MAC.load() };
    Reason::VmacRewritten
}

/// Non-IPv4 frame to `00:00:5e:00:01:VHID` of a configured VHID: MASTER
/// accepts it as its own, anyone else drops it. `None` when it is not sent to
/// a configured vMAC.
#[inline(always)]
fn vmac(eth: *mut EthHdr) -> Option<Reason> {
    let (vhid, entry) = vmac_target(eth)?;
    if !is_master(vhid, &entry) {
        return Some(Reason::VmacDroppedNotMaster);
    }
    Some(vmac_accept(eth))
}

/// IPv4 packet to `dst`, in a frame to `eth`'s destination: the vMAC rule and
/// the VIP rule together. A frame to the vMAC of VHID A that carries a packet
/// to a VIP of VHID B must pass both: A MASTER (else `VmacDroppedNotMaster`)
/// and B MASTER (else `VipDroppedNotMaster`), so a BACKUP's VIP cannot be
/// reached through the vMAC of a VHID this node is MASTER of. Without a vMAC,
/// the VIP rule alone: only the MASTER's stack may see a VIP's traffic.
#[inline(always)]
fn vmac_vip4(eth: *mut EthHdr, dst: [u8; 4]) -> Reason {
    vmac_vip(eth, || vip_vhid(dst))
}

/// [`vmac_vip4`] for any family: `vip` looks the destination up (VHID of
/// the VIP, or `None`); it runs only once the vMAC rule has let the frame on.
#[inline(always)]
fn vmac_vip(eth: *mut EthHdr, vip: impl FnOnce() -> Option<u32>) -> Reason {
    let mac_vhid = match vmac_target(eth) {
        Some((vhid, entry)) => {
            if !is_master(vhid, &entry) {
                return Reason::VmacDroppedNotMaster;
            }
            Some(vhid)
        }
        None => None,
    };
    let vip = vip();
    if let Some(vhid) = vip {
        // The vMAC's own VHID was just found MASTER (one clock read spared);
        // any other VHID, or one that is missing or unconfigured (never
        // MASTER), is looked at now.
        if Some(vhid) != mac_vhid && !vhid_is_master(vhid) {
            return Reason::VipDroppedNotMaster;
        }
    }
    match (mac_vhid, vip) {
        (Some(_), _) => vmac_accept(eth),
        (None, Some(_)) => Reason::VipPassed,
        (None, None) => Reason::PassUnrelated,
    }
}

/// ARP: answer requests for VIPs as MASTER (RFC 826 reply built in place).
#[inline(always)]
fn arp(ctx: &XdpContext, eth: *mut EthHdr) -> Reason {
    // The fixed part (hardware/protocol types and lengths, op) comes first:
    // without it the frame is broken whatever it carries.
    let Some(fixed) = ptr_at::<[u8; 8]>(ctx, EthHdr::LEN) else {
        return Reason::DropMalformed;
    };
    let fixed = unsafe { *fixed };
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4: anything else is not
    // an ARP we could be asked about.
    if fixed[..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return Reason::ArpPassed;
    }
    let Some(arp) = ptr_at::<ArpHdr>(ctx, EthHdr::LEN) else {
        return Reason::DropMalformed;
    };
    let (sha, spa, tpa) = unsafe { ((*arp).sha, (*arp).spa, (*arp).tpa) };
    // Only requests; a gratuitous ARP (sender IP == target IP, RFC 5227 §3)
    // announces, it does not ask. Replies and announcements go to the kernel.
    if fixed[6..8] != [0, 1] || spa == tpa {
        return Reason::ArpPassed;
    }
    // Every host on the segment sees every broadcast ARP request, so most
    // are for other hosts: the prefilter keeps those off the hash too.
    let Some(vhid) = vip_vhid(tpa) else {
        return Reason::ArpPassed;
    };
    if !vhid_is_master(vhid) {
        // The kernel must not answer either (arp_ignore=1 on CARP interfaces):
        // only the MASTER's XDP program speaks for a VIP.
        return Reason::ArpDroppedNotMaster;
    }
    let vmac = virtual_mac(vhid as u8);
    unsafe {
        (*eth).dst_addr = sha;
        (*eth).src_addr = vmac;
        (*arp).oper = [0, 2];
        (*arp).sha = vmac;
        (*arp).spa = tpa;
        (*arp).tha = sha;
        (*arp).tpa = spa;
    }
    Reason::ArpReplied
}

/// The VHID of the IPv6 VIP `addr`, or `None` if `addr` is no VIP, as
/// [`vip_vhid`] answers for IPv4: from the prefilter slot, or from the hash
/// for a slot two or more VIPs share. `addr` is a copy on the stack (a map
/// key must not point into the packet on older kernels).
#[inline(always)]
fn vip6_vhid(addr: &[u8; 16]) -> Option<u32> {
    let slot = VIPS6_SLOTS.get(carp_common::vip6_slot(addr))?;
    if let Some(answer) = slot.lookup(addr) {
        return answer;
    }
    // SAFETY: the value is copied out at once (see `vip_vhid`).
    unsafe { VIPS6.get(addr) }.copied()
}

/// IPv6: next header 112 is CARP or VRRP ([`proto112_v6`]); a neighbour
/// solicitation for a VIP is answered or dropped
/// ([`neighbor_solicitation`]); everything else meets the vMAC and VIP rules
/// as IPv4 does (a frame to a BACKUP's vMAC or VIP is dropped). Extension
/// headers are not walked: an NS behind one (never sent in practice) goes to
/// the kernel, which does not answer for an address on another device.
#[inline(always)]
fn ipv6(ctx: &XdpContext, eth: *mut EthHdr) -> Reason {
    let Some(ip6) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return Reason::DropMalformed;
    };
    // Read now, while the bounds check of `ip6` certainly holds (as for
    // IPv4 in `classify`), and kept on the stack for the map lookup.
    let (next_hdr, dst) = unsafe { ((*ip6).next_hdr, (*ip6).dst_addr) };
    if next_hdr == IPPROTO_CARP {
        return proto112_v6(ctx, eth, ip6);
    }
    if next_hdr == ndp::IPPROTO_ICMPV6 {
        if let Some(reason) = neighbor_solicitation(ctx, eth, ip6) {
            return reason;
        }
    }
    vmac_vip(eth, || vip6_vhid(&dst))
}

/// Frame length of the advertisement [`neighbor_solicitation`] sends.
const NA_FRAME_LEN: usize = EthHdr::LEN + Ipv6Hdr::LEN + ndp::NA_LEN;

/// ICMPv6 in `ip6`: `Some(reason)` for a neighbour solicitation about a VIP
/// (or one too short to tell), `None` for anything else, which the vMAC and
/// VIP rules then judge.
///
/// MASTER rewrites the solicitation into the advertisement in place and
/// sends it back (`XDP_TX`), as the ARP rule does: Ethernet from the virtual
/// MAC to the solicitation's Ethernet source, IPv6 from the VIP, hop limit
/// 255, flags Router (a VIP is a gateway), Solicited and Override, and the
/// virtual MAC as Target Link-Layer Address. A solicitation from `::` is
/// duplicate address detection by a node that wants the VIP for itself: it
/// is answered too, to defend the address, the way RFC 4861 §7.2.4 says
/// (to all-nodes `ff02::1`, Solicited 0), so that node sees its DAD fail
/// instead of taking the VIP over. BACKUP/INIT drops the solicitation, so
/// the kernel never answers for a VIP either (it would not anyway: the VIP
/// sits on the holder device, and Linux answers a solicitation only for
/// addresses of the receiving interface, proxy NDP aside).
///
/// Only the checks of RFC 4861 §7.1.1 that cost nothing are made (hop limit
/// 255, code 0, ICMP length ≥ 24); one that fails leaves the packet to the
/// kernel, which discards it. The ICMPv6 checksum is not verified, as an
/// ARP request has none: a forged solicitation earns the answer a genuine
/// one would.
#[inline(always)]
fn neighbor_solicitation(ctx: &XdpContext, eth: *mut EthHdr, ip6: *mut Ipv6Hdr) -> Option<Reason> {
    let off = EthHdr::LEN + Ipv6Hdr::LEN;
    let Some(head) = ptr_at::<[u8; 2]>(ctx, off) else {
        // The IPv6 header announces ICMPv6 that the frame does not carry.
        return Some(Reason::DropMalformed);
    };
    let head = unsafe { *head };
    if head[0] != ndp::NS_TYPE {
        return None;
    }
    let (payload_len, hop_limit, src) = unsafe {
        (
            usize::from(u16::from_be_bytes((*ip6).payload_len)),
            (*ip6).hop_limit,
            (*ip6).src_addr,
        )
    };
    if hop_limit != ndp::NDP_HOP_LIMIT || head[1] != 0 {
        return None;
    }
    if payload_len < ndp::NS_MIN_LEN {
        return Some(Reason::DropMalformed);
    }
    let Some(ns) = ptr_at::<[u8; ndp::NS_MIN_LEN]>(ctx, off) else {
        return Some(Reason::DropMalformed);
    };
    // SAFETY: the 24 bytes were bounds-checked by `ptr_at`.
    let ns = unsafe { *ns };
    let mut target = [0u8; 16];
    target.copy_from_slice(&ns[8..24]);
    let vhid = vip6_vhid(&target)?;
    if !vhid_is_master(vhid) {
        return Some(Reason::NdpDroppedNotMaster);
    }
    let vmac = virtual_mac(vhid as u8);
    let (dst, dst_mac, flags) = if ndp::is_unspecified(&src) {
        (
            ndp::ALL_NODES,
            ndp::ALL_NODES_MAC,
            ndp::NA_ROUTER | ndp::NA_OVERRIDE,
        )
    } else {
        (
            src,
            unsafe { (*eth).src_addr },
            ndp::NA_ROUTER | ndp::NA_SOLICITED | ndp::NA_OVERRIDE,
        )
    };
    let na = ndp::neighbor_advert(&target, &dst, &target, vmac, flags);

    // The answer is 86 bytes; a solicitation with one option (the source's
    // link-layer address, or DAD's nonce) is too, one without options is 8
    // shorter, and one with more options or Ethernet padding is longer.
    let len = ctx.data_end() - ctx.data();
    if len != NA_FRAME_LEN {
        let delta = NA_FRAME_LEN as i32 - len as i32;
        // SAFETY: the helper takes this program's own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            // No tailroom to grow into (a driver without it): nothing can
            // be sent; counted with the frames that could not be handled.
            return Some(Reason::DropMalformed);
        }
    }
    // Every packet pointer died with the resize: take them again.
    let (Some(eth), Some(ip6), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<[u8; ndp::NA_LEN]>(ctx, off),
    ) else {
        return Some(Reason::DropMalformed);
    };
    unsafe {
        (*eth).dst_addr = dst_mac;
        (*eth).src_addr = vmac;
        // A new packet: traffic class and flow label 0.
        (*ip6).vcf = [0x60, 0, 0, 0];
        (*ip6).payload_len = (ndp::NA_LEN as u16).to_be_bytes();
        (*ip6).next_hdr = ndp::IPPROTO_ICMPV6;
        (*ip6).hop_limit = ndp::NDP_HOP_LIMIT;
        (*ip6).src_addr = target;
        (*ip6).dst_addr = dst;
        *icmp = na;
    }
    Some(Reason::NdpReplied)
}

/// IP protocol 112: CARP advertisements go to the ring buffer, VRRP passes.
///
/// CARP and VRRPv2 both start with 0x21 (version 2, type 1). They are told
/// apart by length: a CARP advertisement is exactly 36 bytes with authlen
/// (byte 3) 7; a VRRPv2 advertisement is 8 + 4 × count + 8 bytes with count
/// in byte 3, so count 7 means 44 bytes and 36 bytes means count 5. Hence:
///
/// - not 0x21 (VRRPv3 is 0x31, other CARP versions/types): pass untouched;
/// - 0x21 shorter than 8 bytes: neither protocol, dropped as `CarpShort`;
/// - 0x21, byte 3 == 7, shorter than 36: a truncated CARP advert (a VRRPv2
///   advert with 7 addresses would be 44 bytes), dropped as `CarpShort`;
/// - 0x21, byte 3 == 7, exactly 36: CARP, checked below;
/// - any other 0x21 (byte 3 != 7, or longer than 36): VRRPv2, passed.
///
/// The payload length comes from the IP total length, not the frame length, so
/// Ethernet padding is never counted.
#[inline(always)]
fn proto112(ctx: &XdpContext, eth: *mut EthHdr, iph: *mut Ipv4Hdr) -> Reason {
    let (vihl, tot_len, ttl, src, dst) = unsafe {
        (
            (*iph).vihl,
            u16::from_be_bytes((*iph).tot_len) as usize,
            (*iph).ttl,
            (*iph).src_addr,
            (*iph).dst_addr,
        )
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN || tot_len < ihl {
        return Reason::DropMalformed;
    }
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    src_addr[..4].copy_from_slice(&src);
    dst_addr[..4].copy_from_slice(&dst);
    let from = Source {
        family: 4,
        addr: src_addr,
        dst: dst_addr,
        budget_key: src,
    };
    carp_payload(ctx, eth, EthHdr::LEN + ihl, tot_len - ihl, ttl, &from)
}

/// IPv6 next header 112 right after the fixed header: the same rules as
/// [`proto112`], with the hop limit in place of the TTL (FreeBSD's
/// `carp6_input` and RFC 5798 §5.1.2.3 require 255 too) and the payload
/// length from the IPv6 header. Adverts behind extension headers are not
/// looked for (no CARP or VRRP sender puts any there): such a packet meets
/// the rules every other IPv6 packet meets. VRRPv3 over IPv6 (0x31) passes.
#[inline(always)]
fn proto112_v6(ctx: &XdpContext, eth: *mut EthHdr, ip6: *mut Ipv6Hdr) -> Reason {
    let (payload_len, hop_limit, src, dst) = unsafe {
        (
            usize::from(u16::from_be_bytes((*ip6).payload_len)),
            (*ip6).hop_limit,
            (*ip6).src_addr,
            (*ip6).dst_addr,
        )
    };
    let from = Source {
        family: 6,
        addr: src,
        dst,
        budget_key: carp_common::fold_ipv6(&src),
    };
    carp_payload(
        ctx,
        eth,
        EthHdr::LEN + Ipv6Hdr::LEN,
        payload_len,
        hop_limit,
        &from,
    )
}

/// Who an IP-protocol-112 payload came from, in the ring record's terms.
struct Source {
    /// 4 or 6 ([`AdvertRecord::family`]).
    family: u8,
    /// IP source, IPv4 in the first 4 bytes.
    addr: [u8; 16],
    /// IP destination, IPv4 in the first 4 bytes.
    dst: [u8; 16],
    /// The address part of the sender's budget key (`ADVERT_SENDERS`): the
    /// IPv4 source, or the IPv6 source folded to 4 bytes.
    budget_key: [u8; 4],
}

/// The protocol-112 payload of `len` bytes at `off`, of a packet whose TTL
/// (hop limit) is `ttl`: the rules of [`proto112`] from the first byte on.
#[inline(always)]
fn carp_payload(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    off: usize,
    len: usize,
    ttl: u8,
    from: &Source,
) -> Reason {
    if len == 0 {
        return Reason::Proto112Other;
    }
    let Some(first) = ptr_at::<u8>(ctx, off) else {
        // The IP header announces a payload the frame does not carry.
        return Reason::DropMalformed;
    };
    if unsafe { *first } != CARP_V2_ADVERT {
        return Reason::Proto112Other;
    }
    if len < PROTO112_MIN {
        return Reason::CarpShort;
    }
    let Some(head) = ptr_at::<[u8; PROTO112_MIN]>(ctx, off) else {
        return Reason::CarpShort;
    };
    if unsafe { (*head)[3] } != CARP_AUTHLEN || len > CARP_ADVERT_LEN {
        return Reason::Proto112Other;
    }
    if len < CARP_ADVERT_LEN {
        return Reason::CarpShort;
    }
    let Some(carp) = ptr_at::<[u8; CARP_ADVERT_LEN]>(ctx, off) else {
        return Reason::CarpShort;
    };
    // carp(4): advertisements are sent with TTL (hop limit) 255 and
    // anything else was routed, i.e. did not come from this segment.
    if ttl != CARP_TTL {
        return Reason::CarpBadTtl;
    }
    let vhid = unsafe { (*carp)[1] };
    let configured =
        vhid_entry(u32::from(vhid)).is_some_and(|e| e.state != VhidState::Unconfigured as u32);
    if !configured {
        return Reason::CarpUnknownVhid;
    }
    if !checksum_ok(carp) {
        return Reason::CarpBadChecksum;
    }
    if !within_budget(vhid, unsafe { (*eth).src_addr }, from.budget_key) {
        return Reason::CarpOverBudget;
    }

    let Some(mut entry) = ADVERTS.reserve::<AdvertRecord>(0) else {
        // User space is behind. Passing keeps the kernel's view unchanged; the
        // counter makes the loss visible (the controller can also read the
        // raw socket if it ever needs the advert).
        return Reason::CarpRingFull;
    };
    // Every byte of the record is written: ring memory is not zeroed.
    entry.write(AdvertRecord {
        ktime_ns: now_ns(),
        family: from.family,
        ttl,
        src_mac: unsafe { (*eth).src_addr },
        src_addr: from.addr,
        dst_addr: from.dst,
        payload: unsafe { *carp },
        _pad: [0; 4],
    });
    // Flags 0: adaptive wake-up, the reader is notified only if it had caught
    // up. That notification (irq_work) dominates this path (about 5.3 µs per
    // advert in a VM, against 0.12 µs for one that wakes nobody; see
    // `bench_classes`), which is fine at one advert per second per VHID, and
    // the controller needs the wake-up.
    entry.submit(0);
    Reason::CarpAdvert
}

/// Takes one advert from the budget of its sender (`ADVERT_SENDERS`); a
/// sender not tracked yet, or a busy one (its bucket below
/// [`AdvertBudget::QUIET_NS`] before this advert: more than a few adverts in
/// the last second), must also take one from the VHID's shared budget
/// (`ADVERT_SHARED`). Whether the advert may go on to the ring.
#[inline(always)]
fn within_budget(vhid: u8, mac: [u8; 6], addr: [u8; 4]) -> bool {
    let key = AdvertSender {
        vhid,
        _pad: 0,
        mac,
        addr,
    };
    let now = now_ns();
    let Some(shared) = ADVERT_SHARED.get_ptr_mut(u32::from(vhid)) else {
        return false;
    };
    if let Some(b) = ADVERT_SENDERS.get_ptr_mut(&key) {
        // SAFETY: valid map value pointers for this RCU section (array values
        // live as long as the map).
        unsafe {
            let quiet = (*b).is_quiet(now);
            return (*b).take(now) && (quiet || (*shared).take(now));
        }
    }
    // SAFETY: as above.
    if !unsafe { (*shared).take(now) } {
        return false;
    }
    // A full LRU evicts its least recently used entry; a failed insert only
    // means the next advert of this sender is a newcomer again.
    let _ = ADVERT_SENDERS.insert(&key, &AdvertBudget::first(now), 0);
    true
}

/// IPv4 "more fragments" flag and fragment offset in `Ipv4Hdr::frags` (as
/// read big-endian): a packet is a fragment iff any of these bits is set.
const IP_MF_OFFSET: u16 = 0x3fff;

/// `carp_sync`'s rules: `Ok(reason)` for a frame it passes, `Err(reason)`
/// for one it drops (the first check that failed). The program returns the
/// reason's [`Reason::verdict`], which agrees: pass for every `Ok`, drop for
/// every `Err`.
///
/// - not IPv4, or IPv4 of another protocol (ARP, ND, ICMP, TCP, ...): pass,
///   `PassUnrelated` (the sync link is an ordinary link for everything else);
/// - a frame shorter than Ethernet (unlike `carp_xdp`, which passes it: a
///   dedicated link has no business carrying runts), IPv4 whose header (for
///   protocol 240: whole IP packet) is not in the frame, IHL < 5, or total
///   length < IHL: `DropMalformed`;
/// - protocol 240 (in this order): TTL != 255 → `SyncBadTtl`; source not in
///   `SYNC_PEERS` → `SyncBadSource`; MF or an offset → `SyncFragment`; version
///   byte != 0xC1 or flags != 0 → `SyncBadVersion`; payload shorter than 56
///   bytes or length field != payload length → `SyncBadLength`; otherwise pass,
///   `SyncFrame`. Authentication is user space's (the tag is not looked at).
///
/// The version is checked before the length so that a foreign protocol on
/// number 240 (pfsync puts its version, 5 or less, in the same byte) is
/// counted as what it is whatever its length. A frame too short to hold the
/// four bytes read here is `SyncBadLength`.
#[inline(always)]
fn try_carp_sync(ctx: &XdpContext) -> Result<Reason, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::DropMalformed)?;
    // SAFETY (all packet reads below): each pointer came from `ptr_at`.
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return Ok(Reason::PassUnrelated);
    }
    let iph = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Reason::DropMalformed)?;
    let (vihl, tot_len, frags, ttl, proto, src) = unsafe {
        (
            (*iph).vihl,
            usize::from(u16::from_be_bytes((*iph).tot_len)),
            u16::from_be_bytes((*iph).frags),
            (*iph).ttl,
            (*iph).proto,
            (*iph).src_addr,
        )
    };
    if proto != IPPROTO_SYNC {
        return Ok(Reason::PassUnrelated);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    // The IP packet must be in the frame (Ethernet padding may follow it).
    if ihl < Ipv4Hdr::LEN || tot_len < ihl || ctx.data() + EthHdr::LEN + tot_len > ctx.data_end() {
        return Err(Reason::DropMalformed);
    }
    // Sync frames are sent with TTL 255; anything less was routed.
    if ttl != CARP_TTL {
        return Err(Reason::SyncBadTtl);
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { SYNC_PEERS.get(u32::from_ne_bytes(src)) }.is_none() {
        return Err(Reason::SyncBadSource);
    }
    if frags & IP_MF_OFFSET != 0 {
        return Err(Reason::SyncFragment);
    }
    let len = tot_len - ihl;
    if len < 4 {
        return Err(Reason::SyncBadLength);
    }
    // In the frame: the whole IP packet was checked above; `ptr_at` checks
    // again in a form the verifier follows.
    let head = ptr_at::<[u8; 4]>(ctx, EthHdr::LEN + ihl).ok_or(Reason::DropMalformed)?;
    let head = unsafe { *head };
    if head[0] != SYNC_VERSION || head[1] != 0 {
        return Err(Reason::SyncBadVersion);
    }
    if len < SYNC_MIN_LEN || usize::from(u16::from_be_bytes([head[2], head[3]])) != len {
        return Err(Reason::SyncBadLength);
    }
    Ok(Reason::SyncFrame)
}

/// RFC 1071 Internet checksum over the 36-byte CARP header (checksum field
/// included): valid iff the one's complement sum is 0xffff. Fixed trip count,
/// unrolled by LLVM, so the verifier sees straight-line code.
#[inline(always)]
fn checksum_ok(carp: *const [u8; CARP_ADVERT_LEN]) -> bool {
    let bytes = carp.cast::<u8>();
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < CARP_ADVERT_LEN {
        // SAFETY: i + 1 < 36 and the 36 bytes were bounds-checked by ptr_at.
        let word = unsafe { u16::from_be_bytes([*bytes.add(i), *bytes.add(i + 1)]) };
        sum += u32::from(word);
        i += 2;
    }
    // 18 words of at most 0xffff fit in 21 bits: two folds are enough.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
