//! The interrupt a virtio device raises: an interrupt-status word the transport
//! exposes to the driver, plus an eventfd registered as a KVM irqfd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1 << 0;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 1 << 1;

/// A clonable handle that raises a virtio device's interrupt.
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    event: Arc<EventFd>,
}

impl VirtioInterrupt {
    /// Creates an interrupt with its own non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Reports that buffers were added to a used ring and raises the interrupt.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    /// Reports a configuration change and raises the interrupt.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(INT_CONFIG_CHANGE)
    }

    fn raise(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.event.write(1)
    }

    /// The pending InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the InterruptStatus bits in `bits` (the driver's InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all pending bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd to register as a KVM irqfd.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_and_acks_bits() {
        let irq = VirtioInterrupt::new().unwrap();
        irq.clone().signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        assert_eq!(irq.event().read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
