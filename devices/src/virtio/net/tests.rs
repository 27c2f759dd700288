use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ctrl::{parse, CtrlQueue, Request};
use super::*;
use crate::virtio::VirtioInterrupt;

const QSIZE: u16 = 16;
const REQ: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const UNTOUCHED: u8 = 0xee;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn features_offer_offloads_and_multi_queue_only_with_several_pairs() {
    let one = device_features(1);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ] {
        assert_ne!(one & feature(bit), 0, "bit {bit}");
    }
    assert_eq!(
        one & (feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ)),
        0
    );
    let four = device_features(4);
    assert_eq!(
        four & !one,
        feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ)
    );
}

#[test]
fn config_space_holds_mac_link_up_and_pairs() {
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let c = config_space(mac, 3);
    assert_eq!(&c[..6], &mac);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 3);
    // Partial and out-of-range reads, as the transport does them.
    let mut status = [0xffu8; 2];
    read_config_bytes(&c, 6, &mut status);
    assert_eq!(status, [1, 0]);
    let mut beyond = [0xffu8; 4];
    read_config_bytes(&c, 8, &mut beyond);
    assert_eq!(beyond, [3, 0, 0, 0]);
}

#[test]
fn tap_offloads_follow_the_acked_receive_features() {
    assert_eq!(tap_offloads(0), 0);
    // TSO without checksum offload is meaningless to the tap: nothing.
    assert_eq!(tap_offloads(feature(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(
        tap_offloads(feature(VIRTIO_NET_F_GUEST_CSUM)),
        tap::TUN_F_CSUM
    );
    assert_eq!(
        tap_offloads(device_features(1)),
        tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6
    );
    // The host-side (transmit) offloads need nothing from the tap.
    assert_eq!(
        tap_offloads(feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4)),
        0
    );
}

#[test]
fn queue_layout_puts_the_control_queue_after_the_pairs_the_driver_sees() {
    let mq = feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ);
    assert_eq!(queue_layout(mq, 4), (4, Some(8)));
    assert_eq!(queue_layout(feature(VIRTIO_NET_F_CTRL_VQ), 4), (1, Some(2)));
    assert_eq!(queue_layout(0, 4), (1, None));
}

#[test]
fn vhost_gets_the_acked_features_it_knows_and_must_know_the_ring_ones() {
    let acked = feature(VIRTIO_F_VERSION_1)
        | feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_NET_F_MAC)
        | feature(VIRTIO_NET_F_CSUM);
    let supported = vhost::RING_FEATURES;
    assert_eq!(
        vhost::negotiate(acked, supported).unwrap(),
        acked & vhost::RING_FEATURES
    );
    let old = supported & !feature(VIRTIO_RING_F_EVENT_IDX);
    let e = vhost::negotiate(acked, old).unwrap_err();
    assert!(
        matches!(e, vhost::VhostNetError::Features { missing } if missing == feature(VIRTIO_RING_F_EVENT_IDX)),
        "{e}"
    );
    // A ring feature the driver did not ack does not matter.
    assert!(vhost::negotiate(acked & !feature(VIRTIO_RING_F_EVENT_IDX), old).is_ok());
}

#[test]
fn a_device_needs_taps() {
    let e = Net::new(Vec::new(), [0; 6], NetBackend::InProcess)
        .err()
        .unwrap();
    assert!(matches!(e, NetError::NoTaps), "{e}");
    assert_eq!(NetBackend::default(), NetBackend::Auto);
    assert_eq!(NetBackend::VhostNet.to_string(), "vhost-net");
}

#[test]
fn parse_reads_class_command_and_data() {
    let mq = VIRTIO_NET_CTRL_MQ as u8;
    let set = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    assert_eq!(parse(&[mq, set, 2, 0]), Request::SetPairs(2));
    assert_eq!(parse(&[mq, set, 0, 1, 9, 9]), Request::SetPairs(256));
    assert_eq!(parse(&[mq, set, 2]), Request::Truncated);
    assert_eq!(parse(&[mq]), Request::Truncated);
    assert_eq!(parse(&[]), Request::Truncated);
    assert_eq!(
        parse(&[mq, 1, 0, 0]),
        Request::Unsupported {
            class: mq,
            command: 1
        }
    );
    assert_eq!(
        parse(&[VIRTIO_NET_CTRL_RX as u8, 0, 1]),
        Request::Unsupported {
            class: 0,
            command: 0
        }
    );
}

/// The driver side of a control queue.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap<()>,
    mock: MockSplitQueue<'a, GuestMemoryMmap<()>>,
    next: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap<()>) -> Self {
        Self {
            mem,
            mock: MockSplitQueue::new(mem, QSIZE),
            next: 0,
        }
    }

    fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
    }

    /// Publishes a chain of (address, length, device-writable) descriptors.
    fn add(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let base = self.next;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1))
            })
            .collect();
        self.mock.add_desc_chains(&raw, base).unwrap();
        self.next = base + descs.len() as u16;
        base
    }

    /// Publishes a request: `bytes` readable in one descriptor, then the status byte.
    fn request(&mut self, bytes: &[u8]) -> u16 {
        self.mem.write_slice(bytes, GuestAddress(REQ)).unwrap();
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        self.add(&[(REQ, bytes.len() as u32, false), (STATUS, 1, true)])
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
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
}

type Calls = Arc<Mutex<Vec<u16>>>;

fn control(drv: &Driver<'_>, mem: &GuestMemoryMmap<()>, fail: bool) -> (CtrlQueue, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let set = Box::new(move |n: u16| {
        seen.lock().unwrap().push(n);
        if fail {
            Err("the tap refused".to_string())
        } else {
            Ok(())
        }
    });
    let irq = VirtioInterrupt::new().unwrap();
    (CtrlQueue::new(drv.queue(), mem.clone(), irq, 4, set), calls)
}

#[test]
fn vq_pairs_set_is_applied_within_range_and_refused_outside() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut ctrl, calls) = control(&drv, &mem, false);
    let mq = VIRTIO_NET_CTRL_MQ as u8;
    let set = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    for (pairs, ok) in [(3u16, true), (4, true), (0, false), (5, false), (1, true)] {
        let [lo, hi] = pairs.to_le_bytes();
        let head = drv.request(&[mq, set, lo, hi]);
        assert_eq!(ctrl.process_queue(), 1);
        let want = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
        assert_eq!(drv.status(), want, "{pairs} pairs");
        assert_eq!(drv.used(head / 2), (u32::from(head), 1));
    }
    assert_eq!(*calls.lock().unwrap(), vec![3, 4, 1]);
}

#[test]
fn other_classes_commands_and_failures_are_answered_err() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut ctrl, calls) = control(&drv, &mem, true);
    let mq = VIRTIO_NET_CTRL_MQ as u8;
    let set = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    // The pair count is valid but applying it fails; RX promiscuous; an MQ RSS command;
    // a request cut short.
    for req in [
        &[mq, set, 2, 0][..],
        &[VIRTIO_NET_CTRL_RX as u8, 0, 1],
        &[mq, 1, 0, 0, 0, 0],
        &[mq, set, 2],
        &[mq],
    ] {
        drv.request(req);
        assert_eq!(ctrl.process_queue(), 1);
        assert_eq!(drv.status(), VIRTIO_NET_ERR as u8, "{req:?}");
    }
    assert_eq!(*calls.lock().unwrap(), vec![2]);
}

#[test]
fn malformed_requests_complete_with_length_zero_and_the_queue_goes_on() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut ctrl, calls) = control(&drv, &mem, false);
    let mq = VIRTIO_NET_CTRL_MQ as u8;
    let set = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    mem.write_slice(&[mq, set, 2, 0], GuestAddress(REQ))
        .unwrap();
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    // No status byte at all.
    let a = drv.add(&[(REQ, 4, false)]);
    // Readable data after the status byte.
    let b = drv.add(&[(STATUS, 1, true), (REQ, 4, false)]);
    // A request outside guest memory.
    let c = drv.add(&[(0x1000_0000, 4, false), (STATUS, 1, true)]);
    // Only a zero-length status descriptor.
    let d = drv.add(&[(REQ, 4, false), (STATUS, 0, true)]);
    assert_eq!(ctrl.process_queue(), 4);
    for (i, head) in [a, b, c, d].into_iter().enumerate() {
        assert_eq!(drv.used(i as u16), (u32::from(head), 0), "chain {i}");
    }
    assert_eq!(drv.status(), UNTOUCHED);
    assert!(calls.lock().unwrap().is_empty());
    // A good request after them is served.
    drv.request(&[mq, set, 2, 0]);
    assert_eq!(ctrl.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_NET_OK as u8);
    assert_eq!(*calls.lock().unwrap(), vec![2]);
}

#[test]
fn a_request_split_over_descriptors_is_reassembled() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut ctrl, calls) = control(&drv, &mem, false);
    mem.write_slice(
        &[
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
        ],
        GuestAddress(REQ),
    )
    .unwrap();
    mem.write_slice(&[3, 0], GuestAddress(REQ + 0x100)).unwrap();
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    drv.add(&[(REQ, 2, false), (REQ + 0x100, 2, false), (STATUS, 1, true)]);
    assert_eq!(ctrl.process_queue(), 1);
    assert_eq!(drv.status(), VIRTIO_NET_OK as u8);
    assert_eq!(*calls.lock().unwrap(), vec![3]);
}
