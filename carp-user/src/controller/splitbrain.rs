//! The split-brain glue: what the sync peers' hellos say goes into each
//! VHID's [`crate::splitbrain::Watch`], and its verdict is applied here (the
//! peer's advert handed to the election, a gratuitous ARP, the metric, the
//! hello's flag). The rules are in `crate::splitbrain`.
use super::*;
use crate::splitbrain::{Local, PeerSays, Step};

fn election_state(s: crate::wire::sync::VhidState) -> State {
    match s {
        crate::wire::sync::VhidState::Init => State::Init,
        crate::wire::sync::VhidState::Backup => State::Backup,
        crate::wire::sync::VhidState::Master => State::Master,
    }
}

impl Node {
    /// Runs after every wake-up of the event loop (the watches' deadlines are
    /// among the loop's timers). Without `[sync]` nothing is known of the peer:
    /// every alarm stays 0.
    pub(super) async fn check_split_brain(&mut self) {
        let t = now();
        // Live peers only: a quiet peer's last hello is no evidence.
        let (us, peers) = match &self.sync {
            Some(h) => {
                let st = h.status();
                let peers: Vec<(Ipv4Addr, bool, Time, Vec<crate::wire::sync::HelloVhid>)> = st
                    .peers
                    .into_iter()
                    .filter(|p| p.up)
                    .filter_map(|p| {
                        let ago = Duration::from_millis(p.last_heard_ms?);
                        let heard = Time(t.0.saturating_sub(u64::try_from(ago.as_nanos()).ok()?));
                        Some((p.address.parse().ok()?, p.split_brain, heard, p.vhids))
                    })
                    .collect();
                (st.local_address.parse::<Ipv4Addr>().ok(), peers)
            }
            None => (None, Vec::new()),
        };
        let policy = self.config.node.split_brain;
        for i in 0..self.vhids.len() {
            let v = &self.vhids[i];
            if v.stopped {
                continue;
            }
            let says: Vec<PeerSays> = peers
                .iter()
                .flat_map(|(address, holding, heard, vhids)| {
                    vhids
                        .iter()
                        .filter(|h| h.vhid == v.cfg.id)
                        .map(|h| PeerSays {
                            address: *address,
                            state: election_state(h.state),
                            advbase: h.advbase,
                            advskew: h.advskew,
                            holding: *holding,
                            heard: *heard,
                        })
                })
                .collect();
            let local = Local {
                state: v.machine.state(),
                leaving: v.machine.is_leaving(),
                base: v.machine.params().advbase,
                effective_advskew: v.machine.effective_advskew(),
                adverts_received: v.received,
                master_since: (v.machine.state() == State::Master)
                    .then_some(v.last_transition)
                    .flatten(),
            };
            let verdict = self.vhids[i].split.update(t, policy, us, &local, &says);
            if let Some(note) = verdict.note {
                let (id, ifname) = (
                    self.vhids[i].cfg.id,
                    &self.ifaces[self.vhids[i].iface].facts.name,
                );
                if verdict.alarm {
                    tracing::warn!(vhid = id, interface = %ifname, policy = %policy, "{note}");
                } else {
                    tracing::info!(vhid = id, interface = %ifname, "{note}");
                }
            }
            match verdict.step {
                Some(Step::Advert(advert)) => {
                    // The hello stands in for the advert that did not arrive: the
                    // election steps back (or re-arms its timer) by its own rules.
                    let stepping_back = local.state == State::Master;
                    let actions = self.vhids[i].machine.handle(t, Event::Advert(advert));
                    if stepping_back {
                        self.transition_reason = Some("split_brain");
                    }
                    self.apply(i, actions).await;
                    self.transition_reason = None;
                }
                Some(Step::Announce) => self.apply(i, [Action::Announce]).await,
                None => {}
            }
        }
        self.metrics.split_brain.publish(self.vhids.iter().map(|v| {
            (
                v.cfg.id,
                self.ifaces[v.iface].facts.name.clone(),
                v.split.alarm(),
            )
        }));
        if let Some(h) = &self.sync {
            h.set_split_brain(self.vhids.iter().any(|v| v.split.holding()));
        }
    }
}
