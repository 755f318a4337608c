//! Hooks: a command run when a VHID changes state (`on_master`, `on_backup`,
//! `on_init`; set in `[node]`, overridden per `[[vhid]]`), told what happened
//! through its environment.
//!
//! Choices, and why:
//! - **An argv array, no shell.** `on_master = ["/usr/local/sbin/vip-up", "lan"]`
//!   runs that program with that argument; nothing is split, expanded or
//!   looked up in `PATH`, so a space or a quote in an argument cannot turn
//!   into a bug. Whoever wants a shell writes `["/bin/sh", "-c", "..."]`.
//! - **A clean environment**: `PATH` and the `CARP_*` variables
//!   ([`environment`]), nothing of the controller's (its `NOTIFY_SOCKET`,
//!   `RUST_LOG`, ...). stdin is `/dev/null`; stdout and stderr are the
//!   controller's (the journal).
//! - **Never in the election's way.** The controller only hands a [`Job`] to
//!   a [`Lane`] and, when the lane was idle, spawns a task that runs it; the
//!   transition goes on at once. The task waits for the process
//!   asynchronously, at most `hook_timeout`; then the process group is
//!   killed (by the id of the group the hook leads: its children die too).
//! - **One hook at a time per VHID, the latest transition wins.** A hook
//!   that runs is never interrupted by a newer transition (it may be half
//!   way through reconfiguring something); transitions that happen
//!   meanwhile replace each other in one pending slot, and only the latest
//!   runs afterwards. So hooks of one VHID run in transition order, a hook
//!   for an old state never runs after a newer state's, and a flapping VHID
//!   cannot pile up a backlog that runs long after the fact. A transition
//!   whose state has no hook still empties the slot (the pending hook is
//!   stale). Replaced jobs are counted as `superseded`.
//!
//! [`Lane`] is the ordering, sans-IO and unit-tested; [`Hooks`] is the thin
//! part that spawns and reaps processes.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::election::State;

/// `node.hook_timeout` when not set, in seconds.
pub const DEFAULT_HOOK_TIMEOUT_S: u32 = 10;

/// `PATH` in a hook's environment: the program itself is named by an
/// absolute path, but scripts call other programs.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which hook runs: the one named after the state entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    Master,
    Backup,
    Init,
}

impl HookKind {
    pub const ALL: [HookKind; 3] = [HookKind::Master, HookKind::Backup, HookKind::Init];

    pub const fn for_state(s: State) -> Self {
        match s {
            State::Master => Self::Master,
            State::Backup => Self::Backup,
            State::Init => Self::Init,
        }
    }

    /// The config key, and the `hook` label of `carp_hook_runs_total`.
    pub const fn key(self) -> &'static str {
        match self {
            Self::Master => "on_master",
            Self::Backup => "on_backup",
            Self::Init => "on_init",
        }
    }
}

impl EncodeLabelValue for HookKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.key())
    }
}

/// `on_master`, `on_backup`, `on_init` of one table (`[node]` or a
/// `[[vhid]]`). `None`: not set here (a VHID then uses the node's);
/// `Some(vec![])`: explicitly none (a VHID turns the node's hook off);
/// otherwise the program (an absolute path) and its arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    pub on_master: Option<Vec<String>>,
    pub on_backup: Option<Vec<String>>,
    pub on_init: Option<Vec<String>>,
}

impl HookConfig {
    pub fn get(&self, kind: HookKind) -> Option<&Vec<String>> {
        match kind {
            HookKind::Master => self.on_master.as_ref(),
            HookKind::Backup => self.on_backup.as_ref(),
            HookKind::Init => self.on_init.as_ref(),
        }
    }

    pub fn set(&mut self, kind: HookKind, argv: Option<Vec<String>>) {
        match kind {
            HookKind::Master => self.on_master = argv,
            HookKind::Backup => self.on_backup = argv,
            HookKind::Init => self.on_init = argv,
        }
    }

    /// The command for `kind`: the VHID's setting if it has one, else the
    /// node's; `None` when neither has one or the one that applies is `[]`.
    pub fn resolve<'a>(
        vhid: &'a HookConfig,
        node: &'a HookConfig,
        kind: HookKind,
    ) -> Option<&'a [String]> {
        vhid.get(kind)
            .or_else(|| node.get(kind))
            .filter(|argv| !argv.is_empty())
            .map(Vec::as_slice)
    }
}

/// Why `program` cannot run as a hook now, for `carp check`; `None` when it
/// can. A warning, not an error: a hook is not needed for the election, and
/// a missing script must not keep the node from starting or reloading (a
/// run that cannot start is logged and counted as `spawn_error`).
pub fn program_problem(program: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = program.display();
    match std::fs::metadata(program) {
        Err(e) => Some(format!(
            "{shown}: {e}; the hook cannot start until it exists"
        )),
        Ok(m) if m.is_dir() => Some(format!("{shown} is a directory, not a program")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Some(format!("{shown} is not executable (chmod +x)"))
        }
        Ok(_) => None,
    }
}

/// One state change of one VHID, as a hook is told about it.
#[derive(Clone, Copy, Debug)]
pub struct Transition<'a> {
    pub node: &'a str,
    pub vhid: u8,
    pub interface: &'a str,
    pub from: State,
    pub to: State,
    /// Why (`election::Why::label`, or `split_brain` for a step-back).
    pub reason: &'a str,
    /// The VHID's addresses with their prefix length.
    pub addresses: &'a [String],
}

/// The whole environment of a hook (nothing else is inherited).
pub fn environment(t: &Transition<'_>) -> Vec<(String, String)> {
    let kind = HookKind::for_state(t.to);
    [
        ("PATH", HOOK_PATH.to_owned()),
        ("CARP_HOOK", kind.key().to_owned()),
        ("CARP_NODE", t.node.to_owned()),
        ("CARP_VHID", t.vhid.to_string()),
        ("CARP_INTERFACE", t.interface.to_owned()),
        ("CARP_OLD_STATE", t.from.label().to_owned()),
        ("CARP_NEW_STATE", t.to.label().to_owned()),
        ("CARP_REASON", t.reason.to_owned()),
        ("CARP_ADDRESSES", t.addresses.join(" ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A hook ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub kind: HookKind,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Job {
    /// The job for a transition, or `None` when its state has no hook.
    pub fn for_transition(vhid: &HookConfig, node: &HookConfig, t: &Transition<'_>) -> Option<Job> {
        let kind = HookKind::for_state(t.to);
        HookConfig::resolve(vhid, node, kind).map(|argv| Job {
            kind,
            argv: argv.to_vec(),
            env: environment(t),
        })
    }
}

/// The hooks of one VHID, in order: at most one running, at most one
/// waiting, and the waiting one is always the latest transition's (module
/// docs).
#[derive(Debug, Default)]
pub struct Lane {
    running: bool,
    pending: Option<Job>,
}

/// What [`Lane::submit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Start this now (the lane was idle).
    pub start: Option<Job>,
    /// This job was waiting and will never run: a newer transition came.
    pub superseded: Option<Job>,
}

impl Lane {
    /// A new transition; `job` is `None` when its state has no hook, which
    /// still makes a waiting hook stale.
    pub fn submit(&mut self, job: Option<Job>) -> Submitted {
        let superseded = self.pending.take();
        if self.running {
            self.pending = job;
            Submitted {
                start: None,
                superseded,
            }
        } else {
            self.running = job.is_some();
            Submitted {
                start: job,
                superseded,
            }
        }
    }

    /// The running hook ended: the next one to start, if any (the lane stays
    /// busy with it), else the lane is idle.
    pub fn finished(&mut self) -> Option<Job> {
        let next = self.pending.take();
        self.running = next.is_some();
        next
    }

    pub fn is_idle(&self) -> bool {
        !self.running && self.pending.is_none()
    }
}

/// How a hook ended: the `result` label of `carp_hook_runs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookResult {
    /// Exit status 0.
    Ok,
    /// Another exit status, or killed by a signal not ours.
    Failed,
    /// Still running after `hook_timeout`: its process group was killed.
    Timeout,
    /// Could not be started (missing, not executable, ...).
    SpawnError,
    /// Never started: a newer transition came while it waited.
    Superseded,
}

impl HookResult {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::SpawnError => "spawn_error",
            Self::Superseded => "superseded",
        }
    }
}

impl EncodeLabelValue for HookResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HookLabels {
    vhid: u8,
    interface: String,
    hook: HookKind,
    result: HookResult,
}

/// `carp_hook_runs_total{vhid,interface,hook,result}`; part of
/// [`crate::metrics::Metrics`].
#[derive(Clone, Debug, Default)]
pub struct HookMetrics {
    runs: Family<HookLabels, Counter>,
}

impl HookMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "carp_hook_runs",
            "Hooks (on_master, on_backup, on_init) by how they ended: ok, failed, timeout \
             (killed after hook_timeout), spawn_error, superseded (a newer transition came \
             before it could start).",
            self.runs.clone(),
        );
    }

    pub fn count(&self, vhid: u8, interface: &str, hook: HookKind, result: HookResult) {
        self.runs
            .get_or_create(&HookLabels {
                vhid,
                interface: interface.to_owned(),
                hook,
                result,
            })
            .inc();
    }
}

/// The VHID a lane belongs to: (interface, id).
type LaneKey = (String, u8);

/// The runner: the node's hooks, the timeout, and one [`Lane`] per VHID.
/// [`Hooks::transition`] is called on the election's task and returns at
/// once; processes run on tasks of their own.
pub struct Hooks {
    node: HookConfig,
    timeout: Duration,
    lanes: Arc<Mutex<HashMap<LaneKey, Lane>>>,
    metrics: HookMetrics,
}

impl Hooks {
    pub fn new(node: HookConfig, timeout: Duration, metrics: HookMetrics) -> Self {
        Hooks {
            node,
            timeout,
            lanes: Arc::default(),
            metrics,
        }
    }

    /// A VHID changed state: queue its hook (or cancel a stale one). Must be
    /// called on a tokio runtime (the hook runs on a task of its own).
    pub fn transition(&self, vhid_hooks: &HookConfig, t: &Transition<'_>) {
        let job = Job::for_transition(vhid_hooks, &self.node, t);
        if job.is_none()
            && self.node == HookConfig::default()
            && *vhid_hooks == HookConfig::default()
        {
            return;
        }
        let key: LaneKey = (t.interface.to_owned(), t.vhid);
        let submitted = {
            let Ok(mut lanes) = self.lanes.lock() else {
                return;
            };
            lanes.entry(key.clone()).or_default().submit(job)
        };
        if let Some(old) = submitted.superseded {
            tracing::info!(
                vhid = t.vhid,
                interface = t.interface,
                hook = old.kind.key(),
                "hook superseded by a newer transition before it could start"
            );
            self.metrics
                .count(t.vhid, t.interface, old.kind, HookResult::Superseded);
        }
        if let Some(job) = submitted.start {
            let lanes = Arc::clone(&self.lanes);
            let metrics = self.metrics.clone();
            let timeout = self.timeout;
            tokio::spawn(run_lane(lanes, key, job, timeout, metrics));
        }
    }

    /// Waits until no hook runs or waits, at most `limit` (at stop: the last
    /// transitions' hooks get their time; what still runs after it is killed
    /// when the runtime drops its task).
    pub async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let busy = self
                .lanes
                .lock()
                .map(|l| l.values().filter(|l| !l.is_idle()).count())
                .unwrap_or(0);
            if busy == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(lanes = busy, "hooks still running at stop: killed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The timeout each hook gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Runs a lane's jobs one after the other until it is idle.
async fn run_lane(
    lanes: Arc<Mutex<HashMap<LaneKey, Lane>>>,
    key: LaneKey,
    mut job: Job,
    timeout: Duration,
    metrics: HookMetrics,
) {
    let (interface, vhid) = (key.0.as_str(), key.1);
    loop {
        let t0 = Instant::now();
        let (result, detail) = run_one(&job, timeout).await;
        let ms = t0.elapsed().as_millis() as u64;
        let hook = job.kind.key();
        let program = job.argv.first().map_or("", String::as_str);
        match result {
            HookResult::Ok => {
                tracing::info!(
                    vhid,
                    interface,
                    hook,
                    program,
                    duration_ms = ms,
                    "hook finished: {detail}"
                );
            }
            HookResult::Failed | HookResult::Timeout => {
                tracing::warn!(
                    vhid,
                    interface,
                    hook,
                    program,
                    duration_ms = ms,
                    "hook {}: {detail}",
                    result.label()
                );
            }
            HookResult::SpawnError | HookResult::Superseded => {
                tracing::error!(vhid, interface, hook, program, "hook not started: {detail}");
            }
        }
        metrics.count(vhid, interface, job.kind, result);
        let next = match lanes.lock() {
            Ok(mut l) => l.get_mut(&key).and_then(Lane::finished),
            Err(_) => None,
        };
        match next {
            Some(j) => job = j,
            None => return,
        }
    }
}

/// Kills the hook's process group if the hook is dropped unreaped (the
/// runtime stops with it still running).
struct Group(Option<nix::unistd::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs one hook to its end or its timeout: the result and a line for the log.
async fn run_one(job: &Job, timeout: Duration) -> (HookResult, String) {
    let Some((program, args)) = job.argv.split_first() else {
        return (HookResult::SpawnError, "empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(Stdio::null())
        // Its own process group: the timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (HookResult::SpawnError, format!("{program}: {e}")),
    };
    let mut group = Group(
        child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            group.0 = None;
            if status.success() {
                (HookResult::Ok, status.to_string())
            } else {
                (HookResult::Failed, status.to_string())
            }
        }
        Ok(Err(e)) => (HookResult::Failed, format!("waiting for it failed: {e}")),
        Err(_) => {
            // The group is ours and its leader is not reaped yet, so its id
            // cannot have been reused.
            if let Some(pgid) = group.0 {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            group.0 = None;
            (
                HookResult::Timeout,
                format!(
                    "still running after {} s: killed (its process group)",
                    timeout.as_secs_f64()
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: HookKind, tag: &str) -> Job {
        Job {
            kind,
            argv: vec!["/bin/true".into(), tag.into()],
            env: Vec::new(),
        }
    }

    fn argv(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn hooks_lane_starts_when_idle_and_runs_in_order() {
        let mut lane = Lane::default();
        assert!(lane.is_idle());
        let s = lane.submit(Some(job(HookKind::Backup, "a")));
        assert_eq!(s.start, Some(job(HookKind::Backup, "a")));
        assert_eq!(s.superseded, None);
        assert!(!lane.is_idle());
        // Busy: the next waits.
        let s = lane.submit(Some(job(HookKind::Master, "b")));
        assert_eq!((s.start, s.superseded), (None, None));
        assert_eq!(lane.finished(), Some(job(HookKind::Master, "b")));
        assert!(!lane.is_idle());
        assert_eq!(lane.finished(), None);
        assert!(lane.is_idle());
    }

    #[test]
    fn hooks_lane_keeps_only_the_latest_transition() {
        let mut lane = Lane::default();
        lane.submit(Some(job(HookKind::Backup, "started")));
        lane.submit(Some(job(HookKind::Master, "1")));
        let s = lane.submit(Some(job(HookKind::Backup, "2")));
        assert_eq!(s.superseded, Some(job(HookKind::Master, "1")));
        let s = lane.submit(Some(job(HookKind::Master, "3")));
        assert_eq!(s.superseded, Some(job(HookKind::Backup, "2")));
        // Only the latest runs after the running one; nothing after it.
        assert_eq!(lane.finished(), Some(job(HookKind::Master, "3")));
        assert_eq!(lane.finished(), None);
    }

    #[test]
    fn hooks_lane_transition_without_hook_cancels_the_stale_one() {
        let mut lane = Lane::default();
        lane.submit(Some(job(HookKind::Backup, "running")));
        lane.submit(Some(job(HookKind::Master, "stale")));
        // MASTER -> INIT with no on_init: on_master must not run after it.
        let s = lane.submit(None);
        assert_eq!(s.start, None);
        assert_eq!(s.superseded, Some(job(HookKind::Master, "stale")));
        assert_eq!(lane.finished(), None);
        assert!(lane.is_idle());
        // And on an idle lane it starts nothing.
        let s = lane.submit(None);
        assert_eq!((s.start, s.superseded), (None, None));
        assert!(lane.is_idle());
    }

    #[test]
    fn hooks_vhid_setting_overrides_the_node() {
        let node = HookConfig {
            on_master: argv(&["/node/master"]),
            on_backup: argv(&["/node/backup", "x"]),
            on_init: None,
        };
        let vhid = HookConfig {
            on_master: argv(&["/vhid/master"]),
            on_backup: Some(Vec::new()),
            on_init: argv(&["/vhid/init"]),
        };
        let r = |k| HookConfig::resolve(&vhid, &node, k).map(<[String]>::to_vec);
        assert_eq!(r(HookKind::Master), argv(&["/vhid/master"]));
        assert_eq!(r(HookKind::Backup), None, "[] turns the node's hook off");
        assert_eq!(r(HookKind::Init), argv(&["/vhid/init"]));
        let none = HookConfig::default();
        let r = |k| HookConfig::resolve(&none, &node, k).map(<[String]>::to_vec);
        assert_eq!(r(HookKind::Master), argv(&["/node/master"]));
        assert_eq!(r(HookKind::Backup), argv(&["/node/backup", "x"]));
        assert_eq!(r(HookKind::Init), None);
    }

    #[test]
    fn hooks_environment_names_everything() {
        let addresses = ["10.77.0.1/24".to_string(), "10.77.0.2/24".to_string()];
        let t = Transition {
            node: "fw1",
            vhid: 7,
            interface: "lan0",
            from: State::Backup,
            to: State::Master,
            reason: "master_down",
            addresses: &addresses,
        };
        let env: HashMap<String, String> = environment(&t).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("CARP_HOOK"), Some("on_master"));
        assert_eq!(get("CARP_NODE"), Some("fw1"));
        assert_eq!(get("CARP_VHID"), Some("7"));
        assert_eq!(get("CARP_INTERFACE"), Some("lan0"));
        assert_eq!(get("CARP_OLD_STATE"), Some("BACKUP"));
        assert_eq!(get("CARP_NEW_STATE"), Some("MASTER"));
        assert_eq!(get("CARP_REASON"), Some("master_down"));
        assert_eq!(get("CARP_ADDRESSES"), Some("10.77.0.1/24 10.77.0.2/24"));
        assert_eq!(get("PATH"), Some(HOOK_PATH));
        assert_eq!(env.len(), 9);
    }

    #[test]
    fn hooks_job_only_for_states_with_a_hook() {
        let node = HookConfig {
            on_master: argv(&["/bin/true"]),
            ..HookConfig::default()
        };
        let t = |to| Transition {
            node: "fw1",
            vhid: 1,
            interface: "lan0",
            from: State::Backup,
            to,
            reason: "x",
            addresses: &[],
        };
        let j =
            Job::for_transition(&HookConfig::default(), &node, &t(State::Master)).expect("a job");
        assert_eq!(
            (j.kind, j.argv.as_slice()),
            (HookKind::Master, &["/bin/true".to_string()][..])
        );
        assert!(Job::for_transition(&HookConfig::default(), &node, &t(State::Init)).is_none());
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn sh(script: &str) -> Job {
        Job {
            kind: HookKind::Master,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("CARP_VHID".into(), "3".into())],
        }
    }

    #[test]
    fn hooks_process_results() {
        rt().block_on(async {
            let t = Duration::from_secs(5);
            assert_eq!(
                run_one(&sh("test \"$CARP_VHID\" = 3 && test -z \"$HOME\""), t)
                    .await
                    .0,
                HookResult::Ok
            );
            assert_eq!(run_one(&sh("exit 3"), t).await.0, HookResult::Failed);
            let missing = Job {
                argv: vec!["/nonexistent/hook".into()],
                ..sh("")
            };
            assert_eq!(run_one(&missing, t).await.0, HookResult::SpawnError);
        });
    }

    #[test]
    fn hooks_timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("carp-hooks-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let pids = dir.join("pids");
        // The shell and its child (not exec'd) must both die.
        let script = format!("sleep 30 & echo $$ $! > {}; wait", pids.display());
        let t0 = Instant::now();
        let (result, _) = rt().block_on(run_one(&sh(&script), Duration::from_millis(1000)));
        assert_eq!(result, HookResult::Timeout);
        assert!(t0.elapsed() < Duration::from_secs(5));
        let text = std::fs::read_to_string(&pids).expect("the hook wrote its pids");
        for pid in text.split_whitespace() {
            // Reaped (the shell) or killed and reparented to init, which reaps it.
            let mut gone = false;
            for _ in 0..100 {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.is_empty() || stat.contains(") Z ") {
                    gone = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(gone, "process {pid} of the hook survived its timeout");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hooks_runner_runs_one_lane_in_order() {
        let dir = std::env::temp_dir().join(format!("carp-hooks-lane-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let out = dir.join("out");
        let script = format!(
            "sleep 0.2; echo \"$CARP_NEW_STATE $CARP_REASON\" >> {}",
            out.display()
        );
        let node = HookConfig {
            on_master: Some(vec!["/bin/sh".into(), "-c".into(), script.clone()]),
            on_backup: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            on_init: None,
        };
        let metrics = HookMetrics::default();
        let hooks = Hooks::new(node, Duration::from_secs(5), metrics.clone());
        let t = |from, to, reason| Transition {
            node: "fw1",
            vhid: 1,
            interface: "lan0",
            from,
            to,
            reason,
            addresses: &[],
        };
        rt().block_on(async {
            let none = HookConfig::default();
            hooks.transition(&none, &t(State::Init, State::Backup, "started"));
            hooks.transition(&none, &t(State::Backup, State::Master, "master_down"));
            hooks.transition(
                &none,
                &t(State::Master, State::Backup, "higher_priority_master"),
            );
            hooks.transition(&none, &t(State::Backup, State::Master, "preempt"));
            hooks.drain(Duration::from_secs(5)).await;
        });
        let text = std::fs::read_to_string(&out).expect("hooks ran");
        assert_eq!(text, "BACKUP started\nMASTER preempt\n");
        let count = |hook, result| {
            metrics
                .runs
                .get_or_create(&HookLabels {
                    vhid: 1,
                    interface: "lan0".into(),
                    hook,
                    result,
                })
                .get()
        };
        assert_eq!(count(HookKind::Backup, HookResult::Ok), 1);
        assert_eq!(count(HookKind::Master, HookResult::Ok), 1);
        assert_eq!(count(HookKind::Master, HookResult::Superseded), 1);
        assert_eq!(count(HookKind::Backup, HookResult::Superseded), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
