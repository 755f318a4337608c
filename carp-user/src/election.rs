//! The per-VHID CARP election (docs/protocol.md §2): a sans-IO state machine.
//!
//! [`Vhid::handle`] takes the current time and one [`Event`] and returns the
//! [`Action`]s the shell must apply, in order; [`Vhid::poll_at`] says when the
//! shell must next call `handle(now, Event::Timer)`. There is no clock, socket or
//! task in here, so every rule is tested with injected time (tests below and
//! `tests/election_sim.rs`).
//!
//! The rules follow the BSD kernels (`sys/netinet/ip_carp.c`: `carp_input_c`,
//! `carp_master_down_locked`, `carp_setrun`, `carp_send_ad_locked`,
//! `carp_demote_adj` in FreeBSD; `carp_proto_input_c` in OpenBSD), with these
//! deliberate differences, each noted where it is implemented:
//!
//! - Demotion enters every timer, not only the sent advskew. FreeBSD sends
//!   `DEMOTE_ADVSKEW(sc)` and compares with it, but arms its callouts with the raw
//!   `sc_advskew`; here the interval that is advertised is the interval that is
//!   kept, and a demoted backup waits longer before it takes over.
//! - A bow-out (advbase 255, advskew 255) always counts as "master gone", even
//!   when our own master-down interval (3 × advbase, advbase ≥ 86) is longer than
//!   the 255.996 s it announces.
//! - The shell sends each bow-out three times; a BACKUP ignores copies that
//!   arrive within one advertisement interval of the bow-out that made it MASTER
//!   (with three or more nodes, it may have stepped back for a better taker in
//!   between, and must not take over again).
//! - A MASTER that hears a bow-out advertises at once (VRRP does this for a
//!   priority-0 advert, RFC 5798 §6.4.3), so a node that took over on a late copy
//!   of the same bow-out steps back within milliseconds, not one interval later.
//! - Optional tie-break jitter ([`Vhid::with_tie_break_seed`]): after stepping back
//!   for an *equal* interval, wait a random part of one interval longer before
//!   taking over, so two equal nodes whose timers collide do not collide again.
//!   Without a seed the timing is exactly the BSDs', where such a pair converges
//!   only by chance of timer jitter.
//! - A leaving master keeps forwarding after its bow-out until it hears the new
//!   master (make-before-break) or 3 × advbase passes.
//! - Every MASTER entry written to the data path carries a dead-man deadline
//!   (docs/design.md, "Dead-man switch"): last advertisement sent + 3 × advbase.
//! - Fast mode ([`Base::Millis`], `advbase_ms`; docs/protocol.md §2): the base is
//!   10..=999 ms and advbase 0 goes on the wire. Every rule above holds with
//!   "advbase" read as the base and "advskew/256 s" as `advbase_ms ×
//!   advskew/256`; an advert in the other mode (advbase 0 heard by a
//!   whole-second VHID, a whole-second advbase heard in fast mode) moves
//!   nothing. The bow-out stays 255/255 in both modes.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use thiserror::Error;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Highest advskew a demoted node sends (FreeBSD `CARP_MAXSKEW`, used by its
/// `DEMOTE_ADVSKEW`). The cap also applies with no demotion, as in FreeBSD: a node
/// configured with advskew 250 advertises 240, so it ties with any demoted node
/// (`carp check` warns about advskew above 240).
pub const MAX_EFFECTIVE_ADVSKEW: u8 = 240;
/// advbase of a bow-out advertisement (OpenBSD `sc_bow_out`).
pub const BOW_OUT_ADVBASE: u8 = 255;
/// advskew of a bow-out advertisement (OpenBSD `sc_bow_out`).
pub const BOW_OUT_ADVSKEW: u8 = 255;
/// Demotion a node adds while one of its CARP interfaces is down (FreeBSD
/// `net.inet.carp.ifdown_demotion_factor`, default 240). The shell owns the
/// node-wide counter and sends [`Event::SetDemotion`] to every VHID.
pub const LINK_DOWN_DEMOTION: u32 = 240;

/// Nanoseconds of CLOCK_MONOTONIC (the clock `bpf_ktime_get_ns` reads), so
/// deadlines can be written into the XDP map unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub const fn from_nanos(ns: u64) -> Self {
        Time(ns)
    }
    /// Saturates at `u64::MAX` ns (about 584 years).
    pub const fn from_millis(ms: u64) -> Self {
        Time(ms.saturating_mul(1_000_000))
    }
    /// Saturates at `u64::MAX` ns (about 584 years).
    pub const fn from_secs(s: u64) -> Self {
        Time(s.saturating_mul(NANOS_PER_SEC))
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// `self + d`, or `None` past `u64::MAX` ns.
    pub fn checked_add(self, d: Duration) -> Option<Time> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(d).map(Time)
    }
    /// `self + d`, clamped to `u64::MAX` ns (a deadline that far away never fires).
    pub fn saturating_add(self, d: Duration) -> Time {
        self.checked_add(d).unwrap_or(Time(u64::MAX))
    }
    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Saturating, like [`Time::saturating_add`]: protocol code never panics.
impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

/// Saturating, like [`Time::saturating_duration_since`].
impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / NANOS_PER_SEC,
            self.0 % NANOS_PER_SEC
        )
    }
}

/// Whole-second timing: `base_multiple × advbase + advskew/256` seconds
/// (carp(4); FreeBSD `carp_setrun`: `tv_sec = advbase; tv_usec = advskew *
/// 1000000 / 256`). Exact in nanoseconds (1 s / 256 = 3 906 250 ns), so two
/// nodes compare intervals without rounding.
fn timing_nanos(base_multiple: u64, advbase: u8, advskew: u8) -> u64 {
    base_multiple * u64::from(advbase) * NANOS_PER_SEC + u64::from(advskew) * NANOS_PER_SEC / 256
}

/// Advertisement interval `advbase + advskew/256` s (whole-second mode). Lower
/// is a better master. advbase 0 gives `advskew/256` s, as OpenBSD and ucarp
/// read it; fast mode is [`Base::Millis`].
pub fn interval(advbase: u8, advskew: u8) -> Duration {
    Base::Seconds(advbase).interval(advskew)
}

/// Master-down interval `3 × advbase + advskew/256` s (whole-second mode): how
/// long a BACKUP waits without hearing the master.
pub fn master_down_interval(advbase: u8, advskew: u8) -> Duration {
    Base::Seconds(advbase).master_down_interval(advskew)
}

/// Dead-man lifetime `3 × advbase` s (whole-second mode); see
/// [`Base::dead_man_interval`].
pub fn dead_man_interval(advbase: u8) -> Duration {
    Base::Seconds(advbase).dead_man_interval()
}

/// Smallest `advbase_ms` of fast mode (docs/protocol.md §2, "Fast mode").
pub const ADVBASE_MS_MIN: u16 = 10;
/// Largest `advbase_ms` of fast mode: a whole second is `advbase = 1`.
pub const ADVBASE_MS_MAX: u16 = 999;

/// The base advertisement interval of a VHID: whole seconds as in CARP, or this
/// project's fast mode (docs/protocol.md §2, "Fast mode (advbase 0)").
///
/// This is the one place where CARP timing becomes nanoseconds. The skew is
/// always `advskew/256` of one *unit*: one second in whole-second mode (as the
/// BSDs: `advbase + advskew/256` s, whatever advbase is), one `advbase_ms` in fast
/// mode (`advbase_ms × (1 + advskew/256)`), so a fast VHID keeps the same ratio
/// of skew to base as a BSD VHID with advbase 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Base {
    /// advbase in seconds, 1..=255; what goes on the wire.
    Seconds(u8),
    /// Fast mode: `advbase_ms`, [`ADVBASE_MS_MIN`]..=[`ADVBASE_MS_MAX`]. The wire
    /// says advbase 0; every node of the VHID must use the same value, since a
    /// receiver reads the sender's interval with its own `advbase_ms`.
    Millis(u16),
}

impl Base {
    /// The advbase byte of our adverts: the seconds, or 0 in fast mode.
    pub const fn wire(self) -> u8 {
        match self {
            Base::Seconds(s) => s,
            Base::Millis(_) => 0,
        }
    }

    /// Fast mode (`advbase_ms`).
    pub const fn is_fast(self) -> bool {
        matches!(self, Base::Millis(_))
    }

    /// `advbase_ms` in fast mode, `None` in whole-second mode.
    pub const fn millis(self) -> Option<u16> {
        match self {
            Base::Seconds(_) => None,
            Base::Millis(ms) => Some(ms),
        }
    }

    /// The base interval (no skew) as a [`Duration`].
    pub fn duration(self) -> Duration {
        Duration::from_nanos(self.base_nanos())
    }

    /// A base that cannot make a timer spin: advbase 0 becomes 1 s, and
    /// `advbase_ms` is clamped to [`ADVBASE_MS_MIN`]..=[`ADVBASE_MS_MAX`]
    /// ([`Params::validate`] reports both; the config layer refuses them).
    pub fn normalized(self) -> Base {
        match self {
            Base::Seconds(s) => Base::Seconds(s.max(1)),
            Base::Millis(ms) => Base::Millis(ms.clamp(ADVBASE_MS_MIN, ADVBASE_MS_MAX)),
        }
    }

    fn base_nanos(self) -> u64 {
        match self {
            Base::Seconds(s) => u64::from(s) * NANOS_PER_SEC,
            Base::Millis(ms) => u64::from(ms) * 1_000_000,
        }
    }

    /// `base_multiple × base + skew`, where the skew is `advskew/256` of one
    /// second (whole seconds, BSD-exact) or of one `advbase_ms` (fast mode,
    /// exact to the nanosecond when `advbase_ms × advskew` is a multiple of 4,
    /// else truncated; both nodes truncate alike, as they must use the same
    /// `advbase_ms`).
    fn timing_nanos(self, base_multiple: u64, advskew: u8) -> u64 {
        match self {
            Base::Seconds(s) => timing_nanos(base_multiple, s, advskew),
            Base::Millis(ms) => {
                let unit = u64::from(ms) * 1_000_000;
                base_multiple * unit + unit * u64::from(advskew) / 256
            }
        }
    }

    /// Advertisement interval: `advbase + advskew/256` s, or `advbase_ms × (1 +
    /// advskew/256)` in fast mode. Lower is a better master.
    pub fn interval(self, advskew: u8) -> Duration {
        Duration::from_nanos(self.timing_nanos(1, advskew))
    }

    /// Master-down interval: `3 × advbase + advskew/256` s, or `3 × advbase_ms +
    /// advbase_ms × advskew/256` in fast mode (the skew counted once, as in the
    /// BSDs and VRRPv3's skew time): how long a BACKUP waits without hearing the
    /// master. advbase_ms 10, advskew 100: 33.906 25 ms.
    pub fn master_down_interval(self, advskew: u8) -> Duration {
        Duration::from_nanos(self.timing_nanos(3, advskew))
    }

    /// Dead-man lifetime of a MASTER data-path entry after each advertisement
    /// sent: 3 × the base, no skew (docs/design.md, "Dead-man switch"). Always
    /// longer than the advertisement interval (the skew is less than one unit,
    /// and the unit is at most the base), so a healthy master never lapses.
    pub fn dead_man_interval(self) -> Duration {
        Duration::from_nanos(self.timing_nanos(3, 0))
    }
}

impl From<u8> for Base {
    /// Whole seconds.
    fn from(advbase: u8) -> Base {
        Base::Seconds(advbase)
    }
}

impl fmt::Display for Base {
    /// `advbase 1` or `advbase_ms 50`, as the config names them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base::Seconds(s) => write!(f, "advbase {s}"),
            Base::Millis(ms) => write!(f, "advbase_ms {ms}"),
        }
    }
}

/// Configuration of one VHID, as far as the election needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// 1..=255.
    pub vhid: u8,
    /// Whole seconds (1..=255) or fast mode (`advbase_ms`, 10..=999).
    pub advbase: Base,
    /// 0..=254 (255 is reserved for bow-out). Values above 240 are sent as 240.
    pub advskew: u8,
    /// Take over from a master that advertises a longer interval (FreeBSD
    /// `net.inet.carp.preempt`, OpenBSD `CARPCTL_PREEMPT`).
    pub preempt: bool,
}

/// Why [`Params`] are unusable ([`Params::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ParamsError {
    #[error("vhid 0 is invalid: VHIDs are 1..=255")]
    VhidZero,
    #[error("vhid {vhid}: advbase 0 is fast mode on the wire; use 1..=255 seconds, or advbase_ms")]
    AdvbaseZero { vhid: u8 },
    #[error("vhid {vhid}: advbase_ms {ms} is out of range {ADVBASE_MS_MIN}..={ADVBASE_MS_MAX}")]
    AdvbaseMsRange { vhid: u8, ms: u16 },
    #[error("vhid {vhid}: advskew 255 is reserved for bow-out advertisements; use 0..=254")]
    AdvskewBowOut { vhid: u8 },
}

impl Params {
    /// Ranges the BSDs enforce (FreeBSD `carp_ioctl_set`: advskew < 255, advbase
    /// 1..=255), and fast mode's `advbase_ms` range.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let vhid = self.vhid;
        if vhid == 0 {
            return Err(ParamsError::VhidZero);
        }
        match self.advbase {
            Base::Seconds(0) => return Err(ParamsError::AdvbaseZero { vhid }),
            Base::Millis(ms) if !(ADVBASE_MS_MIN..=ADVBASE_MS_MAX).contains(&ms) => {
                return Err(ParamsError::AdvbaseMsRange { vhid, ms })
            }
            _ => {}
        }
        if self.advskew == BOW_OUT_ADVSKEW {
            return Err(ParamsError::AdvskewBowOut { vhid });
        }
        Ok(())
    }
}

/// CARP state of a VHID (carp(4)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Init,
    Backup,
    Master,
}

impl State {
    /// Metric label / status text; part of the interface.
    pub const fn label(self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A peer's advertisement that the shell has already authenticated (HMAC, counter,
/// not our own), with the advbase and advskew bytes as they came on the wire.
///
/// advbase 0 is fast mode (docs/protocol.md §2, "Fast mode (advbase 0)"): its
/// interval is read with the receiver's own `advbase_ms`, so it means something
/// only to a VHID in fast mode; a whole-second advbase means nothing to one.
/// [`PeerAdvert::interval`] says `None` for both mismatches and the election
/// ignores such adverts (the shell drops and counts them before, as
/// `fast_mode_mismatch`). A bow-out (255/255) is understood in both modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAdvert {
    pub advbase: u8,
    pub advskew: u8,
}

impl PeerAdvert {
    /// The advertisement a leaving master sends (OpenBSD `sc_bow_out`).
    pub const BOW_OUT: PeerAdvert = PeerAdvert {
        advbase: BOW_OUT_ADVBASE,
        advskew: BOW_OUT_ADVSKEW,
    };

    /// The interval the sender claims, read with the receiver's base `own`;
    /// `None` if the advert is not in the receiver's mode (advbase 0 heard
    /// without fast mode, a whole-second advbase heard in fast mode). A bow-out
    /// claims 255 + 255/256 s in either mode.
    pub fn interval(&self, own: Base) -> Option<Duration> {
        if self.is_bow_out() {
            return Some(interval(BOW_OUT_ADVBASE, BOW_OUT_ADVSKEW));
        }
        match (self.advbase, own) {
            (0, Base::Millis(_)) => Some(own.interval(self.advskew)),
            (0, Base::Seconds(_)) | (_, Base::Millis(_)) => None,
            (s, Base::Seconds(_)) => Some(interval(s, self.advskew)),
        }
    }
    pub fn is_bow_out(&self) -> bool {
        *self == Self::BOW_OUT
    }
}

/// Input to [`Vhid::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// INIT → BACKUP (arms the master-down timer). If the link is down, stays INIT
    /// until [`Event::LinkUp`].
    Start,
    /// An authenticated advertisement from another node for this VHID.
    Advert(PeerAdvert),
    /// This VHID's interface lost carrier / oper state. The shell raises the node
    /// demotion separately (by [`LINK_DOWN_DEMOTION`]) and sends `SetDemotion` to
    /// every VHID of the node.
    LinkDown,
    /// This VHID's interface is up again.
    LinkUp,
    /// The node-wide demotion counter changed (sent to every VHID).
    SetDemotion(u32),
    /// Orderly stop: bow out if MASTER, then report [`Action::Stopped`].
    Shutdown,
    /// Operator: `carp disable` (OPNsense's "Temporarily Disable CARP",
    /// FreeBSD's `net.inet.carp.allow=0`). A MASTER bows out and keeps
    /// forwarding until it hears the new master or 3 × advbase passes, as for
    /// [`Event::Shutdown`], then goes INIT instead of stopping; a BACKUP goes
    /// INIT at once. INIT is silent (no adverts, no answers, adverts ignored)
    /// and stays so, whatever the link does, until [`Event::Enable`].
    Disable,
    /// Operator: `carp enable`. INIT → BACKUP (if started and the link is up),
    /// so the node listens for a master-down interval before it may take over.
    Enable,
    /// A deadline passed: the shell calls this when `now >= poll_at()`. Calling it
    /// early is harmless.
    Timer,
}

/// Output of [`Vhid::handle`], to be applied by the shell in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the XDP map entry for this VHID. `master_expires` is the dead-man
    /// deadline (Some only for Master): last advert sent + 3 × the base (no skew).
    SetDataplane {
        state: State,
        master_expires: Option<Time>,
    },
    /// Send one advertisement with these values on the wire (advbase =
    /// [`Base::wire`], so 0 in fast mode; advskew = effective advskew).
    SendAdvert { advbase: u8, advskew: u8 },
    /// Send the bow-out advert (advbase 255, advskew 255); the shell sends it 3
    /// times a few ms apart so that one lost packet does not cost 3 × advbase.
    SendBowOut,
    /// Gratuitous ARP / unsolicited NA for every VIP, from the virtual MAC.
    Announce,
    /// A state transition happened (the shell logs and counts it). Exactly one per
    /// transition, emitted only by `Vhid::transition`, before the actions that
    /// carry the transition out.
    Transition { from: State, to: State, why: Why },
    /// After [`Event::Shutdown`]: the node may now remove its VIPs and detach.
    /// Nothing is emitted after this.
    Stopped,
}

/// Reason of a [`Action::Transition`]; also a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    /// INIT → BACKUP on [`Event::Start`].
    Started,
    /// BACKUP → MASTER: the master-down timer fired.
    MasterDown,
    /// BACKUP → MASTER: preempt is on and the master advertises a longer interval.
    Preempt,
    /// BACKUP → MASTER: the master advertised an interval longer than our
    /// master-down interval (a bow-out, FreeBSD's "master will time out").
    PeerBowedOut,
    /// MASTER → BACKUP: another master advertises an interval ≤ ours.
    HigherPriorityMaster,
    /// → INIT: the interface went down.
    LinkDown,
    /// INIT → BACKUP: the interface came back.
    LinkUp,
    /// → INIT (not master) or MASTER → BACKUP (a leaving master that is done).
    Shutdown,
    /// → INIT: the operator disabled CARP ([`Event::Disable`]).
    Disabled,
    /// INIT → BACKUP: the operator enabled CARP again ([`Event::Enable`]).
    Enabled,
}

impl Why {
    /// Metric label / log text; part of the interface.
    pub const fn label(self) -> &'static str {
        match self {
            Why::Started => "started",
            Why::MasterDown => "master_down",
            Why::Preempt => "preempt",
            Why::PeerBowedOut => "peer_bowed_out",
            Why::HigherPriorityMaster => "higher_priority_master",
            Why::LinkDown => "link_down",
            Why::LinkUp => "link_up",
            Why::Shutdown => "shutdown",
            Why::Disabled => "disabled",
            Why::Enabled => "enabled",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The election state of one VHID on this node.
#[derive(Clone, Debug)]
pub struct Vhid {
    params: Params,
    state: State,
    /// Node-wide demotion, as last told by [`Event::SetDemotion`].
    demotion: u32,
    /// [`Event::Start`] was seen.
    started: bool,
    /// Interface carrier; assumed up until [`Event::LinkDown`].
    link_up: bool,
    /// [`Action::Stopped`] was emitted: every later event is ignored.
    stopped: bool,
    /// BACKUP: when the master-down timer was last (re)armed. The deadline is
    /// derived from it, so a demotion change applies to a running timer at once.
    master_down_armed_at: Option<Time>,
    /// MASTER (not leaving): when the next advertisement is due.
    next_advert_at: Option<Time>,
    /// MASTER after a bow-out: when to give up waiting for the new master.
    leaving_until: Option<Time>,
    /// What a leaving master does when its wait ends (meaningful only while
    /// `leaving_until` is set).
    after_leaving: AfterLeaving,
    /// [`Event::Disable`] was seen and no [`Event::Enable`] since: stay INIT.
    disabled: bool,
    /// Dead-man deadline of the last MASTER entry written (for status).
    master_expires: Option<Time>,
    /// When a bow-out last made us MASTER: the shell sends each bow-out three
    /// times, and a copy arriving after we stepped back for a better new master
    /// must not make us take over again.
    bow_out_taken_at: Option<Time>,
    /// splitmix64 state for tie-break jitter; `None` keeps BSD timing.
    tie_break: Option<u64>,
    /// BACKUP: extra wait after an equal-interval step-back (tie-break jitter).
    master_down_extra: Duration,
}

impl Vhid {
    /// A VHID in INIT. `params` should pass [`Params::validate`]; if advbase is 0
    /// it is taken as 1 here (and `advbase_ms` clamped to its range) so that no
    /// timer can spin (the check belongs to the config layer, which reports it).
    pub fn new(params: Params) -> Self {
        let params = Params {
            advbase: params.advbase.normalized(),
            ..params
        };
        Self {
            params,
            state: State::Init,
            demotion: 0,
            started: false,
            link_up: true,
            stopped: false,
            master_down_armed_at: None,
            next_advert_at: None,
            leaving_until: None,
            after_leaving: AfterLeaving::Stop,
            disabled: false,
            master_expires: None,
            bow_out_taken_at: None,
            tie_break: None,
            master_down_extra: Duration::ZERO,
        }
    }

    /// Break ties between equal intervals faster than the BSDs: after a MASTER
    /// steps back because it heard an interval *equal* to its own, its master-down
    /// timer waits an extra pseudo-random time in `[0, interval)` drawn from this
    /// seed (give each node and VHID a different one, e.g. from the OS RNG).
    /// Without it, two equal nodes whose timers fire within one network delay of
    /// each other keep colliding until timer jitter separates them.
    pub fn with_tie_break_seed(mut self, seed: u64) -> Self {
        self.tie_break = Some(seed);
        self
    }

    /// Like [`Vhid::new`], but refuses invalid parameters.
    pub fn try_new(params: Params) -> Result<Self, ParamsError> {
        params.validate()?;
        Ok(Self::new(params))
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The current state. A leaving master (bow-out sent, still forwarding) reports
    /// MASTER until it emits [`Action::Stopped`].
    pub fn state(&self) -> State {
        self.state
    }

    /// `min(advskew + demotion, 240)`, as FreeBSD's `DEMOTE_ADVSKEW`: the advskew
    /// that is sent and that every interval of this node uses. The cap applies
    /// even without demotion (advskew 250 is sent as 240).
    pub fn effective_advskew(&self) -> u8 {
        let skew = u32::from(self.params.advskew).saturating_add(self.demotion);
        // The min() makes the conversion infallible; the fallback is never taken.
        u8::try_from(skew.min(u32::from(MAX_EFFECTIVE_ADVSKEW))).unwrap_or(MAX_EFFECTIVE_ADVSKEW)
    }

    /// Our advertisement interval, with demotion.
    pub fn interval(&self) -> Duration {
        self.params.advbase.interval(self.effective_advskew())
    }

    /// Our master-down interval, with demotion.
    pub fn master_down_interval(&self) -> Duration {
        self.params
            .advbase
            .master_down_interval(self.effective_advskew())
    }

    pub fn demotion(&self) -> u32 {
        self.demotion
    }

    /// A MASTER that has sent its bow-out and waits for the new master.
    pub fn is_leaving(&self) -> bool {
        self.leaving_until.is_some()
    }

    /// The operator disabled CARP ([`Event::Disable`]) and has not enabled
    /// it again.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// [`Action::Stopped`] has been emitted.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Dead-man deadline of the MASTER entry last written, if MASTER.
    pub fn master_expires(&self) -> Option<Time> {
        self.master_expires
    }

    /// The next deadline: master-down timer (BACKUP), advertisement timer
    /// (MASTER), or end of the bow-out wait (leaving MASTER). `None` in INIT and
    /// after [`Action::Stopped`]. After `handle(now, Timer)` it is always later
    /// than `now`; after `SetDemotion` lowered the master-down interval it may be
    /// `<= now`, meaning "call Timer now".
    pub fn poll_at(&self) -> Option<Time> {
        if self.stopped {
            return None;
        }
        match self.state {
            State::Init => None,
            State::Backup => self.master_down_armed_at.map(|t| {
                t.saturating_add(self.master_down_interval())
                    .saturating_add(self.master_down_extra)
            }),
            State::Master => self.leaving_until.or(self.next_advert_at),
        }
    }

    /// Swaps in new parameters at time `now` (a config reload) and returns the
    /// actions to apply, in order. The VHID number is the machine's identity and is
    /// kept; the base is normalized as in [`Vhid::new`]. Unchanged parameters
    /// are a no-op. A switch between whole seconds and fast mode is a base
    /// change like any other (the peers must switch within a master-down
    /// interval too, or they count our adverts as `fast_mode_mismatch`).
    ///
    /// - MASTER: stays MASTER and advertises the new values at once, with a
    ///   dead-man deadline from the new base. FreeBSD does the same on a
    ///   demotion change (`carp_demote_adj` → `carp_send_ad_all`); a peer that is
    ///   now better (and preempts) takes over on this advert instead of one
    ///   interval later, and one that is now worse steps back at once.
    /// - BACKUP: the master-down timer is re-armed from `now` with the new
    ///   interval (as if the master had just been heard: a reload is no evidence
    ///   that it is gone). A better BACKUP with preempt takes over on the next
    ///   advert it hears.
    /// - Leaving MASTER: keeps its bow-out wait; INIT, stopped: nothing to do.
    pub fn reconfigure(&mut self, now: Time, params: Params) -> Vec<Action> {
        let mut out = Vec::new();
        let params = Params {
            vhid: self.params.vhid,
            advbase: params.advbase.normalized(),
            ..params
        };
        if params == self.params {
            return out;
        }
        self.params = params;
        if self.stopped {
            return out;
        }
        match self.state {
            State::Init => {}
            State::Backup => {
                self.master_down_armed_at = Some(now);
                self.master_down_extra = Duration::ZERO;
            }
            State::Master if self.is_leaving() => {}
            State::Master => self.advertise(now, &mut out),
        }
        out
    }

    /// Feed one event at time `now`; returns the actions to apply, in order.
    /// Events that make no sense in the current state are ignored (no action).
    pub fn handle(&mut self, now: Time, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match event {
            Event::Start => self.on_start(now, &mut out),
            Event::Advert(peer) => self.on_advert(now, peer, &mut out),
            Event::LinkDown => self.on_link_down(&mut out),
            Event::LinkUp => self.on_link_up(now, &mut out),
            Event::SetDemotion(d) => self.on_set_demotion(now, d, &mut out),
            Event::Shutdown => self.on_shutdown(now, &mut out),
            Event::Disable => self.on_disable(now, &mut out),
            Event::Enable => self.on_enable(now, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
        }
        out
    }

    fn on_start(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.started {
            return;
        }
        self.started = true;
        // Never straight to MASTER (FreeBSD `carp_setrun`: INIT → BACKUP): hear the
        // segment for a master-down interval first. A disabled VHID stays INIT.
        if self.link_up && !self.disabled {
            self.enter_backup(now, Why::Started, out);
        }
    }

    fn on_advert(&mut self, now: Time, peer: PeerAdvert, out: &mut Vec<Action>) {
        if !self.started || !self.link_up {
            return;
        }
        let Some(theirs) = peer.interval(self.params.advbase) else {
            // Fast mode on one side only (docs/protocol.md §2, "Fast mode"):
            // neither a sign of life nor a reason to take over or step back.
            return;
        };
        match self.state {
            // FreeBSD `carp_input_c`: `case INIT: break;`.
            State::Init => {}
            State::Backup => {
                // FreeBSD compares the peer with `3 × advbase` (no skew); docs/protocol.md §2
                // uses our master-down interval (with skew), and a bow-out always
                // counts, so a VHID with advbase ≥ 86 (3 × advbase > 255.996 s) still
                // takes over at once. Checked before preempt so the reason names the
                // bow-out.
                if peer.is_bow_out() && self.is_bow_out_copy(now) {
                    // A later copy of a bow-out we already acted on (we took over,
                    // then stepped back for a better node that did too). Neither
                    // a takeover nor a sign of life.
                } else if peer.is_bow_out() || theirs > self.master_down_interval() {
                    if peer.is_bow_out() {
                        self.bow_out_taken_at = Some(now);
                    }
                    self.enter_master(now, Why::PeerBowedOut, out);
                } else if self.params.preempt && theirs > self.interval() {
                    // FreeBSD: "preempting a slower master".
                    self.enter_master(now, Why::Preempt, out);
                } else {
                    // FreeBSD `carp_setrun(sc, af)` from BACKUP: re-arm the timer.
                    self.master_down_armed_at = Some(now);
                    self.master_down_extra = Duration::ZERO;
                }
            }
            State::Master if self.is_leaving() => {
                // Make-before-break: the first advertisement of another master (a
                // backup that took over sends one at once) ends the wait. Another
                // node's bow-out is not a new master; keep waiting.
                if !peer.is_bow_out() {
                    self.finish_leaving(now, out);
                }
            }
            State::Master => {
                // FreeBSD `carp_input_c`: a master hearing an interval <= ours
                // ("more frequent advertisement received") steps back. Equal
                // intervals make both step back; the master-down timers then pick
                // one (they do not fire at the same instant in practice).
                if theirs <= self.interval() {
                    let tie = theirs == self.interval();
                    self.enter_backup(now, Why::HigherPriorityMaster, out);
                    if tie {
                        self.master_down_extra = self.tie_jitter();
                    }
                } else if peer.is_bow_out() {
                    // RFC 5798 §6.4.3 (VRRP master receiving priority 0): assert
                    // now. Another node may have taken over on a copy of the same
                    // bow-out that reached it after our first advert; our
                    // advert makes it step back at once.
                    self.advertise(now, out);
                }
            }
        }
    }

    fn on_link_down(&mut self, out: &mut Vec<Action>) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        if !self.started {
            return;
        }
        // FreeBSD `carp_linkstate` → `carp_sc_state`: timers stopped, INIT. No
        // bow-out: nothing can be sent on a dead link.
        let was_leaving = self.is_leaving();
        if self.state != State::Init {
            self.enter_init(Why::LinkDown, out);
        }
        if was_leaving && self.after_leaving == AfterLeaving::Stop {
            // The shutdown cannot finish any better on a dead link.
            self.stop(out);
        }
    }

    fn on_link_up(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.link_up {
            return;
        }
        self.link_up = true;
        if self.started && self.state == State::Init && !self.disabled {
            self.enter_backup(now, Why::LinkUp, out);
        }
    }

    fn on_set_demotion(&mut self, now: Time, demotion: u32, out: &mut Vec<Action>) {
        let before = self.effective_advskew();
        self.demotion = demotion;
        // FreeBSD `carp_demote_adj` queues `carp_send_ad_all`: every MASTER
        // advertises its new advskew at once, so a preempting peer takes over now
        // rather than one interval later. A BACKUP's running master-down timer
        // follows by itself (its deadline is derived from the current skew).
        if self.state == State::Master && !self.is_leaving() && self.effective_advskew() != before {
            self.advertise(now, out);
        }
    }

    fn on_shutdown(&mut self, now: Time, out: &mut Vec<Action>) {
        match self.state {
            // A bow-out for `Disable` is under way: it now ends in a stop.
            State::Master if self.is_leaving() => self.after_leaving = AfterLeaving::Stop,
            State::Master => self.bow_out(now, AfterLeaving::Stop, out),
            State::Init | State::Backup => {
                if self.state == State::Init {
                    out.push(Action::SetDataplane {
                        state: State::Init,
                        master_expires: None,
                    });
                } else {
                    self.enter_init(Why::Shutdown, out);
                }
                self.stop(out);
            }
        }
    }

    fn on_disable(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.disabled {
            return;
        }
        self.disabled = true;
        if !self.started {
            return;
        }
        match self.state {
            // A shutdown's bow-out goes on to its stop; an `Enable` that
            // arrived during a disable's bow-out is undone.
            State::Master if self.is_leaving() => {
                if self.after_leaving == AfterLeaving::Backup {
                    self.after_leaving = AfterLeaving::Init;
                }
            }
            // Make-before-break, as for a shutdown: the peer takes over on the
            // bow-out, and we answer until we hear it.
            State::Master => self.bow_out(now, AfterLeaving::Init, out),
            State::Backup => self.enter_init(Why::Disabled, out),
            State::Init => {}
        }
    }

    fn on_enable(&mut self, now: Time, out: &mut Vec<Action>) {
        if !self.disabled {
            return;
        }
        self.disabled = false;
        match self.state {
            // Still in the disable's bow-out wait: finish it, then listen
            // (a shutdown's wait goes on to its stop).
            State::Master if self.is_leaving() && self.after_leaving == AfterLeaving::Init => {
                self.after_leaving = AfterLeaving::Backup;
            }
            State::Init if self.started && self.link_up => {
                self.enter_backup(now, Why::Enabled, out)
            }
            _ => {}
        }
    }

    /// Bow out (OpenBSD), then keep forwarding without advertising until the
    /// new master is heard or 3 × advbase passes, then do `then`. The
    /// data-path entry is left as it is: its dead-man deadline (last advert +
    /// 3 × advbase) is never later than this wait.
    fn bow_out(&mut self, now: Time, then: AfterLeaving, out: &mut Vec<Action>) {
        out.push(Action::SendBowOut);
        self.next_advert_at = None;
        self.leaving_until = Some(now.saturating_add(self.params.advbase.dead_man_interval()));
        self.after_leaving = then;
    }

    fn on_timer(&mut self, now: Time, out: &mut Vec<Action>) {
        let due = |t: Option<Time>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Init => {}
            State::Backup => {
                if due(self.poll_at()) {
                    // FreeBSD `carp_master_down`.
                    self.enter_master(now, Why::MasterDown, out);
                }
            }
            State::Master => {
                if self.is_leaving() {
                    if due(self.leaving_until) {
                        self.finish_leaving(now, out);
                    }
                } else if due(self.next_advert_at) {
                    // FreeBSD `carp_send_ad` callout: rescheduled from now, so a late
                    // timer does not cause a burst.
                    self.advertise(now, out);
                }
            }
        }
    }

    /// Whether a bow-out arriving now is a copy of one that already made us
    /// MASTER: within one advertisement interval of it (the copies are a few ms
    /// apart). Two real bow-outs that close together cost at most a master-down
    /// interval.
    fn is_bow_out_copy(&self, now: Time) -> bool {
        self.bow_out_taken_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval())
    }

    /// The only place that changes `state` and the only emitter of
    /// [`Action::Transition`], so the shell logs and counts every transition once.
    fn transition(&mut self, to: State, why: Why, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        out.push(Action::Transition { from, to, why });
    }

    fn enter_init(&mut self, why: Why, out: &mut Vec<Action>) {
        self.transition(State::Init, why, out);
        self.clear_timers();
        out.push(Action::SetDataplane {
            state: State::Init,
            master_expires: None,
        });
    }

    fn enter_backup(&mut self, now: Time, why: Why, out: &mut Vec<Action>) {
        self.transition(State::Backup, why, out);
        self.clear_timers();
        self.master_down_armed_at = Some(now);
        out.push(Action::SetDataplane {
            state: State::Backup,
            master_expires: None,
        });
    }

    /// FreeBSD `carp_master_down_locked`, in the order of docs/protocol.md §2,
    /// "Takeover order":
    /// data path first, then the advertisement (which moves the switch's
    /// virtual-MAC entry), then gratuitous ARP / NA.
    fn enter_master(&mut self, now: Time, why: Why, out: &mut Vec<Action>) {
        self.transition(State::Master, why, out);
        self.clear_timers();
        self.advertise(now, out);
        out.push(Action::Announce);
    }

    /// One MASTER advertisement: move the dead-man deadline forward, then send,
    /// then schedule the next one (FreeBSD `carp_send_ad_locked`).
    fn advertise(&mut self, now: Time, out: &mut Vec<Action>) {
        let expires = now.saturating_add(self.params.advbase.dead_man_interval());
        self.master_expires = Some(expires);
        out.push(Action::SetDataplane {
            state: State::Master,
            master_expires: Some(expires),
        });
        out.push(Action::SendAdvert {
            advbase: self.params.advbase.wire(),
            advskew: self.effective_advskew(),
        });
        self.next_advert_at = Some(now.saturating_add(self.interval()));
    }

    /// End of a leaving master's wait: stop answering, then report Stopped
    /// (shutdown), stay INIT (disabled) or listen as BACKUP (enabled again
    /// during the wait).
    fn finish_leaving(&mut self, now: Time, out: &mut Vec<Action>) {
        match self.after_leaving {
            AfterLeaving::Stop => {
                self.transition(State::Backup, Why::Shutdown, out);
                self.clear_timers();
                out.push(Action::SetDataplane {
                    state: State::Backup,
                    master_expires: None,
                });
                self.stop(out);
            }
            AfterLeaving::Init => self.enter_init(Why::Disabled, out),
            AfterLeaving::Backup => self.enter_backup(now, Why::Enabled, out),
        }
    }

    fn stop(&mut self, out: &mut Vec<Action>) {
        self.clear_timers();
        self.stopped = true;
        out.push(Action::Stopped);
    }

    /// Next tie-break delay in `[0, interval)`, or zero without a seed.
    fn tie_jitter(&mut self) -> Duration {
        let Some(state) = self.tie_break.as_mut() else {
            return Duration::ZERO;
        };
        // splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to
        // decorrelate two nodes.
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let span = u64::try_from(self.interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_nanos(z % span)
    }

    fn clear_timers(&mut self) {
        self.master_down_extra = Duration::ZERO;
        self.master_down_armed_at = None;
        self.next_advert_at = None;
        self.leaving_until = None;
        self.master_expires = None;
    }
}

/// What a leaving master does once it has heard the new master (or waited
/// 3 × advbase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterLeaving {
    /// [`Event::Shutdown`]: BACKUP entry, then [`Action::Stopped`].
    Stop,
    /// [`Event::Disable`]: INIT, silent until [`Event::Enable`].
    Init,
    /// Enabled again during a disable's wait: BACKUP, listening.
    Backup,
}

#[cfg(test)]
mod operator_tests;
#[cfg(test)]
mod tests;
