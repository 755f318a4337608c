//! Whole Ethernet frames around CARP: the advertisement as the sender puts it
//! on a raw `AF_PACKET` socket, the gratuitous ARP of a takeover, and a parser
//! for received or captured IPv4 advertisements.
//!
//! Header choices, checked against the sources (docs/protocol.md §1, §3):
//!
//! | field | OpenBSD `carp_send_ad` | FreeBSD `carp_send_ad_locked` | ucarp 1.5.2 (capture) | here |
//! |---|---|---|---|---|
//! | TOS | `IPTOS_LOWDELAY` (0x10) | `carp_dscp << 2`, default DSCP 56 = CS7 (0xe0) | 0x10 | 0x10 by default ([`ADVERT_TOS`]), any value via [`advert_ipv4_with_tos`] |
//! | id | `ip_randomid()` | `ip_fillid()` | per packet, random | caller's parameter |
//! | flags | DF | DF | DF | DF |
//! | TTL | 255 | 255 | 255 | 255 |
//!
//! No receiver looks at TOS, so either is interoperable; 0x10 is the default
//! because then our frames equal ucarp's and OpenBSD's byte for byte (the golden
//! test checks it against the capture).
//!
//! The Ethernet/IPv4/ARP headers are `etherparse`'s; only the choices are ours.

use std::net::Ipv4Addr;

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber,
    Ipv4Header, Ipv4HeaderSlice,
};

use super::carp::{self, Repr, HEADER_LEN};

/// 224.0.0.18, the CARP/VRRP group (`INADDR_CARP_GROUP`); TTL 255
/// (`CARP_DFLTTL`), and the virtual MAC `00:00:5e:00:01:VHID`: the data
/// path's constants, defined in carp-common.
pub use carp_common::{virtual_mac, CARP_GROUP_V4, CARP_TTL};
/// Ethernet multicast address of 224.0.0.18 (RFC 1112 §6.4 mapping).
pub const CARP_GROUP_MAC_V4: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
/// `IPTOS_LOWDELAY`, what OpenBSD and ucarp send.
pub const TOS_LOWDELAY: u8 = 0x10;
/// DSCP CS7 (56 << 2), what FreeBSD sends by default (`net.inet.carp.dscp`).
pub const TOS_CS7: u8 = 0xe0;
/// TOS of our advertisements (see the module table).
pub const ADVERT_TOS: u8 = TOS_LOWDELAY;
/// Ethernet broadcast.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

const IPV4_HEADER_LEN: usize = Ipv4Header::MIN_LEN;
/// 14 + 20 + 36.
pub const ADVERT_IPV4_FRAME_LEN: usize = Ethernet2Header::LEN + IPV4_HEADER_LEN + HEADER_LEN;
/// 14 + 28 (no padding: the NIC pads to 60 bytes).
pub const GRATUITOUS_ARP_FRAME_LEN: usize = Ethernet2Header::LEN + ArpEthIpv4Packet::LEN;

/// Why a frame is not an IPv4 CARP advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame truncated: {len} bytes, need at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("EtherType {0:#06x} is not IPv4")]
    NotIpv4(u16),
    #[error("bad IPv4 header: {0}")]
    BadIpv4Header(#[source] etherparse::err::ipv4::HeaderSliceError),
    #[error(
        "IPv4 total length {total_len} inconsistent with header {header_len} / frame {available}"
    )]
    BadIpv4Length {
        total_len: usize,
        header_len: usize,
        available: usize,
    },
    #[error("IPv4 header checksum mismatch")]
    BadIpv4Checksum,
    #[error("IPv4 fragment")]
    Fragment,
    #[error("IP protocol {0} is not CARP (112)")]
    NotCarp(u8),
    #[error(transparent)]
    Carp(#[from] carp::Error),
}

/// An IPv4 advertisement frame with the default TOS ([`ADVERT_TOS`]).
/// `src_mac` should be the virtual MAC, `src_ip` the node's own address on the
/// interface (never a VIP), `ip_id` a fresh random value per packet as the BSDs do.
pub fn advert_ipv4(src_mac: [u8; 6], src_ip: Ipv4Addr, carp: &Repr, ip_id: u16) -> Vec<u8> {
    advert_ipv4_with_tos(src_mac, src_ip, carp, ip_id, ADVERT_TOS)
}

/// [`advert_ipv4`] with an explicit TOS byte (e.g. [`TOS_CS7`] like FreeBSD).
pub fn advert_ipv4_with_tos(
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    carp: &Repr,
    ip_id: u16,
    tos: u8,
) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: src_mac,
        destination: CARP_GROUP_MAC_V4,
        ether_type: EtherType::IPV4,
    };
    let mut out = Vec::with_capacity(ADVERT_IPV4_FRAME_LEN);
    out.extend_from_slice(&eth.to_bytes());
    out.extend_from_slice(&advert_ipv4_header(src_ip, CARP_GROUP_V4, ip_id, tos).to_bytes());
    out.extend_from_slice(&carp.to_bytes());
    out
}

/// An advertisement as an IPv4 packet (no Ethernet header) to a unicast peer
/// (docs/protocol.md §1 "Unicast peers"), for a raw socket with `IP_HDRINCL`:
/// the same header as [`advert_ipv4`] but for the destination, so a unicast
/// advert differs from a multicast one only there (the digest does not cover
/// the IP header). The kernel resolves the peer's MAC and puts the interface
/// MAC as source.
pub fn advert_ipv4_packet(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, carp: &Repr, ip_id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(IPV4_HEADER_LEN + HEADER_LEN);
    out.extend_from_slice(&advert_ipv4_header(src_ip, dst_ip, ip_id, ADVERT_TOS).to_bytes());
    out.extend_from_slice(&carp.to_bytes());
    out
}

/// The IPv4 header of an advertisement (module table: DF, TTL 255, protocol 112).
fn advert_ipv4_header(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, ip_id: u16, tos: u8) -> Ipv4Header {
    let mut ip = Ipv4Header {
        // Shifts keep both in range, so the fallbacks are unreachable.
        dscp: IpDscp::try_new(tos >> 2).unwrap_or(IpDscp::ZERO),
        ecn: IpEcn::try_new(tos & 0x3).unwrap_or(IpEcn::ZERO),
        total_len: (IPV4_HEADER_LEN + HEADER_LEN) as u16,
        identification: ip_id,
        dont_fragment: true,
        time_to_live: CARP_TTL,
        protocol: IpNumber(carp_common::IPPROTO_CARP),
        source: src_ip.octets(),
        destination: dst_ip.octets(),
        ..Default::default()
    };
    ip.header_checksum = ip.calc_header_checksum();
    ip
}

/// The gratuitous ARP a new master broadcasts for each IPv4 VIP: an ARP
/// *request* with sender = target = VIP, sender hardware address = virtual MAC,
/// target hardware address zero, from the virtual MAC to broadcast. This is what
/// OpenBSD's `carp_send_arp` (`arprequest(ifp, &in, &in, enaddr)`) and FreeBSD's
/// (`arp_announce_ifaddr(..., LLADDR(&sc->sc_addr))`) send. ucarp differs: it
/// uses the interface's real MAC and puts it in the target hardware field too.
pub fn gratuitous_arp(vmac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: vmac,
        destination: BROADCAST_MAC,
        ether_type: EtherType::ARP,
    };
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: vmac,
        sender_ipv4: vip.octets(),
        target_mac: [0; 6],
        target_ipv4: vip.octets(),
    };
    let mut out = Vec::with_capacity(GRATUITOUS_ARP_FRAME_LEN);
    out.extend_from_slice(&eth.to_bytes());
    out.extend_from_slice(&arp.to_bytes());
    out
}

/// What [`parse_ipv4_advert`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedAdvert {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// Returned, not checked: the receiver drops and counts TTL != 255 itself.
    pub ttl: u8,
    pub carp: Repr,
}

/// Decode an Ethernet II frame holding an IPv4 CARP advertisement (no VLAN tag:
/// `AF_PACKET` hands frames with the tag stripped). Checks the IPv4 header
/// (version, lengths, checksum, no fragment, protocol 112) and the CARP header
/// ([`Repr::parse`]); not the digest, TTL or addresses, which need
/// configuration and are counted by the caller. Ethernet padding after the IPv4
/// total length is ignored.
pub fn parse_ipv4_advert(frame: &[u8]) -> Result<ReceivedAdvert, Error> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).map_err(|_| Error::Truncated {
        len: frame.len(),
        need: Ethernet2Header::LEN,
    })?;
    if eth.ether_type != EtherType::IPV4 {
        return Err(Error::NotIpv4(eth.ether_type.0));
    }
    let ip = Ipv4HeaderSlice::from_slice(rest).map_err(Error::BadIpv4Header)?;
    let header_len = ip.slice().len();
    let total_len = usize::from(ip.total_len());
    if total_len < header_len || total_len > rest.len() {
        return Err(Error::BadIpv4Length {
            total_len,
            header_len,
            available: rest.len(),
        });
    }
    let sum = etherparse::checksum::Sum16BitWords::new()
        .add_slice(ip.slice())
        .ones_complement();
    if sum != 0 {
        return Err(Error::BadIpv4Checksum);
    }
    if ip.is_fragmenting_payload() {
        return Err(Error::Fragment);
    }
    if ip.protocol().0 != carp_common::IPPROTO_CARP {
        return Err(Error::NotCarp(ip.protocol().0));
    }
    let payload = rest.get(header_len..total_len).unwrap_or(&[]);
    let carp = Repr::parse_bytes(payload)?;
    Ok(ReceivedAdvert {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src_ip: ip.source_addr(),
        dst_ip: ip.destination_addr(),
        ttl: ip.ttl(),
        carp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Repr {
        Repr::new_advert(7, 1, 20, 42, b"pw", &[Ipv4Addr::new(192, 0, 2, 1)], &[])
    }

    #[test]
    fn advert_frame_fields() {
        let src = Ipv4Addr::new(192, 0, 2, 10);
        let f = advert_ipv4(virtual_mac(7), src, &repr(), 0xbeef);
        assert_eq!(f.len(), ADVERT_IPV4_FRAME_LEN);
        assert_eq!(&f[0..6], &CARP_GROUP_MAC_V4);
        assert_eq!(&f[6..12], &virtual_mac(7));
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        assert_eq!(ip[0], 0x45, "version 4, IHL 5");
        assert_eq!(ip[1], TOS_LOWDELAY);
        assert_eq!(&ip[2..4], &56u16.to_be_bytes());
        assert_eq!(&ip[4..6], &[0xbe, 0xef]);
        assert_eq!(&ip[6..8], &[0x40, 0x00], "DF, no fragment offset");
        assert_eq!(ip[8], 255);
        assert_eq!(ip[9], 112);
        assert_eq!(&ip[12..16], &src.octets());
        assert_eq!(&ip[16..20], &[224, 0, 0, 18]);
        let back = parse_ipv4_advert(&f).unwrap();
        assert_eq!(back.carp, repr());
        assert_eq!(back.src_ip, src);
        assert_eq!(back.ttl, 255);

        let g = advert_ipv4_with_tos(virtual_mac(7), src, &repr(), 1, TOS_CS7);
        assert_eq!(g[15], 0xe0);
        assert!(parse_ipv4_advert(&g).is_ok());
    }

    /// A unicast advert is the multicast frame's IPv4 packet with another
    /// destination (and so another header checksum), nothing else.
    #[test]
    fn unicast_advert_packet_differs_only_in_the_destination() {
        let src = Ipv4Addr::new(192, 0, 2, 10);
        let peer = Ipv4Addr::new(192, 0, 2, 12);
        let p = advert_ipv4_packet(src, peer, &repr(), 0xbeef);
        let f = advert_ipv4(virtual_mac(7), src, &repr(), 0xbeef);
        assert_eq!(p.len(), 56);
        assert_eq!(&p[..10], &f[14..24]);
        assert_eq!(&p[12..16], &f[26..30]);
        assert_eq!(&p[16..20], &peer.octets());
        assert_eq!(&p[20..], &f[34..], "same CARP header, digest included");
        let ip = Ipv4HeaderSlice::from_slice(&p).unwrap().to_header();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        // Parsed as the receiver's frame parser sees it behind an Ethernet header.
        let mut framed = f[..14].to_vec();
        framed.extend_from_slice(&p);
        let back = parse_ipv4_advert(&framed).unwrap();
        assert_eq!((back.dst_ip, back.ttl, back.carp), (peer, 255, repr()));
    }

    #[test]
    fn gratuitous_arp_bytes() {
        let f = gratuitous_arp(virtual_mac(3), Ipv4Addr::new(10, 0, 0, 1));
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst broadcast
            0x00, 0x00, 0x5e, 0x00, 0x01, 0x03, // src vMAC
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
            0x00, 0x00, 0x5e, 0x00, 0x01, 0x03, 10, 0, 0, 1, // sender
            0, 0, 0, 0, 0, 0, 10, 0, 0, 1, // target
        ];
        assert_eq!(f, want);
    }

    /// Table: a frame broken one way per row, the error that must come out.
    #[test]
    fn parse_rejects_bad_frames() {
        let good = advert_ipv4(virtual_mac(7), Ipv4Addr::new(192, 0, 2, 10), &repr(), 9);
        let refill_ip_sum = |f: &mut Vec<u8>| {
            f[24] = 0;
            f[25] = 0;
            let s = etherparse::checksum::Sum16BitWords::new()
                .add_slice(&f[14..34])
                .ones_complement()
                .to_be();
            f[24..26].copy_from_slice(&s.to_be_bytes());
        };
        type Case = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, fn(&Error) -> bool);
        let cases: Vec<Case> = vec![
            ("short", Box::new(|f| f.truncate(10)), |e| {
                matches!(e, Error::Truncated { .. })
            }),
            ("ipv6 ethertype", Box::new(|f| f[12] = 0x86), |e| {
                matches!(e, Error::NotIpv4(0x86_00))
            }),
            ("ip version 6", Box::new(|f| f[14] = 0x65), |e| {
                matches!(e, Error::BadIpv4Header(_))
            }),
            ("ip checksum", Box::new(|f| f[24] ^= 1), |e| {
                *e == Error::BadIpv4Checksum
            }),
            ("payload cut", Box::new(|f| f.truncate(60)), |e| {
                matches!(e, Error::BadIpv4Length { .. })
            }),
            (
                "vrrp-like proto",
                Box::new(move |f| {
                    f[23] = 17;
                    refill_ip_sum(f)
                }),
                |e| *e == Error::NotCarp(17),
            ),
            (
                "fragment",
                Box::new(move |f| {
                    f[20] = 0x20;
                    refill_ip_sum(f)
                }),
                |e| *e == Error::Fragment,
            ),
            ("carp checksum", Box::new(|f| f[40] ^= 1), |e| {
                *e == Error::Carp(carp::Error::BadChecksum)
            }),
        ];
        for (name, mutate, ok) in cases {
            let mut f = good.clone();
            mutate(&mut f);
            let err = parse_ipv4_advert(&f).expect_err(name);
            assert!(ok(&err), "case {name}: got {err:?}");
        }
        // Ethernet padding after the IP total length is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(parse_ipv4_advert(&padded).unwrap().carp, repr());
    }
}
