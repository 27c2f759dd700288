//! The fabric client: one authenticated connection shared by many threads, with
//! pipelining, out-of-order completion, timeouts and reconnection.

mod conn;

use lego_report::error_chain;
use std::io::IoSlice;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::{client_handshake, AuthError};
use crate::capability::Capability;
use crate::credential::Identity;
use crate::error::RemoteError;
use crate::frame::{Frame, FrameError, Header, FLAG_RESPONSE, MAX_PAYLOAD};
use crate::io::{write_all_vectored, write_sealed, FrameReader};
use crate::request::{opcode, Request, Response};
use crate::seal::FrameProtection;
use conn::Conn;

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a request may wait for its response.
    pub timeout: Duration,
    /// How long one connection attempt (TCP connect plus handshake) may take.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Largest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// How long a request may wait for a broken connection to be made again (`None`: up to
    /// its timeout). A caller with somewhere else to go (another copy of the data) sets it
    /// short, so that a dead server costs it one refused connection, not a timeout.
    pub reconnect_patience: Option<Duration>,
    /// How long a waiting caller busy-polls the socket before sleeping (zero: never).
    /// Cuts a wake-up from each round trip at the price of CPU time.
    pub spin: Duration,
    /// The frame protection to ask for (the server may choose a stronger one); by default
    /// [`FrameProtection::Mac`], or what `LEGO_FABRIC_PROTECTION` says.
    pub protection: FrameProtection,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            reconnect_patience: None,
            spin: Duration::ZERO,
            protection: FrameProtection::from_env_or_default(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("the server refused the request")]
    Remote(#[from] RemoteError),
    /// No response came within the timeout.
    #[error("no response came within {0:?}")]
    Timeout(Duration),
    /// The connection broke while the request was in flight (or could not be re-made).
    #[error("the connection to the server was lost: {0}")]
    Disconnected(String),
    /// The handshake failed.
    #[error("the fabric handshake failed")]
    Auth(#[from] AuthError),
    /// The address did not resolve.
    #[error("the address {addr} could not be resolved")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The address resolved to no socket address.
    #[error("the address {addr} resolved to no address")]
    NoAddress {
        /// The address as given.
        addr: String,
    },
    /// The request cannot be sent (reserved opcode, payload too large).
    #[error("the request is invalid: {0}")]
    InvalidRequest(String),
    /// A socket operation failed.
    #[error("a socket operation failed")]
    Io(#[from] std::io::Error),
}

/// A thread-safe fabric client; clones share one connection.
///
/// Requests are pipelined on one TCP connection and answered out of order. There is no
/// dedicated reader thread: a waiting caller reads the socket itself (leader/follower),
/// so a lone caller at queue depth 1 never pays for a cross-thread wake-up.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A submitted request whose response has not been collected yet.
pub struct Pending {
    state: PendingState,
}

enum PendingState {
    Failed(ClientError),
    InFlight {
        conn: Arc<Conn>,
        id: u64,
        deadline: Instant,
        timeout: Duration,
    },
    Done,
}

struct Inner {
    addr: SocketAddr,
    identity: Identity,
    config: ClientConfig,
    next_id: AtomicU64,
    link: Mutex<Link>,
}

/// The current connection and what is needed to re-make it.
struct Link {
    conn: Option<Arc<Conn>>,
    caps: Vec<Capability>,
    backoff: Duration,
    next_attempt: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_response(frame: Frame, incarnation: u64) -> Result<Response, ClientError> {
    if frame.header.status != 0 {
        return Err(ClientError::Remote(RemoteError::from_wire(
            frame.header.status,
            &frame.payload,
        )));
    }
    Ok(Response {
        payload: frame.payload,
        incarnation,
    })
}

fn check_request(req: &Request) -> Result<(), ClientError> {
    if opcode::is_reserved(req.opcode) {
        return Err(ClientError::InvalidRequest(format!(
            "opcode {:#06x} is reserved for the fabric",
            req.opcode
        )));
    }
    if req.flags & FLAG_RESPONSE != 0 {
        return Err(ClientError::InvalidRequest(
            "flag bit 15 is reserved for the fabric".into(),
        ));
    }
    if req.payload.len() > MAX_PAYLOAD {
        return Err(ClientError::InvalidRequest(format!(
            "the payload is {} bytes, more than the limit of {MAX_PAYLOAD}",
            req.payload.len()
        )));
    }
    Ok(())
}

impl Client {
    /// Connects and authenticates to `addr` as `identity` (the cluster key or a credential;
    /// one attempt; later reconnections retry with exponential backoff).
    pub fn connect<A: ToSocketAddrs + std::fmt::Debug>(
        addr: A,
        identity: impl Into<Identity>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let identity = identity.into();
        let resolved = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: format!("{addr:?}"),
                source,
            })?
            .next()
            .ok_or_else(|| ClientError::NoAddress {
                addr: format!("{addr:?}"),
            })?;
        let inner = Inner {
            addr: resolved,
            identity,
            next_id: AtomicU64::new(1),
            link: Mutex::new(Link {
                conn: None,
                caps: Vec::new(),
                backoff: config.backoff_initial,
                next_attempt: None,
            }),
            config,
        };
        let conn = inner.open(&[])?;
        lock(&inner.link).conn = Some(conn);
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The incarnation of the server process behind the current connection (reported in
    /// its handshake), or `None` between connections. Each [`Response`] carries the
    /// incarnation of the connection that delivered it, which is what a caller that keeps
    /// state on the server should check.
    pub fn incarnation(&self) -> Option<u64> {
        lock(&self.inner.link)
            .conn
            .as_ref()
            .filter(|c| !c.dead.load(Ordering::Acquire))
            .map(|c| c.incarnation)
    }

    /// Attaches a capability to the connection (and to every later reconnection).
    pub fn attach(&self, cap: &Capability) -> Result<(), ClientError> {
        {
            let mut link = lock(&self.inner.link);
            link.caps.retain(|c| c.vnode != cap.vnode);
            link.caps.push(*cap);
        }
        let req = Request::new(
            opcode::ATTACH_CAPABILITY,
            cap.vnode,
            cap.to_bytes().to_vec(),
        );
        match self.inner.submit_one(req).wait() {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(e, ClientError::Remote(_)) {
                    lock(&self.inner.link).caps.retain(|c| c != cap);
                }
                Err(e)
            }
        }
    }

    /// Sends `req` and waits for its response.
    pub fn call(&self, req: Request) -> Result<Response, ClientError> {
        self.submit(req).wait()
    }

    /// Sends `req` without waiting; collect the response with [`Pending::wait`].
    pub fn submit(&self, req: Request) -> Pending {
        if let Err(e) = check_request(&req) {
            return Pending::failed(e);
        }
        self.inner.submit_one(req)
    }

    /// Sends all of `reqs` with as few system calls as possible and waits for each.
    pub fn call_batch(&self, reqs: Vec<Request>) -> Vec<Result<Response, ClientError>> {
        self.submit_batch(reqs)
            .into_iter()
            .map(Pending::wait)
            .collect()
    }

    /// Sends all of `reqs` with as few system calls as possible, without waiting.
    pub fn submit_batch(&self, reqs: Vec<Request>) -> Vec<Pending> {
        self.inner.submit_many(reqs)
    }

    /// Round-trips a fabric PING.
    pub fn ping(&self) -> Result<(), ClientError> {
        self.inner
            .submit_one(Request::new(opcode::PING, 0, Vec::new()))
            .wait()
            .map(|_| ())
    }
}

impl Inner {
    fn read_slice(&self) -> Duration {
        (self.config.timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(200))
    }

    /// Makes a new authenticated connection and attaches `caps` to it.
    fn open(&self, caps: &[Capability]) -> Result<Arc<Conn>, ClientError> {
        let stream = TcpStream::connect_timeout(&self.addr, self.config.connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.config.connect_timeout))?;
        stream.set_write_timeout(Some(self.config.connect_timeout))?;
        let hs = client_handshake(&mut &stream, &self.identity, self.config.protection)?;
        let incarnation = hs.incarnation;
        let (mut sealer, mut opener) = hs.session.client_halves();
        let mut reader = FrameReader::checking_crc(opener.checks_crc());
        for cap in caps {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let body = cap.to_bytes();
            let h = Header::new(opcode::ATTACH_CAPABILITY, id, cap.vnode, body.len());
            write_sealed(&mut &stream, &mut sealer, &h, &body)?;
            let mut reply = match reader.read_frame(&mut &stream) {
                Ok(Some(f)) => f,
                Ok(None) => return Err(ClientError::Timeout(self.config.connect_timeout)),
                Err(FrameError::Io(e)) => return Err(ClientError::Io(e)),
                Err(e) => return Err(ClientError::Disconnected(error_chain(&e))),
            };
            opener
                .open(&mut reply)
                .map_err(|e| ClientError::Disconnected(error_chain(&e)))?;
            if reply.header.status != 0 {
                let err = RemoteError::from_wire(reply.header.status, &reply.payload);
                tracing::warn!(vnode = cap.vnode, error = %err, "re-attaching a capability failed");
            }
        }
        stream.set_read_timeout(Some(self.read_slice()))?;
        stream.set_write_timeout(Some(self.config.timeout))?;
        tracing::debug!(addr = %self.addr, incarnation, protection = %hs.session.protection, "fabric connection established");
        Ok(Arc::new(Conn::new(
            stream,
            self.config.spin,
            incarnation,
            (sealer, reader, opener),
        )))
    }

    /// The live connection, re-made (with backoff) if the last one broke.
    fn conn(&self, deadline: Instant) -> Result<Arc<Conn>, ClientError> {
        let mut link = lock(&self.link);
        if let Some(c) = &link.conn {
            if !c.dead.load(Ordering::Acquire) && !c.idle_and_closed() {
                return Ok(c.clone());
            }
        }
        link.conn = None;
        let deadline = match self.config.reconnect_patience {
            Some(p) => deadline.min(Instant::now() + p),
            None => deadline,
        };
        loop {
            let now = Instant::now();
            if let Some(at) = link.next_attempt {
                if at > deadline {
                    return Err(ClientError::Disconnected(format!(
                        "{} is unreachable and the next reconnection attempt is after the deadline",
                        self.addr
                    )));
                }
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            let caps = link.caps.clone();
            match self.open(&caps) {
                Ok(c) => {
                    link.conn = Some(c.clone());
                    link.backoff = self.config.backoff_initial;
                    link.next_attempt = None;
                    return Ok(c);
                }
                Err(e) => {
                    tracing::debug!(addr = %self.addr, error = %error_chain(&e), "fabric reconnection failed");
                    let wait = link.backoff;
                    link.next_attempt = Some(Instant::now() + wait);
                    link.backoff = (wait * 2).min(self.config.backoff_max);
                    if Instant::now() + wait > deadline {
                        return Err(ClientError::Disconnected(format!(
                            "reconnecting to {} failed: {}",
                            self.addr,
                            error_chain(&e)
                        )));
                    }
                }
            }
        }
    }

    fn submit_one(&self, req: Request) -> Pending {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let conn = match self.conn(deadline) {
            Ok(c) => c,
            Err(e) => return Pending::failed(e),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = conn.register(id) {
            return Pending::failed(e);
        }
        let mut h = Header::new(req.opcode, id, req.vnode, req.payload.len());
        h.flags = req.flags;
        let written = {
            let mut sealer = lock(&conn.write_lock);
            write_sealed(&mut &conn.stream, &mut sealer, &h, &req.payload)
        };
        if let Err(e) = written {
            conn.kill(&format!("sending a request failed: {}", error_chain(&e)));
        }
        Pending {
            state: PendingState::InFlight {
                conn,
                id,
                deadline,
                timeout,
            },
        }
    }

    fn submit_many(&self, reqs: Vec<Request>) -> Vec<Pending> {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let conn = match self.conn(deadline) {
            Ok(c) => c,
            Err(e) => {
                return reqs
                    .iter()
                    .map(|_| Pending::failed(ClientError::Disconnected(error_chain(&e))))
                    .collect()
            }
        };
        let mut pendings = Vec::with_capacity(reqs.len());
        let mut headers: Vec<(Header, usize)> = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.iter().enumerate() {
            if let Err(e) = check_request(req) {
                pendings.push(Pending::failed(e));
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = conn.register(id) {
                pendings.push(Pending::failed(e));
                continue;
            }
            let mut h = Header::new(req.opcode, id, req.vnode, req.payload.len());
            h.flags = req.flags;
            headers.push((h, i));
            pendings.push(Pending {
                state: PendingState::InFlight {
                    conn: conn.clone(),
                    id,
                    deadline,
                    timeout,
                },
            });
        }
        let written = {
            let mut sealer = lock(&conn.write_lock);
            let sealed: Vec<_> = headers
                .iter()
                .map(|(h, i)| sealer.seal(h, &reqs[*i].payload))
                .collect();
            let mut slices = Vec::with_capacity(headers.len() * 3);
            for (s, (_, i)) in sealed.iter().zip(&headers) {
                slices.push(IoSlice::new(&s.header));
                let body = s.body(&reqs[*i].payload);
                if !body.is_empty() {
                    slices.push(IoSlice::new(body));
                }
                if !s.tag().is_empty() {
                    slices.push(IoSlice::new(s.tag()));
                }
            }
            write_all_vectored(&mut &conn.stream, &mut slices)
        };
        if let Err(e) = written {
            conn.kill(&format!("sending requests failed: {}", error_chain(&e)));
        }
        pendings
    }
}

impl Pending {
    fn failed(e: ClientError) -> Pending {
        Pending {
            state: PendingState::Failed(e),
        }
    }

    /// Waits for the response (up to the client's timeout).
    pub fn wait(mut self) -> Result<Response, ClientError> {
        match std::mem::replace(&mut self.state, PendingState::Done) {
            PendingState::Failed(e) => Err(e),
            PendingState::InFlight {
                conn,
                id,
                deadline,
                timeout,
            } => to_response(conn.wait(id, deadline, timeout)?, conn.incarnation),
            PendingState::Done => Err(ClientError::Disconnected(
                "the response was already collected".into(),
            )),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let PendingState::InFlight { conn, id, .. } = &self.state {
            conn.forget(*id);
        }
    }
}
