//! Guest memory in a memfd, mapped here and shared with a vhost-user backend.

use std::fs::File;
use std::os::fd::FromRawFd;

use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

/// One region of `size` bytes at guest address 0, backed by a memfd the backend can map.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vhost-user-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).expect("size the memfd");
    let region = MmapRegion::from_file(FileOffset::new(file, 0), size).expect("mmap");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
    GuestMemoryMmap::from_regions(vec![region]).expect("guest memory")
}

/// Gives `fe` the one region of `mem` as its memory table.
pub fn set_mem_table(fe: &mut Frontend, mem: &GuestMemoryMmap) {
    let region = mem.iter().next().expect("one region");
    let info = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
    fe.set_mem_table(&[info]).expect("set_mem_table");
}
