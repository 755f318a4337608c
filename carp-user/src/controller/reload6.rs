//! The IPv6 half of a reload's VIP changes (`reload.rs` does IPv4): the
//! same order, so that no VIP is ever on the holder device without the XDP
//! program knowing it. New VIPs (or VIPs that moved to another VHID) go
//! into `VIPS6` first, then onto the holder; old ones leave the holder
//! first, then `VIPS6`.
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use super::*;

/// IPv6 VIP → VHID per interface, as the `VIPS6` maps hold them.
pub(super) type Maps6<'a> = BTreeMap<&'a str, BTreeMap<Ipv6Addr, u8>>;

impl Node {
    /// Adds what `new` has and `old` has not (or has on another VHID).
    pub(super) async fn add_vips6(&mut self, old: &Maps6<'_>, new: &Maps6<'_>) {
        for ifi in 0..self.ifaces.len() {
            let name = self.ifaces[ifi].facts.name.clone();
            let before = old.get(name.as_str());
            for (a, id) in new.get(name.as_str()).into_iter().flatten() {
                if before.and_then(|m| m.get(a)) != Some(id) {
                    if let Err(e) = self.ifaces[ifi].xdp.add_vip6(*a, *id) {
                        self.xdp_error(ifi, &format!("cannot add VIP {a}"), &e);
                    }
                }
            }
        }
        for a in all(new).difference(&all(old)) {
            if let Err(e) = self.netlink.add_address6(self.holder.index, *a).await {
                tracing::error!(error = %e, "reload: cannot add VIP {a} to the holder device");
            }
        }
    }

    /// Removes what `old` has and `new` has not.
    pub(super) async fn remove_vips6(&mut self, old: &Maps6<'_>, new: &Maps6<'_>) {
        for a in all(old).difference(&all(new)) {
            if let Err(e) = self.netlink.remove_address6(self.holder.index, *a).await {
                tracing::warn!(error = %e, "reload: cannot remove VIP {a} from the holder device");
            }
        }
        for ifi in 0..self.ifaces.len() {
            let name = self.ifaces[ifi].facts.name.clone();
            let fresh = new.get(name.as_str());
            for a in old.get(name.as_str()).into_iter().flat_map(|m| m.keys()) {
                if !fresh.is_some_and(|m| m.contains_key(a)) {
                    if let Err(e) = self.ifaces[ifi].xdp.remove_vip6(*a) {
                        self.xdp_error(ifi, &format!("cannot remove VIP {a}"), &e);
                    }
                }
            }
        }
    }
}

fn all(maps: &Maps6<'_>) -> BTreeSet<Ipv6Addr> {
    maps.values().flat_map(|m| m.keys().copied()).collect()
}
