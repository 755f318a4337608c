//! Sessions through the stateful NAT lab ([`crate::lab::Lab::make_stateful`])
//! that only replicated connection state can carry across a failover, and
//! conntrack helpers to look at that state.
//!
//! * [`TcpEcho`]: a TCP echo server on the server and a client in the client
//!   namespace that sends a line every `interval` through the NAT and expects
//!   each one echoed, in order. With `nf_conntrack_tcp_loose=0`, a router
//!   without the session's conntrack entry drops its segments (`ct state
//!   invalid`) and answers the server's with a RST (the WAN VIP is local):
//!   the session dies. It runs over IPv6 as well (routed, no NAT: a router
//!   without the entry drops both directions as invalid).
//! * [`UdpStream`]: the client sends ONE datagram; the server then streams a
//!   datagram every `interval` back to the source address it saw (the WAN
//!   VIP and the NAT's port). Only the NAT binding can bring those back to
//!   the client; the client never refreshes it. Over IPv6 (routed, no NAT)
//!   the server sees the client's own address, and only the conntrack entry
//!   lets the stream through the forward filter (new connections may start
//!   only from the LAN).
//! * ICMP: the millisecond probe of [`crate::probe`] to the server (echo
//!   requests create new state on any router, so it continues either way; it
//!   measures the failover gap).
//!
//! Every flow runs on threads of the test process that entered the namespace
//! with `setns(2)` (the calling thread is untouched), sends only to lab
//! addresses, and is bounded in time (`max_duration`) and hence in count.
//!
//! A flow is *dead* when it fails (error, RST, EOF, echo out of order) or when
//! nothing arrives for more than `dead_after` while something is expected.
//! Stopping a flow drains it: the TCP client stops sending and waits for the
//! outstanding echoes, the UDP client waits for one more datagram, each at
//! most `dead_after` since the last arrival. So a session that silently died
//! at the fault is reported dead even if the scenario ends sooner than
//! `dead_after` after the fault.
use std::fmt;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::lab::{Lab, SERVER_IP, SERVER_IP6, WAN_VIP};
use crate::netns::NetNs;
use crate::probe::{Probe, ProbeOptions, ProbeReport};

/// TCP port of the echo server (on [`SERVER_IP`]).
pub const TCP_ECHO_PORT: u16 = 7101;
/// UDP port of the stream server (on [`SERVER_IP`]).
pub const UDP_STREAM_PORT: u16 = 7102;

/// How a flow runs.
#[derive(Clone, Debug)]
pub struct FlowOptions {
    /// Time between lines (TCP) or datagrams (UDP).
    pub interval: Duration,
    /// Nothing received for longer than this while something is expected:
    /// the flow is dead.
    pub dead_after: Duration,
    /// Hard bound of the whole flow, drain included.
    pub max_duration: Duration,
    /// How long [`TcpEcho::start`] / [`UdpStream::start`] wait for the first
    /// echo / datagram.
    pub start_timeout: Duration,
}

impl Default for FlowOptions {
    fn default() -> Self {
        FlowOptions {
            interval: Duration::from_millis(20),
            dead_after: Duration::from_secs(8),
            max_duration: Duration::from_secs(90),
            start_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    Tcp,
    Udp,
}

impl fmt::Display for FlowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlowKind::Tcp => "tcp echo",
            FlowKind::Udp => "udp stream",
        })
    }
}

/// What a flow saw. Offsets are from the flow's start (the connect, or the
/// client's first datagram).
#[derive(Clone, Debug)]
pub struct FlowReport {
    pub kind: FlowKind,
    /// Lines the client sent (TCP) / datagrams the server sent (UDP).
    pub sent: u64,
    /// Echoes (TCP) / datagrams (UDP) the client received.
    pub received: u64,
    /// Offset of every echo / datagram the client received.
    pub arrivals: Vec<Duration>,
    /// The longest time without an arrival while one was expected: between
    /// consecutive arrivals, and from the last one to the end if the flow died.
    pub max_stall: Duration,
    /// Offset where that stall began (the last arrival before it).
    pub stall_start: Duration,
    /// Why the flow died, or `None` if it was alive at the end.
    pub died: Option<String>,
    /// The client's address as the server saw it: with the NAT, the WAN VIP
    /// and a NAT port.
    pub server_saw: Option<SocketAddr>,
    /// From the start to the end of the drain (the offset of the end).
    pub elapsed: Duration,
}

impl FlowReport {
    /// Alive at the end and received something.
    pub fn survived(&self) -> bool {
        self.died.is_none() && self.received > 0
    }

    /// Arrivals after `offset` (e.g. after the fault).
    pub fn received_after(&self, offset: Duration) -> u64 {
        self.arrivals.iter().filter(|&&a| a > offset).count() as u64
    }

    /// Whether the server saw the client as the WAN VIP (the NAT was applied).
    pub fn nated(&self) -> bool {
        self.server_saw
            .is_some_and(|a| a.ip() == IpAddr::V4(WAN_VIP))
    }

    /// The longest time without an arrival that overlaps `from..to` (the
    /// failover), and the offset where it began: the run's longest stall
    /// ([`FlowReport::max_stall`]) may be scheduling noise elsewhere on a
    /// busy machine. A flow that died stalls from its last arrival to its end.
    pub fn stall_within(&self, from: Duration, to: Duration) -> (Duration, Duration) {
        let mut bounds = self.arrivals.clone();
        if self.died.is_some() {
            bounds.push(self.elapsed);
        }
        bounds
            .windows(2)
            .filter(|w| w[1] >= from && w[0] <= to)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .unwrap_or_default()
    }

    /// Moves every offset `by` later: onto the clock of something started
    /// `by` earlier than this flow.
    fn shift(&mut self, by: Duration) {
        for a in &mut self.arrivals {
            *a += by;
        }
        self.stall_start += by;
        self.elapsed += by;
    }
}

impl fmt::Display for FlowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (sent {}, received {}, max stall {:.1} ms from +{:.3} s, elapsed {:.3} s, \
             server saw {})",
            self.kind,
            match &self.died {
                None if self.received > 0 => "SURVIVED".to_owned(),
                None => "nothing received".to_owned(),
                Some(why) => format!("DIED ({why})"),
            },
            self.sent,
            self.received,
            self.max_stall.as_secs_f64() * 1e3,
            self.stall_start.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.server_saw
                .map_or_else(|| "nothing".to_owned(), |a| a.to_string()),
        )
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a name
/// under /run/netns); the caller's thread stays where it is.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    let path = format!("/run/netns/{ns}");
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns({path})"))?;
            f()
        })
        .with_context(|| format!("spawning thread {name}"))
}

fn join<T>(h: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    match h.join() {
        Ok(r) => r.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: thread panicked"),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        || e.kind() == ErrorKind::Interrupted
}

/// Stall bookkeeping shared by both clients.
struct Stalls {
    start: Instant,
    last: Instant,
    max: Duration,
    max_from: Instant,
    arrivals: Vec<Duration>,
}

impl Stalls {
    fn new(start: Instant) -> Stalls {
        Stalls {
            start,
            last: start,
            max: Duration::ZERO,
            max_from: start,
            arrivals: Vec::new(),
        }
    }

    fn arrival(&mut self, now: Instant) {
        self.note_gap(now);
        self.last = now;
        self.arrivals.push(now - self.start);
    }

    fn note_gap(&mut self, now: Instant) {
        let g = now.saturating_duration_since(self.last);
        if g > self.max {
            self.max = g;
            self.max_from = self.last;
        }
    }

    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }
}

// ----------------------------------------------------------------- TCP echo

/// A TCP echo session client -> NAT -> server (see the module doc).
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<anyhow::Result<FlowReport>>>,
    server: Option<JoinHandle<anyhow::Result<Option<SocketAddr>>>>,
    server_stop: Arc<AtomicBool>,
}

impl TcpEcho {
    /// Starts the echo server in `server_ns` on `server:port`, connects from
    /// `client_ns`, and returns once the first line came back (so the
    /// session is established through the NAT before any fault). `server`
    /// is IPv4 or IPv6.
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        server: impl Into<SocketAddr>,
        opts: FlowOptions,
    ) -> anyhow::Result<TcpEcho> {
        let server = server.into();
        let deadline = Instant::now() + opts.max_duration;
        let server_stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let sstop = server_stop.clone();
        let srv = spawn_in_netns(server_ns, "tcp-echo-server", move || {
            tcp_echo_server(server, sstop, deadline, ready_tx)
        })?;
        if ready_rx.recv_timeout(Duration::from_secs(3)).is_err() {
            server_stop.store(true, Ordering::Relaxed);
            return Err(join(srv, "tcp echo server")
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the tcp echo server never listened")));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (up_tx, up_rx) = mpsc::channel::<Result<(), String>>();
        let cstop = stop.clone();
        let copts = opts.clone();
        let cli = spawn_in_netns(client_ns, "tcp-echo-client", move || {
            tcp_echo_client(server, copts, cstop, deadline, up_tx)
        })?;
        let mut me = TcpEcho {
            stop,
            client: Some(cli),
            server: Some(srv),
            server_stop,
        };
        match up_rx.recv_timeout(opts.start_timeout + Duration::from_secs(3)) {
            Ok(Ok(())) => Ok(me),
            Ok(Err(why)) => {
                let r = me.finish_inner();
                bail!("tcp echo session never came up: {why} ({r:?})")
            }
            Err(_) => {
                let r = me.finish_inner();
                bail!("tcp echo session never came up ({r:?})")
            }
        }
    }

    /// Stops sending, drains (every sent line echoed, or `dead_after` of
    /// silence), closes, and returns the report.
    pub fn finish(mut self) -> anyhow::Result<FlowReport> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> anyhow::Result<FlowReport> {
        self.stop.store(true, Ordering::Relaxed);
        let client = self.client.take().context("finished twice")?;
        let rep = join(client, "tcp echo client");
        self.server_stop.store(true, Ordering::Relaxed);
        let saw = match self.server.take() {
            Some(s) => join(s, "tcp echo server")?,
            None => None,
        };
        let mut rep = rep?;
        rep.server_saw = saw;
        Ok(rep)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        if self.client.is_some() || self.server.is_some() {
            self.stop.store(true, Ordering::Relaxed);
            self.server_stop.store(true, Ordering::Relaxed);
            if let Some(c) = self.client.take() {
                let _ = c.join();
            }
            if let Some(s) = self.server.take() {
                let _ = s.join();
            }
        }
    }
}

/// Accepts one connection and echoes it until EOF, error, `stop` or `deadline`.
/// Returns the peer address it saw.
fn tcp_echo_server(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<Option<SocketAddr>> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let _ = ready.send(());
    let (mut conn, peer) = loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Ok(None);
        }
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if is_timeout(&e) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e).context("accept"),
        }
    };
    drop(listener);
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_millis(20)))?;
    conn.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            // RST (e.g. from a router without the session) and the like.
            Err(_) => break,
        }
    }
    Ok(Some(peer))
}

fn tcp_echo_client(
    server: SocketAddr,
    opts: FlowOptions,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    up: mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<FlowReport> {
    let mut conn = match TcpStream::connect_timeout(&server, opts.start_timeout) {
        Ok(c) => c,
        Err(e) => {
            let _ = up.send(Err(format!("connect to {server}: {e}")));
            return Err(e).with_context(|| format!("connecting to {server}"));
        }
    };
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_millis(5)))?;
    conn.set_write_timeout(Some(Duration::from_millis(200)))?;
    let start = Instant::now();
    let mut st = Stalls::new(start);
    let mut up = Some(up);
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut next_send = start;
    let mut line = Vec::<u8>::new();
    let mut buf = [0u8; 4096];
    let mut died: Option<String> = None;
    let mut draining = false;
    'run: loop {
        let now = Instant::now();
        if now >= deadline {
            if sent > echoed {
                died = Some(format!(
                    "max_duration reached with {} lines unechoed",
                    sent - echoed
                ));
            }
            break;
        }
        if !draining && stop.load(Ordering::Relaxed) {
            draining = true;
        }
        if draining && echoed == sent {
            break;
        }
        if let Some(tx) = &up {
            if now >= start + opts.start_timeout {
                let _ = tx.send(Err(format!("no echo within {:?}", opts.start_timeout)));
                died = Some("no first echo".into());
                break;
            }
        }
        // A stall is a silence while a line is outstanding.
        if sent > echoed && st.silent_for(now) > opts.dead_after {
            died = Some(format!(
                "no echo for {:.1} s ({} lines outstanding)",
                st.silent_for(now).as_secs_f64(),
                sent - echoed
            ));
            break;
        }
        if !draining && now >= next_send {
            let msg = format!("{sent}\n");
            if let Err(e) = conn.write_all(msg.as_bytes()) {
                died = Some(format!("write: {e}"));
                break;
            }
            sent += 1;
            next_send += opts.interval;
            if next_send < now {
                next_send = now + opts.interval;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => {
                died = Some("EOF from the server".into());
                break;
            }
            Ok(n) => {
                let at = Instant::now();
                for &b in &buf[..n] {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let got = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok());
                    line.clear();
                    if got != Some(echoed) {
                        died = Some(format!("echo out of order: got {got:?}, want {echoed}"));
                        break 'run;
                    }
                    echoed += 1;
                    st.arrival(at);
                    if let Some(tx) = up.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                died = Some(format!("read: {e}"));
                break;
            }
        }
    }
    let end = Instant::now();
    if died.is_some() && sent > echoed {
        st.note_gap(end);
    }
    if let Some(tx) = up.take() {
        let _ = tx.send(Err(died.clone().unwrap_or_else(|| "stopped".into())));
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(FlowReport {
        kind: FlowKind::Tcp,
        sent,
        received: echoed,
        arrivals: st.arrivals,
        max_stall: st.max,
        stall_start: st.max_from - start,
        died,
        server_saw: None,
        elapsed: end - start,
    })
}

// --------------------------------------------------------------- UDP stream

/// Datagrams the stream server sent, and the client address it saw.
type UdpServerResult = (u64, Option<SocketAddr>);

/// A UDP stream server -> NAT -> client that only the NAT binding created by
/// the client's single datagram can carry (see the module doc).
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    client: Option<JoinHandle<anyhow::Result<FlowReport>>>,
    server: Option<JoinHandle<anyhow::Result<UdpServerResult>>>,
    server_stop: Arc<AtomicBool>,
}

impl UdpStream {
    /// Starts the stream server in `server_ns` on `server`, sends the one
    /// datagram from `client_ns`, and returns once the first datagram of the
    /// stream arrived at the client. `server` is IPv4 or IPv6.
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        server: impl Into<SocketAddr>,
        opts: FlowOptions,
    ) -> anyhow::Result<UdpStream> {
        let server = server.into();
        let deadline = Instant::now() + opts.max_duration;
        let server_stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let sstop = server_stop.clone();
        let interval = opts.interval;
        let srv = spawn_in_netns(server_ns, "udp-stream-server", move || {
            udp_stream_server(server, interval, sstop, deadline, ready_tx)
        })?;
        if ready_rx.recv_timeout(Duration::from_secs(3)).is_err() {
            server_stop.store(true, Ordering::Relaxed);
            return Err(join(srv, "udp stream server")
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the udp stream server never bound")));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (up_tx, up_rx) = mpsc::channel::<Result<(), String>>();
        let cstop = stop.clone();
        let sstop = server_stop.clone();
        let copts = opts.clone();
        let cli = spawn_in_netns(client_ns, "udp-stream-client", move || {
            udp_stream_client(server, copts, cstop, sstop, deadline, up_tx)
        })?;
        let mut me = UdpStream {
            stop,
            client: Some(cli),
            server: Some(srv),
            server_stop,
        };
        match up_rx.recv_timeout(opts.start_timeout + Duration::from_secs(3)) {
            Ok(Ok(())) => Ok(me),
            Ok(Err(why)) => {
                let r = me.finish_inner();
                bail!("udp stream never came up: {why} ({r:?})")
            }
            Err(_) => {
                let r = me.finish_inner();
                bail!("udp stream never came up ({r:?})")
            }
        }
    }

    /// Drains (one more datagram, or `dead_after` of silence), stops the
    /// server and returns the report.
    pub fn finish(mut self) -> anyhow::Result<FlowReport> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> anyhow::Result<FlowReport> {
        self.stop.store(true, Ordering::Relaxed);
        let client = self.client.take().context("finished twice")?;
        let rep = join(client, "udp stream client");
        self.server_stop.store(true, Ordering::Relaxed);
        let (sent, saw) = match self.server.take() {
            Some(s) => join(s, "udp stream server")?,
            None => (0, None),
        };
        let mut rep = rep?;
        rep.sent = sent;
        rep.server_saw = saw;
        Ok(rep)
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server_stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// Waits for the client's datagram, then sends a datagram (an 8-byte
/// sequence number) every `interval` to the address it came from until
/// `stop` or `deadline`. Returns (datagrams sent, the address it saw).
fn udp_stream_server(
    addr: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<UdpServerResult> {
    let sock = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    let _ = ready.send(());
    let mut buf = [0u8; 64];
    let peer = loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Ok((0, None));
        }
        match sock.recv_from(&mut buf) {
            Ok((_, p)) => break p,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("udp recv_from"),
        }
    };
    // Later datagrams from the client (none are sent) would be ignored: the
    // stream goes to the address seen first, as a server's session would.
    let start = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let due = start + interval * seq as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep((due - now).min(Duration::from_millis(20)));
            continue;
        }
        // Unconnected: an ICMP error from a router without the binding does
        // not fail later sends. Errors (e.g. neighbour unresolved) are lost
        // datagrams, still counted as sent.
        let _ = sock.send_to(&seq.to_be_bytes(), peer);
        seq += 1;
    }
    Ok((seq, Some(peer)))
}

fn udp_stream_client(
    server: SocketAddr,
    opts: FlowOptions,
    stop: Arc<AtomicBool>,
    server_stop: Arc<AtomicBool>,
    deadline: Instant,
    up: mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<FlowReport> {
    let any: IpAddr = if server.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind((any, 0)).context("binding the udp client")?;
    sock.connect(server)
        .with_context(|| format!("connect udp {server}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let start = Instant::now();
    let mut st = Stalls::new(start);
    let mut up = Some(up);
    let mut received = 0u64;
    let mut died: Option<String> = None;
    let mut stopped_at: Option<Instant> = None;
    let mut hellos = 0u32;
    let mut next_hello = start;
    let mut buf = [0u8; 64];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(tx) = &up {
            // Before the first datagram of the stream only: the hello (or
            // its ARP resolution) may be lost; bounded.
            if now >= start + opts.start_timeout {
                let _ = tx.send(Err(format!(
                    "no datagram within {:?} ({hellos} hellos)",
                    opts.start_timeout
                )));
                died = Some("no first datagram".into());
                break;
            }
            if now >= next_hello && hellos < 20 {
                let _ = sock.send(b"hello");
                hellos += 1;
                next_hello = now + Duration::from_millis(250);
            }
        }
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        if let Some(t) = stopped_at {
            // Drain: alive once a datagram arrived after the stop.
            if st.last > t {
                break;
            }
        }
        if up.is_none() && st.silent_for(now) > opts.dead_after {
            died = Some(format!(
                "no datagram for {:.1} s",
                st.silent_for(now).as_secs_f64()
            ));
            break;
        }
        match sock.recv(&mut buf) {
            Ok(8) => {
                received += 1;
                st.arrival(Instant::now());
                if let Some(tx) = up.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            // ECONNREFUSED from an ICMP error on the connected socket: not a
            // datagram of the stream; keep listening.
            Err(_) => {}
        }
    }
    let end = Instant::now();
    if died.is_some() {
        st.note_gap(end);
    }
    if let Some(tx) = up.take() {
        let _ = tx.send(Err(died.clone().unwrap_or_else(|| "stopped".into())));
    }
    // Count what is already in flight after the server stops.
    server_stop.store(true, Ordering::Relaxed);
    let tail = Instant::now() + Duration::from_millis(100);
    while died.is_none() && Instant::now() < tail {
        if let Ok(8) = sock.recv(&mut buf) {
            received += 1;
            st.arrivals.push(Instant::now() - start);
        }
    }
    Ok(FlowReport {
        kind: FlowKind::Udp,
        sent: 0,
        received,
        arrivals: st.arrivals,
        max_stall: st.max,
        stall_start: st.max_from - start,
        died,
        server_saw: None,
        elapsed: end - start,
    })
}

// ------------------------------------------------------------ all three flows

/// How [`Sessions`] runs.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub flow: FlowOptions,
    /// The ICMP probe's interval (its duration is `flow.max_duration`; it
    /// is stopped by [`Sessions::finish`]).
    pub icmp_interval: Duration,
    /// All three flows to the server's IPv6 address (TCP and UDP over IPv6,
    /// the probe over ICMPv6), routed through the IPv6 VIPs without NAT: a
    /// lab built with [`crate::lab::LabOptions::ipv6`].
    pub ipv6: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            flow: FlowOptions::default(),
            icmp_interval: Duration::from_millis(1),
            ipv6: false,
        }
    }
}

/// The TCP session, the UDP stream and the ICMP probe, client -> server.
pub struct Sessions {
    start: Instant,
    tcp: TcpEcho,
    udp: UdpStream,
    /// When the UDP stream and the probe were launched, from `start`: their
    /// own offsets count from their own starts.
    udp_at: Duration,
    icmp_at: Duration,
    icmp: Probe,
}

impl Sessions {
    /// Starts the three flows from the lab's client to its server (IPv4, or
    /// IPv6 with [`SessionOptions::ipv6`]); returns once the TCP session and
    /// the UDP stream carry data.
    pub fn start(lab: &Lab, opts: SessionOptions) -> anyhow::Result<Sessions> {
        let client = lab.client().name().to_owned();
        let server = lab.server().name().to_owned();
        let (target, tcp_to, udp_to): (IpAddr, SocketAddr, SocketAddr) = if opts.ipv6 {
            (
                SERVER_IP6.into(),
                SocketAddrV6::new(SERVER_IP6, TCP_ECHO_PORT, 0, 0).into(),
                SocketAddrV6::new(SERVER_IP6, UDP_STREAM_PORT, 0, 0).into(),
            )
        } else {
            (
                SERVER_IP.into(),
                SocketAddrV4::new(SERVER_IP, TCP_ECHO_PORT).into(),
                SocketAddrV4::new(SERVER_IP, UDP_STREAM_PORT).into(),
            )
        };
        let start = Instant::now();
        let tcp = TcpEcho::start(&client, &server, tcp_to, opts.flow.clone())?;
        let udp_at = start.elapsed();
        let udp = UdpStream::start(&client, &server, udp_to, opts.flow.clone())?;
        let icmp_at = start.elapsed();
        let icmp = Probe::start(
            &client,
            target,
            ProbeOptions {
                interval: opts.icmp_interval,
                duration: opts.flow.max_duration,
                reply_wait: Duration::from_millis(500),
            },
        )?;
        Ok(Sessions {
            start,
            tcp,
            udp,
            udp_at,
            icmp_at,
            icmp,
        })
    }

    /// Time since [`Sessions::start`] was called: the clock of the report's
    /// offsets.
    pub fn age(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops and drains all three (concurrently) and returns the report.
    pub fn finish(self) -> anyhow::Result<SessionsReport> {
        let Sessions {
            start: _,
            tcp,
            udp,
            udp_at,
            icmp_at,
            icmp,
        } = self;
        icmp.stop();
        let t = thread::spawn(move || tcp.finish());
        let udp = udp.finish();
        let tcp = t
            .join()
            .map_err(|_| anyhow::anyhow!("tcp finish panicked"))?;
        let mut icmp = icmp.wait()?;
        let mut udp = udp?;
        // One clock for all three (that of `age`), so that a fault's offset
        // compares with each; the TCP session is launched at its origin.
        udp.shift(udp_at);
        icmp.gap_start += icmp_at;
        icmp.gap_end += icmp_at;
        Ok(SessionsReport {
            tcp: tcp?,
            udp,
            icmp,
        })
    }
}

/// What [`Sessions::finish`] reports. Every offset (arrivals, stalls, the
/// probe's gap) counts from [`Sessions::start`]: each flow's own offsets
/// moved by when it was launched, within a few milliseconds of its own start
/// (the TCP connect, the first UDP datagram, the first echo request).
#[derive(Clone, Debug)]
pub struct SessionsReport {
    pub tcp: FlowReport,
    pub udp: FlowReport,
    pub icmp: ProbeReport,
}

/// How much longer than the failover gap (the probe's longest silence) a
/// surviving UDP stream may stall: generous, for a shared 2-core machine
/// (the figure itself is printed). The stream has no retransmission of its
/// own, so it comes back with the path: a stall far beyond the gap means the
/// new master dropped the stream for a while (e.g. no state yet).
pub const UDP_STALL_MARGIN: Duration = Duration::from_millis(1000);

/// How long after the new master is seen MASTER the failover may still show
/// in the flows (the status poll lags the takeover; the first packets
/// through the new master resolve neighbours).
pub const FAILOVER_SLACK: Duration = Duration::from_millis(500);

impl SessionsReport {
    /// The ping got replies again after its longest outage (or never had one).
    pub fn icmp_continued(&self) -> bool {
        self.icmp.continued()
    }

    /// TCP and UDP survived and the ping continued.
    pub fn survived(&self) -> bool {
        self.tcp.survived() && self.udp.survived() && self.icmp_continued()
    }

    /// The stalls of the TCP session and the UDP stream overlapping the
    /// failover: from `fault_at` until the takeover (`takeover` after the
    /// fault) plus [`FAILOVER_SLACK`].
    pub fn failover_stalls(&self, fault_at: Duration, takeover: Duration) -> FailoverStalls {
        let to = fault_at + takeover + FAILOVER_SLACK;
        FailoverStalls {
            tcp: self.tcp.stall_within(fault_at, to),
            udp: self.udp.stall_within(fault_at, to),
            gap: (self.icmp.max_gap, self.icmp.gap_start),
        }
    }

    /// Why the flows did not survive a failover whose fault came at
    /// `fault_at` and whose takeover took `takeover` (empty: they did).
    /// Surviving is: the TCP session alive with every line echoed and
    /// echoes through the new master, the UDP stream alive with datagrams
    /// through the new master and a stall at the failover within
    /// [`UDP_STALL_MARGIN`] of the failover gap, and the ping continued.
    pub fn survival_failures(&self, fault_at: Duration, takeover: Duration) -> Vec<String> {
        let after = fault_at + takeover;
        let mut why = Vec::new();
        let (tcp, udp) = (&self.tcp, &self.udp);
        if !tcp.survived() || tcp.sent != tcp.received {
            why.push(format!(
                "tcp: {} of {} lines echoed",
                tcp.received, tcp.sent
            ));
        }
        if !udp.survived() {
            why.push("udp: the stream died".to_owned());
        }
        for f in [tcp, udp] {
            if f.received_after(after) == 0 {
                why.push(format!("{}: nothing through the new master", f.kind));
            }
        }
        let stalls = self.failover_stalls(fault_at, takeover);
        if stalls.udp.0 > stalls.gap.0 + UDP_STALL_MARGIN {
            why.push(format!(
                "udp: stalled {:.1} ms at the failover, the gap was {:.1} ms",
                stalls.udp.0.as_secs_f64() * 1e3,
                stalls.gap.0.as_secs_f64() * 1e3
            ));
        }
        if !self.icmp_continued() {
            why.push("icmp: the ping did not continue".to_owned());
        }
        why
    }

    /// Why this is not the death of the TCP session and the UDP stream at a
    /// failover without state replication (empty: both died, and the ping,
    /// new state on any router, continued). Not one datagram may come
    /// through the new master after the takeover.
    pub fn death_failures(&self, fault_at: Duration, takeover: Duration) -> Vec<String> {
        let mut why = Vec::new();
        for f in [&self.tcp, &self.udp] {
            if f.survived() {
                why.push(format!("{}: survived", f.kind));
            }
        }
        let n = self.udp.received_after(fault_at + takeover);
        if n > 0 {
            why.push(format!(
                "udp: {n} datagrams through the new master after the takeover"
            ));
        }
        if !self.icmp_continued() {
            why.push("icmp: the ping did not continue through the new master".to_owned());
        }
        why
    }
}

/// The stalls at a failover ([`SessionsReport::failover_stalls`]): each a
/// length and the offset where it began.
#[derive(Clone, Copy, Debug)]
pub struct FailoverStalls {
    pub tcp: (Duration, Duration),
    pub udp: (Duration, Duration),
    /// The probe's longest silence in the run: the failover gap.
    pub gap: (Duration, Duration),
}

impl fmt::Display for FailoverStalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "stalls at the failover: tcp {:.1} ms from +{:.3} s, udp {:.1} ms from +{:.3} s; \
             failover gap (1 ms ping, longest of the run) {:.1} ms from +{:.3} s",
            ms(self.tcp.0),
            self.tcp.1.as_secs_f64(),
            ms(self.udp.0),
            self.udp.1.as_secs_f64(),
            ms(self.gap.0),
            self.gap.1.as_secs_f64(),
        )
    }
}

impl fmt::Display for SessionsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {}", self.tcp)?;
        writeln!(f, "  {}", self.udp)?;
        write!(
            f,
            "  icmp: {} (failover gap {:.1} ms) {}",
            if self.icmp_continued() {
                "CONTINUED"
            } else {
                "STOPPED"
            },
            self.icmp.max_gap.as_secs_f64() * 1e3,
            self.icmp
        )
    }
}

// ---------------------------------------------------------------- conntrack

/// One side of a conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CtTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP/UDP ports.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP `(type, code, id)`.
    pub icmp: Option<(u8, u8, u16)>,
}

impl fmt::Display for CtTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.sport, self.dport, self.icmp) {
            (Some(s), Some(d), _) => write!(f, "{}:{s} -> {}:{d}", self.src, self.dst),
            (_, _, Some((t, c, id))) => {
                write!(f, "{} -> {} icmp {t}/{c} id {id}", self.src, self.dst)
            }
            _ => write!(f, "{} -> {}", self.src, self.dst),
        }
    }
}

/// A line of `conntrack -L` (IPv4 or IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `tcp`, `udp`, `icmp`, `unknown` (e.g. CARP, protocol 112).
    pub proto: String,
    pub protonum: u8,
    /// Seconds left.
    pub timeout: u64,
    /// The TCP state (`ESTABLISHED`, ...), `None` for other protocols.
    pub state: Option<String>,
    pub orig: CtTuple,
    pub reply: CtTuple,
    pub assured: bool,
    pub unreplied: bool,
    /// The line as printed.
    pub line: String,
}

impl CtEntry {
    /// What identifies the connection on any router: protocol and both
    /// tuples (ids, timeouts and counters differ between routers).
    pub fn key(&self) -> (u8, CtTuple, CtTuple) {
        (self.protonum, self.orig.clone(), self.reply.clone())
    }

    /// A connection from the LAN source-NATed to the WAN VIP: what the NAT
    /// router pair must replicate.
    pub fn is_lan_nat(&self) -> bool {
        matches!(self.orig.src, IpAddr::V4(a) if a.octets()[..3] == [10, 77, 0])
            && self.reply.dst == IpAddr::V4(WAN_VIP)
    }

    /// Parses one `conntrack -L` line; `None` for anything else.
    pub fn parse(line: &str) -> Option<CtEntry> {
        let mut tok = line.split_whitespace();
        let proto = tok.next()?.to_owned();
        let protonum = tok.next()?.parse().ok()?;
        let timeout = tok.next()?.parse().ok()?;
        let mut state = None;
        let (mut assured, mut unreplied) = (false, false);
        let mut tuples: Vec<Vec<(&str, &str)>> = Vec::new();
        for t in tok {
            if let Some((k, v)) = t.split_once('=') {
                if k == "src" {
                    tuples.push(Vec::new());
                }
                let n = tuples.len();
                if let Some(cur) = tuples.last_mut().filter(|_| n <= 2) {
                    cur.push((k, v));
                }
            } else if t == "[ASSURED]" {
                assured = true;
            } else if t == "[UNREPLIED]" {
                unreplied = true;
            } else if tuples.is_empty() && t.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                state = Some(t.to_owned());
            }
        }
        if tuples.len() < 2 {
            return None;
        }
        let tuple = |kv: &[(&str, &str)]| -> Option<CtTuple> {
            let get = |k: &str| kv.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v);
            let icmp = match (get("type"), get("code"), get("id")) {
                (Some(t), Some(c), Some(id)) => {
                    Some((t.parse().ok()?, c.parse().ok()?, id.parse().ok()?))
                }
                _ => None,
            };
            Some(CtTuple {
                src: get("src")?.parse().ok()?,
                dst: get("dst")?.parse().ok()?,
                sport: get("sport").and_then(|p| p.parse().ok()),
                dport: get("dport").and_then(|p| p.parse().ok()),
                icmp,
            })
        };
        Some(CtEntry {
            proto,
            protonum,
            timeout,
            state,
            orig: tuple(&tuples[0])?,
            reply: tuple(&tuples[1])?,
            assured,
            unreplied,
            line: line.to_owned(),
        })
    }
}

impl fmt::Display for CtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.proto, self.orig)?;
        if let Some(s) = &self.state {
            write!(f, " {s}")?;
        }
        write!(f, " (reply {})", self.reply)
    }
}

/// The number of conntrack entries in `ns` (`conntrack -C`: the namespace's
/// `nf_conntrack_count`).
pub fn conntrack_count(ns: &NetNs) -> anyhow::Result<u64> {
    let out = ns.exec(["conntrack", "-C"])?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse()
        .with_context(|| format!("parsing `conntrack -C` output {s:?}"))
}

/// Every IPv4 conntrack entry in `ns` (`conntrack -L -f ipv4`).
pub fn conntrack_list(ns: &NetNs) -> anyhow::Result<Vec<CtEntry>> {
    conntrack_list_family(ns, "ipv4")
}

/// Every IPv6 conntrack entry in `ns` (`conntrack -L -f ipv6`).
pub fn conntrack_list6(ns: &NetNs) -> anyhow::Result<Vec<CtEntry>> {
    conntrack_list_family(ns, "ipv6")
}

fn conntrack_list_family(ns: &NetNs, family: &str) -> anyhow::Result<Vec<CtEntry>> {
    let out = ns.exec(["conntrack", "-L", "-f", family])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(CtEntry::parse)
        .collect())
}

/// The kernel ids of the entries in `ns` (`conntrack -L -o id`); ids are
/// per router, so use [`CtEntry::key`] to compare routers.
pub fn conntrack_ids(ns: &NetNs) -> anyhow::Result<Vec<u32>> {
    let out = ns.exec(["conntrack", "-L", "-f", "ipv4", "-o", "id"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // `-o id` appends `id=N` to each line (ICMP tuples have `id=` too).
        .filter_map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.strip_prefix("id="))
                .next_back()
                .and_then(|v| v.parse().ok())
        })
        .collect())
}

/// The source-NATed LAN connections ([`CtEntry::is_lan_nat`]) in `ns`.
pub fn lan_nat_entries(ns: &NetNs) -> anyhow::Result<Vec<CtEntry>> {
    Ok(conntrack_list(ns)?
        .into_iter()
        .filter(CtEntry::is_lan_nat)
        .collect())
}

/// The entries of `a` whose connection ([`CtEntry::key`]) is not in `b`.
pub fn missing_from<'a>(a: &'a [CtEntry], b: &[CtEntry]) -> Vec<&'a CtEntry> {
    a.iter()
        .filter(|e| !b.iter().any(|o| o.key() == e.key()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let tcp = "tcp      6 431999 ESTABLISHED src=10.77.0.100 dst=10.88.0.100 sport=45678 \
                   dport=7101 src=10.88.0.100 dst=10.88.0.1 sport=7101 dport=45678 [ASSURED] \
                   mark=0 use=1";
        let e = CtEntry::parse(tcp).expect("tcp");
        assert_eq!(
            (e.proto.as_str(), e.protonum, e.timeout),
            ("tcp", 6, 431_999)
        );
        assert_eq!(e.state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(e.orig.src, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!((e.orig.sport, e.orig.dport), (Some(45678), Some(7101)));
        assert_eq!(e.reply.dst, WAN_VIP);
        assert!(e.assured && !e.unreplied && e.is_lan_nat());

        let udp = "udp      17 29 src=10.77.0.100 dst=10.88.0.100 sport=5000 dport=7102 \
                   [UNREPLIED] src=10.88.0.100 dst=10.88.0.1 sport=7102 dport=5000 mark=0 use=1";
        let u = CtEntry::parse(udp).expect("udp");
        assert!(u.unreplied && u.state.is_none() && u.is_lan_nat());

        let icmp = "icmp     1 29 src=10.77.0.100 dst=10.88.0.100 type=8 code=0 id=4660 \
                    src=10.88.0.100 dst=10.88.0.1 type=0 code=0 id=4660 mark=0 use=1";
        let i = CtEntry::parse(icmp).expect("icmp");
        assert_eq!(i.orig.icmp, Some((8, 0, 4660)));
        assert_eq!(i.reply.icmp, Some((0, 0, 4660)));

        let carp = "unknown  112 599 src=10.77.0.11 dst=224.0.0.18 [UNREPLIED] src=224.0.0.18 \
                    dst=10.77.0.11 mark=0 use=1";
        let c = CtEntry::parse(carp).expect("carp");
        assert_eq!(c.protonum, 112);
        assert!(!c.is_lan_nat());

        assert_eq!(
            CtEntry::parse("conntrack v1.4.7 (conntrack-tools): 3 flow entries"),
            None
        );
        // `conntrack -L -f ipv6`: a routed IPv6 session (reply = inverse).
        let tcp6 = "tcp      6 431999 ESTABLISHED src=2001:db8:77::100 dst=2001:db8:88::100 \
                    sport=45678 dport=7101 src=2001:db8:88::100 dst=2001:db8:77::100 \
                    sport=7101 dport=45678 [ASSURED] mark=0 use=1";
        let t = CtEntry::parse(tcp6).expect("tcp6");
        assert_eq!(t.orig.src, "2001:db8:77::100".parse::<IpAddr>().unwrap());
        assert_eq!(t.reply.dst, t.orig.src);
        assert_eq!((t.reply.sport, t.reply.dport), (Some(7101), Some(45678)));
        assert!(t.assured && !t.is_lan_nat());

        let (a, b) = (vec![e.clone(), u.clone()], vec![u.clone()]);
        assert_eq!(missing_from(&a, &b), vec![&e]);
    }

    #[test]
    fn stall_within_a_window_and_on_one_clock() {
        let ms = Duration::from_millis;
        let mut f = FlowReport {
            kind: FlowKind::Udp,
            sent: 5,
            received: 5,
            // A 300 ms hiccup before the fault, 2 s at the failover.
            arrivals: [0, 20, 320, 340, 1000, 3000].map(ms).to_vec(),
            max_stall: ms(2000),
            stall_start: ms(1000),
            died: None,
            server_saw: None,
            elapsed: ms(3100),
        };
        assert_eq!(f.stall_within(ms(1500), ms(2500)), (ms(2000), ms(1000)));
        assert_eq!(f.stall_within(ms(100), ms(200)), (ms(300), ms(20)));
        // A flow that died stalls from its last arrival to its end.
        f.died = Some("no datagram".into());
        assert_eq!(f.stall_within(ms(3050), ms(3060)), (ms(100), ms(3000)));
        f.shift(ms(7));
        assert_eq!(f.arrivals[1], ms(27));
        assert_eq!((f.stall_start, f.elapsed), (ms(1007), ms(3107)));
        assert_eq!(f.stall_within(ms(1500), ms(2500)), (ms(2000), ms(1007)));
    }

    #[test]
    fn stalls_count_gaps_between_arrivals() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Stalls::new(t0);
        for t in [10, 30, 530, 550] {
            s.arrival(t0 + ms(t));
        }
        assert_eq!(s.max, ms(500));
        assert_eq!(s.max_from - t0, ms(30));
        assert_eq!(s.arrivals.len(), 4);
    }
}
