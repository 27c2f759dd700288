//! Boot-time register state: the GDT, identity page tables, and the segment and control
//! registers for the 64-bit Linux boot protocol or for PVH's 32-bit entry.

use crate::boot::BootEntry;
use crate::layout;
use crate::memory::GuestMemory;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Present, writable.
const PTE_PW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PDE_PW_HUGE: u64 = 0x83;

/// Selectors of the boot GDT.
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// Encodes a GDT entry from its access/flags word, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0x0000_f0ff) << 40)
}

/// Decodes a GDT entry into the segment KVM loads for `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = bits(55, 1) == 1;
    let present = bits(47, 1);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: bits(40, 0xf),
        present,
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code, data, TSS. Long mode uses a 64-bit code segment.
fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Errors writing boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory refused the write.
    #[error("cannot write the boot {what} into guest memory")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
}

fn write_u64s(
    mem: &GuestMemory,
    at: u64,
    words: &[u64],
    what: &'static str,
) -> Result<(), RegsError> {
    for (i, w) in words.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(at + 8 * i as u64))
            .map_err(|source| RegsError::Memory { what, source })?;
    }
    Ok(())
}

/// Writes identity page tables mapping the first 1 GiB with 2 MiB pages.
pub fn write_identity_page_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    write_u64s(
        mem,
        layout::PML4_START,
        &[layout::PDPTE_START | PTE_PW],
        "PML4",
    )?;
    write_u64s(
        mem,
        layout::PDPTE_START,
        &[layout::PDE_START | PTE_PW],
        "PDPT",
    )?;
    let pdes: Vec<u64> = (0..512u64).map(|i| (i << 21) | PDE_PW_HUGE).collect();
    write_u64s(mem, layout::PDE_START, &pdes, "page directory")
}

/// Writes the GDT/IDT (and page tables for long mode) and returns the special registers
/// for `entry`, starting from the vCPU's current `sregs`.
pub fn boot_sregs(
    mem: &GuestMemory,
    entry: BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let long_mode = matches!(entry, BootEntry::Linux64 { .. });
    let gdt = boot_gdt(long_mode);
    write_u64s(mem, layout::BOOT_GDT_START, &gdt, "GDT")?;
    write_u64s(mem, layout::BOOT_IDT_START, &[0], "IDT")?;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.cs = segment_from_gdt(gdt[1], CODE_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);

    sregs.cr0 = (sregs.cr0 & !(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET;
    if long_mode {
        write_identity_page_tables(mem)?;
        sregs.cr3 = layout::PML4_START;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 |= CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    } else {
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    Ok(sregs)
}

/// The general registers for `entry`.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = crate::boot::PVH_INFO_START;
        }
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_through_kvm_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(
            (code.type_, code.present, code.s, code.l, code.g, code.db),
            (0xb, 1, 1, 1, 1, 0)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.unusable, 0);
        let data = segment_from_gdt(gdt_entry(0xc093, 0x1234_5678, 0xabcde), DATA_SELECTOR);
        assert_eq!(data.base, 0x1234_5678);
        assert_eq!(data.limit, 0xabcd_efff);
        assert_eq!((data.type_, data.db, data.l), (3, 1, 0));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn long_mode_state_enables_paging_over_an_identity_map() {
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        let s = boot_sregs(
            &mem,
            BootEntry::Linux64 { entry: 0x100200 },
            kvm_sregs {
                cr0: 0x6000_0010,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.cr0 & (CR0_CD | CR0_NW), 0);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cr3, layout::PML4_START);
        assert_eq!(s.cs.l, 1);
        let pde: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 8 * 5))
            .unwrap();
        assert_eq!(pde, (5 << 21) | PDE_PW_HUGE);
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        let r = boot_regs(BootEntry::Linux64 { entry: 0x100200 });
        assert_eq!((r.rip, r.rsi), (0x100200, layout::ZERO_PAGE_START));
    }

    #[test]
    fn pvh_state_is_flat_protected_mode_without_paging() {
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        let s = boot_sregs(
            &mem,
            BootEntry::Pvh { entry: 0x1000000 },
            kvm_sregs::default(),
        )
        .unwrap();
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_eq!((s.efer, s.cr4), (0, 0));
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let r = boot_regs(BootEntry::Pvh { entry: 0x1000000 });
        assert_eq!(r.rbx, crate::boot::PVH_INFO_START);
    }
}
