//! Prometheus metrics: the registry, typed update methods, and the `/metrics` endpoint.
//!
//! Metric and label names are part of the interface (dashboards and alerts use them):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `carp_vhid_state` | gauge: 0 init, 1 backup, 2 master | `vhid`, `interface` |
//! | `carp_vhid_advbase_seconds` | gauge: the configured base interval, `advbase` or `advbase_ms` / 1000 (fast mode) | `vhid`, `interface` |
//! | `carp_transitions_total` | counter | `vhid`, `interface`, `to` (init, backup, master) |
//! | `carp_adverts_sent_total` | counter | `vhid`, `interface` |
//! | `carp_adverts_send_errors_total` | counter: adverts the kernel refused (the dead-man deadline was not moved) | `vhid`, `interface` |
//! | `carp_adverts_received_total` | counter | `vhid`, `interface`, `result` ([`AdvertResult::label`]: `ok`, `bad_digest`, `replay`, `own`, `off_subnet`, `unknown_vhid`, `fast_mode_mismatch`, `not_peer`, `duplicate`, ...; the policy is `crate::accept`) |
//! | `carp_adverts_unexpected_source_mac_total` | counter | `vhid`, `interface` |
//! | `carp_xdp_packets_total` | counter | `interface`, `reason` ([`carp_common::Reason::label`]) |
//! | `carp_demotion` | gauge: the node's demotion per reason; the total is their sum | `reason` (`crate::demotion::Reason`: link, sync, operator, maintenance) |
//! | `carp_effective_advskew`, `carp_last_transition_timestamp_seconds`, `carp_master_advert_age_seconds` | gauge (`vhid_gauges`) | `vhid`, `interface` |
//! | `carp_config_reloads_total` | counter | `result` ([`ReloadResult::label`]) |
//! | `carp_hook_runs_total` | counter | `vhid`, `interface`, `hook` (on_master, on_backup, on_init), `result` (`crate::hooks::HookResult`) |
//! | `carp_split_brain` | gauge: 1 while the split-brain alarm is on (`crate::splitbrain`) | `vhid`, `interface` |
//!
//! `carp_xdp_packets_total` is not updated by the controller: the XDP program counts in a
//! per-CPU array, and a collector reads the sums at scrape time through the callback given
//! to [`Metrics::set_xdp_source`]. This exports the kernel's absolute values as they are,
//! instead of mirroring them into counters with `inc_by(delta)` (which would need the
//! previous value per series, and would hide a reset when the program is reloaded; a
//! reset counter is something Prometheus' `rate()` already handles).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use carp_common::{Reason, VhidState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

mod vhid_gauges;
pub use vhid_gauges::VhidGauges;

/// Content type of [`Metrics::encode`]'s output: prometheus-client writes OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Role of a VHID as the metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Init,
    Backup,
    Master,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Init, Role::Backup, Role::Master];

    /// The `to` label of `carp_transitions_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Backup => "backup",
            Self::Master => "master",
        }
    }

    /// The value of `carp_vhid_state`.
    pub const fn gauge_value(self) -> i64 {
        match self {
            Self::Init => 0,
            Self::Backup => 1,
            Self::Master => 2,
        }
    }
}

impl From<VhidState> for Role {
    /// `Unconfigured` shows as init: a VHID that has metrics is configured, and the data
    /// path treats an unconfigured entry like INIT (never answers).
    fn from(s: VhidState) -> Self {
        match s {
            VhidState::Unconfigured | VhidState::Init => Self::Init,
            VhidState::Backup => Self::Backup,
            VhidState::Master => Self::Master,
        }
    }
}

impl EncodeLabelValue for Role {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

/// What became of a received advertisement: the `result` label of
/// `carp_adverts_received_total`. Frames that the XDP program already dropped are counted
/// there (`carp_xdp_packets_total`); these are the checks the controller makes, plus the
/// same checks when adverts come through a path without XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdvertResult {
    /// Authenticated and fed to the election.
    Ok,
    /// HMAC-SHA1 digest mismatch (wrong password, or forged).
    BadDigest,
    /// A replayed counter: not ahead of the last one accepted from that
    /// sender, or already accepted from another source (within the forget
    /// interval, or inside a live +1 sender's run); see `replay.rs`.
    Replay,
    /// Our own advert: from our own address (looped back, carp(4) ignores
    /// them), or carrying a counter we sent, from any address (replayed).
    Own,
    BadChecksum,
    /// IP TTL not 255 (carp(4): adverts must not have crossed a router).
    BadTtl,
    BadVersion,
    BadType,
    /// Shorter than a CARP header, or authlen not 7.
    Short,
    /// A VHID not configured on the interface it arrived on.
    UnknownVhid,
    /// Fast mode (`advbase_ms`, advbase 0 on the wire) on one side and not on the
    /// other: an advbase-0 advert without it, a whole-second one with it.
    FastModeMismatch,
    /// IP source on none of the receiving interface's IPv4 subnets (refused
    /// before the digest is computed).
    OffSubnet,
    /// The VHID has unicast peers and the IP source is none of them
    /// (`crate::peers`; refused before the digest is computed).
    NotPeer,
    /// The second copy of an advert over the other address family (IPv4
    /// and IPv6 copies carry one counter; `replay.rs`): not acted on again.
    Duplicate,
}

impl AdvertResult {
    pub const ALL: [AdvertResult; 14] = [
        Self::Ok,
        Self::BadDigest,
        Self::Replay,
        Self::Own,
        Self::BadChecksum,
        Self::BadTtl,
        Self::BadVersion,
        Self::BadType,
        Self::Short,
        Self::UnknownVhid,
        Self::FastModeMismatch,
        Self::OffSubnet,
        Self::NotPeer,
        Self::Duplicate,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadDigest => "bad_digest",
            Self::Replay => "replay",
            Self::Own => "own",
            Self::BadChecksum => "bad_checksum",
            Self::BadTtl => "bad_ttl",
            Self::BadVersion => "bad_version",
            Self::BadType => "bad_type",
            Self::Short => "short",
            Self::UnknownVhid => "unknown_vhid",
            Self::FastModeMismatch => "fast_mode_mismatch",
            Self::OffSubnet => "off_subnet",
            Self::NotPeer => "not_peer",
            Self::Duplicate => "duplicate",
        }
    }
}

impl EncodeLabelValue for AdvertResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

/// Outcome of a configuration reload (SIGHUP): the `result` label of
/// `carp_config_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new file was valid and is now the running configuration (a file with no
    /// change counts here too).
    Applied,
    /// The file was invalid or needs a restart; the running configuration was kept.
    Refused,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [Self::Applied, Self::Refused];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
        }
    }
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DemotionLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VhidLabels {
    vhid: u8,
    interface: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    vhid: u8,
    interface: String,
    to: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReceivedLabels {
    vhid: u8,
    interface: String,
    result: AdvertResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct XdpLabels {
    interface: String,
    reason: &'static str,
}

/// One XDP counter as the controller reads it: interface, reason, packets summed over CPUs.
pub type XdpCount = (String, Reason, u64);

type XdpSource = Box<dyn Fn() -> Vec<XdpCount> + Send + Sync>;

/// Reads the XDP counters at scrape time (see the module docs).
struct XdpCollector {
    source: Arc<RwLock<Option<XdpSource>>>,
}

impl std::fmt::Debug for XdpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCollector").finish_non_exhaustive()
    }
}

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self
            .source
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(source) = guard.as_ref() else {
            return Ok(());
        };
        let counts = source();
        drop(guard);
        // The text encoder appends `_total` to counters.
        let mut family = encoder.encode_descriptor(
            "carp_xdp_packets",
            "Packets seen by the XDP program, by interface and by the reason for its verdict.",
            None,
            MetricType::Counter,
        )?;
        for (interface, reason, packets) in counts {
            let labels = XdpLabels {
                interface,
                reason: reason.label(),
            };
            ConstCounter::new(packets).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The controller's metrics. Cheap to update from any task (atomics behind the families);
/// share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    vhid_state: Family<VhidLabels, Gauge>,
    advbase: Family<VhidLabels, Gauge<f64, AtomicU64>>,
    transitions: Family<TransitionLabels, Counter>,
    adverts_sent: Family<VhidLabels, Counter>,
    advert_send_errors: Family<VhidLabels, Counter>,
    adverts_received: Family<ReceivedLabels, Counter>,
    unexpected_source_mac: Family<VhidLabels, Counter>,
    counter_jumps: Family<VhidLabels, Counter>,
    /// `carp_demotion{reason}`.
    demotion: Family<DemotionLabels, Gauge>,
    /// `vhid_gauges`: what the controller last published, read at scrape time.
    vhid_gauges: vhid_gauges::Snapshot,
    config_reloads: Family<ReloadLabels, Counter>,
    xdp_source: Arc<RwLock<Option<XdpSource>>>,
    /// `carp_sync_*` (crate::sync::stats), updated by the sync thread.
    pub sync: crate::sync::stats::Stats,
    /// `carp_hook_runs_total` (crate::hooks), updated by the hook tasks.
    pub hooks: crate::hooks::HookMetrics,
    /// `carp_split_brain` (crate::splitbrain), set by the controller.
    pub split_brain: crate::splitbrain::SplitBrainMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let vhid_state = Family::<VhidLabels, Gauge>::default();
        let advbase = Family::<VhidLabels, Gauge<f64, AtomicU64>>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let adverts_sent = Family::<VhidLabels, Counter>::default();
        let advert_send_errors = Family::<VhidLabels, Counter>::default();
        let adverts_received = Family::<ReceivedLabels, Counter>::default();
        let unexpected_source_mac = Family::<VhidLabels, Counter>::default();
        let counter_jumps = Family::<VhidLabels, Counter>::default();
        let demotion = Family::<DemotionLabels, Gauge>::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "carp_vhid_state",
            "Role of the VHID: 0 init, 1 backup, 2 master.",
            vhid_state.clone(),
        );
        registry.register(
            "carp_vhid_advbase_seconds",
            "Configured base advertisement interval of the VHID: advbase, or advbase_ms / 1000 \
             in fast mode (advbase 0 on the wire).",
            advbase.clone(),
        );
        registry.register(
            "carp_transitions",
            "State changes of the VHID, by the state entered.",
            transitions.clone(),
        );
        registry.register(
            "carp_adverts_sent",
            "CARP advertisements sent.",
            adverts_sent.clone(),
        );
        registry.register(
            "carp_adverts_send_errors",
            "CARP advertisements the kernel refused to send; the MASTER entry's dead-man \
             deadline moves only with adverts that were sent.",
            advert_send_errors.clone(),
        );
        registry.register(
            "carp_adverts_received",
            "CARP advertisements received by the controller, by the result of its checks.",
            adverts_received.clone(),
        );
        registry.register(
            "carp_adverts_unexpected_source_mac",
            "Authenticated adverts whose Ethernet source is not the sender's virtual MAC \
             (accepted: ucarp and some bridges send another).",
            unexpected_source_mac.clone(),
        );
        registry.register(
            "carp_adverts_counter_jump",
            "Accepted adverts whose counter was not the sender's last + 1 (a BSD or ucarp \
             sender that never heard a peer sends random counters; see docs/protocol.md §1).",
            counter_jumps.clone(),
        );
        registry.register(
            "carp_demotion",
            "Demotion of the node by reason (link, sync, operator, maintenance); their sum is \
             added to each VHID's advskew (capped at 240).",
            demotion.clone(),
        );
        // Every reason from the start, at 0, so `sum(carp_demotion)` is the total.
        for reason in crate::demotion::Reason::ALL {
            let _ = demotion.get_or_create(&DemotionLabels {
                reason: reason.label(),
            });
        }
        let vhid_gauges = vhid_gauges::Snapshot::default();
        registry.register_collector(Box::new(vhid_gauges::VhidGaugeCollector {
            snapshot: Arc::clone(&vhid_gauges),
            now_ns: crate::xdp::ktime_now_ns,
        }));
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "carp_config_reloads",
            "Configuration reloads (SIGHUP), by result: applied, or refused with the running \
             configuration kept.",
            config_reloads.clone(),
        );
        // Both series from the start, so an alert on `refused` sees the first one.
        for result in ReloadResult::ALL {
            let _ = config_reloads.get_or_create(&ReloadLabels { result });
        }
        let sync = crate::sync::stats::Stats::default();
        sync.register(&mut registry);
        let hooks = crate::hooks::HookMetrics::default();
        hooks.register(&mut registry);
        let split_brain = crate::splitbrain::SplitBrainMetrics::default();
        split_brain.register(&mut registry);
        let xdp_source = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(XdpCollector {
            source: Arc::clone(&xdp_source),
        }));
        Self {
            registry,
            vhid_state,
            advbase,
            transitions,
            adverts_sent,
            advert_send_errors,
            adverts_received,
            unexpected_source_mac,
            counter_jumps,
            demotion,
            vhid_gauges,
            config_reloads,
            xdp_source,
            sync,
            hooks,
            split_brain,
        }
    }

    /// Creates every series of a VHID at zero (state init), so that dashboards and
    /// `rate()` see them before the first event.
    pub fn add_vhid(&self, vhid: u8, interface: &str) {
        let l = VhidLabels {
            vhid,
            interface: interface.into(),
        };
        self.vhid_state
            .get_or_create(&l)
            .set(Role::Init.gauge_value());
        let _ = self.adverts_sent.get_or_create(&l);
        let _ = self.advert_send_errors.get_or_create(&l);
        let _ = self.unexpected_source_mac.get_or_create(&l);
        let _ = self.counter_jumps.get_or_create(&l);
        for to in Role::ALL {
            let _ = self.transitions.get_or_create(&TransitionLabels {
                vhid,
                interface: interface.into(),
                to,
            });
        }
        for result in AdvertResult::ALL {
            let _ = self.adverts_received.get_or_create(&ReceivedLabels {
                vhid,
                interface: interface.into(),
                result,
            });
        }
    }

    /// Removes every series of a VHID (it was removed from the config).
    pub fn remove_vhid(&self, vhid: u8, interface: &str) {
        let l = VhidLabels {
            vhid,
            interface: interface.into(),
        };
        self.vhid_state.remove(&l);
        self.advbase.remove(&l);
        self.adverts_sent.remove(&l);
        self.advert_send_errors.remove(&l);
        self.unexpected_source_mac.remove(&l);
        self.counter_jumps.remove(&l);
        for to in Role::ALL {
            self.transitions.remove(&TransitionLabels {
                vhid,
                interface: interface.into(),
                to,
            });
        }
        for result in AdvertResult::ALL {
            self.adverts_received.remove(&ReceivedLabels {
                vhid,
                interface: interface.into(),
                result,
            });
        }
    }

    /// Sets `carp_vhid_advbase_seconds` (at start and after a reload).
    pub fn set_advbase(&self, vhid: u8, interface: &str, base: std::time::Duration) {
        let l = VhidLabels {
            vhid,
            interface: interface.into(),
        };
        self.advbase.get_or_create(&l).set(base.as_secs_f64());
    }

    /// Sets `carp_vhid_state` without counting a transition (e.g. at start).
    pub fn set_state(&self, vhid: u8, interface: &str, role: impl Into<Role>) {
        let l = VhidLabels {
            vhid,
            interface: interface.into(),
        };
        self.vhid_state
            .get_or_create(&l)
            .set(role.into().gauge_value());
    }

    /// A state change: counts it and sets `carp_vhid_state`.
    pub fn transition(&self, vhid: u8, interface: &str, to: impl Into<Role>) {
        let to = to.into();
        self.transitions
            .get_or_create(&TransitionLabels {
                vhid,
                interface: interface.into(),
                to,
            })
            .inc();
        self.set_state(vhid, interface, to);
    }

    pub fn advert_sent(&self, vhid: u8, interface: &str) {
        self.adverts_sent
            .get_or_create(&VhidLabels {
                vhid,
                interface: interface.into(),
            })
            .inc();
    }

    /// An advert the kernel refused (`sendto` failed).
    pub fn advert_send_error(&self, vhid: u8, interface: &str) {
        self.advert_send_errors
            .get_or_create(&VhidLabels {
                vhid,
                interface: interface.into(),
            })
            .inc();
    }

    pub fn advert_received(&self, vhid: u8, interface: &str, result: AdvertResult) {
        self.adverts_received
            .get_or_create(&ReceivedLabels {
                vhid,
                interface: interface.into(),
                result,
            })
            .inc();
    }

    /// An authenticated advert from an Ethernet source other than the sender's virtual MAC.
    /// Counted on top of its `result` (it is still accepted).
    pub fn advert_unexpected_source_mac(&self, vhid: u8, interface: &str) {
        self.unexpected_source_mac
            .get_or_create(&VhidLabels {
                vhid,
                interface: interface.into(),
            })
            .inc();
    }

    /// An accepted advert whose counter jumped instead of stepping by one.
    pub fn advert_counter_jump(&self, vhid: u8, interface: &str) {
        self.counter_jumps
            .get_or_create(&VhidLabels {
                vhid,
                interface: interface.into(),
            })
            .inc();
    }

    /// Sets `carp_demotion{reason}` for every reason.
    pub fn set_demotion(&self, demotion: &crate::demotion::Demotion) {
        for reason in crate::demotion::Reason::ALL {
            self.demotion
                .get_or_create(&DemotionLabels {
                    reason: reason.label(),
                })
                .set(i64::from(demotion.get(reason)));
        }
    }

    /// Replaces what `carp_effective_advskew`, `carp_last_transition_timestamp_seconds`
    /// and `carp_master_advert_age_seconds` show (`vhid_gauges`).
    pub fn set_vhid_gauges(&self, rows: Vec<VhidGauges>) {
        *self
            .vhid_gauges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = rows;
    }

    /// Counts one configuration reload.
    pub fn config_reload(&self, result: ReloadResult) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Installs the callback that returns the XDP counters (summed over CPUs) at each
    /// scrape, replacing any previous one. It runs on the scraping task, so it should only
    /// read maps, not block.
    pub fn set_xdp_source(&self, source: impl Fn() -> Vec<XdpCount> + Send + Sync + 'static) {
        let mut slot = self
            .xdp_source
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(Box::new(source));
    }

    /// The metrics in OpenMetrics text format ([`CONTENT_TYPE`]), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a label value that fails to encode can.
            // Serve what was written with a comment rather than nothing.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The running `/metrics` endpoint; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (the port is chosen by the kernel when `addr` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` on `addr` (404 elsewhere) until the returned server is dropped.
/// Binds before returning, so a busy port is reported here. Needs a tokio runtime.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    let task = tokio::spawn(accept_loop(listener, app));
    Ok(MetricsServer { local_addr, task })
}

/// At most this many scrapers at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A request's headers must arrive within this, and a whole connection
/// (request and response, keep-alive off) lasts at most `CONNECTION_TIMEOUT`:
/// a client that never sends or never reads cannot park a task.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn accept_loop(listener: tokio::net::TcpListener, app: Router) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => drop(stream),
                Ok((stream, _)) => {
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .keep_alive(false)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn assert_has_lines(text: &str, lines: &[&str]) {
        let missing: Vec<&&str> = lines
            .iter()
            .filter(|l| !text.lines().any(|t| t == **l))
            .collect();
        assert!(missing.is_empty(), "missing lines {missing:#?} in:\n{text}");
    }

    #[test]
    fn metrics_encode_after_updates() {
        let m = Metrics::new();
        m.add_vhid(1, "lan0");
        m.set_advbase(1, "lan0", std::time::Duration::from_secs(1));
        m.add_vhid(2, "wan0");
        m.set_advbase(2, "wan0", std::time::Duration::from_millis(50));
        m.transition(1, "lan0", Role::Backup);
        m.transition(1, "lan0", VhidState::Master);
        m.advert_sent(1, "lan0");
        m.advert_sent(1, "lan0");
        m.advert_received(1, "lan0", AdvertResult::Ok);
        m.advert_received(1, "lan0", AdvertResult::BadDigest);
        m.advert_received(2, "wan0", AdvertResult::Replay);
        m.advert_unexpected_source_mac(1, "lan0");
        m.set_demotion(&crate::demotion::Demotion {
            link: 240,
            operator: 50,
            ..Default::default()
        });
        let text = m.encode();
        assert_has_lines(
            &text,
            &[
                "# TYPE carp_vhid_state gauge",
                r#"carp_vhid_state{vhid="1",interface="lan0"} 2"#,
                "# TYPE carp_vhid_advbase_seconds gauge",
                r#"carp_vhid_advbase_seconds{vhid="1",interface="lan0"} 1.0"#,
                r#"carp_vhid_advbase_seconds{vhid="2",interface="wan0"} 0.05"#,
                "# TYPE carp_transitions counter",
                r#"carp_transitions_total{vhid="1",interface="lan0",to="init"} 0"#,
                r#"carp_transitions_total{vhid="1",interface="lan0",to="backup"} 1"#,
                r#"carp_transitions_total{vhid="1",interface="lan0",to="master"} 1"#,
                r#"carp_adverts_sent_total{vhid="1",interface="lan0"} 2"#,
                r#"carp_adverts_received_total{vhid="1",interface="lan0",result="ok"} 1"#,
                r#"carp_adverts_received_total{vhid="1",interface="lan0",result="bad_digest"} 1"#,
                r#"carp_adverts_received_total{vhid="1",interface="lan0",result="fast_mode_mismatch"} 0"#,
                r#"carp_adverts_received_total{vhid="2",interface="wan0",result="replay"} 1"#,
                r#"carp_adverts_unexpected_source_mac_total{vhid="1",interface="lan0"} 1"#,
                r#"carp_demotion{reason="link"} 240"#,
                r#"carp_demotion{reason="sync"} 0"#,
                r#"carp_demotion{reason="operator"} 50"#,
                r#"carp_demotion{reason="maintenance"} 0"#,
                "# EOF",
            ],
        );
        // No XDP source yet: no XDP family at all.
        assert!(!text.contains("carp_xdp_packets"), "{text}");

        m.set_state(1, "lan0", Role::Init);
        m.remove_vhid(2, "wan0");
        let text = m.encode();
        assert_has_lines(&text, &[r#"carp_vhid_state{vhid="1",interface="lan0"} 0"#]);
        assert!(!text.contains("wan0"), "{text}");
    }

    #[test]
    fn metrics_vhid_gauges_follow_the_snapshot_and_age_at_scrape_time() {
        let m = Metrics::new();
        let text = m.encode();
        assert_has_lines(
            &text,
            &[
                "# TYPE carp_effective_advskew gauge",
                "# TYPE carp_master_advert_age_seconds gauge",
                r#"carp_demotion{reason="maintenance"} 0"#,
            ],
        );
        assert!(!text.contains("carp_effective_advskew{"), "{text}");
        let now = crate::xdp::ktime_now_ns();
        m.set_vhid_gauges(vec![
            VhidGauges {
                vhid: 1,
                interface: "lan0".into(),
                effective_advskew: 50,
                last_transition_unix: Some(1_700_000_000.25),
                master_heard_ns: None,
            },
            VhidGauges {
                vhid: 2,
                interface: "wan0".into(),
                effective_advskew: 240,
                last_transition_unix: None,
                master_heard_ns: Some(now.saturating_sub(2_000_000_000)),
            },
        ]);
        let text = m.encode();
        assert_has_lines(
            &text,
            &[
                r#"carp_effective_advskew{vhid="1",interface="lan0"} 50"#,
                r#"carp_effective_advskew{vhid="2",interface="wan0"} 240"#,
                r#"carp_last_transition_timestamp_seconds{vhid="1",interface="lan0"} 1700000000.25"#,
            ],
        );
        // Absent where there is nothing to say.
        assert!(
            !text.contains(r#"carp_last_transition_timestamp_seconds{vhid="2""#),
            "{text}"
        );
        assert!(
            !text.contains(r#"carp_master_advert_age_seconds{vhid="1""#),
            "{text}"
        );
        let age: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"carp_master_advert_age_seconds{vhid="2",interface="wan0"} "#)
            })
            .expect("age of wan0's master")
            .parse()
            .expect("a number");
        assert!(
            (2.0..10.0).contains(&age),
            "age {age}: computed when scraped"
        );
        // A VHID gone from the snapshot is gone from the metrics.
        m.set_vhid_gauges(Vec::new());
        assert!(!m.encode().contains("wan0"));
    }

    #[test]
    fn metrics_config_reloads() {
        let m = Metrics::new();
        assert_has_lines(
            &m.encode(),
            &[
                "# TYPE carp_config_reloads counter",
                r#"carp_config_reloads_total{result="applied"} 0"#,
                r#"carp_config_reloads_total{result="refused"} 0"#,
            ],
        );
        m.config_reload(ReloadResult::Refused);
        m.config_reload(ReloadResult::Applied);
        m.config_reload(ReloadResult::Applied);
        assert_has_lines(
            &m.encode(),
            &[
                r#"carp_config_reloads_total{result="applied"} 2"#,
                r#"carp_config_reloads_total{result="refused"} 1"#,
            ],
        );
    }

    #[test]
    fn metrics_xdp_counters_are_read_at_scrape_time() {
        let m = Metrics::new();
        let packets = Arc::new(std::sync::atomic::AtomicU64::new(5));
        let p = Arc::clone(&packets);
        m.set_xdp_source(move || {
            vec![
                (
                    "lan0".into(),
                    Reason::ArpReplied,
                    p.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("lan0".into(), Reason::CarpBadTtl, 0),
            ]
        });
        assert_has_lines(
            &m.encode(),
            &[
                "# TYPE carp_xdp_packets counter",
                r#"carp_xdp_packets_total{interface="lan0",reason="arp_replied"} 5"#,
                r#"carp_xdp_packets_total{interface="lan0",reason="carp_bad_ttl"} 0"#,
            ],
        );
        packets.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_has_lines(
            &m.encode(),
            &[r#"carp_xdp_packets_total{interface="lan0",reason="arp_replied"} 7"#],
        );
    }

    #[test]
    fn metrics_labels_are_unique() {
        for a in AdvertResult::ALL {
            assert_eq!(
                AdvertResult::ALL
                    .iter()
                    .filter(|b| b.label() == a.label())
                    .count(),
                1
            );
        }
        assert_eq!(Role::from(VhidState::Backup), Role::Backup);
        assert_eq!(Role::from(VhidState::Unconfigured), Role::Init);
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
        let mut reply = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.read_to_string(&mut reply),
        )
        .await
        .expect("reply within 5 s")
        .expect("read");
        reply
    }

    #[tokio::test]
    async fn metrics_http_endpoint() {
        let m = Arc::new(Metrics::new());
        m.add_vhid(7, "lan0");
        m.advert_sent(7, "lan0");
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&m))
            .await
            .expect("serve");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let reply = http_get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{reply}"
        );
        assert!(
            reply.contains("carp_adverts_sent_total{vhid=\"7\",interface=\"lan0\"} 1\n"),
            "{reply}"
        );
        assert!(reply.trim_end().ends_with("# EOF"), "{reply}");

        // Updates show at the next scrape.
        m.advert_sent(7, "lan0");
        assert!(http_get(addr, "/metrics")
            .await
            .contains("carp_adverts_sent_total{vhid=\"7\",interface=\"lan0\"} 2\n"));

        let reply = http_get(addr, "/").await;
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");

        drop(server);
        // Once dropped, the port is closed (the abort takes effect at the task's next poll).
        let mut closed = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(closed, "metrics port still open after drop");
    }
}
