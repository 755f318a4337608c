//! The advertisement over IPv6: the frame a VHID with IPv6 VIPs sends to
//! `ff02::12` next to its IPv4 one (docs/protocol.md §1 "Over IPv6"), and a
//! parser for received or captured ones.
//!
//! Header choices, checked against the sources:
//!
//! | field | FreeBSD `carp_send_ad_locked` | OpenBSD `carp_send_ad` | here |
//! |---|---|---|---|
//! | destination | `ff02::12` | `ff02::12` | `ff02::12` ([`CARP_GROUP_V6`]) |
//! | hop limit | 255 (`CARP_DFLTTL`) | 255 | 255 |
//! | next header | 112, no extension headers | 112 | 112 |
//! | traffic class | `carp_dscp << 2` (CS7) | 0 | 0 |
//! | source | `carp_best_ifa(AF_INET6)`: the first non-CARP IPv6 address of the interface, its link-local on an interface that got one first | the first IPv6 address of the interface | the interface's link-local address |
//! | Ethernet source | the virtual MAC | the virtual MAC | the virtual MAC |
//!
//! The link-local source is what VRRPv3 prescribes (RFC 5798 §5.1.2.1) and
//! what FreeBSD sends in the usual case; it needs no global address on the
//! CARP interface. The CARP header is the IPv4 advert's, byte for byte (the
//! checksum covers the CARP header only, no pseudo-header, in both
//! families: `in_cksum` over the 36 bytes in `carp_send_ad_locked`), so the
//! two copies of one advert differ only in their IP headers.
use std::net::Ipv6Addr;

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv6FlowLabel, Ipv6Header};

use super::carp::{self, Repr, HEADER_LEN};

pub use carp_common::CARP_GROUP_V6;

/// Ethernet multicast address of `ff02::12` (RFC 2464 §7: `33:33` and the
/// last four bytes of the group).
pub const CARP_GROUP_MAC_V6: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x12];
/// 14 + 40 + 36.
pub const ADVERT_IPV6_FRAME_LEN: usize = Ethernet2Header::LEN + Ipv6Header::LEN + HEADER_LEN;

/// Why a frame is not an IPv6 CARP advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame truncated: {len} bytes, need at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("EtherType {0:#06x} is not IPv6")]
    NotIpv6(u16),
    #[error("bad IPv6 header: {0}")]
    BadIpv6Header(#[source] etherparse::err::ipv6::HeaderSliceError),
    #[error("IPv6 payload length {payload_len} beyond the frame's {available} bytes")]
    BadPayloadLength {
        payload_len: usize,
        available: usize,
    },
    #[error("IPv6 next header {0} is not CARP (112)")]
    NotCarp(u8),
    #[error(transparent)]
    Carp(#[from] carp::Error),
}

/// An IPv6 advertisement frame: from `src_mac` (the virtual MAC) and
/// `src_ip` (the interface's link-local address) to `ff02::12`, hop limit
/// 255, next header 112, traffic class and flow label 0.
pub fn advert_ipv6(src_mac: [u8; 6], src_ip: Ipv6Addr, carp: &Repr) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: src_mac,
        destination: CARP_GROUP_MAC_V6,
        ether_type: EtherType::IPV6,
    };
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: HEADER_LEN as u16,
        next_header: IpNumber(carp_common::IPPROTO_CARP),
        hop_limit: carp_common::CARP_TTL,
        source: src_ip.octets(),
        destination: CARP_GROUP_V6.octets(),
    };
    let mut out = Vec::with_capacity(ADVERT_IPV6_FRAME_LEN);
    out.extend_from_slice(&eth.to_bytes());
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&carp.to_bytes());
    out
}

/// What [`parse_ipv6_advert`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedAdvert6 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    /// Returned, not checked: the receiver drops and counts anything but 255.
    pub hop_limit: u8,
    pub carp: Repr,
}

/// Decodes an Ethernet II frame holding an IPv6 CARP advertisement (next
/// header 112 right after the fixed header, as every sender puts it; one
/// behind extension headers is [`Error::NotCarp`]). Checks the IPv6 header
/// and the CARP header ([`Repr::parse`]); not the digest, hop limit or
/// addresses, which are the caller's. Ethernet padding is ignored.
pub fn parse_ipv6_advert(frame: &[u8]) -> Result<ReceivedAdvert6, Error> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).map_err(|_| Error::Truncated {
        len: frame.len(),
        need: Ethernet2Header::LEN,
    })?;
    if eth.ether_type != EtherType::IPV6 {
        return Err(Error::NotIpv6(eth.ether_type.0));
    }
    let (ip, payload) = Ipv6Header::from_slice(rest).map_err(Error::BadIpv6Header)?;
    let payload_len = usize::from(ip.payload_length);
    let Some(payload) = payload.get(..payload_len) else {
        return Err(Error::BadPayloadLength {
            payload_len,
            available: payload.len(),
        });
    };
    if ip.next_header.0 != carp_common::IPPROTO_CARP {
        return Err(Error::NotCarp(ip.next_header.0));
    }
    let carp = Repr::parse_bytes(payload)?;
    Ok(ReceivedAdvert6 {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src_ip: ip.source_addr(),
        dst_ip: ip.destination_addr(),
        hop_limit: ip.hop_limit,
        carp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame;
    use carp_common::virtual_mac;
    use std::net::Ipv4Addr;

    const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0211, 0x22ff, 0xfe33, 0x4455);

    fn repr() -> Repr {
        Repr::new_advert(
            7,
            1,
            20,
            42,
            b"pw",
            &[Ipv4Addr::new(192, 0, 2, 1)],
            &["2001:db8::1".parse().unwrap()],
        )
    }

    /// The frame byte for byte, headers written out by hand, the CARP header
    /// taken from the IPv4 frame of the same advert (it must be the same).
    #[test]
    fn advert_frame_golden_bytes() {
        let f = advert_ipv6(virtual_mac(7), LINK_LOCAL, &repr());
        let mut want = vec![
            0x33, 0x33, 0x00, 0x00, 0x00, 0x12, // dst: ff02::12's MAC
            0x00, 0x00, 0x5e, 0x00, 0x01, 0x07, // src: vMAC of VHID 7
            0x86, 0xdd, // IPv6
            0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow 0
            0x00, 0x24, 112, 255, // payload 36, CARP, hop limit 255
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55, 0xff,
            0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12,
        ];
        let v4 = frame::advert_ipv4(virtual_mac(7), Ipv4Addr::new(192, 0, 2, 10), &repr(), 1);
        want.extend_from_slice(&v4[34..]);
        assert_eq!(f, want);
        assert_eq!(f.len(), ADVERT_IPV6_FRAME_LEN);
    }

    #[test]
    fn parse_of_emit_is_identity() {
        let f = advert_ipv6(virtual_mac(7), LINK_LOCAL, &repr());
        let back = parse_ipv6_advert(&f).unwrap();
        assert_eq!(
            back,
            ReceivedAdvert6 {
                src_mac: virtual_mac(7),
                dst_mac: CARP_GROUP_MAC_V6,
                src_ip: LINK_LOCAL,
                dst_ip: CARP_GROUP_V6,
                hop_limit: 255,
                carp: repr(),
            }
        );
        // Ethernet padding after the payload is ignored.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(parse_ipv6_advert(&padded).unwrap().carp, repr());
    }

    /// Table: a frame broken one way per row, the error that must come out.
    #[test]
    fn parse_rejects_bad_frames() {
        let good = advert_ipv6(virtual_mac(7), LINK_LOCAL, &repr());
        type Case = (&'static str, fn(&mut Vec<u8>), fn(&Error) -> bool);
        let cases: [Case; 6] = [
            (
                "short",
                |f| f.truncate(10),
                |e| matches!(e, Error::Truncated { .. }),
            ),
            (
                "ipv4 ethertype",
                |f| f[12..14].copy_from_slice(&[8, 0]),
                |e| *e == Error::NotIpv6(0x0800),
            ),
            (
                "version 4",
                |f| f[14] = 0x40,
                |e| matches!(e, Error::BadIpv6Header(_)),
            ),
            (
                "payload cut",
                |f| f.truncate(80),
                |e| {
                    matches!(
                        e,
                        Error::BadPayloadLength {
                            payload_len: 36,
                            available: 26
                        }
                    )
                },
            ),
            (
                "hop-by-hop header first",
                |f| f[20] = 0,
                |e| *e == Error::NotCarp(0),
            ),
            (
                "carp checksum",
                |f| f[60] ^= 1,
                |e| *e == Error::Carp(carp::Error::BadChecksum),
            ),
        ];
        for (name, mutate, ok) in cases {
            let mut f = good.clone();
            mutate(&mut f);
            let err = parse_ipv6_advert(&f).expect_err(name);
            assert!(ok(&err), "case {name}: got {err:?}");
        }
    }
}
