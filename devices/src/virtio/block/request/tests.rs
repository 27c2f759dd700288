//! Request handling against a fake store, with chains laid out by virtio-queue's mock queue.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::test_rig::Rig;
use super::*;

/// An in-memory store whose failures and capabilities tests switch on and off.
struct FakeStore {
    bytes: Mutex<Vec<u8>>,
    fail: AtomicBool,
    read_only: bool,
    discard: bool,
    flushes: AtomicU32,
    ops: Mutex<Vec<String>>,
}

impl FakeStore {
    fn new(len: usize) -> Self {
        Self {
            bytes: Mutex::new(vec![0; len]),
            fail: AtomicBool::new(false),
            read_only: false,
            discard: true,
            flushes: AtomicU32::new(0),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "the fake",
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
}

impl BlockStore for FakeStore {
    fn capacity(&self) -> u64 {
        self.bytes.lock().expect("lock").len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn serial(&self) -> &str {
        "lego-remote-disk:a-rather-long-volume-name"
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check()?;
        let b = self.bytes.lock().expect("lock");
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        let mut b = self.bytes.lock().expect("lock");
        b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        self.discard
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check()?;
        self.ops
            .lock()
            .expect("lock")
            .push(format!("discard {offset} {len}"));
        Ok(())
    }
    fn supports_write_zeroes(&self) -> bool {
        self.discard
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StoreError> {
        self.check()?;
        self.ops
            .lock()
            .expect("lock")
            .push(format!("zero {offset} {len} {unmap}"));
        Ok(())
    }
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x1F_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

impl Rig<FakeStore> {
    fn new(store: FakeStore) -> Self {
        Self::with_memory(store, 0x20_0000)
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).expect("header");
        self.mem
            .write_slice(&[0xFF], GuestAddress(STATUS))
            .expect("status");
    }

    /// Builds a chain of `(addr, len, flags)` descriptors and serves it.
    fn run(&self, descs: &[(u64, u32, u16)]) -> Completion {
        let q = MockSplitQueue::new(&self.mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(SplitDescriptor::new(a, l, f, 0)))
            .collect();
        let chain = q.build_desc_chain(&raw).expect("chain");
        self.handler.process(&self.mem, chain)
    }

    fn status_byte(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).expect("status")
    }

    fn simple(&self, kind: u32, sector: u64, data: Option<(u32, u16)>) -> Completion {
        self.header(kind, sector);
        let mut d = vec![(HDR, 16, R)];
        if let Some((len, flags)) = data {
            d.push((DATA, len, flags));
        }
        d.push((STATUS, 1, W));
        self.run(&d)
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn write_then_read_back() {
    let rig = Rig::new(FakeStore::new(64 << 10));
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 251) as u8).collect();
    rig.mem
        .write_slice(&pattern, GuestAddress(DATA))
        .expect("data");
    let c = rig.simple(VIRTIO_BLK_T_OUT, 8, Some((4096, R)));
    assert_eq!(
        c,
        Completion {
            used_len: 1,
            status: Some(OK)
        }
    );
    assert_eq!(rig.status_byte(), OK);
    assert_eq!(
        &rig.store.bytes.lock().expect("lock")[4096..8192],
        &pattern[..]
    );

    rig.mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA))
        .expect("clear");
    let c = rig.simple(VIRTIO_BLK_T_IN, 8, Some((4096, W)));
    assert_eq!(
        c,
        Completion {
            used_len: 4097,
            status: Some(OK)
        }
    );
    let mut back = vec![0u8; 4096];
    rig.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read");
    assert_eq!(back, pattern);
}

#[test]
fn any_framing_of_header_data_and_status_works() {
    let rig = Rig::new(FakeStore::new(64 << 10));
    rig.store.bytes.lock().expect("lock")[512..1536].fill(0x5A);
    rig.header(VIRTIO_BLK_T_IN, 1);
    // Header split in two, data in two writable pieces, status sharing the last piece.
    let c = rig.run(&[
        (HDR, 7, R),
        (HDR + 7, 9, R),
        (DATA, 512, W),
        (DATA + 0x1000, 513, W),
    ]);
    assert_eq!(
        c,
        Completion {
            used_len: 1025,
            status: Some(OK)
        }
    );
    let mut back = vec![0u8; 513];
    rig.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .expect("read");
    assert!(back[..512].iter().all(|&b| b == 0x5A));
    assert_eq!(back[512], OK);
}

#[test]
fn large_requests_cross_chunks() {
    let rig = Rig::new(FakeStore::new(4 << 20));
    let len = CHUNK + 4096;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("guest memory");
    let rig = Rig { mem, ..rig };
    rig.mem
        .write_slice(&pattern, GuestAddress(0x20_0000))
        .expect("data");
    rig.header(VIRTIO_BLK_T_OUT, 0);
    let c = rig.run(&[(HDR, 16, R), (0x20_0000, len as u32, R), (STATUS, 1, W)]);
    assert_eq!(c.status, Some(OK));
    assert_eq!(&rig.store.bytes.lock().expect("lock")[..len], &pattern[..]);
}

#[test]
fn flush_reaches_the_store() {
    let rig = Rig::new(FakeStore::new(4096));
    let c = rig.simple(VIRTIO_BLK_T_FLUSH, 0, None);
    assert_eq!(c.status, Some(OK));
    assert_eq!(rig.store.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn get_id_returns_the_first_20_bytes_of_the_serial() {
    let rig = Rig::new(FakeStore::new(4096));
    let c = rig.simple(VIRTIO_BLK_T_GET_ID, 0, Some((20, W)));
    assert_eq!(
        c,
        Completion {
            used_len: 21,
            status: Some(OK)
        }
    );
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id, b"lego-remote-disk:a-r");
}

#[test]
fn store_errors_become_ioerr() {
    let rig = Rig::new(FakeStore::new(64 << 10));
    rig.store.fail.store(true, Ordering::SeqCst);
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        let flags = if kind == VIRTIO_BLK_T_IN { W } else { R };
        let c = rig.simple(kind, 0, Some((512, flags)));
        assert_eq!(c.status, Some(IOERR), "type {kind}");
        assert_eq!(rig.status_byte(), IOERR);
    }
    assert_eq!(rig.simple(VIRTIO_BLK_T_FLUSH, 0, None).status, Some(IOERR));
}

#[test]
fn bad_ranges_and_lengths_become_ioerr() {
    let rig = Rig::new(FakeStore::new(8192));
    // Past the end, straddling the end, sector overflow, not whole sectors.
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_IN, 16, Some((512, W))).status,
        Some(IOERR)
    );
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_OUT, 15, Some((1024, R))).status,
        Some(IOERR)
    );
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_IN, u64::MAX / 256, Some((512, W)))
            .status,
        Some(IOERR)
    );
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_OUT, 0, Some((100, R))).status,
        Some(IOERR)
    );
}

#[test]
fn unknown_types_are_unsupported() {
    let rig = Rig::new(FakeStore::new(4096));
    assert_eq!(rig.simple(99, 0, None).status, Some(UNSUPP));
    assert_eq!(rig.status_byte(), UNSUPP);
}

#[test]
fn read_only_stores_refuse_writes() {
    let rig = Rig::new(FakeStore {
        read_only: true,
        ..FakeStore::new(4096)
    });
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_OUT, 0, Some((512, R))).status,
        Some(IOERR)
    );
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_IN, 0, Some((512, W))).status,
        Some(OK)
    );
}

#[test]
fn chains_without_a_status_byte_complete_empty() {
    let rig = Rig::new(FakeStore::new(4096));
    rig.header(VIRTIO_BLK_T_IN, 0);
    let c = rig.run(&[(HDR, 16, R), (DATA, 512, R)]);
    assert_eq!(
        c,
        Completion {
            used_len: 0,
            status: None
        }
    );
}

#[test]
fn short_headers_and_wild_addresses_become_ioerr() {
    let rig = Rig::new(FakeStore::new(4096));
    rig.header(VIRTIO_BLK_T_IN, 0);
    let c = rig.run(&[(HDR, 8, R), (STATUS, 1, W)]);
    assert_eq!(c.status, Some(IOERR));
    // A readable buffer outside guest memory.
    let c = rig.run(&[(HDR, 16, R), (0x4000_0000, 512, R), (STATUS, 1, W)]);
    assert_eq!(
        c,
        Completion {
            used_len: 1,
            status: Some(IOERR)
        }
    );
    // A writable buffer outside guest memory: the status byte is still the chain's last
    // byte, inside guest memory, so the request fails there.
    let c = rig.run(&[(HDR, 16, R), (0x4000_0000, 512, W), (STATUS, 1, W)]);
    assert_eq!(
        c,
        Completion {
            used_len: 1,
            status: Some(IOERR)
        }
    );
    // A writable buffer that wraps around the address space.
    let c = rig.run(&[(HDR, 16, R), (u64::MAX - 10, 512, W), (STATUS, 1, W)]);
    assert_eq!(c.status, Some(IOERR));
    // A status byte outside guest memory: nowhere safe to write one.
    let c = rig.run(&[(HDR, 16, R), (0x4000_0000, 1, W)]);
    assert_eq!(
        c,
        Completion {
            used_len: 0,
            status: None
        }
    );
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes_are_checked_and_forwarded() {
    let rig = Rig::new(FakeStore::new(64 << 10));
    let put = |segs: &[[u8; 16]]| {
        let b: Vec<u8> = segs.concat();
        rig.mem
            .write_slice(&b, GuestAddress(DATA))
            .expect("segments");
        b.len() as u32
    };
    let n = put(&[segment(2, 4, 0), segment(10, 1, 0)]);
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_DISCARD, 0, Some((n, R))).status,
        Some(OK)
    );
    let n = put(&[segment(0, 8, 1)]);
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((n, R)))
            .status,
        Some(OK)
    );
    assert_eq!(
        *rig.store.ops.lock().expect("lock"),
        vec!["discard 1024 2048", "discard 5120 512", "zero 0 4096 true"]
    );
    // The unmap flag is not allowed on DISCARD.
    let n = put(&[segment(0, 1, 1)]);
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_DISCARD, 0, Some((n, R))).status,
        Some(UNSUPP)
    );
    // Out of range, and a ragged segment list.
    let n = put(&[segment(127, 2, 0)]);
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_DISCARD, 0, Some((n, R))).status,
        Some(IOERR)
    );
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_DISCARD, 0, Some((20, R))).status,
        Some(IOERR)
    );
    assert_eq!(
        rig.store.ops.lock().expect("lock").len(),
        3,
        "nothing more ran"
    );

    let rig = Rig::new(FakeStore {
        discard: false,
        ..FakeStore::new(4096)
    });
    rig.mem
        .write_slice(&segment(0, 1, 0), GuestAddress(DATA))
        .expect("segment");
    assert_eq!(
        rig.simple(VIRTIO_BLK_T_DISCARD, 0, Some((16, R))).status,
        Some(UNSUPP)
    );
}
