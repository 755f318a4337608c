//! One peer's two streams, sans-IO: what we send it (coalesced changes,
//! bulk transfers, a flow-controlled retransmission window) and what it
//! sends us (replay window, in-order delivery, gap repair).
//!
//! Every peer has its own sequence space (a stream per direction and peer),
//! so acknowledgements, retransmission and flow control are per peer, as in
//! conntrackd's FTFW, and a slow peer never holds back another.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::conntrack::{CtEntry, CtKey};
use crate::election::Time;
use crate::wire::sync::FrameRepr;

/// High bit of `seq`: a control frame (hello, ack, bulk request). Control
/// frames are not retransmitted, not acknowledged and not ordered; they carry
/// their own increasing counter so a replayed one is still refused.
pub const CONTROL_SEQ: u64 = 1 << 63;

/// A local change waiting to be framed. Later changes to the same key replace
/// earlier ones (coalescing): only the newest state of a flow is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create or update on the peer (an insert when the kernel said NEW).
    Upsert {
        entry: CtEntry,
        new: bool,
    },
    Delete(CtKey),
}

/// A bulk transfer being sent: the dumped table in chunks as the dump
/// streams them (each chunk one copy, shared by the peers it goes to, freed
/// once framed for all), and how far it got. Framed as BULK_START, the
/// entries, BULK_END — the end only once the dump is complete.
#[derive(Clone, Debug)]
pub struct BulkJob {
    /// A refresh sweep: the entries go out as UPDATEs, with no
    /// BULK_START/BULK_END around them (nothing is removed after it).
    pub refresh: bool,
    pub request_id: u32,
    /// The kernel's entry count when the dump began (BULK_START's estimate).
    pub estimate: u64,
    pub chunks: VecDeque<std::sync::Arc<Vec<CtEntry>>>,
    /// Index of the next entry to frame in the front chunk.
    pub next: usize,
    pub started: bool,
    /// The dump is over: after the last chunk comes BULK_END.
    pub complete: bool,
    /// Entries handed to this job so far (BULK_END's count).
    pub total: u64,
}

impl BulkJob {
    pub fn remaining(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() - self.next
    }

    /// Something can be framed now (an entry, or the end).
    pub fn ready(&self) -> bool {
        !self.started || self.remaining() > 0 || self.complete
    }
}

/// A sequenced frame sent and not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Sent {
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub sent_at: Time,
    pub retransmits: u32,
}

/// Our side of the stream to one peer.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub pending: HashMap<CtKey, Change>,
    /// Keys of `pending` in arrival order (a key may appear again after it was
    /// taken; such stale entries are skipped).
    pub order: VecDeque<CtKey>,
    pub bulk: Option<BulkJob>,
    /// The pending changes overflowed (a peer down or far behind) and were
    /// dropped: the peer gets the whole table when it is heard again.
    pub resync_needed: bool,
    /// Keys changed live since the current bulk's dump was taken: the bulk's
    /// copy of them is older and is not sent.
    pub live_since_dump: HashSet<CtKey>,
    /// Next data sequence number (starts at 1).
    pub next_seq: u64,
    /// Next control counter.
    pub next_control: u64,
    /// Sent and unacknowledged, oldest first. Its length is the flow-control
    /// window: nothing new is framed while it is full.
    pub inflight: VecDeque<Sent>,
    /// Every data frame up to here was acknowledged.
    pub acked: u64,
    /// When the last acknowledgement moved `acked` (for retransmission).
    pub last_ack_progress: Option<Time>,
}

impl Outgoing {
    pub fn new() -> Self {
        Outgoing {
            next_seq: 1,
            next_control: 1,
            ..Outgoing::default()
        }
    }

    pub fn queue(&mut self, change: Change, bulk_running: bool) {
        let key = match &change {
            Change::Upsert { entry, .. } => entry.key(),
            Change::Delete(k) => *k,
        };
        if bulk_running {
            self.live_since_dump.insert(key);
        }
        // A NEW followed by updates stays an insert; the newest entry wins.
        let change = match (self.pending.get(&key), change) {
            (Some(Change::Upsert { new: true, .. }), Change::Upsert { entry, .. }) => {
                Change::Upsert { entry, new: true }
            }
            (_, c) => c,
        };
        if self.pending.insert(key, change).is_none() {
            self.order.push_back(key);
        }
    }

    /// Removes acknowledged frames; returns how many.
    pub fn ack(&mut self, cumulative: u64, now: Time) -> usize {
        if cumulative <= self.acked || cumulative >= self.next_seq {
            return 0;
        }
        self.acked = cumulative;
        self.last_ack_progress = Some(now);
        let before = self.inflight.len();
        while self.inflight.front().is_some_and(|s| s.seq <= cumulative) {
            self.inflight.pop_front();
        }
        before - self.inflight.len()
    }

    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.bulk.as_ref().is_some_and(BulkJob::ready)
    }

    /// Oldest unacknowledged frame's age: the replication lag to this peer.
    pub fn lag(&self, now: Time) -> Duration {
        self.inflight
            .front()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s.sent_at))
    }
}

/// The peer's stream to us.
#[derive(Debug, Default)]
pub struct Incoming {
    /// `(node_id, boot)` of the sender's current run.
    pub session: Option<(u32, u64)>,
    /// Next data seq to apply.
    pub next_expected: u64,
    /// Frames that arrived ahead of a gap, by seq (bounded).
    pub reorder: BTreeMap<u64, FrameRepr>,
    /// When the current gap was first seen, and when it was last NACKed.
    pub gap_since: Option<Time>,
    pub last_nack: Option<Time>,
    /// Highest control counter accepted.
    pub last_control: u64,
    /// An acknowledgement should be sent.
    pub ack_due: bool,
    /// We met this run of the sender mid-stream (we started after it): data
    /// frames wait in `reorder` until its base announcement says where our
    /// stream starts. A sender we saw restart starts at 1.
    pub awaiting_base: bool,
}

/// What [`Incoming::accept`] decided about a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Accept {
    /// A control frame: act on it now.
    Control,
    /// In order: apply it (and then [`Incoming::next_ready`]).
    Apply,
    /// Ahead of a gap: buffered.
    Buffered,
    /// Seen before (a retransmission that crossed our ack, or a replay).
    Duplicate,
    /// An older run of the sender, or a control counter not above the last.
    Replay,
    /// The reorder buffer is full: dropped, the gap will be repaired.
    Overflow,
    /// A new run of the sender: the stream restarts at this frame.
    NewSession,
}

impl Incoming {
    /// Replay window and ordering for an authenticated frame.
    /// A `Buffered` frame is inserted into `reorder` by the caller.
    pub fn accept(&mut self, node_id: u32, boot: u64, seq: u64, max_reorder: usize) -> Accept {
        match self.session {
            Some((_, b)) if boot < b => return Accept::Replay,
            Some((n, b)) if boot == b && n == node_id => {}
            _ => {
                // First sight, or a restarted sender (a larger boot): the
                // sequence space starts again.
                let first = self.session.is_none();
                self.session = Some((node_id, boot));
                self.awaiting_base = first;
                self.next_expected = 1;
                self.reorder.clear();
                self.gap_since = None;
                self.last_control = 0;
                let verdict = self.accept(node_id, boot, seq, max_reorder);
                return if first || verdict == Accept::Replay {
                    verdict
                } else {
                    Accept::NewSession
                };
            }
        }
        if seq & CONTROL_SEQ != 0 {
            let n = seq & !CONTROL_SEQ;
            if n <= self.last_control {
                return Accept::Replay;
            }
            self.last_control = n;
            return Accept::Control;
        }
        // A fresh session may start mid-stream (we came up after the peer):
        // take the first data frame as the start.
        if self.awaiting_base {
            if self.reorder.len() >= max_reorder {
                return Accept::Overflow;
            }
            return if self.reorder.contains_key(&seq) {
                Accept::Duplicate
            } else {
                Accept::Buffered
            };
        }
        if seq < self.next_expected || self.reorder.contains_key(&seq) {
            self.ack_due = true;
            return Accept::Duplicate;
        }
        if seq == self.next_expected {
            self.next_expected += 1;
            self.ack_due = true;
            return Accept::Apply;
        }
        if self.reorder.len() >= max_reorder {
            return Accept::Overflow;
        }
        Accept::Buffered
    }

    /// The sender's base announcement: every seq below `next` is acknowledged
    /// or superseded (by a bulk) on its side, so our stream continues at
    /// `next`. Frames buffered below it are dropped.
    pub fn base(&mut self, next: u64) {
        if self.awaiting_base || next > self.next_expected {
            self.awaiting_base = false;
            self.next_expected = self.next_expected.max(next);
            let keep = self.reorder.split_off(&self.next_expected);
            self.reorder = keep;
            if self.reorder.is_empty() {
                self.gap_since = None;
            }
            self.ack_due = true;
        }
    }

    /// The buffered frame that is next in order, if any.
    pub fn next_ready(&mut self) -> Option<FrameRepr> {
        let f = self.reorder.remove(&self.next_expected)?;
        self.next_expected += 1;
        if self.reorder.is_empty() {
            self.gap_since = None;
        }
        Some(f)
    }

    /// The missing seqs before the first buffered frame.
    pub fn gap(&self) -> Option<(u64, u64)> {
        if self.awaiting_base {
            return None;
        }
        let (&first_buffered, _) = self.reorder.iter().next()?;
        (first_buffered > self.next_expected).then(|| (self.next_expected, first_buffered - 1))
    }

    /// Gives up on a gap: skips to the first buffered frame.
    pub fn skip_gap(&mut self) {
        if let Some((&first, _)) = self.reorder.iter().next() {
            self.next_expected = first;
        }
        self.gap_since = None;
    }

    /// Cumulative acknowledgement: every data seq below `next_expected`.
    pub fn cumulative(&self) -> u64 {
        self.next_expected.saturating_sub(1)
    }
}

/// Everything about one peer.
#[derive(Debug)]
pub struct PeerLink {
    pub addr: Ipv4Addr,
    pub out: Outgoing,
    pub inc: Incoming,
    /// Last authenticated frame from it.
    pub last_heard: Option<Time>,
    pub last_hello_sent: Option<Time>,
    /// Its last hello.
    pub hello: Option<crate::wire::sync::Hello>,
    /// Our pending bulk request to it: (request id, first sent, last sent).
    pub bulk_request: Option<(u32, Time, Time)>,
    /// A bulk from it is being received: (request id, estimate, received).
    pub bulk_in: Option<(u32, u64, u64)>,
    /// It finished (or we gave up) the bulk we asked for at start.
    pub initial_bulk_done: bool,
    /// Bulk request ids it sent us that we answered (duplicates are ignored).
    pub answered_requests: HashSet<u32>,
}

impl PeerLink {
    pub fn new(addr: Ipv4Addr) -> Self {
        PeerLink {
            addr,
            out: Outgoing::new(),
            inc: Incoming::default(),
            last_heard: None,
            last_hello_sent: None,
            hello: None,
            bulk_request: None,
            bulk_in: None,
            initial_bulk_done: false,
            answered_requests: HashSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> FrameRepr {
        FrameRepr {
            node_id: 1,
            boot: 1,
            seq,
            messages: Vec::new(),
        }
    }

    #[test]
    fn incoming_orders_buffers_and_refuses_replays() {
        let mut inc = Incoming::default();
        // First sight: data waits for the sender's base announcement.
        assert_eq!(inc.accept(1, 100, 1, 8), Accept::Buffered);
        inc.reorder.insert(1, frame(1));
        inc.base(1);
        assert_eq!(inc.next_ready().map(|f| f.seq), Some(1));
        assert_eq!(inc.accept(1, 100, 1, 8), Accept::Duplicate);
        assert_eq!(inc.accept(1, 100, 3, 8), Accept::Buffered);
        inc.reorder.insert(3, frame(3));
        assert_eq!(inc.gap(), Some((2, 2)));
        assert_eq!(inc.accept(1, 100, 2, 8), Accept::Apply);
        assert_eq!(inc.next_ready().map(|f| f.seq), Some(3));
        assert_eq!(inc.cumulative(), 3);
        // Control frames: increasing counter only.
        assert_eq!(inc.accept(1, 100, CONTROL_SEQ | 5, 8), Accept::Control);
        assert_eq!(inc.accept(1, 100, CONTROL_SEQ | 5, 8), Accept::Replay);
        assert_eq!(inc.accept(1, 100, CONTROL_SEQ | 4, 8), Accept::Replay);
        // An older run of the sender is a replay; a newer one restarts.
        assert_eq!(inc.accept(1, 99, 4, 8), Accept::Replay);
        assert_eq!(inc.accept(1, 101, 1, 8), Accept::NewSession);
        assert_eq!(inc.cumulative(), 1);
        assert_eq!(inc.accept(1, 100, 2, 8), Accept::Replay);
    }

    #[test]
    fn incoming_bounds_the_reorder_buffer() {
        let mut inc = Incoming::default();
        assert_eq!(inc.accept(1, 1, CONTROL_SEQ | 1, 2), Accept::Control);
        inc.base(1);
        assert_eq!(inc.accept(1, 1, 1, 2), Accept::Apply);
        for s in [3, 4] {
            assert_eq!(inc.accept(1, 1, s, 2), Accept::Buffered);
            inc.reorder.insert(s, frame(s));
        }
        assert_eq!(inc.accept(1, 1, 5, 2), Accept::Overflow);
        inc.skip_gap();
        assert_eq!(inc.next_expected, 3);
    }

    #[test]
    fn outgoing_coalesces_per_flow_and_keeps_inserts() {
        use crate::conntrack::{Tuple, L4};
        let t = Tuple {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 17,
            l4: L4::Ports { src: 1, dst: 2 },
        };
        let e = |timeout| CtEntry::new(t, timeout);
        let mut out = Outgoing::new();
        out.queue(
            Change::Upsert {
                entry: e(30),
                new: true,
            },
            false,
        );
        out.queue(
            Change::Upsert {
                entry: e(120),
                new: false,
            },
            false,
        );
        assert_eq!(out.pending.len(), 1);
        assert_eq!(out.order.len(), 1);
        assert_eq!(
            out.pending.get(&e(0).key()),
            Some(&Change::Upsert {
                entry: e(120),
                new: true
            })
        );
        out.queue(Change::Delete(e(0).key()), true);
        assert_eq!(
            out.pending.get(&e(0).key()),
            Some(&Change::Delete(e(0).key()))
        );
        assert!(out.live_since_dump.contains(&e(0).key()));
    }
}
