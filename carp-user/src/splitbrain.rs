//! Split brain: both nodes MASTER of one VHID because their adverts do not
//! reach each other (a firewall or a switch between them drops protocol 112),
//! seen through the sync peer's hello, which travels on its own link. Pure:
//! the time and what the hellos say are arguments, and the answer is a
//! [`Verdict`] the controller applies (`controller/splitbrain.rs`).
//!
//! Per VHID ([`Watch`]):
//! - **Detection**: we are MASTER and a live peer's hello says MASTER too,
//!   for more than three advert intervals (the longer of ours and its). A
//!   shorter overlap is an ordinary handover (a preemption, a bow-out's
//!   make-before-break) that the adverts settle within one interval.
//! - **Policy `step_back`** (default): the node with the longer advert
//!   interval (`advbase + effective advskew / 256`; equal intervals: the
//!   higher sync address) steps back. It feeds its election the peer's
//!   hello as the advert that did not arrive, so the election itself goes
//!   MASTER → BACKUP, and keeps feeding it every peer interval while the
//!   hello says MASTER, so its master-down timer does not fire and it does
//!   not flap back. The hold ends when the peer's adverts arrive again (the
//!   path healed), when the peer's hello stops saying MASTER or the peer
//!   goes quiet (then the master-down timer runs out as usual), or when the
//!   VHID leaves BACKUP (a preemption by the hello's values, a link down).
//! - **Policy `alarm`**: only the alarm; both stay MASTER.
//! - **The alarm** is on while the nodes are both MASTER past the grace, on
//!   the node that holds back, and on the node that stayed MASTER while the
//!   peer that was MASTER with it holds back (the hello's `split brain`
//!   flag; it is node-wide, so with several VHIDs contested the winner's
//!   alarm clears when the peer holds none back any more).
//!
//! Without `[sync]` nothing is known of the peer and the alarm stays 0.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::election::{Base, PeerAdvert, State, Time};

/// `node.split_brain`: what a node does once it sees a split brain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// The worse node steps back to BACKUP and stays there while the peer's
    /// hello says MASTER.
    #[default]
    StepBack,
    /// Alarm only (log, metric, status).
    Alarm,
}

impl Policy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StepBack => "step_back",
            Self::Alarm => "alarm",
        }
    }

    pub fn from_config(s: &str) -> Option<Self> {
        match s {
            "step_back" => Some(Self::StepBack),
            "alarm" => Some(Self::Alarm),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a live sync peer's last hello says about this VHID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSays {
    /// Its sync address (the tie-break).
    pub address: Ipv4Addr,
    pub state: State,
    /// As in its adverts: whole seconds, or 0 in fast mode.
    pub advbase: u8,
    /// Effective advskew (demotion included).
    pub advskew: u8,
    /// Its hello's split-brain flag: it holds back some VHID.
    pub holding: bool,
    /// When we last heard from it (any sync frame; its hello goes out at
    /// once on every change of state, so what it says is current while it
    /// is heard).
    pub heard: Time,
}

impl PeerSays {
    fn advert(&self) -> PeerAdvert {
        PeerAdvert {
            advbase: self.advbase,
            advskew: self.advskew,
        }
    }
}

/// This node's side of the VHID now.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    pub state: State,
    /// A MASTER that bowed out and waits for the new one (not contesting).
    pub leaving: bool,
    pub base: Base,
    pub effective_advskew: u8,
    /// Authenticated adverts accepted from other nodes so far: a rise means
    /// the adverts get through again.
    pub adverts_received: u64,
    /// When we last became MASTER (`None`: unknown, every peer counts). A
    /// peer not heard since is no evidence of a second master: a dead peer's
    /// last hello said MASTER, and it stays "up" for the sync peer timeout
    /// (1.6 s), far longer than a fast-mode grace.
    pub master_since: Option<Time>,
}

impl Local {
    fn master(&self) -> bool {
        self.state == State::Master && !self.leaving
    }

    fn interval(&self) -> Duration {
        self.base.interval(self.effective_advskew)
    }
}

/// What the controller must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Hand the election this advert (the peer's, from its hello): a MASTER
    /// steps back, a BACKUP re-arms its master-down timer.
    Advert(PeerAdvert),
    /// Gratuitous ARP for the VHID's addresses: the peer answered for them
    /// until it stepped back, so switches may point the virtual MAC at it.
    Announce,
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// Both MASTER past the grace.
    Raised { peer: Ipv4Addr },
    /// This node steps back in favour of `peer`.
    SteppingBack { peer: Ipv4Addr },
    /// The peer stepped back: this node is MASTER alone again.
    PeerStepsBack { peer: Ipv4Addr },
    /// The alarm is off again.
    Cleared { why: &'static str },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raised { peer } => write!(
                f,
                "split brain: the sync peer {peer} is MASTER too and its adverts do not arrive"
            ),
            Self::SteppingBack { peer } => write!(
                f,
                "split brain: stepping back to BACKUP for {peer}, held there while its hello says MASTER"
            ),
            Self::PeerStepsBack { peer } => write!(
                f,
                "split brain: the sync peer {peer} stepped back; MASTER alone, adverts still lost"
            ),
            Self::Cleared { why } => write!(f, "split brain over: {why}"),
        }
    }
}

/// The answer of [`Watch::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub alarm: bool,
    pub step: Option<Step>,
    pub note: Option<Note>,
}

/// Held back in BACKUP for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    peer: Ipv4Addr,
    /// `adverts_received` when the hold began.
    received: u64,
    next_feed: Time,
}

/// One VHID's split-brain state (module docs).
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// Since when both are MASTER (this round).
    both_since: Option<Time>,
    /// When the overlap becomes a split brain.
    grace_until: Option<Time>,
    alarm: bool,
    /// A peer was MASTER together with us: its later hold is about us.
    contested: bool,
    /// The step-back of the peer was announced.
    announced: bool,
    hold: Option<Hold>,
}

impl Watch {
    pub fn alarm(&self) -> bool {
        self.alarm
    }

    /// Held back in BACKUP by the policy (the hello's flag).
    pub fn holding(&self) -> bool {
        self.hold.is_some()
    }

    /// When [`Watch::update`] must run again at the latest: the next advert
    /// to feed while holding, or the end of the grace.
    pub fn poll_at(&self) -> Option<Time> {
        match (self.hold.map(|h| h.next_feed), self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes in the situation at `now`. `us` is our own sync address;
    /// `peers` what the live peers' hellos say about this VHID.
    pub fn update(
        &mut self,
        now: Time,
        policy: Policy,
        us: Option<Ipv4Addr>,
        local: &Local,
        peers: &[PeerSays],
    ) -> Verdict {
        let was = self.alarm;
        let mut step = None;
        let mut note = None;

        if let Some(h) = self.hold {
            let peer = peers.iter().find(|p| p.address == h.peer);
            let release = if local.adverts_received != h.received {
                Some("the peer's adverts arrive again")
            } else if local.state != State::Backup {
                Some("this node left BACKUP")
            } else {
                match peer {
                    None => Some("the peer went quiet (its master-down interval runs out here)"),
                    Some(p) if p.state != State::Master => {
                        Some("the peer's hello no longer says MASTER")
                    }
                    Some(_) => None,
                }
            };
            match (release, peer) {
                (None, Some(p)) => {
                    self.alarm = true;
                    if now >= h.next_feed {
                        // The peer's current values: if it got demoted meanwhile,
                        // the election preempts it (and the hold ends).
                        step = Some(Step::Advert(p.advert()));
                        self.hold = Some(Hold {
                            next_feed: now.saturating_add(
                                p.advert().interval(local.base).unwrap_or(local.interval()),
                            ),
                            ..h
                        });
                    }
                    return Verdict {
                        alarm: true,
                        step,
                        note,
                    };
                }
                (why, _) => {
                    self.hold = None;
                    self.contested = false;
                    self.alarm = false;
                    note = Some(Note::Cleared {
                        why: why.unwrap_or("the hold ended"),
                    });
                }
            }
        }

        let masters: Vec<&PeerSays> = peers
            .iter()
            .filter(|p| p.state == State::Master)
            .filter(|p| local.master_since.is_none_or(|since| p.heard > since))
            .collect();
        if local.master() && !masters.is_empty() {
            self.contested = true;
            let since = *self.both_since.get_or_insert(now);
            let longest = masters
                .iter()
                .filter_map(|p| p.advert().interval(local.base))
                .fold(local.interval(), Duration::max);
            let grace_until = since.saturating_add(3 * longest);
            if now <= grace_until {
                self.grace_until = Some(grace_until);
                return self.finish(was, step, note);
            }
            self.grace_until = None;
            self.alarm = true;
            if !was {
                note = Some(Note::Raised {
                    peer: masters[0].address,
                });
            }
            if policy == Policy::StepBack {
                if let Some(p) = yield_to(local, us, &masters) {
                    let every = p.advert().interval(local.base).unwrap_or(local.interval());
                    self.hold = Some(Hold {
                        peer: p.address,
                        received: local.adverts_received,
                        next_feed: now.saturating_add(every),
                    });
                    self.both_since = None;
                    step = Some(Step::Advert(p.advert()));
                    note = Some(Note::SteppingBack { peer: p.address });
                }
            }
            return self.finish(was, step, note);
        }
        self.both_since = None;
        self.grace_until = None;

        // The peer that was MASTER with us now holds back: still a split
        // brain (our adverts do not reach it), only a quiet one.
        let held_for_us = if local.master() && self.contested {
            peers.iter().find(|p| p.state == State::Backup && p.holding)
        } else {
            None
        };
        if let Some(p) = held_for_us {
            self.alarm = true;
            if !self.announced {
                self.announced = true;
                step = Some(Step::Announce);
                note = Some(Note::PeerStepsBack { peer: p.address });
            }
            return self.finish(was, step, note);
        }
        self.contested = false;
        self.announced = false;
        self.alarm = false;
        self.finish(was, step, note)
    }

    fn finish(&mut self, was: bool, step: Option<Step>, note: Option<Note>) -> Verdict {
        let note = match note {
            None if was && !self.alarm => Some(Note::Cleared {
                why: "one MASTER again",
            }),
            n => n,
        };
        Verdict {
            alarm: self.alarm,
            step,
            note,
        }
    }
}

/// The master peer this node steps back for, if it is the worse of the two:
/// the longer advert interval, or on a tie the higher sync address. Peers
/// whose interval cannot be read in our timing mode (fast mode on one side
/// only) are never yielded to: the election would ignore their advert.
fn yield_to<'a>(
    local: &Local,
    us: Option<Ipv4Addr>,
    masters: &[&'a PeerSays],
) -> Option<&'a PeerSays> {
    let ours = local.interval();
    masters
        .iter()
        .copied()
        .filter_map(|p| p.advert().interval(local.base).map(|i| (i, p)))
        .filter(|(theirs, p)| {
            ours > *theirs || (ours == *theirs && us.is_some_and(|u| u > p.address))
        })
        .min_by_key(|(theirs, p)| (*theirs, p.address))
        .map(|(_, p)| p)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VhidLabels {
    vhid: u8,
    interface: String,
}

/// `carp_split_brain{vhid,interface}`: 1 while the alarm is on, else 0;
/// part of [`crate::metrics::Metrics`].
#[derive(Clone, Debug, Default)]
pub struct SplitBrainMetrics {
    gauge: Family<VhidLabels, Gauge>,
    /// The series published last, so that a VHID removed by a reload loses its.
    known: Arc<Mutex<BTreeSet<(u8, String)>>>,
}

impl SplitBrainMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "carp_split_brain",
            "1 while this node sees a split brain of the VHID (both nodes MASTER, or one held \
             back, because adverts between them are lost; seen through the sync peer's hello), \
             else 0.",
            self.gauge.clone(),
        );
    }

    /// Sets every VHID's value; series of VHIDs not listed are removed.
    pub fn publish(&self, values: impl IntoIterator<Item = (u8, String, bool)>) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let mut now = BTreeSet::new();
        for (vhid, interface, alarm) in values {
            self.gauge
                .get_or_create(&VhidLabels {
                    vhid,
                    interface: interface.clone(),
                })
                .set(i64::from(alarm));
            now.insert((vhid, interface));
        }
        for (vhid, interface) in known.difference(&now) {
            self.gauge.remove(&VhidLabels {
                vhid: *vhid,
                interface: interface.clone(),
            });
        }
        *known = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    /// Whole milliseconds, so sums compare exactly.
    fn s(secs: f64) -> Time {
        Time::from_millis((secs * 1000.0).round() as u64)
    }

    fn local(state: State, advskew: u8, received: u64) -> Local {
        Local {
            state,
            leaving: false,
            base: Base::Seconds(1),
            effective_advskew: advskew,
            adverts_received: received,
            master_since: None,
        }
    }

    fn peer(state: State, advskew: u8, holding: bool) -> PeerSays {
        PeerSays {
            address: PEER,
            state,
            advbase: 1,
            advskew,
            holding,
            heard: Time::ZERO,
        }
    }

    const ADV0: PeerAdvert = PeerAdvert {
        advbase: 1,
        advskew: 0,
    };

    /// A peer that died as MASTER: its last hello said MASTER and it counts
    /// as up for the sync peer timeout, but nothing was heard from it since
    /// we took over, so there is no split brain and no step-back (in fast
    /// mode the grace is 30 ms, the peer timeout 1.6 s: checked failing
    /// without the rule, as a 1.2 s outage in `bench failover --fast`). The
    /// same peer heard again after our takeover is one.
    #[test]
    fn splitbrain_a_peer_not_heard_since_our_takeover_is_no_evidence() {
        let mut w = Watch::default();
        let me = Local {
            base: Base::Millis(10),
            master_since: Some(s(1.0)),
            ..local(State::Master, 100, 0)
        };
        let dead = [PeerSays {
            advbase: 0,
            heard: s(0.99),
            ..peer(State::Master, 0, false)
        }];
        for t in [1.0, 1.05, 1.5, 2.5] {
            let v = w.update(s(t), Policy::StepBack, Some(US), &me, &dead);
            assert_eq!((v.alarm, v.step), (false, None), "at {t} s");
        }
        let alive = [PeerSays {
            heard: s(2.6),
            ..dead[0]
        }];
        w.update(s(2.6), Policy::StepBack, Some(US), &me, &alive);
        let v = w.update(s(2.7), Policy::StepBack, Some(US), &me, &alive);
        assert!(v.alarm && v.step.is_some(), "{v:?}");
    }

    #[test]
    fn splitbrain_short_overlap_is_no_alarm() {
        let mut w = Watch::default();
        let me = local(State::Master, 100, 0);
        let p = [peer(State::Master, 0, false)];
        // Three of our intervals (1.39 s each): 4.17 s of grace.
        for t in [0.0, 1.0, 2.0, 4.1] {
            let v = w.update(s(t), Policy::StepBack, Some(US), &me, &p);
            assert_eq!(
                v,
                Verdict {
                    alarm: false,
                    step: None,
                    note: None
                },
                "at {t} s"
            );
        }
        assert_eq!(w.poll_at(), Some(Time(4_171_875_000)));
        // The adverts settled it: one MASTER, no alarm, nothing pending.
        let v = w.update(
            s(4.15),
            Policy::StepBack,
            Some(US),
            &local(State::Backup, 100, 1),
            &p,
        );
        assert!(!v.alarm);
        assert_eq!(w.poll_at(), None);
    }

    #[test]
    fn splitbrain_worse_node_steps_back_and_stays_back() {
        let mut w = Watch::default();
        let p = [peer(State::Master, 0, false)];
        w.update(
            s(0.0),
            Policy::StepBack,
            Some(US),
            &local(State::Master, 100, 5),
            &p,
        );
        let v = w.update(
            s(4.2),
            Policy::StepBack,
            Some(US),
            &local(State::Master, 100, 5),
            &p,
        );
        assert!(v.alarm);
        assert_eq!(v.step, Some(Step::Advert(ADV0)));
        assert_eq!(v.note, Some(Note::SteppingBack { peer: PEER }));
        assert!(w.holding());
        // Held: the peer's advert again every peer interval (1 s), alarm on.
        let held = local(State::Backup, 100, 5);
        let v = w.update(s(4.7), Policy::StepBack, Some(US), &held, &p);
        assert_eq!((v.alarm, v.step), (true, None));
        assert_eq!(w.poll_at(), Some(s(5.2)));
        let v = w.update(s(5.2), Policy::StepBack, Some(US), &held, &p);
        assert_eq!((v.alarm, v.step), (true, Some(Step::Advert(ADV0))));
        assert_eq!(w.poll_at(), Some(s(6.2)));
        // The peer's adverts arrive again: released, alarm off.
        let v = w.update(
            s(6.0),
            Policy::StepBack,
            Some(US),
            &local(State::Backup, 100, 6),
            &p,
        );
        assert!(!v.alarm);
        assert_eq!(v.step, None);
        assert!(matches!(v.note, Some(Note::Cleared { .. })));
        assert!(!w.holding());
        assert_eq!(w.poll_at(), None);
    }

    #[test]
    fn splitbrain_better_node_stays_master_and_keeps_the_alarm() {
        let mut w = Watch::default();
        let us_first = Ipv4Addr::new(10, 99, 0, 1);
        let mut p = peer(State::Master, 100, false);
        p.address = Ipv4Addr::new(10, 99, 0, 2);
        let me = local(State::Master, 0, 3);
        w.update(s(0.0), Policy::StepBack, Some(us_first), &me, &[p]);
        let v = w.update(s(4.2), Policy::StepBack, Some(us_first), &me, &[p]);
        assert_eq!(
            v,
            Verdict {
                alarm: true,
                step: None,
                note: Some(Note::Raised { peer: p.address })
            }
        );
        assert!(!w.holding());
        // The peer steps back and says so: the alarm stays, we announce once.
        let held = PeerSays {
            state: State::Backup,
            holding: true,
            ..p
        };
        let v = w.update(s(4.3), Policy::StepBack, Some(us_first), &me, &[held]);
        assert!(v.alarm);
        assert_eq!(v.step, Some(Step::Announce));
        assert_eq!(v.note, Some(Note::PeerStepsBack { peer: p.address }));
        let v = w.update(s(5.0), Policy::StepBack, Some(us_first), &me, &[held]);
        assert_eq!((v.alarm, v.step, v.note), (true, None, None));
        // It hears us again and lets go: over.
        let healed = PeerSays {
            holding: false,
            ..held
        };
        let v = w.update(s(6.0), Policy::StepBack, Some(us_first), &me, &[healed]);
        assert!(!v.alarm);
        assert!(matches!(v.note, Some(Note::Cleared { .. })));
    }

    #[test]
    fn splitbrain_peer_that_steps_back_first_still_raises_the_alarm() {
        // The peer's grace ran out a moment before ours: it holds back and
        // its hello says so before we saw the overlap as a split brain.
        let mut w = Watch::default();
        let me = local(State::Master, 0, 3);
        let mut p = peer(State::Master, 100, false);
        p.address = US;
        w.update(s(0.0), Policy::StepBack, Some(PEER), &me, &[p]);
        let held = PeerSays {
            state: State::Backup,
            holding: true,
            ..p
        };
        let v = w.update(s(4.1), Policy::StepBack, Some(PEER), &me, &[held]);
        assert_eq!((v.alarm, v.step), (true, Some(Step::Announce)));
    }

    #[test]
    fn splitbrain_holding_flag_of_an_uncontested_peer_means_nothing() {
        // A backup that holds back some other VHID: this one was never contested.
        let mut w = Watch::default();
        let v = w.update(
            s(1.0),
            Policy::StepBack,
            Some(PEER),
            &local(State::Master, 0, 0),
            &[peer(State::Backup, 100, true)],
        );
        assert_eq!(
            v,
            Verdict {
                alarm: false,
                step: None,
                note: None
            }
        );
    }

    #[test]
    fn splitbrain_tie_goes_to_the_lower_sync_address() {
        let me = local(State::Master, 50, 0);
        let p = [peer(State::Master, 50, false)];
        // We are .2, the peer .1: we step back.
        let mut w = Watch::default();
        w.update(s(0.0), Policy::StepBack, Some(US), &me, &p);
        let v = w.update(s(5.0), Policy::StepBack, Some(US), &me, &p);
        assert_eq!(
            v.step,
            Some(Step::Advert(PeerAdvert {
                advbase: 1,
                advskew: 50
            }))
        );
        // We are .0 (lower): we stay.
        let mut w = Watch::default();
        let low = Ipv4Addr::new(10, 99, 0, 0);
        w.update(s(0.0), Policy::StepBack, Some(low), &me, &p);
        let v = w.update(s(5.0), Policy::StepBack, Some(low), &me, &p);
        assert_eq!((v.alarm, v.step), (true, None));
        // Our address unknown: nobody can break the tie from here; alarm only.
        let mut w = Watch::default();
        w.update(s(0.0), Policy::StepBack, None, &me, &p);
        let v = w.update(s(5.0), Policy::StepBack, None, &me, &p);
        assert_eq!((v.alarm, v.step), (true, None));
    }

    #[test]
    fn splitbrain_alarm_policy_never_steps_back() {
        let mut w = Watch::default();
        let me = local(State::Master, 100, 0);
        let p = [peer(State::Master, 0, false)];
        w.update(s(0.0), Policy::Alarm, Some(US), &me, &p);
        let v = w.update(s(5.0), Policy::Alarm, Some(US), &me, &p);
        assert_eq!(
            v,
            Verdict {
                alarm: true,
                step: None,
                note: Some(Note::Raised { peer: PEER })
            }
        );
        let v = w.update(s(9.0), Policy::Alarm, Some(US), &me, &p);
        assert_eq!((v.alarm, v.step, v.note), (true, None, None));
        // The peer's hello says BACKUP (adverts flow again): over.
        let v = w.update(
            s(10.0),
            Policy::Alarm,
            Some(US),
            &me,
            &[peer(State::Backup, 0, false)],
        );
        assert!(!v.alarm);
        assert_eq!(
            v.note,
            Some(Note::Cleared {
                why: "one MASTER again"
            })
        );
    }

    #[test]
    fn splitbrain_hold_ends_when_the_peer_goes_quiet_or_stops_being_master() {
        for peers in [
            vec![],
            vec![peer(State::Init, 0, false)],
            vec![peer(State::Backup, 0, false)],
        ] {
            let mut w = Watch::default();
            let p = [peer(State::Master, 0, false)];
            w.update(
                s(0.0),
                Policy::StepBack,
                Some(US),
                &local(State::Master, 100, 0),
                &p,
            );
            w.update(
                s(4.2),
                Policy::StepBack,
                Some(US),
                &local(State::Master, 100, 0),
                &p,
            );
            assert!(w.holding());
            let v = w.update(
                s(5.0),
                Policy::StepBack,
                Some(US),
                &local(State::Backup, 100, 0),
                &peers,
            );
            assert_eq!((v.alarm, v.step), (false, None), "{peers:?}");
            assert!(!w.holding());
        }
    }

    #[test]
    fn splitbrain_hold_follows_the_peers_current_values() {
        let mut w = Watch::default();
        let p = [peer(State::Master, 0, false)];
        w.update(
            s(0.0),
            Policy::StepBack,
            Some(US),
            &local(State::Master, 100, 0),
            &p,
        );
        w.update(
            s(4.2),
            Policy::StepBack,
            Some(US),
            &local(State::Master, 100, 0),
            &p,
        );
        // The peer got demoted: its next fed advert says so (the election
        // then preempts it, and the hold ends when we leave BACKUP).
        let demoted = [peer(State::Master, 240, false)];
        let v = w.update(
            s(5.2),
            Policy::StepBack,
            Some(US),
            &local(State::Backup, 100, 0),
            &demoted,
        );
        assert_eq!(
            v.step,
            Some(Step::Advert(PeerAdvert {
                advbase: 1,
                advskew: 240
            }))
        );
        let v = w.update(
            s(5.3),
            Policy::StepBack,
            Some(US),
            &local(State::Master, 100, 0),
            &demoted,
        );
        assert!(!w.holding());
        assert!(matches!(
            v.note,
            Some(Note::Cleared {
                why: "this node left BACKUP"
            })
        ));
    }

    #[test]
    fn splitbrain_leaving_master_does_not_contest() {
        let mut w = Watch::default();
        let mut me = local(State::Master, 100, 0);
        me.leaving = true;
        let p = [peer(State::Master, 0, false)];
        w.update(s(0.0), Policy::StepBack, Some(US), &me, &p);
        let v = w.update(s(9.0), Policy::StepBack, Some(US), &me, &p);
        assert_eq!(
            v,
            Verdict {
                alarm: false,
                step: None,
                note: None
            }
        );
    }

    #[test]
    fn splitbrain_fast_mode_peer_interval_uses_our_base() {
        let mut w = Watch::default();
        let me = Local {
            base: Base::Millis(50),
            ..local(State::Master, 100, 0)
        };
        let p = [PeerSays {
            advbase: 0,
            ..peer(State::Master, 0, false)
        }];
        w.update(s(0.0), Policy::StepBack, Some(US), &me, &p);
        // 3 × 50 ms × (1 + 100/256) = 208.6 ms of grace.
        assert!(!w.update(s(0.2), Policy::StepBack, Some(US), &me, &p).alarm);
        let v = w.update(s(0.21), Policy::StepBack, Some(US), &me, &p);
        assert_eq!(
            v.step,
            Some(Step::Advert(PeerAdvert {
                advbase: 0,
                advskew: 0
            }))
        );
        // Fed every 50 ms (the peer's interval), well inside our master-down.
        assert_eq!(w.poll_at(), Some(s(0.26)));
        // A whole-second peer cannot be yielded to in fast mode (the election
        // would ignore its advert): alarm only.
        let mut w = Watch::default();
        let p = [peer(State::Master, 0, false)];
        w.update(s(0.0), Policy::StepBack, Some(US), &me, &p);
        let v = w.update(s(4.0), Policy::StepBack, Some(US), &me, &p);
        assert_eq!((v.alarm, v.step), (true, None));
    }

    #[test]
    fn splitbrain_metrics_remove_vhids_no_longer_published() {
        let m = SplitBrainMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.publish([
            (1, "lan0".to_string(), true),
            (2, "wan0".to_string(), false),
        ]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(
            text.contains("carp_split_brain{vhid=\"1\",interface=\"lan0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("carp_split_brain{vhid=\"2\",interface=\"wan0\"} 0"),
            "{text}"
        );
        m.publish([(1, "lan0".to_string(), false)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        assert!(
            text.contains("carp_split_brain{vhid=\"1\",interface=\"lan0\"} 0"),
            "{text}"
        );
        assert!(!text.contains("wan0"), "{text}");
    }
}

#[cfg(test)]
mod status_tests {
    use crate::status::{render_table, NodeStatus, VhidStatus, STATE_BACKUP, STATE_MASTER};

    #[test]
    fn splitbrain_status_shows_the_alarm() {
        let vhid = |id, state: &str, split_brain| VhidStatus {
            id,
            interface: "lan0".into(),
            state: state.into(),
            split_brain,
            ..VhidStatus::default()
        };
        let s = NodeStatus {
            node: "fw2".into(),
            vhids: vec![vhid(1, STATE_BACKUP, true), vhid(2, STATE_MASTER, false)],
            ..NodeStatus::default()
        };
        let table = render_table(&s);
        assert!(
            table.contains("SPLIT BRAIN: lan0 vhid 1: adverts between the nodes are lost"),
            "{table}"
        );
        assert!(table.contains("holds back"), "{table}");
        assert!(!table.contains("vhid 2:"), "{table}");
        // JSON: present only while on.
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json.matches("\"split_brain\":true").count(), 1, "{json}");
        assert!(!json.contains("\"split_brain\":false"), "{json}");
        let back: NodeStatus = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }
}
