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
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use carp_tests::lab::{
    Lab, LabOptions, NodeParams, Router, LAN_VHID, LAN_VIP, SERVER_IP, WAN_VHID, WAN_VIP,
};
use carp_tests::netns::{cleanup_stale, NetNs, PREFIX_ROOT};
use carp_tests::pair::Pair;
use carp_tests::probe::{Probe, ProbeOptions, ProbeReport};
use carp_tests::watch::{vmac_overlaps, Capture};

use super::keepalived::{self, Keepalived, LAN_INSTANCE, WAN_INSTANCE};
use crate::interrupt::{check_interrupted, install_signal_handlers};
use crate::Fault;

/// fw1 is the preferred master, fw2 the backup, as in the integration tests.
const ADVSKEW_FW1: u8 = 0;
const ADVSKEW_FW2: u8 = 100;
/// When the fault is injected, from the start of the probe.
const FAULT_AT: Duration = Duration::from_millis(300);
/// For the election and for fw1's return after a restore.
const ROLES_TIMEOUT: Duration = Duration::from_secs(20);
/// The targets (advbase 1, backup advskew 100): a death of the whole node
/// costs a master-down interval (3.39 s); a controller killed or stopped
/// loses at most 5 probes at 1 ms (its pinned data path answers until just
/// before the backup takes over); a link loss is handed over through the
/// sync link within 10 ms; a bow-out within 20 ms.
const TARGET_NODE_DEATH: Duration = Duration::from_millis(3500);
const TARGET_CONTROLLER_LOST: u64 = 5;
const TARGET_LINK_DOWN: Duration = Duration::from_millis(10);
const TARGET_ORDERLY: Duration = Duration::from_millis(20);
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
/// advbase 1), an orderly stop should take next to nothing; either way the
/// probe sees several seconds of the new master.
fn probe_duration(f: Fault, advbase: u8) -> Duration {
    if is_hard(f) {
        Duration::from_secs(5 + 3 * u64::from(advbase))
    } else {
        Duration::from_secs(3)
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
    fn new(advbase: u8) -> anyhow::Result<CarpCluster> {
        let params = |advskew| NodeParams {
            advbase,
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
}

/// All of fw1's links down (a node death) or up again.
fn set_links(lab: &Lab, up: bool) -> anyhow::Result<()> {
    for dev in NODE_LINKS {
        lab.set_link(Router::Fw1, dev, up)?;
    }
    Ok(())
}

// ---------------------------------------------------------- keepalived ---

/// Field order is drop order: keepalived processes, then the namespaces,
/// then the directory of configs and logs.
struct KeepalivedCluster {
    nodes: [Option<Keepalived>; 2],
    lab: Lab,
    dir: WorkDir,
    advbase: u8,
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
    fn new(advbase: u8) -> anyhow::Result<KeepalivedCluster> {
        let lab = Lab::build(LabOptions::default())?;
        let path = std::env::temp_dir().join(format!("{}keepalived", lab.prefix()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut c = KeepalivedCluster {
            nodes: [None, None],
            lab,
            dir: WorkDir(path),
            advbase,
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
        let conf = keepalived::config(
            r.name(),
            self.advbase,
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

fn one_run(c: &mut dyn Cluster, fault: Fault, advbase: u8) -> anyhow::Result<RunResult> {
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
        duration: probe_duration(fault, advbase),
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
    advbase: u8,
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
            let r = one_run(c, fault, advbase)
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
            row.runs.push(r);
        }
        rows.push(row);
    }
    // Leave it healthy (and prove the last restore worked).
    wait_roles(c, ROLES_TIMEOUT)?;
    println!("{}: done in {:.0} s", c.name(), t.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(runs: u32, fault: Option<Fault>, advbase: u8) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if advbase == 0 {
        bail!("--advbase must be at least 1");
    }
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
         carp ({}, release): advbase {advbase}, fw1 advskew {ADVSKEW_FW1}, fw2 advskew {ADVSKEW_FW2}, preempt, \
         [sync] over sync0, data path pinned on each router's bpffs\n\
         keepalived ({kversion}): VRRPv3, advert_int {advbase}, fw1 priority {p1}, fw2 priority {p2}, \
         preempt, one sync group (LAN VRID {LAN_VHID}, WAN VRID {WAN_VHID})\n\
         probe: client -> {SERVER_IP} every 1 ms; fault on fw1 at +{:.1} s",
        faults.iter().map(|f| fault_name(*f)).collect::<Vec<_>>().join(", "),
        bin.strip_prefix(crate::workspace_root())
            .unwrap_or(&bin)
            .display(),
        FAULT_AT.as_secs_f64(),
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    {
        let mut carp = CarpCluster::new(advbase)?;
        measure(&mut carp, &faults, runs, advbase, &mut rows)?;
    }
    check_interrupted()?;
    {
        let mut ka = KeepalivedCluster::new(advbase)?;
        measure(&mut ka, &faults, runs, advbase, &mut rows)?;
    }
    println!("\nmeasured in {:.0} s\n", started.elapsed().as_secs_f64());
    print_summary(&rows, advbase)
}

/// The table, the ratios and the verdicts; an error if a target is missed.
fn print_summary(rows: &[Row], advbase: u8) -> anyhow::Result<()> {
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
    if advbase != 1 {
        println!("targets are defined for advbase 1; not judged at advbase {advbase}");
        return Ok(());
    }
    let mut missed = Vec::new();
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
                c.max_lost() <= TARGET_CONTROLLER_LOST,
                format!(
                    "carp {name}: at most {TARGET_CONTROLLER_LOST} probes lost at 1 ms in every run (max {})",
                    c.max_lost()
                ),
            ),
            Fault::LinkDown => verdict(
                c.max_gap() <= ms(TARGET_LINK_DOWN),
                format!(
                    "carp {name}: handover gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(TARGET_LINK_DOWN),
                    c.max_gap()
                ),
            ),
            Fault::NodeDeath => verdict(
                c.max_gap() <= ms(TARGET_NODE_DEATH),
                format!(
                    "carp {name}: gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(TARGET_NODE_DEATH),
                    c.max_gap()
                ),
            ),
            Fault::Sigterm => verdict(
                c.max_gap() <= ms(TARGET_ORDERLY),
                format!(
                    "carp {name}: orderly stop gap <= {:.0} ms in every run (max {:.1} ms)",
                    ms(TARGET_ORDERLY),
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
    if missed.is_empty() {
        Ok(())
    } else {
        bail!("{} target(s) missed: {}", missed.len(), missed.join("; "))
    }
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
            assert!(
                probe_duration(Fault::Kill9, advbase) > FAULT_AT + down + Duration::from_secs(1)
            );
        }
    }
}
