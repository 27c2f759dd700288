//! A stub at the real-mode reset vector (`f000:fff0`), standing in for firmware.
//!
//! Linux on a hardware-reduced ACPI platform reboots by default through `BOOT_EFI`; without
//! EFI it falls back to `BOOT_BIOS`, which jumps to the BIOS reset vector. We have no BIOS,
//! so the stub does what a BIOS would: it pulses the i8042 reset line, which ends the vNode
//! as a reboot.

use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Physical address of `f000:fff0`.
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// `mov al, 0xfe; out 0x64, al; cli; hlt; jmp $-2`: reset through the keyboard controller,
/// then stop.
pub const STUB: [u8; 9] = [0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfd, 0x90];

/// Writes the stub at the reset vector.
pub fn write(mem: &GuestMemory) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&STUB, GuestAddress(RESET_VECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_fits_below_1mib_and_pulses_the_i8042_reset_line() {
        assert!(RESET_VECTOR + STUB.len() as u64 <= 0x10_0000);
        // mov al, 0xfe (the i8042 "pulse reset" command); out 0x64, al.
        assert_eq!(&STUB[..4], &[0xb0, 0xfe, 0xe6, 0x64]);
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        write(&mem).unwrap();
        let mut got = [0u8; 9];
        mem.read_slice(&mut got, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(got, STUB);
    }
}
