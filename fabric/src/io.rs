//! Frame I/O on byte streams: a buffered, timeout-tolerant frame reader and vectored
//! writes that send a header and its payload with one system call.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{Frame, FrameError, Header, FLAG_RESPONSE, HEADER_LEN};
use crate::request::opcode;
use crate::seal::Sealer;

const DEFAULT_BUFFER: usize = 64 * 1024;
const SHRINK_ABOVE: usize = 1 << 20;

/// Reads frames from a stream through a buffer, so that small frames cost one `read`
/// between them and a read timeout in the middle of a frame loses nothing.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether frames carry a CRC to check (not when a tag protects them).
    check_crc: bool,
}

impl FrameReader {
    /// A reader with the default buffer size that checks CRCs.
    #[cfg(test)]
    pub(crate) fn new() -> FrameReader {
        FrameReader::checking_crc(true)
    }

    /// A reader that checks each frame's CRC or not (frames protected by a tag carry none).
    pub(crate) fn checking_crc(check_crc: bool) -> FrameReader {
        FrameReader {
            buf: vec![0; DEFAULT_BUFFER],
            start: 0,
            end: 0,
            check_crc,
        }
    }

    /// Whether a whole frame (or a header that will fail to decode) is already buffered,
    /// so that the next [`FrameReader::read_frame`] returns without reading the stream.
    pub(crate) fn has_buffered_frame(&self) -> bool {
        let avail = self.end - self.start;
        if avail < HEADER_LEN {
            return false;
        }
        match Header::decode(&self.buf[self.start..self.end]) {
            Ok(h) => avail >= HEADER_LEN + h.payload_len as usize,
            Err(_) => true,
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads the next frame. `Ok(None)` means the stream's read timed out (or would
    /// block) before a whole frame arrived; the partial frame stays buffered.
    pub(crate) fn read_frame<R: Read>(&mut self, r: &mut R) -> Result<Option<Frame>, FrameError> {
        loop {
            let avail = self.end - self.start;
            let mut needed = HEADER_LEN;
            if avail >= HEADER_LEN {
                let header = Header::decode(&self.buf[self.start..self.end])?;
                let total = HEADER_LEN + header.payload_len as usize;
                if avail >= total {
                    let payload = self.buf[self.start + HEADER_LEN..self.start + total].to_vec();
                    if self.check_crc {
                        header.verify(&payload)?;
                    }
                    self.start += total;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                        if self.buf.len() > SHRINK_ABOVE {
                            self.buf = vec![0; DEFAULT_BUFFER];
                        }
                    }
                    return Ok(Some(Frame { header, payload }));
                }
                needed = total;
            }
            if self.buf.len() - self.start < needed {
                self.compact();
                if self.buf.len() < needed {
                    self.buf.resize(needed, 0);
                }
            }
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) if avail == 0 => return Err(FrameError::Closed),
                Ok(0) => {
                    return Err(FrameError::Truncated {
                        needed,
                        available: avail,
                    })
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }
}

/// A reader that busy-polls the socket for up to `spin` before falling back to a
/// blocking read: it trades CPU time for the cost of a sleep and a cross-CPU wake-up.
pub(crate) struct SpinRead<'a> {
    /// The socket (blocking mode; its read timeout still bounds the blocking fallback).
    pub(crate) stream: &'a TcpStream,
    /// How long to poll before blocking; zero means block at once.
    pub(crate) spin: Duration,
}

impl Read for SpinRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.spin.is_zero() {
            let start = Instant::now();
            loop {
                // SAFETY: the descriptor is owned by `self.stream` and open for the
                // borrow's lifetime; `buf` is valid and writable for `buf.len()` bytes.
                let n = unsafe {
                    libc::recv(
                        self.stream.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    return Ok(n as usize);
                }
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    return Err(e);
                }
                if start.elapsed() >= self.spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Reads exactly one handshake frame without read-ahead (before the buffered reader takes
/// over); a payload over `max` bytes is refused unread. A timeout is reported as an I/O
/// error.
pub(crate) fn read_frame_unbuffered<R: Read>(r: &mut R, max: usize) -> Result<Frame, FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut hb[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    needed: HEADER_LEN,
                    available: got,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let header = Header::decode(&hb)?;
    if header.payload_len as usize > max {
        return Err(FrameError::Oversized {
            len: u64::from(header.payload_len),
            max,
        });
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated {
                needed: HEADER_LEN + payload.len(),
                available: HEADER_LEN,
            }
        } else {
            FrameError::Io(e)
        }
    })?;
    header.verify(&payload)?;
    Ok(Frame { header, payload })
}

/// Writes all of `bufs`, as few `writev` calls as the kernel allows.
pub(crate) fn write_all_vectored<W: Write>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the peer stopped accepting data",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one frame (header and payload) with a single vectored write where possible.
pub(crate) fn write_frame<W: Write>(w: &mut W, header: &Header, payload: &[u8]) -> io::Result<()> {
    let hb = header.encode(payload);
    let mut bufs = [IoSlice::new(&hb), IoSlice::new(payload)];
    write_all_vectored(w, &mut bufs)
}

/// Seals one frame with `sealer` and writes it (header, payload or ciphertext, tag) with a
/// single vectored write where possible. Callers hold the connection's write lock, which
/// owns `sealer`, so frames reach the wire in the order they were numbered.
pub(crate) fn write_sealed<W: Write>(
    w: &mut W,
    sealer: &mut Sealer,
    header: &Header,
    payload: &[u8],
) -> io::Result<()> {
    let sealed = sealer.seal(header, payload);
    let mut bufs = [
        IoSlice::new(&sealed.header),
        IoSlice::new(sealed.body(payload)),
        IoSlice::new(sealed.tag()),
    ];
    write_all_vectored(w, &mut bufs)
}

/// The header of a response to `req` with the given status.
pub(crate) fn response_header(req: &Header, status: u16, payload_len: usize) -> Header {
    let mut h = Header::new(req.opcode, req.request_id, req.vnode, payload_len);
    h.flags = FLAG_RESPONSE;
    h.status = status;
    h
}

/// Writes an error answering the request with header `req`.
pub(crate) fn write_error_response<W: Write>(
    w: &mut W,
    sealer: &mut Sealer,
    req: &Header,
    err: &RemoteError,
) -> io::Result<()> {
    let msg = err.message.as_bytes();
    write_sealed(
        w,
        sealer,
        &response_header(req, err.code.to_u16(), msg.len()),
        msg,
    )
}

fn connection_error_header(code: ErrorCode, message: &str) -> Header {
    let mut h = Header::new(opcode::ERROR, 0, 0, message.len());
    h.flags = FLAG_RESPONSE;
    h.status = code.to_u16();
    h
}

/// Writes a connection-level error frame (opcode ERROR, request id 0) during the handshake;
/// the connection is closed right after.
pub(crate) fn write_connection_error<W: Write>(
    w: &mut W,
    code: ErrorCode,
    message: &str,
) -> io::Result<()> {
    let h = connection_error_header(code, message);
    write_frame(w, &h, message.as_bytes())
}

/// Writes a connection-level error frame on an authenticated connection (sealed like every
/// frame after the handshake); the connection is closed right after.
pub(crate) fn write_sealed_connection_error<W: Write>(
    w: &mut W,
    sealer: &mut Sealer,
    code: ErrorCode,
    message: &str,
) -> io::Result<()> {
    let h = connection_error_header(code, message);
    write_sealed(w, sealer, &h, message.as_bytes())
}

/// Ends a connection after an error frame so that the frame reaches the peer: half-close
/// (FIN after the data), discard what the peer still sends for a moment, then close.
/// Closing with unread input would send a reset, which can destroy the error frame.
pub(crate) fn close_after_error(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    let mut s = stream;
    while total < (1 << 20) {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Maps a decoding failure to the error code sent back before closing.
pub(crate) fn frame_error_code(e: &FrameError) -> ErrorCode {
    match e {
        FrameError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
        FrameError::Io(_) | FrameError::Closed => ErrorCode::Io,
        _ => ErrorCode::BadFrame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed-size pieces, with a timeout between pieces.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        timeout_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.timeout_next {
                self.timeout_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.timeout_next = true;
            let n = self.piece.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn reader_survives_timeouts_mid_frame() {
        let mut data = Vec::new();
        let frames: Vec<Frame> = (0..5u64)
            .map(|i| Frame {
                header: Header::new(0x100, i, 1, 0),
                payload: vec![i as u8; 70_000 * (i as usize % 2) + 10],
            })
            .collect();
        for f in &frames {
            data.extend_from_slice(&f.encode());
        }
        let mut src = Trickle {
            data,
            pos: 0,
            piece: 777,
            timeout_next: false,
        };
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        loop {
            match reader.read_frame(&mut src) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => {}
                Err(FrameError::Closed) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(got.len(), frames.len());
        for (a, b) in got.iter().zip(&frames) {
            assert_eq!(a.header.request_id, b.header.request_id);
            assert_eq!(a.payload, b.payload);
        }
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        let f = Frame {
            header: Header::new(0x100, 1, 1, 0),
            payload: vec![7; 100],
        };
        let bytes = f.encode();
        let mut src = &bytes[..50];
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(FrameError::Truncated { .. })
        ));
    }
}
