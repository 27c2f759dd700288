//! Hardware-reduced ACPI power management registers on port I/O.
//!
//! The FADT points its sleep control, sleep status and reset registers here
//! ([`SLEEP_CONTROL_PORT`], [`SLEEP_STATUS_PORT`], [`RESET_PORT`]) and the DSDT's
//! `_S5` package carries [`S5_SLEEP_TYPE`]. Entering S5 reports
//! [`GuestExit::PowerOff`]; writing [`RESET_VALUE`] to the reset register reports
//! [`GuestExit::Reset`].

use crate::bus::BusDevice;
use crate::exit::{ExitNotifier, GuestExit};

/// The base I/O port of the register block.
pub const PM_BASE: u16 = 0x600;
/// The length of the register block.
pub const PM_LEN: u64 = 8;
/// The sleep control register (FADT `SLEEP_CONTROL_REG`), one byte.
pub const SLEEP_CONTROL_PORT: u16 = PM_BASE;
/// The sleep status register (FADT `SLEEP_STATUS_REG`), one byte.
pub const SLEEP_STATUS_PORT: u16 = PM_BASE + 1;
/// The reset register (FADT `RESET_REG`), one byte.
pub const RESET_PORT: u16 = PM_BASE + 2;
/// The value the guest writes to [`RESET_PORT`] to reset (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x42;
/// The sleep type of S5 (soft off), as the DSDT's `_S5` package must declare it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control: SLP_EN.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control: the SLP_TYP field's shift (bits 2..=4).
pub const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control: the SLP_TYP field's mask.
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// Sleep status: WAK_STS (write one to clear).
pub const WAK_STS: u8 = 1 << 7;

const OFFSET_SLEEP_CONTROL: u64 = 0;
const OFFSET_SLEEP_STATUS: u64 = 1;
const OFFSET_RESET: u64 = 2;

/// The power management register block.
pub struct AcpiPm {
    exit: ExitNotifier,
    sleep_status: u8,
}

impl AcpiPm {
    /// Creates the device; power-off and reset are reported to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            exit,
            sleep_status: 0,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (OFFSET_SLEEP_STATUS, Some(b)) = (offset, data.first_mut()) {
            *b = self.sleep_status;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            OFFSET_SLEEP_CONTROL => {
                let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if value & SLP_EN != 0 {
                    if sleep_type == S5_SLEEP_TYPE {
                        tracing::info!("the guest powered off (ACPI S5)");
                        self.exit.notify(GuestExit::PowerOff);
                    } else {
                        tracing::warn!(
                            "ignoring a request for unsupported sleep type {sleep_type}"
                        );
                    }
                }
            }
            OFFSET_SLEEP_STATUS => self.sleep_status &= !(value & WAK_STS),
            OFFSET_RESET if value == RESET_VALUE => {
                tracing::info!("the guest reset the machine (ACPI reset register)");
                self.exit.notify(GuestExit::Reset);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPm, ExitNotifier) {
        let exit = ExitNotifier::new().unwrap();
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut pm, exit) = dev();
        // S5 type without SLP_EN, and another sleep type with SLP_EN: no exit.
        pm.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        pm.write(0, &[SLP_EN | (3 << SLP_TYP_SHIFT)]);
        assert_eq!(exit.exit(), None);
        pm.write(0, &[SLP_EN | (S5_SLEEP_TYPE << SLP_TYP_SHIFT)]);
        assert_eq!(exit.exit(), Some(GuestExit::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let (mut pm, exit) = dev();
        pm.write(2, &[RESET_VALUE ^ 1]);
        pm.write(1, &[RESET_VALUE]);
        assert_eq!(exit.exit(), None);
        pm.write(u64::from(RESET_PORT - PM_BASE), &[RESET_VALUE]);
        assert_eq!(exit.exit(), Some(GuestExit::Reset));
    }

    #[test]
    fn sleep_status_reads_clear() {
        let (mut pm, _) = dev();
        pm.write(1, &[WAK_STS]);
        let mut b = [0xffu8; 1];
        pm.read(1, &mut b);
        assert_eq!(b[0], 0);
        pm.write(7, &[]);
    }
}
