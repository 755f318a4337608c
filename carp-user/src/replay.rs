//! Advertisement counter tracking: the partial replay protection of docs/protocol.md §1.
//!
//! # Why only partial
//!
//! The CARP counter was meant for replay protection, but the BSDs never check
//! it (FreeBSD: `/* XXX Replay protection goes here */`), and their senders do
//! not give a receiver enough to check it fully:
//!
//! * FreeBSD and ucarp put a **fresh random counter in every advertisement**
//!   until they receive one, then **adopt the received counter** and add 1 per
//!   advertisement (the ucarp capture in the tests shows both). Adoption means
//!   a sender's counter can legitimately jump *backwards* to just after a
//!   counter some other node sent.
//! * OpenBSD sends the **same random cookie in every advertisement**
//!   (`vhe_replay_cookie`, set once) and only uses it to spot its own adverts
//!   looping back.
//! * A restarted node starts a new random sequence.
//!
//! So the only sender whose counters we can hold to "strictly increasing" is
//! one that we have just watched advertising in +1 steps (this project's nodes,
//! and BSD/ucarp nodes after adoption). For such a sender an advert whose counter
//! is not ahead of the last one is a [`Verdict::Replay`] and is rejected. Every
//! other pattern is accepted and counted under its own verdict. An attacker can
//! still replay a captured advert once the sender has been silent for
//! `forget_after_ns` (the sender is forgotten, the replay is [`Verdict::First`]),
//! or replay one from a different random sequence (a [`Verdict::Jump`]); the
//! digest still stops forged adverts, but not replayed genuine ones.
//!
//! Consequences for the rest of the controller: a node that restarts within the
//! forget interval and draws a lower random start is ignored until that
//! interval has passed (harmless: a restarted node starts in BACKUP), and a
//! repeated bow-out must carry a new counter (+1) to be accepted, though the
//! first copy suffices anyway.
//!
//! # Across senders
//!
//! The IP source of an advert is not authenticated, so per-sender state alone
//! lets an attacker replay one captured advert from a new address each time
//! (each one a [`Verdict::First`]; with advskew rewritten, which the digest
//! does not cover, that moves elections). So the tracker also keeps, per
//! VHID and whatever the source:
//!
//! * **our own counters**: we advertise in +1 steps, so the run we sent is
//!   one interval `[first, last]` (plus the send times of the last
//!   [`OWN_RECENT`] for adverts that arrived before we sent the same value,
//!   which a BSD peer adopting our counter can do). A counter we sent before
//!   the advert arrived is [`Verdict::Own`]: our advert looped back or replayed.
//! * **every accepted counter** for one forget interval (refreshed while it is
//!   replayed, at most [`SEEN_CAPACITY`]): heard again from another source, it
//!   is a [`Verdict::Replay`].
//! * **the run of every held sender** (`[held_from, last]`): a counter inside
//!   the run of a live +1 sender, from any other source, is a replay of one of
//!   its adverts, however old.
//!
//! Only authenticated adverts reach the tracker and only accepted ones are
//! stored, so a forger cannot fill these sets. Cost: a BSD node that resumes
//! (takes over again) with counters inside a run another node sent less than
//! one forget interval ago is refused until that interval has passed; nodes
//! of this project never adopt counters, so this needs a mixed group.
//!
//! # The two copies of one advert (IPv4 and IPv6)
//!
//! A VHID with IPv6 VIPs advertises over both families: each advert leaves
//! once to 224.0.0.18 and once to `ff02::12`, from two different source
//! addresses (the IPv4 one and the link-local). This project's nodes and
//! OpenBSD (whose cookie is constant anyway) give both copies one counter;
//! FreeBSD draws a new counter per copy (`carp_prepare_ad` runs once per
//! family), so its copies are just two +1 senders a counter apart, which
//! the rules above take as they are (each address its own [`Verdict::Gap`]
//! run). The sources of the two copies cannot be tied to one node (neither
//! is authenticated, and the Ethernet source is the VHID's virtual MAC for
//! every node), so the rule is about the counter alone: a counter accepted
//! from an address of the *other* family at most [`DUAL_COPY_WINDOW_NS`]
//! before is the second copy of that advert, a [`Verdict::Duplicate`]. It
//! is not acted on (the election must not see one advert twice: a bow-out
//! or takeover would be handled again) and it is no alarm (not a replay);
//! the tracker's state is left as it was. A replay of a captured advert
//! into the other family within the window is therefore ignored as a
//! duplicate rather than refused as a replay: the same outcome, nothing
//! reaches the election. Later, or from the same family, it is a
//! [`Verdict::Replay`] as before.
//!
//! # Model
//!
//! Sans-IO: one [`Tracker`] per VHID and interface, time passed in as
//! CLOCK_MONOTONIC nanoseconds. Memory is bounded ([`Tracker::with_capacity`]):
//! when full, forgotten senders go first, then the one heard from least recently.
use std::net::IpAddr;

/// Default bound on tracked senders per VHID. A segment normally has 2 or 3.
pub const DEFAULT_CAPACITY: usize = 32;

/// Largest forward step still counted as lost adverts of a +1 sender
/// ([`Verdict::Gap`]) rather than a new random value ([`Verdict::Jump`]). A
/// random 64-bit counter lands in this window with probability 2^-48.
pub const MAX_GAP: u64 = 1 << 16;

/// A sender that adopted a counter sends "that counter + 1" at its next advert;
/// it may hear a few more in between. Window for recognising that.
pub const ADOPTION_WINDOW: u64 = 16;

/// Our last counters whose send times are kept (an advert that arrived before
/// we sent the same value is not ours).
pub const OWN_RECENT: usize = 16;

/// How long after one copy of an advert its copy over the other family
/// (IPv4 / IPv6, same counter) is taken as a [`Verdict::Duplicate`]. The
/// copies leave back to back (one send call after the other); arrival
/// times are the kernel's, so a busy controller does not stretch them. Far
/// below any advert interval in whole seconds; in fast mode (10 ms and up)
/// a node's next advert carries the next counter anyway.
pub const DUAL_COPY_WINDOW_NS: u64 = 50_000_000;

/// Bound on the accepted counters remembered per VHID (an honest segment adds
/// one per sender and advbase; the forget interval is a few seconds).
pub const SEEN_CAPACITY: usize = 1024;

/// What the tracker made of one advertisement's counter. Only
/// [`Verdict::Replay`] is a rejection; every verdict is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Sender not known (or forgotten after silence): accepted.
    First,
    /// Exactly last + 1: accepted; the sender is now held to increasing counters.
    Sequential,
    /// Ahead by 2..=[`MAX_GAP`]: adverts were lost; accepted, still held.
    Gap,
    /// Any other move of a sender not held to +1 steps (random counters,
    /// a new random start): accepted, no longer held.
    Jump,
    /// Same counter again from a sender not held to +1 steps: OpenBSD's constant
    /// cookie. Accepted.
    Repeat,
    /// A +1 sender moved back to just after a counter another node (or we)
    /// sent recently: FreeBSD/ucarp adoption. Accepted, still held.
    Adopted,
    /// Counter not ahead of the last one from a sender that was advertising in
    /// +1 steps, or a counter already accepted from another source (within the
    /// forget interval, or inside a live +1 sender's run): rejected. The
    /// sender's state is left as it was.
    Replay,
    /// A counter we advertised before this advert arrived: our own advert
    /// looped back, or replayed from another address. Rejected.
    Own,
    /// The same counter as an advert accepted from an address of the other
    /// family (IPv4 / IPv6) within [`DUAL_COPY_WINDOW_NS`]: the second copy
    /// of one advert (module docs). Not acted on, not an alarm.
    Duplicate,
}

impl Verdict {
    /// Whether the advertisement may be acted on.
    pub const fn is_accepted(self) -> bool {
        !matches!(self, Verdict::Replay | Verdict::Own | Verdict::Duplicate)
    }

    /// Label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::First => "first",
            Verdict::Sequential => "sequential",
            Verdict::Gap => "gap",
            Verdict::Jump => "jump",
            Verdict::Repeat => "repeat",
            Verdict::Adopted => "adopted",
            Verdict::Replay => "replay",
            Verdict::Own => "own",
            Verdict::Duplicate => "duplicate",
        }
    }

    /// Whether, after this verdict, the sender is held to increasing counters.
    const fn holds_sender(self) -> bool {
        matches!(self, Verdict::Sequential | Verdict::Gap | Verdict::Adopted)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sender {
    addr: IpAddr,
    last_counter: u64,
    last_seen_ns: u64,
    /// Last accepted verdict was Sequential/Gap/Adopted.
    sequential: bool,
    /// First counter of the current +1 run (meaningful while `sequential`).
    held_from: u64,
}

/// The run of counters we advertised.
#[derive(Debug, Clone)]
struct OwnRun {
    first: u64,
    last: u64,
    /// (counter, send time) of the last [`OWN_RECENT`] adverts, oldest first.
    recent: std::collections::VecDeque<(u64, u64)>,
}

impl OwnRun {
    /// Whether `counter` is one we sent at or before `at_ns`.
    fn sent_before(&self, counter: u64, at_ns: u64) -> bool {
        if counter.wrapping_sub(self.first) > self.last.wrapping_sub(self.first) {
            return false;
        }
        match self.recent.iter().find(|(c, _)| *c == counter) {
            Some(&(_, sent)) => sent <= at_ns,
            // Older than the recent ones: sent long before anything arriving now.
            None => true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    addr: IpAddr,
    last_ns: u64,
}

/// Per-VHID counter state of every sender heard recently.
#[derive(Debug, Clone)]
pub struct Tracker {
    senders: Vec<Sender>,
    capacity: usize,
    /// Our own last advertised counter and when, for recognising adoption of it.
    own: Option<(u64, u64)>,
    /// Every counter we advertised in the current +1 run.
    own_run: Option<OwnRun>,
    /// Accepted counters (any sender) → who sent it and when it was last heard.
    seen: std::collections::HashMap<u64, Seen>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A tracker holding at most [`DEFAULT_CAPACITY`] senders.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A tracker holding at most `capacity` senders (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            senders: Vec::new(),
            capacity: capacity.max(1),
            own: None,
            own_run: None,
            seen: std::collections::HashMap::new(),
        }
    }

    /// Number of senders currently tracked (forgotten ones may still count
    /// until a `check` purges them).
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Note a counter we advertised, so that a BSD peer adopting it
    /// (sending it + 1 later) is recognised as [`Verdict::Adopted`].
    pub fn record_sent(&mut self, now_ns: u64, counter: u64) {
        self.own = Some((counter, now_ns));
        match &mut self.own_run {
            Some(run) if counter == run.last.wrapping_add(1) => {
                run.last = counter;
                if run.recent.len() == OWN_RECENT {
                    run.recent.pop_front();
                }
                run.recent.push_back((counter, now_ns));
            }
            // A new sequence (first advert, or the counter was set anew).
            _ => {
                self.own_run = Some(OwnRun {
                    first: counter,
                    last: counter,
                    recent: [(counter, now_ns)].into_iter().collect(),
                })
            }
        }
    }

    /// Whether `counter` was already accepted from a source other than
    /// `sender` within `forget_after_ns` (refreshing it: a counter that keeps
    /// being replayed stays known), or lies inside the run of another live
    /// sender held to +1 steps.
    fn seen_elsewhere(
        &mut self,
        now_ns: u64,
        sender: IpAddr,
        counter: u64,
        forget_after_ns: u64,
    ) -> bool {
        if let Some(s) = self.seen.get_mut(&counter) {
            if s.addr != sender && now_ns.saturating_sub(s.last_ns) <= forget_after_ns {
                s.last_ns = now_ns;
                return true;
            }
        }
        self.senders.iter().any(|s| {
            s.addr != sender
                && s.sequential
                && now_ns.saturating_sub(s.last_seen_ns) <= forget_after_ns
                && counter.wrapping_sub(s.held_from) <= s.last_counter.wrapping_sub(s.held_from)
        })
    }

    fn remember(&mut self, now_ns: u64, sender: IpAddr, counter: u64, forget_after_ns: u64) {
        if self.seen.len() >= SEEN_CAPACITY && !self.seen.contains_key(&counter) {
            self.seen
                .retain(|_, s| now_ns.saturating_sub(s.last_ns) <= forget_after_ns);
            if self.seen.len() >= SEEN_CAPACITY {
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, s)| s.last_ns)
                    .map(|(c, _)| *c)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(
            counter,
            Seen {
                addr: sender,
                last_ns: now_ns,
            },
        );
    }

    /// Classify `counter` from `sender` at `now_ns` and update the state.
    /// `forget_after_ns` is the receiver's master-down interval: a sender
    /// silent for longer starts over as [`Verdict::First`].
    pub fn check(
        &mut self,
        now_ns: u64,
        sender: IpAddr,
        counter: u64,
        forget_after_ns: u64,
    ) -> Verdict {
        if self
            .own_run
            .as_ref()
            .is_some_and(|r| r.sent_before(counter, now_ns))
        {
            return Verdict::Own;
        }
        if self.seen.get(&counter).is_some_and(|s| {
            s.addr.is_ipv4() != sender.is_ipv4()
                && now_ns.saturating_sub(s.last_ns) <= DUAL_COPY_WINDOW_NS
        }) {
            return Verdict::Duplicate;
        }
        if self.seen_elsewhere(now_ns, sender, counter, forget_after_ns) {
            return Verdict::Replay;
        }
        let verdict = self.check_sender(now_ns, sender, counter, forget_after_ns);
        if verdict.is_accepted() {
            self.remember(now_ns, sender, counter, forget_after_ns);
        }
        verdict
    }

    /// The per-sender part of [`Tracker::check`].
    fn check_sender(
        &mut self,
        now_ns: u64,
        sender: IpAddr,
        counter: u64,
        forget_after_ns: u64,
    ) -> Verdict {
        let fresh = |seen: u64| now_ns.saturating_sub(seen) <= forget_after_ns;
        let Some(idx) = self
            .senders
            .iter()
            .position(|s| s.addr == sender && fresh(s.last_seen_ns))
        else {
            self.insert(now_ns, sender, counter, forget_after_ns);
            return Verdict::First;
        };

        let state = self.senders[idx];
        // Wrapping distance: counters are modulo 2^64 and +1 wraps.
        let ahead = counter.wrapping_sub(state.last_counter);
        let verdict = if ahead == 1 {
            Verdict::Sequential
        } else if (2..=MAX_GAP).contains(&ahead) {
            // Also from a sender not yet held: a small forward step is a +1
            // sequence with a lost advert (a random value lands here with
            // probability 2^-48), so hold it from now on.
            Verdict::Gap
        } else if !state.sequential {
            if ahead == 0 {
                Verdict::Repeat
            } else {
                Verdict::Jump
            }
        } else if ahead > u64::MAX / 2 || ahead == 0 {
            // Not ahead (up to half the counter space behind).
            if self.is_adoption(now_ns, idx, state.last_seen_ns, counter, forget_after_ns) {
                Verdict::Adopted
            } else {
                Verdict::Replay
            }
        } else {
            // Far ahead of a +1 sender: a new random sequence (restart, or a
            // BSD node that lost its peer's counter). Cannot be told from a
            // replay of an old sequence; accepted, and no longer held.
            Verdict::Jump
        };

        if verdict.is_accepted() {
            let s = &mut self.senders[idx];
            s.held_from = match verdict {
                // A run that goes on keeps its start; one that starts here
                // begins at the previous counter (Sequential/Gap) or at this
                // one (Adopted, and every verdict that does not hold).
                Verdict::Sequential | Verdict::Gap if s.sequential => s.held_from,
                Verdict::Sequential | Verdict::Gap => state.last_counter,
                _ => counter,
            };
            s.last_counter = counter;
            s.last_seen_ns = now_ns;
            s.sequential = verdict.holds_sender();
        }
        verdict
    }

    /// Whether `counter` is just after (within [`ADOPTION_WINDOW`]) the last
    /// counter of another live sender or of our own recent advert, heard no
    /// earlier than the sender's previous accepted advert (`since_ns`): a node
    /// can only adopt what it heard after it last advertised, and this keeps one
    /// adoption from excusing replays of the adverts that followed it.
    fn is_adoption(
        &self,
        now_ns: u64,
        idx: usize,
        since_ns: u64,
        counter: u64,
        forget_after_ns: u64,
    ) -> bool {
        let usable = |seen: u64| seen >= since_ns && now_ns.saturating_sub(seen) <= forget_after_ns;
        let near = |base: u64| (1..=ADOPTION_WINDOW).contains(&counter.wrapping_sub(base));
        let from_peer = self
            .senders
            .iter()
            .enumerate()
            .any(|(i, s)| i != idx && usable(s.last_seen_ns) && near(s.last_counter));
        let from_us = self.own.is_some_and(|(c, at)| usable(at) && near(c));
        from_peer || from_us
    }

    fn insert(&mut self, now_ns: u64, sender: IpAddr, counter: u64, forget_after_ns: u64) {
        // Drop every forgotten entry (including a stale one for this sender).
        self.senders.retain(|s| {
            s.addr != sender && now_ns.saturating_sub(s.last_seen_ns) <= forget_after_ns
        });
        if self.senders.len() >= self.capacity {
            if let Some(oldest) = self
                .senders
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.last_seen_ns)
                .map(|(i, _)| i)
            {
                self.senders.swap_remove(oldest);
            }
        }
        self.senders.push(Sender {
            addr: sender,
            last_counter: counter,
            last_seen_ns: now_ns,
            sequential: false,
            held_from: counter,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use Verdict::*;

    const SEC: u64 = 1_000_000_000;
    /// Master-down interval of advbase 1: 3 s.
    const FORGET: u64 = 3 * SEC;
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12));

    /// Feed (time in s, sender, counter, expected verdict) rows to one tracker.
    fn run(rows: &[(u64, IpAddr, u64, Verdict)]) {
        let mut t = Tracker::new();
        for (i, &(at, who, counter, want)) in rows.iter().enumerate() {
            let got = t.check(at * SEC, who, counter, FORGET);
            assert_eq!(got, want, "row {i}: t={at}s {who} counter {counter:#x}");
        }
    }

    #[test]
    fn continuous_sender_then_replay_of_old_advert_is_rejected() {
        run(&[
            (0, A, 100, First),
            (1, A, 101, Sequential),
            (2, A, 102, Sequential),
            (3, A, 101, Replay), // an old advert replayed while A is live
            (3, A, 102, Replay), // the latest one again
            (4, A, 103, Sequential),
        ]);
    }

    #[test]
    fn replay_does_not_refresh_the_sender() {
        let mut t = Tracker::new();
        assert_eq!(t.check(0, A, 10, FORGET), First);
        assert_eq!(t.check(SEC, A, 11, FORGET), Sequential);
        // Replays keep arriving, the real sender is gone.
        assert_eq!(t.check(2 * SEC, A, 10, FORGET), Replay);
        assert_eq!(t.check(4 * SEC, A, 10, FORGET), Replay);
        // 3 s after the last *accepted* advert it is forgotten: partial protection.
        assert_eq!(t.check(4 * SEC + 1, A, 10, FORGET), First);
    }

    #[test]
    fn random_jumping_ucarp_sender_is_accepted() {
        // The first four counters of 10.77.0.11 in the ucarp capture.
        run(&[
            (0, A, 0xe66e_2703_9438_01cc, First),
            (1, A, 0x533f_259b_4db4_1ff4, Jump),
            (2, A, 0xf7b2_e994_40d5_50b5, Jump),
            (3, A, 0x03ea_c706_95e3_e9a6, Jump),
        ]);
    }

    #[test]
    fn openbsd_constant_cookie_is_accepted() {
        run(&[
            (0, A, 0x5555, First),
            (1, A, 0x5555, Repeat),
            (2, A, 0x5555, Repeat),
        ]);
    }

    #[test]
    fn same_counter_after_silence_is_accepted() {
        run(&[
            (0, A, 7, First),
            (1, A, 8, Sequential),
            (5, A, 8, First), // silent for 4 s > 3 s: forgotten
            (6, A, 9, Sequential),
        ]);
    }

    #[test]
    fn lost_adverts_are_a_gap_and_still_held() {
        run(&[
            (0, A, 1, First),
            (1, A, 2, Sequential),
            (2, A, 5, Gap),
            (3, A, 4, Replay),
            (3, A, 6, Sequential),
        ]);
    }

    #[test]
    fn far_jump_of_a_sequential_sender_is_accepted_and_releases_it() {
        run(&[
            (0, A, 1, First),
            (1, A, 2, Sequential),
            (2, A, 1 << 40, Jump),
            (3, A, 3, Jump), // no longer held: a random sender again
        ]);
    }

    #[test]
    fn counter_wraps_around() {
        run(&[
            (0, A, u64::MAX - 1, First),
            (1, A, u64::MAX, Sequential),
            (2, A, 0, Sequential),
            (3, A, u64::MAX, Replay),
        ]);
    }

    #[test]
    fn ucarp_takeover_in_capture_is_sequential() {
        // 10.77.0.12 adopted 10.77.0.11's last counter and adds 1 per advert.
        run(&[
            (0, A, 0x03ea_c706_95e3_e9a6, First),
            (5, B, 0x03ea_c706_95e3_e9a7, First),
            (6, B, 0x03ea_c706_95e3_e9a8, Sequential),
            (7, B, 0x03ea_c706_95e3_e9a9, Sequential),
        ]);
    }

    #[test]
    fn freebsd_adoption_of_a_peer_counter_is_not_a_replay() {
        // B advertises at 1000.., A (+1 mode at 5000..) hears B, adopts 1000, sends 1001.
        run(&[
            (0, A, 5000, First),
            (0, A, 5001, Sequential),
            (1, B, 1000, First),
            (1, A, 1001, Adopted),
            (2, A, 1002, Sequential),
            (2, A, 1001, Replay),
        ]);
    }

    #[test]
    fn adoption_of_our_own_counter_is_recognised() {
        let mut t = Tracker::new();
        assert_eq!(t.check(0, A, 5000, FORGET), First);
        assert_eq!(t.check(SEC, A, 5001, FORGET), Sequential);
        t.record_sent(SEC, 300);
        assert_eq!(t.check(2 * SEC, A, 301, FORGET), Adopted);
        // Our counter is stale after the forget interval: no longer an excuse.
        assert_eq!(t.check(3 * SEC, A, 302, FORGET), Sequential);
        t.record_sent(3 * SEC, 100);
        assert_eq!(t.check(7 * SEC + 1, A, 101, FORGET), First);
    }

    #[test]
    fn senders_are_independent() {
        run(&[
            (0, A, 10, First),
            (0, B, 5000, First),
            (1, A, 11, Sequential),
            (1, B, 5001, Sequential),
            (2, B, 5001, Replay),
            (2, A, 12, Sequential),
        ]);
    }

    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 66));
    const D: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 67));

    /// The attack of issue "Hold up under attack" §2: one captured advert of
    /// the master, re-sent from a new source address each time. Per-sender
    /// tracking alone (before the fix) made each copy a `First`.
    #[test]
    fn captured_advert_from_rotating_sources_is_a_replay() {
        run(&[
            (0, A, 100, First),
            (1, A, 101, Sequential),
            (2, A, 102, Sequential),
            // The latest advert and an older one, from addresses never heard.
            (2, C, 102, Replay),
            (2, D, 100, Replay),
            (3, A, 103, Sequential),
            // Still refused much later while A advertises (its run is known).
            (4, C, 101, Replay),
            (5, A, 104, Sequential),
            (6, D, 102, Replay),
            (7, A, 105, Sequential),
            (8, C, 100, Replay),
        ]);
    }

    #[test]
    fn random_counter_replayed_from_another_source_is_a_replay() {
        // ucarp before it hears anyone: random counters, never held.
        run(&[
            (0, A, 0xe66e_2703_9438_01cc, First),
            (0, C, 0xe66e_2703_9438_01cc, Replay),
            (1, A, 0x533f_259b_4db4_1ff4, Jump),
            // The same cookie again from its own sender: OpenBSD's constant cookie.
            (1, A, 0x533f_259b_4db4_1ff4, Repeat),
            // Kept known while it is being replayed, even past the forget interval.
            (2, D, 0x533f_259b_4db4_1ff4, Replay),
            (4, C, 0x533f_259b_4db4_1ff4, Replay),
            (6, D, 0x533f_259b_4db4_1ff4, Replay),
        ]);
    }

    #[test]
    fn our_own_counters_are_refused_from_any_source() {
        let mut t = Tracker::new();
        for (i, c) in (700..710u64).enumerate() {
            t.record_sent(i as u64 * SEC, c);
        }
        // Looped back or replayed, from anywhere, long after it was sent.
        assert_eq!(t.check(10 * SEC, A, 703, FORGET), Own);
        assert_eq!(t.check(10 * SEC, C, 700, FORGET), Own);
        assert_eq!(t.check(10 * SEC, D, 709, FORGET), Own);
        // Beyond what we sent: a peer's counter.
        assert_eq!(t.check(10 * SEC, A, 710, FORGET), First);
        // A BSD peer that adopted 710 sent 711 before we sent ours: not ours.
        t.record_sent(11 * SEC, 710);
        t.record_sent(12 * SEC, 711);
        assert_eq!(t.check(12 * SEC - 1, A, 711, FORGET), Sequential);
        assert_eq!(t.check(12 * SEC + 1, C, 711, FORGET), Own);
        // A new random start replaces the run.
        t.record_sent(13 * SEC, 5);
        assert_eq!(t.check(14 * SEC, D, 703, FORGET), First);
        assert_eq!(t.check(14 * SEC, D, 5, FORGET), Own);
    }

    #[test]
    fn seen_counters_are_bounded() {
        let mut t = Tracker::new();
        for i in 0..(3 * SEEN_CAPACITY as u64) {
            t.check(i, IpAddr::V4(Ipv4Addr::from(i as u32)), i << 20, FORGET);
        }
        assert!(t.seen.len() <= SEEN_CAPACITY);
    }

    #[test]
    fn memory_is_bounded_and_oldest_is_evicted() {
        let mut t = Tracker::with_capacity(4);
        for i in 0..4u64 {
            let ip = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16 + 1));
            assert_eq!(t.check(i, ip, i << 20, FORGET), First);
        }
        assert_eq!(t.len(), 4);
        // Refresh the oldest (::1) so ::2 becomes the oldest.
        let one = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(t.check(10, one, 1, FORGET), Sequential);
        assert_eq!(t.check(11, A, 7 << 40, FORGET), First);
        assert_eq!(t.len(), 4);
        let two = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2));
        // ::2 was evicted, so it starts over; ::1 was kept.
        assert_eq!(t.check(12, two, 1 << 20, FORGET), First);
        assert_eq!(t.check(13, one, 2, FORGET), Sequential);
        // Thousands of spoofed senders never grow it past the cap.
        for i in 0..10_000u32 {
            t.check(
                20,
                IpAddr::V4(Ipv4Addr::from(i)),
                (u64::from(i) + 9) << 40,
                FORGET,
            );
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn forgotten_senders_are_purged_on_insert() {
        let mut t = Tracker::new();
        t.check(0, A, 1, FORGET);
        t.check(10 * SEC, B, 1, FORGET);
        assert_eq!(t.len(), 1);
    }

    const A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11));
    const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x12));
    const MS: u64 = 1_000_000;

    /// Rows in ns: (time, sender, counter, expected verdict).
    fn run_ns(rows: &[(u64, IpAddr, u64, Verdict)]) {
        let mut t = Tracker::new();
        for (i, &(at, who, counter, want)) in rows.iter().enumerate() {
            let got = t.check(at, who, counter, FORGET);
            assert_eq!(got, want, "row {i}: t={at}ns {who} counter {counter}");
        }
    }

    /// This project's nodes (and OpenBSD): one counter on both copies. The
    /// second copy, whichever family comes first, is a duplicate; the
    /// sender's run goes on undisturbed.
    #[test]
    fn second_copy_over_the_other_family_is_a_duplicate() {
        run_ns(&[
            (0, A, 100, First),
            (MS / 10, A6, 100, Duplicate),
            (SEC, A, 101, Sequential),
            (SEC + MS, A6, 101, Duplicate),
            // The IPv6 copy first this time.
            (2 * SEC, A6, 102, First),
            (2 * SEC + MS, A, 102, Duplicate),
            (3 * SEC, A, 103, Gap),
            (3 * SEC + MS, A6, 103, Duplicate),
            // IPv4 lost: the IPv6 copy alone goes through.
            (4 * SEC, A6, 104, Gap),
            (5 * SEC, A, 105, Gap),
        ]);
        // OpenBSD's constant cookie over both families.
        run_ns(&[
            (0, A, 7, First),
            (MS, A6, 7, Duplicate),
            (SEC, A, 7, Repeat),
            (SEC + MS, A6, 7, Duplicate),
        ]);
    }

    /// The same counter from the other family after the window, or from
    /// another address of the same family, is a replay, not a copy.
    #[test]
    fn copies_outside_the_window_or_the_family_are_replays() {
        run_ns(&[
            (0, A, 100, First),
            (DUAL_COPY_WINDOW_NS + 1, A6, 100, Replay),
            (SEC, A, 101, Sequential),
            (SEC + MS, B, 101, Replay),
            (2 * SEC, A6, 102, First),
            (2 * SEC + MS, B6, 102, Replay),
        ]);
    }

    /// FreeBSD: a new counter per copy (IPv4 N, IPv6 N + 1, next advert
    /// N + 2, ...): two interleaved runs, every copy accepted.
    #[test]
    fn freebsd_counter_per_copy_is_accepted() {
        let mut rows = Vec::new();
        for k in 0..6u64 {
            let (v4, v6) = if k == 0 { (First, First) } else { (Gap, Gap) };
            rows.push((k * SEC, A, 1000 + 2 * k, v4));
            rows.push((k * SEC + MS, A6, 1001 + 2 * k, v6));
        }
        run_ns(&rows);
    }

    /// A looped-back copy of our own advert is ours in either family.
    #[test]
    fn own_counter_beats_the_duplicate_rule() {
        let mut t = Tracker::new();
        t.record_sent(0, 50);
        assert_eq!(t.check(MS, A, 50, FORGET), Own);
        assert_eq!(t.check(2 * MS, A6, 50, FORGET), Own);
    }

    #[test]
    fn labels_and_acceptance() {
        for v in [First, Sequential, Gap, Jump, Repeat, Adopted] {
            assert!(v.is_accepted(), "{}", v.as_str());
        }
        assert!(!Replay.is_accepted());
        assert!(!Own.is_accepted());
        assert!(!Duplicate.is_accepted());
        assert_eq!(Replay.as_str(), "replay");
    }
}
