//! The virtio-mmio transport, version 2 (modern devices only).
//!
//! One [`MmioTransport`] occupies [`MMIO_LEN`] bytes of the MMIO bus: 32-bit
//! registers below [`CONFIG_OFFSET`] and the device's configuration space from
//! there. It negotiates features, collects the driver's queue configuration and,
//! on DRIVER_OK, validates the queues against guest memory and hands them to the
//! [`VirtioDevice`]. Anything invalid the guest does sets DEVICE_NEEDS_RESET or is
//! ignored; nothing the guest writes can panic the VMM.
//!
//! The VMM registers [`MmioTransport::queue_events`] as KVM ioeventfds at
//! `base + NOTIFY_OFFSET` (datamatch = queue index) and
//! [`MmioTransport::interrupt_event`] as an irqfd. A QueueNotify write that still
//! reaches the transport signals the same eventfd.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rings::{RingAddrs, RingRegistry};
use super::{
    feature, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;
use crate::rate_limit::RateLimiter;

/// The size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// The magic value ("virt" in little endian).
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version (2: modern).
pub const VERSION: u32 = 2;
/// The vendor id reported to the guest ("LEGO").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"LEGO");
/// The offset of the QueueNotify register (the ioeventfd address is `base + NOTIFY_OFFSET`).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// The offset where device configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Register offsets of the virtio-mmio version 2 layout.
pub mod reg {
    /// Magic value (R).
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// Device id (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits of the page selected by DEVICE_FEATURES_SEL (R).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features page selector (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits of the page selected by DRIVER_FEATURES_SEL (W).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features page selector (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue, 0 if it does not exist (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// Ready bit of the selected queue (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification (W); the value is the queue index.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status (RW).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Driver (available) ring address, low 32 bits (W).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Driver (available) ring address, high 32 bits (W).
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Device (used) ring address, low 32 bits (W).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Device (used) ring address, high 32 bits (W).
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared memory region selector (W).
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory region length, low 32 bits (R).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region length, high 32 bits (R).
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory region base, low 32 bits (R).
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory region base, high 32 bits (R).
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Configuration generation (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors of the virtio-mmio transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device declared an unusable maximum queue size.
    #[error("queue {index} has maximum size {size}, which is not a power of two up to 32768")]
    InvalidMaxQueueSize {
        /// The queue index.
        index: usize,
        /// The declared maximum size.
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, which this transport requires.
    #[error("the device does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// An eventfd could not be created or duplicated.
    #[error("could not set up an eventfd")]
    EventFd(#[source] io::Error),
    /// The driver configured a queue the device cannot use.
    #[error("queue {index} is misconfigured by the driver")]
    QueueConfig {
        /// The queue index.
        index: usize,
        /// What was wrong.
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver's queue lies outside guest memory.
    #[error("queue {index} (size {size}, desc {desc:#x}, driver {driver:#x}, device {device:#x}) is not inside guest memory")]
    QueueOutsideMemory {
        /// The queue index.
        index: usize,
        /// The queue size.
        size: u16,
        /// Descriptor table address.
        desc: u64,
        /// Driver ring address.
        driver: u64,
        /// Device ring address.
        device: u64,
    },
    /// The driver set DRIVER_OK without completing feature negotiation.
    #[error("the driver set DRIVER_OK without FEATURES_OK")]
    DriverOkWithoutFeatures,
    /// The device refused to activate.
    #[error("the device could not start")]
    Activate(#[from] ActivateError),
}

/// The driver's configuration of one queue.
#[derive(Debug, Clone)]
struct QueueConfig {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }
}

/// Replaces the low or high half of `value`.
fn set_half(value: &mut u64, data: u32, high: bool) {
    if high {
        *value = (*value & 0xffff_ffff) | (u64::from(data) << 32);
    } else {
        *value = (*value & !0xffff_ffff) | u64::from(data);
    }
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap<()>,
    queues: Vec<QueueConfig>,
    queue_events: Vec<EventFd>,
    interrupt: VirtioInterrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    active: bool,
    log: RateLimiter,
    /// Where the live queues are recorded for the pager (see [`RingRegistry`]).
    rings: Option<(RingRegistry, usize)>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`, whose queues will live in `mem`.
    pub fn new(device: D, mem: GuestMemoryMmap<()>) -> Result<Self, MmioError> {
        if device.avail_features() & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NotModern);
        }
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(MmioError::InvalidMaxQueueSize { index, size });
            }
            queues.push(QueueConfig::new(size));
            queue_events.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            queues,
            queue_events,
            interrupt: VirtioInterrupt::new().map_err(MmioError::EventFd)?,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            active: false,
            log: RateLimiter::default(),
            rings: None,
        })
    }

    /// Records the device's live queues in `registry` from now on (set on DRIVER_OK, cleared
    /// on reset), so that guest RAM the device may touch is never paged out under it.
    pub fn with_ring_registry(mut self, registry: &RingRegistry) -> Self {
        self.rings = Some((registry.clone(), registry.slot()));
        self
    }

    /// The per-queue notification eventfds, in queue order: register each as a KVM
    /// ioeventfd at `base + NOTIFY_OFFSET` with datamatch = its index (4 bytes).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt eventfd: register it as a KVM irqfd on the device's GSI.
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    /// The device's interrupt (status word and eventfd).
    pub fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    /// The wrapped device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The wrapped device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status as the driver last set it (plus DEVICE_NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving its queues.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Tells the driver that the configuration space changed: bumps the
    /// configuration generation and raises a configuration-change interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::warn!("could not raise the config-change interrupt: {e}");
        }
    }

    fn warn(&mut self, msg: String) {
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(
                "virtio-mmio (type {}): {msg} ({suppressed} similar messages suppressed)",
                self.device.device_type()
            );
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        let sel = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(sel)
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.warn(format!("read of unknown register {offset:#x}"));
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => self.shm_sel = value,
            _ => self.warn(format!(
                "write of {value:#x} to register {offset:#x} ignored"
            )),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            self.warn(format!(
                "driver features written in status {:#x}, ignored",
                self.status
            ));
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.acked_features, value, false),
            1 => set_half(&mut self.acked_features, value, true),
            sel if value != 0 => {
                self.warn(format!("driver features page {sel} does not exist"));
            }
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        // Linux deactivates each queue (QueueReady = 0) after resetting the device;
        // that is harmless whenever the device is not serving the queues.
        if offset == reg::QUEUE_READY && value == 0 && !self.active {
            if let Some(q) = self.selected_queue() {
                q.ready = false;
            }
            return;
        }
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            self.warn(format!(
                "queue register {offset:#x} written in status {:#x}, ignored",
                self.status
            ));
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue() else {
            self.warn(format!(
                "queue register {offset:#x} written for missing queue {sel}"
            ));
            return;
        };
        match offset {
            reg::QUEUE_READY => q.ready = value == 1,
            _ if q.ready => {
                self.warn(format!("queue {sel} reconfigured while ready, ignored"));
            }
            reg::QUEUE_NUM => q.size = value,
            reg::QUEUE_DESC_LOW => set_half(&mut q.desc, value, false),
            reg::QUEUE_DESC_HIGH => set_half(&mut q.desc, value, true),
            reg::QUEUE_DRIVER_LOW => set_half(&mut q.driver, value, false),
            reg::QUEUE_DRIVER_HIGH => set_half(&mut q.driver, value, true),
            reg::QUEUE_DEVICE_LOW => set_half(&mut q.device, value, false),
            _ => set_half(&mut q.device, value, true),
        }
    }

    fn notify(&mut self, value: u32) {
        let Some(event) = usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_events.get(i))
        else {
            self.warn(format!("notification for missing queue {value}"));
            return;
        };
        if let Err(e) = event.write(1) {
            tracing::warn!("could not signal the queue {value} eventfd: {e}");
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            self.warn(format!(
                "driver tried to clear status bits ({old:#x} -> {value:#x}), ignored"
            ));
            return;
        }
        let mut value = value;
        let new_bits = value & !old;
        if new_bits & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            self.warn(format!(
                "driver accepted features {:#x} outside the offered {:#x} or without VERSION_1",
                self.acked_features,
                self.device.avail_features()
            ));
            value &= !STATUS_FEATURES_OK;
        }
        self.status = value;
        if new_bits & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                tracing::error!(
                    "virtio-mmio (type {}): {}; the device needs a reset",
                    self.device.device_type(),
                    lego_report::error_chain(&e)
                );
                self.status |= STATUS_DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.signal_config_change() {
                    tracing::warn!("could not raise the config-change interrupt: {e}");
                }
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let acked = self.acked_features;
        acked & !self.device.avail_features() == 0 && acked & feature(VIRTIO_F_VERSION_1) != 0
    }

    fn build_queue(&self, index: usize, cfg: &QueueConfig) -> Result<Queue, MmioError> {
        let config_err = |source| MmioError::QueueConfig { index, source };
        let mut queue = Queue::new(cfg.max_size).map_err(config_err)?;
        if !cfg.ready {
            return Ok(queue);
        }
        let size =
            u16::try_from(cfg.size).map_err(|_| config_err(virtio_queue::Error::InvalidSize))?;
        queue.try_set_size(size).map_err(config_err)?;
        queue
            .try_set_desc_table_address(vm_memory::GuestAddress(cfg.desc))
            .map_err(config_err)?;
        queue
            .try_set_avail_ring_address(vm_memory::GuestAddress(cfg.driver))
            .map_err(config_err)?;
        queue
            .try_set_used_ring_address(vm_memory::GuestAddress(cfg.device))
            .map_err(config_err)?;
        queue.set_event_idx(self.acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return Err(MmioError::QueueOutsideMemory {
                index,
                size,
                desc: cfg.desc,
                driver: cfg.driver,
                device: cfg.device,
            });
        }
        Ok(queue)
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        if self.status & STATUS_FEATURES_OK == 0 {
            return Err(MmioError::DriverOkWithoutFeatures);
        }
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, cfg)| self.build_queue(index, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::EventFd)?;
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        })?;
        self.active = true;
        if let Some((registry, slot)) = &self.rings {
            let live = self
                .queues
                .iter()
                .filter(|q| q.ready)
                .map(|q| RingAddrs {
                    desc: q.desc,
                    avail: q.driver,
                    used: q.device,
                    size: q.size as u16,
                })
                .collect();
            registry.set(*slot, live);
        }
        Ok(())
    }

    /// Resets the device and the transport to their initial state (status 0).
    pub fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        if let Some((registry, slot)) = &self.rings {
            registry.set(*slot, Vec::new());
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.clear();
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            self.warn(format!(
                "{}-byte read at register offset {offset:#x} ignored",
                data.len()
            ));
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.warn(format!(
                "{}-byte write at register offset {offset:#x} ignored",
                data.len()
            ));
            return;
        };
        if !offset.is_multiple_of(4) {
            self.warn(format!("unaligned register write at {offset:#x} ignored"));
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
