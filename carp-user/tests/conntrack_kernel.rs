//! Root integration tests of the ctnetlink layer against the running kernel.
//!
//! Every test creates its own network namespace (`ctt-<pid>-<n>`), runs its
//! body on a thread that has `setns`-ed into it (sockets belong to the netns
//! they are created in), and deletes the namespace on drop, also on panic.
//! Nothing is changed in the initial namespace.
//!
//! Not root: prints `SKIPPED (not root): <test>` and passes, unless `CI=true`.
//!
//! `capture_golden` (ignored) regenerates tests/data/ctnetlink/*.bin from the
//! kernel: `cargo test -p carp-user --test conntrack_kernel -- --ignored capture_golden`.
use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use carp_user::conntrack::netlink::{
    parse_message, Conntrack, CtEventItem, CtEventKind, CtEvents, CtFamily, DeleteOutcome,
    InstallOutcome,
};
use carp_user::conntrack::{status, CtEntry, CtKey, TcpInfo, Tuple, L4};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when the test should run; prints the skip line otherwise.
fn need_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("conntrack kernel tests need root (CI=true)");
    }
    // The line of carp_tests::netns::require_root (carp-tests depends on
    // this crate, not the other way): to the stderr handle, past libtest's
    // capture, in the form `cargo xtask test` counts.
    use std::io::Write as _;
    let thread = std::thread::current();
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED (not root): {}",
        thread.name().unwrap_or("(unnamed test)")
    );
    false
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Netns {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name}");
        Netns { name }
    }

    /// Run `f` on a thread inside the namespace; panics propagate.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let fd = File::open(&path).expect("open netns");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Run a command in the namespace (`ip netns exec`), returning stdout.
    fn exec(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A ruleset that uses conntrack, loads NAT for both families and
    /// enables the label extension (`ct label set`), which the kernel only
    /// attaches once some rule uses labels.
    fn ruleset(&self) {
        self.exec(
            &["nft", "-f", "-"],
            Some(
                "table ip t {\n chain c {\n  type filter hook prerouting priority 0;\n  ct state new counter\n  ct label set 127\n }\n}\n\
                 table ip nat {\n chain pre { type nat hook prerouting priority -100; }\n chain post { type nat hook postrouting priority 100; }\n}\n\
                 table ip6 nat {\n chain pre { type nat hook prerouting priority -100; }\n chain post { type nat hook postrouting priority 100; }\n}\n",
            ),
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tuple(src: &str, dst: &str, proto: u8, l4: L4) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto,
        l4,
    }
}

fn ports(src: u16, dst: u16) -> L4 {
    L4::Ports { src, dst }
}

fn plain(orig: Tuple, timeout: u32) -> CtEntry {
    CtEntry::new(orig, timeout)
}

fn established(orig: Tuple) -> CtEntry {
    CtEntry {
        status: status::SEEN_REPLY | status::ASSURED,
        tcp: Some(TcpInfo {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 8,
            flags_orig: 0x23,
            flags_reply: 0x23,
        }),
        ..plain(orig, 400)
    }
}

/// The entries of the field-by-field test, by name.
fn sample_entries() -> Vec<(&'static str, CtEntry)> {
    let snat = {
        let o = tuple("10.0.0.1", "192.0.2.1", 6, ports(40000, 80));
        let mut e = established(o);
        e.reply = tuple("192.0.2.1", "198.51.100.1", 6, ports(80, 1025));
        e.status |= status::SRC_NAT;
        e
    };
    let dnat = {
        let o = tuple("10.0.0.6", "192.0.2.80", 6, ports(40000, 80));
        let mut e = established(o);
        e.reply = tuple("10.1.1.1", "10.0.0.6", 6, ports(8080, 40000));
        e.status |= status::DST_NAT;
        e
    };
    let udp = plain(tuple("10.0.0.1", "192.0.2.53", 17, ports(5353, 53)), 30);
    let icmp = plain(
        tuple(
            "10.0.0.1",
            "192.0.2.1",
            1,
            L4::Icmp {
                id: 1234,
                kind: 8,
                code: 0,
            },
        ),
        30,
    );
    // ICMP echo behind SNAT with a remapped id.
    let icmp_snat = {
        let o = tuple(
            "10.0.0.2",
            "192.0.2.1",
            1,
            L4::Icmp {
                id: 555,
                kind: 8,
                code: 0,
            },
        );
        let mut e = plain(o, 30);
        e.reply = tuple(
            "192.0.2.1",
            "198.51.100.1",
            1,
            L4::Icmp {
                id: 4242,
                kind: 0,
                code: 0,
            },
        );
        e.status = status::SRC_NAT;
        e
    };
    let icmp6 = plain(
        tuple(
            "2001:db8::1",
            "2001:db8::2",
            58,
            L4::Icmp {
                id: 77,
                kind: 128,
                code: 0,
            },
        ),
        30,
    );
    let tcp6 = established(tuple("2001:db8::1", "2001:db8::2", 6, ports(40000, 443)));
    let zoned = CtEntry {
        zone: 7,
        ..plain(tuple("10.0.0.4", "192.0.2.9", 17, ports(1000, 2000)), 60)
    };
    let marked = CtEntry {
        mark: 0x2a,
        ..plain(tuple("10.0.0.3", "192.0.2.9", 17, ports(1000, 2000)), 60)
    };
    let mut lab = [0u8; 16];
    lab[0] = 0x21; // labels 0 and 5
    lab[15] = 0x80; // label 127
    let labelled = CtEntry {
        labels: Some(lab),
        ..established(tuple("10.0.0.7", "192.0.2.7", 6, ports(40007, 22)))
    };
    vec![
        ("tcp_snat", snat),
        ("tcp_dnat", dnat),
        ("udp", udp),
        ("icmp", icmp),
        ("icmp_snat", icmp_snat),
        ("icmp6", icmp6),
        ("tcp6", tcp6),
        ("zone", zoned),
        ("mark", marked),
        ("labels", labelled),
    ]
}

fn assert_same(name: &str, want: &CtEntry, got: &CtEntry) {
    assert_eq!(got.orig, want.orig, "{name}: orig");
    assert_eq!(got.reply, want.reply, "{name}: reply");
    assert_eq!(got.zone, want.zone, "{name}: zone");
    assert_eq!(got.mark, want.mark, "{name}: mark");
    assert_eq!(got.labels, want.labels, "{name}: labels");
    let keep = status::SEEN_REPLY | status::ASSURED | status::SRC_NAT | status::DST_NAT;
    assert_eq!(
        got.status & keep,
        want.status & keep,
        "{name}: status {:#x}",
        got.status
    );
    assert!(got.status & status::CONFIRMED != 0, "{name}: confirmed");
    if want.status & status::SRC_NAT != 0 {
        assert!(
            got.status & status::SRC_NAT_DONE != 0,
            "{name}: SRC_NAT_DONE"
        );
    }
    if want.status & status::DST_NAT != 0 {
        assert!(
            got.status & status::DST_NAT_DONE != 0,
            "{name}: DST_NAT_DONE"
        );
    }
    assert!(
        got.timeout <= want.timeout && got.timeout + 10 >= want.timeout,
        "{name}: timeout {} vs {}",
        got.timeout,
        want.timeout
    );
    match (&want.tcp, &got.tcp) {
        (None, None) => {}
        (Some(w), Some(g)) => {
            assert_eq!(g.state, w.state, "{name}: tcp state");
            assert_eq!(
                (g.wscale_orig, g.wscale_reply),
                (w.wscale_orig, w.wscale_reply),
                "{name}: wscale"
            );
            for f in [g.flags_orig, g.flags_reply] {
                assert_eq!(
                    f & 0x0b,
                    0x0b,
                    "{name}: tcp flags {f:#x} (liberal|sack|wscale)"
                );
            }
        }
        _ => panic!("{name}: tcp {:?} vs {:?}", want.tcp, got.tcp),
    }
}

#[test]
fn conntrack_install_dump_fields() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.ruleset();
    ns.run(|| {
        let mut ct = Conntrack::open().unwrap();
        let entries = sample_entries();
        let list: Vec<CtEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
        let out = ct.install(&list).unwrap();
        for ((name, _), o) in entries.iter().zip(&out) {
            assert_eq!(*o, InstallOutcome::Created, "{name}");
        }
        let dumped = ct.dump(CtFamily::All).unwrap();
        assert_eq!(dumped.len(), entries.len(), "{dumped:#?}");
        let by_key: HashMap<CtKey, &CtEntry> = dumped.iter().map(|e| (e.key(), e)).collect();
        for (name, want) in &entries {
            let got = by_key
                .get(&want.key())
                .unwrap_or_else(|| panic!("{name} not dumped"));
            assert_same(name, want, got);
        }
        // Family filters.
        let v4 = ct.dump(CtFamily::V4).unwrap();
        let v6 = ct.dump(CtFamily::V6).unwrap();
        assert_eq!(v6.len(), 2);
        assert_eq!(v4.len() + v6.len(), entries.len());
        assert!(v6.iter().all(|e| e.orig.src.is_ipv6()));
        // get() by key, including a zoned one.
        for (name, want) in &entries {
            let got = ct
                .get(&want.key())
                .unwrap()
                .unwrap_or_else(|| panic!("get {name}"));
            assert_same(name, want, &got);
        }
        let mut missing = entries[2].1.key();
        missing.zone = 9;
        assert_eq!(ct.get(&missing).unwrap(), None);
    });
}

#[test]
fn conntrack_helper_accepted_or_refused() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.ruleset();
    ns.run(|| {
        let mut ct = Conntrack::open().unwrap();
        let mut e = established(tuple("10.0.0.8", "192.0.2.21", 6, ports(40021, 21)));
        e.helper = Some("ftp".into());
        let out = ct.install(std::slice::from_ref(&e)).unwrap();
        println!("helper ftp install: {out:?}");
        assert_eq!(out[0], InstallOutcome::Created);
        let got = ct.get(&e.key()).unwrap().unwrap();
        assert_eq!(got.helper.as_deref(), Some("ftp"));
        // An unknown helper is refused per entry without stopping the batch.
        let mut bad = established(tuple("10.0.0.9", "192.0.2.21", 6, ports(40022, 21)));
        bad.helper = Some("nosuchhelper".into());
        let ok = plain(tuple("10.0.0.9", "192.0.2.53", 17, ports(1, 53)), 30);
        let out = ct.install(&[bad, ok]).unwrap();
        println!("unknown helper install: {out:?}");
        assert!(matches!(out[0], InstallOutcome::Failed(_)));
        assert_eq!(out[1], InstallOutcome::Created);
    });
}

/// Labels need the conntrack label extension, which the kernel only attaches
/// once some rule uses labels (`ct label set`); without one the create fails
/// for that entry only.
#[test]
fn conntrack_labels_without_label_rule() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.run(|| {
        let mut ct = Conntrack::open().unwrap();
        let (_, labelled) = sample_entries().pop().unwrap();
        assert!(labelled.labels.is_some());
        let udp = plain(tuple("10.0.0.1", "192.0.2.53", 17, ports(5353, 53)), 30);
        let out = ct.install(&[labelled.clone(), udp]).unwrap();
        println!("labels without a label rule: {out:?}");
        // Kernel 6.18: the create succeeds and drops the labels...
        assert_eq!(out, vec![InstallOutcome::Created, InstallOutcome::Created]);
        let got = ct.get(&labelled.key()).unwrap().unwrap();
        println!("labels kept: {:?}", got.labels);
        // ...and an update with labels is ENOSPC, retried without them.
        let again = ct.install(std::slice::from_ref(&labelled)).unwrap();
        println!("labels update without a label rule: {again:?}");
        assert_eq!(again, vec![InstallOutcome::Updated]);
    });
}

#[test]
fn conntrack_update_and_delete() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.ruleset();
    ns.run(|| {
        let mut ct = Conntrack::open().unwrap();
        let entries: Vec<CtEntry> = sample_entries().into_iter().map(|(_, e)| e).collect();
        assert!(ct
            .install(&entries)
            .unwrap()
            .iter()
            .all(|o| *o == InstallOutcome::Created));
        // Re-install with a new timeout, mark and TCP state: EEXIST -> update.
        let changed: Vec<CtEntry> = entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.timeout = 1000;
                e.mark = 0x99;
                if let Some(t) = &mut e.tcp {
                    t.state = 4; // FIN_WAIT
                }
                e
            })
            .collect();
        let out = ct.install(&changed).unwrap();
        assert!(out.iter().all(|o| *o == InstallOutcome::Updated), "{out:?}");
        for e in &changed {
            let got = ct.get(&e.key()).unwrap().unwrap();
            assert!(got.timeout > 990 && got.timeout <= 1000, "{}", got.timeout);
            assert_eq!(got.mark, 0x99);
            assert_eq!(got.reply, e.reply, "NAT kept across update");
            if let Some(t) = &got.tcp {
                assert_eq!(t.state, 4);
            }
        }
        // An update whose status would clear ASSURED is EBUSY in the
        // kernel; install retries it without the status.
        let mut downgraded = changed[0].clone();
        downgraded.status = 0;
        downgraded.timeout = 500;
        assert_eq!(
            ct.install(&[downgraded.clone()]).unwrap(),
            vec![InstallOutcome::Updated]
        );
        let got = ct.get(&downgraded.key()).unwrap().unwrap();
        assert!(got.timeout <= 500 && got.timeout > 490);
        assert!(got.status & status::ASSURED != 0);

        let keys: Vec<CtKey> = changed.iter().map(|e| e.key()).collect();
        let out = ct.delete(&keys).unwrap();
        assert!(out.iter().all(|o| *o == DeleteOutcome::Deleted), "{out:?}");
        let out = ct.delete(&keys).unwrap();
        assert!(out.iter().all(|o| *o == DeleteOutcome::NotFound), "{out:?}");
        assert!(ct.dump(CtFamily::All).unwrap().is_empty());
    });
}

fn next_event(ev: &mut CtEvents) -> carp_user::conntrack::netlink::CtEvent {
    match ev.recv_timeout(Some(Duration::from_secs(5))).unwrap() {
        Some(CtEventItem::Event(e)) => e,
        Some(other) => panic!("unexpected {other:?}"),
        None => panic!("no event within 5 s"),
    }
}

#[test]
fn conntrack_events_origin() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.ruleset();
    ns.run(|| {
        let mut ev = CtEvents::open().unwrap();
        let mut ct = Conntrack::open().unwrap();
        assert!(ev.try_recv().unwrap().is_none());
        let e = sample_entries().remove(0).1; // TCP with SNAT
        assert_eq!(
            ct.install(std::slice::from_ref(&e)).unwrap(),
            vec![InstallOutcome::Created]
        );
        let got = next_event(&mut ev);
        assert_eq!(got.kind, CtEventKind::New);
        assert_eq!(got.origin_portid, ct.port_id());
        assert_same("event new", &e, &got.entry);

        let mut upd = e.clone();
        upd.mark = 5;
        assert_eq!(ct.install(&[upd]).unwrap(), vec![InstallOutcome::Updated]);
        let got = next_event(&mut ev);
        assert_eq!(got.kind, CtEventKind::Update);
        assert_eq!(got.origin_portid, ct.port_id());
        assert_eq!(got.entry.mark, 5);

        assert_eq!(ct.delete(&[e.key()]).unwrap(), vec![DeleteOutcome::Deleted]);
        let got = next_event(&mut ev);
        assert_eq!(got.kind, CtEventKind::Destroy);
        assert_eq!(got.origin_portid, ct.port_id());
        assert_eq!(got.entry.orig, e.orig);
        assert_eq!(got.entry.reply, e.reply);
    });
    // The CLI's insert carries the CLI's port id, not ours.
    let own = ns.run(|| {
        let ev = CtEvents::open().unwrap();
        let ct = Conntrack::open().unwrap();
        (ev, ct)
    });
    let (mut ev, ct) = own;
    ns.exec(
        &[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            "10.9.9.9",
            "-d",
            "192.0.2.9",
            "--sport",
            "9",
            "--dport",
            "99",
            "-t",
            "30",
        ],
        None,
    );
    let got = next_event(&mut ev);
    assert_eq!(got.kind, CtEventKind::New);
    assert_ne!(got.origin_portid, ct.port_id());
    assert_ne!(got.origin_portid, 0);
    println!(
        "CLI insert origin port id {} (ours {})",
        got.origin_portid,
        ct.port_id()
    );
}

#[test]
fn conntrack_event_overrun_is_reported() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.run(|| {
        // A tiny receive buffer so a few thousand events overflow it.
        let mut ev =
            CtEvents::open_with(carp_user::conntrack::netlink::EventGroups::ALL, 4096).unwrap();
        let mut ct = Conntrack::open().unwrap();
        let entries: Vec<CtEntry> = (0..5000u32)
            .map(|i| {
                plain(
                    tuple("10.1.0.1", "10.2.0.1", 17, ports(1024 + (i as u16), 53)),
                    60,
                )
            })
            .collect();
        assert!(ct
            .install(&entries)
            .unwrap()
            .iter()
            .all(|o| *o == InstallOutcome::Created));
        let (mut events, mut overruns) = (0, 0);
        while let Some(item) = ev.recv_timeout(Some(Duration::from_millis(200))).unwrap() {
            match item {
                CtEventItem::Event(_) => events += 1,
                CtEventItem::Overrun => overruns += 1,
                CtEventItem::Malformed(e) => panic!("{e}"),
            }
        }
        println!("events {events}, overruns {overruns}");
        assert!(overruns >= 1);
        // The stream goes on after an overrun.
        assert_eq!(
            ct.delete(&[entries[0].key()]).unwrap(),
            vec![DeleteOutcome::Deleted]
        );
        let got = next_event(&mut ev);
        assert_eq!(got.kind, CtEventKind::Destroy);
    });
}

/// Distinct UDP/TCP entries: 10.x.y.z -> 192.0.2.1 with varying ports.
fn bulk(n: u32) -> Vec<CtEntry> {
    (0..n)
        .map(|i| {
            let src = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let orig = Tuple {
                src,
                dst: ip("192.0.2.1"),
                proto: if i % 2 == 0 { 6 } else { 17 },
                l4: ports(1024 + (i % 50000) as u16, 443),
            };
            if i % 2 == 0 {
                established(orig)
            } else {
                plain(orig, 120)
            }
        })
        .collect()
}

#[test]
fn conntrack_bulk_100k() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctt");
    ns.run(|| {
        let n = 100_000;
        let entries = bulk(n);
        let mut ct = Conntrack::open().unwrap();
        let t = Instant::now();
        let out = ct.install(&entries).unwrap();
        let install = t.elapsed();
        let created = out
            .iter()
            .filter(|o| **o == InstallOutcome::Created)
            .count();
        assert_eq!(
            created,
            n as usize,
            "{:?}",
            out.iter().find(|o| **o != InstallOutcome::Created)
        );
        let t = Instant::now();
        let r0 = thread_cpu();
        let mut count = 0u64;
        let st = ct.dump_with(CtFamily::All, |_| count += 1).unwrap();
        let dump = t.elapsed();
        let r1 = thread_cpu();
        println!(
            "install {n}: {install:?}; dump: {dump:?} (user {:?}, sys {:?}); stats {st:?}",
            r1.0 - r0.0,
            r1.1 - r0.1
        );
        assert_eq!(count, n as u64);
        assert_eq!(st.unparsable, 0);
        // Re-install everything: all become updates.
        let t = Instant::now();
        let out = ct.install(&entries).unwrap();
        println!("re-install (update) {n}: {:?}", t.elapsed());
        assert!(out.iter().all(|o| *o == InstallOutcome::Updated));
        let keys: Vec<CtKey> = entries.iter().map(|e| e.key()).collect();
        let t = Instant::now();
        let out = ct.delete(&keys).unwrap();
        println!("delete {n}: {:?}", t.elapsed());
        assert!(out.iter().all(|o| *o == DeleteOutcome::Deleted));
    });
}

// ---------------------------------------------------------------------------
// Golden capture (ignored; run explicitly to regenerate the test data)
// ---------------------------------------------------------------------------

fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ctnetlink")
}

#[test]
#[ignore = "regenerates tests/data/ctnetlink from the kernel"]
fn capture_golden() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("ctgold");
    ns.ruleset();
    let dir = golden_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (mut ev, mut ct) = ns.run(|| (CtEvents::open().unwrap(), Conntrack::open().unwrap()));
    let cli: &[(&str, &[&str])] = &[
        (
            "tcp_snat",
            &[
                "-p",
                "tcp",
                "-s",
                "10.0.0.1",
                "-d",
                "192.0.2.1",
                "--sport",
                "40000",
                "--dport",
                "80",
                "--state",
                "ESTABLISHED",
                "-t",
                "300",
                "-u",
                "SEEN_REPLY,ASSURED",
                "--src-nat",
                "198.51.100.1:1025",
            ],
        ),
        (
            "tcp_dnat",
            &[
                "-p",
                "tcp",
                "-s",
                "10.0.0.6",
                "-d",
                "192.0.2.80",
                "--sport",
                "40000",
                "--dport",
                "80",
                "--state",
                "ESTABLISHED",
                "-t",
                "300",
                "--dst-nat",
                "10.1.1.1:8080",
            ],
        ),
        (
            "udp",
            &[
                "-p",
                "udp",
                "-s",
                "10.0.0.1",
                "-d",
                "192.0.2.53",
                "--sport",
                "5353",
                "--dport",
                "53",
                "-t",
                "30",
            ],
        ),
        (
            "icmp",
            &[
                "-p",
                "icmp",
                "-s",
                "10.0.0.1",
                "-d",
                "192.0.2.1",
                "--icmp-type",
                "8",
                "--icmp-code",
                "0",
                "--icmp-id",
                "1234",
                "-t",
                "30",
            ],
        ),
        (
            "icmp6",
            &[
                "-p",
                "icmpv6",
                "-s",
                "2001:db8::1",
                "-d",
                "2001:db8::2",
                "--icmpv6-type",
                "128",
                "--icmpv6-code",
                "0",
                "--icmpv6-id",
                "77",
                "-t",
                "30",
            ],
        ),
        (
            "mark",
            &[
                "-p",
                "udp",
                "-s",
                "10.0.0.3",
                "-d",
                "192.0.2.9",
                "--sport",
                "1000",
                "--dport",
                "2000",
                "-t",
                "60",
                "-m",
                "42",
            ],
        ),
        (
            "zone",
            &[
                "-p",
                "udp",
                "-s",
                "10.0.0.4",
                "-d",
                "192.0.2.9",
                "--sport",
                "1000",
                "--dport",
                "2000",
                "-t",
                "60",
                "-w",
                "7",
            ],
        ),
        (
            "tcp6",
            &[
                "-p",
                "tcp",
                "-s",
                "2001:db8::1",
                "-d",
                "2001:db8::2",
                "--sport",
                "40000",
                "--dport",
                "443",
                "--state",
                "ESTABLISHED",
                "-t",
                "300",
            ],
        ),
    ];
    for (name, args) in cli {
        let mut a = vec!["conntrack", "-I"];
        a.extend_from_slice(args);
        ns.exec(&a, None);
        let raw = raw_recv(&ev);
        if *name == "tcp_snat" {
            // The NEW event of the first insert is golden too.
            let m = parse_message(&raw).unwrap();
            println!(
                "event_new_tcp_snat: flags {:#x} pid {} {:?}",
                m.flags, m.portid, m.entry
            );
            std::fs::write(dir.join("event_new_tcp_snat.bin"), &raw).unwrap();
        }
    }
    // Entries the CLI cannot make here (labels need connlabel.conf; the
    // CLI has no helper option): installed through our API.
    let mut lab = [0u8; 16];
    lab[0] = 0x21;
    lab[15] = 0x80;
    let labelled = CtEntry {
        labels: Some(lab),
        ..established(tuple("10.0.0.7", "192.0.2.7", 6, ports(40007, 22)))
    };
    let mut helped = established(tuple("10.0.0.8", "192.0.2.21", 6, ports(40021, 21)));
    helped.helper = Some("ftp".into());
    let out = ns.run(|| ct.install(&[labelled.clone(), helped.clone()]).unwrap());
    assert_eq!(out, vec![InstallOutcome::Created, InstallOutcome::Created]);
    let by_orig: HashMap<IpAddr, &str> = [
        ("10.0.0.1", 6u8, "tcp_snat"),
        ("10.0.0.6", 6, "tcp_dnat"),
        ("10.0.0.3", 17, "mark"),
        ("10.0.0.4", 17, "zone"),
        ("10.0.0.7", 6, "labels"),
        ("10.0.0.8", 6, "helper"),
    ]
    .iter()
    .map(|(a, _, n)| (ip(a), *n))
    .collect();
    let mut seen = 0;
    ns.run(|| {
        ct.dump_raw(CtFamily::All, |msg| {
            let m = parse_message(msg).unwrap();
            let name = match (m.entry.orig.src, m.entry.orig.proto) {
                (IpAddr::V4(a), 17) if a.octets() == [10, 0, 0, 1] => "udp",
                (IpAddr::V4(a), 1) if a.octets() == [10, 0, 0, 1] => "icmp",
                (IpAddr::V6(_), 58) => "icmp6",
                (IpAddr::V6(_), 6) => "tcp6",
                (a, _) => by_orig[&a],
            };
            std::fs::write(dir.join(format!("dump_{name}.bin")), msg).unwrap();
            println!("dump_{name}: {:?}", m.entry);
            seen += 1;
        })
        .unwrap();
    });
    assert_eq!(seen, 10);
    // Events: an update from the CLI and a destroy (our installs' NEW
    // events are still queued: drop them first).
    while ev.try_recv().unwrap().is_some() {}
    ns.exec(
        &["conntrack", "-U", "-p", "udp", "-s", "10.0.0.3", "-m", "43"],
        None,
    );
    ns.exec(&["conntrack", "-D", "-p", "tcp", "-s", "10.0.0.1"], None);
    let raw_events = [raw_recv(&ev), raw_recv(&ev)];
    for (i, name) in ["event_update_mark", "event_destroy_tcp_snat"]
        .iter()
        .enumerate()
    {
        let m = parse_message(&raw_events[i]).unwrap();
        println!(
            "{name}: kind {:?} flags {:#x} pid {} {:?}",
            m.kind, m.flags, m.portid, m.entry
        );
        std::fs::write(dir.join(format!("{name}.bin")), &raw_events[i]).unwrap();
    }
}

/// One raw datagram from the event socket (for golden capture).
fn raw_recv(ev: &CtEvents) -> Vec<u8> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(ev);
    let mut buf = vec![0u8; 65536];
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; buf is writable for its length.
    let n = unsafe {
        libc::poll(&mut p, 1, 5000);
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert!(n > 0, "no event");
    buf.truncate(n as usize);
    buf
}

/// (user, system) CPU time of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage fills the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}
