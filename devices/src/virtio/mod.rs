//! Virtio devices: the device-side contract ([`VirtioDevice`]), the interrupt a
//! device raises ([`VirtioInterrupt`]), the virtio-mmio transport and the devices.
//!
//! The transport owns the guest-facing registers and queue configuration; on
//! DRIVER_OK it hands the configured queues, their notification eventfds and the
//! interrupt to the device in an [`ActivateContext`]. Whoever serves the queues (a
//! worker thread here, a vhost-user backend later) takes them from there.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rings;
pub mod worker_thread;

use std::io;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{CallPath, VirtioInterrupt};

/// Feature bit: the device conforms to virtio 1.0 or later (modern interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/available event indexes suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
/// Device status bit: the guest has a driver for the device.
pub const STATUS_DRIVER: u32 = 0x02;
/// Device status bit: the driver is set up and the device is live.
pub const STATUS_DRIVER_OK: u32 = 0x04;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 0x08;
/// Device status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// Returns the mask of feature bit `bit`.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type of a network device.
pub const TYPE_NET: u32 = 1;

/// Why a worker leaves a queue until its next kick after a pass over it.
#[derive(Debug, thiserror::Error)]
pub enum RearmError {
    /// Chains were announced after a pass that found none: the driver's index is wrong.
    #[error("the available ring index is invalid")]
    InvalidAvailIndex,
    /// Notifications could not be turned back on.
    #[error("could not re-enable notifications: {0}")]
    Enable(virtio_queue::Error),
}

/// Turns `queue`'s notifications back on after a pass that popped `popped` chains: `Ok(true)`
/// when chains came meanwhile (serve again), `Ok(false)` when the worker may sleep until the
/// next kick. A ring that announces chains after a pass that popped none has an invalid
/// index; the worker sleeps rather than spin on it.
pub fn rearm<M: vm_memory::GuestMemory>(
    queue: &mut virtio_queue::Queue,
    mem: &M,
    popped: usize,
) -> Result<bool, RearmError> {
    use virtio_queue::QueueT;
    match queue.enable_notification(mem) {
        Ok(true) if popped > 0 => Ok(true),
        Ok(true) => Err(RearmError::InvalidAvailIndex),
        Ok(false) => Ok(false),
        Err(e) => Err(RearmError::Enable(e)),
    }
}

/// Errors a device reports when it cannot start serving its queues.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not provide a queue the device needs.
    #[error("queue {0} is needed but the driver did not make it ready")]
    QueueNotReady(usize),
    /// The context had a different number of queues than the device has.
    #[error("the device has {expected} queues but activation provided {got}")]
    QueueCount {
        /// The device's queue count.
        expected: usize,
        /// The number of queues provided.
        got: usize,
    },
    /// The device is already active.
    #[error("the device is already active")]
    AlreadyActive,
    /// A system resource (eventfd, epoll, file, thread) could not be set up.
    #[error("could not {what}")]
    Io {
        /// What the device was doing.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Everything a device needs to start serving its queues.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap<()>,
    /// The queues in index order, configured by the driver. A queue the driver did
    /// not set up is present with `ready() == false`.
    pub queues: Vec<virtio_queue::Queue>,
    /// One eventfd per queue, signalled when the guest notifies that queue (through
    /// a KVM ioeventfd or a trapped QueueNotify write).
    pub queue_events: Vec<EventFd>,
    /// The interrupt to raise after adding buffers to a used ring.
    pub interrupt: VirtioInterrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// The device side of a virtio device, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32;
    /// The features the device offers (must include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// The maximum size of each queue; its length is the number of queues. Each size
    /// must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset`; bytes beyond it read as zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles a driver write to configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues in `ctx`.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving the queues and returns to the pre-activation state. Must be
    /// safe to call when not active.
    fn reset(&mut self);
}

impl<T: VirtioDevice + ?Sized> VirtioDevice for Box<T> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn avail_features(&self) -> u64 {
        (**self).avail_features()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        (**self).activate(ctx)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// Copies the part of `config` at `offset` into `data`, zero-filling what lies beyond.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
