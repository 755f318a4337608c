//! Unicast peers in the shell (`crate::peers` has the rules): where an
//! advert goes, and the checks only the running system can make (a peer on
//! the VHID's link, not our own address) at start and on reload.
//!
//! A change of `peers` is a live per-VHID change (docs/design.md "Reload"):
//! every advert reads the VHID's peers when it is sent and every received
//! advert is judged with them, and each interface has its unicast socket from
//! the start, so nothing else has to move; the next advert goes the new way.
use super::*;

use crate::peers;
use crate::wire::advert6;

/// An advert (or bow-out copy) that did not leave.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdvertSendError {
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
    /// Sends one advert of the VHID configured as `cfg`: to the group, as a
    /// whole frame from the virtual MAC (docs/protocol.md §1 "Frame"), and,
    /// for a VHID with IPv6 VIPs, the same CARP header once more to
    /// `ff02::12` from the link-local address ("Over IPv6": one counter for
    /// both copies); or with peers, as an IPv4 packet to each of them (a
    /// fresh IP id each; unicast stays IPv4). Both copies are tried; an
    /// error of either is the advert's. Without a link-local address (IPv6
    /// off on the link) the IPv6 copy is left out, as warned at start.
    pub(super) fn send_advert(
        &self,
        cfg: &VhidConfig,
        repr: &carp::Repr,
    ) -> Result<(), AdvertSendError> {
        if cfg.peers.is_empty() {
            let f = frame::advert_ipv4(vmac(cfg.id), self.own_ip, repr, rand::random());
            let v4 = self.sender.send(&f).map_err(AdvertSendError::Group);
            let v6 = match self.ipv6.link_local {
                Some(src) if !cfg.addresses6.is_empty() => {
                    let f = advert6::advert_ipv6(vmac(cfg.id), src, repr);
                    self.sender.send(&f).map_err(AdvertSendError::Group6)
                }
                _ => Ok(()),
            };
            return v4.and(v6);
        }
        peers::send_to_each(&cfg.peers, |peer| {
            let p = frame::advert_ipv4_packet(self.own_ip, peer, repr, rand::random());
            self.unicast.send(&p, peer)
        })?;
        Ok(())
    }
}

/// Every VHID's peers against its interface's subnets (as read at start,
/// VIPs excluded): the problems, with the VHID's place in `config`.
fn link_problems<'a>(
    config: &Config,
    subnets_of: impl Fn(&str) -> Option<&'a [accept::Subnet]>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, v) in config.vhids.iter().enumerate() {
        if let Some(subnets) = subnets_of(&v.interface) {
            out.extend(peers::link_problems(
                &format!("vhid[{i}]"),
                &v.interface,
                &v.peers,
                subnets,
            ));
        }
    }
    out
}

/// At start, once `interface`'s subnets are known: its VHIDs' peers must be
/// on the link. Stops the start with every problem (`carp check` cannot see
/// the interfaces).
pub(super) fn check_start(
    config: &Config,
    interface: &str,
    subnets: &[accept::Subnet],
) -> Result<(), config::Problems> {
    let problems = link_problems(config, |name| (name == interface).then_some(subnets));
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
                .map(|i| i.subnets.as_slice())
        })
    }
}
