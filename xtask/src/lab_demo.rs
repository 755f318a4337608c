//! `cargo xtask run`: the lab as a demonstration. Builds the topology
//! (carp_tests::lab), starts fw1 (advskew 0) and fw2 (advskew 100), shows the
//! election, kills the master's controller with SIGKILL while a 1 ms probe
//! runs from the client to the server through the VIPs, prints the measured
//! gap, and then (unless `--once`) restarts fw1 and stays up until Ctrl-C.
//! The routers sync over `sync0` and pin their data path on their own bpffs
//! (the lab's defaults), so the killed controller's program answers until
//! just before fw2 takes over: the outage is milliseconds.
//!
//! Cleanup is by drop guards in reverse order of creation (controllers, then
//! namespaces, then the temp dir) on every path out of `run`: success, error,
//! or Ctrl-C (the handler only sets a flag that the stages check).
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use carp_tests::lab::{Lab, LabOptions, NodeParams, Router, Switch, LAN_VHID, SERVER_IP, WAN_VHID};
use carp_tests::netns::{cleanup_stale, PREFIX_ROOT};
use carp_tests::node::NodeProc;
use carp_tests::probe::{Probe, ProbeOptions};

use crate::build_carp;
use crate::interrupt::{check_interrupted, install_signal_handlers, interrupted};

/// A directory for configs and logs, removed on drop unless `keep` is set
/// (on failure the logs are worth reading).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("carp-lab-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep: false })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("configs and logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `carp status` (the table) of one router.
fn print_status(lab: &Lab, carp: &Path, router: Router, config: &Path) {
    let out = lab
        .router(router)
        .command(carp)
        .arg("status")
        .arg("-c")
        .arg(config)
        .output();
    println!("--- carp status on {} ---", router.name());
    match out {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!("(no answer: {})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => println!("(cannot run carp status: {e})"),
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Waits until every VHID of `node` is in `state`; false on timeout, on
/// Ctrl-C, or if the controller exits.
fn wait_all(node: &mut NodeProc, vhids: &[u8], state: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if vhids
            .iter()
            .all(|&v| node.state(v).as_deref() == Some(state))
        {
            return true;
        }
        if interrupted() || node.is_exited() || Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// SIGTERM and a bounded wait: a MASTER bows out in at most 3 × advbase.
fn stop_gracefully(node: &mut Option<NodeProc>) {
    if let Some(n) = node.as_mut() {
        if n.sigterm().is_ok() && n.wait_exit(Duration::from_secs(5)).is_none() {
            eprintln!("{}: no exit 5 s after SIGTERM; killing it", n.namespace());
        }
    }
    *node = None; // Drop: SIGKILL if still running, reap.
}

pub fn run(once: bool) -> anyhow::Result<()> {
    install_signal_handlers()?;
    if !carp_tests::util::is_root() {
        bail!("cargo xtask run needs root (it creates network namespaces and attaches XDP)");
    }
    let removed = cleanup_stale(PREFIX_ROOT)?;
    if !removed.is_empty() {
        println!(
            "removed stale namespaces from an earlier run: {}",
            removed.join(" ")
        );
    }
    let carp = build_carp()?;

    // Declaration order = reverse drop order: nodes, then lab, then dir.
    let mut dir = WorkDir::new()?;
    let result = demo(&carp, &dir.path, once);
    if result.is_err() && !interrupted() {
        dir.keep = true;
    }
    result
}

fn demo(carp: &Path, dir: &Path, once: bool) -> anyhow::Result<()> {
    let lab = Lab::build(LabOptions::default())?;
    let p = lab.prefix();
    println!(
        "lab {p}*: client 10.77.0.100 -- [lan switch] -- fw1 (.11) / fw2 (.12) -- [wan switch] -- server 10.88.0.100\n\
         VIPs: 10.77.0.1 (VHID {LAN_VHID}, lan0), 10.88.0.1 (VHID {WAN_VHID}, wan0); fw1 advskew 0, fw2 advskew 100"
    );
    let vhids = [LAN_VHID, WAN_VHID];
    let params = |advskew| NodeParams {
        sync: true,
        ..NodeParams::with_advskew(advskew)
    };
    let cfg1 = lab.write_router_config(Router::Fw1, &params(0), dir)?;
    let cfg2 = lab.write_router_config(Router::Fw2, &params(100), dir)?;
    let log1 = dir.join("fw1.log");
    let log2 = dir.join("fw2.log");

    let mut fw1 = Some(NodeProc::try_spawn(
        lab.router(Router::Fw1).name(),
        carp,
        &cfg1,
        &log1,
    )?);
    let mut fw2 = Some(NodeProc::try_spawn(
        lab.router(Router::Fw2).name(),
        carp,
        &cfg2,
        &log2,
    )?);
    let result = (|| -> anyhow::Result<()> {
        let (n1, n2) = (
            fw1.as_mut().expect("started"),
            fw2.as_mut().expect("started"),
        );
        println!("\nwaiting for the election (fw1 should win both VHIDs) ...");
        let t = Instant::now();
        // INIT -> BACKUP -> MASTER after master-down (3 × advbase + skew/256).
        if !wait_all(n1, &vhids, "MASTER", Duration::from_secs(15)) {
            bail!(
                "fw1 did not become MASTER within 15 s; fw1 log:\n{}",
                tail(&n1.log(), 30)
            );
        }
        if !wait_all(n2, &vhids, "BACKUP", Duration::from_secs(5)) {
            check_interrupted()?;
            bail!("fw2 is not BACKUP; fw2 log:\n{}", tail(&n2.log(), 30));
        }
        println!("elected in {:.1} s", t.elapsed().as_secs_f64());
        // fw2's sync hello (twice a second) tells fw1 when fw2 would take over.
        sleep(Duration::from_secs(1));
        print_status(&lab, carp, Router::Fw1, &cfg1);
        print_status(&lab, carp, Router::Fw2, &cfg2);
        check_interrupted()?;

        // One ping first so ARP for the VIP is resolved before the clock starts.
        let warm =
            lab.client()
                .exec_unchecked(["ping", "-c", "1", "-W", "2", &SERVER_IP.to_string()])?;
        if !warm.status.success() {
            println!(
                "warning: client cannot reach the server through the VIPs before the failover"
            );
        }

        let opts = ProbeOptions {
            duration: Duration::from_secs(8),
            ..ProbeOptions::default()
        };
        println!(
            "\nprobing client -> server ({SERVER_IP}) every {:?} for {:?}; SIGKILL to fw1's controller after 1 s",
            opts.interval, opts.duration
        );
        let probe = Probe::start(lab.client().name(), SERVER_IP, opts)?;
        let t0 = Instant::now();
        sleep(Duration::from_secs(1));
        if interrupted() {
            probe.stop();
            let _ = probe.wait();
            bail!("interrupted; cleaning up");
        }
        n1.kill9()?;
        let killed_at = t0.elapsed();
        let took_over = wait_all(n2, &vhids, "MASTER", Duration::from_secs(10));
        if interrupted() {
            probe.stop();
        }
        let report = probe.wait()?;
        check_interrupted()?;
        println!("fw1 killed at +{:.3} s", killed_at.as_secs_f64());
        println!("{report}");
        println!(
            "=> outage {:.0} ms, {} probes lost of {}, {} duplicate replies",
            report.max_gap.as_secs_f64() * 1e3,
            report.lost,
            report.sent,
            report.duplicates
        );
        if !took_over {
            bail!(
                "fw2 did not take over within 10 s; fw2 log:\n{}",
                tail(&n2.log(), 30)
            );
        }
        print_status(&lab, carp, Router::Fw2, &cfg2);
        let vmac_ports = lab.fdb_ports_for(Switch::Lan, carp_tests::lab::vmac(LAN_VHID))?;
        println!("LAN switch: vMAC of VHID {LAN_VHID} learned on port(s) {vmac_ports:?}");
        if once {
            return Ok(());
        }
        check_interrupted()?;

        println!("\nrestarting fw1 (advskew 0, preempt: it takes both VHIDs back) ...");
        fw1 = None;
        let n1 = fw1.insert(NodeProc::try_spawn(
            lab.router(Router::Fw1).name(),
            carp,
            &cfg1,
            &log1,
        )?);
        if !wait_all(n1, &vhids, "MASTER", Duration::from_secs(15)) {
            println!(
                "fw1 did not preempt within 15 s; fw1 log:\n{}",
                tail(&n1.log(), 30)
            );
        }
        print_status(&lab, carp, Router::Fw1, &cfg1);
        print_status(&lab, carp, Router::Fw2, &cfg2);

        let ns = |r: Router| lab.router(r).name().to_owned();
        println!(
            "\nThe lab is up. In another shell:\n\
             \x20 ip netns exec {client} ping {SERVER_IP}\n\
             \x20 ip netns exec {fw1} {carp} status -c {cfg1}\n\
             \x20 ip netns exec {fw2} {carp} status -c {cfg2}\n\
             \x20 ip netns exec {fw1} curl -s http://127.0.0.1:9701/metrics | grep ^carp_\n\
             \x20 ip netns exec {lan} bridge fdb show br br0 | grep 00:00:5e\n\
             \x20 ip netns exec {fw2} tcpdump -ni lan0 ip proto 112\n\
             \x20 logs: {log1}, {log2}\n\
             Ctrl-C stops the controllers and removes every namespace.",
            client = lab.client().name(),
            fw1 = ns(Router::Fw1),
            fw2 = ns(Router::Fw2),
            lan = lab.switch(Switch::Lan).name(),
            carp = carp.display(),
            cfg1 = cfg1.display(),
            cfg2 = cfg2.display(),
            log1 = log1.display(),
            log2 = log2.display(),
        );
        let mut reported = [false, false];
        while !interrupted() {
            for (i, node) in [fw1.as_mut(), fw2.as_mut()].into_iter().enumerate() {
                if let Some(n) = node {
                    if !reported[i] && n.is_exited() {
                        reported[i] = true;
                        println!("{} exited; log:\n{}", n.namespace(), tail(&n.log(), 20));
                    }
                }
            }
            sleep(Duration::from_millis(200));
        }
        println!("\nCtrl-C: stopping");
        Ok(())
    })();
    stop_gracefully(&mut fw1);
    stop_gracefully(&mut fw2);
    drop(lab);
    println!("lab removed");
    result
}
