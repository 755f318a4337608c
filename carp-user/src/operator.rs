//! Operator commands: the buttons of OPNsense's CARP status page, as
//! `carp demote`, `carp maintenance` and `carp disable|enable`. Sans-IO: what
//! a command changes and what the operator is told; the controller
//! (`controller/operator.rs`) applies it to the VHIDs, and `statefile.rs`
//! keeps maintenance mode across restarts.
//!
//! | command | effect | survives |
//! |---|---|---|
//! | `demote +N / -N / reset` | operator demotion (0..=240), added to the node's demotion | nothing: a restarted controller starts at 0, as a rebooted BSD box's `net.inet.carp.demotion` |
//! | `maintenance on / off` | maintenance demotion 240 (OPNsense's "Persistent CARP Maintenance Mode") | restarts and reboots (the state file) |
//! | `disable / enable` | every VHID bows out where MASTER and stays INIT (silent) until enabled (OPNsense's "Temporarily Disable CARP", FreeBSD's `net.inet.carp.allow=0`) | nothing |

use serde::{Deserialize, Serialize};

use crate::demotion::{DemoteChange, Demotion};

/// One operator command, as the control socket hands it to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Demote(DemoteChange),
    Maintenance(bool),
    Disable,
    Enable,
}

/// The controller's answer: `Ok(message)` or `Err(reason)`, sent back as the
/// control socket's `{"ok"}` / `{"error"}` line.
pub type Reply = Result<String, String>;

/// A command on its way from the control socket's thread to the election's,
/// with the channel its answer goes back on.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// What the operator has set on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperatorState {
    /// `carp demote`: 0..=[`crate::demotion::OPERATOR_MAX`].
    pub demotion: u32,
    /// `carp maintenance on`: adds [`crate::demotion::MAINTENANCE_DEMOTION`].
    pub maintenance: bool,
    /// `carp disable`: every VHID INIT until `carp enable`.
    pub disabled: bool,
}

/// What applying a command changed, so the controller does only that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The operator or maintenance demotion moved: tell every VHID.
    pub demotion: bool,
    /// Maintenance flipped: write the state file first.
    pub maintenance: bool,
    /// Disabled flipped: `Event::Disable` / `Event::Enable` to every VHID.
    pub disabled: bool,
}

impl OperatorState {
    /// The state after `command`, and what differs from `self`.
    pub fn after(&self, command: Command) -> (OperatorState, Changed) {
        let mut next = *self;
        match command {
            Command::Demote(change) => next.demotion = change.apply(self.demotion),
            Command::Maintenance(on) => next.maintenance = on,
            Command::Disable => next.disabled = true,
            Command::Enable => next.disabled = false,
        }
        let changed = Changed {
            demotion: next.demotion != self.demotion || next.maintenance != self.maintenance,
            maintenance: next.maintenance != self.maintenance,
            disabled: next.disabled != self.disabled,
        };
        (next, changed)
    }

    /// The maintenance part of the node's demotion.
    pub fn maintenance_demotion(&self) -> u32 {
        if self.maintenance {
            crate::demotion::MAINTENANCE_DEMOTION
        } else {
            0
        }
    }
}

/// The message the operator gets once `command` has been applied: the new
/// state in words, and the node's demotion with its reasons.
pub fn describe(
    command: Command,
    state: &OperatorState,
    changed: Changed,
    demotion: &Demotion,
) -> String {
    match command {
        Command::Demote(_) => format!(
            "operator demotion {}; node demotion {demotion}",
            state.demotion
        ),
        Command::Maintenance(on) => {
            let what = match (on, changed.maintenance) {
                (true, true) => "maintenance mode on (persistent): a MASTER hands its VHIDs to a peer that preempts",
                (true, false) => "maintenance mode was already on",
                (false, true) => "maintenance mode off: a better node preempts its VHIDs back",
                (false, false) => "maintenance mode was already off",
            };
            format!("{what}; node demotion {demotion}")
        }
        Command::Disable if changed.disabled => {
            "CARP disabled: MASTER VHIDs bowed out; every VHID stays INIT (silent) until `carp enable`".into()
        }
        Command::Disable => "CARP was already disabled".into(),
        Command::Enable if changed.disabled => {
            "CARP enabled: every VHID is BACKUP again and takes part in the elections".into()
        }
        Command::Enable => "CARP was already enabled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demotion::DemoteChange;

    #[test]
    fn operator_commands_change_only_their_part() {
        let s = OperatorState::default();
        let (s, c) = s.after(Command::Demote(DemoteChange::By(50)));
        assert_eq!(s.demotion, 50);
        assert_eq!(
            c,
            Changed {
                demotion: true,
                ..Changed::default()
            }
        );
        let (s, c) = s.after(Command::Maintenance(true));
        assert!(s.maintenance && s.demotion == 50 && !s.disabled);
        assert_eq!(
            c,
            Changed {
                demotion: true,
                maintenance: true,
                disabled: false
            }
        );
        assert_eq!(s.maintenance_demotion(), 240);
        let (s, c) = s.after(Command::Maintenance(true));
        assert_eq!(c, Changed::default(), "already on: nothing to do");
        let (s, c) = s.after(Command::Disable);
        assert!(s.disabled);
        assert_eq!(
            c,
            Changed {
                disabled: true,
                ..Changed::default()
            }
        );
        let (s, c) = s.after(Command::Disable);
        assert_eq!(c, Changed::default());
        let (s, c) = s.after(Command::Enable);
        assert!(!s.disabled && c.disabled);
        let (s, c) = s.after(Command::Demote(DemoteChange::Reset));
        assert_eq!((s.demotion, c.demotion), (0, true));
        let (s, c) = s.after(Command::Demote(DemoteChange::By(-10)));
        assert_eq!((s.demotion, c.demotion), (0, false), "stays at 0");
        let (s, c) = s.after(Command::Maintenance(false));
        assert_eq!(s, OperatorState::default());
        assert!(c.maintenance && c.demotion);
    }

    #[test]
    fn operator_messages_say_what_happened() {
        let d = Demotion {
            operator: 50,
            ..Demotion::default()
        };
        let s = OperatorState {
            demotion: 50,
            ..OperatorState::default()
        };
        let cmd = Command::Demote(DemoteChange::By(50));
        assert_eq!(
            describe(cmd, &s, Changed::default(), &d),
            "operator demotion 50; node demotion 50 (operator 50)"
        );
        let on = Changed {
            maintenance: true,
            demotion: true,
            ..Changed::default()
        };
        assert!(describe(Command::Maintenance(true), &s, on, &d).starts_with("maintenance mode on"));
        assert!(
            describe(Command::Maintenance(true), &s, Changed::default(), &d)
                .starts_with("maintenance mode was already on")
        );
        assert!(
            describe(Command::Maintenance(false), &s, on, &d).starts_with("maintenance mode off")
        );
        let flip = Changed {
            disabled: true,
            ..Changed::default()
        };
        assert!(describe(Command::Disable, &s, flip, &d).starts_with("CARP disabled"));
        assert_eq!(
            describe(Command::Enable, &s, Changed::default(), &d),
            "CARP was already enabled"
        );
    }
}
