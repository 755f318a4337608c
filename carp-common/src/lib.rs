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

/// IP protocol number of state-sync frames on the sync interface (240: unassigned
/// by IANA, as pfsync's own 240 is; the frames are not pfsync, see [`SYNC_VERSION`]).
pub const IPPROTO_SYNC: u8 = 240;
/// First byte of every sync frame. pfsync(4) puts its version (5 and below) there,
/// so a pfsync packet on the sync link is refused as `sync_bad_version`.
pub const SYNC_VERSION: u8 = 0xC1;
/// Fixed header of a sync frame: version, flags, length (u16 BE), then the rest
/// of the header, which only user space reads.
pub const SYNC_HEADER_LEN: usize = 24;
/// Authentication tag at the end of every sync frame (checked in user space).
pub const SYNC_TAG_LEN: usize = 32;
/// Shortest valid sync frame: header and tag, no records.
pub const SYNC_MIN_LEN: usize = SYNC_HEADER_LEN + SYNC_TAG_LEN;
/// Capacity of the `SYNC_PEERS` map (IPv4 sources the sync program accepts).
pub const MAX_SYNC_PEERS: u32 = 16;

/// Sustained rate, per second, of CARP advertisements one sender (VHID, source
/// IPv4, source MAC) may put into the `ADVERTS` ring. An honest node sends one
/// per advbase (≥ 1 s) plus three bow-out copies 3 ms apart at its stop: 64/s
/// is more than 60 times that, so no genuine advert is ever over budget, while
/// a flood from one sender costs the controller at most 64 HMACs a second.
pub const ADVERT_BUDGET_RATE: u64 = 64;
/// Tokens a sender (or a VHID's new-sender budget) may save up: one second's
/// worth, so three bow-out copies, a burst of lost-and-found adverts or a
/// restart never run dry.
pub const ADVERT_BUDGET_BURST: u64 = 64;
/// Adverts a sender may send in about a second and still count as quiet
/// (an honest node: one advert, or a bow-out's three copies): its adverts
/// then need no token from the VHID's shared budget, so a flood, which spends
/// that shared budget, never starves the genuine master.
pub const ADVERT_QUIET: u64 = 4;
/// Time one advert costs in a [`AdvertBudget`], in ns of refill.
pub const ADVERT_BUDGET_COST_NS: u64 = 1_000_000_000 / ADVERT_BUDGET_RATE;
/// Entries of the LRU hash `ADVERT_SENDERS` (per interface): senders whose
/// budget is tracked. A genuine master refreshes its entry with every advert,
/// so the kernel's LRU keeps it on the active list while senders seen once (a
/// flood from rotating addresses, which can add at most [`ADVERT_BUDGET_RATE`]
/// new senders per second and VHID) are evicted first.
pub const ADVERT_SENDERS_MAX: u32 = 4096;

/// Key of `ADVERT_SENDERS`: who sent an advertisement, as the frame says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AdvertSender {
    pub vhid: u8,
    pub _pad: u8,
    /// Ethernet source.
    pub mac: [u8; 6],
    /// IPv4 source, wire order.
    pub addr: [u8; 4],
}

/// A token bucket kept as "credit in ns of refill": it gains 1 ns per ns of
/// time up to [`ADVERT_BUDGET_BURST`] × [`ADVERT_BUDGET_COST_NS`], and each
/// advert costs [`ADVERT_BUDGET_COST_NS`]. Value of `ADVERT_SENDERS` (per
/// sender) and of `ADVERT_SHARED` (per VHID: the budget shared by senders not
/// yet in `ADVERT_SENDERS` and by senders that are not quiet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AdvertBudget {
    pub credit_ns: u64,
    pub last_ns: u64,
}

impl AdvertBudget {
    /// Largest credit.
    pub const CAP_NS: u64 = ADVERT_BUDGET_BURST * ADVERT_BUDGET_COST_NS;
    /// A sender whose bucket holds at least this much before an advert has
    /// sent at most [`ADVERT_QUIET`] adverts in about the last second: it is
    /// quiet and needs no token from its VHID's shared budget.
    pub const QUIET_NS: u64 = Self::CAP_NS - ADVERT_QUIET * ADVERT_BUDGET_COST_NS;
    /// Whether the sender is quiet at `now_ns` (see [`Self::QUIET_NS`]).
    #[inline(always)]
    pub fn is_quiet(&self, now_ns: u64) -> bool {
        self.credit_ns
            .saturating_add(now_ns.saturating_sub(self.last_ns))
            >= Self::QUIET_NS
    }
    /// A new sender's bucket after its first advert.
    pub const fn first(now_ns: u64) -> Self {
        Self {
            credit_ns: Self::CAP_NS - ADVERT_BUDGET_COST_NS,
            last_ns: now_ns,
        }
    }
    /// Refills up to `now_ns` and takes one advert's cost if there is enough:
    /// whether the advert is within budget. (A zeroed bucket is full at once.)
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        let credit = self.credit_ns.saturating_add(elapsed);
        self.credit_ns = if credit > Self::CAP_NS {
            Self::CAP_NS
        } else {
            credit
        };
        self.last_ns = now_ns;
        if self.credit_ns >= ADVERT_BUDGET_COST_NS {
            self.credit_ns -= ADVERT_BUDGET_COST_NS;
            true
        } else {
            false
        }
    }
}

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
    /// Dead-man switch (docs/design.md, "Dead-man switch"): as MASTER, the entry is honoured only while
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
    /// Sync interface (`carp_sync`): a well-formed sync frame from a configured peer,
    /// passed to the raw socket of the sync engine (which authenticates it).
    SyncFrame = 18,
    /// Sync frame (proto 240) with IP TTL != 255 (routed, not from the link): dropped.
    SyncBadTtl = 19,
    /// Sync frame whose IPv4 source is not a configured peer: dropped.
    SyncBadSource = 20,
    /// Sync frame whose version byte is not [`SYNC_VERSION`] (e.g. pfsync) or whose
    /// flags are not 0: dropped.
    SyncBadVersion = 21,
    /// Sync frame shorter than [`SYNC_MIN_LEN`] or whose length field is not the IP
    /// payload length: dropped.
    SyncBadLength = 22,
    /// Sync frame in an IPv4 fragment (MF set or offset != 0): dropped (frames are
    /// sized to fit the link MTU and never fragmented).
    SyncFragment = 23,
    /// CARP interface (`carp_xdp`): an IPv4 protocol-240 packet (a sync frame, or
    /// pfsync) arriving where sync is never accepted: dropped, so one forged from
    /// a LAN shows up here rather than nowhere.
    Proto240Dropped = 24,
    /// CARP interface (`carp_xdp`): a VLAN-tagged frame (802.1Q `0x8100` or
    /// 802.1ad `0x88a8` in the outer EtherType), whatever it carries and
    /// wherever it goes: passed untouched. It belongs to the VLAN sub-interface
    /// (which has its own VHIDs and, if any are configured there, its own XDP
    /// instance), never to the parent's VHID of the same number.
    VlanPassed = 25,
    /// CARP interface: a CARP advertisement that passed every kernel check but
    /// exceeded its sender's token budget ([`ADVERT_BUDGET_RATE`] per second,
    /// burst [`ADVERT_BUDGET_BURST`], per VHID, source IPv4 and source MAC), or
    /// came from a new or busy sender while the VHID's shared budget was
    /// spent: dropped before the ring, so a flood cannot fill `ADVERTS` or keep
    /// the controller busy authenticating.
    CarpOverBudget = 26,
}

impl Reason {
    /// Number of reasons; the size of the `COUNTERS` array.
    pub const COUNT: u32 = 27;
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
        Self::SyncFrame,
        Self::SyncBadTtl,
        Self::SyncBadSource,
        Self::SyncBadVersion,
        Self::SyncBadLength,
        Self::SyncFragment,
        Self::Proto240Dropped,
        Self::VlanPassed,
        Self::CarpOverBudget,
    ];

    /// The reasons `carp_sync` (the program on the sync interface) can count;
    /// the others stay 0 there. For exporting only the series that can move.
    pub const SYNC_PROGRAM: [Reason; 8] = [
        Self::PassUnrelated,
        Self::DropMalformed,
        Self::SyncFrame,
        Self::SyncBadTtl,
        Self::SyncBadSource,
        Self::SyncBadVersion,
        Self::SyncBadLength,
        Self::SyncFragment,
    ];

    /// The reasons `carp_xdp` (the program on CARP interfaces) can count: all
    /// but the `sync_*` ones.
    pub const CARP_PROGRAM: [Reason; 21] = [
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
        Self::Proto240Dropped,
        Self::VlanPassed,
        Self::CarpOverBudget,
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
            Self::SyncFrame => "sync_frame",
            Self::SyncBadTtl => "sync_bad_ttl",
            Self::SyncBadSource => "sync_bad_source",
            Self::SyncBadVersion => "sync_bad_version",
            Self::SyncBadLength => "sync_bad_length",
            Self::SyncFragment => "sync_fragment",
            Self::Proto240Dropped => "proto240_dropped",
            Self::CarpOverBudget => "carp_over_budget",
            Self::VlanPassed => "vlan_passed",
        }
    }
}

/// Names of the maps and globals in the eBPF object; both sides use these constants.
pub mod names {
    pub const PROGRAM: &str = "carp_xdp";
    /// The XDP program of the sync interface (same object, its own loaded instance).
    pub const SYNC_PROGRAM: &str = "carp_sync";
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
    /// LRU hash of `carp_xdp`: [`super::AdvertSender`] → [`super::AdvertBudget`].
    pub const ADVERT_SENDERS: &str = "ADVERT_SENDERS";
    /// Array of `carp_xdp`, index = VHID → [`super::AdvertBudget`] shared by
    /// senders not in `ADVERT_SENDERS` yet and by busy (not quiet) senders.
    pub const ADVERT_SHARED: &str = "ADVERT_SHARED";
    /// Hash map of `carp_sync`: IPv4 peer (its 4 wire-order bytes as a native u32,
    /// like `VIPS4`) → 1. Sync frames from any other source are dropped.
    pub const SYNC_PEERS: &str = "SYNC_PEERS";
    /// Read-only global: the MAC of the interface this instance is attached to,
    /// set with `EbpfLoader::set_global` (one loaded instance per interface).
    pub const IF_MAC: &str = "IF_MAC";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding fields, no pointers.
    unsafe impl aya::Pod for super::VhidEntry {}
    unsafe impl aya::Pod for super::AdvertRecord {}
    unsafe impl aya::Pod for super::AdvertSender {}
    unsafe impl aya::Pod for super::AdvertBudget {}
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
    fn program_reason_sets_partition_all() {
        // Every reason belongs to carp_xdp or to carp_sync; only the two
        // generic ones (pass_unrelated, drop_malformed) to both.
        for r in Reason::ALL {
            let carp = Reason::CARP_PROGRAM.contains(&r);
            let sync = Reason::SYNC_PROGRAM.contains(&r);
            let shared = matches!(r, Reason::PassUnrelated | Reason::DropMalformed);
            assert!(carp || sync, "{r:?} in no program's set");
            assert_eq!(carp && sync, shared, "{r:?}");
            assert_eq!(sync && !shared, r.label().starts_with("sync_"), "{r:?}");
        }
    }
    #[test]
    fn advert_budget_allows_a_burst_then_the_rate() {
        let t0 = 5_000_000_000u64;
        let mut b = AdvertBudget::default();
        let passed = (0..ADVERT_BUDGET_BURST + 1).filter(|_| b.take(t0)).count() as u64;
        assert_eq!(passed, ADVERT_BUDGET_BURST, "a full bucket holds one burst");
        assert!(!b.take(t0 + ADVERT_BUDGET_COST_NS - 1));
        assert!(b.take(t0 + ADVERT_BUDGET_COST_NS));
        // A new sender's first advert is already taken from its bucket.
        let mut n = AdvertBudget::first(t0);
        let passed = (0..ADVERT_BUDGET_BURST).filter(|_| n.take(t0)).count() as u64;
        assert_eq!(passed, ADVERT_BUDGET_BURST - 1);
        // Honest senders (1/s) never run dry, even with three bow-out copies.
        let mut h = AdvertBudget::first(t0);
        for s in 1..100u64 {
            assert!(h.take(t0 + s * 1_000_000_000));
        }
        assert!(h.take(t0 + 100_000_000_000) && h.take(t0 + 100_003_000_000));
        // Quiet: at most ADVERT_QUIET adverts in about a second.
        let mut q = AdvertBudget::default();
        let quiet = (0..10).filter(|_| {
            let was = q.is_quiet(t0);
            q.take(t0);
            was
        });
        assert_eq!(quiet.count() as u64, ADVERT_QUIET + 1);
        assert_eq!(core::mem::size_of::<AdvertSender>(), 12);
        assert_eq!(core::mem::size_of::<AdvertBudget>(), 16);
    }
    #[test]
    fn sync_constants() {
        assert_eq!(SYNC_MIN_LEN, 56);
        assert_eq!(IPPROTO_SYNC, 240);
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
