//! The replication engine, sans-IO: local conntrack events and frames from
//! the peers go in with the time, frames to send and kernel operations come
//! out ([`Output`]). The runtime ([`super::runtime`]) owns the sockets.
//!
//! Who sends what (docs/protocol.md §4 has the whole story):
//! - Every node sends what its own kernel does (events with `nlmsg_pid` 0 or
//!   another socket's), so state flows both ways and back after a failover.
//!   Events caused by our own installs carry our install socket's port id and
//!   are dropped by the runtime before they get here (no echo loops).
//! - An entry installed from a peer is "theirs" until local traffic changes
//!   it (a local event) or refreshes it (the sweep sees a timeout above what
//!   we installed). Their entries' expiry here is not sent back as a delete:
//!   only the owner's destroy deletes a flow everywhere.
//! - Every `refresh_interval` the kernel table is swept and our live entries
//!   re-sent, so a peer's copy never expires while ours lives (the kernel
//!   sends no event when traffic merely refreshes a timeout).
//! - A starting node asks every peer for a bulk transfer and stays demoted
//!   until all have ended theirs or `bulk_timeout` passes (pfsync's
//!   demotion). A peer not heard at all within `peer_timeout` of the start
//!   (hellos go every 0.5 s) is not waited for once another peer's bulk has
//!   arrived: a dead member of a three-node cluster must not keep a restarted
//!   node demoted for the whole `bulk_timeout`. (If it was only slow, its
//!   entries arrive with its next refresh sweep.) After a bulk, entries this peer gave us earlier and did not
//!   resend are deleted (they died while we were not listening).
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::conntrack::{CtEntry, CtKey};
use crate::election::Time;
use crate::wire::sync::{
    Ack, FrameBuilder, FrameRepr, Hello, HelloVhid, Message, NackRange, SyncWireError,
};

use super::link::{Accept, BulkJob, Change, PeerLink, Sent, CONTROL_SEQ};
use super::stats::{FrameResult, StateOp, StateResult, Stats};

/// Tunables; [`Params::new`] has the defaults (docs/protocol.md §4 explains each).
#[derive(Clone, Debug)]
pub struct Params {
    pub node_id: u32,
    /// Our run: ns since the Unix epoch at start (larger = newer run).
    pub boot: u64,
    pub name: String,
    pub key: Vec<u8>,
    pub peers: Vec<Ipv4Addr>,
    pub max_frame: usize,
    /// Data frames in flight per peer (flow-control window).
    pub window: usize,
    /// Frames held ahead of a gap per peer.
    pub max_reorder: usize,
    pub max_states: u32,
    pub bulk_timeout: Duration,
    pub refresh_interval: Duration,
    pub hello_interval: Duration,
    /// A peer is up while it was heard within this.
    pub peer_timeout: Duration,
    /// Unacknowledged data is sent again after this.
    pub rto: Duration,
    /// A gap not repaired within this is given up: we ask for a bulk.
    pub repair_timeout: Duration,
    /// How often an unanswered bulk request is repeated.
    pub bulk_retry: Duration,
}

impl Params {
    pub fn new(name: &str, key: Vec<u8>, peers: Vec<Ipv4Addr>, boot: u64) -> Self {
        Params {
            node_id: node_id_of(name),
            boot,
            name: name.to_owned(),
            key,
            peers,
            max_frame: crate::wire::sync::DEFAULT_MAX_FRAME,
            window: 2048,
            max_reorder: 4096,
            max_states: crate::config::DEFAULT_MAX_STATES,
            bulk_timeout: Duration::from_secs(u64::from(crate::config::DEFAULT_BULK_TIMEOUT_S)),
            refresh_interval: Duration::from_secs(u64::from(
                crate::config::DEFAULT_REFRESH_INTERVAL_S,
            )),
            hello_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_millis(1600),
            rto: Duration::from_millis(100),
            repair_timeout: Duration::from_secs(2),
            bulk_retry: Duration::from_millis(500),
        }
    }
}

/// A stable id from the node name (FNV-1a): shown in logs, and keeps two
/// nodes with one boot time apart.
pub fn node_id_of(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Most changes held for one peer. Past this (a peer down, or one that cannot
/// keep up) they are dropped and the peer gets the whole table instead: a
/// dump is as cheap as this many changes and bounded by the table.
pub const MAX_PENDING: usize = 131_072;

/// What the runtime must do.
#[derive(Debug)]
pub enum Output {
    Send {
        to: Ipv4Addr,
        frame: Vec<u8>,
    },
    /// Create or update these entries in the kernel.
    Install(Vec<CtEntry>),
    Delete(Vec<CtKey>),
    /// Dump the kernel table and hand it to [`Engine::bulk_dump`] for this peer
    /// (or for every peer when `None`: a resync after lost events).
    Dump {
        for_peer: Option<Ipv4Addr>,
        request_id: u32,
    },
    /// Dump the kernel table and hand it to [`Engine::sweep`].
    Sweep,
    /// Keep the CARP VHIDs demoted (true) or stop (false).
    Demote(bool),
    /// A peer that was MASTER of these VHIDs just reported them INIT (its
    /// interface went down): the link-loss handover. The node takes them over
    /// as for a bow-out instead of waiting for the master-down timer.
    PeerReleased(Vec<u8>),
}

/// A VHID as the hello reports it.
pub type VhidReport = HelloVhid;

/// What we know of a remote-owned entry (installed from a peer).
#[derive(Clone, Copy, Debug)]
/// 12 bytes: a million of these (with their keys) is most of a receiver's
/// memory in a bulk (docs/RESULTS.md, "State replication").
struct Installed {
    peer: u8,
    /// When written: whole seconds since the engine started.
    at_s: u32,
    timeout: u32,
    /// Bulk generation of that peer when last written (it wraps; only
    /// equality with the current one matters).
    generation: u16,
}

pub struct Engine {
    p: Params,
    peers: Vec<PeerLink>,
    /// Remote-owned entries.
    installed: HashMap<CtKey, Installed>,
    /// Per peer: bulk generation (bumped at every bulk start from it).
    generation: Vec<u16>,
    demoted: bool,
    started: Time,
    next_sweep: Time,
    next_request_id: u32,
    local_vhids: Vec<VhidReport>,
    /// Our hello's split-brain flag: the controller holds a VHID back
    /// (`crate::splitbrain`).
    split_brain: bool,
    /// MASTER of at least one VHID: our kernel is the source of truth.
    master: bool,
    pub stats: Stats,
    /// Over max_states (alarm until it drops below).
    capped: bool,
}

impl Engine {
    pub fn new(p: Params, now: Time, stats: Stats) -> Self {
        let peers: Vec<PeerLink> = p.peers.iter().map(|a| PeerLink::new(*a)).collect();
        let n = peers.len();
        let next_sweep = now.saturating_add(p.refresh_interval);
        Engine {
            peers,
            installed: HashMap::new(),
            generation: vec![0; n],
            demoted: false,
            started: now,
            next_sweep,
            next_request_id: (p.boot as u32) | 1,
            local_vhids: Vec::new(),
            split_brain: false,
            master: false,
            stats,
            capped: false,
            p,
        }
    }

    /// Whole seconds since the engine started (for [`Installed::at_s`]).
    fn secs(&self, now: Time) -> u32 {
        u32::try_from(now.saturating_duration_since(self.started).as_secs()).unwrap_or(u32::MAX)
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Start: ask every peer for its table, demoted until they answer.
    pub fn start(&mut self, now: Time, out: &mut Vec<Output>) {
        self.started = now;
        for i in 0..self.peers.len() {
            self.request_bulk(i, now, out);
        }
        if !self.peers.is_empty() {
            self.demoted = true;
            self.stats.set_bulk_in_progress(true);
            out.push(Output::Demote(true));
        }
    }

    /// `carp sync resync`: ask every peer for its whole table again (the bulk
    /// end removes what they no longer have). No demotion: this node already
    /// has a table.
    pub fn resync(&mut self, now: Time, out: &mut Vec<Output>) {
        for i in 0..self.peers.len() {
            self.request_bulk(i, now, out);
        }
    }

    /// Asks peer `i` for its whole table (retried until it starts, see
    /// `poll_peer`).
    fn request_bulk(&mut self, i: usize, now: Time, out: &mut Vec<Output>) {
        let id = self.request_id();
        self.peers[i].bulk_request = Some((id, now, now));
        self.send_control(
            i,
            vec![Message::BulkRequest {
                request_id: Some(id),
            }],
            now,
            out,
        );
    }

    fn request_id(&mut self) -> u32 {
        self.next_request_id = self.next_request_id.wrapping_add(2);
        self.next_request_id
    }

    pub fn set_vhids(&mut self, vhids: Vec<VhidReport>) {
        let master = vhids
            .iter()
            .any(|v| v.state == crate::wire::sync::VhidState::Master);
        self.set_master(master);
        // A change is news for the peers now, not at the next hello: a
        // link-down handover rides on it, and a master ends its dead-man
        // deadlines by our effective advskew (`Engine::backup_master_down`).
        let changed = vhids.len() != self.local_vhids.len()
            || vhids.iter().zip(&self.local_vhids).any(|(a, b)| a != b);
        if changed && !self.local_vhids.is_empty() {
            for p in &mut self.peers {
                p.last_hello_sent = None;
            }
        }
        self.local_vhids = vhids;
    }

    /// Sets our hello's split-brain flag; a change goes out at once, like a
    /// VHID's state (the peer's alarm follows it).
    pub fn set_split_brain(&mut self, on: bool) {
        if on != self.split_brain {
            self.split_brain = on;
            for p in &mut self.peers {
                p.last_hello_sent = None;
            }
        }
    }

    /// On becoming MASTER every entry we hold for the peers becomes ours: we
    /// forward its traffic now, so its expiry here is news for them and the
    /// sweeps send it, and no peer's bulk end may delete it. (An idle
    /// session is not refreshed by traffic, so ownership by traffic alone
    /// would leave it at the mercy of a restarting peer's empty table.)
    pub fn set_master(&mut self, master: bool) {
        if master && !self.master {
            self.installed.clear();
        }
        self.master = master;
    }

    /// A local conntrack event (not caused by us).
    pub fn local_event(&mut self, change: Change) {
        let key = match &change {
            Change::Upsert { entry, .. } => entry.key(),
            Change::Delete(k) => *k,
        };
        // A local change makes the entry ours; their entry dying here (timeout)
        // is not news for them.
        if let Some(_inst) = self.installed.remove(&key) {
            if matches!(change, Change::Delete(_)) {
                return;
            }
        }
        for peer in &mut self.peers {
            if peer.out.resync_needed {
                continue;
            }
            let bulk = peer.out.bulk.is_some();
            peer.out.queue(change.clone(), bulk);
            if peer.out.pending.len() > MAX_PENDING {
                peer.out.pending.clear();
                peer.out.order.clear();
                peer.out.resync_needed = true;
            }
        }
    }

    /// Lost events (ENOBUFS): the peers may have missed anything; send them
    /// the whole table again.
    pub fn overrun(&mut self, out: &mut Vec<Output>) {
        self.stats.event_overrun();
        out.push(Output::Dump {
            for_peer: None,
            request_id: 0,
        });
    }

    /// The kernel table for a bulk (answer to `Output::Dump`), in one piece:
    /// [`Engine::bulk_begin`], one [`Engine::bulk_chunk`], [`Engine::bulk_complete`].
    pub fn bulk_dump(
        &mut self,
        now: Time,
        for_peer: Option<Ipv4Addr>,
        request_id: u32,
        table: Vec<CtEntry>,
    ) {
        let estimate = table.len() as u64;
        self.bulk_begin(for_peer, request_id, estimate, false);
        self.bulk_chunk(now, table);
        self.bulk_complete();
    }

    /// A bulk (or, with `refresh`, a sweep) starts: the dump follows in
    /// chunks, framed as they come, so the transfer overlaps the dump and a
    /// million entries are never held twice.
    pub fn bulk_begin(
        &mut self,
        for_peer: Option<Ipv4Addr>,
        request_id: u32,
        estimate: u64,
        refresh: bool,
    ) {
        for peer in &mut self.peers {
            if for_peer.is_some_and(|a| a != peer.addr) {
                continue;
            }
            if refresh {
                // A bulk in progress already carries everything newer.
                if peer.out.bulk.is_some() || peer.out.resync_needed {
                    continue;
                }
            } else {
                // The dump is taken after every change still pending here,
                // so it carries their result (a deleted flow is simply
                // absent, and the bulk end removes it there): pending
                // changes are dropped. A newer dump also supersedes a bulk
                // still being sent (its older copies must not overwrite
                // changes made since); what of it went out is completed by
                // this one's end.
                peer.out.pending.clear();
                peer.out.order.clear();
                peer.out.resync_needed = false;
            }
            peer.out.live_since_dump.clear();
            peer.out.bulk = Some(BulkJob {
                refresh,
                request_id,
                estimate,
                chunks: std::collections::VecDeque::new(),
                next: 0,
                started: refresh,
                complete: false,
                total: 0,
            });
        }
    }

    /// The next piece of the dump: our entries go to every job still open.
    pub fn bulk_chunk(&mut self, now: Time, mut chunk: Vec<CtEntry>) {
        // Theirs refreshed by local traffic become ours (and are sent);
        // theirs untouched stay out.
        let mut refreshed = Vec::new();
        chunk.retain(|e| match self.installed.contains_key(&e.key()) {
            false => true,
            true if self.is_ours(e, now) => {
                refreshed.push(e.key());
                true
            }
            true => false,
        });
        for k in refreshed {
            self.installed.remove(&k);
        }
        if chunk.is_empty() {
            return;
        }
        let chunk = std::sync::Arc::new(chunk);
        for peer in &mut self.peers {
            if let Some(job) = &mut peer.out.bulk {
                if !job.complete {
                    job.total += chunk.len() as u64;
                    job.chunks.push_back(std::sync::Arc::clone(&chunk));
                }
            }
        }
    }

    /// The dump is over: the open jobs may send their BULK_END.
    pub fn bulk_complete(&mut self) {
        for peer in &mut self.peers {
            if let Some(job) = &mut peer.out.bulk {
                job.complete = true;
            }
        }
    }

    /// Whether we send this entry: ours, or theirs but refreshed by local
    /// traffic since they wrote it (then it becomes ours).
    fn is_ours(&self, e: &CtEntry, now: Time) -> bool {
        match self.installed.get(&e.key()) {
            None => true,
            Some(inst) => {
                // Remaining timeout if nothing touched it here.
                let age = u64::from(self.secs(now).saturating_sub(inst.at_s));
                let expected = u64::from(inst.timeout).saturating_sub(age);
                u64::from(e.timeout) > expected + 2
            }
        }
    }

    /// The periodic sweep's table: re-send our live entries.
    pub fn sweep(&mut self, now: Time, table: Vec<CtEntry>) {
        self.bulk_begin(None, 0, table.len() as u64, true);
        self.bulk_chunk(now, table);
        self.bulk_complete();
    }

    /// A frame from the sync socket (source already known to be a peer by
    /// XDP; checked again here).
    pub fn frame(&mut self, now: Time, from: Ipv4Addr, bytes: &[u8], out: &mut Vec<Output>) {
        let Some(i) = self.peers.iter().position(|p| p.addr == from) else {
            self.stats.frame_in(FrameResult::NotAPeer);
            return;
        };
        let frame = match FrameRepr::parse(bytes, &self.p.key) {
            Ok(f) => f,
            Err(e) => {
                self.stats.frame_in(FrameResult::from_wire_error(&e));
                return;
            }
        };
        if frame.node_id == self.p.node_id && frame.boot == self.p.boot {
            self.stats.frame_in(FrameResult::Own);
            return;
        }
        let known = self.peers[i].inc.session;
        let verdict =
            self.peers[i]
                .inc
                .accept(frame.node_id, frame.boot, frame.seq, self.p.max_reorder);
        if known != self.peers[i].inc.session {
            // A new run of the peer: tell it at once where our stream to it
            // continues (the base, in the hello); its request ids start anew.
            self.peers[i].last_hello_sent = None;
            self.peers[i].answered_requests.clear();
        }
        self.peers[i].last_heard = Some(now);
        match verdict {
            Accept::Replay => self.stats.frame_in(FrameResult::Replay),
            Accept::Duplicate => self.stats.frame_in(FrameResult::Duplicate),
            Accept::Overflow => self.stats.frame_in(FrameResult::ReorderFull),
            Accept::Control => {
                self.stats.frame_in(FrameResult::Ok);
                self.apply(i, frame, now, out);
            }
            Accept::Buffered => {
                self.stats.frame_in(FrameResult::Ok);
                let peer = &mut self.peers[i];
                peer.inc.gap_since.get_or_insert(now);
                peer.inc.reorder.insert(frame.seq, frame);
            }
            Accept::Apply | Accept::NewSession => {
                self.stats.frame_in(FrameResult::Ok);
                if verdict == Accept::NewSession && !self.master {
                    // The peer restarted: what it gave us before may be gone
                    // there. Ask for its table; the bulk end removes the rest.
                    // (Not as MASTER: then our own table is the truth.)
                    self.request_bulk(i, now, out);
                }
                self.apply(i, frame, now, out);
                while let Some(f) = self.peers[i].inc.next_ready() {
                    self.apply(i, f, now, out);
                }
            }
        }
    }

    fn apply(&mut self, i: usize, frame: FrameRepr, now: Time, out: &mut Vec<Output>) {
        let mut install = Vec::new();
        let mut delete = Vec::new();
        for m in frame.messages {
            match m {
                Message::Insert(es) | Message::Update(es) => {
                    for e in es {
                        self.note_install(i, &e, now, &mut install);
                    }
                }
                Message::Refresh(rs) => {
                    // This engine re-sends live entries as full UPDATEs (they
                    // also repair a copy the peer lost); a compressed refresh
                    // could not create one. Counted, not applied.
                    self.stats.states_by(
                        StateOp::Install,
                        StateResult::Error("refresh_ignored"),
                        rs.len() as u64,
                    );
                }
                Message::Delete(keys) => {
                    for k in keys {
                        self.installed.remove(&k);
                        self.stats.state(StateOp::Delete, StateResult::Received);
                        delete.push(k);
                    }
                }
                Message::Clear => {
                    let gone: Vec<CtKey> = self
                        .installed
                        .iter()
                        .filter(|(_, v)| usize::from(v.peer) == i)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in &gone {
                        self.installed.remove(k);
                    }
                    delete.extend(gone);
                }
                Message::BulkRequest { request_id } => {
                    let id = request_id.unwrap_or(0);
                    if self.peers[i].answered_requests.insert(id) {
                        out.push(Output::Dump {
                            for_peer: Some(self.peers[i].addr),
                            request_id: id,
                        });
                    }
                }
                Message::BulkStart {
                    request_id,
                    estimate,
                } => {
                    self.generation[i] = self.generation[i].wrapping_add(1);
                    self.peers[i].bulk_in = Some((request_id, estimate, 0));
                    if self.peers[i]
                        .bulk_request
                        .is_some_and(|(id, _, _)| id == request_id)
                    {
                        self.peers[i].bulk_request = None;
                    }
                }
                Message::BulkEnd { request_id, .. } => {
                    self.peers[i].bulk_in = None;
                    // Their entries not re-sent in this bulk died meanwhile.
                    let g = self.generation[i];
                    let stale: Vec<CtKey> = self
                        .installed
                        .iter()
                        .filter(|(_, v)| usize::from(v.peer) == i && v.generation != g)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in &stale {
                        self.installed.remove(k);
                        self.stats.state(StateOp::Delete, StateResult::Stale);
                    }
                    delete.extend(stale);
                    // A whole table arrived: whatever we asked for is answered
                    // (a bulk for another request, or a resync, carries it too).
                    let _ = request_id;
                    self.peers[i].bulk_request = None;
                    self.peers[i].initial_bulk_done = true;
                    self.maybe_undemote(out);
                }
                Message::Ack(Ack { boot, cumulative }) => {
                    if boot == self.p.boot {
                        self.peers[i].out.ack(cumulative, now);
                    } else if self.peers[i].inc.session.is_some_and(|(_, b)| b == boot) {
                        // An ack naming the sender's own run is its base
                        // announcement: our stream from it continues after
                        // `cumulative` (docs/protocol.md §4, "Base announcement").
                        self.peers[i].inc.base(cumulative + 1);
                        while let Some(f) = self.peers[i].inc.next_ready() {
                            self.apply(i, f, now, out);
                        }
                    }
                }
                Message::Nack(ranges) => {
                    for NackRange { boot, first, last } in ranges {
                        if boot == self.p.boot {
                            self.retransmit(i, first, last, now, out);
                        }
                    }
                }
                Message::Hello(h) => {
                    use crate::wire::sync::VhidState;
                    // MASTER before, INIT now: its link went down (a bow-out
                    // or a better master makes it BACKUP instead).
                    let released: Vec<u8> = self.peers[i]
                        .hello
                        .as_ref()
                        .map(|old| {
                            old.vhids
                                .iter()
                                .filter(|o| o.state == VhidState::Master)
                                .filter(|o| {
                                    h.vhids
                                        .iter()
                                        .any(|n| n.vhid == o.vhid && n.state == VhidState::Init)
                                })
                                .map(|o| o.vhid)
                                .collect()
                        })
                        .unwrap_or_default();
                    if !released.is_empty() {
                        out.push(Output::PeerReleased(released));
                    }
                    self.peers[i].hello = Some(h);
                }
                Message::Unknown { .. } => self.stats.frame_in(FrameResult::UnknownAction),
            }
        }
        if !delete.is_empty() {
            out.push(Output::Delete(delete));
        }
        if !install.is_empty() {
            out.push(Output::Install(install));
        }
    }

    fn note_install(&mut self, i: usize, e: &CtEntry, now: Time, install: &mut Vec<CtEntry>) {
        let key = e.key();
        if !self.installed.contains_key(&key) && self.installed.len() >= self.p.max_states as usize
        {
            self.capped = true;
            self.stats.state(StateOp::Install, StateResult::Capped);
            return;
        }
        if let Some((_, _, got)) = &mut self.peers[i].bulk_in {
            *got += 1;
        }
        // The copy must outlive the original between two refreshes (the
        // sender re-sends live entries every refresh_interval), so it gets
        // that much more time; the owner's destroy still deletes it at once.
        let mut e = e.clone();
        let pad = u32::try_from(self.p.refresh_interval.as_secs()).unwrap_or(u32::MAX);
        e.timeout = e.timeout.saturating_add(pad);
        self.installed.insert(
            key,
            Installed {
                peer: i as u8,
                at_s: self.secs(now),
                timeout: e.timeout,
                generation: self.generation[i],
            },
        );
        self.stats.state(StateOp::Install, StateResult::Received);
        install.push(e);
    }

    fn maybe_undemote(&mut self, out: &mut Vec<Output>) {
        if self.demoted && self.peers.iter().all(|p| p.initial_bulk_done) {
            self.demoted = false;
            self.stats.set_bulk_in_progress(false);
            out.push(Output::Demote(false));
        }
    }

    fn retransmit(&mut self, i: usize, first: u64, last: u64, now: Time, out: &mut Vec<Output>) {
        let peer = &mut self.peers[i];
        let addr = peer.addr;
        for s in peer.out.inflight.iter_mut() {
            if s.seq >= first && s.seq <= last {
                s.retransmits += 1;
                s.sent_at = now;
                self.stats.retransmit();
                out.push(Output::Send {
                    to: addr,
                    frame: s.bytes.clone(),
                });
            }
        }
    }

    fn send_control(&mut self, i: usize, msgs: Vec<Message>, _now: Time, out: &mut Vec<Output>) {
        let peer = &mut self.peers[i];
        let seq = CONTROL_SEQ | peer.out.next_control;
        peer.out.next_control += 1;
        let mut b = FrameBuilder::new(self.p.max_frame, self.p.node_id, self.p.boot, seq);
        for m in msgs {
            b.push_control(&m);
        }
        self.stats.frame_out();
        out.push(Output::Send {
            to: peer.addr,
            frame: b.finish(&self.p.key),
        });
    }

    /// The next moment [`Engine::poll`] has something to do.
    pub fn poll_at(&self) -> Time {
        let mut t = self.next_sweep;
        for p in &self.peers {
            let hello = p
                .last_hello_sent
                .map_or(Time::ZERO, |h| h.saturating_add(self.p.hello_interval));
            t = t.min(hello);
            if p.out.has_work() && p.out.inflight.len() < self.p.window {
                return Time::ZERO;
            }
            if p.inc.ack_due {
                return Time::ZERO;
            }
            if let Some(s) = p.out.inflight.front() {
                // Only while the peer is up (no retransmission to a silent
                // one: see poll_peer), or the thread would spin on a past time.
                let backoff = self.p.rto * (1u32 << s.retransmits.min(5));
                let at = s.sent_at.saturating_add(backoff);
                let up_until = p
                    .last_heard
                    .map_or(Time::ZERO, |h| h.saturating_add(self.p.peer_timeout));
                if at < up_until {
                    t = t.min(at);
                }
            }
            if let Some(g) = p.inc.gap_since {
                t = t.min(p.inc.last_nack.unwrap_or(g).saturating_add(self.p.rto / 2));
            }
            if let Some((_, _, last)) = p.bulk_request {
                t = t.min(last.saturating_add(self.p.bulk_retry));
            }
        }
        if self.demoted {
            t = t.min(self.started.saturating_add(self.p.bulk_timeout));
        }
        t
    }

    /// Timers and sending: frames pending changes into the window, sends
    /// acks, NACKs, hellos, retransmissions, bulk retries.
    pub fn poll(&mut self, now: Time, out: &mut Vec<Output>) {
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(self.p.refresh_interval);
            out.push(Output::Sweep);
        }
        if self.demoted && now >= self.started.saturating_add(self.p.bulk_timeout) {
            for p in &mut self.peers {
                if !p.initial_bulk_done {
                    tracing::warn!(peer = %p.addr, "sync: no bulk transfer within bulk_timeout; going on without it");
                    p.initial_bulk_done = true;
                    p.bulk_request = None;
                }
            }
            self.maybe_undemote(out);
        }
        if self.demoted
            && now >= self.started.saturating_add(self.p.peer_timeout)
            && self.peers.iter().any(|p| p.initial_bulk_done)
        {
            for p in &mut self.peers {
                if !p.initial_bulk_done && p.last_heard.is_none() {
                    tracing::info!(peer = %p.addr, "sync: peer silent since our start; not waiting for its bulk");
                    p.initial_bulk_done = true;
                    p.bulk_request = None;
                }
            }
            self.maybe_undemote(out);
        }
        for i in 0..self.peers.len() {
            self.poll_peer(i, now, out);
        }
        let lag = self
            .peers
            .iter()
            .map(|p| p.out.lag(now))
            .max()
            .unwrap_or_default();
        self.stats.set_lag(lag);
        let up = self.peers.iter().any(|p| self.peer_up(p, now));
        self.stats.set_peer_up(up);
        self.stats
            .set_installed(self.installed.len() as u64, self.capped);
        if self.capped && self.installed.len() < self.p.max_states as usize {
            self.capped = false;
        }
    }

    fn peer_up(&self, p: &PeerLink, now: Time) -> bool {
        p.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < self.p.peer_timeout)
    }

    fn poll_peer(&mut self, i: usize, now: Time, out: &mut Vec<Output>) {
        // Overflowed changes: the whole table, once the peer listens.
        if self.peers[i].out.resync_needed && self.peer_up(&self.peers[i], now) {
            self.peers[i].out.resync_needed = false;
            out.push(Output::Dump {
                for_peer: Some(self.peers[i].addr),
                request_id: 0,
            });
        }
        // Bulk request retries.
        if let Some((id, first, last)) = self.peers[i].bulk_request {
            if now >= last.saturating_add(self.p.bulk_retry) {
                self.peers[i].bulk_request = Some((id, first, now));
                self.send_control(
                    i,
                    vec![Message::BulkRequest {
                        request_id: Some(id),
                    }],
                    now,
                    out,
                );
            }
        }
        // Gap repair: NACK now and then; give up after repair_timeout.
        if let Some(g) = self.peers[i].inc.gap_since {
            if now.saturating_duration_since(g) >= self.p.repair_timeout {
                tracing::warn!(peer = %self.peers[i].addr, "sync: gap not repaired in time; skipping it and asking for the table");
                self.peers[i].inc.skip_gap();
                while let Some(f) = self.peers[i].inc.next_ready() {
                    self.apply(i, f, now, out);
                }
                self.request_bulk(i, now, out);
            } else if let Some((first, last)) = self.peers[i].inc.gap() {
                let due = self.peers[i]
                    .inc
                    .last_nack
                    .is_none_or(|t| now >= t.saturating_add(self.p.rto / 2));
                if due {
                    self.peers[i].inc.last_nack = Some(now);
                    let boot = self.peers[i].inc.session.map_or(0, |(_, b)| b);
                    let cumulative = self.peers[i].inc.cumulative();
                    self.peers[i].inc.ack_due = false;
                    self.send_control(
                        i,
                        vec![
                            Message::Ack(Ack { boot, cumulative }),
                            Message::Nack(vec![NackRange { boot, first, last }]),
                        ],
                        now,
                        out,
                    );
                }
            }
        }
        // Retransmission of the unacknowledged tail (lost last frames, lost
        // acks), backing off per frame (rto, 2 rto, ... up to 32 rto); a peer
        // not heard within the peer timeout gets none: it will ask for a
        // bulk (or take our base) when it is back.
        let addr = self.peers[i].addr;
        let peer_up = self.peer_up(&self.peers[i], now);
        let rto = self.p.rto;
        let backoff = |s: &Sent| rto * (1u32 << s.retransmits.min(5));
        let stale = peer_up
            && self.peers[i]
                .out
                .inflight
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.sent_at) >= backoff(s));
        if stale {
            for s in self.peers[i].out.inflight.iter_mut().take(64) {
                if now.saturating_duration_since(s.sent_at) >= rto * (1u32 << s.retransmits.min(5))
                {
                    s.sent_at = now;
                    s.retransmits += 1;
                    self.stats.retransmit();
                    out.push(Output::Send {
                        to: addr,
                        frame: s.bytes.clone(),
                    });
                }
            }
        }
        // New data, as far as the window allows: bulk and live frames alternate.
        let mut turn_bulk = true;
        while self.peers[i].out.inflight.len() < self.p.window && self.peers[i].out.has_work() {
            let bulk_first = turn_bulk
                && self.peers[i].out.bulk.as_ref().is_some_and(BulkJob::ready)
                || self.peers[i].out.pending.is_empty();
            let frame = if bulk_first {
                self.frame_bulk(i)
            } else {
                self.frame_live(i)
            };
            turn_bulk = !turn_bulk;
            if let Some((seq, bytes)) = frame {
                self.stats.frame_out();
                out.push(Output::Send {
                    to: addr,
                    frame: bytes.clone(),
                });
                self.peers[i].out.inflight.push_back(Sent {
                    seq,
                    bytes,
                    sent_at: now,
                    retransmits: 0,
                });
            }
        }
        // Hello (with our ack), or a bare ack.
        let hello_due = self.peers[i]
            .last_hello_sent
            .is_none_or(|t| now >= t.saturating_add(self.p.hello_interval));
        if hello_due || self.peers[i].inc.ack_due {
            let boot = self.peers[i].inc.session.map_or(0, |(_, b)| b);
            let cumulative = self.peers[i].inc.cumulative();
            self.peers[i].inc.ack_due = false;
            let mut msgs = vec![Message::Ack(Ack { boot, cumulative })];
            if hello_due {
                // Our base: everything before the oldest unacknowledged frame.
                let base = self.peers[i]
                    .out
                    .inflight
                    .front()
                    .map_or(self.peers[i].out.next_seq, |s| s.seq);
                msgs.push(Message::Ack(Ack {
                    boot: self.p.boot,
                    cumulative: base - 1,
                }));
                self.peers[i].last_hello_sent = Some(now);
                msgs.push(Message::Hello(Hello {
                    name: self.p.name.clone(),
                    bulk_in_progress: self.demoted,
                    demoted: self.demoted,
                    split_brain: self.split_brain,
                    last_seq_received: cumulative,
                    vhids: self.local_vhids.clone(),
                }));
            }
            self.send_control(i, msgs, now, out);
        }
    }

    fn new_builder(&mut self, i: usize) -> (u64, FrameBuilder) {
        let seq = self.peers[i].out.next_seq;
        self.peers[i].out.next_seq += 1;
        (
            seq,
            FrameBuilder::new(self.p.max_frame, self.p.node_id, self.p.boot, seq),
        )
    }

    fn frame_live(&mut self, i: usize) -> Option<(u64, Vec<u8>)> {
        let (seq, mut b) = self.new_builder(i);
        let out = &mut self.peers[i].out;
        while let Some(key) = out.order.front().copied() {
            let Some(change) = out.pending.get(&key) else {
                out.order.pop_front();
                continue;
            };
            let fitted = match change {
                Change::Upsert { entry, new: true } => b.push_insert(entry),
                Change::Upsert { entry, new: false } => b.push_update(entry),
                Change::Delete(k) => b.push_delete(k),
            };
            if !fitted {
                break;
            }
            if let Some(c) = out.pending.remove(&key) {
                let op = match c {
                    Change::Delete(_) => StateOp::Delete,
                    _ => StateOp::Install,
                };
                self.stats.state(op, StateResult::Sent);
            }
            out.order.pop_front();
        }
        if b.is_empty() {
            // Nothing fitted (cannot happen with a sane max_frame): do not
            // burn the seq on an empty frame.
            self.peers[i].out.next_seq -= 1;
            self.peers[i].out.pending.clear();
            self.peers[i].out.order.clear();
            return None;
        }
        Some((seq, b.finish(&self.p.key)))
    }

    fn frame_bulk(&mut self, i: usize) -> Option<(u64, Vec<u8>)> {
        let (seq, mut b) = self.new_builder(i);
        let out = &mut self.peers[i].out;
        let mut sent = 0;
        if let Some(job) = &mut out.bulk {
            let mut done = false;
            loop {
                if !job.started {
                    if !b.push_control(&Message::BulkStart {
                        request_id: job.request_id,
                        estimate: job.estimate,
                    }) {
                        break;
                    }
                    job.started = true;
                }
                let Some(chunk) = job.chunks.front() else {
                    // Everything so far framed: the end if the dump is over,
                    // else wait for the next chunk.
                    if job.complete
                        && (job.refresh
                            || b.push_control(&Message::BulkEnd {
                                request_id: job.request_id,
                                sent: job.total,
                            }))
                    {
                        done = true;
                    }
                    break;
                };
                let Some(e) = chunk.get(job.next) else {
                    job.chunks.pop_front();
                    job.next = 0;
                    continue;
                };
                // Changed live since the dump: the newer state is sent live.
                if !out.live_since_dump.contains(&e.key()) {
                    let fitted = if job.refresh {
                        b.push_update(e)
                    } else {
                        b.push_insert(e)
                    };
                    if !fitted {
                        break;
                    }
                    sent += 1;
                }
                job.next += 1;
            }
            if done {
                out.bulk = None;
                out.live_since_dump.clear();
            }
        }
        self.stats
            .states_by(StateOp::Install, StateResult::Sent, sent);
        if b.is_empty() {
            self.peers[i].out.next_seq -= 1;
            return None;
        }
        Some((seq, b.finish(&self.p.key)))
    }

    /// For status: one line per peer.
    pub fn peer_reports(&self, now: Time) -> Vec<PeerReport> {
        self.peers
            .iter()
            .map(|p| PeerReport {
                address: p.addr.to_string(),
                name: p.hello.as_ref().map(|h| h.name.clone()),
                up: self.peer_up(p, now),
                last_heard_ms: p
                    .last_heard
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                last_seq_received: p.inc.cumulative(),
                last_seq_sent: p.out.next_seq.saturating_sub(1),
                acked: p.out.acked,
                inflight: p.out.inflight.len(),
                pending: p.out.pending.len() + p.out.bulk.as_ref().map_or(0, BulkJob::remaining),
                lag_ms: p.out.lag(now).as_millis() as u64,
                bulk_in: p.bulk_in.map(|(_, est, got)| (got, est)),
                vhids: p
                    .hello
                    .as_ref()
                    .map(|h| h.vhids.clone())
                    .unwrap_or_default(),
                split_brain: p.hello.as_ref().is_some_and(|h| h.split_brain),
            })
            .collect()
    }

    /// Per VHID, the timing (advbase as on the wire, effective advskew) of
    /// every peer that is up and whose last hello says BACKUP for it: who
    /// would take over if our adverts stopped, and when (`deadman.rs` ends a
    /// silent controller's MASTER entries just before the quickest of them;
    /// the caller computes the intervals, since a fast-mode hello says
    /// advbase 0 and only the VHID's own `advbase_ms` gives them a length).
    /// VHIDs no live peer backs up are absent.
    pub fn backup_timings(&self, now: Time) -> BTreeMap<u8, Vec<(u8, u8)>> {
        let mut out: BTreeMap<u8, Vec<(u8, u8)>> = BTreeMap::new();
        for p in self.peers.iter().filter(|p| self.peer_up(p, now)) {
            let Some(h) = &p.hello else { continue };
            for v in &h.vhids {
                if v.state == crate::wire::sync::VhidState::Backup {
                    out.entry(v.vhid).or_default().push((v.advbase, v.advskew));
                }
            }
        }
        out
    }

    pub fn demoted(&self) -> bool {
        self.demoted
    }

    /// Whether a live peer is sending us its table (between its bulk start
    /// and end; a peer that went silent mid-bulk does not count).
    pub fn bulk_incoming(&self, now: Time) -> bool {
        self.peers
            .iter()
            .any(|p| p.bulk_in.is_some() && self.peer_up(p, now))
    }

    /// Whether we hold any VHID as MASTER (from the last [`Engine::set_vhids`]).
    pub fn is_master(&self) -> bool {
        self.master
    }

    pub fn installed_count(&self) -> usize {
        self.installed.len()
    }
}

/// One peer in `carp status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PeerReport {
    pub address: String,
    pub name: Option<String>,
    pub up: bool,
    pub last_heard_ms: Option<u64>,
    pub last_seq_received: u64,
    pub last_seq_sent: u64,
    pub acked: u64,
    pub inflight: usize,
    pub pending: usize,
    pub lag_ms: u64,
    /// A bulk being received from it: (received, announced).
    pub bulk_in: Option<(u64, u64)>,
    #[serde(skip)]
    pub vhids: Vec<VhidReport>,
    /// Its last hello's split-brain flag: it holds a VHID back in BACKUP
    /// because our hello says MASTER while our adverts do not reach it.
    #[serde(default)]
    pub split_brain: bool,
}

impl FrameResult {
    pub fn from_wire_error(e: &SyncWireError) -> Self {
        FrameResult::Malformed(e.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{Tuple, L4};

    fn entry(port: u16) -> CtEntry {
        let orig = Tuple {
            src: "10.77.0.100".parse().unwrap(),
            dst: "10.88.0.100".parse().unwrap(),
            proto: 17,
            l4: L4::Ports { src: port, dst: 53 },
        };
        CtEntry::new(orig, 30)
    }

    /// A peer that never answers: its unacknowledged frames are not resent
    /// (no storm), and the next wake-up is never in the past (no spinning).
    #[test]
    fn engine_is_quiet_towards_a_silent_peer() {
        let t0 = Time::from_secs(10);
        let p = Params::new("fw1", vec![7; 32], vec!["10.99.0.2".parse().unwrap()], 1);
        let mut e = Engine::new(p, t0, Stats::default());
        let mut out = Vec::new();
        e.start(t0, &mut out);
        for port in 0..100 {
            e.local_event(Change::Upsert {
                entry: entry(port),
                new: true,
            });
        }
        e.poll(t0, &mut out);
        let sent_first = out.len();
        assert!(sent_first > 5, "frames go out once");
        let mut t = t0;
        let mut sent_later = 0;
        for _ in 0..100 {
            t = t.saturating_add(Duration::from_millis(100));
            let mut out = Vec::new();
            e.poll(t, &mut out);
            sent_later += out
                .iter()
                .filter(|o| matches!(o, Output::Send { .. }))
                .count();
            assert!(
                e.poll_at() > t,
                "poll_at in the past: the thread would spin"
            );
        }
        // 10 s: hellos every 0.5 s and bulk requests every 0.5 s, nothing else.
        assert!(
            sent_later <= 40,
            "{sent_later} frames to a silent peer in 10 s"
        );
        assert_eq!(e.stats.retransmits(), 0);
    }
}
