//! The status model: what the controller reports about each VHID, what the control socket
//! sends as JSON, and what `carp status` prints as a table.
//!
//! The JSON field names are part of the interface (scripts and tests read them):
//! `{"node": NAME, "vhids": [{"id", "interface", "state", "advbase", "advskew",
//! "effective_advskew", "addresses", ..., "advbase_ms"}], ...}`. Fields are only ever
//! added, after the existing ones; serde writes them in declaration order.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::demotion::Demotion;

/// `VhidStatus::state` of a VHID that is starting or whose link is down.
pub const STATE_INIT: &str = "INIT";
/// `VhidStatus::state` of a VHID that listens and takes over when the master goes quiet.
pub const STATE_BACKUP: &str = "BACKUP";
/// `VhidStatus::state` of a VHID that answers for its addresses.
pub const STATE_MASTER: &str = "MASTER";

/// The whole node, as `{"cmd":"status"}` returns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NodeStatus {
    /// `node.name` from the config.
    pub node: String,
    /// One entry per `[[vhid]]`, in config order.
    pub vhids: Vec<VhidStatus>,
    /// The node's demotion counter (carp(4)'s `net.inet.carp.demotion`): added to every
    /// VHID's advskew on the wire, capped at 240. 0 when healthy.
    #[serde(default)]
    pub demotion: u32,
    /// State replication, when `[sync]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<crate::sync::runtime::SyncStatus>,
    /// Why the node is demoted: `demotion` split into `link`, `sync`, `operator` and
    /// `maintenance` (`crate::demotion`).
    #[serde(default)]
    pub demotion_reasons: Demotion,
    /// Persistent CARP maintenance mode (`carp maintenance on`): demotion 240, kept
    /// across restarts and reboots.
    #[serde(default)]
    pub maintenance: bool,
    /// CARP disabled by the operator (`carp disable`): every VHID INIT and silent
    /// until `carp enable`.
    #[serde(default)]
    pub disabled: bool,
}

/// One VHID on one interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct VhidStatus {
    pub id: u8,
    pub interface: String,
    /// [`STATE_INIT`], [`STATE_BACKUP`] or [`STATE_MASTER`].
    pub state: String,
    /// advbase as advertised: the configured seconds, or 0 in fast mode (see
    /// `advbase_ms`).
    pub advbase: u8,
    /// Configured advskew.
    pub advskew: u8,
    /// The advskew this node sends: min(advskew + demotion, 240) (docs/protocol.md §2), or the
    /// configured one when not demoted.
    pub effective_advskew: u8,
    /// Virtual addresses with prefix length, e.g. `"10.77.0.1/24"`.
    pub addresses: Vec<String>,
    pub preempt: bool,
    /// How XDP is attached on `interface`: `"native"` or `"generic"`.
    pub xdp_mode: String,
    /// Carrier of `interface` as the controller last saw it.
    pub link_up: bool,
    /// Seconds since the last state change; `None` if the VHID never changed state.
    pub last_transition_secs_ago: Option<f64>,
    /// As BACKUP: milliseconds until the master is declared down (negative if overdue).
    /// `None` in other states.
    pub master_expires_in_ms: Option<i64>,
    pub adverts_sent: u64,
    /// Authenticated adverts accepted from other nodes.
    pub adverts_received: u64,
    /// Fast mode: the configured `advbase_ms` (docs/protocol.md §2, "Fast mode
    /// (advbase 0)"); absent for whole-second VHIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advbase_ms: Option<u16>,
    /// The last state change; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<TransitionStatus>,
    /// As BACKUP: the master this node hears, from its last accepted advert; absent
    /// in other states and before a master was heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterHeard>,
    /// The split-brain alarm (`crate::splitbrain`): the sync peer's hello says
    /// MASTER while this node is MASTER too, or this node holds back for it, or
    /// the peer holds back for this node. Present (`true`) only while on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_brain: bool,
}

/// A state change of a VHID (`VhidStatus::last_transition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TransitionStatus {
    /// When, as Unix time in seconds (wall clock, so it compares with logs).
    pub at: f64,
    /// [`STATE_INIT`], [`STATE_BACKUP`] or [`STATE_MASTER`].
    pub from: String,
    pub to: String,
    /// The election's reason (`crate::election::Why::label`): `started`,
    /// `master_down`, `preempt`, `peer_bowed_out`, `higher_priority_master`,
    /// `link_down`, `link_up`, `shutdown`, `disabled`, `enabled`.
    pub why: String,
}

/// The master a BACKUP hears (`VhidStatus::master`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MasterHeard {
    /// The advert's IPv4 source: the master's own address on the interface.
    pub address: String,
    /// advbase and advskew as advertised (its demotion included; advbase 0 in fast mode).
    pub advbase: u8,
    pub advskew: u8,
    /// Milliseconds since its last accepted advert, when the status was made.
    pub age_ms: u64,
}
/// Renders the node's status as a table, like OPNsense's "High Availability → Status"
/// (CARP) page: one row per virtual address, the VHID's columns on its first row only.
///
/// ```text
/// node fw1, demotion 50 (operator 50): advertising a raised advskew
/// sync peer fw2 10.99.0.2: up
/// INTERFACE  VHID  VIRTUAL IP    STATUS  ADVBASE  ADVSKEW (EFFECTIVE)  XDP      LINK  LAST CHANGE                             MASTER HEARD                 ADVERTS OUT/IN
/// lan0       1     10.77.0.1/24  MASTER  1        0 (50)               generic  up    12.3s ago (BACKUP->MASTER: master_down)  -                            12/0
/// wan0       2     192.0.2.1/29  BACKUP  1        100 (150)            native   up    3.1s ago (INIT->BACKUP: started)         192.0.2.3 skew 0, 0.4s ago  0/4
/// ```
///
/// The first line adds `; MAINTENANCE MODE` and `; CARP DISABLED (carp enable)` when
/// they are on; LAST CHANGE says from what, to what and why; MASTER HEARD is the
/// master a BACKUP listens to (its address, advertised advskew, age of its last
/// advert). A fast-mode VHID shows its base as `50ms` in the ADVBASE column.
pub fn render_table(status: &NodeStatus) -> String {
    let mut out = format!("node {}, demotion ", status.node);
    // A controller that reports the reasons: "290 (operator 50, maintenance 240)".
    if status.demotion_reasons.total() == status.demotion && status.demotion > 0 {
        let _ = write!(out, "{}", status.demotion_reasons);
    } else {
        let _ = write!(out, "{}", status.demotion);
    }
    if status.demotion > 0 {
        out.push_str(": advertising a raised advskew");
    }
    if status.maintenance {
        out.push_str("; MAINTENANCE MODE");
    }
    if status.disabled {
        out.push_str("; CARP DISABLED (carp enable)");
    }
    out.push('\n');
    if let Some(sync) = &status.sync {
        for p in &sync.peers {
            let _ = writeln!(
                out,
                "sync peer {} {}: {}",
                p.name.as_deref().unwrap_or("?"),
                p.address,
                if p.up { "up" } else { "DOWN" }
            );
        }
    }
    if status.vhids.is_empty() {
        out.push_str("no VHIDs configured\n");
        return out;
    }

    const HEADER: [&str; COLUMNS] = [
        "INTERFACE",
        "VHID",
        "VIRTUAL IP",
        "STATUS",
        "ADVBASE",
        "ADVSKEW (EFFECTIVE)",
        "XDP",
        "LINK",
        "LAST CHANGE",
        "MASTER HEARD",
        "ADVERTS OUT/IN",
    ];
    let mut rows: Vec<[String; COLUMNS]> = vec![HEADER.map(String::from)];
    for v in &status.vhids {
        let mut addresses = v.addresses.iter();
        let first = addresses.next().cloned().unwrap_or_else(|| "-".into());
        rows.push([
            v.interface.clone(),
            v.id.to_string(),
            first,
            v.state.clone(),
            v.advbase_ms
                .map_or_else(|| v.advbase.to_string(), |ms| format!("{ms}ms")),
            format!("{} ({})", v.advskew, v.effective_advskew),
            v.xdp_mode.clone(),
            if v.link_up { "up" } else { "down" }.into(),
            last_change(v),
            v.master.as_ref().map_or_else(
                || "-".into(),
                |m| {
                    format!(
                        "{} skew {}, {} ago",
                        m.address,
                        m.advskew,
                        human_secs(m.age_ms as f64 / 1000.0)
                    )
                },
            ),
            format!("{}/{}", v.adverts_sent, v.adverts_received),
        ]);
        for more in addresses {
            let mut row: [String; COLUMNS] = Default::default();
            row[2] = more.clone();
            rows.push(row);
        }
    }

    let mut widths = [0usize; COLUMNS];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for v in status.vhids.iter().filter(|v| v.split_brain) {
        let _ = writeln!(out, "{}", split_brain_line(v));
    }
    if let Some(sync) = &status.sync {
        render_sync(&mut out, sync);
    }
    out
}

/// Under the table, per VHID whose split-brain alarm is on (`crate::splitbrain`).
fn split_brain_line(v: &VhidStatus) -> String {
    let here = if v.state == STATE_MASTER {
        "this node is MASTER"
    } else {
        "this node holds back while the peer's hello says MASTER"
    };
    format!(
        "SPLIT BRAIN: {} vhid {}: adverts between the nodes are lost (the sync peer's hello disagrees); {here}",
        v.interface, v.id
    )
}

/// Columns of the VHID table.
const COLUMNS: usize = 11;

/// "12.3s ago", or "12.3s ago (BACKUP->MASTER: preempt)" when the controller says
/// what the change was.
fn last_change(v: &VhidStatus) -> String {
    let Some(ago) = v.last_transition_secs_ago else {
        return "-".into();
    };
    match &v.last_transition {
        Some(t) => format!("{} ago ({}->{}: {})", human_secs(ago), t.from, t.to, t.why),
        None => format!("{} ago", human_secs(ago)),
    }
}

/// The sync section under the VHID table.
fn render_sync(out: &mut String, s: &crate::sync::runtime::SyncStatus) {
    let _ = writeln!(
        out,
        "sync on {} ({}): states sent {}, received {}, installed {}, held for peers {}, retransmits {}, event overruns {}{}",
        s.interface,
        s.local_address,
        s.states_sent,
        s.states_received,
        s.states_installed,
        s.states_held,
        s.retransmits,
        s.event_overruns,
        if s.bulk_in_progress { ", waiting for bulk (demoted)" } else { "" }
    );
    for p in &s.peers {
        let _ = writeln!(
            out,
            "  peer {} {}: {}, last heard {}, seq in {} out {} (acked {}), lag {} ms{}",
            p.address,
            p.name.as_deref().unwrap_or("?"),
            if p.up { "up" } else { "DOWN" },
            p.last_heard_ms.map_or_else(
                || "never".into(),
                |ms| format!("{} ago", human_secs(ms as f64 / 1000.0))
            ),
            p.last_seq_received,
            p.last_seq_sent,
            p.acked,
            p.lag_ms,
            p.bulk_in
                .map_or_else(String::new, |(got, est)| format!(", bulk {got}/{est}")),
        );
    }
}

/// "12.3s", "5m07s", "2h05m", "3d04h": short enough for a table cell.
fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    // Truncation is what we want: "1m59s", never "2m60s".
    let s = secs as u64;
    match s {
        0..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhid(id: u8, interface: &str, state: &str, addresses: &[&str]) -> VhidStatus {
        VhidStatus {
            id,
            interface: interface.into(),
            state: state.into(),
            advbase: 1,
            advskew: 0,
            effective_advskew: 0,
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            preempt: true,
            xdp_mode: "generic".into(),
            link_up: true,
            last_transition_secs_ago: Some(12.34),
            master_expires_in_ms: None,
            adverts_sent: 10,
            adverts_received: 0,
            advbase_ms: None,
            ..VhidStatus::default()
        }
    }

    fn sample() -> NodeStatus {
        let mut wan = vhid(2, "wan0", STATE_BACKUP, &["192.0.2.1/29"]);
        wan.advskew = 100;
        wan.effective_advskew = 240;
        wan.link_up = false;
        wan.xdp_mode = "native".into();
        wan.last_transition_secs_ago = Some(3725.0);
        wan.master_expires_in_ms = Some(2900);
        wan.last_transition = Some(TransitionStatus {
            at: 1_700_000_000.5,
            from: STATE_MASTER.into(),
            to: STATE_BACKUP.into(),
            why: "higher_priority_master".into(),
        });
        wan.master = Some(MasterHeard {
            address: "192.0.2.3".into(),
            advbase: 1,
            advskew: 0,
            age_ms: 420,
        });
        wan.adverts_received = 3721;
        let mut init = vhid(3, "lan0", STATE_INIT, &["10.77.0.3/24"]);
        init.last_transition_secs_ago = None;
        let mut fast = vhid(4, "lan0", STATE_BACKUP, &["10.77.0.4/24"]);
        fast.advbase = 0;
        fast.advbase_ms = Some(50);
        fast.advskew = 100;
        fast.effective_advskew = 240;
        NodeStatus {
            node: "fw1".into(),
            demotion: 240,
            sync: None,
            vhids: vec![
                vhid(1, "lan0", STATE_MASTER, &["10.77.0.1/24", "10.77.0.2/24"]),
                wan,
                init,
                fast,
            ],
            demotion_reasons: Demotion {
                link: 240,
                ..Demotion::default()
            },
            ..NodeStatus::default()
        }
    }

    #[test]
    fn status_table_is_exact() {
        let expected = "\
node fw1, demotion 240 (link 240): advertising a raised advskew
INTERFACE  VHID  VIRTUAL IP    STATUS  ADVBASE  ADVSKEW (EFFECTIVE)  XDP      LINK  LAST CHANGE                                         MASTER HEARD                ADVERTS OUT/IN
lan0       1     10.77.0.1/24  MASTER  1        0 (0)                generic  up    12.3s ago                                           -                           10/0
                 10.77.0.2/24
wan0       2     192.0.2.1/29  BACKUP  1        100 (240)            native   down  1h02m ago (MASTER->BACKUP: higher_priority_master)  192.0.2.3 skew 0, 0.4s ago  10/3721
lan0       3     10.77.0.3/24  INIT    1        0 (0)                generic  up    -                                                   -                           10/0
lan0       4     10.77.0.4/24  BACKUP  50ms     100 (240)            generic  up    12.3s ago                                           -                           10/0
";
        assert_eq!(render_table(&sample()), expected);
    }

    #[test]
    fn status_table_without_vhids() {
        let s = NodeStatus {
            node: "fw2".into(),
            demotion: 0,
            sync: None,
            vhids: vec![],
            ..NodeStatus::default()
        };
        assert_eq!(
            render_table(&s),
            "node fw2, demotion 0\nno VHIDs configured\n"
        );
    }

    #[test]
    fn status_human_durations() {
        assert_eq!(human_secs(0.04), "0.0s");
        assert_eq!(human_secs(59.94), "59.9s");
        assert_eq!(human_secs(119.9), "1m59s");
        assert_eq!(human_secs(3725.0), "1h02m");
        assert_eq!(human_secs(2.0 * 86_400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(human_secs(f64::NAN), "?");
    }

    #[test]
    fn status_json_field_order_is_the_interface() {
        let s = NodeStatus {
            node: "fw1".into(),
            demotion: 0,
            sync: None,
            vhids: vec![vhid(1, "lan0", STATE_MASTER, &["10.77.0.1/24"])],
            ..NodeStatus::default()
        };
        let json = serde_json::to_string(&s).expect("serialize");
        let prefix = r#"{"node":"fw1","vhids":[{"id":1,"interface":"lan0","state":"MASTER","advbase":1,"advskew":0,"effective_advskew":0,"addresses":["10.77.0.1/24"],"#;
        assert!(json.starts_with(prefix), "{json}");
        let back: NodeStatus = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
        // Whole-second VHIDs carry no advbase_ms; fast ones add it last.
        assert!(!json.contains("advbase_ms"), "{json}");
        let mut fast = s.clone();
        fast.vhids[0].advbase = 0;
        fast.vhids[0].advbase_ms = Some(50);
        let json = serde_json::to_string(&fast).expect("serialize");
        assert!(
            json.contains(r#""adverts_received":0,"advbase_ms":50}"#),
            "{json}"
        );
        let back: NodeStatus = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, fast);
    }

    #[test]
    fn status_operator_fields_are_added_and_old_json_still_reads() {
        let mut s = sample();
        s.demotion = 290;
        s.demotion_reasons = Demotion {
            operator: 50,
            maintenance: 240,
            ..Demotion::default()
        };
        s.maintenance = true;
        s.disabled = true;
        let json = serde_json::to_string(&s).expect("serialize");
        assert!(
            json.contains(r#""demotion_reasons":{"link":0,"sync":0,"operator":50,"maintenance":240},"maintenance":true,"disabled":true}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""last_transition":{"at":1700000000.5,"from":"MASTER","to":"BACKUP","why":"higher_priority_master"},"master":{"address":"192.0.2.3","advbase":1,"advskew":0,"age_ms":420}}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).expect("back"), s);
        let table = render_table(&s);
        assert!(
            table.starts_with(
                "node fw1, demotion 290 (operator 50, maintenance 240): advertising a raised advskew; MAINTENANCE MODE; CARP DISABLED (carp enable)\n"
            ),
            "{table}"
        );
        // A status from a controller without these fields reads with defaults.
        let old = r#"{"node":"fw1","vhids":[{"id":1,"interface":"lan0","state":"MASTER","advbase":1,"advskew":0,"effective_advskew":0,"addresses":[],"preempt":true,"xdp_mode":"generic","link_up":true,"last_transition_secs_ago":null,"master_expires_in_ms":null,"adverts_sent":0,"adverts_received":0}],"demotion":240}"#;
        let st: NodeStatus = serde_json::from_str(old).expect("old status");
        assert_eq!(st.demotion_reasons, Demotion::default());
        assert!(!st.maintenance && !st.disabled);
        assert_eq!(st.vhids[0].master, None);
        // Without reasons the table shows the bare number.
        assert!(render_table(&st).starts_with("node fw1, demotion 240: advertising"));
    }
}
