//! The controller's runtime: one tokio task that owns every piece of state and
//! feeds the sans-IO election machines with packets, timers, link changes and
//! signals, then applies the actions they return to the kernel.
//!
//! One task, not one per VHID: every input is handled in arrival order, there
//! are no locks around the XDP maps, and the ring buffers can be drained
//! synchronously right before a master-down timer is honoured (docs/design.md,
//! "Controller runtime": liveness is decided on authenticated adverts only).
//!
//! Start order (docs/design.md "Lifetime"): load and attach XDP with INIT entries,
//! set the ARP sysctls, join the group, program the unicast filter, and only
//! then add the VIPs to the holder device and start the elections. Stop order:
//! bow out, wait for the new master (bounded), drop to BACKUP, remove the VIPs,
//! the filters and the sysctls, then detach XDP (by dropping it).
//!
//! Reload (SIGHUP): the config file is read and checked again; an invalid file,
//! or one whose changes need a restart, is refused as a whole and the running
//! state is kept. Otherwise the difference to the running configuration is
//! applied per VHID ([`crate::reload::plan_reload`]), in the start order for what is added and
//! the stop order for what is removed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use carp_common::{AdvertRecord, VhidEntry, VhidState};
use futures::StreamExt;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::accept;
use crate::config::{self, Config, Problem, VhidConfig, XdpMode};
use crate::deadman;
use crate::election::{self, Action, Event, PeerAdvert, State, Time};
use crate::linkwatch::{self, Change, Known, Seen};
use crate::metrics::{AdvertResult, Metrics, ReloadResult, Role};
use crate::netlink::{fmt_mac, Holder, LinkEvent, LinkFacts, Netlink, NetlinkError, SysctlGuard};
use crate::packet::{FrameSender, GroupMembership, UnicastSender, UnicastSender6};
use crate::pins::PinDir;
use crate::reload::{plan_reload, vip6_maps, vip_maps, vips6_of, vips_of, ReloadPlan};
use crate::replay::{self, Verdict};
use crate::status::{NodeStatus, VhidStatus};
use crate::sync::runtime::SyncHandle;
use crate::timer::DeadlineTimer;
use crate::wire::{carp, frame, ndp};
use crate::xdp::{self, AttachMode, XdpInstance};

mod hooks;
mod observed;
mod operator;
mod reload;
mod reload6;
mod splitbrain;
mod unicast;

/// Node-wide demotion added while an interface is down (FreeBSD's
/// `net.inet.carp.ifdown_demotion_factor` default), so every VHID of the node
/// moves together (docs/protocol.md §2, "Link down").
pub const IFDOWN_DEMOTION: u32 = 240;

/// Demotion while the sync peers' bulk transfers are pending: pfsync's
/// `V_pfsync_carp_adj` (CARP_MAXSKEW), so a node that has not got the state
/// table yet never wins an election against one that has.
pub const SYNC_DEMOTION: u32 = 240;

/// Spacing of the three bow-out copies: a few ms, so one lost packet does not
/// cost a master-down interval (docs/protocol.md §2, "Bow-out").
const BOW_OUT_SPACING: Duration = Duration::from_millis(3);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{iface}: {source}")]
    Xdp {
        iface: String,
        #[source]
        source: xdp::XdpError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Privileges(#[from] crate::privileges::MissingCapabilities),
    #[error(transparent)]
    Sync(#[from] crate::sync::runtime::SyncError),
    /// Link monitoring cannot go on (an interface was re-created, the link
    /// notifications cannot be reopened): the controller stopped in order.
    #[error("{0}")]
    Link(String),
    /// Settings only the running system can check (unicast peers on the
    /// VHID's link: `unicast.rs`), one line per problem.
    #[error("{0}")]
    Config(config::Problems),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// One CARP interface: its XDP instance, its ring, its sender.
struct Iface {
    facts: LinkFacts,
    /// The first own IPv4 address (VIPs excluded), the source of IPv4
    /// adverts; none on an interface without IPv4, allowed when all its
    /// VHIDs are IPv6-only (no IPv4 VIPs, no IPv4 peers).
    own_ip: Option<Ipv4Addr>,
    /// The interface's IPv4 subnets at start (VIPs excluded): adverts from
    /// other sources are refused (`accept.rs`, `off_subnet`).
    subnets: Vec<accept::Subnet>,
    /// The interface's own IPv6 addresses (VIPs excluded), re-read when the
    /// link comes up (`refresh_ipv6`): the link-local one is the source of
    /// IPv6 adverts, all of them are "own" to `accept.rs`.
    ipv6: Ipv6Own,
    mode: AttachMode,
    xdp: XdpInstance,
    ring: AsyncFd<RingBuf<MapData>>,
    sender: FrameSender,
    /// Adverts of VHIDs with unicast peers (`unicast.rs`), per family.
    unicast: UnicastSender,
    unicast6: UnicastSender6,
    _group: GroupMembership,
    /// False once the interface was deleted (`linkwatch.rs`).
    present: bool,
}

/// A CARP interface's own IPv6 addresses, as `accept.rs` and the IPv6
/// advert need them (VIPs left out: they are the VHIDs', not the node's).
#[derive(Debug, Default)]
struct Ipv6Own {
    /// The source of IPv6 adverts (docs/protocol.md §1 "Over IPv6"); none:
    /// IPv6 disabled on the link, or the link has not come up yet.
    link_local: Option<std::net::Ipv6Addr>,
    /// Every own address, the link-local included.
    all: Vec<std::net::Ipv6Addr>,
    /// The prefixes of the non-link-local ones.
    subnets: Vec<accept::Subnet6>,
}

impl Ipv6Own {
    fn from_addresses(addrs: Vec<(std::net::Ipv6Addr, u8)>, vips6: &[std::net::Ipv6Addr]) -> Self {
        let own: Vec<(std::net::Ipv6Addr, u8)> = addrs
            .into_iter()
            .filter(|(a, _)| !vips6.contains(a))
            .collect();
        Self {
            link_local: own
                .iter()
                .map(|(a, _)| *a)
                .find(|a| accept::is_link_local6(*a)),
            all: own.iter().map(|(a, _)| *a).collect(),
            subnets: own
                .iter()
                .filter(|(a, _)| !accept::is_link_local6(*a))
                .map(|(a, len)| accept::Subnet6::new(*a, *len))
                .collect(),
        }
    }
}

/// The IP source and destination of a ring record, by its family.
fn record_addresses(rec: &AdvertRecord) -> (std::net::IpAddr, std::net::IpAddr) {
    if rec.family == 6 {
        (
            std::net::Ipv6Addr::from(rec.src_addr).into(),
            std::net::Ipv6Addr::from(rec.dst_addr).into(),
        )
    } else {
        let v4 = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]).into();
        (v4(&rec.src_addr), v4(&rec.dst_addr))
    }
}

/// One VHID: configuration, its election machine and bookkeeping.
struct VhidRt {
    cfg: VhidConfig,
    iface: usize,
    vips: Vec<Ipv4Addr>,
    /// The IPv6 VIPs, ascending (they follow the IPv4 ones in the digest).
    vips6: Vec<std::net::Ipv6Addr>,
    machine: election::Vhid,
    counter: u64,
    tracker: replay::Tracker,
    last_transition: Option<Time>,
    /// The last transition in full, and the master last heard as BACKUP
    /// (`observed.rs`): for the status page and its gauges.
    transition: Option<observed::LastTransition>,
    heard: Option<observed::Heard>,
    sent: u64,
    received: u64,
    stopped: bool,
    /// What reaches the data-path entry, and the entry as last written
    /// (`deadman.rs`): refreshes wait for their advert to leave, deadlines
    /// follow the backup's takeover moment, a previous run's promises stand.
    deadline: deadman::DeadlineGate,
    /// Keeps "advert not sent" warnings to one per 10 s.
    send_error_log: deadman::LogLimiter,
    /// Split-brain alarm and step-back (`crate::splitbrain`, `splitbrain.rs`).
    split: crate::splitbrain::Watch,
}

pub struct Node {
    /// The running configuration: the last good one (start, or the last reload
    /// that was applied). A reload is compared with it.
    config: Config,
    name: String,
    netlink: Netlink,
    ifaces: Vec<Iface>,
    vhids: Vec<VhidRt>,
    holder: Holder,
    sysctls: SysctlGuard,
    /// Node-wide demotion: `link_demotion` plus [`SYNC_DEMOTION`] while the
    /// sync bulk is pending.
    demotion: u32,
    link_demotion: u32,
    sync_demoted: bool,
    /// `carp demote|maintenance|disable` (`operator.rs`); maintenance is kept
    /// in `state_file` across restarts.
    op: crate::operator::OperatorState,
    state_file: PathBuf,
    /// State replication, when `[sync]` is configured (its own thread).
    sync: Option<SyncHandle>,
    /// The sync interface's XDP program; detaches when dropped.
    _sync_xdp: Option<xdp::SyncXdp>,
    metrics: Arc<Metrics>,
    status_tx: tokio::sync::watch::Sender<NodeStatus>,
    /// Keeps warnings about rejected adverts to a few per second (a flood
    /// must not turn into a log flood).
    warn_limiter: accept::WarnLimiter,
    /// Why the controller stops on its own (an interface was re-created, the
    /// link notifications are lost for good): returned after the orderly stop.
    exit_error: Option<NodeError>,
    /// `on_master`/`on_backup`/`on_init` (`crate::hooks`): run off this task.
    hooks: crate::hooks::Hooks,
    /// The reason hooks are told for the transitions `apply` is applying,
    /// when it is not the election's own (`split_brain`).
    transition_reason: Option<&'static str>,
}

fn now() -> Time {
    Time(xdp::ktime_now_ns())
}

fn vmac(vhid: u8) -> [u8; 6] {
    frame::virtual_mac(vhid)
}

/// Runs the controller until SIGTERM/SIGINT, then stops in order. On SIGHUP it
/// re-reads `config_path` with [`config::load`] and applies what changed
/// (module docs; `config` is what was loaded from it).
/// `resync` is the flag `carp sync resync` sets (see [`SyncHandle::start`]).
pub async fn run(
    config: Config,
    config_path: PathBuf,
    metrics: Arc<Metrics>,
    status_tx: tokio::sync::watch::Sender<NodeStatus>,
    resync: Arc<std::sync::atomic::AtomicBool>,
    mut operator: tokio::sync::mpsc::Receiver<crate::operator::Request>,
) -> Result<(), NodeError> {
    crate::privileges::check_run()?;
    // Signals first: a SIGTERM during start-up must still stop in order, and a
    // SIGHUP must not kill the process (its default action).
    let mut signals = Signals {
        term: signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?,
        int: signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?,
        hup: signal(SignalKind::hangup()).map_err(io("installing SIGHUP handler"))?,
    };
    let mut links = Netlink::link_events()?;
    let mut node = Node::start(config, metrics, status_tx, resync).await?;
    // Type=notify (dist/carp.service): XDP attached, VIPs in place, elections
    // running. Nothing is sent without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify the service manager (READY=1)");
    }
    let result = node
        .event_loop(&mut signals, &mut links, &config_path, &mut operator)
        .await;
    node.teardown().await;
    result
}

/// What the sync thread tells the election.
enum SyncEvent {
    /// Keep the VHIDs demoted (bulk pending) or not.
    Demote(bool),
    /// VHIDs the peer released (link-loss handover).
    Released(Vec<u8>),
    /// The peers' backups changed (`SyncHandle::backups`).
    Backups,
}

/// The sync thread's next word to the election; never ready without sync.
async fn sync_event(sync: &mut Option<SyncHandle>) -> SyncEvent {
    if let Some(h) = sync {
        tokio::select! {
            Ok(()) = h.demote.changed() => return SyncEvent::Demote(*h.demote.borrow_and_update()),
            Some(v) = h.released.recv() => return SyncEvent::Released(v),
            Ok(()) = h.backups.changed() => return SyncEvent::Backups,
            else => {}
        }
    }
    std::future::pending().await
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

fn election_params(v: &VhidConfig) -> election::Params {
    election::Params {
        vhid: v.id,
        advbase: v.advbase,
        advskew: v.advskew,
        preempt: v.preempt,
    }
}

impl Node {
    async fn start(
        config: Config,
        metrics: Arc<Metrics>,
        status_tx: tokio::sync::watch::Sender<NodeStatus>,
        resync: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, NodeError> {
        let netlink = Netlink::connect()?;
        // The sysctls' originals go to a file next to the control socket
        // before anything is changed, so that a run after a kill -9 restores
        // the values from before the killed run, not the ones it had set.
        let state_file = crate::netlink::sysctl_state_path(&config.node.control_socket);
        let mut sysctls = SysctlGuard::persistent(state_file.clone())
            .map_err(io(format!("sysctl state file {}", state_file.display())))?;
        // The kernel must not answer ARP for a VIP on any interface (the sync
        // link, management), not only on the CARP ones: all.arp_ignore ≥ 1.
        sysctls
            .restrict_arp_everywhere()
            .map_err(io("net.ipv4.conf.all.arp_ignore/arp_announce"))?;

        // Interfaces in config order, each once.
        let mut names: Vec<String> = Vec::new();
        for v in &config.vhids {
            if !names.contains(&v.interface) {
                names.push(v.interface.clone());
            }
        }
        let all_vips: Vec<Ipv4Addr> = config.vhids.iter().flat_map(vips_of).collect();
        let all_vips6: Vec<std::net::Ipv6Addr> = config.vhids.iter().flat_map(vips6_of).collect();

        // The data path is pinned where a bpffs can be had (pins.rs); a
        // previous run's pins for interfaces no longer configured go.
        let pins = match crate::pins::ensure_bpffs(&config.node.bpffs) {
            Ok(mounted) => {
                if mounted {
                    tracing::info!(path = %config.node.bpffs.display(), "mounted a bpffs for the pinned data path");
                }
                match crate::pins::remove_stale(&config.node.bpffs, &names) {
                    Ok(gone) if !gone.is_empty() => tracing::info!(interfaces = ?gone,
                        "removed the pinned data path of interfaces no longer configured"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot clean up stale pins"),
                }
                Some(config.node.bpffs.as_path())
            }
            Err(e) => {
                tracing::warn!(path = %config.node.bpffs.display(), error = %e,
                    "no bpffs: the data path is not pinned and dies with the controller");
                None
            }
        };
        let mut promises: Vec<(String, u8, VhidEntry)> = Vec::new();
        let mut ifaces = Vec::new();
        for name in &names {
            let facts = netlink.link(name).await?;
            let subnets: Vec<accept::Subnet> = netlink
                .ipv4_addresses(facts.index)
                .await?
                .into_iter()
                .filter(|(a, _)| !all_vips.contains(a))
                .map(|(a, len)| accept::Subnet::new(a, len))
                .collect();
            let own_ip = subnets.first().map(|s| s.addr);
            // IPv4 adverts (group or unicast) need an IPv4 source; an
            // interface with only IPv6-only VHIDs does not.
            let needs_v4 = config.vhids.iter().any(|v| {
                &v.interface == name
                    && (!v.addresses.is_empty() || v.peers.iter().any(|p| p.is_ipv4()))
            });
            if needs_v4 && own_ip.is_none() {
                return Err(NetlinkError::NoOwnAddress(name.clone()).into());
            }
            let ipv6 =
                Ipv6Own::from_addresses(netlink.ipv6_addresses(facts.index).await?, &all_vips6);
            let link = crate::peers::Link {
                subnets: &subnets,
                own6: &ipv6.all,
                subnets6: &ipv6.subnets,
            };
            unicast::check_start(&config, name, link).map_err(NodeError::Config)?;
            if ipv6.link_local.is_none() {
                let with6 = config
                    .vhids
                    .iter()
                    .filter(|v| &v.interface == name && !v.addresses6.is_empty());
                for v in with6 {
                    if v.addresses.is_empty() {
                        tracing::warn!(interface = %name, vhid = v.id,
                            "no IPv6 link-local address: this IPv6-only VHID sends no advert until the link comes up with one");
                    } else {
                        tracing::warn!(interface = %name, vhid = v.id,
                            "no IPv6 link-local address: adverts go over IPv4 only until the link comes up with one");
                    }
                }
            }
            let xdp_err = |source| NodeError::Xdp {
                iface: name.clone(),
                source,
            };
            let mut xdp = XdpInstance::load(facts.mac).map_err(xdp_err)?;
            // INIT entries and the VIP map before the program sees a packet.
            for v in config.vhids.iter().filter(|v| &v.interface == name) {
                xdp.set_vhid(v.id, VhidEntry::new(VhidState::Init, 0))
                    .map_err(xdp_err)?;
                for a in vips_of(v) {
                    xdp.add_vip(a, v.id).map_err(xdp_err)?;
                }
                for a in vips6_of(v) {
                    xdp.add_vip6(a, v.id).map_err(xdp_err)?;
                }
            }
            let (mode, inherited) =
                attach(&mut xdp, &facts, config.node.xdp_mode, pins).map_err(xdp_err)?;
            for (vhid, entry) in inherited {
                tracing::info!(interface = %name, vhid,
                    expires_in_ms = (entry.master_expires_ns as i64 - now().0 as i64) / 1_000_000,
                    "took over the pinned data path: its MASTER entry stands until its deadline");
                promises.push((name.clone(), vhid, entry));
            }
            let ring = xdp
                .take_adverts()
                .ok_or_else(|| NodeError::Io {
                    what: format!("{name}: the advert ring buffer was already taken"),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?
                .map_err(xdp_err)?;
            // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for
            // as long as the AsyncFd that owns the RingBuf lives.
            let ring =
                unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                    .map_err(|e| NodeError::Io {
                        what: format!("{name}: polling the advert ring"),
                        source: e.into_parts().1,
                    })?;
            // ARP is IPv4's: an interface without IPv4 has nothing to
            // answer or announce (and a reload cannot give its VHIDs IPv4
            // VIPs, `own_address_problems`).
            if own_ip.is_some() {
                sysctls
                    .set_ipv4_conf(name, "arp_ignore", "1")
                    .map_err(io(format!("{name}: arp_ignore")))?;
                sysctls
                    .set_ipv4_conf(name, "arp_announce", "2")
                    .map_err(io(format!("{name}: arp_announce")))?;
            }
            let group = GroupMembership::join(facts.index)
                .map_err(io(format!("{name}: joining 224.0.0.18")))?;
            if let Some(e) = group.v6_error() {
                tracing::warn!(interface = %name, error = %e,
                    "cannot join ff02::12: IPv6 adverts from peers may be filtered by the NIC");
            }
            let sender = FrameSender::open(facts.index)
                .map_err(io(format!("{name}: opening a packet socket")))?;
            let unicast = UnicastSender::open(name)
                .map_err(io(format!("{name}: opening a raw protocol-112 socket")))?;
            let unicast6 = UnicastSender6::open(name, facts.index).map_err(io(format!(
                "{name}: opening a raw IPv6 protocol-112 socket"
            )))?;
            tracing::info!(interface = %name, ifindex = facts.index, mac = %fmt_mac(&facts.mac), own_ip = ?own_ip,
                mode = mode.as_str(), link_up = facts.up, "XDP attached");
            ifaces.push(Iface {
                facts,
                own_ip,
                subnets,
                ipv6,
                mode,
                xdp,
                ring,
                sender,
                unicast,
                unicast6,
                _group: group,
                present: true,
            });
        }

        let mut vhids = Vec::new();
        for v in &config.vhids {
            let iface = names
                .iter()
                .position(|n| n == &v.interface)
                .expect("interface collected above");
            netlink
                .add_unicast_filter(ifaces[iface].facts.index, vmac(v.id))
                .await?;
            // Tie-break jitter keeps two equal nodes from trading places for long
            // (election module docs); the timing is otherwise the BSDs'.
            let mut rt = VhidRt::new(v, iface);
            if let Some((_, _, entry)) = promises
                .iter()
                .find(|(n, id, _)| n == &v.interface && *id == v.id)
            {
                rt.deadline.inherit(*entry);
            }
            vhids.push(rt);
        }

        // The VIPs go in last, when XDP already guards every CARP interface.
        let holder = netlink.ensure_holder(&config.node.holder_device).await?;
        for a in &all_vips {
            netlink.add_address(holder.index, *a, 32).await?;
        }
        for a in config.vhids.iter().flat_map(vips6_of) {
            netlink.add_address6(holder.index, a).await?;
        }
        // The sync interface's XDP program (frames from the peers only, TTL
        // 255, version and length checked) before the sync thread listens.
        let sync_xdp = match &config.sync {
            Some(sc) => {
                let facts = netlink.link(&sc.interface).await?;
                let want = resolve_mode(config.node.xdp_mode, &facts);
                let x = xdp::SyncXdp::load(&sc.interface, want, &sc.peers).map_err(|source| {
                    NodeError::Xdp {
                        iface: sc.interface.clone(),
                        source,
                    }
                })?;
                tracing::info!(interface = %sc.interface, peers = ?sc.peers, "sync XDP attached");
                Some(x)
            }
            None => None,
        };
        // carp_xdp_packets_total is read from the kernel at scrape time.
        let mut readers = Vec::new();
        for i in &ifaces {
            let reader = i.xdp.counters_reader().map_err(|source| NodeError::Xdp {
                iface: i.facts.name.clone(),
                source,
            })?;
            readers.push((i.facts.name.clone(), std::sync::Mutex::new(reader)));
        }
        if let (Some(x), Some(sc)) = (&sync_xdp, &config.sync) {
            let reader = x.counters_reader().map_err(|source| NodeError::Xdp {
                iface: sc.interface.clone(),
                source,
            })?;
            readers.push((sc.interface.clone(), std::sync::Mutex::new(reader)));
        }
        metrics.set_xdp_source(move || {
            let mut out = Vec::new();
            for (name, reader) in &readers {
                let Ok(reader) = reader.lock() else { continue };
                if let Ok(counts) = reader.read() {
                    // Only the reasons this interface's program can count.
                    for &r in reader.reasons() {
                        out.push((name.clone(), r, counts[r as usize]));
                    }
                }
            }
            out
        });
        for v in &vhids {
            metrics.add_vhid(v.cfg.id, &ifaces[v.iface].facts.name);
            metrics.set_advbase(
                v.cfg.id,
                &ifaces[v.iface].facts.name,
                v.cfg.advbase.duration(),
            );
        }
        tracing::info!(holder = %holder.name, created = holder.created, vips = all_vips.len(), "virtual addresses in place");

        // Sync before the elections start: a node that has not got its peers'
        // state table starts demoted (pfsync's bulk demotion).
        let sync = match &config.sync {
            Some(sc) => Some(SyncHandle::start(
                sc,
                &config.node.name,
                metrics.sync.clone(),
                resync,
            )?),
            None => None,
        };
        let sync_demoted = sync.as_ref().is_some_and(|h| *h.demote.borrow());
        // Persistent maintenance mode demotes from the first advert on.
        let (state_file, op) = operator::load_state(&config);

        let hooks = crate::hooks::Hooks::new(
            config.node.hooks.clone(),
            Duration::from_secs(u64::from(config.node.hook_timeout_s)),
            metrics.hooks.clone(),
        );
        let mut node = Node {
            name: config.node.name.clone(),
            config,
            netlink,
            ifaces,
            vhids,
            holder,
            sysctls,
            demotion: 0,
            link_demotion: 0,
            sync_demoted,
            op,
            state_file,
            sync,
            _sync_xdp: sync_xdp,
            metrics,
            status_tx,
            warn_limiter: accept::WarnLimiter::default(),
            exit_error: None,
            hooks,
            transition_reason: None,
        };
        node.update_demotion().await;
        let t = now();
        for i in 0..node.vhids.len() {
            let actions = node.vhids[i].machine.handle(t, Event::Start);
            node.apply(i, actions).await;
        }
        // Interfaces that start without carrier: as a link-down event.
        for ifi in 0..node.ifaces.len() {
            if !node.ifaces[ifi].facts.up {
                node.link_changed(ifi, false).await;
            }
        }
        node.publish_status();
        Ok(node)
    }

    async fn event_loop(
        &mut self,
        signals: &mut Signals,
        links: &mut futures::channel::mpsc::UnboundedReceiver<LinkEvent>,
        config_path: &Path,
        operator: &mut tokio::sync::mpsc::Receiver<crate::operator::Request>,
    ) -> Result<(), NodeError> {
        let mut stopping = false;
        // Interfaces believed down or gone are read again this often
        // (linkwatch.rs): a missed link-up must not leave a VHID in INIT.
        let mut next_link_check = tokio::time::Instant::now() + linkwatch::RECHECK_INTERVAL;
        let mut links_reopened: Option<tokio::time::Instant> = None;
        // The stream ended for good (we are stopping): do not poll it again.
        let mut links_dead = false;
        // Election deadlines to the microsecond (timer.rs): tokio's timer
        // rounds up to whole milliseconds.
        let timer = DeadlineTimer::new().map_err(io("creating the election timer (timerfd)"))?;
        loop {
            if stopping && self.vhids.iter().all(|v| v.stopped) {
                return self.exit_error.take().map_or(Ok(()), Err);
            }
            // Inherited promises (deadman.rs) end on the same timer.
            let deadline = self
                .vhids
                .iter()
                .filter(|v| !v.stopped)
                .flat_map(|v| {
                    let promise = v
                        .deadline
                        .promise_until()
                        .map(|u| Time(u.saturating_add(1)));
                    [v.machine.poll_at(), promise, v.split.poll_at()]
                })
                .flatten()
                .min();
            tokio::select! {
                _ = signals.term.recv() => {
                    if stopping { return self.exit_error.take().map_or(Ok(()), Err); }
                    stopping = true;
                    self.begin_shutdown("SIGTERM").await;
                }
                _ = signals.int.recv() => {
                    if stopping { return self.exit_error.take().map_or(Ok(()), Err); }
                    stopping = true;
                    self.begin_shutdown("SIGINT").await;
                }
                _ = signals.hup.recv() => {
                    if stopping {
                        tracing::warn!("SIGHUP while stopping: configuration not reloaded");
                    } else {
                        self.reload(config_path).await;
                    }
                }
                ev = links.next(), if !links_dead => {
                    let stop = match ev {
                        Some(LinkEvent::Overrun) => {
                            tracing::warn!("link notifications were lost (netlink overrun): reading every CARP interface again");
                            self.recheck_links(true).await
                        }
                        Some(ev) => {
                            let mut stop = false;
                            for (ifi, change) in linkwatch::on_event(&self.known_links(), &ev) {
                                stop |= self.link_change(ifi, change).await;
                            }
                            stop
                        }
                        None => {
                            // Never run on with link state nobody updates:
                            // reopen and read everything again, or stop.
                            let again = links_reopened.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                            match Netlink::link_events() {
                                Ok(rx) if !again => {
                                    tracing::error!("the link notification stream ended: reopened, reading every CARP interface again");
                                    *links = rx;
                                    links_reopened = Some(tokio::time::Instant::now());
                                    self.recheck_links(true).await
                                }
                                Ok(_) => {
                                    links_dead = true;
                                    self.fail("the link notification stream ended twice within 10 s: stopping")
                                }
                                Err(e) => {
                                    links_dead = true;
                                    self.fail(format!("the link notification stream ended and cannot be reopened ({e}): stopping"))
                                }
                            }
                        }
                    };
                    if stop && !stopping {
                        stopping = true;
                        self.begin_shutdown("link monitoring").await;
                    }
                }
                _ = tokio::time::sleep_until(next_link_check) => {
                    next_link_check = tokio::time::Instant::now() + linkwatch::RECHECK_INTERVAL;
                    if self.recheck_links(false).await && !stopping {
                        stopping = true;
                        self.begin_shutdown("link monitoring").await;
                    }
                }
                ifi = any_readable(&self.ifaces) => {
                    self.drain_ring(ifi).await;
                }
                Some(req) = operator.recv() => {
                    let reply = if stopping {
                        Err("the controller is stopping".into())
                    } else {
                        self.operator(req.command).await
                    };
                    // The client may have given up; nothing to do then.
                    let _ = req.reply.send(reply);
                }
                ev = sync_event(&mut self.sync) => match ev {
                    SyncEvent::Demote(demoted) => {
                        self.sync_demoted = demoted;
                        self.update_demotion().await;
                    }
                    SyncEvent::Released(vhids) => self.peer_released(&vhids).await,
                    SyncEvent::Backups => self.apply_backup_timings(),
                },
                _ = tokio::time::sleep(Duration::from_millis(500)), if self.sync.is_some() => {
                    // Sync status (peers, progress) refreshes the published status.
                }
                r = wait_deadline(&timer, deadline) => {
                    r.map_err(io("the election timer (timerfd)"))?;
                    // Adverts that arrived while we slept count before any timer:
                    // a starved controller must not take over falsely.
                    for ifi in 0..self.ifaces.len() {
                        self.drain_ring(ifi).await;
                    }
                    let t = now();
                    for i in 0..self.vhids.len() {
                        if self.vhids[i].stopped { continue; }
                        if self.vhids[i].machine.poll_at().is_some_and(|d| d <= t) {
                            let actions = self.vhids[i].machine.handle(t, Event::Timer);
                            self.apply(i, actions).await;
                        }
                    }
                    self.end_promises(now());
                }
            }
            self.check_split_brain().await;
            self.publish_status();
        }
    }

    /// Moves every VHID's MASTER deadline to just before its quickest
    /// backup's takeover, as the peers' hellos report it (`deadman.rs`,
    /// [`deadman::takeover_offset_ns`]); without a live backup peer, back to
    /// our own `3 × advbase`. Called when the report changes and after a reload.
    pub(super) fn apply_backup_timings(&mut self) {
        let timings = match &mut self.sync {
            Some(h) => h.backups.borrow_and_update().clone(),
            None => Default::default(),
        };
        for v in &mut self.vhids {
            let base = v.machine.params().advbase;
            let own = 3 * base.duration();
            let quickest = timings
                .get(&v.cfg.id)
                .into_iter()
                .flatten()
                .filter_map(|&(advbase, advskew)| {
                    deadman::backup_master_down(base, advbase, advskew)
                })
                .min();
            let offset = deadman::takeover_offset_ns(own, quickest);
            if let Some(entry) = v.deadline.set_offset(offset) {
                tracing::debug!(
                    vhid = v.cfg.id,
                    offset_ms = offset / 1_000_000,
                    "dead-man deadline moved"
                );
                if let Err(e) = self.ifaces[v.iface].xdp.set_vhid(v.cfg.id, entry) {
                    tracing::error!(vhid = v.cfg.id, error = %e, "cannot write the data-path entry");
                }
            }
        }
    }

    /// Writes the entries that waited for a previous run's promises to end.
    fn end_promises(&mut self, t: Time) {
        for v in &mut self.vhids {
            if let Some(entry) = v.deadline.poll(t.0) {
                tracing::info!(vhid = v.cfg.id, "the previous run's MASTER entry ran out");
                if let Err(e) = self.ifaces[v.iface].xdp.set_vhid(v.cfg.id, entry) {
                    tracing::error!(vhid = v.cfg.id, error = %e, "cannot write the data-path entry");
                }
            }
        }
    }

    async fn begin_shutdown(&mut self, why: &str) {
        tracing::info!(signal = why, "stopping: bowing out where MASTER");
        let t = now();
        for i in 0..self.vhids.len() {
            let actions = self.vhids[i].machine.handle(t, Event::Shutdown);
            self.apply(i, actions).await;
        }
    }

    /// Records why the controller stops on its own (logged now, returned after
    /// the orderly stop); returns true (stop).
    fn fail(&mut self, why: impl Into<String>) -> bool {
        let why = why.into();
        tracing::error!("{why}");
        self.exit_error.get_or_insert(NodeError::Link(why));
        true
    }

    fn known_links(&self) -> Vec<Known> {
        self.ifaces
            .iter()
            .map(|i| Known {
                name: i.facts.name.clone(),
                index: i.facts.index,
                up: i.facts.up,
                present: i.present,
            })
            .collect()
    }

    /// Reads the CARP interfaces from the kernel again (all of them, or only
    /// those believed down or gone) and applies what differs. Returns true
    /// when the controller must stop (an interface was re-created).
    async fn recheck_links(&mut self, all: bool) -> bool {
        let mut stop = false;
        for (ifi, k) in self.known_links().into_iter().enumerate() {
            if !all && k.up && k.present {
                continue;
            }
            let by_index = if k.present {
                match self.netlink.link_state(k.index).await {
                    Ok(s) => s.map(|(_, up)| up),
                    Err(e) => {
                        tracing::warn!(interface = %k.name, error = %e, "cannot read the link state");
                        continue;
                    }
                }
            } else {
                None
            };
            let by_name = match self.netlink.link_index(&k.name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(interface = %k.name, error = %e, "cannot read the link state");
                    continue;
                }
            };
            if let Some(change) = linkwatch::reconcile(&k, &Seen { by_index, by_name }) {
                tracing::warn!(interface = %k.name, ?change, "link state re-read: it differed");
                stop |= self.link_change(ifi, change).await;
            }
        }
        stop
    }

    /// Applies one change of a CARP interface (`linkwatch.rs`). Returns true
    /// when the controller must stop.
    async fn link_change(&mut self, ifi: usize, change: Change) -> bool {
        let (name, index) = (
            self.ifaces[ifi].facts.name.clone(),
            self.ifaces[ifi].facts.index,
        );
        match change {
            Change::Up => self.link_changed(ifi, true).await,
            Change::Down => self.link_changed(ifi, false).await,
            Change::Deleted => {
                tracing::error!(interface = %name, ifindex = index,
                    "CARP interface deleted: its VHIDs go INIT and the node is demoted; a new one of that name makes carp run stop (restart it then)");
                self.ifaces[ifi].present = false;
                if self.ifaces[ifi].facts.up {
                    self.link_changed(ifi, false).await;
                }
            }
            Change::Replaced { new_index } => {
                return self.fail(format!(
                    "CARP interface {name} was re-created (ifindex {index} -> {new_index}): XDP, the advert ring and the unicast filters were on the deleted one; stopping, start carp run again"
                ));
            }
        }
        false
    }

    async fn link_changed(&mut self, ifi: usize, up: bool) {
        let name = self.ifaces[ifi].facts.name.clone();
        self.ifaces[ifi].facts.up = up;
        tracing::warn!(interface = %name, up, "link state changed");
        if up {
            self.refresh_ipv6(ifi).await;
        }
        let t = now();
        for i in 0..self.vhids.len() {
            if self.vhids[i].iface == ifi {
                let ev = if up { Event::LinkUp } else { Event::LinkDown };
                let actions = self.vhids[i].machine.handle(t, ev);
                self.apply(i, actions).await;
            }
        }
        // Node-wide demotion: every VHID of the node moves together.
        let down = self.ifaces.iter().filter(|i| !i.facts.up).count() as u32;
        self.link_demotion = down * IFDOWN_DEMOTION;
        self.update_demotion().await;
    }

    /// Reads the interface's IPv6 addresses again: a link that comes up gets
    /// its link-local address only then (the source of IPv6 adverts).
    async fn refresh_ipv6(&mut self, ifi: usize) {
        let vips6: Vec<std::net::Ipv6Addr> = self
            .vhids
            .iter()
            .flat_map(|v| v.vips6.iter().copied())
            .collect();
        let index = self.ifaces[ifi].facts.index;
        match self.netlink.ipv6_addresses(index).await {
            Ok(addrs) => self.ifaces[ifi].ipv6 = Ipv6Own::from_addresses(addrs, &vips6),
            Err(e) => tracing::warn!(interface = %self.ifaces[ifi].facts.name, error = %e,
                "cannot read the IPv6 addresses"),
        }
    }

    /// The sync peer was MASTER of these VHIDs and lost their interface
    /// (its authenticated hello says INIT): take them over now, as for its
    /// bow-out, instead of after the master-down interval (docs/protocol.md
    /// §4, "Hello"). VHIDs in other states ignore it.
    async fn peer_released(&mut self, vhids: &[u8]) {
        let t = now();
        for i in 0..self.vhids.len() {
            if vhids.contains(&self.vhids[i].cfg.id)
                && self.vhids[i].machine.state() == State::Backup
            {
                tracing::info!(
                    vhid = self.vhids[i].cfg.id,
                    "sync peer lost the VHID's link: taking over"
                );
                let actions = self.vhids[i]
                    .machine
                    .handle(t, Event::Advert(PeerAdvert::BOW_OUT));
                self.apply(i, actions).await;
            }
        }
    }

    /// Recomputes the node-wide demotion and hands a change to every VHID.
    async fn update_demotion(&mut self) {
        let reasons = self.demotion_reasons();
        self.metrics.set_demotion(&reasons);
        let demotion = reasons.total();
        let t = now();
        if demotion != self.demotion {
            self.demotion = demotion;
            for i in 0..self.vhids.len() {
                let actions = self.vhids[i]
                    .machine
                    .handle(t, Event::SetDemotion(demotion));
                self.apply(i, actions).await;
            }
        }
    }

    async fn drain_ring(&mut self, ifi: usize) {
        let mut records: Vec<AdvertRecord> = Vec::new();
        {
            let ring = self.ifaces[ifi].ring.get_mut();
            while let Some(item) = ring.next() {
                if let Some(r) = xdp::decode_record(&item) {
                    records.push(r);
                }
            }
        }
        // Clear readiness only after draining (tokio's tick check keeps a
        // wakeup that raced with the drain).
        if let Some(mut guard) =
            futures::FutureExt::now_or_never(self.ifaces[ifi].ring.readable_mut())
                .and_then(Result::ok)
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(r) = xdp::decode_record(&item) {
                    records.push(r);
                }
            }
            guard.clear_ready();
        }
        for r in records {
            self.on_record(ifi, r).await;
        }
    }

    /// User-space half of advert validation (docs/protocol.md §1 "Receiving"): the
    /// kernel already checked TTL, length, version, type, checksum and that the
    /// VHID is configured; here: own adverts, HMAC, counter, source MAC.
    async fn on_record(&mut self, ifi: usize, rec: AdvertRecord) {
        let Ok(pkt) = carp::Packet::new_checked(&rec.payload[..]) else {
            return;
        };
        let repr = match carp::Repr::parse(&pkt) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "advert from the ring failed to parse");
                return;
            }
        };
        let Some(i) = self
            .vhids
            .iter()
            .position(|v| v.iface == ifi && v.cfg.id == repr.vhid)
        else {
            self.metrics.advert_received(
                repr.vhid,
                &self.ifaces[ifi].facts.name,
                AdvertResult::UnknownVhid,
            );
            return;
        };
        let iface = &self.ifaces[ifi];
        let (src, dst) = record_addresses(&rec);
        let v = &mut self.vhids[i];
        let ifname = iface.facts.name.clone();
        // The policy (own, subnet, HMAC, fast mode, counter, MAC) is `accept.rs`,
        // shared with the election simulation. A sender silent for one
        // master-down interval is forgotten (docs/protocol.md §1, "Counter and replay").
        let policy = accept::Policy {
            vhid: v.cfg.id,
            password: v.cfg.password.as_bytes(),
            vips: &v.vips,
            vips6: &v.vips6,
            own_ip: iface.own_ip,
            subnets: &iface.subnets,
            own_ip6: &iface.ipv6.all,
            subnets6: &iface.ipv6.subnets,
            peers: &v.cfg.peers,
            forget_after_ns: v.machine.master_down_interval().as_nanos() as u64,
            fast_mode: v.cfg.advbase.is_fast(),
        };
        let received = accept::Received {
            repr: &repr,
            src,
            dst,
            src_mac: rec.src_mac,
            ktime_ns: rec.ktime_ns,
        };
        let (advert, counter, unexpected_mac) = match accept::accept(
            &policy,
            &mut v.tracker,
            &received,
        ) {
            accept::Verdict::Accept {
                advert,
                counter,
                unexpected_source_mac,
            } => (advert, counter, unexpected_source_mac),
            accept::Verdict::Reject(why) => {
                self.metrics
                    .advert_received(v.cfg.id, &ifname, why.result());
                if why.warns() {
                    if let Some(suppressed) = self.warn_limiter.allow(now().0, v.cfg.id, why) {
                        tracing::warn!(vhid = v.cfg.id, interface = %ifname, %src, counter = repr.counter,
                                suppressed, "{}", why.describe());
                    }
                }
                return;
            }
        };
        if counter == Verdict::Jump {
            self.metrics.advert_counter_jump(v.cfg.id, &ifname);
        }
        if unexpected_mac {
            self.metrics.advert_unexpected_source_mac(v.cfg.id, &ifname);
            tracing::debug!(vhid = v.cfg.id, %src, mac = %fmt_mac(&rec.src_mac), "advert from an unexpected source MAC");
        }
        self.metrics
            .advert_received(v.cfg.id, &ifname, AdvertResult::Ok);
        v.received += 1;
        let actions = v.machine.handle(Time(rec.ktime_ns), Event::Advert(advert));
        self.apply(i, actions).await;
        let v = &mut self.vhids[i];
        v.heard = observed::Heard::after_advert(
            v.heard,
            v.machine.state(),
            src,
            advert,
            Time(rec.ktime_ns),
        );
    }

    /// Applies election actions in the order given (takeover order matters:
    /// map, advert, gratuitous ARP).
    async fn apply(&mut self, i: usize, actions: impl IntoIterator<Item = Action>) {
        for action in actions {
            let v = &mut self.vhids[i];
            let iface = &mut self.ifaces[v.iface];
            let ifname = iface.facts.name.as_str();
            match action {
                Action::SetDataplane {
                    state,
                    master_expires,
                } => {
                    let st = match state {
                        State::Init => VhidState::Init,
                        State::Backup => VhidState::Backup,
                        State::Master => VhidState::Master,
                    };
                    let wanted = VhidEntry::new(st, master_expires.map_or(0, |t| t.0));
                    // A MASTER entry's deadline moves only once the advert
                    // that follows has left (deadman.rs).
                    if let Some(entry) = v.deadline.on_set(wanted, now().0) {
                        if let Err(e) = iface.xdp.set_vhid(v.cfg.id, entry) {
                            tracing::error!(vhid = v.cfg.id, interface = ifname, error = %e, "cannot write the data-path entry");
                        }
                    }
                }
                Action::SendAdvert { advbase, advskew } => {
                    v.counter = v.counter.wrapping_add(1);
                    // A BSD peer may adopt our counter; the tracker must know it.
                    v.tracker.record_sent(now().0, v.counter);
                    let repr = carp::Repr::new_advert(
                        v.cfg.id,
                        advbase,
                        advskew,
                        v.counter,
                        v.cfg.password.as_bytes(),
                        &v.vips,
                        &v.vips6,
                    );
                    // To the group, or to each unicast peer (`unicast.rs`).
                    let sent = iface.send_advert(&v.cfg, &repr);
                    if let Some(entry) = v.deadline.on_send(sent.is_ok()) {
                        if let Err(e) = iface.xdp.set_vhid(v.cfg.id, entry) {
                            tracing::error!(vhid = v.cfg.id, interface = ifname, error = %e, "cannot write the data-path entry");
                        }
                    }
                    match sent {
                        Ok(()) => {
                            v.sent += 1;
                            self.metrics.advert_sent(v.cfg.id, ifname);
                        }
                        Err(e) => {
                            // The deadline was not moved: adverts that keep
                            // failing let the MASTER entry expire.
                            self.metrics.advert_send_error(v.cfg.id, ifname);
                            if let Some(suppressed) = v.send_error_log.allow(now().0) {
                                tracing::warn!(vhid = v.cfg.id, interface = ifname, error = %e, suppressed,
                                    expires_in_ms = (v.deadline.written().master_expires_ns as i64 - now().0 as i64) / 1_000_000,
                                    "advert not sent: the dead-man deadline was not moved");
                            }
                        }
                    }
                }
                Action::SendBowOut => {
                    for n in 0..3 {
                        if n > 0 {
                            tokio::time::sleep(BOW_OUT_SPACING).await;
                        }
                        // Each copy steps the counter, so a receiver that enforces
                        // +1 steps takes whichever copy arrives first.
                        v.counter = v.counter.wrapping_add(1);
                        v.tracker.record_sent(now().0, v.counter);
                        let repr = carp::Repr::bow_out(
                            v.cfg.id,
                            v.counter,
                            v.cfg.password.as_bytes(),
                            &v.vips,
                            &v.vips6,
                        );
                        if let Err(e) = iface.send_advert(&v.cfg, &repr) {
                            tracing::warn!(vhid = v.cfg.id, error = %e, "bow-out not sent");
                        }
                    }
                    tracing::info!(vhid = v.cfg.id, interface = ifname, "bowed out");
                }
                Action::Announce => {
                    for vip in &v.vips {
                        let f = frame::gratuitous_arp(vmac(v.cfg.id), *vip);
                        if let Err(e) = iface.sender.send(&f) {
                            tracing::warn!(vhid = v.cfg.id, %vip, error = %e, "gratuitous ARP not sent");
                        }
                    }
                    for vip in &v.vips6 {
                        let f = ndp::unsolicited_na(vmac(v.cfg.id), *vip);
                        if let Err(e) = iface.sender.send(&f) {
                            tracing::warn!(vhid = v.cfg.id, %vip, error = %e, "unsolicited neighbour advertisement not sent");
                        }
                    }
                }
                Action::Transition { from, to, why } => {
                    v.last_transition = Some(now());
                    v.transition = Some(observed::LastTransition::now(from, to, why));
                    v.heard = None;
                    tracing::info!(vhid = v.cfg.id, interface = ifname, from = state_name(from), to = state_name(to), why = ?why, "transition");
                    self.metrics.transition(v.cfg.id, ifname, role(to));
                    self.metrics.set_state(v.cfg.id, ifname, role(to));
                    let reason = self.transition_reason.unwrap_or(why.label());
                    hooks::on_transition(&self.hooks, &self.name, v, ifname, (from, to), reason);
                }
                Action::Stopped => {
                    v.stopped = true;
                }
            }
        }
    }

    fn iface_index(&self, name: &str) -> Option<usize> {
        self.ifaces.iter().position(|i| i.facts.name == name)
    }

    fn vhid_index(&self, interface: &str, id: u8) -> Option<usize> {
        let ifi = self.iface_index(interface)?;
        self.vhids
            .iter()
            .position(|v| v.iface == ifi && v.cfg.id == id)
    }

    fn xdp_error(&self, ifi: usize, what: &str, e: &xdp::XdpError) {
        tracing::error!(interface = %self.ifaces[ifi].facts.name, error = %e, "reload: {what}");
    }

    fn publish_status(&self) {
        let t = now();
        let vhids = self
            .vhids
            .iter()
            .map(|v| {
                let iface = &self.ifaces[v.iface];
                VhidStatus {
                    id: v.cfg.id,
                    interface: iface.facts.name.clone(),
                    state: state_name(v.machine.state()).to_uppercase(),
                    advbase: v.cfg.advbase.wire(),
                    advskew: v.cfg.advskew,
                    effective_advskew: v.machine.effective_advskew(),
                    addresses: v
                        .cfg
                        .addresses
                        .iter()
                        .map(|a| a.to_string())
                        .chain(v.cfg.addresses6.iter().map(|a| a.to_string()))
                        .collect(),
                    preempt: v.cfg.preempt,
                    xdp_mode: iface.mode.as_str().to_string(),
                    link_up: iface.facts.up,
                    last_transition_secs_ago: v
                        .last_transition
                        .map(|lt| (t.0.saturating_sub(lt.0)) as f64 / 1e9),
                    master_expires_in_ms: (v.deadline.written().state == VhidState::Master as u32)
                        .then(|| {
                            (v.deadline.written().master_expires_ns as i64 - t.0 as i64) / 1_000_000
                        }),
                    adverts_sent: v.sent,
                    adverts_received: v.received,
                    advbase_ms: v.cfg.advbase.millis(),
                    last_transition: v.transition.as_ref().map(observed::LastTransition::status),
                    master: v.heard.as_ref().map(|h| h.status(t)),
                    split_brain: v.split.alarm(),
                }
            })
            .collect();
        self.metrics.set_vhid_gauges(
            self.vhids
                .iter()
                .map(|v| crate::metrics::VhidGauges {
                    vhid: v.cfg.id,
                    interface: self.ifaces[v.iface].facts.name.clone(),
                    effective_advskew: v.machine.effective_advskew(),
                    last_transition_unix: v.transition.map(|l| l.unix),
                    master_heard_ns: v.heard.map(|h| h.at.0),
                })
                .collect(),
        );
        if let Some(h) = &self.sync {
            h.set_vhids(
                self.vhids
                    .iter()
                    .map(|v| crate::wire::sync::HelloVhid {
                        vhid: v.cfg.id,
                        // A MASTER that bowed out is leaving, not contesting:
                        // INIT tells the peer to take over now (as the bow-out
                        // does) and never reads as a second master to its
                        // split-brain watch while we wait for its first advert.
                        state: match v.machine.state() {
                            State::Master if v.machine.is_leaving() => {
                                crate::wire::sync::VhidState::Init
                            }
                            State::Master => crate::wire::sync::VhidState::Master,
                            State::Backup => crate::wire::sync::VhidState::Backup,
                            State::Init => crate::wire::sync::VhidState::Init,
                        },
                        advbase: v.cfg.advbase.wire(),
                        advskew: v.machine.effective_advskew(),
                    })
                    .collect(),
            );
        }
        let status = NodeStatus {
            node: self.name.clone(),
            demotion: self.demotion,
            sync: self.sync.as_ref().map(SyncHandle::status),
            vhids,
            demotion_reasons: self.demotion_reasons(),
            maintenance: self.op.maintenance,
            disabled: self.op.disabled,
        };
        self.status_tx.send_replace(status);
    }

    /// Removes what start() added, in reverse: data path to INIT, VIPs, filters,
    /// sysctls, the holder device (if ours); XDP detaches when `ifaces` drops.
    async fn teardown(&mut self) {
        // The sync thread stops (joins) first: it must not install states
        // into a table whose node is leaving.
        self.sync = None;
        for v in &self.vhids {
            let _ = self.ifaces[v.iface]
                .xdp
                .set_vhid(v.cfg.id, VhidEntry::new(VhidState::Init, 0));
        }
        for v in &self.vhids {
            for a in &v.vips {
                if let Err(e) = self.netlink.remove_address(self.holder.index, *a, 32).await {
                    tracing::warn!(error = %e, "cannot remove VIP");
                }
            }
            for a in &v.vips6 {
                if let Err(e) = self.netlink.remove_address6(self.holder.index, *a).await {
                    tracing::warn!(error = %e, "cannot remove VIP");
                }
            }
            if let Err(e) = self
                .netlink
                .remove_unicast_filter(self.ifaces[v.iface].facts.index, vmac(v.cfg.id))
                .await
            {
                tracing::warn!(error = %e, "cannot remove the unicast filter entry");
            }
        }
        self.sysctls.restore();
        if self.holder.created {
            if let Err(e) = self.netlink.delete_link(self.holder.index).await {
                tracing::warn!(error = %e, "cannot delete the holder device");
            }
        }
        self.ifaces.clear();
        tracing::info!("stopped: VIPs removed, XDP detached");
        // The last transitions' hooks (on_backup/on_init of the stop) get their time.
        let limit = self.hooks.timeout() + Duration::from_secs(1);
        self.hooks.drain(limit).await;
    }
}

impl VhidRt {
    fn new(v: &VhidConfig, iface: usize) -> Self {
        // Tie-break jitter keeps two equal nodes from trading places for long
        // (election module docs); the timing is otherwise the BSDs'.
        let machine = election::Vhid::new(election_params(v)).with_tie_break_seed(rand::random());
        VhidRt {
            cfg: v.clone(),
            iface,
            vips: vips_of(v),
            vips6: vips6_of(v),
            machine,
            // The BSDs and ucarp start from a random counter; so do we
            // (docs/protocol.md §1, "Counter and replay").
            counter: rand::random(),
            tracker: replay::Tracker::new(),
            last_transition: None,
            transition: None,
            heard: None,
            sent: 0,
            received: 0,
            stopped: false,
            deadline: deadman::DeadlineGate::default(),
            send_error_log: deadman::LogLimiter::new(10_000_000_000),
            split: crate::splitbrain::Watch::default(),
        }
    }
}

/// Completes at `deadline` (CLOCK_MONOTONIC, as [`Time`]); never without one.
async fn wait_deadline(timer: &DeadlineTimer, deadline: Option<Time>) -> std::io::Result<()> {
    match deadline {
        Some(d) => timer.wait_until(d.0).await,
        None => std::future::pending().await,
    }
}

/// Waits until one interface's advert ring has data; returns its index.
async fn any_readable(ifaces: &[Iface]) -> usize {
    if ifaces.is_empty() {
        return futures::future::pending().await;
    }
    let futs = ifaces.iter().map(|i| Box::pin(i.ring.readable()));
    let (res, idx, _) = futures::future::select_all(futs).await;
    // The guard is dropped without clearing readiness; drain_ring clears it.
    drop(res);
    idx
}

/// `xdp_mode` for one interface: `auto` is native only for a NIC whose
/// driver is known to do `XDP_TX` natively (`xdp_drivers.rs`), generic
/// elsewhere (virtual devices: native XDP_TX on veth is lost unless the peer
/// runs XDP too).
fn resolve_mode(mode: XdpMode, facts: &LinkFacts) -> AttachMode {
    match mode {
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Auto => {
            let driver = crate::xdp_drivers::driver_of(&facts.name);
            if crate::xdp_drivers::auto_native(facts.kind.as_deref(), driver.as_deref()) {
                AttachMode::Native
            } else {
                if facts.kind.is_none() {
                    tracing::info!(interface = %facts.name, driver = driver.as_deref().unwrap_or("unknown"),
                        "driver not known to do XDP_TX in native mode: generic mode (xdp_mode = \"native\" forces it)");
                }
                AttachMode::Generic
            }
        }
    }
}

/// Attaches in the mode [`resolve_mode`] picks. Native failures fall back
/// to generic with a warning.
///
/// With `pins` (a bpffs is there), the data path is pinned and a previous
/// run's is taken over ([`XdpInstance::attach_pinned`]); the returned entries
/// are its MASTER promises that this run keeps.
fn attach(
    xdp: &mut XdpInstance,
    facts: &LinkFacts,
    mode: XdpMode,
    pins: Option<&Path>,
) -> Result<(AttachMode, Vec<(u8, VhidEntry)>), xdp::XdpError> {
    let want = resolve_mode(mode, facts);
    let try_mode = |xdp: &mut XdpInstance, m: AttachMode| match pins {
        Some(bpffs) => xdp.attach_pinned(&facts.name, m, PinDir::new(bpffs, &facts.name)),
        None => xdp.attach(&facts.name, m).map(|()| Vec::new()),
    };
    match try_mode(xdp, want) {
        Ok(inherited) => Ok((want, inherited)),
        Err(e) if want == AttachMode::Native => {
            tracing::warn!(interface = %facts.name, error = %e, "native XDP attach failed; falling back to generic mode");
            let inherited = try_mode(xdp, AttachMode::Generic)?;
            Ok((AttachMode::Generic, inherited))
        }
        Err(e) => Err(e),
    }
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Init => "init",
        State::Backup => "backup",
        State::Master => "master",
    }
}

fn role(s: State) -> Role {
    match s {
        State::Init => Role::Init,
        State::Backup => Role::Backup,
        State::Master => Role::Master,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    /// The interface's IPv6 addresses as `accept.rs` gets them: VIPs left
    /// out, the link-local found whatever its position, prefixes of the others.
    #[test]
    fn own_ipv6_addresses_of_an_interface() {
        let ll: Ipv6Addr = "fe80::211:22ff:fe33:4455".parse().unwrap();
        let global: Ipv6Addr = "2001:db8:77::11".parse().unwrap();
        let vip: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
        let own = Ipv6Own::from_addresses(vec![(global, 64), (vip, 128), (ll, 64)], &[vip]);
        assert_eq!(own.link_local, Some(ll));
        assert_eq!(own.all, vec![global, ll]);
        assert_eq!(own.subnets, vec![accept::Subnet6::new(global, 64)]);
        assert_eq!(
            Ipv6Own::from_addresses(vec![(global, 64)], &[]).link_local,
            None
        );
    }

    #[test]
    fn ring_record_addresses_by_family() {
        let mut rec = AdvertRecord {
            ktime_ns: 0,
            family: 4,
            ttl: 255,
            src_mac: [0; 6],
            src_addr: [0; 16],
            dst_addr: [0; 16],
            payload: [0; 36],
            _pad: [0; 4],
        };
        rec.src_addr[..4].copy_from_slice(&[10, 77, 0, 12]);
        rec.dst_addr[..4].copy_from_slice(&[224, 0, 0, 18]);
        assert_eq!(
            record_addresses(&rec),
            (IpAddr::from([10, 77, 0, 12]), IpAddr::from([224, 0, 0, 18]))
        );
        let ll: Ipv6Addr = "fe80::12".parse().unwrap();
        rec.family = 6;
        rec.src_addr = ll.octets();
        rec.dst_addr = carp_common::CARP_GROUP_V6.octets();
        assert_eq!(
            record_addresses(&rec),
            (IpAddr::V6(ll), IpAddr::V6(carp_common::CARP_GROUP_V6))
        );
    }
}
