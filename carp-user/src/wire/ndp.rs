//! The unsolicited Neighbor Advertisement a new MASTER sends for each IPv6
//! VIP on takeover (RFC 4861 §7.2.6), the IPv6 counterpart of
//! [`super::frame::gratuitous_arp`]. The ICMPv6 message itself is
//! `carp_common::ndp::neighbor_advert`, the same bytes the XDP program
//! answers a solicitation with.
use std::net::Ipv6Addr;

use carp_common::ndp::{self, ALL_NODES, ALL_NODES_MAC, NA_LEN, NDP_HOP_LIMIT};

/// EtherType of IPv6.
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// Ethernet (14) + IPv6 (40) + the advertisement with its option (32).
pub const UNSOLICITED_NA_FRAME_LEN: usize = 14 + 40 + NA_LEN;

/// The unsolicited advertisement for `vip` from the virtual MAC `vmac`: to
/// all-nodes `ff02::1` (`33:33:00:00:00:01`) from the VIP, hop limit 255,
/// flags Router and Override (Solicited 0: nobody asked), and `vmac` as
/// Target Link-Layer Address, so every neighbour's cache entry for the VIP
/// points at the virtual MAC again. FreeBSD's carp sends the same
/// (`carp_send_na`: Override, and Router when forwarding).
pub fn unsolicited_na(vmac: [u8; 6], vip: Ipv6Addr) -> Vec<u8> {
    let src = vip.octets();
    let na = ndp::neighbor_advert(
        &src,
        &ALL_NODES,
        &src,
        vmac,
        ndp::NA_ROUTER | ndp::NA_OVERRIDE,
    );
    let mut out = Vec::with_capacity(UNSOLICITED_NA_FRAME_LEN);
    out.extend_from_slice(&ALL_NODES_MAC);
    out.extend_from_slice(&vmac);
    out.extend_from_slice(&ETHERTYPE_IPV6);
    // Version 6, traffic class 0, flow label 0.
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(NA_LEN as u16).to_be_bytes());
    out.extend_from_slice(&[ndp::IPPROTO_ICMPV6, NDP_HOP_LIMIT]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ALL_NODES);
    out.extend_from_slice(&na);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carp_common::virtual_mac;

    #[test]
    fn unsolicited_na_bytes() {
        let vip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = unsolicited_na(virtual_mac(3), vip);
        let vip_bytes = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut want = vec![
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, // dst all-nodes
            0x00, 0x00, 0x5e, 0x00, 0x01, 0x03, // src vMAC
            0x86, 0xdd, // IPv6
            0x60, 0x00, 0x00, 0x00, // version 6
            0x00, 0x20, 58, 255, // payload 32, ICMPv6, hop limit 255
        ];
        want.extend_from_slice(&vip_bytes); // source: the VIP
        want.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[136, 0, 0x1c, 0x28]); // NA, code 0, checksum
        want.extend_from_slice(&[0xa0, 0, 0, 0]); // Router, Override
        want.extend_from_slice(&vip_bytes); // target
        want.extend_from_slice(&[2, 1, 0x00, 0x00, 0x5e, 0x00, 0x01, 0x03]); // TLLA
        assert_eq!(f, want);
        assert_eq!(f.len(), UNSOLICITED_NA_FRAME_LEN);
    }
}
