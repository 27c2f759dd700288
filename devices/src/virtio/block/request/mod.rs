//! Serving virtio-blk requests, for legovmm's in-process disk and the `lego-vhost-blk` backend
//! alike: parse each descriptor chain (header, data, status byte) (`parse`), run the batch
//! against the [`BlockStore`] with its reads and writes in flight together ([`run`]), then
//! write each status and say how many bytes the device wrote for the used ring.
//!
//! Nothing a guest puts in a chain can panic or stall the device: a chain that cannot be read
//! is completed with `VIRTIO_BLK_S_IOERR` when it has a status byte (the last byte of a
//! device-writable last descriptor, inside guest memory), and with no bytes written when it has
//! none; such problems are logged at most once a second.

pub mod counters;
mod parse;
pub mod run;

use std::sync::Arc;
use std::time::Instant;

use lego_report::error_chain;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};

use crate::rate_limit::RateLimiter;
use crate::virtio::block::store::{BlockStore, StoreError, SECTOR_SIZE};
use counters::BlockCounters;
use parse::Parsed;

/// The completion of a chain with no status byte: nothing written.
const EMPTY: Completion = Completion {
    used_len: 0,
    status: None,
};

/// Bytes moved between the guest and the store per store operation of a large read or write.
pub const CHUNK: usize = 1 << 20;
/// Segments accepted in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Sectors accepted in one DISCARD or WRITE_ZEROES segment (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Size of the request header (type u32, reserved u32, sector u64).
const HEADER_LEN: usize = 16;
/// Size of one DISCARD / WRITE_ZEROES segment (sector u64, sectors u32, flags u32).
const SEGMENT_LEN: usize = 16;
/// The WRITE_ZEROES segment flag allowing deallocation.
const FLAG_UNMAP: u32 = 1;

/// Why a request failed; every variant becomes a status for the guest (see
/// [`RequestError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The device-readable part of the chain is shorter than the request header.
    #[error("the request header needs 16 bytes but the chain has {0} readable")]
    ShortHeader(usize),
    /// A device-readable descriptor follows a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    Directions,
    /// The writable descriptors could not be mapped.
    #[error("the writable descriptors are malformed")]
    Writable(#[source] virtio_queue::Error),
    /// The readable descriptors could not be mapped.
    #[error("the readable descriptors are malformed")]
    Readable(#[source] virtio_queue::Error),
    /// A data length is not a whole number of sectors.
    #[error("a data length of {0} bytes is not a whole number of 512-byte sectors")]
    Misaligned(u64),
    /// The sector lies past any possible device.
    #[error("sector {0} is out of range")]
    SectorOverflow(u64),
    /// DISCARD / WRITE_ZEROES segments are malformed.
    #[error("the discard or write-zeroes segments are malformed: {0}")]
    Segments(String),
    /// Copying between guest memory and the device failed.
    #[error("copying guest memory failed")]
    GuestMemory(#[source] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request type (or a flag in it) is not supported.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The virtio-blk status reported to the guest.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::Store(StoreError::Unsupported(_)) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// Whether the guest sent something malformed (as opposed to a store failure).
    fn is_guest_fault(&self) -> bool {
        !matches!(self, RequestError::Store(_) | RequestError::Unsupported(_))
    }
}

/// What serving a chain produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes the device wrote into the chain (data plus the status byte): the used length.
    pub used_len: u32,
    /// The status written, or `None` when the chain had nowhere to put one.
    pub status: Option<u8>,
}

/// Serves virtio-blk requests from one store; shared by all queues.
pub struct RequestHandler {
    store: Arc<dyn BlockStore>,
    discard: bool,
    counters: Arc<BlockCounters>,
    guest_faults: RateLimiter,
    store_faults: RateLimiter,
}

impl RequestHandler {
    /// A handler for `store`, serving DISCARD and WRITE_ZEROES when the store supports them.
    pub fn new(store: Arc<dyn BlockStore>) -> Self {
        Self {
            store,
            discard: true,
            counters: Arc::default(),
            guest_faults: RateLimiter::default(),
            store_faults: RateLimiter::default(),
        }
    }

    /// A handler for a device that does not offer DISCARD and WRITE_ZEROES: it answers them
    /// `VIRTIO_BLK_S_UNSUPP` whatever the store supports.
    pub fn without_discard(store: Arc<dyn BlockStore>) -> Self {
        Self {
            discard: false,
            ..Self::new(store)
        }
    }

    /// What this handler has served (requests, bytes, errors, batch latency).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// The store served.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Whether DISCARD and WRITE_ZEROES reach the store (if it supports them).
    fn serves_discard(&self) -> bool {
        self.discard
    }

    /// Serves one chain whose buffers live in `mem`.
    pub fn process<T>(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<T>) -> Completion
    where
        T: std::ops::Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        self.process_batch(mem, vec![chain])
            .pop()
            .map_or(EMPTY, |(_, c)| c)
    }

    /// Serves `chains` (in the order the driver made them available) with their store
    /// operations in flight together: each chain is parsed, the reads and writes are
    /// submitted, then each completes. Returns every chain's head index and completion, in
    /// the same order.
    pub fn process_batch<T>(
        &self,
        mem: &GuestMemoryMmap,
        chains: Vec<DescriptorChain<T>>,
    ) -> Vec<(u16, Completion)>
    where
        T: std::ops::Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let start = Instant::now();
        let mut reqs: Vec<Parsed<'_>> = chains
            .into_iter()
            .map(|chain| parse::parse(self, mem, chain))
            .collect();
        run::run(self.store.as_ref(), &mut reqs);
        let done = reqs
            .into_iter()
            .map(|r| (r.head, self.complete(mem, r)))
            .collect();
        self.counters.batch(start.elapsed());
        done
    }

    /// Writes a finished request's status byte and says what the device wrote.
    fn complete(&self, mem: &GuestMemoryMmap, req: Parsed<'_>) -> Completion {
        let head = req.head;
        self.counters.request(
            req.data.as_ref().map_or(0, |w| w.bytes_written()),
            req.reader
                .as_ref()
                .map_or(0, |r| r.bytes_read().saturating_sub(HEADER_LEN)),
            req.error.is_some(),
        );
        let Some(status_addr) = req.status else {
            return EMPTY;
        };
        let data_len = req.data.as_ref().map_or(0, |w| w.bytes_written());
        let status = match &req.error {
            None => VIRTIO_BLK_S_OK as u8,
            Some(e) => {
                if e.is_guest_fault() {
                    self.guest_fault(head, &error_chain(e));
                } else {
                    self.store_fault(head, e);
                }
                // Whatever reached the guest before the failure still counts as written.
                e.status()
            }
        };
        if let Err(e) = mem.write_obj(status, status_addr) {
            self.guest_fault(head, &format!("the status byte cannot be written: {e}"));
            return Completion {
                used_len: u32::try_from(data_len).unwrap_or(u32::MAX),
                status: None,
            };
        }
        Completion {
            used_len: u32::try_from(data_len.saturating_add(1)).unwrap_or(u32::MAX),
            status: Some(status),
        }
    }

    pub(crate) fn guest_fault(&self, head: u16, what: &str) {
        if let Some(suppressed) = self.guest_faults.admit() {
            tracing::warn!(head, suppressed, "malformed request from the guest: {what}");
        }
    }

    fn store_fault(&self, head: u16, e: &RequestError) {
        if let Some(suppressed) = self.store_faults.admit() {
            tracing::warn!(head, suppressed, "request failed: {}", error_chain(e));
        }
    }
}

/// The byte offset of `sector`, checking that `len` is whole sectors.
fn byte_range(sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Misaligned(len));
    }
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::SectorOverflow(sector))
}

fn check_inside(offset: u64, len: u64, capacity: u64) -> Result<(), RequestError> {
    crate::virtio::block::store::check_range(offset, len, capacity).map_err(RequestError::Store)
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;
