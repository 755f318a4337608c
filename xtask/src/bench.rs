//! `cargo xtask bench xdp | failover | sync`.
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

pub fn bench(which: BenchCmd) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root (BPF_PROG_TEST_RUN, network namespaces)");
    }
    match which {
        BenchCmd::Xdp { smoke } => xdp(smoke),
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
        } => sync::run(sync::Options {
            live,
            bulk,
            flows,
            flow_rate,
            failover_runs,
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
    Ok(())
}

/// carp against keepalived, fault by fault: see bench_failover.rs.
fn failover(runs: u32, fault: Option<Fault>, advbase: u8) -> anyhow::Result<()> {
    failover::run(runs, fault, advbase)
}
