//! The node's demotion and its reasons (docs/protocol.md §2): sans-IO.
//!
//! carp(4) keeps one node-wide demotion counter that every VHID adds to the
//! advskew it sends (FreeBSD `V_carp_demotion`, changed through
//! `carp_demote_adj` by interface-down, pfsync and the `net.inet.carp.demotion`
//! sysctl). Here the counter is the sum of named parts, so that `carp status`
//! and `carp_demotion{reason}` can say *why* a node is demoted, as OPNsense's
//! status page does for maintenance mode:
//!
//! | reason | value |
//! |---|---|
//! | `link` | 240 per CARP interface that is down (FreeBSD's `ifdown_demotion_factor`) |
//! | `sync` | 240 while the sync peers' bulk transfer is pending (pfsync's `V_pfsync_carp_adj`) |
//! | `operator` | `carp demote +N / -N / reset`: 0..=[`OPERATOR_MAX`] |
//! | `maintenance` | [`MAINTENANCE_DEMOTION`] while `carp maintenance on` |
//!
//! The total is not capped (two interfaces down make 480, as FreeBSD counts);
//! what the wire carries is: effective advskew = min(advskew + total, 240)
//! ([`Demotion::effective_advskew`], the same rule as
//! `election::Vhid::effective_advskew`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::election::MAX_EFFECTIVE_ADVSKEW;

/// Demotion while persistent CARP maintenance mode is on: OPNsense's "Enter
/// Persistent CARP Maintenance Mode" adds 240 (CARP_MAXSKEW), so every VHID
/// advertises the worst advskew a healthy peer can beat.
pub const MAINTENANCE_DEMOTION: u32 = 240;

/// Largest operator demotion. The effective advskew stops at 240 anyway, so a
/// larger counter would change nothing on the wire and only make a later
/// `carp demote -N` look as if it did nothing.
pub const OPERATOR_MAX: u32 = 240;

/// Why a node is demoted; also the `reason` label of `carp_demotion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Link,
    Sync,
    Operator,
    Maintenance,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Link,
        Reason::Sync,
        Reason::Operator,
        Reason::Maintenance,
    ];

    /// Metric label / status key; part of the interface.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Link => "link",
            Reason::Sync => "sync",
            Reason::Operator => "operator",
            Reason::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The node's demotion, per reason. Serialized as it appears in `carp status
/// --json` (`"demotion_reasons": {"link": 0, "sync": 0, "operator": 50,
/// "maintenance": 0}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demotion {
    #[serde(default)]
    pub link: u32,
    #[serde(default)]
    pub sync: u32,
    #[serde(default)]
    pub operator: u32,
    #[serde(default)]
    pub maintenance: u32,
}

impl Demotion {
    /// The value of one reason.
    pub const fn get(&self, reason: Reason) -> u32 {
        match reason {
            Reason::Link => self.link,
            Reason::Sync => self.sync,
            Reason::Operator => self.operator,
            Reason::Maintenance => self.maintenance,
        }
    }

    /// The node-wide counter every VHID is told (`Event::SetDemotion`):
    /// the sum, saturating (it never wraps into "not demoted").
    pub fn total(&self) -> u32 {
        Reason::ALL
            .iter()
            .fold(0u32, |sum, r| sum.saturating_add(self.get(*r)))
    }

    /// The reasons that demote, in [`Reason::ALL`] order.
    pub fn active(&self) -> impl Iterator<Item = (Reason, u32)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, v)| *v > 0)
    }

    /// `min(advskew + total, 240)`: what a VHID with this advskew sends.
    pub fn effective_advskew(&self, advskew: u8) -> u8 {
        let skew = u32::from(advskew).saturating_add(self.total());
        // The min() makes the conversion infallible.
        u8::try_from(skew.min(u32::from(MAX_EFFECTIVE_ADVSKEW))).unwrap_or(MAX_EFFECTIVE_ADVSKEW)
    }
}

impl fmt::Display for Demotion {
    /// `0`, or `290 (operator 50, maintenance 240)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.total())?;
        let mut first = true;
        for (r, v) in self.active() {
            f.write_str(if first { " (" } else { ", " })?;
            write!(f, "{r} {v}")?;
            first = false;
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A change of the operator demotion (`carp demote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DemoteChange {
    /// `+N` or `-N`: added to the operator demotion.
    By(i32),
    /// `reset`: back to 0.
    Reset,
}

impl DemoteChange {
    /// The operator demotion after this change: never below 0 (a negative
    /// counter would promote the node above its configured advskew, which
    /// the BSDs' group demotion does not allow either) nor above
    /// [`OPERATOR_MAX`].
    pub fn apply(self, current: u32) -> u32 {
        match self {
            DemoteChange::Reset => 0,
            DemoteChange::By(n) => {
                let v = i64::from(current) + i64::from(n);
                // The clamp makes the conversion infallible.
                u32::try_from(v.clamp(0, i64::from(OPERATOR_MAX))).unwrap_or(0)
            }
        }
    }
}

/// Why a `carp demote` argument is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not +N, -N or reset (N a whole number up to {OPERATOR_MAX})")]
pub struct BadDemoteChange(pub String);

impl std::str::FromStr for DemoteChange {
    type Err = BadDemoteChange;

    /// `+50`, `-50`, `50` (as `+50`) or `reset`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDemoteChange(s.to_owned());
        let t = s.trim();
        if t.eq_ignore_ascii_case("reset") {
            return Ok(DemoteChange::Reset);
        }
        let (neg, digits) = match t.as_bytes().first() {
            Some(b'+') => (false, &t[1..]),
            Some(b'-') => (true, &t[1..]),
            _ => (false, t),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = digits.parse().map_err(|_| bad())?;
        if n > OPERATOR_MAX {
            return Err(bad());
        }
        // n ≤ 240, so it fits.
        let n = i32::try_from(n).map_err(|_| bad())?;
        Ok(DemoteChange::By(if neg { -n } else { n }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demotion_total_is_the_sum_of_its_reasons() {
        let d = Demotion {
            link: 480,
            sync: 240,
            operator: 50,
            maintenance: 240,
        };
        assert_eq!(d.total(), 1010);
        assert_eq!(
            d.active().collect::<Vec<_>>(),
            vec![
                (Reason::Link, 480),
                (Reason::Sync, 240),
                (Reason::Operator, 50),
                (Reason::Maintenance, 240)
            ]
        );
        assert_eq!(Demotion::default().total(), 0);
        assert_eq!(Demotion::default().active().count(), 0);
        let huge = Demotion {
            link: u32::MAX,
            operator: 1,
            ..Demotion::default()
        };
        assert_eq!(huge.total(), u32::MAX, "saturates, never wraps to 0");
    }

    #[test]
    fn demotion_effective_advskew_caps_at_240_as_the_election() {
        let op = |operator| Demotion {
            operator,
            ..Demotion::default()
        };
        assert_eq!(op(0).effective_advskew(100), 100);
        assert_eq!(op(50).effective_advskew(0), 50);
        assert_eq!(op(50).effective_advskew(100), 150);
        assert_eq!(op(240).effective_advskew(100), 240);
        // Without demotion too (advskew 250 is sent as 240).
        assert_eq!(op(0).effective_advskew(250), 240);
        // The same numbers as the election machine.
        for (skew, dem) in [(0u8, 0u32), (100, 50), (200, 100), (254, 0), (0, u32::MAX)] {
            let mut m = crate::election::Vhid::new(crate::election::Params {
                vhid: 1,
                advbase: crate::election::Base::Seconds(1),
                advskew: skew,
                preempt: true,
            });
            m.handle(
                crate::election::Time(0),
                crate::election::Event::SetDemotion(dem),
            );
            assert_eq!(op(dem).effective_advskew(skew), m.effective_advskew());
        }
    }

    #[test]
    fn demotion_display_names_the_reasons() {
        assert_eq!(Demotion::default().to_string(), "0");
        let d = Demotion {
            operator: 50,
            maintenance: 240,
            ..Demotion::default()
        };
        assert_eq!(d.to_string(), "290 (operator 50, maintenance 240)");
        let d = Demotion {
            link: 240,
            ..Demotion::default()
        };
        assert_eq!(d.to_string(), "240 (link 240)");
    }

    #[test]
    fn demotion_json_names_every_reason() {
        let d = Demotion {
            operator: 50,
            ..Demotion::default()
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, r#"{"link":0,"sync":0,"operator":50,"maintenance":0}"#);
        assert_eq!(serde_json::from_str::<Demotion>(&json).unwrap(), d);
        // Missing reasons read as 0 (an older or newer peer of the socket).
        assert_eq!(
            serde_json::from_str::<Demotion>(r#"{"operator":7}"#).unwrap(),
            Demotion {
                operator: 7,
                ..Demotion::default()
            }
        );
    }

    #[test]
    fn demote_changes_add_clamp_and_reset() {
        assert_eq!(DemoteChange::By(50).apply(0), 50);
        assert_eq!(DemoteChange::By(50).apply(50), 100);
        assert_eq!(DemoteChange::By(-30).apply(100), 70);
        assert_eq!(DemoteChange::By(-300).apply(100), 0, "never below 0");
        assert_eq!(DemoteChange::By(200).apply(100), OPERATOR_MAX);
        assert_eq!(DemoteChange::By(i32::MAX).apply(u32::MAX), OPERATOR_MAX);
        assert_eq!(DemoteChange::By(i32::MIN).apply(0), 0);
        assert_eq!(DemoteChange::Reset.apply(120), 0);
    }

    #[test]
    fn demote_arguments_parse() {
        let p = |s: &str| s.parse::<DemoteChange>();
        assert_eq!(p("+50"), Ok(DemoteChange::By(50)));
        assert_eq!(p("-50"), Ok(DemoteChange::By(-50)));
        assert_eq!(p("50"), Ok(DemoteChange::By(50)));
        assert_eq!(p("+0"), Ok(DemoteChange::By(0)));
        assert_eq!(p("reset"), Ok(DemoteChange::Reset));
        assert_eq!(p("RESET"), Ok(DemoteChange::Reset));
        assert_eq!(p("+240"), Ok(DemoteChange::By(240)));
        for bad in [
            "",
            "+",
            "-",
            "+-5",
            "5x",
            "1e3",
            "+241",
            "99999999999",
            "reset!",
        ] {
            let err = p(bad).expect_err(bad);
            assert!(err.to_string().contains("is not +N, -N or reset"), "{err}");
        }
    }
}
