//! Where the data path is pinned, so that it outlives its controller
//! (docs/design.md, "Pinned data path").
//!
//! Each CARP interface gets a directory `<bpffs>/carp/<interface>/` holding
//! three pins:
//!
//! - `xdp_link_<mode>`: the bpf_link of `carp_xdp` (`<mode>` is `generic` or
//!   `native`: a link keeps the mode it was created with, so a restart that
//!   wants another mode must re-attach instead of swapping the program;
//!   bpffs refuses dots in names);
//! - `tc_link`: the TCX link of `carp_tc_egress`;
//! - `vhids`: the `VHIDS` map the pinned program reads, so that a restarted
//!   controller can read what the dead one promised (MASTER until a deadline).
//!
//! A controller killed with SIGKILL or stopped with SIGSTOP leaves the pins,
//! so its program keeps answering for its MASTER VHIDs until their dead-man
//! deadlines and then falls silent. An orderly stop removes them (and with
//! them the attachments). bpffs holds only pins and directories, which is why
//! the mode is in a file name rather than in a file.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use carp_common::{names, VhidEntry, VhidState};

/// `statfs` magic of a BPF file system (`BPF_FS_MAGIC`, linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts a bpffs at `path` unless one is there already; `Ok(true)` when it
/// mounted one. The directory is created if missing.
pub fn ensure_bpffs(path: &Path) -> io::Result<bool> {
    std::fs::create_dir_all(path)?;
    if is_bpffs(path)? {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(io::Error::from)?;
    Ok(true)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field's width differs between libcs
    Ok(i64::from(st.filesystem_type().0) == BPF_FS_MAGIC)
}

/// The pin directory of one interface: `<bpffs>/carp/<interface>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

/// The two attach modes as they appear in pin names.
const MODES: [&str; 2] = ["generic", "native"];

impl PinDir {
    pub fn new(bpffs: &Path, interface: &str) -> Self {
        Self {
            path: root(bpffs).join(interface),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.path)
    }

    /// The XDP link pin for an attach mode (`"generic"` or `"native"`).
    pub fn xdp_link(&self, mode: &str) -> PathBuf {
        self.path.join(format!("xdp_link_{mode}"))
    }

    /// The XDP link pin present, with its mode, if any.
    pub fn existing_xdp_link(&self) -> Option<(&'static str, PathBuf)> {
        MODES
            .iter()
            .map(|m| (*m, self.xdp_link(m)))
            .find(|(_, p)| p.exists())
    }

    pub fn tc_link(&self) -> PathBuf {
        self.path.join("tc_link")
    }

    pub fn vhids(&self) -> PathBuf {
        self.path.join("vhids")
    }

    /// Unlinks every pin and the directory. The attachments go with the last
    /// reference to their links, so after this (and once this process drops
    /// its own link fds) the interface has no program. Missing pins are fine.
    pub fn remove(&self) -> io::Result<()> {
        let mut first_err = None;
        let mut pins: Vec<PathBuf> = MODES.iter().map(|m| self.xdp_link(m)).collect();
        pins.extend([self.tc_link(), self.vhids()]);
        for p in pins {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn root(bpffs: &Path) -> PathBuf {
    bpffs.join("carp")
}

/// Removes the pin directories of interfaces that are not in `keep` (a
/// previous run's interface that this configuration no longer has): their
/// programs would otherwise stay attached. Returns the interfaces removed.
pub fn remove_stale(bpffs: &Path, keep: &[String]) -> io::Result<Vec<String>> {
    let dir = match std::fs::read_dir(root(bpffs)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in dir {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            PinDir::new(bpffs, &name).remove()?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Why the previous run's promises could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PromiseError {
    #[error("opening the pinned {} map", names::VHIDS)]
    Open(#[source] aya::maps::MapError),
    #[error(
        "the pinned {} map has another layout (a different version left it)",
        names::VHIDS
    )]
    Layout(#[source] aya::maps::MapError),
    #[error("reading the pinned {} map", names::VHIDS)]
    Read(#[source] aya::maps::MapError),
}

/// What a previous run's map promised at kernel time `now_ns`: every VHID
/// whose entry is MASTER with a deadline still ahead, with that entry.
pub fn read_promises(path: &Path, now_ns: u64) -> Result<Vec<(u8, VhidEntry)>, PromiseError> {
    let data = MapData::from_pin(path).map_err(PromiseError::Open)?;
    let map = Map::from_map_data(data).map_err(PromiseError::Open)?;
    let array: Array<MapData, VhidEntry> = Array::try_from(map).map_err(PromiseError::Layout)?;
    let mut out = Vec::new();
    for vhid in 1..=u8::MAX {
        let entry = array.get(&u32::from(vhid), 0).map_err(PromiseError::Read)?;
        if entry.state == VhidState::Master as u32 && entry.is_master_at(now_ns) {
            out.push((vhid, entry));
        }
    }
    Ok(out)
}
