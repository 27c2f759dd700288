//! The boot information handed to the kernel: Linux's zero page (`boot_params`) for the
//! 64-bit boot protocol, or a PVH `hvm_start_info` for ELF kernels with a PVH note.

use super::e820::E820Entry;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

/// `HdrS`: the boot protocol's header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector flag.
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader type.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The kernel may use the heap up to heap_end_ptr.
const CAN_USE_HEAP: u8 = 0x80;
/// Default kernel alignment for ELF boots (16 MiB).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// The PVH start info magic.
const PVH_MAGIC: u32 = 0x336e_c578;

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Everything the zero page describes.
pub struct ZeroPageInputs<'a> {
    /// The bzImage's setup header, or None for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: u32,
    /// The initrd, if any.
    pub initrd: Option<InitrdPlacement>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// Builds the zero page for the 64-bit Linux boot protocol.
pub fn zero_page(inputs: &ZeroPageInputs) -> boot_params {
    let mut params = boot_params::default();
    match inputs.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = inputs.cmdline_addr as u32;
    params.hdr.cmdline_size = inputs.cmdline_size;
    if let Some(initrd) = inputs.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = inputs.rsdp_addr;
    let n = inputs.e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&inputs.e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params
}

/// The PVH boot structures: start info, the memory map, and the initrd as module 0.
pub struct PvhInfo {
    /// The start info (its memmap/modlist addresses already filled in).
    pub start_info: hvm_start_info,
    /// The memory map entries.
    pub memmap: Vec<hvm_memmap_table_entry>,
    /// The module list (the initrd), possibly empty.
    pub modules: Vec<hvm_modlist_entry>,
}

/// Builds the PVH start info; `memmap_addr` and `modlist_addr` are where the caller writes
/// the two arrays.
pub fn pvh_start_info(inputs: &ZeroPageInputs, memmap_addr: u64, modlist_addr: u64) -> PvhInfo {
    let memmap: Vec<_> = inputs
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = inputs
        .initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: inputs.cmdline_addr,
        rsdp_paddr: inputs.rsdp_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_addr },
        ..Default::default()
    };
    PvhInfo {
        start_info,
        memmap,
        modules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;

    fn inputs(map: &[E820Entry]) -> ZeroPageInputs<'_> {
        ZeroPageInputs {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_size: 14,
            initrd: Some(InitrdPlacement {
                addr: 0x0f00_0000,
                size: 0x12345,
            }),
            e820: map,
            rsdp_addr: 0xe0000,
        }
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_e820_and_rsdp() {
        let map = memory_map(512 << 20);
        let p = zero_page(&inputs(&map));
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 14);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12345);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries as usize, map.len());
        let last = p.e820_table[map.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (0x10_0000, (512 << 20) - 0x10_0000)
        );
    }

    #[test]
    fn bzimage_header_is_kept_and_extended() {
        let map = memory_map(256 << 20);
        let hdr = setup_header {
            version: 0x020f,
            header: HDRS_MAGIC,
            loadflags: 1,
            ..Default::default()
        };
        let mut i = inputs(&map);
        i.setup_header = Some(hdr);
        let p = zero_page(&i);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!(p.hdr.loadflags, 1 | CAN_USE_HEAP);
    }

    #[test]
    fn pvh_start_info_points_at_its_tables() {
        let map = memory_map(256 << 20);
        let info = pvh_start_info(&inputs(&map), 0x6000, 0x6800);
        assert_eq!({ info.start_info.magic }, PVH_MAGIC);
        assert_eq!({ info.start_info.memmap_entries } as usize, map.len());
        assert_eq!({ info.start_info.nr_modules }, 1);
        assert_eq!({ info.start_info.modlist_paddr }, 0x6800);
        assert_eq!(info.modules[0].size, 0x12345);
    }
}
