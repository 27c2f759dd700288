//! The handshake gate: one thread accepts every connection and runs the server side of all
//! handshakes at once, without blocking, under poll(2). A peer that has not authenticated
//! costs a socket and a buffer of at most one handshake frame, never a thread, and gets one
//! deadline for the whole handshake ([`ServerConfig::handshake_timeout`]), however slowly it
//! trickles bytes. When [`ServerConfig::max_handshakes`] peers are mid-handshake, the oldest
//! is dropped for the newcomer: a client that completes its handshake in a round trip gets
//! in however many idle or trickling peers are queued. Only authenticated connections get a
//! thread ([`super::start_connection`]). Failed handshakes are logged at most
//! [`LOG_BURST`] times per [`LOG_WINDOW`], then counted.
//!
//! [`ServerConfig::handshake_timeout`]: super::ServerConfig::handshake_timeout
//! [`ServerConfig::max_handshakes`]: super::ServerConfig::max_handshakes

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_report::error_chain;

use super::{start_connection, Shared};
use crate::auth::{
    answer_hello, check_auth, refuse_frame, HelloSeen, Refusal, HANDSHAKE_MAX_PAYLOAD,
};
use crate::credential::Peer;
use crate::frame::{Frame, FrameError, Header, HEADER_LEN};
use crate::io::{write_connection_error, write_frame};
use crate::seal::Session;

/// Failed handshakes logged one by one within a window.
pub const LOG_BURST: u32 = 5;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long a refused peer gets to read the error frame before its socket closes.
const LINGER: Duration = Duration::from_millis(500);
/// The longest the gate sleeps (it checks the server's stop flag this often).
const TICK: Duration = Duration::from_millis(100);
/// Connections accepted per wake-up at most, so pending handshakes keep moving.
const ACCEPT_BATCH: usize = 256;

/// Where a pending connection is in the handshake.
enum Step {
    /// Waiting for the client's HELLO.
    Hello,
    /// Waiting for the client's AUTH over both HELLOs, with the proof key of the peer it
    /// claimed to be.
    Auth(Box<HelloSeen>),
    /// Refused: the error frame was sent; what the peer still sends is discarded until it
    /// closes or the linger ends.
    Closing,
}

/// A connection that has not authenticated yet.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    /// The frame being read (header, then payload): at most one handshake frame.
    buf: Vec<u8>,
    step: Step,
}

/// What reading made of a pending connection.
enum Progress {
    /// Needs more bytes.
    Waiting,
    /// Authenticated as this peer: serve it with this session.
    Authenticated(Peer, Session),
    /// Done with it (closed by the peer, or refused and lingered).
    Drop,
}

/// Rate-limits the log lines of failed handshakes.
struct FailureLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl FailureLog {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Logs that `peer` failed the handshake because of `why`, unless the window's burst is
    /// spent (then it is counted, and the count logged when the next window opens).
    fn failed(&mut self, peer: SocketAddr, why: &str) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::info!(
                    count = self.suppressed,
                    "more fabric peers failed the handshake in the last {} s (not logged one by one)",
                    LOG_WINDOW.as_secs()
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            tracing::info!(%peer, error = %why, "a fabric peer failed the handshake");
        } else {
            self.suppressed += 1;
        }
    }
}

impl Pending {
    fn new(stream: TcpStream, peer: SocketAddr, patience: Duration) -> Self {
        Self {
            stream,
            peer,
            deadline: Instant::now() + patience,
            buf: Vec::with_capacity(HEADER_LEN + HANDSHAKE_MAX_PAYLOAD),
            step: Step::Hello,
        }
    }

    /// Reads what the peer sent and takes the handshake as far as it goes.
    fn advance(&mut self, shared: &Shared, log: &mut FailureLog) -> Progress {
        if matches!(self.step, Step::Closing) {
            return self.drain();
        }
        loop {
            let frame = match self.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Progress::Waiting,
                Err(e) => return self.refuse(refuse_frame(e), log),
            };
            let step = std::mem::replace(&mut self.step, Step::Hello);
            match step {
                Step::Hello => match answer_hello(
                    &shared.key,
                    shared.incarnation,
                    shared.config.protection,
                    &frame,
                ) {
                    Ok((h, body, seen)) => {
                        if let Err(e) = write_frame(&mut &self.stream, &h, &body) {
                            return self.gone(&e.into(), log);
                        }
                        self.step = Step::Auth(Box::new(seen));
                    }
                    Err(r) => return self.refuse(r, log),
                },
                Step::Auth(seen) => {
                    return match check_auth(&seen, &frame) {
                        Ok(_)
                            if super::lock(&shared.conns).len()
                                >= shared.config.max_connections =>
                        {
                            let full = "the server has too many connections";
                            let error = crate::auth::AuthError::TooManyConnections;
                            let reply = Some((crate::error::ErrorCode::Unavailable, full.into()));
                            self.refuse(Refusal { error, reply }, log)
                        }
                        Ok((done, session)) => match write_frame(&mut &self.stream, &done, &[]) {
                            Ok(()) => Progress::Authenticated(seen.peer, session),
                            Err(e) => self.gone(&e.into(), log),
                        },
                        Err(r) => self.refuse(r, log),
                    }
                }
                Step::Closing => unreachable!("a closing connection reads no frame"),
            }
        }
    }

    /// Reads toward the next frame without blocking: the frame once it is whole, `None`
    /// while bytes are missing.
    fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let need = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                let h = Header::decode(&self.buf)?;
                HEADER_LEN + h.payload_len as usize
            };
            if self.buf.len() == need {
                let header = Header::decode(&self.buf)?;
                let payload = self.buf.split_off(HEADER_LEN);
                self.buf.clear();
                header.verify(&payload)?;
                return Ok(Some(Frame { header, payload }));
            }
            let mut chunk = [0u8; HEADER_LEN + HANDSHAKE_MAX_PAYLOAD];
            let want = need - self.buf.len();
            match (&self.stream).read(&mut chunk[..want]) {
                Ok(0) if self.buf.is_empty() => return Err(FrameError::Closed),
                Ok(0) => {
                    return Err(FrameError::Truncated {
                        needed: need,
                        available: self.buf.len(),
                    })
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() == HEADER_LEN {
                        let h = Header::decode(&self.buf)?;
                        if h.payload_len as usize > HANDSHAKE_MAX_PAYLOAD {
                            return Err(FrameError::Oversized {
                                len: u64::from(h.payload_len),
                                max: HANDSHAKE_MAX_PAYLOAD,
                            });
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    /// Sends the refusal's error frame (if any) and lingers so the peer can read it.
    fn refuse(&mut self, r: Refusal, log: &mut FailureLog) -> Progress {
        if !matches!(r.error, crate::auth::AuthError::Frame(FrameError::Closed)) {
            log.failed(self.peer, &error_chain(&r.error));
        }
        let Some((code, msg)) = r.reply else {
            return Progress::Drop;
        };
        if write_connection_error(&mut &self.stream, code, &msg).is_err() {
            return Progress::Drop;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.step = Step::Closing;
        self.deadline = Instant::now() + LINGER;
        self.drain()
    }

    /// The peer could not be written to: it is gone.
    fn gone(&self, e: &crate::auth::AuthError, log: &mut FailureLog) -> Progress {
        log.failed(self.peer, &error_chain(e));
        Progress::Drop
    }

    /// Discards what a refused peer still sends; done when it closes.
    fn drain(&mut self) -> Progress {
        let mut sink = [0u8; 512];
        loop {
            match (&self.stream).read(&mut sink) {
                Ok(0) => return Progress::Drop,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Drop,
            }
        }
    }
}

/// Accepts connections on `listener` and runs their handshakes until the server stops;
/// authenticated connections go to [`start_connection`].
pub(super) fn run(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut log = FailureLog::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let timeout = pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(TICK)
            .min(TICK);
        fds.clear();
        fds.push(pollfd(listener.as_raw_fd()));
        fds.extend(pending.iter().map(|p| pollfd(p.stream.as_raw_fd())));
        // SAFETY: `fds` is a valid array of initialized pollfds of the length passed, alive
        // for the call.
        let rc = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis().max(1) as i32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %error_chain(&e), "polling fabric connections failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let ready: Vec<bool> = fds[1..].iter().map(|f| f.revents != 0).collect();
        let mut kept = VecDeque::with_capacity(pending.len());
        for (mut p, ready) in pending.drain(..).zip(ready) {
            let progress = if ready {
                p.advance(shared, &mut log)
            } else {
                Progress::Waiting
            };
            match progress {
                Progress::Authenticated(who, session) => hand_over(shared, p, who, session),
                Progress::Drop => {}
                Progress::Waiting if Instant::now() >= p.deadline => {
                    if !matches!(p.step, Step::Closing) {
                        let why = format!(
                            "it did not finish the handshake within {:?}",
                            shared.config.handshake_timeout
                        );
                        log.failed(p.peer, &why);
                    }
                }
                Progress::Waiting => kept.push_back(p),
            }
        }
        pending = kept;
        if fds[0].revents != 0 {
            accept_batch(listener, shared, &mut pending, &mut log);
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Accepts what is waiting on the listener (up to [`ACCEPT_BATCH`]).
fn accept_batch(
    listener: &TcpListener,
    shared: &Shared,
    pending: &mut VecDeque<Pending>,
    log: &mut FailureLog,
) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    tracing::warn!(%peer, error = %error_chain(&e), "configuring a fabric connection failed");
                    continue;
                }
                if pending.len() >= shared.config.max_handshakes.max(1) {
                    if let Some(oldest) = pending.pop_front() {
                        log.failed(
                            oldest.peer,
                            "too many peers are mid-handshake; the oldest was dropped",
                        );
                    }
                }
                pending.push_back(Pending::new(stream, peer, shared.config.handshake_timeout));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors (or another transient failure): make room by dropping
                // the oldest unauthenticated peer, and keep serving.
                if let Some(oldest) = pending.pop_front() {
                    log.failed(oldest.peer, "the server ran out of descriptors; the oldest unauthenticated peer was dropped");
                } else {
                    tracing::warn!(error = %error_chain(&e), "accepting a fabric connection failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        }
    }
}

/// Gives an authenticated connection its thread.
fn hand_over(shared: &Arc<Shared>, p: Pending, who: Peer, session: Session) {
    if let Err(e) = p.stream.set_nonblocking(false) {
        tracing::warn!(peer = %p.peer, error = %error_chain(&e), "configuring a fabric connection failed");
        return;
    }
    tracing::debug!(peer = %p.peer, who = %who, protection = %session.protection, "fabric peer authenticated");
    start_connection(shared, p.stream, p.peer, who, session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_handshakes_are_logged_in_bursts_then_counted() {
        let mut log = FailureLog::new();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..100 {
            log.failed(peer, "it did not finish the handshake");
        }
        assert_eq!(log.logged, LOG_BURST);
        assert_eq!(log.suppressed, 100 - u64::from(LOG_BURST));
        // A new window logs again (and reports what it did not log).
        log.window_start -= LOG_WINDOW;
        log.failed(peer, "again");
        assert_eq!((log.logged, log.suppressed), (1, 0));
    }
}
