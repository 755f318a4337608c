//! Per-VHID gauges of the status page (issue "parity" §7), read at scrape
//! time from a snapshot the controller replaces with each status it publishes:
//!
//! | metric | labels | value |
//! |---|---|---|
//! | `carp_effective_advskew` | vhid, interface | the advskew sent: min(advskew + demotion, 240) |
//! | `carp_last_transition_timestamp_seconds` | vhid, interface | Unix time of the last state change (absent before the first) |
//! | `carp_master_advert_age_seconds` | vhid, interface | while BACKUP: seconds since the last accepted advert from the current master, computed at scrape time; absent while MASTER or INIT (there is no other master to hear) and in a BACKUP that has heard none yet |
//!
//! A snapshot rather than one `Family` per metric: a VHID removed by a reload
//! simply is not in the next snapshot (no stale series), and the advert age
//! must be computed when scraped, not when the controller last looked.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::VhidLabels;

/// One VHID's values, as the controller last published them.
#[derive(Clone, Debug, PartialEq)]
pub struct VhidGauges {
    pub vhid: u8,
    pub interface: String,
    /// The advskew this node sends (demotion included, capped at 240).
    pub effective_advskew: u8,
    /// Unix time (s) of the last state change.
    pub last_transition_unix: Option<f64>,
    /// While BACKUP: CLOCK_MONOTONIC ns (the XDP program's clock) at which
    /// the last accepted advert from the current master arrived.
    pub master_heard_ns: Option<u64>,
}

/// Shared between the controller (writes) and the scrape (reads).
pub type Snapshot = Arc<Mutex<Vec<VhidGauges>>>;

/// Encodes the snapshot; `now_ns` reads CLOCK_MONOTONIC (a parameter, so the
/// tests can fix it).
pub(super) struct VhidGaugeCollector {
    pub(super) snapshot: Snapshot,
    pub(super) now_ns: fn() -> u64,
}

impl std::fmt::Debug for VhidGaugeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhidGaugeCollector").finish_non_exhaustive()
    }
}

impl Collector for VhidGaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copied out so the lock is held for a clone, never for the encoding:
        // the controller replaces the snapshot from the election's thread.
        let rows = self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let now = (self.now_ns)();
        let labels = |r: &VhidGauges| VhidLabels {
            vhid: r.vhid,
            interface: r.interface.clone(),
        };

        let mut family = encoder.encode_descriptor(
            "carp_effective_advskew",
            "The advskew this node sends for the VHID: min(advskew + demotion, 240).",
            None,
            MetricType::Gauge,
        )?;
        for r in &rows {
            ConstGauge::new(i64::from(r.effective_advskew))
                .encode(family.encode_family(&labels(r))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "carp_last_transition_timestamp_seconds",
            "Unix time of the VHID's last state change.",
            None,
            MetricType::Gauge,
        )?;
        for r in &rows {
            if let Some(at) = r.last_transition_unix {
                ConstGauge::new(at).encode(family.encode_family(&labels(r))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "carp_master_advert_age_seconds",
            "While BACKUP: seconds since the last accepted advert from the current master \
             (absent while MASTER or INIT, and before a master was heard).",
            None,
            MetricType::Gauge,
        )?;
        for r in &rows {
            if let Some(at) = r.master_heard_ns {
                let age = now.saturating_sub(at) as f64 / 1e9;
                ConstGauge::new(age).encode(family.encode_family(&labels(r))?)?;
            }
        }
        Ok(())
    }
}
