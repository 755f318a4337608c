//! The control socket and the metrics endpoint on a thread of their own.
//!
//! The election runs on the controller's current-thread runtime; anything
//! else on that runtime delays its timers. A client flooding the control
//! socket or `/metrics` must cost CPU time only, so both servers live on a
//! second current-thread runtime in their own OS thread, with connection caps
//! and timeouts in each server ([`crate::api`], [`crate::metrics`]), and a
//! lower CPU priority than the election's thread ([`set_thread_nice`]).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{self, ApiError, Handlers};
use crate::metrics::{self, Metrics, MetricsError};

/// Nice values of the controller's threads (Linux: per thread). The
/// election's thread outranks the others when the CPU is contended, so adverts
/// leave on time under a sync bulk or a scrape flood (CFS weights: -5 against
/// +10 is about 1:30).
pub const ELECTION_NICE: i32 = -5;
pub const SERVICES_NICE: i32 = 5;
pub const SYNC_NICE: i32 = 0;

/// Makes the calling thread (the election's) real-time: `SCHED_FIFO` at
/// `priority` with `SCHED_RESET_ON_FORK`, so threads and processes it starts
/// later (the sync and service threads, hooks) start as normal threads and
/// set their own nice values. `priority` 0, or a refusal (no CAP_SYS_NICE, an
/// RT limit), leaves it a normal thread at [`ELECTION_NICE`] (logged).
/// Returns whether it is real-time.
pub fn set_election_priority(priority: u8) -> bool {
    if priority > 0 {
        let param = libc::sched_param {
            sched_priority: i32::from(priority),
        };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid param.
        let rc = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
        };
        if rc == 0 {
            return true;
        }
        tracing::warn!(priority, error = %std::io::Error::last_os_error(),
            "cannot make the election's thread real-time; it runs at nice {ELECTION_NICE}");
    }
    set_thread_nice(ELECTION_NICE);
    false
}

/// Sets the calling thread's nice value (best effort: logged when refused).
pub fn set_thread_nice(nice: i32) {
    // SAFETY: plain syscalls; gettid names the calling thread, which is what
    // PRIO_PROCESS addresses on Linux (nice is a per-thread attribute).
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot set the thread's priority");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("node.metrics_listen: {0}")]
    Metrics(#[from] MetricsError),
    #[error("starting the service thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the service thread ended before it was ready")]
    Died,
}

/// Running servers; dropping stops them (the socket file is removed) and
/// joins the thread.
pub struct Services {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Services {
    /// Binds both (errors come back here, as from the servers themselves)
    /// and serves until dropped.
    pub fn start(
        control_socket: PathBuf,
        handlers: Handlers,
        metrics_listen: Option<SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> Result<Services, ServicesError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ServicesError>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("carp-services".into())
            .spawn(move || {
                set_thread_nice(SERVICES_NICE);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServicesError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let api = match api::serve_with(&control_socket, handlers).await {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let metrics_server = match metrics_listen {
                        Some(addr) => match metrics::serve(addr, metrics).await {
                            Ok(m) => Some(m),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.into()));
                                return;
                            }
                        },
                        None => None,
                    };
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    drop(metrics_server);
                    api.shutdown().await;
                });
            })
            .map_err(ServicesError::Thread)?;
        let mut services = Services {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(services),
            Ok(Err(e)) => {
                services.stop = None;
                Err(e)
            }
            Err(_) => Err(ServicesError::Died),
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
