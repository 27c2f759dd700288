//! A hotplug slot on the MMIO bus: a virtio-mmio window that holds a device or nothing.
//! Empty, it reads as zeros (no virtio magic), so a guest that looks finds no device. It
//! watches the guest reset its device (status 0): after an eject request, that is the guest
//! letting go (its driver unbound).

use super::registers::SlotBits;
use lego_devices::bus::{BusDevice, SharedDevice};
use lego_devices::virtio::mmio::reg;
use std::sync::Arc;

/// One slot's window.
pub struct Slot {
    index: usize,
    bits: Arc<SlotBits>,
    device: Option<SharedDevice>,
}

impl Slot {
    /// The empty slot number `index`, reporting resets to `bits`.
    pub fn new(index: usize, bits: Arc<SlotBits>) -> Self {
        Self {
            index,
            bits,
            device: None,
        }
    }

    /// Puts `device` in the slot.
    pub fn fill(&mut self, device: SharedDevice) {
        self.device = Some(device);
    }

    /// Takes the device out.
    pub fn empty(&mut self) -> Option<SharedDevice> {
        self.device.take()
    }

    /// Whether the slot holds a device.
    pub fn is_filled(&self) -> bool {
        self.device.is_some()
    }
}

impl BusDevice for Slot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match &self.device {
            Some(d) => d
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read(offset, data),
            None => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(d) = &self.device else {
            return;
        };
        d.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(offset, data);
        if offset == reg::STATUS && data.iter().all(|&b| b == 0) {
            self.bits.device_reset(self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn an_empty_slot_reads_zeros_and_a_filled_one_forwards_and_reports_a_reset() {
        let bits = Arc::new(SlotBits::default());
        let mut s = Slot::new(2, bits.clone());
        let mut b = [0xffu8; 4];
        s.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        s.write(0, &[7]);
        s.fill(Arc::new(Mutex::new(Reg(5))));
        bits.set_present(2);
        s.read(0, &mut b);
        assert_eq!(b, [5; 4]);
        s.write(0, &[9]);
        s.read(0, &mut b);
        assert_eq!(b, [9; 4]);
        bits.request_eject(2);
        s.write(reg::STATUS, &[0, 0, 0, 0]);
        assert!(bits.wait_released(2, Duration::ZERO));
        assert!(s.empty().is_some());
        assert!(!s.is_filled());
        s.read(0, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
