//! The XDP data path of one CARP interface: the embedded `carp-ebpf` object,
//! its maps, and its attachment.
//!
//! One [`XdpInstance`] per interface: the maps have no interface in their keys
//! and the interface MAC is a load-time constant (`IF_MAC`). The controller
//! owns every decision; this module only writes and reads the maps that the
//! kernel program consults (docs/design.md, "BPF maps"):
//!
//! - `VHIDS` (array, index = VHID): [`VhidEntry`]; failover is one [`XdpInstance::set_vhid`].
//! - `VIPS4` (hash): IPv4 VIP → VHID.
//! - `VIPS4_SLOTS` (array, index = the address folded to 14 bits): how many
//!   VIPs fall in that slot and, if one, which and its VHID, so that the
//!   program skips the hash for almost every address, VIPs included; kept in
//!   step with `VIPS4` by [`XdpInstance::add_vip`] and
//!   [`XdpInstance::remove_vip`] (see [`names::VIPS4_SLOTS`]).
//! - `VIPS6` (hash) and `VIPS6_SLOTS` (array): the same pair for IPv6 VIPs
//!   ([`XdpInstance::add_vip6`], [`XdpInstance::remove_vip6`]); one generic
//!   bookkeeping in `vip_slots` keeps both prefilters.
//! - `COUNTERS` (per-CPU array): one packet count per [`Reason`].
//! - `ADVERTS` (ring buffer): [`AdvertRecord`]s for the controller to verify.
//!
//! # Draining advertisements
//!
//! [`XdpInstance::take_adverts`] hands out the ring buffer once. The controller
//! wraps it in `tokio::io::unix::AsyncFd::with_interest(ring, Interest::READABLE)`
//! (the ring's fd becomes readable when records are pending), and on each
//! readiness calls `ring.next()` until it returns `None`, decoding every item
//! with [`decode_record`], then `clear_ready()`. Records carry the kernel's
//! arrival time (`ktime_ns`, CLOCK_MONOTONIC, compare with [`ktime_now_ns`]).
//!
//! # Lifetime
//!
//! [`XdpInstance::attach`] uses a bpf_link where the kernel has it, so the
//! program is detached when the instance (or the process) goes away.
//! [`XdpInstance::attach_pinned`], which the controller uses, pins the links
//! and the `VHIDS` map on a bpffs ([`crate::pins`]): the program outlives a
//! killed or stopped controller, answering for its MASTER VHIDs until their
//! dead-man deadlines and then for none (a silent node, never a zombie), and a
//! restarted controller swaps its own program into the same links
//! (`bpf_link_update`, atomic) after copying the promises. [`XdpInstance::detach`]
//! and dropping the instance remove the pins, so an orderly stop leaves nothing.
//!
//! # Egress
//!
//! The same attach also puts `carp_tc_egress` on the interface's TC egress
//! hook (TCX on kernels that have it, else a `clsact` qdisc filter), so the
//! MASTER's VIP traffic leaves with the virtual MAC as source (docs/protocol.md
//! §3). It is an improvement, not a requirement: if it cannot be attached the
//! node runs without it, with a warning ([`XdpInstance::tc_egress_attached`]).
//! Its link goes with the instance like the XDP one. A `clsact` qdisc this
//! instance had to add (kernels before TCX, 6.6) stays on the interface:
//! aya 0.14 can add one (`qdisc_add_clsact`) but has no call that removes it,
//! and an empty `clsact` qdisc is harmless.
//!
//! # The sync interface
//!
//! [`SyncXdp`] is a separate loaded instance of the same object on the
//! dedicated sync interface, with `carp_sync` attached instead of `carp_xdp`:
//! it drops sync frames (IPv4 protocol 240) that are not from a configured
//! peer (`SYNC_PEERS`, [`SyncXdp::set_peers`]), not sent with TTL 255,
//! fragmented or malformed, and passes the rest, for the sync engine's raw
//! socket. It has its own `COUNTERS`, read the same way
//! ([`SyncXdp::counters`], [`SyncXdp::counters_reader`]).
use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::{
    mem::{self, MaybeUninit},
    net::Ipv4Addr,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId, TcAttachType, TcError},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfError, EbpfLoader,
};
use carp_common::{names, AdvertRecord, Reason, VhidEntry, VhidState};
use thiserror::Error;

mod vip_slots;

use crate::pins::{self, PinDir};

/// The eBPF object built by `build.rs` from `carp-ebpf` (aya-build writes the
/// binary target `carp-ebpf` to `OUT_DIR`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/carp-ebpf"));

/// Name of the do-nothing program used as the benchmark baseline.
pub const EMPTY_PROGRAM: &str = "carp_xdp_empty";

/// Name of the TC egress program that sources VIP traffic from the virtual MAC.
pub const TC_EGRESS_PROGRAM: &str = "carp_tc_egress";

/// How to attach: `node.xdp_mode` (docs/design.md, "Attach mode") once `auto` has been resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`); only for drivers known to do `XDP_TX`.
    Native,
    /// In the stack (`XDP_FLAGS_SKB_MODE`); works everywhere, e.g. veth, bridges.
    Generic,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AttachMode> for XdpMode {
    fn from(mode: AttachMode) -> Self {
        match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("loading the carp-ebpf object failed")]
    Load(#[source] EbpfError),
    #[error("program {name} is missing from the carp-ebpf object or has another type")]
    MissingProgram { name: &'static str },
    #[error("loading program {name} into the kernel failed (verifier?)")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name} is missing from the carp-ebpf object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {op} failed")]
    Map {
        name: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching XDP to {ifname} in {mode} mode failed")]
    Attach {
        ifname: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {TC_EGRESS_PROGRAM} to the TC egress hook of {ifname} failed")]
    AttachTc {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("adding a clsact qdisc to {ifname} failed")]
    Clsact {
        ifname: String,
        #[source]
        source: TcError,
    },
    #[error("already attached to {ifname}; one instance serves one interface")]
    AlreadyAttached { ifname: String },
    #[error("detaching XDP from {ifname} failed")]
    Detach {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("VHID 0 is not valid (CARP VHIDs are 1..=255)")]
    InvalidVhid,
    #[error("{count} sync peers; the sync program holds at most {max}")]
    TooManySyncPeers { count: usize, max: u32 },
    #[error("pin {}: {what}", path.display())]
    Pin {
        path: std::path::PathBuf,
        what: String,
    },
}

fn map_err(name: &'static str, op: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map { name, op, source }
}

/// A link an instance holds: owned by its program (detached with the
/// instance), or pinned (outlives the process until the pin is removed).
enum Held<Id> {
    Owned(Id),
    Pinned(FdLink),
}

/// One jiffy in ns, the program's `TICK_NS`: the resolution of
/// CLOCK_MONOTONIC_COARSE, which advances once per timekeeping tick (4 ms at
/// HZ=250). 0 if unknown, which turns the program's jiffies cache off.
pub fn tick_ns() -> u64 {
    match nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(res) => {
            u64::try_from(res.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(res.tv_nsec()).unwrap_or(0)
        }
        Err(_) => 0,
    }
}

/// The program's `COARSE_SLACK_NS`: how far jiffies may lag the monotonic
/// clock, with room to spare: 4 ticks and at least 20 ms (a tick can come
/// late under NOHZ or with a busy timekeeper). Within the slack of a MASTER
/// deadline the program reads the precise clock on every packet, which a
/// healthy master's deadline (3 × advbase ahead) never is at advbase ≥ 1 s.
pub fn coarse_slack_ns() -> u64 {
    const FLOOR_NS: u64 = 20_000_000;
    tick_ns().saturating_mul(4).max(FLOOR_NS)
}

/// The loaded XDP object of one interface.
pub struct XdpInstance {
    ebpf: Ebpf,
    if_mac: [u8; 6],
    attached: Option<(String, AttachMode, Held<XdpLinkId>)>,
    /// The TC egress link, when the egress program is attached.
    tc_egress: Option<Held<SchedClassifierLinkId>>,
    /// Where [`Self::attach_pinned`] pinned the data path.
    pins: Option<PinDir>,
}

impl std::fmt::Debug for XdpInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpInstance")
            .field("if_mac", &self.if_mac)
            .field("attached", &self.attached.as_ref().map(|(i, m, _)| (i, m)))
            .field("tc_egress", &self.tc_egress.is_some())
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

/// An instance that goes away in an orderly way (a stop, an error at start)
/// takes its pins with it: only a process that dies without running this
/// (SIGKILL, a stall) leaves the data path behind.
impl Drop for XdpInstance {
    fn drop(&mut self) {
        if let Some(dir) = self.pins.take() {
            if let Err(e) = dir.remove() {
                tracing::warn!(dir = %dir.path().display(), error = %e, "removing the pins failed");
            }
        }
    }
}

impl XdpInstance {
    /// Loads the object with `IF_MAC` set to `if_mac` (the MAC of the interface
    /// this instance will serve) and loads its programs into the kernel
    /// (verifier run), without attaching anything. All VHIDs start
    /// `Unconfigured`, the VIP map empty.
    pub fn load(if_mac: [u8; 6]) -> Result<Self, XdpError> {
        bump_memlock_rlimit();
        let ebpf = EbpfLoader::new()
            .override_global(names::IF_MAC, &if_mac, true)
            .override_global(names::COARSE_SLACK_NS, &coarse_slack_ns(), true)
            .override_global(names::TICK_NS, &tick_ns(), true)
            .load(OBJECT)
            .map_err(XdpError::Load)?;
        let mut this = Self {
            ebpf,
            if_mac,
            attached: None,
            tc_egress: None,
            pins: None,
        };
        for name in [names::PROGRAM, EMPTY_PROGRAM] {
            this.xdp_mut(name)?
                .load()
                .map_err(|source| XdpError::LoadProgram { name, source })?;
        }
        let name = TC_EGRESS_PROGRAM;
        this.tc_mut()?
            .load()
            .map_err(|source| XdpError::LoadProgram { name, source })?;
        Ok(this)
    }

    /// The interface MAC this instance was loaded with.
    pub fn if_mac(&self) -> [u8; 6] {
        self.if_mac
    }

    fn xdp_mut(&mut self, name: &'static str) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    fn tc_mut(&mut self) -> Result<&mut SchedClassifier, XdpError> {
        let name = TC_EGRESS_PROGRAM;
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    /// The `carp_tc_egress` program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn tc_egress_program(&self) -> Result<&SchedClassifier, XdpError> {
        let name = TC_EGRESS_PROGRAM;
        self.ebpf
            .program(name)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    fn xdp(&self, name: &'static str) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    /// The `carp_xdp` program, e.g. for `BPF_PROG_TEST_RUN` (`aya::programs::TestRun`).
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        self.xdp(names::PROGRAM)
    }

    /// The `carp_xdp_empty` baseline program (returns `XDP_PASS`, touches nothing).
    pub fn empty_program(&self) -> Result<&Xdp, XdpError> {
        self.xdp(EMPTY_PROGRAM)
    }

    /// Attaches `carp_xdp` to `ifname`, then `carp_tc_egress` to its TC egress
    /// hook. The links live as long as this instance. Only the XDP attach can
    /// fail this call: without the egress program the node still works (its
    /// VIP traffic keeps the interface MAC as source), so that failure is a
    /// warning and [`Self::tc_egress_attached`] says `false`.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<(), XdpError> {
        if let Some((attached, _, _)) = &self.attached {
            return Err(XdpError::AlreadyAttached {
                ifname: attached.clone(),
            });
        }
        let link = self
            .xdp_mut(names::PROGRAM)?
            .attach(ifname, mode.into())
            .map_err(|source| XdpError::Attach {
                ifname: ifname.to_owned(),
                mode,
                source,
            })?;
        self.attached = Some((ifname.to_owned(), mode, Held::Owned(link)));
        match self.attach_tc_egress(ifname) {
            Ok(link) => self.tc_egress = Some(Held::Owned(link)),
            Err(e) => tracing::warn!(interface = %ifname, error = %e,
                "TC egress attach failed; VIP traffic keeps the interface MAC as source"),
        }
        Ok(())
    }

    /// Like [`Self::attach`], but the links and the `VHIDS` map are pinned in
    /// `dir` ([`crate::pins`]) and outlive this process. Links a previous run
    /// pinned there are taken over: first every VHID that its map shows as
    /// MASTER with a deadline still ahead, and that this instance has
    /// configured (not `Unconfigured`), is copied into this instance's map;
    /// then this instance's programs replace the old ones in the same links
    /// (`bpf_link_update`: atomic, every packet sees one program or the
    /// other); only then does the `vhids` pin move to the new map. Returns
    /// the copied promises: the caller must not write a non-MASTER entry for
    /// those VHIDs before their deadlines (the old run promised MASTER).
    ///
    /// A pinned link of the other attach mode, or one that cannot be updated
    /// (its interface was deleted), is replaced by a fresh link. A failure to
    /// pin is a warning: the node then runs unpinned, as with [`Self::attach`].
    pub fn attach_pinned(
        &mut self,
        ifname: &str,
        mode: AttachMode,
        dir: PinDir,
    ) -> Result<Vec<(u8, VhidEntry)>, XdpError> {
        if let Some((attached, _, _)) = &self.attached {
            return Err(XdpError::AlreadyAttached {
                ifname: attached.clone(),
            });
        }
        dir.create().map_err(|e| XdpError::Pin {
            path: dir.path().to_owned(),
            what: e.to_string(),
        })?;
        let mut inherited = Vec::new();
        let mut taken = None;
        if let Some((old_mode, path)) = dir.existing_xdp_link() {
            if old_mode == mode.as_str() {
                match pins::read_promises(&dir.vhids(), ktime_now_ns()) {
                    Ok(promises) => {
                        for (vhid, entry) in promises {
                            if self.vhid(vhid)?.state != VhidState::Unconfigured as u32 {
                                self.set_vhid(vhid, entry)?;
                                inherited.push((vhid, entry));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(interface = %ifname, error = %e,
                        "the previous run's VHID states are unreadable; its MASTER entries end now"),
                }
                match self.take_over_xdp(&path) {
                    Ok(link) => taken = Some(link),
                    Err(e) => {
                        tracing::warn!(interface = %ifname, error = %e,
                            "the pinned XDP link cannot be taken over; attaching a new one");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            } else {
                tracing::warn!(interface = %ifname, pinned = old_mode, wanted = mode.as_str(),
                    "xdp_mode changed: replacing the pinned link (a short gap)");
                let _ = std::fs::remove_file(&path);
            }
        }
        let took_over = taken.is_some();
        let link = match taken {
            Some(link) => Held::Pinned(link),
            None => self.attach_and_pin_xdp(ifname, mode, &dir.xdp_link(mode.as_str()))?,
        };
        let pinned = matches!(link, Held::Pinned(_));
        self.attached = Some((ifname.to_owned(), mode, link));
        self.tc_egress = self.attach_tc_egress_pinned(ifname, &dir.tc_link());
        if pinned {
            // Between these two calls a crash leaves no map pin: the next run
            // then inherits nothing and its entries start silent (safe).
            let _ = std::fs::remove_file(dir.vhids());
            let pin = self
                .ebpf
                .map(names::VHIDS)
                .ok_or(XdpError::MissingMap { name: names::VHIDS })?
                .pin(dir.vhids());
            if let Err(e) = pin {
                tracing::warn!(interface = %ifname, error = %e,
                    "pinning the VHID map failed; a restart will not inherit MASTER entries");
            }
        }
        tracing::debug!(interface = %ifname, took_over, pinned, inherited = inherited.len(),
            dir = %dir.path().display(), "XDP attached (pinned)");
        self.pins = Some(dir);
        Ok(inherited)
    }

    /// Opens a pinned XDP link and swaps this instance's program into it.
    fn take_over_xdp(&mut self, path: &std::path::Path) -> Result<FdLink, XdpError> {
        let err = |what: String| XdpError::Pin {
            path: path.to_owned(),
            what,
        };
        let link = PinnedLink::from_pin(path).map_err(|e| err(format!("open: {e}")))?;
        let link = XdpLink::try_from(FdLink::from(link))
            .map_err(|e| err(format!("not an XDP link: {e}")))?;
        let program = self.xdp_mut(names::PROGRAM)?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| err(format!("bpf_link_update: {e}")))?;
        let link = program
            .take_link(id)
            .map_err(|e| err(format!("take_link: {e}")))?;
        FdLink::try_from(link).map_err(|e| err(format!("fd link: {e}")))
    }

    /// Attaches `carp_xdp` and pins the link at `path`; if the link cannot
    /// be pinned, attaches again unpinned and warns.
    fn attach_and_pin_xdp(
        &mut self,
        ifname: &str,
        mode: AttachMode,
        path: &std::path::Path,
    ) -> Result<Held<XdpLinkId>, XdpError> {
        let attach_err = |source| XdpError::Attach {
            ifname: ifname.to_owned(),
            mode,
            source,
        };
        let program = self.xdp_mut(names::PROGRAM)?;
        let id = program.attach(ifname, mode.into()).map_err(attach_err)?;
        let pinned = program
            .take_link(id)
            .map_err(|e| e.to_string())
            .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
            .and_then(|l| l.pin(path).map_err(|e| e.to_string()));
        match pinned {
            Ok(link) => Ok(Held::Pinned(FdLink::from(link))),
            Err(e) => {
                // The unpinnable link was dropped (and detached) on the way.
                tracing::warn!(pin = %path.display(), error = %e,
                    "the XDP link cannot be pinned; the data path dies with the controller");
                let program = self.xdp_mut(names::PROGRAM)?;
                let id = program.attach(ifname, mode.into()).map_err(attach_err)?;
                Ok(Held::Owned(id))
            }
        }
    }

    /// The TC egress link of [`Self::attach_pinned`]: a pinned one taken
    /// over, else a fresh one pinned; `None` (with a warning) if there is
    /// none, as in [`Self::attach`].
    fn attach_tc_egress_pinned(
        &mut self,
        ifname: &str,
        path: &std::path::Path,
    ) -> Option<Held<SchedClassifierLinkId>> {
        if path.exists() {
            let taken = PinnedLink::from_pin(path)
                .map_err(|e| e.to_string())
                .and_then(|l| {
                    SchedClassifierLink::try_from(FdLink::from(l)).map_err(|e| e.to_string())
                })
                .and_then(|l| {
                    let program = self.tc_mut().map_err(|e| e.to_string())?;
                    let id = program.attach_to_link(l).map_err(|e| e.to_string())?;
                    let link = program.take_link(id).map_err(|e| e.to_string())?;
                    FdLink::try_from(link).map_err(|e| e.to_string())
                });
            match taken {
                Ok(link) => return Some(Held::Pinned(link)),
                Err(e) => {
                    tracing::warn!(interface = %ifname, error = %e,
                        "the pinned TC egress link cannot be taken over; attaching a new one");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let id = match self.attach_tc_egress(ifname) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(interface = %ifname, error = %e,
                    "TC egress attach failed; VIP traffic keeps the interface MAC as source");
                return None;
            }
        };
        let pinned = self
            .tc_mut()
            .map_err(|e| e.to_string())
            .and_then(|p| p.take_link(id).map_err(|e| e.to_string()))
            .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
            .and_then(|l| l.pin(path).map_err(|e| e.to_string()));
        match pinned {
            Ok(link) => Some(Held::Pinned(FdLink::from(link))),
            Err(e) => {
                // A netlink (pre-TCX) filter cannot be pinned; it was dropped.
                tracing::warn!(interface = %ifname, error = %e,
                    "the TC egress link cannot be pinned; attaching it unpinned");
                self.attach_tc_egress(ifname).ok().map(Held::Owned)
            }
        }
    }

    /// Whether the data path is pinned (outlives this process).
    pub fn is_pinned(&self) -> bool {
        matches!(self.attached, Some((_, _, Held::Pinned(_))))
    }

    /// Whether `carp_tc_egress` is attached (see [`Self::attach`]).
    pub fn tc_egress_attached(&self) -> bool {
        self.tc_egress.is_some()
    }

    /// aya attaches with TCX where the kernel has it (6.6+), which needs no
    /// qdisc; the netlink fallback needs `clsact`. So the qdisc is added only
    /// if a first attempt fails, and an existing one (EEXIST) is fine.
    fn attach_tc_egress(&mut self, ifname: &str) -> Result<SchedClassifierLinkId, XdpError> {
        let attach_err = |source| XdpError::AttachTc {
            ifname: ifname.to_owned(),
            source,
        };
        let program = self.tc_mut()?;
        match program.attach(ifname, TcAttachType::Egress) {
            Ok(link) => return Ok(link),
            Err(e) => tracing::debug!(interface = %ifname, error = %e,
                "TC egress attach failed; adding a clsact qdisc and retrying"),
        }
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(XdpError::Clsact {
                    ifname: ifname.to_owned(),
                    source,
                })
            }
        }
        program
            .attach(ifname, TcAttachType::Egress)
            .map_err(attach_err)
    }

    /// Where and how the program is attached, if it is.
    pub fn attachment(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Detaches the program (the last step of a clean stop: docs/design.md "Lifetime"),
    /// first removing the pins if [`Self::attach_pinned`] made them.
    /// Dropping the instance does the same.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        if let Some(dir) = self.pins.take() {
            // Without its pins a link lives only as long as our fd on it.
            if let Err(e) = dir.remove() {
                tracing::warn!(dir = %dir.path().display(), error = %e, "removing the pins failed");
            }
        }
        match self.tc_egress.take() {
            // Best effort: the egress rewrite only matters while XDP runs, and
            // dropping the instance releases the link anyway.
            Some(Held::Owned(link)) => match self.tc_mut().map(|p| p.detach(link)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "detaching the TC egress program failed"),
                Err(e) => tracing::warn!(error = %e, "detaching the TC egress program failed"),
            },
            Some(Held::Pinned(link)) => drop(link),
            None => {}
        }
        match self.attached.take() {
            Some((ifname, _, Held::Owned(link))) => self
                .xdp_mut(names::PROGRAM)?
                .detach(link)
                .map_err(|source| XdpError::Detach { ifname, source }),
            Some((_, _, Held::Pinned(link))) => {
                drop(link);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn vhids_mut(&mut self) -> Result<Array<&mut MapData, VhidEntry>, XdpError> {
        let map = self
            .ebpf
            .map_mut(names::VHIDS)
            .ok_or(XdpError::MissingMap { name: names::VHIDS })?;
        Array::try_from(map).map_err(map_err(names::VHIDS, "open"))
    }

    /// Writes the whole entry of `vhid` in one map update, so the program never
    /// sees a half-written one (this is the failover).
    pub fn set_vhid(&mut self, vhid: u8, entry: VhidEntry) -> Result<(), XdpError> {
        if vhid == 0 {
            return Err(XdpError::InvalidVhid);
        }
        self.vhids_mut()?
            .set(u32::from(vhid), entry, 0)
            .map_err(map_err(names::VHIDS, "update"))
    }

    /// Marks `vhid` unconfigured: its adverts are dropped, its vMAC is unrelated.
    pub fn clear_vhid(&mut self, vhid: u8) -> Result<(), XdpError> {
        self.set_vhid(vhid, VhidEntry::new(VhidState::Unconfigured, 0))
    }

    /// The entry the program currently sees for `vhid`.
    pub fn vhid(&self, vhid: u8) -> Result<VhidEntry, XdpError> {
        let map = self
            .ebpf
            .map(names::VHIDS)
            .ok_or(XdpError::MissingMap { name: names::VHIDS })?;
        let array: Array<&MapData, VhidEntry> =
            Array::try_from(map).map_err(map_err(names::VHIDS, "open"))?;
        array
            .get(&u32::from(vhid), 0)
            .map_err(map_err(names::VHIDS, "lookup"))
    }

    /// Packets per [`Reason`] (index = `reason as usize`), summed over CPUs.
    pub fn counters(&self) -> Result<[u64; Reason::COUNT as usize], XdpError> {
        read_counters(&self.ebpf)
    }

    /// A second handle on `COUNTERS` (a duplicated map fd) that can live in
    /// another task, so the metrics endpoint reads the kernel's counters at
    /// scrape time without reaching into the controller's state. Its
    /// [`CountersReader::reasons`] are [`Reason::CARP_PROGRAM`].
    pub fn counters_reader(&self) -> Result<CountersReader, XdpError> {
        counters_reader(&self.ebpf, &Reason::CARP_PROGRAM)
    }

    /// Forgets every sender's advert budget (`ADVERT_SENDERS`) and refills
    /// every VHID's shared budget (`ADVERT_SHARED`), as after a fresh
    /// load: for benchmarks and tests that send many identical adverts.
    pub fn reset_advert_budget(&mut self) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(names::ADVERT_SENDERS)
            .ok_or(XdpError::MissingMap {
                name: names::ADVERT_SENDERS,
            })?;
        let mut senders: aya::maps::HashMap<
            &mut MapData,
            carp_common::AdvertSender,
            carp_common::AdvertBudget,
        > = aya::maps::HashMap::try_from(map).map_err(map_err(names::ADVERT_SENDERS, "open"))?;
        let keys: Vec<_> = senders.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = senders.remove(&k);
        }
        let map = self
            .ebpf
            .map_mut(names::ADVERT_SHARED)
            .ok_or(XdpError::MissingMap {
                name: names::ADVERT_SHARED,
            })?;
        let mut shared: Array<&mut MapData, carp_common::AdvertBudget> =
            Array::try_from(map).map_err(map_err(names::ADVERT_SHARED, "open"))?;
        for i in 0..carp_common::MAX_VHIDS {
            shared
                .set(i, carp_common::AdvertBudget::default(), 0)
                .map_err(map_err(names::ADVERT_SHARED, "update"))?;
        }
        Ok(())
    }

    /// Hands out the advertisement ring buffer (once; `None` afterwards). See
    /// the module documentation for how to drain it.
    pub fn take_adverts(&mut self) -> Option<Result<RingBuf<MapData>, XdpError>> {
        let map = self.ebpf.take_map(names::ADVERTS)?;
        Some(RingBuf::try_from(map).map_err(map_err(names::ADVERTS, "open")))
    }
}

/// The loaded XDP object of the sync interface, with `carp_sync` attached
/// (see the module documentation).
///
/// # Lifetime
///
/// Like [`XdpInstance`]: the program is attached with a bpf_link where the
/// kernel has one, owned by this value, so dropping it (or the process dying)
/// detaches `carp_sync` and frees its maps; [`Self::detach`] does it
/// explicitly. Without the program the sync interface is an ordinary link
/// (every frame reaches the stack, unchecked). A [`CountersReader`] taken
/// from it keeps the counters map alive, not the program.
pub struct SyncXdp {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode, XdpLinkId)>,
}

impl std::fmt::Debug for SyncXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncXdp")
            .field("attached", &self.attached.as_ref().map(|(i, m, _)| (i, m)))
            .finish_non_exhaustive()
    }
}

impl SyncXdp {
    /// Loads the object, writes `peers`, then attaches `carp_sync` to
    /// `ifname` in `mode`, so that frames from the peers are accepted from
    /// the first packet on. `mode` is resolved as for the CARP interfaces
    /// (`auto`: generic on virtual drivers such as veth, native otherwise);
    /// a failed native attach falls back to generic with a warning, and
    /// [`Self::attachment`] tells which mode is in use.
    pub fn load(ifname: &str, mode: AttachMode, peers: &[Ipv4Addr]) -> Result<Self, XdpError> {
        let mut this = Self::load_unattached(peers)?;
        match this.attach(ifname, mode) {
            Ok(()) => {}
            Err(e) if mode == AttachMode::Native => {
                tracing::warn!(interface = %ifname, error = %e,
                    "native XDP attach of the sync program failed; falling back to generic mode");
                this.attach(ifname, AttachMode::Generic)?;
            }
            Err(e) => return Err(e),
        }
        Ok(this)
    }

    /// Loads the object and `carp_sync` (verifier run) and writes `peers`,
    /// without attaching: for `BPF_PROG_TEST_RUN`, or to attach later.
    pub fn load_unattached(peers: &[Ipv4Addr]) -> Result<Self, XdpError> {
        bump_memlock_rlimit();
        let ebpf = EbpfLoader::new().load(OBJECT).map_err(XdpError::Load)?;
        let mut this = Self {
            ebpf,
            attached: None,
        };
        let name = names::SYNC_PROGRAM;
        this.program_mut()?
            .load()
            .map_err(|source| XdpError::LoadProgram { name, source })?;
        this.set_peers(peers)?;
        Ok(this)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        let name = names::SYNC_PROGRAM;
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    /// The `carp_sync` program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        let name = names::SYNC_PROGRAM;
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(XdpError::MissingProgram { name })
    }

    /// Attaches `carp_sync` to `ifname` in `mode` (no fallback; see [`Self::load`]).
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<(), XdpError> {
        if let Some((attached, _, _)) = &self.attached {
            return Err(XdpError::AlreadyAttached {
                ifname: attached.clone(),
            });
        }
        let link = self
            .program_mut()?
            .attach(ifname, mode.into())
            .map_err(|source| XdpError::Attach {
                ifname: ifname.to_owned(),
                mode,
                source,
            })?;
        self.attached = Some((ifname.to_owned(), mode, link));
        Ok(())
    }

    /// Where and how `carp_sync` is attached, if it is.
    pub fn attachment(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Detaches `carp_sync`; dropping the value does the same.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        let Some((ifname, _, link)) = self.attached.take() else {
            return Ok(());
        };
        self.program_mut()?
            .detach(link)
            .map_err(|source| XdpError::Detach { ifname, source })
    }

    fn peers_map_mut(&mut self) -> Result<HashMap<&mut MapData, u32, u8>, XdpError> {
        let name = names::SYNC_PEERS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(XdpError::MissingMap { name })?;
        HashMap::try_from(map).map_err(map_err(name, "open"))
    }

    /// The peers the program accepts now, in address order.
    pub fn peers(&self) -> Result<Vec<Ipv4Addr>, XdpError> {
        let name = names::SYNC_PEERS;
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap { name })?;
        let map: HashMap<&MapData, u32, u8> =
            HashMap::try_from(map).map_err(map_err(name, "open"))?;
        let mut out = BTreeSet::new();
        for key in map.keys() {
            out.insert(Ipv4Addr::from(
                key.map_err(map_err(name, "keys"))?.to_ne_bytes(),
            ));
        }
        Ok(out.into_iter().collect())
    }

    /// Replaces the set of accepted peers with `peers` (duplicates are
    /// ignored; at most [`carp_common::MAX_SYNC_PEERS`] distinct addresses).
    ///
    /// Make before break: a peer in both the old and the new set is never
    /// absent from the map. New peers are inserted before stale ones are
    /// removed, unless the map could not hold both at once; then the stale
    /// ones go first (they are leaving anyway). On an error the map holds
    /// a mix of the two sets; calling again with the same set repairs it.
    pub fn set_peers(&mut self, peers: &[Ipv4Addr]) -> Result<(), XdpError> {
        let name = names::SYNC_PEERS;
        let new: BTreeSet<Ipv4Addr> = peers.iter().copied().collect();
        let max = carp_common::MAX_SYNC_PEERS;
        if new.len() > max as usize {
            return Err(XdpError::TooManySyncPeers {
                count: new.len(),
                max,
            });
        }
        let old: BTreeSet<Ipv4Addr> = self.peers()?.into_iter().collect();
        let added: Vec<Ipv4Addr> = new.difference(&old).copied().collect();
        let stale: Vec<Ipv4Addr> = old.difference(&new).copied().collect();
        let mut map = self.peers_map_mut()?;
        let insert = |map: &mut HashMap<&mut MapData, u32, u8>| -> Result<(), XdpError> {
            for addr in &added {
                map.insert(peer_key(*addr), 1, 0)
                    .map_err(map_err(name, "insert"))?;
            }
            Ok(())
        };
        let remove = |map: &mut HashMap<&mut MapData, u32, u8>| -> Result<(), XdpError> {
            for addr in &stale {
                match map.remove(&peer_key(*addr)) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(MapError::SyscallError(SyscallError { io_error, .. }))
                        if io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(source) => {
                        return Err(XdpError::Map {
                            name,
                            op: "delete",
                            source,
                        })
                    }
                }
            }
            Ok(())
        };
        if old.len() + added.len() <= max as usize {
            insert(&mut map)?;
            remove(&mut map)
        } else {
            remove(&mut map)?;
            insert(&mut map)
        }
    }

    /// Packets per [`Reason`] (index = `reason as usize`), summed over CPUs;
    /// only [`Reason::SYNC_PROGRAM`] can be non-zero.
    pub fn counters(&self) -> Result<[u64; Reason::COUNT as usize], XdpError> {
        read_counters(&self.ebpf)
    }

    /// A handle on this instance's `COUNTERS` for the metrics endpoint, as
    /// [`XdpInstance::counters_reader`]; its [`CountersReader::reasons`] are
    /// [`Reason::SYNC_PROGRAM`].
    pub fn counters_reader(&self) -> Result<CountersReader, XdpError> {
        counters_reader(&self.ebpf, &Reason::SYNC_PROGRAM)
    }
}

/// Key of `SYNC_PEERS`: the address's network-order bytes as a native u32
/// (what the program reads out of the packet), as [`vip_key`].
pub fn peer_key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Reads the per-CPU reason counters of one instance; see
/// [`XdpInstance::counters_reader`] and [`SyncXdp::counters_reader`].
pub struct CountersReader {
    map: PerCpuArray<MapData, u64>,
    reasons: &'static [Reason],
}

impl CountersReader {
    /// Every reason's count, summed over CPUs.
    pub fn read(&self) -> Result<[u64; Reason::COUNT as usize], XdpError> {
        sum_counters(&self.map)
    }

    /// The reasons the attached program can count (the others stay 0): the
    /// series worth exporting for this interface.
    pub fn reasons(&self) -> &'static [Reason] {
        self.reasons
    }
}

fn read_counters(ebpf: &Ebpf) -> Result<[u64; Reason::COUNT as usize], XdpError> {
    let map = ebpf.map(names::COUNTERS).ok_or(XdpError::MissingMap {
        name: names::COUNTERS,
    })?;
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(map_err(names::COUNTERS, "open"))?;
    sum_counters(&counters)
}

fn counters_reader(ebpf: &Ebpf, reasons: &'static [Reason]) -> Result<CountersReader, XdpError> {
    let map = ebpf.map(names::COUNTERS).ok_or(XdpError::MissingMap {
        name: names::COUNTERS,
    })?;
    let aya::maps::Map::PerCpuArray(data) = map else {
        return Err(XdpError::MissingMap {
            name: names::COUNTERS,
        });
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| XdpError::Map {
            name: names::COUNTERS,
            op: "dup",
            source: MapError::SyscallError(SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
    let data = MapData::from_fd(fd).map_err(map_err(names::COUNTERS, "reopen"))?;
    let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(map_err(names::COUNTERS, "open"))?;
    Ok(CountersReader { map, reasons })
}

/// Every reason's count of a `COUNTERS` handle, summed over CPUs.
fn sum_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<[u64; Reason::COUNT as usize], XdpError> {
    let mut out = [0u64; Reason::COUNT as usize];
    for reason in Reason::ALL {
        let values = map
            .get(&(reason as u32), 0)
            .map_err(map_err(names::COUNTERS, "lookup"))?;
        out[reason as usize] = values.iter().sum();
    }
    Ok(out)
}

/// Key of `VIPS4`: the address's network-order bytes read as a native u32,
/// which is what the program reads straight out of the packet.
pub fn vip_key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The `VIPS4_SLOTS` index of `addr` ([`carp_common::vip_slot`]).
pub fn slot_index(addr: Ipv4Addr) -> u32 {
    carp_common::vip_slot(addr.octets())
}

/// Decodes one `ADVERTS` record (a `RingBufItem`'s bytes). `None` if too short;
/// the ring delivers records 8-byte aligned, but this does not rely on it.
pub fn decode_record(bytes: &[u8]) -> Option<AdvertRecord> {
    if bytes.len() < mem::size_of::<AdvertRecord>() {
        return None;
    }
    // SAFETY: the length was checked; AdvertRecord is plain #[repr(C)] data
    // for which every bit pattern is valid, and the read is unaligned.
    Some(unsafe { bytes.as_ptr().cast::<AdvertRecord>().read_unaligned() })
}

/// Now on CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns()` reads: the time
/// base of [`VhidEntry::master_expires_ns`] and [`AdvertRecord::ktime_ns`].
pub fn ktime_now_ns() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC cannot fail on Linux.
    let ts = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr());
        ts.assume_init()
    };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before
/// 5.11, memcg accounting: <https://lwn.net/Articles/837122/>). Best effort.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lift RLIMIT_MEMLOCK"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_record_round_trips_and_rejects_short_input() {
        let rec = AdvertRecord {
            ktime_ns: 0x0102_0304_0506_0708,
            family: 4,
            ttl: carp_common::CARP_TTL,
            src_mac: carp_common::virtual_mac(7),
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [224, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            payload: [0x21; 36],
            _pad: [0; 4],
        };
        // SAFETY: viewing plain data as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&rec as *const AdvertRecord).cast::<u8>(),
                mem::size_of::<AdvertRecord>(),
            )
        };
        // Misaligned copy to make sure nothing assumes alignment.
        let mut buf = vec![0u8; bytes.len() + 1];
        buf[1..].copy_from_slice(bytes);
        assert_eq!(decode_record(&buf[1..]), Some(rec));
        assert_eq!(decode_record(&buf[1..bytes.len()]), None);
    }

    #[test]
    fn vip_key_is_wire_order() {
        let key = vip_key(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(key.to_ne_bytes(), [10, 0, 0, 1]);
    }

    /// VIPs in one /18 never share a slot, nor do the usual gateway
    /// addresses of different subnets; the fold stays in range.
    #[test]
    fn vip_slots_keep_neighbours_and_gateways_apart() {
        let slots: std::collections::BTreeSet<u32> = (0..1u32 << 14)
            .map(|i| slot_index(Ipv4Addr::from(0x0a4d_0000 + i)))
            .collect();
        assert_eq!(slots.len(), 1 << 14, "a /18 fills every slot once");
        let gateways = [
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(10, 88, 0, 1),
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(172, 16, 0, 1),
            Ipv4Addr::new(10, 0, 0, 1),
        ];
        let slots: std::collections::BTreeSet<u32> =
            gateways.iter().map(|a| slot_index(*a)).collect();
        assert_eq!(slots.len(), gateways.len(), "{slots:?}");
        assert!(slot_index(Ipv4Addr::BROADCAST) < carp_common::VIPS_SLOTS_LEN);
    }

    #[test]
    fn ktime_is_monotonic() {
        let a = ktime_now_ns();
        let b = ktime_now_ns();
        assert!(b >= a && a > 0);
    }
}
