//! Loading the guest kernel, initrd and command line, and writing the boot information.
//!
//! A bzImage boots through the 64-bit Linux boot protocol (entry 0x200 bytes into the
//! protected-mode code, `rsi` = zero page). An ELF vmlinux boots through PVH when it carries
//! a PVH note (32-bit entry, `ebx` = start info), else through the 64-bit protocol at its
//! ELF entry.

pub mod e820;
pub mod params;
pub mod reset_vector;

use crate::layout;
use crate::memory::GuestMemory;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader};
use params::{InitrdPlacement, ZeroPageInputs};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress};

/// Where the PVH start info goes; its memory map follows it, then the module list.
pub const PVH_INFO_START: u64 = 0x6000;
const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x40;
const PVH_MODLIST_START: u64 = PVH_INFO_START + 0xc00;

/// Errors loading the guest's boot files.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read the kernel {path}")]
    KernelFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is neither a bzImage nor an ELF vmlinux.
    #[error("the kernel {0} is neither a bzImage nor an ELF vmlinux")]
    UnknownKernelFormat(String),
    /// linux-loader refused the kernel.
    #[error("cannot load the kernel {path}")]
    KernelLoad {
        /// The path.
        path: String,
        /// linux-loader's reason.
        source: loader::Error,
    },
    /// The initrd could not be opened or read.
    #[error("cannot read the initrd {path}")]
    InitrdFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd does not fit in guest memory above the kernel.
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel: give the vNode more memory")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has characters the kernel cannot take.
    #[error("the kernel command line of {len} bytes is invalid (the kernel takes {max} at most)")]
    Cmdline {
        /// Its length in bytes.
        len: usize,
        /// The longest the kernel takes.
        max: usize,
        /// linux-loader's reason.
        source: linux_loader::cmdline::Error,
    },
    /// The command line could not be copied into guest memory.
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineWrite(#[source] loader::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
}

/// How the vCPU must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: long mode, `rip` = entry, `rsi` = zero page.
    Linux64 {
        /// The 64-bit entry point.
        entry: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rip` = entry, `rbx` = start info.
    Pvh {
        /// The PVH entry point.
        entry: u64,
    },
}

/// The kernel formats we can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed bzImage.
    BzImage,
    /// An uncompressed ELF vmlinux.
    Elf,
}

/// Detects the kernel format from its first bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && &head[..4] == b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Everything needed to boot.
pub struct BootSpec<'a> {
    /// Kernel image path.
    pub kernel: &'a Path,
    /// Initrd path.
    pub initrd: Option<&'a Path>,
    /// Command line.
    pub cmdline: &'a str,
    /// Guest RAM size.
    pub mem_size: u64,
    /// Where the RSDP was written.
    pub rsdp_addr: u64,
}

/// Checks that the kernel and initrd can be opened, before any VM is built.
pub fn check_readable(kernel: &Path, initrd: Option<&Path>) -> Result<(), BootError> {
    read_first_byte(kernel).map_err(|source| BootError::KernelFile {
        path: kernel.display().to_string(),
        source,
    })?;
    if let Some(initrd) = initrd {
        read_first_byte(initrd).map_err(|source| BootError::InitrdFile {
            path: initrd.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Opens `path` and reads a byte: catches missing files, directories and unreadable files.
fn read_first_byte(path: &Path) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    match File::open(path)?.read(&mut byte)? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is empty",
        )),
        _ => Ok(()),
    }
}

/// Loads kernel, initrd and command line into `mem` and writes the boot information.
pub fn load(mem: &GuestMemory, spec: &BootSpec) -> Result<(BootEntry, KernelFormat), BootError> {
    let kpath = spec.kernel.display().to_string();
    let kerr = |source| BootError::KernelFile {
        path: kpath.clone(),
        source,
    };
    let mut kernel = File::open(spec.kernel).map_err(kerr)?;
    let mut head = vec![0u8; 0x400];
    let n = kernel.read(&mut head).map_err(kerr)?;
    let format =
        detect_format(&head[..n]).ok_or_else(|| BootError::UnknownKernelFormat(kpath.clone()))?;
    let himem = Some(GuestAddress(layout::HIGH_MEMORY_START));
    let load_err = |source| BootError::KernelLoad {
        path: kpath.clone(),
        source,
    };
    let result = match format {
        KernelFormat::BzImage => BzImage::load(mem, None, &mut kernel, himem).map_err(load_err)?,
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, himem).map_err(load_err)?,
    };

    let cmdline_size = write_cmdline(mem, spec.cmdline, result.setup_header.as_ref())?;
    let initrd_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(u64::from(u32::MAX));
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            result.kernel_end,
            initrd_max,
            spec.mem_size,
        )?),
        None => None,
    };
    let map = e820::memory_map(spec.mem_size);
    let inputs = ZeroPageInputs {
        setup_header: result.setup_header,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_size,
        initrd,
        e820: &map,
        rsdp_addr: spec.rsdp_addr,
    };
    let gw = |what| move |source| BootError::GuestWrite { what, source };
    reset_vector::write(mem).map_err(gw("reset vector"))?;

    let pvh_entry = match result.pvh_boot_cap {
        loader::elf::PvhBootCapability::PvhEntryPresent(addr) if format == KernelFormat::Elf => {
            Some(addr.raw_value())
        }
        _ => None,
    };
    let entry = if let Some(entry) = pvh_entry {
        let info = params::pvh_start_info(&inputs, PVH_MEMMAP_START, PVH_MODLIST_START);
        mem.write_obj(info.start_info, GuestAddress(PVH_INFO_START))
            .map_err(gw("PVH start info"))?;
        for (i, e) in info.memmap.iter().enumerate() {
            let at = PVH_MEMMAP_START + (i * std::mem::size_of_val(e)) as u64;
            mem.write_obj(*e, GuestAddress(at))
                .map_err(gw("PVH memory map"))?;
        }
        for (i, m) in info.modules.iter().enumerate() {
            let at = PVH_MODLIST_START + (i * std::mem::size_of_val(m)) as u64;
            mem.write_obj(*m, GuestAddress(at))
                .map_err(gw("PVH module list"))?;
        }
        BootEntry::Pvh { entry }
    } else {
        let zp = params::zero_page(&inputs);
        mem.write_obj(zp, GuestAddress(layout::ZERO_PAGE_START))
            .map_err(gw("zero page"))?;
        let entry = match format {
            // The 64-bit entry sits 0x200 bytes into the protected-mode code.
            KernelFormat::BzImage => result.kernel_load.raw_value() + 0x200,
            KernelFormat::Elf => result.kernel_load.raw_value(),
        };
        BootEntry::Linux64 { entry }
    };
    Ok((entry, format))
}

fn write_cmdline(
    mem: &GuestMemory,
    text: &str,
    hdr: Option<&loader::bootparam::setup_header>,
) -> Result<u32, BootError> {
    let limit = hdr
        .map(|h| h.cmdline_size as usize)
        .filter(|&s| s > 0)
        .unwrap_or(layout::CMDLINE_MAX_SIZE)
        .min(layout::CMDLINE_MAX_SIZE);
    let cmdline_err = |source| BootError::Cmdline {
        len: text.len(),
        max: limit - 1,
        source,
    };
    let mut cmdline = Cmdline::new(limit).map_err(cmdline_err)?;
    cmdline.insert_str(text).map_err(cmdline_err)?;
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BootError::CmdlineWrite)?;
    Ok(text.len() as u32 + 1)
}

/// Places the initrd at the highest page-aligned address below both the end of low RAM
/// and the kernel's `initrd_addr_max`, above the kernel.
fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    initrd_max: u64,
    mem_size: u64,
) -> Result<InitrdPlacement, BootError> {
    let ierr = |source| BootError::InitrdFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(ierr)?;
    let size = file.metadata().map_err(ierr)?.len();
    let low_end = mem_size
        .min(layout::MMIO_HOLE_START)
        .min(initrd_max.saturating_add(1));
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or(BootError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::GuestWrite {
            what: "initrd",
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_magic() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn garbage_kernel_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel");
        std::fs::write(&k, b"not a kernel at all").unwrap();
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        let spec = BootSpec {
            kernel: &k,
            initrd: None,
            cmdline: "console=ttyS0",
            mem_size: 64 << 20,
            rsdp_addr: layout::ACPI_START,
        };
        let err = load(&mem, &spec).unwrap_err().to_string();
        assert!(err.contains("neither a bzImage nor an ELF"), "{err}");
        let spec = BootSpec {
            kernel: &dir.path().join("missing"),
            ..spec
        };
        let err = load(&mem, &spec).unwrap_err().to_string();
        assert!(err.contains("cannot read the kernel"), "{err}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned_and_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        let placed = load_initrd(&mem, &p, 0x200_0000, u32::MAX as u64, 64 << 20).unwrap();
        assert_eq!(placed.addr % 4096, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(placed.addr + 9_999))
                .unwrap(),
            7
        );
        assert!(load_initrd(&mem, &p, (64 << 20) - 4096, u32::MAX as u64, 64 << 20).is_err());
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let (mem, _) =
            crate::memory::create_guest_memory(64 << 20, crate::memory::MemoryBacking::Private)
                .unwrap();
        let long = "x".repeat(5000);
        assert!(matches!(
            write_cmdline(&mem, &long, None),
            Err(BootError::Cmdline { .. })
        ));
        assert_eq!(write_cmdline(&mem, "console=ttyS0", None).unwrap(), 14);
    }
}
