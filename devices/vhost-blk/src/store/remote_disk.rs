//! [`RemoteDiskStore`]: a vNode volume on a storage monitor as a block device. Large requests
//! are split into pieces that are pipelined on the fabric connection, and a batch of requests
//! ([`BlockStore::submit`]) is sent before any answer is awaited; FLUSH is the monitor's
//! `fdatasync` of the volume.
//!
//! A storage monitor that drops the connection (it restarts) is waited for: each piece is
//! sent again until it is answered or [`RETRY_WINDOW`] passes, so the guest sees a delay,
//! not an error. Pieces are idempotent (reads, writes of the same bytes at the same offset,
//! fdatasync). What a flush promises is checked against the monitor's incarnation, which
//! the storage monitor keeps across process restarts and changes after a reboot: if writes
//! since the last flush were acknowledged by another incarnation than the one that flushed,
//! they may be gone, and the flush is an error rather than a false promise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lego_fabric::{ClientError, Pending, Response};
use lego_monitor_client::client::{CallError, Renewal, StorageClient};

use super::{check_range, check_write, BlockStore, StoreError, StoreOp, StorePending};

/// Largest piece sent in one fabric request (the monitor accepts up to 4 MiB).
const PIECE: usize = 1 << 20;

/// How long a piece is sent again while the storage monitor does not answer (a restart).
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Whether `e` says the connection failed (worth sending again), not the request.
fn transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Disconnected(_) | ClientError::Timeout(_) | ClientError::Io(_)
    )
}

/// Waits for `first`; while it fails because of the connection, sends the piece again with
/// `again` (backing off from 20 ms to 1 s) until [`RETRY_WINDOW`] has passed.
fn settle(
    first: Pending,
    mut again: impl FnMut() -> Pending,
    what: &'static str,
) -> Result<Response, ClientError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut result = first.wait();
    let mut tries = 1u32;
    while let Err(e) = &result {
        if !transient(e) || start.elapsed() >= RETRY_WINDOW {
            break;
        }
        if tries == 1 {
            tracing::warn!(
                op = what,
                error = %lego_report::error_chain(e),
                "the storage monitor dropped a request; sending it again until it answers"
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
        tries += 1;
        result = again().wait();
    }
    if tries > 1 && result.is_ok() {
        tracing::info!(op = what, tries, "the storage monitor answered again");
    }
    result
}

/// Which incarnations acknowledged the writes since the last flush.
#[derive(Debug, Default)]
struct Unflushed {
    /// The incarnation of the first write acknowledged since the last flush.
    first: Option<u64>,
    /// A later write came from another incarnation.
    mixed: bool,
}

impl Unflushed {
    fn wrote(&mut self, incarnation: u64) {
        match self.first {
            None => self.first = Some(incarnation),
            Some(i) if i != incarnation => self.mixed = true,
            Some(_) => {}
        }
    }

    /// A flush answered by `incarnation` succeeded: whether it covers every acknowledged
    /// write. Starts over either way.
    fn flushed(&mut self, incarnation: u64) -> bool {
        let whole = !self.mixed && self.first.is_none_or(|i| i == incarnation);
        *self = Unflushed::default();
        whole
    }
}

/// The serial prefix of remote disks; the volume name follows it.
pub const SERIAL_PREFIX: &str = "lego-remote-disk:";

/// A volume on a storage monitor.
pub struct RemoteDiskStore {
    client: StorageClient,
    volume: String,
    capacity: u64,
    read_only: bool,
    serial: String,
    /// Writes acknowledged since the last flush, by incarnation.
    unflushed: Arc<Mutex<Unflushed>>,
    /// Keeps the capability fresh while the store lives.
    _renewal: Option<Renewal>,
}

fn remote(op: &'static str) -> impl Fn(CallError) -> StoreError {
    move |source| StoreError::Remote {
        op,
        source: source.into(),
    }
}

/// One piece of an op in flight: its answer, and how to send it again.
struct Piece {
    pending: Pending,
    again: Box<dyn FnMut() -> Pending>,
}

/// Waits for every piece (sending again what the connection lost), then reports the first
/// error, so nothing stays in flight. Writes' incarnations go to `unflushed`.
fn wait_all(
    pieces: Vec<Piece>,
    op: &'static str,
    unflushed: Option<&Mutex<Unflushed>>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut first_err = None;
    for p in pieces {
        match settle(p.pending, p.again, op) {
            Ok(r) => {
                if let Some(u) = unflushed {
                    u.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .wrote(r.incarnation);
                }
                out.push(r.payload);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(remote(op)(CallError::Fabric(e))),
        None => Ok(out),
    }
}

impl RemoteDiskStore {
    /// Serves `volume` (of `capacity` bytes, rounded down to whole sectors) through `client`.
    pub fn new(client: StorageClient, volume: &str, capacity: u64, read_only: bool) -> Self {
        Self {
            client,
            volume: volume.to_string(),
            capacity: capacity - capacity % super::SECTOR_SIZE,
            read_only,
            serial: format!("{SERIAL_PREFIX}{volume}"),
            unflushed: Arc::new(Mutex::new(Unflushed::default())),
            _renewal: None,
        }
    }

    /// The same store, renewing its capability with `renewal` while it lives.
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self._renewal = Some(renewal);
        self
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// A read of `len` bytes at `offset`, sent now and again on a lost connection.
    fn read_piece(&self, offset: u64, len: u32) -> Piece {
        let client = self.client.clone();
        let volume = self.volume.clone();
        Piece {
            pending: self.client.submit_read(&self.volume, offset, len),
            again: Box::new(move || client.submit_read(&volume, offset, len)),
        }
    }

    /// A write of `data` at `offset`, sent now and again (from a copy) on a lost connection.
    fn write_piece(&self, offset: u64, data: &[u8]) -> Piece {
        let client = self.client.clone();
        let volume = self.volume.clone();
        let copy = data.to_vec();
        Piece {
            pending: self.client.submit_write(&self.volume, offset, data, false),
            again: Box::new(move || client.submit_write(&volume, offset, &copy, false)),
        }
    }
}

impl BlockStore for RemoteDiskStore {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> &str {
        &self.serial
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.capacity)?;
        let pieces: Vec<Piece> = buf
            .chunks(PIECE)
            .enumerate()
            .map(|(i, c)| self.read_piece(offset + (i * PIECE) as u64, c.len() as u32))
            .collect();
        let answers = wait_all(pieces, "volume read", None)?;
        for (dst, src) in buf.chunks_mut(PIECE).zip(answers) {
            if src.len() != dst.len() {
                return Err(remote("volume read")(CallError::Invalid(format!(
                    "asked for {} bytes, got {}",
                    dst.len(),
                    src.len()
                ))));
            }
            dst.copy_from_slice(&src);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        check_write(self.read_only, offset, data.len() as u64, self.capacity)?;
        let pieces = data
            .chunks(PIECE)
            .enumerate()
            .map(|(i, c)| self.write_piece(offset + (i * PIECE) as u64, c))
            .collect();
        wait_all(pieces, "volume write", Some(&self.unflushed)).map(|_| ())
    }

    fn submit(&self, ops: &[StoreOp<'_>]) -> Vec<StorePending> {
        ops.iter()
            .map(|op| match *op {
                StoreOp::Read { offset, len } => {
                    if let Err(e) = check_range(offset, len as u64, self.capacity) {
                        return StorePending::ready(Err(e));
                    }
                    let pending: Vec<(Piece, usize)> = (0..len)
                        .step_by(PIECE)
                        .map(|at| {
                            let n = (len - at).min(PIECE);
                            (self.read_piece(offset + at as u64, n as u32), n)
                        })
                        .collect();
                    StorePending::deferred(move || {
                        let sizes: Vec<usize> = pending.iter().map(|(_, n)| *n).collect();
                        let pieces = pending.into_iter().map(|(p, _)| p).collect();
                        let answers = wait_all(pieces, "volume read", None)?;
                        let mut out = Vec::with_capacity(len);
                        for (src, n) in answers.into_iter().zip(sizes) {
                            if src.len() != n {
                                return Err(remote("volume read")(CallError::Invalid(format!(
                                    "asked for {n} bytes, got {}",
                                    src.len()
                                ))));
                            }
                            if out.is_empty() {
                                out = src;
                            } else {
                                out.extend_from_slice(&src);
                            }
                        }
                        Ok(out)
                    })
                }
                StoreOp::Write { offset, data } => {
                    let len = data.len() as u64;
                    if let Err(e) = check_write(self.read_only, offset, len, self.capacity) {
                        return StorePending::ready(Err(e));
                    }
                    let pieces: Vec<Piece> = data
                        .chunks(PIECE)
                        .enumerate()
                        .map(|(i, c)| self.write_piece(offset + (i * PIECE) as u64, c))
                        .collect();
                    let unflushed = self.unflushed.clone();
                    StorePending::deferred(move || {
                        wait_all(pieces, "volume write", Some(&unflushed)).map(|_| Vec::new())
                    })
                }
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let client = self.client.clone();
        let volume = self.volume.clone();
        let first = self.client.submit_flush(&self.volume);
        let r = settle(first, move || client.submit_flush(&volume), "volume flush")
            .map_err(|e| remote("volume flush (fdatasync)")(CallError::Fabric(e)))?;
        let whole = self
            .unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flushed(r.incarnation);
        if whole {
            Ok(())
        } else {
            Err(remote("volume flush (fdatasync)")(CallError::Invalid(
                "the storage monitor's machine restarted since some writes were acknowledged; \
                 they may be lost, so this flush cannot promise them"
                    .into(),
            )))
        }
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_write(self.read_only, offset, len, self.capacity)?;
        self.client
            .discard(&self.volume, offset, len)
            .map_err(remote("volume discard"))
    }

    fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<(), StoreError> {
        check_write(self.read_only, offset, len, self.capacity)?;
        self.client
            .write_zeroes(&self.volume, offset, len)
            .map_err(remote("volume write-zeroes"))
    }
}

#[cfg(test)]
mod tests {
    use super::Unflushed;

    #[test]
    fn a_flush_covers_writes_only_from_its_own_incarnation() {
        let mut u = Unflushed::default();
        assert!(u.flushed(5), "nothing written");
        u.wrote(5);
        u.wrote(5);
        assert!(u.flushed(5));
        u.wrote(5);
        assert!(!u.flushed(6), "written to 5, flushed by 6");
        assert!(u.flushed(6), "starts over");
        u.wrote(5);
        u.wrote(6);
        assert!(!u.flushed(6), "some writes went to 5");
    }
}
