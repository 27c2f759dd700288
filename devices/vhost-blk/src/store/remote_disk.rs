//! [`RemoteDiskStore`]: a vNode volume on a storage monitor as a block device. Large requests
//! are split into pieces that are pipelined on the fabric connection, and a batch of requests
//! ([`BlockStore::submit`]) is sent before any answer is awaited; FLUSH is the monitor's
//! `fdatasync` of the volume.

use lego_fabric::Pending;
use lego_monitor_client::client::{CallError, Renewal, StorageClient};

use super::{check_range, check_write, BlockStore, StoreError, StoreOp, StorePending};

/// Largest piece sent in one fabric request (the monitor accepts up to 4 MiB).
const PIECE: usize = 1 << 20;

/// The serial prefix of remote disks; the volume name follows it.
pub const SERIAL_PREFIX: &str = "lego-remote-disk:";

/// A volume on a storage monitor.
pub struct RemoteDiskStore {
    client: StorageClient,
    volume: String,
    capacity: u64,
    read_only: bool,
    serial: String,
    /// Keeps the capability fresh while the store lives.
    _renewal: Option<Renewal>,
}

fn remote(op: &'static str) -> impl Fn(CallError) -> StoreError {
    move |source| StoreError::Remote {
        op,
        source: source.into(),
    }
}

fn wait_all(pending: Vec<Pending>, op: &'static str) -> Result<Vec<Vec<u8>>, StoreError> {
    // Collect every answer before reporting the first error, so nothing stays in flight.
    let mut out = Vec::with_capacity(pending.len());
    let mut first_err = None;
    for p in pending {
        match p.wait() {
            Ok(r) => out.push(r.payload),
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
        let pending: Vec<Pending> = buf
            .chunks(PIECE)
            .enumerate()
            .map(|(i, c)| {
                self.client
                    .submit_read(&self.volume, offset + (i * PIECE) as u64, c.len() as u32)
            })
            .collect();
        let answers = wait_all(pending, "volume read")?;
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
        let pending = data
            .chunks(PIECE)
            .enumerate()
            .map(|(i, c)| {
                self.client
                    .submit_write(&self.volume, offset + (i * PIECE) as u64, c, false)
            })
            .collect();
        wait_all(pending, "volume write").map(|_| ())
    }

    fn submit(&self, ops: &[StoreOp<'_>]) -> Vec<StorePending> {
        ops.iter()
            .map(|op| match *op {
                StoreOp::Read { offset, len } => {
                    if let Err(e) = check_range(offset, len as u64, self.capacity) {
                        return StorePending::ready(Err(e));
                    }
                    let pending: Vec<(Pending, usize)> = (0..len)
                        .step_by(PIECE)
                        .map(|at| {
                            let n = (len - at).min(PIECE);
                            let p =
                                self.client
                                    .submit_read(&self.volume, offset + at as u64, n as u32);
                            (p, n)
                        })
                        .collect();
                    StorePending::deferred(move || {
                        let sizes: Vec<usize> = pending.iter().map(|(_, n)| *n).collect();
                        let answers =
                            wait_all(pending.into_iter().map(|(p, _)| p).collect(), "volume read")?;
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
                    let pending: Vec<Pending> = data
                        .chunks(PIECE)
                        .enumerate()
                        .map(|(i, c)| {
                            let at = offset + (i * PIECE) as u64;
                            self.client.submit_write(&self.volume, at, c, false)
                        })
                        .collect();
                    StorePending::deferred(move || {
                        wait_all(pending, "volume write").map(|_| Vec::new())
                    })
                }
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.client
            .flush(&self.volume)
            .map_err(remote("volume flush (fdatasync)"))
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
