//! One authenticated server connection: its reader loop, capability checks, dispatch
//! to the handler (inline or on the worker pool) and response batching.

use lego_report::error_chain;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{lock, Dispatch, Handler, RequestContext, Shared};
use crate::capability::{unix_now, Capability, Rights};
use crate::credential::Peer;
use crate::error::{ErrorCode, RemoteError};
use crate::frame::{Frame, FrameError, Header, HEADER_LEN};
use crate::io::{
    close_after_error, frame_error_code, response_header, write_all_vectored, write_error_response,
    write_sealed, write_sealed_connection_error, FrameReader, SpinRead,
};
use crate::request::{opcode, Request};
use crate::seal::{Sealer, Session};

/// One authenticated connection, shared by its reader thread and the workers.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Who authenticated on it.
    who: Peer,
    /// Serializes whole frames (or batches) on the socket and numbers them.
    write_lock: Mutex<Sealer>,
}

/// Serves an authenticated peer's frames until it leaves, breaks the protocol or the server
/// stops (the handshake gate in `gate.rs` authenticated it).
pub(super) fn serve_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    who: Peer,
    session: &Session,
) {
    let cfg = &shared.config;
    if let Err(e) = stream
        .set_read_timeout(None)
        .and_then(|_| stream.set_write_timeout(Some(cfg.write_timeout)))
    {
        tracing::warn!(%peer, error = %error_chain(&e), "configuring a fabric connection failed");
        return;
    }
    let (sealer, mut opener) = session.server_halves();
    let conn = Arc::new(Conn {
        stream,
        peer,
        who,
        write_lock: Mutex::new(sealer),
    });
    let mut caps: HashMap<u64, Capability> = HashMap::new();
    let mut out = OutBatch::default();
    let mut reader = FrameReader::checking_crc(opener.checks_crc());
    let mut rs = SpinRead {
        stream: &conn.stream,
        spin: cfg.spin,
    };
    // Whether an error frame was sent and must reach the peer before the close.
    let mut sent_error = false;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match reader.read_frame(&mut rs) {
            Ok(Some(mut frame)) => {
                if let Err(e) = opener.open(&mut frame) {
                    tracing::warn!(%peer, error = %error_chain(&e), "a fabric peer sent a frame that failed authentication");
                    let _ = out.flush(&conn);
                    let mut sealer = lock(&conn.write_lock);
                    let _ = write_sealed_connection_error(
                        &mut &conn.stream,
                        &mut sealer,
                        ErrorCode::Unauthenticated,
                        &error_chain(&e),
                    );
                    sent_error = true;
                    break;
                }
                let mut served = serve_frame(shared, &conn, &mut caps, &mut out, frame);
                // Answers to pipelined requests go out together once the requests already
                // received are served: one write for many responses.
                if served.is_ok() && (out.is_full() || !reader.has_buffered_frame()) {
                    served = out.flush(&conn).map_err(ConnError::from);
                }
                if let Err(e) = served {
                    tracing::info!(%peer, error = %error_chain(&e), "closing a fabric connection");
                    sent_error = matches!(e, ConnError::Protocol(_));
                    break;
                }
            }
            Ok(None) => {}
            Err(FrameError::Closed) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %error_chain(&e), "a fabric connection failed");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %error_chain(&e), "a fabric peer sent a bad frame");
                let _ = out.flush(&conn);
                let mut sealer = lock(&conn.write_lock);
                let _ = write_sealed_connection_error(
                    &mut &conn.stream,
                    &mut sealer,
                    frame_error_code(&e),
                    &error_chain(&e),
                );
                sent_error = true;
                break;
            }
        }
    }
    if sent_error {
        close_after_error(&conn.stream);
    } else {
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
}

/// Why a connection must be closed after a frame.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("the peer broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("writing to the peer failed")]
    Write(#[from] io::Error),
}

/// Responses of inline requests waiting to be written together (sealed when written, so
/// that they are numbered in the order they reach the wire).
#[derive(Default)]
struct OutBatch {
    frames: Vec<(Header, Vec<u8>)>,
    bytes: usize,
}

impl OutBatch {
    const MAX_FRAMES: usize = 64;
    const MAX_BYTES: usize = 1 << 20;

    fn push(&mut self, req: &Header, result: Result<Vec<u8>, RemoteError>) {
        let (status, body) = match result {
            Ok(body) => (0, body),
            Err(e) => (e.code.to_u16(), e.message.into_bytes()),
        };
        let h = response_header(req, status, body.len());
        self.bytes += HEADER_LEN + body.len();
        self.frames.push((h, body));
    }

    fn is_full(&self) -> bool {
        self.frames.len() >= OutBatch::MAX_FRAMES || self.bytes >= OutBatch::MAX_BYTES
    }

    fn flush(&mut self, conn: &Conn) -> io::Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let r = {
            let mut sealer = lock(&conn.write_lock);
            let sealed: Vec<_> = self
                .frames
                .iter()
                .map(|(h, body)| sealer.seal(h, body))
                .collect();
            let mut slices = Vec::with_capacity(self.frames.len() * 3);
            for (s, (_, body)) in sealed.iter().zip(&self.frames) {
                slices.push(IoSlice::new(&s.header));
                let body = s.body(body);
                if !body.is_empty() {
                    slices.push(IoSlice::new(body));
                }
                if !s.tag().is_empty() {
                    slices.push(IoSlice::new(s.tag()));
                }
            }
            write_all_vectored(&mut &conn.stream, &mut slices)
        };
        self.frames.clear();
        self.bytes = 0;
        if r.is_err() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        r
    }
}

fn send(conn: &Conn, req: &Header, result: Result<Vec<u8>, RemoteError>) -> io::Result<()> {
    let mut sealer = lock(&conn.write_lock);
    let r = match &result {
        Ok(body) => write_sealed(
            &mut &conn.stream,
            &mut sealer,
            &response_header(req, 0, body.len()),
            body,
        ),
        Err(err) => write_error_response(&mut &conn.stream, &mut sealer, req, err),
    };
    if r.is_err() {
        // A half-written frame would corrupt the stream: end the connection for all.
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
    r
}

fn serve_frame(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    caps: &mut HashMap<u64, Capability>,
    out: &mut OutBatch,
    frame: Frame,
) -> Result<(), ConnError> {
    let h = frame.header;
    if h.is_response() {
        let _ = out.flush(conn);
        let mut sealer = lock(&conn.write_lock);
        let _ = write_sealed_connection_error(
            &mut &conn.stream,
            &mut sealer,
            ErrorCode::BadFrame,
            "a client may not send response frames",
        );
        return Err(ConnError::Protocol("it sent a response frame"));
    }
    if opcode::is_reserved(h.opcode) {
        let result = serve_builtin(shared, caps, &h, frame.payload);
        out.push(&h, result);
        return Ok(());
    }
    let rights = if h.vnode == 0 {
        Rights::empty()
    } else {
        match authorize(caps, h.vnode) {
            Ok(r) => r,
            Err(e) => {
                out.push(&h, Err(e));
                return Ok(());
            }
        }
    };
    let ctx = RequestContext {
        peer: conn.peer,
        vnode: h.vnode,
        rights,
        request_id: h.request_id,
        role: conn.who.role,
        name: conn.who.name.clone(),
    };
    let req = Request {
        opcode: h.opcode,
        vnode: h.vnode,
        flags: h.flags,
        payload: frame.payload,
    };
    match shared.handler.dispatch(&req) {
        Dispatch::Inline => {
            let result = call_handler(shared.handler.as_ref(), &ctx, req);
            out.push(&h, result);
        }
        Dispatch::Worker => {
            let handler = shared.handler.clone();
            let job_conn = conn.clone();
            let job = Box::new(move || {
                let result = call_handler(handler.as_ref(), &ctx, req);
                if let Err(e) = send(&job_conn, &h, result) {
                    tracing::debug!(peer = %job_conn.peer, error = %error_chain(&e), "a fabric response could not be sent");
                }
            });
            if let Err(e) = shared.pool.submit(job) {
                let err = RemoteError::new(ErrorCode::Unavailable, error_chain(&e));
                out.push(&h, Err(err));
            }
        }
    }
    Ok(())
}

fn call_handler(
    handler: &dyn Handler,
    ctx: &RequestContext,
    req: Request,
) -> Result<Vec<u8>, RemoteError> {
    let op = req.opcode;
    catch_unwind(AssertUnwindSafe(|| handler.handle(ctx, req))).unwrap_or_else(|_| {
        tracing::error!(opcode = op, "a fabric handler panicked");
        Err(RemoteError::new(
            ErrorCode::Internal,
            format!("the handler for opcode {op:#06x} panicked"),
        ))
    })
}

fn authorize(caps: &HashMap<u64, Capability>, vnode: u64) -> Result<Rights, RemoteError> {
    let cap = caps.get(&vnode).ok_or_else(|| {
        RemoteError::new(
            ErrorCode::Forbidden,
            format!("no capability for vNode {vnode} is attached to this connection"),
        )
    })?;
    let now = unix_now();
    if now >= cap.expires_unix {
        return Err(RemoteError::new(
            ErrorCode::Forbidden,
            format!(
                "the capability for vNode {vnode} expired at {}",
                cap.expires_unix
            ),
        ));
    }
    Ok(cap.rights)
}

fn serve_builtin(
    shared: &Shared,
    caps: &mut HashMap<u64, Capability>,
    h: &Header,
    payload: Vec<u8>,
) -> Result<Vec<u8>, RemoteError> {
    match h.opcode {
        opcode::PING => Ok(payload),
        opcode::ATTACH_CAPABILITY => {
            let cap = Capability::from_bytes(&payload)
                .map_err(|e| RemoteError::new(ErrorCode::InvalidArgument, error_chain(&e)))?;
            if h.vnode != 0 && h.vnode != cap.vnode {
                return Err(RemoteError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "the frame is for vNode {} but the capability is for vNode {}",
                        h.vnode, cap.vnode
                    ),
                ));
            }
            cap.verify(&shared.capability_key, unix_now())
                .map_err(|e| RemoteError::new(ErrorCode::Forbidden, error_chain(&e)))?;
            caps.insert(cap.vnode, cap);
            Ok(Vec::new())
        }
        opcode::HELLO | opcode::AUTH => Err(RemoteError::new(
            ErrorCode::InvalidArgument,
            "the connection is already authenticated",
        )),
        op => Err(RemoteError::new(
            ErrorCode::InvalidArgument,
            format!("opcode {op:#06x} is reserved for the fabric and unknown to this server"),
        )),
    }
}
