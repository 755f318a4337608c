//! The sync engine's metrics (`carp_sync_*`), as prometheus-client families
//! that the engine's thread updates and the metrics endpoint reads.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `carp_sync_frames_total` | counter | `direction` (in, out), `result` ([`FrameResult::label`]) |
//! | `carp_sync_states_total` | counter | `op` (install, delete), `result` ([`StateResult::label`]) |
//! | `carp_sync_bulk_in_progress` | gauge | none: 1 while waiting for the peers' bulk transfers (VHIDs demoted) |
//! | `carp_sync_peer_up` | gauge | none: 1 while a peer was heard within the peer timeout |
//! | `carp_sync_lag_seconds` | gauge | none: age of the oldest unacknowledged frame |
//! | `carp_sync_retransmits_total` | counter | none |
//! | `carp_sync_event_overruns_total` | counter | none: conntrack event losses (ENOBUFS), each repaired by a resync |
//! | `carp_sync_states_held` | gauge | none: entries held for the peers (installed from them, not yet ours) |
//! | `carp_sync_states_capped` | gauge | none: 1 while `max_states` refuses the peers' entries |
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What became of a received frame (`result` of `carp_sync_frames_total{direction="in"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameResult {
    Ok,
    /// Source is not a configured peer.
    NotAPeer,
    /// Our own frame (a loop on the link).
    Own,
    /// Authenticated but old: a replay, or an earlier run of the sender.
    Replay,
    /// Seen before (a retransmission that crossed our acknowledgement).
    Duplicate,
    /// Ahead of a gap and the reorder buffer is full.
    ReorderFull,
    /// Carried an action this version does not know (skipped by length).
    UnknownAction,
    /// Failed a codec check; the label names which (bad_tag, bad_version, ...).
    Malformed(&'static str),
}

impl FrameResult {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotAPeer => "not_a_peer",
            Self::Own => "own",
            Self::Replay => "replay",
            Self::Duplicate => "duplicate",
            Self::ReorderFull => "reorder_full",
            Self::UnknownAction => "unknown_action",
            Self::Malformed(l) => l,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateOp {
    Install,
    Delete,
}

/// `result` of `carp_sync_states_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateResult {
    /// Put in a frame for a peer.
    Sent,
    /// Taken from an authenticated, in-order frame.
    Received,
    /// Written to (or removed from) the kernel table.
    Done,
    /// Refused: `max_states` reached.
    Capped,
    /// Removed after a bulk because the peer no longer has it.
    Stale,
    /// The kernel refused it; the label names the errno (`error_einval`, ...).
    Error(&'static str),
}

impl StateResult {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
            Self::Done => "done",
            Self::Capped => "capped",
            Self::Stale => "stale",
            Self::Error(l) => l,
        }
    }

    /// The error label of an errno.
    pub fn error(errno: i32) -> Self {
        Self::Error(match errno {
            libc::EINVAL => "error_einval",
            libc::ENOENT => "error_enoent",
            libc::EEXIST => "error_eexist",
            libc::ENOMEM => "error_enomem",
            libc::EBUSY => "error_ebusy",
            libc::EPERM => "error_eperm",
            libc::EOPNOTSUPP => "error_eopnotsupp",
            libc::ENOSPC => "error_enospc",
            libc::EAGAIN => "error_eagain",
            _ => "error_other",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FrameLabels {
    direction: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    op: &'static str,
    result: &'static str,
}

/// Cheap to clone (the families are `Arc`s inside).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    frames: Family<FrameLabels, Counter>,
    states: Family<StateLabels, Counter>,
    bulk_in_progress: Gauge,
    peer_up: Gauge,
    lag: Gauge<f64, AtomicU64>,
    retransmits: Counter,
    overruns: Counter,
    held: Gauge,
    capped: Gauge,
    /// Sum of every `op="install", result="error_*"` series (for status).
    install_errors: Counter,
}

impl Stats {
    /// Registers every `carp_sync_*` metric.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "carp_sync_frames",
            "Sync frames, by direction (in, out) and result.",
            self.frames.clone(),
        );
        r.register(
            "carp_sync_states",
            "Conntrack states replicated, by operation and result.",
            self.states.clone(),
        );
        r.register(
            "carp_sync_bulk_in_progress",
            "1 while this node waits for its peers' bulk transfers (its VHIDs are demoted).",
            self.bulk_in_progress.clone(),
        );
        r.register(
            "carp_sync_peer_up",
            "1 while a sync peer was heard within the peer timeout.",
            self.peer_up.clone(),
        );
        r.register(
            "carp_sync_lag_seconds",
            "Age of the oldest frame not yet acknowledged by a peer.",
            self.lag.clone(),
        );
        r.register(
            "carp_sync_retransmits",
            "Sync frames sent again (NACKed or unacknowledged in time).",
            self.retransmits.clone(),
        );
        r.register(
            "carp_sync_event_overruns",
            "Conntrack event losses (ENOBUFS); each one triggers a resync.",
            self.overruns.clone(),
        );
        r.register(
            "carp_sync_states_held",
            "Entries installed from the peers and held for them.",
            self.held.clone(),
        );
        r.register(
            "carp_sync_states_capped",
            "1 while max_states refuses the peers' entries.",
            self.capped.clone(),
        );
    }

    pub fn frame_in(&self, r: FrameResult) {
        self.frames
            .get_or_create(&FrameLabels {
                direction: "in",
                result: r.label(),
            })
            .inc();
    }

    pub fn frame_out(&self) {
        self.frames
            .get_or_create(&FrameLabels {
                direction: "out",
                result: "sent",
            })
            .inc();
    }

    pub fn frame_send_error(&self) {
        self.frames
            .get_or_create(&FrameLabels {
                direction: "out",
                result: "send_error",
            })
            .inc();
    }

    pub fn state(&self, op: StateOp, r: StateResult) {
        self.states_by(op, r, 1);
    }

    pub fn install_errors(&self) -> u64 {
        self.install_errors.get()
    }

    pub fn states_by(&self, op: StateOp, r: StateResult, n: u64) {
        if op == StateOp::Install && matches!(r, StateResult::Error(_)) {
            self.install_errors.inc_by(n);
        }
        self.states
            .get_or_create(&StateLabels {
                op: match op {
                    StateOp::Install => "install",
                    StateOp::Delete => "delete",
                },
                result: r.label(),
            })
            .inc_by(n);
    }

    pub fn state_count(&self, op: &'static str, result: &'static str) -> u64 {
        self.states.get_or_create(&StateLabels { op, result }).get()
    }

    pub fn set_bulk_in_progress(&self, on: bool) {
        self.bulk_in_progress.set(i64::from(on));
    }

    pub fn set_peer_up(&self, up: bool) {
        self.peer_up.set(i64::from(up));
    }

    pub fn set_lag(&self, lag: std::time::Duration) {
        self.lag.set(lag.as_secs_f64());
    }

    pub fn retransmit(&self) {
        self.retransmits.inc();
    }

    pub fn retransmits(&self) -> u64 {
        self.retransmits.get()
    }

    pub fn event_overrun(&self) {
        self.overruns.inc();
    }

    pub fn overruns(&self) -> u64 {
        self.overruns.get()
    }

    pub fn set_installed(&self, held: u64, capped: bool) {
        self.held.set(held as i64);
        self.capped.set(i64::from(capped));
    }
}
