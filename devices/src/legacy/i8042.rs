//! The part of the i8042 keyboard controller a guest uses to reset the machine.
//!
//! Inserted at port 0x60 with length 5 (ports 0x60..=0x64). Writing the pulse-reset
//! command 0xFE to the command port 0x64 reports [`GuestExit::Reset`]. The status
//! port reads "no data pending"; port 0x61 reads with the PIT OUT2 bit set so that
//! polling loops on it terminate.

use crate::bus::BusDevice;
use crate::exit::{ExitNotifier, GuestExit};

/// The first port (the data port).
pub const PORT: u16 = 0x60;
/// The number of ports the device decodes (0x60..=0x64).
pub const LEN: u64 = 5;
/// The command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

const OFFSET_PORT_B: u64 = 1;
const OFFSET_COMMAND: u64 = 4;
/// Port 0x61 bit 5: PIT channel 2 output.
const PORT_B_OUT2: u8 = 0x20;

/// The i8042 reset line.
pub struct I8042 {
    exit: ExitNotifier,
}

impl I8042 {
    /// Creates the device; resets are reported to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (OFFSET_PORT_B, Some(b)) = (offset, data.first_mut()) {
            *b = PORT_B_OUT2;
        }
        // The data port and the status port (offset 4) read 0: output buffer
        // empty, input buffer empty.
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == OFFSET_COMMAND && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("the guest reset the machine through the i8042");
            self.exit.notify(GuestExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reports_reset() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(4, &[0xaa]);
        assert_eq!(exit.exit(), None);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 1, 0, "no data pending");
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(exit.exit(), Some(GuestExit::Reset));
    }
}
