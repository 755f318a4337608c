//! `carp check` for the hooks (`on_master`, `on_backup`, `on_init`,
//! `hook_timeout`) and the split-brain policy: every message with its field.

use carp_user::config::{self, Checked};
use carp_user::hooks::{HookConfig, HookKind, DEFAULT_HOOK_TIMEOUT_S};
use carp_user::splitbrain::Policy;

const VHID: &str =
    "[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"secret\"\n";

/// `[node]` with `node` lines, then the VHID with `vhid` lines.
fn file(node: &str, vhid: &str) -> String {
    format!("[node]\nname = \"fw1\"\n{node}\n{VHID}{vhid}\n")
}

fn accept(text: &str) -> Checked {
    config::parse(text).unwrap_or_else(|e| panic!("rejected:\n{e}\n--- file ---\n{text}"))
}

fn errors_of(text: &str) -> Vec<String> {
    match config::parse(text) {
        Ok(c) => panic!("expected problems, got {c:?}\n--- file ---\n{text}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

fn argv(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn config_hooks_defaults() {
    let c = accept(&file("", "")).config;
    assert_eq!(c.node.hooks, HookConfig::default());
    assert_eq!(c.node.hook_timeout_s, DEFAULT_HOOK_TIMEOUT_S);
    assert_eq!(c.node.split_brain, Policy::StepBack);
    assert_eq!(c.vhids[0].hooks, HookConfig::default());
}

#[test]
fn config_hooks_are_read_from_node_and_vhid() {
    let c = accept(&file(
        "on_master = [\"/bin/sh\", \"-c\", \"echo up >> /tmp/x\"]\non_init = [\"/bin/true\"]\n\
         hook_timeout = 30\nsplit_brain = \"alarm\"",
        "on_master = [\"/bin/true\", \"lan\"]\non_init = []",
    ));
    let checked = c;
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    let n = &checked.config.node;
    assert_eq!(
        n.hooks.on_master,
        argv(&["/bin/sh", "-c", "echo up >> /tmp/x"])
    );
    assert_eq!(n.hooks.on_backup, None);
    assert_eq!(n.hooks.on_init, argv(&["/bin/true"]));
    assert_eq!((n.hook_timeout_s, n.split_brain), (30, Policy::Alarm));
    let v = &checked.config.vhids[0].hooks;
    assert_eq!(v.on_master, argv(&["/bin/true", "lan"]));
    assert_eq!(v.on_init, Some(Vec::new()));
    // What runs for the VHID: its own on_master, nothing on INIT ([] turns the
    // node's off), nothing on BACKUP (neither sets one).
    let run = |k| HookConfig::resolve(v, &n.hooks, k).map(<[String]>::to_vec);
    assert_eq!(run(HookKind::Master), argv(&["/bin/true", "lan"]));
    assert_eq!(run(HookKind::Init), None);
    assert_eq!(run(HookKind::Backup), None);
}

#[test]
fn config_hooks_every_error_message() {
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("a string, not an array", file("on_master = \"/bin/true\"", ""),
         vec!["node.on_master: expected an array: the program's absolute path, then its arguments, found a string"]),
        ("relative program", file("on_backup = [\"notify.sh\", \"x\"]", ""),
         vec!["node.on_backup[0]: \"notify.sh\" must be an absolute path: hooks run without a shell and without a PATH search"]),
        ("not a string", file("", "on_init = [\"/bin/true\", 3]"),
         vec!["vhid[0].on_init[1]: expected a string, found an integer"]),
        ("NUL byte", file("on_master = [\"/bin/true\", \"a\\u0000b\"]", ""),
         vec!["node.on_master[1]: must not contain a NUL byte"]),
        ("timeout zero", file("hook_timeout = 0", ""),
         vec!["node.hook_timeout: 0 is out of range 1..=3600 (seconds)"]),
        ("timeout too long", file("hook_timeout = 3601", ""),
         vec!["node.hook_timeout: 3601 is out of range 1..=3600 (seconds)"]),
        ("timeout wrong type", file("hook_timeout = \"10\"", ""),
         vec!["node.hook_timeout: expected an integer, found a string"]),
        ("policy unknown", file("split_brain = \"fight\"", ""),
         vec!["node.split_brain: \"fight\" is not one of step_back, alarm"]),
        ("policy wrong type", file("split_brain = true", ""),
         vec!["node.split_brain: expected a string, found a boolean"]),
        ("split_brain is a node setting", file("", "split_brain = \"alarm\""),
         vec!["vhid[0].split_brain: unknown key"]),
        ("hook_timeout is a node setting", file("", "hook_timeout = 5"),
         vec!["vhid[0].hook_timeout: unknown key"]),
    ];
    for (name, text, want) in cases {
        assert_eq!(errors_of(&text), want, "{name}\n--- file ---\n{text}");
    }
}

/// A program that is missing, a directory or not executable is reported by
/// `carp check` but does not stop the node: the hook is not needed for the
/// election (a run that cannot start is logged and counted as spawn_error).
#[test]
fn config_hooks_warn_about_programs_that_cannot_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("carp-config-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let plain = dir.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let missing = dir.join("missing.sh");
    let text = file(
        &format!(
            "on_master = [{:?}]\non_backup = [{:?}]\non_init = [{:?}]",
            missing.display().to_string(),
            plain.display().to_string(),
            dir.display().to_string()
        ),
        "",
    );
    let warnings: Vec<String> = accept(&text)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "node.on_master[0]: {}: No such file",
            missing.display()
        )),
        "{warnings:?}"
    );
    assert!(
        warnings[0].ends_with("the hook cannot start until it exists"),
        "{warnings:?}"
    );
    assert_eq!(
        warnings[1],
        format!(
            "node.on_backup[0]: {} is not executable (chmod +x)",
            plain.display()
        )
    );
    assert_eq!(
        warnings[2],
        format!(
            "node.on_init[0]: {} is a directory, not a program",
            dir.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
