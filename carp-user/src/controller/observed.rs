//! What the status page shows about a VHID that the election machine does not
//! keep: its last transition (when, from, to, why) and the master it hears.
//! Recorded by the shell as actions are applied and adverts accepted, turned
//! into `carp status` fields and `carp_*` gauges here.

use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::election::{PeerAdvert, State, Time, Why};
use crate::status::{MasterHeard, TransitionStatus};

use super::state_name;

/// The last state change of a VHID.
#[derive(Clone, Copy, Debug)]
pub(super) struct LastTransition {
    /// Unix time (s): the wall clock, so it compares with logs and dashboards.
    pub unix: f64,
    pub from: State,
    pub to: State,
    pub why: Why,
}

impl LastTransition {
    pub fn now(from: State, to: State, why: Why) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        LastTransition {
            unix,
            from,
            to,
            why,
        }
    }

    pub fn status(&self) -> TransitionStatus {
        TransitionStatus {
            at: self.unix,
            from: state_name(self.from).to_uppercase(),
            to: state_name(self.to).to_uppercase(),
            why: self.why.label().to_owned(),
        }
    }
}

/// The last accepted advert from the master a BACKUP listens to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heard {
    /// The advert's IP source (IPv4, or the link-local of an IPv6 one).
    pub from: IpAddr,
    pub advert: PeerAdvert,
    /// Arrival (the XDP program's timestamp, CLOCK_MONOTONIC).
    pub at: Time,
}

impl Heard {
    /// What to keep after an accepted advert was handled, given what was
    /// kept before and the VHID's state now: a BACKUP hears its master; a
    /// bow-out is a master leaving, not one to listen to (a late copy heard
    /// after stepping back for a better master leaves that one in place); a
    /// MASTER or INIT hears nobody it follows.
    pub fn after_advert(
        before: Option<Heard>,
        state: State,
        from: IpAddr,
        advert: PeerAdvert,
        at: Time,
    ) -> Option<Heard> {
        match state {
            State::Backup if advert.is_bow_out() => before,
            State::Backup => Some(Heard { from, advert, at }),
            State::Master | State::Init => None,
        }
    }

    pub fn status(&self, now: Time) -> MasterHeard {
        MasterHeard {
            address: self.from.to_string(),
            advbase: self.advert.advbase,
            advskew: self.advert.advskew,
            age_ms: u64::try_from(now.saturating_duration_since(self.at).as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_backup_hears_a_master() {
        let a: IpAddr = Ipv4Addr::new(10, 77, 0, 12).into();
        let adv = PeerAdvert {
            advbase: 1,
            advskew: 100,
        };
        let h = Heard::after_advert(None, State::Backup, a, adv, Time::from_millis(1000))
            .expect("heard");
        assert_eq!(
            h.status(Time::from_millis(1420)),
            MasterHeard {
                address: "10.77.0.12".into(),
                advbase: 1,
                advskew: 100,
                age_ms: 420
            }
        );
        assert!(Heard::after_advert(Some(h), State::Master, a, adv, Time::ZERO).is_none());
        assert!(Heard::after_advert(Some(h), State::Init, a, adv, Time::ZERO).is_none());
        let bow = PeerAdvert::BOW_OUT;
        assert!(Heard::after_advert(None, State::Backup, a, bow, Time::ZERO).is_none());
        let kept = Heard::after_advert(Some(h), State::Backup, a, bow, Time::from_millis(2000))
            .expect("a late bow-out copy keeps the master heard");
        assert_eq!(kept.at, h.at);
    }

    #[test]
    fn a_transition_reads_as_the_status_shows_it() {
        let t = LastTransition::now(State::Backup, State::Master, Why::Preempt);
        let s = t.status();
        assert_eq!(
            (s.from.as_str(), s.to.as_str(), s.why.as_str()),
            ("BACKUP", "MASTER", "preempt")
        );
        assert!(s.at > 1_600_000_000.0, "wall clock: {}", s.at);
    }
}
