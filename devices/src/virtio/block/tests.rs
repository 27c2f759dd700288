use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::QueueWorker;
use super::*;
use crate::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const MEM_SIZE: usize = 0x10_0000;
const SECTORS: u64 = 64;
const QSIZE: u16 = 16;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const SERIAL: &str = "lego-test-disk-serial-too-long";
const STATUS_UNTOUCHED: u8 = 0xee;

fn disk_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    f.write_all(&bytes).unwrap();
    f
}

fn file_bytes(f: &tempfile::NamedTempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut h = f.reopen().unwrap();
    h.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    h.read_exact(&mut buf).unwrap();
    buf
}

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One descriptor as a test writes it: address, length, device-writable.
type D = (u64, u32, bool);

/// The driver side: a mock split queue plus a descriptor allocator.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap<()>,
    mock: MockSplitQueue<'a, GuestMemoryMmap<()>>,
    next_desc: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap<()>) -> Self {
        Self {
            mem,
            mock: MockSplitQueue::new(mem, QSIZE),
            next_desc: 0,
        }
    }

    /// Publishes a chain of linked descriptors; returns its head index.
    fn add(&mut self, descs: &[D]) -> u16 {
        let mut base = self.next_desc;
        if usize::from(base) + descs.len() > usize::from(QSIZE) {
            base = 0;
        }
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let last = i == descs.len() - 1;
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1))
            })
            .collect();
        self.mock.add_desc_chains(&raw, base).unwrap();
        self.next_desc = (base + descs.len() as u16) % QSIZE;
        base
    }

    /// Writes raw descriptors at `index` without publishing them.
    fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(index, raw).unwrap();
    }

    /// Publishes `head` in the available ring.
    fn publish(&self, head: u16) {
        let idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
    }

    fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem
            .write_obj(STATUS_UNTOUCHED, GuestAddress(STATUS))
            .unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

struct Fixture {
    file: tempfile::NamedTempFile,
    mem: GuestMemoryMmap<()>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            file: disk_file(),
            mem: memory(),
        }
    }

    fn worker(&self, driver: &Driver<'_>, read_only: bool) -> QueueWorker {
        let disk = open_disk(self.file.path(), read_only, SERIAL).unwrap();
        let handler = RequestHandler::without_discard(Arc::new(disk));
        let irq = VirtioInterrupt::new().unwrap();
        QueueWorker::new(driver.queue(), self.mem.clone(), Arc::new(handler), irq)
    }
}

fn interrupts(w: &QueueWorker) -> u64 {
    w.interrupt.event().read().unwrap_or(0)
}

#[test]
fn read_request_fills_guest_buffers() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    drv.header(VIRTIO_BLK_T_IN, 2);
    // Two data descriptors, 512 bytes each, not contiguous.
    let head = drv.add(&[
        (HDR, 16, false),
        (DATA, 512, true),
        (DATA + 0x1000, 512, true),
        (STATUS, 1, true),
    ]);
    let mut w = fx.worker(&drv, false);
    assert_eq!(w.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.used(0), (u32::from(head), 1025));
    let mut got = vec![0u8; 512];
    fx.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, file_bytes(&fx.file, 1024, 512));
    fx.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, file_bytes(&fx.file, 1536, 512));
    assert_eq!(interrupts(&w), 1);
}

#[test]
fn write_and_flush_reach_the_file() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    let pattern = vec![0xabu8; 1024];
    fx.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    drv.header(VIRTIO_BLK_T_OUT, 5);
    drv.add(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]);
    let mut w = fx.worker(&drv, false);
    assert_eq!(w.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used(0).1, 1);
    assert_eq!(file_bytes(&fx.file, 5 * 512, 1024), pattern);
    assert_ne!(file_bytes(&fx.file, 4 * 512, 512), vec![0xab; 512]);

    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    drv.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(w.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn indirect_descriptor_tables_are_served() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let fx = Fixture::new();
    let drv = Driver::new(&fx.mem);
    let table = 0x4_0000u64;
    let entries = [
        (HDR, 16u32, VRING_DESC_F_NEXT as u16, 1u16),
        (
            DATA,
            512,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            2,
        ),
        (STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, (addr, len, flags, next)) in entries.into_iter().enumerate() {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        fx.mem
            .write_obj(raw, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    drv.store(0, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    drv.publish(0);
    drv.header(VIRTIO_BLK_T_IN, 7);
    let mut w = fx.worker(&drv, false);
    assert_eq!(w.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used(0), (0, 513));
    let mut got = vec![0u8; 512];
    fx.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, file_bytes(&fx.file, 7 * 512, 512));
}

#[test]
fn header_and_data_may_share_a_descriptor() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    fx.mem
        .write_slice(&[0x5a; 512], GuestAddress(HDR + 16))
        .unwrap();
    drv.header(VIRTIO_BLK_T_OUT, 1);
    drv.add(&[(HDR, 16 + 512, false), (STATUS, 1, true)]);
    let mut w = fx.worker(&drv, false);
    w.process_queue();
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(file_bytes(&fx.file, 512, 512), vec![0x5a; 512]);
}

#[test]
fn get_id_returns_the_serial() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    fx.mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
    drv.header(VIRTIO_BLK_T_GET_ID, 0);
    drv.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    let mut w = fx.worker(&drv, false);
    w.process_queue();
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used(0).1, 21);
    let mut id = [0u8; 21];
    fx.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..20], &SERIAL.as_bytes()[..20]);
    assert_eq!(id[20], 0xff, "nothing written past the buffer");
}

#[test]
fn read_only_disk_rejects_writes() {
    let fx = Fixture::new();
    let before = file_bytes(&fx.file, 0, 1024);
    let mut drv = Driver::new(&fx.mem);
    fx.mem.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
    drv.header(VIRTIO_BLK_T_OUT, 0);
    drv.add(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    let mut w = fx.worker(&drv, true);
    w.process_queue();
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(file_bytes(&fx.file, 0, 1024), before);

    // Reads still work.
    drv.header(VIRTIO_BLK_T_IN, 0);
    drv.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    w.process_queue();
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);

    let dev = Block::new(fx.file.path(), true, "ro").unwrap();
    assert_ne!(dev.avail_features() & feature(VIRTIO_BLK_F_RO), 0);
    let rw = Block::new(fx.file.path(), false, "rw").unwrap();
    assert_eq!(rw.avail_features() & feature(VIRTIO_BLK_F_RO), 0);
}

#[test]
fn out_of_range_and_unsupported_requests_fail() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    let mut w = fx.worker(&drv, false);
    let cases = [
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, SECTORS, 512, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, u64::MAX / 256, 512, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, 0, 100, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, SECTORS - 2, 1024, VIRTIO_BLK_S_OK),
        (11, 0, 512, VIRTIO_BLK_S_UNSUPP),
    ];
    for (t, sector, len, want) in cases {
        drv.header(t, sector);
        drv.add(&[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)]);
        w.process_queue();
        assert_eq!(
            drv.status(),
            want as u8,
            "type {t} sector {sector} len {len}"
        );
    }
    assert_eq!(drv.used_idx(), cases.len() as u16);
}

#[test]
fn capacity_and_config_space() {
    let fx = Fixture::new();
    let dev = Block::new(fx.file.path(), false, "x").unwrap();
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut v = [0u8; 4];
    dev.read_config(12, &mut v);
    assert_eq!(u32::from_le_bytes(v), SEG_MAX);
    dev.read_config(20, &mut v);
    assert_eq!(u32::from_le_bytes(v), 512);
    dev.read_config(200, &mut v);
    assert_eq!(v, [0; 4]);
    let f = dev.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f & feature(bit), 0, "feature {bit}");
    }
}

#[test]
fn malformed_chains_complete_without_panicking() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    let mut w = fx.worker(&drv, false);
    let outside = MEM_SIZE as u64 + 0x1000;
    // (chain, expected status, expected used length)
    let cases: [(Vec<D>, u8, u32); 6] = [
        // Status descriptor is device-readable: no status can be written.
        (
            vec![(HDR, 16, false), (STATUS, 1, false)],
            STATUS_UNTOUCHED,
            0,
        ),
        // Status descriptor outside guest memory.
        (
            vec![(HDR, 16, false), (outside, 1, true)],
            STATUS_UNTOUCHED,
            0,
        ),
        // Header too short.
        (
            vec![(HDR, 8, false), (STATUS, 1, true)],
            VIRTIO_BLK_S_IOERR as u8,
            1,
        ),
        // A readable descriptor after a writable one.
        (
            vec![
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA, 512, false),
                (STATUS, 1, true),
            ],
            VIRTIO_BLK_S_IOERR as u8,
            1,
        ),
        // Data outside guest memory.
        (
            vec![(HDR, 16, false), (outside, 512, true), (STATUS, 1, true)],
            VIRTIO_BLK_S_IOERR as u8,
            1,
        ),
        // Data straddling the end of guest memory.
        (
            vec![
                (HDR, 16, false),
                (MEM_SIZE as u64 - 256, 512, true),
                (STATUS, 1, true),
            ],
            VIRTIO_BLK_S_IOERR as u8,
            1,
        ),
    ];
    for (i, (chain, status, used_len)) in cases.iter().enumerate() {
        drv.header(VIRTIO_BLK_T_IN, 0);
        let head = drv.add(chain);
        assert_eq!(w.process_queue(), 1, "case {i}");
        assert_eq!(drv.status(), *status, "case {i}");
        assert_eq!(drv.used(i as u16), (u32::from(head), *used_len), "case {i}");
    }
}

#[test]
fn looping_and_out_of_range_heads_do_not_hang() {
    let fx = Fixture::new();
    let drv = Driver::new(&fx.mem);
    let mut w = fx.worker(&drv, false);
    drv.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ... (a loop of readable descriptors).
    drv.store(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
    drv.store(1, DATA, 512, VRING_DESC_F_NEXT as u16, 0);
    drv.publish(0);
    // A head index beyond the queue.
    drv.publish(QSIZE + 3);
    // A valid request after both.
    drv.store(2, HDR, 16, VRING_DESC_F_NEXT as u16, 3);
    drv.store(3, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
    drv.publish(2);
    w.process_queue();
    // The looping chain and the good one were completed; the bad head could not be.
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(drv.used(0), (0, 0));
    assert_eq!(drv.used(1), (2, 1));
    // GET_ID-less IN of 0 bytes is fine: status OK.
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn corrupt_available_index_does_not_spin() {
    let fx = Fixture::new();
    let drv = Driver::new(&fx.mem);
    let mut w = fx.worker(&drv, false);
    drv.mock.avail().idx().store(QSIZE + 5);
    let start = Instant::now();
    assert_eq!(w.process_queue(), 0);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(interrupts(&w), 0);
}

#[test]
fn one_interrupt_per_batch() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    for _ in 0..3 {
        drv.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    let mut w = fx.worker(&drv, false);
    assert_eq!(w.process_queue(), 3);
    assert_eq!(interrupts(&w), 1);
    assert_eq!(w.process_queue(), 0);
    assert_eq!(interrupts(&w), 0, "no interrupt without completions");
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    let mut w = fx.worker(&drv, false);
    w.queue.set_event_idx(true);
    // used_event lives after the available ring: ask for an interrupt once the
    // used index passes 2.
    let used_event = drv.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
    fx.mem.write_obj(2u16, GuestAddress(used_event)).unwrap();
    drv.header(VIRTIO_BLK_T_FLUSH, 0);

    drv.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(w.process_queue(), 1);
    assert_eq!(
        interrupts(&w),
        0,
        "used index 1 has not passed used_event 2"
    );
    // The device publishes avail_event = next available index after the used ring.
    let avail_event = drv.mock.used_addr().0 + 4 + 8 * u64::from(QSIZE);
    assert_eq!(
        fx.mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(),
        1
    );

    drv.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    drv.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(w.process_queue(), 2);
    assert_eq!(interrupts(&w), 1, "used index 3 passed used_event 2");
}

fn wait_for(event: &EventFd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if event.read().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn end_to_end_through_the_mmio_transport_and_worker_thread() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::{reg, MmioTransport};
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

    let fx = Fixture::new();
    let mut drv = Driver::new(&fx.mem);
    let dev = Block::new(fx.file.path(), false, SERIAL).unwrap();
    let mut t = MmioTransport::new(dev, fx.mem.clone()).unwrap();
    let wr = |t: &mut MmioTransport<Block>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX);
    wr(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, reg::DRIVER_FEATURES, features as u32);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(&mut t, reg::STATUS, ok);
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_NUM, u32::from(QSIZE));
    wr(
        &mut t,
        reg::QUEUE_DESC_LOW,
        drv.mock.desc_table_addr().0 as u32,
    );
    wr(
        &mut t,
        reg::QUEUE_DRIVER_LOW,
        drv.mock.avail_addr().0 as u32,
    );
    wr(&mut t, reg::QUEUE_DEVICE_LOW, drv.mock.used_addr().0 as u32);
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::STATUS, ok | STATUS_DRIVER_OK);
    assert!(t.is_active() && t.device().is_active());

    drv.header(VIRTIO_BLK_T_IN, 3);
    drv.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    wr(&mut t, reg::QUEUE_NOTIFY, 0);
    assert!(
        wait_for(t.interrupt_event()),
        "no interrupt from the worker"
    );
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    fx.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, file_bytes(&fx.file, 3 * 512, 512));
    let mut isr = [0u8; 4];
    t.read(reg::INTERRUPT_STATUS, &mut isr);
    assert_eq!(u32::from_le_bytes(isr), 1);

    // Reset stops and joins the worker.
    wr(&mut t, reg::STATUS, 0);
    assert!(!t.device().is_active());
}

#[test]
fn activation_requires_a_ready_queue_and_reset_is_idempotent() {
    let fx = Fixture::new();
    let mut dev = Block::new(fx.file.path(), false, "x").unwrap();
    let ctx = ActivateContext {
        mem: fx.mem.clone(),
        queues: vec![Queue::new(QUEUE_SIZE).unwrap()],
        queue_events: vec![EventFd::new(0).unwrap()],
        interrupt: VirtioInterrupt::new().unwrap(),
        acked_features: feature(VIRTIO_F_VERSION_1),
    };
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueNotReady(0))
    ));
    let ctx = ActivateContext {
        mem: fx.mem.clone(),
        queues: vec![],
        queue_events: vec![],
        interrupt: VirtioInterrupt::new().unwrap(),
        acked_features: 0,
    };
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    dev.reset();
    dev.reset();
    assert!(!dev.is_active());
}

#[test]
fn missing_disk_is_a_readable_error() {
    let err = Block::new(std::path::Path::new("/nonexistent/disk.img"), false, "x")
        .err()
        .unwrap();
    assert!(err
        .to_string()
        .starts_with("could not open the disk /nonexistent/disk.img"));
}

#[test]
fn a_disk_smaller_than_a_sector_is_a_readable_error() {
    let tiny = tempfile::NamedTempFile::new().unwrap();
    let err = Block::new(tiny.path(), false, "x").err().unwrap();
    assert!(
        err.to_string()
            .ends_with("holds 0 bytes, less than one 512-byte sector"),
        "{err}"
    );
}
