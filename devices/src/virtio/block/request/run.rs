//! Running parsed requests against the store with many in flight: consecutive reads and
//! writes are gathered into runs of store ops (pieces of at most [`CHUNK`] bytes, at most
//! [`MAX_RUN_BYTES`] in all), each run is submitted at once and then waited on in order.
//! FLUSH, DISCARD and WRITE_ZEROES are barriers: they start only once everything submitted
//! before them has completed, and run alone.

use std::io::{Read, Write};

use super::parse::{Op, Parsed};
use super::{RequestError, CHUNK};
use crate::virtio::block::store::{BlockStore, StoreError, StoreOp, StorePending};

/// Request data bytes one queue keeps in flight at most; a larger batch goes in several runs.
pub const MAX_RUN_BYTES: usize = 16 << 20;

/// One piece of a request in a run.
struct Piece {
    /// Index of its request.
    req: usize,
    offset: u64,
    /// Bytes to read, or the bytes to write.
    what: What,
}

enum What {
    Read(usize),
    Write(Vec<u8>),
}

/// The pieces gathered but not yet submitted.
#[derive(Default)]
struct Run {
    pieces: Vec<Piece>,
    bytes: usize,
}

impl Run {
    /// Makes room for `n` more bytes, completing the run first when it would grow too big.
    fn reserve(&mut self, n: usize, store: &dyn BlockStore, reqs: &mut [Parsed<'_>]) {
        if !self.pieces.is_empty() && self.bytes + n > MAX_RUN_BYTES {
            self.complete(store, reqs);
        }
        self.bytes += n;
    }

    /// Submits every piece at once, then waits for each in order and delivers its result.
    fn complete(&mut self, store: &dyn BlockStore, reqs: &mut [Parsed<'_>]) {
        let pieces = std::mem::take(&mut self.pieces);
        self.bytes = 0;
        if pieces.is_empty() {
            return;
        }
        let ops: Vec<StoreOp<'_>> = pieces
            .iter()
            .map(|p| match &p.what {
                What::Read(len) => StoreOp::Read {
                    offset: p.offset,
                    len: *len,
                },
                What::Write(data) => StoreOp::Write {
                    offset: p.offset,
                    data,
                },
            })
            .collect();
        let mut pending = store.submit(&ops).into_iter();
        drop(ops);
        for piece in &pieces {
            let result = pending.next().map_or_else(
                || {
                    Err(StoreError::Unsupported(
                        "the store returned fewer results than operations",
                    ))
                },
                StorePending::wait,
            );
            deliver(&mut reqs[piece.req], piece, result);
        }
    }
}

/// Hands one piece's result to its request: data into guest memory, or the failure.
fn deliver(req: &mut Parsed<'_>, piece: &Piece, result: Result<Vec<u8>, StoreError>) {
    if req.error.is_some() {
        // An earlier piece failed; this one was still waited for, but is not reported.
        return;
    }
    let data = match result {
        Ok(data) => data,
        Err(e) => return req.fail(e.into()),
    };
    if let What::Read(len) = piece.what {
        if data.len() != len {
            return req.fail(
                StoreError::ShortRead {
                    expected: len,
                    got: data.len(),
                }
                .into(),
            );
        }
        let written = match req.data.as_mut() {
            Some(w) => w.write_all(&data),
            None => Ok(()),
        };
        if let Err(e) = written {
            req.fail(RequestError::GuestMemory(e));
        }
    }
}

/// Runs every request of `reqs` (in order of submission) against `store`.
pub(super) fn run(store: &dyn BlockStore, reqs: &mut [Parsed<'_>]) {
    let mut run = Run::default();
    for i in 0..reqs.len() {
        match std::mem::replace(&mut reqs[i].op, Op::Done) {
            Op::Done => {}
            Op::Read { offset, len } => {
                let mut done = 0usize;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    run.reserve(n, store, reqs);
                    run.pieces.push(Piece {
                        req: i,
                        offset: offset + done as u64,
                        what: What::Read(n),
                    });
                    done += n;
                }
            }
            Op::Write { offset, len } => {
                let mut done = 0usize;
                while done < len && reqs[i].error.is_none() {
                    let n = (len - done).min(CHUNK);
                    run.reserve(n, store, reqs);
                    let mut buf = vec![0u8; n];
                    let read = match reqs[i].reader.as_mut() {
                        Some(r) => r.read_exact(&mut buf),
                        None => Ok(()),
                    };
                    if let Err(e) = read {
                        reqs[i].fail(RequestError::GuestMemory(e));
                        break;
                    }
                    run.pieces.push(Piece {
                        req: i,
                        offset: offset + done as u64,
                        what: What::Write(buf),
                    });
                    done += n;
                }
            }
            Op::Flush => {
                run.complete(store, reqs);
                if let Err(e) = store.flush() {
                    reqs[i].fail(e.into());
                }
            }
            Op::Segments { zero, segments } => {
                run.complete(store, reqs);
                for (offset, len, unmap) in segments {
                    let r = if zero {
                        store.write_zeroes(offset, len, unmap)
                    } else {
                        store.discard(offset, len)
                    };
                    if let Err(e) = r {
                        reqs[i].fail(e.into());
                        break;
                    }
                }
            }
        }
    }
    run.complete(store, reqs);
}
