//! A `carp run` controller as a child process inside a lab namespace: started
//! with `ip netns exec`, signalled by PID (never by name: other people's
//! controllers may run on the same host), queried with `carp status --json`,
//! and killed and reaped on drop.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::run_checked;
use crate::util::poll_until;

/// Where the `carp` binary is: `$CARP_BIN`, else `<target>/debug/carp` of
/// this workspace (`$CARGO_TARGET_DIR` or `<workspace>/target`). Panics with
/// what to do when it is missing.
pub fn carp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARP_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CARP_BIN={} does not exist", p.display());
        return p;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let p = target.join("debug").join("carp");
    assert!(
        p.is_file(),
        "the carp binary is missing at {}: run `cargo build -p carp-user` (or `cargo xtask test`), \
         or set CARP_BIN",
        p.display()
    );
    p
}

/// A running (or exited, not yet dropped) controller.
#[derive(Debug)]
pub struct NodeProc {
    ns: String,
    carp_bin: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Child,
    /// Set once reaped: after that the PID may belong to someone else, so no
    /// signal is sent any more.
    exited: Option<ExitStatus>,
}

impl NodeProc {
    /// `ip netns exec NS CARP run -c CONFIG`, stdout and stderr appended to
    /// `log_path`, `RUST_LOG=info` unless the caller's environment sets it.
    /// Panics if it cannot start (see [`NodeProc::try_spawn`]).
    pub fn spawn(lab_ns: &str, carp_bin: &Path, config_path: &Path, log_path: &Path) -> NodeProc {
        Self::try_spawn(lab_ns, carp_bin, config_path, log_path)
            .unwrap_or_else(|e| panic!("starting the controller in {lab_ns}: {e:#}"))
    }

    pub fn try_spawn(
        lab_ns: &str,
        carp_bin: &Path,
        config_path: &Path,
        log_path: &Path,
    ) -> anyhow::Result<NodeProc> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log {}", log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the log file")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab_ns])
            .arg(carp_bin)
            .arg("run")
            .arg("-c")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} run -c {} in {lab_ns}",
                carp_bin.display(),
                config_path.display()
            )
        })?;
        Ok(NodeProc {
            ns: lab_ns.to_owned(),
            carp_bin: carp_bin.to_owned(),
            config_path: config_path.to_owned(),
            log_path: log_path.to_owned(),
            child,
            exited: None,
        })
    }

    /// The controller's PID (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn signal(&mut self, sig: Signal) -> anyhow::Result<()> {
        if self.is_exited() {
            bail!(
                "controller {} in {} already exited ({:?}); not sending {sig}",
                self.pid(),
                self.ns,
                self.exited
            );
        }
        kill(Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("sending {sig} to {}", self.pid()))
    }

    /// SIGKILL: the controller gets no chance to clean up (its XDP attachment
    /// and AF_PACKET sockets die with it).
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// SIGSTOP: a stalled controller (the dead-man deadline should expire).
    pub fn sigstop(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn sigcont(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM: the orderly stop (a master bows out).
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGHUP: the controller re-reads its config file.
    pub fn sighup(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGHUP)
    }

    /// Whether it has exited (reaps it if so).
    pub fn is_exited(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited.is_some()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if poll_until(timeout, Duration::from_millis(5), || self.is_exited()) {
            self.exited
        } else {
            None
        }
    }

    /// One `carp status --json` call, no retry.
    fn status_once(&self) -> anyhow::Result<serde_json::Value> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.carp_bin)
            .arg("status")
            .arg("-c")
            .arg(&self.config_path)
            .arg("--json");
        let out = run_checked(&mut cmd)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parsing `carp status --json`: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `carp status --json`, retried until it answers or `timeout` passes (the
    /// control socket appears a moment after the start).
    pub fn try_status_json(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.status_once() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if self.is_exited() {
                return Err(err.context(format!(
                    "controller in {} exited ({:?}); log:\n{}",
                    self.ns,
                    self.exited,
                    self.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(err.context(format!(
                    "no status from the controller in {} within {timeout:?}",
                    self.ns
                )));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// [`NodeProc::try_status_json`], panicking with the log on failure.
    pub fn status_json(&mut self, timeout: Duration) -> serde_json::Value {
        self.try_status_json(timeout)
            .unwrap_or_else(|e| panic!("carp status in {}: {e:#}", self.ns))
    }

    /// The `state` of VHID `vhid` now (`INIT`/`BACKUP`/`MASTER`), or `None`
    /// if the controller does not answer or has no such VHID.
    pub fn state(&mut self, vhid: u8) -> Option<String> {
        let st = self.status_once().ok()?;
        vhid_state(&st, vhid)
    }

    /// Polls the status until VHID `vhid` is in `state` (e.g. `"MASTER"`);
    /// false on timeout or if the process exits.
    pub fn wait_for_state(&mut self, vhid: u8, state: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state(vhid).as_deref() == Some(state) {
                return true;
            }
            if self.is_exited() || Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The log so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// `state` of VHID `vhid` in a `carp status --json` document.
pub fn vhid_state(status: &serde_json::Value, vhid: u8) -> Option<String> {
    status
        .get("vhids")?
        .as_array()?
        .iter()
        .find(|v| v.get("id").and_then(serde_json::Value::as_u64) == Some(u64::from(vhid)))?
        .get("state")?
        .as_str()
        .map(str::to_owned)
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if !self.is_exited() {
            // A stopped process dies from SIGKILL too; no SIGCONT needed.
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_of_a_vhid() {
        let st = serde_json::json!({"node": "fw1", "vhids": [
            {"id": 1, "state": "MASTER"}, {"id": 2, "state": "BACKUP"}]});
        assert_eq!(vhid_state(&st, 2).as_deref(), Some("BACKUP"));
        assert_eq!(vhid_state(&st, 3), None);
    }

    #[test]
    fn signals_by_pid_and_reaps() {
        if !crate::netns::require_root() {
            return;
        }
        let ns =
            crate::netns::NetNs::new(format!("{}node", crate::netns::unique_prefix())).unwrap();
        let dir = std::env::temp_dir();
        let tag = format!("carpt-node-{}", std::process::id());
        let log = dir.join(format!("{tag}.log"));
        // A stand-in for the controller, called as `BIN run -c CONFIG`: it
        // runs CONFIG as a shell script.
        let script = dir.join(format!("{tag}.sh"));
        std::fs::write(&script, "echo started; exec sleep 30\n").unwrap();
        let wrapper = dir.join(format!("{tag}-bin.sh"));
        std::fs::write(&wrapper, "#!/bin/sh\nexec /bin/sh \"$3\"\n").unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut p = NodeProc::spawn(ns.name(), &wrapper, &script, &log);
        sleep(Duration::from_millis(200));
        assert!(p.log().contains("started"), "log: {}", p.log());
        p.sigstop().unwrap();
        p.sigcont().unwrap();
        assert!(p.wait_exit(Duration::from_millis(50)).is_none());
        p.kill9().unwrap();
        let st = p
            .wait_exit(Duration::from_secs(2))
            .expect("exited after SIGKILL");
        assert!(!st.success());
        assert!(p.sigterm().is_err(), "signal after reaping must be refused");
        drop(p);
        for f in [log, script, wrapper] {
            let _ = std::fs::remove_file(f);
        }
    }
}
