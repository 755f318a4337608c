//! `cargo xtask test`: every tier in one `cargo test --workspace`.
//!
//! - tier 1: unit and property tests (no privileges);
//! - tier 2: the XDP program through `BPF_PROG_TEST_RUN` (root);
//! - tier 3: namespace scenarios with each node as its own process (root).
//!
//! Then the Debian package of the debug binary it built is made and checked
//! as `cargo xtask dist` does (`dist::test_package`; skipped when arguments
//! select a subset of the tests).
//!
//! Root-only tests print `SKIPPED (not root): <test>` to stderr and pass
//! without root, except under `CI=true`, where they fail (see
//! `netns::require_root`); so does this command, up front. This command
//! reads cargo test's stderr too, counts those lines and ends with
//! "N tests SKIPPED (not root)" and their names.
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context as _};

use carp_tests::netns;
use carp_tests::util::is_root;

use crate::{cargo, run_cargo, target_dir};

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered: u64,
    binaries: u64,
    failures: Vec<String>,
    /// Tests that reported `netns::SKIP_MARKER` (root-only tests run without root).
    skipped: Vec<String>,
}

impl Totals {
    /// Folds one line of the tests' stderr into the totals (skip markers).
    fn stderr_line(&mut self, line: &str) {
        if let Some(pos) = line.find(netns::SKIP_MARKER) {
            let name = line[pos + netns::SKIP_MARKER.len()..].trim();
            self.skipped.push(name.to_owned());
        }
    }

    /// Folds one line of libtest output into the totals.
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            // "ok. 15 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 3.16s":
            // each part is "<n> <what>" after an optional "ok." / "FAILED.".
            for part in rest.split(';') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let Some(i) = words.iter().position(|w| w.parse::<u64>().is_ok()) else {
                    continue;
                };
                let n: u64 = words[i].parse().unwrap_or(0);
                match words.get(i + 1).copied() {
                    Some("passed") => self.passed += n,
                    Some("failed") => self.failed += n,
                    Some("ignored") => self.ignored += n,
                    Some("filtered") => self.filtered += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failures.push(name.to_owned());
        }
    }
}

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = is_root();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci && !root {
        bail!("CI=true but not root: the XDP and namespace tiers need root and may not be skipped under CI");
    }
    if root {
        let removed =
            netns::cleanup_stale(netns::PREFIX_ROOT).context("removing stale lab namespaces")?;
        if !removed.is_empty() {
            println!(
                "xtask test: removed {} stale namespaces: {}",
                removed.len(),
                removed.join(" ")
            );
        }
    } else {
        println!("xtask test: not root: the XDP and namespace tests will print SKIPPED and pass");
    }

    // Builds the carp binary the scenarios start (and, through carp-user's
    // build.rs, the eBPF object).
    run_cargo(&["build", "--workspace"])?;
    let carp_bin = target_dir().join("debug").join("carp");

    let mut cmd = cargo();
    // --no-fail-fast: one failing tier must not hide the results of the others.
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("CARP_BIN", &carp_bin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let stderr = child.stderr.take().context("cargo test stderr")?;
    // stderr (cargo's progress, the tests' skip markers) is passed through
    // as it comes, and the markers are counted.
    let err_reader = std::thread::spawn(move || {
        let mut t = Totals::default();
        let mut err = std::io::stderr();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(err, "{line}");
            t.stderr_line(&line);
        }
        t.skipped
    });
    let mut totals = Totals::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        let _ = writeln!(out, "{line}");
        totals.line(&line);
    }
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    totals.skipped = err_reader.join().unwrap_or_default();

    // The package an operator installs, from the binary just tested.
    let package = if extra.is_empty() {
        let t = Instant::now();
        let result = crate::dist::test_package(&carp_bin);
        match &result {
            Ok(n) => println!(
                "xtask test: Debian package built and checked ({n} checks) in {:.1} s",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => println!("xtask test: Debian package check FAILED: {e:#}"),
        }
        result.map(|_| ())
    } else {
        println!("xtask test: Debian package check skipped (test arguments given)");
        Ok(())
    };

    println!();
    println!(
        "xtask test: {} passed, {} failed, {} ignored, {} filtered out, in {} test binaries; {:.1} s{}",
        totals.passed,
        totals.failed,
        totals.ignored,
        totals.filtered,
        totals.binaries,
        t0.elapsed().as_secs_f64(),
        if root { "" } else { " (not root)" },
    );
    if !totals.skipped.is_empty() {
        // libtest counted them as passed; say what they really did.
        println!(
            "xtask test: {} tests SKIPPED (not root), counted as passed above: {}",
            totals.skipped.len(),
            totals.skipped.join(", ")
        );
    }
    for f in &totals.failures {
        println!("  FAILED: {f}");
    }
    if !status.success() || totals.failed > 0 {
        bail!("tests failed (cargo test: {status})");
    }
    package.context("the Debian package check failed (xtask/src/dist.rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_libtest_summaries() {
        let mut t = Totals::default();
        for l in [
            "test a::b ... ok",
            "test a::c ... FAILED",
            "test result: FAILED. 15 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.16s",
            "test result: ok. 2 passed; 0 failed; 3 ignored; 0 measured; 14 filtered out; finished in 2.19s",
        ] {
            t.line(l);
        }
        assert_eq!(
            (t.passed, t.failed, t.ignored, t.filtered, t.binaries),
            (17, 1, 3, 14, 2)
        );
        assert_eq!(t.failures, vec!["a::c".to_owned()]);
    }

    #[test]
    fn skip_markers_are_counted_by_name() {
        let mut t = Totals::default();
        for l in [
            "   Compiling carp-tests v0.1.0",
            "SKIPPED (not root): kill9_of_the_master_moves_both_vhids_and_leaves_a_silent_node",
            "test netns::tests::x ... SKIPPED (not root): netns::tests::x",
            "warning: unused",
        ] {
            t.stderr_line(l);
        }
        assert_eq!(
            t.skipped,
            vec![
                "kill9_of_the_master_moves_both_vhids_and_leaves_a_silent_node".to_owned(),
                "netns::tests::x".to_owned()
            ]
        );
    }
}
