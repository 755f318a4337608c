//! Reload (SIGHUP) as the controller applies it: read and check the file
//! again, refuse it as a whole or apply the plan that [`crate::reload`]
//! computed per VHID (in the start order for what is added, the stop order
//! for what is removed). Beside the pure planning in `reload.rs`; here is the
//! part that touches the kernel.
use super::*;

impl Node {
    /// SIGHUP: re-read the config file and apply it, or refuse it and keep
    /// everything as it is (module docs).
    pub(super) async fn reload(&mut self, path: &Path) {
        tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
        let checked = match config::load(path) {
            Ok(c) => c,
            Err(problems) => {
                for p in &problems.0 {
                    tracing::error!(field = %p.field, "config reload refused: {p}");
                }
                tracing::error!(
                    problems = problems.0.len(),
                    "config reload refused: the running configuration is kept"
                );
                self.metrics.config_reload(ReloadResult::Refused);
                return;
            }
        };
        for w in &checked.warnings {
            tracing::warn!(field = %w.field, "config warning: {w}");
        }
        let new = checked.config;
        let refuse = |problems: &[Problem], metrics: &Metrics| {
            for p in problems {
                tracing::error!(field = %p.field, "config reload refused: {p}");
            }
            tracing::error!(
                problems = problems.len(),
                "config reload refused: the running configuration is kept"
            );
            metrics.config_reload(ReloadResult::Refused);
        };
        let plan = match plan_reload(&self.config, &new) {
            Ok(plan) => plan,
            Err(problems) => return refuse(&problems, &self.metrics),
        };
        // A VIP may not be a CARP interface's own address: that address is the
        // advert source chosen at start (and would be answered by two nodes).
        let own = self.own_address_problems(&new);
        if !own.is_empty() {
            return refuse(&own, &self.metrics);
        }
        // Unicast peers on the running interfaces' links (`unicast.rs`).
        let peers = self.peer_problems(&new);
        if !peers.is_empty() {
            return refuse(&peers, &self.metrics);
        }
        if plan.is_empty() {
            tracing::info!("config reloaded: no change");
            self.metrics.config_reload(ReloadResult::Applied);
            return;
        }
        self.apply_plan(&new, &plan).await;
        self.config = new;
        // A changed advbase (or a new VHID) changes how far its MASTER
        // deadline may reach towards the backup's takeover (deadman.rs).
        self.apply_backup_timings();
        self.metrics.config_reload(ReloadResult::Applied);
        for line in plan.summary() {
            tracing::info!("config reloaded: {line}");
        }
    }

    fn own_address_problems(&self, new: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, v) in new.vhids.iter().enumerate() {
            // An interface that started without IPv4 has no source for IPv4
            // adverts, and its ARP sysctls were left alone.
            if let Some(iface) = self
                .ifaces
                .iter()
                .find(|f| f.facts.name == v.interface && f.own_ip.is_none())
            {
                if !v.addresses.is_empty() {
                    out.push(Problem {
                        field: format!("vhid[{i}].addresses"),
                        reason: format!(
                            "{} had no IPv4 address of its own at start, the source IPv4 adverts need: IPv4 VIPs on it need a restart",
                            iface.facts.name
                        ),
                    });
                }
            }
            for (j, a) in v.addresses.iter().enumerate() {
                if let Some(iface) = self.ifaces.iter().find(|f| f.own_ip == Some(a.addr())) {
                    out.push(Problem {
                        field: format!("vhid[{i}].addresses[{j}]"),
                        reason: format!(
                            "{} is {}'s own address, its advertisement source: needs a restart",
                            a.addr(),
                            iface.facts.name
                        ),
                    });
                }
            }
        }
        out
    }

    /// Applies a checked plan. Removed VHIDs go first (bow-out, data path,
    /// filter), then changed ones, then added ones get their INIT entry and
    /// filter; VIPs then follow the start order (XDP map, then holder) for new
    /// ones and the stop order (holder, then XDP map) for old ones; added
    /// elections start last, when their VIPs are guarded. Kernel errors are
    /// logged and the rest goes on, as in `apply`.
    async fn apply_plan(&mut self, new: &Config, plan: &ReloadPlan) {
        let t = now();
        let running = self.config.clone();
        let old_maps = vip_maps(&running);
        let new_maps = vip_maps(new);
        let old_all: BTreeSet<Ipv4Addr> =
            old_maps.values().flat_map(|m| m.keys().copied()).collect();
        let new_all: BTreeSet<Ipv4Addr> =
            new_maps.values().flat_map(|m| m.keys().copied()).collect();
        let (old_maps6, new_maps6) = (vip6_maps(&running), vip6_maps(new));

        for v in &plan.removed {
            let Some(i) = self.vhid_index(&v.interface, v.id) else {
                continue;
            };
            if self.vhids[i].machine.state() == State::Master && !self.vhids[i].machine.is_leaving()
            {
                // Bow out so the backup takes over at once instead of after a
                // master-down interval (docs/protocol.md §2, "Bow-out").
                self.apply(i, [Action::SendBowOut]).await;
            }
            let ifi = self.vhids[i].iface;
            if let Err(e) = self.ifaces[ifi].xdp.clear_vhid(v.id) {
                self.xdp_error(ifi, "cannot clear the data-path entry", &e);
            }
            if let Err(e) = self
                .netlink
                .remove_unicast_filter(self.ifaces[ifi].facts.index, vmac(v.id))
                .await
            {
                tracing::warn!(error = %e, "reload: cannot remove the unicast filter entry");
            }
            self.metrics.remove_vhid(v.id, &self.ifaces[ifi].facts.name);
            self.vhids.remove(i);
        }

        let mut announce = Vec::new();
        for (old, n) in &plan.changed {
            let Some(i) = self.vhid_index(&n.interface, n.id) else {
                continue;
            };
            let v = &mut self.vhids[i];
            v.cfg = n.clone();
            v.vips = vips_of(n);
            v.vips6 = vips6_of(n);
            let actions = v.machine.reconfigure(t, election_params(n));
            let ifname = &self.ifaces[v.iface].facts.name;
            self.metrics.set_advbase(n.id, ifname, n.advbase.duration());
            if v.machine.state() == State::Master
                && (n.addresses.iter().any(|a| !old.addresses.contains(a))
                    || n.addresses6.iter().any(|a| !old.addresses6.contains(a)))
            {
                announce.push(i);
            }
            self.apply(i, actions).await;
        }

        let mut added = Vec::new();
        for n in &plan.added {
            let Some(ifi) = self.iface_index(&n.interface) else {
                continue;
            };
            if let Err(e) = self.ifaces[ifi]
                .xdp
                .set_vhid(n.id, VhidEntry::new(VhidState::Init, 0))
            {
                self.xdp_error(ifi, "cannot write the INIT entry", &e);
            }
            if let Err(e) = self
                .netlink
                .add_unicast_filter(self.ifaces[ifi].facts.index, vmac(n.id))
                .await
            {
                tracing::error!(error = %e, "reload: cannot add the unicast filter entry");
            }
            self.metrics.add_vhid(n.id, &self.ifaces[ifi].facts.name);
            self.metrics
                .set_advbase(n.id, &self.ifaces[ifi].facts.name, n.advbase.duration());
            self.vhids.push(VhidRt::new(n, ifi));
            added.push(self.vhids.len() - 1);
        }

        // New VIPs (or VIPs that moved to another VHID): XDP first, then holder.
        for ifi in 0..self.ifaces.len() {
            let name = self.ifaces[ifi].facts.name.clone();
            let old = old_maps.get(name.as_str());
            for (a, id) in new_maps.get(name.as_str()).into_iter().flatten() {
                if old.and_then(|m| m.get(a)) != Some(id) {
                    if let Err(e) = self.ifaces[ifi].xdp.add_vip(*a, *id) {
                        self.xdp_error(ifi, &format!("cannot add VIP {a}"), &e);
                    }
                }
            }
        }
        for a in new_all.difference(&old_all) {
            if let Err(e) = self.netlink.add_address(self.holder.index, *a, 32).await {
                tracing::error!(error = %e, "reload: cannot add VIP {a} to the holder device");
            }
        }
        self.add_vips6(&old_maps6, &new_maps6).await;
        // Old VIPs: holder first, then XDP.
        for a in old_all.difference(&new_all) {
            if let Err(e) = self.netlink.remove_address(self.holder.index, *a, 32).await {
                tracing::warn!(error = %e, "reload: cannot remove VIP {a} from the holder device");
            }
        }
        for ifi in 0..self.ifaces.len() {
            let name = self.ifaces[ifi].facts.name.clone();
            let fresh = new_maps.get(name.as_str());
            for a in old_maps
                .get(name.as_str())
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if !fresh.is_some_and(|m| m.contains_key(a)) {
                    if let Err(e) = self.ifaces[ifi].xdp.remove_vip(*a) {
                        self.xdp_error(ifi, &format!("cannot remove VIP {a}"), &e);
                    }
                }
            }
        }

        self.remove_vips6(&old_maps6, &new_maps6).await;

        for i in announce {
            self.apply(i, [Action::Announce]).await;
        }
        let t = now();
        for i in added {
            let ifi = self.vhids[i].iface;
            let mut events = Vec::new();
            if !self.ifaces[ifi].facts.up {
                events.push(Event::LinkDown);
            }
            if self.demotion != 0 {
                events.push(Event::SetDemotion(self.demotion));
            }
            // `carp disable` covers VHIDs added while it is in force.
            if self.op.disabled {
                events.push(Event::Disable);
            }
            events.push(Event::Start);
            for ev in events {
                let actions = self.vhids[i].machine.handle(t, ev);
                self.apply(i, actions).await;
            }
        }
    }
}
