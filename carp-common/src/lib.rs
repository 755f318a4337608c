//! Types shared by the XDP program (`carp-ebpf`) and the controller (`carp-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel and user space read the
//! same bytes out of the same maps, so layout changes must be made on both sides
//! at once (they are, because both sides compile this crate).
#![no_std]

pub mod ndp;

/// Number of slots in the per-VHID map: VHIDs are 1..=255, slot 0 is unused.
pub const MAX_VHIDS: u32 = 256;
/// Capacity of the VIP → VHID map of one interface.
pub const MAX_VIPS: u32 = 1024;
/// Slots of the `VIPS4_SLOTS` and `VIPS6_SLOTS` prefilters (a power of two):
/// 16 384 × 16 bytes (IPv4) and × 28 bytes (IPv6), 256 KiB and 448 KiB per
/// interface.
pub const VIPS_SLOTS_LEN: u32 = 1 << 14;

/// The `VIPS4_SLOTS` slot of an IPv4 address (its 4 wire-order bytes): the
/// address folded to 14 bits. Two addresses in one /18 never share a slot
/// (their low 14 bits differ and the rest folds alike), and VIPs of
/// different subnets with the same host part (10.77.0.1 and 192.168.0.1)
/// differ in the bits folded in, so a slot shared by two VIPs, which costs
/// a hash lookup, takes a coincidence.
#[inline(always)]
pub const fn vip_slot(addr: [u8; 4]) -> u32 {
    let x = u32::from_be_bytes(addr);
    (x ^ (x >> 14) ^ (x >> 28)) & (VIPS_SLOTS_LEN - 1)
}

/// The `VIPS6_SLOTS` slot of an IPv6 address (its 16 wire-order bytes): the
/// XOR of its four 32-bit words ([`fold_ipv6`]), folded to 14 bits as
/// [`vip_slot`] folds an IPv4 address. VIPs are numbered within a prefix
/// (one /64 per link, mostly), so they differ in their last bits, which
/// the XOR keeps as they are: the addresses of one /114 (the last 14 bits)
/// never share a slot, like those of an IPv4 /18. The prefix bits only
/// shift the whole set by the same XOR, and VIPs of different prefixes
/// with the same interface identifier (`2001:db8:1::1`, `2001:db8:2::1`)
/// differ in the prefix bits folded in. XORs and shifts only: the program
/// computes it without a helper call.
#[inline(always)]
pub const fn vip6_slot(addr: &[u8; 16]) -> u32 {
    vip_slot(fold_ipv6(addr))
}

/// Size of a CARP advertisement payload (carp(4): `struct carp_header`).
pub const CARP_ADVERT_LEN: usize = 36;
/// A slot of `VIPS4_SLOTS` (`A` = `u32`) or `VIPS6_SLOTS` (`A` = `[u8; 16]`):
/// how many VIPs (keys of `VIPS4`, `VIPS6`) fall in it ([`vip_slot`],
/// [`vip6_slot`]), and, when that is exactly one, which VIP and VHID, so
/// that the program answers for it without the hash lookup (see
/// [`names::VIPS4_SLOTS`]). `A` is the key type of the family's hash.
///
/// An array element is updated by a plain copy, so a packet may see a mix of
/// an old and a new value. The writer (`XdpInstance::add_vip`, `add_vip6`, ...)
/// therefore never changes `count` and (`addr`, `vhid`) in the same update:
/// every mix is then a value that was true at some instant, or one that sends
/// the program to the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipSlot<A = u32> {
    /// Keys of the hash in this slot.
    pub count: u32,
    /// With `count == 1`: the VIP, as the hash's key (IPv4: its 4
    /// wire-order bytes as a native u32; IPv6: its 16 wire-order bytes).
    pub addr: A,
    /// With `count == 1`: that VIP's VHID.
    pub vhid: u32,
    pub _pad: u32,
}

/// A slot of `VIPS6_SLOTS`.
pub type Vip6Slot = VipSlot<[u8; 16]>;

impl<A: PartialEq> VipSlot<A> {
    /// What a slot says about the address `addr` (as the hash's key) that
    /// falls in it: `Some(Some(vhid))` it is that VIP, `Some(None)` it is no
    /// VIP, `None` ask the hash.
    #[inline(always)]
    pub fn lookup(&self, addr: &A) -> Option<Option<u32>> {
        match self.count {
            0 => Some(None),
            1 if self.addr == *addr => Some(Some(self.vhid)),
            1 => Some(None),
            _ => None,
        }
    }
}

/// IP protocol number shared by CARP and VRRP.
pub const IPPROTO_CARP: u8 = 112;
/// 224.0.0.18, the CARP/VRRP group (`INADDR_CARP_GROUP`) advertisements go to.
pub const CARP_GROUP_V4: core::net::Ipv4Addr = core::net::Ipv4Addr::new(224, 0, 0, 18);
/// ff02::12, the IPv6 CARP/VRRP group (FreeBSD's `carp_send_ad_locked`,
/// RFC 5798 §5.1.2.2) advertisements of VHIDs with IPv6 VIPs go to.
pub const CARP_GROUP_V6: core::net::Ipv6Addr =
    core::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// IP TTL of every CARP advertisement and sync frame (`CARP_DFLTTL`): a
/// receiver drops anything else, which was routed, not sent on the link.
pub const CARP_TTL: u8 = 255;
/// First five bytes of a virtual MAC, `00:00:5e:00:01` (IANA's VRRP/CARP IPv4
/// range, RFC 5798 §7.3); the sixth is the VHID ([`virtual_mac`]).
pub const VMAC_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x01];

/// The virtual MAC of a VHID, `00:00:5e:00:01:VHID` (carp(4), the VRRP range
/// of RFC 5798 §7.3). ucarp sends from `00:00:5e:00:00:VHID` instead.
#[inline(always)]
pub const fn virtual_mac(vhid: u8) -> [u8; 6] {
    let p = VMAC_PREFIX;
    [p[0], p[1], p[2], p[3], p[4], vhid]
}
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
/// per advbase: at most 100/s in fast mode (`advbase_ms` ≥ 10), one a second
/// or less otherwise, plus three bow-out copies 3 ms apart at its stop. At
/// 256/s the token of an advert is back before the next one even at 10 ms, so
/// no genuine advert is ever over budget and a fast master stays "quiet"
/// ([`ADVERT_QUIET`]), while a flood from one sender costs the controller at
/// most 256 HMACs (about 0.3 ms of CPU) a second.
pub const ADVERT_BUDGET_RATE: u64 = 256;
/// Tokens a sender (or a VHID's new-sender budget) may save up: one second's
/// worth, so three bow-out copies, a burst of lost-and-found adverts or a
/// restart never run dry.
pub const ADVERT_BUDGET_BURST: u64 = 256;
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
    /// IPv4 source, wire order; for an IPv6 advert its source folded to
    /// four bytes ([`fold_ipv6`]).
    pub addr: [u8; 4],
}

/// An IPv6 address folded to the 4 bytes of [`AdvertSender::addr`]: the XOR
/// of its four 32-bit words. The budget only needs senders apart, not
/// named: two senders on one link differ in their interface identifiers
/// (the last 8 bytes), which the fold keeps, and a flood from rotating
/// addresses lands on new keys whatever the fold (and on the VHID's shared
/// budget). An IPv6 sender's key cannot be one of an IPv4 sender's only by
/// a coincidence that costs the two a shared bucket, nothing more.
#[inline(always)]
pub const fn fold_ipv6(a: &[u8; 16]) -> [u8; 4] {
    let mut out = [0u8; 4];
    let mut i = 0;
    while i < 16 {
        out[i % 4] ^= a[i];
        i += 1;
    }
    out
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
    /// 4 for IPv4, 6 for IPv6 (next header 112 right after the IPv6 header).
    pub family: u8,
    /// IPv4 TTL or IPv6 hop limit (always 255: anything else is dropped).
    pub ttl: u8,
    /// Ethernet source (the sender's virtual MAC for BSD, 00:00:5e:00:00:VHID for ucarp).
    pub src_mac: [u8; 6],
    /// IP source; IPv4 in the first 4 bytes (the rest zero), IPv6 whole.
    pub src_addr: [u8; 16],
    /// IP destination; IPv4 in the first 4 bytes (the rest zero), IPv6 whole.
    pub dst_addr: [u8; 16],
    /// The 36-byte CARP header as received.
    pub payload: [u8; CARP_ADVERT_LEN],
    pub _pad: [u8; 4],
}

/// What the XDP program does with a packet, as a value of the kernel's
/// `enum xdp_action` (`XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3), so that the
/// program can return `verdict as u32` (carp-ebpf checks the values against
/// aya's bindings at compile time).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop = 1,
    Pass = 2,
    /// Sent back out of the interface it came in on (an ARP reply).
    Tx = 3,
}

/// Which XDP program can count a [`Reason`]: `carp_xdp` on CARP interfaces,
/// `carp_sync` on the sync interface, or both (the two generic reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Carp,
    Sync,
    Both,
}

impl Program {
    /// Whether a reason of this program can be counted by `p` (`Carp` or `Sync`).
    pub const fn counts_in(self, p: Program) -> bool {
        matches!(
            (self, p),
            (Program::Both, _) | (Program::Carp, Program::Carp) | (Program::Sync, Program::Sync)
        )
    }
}

/// Declares [`Reason`] from one table, a row per reason:
/// `Variant = index, "label", verdict, program;`. The enum, [`Reason::ALL`],
/// [`Reason::COUNT`], [`Reason::label`], [`Reason::verdict`],
/// [`Reason::program`] and the per-program sets all come from the rows, so
/// they cannot drift apart.
macro_rules! reasons {
    ($(
        $(#[$doc:meta])*
        $name:ident = $index:literal, $label:literal, $verdict:ident, $program:ident;
    )*) => {
        /// Why the XDP program let a packet go the way it did. Every exit path counts
        /// exactly one reason in the per-CPU array `COUNTERS` (index = reason), and the
        /// same names are the `reason` label of `carp_xdp_packets_total`. Each reason
        /// has one verdict ([`Reason::verdict`]), which is what the program returns.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[$doc])* $name = $index, )*
        }

        impl Reason {
            /// Number of reasons; the size of the `COUNTERS` array.
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// Every reason, in index order.
            pub const ALL: [Reason; [$(Reason::$name),*].len()] = [$(Self::$name),*];

            /// Metric label value (`carp_xdp_packets_total{reason=...}`); part of the interface.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }

            /// What the program does with a packet counted under this reason.
            #[inline(always)]
            pub const fn verdict(self) -> Verdict {
                match self {
                    $(Self::$name => Verdict::$verdict,)*
                }
            }

            /// Which program can count this reason.
            pub const fn program(self) -> Program {
                match self {
                    $(Self::$name => Program::$program,)*
                }
            }
        }
    };
}

reasons! {
    /// Not ours at all (not ARP, not proto 112, not to a vMAC of a configured VHID, not to a VIP).
    PassUnrelated = 0, "pass_unrelated", Pass, Both;
    /// Frame too short for the headers its EtherType announces.
    DropMalformed = 1, "drop_malformed", Drop, Both;
    /// ARP request for a VIP answered from XDP as MASTER (XDP_TX).
    ArpReplied = 2, "arp_replied", Tx, Carp;
    /// ARP request for a VIP while BACKUP/INIT (or MASTER past its expiry).
    ArpDroppedNotMaster = 3, "arp_dropped_not_master", Drop, Carp;
    /// Other ARP (replies, gratuitous, not for a VIP): passed to the kernel.
    ArpPassed = 4, "arp_passed", Pass, Carp;
    /// Valid-looking CARP advertisement copied to the ring buffer and passed.
    CarpAdvert = 5, "carp_advert", Pass, Carp;
    /// Proto 112 (IPv4) or next header 112 (IPv6) with TTL / hop limit != 255:
    /// dropped (carp(4); FreeBSD's `carp6_input`).
    CarpBadTtl = 6, "carp_bad_ttl", Drop, Carp;
    /// Proto 112, CARP version 2 type 1, but shorter than 36 bytes or authlen != 7: dropped.
    CarpShort = 7, "carp_short", Drop, Carp;
    /// CARP header checksum wrong: dropped.
    CarpBadChecksum = 8, "carp_bad_checksum", Drop, Carp;
    /// CARP version 2 type 1 for a VHID not configured on this interface: dropped.
    CarpUnknownVhid = 9, "carp_unknown_vhid", Drop, Carp;
    /// Proto 112 that is not a CARP advertisement (VRRP shares the number): passed untouched.
    Proto112Other = 10, "proto112_other", Pass, Carp;
    /// Ring buffer full: the advert could not be copied; passed (counted so it shows).
    CarpRingFull = 11, "carp_ring_full", Pass, Carp;
    /// Frame to a configured vMAC as MASTER: destination rewritten to the interface MAC, passed.
    VmacRewritten = 12, "vmac_rewritten", Pass, Carp;
    /// Frame to a configured vMAC while not MASTER: dropped.
    VmacDroppedNotMaster = 13, "vmac_dropped_not_master", Drop, Carp;
    /// IPv4 or IPv6 packet to a VIP as MASTER: passed.
    VipPassed = 14, "vip_passed", Pass, Carp;
    /// IPv4 or IPv6 packet to a VIP while not MASTER: dropped.
    VipDroppedNotMaster = 15, "vip_dropped_not_master", Drop, Carp;
    /// IPv6 neighbour solicitation (hop limit 255, code 0) for a VIP answered as
    /// MASTER with a neighbour advertisement from the virtual MAC (XDP_TX).
    NdpReplied = 16, "ndp_replied", Tx, Carp;
    /// Neighbour solicitation for a VIP while BACKUP/INIT (or MASTER past its
    /// expiry): dropped, so that the kernel does not answer either.
    NdpDroppedNotMaster = 17, "ndp_dropped_not_master", Drop, Carp;
    /// Sync interface (`carp_sync`): a well-formed sync frame from a configured peer,
    /// passed to the raw socket of the sync engine (which authenticates it).
    SyncFrame = 18, "sync_frame", Pass, Sync;
    /// Sync frame (proto 240) with IP TTL != 255 (routed, not from the link): dropped.
    SyncBadTtl = 19, "sync_bad_ttl", Drop, Sync;
    /// Sync frame whose IPv4 source is not a configured peer: dropped.
    SyncBadSource = 20, "sync_bad_source", Drop, Sync;
    /// Sync frame whose version byte is not [`SYNC_VERSION`] (e.g. pfsync) or whose
    /// flags are not 0: dropped.
    SyncBadVersion = 21, "sync_bad_version", Drop, Sync;
    /// Sync frame shorter than [`SYNC_MIN_LEN`] or whose length field is not the IP
    /// payload length: dropped.
    SyncBadLength = 22, "sync_bad_length", Drop, Sync;
    /// Sync frame in an IPv4 fragment (MF set or offset != 0): dropped (frames are
    /// sized to fit the link MTU and never fragmented).
    SyncFragment = 23, "sync_fragment", Drop, Sync;
    /// CARP interface (`carp_xdp`): an IPv4 protocol-240 packet (a sync frame, or
    /// pfsync) arriving where sync is never accepted: dropped, so one forged from
    /// a LAN shows up here rather than nowhere.
    Proto240Dropped = 24, "proto240_dropped", Drop, Carp;
    /// CARP interface (`carp_xdp`): a VLAN-tagged frame (802.1Q `0x8100` or
    /// 802.1ad `0x88a8` in the outer EtherType), whatever it carries and
    /// wherever it goes: passed untouched. It belongs to the VLAN sub-interface
    /// (which has its own VHIDs and, if any are configured there, its own XDP
    /// instance), never to the parent's VHID of the same number.
    VlanPassed = 25, "vlan_passed", Pass, Carp;
    /// CARP interface: a CARP advertisement that passed every kernel check but
    /// exceeded its sender's token budget ([`ADVERT_BUDGET_RATE`] per second,
    /// burst [`ADVERT_BUDGET_BURST`], per VHID, source address and source MAC), or
    /// came from a new or busy sender while the VHID's shared budget was
    /// spent: dropped before the ring, so a flood cannot fill `ADVERTS` or keep
    /// the controller busy authenticating.
    CarpOverBudget = 26, "carp_over_budget", Drop, Carp;
}

impl Reason {
    /// The reasons `carp_sync` (the program on the sync interface) can count;
    /// the others stay 0 there. For exporting only the series that can move.
    pub const SYNC_PROGRAM: [Reason; Self::in_program(Program::Sync)] =
        Self::of_program(Program::Sync);

    /// The reasons `carp_xdp` (the program on CARP interfaces) can count: all
    /// but the `sync_*` ones.
    pub const CARP_PROGRAM: [Reason; Self::in_program(Program::Carp)] =
        Self::of_program(Program::Carp);

    /// How many reasons `p` can count.
    const fn in_program(p: Program) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].program().counts_in(p) {
                n += 1;
            }
            i += 1;
        }
        n
    }

    /// The reasons `p` can count, in index order (`N` is [`Self::in_program`]).
    const fn of_program<const N: usize>(p: Program) -> [Reason; N] {
        let mut out = [Reason::PassUnrelated; N];
        let (mut i, mut n) = (0, 0);
        while i < Self::ALL.len() {
            if Self::ALL[i].program().counts_in(p) {
                out[n] = Self::ALL[i];
                n += 1;
            }
            i += 1;
        }
        assert!(n == N);
        out
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
    /// Array of [`super::VIPS_SLOTS_LEN`] [`super::VipSlot`], the
    /// prefilter in front of `VIPS4`: slot [`super::vip_slot`]`(a)` counts
    /// the keys of `VIPS4` that fall in it and, when there is exactly one,
    /// holds it with its VHID. The program looks up `VIPS4` only when two or
    /// more VIPs share the destination's (or ARP target's) slot, so an
    /// inlined array load replaces the hash lookup for almost every address,
    /// VIPs included.
    ///
    /// Invariant, kept by the controller's `XdpInstance::add_vip` and
    /// `remove_vip` (the only writers of both maps): every key of `VIPS4`
    /// has a non-zero slot, and a slot with count 1 names the one key in it. Adding raises the count before inserting the VIP
    /// and removing lowers it after deleting it, so the program, which reads
    /// the two maps at different moments, never sees a VIP behind a zero
    /// slot; a count that is too high only costs a hash lookup. Counting
    /// (rather than a bit per slot) lets one of two VIPs that share a slot
    /// go without hiding the other.
    pub const VIPS4_SLOTS: &str = "VIPS4_SLOTS";
    /// Hash map: IPv6 VIP (its 16 wire-order bytes) → VHID (u32), behind
    /// `VIPS6_SLOTS` as `VIPS4` is behind `VIPS4_SLOTS`.
    pub const VIPS6: &str = "VIPS6";
    /// Array of [`super::VIPS_SLOTS_LEN`] [`super::Vip6Slot`], the
    /// prefilter in front of `VIPS6`: slot [`super::vip6_slot`]`(a)`, kept
    /// by `XdpInstance::add_vip6` and `remove_vip6` under the invariant and
    /// in the update order of `VIPS4_SLOTS` (the same code keeps both). A
    /// node without IPv6 VIPs has every slot at zero, so IPv6 traffic costs
    /// it one array load, as it does a node with IPv6 VIPs for all but the
    /// addresses in a slot two VIPs share.
    pub const VIPS6_SLOTS: &str = "VIPS6_SLOTS";
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
    /// Read-only global: how far `jiffies` may lag the monotonic clock (ns),
    /// set at load; the program reads the precise clock only within that
    /// distance of a MASTER deadline.
    pub const COARSE_SLACK_NS: &str = "COARSE_SLACK_NS";
    /// Read-only global: one jiffy in ns (the coarse clock's resolution), set
    /// at load; 0 turns the program's jiffies cache off.
    pub const TICK_NS: &str = "TICK_NS";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding fields, no pointers.
    unsafe impl aya::Pod for super::VhidEntry {}
    unsafe impl aya::Pod for super::VipSlot<u32> {}
    unsafe impl aya::Pod for super::Vip6Slot {}
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
    fn reason_verdicts() {
        // Only ARP/NDP answers go back out; every `*_dropped*`, `*_bad_*`
        // and the other refusals drop; the rest pass.
        for r in Reason::ALL {
            let want = match r {
                Reason::ArpReplied | Reason::NdpReplied => Verdict::Tx,
                Reason::DropMalformed
                | Reason::CarpBadTtl
                | Reason::CarpShort
                | Reason::CarpBadChecksum
                | Reason::CarpUnknownVhid
                | Reason::CarpOverBudget
                | Reason::SyncBadTtl
                | Reason::SyncBadSource
                | Reason::SyncBadVersion
                | Reason::SyncBadLength
                | Reason::SyncFragment => Verdict::Drop,
                _ if r.label().contains("dropped") => Verdict::Drop,
                _ => Verdict::Pass,
            };
            assert_eq!(r.verdict(), want, "{r:?}");
        }
        assert_eq!(Reason::COUNT, 27);
    }
    #[test]
    fn fold_ipv6_xors_the_words() {
        let a = [
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55,
        ];
        assert_eq!(
            fold_ipv6(&a),
            [
                0xfe ^ 0x02 ^ 0xfe,
                0x80 ^ 0x11 ^ 0x33,
                0x22 ^ 0x44,
                0xff ^ 0x55
            ]
        );
        let mut b = a;
        b[15] ^= 1;
        assert_ne!(
            fold_ipv6(&a),
            fold_ipv6(&b),
            "interface identifiers stay apart"
        );
    }
    /// The IPv6 fold is the IPv4 one applied to the XOR of the words:
    /// consecutive addresses (a /114) fill every slot once, whatever the
    /// prefix, and the same interface identifier under different prefixes
    /// lands in different slots.
    #[test]
    fn vip6_slots_keep_neighbours_and_prefixes_apart() {
        let addr = |prefix: u64, iid: u64| {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&prefix.to_be_bytes());
            a[8..].copy_from_slice(&iid.to_be_bytes());
            a
        };
        for prefix in [0x2001_0db8_0000_0000, 0xfd00_1234_5678_9abc] {
            let mut seen = [false; VIPS_SLOTS_LEN as usize];
            for i in 0..u64::from(VIPS_SLOTS_LEN) {
                let slot = vip6_slot(&addr(prefix, 0xc000 + i));
                assert!(slot < VIPS_SLOTS_LEN);
                assert!(!seen[slot as usize], "{prefix:x}::{i:x} shares a slot");
                seen[slot as usize] = true;
            }
        }
        let gateways = [
            addr(0x2001_0db8_0001_0000, 1),
            addr(0x2001_0db8_0002_0000, 1),
            addr(0x2001_0db8_0000_0001, 1),
            addr(0xfd00_0000_0000_0000, 1),
            addr(0xfe80_0000_0000_0000, 1),
        ];
        for (i, a) in gateways.iter().enumerate() {
            for b in &gateways[i + 1..] {
                assert_ne!(vip6_slot(a), vip6_slot(b), "{a:x?} {b:x?}");
            }
        }
        // The fold is exactly `vip_slot` of the XOR of the four words.
        let a = addr(0x2001_0db8_0066_0000, 0x0211_22ff_fe33_4455);
        let words: [u32; 4] = core::array::from_fn(|i| {
            u32::from_be_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
        });
        let x = words[0] ^ words[1] ^ words[2] ^ words[3];
        assert_eq!(vip6_slot(&a), (x ^ (x >> 14) ^ (x >> 28)) & 0x3fff);
    }
    #[test]
    fn vip_slot_lookup_answers_or_defers() {
        let slot = |count, addr| Vip6Slot {
            count,
            addr,
            vhid: 7,
            _pad: 0,
        };
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert_eq!(slot(0, [0; 16]).lookup(&a), Some(None));
        assert_eq!(slot(1, a).lookup(&a), Some(Some(7)));
        assert_eq!(slot(1, a).lookup(&b), Some(None));
        assert_eq!(slot(2, a).lookup(&a), None);
    }
    #[test]
    fn virtual_mac_layout() {
        assert_eq!(virtual_mac(1), [0, 0, 0x5e, 0, 1, 1]);
        assert_eq!(virtual_mac(255), [0, 0, 0x5e, 0, 1, 255]);
        assert_eq!(CARP_GROUP_V4.octets(), [224, 0, 0, 18]);
    }
    #[test]
    fn sync_constants() {
        assert_eq!(SYNC_MIN_LEN, 56);
        assert_eq!(IPPROTO_SYNC, 240);
    }
    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<VhidEntry>(), 16);
        assert_eq!(core::mem::size_of::<VipSlot>(), 16);
        assert_eq!(core::mem::size_of::<Vip6Slot>(), 28);
        assert_eq!(
            core::mem::size_of::<AdvertRecord>(),
            8 + 1 + 1 + 6 + 16 + 16 + 36 + 4
        );
    }
}
