//! The fabric server: accepts connections, authenticates peers, checks capabilities and
//! calls a [`Handler`] for each service request.

mod connection;
mod gate;

use lego_report::error_chain;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::auth::ClusterKey;
use crate::capability::{CapabilityPublicKey, Rights};
use crate::credential::{Peer, Role};
use crate::error::{ErrorCode, RemoteError};
use crate::io::{close_after_error, write_sealed_connection_error};
use crate::pool::WorkerPool;
use crate::request::Request;
use crate::seal::{FrameProtection, Session};
use connection::serve_connection;

/// What the handler sees besides the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The vNode of the request (0: cluster-level).
    pub vnode: u64,
    /// The rights granted by the capability attached for `vnode` (empty for vNode 0).
    pub rights: Rights,
    /// The request id (unique per connection while in flight).
    pub request_id: u64,
    /// The role the peer authenticated with ([`Role::Cluster`]: the cluster key).
    pub role: Role,
    /// The name of the peer's credential (empty for the cluster key).
    pub name: Arc<str>,
}

/// Where the server runs a request's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// On the connection's reader thread, answering at once: the fastest path, for
    /// requests that do not block (memory reads and writes).
    #[default]
    Inline,
    /// On the server's worker pool, so that the connection keeps reading: for requests
    /// that may block (fsync, disk reads).
    Worker,
}

/// A service served over the fabric.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request; the returned bytes are the response payload.
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError>;

    /// Where to run `req`'s handler; inline by default. Return [`Dispatch::Worker`] for
    /// requests that may block, so that fast ones on the same connection overtake them.
    fn dispatch(&self, req: &Request) -> Dispatch {
        let _ = req;
        Dispatch::Inline
    }
}

/// The longest busy-poll a LegoVMM daemon accepts, in µs: a fabric reader's
/// [`ServerConfig::spin`] (monitors' `--poll-us`) and `lego-vhost-blk`'s queue workers' window.
pub const MAX_POLL_US: u64 = 10_000;

/// Server tuning.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads for [`Dispatch::Worker`] requests.
    pub workers: usize,
    /// How long a new connection may take to authenticate, its whole handshake.
    pub handshake_timeout: Duration,
    /// Peers mid-handshake at most; beyond, the oldest is dropped for the newcomer (see
    /// the handshake gate in `server/gate.rs`).
    pub max_handshakes: usize,
    /// Connections beyond this are refused with `Unavailable`.
    pub max_connections: usize,
    /// Requests waiting for a worker beyond this are refused with `Unavailable`.
    pub max_queued: usize,
    /// How long a connection's reader busy-polls for the next request before sleeping
    /// (zero: never). Cuts a wake-up from each round trip at the price of CPU time.
    pub spin: Duration,
    /// How long writing a response may block on a peer that does not read before the
    /// connection is dropped.
    pub write_timeout: Duration,
    /// The incarnation to report (`None`: a random one, new with each server). A server
    /// whose state outlives its process (a storage monitor's files) gives one that changes
    /// only when that state may have been lost.
    pub incarnation: Option<u64>,
    /// The weakest frame protection this server accepts (a client asking for less gets
    /// this); by default [`FrameProtection::Mac`], or what `LEGO_FABRIC_PROTECTION` says.
    pub protection: FrameProtection,
    /// The managers' public key that attached capabilities must be signed with (`None`: the
    /// one derived from the cluster key, [`CapabilityPublicKey::derive`]).
    pub capability_key: Option<CapabilityPublicKey>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            workers: 4,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 4096,
            max_connections: 1024,
            max_queued: 4096,
            spin: Duration::ZERO,
            write_timeout: Duration::from_secs(30),
            incarnation: None,
            protection: FrameProtection::from_env_or_default(),
            capability_key: None,
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address is already used by another socket.
    #[error("the address {addr} is already in use")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The address did not resolve.
    #[error("the address {addr} could not be resolved")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The address resolved to no socket address.
    #[error("the address {addr} resolved to no address")]
    NoAddress {
        /// The address as given.
        addr: String,
    },
    /// Binding failed for another reason.
    #[error("binding {addr} failed")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Accepting or configuring sockets failed.
    #[error("the server's socket failed")]
    Io(#[from] std::io::Error),
    /// No incarnation could be drawn (the operating system's random generator failed).
    #[error("the server could not draw its incarnation")]
    Incarnation(#[source] crate::auth::AuthError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// A running server; dropping it shuts it down.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the acceptor, the connections and the workers.
struct Shared {
    key: ClusterKey,
    /// What attached capabilities are verified with.
    capability_key: CapabilityPublicKey,
    /// This server process's incarnation (see [`crate::auth`]), sent in every handshake.
    incarnation: u64,
    handler: Arc<dyn Handler>,
    config: ServerConfig,
    stop: AtomicBool,
    next_conn: AtomicU64,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    pool: WorkerPool,
}

/// The acceptor's record of one connection, to close and join it at shutdown.
struct ConnEntry {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (plain maps
    // and unit), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// Binds `addr` (a `SocketAddr` or `"host:port"`; port 0 picks a free port).
    pub fn bind<A: ToSocketAddrs + std::fmt::Debug>(
        addr: A,
        key: ClusterKey,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ServerError::Resolve {
                addr: format!("{addr:?}"),
                source,
            })?
            .collect();
        let incarnation = match config.incarnation {
            Some(i) => i,
            None => crate::auth::new_incarnation().map_err(ServerError::Incarnation)?,
        };
        let mut last = None;
        for a in &addrs {
            match TcpListener::bind(a) {
                Ok(listener) => {
                    listener.set_nonblocking(true)?;
                    let local = listener.local_addr()?;
                    let pool = WorkerPool::new(config.workers, config.max_queued);
                    return Ok(Server {
                        listener,
                        addr: local,
                        shared: Arc::new(Shared {
                            capability_key: config
                                .capability_key
                                .unwrap_or_else(|| CapabilityPublicKey::derive(&key)),
                            key,
                            incarnation,
                            handler,
                            config,
                            stop: AtomicBool::new(false),
                            next_conn: AtomicU64::new(1),
                            conns: Mutex::new(HashMap::new()),
                            pool,
                        }),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last = Some(ServerError::AddrInUse { addr: *a })
                }
                Err(source) => last = Some(ServerError::Bind { addr: *a, source }),
            }
        }
        Err(last.unwrap_or_else(|| ServerError::NoAddress {
            addr: format!("{addr:?}"),
        }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This server's incarnation: drawn at random when it was bound, sent to every client
    /// in the handshake, so that a client can tell a restarted server from the one it knew.
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// Runs the server on background threads.
    ///
    /// # Panics
    /// If the operating system cannot create the acceptor thread.
    pub fn spawn(self) -> ServerHandle {
        let shared = self.shared.clone();
        let listener = self.listener;
        let acceptor = std::thread::Builder::new()
            .name("fabric-accept".into())
            .spawn(move || gate::run(&listener, &shared))
            .expect("the OS could not create the fabric acceptor thread");
        ServerHandle {
            addr: self.addr,
            shared: self.shared,
            acceptor: Some(acceptor),
        }
    }

    /// Runs the server on this thread; it serves until the process ends.
    pub fn run(self) -> Result<(), ServerError> {
        gate::run(&self.listener, &self.shared);
        Ok(())
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This server's incarnation (see [`Server::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// How many connections are open now.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = acceptor.join();
        let conns: Vec<ConnEntry> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for c in &conns {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for c in conns {
            if let Some(t) = c.thread {
                let _ = t.join();
            }
        }
        self.shared.pool.shutdown();
        tracing::debug!(addr = %self.addr, "fabric server stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives an authenticated connection its thread (refused with `Unavailable` beyond
/// [`ServerConfig::max_connections`]).
fn start_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    who: Peer,
    session: Session,
) {
    let setup = (|| -> io::Result<TcpStream> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.try_clone()
    })();
    let registry_copy = match setup {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %error_chain(&e), "configuring a fabric connection failed");
            return;
        }
    };
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = lock(&shared.conns);
        if conns.len() >= shared.config.max_connections {
            drop(conns);
            tracing::warn!(%peer, "refusing a fabric connection: too many connections");
            // Refuse off the acceptor thread: closing gracefully takes a moment.
            let refused = std::thread::Builder::new()
                .name("fabric-refuse".into())
                .spawn(move || {
                    let (mut sealer, _) = session.server_halves();
                    let _ = write_sealed_connection_error(
                        &mut &stream,
                        &mut sealer,
                        ErrorCode::Unavailable,
                        "the server has too many connections",
                    );
                    close_after_error(&stream);
                });
            if let Err(e) = refused {
                tracing::error!(%peer, error = %error_chain(&e), "could not start a thread to refuse a connection");
            }
            return;
        }
        conns.insert(
            id,
            ConnEntry {
                stream: registry_copy,
                thread: None,
            },
        );
    }
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fabric-conn-{id}"))
        .spawn(move || {
            serve_connection(&sh, stream, peer, who, &session);
            lock(&sh.conns).remove(&id);
        });
    match spawned {
        Ok(handle) => {
            if let Some(entry) = lock(&shared.conns).get_mut(&id) {
                entry.thread = Some(handle);
            }
        }
        Err(e) => {
            tracing::error!(%peer, error = %error_chain(&e), "could not start a fabric connection thread");
            lock(&shared.conns).remove(&id);
        }
    }
}
