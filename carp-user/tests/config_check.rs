//! `carp check` semantics: every problem in a config file is reported, each with the path
//! of its field, and warnings do not stop a config from loading.
//!
//! Table-driven: each case is a whole file and the exact lines `carp check` prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use carp_user::config::{self, Checked, XdpMode};
use carp_user::election::Base;

const NODE: &str = "[node]\nname = \"fw1\"\n";
const VHID: &str =
    "[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"secret\"\n";

/// The example documented in config.rs (and the README), verbatim.
const DOCUMENTED: &str = r#"
[node]
name = "fw1"                             # required, non-empty
control_socket = "/run/carp/fw1.sock"    # default /run/carp/carp.sock
metrics_listen = "127.0.0.1:9701"        # optional, serves /metrics
xdp_mode = "auto"                        # auto | native | generic
holder_device = "carp0"                  # default "carp0": device holding the VIPs as /32

[[vhid]]
id = 1                    # 1..=255
interface = "lan0"
addresses = ["10.77.0.1/24"]
password = "secret"
advbase = 1               # seconds, 1..=255, default 1
# advbase_ms = 50         # or fast mode: 10..=999 ms, advbase 0 on the wire
advskew = 0               # 0..=254, default 0
preempt = true            # default true
"#;

/// A [node] with `extra` lines, then one [[vhid]] per entry of `vhids` (each a full body).
fn file(extra_node: &str, vhids: &[&str]) -> String {
    let mut s = format!("{NODE}{extra_node}\n");
    for v in vhids {
        s.push_str("[[vhid]]\n");
        s.push_str(v);
        s.push('\n');
    }
    s
}

/// A vhid body: the valid one with `key = value` lines replaced or added, or removed
/// when the value is `None`.
fn vhid(overrides: &[(&str, Option<&str>)]) -> String {
    let mut lines: Vec<(String, String)> = [
        ("id", "1"),
        ("interface", "\"lan0\""),
        ("addresses", "[\"10.77.0.1/24\"]"),
        ("password", "\"secret\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        lines.retain(|(lk, _)| lk != k);
        if let Some(v) = v {
            lines.push((k.to_string(), v.to_string()));
        }
    }
    lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

fn errors_of(text: &str) -> Vec<String> {
    match config::parse(text) {
        Ok(c) => panic!("expected problems, got a config: {c:?}\n--- file ---\n{text}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

fn accept(text: &str) -> Checked {
    config::parse(text).unwrap_or_else(|e| panic!("rejected:\n{e}\n--- file ---\n{text}"))
}

#[test]
fn config_every_error_message() {
    let two =
        |a: &[(&str, Option<&str>)], b: &[(&str, Option<&str>)]| file("", &[&vhid(a), &vhid(b)]);
    let one = |o: &[(&str, Option<&str>)]| file("", &[&vhid(o)]);
    let node = |extra: &str| file(extra, &[&vhid(&[])]);
    let second = [("id", Some("2")), ("addresses", Some("[\"10.77.1.1/24\"]"))];
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        // The file as a whole.
        (
            "syntax error",
            "[node\nname = 1".into(),
            vec!["config: line 1, column 6: invalid table header; expected `.`, `]`"],
        ),
        (
            "duplicate key is a syntax error",
            format!("{NODE}name = \"x\"\n{VHID}"),
            vec!["config: line 3, column 1: duplicate key `name` in table `node`"],
        ),
        ("missing value", "x = ".into(), vec!["config: line 1, column 5: not valid TOML"]),
        ("unknown top-level key", format!("peer = 1\n{NODE}{VHID}[extra]\n"), vec!["extra: unknown key", "peer: unknown key"]),
        // [node]
        ("no [node]", VHID.into(), vec!["node: is required"]),
        ("node not a table", format!("node = \"fw1\"\n{VHID}"), vec!["node: expected a table ([node]), found a string"]),
        ("name missing", format!("[node]\n{VHID}"), vec!["node.name: is required"]),
        ("name empty", format!("[node]\nname = \"\"\n{VHID}"), vec!["node.name: must not be empty"]),
        ("name blank", format!("[node]\nname = \"  \"\n{VHID}"), vec!["node.name: must not be empty"]),
        ("name wrong type", format!("[node]\nname = 1\n{VHID}"), vec!["node.name: expected a string, found an integer"]),
        ("node unknown key", node("nmae = \"x\""), vec!["node.nmae: unknown key"]),
        (
            "control_socket relative",
            node("control_socket = \"carp.sock\""),
            vec!["node.control_socket: \"carp.sock\" must be an absolute path"],
        ),
        ("control_socket empty", node("control_socket = \"\""), vec!["node.control_socket: must not be empty"]),
        (
            "control_socket too long",
            node(&format!("control_socket = \"/{}\"", "s".repeat(107))),
            vec!["node.control_socket: is 108 bytes long; a Unix socket path has at most 107"],
        ),
        (
            "metrics_listen without port",
            node("metrics_listen = \"127.0.0.1\""),
            vec!["node.metrics_listen: \"127.0.0.1\" is not an address:port like 127.0.0.1:9701 or [::1]:9701"],
        ),
        (
            "metrics_listen host name",
            node("metrics_listen = \"localhost:9701\""),
            vec!["node.metrics_listen: \"localhost:9701\" is not an address:port like 127.0.0.1:9701 or [::1]:9701"],
        ),
        (
            "metrics_listen wrong type",
            node("metrics_listen = 9701"),
            vec!["node.metrics_listen: expected a string, found an integer"],
        ),
        (
            "unknown xdp_mode",
            node("xdp_mode = \"offload\""),
            vec!["node.xdp_mode: \"offload\" is not one of auto, native, generic"],
        ),
        ("xdp_mode wrong type", node("xdp_mode = true"), vec!["node.xdp_mode: expected a string, found a boolean"]),
        (
            "holder_device too long",
            node("holder_device = \"carp-holder-device\""),
            vec!["node.holder_device: \"carp-holder-device\" is 18 bytes long; Linux interface names have at most 15 (IFNAMSIZ)"],
        ),
        (
            "holder_device is a CARP interface",
            node("holder_device = \"lan0\""),
            vec!["node.holder_device: \"lan0\" is also the interface of vhid[0]; the VIPs must be held on another device"],
        ),
        // [[vhid]] as a whole
        ("no [[vhid]]", NODE.into(), vec!["vhid: is required: at least one [[vhid]] table"]),
        ("empty vhid array", format!("vhid = []\n{NODE}"), vec!["vhid: is required: at least one [[vhid]] table"]),
        (
            "[vhid] instead of [[vhid]]",
            format!("{NODE}[vhid]\nid = 1\n"),
            vec!["vhid: expected an array of tables ([[vhid]]), found a table"],
        ),
        ("vhid entry not a table", format!("vhid = [1]\n{NODE}"), vec!["vhid[0]: expected a table, found an integer"]),
        (
            "misspelt [[vhids]]",
            format!("{NODE}[[vhids]]\nid = 1\n"),
            vec!["vhids: unknown key", "vhid: is required: at least one [[vhid]] table"],
        ),
        ("vhid unknown key", one(&[("advbase_us", Some("100"))]), vec!["vhid[0].advbase_us: unknown key"]),
        // id
        ("id missing", one(&[("id", None)]), vec!["vhid[0].id: is required"]),
        ("id 0", one(&[("id", Some("0"))]), vec!["vhid[0].id: 0 is out of range 1..=255"]),
        ("id 256", one(&[("id", Some("256"))]), vec!["vhid[0].id: 256 is out of range 1..=255"]),
        ("id string", one(&[("id", Some("\"1\""))]), vec!["vhid[0].id: expected an integer, found a string"]),
        // interface
        ("interface missing", one(&[("interface", None)]), vec!["vhid[0].interface: is required"]),
        ("interface empty", one(&[("interface", Some("\"\""))]), vec!["vhid[0].interface: must not be empty"]),
        (
            "interface 16 bytes",
            one(&[("interface", Some("\"sixteen_bytes_xx\""))]),
            vec!["vhid[0].interface: \"sixteen_bytes_xx\" is 16 bytes long; Linux interface names have at most 15 (IFNAMSIZ)"],
        ),
        (
            "interface with a slash",
            one(&[("interface", Some("\"lan/0\""))]),
            vec!["vhid[0].interface: \"lan/0\" is not a valid interface name: it contains '/'"],
        ),
        ("interface array", one(&[("interface", Some("[\"lan0\"]"))]), vec!["vhid[0].interface: expected a string, found an array"]),
        // addresses
        ("addresses missing", one(&[("addresses", None)]), vec!["vhid[0].addresses: is required"]),
        (
            "addresses empty",
            one(&[("addresses", Some("[]"))]),
            vec!["vhid[0].addresses: must not be empty: list at least one virtual address"],
        ),
        (
            "addresses a string",
            one(&[("addresses", Some("\"10.77.0.1/24\""))]),
            vec!["vhid[0].addresses: expected an array of strings, found a string"],
        ),
        (
            "address not a string",
            one(&[("addresses", Some("[\"10.77.0.1/24\", 7]"))]),
            vec!["vhid[0].addresses[1]: expected a string, found an integer"],
        ),
        (
            "unparsable address",
            one(&[("addresses", Some("[\"10.77.0.300/24\"]"))]),
            vec!["vhid[0].addresses[0]: \"10.77.0.300/24\" is not an IP address with a prefix length, like 10.77.0.1/24 or 2001:db8::1/64"],
        ),
        (
            "bad prefix length",
            one(&[("addresses", Some("[\"10.77.0.1/33\"]"))]),
            vec!["vhid[0].addresses[0]: \"10.77.0.1/33\" is not an IP address with a prefix length, like 10.77.0.1/24 or 2001:db8::1/64"],
        ),
        (
            "address without prefix",
            one(&[("addresses", Some("[\"10.77.0.1\"]"))]),
            vec!["vhid[0].addresses[0]: \"10.77.0.1\" has no prefix length: write the prefix of the network it serves, like 10.77.0.1/24"],
        ),
        (
            "IPv6 address without prefix",
            one(&[("addresses", Some("[\"10.77.0.1/24\", \"fd00::1/64\", \"fd00::2\"]"))]),
            vec!["vhid[0].addresses[2]: \"fd00::2\" has no prefix length: write the prefix of the network it serves, like fd00::2/64"],
        ),
        (
            "IPv4 peers of an IPv6-only VHID",
            one(&[
                ("addresses", Some("[\"fd00::1/64\"]")),
                ("peers", Some("[\"10.77.0.12\"]")),
            ]),
            vec!["vhid[0].peers[0]: 10.77.0.12 is an IPv4 peer of a VHID without IPv4 addresses: IPv4 adverts are sent only for IPv4 addresses"],
        ),
        (
            "IPv6 link-local, multicast, mapped",
            one(&[("addresses", Some("[\"10.77.0.1/24\", \"fe80::1/64\", \"ff02::12/128\", \"::ffff:10.0.0.1/128\"]"))]),
            vec![
                "vhid[0].addresses[1]: fe80::1 is link-local (only global or unique-local IPv6 VIPs can be held), not usable as a virtual address",
                "vhid[0].addresses[2]: ff02::12 is a multicast address, not usable as a virtual address",
                "vhid[0].addresses[3]: ::ffff:10.0.0.1 is IPv4-mapped (write the IPv4 address), not usable as a virtual address",
            ],
        ),
        (
            "same IPv6 VIP twice",
            one(&[("addresses", Some("[\"10.77.0.1/24\", \"2001:db8::1/64\", \"2001:db8::1/128\"]"))]),
            vec!["vhid[0].addresses[2]: 2001:db8::1 is already used by vhid[0].addresses[1]"],
        ),
        (
            "multicast address",
            one(&[("addresses", Some("[\"224.0.0.18/4\"]"))]),
            vec!["vhid[0].addresses[0]: 224.0.0.18 is a multicast address, not usable as a virtual address"],
        ),
        (
            "same VIP twice in one VHID",
            one(&[("addresses", Some("[\"10.77.0.1/24\", \"10.77.0.1/32\"]"))]),
            vec!["vhid[0].addresses[1]: 10.77.0.1 is already used by vhid[0].addresses[0]"],
        ),
        (
            "same VIP in two VHIDs",
            two(&[], &[("id", Some("2"))]),
            vec!["vhid[1].addresses[0]: 10.77.0.1 is already used by vhid[0].addresses[0]"],
        ),
        // password
        ("password missing", one(&[("password", None)]), vec!["vhid[0].password: is required"]),
        ("password empty", one(&[("password", Some("\"\""))]), vec!["vhid[0].password: must not be empty"]),
        ("password integer", one(&[("password", Some("1234"))]), vec!["vhid[0].password: expected a string, found an integer"]),
        // advbase, advskew, preempt
        ("advbase 0", one(&[("advbase", Some("0"))]), vec!["vhid[0].advbase: 0 is out of range 1..=255"]),
        ("advbase 256", one(&[("advbase", Some("256"))]), vec!["vhid[0].advbase: 256 is out of range 1..=255"]),
        ("advbase float", one(&[("advbase", Some("0.5"))]), vec!["vhid[0].advbase: expected an integer, found a float"]),
        // advbase_ms (fast mode)
        ("advbase_ms 9", one(&[("advbase_ms", Some("9"))]), vec!["vhid[0].advbase_ms: 9 is out of range 10..=999"]),
        ("advbase_ms 1000", one(&[("advbase_ms", Some("1000"))]), vec!["vhid[0].advbase_ms: 1000 is out of range 10..=999"]),
        ("advbase_ms 0", one(&[("advbase_ms", Some("0"))]), vec!["vhid[0].advbase_ms: 0 is out of range 10..=999"]),
        ("advbase_ms negative", one(&[("advbase_ms", Some("-50"))]), vec!["vhid[0].advbase_ms: -50 is out of range 10..=999"]),
        ("advbase_ms huge", one(&[("advbase_ms", Some("70000"))]), vec!["vhid[0].advbase_ms: 70000 is out of range 10..=999"]),
        ("advbase_ms string", one(&[("advbase_ms", Some("\"50ms\""))]), vec!["vhid[0].advbase_ms: expected an integer, found a string"]),
        (
            "advbase and advbase_ms",
            one(&[("advbase", Some("1")), ("advbase_ms", Some("50"))]),
            vec!["vhid[0].advbase_ms: advbase and advbase_ms are mutually exclusive: set advbase (whole seconds) or advbase_ms (fast mode), not both"],
        ),
        (
            "advbase and a bad advbase_ms",
            one(&[("advbase", Some("1")), ("advbase_ms", Some("5"))]),
            vec!["vhid[0].advbase_ms: 5 is out of range 10..=999"],
        ),
        ("advskew 300", two(&[], &[&second[..], &[("advskew", Some("300"))]].concat()), vec!["vhid[1].advskew: 300 is out of range 0..=254"]),
        ("advskew 255", one(&[("advskew", Some("255"))]), vec!["vhid[0].advskew: 255 is out of range 0..=254"]),
        ("advskew negative", one(&[("advskew", Some("-1"))]), vec!["vhid[0].advskew: -1 is out of range 0..=254"]),
        ("preempt string", one(&[("preempt", Some("\"yes\""))]), vec!["vhid[0].preempt: expected a boolean, found a string"]),
        // Across VHIDs
        (
            "duplicate (interface, id)",
            two(&[], &[("addresses", Some("[\"10.77.1.1/24\"]"))]),
            vec!["vhid[1].id: vhid 1 on lan0 is already defined by vhid[0]"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        let got = errors_of(text);
        if &got != expected {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  got      {got:#?}\n--- file ---\n{text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn config_every_warning_message() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "advskew above the demotion cap",
            file("", &[&vhid(&[("advskew", Some("241"))])]),
            vec!["vhid[0].advskew: 241 ties with any demoted node: demotion caps at 240"],
        ),
        (
            "advskew at the demotion cap",
            file("", &[&vhid(&[("advskew", Some("240"))])]),
            vec![],
        ),
        (
            "password over 20 bytes",
            file(
                "",
                &[&vhid(&[("password", Some("\"123456789012345678901\""))])],
            ),
            vec!["vhid[0].password: only the first 20 bytes are used, as in the BSDs"],
        ),
        (
            "password of 20 bytes",
            file(
                "",
                &[&vhid(&[("password", Some("\"12345678901234567890\""))])],
            ),
            vec![],
        ),
        (
            "advbase 255",
            file("", &[&vhid(&[("advbase", Some("255"))])]),
            vec!["vhid[0].advbase: advbase 255 is what a bow-out sends"],
        ),
        (
            "advbase_ms at its floor, within the data path's advert budget",
            file("", &[&vhid(&[("advbase_ms", Some("10"))])]),
            vec![],
        ),
        (
            "all three",
            file(
                "",
                &[&vhid(&[
                    ("advbase", Some("255")),
                    ("advskew", Some("254")),
                    ("password", Some("\"a password of 28 bytes......\"")),
                ])],
            ),
            vec![
                "vhid[0].password: only the first 20 bytes are used, as in the BSDs",
                "vhid[0].advbase: advbase 255 is what a bow-out sends",
                "vhid[0].advskew: 254 ties with any demoted node: demotion caps at 240",
            ],
        ),
    ];
    for (name, text, expected) in &cases {
        let got: Vec<String> = accept(text)
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(&got, expected, "{name}\n--- file ---\n{text}");
    }
}

#[test]
fn config_documented_example_loads() {
    let checked = accept(DOCUMENTED);
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    let c = checked.config;
    assert_eq!(c.node.name, "fw1");
    assert_eq!(c.node.control_socket, PathBuf::from("/run/carp/fw1.sock"));
    assert_eq!(
        c.node.metrics_listen,
        Some("127.0.0.1:9701".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(c.node.xdp_mode, XdpMode::Auto);
    assert_eq!(c.node.holder_device, "carp0");
    assert_eq!(c.vhids.len(), 1);
    let v = &c.vhids[0];
    assert_eq!(
        (v.id, v.interface.as_str(), v.password.as_str()),
        (1, "lan0", "secret")
    );
    assert_eq!(v.addresses, vec!["10.77.0.1/24".parse().unwrap()]);
    assert_eq!(
        (v.advbase, v.advskew, v.preempt),
        (Base::Seconds(1), 0, true)
    );
}

#[test]
fn config_all_settings_are_read() {
    let text = file(
        "xdp_mode = \"generic\"\nholder_device = \"lo\"\nmetrics_listen = \"[::1]:9100\"",
        &[
            &vhid(&[
                ("addresses", Some("[\"10.77.0.1/24\", \"10.77.0.2/24\"]")),
                ("advbase", Some("3")),
                ("advskew", Some("100")),
                ("preempt", Some("false")),
            ]),
            // The same VHID number on another interface is another virtual host.
            &vhid(&[
                ("interface", Some("\"wan0\"")),
                ("addresses", Some("[\"192.0.2.1/29\"]")),
            ]),
            &vhid(&[
                ("id", Some("255")),
                ("addresses", Some("[\"10.77.0.3/24\"]")),
                ("advbase_ms", Some("50")),
            ]),
        ],
    );
    let c = accept(&text).config;
    assert_eq!(c.node.xdp_mode, XdpMode::Generic);
    assert_eq!(c.node.holder_device, "lo");
    assert_eq!(c.node.metrics_listen, Some("[::1]:9100".parse().unwrap()));
    assert_eq!(c.vhids.len(), 3);
    assert_eq!(c.vhids[0].addresses.len(), 2);
    assert_eq!(
        (c.vhids[0].advbase, c.vhids[0].advskew, c.vhids[0].preempt),
        (Base::Seconds(3), 100, false)
    );
    // advbase_ms alone: fast mode.
    assert_eq!(c.vhids[1].advbase, Base::Seconds(1));
    assert_eq!(c.vhids[2].advbase, Base::Millis(50));
    assert_eq!((c.vhids[1].id, c.vhids[1].interface.as_str()), (1, "wan0"));
    assert_eq!(c.vhids[2].id, 255);
    for (mode, want) in [("native", XdpMode::Native), ("auto", XdpMode::Auto)] {
        let c = accept(&file(
            &format!("xdp_mode = \"{mode}\""),
            &[VHID.trim_start_matches("[[vhid]]\n")],
        ))
        .config;
        assert_eq!(c.node.xdp_mode, want);
        assert_eq!(want.to_string(), mode);
    }
}

#[test]
fn config_three_problems_make_three_lines() {
    let text = file(
        "xdp_mode = \"fast\"",
        &[&vhid(&[
            ("advskew", Some("300")),
            ("password", Some("\"\"")),
        ])],
    );
    let problems = config::parse(&text).expect_err("three problems");
    let shown = problems.to_string();
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        vec![
            "node.xdp_mode: \"fast\" is not one of auto, native, generic",
            "vhid[0].password: must not be empty",
            "vhid[0].advskew: 300 is out of range 0..=254",
        ],
        "{shown}"
    );
    assert_eq!(problems.0.len(), 3);
}

#[test]
fn config_errors_in_several_tables_are_all_reported() {
    let text = "[node]\nbogus = 1\n[[vhid]]\nid = 0\n[[vhid]]\ninterface = \"a:b\"\n";
    assert_eq!(
        errors_of(text),
        vec![
            "node.bogus: unknown key",
            "node.name: is required",
            "vhid[0].id: 0 is out of range 1..=255",
            "vhid[0].interface: is required",
            "vhid[0].addresses: is required",
            "vhid[0].password: is required",
            "vhid[1].id: is required",
            "vhid[1].interface: \"a:b\" is not a valid interface name: it contains ':'",
            "vhid[1].addresses: is required",
            "vhid[1].password: is required",
        ]
    );
}

#[test]
fn config_load_reads_a_file_and_reports_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("carp-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("carp.toml");
    std::fs::write(&path, DOCUMENTED).expect("write config");
    let loaded = config::load(&path);
    let missing = config::load(Path::new("/nonexistent/carp.toml"));
    std::fs::remove_dir_all(&dir).expect("remove temp dir");

    assert_eq!(
        loaded.expect("documented example loads").config.node.name,
        "fw1"
    );
    assert_eq!(
        missing.expect_err("missing file").to_string(),
        "config: cannot read /nonexistent/carp.toml: No such file or directory (os error 2)"
    );
}

/// Unicast peers (`crate::peers`): read per VHID, refused field by field,
/// and never a VIP of any VHID. Being on the interface's link is checked at
/// start and on reload (it needs the interface).
#[test]
fn config_unicast_peers() {
    let text = file(
        "",
        &[&vhid(&[(
            "peers",
            Some("[\"10.77.0.12\", \"10.77.0.13\"]"),
        )])],
    );
    let c = accept(&text).config;
    assert_eq!(
        c.vhids[0].peers,
        [
            "10.77.0.12".parse::<std::net::IpAddr>().unwrap(),
            "10.77.0.13".parse().unwrap()
        ]
    );
    assert!(accept(&file("", &[&vhid(&[])])).config.vhids[0]
        .peers
        .is_empty());
    let two = vhid(&[
        ("id", Some("2")),
        ("addresses", Some("[\"10.77.0.2/24\"]")),
        (
            "peers",
            Some("[\"10.77.0.1\", \"10.77.0.2\", \"10.77.0.2\", \"ff02::12\"]"),
        ),
    ]);
    assert_eq!(
        errors_of(&file("", &[&vhid(&[]), &two])),
        [
            "vhid[1].peers[2]: 10.77.0.2 is listed twice",
            "vhid[1].peers[3]: ff02::12 is not a unicast peer address",
            "vhid[1].peers[0]: 10.77.0.1 is a virtual address (vhid[0].addresses[0]); a peer is another node's own address",
            "vhid[1].peers[1]: 10.77.0.2 is a virtual address (vhid[1].addresses[0]); a peer is another node's own address",
        ]
    );
    assert_eq!(
        errors_of(&file("", &[&vhid(&[("peers", Some("[]"))])])),
        ["vhid[0].peers: must name at least one peer (leave peers out to advertise to 224.0.0.18)"]
    );
}

#[test]
fn config_ipv6_addresses_go_to_addresses6() {
    let text = format!(
        "{NODE}{}",
        VHID.replace(
            "addresses = [\"10.77.0.1/24\"]",
            "addresses = [\"10.77.0.1/24\", \"2001:db8::1/64\", \"fd00:77::1/64\"]"
        )
    );
    assert!(text.contains("2001:db8::1/64"), "the VHID template changed");
    let c = accept(&text).config;
    let v = &c.vhids[0];
    assert_eq!(v.addresses, vec!["10.77.0.1/24".parse().unwrap()]);
    assert_eq!(
        v.addresses6,
        vec![
            "2001:db8::1/64".parse().unwrap(),
            "fd00:77::1/64".parse().unwrap()
        ]
    );
}

/// A VHID whose addresses are all IPv6 is IPv6-only: accepted, with nothing
/// in `addresses` (its adverts go to `ff02::12` only, `advert_plan`).
#[test]
fn config_ipv6_only_vhid_is_accepted() {
    let text = format!(
        "{NODE}{}",
        VHID.replace(
            "addresses = [\"10.77.0.1/24\"]",
            "addresses = [\"2001:db8:77::1/64\"]"
        )
    );
    assert!(
        text.contains("2001:db8:77::1/64"),
        "the VHID template changed"
    );
    let checked = accept(&text);
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    let v = &checked.config.vhids[0];
    assert!(v.addresses.is_empty());
    assert_eq!(v.addresses6, vec!["2001:db8:77::1/64".parse().unwrap()]);
    assert!(v.peers.is_empty());
}

/// IPv6 peers: next to IPv4 ones in one list, in the order given; a
/// link-local one without zone; never an IPv6 VIP; only on a VHID with
/// IPv6 addresses.
#[test]
fn config_ipv6_unicast_peers() {
    let dual = "[\"10.77.0.1/24\", \"2001:db8:77::1/64\"]";
    let text = file(
        "",
        &[&vhid(&[
            ("addresses", Some(dual)),
            (
                "peers",
                Some("[\"fe80::12\", \"10.77.0.12\", \"2001:db8:77::12\"]"),
            ),
        ])],
    );
    let c = accept(&text).config;
    assert_eq!(
        c.vhids[0].peers,
        [
            "fe80::12".parse::<std::net::IpAddr>().unwrap(),
            "10.77.0.12".parse().unwrap(),
            "2001:db8:77::12".parse().unwrap(),
        ]
    );
    assert_eq!(
        errors_of(&file(
            "",
            &[&vhid(&[
                ("addresses", Some(dual)),
                ("peers", Some("[\"2001:db8:77::1\", \"fe80::12%lan0\"]")),
            ])]
        )),
        [
            "vhid[0].peers[1]: \"fe80::12%lan0\": write a link-local peer without %zone (its scope is the VHID's interface)",
            "vhid[0].peers[0]: 2001:db8:77::1 is a virtual address (vhid[0].addresses[1]); a peer is another node's own address",
        ]
    );
    assert_eq!(
        errors_of(&file("", &[&vhid(&[("peers", Some("[\"fe80::12\"]"))])])),
        ["vhid[0].peers[0]: fe80::12 is an IPv6 peer of a VHID without IPv6 addresses: IPv6 adverts are sent only for IPv6 addresses"]
    );
}
