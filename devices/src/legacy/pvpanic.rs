//! The pvpanic device: the guest kernel writes here when it panics.
//!
//! The guest finds it through ACPI (`_HID "QEMU0001"`, an I/O resource at [`PORT`]).
//! Reads return the supported events; a write with [`PANICKED`] or [`CRASH_LOADED`]
//! reports [`GuestExit::Crashed`].

use crate::bus::BusDevice;
use crate::exit::{ExitNotifier, GuestExit};

/// The I/O port (QEMU's default).
pub const PORT: u16 = 0x505;
/// The number of ports the device decodes.
pub const LEN: u64 = 1;
/// Event bit: the guest kernel panicked.
pub const PANICKED: u8 = 1 << 0;
/// Event bit: the guest kernel panicked and a crash kernel is taking over.
pub const CRASH_LOADED: u8 = 1 << 1;
/// The events this device supports, as guest reads return them.
pub const CAPABILITIES: u8 = PANICKED | CRASH_LOADED;

/// The pvpanic device.
pub struct PvPanic {
    exit: ExitNotifier,
}

impl PvPanic {
    /// Creates the device; panics are reported to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (0, Some(b)) = (offset, data.first_mut()) {
            *b = CAPABILITIES;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&value)) = (offset, data.first()) else {
            return;
        };
        let reason = if value & PANICKED != 0 {
            "the guest kernel panicked (pvpanic)"
        } else if value & CRASH_LOADED != 0 {
            "the guest kernel panicked and a crash kernel was loaded (pvpanic)"
        } else {
            return;
        };
        tracing::error!("{reason}");
        self.exit.notify(GuestExit::Crashed(reason.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capabilities_and_reports_panics() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = PvPanic::new(exit.clone());
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], 3);
        dev.write(0, &[0]);
        dev.write(0, &[]);
        assert_eq!(exit.exit(), None);
        dev.write(0, &[PANICKED]);
        assert_eq!(
            exit.exit(),
            Some(GuestExit::Crashed(
                "the guest kernel panicked (pvpanic)".into()
            ))
        );
    }

    #[test]
    fn crash_loaded_is_a_crash() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = PvPanic::new(exit.clone());
        dev.write(0, &[CRASH_LOADED]);
        assert!(matches!(exit.exit(), Some(GuestExit::Crashed(r)) if r.contains("crash kernel")));
    }
}
