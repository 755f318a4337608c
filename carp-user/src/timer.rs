//! The election's deadlines, to the microsecond: a `timerfd` on
//! CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`, so of [`crate::election::Time`]),
//! armed with an absolute time and polled through tokio.
//!
//! tokio's own timer has a 1 ms granularity and rounds every deadline up to
//! its next tick, and the election schedules each advert one interval after
//! the previous one was handled: adverts left 1–2 ms late on every interval
//! (`cargo xtask bench timing`, docs/RESULTS.md "Advert timing under load").
//! An hrtimer-backed timerfd wakes the loop within tens of microseconds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A one-shot absolute CLOCK_MONOTONIC timer.
pub struct DeadlineTimer {
    fd: AsyncFd<OwnedFd>,
}

impl DeadlineTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain timerfd_create(2); the fd is owned right away.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged
        // for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    fn arm(&self, at_ns: u64) -> io::Result<()> {
        // 0 would disarm the timer: a deadline at 0 is long past anyway.
        let at_ns = at_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; the old value is not asked for.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Completes at CLOCK_MONOTONIC time `at_ns` (at once if it has passed).
    /// Re-arming (a new call) replaces the previous deadline.
    pub async fn wait_until(&self, at_ns: u64) -> io::Result<()> {
        self.arm(at_ns)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `buf`.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            // Readiness left over from an earlier arming: wait for this one.
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_close_to_the_deadline_and_rearms() {
        let t = DeadlineTimer::new().expect("timerfd");
        for _ in 0..5 {
            let at = crate::xdp::ktime_now_ns() + 3_000_000;
            t.wait_until(at).await.expect("wait");
            let late = crate::xdp::ktime_now_ns() - at;
            assert!(crate::xdp::ktime_now_ns() >= at);
            // Generous for a loaded test machine; tokio's timer alone is up to 1-2 ms late.
            assert!(late < 20_000_000, "{late} ns late");
        }
        // A past deadline completes at once; an earlier arming does not leak
        // into a later wait.
        t.wait_until(1).await.expect("past");
        let at = crate::xdp::ktime_now_ns() + 5_000_000;
        t.wait_until(at).await.expect("wait");
        assert!(crate::xdp::ktime_now_ns() >= at);
    }
}
