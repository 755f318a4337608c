//! ctnetlink: dump, watch, install and delete conntrack entries.
//!
//! Two layers:
//!
//! * a pure codec ([`parse_entry`], [`parse_message`], [`create_request`],
//!   [`update_request`], [`delete_request`], [`dump_request`]) that turns
//!   kernel messages into [`CtEntry`] and back, with no I/O;
//! * blocking sockets over `NETLINK_NETFILTER`: [`Conntrack`] (dump,
//!   create-or-update in batches, delete) and [`CtEvents`] (the
//!   `NFNLGRP_CONNTRACK_*` multicast groups), usable from a plain OS thread.
//!
//! Why the codec is hand-written instead of built on
//! `netlink-packet-netfilter` 0.4: that crate is compiled against
//! `netlink-packet-core` 0.9 while this workspace pins 0.7, so its `Emitable` /
//! `Parseable` traits cannot even be named here without a second direct
//! dependency; its parser builds a `Vec` of enum nodes per nest (about twenty
//! allocations per entry, too slow for a 1,000,000-entry dump); and it lacks
//! most of what we need (zone, NAT, labels, helper, ICMP tuples). The parser
//! below walks the attributes in place, allocates nothing but the helper name,
//! and returns a typed error on any malformed input instead of panicking.
//! Attribute numbers are from include/uapi/linux/netfilter/nfnetlink_conntrack.h.
//!
//! Install semantics follow conntrackd (conntrack-tools `src/netlink.c`,
//! `nl_create_conntrack`): the reply tuple sent is `orig.inverse()` and NAT is
//! re-applied by the kernel from `CTA_NAT_SRC` / `CTA_NAT_DST`, because
//! `ctnetlink_create_conntrack` runs `nf_nat_setup_info`, which rewrites the
//! reply tuple itself and sets up the NAT extension that the packet path needs.
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::{status, CtEntry, CtKey, TcpInfo, Tuple, L4};

// ---------------------------------------------------------------------------
// Constants (uapi: netlink.h, nfnetlink.h, nfnetlink_conntrack.h)
// ---------------------------------------------------------------------------

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// The type bits of `nla_type` (the top two are `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER`, which the kernel may or may not set).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// nfnetlink multicast groups (`enum nfnetlink_groups`).
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

// enum ctattr_type
pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_PROTOINFO: u16 = 4;
pub const CTA_HELP: u16 = 5;
pub const CTA_NAT_SRC: u16 = 6;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_MARK: u16 = 8;
pub const CTA_ID: u16 = 12;
pub const CTA_NAT_DST: u16 = 13;
pub const CTA_ZONE: u16 = 18;
pub const CTA_LABELS: u16 = 22;
pub const CTA_LABELS_MASK: u16 = 23;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
// enum ctattr_help
const CTA_HELP_NAME: u16 = 1;
// enum ctattr_nat / ctattr_protonat
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// `IP_CT_TCP_FLAG_CLOSE_INIT`: set by conntrackd on entries in TIME_WAIT or
/// later so a late FIN does not reopen the state machine.
const TCP_FLAG_CLOSE_INIT: u8 = 0x04;
/// `TCP_CONNTRACK_TIME_WAIT`.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;

/// Status bits never sent. The kernel keeps these for itself: on kernel
/// 6.18 both the create and the update path check the sent status against
/// the new entry's with `nf_ct_change_status_common` (EBUSY when
/// `EXPECTED`/`CONFIRMED`/`DYING` differ, or when `SEEN_REPLY`/`ASSURED`
/// would be cleared) and then silently ignore `IPS_UNCHANGEABLE_MASK`
/// (NAT, NAT_DONE, SEQ_ADJUST, TEMPLATE, UNTRACKED, OFFLOAD...). So
/// `EXPECTED` and `DYING` must be clear and `CONFIRMED` set (verified:
/// status 0 on create is EBUSY, `CONFIRMED|...` is accepted; the conntrack
/// CLI sends `CONFIRMED` too). The NAT bits themselves (`SRC_NAT`/`DST_NAT`)
/// are kept: ignored by the kernel, but they say why `CTA_NAT_*` is there.
const STATUS_NOT_SENT: u32 = status::EXPECTED
    | status::SEQ_ADJUST
    | status::SRC_NAT_DONE
    | status::DST_NAT_DONE
    | status::DYING
    | status::TEMPLATE
    | status::UNTRACKED
    | status::OFFLOAD
    | status::HW_OFFLOAD;

/// Longest label bitmap the kernel has (`NF_CT_LABELS_MAX_SIZE`, 128 bits).
const LABELS_LEN: usize = 16;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything that can go wrong in this module. Codec errors name the
/// attribute so a bad kernel message (or a fuzz input) can be diagnosed.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("malformed {attr}: {why}")]
    Malformed {
        attr: &'static str,
        why: &'static str,
    },
    #[error("missing attribute {0}")]
    Missing(&'static str),
    #[error("not a conntrack entry message (nlmsg_type {0:#06x})")]
    NotConntrack(u16),
    #[error("tuple addresses of different families in {0}")]
    FamilyMismatch(&'static str),
    #[error("entry cannot be encoded: {0}")]
    Unencodable(&'static str),
    #[error("kernel refused {op}: {errno}")]
    Kernel { op: &'static str, errno: Errno },
    #[error("netlink socket {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel dropped messages for this socket (ENOBUFS) while a request
    /// was in flight, so replies may be missing; the caller must resync.
    #[error("netlink receive buffer overrun during {0}")]
    Overrun(&'static str),
    #[error("unexpected netlink reply: {0}")]
    Protocol(&'static str),
    /// No reply within [`REPLY_TIMEOUT`] (the kernel always answers a
    /// well-formed request, so this means a lost reply).
    #[error("no netlink reply within the timeout during {0}")]
    Timeout(&'static str),
}

fn io_err(op: &'static str) -> CtError {
    CtError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

// ---------------------------------------------------------------------------
// Attribute walking (in place, no allocation)
// ---------------------------------------------------------------------------

/// Iterator over the attributes in `buf`; yields `(type, value)` with the
/// flag bits stripped. A malformed header ends the walk with an error.
struct Attrs<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Attrs<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Attrs { buf, what }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), CtError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Trailing bytes shorter than a header are padding (the kernel never
        // emits them, but nla_parse tolerates them too).
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            let have = self.buf.len();
            self.buf = &[];
            return Some(Err(CtError::Truncated {
                what: self.what,
                need: len.max(NLA_HDRLEN),
                have,
            }));
        }
        let value = &self.buf[NLA_HDRLEN..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(Ok((kind, value)))
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn get_u8(v: &[u8], attr: &'static str) -> Result<u8, CtError> {
    v.first().copied().ok_or(CtError::Truncated {
        what: attr,
        need: 1,
        have: 0,
    })
}

fn get_be16(v: &[u8], attr: &'static str) -> Result<u16, CtError> {
    match v {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(CtError::Truncated {
            what: attr,
            need: 2,
            have: v.len(),
        }),
    }
}

fn get_be32(v: &[u8], attr: &'static str) -> Result<u32, CtError> {
    match v {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(CtError::Truncated {
            what: attr,
            need: 4,
            have: v.len(),
        }),
    }
}

fn get_v4(v: &[u8], attr: &'static str) -> Result<IpAddr, CtError> {
    let o: [u8; 4] = v
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(CtError::Truncated {
            what: attr,
            need: 4,
            have: v.len(),
        })?;
    Ok(IpAddr::V4(Ipv4Addr::from(o)))
}

fn get_v6(v: &[u8], attr: &'static str) -> Result<IpAddr, CtError> {
    let o: [u8; 16] = v
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or(CtError::Truncated {
            what: attr,
            need: 16,
            have: v.len(),
        })?;
    Ok(IpAddr::V6(Ipv6Addr::from(o)))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// What kind of conntrack message a netlink message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtMsgKind {
    /// `IPCTNL_MSG_CT_NEW` (dump reply, NEW/UPDATE event, create/update request).
    New,
    /// `IPCTNL_MSG_CT_DELETE` (DESTROY event, delete request).
    Delete,
    /// `IPCTNL_MSG_CT_GET` (requests only).
    Get,
}

/// A parsed conntrack netlink message: header fields plus the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtMessage {
    pub kind: CtMsgKind,
    /// `nlmsg_flags` (`NLM_F_CREATE` distinguishes NEW from UPDATE events).
    pub flags: u16,
    pub seq: u32,
    /// `nlmsg_pid`: for events, the port id of the socket whose request
    /// caused it (0 for the packet path).
    pub portid: u32,
    /// nfgenmsg family (`AF_INET`, `AF_INET6`).
    pub family: u8,
    pub entry: CtEntry,
    /// Bit `n` set when top-level attribute `CTA_*` number `n` (< 64) was
    /// present. Events omit some attributes (e.g. DESTROY has no
    /// `CTA_TIMEOUT`, UPDATE carries `CTA_PROTOINFO` only when it changed), and
    /// the corresponding [`CtEntry`] fields are then defaults.
    pub present: u64,
}

impl CtMessage {
    /// Whether top-level attribute `cta` was in the message.
    pub fn has(&self, cta: u16) -> bool {
        cta < 64 && self.present & (1u64 << cta) != 0
    }
}

/// Parse one complete netlink message (starting at `nlmsghdr`) carrying a
/// conntrack entry: a dump reply, an event, or one of our own requests.
/// Trailing bytes after `nlmsg_len` are ignored.
pub fn parse_message(msg: &[u8]) -> Result<CtMessage, CtError> {
    let hdr = NlHdr::parse(msg)?;
    if hdr.len < NLMSG_HDRLEN || hdr.len > msg.len() {
        return Err(CtError::Truncated {
            what: "nlmsghdr",
            need: hdr.len.max(NLMSG_HDRLEN),
            have: msg.len(),
        });
    }
    if hdr.kind >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Err(CtError::NotConntrack(hdr.kind));
    }
    let kind = match hdr.kind & 0xff {
        IPCTNL_MSG_CT_NEW => CtMsgKind::New,
        IPCTNL_MSG_CT_DELETE => CtMsgKind::Delete,
        IPCTNL_MSG_CT_GET => CtMsgKind::Get,
        _ => return Err(CtError::NotConntrack(hdr.kind)),
    };
    let payload = &msg[NLMSG_HDRLEN..hdr.len];
    let family = payload.first().copied().unwrap_or(0);
    let (entry, present) = parse_payload(payload)?;
    Ok(CtMessage {
        kind,
        flags: hdr.flags,
        seq: hdr.seq,
        portid: hdr.pid,
        family,
        entry,
        present,
    })
}

/// Parse the payload of a conntrack message (what follows `nlmsghdr`: the
/// 4-byte nfgenmsg, then the `CTA_*` attributes) into an entry.
///
/// Attributes this project does not replicate (counters, `CTA_ID`, `CTA_USE`,
/// timestamps, `CTA_SECCTX`, ...) are skipped. When the payload is one of our
/// own create requests, its `CTA_NAT_SRC`/`CTA_NAT_DST` ranges are applied to
/// the reply tuple as the kernel would (single-address, single-port ranges),
/// so `parse_entry(create_request(e))` gives back `e`'s reply tuple. The kernel
/// never sends `CTA_NAT_*` in dumps or events.
pub fn parse_entry(payload: &[u8]) -> Result<CtEntry, CtError> {
    parse_payload(payload).map(|(e, _)| e)
}

fn parse_payload(payload: &[u8]) -> Result<(CtEntry, u64), CtError> {
    let attrs = payload.get(NFGENMSG_LEN..).ok_or(CtError::Truncated {
        what: "nfgenmsg",
        need: NFGENMSG_LEN,
        have: payload.len(),
    })?;
    let mut orig = None;
    let mut reply = None;
    let mut entry_zone = 0u16;
    let mut mark = 0u32;
    let mut st = 0u32;
    let mut timeout = 0u32;
    let mut tcp = None;
    let mut labels = None;
    let mut helper = None;
    let mut nat_src = None;
    let mut nat_dst = None;
    let mut present = 0u64;
    for a in Attrs::new(attrs, "conntrack attribute") {
        let (kind, v) = a?;
        if kind < 64 {
            present |= 1 << kind;
        }
        match kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(v, "CTA_TUPLE_ORIG")?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(v, "CTA_TUPLE_REPLY")?),
            CTA_STATUS => st = get_be32(v, "CTA_STATUS")?,
            CTA_TIMEOUT => timeout = get_be32(v, "CTA_TIMEOUT")?,
            CTA_MARK => mark = get_be32(v, "CTA_MARK")?,
            CTA_ZONE => entry_zone = get_be16(v, "CTA_ZONE")?,
            CTA_PROTOINFO => tcp = parse_protoinfo(v)?.or(tcp),
            CTA_LABELS => labels = parse_labels(v)?,
            CTA_HELP => helper = parse_help(v)?,
            CTA_NAT_SRC => nat_src = Some(parse_nat(v, "CTA_NAT_SRC")?),
            CTA_NAT_DST => nat_dst = Some(parse_nat(v, "CTA_NAT_DST")?),
            _ => {}
        }
    }
    let orig = orig.ok_or(CtError::Missing("CTA_TUPLE_ORIG"))?;
    let mut reply = reply.ok_or(CtError::Missing("CTA_TUPLE_REPLY"))?;
    if orig.src.is_ipv4() != reply.src.is_ipv4() {
        return Err(CtError::FamilyMismatch("CTA_TUPLE_ORIG/CTA_TUPLE_REPLY"));
    }
    // Only requests carry NAT ranges; see parse_entry.
    if let Some(n) = nat_src {
        n.apply(&mut reply, true)?;
    }
    if let Some(n) = nat_dst {
        n.apply(&mut reply, false)?;
    }
    Ok((
        CtEntry {
            orig,
            reply,
            zone: entry_zone,
            mark,
            status: st,
            timeout,
            tcp,
            labels,
            helper,
        },
        present,
    ))
}

fn parse_tuple(v: &[u8], what: &'static str) -> Result<Tuple, CtError> {
    let mut src = None;
    let mut dst = None;
    let mut proto = None;
    let mut sport = None;
    let mut dport = None;
    let mut icmp_id = None;
    let mut icmp_type = None;
    let mut icmp_code = None;
    for a in Attrs::new(v, what) {
        let (kind, v) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in Attrs::new(v, "CTA_TUPLE_IP") {
                    let (kind, v) = a?;
                    match kind {
                        CTA_IP_V4_SRC => src = Some(get_v4(v, "CTA_IP_V4_SRC")?),
                        CTA_IP_V4_DST => dst = Some(get_v4(v, "CTA_IP_V4_DST")?),
                        CTA_IP_V6_SRC => src = Some(get_v6(v, "CTA_IP_V6_SRC")?),
                        CTA_IP_V6_DST => dst = Some(get_v6(v, "CTA_IP_V6_DST")?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attrs::new(v, "CTA_TUPLE_PROTO") {
                    let (kind, v) = a?;
                    match kind {
                        CTA_PROTO_NUM => proto = Some(get_u8(v, "CTA_PROTO_NUM")?),
                        CTA_PROTO_SRC_PORT => sport = Some(get_be16(v, "CTA_PROTO_SRC_PORT")?),
                        CTA_PROTO_DST_PORT => dport = Some(get_be16(v, "CTA_PROTO_DST_PORT")?),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            icmp_id = Some(get_be16(v, "CTA_PROTO_ICMP_ID")?)
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = Some(get_u8(v, "CTA_PROTO_ICMP_TYPE")?)
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = Some(get_u8(v, "CTA_PROTO_ICMP_CODE")?)
                        }
                        _ => {}
                    }
                }
            }
            // CTA_TUPLE_ZONE (directional zones) is not replicated.
            _ => {}
        }
    }
    let src = src.ok_or(CtError::Missing("CTA_IP_*_SRC"))?;
    let dst = dst.ok_or(CtError::Missing("CTA_IP_*_DST"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(CtError::FamilyMismatch(what));
    }
    let proto = proto.ok_or(CtError::Missing("CTA_PROTO_NUM"))?;
    // The kernel's tuple attributes say which L4 key applies: ports for
    // TCP/UDP/UDP-Lite/SCTP/DCCP (and GRE, whose keys travel in the port
    // attributes), id/type/code for ICMP and ICMPv6, nothing otherwise.
    let l4 = match (sport, dport) {
        (Some(src), Some(dst)) => L4::Ports { src, dst },
        (None, None) => match (proto, icmp_id, icmp_type, icmp_code) {
            (IPPROTO_ICMP | IPPROTO_ICMPV6, Some(id), Some(kind), Some(code)) => {
                L4::Icmp { id, kind, code }
            }
            (IPPROTO_ICMP | IPPROTO_ICMPV6, ..) => {
                return Err(CtError::Missing("CTA_PROTO_ICMP_ID/TYPE/CODE"))
            }
            _ => L4::None,
        },
        _ => {
            return Err(CtError::Malformed {
                attr: "CTA_TUPLE_PROTO",
                why: "only one of source and destination port",
            })
        }
    };
    Ok(Tuple {
        src,
        dst,
        proto,
        l4,
    })
}

/// `CTA_PROTOINFO`; only the TCP part is replicated (SCTP/DCCP state is left
/// to the kernel's own tracking on the new master).
fn parse_protoinfo(v: &[u8]) -> Result<Option<TcpInfo>, CtError> {
    let mut out = None;
    for a in Attrs::new(v, "CTA_PROTOINFO") {
        let (kind, v) = a?;
        if kind != CTA_PROTOINFO_TCP {
            continue;
        }
        let mut t = TcpInfo::default();
        for a in Attrs::new(v, "CTA_PROTOINFO_TCP") {
            let (kind, v) = a?;
            match kind {
                CTA_PROTOINFO_TCP_STATE => t.state = get_u8(v, "CTA_PROTOINFO_TCP_STATE")?,
                CTA_PROTOINFO_TCP_WSCALE_ORIGINAL => {
                    t.wscale_orig = get_u8(v, "CTA_PROTOINFO_TCP_WSCALE_ORIGINAL")?
                }
                CTA_PROTOINFO_TCP_WSCALE_REPLY => {
                    t.wscale_reply = get_u8(v, "CTA_PROTOINFO_TCP_WSCALE_REPLY")?
                }
                // struct nf_ct_tcp_flags { __u8 flags; __u8 mask; }
                CTA_PROTOINFO_TCP_FLAGS_ORIGINAL => {
                    t.flags_orig = get_u8(v, "CTA_PROTOINFO_TCP_FLAGS_ORIGINAL")?
                }
                CTA_PROTOINFO_TCP_FLAGS_REPLY => {
                    t.flags_reply = get_u8(v, "CTA_PROTOINFO_TCP_FLAGS_REPLY")?
                }
                _ => {}
            }
        }
        out = Some(t);
    }
    Ok(out)
}

/// `CTA_LABELS`: the kernel sends the whole bitmap (16 bytes) when any label
/// is set; an all-zero bitmap is reported as "no labels".
fn parse_labels(v: &[u8]) -> Result<Option<[u8; 16]>, CtError> {
    if v.len() > LABELS_LEN {
        return Err(CtError::Malformed {
            attr: "CTA_LABELS",
            why: "longer than 128 bits",
        });
    }
    let mut l = [0u8; LABELS_LEN];
    l[..v.len()].copy_from_slice(v);
    Ok(if l == [0; LABELS_LEN] { None } else { Some(l) })
}

fn parse_help(v: &[u8]) -> Result<Option<String>, CtError> {
    for a in Attrs::new(v, "CTA_HELP") {
        let (kind, v) = a?;
        if kind == CTA_HELP_NAME {
            // NLA_NUL_STRING: cut at the first NUL.
            let name = v.split(|b| *b == 0).next().unwrap_or(&[]);
            if name.len() > super::HELPER_NAME_MAX {
                return Err(CtError::Malformed {
                    attr: "CTA_HELP_NAME",
                    why: "longer than 15 bytes",
                });
            }
            let s = std::str::from_utf8(name).map_err(|_| CtError::Malformed {
                attr: "CTA_HELP_NAME",
                why: "not UTF-8",
            })?;
            return Ok(if s.is_empty() {
                None
            } else {
                Some(s.to_owned())
            });
        }
    }
    Ok(None)
}

/// A NAT range from a request (`CTA_NAT_SRC`/`CTA_NAT_DST`).
#[derive(Clone, Copy)]
struct NatRange {
    addr: Option<IpAddr>,
    port: Option<u16>,
}

impl NatRange {
    /// Apply a single-address/single-port range to the un-NATed reply tuple,
    /// the way nf_nat_setup_info would: SNAT rewrites where replies go (reply
    /// dst), DNAT where they come from (reply src).
    fn apply(self, reply: &mut Tuple, snat: bool) -> Result<(), CtError> {
        if let Some(a) = self.addr {
            if a.is_ipv4() != reply.src.is_ipv4() {
                return Err(CtError::FamilyMismatch("CTA_NAT_*"));
            }
            if snat {
                reply.dst = a;
            } else {
                reply.src = a;
            }
        }
        match (self.port, reply.l4) {
            (Some(p), L4::Ports { src, dst }) => {
                reply.l4 = if snat {
                    L4::Ports { src, dst: p }
                } else {
                    L4::Ports { src: p, dst }
                };
            }
            // SNAT of ICMP may remap the echo id (nf_nat_icmp_unique_tuple);
            // the "port" range then carries the id.
            (Some(p), L4::Icmp { kind, code, .. }) if snat => {
                reply.l4 = L4::Icmp { id: p, kind, code };
            }
            _ => {}
        }
        Ok(())
    }
}

fn parse_nat(v: &[u8], what: &'static str) -> Result<NatRange, CtError> {
    let mut r = NatRange {
        addr: None,
        port: None,
    };
    for a in Attrs::new(v, what) {
        let (kind, v) = a?;
        match kind {
            CTA_NAT_V4_MINIP => r.addr = Some(get_v4(v, "CTA_NAT_V4_MINIP")?),
            CTA_NAT_V6_MINIP => r.addr = Some(get_v6(v, "CTA_NAT_V6_MINIP")?),
            CTA_NAT_PROTO => {
                for a in Attrs::new(v, "CTA_NAT_PROTO") {
                    let (kind, v) = a?;
                    if kind == CTA_PROTONAT_PORT_MIN {
                        r.port = Some(get_be16(v, "CTA_PROTONAT_PORT_MIN")?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Building requests
// ---------------------------------------------------------------------------

/// Address family for dumps (`nfgenmsg.nfgen_family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtFamily {
    /// `AF_UNSPEC`: ctnetlink dumps every family.
    All,
    V4,
    V6,
}

impl CtFamily {
    fn af(self) -> u8 {
        match self {
            CtFamily::All => libc::AF_UNSPEC as u8,
            CtFamily::V4 => libc::AF_INET as u8,
            CtFamily::V6 => libc::AF_INET6 as u8,
        }
    }
}

fn af_of(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// Appends one netlink message to a buffer; nests are closed by patching
/// their length, as libmnl does.
struct MsgBuf<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> MsgBuf<'a> {
    fn begin(buf: &'a mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it
                                                    // nfgenmsg: family, NFNETLINK_V0, res_id 0 (big endian)
        buf.extend_from_slice(&[family, 0, 0, 0]);
        MsgBuf { buf, start }
    }

    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; 3][..n]);
    }

    fn put_u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }
    fn put_be16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }
    fn put_be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }
    fn put_ip(&mut self, v4: u16, v6: u16, a: &IpAddr) {
        match a {
            IpAddr::V4(a) => self.put(v4, &a.octets()),
            IpAddr::V6(a) => self.put(v6, &a.octets()),
        }
    }

    fn nest_start(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn tuple(&mut self, kind: u16, t: &Tuple) {
        let n = self.nest_start(kind);
        let ip = self.nest_start(CTA_TUPLE_IP);
        self.put_ip(CTA_IP_V4_SRC, CTA_IP_V6_SRC, &t.src);
        self.put_ip(CTA_IP_V4_DST, CTA_IP_V6_DST, &t.dst);
        self.nest_end(ip);
        let p = self.nest_start(CTA_TUPLE_PROTO);
        self.put_u8(CTA_PROTO_NUM, t.proto);
        match t.l4 {
            L4::Ports { src, dst } => {
                self.put_be16(CTA_PROTO_SRC_PORT, src);
                self.put_be16(CTA_PROTO_DST_PORT, dst);
            }
            L4::Icmp { id, kind, code } => {
                if t.src.is_ipv4() {
                    self.put_be16(CTA_PROTO_ICMP_ID, id);
                    self.put_u8(CTA_PROTO_ICMP_TYPE, kind);
                    self.put_u8(CTA_PROTO_ICMP_CODE, code);
                } else {
                    self.put_be16(CTA_PROTO_ICMPV6_ID, id);
                    self.put_u8(CTA_PROTO_ICMPV6_TYPE, kind);
                    self.put_u8(CTA_PROTO_ICMPV6_CODE, code);
                }
            }
            L4::None => {}
        }
        self.nest_end(p);
        self.nest_end(n);
    }

    fn nat(&mut self, kind: u16, addr: &IpAddr, port: Option<u16>) {
        let n = self.nest_start(kind);
        match addr {
            IpAddr::V4(a) => {
                self.put(CTA_NAT_V4_MINIP, &a.octets());
                self.put(CTA_NAT_V4_MAXIP, &a.octets());
            }
            IpAddr::V6(a) => {
                self.put(CTA_NAT_V6_MINIP, &a.octets());
                self.put(CTA_NAT_V6_MAXIP, &a.octets());
            }
        }
        if let Some(p) = port {
            let pn = self.nest_start(CTA_NAT_PROTO);
            self.put_be16(CTA_PROTONAT_PORT_MIN, p);
            self.put_be16(CTA_PROTONAT_PORT_MAX, p);
            self.nest_end(pn);
        }
        self.nest_end(n);
    }

    /// `CTA_PROTOINFO_TCP` as conntrackd installs it: state and window
    /// scales from the peer, and in both directions the flags
    /// `BE_LIBERAL|SACK_PERM` (plus `CLOSE_INIT` from TIME_WAIT on) with a
    /// mask covering exactly those, so window tracking on the new master
    /// accepts the first packets after a failover whatever windows the old
    /// master saw. `WINDOW_SCALE` is carried from the peer when it had it:
    /// the kernel applies the wscale attributes only if both directions have
    /// that flag (nlattr_to_tcp).
    fn tcp(&mut self, t: &TcpInfo) {
        let mut base = super::TCP_FLAG_BE_LIBERAL | super::TCP_FLAG_SACK_PERM;
        if t.state >= TCP_CONNTRACK_TIME_WAIT {
            base |= TCP_FLAG_CLOSE_INIT;
        }
        let ws = super::TCP_FLAG_WINDOW_SCALE;
        let fo = base | (t.flags_orig & ws);
        let fr = base | (t.flags_reply & ws);
        let mask = base | ws;
        let pi = self.nest_start(CTA_PROTOINFO);
        let tcp = self.nest_start(CTA_PROTOINFO_TCP);
        self.put_u8(CTA_PROTOINFO_TCP_STATE, t.state);
        self.put_u8(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, t.wscale_orig);
        self.put_u8(CTA_PROTOINFO_TCP_WSCALE_REPLY, t.wscale_reply);
        self.put(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[fo, mask]);
        self.put(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[fr, mask]);
        self.nest_end(tcp);
        self.nest_end(pi);
    }

    fn labels(&mut self, l: &[u8; 16]) {
        self.put(CTA_LABELS, l);
        // A full mask: the installed label set replaces whatever was there.
        self.put(CTA_LABELS_MASK, &[0xff; LABELS_LEN]);
    }

    fn finish(self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// Checks that make a request the kernel would reject for sure (or that we
/// could not even encode) fail early with a clear error.
fn check_entry(e: &CtEntry) -> Result<(), CtError> {
    let v4 = e.orig.src.is_ipv4();
    if e.orig.dst.is_ipv4() != v4 || e.reply.src.is_ipv4() != v4 || e.reply.dst.is_ipv4() != v4 {
        return Err(CtError::FamilyMismatch("entry tuples"));
    }
    if let Some(h) = &e.helper {
        if h.len() > super::HELPER_NAME_MAX || h.as_bytes().contains(&0) {
            return Err(CtError::Unencodable(
                "helper name longer than 15 bytes or with NUL",
            ));
        }
    }
    Ok(())
}

/// The status sent on create/update: the peer's bits minus those the
/// kernel refuses or ignores, plus `CONFIRMED` (see `STATUS_NOT_SENT`).
pub fn status_to_send(st: u32) -> u32 {
    (st & !STATUS_NOT_SENT) | status::CONFIRMED
}

/// `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE|NLM_F_EXCL|NLM_F_ACK`: install
/// `e` as a new entry (EEXIST if its original tuple is already tracked).
/// See the module docs for how NAT is expressed.
pub fn create_request(e: &CtEntry, seq: u32) -> Result<Vec<u8>, CtError> {
    let mut buf = Vec::with_capacity(256);
    append_create(&mut buf, e, seq)?;
    Ok(buf)
}

/// Appends a create request to `buf` (for batching many in one send).
pub fn append_create(buf: &mut Vec<u8>, e: &CtEntry, seq: u32) -> Result<(), CtError> {
    check_entry(e)?;
    let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
    let mut m = MsgBuf::begin(buf, IPCTNL_MSG_CT_NEW, flags, seq, af_of(&e.orig.src));
    m.tuple(CTA_TUPLE_ORIG, &e.orig);
    // The un-NATed reply; the kernel derives the NATed one from CTA_NAT_*.
    m.tuple(CTA_TUPLE_REPLY, &e.orig.inverse());
    if e.zone != 0 {
        m.put_be16(CTA_ZONE, e.zone);
    }
    m.put_be32(CTA_STATUS, status_to_send(e.status));
    m.put_be32(CTA_TIMEOUT, e.timeout);
    m.put_be32(CTA_MARK, e.mark);
    if let Some(t) = &e.tcp {
        m.tcp(t);
    }
    let port_proto = matches!(e.reply.l4, L4::Ports { .. });
    if e.status & status::SRC_NAT != 0 {
        // SNAT changed where replies are sent to: reply.dst (and its port).
        let port = match (e.reply.l4, e.orig.l4) {
            (L4::Ports { dst, .. }, _) if port_proto => Some(dst),
            // An ICMP echo id the old master remapped (the id range is the
            // "port" range of CTA_NAT_PROTO); unchanged ids are left to the
            // kernel, as conntrackd does.
            (L4::Icmp { id, .. }, L4::Icmp { id: orig_id, .. }) if id != orig_id => Some(id),
            _ => None,
        };
        m.nat(CTA_NAT_SRC, &e.reply.dst, port);
    }
    if e.status & status::DST_NAT != 0 {
        // DNAT changed where replies come from: reply.src (and its port).
        let port = match e.reply.l4 {
            L4::Ports { src, .. } if port_proto => Some(src),
            _ => None,
        };
        m.nat(CTA_NAT_DST, &e.reply.src, port);
    }
    if let Some(l) = &e.labels {
        m.labels(l);
    }
    if let Some(h) = &e.helper {
        let n = m.nest_start(CTA_HELP);
        let mut name = h.as_bytes().to_vec();
        name.push(0);
        m.put(CTA_HELP_NAME, &name);
        m.nest_end(n);
    }
    m.finish();
    Ok(())
}

/// Which optional parts [`append_update`] sends. The kernel refuses some
/// updates that a create would have accepted, and [`Conntrack::install`]
/// retries those without the offending part:
///
/// * `status`: the update path (`ctnetlink_change_status`) returns EBUSY when
///   the `EXPECTED`/`CONFIRMED`/`DYING` bits differ from the live entry (an
///   entry the local packet path created as EXPECTED) or when
///   `SEEN_REPLY`/`ASSURED` would be cleared (the peer is behind);
/// * `labels`: without the label extension on the entry (no rule in the
///   namespace uses `ct label`), `CTA_LABELS` is ENOSPC on update, while a
///   create silently drops the labels (verified on 6.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateParts {
    pub status: bool,
    pub labels: bool,
}

impl UpdateParts {
    pub const ALL: UpdateParts = UpdateParts {
        status: true,
        labels: true,
    };
}

/// `IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE` (ACK requested): refresh an
/// existing entry's timeout, status, mark, TCP protoinfo and labels. NAT and
/// helper cannot be changed on a live entry (the kernel answers EOPNOTSUPP /
/// EBUSY), so they are not sent.
pub fn update_request(e: &CtEntry, seq: u32) -> Result<Vec<u8>, CtError> {
    let mut buf = Vec::with_capacity(192);
    append_update(&mut buf, e, seq, UpdateParts::ALL)?;
    Ok(buf)
}

/// Appends an update request to `buf`.
pub fn append_update(
    buf: &mut Vec<u8>,
    e: &CtEntry,
    seq: u32,
    parts: UpdateParts,
) -> Result<(), CtError> {
    check_entry(e)?;
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut m = MsgBuf::begin(buf, IPCTNL_MSG_CT_NEW, flags, seq, af_of(&e.orig.src));
    m.tuple(CTA_TUPLE_ORIG, &e.orig);
    if e.zone != 0 {
        m.put_be16(CTA_ZONE, e.zone);
    }
    if parts.status {
        m.put_be32(CTA_STATUS, status_to_send(e.status));
    }
    m.put_be32(CTA_TIMEOUT, e.timeout);
    m.put_be32(CTA_MARK, e.mark);
    if let Some(t) = &e.tcp {
        m.tcp(t);
    }
    if let (true, Some(l)) = (parts.labels, &e.labels) {
        m.labels(l);
    }
    m.finish();
    Ok(())
}

/// `IPCTNL_MSG_CT_DELETE` by original tuple and zone, ACK requested.
pub fn delete_request(k: &CtKey, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    append_key_msg(&mut buf, IPCTNL_MSG_CT_DELETE, k, seq);
    buf
}

/// `IPCTNL_MSG_CT_GET` of one entry by key (the reply is a NEW message).
pub fn get_request(k: &CtKey, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    append_key_msg(&mut buf, IPCTNL_MSG_CT_GET, k, seq);
    buf
}

fn append_key_msg(buf: &mut Vec<u8>, msg: u16, k: &CtKey, seq: u32) {
    let mut m = MsgBuf::begin(buf, msg, NLM_F_REQUEST | NLM_F_ACK, seq, af_of(&k.orig.src));
    m.tuple(CTA_TUPLE_ORIG, &k.orig);
    if k.zone != 0 {
        m.put_be16(CTA_ZONE, k.zone);
    }
    m.finish();
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`: every entry of `family` in every
/// zone of the socket's network namespace.
pub fn dump_request(family: CtFamily, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20);
    let m = MsgBuf::begin(
        &mut buf,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.af(),
    );
    m.finish();
    buf
}

// ---------------------------------------------------------------------------
// Netlink message framing (for received datagrams)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct NlHdr {
    len: usize,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

impl NlHdr {
    fn parse(b: &[u8]) -> Result<NlHdr, CtError> {
        let h: &[u8; NLMSG_HDRLEN] = b
            .get(..NLMSG_HDRLEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(CtError::Truncated {
                what: "nlmsghdr",
                need: NLMSG_HDRLEN,
                have: b.len(),
            })?;
        Ok(NlHdr {
            len: u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize,
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        })
    }
}

/// Splits a received datagram into messages: `(header, whole message)`.
struct Msgs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Msgs<'a> {
    type Item = Result<(NlHdr, &'a [u8]), CtError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let h = match NlHdr::parse(self.buf) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if h.len < NLMSG_HDRLEN || h.len > self.buf.len() {
            let have = self.buf.len();
            self.buf = &[];
            return Some(Err(CtError::Truncated {
                what: "nlmsghdr",
                need: h.len.max(NLMSG_HDRLEN),
                have,
            }));
        }
        let msg = &self.buf[..h.len];
        self.buf = &self.buf[align4(h.len).min(self.buf.len())..];
        Some(Ok((h, msg)))
    }
}

/// The errno of an `NLMSG_ERROR` message (0 for an ACK) and the sequence
/// number of the request it answers.
fn parse_error_msg(msg: &[u8]) -> Result<(i32, u32), CtError> {
    let body = msg.get(NLMSG_HDRLEN..).unwrap_or(&[]);
    let err = body.get(..4).ok_or(CtError::Truncated {
        what: "nlmsgerr",
        need: 4,
        have: body.len(),
    })?;
    let err = i32::from_ne_bytes([err[0], err[1], err[2], err[3]]);
    // The embedded header of the request follows the errno.
    let orig = NlHdr::parse(body.get(4..).unwrap_or(&[]))?;
    Ok((-err, orig.seq))
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// A raw `NETLINK_NETFILTER` socket (libc: netlink-sys's `Socket` wants a
/// `BufMut` and hides MSG_TRUNC, and we need every errno unchanged).
struct NlSocket {
    fd: OwnedFd,
    portid: u32,
}

impl NlSocket {
    fn open() -> Result<NlSocket, CtError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io_err("socket"));
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid (nl_pid 0 = let the kernel pick).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let salen = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: sa is a valid sockaddr_nl of salen bytes.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                salen,
            )
        } < 0
        {
            return Err(io_err("bind"));
        }
        let mut len = salen;
        // SAFETY: sa/len describe a writable sockaddr_nl.
        if unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut sa as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        } < 0
        {
            return Err(io_err("getsockname"));
        }
        Ok(NlSocket {
            fd,
            portid: sa.nl_pid,
        })
    }

    fn setsockopt_int(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        v: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: v is a live c_int for the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                &v as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// SO_RCVBUFFORCE/SO_SNDBUFFORCE (root: ignores net.core.*_max), falling
    /// back to the capped variant when not permitted.
    fn set_buf(&self, rcv: bool, bytes: usize) -> Result<(), CtError> {
        let v = bytes.min(i32::MAX as usize) as libc::c_int;
        let (force, plain) = if rcv {
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
        } else {
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
        };
        self.setsockopt_int(libc::SOL_SOCKET, force, v)
            .or_else(|_| self.setsockopt_int(libc::SOL_SOCKET, plain, v))
            .map_err(|source| CtError::Io {
                op: "setsockopt(SO_*BUF)",
                source,
            })
    }

    fn send(&self, buf: &[u8]) -> Result<(), CtError> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: buf and sa are valid for the call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                // Netlink datagrams are all or nothing.
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(CtError::Io {
                    op: "sendto",
                    source: e,
                });
            }
        }
    }

    /// One datagram into `buf`; Err(ENOBUFS) etc. are returned as io errors.
    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: buf is writable for buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    flags | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > buf.len() {
                    // MSG_TRUNC returns the real length; we never size the
                    // buffer below the kernel's 32 KiB dump chunks, so this
                    // means a bug or a hostile sender.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink datagram truncated",
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Wait until readable; false on timeout.
    fn poll_readable(&self, timeout: Option<Duration>) -> Result<bool, CtError> {
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(i32::MAX as u128) as libc::c_int,
        };
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r >= 0 {
                return Ok(r > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(CtError::Io {
                    op: "poll",
                    source: e,
                });
            }
        }
    }
}

/// Receive buffer size; the kernel's dump chunks are at most 32 KiB
/// (netlink_recvmsg caps max_recvmsg_len), events are single messages.
const RECV_BUF: usize = 64 * 1024;
/// Requests per sendto. The kernel works through one datagram's requests
/// without a reschedule point (`netlink_rcv_skb`), and on a kernel without
/// full preemption (Debian's default) nothing else runs on that CPU
/// meanwhile, not even a SCHED_FIFO thread: 1024 creates held a CPU for
/// about 3 ms and put the advert interval error p99 at 3.3 ms under a sync
/// load (`cargo xtask bench failover --fast`); 64 hold it for about 0.2 ms
/// (p99 0.34 ms), with the same bulk time. Each answered request costs one
/// ACK skb (~1 KiB of receive-buffer truesize) within `INSTALL_RCVBUF`.
const BATCH: usize = 64;
const INSTALL_RCVBUF: usize = 16 << 20;
const INSTALL_SNDBUF: usize = 4 << 20;
/// How long [`Conntrack`] waits for any one reply datagram.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default event socket receive buffer (SO_RCVBUFFORCE).
pub const EVENT_RCVBUF: usize = 64 << 20;

/// Result of installing one entry with [`Conntrack::install`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    Created,
    /// The original tuple existed (EEXIST); it was updated instead.
    Updated,
    /// The kernel refused the create (or the follow-up update) with this errno.
    Failed(Errno),
    /// The entry could not be encoded (mismatched families, bad helper name).
    Invalid,
}

/// Result of deleting one key with [`Conntrack::delete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// ENOENT: nothing was tracked under that key (already gone).
    NotFound,
    Failed(Errno),
}

/// Counters from a dump.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries handed to the callback.
    pub entries: u64,
    /// Messages that did not parse (skipped; see `Conntrack::dump_with`).
    pub unparsable: u64,
    /// The kernel flagged the dump as interrupted (`NLM_F_DUMP_INTR`); the
    /// table changed under it and entries may be missing or doubled.
    pub interrupted: bool,
    /// Datagrams received (diagnostics: the kernel fills at most 32 KiB each).
    pub datagrams: u64,
}

/// A ctnetlink request socket in the calling thread's network namespace:
/// dumps, create-or-update batches, deletes. Not subscribed to events, so
/// its port id identifies events caused by its own requests.
pub struct Conntrack {
    sock: NlSocket,
    seq: u32,
    rbuf: Vec<u8>,
    sbuf: Vec<u8>,
}

impl AsRawFd for Conntrack {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }
}

impl Conntrack {
    pub fn open() -> Result<Conntrack, CtError> {
        let sock = NlSocket::open()?;
        sock.set_buf(true, INSTALL_RCVBUF)?;
        sock.set_buf(false, INSTALL_SNDBUF)?;
        // Error ACKs carry only the request's header, not its whole body:
        // a failing 1024-request batch would otherwise echo ~200 KiB.
        let _ = sock.setsockopt_int(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = sock.setsockopt_int(SOL_NETLINK, NETLINK_EXT_ACK, 0);
        // Never block forever on a reply that will not come.
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a live timeval for the call.
        let r = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io_err("setsockopt(SO_RCVTIMEO)"));
        }
        Ok(Conntrack {
            sock,
            // Start from the clock so a fresh socket never sees replies
            // meant for a previous one's sequence numbers as its own.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            rbuf: vec![0; RECV_BUF],
            sbuf: Vec::with_capacity(BATCH * 256),
        })
    }

    /// The netlink port id of this socket: the `nlmsg_pid` of events caused
    /// by its requests ([`CtEvent::origin_portid`]).
    pub fn port_id(&self) -> u32 {
        self.sock.portid
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    /// Raw dump: every message of the reply (conntrack NEW messages, as the
    /// kernel sent them) is handed to `f`. Used to capture golden bytes and by
    /// [`Self::dump_with`].
    /// Returns whether the kernel flagged the dump as interrupted, and the
    /// number of datagrams read.
    pub fn dump_raw(
        &mut self,
        family: CtFamily,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(bool, u64), CtError> {
        let seq = self.next_seq(1);
        self.sock.send(&dump_request(family, seq))?;
        let mut interrupted = false;
        let mut datagrams = 0u64;
        loop {
            let n = self
                .sock
                .recv(&mut self.rbuf, 0)
                .map_err(|e| recv_err(e, "dump"))?;
            datagrams += 1;
            for m in (Msgs {
                buf: &self.rbuf[..n],
            }) {
                let (h, msg) = m?;
                if h.seq != seq {
                    continue; // stale reply to an older request
                }
                if h.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match h.kind {
                    NLMSG_DONE => return Ok((interrupted, datagrams)),
                    NLMSG_ERROR => {
                        let (errno, _) = parse_error_msg(msg)?;
                        if errno != 0 {
                            return Err(CtError::Kernel {
                                op: "dump",
                                errno: Errno::from_raw(errno),
                            });
                        }
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    _ => f(msg),
                }
            }
        }
    }

    /// Dump all entries of `family`, parsing each in place and handing it to
    /// `f`. A message that does not parse is counted in
    /// [`DumpStats::unparsable`] and skipped: one odd entry (an unknown
    /// protocol's tuple, say) must not stop a resync.
    pub fn dump_with(
        &mut self,
        family: CtFamily,
        mut f: impl FnMut(CtEntry),
    ) -> Result<DumpStats, CtError> {
        let mut st = DumpStats::default();
        (st.interrupted, st.datagrams) = self.dump_raw(family, |msg| {
            match msg.get(NLMSG_HDRLEN..).map(parse_entry) {
                Some(Ok(e)) => {
                    st.entries += 1;
                    f(e);
                }
                _ => st.unparsable += 1,
            }
        })?;
        Ok(st)
    }

    /// Dump into a Vec.
    pub fn dump(&mut self, family: CtFamily) -> Result<Vec<CtEntry>, CtError> {
        let mut v = Vec::new();
        self.dump_with(family, |e| v.push(e))?;
        Ok(v)
    }

    /// Look up one entry by key; `None` if not tracked.
    pub fn get(&mut self, key: &CtKey) -> Result<Option<CtEntry>, CtError> {
        let seq = self.next_seq(1);
        self.sock.send(&get_request(key, seq))?;
        let mut found = None;
        loop {
            let n = self
                .sock
                .recv(&mut self.rbuf, 0)
                .map_err(|e| recv_err(e, "get"))?;
            for m in (Msgs {
                buf: &self.rbuf[..n],
            }) {
                let (h, msg) = m?;
                if h.seq != seq {
                    continue;
                }
                if h.kind == NLMSG_ERROR {
                    let (errno, _) = parse_error_msg(msg)?;
                    return match errno {
                        0 => Ok(found),
                        libc::ENOENT => Ok(None),
                        e => Err(CtError::Kernel {
                            op: "get",
                            errno: Errno::from_raw(e),
                        }),
                    };
                }
                if h.kind >> 8 == NFNL_SUBSYS_CTNETLINK {
                    found = Some(parse_message(msg)?.entry);
                }
            }
        }
    }

    /// Send the messages in `self.sbuf` (sequence numbers `base..base+count`)
    /// in one datagram and collect one errno per request (0 = ACK).
    fn transact(&mut self, base: u32, count: usize, op: &'static str) -> Result<Vec<i32>, CtError> {
        let mut res = vec![i32::MIN; count];
        let mut left = count;
        self.sock.send(&self.sbuf)?;
        while left > 0 {
            let n = self
                .sock
                .recv(&mut self.rbuf, 0)
                .map_err(|e| recv_err(e, op))?;
            for m in (Msgs {
                buf: &self.rbuf[..n],
            }) {
                let (h, msg) = m?;
                if h.kind != NLMSG_ERROR {
                    continue;
                }
                let (errno, seq) = parse_error_msg(msg)?;
                let i = seq.wrapping_sub(base) as usize;
                if i < count && res[i] == i32::MIN {
                    res[i] = errno;
                    left -= 1;
                }
            }
        }
        Ok(res)
    }

    /// Create-or-update `entries` in batches of up to [`BATCH`] requests per
    /// datagram; one outcome per entry, in order. A create answered EEXIST
    /// becomes an update; an update answered EBUSY (status bits the kernel
    /// will not change on a live entry) is retried without `CTA_STATUS`, one
    /// answered ENOSPC (no label extension) without `CTA_LABELS` (see
    /// [`UpdateParts`]).
    /// Per-entry kernel errors never stop the batch; only socket failures
    /// return `Err`.
    pub fn install(&mut self, entries: &[CtEntry]) -> Result<Vec<InstallOutcome>, CtError> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(BATCH) {
            self.install_chunk(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn install_chunk(
        &mut self,
        chunk: &[CtEntry],
        out: &mut Vec<InstallOutcome>,
    ) -> Result<(), CtError> {
        let first = out.len();
        // Stage 1: creates.
        self.sbuf.clear();
        let base = self.next_seq(chunk.len() as u32);
        let mut sent = Vec::with_capacity(chunk.len());
        for (i, e) in chunk.iter().enumerate() {
            let mut tmp = std::mem::take(&mut self.sbuf);
            let r = append_create(&mut tmp, e, base.wrapping_add(sent.len() as u32));
            self.sbuf = tmp;
            match r {
                Ok(()) => {
                    sent.push(i);
                    out.push(InstallOutcome::Created);
                }
                Err(_) => out.push(InstallOutcome::Invalid),
            }
        }
        if sent.is_empty() {
            return Ok(());
        }
        let res = self.transact(base, sent.len(), "create")?;
        let mut exist = Vec::new();
        for (k, &i) in sent.iter().enumerate() {
            match res[k] {
                0 => {}
                libc::EEXIST => exist.push(i),
                e => out[first + i] = InstallOutcome::Failed(Errno::from_raw(e)),
            }
        }
        // Stage 2: updates. Stage 3: the updates the kernel refused for a
        // part it will not change on this entry, without that part.
        let mut parts = vec![UpdateParts::ALL; exist.len()];
        for stage in 0..2 {
            if exist.is_empty() {
                break;
            }
            self.sbuf.clear();
            let base = self.next_seq(exist.len() as u32);
            for (k, &i) in exist.iter().enumerate() {
                let mut tmp = std::mem::take(&mut self.sbuf);
                // Encoding already succeeded for the create.
                let _ = append_update(&mut tmp, &chunk[i], base.wrapping_add(k as u32), parts[k]);
                self.sbuf = tmp;
            }
            let res = self.transact(base, exist.len(), "update")?;
            let (mut retry, mut retry_parts) = (Vec::new(), Vec::new());
            for (k, &i) in exist.iter().enumerate() {
                let e = &chunk[i];
                let degraded = match res[k] {
                    libc::EBUSY if stage == 0 => Some(UpdateParts {
                        status: false,
                        ..parts[k]
                    }),
                    libc::ENOSPC if stage == 0 && e.labels.is_some() => Some(UpdateParts {
                        labels: false,
                        ..parts[k]
                    }),
                    _ => None,
                };
                out[first + i] = match res[k] {
                    0 => InstallOutcome::Updated,
                    e => InstallOutcome::Failed(Errno::from_raw(e)),
                };
                if let Some(p) = degraded {
                    retry.push(i);
                    retry_parts.push(p);
                }
            }
            exist = retry;
            parts = retry_parts;
        }
        Ok(())
    }

    /// Delete by key, batched like [`Self::install`]; one outcome per key.
    pub fn delete(&mut self, keys: &[CtKey]) -> Result<Vec<DeleteOutcome>, CtError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            self.sbuf.clear();
            let base = self.next_seq(chunk.len() as u32);
            for (k, key) in chunk.iter().enumerate() {
                append_key_msg(
                    &mut self.sbuf,
                    IPCTNL_MSG_CT_DELETE,
                    key,
                    base.wrapping_add(k as u32),
                );
            }
            let res = self.transact(base, chunk.len(), "delete")?;
            out.extend(res.into_iter().map(|e| match e {
                0 => DeleteOutcome::Deleted,
                libc::ENOENT => DeleteOutcome::NotFound,
                e => DeleteOutcome::Failed(Errno::from_raw(e)),
            }));
        }
        Ok(out)
    }
}

fn recv_err(e: io::Error, op: &'static str) -> CtError {
    if e.raw_os_error() == Some(libc::ENOBUFS) {
        CtError::Overrun(op)
    } else if e.kind() == io::ErrorKind::WouldBlock {
        CtError::Timeout(op)
    } else {
        CtError::Io {
            op: "recv",
            source: e,
        }
    }
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtEventKind {
    New,
    Update,
    Destroy,
}

/// One conntrack event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEvent {
    pub kind: CtEventKind,
    /// Fields the event does not carry are defaults: see
    /// [`CtMessage::present`] (kept in `present`).
    pub entry: CtEntry,
    /// `nlmsg_pid`: the port id of the netlink socket whose request caused
    /// the event (compare with [`Conntrack::port_id`]), 0 for the packet path.
    pub origin_portid: u32,
    /// Top-level `CTA_*` attributes present (see [`CtMessage::has`]).
    pub present: u64,
}

impl CtEvent {
    pub fn has(&self, cta: u16) -> bool {
        cta < 64 && self.present & (1u64 << cta) != 0
    }
}

/// What [`CtEvents`] yields. None of these ends the stream.
#[derive(Debug)]
pub enum CtEventItem {
    Event(CtEvent),
    /// ENOBUFS: the kernel dropped events because the receive buffer was
    /// full. The caller must resync (dump); the socket stays usable.
    Overrun,
    /// An event that did not parse (skipped).
    Malformed(CtError),
}

/// Which event groups to join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventGroups {
    pub new: bool,
    pub update: bool,
    pub destroy: bool,
}

impl EventGroups {
    pub const ALL: EventGroups = EventGroups {
        new: true,
        update: true,
        destroy: true,
    };
}

/// Joins (`member`) or leaves the event groups set in `groups`.
fn set_membership(sock: &NlSocket, groups: EventGroups, member: bool) -> Result<(), CtError> {
    let (opt, op) = if member {
        (NETLINK_ADD_MEMBERSHIP, "setsockopt(NETLINK_ADD_MEMBERSHIP)")
    } else {
        (
            NETLINK_DROP_MEMBERSHIP,
            "setsockopt(NETLINK_DROP_MEMBERSHIP)",
        )
    };
    for (on, g) in [
        (groups.new, NFNLGRP_CONNTRACK_NEW),
        (groups.update, NFNLGRP_CONNTRACK_UPDATE),
        (groups.destroy, NFNLGRP_CONNTRACK_DESTROY),
    ] {
        if on {
            sock.setsockopt_int(SOL_NETLINK, opt, g as libc::c_int)
                .map_err(|source| CtError::Io { op, source })?;
        }
    }
    Ok(())
}

/// Leaves and rejoins groups of a [`CtEvents`] socket ([`CtEvents::membership`]).
///
/// Why: while a namespace has a listener on a group, the kernel builds an
/// event message for every entry created or updated there, our own installs
/// included, before the listener's socket filter drops it. That doubles the
/// cost of an install (measured on 6.18: 200 000 creates 0.5 s alone, 1.0 s
/// with one listener), so a node taking a bulk leaves the groups its
/// installs would fill.
pub struct EventMembership(NlSocket);

impl EventMembership {
    pub fn set(&self, groups: EventGroups, member: bool) -> Result<(), CtError> {
        set_membership(&self.0, groups, member)
    }
}

/// A subscription to conntrack events in the calling thread's network
/// namespace. Blocking-thread friendly: [`Self::try_recv`] never blocks,
/// [`Self::recv_timeout`] polls, and the fd is exposed for an external poll.
pub struct CtEvents {
    sock: NlSocket,
    buf: Vec<u8>,
    /// Unconsumed bytes of the last datagram: `buf[pos..len]`.
    pos: usize,
    len: usize,
}

impl AsRawFd for CtEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }
}

impl AsFd for CtEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.fd.as_fd()
    }
}

impl CtEvents {
    /// All three groups, [`EVENT_RCVBUF`] bytes of receive buffer.
    pub fn open() -> Result<CtEvents, CtError> {
        Self::open_with(EventGroups::ALL, EVENT_RCVBUF)
    }

    pub fn open_with(groups: EventGroups, rcvbuf: usize) -> Result<CtEvents, CtError> {
        let sock = NlSocket::open()?;
        sock.set_buf(true, rcvbuf)?;
        set_membership(&sock, groups, true)?;
        Ok(CtEvents {
            sock,
            buf: vec![0; RECV_BUF],
            pos: 0,
            len: 0,
        })
    }

    pub fn port_id(&self) -> u32 {
        self.sock.portid
    }

    /// A handle that joins and leaves this socket's groups from another
    /// thread (a duplicate of the fd: membership belongs to the socket).
    pub fn membership(&self) -> Result<EventMembership, CtError> {
        let fd = self.sock.fd.try_clone().map_err(|source| CtError::Io {
            op: "dup(event socket)",
            source,
        })?;
        Ok(EventMembership(NlSocket {
            fd,
            portid: self.sock.portid,
        }))
    }

    /// Drops, in the kernel, every event caused by the socket with port id
    /// `portid` (our own install socket): they are never queued, so a bulk
    /// install of a million entries neither costs a million parses here nor
    /// overruns the buffer (which would look like lost events). A classic BPF
    /// socket filter on `nlmsg_pid` (each event is its own datagram), as
    /// conntrackd filters its event sockets.
    pub fn ignore_port(&self, portid: u32) -> Result<(), CtError> {
        // `ld [k]` loads 4 bytes in network order; nlmsg_pid is in host order.
        let pid_as_loaded = u32::from_be_bytes(portid.to_ne_bytes());
        let code = [
            // A = nlmsg_pid (offset 12 of struct nlmsghdr)
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 12,
            },
            // A == portid ? drop : keep
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: pid_as_loaded,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: u32::MAX,
            },
        ];
        let prog = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `code`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                self.sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                std::ptr::addr_of!(prog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(CtError::Io {
                op: "setsockopt(SO_ATTACH_FILTER)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The next item if one is ready, without blocking.
    pub fn try_recv(&mut self) -> Result<Option<CtEventItem>, CtError> {
        loop {
            if let Some(item) = self.next_buffered() {
                return Ok(Some(item));
            }
            match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Some(CtEventItem::Overrun))
                }
                Err(e) => {
                    return Err(CtError::Io {
                        op: "recv",
                        source: e,
                    })
                }
            }
        }
    }

    /// The next item, waiting up to `timeout` (`None`: forever); `Ok(None)`
    /// on timeout.
    pub fn recv_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<CtEventItem>, CtError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(item) = self.try_recv()? {
                return Ok(Some(item));
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
            };
            if !self.sock.poll_readable(left)? && deadline.is_some() {
                return Ok(None);
            }
        }
    }

    fn next_buffered(&mut self) -> Option<CtEventItem> {
        while self.pos < self.len {
            let rest = &self.buf[self.pos..self.len];
            let mut it = Msgs { buf: rest };
            let (h, msg) = match it.next()? {
                Ok(x) => x,
                Err(e) => {
                    self.pos = self.len;
                    return Some(CtEventItem::Malformed(e));
                }
            };
            self.pos += align4(h.len).min(rest.len());
            match h.kind {
                NLMSG_NOOP | NLMSG_DONE => continue,
                NLMSG_OVERRUN => return Some(CtEventItem::Overrun),
                NLMSG_ERROR => {
                    if let Ok((e, _)) = parse_error_msg(msg) {
                        if e == libc::ENOBUFS {
                            return Some(CtEventItem::Overrun);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            return Some(match parse_message(msg) {
                Ok(m) => {
                    let kind = match m.kind {
                        CtMsgKind::Delete => CtEventKind::Destroy,
                        CtMsgKind::New if m.flags & NLM_F_CREATE != 0 => CtEventKind::New,
                        CtMsgKind::New => CtEventKind::Update,
                        CtMsgKind::Get => continue,
                    };
                    CtEventItem::Event(CtEvent {
                        kind,
                        entry: m.entry,
                        origin_portid: m.portid,
                        present: m.present,
                    })
                }
                Err(e) => CtEventItem::Malformed(e),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_entry() -> CtEntry {
        let orig = Tuple {
            src: "10.0.0.1".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            proto: 6,
            l4: L4::Ports {
                src: 40000,
                dst: 80,
            },
        };
        let mut reply = orig.inverse();
        reply.dst = "198.51.100.1".parse().unwrap();
        reply.l4 = L4::Ports { src: 80, dst: 1025 };
        CtEntry {
            orig,
            reply,
            zone: 7,
            mark: 0x42,
            status: status::SRC_NAT
                | status::SRC_NAT_DONE
                | status::CONFIRMED
                | status::ASSURED
                | status::SEEN_REPLY,
            timeout: 300,
            tcp: Some(TcpInfo {
                state: 3,
                wscale_orig: 7,
                wscale_reply: 9,
                flags_orig: 0x23,
                flags_reply: 0x23,
            }),
            labels: Some([1; 16]),
            helper: Some("ftp".into()),
        }
    }

    #[test]
    fn conntrack_create_roundtrip_nat() {
        let e = tcp_entry();
        let req = create_request(&e, 5).unwrap();
        let m = parse_message(&req).unwrap();
        assert_eq!(m.seq, 5);
        assert_eq!(
            m.flags,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
        );
        assert_eq!(m.entry.orig, e.orig);
        assert_eq!(m.entry.reply, e.reply);
        assert_eq!(m.entry.zone, 7);
        assert_eq!(m.entry.labels, e.labels);
        assert_eq!(m.entry.helper, e.helper);
        assert_eq!(
            m.entry.status,
            status::SRC_NAT | status::CONFIRMED | status::ASSURED | status::SEEN_REPLY
        );
        let t = m.entry.tcp.unwrap();
        assert_eq!((t.state, t.wscale_orig, t.wscale_reply), (3, 7, 9));
        assert_eq!(t.flags_orig, 0x08 | 0x02 | 0x01);
    }

    #[test]
    fn conntrack_parse_garbage_is_error() {
        assert!(parse_entry(&[]).is_err());
        assert!(parse_entry(&[2, 0, 0, 0, 0xff, 0xff, 1, 0]).is_err());
        assert!(parse_message(&[0; 15]).is_err());
    }
}
