//! The hooks' glue: a transition the election reports is handed to the
//! runner (`crate::hooks`), which queues it and returns at once; the hook
//! runs on a task of its own, never in the election's way.
use super::VhidRt;
use crate::election::State;
use crate::hooks::{Hooks, Transition};

/// Called where the controller logs a transition (`apply`). `reason` is the
/// election's (`Why::label`) or the controller's own (`split_brain`).
pub(super) fn on_transition(
    hooks: &Hooks,
    node: &str,
    v: &VhidRt,
    interface: &str,
    (from, to): (State, State),
    reason: &str,
) {
    let addresses: Vec<String> = v
        .cfg
        .addresses
        .iter()
        .map(ToString::to_string)
        .chain(v.cfg.addresses6.iter().map(ToString::to_string))
        .collect();
    hooks.transition(
        &v.cfg.hooks,
        &Transition {
            node,
            vhid: v.cfg.id,
            interface,
            from,
            to,
            reason,
            addresses: &addresses,
        },
    );
}
