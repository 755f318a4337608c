//! Unicast peers in the shell (`crate::peers` has the rules): where an
//! advert goes, and the checks only the running system can make (a peer on
//! the VHID's link, not our own address) at start and on reload.
//!
//! A change of `peers` is a live per-VHID change (docs/design.md "Reload"):
//! every advert reads the VHID's peers when it is sent and every received
//! advert is judged with them, and each interface has its unicast socket from
//! the start, so nothing else has to move; the next advert goes the new way.
use super::*;

use crate::advert_plan::{self, PeerCopy};
use crate::peers;
use crate::wire::advert6;

/// An advert (or bow-out copy) that did not leave.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdvertSendError {
    /// A copy it must have has no source address (`advert_plan`).
    #[error(transparent)]
    NoSource(#[from] advert_plan::NoSource),
    /// To 224.0.0.18, through the packet socket.
    #[error("to 224.0.0.18: {0}")]
    Group(#[source] std::io::Error),
    /// To ff02::12, through the packet socket.
    #[error("to ff02::12: {0}")]
    Group6(#[source] std::io::Error),
    /// To the unicast peers (all must have it).
    #[error(transparent)]
    Peers(#[from] peers::FanOutError),
}

impl Iface {
    /// Its own addresses as the peer checks need them.
    fn link(&self) -> peers::Link<'_> {
        peers::Link {
            subnets: &self.subnets,
            own6: &self.ipv6.all,
            subnets6: &self.ipv6.subnets,
        }
    }

    /// Sends one advert of the VHID configured as `cfg`, the copies
    /// `advert_plan` gives: to the groups as whole frames from the virtual
    /// MAC (docs/protocol.md §1 "Frame", "Over IPv6": one counter for both
    /// copies), the IPv4 one only for a VHID with IPv4 VIPs and the IPv6 one
    /// only for a VHID with IPv6 VIPs; or with peers, as an IPv4 packet to
    /// each of them (a fresh IP id each; unicast stays IPv4). Every copy is
    /// tried; an error of any is the advert's, so the dead-man deadline
    /// moves only when all left (for an IPv6-only VHID: its IPv6 copy).
    pub(super) fn send_advert(
        &self,
        cfg: &VhidConfig,
        repr: &carp::Repr,
    ) -> Result<(), AdvertSendError> {
        let vhid = advert_plan::Vhid {
            has_v4: !cfg.addresses.is_empty(),
            has_v6: !cfg.addresses6.is_empty(),
            peers: &cfg.peers,
        };
        let sources = advert_plan::Sources {
            v4: self.own_ip,
            link_local: self.ipv6.link_local,
            subnets6: &self.ipv6.subnets,
        };
        let copies = advert_plan::plan(&vhid, &sources)?;
        let mut result = Ok(());
        let mut unicast = Vec::new();
        for copy in copies {
            let sent = match copy {
                advert_plan::Copy::Group4 { src } => {
                    let f = frame::advert_ipv4(vmac(cfg.id), src, repr, rand::random());
                    self.sender.send(&f).map_err(AdvertSendError::Group)
                }
                advert_plan::Copy::Group6 { src } => {
                    let f = advert6::advert_ipv6(vmac(cfg.id), src, repr);
                    self.sender.send(&f).map_err(AdvertSendError::Group6)
                }
                advert_plan::Copy::Peer(c) => {
                    unicast.push(c);
                    Ok(())
                }
            };
            result = result.and(sent);
        }
        if !unicast.is_empty() {
            let header = repr.to_bytes();
            let sent = peers::send_to_each(&unicast, PeerCopy::peer, |c| match c {
                PeerCopy::V4 { src, peer } => {
                    let p = frame::advert_ipv4_packet(src, peer, repr, rand::random());
                    self.unicast.send(&p, peer)
                }
                PeerCopy::V6 { src, peer } => self.unicast6.send(&header, src, peer),
            });
            result = result.and(sent.map_err(AdvertSendError::from));
        }
        result
    }
}

/// Every VHID's peers against its interface's subnets (as read at start,
/// VIPs excluded): the problems, with the VHID's place in `config`.
fn link_problems<'a>(
    config: &Config,
    link_of: impl Fn(&str) -> Option<peers::Link<'a>>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, v) in config.vhids.iter().enumerate() {
        if let Some(link) = link_of(&v.interface) {
            out.extend(peers::link_problems(
                &format!("vhid[{i}]"),
                &v.interface,
                &v.peers,
                &link,
            ));
        }
    }
    out
}

/// At start, once `interface`'s addresses are known: its VHIDs' peers must
/// be on the link. Stops the start with every problem (`carp check` cannot
/// see the interfaces).
pub(super) fn check_start(
    config: &Config,
    interface: &str,
    link: peers::Link<'_>,
) -> Result<(), config::Problems> {
    let problems = link_problems(config, |name| (name == interface).then_some(link));
    if !problems.is_empty() {
        return Err(config::Problems(problems));
    }
    for v in config.vhids.iter().filter(|v| v.interface == interface) {
        if !v.peers.is_empty() {
            tracing::info!(vhid = v.id, interface, peers = ?v.peers,
                "advertising unicast to the peers, accepting adverts from them only");
        }
    }
    Ok(())
}

impl Node {
    /// On reload: the new configuration's peers against the running
    /// interfaces (a VHID on an interface not running here is refused by the
    /// plan already).
    pub(super) fn peer_problems(&self, new: &Config) -> Vec<Problem> {
        link_problems(new, |name| {
            self.ifaces
                .iter()
                .find(|i| i.facts.name == name)
                .map(|i| i.link())
        })
    }
}
