//! Which copies of one advert leave, and from which source address: the
//! rule, without the sockets (`controller/unicast.rs` sends what this
//! plans). Docs: docs/protocol.md §1 "Over IPv6" and "Unicast peers".
//!
//! The BSDs send a family's copy only when the VHID has addresses of that
//! family (FreeBSD `carp_send_ad_locked`: `if (sc->sc_naddrs)` for IPv4,
//! `if (sc->sc_naddrs6)` for IPv6): a VHID with IPv4 VIPs only sends to
//! 224.0.0.18, one with IPv6 VIPs only to `ff02::12`, a dual-stack one to
//! both, with one counter. A VHID with unicast peers sends to each peer
//! instead, in the peer's family, and to no group.
//!
//! What counts as "sent" for the dead-man deadline (`deadman.rs`) follows:
//! every planned copy must leave. A copy that has no source is an error,
//! except the IPv6 copy of a dual-stack VHID on a link without a link-local
//! address (IPv6 off on the link: warned at start), which is left out: its
//! IPv4 copy still reaches every peer. For an IPv6-only VHID the IPv6 copy
//! is the advert, so without a link-local address nothing is sent and the
//! MASTER entry is let expire.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::accept::{is_link_local6, Subnet6};

/// One copy of an advert: where it goes and its IP source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// To 224.0.0.18, a whole frame from the virtual MAC.
    Group4 { src: Ipv4Addr },
    /// To `ff02::12`, a whole frame from the virtual MAC.
    Group6 { src: Ipv6Addr },
    /// To one unicast peer.
    Peer(PeerCopy),
}

/// A copy to one unicast peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCopy {
    /// Through the raw IPv4 socket.
    V4 { src: Ipv4Addr, peer: Ipv4Addr },
    /// Through the raw IPv6 socket.
    V6 { src: Ipv6Addr, peer: Ipv6Addr },
}

impl PeerCopy {
    pub fn peer(self) -> IpAddr {
        match self {
            PeerCopy::V4 { peer, .. } => IpAddr::V4(peer),
            PeerCopy::V6 { peer, .. } => IpAddr::V6(peer),
        }
    }
}

/// What of a VHID decides its copies.
#[derive(Debug, Clone, Copy)]
pub struct Vhid<'a> {
    /// It has IPv4 VIPs.
    pub has_v4: bool,
    /// It has IPv6 VIPs.
    pub has_v6: bool,
    /// Its unicast peers, of either family.
    pub peers: &'a [IpAddr],
}

/// The interface's own addresses that can be an advert's source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// Its first own IPv4 address (VIPs excluded); none on an interface
    /// without IPv4.
    pub v4: Option<Ipv4Addr>,
    /// Its link-local address; none with IPv6 off on the link.
    pub link_local: Option<Ipv6Addr>,
    /// Its other IPv6 addresses with their prefixes: the source for a
    /// global (or unique-local) IPv6 peer is ours on the peer's prefix.
    pub subnets6: &'a [Subnet6],
}

impl Sources<'_> {
    /// The source for IPv6 peer `peer`: the address the peer lists for us
    /// when both sides list the same kind (link-local for a link-local peer,
    /// ours on its prefix for a global one), which its `not_peer` check
    /// needs.
    fn for_peer6(&self, peer: Ipv6Addr) -> Result<Ipv6Addr, NoSource> {
        if is_link_local6(peer) {
            return self.link_local.ok_or(NoSource::LinkLocal);
        }
        self.subnets6
            .iter()
            .find(|s| s.contains(peer))
            .map(|s| s.addr)
            .ok_or(NoSource::Prefix6(peer))
    }
}

/// A copy that must leave has no source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoSource {
    #[error("the interface has no IPv4 address of its own to send the IPv4 advert from")]
    Ipv4,
    #[error("the interface has no IPv6 link-local address to send the IPv6 advert from (IPv6 off, or the link has not come up with one)")]
    LinkLocal,
    #[error("the interface has no IPv6 address of its own on the prefix of peer {0} to send the IPv6 advert from")]
    Prefix6(Ipv6Addr),
}

/// The copies of one advert of `vhid` sent from `src` (module docs), in
/// sending order: IPv4 first, as the BSDs send them.
pub fn plan(vhid: &Vhid, src: &Sources) -> Result<Vec<Copy>, NoSource> {
    let mut out = Vec::new();
    if !vhid.peers.is_empty() {
        // IPv4 first, then IPv6, each in the order configured.
        for &peer in vhid.peers {
            if let IpAddr::V4(peer) = peer {
                let src = src.v4.ok_or(NoSource::Ipv4)?;
                out.push(Copy::Peer(PeerCopy::V4 { src, peer }));
            }
        }
        for &peer in vhid.peers {
            if let IpAddr::V6(peer) = peer {
                out.push(Copy::Peer(PeerCopy::V6 {
                    src: src.for_peer6(peer)?,
                    peer,
                }));
            }
        }
        return Ok(out);
    }
    if vhid.has_v4 {
        out.push(Copy::Group4 {
            src: src.v4.ok_or(NoSource::Ipv4)?,
        });
    }
    if vhid.has_v6 {
        match src.link_local {
            Some(s) => out.push(Copy::Group6 { src: s }),
            // The IPv4 copy carries the advert (module docs).
            None if vhid.has_v4 => {}
            None => return Err(NoSource::LinkLocal),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
    const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11);
    const GLOBAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x11);
    const PEER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
    const PEER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x12);
    const PEER_GLOBAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x12);
    const SUBNETS6: &[Subnet6] = &[Subnet6::new(GLOBAL, 64)];
    const BOTH: Sources = Sources {
        v4: Some(V4),
        link_local: Some(LL),
        subnets6: SUBNETS6,
    };

    fn vhid(has_v4: bool, has_v6: bool) -> Vhid<'static> {
        Vhid {
            has_v4,
            has_v6,
            peers: &[],
        }
    }

    #[test]
    fn a_family_is_sent_only_with_addresses_of_that_family() {
        assert_eq!(
            plan(&vhid(true, false), &BOTH),
            Ok(vec![Copy::Group4 { src: V4 }])
        );
        assert_eq!(
            plan(&vhid(true, true), &BOTH),
            Ok(vec![Copy::Group4 { src: V4 }, Copy::Group6 { src: LL }])
        );
        // IPv6-only: no IPv4 copy, even with an IPv4 address on the link.
        assert_eq!(
            plan(&vhid(false, true), &BOTH),
            Ok(vec![Copy::Group6 { src: LL }])
        );
    }

    #[test]
    fn an_ipv6_only_vhid_needs_no_ipv4_address_but_its_link_local() {
        let v6_only = Sources { v4: None, ..BOTH };
        assert_eq!(
            plan(&vhid(false, true), &v6_only),
            Ok(vec![Copy::Group6 { src: LL }])
        );
        assert_eq!(plan(&vhid(true, true), &v6_only), Err(NoSource::Ipv4));
        let v4_only = Sources {
            link_local: None,
            ..BOTH
        };
        // Nothing would leave: an error, so the dead-man deadline stays.
        assert_eq!(plan(&vhid(false, true), &v4_only), Err(NoSource::LinkLocal));
        // Dual-stack: the IPv4 copy is the advert.
        assert_eq!(
            plan(&vhid(true, true), &v4_only),
            Ok(vec![Copy::Group4 { src: V4 }])
        );
    }

    #[test]
    fn peers_replace_the_groups_each_in_its_family() {
        let peers = [
            IpAddr::V6(PEER_GLOBAL),
            IpAddr::V4(PEER4),
            IpAddr::V6(PEER_LL),
        ];
        let v = Vhid {
            has_v4: true,
            has_v6: true,
            peers: &peers,
        };
        // IPv4 first; a link-local peer from the link-local address, a
        // global one from ours on its prefix.
        assert_eq!(
            plan(&v, &BOTH),
            Ok(vec![
                Copy::Peer(PeerCopy::V4 {
                    src: V4,
                    peer: PEER4
                }),
                Copy::Peer(PeerCopy::V6 {
                    src: GLOBAL,
                    peer: PEER_GLOBAL
                }),
                Copy::Peer(PeerCopy::V6 {
                    src: LL,
                    peer: PEER_LL
                }),
            ])
        );
        let only6 = [IpAddr::V6(PEER_LL)];
        let v6 = Vhid {
            has_v4: false,
            has_v6: true,
            peers: &only6,
        };
        assert_eq!(
            plan(&v6, &Sources { v4: None, ..BOTH }),
            Ok(vec![Copy::Peer(PeerCopy::V6 {
                src: LL,
                peer: PEER_LL
            })])
        );
        let no_ll = Sources {
            link_local: None,
            ..BOTH
        };
        assert_eq!(plan(&v6, &no_ll), Err(NoSource::LinkLocal));
        let off = [IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 0x12,
        ))];
        assert_eq!(
            plan(&Vhid { peers: &off, ..v6 }, &BOTH),
            Err(NoSource::Prefix6(Ipv6Addr::new(
                0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 0x12
            )))
        );
        let only4 = [IpAddr::V4(PEER4)];
        assert_eq!(
            plan(&Vhid { peers: &only4, ..v }, &Sources { v4: None, ..BOTH }),
            Err(NoSource::Ipv4)
        );
    }
}
