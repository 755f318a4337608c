//! Tier 3, interoperability: our adverts as independent implementations read
//! them, on the lab's LAN (client — LAN bridge — fw1/fw2, no WAN side).
//!
//! * Wireshark's CARP dissector (`tshark`) decodes a capture of our adverts;
//!   it does not check the HMAC, so we check that on the captured bytes.
//! * ucarp 1.5.2 (Debian's `ucarp`, derived from OpenBSD's ip_carp.c) runs on
//!   one router and our controller on the other: each must accept the other's
//!   adverts (same password, VHID and VIP) and take over when it goes away.
//!
//! ucarp keeps the VIP on the interface itself through its up/down scripts,
//! so on its node the kernel answers ARP with the real MAC; our node answers
//! from XDP with the virtual MAC. Both are correct CARP behaviour.
//!
//! Every process here (tcpdump, ucarp, the controller) is started by the test
//! and killed by PID, also when the test panics (guards' `Drop`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use carp_tests::lab::{
    format_mac, vmac, LabOptions, NodeParams, Router, Switch, LAN_VHID, LAN_VIP,
};
use carp_tests::netns::{require_root, NetNs};
use carp_tests::pair::{arping, metric_value, serial, Pair};
use carp_tests::util::{inet_checksum, poll_until};
use carp_user::wire::carp;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PASSWORD: &str = "secret";
const T_ELECT: Duration = Duration::from_secs(10);
/// Our controller's takeover: a master-down interval is 3 × advbase +
/// advskew/256 s (3.39 s at advskew 100) after the last advert; 5 s leaves
/// room for a loaded 2-core machine.
const T_TAKEOVER: Duration = Duration::from_secs(5);
/// ucarp's takeover is coarser: it checks its master-down timer only when
/// poll() returns (at most every advbase + advskew/256 s when idle), and
/// libpcap's TPACKET_V3 ring hands it packets up to a block timeout (1 s,
/// seen as adverts processed on a 1 s grid) late, which also pushes the
/// timer back. Observed: 4.1-4.2 s.
const T_UCARP_TAKEOVER: Duration = Duration::from_secs(7);

fn lan_only_pair(fw1: NodeParams, fw2: NodeParams) -> Pair {
    Pair::new(
        LabOptions {
            with_wan: false,
            ..LabOptions::default()
        },
        [fw1, fw2],
    )
    .expect("building the lab")
}

/// A process we started in a lab namespace; SIGKILLed and reaped on drop.
struct Bg {
    what: &'static str,
    child: Child,
    log: PathBuf,
    /// Set once reaped: the PID may be reused after that, so no more signals.
    exited: Option<ExitStatus>,
}

impl Bg {
    /// `ip netns exec NS ARGS...` (which execs ARGS in place: the child's PID
    /// is the program's), stdout and stderr to `log`.
    fn spawn(what: &'static str, ns: &NetNs, args: &[&str], log: &Path) -> Bg {
        let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("duplicating the log file");
        let child = ns
            .spawn(args, Stdio::from(out), Stdio::from(err))
            .unwrap_or_else(|e| panic!("starting {what}: {e:#}"));
        Bg {
            what,
            child,
            log: log.to_owned(),
            exited: None,
        }
    }

    fn is_exited(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited.is_some()
    }

    fn signal(&mut self, sig: Signal) {
        assert!(
            !self.is_exited(),
            "{} already exited ({:?}); not sending {sig}\n{}",
            self.what,
            self.exited,
            self.log()
        );
        kill(Pid::from_raw(self.child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("{sig} to {}: {e}", self.what));
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if poll_until(timeout, Duration::from_millis(10), || self.is_exited()) {
            self.exited
        } else {
            None
        }
    }

    fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if !self.is_exited() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// ucarp on one router of the lab: VHID 1, the lab's password and VIP,
/// advbase 1, preempt on. Its scripts put the VIP on (and take it off) the
/// interface, and append `up` / `down` to an events file.
struct Ucarp {
    proc: Bg,
    events: PathBuf,
    router: Router,
}

impl Ucarp {
    fn start(pair: &Pair, router: Router, advskew: u8) -> Ucarp {
        let events = pair.dir.join("ucarp-events");
        let up = pair.dir.join("ucarp-up.sh");
        let down = pair.dir.join("ucarp-down.sh");
        // ucarp runs `SCRIPT <interface> <vip> [xparam]` (spawn.c), synchronously.
        for (path, verb, ip_verb) in [(&up, "up", "add"), (&down, "down", "del")] {
            let script = format!(
                "#!/bin/sh\n\
                 dev=\"${{1:-lan0}}\"\n\
                 vip=\"${{2:-{LAN_VIP}}}\"\n\
                 echo {verb} >> '{events}'\n\
                 ip addr {ip_verb} \"$vip/24\" dev \"$dev\" 2>/dev/null || true\n",
                events = events.display()
            );
            std::fs::write(path, script)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let own = router.lan_ip().to_string();
        let vip = LAN_VIP.to_string();
        let skew = advskew.to_string();
        let (up, down) = (
            up.to_string_lossy().into_owned(),
            down.to_string_lossy().into_owned(),
        );
        // Line-buffered stdout: ucarp printf()s its INFO and DEBUG lines.
        let mut args = vec![
            "stdbuf", "-oL", "ucarp", "-i", "lan0", "-s", &own, "-v", "1",
        ];
        args.extend(["-p", PASSWORD, "-a", &vip, "-b", "1", "-k", &skew, "-P"]);
        args.extend(["-u", &up, "-d", &down]);
        // Neutral: no down script at start, so the events are only real transitions.
        args.push("-n");
        // Shutdown: on SIGTERM a master runs its down script before exiting.
        args.push("-z");
        // Debug: one `sc_tv(local) = ...` line per advert that passed every check (carp.c).
        args.push("-D");
        let proc = Bg::spawn(
            "ucarp",
            pair.router_ns(router),
            &args,
            &pair.dir.join("ucarp.log"),
        );
        Ucarp {
            proc,
            events,
            router,
        }
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the events file holds `want` exactly.
    fn wait_events(&self, want: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.events() == want {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Adverts from the peer that ucarp accepted (TTL, version, VHID, group,
    /// checksum and HMAC all checked before this debug line is printed).
    fn accepted_adverts(&self) -> usize {
        self.proc
            .log()
            .lines()
            .filter(|l| l.contains("sc_tv(local)"))
            .count()
    }

    /// ucarp's complaints about a received packet (carp.c's `packethandler`).
    fn rejections(&self) -> Vec<String> {
        self.proc
            .log()
            .lines()
            .filter(|l| {
                [
                    "Bad digest",
                    "Bad TTL",
                    "Bad version",
                    "Bad IP checksum",
                    "Bogus size",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(str::to_owned)
            .collect()
    }

    fn report(&self) -> String {
        format!(
            "----- ucarp on {} (events {:?}) -----\n{}\n",
            self.router.name(),
            self.events(),
            self.proc.log()
        )
    }
}

fn logs(pair: &Pair, ucarp: &Ucarp) -> String {
    format!("{}{}", pair.logs(), ucarp.report())
}

/// The MAC address of `dev` in `ns`.
fn link_mac(ns: &NetNs, dev: &str) -> String {
    let out = Pair::sh(ns, &["ip", "-br", "link", "show", "dev", dev]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_ascii_lowercase()
}

fn vip_on_lan0(ns: &NetNs) -> bool {
    Pair::sh(ns, &["ip", "-4", "addr", "show", "dev", "lan0"]).contains(&format!("{LAN_VIP}/"))
}

/// Exactly one ARP reply per request for the VIP, all from `mac`.
fn assert_arp_answerer(pair: &Pair, ucarp: &Ucarp, mac: &str, what: &str) {
    let (sent, replies, macs) = arping(pair.lab.client(), "eth0", LAN_VIP, 3);
    assert!(
        replies == sent && macs == [mac],
        "{what}: expected {sent} ARP replies from {mac} only, got {replies} from {macs:?}\n{}",
        logs(pair, ucarp)
    );
}

/// The client pings the VIP itself (answered by whichever node holds it).
fn assert_client_reaches_vip(pair: &Pair, ucarp: &Ucarp, what: &str) {
    let out = pair
        .lab
        .client()
        .exec_unchecked([
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &LAN_VIP.to_string(),
        ])
        .expect("running ping");
    assert!(
        out.status.success(),
        "{what}: the client cannot reach {LAN_VIP}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        logs(pair, ucarp)
    );
}

fn received(pair: &Pair, r: Router, result: &str) -> u64 {
    metric_value(
        &pair.metrics(r),
        &format!("carp_adverts_received_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\",result=\"{result}\"}}"),
    )
}

fn unexpected_source_mac(pair: &Pair, r: Router) -> u64 {
    metric_value(
        &pair.metrics(r),
        &format!(
            "carp_adverts_unexpected_source_mac_total{{vhid=\"{LAN_VHID}\",interface=\"lan0\"}}"
        ),
    )
}

/// One captured frame, decoded here by hand (independently of carp-user's parser).
#[derive(Debug)]
struct Captured {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ttl: u8,
    ip_checksum_ok: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    carp: [u8; carp::HEADER_LEN],
}

fn read_capture(path: &Path) -> Vec<Captured> {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("a pcap file");
    let mut out = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.expect("a pcap record");
        let f = &pkt.data;
        assert!(
            f.len() >= 14 + 20 && f[12..14] == [0x08, 0x00],
            "not an IPv4 frame: {f:02x?}"
        );
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert_eq!(ip[9], carp_common::IPPROTO_CARP, "not CARP: {f:02x?}");
        let carp_bytes: [u8; carp::HEADER_LEN] = ip
            .get(ihl..ihl + carp::HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .unwrap_or_else(|| panic!("short CARP payload: {f:02x?}"));
        out.push(Captured {
            eth_dst: f[0..6].try_into().unwrap(),
            eth_src: f[6..12].try_into().unwrap(),
            ttl: ip[8],
            ip_checksum_ok: inet_checksum(&ip[..ihl]) == 0,
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            carp: carp_bytes,
        });
    }
    out
}

/// Captures `count` proto-112 frames on the LAN bridge (bounded by `timeout`).
fn capture_adverts(pair: &Pair, count: u32, timeout: Duration) -> PathBuf {
    let file = pair.dir.join("adverts.pcap");
    let log = pair.dir.join("tcpdump.log");
    let file_s = file.to_string_lossy().into_owned();
    let count_s = count.to_string();
    // -Z root: tcpdump would otherwise drop to its own user, who may not write to our temp dir.
    let args = [
        "tcpdump",
        "-i",
        "br0",
        "-n",
        "-U",
        "-Z",
        "root",
        "-c",
        &count_s,
        "-w",
        &file_s,
        "ip proto 112",
    ];
    let mut tcpdump = Bg::spawn("tcpdump", pair.lab.switch(Switch::Lan), &args, &log);
    match tcpdump.wait_exit(timeout) {
        Some(st) => assert!(st.success(), "tcpdump failed ({st}):\n{}", tcpdump.log()),
        None => panic!(
            "tcpdump did not see {count} adverts within {timeout:?}:\n{}\n{}",
            tcpdump.log(),
            pair.logs()
        ),
    }
    file
}

const TSHARK_FIELDS: [&str; 17] = [
    "frame.protocols",
    "eth.src",
    "eth.dst",
    "ip.src",
    "ip.dst",
    "ip.ttl",
    "carp.version",
    "carp.type",
    "carp.vhid",
    "carp.advskew",
    "carp.authlen",
    "carp.demotion",
    "carp.adver_int",
    "carp.counter",
    "carp.checksum.status",
    "carp.hmac",
    "_ws.expert",
];

#[test]
fn our_adverts_decode_in_tshark() {
    if !require_root() {
        return;
    }
    let _g = serial();
    const ADVSKEW: u8 = 42;
    const COUNT: usize = 4;
    let mut pair = lan_only_pair(
        NodeParams::with_advskew(ADVSKEW),
        NodeParams::with_advskew(100),
    );
    pair.start(Router::Fw1);
    assert!(
        pair.node(Router::Fw1)
            .wait_for_state(LAN_VHID, "MASTER", T_ELECT),
        "fw1 never became MASTER\n{}",
        pair.logs()
    );
    let pcap = capture_adverts(&pair, COUNT as u32, Duration::from_secs(COUNT as u64 + 4));

    // Wireshark, told that proto 112 is CARP (VRRP uses it too; no guessing).
    let mut args = vec![
        "tshark".to_owned(),
        "-n".into(),
        "-r".into(),
        pcap.to_string_lossy().into_owned(),
    ];
    args.extend(
        [
            "-d",
            "ip.proto==112,carp",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
        ]
        .map(String::from),
    );
    for f in TSHARK_FIELDS {
        args.extend(["-e".to_owned(), f.to_owned()]);
    }
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("running tshark");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), COUNT, "tshark rows:\n{text}");

    let mac = format_mac(vmac(LAN_VHID));
    let own = Router::Fw1.lan_ip().to_string();
    let mut tshark_counters = Vec::new();
    let mut tshark_hmacs = Vec::new();
    for row in &rows {
        let field = |name: &str| row[TSHARK_FIELDS.iter().position(|f| *f == name).unwrap()];
        let ctx = format!("tshark row {row:?}\nall rows:\n{text}");
        assert!(
            field("frame.protocols").ends_with("ip:carp"),
            "not dissected as CARP: {ctx}"
        );
        assert_eq!(field("eth.src"), mac, "{ctx}");
        assert_eq!(field("eth.dst"), "01:00:5e:00:00:12", "{ctx}");
        assert_eq!(field("ip.src"), own, "{ctx}");
        assert_eq!(field("ip.dst"), "224.0.0.18", "{ctx}");
        assert_eq!(field("ip.ttl"), "255", "{ctx}");
        assert_eq!(field("carp.version"), "2", "{ctx}");
        assert_eq!(field("carp.type"), "1", "{ctx}");
        assert_eq!(field("carp.vhid"), LAN_VHID.to_string(), "{ctx}");
        assert_eq!(field("carp.advskew"), ADVSKEW.to_string(), "{ctx}");
        assert_eq!(field("carp.authlen"), "7", "{ctx}");
        assert_eq!(field("carp.demotion"), "0", "{ctx}");
        assert_eq!(field("carp.adver_int"), "1", "{ctx}");
        // PROTO_CHECKSUM_E_GOOD (epan/proto.h): the dissector verified the checksum.
        assert_eq!(field("carp.checksum.status"), "1", "{ctx}");
        assert_eq!(
            field("_ws.expert"),
            "",
            "Wireshark has expert warnings: {ctx}"
        );
        tshark_counters.push(
            field("carp.counter")
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("counter: {ctx}")),
        );
        tshark_hmacs.push(field("carp.hmac").replace(':', ""));
    }
    for w in tshark_counters.windows(2) {
        assert_eq!(
            w[1],
            w[0].wrapping_add(1),
            "counter must step by 1 per advert: {tshark_counters:?}"
        );
    }

    // The same bytes, read by hand: the HMAC (which Wireshark does not check)
    // with the configured password and VIP, and agreement with tshark.
    let frames = read_capture(&pcap);
    assert_eq!(frames.len(), COUNT);
    for (i, f) in frames.iter().enumerate() {
        assert!(f.ip_checksum_ok, "bad IPv4 header checksum: {f:02x?}");
        assert_eq!(
            (f.eth_src, f.eth_dst, f.ttl),
            (
                vmac(LAN_VHID),
                carp_user::wire::frame::CARP_GROUP_MAC_V4,
                255
            )
        );
        assert_eq!(
            (f.src, f.dst),
            (Router::Fw1.lan_ip(), carp_common::CARP_GROUP_V4)
        );
        let counter = u64::from_be_bytes(f.carp[8..16].try_into().unwrap());
        let digest: [u8; carp::DIGEST_LEN] = f.carp[16..36].try_into().unwrap();
        assert_eq!(
            counter, tshark_counters[i],
            "tshark and the bytes disagree on the counter"
        );
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex, tshark_hmacs[i],
            "tshark and the bytes disagree on the HMAC"
        );
        assert!(
            carp::verify_digest(
                PASSWORD.as_bytes(),
                LAN_VHID,
                &[LAN_VIP],
                &[],
                counter,
                &digest
            ),
            "HMAC of captured advert {i} does not verify: {:02x?}",
            f.carp
        );
        assert!(
            !carp::verify_digest(b"secreT", LAN_VHID, &[LAN_VIP], &[], counter, &digest),
            "the HMAC check must depend on the password"
        );
        // The CARP header sums to zero with its checksum, as RFC 1071 says.
        assert_eq!(inet_checksum(&f.carp), 0, "CARP checksum: {:02x?}", f.carp);
    }
}

/// Scenario A: our controller is master (advskew 0), ucarp (advskew 100) must
/// accept its adverts and stay backup; after `kill -9` of our controller ucarp
/// takes over within a master-down interval.
#[test]
fn ucarp_backup_takes_over_from_carp_master() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = lan_only_pair(NodeParams::with_advskew(0), NodeParams::with_advskew(100));
    pair.start(Router::Fw1);
    assert!(
        pair.node(Router::Fw1)
            .wait_for_state(LAN_VHID, "MASTER", T_ELECT),
        "fw1 never became MASTER\n{}",
        pair.logs()
    );
    let ucarp = Ucarp::start(&pair, Router::Fw2, 100);

    // Four accepted adverts span more than ucarp's master-down interval
    // (3.39 s): had it rejected them, it would have become master meanwhile.
    let deadline = Instant::now() + Duration::from_secs(7);
    while ucarp.accepted_adverts() < 4 && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    assert!(
        ucarp.accepted_adverts() >= 4,
        "ucarp accepted too few of our adverts\n{}",
        logs(&pair, &ucarp)
    );
    assert!(
        ucarp.rejections().is_empty(),
        "ucarp rejected adverts: {:?}\n{}",
        ucarp.rejections(),
        logs(&pair, &ucarp)
    );
    assert_eq!(
        ucarp.events(),
        Vec::<String>::new(),
        "ucarp must stay BACKUP\n{}",
        logs(&pair, &ucarp)
    );
    assert!(
        !ucarp.proc.log().contains("Switching to state: MASTER"),
        "{}",
        logs(&pair, &ucarp)
    );
    assert_eq!(
        pair.node(Router::Fw1).state(LAN_VHID).as_deref(),
        Some("MASTER"),
        "{}",
        logs(&pair, &ucarp)
    );
    // A ucarp backup is silent: fw1 heard nothing from it.
    assert_eq!(received(&pair, Router::Fw1, "ok"), 0);
    assert_arp_answerer(&pair, &ucarp, &format_mac(vmac(LAN_VHID)), "carp master");

    let t0 = Instant::now();
    pair.node(Router::Fw1).kill9().unwrap();
    pair.node(Router::Fw1)
        .wait_exit(Duration::from_secs(2))
        .expect("fw1 exits on SIGKILL");
    assert!(
        ucarp.wait_events(&["up"], T_UCARP_TAKEOVER),
        "ucarp did not take over within {T_UCARP_TAKEOVER:?}\n{}",
        logs(&pair, &ucarp)
    );
    let took = t0.elapsed();
    eprintln!("ucarp took over {took:?} after kill -9 of the carp master");
    // Our last advert left at most 1 s before the kill: ucarp must still have
    // waited out (most of) its 3.39 s master-down interval, not jumped in.
    assert!(
        took >= Duration::from_secs(2),
        "ucarp took over before a master-down interval ({took:?})"
    );
    assert!(
        ucarp.proc.log().contains("Switching to state: MASTER"),
        "{}",
        logs(&pair, &ucarp)
    );
    assert!(
        vip_on_lan0(pair.router_ns(Router::Fw2)),
        "ucarp's up script did not add the VIP"
    );

    // ucarp's node answers with its real MAC (kernel ARP); the dead carp node is silent.
    let mac = link_mac(pair.router_ns(Router::Fw2), "lan0");
    assert_arp_answerer(&pair, &ucarp, &mac, "after ucarp's takeover");
    assert_client_reaches_vip(&pair, &ucarp, "after ucarp's takeover");
}

/// Scenario B: ucarp is master (advskew 0), our controller (advskew 100) must
/// accept its adverts and stay backup; when ucarp stops it takes over.
#[test]
fn carp_backup_takes_over_from_ucarp_master() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = lan_only_pair(NodeParams::with_advskew(0), NodeParams::with_advskew(100));
    let mut ucarp = Ucarp::start(&pair, Router::Fw1, 0);
    // Alone, ucarp becomes master after its master-down interval (3 s, plus its poll granularity).
    assert!(
        ucarp.wait_events(&["up"], T_UCARP_TAKEOVER),
        "ucarp never became MASTER\n{}",
        ucarp.report()
    );
    let ucarp_mac = link_mac(pair.router_ns(Router::Fw1), "lan0");

    pair.start(Router::Fw2);
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "BACKUP", T_ELECT),
        "fw2 never became BACKUP\n{}",
        logs(&pair, &ucarp)
    );
    // Stay BACKUP for longer than a master-down interval (3.39 s at advskew 100).
    let deadline = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < deadline {
        let st = pair.node(Router::Fw2).state(LAN_VHID);
        assert_eq!(
            st.as_deref(),
            Some("BACKUP"),
            "fw2 must stay BACKUP under ucarp's adverts\n{}",
            logs(&pair, &ucarp)
        );
        sleep(Duration::from_millis(100));
    }
    let ok = received(&pair, Router::Fw2, "ok");
    assert!(
        ok >= 4,
        "fw2 accepted {ok} of ucarp's adverts\n{}\n{}",
        pair.metrics(Router::Fw2),
        logs(&pair, &ucarp)
    );
    for bad in ["bad_digest", "replay", "fast_mode_mismatch"] {
        assert_eq!(
            received(&pair, Router::Fw2, bad),
            0,
            "{bad}\n{}",
            pair.metrics(Router::Fw2)
        );
    }
    // ucarp sends from 00:00:5e:00:00:<vhid>, a form the controller knows.
    assert_eq!(
        unexpected_source_mac(&pair, Router::Fw2),
        0,
        "{}",
        pair.metrics(Router::Fw2)
    );
    assert_eq!(
        ucarp.events(),
        ["up"],
        "ucarp must stay MASTER\n{}",
        logs(&pair, &ucarp)
    );
    // Our backup drops ARP for the VIP in XDP; ucarp's kernel answers.
    assert_arp_answerer(&pair, &ucarp, &ucarp_mac, "ucarp master");
    assert_eq!(pair.xdp_counter(Router::Fw2, "lan0", "arp_replied"), 0);

    // SIGTERM with -z: ucarp runs its down script (drops the VIP) and exits
    // without a last advert, so we take over after a master-down interval.
    let t0 = Instant::now();
    ucarp.proc.signal(Signal::SIGTERM);
    assert!(
        ucarp.proc.wait_exit(Duration::from_secs(3)).is_some(),
        "ucarp ignored SIGTERM\n{}",
        ucarp.report()
    );
    assert_eq!(
        ucarp.events(),
        ["up", "down"],
        "ucarp's down script did not run at exit\n{}",
        ucarp.report()
    );
    assert!(
        !vip_on_lan0(pair.router_ns(Router::Fw1)),
        "VIP left on ucarp's node"
    );
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", T_TAKEOVER),
        "fw2 did not take over\n{}",
        logs(&pair, &ucarp)
    );
    eprintln!("carp took over {:?} after ucarp stopped", t0.elapsed());

    assert_arp_answerer(
        &pair,
        &ucarp,
        &format_mac(vmac(LAN_VHID)),
        "after carp's takeover",
    );
    assert!(
        pair.xdp_counter(Router::Fw2, "lan0", "arp_replied") >= 1,
        "the answers must come from fw2's XDP"
    );
    assert_client_reaches_vip(&pair, &ucarp, "after carp's takeover");
}

/// Scenario C: ucarp is master with advskew 100; our controller (advskew 0,
/// preempt) starts and preempts it; ucarp must step down to BACKUP.
#[test]
fn carp_preempts_a_slower_ucarp_master() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = lan_only_pair(NodeParams::with_advskew(100), NodeParams::with_advskew(0));
    let ucarp = Ucarp::start(&pair, Router::Fw1, 100);
    assert!(
        ucarp.wait_events(&["up"], T_UCARP_TAKEOVER),
        "ucarp never became MASTER\n{}",
        ucarp.report()
    );

    pair.start(Router::Fw2);
    assert!(
        pair.node(Router::Fw2)
            .wait_for_state(LAN_VHID, "MASTER", T_ELECT),
        "fw2 did not preempt\n{}",
        logs(&pair, &ucarp)
    );
    assert!(
        ucarp.wait_events(&["up", "down"], Duration::from_secs(3)),
        "ucarp did not step down\n{}",
        logs(&pair, &ucarp)
    );
    // ucarp steps down to BACKUP (its "Preferred master advertised" line is not
    // always written before the state switch, so the switch itself is checked).
    let log = ucarp.proc.log();
    let last_switch = log.lines().rfind(|l| l.contains("Switching to state:"));
    assert!(
        last_switch.is_some_and(|l| l.ends_with("BACKUP")),
        "{}",
        logs(&pair, &ucarp)
    );
    assert!(
        received(&pair, Router::Fw2, "ok") >= 1,
        "{}",
        pair.metrics(Router::Fw2)
    );

    // Stable afterwards: ucarp stays BACKUP under our adverts.
    sleep(Duration::from_millis(1500));
    assert_eq!(
        pair.node(Router::Fw2).state(LAN_VHID).as_deref(),
        Some("MASTER"),
        "{}",
        logs(&pair, &ucarp)
    );
    assert_eq!(ucarp.events(), ["up", "down"], "{}", logs(&pair, &ucarp));
    assert!(
        ucarp.rejections().is_empty(),
        "ucarp rejected adverts: {:?}",
        ucarp.rejections()
    );
    assert!(
        !vip_on_lan0(pair.router_ns(Router::Fw1)),
        "VIP left on ucarp's node"
    );
    assert_arp_answerer(
        &pair,
        &ucarp,
        &format_mac(vmac(LAN_VHID)),
        "after the preemption",
    );
    assert_client_reaches_vip(&pair, &ucarp, "after the preemption");
}
