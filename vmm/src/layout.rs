//! Where things live in the guest's physical address space (x86_64).

/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty).
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (Linux `boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The boot stack's top.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The boot page tables: PML4, PDPT, then one PD (identity map of the first 1 GiB).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The most bytes of command line we accept (the x86 kernel's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional low memory given to the guest as RAM (below the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// The BIOS area the kernel scans for the RSDP; ACPI tables live here.
pub const ACPI_START: u64 = 0xe0000;
/// End of the BIOS area (start of high memory).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Start of RAM above the hole.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The I/O APIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs.
pub const APIC_START: u64 = 0xfee0_0000;
/// The TSS KVM needs on Intel (three pages just below the BIOS ROM).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// GSIs handed to virtio devices, in order (avoiding the ISA timer, keyboard, serial and RTC lines).
pub const VIRTIO_GSIS: [u32; 14] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19];
/// The serial port's GSI.
pub const SERIAL_GSI: u32 = 4;
/// Virtio windows kept empty at boot for devices added while the vNode runs (taken from the
/// windows and GSIs the boot devices leave free).
pub const HOTPLUG_SLOTS: usize = 4;
/// The hotplug controller's registers (present slots, eject requests, eject done).
pub const HOTPLUG_REGS_START: u64 = 0xd010_0000;
/// Their size.
pub const HOTPLUG_REGS_LEN: u64 = 0x10;
/// The GSI of the Generic Event Device that tells the guest about hotplug events.
pub const GED_GSI: u32 = 20;

// The fixed boot areas must not overlap: checked when the crate compiles.
const _: () = {
    assert!(BOOT_IDT_START > BOOT_GDT_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(VIRTIO_MMIO_START >= MMIO_HOLE_START);
    assert!(VIRTIO_MMIO_START + VIRTIO_GSIS.len() as u64 * VIRTIO_MMIO_SIZE <= HOTPLUG_REGS_START);
    assert!(HOTPLUG_REGS_START + HOTPLUG_REGS_LEN <= IOAPIC_START);
};

/// The guest RAM ranges `(start, len)` for `mem_size` bytes: one below the MMIO hole and, for
/// large guests, one above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (RAM_ABOVE_4G_START, mem_size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big[0], (0, MMIO_HOLE_START));
        assert_eq!(big[1], (RAM_ABOVE_4G_START, (4 << 30) - MMIO_HOLE_START));
        assert_eq!(big.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
    }
}
