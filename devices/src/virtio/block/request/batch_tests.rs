//! Batches of requests served together: many in flight, barriers, failures confined to their
//! requests, malformed chains among good ones. The store defers every read and write until it
//! is waited on and logs what happens when, so the order of submission, completion and
//! barriers is visible.

use std::sync::Mutex;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress};

use super::test_rig::Rig;
use super::*;
use crate::virtio::block::store::{StoreOp, StorePending};

/// Bytes in memory; reads and writes happen when waited on; offsets in `bad` fail.
struct DeferredStore {
    bytes: Arc<Mutex<Vec<u8>>>,
    log: Arc<Mutex<Vec<String>>>,
    bad: Vec<u64>,
}

impl DeferredStore {
    fn new(len: usize, bad: Vec<u64>) -> Self {
        Self {
            bytes: Arc::new(Mutex::new(vec![0; len])),
            log: Arc::new(Mutex::new(Vec::new())),
            bad,
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }
}

fn injected() -> StoreError {
    StoreError::Io {
        op: "the fake",
        source: std::io::Error::other("injected failure"),
    }
}

impl BlockStore for DeferredStore {
    fn capacity(&self) -> u64 {
        self.bytes.lock().expect("lock").len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn serial(&self) -> &str {
        "deferred"
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), StoreError> {
        panic!("reads must be submitted");
    }
    fn write_at(&self, _offset: u64, _data: &[u8]) -> Result<(), StoreError> {
        panic!("writes must be submitted");
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.log.lock().expect("lock").push("flush".into());
        Ok(())
    }
    fn submit(&self, ops: &[StoreOp<'_>]) -> Vec<StorePending> {
        self.log
            .lock()
            .expect("lock")
            .push(format!("submit {}", ops.len()));
        ops.iter()
            .map(|op| {
                let (bytes, log) = (self.bytes.clone(), self.log.clone());
                let fail = match *op {
                    StoreOp::Read { offset, .. } | StoreOp::Write { offset, .. } => {
                        self.bad.contains(&offset)
                    }
                };
                let op = match *op {
                    StoreOp::Read { offset, len } => (offset, len, None),
                    StoreOp::Write { offset, data } => (offset, data.len(), Some(data.to_vec())),
                };
                StorePending::deferred(move || {
                    let (offset, len, data) = op;
                    let at = offset as usize;
                    let kind = if data.is_some() { "write" } else { "read" };
                    log.lock().expect("lock").push(format!("{kind} {offset}"));
                    if fail {
                        return Err(injected());
                    }
                    let mut b = bytes.lock().expect("lock");
                    match data {
                        Some(d) => {
                            b[at..at + len].copy_from_slice(&d);
                            Ok(Vec::new())
                        }
                        None => Ok(b[at..at + len].to_vec()),
                    }
                })
            })
            .collect()
    }
}

const HDRS: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x3F_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// One request of a batch: its header (type, sector), its data (len, device-writable), and
/// whether it has a status byte.
#[derive(Clone, Copy)]
struct Req {
    kind: u32,
    sector: u64,
    data: Option<(u32, bool)>,
    status: bool,
    header_len: u32,
}

fn req(kind: u32, sector: u64, data: Option<(u32, bool)>) -> Req {
    Req {
        kind,
        sector,
        data,
        status: true,
        header_len: 16,
    }
}

impl Rig<DeferredStore> {
    fn new(store: DeferredStore) -> Self {
        Self::with_memory(store, 0x40_0000)
    }

    fn data_addr(i: usize) -> u64 {
        DATA + 0x1000 * i as u64
    }

    fn status(&self, i: usize) -> u8 {
        self.mem
            .read_obj(GuestAddress(STATUS + i as u64))
            .expect("status")
    }

    /// Lays out `reqs` as chains on one queue and serves them as one batch.
    fn serve(&self, reqs: &[Req]) -> Vec<(u16, Completion)> {
        let q = MockSplitQueue::new(&self.mem, 256);
        let mut descs = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let hdr = HDRS + 16 * i as u64;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&r.kind.to_le_bytes());
            h[8..].copy_from_slice(&r.sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(hdr)).expect("header");
            self.mem
                .write_obj(0xFFu8, GuestAddress(STATUS + i as u64))
                .expect("status");
            let mut chain = vec![(hdr, r.header_len, 0u16)];
            if let Some((len, writable)) = r.data {
                chain.push((Self::data_addr(i), len, if writable { WRITE } else { 0 }));
            }
            if r.status {
                chain.push((STATUS + i as u64, 1, WRITE));
            }
            let first = descs.len() as u16;
            let n = chain.len();
            for (k, (addr, len, flags)) in chain.into_iter().enumerate() {
                let last = k + 1 == n;
                let flags = if last { flags } else { flags | NEXT };
                let next = if last { 0 } else { first + k as u16 + 1 };
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    addr, len, flags, next,
                )));
            }
        }
        q.add_desc_chains(&descs, 0).expect("chains");
        let mut queue: Queue = q.create_queue().expect("queue");
        let chains: Vec<_> = queue.iter(&self.mem).expect("iter").collect();
        assert_eq!(chains.len(), reqs.len(), "every chain is available");
        self.handler.process_batch(&self.mem, chains)
    }
}

fn pattern(i: usize) -> Vec<u8> {
    (0..4096).map(|b| (b * 7 + i * 13) as u8).collect()
}

#[test]
fn many_requests_are_in_flight_together_and_complete_with_their_data() {
    let rig = Rig::new(DeferredStore::new(1 << 20, vec![]));
    let writes: Vec<Req> = (0..32)
        .map(|i| {
            rig.mem
                .write_slice(&pattern(i), GuestAddress(Rig::data_addr(i)))
                .expect("data");
            req(VIRTIO_BLK_T_OUT, 8 * (31 - i as u64), Some((4096, false)))
        })
        .collect();
    let done = rig.serve(&writes);
    assert_eq!(done.len(), 32);
    for (i, (_, c)) in done.iter().enumerate() {
        assert_eq!(c.status, Some(0), "write {i}");
        assert_eq!(c.used_len, 1, "write {i}");
    }
    // All 32 went to the store in one submission before any was waited on.
    let log = rig.store.log();
    assert_eq!(log[0], "submit 32", "{log:?}");
    assert_eq!(log.len(), 33);
    for i in 0..32 {
        rig.mem
            .write_slice(&[0u8; 4096], GuestAddress(Rig::data_addr(i)))
            .expect("clear");
    }
    let reads: Vec<Req> = (0..32)
        .map(|i| req(VIRTIO_BLK_T_IN, 8 * (31 - i as u64), Some((4096, true))))
        .collect();
    let done = rig.serve(&reads);
    let heads: Vec<u16> = done.iter().map(|(h, _)| *h).collect();
    let expected: Vec<u16> = (0..32).map(|i| 3 * i).collect();
    assert_eq!(heads, expected, "completions come back in chain order");
    for (i, (_, c)) in done.iter().enumerate() {
        assert_eq!(
            *c,
            Completion {
                used_len: 4097,
                status: Some(0)
            },
            "read {i}"
        );
        let mut back = vec![0u8; 4096];
        rig.mem
            .read_slice(&mut back, GuestAddress(Rig::data_addr(i)))
            .expect("read back");
        assert_eq!(back, pattern(i), "read {i} returned its own block");
        assert_eq!(rig.status(i), 0);
    }
}

#[test]
fn a_flush_starts_only_after_the_writes_before_it_completed() {
    let rig = Rig::new(DeferredStore::new(1 << 20, vec![]));
    let w = |sector| req(VIRTIO_BLK_T_OUT, sector, Some((4096, false)));
    let done = rig.serve(&[w(0), w(8), req(VIRTIO_BLK_T_FLUSH, 0, None), w(16)]);
    assert!(done.iter().all(|(_, c)| c.status == Some(0)), "{done:?}");
    assert_eq!(
        rig.store.log(),
        vec![
            "submit 2",
            "write 0",
            "write 4096",
            "flush",
            "submit 1",
            "write 8192"
        ]
    );
}

#[test]
fn a_failing_store_operation_fails_only_its_own_request() {
    let rig = Rig::new(DeferredStore::new(1 << 20, vec![8192]));
    let r = |sector| req(VIRTIO_BLK_T_IN, sector, Some((4096, true)));
    let done = rig.serve(&[r(0), r(8), r(16), r(24)]);
    let statuses: Vec<Option<u8>> = done.iter().map(|(_, c)| c.status).collect();
    assert_eq!(
        statuses,
        vec![Some(0), Some(0), Some(VIRTIO_BLK_S_IOERR as u8), Some(0)]
    );
    assert_eq!(done[2].1.used_len, 1, "nothing but the status was written");
    assert_eq!(rig.status(2), VIRTIO_BLK_S_IOERR as u8);
    // A large read with one failing piece fails as a whole, and every piece was awaited.
    let rig = Rig::new(DeferredStore::new(4 << 20, vec![CHUNK as u64]));
    // Its data buffer overlaps the next slots' (unused here).
    let big = req(VIRTIO_BLK_T_IN, 0, Some((2 * CHUNK as u32, true)));
    let done = rig.serve(&[big, r(4096)]);
    assert_eq!(done[0].1.status, Some(VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(done[1].1.status, Some(0));
    let reads = rig
        .store
        .log()
        .iter()
        .filter(|l| l.starts_with("read"))
        .count();
    assert_eq!(reads, 3, "{:?}", rig.store.log());
    assert_eq!(
        done[0].1.used_len,
        CHUNK as u32 + 1,
        "the first piece reached the guest"
    );
}

#[test]
fn a_malformed_chain_in_the_middle_does_not_stop_the_others() {
    let rig = Rig::new(DeferredStore::new(1 << 20, vec![]));
    rig.mem
        .write_slice(&pattern(0), GuestAddress(Rig::data_addr(0)))
        .expect("data");
    let no_status = Req {
        status: false,
        ..req(VIRTIO_BLK_T_OUT, 8, Some((4096, false)))
    };
    let short_header = Req {
        header_len: 8,
        ..req(VIRTIO_BLK_T_IN, 0, Some((4096, true)))
    };
    let misaligned = req(VIRTIO_BLK_T_IN, 0, Some((100, true)));
    let outside = req(VIRTIO_BLK_T_IN, 1 << 20, Some((4096, true)));
    let done = rig.serve(&[
        req(VIRTIO_BLK_T_OUT, 0, Some((4096, false))),
        no_status,
        short_header,
        misaligned,
        outside,
        req(VIRTIO_BLK_T_IN, 0, Some((4096, true))),
    ]);
    let got: Vec<Completion> = done.iter().map(|(_, c)| *c).collect();
    let ioerr = Some(VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        got[0],
        Completion {
            used_len: 1,
            status: Some(0)
        }
    );
    assert_eq!(
        got[1],
        Completion {
            used_len: 0,
            status: None
        }
    );
    assert_eq!(got[2].status, ioerr);
    assert_eq!(got[3].status, ioerr);
    assert_eq!(got[4].status, ioerr);
    assert_eq!(
        got[5],
        Completion {
            used_len: 4097,
            status: Some(0)
        }
    );
    // The read after the write in the same batch is not ordered against it, but both ran.
    assert_eq!(rig.store.log()[0], "submit 2");
}
