//! Shared by the integration suites, `cargo xtask run` and the benchmarks:
//! the namespace topology builder (`lab`), node processes, probes, the
//! session-survival flows and conntrack helpers (`sessions`), captures on
//! the switch ports that see two answerers (`watch`), and the
//! `BPF_PROG_TEST_RUN` harness (`xdp_run`).
pub mod lab;
pub mod netns;
pub mod node;
pub mod pair;
pub mod probe;
pub mod sessions;
pub mod watch;
pub mod xdp_run;
