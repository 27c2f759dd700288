//! virtio-blk: the one request core that legovmm's in-process disk and the `lego-vhost-blk`
//! backend share, and the in-process device built on it.
//!
//! * [`request`]: descriptor chains to store operations to status bytes, in batches.
//! * [`store`]: what a disk is backed by ([`store::BlockStore`]) and the local file store.
//! * [`config`]: the feature bits and config space a device offers.
//! * [`Block`] and its [`worker`]: the in-process device. It offers VERSION_1, FLUSH, SEG_MAX,
//!   BLK_SIZE, RO (when read-only), INDIRECT_DESC and EVENT_IDX over a local file; on
//!   activation a worker thread serves the single request queue; reset or drop stops and
//!   joins it.

pub mod config;
pub mod request;
pub mod store;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;
use virtio_queue::QueueT;

use super::worker_thread::WorkerThread;
pub use config::{DeviceConfig, CONFIG_LEN};
pub use request::RequestHandler;
use store::file::{FileStore, FileStoreError, FileStoreOptions};
use store::BlockStore;
pub use store::SECTOR_SIZE;
use worker::QueueWorker;

use super::{feature, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK};

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most data segments one request may have (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("could not open the disk {}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is smaller than one sector.
    #[error("the disk {} holds {len} bytes, less than one 512-byte sector", path.display())]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The backing file is unusable as a disk.
    #[error(transparent)]
    Store(#[from] FileStoreError),
}

/// Opens the file at `path` as a disk (read-only if `read_only`) whose GET_ID answer is `id`
/// (the guest sees its first 20 bytes as the disk's serial).
pub fn open_disk(path: &Path, read_only: bool, id: &str) -> Result<FileStore, BlockError> {
    let opts = FileStoreOptions {
        path: path.to_owned(),
        read_only,
        size: None,
    };
    match FileStore::open(&opts) {
        Ok(store) => Ok(store.with_serial(id)),
        Err(FileStoreError::Open { path, source }) => Err(BlockError::Open { path, source }),
        Err(FileStoreError::TooSmall { path, len }) => Err(BlockError::TooSmall { path, len }),
        Err(e) => Err(e.into()),
    }
}

/// The in-process virtio-blk device.
pub struct Block {
    handler: Arc<RequestHandler>,
    config: DeviceConfig,
    space: [u8; CONFIG_LEN],
    avail_features: u64,
    queue_sizes: [u16; 1],
    worker: Option<WorkerThread>,
}

impl Block {
    /// Opens the disk at `path` (read-only if `read_only`); `id` is the serial the
    /// guest sees (at most 20 bytes are used).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        Ok(Self::with_store(Arc::new(open_disk(path, read_only, id)?)))
    }

    /// Creates the device over an opened store. It has one queue and offers neither
    /// DISCARD nor WRITE_ZEROES.
    pub fn with_store(store: Arc<dyn BlockStore>) -> Self {
        let config = DeviceConfig {
            discard: false,
            write_zeroes: false,
            ..DeviceConfig::for_store(store.as_ref(), 1, QUEUE_SIZE)
        };
        Self {
            handler: Arc::new(RequestHandler::without_discard(store)),
            space: config.space(),
            // One queue: no MQ.
            avail_features: config.features() & !feature(VIRTIO_BLK_F_MQ),
            config,
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        }
    }

    /// The disk capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.config.capacity / SECTOR_SIZE
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.config.read_only
    }

    /// The device's request counters (they keep counting once the device is attached).
    pub fn counters(&self) -> Arc<request::counters::BlockCounters> {
        self.handler.counters()
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
        read_config_bytes(&self.space, offset, data);
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
        let worker = QueueWorker::new(queue, ctx.mem, self.handler.clone(), ctx.interrupt);
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
