//! Tier 1: two sync engines (sans-IO) joined by a simulated link with seeded
//! loss, reordering, a forger and a replayer; each node's "kernel" is a map.
//! Checks that, after repair, both tables hold the same states; that bulk
//! transfers end the demotion; and that forged and replayed frames change
//! nothing.
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use carp_user::conntrack::{status, CtEntry, CtKey, TcpInfo, Tuple, L4};
use carp_user::election::Time;
use carp_user::sync::engine::{Engine, Output, Params};
use carp_user::sync::link::Change;
use carp_user::sync::stats::Stats;
use rand::{Rng as _, SeedableRng as _};

const A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn entry(i: u32) -> CtEntry {
    let orig = Tuple {
        src: Ipv4Addr::new(10, 77, (i >> 16) as u8, (i >> 8) as u8).into(),
        dst: Ipv4Addr::new(10, 88, 0, 100).into(),
        proto: 6,
        l4: L4::Ports {
            src: 1024 + (i & 0xff) as u16 * 200 + (i >> 8) as u16 % 200,
            dst: 80,
        },
    };
    let mut reply = orig.inverse();
    reply.dst = Ipv4Addr::new(10, 88, 0, 1).into();
    CtEntry {
        orig,
        reply,
        zone: 0,
        mark: i,
        status: status::CONFIRMED | status::ASSURED | status::SEEN_REPLY | status::SRC_NAT,
        timeout: 3600,
        tcp: Some(TcpInfo {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        }),
        labels: None,
        helper: None,
    }
}

struct Node {
    addr: Ipv4Addr,
    engine: Engine,
    kernel: BTreeMap<CtKey, CtEntry>,
    demoted: bool,
    /// VHIDs the peer released (link-loss handover), as reported.
    released: Vec<u8>,
}

struct Net {
    nodes: Vec<Node>,
    now: Time,
    /// (deliver at, to, from, bytes)
    wire: VecDeque<(Time, usize, Ipv4Addr, Vec<u8>)>,
    rng: rand::rngs::StdRng,
    loss: f64,
    /// Every frame sent, for the replayer.
    captured: Vec<(usize, Ipv4Addr, Vec<u8>)>,
    /// Per node: whether a peer's bulk was seen coming in after a delivery.
    bulk_seen: Vec<bool>,
    /// Cut the wire as soon as a bulk is seen coming in ...
    cut_mid_bulk: bool,
    /// ... and whether it is cut (frames already on it vanish too).
    cut: bool,
}

impl Net {
    fn new(seed: u64, loss: f64) -> Net {
        let t = Time::from_secs(100);
        let mk = |name: &str, me: Ipv4Addr, peer: Ipv4Addr, boot: u64| Node {
            addr: me,
            engine: Engine::new(
                Params::new(name, KEY.to_vec(), vec![peer], boot),
                t,
                Stats::default(),
            ),
            kernel: BTreeMap::new(),
            demoted: false,
            released: Vec::new(),
        };
        Net {
            nodes: vec![mk("fw1", A, B, 1_000), mk("fw2", B, A, 2_000)],
            now: t,
            wire: VecDeque::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            loss,
            captured: Vec::new(),
            bulk_seen: vec![false; 2],
            cut_mid_bulk: false,
            cut: false,
        }
    }

    fn start(&mut self, i: usize) {
        let mut out = Vec::new();
        self.nodes[i].engine.start(self.now, &mut out);
        self.run_outputs(i, out);
    }

    fn run_outputs(&mut self, i: usize, out: Vec<Output>) {
        let mut queue: VecDeque<Output> = out.into();
        while let Some(o) = queue.pop_front() {
            let mut more = Vec::new();
            match o {
                Output::Send { to, frame } => {
                    // A configured peer that is not in the net is dead: its
                    // frames vanish.
                    let Some(j) = self.nodes.iter().position(|n| n.addr == to) else {
                        continue;
                    };
                    self.captured.push((j, self.nodes[i].addr, frame.clone()));
                    if !self.rng.gen_bool(self.loss) {
                        // 0..2 ms of delay: some reordering.
                        let at = self
                            .now
                            .saturating_add(Duration::from_micros(self.rng.gen_range(0..2000)));
                        let from = self.nodes[i].addr;
                        self.wire.push_back((at, j, from, frame));
                    }
                }
                Output::Install(es) => {
                    for e in es {
                        self.nodes[i].kernel.insert(e.key(), e);
                    }
                }
                Output::Delete(ks) => {
                    for k in ks {
                        self.nodes[i].kernel.remove(&k);
                    }
                }
                Output::Dump {
                    for_peer,
                    request_id,
                } => {
                    let table: Vec<CtEntry> = self.nodes[i].kernel.values().cloned().collect();
                    let n = &mut self.nodes[i];
                    n.engine.bulk_dump(self.now, for_peer, request_id, table);
                    n.engine.poll(self.now, &mut more);
                }
                Output::Sweep => {
                    let table: Vec<CtEntry> = self.nodes[i].kernel.values().cloned().collect();
                    let n = &mut self.nodes[i];
                    n.engine.sweep(self.now, table);
                    n.engine.poll(self.now, &mut more);
                }
                Output::Demote(d) => self.nodes[i].demoted = d,
                Output::PeerReleased(v) => self.nodes[i].released.extend(v),
            }
            queue.extend(more);
        }
    }

    fn deliver(&mut self, to: usize, from: Ipv4Addr, bytes: &[u8]) {
        if self.cut {
            return;
        }
        let mut out = Vec::new();
        self.nodes[to].engine.frame(self.now, from, bytes, &mut out);
        if self.nodes[to].engine.bulk_incoming(self.now) {
            self.bulk_seen[to] = true;
            self.cut = self.cut_mid_bulk;
        }
        self.run_outputs(to, out);
    }

    /// Runs for `d` in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        while self.now < end {
            self.now = self.now.saturating_add(Duration::from_millis(1));
            let mut due: Vec<(Time, usize, Ipv4Addr, Vec<u8>)> = Vec::new();
            let mut keep = VecDeque::new();
            for w in self.wire.drain(..) {
                if w.0 <= self.now {
                    due.push(w);
                } else {
                    keep.push_back(w);
                }
            }
            self.wire = keep;
            due.sort_by_key(|w| w.0);
            for (_, to, from, bytes) in due {
                self.deliver(to, from, &bytes);
            }
            for i in 0..self.nodes.len() {
                let mut out = Vec::new();
                self.nodes[i].engine.poll(self.now, &mut out);
                self.run_outputs(i, out);
            }
        }
    }

    /// A state appears in node i's kernel through traffic.
    fn local_insert(&mut self, i: usize, e: CtEntry) {
        self.nodes[i].kernel.insert(e.key(), e.clone());
        self.nodes[i].engine.local_event(Change::Upsert {
            entry: e,
            new: true,
        });
    }

    fn local_delete(&mut self, i: usize, k: CtKey) {
        self.nodes[i].kernel.remove(&k);
        self.nodes[i].engine.local_event(Change::Delete(k));
    }

    fn keys(&self, i: usize) -> Vec<CtKey> {
        self.nodes[i].kernel.keys().copied().collect()
    }

    /// Panics with counts (not with the tables) when the two differ.
    fn assert_same_tables(&self, what: &str) {
        let (a, b) = (&self.nodes[0].kernel, &self.nodes[1].kernel);
        let missing = a.keys().filter(|k| !b.contains_key(k)).count();
        let extra = b.keys().filter(|k| !a.contains_key(k)).count();
        // Timeouts differ by design (a copy gets refresh_interval more).
        let same = |x: &CtEntry, y: &CtEntry| {
            CtEntry {
                timeout: 0,
                ..x.clone()
            } == CtEntry {
                timeout: 0,
                ..y.clone()
            }
        };
        let differ = a
            .iter()
            .filter(|(k, v)| b.get(k).is_some_and(|w| !same(w, v)))
            .count();
        assert!(
            missing == 0 && extra == 0 && differ == 0,
            "{what}: fw1 {} states, fw2 {}: {missing} missing on fw2, {extra} extra, {differ} differ; \
             fw1 status {:?}, fw2 status {:?}",
            a.len(),
            b.len(),
            self.nodes[0].engine.peer_reports(self.now),
            self.nodes[1].engine.peer_reports(self.now),
        );
    }
}

#[test]
fn sync_sim_live_replication_repairs_loss_and_reordering() {
    for seed in 0..4u64 {
        let mut net = Net::new(seed, 0.10);
        net.start(0);
        net.start(1);
        net.run(Duration::from_secs(2));
        assert!(
            !net.nodes[0].demoted && !net.nodes[1].demoted,
            "seed {seed}: empty bulks end the demotion"
        );
        for i in 0..5_000 {
            net.local_insert(0, entry(i));
            if i % 500 == 0 {
                net.run(Duration::from_millis(5));
            }
        }
        for i in (0..5_000).step_by(7) {
            net.local_delete(0, entry(i).key());
        }
        net.run(Duration::from_secs(5));
        net.assert_same_tables(&format!("seed {seed}, 10% loss, after repair"));
        // Installed entries carry every field (NAT reply tuple, mark, TCP).
        let k = entry(1).key();
        let (a, b) = (&net.nodes[0].kernel[&k], &net.nodes[1].kernel[&k]);
        assert_eq!(
            (&b.reply, b.mark, b.status, b.tcp),
            (&a.reply, a.mark, a.status, a.tcp)
        );
        assert_eq!(
            b.timeout,
            a.timeout + 20,
            "a copy outlives the original by refresh_interval"
        );
        assert!(
            net.nodes[0].engine.stats.retransmits() > 0,
            "seed {seed}: loss was repaired by retransmission"
        );
    }
}

#[test]
fn sync_sim_bulk_fills_a_restarted_node_and_ends_its_demotion() {
    let mut net = Net::new(7, 0.05);
    for i in 0..20_000 {
        let e = entry(i);
        net.nodes[0].kernel.insert(e.key(), e);
    }
    net.start(0);
    net.run(Duration::from_millis(50));
    // fw2 starts later: it asks fw1 for the table and stays demoted until it has it.
    net.start(1);
    assert!(net.nodes[1].demoted);
    net.run(Duration::from_secs(4));
    assert!(!net.nodes[1].demoted, "bulk end lifts the demotion");
    net.assert_same_tables("bulk with 5% loss");
}

/// Three configured nodes, one of them dead: a restarted node takes the
/// live peer's table and is undemoted within about `peer_timeout`, not after
/// the whole `bulk_timeout` (30 s) waiting for the dead one. Checked failing
/// without the rule (still demoted at 3 s).
#[test]
fn sync_sim_a_dead_third_peer_does_not_hold_the_demotion() {
    let mut net = Net::new(11, 0.0);
    let dead: Ipv4Addr = "10.99.0.3".parse().unwrap();
    net.nodes[1].engine = Engine::new(
        Params::new("fw2", KEY.to_vec(), vec![A, dead], 2_000),
        net.now,
        Stats::default(),
    );
    for i in 0..100 {
        let e = entry(i);
        net.nodes[0].kernel.insert(e.key(), e);
    }
    net.start(0);
    net.run(Duration::from_millis(50));
    net.start(1);
    assert!(net.nodes[1].demoted);
    net.run(Duration::from_secs(1));
    assert!(
        net.nodes[1].demoted,
        "the silent peer gets peer_timeout to be heard"
    );
    net.run(Duration::from_secs(2));
    assert!(
        !net.nodes[1].demoted,
        "undemoted once the live peer's bulk is in and the dead one stayed silent"
    );
    net.assert_same_tables("bulk from the live peer");
}

#[test]
fn sync_sim_their_expiry_is_not_sent_back_but_their_destroy_is_applied() {
    let mut net = Net::new(3, 0.0);
    net.start(0);
    net.start(1);
    net.run(Duration::from_millis(200));
    net.local_insert(0, entry(1));
    net.local_insert(0, entry(2));
    net.run(Duration::from_millis(200));
    assert_eq!(net.keys(1).len(), 2);
    // fw2's copy of entry 1 times out there: it must not delete fw1's live one.
    net.local_delete(1, entry(1).key());
    net.run(Duration::from_millis(200));
    assert!(net.nodes[0].kernel.contains_key(&entry(1).key()));
    // fw1's destroy reaches fw2.
    net.local_delete(0, entry(2).key());
    net.run(Duration::from_millis(200));
    assert!(!net.nodes[1].kernel.contains_key(&entry(2).key()));
}

#[test]
fn sync_sim_forged_and_replayed_frames_change_nothing() {
    let mut net = Net::new(5, 0.0);
    net.start(0);
    net.start(1);
    net.run(Duration::from_millis(200));
    net.local_insert(0, entry(1));
    net.run(Duration::from_millis(100));
    net.local_delete(0, entry(1).key());
    net.run(Duration::from_millis(100));
    assert!(net.keys(1).is_empty());
    // Replay everything fw1 ever sent to fw2: the insert must not come back.
    let frames: Vec<_> = net
        .captured
        .iter()
        .filter(|(to, _, _)| *to == 1)
        .cloned()
        .collect();
    for (to, from, bytes) in &frames {
        net.deliver(*to, *from, bytes);
    }
    net.run(Duration::from_millis(100));
    assert!(net.keys(1).is_empty(), "replayed frames installed nothing");
    // A forged frame (a valid one with one bit flipped, or signed with another key).
    let mut forged = frames.last().unwrap().2.clone();
    forged[30] ^= 1;
    net.deliver(1, A, &forged);
    let before = net.keys(1);
    let mut e = entry(9);
    e.mark = 1;
    let other_key = b"another-key-another-key-another!";
    let mut b = carp_user::wire::sync::FrameBuilder::new(1480, 1, u64::MAX, 1);
    assert!(b.push_insert(&e));
    let wrong = b.finish(other_key);
    net.deliver(1, A, &wrong);
    assert_eq!(
        net.keys(1),
        before,
        "nothing installed from unauthenticated frames"
    );
}

#[test]
fn sync_sim_max_states_caps_what_a_peer_can_install() {
    let mut net = Net::new(11, 0.0);
    let mut p = Params::new("fw2", KEY.to_vec(), vec![A], 2_000);
    p.max_states = 100;
    net.nodes[1].engine = Engine::new(p, net.now, Stats::default());
    net.start(0);
    net.start(1);
    net.run(Duration::from_millis(200));
    for i in 0..300 {
        net.local_insert(0, entry(i));
    }
    net.run(Duration::from_secs(1));
    assert_eq!(net.keys(1).len(), 100, "capped at max_states");
    assert_eq!(
        net.nodes[1].engine.stats.state_count("install", "capped"),
        200
    );
}

#[test]
fn sync_sim_lost_events_are_repaired_by_a_resync() {
    let mut net = Net::new(13, 0.0);
    net.start(0);
    net.start(1);
    net.run(Duration::from_millis(200));
    for i in 0..1000 {
        net.local_insert(0, entry(i));
    }
    net.run(Duration::from_millis(300));
    net.assert_same_tables("before the overrun");
    // The kernel changes while its events are lost (ENOBUFS): 100 new
    // states, 100 gone, and no event for any of them.
    for i in 1000..1100 {
        let e = entry(i);
        net.nodes[0].kernel.insert(e.key(), e);
    }
    for i in 0..100 {
        net.nodes[0].kernel.remove(&entry(i).key());
    }
    let mut out = Vec::new();
    net.nodes[0].engine.overrun(&mut out);
    net.run_outputs(0, out);
    net.run(Duration::from_millis(500));
    net.assert_same_tables("after the resync (new states sent, vanished ones swept)");
    assert_eq!(net.nodes[0].engine.stats.overruns(), 1);
}

#[test]
fn sync_sim_a_new_master_keeps_idle_sessions_when_the_old_one_returns_empty() {
    let mut net = Net::new(17, 0.0);
    net.start(0);
    net.start(1);
    net.run(Duration::from_millis(200));
    for i in 0..100 {
        net.local_insert(0, entry(i));
    }
    net.run(Duration::from_millis(300));
    net.assert_same_tables("replicated");
    // fw1 dies; fw2 becomes MASTER and forwards (idle flows: no events).
    net.nodes[1].engine.set_master(true);
    // fw1 comes back rebooted: empty table, a new run of its engine.
    let now = net.now;
    net.nodes[0].kernel.clear();
    net.nodes[0].engine = Engine::new(
        Params::new("fw1", KEY.to_vec(), vec![B], 5_000),
        now,
        Stats::default(),
    );
    net.start(0);
    net.run(Duration::from_secs(2));
    assert_eq!(
        net.nodes[1].kernel.len(),
        100,
        "the new master deleted live states"
    );
    assert_eq!(
        net.nodes[0].kernel.len(),
        100,
        "the returning node got the table back"
    );
}

#[test]
fn sync_sim_a_master_losing_its_link_releases_the_vhid_at_once() {
    use carp_user::wire::sync::{HelloVhid, VhidState};
    let vhid = |state| HelloVhid {
        vhid: 1,
        state,
        advbase: 1,
        advskew: 0,
    };
    let mut net = Net::new(19, 0.0);
    net.start(0);
    net.start(1);
    net.nodes[0].engine.set_vhids(vec![vhid(VhidState::Master)]);
    net.run(Duration::from_millis(1200));
    assert!(net.nodes[1].released.is_empty());
    // fw1's LAN goes down: INIT. fw2 hears it in the next millisecond, not
    // at the next periodic hello.
    net.nodes[0].engine.set_vhids(vec![vhid(VhidState::Init)]);
    net.run(Duration::from_millis(5));
    assert_eq!(net.nodes[1].released, vec![1]);
    // A BACKUP step (bow-out, better master) is not a release.
    net.nodes[0].engine.set_vhids(vec![vhid(VhidState::Master)]);
    net.run(Duration::from_millis(5));
    net.nodes[0].engine.set_vhids(vec![vhid(VhidState::Backup)]);
    net.run(Duration::from_millis(5));
    assert_eq!(net.nodes[1].released, vec![1]);
}

/// What the runtime leaves its install event groups on: a live peer's bulk
/// coming in. It ends with the bulk, and with the peer going silent
/// mid-bulk (else a dead peer would keep the node deaf to its own new flows).
#[test]
fn sync_sim_bulk_incoming_only_while_a_live_peer_sends_its_table() {
    for silent_mid_bulk in [false, true] {
        let mut net = Net::new(11, 0.0);
        for i in 0..20_000 {
            let e = entry(i);
            net.nodes[0].kernel.insert(e.key(), e);
        }
        net.start(0);
        net.run(Duration::from_millis(50));
        assert!(!net.nodes[1].engine.bulk_incoming(net.now));
        net.cut_mid_bulk = silent_mid_bulk;
        net.start(1);
        for _ in 0..50 {
            if net.bulk_seen[1] {
                break;
            }
            net.run(Duration::from_millis(1));
        }
        assert!(net.bulk_seen[1], "no bulk came in within 50 ms");
        if silent_mid_bulk {
            assert!(net.nodes[1].engine.bulk_incoming(net.now), "cut mid-bulk");
            net.run(Duration::from_secs(3));
            assert!(
                !net.nodes[1].engine.bulk_incoming(net.now),
                "a silent peer's unfinished bulk still counts"
            );
        } else {
            net.run(Duration::from_secs(4));
            assert!(!net.nodes[1].demoted, "bulk end lifts the demotion");
            assert!(
                !net.nodes[1].engine.bulk_incoming(net.now),
                "the bulk ended"
            );
        }
    }
}
