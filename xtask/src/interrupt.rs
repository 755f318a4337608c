//! Ctrl-C for the long-running lab commands (`run`, `bench`): the handler only
//! sets a flag, checked between steps (every step is bounded), so the drop
//! guards still stop the processes by PID and remove the namespaces.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    // Async-signal-safe: an atomic store only.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn install_signal_handlers() -> anyhow::Result<()> {
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &sa) }.with_context(|| format!("installing the {sig} handler"))?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
