//! Tier-1 tests of the operator events (`carp disable|enable`, and the
//! maintenance handover, which is a demotion): docs/design.md "Operator
//! commands".

use super::*;

const SEC: u64 = 1_000_000_000;

fn params(advskew: u8, preempt: bool) -> Params {
    Params {
        vhid: 1,
        advbase: Base::Seconds(1),
        advskew,
        preempt,
    }
}

/// A VHID started at 0 that has become MASTER on its master-down timer;
/// returns it and the time it took over.
fn master(advskew: u8) -> (Vhid, Time) {
    let mut m = Vhid::new(params(advskew, true));
    m.handle(Time(0), Event::Start);
    let t = m.poll_at().expect("master-down timer armed");
    m.handle(t, Event::Timer);
    assert_eq!(m.state(), State::Master);
    (m, t)
}

fn backup(advskew: u8, preempt: bool) -> Vhid {
    let mut m = Vhid::new(params(advskew, preempt));
    m.handle(Time(0), Event::Start);
    assert_eq!(m.state(), State::Backup);
    m
}

fn advert(advskew: u8) -> Event {
    Event::Advert(PeerAdvert {
        advbase: 1,
        advskew,
    })
}

fn transitions(actions: &[Action]) -> Vec<(State, State, Why)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transition { from, to, why } => Some((*from, *to, *why)),
            _ => None,
        })
        .collect()
}

fn dataplane(actions: &[Action]) -> Vec<State> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetDataplane { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

#[test]
fn disable_on_a_master_bows_out_answers_until_the_new_master_then_stays_init() {
    let (mut m, t) = master(0);
    let out = m.handle(t + Duration::from_millis(10), Event::Disable);
    // Only the bow-out: the data-path entry stays MASTER (make-before-break).
    assert_eq!(out, vec![Action::SendBowOut]);
    assert_eq!(m.state(), State::Master);
    assert!(m.is_leaving() && m.is_disabled());
    // Another bow-out is no new master.
    assert!(m
        .handle(
            t + Duration::from_millis(11),
            Event::Advert(PeerAdvert::BOW_OUT)
        )
        .is_empty());
    // The new master's advert ends the wait: INIT, silent, not stopped.
    let out = m.handle(t + Duration::from_millis(12), advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Init, Why::Disabled)]
    );
    assert_eq!(dataplane(&out), vec![State::Init]);
    assert!(!out.contains(&Action::Stopped));
    assert!(!m.is_stopped() && !m.is_leaving());
    assert_eq!(m.poll_at(), None, "INIT sends nothing");

    // Silent and deaf until enabled: adverts, bow-outs, link flaps, timers.
    let later = t + Duration::from_secs(20);
    for ev in [
        advert(100),
        Event::Advert(PeerAdvert::BOW_OUT),
        Event::LinkDown,
        Event::LinkUp,
        Event::Timer,
        Event::SetDemotion(240),
        Event::Disable,
    ] {
        assert!(m.handle(later, ev).is_empty(), "{ev:?}");
        assert_eq!(m.state(), State::Init);
    }

    // Enable: BACKUP, listening for a full master-down interval first.
    let out = m.handle(later, Event::Enable);
    assert_eq!(
        transitions(&out),
        vec![(State::Init, State::Backup, Why::Enabled)]
    );
    assert_eq!(dataplane(&out), vec![State::Backup]);
    assert_eq!(
        m.poll_at(),
        Some(later + m.master_down_interval()),
        "master-down timer from the enable"
    );
    assert!(m.handle(later, Event::Enable).is_empty(), "enabled twice");
}

#[test]
fn disable_on_a_lone_master_ends_its_wait_after_three_advbase() {
    let (mut m, t) = master(0);
    let t1 = t + Duration::from_millis(5);
    m.handle(t1, Event::Disable);
    let until = m.poll_at().expect("bow-out wait");
    assert_eq!(until, t1 + Duration::from_secs(3));
    assert!(m.handle(Time(until.0 - 1), Event::Timer).is_empty());
    let out = m.handle(until, Event::Timer);
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Init, Why::Disabled)]
    );
    assert!(!m.is_stopped());
}

#[test]
fn disable_on_a_backup_or_before_start_is_init_at_once() {
    let mut b = backup(100, true);
    let out = b.handle(Time(SEC), Event::Disable);
    assert_eq!(
        transitions(&out),
        vec![(State::Backup, State::Init, Why::Disabled)]
    );
    assert_eq!(dataplane(&out), vec![State::Init]);
    assert_eq!(b.poll_at(), None);

    // Disabled before the start (a VHID added by a reload while disabled).
    let mut n = Vhid::new(params(100, true));
    assert!(n.handle(Time(0), Event::Disable).is_empty());
    assert!(n.handle(Time(0), Event::Start).is_empty());
    assert_eq!(n.state(), State::Init);
    let out = n.handle(Time(SEC), Event::Enable);
    assert_eq!(
        transitions(&out),
        vec![(State::Init, State::Backup, Why::Enabled)]
    );
}

#[test]
fn enable_with_the_link_down_waits_for_the_link() {
    let mut b = backup(100, true);
    b.handle(Time(SEC), Event::Disable);
    b.handle(Time(SEC), Event::LinkDown);
    assert!(b.handle(Time(2 * SEC), Event::Enable).is_empty());
    assert_eq!(b.state(), State::Init);
    let out = b.handle(Time(3 * SEC), Event::LinkUp);
    assert_eq!(
        transitions(&out),
        vec![(State::Init, State::Backup, Why::LinkUp)]
    );
}

#[test]
fn shutdown_during_a_disable_wait_still_stops() {
    let (mut m, t) = master(0);
    m.handle(t, Event::Disable);
    assert!(m
        .handle(t + Duration::from_millis(1), Event::Shutdown)
        .is_empty());
    let out = m.handle(t + Duration::from_millis(2), advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Backup, Why::Shutdown)]
    );
    assert_eq!(out.last(), Some(&Action::Stopped));

    // A disabled INIT VHID stops at once.
    let mut b = backup(100, true);
    b.handle(Time(SEC), Event::Disable);
    let out = b.handle(Time(2 * SEC), Event::Shutdown);
    assert_eq!(out.last(), Some(&Action::Stopped));
    assert!(b.is_stopped());
}

#[test]
fn disable_during_a_shutdown_wait_does_not_undo_the_stop() {
    let (mut m, t) = master(0);
    m.handle(t, Event::Shutdown);
    assert!(m
        .handle(t + Duration::from_millis(1), Event::Disable)
        .is_empty());
    let out = m.handle(t + Duration::from_millis(2), advert(100));
    assert_eq!(out.last(), Some(&Action::Stopped));
}

#[test]
fn enable_during_a_disable_wait_ends_in_backup() {
    let (mut m, t) = master(0);
    m.handle(t, Event::Disable);
    assert!(m
        .handle(t + Duration::from_millis(1), Event::Enable)
        .is_empty());
    assert!(!m.is_disabled() && m.is_leaving());
    let t2 = t + Duration::from_millis(2);
    let out = m.handle(t2, advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Backup, Why::Enabled)]
    );
    assert_eq!(m.poll_at(), Some(t2 + m.master_down_interval()));
    // Disabled again during the wait of a disable: INIT after all.
    let (mut m, t) = master(0);
    m.handle(t, Event::Disable);
    m.handle(t, Event::Enable);
    m.handle(t, Event::Disable);
    let out = m.handle(t + Duration::from_millis(2), advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Init, Why::Disabled)]
    );
}

#[test]
fn link_down_during_a_disable_wait_is_init_not_stopped() {
    let (mut m, t) = master(0);
    m.handle(t, Event::Disable);
    let out = m.handle(t + Duration::from_millis(1), Event::LinkDown);
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Init, Why::LinkDown)]
    );
    assert!(!m.is_stopped());
    assert!(m
        .handle(t + Duration::from_millis(2), Event::LinkUp)
        .is_empty());
    assert_eq!(m.state(), State::Init, "still disabled");
}

/// Maintenance mode is a demotion of 240 (controller/operator.rs). A MASTER
/// told so advertises its worse advskew at once, a peer with preempt takes
/// over on that advert (data path first, then its advert, then gratuitous
/// ARP), and the old MASTER's entry stays MASTER until it hears the new
/// master's advert: make-before-break, with no frame from the leaving node
/// after the handover.
#[test]
fn maintenance_demotion_hands_a_master_over_make_before_break() {
    let (mut a, t) = master(0);
    let mut b = backup(100, true);
    let t1 = t + Duration::from_millis(300);
    let out = a.handle(t1, Event::SetDemotion(240));
    assert!(transitions(&out).is_empty(), "still MASTER: {out:?}");
    assert_eq!(dataplane(&out), vec![State::Master]);
    assert!(out.contains(&Action::SendAdvert {
        advbase: 1,
        advskew: 240
    }));

    // The peer hears it and preempts: its data path, then its advert.
    let out = b.handle(t1 + Duration::from_micros(100), advert(240));
    assert_eq!(
        transitions(&out),
        vec![(State::Backup, State::Master, Why::Preempt)]
    );
    let pos = |want: fn(&Action) -> bool| out.iter().position(want).expect("action present");
    let dp = pos(|a| {
        matches!(
            a,
            Action::SetDataplane {
                state: State::Master,
                ..
            }
        )
    });
    let adv = pos(|a| matches!(a, Action::SendAdvert { advskew: 100, .. }));
    let ann = pos(|a| matches!(a, Action::Announce));
    assert!(dp < adv && adv < ann, "{out:?}");

    // Only the new master's advert moves the old one to BACKUP; until
    // then a timer keeps it advertising (and answering) as MASTER.
    let out = a.handle(t1 + Duration::from_micros(50), Event::Timer);
    assert!(dataplane(&out).iter().all(|s| *s == State::Master));
    assert_eq!(a.state(), State::Master);
    let out = a.handle(t1 + Duration::from_micros(200), advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Backup, Why::HigherPriorityMaster)]
    );
    assert_eq!(dataplane(&out), vec![State::Backup]);
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::SendAdvert { .. } | Action::SendBowOut)),
        "the leaving node sends nothing that could pull the virtual MAC back: {out:?}"
    );

    // In maintenance, the old master does not preempt back...
    let t2 = t1 + Duration::from_secs(1);
    let out = a.handle(t2, advert(100));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(a.state(), State::Backup);
    // ...until maintenance is off: then it preempts on the next advert, and
    // the peer steps back on hearing it.
    assert!(a
        .handle(t2 + Duration::from_millis(1), Event::SetDemotion(0))
        .is_empty());
    let t3 = t2 + Duration::from_millis(1390);
    let out = a.handle(t3, advert(100));
    assert_eq!(
        transitions(&out),
        vec![(State::Backup, State::Master, Why::Preempt)]
    );
    let out = b.handle(t3 + Duration::from_micros(100), advert(0));
    assert_eq!(
        transitions(&out),
        vec![(State::Master, State::Backup, Why::HigherPriorityMaster)]
    );
}

/// The limit of a demotion, as on the BSDs: a peer without preempt never
/// takes over from a live master, however demoted (`carp disable` bows out
/// and does).
#[test]
fn maintenance_demotion_does_not_move_a_master_whose_peer_does_not_preempt() {
    let (mut a, t) = master(0);
    let mut b = backup(100, false);
    a.handle(t + Duration::from_millis(1), Event::SetDemotion(240));
    let out = b.handle(t + Duration::from_millis(2), advert(240));
    assert!(transitions(&out).is_empty(), "{out:?}");
    assert_eq!(b.state(), State::Backup);
    // A bow-out moves it.
    let out = b.handle(
        t + Duration::from_millis(3),
        Event::Advert(PeerAdvert::BOW_OUT),
    );
    assert_eq!(
        transitions(&out),
        vec![(State::Backup, State::Master, Why::PeerBowedOut)]
    );
}
