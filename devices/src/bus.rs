//! Address-range buses that route guest port-I/O and MMIO accesses to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest accesses within one address range.
///
/// `offset` is relative to the base the device was inserted at. Devices must never
/// panic on any access: unknown offsets read as zeros (or all ones, as the hardware
/// would) and writes to them are ignored.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("the range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range was requested.
    #[error("a device range cannot be empty (base {0:#x})")]
    Empty(u64),
}

/// A map from non-overlapping address ranges to devices.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((&prev_base, &(prev_len, _))) = self.ranges.range(..end).next_back() {
            if prev_base + prev_len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// Finds the device covering `addr`, with the offset of `addr` inside it.
    pub fn resolve(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then(|| (dev.clone(), addr - base))
    }

    /// Routes a read; returns false (and fills `data` with ones) when nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(&dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write; returns false when nothing is mapped (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(&dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering the guard if another thread panicked while holding it.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn dev(v: u8) -> SharedDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn routes_to_the_covering_device_with_its_offset() {
        let mut bus = Bus::new();
        bus.insert(dev(10), 0x100, 8).unwrap();
        bus.insert(dev(20), 0x200, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x103, &mut b));
        assert_eq!(b[0], 13);
        assert!(bus.write(0x200, &[7]));
        assert!(bus.read(0x201, &mut b));
        assert_eq!(b[0], 8);
        assert!(!bus.read(0x108, &mut b));
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev(0), 0x10f, 1).is_err());
        assert!(bus.insert(dev(0), 0xf8, 0x9).is_err());
        assert!(bus.insert(dev(0), 0xf8, 0x8).is_ok());
        assert_eq!(bus.insert(dev(0), 0x300, 0), Err(BusError::Empty(0x300)));
    }
}
