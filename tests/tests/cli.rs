//! The `carp` command as a user meets it: `check` exit codes and messages,
//! `status` without a controller, and `run` failing with one clear line.

use std::process::Command;

use carp_tests::lab::{LabOptions, NodeParams, Router};
use carp_tests::netns::{require_root, unique_prefix, NetNs};
use carp_tests::node::carp_bin;
use carp_tests::pair::Pair;

/// A config file in a scratch directory of its own, removed with it.
struct TmpConfig {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl AsRef<std::ffi::OsStr> for TmpConfig {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TmpConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tmp(name: &str, text: &str) -> TmpConfig {
    let dir = std::env::temp_dir().join(format!("{}cli", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    TmpConfig { dir, path }
}

#[test]
fn check_lists_every_problem_and_exits_2() {
    let cfg = tmp(
        "bad.toml",
        r#"
[node]
name = "fw1"
xdp_mode = "turbo"

[[vhid]]
id = 1
interface = "lan0"
addresses = ["10.77.0.1/24"]
password = "secret"

[[vhid]]
id = 0
interface = "lan0"
addresses = ["10.77.0.2/24"]
password = "secret"
advskew = 300
"#,
    );
    let out = Command::new(carp_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem:\n{err}");
    assert!(
        err.contains("vhid[1].advskew: 300 is out of range 0..=254"),
        "{err}"
    );
    assert!(err.contains("vhid[1].id:"), "{err}");
    assert!(err.contains("node.xdp_mode:"), "{err}");
}

#[test]
fn check_accepts_the_lab_config_and_warns_without_failing() {
    let good = tmp(
        "good.toml",
        "[node]\nname = \"fw1\"\n[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"secret\"\nadvskew = 250\n",
    );
    let out = Command::new(carp_bin())
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: vhid[0].advskew"), "{err}");
}

#[test]
fn status_without_a_controller_says_so() {
    let sock = std::env::temp_dir().join(format!("{}none.sock", unique_prefix()));
    let cfg = tmp(
        "st.toml",
        &format!(
            "[node]\nname = \"fw1\"\ncontrol_socket = \"{}\"\n[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"x\"\n",
            sock.display()
        ),
    );
    let out = Command::new(carp_bin())
        .args(["status", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no controller is listening"), "{err}");
}

/// The last stderr line of a failed `carp run` (earlier lines are logs).
fn failure_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn run_with_a_missing_interface_fails_with_one_clear_line() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new(format!("{}lonely", unique_prefix())).unwrap();
    let cfg = tmp(
        "missing.toml",
        &format!(
            "[node]\nname = \"x\"\ncontrol_socket = \"/run/carp/{}.sock\"\n[[vhid]]\nid = 1\ninterface = \"nope0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"x\"\n",
            ns.name()
        ),
    );
    let out = ns
        .command(carp_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(failure_line(&out), "carp run: interface nope0 not found");
}

/// A LAN-only lab with configs written and no controller started.
fn lan_only_pair() -> Pair {
    let opts = LabOptions {
        with_wan: false,
        ..LabOptions::default()
    };
    Pair::new(opts, [NodeParams::default(), NodeParams::default()]).expect("building the lab")
}

#[test]
fn run_without_root_fails_with_one_clear_line() {
    if !require_root() {
        return;
    }
    let pair = lan_only_pair();
    let ns = pair.router_ns(Router::Fw1);
    let out = ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(carp_bin())
        .args(["run", "-c"])
        .arg(pair.config_path(Router::Fw1))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(failure_line(&out).starts_with("carp run: "), "{out:?}");
    assert!(failure_line(&out).contains("needs root"), "{out:?}");
}

#[test]
fn run_on_an_interface_without_an_address_is_refused() {
    if !require_root() {
        return;
    }
    let pair = lan_only_pair();
    let ns = pair.router_ns(Router::Fw1);
    ns.ip(["addr", "flush", "dev", "lan0"]).unwrap();
    let out = ns
        .command(carp_bin())
        .args(["run", "-c"])
        .arg(pair.config_path(Router::Fw1))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        failure_line(&out).contains("lan0 has no IPv4 address of its own"),
        "{out:?}"
    );
    // Nothing was left behind by the failed start.
    let link = Pair::sh(ns, &["ip", "link", "show"]);
    assert!(!link.contains("xdp"), "{link}");
}
