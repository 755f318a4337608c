//! `cargo xtask bench xdp | failover | sync | timing`.
use anyhow::bail;

use crate::{BenchCmd, Fault};

#[path = "conntrackd.rs"]
mod conntrackd;
#[path = "bench_failover.rs"]
mod failover;
#[path = "keepalived.rs"]
mod keepalived;
#[path = "bench_sync.rs"]
mod sync;
#[path = "bench_timing.rs"]
mod timing;

pub fn bench(which: BenchCmd) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root (BPF_PROG_TEST_RUN, network namespaces)");
    }
    match which {
        BenchCmd::Xdp { smoke } => xdp(smoke),
        BenchCmd::Timing { secs, clients } => timing::run(secs, clients),
        BenchCmd::Failover {
            runs,
            fault,
            advbase,
        } => failover(runs, fault, advbase),
        BenchCmd::Sync {
            live,
            bulk,
            flows,
            flow_rate,
            failover_runs,
            carp_only,
        } => sync::run(sync::Options {
            live,
            bulk,
            flows,
            flow_rate,
            failover_runs,
            carp_only,
        }),
    }
}

/// Per-class cost of the XDP program against an empty program, from
/// carp_tests::xdp_run (BPF_PROG_TEST_RUN; nothing is attached anywhere).
fn xdp(smoke: bool) -> anyhow::Result<()> {
    use carp_tests::xdp_run::{bench_classes, BenchOptions};
    let opts = if smoke {
        BenchOptions::SMOKE
    } else {
        BenchOptions::PRECISE
    };
    // LEAD: this is the call site of the XDP benchmark; if bench_classes'
    // signature or BenchRow changes, adjust here (feature `lab` only, so a
    // mismatch does not break the default workspace build).
    let rows = bench_classes(opts)?;
    println!(
        "{:<48} {:>12} {:>14} {:>14} {:>10}",
        "frame class", "method", "carp_xdp ns", "empty ns", "overhead"
    );
    for r in &rows {
        println!(
            "{:<48} {:>12} {:>14.1} {:>14.1} {:>10.1}",
            r.class,
            r.method.to_string(),
            r.ns_per_packet,
            r.empty_ns_per_packet,
            r.overhead_ns()
        );
    }
    let checks = check_xdp_targets(&rows);
    println!();
    for c in &checks {
        println!("{c}");
    }
    let enforced = checks.iter().filter(|c| c.enforced).count();
    let missed = checks.iter().filter(|c| c.enforced && !c.pass).count();
    if missed == 0 {
        println!("xdp targets: {enforced} of {enforced} PASS");
        Ok(())
    } else if smoke {
        println!("xdp targets: {missed} FAIL (--smoke: rough numbers, not enforced)");
        Ok(())
    } else {
        bail!("{missed} of {enforced} XDP targets missed")
    }
}

/// The XDP target of the README ("Measured results"): traffic the program
/// has nothing to do with costs at most this much over an empty XDP program
/// timed in the same run.
const UNRELATED_OVERHEAD_TARGET_NS: f64 = 20.0;

/// The row the target is checked on: unrelated traffic as it mostly is (its
/// destination shares no last octet with a VIP, so the prefilter array
/// keeps it off the VIP hash), timed with the repeat method (the single-run
/// rows only calibrate the method).
const UNRELATED_TARGET_CLASS: &str = "unrelated IPv4 to the interface MAC";
/// Unrelated traffic whose destination shares its last octet with a VIP
/// pays the hash lookup (docs/RESULTS.md, "What keeps it cheap"; 26-31 ns,
/// above the 20 ns of the target): enforced too, so the bench says FAIL
/// until the hot path gets cheaper.
const UNRELATED_INFO_CLASS: &str = "unrelated IPv4, last octet of a VIP";

/// One target checked against one benchmark row.
#[derive(Debug, PartialEq)]
struct TargetCheck {
    what: String,
    overhead_ns: f64,
    limit_ns: f64,
    pass: bool,
    /// Printed as INFO, never fails the run.
    enforced: bool,
}

impl std::fmt::Display for TargetCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = match (self.enforced, self.pass) {
            (true, true) => "PASS",
            (true, false) => "FAIL",
            (false, _) => "INFO",
        };
        write!(
            f,
            "{verdict}: {} +{:.1} ns over the empty program",
            self.what, self.overhead_ns
        )?;
        if self.enforced {
            write!(f, " (target <= {:.0} ns)", self.limit_ns)
        } else {
            write!(
                f,
                " (not a target; {} {:.0} ns: a destination sharing a VIP's last octet pays the VIP hash)",
                if self.pass { "within" } else { "above" },
                self.limit_ns
            )
        }
    }
}

/// Checks the [`UNRELATED_TARGET_CLASS`] row (repeat method) against
/// [`UNRELATED_OVERHEAD_TARGET_NS`] over the same run's empty program, and
/// reports the [`UNRELATED_INFO_CLASS`] row beside it. A run without the
/// target row fails: the target would otherwise pass unchecked.
fn check_xdp_targets(rows: &[carp_tests::xdp_run::BenchRow]) -> Vec<TargetCheck> {
    use carp_tests::xdp_run::Method;
    let limit_ns = UNRELATED_OVERHEAD_TARGET_NS;
    let mut checks = Vec::new();
    // Both are unrelated traffic: the target holds for each (the "last octet
    // of a VIP" row pays the prefilter's hash lookup and misses the target
    // today; issue "The forwarding hot path" is about that).
    for (class, enforced) in [(UNRELATED_TARGET_CLASS, true), (UNRELATED_INFO_CLASS, true)] {
        let row = rows
            .iter()
            .find(|r| r.class == class && matches!(r.method, Method::Repeat(_)));
        checks.push(match row {
            Some(r) => TargetCheck {
                what: format!("{} ({})", r.class, r.method),
                overhead_ns: r.overhead_ns(),
                limit_ns,
                pass: r.overhead_ns().is_finite() && r.overhead_ns() <= limit_ns,
                enforced,
            },
            None => TargetCheck {
                what: format!("{class} (row not measured)"),
                overhead_ns: f64::NAN,
                limit_ns,
                pass: false,
                enforced,
            },
        });
    }
    checks
}

/// carp against keepalived, fault by fault: see bench_failover.rs.
fn failover(runs: u32, fault: Option<Fault>, advbase: u8) -> anyhow::Result<()> {
    failover::run(runs, fault, advbase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carp_tests::xdp_run::{BenchRow, Method};

    fn row(class: &'static str, method: Method, carp: f64, empty: f64) -> BenchRow {
        BenchRow {
            class,
            method,
            ns_per_packet: carp,
            empty_ns_per_packet: empty,
        }
    }

    #[test]
    fn xdp_target_passes_fails_and_ignores_other_rows() {
        let rows = [
            row(
                "unrelated IPv4 to the interface MAC",
                Method::Repeat(1000),
                30.0,
                12.0,
            ),
            row(
                "unrelated IPv4, last octet of a VIP",
                Method::Repeat(1000),
                40.0,
                12.0,
            ),
            row(
                "unrelated IPv4 to the interface MAC",
                Method::Single,
                90.0,
                12.0,
            ),
            row("VIP traffic, MASTER", Method::Repeat(1000), 200.0, 12.0),
        ];
        let checks = check_xdp_targets(&rows);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks[0].enforced && checks[0].pass);
        assert!((checks[0].overhead_ns - 18.0).abs() < 1e-9);
        assert!(checks[1].enforced && !checks[1].pass);
        assert!(checks[0]
            .to_string()
            .starts_with("PASS: unrelated IPv4 to the interface MAC (repeat 1000) +18.0 ns"));
        assert!(checks[1].to_string().starts_with("FAIL: "));

        let slow = [row(
            UNRELATED_TARGET_CLASS,
            Method::Repeat(1000),
            33.0,
            12.0,
        )];
        let checks = check_xdp_targets(&slow);
        assert!(checks[0].enforced && !checks[0].pass);
        assert!(checks[0].to_string().starts_with("FAIL: "), "{}", checks[0]);
    }

    #[test]
    fn xdp_target_without_rows_fails() {
        let checks = check_xdp_targets(&[]);
        assert!(checks.iter().any(|c| c.enforced && !c.pass), "{checks:?}");
    }
}
