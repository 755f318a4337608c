//! The controller's configuration file (TOML), checked the way `carp check` reports it.
//!
//! ```toml
//! [node]
//! name = "fw1"                             # required, non-empty
//! control_socket = "/run/carp/fw1.sock"    # default /run/carp/carp.sock
//! metrics_listen = "127.0.0.1:9701"        # optional, serves /metrics
//! xdp_mode = "auto"                        # auto | native | generic
//! holder_device = "carp0"                  # default "carp0": device holding the VIPs as /32
//! bpffs = "/sys/fs/bpf"                    # default: where the data path is pinned
//! state_dir = "/var/lib/carp"              # default: persistent operator state (maintenance)
//! # on_master = ["/usr/local/sbin/vip-up", "lan"]  # hooks: argv, no shell; on_backup, on_init too
//! hook_timeout = 10                        # seconds a hook may run before it is killed
//! split_brain = "step_back"                # step_back | alarm (needs [sync])
//!
//! [[vhid]]
//! id = 1                    # 1..=255
//! interface = "lan0"
//! addresses = ["10.77.0.1/24"]
//! password = "secret"
//! advbase = 1               # seconds, 1..=255, default 1
//! # advbase_ms = 50         # or fast mode: 10..=999 ms, advbase 0 on the wire
//! advskew = 0               # 0..=254, default 0
//! preempt = true            # default true
//! # peers = ["10.77.0.12"]  # unicast adverts to these nodes only (crate::peers)
//! # on_backup = []          # per VHID: replaces the node's hook; [] turns it off
//!
//! [sync]                    # optional: conntrack replication (see crate::sync)
//! interface = "sync0"
//! peer = "10.99.0.2"        # or peers = ["10.99.0.2", "10.99.0.3"]
//! key_file = "/etc/carp/sync.key"
//! ```
//!
//! Why not `#[derive(Deserialize)]` straight into [`Config`]: serde stops at the first
//! error, and an operator fixing a file wants every problem at once. So the text is
//! parsed into a loose [`toml::Table`] and each field is checked by hand, with a path
//! (`node.name`, `vhid[1].advskew`, 0-based into the `[[vhid]]` array) in every
//! message. Problems that do not stop the node from running are warnings.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use toml::{Table, Value};

use crate::election::{Base, ADVBASE_MS_MAX, ADVBASE_MS_MIN};

/// Control socket used when `node.control_socket` is not set.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/carp/carp.sock";
// The data path lets one sender put at most ADVERT_BUDGET_RATE adverts a
// second into the controller's ring (carp-common): every allowed `advbase_ms`
// must stay within it, or a fast master's adverts would be dropped as
// `carp_over_budget`.
const _: () = assert!(
    1000 / carp_common::ADVERT_BUDGET_RATE < crate::election::ADVBASE_MS_MIN as u64,
    "the XDP advert budget must allow the shortest advbase_ms"
);

/// bpffs used when `node.bpffs` is not set.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// VIP holder device used when `node.holder_device` is not set.
pub const DEFAULT_HOLDER_DEVICE: &str = "carp0";
/// Longest Linux interface name in bytes: `IFNAMSIZ` (16) less the terminating NUL.
pub const MAX_IFNAME_BYTES: usize = 15;
/// The BSDs key the advert HMAC with at most this many bytes of the password
/// (`CARP_KEY_LEN` in ip_carp.c); the rest is ignored.
pub const MAX_PASSWORD_BYTES: usize = 20;
/// Demotion raises the sent advskew to at most this value (FreeBSD's
/// `CARP_MAXSKEW`; see docs/protocol.md §2, "Intervals and effective advskew").
pub const DEMOTION_CAP: u8 = 240;
/// `sizeof(sun_path)` on Linux, including the terminating NUL.
const SUN_PATH_LEN: usize = 108;

/// A checked configuration: what `carp run` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `[node]` table: settings of this controller as a whole.
    pub node: NodeConfig,
    /// The `[[vhid]]` tables, in file order; at least one.
    pub vhids: Vec<VhidConfig>,
    /// The optional `[sync]` table: conntrack replication to the peers.
    pub sync: Option<SyncConfig>,
}

/// Smallest accepted sync key: HMAC-SHA256 gains nothing from longer keys than
/// its output, and less than 32 bytes is guessable.
pub const MIN_SYNC_KEY_BYTES: usize = 32;
/// Default `sync.bulk_timeout` in seconds.
pub const DEFAULT_BULK_TIMEOUT_S: u32 = 30;
/// Default `sync.max_states`.
pub const DEFAULT_MAX_STATES: u32 = 2_000_000;
/// Default `sync.refresh_interval` in seconds.
pub const DEFAULT_REFRESH_INTERVAL_S: u32 = 20;

/// The `[sync]` table: pfsync-style replication of the kernel's conntrack table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// `interface` (required): the dedicated link to the peers. Frames are sent
    /// and accepted on it only.
    pub interface: String,
    /// `peer = "A"` or `peers = ["A", ...]` (required, one of the two): the
    /// peers' IPv4 addresses on that link. Frames from anyone else are dropped
    /// by XDP.
    pub peers: Vec<std::net::Ipv4Addr>,
    /// `key_file` (required): the pre-shared key, at least 32 bytes, mode
    /// 0600 or stricter (refused if group or world may read it).
    pub key_file: PathBuf,
    /// The key read from `key_file` (whitespace at the end is not trimmed:
    /// the bytes are the key).
    pub key: Vec<u8>,
    /// `bulk_timeout` (seconds, default 30, 1..=3600): how long a starting node
    /// keeps its VHIDs demoted waiting for the peer's bulk transfer.
    pub bulk_timeout_s: u32,
    /// `max_states` (default 2 000 000): at most this many states are
    /// installed from the peers; more are refused, counted and alarmed.
    pub max_states: u32,
    /// `refresh_interval` (seconds, default 20, 1..=3600): every entry is
    /// re-sent at least this often, so the peer's copy does not expire while
    /// the original lives (the kernel sends no event when a timeout is
    /// merely refreshed by traffic).
    pub refresh_interval_s: u32,
    /// `ignore_addresses` (default none): entries whose original source or
    /// destination is in one of these networks are not replicated (e.g. the
    /// routers' own management traffic).
    pub ignore_addresses: Vec<IpNet>,
    /// `zones` (default: all): replicate only entries in these conntrack zones.
    pub zones: Option<Vec<u16>>,
    /// `ignore_mark` (default none): `"VALUE/MASK"`; entries with
    /// `mark & MASK == VALUE` are not replicated.
    pub ignore_mark: Option<(u32, u32)>,
}

impl SyncConfig {
    /// Whether the filters let this entry be replicated. CARP (IP protocol
    /// 112) and sync (240) entries never are, whatever the filters: they are
    /// the routers' own link-local control traffic (unicast adverts and sync
    /// frames each leave a conntrack entry on both routers), never a session
    /// that a failover must carry.
    pub fn replicates(&self, e: &crate::conntrack::CtEntry) -> bool {
        if e.orig.proto == carp_common::IPPROTO_CARP || e.orig.proto == carp_common::IPPROTO_SYNC {
            return false;
        }
        if let Some(zones) = &self.zones {
            if !zones.contains(&e.zone) {
                return false;
            }
        }
        if let Some((value, mask)) = self.ignore_mark {
            if e.mark & mask == value {
                return false;
            }
        }
        !self
            .ignore_addresses
            .iter()
            .any(|n| n.contains(&e.orig.src) || n.contains(&e.orig.dst))
    }
}

/// The `[node]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// `name` (required, non-empty): this node's name, shown by `carp status` and in logs.
    pub name: String,
    /// `control_socket` (default `/run/carp/carp.sock`): absolute path of the Unix socket
    /// that `carp status` talks to. Created with mode 0600; its parent directories are
    /// created if missing.
    pub control_socket: PathBuf,
    /// `metrics_listen` (optional, e.g. `"127.0.0.1:9701"`): address:port where
    /// Prometheus metrics are served at `/metrics`. Not served when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// `xdp_mode` (default `"auto"`): how the XDP program is attached, one of
    /// `auto`, `native`, `generic` (see [`XdpMode`]).
    pub xdp_mode: XdpMode,
    /// `holder_device` (default `"carp0"`): the device that holds the virtual IPs as /32
    /// addresses on both nodes. The controller creates it (a dummy device if the kernel has
    /// the driver, else a bridge with no ports); `"lo"` is allowed. It must not be a CARP
    /// interface, or the kernel would answer ARP for the VIPs there.
    pub holder_device: String,
    /// `bpffs` (default `/sys/fs/bpf`): absolute path of a BPF file system where the XDP
    /// and TC attachments and the VHID map are pinned (under `carp/<interface>/`), so that
    /// the data path outlives a crashed or stalled controller until its dead-man deadline
    /// and a restarted controller takes it over without a gap (docs/design.md, "Pinned
    /// data path"). Mounted by the controller if nothing is mounted there. A bpffs mounted
    /// inside a private mount namespace (`ip netns exec` makes one) dies with the process.
    pub bpffs: PathBuf,
    /// `state_dir` (default `/var/lib/carp`): absolute path of the directory that keeps
    /// the operator state that must survive a restart and a reboot (persistent
    /// maintenance mode), one file per controller named after its control socket
    /// (`crate::statefile`). Not under `/run`: a reboot empties it.
    pub state_dir: PathBuf,
    /// `on_master`, `on_backup`, `on_init` (optional; each an array: the program's
    /// absolute path, then its arguments; no shell): hooks run when any VHID enters
    /// that state, unless the VHID sets its own (`crate::hooks`).
    pub hooks: crate::hooks::HookConfig,
    /// `hook_timeout` (seconds, 1..=3600, default 10): a hook still running after
    /// this is killed with its process group.
    pub hook_timeout_s: u32,
    /// `split_brain` (default `"step_back"`, or `"alarm"`): what the node does when
    /// the sync peer's hello says MASTER of a VHID it is MASTER of too
    /// (`crate::splitbrain`).
    pub split_brain: crate::splitbrain::Policy,
    /// `rt_priority` (0..=99, default [`DEFAULT_RT_PRIORITY`]): the real-time
    /// (`SCHED_FIFO`) priority of the election's thread, so adverts leave on
    /// time however busy the CPUs are with sync or anything else (keepalived's
    /// `vrrp_rt_priority`); 0 keeps it a normal thread at nice -5. Threads and
    /// processes it starts do not inherit it (`SCHED_RESET_ON_FORK`).
    pub rt_priority: u8,
}

/// `node.rt_priority` when it is not set: above every normal thread, which
/// is all the adverts need, and below the kernel's threaded interrupt
/// handlers (50), so the NICs are still served first.
pub const DEFAULT_RT_PRIORITY: u8 = 10;

/// How the XDP program is attached to each CARP interface (`node.xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Generic on virtual drivers (veth, bridge, vlan, macvlan, dummy), native on drivers
    /// known to support `XDP_TX` (docs/design.md, "Attach mode").
    #[default]
    Auto,
    /// Driver mode everywhere; attaching fails on a driver without XDP support.
    Native,
    /// SKB (generic) mode everywhere: slower, works on any device.
    Generic,
}

impl XdpMode {
    /// The spelling used in the config file and in status output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn from_config(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[vhid]]` table: a virtual host on one interface (carp(4)'s `vhid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhidConfig {
    /// `id` (required, 1..=255): the virtual host ID. It is in every advertisement and in the
    /// virtual MAC `00:00:5e:00:01:<id>`, so all nodes of the group use the same one. The
    /// same id may be used on different interfaces, not twice on one.
    pub id: u8,
    /// `interface` (required, at most 15 bytes): the interface that carries the VIPs and
    /// the advertisements (LAN, WAN, ...).
    pub interface: String,
    /// `addresses` (required, at least one address of either family): the virtual
    /// addresses with the prefix length of the network they serve, e.g.
    /// `["10.77.0.1/24", "2001:db8::1/64"]`. An address may belong to one VHID only.
    /// These are the IPv4 ones; a VHID without any is IPv6-only (no IPv4 advert,
    /// no ARP, no IPv4 address needed on the interface).
    pub addresses: Vec<Ipv4Net>,
    /// The IPv6 entries of `addresses` (global or unique-local; not link-local, which
    /// the holder device could not serve on the CARP interface). Advertisements go
    /// to 224.0.0.18 if the VHID has IPv4 addresses and to `ff02::12` if it has
    /// IPv6 ones, one counter for both; the digest covers both families
    /// (docs/protocol.md §1 "Over IPv6").
    pub addresses6: Vec<Ipv6Net>,
    /// `password` (required, non-empty): key of the advertisement HMAC, shared by all nodes
    /// of the VHID. Only the first 20 bytes are used, as in the BSDs.
    pub password: String,
    /// `advbase` (seconds, 1..=255, default 1): base advertisement interval.
    /// 255 is what a bow-out sends, so it is accepted with a warning. Or
    /// `advbase_ms` (10..=999, not together with `advbase`): fast mode
    /// (docs/protocol.md §2, "Fast mode (advbase 0)"), a sub-second base with
    /// advbase 0 on the wire; every node of the VHID must use the same value.
    pub advbase: Base,
    /// `advskew` (0..=254, default 0): skew added to the interval as advskew/256 s; the
    /// node with the lowest interval wins. Above 240 it ties with any demoted node
    /// (demotion caps at 240), so `carp check` warns.
    pub advskew: u8,
    /// `preempt` (default true): take over from a master that advertises less often than
    /// this node would (carp(4)'s `net.inet.carp.preempt`).
    pub preempt: bool,
    /// `on_master`, `on_backup`, `on_init` (optional): override the node's hooks
    /// for this VHID; `[]` turns the node's hook off here.
    pub hooks: crate::hooks::HookConfig,
    /// `peers` (optional, 1..=16 IPv4 or IPv6 addresses, in the order given):
    /// the other nodes' own addresses on the interface. Adverts go unicast to
    /// each of them, the IPv4 copy to the IPv4 peers and the IPv6 copy to the
    /// IPv6 ones, instead of to 224.0.0.18 and `ff02::12`; adverts from anyone
    /// else are refused (`not_peer`). A peer's family must be one the VHID has
    /// addresses of; an IPv6 peer may be link-local (no `%zone`: the scope is
    /// `interface`). Empty: multicast. On the link and not our own address:
    /// checked at start (`crate::peers`).
    pub peers: Vec<std::net::IpAddr>,
}

/// The configuration and what `carp check` warns about but accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// One problem in a config file, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field: `node.name`, `vhid[1].advskew`, `vhid[0].addresses[2]`;
    /// `config` for the file as a whole (unreadable, not TOML).
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every error found in a config file, in file order; displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Checked, Problems> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) => Err(Problems(vec![Problem {
            field: "config".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        }])),
    }
}

/// Checks a config file's text, reporting every problem, not just the first.
pub fn parse(text: &str) -> Result<Checked, Problems> {
    let root: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(Problems(vec![syntax_problem(text, &e)])),
    };
    let mut c = Checker::default();
    c.unknown_keys("", &root, &["node", "vhid", "sync"]);
    let node = c.node(root.get("node"));
    let vhids = c.vhids(root.get("vhid"));
    let sync = c.sync(root.get("sync"));
    c.cross_checks(node.as_ref(), &vhids);
    if let Some(Some(sc)) = &sync {
        if let Some(v) = vhids
            .iter()
            .find(|v| v.interface.as_deref() == Some(sc.interface.as_str()))
        {
            c.error(
                "sync.interface",
                format!(
                    "\"{}\" is also the interface of {}; sync needs a link of its own",
                    sc.interface, v.path
                ),
            );
        }
    }
    if !c.errors.is_empty() {
        return Err(Problems(c.errors));
    }
    match (
        node,
        vhids
            .into_iter()
            .map(|v| v.complete)
            .collect::<Option<Vec<_>>>(),
        sync,
    ) {
        (Some(node), Some(vhids), Some(sync)) => Ok(Checked {
            config: Config { node, vhids, sync },
            warnings: c.warnings,
        }),
        // Every path that leaves a field unset reports an error, so this is unreachable
        // in practice; report it rather than panic.
        _ => Err(Problems(vec![Problem {
            field: "config".into(),
            reason: "incomplete configuration (internal error: no problem was reported)".into(),
        }])),
    }
}

/// Checks a Linux interface name the way the kernel's `dev_valid_name()` does
/// (net/core/dev.c): 1..=15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_IFNAME_BYTES {
        return Err(format!(
            "\"{name}\" is {} bytes long; Linux interface names have at most {MAX_IFNAME_BYTES} (IFNAMSIZ)",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("\"{name}\" is not a valid interface name"));
    }
    if let Some(ch) = name
        .chars()
        .find(|&ch| ch == '/' || ch == ':' || ch.is_whitespace())
    {
        return Err(format!(
            "\"{name}\" is not a valid interface name: it contains {ch:?}"
        ));
    }
    Ok(())
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    // toml's messages span lines ("invalid array\nexpected `]`"); a Problem is one line.
    let mut message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if message.is_empty() {
        message = "not valid TOML".into();
    }
    let reason = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    };
    Problem {
        field: "config".into(),
        reason,
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// "an integer", "a string": the TOML type of a value with its article.
pub(crate) fn a_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// What was learnt about one `[[vhid]]`, even if some fields were bad: the cross-VHID
/// checks use whatever parsed.
struct PartialVhid {
    path: String,
    id: Option<u8>,
    interface: Option<String>,
    addresses: Vec<(String, Ipv4Net)>,
    /// The IPv6 entries of `addresses`, with their paths.
    addresses6: Vec<(String, Ipv6Net)>,
    /// `peers`, with their paths (checked against every VIP).
    peers: Vec<(String, std::net::IpAddr)>,
    complete: Option<VhidConfig>,
}

#[derive(Default)]
struct Checker {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Checker {
    fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn unknown_keys(&mut self, prefix: &str, table: &Table, known: &[&str]) {
        for key in table.keys().filter(|k| !known.contains(&k.as_str())) {
            self.error(join(prefix, key), "unknown key");
        }
    }

    fn mismatch(&mut self, path: &str, expected: &str, found: &Value) {
        self.error(
            path,
            format!("expected {expected}, found {}", a_type(found)),
        );
    }

    /// `Ok(None)` when absent; `Err(())` when present with another type (reported).
    fn string(&mut self, path: &str, v: Option<&Value>) -> Result<Option<String>, ()> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                self.mismatch(path, "a string", other);
                Err(())
            }
        }
    }

    fn integer(&mut self, path: &str, v: Option<&Value>) -> Result<Option<i64>, ()> {
        match v {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(other) => {
                self.mismatch(path, "an integer", other);
                Err(())
            }
        }
    }

    fn boolean(&mut self, path: &str, v: Option<&Value>) -> Result<Option<bool>, ()> {
        match v {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => {
                self.mismatch(path, "a boolean", other);
                Err(())
            }
        }
    }

    /// A required field: reports "is required" when absent.
    fn required<T>(&mut self, path: &str, got: Result<Option<T>, ()>) -> Option<T> {
        match got {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                self.error(path, "is required");
                None
            }
            Err(()) => None,
        }
    }

    fn ranged(&mut self, path: &str, v: i64, lo: u8, hi: u8) -> Option<u8> {
        match u8::try_from(v) {
            Ok(b) if (lo..=hi).contains(&b) => Some(b),
            _ => {
                self.error(path, format!("{v} is out of range {lo}..={hi}"));
                None
            }
        }
    }

    fn node(&mut self, v: Option<&Value>) -> Option<NodeConfig> {
        let t = match v {
            None => {
                self.error("node", "is required");
                return None;
            }
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.mismatch("node", "a table ([node])", other);
                return None;
            }
        };
        self.unknown_keys(
            "node",
            t,
            &[
                "name",
                "control_socket",
                "metrics_listen",
                "xdp_mode",
                "holder_device",
                "bpffs",
                "state_dir",
                "on_master",
                "on_backup",
                "on_init",
                "hook_timeout",
                "split_brain",
                "rt_priority",
            ],
        );

        let got = self.string("node.name", t.get("name"));
        let name = self.required("node.name", got).and_then(|n| {
            if n.trim().is_empty() {
                self.error("node.name", "must not be empty");
                None
            } else {
                Some(n)
            }
        });

        let control_socket = match self.string("node.control_socket", t.get("control_socket")) {
            Ok(None) => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            Ok(Some(s)) => self.control_socket(&s),
            Err(()) => None,
        };

        let metrics_listen = match self.string("node.metrics_listen", t.get("metrics_listen")) {
            Ok(None) => Some(None),
            Ok(Some(s)) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(Some(a)),
                Err(_) => {
                    self.error(
                        "node.metrics_listen",
                        format!("\"{s}\" is not an address:port like 127.0.0.1:9701 or [::1]:9701"),
                    );
                    None
                }
            },
            Err(()) => None,
        };

        let xdp_mode = match self.string("node.xdp_mode", t.get("xdp_mode")) {
            Ok(None) => Some(XdpMode::Auto),
            Ok(Some(s)) => match XdpMode::from_config(&s) {
                Some(m) => Some(m),
                None => {
                    self.error(
                        "node.xdp_mode",
                        format!("\"{s}\" is not one of auto, native, generic"),
                    );
                    None
                }
            },
            Err(()) => None,
        };

        let holder_device = match self.string("node.holder_device", t.get("holder_device")) {
            Ok(None) => Some(DEFAULT_HOLDER_DEVICE.to_owned()),
            Ok(Some(s)) => match check_ifname(&s) {
                Ok(()) => Some(s),
                Err(reason) => {
                    self.error("node.holder_device", reason);
                    None
                }
            },
            Err(()) => None,
        };

        let bpffs = match self.string("node.bpffs", t.get("bpffs")) {
            Ok(None) => Some(PathBuf::from(DEFAULT_BPFFS)),
            Ok(Some(s)) if s.is_empty() => {
                self.error("node.bpffs", "must not be empty");
                None
            }
            Ok(Some(s)) if !Path::new(&s).is_absolute() => {
                self.error("node.bpffs", format!("\"{s}\" must be an absolute path"));
                None
            }
            Ok(Some(s)) => Some(PathBuf::from(s)),
            Err(()) => None,
        };

        let state_dir = match self.string("node.state_dir", t.get("state_dir")) {
            Ok(None) => Some(PathBuf::from(crate::statefile::DEFAULT_STATE_DIR)),
            Ok(Some(s)) if s.is_empty() => {
                self.error("node.state_dir", "must not be empty");
                None
            }
            Ok(Some(s)) if !Path::new(&s).is_absolute() => {
                self.error(
                    "node.state_dir",
                    format!("\"{s}\" must be an absolute path"),
                );
                None
            }
            Ok(Some(s)) => Some(PathBuf::from(s)),
            Err(()) => None,
        };

        let hooks = self.hooks("node", t);
        let hook_timeout_s = match self.integer("node.hook_timeout", t.get("hook_timeout")) {
            Ok(None) => Some(crate::hooks::DEFAULT_HOOK_TIMEOUT_S),
            Ok(Some(n)) if (1..=3600).contains(&n) => Some(n as u32),
            Ok(Some(n)) => {
                self.error(
                    "node.hook_timeout",
                    format!("{n} is out of range 1..=3600 (seconds)"),
                );
                None
            }
            Err(()) => None,
        };
        let split_brain = match self.string("node.split_brain", t.get("split_brain")) {
            Ok(None) => Some(crate::splitbrain::Policy::default()),
            Ok(Some(s)) => crate::splitbrain::Policy::from_config(&s).or_else(|| {
                self.error(
                    "node.split_brain",
                    format!("\"{s}\" is not one of step_back, alarm"),
                );
                None
            }),
            Err(()) => None,
        };

        let rt_priority = match self.integer("node.rt_priority", t.get("rt_priority")) {
            Ok(None) => Some(DEFAULT_RT_PRIORITY),
            Ok(Some(n)) => self.ranged("node.rt_priority", n, 0, 99),
            Err(()) => None,
        };

        Some(NodeConfig {
            name: name?,
            control_socket: control_socket?,
            metrics_listen: metrics_listen?,
            xdp_mode: xdp_mode?,
            holder_device: holder_device?,
            bpffs: bpffs?,
            state_dir: state_dir?,
            hooks: hooks?,
            hook_timeout_s: hook_timeout_s?,
            split_brain: split_brain?,
            rt_priority: rt_priority?,
        })
    }

    /// `Some(None)` when there is no `[sync]`, `None` when it has problems
    /// (reported).
    fn sync(&mut self, v: Option<&Value>) -> Option<Option<SyncConfig>> {
        const P: &str = "sync";
        let t = match v {
            None => return Some(None),
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.mismatch(P, "a table ([sync])", other);
                return None;
            }
        };
        self.unknown_keys(
            P,
            t,
            &[
                "interface",
                "peer",
                "peers",
                "key_file",
                "bulk_timeout",
                "max_states",
                "refresh_interval",
                "ignore_addresses",
                "zones",
                "ignore_mark",
            ],
        );
        let got = self.string("sync.interface", t.get("interface"));
        let interface = self.required("sync.interface", got).and_then(|s| {
            check_ifname(&s)
                .map_err(|reason| self.error("sync.interface", reason))
                .ok()
                .map(|()| s)
        });

        let peers = self.sync_peers(t);
        let key = self.sync_key(t);
        let bulk_timeout_s = self.seconds(t, "bulk_timeout", DEFAULT_BULK_TIMEOUT_S);
        let refresh_interval_s = self.seconds(t, "refresh_interval", DEFAULT_REFRESH_INTERVAL_S);
        let max_states = match self.integer("sync.max_states", t.get("max_states")) {
            Ok(None) => Some(DEFAULT_MAX_STATES),
            Ok(Some(n)) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    self.error(
                        "sync.max_states",
                        format!("{n} is out of range 1..=4294967295"),
                    );
                    None
                }
            },
            Err(()) => None,
        };
        let ignore_addresses = self.networks(t, "ignore_addresses");
        let zones = match t.get("zones") {
            None => Some(None),
            Some(Value::Array(items)) => {
                let mut zones = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let path = format!("sync.zones[{i}]");
                    match item {
                        Value::Integer(z) => match u16::try_from(*z) {
                            Ok(z) => zones.push(z),
                            Err(_) => {
                                self.error(path, format!("{z} is out of range 0..=65535"));
                                ok = false;
                            }
                        },
                        other => {
                            self.mismatch(&path, "an integer", other);
                            ok = false;
                        }
                    }
                }
                ok.then_some(Some(zones))
            }
            Some(other) => {
                self.mismatch("sync.zones", "an array of zone numbers", other);
                None
            }
        };
        let ignore_mark = match self.string("sync.ignore_mark", t.get("ignore_mark")) {
            Ok(None) => Some(None),
            Ok(Some(s)) => match parse_mark(&s) {
                Some(m) => Some(Some(m)),
                None => {
                    self.error(
                        "sync.ignore_mark",
                        format!("\"{s}\" is not VALUE/MASK, like \"0x1/0x1\" or \"16/255\""),
                    );
                    None
                }
            },
            Err(()) => None,
        };
        let (key_file, key) = key?;
        Some(Some(SyncConfig {
            interface: interface?,
            peers: peers?,
            key_file,
            key,
            bulk_timeout_s: bulk_timeout_s?,
            max_states: max_states?,
            refresh_interval_s: refresh_interval_s?,
            ignore_addresses: ignore_addresses?,
            zones: zones?,
            ignore_mark: ignore_mark?,
        }))
    }

    fn sync_peers(&mut self, t: &Table) -> Option<Vec<std::net::Ipv4Addr>> {
        let mut raw: Vec<(String, String)> = Vec::new();
        match (t.get("peer"), t.get("peers")) {
            (Some(_), Some(_)) => {
                self.error("sync.peers", "give either peer or peers, not both");
                return None;
            }
            (None, None) => {
                self.error("sync.peer", "is required (or peers = [...])");
                return None;
            }
            (Some(v), None) => match v {
                Value::String(s) => raw.push(("sync.peer".into(), s.clone())),
                other => {
                    self.mismatch("sync.peer", "a string", other);
                    return None;
                }
            },
            (None, Some(v)) => match v {
                Value::Array(items) if items.is_empty() => {
                    self.error("sync.peers", "must name at least one peer");
                    return None;
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = format!("sync.peers[{i}]");
                        match item {
                            Value::String(s) => raw.push((path, s.clone())),
                            other => self.mismatch(&path, "a string", other),
                        }
                    }
                }
                other => {
                    self.mismatch("sync.peers", "an array of addresses", other);
                    return None;
                }
            },
        }
        let mut peers = Vec::new();
        let mut ok = true;
        for (path, s) in raw {
            match s.parse::<std::net::Ipv4Addr>() {
                Ok(a)
                    if a.is_unspecified()
                        || a.is_multicast()
                        || a.is_broadcast()
                        || a.is_loopback() =>
                {
                    self.error(path, format!("{a} is not a unicast peer address"));
                    ok = false;
                }
                Ok(a) if peers.contains(&a) => {
                    self.error(path, format!("{a} is listed twice"));
                    ok = false;
                }
                Ok(a) => peers.push(a),
                Err(_) => {
                    self.error(path, format!("\"{s}\" is not an IPv4 address"));
                    ok = false;
                }
            }
        }
        ok.then_some(peers)
    }

    /// Reads the key file: it must exist, be readable, hold at least
    /// [`MIN_SYNC_KEY_BYTES`] and not be readable by group or others.
    fn sync_key(&mut self, t: &Table) -> Option<(PathBuf, Vec<u8>)> {
        use std::os::unix::fs::PermissionsExt as _;
        const F: &str = "sync.key_file";
        let got = self.string(F, t.get("key_file"));
        let path = PathBuf::from(self.required(F, got)?);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                self.error(F, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            self.error(
                F,
                format!(
                    "{} has mode {mode:04o}; a key must not be readable by group or others (chmod 600)",
                    path.display()
                ),
            );
            return None;
        }
        match std::fs::read(&path) {
            Ok(key) if key.len() < MIN_SYNC_KEY_BYTES => {
                self.error(
                    F,
                    format!(
                        "{} holds {} bytes; a sync key needs at least {MIN_SYNC_KEY_BYTES}",
                        path.display(),
                        key.len()
                    ),
                );
                None
            }
            Ok(key) => Some((path, key)),
            Err(e) => {
                self.error(F, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// An optional whole number of seconds in 1..=3600.
    fn seconds(&mut self, t: &Table, key: &str, default: u32) -> Option<u32> {
        let path = format!("sync.{key}");
        match self.integer(&path, t.get(key)) {
            Ok(None) => Some(default),
            Ok(Some(n)) if (1..=3600).contains(&n) => Some(n as u32),
            Ok(Some(n)) => {
                self.error(path, format!("{n} is out of range 1..=3600 (seconds)"));
                None
            }
            Err(()) => None,
        }
    }

    fn networks(&mut self, t: &Table, key: &str) -> Option<Vec<IpNet>> {
        let path = format!("sync.{key}");
        match t.get(key) {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    match item {
                        Value::String(s) => match s
                            .parse::<IpNet>()
                            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        {
                            Ok(n) => out.push(n),
                            Err(_) => {
                                self.error(
                                    p,
                                    format!("\"{s}\" is not an address or network like 10.0.0.0/8"),
                                );
                                ok = false;
                            }
                        },
                        other => {
                            self.mismatch(&p, "a string", other);
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            Some(other) => {
                self.mismatch(&path, "an array of networks", other);
                None
            }
        }
    }

    /// `on_master`, `on_backup`, `on_init` of one table (`prefix` is `node` or
    /// `vhid[N]`); `None` when one of them has problems (reported).
    fn hooks(&mut self, prefix: &str, t: &Table) -> Option<crate::hooks::HookConfig> {
        let mut out = crate::hooks::HookConfig::default();
        let mut ok = true;
        for kind in crate::hooks::HookKind::ALL {
            match self.hook(&join(prefix, kind.key()), t.get(kind.key())) {
                Ok(argv) => out.set(kind, argv),
                Err(()) => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// One hook: an array of strings, the first an absolute path (no shell, no
    /// PATH search). `[]` is "none". A program that is missing or not executable
    /// is a warning (`hooks::program_problem` says why).
    fn hook(&mut self, path: &str, v: Option<&Value>) -> Result<Option<Vec<String>>, ()> {
        let items = match v {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.mismatch(
                    path,
                    "an array: the program's absolute path, then its arguments",
                    other,
                );
                return Err(());
            }
        };
        let mut argv = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match item {
                Value::String(s) if s.contains('\0') => {
                    self.error(p, "must not contain a NUL byte");
                    ok = false;
                }
                Value::String(s) => argv.push(s.clone()),
                other => {
                    self.mismatch(&p, "a string", other);
                    ok = false;
                }
            }
        }
        if !ok {
            return Err(());
        }
        if let Some(program) = argv.first() {
            let p0 = format!("{path}[0]");
            if !Path::new(program).is_absolute() {
                self.error(
                    p0,
                    format!("\"{program}\" must be an absolute path: hooks run without a shell and without a PATH search"),
                );
                return Err(());
            }
            if let Some(why) = crate::hooks::program_problem(Path::new(program)) {
                self.warn(p0, why);
            }
        }
        Ok(Some(argv))
    }

    fn control_socket(&mut self, s: &str) -> Option<PathBuf> {
        const FIELD: &str = "node.control_socket";
        if s.is_empty() {
            self.error(FIELD, "must not be empty");
            return None;
        }
        let p = PathBuf::from(s);
        if !p.is_absolute() {
            self.error(FIELD, format!("\"{s}\" must be an absolute path"));
            return None;
        }
        if s.len() >= SUN_PATH_LEN {
            self.error(
                FIELD,
                format!(
                    "is {} bytes long; a Unix socket path has at most {}",
                    s.len(),
                    SUN_PATH_LEN - 1
                ),
            );
            return None;
        }
        Some(p)
    }

    fn vhids(&mut self, v: Option<&Value>) -> Vec<PartialVhid> {
        let items = match v {
            None => {
                self.error("vhid", "is required: at least one [[vhid]] table");
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.mismatch("vhid", "an array of tables ([[vhid]])", other);
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.error("vhid", "is required: at least one [[vhid]] table");
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("vhid[{i}]");
            match item {
                Value::Table(t) => out.push(self.vhid(path, t)),
                other => self.mismatch(&path, "a table", other),
            }
        }
        out
    }

    fn vhid(&mut self, path: String, t: &Table) -> PartialVhid {
        let f = |key: &str| join(&path, key);
        self.unknown_keys(
            &path,
            t,
            &[
                "id",
                "interface",
                "addresses",
                "password",
                "advbase",
                "advbase_ms",
                "advskew",
                "preempt",
                "peers",
                "on_master",
                "on_backup",
                "on_init",
            ],
        );

        let got = self.integer(&f("id"), t.get("id"));
        let id = self
            .required(&f("id"), got)
            .and_then(|v| self.ranged(&f("id"), v, 1, 255));

        let got = self.string(&f("interface"), t.get("interface"));
        let interface = self
            .required(&f("interface"), got)
            .and_then(|s| match check_ifname(&s) {
                Ok(()) => Some(s),
                Err(reason) => {
                    self.error(f("interface"), reason);
                    None
                }
            });

        let (addresses, addresses6, addresses_ok) =
            self.addresses(&f("addresses"), t.get("addresses"));

        let got = self.string(&f("password"), t.get("password"));
        let password = self.required(&f("password"), got).and_then(|s| {
            if s.is_empty() {
                self.error(f("password"), "must not be empty");
                None
            } else {
                if s.len() > MAX_PASSWORD_BYTES {
                    self.warn(
                        f("password"),
                        format!(
                            "only the first {MAX_PASSWORD_BYTES} bytes are used, as in the BSDs"
                        ),
                    );
                }
                Some(s)
            }
        });

        let advbase = match self.integer(&f("advbase"), t.get("advbase")) {
            Ok(None) => Some(1),
            Ok(Some(v)) => self.ranged(&f("advbase"), v, 1, 255),
            Err(()) => None,
        };
        if advbase == Some(255) {
            self.warn(f("advbase"), "advbase 255 is what a bow-out sends");
        }
        let advbase_ms = match self.integer(&f("advbase_ms"), t.get("advbase_ms")) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => match u16::try_from(v) {
                Ok(ms) if (ADVBASE_MS_MIN..=ADVBASE_MS_MAX).contains(&ms) => Ok(Some(ms)),
                _ => {
                    self.error(
                        f("advbase_ms"),
                        format!("{v} is out of range {ADVBASE_MS_MIN}..={ADVBASE_MS_MAX}"),
                    );
                    Err(())
                }
            },
            Err(()) => Err(()),
        };
        // Fast mode (docs/protocol.md §2): advbase 0 on the wire, so a VHID has
        // one base or the other, never both.
        let advbase = match (t.contains_key("advbase"), advbase_ms) {
            (true, Ok(Some(_))) => {
                self.error(
                    f("advbase_ms"),
                    "advbase and advbase_ms are mutually exclusive: set advbase (whole seconds) or advbase_ms (fast mode), not both",
                );
                None
            }
            (_, Ok(Some(ms))) => Some(Base::Millis(ms)),
            (_, Ok(None)) => advbase.map(Base::Seconds),
            (_, Err(())) => None,
        };

        // 255 is reserved for the bow-out advert (docs/protocol.md §2, "Bow-out"), hence 254.
        let advskew = match self.integer(&f("advskew"), t.get("advskew")) {
            Ok(None) => Some(0),
            Ok(Some(v)) => self.ranged(&f("advskew"), v, 0, 254),
            Err(()) => None,
        };
        if let Some(skew) = advskew.filter(|&s| s > DEMOTION_CAP) {
            self.warn(
                f("advskew"),
                format!("{skew} ties with any demoted node: demotion caps at {DEMOTION_CAP}"),
            );
        }

        let preempt = match self.boolean(&f("preempt"), t.get("preempt")) {
            Ok(v) => Some(v.unwrap_or(true)),
            Err(()) => None,
        };

        let hooks = self.hooks(&path, t);

        let (peers, mut peer_problems) = crate::peers::parse(&f("peers"), t.get("peers"));
        if addresses_ok {
            peer_problems.extend(crate::peers::family_problems(
                &peers,
                !addresses.is_empty(),
                !addresses6.is_empty(),
            ));
        }
        let peers_ok = peer_problems.is_empty();
        self.errors.extend(peer_problems);

        let complete = (|| {
            if !addresses_ok || !peers_ok {
                return None;
            }
            Some(VhidConfig {
                id: id?,
                interface: interface.clone()?,
                addresses: addresses.iter().map(|(_, a)| *a).collect(),
                addresses6: addresses6.iter().map(|(_, a)| *a).collect(),
                password: password?,
                advbase: advbase?,
                advskew: advskew?,
                preempt: preempt?,
                hooks: hooks.clone()?,
                peers: peers.iter().map(|(_, a)| *a).collect(),
            })
        })();
        PartialVhid {
            path,
            id,
            interface,
            addresses,
            addresses6,
            peers,
            complete,
        }
    }

    /// The addresses that parsed (with their paths), IPv4 and IPv6, and whether all of
    /// them did.
    #[allow(clippy::type_complexity)]
    fn addresses(
        &mut self,
        path: &str,
        v: Option<&Value>,
    ) -> (Vec<(String, Ipv4Net)>, Vec<(String, Ipv6Net)>, bool) {
        let items = match v {
            None => {
                self.error(path, "is required");
                return (Vec::new(), Vec::new(), false);
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.mismatch(path, "an array of strings", other);
                return (Vec::new(), Vec::new(), false);
            }
        };
        if items.is_empty() {
            self.error(path, "must not be empty: list at least one virtual address");
            return (Vec::new(), Vec::new(), false);
        }
        let mut out = Vec::with_capacity(items.len());
        let mut out6 = Vec::new();
        let mut all_ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let parsed = match item {
                Value::String(s) => parse_vip(s),
                other => Err(format!("expected a string, found {}", a_type(other))),
            };
            match parsed {
                Ok(IpNet::V4(net)) => out.push((p, net)),
                Ok(IpNet::V6(net)) => out6.push((p, net)),
                Err(reason) => {
                    self.error(p, reason);
                    all_ok = false;
                }
            }
        }
        (out, out6, all_ok)
    }

    fn cross_checks(&mut self, node: Option<&NodeConfig>, vhids: &[PartialVhid]) {
        // (interface, id) identifies a virtual host: the same VHID on one link twice
        // would be two routers with one virtual MAC.
        let mut groups: HashMap<(&str, u8), &str> = HashMap::new();
        // An address answered by two VHIDs would have two masters.
        let mut vips: HashMap<std::net::Ipv4Addr, &str> = HashMap::new();
        let mut vips6: HashMap<std::net::Ipv6Addr, &str> = HashMap::new();
        for v in vhids {
            if let (Some(ifname), Some(id)) = (v.interface.as_deref(), v.id) {
                if let Some(first) = groups.get(&(ifname, id)) {
                    self.error(
                        join(&v.path, "id"),
                        format!("vhid {id} on {ifname} is already defined by {first}"),
                    );
                } else {
                    groups.insert((ifname, id), &v.path);
                }
            }
            for (path, net) in &v.addresses {
                if let Some(first) = vips.get(&net.addr()) {
                    self.error(
                        path.as_str(),
                        format!("{} is already used by {first}", net.addr()),
                    );
                } else {
                    vips.insert(net.addr(), path);
                }
            }
            for (path, net) in &v.addresses6 {
                if let Some(first) = vips6.get(&net.addr()) {
                    self.error(
                        path.as_str(),
                        format!("{} is already used by {first}", net.addr()),
                    );
                } else {
                    vips6.insert(net.addr(), path);
                }
            }
        }
        for v in vhids {
            let problems = crate::peers::vip_problems(&v.peers, |a| match a {
                std::net::IpAddr::V4(a) => vips.get(&a).copied(),
                std::net::IpAddr::V6(a) => vips6.get(&a).copied(),
            });
            self.errors.extend(problems);
        }
        // With arp_ignore=1 the kernel answers ARP for addresses configured on the
        // receiving interface, so VIPs held on a CARP interface would be answered by
        // both nodes (docs/design.md, "VIP holder device and sysctls").
        if let Some(node) = node {
            if let Some(v) = vhids
                .iter()
                .find(|v| v.interface.as_deref() == Some(node.holder_device.as_str()))
            {
                self.error(
                    "node.holder_device",
                    format!(
                        "\"{}\" is also the interface of {}; the VIPs must be held on another device",
                        node.holder_device, v.path
                    ),
                );
            }
        }
    }
}

/// `VALUE/MASK` with each part decimal or `0x` hex.
fn parse_mark(s: &str) -> Option<(u32, u32)> {
    fn num(s: &str) -> Option<u32> {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    }
    let (v, m) = s.split_once('/')?;
    let (v, m) = (num(v)?, num(m)?);
    (v & !m == 0).then_some((v, m))
}

/// Parses one entry of `addresses`.
fn parse_vip(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(IpNet::V4(n)) => n,
        Ok(IpNet::V6(n)) => return parse_vip6(n).map(IpNet::V6),
        Err(_) => {
            return Err(match s.parse::<IpAddr>() {
                Ok(IpAddr::V6(a)) => format!(
                    "\"{s}\" has no prefix length: write the prefix of the network it serves, like {a}/64"
                ),
                Ok(IpAddr::V4(a)) => format!(
                    "\"{s}\" has no prefix length: write the prefix of the network it serves, like {a}/24"
                ),
                Err(_) => format!("\"{s}\" is not an IP address with a prefix length, like 10.77.0.1/24 or 2001:db8::1/64"),
            })
        }
    };
    let a = net.addr();
    let what = if a.is_unspecified() {
        "the unspecified address"
    } else if a.is_loopback() {
        "a loopback address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(IpNet::V4(net));
    };
    Err(format!("{a} is {what}, not usable as a virtual address"))
}

/// Checks an IPv6 entry of `addresses`. Link-local VIPs are refused: the VIPs
/// live on the holder device, and a link-local address there is local to that
/// device only, so traffic to it on the CARP interface would never reach the
/// stack.
fn parse_vip6(net: Ipv6Net) -> Result<Ipv6Net, String> {
    let a = net.addr();
    let what = if a.is_unspecified() {
        "the unspecified address"
    } else if a.is_loopback() {
        "the loopback address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_unicast_link_local() {
        "link-local (only global or unique-local IPv6 VIPs can be held)"
    } else if a.to_ipv4_mapped().is_some() {
        "IPv4-mapped (write the IPv4 address)"
    } else {
        return Ok(net);
    };
    Err(format!("{a} is {what}, not usable as a virtual address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
name = "fw1"

[[vhid]]
id = 1
interface = "lan0"
addresses = ["10.77.0.1/24"]
password = "secret"
"#;

    #[test]
    fn config_minimal_gets_defaults() {
        let checked = parse(MINIMAL).unwrap_or_else(|e| panic!("minimal config rejected:\n{e}"));
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
        let c = checked.config;
        assert_eq!(c.node.name, "fw1");
        assert_eq!(c.node.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.node.metrics_listen, None);
        assert_eq!(c.node.xdp_mode, XdpMode::Auto);
        assert_eq!(c.node.holder_device, "carp0");
        assert_eq!(c.node.state_dir, PathBuf::from("/var/lib/carp"));
        assert_eq!(
            c.vhids,
            vec![VhidConfig {
                id: 1,
                interface: "lan0".into(),
                addresses: vec!["10.77.0.1/24".parse().unwrap()],
                addresses6: vec![],
                password: "secret".into(),
                advbase: Base::Seconds(1),
                advskew: 0,
                preempt: true,
                hooks: Default::default(),
                peers: Vec::new(),
            }]
        );
    }

    #[test]
    fn config_state_dir_must_be_absolute() {
        let with = |v: &str| {
            MINIMAL.replace(
                "name = \"fw1\"",
                &format!("name = \"fw1\"\nstate_dir = {v}"),
            )
        };
        let c = parse(&with("\"/srv/carp\"")).expect("absolute state_dir");
        assert_eq!(c.config.node.state_dir, PathBuf::from("/srv/carp"));
        for (v, want) in [
            (
                "\"var/lib/carp\"",
                "node.state_dir: \"var/lib/carp\" must be an absolute path",
            ),
            ("\"\"", "node.state_dir: must not be empty"),
        ] {
            let err = parse(&with(v)).expect_err(v).to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn config_line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn config_ifname_rules_follow_dev_valid_name() {
        assert!(check_ifname("lo").is_ok());
        assert!(check_ifname("enp0s31f6.100").is_ok());
        assert!(check_ifname("fifteen_bytes_x").is_ok());
        assert!(check_ifname("sixteen_bytes_xx").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a:1").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn config_problems_display_one_per_line() {
        let p = Problems(vec![
            Problem {
                field: "a".into(),
                reason: "x".into(),
            },
            Problem {
                field: "b".into(),
                reason: "y".into(),
            },
        ]);
        assert_eq!(p.to_string(), "a: x\nb: y");
    }
}
