//! Config reload (SIGHUP), the pure part: which changes a running controller
//! can apply live and which need a restart. `node` applies the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::config::{Config, Problem, VhidConfig};
use crate::election::Base;

/// What a reload changes, per VHID identified by (interface, id).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// In the running configuration, not in the new one.
    pub removed: Vec<VhidConfig>,
    /// In the new configuration only, on an interface already managed.
    pub added: Vec<VhidConfig>,
    /// (running, new) where any setting differs.
    pub changed: Vec<(VhidConfig, VhidConfig)>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }

    /// One line per change, for the log. Passwords are never shown.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in &self.removed {
            out.push(format!("vhid {} on {}: removed", v.id, v.interface));
        }
        for (old, new) in &self.changed {
            let mut what = Vec::new();
            // A switch to or from fast mode (advbase_ms) is a base change like
            // any other: the election re-arms or re-advertises with it.
            match (old.advbase, new.advbase) {
                (Base::Seconds(a), Base::Seconds(b)) if a != b => {
                    what.push(format!("advbase {a} -> {b}"));
                }
                (Base::Millis(a), Base::Millis(b)) if a != b => {
                    what.push(format!("advbase_ms {a} -> {b}"));
                }
                (a, b) if a != b => what.push(format!("{a} -> {b}")),
                _ => {}
            }
            if old.advskew != new.advskew {
                what.push(format!("advskew {} -> {}", old.advskew, new.advskew));
            }
            if old.preempt != new.preempt {
                what.push(format!("preempt {} -> {}", old.preempt, new.preempt));
            }
            if old.password != new.password {
                what.push("password changed".to_string());
            }
            if old.hooks != new.hooks {
                what.push("hooks changed".to_string());
            }
            // Unicast peers change live: the next advert goes to the new
            // list, and adverts are judged with it (controller/unicast.rs).
            if old.peers != new.peers {
                let show = |p: &[std::net::IpAddr]| {
                    let list: Vec<String> = p.iter().map(ToString::to_string).collect();
                    if list.is_empty() {
                        "multicast".to_string()
                    } else {
                        format!("[{}]", list.join(", "))
                    }
                };
                let (from, to) = (show(&old.peers), show(&new.peers));
                what.push(format!("peers {from} -> {to}"));
            }
            for a in new.addresses.iter().filter(|a| !old.addresses.contains(a)) {
                what.push(format!("+{a}"));
            }
            for a in old.addresses.iter().filter(|a| !new.addresses.contains(a)) {
                what.push(format!("-{a}"));
            }
            for a in new
                .addresses6
                .iter()
                .filter(|a| !old.addresses6.contains(a))
            {
                what.push(format!("+{a}"));
            }
            for a in old
                .addresses6
                .iter()
                .filter(|a| !new.addresses6.contains(a))
            {
                what.push(format!("-{a}"));
            }
            if what.is_empty() {
                what.push("addresses reordered".to_string());
            }
            out.push(format!(
                "vhid {} on {}: {}",
                new.id,
                new.interface,
                what.join(", ")
            ));
        }
        for v in &self.added {
            out.push(format!("vhid {} on {}: added", v.id, v.interface));
        }
        out
    }
}

/// Compares the running configuration with a new, valid one. Changes that need a
/// restart refuse the reload as a whole, one [`Problem`] per field: any `[node]`
/// setting (the control socket, the metrics listener and the holder device are
/// set up once; the XDP mode is chosen at attach time), a VHID on an interface
/// the controller does not manage (it would need XDP, sysctls and a group
/// membership there), and an interface left without any VHID.
pub fn plan_reload(running: &Config, new: &Config) -> Result<ReloadPlan, Vec<Problem>> {
    let mut problems = Vec::new();
    let restart = |field: &str, what: String| Problem {
        field: field.to_string(),
        reason: format!("{what}: needs a restart"),
    };
    let (a, b) = (&running.node, &new.node);
    if a.name != b.name {
        problems.push(restart(
            "node.name",
            format!("{:?} -> {:?}", a.name, b.name),
        ));
    }
    if a.control_socket != b.control_socket {
        problems.push(restart(
            "node.control_socket",
            format!(
                "{} -> {}",
                a.control_socket.display(),
                b.control_socket.display()
            ),
        ));
    }
    if a.metrics_listen != b.metrics_listen {
        let show =
            |m: &Option<std::net::SocketAddr>| m.map_or("none".to_string(), |m| m.to_string());
        problems.push(restart(
            "node.metrics_listen",
            format!("{} -> {}", show(&a.metrics_listen), show(&b.metrics_listen)),
        ));
    }
    if a.xdp_mode != b.xdp_mode {
        problems.push(restart(
            "node.xdp_mode",
            format!("{} -> {}", a.xdp_mode, b.xdp_mode),
        ));
    }
    if a.holder_device != b.holder_device {
        problems.push(restart(
            "node.holder_device",
            format!("{:?} -> {:?}", a.holder_device, b.holder_device),
        ));
    }
    // The node's hooks and split-brain policy are handed to the runner and
    // the watches at start.
    for kind in crate::hooks::HookKind::ALL {
        if a.hooks.get(kind) != b.hooks.get(kind) {
            problems.push(restart(
                &format!("node.{}", kind.key()),
                "changed".to_string(),
            ));
        }
    }
    if a.hook_timeout_s != b.hook_timeout_s {
        problems.push(restart(
            "node.hook_timeout",
            format!("{} -> {}", a.hook_timeout_s, b.hook_timeout_s),
        ));
    }
    if a.split_brain != b.split_brain {
        problems.push(restart(
            "node.split_brain",
            format!("{} -> {}", a.split_brain, b.split_brain),
        ));
    }
    // Mounted, read and set once at start: the pins, the state file, the
    // election thread's scheduling.
    if a.bpffs != b.bpffs {
        problems.push(restart(
            "node.bpffs",
            format!("{} -> {}", a.bpffs.display(), b.bpffs.display()),
        ));
    }
    if a.state_dir != b.state_dir {
        problems.push(restart(
            "node.state_dir",
            format!("{} -> {}", a.state_dir.display(), b.state_dir.display()),
        ));
    }
    if a.rt_priority != b.rt_priority {
        problems.push(restart(
            "node.rt_priority",
            format!("{} -> {}", a.rt_priority, b.rt_priority),
        ));
    }
    // The sync engine (its socket, XDP instance, key and peer set) is set up
    // once at start; a changed `[sync]` would need it rebuilt.
    if running.sync != new.sync {
        problems.push(restart("sync", "the [sync] table changed".to_string()));
    }
    let managed: BTreeSet<&str> = running.vhids.iter().map(|v| v.interface.as_str()).collect();
    let kept: BTreeSet<&str> = new.vhids.iter().map(|v| v.interface.as_str()).collect();
    for (i, v) in new.vhids.iter().enumerate() {
        if !managed.contains(v.interface.as_str()) {
            problems.push(restart(
                &format!("vhid[{i}].interface"),
                format!(
                    "{} is not an interface this controller runs on",
                    v.interface
                ),
            ));
        }
    }
    for iface in managed.difference(&kept) {
        problems.push(restart(
            "vhid",
            format!("no VHID left on {iface}, which this controller runs on"),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key = |v: &VhidConfig| (v.interface.clone(), v.id);
    let mut plan = ReloadPlan::default();
    for old in &running.vhids {
        match new.vhids.iter().find(|n| key(n) == key(old)) {
            None => plan.removed.push(old.clone()),
            Some(n) if n != old => plan.changed.push((old.clone(), n.clone())),
            Some(_) => {}
        }
    }
    for n in &new.vhids {
        if !running.vhids.iter().any(|old| key(old) == key(n)) {
            plan.added.push(n.clone());
        }
    }
    Ok(plan)
}

/// IPv6 VIP → VHID per interface, as the `VIPS6` maps hold them.
pub(crate) fn vip6_maps(c: &Config) -> BTreeMap<&str, BTreeMap<std::net::Ipv6Addr, u8>> {
    let mut out: BTreeMap<&str, BTreeMap<std::net::Ipv6Addr, u8>> = BTreeMap::new();
    for v in &c.vhids {
        let m = out.entry(v.interface.as_str()).or_default();
        for a in vips6_of(v) {
            m.insert(a, v.id);
        }
    }
    out
}

/// VIP → VHID per interface, as the XDP VIP maps hold them.
pub(crate) fn vip_maps(c: &Config) -> BTreeMap<&str, BTreeMap<Ipv4Addr, u8>> {
    let mut out: BTreeMap<&str, BTreeMap<Ipv4Addr, u8>> = BTreeMap::new();
    for v in &c.vhids {
        let m = out.entry(v.interface.as_str()).or_default();
        for a in vips_of(v) {
            m.insert(a, v.id);
        }
    }
    out
}

/// The IPv6 VIPs of a VHID, ascending (the digest sorts them too).
pub(crate) fn vips6_of(v: &VhidConfig) -> Vec<std::net::Ipv6Addr> {
    let mut out: Vec<std::net::Ipv6Addr> = v.addresses6.iter().map(|a| a.addr()).collect();
    out.sort();
    out
}

/// The VIPs of a VHID, ascending (the order the advert digest uses).
pub(crate) fn vips_of(v: &VhidConfig) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = v.addresses.iter().map(|a| a.addr()).collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const BASE: &str = r#"
[node]
name = "fw1"
metrics_listen = "127.0.0.1:9701"

[[vhid]]
id = 1
interface = "lan0"
addresses = ["10.77.0.1/24"]
password = "secret"

[[vhid]]
id = 2
interface = "wan0"
addresses = ["10.88.0.1/24"]
password = "secret"
advskew = 100
"#;

    fn cfg(text: &str) -> Config {
        config::parse(text)
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n{text}"))
            .config
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn reload_plan_ipv6_address_changes_live() {
        let with6 = BASE.replace(
            "addresses = [\"10.77.0.1/24\"]",
            "addresses = [\"10.77.0.1/24\", \"2001:db8::1/64\"]",
        );
        assert_ne!(with6, BASE);
        let plan = plan_reload(&cfg(BASE), &cfg(&with6)).expect("applied live");
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.summary(), ["vhid 1 on lan0: +2001:db8::1/64"]);
        let plan = plan_reload(&cfg(&with6), &cfg(BASE)).expect("applied live");
        assert_eq!(plan.summary(), ["vhid 1 on lan0: -2001:db8::1/64"]);
        let c = cfg(&with6);
        let maps = vip6_maps(&c);
        assert_eq!(maps["lan0"][&"2001:db8::1".parse().unwrap()], 1);
        assert!(maps["wan0"].is_empty());
    }

    #[test]
    fn reload_plan_same_file_is_empty() {
        let plan = plan_reload(&cfg(BASE), &cfg(BASE)).expect("no refusal");
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan.summary().is_empty());
    }

    #[test]
    fn reload_plan_refuses_node_changes_field_by_field() {
        let new = BASE
            .replace("name = \"fw1\"", "name = \"fw9\"")
            .replace("127.0.0.1:9701", "127.0.0.1:9702")
            .replace(
                "[node]\n",
                "[node]\nxdp_mode = \"generic\"\nholder_device = \"lo\"\ncontrol_socket = \"/run/x.sock\"\n",
            );
        let problems = plan_reload(&cfg(BASE), &cfg(&new)).expect_err("refused");
        assert_eq!(
            fields(&problems),
            [
                "node.name",
                "node.control_socket",
                "node.metrics_listen",
                "node.xdp_mode",
                "node.holder_device"
            ]
        );
        for p in &problems {
            assert!(p.reason.ends_with("needs a restart"), "{p}");
        }
        assert!(problems[2]
            .reason
            .contains("127.0.0.1:9701 -> 127.0.0.1:9702"));
    }

    /// Settings used once at start are refused too, not ignored.
    #[test]
    fn reload_plan_refuses_start_only_node_settings() {
        let new = BASE.replace(
            "[node]\n",
            "[node]\nbpffs = \"/run/other.bpf\"\nstate_dir = \"/var/lib/other\"\nrt_priority = 0\n",
        );
        let problems = plan_reload(&cfg(BASE), &cfg(&new)).expect_err("refused");
        assert_eq!(
            fields(&problems),
            ["node.bpffs", "node.state_dir", "node.rt_priority"]
        );
    }

    #[test]
    fn reload_plan_refuses_a_new_interface_and_an_emptied_one() {
        let new = BASE.replace("interface = \"wan0\"", "interface = \"dmz0\"");
        let problems = plan_reload(&cfg(BASE), &cfg(&new)).expect_err("refused");
        assert_eq!(fields(&problems), ["vhid[1].interface", "vhid"]);
        assert!(problems[0].reason.contains("dmz0"), "{}", problems[0]);
        assert!(
            problems[1].reason.contains("no VHID left on wan0"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn reload_plan_per_vhid_changes() {
        let new = format!(
            "{}\n[[vhid]]\nid = 3\ninterface = \"lan0\"\naddresses = [\"10.77.0.3/24\"]\npassword = \"p\"\n",
            BASE.replace("\"10.77.0.1/24\"]", "\"10.77.0.1/24\", \"10.77.0.2/24\"]\nadvskew = 200")
        );
        let plan = plan_reload(&cfg(BASE), &cfg(&new)).expect("applied");
        assert!(plan.removed.is_empty());
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.changed[0].1.advskew, 200);
        assert_eq!(plan.added.len(), 1);
        assert_eq!(plan.added[0].id, 3);
        assert_eq!(
            plan.summary(),
            [
                "vhid 1 on lan0: advskew 0 -> 200, +10.77.0.2/24",
                "vhid 3 on lan0: added"
            ]
        );

        // Back again: VHID 3 removed, VHID 1 restored; the password is not shown.
        let back = BASE.replace("password = \"secret\"\n\n", "password = \"other\"\n\n");
        let plan = plan_reload(&cfg(&new), &cfg(&back)).expect("applied");
        assert_eq!(
            plan.summary(),
            [
                "vhid 3 on lan0: removed",
                "vhid 1 on lan0: advskew 200 -> 0, password changed, -10.77.0.2/24"
            ]
        );
        assert!(plan.summary().iter().all(|l| !l.contains("other")));
    }

    /// advbase and advbase_ms (fast mode) changes are per-VHID changes,
    /// applied live like an advbase change.
    #[test]
    fn reload_plan_base_changes() {
        let fast = BASE.replace(
            "password = \"secret\"\n\n",
            "password = \"secret\"\nadvbase_ms = 50\n\n",
        );
        let plan = plan_reload(&cfg(BASE), &cfg(&fast)).expect("applied");
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.changed[0].1.advbase, Base::Millis(50));
        assert_eq!(
            plan.summary(),
            ["vhid 1 on lan0: advbase 1 -> advbase_ms 50"]
        );
        let faster = fast.replace("advbase_ms = 50", "advbase_ms = 20");
        let plan = plan_reload(&cfg(&fast), &cfg(&faster)).expect("applied");
        assert_eq!(plan.summary(), ["vhid 1 on lan0: advbase_ms 50 -> 20"]);
        let slow = fast.replace("advbase_ms = 50", "advbase = 2");
        let plan = plan_reload(&cfg(&fast), &cfg(&slow)).expect("applied");
        assert_eq!(
            plan.summary(),
            ["vhid 1 on lan0: advbase_ms 50 -> advbase 2"]
        );
        let plan = plan_reload(&cfg(BASE), &cfg(&slow)).expect("applied");
        assert_eq!(plan.summary(), ["vhid 1 on lan0: advbase 1 -> 2"]);
    }

    /// The node's hooks and split-brain policy need a restart; a VHID's own
    /// hooks change live (the runner reads them at each transition).
    #[test]
    fn reload_plan_hooks() {
        let node = BASE.replace(
            "[node]\n",
            "[node]\non_master = [\"/bin/true\"]\nhook_timeout = 3\nsplit_brain = \"alarm\"\n",
        );
        let problems = plan_reload(&cfg(BASE), &cfg(&node)).expect_err("refused");
        assert_eq!(
            fields(&problems),
            ["node.on_master", "node.hook_timeout", "node.split_brain"]
        );
        assert!(
            problems[2].reason.contains("step_back -> alarm"),
            "{}",
            problems[2]
        );
        let vhid = BASE.replacen(
            "password = \"secret\"\n",
            "password = \"secret\"\non_backup = [\"/bin/true\", \"x\"]\n",
            1,
        );
        let plan = plan_reload(&cfg(BASE), &cfg(&vhid)).expect("applied");
        assert_eq!(plan.summary(), ["vhid 1 on lan0: hooks changed"]);
    }

    /// Unicast peers are a live per-VHID change, in both directions.
    #[test]
    fn reload_plan_peers_change_live() {
        let unicast = BASE.replacen(
            "password = \"secret\"\n",
            "password = \"secret\"\npeers = [\"10.77.0.12\"]\n",
            1,
        );
        let plan = plan_reload(&cfg(BASE), &cfg(&unicast)).expect("applied");
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.changed[0].1.peers, [std::net::IpAddr::from(Ipv4Addr::new(10, 77, 0, 12))]);
        assert_eq!(
            plan.summary(),
            ["vhid 1 on lan0: peers multicast -> [10.77.0.12]"]
        );
        let two = unicast.replace("[\"10.77.0.12\"]", "[\"10.77.0.12\", \"10.77.0.13\"]");
        let plan = plan_reload(&cfg(&unicast), &cfg(&two)).expect("applied");
        assert_eq!(
            plan.summary(),
            ["vhid 1 on lan0: peers [10.77.0.12] -> [10.77.0.12, 10.77.0.13]"]
        );
        let plan = plan_reload(&cfg(&two), &cfg(BASE)).expect("applied");
        assert_eq!(
            plan.summary(),
            ["vhid 1 on lan0: peers [10.77.0.12, 10.77.0.13] -> multicast"]
        );
    }

    #[test]
    fn reload_vip_maps_follow_vhids() {
        let c = cfg(BASE);
        let maps = vip_maps(&c);
        assert_eq!(maps["lan0"].get(&Ipv4Addr::new(10, 77, 0, 1)), Some(&1));
        assert_eq!(maps["wan0"].get(&Ipv4Addr::new(10, 88, 0, 1)), Some(&2));
        assert_eq!(maps.len(), 2);
    }
}
