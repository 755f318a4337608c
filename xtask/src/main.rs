//! `cargo xtask setup | run | test | bench | fuzz | dist`: the project's entry points.
//!
//! Two builds of this binary exist. The default one (what `cargo xtask` runs)
//! has no dependency on carp-user, because carp-user's build.rs builds the
//! eBPF object and so needs exactly what `setup` installs (nightly, rust-src,
//! bpf-linker): `setup` and `test` must work on a fresh machine. `run` and
//! `bench` need the lab and the XDP harness from carp-tests, so after setup
//! the default build re-runs itself as `cargo run -p xtask --features lab`
//! (see [`delegate_to_lab_build`]).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

#[cfg(feature = "lab")]
mod bench;
mod dist;
mod fuzz;
#[cfg(feature = "lab")]
mod interrupt;
#[cfg(feature = "lab")]
mod lab_demo;
mod setup;
mod test;

/// Set in the environment of the `--features lab` re-run: setup already ran.
const SETUP_DONE_ENV: &str = "XTASK_SETUP_DONE";

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "carp: setup, lab, tests, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (nightly rust-src, LLVM, bpf-linker, lab tools); idempotent.
    Setup {
        /// Print the install commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build, start the two-router lab, show the election and a failover with its gap.
    Run {
        /// Run the demonstration and exit instead of staying up until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Every test tier: unit/property, XDP via BPF_PROG_TEST_RUN, namespace scenarios.
    /// Extra arguments go to `cargo test` (e.g. a test name filter, or `-- --nocapture`).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Runs the cargo-fuzz targets of fuzz/ (all, or those named) for a
    /// bounded time each; exits non-zero on a crash. Needs nightly and cargo-fuzz.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets to run (default: every target of `cargo fuzz list`).
        targets: Vec<String>,
    },
    /// Release build and the Debian package target/dist/carp_<version>_<arch>.deb
    /// (binary, systemd unit, example config, Grafana dashboard), checked after the build.
    Dist,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCmd {
    /// Failover gap in the lab, measured by the 1 ms probe, over several runs,
    /// for carp and for keepalived (VRRPv3) on the same topology.
    Failover {
        /// Number of failovers to measure per fault and implementation.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// How the master fails; default: kill9, sigstop, link-down,
        /// node-death and sigterm.
        #[arg(long, value_enum)]
        fault: Option<Fault>,
        /// advbase of both routers, seconds.
        #[arg(long, default_value_t = 1)]
        advbase: u8,
        /// Fast mode: carp at advbase_ms 10 beside keepalived at advert_int
        /// 0.01, the fast-mode targets, and steady runs under load.
        #[arg(long)]
        fast: bool,
        /// With --fast: seconds of each steady run (carp idle and loaded,
        /// keepalived idle); 0 skips them.
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
    },
    /// Conntrack replication: carp's sync against conntrackd (FTFW) on the
    /// same lab: live inserts, forwarded flows, a bulk transfer, CPU and
    /// memory, and the TCP stall at a kill -9 failover.
    Sync {
        /// Entries inserted on fw1 for the live replication measurement.
        #[arg(long, default_value_t = 100_000)]
        live: u32,
        /// Entries on fw1 before fw2's daemon starts (the bulk transfer).
        #[arg(long, default_value_t = 1_000_000)]
        bulk: u32,
        /// Forwarded UDP flows from the client through the NAT.
        #[arg(long, default_value_t = 20_000)]
        flows: u32,
        /// Send rate of those flows, flows per second.
        #[arg(long, default_value_t = 10_000)]
        flow_rate: u32,
        /// kill -9 failovers per implementation for the TCP stall (0: skip).
        #[arg(long, default_value_t = 3)]
        failover_runs: u32,
        /// Measure carp only (no conntrackd/keepalived runs, no ratios): for
        /// working on carp's numbers.
        #[arg(long)]
        carp_only: bool,
    },
    /// Advert interval error of the MASTER under a metrics scrape flood and a
    /// control-socket flood (docs/RESULTS.md, "Advert timing under load").
    Timing {
        /// Capture length per condition, seconds.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Flood client threads per flood.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Per-packet cost of the XDP program per frame class (BPF_PROG_TEST_RUN).
    Xdp {
        /// A quick run that only checks every class measures its path.
        #[arg(long)]
        smoke: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the master's controller.
    Kill9,
    /// SIGSTOP the master's controller (stalled; the dead-man deadline expires).
    Sigstop,
    /// SIGTERM: the orderly bow-out.
    Sigterm,
    /// Set the master's lan0 down (a cable pull).
    LinkDown,
    /// Set all of the master's links down at once (lan0, wan0, sync0): the
    /// death of the whole node, as far as its peers can tell.
    NodeDeath,
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo that runs us (`$CARGO`), else `cargo` from PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a cargo command with inherited output; fails on a non-zero exit.
pub fn run_cargo(args: &[&str]) -> anyhow::Result<()> {
    let st = cargo()
        .args(args)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    anyhow::ensure!(st.success(), "cargo {} failed ({st})", args.join(" "));
    Ok(())
}

/// Builds the `carp` binary and returns its path.
/// Builds the release `carp` and points `carp_tests::node::carp_bin` at it
/// (`CARP_BIN`): benchmarks measure what an operator runs. Call before any
/// thread starts (it sets an environment variable).
pub fn build_release_carp() -> anyhow::Result<PathBuf> {
    run_cargo(&["build", "--release", "-p", "carp-user", "--bin", "carp"])?;
    let bin = target_dir().join("release").join("carp");
    anyhow::ensure!(bin.is_file(), "{} missing after the build", bin.display());
    std::env::set_var("CARP_BIN", &bin);
    Ok(bin)
}

pub fn build_carp() -> anyhow::Result<PathBuf> {
    run_cargo(&["build", "-p", "carp-user", "--bin", "carp"])?;
    let bin = target_dir().join("debug").join("carp");
    anyhow::ensure!(bin.is_file(), "{} missing after the build", bin.display());
    Ok(bin)
}

fn setup_once() -> anyhow::Result<()> {
    if std::env::var_os(SETUP_DONE_ENV).is_some() {
        return Ok(());
    }
    setup::setup()
}

/// `cargo` and the tools it installs live in ~/.cargo/bin; make sure the
/// children we start find them even from a shell that lacks it on PATH.
fn ensure_cargo_bin_on_path() {
    let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    else {
        return;
    };
    let bin = home.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Single-threaded here, before anything else starts.
        std::env::set_var("PATH", joined);
    }
}

/// Re-runs this command line with the `lab` feature, which links carp-tests.
#[cfg(not(feature = "lab"))]
fn delegate_to_lab_build() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "lab",
        "--",
    ])
    .args(std::env::args_os().skip(1))
    .env(SETUP_DONE_ENV, "1");
    // exec: Ctrl-C and the exit status go straight to the lab build.
    let err = cmd.exec();
    Err(err).context("cannot exec cargo run -p xtask --features lab")
}

fn main() -> anyhow::Result<()> {
    ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup { dry_run: false } => setup::setup(),
        Cmd::Setup { dry_run: true } => setup::setup_dry_run(),
        Cmd::Test { args } => {
            setup_once()?;
            test::test(&args)
        }
        Cmd::Fuzz { time, targets } => fuzz::fuzz(time, &targets),
        Cmd::Dist => {
            setup_once()?;
            dist::dist()
        }
        #[cfg(not(feature = "lab"))]
        Cmd::Run { .. } | Cmd::Bench { .. } => {
            setup_once()?;
            delegate_to_lab_build()
        }
        #[cfg(feature = "lab")]
        Cmd::Run { once } => {
            setup_once()?;
            lab_demo::run(once)
        }
        #[cfg(feature = "lab")]
        Cmd::Bench { which } => {
            setup_once()?;
            bench::bench(which)
        }
    }
}
