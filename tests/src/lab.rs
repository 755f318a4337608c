//! The lab: a client network and a server network joined by two routers, each
//! host and each switch in its own network namespace, built with `ip`
//! commands only. Shared by `cargo xtask run`, the namespace scenarios
//! (tests/tests/*.rs) and the failover benchmark.
//!
//! ```text
//!  <p>client            <p>lan              <p>fw1 / <p>fw2             <p>wan             <p>server
//!  eth0 10.77.0.100 -- client|br0|fw1 -- lan0 10.77.0.11/.12           fw1|br0|server -- eth0 10.88.0.100
//!                             |  fw2 -- (fw2)   wan0 10.88.0.11/.12 -- fw2 |
//!                                               sync0 10.99.0.1/.2 (fw1 <-> fw2, direct)
//! ```
//!
//! With [`LabOptions::ipv6`] the LAN is also 2001:db8:77::/64 (client ::100,
//! routers ::11 / ::12, VIP ::1 on VHID 1) and the WAN 2001:db8:88::/64
//! (server ::100, routers ::11 / ::12, VIP ::1 on VHID 2), routed without
//! NAT: the hosts' IPv6 default routes point at the IPv6 VIPs.
//!
//! Every veth pair is created with both ends already in their namespaces
//! (`ip -n A link add X type veth peer name Y netns B`), so nothing ever shows
//! up in the root namespace. The VIPs (10.77.0.1 on VHID 1, 10.88.0.1 on
//! VHID 2), `arp_ignore` and friends are NOT configured here: that is the
//! controller's job, and a lab that did it would hide controller bugs.
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::netns::{unique_prefix, NetNs};

pub const LAN_NET_PREFIX: u8 = 24;
/// The client's default gateway: the LAN VIP, VHID 1.
pub const LAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const LAN_VHID: u8 = 1;
/// The server's default gateway: the WAN VIP, VHID 2.
pub const WAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const WAN_VHID: u8 = 2;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);

/// Prefix length of both IPv6 networks ([`LabOptions::ipv6`]).
pub const NET6_PREFIX: u8 = 64;
/// The LAN VHID's IPv6 VIP: the client's IPv6 default gateway.
pub const LAN_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
/// The WAN VHID's IPv6 VIP: the server's IPv6 default gateway.
pub const WAN_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0x100);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 0x100);

/// One of the two routers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Router {
    Fw1,
    Fw2,
}

impl Router {
    pub const ALL: [Router; 2] = [Router::Fw1, Router::Fw2];

    /// `fw1` / `fw2`: the node name, the namespace suffix and the name of the
    /// router's port on each switch.
    pub fn name(self) -> &'static str {
        match self {
            Router::Fw1 => "fw1",
            Router::Fw2 => "fw2",
        }
    }

    pub fn other(self) -> Router {
        match self {
            Router::Fw1 => Router::Fw2,
            Router::Fw2 => Router::Fw1,
        }
    }

    fn host_octet(self) -> u8 {
        match self {
            Router::Fw1 => 11,
            Router::Fw2 => 12,
        }
    }

    /// The router's own address on the LAN (10.77.0.11 / .12).
    pub fn lan_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, self.host_octet())
    }

    /// The router's own address on the WAN (10.88.0.11 / .12).
    pub fn wan_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, self.host_octet())
    }

    /// The router's own IPv6 address on the LAN (2001:db8:77::11 / ::12).
    pub fn lan_ip6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, self.host_octet().into())
    }

    /// The router's own IPv6 address on the WAN (2001:db8:88::11 / ::12).
    pub fn wan_ip6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, self.host_octet().into())
    }

    /// The router's end of the direct sync link (10.99.0.1 / .2, a /30).
    pub fn sync_ip(self) -> Ipv4Addr {
        match self {
            Router::Fw1 => Ipv4Addr::new(10, 99, 0, 1),
            Router::Fw2 => Ipv4Addr::new(10, 99, 0, 2),
        }
    }
}

/// One of the two switches (a bridge `br0` in its own namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Switch {
    Lan,
    Wan,
}

/// How to build the lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace name prefix; `None` takes [`unique_prefix`]. Use a fixed one
    /// (e.g. `carpt-lab-`) only for a lab that people enter by hand.
    pub prefix: Option<String>,
    /// Build the WAN side too (`wan` switch, `server`, the routers' `wan0`).
    pub with_wan: bool,
    /// IPv6 next to IPv4 (module docs): addresses on every host and router
    /// port, IPv6 forwarding on the routers, the hosts' IPv6 default routes
    /// via the IPv6 VIPs, and those VIPs in the routers' configs.
    pub ipv6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: None,
            with_wan: true,
            ipv6: false,
        }
    }
}

/// The per-node settings that go into a controller config.
#[derive(Clone, Debug)]
pub struct NodeParams {
    pub advbase: u8,
    /// Fast mode: `advbase_ms = N` on every VHID instead of `advbase`
    /// (docs/protocol.md §2 "Fast mode (advbase 0)").
    pub advbase_ms: Option<u16>,
    pub advskew_lan: u8,
    pub advskew_wan: u8,
    pub password: String,
    pub preempt: bool,
    /// `auto` | `native` | `generic`.
    pub xdp_mode: String,
    /// Inside the router's namespace, so both routers can use the same port.
    pub metrics_listen: Option<String>,
    pub holder_device: String,
    /// Overrides the default `/run/carp/<namespace>.sock`.
    pub control_socket: Option<PathBuf>,
    /// Adds a `[sync]` section: conntrack replication over `sync0` to the
    /// other router, keyed with the lab's shared key (see [`Lab::sync_key`]).
    pub sync: bool,
    /// Where `key_file` points when `sync` is on; `None`: `sync.key` next to
    /// the config ([`Lab::write_router_config`] writes it there, mode 0600).
    pub sync_key_file: Option<PathBuf>,
    /// `sync.refresh_interval` in seconds, when set.
    pub sync_refresh_s: Option<u32>,
    /// Pin the data path on the router's own bpffs ([`Lab::bpffs`], in the
    /// host's mount namespace, so that it outlives the controller). `false`
    /// leaves `node.bpffs` at its default, which inside `ip netns exec` is a
    /// private mount that dies with the process: the data path of a killed
    /// controller goes with it (the behaviour before pinning).
    pub pinned: bool,
    /// Unicast peers (docs/protocol.md §1 "Unicast peers"): `peers = [the
    /// other router's own address on that link]` in every VHID.
    pub vhid_peers: bool,
}

impl Default for NodeParams {
    fn default() -> Self {
        NodeParams {
            advbase: 1,
            advbase_ms: None,
            advskew_lan: 0,
            advskew_wan: 0,
            password: "secret".into(),
            preempt: true,
            xdp_mode: "auto".into(),
            metrics_listen: Some("127.0.0.1:9701".into()),
            holder_device: "carp0".into(),
            control_socket: None,
            sync: false,
            sync_key_file: None,
            sync_refresh_s: None,
            pinned: true,
            vhid_peers: false,
        }
    }
}

impl NodeParams {
    /// The same advskew on every VHID.
    pub fn with_advskew(advskew: u8) -> Self {
        NodeParams {
            advskew_lan: advskew,
            advskew_wan: advskew,
            ..NodeParams::default()
        }
    }
}

/// A built lab. Dropping it deletes every namespace it created (also when a
/// test panics: `Drop` runs while unwinding); a killed run's leftovers are
/// removed by [`crate::netns::cleanup_stale`].
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    with_wan: bool,
    ipv6: bool,
    /// In creation order; deleted in reverse.
    namespaces: Vec<NetNs>,
    /// The key both routers' `[sync]` sections use (hex text, 64 bytes).
    sync_key: String,
    /// Whether [`Lab::make_stateful`] installed the NAT/firewall ruleset.
    stateful: bool,
}

impl Lab {
    /// Builds the topology. On error, whatever was created is removed.
    pub fn build(opts: LabOptions) -> anyhow::Result<Lab> {
        let prefix = opts.prefix.unwrap_or_else(unique_prefix);
        let mut lab = Lab {
            prefix,
            with_wan: opts.with_wan,
            ipv6: opts.ipv6,
            namespaces: Vec::new(),
            sync_key: random_key_hex(),
            stateful: false,
        };
        lab.create()
            .with_context(|| format!("building the lab {}*", lab.prefix))?;
        Ok(lab)
    }

    fn create(&mut self) -> anyhow::Result<()> {
        let mut names = vec!["client", "lan", "fw1", "fw2"];
        if self.with_wan {
            names.extend(["wan", "server"]);
        }
        for n in names {
            self.namespaces
                .push(NetNs::new(format!("{}{n}", self.prefix))?);
        }
        for ns in &self.namespaces {
            ns.ip(["link", "set", "lo", "up"])?;
        }

        // Switches: a bridge per network, STP off and no forwarding delay so
        // ports forward at once (a real switch with portfast), default ageing.
        let mut switches = vec![Switch::Lan];
        if self.with_wan {
            switches.push(Switch::Wan);
        }
        for sw in &switches {
            crate::netns::add_switch(self.switch(*sw))?;
        }

        // Hosts and routers, one veth pair each into the switch.
        self.veth(self.ns_named("client"), "eth0", Switch::Lan, "client")?;
        for r in Router::ALL {
            self.veth(self.router(r), "lan0", Switch::Lan, r.name())?;
            if self.with_wan {
                self.veth(self.router(r), "wan0", Switch::Wan, r.name())?;
            }
        }
        if self.with_wan {
            self.veth(self.ns_named("server"), "eth0", Switch::Wan, "server")?;
        }
        for sw in &switches {
            self.switch(*sw).ip(["link", "set", "br0", "up"])?;
        }

        // The direct sync link between the routers.
        let (fw1, fw2) = (self.router(Router::Fw1), self.router(Router::Fw2));
        fw1.ip([
            "link",
            "add",
            "sync0",
            "type",
            "veth",
            "peer",
            "name",
            "sync0",
            "netns",
            fw2.name(),
        ])?;

        for r in Router::ALL {
            let ns = self.router(r);
            let mut addrs = vec![
                ("lan0", r.lan_ip(), LAN_NET_PREFIX),
                ("sync0", r.sync_ip(), 30),
            ];
            if self.with_wan {
                addrs.push(("wan0", r.wan_ip(), LAN_NET_PREFIX));
            }
            for (dev, ip, len) in addrs {
                ns.ip(["addr", "add", &format!("{ip}/{len}"), "dev", dev])?;
                ns.ip(["link", "set", dev, "up"])?;
            }
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }

        let client = self.client();
        client.ip([
            "addr",
            "add",
            &format!("{CLIENT_IP}/{LAN_NET_PREFIX}"),
            "dev",
            "eth0",
        ])?;
        client.ip(["link", "set", "eth0", "up"])?;
        client.ip(["route", "add", "default", "via", &LAN_VIP.to_string()])?;
        if self.with_wan {
            let server = self.server();
            server.ip([
                "addr",
                "add",
                &format!("{SERVER_IP}/{LAN_NET_PREFIX}"),
                "dev",
                "eth0",
            ])?;
            server.ip(["link", "set", "eth0", "up"])?;
            server.ip(["route", "add", "default", "via", &WAN_VIP.to_string()])?;
        }
        if self.ipv6 {
            self.create_ipv6()?;
        }
        for r in Router::ALL {
            crate::netns::mount_bpffs(&self.bpffs(r))?;
        }
        Ok(())
    }

    /// The IPv6 half of [`LabOptions::ipv6`]; the links are up already.
    /// `nodad`: duplicate address detection would keep each address tentative
    /// (unusable) for a second, and the lab's addresses are unique. The
    /// routers need an address in each VIP's prefix to reach the hosts
    /// themselves, as for IPv4 (the VIPs are /128s on the holder device).
    fn create_ipv6(&self) -> anyhow::Result<()> {
        let add = |ns: &NetNs, dev: &str, ip: Ipv6Addr| {
            ns.ip([
                "-6",
                "addr",
                "add",
                &format!("{ip}/{NET6_PREFIX}"),
                "dev",
                dev,
                "nodad",
            ])
            .map(drop)
        };
        for r in Router::ALL {
            let ns = self.router(r);
            add(ns, "lan0", r.lan_ip6())?;
            if self.with_wan {
                add(ns, "wan0", r.wan_ip6())?;
            }
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        add(self.client(), "eth0", CLIENT_IP6)?;
        self.client().ip([
            "-6",
            "route",
            "add",
            "default",
            "via",
            &LAN_VIP6.to_string(),
        ])?;
        if self.with_wan {
            add(self.server(), "eth0", SERVER_IP6)?;
            self.server().ip([
                "-6",
                "route",
                "add",
                "default",
                "via",
                &WAN_VIP6.to_string(),
            ])?;
        }
        Ok(())
    }

    /// A veth pair from `dev` in `ns` to a port named `port` on switch `sw`,
    /// both ends created in place.
    fn veth(&self, ns: &NetNs, dev: &str, sw: Switch, port: &str) -> anyhow::Result<()> {
        crate::netns::switch_port(ns, dev, self.switch(sw), port)
    }

    fn ns_named(&self, suffix: &str) -> &NetNs {
        let want = format!("{}{suffix}", self.prefix);
        self.namespaces
            .iter()
            .find(|n| n.name() == want)
            .unwrap_or_else(|| {
                panic!(
                    "lab {} has no namespace {suffix} (with_wan = {})",
                    self.prefix, self.with_wan
                )
            })
    }

    /// The prefix shared by all namespaces of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn with_wan(&self) -> bool {
        self.with_wan
    }

    /// Whether the lab was built with [`LabOptions::ipv6`].
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    pub fn client(&self) -> &NetNs {
        self.ns_named("client")
    }

    /// Panics if the lab was built without the WAN side.
    pub fn server(&self) -> &NetNs {
        self.ns_named("server")
    }

    pub fn router(&self, r: Router) -> &NetNs {
        self.ns_named(r.name())
    }

    /// The namespace holding the switch's `br0`.
    pub fn switch(&self, sw: Switch) -> &NetNs {
        self.ns_named(match sw {
            Switch::Lan => "lan",
            Switch::Wan => "wan",
        })
    }

    /// The name of `router`'s port on switch `sw` (in the switch namespace).
    pub fn switch_port(&self, _sw: Switch, router: Router) -> &'static str {
        router.name()
    }

    /// Every namespace name of this lab, in creation order.
    pub fn namespace_names(&self) -> Vec<&str> {
        self.namespaces.iter().map(NetNs::name).collect()
    }

    /// The default control socket of `router`: `/run/carp/<namespace>.sock`,
    /// unique per lab so parallel labs do not collide.
    pub fn control_socket(&self, router: Router) -> PathBuf {
        PathBuf::from(format!("/run/carp/{}{}.sock", self.prefix, router.name()))
    }

    /// The bpffs of `router`: `/run/carp/<namespace>.bpf`, mounted in the
    /// host's mount namespace by [`Lab::build`] (so pins made under `ip netns
    /// exec` outlive the process) and unmounted when the lab goes.
    pub fn bpffs(&self, router: Router) -> PathBuf {
        PathBuf::from(format!("/run/carp/{}{}.bpf", self.prefix, router.name()))
    }

    /// The pins of `router`'s interface `dev` that exist now (file names).
    pub fn pins(&self, router: Router, dev: &str) -> Vec<String> {
        let dir = self.bpffs(router).join("carp").join(dev);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The directory [`crate::pair::Pair`] keeps configs, logs and the sync
    /// key in: `<tmp>/<prefix>run`.
    pub fn run_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}run", self.prefix))
    }

    /// The shared sync key (the same for both routers of this lab).
    pub fn sync_key(&self) -> &str {
        &self.sync_key
    }

    /// The `key_file` a config written to `dir` names: `params.sync_key_file`,
    /// else `dir/sync.key`.
    pub fn sync_key_path(&self, params: &NodeParams, dir: &Path) -> PathBuf {
        params
            .sync_key_file
            .clone()
            .unwrap_or_else(|| dir.join("sync.key"))
    }

    /// Writes the shared sync key to `path` with mode 0600 (also when the
    /// file existed with other permissions).
    pub fn write_sync_key(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let mut f = std::fs::File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        f.write_all(self.sync_key.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The controller config (TOML) for `router`. With `params.sync`, its
    /// `key_file` is `params.sync_key_file` or `sync.key` in [`Lab::run_dir`].
    pub fn router_config(&self, router: Router, params: &NodeParams) -> String {
        self.config_text(router, params, &self.sync_key_path(params, &self.run_dir()))
    }

    fn config_text(&self, router: Router, params: &NodeParams, key_file: &Path) -> String {
        let socket = params
            .control_socket
            .clone()
            .unwrap_or_else(|| self.control_socket(router));
        let mut s = String::new();
        let _ = writeln!(s, "[node]");
        let _ = writeln!(s, "name = {}", toml_str(router.name()));
        let _ = writeln!(
            s,
            "control_socket = {}",
            toml_str(&socket.to_string_lossy())
        );
        if let Some(m) = &params.metrics_listen {
            let _ = writeln!(s, "metrics_listen = {}", toml_str(m));
        }
        let _ = writeln!(s, "xdp_mode = {}", toml_str(&params.xdp_mode));
        let _ = writeln!(s, "holder_device = {}", toml_str(&params.holder_device));
        if params.pinned {
            let _ = writeln!(
                s,
                "bpffs = {}",
                toml_str(&self.bpffs(router).to_string_lossy())
            );
        }
        let mut vhids = vec![(LAN_VHID, "lan0", LAN_VIP, LAN_VIP6, params.advskew_lan)];
        if self.with_wan {
            vhids.push((WAN_VHID, "wan0", WAN_VIP, WAN_VIP6, params.advskew_wan));
        }
        for (id, dev, vip, vip6, advskew) in vhids {
            let _ = writeln!(s);
            let _ = writeln!(s, "[[vhid]]");
            let _ = writeln!(s, "id = {id}");
            let _ = writeln!(s, "interface = {}", toml_str(dev));
            let mut addresses = toml_str(&format!("{vip}/{LAN_NET_PREFIX}"));
            if self.ipv6 {
                let _ = write!(
                    addresses,
                    ", {}",
                    toml_str(&format!("{vip6}/{NET6_PREFIX}"))
                );
            }
            let _ = writeln!(s, "addresses = [{addresses}]");
            let _ = writeln!(s, "password = {}", toml_str(&params.password));
            match params.advbase_ms {
                Some(ms) => {
                    let _ = writeln!(s, "advbase_ms = {ms}");
                }
                None => {
                    let _ = writeln!(s, "advbase = {}", params.advbase);
                }
            }
            let _ = writeln!(s, "advskew = {advskew}");
            let _ = writeln!(s, "preempt = {}", params.preempt);
            if params.vhid_peers {
                let peer = match id {
                    LAN_VHID => router.other().lan_ip(),
                    _ => router.other().wan_ip(),
                };
                let _ = writeln!(s, "peers = [{}]", toml_str(&peer.to_string()));
            }
        }
        if params.sync {
            let _ = writeln!(s);
            let _ = writeln!(s, "[sync]");
            let _ = writeln!(s, "interface = {}", toml_str("sync0"));
            let _ = writeln!(
                s,
                "peer = {}",
                toml_str(&router.other().sync_ip().to_string())
            );
            let _ = writeln!(s, "key_file = {}", toml_str(&key_file.to_string_lossy()));
            if let Some(r) = params.sync_refresh_s {
                let _ = writeln!(s, "refresh_interval = {r}");
            }
        }
        s
    }

    /// Writes the config of `router` to `dir/<router>.toml` and returns the
    /// path. With `params.sync`, also writes the shared key (mode 0600) to
    /// [`Lab::sync_key_path`] and names it in `key_file`.
    pub fn write_router_config(
        &self,
        router: Router,
        params: &NodeParams,
        dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        let key_file = self.sync_key_path(params, dir);
        if params.sync {
            self.write_sync_key(&key_file)?;
        }
        let path = dir.join(format!("{}.toml", router.name()));
        std::fs::write(&path, self.config_text(router, params, &key_file))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Sets `dev` (e.g. `lan0`) of `router` down or up: a cable pull as the
    /// router sees it (carrier lost on the router's side; the peer veth end in
    /// the switch also loses carrier).
    pub fn set_link(&self, router: Router, dev: &str, up: bool) -> anyhow::Result<()> {
        self.router(router)
            .ip(["link", "set", dev, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Sets several of `router`'s links down (or up) in one `ip -batch` run,
    /// in the order given: microseconds apart, where separate `ip` processes
    /// would take milliseconds each (a node's death is all links at once).
    pub fn set_links(&self, router: Router, devs: &[&str], up: bool) -> anyhow::Result<()> {
        let script: String = devs
            .iter()
            .map(|d| format!("link set {d} {}\n", if up { "up" } else { "down" }))
            .collect();
        let path =
            std::env::temp_dir().join(format!("{}{}-links.batch", self.prefix, router.name()));
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        let res = self
            .router(router)
            .ip(["-batch".as_ref(), path.as_os_str()]);
        let _ = std::fs::remove_file(&path);
        res.map(|_| ())
    }

    /// Makes both routers a stateful NAT router, as a pf/OPNsense pair is:
    /// [`STATEFUL_RULESET`] (forward policy drop, only connections from the
    /// LAN may start, source NAT of the LAN to the WAN VIP) and strict TCP
    /// tracking (`nf_conntrack_tcp_loose=0`, `nf_conntrack_tcp_be_liberal=0`),
    /// so a router without the conntrack entry of a session drops its packets
    /// instead of picking it up mid-stream: only replicated state can carry a
    /// session across a failover. Needs the WAN side. Call it before the
    /// controllers start (it does not touch CARP: input stays permissive, so
    /// adverts and sync traffic are never `ct state invalid`-dropped).
    pub fn make_stateful(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.with_wan, "a stateful lab needs the WAN side");
        for r in Router::ALL {
            let ns = self.router(r);
            nft_load(ns, STATEFUL_RULESET)
                .with_context(|| format!("loading the NAT ruleset on {}", r.name()))?;
            // The conntrack sysctls exist once the ruleset's `ct` expressions
            // have loaded nf_conntrack (they are per namespace).
            ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
            ns.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "0")?;
        }
        self.stateful = true;
        Ok(())
    }

    /// Whether [`Lab::make_stateful`] ran.
    pub fn is_stateful(&self) -> bool {
        self.stateful
    }

    /// The ports of switch `sw` on which the bridge has learned `mac`
    /// (`bridge fdb`, dynamic entries only): a virtual MAC must be on at most
    /// one port, the master's.
    pub fn fdb_ports_for(&self, sw: Switch, mac: [u8; 6]) -> anyhow::Result<Vec<String>> {
        let want = format_mac(mac);
        let out = self
            .switch(sw)
            .exec(["bridge", "-j", "fdb", "show", "br", "br0"])?;
        let entries: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `bridge -j fdb show` output")?;
        let mut ports = Vec::new();
        for e in entries.as_array().map(Vec::as_slice).unwrap_or_default() {
            let is_mac = e
                .get("mac")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.eq_ignore_ascii_case(&want));
            // Static/permanent entries are the bridge's own port addresses.
            let dynamic = e
                .get("state")
                .and_then(|s| s.as_str())
                .is_none_or(|s| s.is_empty());
            if is_mac && dynamic {
                if let Some(dev) = e.get("ifname").and_then(|d| d.as_str()) {
                    if !ports.iter().any(|p| p == dev) {
                        ports.push(dev.to_owned());
                    }
                }
            }
        }
        Ok(ports)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Reverse order: hosts and routers go before the switches they hang on.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
        // A controller killed with SIGKILL leaves its control socket behind,
        // and its sysctl state file (the namespaces, whose sysctls it names, are gone).
        // The pins (and with them any data path a killed controller left)
        // go with the router's bpffs.
        for r in Router::ALL {
            crate::netns::unmount_bpffs(&self.bpffs(r));
        }
        for r in Router::ALL {
            let socket = self.control_socket(r);
            let _ = std::fs::remove_file(carp_user::netlink::sysctl_state_path(&socket));
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The routers' nftables ruleset in a stateful lab ([`Lab::make_stateful`]).
/// The filter is `table inet`, so with [`LabOptions::ipv6`] it judges the
/// routed IPv6 traffic as the IPv4 traffic (the NAT is IPv4 only). Neighbour
/// discovery is never `ct state invalid`: conntrack marks solicitations and
/// advertisements untracked, and they are not forwarded. The leading `table ...; delete table ...` pairs make loading it twice
/// replace it rather than duplicate the rules (nft 1.0.6 has no `destroy`).
pub const STATEFUL_RULESET: &str = r#"table inet carp_lab
delete table inet carp_lab
table ip carp_nat
delete table ip carp_nat

table inet carp_lab {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname "lan0" oifname "wan0" icmp type echo-request ct state new accept
        iifname "lan0" oifname "wan0" ct state new accept
    }
    chain input {
        # CARP (112) and sync (240) arrive here too (never ct-invalid).
        type filter hook input priority filter; policy accept;
        # Needed with sync: while VHIDs move a few ms apart, the node that
        # still holds the WAN VIP sees replies to data the other node
        # forwarded; its conntrack calls them invalid, does not de-NAT them,
        # and the local stack would answer them with a RST (a killed flow).
        ct state invalid drop
    }
}

table ip carp_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ip saddr 10.77.0.0/24 snat to 10.88.0.1
    }
}
"#;

/// `nft -f -` in `ns` with `text` on stdin, checked.
fn nft_load(ns: &NetNs, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin.write_all(text.as_bytes()).context("writing to nft")?;
    drop(stdin);
    let out = child.wait_with_output().context("waiting for nft")?;
    anyhow::ensure!(
        out.status.success(),
        "nft -f - in {} failed ({}): {}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// 32 random-looking bytes as 64 hex characters: a sync key per lab.
fn random_key_hex() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut s = String::with_capacity(64);
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u64(i);
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        let _ = write!(s, "{:016x}", h.finish());
    }
    s
}

/// `00:00:5e:00:01:<vhid>`, the CARP/VRRP virtual MAC (RFC 5798 §7.3).
pub use carp_common::virtual_mac as vmac;

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{list, require_root};

    fn ping(ns: &NetNs, target: Ipv4Addr) -> bool {
        // -W 1: a missing route or ARP failure must not stall the suite;
        // three tries 0.2 s apart: one reply is enough (a loaded machine may
        // lose the first to two ARP resolutions in a row).
        let out = ns
            .exec_unchecked([
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-q",
                &target.to_string(),
            ])
            .expect("running ping");
        out.status.success()
    }

    #[test]
    fn config_matches_the_controller_schema() {
        let lab = Lab {
            prefix: "carpt-x-".into(),
            with_wan: true,
            ipv6: false,
            namespaces: Vec::new(),
            sync_key: random_key_hex(),
            stateful: false,
        };
        let params = NodeParams {
            advskew_wan: 100,
            ..NodeParams::default()
        };
        let toml = lab.router_config(Router::Fw2, &params);
        let cfg = carp_user::config::parse(&toml)
            .unwrap_or_else(|e| panic!("config rejected: {e:?}\n{toml}"));
        assert_eq!(cfg.config.node.name, "fw2");
        assert_eq!(cfg.config.vhids.len(), 2);
        assert!(
            toml.contains("control_socket = \"/run/carp/carpt-x-fw2.sock\""),
            "{toml}"
        );
        let with6 = Lab {
            prefix: "carpt-x-".into(),
            with_wan: true,
            ipv6: true,
            namespaces: Vec::new(),
            sync_key: random_key_hex(),
            stateful: false,
        };
        let toml = with6.router_config(Router::Fw1, &NodeParams::default());
        let cfg = carp_user::config::parse(&toml)
            .unwrap_or_else(|e| panic!("IPv6 config rejected: {e:?}\n{toml}"));
        let vips6: Vec<Vec<Ipv6Addr>> = cfg
            .config
            .vhids
            .iter()
            .map(|v| v.addresses6.iter().map(|n| n.addr()).collect())
            .collect();
        assert_eq!(vips6, [vec![LAN_VIP6], vec![WAN_VIP6]], "{toml}");
        assert!(
            toml.contains("addresses = [\"10.77.0.1/24\", \"2001:db8:77::1/64\"]")
                && toml.contains("addresses = [\"10.88.0.1/24\", \"2001:db8:88::1/64\"]"),
            "{toml}"
        );
        let lan_only = Lab {
            prefix: "carpt-x-".into(),
            with_wan: false,
            ipv6: false,
            namespaces: Vec::new(),
            sync_key: random_key_hex(),
            stateful: false,
        };
        let toml = lan_only.router_config(Router::Fw1, &NodeParams::default());
        assert!(!toml.contains("wan0"), "{toml}");
        let fast = NodeParams {
            advbase_ms: Some(10),
            ..NodeParams::default()
        };
        let toml = lab.router_config(Router::Fw1, &fast);
        assert_eq!(toml.matches("advbase_ms = 10\n").count(), 2, "{toml}");
        assert!(!toml.contains("advbase = "), "{toml}");
        let cfg = carp_user::config::parse(&toml)
            .unwrap_or_else(|e| panic!("fast-mode config rejected: {e:?}\n{toml}"));
        assert_eq!(cfg.config.vhids.len(), 2);
        let unicast = NodeParams {
            vhid_peers: true,
            ..NodeParams::default()
        };
        let toml = lab.router_config(Router::Fw1, &unicast);
        let cfg = carp_user::config::parse(&toml)
            .unwrap_or_else(|e| panic!("unicast config rejected: {e:?}\n{toml}"));
        let peers: Vec<_> = cfg.config.vhids.iter().map(|v| v.peers.clone()).collect();
        assert_eq!(
            peers,
            [vec![Router::Fw2.lan_ip()], vec![Router::Fw2.wan_ip()]],
            "{toml}"
        );
    }

    #[test]
    fn sync_section_names_the_peer_and_a_private_shared_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let lab = Lab {
            prefix: format!("carpt-synckey-{}-", std::process::id()),
            with_wan: true,
            ipv6: false,
            namespaces: Vec::new(),
            sync_key: random_key_hex(),
            stateful: false,
        };
        let plain = lab.router_config(Router::Fw1, &NodeParams::default());
        assert!(!plain.contains("[sync]"), "{plain}");
        let dir = std::env::temp_dir().join(format!("{}dir", lab.prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let params = NodeParams {
            sync: true,
            ..NodeParams::default()
        };
        let mut keys = Vec::new();
        for r in Router::ALL {
            let path = lab.write_router_config(r, &params, &dir).unwrap();
            let toml = std::fs::read_to_string(&path).unwrap();
            let key = dir.join("sync.key");
            assert!(toml.contains("\n[sync]\ninterface = \"sync0\"\n"), "{toml}");
            assert!(
                toml.contains(&format!("peer = \"{}\"", r.other().sync_ip())),
                "{toml}"
            );
            assert!(
                toml.contains(&format!("key_file = {}", toml_str(&key.to_string_lossy()))),
                "{toml}"
            );
            let meta = std::fs::metadata(&key).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            keys.push(std::fs::read(&key).unwrap());
        }
        assert_eq!(keys[0], keys[1], "both routers must share the key");
        assert!(keys[0].len() >= 32);
        // Not the same key as another lab's.
        assert_ne!(random_key_hex(), lab.sync_key());
        // Without a directory, the key is named in Pair's run directory.
        assert!(lab.router_config(Router::Fw2, &params).contains(
            &lab.run_dir()
                .join("sync.key")
                .to_string_lossy()
                .into_owned()
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stateful_lab_loads_the_ruleset_and_strict_tcp_tracking() {
        if !require_root() {
            return;
        }
        let mut lab = Lab::build(LabOptions::default()).expect("building the lab");
        lab.make_stateful().expect("ruleset");
        // Loading twice replaces rather than duplicates.
        lab.make_stateful().expect("ruleset again");
        assert!(lab.is_stateful());
        for r in Router::ALL {
            let ns = lab.router(r);
            let out = ns.exec(["nft", "list", "ruleset"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.matches("snat to 10.88.0.1").count(), 1, "{text}");
            assert!(text.contains("policy drop"), "{text}");
            for key in [
                "net.netfilter.nf_conntrack_tcp_loose",
                "net.netfilter.nf_conntrack_tcp_be_liberal",
            ] {
                let out = ns.exec(["sysctl", "-n", key]).unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{key}");
            }
        }
        let mut lan_only = Lab::build(LabOptions {
            with_wan: false,
            ..LabOptions::default()
        })
        .expect("lan-only lab");
        assert!(lan_only.make_stateful().is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    /// The lab end to end, with the VIPs added by hand on fw1 only for the
    /// duration of this test (in the product the controller adds them).
    #[test]
    fn lab_forwards_through_a_hand_made_vip_and_leaves_nothing_behind() {
        if !require_root() {
            return;
        }
        let names: Vec<String>;
        {
            let lab = Lab::build(LabOptions::default()).expect("building the lab");
            names = lab
                .namespace_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            assert_eq!(names.len(), 6);

            // Plain reachability without any VIP.
            for r in Router::ALL {
                assert!(ping(lab.client(), r.lan_ip()), "client -> {}", r.lan_ip());
                assert!(ping(lab.server(), r.wan_ip()), "server -> {}", r.wan_ip());
            }
            assert!(
                ping(lab.router(Router::Fw1), Router::Fw2.sync_ip()),
                "fw1 -> fw2 over sync0"
            );
            assert!(
                ping(lab.router(Router::Fw2), Router::Fw1.sync_ip()),
                "fw2 -> fw1 over sync0"
            );
            // No VIP yet: the client has no gateway.
            assert!(
                !ping(lab.client(), SERVER_IP),
                "client reached the server without a gateway"
            );

            let fw1 = lab.router(Router::Fw1);
            fw1.ip(["addr", "add", &format!("{LAN_VIP}/24"), "dev", "lan0"])
                .unwrap();
            fw1.ip(["addr", "add", &format!("{WAN_VIP}/24"), "dev", "wan0"])
                .unwrap();
            // The failed ping above left an INCOMPLETE neighbour entry for the
            // VIP that would only be re-probed on its 1 s retransmit timer.
            lab.client().ip(["neigh", "flush", "dev", "eth0"]).unwrap();
            assert!(
                ping(lab.client(), SERVER_IP),
                "client -> server through fw1"
            );
            fw1.ip(["addr", "del", &format!("{LAN_VIP}/24"), "dev", "lan0"])
                .unwrap();
            fw1.ip(["addr", "del", &format!("{WAN_VIP}/24"), "dev", "wan0"])
                .unwrap();

            // The fdb helper sees fw1's lan0 MAC on port fw1 only.
            let out = fw1.exec(["cat", "/sys/class/net/lan0/address"]).unwrap();
            let mac_s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let mut mac = [0u8; 6];
            for (b, h) in mac.iter_mut().zip(mac_s.split(':')) {
                *b = u8::from_str_radix(h, 16).unwrap();
            }
            assert_eq!(
                lab.fdb_ports_for(Switch::Lan, mac).unwrap(),
                vec!["fw1".to_owned()]
            );

            // A cable pull on fw1's LAN side.
            lab.set_link(Router::Fw1, "lan0", false).unwrap();
            assert!(!ping(lab.client(), Router::Fw1.lan_ip()));
            lab.set_link(Router::Fw1, "lan0", true).unwrap();
            // The link comes back asynchronously (carrier, bridge port state), and
            // a ping during the cable pull left the neighbour entry FAILED: allow
            // a few bounded retries.
            let back = (0..5).any(|_| ping(lab.client(), Router::Fw1.lan_ip()));
            assert!(back, "client -> fw1 after the link came back");
        }
        let now = list().unwrap();
        for n in &names {
            assert!(!now.contains(n), "namespace {n} left behind");
        }
    }

    #[test]
    fn lan_only_lab_and_cleanup_on_panic() {
        if !require_root() {
            return;
        }
        let names = std::sync::Mutex::new(Vec::<String>::new());
        let r = std::panic::catch_unwind(|| {
            let lab = Lab::build(LabOptions {
                with_wan: false,
                ..LabOptions::default()
            })
            .expect("building");
            *names.lock().unwrap() = lab
                .namespace_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            assert!(ping(lab.client(), Router::Fw2.lan_ip()));
            panic!("deliberate");
        });
        assert!(r.is_err());
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 4);
        let now = list().unwrap();
        for n in &names {
            assert!(!now.contains(n), "namespace {n} left behind after a panic");
        }
    }
}
