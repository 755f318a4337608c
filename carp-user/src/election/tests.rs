//! Tier-1 tests of the election: every rule of docs/protocol.md §2 as a table of
//! `(time, event) → (actions, state, poll_at)` steps, plus the timing arithmetic
//! and a property test over random event sequences.

use super::*;
use proptest::prelude::*;

/// 1 s / 256 in nanoseconds: one step of advskew.
const SKEW_NS: u64 = 3_906_250;
const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn ns(n: u64) -> Time {
    Time(n)
}
fn ms(n: u64) -> Time {
    Time(n * MS)
}
/// Interval in ns, computed independently of the code under test.
fn iv(advbase: u64, advskew: u64) -> u64 {
    advbase * SEC + advskew * SKEW_NS
}
/// Master-down interval in ns, computed independently.
fn md(advbase: u64, advskew: u64) -> u64 {
    3 * advbase * SEC + advskew * SKEW_NS
}
/// Interval in ns of any base, computed independently: in fast mode the skew
/// is advskew/256 of one advbase_ms.
fn iv_of(b: Base, advskew: u64) -> u64 {
    match b {
        Base::Seconds(s) => iv(s.into(), advskew),
        Base::Millis(m) => u64::from(m) * MS + u64::from(m) * MS * advskew / 256,
    }
}
/// Master-down interval in ns of any base, computed independently.
fn md_of(b: Base, advskew: u64) -> u64 {
    match b {
        Base::Seconds(s) => md(s.into(), advskew),
        Base::Millis(m) => 3 * u64::from(m) * MS + u64::from(m) * MS * advskew / 256,
    }
}
/// Dead-man lifetime in ns of any base: 3 × the base.
fn dm_of(b: Base) -> u64 {
    match b {
        Base::Seconds(s) => 3 * u64::from(s) * SEC,
        Base::Millis(m) => 3 * u64::from(m) * MS,
    }
}

fn params(advbase: u8, advskew: u8, preempt: bool) -> Params {
    Params {
        vhid: 7,
        advbase: Base::Seconds(advbase),
        advskew,
        preempt,
    }
}
/// Fast mode: `advbase_ms`.
fn fast(advbase_ms: u16, advskew: u8, preempt: bool) -> Params {
    Params {
        vhid: 7,
        advbase: Base::Millis(advbase_ms),
        advskew,
        preempt,
    }
}

fn tr(from: State, to: State, why: Why) -> Action {
    Action::Transition { from, to, why }
}
fn dp_init() -> Action {
    Action::SetDataplane {
        state: State::Init,
        master_expires: None,
    }
}
fn dp_backup() -> Action {
    Action::SetDataplane {
        state: State::Backup,
        master_expires: None,
    }
}
fn dp_master(expires_ns: u64) -> Action {
    Action::SetDataplane {
        state: State::Master,
        master_expires: Some(Time(expires_ns)),
    }
}
fn adv(advbase: u8, advskew: u8) -> Action {
    Action::SendAdvert { advbase, advskew }
}
fn peer(advbase: u8, advskew: u8) -> Event {
    Event::Advert(PeerAdvert { advbase, advskew })
}

use Event::{LinkDown, LinkUp, SetDemotion, Shutdown, Start, Timer};
use State::{Backup, Init, Master};

struct Step {
    at: Time,
    event: Event,
    expect: Vec<Action>,
    state: State,
    poll_at: Option<Time>,
}

fn step(at: Time, event: Event, expect: Vec<Action>, state: State, poll_at: Option<Time>) -> Step {
    Step {
        at,
        event,
        expect,
        state,
        poll_at,
    }
}

struct Case {
    name: &'static str,
    params: Params,
    steps: Vec<Step>,
}

/// Start at t = 0 as BACKUP.
fn started(p: Params) -> Vec<Step> {
    let md0 = md_of(p.advbase, p.advskew.min(240).into());
    vec![step(
        ns(0),
        Start,
        vec![tr(Init, Backup, Why::Started), dp_backup()],
        Backup,
        Some(ns(md0)),
    )]
}

/// Start at t = 0, MASTER when the master-down timer fires. Returns the steps
/// and the time (ns) at which the node became MASTER.
fn mastered(p: Params) -> (Vec<Step>, u64) {
    let skew = p.advskew.min(240);
    let t = md_of(p.advbase, skew.into());
    let mut steps = started(p);
    steps.push(step(
        ns(t),
        Timer,
        vec![
            tr(Backup, Master, Why::MasterDown),
            dp_master(t + dm_of(p.advbase)),
            adv(p.advbase.wire(), skew),
            Action::Announce,
        ],
        Master,
        Some(ns(t + iv_of(p.advbase, skew.into()))),
    ));
    (steps, t)
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let mut v = Vhid::new(case.params);
        assert_eq!(v.state(), Init, "[{}] a new VHID is INIT", case.name);
        for (i, s) in case.steps.iter().enumerate() {
            let got = v.handle(s.at, s.event);
            assert_eq!(
                got, s.expect,
                "[{}] step {i}: {:?} at {}: actions",
                case.name, s.event, s.at
            );
            assert_eq!(
                v.state(),
                s.state,
                "[{}] step {i}: {:?} at {}: state",
                case.name,
                s.event,
                s.at
            );
            assert_eq!(
                v.poll_at(),
                s.poll_at,
                "[{}] step {i}: {:?} at {}: poll_at",
                case.name,
                s.event,
                s.at
            );
        }
    }
}

#[test]
fn start_and_master_down() {
    let p = params(1, 100, false);
    let t = md(1, 100);
    assert_eq!(t, 3_390_625_000, "master-down of advbase 1 advskew 100");
    let p5 = params(5, 0, false);
    run(vec![
        Case {
            name: "INIT → BACKUP on start, MASTER exactly at 3 s + 100/256 s, in order",
            params: p,
            steps: vec![
                step(
                    ns(0),
                    Start,
                    vec![tr(Init, Backup, Why::Started), dp_backup()],
                    Backup,
                    Some(ns(t)),
                ),
                step(ns(t - 1), Timer, vec![], Backup, Some(ns(t))),
                step(
                    ns(t),
                    Timer,
                    vec![
                        tr(Backup, Master, Why::MasterDown),
                        dp_master(t + 3 * SEC),
                        adv(1, 100),
                        Action::Announce,
                    ],
                    Master,
                    Some(ns(t + iv(1, 100))),
                ),
            ],
        },
        Case {
            name: "advbase 5: master-down 15 s, dead-man 15 s after each advert",
            params: p5,
            steps: vec![
                step(
                    ns(0),
                    Start,
                    vec![tr(Init, Backup, Why::Started), dp_backup()],
                    Backup,
                    Some(ns(15 * SEC)),
                ),
                step(
                    ns(15 * SEC),
                    Timer,
                    vec![
                        tr(Backup, Master, Why::MasterDown),
                        dp_master(30 * SEC),
                        adv(5, 0),
                        Action::Announce,
                    ],
                    Master,
                    Some(ns(20 * SEC)),
                ),
                step(
                    ns(20 * SEC),
                    Timer,
                    vec![dp_master(35 * SEC), adv(5, 0)],
                    Master,
                    Some(ns(25 * SEC)),
                ),
            ],
        },
        Case {
            name: "a late start counts from the start time",
            params: params(1, 0, false),
            steps: vec![
                step(
                    ms(1234),
                    Start,
                    vec![tr(Init, Backup, Why::Started), dp_backup()],
                    Backup,
                    Some(ms(4234)),
                ),
                step(ms(4233), Timer, vec![], Backup, Some(ms(4234))),
            ],
        },
    ]);
}

#[test]
fn master_advert_timer() {
    let p = params(1, 50, false);
    let (mut steps, t) = mastered(p);
    let i = iv(1, 50);
    let late = t + 2 * i + 7 * MS;
    steps.extend([
        step(ns(t + i - 1), Timer, vec![], Master, Some(ns(t + i))),
        step(
            ns(t + i),
            Timer,
            vec![dp_master(t + i + 3 * SEC), adv(1, 50)],
            Master,
            Some(ns(t + 2 * i)),
        ),
        step(
            ns(t + 2 * i),
            Timer,
            vec![dp_master(t + 2 * i + 3 * SEC), adv(1, 50)],
            Master,
            Some(ns(t + 3 * i)),
        ),
        // A late timer reschedules from now (no burst to catch up).
        step(
            ns(late + i),
            Timer,
            vec![dp_master(late + i + 3 * SEC), adv(1, 50)],
            Master,
            Some(ns(late + 2 * i)),
        ),
    ]);
    run(vec![Case {
        name: "adverts every 1 s + 50/256 s; dead-man = send time + 3 s",
        params: p,
        steps,
    }]);
}

#[test]
fn backup_receives_adverts() {
    let p = params(1, 100, false);
    let m = md(1, 100);
    let mut reset = started(p);
    reset.extend([
        step(
            ms(1000),
            peer(1, 0),
            vec![],
            Backup,
            Some(ns(1000 * MS + m)),
        ),
        step(
            ms(2000),
            peer(1, 100),
            vec![],
            Backup,
            Some(ns(2000 * MS + m)),
        ),
        step(
            ms(3000),
            peer(1, 200),
            vec![],
            Backup,
            Some(ns(3000 * MS + m)),
        ),
        // 3 s is not more than our master-down interval (3 s + 100/256 s).
        step(
            ms(4000),
            peer(3, 0),
            vec![],
            Backup,
            Some(ns(4000 * MS + m)),
        ),
        step(
            ns(4000 * MS + m),
            Timer,
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(4000 * MS + m + 3 * SEC),
                adv(1, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(4000 * MS + m + iv(1, 100))),
        ),
    ]);

    let pp = params(1, 100, true);
    let mut preempt = started(pp);
    preempt.extend([
        step(
            ms(1000),
            peer(1, 100),
            vec![],
            Backup,
            Some(ns(1000 * MS + m)),
        ),
        step(
            ms(1500),
            peer(1, 99),
            vec![],
            Backup,
            Some(ns(1500 * MS + m)),
        ),
        step(
            ms(2000),
            peer(1, 101),
            vec![
                tr(Backup, Master, Why::Preempt),
                dp_master(5000 * MS),
                adv(1, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(2000 * MS + iv(1, 100))),
        ),
    ]);

    let p0 = params(1, 0, false);
    let mut bow = started(p0);
    bow.push(step(
        ms(500),
        Event::Advert(PeerAdvert::BOW_OUT),
        vec![
            tr(Backup, Master, Why::PeerBowedOut),
            dp_master(3500 * MS),
            adv(1, 0),
            Action::Announce,
        ],
        Master,
        Some(ms(1500)),
    ));

    let mut beyond = started(p0);
    beyond.extend([
        step(ms(400), peer(3, 0), vec![], Backup, Some(ms(3400))),
        step(
            ms(500),
            peer(3, 1),
            vec![
                tr(Backup, Master, Why::PeerBowedOut),
                dp_master(3500 * MS),
                adv(1, 0),
                Action::Announce,
            ],
            Master,
            Some(ms(1500)),
        ),
    ]);

    let long = params(100, 0, false);
    let mut bow_long = started(long);
    bow_long.push(step(
        ms(1000),
        Event::Advert(PeerAdvert::BOW_OUT),
        vec![
            tr(Backup, Master, Why::PeerBowedOut),
            dp_master(301 * SEC),
            adv(100, 0),
            Action::Announce,
        ],
        Master,
        Some(ns(101 * SEC)),
    ));

    let pp0 = params(1, 0, true);
    let mut bow_preempt = started(pp0);
    bow_preempt.push(step(
        ms(500),
        Event::Advert(PeerAdvert::BOW_OUT),
        vec![
            tr(Backup, Master, Why::PeerBowedOut),
            dp_master(3500 * MS),
            adv(1, 0),
            Action::Announce,
        ],
        Master,
        Some(ms(1500)),
    ));

    let i100 = iv(1, 100);
    let mut copies = started(p);
    copies.extend([
        step(
            ms(500),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![
                tr(Backup, Master, Why::PeerBowedOut),
                dp_master(3500 * MS),
                adv(1, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(500 * MS + i100)),
        ),
        // A better node took over from the same bow-out: step back.
        step(
            ms(502),
            peer(1, 0),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(502 * MS + m)),
        ),
        // Later copies of that bow-out neither take over nor reset the timer.
        step(
            ms(504),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Backup,
            Some(ns(502 * MS + m)),
        ),
        step(
            ns(500 * MS + i100 - 1),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Backup,
            Some(ns(502 * MS + m)),
        ),
        // One interval later it is a new bow-out.
        step(
            ns(500 * MS + i100),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![
                tr(Backup, Master, Why::PeerBowedOut),
                dp_master(500 * MS + i100 + 3 * SEC),
                adv(1, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(500 * MS + 2 * i100)),
        ),
    ]);

    run(vec![
        Case {
            name: "copies of a bow-out already acted on are ignored",
            params: p,
            steps: copies,
        },
        Case {
            name: "preempt off: any advert ≤ master-down resets the timer",
            params: p,
            steps: reset,
        },
        Case {
            name: "preempt on: a slower master is taken over at once",
            params: pp,
            steps: preempt,
        },
        Case {
            name: "bow-out received: take over at once (preempt off)",
            params: p0,
            steps: bow,
        },
        Case {
            name: "bow-out received: reason is the bow-out even with preempt on",
            params: pp0,
            steps: bow_preempt,
        },
        Case {
            name: "peer interval beyond our master-down: take over at once",
            params: p0,
            steps: beyond,
        },
        Case {
            name: "bow-out counts even when 3 × advbase (300 s) exceeds 255.996 s",
            params: long,
            steps: bow_long,
        },
    ]);
}

#[test]
fn master_receives_adverts() {
    let p = params(1, 100, false);
    let (base, t) = mastered(p);
    let next = t + iv(1, 100);
    let m = md(1, 100);
    let hear = |adv_ev: Event| {
        let mut s = mastered(p).0;
        s.push(step(
            ns(t + 100 * MS),
            adv_ev,
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(t + 100 * MS + m)),
        ));
        s
    };
    let mut worse = base;
    worse.extend([
        step(
            ns(t + 100 * MS),
            peer(1, 101),
            vec![],
            Master,
            Some(ns(next)),
        ),
        step(ns(t + 200 * MS), peer(2, 0), vec![], Master, Some(ns(next))),
        // advbase 0 is fast mode, not configured here: OpenBSD would read it as
        // 200/256 s and step back; here it moves nothing (docs/protocol.md §2).
        step(
            ns(t + 250 * MS),
            peer(0, 200),
            vec![],
            Master,
            Some(ns(next)),
        ),
        step(ns(t + 260 * MS), peer(0, 0), vec![], Master, Some(ns(next))),
        // Another node's bow-out: re-assert at once (RFC 5798 §6.4.3).
        step(
            ns(t + 300 * MS),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![dp_master(t + 300 * MS + 3 * SEC), adv(1, 100)],
            Master,
            Some(ns(t + 300 * MS + iv(1, 100))),
        ),
    ]);
    run(vec![
        Case {
            name: "master hears a better interval: BACKUP",
            params: p,
            steps: hear(peer(1, 50)),
        },
        Case {
            name: "master hears an equal interval: steps back (BSD)",
            params: p,
            steps: hear(peer(1, 100)),
        },
        Case {
            name: "master ignores worse intervals and advbase 0, re-asserts on a bow-out",
            params: p,
            steps: worse,
        },
    ]);
}

#[test]
fn demotion() {
    let p = params(1, 0, false);
    let (mut master, t) = mastered(p);
    assert_eq!(t, 3 * SEC);
    master.extend([
        // FreeBSD carp_demote_adj → carp_send_ad_all: advertise the new skew now.
        step(
            ms(3500),
            SetDemotion(100),
            vec![dp_master(6500 * MS), adv(1, 100)],
            Master,
            Some(ns(3500 * MS + iv(1, 100))),
        ),
        step(
            ms(3600),
            SetDemotion(100),
            vec![],
            Master,
            Some(ns(3500 * MS + iv(1, 100))),
        ),
        step(
            ms(3700),
            SetDemotion(240),
            vec![dp_master(6700 * MS), adv(1, 240)],
            Master,
            Some(ns(3700 * MS + iv(1, 240))),
        ),
        // Capped at 240: nothing changes on the wire, no extra advert.
        step(
            ms(3800),
            SetDemotion(1000),
            vec![],
            Master,
            Some(ns(3700 * MS + iv(1, 240))),
        ),
        step(
            ns(3700 * MS + iv(1, 240)),
            Timer,
            vec![dp_master(3700 * MS + iv(1, 240) + 3 * SEC), adv(1, 240)],
            Master,
            Some(ns(3700 * MS + 2 * iv(1, 240))),
        ),
        step(
            ms(5000),
            SetDemotion(u32::MAX),
            vec![],
            Master,
            Some(ns(3700 * MS + 2 * iv(1, 240))),
        ),
        step(
            ms(5100),
            SetDemotion(0),
            vec![dp_master(8100 * MS), adv(1, 0)],
            Master,
            Some(ms(6100)),
        ),
    ]);

    let (mut stepback, _) = mastered(p);
    stepback.extend([
        step(
            ms(3500),
            SetDemotion(240),
            vec![dp_master(6500 * MS), adv(1, 240)],
            Master,
            Some(ns(3500 * MS + iv(1, 240))),
        ),
        // A peer configured like us now wins: we are demoted.
        step(
            ms(3600),
            peer(1, 0),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(3600 * MS + md(1, 240))),
        ),
    ]);

    let mut backup = started(p);
    backup.extend([
        // The running master-down timer follows the demotion.
        step(
            ms(1000),
            SetDemotion(240),
            vec![],
            Backup,
            Some(ns(md(1, 240))),
        ),
        step(ns(md(1, 0)), Timer, vec![], Backup, Some(ns(md(1, 240)))),
        step(ms(3100), SetDemotion(0), vec![], Backup, Some(ns(md(1, 0)))),
        // Overdue now: the shell calls Timer at once.
        step(
            ms(3100),
            Timer,
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(6100 * MS),
                adv(1, 0),
                Action::Announce,
            ],
            Master,
            Some(ms(4100)),
        ),
    ]);

    let pp = params(1, 0, true);
    let demoted_start = vec![
        step(ns(0), SetDemotion(240), vec![], Init, None),
        step(
            ns(0),
            Start,
            vec![tr(Init, Backup, Why::Started), dp_backup()],
            Backup,
            Some(ns(md(1, 240))),
        ),
        // Demoted, we no longer preempt a master with advskew 100.
        step(
            ms(1000),
            peer(1, 100),
            vec![],
            Backup,
            Some(ns(1000 * MS + md(1, 240))),
        ),
        step(
            ns(1000 * MS + md(1, 240)),
            Timer,
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(1000 * MS + md(1, 240) + 3 * SEC),
                adv(1, 240),
                Action::Announce,
            ],
            Master,
            Some(ns(1000 * MS + md(1, 240) + iv(1, 240))),
        ),
    ];

    let capped = params(1, 200, false);
    let mut capped_steps = vec![step(ns(0), SetDemotion(100), vec![], Init, None)];
    capped_steps.push(step(
        ns(0),
        Start,
        vec![tr(Init, Backup, Why::Started), dp_backup()],
        Backup,
        Some(ns(md(1, 240))),
    ));

    run(vec![
        Case {
            name: "master: demotion advertised at once, capped at 240",
            params: p,
            steps: master,
        },
        Case {
            name: "demoted master steps back to an equally configured peer",
            params: p,
            steps: stepback,
        },
        Case {
            name: "backup: demotion stretches and shrinks the running timer",
            params: p,
            steps: backup,
        },
        Case {
            name: "demoted before start: longer master-down, no preempt",
            params: pp,
            steps: demoted_start,
        },
        Case {
            name: "advskew 200 + demotion 100 = 240",
            params: capped,
            steps: capped_steps,
        },
    ]);
}

#[test]
fn advskew_above_240_is_sent_as_240() {
    // FreeBSD's DEMOTE_ADVSKEW caps at CARP_MAXSKEW even with no demotion, so a BSD
    // node configured with advskew 250 advertises 240; we do the same.
    let p = params(1, 250, false);
    assert_eq!(Vhid::new(p).effective_advskew(), 240);
    let (steps, t) = mastered(p);
    assert_eq!(t, md(1, 240));
    run(vec![Case {
        name: "advskew 250 → 240 on the wire and in the timers",
        params: p,
        steps,
    }]);
}

#[test]
fn link_down_and_up() {
    let p = params(1, 0, false);
    let (mut master, t) = mastered(p);
    master.extend([
        step(
            ns(t + SEC / 2),
            LinkDown,
            vec![tr(Master, Init, Why::LinkDown), dp_init()],
            Init,
            None,
        ),
        step(ns(t + SEC / 2 + 1), LinkDown, vec![], Init, None),
        step(ns(t + SEC), peer(1, 0), vec![], Init, None),
        step(ns(t + 10 * SEC), Timer, vec![], Init, None),
        step(ns(t + 10 * SEC), Start, vec![], Init, None),
        step(
            ns(t + 11 * SEC),
            LinkUp,
            vec![tr(Init, Backup, Why::LinkUp), dp_backup()],
            Backup,
            Some(ns(t + 14 * SEC)),
        ),
        step(
            ns(t + 11 * SEC + 1),
            LinkUp,
            vec![],
            Backup,
            Some(ns(t + 14 * SEC)),
        ),
        step(
            ns(t + 14 * SEC),
            Timer,
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(t + 17 * SEC),
                adv(1, 0),
                Action::Announce,
            ],
            Master,
            Some(ns(t + 15 * SEC)),
        ),
    ]);
    let mut backup = started(p);
    backup.extend([
        step(
            ms(1000),
            LinkDown,
            vec![tr(Backup, Init, Why::LinkDown), dp_init()],
            Init,
            None,
        ),
        step(
            ms(9000),
            LinkUp,
            vec![tr(Init, Backup, Why::LinkUp), dp_backup()],
            Backup,
            Some(ms(12000)),
        ),
    ]);
    let before_start = vec![
        step(ns(0), LinkUp, vec![], Init, None),
        step(ns(0), LinkDown, vec![], Init, None),
        step(ms(1), Start, vec![], Init, None),
        step(ms(2), peer(1, 0), vec![], Init, None),
        step(
            ms(2000),
            LinkUp,
            vec![tr(Init, Backup, Why::LinkUp), dp_backup()],
            Backup,
            Some(ms(5000)),
        ),
    ];
    let up_not_started = vec![
        step(ns(0), LinkDown, vec![], Init, None),
        step(ms(1), LinkUp, vec![], Init, None),
        step(
            ms(2),
            Start,
            vec![tr(Init, Backup, Why::Started), dp_backup()],
            Backup,
            Some(ms(3002)),
        ),
    ];
    run(vec![
        Case {
            name: "master: link down → INIT, silent; link up → BACKUP",
            params: p,
            steps: master,
        },
        Case {
            name: "backup: link down → INIT; link up → BACKUP",
            params: p,
            steps: backup,
        },
        Case {
            name: "link down before start: start stays INIT until link up",
            params: p,
            steps: before_start,
        },
        Case {
            name: "link flap before start: start goes to BACKUP",
            params: p,
            steps: up_not_started,
        },
    ]);
}

#[test]
fn shutdown() {
    let p = params(1, 0, false);
    let (mut on_advert, t) = mastered(p);
    assert_eq!(t, 3 * SEC);
    on_advert.extend([
        step(
            ms(3500),
            Shutdown,
            vec![Action::SendBowOut],
            Master,
            Some(ms(6500)),
        ),
        // No more adverts, no data-path change while leaving.
        step(ms(4000), Timer, vec![], Master, Some(ms(6500))),
        step(
            ms(4100),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Master,
            Some(ms(6500)),
        ),
        step(ms(4200), SetDemotion(240), vec![], Master, Some(ms(6500))),
        step(ms(4300), Shutdown, vec![], Master, Some(ms(6500))),
        step(
            ms(4500),
            peer(1, 100),
            vec![
                tr(Master, Backup, Why::Shutdown),
                dp_backup(),
                Action::Stopped,
            ],
            Backup,
            None,
        ),
        // After Stopped everything is ignored.
        step(ms(5000), peer(1, 0), vec![], Backup, None),
        step(ms(6500), Timer, vec![], Backup, None),
        step(ms(7000), Start, vec![], Backup, None),
        step(ms(7000), LinkDown, vec![], Backup, None),
        step(ms(7000), LinkUp, vec![], Backup, None),
        step(ms(7000), SetDemotion(0), vec![], Backup, None),
        step(ms(7000), Shutdown, vec![], Backup, None),
        step(
            ms(7000),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Backup,
            None,
        ),
    ]);
    let (mut on_timeout, _) = mastered(p);
    on_timeout.extend([
        step(
            ms(3500),
            Shutdown,
            vec![Action::SendBowOut],
            Master,
            Some(ms(6500)),
        ),
        step(ns(6500 * MS - 1), Timer, vec![], Master, Some(ms(6500))),
        step(
            ms(6500),
            Timer,
            vec![
                tr(Master, Backup, Why::Shutdown),
                dp_backup(),
                Action::Stopped,
            ],
            Backup,
            None,
        ),
        step(ms(9999), Timer, vec![], Backup, None),
    ]);
    let (mut link_down_leaving, _) = mastered(p);
    link_down_leaving.extend([
        step(
            ms(3500),
            Shutdown,
            vec![Action::SendBowOut],
            Master,
            Some(ms(6500)),
        ),
        step(
            ms(3600),
            LinkDown,
            vec![tr(Master, Init, Why::LinkDown), dp_init(), Action::Stopped],
            Init,
            None,
        ),
        step(ms(3700), LinkUp, vec![], Init, None),
    ]);
    let mut backup = started(p);
    backup.extend([
        step(
            ms(1000),
            Shutdown,
            vec![tr(Backup, Init, Why::Shutdown), dp_init(), Action::Stopped],
            Init,
            None,
        ),
        step(ms(3000), Timer, vec![], Init, None),
        step(
            ms(3000),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Init,
            None,
        ),
    ]);
    let never_started = vec![
        step(
            ms(0),
            Shutdown,
            vec![dp_init(), Action::Stopped],
            Init,
            None,
        ),
        step(ms(1), Start, vec![], Init, None),
    ];
    let link_down_then_shutdown = vec![
        step(
            ms(0),
            Start,
            vec![tr(Init, Backup, Why::Started), dp_backup()],
            Backup,
            Some(ms(3000)),
        ),
        step(
            ms(1),
            LinkDown,
            vec![tr(Backup, Init, Why::LinkDown), dp_init()],
            Init,
            None,
        ),
        step(
            ms(2),
            Shutdown,
            vec![dp_init(), Action::Stopped],
            Init,
            None,
        ),
    ];
    run(vec![
        Case {
            name: "leaving master stops on the new master's advert",
            params: p,
            steps: on_advert,
        },
        Case {
            name: "leaving master stops after 3 × advbase",
            params: p,
            steps: on_timeout,
        },
        Case {
            name: "link down while leaving finishes the stop",
            params: p,
            steps: link_down_leaving,
        },
        Case {
            name: "shutdown as backup: INIT and stopped at once",
            params: p,
            steps: backup,
        },
        Case {
            name: "shutdown before start",
            params: p,
            steps: never_started,
        },
        Case {
            name: "shutdown in INIT after link down",
            params: p,
            steps: link_down_then_shutdown,
        },
    ]);
}

#[test]
fn leaving_master_dead_man_never_outlives_the_wait() {
    // The bow-out wait is 3 × advbase from the shutdown; the entry's dead-man
    // deadline is 3 × advbase from the last advert, which came earlier.
    let mut v = Vhid::new(params(2, 30, false));
    v.handle(ns(0), Start);
    let t = v.poll_at().expect("backup has a timer");
    v.handle(t, Timer);
    let expires = v.master_expires().expect("master entry has a deadline");
    assert_eq!(expires, ns(t.0 + 6 * SEC));
    v.handle(ns(t.0 + SEC), Shutdown);
    assert!(v.is_leaving());
    let wait_end = v.poll_at().expect("leaving master waits");
    assert!(
        expires <= wait_end,
        "dead-man {expires} must not outlive the wait {wait_end}"
    );
}

#[test]
fn tie_break_jitter() {
    let p = params(1, 0, false);
    let step_back = |v: &mut Vhid| {
        v.handle(ns(0), Start);
        v.handle(ms(3000), Timer);
        assert_eq!(v.state(), Master);
        let out = v.handle(ms(3500), peer(1, 0));
        assert_eq!(
            out,
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()]
        );
        v.poll_at().expect("backup timer").0 - (3500 * MS + md(1, 0))
    };
    // Without a seed: BSD timing, no extra wait.
    assert_eq!(step_back(&mut Vhid::new(p)), 0);
    // With a seed: an extra wait in [0, interval), different per seed.
    let extras: Vec<u64> = (0..8)
        .map(|s| step_back(&mut Vhid::new(p).with_tie_break_seed(s)))
        .collect();
    assert!(extras.iter().all(|&e| e < iv(1, 0)), "{extras:?}");
    let mut distinct = extras.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 7, "seeds should decorrelate: {extras:?}");
    // Only a tie draws jitter: stepping back for a better master does not.
    let mut v = Vhid::new(params(1, 100, false)).with_tie_break_seed(1);
    v.handle(ns(0), Start);
    v.handle(ns(md(1, 100)), Timer);
    v.handle(ms(4000), peer(1, 0));
    assert_eq!(v.poll_at(), Some(ns(4000 * MS + md(1, 100))));
    // And any advert heard afterwards re-arms the plain timer.
    let mut v = Vhid::new(p).with_tie_break_seed(3);
    step_back(&mut v);
    v.handle(ms(4000), peer(1, 0));
    assert_eq!(v.poll_at(), Some(ns(4000 * MS + md(1, 0))));
}

#[test]
fn ignored_events() {
    let p = params(1, 0, false);
    let mut started_twice = vec![
        step(ns(0), Timer, vec![], Init, None),
        step(ns(0), peer(1, 0), vec![], Init, None),
        step(
            ns(0),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Init,
            None,
        ),
        step(ns(0), LinkUp, vec![], Init, None),
    ];
    started_twice.extend(started(p));
    started_twice.extend([
        step(ms(1), Start, vec![], Backup, Some(ms(3000))),
        step(ms(2), LinkUp, vec![], Backup, Some(ms(3000))),
        step(ms(1000), Timer, vec![], Backup, Some(ms(3000))),
        step(ms(1001), SetDemotion(0), vec![], Backup, Some(ms(3000))),
    ]);
    let (mut master, _) = mastered(p);
    master.extend([
        step(ms(3001), Start, vec![], Master, Some(ms(4000))),
        step(ms(3002), Timer, vec![], Master, Some(ms(4000))),
        step(ms(3003), LinkUp, vec![], Master, Some(ms(4000))),
        step(ms(3004), SetDemotion(0), vec![], Master, Some(ms(4000))),
    ]);
    run(vec![
        Case {
            name: "events before start, second start, early timer",
            params: p,
            steps: started_twice,
        },
        Case {
            name: "nonsense events as master",
            params: p,
            steps: master,
        },
    ]);
}

#[test]
fn timing_arithmetic() {
    assert_eq!(interval(1, 0), Duration::from_secs(1));
    assert_eq!(interval(1, 255), Duration::from_nanos(SEC + 996_093_750));
    assert_eq!(
        interval(255, 255),
        Duration::from_nanos(255 * SEC + 996_093_750)
    );
    assert_eq!(interval(0, 128), Duration::from_millis(500));
    assert_eq!(
        master_down_interval(1, 100),
        Duration::from_nanos(3_390_625_000)
    );
    assert_eq!(
        master_down_interval(255, 240),
        Duration::from_nanos(765 * SEC + 937_500_000)
    );
    assert_eq!(dead_man_interval(5), Duration::from_secs(15));
    for own in [Base::Seconds(1), Base::Millis(10)] {
        assert_eq!(
            PeerAdvert::BOW_OUT.interval(own),
            Some(interval(255, 255)),
            "{own}"
        );
    }
    assert!(PeerAdvert::BOW_OUT.is_bow_out());
    assert!(!PeerAdvert {
        advbase: 255,
        advskew: 254
    }
    .is_bow_out());
    // For every configuration: a healthy master's entry never lapses between two
    // adverts, and a backup waits longer than one interval.
    for advbase in 1..=255u8 {
        for advskew in 0..=MAX_EFFECTIVE_ADVSKEW {
            let i = interval(advbase, advskew);
            assert!(
                dead_man_interval(advbase) > i,
                "advbase {advbase} advskew {advskew}"
            );
            assert!(
                master_down_interval(advbase, advskew) > i,
                "advbase {advbase} advskew {advskew}"
            );
        }
    }
}

#[test]
fn time_never_panics() {
    assert_eq!(Time::from_secs(3).as_nanos(), 3 * SEC);
    assert_eq!(Time::from_millis(3), Time(3 * MS));
    assert_eq!(Time::from_nanos(3), Time(3));
    assert_eq!(Time::from_secs(u64::MAX), Time(u64::MAX));
    assert_eq!(
        Time(u64::MAX - 1).checked_add(Duration::from_nanos(2)),
        None
    );
    assert_eq!(Time(1).checked_add(Duration::from_nanos(2)), Some(Time(3)));
    assert_eq!(Time(u64::MAX - 1) + Duration::from_secs(1), Time(u64::MAX));
    assert_eq!(Time(5) + Duration::MAX, Time(u64::MAX));
    assert_eq!(Time(5) - Time(7), Duration::ZERO);
    assert_eq!(Time(7) - Time(5), Duration::from_nanos(2));
    assert_eq!(Time(1_500_000_000).to_string(), "1.500000000s");
    // A VHID with a far-future clock does not overflow.
    let mut v = Vhid::new(params(255, 240, false));
    v.handle(Time(u64::MAX - 5), Start);
    assert_eq!(v.poll_at(), Some(Time(u64::MAX)));
    let out = v.handle(Time(u64::MAX), Timer);
    assert!(out.contains(&Action::Announce), "{out:?}");
}

#[test]
fn params_validation() {
    assert_eq!(params(1, 0, false).validate(), Ok(()));
    assert_eq!(params(255, 254, true).validate(), Ok(()));
    assert_eq!(
        Params {
            vhid: 0,
            ..params(1, 0, false)
        }
        .validate(),
        Err(ParamsError::VhidZero)
    );
    assert_eq!(
        params(0, 0, false).validate(),
        Err(ParamsError::AdvbaseZero { vhid: 7 })
    );
    assert_eq!(
        params(1, 255, false).validate(),
        Err(ParamsError::AdvskewBowOut { vhid: 7 })
    );
    assert!(Vhid::try_new(params(0, 0, false)).is_err());
    assert!(Vhid::try_new(params(1, 0, false)).is_ok());
    // new() never lets a zero advbase make a timer spin.
    let mut v = Vhid::new(params(0, 0, false));
    assert_eq!(v.params().advbase, Base::Seconds(1));
    v.handle(ns(0), Start);
    assert_eq!(v.poll_at(), Some(ms(3000)));
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Start),
        Just(Timer),
        Just(Timer),
        Just(Timer),
        Just(LinkDown),
        Just(LinkUp),
        Just(Shutdown),
        (0u32..300).prop_map(SetDemotion),
        (0u8..=3, any::<u8>()).prop_map(|(b, s)| peer(b, s)),
        Just(Event::Advert(PeerAdvert::BOW_OUT)),
    ]
}

proptest! {
    /// Invariants over random event sequences: no panic; one Transition per state
    /// change, with the right `from`; the data-path entry written matches the state
    /// (except while leaving); a MASTER entry always carries a deadline
    /// 3 × the base after now; after Timer, the next deadline is in the future;
    /// nothing after Stopped. Whole seconds and fast mode alike (time steps
    /// scaled to the base).
    #[test]
    fn random_sequences_keep_invariants(
        advbase in prop_oneof![
            (1u8..=3).prop_map(Base::Seconds),
            (ADVBASE_MS_MIN..=ADVBASE_MS_MAX).prop_map(Base::Millis),
        ],
        advskew in 0u8..=254,
        preempt in any::<bool>(),
        steps in proptest::collection::vec((0u64..4_000, arb_event()), 1..80),
    ) {
        let mut v = Vhid::new(Params { vhid: 1, advbase, advskew, preempt });
        // One step unit is a thousandth of a second or of one advbase_ms.
        let unit = match advbase {
            Base::Seconds(_) => MS,
            Base::Millis(m) => u64::from(m) * 1_000,
        };
        let mut now = 0u64;
        let mut dp_state = State::Init;
        let mut stopped = false;
        for (dt, ev) in steps {
            now += dt * unit;
            // Behave like the shell: fire overdue timers first.
            let mut evs = vec![];
            if v.poll_at().is_some_and(|p| p.0 <= now) {
                evs.push(Timer);
            }
            evs.push(ev);
            for ev in evs {
                let before = v.state();
                let out = v.handle(ns(now), ev);
                if stopped {
                    prop_assert!(out.is_empty(), "{:?} after Stopped gave {:?}", ev, out);
                }
                let transitions: Vec<_> = out.iter().filter(|a| matches!(a, Action::Transition { .. })).collect();
                prop_assert!(transitions.len() <= 1, "{:?}", out);
                match transitions.first() {
                    Some(Action::Transition { from, to, .. }) => {
                        prop_assert_eq!(*from, before);
                        prop_assert_eq!(*to, v.state());
                        prop_assert_ne!(from, to);
                    }
                    _ => prop_assert_eq!(before, v.state(), "state changed without a Transition: {:?}", out),
                }
                for a in &out {
                    match *a {
                        Action::SetDataplane { state, master_expires } => {
                            dp_state = state;
                            if state == State::Master {
                                prop_assert_eq!(master_expires, Some(ns(now + dm_of(advbase))));
                            } else {
                                prop_assert_eq!(master_expires, None);
                            }
                        }
                        Action::SendAdvert { advbase: b, advskew: s } => {
                            prop_assert_eq!(b, advbase.wire());
                            prop_assert_eq!(s, v.effective_advskew());
                            prop_assert!(s <= MAX_EFFECTIVE_ADVSKEW);
                        }
                        Action::Stopped => stopped = true,
                        _ => {}
                    }
                }
                if !v.is_leaving() && !v.is_stopped() {
                    prop_assert_eq!(dp_state, v.state(), "data path out of step: {:?}", out);
                }
                if ev == Timer {
                    prop_assert!(v.poll_at().is_none_or(|p| p.0 > now), "timer left a past deadline");
                }
                prop_assert_eq!(v.is_stopped(), stopped);
            }
        }
    }
}

/// Input of a reload scenario: an event, or new parameters
/// ([`Vhid::reconfigure`]).
enum In {
    Ev(Event),
    Reconf(Params),
}

struct RStep {
    at: Time,
    input: In,
    expect: Vec<Action>,
    state: State,
    poll_at: Option<Time>,
}

fn rstep(at: Time, input: In, expect: Vec<Action>, state: State, poll_at: Option<Time>) -> RStep {
    RStep {
        at,
        input,
        expect,
        state,
        poll_at,
    }
}

fn ev_steps(steps: Vec<Step>) -> Vec<RStep> {
    steps
        .into_iter()
        .map(|s| rstep(s.at, In::Ev(s.event), s.expect, s.state, s.poll_at))
        .collect()
}

fn run_reload(name: &str, p: Params, steps: Vec<RStep>) -> Vhid {
    let mut v = Vhid::new(p);
    for (i, s) in steps.iter().enumerate() {
        let (got, what) = match &s.input {
            In::Ev(e) => (v.handle(s.at, *e), format!("{e:?}")),
            In::Reconf(np) => (v.reconfigure(s.at, *np), format!("reconfigure {np:?}")),
        };
        assert_eq!(
            got, s.expect,
            "[{name}] step {i}: {what} at {}: actions",
            s.at
        );
        assert_eq!(v.state(), s.state, "[{name}] step {i}: {what}: state");
        assert_eq!(v.poll_at(), s.poll_at, "[{name}] step {i}: {what}: poll_at");
    }
    v
}

#[test]
fn reconfigure_master() {
    use In::{Ev, Reconf};
    let p = params(1, 0, false);
    let (_, t) = mastered(p);
    assert_eq!(t, 3 * SEC);

    // Worse advskew: advertise it at once (a preempting peer takes over now),
    // keep the advert timer on the new interval, step back for the better peer.
    let mut worse = ev_steps(mastered(p).0);
    worse.extend([
        rstep(
            ms(3500),
            Reconf(params(1, 200, false)),
            vec![dp_master(6500 * MS), adv(1, 200)],
            Master,
            Some(ns(3500 * MS + iv(1, 200))),
        ),
        rstep(
            ns(3500 * MS + iv(1, 200)),
            Ev(Timer),
            vec![dp_master(3500 * MS + iv(1, 200) + 3 * SEC), adv(1, 200)],
            Master,
            Some(ns(3500 * MS + 2 * iv(1, 200))),
        ),
        rstep(
            ms(5000),
            Ev(peer(1, 100)),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(5000 * MS + md(1, 200))),
        ),
    ]);
    let v = run_reload("MASTER, advskew 0 → 200", p, worse);
    assert_eq!(v.params().advskew, 200);

    // A longer advbase moves the dead-man deadline and the advert timer.
    let mut slower = ev_steps(mastered(p).0);
    slower.extend([
        rstep(
            ms(3500),
            Reconf(params(3, 0, false)),
            vec![dp_master(3500 * MS + 9 * SEC), adv(3, 0)],
            Master,
            Some(ms(6500)),
        ),
        // The old 1 s timer is gone.
        rstep(ms(4000), Ev(Timer), vec![], Master, Some(ms(6500))),
        // A peer at 2 s is now better than our 3 s.
        rstep(
            ms(4100),
            Ev(peer(2, 0)),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(4100 * MS + md(3, 0))),
        ),
    ]);
    run_reload("MASTER, advbase 1 → 3", p, slower);

    // Unchanged parameters (and a different vhid, which is identity and kept)
    // change nothing. preempt alone is a change too: one advert, harmless.
    let mut same = ev_steps(mastered(p).0);
    same.extend([
        rstep(ms(3500), Reconf(p), vec![], Master, Some(ms(4000))),
        rstep(
            ms(3600),
            Reconf(Params { vhid: 9, ..p }),
            vec![],
            Master,
            Some(ms(4000)),
        ),
        rstep(
            ms(3700),
            Reconf(params(1, 0, true)),
            vec![dp_master(6700 * MS), adv(1, 0)],
            Master,
            Some(ms(4700)),
        ),
    ]);
    let v = run_reload("MASTER, same parameters", p, same);
    assert_eq!(v.params().vhid, 7);
    assert!(v.params().preempt);

    // Demotion stays on top of the new advskew, capped at 240.
    let mut demoted = ev_steps(mastered(p).0);
    demoted.extend([
        rstep(
            ms(3500),
            Ev(SetDemotion(100)),
            vec![dp_master(6500 * MS), adv(1, 100)],
            Master,
            Some(ns(3500 * MS + iv(1, 100))),
        ),
        rstep(
            ms(3600),
            Reconf(params(1, 50, false)),
            vec![dp_master(6600 * MS), adv(1, 150)],
            Master,
            Some(ns(3600 * MS + iv(1, 150))),
        ),
        rstep(
            ms(3700),
            Reconf(params(1, 200, false)),
            vec![dp_master(6700 * MS), adv(1, 240)],
            Master,
            Some(ns(3700 * MS + iv(1, 240))),
        ),
    ]);
    run_reload("MASTER, demoted", p, demoted);

    // A leaving master keeps its bow-out wait and sends nothing.
    let mut leaving = ev_steps(mastered(p).0);
    leaving.extend([
        rstep(
            ms(3500),
            Ev(Shutdown),
            vec![Action::SendBowOut],
            Master,
            Some(ms(6500)),
        ),
        rstep(
            ms(3600),
            Reconf(params(2, 50, true)),
            vec![],
            Master,
            Some(ms(6500)),
        ),
        rstep(
            ms(6500),
            Ev(Timer),
            vec![
                tr(Master, Backup, Why::Shutdown),
                dp_backup(),
                Action::Stopped,
            ],
            Backup,
            None,
        ),
        // Stopped: parameters are stored, nothing happens.
        rstep(ms(7000), Reconf(params(1, 0, false)), vec![], Backup, None),
    ]);
    run_reload("leaving MASTER", p, leaving);
}

#[test]
fn reconfigure_backup_and_init() {
    use In::{Ev, Reconf};
    // BACKUP: the master-down timer restarts from the reload with the new skew.
    let p = params(1, 100, false);
    let mut better = ev_steps(started(p));
    better.extend([
        rstep(
            ms(1000),
            Reconf(params(1, 0, false)),
            vec![],
            Backup,
            Some(ms(4000)),
        ),
        rstep(ms(3999), Ev(Timer), vec![], Backup, Some(ms(4000))),
        rstep(
            ms(4000),
            Ev(Timer),
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(7000 * MS),
                adv(1, 0),
                Action::Announce,
            ],
            Master,
            Some(ms(5000)),
        ),
    ]);
    run_reload("BACKUP, advskew 100 → 0", p, better);

    // A longer interval also counts from the reload, not from the last advert.
    let mut longer = ev_steps(started(p));
    longer.extend([
        rstep(
            ms(3000),
            Reconf(params(2, 100, false)),
            vec![],
            Backup,
            Some(ns(3000 * MS + md(2, 100))),
        ),
        rstep(
            ns(md(1, 100)),
            Ev(Timer),
            vec![],
            Backup,
            Some(ns(3000 * MS + md(2, 100))),
        ),
    ]);
    run_reload("BACKUP, advbase 1 → 2", p, longer);

    // Preempt switched on with a better skew: the next advert of the (now
    // slower) master makes us take over.
    let q = params(1, 200, false);
    let mut preempt = ev_steps(started(q));
    preempt.extend([
        rstep(
            ms(1000),
            Ev(peer(1, 100)),
            vec![],
            Backup,
            Some(ns(1000 * MS + md(1, 200))),
        ),
        rstep(
            ms(1500),
            Reconf(params(1, 0, true)),
            vec![],
            Backup,
            Some(ms(4500)),
        ),
        rstep(
            ms(2000),
            Ev(peer(1, 100)),
            vec![
                tr(Backup, Master, Why::Preempt),
                dp_master(5000 * MS),
                adv(1, 0),
                Action::Announce,
            ],
            Master,
            Some(ms(3000)),
        ),
    ]);
    run_reload("BACKUP, preempt on, advskew 200 → 0", q, preempt);

    // INIT: nothing until started; the start uses the new parameters. advbase
    // 0 is taken as 1, as in `new`.
    let init = vec![
        rstep(ms(100), Reconf(params(0, 50, false)), vec![], Init, None),
        rstep(
            ms(200),
            Ev(Start),
            vec![tr(Init, Backup, Why::Started), dp_backup()],
            Backup,
            Some(ns(200 * MS + md(1, 50))),
        ),
        rstep(
            ms(300),
            Ev(LinkDown),
            vec![tr(Backup, Init, Why::LinkDown), dp_init()],
            Init,
            None,
        ),
        rstep(ms(400), Reconf(params(2, 0, false)), vec![], Init, None),
        rstep(
            ms(500),
            Ev(LinkUp),
            vec![tr(Init, Backup, Why::LinkUp), dp_backup()],
            Backup,
            Some(ns(500 * MS + md(2, 0))),
        ),
    ];
    let v = run_reload("INIT", p, init);
    assert_eq!(v.params().advbase, Base::Seconds(2));
}

// ---- Fast mode (advbase_ms; docs/protocol.md §2, "Fast mode (advbase 0)") ----

/// The protocol's example and the arithmetic of every fast base.
#[test]
fn fast_mode_timing() {
    let b = Base::Millis(10);
    // 3 × 10 ms + 10 ms × 100/256 = 33.906 25 ms.
    assert_eq!(
        b.master_down_interval(100),
        Duration::from_nanos(33_906_250)
    );
    assert_eq!(b.interval(100), Duration::from_nanos(13_906_250));
    assert_eq!(b.interval(0), Duration::from_millis(10));
    assert_eq!(b.dead_man_interval(), Duration::from_millis(30));
    assert_eq!((b.wire(), b.millis(), b.is_fast()), (0, Some(10), true));
    assert_eq!(b.duration(), Duration::from_millis(10));
    assert_eq!(b.to_string(), "advbase_ms 10");
    // Whole seconds are the BSD arithmetic, unchanged.
    let s = Base::Seconds(1);
    assert_eq!((s.wire(), s.millis(), s.is_fast()), (1, None, false));
    assert_eq!(s.master_down_interval(100), master_down_interval(1, 100));
    assert_eq!(s.to_string(), "advbase 1");
    assert_eq!(Base::from(3), Base::Seconds(3));
    // Normalized: no zero, no out-of-range base can make a timer spin.
    assert_eq!(Base::Seconds(0).normalized(), Base::Seconds(1));
    assert_eq!(Base::Millis(0).normalized(), Base::Millis(ADVBASE_MS_MIN));
    assert_eq!(
        Base::Millis(5000).normalized(),
        Base::Millis(ADVBASE_MS_MAX)
    );
    // For every fast base and skew: the arithmetic agrees with the
    // independent one, a healthy master's entry never lapses between adverts,
    // a backup waits longer than an interval, and a lower skew is a shorter
    // interval (the election orders fast nodes by advskew).
    for ms in ADVBASE_MS_MIN..=ADVBASE_MS_MAX {
        let b = Base::Millis(ms);
        for skew in 0..=MAX_EFFECTIVE_ADVSKEW {
            let i = b.interval(skew);
            assert_eq!(
                i,
                Duration::from_nanos(iv_of(b, skew.into())),
                "{ms} {skew}"
            );
            assert_eq!(
                b.master_down_interval(skew),
                Duration::from_nanos(md_of(b, skew.into())),
                "{ms} {skew}"
            );
            assert!(b.dead_man_interval() > i, "{ms} ms, advskew {skew}");
            assert!(b.master_down_interval(skew) > i, "{ms} ms, advskew {skew}");
            if skew > 0 {
                assert!(b.interval(skew - 1) < i, "{ms} ms, advskew {skew}");
            }
        }
    }
    assert_eq!(
        fast(5, 0, false).validate(),
        Err(ParamsError::AdvbaseMsRange { vhid: 7, ms: 5 })
    );
    assert_eq!(
        fast(1000, 0, false).validate(),
        Err(ParamsError::AdvbaseMsRange { vhid: 7, ms: 1000 })
    );
    assert_eq!(fast(10, 0, false).validate(), Ok(()));
    assert_eq!(fast(999, 254, true).validate(), Ok(()));
}

/// A peer's advert is read with the receiver's own base; the other mode is no
/// interval at all.
#[test]
fn fast_mode_peer_intervals() {
    let fast50 = Base::Millis(50);
    let p = |advbase, advskew| PeerAdvert { advbase, advskew };
    assert_eq!(p(0, 100).interval(fast50), Some(fast50.interval(100)));
    assert_eq!(p(1, 0).interval(fast50), None);
    assert_eq!(p(0, 100).interval(Base::Seconds(1)), None);
    assert_eq!(p(2, 7).interval(Base::Seconds(1)), Some(interval(2, 7)));
    assert_eq!(
        PeerAdvert::BOW_OUT.interval(fast50),
        Some(interval(255, 255))
    );
}

/// Start, master-down and adverts of a fast VHID, with time injected: the
/// protocol's example (advbase_ms 10, advskew 100: master-down 33.9 ms).
#[test]
fn fast_mode_master_down_and_adverts() {
    let p = fast(10, 100, false);
    let t = 33_906_250;
    let i = 13_906_250;
    let dead = 30 * MS;
    run(vec![Case {
        name: "fast: BACKUP, MASTER at 33.906 25 ms, adverts every 13.906 25 ms with advbase 0",
        params: p,
        steps: vec![
            step(
                ns(0),
                Start,
                vec![tr(Init, Backup, Why::Started), dp_backup()],
                Backup,
                Some(ns(t)),
            ),
            step(ns(t - 1), Timer, vec![], Backup, Some(ns(t))),
            step(
                ns(t),
                Timer,
                vec![
                    tr(Backup, Master, Why::MasterDown),
                    dp_master(t + dead),
                    adv(0, 100),
                    Action::Announce,
                ],
                Master,
                Some(ns(t + i)),
            ),
            step(ns(t + i - 1), Timer, vec![], Master, Some(ns(t + i))),
            step(
                ns(t + i),
                Timer,
                vec![dp_master(t + i + dead), adv(0, 100)],
                Master,
                Some(ns(t + 2 * i)),
            ),
            // A late timer reschedules from now, as in whole-second mode.
            step(
                ns(t + 3 * i),
                Timer,
                vec![dp_master(t + 3 * i + dead), adv(0, 100)],
                Master,
                Some(ns(t + 4 * i)),
            ),
        ],
    }]);
    // Demotion raises the skew within the fast base.
    let (mut demoted, t) = mastered(fast(50, 0, false));
    assert_eq!(t, 150 * MS);
    demoted.push(step(
        ms(160),
        SetDemotion(240),
        vec![dp_master(310 * MS), adv(0, 240)],
        Master,
        Some(ns(160 * MS + iv_of(Base::Millis(50), 240))),
    ));
    run(vec![Case {
        name: "fast: demotion advertises the raised skew at once",
        params: fast(50, 0, false),
        steps: demoted,
    }]);
}

/// Backup and master rules in fast mode: ordering by advskew, preempt, and
/// adverts in the other mode moving nothing.
#[test]
fn fast_mode_backup_and_master_rules() {
    let f = Base::Millis(50);
    let p = fast(50, 100, false);
    let m = md_of(f, 100);
    let mut backup = started(p);
    backup.extend([
        // A fast master's adverts re-arm the timer, whatever its skew.
        step(ms(100), peer(0, 0), vec![], Backup, Some(ns(100 * MS + m))),
        step(
            ms(150),
            peer(0, 200),
            vec![],
            Backup,
            Some(ns(150 * MS + m)),
        ),
        // Whole-second adverts are not a sign of life in fast mode.
        step(ms(190), peer(1, 0), vec![], Backup, Some(ns(150 * MS + m))),
        step(
            ns(150 * MS + m),
            Timer,
            vec![
                tr(Backup, Master, Why::MasterDown),
                dp_master(150 * MS + m + 150 * MS),
                adv(0, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(150 * MS + m + iv_of(f, 100))),
        ),
    ]);

    let pp = fast(50, 100, true);
    let mut preempt = started(pp);
    preempt.extend([
        step(
            ms(100),
            peer(0, 100),
            vec![],
            Backup,
            Some(ns(100 * MS + m)),
        ),
        step(ms(120), peer(0, 99), vec![], Backup, Some(ns(120 * MS + m))),
        // Whole seconds would be a longer interval, but mean nothing here.
        step(ms(130), peer(1, 0), vec![], Backup, Some(ns(120 * MS + m))),
        step(
            ms(140),
            peer(0, 101),
            vec![
                tr(Backup, Master, Why::Preempt),
                dp_master(290 * MS),
                adv(0, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(140 * MS + iv_of(f, 100))),
        ),
    ]);

    let (mut master, t) = mastered(p);
    let next = t + iv_of(f, 100);
    master.extend([
        step(ns(t + 5 * MS), peer(0, 101), vec![], Master, Some(ns(next))),
        // A whole-second master with a shorter BSD interval moves nothing.
        step(ns(t + 6 * MS), peer(1, 0), vec![], Master, Some(ns(next))),
        step(
            ns(t + 7 * MS),
            peer(0, 99),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(t + 7 * MS + m)),
        ),
    ]);

    // A whole-second VHID never moves on advbase 0, whatever the skew.
    let s = params(1, 100, true);
    let ms_ = md(1, 100);
    let mut seconds = started(s);
    seconds.extend([
        step(ms(100), peer(0, 0), vec![], Backup, Some(ns(ms_))),
        step(ms(200), peer(0, 255), vec![], Backup, Some(ns(ms_))),
    ]);
    run(vec![
        Case {
            name: "fast backup: re-armed by fast adverts only, master-down on time",
            params: p,
            steps: backup,
        },
        Case {
            name: "fast backup with preempt takes over from a worse fast master",
            params: pp,
            steps: preempt,
        },
        Case {
            name: "fast master steps back for a better fast master only",
            params: p,
            steps: master,
        },
        Case {
            name: "whole-second backup ignores advbase 0",
            params: s,
            steps: seconds,
        },
    ]);
}

/// Bow-out in fast mode: 255/255 on the wire as always; the backup takes over
/// at once, ignores the later copies, and the leaving master waits at most 3 ×
/// advbase_ms for the new master.
#[test]
fn fast_mode_bow_out() {
    let f = Base::Millis(50);
    let (mut leaving, t) = mastered(fast(50, 0, false));
    leaving.extend([
        step(
            ms(160),
            Shutdown,
            vec![Action::SendBowOut],
            Master,
            Some(ms(310)),
        ),
        // Whole-second adverts are not the new master.
        step(ms(170), peer(1, 0), vec![], Master, Some(ms(310))),
        step(ms(309), Timer, vec![], Master, Some(ms(310))),
        step(
            ms(310),
            Timer,
            vec![
                tr(Master, Backup, Why::Shutdown),
                dp_backup(),
                Action::Stopped,
            ],
            Backup,
            None,
        ),
    ]);
    assert_eq!(t, 150 * MS);
    let (mut handed, _) = mastered(fast(50, 0, false));
    handed.extend([
        step(
            ms(160),
            Shutdown,
            vec![Action::SendBowOut],
            Master,
            Some(ms(310)),
        ),
        // The new master's first advert ends the wait (make-before-break).
        step(
            ms(161),
            peer(0, 100),
            vec![
                tr(Master, Backup, Why::Shutdown),
                dp_backup(),
                Action::Stopped,
            ],
            Backup,
            None,
        ),
    ]);
    let p = fast(50, 100, false);
    let m = md_of(f, 100);
    let mut taker = started(p);
    taker.extend([
        step(ms(100), peer(0, 0), vec![], Backup, Some(ns(100 * MS + m))),
        step(
            ms(120),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![
                tr(Backup, Master, Why::PeerBowedOut),
                dp_master(270 * MS),
                adv(0, 100),
                Action::Announce,
            ],
            Master,
            Some(ns(120 * MS + iv_of(f, 100))),
        ),
        // A better node took over on the same bow-out: step back ...
        step(
            ms(121),
            peer(0, 50),
            vec![tr(Master, Backup, Why::HigherPriorityMaster), dp_backup()],
            Backup,
            Some(ns(121 * MS + m)),
        ),
        // ... and the later copies (3 ms apart) are not a new bow-out.
        step(
            ms(123),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Backup,
            Some(ns(121 * MS + m)),
        ),
        step(
            ms(126),
            Event::Advert(PeerAdvert::BOW_OUT),
            vec![],
            Backup,
            Some(ns(121 * MS + m)),
        ),
    ]);
    run(vec![
        Case {
            name: "fast: leaving master waits 3 × advbase_ms at most",
            params: fast(50, 0, false),
            steps: leaving,
        },
        Case {
            name: "fast: leaving master stops on the new master's advbase-0 advert",
            params: fast(50, 0, false),
            steps: handed,
        },
        Case {
            name: "fast: bow-out taken at once, later copies ignored",
            params: p,
            steps: taker,
        },
    ]);
}

/// Two fast nodes wired back to back (zero delay, no loss), driven by their
/// own deadlines: the lower advskew ends up MASTER whichever starts first
/// (with preempt), and a silenced master is replaced within the backup's
/// master-down interval (3 × 50 ms + 50 ms × 100/256 = 169.53 ms).
#[test]
fn fast_mode_pair_elects_the_lower_skew_and_fails_over() {
    /// Runs both from `from` until `until` (ns), each advert delivered to the
    /// other node at once; a `silent` node does nothing (killed). Returns the
    /// transitions as (time, node, state entered).
    fn drive(
        nodes: &mut [Vhid; 2],
        from: u64,
        until: u64,
        silent: Option<usize>,
    ) -> Vec<(u64, usize, State)> {
        let mut log = Vec::new();
        let mut now = from;
        loop {
            let next = nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != silent)
                .filter_map(|(i, v)| v.poll_at().map(|t| (t.0.max(now), i)))
                .min();
            let Some((t, i)) = next else { break };
            if t > until {
                break;
            }
            now = t;
            let mut queue = vec![(i, Timer)];
            while let Some((n, ev)) = queue.pop() {
                for a in nodes[n].handle(ns(now), ev) {
                    match a {
                        Action::SendAdvert { advbase, advskew } if Some(1 - n) != silent => {
                            queue.push((1 - n, peer(advbase, advskew)));
                        }
                        Action::Transition { to, .. } => log.push((now, n, to)),
                        _ => {}
                    }
                }
            }
        }
        log
    }
    // fw2 (advskew 100) starts first and becomes MASTER after its
    // master-down interval; fw1 (advskew 0, preempt) starts at 200 ms and
    // preempts on fw2's next advert.
    let mut nodes = [Vhid::new(fast(50, 0, true)), Vhid::new(fast(50, 100, true))];
    nodes[1].handle(ns(0), Start);
    let log = drive(&mut nodes, 0, 200 * MS, None);
    assert_eq!(nodes[1].state(), Master, "{log:?}");
    assert_eq!(log.last().map(|l| l.0), Some(md_of(Base::Millis(50), 100)));
    nodes[0].handle(ms(200), Start);
    let log = drive(&mut nodes, 200 * MS, 2 * SEC, None);
    assert_eq!(
        (nodes[0].state(), nodes[1].state()),
        (Master, Backup),
        "{log:?}"
    );
    let preempted = log
        .iter()
        .find(|l| l.1 == 0 && l.2 == Master)
        .expect("fw1 took over");
    assert!(
        preempted.0 <= 200 * MS + iv_of(Base::Millis(50), 100),
        "{log:?}"
    );
    // Steady for the rest: no transition after the preemption settled.
    let settled = log.last().expect("transitions").0;
    let log = drive(&mut nodes, 2 * SEC, 12 * SEC, None);
    assert!(log.is_empty(), "no takeover in a 10 s steady run: {log:?}");
    // fw1 goes silent (killed) at 12 s: fw2 takes over one master-down
    // interval after fw1's last advert.
    let last = 12 * SEC;
    let log = drive(&mut nodes, last, 13 * SEC, Some(0));
    let took = log
        .iter()
        .find(|l| l.1 == 1 && l.2 == Master)
        .expect("fw2 took over");
    assert!(
        took.0 > last && took.0 <= last + md_of(Base::Millis(50), 100),
        "took over at {} ns, settled at {settled}: {log:?}",
        took.0
    );
}
