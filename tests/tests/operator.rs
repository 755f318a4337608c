//! Tier 3: the operator commands of the status page (issue "parity" §2, §7):
//! `carp maintenance on|off`, `carp demote`, `carp disable|enable`, and what
//! `carp status` and the metrics say about them. Two controllers on the lab
//! (fw1 advskew 0, MASTER; fw2 advskew 100, preempt on).
//!
//! Bounds are generous correctness bounds for a noisy 2-core machine; the
//! one exact figure is the maintenance handover's: no probe lost at 1 ms.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use carp_tests::lab::{vmac, Router, LAN_VHID, LAN_VIP, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::node::{carp_bin, vhid_state};
use carp_tests::pair::{metric_value, serial, Pair};
use carp_tests::watch::arp_census;
use serde_json::Value;

const T_STATUS: Duration = Duration::from_secs(3);

/// `carp ARGS -c CONFIG` for router `r`, in its namespace; its stdout.
/// Panics with its output and both logs if it fails.
fn carp(pair: &Pair, r: Router, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", pair.router_ns(r).name()])
        .arg(carp_bin())
        .args(args)
        .arg("-c")
        .arg(pair.config_path(r))
        .output()
        .unwrap_or_else(|e| panic!("carp {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "carp {args:?} on {}: {:?}\nstdout: {stdout}\nstderr: {}\n{}",
        r.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        pair.logs()
    );
    stdout
}

/// The persistent state files of both routers (`carp_user::statefile`, the
/// default `state_dir`, named after the lab's control sockets), removed when
/// the test ends however it ends.
struct StateFiles(Vec<PathBuf>);

impl StateFiles {
    fn of(pair: &Pair) -> StateFiles {
        StateFiles(Router::ALL.iter().map(|&r| state_file(pair, r)).collect())
    }
}

impl Drop for StateFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn state_file(pair: &Pair, r: Router) -> PathBuf {
    carp_user::statefile::state_path(
        std::path::Path::new(carp_user::statefile::DEFAULT_STATE_DIR),
        &pair.lab.control_socket(r),
    )
}

fn vhid(st: &Value, id: u8) -> &Value {
    st["vhids"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["id"] == u64::from(id)))
        .unwrap_or_else(|| panic!("no VHID {id} in {st}"))
}

/// Exactly one answerer for the LAN VIP, `master`, counted on the switch.
fn assert_single_arp_answerer(pair: &Pair, master: Router, what: &str) {
    let census = arp_census(&pair.lab, LAN_VIP, 5, Duration::from_millis(50))
        .expect("ARP census on the LAN switch");
    if let Err(e) = census.check_single(master, vmac(LAN_VHID)) {
        panic!("{what}: {e}\n{}", pair.logs());
    }
}

/// Both VHIDs of `r` stay in `state` for `window` (polled).
fn assert_stays(pair: &mut Pair, r: Router, state: &str, window: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < window {
        for v in [LAN_VHID, WAN_VHID] {
            let now = pair.node(r).state(v);
            assert_eq!(
                now.as_deref(),
                Some(state),
                "{} VHID {v} left {state} after {:?}\n{}",
                r.name(),
                t0.elapsed(),
                pair.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status of `r` once its controller has started (before that it
/// answers with no VHIDs).
fn started_status(pair: &mut Pair, r: Router) -> Value {
    let t0 = Instant::now();
    loop {
        let st = pair.node(r).status_json(Duration::from_secs(10));
        if st["vhids"].as_array().is_some_and(|v| !v.is_empty()) {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} never started: {st}\n{}",
            r.name(),
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn maintenance_hands_over_without_loss_survives_a_restart_and_preempts_back() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let _files = StateFiles::of(&pair);

    // On: fw1 advertises advskew 240 at once, fw2 preempts, and fw1 keeps
    // forwarding until it hears fw2 (controller/operator.rs).
    let probe = pair.probe_through(Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let said = carp(&pair, Router::Fw1, &["maintenance", "on"]);
    assert!(said.contains("maintenance mode on"), "{said}");
    pair.wait_roles(Router::Fw2, Duration::from_secs(5));
    let rep = probe.wait().expect("probe");
    eprintln!("maintenance on: {rep}");
    assert!(
        rep.lost == 0 && rep.duplicates == 0 && rep.received > 0,
        "maintenance handover lost probes: {rep}\n{}",
        pair.logs()
    );

    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["maintenance"], true, "{st}");
    assert_eq!(st["demotion"], 240, "{st}");
    assert_eq!(st["demotion_reasons"]["maintenance"], 240, "{st}");
    assert_eq!(st["demotion_reasons"]["operator"], 0, "{st}");
    let lan = vhid(&st, LAN_VHID);
    assert_eq!(lan["effective_advskew"], 240, "{st}");
    assert_eq!(lan["last_transition"]["from"], "MASTER", "{st}");
    assert_eq!(lan["last_transition"]["to"], "BACKUP", "{st}");
    assert_eq!(
        lan["last_transition"]["why"], "higher_priority_master",
        "{st}"
    );
    assert_eq!(
        lan["master"]["address"],
        Router::Fw2.lan_ip().to_string(),
        "{st}"
    );
    assert_eq!(lan["master"]["advskew"], 100, "{st}");
    let m = pair.metrics(Router::Fw1);
    assert_eq!(
        metric_value(&m, "carp_demotion{reason=\"maintenance\"}"),
        240,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "carp_effective_advskew{vhid=\"1\",interface=\"lan0\"}"),
        240,
        "{m}"
    );
    assert!(
        m.contains("carp_master_advert_age_seconds{vhid=\"1\",interface=\"lan0\"}"),
        "a BACKUP reports its master's advert age\n{m}"
    );
    let m2 = pair.metrics(Router::Fw2);
    assert!(
        !m2.contains("carp_master_advert_age_seconds{vhid=\"1\""),
        "no master advert age while MASTER\n{m2}"
    );
    let file = state_file(&pair, Router::Fw1);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("state file {}: {e}", file.display()));
    assert!(text.contains("maintenance = true"), "{text}");

    // A restart keeps it: fw1 comes back demoted and stays BACKUP well past
    // its master-down interval (3 s + 240/256 s).
    pair.node(Router::Fw1).sigterm().unwrap();
    let exit = pair
        .node(Router::Fw1)
        .wait_exit(Duration::from_secs(10))
        .expect("fw1 stops on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", pair.logs());
    pair.start(Router::Fw1);
    let st = started_status(&mut pair, Router::Fw1);
    assert_eq!(st["maintenance"], true, "maintenance after a restart: {st}");
    assert_eq!(st["demotion_reasons"]["maintenance"], 240, "{st}");
    assert!(
        pair.node(Router::Fw1)
            .wait_for_state(LAN_VHID, "BACKUP", Duration::from_secs(5)),
        "{}",
        pair.logs()
    );
    assert_stays(&mut pair, Router::Fw1, "BACKUP", Duration::from_secs(5));
    assert_stays(&mut pair, Router::Fw2, "MASTER", Duration::from_millis(1));

    // Off: fw1 preempts back (fw2 keeps forwarding until it hears fw1).
    let probe = pair.probe_through(Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(300));
    let said = carp(&pair, Router::Fw1, &["maintenance", "off"]);
    assert!(said.contains("maintenance mode off"), "{said}");
    pair.wait_roles(Router::Fw1, Duration::from_secs(5));
    let rep = probe.wait().expect("probe");
    eprintln!("maintenance off: {rep}");
    assert!(
        rep.lost == 0 && rep.duplicates == 0,
        "preempting back lost probes: {rep}\n{}",
        pair.logs()
    );
    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["maintenance"], false, "{st}");
    assert_eq!(st["demotion"], 0, "{st}");
    assert_eq!(
        vhid(&st, LAN_VHID)["last_transition"]["why"],
        "preempt",
        "{st}"
    );
    assert!(
        vhid(&st, LAN_VHID).get("master").is_none(),
        "a MASTER hears no master: {st}"
    );
    assert!(!file.exists(), "maintenance off removes the state file");
    let table = carp(&pair, Router::Fw1, &["status"]);
    assert!(table.contains("MASTER HEARD"), "{table}");
}

#[test]
fn operator_demotion_shows_in_status_and_metrics() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let _files = StateFiles::of(&pair);

    let said = carp(&pair, Router::Fw1, &["demote", "+50"]);
    assert!(said.contains("operator demotion 50"), "{said}");
    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["demotion"], 50, "{st}");
    assert_eq!(st["demotion_reasons"]["operator"], 50, "{st}");
    assert_eq!(st["demotion_reasons"]["link"], 0, "{st}");
    for id in [LAN_VHID, WAN_VHID] {
        assert_eq!(vhid(&st, id)["effective_advskew"], 50, "{st}");
    }
    let m = pair.metrics(Router::Fw1);
    assert_eq!(
        metric_value(&m, "carp_demotion{reason=\"operator\"}"),
        50,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "carp_demotion{reason=\"maintenance\"}"),
        0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "carp_effective_advskew{vhid=\"2\",interface=\"wan0\"}"),
        50,
        "{m}"
    );
    assert!(
        m.contains("carp_last_transition_timestamp_seconds{vhid=\"1\",interface=\"lan0\"}"),
        "{m}"
    );
    // 50 < fw2's 100: fw1 stays MASTER, and fw2 hears it advertise 50.
    assert_stays(
        &mut pair,
        Router::Fw1,
        "MASTER",
        Duration::from_millis(1500),
    );
    let st2 = pair.node(Router::Fw2).status_json(T_STATUS);
    assert_eq!(vhid(&st2, LAN_VHID)["master"]["advskew"], 50, "{st2}");
    assert_eq!(
        vhid(&st2, LAN_VHID)["master"]["address"],
        Router::Fw1.lan_ip().to_string(),
        "{st2}"
    );
    let table = carp(&pair, Router::Fw1, &["status"]);
    assert!(table.contains("demotion 50 (operator 50)"), "{table}");

    let said = carp(&pair, Router::Fw1, &["demote", "-20"]);
    assert!(said.contains("operator demotion 30"), "{said}");
    carp(&pair, Router::Fw1, &["demote", "reset"]);
    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["demotion"], 0, "{st}");
    assert_eq!(st["demotion_reasons"]["operator"], 0, "{st}");
    let m = pair.metrics(Router::Fw1);
    assert_eq!(
        metric_value(&m, "carp_demotion{reason=\"operator\"}"),
        0,
        "{m}"
    );
}

#[test]
fn disable_bows_out_stays_silent_and_enable_brings_it_back() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::standard();
    let _files = StateFiles::of(&pair);

    let probe = pair.probe_through(Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let said = carp(&pair, Router::Fw1, &["disable"]);
    assert!(said.contains("CARP disabled"), "{said}");
    for v in [LAN_VHID, WAN_VHID] {
        assert!(
            pair.node(Router::Fw2)
                .wait_for_state(v, "MASTER", Duration::from_secs(3)),
            "fw2 took VHID {v} on the bow-out\n{}",
            pair.logs()
        );
        assert!(
            pair.node(Router::Fw1)
                .wait_for_state(v, "INIT", Duration::from_secs(4)),
            "fw1 VHID {v} INIT after the bow-out\n{}",
            pair.logs()
        );
    }
    let rep = probe.wait().expect("probe");
    eprintln!("disable: {rep}");
    // A bow-out hands over at once; its later copies may cost a probe or
    // two (docs/NEXT.md, "Bow-outs"), never a master-down interval.
    assert!(
        rep.max_gap < Duration::from_millis(500) && rep.duplicates == 0,
        "disable: {rep}\n{}",
        pair.logs()
    );
    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["disabled"], true, "{st}");
    assert_eq!(
        vhid(&st, LAN_VHID)["last_transition"]["why"],
        "disabled",
        "{st}"
    );

    // Silent and staying so: only fw2 answers, fw1 sends no advert and
    // stays INIT well past a master-down interval.
    assert_single_arp_answerer(&pair, Router::Fw2, "after carp disable");
    let sent = |pair: &mut Pair| {
        let st = pair.node(Router::Fw1).status_json(T_STATUS);
        vhid(&st, LAN_VHID)["adverts_sent"].as_u64().unwrap_or(0)
    };
    let before = sent(&mut pair);
    assert_stays(&mut pair, Router::Fw1, "INIT", Duration::from_secs(4));
    assert_eq!(
        sent(&mut pair),
        before,
        "a disabled VHID advertises nothing"
    );
    assert_single_arp_answerer(&pair, Router::Fw2, "4 s after carp disable");
    let table = carp(&pair, Router::Fw1, &["status"]);
    assert!(table.contains("CARP DISABLED"), "{table}");

    // Enable: BACKUP, then (advskew 0 < 100, preempt) MASTER again.
    let said = carp(&pair, Router::Fw1, &["enable"]);
    assert!(said.contains("CARP enabled"), "{said}");
    pair.wait_roles(Router::Fw1, Duration::from_secs(8));
    assert_single_arp_answerer(&pair, Router::Fw1, "after carp enable");
    let st = pair.node(Router::Fw1).status_json(T_STATUS);
    assert_eq!(st["disabled"], false, "{st}");
    assert!(
        vhid_state(&st, LAN_VHID).as_deref() == Some("MASTER"),
        "{st}"
    );
}
