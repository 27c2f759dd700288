//! The interrupt a virtio device raises: an interrupt-status word the transport
//! exposes to the driver, plus an eventfd registered as a KVM irqfd.
//!
//! A backend outside legovmm's own threads (a `lego-vhost-blk` process, the kernel's
//! vhost-net) signals a *call* eventfd after it used buffers. [`CallPath`] says what that
//! eventfd is: by default the irqfd itself ([`VirtioInterrupt::direct_call`]), so KVM
//! injects the interrupt with no thread of legovmm woken; virtio-mmio's InterruptStatus,
//! which nobody sets then, reports the used-ring bit on every read while the device runs.
//! Linux's virtio-mmio driver reads that bit as "look at the used rings": a look that finds
//! nothing new (an interrupt for buffers an earlier one already reaped) costs the guest one
//! check per queue and returns `IRQ_NONE`, and Linux gives up on an interrupt line only when
//! 99,900 of 100,000 interrupts are unhandled. The alternative, [`CallPath::Relayed`], is a
//! relay thread that reads the call eventfd, sets the bit, and raises the irqfd: one more
//! thread wake-up per interrupt (kept to measure the difference).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1 << 0;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 1 << 1;

/// How a backend outside legovmm's threads raises a device's used-ring interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallPath {
    /// The backend's call eventfd is the device's irqfd (no relay thread).
    #[default]
    Direct,
    /// A relay thread turns each call into the interrupt, setting InterruptStatus first.
    Relayed,
}

impl CallPath {
    /// The environment variable that picks the relay (`relay`) for measurements.
    pub const ENV: &'static str = "LEGOVMM_VHOST_INTERRUPTS";

    /// [`CallPath::Relayed`] when `LEGOVMM_VHOST_INTERRUPTS=relay`, else [`CallPath::Direct`].
    pub fn from_env() -> Self {
        Self::named(std::env::var(Self::ENV).ok().as_deref())
    }

    /// [`CallPath::Relayed`] for `relay`, else [`CallPath::Direct`].
    fn named(name: Option<&str>) -> Self {
        match name {
            Some("relay") => Self::Relayed,
            _ => Self::Direct,
        }
    }
}

/// A clonable handle that raises a virtio device's interrupt.
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    event: Arc<EventFd>,
    /// Set while a backend signals the irqfd directly: the used-ring bit always reads set.
    direct: Arc<AtomicBool>,
}

impl VirtioInterrupt {
    /// Creates an interrupt with its own non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            direct: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A call eventfd for a backend that raises this interrupt itself: the irqfd KVM
    /// listens on. From now until [`VirtioInterrupt::clear`] (device reset) the status
    /// reports the used-ring bit on every read (see the module's documentation).
    pub fn direct_call(&self) -> io::Result<EventFd> {
        self.direct.store(true, Ordering::SeqCst);
        self.event.try_clone()
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

    /// The pending InterruptStatus bits (the used-ring bit always, while a backend
    /// signals the irqfd directly).
    pub fn status(&self) -> u32 {
        let direct = if self.direct.load(Ordering::SeqCst) {
            INT_USED_RING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | direct
    }

    /// Clears the InterruptStatus bits in `bits` (the driver's InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all pending bits and ends direct calls (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.direct.store(false, Ordering::SeqCst);
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

    #[test]
    fn a_direct_call_is_the_irqfd_and_reports_the_used_ring_until_reset() {
        let irq = VirtioInterrupt::new().unwrap();
        assert_eq!(irq.status(), 0);
        let call = irq.direct_call().unwrap();
        // The backend's signal is KVM's: the same eventfd counter.
        call.write(1).unwrap();
        assert_eq!(irq.event().read().unwrap(), 1);
        assert_eq!(irq.status(), INT_USED_RING);
        // The driver's ack cannot clear it; a config change still shows and acks.
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_USED_RING);
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        irq.ack(INT_CONFIG_CHANGE);
        assert_eq!(irq.status(), INT_USED_RING);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn the_relay_is_chosen_only_by_name() {
        assert_eq!(CallPath::named(Some("relay")), CallPath::Relayed);
        assert_eq!(CallPath::named(Some("direct")), CallPath::Direct);
        assert_eq!(CallPath::named(Some("")), CallPath::Direct);
        assert_eq!(CallPath::named(None), CallPath::Direct);
    }
}
