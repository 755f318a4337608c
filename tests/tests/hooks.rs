//! Tier 3: hooks (`on_master`, `on_backup`, `on_init`) on a pair of
//! controllers. Each hook appends its environment to a file; a link-down
//! failover and the preemption back must leave the expected lines, in order,
//! on both nodes. A hook that outlives `hook_timeout` is killed with its
//! process group, and the election does not wait for it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carp_tests::lab::{LabOptions, NodeParams, Router, LAN_VHID, WAN_VHID};
use carp_tests::netns::require_root;
use carp_tests::pair::{metric_value, serial, Pair};

/// Puts `lines` under `[node]` in `r`'s config (read at its next start).
fn add_node_lines(pair: &Pair, r: Router, lines: &str) {
    let path = pair.config_path(r);
    let text = std::fs::read_to_string(&path).expect("reading the config");
    assert!(text.starts_with("[node]\n"), "{text}");
    let text = text.replacen("[node]\n", &format!("[node]\n{lines}\n"), 1);
    std::fs::write(&path, text).expect("writing the config");
}

/// An executable script in the pair's directory.
fn script(pair: &Pair, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = pair.dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("writing the hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn toml_argv(argv: &[&str]) -> String {
    let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The lines of `path` for VHID `vhid` (each line starts with the VHID).
fn lines_of(path: &Path, vhid: u8) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').next() == Some(&vhid.to_string()))
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` holds exactly `want` for `vhid` (hooks run a moment
/// after the transition); panics with what it holds.
fn wait_lines(pair: &Pair, path: &Path, vhid: u8, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = lines_of(path, vhid);
        if got == want {
            return;
        }
        if Instant::now() >= deadline || got.len() > want.len() {
            panic!(
                "{}: VHID {vhid}\n got: {got:#?}\nwant: {want:#?}\n{}",
                path.display(),
                pair.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hooks_run_in_order_on_both_nodes_through_a_failover() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::new(
        LabOptions::default(),
        [NodeParams::with_advskew(0), NodeParams::with_advskew(100)],
    )
    .expect("building the lab");
    let hook = script(
        &pair,
        "hook.sh",
        "echo \"$CARP_VHID $CARP_INTERFACE $CARP_OLD_STATE $CARP_NEW_STATE $CARP_REASON \
         $CARP_NODE $CARP_HOOK $CARP_ADDRESSES home=${HOME:-none}\" >> \"$1\"\n",
    );
    let dir = pair.dir.clone();
    let out = |r: Router| dir.join(format!("{}.hooks", r.name()));
    for r in Router::ALL {
        let file = out(r);
        let argv = toml_argv(&[&hook.to_string_lossy(), &file.to_string_lossy()]);
        // All three from the node; VHID 2 turns on_backup off for itself.
        add_node_lines(
            &pair,
            r,
            &format!("on_master = {argv}\non_backup = {argv}\non_init = {argv}\nhook_timeout = 5"),
        );
        let wan = format!("[[vhid]]\nid = {WAN_VHID}\n");
        pair.replace_in_config(r, &wan, &format!("{wan}on_backup = []\n"));
    }
    pair.start_standard();

    // fw1 loses its LAN cable: VHID 1 goes INIT, the demotion hands VHID 2
    // to fw2 (preempt), fw2 takes VHID 1 after its master-down interval.
    pair.lab
        .set_link(Router::Fw1, "lan0", false)
        .expect("link down");
    for v in [LAN_VHID, WAN_VHID] {
        let ok = pair
            .node(Router::Fw2)
            .wait_for_state(v, "MASTER", Duration::from_secs(10));
        assert!(ok, "fw2 never took VHID {v}\n{}", pair.logs());
    }
    // Cable back: fw1 preempts both back.
    pair.lab
        .set_link(Router::Fw1, "lan0", true)
        .expect("link up");
    pair.wait_roles(Router::Fw1, Duration::from_secs(10));

    let line = |r: Router, vhid: u8, from: &str, to: &str, why: &str| {
        let (iface, vip) = if vhid == LAN_VHID {
            ("lan0", "10.77.0.1/24")
        } else {
            ("wan0", "10.88.0.1/24")
        };
        let hook = format!("on_{}", to.to_lowercase());
        format!(
            "{vhid} {iface} {from} {to} {why} {} {hook} {vip} home=none",
            r.name()
        )
    };
    let fw1 = Router::Fw1;
    let fw2 = Router::Fw2;
    wait_lines(
        &pair,
        &out(fw1),
        LAN_VHID,
        &[
            line(fw1, LAN_VHID, "INIT", "BACKUP", "started"),
            line(fw1, LAN_VHID, "BACKUP", "MASTER", "master_down"),
            line(fw1, LAN_VHID, "MASTER", "INIT", "link_down"),
            line(fw1, LAN_VHID, "INIT", "BACKUP", "link_up"),
            line(fw1, LAN_VHID, "BACKUP", "MASTER", "preempt"),
        ],
    );
    wait_lines(
        &pair,
        &out(fw1),
        WAN_VHID,
        &[
            line(fw1, WAN_VHID, "BACKUP", "MASTER", "master_down"),
            line(fw1, WAN_VHID, "BACKUP", "MASTER", "preempt"),
        ],
    );
    wait_lines(
        &pair,
        &out(fw2),
        LAN_VHID,
        &[
            line(fw2, LAN_VHID, "INIT", "BACKUP", "started"),
            line(fw2, LAN_VHID, "BACKUP", "MASTER", "master_down"),
            line(fw2, LAN_VHID, "MASTER", "BACKUP", "higher_priority_master"),
        ],
    );
    wait_lines(
        &pair,
        &out(fw2),
        WAN_VHID,
        &[line(fw2, WAN_VHID, "BACKUP", "MASTER", "preempt")],
    );
    let metrics = pair.metrics(fw1);
    // VHID 1 of fw1 went INIT -> BACKUP twice (start, link up).
    for (hook, n) in [("on_master", 2), ("on_backup", 2), ("on_init", 1)] {
        let series = format!(
            "carp_hook_runs_total{{vhid=\"1\",interface=\"lan0\",hook=\"{hook}\",result=\"ok\"}}"
        );
        assert_eq!(metric_value(&metrics, &series), n, "{series}\n{metrics}");
    }
}

#[test]
fn hooks_past_their_timeout_are_killed_and_never_delay_the_election() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let mut pair = Pair::new(
        LabOptions::default(),
        [NodeParams::with_advskew(0), NodeParams::with_advskew(100)],
    )
    .expect("building the lab");
    let dir = pair.dir.clone();
    // A shell that waits for a child: both must die at the timeout.
    let hook = script(
        &pair,
        "slow.sh",
        &format!(
            "echo $$ > {dir}/slow.$CARP_VHID.pid\nsleep 30\necho finished >> {dir}/slow.done\n",
            dir = dir.display()
        ),
    );
    add_node_lines(
        &pair,
        Router::Fw1,
        &format!(
            "on_master = {}\nhook_timeout = 5",
            toml_argv(&[&hook.to_string_lossy()])
        ),
    );
    // fw1 becomes MASTER (the hooks start and hang), then fw2 starts.
    pair.start_standard();
    let t0 = Instant::now();
    let sent = |pair: &mut Pair| {
        let st = pair.node(Router::Fw1).status_json(Duration::from_secs(5));
        st["vhids"][0]["adverts_sent"].as_u64().unwrap_or(0)
    };
    let sent0 = sent(&mut pair);
    // Longer than fw2's master-down interval (3.39 s) and than the timeout:
    // fw1's adverts keep flowing, so fw2 never takes over.
    while t0.elapsed() < Duration::from_secs(7) {
        for v in [LAN_VHID, WAN_VHID] {
            assert_eq!(
                pair.node(Router::Fw2).state(v).as_deref(),
                Some("BACKUP"),
                "fw2 took VHID {v} over while fw1's hook ran\n{}",
                pair.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent1 = sent(&mut pair);
    assert!(
        sent1 >= sent0 + 5,
        "fw1 sent {sent0} -> {sent1} adverts in 7 s\n{}",
        pair.logs()
    );

    for vhid in [LAN_VHID, WAN_VHID] {
        let pid =
            std::fs::read_to_string(dir.join(format!("slow.{vhid}.pid"))).unwrap_or_else(|e| {
                panic!(
                    "the hook of VHID {vhid} did not start: {e}\n{}",
                    pair.logs()
                )
            });
        let pid = pid.trim();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "hook process {pid} of VHID {vhid} still exists after its timeout"
        );
        // Nothing of its process group is left (the `sleep` child included).
        let survivors: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // Field 5 (pgrp), after the parenthesised command name.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(2))
                    .is_some_and(|pgrp| pgrp == pid)
            })
            .collect();
        assert!(
            survivors.is_empty(),
            "left of the hook's group: {survivors:?}"
        );
        let series = format!(
            "carp_hook_runs_total{{vhid=\"{vhid}\",interface=\"{}\",hook=\"on_master\",result=\"timeout\"}}",
            if vhid == LAN_VHID { "lan0" } else { "wan0" }
        );
        assert_eq!(
            metric_value(&pair.metrics(Router::Fw1), &series),
            1,
            "{series}"
        );
    }
    assert!(!dir.join("slow.done").exists(), "a killed hook finished");
    let log = pair.node(Router::Fw1).log();
    assert!(log.contains("hook timeout"), "{log}");
}
