//! One client connection: the table of requests in flight and the leader/follower
//! protocol by which waiting callers share the socket's read side.

use lego_report::error_chain;
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{lock, ClientError};
use crate::error::RemoteError;
use crate::frame::Frame;
use crate::io::{FrameReader, SpinRead};
use crate::request::opcode;
use crate::seal::{Opener, Sealer};

/// One authenticated TCP connection.
pub(super) struct Conn {
    /// The socket; reads belong to the leader, writes need `write_lock`.
    pub(super) stream: TcpStream,
    /// Serializes whole frames (or batches) on the socket and numbers them.
    pub(super) write_lock: Mutex<Sealer>,
    table: Mutex<Table>,
    /// The read side: the buffered reader and what checks each frame, held by the leader.
    reader: Mutex<(FrameReader, Opener)>,
    /// Set once the connection broke; nothing new is registered on it then.
    pub(super) dead: AtomicBool,
    /// The incarnation the server reported in this connection's handshake.
    pub(super) incarnation: u64,
    spin: Duration,
    born: Instant,
    /// Milliseconds after `born` when the last frame arrived.
    last_rx_ms: AtomicU64,
}

/// Requests in flight on a connection.
struct Table {
    slots: HashMap<u64, Slot>,
    /// Whether some caller is reading the socket now.
    leader: bool,
}

struct Slot {
    result: Option<Result<Frame, ClientError>>,
    waiting: bool,
    cv: Arc<Condvar>,
}

/// What a leader's turn at the socket ended with.
enum Turn {
    Mine(Result<Frame, ClientError>),
    Recheck,
}

impl Conn {
    /// Wraps an authenticated socket to a server of `incarnation`, with the session's
    /// sealer, the reader already used after the handshake and the session's opener.
    pub(super) fn new(
        stream: TcpStream,
        spin: Duration,
        incarnation: u64,
        (sealer, reader, opener): (Sealer, FrameReader, Opener),
    ) -> Conn {
        Conn {
            stream,
            incarnation,
            write_lock: Mutex::new(sealer),
            table: Mutex::new(Table {
                slots: HashMap::new(),
                leader: false,
            }),
            reader: Mutex::new((reader, opener)),
            dead: AtomicBool::new(false),
            spin,
            born: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
        }
    }

    /// Adds a slot for request `id` before it is sent.
    pub(super) fn register(&self, id: u64) -> Result<(), ClientError> {
        let mut t = lock(&self.table);
        if self.dead.load(Ordering::Acquire) {
            return Err(ClientError::Disconnected(
                "the connection broke before the request was sent".into(),
            ));
        }
        t.slots.insert(
            id,
            Slot {
                result: None,
                waiting: false,
                cv: Arc::new(Condvar::new()),
            },
        );
        Ok(())
    }

    /// Whether the connection has nothing in flight, has been quiet for a while, and the
    /// peer has closed it (checked with a non-blocking peek).
    pub(super) fn idle_and_closed(&self) -> bool {
        {
            let t = lock(&self.table);
            if !t.slots.is_empty() || t.leader {
                return false;
            }
        }
        let quiet_ms = (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.last_rx_ms.load(Ordering::Relaxed));
        if quiet_ms < 2 {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: the descriptor is owned by `self.stream` and open; the buffer is one
        // valid, writable byte; MSG_PEEK | MSG_DONTWAIT neither consumes data nor blocks.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let closed = match n {
            0 => true,
            n if n > 0 => false,
            _ => !matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        };
        if closed {
            self.kill("the server closed the connection");
        }
        closed
    }

    /// Marks the connection broken and fails everything in flight on it.
    pub(super) fn kill(&self, reason: &str) {
        let mut t = lock(&self.table);
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(reason, "fabric connection lost");
        for slot in t.slots.values_mut() {
            if slot.result.is_none() {
                slot.result = Some(Err(ClientError::Disconnected(reason.to_string())));
                slot.cv.notify_one();
            }
        }
        drop(t);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Drops request `id`'s slot (its response, if any comes, is discarded).
    pub(super) fn forget(&self, id: u64) {
        lock(&self.table).slots.remove(&id);
    }

    /// Waits for request `id`'s response, reading the socket while nobody else does.
    pub(super) fn wait(
        &self,
        id: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        let mut t = lock(&self.table);
        loop {
            let leader_busy = t.leader;
            let Some(slot) = t.slots.get_mut(&id) else {
                return Err(ClientError::Disconnected(
                    "the request was forgotten".into(),
                ));
            };
            if let Some(r) = slot.result.take() {
                t.slots.remove(&id);
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                t.slots.remove(&id);
                return Err(ClientError::Timeout(timeout));
            }
            if !leader_busy {
                t.leader = true;
                drop(t);
                let turn = self.lead(id, deadline);
                t = lock(&self.table);
                t.leader = false;
                if let Some(next) = t.slots.values().find(|s| s.waiting && s.result.is_none()) {
                    next.cv.notify_one();
                }
                if let Turn::Mine(r) = turn {
                    t.slots.remove(&id);
                    return r;
                }
            } else {
                slot.waiting = true;
                let cv = slot.cv.clone();
                t = cv
                    .wait_timeout(t, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if let Some(slot) = t.slots.get_mut(&id) {
                    slot.waiting = false;
                }
            }
        }
    }

    /// One leader turn: read frames, handing others theirs, until ours arrives, the
    /// deadline passes or the connection breaks.
    fn lead(&self, id: u64, deadline: Instant) -> Turn {
        let mut guard = lock(&self.reader);
        let (reader, opener) = &mut *guard;
        loop {
            let mut rs = SpinRead {
                stream: &self.stream,
                spin: self.spin,
            };
            match reader.read_frame(&mut rs) {
                Ok(Some(mut frame)) => {
                    if let Err(e) = opener.open(&mut frame) {
                        self.kill(&format!(
                            "a response failed authentication: {}",
                            error_chain(&e)
                        ));
                        return Turn::Recheck;
                    }
                    let ms = self.born.elapsed().as_millis() as u64;
                    self.last_rx_ms.store(ms, Ordering::Relaxed);
                    let rid = frame.header.request_id;
                    if frame.header.opcode == opcode::ERROR && rid == 0 {
                        let err = RemoteError::from_wire(frame.header.status, &frame.payload);
                        self.kill(&format!("the server closed the connection: {err}"));
                        return Turn::Recheck;
                    }
                    if rid == id {
                        return Turn::Mine(Ok(frame));
                    }
                    {
                        let mut t = lock(&self.table);
                        if let Some(slot) = t.slots.get_mut(&rid) {
                            slot.result = Some(Ok(frame));
                            if slot.waiting {
                                slot.cv.notify_one();
                            }
                        }
                    }
                    if Instant::now() >= deadline {
                        return Turn::Recheck;
                    }
                }
                Ok(None) => {
                    if Instant::now() >= deadline {
                        return Turn::Recheck;
                    }
                }
                Err(e) => {
                    self.kill(&format!("reading a response failed: {}", error_chain(&e)));
                    return Turn::Recheck;
                }
            }
        }
    }
}
