//! `cargo xtask bench xdp | failover`.
use anyhow::bail;

use crate::{BenchCmd, Fault};

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

/// LEAD: not written yet (to be done once `carp run` works end to end): for
/// each run, build the lab, start both controllers, wait for the election,
/// start a 1 ms Probe client -> server, inject `fault` into the master, wait
/// for the takeover, and collect `ProbeReport::max_gap` / `lost` /
/// `duplicates`; print min/median/p90/max. The argument parsing is final.
fn failover(runs: u32, fault: Fault, advbase: u8) -> anyhow::Result<()> {
    bail!(
        "`cargo xtask bench failover` is not written yet (runs={runs}, fault={fault:?}, advbase={advbase}); \
         see xtask/src/bench.rs"
    )
}
