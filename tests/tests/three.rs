//! Tier 3: three routers on one LAN VHID, with `[sync]` to two peers each
//! (`peers = [...]`), on a topology of their own (the shared lab has two
//! routers): client — LAN switch — fw1 / fw2 / fw3, and a sync switch
//! joining the three `sync0` links (10.99.1.0/24).
//!
//! fw1 (advskew 0) is elected; a killed master is replaced by the next best
//! (fw2, advskew 50, not fw3 at 100), then by fw3; a restarted fw1 preempts
//! back. Every step: one ARP answer per broadcast request (three routers that
//! all answered would show three). A conntrack entry created on fw1 reaches
//! both peers' kernels.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carp_tests::netns::{
    add_switch, mount_bpffs, require_root, switch_port, unique_prefix, unmount_bpffs, NetNs,
};
use carp_tests::node::{carp_bin, NodeProc};
use carp_tests::pair::serial;
use carp_tests::probe::{Probe, ProbeOptions};

const VIP: &str = "10.77.0.1";
const VHID: u8 = 1;
const CLIENT_IP: &str = "10.77.0.100";
/// advskew of fw1, fw2, fw3.
const SKEW: [u8; 3] = [0, 50, 100];
const NAMES: [&str; 3] = ["fw1", "fw2", "fw3"];

fn lan_ip(i: usize) -> String {
    format!("10.77.0.{}", 11 + i)
}

fn sync_ip(i: usize) -> String {
    format!("10.99.1.{}", 1 + i)
}

/// The topology and the three controllers; dropping it stops the
/// controllers, unmounts their bpffs and deletes the namespaces.
struct Trio {
    prefix: String,
    dir: PathBuf,
    /// Field order is drop order: controllers first, then the namespaces.
    nodes: [Option<NodeProc>; 3],
    routers: Vec<NetNs>,
    client: NetNs,
    _switches: Vec<NetNs>,
}

impl Trio {
    fn build() -> Trio {
        let prefix = unique_prefix();
        let ns = |n: &str| NetNs::new(format!("{prefix}{n}")).expect("namespace");
        let switches = vec![ns("lan"), ns("sync")];
        for sw in &switches {
            sw.ip(["link", "set", "lo", "up"]).unwrap();
            add_switch(sw).unwrap();
            sw.ip(["link", "set", "br0", "up"]).unwrap();
        }
        let port = |host: &NetNs, dev: &str, sw: &NetNs, name: &str| {
            switch_port(host, dev, sw, name).unwrap();
        };
        let client = ns("client");
        client.ip(["link", "set", "lo", "up"]).unwrap();
        port(&client, "eth0", &switches[0], "client");
        client
            .ip(["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])
            .unwrap();
        client.ip(["link", "set", "eth0", "up"]).unwrap();
        let dir = std::env::temp_dir().join(format!("{prefix}run"));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("sync.key");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::File::options()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&key)
                .unwrap();
            std::io::Write::write_all(
                &mut f,
                format!("{prefix}-three-node-sync-key-0123456789abcdef").as_bytes(),
            )
            .unwrap();
        }
        let mut routers = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let r = ns(name);
            r.ip(["link", "set", "lo", "up"]).unwrap();
            port(&r, "lan0", &switches[0], name);
            port(&r, "sync0", &switches[1], name);
            r.ip(["addr", "add", &format!("{}/24", lan_ip(i)), "dev", "lan0"])
                .unwrap();
            r.ip(["addr", "add", &format!("{}/24", sync_ip(i)), "dev", "sync0"])
                .unwrap();
            for dev in ["lan0", "sync0"] {
                r.ip(["link", "set", dev, "up"]).unwrap();
            }
            mount_bpffs(&bpffs(&prefix, name)).unwrap();
            let peers: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("\"{}\"", sync_ip(j)))
                .collect();
            let cfg = format!(
                "[node]\nname = \"{name}\"\ncontrol_socket = \"/run/carp/{prefix}{name}.sock\"\n\
                 bpffs = \"{}\"\n\n[[vhid]]\nid = {VHID}\ninterface = \"lan0\"\n\
                 addresses = [\"{VIP}/24\"]\npassword = \"secret\"\nadvbase = 1\nadvskew = {}\n\
                 preempt = true\n\n[sync]\ninterface = \"sync0\"\npeers = [{}]\nkey_file = \"{}\"\n",
                bpffs(&prefix, name).display(),
                SKEW[i],
                peers.join(", "),
                key.display()
            );
            std::fs::write(dir.join(format!("{name}.toml")), cfg).unwrap();
            routers.push(r);
        }
        Trio {
            prefix,
            dir,
            nodes: [None, None, None],
            routers,
            client,
            _switches: switches,
        }
    }

    fn start(&mut self, i: usize) {
        self.nodes[i] = Some(NodeProc::spawn(
            self.routers[i].name(),
            &carp_bin(),
            &self.dir.join(format!("{}.toml", NAMES[i])),
            &self.dir.join(format!("{}.log", NAMES[i])),
        ));
    }

    fn node(&mut self, i: usize) -> &mut NodeProc {
        self.nodes[i].as_mut().expect("started")
    }

    fn logs(&self) -> String {
        NAMES
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                format!(
                    "--- {n} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until router `master` is MASTER and every other running one BACKUP.
    fn wait_roles(&mut self, master: usize, within: Duration) {
        let t0 = Instant::now();
        loop {
            let mut ok = true;
            for i in 0..3 {
                if self.nodes[i].as_mut().is_none_or(|n| n.is_exited()) {
                    continue;
                }
                let want = if i == master { "MASTER" } else { "BACKUP" };
                if self.node(i).state(VHID).as_deref() != Some(want) {
                    ok = false;
                }
            }
            if ok {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "{} never became the only MASTER\n{}",
                NAMES[master],
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Broadcast ARP requests for the VIP from the client (`arping -b`: every
    /// request broadcast, so every answerer answers every one): exactly one
    /// reply each.
    fn assert_one_answer(&self, what: &str) {
        let out = self
            .client
            .exec_unchecked(["arping", "-b", "-c", "3", "-w", "4", "-I", "eth0", VIP])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let replies = text.lines().filter(|l| l.contains("reply from")).count();
        assert_eq!(
            replies,
            3,
            "{what}: 3 broadcast requests, {replies} replies\n{text}\n{}",
            self.logs()
        );
        assert!(
            text.contains("[00:00:5E:00:01:01]"),
            "{what}: not answered from the virtual MAC\n{text}"
        );
    }

    fn conntrack(&self, i: usize, args: &[&str]) -> String {
        let out = self.routers[i]
            .exec_unchecked(["conntrack"].iter().chain(args))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

fn bpffs(prefix: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("/run/carp/{prefix}{name}.bpf"))
}

impl Drop for Trio {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            drop(n.take());
        }
        for name in NAMES {
            unmount_bpffs(&bpffs(&self.prefix, name));
            let socket = format!("/run/carp/{}{name}.sock", self.prefix);
            let _ = std::fs::remove_file(carp_user::netlink::sysctl_state_path(Path::new(&socket)));
            let _ = std::fs::remove_file(&socket);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn probe(t: &Trio, duration: Duration) -> Probe {
    Probe::start(
        t.client.name(),
        VIP.parse::<std::net::Ipv4Addr>().unwrap(),
        ProbeOptions {
            interval: Duration::from_millis(1),
            duration,
            reply_wait: Duration::from_millis(500),
        },
    )
    .expect("starting the probe")
}

#[test]
fn three_routers_elect_in_order_sync_to_both_peers_and_answer_once() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut t = Trio::build();
    for i in 0..3 {
        t.start(i);
    }
    // Bulk demotion lifts once each node has its peers' tables; then the
    // best (fw1) wins and the others listen.
    t.wait_roles(0, Duration::from_secs(30));
    t.assert_one_answer("three routers, fw1 MASTER");

    // State created on fw1 reaches both peers' kernels.
    let entry = [
        "-I",
        "-p",
        "udp",
        "-s",
        CLIENT_IP,
        "-d",
        "10.88.0.100",
        "--sport",
        "40000",
        "--dport",
        "5353",
        "-t",
        "300",
    ];
    let made = t.conntrack(0, &entry);
    assert!(made.contains("1 flow entries have been created"), "{made}");
    for peer in [1, 2] {
        let t0 = Instant::now();
        loop {
            let l = t.conntrack(peer, &["-L", "-p", "udp", "--sport", "40000"]);
            if l.contains("dport=5353") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the entry never reached {}: {l}\n{}",
                NAMES[peer],
                t.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The master dies: the next best takes over, not the worst.
    let p = probe(&t, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(300));
    t.node(0).kill9().unwrap();
    t.wait_roles(1, Duration::from_secs(8));
    let rep = p.wait().expect("probe");
    eprintln!("kill -9 of fw1: {rep}");
    assert!(rep.duplicates == 0, "{rep}");
    assert!(
        rep.max_gap < Duration::from_millis(1500),
        "fw1 -> fw2: {rep}\n{}",
        t.logs()
    );
    assert_eq!(t.node(2).state(VHID).as_deref(), Some("BACKUP"));
    t.assert_one_answer("fw1 killed, fw2 MASTER");

    t.node(1).kill9().unwrap();
    t.wait_roles(2, Duration::from_secs(8));
    t.assert_one_answer("fw1 and fw2 killed, fw3 MASTER");

    // fw1 comes back and preempts (after its bulk from fw3).
    drop(t.nodes[0].take());
    t.start(0);
    t.wait_roles(0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1200));
    t.assert_one_answer("fw1 back, preempted fw3");
}
