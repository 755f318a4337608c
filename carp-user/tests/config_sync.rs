//! `[sync]` in `carp check`: every problem with its field, the key file's
//! checks (missing, too short, readable by others), and the defaults.
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use carp_user::config;

const BASE: &str = "[node]\nname = \"fw1\"\n\n[[vhid]]\nid = 1\ninterface = \"lan0\"\naddresses = [\"10.77.0.1/24\"]\npassword = \"secret\"\n\n";

/// A temporary key file with `len` bytes and `mode`; removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(name: &str, len: usize, mode: u32) -> KeyFile {
        let p = std::env::temp_dir().join(format!("carp-sync-key-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![b'k'; len]).expect("writing a key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        KeyFile(p)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn errors(sync: &str) -> Vec<String> {
    match config::parse(&format!("{BASE}{sync}")) {
        Ok(c) => panic!("expected problems, got {c:?}\n{sync}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn config_sync_defaults_and_filters() {
    let key = KeyFile::new("ok", 32, 0o600);
    let text = format!(
        "{BASE}[sync]\ninterface = \"sync0\"\npeer = \"10.99.0.2\"\nkey_file = \"{}\"\n",
        key.path()
    );
    let c = config::parse(&text).expect("valid").config;
    let s = c.sync.expect("[sync] read");
    assert_eq!(s.interface, "sync0");
    assert_eq!(
        s.peers,
        vec!["10.99.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(s.key, vec![b'k'; 32]);
    assert_eq!(s.bulk_timeout_s, config::DEFAULT_BULK_TIMEOUT_S);
    assert_eq!(s.max_states, config::DEFAULT_MAX_STATES);
    assert_eq!(s.refresh_interval_s, config::DEFAULT_REFRESH_INTERVAL_S);
    assert!(s.ignore_addresses.is_empty() && s.zones.is_none() && s.ignore_mark.is_none());

    let text = format!(
        "{BASE}[sync]\ninterface = \"sync0\"\npeers = [\"10.99.0.2\", \"10.99.0.3\"]\nkey_file = \"{}\"\n\
         bulk_timeout = 5\nmax_states = 1000\nrefresh_interval = 10\n\
         ignore_addresses = [\"10.99.0.0/24\", \"192.0.2.7\"]\nzones = [0, 7]\nignore_mark = \"0x10/0xf0\"\n",
        key.path()
    );
    let s = config::parse(&text).expect("valid").config.sync.unwrap();
    assert_eq!(s.peers.len(), 2);
    assert_eq!(
        (s.bulk_timeout_s, s.max_states, s.refresh_interval_s),
        (5, 1000, 10)
    );
    assert_eq!(s.zones, Some(vec![0, 7]));
    assert_eq!(s.ignore_mark, Some((0x10, 0xf0)));
    // The filters.
    use carp_user::conntrack::{CtEntry, Tuple, L4};
    let e = |src: &str, zone: u16, mark: u32| {
        let orig = Tuple {
            src: src.parse().unwrap(),
            dst: "10.88.0.100".parse().unwrap(),
            proto: 17,
            l4: L4::Ports { src: 1, dst: 2 },
        };
        CtEntry {
            zone,
            mark,
            ..CtEntry::new(orig, 30)
        }
    };
    assert!(s.replicates(&e("10.77.0.100", 0, 0)));
    assert!(!s.replicates(&e("10.99.0.1", 0, 0)), "ignored network");
    assert!(!s.replicates(&e("192.0.2.7", 0, 0)), "ignored address");
    assert!(!s.replicates(&e("10.77.0.100", 3, 0)), "zone not listed");
    assert!(!s.replicates(&e("10.77.0.100", 7, 0x1f)), "ignored mark");
    assert!(s.replicates(&e("10.77.0.100", 7, 0x2f)));
    // The routers' own CARP and sync traffic, never.
    for proto in [112, 240] {
        let mut own = e("10.77.0.100", 7, 0x2f);
        own.orig.proto = proto;
        own.reply.proto = proto;
        own.orig.l4 = L4::None;
        own.reply.l4 = L4::None;
        assert!(!s.replicates(&own), "protocol {proto}");
    }
}

#[test]
fn config_sync_every_error_message() {
    let good = KeyFile::new("good", 40, 0o600);
    let short = KeyFile::new("short", 16, 0o600);
    let open = KeyFile::new("open", 40, 0o644);
    let sync = |body: &str| format!("[sync]\n{body}\n");
    let k = |f: &KeyFile| format!("key_file = \"{}\"", f.path());
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            sync(&format!("peer = \"10.99.0.2\"\n{}", k(&good))),
            vec!["sync.interface: is required".into()],
        ),
        (
            sync(&format!("interface = \"sync0\"\n{}", k(&good))),
            vec!["sync.peer: is required (or peers = [...])".into()],
        ),
        (
            sync(&format!(
                "interface = \"sync0\"\npeer = \"10.99.0.2\"\npeers = [\"10.99.0.3\"]\n{}",
                k(&good)
            )),
            vec!["sync.peers: give either peer or peers, not both".into()],
        ),
        (
            sync(&format!("interface = \"sync0\"\npeers = [\"10.99.0.2\", \"nope\", \"224.0.0.240\", \"10.99.0.2\"]\n{}", k(&good))),
            vec![
                "sync.peers[1]: \"nope\" is not an IPv4 address".into(),
                "sync.peers[2]: 224.0.0.240 is not a unicast peer address".into(),
                "sync.peers[3]: 10.99.0.2 is listed twice".into(),
            ],
        ),
        (
            sync("interface = \"sync0\"\npeer = \"10.99.0.2\""),
            vec!["sync.key_file: is required".into()],
        ),
        (
            sync("interface = \"sync0\"\npeer = \"10.99.0.2\"\nkey_file = \"/nonexistent/carp.key\""),
            vec!["sync.key_file: cannot read /nonexistent/carp.key: No such file or directory (os error 2)".into()],
        ),
        (
            sync(&format!("interface = \"sync0\"\npeer = \"10.99.0.2\"\n{}", k(&short))),
            vec![format!(
                "sync.key_file: {} holds 16 bytes; a sync key needs at least 32",
                short.path()
            )],
        ),
        (
            sync(&format!("interface = \"sync0\"\npeer = \"10.99.0.2\"\n{}", k(&open))),
            vec![format!(
                "sync.key_file: {} has mode 0644; a key must not be readable by group or others (chmod 600)",
                open.path()
            )],
        ),
        (
            sync(&format!("interface = \"lan0\"\npeer = \"10.99.0.2\"\n{}", k(&good))),
            vec!["sync.interface: \"lan0\" is also the interface of vhid[0]; sync needs a link of its own".into()],
        ),
        (
            sync(&format!(
                "interface = \"sync0\"\npeer = \"10.99.0.2\"\n{}\nbulk_timeout = 0\nmax_states = -1\nrefresh_interval = 99999\n\
                 ignore_addresses = [\"x\"]\nzones = [70000]\nignore_mark = \"1/0\"\npeeer = 1",
                k(&good)
            )),
            vec![
                "sync.peeer: unknown key".into(),
                "sync.bulk_timeout: 0 is out of range 1..=3600 (seconds)".into(),
                "sync.refresh_interval: 99999 is out of range 1..=3600 (seconds)".into(),
                "sync.max_states: -1 is out of range 1..=4294967295".into(),
                "sync.ignore_addresses[0]: \"x\" is not an address or network like 10.0.0.0/8".into(),
                "sync.zones[0]: 70000 is out of range 0..=65535".into(),
                "sync.ignore_mark: \"1/0\" is not VALUE/MASK, like \"0x1/0x1\" or \"16/255\"".into(),
            ],
        ),
    ];
    for (body, want) in cases {
        let mut got = errors(&body);
        let mut want = want;
        got.sort();
        want.sort();
        assert_eq!(got, want, "--- [sync] ---\n{body}");
    }
    let top = format!("sync = 1\n{BASE}");
    match config::parse(&top) {
        Err(p) => assert_eq!(
            p.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["sync: expected a table ([sync]), found an integer".to_string()]
        ),
        Ok(_) => panic!("sync = 1 accepted"),
    }
}
