use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::interrupt::{INT_CONFIG_CHANGE, INT_USED_RING};
use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_FAILED};

/// What the dummy device saw at activation.
#[derive(Debug, Clone, PartialEq)]
struct Activation {
    ready: Vec<bool>,
    sizes: Vec<u16>,
    events: usize,
    acked: u64,
    desc: u64,
}

/// Config-space writes the dummy device received: (offset, bytes).
type ConfigWrites = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Record {
    activations: Arc<Mutex<Vec<Activation>>>,
    resets: Arc<AtomicUsize>,
    config_writes: ConfigWrites,
}

struct Dummy {
    features: u64,
    sizes: Vec<u16>,
    fail: bool,
    rec: Record,
}

const DUMMY_TYPE: u32 = 42;
const F_DUMMY: u64 = 1 << 3;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        DUMMY_TYPE
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.rec
            .config_writes
            .lock()
            .unwrap()
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.rec.activations.lock().unwrap().push(Activation {
            ready: ctx.queues.iter().map(|q| q.ready()).collect(),
            sizes: ctx.queues.iter().map(|q| q.size()).collect(),
            events: ctx.queue_events.len(),
            acked: ctx.acked_features,
            desc: ctx.queues[0].desc_table(),
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.rec.resets.fetch_add(1, Ordering::SeqCst);
    }
}

const MEM_SIZE: usize = 0x10_0000;

fn transport(fail: bool) -> (MmioTransport<Dummy>, Record) {
    let rec = Record::default();
    let dev = Dummy {
        features: feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX) | F_DUMMY,
        sizes: vec![16, 8],
        fail,
        rec: rec.clone(),
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    (MmioTransport::new(dev, mem).unwrap(), rec)
}

fn r(t: &mut MmioTransport<Dummy>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport<Dummy>, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Drives the driver side up to FEATURES_OK with `features`; returns the status read back.
fn negotiate(t: &mut MmioTransport<Dummy>, features: u64) -> u32 {
    w(t, reg::STATUS, STATUS_ACKNOWLEDGE);
    w(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        reg::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    r(t, reg::STATUS)
}

fn setup_queue(t: &mut MmioTransport<Dummy>, index: u32, size: u32, base: u64) {
    w(t, reg::QUEUE_SEL, index);
    w(t, reg::QUEUE_NUM, size);
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
    w(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, reg::QUEUE_DRIVER_HIGH, 0);
    w(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, reg::QUEUE_DEVICE_HIGH, 0);
    w(t, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = transport(false);
    assert_eq!(r(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), DUMMY_TYPE);
    assert_eq!(r(&mut t, reg::VENDOR_ID), VENDOR_ID);
    // Non-32-bit register accesses read as zeros.
    let mut b = [0xffu8; 2];
    t.read(reg::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(reg::MAGIC_VALUE + 1, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn feature_pages() {
    let (mut t, _) = transport(false);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), (1 << 29) | (1 << 3));
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
}

#[test]
fn features_ok_requires_offered_features_and_version_1() {
    let (mut t, _) = transport(false);
    let unknown = feature(VIRTIO_F_VERSION_1) | (1 << 7);
    assert_eq!(negotiate(&mut t, unknown) & STATUS_FEATURES_OK, 0);

    w(&mut t, reg::STATUS, 0);
    assert_eq!(
        negotiate(&mut t, F_DUMMY) & STATUS_FEATURES_OK,
        0,
        "no VERSION_1"
    );

    w(&mut t, reg::STATUS, 0);
    let good = feature(VIRTIO_F_VERSION_1) | F_DUMMY;
    assert_ne!(negotiate(&mut t, good) & STATUS_FEATURES_OK, 0);
    assert_eq!(t.acked_features(), good);
    // Feature writes after FEATURES_OK are ignored.
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, 0);
    assert_eq!(t.acked_features(), good);
}

#[test]
fn queue_setup_and_activation() {
    let (mut t, rec) = transport(false);
    let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX);
    negotiate(&mut t, features);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
    w(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "missing queue");

    setup_queue(&mut t, 0, 8, 0x1_0000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert!(rec.activations.lock().unwrap().is_empty());

    w(&mut t, reg::STATUS, ALL_OK);
    assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
    assert!(t.is_active());
    let acts = rec.activations.lock().unwrap().clone();
    assert_eq!(
        acts,
        vec![Activation {
            ready: vec![true, false],
            sizes: vec![8, 8],
            events: 2,
            acked: features,
            desc: 0x1_0000,
        }]
    );
    assert_eq!(t.queue_events().len(), 2);

    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
}

fn assert_needs_reset(t: &mut MmioTransport<Dummy>, rec: &Record) {
    assert_ne!(r(t, reg::STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!t.is_active());
    assert!(rec.activations.lock().unwrap().is_empty());
    assert_ne!(r(t, reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
}

#[test]
fn invalid_queues_need_reset() {
    let bad_setups: [(u32, u64); 4] = [
        (12, 0x1_0000),                // not a power of two
        (32, 0x1_0000),                // above the maximum
        (8, 0x1_0008),                 // misaligned descriptor table
        (8, MEM_SIZE as u64 - 0x1000), // rings past the end of memory
    ];
    for (size, base) in bad_setups {
        let (mut t, rec) = transport(false);
        negotiate(&mut t, feature(VIRTIO_F_VERSION_1));
        setup_queue(&mut t, 0, size, base);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_needs_reset(&mut t, &rec);
    }
}

#[test]
fn driver_ok_without_features_ok_or_failed_activation_needs_reset() {
    let (mut t, rec) = transport(false);
    w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(
        &mut t,
        reg::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_needs_reset(&mut t, &rec);

    let (mut t, rec) = transport(true);
    negotiate(&mut t, feature(VIRTIO_F_VERSION_1));
    setup_queue(&mut t, 0, 8, 0x1_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert_needs_reset(&mut t, &rec);
}

#[test]
fn reset_returns_to_initial_state() {
    let (mut t, rec) = transport(false);
    negotiate(&mut t, feature(VIRTIO_F_VERSION_1));
    setup_queue(&mut t, 0, 8, 0x1_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_active());
    t.interrupt().signal_used_queue().unwrap();

    w(&mut t, reg::STATUS, 0);
    assert_eq!(rec.resets.load(Ordering::SeqCst), 1);
    assert!(!t.is_active());
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(t.acked_features(), 0);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);

    // The device can be brought up again.
    negotiate(&mut t, feature(VIRTIO_F_VERSION_1));
    setup_queue(&mut t, 0, 16, 0x2_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert_eq!(rec.activations.lock().unwrap().len(), 2);
}

#[test]
fn clearing_status_bits_is_ignored_and_failed_is_kept() {
    let (mut t, _) = transport(false);
    negotiate(&mut t, feature(VIRTIO_F_VERSION_1));
    w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
    assert_ne!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
    let s = r(&mut t, reg::STATUS);
    w(&mut t, reg::STATUS, s | STATUS_FAILED);
    assert_eq!(r(&mut t, reg::STATUS), s | STATUS_FAILED);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport(false);
    t.interrupt().signal_used_queue().unwrap();
    t.config_changed();
    assert_eq!(
        r(&mut t, reg::INTERRUPT_STATUS),
        INT_USED_RING | INT_CONFIG_CHANGE
    );
    assert_eq!(t.interrupt_event().read().unwrap(), 2);
    w(&mut t, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    w(&mut t, reg::INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn queue_notify_signals_the_queue_eventfd() {
    let (mut t, _) = transport(false);
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 7);
    assert!(t.queue_events()[0].read().is_err(), "queue 0 not signalled");
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
}

#[test]
fn config_space_and_generation() {
    let (mut t, rec) = transport(false);
    let mut b = [0u8; 2];
    t.read(CONFIG_OFFSET + 2, &mut b);
    assert_eq!(b, [3, 4]);
    let mut b = [0xffu8; 4];
    t.read(CONFIG_OFFSET + 6, &mut b);
    assert_eq!(b, [7, 8, 0, 0]);
    t.write(CONFIG_OFFSET + 1, &[9]);
    assert_eq!(*rec.config_writes.lock().unwrap(), vec![(1, vec![9])]);
    let g = r(&mut t, reg::CONFIG_GENERATION);
    t.config_changed();
    assert_eq!(r(&mut t, reg::CONFIG_GENERATION), g.wrapping_add(1));
}

#[test]
fn arbitrary_guest_accesses_never_panic() {
    let (mut t, _) = transport(false);
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x >> 8) % 0x1100;
        let len = [1usize, 2, 4, 8][(x & 3) as usize];
        let value = (x >> 20).to_le_bytes();
        if x & 0x10 == 0 {
            t.write(offset & !3, &value[..len.min(4)]);
        } else {
            let mut b = vec![0u8; len];
            t.read(offset, &mut b);
        }
    }
}

#[test]
fn rejects_devices_without_version_1_or_with_bad_queue_sizes() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let legacy = Dummy {
        features: 0,
        sizes: vec![8],
        fail: false,
        rec: Record::default(),
    };
    assert!(matches!(
        MmioTransport::new(legacy, mem.clone()),
        Err(MmioError::NotModern)
    ));
    let odd = Dummy {
        features: feature(VIRTIO_F_VERSION_1),
        sizes: vec![6],
        fail: false,
        rec: Record::default(),
    };
    assert!(matches!(
        MmioTransport::new(odd, mem),
        Err(MmioError::InvalidMaxQueueSize { index: 0, size: 6 })
    ));
}
