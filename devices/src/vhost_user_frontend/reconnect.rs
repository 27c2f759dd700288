//! [`Reconnector`]: brings a vhost-user device back after its backend hung up, so that a
//! backend restart (a crash and a supervisor's restart, or an external backend coming back
//! at the same socket path) costs the guest a delay and no error.
//!
//! The relay thread sees the hang-up and calls [`Reconnector::run`], which connects again
//! with backoff until the backend answers or the configured window passes (by default it
//! never gives up), then replays what the old backend had been told: the features the
//! guest accepted (the new backend must still offer every one of them, or the device is
//! failed with a clear log: the guest's driver relies on them), the memory table (when
//! legovmm pages guest RAM, through postcopy: the new backend's userfaultfd replaces the old
//! one at the pager, and a backend that came back without PAGEFAULT fails the device), and
//! each started queue with its base set to the used ring's index as the guest sees it. The
//! requests the old backend had taken but not completed are therefore taken again and
//! completed once. That is exact because backends complete each queue's requests in the
//! order they took them (`lego-vhost-blk`'s `backend.rs` documents the invariant);
//! the vhost-user INFLIGHT_SHMFD feature, which lifts it, is not supported by the
//! `vhost-user-backend` crate the backend is built on.
//!
//! While the device is away, guest requests wait on their queues: the guest sees a delay.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lego_report::error_chain;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::connection::Connection;
use super::features::features_to_ack;
use super::postcopy::BackendFaults;
use super::VhostUserError;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one attempt may wait for each of the backend's replies.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a reconnection still in progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Errors that end a reconnection.
#[derive(Debug, thiserror::Error)]
pub enum ReconnectError {
    /// The backend that came back lacks features the guest already uses.
    #[error("the vhost-user backend at {path} came back without features the guest uses ({missing:#x}); the device is failed")]
    FeaturesLost {
        /// The socket.
        path: String,
        /// The feature bits acked by the guest that the backend no longer offers.
        missing: u64,
    },
    /// The configured reconnect window passed.
    #[error("the vhost-user backend at {path} did not come back within {secs} s (the reconnect window); the device is failed")]
    WindowPassed {
        /// The socket.
        path: String,
        /// The window.
        secs: u64,
    },
    /// legovmm pages guest RAM and the backend that came back cannot hand over its faults.
    #[error("the vhost-user backend at {0} came back without the PAGEFAULT protocol feature, which it needs to serve guest RAM that legovmm pages; the device is failed")]
    PagefaultLost(String),
    /// The device was reset or dropped meanwhile.
    #[error("the reconnection was stopped")]
    Stopped,
}

/// How long a device tries to reconnect to a backend that hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconnectPolicy {
    /// Give up after this long; `None` (the default) never gives up.
    pub window: Option<Duration>,
}

/// One started queue as the backend must be given it again: index, queue state as the
/// guest configured it, and its kick and call eventfds.
pub struct ResumeQueue {
    /// The queue's index.
    pub index: usize,
    /// The queue's configuration (size, ring addresses).
    pub queue: Queue,
    /// The queue-notify eventfd (the KVM ioeventfd).
    pub kick: EventFd,
    /// The call eventfd the relay watches.
    pub call: EventFd,
}

/// What it takes to bring an active device back after its backend hung up.
pub struct Reconnector {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
    acked_features: u64,
    mem: GuestMemoryMmap<()>,
    queues: Vec<(usize, Queue, EventFd, EventFd)>,
    policy: ReconnectPolicy,
    /// The pager each new connection hands its backend's faults to (legovmm pages guest RAM).
    backend_faults: Option<Arc<dyn BackendFaults>>,
}

/// A copy of the configuration of `q` the backend is given (size and ring addresses);
/// `Queue` itself is not `Clone`.
pub fn copy_queue(q: &Queue) -> Queue {
    let mut copy = Queue::new(q.max_size())
        .unwrap_or_else(|_| Queue::new(1).expect("a queue of one entry is valid"));
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    copy.set_size(q.size());
    let (lo, hi) = split(q.desc_table());
    copy.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    copy.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    copy.set_used_ring_address(lo, hi);
    copy.set_ready(q.ready());
    copy
}

/// Locks the shared connection; a panic elsewhere leaves it usable (each request is whole).
pub fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    connection.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reconnector {
    /// A reconnector for the device whose live connection is `connection`, with the features
    /// the guest acked, its memory and its started queues.
    pub fn new(
        connection: Arc<Mutex<Connection>>,
        acked_features: u64,
        mem: GuestMemoryMmap<()>,
        queues: Vec<ResumeQueue>,
        policy: ReconnectPolicy,
    ) -> Self {
        let (path, backend_faults) = {
            let c = lock(&connection);
            (PathBuf::from(c.path()), c.backend_faults())
        };
        Self {
            connection,
            path,
            acked_features,
            mem,
            queues: queues
                .into_iter()
                .map(|q| (q.index, q.queue, q.kick, q.call))
                .collect(),
            policy,
            backend_faults,
        }
    }

    /// The backend's socket path.
    pub fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Reconnects to the backend until it answers, the window passes or `wait` (which sleeps
    /// up to the given time) says the device stopped. On success the new connection replaces
    /// the old one, the queues are running again and kicked, and a clone of the new socket
    /// is returned for the relay to watch.
    pub fn run(
        &self,
        mut wait: impl FnMut(Duration) -> bool,
    ) -> Result<UnixStream, ReconnectError> {
        let path = self.path();
        let window = match self.policy.window {
            Some(w) => format!("{} s", w.as_secs()),
            None => "unlimited".into(),
        };
        tracing::warn!(
            "the vhost-user backend at {path} closed its connection; reconnecting (guest requests wait meanwhile; reconnect window {window})"
        );
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u64;
        let mut last_progress = Instant::now();
        loop {
            attempts += 1;
            match self.attempt() {
                Ok((watch, bases)) => {
                    let bases: Vec<String> = bases
                        .iter()
                        .map(|(q, b)| format!("queue {q} from used index {b}"))
                        .collect();
                    tracing::info!(
                        "reconnected to the vhost-user backend at {path} after {} ms and {attempts} attempts; resumed {}",
                        started.elapsed().as_millis(),
                        bases.join(", ")
                    );
                    return Ok(watch);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => {
                    if last_progress.elapsed() >= PROGRESS_EVERY {
                        last_progress = Instant::now();
                        tracing::info!(
                            "still reconnecting to the vhost-user backend at {path}: {attempts} attempts in {} s; the last: {}",
                            started.elapsed().as_secs(),
                            error_chain(&e)
                        );
                    } else {
                        tracing::debug!(
                            "reconnection attempt {attempts} failed: {}",
                            error_chain(&e)
                        );
                    }
                }
            }
            if let Some(w) = self.policy.window {
                if started.elapsed() >= w {
                    return Err(ReconnectError::WindowPassed {
                        path,
                        secs: w.as_secs(),
                    });
                }
            }
            if wait(backoff) {
                return Err(ReconnectError::Stopped);
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: connect, check the features, resume the queues, swap the connection.
    #[allow(clippy::type_complexity)]
    fn attempt(&self) -> Result<(UnixStream, Vec<(usize, u16)>), Attempt> {
        let mut conn =
            Connection::connect_with(&self.path, Some(REPLY_TIMEOUT), self.backend_faults.clone())
                .map_err(|e| match e {
                    VhostUserError::NoPagefault(path) => {
                        Attempt::Fatal(ReconnectError::PagefaultLost(path))
                    }
                    e => Attempt::Retry(e),
                })?;
        let wanted = features_to_ack(self.acked_features);
        let missing = wanted & !conn.backend_features();
        if missing != 0 {
            return Err(Attempt::Fatal(ReconnectError::FeaturesLost {
                path: self.path(),
                missing,
            }));
        }
        let bases = conn
            .resume(self.acked_features, &self.mem, &self.queues)
            .map_err(Attempt::Retry)?;
        let watch = conn.watch().map_err(|source| {
            Attempt::Retry(VhostUserError::Io {
                what: "duplicate the backend socket",
                source,
            })
        })?;
        *lock(&self.connection) = conn;
        Ok((watch, bases))
    }
}

/// How an attempt failed.
enum Attempt {
    /// Try again later.
    Retry(VhostUserError),
    /// Give up.
    Fatal(ReconnectError),
}
