//! vhost-user postcopy between legovmm's frontend (`lego_devices::vhost_user_frontend`, with a
//! `BackendFaults`) and the real `lego-vhost-blk` daemon (file store): guest RAM is a memfd
//! whose data pages are holes, as when legovmm's pager has not fetched them (or evicted
//! them). The daemon must fault on them through its userfaultfd, which the frontend handed to
//! the test pager ([`TestPager`]), and never read or fill a hole as zeros: a write stores
//! the pager's pattern, a read lands on top of it, and a restarted daemon's new userfaultfd
//! is adopted again for the same device.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pager::{page_pattern, Fault, TestPager, PAGE};
use common::*;
use lego_devices::vhost_user_frontend::{BackendFaults, BackendRegion, VhostUserBlk};
use lego_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use lego_testkit::vhost_user::blk::{request_header, T_IN, T_OUT};
use lego_testkit::wait;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Each of the two guest RAM regions' size.
const REGION: u64 = 1 << 20;
/// The second region's guest address (its memfd offset is [`REGION`]): the data buffers.
const HIGH: u64 = 1 << 32;
/// The queue's size.
const QSIZE: u16 = 16;
/// The rings, header and status byte, in the first region (touched here, so never holes).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HDR: u64 = 0x3000;
const STATUS: u64 = 0x3100;
/// The bytes of the first region touched here.
const TOUCHED: u64 = 0x4000;
/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The guest address of data page `n` (in the second region).
fn data_gpa(n: u64) -> u64 {
    HIGH + n * PAGE
}

/// The memfd offset of data page `n`.
fn data_offset(n: u64) -> u64 {
    REGION + n * PAGE
}

/// Guest RAM: a 2 MiB memfd mapped as two regions (GPA 0 at offset 0, GPA [`HIGH`] at
/// offset [`REGION`]), the ring pages of the first touched (zeroed), every other page a hole.
fn paged_memory() -> (GuestMemoryMmap, File) {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"postcopy-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd.set_len(2 * REGION).expect("size the memfd");
    let region = |gpa: u64, offset: u64| {
        let file = memfd.try_clone().expect("dup the memfd");
        let mmap =
            MmapRegion::from_file(FileOffset::new(file, offset), REGION as usize).expect("mmap");
        GuestRegionMmap::new(mmap, GuestAddress(gpa)).expect("region")
    };
    let mem = GuestMemoryMmap::from_regions(vec![region(0, 0), region(HIGH, REGION)])
        .expect("guest memory");
    mem.write_slice(&vec![0u8; TOUCHED as usize], GuestAddress(0))
        .expect("touch the rings");
    (mem, memfd)
}

/// Whether the page at `offset` of `memfd` is a hole (never filled).
fn is_hole(memfd: &File, offset: u64) -> bool {
    let at = libc::off_t::try_from(offset).expect("offset");
    // SAFETY: lseek only moves the file position of a descriptor `memfd` keeps open.
    let hole = unsafe { libc::lseek(memfd.as_raw_fd(), at, libc::SEEK_HOLE) };
    hole == at
}

/// A guest driver sending one virtio-blk request at a time on one queue.
struct Guest {
    mem: GuestMemoryMmap,
    kick: EventFd,
    avail: u16,
}

impl Guest {
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn desc(&self, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * i;
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).expect("desc");
        m.write_obj(len, GuestAddress(at + 8)).expect("desc");
        m.write_obj(flags, GuestAddress(at + 12)).expect("desc");
        m.write_obj(next, GuestAddress(at + 14)).expect("desc");
    }

    fn used_idx(&self) -> u16 {
        let idx = self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
        fence(Ordering::SeqCst);
        idx
    }

    /// Sends a request of `kind` at `sector` with `len` bytes of data at `data` (written by
    /// the device for a read) and waits for it; returns its status.
    fn request(&mut self, kind: u32, sector: u64, data: u64, len: u32) -> u8 {
        let m = &self.mem;
        m.write_slice(&request_header(kind, sector), GuestAddress(HDR))
            .expect("hdr");
        m.write_obj(0xFFu8, GuestAddress(STATUS)).expect("status");
        let device_writes = if kind == T_IN { 2 } else { 0 };
        self.desc(0, HDR, 16, 1, 1);
        self.desc(1, data, len, 1 | device_writes, 2);
        self.desc(2, STATUS, 1, 2, 0);
        let slot = AVAIL + 4 + 2 * u64::from(self.avail % QSIZE);
        m.write_obj(0u16, GuestAddress(slot)).expect("avail");
        self.avail = self.avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        m.write_obj(self.avail, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
        self.kick.write(1).expect("kick");
        let deadline = Instant::now() + TIMEOUT;
        while self.used_idx() != self.avail {
            assert!(Instant::now() < deadline, "the request did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
        m.read_obj(GuestAddress(STATUS)).expect("status")
    }

    /// `len` bytes of guest memory at `gpa`.
    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(gpa))
            .expect("read guest memory");
        out
    }
}

/// legovmm's frontend over the daemon at `socket`, its backend's faults served by `pager`
/// (when given), activated over [`paged_memory`]; the guest driving it, and the memfd.
fn activated(socket: &Path, pager: Option<&Arc<TestPager>>) -> (VhostUserBlk, Guest, File) {
    let faults = pager.map(|p| p.clone() as Arc<dyn BackendFaults>);
    let mut device = VhostUserBlk::connect_with_faults(socket, faults).expect("connect");
    let (mem, memfd) = paged_memory();
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let guest = Guest {
        mem: mem.clone(),
        kick: kick.try_clone().expect("kick"),
        avail: 0,
    };
    let acked = device.avail_features() & (1 << 32);
    assert_ne!(acked, 0, "VERSION_1 is offered");
    device
        .activate(ActivateContext {
            mem,
            queues: vec![guest.queue()],
            queue_events: vec![kick],
            interrupt: VirtioInterrupt::new().expect("interrupt"),
            acked_features: acked,
        })
        .expect("activate");
    (device, guest, memfd)
}

/// The memfd offsets the pager filled for adoption `adoption`, sorted.
fn filled(pager: &TestPager, adoption: u64) -> Vec<u64> {
    let mut offsets: Vec<u64> = pager
        .faults()
        .iter()
        .filter(|f: &&Fault| f.adoption == adoption)
        .map(|f| f.file_offset)
        .collect();
    offsets.sort_unstable();
    offsets
}

/// The pattern the pager fills data pages `pages` with, one after another.
fn patterns(pages: std::ops::Range<u64>) -> Vec<u8> {
    pages.flat_map(|n| page_pattern(data_offset(n))).collect()
}

#[test]
fn a_write_from_pages_that_are_holes_stores_what_the_pager_filled_them_with() {
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let pager = Arc::new(TestPager::default());
    let (mut device, mut guest, memfd) = activated(&daemon.socket, Some(&pager));

    let adopted = pager.adopted();
    assert_eq!(adopted.len(), 1, "adopted once, at activation");
    assert_eq!(adopted[0].device, daemon.socket.display().to_string());
    let regions = &adopted[0].regions;
    let expected = |r: &BackendRegion, gpa: u64, offset: u64| {
        r.guest_phys_addr == gpa
            && r.len == REGION
            && r.file_offset == offset
            && r.backend_addr != 0
            && r.backend_addr.is_multiple_of(PAGE)
    };
    assert_eq!(regions.len(), 2, "{regions:?}");
    assert!(expected(&regions[0], 0, 0), "{regions:?}");
    assert!(expected(&regions[1], HIGH, REGION), "{regions:?}");

    assert!(is_hole(&memfd, data_offset(0)) && is_hole(&memfd, data_offset(1)));
    assert_eq!(guest.request(T_OUT, 16, data_gpa(0), 2 * PAGE as u32), 0);
    assert_eq!(
        filled(&pager, 1),
        vec![data_offset(0), data_offset(1)],
        "the daemon faulted on exactly the two data pages"
    );
    let file = std::fs::read(&disk).expect("disk");
    let written = &file[16 * 512..16 * 512 + 2 * PAGE as usize];
    assert!(
        written == patterns(0..2),
        "the file holds the pager's pages"
    );
    assert!(!written.contains(&0), "a hole was read as zeros");
    assert_eq!(guest.read(data_gpa(0), 2 * PAGE as usize), patterns(0..2));
    assert_eq!(pager.errors(), Vec::<String>::new());
    device.reset();
    assert!(daemon.terminate().success());
}

#[test]
fn a_read_into_pages_that_are_holes_faults_them_in_before_the_daemon_writes_them() {
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let contents: Vec<u8> = (0..REGION as u32)
        .map(|i| (i.wrapping_mul(31) % 253) as u8)
        .collect();
    std::fs::write(&disk, &contents).expect("disk");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let pager = Arc::new(TestPager::default());
    let (mut device, mut guest, memfd) = activated(&daemon.socket, Some(&pager));

    assert!(is_hole(&memfd, data_offset(4)) && is_hole(&memfd, data_offset(5)));
    assert_eq!(guest.request(T_IN, 32, data_gpa(4), 2 * PAGE as u32), 0);
    assert_eq!(
        filled(&pager, 1),
        vec![data_offset(4), data_offset(5)],
        "the daemon faulted on exactly the two data pages"
    );
    let at = 32 * 512;
    assert!(
        guest.read(data_gpa(4), 2 * PAGE as usize) == contents[at..at + 2 * PAGE as usize],
        "the guest reads what the file holds"
    );
    assert_eq!(pager.errors(), Vec::<String>::new());
    device.reset();
    assert!(daemon.terminate().success());
}

#[test]
fn a_restarted_daemon_hands_its_new_userfaultfd_to_the_pager() {
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let pager = Arc::new(TestPager::default());
    let (mut device, mut guest, memfd) = activated(&daemon.socket, Some(&pager));
    assert_eq!(guest.request(T_OUT, 16, data_gpa(0), PAGE as u32), 0);
    assert_eq!(filled(&pager, 1), vec![data_offset(0)]);

    // SIGKILL; a new daemon at the same socket; legovmm's frontend reconnects to it.
    daemon.kill();
    std::fs::remove_file(dir.path().join("blk.sock")).expect("remove the stale socket");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let adopted = wait::until(
        "the frontend to reconnect and hand over the new userfaultfd",
        TIMEOUT,
        Duration::from_millis(10),
        || {
            let a = pager.adopted();
            (a.len() >= 2).then_some(a)
        },
    );
    assert_eq!(adopted.len(), 2, "adopted once per connection");
    assert_eq!(adopted[1].device, adopted[0].device, "the same device");

    // Page 0 is filled now (no fault); pages 8 and 9 are holes for the new daemon too.
    assert!(is_hole(&memfd, data_offset(8)) && is_hole(&memfd, data_offset(9)));
    assert_eq!(guest.request(T_OUT, 64, data_gpa(8), PAGE as u32), 0);
    assert_eq!(guest.request(T_IN, 16, data_gpa(9), PAGE as u32), 0);
    assert_eq!(
        filled(&pager, 2),
        vec![data_offset(8), data_offset(9)],
        "the new daemon faults through its own userfaultfd"
    );
    assert_eq!(filled(&pager, 1), vec![data_offset(0)]);
    let file = std::fs::read(&disk).expect("disk");
    assert!(file[16 * 512..16 * 512 + PAGE as usize] == patterns(0..1));
    assert!(file[64 * 512..64 * 512 + PAGE as usize] == patterns(8..9));
    assert!(
        guest.read(data_gpa(9), PAGE as usize) == patterns(0..1),
        "the read after the restart returns what was written before it"
    );
    assert_eq!(pager.errors(), Vec::<String>::new());
    device.reset();
    assert!(daemon.terminate().success());
}

#[test]
fn a_device_activated_again_on_the_same_connection_is_adopted_again() {
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let pager = Arc::new(TestPager::default());
    let (mut device, mut guest, memfd) = activated(&daemon.socket, Some(&pager));
    assert_eq!(guest.request(T_OUT, 16, data_gpa(0), PAGE as u32), 0);

    // The guest resets the device and drives it again (a reboot): the same connection, so
    // no second POSTCOPY_ADVISE (the daemon would refuse it); the memory table is adopted
    // again with the same userfaultfd.
    device.reset();
    guest
        .mem
        .write_slice(&vec![0u8; TOUCHED as usize], GuestAddress(0))
        .expect("fresh rings");
    guest.avail = 0;
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    guest.kick = kick.try_clone().expect("kick");
    device
        .activate(ActivateContext {
            mem: guest.mem.clone(),
            queues: vec![guest.queue()],
            queue_events: vec![kick],
            interrupt: VirtioInterrupt::new().expect("interrupt"),
            acked_features: 1 << 32,
        })
        .expect("activate again");
    assert_eq!(
        pager.adopted().len(),
        2,
        "adopted again at the second activation"
    );
    assert!(is_hole(&memfd, data_offset(3)));
    assert_eq!(guest.request(T_OUT, 24, data_gpa(3), PAGE as u32), 0);
    assert_eq!(filled(&pager, 1), vec![data_offset(0)]);
    assert_eq!(filled(&pager, 2), vec![data_offset(3)]);
    let file = std::fs::read(&disk).expect("disk");
    assert!(file[24 * 512..24 * 512 + PAGE as usize] == patterns(3..4));
    assert_eq!(pager.errors(), Vec::<String>::new());
    device.reset();
    assert!(daemon.terminate().success());
}

/// The hazard postcopy removes, and the proof that the checks above can fail: without a
/// pager, the daemon reads the holes as zero pages and stores zeros.
#[test]
fn without_a_pager_the_daemon_reads_holes_as_zeros() {
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0xEEu8; REGION as usize]).expect("disk");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let (mut device, mut guest, memfd) = activated(&daemon.socket, None);
    assert!(is_hole(&memfd, data_offset(0)));
    assert_eq!(guest.request(T_OUT, 16, data_gpa(0), PAGE as u32), 0);
    let file = std::fs::read(&disk).expect("disk");
    assert!(file[16 * 512..16 * 512 + PAGE as usize]
        .iter()
        .all(|&b| b == 0));
    device.reset();
    assert!(daemon.terminate().success());
}
