//! `cargo xtask dist`: the release `carp` and a Debian package
//! `target/dist/carp_<version>_<arch>.deb`, built with `dpkg-deb` from a
//! staging tree and then checked as an operator would meet it ([`check`]).
//!
//! The package holds the binary, the systemd unit, an example config (as
//! `/etc/carp/carp.toml.example`, so an install never touches the operator's
//! `carp.toml`), the README and a Grafana dashboard; the sources of all but
//! the binary are in `dist/`. Its maintainer scripts only reload systemd and
//! stop the service on removal: installing does not enable or start it (there
//! is no config yet), and an upgrade does not restart it (a restart hands the
//! MASTER roles to the peer and back).
//!
//! `cargo xtask test` runs [`test_package`]: the same build and checks on the
//! debug binary it has just built, uncompressed, in a scratch directory. The
//! release build would cost minutes and a release binary left from an
//! earlier build may be stale; what the check is about (layout, modes,
//! control data, unit, example config, dashboard) does not depend on the
//! profile, and the debug binary is the one the rest of the suite tests.
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};

use crate::{run_cargo, target_dir, workspace_root};

/// Where the binary goes; the unit's `ExecStart` names it.
const BIN_PATH: &str = "usr/sbin/carp";
const UNIT_PATH: &str = "lib/systemd/system/carp.service";
const EXAMPLE_PATH: &str = "etc/carp/carp.toml.example";
const DASHBOARD_PATH: &str = "usr/share/carp/grafana-dashboard.json";
const DOC_DIR: &str = "usr/share/doc/carp";

/// Files of the package other than the binary and the generated copyright
/// file: (path in the package, source in the workspace, mode).
const FILES: &[(&str, &str, u32)] = &[
    (UNIT_PATH, "dist/carp.service", 0o644),
    (EXAMPLE_PATH, "dist/carp.toml", 0o644),
    (DASHBOARD_PATH, "dist/grafana-dashboard.json", 0o644),
    ("usr/share/doc/carp/README.md", "README.md", 0o644),
];

/// Files under /etc that dpkg must treat as configuration (kept when the
/// operator changed them). The operator's own `/etc/carp/carp.toml` belongs
/// to no package, so neither an upgrade nor a purge touches it.
const CONFFILES: &[&str] = &["/etc/carp/carp.toml.example"];

/// `postinst`: systemd learns about a new or changed unit. No enable, no
/// start (no config yet), no restart on upgrade (it would fail over twice).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if systemctl is-active --quiet carp.service; then
        echo "carp: the running controller is the old version; 'systemctl restart carp' runs the new one (its MASTER roles move to the peer and back)"
    fi
fi
exit 0
"#;

/// `prerm`: on removal, stop (a MASTER bows out to its peer) and disable.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now carp.service || true
fi
exit 0
"#;

/// `postrm`: systemd forgets the removed unit.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#;

const SCRIPTS: &[(&str, &str)] = &[("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)];

/// `systemd-analyze security --offline` exposure, 0..=100 (the unit is at
/// 41 = "4.1 OK"): a change that loosens the sandbox past this fails.
const MAX_EXPOSURE: u32 = 50;

/// Compression of the package's data: xz for the release, none for the
/// test's throw-away package of a large debug binary.
#[derive(Clone, Copy, Debug)]
enum Compression {
    Xz,
    None,
}

impl Compression {
    fn flag(self) -> &'static str {
        match self {
            Self::Xz => "-Zxz",
            Self::None => "-Znone",
        }
    }
}

/// What a package is expected to be.
#[derive(Clone, Debug)]
struct Meta {
    version: String,
    arch: String,
    depends: String,
}

/// `cargo xtask dist`.
pub fn dist() -> anyhow::Result<()> {
    let t0 = Instant::now();
    run_cargo(&["build", "--release", "-p", "carp-user", "--bin", "carp"])?;
    let bin = target_dir().join("release").join("carp");
    ensure!(bin.is_file(), "{} missing after the build", bin.display());
    let out = target_dir().join("dist");
    let deb = build(&bin, &out, Compression::Xz)?;
    let checks = check(&deb, &bin)?;
    let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    println!(
        "dist: {} ({} KiB), {checks} checks passed, {:.1} s",
        deb.display(),
        size.div_ceil(1024),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// For `cargo xtask test`: packages `bin` (the debug build) uncompressed in
/// a scratch directory, runs every check, removes it; the number of checks.
pub fn test_package(bin: &Path) -> anyhow::Result<usize> {
    let scratch = Scratch::new("test")?;
    let deb = build(bin, scratch.path(), Compression::None)?;
    check(&deb, bin)
}

/// A directory under `target/dist/` removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> anyhow::Result<Self> {
        let dir = target_dir()
            .join("dist")
            .join(format!("{what}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stages the tree and runs `dpkg-deb --build`; the package's path.
fn build(bin: &Path, out_dir: &Path, compression: Compression) -> anyhow::Result<PathBuf> {
    let meta = expected_meta(bin)?;
    let stage = out_dir.join(format!("carp_{}_{}", meta.version, meta.arch));
    let _ = std::fs::remove_dir_all(&stage);
    let ws = workspace_root();
    install(bin, &stage.join(BIN_PATH), 0o755)?;
    for (dest, src, mode) in FILES {
        install(&ws.join(src), &stage.join(dest), *mode)?;
    }
    write(&stage.join(DOC_DIR).join("copyright"), &copyright()?, 0o644)?;
    let debian = stage.join("DEBIAN");
    write(
        &debian.join("control"),
        &control(&meta, installed_size_kib(&stage)?),
        0o644,
    )?;
    let conffiles: String = CONFFILES.iter().map(|c| format!("{c}\n")).collect();
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    for (name, text) in SCRIPTS {
        write(&debian.join(name), text, 0o755)?;
    }
    // Directories 0755 whatever the umask: dpkg-deb refuses a DEBIAN/ it
    // finds group-writable, and the modes go into the package as they are.
    set_dir_modes(&stage)?;

    let deb = out_dir.join(format!("carp_{}_{}.deb", meta.version, meta.arch));
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", compression.flag()])
        .arg(&stage)
        .arg(&deb)
        .stdin(Stdio::null())
        .output()
        .context("cannot run dpkg-deb (Debian package dpkg)")?;
    ensure!(
        out.status.success(),
        "dpkg-deb --build failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(deb)
}

fn install(src: &Path, dest: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dest.display()))
}

fn write(dest: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(dest, text).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dest.display()))
}

fn set_dir_modes(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// Sum of the staged files' sizes in KiB, DEBIAN/ excluded (the control
/// field `Installed-Size`).
fn installed_size_kib(stage: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let ty = entry.file_type()?;
            if ty.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += entry.metadata()?.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total).with_context(|| format!("sizing {}", stage.display()))?;
    Ok(total)
}

fn control(meta: &Meta, installed_kib: u64) -> String {
    format!(
        "Package: carp
Version: {version}
Architecture: {arch}
Maintainer: carp developers <carp@localhost>
Installed-Size: {installed_kib}
Depends: {depends}
Suggests: nftables, conntrack
Section: net
Priority: optional
Description: CARP failover with an XDP data path
 Two or more Linux routers share virtual IP addresses as the BSDs do with
 CARP (adverts wire-compatible with FreeBSD, OpenBSD and ucarp). An XDP
 program answers ARP for the virtual addresses and passes or drops their
 traffic per VHID, so a failover is one map write. Optional pfsync-style
 conntrack replication keeps sessions, NAT included, through a failover.
 .
 Installing does not start anything: write /etc/carp/carp.toml (see
 carp.toml.example next to it), then systemctl enable --now carp.
",
        version = meta.version,
        arch = meta.arch,
        depends = meta.depends,
    )
}

fn copyright() -> anyhow::Result<String> {
    let root = read_toml(&workspace_root().join("Cargo.toml"))?;
    let license = root
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("license"))
        .and_then(|l| l.as_str())
        .context("no workspace.package.license in Cargo.toml")?;
    Ok(format!(
        "carp: CARP failover with an XDP data path.\n\
         Copyright: the carp developers.\n\
         License: {license}\n"
    ))
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse()
        .with_context(|| format!("parsing {}", path.display()))
}

/// carp-user's version (`version.workspace = true` resolved).
fn version() -> anyhow::Result<String> {
    let ws = workspace_root();
    let crate_toml = read_toml(&ws.join("carp-user/Cargo.toml"))?;
    let v = crate_toml
        .get("package")
        .and_then(|p| p.get("version"))
        .context("no package.version in carp-user/Cargo.toml")?;
    if let Some(s) = v.as_str() {
        return Ok(s.to_owned());
    }
    let root = read_toml(&ws.join("Cargo.toml"))?;
    root.get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context(
            "carp-user's version is inherited, but Cargo.toml has no workspace.package.version",
        )
}

fn expected_meta(bin: &Path) -> anyhow::Result<Meta> {
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    Ok(Meta {
        version: version()?,
        arch,
        depends: depends(bin)?,
    })
}

/// `Depends` from the binary's dynamic section (`readelf -d`, `-V`): its
/// shared libraries mapped to their Debian packages, libc6 at the newest
/// `GLIBC_x.y` symbol version it needs. A library without a known package
/// fails: say here which package brings it.
fn depends(bin: &Path) -> anyhow::Result<String> {
    let dynamic = stdout_of(Command::new("readelf").arg("-d").arg(bin))?;
    let versions = stdout_of(Command::new("readelf").arg("-V").arg(bin))?;
    let mut packages: BTreeSet<&str> = BTreeSet::new();
    for lib in needed_libraries(&dynamic) {
        let package = match lib.as_str() {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1"
            | "libutil.so.1" => "libc6",
            l if l.starts_with("ld-linux") => "libc6",
            "libgcc_s.so.1" => "libgcc-s1",
            other => bail!(
                "{} needs {other}: add its Debian package to xtask/src/dist.rs `depends`",
                bin.display()
            ),
        };
        packages.insert(package);
    }
    ensure!(
        packages.contains("libc6"),
        "{} links no libc.so.6: is it a static or foreign binary?",
        bin.display()
    );
    let glibc = newest_glibc(&versions).context("no GLIBC_ symbol versions in readelf -V")?;
    Ok(packages
        .iter()
        .map(|&p| {
            if p == "libc6" {
                format!("libc6 (>= {glibc})")
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// `Shared library: [libc.so.6]` lines of `readelf -d`.
fn needed_libraries(readelf_d: &str) -> Vec<String> {
    readelf_d
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_owned()))
        .collect()
}

/// The newest `GLIBC_x.y[.z]` in `readelf -V` output, as "x.y[.z]".
fn newest_glibc(readelf_v: &str) -> Option<String> {
    readelf_v
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|n| n.parse().ok()).collect();
            Some((parts?, v.to_owned()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v)
}

fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command; its output, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(out)
}

/// Checks a built package as an operator meets it; the number of checks.
/// Every failure names the file and what was wrong.
fn check(deb: &Path, bin: &Path) -> anyhow::Result<usize> {
    let meta = expected_meta(bin)?;
    let ws = workspace_root();
    let scratch = Scratch::new("check")?;
    let root = scratch.path().join("root");
    let control_dir = scratch.path().join("DEBIAN");
    let mut n = 0;

    // Control fields.
    let info = stdout_of(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    let fields = stdout_of(Command::new("dpkg-deb").arg("--field").arg(deb).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
        "Maintainer",
        "Description",
    ]))?;
    let fields = parse_fields(&fields);
    for (key, want) in [
        ("Package", "carp"),
        ("Version", meta.version.as_str()),
        ("Architecture", meta.arch.as_str()),
        ("Depends", meta.depends.as_str()),
    ] {
        ensure!(
            fields.get(key).map(String::as_str) == Some(want),
            "{}: control field {key} is {:?}, expected {want:?}\n{info}",
            deb.display(),
            fields.get(key)
        );
        n += 1;
    }
    ensure!(
        fields.contains_key("Maintainer") && fields.contains_key("Description"),
        "{}: Maintainer or Description missing\n{info}",
        deb.display()
    );
    n += 1;

    // The listing: owners, modes, exactly the expected paths.
    let listing = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let entries = parse_listing(&listing)?;
    let mut want_files: BTreeMap<String, &str> = BTreeMap::new();
    want_files.insert(BIN_PATH.to_owned(), "-rwxr-xr-x");
    want_files.insert(format!("{DOC_DIR}/copyright"), "-rw-r--r--");
    for (dest, _, _) in FILES {
        want_files.insert((*dest).to_owned(), "-rw-r--r--");
    }
    ensure!(
        !entries.contains_key("etc/carp/carp.toml"),
        "{}: ships /etc/carp/carp.toml, which would overwrite the operator's config",
        deb.display()
    );
    for (path, entry) in &entries {
        ensure!(
            entry.owner == "root/root",
            "{}: {path} is owned by {} (expected root/root)",
            deb.display(),
            entry.owner
        );
        match want_files.get(path) {
            Some(mode) => ensure!(
                entry.mode == *mode,
                "{}: {path} has mode {}, expected {mode}",
                deb.display(),
                entry.mode
            ),
            None => ensure!(
                entry.mode == "drwxr-xr-x"
                    && want_files
                        .keys()
                        .any(|f| f.starts_with(&format!("{path}/"))),
                "{}: unexpected entry {path} ({})",
                deb.display(),
                entry.mode
            ),
        }
        n += 1;
    }
    for path in want_files.keys() {
        ensure!(
            entries.contains_key(path),
            "{}: {path} is missing\n{listing}",
            deb.display()
        );
    }

    // Unpacked: the files are the sources, the conffiles and scripts are right.
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(&control_dir))?;
    ensure!(
        std::fs::read(root.join(BIN_PATH))? == std::fs::read(bin)?,
        "{BIN_PATH} differs from {}",
        bin.display()
    );
    for (dest, src, _) in FILES {
        ensure!(
            std::fs::read(root.join(dest))? == std::fs::read(ws.join(src))?,
            "{dest} in the package differs from {src}"
        );
        n += 1;
    }
    let conffiles = std::fs::read_to_string(control_dir.join("conffiles"))
        .context("the package has no DEBIAN/conffiles")?;
    let listed: Vec<&str> = conffiles.lines().collect();
    ensure!(
        listed == CONFFILES,
        "DEBIAN/conffiles lists {listed:?}, expected {CONFFILES:?}"
    );
    for c in &listed {
        ensure!(
            root.join(c.trim_start_matches('/')).is_file(),
            "conffile {c} is not in the package"
        );
    }
    n += 1;
    for (name, _) in SCRIPTS {
        let path = control_dir.join(name);
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("DEBIAN/{name} missing"))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(
            mode == 0o755,
            "DEBIAN/{name} has mode {mode:o}, expected 755"
        );
        run(Command::new("sh").arg("-n").arg(&path))
            .with_context(|| format!("DEBIAN/{name} is not valid sh"))?;
        n += 1;
    }

    // The unit, as systemd reads it, with ExecStart on the unpacked binary
    // (verify insists that every Exec command exists; `--root` would need a
    // whole system's units under the root).
    n += check_unit(&root, scratch.path())?;

    // The binary and the example config.
    let unpacked_bin = root.join(BIN_PATH);
    let version = stdout_of(Command::new(&unpacked_bin).arg("--version"))?;
    ensure!(
        version.trim() == format!("carp {}", meta.version),
        "carp --version says {:?}, the package is {}",
        version.trim(),
        meta.version
    );
    n += 1;
    n += check_example(&unpacked_bin, &root.join(EXAMPLE_PATH), scratch.path())?;

    // The dashboard.
    n += check_dashboard(&root.join(DASHBOARD_PATH), &ws)?;
    Ok(n)
}

fn parse_fields(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(' ') {
            continue; // a continuation line of Description
        }
        if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: String,
    owner: String,
}

/// `dpkg-deb --contents` (tar -tv) lines: `-rwxr-xr-x root/root 123 2026-01-01 00:00 ./usr/sbin/carp`;
/// paths without `./` and trailing `/`, the root itself left out.
fn parse_listing(text: &str) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            cols.len() >= 6,
            "unexpected dpkg-deb --contents line: {line}"
        );
        let path = cols[5]
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || path == "." {
            continue;
        }
        out.insert(
            path,
            Entry {
                mode: cols[0].to_owned(),
                owner: cols[1].to_owned(),
            },
        );
    }
    Ok(out)
}

/// `systemd-analyze verify` (errors and warnings both fail) and `security
/// --offline` under [`MAX_EXPOSURE`] on a copy of the unpacked unit.
fn check_unit(root: &Path, scratch: &Path) -> anyhow::Result<usize> {
    let unit = std::fs::read_to_string(root.join(UNIT_PATH))?;
    let exec = format!("/{BIN_PATH} run -c /etc/carp/carp.toml");
    ensure!(
        unit.lines().any(|l| l == format!("ExecStart={exec}")),
        "{UNIT_PATH}: ExecStart is not `{exec}`"
    );
    // The control socket's default directory is the unit's RuntimeDirectory.
    let config_rs = std::fs::read_to_string(workspace_root().join("carp-user/src/config.rs"))?;
    ensure!(
        config_rs.contains("DEFAULT_CONTROL_SOCKET: &str = \"/run/carp/carp.sock\"")
            && unit.lines().any(|l| l == "RuntimeDirectory=carp"),
        "{UNIT_PATH}: RuntimeDirectory=carp no longer matches the default control socket"
    );
    // The persistent operator state's default directory is the unit's
    // StateDirectory (ProtectSystem=strict leaves the rest of /var read-only).
    let statefile_rs =
        std::fs::read_to_string(workspace_root().join("carp-user/src/statefile.rs"))?;
    ensure!(
        statefile_rs.contains("DEFAULT_STATE_DIR: &str = \"/var/lib/carp\"")
            && unit.lines().any(|l| l == "StateDirectory=carp"),
        "{UNIT_PATH}: StateDirectory=carp no longer matches the default node.state_dir"
    );
    let dir = scratch.join("unit");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("carp.service");
    let unpacked_bin = root.join(BIN_PATH);
    std::fs::write(
        &copy,
        unit.replace(
            &format!("/{BIN_PATH} "),
            &format!("{} ", unpacked_bin.display()),
        ),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemd-analyze (Debian package systemd)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("carp.service")).collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {UNIT_PATH} ({}):\n{err}",
        out.status
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={MAX_EXPOSURE}"))
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemd-analyze security")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "systemd-analyze security: {UNIT_PATH} is exposed above {MAX_EXPOSURE}/100 ({}):\n{}{}",
        out.status,
        text.lines().last().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(2)
}

/// `carp check` accepts the example as shipped, and with its `[sync]`
/// block uncommented (a key file made for the occasion).
fn check_example(bin: &Path, example: &Path, scratch: &Path) -> anyhow::Result<usize> {
    let out = run(Command::new(bin).args(["check", "-c"]).arg(example))
        .context("carp check refuses the example config")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.trim().is_empty(),
        "carp check warns about the example config:\n{stderr}"
    );
    let text = std::fs::read_to_string(example)?;
    let key = scratch.join("sync.key");
    std::fs::write(&key, [0x5a_u8; 32])?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let with_sync = uncomment_sync(&text)
        .context("the example config has no commented `# [sync]` block")?
        .replace("/etc/carp/sync.key", &key.to_string_lossy());
    let path = scratch.join("with-sync.toml");
    std::fs::write(&path, with_sync)?;
    run(Command::new(bin).args(["check", "-c"]).arg(&path))
        .context("carp check refuses the example config with its [sync] block uncommented")?;
    Ok(2)
}

/// The example with every line from `# [sync]` on uncommented (`# ` removed
/// where it starts the line); `None` without such a block.
fn uncomment_sync(text: &str) -> Option<String> {
    let start = text.lines().position(|l| l.trim_end() == "# [sync]")?;
    Some(
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                if i >= start {
                    l.strip_prefix("# ").unwrap_or(l)
                } else {
                    l
                }
            })
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}

/// The dashboard is JSON Grafana imports (title, uid, a Prometheus
/// datasource variable that every query uses), and every metric its queries
/// name is one carp exports (registered in carp-user/src) and documents (the
/// README's metrics reference). Documented metrics no panel shows are
/// printed, not failed.
fn check_dashboard(path: &Path, ws: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    let dash: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{DASHBOARD_PATH} is not JSON"))?;
    for key in ["title", "uid"] {
        ensure!(
            dash.get(key)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty()),
            "{DASHBOARD_PATH}: no {key}"
        );
    }
    ensure!(
        dash.get("schemaVersion").and_then(|v| v.as_u64()).is_some(),
        "{DASHBOARD_PATH}: no schemaVersion"
    );
    let variables = dash
        .pointer("/templating/list")
        .and_then(|v| v.as_array())
        .with_context(|| format!("{DASHBOARD_PATH}: no templating.list"))?;
    let ds_var = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .and_then(|v| v["name"].as_str())
        .with_context(|| format!("{DASHBOARD_PATH}: no Prometheus datasource variable"))?;
    let ds_uid = format!("${{{ds_var}}}");

    let mut panels = Vec::new();
    collect_panels(&dash["panels"], &mut panels);
    ensure!(!panels.is_empty(), "{DASHBOARD_PATH}: no panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .with_context(|| format!("panel {title:?} has no id"))?;
        ensure!(ids.insert(id), "{DASHBOARD_PATH}: panel id {id} twice");
        ensure!(
            p.get("gridPos").is_some(),
            "{DASHBOARD_PATH}: panel {title:?} has no gridPos"
        );
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        for t in targets {
            let ds = if t.get("datasource").is_some() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            ensure!(
                ds["uid"] == ds_uid.as_str() && ds["type"] == "prometheus",
                "{DASHBOARD_PATH}: panel {title:?} queries {ds}, not the {ds_uid} variable"
            );
            let expr = t["expr"]
                .as_str()
                .with_context(|| format!("panel {title:?} has a target without expr"))?;
            ensure!(
                brackets_balance(expr),
                "{DASHBOARD_PATH}: panel {title:?}: unbalanced brackets in {expr}"
            );
            used.extend(metric_names(expr));
        }
    }
    let mut template_queries = BTreeSet::new();
    for v in variables {
        if let Some(q) = v["definition"].as_str() {
            template_queries.extend(metric_names(q));
        }
    }
    used.extend(template_queries);

    let registered = registered_metrics(&ws.join("carp-user/src"))?;
    let documented = documented_metrics(&std::fs::read_to_string(ws.join("README.md"))?);
    ensure!(
        !documented.is_empty(),
        "README.md: no metrics reference table found"
    );
    for m in &used {
        let base = m.strip_suffix("_total").unwrap_or(m);
        ensure!(
            registered.contains(m) || registered.contains(base),
            "{DASHBOARD_PATH}: {m} is not a metric carp registers (carp-user/src)"
        );
        ensure!(
            documented.contains(m),
            "{DASHBOARD_PATH}: {m} is not in the README's metrics reference"
        );
    }
    let unshown: Vec<&String> = documented.difference(&used).collect();
    if !unshown.is_empty() {
        println!(
            "xtask dist: note: documented metrics without a dashboard panel: {}",
            unshown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(panels.len() + used.len())
}

/// Every panel, those inside collapsed rows included.
fn collect_panels<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        collect_panels(&p["panels"], out);
    }
}

fn brackets_balance(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !in_string
}

/// `carp_*` identifiers of a PromQL expression, outside label matchers
/// (`{reason=~"carp_bad_.*"}` names a label value, not a metric).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut outside = String::new();
    let mut depth = 0_u32;
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => outside.push(' '),
        }
    }
    identifiers(&outside)
        .into_iter()
        .filter(|w| w.starts_with("carp_"))
        .collect()
}

fn identifiers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Names carp-user registers: the first string argument of every
/// `register(` and `encode_descriptor(` call in its sources.
fn registered_metrics(src: &Path) -> anyhow::Result<BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.extend(registered_in(&std::fs::read_to_string(&path)?));
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(src, &mut out).with_context(|| format!("reading {}", src.display()))?;
    ensure!(
        out.len() > 10,
        "found only {out:?} registered in {}: has the registration code moved?",
        src.display()
    );
    Ok(out)
}

fn registered_in(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for call in ["register(", "encode_descriptor("] {
        for (i, _) in source.match_indices(call) {
            let rest = source[i + call.len()..].trim_start();
            if let Some(name) = rest
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .filter(|n| n.starts_with("carp_"))
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The metric names in the first column of the README's metrics table
/// (rows starting with "| `carp_").
fn documented_metrics(readme: &str) -> BTreeSet<String> {
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `carp_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("carp_{name}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_comes_from_readelf() {
        let d = " 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
                 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n";
        assert_eq!(needed_libraries(d), vec!["libgcc_s.so.1", "libc.so.6"]);
        let v = "  0x0010:   Name: GLIBC_2.3.4  Flags: none  Version: 9\n\
                 \x20 0x0020:   Name: GLIBC_2.34  Flags: none  Version: 7\n\
                 \x20 0x0030:   Name: GLIBC_2.9  Flags: none  Version: 3\n";
        assert_eq!(newest_glibc(v).as_deref(), Some("2.34"));
    }

    #[test]
    fn listing_lines_parse() {
        let l = "drwxr-xr-x root/root         0 2026-11-30 02:00 ./\n\
                 drwxr-xr-x root/root         0 2026-11-30 02:00 ./usr/\n\
                 -rwxr-xr-x root/root   8987312 2026-11-30 02:00 ./usr/sbin/carp\n";
        let e = parse_listing(l).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e["usr/sbin/carp"],
            Entry {
                mode: "-rwxr-xr-x".into(),
                owner: "root/root".into()
            }
        );
    }

    #[test]
    fn metric_names_skip_label_values() {
        let e = r#"sum by (instance) (rate(carp_xdp_packets_total{instance=~"$instance", reason=~"carp_bad_.*"}[$__rate_interval])) and on (instance) (carp_sync_bulk_in_progress == 1)"#;
        assert_eq!(
            metric_names(e).into_iter().collect::<Vec<_>>(),
            vec!["carp_sync_bulk_in_progress", "carp_xdp_packets_total"]
        );
        assert!(brackets_balance(e));
        assert!(!brackets_balance("rate(carp_x[1m]"));
    }

    #[test]
    fn registrations_and_readme_rows_are_found() {
        let src = "r.register(\n    \"carp_sync_frames\",\n    \"help\", x);\n\
                   encoder.encode_descriptor(\"carp_xdp_packets\", \"h\", None, t);\n\
                   registry.register_collector(Box::new(c));";
        assert_eq!(
            registered_in(src),
            vec!["carp_sync_frames".to_owned(), "carp_xdp_packets".to_owned()]
        );
        let readme = "| metric | labels |\n|---|---|\n| `carp_vhid_state` | vhid | x |\n| `carp_demotion` | | y |\n";
        assert_eq!(
            documented_metrics(readme).into_iter().collect::<Vec<_>>(),
            vec!["carp_demotion", "carp_vhid_state"]
        );
    }

    #[test]
    fn the_shipped_dashboard_passes_and_a_made_up_metric_fails() {
        let ws = workspace_root();
        let shipped = ws.join("dist/grafana-dashboard.json");
        check_dashboard(&shipped, &ws).expect("dist/grafana-dashboard.json");
        let text = std::fs::read_to_string(&shipped).unwrap();
        assert!(text.contains("carp_demotion{"));
        let scratch = Scratch::new("unit-test").unwrap();
        let bad = scratch.path().join("bad.json");
        std::fs::write(&bad, text.replace("carp_demotion{", "carp_demotions{")).unwrap();
        let err = check_dashboard(&bad, &ws).unwrap_err().to_string();
        assert!(
            err.contains("carp_demotions is not a metric carp registers"),
            "{err}"
        );
        std::fs::write(&bad, "{\"title\": ").unwrap();
        assert!(check_dashboard(&bad, &ws).is_err());
    }

    #[test]
    fn the_sync_block_is_uncommented_from_its_header_on() {
        let t = "[node]\n# name = \"x\"\n# [sync]\n# interface = \"sync0\"\n# zones = [0]\n";
        assert_eq!(
            uncomment_sync(t).unwrap(),
            "[node]\n# name = \"x\"\n[sync]\ninterface = \"sync0\"\nzones = [0]\n"
        );
        assert_eq!(uncomment_sync("[node]\n"), None);
    }
}
