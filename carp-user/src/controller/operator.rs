//! Operator commands applied to the running node (`crate::operator`): the
//! operator and maintenance demotions, and `carp disable|enable`.
//!
//! **Maintenance handover.** Maintenance is a demotion of 240, as OPNsense's
//! "Enter Persistent CARP Maintenance Mode". A MASTER told a new demotion
//! advertises its worse advskew at once (`election::Vhid`, FreeBSD's
//! `carp_demote_adj` → `carp_send_ad_all`); a peer with preempt takes over on
//! that advert, in the takeover order (its data path, then its advert, which
//! moves the switch's virtual-MAC entry, then gratuitous ARP); and our MASTER
//! entry stays until we hear that advert (a master steps back only on an
//! advert with an interval ≤ its own). So both nodes forward during the
//! handover (make-before-break), and, unlike a bow-out, nothing leaves the
//! old master after the peer took over: a bow-out's later copies come from
//! the virtual MAC and pull the switch back to the leaving node for a moment
//! (docs/NEXT.md, "Bow-outs"), which at 1 ms probing can cost a probe. The
//! limit is the BSDs' own: a peer without preempt does not take over from a
//! live master however demoted (`carp disable` bows out and always hands
//! over).

use std::path::PathBuf;

use crate::config::Config;
use crate::demotion::Demotion;
use crate::election::Event;
use crate::operator::{self, Command, OperatorState, Reply};
use crate::statefile::{self, Persistent};

use super::{now, Node, SYNC_DEMOTION};

/// The state file and the operator state a starting controller begins with:
/// maintenance as the file says. A file that cannot be read or parsed counts
/// as maintenance on (logged): a node that maybe should not carry traffic is
/// better demoted than not; `carp maintenance off` rewrites the file.
pub(super) fn load_state(config: &Config) -> (PathBuf, OperatorState) {
    let path = statefile::state_path(&config.node.state_dir, &config.node.control_socket);
    let maintenance = match statefile::load(&path) {
        Ok(state) => state.unwrap_or_default().maintenance,
        Err(e) => {
            tracing::error!(error = %e,
                "maintenance mode taken as on; `carp maintenance off` clears it");
            true
        }
    };
    if maintenance {
        tracing::warn!(file = %path.display(),
            "persistent CARP maintenance mode is on: the node is demoted by 240");
    }
    (
        path,
        OperatorState {
            maintenance,
            ..OperatorState::default()
        },
    )
}

impl Node {
    /// The node's demotion by reason; its total is what every VHID is told.
    pub(super) fn demotion_reasons(&self) -> Demotion {
        Demotion {
            link: self.link_demotion,
            sync: if self.sync_demoted { SYNC_DEMOTION } else { 0 },
            operator: self.op.demotion,
            maintenance: self.op.maintenance_demotion(),
        }
    }

    /// Applies one operator command and says what it did.
    pub(super) async fn operator(&mut self, command: Command) -> Reply {
        let (next, changed) = self.op.after(command);
        if changed.maintenance {
            // Written before anything changes: an operator told "on" must
            // find it on after a reboot, and a failed write changes nothing.
            statefile::store(
                &self.state_file,
                &Persistent {
                    maintenance: next.maintenance,
                },
            )
            .map_err(|e| format!("{e}; nothing changed"))?;
        }
        self.op = next;
        if changed.demotion {
            // The maintenance handover (module docs) is this demotion.
            self.update_demotion().await;
        }
        if changed.disabled {
            let ev = if next.disabled {
                Event::Disable
            } else {
                Event::Enable
            };
            let t = now();
            for i in 0..self.vhids.len() {
                let actions = self.vhids[i].machine.handle(t, ev);
                self.apply(i, actions).await;
            }
        }
        let demotion = self.demotion_reasons();
        let message = operator::describe(command, &self.op, changed, &demotion);
        tracing::info!(?command, %demotion, maintenance = self.op.maintenance,
            disabled = self.op.disabled, "operator: {message}");
        Ok(message)
    }
}
