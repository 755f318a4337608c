//! Named network namespaces (`ip netns`) as guards, the root check shared by
//! every root-only test, and unique name prefixes so that tests running in
//! parallel (and other people's runs on the same host) never collide.
//!
//! Everything goes through the `ip` command (iproute2) on purpose: the lab is
//! then reproducible by hand from the commands in this file, and what a test
//! created is visible with `ip netns list` while it runs. `NetNsGuard` in
//! aya's `test_helpers.rs` is the model; unlike it we name our namespaces, so
//! that `ip netns exec` works for the controller processes and for people
//! poking at a running lab.
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

/// Every namespace we create starts with this, so [`cleanup_stale`] can find
/// the ones a crashed run left behind.
pub const PREFIX_ROOT: &str = "carpt-";

/// What a root-only test prints, followed by its name, when it skips
/// (`cargo xtask test` counts these lines on stderr).
pub const SKIP_MARKER: &str = "SKIPPED (not root):";

/// Returns whether the caller may run a root-only test.
///
/// Without root: under `CI=true` this panics (a CI run that silently skipped
/// the namespace tiers would be a lie); otherwise it prints
/// `SKIPPED (not root): <test name>` and returns `false`, and the test
/// returns early (and counts as passed for libtest).
///
/// The line is written to the stderr handle, not with `eprintln!`: libtest
/// captures what the print macros write, so an `eprintln!` would only show
/// for a failing test, i.e. never. Written this way it reaches the terminal
/// (or `cargo xtask test`, which counts the lines) with or without
/// `--nocapture`.
pub fn require_root() -> bool {
    if crate::util::is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs root (network namespaces, XDP) and CI=true forbids skipping it");
    }
    use std::io::Write as _;
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("(unnamed test)");
    let _ = writeln!(std::io::stderr().lock(), "{SKIP_MARKER} {name}");
    false
}

/// A short prefix unique to this process and call: `carpt-<pid>-<n>-`.
///
/// The PID makes it unique across concurrent test binaries, the counter across
/// the threads of one binary (cargo runs tests in parallel). Namespace names
/// are file names under /run/netns, so length is not an issue; interface names
/// (15 bytes) are not prefixed because each lives in its own namespace.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX_ROOT}{}-{n}-", std::process::id())
}

/// Runs a command to completion and fails, with its stderr, unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS...`, checked.
pub fn ip<I, S>(args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_checked(Command::new("ip").args(args))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

/// A named network namespace that this process created and deletes on drop.
///
/// `ip netns del` only unmounts the name: a namespace lives on while a process
/// is inside it, so drop the processes you started in it first (declare the
/// guard before them; locals drop in reverse order). Dropping kills nothing.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME`.
    pub fn new(name: impl Into<String>) -> anyhow::Result<NetNs> {
        let name = name.into();
        ip(["netns", "add", &name]).with_context(|| format!("creating namespace {name}"))?;
        Ok(NetNs { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, checked: cheaper than `ip netns exec` (no
    /// remount of /sys), so the lab uses it for every `ip` command.
    pub fn ip<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A `Command` for `ip netns exec NAME PROGRAM`, to add arguments,
    /// environment and redirections to.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ARGS[0] ARGS[1..]` inside the namespace and fails, with the
    /// command and its stderr, unless it exits 0.
    pub fn exec<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.argv_command(args)?;
        run_checked(&mut cmd)
    }

    /// Like [`NetNs::exec`] but returns the output whatever the exit status
    /// (for commands whose failure is the answer, e.g. a ping that must fail).
    pub fn exec_unchecked<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.argv_command(args)?;
        let shown = describe(&cmd);
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{shown}`"))
    }

    /// Starts `ARGS` inside the namespace. `ip netns exec` execs the program
    /// after `setns` (no fork), so the child's PID is the program's PID and
    /// signals sent to it reach the program.
    pub fn spawn<I, S>(&self, args: I, stdout: Stdio, stderr: Stdio) -> anyhow::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.argv_command(args)?;
        let shown = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))
    }

    /// Writes a sysctl inside the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    fn argv_command<I, S>(&self, args: I) -> anyhow::Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut it = args.into_iter();
        let Some(program) = it.next() else {
            bail!("empty command for namespace {}", self.name);
        };
        let mut cmd = self.command(program);
        cmd.args(it);
        Ok(cmd)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(["netns", "del", &self.name]) {
            // Never panic in drop (we may already be unwinding); say it loudly.
            eprintln!("warning: {e:#}");
        }
    }
}

/// The namespaces that exist now (`ip netns list`, names only).
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = ip(["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes the namespaces named `<prefix_root><pid>-...` whose creating
/// process no longer runs: what a crashed or killed run left behind. The
/// namespaces of runs still alive (tests in parallel, another person's lab)
/// are left alone. Returns the names removed.
///
/// A process still inside a removed namespace keeps it alive, unreachable by
/// name; it is reported, not killed (we did not start it in this run).
pub fn cleanup_stale(prefix_root: &str) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list()? {
        let Some(rest) = name.strip_prefix(prefix_root) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some() && !owner_is_gone(&name, prefix_root) {
            continue;
        }
        if let Ok(out) = ip(["netns", "pids", &name]) {
            let pids = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if !pids.is_empty() {
                eprintln!("warning: stale namespace {name} still has processes ({pids}); not killing them");
            }
        }
        match ip(["netns", "del", &name]) {
            Ok(_) => removed.push(name),
            // A concurrent sweep (another test binary) got there first.
            Err(_) if !list()?.contains(&name) => {}
            Err(e) => return Err(e.context(format!("removing stale namespace {name}"))),
        }
    }
    remove_stale_sockets(prefix_root);
    Ok(removed)
}

/// Makes `sw` a switch: a bridge `br0`, STP off and no forwarding delay so
/// ports forward at once (a real switch with portfast), default ageing. Not
/// yet up: bring it up once its ports are in (`ip link set br0 up`).
pub fn add_switch(sw: &NetNs) -> anyhow::Result<()> {
    sw.ip([
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    Ok(())
}

/// A veth pair from `dev` in `host` to a port named `port` on the switch
/// `sw` ([`add_switch`]), both ends created in place, the port up.
pub fn switch_port(host: &NetNs, dev: &str, sw: &NetNs, port: &str) -> anyhow::Result<()> {
    host.ip([
        "link",
        "add",
        dev,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        sw.name(),
    ])?;
    sw.ip(["link", "set", port, "master", "br0"])?;
    sw.ip(["link", "set", port, "up"])?;
    Ok(())
}

/// Mounts a fresh bpffs at `path` (created if missing) in this process's
/// mount namespace: the host's, for a test, so that pins made by a
/// controller under `ip netns exec` outlive it.
pub fn mount_bpffs(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a bpffs at {}", path.display()))
}

/// Unmounts (lazily) and removes what [`mount_bpffs`] made; missing is fine.
pub fn unmount_bpffs(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(path);
}

/// The lab's default control sockets (`/run/carp/<prefix>fw1.sock`) and
/// bpffs mounts (`<prefix>fw1.bpf`) of dead runs: a controller killed with
/// SIGKILL cannot remove its socket, a killed test cannot unmount.
/// Whether `name` (`<prefix_root><pid>-...`) belongs to a process that is gone.
fn owner_is_gone(name: &str, prefix_root: &str) -> bool {
    let owner = name
        .strip_prefix(prefix_root)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// What a killed run leaves besides namespaces: control sockets and bpffs
/// mounts in /run/carp, scratch directories (configs, keys) in the temp dir.
fn remove_stale_sockets(prefix_root: &str) {
    if let Ok(dir) = std::fs::read_dir("/run/carp") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !owner_is_gone(&name, prefix_root) {
                continue;
            }
            if name.ends_with(".sock") {
                let _ = std::fs::remove_file(entry.path());
            } else if name.ends_with(".bpf") {
                unmount_bpffs(&entry.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_is_gone(&name, prefix_root) && entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX_ROOT));
    }

    #[test]
    fn namespace_is_removed_on_drop_and_exec_reports_stderr() {
        if !require_root() {
            return;
        }
        let name = format!("{}ns", unique_prefix());
        {
            let ns = NetNs::new(&name).expect("create");
            assert!(list().unwrap().contains(&name));
            let out = ns.exec(["ip", "-o", "link", "show", "lo"]).expect("exec");
            assert!(String::from_utf8_lossy(&out.stdout).contains("lo"));
            let err = ns.exec(["ip", "link", "show", "nosuchdev0"]).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("nosuchdev0") && msg.contains("does not exist"),
                "{msg}"
            );
        }
        assert!(
            !list().unwrap().contains(&name),
            "namespace {name} left behind"
        );
    }

    #[test]
    fn cleanup_stale_spares_live_owners() {
        if !require_root() {
            return;
        }
        // Our own PID is alive, so our namespace must survive the sweep.
        let ns = NetNs::new(format!("{}live", unique_prefix())).expect("create");
        let removed = cleanup_stale(PREFIX_ROOT).expect("cleanup");
        assert!(!removed.iter().any(|n| n == ns.name()));
        assert!(list().unwrap().iter().any(|n| n == ns.name()));
    }

    #[test]
    fn cleanup_stale_removes_namespaces_of_dead_owners() {
        if !require_root() {
            return;
        }
        // A PID that certainly belonged to a process that is gone now.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        let name = format!("{PREFIX_ROOT}{pid}-0-dead");
        ip(["netns", "add", &name]).expect("add");
        let res = cleanup_stale(PREFIX_ROOT);
        let still_there = list().unwrap().contains(&name);
        if still_there {
            let _ = ip(["netns", "del", &name]);
        }
        res.expect("cleanup");
        // Another concurrent sweep may have removed it first: check the
        // result, not the return value.
        assert!(!still_there, "stale namespace {name} survived the sweep");
    }
}
