//! State-sync frames: conntrack replication between the nodes of a cluster,
//! carried directly in IPv4 as protocol [`IPPROTO_SYNC`] (240, pfsync's
//! number) with TTL 255. The IP payload is the frame; frames never need IP
//! fragmentation (a sender keeps them within [`DEFAULT_MAX_FRAME`] bytes).
//!
//! A frame is a 24-byte header, any number of pfsync-style subheaders each
//! followed by its records, and a 32-byte HMAC-SHA256 tag over every byte
//! before it. All integers are big-endian. Reserved bytes are sent as 0 and
//! ignored on receipt.
//!
//! # Header
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, [`SYNC_VERSION`] (0xC1; never a pfsync version 5/6, so a BSD box drops the frame) |
//! | 1 | 1 | flags, 0 (anything else is rejected) |
//! | 2 | 2 | length of the whole frame, tag included |
//! | 4 | 4 | node id of the sender |
//! | 8 | 8 | boot: the sender's start time, ns since the Unix epoch (larger = restarted) |
//! | 16 | 8 | seq: the sender's frame sequence within the boot, per addressee; control frames (hellos, acks, bulk requests) have the high bit set and count on their own (see `sync::link::CONTROL_SEQ`) |
//!
//! # Subheader
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | action ([`action`]) |
//! | 1 | 1 | record length in 32-bit words |
//! | 2 | 2 | count of records that follow |
//!
//! Unknown actions are skipped by length and reported as
//! [`Message::Unknown`]. A record of a known action shorter than its layout
//! below is an error; a longer one is read and the extra bytes ignored
//! (forward compatibility).
//!
//! # Tag
//!
//! The last [`TAG_LEN`] bytes: `HMAC-SHA256(key, frame[..length - 32])`,
//! checked in constant time before any subheader is looked at.
//!
//! # Records
//!
//! ## Tuple (40 bytes, inside the records below)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | family: 4 = IPv4, 6 = IPv6 (anything else: [`SyncWireError::UnknownFamily`]) |
//! | 1 | 1 | IP protocol number |
//! | 2 | 1 | L4 kind: 0 none, 1 ports, 2 ICMP (anything else: [`SyncWireError::UnknownL4Kind`]) |
//! | 3 | 1 | reserved |
//! | 4 | 16 | source address (IPv4: 4 bytes, then 12 reserved) |
//! | 20 | 16 | destination address (same) |
//! | 36 | 2 | ports: source port; ICMP: echo id; none: reserved |
//! | 38 | 2 | ports: destination port; ICMP: type (38), code (39); none: reserved |
//!
//! Conntrack keeps both addresses of a tuple in one family. A `Tuple` that
//! mixes them anyway is sent as IPv6 with the IPv4 side v4-mapped (and so
//! comes back as two IPv6 addresses).
//!
//! ## Key (42 bytes, inside the records below)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 40 | original tuple |
//! | 40 | 2 | conntrack zone |
//!
//! ## `CLEAR` (1): count 0
//!
//! Every state learnt from the sender should be dropped. Any other count:
//! [`SyncWireError::BadCount`].
//!
//! ## `INSERT` (2), `UPDATE` (3): a whole [`CtEntry`], 132 bytes (33 words)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 40 | original tuple |
//! | 40 | 40 | reply tuple |
//! | 80 | 2 | zone |
//! | 82 | 1 | presence: bit 0 TCP info, bit 1 labels, bit 2 helper (other bits ignored) |
//! | 83 | 1 | TCP state (`TCP_CONNTRACK_*`) |
//! | 84 | 1 | TCP window scale, original direction |
//! | 85 | 1 | TCP window scale, reply direction |
//! | 86 | 1 | TCP flags (`IP_CT_TCP_FLAG_*`), original direction |
//! | 87 | 1 | TCP flags, reply direction |
//! | 88 | 4 | mark |
//! | 92 | 4 | status (`IPS_*`) |
//! | 96 | 4 | timeout, seconds |
//! | 100 | 16 | labels |
//! | 116 | 16 | helper name, UTF-8, at most 15 bytes, NUL-padded (so byte 131 is always 0) |
//!
//! Absent parts (TCP info, labels, helper) are sent as zeros and ignored.
//! A helper name longer than 15 bytes is cut at a character boundary on
//! emit (the kernel accepts no longer name); a name is read up to its first
//! NUL, so a name containing NUL comes back cut there.
//!
//! ## `REFRESH` (4): what changes on a live flow, 52 bytes (13 words)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 42 | key |
//! | 42 | 1 | presence: bit 0 TCP state (other bits ignored) |
//! | 43 | 1 | TCP state |
//! | 44 | 4 | status |
//! | 48 | 4 | timeout, seconds |
//!
//! ## `DELETE` (5): 44 bytes (11 words)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 42 | key |
//! | 42 | 2 | reserved |
//!
//! ## `BULK_REQUEST` (6): count 0 or 1, 4 bytes
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | request id |
//!
//! ## `BULK_START` (7), `BULK_END` (8): count 1, 12 bytes (3 words)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | request id |
//! | 4 | 8 | `BULK_START`: the sender's estimated state count; `BULK_END`: states sent |
//!
//! ## `ACK` (9): count 1, 16 bytes
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | boot of the frames acknowledged |
//! | 8 | 8 | cumulative seq: every seq ≤ it has been received |
//!
//! ## `NACK` (10): missing seqs, 24 bytes per range
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | boot |
//! | 8 | 8 | first missing seq (≥ 1) |
//! | 16 | 8 | last missing seq (≥ first; else [`SyncWireError::BadNackRange`]) |
//!
//! ## `HELLO` (11): count 1, 44 bytes (11 words)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 32 | node name, UTF-8, NUL-padded (32 bytes need no NUL) |
//! | 32 | 1 | flags: bit 0 bulk in progress, bit 1 demoted, bit 2 split brain: the sender holds a VHID back in BACKUP because the addressee's hello says MASTER while its adverts do not arrive (`crate::splitbrain`) (other bits ignored) |
//! | 33 | 3 | reserved |
//! | 36 | 8 | last seq received from the addressee |
//!
//! ## `HELLO_VHID` (12): 4 bytes per VHID, only directly after a `HELLO`
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | VHID (1..=255) |
//! | 1 | 1 | state: 0 INIT, 1 BACKUP, 2 MASTER |
//! | 2 | 1 | advbase |
//! | 3 | 1 | effective advskew |
//!
//! Several `HELLO_VHID` subheaders after one `HELLO` add up; one anywhere
//! else is [`SyncWireError::OrphanHelloVhid`]. [`FrameRepr::emit`] sends a
//! `HELLO_VHID` subheader only when the hello lists VHIDs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::conntrack::{CtEntry, CtKey, TcpInfo, Tuple, HELPER_NAME_MAX, L4};

/// IP protocol number of sync frames (pfsync's), and header byte 0: never 5
/// or 6 (pfsync versions), so pfsync drops our frames. Shared with the XDP
/// program, which checks both (carp-common).
pub use carp_common::{IPPROTO_SYNC, SYNC_VERSION};
/// Length of the frame header.
pub const HEADER_LEN: usize = carp_common::SYNC_HEADER_LEN;
/// Length of the HMAC-SHA256 tag at the end of every frame.
pub const TAG_LEN: usize = carp_common::SYNC_TAG_LEN;
/// The shortest frame: a header and a tag, no messages.
pub const MIN_FRAME_LEN: usize = carp_common::SYNC_MIN_LEN;
/// A 1500-byte MTU minus the 20-byte IPv4 header.
pub const DEFAULT_MAX_FRAME: usize = 1480;
/// The longest frame the 16-bit length field can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// Length of a subheader.
pub const SUBHEADER_LEN: usize = 4;
/// Longest node name in a `HELLO`.
pub const NODE_NAME_MAX: usize = 32;

/// Subheader action codes.
pub mod action {
    pub const CLEAR: u8 = 1;
    pub const INSERT: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const REFRESH: u8 = 4;
    pub const DELETE: u8 = 5;
    pub const BULK_REQUEST: u8 = 6;
    pub const BULK_START: u8 = 7;
    pub const BULK_END: u8 = 8;
    pub const ACK: u8 = 9;
    pub const NACK: u8 = 10;
    pub const HELLO: u8 = 11;
    pub const HELLO_VHID: u8 = 12;
}

/// Record lengths in bytes (each a multiple of 4), as this version sends them
/// and needs them at least.
pub mod record_len {
    pub const TUPLE: usize = 40;
    pub const KEY: usize = 42;
    pub const ENTRY: usize = 132;
    pub const REFRESH: usize = 52;
    pub const DELETE: usize = 44;
    pub const BULK_REQUEST: usize = 4;
    pub const BULK_START: usize = 12;
    pub const BULK_END: usize = 12;
    pub const ACK: usize = 16;
    pub const NACK: usize = 24;
    pub const HELLO: usize = 44;
    pub const HELLO_VHID: usize = 4;
}

/// Byte positions (smoltcp's `field` idiom).
mod field {
    pub type Field = core::ops::Range<usize>;

    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const NODE_ID: Field = 4..8;
    pub const BOOT: Field = 8..16;
    pub const SEQ: Field = 16..24;

    pub mod sub {
        pub const ACTION: usize = 0;
        pub const RECORD_WORDS: usize = 1;
        pub const COUNT: usize = 2;
    }

    pub mod tuple {
        pub const FAMILY: usize = 0;
        pub const PROTO: usize = 1;
        pub const L4_KIND: usize = 2;
        pub const SRC: usize = 4;
        pub const DST: usize = 20;
        pub const L4_A: usize = 36;
        pub const L4_B: usize = 38;
    }

    pub mod key {
        pub const ZONE: usize = 40;
    }

    pub mod entry {
        pub const ORIG: usize = 0;
        pub const REPLY: usize = 40;
        pub const ZONE: usize = 80;
        pub const PRESENCE: usize = 82;
        pub const TCP_STATE: usize = 83;
        pub const WSCALE_ORIG: usize = 84;
        pub const WSCALE_REPLY: usize = 85;
        pub const TCP_FLAGS_ORIG: usize = 86;
        pub const TCP_FLAGS_REPLY: usize = 87;
        pub const MARK: usize = 88;
        pub const STATUS: usize = 92;
        pub const TIMEOUT: usize = 96;
        pub const LABELS: usize = 100;
        pub const HELPER: usize = 116;
        pub const HELPER_LEN: usize = 16;
    }

    pub mod refresh {
        pub const PRESENCE: usize = 42;
        pub const TCP_STATE: usize = 43;
        pub const STATUS: usize = 44;
        pub const TIMEOUT: usize = 48;
    }

    pub mod bulk {
        pub const REQUEST_ID: usize = 0;
        pub const NUMBER: usize = 4;
    }

    pub mod ack {
        pub const BOOT: usize = 0;
        pub const CUMULATIVE: usize = 8;
    }

    pub mod nack {
        pub const BOOT: usize = 0;
        pub const FIRST: usize = 8;
        pub const LAST: usize = 16;
    }

    pub mod hello {
        pub const NAME: usize = 0;
        pub const FLAGS: usize = 32;
        pub const LAST_SEQ: usize = 36;
    }

    pub mod vhid {
        pub const VHID: usize = 0;
        pub const STATE: usize = 1;
        pub const ADVBASE: usize = 2;
        pub const ADVSKEW: usize = 3;
    }
}

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
const L4_NONE: u8 = 0;
const L4_PORTS: u8 = 1;
const L4_ICMP: u8 = 2;
const ENTRY_HAS_TCP: u8 = 1 << 0;
const ENTRY_HAS_LABELS: u8 = 1 << 1;
const ENTRY_HAS_HELPER: u8 = 1 << 2;
const REFRESH_HAS_TCP: u8 = 1 << 0;
const HELLO_BULK: u8 = 1 << 0;
const HELLO_DEMOTED: u8 = 1 << 1;
const HELLO_SPLIT_BRAIN: u8 = 1 << 2;

/// Why bytes are not a valid sync frame (or a frame cannot be emitted).
/// Each variant is its own receive counter; [`SyncWireError::label`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyncWireError {
    #[error("sync frame truncated: {len} bytes, need at least {MIN_FRAME_LEN}")]
    Truncated { len: usize },
    #[error("sync version {0:#04x}, expected {SYNC_VERSION:#04x}")]
    BadVersion(u8),
    #[error("sync header flags {0:#04x}, expected 0")]
    BadFlags(u8),
    #[error("sync length field says {field} bytes, frame has {actual}")]
    BadLength { field: u16, actual: usize },
    #[error("sync frame tag does not verify")]
    BadTag,
    #[error("sync subheader truncated at frame offset {offset}")]
    TruncatedSubheader { offset: usize },
    #[error("sync action {action} at frame offset {offset}: records run past the end")]
    RecordsPastEnd { action: u8, offset: usize },
    #[error("sync action {action}: records of {record_len} bytes, need {need}")]
    RecordTooShort {
        action: u8,
        record_len: usize,
        need: usize,
    },
    #[error("sync action {action}: record count {count} not allowed")]
    BadCount { action: u8, count: u16 },
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
    #[error("unknown L4 kind {0}")]
    UnknownL4Kind(u8),
    #[error("helper name is not UTF-8 of at most {HELPER_NAME_MAX} bytes")]
    BadHelperName,
    #[error("node name is not UTF-8")]
    BadNodeName,
    #[error("NACK range {first}..={last} is empty or includes seq 0")]
    BadNackRange { first: u64, last: u64 },
    #[error("VHID 0 in a hello")]
    ZeroVhid,
    #[error("VHID state {0} (0 INIT, 1 BACKUP, 2 MASTER)")]
    BadVhidState(u8),
    #[error("HELLO_VHID records not directly after a HELLO")]
    OrphanHelloVhid,
    /// Emit only: the frame would not fit the 16-bit length field.
    #[error("sync frame of {len} bytes exceeds {MAX_FRAME_LEN}")]
    TooLong { len: usize },
}

impl SyncWireError {
    /// A short, stable name for metrics labels.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadVersion(_) => "bad_version",
            Self::BadFlags(_) => "bad_flags",
            Self::BadLength { .. } => "bad_length",
            Self::BadTag => "bad_tag",
            Self::TruncatedSubheader { .. } => "truncated_subheader",
            Self::RecordsPastEnd { .. } => "records_past_end",
            Self::RecordTooShort { .. } => "record_too_short",
            Self::BadCount { .. } => "bad_count",
            Self::UnknownFamily(_) => "unknown_family",
            Self::UnknownL4Kind(_) => "unknown_l4_kind",
            Self::BadHelperName => "bad_helper_name",
            Self::BadNodeName => "bad_node_name",
            Self::BadNackRange { .. } => "bad_nack_range",
            Self::ZeroVhid => "zero_vhid",
            Self::BadVhidState(_) => "bad_vhid_state",
            Self::OrphanHelloVhid => "orphan_hello_vhid",
            Self::TooLong { .. } => "too_long",
        }
    }
}

// ---------------------------------------------------------------------------
// Byte helpers: bounds-checked, never panic (out-of-range reads give zeros,
// out-of-range writes are dropped; callers check lengths first).

fn rd<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

fn rd_u8(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(rd(b, at))
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(rd(b, at))
}

fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(rd(b, at))
}

fn wr(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at.saturating_add(v.len())) {
        d.copy_from_slice(v);
    }
}

fn wr_u8(b: &mut [u8], at: usize, v: u8) {
    if let Some(d) = b.get_mut(at) {
        *d = v;
    }
}

// ---------------------------------------------------------------------------
// HMAC

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed with `key`, without a fallible constructor: HMAC hashes
/// keys longer than the 64-byte block and zero-pads shorter ones (RFC 2104),
/// which is done here so `new` takes a full block.
fn keyed_mac(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        wr(&mut block, 0, &Sha256::digest(key));
    } else {
        wr(&mut block, 0, key);
    }
    <HmacSha256 as KeyInit>::new(&block.into())
}

fn compute_tag(key: &[u8], signed: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = keyed_mac(key);
    mac.update(signed);
    mac.finalize().into_bytes().into()
}

// ---------------------------------------------------------------------------
// Packet view

/// A read/write view over the bytes of a sync frame.
///
/// [`Packet::new_checked`] guarantees at least [`MIN_FRAME_LEN`] bytes; the
/// frame is taken to be the whole buffer (the tag is its last [`TAG_LEN`]
/// bytes), whatever the length field says ([`Packet::check_header`] compares
/// them).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer` after checking that it holds a header and a tag.
    pub fn new_checked(buffer: T) -> Result<Self, SyncWireError> {
        let len = buffer.as_ref().len();
        if len < MIN_FRAME_LEN {
            return Err(SyncWireError::Truncated { len });
        }
        Ok(Self { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        rd_u8(self.bytes(), field::VERSION)
    }

    pub fn flags(&self) -> u8 {
        rd_u8(self.bytes(), field::FLAGS)
    }

    /// The length field (whole frame, tag included).
    pub fn length(&self) -> u16 {
        rd_u16(self.bytes(), field::LENGTH.start)
    }

    pub fn node_id(&self) -> u32 {
        rd_u32(self.bytes(), field::NODE_ID.start)
    }

    pub fn boot(&self) -> u64 {
        rd_u64(self.bytes(), field::BOOT.start)
    }

    pub fn seq(&self) -> u64 {
        rd_u64(self.bytes(), field::SEQ.start)
    }

    fn tag_start(&self) -> usize {
        self.bytes().len().saturating_sub(TAG_LEN).max(HEADER_LEN)
    }

    /// The bytes the tag covers: everything before it.
    pub fn signed_bytes(&self) -> &[u8] {
        self.bytes().get(..self.tag_start()).unwrap_or(&[])
    }

    /// The subheaders and records, between the header and the tag.
    pub fn payload(&self) -> &[u8] {
        self.bytes()
            .get(HEADER_LEN..self.tag_start())
            .unwrap_or(&[])
    }

    pub fn tag(&self) -> [u8; TAG_LEN] {
        rd(self.bytes(), self.tag_start())
    }

    /// Version, flags and length field, in that order.
    pub fn check_header(&self) -> Result<(), SyncWireError> {
        if self.version() != SYNC_VERSION {
            return Err(SyncWireError::BadVersion(self.version()));
        }
        if self.flags() != 0 {
            return Err(SyncWireError::BadFlags(self.flags()));
        }
        if usize::from(self.length()) != self.bytes().len() {
            return Err(SyncWireError::BadLength {
                field: self.length(),
                actual: self.bytes().len(),
            });
        }
        Ok(())
    }

    /// Whether the tag is right for `key`, compared in constant time.
    pub fn verify_tag(&self, key: &[u8]) -> bool {
        let tag_start = self.tag_start();
        let Some(tag) = self.bytes().get(tag_start..) else {
            return false;
        };
        let mut mac = keyed_mac(key);
        mac.update(self.signed_bytes());
        mac.verify_slice(tag).is_ok()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_version(&mut self, v: u8) {
        wr_u8(self.bytes_mut(), field::VERSION, v);
    }

    pub fn set_flags(&mut self, v: u8) {
        wr_u8(self.bytes_mut(), field::FLAGS, v);
    }

    pub fn set_length(&mut self, v: u16) {
        wr(self.bytes_mut(), field::LENGTH.start, &v.to_be_bytes());
    }

    pub fn set_node_id(&mut self, v: u32) {
        wr(self.bytes_mut(), field::NODE_ID.start, &v.to_be_bytes());
    }

    pub fn set_boot(&mut self, v: u64) {
        wr(self.bytes_mut(), field::BOOT.start, &v.to_be_bytes());
    }

    pub fn set_seq(&mut self, v: u64) {
        wr(self.bytes_mut(), field::SEQ.start, &v.to_be_bytes());
    }

    /// Compute the tag over the bytes before it and store it.
    pub fn fill_tag(&mut self, key: &[u8]) {
        let tag = compute_tag(key, self.signed_bytes());
        let at = self.tag_start();
        wr(self.bytes_mut(), at, &tag);
    }
}

/// `(node_id, boot, seq)` of something that looks like a sync frame (at least
/// a header, right version), **unauthenticated**: for logging only.
pub fn peek_header(bytes: &[u8]) -> Option<(u32, u64, u64)> {
    if bytes.len() < HEADER_LEN || bytes.first() != Some(&SYNC_VERSION) {
        return None;
    }
    Some((
        rd_u32(bytes, field::NODE_ID.start),
        rd_u64(bytes, field::BOOT.start),
        rd_u64(bytes, field::SEQ.start),
    ))
}

// ---------------------------------------------------------------------------
// Representation

/// A compressed update of a live flow: what changes while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Refresh {
    pub key: CtKey,
    /// `IPS_*` bits.
    pub status: u32,
    /// Seconds until the entry expires.
    pub timeout: u32,
    /// `TCP_CONNTRACK_*`, for TCP entries.
    pub tcp_state: Option<u8>,
}

/// Cumulative acknowledgement of the addressee's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    /// Boot of the frames acknowledged.
    pub boot: u64,
    /// Every seq ≤ this has been received.
    pub cumulative: u64,
}

/// Missing seqs `first..=last` of the frames of `boot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NackRange {
    pub boot: u64,
    /// ≥ 1.
    pub first: u64,
    /// ≥ `first`.
    pub last: u64,
}

/// CARP state of a VHID, as the sender sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VhidState {
    Init,
    Backup,
    Master,
}

impl VhidState {
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Init => 0,
            Self::Backup => 1,
            Self::Master => 2,
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Init),
            1 => Some(Self::Backup),
            2 => Some(Self::Master),
            _ => None,
        }
    }
}

/// One VHID in a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HelloVhid {
    /// 1..=255.
    pub vhid: u8,
    pub state: VhidState,
    pub advbase: u8,
    /// Effective advskew (demotion included).
    pub advskew: u8,
}

/// A node's periodic hello.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// At most [`NODE_NAME_MAX`] bytes of UTF-8 without NUL (longer names are
    /// cut at a character boundary on emit).
    pub name: String,
    pub bulk_in_progress: bool,
    pub demoted: bool,
    /// The sender holds a VHID back in BACKUP for a split brain
    /// (`crate::splitbrain`); peers that predate the flag ignore it.
    pub split_brain: bool,
    /// Last seq received from the addressee.
    pub last_seq_received: u64,
    pub vhids: Vec<HelloVhid>,
}

/// One subheader's worth of records (a hello with its VHIDs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Drop every state learnt from the sender.
    Clear,
    Insert(Vec<CtEntry>),
    Update(Vec<CtEntry>),
    Refresh(Vec<Refresh>),
    Delete(Vec<CtKey>),
    BulkRequest {
        request_id: Option<u32>,
    },
    BulkStart {
        request_id: u32,
        /// The sender's estimated state count.
        estimate: u64,
    },
    BulkEnd {
        request_id: u32,
        /// States sent in the bulk.
        sent: u64,
    },
    Ack(Ack),
    Nack(Vec<NackRange>),
    Hello(Hello),
    /// An action this version does not know, skipped by length. Emitted
    /// (for tests) as `count` records of length 0.
    Unknown {
        action: u8,
        count: u16,
    },
}

impl Message {
    /// The subheader action.
    pub const fn action(&self) -> u8 {
        match self {
            Self::Clear => action::CLEAR,
            Self::Insert(_) => action::INSERT,
            Self::Update(_) => action::UPDATE,
            Self::Refresh(_) => action::REFRESH,
            Self::Delete(_) => action::DELETE,
            Self::BulkRequest { .. } => action::BULK_REQUEST,
            Self::BulkStart { .. } => action::BULK_START,
            Self::BulkEnd { .. } => action::BULK_END,
            Self::Ack(_) => action::ACK,
            Self::Nack(_) => action::NACK,
            Self::Hello(_) => action::HELLO,
            Self::Unknown { action, .. } => *action,
        }
    }

    /// Bytes this message takes in a frame (subheaders included).
    pub fn buffer_len(&self) -> usize {
        let records = |n: usize, len: usize| SUBHEADER_LEN + n.saturating_mul(len);
        match self {
            Self::Clear | Self::Unknown { .. } => SUBHEADER_LEN,
            Self::Insert(v) | Self::Update(v) => records(v.len(), record_len::ENTRY),
            Self::Refresh(v) => records(v.len(), record_len::REFRESH),
            Self::Delete(v) => records(v.len(), record_len::DELETE),
            Self::BulkRequest { request_id } => {
                records(usize::from(request_id.is_some()), record_len::BULK_REQUEST)
            }
            Self::BulkStart { .. } => records(1, record_len::BULK_START),
            Self::BulkEnd { .. } => records(1, record_len::BULK_END),
            Self::Ack(_) => records(1, record_len::ACK),
            Self::Nack(v) => records(v.len(), record_len::NACK),
            Self::Hello(h) => {
                records(1, record_len::HELLO)
                    + if h.vhids.is_empty() {
                        0
                    } else {
                        records(h.vhids.len(), record_len::HELLO_VHID)
                    }
            }
        }
    }
}

/// A validated, authenticated sync frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FrameRepr {
    pub node_id: u32,
    pub boot: u64,
    /// Data frames count from 1; control frames have the high bit set
    /// (`sync::link::CONTROL_SEQ`).
    pub seq: u64,
    pub messages: Vec<Message>,
}

impl FrameRepr {
    /// Check a received frame in this order, each failure its own error:
    /// length ≥ [`MIN_FRAME_LEN`], version, flags, length field, tag; then
    /// the subheaders and records. Nothing is read from the payload before
    /// the tag has been verified.
    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<FrameRepr, SyncWireError> {
        let packet = Packet::new_checked(bytes)?;
        packet.check_header()?;
        if !packet.verify_tag(key) {
            return Err(SyncWireError::BadTag);
        }
        let messages = parse_messages(packet.payload())?;
        Ok(FrameRepr {
            node_id: packet.node_id(),
            boot: packet.boot(),
            seq: packet.seq(),
            messages,
        })
    }

    /// Bytes needed by [`FrameRepr::emit`].
    pub fn buffer_len(&self) -> usize {
        self.messages
            .iter()
            .fold(MIN_FRAME_LEN, |n, m| n.saturating_add(m.buffer_len()))
    }

    /// Append the frame (header, messages in order, each its own subheader,
    /// tag) to `out`. Fails only when it would exceed [`MAX_FRAME_LEN`];
    /// staying within a path MTU is the caller's business (see
    /// [`FrameBuilder`]).
    pub fn emit(&self, key: &[u8], out: &mut Vec<u8>) -> Result<(), SyncWireError> {
        let len = self.buffer_len();
        if len > MAX_FRAME_LEN {
            return Err(SyncWireError::TooLong { len });
        }
        let start = out.len();
        out.reserve(len);
        write_header(out, self.node_id, self.boot, self.seq);
        for m in &self.messages {
            write_message(out, m);
        }
        finish_frame(out, start, key);
        Ok(())
    }

    /// The frame as a new vector.
    pub fn to_bytes(&self, key: &[u8]) -> Result<Vec<u8>, SyncWireError> {
        let mut v = Vec::new();
        self.emit(key, &mut v)?;
        Ok(v)
    }
}

fn write_header(out: &mut Vec<u8>, node_id: u32, boot: u64, seq: u64) {
    let mut h = [0u8; HEADER_LEN];
    wr_u8(&mut h, field::VERSION, SYNC_VERSION);
    wr(&mut h, field::NODE_ID.start, &node_id.to_be_bytes());
    wr(&mut h, field::BOOT.start, &boot.to_be_bytes());
    wr(&mut h, field::SEQ.start, &seq.to_be_bytes());
    out.extend_from_slice(&h);
}

/// Set the length field of the frame that starts at `start` and append its tag.
fn finish_frame(out: &mut Vec<u8>, start: usize, key: &[u8]) {
    let len = out.len().saturating_sub(start).saturating_add(TAG_LEN);
    let len16 = u16::try_from(len).unwrap_or(u16::MAX);
    if let Some(frame) = out.get_mut(start..) {
        wr(frame, field::LENGTH.start, &len16.to_be_bytes());
    }
    let tag = compute_tag(key, out.get(start..).unwrap_or(&[]));
    out.extend_from_slice(&tag);
}

fn write_subheader(out: &mut Vec<u8>, action: u8, record_bytes: usize, count: usize) {
    let words = u8::try_from(record_bytes / 4).unwrap_or(u8::MAX);
    let count = u16::try_from(count).unwrap_or(u16::MAX);
    let c = count.to_be_bytes();
    out.extend_from_slice(&[action, words, c[0], c[1]]);
}

fn write_message(out: &mut Vec<u8>, m: &Message) {
    match m {
        Message::Clear => write_subheader(out, action::CLEAR, 0, 0),
        Message::Insert(v) | Message::Update(v) => {
            write_subheader(out, m.action(), record_len::ENTRY, v.len());
            for e in v {
                out.extend_from_slice(&entry_record(e));
            }
        }
        Message::Refresh(v) => {
            write_subheader(out, action::REFRESH, record_len::REFRESH, v.len());
            for r in v {
                out.extend_from_slice(&refresh_record(r));
            }
        }
        Message::Delete(v) => {
            write_subheader(out, action::DELETE, record_len::DELETE, v.len());
            for k in v {
                out.extend_from_slice(&delete_record(k));
            }
        }
        Message::BulkRequest { request_id } => {
            write_subheader(
                out,
                action::BULK_REQUEST,
                record_len::BULK_REQUEST,
                usize::from(request_id.is_some()),
            );
            if let Some(id) = request_id {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Message::BulkStart {
            request_id,
            estimate: n,
        }
        | Message::BulkEnd {
            request_id,
            sent: n,
        } => {
            // BULK_START and BULK_END records have one layout.
            const _: () = assert!(record_len::BULK_START == record_len::BULK_END);
            write_subheader(out, m.action(), record_len::BULK_START, 1);
            let mut r = [0u8; record_len::BULK_START];
            wr(&mut r, field::bulk::REQUEST_ID, &request_id.to_be_bytes());
            wr(&mut r, field::bulk::NUMBER, &n.to_be_bytes());
            out.extend_from_slice(&r);
        }
        Message::Ack(a) => {
            write_subheader(out, action::ACK, record_len::ACK, 1);
            let mut r = [0u8; record_len::ACK];
            wr(&mut r, field::ack::BOOT, &a.boot.to_be_bytes());
            wr(&mut r, field::ack::CUMULATIVE, &a.cumulative.to_be_bytes());
            out.extend_from_slice(&r);
        }
        Message::Nack(v) => {
            write_subheader(out, action::NACK, record_len::NACK, v.len());
            for n in v {
                let mut r = [0u8; record_len::NACK];
                wr(&mut r, field::nack::BOOT, &n.boot.to_be_bytes());
                wr(&mut r, field::nack::FIRST, &n.first.to_be_bytes());
                wr(&mut r, field::nack::LAST, &n.last.to_be_bytes());
                out.extend_from_slice(&r);
            }
        }
        Message::Hello(h) => {
            write_subheader(out, action::HELLO, record_len::HELLO, 1);
            let mut r = [0u8; record_len::HELLO];
            wr(
                &mut r,
                field::hello::NAME,
                truncate_utf8(&h.name, NODE_NAME_MAX),
            );
            let flags = if h.bulk_in_progress { HELLO_BULK } else { 0 }
                | if h.demoted { HELLO_DEMOTED } else { 0 }
                | if h.split_brain { HELLO_SPLIT_BRAIN } else { 0 };
            wr_u8(&mut r, field::hello::FLAGS, flags);
            wr(
                &mut r,
                field::hello::LAST_SEQ,
                &h.last_seq_received.to_be_bytes(),
            );
            out.extend_from_slice(&r);
            if !h.vhids.is_empty() {
                write_subheader(
                    out,
                    action::HELLO_VHID,
                    record_len::HELLO_VHID,
                    h.vhids.len(),
                );
                for v in &h.vhids {
                    out.extend_from_slice(&[v.vhid, v.state.to_u8(), v.advbase, v.advskew]);
                }
            }
        }
        Message::Unknown { action, count } => {
            write_subheader(out, *action, 0, usize::from(*count));
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes().get(..end).unwrap_or(&[])
}

fn write_tuple(r: &mut [u8], at: usize, t: &Tuple) {
    let (family, src, dst) = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (FAMILY_V4, v4_field(s), v4_field(d)),
        // Both addresses of a tuple are of one family (conntrack); a mixed
        // tuple is sent as IPv6 with the IPv4 side v4-mapped.
        (s, d) => (FAMILY_V6, v6_octets(s), v6_octets(d)),
    };
    wr_u8(r, at + field::tuple::FAMILY, family);
    wr_u8(r, at + field::tuple::PROTO, t.proto);
    wr(r, at + field::tuple::SRC, &src);
    wr(r, at + field::tuple::DST, &dst);
    match t.l4 {
        L4::Ports { src, dst } => {
            wr_u8(r, at + field::tuple::L4_KIND, L4_PORTS);
            wr(r, at + field::tuple::L4_A, &src.to_be_bytes());
            wr(r, at + field::tuple::L4_B, &dst.to_be_bytes());
        }
        L4::Icmp { id, kind, code } => {
            wr_u8(r, at + field::tuple::L4_KIND, L4_ICMP);
            wr(r, at + field::tuple::L4_A, &id.to_be_bytes());
            wr(r, at + field::tuple::L4_B, &[kind, code]);
        }
        L4::None => wr_u8(r, at + field::tuple::L4_KIND, L4_NONE),
    }
}

fn v4_field(a: Ipv4Addr) -> [u8; 16] {
    let mut f = [0u8; 16];
    wr(&mut f, 0, &a.octets());
    f
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn write_key(r: &mut [u8], k: &CtKey) {
    write_tuple(r, 0, &k.orig);
    wr(r, field::key::ZONE, &k.zone.to_be_bytes());
}

fn entry_record(e: &CtEntry) -> [u8; record_len::ENTRY] {
    use field::entry as f;
    let mut r = [0u8; record_len::ENTRY];
    write_tuple(&mut r, f::ORIG, &e.orig);
    write_tuple(&mut r, f::REPLY, &e.reply);
    wr(&mut r, f::ZONE, &e.zone.to_be_bytes());
    let mut presence = 0;
    if let Some(t) = &e.tcp {
        presence |= ENTRY_HAS_TCP;
        wr(
            &mut r,
            f::TCP_STATE,
            &[
                t.state,
                t.wscale_orig,
                t.wscale_reply,
                t.flags_orig,
                t.flags_reply,
            ],
        );
    }
    if let Some(l) = &e.labels {
        presence |= ENTRY_HAS_LABELS;
        wr(&mut r, f::LABELS, l);
    }
    if let Some(h) = &e.helper {
        presence |= ENTRY_HAS_HELPER;
        wr(&mut r, f::HELPER, truncate_utf8(h, HELPER_NAME_MAX));
    }
    wr_u8(&mut r, f::PRESENCE, presence);
    wr(&mut r, f::MARK, &e.mark.to_be_bytes());
    wr(&mut r, f::STATUS, &e.status.to_be_bytes());
    wr(&mut r, f::TIMEOUT, &e.timeout.to_be_bytes());
    r
}

fn refresh_record(x: &Refresh) -> [u8; record_len::REFRESH] {
    use field::refresh as f;
    let mut r = [0u8; record_len::REFRESH];
    write_key(&mut r, &x.key);
    if let Some(s) = x.tcp_state {
        wr_u8(&mut r, f::PRESENCE, REFRESH_HAS_TCP);
        wr_u8(&mut r, f::TCP_STATE, s);
    }
    wr(&mut r, f::STATUS, &x.status.to_be_bytes());
    wr(&mut r, f::TIMEOUT, &x.timeout.to_be_bytes());
    r
}

fn delete_record(k: &CtKey) -> [u8; record_len::DELETE] {
    let mut r = [0u8; record_len::DELETE];
    write_key(&mut r, k);
    r
}

// ---------------------------------------------------------------------------
// Parsing records (the tag has been verified by now)

fn parse_messages(payload: &[u8]) -> Result<Vec<Message>, SyncWireError> {
    let mut messages = Vec::new();
    let mut off = 0usize;
    while off < payload.len() {
        let frame_offset = HEADER_LEN + off;
        let Some(sub) = payload.get(off..off + SUBHEADER_LEN) else {
            return Err(SyncWireError::TruncatedSubheader {
                offset: frame_offset,
            });
        };
        let act = rd_u8(sub, field::sub::ACTION);
        let rlen = usize::from(rd_u8(sub, field::sub::RECORD_WORDS)) * 4;
        let count = rd_u16(sub, field::sub::COUNT);
        let start = off + SUBHEADER_LEN;
        let end = start + rlen * usize::from(count);
        let Some(body) = payload.get(start..end) else {
            return Err(SyncWireError::RecordsPastEnd {
                action: act,
                offset: frame_offset,
            });
        };
        off = end;
        let recs = Records {
            action: act,
            body,
            rlen,
            count,
        };
        match act {
            action::CLEAR => {
                recs.exact_count(0)?;
                messages.push(Message::Clear);
            }
            action::INSERT => messages.push(Message::Insert(recs.map(parse_entry)?)),
            action::UPDATE => messages.push(Message::Update(recs.map(parse_entry)?)),
            action::REFRESH => messages.push(Message::Refresh(recs.map(parse_refresh)?)),
            action::DELETE => messages.push(Message::Delete(recs.map(parse_delete)?)),
            action::BULK_REQUEST => {
                if count > 1 {
                    return Err(SyncWireError::BadCount { action: act, count });
                }
                let request_id = recs
                    .map(|r| Ok(rd_u32(r, field::bulk::REQUEST_ID)))?
                    .first()
                    .copied();
                messages.push(Message::BulkRequest { request_id });
            }
            action::BULK_START | action::BULK_END => {
                let r = recs.single()?;
                let request_id = rd_u32(r, field::bulk::REQUEST_ID);
                let n = rd_u64(r, field::bulk::NUMBER);
                messages.push(if act == action::BULK_START {
                    Message::BulkStart {
                        request_id,
                        estimate: n,
                    }
                } else {
                    Message::BulkEnd {
                        request_id,
                        sent: n,
                    }
                });
            }
            action::ACK => {
                let r = recs.single()?;
                messages.push(Message::Ack(Ack {
                    boot: rd_u64(r, field::ack::BOOT),
                    cumulative: rd_u64(r, field::ack::CUMULATIVE),
                }));
            }
            action::NACK => messages.push(Message::Nack(recs.map(parse_nack)?)),
            action::HELLO => {
                let r = recs.single()?;
                messages.push(Message::Hello(parse_hello(r)?));
            }
            action::HELLO_VHID => {
                let vhids = recs.map(parse_hello_vhid)?;
                match messages.last_mut() {
                    Some(Message::Hello(h)) => h.vhids.extend(vhids),
                    _ => return Err(SyncWireError::OrphanHelloVhid),
                }
            }
            _ => messages.push(Message::Unknown { action: act, count }),
        }
    }
    Ok(messages)
}

/// The records of one subheader, already known to lie within the payload.
struct Records<'a> {
    action: u8,
    body: &'a [u8],
    rlen: usize,
    count: u16,
}

impl<'a> Records<'a> {
    fn need(&self) -> usize {
        match self.action {
            action::INSERT | action::UPDATE => record_len::ENTRY,
            action::REFRESH => record_len::REFRESH,
            action::DELETE => record_len::DELETE,
            action::BULK_REQUEST => record_len::BULK_REQUEST,
            action::BULK_START => record_len::BULK_START,
            action::BULK_END => record_len::BULK_END,
            action::ACK => record_len::ACK,
            action::NACK => record_len::NACK,
            action::HELLO => record_len::HELLO,
            action::HELLO_VHID => record_len::HELLO_VHID,
            _ => 0,
        }
    }

    fn exact_count(&self, want: u16) -> Result<(), SyncWireError> {
        if self.count != want {
            return Err(SyncWireError::BadCount {
                action: self.action,
                count: self.count,
            });
        }
        Ok(())
    }

    fn check_len(&self) -> Result<(), SyncWireError> {
        let need = self.need();
        if self.count > 0 && self.rlen < need {
            return Err(SyncWireError::RecordTooShort {
                action: self.action,
                record_len: self.rlen,
                need,
            });
        }
        Ok(())
    }

    /// Each record, cut to its known length, through `f`.
    fn map<R>(
        &self,
        f: impl Fn(&'a [u8]) -> Result<R, SyncWireError>,
    ) -> Result<Vec<R>, SyncWireError> {
        self.check_len()?;
        if self.count == 0 {
            return Ok(Vec::new());
        }
        let need = self.need();
        let mut out = Vec::with_capacity(usize::from(self.count));
        for r in self.body.chunks_exact(self.rlen.max(1)) {
            out.push(f(r.get(..need).unwrap_or(r))?);
        }
        Ok(out)
    }

    /// The one record of a count-1 action.
    fn single(&self) -> Result<&'a [u8], SyncWireError> {
        self.exact_count(1)?;
        self.check_len()?;
        Ok(self.body.get(..self.need()).unwrap_or(self.body))
    }
}

fn parse_tuple(r: &[u8], at: usize) -> Result<Tuple, SyncWireError> {
    let family = rd_u8(r, at + field::tuple::FAMILY);
    let src: [u8; 16] = rd(r, at + field::tuple::SRC);
    let dst: [u8; 16] = rd(r, at + field::tuple::DST);
    let (src, dst) = match family {
        FAMILY_V4 => (
            IpAddr::V4(Ipv4Addr::from(rd::<4>(&src, 0))),
            IpAddr::V4(Ipv4Addr::from(rd::<4>(&dst, 0))),
        ),
        FAMILY_V6 => (
            IpAddr::V6(Ipv6Addr::from(src)),
            IpAddr::V6(Ipv6Addr::from(dst)),
        ),
        other => return Err(SyncWireError::UnknownFamily(other)),
    };
    let a = rd_u16(r, at + field::tuple::L4_A);
    let b: [u8; 2] = rd(r, at + field::tuple::L4_B);
    let l4 = match rd_u8(r, at + field::tuple::L4_KIND) {
        L4_NONE => L4::None,
        L4_PORTS => L4::Ports {
            src: a,
            dst: u16::from_be_bytes(b),
        },
        L4_ICMP => L4::Icmp {
            id: a,
            kind: b[0],
            code: b[1],
        },
        other => return Err(SyncWireError::UnknownL4Kind(other)),
    };
    Ok(Tuple {
        src,
        dst,
        proto: rd_u8(r, at + field::tuple::PROTO),
        l4,
    })
}

fn parse_key(r: &[u8]) -> Result<CtKey, SyncWireError> {
    Ok(CtKey {
        orig: parse_tuple(r, 0)?,
        zone: rd_u16(r, field::key::ZONE),
    })
}

fn parse_entry(r: &[u8]) -> Result<CtEntry, SyncWireError> {
    use field::entry as f;
    let orig = parse_tuple(r, f::ORIG)?;
    let reply = parse_tuple(r, f::REPLY)?;
    let presence = rd_u8(r, f::PRESENCE);
    let tcp = (presence & ENTRY_HAS_TCP != 0).then(|| TcpInfo {
        state: rd_u8(r, f::TCP_STATE),
        wscale_orig: rd_u8(r, f::WSCALE_ORIG),
        wscale_reply: rd_u8(r, f::WSCALE_REPLY),
        flags_orig: rd_u8(r, f::TCP_FLAGS_ORIG),
        flags_reply: rd_u8(r, f::TCP_FLAGS_REPLY),
    });
    let labels = (presence & ENTRY_HAS_LABELS != 0).then(|| rd::<16>(r, f::LABELS));
    let helper = if presence & ENTRY_HAS_HELPER != 0 {
        let raw: [u8; f::HELPER_LEN] = rd(r, f::HELPER);
        let Some(end) = raw.iter().position(|&c| c == 0) else {
            return Err(SyncWireError::BadHelperName);
        };
        let name = raw.get(..end).unwrap_or(&[]);
        match std::str::from_utf8(name) {
            Ok(s) => Some(s.to_owned()),
            Err(_) => return Err(SyncWireError::BadHelperName),
        }
    } else {
        None
    };
    Ok(CtEntry {
        orig,
        reply,
        zone: rd_u16(r, f::ZONE),
        mark: rd_u32(r, f::MARK),
        status: rd_u32(r, f::STATUS),
        timeout: rd_u32(r, f::TIMEOUT),
        tcp,
        labels,
        helper,
    })
}

fn parse_refresh(r: &[u8]) -> Result<Refresh, SyncWireError> {
    use field::refresh as f;
    Ok(Refresh {
        key: parse_key(r)?,
        status: rd_u32(r, f::STATUS),
        timeout: rd_u32(r, f::TIMEOUT),
        tcp_state: (rd_u8(r, f::PRESENCE) & REFRESH_HAS_TCP != 0).then(|| rd_u8(r, f::TCP_STATE)),
    })
}

fn parse_delete(r: &[u8]) -> Result<CtKey, SyncWireError> {
    parse_key(r)
}

fn parse_nack(r: &[u8]) -> Result<NackRange, SyncWireError> {
    let n = NackRange {
        boot: rd_u64(r, field::nack::BOOT),
        first: rd_u64(r, field::nack::FIRST),
        last: rd_u64(r, field::nack::LAST),
    };
    if n.first == 0 || n.first > n.last {
        return Err(SyncWireError::BadNackRange {
            first: n.first,
            last: n.last,
        });
    }
    Ok(n)
}

fn parse_hello(r: &[u8]) -> Result<Hello, SyncWireError> {
    let raw: [u8; NODE_NAME_MAX] = rd(r, field::hello::NAME);
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let name = std::str::from_utf8(raw.get(..end).unwrap_or(&[]))
        .map_err(|_| SyncWireError::BadNodeName)?
        .to_owned();
    let flags = rd_u8(r, field::hello::FLAGS);
    Ok(Hello {
        name,
        bulk_in_progress: flags & HELLO_BULK != 0,
        demoted: flags & HELLO_DEMOTED != 0,
        split_brain: flags & HELLO_SPLIT_BRAIN != 0,
        last_seq_received: rd_u64(r, field::hello::LAST_SEQ),
        vhids: Vec::new(),
    })
}

fn parse_hello_vhid(r: &[u8]) -> Result<HelloVhid, SyncWireError> {
    let vhid = rd_u8(r, field::vhid::VHID);
    if vhid == 0 {
        return Err(SyncWireError::ZeroVhid);
    }
    let s = rd_u8(r, field::vhid::STATE);
    let state = VhidState::from_u8(s).ok_or(SyncWireError::BadVhidState(s))?;
    Ok(HelloVhid {
        vhid,
        state,
        advbase: rd_u8(r, field::vhid::ADVBASE),
        advskew: rd_u8(r, field::vhid::ADVSKEW),
    })
}

// ---------------------------------------------------------------------------
// Builder

/// Packs messages into one frame of at most `max_frame_len` bytes, for the
/// sender's batching. Consecutive records of the same action pushed with the
/// `push_*` methods share one subheader. No allocation after `new`.
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    max: usize,
    /// Offset, action and count of the subheader the `push_*` records go into.
    open: Option<(usize, u8, u16)>,
}

impl FrameBuilder {
    /// A builder for one frame. `max_frame_len` is clamped to
    /// `MIN_FRAME_LEN..=MAX_FRAME_LEN`.
    pub fn new(max_frame_len: usize, node_id: u32, boot: u64, seq: u64) -> Self {
        let max = max_frame_len.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
        let mut buf = Vec::with_capacity(max);
        write_header(&mut buf, node_id, boot, seq);
        Self {
            buf,
            max,
            open: None,
        }
    }

    /// Whether no message has been pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// The frame length if finished now.
    pub fn frame_len(&self) -> usize {
        self.buf.len() + TAG_LEN
    }

    pub fn max_frame_len(&self) -> usize {
        self.max
    }

    /// Bytes left for subheaders and records.
    pub fn remaining(&self) -> usize {
        self.max.saturating_sub(self.frame_len())
    }

    /// Make room for one record of `action`, opening a subheader if the
    /// previous record was of another action (or the count is full). False
    /// when it does not fit.
    fn reserve_record(&mut self, act: u8, len: usize) -> bool {
        let joins = matches!(self.open, Some((_, a, c)) if a == act && c < u16::MAX);
        let need = if joins { len } else { SUBHEADER_LEN + len };
        if need > self.remaining() {
            return false;
        }
        match &mut self.open {
            Some((at, _, count)) if joins => {
                *count += 1;
                let c = count.to_be_bytes();
                let at = *at + field::sub::COUNT;
                wr(&mut self.buf, at, &c);
            }
            _ => {
                self.open = Some((self.buf.len(), act, 1));
                write_subheader(&mut self.buf, act, len, 1);
            }
        }
        true
    }

    pub fn push_insert(&mut self, e: &CtEntry) -> bool {
        self.push_entry(action::INSERT, e)
    }

    pub fn push_update(&mut self, e: &CtEntry) -> bool {
        self.push_entry(action::UPDATE, e)
    }

    fn push_entry(&mut self, act: u8, e: &CtEntry) -> bool {
        if !self.reserve_record(act, record_len::ENTRY) {
            return false;
        }
        self.buf.extend_from_slice(&entry_record(e));
        true
    }

    pub fn push_refresh(&mut self, r: &Refresh) -> bool {
        if !self.reserve_record(action::REFRESH, record_len::REFRESH) {
            return false;
        }
        self.buf.extend_from_slice(&refresh_record(r));
        true
    }

    pub fn push_delete(&mut self, k: &CtKey) -> bool {
        if !self.reserve_record(action::DELETE, record_len::DELETE) {
            return false;
        }
        self.buf.extend_from_slice(&delete_record(k));
        true
    }

    /// Append a whole message as its own subheader(s) (any kind, typically
    /// clear, bulk markers, ack, nack, hello). False when it does not fit.
    pub fn push_control(&mut self, m: &Message) -> bool {
        if m.buffer_len() > self.remaining() {
            return false;
        }
        self.open = None;
        write_message(&mut self.buf, m);
        true
    }

    /// The frame: length field and tag written.
    pub fn finish(self, key: &[u8]) -> Vec<u8> {
        let mut buf = self.buf;
        finish_frame(&mut buf, 0, key);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::status;

    const KEY: &[u8] = b"sync-test-key";

    fn entry() -> CtEntry {
        let orig = Tuple {
            src: "192.168.1.10".parse().unwrap(),
            dst: "93.184.216.34".parse().unwrap(),
            proto: 6,
            l4: L4::Ports {
                src: 40000,
                dst: 443,
            },
        };
        CtEntry {
            status: status::CONFIRMED | status::ASSURED,
            tcp: Some(TcpInfo::default()),
            helper: Some("ftp".into()),
            ..CtEntry::new(orig, 100)
        }
    }

    #[test]
    fn keyed_mac_matches_new_from_slice() {
        for len in [0usize, 1, 13, 63, 64, 65, 100, 200] {
            let key: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let mut a = keyed_mac(&key);
            a.update(b"abc");
            let mut b = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            b.update(b"abc");
            assert_eq!(
                a.finalize().into_bytes(),
                b.finalize().into_bytes(),
                "{len}"
            );
        }
    }

    #[test]
    fn round_trip_every_message_kind() {
        let e = entry();
        let repr = FrameRepr {
            node_id: 7,
            boot: 1_700_000_000_000_000_000,
            seq: 42,
            messages: vec![
                Message::Clear,
                Message::Insert(vec![e.clone()]),
                Message::Update(vec![e.clone(), e.clone()]),
                Message::Refresh(vec![Refresh {
                    key: e.key(),
                    status: 1,
                    timeout: 2,
                    tcp_state: Some(3),
                }]),
                Message::Delete(vec![e.key()]),
                Message::BulkRequest { request_id: None },
                Message::BulkRequest {
                    request_id: Some(9),
                },
                Message::BulkStart {
                    request_id: 9,
                    estimate: 1000,
                },
                Message::BulkEnd {
                    request_id: 9,
                    sent: 999,
                },
                Message::Ack(Ack {
                    boot: 1,
                    cumulative: 2,
                }),
                Message::Nack(vec![NackRange {
                    boot: 1,
                    first: 3,
                    last: 4,
                }]),
                Message::Hello(Hello {
                    name: "fw1".into(),
                    bulk_in_progress: true,
                    demoted: false,
                    split_brain: true,
                    last_seq_received: 5,
                    vhids: vec![HelloVhid {
                        vhid: 1,
                        state: VhidState::Master,
                        advbase: 1,
                        advskew: 0,
                    }],
                }),
                Message::Unknown {
                    action: 200,
                    count: 3,
                },
            ],
        };
        let bytes = repr.to_bytes(KEY).unwrap();
        assert_eq!(bytes.len(), repr.buffer_len());
        assert_eq!(FrameRepr::parse(&bytes, KEY), Ok(repr));
        assert_eq!(
            peek_header(&bytes),
            Some((7, 1_700_000_000_000_000_000, 42))
        );
    }

    #[test]
    fn builder_shares_subheaders() {
        let e = entry();
        let mut b = FrameBuilder::new(DEFAULT_MAX_FRAME, 1, 2, 3);
        assert!(b.is_empty());
        assert!(b.push_insert(&e));
        assert!(b.push_insert(&e));
        assert!(b.push_delete(&e.key()));
        assert!(b.push_insert(&e));
        let f = b.finish(KEY);
        let r = FrameRepr::parse(&f, KEY).unwrap();
        assert_eq!(
            r.messages,
            vec![
                Message::Insert(vec![e.clone(), e.clone()]),
                Message::Delete(vec![e.key()]),
                Message::Insert(vec![e]),
            ]
        );
    }
}
