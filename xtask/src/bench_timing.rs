//! `cargo xtask bench timing`: does the MASTER's advert timing hold while its
//! metrics endpoint and control socket are flooded?
//!
//! A pair of release-built controllers on the lab (`Pair::standard`: fw1
//! MASTER with advskew 0, fw2 BACKUP). fw1's LAN adverts are captured on the
//! LAN switch (kernel receive timestamps, `carp_tests::watch::Capture`) for
//! `--secs` seconds in each condition:
//!
//! - `idle`: nothing else;
//! - `scrape flood`: `--clients` threads in fw1's namespace, each fetching
//!   `GET /metrics` over a fresh TCP connection as fast as it is answered;
//! - `control flood`: `--clients` threads sending `{"cmd":"status"}` on the
//!   control socket as fast as they are answered, plus 2 × the connection cap
//!   of idle connections held open (re-opened when the server drops them);
//! - `both`: the two floods at once.
//!
//! Per condition: adverts seen, and p50/p99/max of |interval − expected|
//! (expected = advbase + advskew/256). Under a flood, p99 above 1 ms or a max
//! above 5 ms is a FAIL and the command exits non-zero.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use carp_tests::lab::{Router, Switch, LAN_VHID};
use carp_tests::netns::{cleanup_stale, PREFIX_ROOT};
use carp_tests::pair::Pair;
use carp_tests::watch::{Capture, Frame};

use crate::interrupt::{check_interrupted, install_signal_handlers};

/// p99 of |interval − expected| allowed under a flood.
const P99_LIMIT: Duration = Duration::from_millis(1);
/// Largest |interval − expected| allowed under a flood.
const MAX_LIMIT: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Idle,
    Scrape,
    Control,
    Both,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::Idle,
        Condition::Scrape,
        Condition::Control,
        Condition::Both,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Idle => "idle",
            Condition::Scrape => "scrape flood",
            Condition::Control => "control flood",
            Condition::Both => "both floods",
        }
    }

    fn scrape(self) -> bool {
        matches!(self, Condition::Scrape | Condition::Both)
    }

    fn control(self) -> bool {
        matches!(self, Condition::Control | Condition::Both)
    }
}

/// Interval errors of one condition.
#[derive(Debug, PartialEq)]
pub(super) struct Stats {
    pub(super) adverts: usize,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) max: Duration,
}

/// |interval − expected| over consecutive advert times (sorted first);
/// `None` with fewer than two adverts.
pub(super) fn interval_errors(times: &mut [Instant], expected: Duration) -> Option<Stats> {
    times.sort();
    let mut errs: Vec<Duration> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).abs_diff(expected))
        .collect();
    if errs.is_empty() {
        return None;
    }
    errs.sort();
    // Nearest rank.
    let rank = |p: f64| errs[((p * errs.len() as f64).ceil() as usize).clamp(1, errs.len()) - 1];
    Some(Stats {
        adverts: times.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: *errs.last().expect("not empty"),
    })
}

/// Load generators; stopped and joined on drop.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    requests: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Flood {
    fn start(pair: &Pair, cond: Condition, clients: usize) -> anyhow::Result<Flood> {
        let mut f = Flood {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            requests: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
        };
        if cond.scrape() {
            let ns = pair.router_ns(Router::Fw1).name().to_owned();
            let listen = pair.params[0]
                .metrics_listen
                .clone()
                .context("fw1 has no metrics_listen")?;
            for _ in 0..clients {
                let (stop, n, bad) = f.counters();
                let (ns, listen) = (ns.clone(), listen.clone());
                f.threads.push(std::thread::spawn(move || {
                    enter_netns(&ns);
                    while !stop.load(Ordering::Relaxed) {
                        match scrape(&listen) {
                            Ok(()) => n.fetch_add(1, Ordering::Relaxed),
                            Err(_) => bad.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
        }
        if cond.control() {
            let sock = pair.lab.control_socket(Router::Fw1);
            for _ in 0..clients {
                let (stop, n, bad) = f.counters();
                let sock = sock.clone();
                f.threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match status_requests(&sock, &stop, &n) {
                            Ok(()) => {}
                            Err(_) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                }));
            }
            // Idle connections up to and beyond the cap.
            let (stop, _, bad) = f.counters();
            f.threads.push(std::thread::spawn(move || {
                hold_idle(&sock, 2 * carp_user::api::MAX_CONNECTIONS, &stop, &bad)
            }));
        }
        Ok(f)
    }

    fn counters(&self) -> (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) {
        (
            Arc::clone(&self.stop),
            Arc::clone(&self.requests),
            Arc::clone(&self.refused),
        )
    }

    /// Stops the threads; (requests answered, connections refused or failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.requests.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(super) fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// One `GET /metrics` over a fresh connection, read to the end.
pub(super) fn scrape(listen: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(listen)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::with_capacity(16 * 1024);
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200"));
    }
    Ok(())
}

/// Status requests on one connection until it fails or `stop`.
fn status_requests(sock: &Path, stop: &AtomicBool, n: &AtomicU64) -> std::io::Result<()> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        w.write_all(b"{\"cmd\":\"status\"}\n")?;
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed"));
        }
        n.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Keeps `count` connections open without a word; re-opens those the server
/// closed (its cap and idle timeout), counting refusals.
fn hold_idle(sock: &Path, count: usize, stop: &AtomicBool, bad: &AtomicU64) {
    let mut conns: Vec<UnixStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        conns.retain(|c| {
            let mut b = [0u8; 1];
            c.set_nonblocking(true).ok();
            // Still open if a read would block.
            matches!((&*c).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while conns.len() < count {
            match UnixStream::connect(sock) {
                Ok(c) => conns.push(c),
                Err(_) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// fw1's LAN adverts (not bow-outs) as seen on its LAN switch port.
fn fw1_adverts(frames: &[Frame]) -> Vec<Instant> {
    frames
        .iter()
        .filter(|f| f.switch == Switch::Lan && f.router == Router::Fw1)
        .filter(|f| f.kind() == "advert" && f.vmac_vhid() == Some(LAN_VHID))
        .map(|f| f.at)
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(secs: u64, clients: usize) -> anyhow::Result<()> {
    if secs < 3 {
        bail!("--secs must be at least 3");
    }
    install_signal_handlers()?;
    let removed = cleanup_stale(PREFIX_ROOT)?;
    if !removed.is_empty() {
        println!("removed stale namespaces: {}", removed.join(" "));
    }
    crate::build_release_carp()?;

    let mut pair = Pair::standard();
    let p = &pair.params[0];
    let expected = Duration::from_nanos(
        u64::from(p.advbase) * 1_000_000_000 + u64::from(p.advskew_lan) * 1_000_000_000 / 256,
    );
    println!(
        "advert timing: fw1 (MASTER, release build) LAN adverts on the LAN switch, {secs} s per \
         condition, {clients} flood clients; expected interval {:.3} ms; FAIL under a flood if \
         p99 > {} ms or max > {} ms",
        ms(expected),
        ms(P99_LIMIT),
        ms(MAX_LIMIT)
    );
    let mut failed = Vec::new();
    println!(
        "{:<14} {:>8} {:>10} {:>10} {:>10} {:>12} {:>10}  verdict",
        "condition", "adverts", "p50 ms", "p99 ms", "max ms", "requests", "refused"
    );
    for cond in Condition::ALL {
        check_interrupted()?;
        let flood = Flood::start(&pair, cond, clients)?;
        // Let the flood reach its pace before measuring.
        std::thread::sleep(Duration::from_millis(500));
        let capture = Capture::start_on(&pair.lab, &[Switch::Lan])?;
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let frames = capture.stop()?;
        let (requests, refused) = flood.finish();
        let mut times = fw1_adverts(&frames);
        let Some(s) = interval_errors(&mut times, expected) else {
            bail!(
                "{}: fewer than two adverts from fw1\n{}",
                cond.name(),
                pair.logs()
            );
        };
        let verdict = if cond == Condition::Idle {
            "INFO"
        } else if s.p99 > P99_LIMIT || s.max > MAX_LIMIT {
            failed.push(cond.name());
            "FAIL"
        } else {
            "PASS"
        };
        println!(
            "{:<14} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>12} {:>10}  {verdict}",
            cond.name(),
            s.adverts,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            requests,
            refused
        );
        // Still MASTER: a flood must not have cost the election.
        if pair.node(Router::Fw1).state(LAN_VHID).as_deref() != Some("MASTER") {
            bail!("{}: fw1 lost MASTER\n{}", cond.name(), pair.logs());
        }
    }
    if failed.is_empty() {
        println!("advert timing under load: PASS");
        Ok(())
    } else {
        bail!("advert timing under load: FAIL ({})", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_errors_are_absolute_and_ranked() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Intervals 1000, 1002, 999, 1000: errors 0, 2, 1, 0 ms.
        let mut times = vec![at(2002), at(0), at(1000), at(3001), at(4001)];
        let st = interval_errors(&mut times, s).expect("stats");
        assert_eq!(st.adverts, 5);
        assert_eq!(st.p50, Duration::from_millis(0));
        assert_eq!(st.p99, Duration::from_millis(2));
        assert_eq!(st.max, Duration::from_millis(2));
        assert_eq!(interval_errors(&mut [t0], s), None);
    }
}
