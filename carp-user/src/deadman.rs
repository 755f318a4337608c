//! The dead-man deadline follows the adverts that actually left (docs/design.md,
//! "Dead-man switch"), sans-IO.
//!
//! The election asks for a MASTER entry with `master_expires = now + 3 × advbase`
//! every time it advertises ([`crate::election::Action::SetDataplane`] then
//! [`crate::election::Action::SendAdvert`]). Written as asked, a master whose
//! adverts fail (a full queue, an egress filter, a dead driver) would keep
//! answering for the VIPs while its peer, hearing nothing, takes over: two
//! answerers. So the shell passes the writes through a [`DeadlineGate`]:
//!
//! - a write that changes the state (a takeover, a step back, INIT) goes to the
//!   map at once: the takeover order is data path first, then the advert;
//! - a write that only moves a MASTER entry's deadline waits for the advert that
//!   follows and is dropped if that advert was not sent.
//!
//! The deadline is therefore `max(takeover, last advert sent) + 3 × advbase`, and
//! a master whose adverts fail stops answering at it.

use carp_common::{VhidEntry, VhidState};

/// Holds back deadline refreshes until their advert has been sent.
#[derive(Debug, Default)]
pub struct DeadlineGate {
    pending: Option<VhidEntry>,
}

impl DeadlineGate {
    /// The election asks for `wanted`; `current` is the entry in the map.
    /// Returns the entry to write now, or `None` when the write waits for the
    /// advert (a MASTER entry that stays MASTER).
    pub fn on_set(&mut self, current: VhidEntry, wanted: VhidEntry) -> Option<VhidEntry> {
        let master = VhidState::Master as u32;
        if wanted.state == master && current.state == master {
            self.pending = Some(wanted);
            None
        } else {
            self.pending = None;
            Some(wanted)
        }
    }

    /// The advert that followed was sent (`true`) or failed. Returns the held
    /// entry to write now (only after a successful send).
    pub fn on_send(&mut self, sent: bool) -> Option<VhidEntry> {
        let held = self.pending.take();
        if sent {
            held
        } else {
            None
        }
    }
}

/// Lets the first event through, then at most one per `every_ns`, and says how
/// many were held back in between (for rate-limited logs).
#[derive(Debug)]
pub struct LogLimiter {
    every_ns: u64,
    last: Option<u64>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(every_ns: u64) -> Self {
        Self {
            every_ns,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one let through)` if this one may be logged.
    pub fn allow(&mut self, now_ns: u64) -> Option<u64> {
        match self.last {
            Some(t) if now_ns.saturating_sub(t) < self.every_ns => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now_ns);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{Action, Event, Params, State, Time, Vhid};

    const SEC: u64 = 1_000_000_000;

    fn entry(s: VhidState, exp: u64) -> VhidEntry {
        VhidEntry::new(s, exp)
    }

    #[test]
    fn takeover_writes_at_once_refresh_waits_for_the_send() {
        let mut g = DeadlineGate::default();
        let backup = entry(VhidState::Backup, 0);
        let m3 = entry(VhidState::Master, 3 * SEC);
        // Takeover: the state changes, written before the advert.
        assert_eq!(g.on_set(backup, m3), Some(m3));
        assert_eq!(g.on_send(true), None);
        // Refresh: held, written after a sent advert.
        let m4 = entry(VhidState::Master, 4 * SEC);
        assert_eq!(g.on_set(m3, m4), None);
        assert_eq!(g.on_send(true), Some(m4));
        // Refresh whose advert failed: never written.
        let m5 = entry(VhidState::Master, 5 * SEC);
        assert_eq!(g.on_set(m4, m5), None);
        assert_eq!(g.on_send(false), None);
        // A step back is written at once and drops anything held.
        assert_eq!(g.on_set(m4, m5), None);
        assert_eq!(g.on_set(m4, backup), Some(backup));
        assert_eq!(g.on_send(true), None);
    }

    /// The election machine and the gate together, as `controller/` applies
    /// them, with sends that fail from 10 s on: the MASTER entry's deadline
    /// stays at the last advert sent + 3 × advbase, so the data path stops
    /// answering then although the machine still advertises (and believes
    /// itself MASTER). Checked failing before the gate (writing every
    /// `SetDataplane` as asked: the deadline kept moving to 23 s and the
    /// entry answered at 14 s).
    #[test]
    fn failing_adverts_let_the_master_entry_expire() {
        let mut v = Vhid::new(Params {
            vhid: 1,
            advbase: 1,
            advskew: 0,
            preempt: true,
        });
        let mut g = DeadlineGate::default();
        let mut map = entry(VhidState::Init, 0);
        let fail_from = 10 * SEC;
        let mut last_sent = None;
        let mut now = 0u64;
        let mut run = |v: &mut Vhid, now: u64, ev: Event, map: &mut VhidEntry| {
            for a in v.handle(Time(now), ev) {
                match a {
                    Action::SetDataplane {
                        state,
                        master_expires,
                    } => {
                        let st = match state {
                            State::Init => VhidState::Init,
                            State::Backup => VhidState::Backup,
                            State::Master => VhidState::Master,
                        };
                        let wanted = entry(st, master_expires.map_or(0, |t| t.0));
                        if let Some(e) = g.on_set(*map, wanted) {
                            *map = e;
                        }
                    }
                    Action::SendAdvert { .. } => {
                        let sent = now < fail_from;
                        if sent {
                            last_sent = Some(now);
                        }
                        if let Some(e) = g.on_send(sent) {
                            *map = e;
                        }
                    }
                    _ => {}
                }
            }
        };
        run(&mut v, now, Event::Start, &mut map);
        while now < 20 * SEC {
            now = v.poll_at().expect("a timer is armed").0;
            run(&mut v, now, Event::Timer, &mut map);
        }
        assert_eq!(v.state(), State::Master, "the machine still advertises");
        let last = last_sent.expect("adverts were sent before 10 s");
        assert!(last < fail_from && last + SEC >= fail_from, "{last}");
        assert_eq!(map.state, VhidState::Master as u32);
        assert_eq!(map.master_expires_ns, last + 3 * SEC);
        assert!(map.is_master_at(last + 3 * SEC));
        assert!(!map.is_master_at(last + 3 * SEC + 1));
        assert!(!map.is_master_at(14 * SEC));
    }

    #[test]
    fn log_limiter_first_then_one_per_period_with_the_count() {
        let mut l = LogLimiter::new(10 * SEC);
        assert_eq!(l.allow(5 * SEC), Some(0));
        assert_eq!(l.allow(6 * SEC), None);
        assert_eq!(l.allow(14 * SEC), None);
        assert_eq!(l.allow(15 * SEC), Some(2));
        assert_eq!(l.allow(15 * SEC), None);
    }
}
