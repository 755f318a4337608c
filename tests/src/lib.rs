//! Shared by the integration suites, `cargo xtask run` and the benchmarks:
//! the namespace topology builder (`lab`), node processes, probes, the
//! session-survival flows and conntrack helpers (`sessions`) and the faults
//! they fail over on (`fault`), captures on the switch ports that see two
//! answerers (`watch`), and the `BPF_PROG_TEST_RUN` harness (`xdp_run`).
//!
//! Without the `lab` feature (on by default) only `netns` and `util` are
//! built, which need nothing from carp-user: xtask's default build (the one
//! that must run `setup` on a bare machine) uses them so.
#[cfg(feature = "lab")]
pub mod fault;
#[cfg(feature = "lab")]
pub mod lab;
pub mod netns;
#[cfg(feature = "lab")]
pub mod node;
#[cfg(feature = "lab")]
pub mod pair;
#[cfg(feature = "lab")]
pub mod probe;
#[cfg(feature = "lab")]
pub mod sessions;
pub mod util;
#[cfg(feature = "lab")]
pub mod watch;
#[cfg(feature = "lab")]
pub mod xdp_run;
