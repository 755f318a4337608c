//! A lab with a controller on each router: what the namespace scenarios,
//! `cargo xtask run` and `cargo xtask bench failover` all start from.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::lab::{Lab, LabOptions, NodeParams, Router, LAN_VHID, WAN_VHID};
use crate::netns::NetNs;
use crate::node::{carp_bin, NodeProc};

/// Multi-node scenarios measure failover times on a 2-core machine: running
/// them one at a time keeps them honest whatever `--test-threads` says.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Pair {
    pub lab: Lab,
    pub dir: PathBuf,
    pub params: [NodeParams; 2],
    nodes: [Option<NodeProc>; 2],
    carp: PathBuf,
}

fn idx(r: Router) -> usize {
    match r {
        Router::Fw1 => 0,
        Router::Fw2 => 1,
    }
}

impl Pair {
    /// Builds the lab and writes both configs (fw1 first in `params`); starts nothing.
    pub fn new(opts: LabOptions, params: [NodeParams; 2]) -> anyhow::Result<Pair> {
        let lab = Lab::build(opts)?;
        let dir = lab.run_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for r in Router::ALL {
            lab.write_router_config(r, &params[idx(r)], &dir)?;
        }
        Ok(Pair {
            lab,
            dir,
            params,
            nodes: [None, None],
            carp: carp_bin(),
        })
    }

    /// The standard scenario start: fw1 advskew 0 (the better master), fw2
    /// advskew 100, both VHIDs, preempt on; fw1 is started first so that it
    /// wins without relying on preempt. Returns once the roles are settled.
    pub fn standard() -> Pair {
        let params = [NodeParams::with_advskew(0), NodeParams::with_advskew(100)];
        let mut pair = Pair::new(LabOptions::default(), params).expect("building the lab");
        pair.start_standard();
        pair
    }

    /// [`Pair::standard`] on a stateful NAT lab ([`Lab::make_stateful`]):
    /// the same roles and advskews, with the `[sync]` section on both
    /// routers when `sync` is true. Returns once fw1 is MASTER of both VHIDs
    /// and fw2 BACKUP.
    ///
    /// [`Lab::make_stateful`]: crate::lab::Lab::make_stateful
    pub fn stateful(sync: bool) -> Pair {
        Pair::stateful_with(LabOptions::default(), sync)
    }

    /// [`Pair::stateful`] on a lab built with `opts` (e.g. with IPv6).
    pub fn stateful_with(opts: LabOptions, sync: bool) -> Pair {
        let params = |advskew| NodeParams {
            sync,
            ..NodeParams::with_advskew(advskew)
        };
        let mut pair = Pair::new(opts, [params(0), params(100)]).expect("building the lab");
        pair.lab
            .make_stateful()
            .expect("installing the NAT ruleset on the routers");
        pair.start_standard();
        pair
    }

    /// Starts fw1, waits until it is MASTER of the LAN VHID, starts fw2 and
    /// waits for the settled roles (fw1 MASTER of every VHID): the start of
    /// [`Pair::standard`]. Panics with both logs on timeout.
    pub fn start_standard(&mut self) {
        self.start(Router::Fw1);
        let elected =
            self.node(Router::Fw1)
                .wait_for_state(LAN_VHID, "MASTER", Duration::from_secs(10));
        assert!(elected, "fw1 never became MASTER\n{}", self.logs());
        self.start(Router::Fw2);
        self.wait_roles(Router::Fw1, Duration::from_secs(10));
    }

    pub fn config_path(&self, r: Router) -> PathBuf {
        self.dir.join(format!("{}.toml", r.name()))
    }

    pub fn log_path(&self, r: Router) -> PathBuf {
        self.dir.join(format!("{}.log", r.name()))
    }

    /// Rewrites `r`'s config (takes effect at its next start).
    pub fn set_params(&mut self, r: Router, params: NodeParams) -> anyhow::Result<()> {
        self.lab.write_router_config(r, &params, &self.dir)?;
        self.params[idx(r)] = params;
        Ok(())
    }

    pub fn start(&mut self, r: Router) {
        let ns = self.lab.router(r).name().to_owned();
        let node = NodeProc::spawn(&ns, &self.carp, &self.config_path(r), &self.log_path(r));
        self.nodes[idx(r)] = Some(node);
    }

    pub fn node(&mut self, r: Router) -> &mut NodeProc {
        self.nodes[idx(r)]
            .as_mut()
            .unwrap_or_else(|| panic!("{} was not started", r.name()))
    }

    /// Takes the process out (e.g. to let it be dropped = killed).
    pub fn take(&mut self, r: Router) -> Option<NodeProc> {
        self.nodes[idx(r)].take()
    }

    pub fn router_ns(&self, r: Router) -> &NetNs {
        self.lab.router(r)
    }

    /// VHIDs of the lab: LAN, and WAN if built.
    pub fn vhids(&self) -> Vec<u8> {
        if self.lab.with_wan() {
            vec![LAN_VHID, WAN_VHID]
        } else {
            vec![LAN_VHID]
        }
    }

    /// Waits until every VHID is MASTER on `master` and BACKUP on the other
    /// (if that one runs). Panics with both logs on timeout.
    pub fn wait_roles(&mut self, master: Router, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let vhids = self.vhids();
        loop {
            let mut ok = true;
            for &v in &vhids {
                ok &= self.node(master).state(v).as_deref() == Some("MASTER");
                if let Some(other) = self.nodes[idx(master.other())].as_mut() {
                    if !other.is_exited() {
                        ok &= other.state(v).as_deref() == Some("BACKUP");
                    }
                }
            }
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {} MASTER of {vhids:?} within {timeout:?}\n{}",
                    master.name(),
                    self.logs()
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Both logs, for panic messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for r in Router::ALL {
            let log = std::fs::read_to_string(self.log_path(r)).unwrap_or_default();
            s.push_str(&format!("----- {} log -----\n{log}\n", r.name()));
        }
        s
    }

    /// Runs a command in a namespace and returns its stdout (panics on failure).
    pub fn sh(ns: &NetNs, args: &[&str]) -> String {
        let out = ns
            .exec(args)
            .unwrap_or_else(|e| panic!("{args:?} in {}: {e:#}", ns.name()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 1 ms ICMP probe from the client to the server, through both VIPs
    /// (the client's gateway is the LAN VIP, the server's the WAN VIP).
    pub fn probe_through(&self, duration: Duration) -> crate::probe::Probe {
        crate::probe::Probe::start(
            self.lab.client().name(),
            crate::lab::SERVER_IP,
            crate::probe::ProbeOptions {
                interval: Duration::from_millis(1),
                duration,
                reply_wait: Duration::from_millis(500),
            },
        )
        .expect("starting the probe")
    }

    /// `true`: drop CARP advertisements (IP protocol 112) between the routers
    /// on both switches (an nftables `bridge` table in each switch
    /// namespace), so the routers stop hearing each other; `false` removes
    /// the table again.
    pub fn block_adverts_between_routers(&self, block: bool) {
        for sw in [crate::lab::Switch::Lan, crate::lab::Switch::Wan] {
            let script = if block {
                "table bridge carp_block {\n\
                   chain forward {\n\
                     type filter hook forward priority 0; policy accept;\n\
                     ether type ip ip protocol 112 counter drop\n\
                   }\n\
                 }\n"
            } else {
                "delete table bridge carp_block\n"
            };
            let path = self.dir.join(format!("block-{sw:?}.nft"));
            std::fs::write(&path, script).expect("writing the nft script");
            Self::sh(self.lab.switch(sw), &["nft", "-f", &path.to_string_lossy()]);
        }
    }

    /// `carp_xdp_packets_total{interface=IF,reason=REASON}` from `r`'s metrics endpoint.
    pub fn xdp_counter(&self, r: Router, interface: &str, reason: &str) -> u64 {
        let text = self.metrics(r);
        let want =
            format!("carp_xdp_packets_total{{interface=\"{interface}\",reason=\"{reason}\"}}");
        metric_value(&text, &want)
    }

    /// The `carp_transitions_total` samples of `r`: each series' labels,
    /// braces included (`{vhid="1",interface="lan0",to="master"}`), with its value.
    pub fn transitions(&self, r: Router) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for l in self.metrics(r).lines() {
            if let Some(rest) = l.strip_prefix("carp_transitions_total{") {
                if let Some((labels, v)) = rest.rsplit_once(' ') {
                    let v = v.trim().parse::<f64>().unwrap_or(0.0) as u64;
                    out.insert(format!("{{{labels}"), v);
                }
            }
        }
        out
    }

    /// Replaces the first `from` in `r`'s config by `to` (read at its next
    /// start or SIGHUP); panics if the config has no `from` (the lab's
    /// config changed under the test).
    pub fn replace_in_config(&self, r: Router, from: &str, to: &str) {
        let path = self.config_path(r);
        let text = std::fs::read_to_string(&path).expect("reading the config");
        assert!(
            text.contains(from),
            "{}'s config has no {from:?}:\n{text}",
            r.name()
        );
        std::fs::write(&path, text.replacen(from, to, 1)).expect("writing the config");
    }

    /// How many times `r` became MASTER of any VHID (`carp_transitions_total`).
    pub fn times_master(&self, r: Router) -> u64 {
        self.transitions(r)
            .iter()
            .filter(|(k, _)| k.contains("to=\"master\""))
            .map(|(_, v)| v)
            .sum()
    }

    /// The takeover cycle of a pair with fw1 MASTER of `vhid`: fw1 bows out
    /// on SIGTERM and fw2 takes over at once; `after` runs; fw1 comes back
    /// and preempts; fw1 is killed (-9) and fw2 takes over when fw1's adverts
    /// stop; `after` runs again. Its argument names the step, for messages.
    pub fn bow_out_return_and_kill(&mut self, vhid: u8, mut after: impl FnMut(&mut Pair, &str)) {
        self.node(Router::Fw1).sigterm().expect("SIGTERM to fw1");
        assert!(
            self.node(Router::Fw2)
                .wait_for_state(vhid, "MASTER", Duration::from_secs(2)),
            "fw2 did not take over on fw1's bow-out\n{}",
            self.logs()
        );
        assert!(
            self.node(Router::Fw1)
                .wait_exit(Duration::from_secs(10))
                .is_some(),
            "fw1 did not stop\n{}",
            self.logs()
        );
        after(self, "after fw1's bow-out");
        self.start(Router::Fw1);
        self.wait_roles(Router::Fw1, Duration::from_secs(15));
        self.node(Router::Fw1).kill9().expect("kill -9 fw1");
        assert!(
            self.node(Router::Fw2)
                .wait_for_state(vhid, "MASTER", Duration::from_secs(6)),
            "fw2 did not take over after fw1 died\n{}",
            self.logs()
        );
        after(self, "after kill -9 of fw1");
    }

    /// The metrics text of `r` (fetched with curl inside its namespace).
    pub fn metrics(&self, r: Router) -> String {
        let listen = self.params[idx(r)]
            .metrics_listen
            .clone()
            .expect("metrics_listen set");
        Self::sh(
            self.lab.router(r),
            &[
                "curl",
                "-s",
                "--max-time",
                "3",
                &format!("http://{listen}/metrics"),
            ],
        )
    }
}

/// `ping -c 3 -i 0.2 -W 1 TARGET` (`-6` for an IPv6 target) from `ns`, not
/// checked (callers assert on it).
pub fn ping3(ns: &NetNs, target: impl Into<std::net::IpAddr>) -> std::process::Output {
    let target = target.into();
    let family = if target.is_ipv6() { "-6" } else { "-4" };
    ns.exec_unchecked([
        "ping",
        family,
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &target.to_string(),
    ])
    .unwrap_or_else(|e| panic!("ping {target} from {}: {e:#}", ns.name()))
}

/// [`ping3`]: whether all three came back, and ping's output.
pub fn ping3_ok(ns: &NetNs, target: impl Into<std::net::IpAddr>) -> (bool, String) {
    let out = ping3(ns, target);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (text.contains(" 0% packet loss"), text)
}

/// Value of the sample whose name and labels are exactly `series` (0 if absent).
pub fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

/// `arping -c N` from `ns` out of `dev` for `target`: (requests sent, reply
/// lines, distinct replying MACs).
pub fn arping(ns: &NetNs, dev: &str, target: Ipv4Addr, count: u32) -> (u32, u32, Vec<String>) {
    let out = ns
        .exec_unchecked([
            "arping",
            "-c",
            &count.to_string(),
            "-w",
            &(count + 2).to_string(),
            "-I",
            dev,
            &target.to_string(),
        ])
        .unwrap_or_else(|e| panic!("arping: {e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut replies = 0;
    let mut macs: Vec<String> = Vec::new();
    for l in text.lines() {
        // "Unicast reply from 10.77.0.1 [00:00:5E:00:01:01]  0.6ms"
        if l.starts_with("Unicast reply from") {
            replies += 1;
            if let Some(mac) = l.split('[').nth(1).and_then(|s| s.split(']').next()) {
                let mac = mac.to_ascii_lowercase();
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
        }
    }
    (count, replies, macs)
}

/// Removes a file if it exists.
pub fn remove_quietly(p: &Path) {
    let _ = std::fs::remove_file(p);
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Controllers first (SIGKILL via NodeProc's Drop), then the lab.
        for n in self.nodes.iter_mut() {
            n.take();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (the calling
/// thread's namespace is untouched).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}
