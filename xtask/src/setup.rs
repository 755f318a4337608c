//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks for
//! building and testing carp, and checks what it cannot install.
//!
//! Idempotent, and cheap when everything is present (one `rustc -vV`, one
//! `rustc --print sysroot`, one `dpkg-query` for all packages, one
//! `bpf-linker --version`, one `ldd`): well under a second. It says what it
//! installs before installing it.
//!
//! The LLVM major is taken from the nightly (`rustc +nightly -vV` prints
//! `LLVM version: 22.1.4`): bpf-linker must link the same LLVM that produced
//! the bitcode it links, so the `-dev` packages, `LLVM_PREFIX` and
//! bpf-linker's `llvm-NN` feature all follow the nightly.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use carp_tests::util::is_root;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages besides the LLVM ones: iproute2 (ip, bridge, tc), bpftool,
/// and the tools the lab and the tests use (procps for `sysctl` in the lab,
/// iputils-arping and curl in the namespace scenarios; systemd for
/// `systemd-analyze` and binutils for `readelf` in the package check).
const PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "iputils-arping",
    "curl",
    "bpftool",
    "keepalived",
    "ucarp",
    "tshark",
    "tcpdump",
    "iputils-ping",
    "nftables",
    "conntrack",
    "conntrackd",
    "systemd",
    "binutils",
];

/// Set by `cargo xtask setup --dry-run`: print the install commands instead
/// of running them.
static DRY_RUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn setup_dry_run() -> anyhow::Result<()> {
    DRY_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
    setup()
}

pub fn setup() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut did = Vec::new();

    let llvm_major = ensure_nightly(&mut did)?;
    let mut packages: Vec<String> = ["llvm-{}-dev", "libpolly-{}-dev", "libclang-{}-dev"]
        .iter()
        .map(|p| p.replace("{}", &llvm_major.to_string()))
        .collect();
    packages.extend(PACKAGES.iter().map(|p| (*p).to_owned()));
    ensure_packages(&packages, &mut did)?;
    ensure_bpf_linker(llvm_major, &mut did)?;

    let elapsed = t0.elapsed();
    if did.is_empty() {
        println!(
            "setup: everything present (nightly with rust-src, LLVM {llvm_major}, bpf-linker {BPF_LINKER_VERSION}, \
             {} packages) in {:.2} s",
            packages.len(),
            elapsed.as_secs_f64()
        );
    } else {
        let verb = if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
            "would install"
        } else {
            "installed"
        };
        println!(
            "setup: {verb} {} in {:.1} s",
            did.join(", "),
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// Runs a command, inheriting stdout/stderr (for installs the user should see).
fn run_visible(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        println!("setup: would run {shown}");
        return Ok(());
    }
    println!("setup: running {shown}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// Output of a quick command, or `None` if it cannot run or fails.
fn quiet_output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The LLVM major from `rustc -vV` output (`LLVM version: 22.1.4`).
pub fn llvm_major_from_rustc(vv: &str) -> Option<u32> {
    let v = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    v.split('.').next()?.parse().ok()
}

/// Makes sure the nightly toolchain and its `rust-src` (for
/// `-Z build-std=core` on bpfel-unknown-none) exist; returns its LLVM major.
fn ensure_nightly(did: &mut Vec<String>) -> anyhow::Result<u32> {
    let plus = format!("+{NIGHTLY}");
    let vv = match quiet_output(Command::new("rustc").args([&plus, "-vV"])) {
        Some(v) => v,
        None => {
            println!("setup: installing the {NIGHTLY} toolchain with rust-src (rustup)");
            run_visible(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            did.push(format!("{NIGHTLY} toolchain"));
            if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("dry run: stopping here (the rest needs the nightly toolchain)");
            }
            quiet_output(Command::new("rustc").args([&plus, "-vV"]))
                .context("rustc +nightly -vV still fails after installing the nightly toolchain")?
        }
    };
    let major = llvm_major_from_rustc(&vv).with_context(|| {
        format!("no `LLVM version:` line in `rustc +{NIGHTLY} -vV` output:\n{vv}")
    })?;

    let sysroot = quiet_output(Command::new("rustc").args([&plus, "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed")?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !src.is_file() {
        println!("setup: installing rust-src for {NIGHTLY} (rustup)");
        run_visible(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
        did.push("rust-src".into());
    }
    Ok(major)
}

/// Parses `dpkg-query -W -f='${Package} ${Status}\n'` output into the
/// packages of `wanted` that are not fully installed.
pub fn missing_packages(wanted: &[String], dpkg_stdout: &str) -> Vec<String> {
    wanted
        .iter()
        .filter(|p| {
            !dpkg_stdout.lines().any(|l| {
                let mut it = l.splitn(2, ' ');
                // `pkg:arch` for multi-arch packages.
                let name = it.next().unwrap_or("").split(':').next().unwrap_or("");
                name == p.as_str()
                    && it
                        .next()
                        .is_some_and(|s| s.trim() == "install ok installed")
            })
        })
        .cloned()
        .collect()
}

fn ensure_packages(packages: &[String], did: &mut Vec<String>) -> anyhow::Result<()> {
    // One call for all of them; dpkg-query exits 1 when some are unknown but
    // still prints the known ones, so its status is not the answer.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\\n")
        .args(packages)
        .stdin(Stdio::null())
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    let missing = missing_packages(packages, &String::from_utf8_lossy(&out.stdout));
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    if !is_root() && !DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        bail!(
            "missing Debian packages {}; run as root, or: sudo apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    // Always refresh the package lists first: on a fresh machine they were
    // never fetched (`llvm-22-dev` is then unknown), and stale lists name
    // files the mirror no longer has (`apt-get install` fails with 404).
    // This only runs when something is missing, so a set-up machine pays nothing.
    println!("setup: refreshing the package lists (apt-get update) before installing");
    run_visible(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )?;
    run_visible(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    did.push(missing.join(" "));
    Ok(())
}

/// `PATH` lookup.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The LLVM major bpf-linker is linked against. `bpf-linker --version` prints
/// only `bpf-linker 0.13.0`, so read the shared library name from `ldd`
/// (`libLLVM.so.22.1` or `libLLVM-22.so`); for a statically linked build,
/// fall back to the `llvm-NN` feature recorded by `cargo install`.
fn bpf_linker_llvm_major(bin: &Path) -> Option<u32> {
    if let Some(ldd) = quiet_output(Command::new("ldd").arg(bin)) {
        if let Some(m) = llvm_major_from_ldd(&ldd) {
            return Some(m);
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let crates2 = std::fs::read_to_string(home.join(".crates2.json")).ok()?;
    let entry = crates2.split("\"bpf-linker ").nth(1)?;
    let features = entry.split("\"features\":[").nth(1)?.split(']').next()?;
    features.split(',').find_map(|f| {
        f.trim()
            .trim_matches('"')
            .strip_prefix("llvm-")?
            .parse()
            .ok()
    })
}

pub fn llvm_major_from_ldd(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name.strip_prefix("libLLVM")?;
        // libLLVM.so.22.1 | libLLVM-22.so | libLLVM-22.1.so
        let digits = rest
            .strip_prefix(".so.")
            .or_else(|| rest.strip_prefix('-'))?;
        digits.split(['.', '-']).next()?.parse().ok()
    })
}

fn ensure_bpf_linker(llvm_major: u32, did: &mut Vec<String>) -> anyhow::Result<()> {
    let installed = quiet_output(Command::new("bpf-linker").arg("--version"));
    let ok = installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION));
    if !ok {
        match &installed {
            Some(v) => println!("setup: replacing {} with bpf-linker {BPF_LINKER_VERSION}", v.trim()),
            None => println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm_major}); this takes a few minutes"),
        }
        run_visible(
            Command::new("cargo")
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm_major}"))
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{llvm_major}"),
                ]),
        )?;
        did.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
    }
    let bin =
        which("bpf-linker").context("bpf-linker is not on PATH (is ~/.cargo/bin on PATH?)")?;
    match bpf_linker_llvm_major(&bin) {
        Some(m) if m == llvm_major => Ok(()),
        Some(m) => bail!(
            "{} is linked against LLVM {m} but the {NIGHTLY} toolchain uses LLVM {llvm_major}; \
             reinstall it: LLVM_PREFIX=/usr/lib/llvm-{llvm_major} cargo install bpf-linker@{BPF_LINKER_VERSION} \
             --locked --force --no-default-features --features llvm-{llvm_major}",
            bin.display()
        ),
        None => bail!(
            "cannot tell which LLVM {} uses (no libLLVM in `ldd`, no llvm-NN feature in ~/.cargo/.crates2.json)",
            bin.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_llvm_major_of_rustc() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                  release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major_from_rustc(vv), Some(22));
        assert_eq!(llvm_major_from_rustc("rustc 1.0\n"), None);
    }

    #[test]
    fn parses_the_llvm_major_of_ldd() {
        let a = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f06)\n";
        assert_eq!(llvm_major_from_ldd(a), Some(22));
        assert_eq!(
            llvm_major_from_ldd("\tlibLLVM-19.so => /usr/lib/x (0x1)\n"),
            Some(19)
        );
        assert_eq!(
            llvm_major_from_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
    }

    #[test]
    fn finds_missing_packages() {
        let wanted: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let out =
            "a install ok installed\nb deinstall ok config-files\nd:amd64 install ok installed\n";
        assert_eq!(
            missing_packages(&wanted, out),
            vec!["b".to_owned(), "c".to_owned()]
        );
    }
}
