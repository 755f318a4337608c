//! Types shared by the XDP program (`carp-ebpf`) and the controller (`carp-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel and user space read the
//! same bytes out of the same maps, so layout changes must be made on both sides
//! at once (they are, because both sides compile this crate).
#![no_std]

/// Number of slots in the per-VHID map: VHIDs are 1..=255, slot 0 is unused.
pub const MAX_VHIDS: u32 = 256;
/// Capacity of the VIP → VHID map of one interface.
pub const MAX_VIPS: u32 = 1024;
/// Slots of the `VIPS4_OCTETS` prefilter: one per value of an address's last octet.
pub const VIPS4_OCTETS_LEN: u32 = 256;
/// Size of a CARP advertisement payload (carp(4): `struct carp_header`).
pub const CARP_ADVERT_LEN: usize = 36;
/// IP protocol number shared by CARP and VRRP.
pub const IPPROTO_CARP: u8 = 112;
/// Ring buffer size for advertisements copied to user space (bytes, power of two).
pub const ADVERT_RING_BYTES: u32 = 64 * 1024;

/// Role of one VHID as the data path sees it (the value of [`VhidEntry::state`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhidState {
    /// Not configured on this interface: the XDP program treats its traffic as unrelated.
    Unconfigured = 0,
    /// Configured, link down or starting: like BACKUP, never answers.
    Init = 1,
    Backup = 2,
    /// Answers ARP, passes VIP traffic, accepts virtual-MAC frames, until `master_expires_ns`.
    Master = 3,
}

impl VhidState {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Init,
            2 => Self::Backup,
            3 => Self::Master,
            _ => Self::Unconfigured,
        }
    }
}

/// Value of the per-VHID array map `VHIDS` (index = VHID), one map per interface.
///
/// Failover is one write of this struct. The controller writes the whole value
/// (a single `bpf_map_update_elem`), so the program never sees a torn entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VhidEntry {
    /// A [`VhidState`] as u32.
    pub state: u32,
    pub _pad: u32,
    /// Dead-man switch (DESIGN.md): as MASTER, the entry is honoured only while
    /// `bpf_ktime_get_ns() <= master_expires_ns`; the controller moves it forward
    /// to `last advert sent + 3 × advbase` each time it advertises. A stalled
    /// controller therefore stops answering by itself. Ignored in other states.
    pub master_expires_ns: u64,
}

impl VhidEntry {
    pub const fn new(state: VhidState, master_expires_ns: u64) -> Self {
        Self {
            state: state as u32,
            _pad: 0,
            master_expires_ns,
        }
    }
    /// Whether the data path behaves as MASTER for this entry at kernel time `now_ns`.
    #[inline(always)]
    pub const fn is_master_at(&self, now_ns: u64) -> bool {
        self.state == VhidState::Master as u32 && now_ns <= self.master_expires_ns
    }
}

/// Record pushed to the `ADVERTS` ring buffer for every CARP advertisement that
/// passed the kernel-side checks (TTL, length, version, type, checksum, VHID
/// configured). The HMAC, the counter and the election are user space's job.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvertRecord {
    /// `bpf_ktime_get_ns()` at arrival (CLOCK_MONOTONIC), so a controller that
    /// drains late still knows when each advert arrived.
    pub ktime_ns: u64,
    /// 4 for IPv4, 6 for IPv6 (IPv6 adverts are not parsed yet; room is kept).
    pub family: u8,
    pub ttl: u8,
    /// Ethernet source (the sender's virtual MAC for BSD, 00:00:5e:00:00:VHID for ucarp).
    pub src_mac: [u8; 6],
    /// IP source; IPv4 in the first 4 bytes.
    pub src_addr: [u8; 16],
    /// IP destination; IPv4 in the first 4 bytes.
    pub dst_addr: [u8; 16],
    /// The 36-byte CARP header as received.
    pub payload: [u8; CARP_ADVERT_LEN],
    pub _pad: [u8; 4],
}

/// Why the XDP program let a packet go the way it did. Every exit path counts
/// exactly one reason in the per-CPU array `COUNTERS` (index = reason), and the
/// same names are the `reason` label of `carp_xdp_packets_total`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not ours at all (not ARP, not proto 112, not to a vMAC of a configured VHID, not to a VIP).
    PassUnrelated = 0,
    /// Frame too short for the headers its EtherType announces.
    DropMalformed = 1,
    /// ARP request for a VIP answered from XDP as MASTER (XDP_TX).
    ArpReplied = 2,
    /// ARP request for a VIP while BACKUP/INIT (or MASTER past its expiry).
    ArpDroppedNotMaster = 3,
    /// Other ARP (replies, gratuitous, not for a VIP): passed to the kernel.
    ArpPassed = 4,
    /// Valid-looking CARP advertisement copied to the ring buffer and passed.
    CarpAdvert = 5,
    /// Proto 112 with IP TTL != 255: dropped (carp(4)).
    CarpBadTtl = 6,
    /// Proto 112, CARP version 2 type 1, but shorter than 36 bytes or authlen != 7: dropped.
    CarpShort = 7,
    /// CARP header checksum wrong: dropped.
    CarpBadChecksum = 8,
    /// CARP version 2 type 1 for a VHID not configured on this interface: dropped.
    CarpUnknownVhid = 9,
    /// Proto 112 that is not a CARP advertisement (VRRP shares the number): passed untouched.
    Proto112Other = 10,
    /// Ring buffer full: the advert could not be copied; passed (counted so it shows).
    CarpRingFull = 11,
    /// Frame to a configured vMAC as MASTER: destination rewritten to the interface MAC, passed.
    VmacRewritten = 12,
    /// Frame to a configured vMAC while not MASTER: dropped.
    VmacDroppedNotMaster = 13,
    /// IPv4 packet to a VIP as MASTER: passed.
    VipPassed = 14,
    /// IPv4 packet to a VIP while not MASTER: dropped.
    VipDroppedNotMaster = 15,
    /// IPv6 neighbour solicitation for a VIP answered (room kept; IPv6 VIPs come later).
    NdpReplied = 16,
    /// Neighbour solicitation for a VIP while not MASTER (room kept).
    NdpDroppedNotMaster = 17,
}

impl Reason {
    /// Number of reasons; the size of the `COUNTERS` array.
    pub const COUNT: u32 = 18;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Self::PassUnrelated,
        Self::DropMalformed,
        Self::ArpReplied,
        Self::ArpDroppedNotMaster,
        Self::ArpPassed,
        Self::CarpAdvert,
        Self::CarpBadTtl,
        Self::CarpShort,
        Self::CarpBadChecksum,
        Self::CarpUnknownVhid,
        Self::Proto112Other,
        Self::CarpRingFull,
        Self::VmacRewritten,
        Self::VmacDroppedNotMaster,
        Self::VipPassed,
        Self::VipDroppedNotMaster,
        Self::NdpReplied,
        Self::NdpDroppedNotMaster,
    ];

    /// Metric label value (`carp_xdp_packets_total{reason=...}`); part of the interface.
    pub const fn label(self) -> &'static str {
        match self {
            Self::PassUnrelated => "pass_unrelated",
            Self::DropMalformed => "drop_malformed",
            Self::ArpReplied => "arp_replied",
            Self::ArpDroppedNotMaster => "arp_dropped_not_master",
            Self::ArpPassed => "arp_passed",
            Self::CarpAdvert => "carp_advert",
            Self::CarpBadTtl => "carp_bad_ttl",
            Self::CarpShort => "carp_short",
            Self::CarpBadChecksum => "carp_bad_checksum",
            Self::CarpUnknownVhid => "carp_unknown_vhid",
            Self::Proto112Other => "proto112_other",
            Self::CarpRingFull => "carp_ring_full",
            Self::VmacRewritten => "vmac_rewritten",
            Self::VmacDroppedNotMaster => "vmac_dropped_not_master",
            Self::VipPassed => "vip_passed",
            Self::VipDroppedNotMaster => "vip_dropped_not_master",
            Self::NdpReplied => "ndp_replied",
            Self::NdpDroppedNotMaster => "ndp_dropped_not_master",
        }
    }
}

/// Names of the maps and globals in the eBPF object; both sides use these constants.
pub mod names {
    pub const PROGRAM: &str = "carp_xdp";
    pub const VHIDS: &str = "VHIDS";
    /// Hash map: IPv4 VIP (its 4 wire-order bytes as a native u32) → VHID (u32).
    pub const VIPS4: &str = "VIPS4";
    /// Array of [`super::VIPS4_OCTETS_LEN`] u32, the prefilter in front of
    /// `VIPS4`: slot `o` counts the keys of `VIPS4` whose last octet is `o`.
    /// The program looks up `VIPS4` only when the slot of the destination's
    /// (or ARP target's) last octet is non-zero, so an inlined array load
    /// replaces the hash lookup for most non-VIP addresses.
    ///
    /// Invariant, kept by the controller's `XdpInstance::add_vip` and
    /// `remove_vip` (the only writers of both maps): every key of `VIPS4`
    /// has a non-zero slot. Adding raises the count before inserting the VIP
    /// and removing lowers it after deleting it, so the program, which reads
    /// the two maps at different moments, never sees a VIP behind a zero
    /// slot; a count that is too high only costs a hash lookup. Counting
    /// (rather than a bit per octet) lets one of two VIPs that share an octet
    /// go without hiding the other.
    pub const VIPS4_OCTETS: &str = "VIPS4_OCTETS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ADVERTS: &str = "ADVERTS";
    /// Read-only global: the MAC of the interface this instance is attached to,
    /// set with `EbpfLoader::set_global` (one loaded instance per interface).
    pub const IF_MAC: &str = "IF_MAC";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding fields, no pointers.
    unsafe impl aya::Pod for super::VhidEntry {}
    unsafe impl aya::Pod for super::AdvertRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn reasons_are_dense_and_labelled_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
        }
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.label(), b.label());
                }
            }
        }
    }
    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<VhidEntry>(), 16);
        assert_eq!(
            core::mem::size_of::<AdvertRecord>(),
            8 + 1 + 1 + 6 + 16 + 16 + 36 + 4
        );
    }
}
