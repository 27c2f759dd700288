//! virtio-blk backed by a local file or block device.
//!
//! Offers VERSION_1, FLUSH, SEG_MAX, BLK_SIZE, RO (when read-only),
//! INDIRECT_DESC and EVENT_IDX. On activation a worker thread serves the single
//! request queue; reset or drop stops and joins it.

pub mod disk;
pub mod request;
pub mod worker;

use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_queue::QueueT;

pub use disk::{Disk, DiskError, ID_BYTES, SECTOR_SIZE};
use worker::{QueueWorker, WorkerHandle};

use super::{
    feature, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most data segments one request may have (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The logical block size reported to the guest.
pub const BLK_SIZE: u32 = SECTOR_SIZE as u32;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing disk could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Disk>,
    avail_features: u64,
    config: [u8; 24],
    queue_sizes: [u16; 1],
    worker: Option<WorkerHandle>,
}

impl Block {
    /// Opens the disk at `path` (read-only if `read_only`); `id` is the serial the
    /// guest sees (at most 20 bytes are used).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        Ok(Self::with_disk(Disk::open(path, read_only, id)?))
    }

    /// Creates the device over an already opened disk.
    pub fn with_disk(disk: Disk) -> Self {
        let mut avail_features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE);
        if disk.read_only() {
            avail_features |= feature(VIRTIO_BLK_F_RO);
        }
        // struct virtio_blk_config: capacity (0), size_max (8), seg_max (12),
        // geometry (16), blk_size (20).
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&BLK_SIZE.to_le_bytes());
        Self {
            disk: Arc::new(disk),
            avail_features,
            config,
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        }
    }

    /// The disk capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Whether a worker thread is serving the queue.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-blk: ignoring a {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = ctx.queues.len();
        let (Some(queue), Some(queue_event)) = (
            ctx.queues.into_iter().next(),
            ctx.queue_events.into_iter().next(),
        ) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        if got != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got });
        }
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        let worker = QueueWorker::new(queue, ctx.mem, self.disk.clone(), ctx.interrupt);
        let handle = worker
            .spawn(queue_event)
            .map_err(|source| ActivateError::Io {
                what: "start the virtio-blk worker",
                source,
            })?;
        self.worker = Some(handle);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests;
