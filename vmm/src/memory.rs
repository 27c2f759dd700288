//! Guest RAM: one shared memfd, mapped into the VMM and registered with KVM, so that
//! vhost-user backends can map the same pages.

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
    #[error("cannot create the guest memory file: {0}")]
    Memfd(std::io::Error),
    /// Mapping failed.
    #[error("cannot map {mib} MiB of guest memory: {message}")]
    Map {
        /// The size.
        mib: u64,
        /// The mapping error.
        message: String,
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

/// Creates `size` bytes of guest RAM backed by a shared memfd, laid out per [`layout::ram_ranges`].
/// Returns the memory and the memfd (for vhost-user backends).
pub fn create_guest_memory(size: u64) -> Result<(GuestMemory, Arc<File>), MemoryError> {
    check_available(size)?;
    let file = Arc::new(memfd(size)?);
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
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| MemoryError::Map {
        mib: size >> 20,
        message: e.to_string(),
    })?;
    advise_huge_pages(&mem);
    Ok((mem, file))
}

/// Where the host says whether shared memory may use transparent huge pages.
const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Asks for transparent huge pages on guest RAM. They are used where the host allows them for
/// shared memory (`shmem_enabled` = `advise`, `within_size` or `always`): a booting guest then
/// takes far fewer (and, nested, far cheaper) page faults, and runs with fewer TLB misses.
/// Elsewhere this changes nothing.
fn advise_huge_pages(mem: &GuestMemory) {
    let policy = std::fs::read_to_string(SHMEM_THP).unwrap_or_default();
    tracing::debug!(
        shmem_enabled = policy.trim(),
        "asking for huge pages on guest RAM"
    );
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

fn memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"legovmm-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
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
        let (mem, file) = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0x1234).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn refuses_more_than_the_host_has() {
        let err = create_guest_memory(1 << 50).unwrap_err();
        assert!(err.to_string().contains("cannot give"), "{err}");
    }
}
