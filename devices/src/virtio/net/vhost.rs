//! The vhost-net backend: the kernel moves the frames between each tap queue and its queue
//! pair, one `/dev/vhost-net` instance per pair (ring 0 = rx, ring 1 = tx).
//!
//! Per pair: SET_OWNER, SET_FEATURES (the driver's acked features that vhost knows),
//! SET_MEM_TABLE (guest RAM at this process's addresses), then per ring SET_VRING_NUM,
//! SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_KICK (the queue's notification eventfd, a KVM
//! ioeventfd, so guest kicks go straight to the kernel), SET_VRING_CALL (the device's irqfd,
//! so the kernel's interrupts go straight to KVM; see [`CallPath`]) and SET_BACKEND (the tap
//! queue). With `LEGOVMM_VHOST_INTERRUPTS=relay` the calls are eventfds of ours that a
//! [`Relay`] turns into the interrupt instead. Stopping sets every ring's backend to -1,
//! stops the relay (if any) and closes the vhost-net instances.

use std::io;
use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as VhostNetFd;
use vhost::vhost_kern::VhostKernBackend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::tap::Tap;
use crate::vhost_user_frontend::relay::Relay;
use crate::virtio::{
    feature, CallPath, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// The kernel's vhost-net device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The features that change how the rings or headers look: vhost-net must know every one
/// the driver acked, or it would read the rings or frames differently from the driver.
pub const RING_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_NET_F_MRG_RXBUF);

/// Errors starting the vhost-net backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    /// `/dev/vhost-net` cannot be opened.
    #[error("cannot open {VHOST_NET_PATH} (is the vhost_net module loaded?)")]
    Open(#[source] vhost::Error),
    /// vhost-net lacks a ring feature the driver acked.
    #[error("vhost-net does not support the acked ring features {missing:#x}")]
    Features {
        /// The acked features vhost-net lacks.
        missing: u64,
    },
    /// A queue's rings are not inside guest memory.
    #[error("queue {0}'s rings are not inside guest memory")]
    QueueOutsideMemory(usize),
    /// A vhost ioctl failed.
    #[error("vhost-net {step} failed for queue pair {pair}")]
    Step {
        /// The ioctl, e.g. "SET_MEM_TABLE".
        step: &'static str,
        /// The queue pair.
        pair: usize,
        /// The vhost crate's error.
        #[source]
        source: vhost::Error,
    },
    /// An eventfd or the relay thread could not be set up.
    #[error("could not {what} for vhost-net")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether `/dev/vhost-net` can be opened by this process.
pub fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_NET_PATH)
        .is_ok()
}

/// The features to hand vhost-net: the acked ones it supports. Fails when it lacks a ring
/// feature the driver acked.
pub fn negotiate(acked: u64, supported: u64) -> Result<u64, VhostNetError> {
    let missing = acked & RING_FEATURES & !supported;
    if missing != 0 {
        return Err(VhostNetError::Features { missing });
    }
    Ok(acked & supported)
}

type Instance = VhostNetFd<Arc<GuestMemoryMmap<()>>>;

/// One queue pair to serve: its tap queue, rings and kick eventfds (the kernel takes its own
/// reference to the kicks and the tap).
pub struct PairRings {
    /// The tap queue.
    pub tap: Arc<Tap>,
    /// The rx ring (index 0 in vhost) and the tx ring (index 1).
    pub queues: [Queue; 2],
    /// Their notification eventfds.
    pub kicks: [EventFd; 2],
}

/// Queue pairs the kernel serves; stopping or dropping it takes them back.
pub struct VhostNetPairs {
    instances: Vec<Instance>,
    relay: Option<Relay>,
}

/// The memory table vhost-net translates guest addresses with.
fn regions(mem: &GuestMemoryMmap<()>) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}

impl VhostNetPairs {
    /// Hands `pairs` to vhost-net (`acked` being the driver's features) with `interrupt`'s
    /// irqfd as each ring's call eventfd, or, with `LEGOVMM_VHOST_INTERRUPTS=relay`
    /// ([`CallPath::from_env`]), starts relaying their calls to it; `name` names the tap in
    /// log messages.
    pub fn start(
        pairs: &[PairRings],
        mem: &GuestMemoryMmap<()>,
        acked: u64,
        interrupt: VirtioInterrupt,
        name: &str,
    ) -> Result<Self, VhostNetError> {
        let mem = Arc::new(mem.clone());
        let table = regions(&mem);
        let mut started = Self {
            instances: Vec::new(),
            relay: None,
        };
        let call_path = CallPath::from_env();
        let mut calls = Vec::new();
        for (pair, rings) in pairs.iter().enumerate() {
            let step = |step| move |source| VhostNetError::Step { step, pair, source };
            let net = VhostNetFd::new(mem.clone()).map_err(VhostNetError::Open)?;
            net.set_owner().map_err(step("SET_OWNER"))?;
            let supported = net.get_features().map_err(step("GET_FEATURES"))?;
            net.set_features(negotiate(acked, supported)?)
                .map_err(step("SET_FEATURES"))?;
            net.set_mem_table(&table).map_err(step("SET_MEM_TABLE"))?;
            for (ring, queue) in rings.queues.iter().enumerate() {
                let index = 2 * pair + ring;
                let config = VringConfigData {
                    queue_max_size: queue.max_size(),
                    queue_size: queue.size(),
                    flags: 0,
                    desc_table_addr: queue.desc_table(),
                    used_ring_addr: queue.used_ring(),
                    avail_ring_addr: queue.avail_ring(),
                    log_addr: None,
                };
                if !net.is_valid(&config) {
                    return Err(VhostNetError::QueueOutsideMemory(index));
                }
                net.set_vring_num(ring, queue.size())
                    .map_err(step("SET_VRING_NUM"))?;
                net.set_vring_addr(ring, &config)
                    .map_err(step("SET_VRING_ADDR"))?;
                net.set_vring_base(ring, queue.next_avail())
                    .map_err(step("SET_VRING_BASE"))?;
                net.set_vring_kick(ring, &rings.kicks[ring])
                    .map_err(step("SET_VRING_KICK"))?;
                let call = match call_path {
                    CallPath::Direct => interrupt.direct_call(),
                    CallPath::Relayed => EventFd::new(EFD_NONBLOCK),
                }
                .map_err(|source| VhostNetError::Io {
                    what: "create a call eventfd",
                    source,
                })?;
                net.set_vring_call(ring, &call)
                    .map_err(step("SET_VRING_CALL"))?;
                calls.push(call);
            }
            // The instance is stopped (backend -1) on drop from here on.
            started.instances.push(net);
            let net = started.instances.last().expect("just pushed");
            for ring in 0..2 {
                net.set_backend(ring, Some(rings.tap.file()))
                    .map_err(step("SET_BACKEND"))?;
            }
        }
        if call_path == CallPath::Relayed {
            let relay = Relay::start_calls(calls, interrupt, format!("vhost-net on tap {name}"))
                .map_err(|source| VhostNetError::Io {
                    what: "start the interrupt relay",
                    source,
                })?;
            started.relay = Some(relay);
        }
        Ok(started)
    }

    /// Takes the rings back from the kernel (backend -1), stops the relay and closes the
    /// vhost-net instances. Safe to call twice.
    pub fn stop(&mut self) {
        for (pair, net) in self.instances.iter().enumerate() {
            for ring in 0..2 {
                if let Err(e) = net.set_backend(ring, None) {
                    tracing::warn!(
                        "vhost-net: could not detach ring {ring} of queue pair {pair}: {e}"
                    );
                }
            }
        }
        if let Some(mut relay) = self.relay.take() {
            relay.stop();
        }
        self.instances.clear();
    }
}

impl Drop for VhostNetPairs {
    fn drop(&mut self) {
        self.stop();
    }
}
