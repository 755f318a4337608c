//! `cargo xtask bench failover`: the failover gap of carp against keepalived
//! on the same lab topology (carp_tests::lab).
//!
//! For each fault and each implementation, `runs` times: wait until fw1 is
//! MASTER of both VHIDs / VRRP instances and fw2 BACKUP, start a bounded 1 ms
//! ICMP probe from the client to the server (through both VIPs: the client's
//! gateway is the LAN VIP, the server's the WAN VIP), inject the fault into
//! fw1 300 ms in, and take the probe's longest silence (`max_gap`), lost
//! requests and duplicate replies. Then look for a zombie answerer: ARP for
//! each VIP, broadcast every time (`arping -b`), from the client and from the
//! server; more replies than requests, or replies from more than one MAC,
//! means two routers answer for the VIP. Then restore fw1 and wait for it to
//! be MASTER again before the next run.
//!
//! carp runs first, on a lab with a controller per router (carp_tests::pair),
//! release-built, with `[sync]` between the routers (the peer hello tells
//! the master when its backup would take over, and carries the link-loss
//! handover) and each router's data path pinned on its own bpffs;
//! keepalived then runs on a fresh copy of the topology where nothing carp
//! ever ran (no XDP, no holder device, default sysctls).
//!
//! Two answerers are looked for over the whole window, not only after the
//! fact: the LAN and WAN switches' router ports are captured from before the
//! probe to its end, and a virtual MAC seen on both routers' ports in
//! overlapping intervals (`carp_tests::watch::vmac_overlaps`) is two masters
//! at once. keepalived here uses its own MACs (no `use_vmac`), so only the
//! ARP check applies to it.
//!
//! `--fast`: carp at `advbase_ms = 10` on both VHIDs (fw2's master-down
//! interval 3 × 10 ms + 10 ms × 100/256 = 33.9 ms) beside keepalived at
//! `advert_int 0.01` (the same master-down interval, see
//! `keepalived::config_with_interval`), probes scaled down, the fast-mode
//! targets, and after the faults a steady run per implementation
//! (`--steady-secs`, 60 s): fw1's LAN adverts captured on its LAN switch port
//! (the interval error's p50/p99/max), the transitions of both nodes (any is
//! a false takeover), the CPU of each node's daemon (utime + stime from
//! /proc over the window) and, per thread of fw1's daemon, its CPU time and
//! its time waiting for a CPU (schedstat: is a late advert a starved
//! thread?). carp runs it twice: idle, and under load: fw1 holds 200 000
//! conntrack entries (bench sync's inserter), fw2 asks for fw1's whole table
//! every 2 s (`carp sync resync`: fw1's sync thread streams a bulk, fw2's
//! installs it, back to back) and fw1's /metrics is scraped every 100 ms.
//! keepalived has neither a sync engine nor a metrics endpoint, so its
//! steady run is the idle one.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;

use anyhow::{bail, Context as _};
use carp_tests::lab::{
    Lab, LabOptions, NodeParams, Router, Switch, LAN_VHID, LAN_VIP, SERVER_IP, WAN_VHID, WAN_VIP,
};
use carp_tests::netns::{cleanup_stale, NetNs, PREFIX_ROOT};
use carp_tests::pair::Pair;
use carp_tests::probe::{Probe, ProbeOptions, ProbeReport};
use carp_tests::watch::{vmac_overlaps, Capture, Frame};

use super::keepalived::{self, Keepalived, LAN_INSTANCE, WAN_INSTANCE};
use super::sync::{clk_tck, cpu_ticks, ct_count, insert, CtLimits};
use super::timing::{enter_netns, interval_errors, scrape, Stats};
use crate::interrupt::{check_interrupted, install_signal_handlers};
use crate::Fault;

/// fw1 is the preferred master, fw2 the backup, as in the integration tests.
const ADVSKEW_FW1: u8 = 0;
const ADVSKEW_FW2: u8 = 100;
/// When the fault is injected, from the start of the probe.
const FAULT_AT: Duration = Duration::from_millis(300);
/// For the election and for fw1's return after a restore.
const ROLES_TIMEOUT: Duration = Duration::from_secs(20);
/// `--fast`: carp's `advbase_ms`, keepalived's `advert_int` 0.01.
pub const FAST_ADVBASE_MS: u16 = 10;

/// The advertisement timing of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// carp `advbase = N` (seconds), keepalived `advert_int N`.
    Seconds(u8),
    /// carp `advbase_ms = N` (fast mode), keepalived `advert_int N/1000`.
    Fast(u16),
}

impl Timing {
    /// One advbase (the unit of the skew).
    fn base(self) -> Duration {
        match self {
            Timing::Seconds(s) => Duration::from_secs(u64::from(s)),
            Timing::Fast(ms) => Duration::from_millis(u64::from(ms)),
        }
    }

    /// The advertisement interval of a node with `advskew`.
    fn interval(self, advskew: u8) -> Duration {
        self.base() + self.base() * u32::from(advskew) / 256
    }

    /// 3 × advbase + advbase × advskew / 256 (docs/protocol.md §2).
    fn master_down(self, advskew: u8) -> Duration {
        3 * self.base() + self.base() * u32::from(advskew) / 256
    }

    fn is_fast(self) -> bool {
        matches!(self, Timing::Fast(_))
    }

    fn carp_label(self) -> String {
        match self {
            Timing::Seconds(s) => format!("advbase {s}"),
            Timing::Fast(ms) => format!("advbase_ms {ms}"),
        }
    }

    /// The targets of issue "Failover in milliseconds" (advbase 1) and of its
    /// fast mode part (`advbase_ms = 10`); none for other timings.
    fn targets(self) -> Option<Targets> {
        match self {
            // A death of the whole node costs a master-down interval (3.39
            // s); a controller killed or stopped loses at most 5 probes at 1
            // ms (its pinned data path answers until just before the backup
            // takes over); a link loss is handed over through the sync link
            // within 10 ms; a bow-out within 20 ms.
            Timing::Seconds(1) => Some(Targets {
                node_death: Duration::from_millis(3500),
                controller_lost: 5,
                link_down: Duration::from_millis(10),
                orderly: Duration::from_millis(20),
            }),
            // The same, with a master-down interval of 33.9 ms.
            Timing::Fast(FAST_ADVBASE_MS) => Some(Targets {
                node_death: Duration::from_millis(35),
                controller_lost: 5,
                link_down: Duration::from_millis(10),
                orderly: Duration::from_millis(20),
            }),
            _ => None,
        }
    }
}

/// What carp must meet in every run, per fault.
#[derive(Clone, Copy, Debug)]
struct Targets {
    node_death: Duration,
    controller_lost: u64,
    link_down: Duration,
    orderly: Duration,
}

/// The steady run's targets (fast mode, under load): fw1's advert interval
/// error p99, and no transition on either node.
const TARGET_STEADY_P99: Duration = Duration::from_millis(1);
/// Conntrack entries on fw1 during the loaded steady run (fw1 streams them to
/// fw2 at every resync).
const STEADY_ENTRIES: u32 = 200_000;
/// Their destination port (bench sync uses 9999 and 9998).
const STEADY_DPORT: u16 = 9997;
/// How often fw2 asks for fw1's whole table during the loaded steady run.
const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// How often fw1's /metrics is scraped during the loaded steady run.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
/// vMAC frames from both ports within this of a takeover are the crossing
/// of the last advert and the new master's first, not two masters
/// (tests/tests/failover.rs, `CROSSING`).
const CROSSING: Duration = Duration::from_millis(5);
const TENURE_GAP: Duration = Duration::from_millis(1500);

/// Sleeps, waking early on Ctrl-C.
fn nap(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check_interrupted()
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::Kill9 => "kill9",
        Fault::Sigstop => "sigstop",
        Fault::Sigterm => "sigterm",
        Fault::LinkDown => "link-down",
        Fault::NodeDeath => "node-death",
    }
}

/// The links a node death takes down on fw1, the sync link first: a dead
/// node cannot tell its peer (with lan0 first, its link-loss handover would
/// still reach fw2 over sync0 in the few ms before sync0 goes).
const NODE_LINKS: [&str; 3] = ["sync0", "lan0", "wan0"];

fn is_hard(f: Fault) -> bool {
    f != Fault::Sigterm
}

/// How long to probe: a hard failure takes a master-down interval (3.4 s at
/// advbase 1, 34 ms at `advbase_ms = 10`), an orderly stop should take next
/// to nothing; either way the probe sees a while of the new master (seconds;
/// in fast mode over a second, some hundred master-down intervals).
fn probe_duration(f: Fault, timing: Timing) -> Duration {
    match (timing, is_hard(f)) {
        (Timing::Seconds(advbase), true) => Duration::from_secs(5 + 3 * u64::from(advbase)),
        (Timing::Seconds(_), false) => Duration::from_secs(3),
        (Timing::Fast(_), true) => {
            FAULT_AT + timing.master_down(ADVSKEW_FW2) + Duration::from_millis(1500)
        }
        (Timing::Fast(_), false) => Duration::from_millis(1500),
    }
}

/// Reads a log line: `(0 for the LAN VHID / 1 for the WAN VHID, whether the
/// transition is to MASTER)`, or `None` for any other line.
type TransitionParser = fn(&str) -> Option<(usize, bool)>;

/// An implementation under test, fw1 master and fw2 backup when healthy.
trait Cluster {
    fn name(&self) -> &'static str;
    fn lab(&self) -> &Lab;
    /// Whether fw1 is MASTER of both VHIDs and fw2 BACKUP of both, now.
    fn roles_ok(&mut self) -> anyhow::Result<bool>;
    fn inject(&mut self, fault: Fault) -> anyhow::Result<()>;
    /// Undoes `fault` (restart, link up, SIGCONT); does not wait for the roles.
    fn restore(&mut self, fault: Fault) -> anyhow::Result<()>;
    /// The end of both routers' logs, for error messages.
    fn logs(&self) -> String;
    /// fw2's log, and how to read a transition in it.
    fn backup_log(&self) -> (PathBuf, TransitionParser);
    /// The PIDs of `r`'s daemon now (for CPU accounting).
    fn pids(&mut self, r: Router) -> anyhow::Result<Vec<i32>>;
    /// How many state transitions `r` has made since its daemon started.
    fn transitions(&mut self, r: Router) -> anyhow::Result<u64>;
}

/// Watches fw2's log from its current end, in a thread, for the moment it
/// reports MASTER for both VHIDs: the takeover as the backup's control plane
/// sees it, independent of what the data plane of the failed node still does.
struct TakeoverWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<Instant>>>,
}

impl TakeoverWatch {
    fn start(path: PathBuf, parse: TransitionParser) -> TakeoverWatch {
        let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut master = [false, false];
            loop {
                if let Ok(mut f) = File::open(&path) {
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        if let Ok(n) = f.read_to_end(&mut pending) {
                            offset += n as u64;
                        }
                    }
                }
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if let Some((i, m)) = parse(&String::from_utf8_lossy(&line)) {
                        master[i] = m;
                    }
                }
                if master == [true, true] {
                    return Some(Instant::now());
                }
                if stop2.load(Ordering::Relaxed) {
                    return None;
                }
                sleep(Duration::from_millis(2));
            }
        });
        TakeoverWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// The moment fw2 was MASTER of both, if it was before now.
    fn finish(mut self) -> Option<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

impl Drop for TakeoverWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Removes ANSI escape sequences (tracing-subscriber colours its output
/// even into a file).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            for c in it.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// carp's `transition vhid=1 interface="lan0" from="backup" to="master" ...`.
fn carp_transition(line: &str) -> Option<(usize, bool)> {
    let clean = strip_ansi(line);
    if !clean.contains("transition") {
        return None;
    }
    let field = |k: &str| {
        clean
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let i = match field("vhid=")?.parse::<u8>().ok()? {
        LAN_VHID => 0,
        WAN_VHID => 1,
        _ => return None,
    };
    Some((i, field("to=")?.eq_ignore_ascii_case("master")))
}

/// keepalived's `(LAN) Entering MASTER STATE`.
fn keepalived_transition(line: &str) -> Option<(usize, bool)> {
    let (name, state) = keepalived::transition_line(line)?;
    let i = match name {
        LAN_INSTANCE => 0,
        WAN_INSTANCE => 1,
        _ => return None,
    };
    Some((i, state == "MASTER"))
}

fn wait_roles(c: &mut dyn Cluster, timeout: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if c.roles_ok()? {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            bail!(
                "{}: fw1 not MASTER of both / fw2 not BACKUP of both within {timeout:?}\n{}",
                c.name(),
                c.logs()
            );
        }
        nap(Duration::from_millis(25))?;
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- carp ---

struct CarpCluster {
    pair: Pair,
}

impl CarpCluster {
    fn new(timing: Timing) -> anyhow::Result<CarpCluster> {
        let params = |advskew| NodeParams {
            advbase: match timing {
                Timing::Seconds(s) => s,
                Timing::Fast(_) => 1,
            },
            advbase_ms: match timing {
                Timing::Seconds(_) => None,
                Timing::Fast(ms) => Some(ms),
            },
            sync: true,
            ..NodeParams::with_advskew(advskew)
        };
        let mut pair = Pair::new(
            LabOptions::default(),
            [params(ADVSKEW_FW1), params(ADVSKEW_FW2)],
        )?;
        // fw1 first so that it wins the first election without preemption.
        pair.start(Router::Fw1);
        let deadline = Instant::now() + ROLES_TIMEOUT;
        while pair.node(Router::Fw1).state(LAN_VHID).as_deref() != Some("MASTER") {
            if Instant::now() >= deadline || pair.node(Router::Fw1).is_exited() {
                bail!("carp: fw1 never became MASTER\n{}", pair.logs());
            }
            nap(Duration::from_millis(25))?;
        }
        pair.start(Router::Fw2);
        Ok(CarpCluster { pair })
    }
}

impl Cluster for CarpCluster {
    fn name(&self) -> &'static str {
        "carp"
    }

    fn lab(&self) -> &Lab {
        &self.pair.lab
    }

    fn roles_ok(&mut self) -> anyhow::Result<bool> {
        for v in [LAN_VHID, WAN_VHID] {
            if self.pair.node(Router::Fw1).state(v).as_deref() != Some("MASTER")
                || self.pair.node(Router::Fw2).state(v).as_deref() != Some("BACKUP")
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        let n = self.pair.node(Router::Fw1);
        match fault {
            Fault::Kill9 => n.kill9(),
            Fault::Sigstop => n.sigstop(),
            Fault::Sigterm => n.sigterm(),
            Fault::LinkDown => self.pair.lab.set_link(Router::Fw1, "lan0", false),
            Fault::NodeDeath => set_links(&self.pair.lab, false),
        }
    }

    fn restore(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill9 | Fault::Sigterm => {
                let n = self.pair.node(Router::Fw1);
                if n.wait_exit(Duration::from_secs(5)).is_none() {
                    bail!(
                        "carp: fw1 still runs 5 s after {}\n{}",
                        fault_name(fault),
                        self.logs()
                    );
                }
                drop(self.pair.take(Router::Fw1));
                self.pair.start(Router::Fw1);
                Ok(())
            }
            Fault::Sigstop => self.pair.node(Router::Fw1).sigcont(),
            Fault::LinkDown => self.pair.lab.set_link(Router::Fw1, "lan0", true),
            Fault::NodeDeath => set_links(&self.pair.lab, true),
        }
    }

    fn logs(&self) -> String {
        tail(&self.pair.logs(), 60)
    }

    fn backup_log(&self) -> (PathBuf, TransitionParser) {
        (self.pair.log_path(Router::Fw2), carp_transition)
    }

    fn pids(&mut self, r: Router) -> anyhow::Result<Vec<i32>> {
        let n = self.pair.node(r);
        if n.is_exited() {
            bail!("carp on {} exited\n{}", r.name(), self.logs());
        }
        Ok(vec![n.pid() as i32])
    }

    /// `carp_transitions_total` summed over its series.
    fn transitions(&mut self, r: Router) -> anyhow::Result<u64> {
        let text = self.pair.metrics(r);
        if !text.contains("carp_") {
            bail!("no metrics from carp on {}\n{}", r.name(), self.logs());
        }
        Ok(self.pair.transitions(r).values().sum())
    }
}

/// All of fw1's links down (a node death) or up again.
fn set_links(lab: &Lab, up: bool) -> anyhow::Result<()> {
    lab.set_links(Router::Fw1, &NODE_LINKS, up)
}

// ---------------------------------------------------------- keepalived ---

/// Field order is drop order: keepalived processes, then the namespaces,
/// then the directory of configs and logs.
struct KeepalivedCluster {
    nodes: [Option<Keepalived>; 2],
    lab: Lab,
    dir: WorkDir,
    timing: Timing,
    starts: u32,
}

struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx(r: Router) -> usize {
    match r {
        Router::Fw1 => 0,
        Router::Fw2 => 1,
    }
}

fn advskew_of(r: Router) -> u8 {
    match r {
        Router::Fw1 => ADVSKEW_FW1,
        Router::Fw2 => ADVSKEW_FW2,
    }
}

impl KeepalivedCluster {
    fn new(timing: Timing) -> anyhow::Result<KeepalivedCluster> {
        let lab = Lab::build(LabOptions::default())?;
        let path = std::env::temp_dir().join(format!("{}keepalived", lab.prefix()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut c = KeepalivedCluster {
            nodes: [None, None],
            lab,
            dir: WorkDir(path),
            timing,
            starts: 0,
        };
        c.start(Router::Fw1)?;
        let deadline = Instant::now() + ROLES_TIMEOUT;
        while !c.instance_states(Router::Fw1).iter().all(|s| s == "MASTER") {
            if Instant::now() >= deadline {
                bail!("keepalived: fw1 never became MASTER\n{}", c.logs());
            }
            nap(Duration::from_millis(25))?;
        }
        c.start(Router::Fw2)?;
        Ok(c)
    }

    fn start(&mut self, r: Router) -> anyhow::Result<()> {
        self.starts += 1;
        let conf = keepalived::config_with_interval(
            r.name(),
            self.timing.base(),
            keepalived::priority_for_advskew(advskew_of(r)),
        );
        // A fresh log per start: states are read from the last process's log.
        let tag = format!("{}-{}", r.name(), self.starts);
        let k = Keepalived::spawn(self.lab.router(r).name(), &self.dir.0, &tag, &conf)?;
        self.nodes[idx(r)] = Some(k);
        Ok(())
    }

    fn node(&mut self, r: Router) -> anyhow::Result<&mut Keepalived> {
        self.nodes[idx(r)]
            .as_mut()
            .with_context(|| format!("keepalived on {} is not running", r.name()))
    }

    /// [LAN, WAN] states of `r` from its log ("" if unknown or not running).
    fn instance_states(&self, r: Router) -> [String; 2] {
        let st = self.nodes[idx(r)]
            .as_ref()
            .map(Keepalived::states)
            .unwrap_or_default();
        [LAN_INSTANCE, WAN_INSTANCE].map(|i| st.get(i).cloned().unwrap_or_default())
    }
}

impl Cluster for KeepalivedCluster {
    fn name(&self) -> &'static str {
        "keepalived"
    }

    fn lab(&self) -> &Lab {
        &self.lab
    }

    fn roles_ok(&mut self) -> anyhow::Result<bool> {
        let fw1_master = self
            .instance_states(Router::Fw1)
            .iter()
            .all(|s| s == "MASTER");
        let fw2_backup = self
            .instance_states(Router::Fw2)
            .iter()
            .all(|s| s == "BACKUP");
        // The log says what keepalived decided; the addresses say it was done.
        Ok(fw1_master
            && fw2_backup
            && vips_on(self.lab.router(Router::Fw1))? == [true, true]
            && vips_on(self.lab.router(Router::Fw2))? == [false, false])
    }

    fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill9 => self.node(Router::Fw1)?.kill9(),
            Fault::Sigstop => self.node(Router::Fw1)?.sigstop(),
            Fault::Sigterm => self.node(Router::Fw1)?.sigterm(),
            Fault::LinkDown => self.lab.set_link(Router::Fw1, "lan0", false),
            Fault::NodeDeath => set_links(&self.lab, false),
        }
    }

    fn restore(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill9 | Fault::Sigterm => {
                if !self.node(Router::Fw1)?.wait_exit(Duration::from_secs(5)) {
                    bail!(
                        "keepalived: fw1 still runs 5 s after {}\n{}",
                        fault_name(fault),
                        self.logs()
                    );
                }
                self.nodes[idx(Router::Fw1)] = None;
                // What a SIGKILL left behind (the operator's cleanup), so that
                // every run starts from the same state.
                let fw1 = self.lab.router(Router::Fw1);
                for (vip, dev) in [(LAN_VIP, "lan0"), (WAN_VIP, "wan0")] {
                    let _ =
                        fw1.exec_unchecked(["ip", "addr", "del", &format!("{vip}/24"), "dev", dev]);
                }
                self.start(Router::Fw1)
            }
            Fault::Sigstop => self.node(Router::Fw1)?.sigcont(),
            Fault::LinkDown => self.lab.set_link(Router::Fw1, "lan0", true),
            Fault::NodeDeath => set_links(&self.lab, true),
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for r in Router::ALL {
            let log = self.nodes[idx(r)]
                .as_ref()
                .map(Keepalived::log)
                .unwrap_or_default();
            s.push_str(&format!(
                "----- {} keepalived log -----\n{}\n",
                r.name(),
                tail(&log, 30)
            ));
        }
        s
    }

    fn backup_log(&self) -> (PathBuf, TransitionParser) {
        let path = self.nodes[idx(Router::Fw2)]
            .as_ref()
            .map(|k| k.log_path().to_owned())
            .unwrap_or_default();
        (path, keepalived_transition)
    }

    /// The parent and its descendants (the VRRP child).
    fn pids(&mut self, r: Router) -> anyhow::Result<Vec<i32>> {
        Ok(self.node(r)?.pids())
    }

    /// "Entering X STATE" lines in the log of the running process.
    fn transitions(&mut self, r: Router) -> anyhow::Result<u64> {
        let log = self.node(r)?.log();
        Ok(log
            .lines()
            .filter(|l| keepalived::transition_line(l).is_some())
            .count() as u64)
    }
}

// ------------------------------------------------------------ checks ---

/// Whether the LAN VIP and the WAN VIP are configured in `ns` (any device).
fn vips_on(ns: &NetNs) -> anyhow::Result<[bool; 2]> {
    let out = ns.exec(["ip", "-4", "-o", "addr", "show"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok([LAN_VIP, WAN_VIP].map(|v| text.contains(&format!("inet {v}/"))))
}

/// What one `arping -b` saw.
#[derive(Clone, Debug, Default)]
struct ArpCheck {
    sent: u32,
    replies: u32,
    macs: Vec<String>,
}

impl ArpCheck {
    /// Two routers answer for the VIP.
    fn zombie(&self) -> bool {
        self.replies > self.sent || self.macs.len() > 1
    }
}

impl std::fmt::Display for ArpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} req -> {} replies", self.sent, self.replies)?;
        if !self.macs.is_empty() {
            write!(f, " from {}", self.macs.join(","))?;
        }
        Ok(())
    }
}

/// `arping -b -c 2 -w 3` for `vip` out of `eth0` of `ns`: every request is
/// broadcast (no switch to unicast after the first reply), so every router
/// that answers for the VIP answers every request. With a deadline arping
/// stops once it has 2 replies, so two answerers show as 2 replies to 1
/// request (iputils arping(8), `-w`).
fn arp_check(ns: &NetNs, vip: Ipv4Addr) -> anyhow::Result<ArpCheck> {
    let out = ns.exec_unchecked([
        "arping",
        "-b",
        "-c",
        "2",
        "-w",
        "3",
        "-I",
        "eth0",
        &vip.to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut c = ArpCheck::default();
    let mut reply_lines = 0;
    for l in text.lines() {
        // "Unicast reply from 10.77.0.1 [00:00:5E:00:01:01]  0.6ms"
        if l.contains(" reply from ") {
            reply_lines += 1;
            if let Some(mac) = l.split('[').nth(1).and_then(|s| s.split(']').next()) {
                let mac = mac.to_ascii_lowercase();
                if !c.macs.contains(&mac) {
                    c.macs.push(mac);
                }
            }
        } else if let Some(n) = l.strip_prefix("Sent ") {
            // "Sent 4 probes (4 broadcast(s))"
            c.sent = n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(n) = l.strip_prefix("Received ") {
            // "Received 4 response(s)"
            c.replies = n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    c.replies = c.replies.max(reply_lines);
    if c.sent == 0 {
        bail!(
            "unexpected arping output in {}: {text}{}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(c)
}

/// One failover.
#[derive(Clone, Debug)]
struct RunResult {
    report: ProbeReport,
    /// From the start of the probe.
    fault_at: Duration,
    /// From the fault to fw2's log saying MASTER for both VHIDs.
    takeover: Option<Duration>,
    arp_lan: ArpCheck,
    arp_wan: ArpCheck,
    /// The VIPs still configured on fw1 after the fault.
    vips_left: [bool; 2],
    /// Overlapping vMAC tenures on the two routers' switch ports over the
    /// whole window (two masters at once).
    vmac_overlaps: usize,
}

impl RunResult {
    fn zombie(&self) -> bool {
        self.arp_lan.zombie() || self.arp_wan.zombie()
    }

    /// Two routers answered at some instant: a zombie after the fact, or
    /// vMAC frames from both ports at once during the window.
    fn two_answerers(&self) -> bool {
        self.zombie() || self.vmac_overlaps > 0
    }
}

fn one_run(c: &mut dyn Cluster, fault: Fault, timing: Timing) -> anyhow::Result<RunResult> {
    wait_roles(c, ROLES_TIMEOUT)?;
    // Let the new master's gratuitous ARPs settle, then resolve the gateways
    // so that the first requests are not queued behind ARP.
    nap(Duration::from_millis(500))?;
    let _ = c
        .lab()
        .client()
        .exec_unchecked(["ping", "-c", "1", "-W", "1", &SERVER_IP.to_string()]);
    check_interrupted()?;

    let opts = ProbeOptions {
        interval: Duration::from_millis(1),
        duration: probe_duration(fault, timing),
        reply_wait: Duration::from_millis(500),
    };
    let (log, parse) = c.backup_log();
    let watch = TakeoverWatch::start(log, parse);
    let capture = Capture::start(c.lab())?;
    let probe = Probe::start(c.lab().client().name(), SERVER_IP, opts)?;
    let t0 = Instant::now();
    let mut t_fault = Instant::now();
    let injected = (|| {
        nap(FAULT_AT)?;
        t_fault = Instant::now();
        c.inject(fault)
    })();
    let fault_at = t_fault - t0;
    if injected.is_err() {
        probe.stop();
    }
    let report = probe.wait();
    let frames = capture.stop();
    injected?;
    let report = report?;
    let vmac_overlaps = vmac_overlaps(&frames?, TENURE_GAP, CROSSING).len();
    let takeover = watch.finish().map(|t| t.saturating_duration_since(t_fault));
    check_interrupted()?;

    let lab = c.lab();
    let (arp_lan, arp_wan) = std::thread::scope(|s| {
        let lan = s.spawn(|| arp_check(lab.client(), LAN_VIP));
        let wan = s.spawn(|| arp_check(lab.server(), WAN_VIP));
        (
            lan.join().expect("arping thread"),
            wan.join().expect("arping thread"),
        )
    });
    let (arp_lan, arp_wan) = (arp_lan?, arp_wan?);
    let vips_left = vips_on(lab.router(Router::Fw1))?;
    c.restore(fault)?;
    Ok(RunResult {
        report,
        fault_at,
        takeover,
        arp_lan,
        arp_wan,
        vips_left,
        vmac_overlaps,
    })
}

/// Whether one run of `fault` misses carp's target at `timing`.
fn misses(fault: Fault, r: &RunResult, timing: Timing) -> bool {
    let Some(t) = timing.targets() else {
        return false;
    };
    let gap = r.report.max_gap;
    r.two_answerers()
        || match fault {
            Fault::Kill9 | Fault::Sigstop => r.report.lost > t.controller_lost,
            Fault::LinkDown => gap > t.link_down,
            Fault::NodeDeath => gap > t.node_death,
            Fault::Sigterm => gap > t.orderly,
        }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The runs of one fault on one implementation.
struct Row {
    fault: Fault,
    implementation: &'static str,
    runs: Vec<RunResult>,
}

impl Row {
    fn gaps(&self) -> Vec<f64> {
        self.runs.iter().map(|r| ms(r.report.max_gap)).collect()
    }
    fn median_gap(&self) -> f64 {
        median_f64(self.gaps())
    }
    fn min_gap(&self) -> f64 {
        self.gaps().into_iter().fold(f64::INFINITY, f64::min)
    }
    fn max_gap(&self) -> f64 {
        self.gaps().into_iter().fold(f64::NEG_INFINITY, f64::max)
    }
    /// Median takeover of the runs where fw2 took over (NaN if none did).
    fn median_takeover(&self) -> f64 {
        median_f64(
            self.runs
                .iter()
                .filter_map(|r| r.takeover)
                .map(ms)
                .collect(),
        )
    }
    fn median_lost(&self) -> f64 {
        median_f64(self.runs.iter().map(|r| r.report.lost as f64).collect())
    }
    fn duplicates(&self) -> u64 {
        self.runs.iter().map(|r| r.report.duplicates).sum()
    }
    fn zombies(&self) -> usize {
        self.runs.iter().filter(|r| r.zombie()).count()
    }
    fn two_answerers(&self) -> usize {
        self.runs.iter().filter(|r| r.two_answerers()).count()
    }
    fn max_lost(&self) -> u64 {
        self.runs.iter().map(|r| r.report.lost).max().unwrap_or(0)
    }
    fn vips_left(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.vips_left.contains(&true))
            .count()
    }
}

fn measure(
    c: &mut dyn Cluster,
    faults: &[Fault],
    runs: u32,
    timing: Timing,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let took = wait_roles(c, ROLES_TIMEOUT)?;
    println!(
        "{}: fw1 MASTER of both, fw2 BACKUP of both ({:.1} s after fw2's start)",
        c.name(),
        took.as_secs_f64()
    );
    for &fault in faults {
        let mut row = Row {
            fault,
            implementation: c.name(),
            runs: Vec::new(),
        };
        for i in 1..=runs {
            let r = one_run(c, fault, timing)
                .with_context(|| format!("{} {} run {i}", c.name(), fault_name(fault)))?;
            println!(
                "  {:<10} {:<10} run {i}/{runs}: gap {:7.1} ms (+{:.3} s .. +{:.3} s, fault at +{:.3} s), \
                 takeover {}, lost {}/{}, dups {}; ARP {LAN_VIP}: {}; ARP {WAN_VIP}: {}; VIPs on fw1: lan {} wan {}; zombie {}; \
                 vMAC overlaps {}",
                c.name(),
                fault_name(fault),
                ms(r.report.max_gap),
                r.report.gap_start.as_secs_f64(),
                r.report.gap_end.as_secs_f64(),
                r.fault_at.as_secs_f64(),
                r.takeover
                    .map_or("none".to_owned(), |t| format!("{:.1} ms", ms(t))),
                r.report.lost,
                r.report.sent,
                r.report.duplicates,
                r.arp_lan,
                r.arp_wan,
                yes_no(r.vips_left[0]),
                yes_no(r.vips_left[1]),
                yes_no(r.zombie()),
                r.vmac_overlaps,
            );
            if c.name() == "carp" && misses(fault, &r, timing) {
                // What the controllers said, while the lab still exists
                // (without the netlink crate's warnings about newer kernels).
                let logs: Vec<String> = strip_ansi(&c.logs())
                    .lines()
                    .filter(|l| !l.contains("netlink_packet_route"))
                    .map(str::to_owned)
                    .collect();
                println!(
                    "    missed its target; the logs' ends:\n{}",
                    logs.join("\n")
                );
            }
            row.runs.push(r);
        }
        rows.push(row);
    }
    // Leave it healthy (and prove the last restore worked).
    wait_roles(c, ROLES_TIMEOUT)?;
    println!("{}: done in {:.0} s", c.name(), t.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo xtask bench failover`: `fast` switches to [`Timing::Fast`] at
/// [`FAST_ADVBASE_MS`] (and adds the steady runs of `steady_secs`).
pub fn run(
    runs: u32,
    fault: Option<Fault>,
    advbase: u8,
    fast: bool,
    steady_secs: u64,
) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if advbase == 0 {
        bail!("--advbase must be at least 1");
    }
    if fast && advbase != 1 {
        bail!("--fast sets advbase_ms {FAST_ADVBASE_MS}; it does not go with --advbase");
    }
    let timing = if fast {
        Timing::Fast(FAST_ADVBASE_MS)
    } else {
        Timing::Seconds(advbase)
    };
    let steady_secs = if timing.is_fast() { steady_secs } else { 0 };
    install_signal_handlers()?;
    keepalived::become_subreaper()?;
    let removed = cleanup_stale(PREFIX_ROOT)?;
    if !removed.is_empty() {
        println!(
            "removed stale namespaces from an earlier run: {}",
            removed.join(" ")
        );
    }
    let kversion = keepalived::version()?;
    // carp_tests::node::carp_bin (used by Pair) runs what this builds.
    let bin = crate::build_release_carp()?;
    let faults: Vec<Fault> = match fault {
        Some(f) => vec![f],
        None => vec![
            Fault::Kill9,
            Fault::Sigstop,
            Fault::LinkDown,
            Fault::NodeDeath,
            Fault::Sigterm,
        ],
    };
    let (p1, p2) = (
        keepalived::priority_for_advskew(ADVSKEW_FW1),
        keepalived::priority_for_advskew(ADVSKEW_FW2),
    );
    println!(
        "failover benchmark: {runs} run(s) per fault and implementation; faults: {}\n\
         carp ({}, release): {}, fw1 advskew {ADVSKEW_FW1}, fw2 advskew {ADVSKEW_FW2} \
         (fw2's master-down interval {:.1} ms), preempt, [sync] over sync0, data path pinned on \
         each router's bpffs\n\
         keepalived ({kversion}): VRRPv3, advert_int {}, fw1 priority {p1}, fw2 priority {p2}, \
         preempt, one sync group (LAN VRID {LAN_VHID}, WAN VRID {WAN_VHID})\n\
         probe: client -> {SERVER_IP} every 1 ms; fault on fw1 at +{:.1} s",
        faults
            .iter()
            .map(|f| fault_name(*f))
            .collect::<Vec<_>>()
            .join(", "),
        bin.strip_prefix(crate::workspace_root())
            .unwrap_or(&bin)
            .display(),
        timing.carp_label(),
        ms(timing.master_down(ADVSKEW_FW2)),
        keepalived::advert_int_text(timing.base()),
        FAULT_AT.as_secs_f64(),
    );
    if steady_secs > 0 {
        println!(
            "steady runs: {steady_secs} s each; carp idle and under load ({STEADY_ENTRIES} conntrack \
             entries on fw1, `carp sync resync` on fw2 every {:.0} s, GET /metrics on fw1 every {:.0} ms), \
             keepalived idle",
            RESYNC_EVERY.as_secs_f64(),
            ms(SCRAPE_EVERY)
        );
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut steady = Vec::new();
    {
        let mut carp = CarpCluster::new(timing)?;
        measure(&mut carp, &faults, runs, timing, &mut rows)?;
        if steady_secs > 0 {
            steady.push(steady_run(&mut carp, timing, "idle", steady_secs, None)?);
            let _limits = CtLimits::raise(u64::from(STEADY_ENTRIES) + 50_000, 0)?;
            fill_table(&mut carp)?;
            let load = Load::start(&carp.pair)?;
            let (installs0, load_start) = (load.installs0, load.started);
            let mut r = steady_run(&mut carp, timing, "load", steady_secs, Some(load))?;
            if let Some(l) = r.load.as_mut() {
                l.installs = installs(&carp.pair, Router::Fw2).saturating_sub(installs0);
                l.secs = load_start.elapsed().as_secs_f64();
                println!(
                    "  carp       load: {} resyncs ({} failed), fw2 installed {} states from fw1's bulks; \
                     {} scrapes of fw1's /metrics ({} failed)",
                    l.counts[0], l.counts[1], l.installs, l.counts[2], l.counts[3]
                );
            }
            steady.push(r);
        }
    }
    check_interrupted()?;
    {
        let mut ka = KeepalivedCluster::new(timing)?;
        measure(&mut ka, &faults, runs, timing, &mut rows)?;
        if steady_secs > 0 {
            steady.push(steady_run(&mut ka, timing, "idle", steady_secs, None)?);
        }
    }
    println!("\nmeasured in {:.0} s\n", started.elapsed().as_secs_f64());
    let mut missed = print_summary(&rows, timing);
    if !steady.is_empty() {
        missed.extend(print_steady(&steady, timing));
    }
    if missed.is_empty() {
        Ok(())
    } else {
        bail!("{} target(s) missed: {}", missed.len(), missed.join("; "))
    }
}

// ------------------------------------------------------------ steady ---

/// The load of the loaded steady run on a carp pair: `carp sync resync` on
/// fw2 every [`RESYNC_EVERY`] (so fw1's sync thread streams its whole table
/// and fw2's installs it, over and over) and `GET /metrics` of fw1 every
/// [`SCRAPE_EVERY`], each from its own thread. Stopped on drop.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// [resyncs ok, resyncs failed, scrapes ok, scrapes failed].
    counts: Arc<[AtomicU64; 4]>,
    /// fw2's installs when the load started.
    installs0: u64,
    started: Instant,
}

impl Load {
    fn start(pair: &Pair) -> anyhow::Result<Load> {
        let mut l = Load {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counts: Arc::new(Default::default()),
            installs0: installs(pair, Router::Fw2),
            started: Instant::now(),
        };
        let socket = pair.lab.control_socket(Router::Fw2);
        let (stop, counts) = (l.stop.clone(), l.counts.clone());
        l.threads.push(std::thread::spawn(move || {
            every(RESYNC_EVERY, &stop, || {
                let r = carp_user::api::request(
                    &socket,
                    &carp_user::api::Request::SyncResync,
                    Duration::from_secs(3),
                );
                counts[usize::from(r.is_err())].fetch_add(1, Ordering::Relaxed);
            })
        }));
        let ns = pair.router_ns(Router::Fw1).name().to_owned();
        let listen = pair.params[0]
            .metrics_listen
            .clone()
            .context("fw1 has no metrics_listen")?;
        let (stop, counts) = (l.stop.clone(), l.counts.clone());
        l.threads.push(std::thread::spawn(move || {
            enter_netns(&ns);
            every(SCRAPE_EVERY, &stop, || {
                let bad = scrape(&listen).is_err();
                counts[2 + usize::from(bad)].fetch_add(1, Ordering::Relaxed);
            })
        }));
        Ok(l)
    }

    /// Stops the threads; the counts.
    fn finish(mut self) -> [u64; 4] {
        self.halt();
        [0, 1, 2, 3].map(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Calls `f` every `period` (on a fixed grid; a late call does not cause a
/// burst) until `stop`.
fn every(period: Duration, stop: &AtomicBool, mut f: impl FnMut()) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        f();
        next += period;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            sleep((next - Instant::now()).min(Duration::from_millis(20)));
        }
    }
}

/// Puts [`STEADY_ENTRIES`] conntrack entries on fw1 (bench sync's inserter)
/// and waits until fw2's kernel holds them too (live replication).
fn fill_table(c: &mut CarpCluster) -> anyhow::Result<()> {
    let fw1 = c.pair.lab.router(Router::Fw1).name().to_owned();
    let fw2 = c.pair.lab.router(Router::Fw2).name().to_owned();
    let before = [c.transitions(Router::Fw1)?, c.transitions(Router::Fw2)?];
    let base = ct_count(&fw2)?;
    let ins = insert(&fw1, STEADY_ENTRIES, STEADY_DPORT, None)?;
    let t0 = Instant::now();
    let want = base + ins.created;
    let mut have = ct_count(&fw2)?;
    while have < want && t0.elapsed() < Duration::from_secs(60) {
        nap(Duration::from_millis(200))?;
        have = ct_count(&fw2)?;
    }
    let after = [c.transitions(Router::Fw1)?, c.transitions(Router::Fw2)?];
    println!(
        "carp: {} entries inserted on fw1 in {:.1} s ({} failed); fw2 holds {} of {want} {:.1} s later; \
         transitions meanwhile fw1 {} fw2 {}",
        ins.created,
        ins.took.as_secs_f64(),
        ins.failed,
        have,
        t0.elapsed().as_secs_f64(),
        after[0] - before[0],
        after[1] - before[1],
    );
    if ins.created == 0 {
        bail!("no conntrack entry could be inserted on fw1");
    }
    Ok(())
}

/// One steady run: no fault, `secs` seconds.
struct Steady {
    implementation: &'static str,
    phase: &'static str,
    secs: f64,
    /// Per node (fw1, fw2), during the window.
    transitions: [u64; 2],
    /// fw1's LAN advert interval error.
    stats: Option<Stats>,
    /// CPU of each node's daemon over the window, % of one CPU.
    cpu_pct: [f64; 2],
    /// vMAC frames from both routers at once on a switch (carp only).
    vmac_overlaps: usize,
    /// fw1's threads: (name, ms on a CPU, ms waiting for a CPU, timeslices).
    fw1_threads: Vec<(String, f64, f64, u64)>,
    /// `load` only.
    load: Option<LoadReport>,
}

/// What the load did during a steady run.
struct LoadReport {
    /// [resyncs ok, resyncs failed, scrapes ok, scrapes failed].
    counts: [u64; 4],
    /// States fw2 installed from fw1's bulks (its `carp_sync_states_total`
    /// with op="install", from the load's start to the window's end).
    installs: u64,
    /// From the load's start to the window's end.
    secs: f64,
}

fn cpu_of(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|&p| cpu_ticks(p as u32)).sum()
}

/// Per thread of `pids` (by TID): its name and `/proc/PID/task/TID/schedstat`
/// (ns on a CPU, ns waiting on a run queue, timeslices; the kernel's
/// scheduler/sched-stats documentation).
fn thread_sched(pids: &[i32]) -> BTreeMap<i32, (String, [u64; 3])> {
    let mut out = BTreeMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            let base = format!("/proc/{pid}/task/{tid}");
            let comm = std::fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
            let Ok(st) = std::fs::read_to_string(format!("{base}/schedstat")) else {
                continue;
            };
            let v: Vec<u64> = st
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [run, wait, slices] = v[..] {
                out.insert(tid, (comm.trim().to_owned(), [run, wait, slices]));
            }
        }
    }
    out
}

/// What each thread name of a node did between two [`thread_sched`]
/// readings: (name, ms on a CPU, ms waiting for one, timeslices), the busiest
/// first.
fn thread_deltas(
    before: &BTreeMap<i32, (String, [u64; 3])>,
    after: &BTreeMap<i32, (String, [u64; 3])>,
) -> Vec<(String, f64, f64, u64)> {
    let mut by_name: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for (tid, (name, a)) in after {
        let b = before.get(tid).map_or([0; 3], |(_, b)| *b);
        let e = by_name.entry(name.clone()).or_default();
        for i in 0..3 {
            e[i] += a[i].saturating_sub(b[i]);
        }
    }
    let mut v: Vec<(String, f64, f64, u64)> = by_name
        .into_iter()
        .map(|(n, d)| (n, d[0] as f64 / 1e6, d[1] as f64 / 1e6, d[2]))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// `carp_sync_states_total{op="install",...}` summed, from `r`'s metrics.
fn installs(pair: &Pair, r: Router) -> u64 {
    pair.metrics(r)
        .lines()
        .filter(|l| l.starts_with("carp_sync_states_total{op=\"install\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// fw1's LAN adverts, CARP or VRRP (IP protocol 112, the VHID / VRID in the
/// second byte of both headers; bow-outs left out), as its LAN switch port
/// received them.
fn fw1_lan_adverts(frames: &[Frame]) -> Vec<Instant> {
    frames
        .iter()
        .filter(|f| f.switch == Switch::Lan && f.router == Router::Fw1 && !f.is_bow_out())
        .filter(|f| {
            let b = &f.bytes;
            let ihl = usize::from(b.get(14).copied().unwrap_or(0) & 0x0f) * 4;
            b.get(12..14) == Some(&[0x08, 0x00])
                && b.get(23) == Some(&112)
                && b.get(14 + ihl + 1) == Some(&LAN_VHID)
        })
        .map(|f| f.at)
        .collect()
}

fn steady_run(
    c: &mut dyn Cluster,
    timing: Timing,
    phase: &'static str,
    secs: u64,
    load: Option<Load>,
) -> anyhow::Result<Steady> {
    wait_roles(c, ROLES_TIMEOUT)?;
    // Let the load reach its pace (the first bulk is under way).
    nap(Duration::from_secs(1))?;
    let pids = [c.pids(Router::Fw1)?, c.pids(Router::Fw2)?];
    let tr0 = [c.transitions(Router::Fw1)?, c.transitions(Router::Fw2)?];
    let cpu0 = [cpu_of(&pids[0]), cpu_of(&pids[1])];
    let sched0 = thread_sched(&pids[0]);
    let capture = Capture::start(c.lab())?;
    let t0 = Instant::now();
    let ended = nap(Duration::from_secs(secs));
    let cpu1 = [cpu_of(&pids[0]), cpu_of(&pids[1])];
    let sched1 = thread_sched(&pids[0]);
    let elapsed = t0.elapsed().as_secs_f64();
    let frames = capture.stop();
    let counts = load.map(Load::finish);
    ended?;
    let frames = frames?;
    let tr1 = [c.transitions(Router::Fw1)?, c.transitions(Router::Fw2)?];
    let mut times = fw1_lan_adverts(&frames);
    let stats = interval_errors(&mut times, timing.interval(ADVSKEW_FW1));
    let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / clk_tck() / elapsed * 100.0;
    let r = Steady {
        implementation: c.name(),
        phase,
        secs: elapsed,
        transitions: [tr1[0] - tr0[0], tr1[1] - tr0[1]],
        stats,
        cpu_pct: [pct(cpu0[0], cpu1[0]), pct(cpu0[1], cpu1[1])],
        vmac_overlaps: vmac_overlaps(&frames, TENURE_GAP, CROSSING).len(),
        fw1_threads: thread_deltas(&sched0, &sched1),
        load: counts.map(|counts| LoadReport {
            counts,
            installs: 0,
            secs: 0.0,
        }),
    };
    println!(
        "  {:<10} steady {:<4} {:.0} s: transitions fw1 {} fw2 {}; fw1 LAN adverts {}; CPU fw1 {:.1} % fw2 {:.1} %",
        r.implementation,
        r.phase,
        r.secs,
        r.transitions[0],
        r.transitions[1],
        r.stats.as_ref().map_or(0, |s| s.adverts),
        r.cpu_pct[0],
        r.cpu_pct[1],
    );
    Ok(r)
}

/// The table, the ratios and the verdicts; the targets missed.
fn print_summary(rows: &[Row], timing: Timing) -> Vec<String> {
    println!(
        "{:<10} {:<11} {:>4} {:>11} {:>9} {:>9} {:>12} {:>5} {:>16} {:>9} {:>13} {:>10}",
        "fault",
        "impl",
        "runs",
        "gap median",
        "min",
        "max",
        "lost median",
        "dups",
        "takeover median",
        "zombie",
        "two answerers",
        "VIP on fw1"
    );
    for r in rows {
        println!(
            "{:<10} {:<11} {:>4} {:>8.1} ms {:>6.1} ms {:>6.1} ms {:>12.0} {:>5} {:>13.1} ms {:>9} {:>13} {:>10}",
            fault_name(r.fault),
            r.implementation,
            r.runs.len(),
            r.median_gap(),
            r.min_gap(),
            r.max_gap(),
            r.median_lost(),
            r.duplicates(),
            r.median_takeover(),
            format!(
                "{} {}/{}",
                yes_no(r.zombies() > 0),
                r.zombies(),
                r.runs.len()
            ),
            format!("{}/{}", r.two_answerers(), r.runs.len()),
            format!("{}/{}", r.vips_left(), r.runs.len()),
        );
    }
    println!();
    let find = |f: Fault, i: &str| rows.iter().find(|r| r.fault == f && r.implementation == i);
    let mut faults: Vec<Fault> = Vec::new();
    for r in rows {
        if !faults.contains(&r.fault) {
            faults.push(r.fault);
        }
    }
    for &f in &faults {
        if let (Some(c), Some(k)) = (find(f, "carp"), find(f, "keepalived")) {
            println!(
                "ratio carp/keepalived, {:<10} median gap {:.3} ({:.1} ms / {:.1} ms); median takeover {:.3} ({:.1} ms / {:.1} ms)",
                format!("{}:", fault_name(f)),
                c.median_gap() / k.median_gap(),
                c.median_gap(),
                k.median_gap(),
                c.median_takeover() / k.median_takeover(),
                c.median_takeover(),
                k.median_takeover()
            );
            if k.zombies() > 0 && k.median_gap() < c.median_gap() {
                println!(
                    "  note: keepalived's {} gap is short because the failed node keeps forwarding with the VIPs \
                     still configured (a zombie in {}/{} runs), not because fw2 took over sooner",
                    fault_name(f),
                    k.zombies(),
                    k.runs.len()
                );
            }
        }
    }
    println!();
    let mut missed = Vec::new();
    let Some(t) = timing.targets() else {
        println!(
            "targets are defined for advbase 1 and advbase_ms {FAST_ADVBASE_MS}; not judged at {}",
            timing.carp_label()
        );
        return missed;
    };
    let at = timing.carp_label();
    let mut verdict = |ok: bool, what: String| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            missed.push(what);
        }
    };
    for &f in &faults {
        let Some(c) = find(f, "carp") else { continue };
        let name = fault_name(f);
        match f {
            Fault::Kill9 | Fault::Sigstop => verdict(
                c.max_lost() <= t.controller_lost,
                format!(
                    "carp {name} ({at}): at most {} probes lost at 1 ms in every run (max {})",
                    t.controller_lost,
                    c.max_lost()
                ),
            ),
            Fault::LinkDown => verdict(
                c.max_gap() <= ms(t.link_down),
                format!(
                    "carp {name} ({at}): handover gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(t.link_down),
                    c.max_gap()
                ),
            ),
            Fault::NodeDeath => verdict(
                c.max_gap() <= ms(t.node_death),
                format!(
                    "carp {name} ({at}): gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(t.node_death),
                    c.max_gap()
                ),
            ),
            Fault::Sigterm => verdict(
                c.max_gap() <= ms(t.orderly),
                format!(
                    "carp {name} ({at}): orderly stop gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(t.orderly),
                    c.max_gap()
                ),
            ),
        }
        verdict(
            c.two_answerers() == 0,
            format!(
                "carp {name}: never two answerers (vMAC frames per switch port over the window, ARP after it; {}/{} runs with two)",
                c.two_answerers(),
                c.runs.len()
            ),
        );
        if let Some(k) = find(f, "keepalived") {
            if k.zombies() > 0 || k.vips_left() > 0 {
                println!(
                    "info keepalived {name}: zombie answerer in {}/{} runs, VIPs left on the failed node in {}/{} runs",
                    k.zombies(),
                    k.runs.len(),
                    k.vips_left(),
                    k.runs.len()
                );
            }
        }
    }
    missed
}

/// The steady runs' table, carp's CPU beside keepalived's, and the verdicts
/// (the loaded carp run; fast mode at [`FAST_ADVBASE_MS`] only); the targets
/// missed.
fn print_steady(rows: &[Steady], timing: Timing) -> Vec<String> {
    println!(
        "\nsteady runs ({}; expected interval of fw1 {:.3} ms; error = |interval - expected| of fw1's LAN adverts)",
        timing.carp_label(),
        ms(timing.interval(ADVSKEW_FW1))
    );
    println!(
        "{:<11} {:<5} {:>6} {:>17} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>13}",
        "impl",
        "phase",
        "secs",
        "transitions 1/2",
        "adverts",
        "p50",
        "p99",
        "max",
        "CPU fw1",
        "CPU fw2",
        "vMAC overlaps"
    );
    let fmt = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.3} ms", ms(d)));
    for r in rows {
        println!(
            "{:<11} {:<5} {:>6.1} {:>17} {:>8} {:>9} {:>9} {:>9} {:>8.2} % {:>8.2} % {:>13}",
            r.implementation,
            r.phase,
            r.secs,
            format!("{}/{}", r.transitions[0], r.transitions[1]),
            r.stats.as_ref().map_or(0, |s| s.adverts),
            fmt(r.stats.as_ref().map(|s| s.p50)),
            fmt(r.stats.as_ref().map(|s| s.p99)),
            fmt(r.stats.as_ref().map(|s| s.max)),
            r.cpu_pct[0],
            r.cpu_pct[1],
            if r.implementation == "carp" {
                r.vmac_overlaps.to_string()
            } else {
                "-".to_owned()
            },
        );
    }
    for r in rows {
        if let Some(l) = &r.load {
            println!(
                "load of {} {}: {} resyncs requested on fw2 ({} failed), {} states installed on fw2 in {:.0} s ({:.0}/s); \
                 {} scrapes of fw1's /metrics ({} failed)",
                r.implementation,
                r.phase,
                l.counts[0],
                l.counts[1],
                l.installs,
                l.secs,
                l.installs as f64 / l.secs,
                l.counts[2],
                l.counts[3]
            );
        }
    }
    println!(
        "fw1's threads over each window: CPU time / time waiting for a CPU (run queue), \
         per thread name, from /proc/PID/task/TID/schedstat"
    );
    for r in rows {
        let threads: Vec<String> = r
            .fw1_threads
            .iter()
            .filter(|t| t.1 >= 1.0 || t.2 >= 1.0)
            .map(|(n, run, wait, slices)| {
                format!(
                    "{n} {run:.0} / {wait:.0} ms ({:.2} ms per timeslice)",
                    wait / (*slices).max(1) as f64
                )
            })
            .collect();
        println!("  {} {}: {}", r.implementation, r.phase, threads.join(", "));
    }
    let find = |i: &str, p: &str| rows.iter().find(|r| r.implementation == i && r.phase == p);
    if let (Some(c), Some(k)) = (find("carp", "idle"), find("keepalived", "idle")) {
        println!(
            "CPU per node, idle at {} / advert_int {}: carp fw1 {:.2} % fw2 {:.2} %, keepalived fw1 {:.2} % fw2 {:.2} % \
             (ratio carp/keepalived fw1 {:.2}, fw2 {:.2})",
            timing.carp_label(),
            keepalived::advert_int_text(timing.base()),
            c.cpu_pct[0],
            c.cpu_pct[1],
            k.cpu_pct[0],
            k.cpu_pct[1],
            c.cpu_pct[0] / k.cpu_pct[0],
            c.cpu_pct[1] / k.cpu_pct[1],
        );
    }
    println!();
    let mut missed = Vec::new();
    if timing != Timing::Fast(FAST_ADVBASE_MS) {
        return missed;
    }
    let mut verdict = |ok: bool, what: String| {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            missed.push(what);
        }
    };
    for r in rows.iter().filter(|r| r.implementation == "carp") {
        let judged = r.phase == "load";
        let total = r.transitions[0] + r.transitions[1] + r.vmac_overlaps as u64;
        let what = format!(
            "carp steady {} ({:.0} s): no false takeover (transitions fw1 {} fw2 {}, vMAC overlaps {})",
            r.phase, r.secs, r.transitions[0], r.transitions[1], r.vmac_overlaps
        );
        if judged {
            verdict(total == 0, what);
        } else if total != 0 {
            println!("INFO {what}");
        }
        let p99 = r.stats.as_ref().map(|s| s.p99);
        let what = format!(
            "carp steady {}: fw1's advert interval error p99 <= {:.0} ms (p99 {}, max {})",
            r.phase,
            ms(TARGET_STEADY_P99),
            fmt(p99),
            fmt(r.stats.as_ref().map(|s| s.max))
        );
        if judged {
            verdict(p99.is_some_and(|p| p <= TARGET_STEADY_P99), what);
        } else {
            println!("INFO {what}");
        }
    }
    for r in rows.iter().filter(|r| r.implementation != "carp") {
        println!(
            "info {} steady {}: transitions fw1 {} fw2 {}, advert interval error p99 {}",
            r.implementation,
            r.phase,
            r.transitions[0],
            r.transitions[1],
            fmt(r.stats.as_ref().map(|s| s.p99))
        );
    }
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transitions_from_both_logs() {
        let carp = "\u{1b}[2m2026-11-24T09:00:00.1Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mcarp_user::node\u{1b}[0m\u{1b}[2m:\u{1b}[0m transition \u{1b}[3mvhid\u{1b}[0m\u{1b}[2m=\u{1b}[0m2 \u{1b}[3minterface\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"wan0\" \u{1b}[3mfrom\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"backup\" \u{1b}[3mto\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"master\" \u{1b}[3mwhy\u{1b}[0m\u{1b}[2m=\u{1b}[0mMasterDown";
        assert_eq!(carp_transition(carp), Some((1, true)));
        let plain = r#"2026-11-24T09:00:00Z  INFO carp_user::node: transition vhid=1 interface="lan0" from="master" to="backup" why=Preempted"#;
        assert_eq!(carp_transition(plain), Some((0, false)));
        assert_eq!(
            carp_transition("INFO carp_user::node: bowed out vhid=1"),
            None
        );
        assert_eq!(
            keepalived_transition("Tue Nov 24 08:58:10 2026: (WAN) Entering MASTER STATE"),
            Some((1, true))
        );
        assert_eq!(
            keepalived_transition("Tue Nov 24 08:58:10 2026: (LAN) Entering BACKUP STATE (init)"),
            Some((0, false))
        );
        assert_eq!(
            keepalived_transition(
                "(LAN) received lower priority (156) advert from 10.77.0.12 - discarding"
            ),
            None
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_f64(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f64(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median_f64(Vec::new()).is_nan());
    }

    #[test]
    fn zombie_is_two_macs_or_more_replies_than_requests() {
        let one = ArpCheck {
            sent: 4,
            replies: 4,
            macs: vec!["00:00:5e:00:01:01".into()],
        };
        assert!(!one.zombie());
        let two_macs = ArpCheck {
            macs: vec!["a".into(), "b".into()],
            ..one.clone()
        };
        assert!(two_macs.zombie());
        let twice = ArpCheck {
            replies: 8,
            ..one.clone()
        };
        assert!(twice.zombie());
        let none = ArpCheck {
            replies: 0,
            macs: Vec::new(),
            ..one
        };
        assert!(!none.zombie());
    }

    #[test]
    fn probes_outlast_the_master_down_interval() {
        for advbase in [1u8, 2, 5] {
            let down = Duration::from_secs(3 * u64::from(advbase)) + Duration::from_millis(391);
            let t = Timing::Seconds(advbase);
            assert_eq!(
                t.master_down(ADVSKEW_FW2),
                Duration::from_micros(3_390_625 * u64::from(advbase))
            );
            assert!(probe_duration(Fault::Kill9, t) > FAULT_AT + down + Duration::from_secs(1));
        }
        let fast = Timing::Fast(FAST_ADVBASE_MS);
        let down = fast.master_down(ADVSKEW_FW2);
        assert_eq!(down, Duration::from_nanos(33_906_250));
        for f in [Fault::Kill9, Fault::NodeDeath] {
            assert!(probe_duration(f, fast) > FAULT_AT + down + Duration::from_secs(1));
        }
        assert!(probe_duration(Fault::Sigterm, fast) >= Duration::from_secs(1));
    }

    #[test]
    fn fast_mode_targets_and_intervals() {
        let fast = Timing::Fast(FAST_ADVBASE_MS);
        assert_eq!(fast.interval(0), Duration::from_millis(10));
        assert_eq!(fast.carp_label(), "advbase_ms 10");
        let t = fast.targets().expect("fast targets");
        assert_eq!(t.node_death, Duration::from_millis(35));
        assert!(t.node_death > fast.master_down(ADVSKEW_FW2));
        assert_eq!(
            Timing::Seconds(1).targets().map(|t| t.node_death),
            Some(Duration::from_millis(3500))
        );
        assert!(Timing::Seconds(2).targets().is_none());
        assert!(Timing::Fast(20).targets().is_none());
    }
}
