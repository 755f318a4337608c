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
//! Two more things shape what reaches the map:
//!
//! - **The backup's takeover moment** ([`takeover_offset_ns`]): when the sync
//!   peers' hellos name the backups of a VHID, the deadline becomes the moment
//!   the quickest of them would take over (last advert sent + its master-down
//!   interval, `3 × advbase + advskew/256`) less [`TAKEOVER_MARGIN`], instead of
//!   our own `3 × advbase`. A controller that dies or stalls then leaves its
//!   data path answering until just before the backup answers: the outage is
//!   about the margin, and never two answerers. Without a peer's hello it stays
//!   `3 × advbase`.
//! - **Promises of a previous run** ([`DeadlineGate::inherit`]): a controller
//!   restarted over a pinned data path keeps the MASTER entries the dead one
//!   left until their deadlines; its own election's INIT/BACKUP writes wait
//!   until then (a new MASTER write replaces the promise at once).
//!
//! The deadline is therefore `max(takeover, last advert sent) + 3 × advbase`
//! (+ the offset), and a master whose adverts fail stops answering at it.

use std::time::Duration;

use carp_common::{VhidEntry, VhidState};

use crate::election::Base;

/// How long before the quickest backup's takeover a MASTER entry whose
/// controller went quiet stops answering. Both moments are measured from the
/// same advert (we stamp it before sending, the backup arms its timer after
/// receiving it, so network and scheduling delays only widen the gap), so the
/// margin covers what is not: the two clocks' rate difference over a
/// master-down interval (≤ 100 ppm × 3.4 s ≈ 0.34 ms) and a backup whose
/// effective advskew just fell, whose hello (sent at once on a change) is
/// still on its way over the sync link. 2 ms is ~6× the first; the outage of a
/// killed or stopped controller's node is about this long.
pub const TAKEOVER_MARGIN: Duration = Duration::from_millis(2);

/// How far to move a MASTER deadline that the election set to
/// `advert + own_dead_man` (`3 × advbase`), in ns: to `advert +
/// backup_master_down - TAKEOVER_MARGIN` when a backup's master-down interval
/// is known (may be negative, e.g. a backup with advskew 0 or a shorter
/// advbase), else 0.
pub fn takeover_offset_ns(own_dead_man: Duration, backup_master_down: Option<Duration>) -> i64 {
    let Some(md) = backup_master_down else {
        return 0;
    };
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    ns(md)
        .saturating_sub(ns(TAKEOVER_MARGIN))
        .saturating_sub(ns(own_dead_man))
}

/// The master-down interval of a backup whose hello says `advbase` (as on
/// the wire) and `advskew` (effective), for a VHID whose own base is `own`:
/// a fast-mode hello says advbase 0, and every node of a fast VHID uses the
/// same `advbase_ms` (docs/protocol.md §2), so ours gives it its length. A
/// backup in the other mode (a misconfiguration) tells nothing: `None`.
pub fn backup_master_down(own: Base, advbase: u8, advskew: u8) -> Option<Duration> {
    match (own, advbase) {
        (Base::Millis(_), 0) => Some(own.master_down_interval(advskew)),
        (Base::Seconds(_), 1..) => Some(Base::Seconds(advbase).master_down_interval(advskew)),
        _ => None,
    }
}

fn with_offset(base: VhidEntry, offset_ns: i64) -> VhidEntry {
    if base.state != VhidState::Master as u32 {
        return base;
    }
    let expires = base.master_expires_ns.saturating_add_signed(offset_ns);
    VhidEntry::new(VhidState::Master, expires)
}

/// Decides what reaches a VHID's map entry (see the module documentation).
/// Entries passed in are the election's ("base": deadline `advert + 3 ×
/// advbase`); entries returned are what to write, offset included.
#[derive(Debug)]
pub struct DeadlineGate {
    /// A refresh waiting for its advert (base).
    pending: Option<VhidEntry>,
    /// The election's entry behind what is in the map (base).
    base: VhidEntry,
    /// What is in the map.
    written: VhidEntry,
    /// [`takeover_offset_ns`] in force.
    offset_ns: i64,
    /// A previous run's MASTER deadline that still stands.
    promise_until: Option<u64>,
}

impl Default for DeadlineGate {
    fn default() -> Self {
        let init = VhidEntry::new(VhidState::Init, 0);
        Self {
            pending: None,
            base: init,
            written: init,
            offset_ns: 0,
            promise_until: None,
        }
    }
}

impl DeadlineGate {
    /// The entry in the map.
    pub fn written(&self) -> VhidEntry {
        self.written
    }

    /// The deadline of an inherited promise that still stands ([`Self::poll`] after it).
    pub fn promise_until(&self) -> Option<u64> {
        self.promise_until
    }

    /// A previous run left `entry` (MASTER until its deadline) in the map.
    pub fn inherit(&mut self, entry: VhidEntry) {
        self.written = entry;
        self.base = entry;
        self.promise_until = Some(entry.master_expires_ns);
    }

    /// The election asks for `wanted` at `now_ns`. Returns the entry to write
    /// now, or `None` when the write waits: for the advert (a MASTER entry
    /// that stays MASTER), or for an inherited promise to run out.
    pub fn on_set(&mut self, wanted: VhidEntry, now_ns: u64) -> Option<VhidEntry> {
        let master = VhidState::Master as u32;
        if wanted.state != master && self.promise_until.is_some_and(|until| now_ns <= until) {
            self.base = wanted;
            self.pending = None;
            return None;
        }
        self.promise_until = None;
        // Even a MASTER entry that ran out (a stall) is renewed only by an
        // advert that left: a master whose sends fail must stay silent.
        if wanted.state == master && self.written.state == master {
            self.pending = Some(wanted);
            None
        } else {
            self.pending = None;
            Some(self.write(wanted))
        }
    }

    /// The advert that followed was sent (`true`) or failed. Returns the held
    /// entry to write now (only after a successful send).
    pub fn on_send(&mut self, sent: bool) -> Option<VhidEntry> {
        let held = self.pending.take()?;
        sent.then(|| self.write(held))
    }

    /// A new [`takeover_offset_ns`]. Returns the MASTER entry to rewrite with
    /// it, if one is in the map on the election's behalf.
    pub fn set_offset(&mut self, offset_ns: i64) -> Option<VhidEntry> {
        if offset_ns == self.offset_ns {
            return None;
        }
        self.offset_ns = offset_ns;
        let master = VhidState::Master as u32;
        (self.promise_until.is_none() && self.written.state == master)
            .then(|| self.write(self.base))
    }

    /// An inherited promise that ran out with a non-MASTER entry waiting:
    /// returns that entry, to write now.
    pub fn poll(&mut self, now_ns: u64) -> Option<VhidEntry> {
        let until = self.promise_until?;
        if now_ns <= until {
            return None;
        }
        self.promise_until = None;
        (self.base.state != VhidState::Master as u32).then(|| self.write(self.base))
    }

    fn write(&mut self, base: VhidEntry) -> VhidEntry {
        self.base = base;
        self.written = with_offset(base, self.offset_ns);
        self.written
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
        assert_eq!(g.on_set(m3, 0), Some(m3));
        assert_eq!(g.on_send(true), None);
        // Refresh: held, written after a sent advert.
        let m4 = entry(VhidState::Master, 4 * SEC);
        assert_eq!(g.on_set(m4, SEC), None);
        assert_eq!(g.on_send(true), Some(m4));
        // Refresh whose advert failed: never written.
        let m5 = entry(VhidState::Master, 5 * SEC);
        assert_eq!(g.on_set(m5, 2 * SEC), None);
        assert_eq!(g.on_send(false), None);
        assert_eq!(g.written(), m4);
        // A step back is written at once and drops anything held.
        assert_eq!(g.on_set(m5, 2 * SEC), None);
        assert_eq!(g.on_set(backup, 2 * SEC), Some(backup));
        assert_eq!(g.on_send(true), None);
    }

    /// A master whose entry ran out (its controller stalled) renews it only
    /// with an advert that left, like any refresh.
    #[test]
    fn an_expired_master_entry_waits_for_the_advert_too() {
        let mut g = DeadlineGate::default();
        let m3 = entry(VhidState::Master, 3 * SEC);
        assert_eq!(g.on_set(m3, 0), Some(m3));
        let m9 = entry(VhidState::Master, 9 * SEC);
        assert_eq!(g.on_set(m9, 6 * SEC), None);
        assert_eq!(g.on_send(false), None);
        assert_eq!(g.on_set(m9, 6 * SEC), None);
        assert_eq!(g.on_send(true), Some(m9));
    }

    #[test]
    fn the_offset_moves_master_deadlines_and_follows_changes() {
        let own = Duration::from_secs(3);
        assert_eq!(takeover_offset_ns(own, None), 0);
        // advskew 100 at advbase 1: 3 s + 100/256 s, less the margin.
        let md = crate::election::master_down_interval(1, 100);
        let off = takeover_offset_ns(own, Some(md));
        assert_eq!(off, 390_625_000 - 2_000_000);
        // A backup with advskew 0 takes over at 3 s: we stop 2 ms before.
        let off0 = takeover_offset_ns(own, Some(crate::election::master_down_interval(1, 0)));
        assert_eq!(off0, -2_000_000);

        let mut g = DeadlineGate::default();
        assert_eq!(g.set_offset(off), None, "nothing MASTER to move");
        let m3 = entry(VhidState::Master, 3 * SEC);
        let moved = entry(VhidState::Master, 3 * SEC + off as u64);
        assert_eq!(g.on_set(m3, 0), Some(moved));
        // The refresh keeps the offset.
        let m4 = entry(VhidState::Master, 4 * SEC);
        assert_eq!(g.on_set(m4, SEC), None);
        assert_eq!(
            g.on_send(true),
            Some(entry(VhidState::Master, 4 * SEC + off as u64))
        );
        // The backup's skew falls to 0: rewritten at once, from the last sent advert.
        assert_eq!(
            g.set_offset(off0),
            Some(entry(VhidState::Master, 4 * SEC - 2_000_000))
        );
        // A held refresh is not what an offset change writes.
        let m5 = entry(VhidState::Master, 5 * SEC);
        assert_eq!(g.on_set(m5, 2 * SEC), None);
        assert_eq!(g.set_offset(0), Some(m4));
        assert_eq!(g.on_send(true), Some(m5));
        // Non-MASTER entries carry no deadline to move.
        let backup = entry(VhidState::Backup, 0);
        assert_eq!(g.on_set(backup, 3 * SEC), Some(backup));
        assert_eq!(g.set_offset(off), None);
    }

    /// A backup's takeover moment from its hello: whole seconds as the BSDs,
    /// fast mode with the VHID's own advbase_ms (the hello says 0), nothing
    /// from a backup in the other mode.
    #[test]
    fn backup_master_down_reads_both_modes() {
        let secs = Base::Seconds(1);
        assert_eq!(
            backup_master_down(secs, 1, 100),
            Some(Duration::from_nanos(3_390_625_000))
        );
        assert_eq!(backup_master_down(secs, 2, 0), Some(Duration::from_secs(6)));
        let fast = Base::Millis(10);
        assert_eq!(
            backup_master_down(fast, 0, 100),
            Some(Duration::from_nanos(33_906_250))
        );
        assert_eq!(backup_master_down(fast, 1, 100), None);
        assert_eq!(backup_master_down(secs, 0, 100), None);
        // At 10 ms and advskew 100 a silent master stops 2 ms before the backup.
        let off = takeover_offset_ns(3 * fast.duration(), backup_master_down(fast, 0, 100));
        assert_eq!(off, 33_906_250 - 2_000_000 - 30_000_000);
    }

    /// A restarted controller keeps the dead one's MASTER entry until its
    /// deadline: its election's BACKUP waits, then is written by `poll`; a
    /// MASTER of its own replaces the promise.
    #[test]
    fn an_inherited_promise_stands_until_its_deadline() {
        let mut g = DeadlineGate::default();
        let promised = entry(VhidState::Master, 3 * SEC);
        g.inherit(promised);
        let backup = entry(VhidState::Backup, 0);
        assert_eq!(g.on_set(entry(VhidState::Init, 0), SEC), None);
        assert_eq!(g.on_set(backup, SEC), None);
        assert_eq!(g.written(), promised);
        assert_eq!(g.set_offset(1_000), None, "a promise is not ours to move");
        assert_eq!(g.poll(3 * SEC), None, "the deadline itself still counts");
        assert_eq!(g.poll(3 * SEC + 1), Some(backup));
        assert_eq!(g.poll(4 * SEC), None);

        let mut g = DeadlineGate::default();
        g.inherit(promised);
        let m5 = entry(VhidState::Master, 5 * SEC);
        // Still MASTER in the map: the new deadline waits for the advert.
        assert_eq!(g.on_set(m5, 2 * SEC), None);
        assert_eq!(g.on_send(true), Some(m5));
        assert_eq!(g.poll(6 * SEC), None);
        // After the promise ran out, an election's BACKUP is written at once.
        let mut g = DeadlineGate::default();
        g.inherit(promised);
        assert_eq!(g.on_set(backup, 4 * SEC), Some(backup));
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
            advbase: crate::election::Base::Seconds(1),
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
                        if let Some(e) = g.on_set(wanted, now) {
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
