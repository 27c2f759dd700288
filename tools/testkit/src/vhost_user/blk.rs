//! virtio-blk over vhost-user, one request at a time: the request layout in guest memory, the
//! config-space readers, and [`Driver`].

use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::handshake::{handshake, VIRTIO_F_VERSION_1};
use super::queue::{SplitQueue, F_NEXT, F_WRITE};
use super::{guest_memory, set_mem_table};

/// Guest memory size.
pub const MEM_SIZE: usize = 1 << 20;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 16;
/// Distance between the ring blocks of consecutive queues.
pub const RING_STRIDE: u64 = 0x4000;
/// Where request headers go (16 bytes each).
pub const HDR: u64 = 0x3000;
/// Where the status byte of [`Driver::request`] goes.
pub const STATUS: u64 = 0x3100;
/// Where request data goes.
pub const DATA: u64 = 0x1_0000;

/// Feature bit VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit VIRTIO_BLK_F_RO.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit VIRTIO_BLK_F_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature bit VIRTIO_BLK_F_BLK_SIZE.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature bit VIRTIO_BLK_F_SEG_MAX.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature bit VIRTIO_BLK_F_MQ.
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
/// Request type: read.
pub const T_IN: u32 = 0;
/// Request type: write.
pub const T_OUT: u32 = 1;
/// Request type: flush.
pub const T_FLUSH: u32 = 4;
/// Request type: get the device id.
pub const T_GET_ID: u32 = 8;

/// A virtio-blk request header of `kind` at `sector`.
pub fn request_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    hdr
}

/// The capacity (in 512-byte sectors) in a virtio-blk config space.
pub fn config_capacity(cfg: &[u8]) -> u64 {
    u64::from_le_bytes(cfg[..8].try_into().expect("8"))
}

/// The block size in a virtio-blk config space.
pub fn config_blk_size(cfg: &[u8]) -> u32 {
    u32::from_le_bytes(cfg[20..24].try_into().expect("4"))
}

/// A vhost-user frontend driving a virtio-blk backend's queues one request at a time.
pub struct Driver {
    /// The vhost-user connection.
    pub fe: Frontend,
    /// Guest memory shared with the backend.
    pub mem: GuestMemoryMmap,
    queues: Vec<SplitQueue>,
    queue: usize,
    event_idx: bool,
}

impl Driver {
    /// Connects with one queue and no EVENT_IDX.
    pub fn connect(socket: &Path) -> Driver {
        Self::connect_with(socket, 1, false)
    }

    /// Connects, checks the offered features (a writable disk with FLUSH, BLK_SIZE, SEG_MAX,
    /// MQ, EVENT_IDX, and the CONFIG and MQ protocol features), and sets up `queues` queues
    /// (the backend must offer exactly that many), negotiating EVENT_IDX if asked.
    pub fn connect_with(socket: &Path, queues: u16, event_idx: bool) -> Driver {
        assert!((1..=3).contains(&queues), "the layout here fits 3 queues");
        let mem = guest_memory(MEM_SIZE);
        let required = [
            (VIRTIO_BLK_F_FLUSH, "FLUSH"),
            (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
            (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
            (VIRTIO_BLK_F_MQ, "MQ"),
            (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        ];
        let mut want = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_MQ;
        if event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        let (mut fe, offered) = handshake(socket, queues, &required, want);
        assert_eq!(
            offered.features & VIRTIO_BLK_F_RO,
            0,
            "a writable store is offered RO"
        );
        assert!(offered.protocol.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(offered.protocol.contains(VhostUserProtocolFeatures::MQ));
        assert_eq!(
            fe.get_queue_num().expect("get_queue_num"),
            u64::from(queues)
        );
        set_mem_table(&mut fe, &mem);
        let queues = (0..usize::from(queues))
            .map(|q| SplitQueue::setup(&mut fe, &mem, q, QUEUE_SIZE, q as u64 * RING_STRIDE))
            .collect();
        Driver {
            fe,
            mem,
            queues,
            queue: 0,
            event_idx,
        }
    }

    /// Sends the next requests on queue `q`.
    pub fn use_queue(&mut self, q: usize) {
        assert!(q < self.queues.len());
        self.queue = q;
    }

    /// The backend's virtio-blk config space (60 bytes).
    pub fn config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .fe
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .expect("get_config");
        payload
    }

    /// Puts a chain of `(gpa, len, device-writable)` buffers on the current queue, kicks,
    /// and waits for it to be used and for the interrupt; returns the used length.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u32 {
        let mem = &self.mem;
        let q = &mut self.queues[self.queue];
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            q.write_desc(mem, i as u16, (addr, len, flags), i as u16 + 1);
        }
        if self.event_idx {
            q.request_interrupt_after_seen(mem);
        }
        q.push(mem, 0);
        q.publish(mem);

        let deadline = Instant::now() + Duration::from_secs(20);
        assert!(q.wait_call(deadline), "no interrupt came for the request");
        assert_eq!(
            q.used_idx(mem),
            q.used_seen().wrapping_add(1),
            "one request, one completion"
        );
        let (id, len) = q.pop_used(mem).expect("a used element");
        assert_eq!(id, 0, "the head descriptor comes back");
        len
    }

    /// Sends a request with a header, optional data buffer and a status byte; returns
    /// (used length, status).
    pub fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u8) {
        self.mem
            .write_slice(&request_header(kind, sector), GuestAddress(HDR))
            .expect("hdr");
        self.mem
            .write_obj(0xFFu8, GuestAddress(STATUS))
            .expect("status");
        let mut bufs = vec![(HDR, 16, false)];
        if let Some((len, write)) = data {
            bufs.push((DATA, len, write));
        }
        bufs.push((STATUS, 1, true));
        let used = self.submit(&bufs);
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).expect("status");
        (used, status)
    }
}
