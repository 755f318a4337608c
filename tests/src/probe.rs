//! A millisecond ICMP probe run from inside a lab namespace: echo requests to
//! a target every `interval` (1 ms by default) for a bounded time, each reply
//! matched to its request, so that an outage shows up as the longest silence
//! between replies and two routers answering at once show up as duplicates.
//! The target is IPv4 (ICMP) or IPv6 (ICMPv6); only the socket, the echo
//! types and what the raw socket delivers differ.
//!
//! The probe thread enters the namespace with `setns(2)` on
//! `/run/netns/NAME` (what `ip netns exec` does, for one thread only) and opens
//! a raw ICMP or ICMPv6 socket there; the socket stays in that namespace, so a
//! second thread can receive on it. Requests carry a per-probe random token
//! and a 64-bit sequence number in the payload: the 16-bit ICMP sequence
//! wraps after 65 s at 1 ms, and other probes or pings in the same namespace
//! must not be counted.
use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::util::inet_checksum;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// `ICMP_FILTER` (include/uapi/linux/icmp.h), a `SOL_RAW` option: a bit mask
/// of ICMP types the raw socket must NOT receive. libc does not export it.
const ICMP_FILTER: libc::c_int = 1;
/// `ICMPV6_FILTER` (include/uapi/linux/icmpv6.h), a `SOL_ICMPV6` option: a
/// 256-bit mask (`struct icmp6_filter`) of ICMPv6 types to block. Not in libc.
const ICMPV6_FILTER: libc::c_int = 1;
const ICMP_HEADER_LEN: usize = 8;
/// Token (8) + sequence (8).
const PAYLOAD_LEN: usize = 16;

/// How to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Time between requests (1 ms: the resolution of the measured gap).
    pub interval: Duration,
    /// How long to send; the number of requests is `duration / interval`.
    pub duration: Duration,
    /// How long to wait for outstanding replies after the last request.
    pub reply_wait: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            interval: Duration::from_millis(1),
            duration: Duration::from_secs(5),
            reply_wait: Duration::from_millis(500),
        }
    }
}

/// What a probe saw. Times marked "offset" are from the first request.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    pub target: IpAddr,
    pub interval: Duration,
    /// Requests sent.
    pub sent: u64,
    /// Requests that got at least one reply.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Replies beyond the first for the same request: two nodes forwarding
    /// or answering the same packet (split brain, or a backup that forwards).
    pub duplicates: u64,
    /// The longest time between consecutive replies, counting the first
    /// request and the last request as boundaries (so a target that never
    /// answers again shows the outage up to the end): the outage.
    pub max_gap: Duration,
    /// Offset of the last reply before the longest gap (or of the start).
    pub gap_start: Duration,
    /// Offset of the first reply after the longest gap (or of the end).
    pub gap_end: Duration,
    /// The longest run of consecutive requests without a reply.
    pub max_lost_run: u64,
    /// Sequence number of the first request of that run.
    pub max_lost_run_first_seq: Option<u64>,
    pub rtt_min: Option<Duration>,
    pub rtt_avg: Option<Duration>,
    pub rtt_max: Option<Duration>,
    /// From the first request to the end of the reply wait.
    pub elapsed: Duration,
    /// Requests the kernel refused to send (e.g. no route): counted as lost.
    pub send_errors: u64,
    /// The distinct source addresses of the replies, in order of first
    /// appearance (one, unless the target is a broadcast address or
    /// something rewrites sources).
    pub responders: Vec<IpAddr>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "probe {} every {:?}: sent {}, received {}, lost {} (longest run {}, send errors {}), \
             duplicates {}, max gap {:.1} ms (from +{:.3} s to +{:.3} s)",
            self.target,
            self.interval,
            self.sent,
            self.received,
            self.lost,
            self.max_lost_run,
            self.send_errors,
            self.duplicates,
            self.max_gap.as_secs_f64() * 1e3,
            self.gap_start.as_secs_f64(),
            self.gap_end.as_secs_f64(),
        )?;
        if let (Some(min), Some(avg), Some(max)) = (self.rtt_min, self.rtt_avg, self.rtt_max) {
            write!(f, ", rtt min/avg/max {min:.0?}/{avg:.0?}/{max:.0?}")?;
        }
        Ok(())
    }
}

impl ProbeReport {
    /// Replies came again after the longest run of lost requests (or none
    /// was lost): the target was reachable at the end, e.g. after a failover.
    pub fn continued(&self) -> bool {
        self.received > 0
            && self
                .max_lost_run_first_seq
                .is_none_or(|first| first + self.max_lost_run < self.sent)
    }
}

/// A probe running in its own threads.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<ProbeReport>>>,
}

impl Probe {
    /// Starts probing `target` (IPv4 or IPv6) from namespace `netns` (a name
    /// under /run/netns). Returns once the socket is open and sending has
    /// begun, so a fault injected after this call falls inside the probe.
    /// Needs root (`setns` and raw sockets need CAP_SYS_ADMIN / CAP_NET_RAW).
    pub fn start(
        netns: &str,
        target: impl Into<IpAddr>,
        opts: ProbeOptions,
    ) -> anyhow::Result<Probe> {
        let target = target.into();
        if opts.interval.is_zero() {
            bail!("probe interval must be > 0");
        }
        let ns_path = format!("/run/netns/{netns}");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let stop2 = stop.clone();
        let netns_owned = netns.to_owned();
        let handle = thread::Builder::new()
            .name(format!("probe-{netns}"))
            .spawn(move || {
                let sock = match open_socket(&ns_path, target) {
                    Ok(s) => s,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        bail!("probe from {netns_owned}: {msg}");
                    }
                };
                run_probe(sock, target, opts, &stop2, ready_tx)
            })
            .context("spawning the probe thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Probe {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e.context(format!("starting the probe in {netns}")))
            }
            Err(_) => match handle.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the probe thread in {netns} died before it was ready"),
            },
        }
    }

    /// Probes for `opts.duration` and returns the report (blocking).
    pub fn run(
        netns: &str,
        target: impl Into<IpAddr>,
        opts: ProbeOptions,
    ) -> anyhow::Result<ProbeReport> {
        Probe::start(netns, target, opts)?.wait()
    }

    /// Stops sending early; [`Probe::wait`] then waits for the replies.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the end of the probe (duration plus reply wait).
    pub fn wait(mut self) -> anyhow::Result<ProbeReport> {
        let handle = self.handle.take().expect("handle is only taken here");
        match handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the probe thread panicked"),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Bounded anyway; stop early so an abandoned probe ends soon.
        self.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `setsockopt(fd, level, name, filter)` for the ICMP type filters.
fn set_filter<T>(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    filter: &T,
) -> anyhow::Result<()> {
    // SAFETY: a valid fd, and a pointer/length pair to a live `T`.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            level,
            name,
            (filter as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(ICMP type filter)");
    }
    Ok(())
}

fn open_socket(ns_path: &str, target: IpAddr) -> anyhow::Result<Socket> {
    let ns = File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    // Only this thread moves; the process and the caller stay where they are.
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns({ns_path})"))?;
    // Receive echo replies only: everything else (our own requests never
    // loop back, but unreachables, other pings' requests, and for ICMPv6
    // neighbour discovery) is filtered in the kernel.
    let sock = if target.is_ipv4() {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("opening a raw ICMP socket")?;
        let mask: u32 = !(1u32 << ICMP_ECHO_REPLY);
        set_filter(&sock, libc::SOL_RAW, ICMP_FILTER, &mask)?;
        // Replies to a broadcast probe come from each responder.
        sock.set_broadcast(true).context("SO_BROADCAST")?;
        sock
    } else {
        // The kernel computes the ICMPv6 checksum of what a raw ICMPv6
        // socket sends (it covers the IPv6 pseudo-header, which only the
        // kernel knows once it picked the source).
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .context("opening a raw ICMPv6 socket")?;
        // A set bit blocks that type (ICMP6_FILTER_SETPASS clears it).
        let mut mask = [u32::MAX; 8];
        mask[usize::from(ICMPV6_ECHO_REPLY >> 5)] &= !(1u32 << (ICMPV6_ECHO_REPLY & 31));
        set_filter(&sock, libc::SOL_ICMPV6, ICMPV6_FILTER, &mask)?;
        sock
    };
    // Not connected: a connected raw socket only receives from the peer
    // address, and replies to a broadcast probe come from each responder.
    // Replies are told apart by ident and token instead.
    // Room for a few seconds of replies if the receiver is descheduled.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .context("SO_RCVTIMEO")?;
    Ok(sock)
}

fn random_u64() -> u64 {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(N.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// An echo request of this probe: ICMP for an IPv4 target (checksummed
/// here), ICMPv6 for an IPv6 one (the kernel fills the checksum in).
fn echo_request(v6: bool, ident: u16, token: u64, seq: u64) -> [u8; ICMP_HEADER_LEN + PAYLOAD_LEN] {
    let mut p = [0u8; ICMP_HEADER_LEN + PAYLOAD_LEN];
    p[0] = if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8..16].copy_from_slice(&token.to_be_bytes());
    p[16..24].copy_from_slice(&seq.to_be_bytes());
    if !v6 {
        let sum = inet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The 64-bit sequence of an echo reply to this probe, or `None` for
/// anything else. `pkt` is what the raw socket delivered: a whole IPv4
/// datagram for ICMP, the ICMPv6 message alone (no IPv6 header) for ICMPv6.
fn parse_reply(pkt: &[u8], v6: bool, ident: u16, token: u64) -> Option<u64> {
    let (icmp, reply) = if v6 {
        (pkt, ICMPV6_ECHO_REPLY)
    } else {
        let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
        if ihl < 20 || *pkt.get(9)? != 1 {
            return None;
        }
        (pkt.get(ihl..)?, ICMP_ECHO_REPLY)
    };
    if icmp.len() < ICMP_HEADER_LEN + PAYLOAD_LEN || icmp[0] != reply || icmp[1] != 0 {
        return None;
    }
    if u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    if u64::from_be_bytes(icmp[8..16].try_into().ok()?) != token {
        return None;
    }
    Some(u64::from_be_bytes(icmp[16..24].try_into().ok()?))
}

fn run_probe(
    sock: Socket,
    target: IpAddr,
    opts: ProbeOptions,
    stop: &AtomicBool,
    ready: mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<ProbeReport> {
    let token = random_u64();
    let ident = (token >> 48) as u16;
    let count = (opts.duration.as_nanos() / opts.interval.as_nanos()).max(1) as u64;

    let rx_sock = sock.try_clone().context("dup of the probe socket")?;
    let rx_stop = Arc::new(AtomicBool::new(false));
    let rx_stop2 = rx_stop.clone();
    let receiver = thread::Builder::new()
        .name("probe-rx".into())
        .spawn(move || {
            let mut got: Vec<(u64, Instant, IpAddr)> = Vec::new();
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            let v6 = target.is_ipv6();
            while !rx_stop2.load(Ordering::Relaxed) {
                // recvfrom: the ICMPv6 socket delivers no IPv6 header, so the
                // responder's address comes from here (for both families).
                match rx_sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        // SAFETY: the kernel initialised the first `n` bytes.
                        let pkt =
                            unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                        let src = from.as_socket().map(|a| a.ip());
                        if let (Some(seq), Some(src)) = (parse_reply(pkt, v6, ident, token), src) {
                            got.push((seq, now, src));
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // E.g. ECONNREFUSED/EHOSTUNREACH reported on a connected
                    // raw socket: not a reply, keep listening.
                    Err(_) => {}
                }
            }
            got
        })
        .context("spawning the probe receiver")?;

    // Sleep precision: the default timer slack (50 µs) is a twentieth of the
    // interval; ask for 1 µs on this thread.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }

    let dest = SockAddr::from(SocketAddr::new(target, 0));
    let mut sent_at: Vec<Instant> = Vec::with_capacity(count as usize);
    let start = Instant::now();
    let _ = ready.send(Ok(()));
    let mut send_errors = 0u64;
    for seq in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + opts.interval * seq as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let pkt = echo_request(target.is_ipv6(), ident, token, seq);
        sent_at.push(Instant::now());
        // A send error (e.g. EHOSTUNREACH while a neighbour is unresolved)
        // is a lost probe, not a failed measurement.
        if sock.send_to(&pkt, &dest).is_err() {
            send_errors += 1;
        }
    }
    let last_send = sent_at.last().copied().unwrap_or(start);
    // Wait for the outstanding replies, but not longer than reply_wait.
    let wait_until = last_send + opts.reply_wait;
    while Instant::now() < wait_until {
        thread::sleep(Duration::from_millis(5));
    }
    rx_stop.store(true, Ordering::Relaxed);
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the probe receiver panicked"))?;
    let mut report = summarize(target, opts.interval, start, &sent_at, &got, Instant::now());
    report.send_errors = send_errors;
    Ok(report)
}

/// Builds the report from the send times (index = sequence) and the replies
/// in arrival order.
fn summarize(
    target: IpAddr,
    interval: Duration,
    start: Instant,
    sent_at: &[Instant],
    got: &[(u64, Instant, IpAddr)],
    end: Instant,
) -> ProbeReport {
    let sent = sent_at.len() as u64;
    let mut first_reply: Vec<Option<Instant>> = vec![None; sent_at.len()];
    let mut duplicates = 0u64;
    let mut arrivals: Vec<Instant> = Vec::with_capacity(got.len());
    let (mut rtt_min, mut rtt_max, mut rtt_sum) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
    let mut responders: Vec<IpAddr> = Vec::new();
    for &(seq, at, src) in got {
        let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|i| first_reply.get_mut(i))
        else {
            continue;
        };
        if !responders.contains(&src) {
            responders.push(src);
        }
        if slot.is_some() {
            duplicates += 1;
            continue;
        }
        *slot = Some(at);
        arrivals.push(at);
        let rtt = at.saturating_duration_since(sent_at[seq as usize]);
        rtt_min = rtt_min.min(rtt);
        rtt_max = rtt_max.max(rtt);
        rtt_sum += rtt;
    }
    let received = arrivals.len() as u64;

    // Boundaries: the first and the last request.
    let first = sent_at.first().copied().unwrap_or(start);
    let last = sent_at.last().copied().unwrap_or(start);
    let mut points = Vec::with_capacity(arrivals.len() + 2);
    points.push(first);
    points.extend(arrivals.iter().copied());
    points.push(last.max(*arrivals.last().unwrap_or(&last)));
    let (mut max_gap, mut gap_start, mut gap_end) = (Duration::ZERO, first, first);
    for w in points.windows(2) {
        let g = w[1].saturating_duration_since(w[0]);
        if g > max_gap {
            (max_gap, gap_start, gap_end) = (g, w[0], w[1]);
        }
    }

    let (mut run, mut best, mut best_first) = (0u64, 0u64, None);
    for (i, r) in first_reply.iter().enumerate() {
        if r.is_none() {
            run += 1;
            if run > best {
                best = run;
                best_first = Some(i as u64 + 1 - run);
            }
        } else {
            run = 0;
        }
    }

    ProbeReport {
        target,
        interval,
        sent,
        received,
        lost: sent - received,
        duplicates,
        max_gap,
        gap_start: gap_start.saturating_duration_since(first),
        gap_end: gap_end.saturating_duration_since(first),
        max_lost_run: best,
        max_lost_run_first_seq: best_first,
        rtt_min: (received > 0).then_some(rtt_min),
        rtt_avg: (received > 0).then(|| rtt_sum / received as u32),
        rtt_max: (received > 0).then_some(rtt_max),
        elapsed: end.saturating_duration_since(first),
        send_errors: 0,
        responders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{Lab, LabOptions, Router};
    use crate::netns::require_root;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn request_checksum_verifies_and_reply_parses() {
        let req = echo_request(false, 0x1234, 0xdead_beef_0102_0304, 70_000);
        assert_eq!(inet_checksum(&req), 0, "a correct checksum sums to zero");
        // Turn it into a reply inside a minimal IPv4 header.
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut icmp = req.to_vec();
        icmp[0] = ICMP_ECHO_REPLY;
        pkt.extend_from_slice(&icmp);
        assert_eq!(
            parse_reply(&pkt, false, 0x1234, 0xdead_beef_0102_0304),
            Some(70_000)
        );
        assert_eq!(
            parse_reply(&pkt, false, 0x1235, 0xdead_beef_0102_0304),
            None,
            "other ident"
        );
        assert_eq!(parse_reply(&pkt, false, 0x1234, 1), None, "other token");
        assert_eq!(parse_reply(&pkt[..30], false, 0x1234, 1), None, "truncated");
        assert_eq!(parse_reply(&[], false, 0x1234, 1), None);
        // Without its IPv4 header it is no reply.
        assert_eq!(
            parse_reply(&icmp, false, 0x1234, 0xdead_beef_0102_0304),
            None
        );
    }

    #[test]
    fn icmpv6_request_and_reply() {
        let token = 0xdead_beef_0102_0304;
        let req = echo_request(true, 0x1234, token, 70_000);
        assert_eq!(req[0], ICMPV6_ECHO_REQUEST);
        // The kernel checksums ICMPv6 (it needs the pseudo-header).
        assert_eq!(&req[2..4], &[0, 0]);
        // A raw ICMPv6 socket delivers the message without the IPv6 header.
        let mut reply = req;
        reply[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(parse_reply(&reply, true, 0x1234, token), Some(70_000));
        assert_eq!(
            parse_reply(&reply, true, 0x1235, token),
            None,
            "other ident"
        );
        assert_eq!(parse_reply(&reply, true, 0x1234, 1), None, "other token");
        assert_eq!(parse_reply(&req, true, 0x1234, token), None, "a request");
        assert_eq!(
            parse_reply(&reply, false, 0x1234, token),
            None,
            "ICMPv6 is no IPv4 datagram"
        );
        // An ICMP (v4) reply type is no ICMPv6 echo reply.
        reply[0] = ICMP_ECHO_REPLY;
        assert_eq!(parse_reply(&reply, true, 0x1234, token), None);
    }

    #[test]
    fn summary_counts_gaps_runs_and_duplicates() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let sent: Vec<Instant> = (0..10).map(|i| t0 + ms(i)).collect();
        // Replies to 0..=2, then nothing for 3..=6, then 7..=9; 8 answered twice.
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let b = IpAddr::V4(Ipv4Addr::BROADCAST);
        let mut got: Vec<(u64, Instant, IpAddr)> = [0u64, 1, 2, 7, 8, 9]
            .iter()
            .map(|&i| (i, t0 + ms(i), a))
            .collect();
        got.push((8, t0 + ms(8), b));
        got.push((999, t0, a)); // not one of ours: ignored
        let r = summarize(a, ms(1), t0, &sent, &got, t0 + ms(20));
        assert_eq!((r.sent, r.received, r.lost, r.duplicates), (10, 6, 4, 1));
        assert_eq!(r.max_lost_run, 4);
        assert_eq!(r.max_lost_run_first_seq, Some(3));
        assert_eq!(r.max_gap, ms(5));
        assert_eq!((r.gap_start, r.gap_end), (ms(2), ms(7)));
        assert_eq!(r.responders, vec![a, b]);
    }

    #[test]
    fn summary_of_a_dead_target_spans_the_whole_probe() {
        let t0 = Instant::now();
        let sent: Vec<Instant> = (0..100).map(|i| t0 + Duration::from_millis(i)).collect();
        let r = summarize(
            Ipv6Addr::LOCALHOST.into(),
            Duration::from_millis(1),
            t0,
            &sent,
            &[],
            t0,
        );
        assert_eq!((r.received, r.lost, r.max_lost_run), (0, 100, 100));
        assert_eq!(r.max_gap, Duration::from_millis(99));
        assert_eq!(r.rtt_avg, None);
    }

    #[test]
    fn probe_without_loss_and_with_a_200ms_outage() {
        if !require_root() {
            return;
        }
        let lab = Lab::build(LabOptions {
            with_wan: false,
            ..LabOptions::default()
        })
        .expect("lab");
        let target = Router::Fw1.lan_ip();
        // Warm up ARP so the first requests are not queued behind resolution.
        lab.client()
            .exec(["ping", "-c", "1", "-W", "1", &target.to_string()])
            .expect("warm-up ping");

        let opts = ProbeOptions {
            duration: Duration::from_millis(500),
            ..ProbeOptions::default()
        };
        let r = Probe::run(lab.client().name(), target, opts.clone()).expect("probe");
        eprintln!("clean: {r}");
        assert!(r.sent >= 490, "{r}");
        assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
        assert!(r.max_gap < Duration::from_millis(50), "{r}");

        let opts = ProbeOptions {
            duration: Duration::from_millis(1000),
            ..ProbeOptions::default()
        };
        let p = Probe::start(lab.client().name(), target, opts).expect("probe");
        thread::sleep(Duration::from_millis(300));
        lab.set_link(Router::Fw1, "lan0", false).unwrap();
        thread::sleep(Duration::from_millis(200));
        lab.set_link(Router::Fw1, "lan0", true).unwrap();
        let r = p.wait().expect("probe");
        eprintln!("outage: {r}");
        assert_eq!(r.duplicates, 0, "{r}");
        assert!(r.max_gap >= Duration::from_millis(190), "{r}");
        assert!(r.max_gap < Duration::from_millis(450), "{r}");
        assert!(r.lost >= 150, "{r}");
        assert!(
            r.gap_start >= Duration::from_millis(250) && r.gap_start < Duration::from_millis(400),
            "{r}"
        );
    }

    /// The ICMPv6 probe: echo requests to fw1's LAN IPv6 address, every one
    /// answered, from that address only.
    #[test]
    fn probe6_without_loss() {
        if !require_root() {
            return;
        }
        let lab = Lab::build(LabOptions {
            with_wan: false,
            ipv6: true,
            ..LabOptions::default()
        })
        .expect("lab");
        let target = Router::Fw1.lan_ip6();
        // Warm up neighbour discovery, as ARP above.
        lab.client()
            .exec(["ping", "-6", "-c", "1", "-W", "1", &target.to_string()])
            .expect("warm-up ping");
        let opts = ProbeOptions {
            duration: Duration::from_millis(500),
            ..ProbeOptions::default()
        };
        let r = Probe::run(lab.client().name(), target, opts).expect("probe");
        eprintln!("ipv6: {r}");
        assert_eq!(r.target, IpAddr::V6(target));
        assert!(r.sent >= 490, "{r}");
        assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
        assert!(r.max_gap < Duration::from_millis(50), "{r}");
        assert_eq!(r.responders, vec![IpAddr::V6(target)], "{r}");
    }

    #[test]
    fn probe_counts_duplicate_replies() {
        if !require_root() {
            return;
        }
        // Both routers answer a broadcast echo once allowed to: two replies
        // per request, as when two routers forward the same packet.
        let lab = Lab::build(LabOptions {
            with_wan: false,
            ..LabOptions::default()
        })
        .expect("lab");
        for r in Router::ALL {
            lab.router(r)
                .sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0")
                .unwrap();
        }
        let bcast = Ipv4Addr::new(10, 77, 0, 255);
        let opts = ProbeOptions {
            duration: Duration::from_millis(200),
            ..ProbeOptions::default()
        };
        let r = Probe::run(lab.client().name(), bcast, opts).expect("probe");
        eprintln!("broadcast: {r} from {:?}", r.responders);
        assert_eq!(r.lost, 0, "{r}");
        assert_eq!(r.duplicates, r.sent, "{r}");
        let mut resp = r.responders.clone();
        resp.sort();
        assert_eq!(
            resp,
            [Router::Fw1.lan_ip(), Router::Fw2.lan_ip()].map(IpAddr::V4)
        );
    }
}
