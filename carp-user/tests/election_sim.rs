//! Tier-1 deterministic simulation of the CARP election (STYLE.md habit 8, after
//! smoltcp's `tests/netsim.rs`): several nodes, each running one
//! [`carp_user::election::Vhid`] per VHID, on virtual Ethernet segments with a
//! virtual clock, seeded packet loss and delay, link-down injection, crashes
//! (controller and XDP program gone), stalls (controller frozen, XDP entry left to
//! its dead-man deadline) and orderly shutdowns (bow-out).
//!
//! The sim plays the shell: it delivers adverts, fires timers when `poll_at()` is
//! due, keeps each node's node-wide demotion (+240 per interface down, FreeBSD's
//! `ifdown_demotion_factor`) and records every data-path write, so it can measure
//! per VHID the time during which zero or two data paths answer as MASTER
//! (`VhidEntry::is_master_at`, the same test the XDP program applies).
//!
//! Every property is checked over many seeds; a failure names its seed and dumps
//! the transition log.
//!
//! Adverts travel as wire adverts (counter and HMAC-SHA1 digest, from the
//! sender's address on the segment), and each receiver runs them through the
//! controller's own acceptance policy (`carp_user::accept::accept`, with a
//! `replay::Tracker` per VHID that also knows the counters the node sent), so
//! the simulated elections see exactly what the real shell lets through;
//! `replayed_adverts_from_rotating_sources_move_nothing` attacks that policy.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

use carp_common::{VhidEntry, VhidState};
use carp_user::accept::{self, Subnet};
use carp_user::election::{
    interval, master_down_interval, Action, Base, Event, Params, PeerAdvert, State, Time, Vhid,
    Why, LINK_DOWN_DEMOTION,
};
use carp_user::replay::Tracker;
use carp_user::wire::carp::Repr;
use std::net::Ipv4Addr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// One-way delay on a segment is uniform in this range.
const MIN_DELAY: u64 = 50_000;
const MAX_DELAY: u64 = MS;
/// Spacing of the three bow-out copies (the shell's "a few ms apart").
const BOW_OUT_SPACING: u64 = 2 * MS;
/// Upper bound on processed events per run: a livelock fails instead of hanging.
const MAX_STEPS: u64 = 5_000_000;

fn secs(s: u64) -> Time {
    Time(s * SEC)
}
fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("durations in the sim fit u64")
}

/// What one node's XDP program has for one VHID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dp {
    /// No program attached (node crashed): silent.
    Absent,
    Entry {
        state: State,
        expires: Option<Time>,
    },
}

impl Dp {
    fn is_master_at(self, t: Time) -> bool {
        match self {
            Dp::Entry {
                state: State::Master,
                expires: Some(e),
            } => VhidEntry::new(VhidState::Master, e.0).is_master_at(t.0),
            _ => false,
        }
    }
    /// Time at which a MASTER entry stops being honoured (first ns past expiry).
    fn lapses_at(self) -> Option<Time> {
        match self {
            Dp::Entry {
                state: State::Master,
                expires: Some(e),
            } => Some(Time(e.0.saturating_add(1))),
            _ => None,
        }
    }
}

struct SimVhid {
    seg: usize,
    vhid: Vhid,
    dp: Dp,
    /// Advert counter (+1 per advert from a random start, as the shell does).
    counter: u64,
    /// The VHID's acceptance state, as the shell keeps it.
    tracker: Tracker,
}

/// Password and VIP of every simulated VHID (the digest covers them).
const PASSWORD: &[u8] = b"sim-secret";
fn sim_vip(seg: usize, vhid: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, seg as u8, vhid, 200)
}
/// Node `n`'s own address on segment `seg` (a /24 per segment and VHID block).
fn node_ip(seg: usize, n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, seg as u8, 0, n as u8 + 1)
}
fn seg_subnet(seg: usize, n: usize) -> [Subnet; 1] {
    [Subnet::new(node_ip(seg, n), 16)]
}

struct Node {
    name: &'static str,
    vhids: Vec<SimVhid>,
    /// Carrier per segment index.
    links: Vec<bool>,
    demotion: u32,
    /// The controller processes events (false when crashed or stalled).
    running: bool,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Start,
    /// Controller and XDP program die: nothing sent, data path silent at once.
    Crash,
    /// Controller frozen (SIGSTOP): XDP entry stays until its dead-man deadline.
    Stall,
    Resume,
    LinkDown(usize),
    LinkUp(usize),
    Shutdown,
    SetLoss(f64),
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Deliver {
        to: usize,
        vi: usize,
        advert: Repr,
        src: Ipv4Addr,
    },
    Fault {
        node: usize,
        fault: Fault,
    },
}

#[derive(Clone, Copy, Debug)]
struct TransitionRec {
    at: Time,
    node: usize,
    seg: usize,
    vhid: u8,
    from: State,
    to: State,
    why: Why,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    Gap,
    One,
    Overlap,
}

/// Data-path coverage of one VHID over the measurement window.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    gap: u64,
    overlap: u64,
    max_gap: u64,
    max_overlap: u64,
    run: Option<(Cover, Time)>,
}

impl Coverage {
    fn add(&mut self, cover: Cover, from: Time, to: Time) {
        if to <= from {
            return;
        }
        if self.run.map(|(c, _)| c) != Some(cover) {
            self.close(from);
            self.run = Some((cover, from));
        }
        match cover {
            Cover::Gap => self.gap += to.0 - from.0,
            Cover::Overlap => self.overlap += to.0 - from.0,
            Cover::One => {}
        }
    }
    fn close(&mut self, at: Time) {
        if let Some((c, start)) = self.run.take() {
            let len = at.0.saturating_sub(start.0);
            match c {
                Cover::Gap => self.max_gap = self.max_gap.max(len),
                Cover::Overlap => self.max_overlap = self.max_overlap.max(len),
                Cover::One => {}
            }
        }
    }
}

struct Sim {
    seed: u64,
    now: Time,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    pending: Vec<Option<Pending>>,
    rng: StdRng,
    loss: f64,
    transitions: Vec<TransitionRec>,
    /// (segment, vhid) of every VHID in the sim, and its coverage.
    keys: Vec<(usize, u8)>,
    coverage: Vec<Coverage>,
    measuring: bool,
    adverts_lost: u64,
    steps: u64,
    /// Leave out `with_tie_break_seed`: exact BSD timing.
    bsd_ties: bool,
    /// The last advert sent per (segment, VHID): what an attacker captures.
    last_sent: std::collections::HashMap<(usize, u8), Repr>,
    /// Every advert the acceptance policy refused.
    rejected: Vec<accept::Rejection>,
}

impl Sim {
    fn new(seed: u64, loss: f64) -> Self {
        Self {
            seed,
            now: Time(0),
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            pending: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss,
            transitions: Vec::new(),
            keys: Vec::new(),
            coverage: Vec::new(),
            measuring: false,
            adverts_lost: 0,
            steps: 0,
            bsd_ties: false,
            last_sent: std::collections::HashMap::new(),
            rejected: Vec::new(),
        }
    }

    /// A node with one VHID per `(segment, params)`.
    fn add_node(&mut self, name: &'static str, vhids: &[(usize, Params)]) -> usize {
        let nseg = vhids.iter().map(|(s, _)| s + 1).max().unwrap_or(1);
        for &(seg, p) in vhids {
            if !self.keys.contains(&(seg, p.vhid)) {
                self.keys.push((seg, p.vhid));
                self.coverage.push(Coverage::default());
            }
        }
        let node = self.nodes.len() as u64;
        let (seed, bsd) = (self.seed, self.bsd_ties);
        self.nodes.push(Node {
            name,
            vhids: vhids
                .iter()
                .map(|&(seg, p)| {
                    let mut vhid = Vhid::try_new(p).expect("sim params are valid");
                    if !bsd {
                        vhid = vhid.with_tie_break_seed(
                            seed.wrapping_mul(1_000_003) ^ (node << 8) ^ u64::from(p.vhid),
                        );
                    }
                    SimVhid {
                        seg,
                        vhid,
                        dp: Dp::Entry {
                            state: State::Init,
                            expires: None,
                        },
                        counter: (seed ^ (node << 40) ^ u64::from(p.vhid))
                            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        tracker: Tracker::new(),
                    }
                })
                .collect(),
            links: vec![true; nseg.max(4)],
            demotion: 0,
            running: true,
        });
        self.nodes.len() - 1
    }

    fn schedule(&mut self, at: Time, p: Pending) {
        let seq = self.pending.len() as u64;
        self.pending.push(Some(p));
        self.queue.push(Reverse((at, seq)));
    }

    fn fault(&mut self, at: Time, node: usize, fault: Fault) {
        self.schedule(at, Pending::Fault { node, fault });
    }

    fn next_timer(&self) -> Option<(Time, usize, usize)> {
        let mut best: Option<(Time, usize, usize)> = None;
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.running {
                continue;
            }
            for (vi, sv) in node.vhids.iter().enumerate() {
                if let Some(t) = sv.vhid.poll_at() {
                    if best.is_none_or(|b| (t, n, vi) < b) {
                        best = Some((t, n, vi));
                    }
                }
            }
        }
        best
    }

    fn run_until(&mut self, end: Time) {
        loop {
            self.steps += 1;
            assert!(
                self.steps < MAX_STEPS,
                "seed {}: the simulation did not settle\n{}",
                self.seed,
                self.log()
            );
            let next_ev = self.queue.peek().map(|r| r.0 .0);
            let next_timer = self.next_timer();
            let t = match (next_ev, next_timer) {
                (None, None) => end,
                (Some(e), None) => e,
                (None, Some((t, ..))) => t,
                (Some(e), Some((t, ..))) => e.min(t),
            };
            if t > end {
                self.advance_to(end);
                return;
            }
            // An overdue deadline (poll_at <= now after a demotion change) runs now.
            self.advance_to(t.max(self.now));
            if next_ev.is_some_and(|e| e <= t) {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    unreachable!()
                };
                let p = self.pending[seq as usize]
                    .take()
                    .expect("each event runs once");
                self.process(p);
            } else if let Some((_, n, vi)) = next_timer {
                self.handle(n, vi, Event::Timer);
            }
        }
    }

    fn process(&mut self, p: Pending) {
        match p {
            Pending::Deliver {
                to,
                vi,
                advert,
                src,
            } => {
                let seg = self.nodes[to].vhids[vi].seg;
                if self.nodes[to].running && self.nodes[to].links[seg] {
                    // The shell's acceptance policy, as `controller/` runs it.
                    let now = self.now;
                    let sv = &mut self.nodes[to].vhids[vi];
                    let vhid = sv.vhid.params().vhid;
                    let vips = [sim_vip(seg, vhid)];
                    let subnets = seg_subnet(seg, to);
                    let policy = accept::Policy {
                        vhid,
                        password: PASSWORD,
                        vips: &vips,
                        vips6: &[],
                        own_ip: Some(node_ip(seg, to)),
                        subnets: &subnets,
                        own_ip6: &[],
                        subnets6: &[],
                        peers: &[],
                        forget_after_ns: ns(sv.vhid.master_down_interval()),
                        fast_mode: sv.vhid.params().advbase.is_fast(),
                    };
                    let rx = accept::Received {
                        repr: &advert,
                        src: src.into(),
                        dst: carp_user::wire::frame::CARP_GROUP_V4.into(),
                        src_mac: carp_user::wire::frame::virtual_mac(vhid),
                        ktime_ns: now.0,
                    };
                    match accept::accept(&policy, &mut sv.tracker, &rx) {
                        accept::Verdict::Accept { advert, .. } => {
                            self.handle(to, vi, Event::Advert(advert))
                        }
                        accept::Verdict::Reject(why) => self.rejected.push(why),
                    }
                }
            }
            Pending::Fault { node, fault } => self.apply_fault(node, fault),
        }
    }

    fn apply_fault(&mut self, n: usize, fault: Fault) {
        let all: Vec<usize> = (0..self.nodes[n].vhids.len()).collect();
        match fault {
            Fault::Start => all.iter().for_each(|&vi| self.handle(n, vi, Event::Start)),
            Fault::Crash => {
                self.nodes[n].running = false;
                for sv in &mut self.nodes[n].vhids {
                    sv.dp = Dp::Absent;
                }
            }
            Fault::Stall => self.nodes[n].running = false,
            Fault::Resume => {
                if self.nodes[n].running {
                    return;
                }
                self.nodes[n].running = true;
                // The shell reads the netlink events queued while it was frozen:
                // tell every VHID the current carrier and demotion (repeats are
                // ignored by the state machine).
                let d = self.nodes[n].demotion;
                for &vi in &all {
                    let seg = self.nodes[n].vhids[vi].seg;
                    let ev = if self.nodes[n].links[seg] {
                        Event::LinkUp
                    } else {
                        Event::LinkDown
                    };
                    self.handle(n, vi, ev);
                }
                all.iter()
                    .for_each(|&vi| self.handle(n, vi, Event::SetDemotion(d)));
            }
            Fault::LinkDown(seg) | Fault::LinkUp(seg) => {
                let down = matches!(fault, Fault::LinkDown(_));
                if self.nodes[n].links[seg] != down {
                    return;
                }
                self.nodes[n].links[seg] = !down;
                let ev = if down { Event::LinkDown } else { Event::LinkUp };
                for &vi in &all {
                    if self.nodes[n].vhids[vi].seg == seg {
                        self.handle(n, vi, ev);
                    }
                }
                // The shell's node-wide demotion (FreeBSD carp_demote_adj), sent to
                // every VHID of the node so LAN and WAN move together.
                let node = &mut self.nodes[n];
                node.demotion = if down {
                    node.demotion + LINK_DOWN_DEMOTION
                } else {
                    node.demotion.saturating_sub(LINK_DOWN_DEMOTION)
                };
                let d = node.demotion;
                all.iter()
                    .for_each(|&vi| self.handle(n, vi, Event::SetDemotion(d)));
            }
            Fault::Shutdown => all
                .iter()
                .for_each(|&vi| self.handle(n, vi, Event::Shutdown)),
            Fault::SetLoss(p) => self.loss = p,
        }
    }

    /// The shell: feed one event, apply the actions, check invariants.
    fn handle(&mut self, n: usize, vi: usize, ev: Event) {
        if !self.nodes[n].running {
            return;
        }
        let now = self.now;
        let sv = &mut self.nodes[n].vhids[vi];
        let before = sv.vhid.state();
        let actions = sv.vhid.handle(now, ev);
        let (seg, vhid) = (sv.seg, sv.vhid.params().vhid);
        let next = sv.vhid.poll_at();
        if ev == Event::Timer {
            assert!(
                next.is_none_or(|p| p > now),
                "seed {}: {} vhid {vhid}: Timer at {now} left deadline {next:?}",
                self.seed,
                self.nodes[n].name,
            );
        }
        let mut transitions = 0;
        for a in actions {
            match a {
                Action::SetDataplane {
                    state,
                    master_expires,
                } => {
                    self.nodes[n].vhids[vi].dp = Dp::Entry {
                        state,
                        expires: master_expires,
                    };
                }
                Action::SendAdvert { advbase, advskew } => {
                    self.broadcast(n, vi, PeerAdvert { advbase, advskew }, now);
                }
                Action::SendBowOut => {
                    for k in 0..3 {
                        self.broadcast(
                            n,
                            vi,
                            PeerAdvert::BOW_OUT,
                            Time(now.0 + k * BOW_OUT_SPACING),
                        );
                    }
                }
                Action::Announce | Action::Stopped => {}
                Action::Transition { from, to, why } => {
                    transitions += 1;
                    assert_eq!(
                        from, before,
                        "seed {}: transition from the wrong state",
                        self.seed
                    );
                    self.transitions.push(TransitionRec {
                        at: now,
                        node: n,
                        seg,
                        vhid,
                        from,
                        to,
                        why,
                    });
                }
            }
        }
        let sv = &self.nodes[n].vhids[vi];
        assert!(
            transitions <= 1,
            "seed {}: more than one transition for one event",
            self.seed
        );
        assert_eq!(
            transitions == 1,
            before != sv.vhid.state(),
            "seed {}: state change without transition",
            self.seed
        );
        if !sv.vhid.is_leaving() && !sv.vhid.is_stopped() {
            assert_eq!(
                sv.dp,
                Dp::Entry {
                    state: sv.vhid.state(),
                    expires: sv.vhid.master_expires()
                },
                "seed {}: {} vhid {vhid}: data path out of step at {now}",
                self.seed,
                self.nodes[n].name
            );
        }
    }

    /// One advert from node `from` onto its VHID's segment, with loss and delay.
    fn broadcast(&mut self, from: usize, vi: usize, advert: PeerAdvert, at: Time) {
        let (seg, vhid) = {
            let sv = &self.nodes[from].vhids[vi];
            (sv.seg, sv.vhid.params().vhid)
        };
        // The shell steps the counter and notes it for every advert it sends.
        let sv = &mut self.nodes[from].vhids[vi];
        sv.counter = sv.counter.wrapping_add(1);
        sv.tracker.record_sent(at.0, sv.counter);
        let repr = Repr::new_advert(
            vhid,
            advert.advbase,
            advert.advskew,
            sv.counter,
            PASSWORD,
            &[sim_vip(seg, vhid)],
            &[],
        );
        self.last_sent.insert((seg, vhid), repr);
        if !self.nodes[from].links[seg] {
            return;
        }
        let src = node_ip(seg, from);
        for to in 0..self.nodes.len() {
            if to == from {
                continue;
            }
            for tvi in 0..self.nodes[to].vhids.len() {
                let sv = &self.nodes[to].vhids[tvi];
                if sv.seg != seg || sv.vhid.params().vhid != vhid {
                    continue;
                }
                if self.rng.gen::<f64>() < self.loss {
                    self.adverts_lost += 1;
                    continue;
                }
                let delay = self.rng.gen_range(MIN_DELAY..=MAX_DELAY);
                self.schedule(
                    Time(at.0 + delay),
                    Pending::Deliver {
                        to,
                        vi: tvi,
                        advert: repr,
                        src,
                    },
                );
            }
        }
    }

    /// Move the clock to `t`, integrating data-path coverage over `[now, t)`.
    fn advance_to(&mut self, t: Time) {
        if t <= self.now {
            return;
        }
        if self.measuring {
            for k in 0..self.keys.len() {
                let key = self.keys[k];
                let dps = self.dps(key);
                let mut cuts: Vec<Time> = dps
                    .iter()
                    .filter_map(|d| d.lapses_at())
                    .filter(|&c| c > self.now && c < t)
                    .collect();
                cuts.push(self.now);
                cuts.push(t);
                cuts.sort();
                cuts.dedup();
                for w in cuts.windows(2) {
                    let masters = dps.iter().filter(|d| d.is_master_at(w[0])).count();
                    let cover = match masters {
                        0 => Cover::Gap,
                        1 => Cover::One,
                        _ => Cover::Overlap,
                    };
                    self.coverage[k].add(cover, w[0], w[1]);
                }
            }
        }
        self.now = t;
    }

    fn dps(&self, key: (usize, u8)) -> Vec<Dp> {
        self.nodes
            .iter()
            .flat_map(|n| n.vhids.iter())
            .filter(|sv| (sv.seg, sv.vhid.params().vhid) == key)
            .map(|sv| sv.dp)
            .collect()
    }

    /// Start measuring coverage afresh from now.
    fn measure(&mut self) {
        self.measuring = true;
        self.coverage
            .iter_mut()
            .for_each(|c| *c = Coverage::default());
    }

    /// Coverage of `key` since `measure()`, with the current run closed.
    fn coverage(&self, key: (usize, u8)) -> Coverage {
        let k = self.keys.iter().position(|&x| x == key).expect("known key");
        let mut c = self.coverage[k];
        c.close(self.now);
        c
    }

    /// Nodes whose controller says MASTER for `key` (running nodes only).
    fn masters(&self, key: (usize, u8)) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].running
                    && self.nodes[n].vhids.iter().any(|sv| {
                        (sv.seg, sv.vhid.params().vhid) == key && sv.vhid.state() == State::Master
                    })
            })
            .collect()
    }

    /// Nodes whose data path answers as MASTER for `key` now.
    fn dp_masters(&self, key: (usize, u8)) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].vhids.iter().any(|sv| {
                    (sv.seg, sv.vhid.params().vhid) == key && sv.dp.is_master_at(self.now)
                })
            })
            .collect()
    }

    fn vhid(&self, n: usize, key: (usize, u8)) -> &Vhid {
        &self.nodes[n]
            .vhids
            .iter()
            .find(|sv| (sv.seg, sv.vhid.params().vhid) == key)
            .expect("node has the VHID")
            .vhid
    }

    fn transitions_since(&self, t: Time, key: (usize, u8)) -> Vec<TransitionRec> {
        self.transitions
            .iter()
            .filter(|r| r.at >= t && (r.seg, r.vhid) == key)
            .copied()
            .collect()
    }

    /// The first node (other than `not`) that became MASTER of `key` at or after `t`.
    fn first_takeover(&self, t: Time, key: (usize, u8), not: usize) -> Option<TransitionRec> {
        self.transitions_since(t, key)
            .into_iter()
            .find(|r| r.to == State::Master && r.node != not)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let skip = self.transitions.len().saturating_sub(40);
        for r in &self.transitions[skip..] {
            let _ = writeln!(
                s,
                "  {} {} seg{} vhid{}: {} -> {} ({})",
                r.at, self.nodes[r.node].name, r.seg, r.vhid, r.from, r.to, r.why
            );
        }
        s
    }
}

const NAMES: [&str; 3] = ["fw1", "fw2", "fw3"];
const VHID: u8 = 1;
const KEY: (usize, u8) = (0, VHID);

fn p(advbase: u8, advskew: u8, preempt: bool) -> Params {
    Params {
        vhid: VHID,
        advbase: Base::Seconds(advbase),
        advskew,
        preempt,
    }
}

/// Fast mode: `advbase_ms` (docs/protocol.md §2, "Fast mode (advbase 0)").
fn fast(advbase_ms: u16, advskew: u8, preempt: bool) -> Params {
    Params {
        advbase: Base::Millis(advbase_ms),
        ..p(1, advskew, preempt)
    }
}

fn eff_interval(p: &Params) -> Duration {
    p.advbase.interval(p.advskew.min(240))
}

/// Nodes with one VHID on segment 0, each started at `start[i]`.
fn single_vhid_sim(seed: u64, loss: f64, params: &[Params], start: &[Time]) -> Sim {
    let mut sim = Sim::new(seed, loss);
    build(&mut sim, params, start);
    sim
}

fn build(sim: &mut Sim, params: &[Params], start: &[Time]) {
    for (i, &pp) in params.iter().enumerate() {
        let n = sim.add_node(NAMES[i], &[(0, pp)]);
        sim.fault(start[i], n, Fault::Start);
    }
}

/// Run until `t` with no loss for the last 30 s, then check that exactly one node
/// is MASTER, in the controller and in the data path, and that the last 15 s had
/// no transition, no gap and no overlap. Returns the master.
fn settle(sim: &mut Sim, t: Time, why: &str) -> usize {
    let heal = Time(t.0 - 30 * SEC);
    let quiet = Time(t.0 - 15 * SEC);
    sim.fault(heal, 0, Fault::SetLoss(0.0));
    sim.run_until(quiet);
    sim.measure();
    sim.run_until(t);
    let seed = sim.seed;
    let masters = sim.masters(KEY);
    assert_eq!(
        masters.len(),
        1,
        "seed {seed} ({why}): masters {masters:?}\n{}",
        sim.log()
    );
    assert_eq!(
        sim.dp_masters(KEY),
        masters,
        "seed {seed} ({why}): data path disagrees\n{}",
        sim.log()
    );
    let late = sim.transitions_since(quiet, KEY);
    assert!(
        late.is_empty(),
        "seed {seed} ({why}): flapping after healing: {late:?}"
    );
    let c = sim.coverage(KEY);
    assert_eq!(
        (c.gap, c.overlap),
        (0, 0),
        "seed {seed} ({why}): steady state coverage {c:?}"
    );
    masters[0]
}

#[test]
fn converges_to_one_master_under_loss() {
    let mut lossy_overlap = 0u64;
    let mut lossy_time = 0u64;
    for seed in 0..300u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xC0FFEE);
        let n = cfg.gen_range(2..=3);
        let advbase = if cfg.gen_bool(0.8) { 1 } else { 2 };
        let params: Vec<Params> = (0..n)
            .map(|_| p(advbase, cfg.gen_range(0..=240), cfg.gen_bool(0.5)))
            .collect();
        let start: Vec<Time> = (0..n).map(|_| Time(cfg.gen_range(0..3 * SEC))).collect();
        let loss = [0.0, 0.02, 0.1, 0.25][cfg.gen_range(0..4)];
        let mut sim = single_vhid_sim(seed, loss, &params, &start);
        // Measure the lossy phase too: loss makes false takeovers, never a lasting split.
        sim.run_until(secs(10));
        sim.measure();
        sim.run_until(secs(120));
        let c = sim.coverage(KEY);
        lossy_overlap += c.overlap;
        lossy_time += 110 * SEC;
        let m = settle(&mut sim, secs(180), "converge");
        // With preempt on a best node, the best interval wins.
        let best = params.iter().map(eff_interval).min().expect("nodes");
        if params.iter().any(|q| q.preempt && eff_interval(q) == best) {
            assert_eq!(
                eff_interval(&params[m]),
                best,
                "seed {seed}: {params:?} master {m}\n{}",
                sim.log()
            );
        }
    }
    // Loss up to 25 %: a backup that misses three adverts in a row (1.6 % of the
    // time at 25 % loss) takes over falsely until it hears the better master
    // again (about 1.3 intervals). Measured about 0.9 % overall; bound 2 %.
    let frac = lossy_overlap as f64 / lossy_time as f64;
    eprintln!(
        "overlap under 0-25 % loss: {:.4} % of the time",
        frac * 100.0
    );
    assert!(frac < 0.02, "overlap fraction under loss {frac}");
}

#[test]
fn best_node_wins_with_preempt() {
    for seed in 0..200u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xBE57);
        // fw2 is best and starts last, so a worse node is MASTER first.
        let params = [p(1, 100, true), p(1, 0, true), p(1, 50, true)];
        let late = Time(5 * SEC + cfg.gen_range(0..SEC));
        let start = [
            Time(cfg.gen_range(0..SEC)),
            late,
            Time(cfg.gen_range(0..SEC)),
        ];
        let loss = if seed % 2 == 0 { 0.0 } else { 0.1 };
        let mut sim = single_vhid_sim(seed, loss, &params, &start);
        if loss == 0.0 {
            sim.run_until(late);
            let old = sim.masters(KEY);
            assert_eq!(
                old,
                vec![2],
                "seed {seed}: fw3 (advskew 50) leads before fw2 starts\n{}",
                sim.log()
            );
            sim.run_until(Time(late.0 + 5 * SEC));
            let take = sim.first_takeover(late, KEY, 2).expect("fw2 takes over");
            assert_eq!(
                (take.node, take.why),
                (1, Why::Preempt),
                "seed {seed}\n{}",
                sim.log()
            );
            // fw2 preempts on the first advert it hears from fw3.
            let bound = ns(eff_interval(&params[2])) + MAX_DELAY;
            assert!(
                take.at.0 - late.0 <= bound,
                "seed {seed}: preempt after {}",
                take.at.0 - late.0
            );
            // fw3 steps back on fw2's first advert: overlap is one delay.
            let back = sim
                .transitions_since(late, KEY)
                .into_iter()
                .find(|r| r.node == 2)
                .expect("fw3 steps back");
            assert_eq!(back.why, Why::HigherPriorityMaster);
            assert!(back.at.0 - take.at.0 <= MAX_DELAY, "seed {seed}");
        }
        assert_eq!(
            settle(&mut sim, secs(90), "best wins"),
            1,
            "seed {seed}\n{}",
            sim.log()
        );
    }
}

#[test]
fn backup_takes_over_after_master_crash() {
    for seed in 0..300u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xC2A5);
        let n = cfg.gen_range(2..=3);
        // Distinct advskews: the backup with the shortest master-down interval takes over.
        let mut skews: Vec<u8> = vec![0, 30, 100, 240];
        let params: Vec<Params> = (0..n)
            .map(|_| {
                p(
                    1,
                    skews.remove(cfg.gen_range(0..skews.len())),
                    cfg.gen_bool(0.5),
                )
            })
            .collect();
        let start: Vec<Time> = (0..n).map(|_| Time(cfg.gen_range(0..2 * SEC))).collect();
        let mut sim = single_vhid_sim(seed, 0.0, &params, &start);
        sim.run_until(secs(30));
        let m = sim.masters(KEY);
        assert_eq!(m.len(), 1, "seed {seed}\n{}", sim.log());
        let m = m[0];
        let crash = Time(30 * SEC + cfg.gen_range(0..2 * SEC));
        sim.run_until(Time(crash.0 - SEC));
        sim.measure();
        sim.fault(crash, m, Fault::Crash);
        sim.run_until(Time(crash.0 + 20 * SEC));

        let backups: Vec<usize> = (0..n).filter(|&i| i != m).collect();
        let md = |i: usize| ns(master_down_interval(1, params[i].advskew));
        let taker_expected = *backups.iter().min_by_key(|&&i| md(i)).expect("a backup");
        let take = sim
            .first_takeover(crash, KEY, m)
            .unwrap_or_else(|| panic!("seed {seed}: no takeover\n{}", sim.log()));
        assert_eq!(
            (take.node, take.why),
            (taker_expected, Why::MasterDown),
            "seed {seed}\n{}",
            sim.log()
        );
        let after = take.at.0 - crash.0;
        let iv_m = ns(eff_interval(&params[m]));
        // The brief's bound: master-down + one advert interval.
        assert!(
            after <= md(take.node) + iv_m,
            "seed {seed}: takeover {after} ns after the crash"
        );
        // Tighter: the last advert left at most one interval before the crash and
        // arrived at most one delay after it.
        assert!(after <= md(take.node) + MAX_DELAY, "seed {seed}: {after}");
        assert!(
            after + iv_m >= md(take.node),
            "seed {seed}: took over too early: {after}"
        );
        assert_eq!(
            sim.masters(KEY),
            vec![taker_expected],
            "seed {seed}\n{}",
            sim.log()
        );
        // The crashed data path goes silent at once: one gap, no overlap.
        let c = sim.coverage(KEY);
        assert_eq!(c.overlap, 0, "seed {seed}: {c:?}");
        assert_eq!(c.gap, c.max_gap, "seed {seed}: one gap only: {c:?}");
        assert_eq!(c.gap, take.at.0 - crash.0, "seed {seed}: {c:?}");
    }
}

#[test]
fn bow_out_hands_over_within_one_event() {
    for seed in 0..300u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xB0);
        let n = cfg.gen_range(2..=3);
        let mut skews: Vec<u8> = vec![0, 20, 100, 200];
        let advbase = cfg.gen_range(1..=3);
        let params: Vec<Params> = (0..n)
            .map(|_| {
                p(
                    advbase,
                    skews.remove(cfg.gen_range(0..skews.len())),
                    cfg.gen_bool(0.5),
                )
            })
            .collect();
        let start: Vec<Time> = (0..n).map(|_| Time(cfg.gen_range(0..2 * SEC))).collect();
        let mut sim = single_vhid_sim(seed, 0.0, &params, &start);
        sim.run_until(secs(40));
        let m = sim.masters(KEY);
        assert_eq!(m.len(), 1, "seed {seed}\n{}", sim.log());
        let m = m[0];
        let stop = Time(40 * SEC + cfg.gen_range(0..3 * SEC));
        sim.run_until(Time(stop.0 - SEC));
        sim.measure();
        sim.fault(stop, m, Fault::Shutdown);
        sim.run_until(Time(stop.0 + 30 * SEC));

        let take = sim
            .first_takeover(stop, KEY, m)
            .unwrap_or_else(|| panic!("seed {seed}: no takeover\n{}", sim.log()));
        assert_eq!(take.why, Why::PeerBowedOut, "seed {seed}\n{}", sim.log());
        assert!(
            take.at.0 - stop.0 <= MAX_DELAY,
            "seed {seed}: takeover after {} ns",
            take.at.0 - stop.0
        );
        // The leaving master stops when it hears the new master's first advert.
        let left = sim
            .transitions_since(stop, KEY)
            .into_iter()
            .find(|r| r.node == m)
            .unwrap_or_else(|| panic!("seed {seed}: master never stopped\n{}", sim.log()));
        assert_eq!(
            (left.from, left.to, left.why),
            (State::Master, State::Backup, Why::Shutdown)
        );
        assert!(left.at.0 - take.at.0 <= MAX_DELAY, "seed {seed}");
        assert!(sim.vhid(m, KEY).is_stopped());
        // The best remaining node keeps it (a second taker steps back on its advert).
        let best = (0..n)
            .filter(|&i| i != m)
            .min_by_key(|&i| params[i].advskew)
            .expect("a backup");
        assert_eq!(sim.masters(KEY), vec![best], "seed {seed}\n{}", sim.log());
        // Make-before-break: no gap. Overlap only while adverts are in flight: a
        // node that took over on a copy of the bow-out that arrived after the new
        // master's advert steps back when the new master re-asserts on the next
        // copy.
        let c = sim.coverage(KEY);
        assert_eq!(c.gap, 0, "seed {seed}: {c:?}");
        assert!(
            c.max_overlap <= BOW_OUT_SPACING + 2 * MAX_DELAY,
            "seed {seed}: {c:?} {params:?} stop {stop}\n{}",
            sim.log()
        );
    }
}

#[test]
fn bow_out_under_loss_still_hands_over() {
    let mut slow = 0;
    let runs = 300u64;
    for seed in 0..runs {
        let params = [p(1, 0, false), p(1, 50, false)];
        let mut sim = single_vhid_sim(seed, 0.0, &params, &[Time(0), secs(1)]);
        sim.run_until(secs(20));
        assert_eq!(sim.masters(KEY), vec![0], "seed {seed}");
        sim.fault(secs(20), 0, Fault::SetLoss(0.3));
        let stop = Time(20 * SEC + seed * 3 * MS);
        sim.fault(stop, 0, Fault::Shutdown);
        sim.run_until(Time(stop.0 + 10 * SEC));
        let take = sim
            .first_takeover(stop, KEY, 0)
            .unwrap_or_else(|| panic!("seed {seed}\n{}", sim.log()));
        if take.at.0 - stop.0 > 2 * BOW_OUT_SPACING + MAX_DELAY {
            // All three copies lost: the master-down timer still takes over, and the
            // leaving master has stopped by then at the latest (3 × advbase).
            slow += 1;
            assert_eq!(take.why, Why::MasterDown, "seed {seed}");
        }
        assert!(
            take.at.0 - stop.0 <= ns(master_down_interval(1, 50)) + MAX_DELAY,
            "seed {seed}"
        );
        assert!(
            sim.vhid(0, KEY).is_stopped(),
            "seed {seed}: leaving master never stopped"
        );
        assert_eq!(sim.masters(KEY), vec![1], "seed {seed}");
    }
    // P(all three copies lost) = 0.3³ = 2.7 %.
    assert!(
        slow <= runs / 10,
        "{slow} of {runs} bow-outs were lost entirely"
    );
}

#[test]
fn equal_priorities_do_not_flap() {
    for seed in 0..300u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xE0);
        let skew = cfg.gen_range(0..=240);
        let preempt = cfg.gen_bool(0.5);
        let params = [p(1, skew, preempt), p(1, skew, preempt)];
        let start = [
            Time(cfg.gen_range(0..2 * SEC)),
            Time(cfg.gen_range(0..2 * SEC)),
        ];
        let mut sim = single_vhid_sim(seed, 0.0, &params, &start);
        sim.run_until(secs(30));
        sim.measure();
        sim.run_until(secs(600));
        let all = sim.transitions_since(Time(0), KEY);
        // 2 × (INIT → BACKUP) + 1 × (BACKUP → MASTER); a start collision (both
        // timers within one delay) costs one more round of 4.
        assert!(
            all.len() <= 7,
            "seed {seed}: {} transitions\n{}",
            all.len(),
            sim.log()
        );
        assert!(
            sim.transitions_since(secs(30), KEY).is_empty(),
            "seed {seed}: flapping\n{}",
            sim.log()
        );
        assert_eq!(sim.masters(KEY).len(), 1, "seed {seed}");
        let c = sim.coverage(KEY);
        assert_eq!((c.gap, c.overlap), (0, 0), "seed {seed}: {c:?}");
    }
}

/// Both nodes start in the same nanosecond, so their first master-down timers
/// fire together: the worst case for "a MASTER hearing an equal interval steps
/// back". Returns the largest number of transitions over the seeds.
fn simultaneous_equal_start(bsd_ties: bool) -> usize {
    let mut worst = 0;
    for seed in 0..300u64 {
        let params = [p(1, 0, false), p(1, 0, false)];
        let mut sim = Sim::new(seed, 0.0);
        sim.bsd_ties = bsd_ties;
        build(&mut sim, &params, &[Time(0), Time(0)]);
        sim.run_until(secs(600));
        let n = sim.transitions_since(Time(0), KEY).len();
        worst = worst.max(n);
        assert!(
            sim.transitions_since(secs(540), KEY).is_empty(),
            "seed {seed}: still flapping\n{}",
            sim.log()
        );
        assert_eq!(sim.masters(KEY).len(), 1, "seed {seed}\n{}", sim.log());
    }
    worst
}

#[test]
fn equal_priorities_simultaneous_start_converge_with_tie_break() {
    // One collision round (2 starts, 2 takeovers, 2 step-backs), then one
    // takeover; a second collision after the jitter is rare.
    let worst = simultaneous_equal_start(false);
    eprintln!("tie-break: worst {worst} transitions");
    assert!(worst <= 11, "worst case {worst} transitions");
}

#[test]
fn equal_priorities_simultaneous_start_converge_with_bsd_timing() {
    // Without jitter only the random one-way delays separate the two timers, so
    // each round converges with low probability: the pair still converges, slowly.
    let worst = simultaneous_equal_start(true);
    eprintln!("BSD timing: worst {worst} transitions");
    assert!(worst <= 250, "worst case {worst} transitions");
}

#[test]
fn link_down_moves_both_vhids() {
    const LAN: (usize, u8) = (0, 10);
    const WAN: (usize, u8) = (1, 20);
    let a_params = |vhid| Params {
        vhid,
        advbase: Base::Seconds(1),
        advskew: 0,
        preempt: true,
    };
    let b_params = |vhid| Params {
        vhid,
        advbase: Base::Seconds(1),
        advskew: 100,
        preempt: true,
    };
    for seed in 0..100u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0x11D);
        let mut sim = Sim::new(seed, 0.0);
        let a = sim.add_node("fw1", &[(LAN.0, a_params(LAN.1)), (WAN.0, a_params(WAN.1))]);
        let b = sim.add_node("fw2", &[(LAN.0, b_params(LAN.1)), (WAN.0, b_params(WAN.1))]);
        sim.fault(Time(cfg.gen_range(0..SEC)), a, Fault::Start);
        sim.fault(Time(cfg.gen_range(0..SEC)), b, Fault::Start);
        sim.run_until(secs(20));
        for key in [LAN, WAN] {
            assert_eq!(
                sim.masters(key),
                vec![a],
                "seed {seed}: fw1 leads {key:?}\n{}",
                sim.log()
            );
        }
        let down = Time(20 * SEC + cfg.gen_range(0..2 * SEC));
        sim.measure();
        sim.fault(down, a, Fault::LinkDown(LAN.0));
        sim.run_until(Time(down.0 + 10 * SEC));

        // WAN: fw1 advertises advskew 240 at once, fw2 preempts, fw1 steps back.
        let wan = sim
            .first_takeover(down, WAN, a)
            .unwrap_or_else(|| panic!("seed {seed}\n{}", sim.log()));
        assert_eq!(
            (wan.node, wan.why),
            (b, Why::Preempt),
            "seed {seed}\n{}",
            sim.log()
        );
        assert!(
            wan.at.0 - down.0 <= MAX_DELAY,
            "seed {seed}: WAN moved after {}",
            wan.at.0 - down.0
        );
        // LAN: fw1 is INIT and silent; fw2's master-down timer fires.
        let lan = sim
            .first_takeover(down, LAN, a)
            .unwrap_or_else(|| panic!("seed {seed}\n{}", sim.log()));
        assert_eq!((lan.node, lan.why), (b, Why::MasterDown), "seed {seed}");
        let md_b = ns(master_down_interval(1, 100));
        assert!(
            lan.at.0 - down.0 <= md_b + MAX_DELAY,
            "seed {seed}: LAN moved after {}",
            lan.at.0 - down.0
        );
        assert_eq!(sim.vhid(a, LAN).state(), State::Init);
        assert_eq!(sim.vhid(a, WAN).state(), State::Backup);
        assert_eq!(sim.vhid(a, WAN).effective_advskew(), 240);
        for key in [LAN, WAN] {
            assert_eq!(
                sim.masters(key),
                vec![b],
                "seed {seed}: fw2 leads {key:?}\n{}",
                sim.log()
            );
        }
        let c = sim.coverage(WAN);
        assert!(
            c.gap == 0 && c.max_overlap <= MAX_DELAY,
            "seed {seed}: WAN {c:?}"
        );
        let c = sim.coverage(LAN);
        assert!(
            c.overlap == 0 && c.max_gap <= md_b + MAX_DELAY,
            "seed {seed}: LAN {c:?}"
        );

        // Link back: demotion removed, fw1 preempts both on fw2's next adverts.
        let up = Time(down.0 + 10 * SEC + cfg.gen_range(0..2 * SEC));
        sim.measure();
        sim.fault(up, a, Fault::LinkUp(LAN.0));
        sim.run_until(Time(up.0 + 10 * SEC));
        let bound = ns(interval(1, 100)) + MAX_DELAY;
        for key in [LAN, WAN] {
            let back = sim
                .first_takeover(up, key, b)
                .unwrap_or_else(|| panic!("seed {seed}\n{}", sim.log()));
            assert_eq!(
                (back.node, back.why),
                (a, Why::Preempt),
                "seed {seed} {key:?}"
            );
            assert!(
                back.at.0 - up.0 <= bound,
                "seed {seed} {key:?}: back after {}",
                back.at.0 - up.0
            );
            assert_eq!(sim.masters(key), vec![a], "seed {seed} {key:?}");
            let c = sim.coverage(key);
            assert!(
                c.gap == 0 && c.max_overlap <= MAX_DELAY,
                "seed {seed} {key:?}: {c:?}"
            );
        }
    }
}

#[test]
fn stalled_master_is_fenced_by_the_dead_man_deadline() {
    for seed in 0..300u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0x57A11);
        let advbase = cfg.gen_range(1..=3);
        let params = [
            p(advbase, cfg.gen_range(0..=240), true),
            p(advbase, cfg.gen_range(0..=240), true),
        ];
        let mut sim = single_vhid_sim(seed, 0.0, &params, &[Time(0), Time(cfg.gen_range(0..SEC))]);
        sim.run_until(secs(40));
        let m = sim.masters(KEY);
        assert_eq!(m.len(), 1, "seed {seed}\n{}", sim.log());
        let (m, b) = (m[0], 1 - m[0]);
        let stall = Time(40 * SEC + cfg.gen_range(0..3 * SEC));
        sim.run_until(Time(stall.0 - SEC));
        sim.measure();
        sim.fault(stall, m, Fault::Stall);
        sim.run_until(Time(stall.0 + 20 * SEC));
        // The stalled node's XDP entry lapses 3 × advbase after its last advert;
        // the backup's master-down interval (3 × advbase + skew, counted from the
        // later arrival) never ends before that: no overlap, and the gap is at
        // most the backup's skew plus one delay.
        let take = sim
            .first_takeover(stall, KEY, m)
            .unwrap_or_else(|| panic!("seed {seed}\n{}", sim.log()));
        assert_eq!((take.node, take.why), (b, Why::MasterDown), "seed {seed}");
        let c = sim.coverage(KEY);
        assert_eq!(c.overlap, 0, "seed {seed}: {c:?}");
        let skew_b = ns(interval(0, params[b].advskew));
        assert!(c.max_gap <= skew_b + MAX_DELAY, "seed {seed}: {c:?}");

        // The stalled controller wakes up believing it is MASTER: its overdue
        // advert timer fires, and the pair converges again.
        let resume = Time(stall.0 + 20 * SEC);
        sim.measure();
        sim.fault(resume, m, Fault::Resume);
        sim.run_until(Time(resume.0 + 20 * SEC));
        let c = sim.coverage(KEY);
        let iv_b = ns(eff_interval(&params[b]));
        assert!(
            c.max_overlap <= iv_b + MAX_DELAY,
            "seed {seed}: {c:?}\n{}",
            sim.log()
        );
        settle(&mut sim, Time(resume.0 + 60 * SEC), "after resume");
    }
}

#[test]
fn chaos_with_link_flaps_crashes_and_loss_heals() {
    // Random faults on two VHIDs (LAN, WAN) of three nodes; after the faults stop
    // and the loss heals, each VHID has exactly one master and both VHIDs share it
    // when one node is best on both and preempts.
    const LAN: (usize, u8) = (0, 1);
    const WAN: (usize, u8) = (1, 2);
    for seed in 0..150u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xCA05);
        let mut sim = Sim::new(seed, cfg.gen_range(0.0..0.2));
        let skews = [0u8, 50, 100];
        for (i, name) in NAMES.iter().enumerate() {
            let q = |vhid| Params {
                vhid,
                advbase: Base::Seconds(1),
                advskew: skews[i],
                preempt: true,
            };
            let n = sim.add_node(name, &[(LAN.0, q(LAN.1)), (WAN.0, q(WAN.1))]);
            sim.fault(Time(cfg.gen_range(0..2 * SEC)), n, Fault::Start);
        }
        // fw3 may crash for good; fw1 and fw2 only flap links and stall briefly.
        for _ in 0..cfg.gen_range(3..12) {
            let t = Time(cfg.gen_range(5 * SEC..100 * SEC));
            let node = cfg.gen_range(0..2);
            let seg = cfg.gen_range(0..2);
            let fault = match cfg.gen_range(0..3) {
                0 => Fault::LinkDown(seg),
                1 => Fault::Stall,
                _ => Fault::SetLoss(cfg.gen_range(0.0..0.3)),
            };
            sim.fault(t, node, fault);
            let back = Time(t.0 + cfg.gen_range(SEC..10 * SEC));
            match fault {
                Fault::LinkDown(s) => sim.fault(back, node, Fault::LinkUp(s)),
                Fault::Stall => sim.fault(back, node, Fault::Resume),
                _ => {}
            }
        }
        let crash3 = cfg.gen_bool(0.3);
        if crash3 {
            sim.fault(Time(cfg.gen_range(10 * SEC..100 * SEC)), 2, Fault::Crash);
        }
        // Heal everything after 120 s.
        for n in 0..2 {
            for seg in 0..2 {
                sim.fault(secs(120), n, Fault::LinkUp(seg));
            }
            sim.fault(secs(120), n, Fault::Resume);
        }
        sim.fault(secs(120), 0, Fault::SetLoss(0.0));
        sim.run_until(secs(150));
        sim.measure();
        sim.run_until(secs(170));
        for key in [LAN, WAN] {
            // fw1 (advskew 0, preempt) is best and healthy again: it leads both.
            assert_eq!(
                sim.masters(key),
                vec![0],
                "seed {seed} {key:?}\n{}",
                sim.log()
            );
            assert_eq!(sim.dp_masters(key), vec![0], "seed {seed} {key:?}");
            let c = sim.coverage(key);
            assert_eq!((c.gap, c.overlap), (0, 0), "seed {seed} {key:?}: {c:?}");
            assert!(
                sim.transitions_since(secs(150), key).is_empty(),
                "seed {seed} {key:?}"
            );
        }
        for n in 0..2 {
            assert_eq!(
                sim.nodes[n].demotion, 0,
                "seed {seed}: demotion left on {}",
                sim.nodes[n].name
            );
        }
    }
}

/// An attacker on the segment (issue "Hold up under attack" §2) captures the
/// master's latest advert and re-sends it from a new address each time, 10/s
/// for 6 s: rewritten to advskew 0 (to make the master step back) and to a
/// bow-out (advbase/advskew 255, to make the backup take over). advbase and
/// advskew are outside the digest, so every copy authenticates. With
/// per-source replay tracking only (before the fix) this left the pair with no
/// MASTER or forced takeovers; checked once against that code. Now: no
/// transition, no gap, every copy refused (as `own` at the master, `replay`
/// at the backup); addresses off the segment's subnet are `off_subnet`.
#[test]
fn replayed_adverts_from_rotating_sources_move_nothing() {
    for seed in 0..20u64 {
        let params = [p(1, 0, true), p(1, 100, true)];
        let mut sim = single_vhid_sim(seed, 0.0, &params, &[secs(0), secs(1)]);
        sim.run_until(secs(10));
        assert_eq!(
            sim.masters(KEY),
            vec![0],
            "seed {seed}: fw1 must lead\n{}",
            sim.log()
        );
        let t0 = sim.now;
        let captured = sim.last_sent[&(0, VHID)];
        sim.measure();
        let mut k = 0u64;
        for copy in [
            PeerAdvert {
                advbase: 1,
                advskew: 0,
            },
            PeerAdvert::BOW_OUT,
        ] {
            for i in 0..60u64 {
                let mut forged = captured;
                forged.advbase = copy.advbase;
                forged.advskew = copy.advskew;
                k += 1;
                // Rotating sources, on the subnet and (every third) off it.
                let src = if i % 3 == 2 {
                    Ipv4Addr::new(192, 0, 2, (k % 250) as u8 + 1)
                } else {
                    Ipv4Addr::new(10, 0, (k / 250) as u8 + 1, (k % 250) as u8 + 1)
                };
                let at = Time(t0.0 + k * 100 * MS);
                for to in 0..2 {
                    sim.schedule(
                        at,
                        Pending::Deliver {
                            to,
                            vi: 0,
                            advert: forged,
                            src,
                        },
                    );
                }
            }
        }
        sim.run_until(Time(t0.0 + (k + 20) * 100 * MS));
        let moved = sim.transitions_since(t0, KEY);
        assert!(
            moved.is_empty(),
            "seed {seed}: replays moved the election: {moved:?}"
        );
        let c = sim.coverage(KEY);
        assert_eq!((c.gap, c.overlap), (0, 0), "seed {seed}: coverage {c:?}");
        assert_eq!(sim.masters(KEY), vec![0]);
        use accept::Rejection::*;
        let count = |r| sim.rejected.iter().filter(|&&x| x == r).count() as u64;
        // Both nodes received all 2 × 120 copies; a third of them off-subnet.
        assert_eq!(count(OffSubnet), 2 * 40, "seed {seed}");
        assert_eq!(count(OwnCounter) + count(Replay), 2 * 80, "seed {seed}");
    }
}

// ---- Fast mode (advbase_ms; docs/protocol.md §2, "Fast mode (advbase 0)") ----

/// Fast pairs and triples (advbase_ms 20, 50 or 100) under loss converge to one
/// master, the best one with preempt; a crash of the master is taken over by
/// the backup with the shortest master-down interval, within it plus one
/// delay, with one gap and no overlap; a bow-out hands over within one delay.
#[test]
fn fast_mode_converges_fails_over_and_bows_out() {
    for seed in 0..150u64 {
        let mut cfg = StdRng::seed_from_u64(seed ^ 0xFA57);
        let n = cfg.gen_range(2..=3);
        let ms = [20u16, 50, 100][cfg.gen_range(0..3)];
        let mut skews: Vec<u8> = vec![0, 30, 100, 240];
        let params: Vec<Params> = (0..n)
            .map(|_| {
                fast(
                    ms,
                    skews.remove(cfg.gen_range(0..skews.len())),
                    cfg.gen_bool(0.5),
                )
            })
            .collect();
        let start: Vec<Time> = (0..n).map(|_| Time(cfg.gen_range(0..500 * MS))).collect();
        let loss = [0.0, 0.02, 0.1][cfg.gen_range(0..3)];
        let mut sim = single_vhid_sim(seed, loss, &params, &start);
        let m = settle(&mut sim, secs(40), "fast converge");
        let best = params.iter().map(eff_interval).min().expect("nodes");
        if params.iter().any(|q| q.preempt && eff_interval(q) == best) {
            assert_eq!(eff_interval(&params[m]), best, "seed {seed}: {params:?}");
        }
        // Every advert in the run was fast mode: nothing refused for its mode.
        assert!(
            !sim.rejected.iter().any(|r| matches!(
                r,
                accept::Rejection::FastModeMismatch | accept::Rejection::SecondsInFastMode
            )),
            "seed {seed}: {:?}",
            sim.rejected
        );

        let crash = Time(40 * SEC + cfg.gen_range(0..200 * MS));
        sim.measure();
        sim.fault(crash, m, Fault::Crash);
        sim.run_until(Time(crash.0 + 2 * SEC));
        let md = |i: usize| ns(params[i].advbase.master_down_interval(params[i].advskew));
        let backups: Vec<usize> = (0..n).filter(|&i| i != m).collect();
        let expected = *backups.iter().min_by_key(|&&i| md(i)).expect("a backup");
        let take = sim
            .first_takeover(crash, KEY, m)
            .unwrap_or_else(|| panic!("seed {seed}: no takeover\n{}", sim.log()));
        // settle() healed the loss: the crash is measured without it.
        assert_eq!(
            (take.node, take.why),
            (expected, Why::MasterDown),
            "seed {seed}\n{}",
            sim.log()
        );
        assert!(
            take.at.0 - crash.0 <= md(take.node) + MAX_DELAY,
            "seed {seed}: takeover {} ns after the crash",
            take.at.0 - crash.0
        );
        let c = sim.coverage(KEY);
        assert_eq!(c.overlap, 0, "seed {seed}: {c:?}");
        assert_eq!(c.gap, take.at.0 - crash.0, "seed {seed}: {c:?}");

        if n == 3 {
            // The new master bows out: the last node takes over on its first
            // copy, within one delay.
            sim.run_until(Time(crash.0 + 3 * SEC));
            let mm = sim.masters(KEY);
            assert_eq!(mm.len(), 1, "seed {seed}\n{}", sim.log());
            let stop = sim.now;
            sim.fault(stop, mm[0], Fault::Shutdown);
            sim.run_until(Time(stop.0 + SEC));
            let take = sim
                .first_takeover(stop, KEY, mm[0])
                .unwrap_or_else(|| panic!("seed {seed}: no takeover\n{}", sim.log()));
            assert_eq!(take.why, Why::PeerBowedOut, "seed {seed}\n{}", sim.log());
            assert!(take.at.0 - stop.0 <= MAX_DELAY, "seed {seed}");
            assert!(sim.vhid(mm[0], KEY).is_stopped(), "seed {seed}");
        }
    }
}

/// A misconfigured segment: one node in fast mode, one in whole seconds. Each
/// counts the other's adverts as `fast_mode_mismatch` and neither moves the
/// other: the whole-second master never steps back for the fast node's
/// "better" advbase-0 adverts (OpenBSD would read them as advskew/256 s), and
/// the fast node, hearing nothing it understands, becomes MASTER on its own
/// timer (two masters: the misconfiguration `carp status` and the metrics
/// show).
#[test]
fn mixed_modes_move_nothing() {
    for seed in 0..20u64 {
        let params = [p(1, 100, true), fast(50, 0, true)];
        let mut sim = single_vhid_sim(seed, 0.0, &params, &[Time(0), secs(5)]);
        sim.run_until(secs(5));
        assert_eq!(sim.masters(KEY), vec![0], "seed {seed}");
        sim.run_until(secs(15));
        let late: Vec<_> = sim
            .transitions_since(secs(5), KEY)
            .into_iter()
            .filter(|r| r.node == 0)
            .collect();
        assert!(late.is_empty(), "seed {seed}: fw1 moved: {late:?}");
        assert_eq!(sim.masters(KEY), vec![0, 1], "seed {seed}\n{}", sim.log());
        let count = |r| sim.rejected.iter().filter(|&&x| x == r).count();
        // fw2 advertises every ~50 ms for ~9.85 s, fw1 once a second.
        assert!(
            count(accept::Rejection::FastModeMismatch) > 150,
            "seed {seed}: {:?}",
            sim.rejected.len()
        );
        assert!(
            count(accept::Rejection::SecondsInFastMode) >= 9,
            "seed {seed}: {:?}",
            sim.rejected.len()
        );
    }
}
