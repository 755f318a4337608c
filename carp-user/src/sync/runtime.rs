//! The sync engine's own OS thread: a `poll(2)` loop over the raw IP
//! protocol-240 socket on the sync interface, the ctnetlink event socket and
//! a wake-up pipe, with blocking ctnetlink installs and dumps in between.
//!
//! Its own thread, not a task on the controller's runtime: a 1 000 000-entry
//! bulk means seconds of netlink work, and the CARP adverts must leave on
//! time meanwhile (the controller's event loop is one current-thread task).
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::SyncConfig;
use crate::conntrack::netlink::{
    Conntrack, CtError, CtEventItem, CtEventKind, CtEvents, CtFamily, DeleteOutcome, EventGroups,
    EventMembership, InstallOutcome,
};
use crate::conntrack::CtEntry;
use crate::election::Time;
use crate::wire::sync::{HelloVhid, IPPROTO_SYNC};
use crate::xdp;

use super::engine::{Engine, Output, Params, PeerReport};
use super::link::Change;
use super::stats::{StateOp, StateResult, Stats};

/// Receive buffer of the sync socket: a bulk arrives as a burst of frames.
const SOCKET_RCVBUF: usize = 32 << 20;
/// Frames read per wake-up before the engine polls (acks go out between
/// bursts).
const RECV_BURST: usize = 512;
/// Entries per piece of a streamed dump (memory: about 150 bytes each).
const DUMP_CHUNK: usize = 32_768;
/// Entries handed to one ctnetlink install batch.
const INSTALL_BATCH: usize = 8192;
/// Events read per wake-up.
const EVENT_BURST: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync.interface {0}: no such interface")]
    NoInterface(String),
    #[error("sync.interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("sync.peers: {peer} is not on {iface}'s subnet {net}")]
    PeerOffLink {
        peer: Ipv4Addr,
        iface: String,
        net: String,
    },
    #[error("sync socket: {0}")]
    Socket(#[source] io::Error),
    #[error("ctnetlink: {0}")]
    Conntrack(#[from] CtError),
    #[error("sync thread: {0}")]
    Thread(#[source] io::Error),
}

/// What `carp status` shows under `"sync"`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SyncStatus {
    pub interface: String,
    pub local_address: String,
    pub peers: Vec<PeerReport>,
    /// Waiting for the peers' bulk transfers (VHIDs demoted).
    pub bulk_in_progress: bool,
    pub states_sent: u64,
    pub states_received: u64,
    pub states_installed: u64,
    pub states_install_errors: u64,
    pub states_held: u64,
    pub retransmits: u64,
    pub event_overruns: u64,
}

/// The running sync thread. Dropping it stops the thread.
pub struct SyncHandle {
    thread: Option<std::thread::JoinHandle<()>>,
    wake: OwnedFd,
    shared: Arc<Shared>,
    /// `true` while the node must stay demoted (bulk not done).
    pub demote: tokio::sync::watch::Receiver<bool>,
    /// VHIDs a peer released (its link went down): take them over.
    pub released: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    /// Per VHID, the live peers in BACKUP and their timing
    /// ([`Engine::backup_timings`]).
    pub backups: tokio::sync::watch::Receiver<BackupTimings>,
}

/// VHID → (advbase as on the wire, effective advskew) of each live peer in BACKUP.
pub type BackupTimings = std::collections::BTreeMap<u8, Vec<(u8, u8)>>;

struct Shared {
    stop: std::sync::atomic::AtomicBool,
    vhids: Mutex<Vec<HelloVhid>>,
    /// The hello's split-brain flag (`crate::splitbrain`), from the controller.
    split_brain: std::sync::atomic::AtomicBool,
    status: Mutex<SyncStatus>,
}

impl SyncHandle {
    /// Checks the sync interface and peers, opens the sockets and starts the
    /// thread, all in the caller's network namespace.
    /// `resync` is set by `carp sync resync` (the control socket); the thread
    /// clears it and asks the peers for their tables.
    pub fn start(
        cfg: &SyncConfig,
        name: &str,
        stats: Stats,
        resync: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<SyncHandle, SyncError> {
        let (local, prefix) = interface_address(&cfg.interface)?;
        let net = ipnet::Ipv4Net::new(local, prefix)
            .map_err(|_| SyncError::NoAddress(cfg.interface.clone()))?;
        for p in &cfg.peers {
            if !net.contains(p) {
                return Err(SyncError::PeerOffLink {
                    peer: *p,
                    iface: cfg.interface.clone(),
                    net: net.trunc().to_string(),
                });
            }
        }
        let sock = open_socket(&cfg.interface)?;
        let ct = Conntrack::open()?;
        let install_ct = Conntrack::open()?;
        let events = CtEvents::open()?;
        // Our own installs' events never reach user space (no echo, no
        // overrun during a bulk); the port id check in read_events stays as
        // a second line.
        events.ignore_port(install_ct.port_id())?;
        let installer = Installer::start(install_ct, events.membership()?, stats.clone())?;
        let (wake_rx, wake_tx) = nix::unistd::pipe().map_err(|e| SyncError::Thread(e.into()))?;
        for fd in [&wake_rx, &wake_tx] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| SyncError::Thread(e.into()))?;
        }
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let mut p = Params::new(name, cfg.key.clone(), cfg.peers.clone(), boot);
        p.max_states = cfg.max_states;
        p.bulk_timeout = Duration::from_secs(u64::from(cfg.bulk_timeout_s));
        p.refresh_interval = Duration::from_secs(u64::from(cfg.refresh_interval_s));
        let shared = Arc::new(Shared {
            stop: std::sync::atomic::AtomicBool::new(false),
            vhids: Mutex::new(Vec::new()),
            split_brain: std::sync::atomic::AtomicBool::new(false),
            status: Mutex::new(SyncStatus {
                interface: cfg.interface.clone(),
                local_address: local.to_string(),
                ..SyncStatus::default()
            }),
        });
        let (demote_tx, demote_rx) = tokio::sync::watch::channel(!cfg.peers.is_empty());
        let (released_tx, released_rx) = tokio::sync::mpsc::unbounded_channel();
        let (backups_tx, backups_rx) = tokio::sync::watch::channel(BackupTimings::new());
        let mut worker = Worker {
            engine: Engine::new(p, now(), stats.clone()),
            cfg: cfg.clone(),
            sock,
            ct,
            installer,
            events,
            wake: wake_rx,
            shared: Arc::clone(&shared),
            demote: demote_tx,
            released: released_tx,
            backups: backups_tx,
            stats,
            out: Vec::new(),
            resync,
            own_events_off: false,
        };
        let thread = std::thread::Builder::new()
            .name("carp-sync".into())
            .spawn(move || worker.run())
            .map_err(SyncError::Thread)?;
        tracing::info!(interface = %cfg.interface, %local, peers = ?cfg.peers, "sync started");
        Ok(SyncHandle {
            thread: Some(thread),
            wake: wake_tx,
            shared,
            demote: demote_rx,
            released: released_rx,
            backups: backups_rx,
        })
    }

    /// The VHIDs the next hello reports.
    pub fn set_vhids(&self, vhids: Vec<HelloVhid>) {
        let changed = match self.shared.vhids.lock() {
            Ok(mut v) => {
                let changed = *v != vhids;
                *v = vhids;
                changed
            }
            Err(_) => false,
        };
        // A state change goes out in a hello at once (the link-loss handover).
        if changed {
            self.wake();
        }
    }

    /// The split-brain flag the next hello carries: this node holds a VHID
    /// back (`crate::splitbrain`). A change goes out at once.
    pub fn set_split_brain(&self, on: bool) {
        let was = self
            .shared
            .split_brain
            .swap(on, std::sync::atomic::Ordering::SeqCst);
        if was != on {
            self.wake();
        }
    }

    pub fn status(&self) -> SyncStatus {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn wake(&self) {
        let _ = nix::unistd::write(self.wake.as_fd(), &[1]);
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> Time {
    Time(xdp::ktime_now_ns())
}

/// During a streamed dump: reads what the peers sent (acknowledgements
/// above all), lets the engine frame what the window allows, and sends.
/// Kernel operations are stashed for after the dump.
fn pump(
    engine: &mut Engine,
    sock: &Socket,
    stats: &Stats,
    buf: &mut [u8],
    stash: &mut Vec<Output>,
) {
    let mut out = Vec::new();
    for _ in 0..RECV_BURST {
        match recv_frame(sock, buf) {
            Some((src, range)) => engine.frame(now(), src, &buf[range], &mut out),
            None => break,
        }
    }
    engine.poll(now(), &mut out);
    for o in out {
        match o {
            Output::Send { to, frame } => send_frame(sock, stats, to, &frame),
            other => stash.push(other),
        }
    }
}

/// A kernel write for the installer thread, in order.
enum KernelOp {
    Install(Vec<CtEntry>),
    Delete(Vec<crate::conntrack::CtKey>),
    /// Answered once every earlier operation is in the kernel.
    Flush(std::sync::mpsc::Sender<()>),
    /// Leave (`false`) or rejoin the event groups our installs fill, after
    /// every earlier operation: see [`Worker::quiet_own_events`].
    OwnEvents(bool),
}

/// The event groups a peer's states fill when we install them.
const OWN_EVENT_GROUPS: EventGroups = EventGroups {
    new: true,
    update: true,
    destroy: false,
};

/// Batches queued for the installer before the sync thread waits for it:
/// the backpressure reaches the peer through our acknowledgements.
const INSTALL_QUEUE: usize = 16;

/// The thread that writes the peers' states into the kernel, with a
/// ctnetlink socket of its own: receiving, authenticating and decoding
/// (the sync thread) and installing (the kernel's work, most of a bulk) run
/// on two cores at once.
struct Installer {
    tx: Option<std::sync::mpsc::SyncSender<KernelOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
    port_id: u32,
}

impl Installer {
    fn start(
        mut ct: Conntrack,
        events: EventMembership,
        stats: Stats,
    ) -> Result<Installer, SyncError> {
        let port_id = ct.port_id();
        let (tx, rx) = std::sync::mpsc::sync_channel::<KernelOp>(INSTALL_QUEUE);
        let thread = std::thread::Builder::new()
            .name("carp-sync-install".into())
            .spawn(move || {
                crate::services::set_thread_nice(crate::services::SYNC_NICE);
                for op in rx {
                    match op {
                        KernelOp::Install(entries) => install(&mut ct, &stats, &entries),
                        KernelOp::Delete(keys) => delete(&mut ct, &stats, &keys),
                        KernelOp::Flush(done) => {
                            let _ = done.send(());
                        }
                        KernelOp::OwnEvents(join) => {
                            if let Err(e) = events.set(OWN_EVENT_GROUPS, join) {
                                tracing::warn!(error = %e, join, "sync: changing the event groups failed");
                            }
                        }
                    }
                }
            })
            .map_err(SyncError::Thread)?;
        Ok(Installer {
            tx: Some(tx),
            thread: Some(thread),
            port_id,
        })
    }

    fn send(&self, op: KernelOp) {
        if let Some(tx) = &self.tx {
            // Blocks while the installer is INSTALL_QUEUE batches behind.
            if tx.send(op).is_err() {
                tracing::error!("sync: the installer thread is gone; states are not installed");
            }
        }
    }
}

impl Installer {
    /// Waits until everything queued so far is in the kernel.
    fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(KernelOp::Flush(tx));
        let _ = rx.recv();
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the queue is written.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn install(ct: &mut Conntrack, stats: &Stats, entries: &[CtEntry]) {
    match ct.install(entries) {
        Ok(outcomes) => {
            for (o, e) in outcomes.iter().zip(entries) {
                match o {
                    InstallOutcome::Created | InstallOutcome::Updated => {
                        stats.state(StateOp::Install, StateResult::Done);
                    }
                    InstallOutcome::Failed(errno) => {
                        stats.state(StateOp::Install, StateResult::error(*errno as i32));
                        tracing::debug!(errno = %errno, entry = ?e.orig, "sync: install refused by the kernel");
                    }
                    InstallOutcome::Invalid => {
                        stats.state(StateOp::Install, StateResult::Error("error_invalid"));
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "sync: ctnetlink install failed"),
    }
}

fn delete(ct: &mut Conntrack, stats: &Stats, keys: &[crate::conntrack::CtKey]) {
    match ct.delete(keys) {
        Ok(outcomes) => {
            for o in outcomes {
                match o {
                    DeleteOutcome::Deleted | DeleteOutcome::NotFound => {
                        stats.state(StateOp::Delete, StateResult::Done);
                    }
                    DeleteOutcome::Failed(e) => {
                        stats.state(StateOp::Delete, StateResult::error(e as i32));
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "sync: ctnetlink delete failed"),
    }
}

/// One datagram from the raw socket: its IPv4 source and the frame's range
/// in `buf` (a raw IPv4 socket hands over the IP header too). `None` when
/// nothing is waiting.
fn recv_frame(sock: &Socket, buf: &mut [u8]) -> Option<(Ipv4Addr, std::ops::Range<usize>)> {
    loop {
        // SAFETY: recv into an initialised buffer through socket2's
        // MaybeUninit API: u8 has no invalid bit patterns.
        let uninit =
            unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [std::mem::MaybeUninit<u8>]) };
        let n = match sock.recv_from(uninit) {
            Ok((n, _)) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                tracing::warn!(error = %e, "sync: receive failed");
                return None;
            }
        };
        let pkt = &buf[..n];
        let ihl = usize::from(pkt.first()? & 0x0f) * 4;
        if ihl < 20 || pkt.len() < ihl {
            continue;
        }
        let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
        return Some((src, ihl..n));
    }
}

fn send_frame(sock: &Socket, stats: &Stats, to: Ipv4Addr, frame: &[u8]) {
    let addr = SocketAddr::V4(SocketAddrV4::new(to, 0));
    if let Err(e) = sock.send_to(frame, &addr.into()) {
        stats.frame_send_error();
        tracing::debug!(error = %e, %to, "sync: send failed");
    }
}

/// The interface's first IPv4 address and prefix length.
fn interface_address(iface: &str) -> Result<(Ipv4Addr, u8), SyncError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| SyncError::Socket(e.into()))?;
    let mut seen = false;
    for a in addrs.filter(|a| a.interface_name == iface) {
        seen = true;
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        if let (Some(addr), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let prefix = u32::from(mask.ip()).count_ones() as u8;
            return Ok((addr.ip(), prefix));
        }
    }
    Err(if seen {
        SyncError::NoAddress(iface.to_owned())
    } else {
        SyncError::NoInterface(iface.to_owned())
    })
}

fn open_socket(iface: &str) -> Result<Socket, SyncError> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(IPPROTO_SYNC))),
    )
    .map_err(SyncError::Socket)?;
    s.bind_device(Some(iface.as_bytes()))
        .map_err(SyncError::Socket)?;
    // TTL 255 (docs/protocol.md §4 "Transport": a receiver drops anything that crossed a router).
    s.set_ttl(u32::from(carp_common::CARP_TTL))
        .map_err(SyncError::Socket)?;
    // Never fragment: frames are sized to the link MTU.
    let pmtu: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            std::ptr::addr_of!(pmtu).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(SyncError::Socket(io::Error::last_os_error()));
    }
    let size = SOCKET_RCVBUF as libc::c_int;
    // SAFETY: as above. SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to the
    // capped SO_RCVBUF when it is refused.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = s.set_recv_buffer_size(SOCKET_RCVBUF);
    }
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(SyncError::Socket)?;
    Ok(s)
}

struct Worker {
    engine: Engine,
    cfg: SyncConfig,
    sock: Socket,
    /// Dumps and reads (get); the installer has its own socket.
    ct: Conntrack,
    installer: Installer,
    events: CtEvents,
    wake: OwnedFd,
    shared: Arc<Shared>,
    demote: tokio::sync::watch::Sender<bool>,
    released: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    backups: tokio::sync::watch::Sender<BackupTimings>,
    stats: Stats,
    out: Vec<Output>,
    resync: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the installer has left [`OWN_EVENT_GROUPS`].
    own_events_off: bool,
}

impl Worker {
    fn run(&mut self) {
        // Below the election's thread: a bulk must not delay adverts.
        crate::services::set_thread_nice(crate::services::SYNC_NICE);
        let mut out = std::mem::take(&mut self.out);
        self.engine.start(now(), &mut out);
        self.execute(&mut out);
        let mut buf = vec![0u8; 65536];
        while !self.shared.stop.load(std::sync::atomic::Ordering::SeqCst) {
            let t = now();
            let wait = self.engine.poll_at().0.saturating_sub(t.0);
            // At most 200 ms: status and hello VHIDs stay fresh.
            let wait_ms = (wait / 1_000_000).min(200) as u16;
            let mut fds = [
                nix::poll::PollFd::new(self.sock.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(self.events.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(self.wake.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            let timeout = if wait == 0 {
                nix::poll::PollTimeout::ZERO
            } else {
                nix::poll::PollTimeout::from(wait_ms.max(1))
            };
            if let Err(e) = nix::poll::poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    tracing::error!(error = %e, "sync: poll failed; sync stops");
                    return;
                }
            }
            let mut drain = [0u8; 64];
            while matches!(nix::unistd::read(self.wake.as_raw_fd(), &mut drain), Ok(n) if n > 0) {}
            if let Ok(v) = self.shared.vhids.lock() {
                self.engine.set_vhids(v.clone());
            }
            self.engine.set_split_brain(
                self.shared
                    .split_brain
                    .load(std::sync::atomic::Ordering::SeqCst),
            );
            if self.resync.swap(false, std::sync::atomic::Ordering::SeqCst) {
                tracing::info!("sync: resync requested; asking the peers for their tables");
                self.engine.resync(now(), &mut out);
            }
            self.read_events(&mut out);
            self.read_frames(&mut buf, &mut out);
            self.engine.poll(now(), &mut out);
            self.execute(&mut out);
            self.quiet_own_events();
            self.publish();
        }
        tracing::info!("sync stopped");
    }

    /// While a peer's bulk comes in and we are MASTER of nothing, the
    /// installer leaves the event groups its installs fill: every install
    /// would otherwise make the kernel build an event that our own socket
    /// filter then drops, which doubles the kernel's cost per entry
    /// ([`EventMembership`]). Being MASTER of nothing, we forward no VIP
    /// traffic, so few local flows start meanwhile; one that does is sent by
    /// the next sweep (`refresh_interval`), and its end (destroy events stay
    /// on) is never missed. The change rides the installer's queue, so it
    /// takes effect exactly between the installs before and after it.
    fn quiet_own_events(&mut self) {
        let off = self.engine.bulk_incoming(now()) && !self.engine.is_master();
        if off != self.own_events_off {
            self.own_events_off = off;
            tracing::info!(
                "sync: {}",
                if off {
                    "a peer's table comes in: our installs' event groups left"
                } else {
                    "our installs' event groups rejoined"
                }
            );
            self.installer.send(KernelOp::OwnEvents(!off));
        }
    }

    fn read_frames(&mut self, buf: &mut [u8], out: &mut Vec<Output>) {
        for _ in 0..RECV_BURST {
            let Some((src, range)) = recv_frame(&self.sock, buf) else {
                return;
            };
            self.engine.frame(now(), src, &buf[range], out);
            // Apply as we go (batches stay bounded), acknowledging first.
            if out.len() > 512 {
                self.engine.poll(now(), out);
                self.execute(out);
            }
        }
    }

    fn read_events(&mut self, out: &mut Vec<Output>) {
        let own = self.installer.port_id;
        for _ in 0..EVENT_BURST {
            let item = match self.events.try_recv() {
                Ok(Some(i)) => i,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "sync: conntrack event socket failed");
                    return;
                }
            };
            match item {
                CtEventItem::Overrun => {
                    tracing::warn!("sync: conntrack events lost (ENOBUFS); resyncing the peers");
                    self.engine.overrun(out);
                }
                CtEventItem::Malformed(e) => {
                    tracing::debug!(error = %e, "sync: unparsable conntrack event skipped");
                }
                CtEventItem::Event(ev) => {
                    // Caused by our own installs/deletes: the peer knows (no echo).
                    if ev.origin_portid == own {
                        continue;
                    }
                    if !self.cfg.replicates(&ev.entry) {
                        continue;
                    }
                    let change = match ev.kind {
                        CtEventKind::New => Change::Upsert {
                            entry: ev.entry,
                            new: true,
                        },
                        // An UPDATE carries the TCP state only when it
                        // changed; the peer may need the whole entry (to
                        // create it), so read it back when that part is missing.
                        CtEventKind::Update
                            if ev.entry.orig.proto == 6 && ev.entry.tcp.is_none() =>
                        {
                            match self.ct.get(&ev.entry.key()) {
                                Ok(Some(full)) => Change::Upsert {
                                    entry: full,
                                    new: false,
                                },
                                // Gone meanwhile: its DESTROY event follows.
                                Ok(None) => continue,
                                Err(e) => {
                                    tracing::debug!(error = %e, "sync: reading an updated entry back failed");
                                    Change::Upsert {
                                        entry: ev.entry,
                                        new: false,
                                    }
                                }
                            }
                        }
                        CtEventKind::Update => Change::Upsert {
                            entry: ev.entry,
                            new: false,
                        },
                        CtEventKind::Destroy => Change::Delete(ev.entry.key()),
                    };
                    self.engine.local_event(change);
                }
            }
        }
    }

    /// Dumps the kernel table into a bulk (or a sweep) and sends it while
    /// dumping: every [`DUMP_CHUNK`] entries the engine frames what the
    /// window allows, acknowledgements are read, frames go out. Kernel
    /// operations that come up meanwhile wait in `stash` (the ctnetlink
    /// socket is busy with the dump) and run after it, in order.
    fn stream_dump(
        &mut self,
        for_peer: Option<Ipv4Addr>,
        request_id: u32,
        refresh: bool,
        stash: &mut Vec<Output>,
    ) {
        let t0 = std::time::Instant::now();
        let estimate = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        self.engine
            .bulk_begin(for_peer, request_id, estimate, refresh);
        let Worker {
            engine,
            cfg,
            sock,
            ct,
            stats,
            ..
        } = self;
        let mut chunk = Vec::with_capacity(DUMP_CHUNK);
        let mut buf = vec![0u8; 65536];
        let mut count = 0u64;
        let result = ct.dump_with(CtFamily::All, |e| {
            if !cfg.replicates(&e) {
                return;
            }
            chunk.push(e);
            if chunk.len() >= DUMP_CHUNK {
                count += chunk.len() as u64;
                engine.bulk_chunk(
                    now(),
                    std::mem::replace(&mut chunk, Vec::with_capacity(DUMP_CHUNK)),
                );
                pump(engine, sock, stats, &mut buf, stash);
            }
        });
        count += chunk.len() as u64;
        self.engine.bulk_chunk(now(), chunk);
        self.engine.bulk_complete();
        match result {
            Ok(_) => tracing::info!(
                peer = ?for_peer,
                states = count,
                refresh,
                dump_ms = t0.elapsed().as_millis() as u64,
                "sync: table dumped and {}",
                if refresh { "refreshing the peers" } else { "sent as a bulk" }
            ),
            Err(e) => {
                tracing::warn!(error = %e, "sync: conntrack dump failed; the bulk ends with what was read")
            }
        }
    }

    fn execute(&mut self, out: &mut Vec<Output>) {
        // Outputs may add outputs (a dump feeds the engine, which then frames).
        // Frames first (acks, hellos, NACKs, data): an acknowledgement says
        // "received", and the sender's window should not wait for our
        // installs. The kernel operations keep their order among themselves.
        let (sends, rest): (Vec<Output>, Vec<Output>) = out
            .drain(..)
            .partition(|o| matches!(o, Output::Send { .. }));
        let mut queue: std::collections::VecDeque<Output> = sends.into_iter().chain(rest).collect();
        let mut more = Vec::new();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send { to, frame } => send_frame(&self.sock, &self.stats, to, &frame),
                Output::Install(mut entries) => {
                    // Consecutive installs (one per received frame) go to the
                    // kernel as one batch: a 1 M-entry bulk is 100 000 frames.
                    while entries.len() < INSTALL_BATCH {
                        match queue.front_mut() {
                            Some(Output::Install(more)) => {
                                entries.append(more);
                                queue.pop_front();
                            }
                            _ => break,
                        }
                    }
                    self.installer.send(KernelOp::Install(entries));
                }
                Output::Delete(keys) => self.installer.send(KernelOp::Delete(keys)),
                Output::Dump {
                    for_peer,
                    request_id,
                } => {
                    self.stream_dump(for_peer, request_id, false, &mut more);
                    self.engine.poll(now(), &mut more);
                }
                Output::Sweep => {
                    self.stream_dump(None, 0, true, &mut more);
                    self.engine.poll(now(), &mut more);
                }
                Output::PeerReleased(vhids) => {
                    tracing::info!(?vhids, "sync: the peer released VHIDs (its link went down)");
                    let _ = self.released.send(vhids);
                }
                Output::Demote(on) => {
                    // The demotion is lifted only once the peer's table is in
                    // our kernel, not merely received: the installer drains first.
                    if !on {
                        self.installer.flush();
                    }
                    tracing::info!(
                        demoted = on,
                        "sync: bulk {}",
                        if on {
                            "requested; VHIDs demoted"
                        } else {
                            "done; demotion lifted"
                        }
                    );
                    let _ = self.demote.send(on);
                }
            }
            queue.extend(more.drain(..));
        }
    }

    fn publish(&mut self) {
        let t = now();
        let backups = self.engine.backup_timings(t);
        self.backups.send_if_modified(|b| {
            let changed = *b != backups;
            *b = backups;
            changed
        });
        let s = &self.stats;
        let status = SyncStatus {
            interface: self.cfg.interface.clone(),
            local_address: self
                .shared
                .status
                .lock()
                .map(|s| s.local_address.clone())
                .unwrap_or_default(),
            peers: self.engine.peer_reports(t),
            bulk_in_progress: self.engine.demoted(),
            states_sent: s.state_count("install", "sent") + s.state_count("delete", "sent"),
            states_received: s.state_count("install", "received"),
            states_installed: s.state_count("install", "done"),
            states_install_errors: s.install_errors(),
            states_held: self.engine.installed_count() as u64,
            retransmits: s.retransmits(),
            event_overruns: s.overruns(),
        };
        if let Ok(mut g) = self.shared.status.lock() {
            *g = status;
        }
    }
}
