//! The hotplug controller's registers, which the DSDT's AML reads (see
//! [`crate::acpi::HotplugAml`]): which slots are present, and which the VMM asks the guest to
//! let go of, and whether the power button was pressed. Whether the guest has let go is seen on the slot itself ([`super::slot`]).

use crate::acpi::hotplug_regs::{EJECT_REQUEST, EVENTS, POWER_BUTTON, PRESENT};
use lego_devices::bus::BusDevice;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The slots' bits, shared by the register device and the slots (vCPU threads) and the API
/// thread.
#[derive(Debug, Default)]
pub struct SlotBits {
    bits: Mutex<Bits>,
    released: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bits {
    /// Slots holding a device (the guest's `_STA`).
    present: u32,
    /// Eject requests the guest's `_EVT` has not read yet.
    eject_request: u32,
    /// Slots whose device the VMM waits for the guest to let go of.
    awaiting: u32,
    /// Slots whose device the guest let go of, not yet taken out.
    released: u32,
    /// Platform events the guest's `_EVT` has not read yet (the power button).
    events: u32,
}

impl SlotBits {
    fn lock(&self) -> MutexGuard<'_, Bits> {
        self.bits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks slot `n` present (a device was put in it).
    pub fn set_present(&self, n: usize) {
        let mut b = self.lock();
        b.present |= 1 << n;
        b.released &= !(1 << n);
        b.awaiting &= !(1 << n);
    }

    /// Asks the guest to let go of slot `n` (the GED interrupt must follow).
    pub fn request_eject(&self, n: usize) {
        let mut b = self.lock();
        b.eject_request |= 1 << n;
        b.awaiting |= 1 << n;
    }

    /// The guest reset the device in slot `n`: if the VMM asked for it back, the guest has
    /// let go of it (its driver unbound). A reset nobody asked for (a driver probing) is not.
    pub fn device_reset(&self, n: usize) {
        let mut b = self.lock();
        if b.awaiting & (1 << n) != 0 {
            b.awaiting &= !(1 << n);
            b.present &= !(1 << n);
            b.released |= 1 << n;
            self.released.notify_all();
        }
    }

    /// Waits up to `patience` for the guest to let go of slot `n`; true if it did.
    pub fn wait_released(&self, n: usize, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let mut b = self.lock();
        while b.released & (1 << n) == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            b = self
                .released
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Presses the power button (the GED interrupt must follow).
    pub fn press_power_button(&self) {
        self.lock().events |= POWER_BUTTON;
    }

    /// The slots the guest let go of that still hold a device, cleared as they are taken.
    pub fn take_released(&self) -> u32 {
        std::mem::take(&mut self.lock().released)
    }
}

/// The register block on the MMIO bus.
pub struct HotplugRegisters {
    bits: Arc<SlotBits>,
}

impl HotplugRegisters {
    /// Registers over `bits`.
    pub fn new(bits: Arc<SlotBits>) -> Self {
        Self { bits }
    }
}

impl BusDevice for HotplugRegisters {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            PRESENT => self.bits.lock().present,
            EJECT_REQUEST => std::mem::take(&mut self.bits.lock().eject_request),
            EVENTS => std::mem::take(&mut self.bits.lock().events),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &mut HotplugRegisters, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        r.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_guest_sees_present_slots_takes_requests_once_and_lets_go_by_a_reset() {
        let bits = Arc::new(SlotBits::default());
        let mut r = HotplugRegisters::new(bits.clone());
        bits.set_present(1);
        bits.set_present(3);
        assert_eq!(read(&mut r, PRESENT), 0b1010);
        // A reset nobody asked for (the driver probing the device) lets nothing go.
        bits.device_reset(3);
        assert_eq!(read(&mut r, PRESENT), 0b1010);
        bits.request_eject(3);
        assert_eq!(read(&mut r, EJECT_REQUEST), 0b1000);
        assert_eq!(read(&mut r, EJECT_REQUEST), 0, "read-to-clear");
        assert!(!bits.wait_released(3, Duration::from_millis(10)));
        let waiter = {
            let bits = bits.clone();
            std::thread::spawn(move || bits.wait_released(3, Duration::from_secs(10)))
        };
        bits.device_reset(3);
        assert!(waiter.join().unwrap());
        assert_eq!(read(&mut r, PRESENT), 0b0010);
        assert_eq!(bits.take_released(), 0b1000);
        assert_eq!(bits.take_released(), 0);
        let mut wide = [0u8; 8];
        r.read(PRESENT, &mut wide);
        assert_eq!(wide, [0; 8]);
    }

    #[test]
    fn a_power_button_press_is_read_once() {
        let bits = Arc::new(SlotBits::default());
        let mut r = HotplugRegisters::new(bits.clone());
        assert_eq!(read(&mut r, EVENTS), 0);
        bits.press_power_button();
        assert_eq!(read(&mut r, EVENTS), POWER_BUTTON);
        assert_eq!(read(&mut r, EVENTS), 0, "read-to-clear");
        assert_eq!(read(&mut r, PRESENT), 0, "a press puts nothing in a slot");
    }
}
