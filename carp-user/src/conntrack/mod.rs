//! Linux connection-tracking entries as this project replicates them, and the
//! ctnetlink shell that dumps, watches, installs and deletes them
//! ([`netlink`]).
//!
//! [`CtEntry`] is the one description of a conntrack entry shared by the
//! ctnetlink codec (kernel side) and the sync records (wire side,
//! `wire::sync`), so what is read from one kernel is exactly what is written
//! into the other.
//!
//! NAT bindings are not a separate field: Linux expresses them as a reply
//! tuple that is not the inverse of the original tuple, flagged by the
//! `IPS_SRC_NAT` / `IPS_DST_NAT` status bits. The installer turns them back
//! into `CTA_NAT_SRC` / `CTA_NAT_DST` ranges (as conntrackd does).
use std::net::IpAddr;

pub mod netlink;

/// `IPS_*` status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;
}

/// The layer-4 part of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP: source and destination port.
    Ports { src: u16, dst: u16 },
    /// ICMP / ICMPv6: echo id, type and code (`CTA_PROTO_ICMP_*`).
    Icmp { id: u16, kind: u8, code: u8 },
    /// Any other protocol: conntrack keys it on addresses only. (GRE: the
    /// kernel reports its keys as ports, so GRE entries are `Ports`.)
    None,
}

/// One direction of a connection (`CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`).
/// Both addresses are of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (`CTA_PROTO_NUM`).
    pub proto: u8,
    pub l4: L4,
}

impl Tuple {
    /// The tuple of the other direction, without NAT.
    pub fn inverse(&self) -> Tuple {
        let l4 = match self.l4 {
            L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
            // Echo request 8 <-> reply 0 (v4), 128 <-> 129 (v6), as
            // nf_conntrack_proto_icmp's invmap.
            L4::Icmp { id, kind, code } => L4::Icmp {
                id,
                kind: match (self.src.is_ipv4(), kind) {
                    (true, 8) => 0,
                    (true, 0) => 8,
                    (true, 13) => 14,
                    (true, 14) => 13,
                    (true, 15) => 16,
                    (true, 16) => 15,
                    (true, 17) => 18,
                    (true, 18) => 17,
                    (false, 128) => 129,
                    (false, 129) => 128,
                    (_, k) => k,
                },
                code,
            },
            L4::None => L4::None,
        };
        Tuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            l4,
        }
    }
}

/// TCP state (`CTA_PROTOINFO_TCP`): the state machine position, window
/// scales and the per-direction `IP_CT_TCP_FLAG_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpInfo {
    /// `TCP_CONNTRACK_*` (1 SYN_SENT ... 3 ESTABLISHED ... 7 TIME_WAIT).
    pub state: u8,
    pub wscale_orig: u8,
    pub wscale_reply: u8,
    pub flags_orig: u8,
    pub flags_reply: u8,
}

/// `IP_CT_TCP_FLAG_BE_LIBERAL`: window tracking accepts any in-window-or-not
/// segment. Set on installed TCP entries so the first packets after a
/// failover are not judged by windows the backup never saw.
pub const TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// `IP_CT_TCP_FLAG_WINDOW_SCALE`.
pub const TCP_FLAG_WINDOW_SCALE: u8 = 0x01;
/// `IP_CT_TCP_FLAG_SACK_PERM`.
pub const TCP_FLAG_SACK_PERM: u8 = 0x02;

/// Longest helper name the kernel accepts (`NF_CT_HELPER_NAME_LEN` - 1).
pub const HELPER_NAME_MAX: usize = 15;

/// One conntrack entry, as dumped from one kernel and installed into another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    pub orig: Tuple,
    /// Differs from `orig.inverse()` when NAT applies (see module docs).
    pub reply: Tuple,
    /// Conntrack zone (`CTA_ZONE`, 0 = default).
    pub zone: u16,
    pub mark: u32,
    /// `IPS_*` bits ([`status`]).
    pub status: u32,
    /// Seconds until the entry expires (`CTA_TIMEOUT`).
    pub timeout: u32,
    pub tcp: Option<TcpInfo>,
    /// `CTA_LABELS` (128 bits), when any label is set.
    pub labels: Option<[u8; 16]>,
    /// `CTA_HELP` / `CTA_HELP_NAME` (e.g. `ftp`), at most [`HELPER_NAME_MAX`] bytes.
    pub helper: Option<String>,
}

/// What identifies an entry across nodes: its original tuple and zone
/// (the kernel's lookup key for a create/update/delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub orig: Tuple,
    pub zone: u16,
}

impl CtEntry {
    /// An entry with no NAT (the reply is `orig.inverse()`), zone 0, no mark,
    /// status bits, TCP state, labels or helper: the base the other fields
    /// are set on (`CtEntry { mark: 7, ..CtEntry::new(orig, 600) }`).
    pub fn new(orig: Tuple, timeout: u32) -> CtEntry {
        CtEntry {
            orig,
            reply: orig.inverse(),
            zone: 0,
            mark: 0,
            status: 0,
            timeout,
            tcp: None,
            labels: None,
            helper: None,
        }
    }

    pub fn key(&self) -> CtKey {
        CtKey {
            orig: self.orig,
            zone: self.zone,
        }
    }
}
