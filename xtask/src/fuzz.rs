//! `cargo xtask fuzz [--time SECS] [TARGET...]`: every cargo-fuzz target of
//! `fuzz/` (or those named) for a bounded time each, one after the other.
//!
//! Each target runs as `rustup run nightly cargo fuzz run TARGET --
//! -max_total_time=SECS -print_final_stats=1` in `fuzz/` (plus
//! `-dict=dicts/TARGET.dict` when that file exists), with its corpus in
//! `fuzz/corpus/TARGET` growing from run to run. The full libFuzzer output
//! goes to `fuzz/target/xtask-fuzz-TARGET.log`; the terminal gets the pulse
//! lines and anything about a crash. The command ends with a table of
//! executions, time and crashes per target and exits non-zero if any target
//! crashed (libFuzzer stops at the first crash and writes the input to
//! `fuzz/artifacts/TARGET/`) or could not run.
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::workspace_root;

/// What one target's run came to.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    target: String,
    /// Wall time, the build included.
    seconds: f64,
    /// libFuzzer's own time ("Done N runs in S second(s)"), if it got there.
    fuzz_seconds: Option<u64>,
    /// `stat::number_of_executed_units`, else the last `#N` seen.
    executions: u64,
    /// Inputs libFuzzer wrote as crash-/leak-/timeout-/oom- artifacts.
    crashes: Vec<String>,
    /// The run failed for another reason (build error, missing tool).
    error: Option<String>,
}

impl Outcome {
    /// Folds one line of libFuzzer/cargo-fuzz output in.
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 3668249 runs in 481 second(s)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(n), Some(s)) = (words.first(), words.get(3)) {
                if let Ok(n) = n.parse() {
                    self.executions = n;
                }
                self.fuzz_seconds = s.parse().ok();
            }
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            if let Ok(n) = v.trim().parse() {
                self.executions = n;
            }
        } else if let Some(rest) = line.strip_prefix('#') {
            // "#8388608\tpulse  cov: ..." / "#91\tNEW ..."
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = n.parse::<u64>() {
                self.executions = self.executions.max(n);
            }
        } else if let Some(pos) = line.find("Test unit written to ") {
            let path = line[pos + "Test unit written to ".len()..].trim();
            let file = path.rsplit('/').next().unwrap_or(path);
            if ["crash-", "leak-", "timeout-", "oom-", "slow-unit-"]
                .iter()
                .any(|p| file.starts_with(p))
                && !self.crashes.iter().any(|c| c == path)
            {
                self.crashes.push(path.to_owned());
            }
        }
    }

    /// Lines worth showing on the terminal while a target runs.
    fn shown(line: &str) -> bool {
        line.contains("pulse")
            || line.contains("ERROR")
            || line.contains("panicked")
            || line.contains("SUMMARY")
            || line.contains("Test unit written")
            || line.starts_with("error")
            || line.starts_with("Done ")
    }
}

/// The targets `cargo fuzz list` reports for `fuzz/`.
fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let out = nightly_cargo(fuzz_dir)
        .args(["fuzz", "list"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo fuzz list` (cargo install cargo-fuzz; rustup toolchain install nightly)")?;
    if !out.status.success() {
        bail!("`cargo fuzz list` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `rustup run nightly cargo` in `dir` (cargo-fuzz needs nightly's
/// sanitizer flags), without the environment of the cargo that runs xtask.
fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .current_dir(dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .stdin(Stdio::null());
    cmd
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let log_path: PathBuf = fuzz_dir
        .join("target")
        .join(format!("xtask-fuzz-{target}.log"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = nightly_cargo(fuzz_dir);
    cmd.args(["fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1");
    let dict = Path::new("dicts").join(format!("{target}.dict"));
    if fuzz_dir.join(&dict).is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    println!(
        "xtask fuzz: {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let t0 = Instant::now();
    // libFuzzer and cargo write to stderr; stdout is merged into it.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `rustup run nightly cargo fuzz run`")?;
    let stdout = child.stdout.take().context("stdout")?;
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stderr = child.stderr.take().context("stderr")?;
    let mut outcome = Outcome {
        target: target.to_owned(),
        ..Outcome::default()
    };
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let _ = writeln!(log, "{line}");
        if Outcome::shown(&line) {
            println!("  {target}: {line}");
        }
        outcome.line(&line);
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    for line in out_thread.join().unwrap_or_default() {
        let _ = writeln!(log, "{line}");
        outcome.line(&line);
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    outcome.seconds = t0.elapsed().as_secs_f64();
    if !status.success() && outcome.crashes.is_empty() {
        outcome.error = Some(format!(
            "cargo fuzz run {target} failed ({status}); last lines:\n{}",
            tail.join("\n")
        ));
    }
    Ok(outcome)
}

pub fn fuzz(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    let all = list_targets(&fuzz_dir)?;
    let chosen: Vec<String> = if targets.is_empty() {
        all.clone()
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        targets.to_vec()
    };
    let mut outcomes = Vec::new();
    for t in &chosen {
        outcomes.push(run_target(&fuzz_dir, t, seconds)?);
    }
    println!();
    println!(
        "{:<16} {:>12} {:>9} {:>14} {:>10} {:>8}",
        "target", "fuzzing s", "wall s", "executions", "exec/s", "crashes"
    );
    for o in &outcomes {
        let fuzz_s = o.fuzz_seconds.map_or(o.seconds, |s| s as f64);
        println!(
            "{:<16} {:>12} {:>9.0} {:>14} {:>10.0} {:>8}",
            o.target,
            o.fuzz_seconds
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            o.seconds,
            o.executions,
            o.executions as f64 / fuzz_s.max(1.0),
            o.crashes.len()
        );
    }
    let mut bad = 0;
    for o in &outcomes {
        for c in &o.crashes {
            bad += 1;
            println!(
                "CRASH in {}: {c} (reproduce: cd fuzz && cargo +nightly fuzz run {} {c})",
                o.target, o.target
            );
        }
        if let Some(e) = &o.error {
            bad += 1;
            println!("ERROR in {}: {e}", o.target);
        }
    }
    if bad > 0 {
        bail!("{bad} fuzz target(s) crashed or failed");
    }
    println!("xtask fuzz: no crashes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_reads_libfuzzer_output() {
        let mut o = Outcome::default();
        for l in [
            "#2\tINITED cov: 98 ft: 209 corp: 5/180b exec/s: 0 rss: 63Mb",
            "#8388608\tpulse  cov: 101 ft: 216 corp: 15/518b lim: 4096 exec/s: 102300 rss: 487Mb",
            "Done 30954137 runs in 301 second(s)",
            "stat::number_of_executed_units: 30954137",
            "stat::average_exec_per_sec:     102837",
        ] {
            o.line(l);
        }
        assert_eq!(o.executions, 30_954_137);
        assert_eq!(o.fuzz_seconds, Some(301));
        assert!(o.crashes.is_empty());

        let mut o = Outcome::default();
        for l in [
            "#1000\tNEW cov: 5",
            "thread '<unnamed>' panicked at fuzz_targets/config.rs:3:1:",
            "==1234== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/w/fuzz/artifacts/config/'; Test unit written to /w/fuzz/artifacts/config/crash-0a1b",
            "Base64: AAAA",
        ] {
            o.line(l);
        }
        assert_eq!(o.executions, 1000);
        assert_eq!(
            o.crashes,
            vec!["/w/fuzz/artifacts/config/crash-0a1b".to_owned()]
        );
        assert!(Outcome::shown("==1234== ERROR: libFuzzer: deadly signal"));
        assert!(!Outcome::shown("#1000\tNEW cov: 5"));
    }
}
