//! What a virtio-blk device is backed by: the [`BlockStore`] trait, shared by legovmm's
//! in-process disk and the `lego-vhost-blk` backend, and the store both can serve,
//! [`file::FileStore`] (a local file or block device). The backend adds its remote stores
//! (a vNode's remote memory, a volume on a storage monitor) on the same trait.
//!
//! Offsets and lengths are in bytes and are multiples of [`SECTOR_SIZE`]; the request layer
//! checks alignment and bounds before calling a store, and stores check them again with
//! [`check_range`] so that no caller can reach outside the device.

pub mod file;
pub mod pending;

pub use pending::{Later, StoreOp, StorePending};

/// The virtio-blk sector: every offset and length handed to a store is a multiple of it.
pub const SECTOR_SIZE: u64 = 512;

/// Errors from a store operation. The request layer turns every one of them into an I/O error
/// status for the guest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The range does not lie inside the device or is not sector aligned.
    #[error("the range of {len} bytes at offset {offset} is misaligned or lies outside the {capacity}-byte device")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Device capacity in bytes.
        capacity: u64,
    },
    /// The store is read-only.
    #[error("the device is read-only")]
    ReadOnly,
    /// The store does not implement this operation.
    #[error("the device does not support {0}")]
    Unsupported(&'static str),
    /// A local I/O operation failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A store answered a read with the wrong number of bytes.
    #[error("a read of {expected} bytes returned {got}")]
    ShortRead {
        /// Bytes asked for.
        expected: usize,
        /// Bytes returned.
        got: usize,
    },
    /// A call to a remote store (a monitor) failed.
    #[error("{op} on the monitor failed")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// Cause: the remote client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A block device's contents, addressed by byte offset in whole sectors.
///
/// Implementations are shared by every queue's worker thread, so they must be `Send + Sync`
/// and serve concurrent calls.
///
/// Reads and writes can also be started without waiting with [`BlockStore::submit`], so that
/// one queue keeps many requests in flight.
pub trait BlockStore: Send + Sync {
    /// Size in bytes (a multiple of [`SECTOR_SIZE`]).
    fn capacity(&self) -> u64;

    /// Whether writes, discards and write-zeroes are refused.
    fn read_only(&self) -> bool;

    /// The device serial answered to GET_ID (the guest sees its first 20 bytes).
    fn serial(&self) -> &str;

    /// The block size the guest should use (a power of two, at least [`SECTOR_SIZE`]).
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;

    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Starts `ops` and returns one [`StorePending`] per op, in order, to be waited on later.
    ///
    /// The ops of one call run concurrently and may complete in any order, so none may depend
    /// on another (the request layer never puts a FLUSH, DISCARD or WRITE_ZEROES among them: it
    /// waits for everything in flight first). A caller waits for every pending of a call
    /// before it calls again or runs any other operation from the same thread: a store may
    /// block until its earlier operations are finished.
    ///
    /// The default runs each op synchronously with [`BlockStore::read_at`] and
    /// [`BlockStore::write_at`]; stores that can pipeline override it.
    fn submit(&self, ops: &[StoreOp<'_>]) -> Vec<StorePending> {
        ops.iter()
            .map(|op| StorePending::ready(run_op(self, op)))
            .collect()
    }

    /// Called once when the backend stops serving the device: a store whose data dies with
    /// the device (remote memory: the guest's swap) gives its space back. Returns the bytes
    /// released; stores that keep their data do nothing.
    fn release(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Whether [`BlockStore::discard`] is implemented.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Deallocates a range; its contents become unspecified (zeros for every store here).
    fn discard(&self, _offset: u64, _len: u64) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("discard"))
    }

    /// Whether [`BlockStore::write_zeroes`] is implemented.
    fn supports_write_zeroes(&self) -> bool {
        false
    }

    /// Makes a range read as zeros; with `may_unmap` the space may also be deallocated.
    fn write_zeroes(&self, _offset: u64, _len: u64, _may_unmap: bool) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("write-zeroes"))
    }
}

/// Runs `op` synchronously on `store`: the bytes read, or nothing for a write.
pub fn run_op<S: BlockStore + ?Sized>(store: &S, op: &StoreOp<'_>) -> Result<Vec<u8>, StoreError> {
    match *op {
        StoreOp::Read { offset, len } => {
            let mut buf = vec![0u8; len];
            store.read_at(offset, &mut buf).map(|()| buf)
        }
        StoreOp::Write { offset, data } => store.write_at(offset, data).map(|()| Vec::new()),
    }
}

/// Checks that `len` bytes at `offset` are sector aligned and lie inside `capacity`.
pub fn check_range(offset: u64, len: u64, capacity: u64) -> Result<(), StoreError> {
    let inside = offset.checked_add(len).is_some_and(|end| end <= capacity);
    if inside && offset.is_multiple_of(SECTOR_SIZE) && len.is_multiple_of(SECTOR_SIZE) {
        Ok(())
    } else {
        Err(StoreError::OutOfRange {
            offset,
            len,
            capacity,
        })
    }
}

/// Checks a range for a write-like operation on a store that may be read-only.
pub fn check_write(
    store_read_only: bool,
    offset: u64,
    len: u64,
    capacity: u64,
) -> Result<(), StoreError> {
    if store_read_only {
        return Err(StoreError::ReadOnly);
    }
    check_range(offset, len, capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(0, 512, 1024).is_ok());
        assert!(check_range(512, 512, 1024).is_ok());
        assert!(check_range(0, 0, 0).is_ok());
        assert!(check_range(512, 1024, 1024).is_err());
        assert!(check_range(1, 512, 4096).is_err());
        assert!(check_range(0, 100, 4096).is_err());
        assert!(check_range(u64::MAX - 511, 512, u64::MAX).is_err());
        assert!(matches!(
            check_write(true, 0, 512, 1024),
            Err(StoreError::ReadOnly)
        ));
    }
}
