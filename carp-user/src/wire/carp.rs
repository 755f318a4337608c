//! The CARP advertisement: a 36-byte header carried directly in IP protocol 112.
//!
//! Layout (`struct carp_header` in OpenBSD/FreeBSD `sys/netinet/ip_carp.h`,
//! docs/protocol.md §1), network byte order:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (high nibble, 2) / type (low nibble, 1 = advertisement) |
//! | 1 | 1 | vhid |
//! | 2 | 1 | advskew |
//! | 3 | 1 | authlen (7: counter + digest in 32-bit words) |
//! | 4 | 1 | demote (OpenBSD) / pad (FreeBSD) |
//! | 5 | 1 | advbase |
//! | 6 | 2 | Internet checksum over the 36 bytes |
//! | 8 | 8 | counter |
//! | 16 | 20 | HMAC-SHA1 digest |

use std::net::{Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of the CARP header (and of the whole IP payload of an advertisement).
pub const HEADER_LEN: usize = carp_common::CARP_ADVERT_LEN;
/// The only CARP version there is (`CARP_VERSION` in ip_carp.h).
pub const VERSION: u8 = 2;
/// `CARP_ADVERTISEMENT`, the only message type.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Counter + digest length in 32-bit words: (8 + 20) / 4. Both BSDs send 7
/// (`ch.carp_authlen = 7; /* XXX DEFINE */`).
pub const AUTHLEN: u8 = 7;
/// Length of the HMAC-SHA1 digest.
pub const DIGEST_LEN: usize = 20;
/// At most this many password bytes are used as HMAC key (`CARP_KEY_LEN` in
/// ip_carp.h: the kernel keeps a 20-byte, zero-padded key).
pub const KEY_LEN: usize = 20;
/// advbase and advskew of a bow-out (OpenBSD `carp_send_ad` with `sc_bow_out`).
pub const BOW_OUT: u8 = 255;

/// Byte positions of the fields (smoltcp's `field` module idiom).
mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_TYPE: usize = 0;
    pub const VHID: usize = 1;
    pub const ADVSKEW: usize = 2;
    pub const AUTHLEN: usize = 3;
    pub const DEMOTE: usize = 4;
    pub const ADVBASE: usize = 5;
    pub const CHECKSUM: Field = 6..8;
    pub const COUNTER: Field = 8..16;
    pub const DIGEST: Field = 16..36;
}

/// Why a byte string is not a valid CARP advertisement. Each variant is a
/// separate receive counter (docs/protocol.md §1, "Receiving").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("CARP header truncated: {len} bytes, need {HEADER_LEN}")]
    Truncated { len: usize },
    #[error("CARP checksum mismatch")]
    BadChecksum,
    #[error("CARP version {0}, expected {VERSION}")]
    BadVersion(u8),
    #[error("CARP message type {0}, expected {TYPE_ADVERTISEMENT} (advertisement)")]
    BadType(u8),
    #[error("CARP authlen {0}, expected {AUTHLEN}")]
    BadAuthLen(u8),
    /// carp(4): VHIDs are 1..=255; FreeBSD uses VHID 0 only to detect loops.
    #[error("CARP VHID 0 is not valid (1..=255)")]
    ZeroVhid,
}

/// The message type nibble, total over all values (STYLE.md: no transmutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Advertisement,
    Unknown(u8),
}

impl From<u8> for MessageType {
    fn from(v: u8) -> Self {
        match v {
            TYPE_ADVERTISEMENT => Self::Advertisement,
            other => Self::Unknown(other),
        }
    }
}

/// A read/write view over the bytes of a CARP header.
///
/// The only constructor is [`Packet::new_checked`], which guarantees at least
/// [`HEADER_LEN`] bytes, so no accessor can index out of bounds. Bytes past the
/// header are ignored (the BSDs accept a longer IP payload and checksum only
/// the 36 header bytes).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap `buffer` after checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated { len });
        }
        Ok(Self { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn header(&self) -> &[u8] {
        // Cannot fail after new_checked; `get` keeps even a misbehaving AsRef
        // from turning into a panic.
        self.buffer
            .as_ref()
            .get(..HEADER_LEN)
            .unwrap_or(&[0; HEADER_LEN])
    }

    /// The 36 header bytes.
    pub fn as_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out.copy_from_slice(self.header());
        out
    }

    /// Version (high nibble of byte 0).
    pub fn version(&self) -> u8 {
        self.header()[field::VER_TYPE] >> 4
    }

    /// Raw message type (low nibble of byte 0).
    pub fn msg_type_raw(&self) -> u8 {
        self.header()[field::VER_TYPE] & 0x0f
    }

    /// Message type.
    pub fn msg_type(&self) -> MessageType {
        MessageType::from(self.msg_type_raw())
    }

    pub fn vhid(&self) -> u8 {
        self.header()[field::VHID]
    }

    pub fn advskew(&self) -> u8 {
        self.header()[field::ADVSKEW]
    }

    pub fn authlen(&self) -> u8 {
        self.header()[field::AUTHLEN]
    }

    /// OpenBSD's group demotion counter; FreeBSD's `carp_pad1` (sent as 0).
    pub fn demote(&self) -> u8 {
        self.header()[field::DEMOTE]
    }

    pub fn advbase(&self) -> u8 {
        self.header()[field::ADVBASE]
    }

    pub fn checksum(&self) -> u16 {
        let b = &self.header()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The counter, read big-endian as FreeBSD writes it (`htonl` of each half).
    /// OpenBSD copies a random host-order cookie; being random, the byte order
    /// does not matter there, and the digest covers the bytes as sent.
    pub fn counter(&self) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.header()[field::COUNTER]);
        u64::from_be_bytes(b)
    }

    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut d = [0; DIGEST_LEN];
        d.copy_from_slice(&self.header()[field::DIGEST]);
        d
    }

    /// Whether the Internet checksum over the 36 bytes is right
    /// (`carp_cksum(m, len - iplen)` in ip_carp.c must be 0).
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(self.header()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn header_mut(&mut self) -> &mut [u8] {
        let buf = self.buffer.as_mut();
        let len = buf.len().min(HEADER_LEN);
        &mut buf[..len]
    }

    fn set_byte(&mut self, at: usize, v: u8) {
        if let Some(b) = self.header_mut().get_mut(at) {
            *b = v;
        }
    }

    fn set_range(&mut self, range: field::Field, v: &[u8]) {
        if let Some(dst) = self.header_mut().get_mut(range) {
            if dst.len() == v.len() {
                dst.copy_from_slice(v);
            }
        }
    }

    pub fn set_version_and_type(&mut self, version: u8, msg_type: u8) {
        self.set_byte(field::VER_TYPE, (version << 4) | (msg_type & 0x0f));
    }

    pub fn set_vhid(&mut self, v: u8) {
        self.set_byte(field::VHID, v);
    }

    pub fn set_advskew(&mut self, v: u8) {
        self.set_byte(field::ADVSKEW, v);
    }

    pub fn set_authlen(&mut self, v: u8) {
        self.set_byte(field::AUTHLEN, v);
    }

    pub fn set_demote(&mut self, v: u8) {
        self.set_byte(field::DEMOTE, v);
    }

    pub fn set_advbase(&mut self, v: u8) {
        self.set_byte(field::ADVBASE, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.set_range(field::CHECKSUM, &v.to_be_bytes());
    }

    pub fn set_counter(&mut self, v: u64) {
        self.set_range(field::COUNTER, &v.to_be_bytes());
    }

    pub fn set_digest(&mut self, v: &[u8; DIGEST_LEN]) {
        self.set_range(field::DIGEST, v);
    }

    /// Compute and store the checksum (zero while summing, as the BSDs do).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = internet_checksum(self.header());
        self.set_checksum(sum);
    }
}

/// RFC 1071 Internet checksum (ones' complement of the ones' complement sum).
fn internet_checksum(bytes: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(bytes)
        .ones_complement()
        .to_be()
}

/// A validated CARP advertisement. Version, type and authlen are implied (2, 1, 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Virtual host id, 1..=255.
    pub vhid: u8,
    /// Skew in 1/256 s; 255 only in a bow-out.
    pub advskew: u8,
    /// Base interval in seconds; 255 only in a bow-out, 0 in fast mode (docs/protocol.md §2).
    pub advbase: u8,
    /// OpenBSD's demotion counter (send 0).
    pub demote: u8,
    pub counter: u64,
    pub digest: [u8; DIGEST_LEN],
}

impl Repr {
    /// Validate a header: checksum first (a corrupted header says nothing
    /// reliable about its other fields), then version, type, authlen and VHID.
    /// The digest is not checked here: it needs the VHID's password and VIPs
    /// (see [`Repr::verify`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        if packet.version() != VERSION {
            return Err(Error::BadVersion(packet.version()));
        }
        if packet.msg_type() != MessageType::Advertisement {
            return Err(Error::BadType(packet.msg_type_raw()));
        }
        if packet.authlen() != AUTHLEN {
            return Err(Error::BadAuthLen(packet.authlen()));
        }
        if packet.vhid() == 0 {
            return Err(Error::ZeroVhid);
        }
        Ok(Repr {
            vhid: packet.vhid(),
            advskew: packet.advskew(),
            advbase: packet.advbase(),
            demote: packet.demote(),
            counter: packet.counter(),
            digest: packet.digest(),
        })
    }

    /// Parse the first 36 bytes of `bytes`.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Repr, Error> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// Bytes needed by [`Repr::emit`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write every field (FreeBSD's pad/OpenBSD's demote included) and the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version_and_type(VERSION, TYPE_ADVERTISEMENT);
        packet.set_vhid(self.vhid);
        packet.set_advskew(self.advskew);
        packet.set_authlen(AUTHLEN);
        packet.set_demote(self.demote);
        packet.set_advbase(self.advbase);
        packet.set_counter(self.counter);
        packet.set_digest(&self.digest);
        packet.fill_checksum();
    }

    /// The 36 bytes of this advertisement.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        if let Ok(mut p) = Packet::new_checked(&mut buf[..]) {
            self.emit(&mut p);
        }
        buf
    }

    /// An advertisement with its digest computed (demote 0, as FreeBSD sends).
    pub fn new_advert(
        vhid: u8,
        advbase: u8,
        advskew: u8,
        counter: u64,
        password: &[u8],
        vips4: &[Ipv4Addr],
        vips6: &[Ipv6Addr],
    ) -> Repr {
        Repr {
            vhid,
            advskew,
            advbase,
            demote: 0,
            counter,
            digest: digest(password, vhid, vips4, vips6, counter),
        }
    }

    /// A bow-out: advbase 255 and advskew 255, which every BSD reads as "this
    /// master will time out", so a backup takes over at once (OpenBSD sends it,
    /// FreeBSD honours it; docs/protocol.md §2, "Bow-out").
    pub fn bow_out(
        vhid: u8,
        counter: u64,
        password: &[u8],
        vips4: &[Ipv4Addr],
        vips6: &[Ipv6Addr],
    ) -> Repr {
        Self::new_advert(vhid, BOW_OUT, BOW_OUT, counter, password, vips4, vips6)
    }

    /// Whether this is a bow-out.
    pub const fn is_bow_out(&self) -> bool {
        self.advbase == BOW_OUT && self.advskew == BOW_OUT
    }

    /// The advertisement interval in units of **1/256 second**:
    /// `advbase × 256 + advskew`, the quantity the BSDs compare (as
    /// `advbase` s + `advskew × 1000000 / 256` µs) to rank masters. Lower is
    /// better. Meaningless for fast mode (advbase 0), which the election handles.
    pub const fn interval_256ths(&self) -> u32 {
        self.advbase as u32 * 256 + self.advskew as u32
    }

    /// Check the digest against the VHID's password and virtual addresses,
    /// in constant time.
    pub fn verify(&self, password: &[u8], vips4: &[Ipv4Addr], vips6: &[Ipv6Addr]) -> bool {
        verify_digest(
            password,
            self.vhid,
            vips4,
            vips6,
            self.counter,
            &self.digest,
        )
    }
}

type HmacSha1 = Hmac<Sha1>;

/// The keyed HMAC state after the message, ready to finalize or verify.
///
/// Message, per `carp_hmac_prepare` / `carp_hmac_generate` in ip_carp.c:
/// `version ‖ type ‖ vhid ‖ IPv4 VIPs ‖ IPv6 VIPs ‖ counter` (docs/protocol.md §1, "Digest (HMAC-SHA1)").
///
/// * Key: the first [`KEY_LEN`] bytes of the password. The kernel zero-pads the
///   key to 20 bytes and HMAC zero-pads it to the 64-byte block, so padding it
///   to the block here gives the same MAC as the shorter key, with no fallible
///   key-length path.
/// * Addresses: ascending numeric order, each once. The kernel's selection loop
///   (`ntohl(in) > last && ntohl(in) < cur`, starting from 0 and 0xffffffff)
///   also skips 0.0.0.0 and 255.255.255.255 (`::` and `ff..ff` for IPv6), so we
///   do the same. IPv6 addresses are hashed as their 16 bytes: a Rust
///   `Ipv6Addr` carries no embedded KAME scope id, which the kernel clears
///   anyway. OpenBSD leaves link-local IPv6 VIPs out of the digest it sends
///   (`HMAC_NOV6LL`) but accepts both; FreeBSD includes them. The caller decides
///   which addresses to pass.
/// * Counter: the 8 bytes as sent (big-endian here).
fn keyed_mac(
    password: &[u8],
    vhid: u8,
    vips4: &[Ipv4Addr],
    vips6: &[Ipv6Addr],
    counter: u64,
) -> HmacSha1 {
    let mut key = [0u8; 64];
    let n = password.len().min(KEY_LEN);
    key[..n].copy_from_slice(&password[..n]);
    let mut mac = <HmacSha1 as hmac::digest::KeyInit>::new(&key.into());

    mac.update(&[VERSION, TYPE_ADVERTISEMENT, vhid]);

    let mut v4: Vec<u32> = vips4
        .iter()
        .map(|a| u32::from(*a))
        .filter(|&a| a != 0 && a != u32::MAX)
        .collect();
    v4.sort_unstable();
    v4.dedup();
    for a in v4 {
        mac.update(&a.to_be_bytes());
    }

    let mut v6: Vec<[u8; 16]> = vips6
        .iter()
        .map(|a| a.octets())
        .filter(|a| *a != [0; 16] && *a != [0xff; 16])
        .collect();
    v6.sort_unstable();
    v6.dedup();
    for a in v6 {
        mac.update(&a);
    }

    mac.update(&counter.to_be_bytes());
    mac
}

/// HMAC-SHA1 digest of an advertisement exactly as the BSD kernels and ucarp
/// compute it: `HMAC-SHA1(password[..20], 2 ‖ 1 ‖ vhid ‖ sorted IPv4 VIPs ‖
/// sorted IPv6 VIPs ‖ counter)` (details in the source, on `keyed_mac`).
pub fn digest(
    password: &[u8],
    vhid: u8,
    vips4: &[Ipv4Addr],
    vips6: &[Ipv6Addr],
    counter: u64,
) -> [u8; DIGEST_LEN] {
    keyed_mac(password, vhid, vips4, vips6, counter)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `received` is the right digest, compared in constant time
/// (`Mac::verify_slice` uses `subtle`; the BSDs use `timingsafe_bcmp`).
pub fn verify_digest(
    password: &[u8],
    vhid: u8,
    vips4: &[Ipv4Addr],
    vips6: &[Ipv6Addr],
    counter: u64,
    received: &[u8; DIGEST_LEN],
) -> bool {
    keyed_mac(password, vhid, vips4, vips6, counter)
        .verify_slice(received)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn sample() -> Repr {
        Repr::new_advert(1, 1, 0, 0x0102_0304_0506_0708, b"secret", &[VIP], &[])
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let r = sample();
        let bytes = r.to_bytes();
        assert_eq!(Repr::parse_bytes(&bytes), Ok(r));
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.version(), 2);
        assert_eq!(p.msg_type(), MessageType::Advertisement);
        assert_eq!(p.authlen(), 7);
    }

    /// Table: one field broken per row, the error that must come out.
    #[test]
    fn parse_rejects_each_bad_field() {
        let good = sample().to_bytes();
        type Mutate = fn(&mut Packet<&mut [u8]>);
        let cases: [(&str, Mutate, Error); 5] = [
            (
                "bad checksum",
                |p| p.set_checksum(p.checksum() ^ 1),
                Error::BadChecksum,
            ),
            (
                "version 3",
                |p| p.set_version_and_type(3, 1),
                Error::BadVersion(3),
            ),
            (
                "type 2",
                |p| p.set_version_and_type(2, 2),
                Error::BadType(2),
            ),
            ("authlen 6", |p| p.set_authlen(6), Error::BadAuthLen(6)),
            ("vhid 0", |p| p.set_vhid(0), Error::ZeroVhid),
        ];
        for (name, mutate, want) in cases {
            let mut buf = good;
            let mut p = Packet::new_checked(&mut buf[..]).unwrap();
            mutate(&mut p);
            if want != Error::BadChecksum {
                p.fill_checksum();
            }
            assert_eq!(Repr::parse_bytes(&buf), Err(want), "case {name}");
        }
    }

    #[test]
    fn short_buffers_are_truncated_not_panics() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Repr::parse_bytes(&vec![0; len]),
                Err(Error::Truncated { len })
            );
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut v = sample().to_bytes().to_vec();
        v.extend_from_slice(&[0xaa; 8]);
        assert_eq!(Repr::parse_bytes(&v), Ok(sample()));
    }

    #[test]
    fn digest_matches_protocol_md_recipe() {
        // docs/protocol.md §1, "Digest (HMAC-SHA1)": hmac_sha1(b"secret", b"\x02\x01\x01" + [10,77,0,1] + counter).
        let counter = 0x1122_3344_5566_7788u64;
        let mut msg = vec![2u8, 1, 1, 10, 77, 0, 1];
        msg.extend_from_slice(&counter.to_be_bytes());
        let mut m = <HmacSha1 as Mac>::new_from_slice(b"secret").unwrap();
        m.update(&msg);
        let want: [u8; 20] = m.finalize().into_bytes().into();
        assert_eq!(digest(b"secret", 1, &[VIP], &[], counter), want);
    }

    #[test]
    fn digest_of_an_ipv6_only_vhid_has_no_ipv4_part() {
        // FreeBSD's carp_hmac_prepare selects IPv4 addresses in a loop that
        // hashes nothing when the VHID has none, then the IPv6 ones: the
        // message is version ‖ type ‖ vhid ‖ IPv6 VIPs ‖ counter.
        let x: Ipv6Addr = "2001:db8::20".parse().unwrap();
        let y: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let counter = 42u64;
        let mut msg = vec![2u8, 1, 7];
        msg.extend_from_slice(&y.octets());
        msg.extend_from_slice(&x.octets());
        msg.extend_from_slice(&counter.to_be_bytes());
        let mut m = <HmacSha1 as Mac>::new_from_slice(b"secret").unwrap();
        m.update(&msg);
        let want: [u8; 20] = m.finalize().into_bytes().into();
        assert_eq!(digest(b"secret", 7, &[], &[x, y], counter), want);
        let r = Repr::new_advert(7, 1, 0, counter, b"secret", &[], &[x, y]);
        assert!(r.verify(b"secret", &[], &[y, x]));
        assert!(!r.verify(b"secret", &[VIP], &[x, y]));
    }

    #[test]
    fn digest_sorts_dedups_and_truncates_key() {
        let a = Ipv4Addr::new(10, 0, 0, 2);
        let b = Ipv4Addr::new(10, 0, 0, 1);
        let x: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let y: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            digest(b"pw", 9, &[a, b, a], &[x, y], 5),
            digest(b"pw", 9, &[b, a], &[y, x], 5)
        );
        // Only 20 key bytes count (CARP_KEY_LEN).
        assert_eq!(
            digest(b"0123456789abcdefghijXXXX", 9, &[a], &[], 5),
            digest(b"0123456789abcdefghijYY", 9, &[a], &[], 5)
        );
        assert_ne!(
            digest(b"0123456789abcdefghi", 9, &[a], &[], 5),
            digest(b"0123456789abcdefghij", 9, &[a], &[], 5)
        );
        // Each input matters.
        let base = digest(b"pw", 9, &[a], &[x], 5);
        assert_ne!(base, digest(b"pw", 8, &[a], &[x], 5));
        assert_ne!(base, digest(b"pw", 9, &[b], &[x], 5));
        assert_ne!(base, digest(b"pw", 9, &[a], &[y], 5));
        assert_ne!(base, digest(b"pw", 9, &[a], &[x], 6));
        assert_ne!(base, digest(b"pX", 9, &[a], &[x], 5));
    }

    #[test]
    fn verify_accepts_right_and_rejects_wrong() {
        let r = sample();
        assert!(r.verify(b"secret", &[VIP], &[]));
        assert!(!r.verify(b"secreT", &[VIP], &[]));
        assert!(!r.verify(b"secret", &[Ipv4Addr::new(10, 77, 0, 2)], &[]));
        let mut other = r;
        other.counter += 1;
        assert!(!other.verify(b"secret", &[VIP], &[]));
    }

    #[test]
    fn bow_out_and_interval() {
        let b = Repr::bow_out(3, 7, b"pw", &[VIP], &[]);
        assert!(b.is_bow_out());
        assert_eq!((b.advbase, b.advskew), (255, 255));
        assert_eq!(b.interval_256ths(), 255 * 256 + 255);
        assert!(b.verify(b"pw", &[VIP], &[]));
        let r = Repr::new_advert(3, 1, 100, 7, b"pw", &[VIP], &[]);
        assert_eq!(r.interval_256ths(), 356);
        assert!(!r.is_bow_out());
    }
}
