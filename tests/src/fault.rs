//! The faults the session-survival scenarios inject on the master of a
//! [`Pair`] (fw1, MASTER of every VHID), and the wait for fw2's takeover.
//! Shared by the IPv4 and the IPv6 scenarios, so both fail over the same way.
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::lab::Router;
use crate::pair::Pair;
use crate::sessions::{Sessions, SessionsReport};

/// How long the flows run before the fault.
pub const BEFORE_FAULT: Duration = Duration::from_millis(1500);
/// And how long after fw2 holds every VHID.
pub const AFTER_TAKEOVER: Duration = Duration::from_secs(2);
/// Master-down (3 s + 100/256 s) with ample slack for a loaded machine.
pub const T_TAKEOVER: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the master's controller: its adverts stop, fw2 waits
    /// out the master-down interval.
    Kill9,
    /// SIGTERM of the master's controller (it bows out at once).
    SigTerm,
    /// The master's LAN link down (carrier lost on both veth ends).
    LanDown,
    /// Every link of the master down at once: the node is gone.
    NodeDeath,
}

impl Fault {
    /// Injects the fault on fw1. `kill -9` returns once fw1 has exited.
    pub fn inject(self, pair: &mut Pair) {
        let fw1 = Router::Fw1;
        match self {
            Fault::Kill9 => {
                pair.node(fw1).kill9().expect("kill -9 of fw1");
                pair.node(fw1)
                    .wait_exit(Duration::from_secs(2))
                    .expect("fw1 exits on SIGKILL");
            }
            Fault::SigTerm => pair.node(fw1).sigterm().expect("SIGTERM to fw1"),
            Fault::LanDown => pair
                .lab
                .set_link(fw1, "lan0", false)
                .expect("fw1's lan0 down"),
            Fault::NodeDeath => {
                // All at once, the sync link first: a dead node cannot tell
                // its peer (no hello hands the VHIDs over).
                pair.lab
                    .set_links(fw1, &["sync0", "lan0", "wan0"], false)
                    .expect("fw1's links down");
            }
        }
    }
}

/// Injects `fault` on fw1 and waits until fw2 is MASTER of every VHID of the
/// pair; returns the time from the fault to that. Panics with both logs if
/// that takes longer than `timeout`.
pub fn fail_over(pair: &mut Pair, fault: Fault, timeout: Duration) -> Duration {
    let t_fault = Instant::now();
    fault.inject(pair);
    let deadline = t_fault + timeout;
    let vhids = pair.vhids();
    loop {
        let fw2 = pair.node(Router::Fw2);
        if vhids
            .iter()
            .all(|&v| fw2.state(v).as_deref() == Some("MASTER"))
        {
            return t_fault.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}: fw2 did not take VHIDs {vhids:?} within {timeout:?}\n{}",
            pair.logs()
        );
        sleep(Duration::from_millis(20));
    }
}

/// The second half of a session scenario, for `sessions` started at least
/// [`BEFORE_FAULT`] ago: `fault` on fw1, fw2 MASTER of every VHID,
/// [`AFTER_TAKEOVER`] more, `after` (what the scenario prints of the
/// routers then), the flows drained; prints the report with the stalls at
/// the failover. `name` labels the messages.
pub fn through_fault(
    pair: &mut Pair,
    sessions: Sessions,
    fault: Fault,
    name: &str,
    after: impl FnOnce(&Pair),
) -> Outcome {
    let fault_at = sessions.age();
    let takeover = fail_over(pair, fault, T_TAKEOVER);
    sleep(AFTER_TAKEOVER);
    after(pair);
    let report = sessions
        .finish()
        .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", pair.logs()));
    eprintln!(
        "{name}: fault at +{:.3} s, fw2 MASTER of every VHID {:.3} s later\n{report}\n  {}",
        fault_at.as_secs_f64(),
        takeover.as_secs_f64(),
        report.failover_stalls(fault_at, takeover)
    );
    Outcome {
        report,
        fault_at,
        takeover,
    }
}

/// What a session scenario saw across one fault.
pub struct Outcome {
    pub report: SessionsReport,
    /// Offset of the fault from the start of the flows.
    pub fault_at: Duration,
    /// From the fault until fw2 was MASTER of every VHID.
    pub takeover: Duration,
}

impl Outcome {
    /// Panics, with the report and both logs, unless every flow survived
    /// the failover ([`SessionsReport::survival_failures`]).
    pub fn assert_survived(&self, pair: &Pair, flows: &str) {
        let why = self.report.survival_failures(self.fault_at, self.takeover);
        assert!(
            why.is_empty(),
            "{flows} did not survive the failover (takeover {:.3} s): {why:?}\n{}\n{}",
            self.takeover.as_secs_f64(),
            self.report,
            pair.logs()
        );
    }

    /// Panics unless fw2 took over within 1 s of a LAN link loss: fw1's
    /// sync hello says INIT for the LAN VHID and fw2 takes it at once (the
    /// WAN VHID follows fw1's demotion), not after the 3.4 s master-down
    /// interval. A coarse bound for a shared machine: the numbers are in
    /// `cargo xtask bench failover --fault link-down`.
    pub fn assert_handed_over(&self, pair: &Pair) {
        assert!(
            self.takeover < Duration::from_millis(1000),
            "LAN link down: fw2 took {:.3} s; the sync hello handover did not happen\n{}",
            self.takeover.as_secs_f64(),
            pair.logs()
        );
    }
}
