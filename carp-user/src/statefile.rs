//! The operator state that outlives the controller: persistent CARP
//! maintenance mode (`carp maintenance on`), which OPNsense keeps across
//! reboots in its config. One small file per controller:
//! `<node.state_dir>/<control socket name without extension>.state`, e.g.
//! `/var/lib/carp/carp.state` for the default socket `/run/carp/carp.sock`.
//!
//! Why there: `/run` (where the control socket and the sysctl originals live)
//! is a tmpfs that a reboot empties, and maintenance must survive a reboot;
//! named after the control socket because two controllers on one host (one
//! per network namespace, as in the lab) already need distinct sockets, so
//! they get distinct state files without another setting.
//!
//! The file is TOML, written atomically (temporary file, fsync, rename, fsync
//! of the directory, so a power cut leaves the old or the new file, never a
//! torn one) and removed when everything in it is back at its default:
//!
//! ```toml
//! # carp: persistent operator state, written by `carp run` (`carp maintenance on|off`)
//! maintenance = true
//! ```
//!
//! Unknown keys are ignored (a newer version may add some).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `node.state_dir` when the config does not set it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/carp";

const HEADER: &str =
    "# carp: persistent operator state, written by `carp run` (`carp maintenance on|off`)\n";

/// What the file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistent {
    /// Persistent CARP maintenance mode.
    #[serde(default)]
    pub maintenance: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read the state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {} is not valid: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write the state file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<state_dir>/<socket stem>.state` (see the module docs).
pub fn state_path(state_dir: &Path, control_socket: &Path) -> PathBuf {
    let stem = control_socket
        .file_stem()
        .filter(|s| !s.is_empty())
        .map_or_else(|| "carp".into(), |s| s.to_os_string());
    let mut name = stem;
    name.push(".state");
    state_dir.join(name)
}

/// The file's text for `state`.
pub fn render(state: &Persistent) -> String {
    // A struct of plain fields always serializes.
    let body = toml::to_string(state).unwrap_or_default();
    format!("{HEADER}{body}")
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<Persistent, String> {
    toml::from_str(text).map_err(|e| e.message().to_owned())
}

/// Reads the state: `Ok(None)` when there is no file (nothing was ever set,
/// or everything is back at its default).
pub fn load(path: &Path) -> Result<Option<Persistent>, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.into(),
                source,
            })
        }
    };
    parse(&text)
        .map(Some)
        .map_err(|reason| StateFileError::Parse {
            path: path.into(),
            reason,
        })
}

/// Writes `bytes` to `path` (mode 0600) so that a reader or a crash sees
/// the old content or the new, never a part: a temporary file in the same
/// directory (created if missing), synced, then renamed over the old one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes `state` (or removes the file when it is all defaults), durably:
/// once this returns, a reboot finds the new state.
pub fn store(path: &Path, state: &Persistent) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.into(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if *state == Persistent::default() {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        }
    } else {
        write_atomically(path, render(state).as_bytes()).map_err(err)?;
    }
    // The rename (or the removal) is durable only once the directory is.
    if let Some(dir) = dir {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "carp-statefile-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn statefile_is_named_after_the_control_socket() {
        let dir = Path::new("/var/lib/carp");
        assert_eq!(
            state_path(dir, Path::new("/run/carp/carp.sock")),
            PathBuf::from("/var/lib/carp/carp.state")
        );
        assert_eq!(
            state_path(dir, Path::new("/run/carp/carpt-12-0-fw1.sock")),
            PathBuf::from("/var/lib/carp/carpt-12-0-fw1.state")
        );
        assert_eq!(
            state_path(dir, Path::new("/run/carp/fw1")),
            PathBuf::from("/var/lib/carp/fw1.state")
        );
        assert_eq!(
            state_path(dir, Path::new("/")),
            PathBuf::from("/var/lib/carp/carp.state")
        );
    }

    #[test]
    fn statefile_text_round_trips_and_tolerates_unknown_keys() {
        let on = Persistent { maintenance: true };
        let text = render(&on);
        assert!(
            text.starts_with("# carp: persistent operator state"),
            "{text}"
        );
        assert!(text.contains("maintenance = true"), "{text}");
        assert_eq!(parse(&text), Ok(on));
        assert_eq!(parse(""), Ok(Persistent::default()));
        assert_eq!(
            parse("maintenance = true\nfuture = 3\n"),
            Ok(on),
            "keys of a newer version are ignored"
        );
        assert!(parse("maintenance = \"yes\"").is_err());
        assert!(parse("maintenance = ").is_err());
    }

    #[test]
    fn statefile_store_load_and_remove() {
        let dir = temp_dir();
        // A directory that does not exist yet is created.
        let path = dir.join("lib/carp/fw1.state");
        assert_eq!(load(&path).expect("missing is fine"), None);
        store(&path, &Persistent { maintenance: true }).expect("store");
        assert_eq!(
            load(&path).expect("load"),
            Some(Persistent { maintenance: true })
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Back to the defaults: the file goes.
        store(&path, &Persistent::default()).expect("store off");
        assert!(!path.exists());
        assert_eq!(load(&path).expect("load"), None);
        store(&path, &Persistent::default()).expect("removing twice is fine");
        // No temporary files left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");

        std::fs::write(&path, "maintenance = 7\n").unwrap();
        let err = load(&path).expect_err("bad file");
        assert!(matches!(err, StateFileError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("is not valid"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
