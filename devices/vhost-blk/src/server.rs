//! [`Server`]: listens on the vhost-user socket and serves one frontend connection at a time,
//! then the next; [`StopHandle::stop`] ends it cleanly (the socket file is removed).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::BlkBackend;
use crate::store::BlockStore;
use lego_devices::virtio::block::request::counters::BlockCounters;
use lego_devices::virtio::block::{DeviceConfig, RequestHandler};

/// Errors from binding or serving the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves this socket.
    #[error("the socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        source: vhost::vhost_user::Error,
    },
    /// What is at the socket path could not be examined or removed.
    #[error("cannot {what} {path}")]
    Path {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The stop event could not be created or waited on.
    #[error("cannot wait for connections")]
    Wait(#[source] io::Error),
    /// vhost-user-backend failed to set up or accept a connection.
    #[error("cannot serve a frontend: {0}")]
    Daemon(String),
}

/// Queue settings of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Number of request queues (1 to 64).
    pub queues: u16,
    /// Largest queue size offered (a power of two).
    pub queue_size: u16,
    /// How long a queue worker may poll its ring after a batch (zero: never).
    pub poll: Duration,
}

struct StopState {
    requested: AtomicBool,
    wake: EventFd,
    current: Mutex<Option<ShutdownHandle>>,
    socket: PathBuf,
}

/// Stops a running [`Server`] from any thread (e.g. a signal handler thread).
#[derive(Clone)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    /// Asks the server to drop its frontend (if any) and return from [`Server::run`].
    pub fn stop(&self) {
        let s = &self.0;
        s.requested.store(true, Ordering::SeqCst);
        if let Err(e) = s.wake.write(1) {
            tracing::warn!("cannot wake the server: {e}");
        }
        if let Some(h) = s.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            h.shutdown();
        }
    }

    fn requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }
}

/// A bound vhost-user-blk socket and the store it serves.
pub struct Server {
    listener: Listener,
    handler: Arc<RequestHandler>,
    config: DeviceConfig,
    poll: Duration,
    stop: StopHandle,
}

/// Makes room for the socket: removes a stale one, refuses a live one or a non-socket.
fn prepare_path(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Path {
                what: "examine",
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.into()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse(path.into()));
    }
    tracing::info!(socket = %path.display(), "removing a stale socket");
    std::fs::remove_file(path).map_err(|source| ServerError::Path {
        what: "remove the stale socket",
        path: path.into(),
        source,
    })
}

impl Server {
    /// Binds `socket` for a device serving `store`.
    pub fn bind(
        socket: &Path,
        store: Arc<dyn BlockStore>,
        queues: QueueSettings,
    ) -> Result<Self, ServerError> {
        prepare_path(socket)?;
        let listener = Listener::new(socket, false).map_err(|source| ServerError::Bind {
            path: socket.into(),
            source,
        })?;
        let config = DeviceConfig::for_store(store.as_ref(), queues.queues, queues.queue_size);
        let wake =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(ServerError::Wait)?;
        Ok(Self {
            listener,
            handler: Arc::new(RequestHandler::new(store)),
            config,
            poll: queues.poll,
            stop: StopHandle(Arc::new(StopState {
                requested: AtomicBool::new(false),
                wake,
                current: Mutex::new(None),
                socket: socket.into(),
            })),
        })
    }

    /// What the device has served, for its metrics (kept across frontends).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.handler.counters()
    }

    /// A handle that stops [`Server::run`].
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves frontends one after another until stopped. The socket is removed on return.
    ///
    /// Only a requested stop (SIGTERM, SIGINT: the vNode ended) releases the device's remote
    /// memory; a frontend that leaves does not, and a crash runs no code, so a backend
    /// restarted for the same vNode finds the pages where they were.
    pub fn run(mut self) -> Result<(), ServerError> {
        tracing::info!(
            socket = %self.stop.0.socket.display(),
            capacity = self.config.capacity,
            queues = self.config.queues,
            poll_us = self.poll.as_micros() as u64,
            serial = self.handler.store().serial(),
            "waiting for a vhost-user frontend"
        );
        while self.wait_for_connection()? {
            self.serve_one()?;
        }
        match self.handler.store().release() {
            Ok(0) => {}
            Ok(bytes) => tracing::info!(bytes, "released the device's remote memory"),
            Err(e) => tracing::warn!(
                "could not release the device's remote memory: {}",
                lego_report::error_chain(&e)
            ),
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Blocks until a frontend connects (`true`) or a stop is requested (`false`).
    fn wait_for_connection(&self) -> Result<bool, ServerError> {
        loop {
            if self.stop.requested() {
                return Ok(false);
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.0.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call, and
            // both descriptors stay open while `self` lives.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Wait(e));
            }
            if fds[1].revents != 0 {
                return Ok(false);
            }
            if fds[0].revents & libc::POLLIN != 0 {
                return Ok(true);
            }
        }
    }

    fn serve_one(&mut self) -> Result<(), ServerError> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(BlkBackend::new(
            self.handler.clone(),
            self.config.clone(),
            mem.clone(),
            self.poll,
        ));
        let mut daemon = VhostUserDaemon::new("lego-vhost-blk".into(), backend, mem)
            .map_err(|e| ServerError::Daemon(e.to_string()))?;
        daemon
            .start(&mut self.listener)
            .map_err(|e| ServerError::Daemon(e.to_string()))?;
        tracing::info!("frontend connected");
        {
            let mut cur = self
                .stop
                .0
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *cur = daemon.shutdown_handle();
            // A stop that raced with the accept has not seen this handle: apply it now.
            if self.stop.requested() {
                if let Some(h) = cur.as_ref() {
                    h.shutdown();
                }
            }
        }
        let result = daemon.wait();
        *self
            .stop
            .0
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => tracing::info!("frontend disconnected"),
            Err(e) => tracing::warn!("the frontend connection ended with an error: {e}"),
        }
        // Dropping the daemon stops and joins the queue workers before the next frontend.
        drop(daemon);
        Ok(())
    }
}
