//! Link state of the CARP interfaces, sans-IO: what a link notification or a
//! fresh look at the kernel means for an interface the controller runs on.
//!
//! The controller never runs on with link state it cannot trust
//! (docs/design.md, "Link monitoring"):
//!
//! - notifications come from the RTMGRP_LINK group; when some were lost (the
//!   socket overran, ENOBUFS) or the stream ended, every CARP interface is read
//!   again and the differences are applied ([`reconcile`]); a stream that cannot
//!   be reopened stops the controller;
//! - interfaces believed down (or gone) are read again every
//!   [`RECHECK_INTERVAL`], so a missed link-up never leaves a VHID in INIT;
//! - a deleted interface is a link down (its VHIDs go INIT, the node demotion
//!   rises); one that comes back under the same name has a new ifindex and none
//!   of the XDP program, ring, unicast filter or sysctls: the controller stops
//!   in order and exits non-zero, naming it, so that its supervisor starts it
//!   again (re-attaching in place is not done).

use std::time::Duration;

use crate::netlink::LinkEvent;

/// How often interfaces believed down or gone are read again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What the controller believes about one CARP interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// False once the interface was deleted.
    pub present: bool,
}

/// What the kernel says about it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The link with the known index: `Some(usable)`, or `None` if gone.
    pub by_index: Option<bool>,
    /// The link with the known name, if any: (index, usable).
    pub by_name: Option<(u32, bool)>,
}

/// What happened to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Up,
    Down,
    /// Deleted: handled as a link down.
    Deleted,
    /// A new link with the interface's name (after a deletion).
    Replaced {
        new_index: u32,
    },
}

/// Changes one notification means, by interface position. An overrun means
/// none by itself: the caller reads everything again ([`reconcile`]).
pub fn on_event(known: &[Known], ev: &LinkEvent) -> Vec<(usize, Change)> {
    let mut out = Vec::new();
    match ev {
        LinkEvent::Changed { index, name, up } => {
            for (i, k) in known.iter().enumerate() {
                if k.present && k.index == *index {
                    if k.up != *up {
                        out.push((i, if *up { Change::Up } else { Change::Down }));
                    }
                } else if !k.present && k.index != *index && name.as_deref() == Some(&k.name) {
                    out.push((i, Change::Replaced { new_index: *index }));
                }
            }
        }
        LinkEvent::Deleted { index } => {
            for (i, k) in known.iter().enumerate() {
                if k.present && k.index == *index {
                    out.push((i, Change::Deleted));
                }
            }
        }
        LinkEvent::Overrun => {}
    }
    out
}

/// The change that brings `known` in line with `seen`, if any.
pub fn reconcile(known: &Known, seen: &Seen) -> Option<Change> {
    match seen.by_index {
        Some(up) if known.present => {
            (up != known.up).then_some(if up { Change::Up } else { Change::Down })
        }
        // Deleted behind our back; a newcomer with the name is for the next look.
        None if known.present => Some(Change::Deleted),
        // Known gone: only a new link with the name is news.
        _ => match seen.by_name {
            Some((index, _)) if index != known.index => Some(Change::Replaced { new_index: index }),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(up: bool, present: bool) -> Known {
        Known {
            name: "lan0".into(),
            index: 4,
            up,
            present,
        }
    }

    fn changed(index: u32, name: &str, up: bool) -> LinkEvent {
        LinkEvent::Changed {
            index,
            name: Some(name.into()),
            up,
        }
    }

    #[test]
    fn events_by_index_and_name() {
        let ks = [
            known(true, true),
            Known {
                name: "wan0".into(),
                index: 5,
                ..known(true, true)
            },
        ];
        assert_eq!(
            on_event(&ks, &changed(4, "lan0", false)),
            vec![(0, Change::Down)]
        );
        assert_eq!(
            on_event(&ks, &changed(4, "lan0", true)),
            vec![],
            "duplicates are no news"
        );
        assert_eq!(on_event(&ks, &changed(9, "other", false)), vec![]);
        assert_eq!(
            on_event(&ks, &LinkEvent::Deleted { index: 5 }),
            vec![(1, Change::Deleted)]
        );
        assert_eq!(on_event(&ks, &LinkEvent::Overrun), vec![]);
        // A link with the name of a deleted interface is its replacement; while
        // ours exists, a namesake is not (a rename race) and nothing changes.
        let gone = [known(false, false)];
        assert_eq!(
            on_event(&gone, &changed(12, "lan0", true)),
            vec![(0, Change::Replaced { new_index: 12 })]
        );
        assert_eq!(on_event(&ks, &changed(12, "lan0", true)), vec![]);
        assert_eq!(on_event(&gone, &LinkEvent::Deleted { index: 4 }), vec![]);
    }

    /// The re-read after an overrun (or the periodic one): missed link-ups and
    /// link-downs, a deletion and a re-creation are each found.
    #[test]
    fn reconcile_finds_what_was_missed() {
        let seen = |by_index, by_name| Seen { by_index, by_name };
        // A missed link-up (the VHIDs would sit in INIT for ever).
        assert_eq!(
            reconcile(&known(false, true), &seen(Some(true), Some((4, true)))),
            Some(Change::Up)
        );
        assert_eq!(
            reconcile(&known(true, true), &seen(Some(false), Some((4, false)))),
            Some(Change::Down)
        );
        assert_eq!(
            reconcile(&known(true, true), &seen(Some(true), Some((4, true)))),
            None
        );
        assert_eq!(
            reconcile(&known(true, true), &seen(None, None)),
            Some(Change::Deleted)
        );
        assert_eq!(
            reconcile(&known(true, true), &seen(None, Some((12, true)))),
            Some(Change::Deleted)
        );
        assert_eq!(
            reconcile(&known(false, false), &seen(None, Some((12, true)))),
            Some(Change::Replaced { new_index: 12 })
        );
        assert_eq!(reconcile(&known(false, false), &seen(None, None)), None);
    }
}
