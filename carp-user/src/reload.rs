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
                let show = |p: &[Ipv4Addr]| {
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
    problems.extend(ipv6_problems(running, new));
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

/// IPv6 VIPs are put in place at start only (holder device, `VIPS6`): a
/// reload that adds, removes or changes one, also with its VHID, needs a
/// restart (docs/NEXT.md says what a live change would take).
fn ipv6_problems(running: &Config, new: &Config) -> Vec<Problem> {
    let key = |v: &VhidConfig| (v.interface.clone(), v.id);
    let mut problems = Vec::new();
    for (i, n) in new.vhids.iter().enumerate() {
        let old = running.vhids.iter().find(|o| key(o) == key(n));
        let old6 = old.map_or(&[][..], |o| o.addresses6.as_slice());
        if old6 != n.addresses6.as_slice() {
            problems.push(Problem {
                field: format!("vhid[{i}].addresses"),
                reason: "IPv6 addresses changed: needs a restart".to_string(),
            });
        }
    }
    for o in &running.vhids {
        if !o.addresses6.is_empty() && !new.vhids.iter().any(|n| key(n) == key(o)) {
            problems.push(Problem {
                field: "vhid".to_string(),
                reason: format!(
                    "vhid {} on {} (with IPv6 addresses) removed: needs a restart",
                    o.id, o.interface
                ),
            });
        }
    }
    problems
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
    fn reload_plan_refuses_ipv6_address_changes() {
        let with6 = BASE.replace(
            "addresses = [\"10.77.0.1/24\"]",
            "addresses = [\"10.77.0.1/24\", \"2001:db8::1/64\"]",
        );
        assert_ne!(with6, BASE);
        // Unchanged IPv6 addresses, other changes: applied live.
        let skew = with6.replace("advskew = 100", "advskew = 50");
        let plan = plan_reload(&cfg(&with6), &cfg(&skew)).expect("no refusal");
        assert_eq!(plan.changed.len(), 1);
        // Added, removed, or their VHID removed: a restart.
        for (from, to) in [(BASE, with6.as_str()), (with6.as_str(), BASE)] {
            let problems = plan_reload(&cfg(from), &cfg(to)).expect_err("refused");
            assert_eq!(fields(&problems), ["vhid[0].addresses"], "{problems:?}");
        }
        let moved = with6.replace("id = 1\n", "id = 3\n");
        let problems = plan_reload(&cfg(&with6), &cfg(&moved)).expect_err("refused");
        assert_eq!(fields(&problems), ["vhid[0].addresses", "vhid"], "{problems:?}");
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
        assert_eq!(plan.changed[0].1.peers, [Ipv4Addr::new(10, 77, 0, 12)]);
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
