//! Guest RAM, mapped into the VMM and registered with KVM, backed as [`MemoryBacking`]
//! says: private anonymous memory (what QEMU uses by default: transparent huge pages apply
//! on a default host) unless a device needs to map it too, then a shared memfd (vhost-user
//! backends map the same pages), optionally of hugetlbfs pages.

use crate::layout;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// Guest memory as the VMM uses it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The size of a hugetlbfs page guest RAM uses with [`MemoryBacking::Hugetlb`].
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// How guest RAM is backed on the host (`--memory-backing`, `memory_backing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryBacking {
    /// Private memory unless a device must map guest RAM (vhost-user), then shared.
    #[default]
    Auto,
    /// Private anonymous memory: the fastest on a default host (transparent huge pages
    /// apply), but no other process can map it.
    Private,
    /// A shared memfd: vhost-user backends can map it; huge pages only where the host
    /// allows them for shared memory (`shmem_enabled`).
    Shared,
    /// A shared memfd of 2 MiB hugetlbfs pages, which the host admin must have reserved
    /// (`vm.nr_hugepages`): shareable and huge on any host.
    Hugetlb,
}

impl MemoryBacking {
    /// The names accepted on the command line and in the config file.
    pub const NAMES: &'static str = "auto, private, shared or hugetlb";

    /// Returns the backing to use: `Auto` becomes `Shared` when `shared_needed` (a device
    /// maps guest RAM), else `Private`.
    pub fn resolve(self, shared_needed: bool) -> MemoryBacking {
        match self {
            MemoryBacking::Auto if shared_needed => MemoryBacking::Shared,
            MemoryBacking::Auto => MemoryBacking::Private,
            other => other,
        }
    }

    /// True if other processes can map this memory.
    pub fn is_shared(self) -> bool {
        matches!(self, MemoryBacking::Shared | MemoryBacking::Hugetlb)
    }
}

impl std::str::FromStr for MemoryBacking {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "private" => Ok(Self::Private),
            "shared" => Ok(Self::Shared),
            "hugetlb" => Ok(Self::Hugetlb),
            other => Err(format!(
                "unknown memory backing {other:?}: use {}",
                Self::NAMES
            )),
        }
    }
}

impl std::fmt::Display for MemoryBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Private => "private",
            Self::Shared => "shared",
            Self::Hugetlb => "hugetlb",
        })
    }
}

/// Errors setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host does not have the memory.
    #[error("the host cannot give {requested_mib} MiB of guest memory: only {available_mib} MiB is available")]
    NotEnough {
        /// What the vNode asked for.
        requested_mib: u64,
        /// What the host reports as available.
        available_mib: u64,
    },
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory file")]
    Memfd(#[source] std::io::Error),
    /// Hugetlbfs pages were asked for but the host has too few reserved.
    #[error("cannot back {mib} MiB of guest memory with 2 MiB huge pages: the host has {free} free (HugePages_Free); reserve more with `sysctl vm.nr_hugepages=N` or use --memory-backing shared")]
    NoHugePages {
        /// The size.
        mib: u64,
        /// Free huge pages on the host.
        free: u64,
    },
    /// Mapping failed.
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        /// The size.
        mib: u64,
        /// The mapping error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Reads `MemAvailable` plus free swap from /proc/meminfo, in bytes.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Fails when the host reports less available memory (RAM plus free swap) than `size`.
pub fn check_available(size: u64) -> Result<(), MemoryError> {
    match host_available_bytes() {
        Some(available) if size > available => Err(MemoryError::NotEnough {
            requested_mib: size >> 20,
            available_mib: available >> 20,
        }),
        _ => Ok(()),
    }
}

/// Creates `size` bytes of guest RAM laid out per [`layout::ram_ranges`], backed as
/// `backing` says ([`MemoryBacking::Auto`] counts as private). Returns the memory and, for
/// shared backings, the memfd (vhost-user backends map it).
pub fn create_guest_memory(
    size: u64,
    backing: MemoryBacking,
) -> Result<(GuestMemory, Option<Arc<File>>), MemoryError> {
    let backing = backing.resolve(false);
    if backing == MemoryBacking::Hugetlb {
        check_huge_pages(size)?;
    } else {
        check_available(size)?;
    }
    let map_err = |source| MemoryError::Map {
        mib: size >> 20,
        source,
    };
    let (mem, file) = if backing.is_shared() {
        let file = Arc::new(memfd(size, backing == MemoryBacking::Hugetlb)?);
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for (start, len) in layout::ram_ranges(size) {
            ranges.push((
                GuestAddress(start),
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            ));
            offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(map_err)?;
        (mem, Some(file))
    } else {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        (
            GuestMemoryMmap::from_ranges(&ranges).map_err(map_err)?,
            None,
        )
    };
    if backing != MemoryBacking::Hugetlb {
        advise_huge_pages(&mem);
    }
    Ok((mem, file))
}

/// Says in one sentence how guest RAM is backed and why, with the host's huge page policy
/// that applies to it (for the log).
pub fn describe_backing(requested: MemoryBacking, used: MemoryBacking, size: u64) -> String {
    let why = match (requested, used) {
        (MemoryBacking::Auto, MemoryBacking::Shared) => {
            "shared because a vhost-user device maps guest RAM"
        }
        (MemoryBacking::Auto, _) => "private because no device needs to map guest RAM",
        _ => "as asked (--memory-backing)",
    };
    let pages = match used {
        MemoryBacking::Hugetlb => "2 MiB hugetlbfs pages".to_string(),
        MemoryBacking::Shared => format!(
            "transparent huge pages where shmem_enabled allows them (host: {})",
            thp_policy(SHMEM_THP)
        ),
        _ => format!(
            "transparent huge pages where enabled allows them (host: {})",
            thp_policy(ANON_THP)
        ),
    };
    let kind = match used {
        MemoryBacking::Hugetlb => "a shared hugetlbfs memfd",
        MemoryBacking::Shared => "a shared memfd",
        _ => "private anonymous memory",
    };
    format!("guest RAM: {} MiB of {kind}, {why}; {pages}", size >> 20)
}

/// Returns the selected value of a THP policy file (`always [madvise] never` gives
/// `madvise`), or `unknown`.
fn thp_policy(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or("unknown")
        .to_string()
}

/// Fails when `size` is not a whole number of huge pages or the host has too few free.
fn check_huge_pages(size: u64) -> Result<(), MemoryError> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = text
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if !size.is_multiple_of(HUGE_PAGE_SIZE) || free < size / HUGE_PAGE_SIZE {
        return Err(MemoryError::NoHugePages {
            mib: size >> 20,
            free,
        });
    }
    Ok(())
}

/// Where the host says whether anonymous memory may use transparent huge pages.
const ANON_THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// Where the host says whether shared memory may use transparent huge pages.
const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Asks for transparent huge pages on guest RAM, as QEMU does. They are used where the host
/// allows them (`enabled` for private memory, where Debian's default allows them; and
/// `shmem_enabled` = `advise`, `within_size` or `always` for shared memory): a booting guest
/// then takes far fewer (and, nested, far cheaper) page faults, and runs with fewer TLB
/// misses. Elsewhere this changes nothing.
fn advise_huge_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        let Ok(addr) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        // SAFETY: madvise only changes the paging policy of this range, a live mapping of
        // guest RAM that `mem` owns; no memory is read or written.
        let r = unsafe {
            libc::madvise(
                addr.cast::<libc::c_void>(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if r != 0 {
            tracing::debug!(
                "huge pages not available for guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn memfd(size: u64, huge: bool) -> Result<File, MemoryError> {
    let name = c"legovmm-guest-ram";
    let mut flags = libc::MFD_CLOEXEC;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn guest_memory_is_shared_with_the_memfd() {
        use std::os::unix::fs::FileExt;
        let (mem, file) = create_guest_memory(64 << 20, MemoryBacking::Shared).unwrap();
        let file = file.expect("shared memory has a file");
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0x1234).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn refuses_more_than_the_host_has() {
        let err = create_guest_memory(1 << 50, MemoryBacking::Auto).unwrap_err();
        assert!(err.to_string().contains("cannot give"), "{err}");
    }

    #[test]
    fn private_memory_has_no_file_and_works() {
        let (mem, file) = create_guest_memory(64 << 20, MemoryBacking::Private).unwrap();
        assert!(file.is_none());
        mem.write_obj(0x1234_5678_u32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
    }

    #[test]
    fn auto_is_shared_only_when_a_device_maps_guest_ram() {
        assert_eq!(MemoryBacking::Auto.resolve(true), MemoryBacking::Shared);
        assert_eq!(MemoryBacking::Auto.resolve(false), MemoryBacking::Private);
        assert_eq!(
            MemoryBacking::Hugetlb.resolve(false),
            MemoryBacking::Hugetlb
        );
        assert_eq!(
            "HugeTLB".parse::<MemoryBacking>(),
            Ok(MemoryBacking::Hugetlb)
        );
        assert!("big"
            .parse::<MemoryBacking>()
            .unwrap_err()
            .contains("auto, private"));
        let line = describe_backing(MemoryBacking::Auto, MemoryBacking::Private, 256 << 20);
        assert!(
            line.starts_with("guest RAM: 256 MiB of private anonymous memory, private because"),
            "{line}"
        );
    }

    #[test]
    fn hugetlb_needs_reserved_pages() {
        // Unless this host has reserved huge pages, the error says how to get them.
        match create_guest_memory(64 << 20, MemoryBacking::Hugetlb) {
            Ok((_, file)) => assert!(file.is_some()),
            Err(e) => assert!(e.to_string().contains("vm.nr_hugepages"), "{e}"),
        }
    }
}
