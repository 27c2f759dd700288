//! virtio-net over a tap: [`Net`], its frames moved either in-process ([`worker`]: a thread
//! per queue pair) or by the kernel's vhost-net ([`vhost`]), as [`NetBackend`] says.
//!
//! The device offers VERSION_1, MAC, STATUS (link up), EVENT_IDX, INDIRECT_DESC,
//! MRG_RXBUF and the checksum and TCP segmentation offloads both ways (CSUM, HOST_TSO4/6
//! for frames the guest sends; GUEST_CSUM, GUEST_TSO4/6 for frames it receives, which the
//! tap is told with TUNSETOFFLOAD from what the driver acked). With more than one tap queue
//! it offers MQ and CTRL_VQ; the control queue ([`ctrl`]) is served in-process whichever
//! backend moves the frames, and attaches exactly the tap queues of the pairs the driver
//! uses.
//!
//! Queues: rx0, tx0, rx1, tx1, ..., then the control queue (when offered).

pub mod ctrl;
pub mod vhost;
pub mod worker;

use std::fmt;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::worker_thread::WorkerThread;
use crate::net::tap::{self, Tap, TapError};
use crate::virtio::{
    feature, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use ctrl::CtrlQueue;
use vhost::{PairRings, VhostNetPairs};
use worker::PairWorker;

/// The size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// The bytes of config space: mac, status, max_virtqueue_pairs.
pub const CONFIG_LEN: usize = 10;

/// Who moves the frames between the tap and the guest's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetBackend {
    /// vhost-net when `/dev/vhost-net` opens, else in-process.
    #[default]
    Auto,
    /// The kernel's vhost-net.
    VhostNet,
    /// Threads of this process.
    InProcess,
}

impl fmt::Display for NetBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetBackend::Auto => "auto",
            NetBackend::VhostNet => "vhost-net",
            NetBackend::InProcess => "in-process",
        })
    }
}

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No tap queue was given.
    #[error("a virtio-net device needs at least one tap queue")]
    NoTaps,
    /// More tap queues than a device can have pairs.
    #[error("a virtio-net device has at most {max} queue pairs, not {0}", max = tap::MAX_QUEUE_PAIRS)]
    TooManyTaps(usize),
    /// The tap queues are not all of one multi-queue tap.
    #[error(
        "the tap queues of a virtio-net device must be queues of one tap (got {first} and {other})"
    )]
    MixedTaps {
        /// The first queue's tap.
        first: String,
        /// Another queue's tap.
        other: String,
    },
    /// vhost-net was asked for and cannot be opened.
    #[error("the vhost-net backend was asked for, but {} cannot be opened (load the vhost_net module, or use the in-process backend)", vhost::VHOST_NET_PATH)]
    VhostNetUnavailable(#[source] std::io::Error),
}

/// The feature bits a device with `queue_pairs` pairs offers.
pub fn device_features(queue_pairs: u16) -> u64 {
    let mut f = feature(VIRTIO_F_VERSION_1)
        | feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_RING_F_INDIRECT_DESC)
        | feature(VIRTIO_NET_F_MAC)
        | feature(VIRTIO_NET_F_STATUS)
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_NET_F_CSUM)
        | feature(VIRTIO_NET_F_GUEST_CSUM)
        | feature(VIRTIO_NET_F_HOST_TSO4)
        | feature(VIRTIO_NET_F_HOST_TSO6)
        | feature(VIRTIO_NET_F_GUEST_TSO4)
        | feature(VIRTIO_NET_F_GUEST_TSO6);
    if queue_pairs > 1 {
        f |= feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ);
    }
    f
}

/// The config space: the MAC, the link up, the number of queue pairs (little-endian).
pub fn config_space(mac: [u8; 6], queue_pairs: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&queue_pairs.to_le_bytes());
    c
}

/// The tap offloads (`TUN_F_*`) matching the receive offloads the driver acked: partial
/// checksums with GUEST_CSUM, and TSO (which needs them) with GUEST_TSO4/6.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = tap::TUN_F_CSUM;
    if acked & feature(VIRTIO_NET_F_GUEST_TSO4) != 0 {
        flags |= tap::TUN_F_TSO4;
    }
    if acked & feature(VIRTIO_NET_F_GUEST_TSO6) != 0 {
        flags |= tap::TUN_F_TSO6;
    }
    flags
}

/// How the queues are laid out for the acked features: the pairs the driver may use and
/// the control queue's index (when CTRL_VQ was acked).
pub fn queue_layout(acked: u64, queue_pairs: u16) -> (u16, Option<usize>) {
    let pairs = if acked & feature(VIRTIO_NET_F_MQ) != 0 {
        queue_pairs
    } else {
        1
    };
    let ctrl = (acked & feature(VIRTIO_NET_F_CTRL_VQ) != 0).then_some(2 * usize::from(pairs));
    (pairs, ctrl)
}

/// A virtio-net device over the queues of one tap.
pub struct Net {
    taps: Vec<Arc<Tap>>,
    mac: [u8; 6],
    requested: NetBackend,
    in_use: NetBackend,
    avail_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    active: Option<Active>,
}

/// What serves an active device's queues.
struct Active {
    workers: Vec<WorkerThread>,
    vhost: Option<VhostNetPairs>,
    ctrl: Option<WorkerThread>,
}

impl Active {
    fn stop(&mut self) {
        // The control queue first: it attaches tap queues and kicks the workers.
        if let Some(mut ctrl) = self.ctrl.take() {
            ctrl.stop();
        }
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
        if let Some(mut v) = self.vhost.take() {
            v.stop();
        }
    }
}

impl Net {
    /// A device over `taps` (one per queue pair, from [`Tap::open`]) with the MAC `mac`,
    /// whose frames `backend` moves. `Auto` picks vhost-net when `/dev/vhost-net` opens;
    /// asking for `VhostNet` when it does not is an error.
    pub fn new(taps: Vec<Tap>, mac: [u8; 6], backend: NetBackend) -> Result<Net, NetError> {
        let Some(first) = taps.first() else {
            return Err(NetError::NoTaps);
        };
        let pairs = u16::try_from(taps.len()).map_err(|_| NetError::TooManyTaps(taps.len()))?;
        if pairs > tap::MAX_QUEUE_PAIRS {
            return Err(NetError::TooManyTaps(taps.len()));
        }
        if let Some(other) = taps.iter().find(|t| t.name() != first.name()) {
            return Err(NetError::MixedTaps {
                first: first.name().to_string(),
                other: other.name().to_string(),
            });
        }
        let in_use = match backend {
            NetBackend::InProcess => NetBackend::InProcess,
            NetBackend::VhostNet => {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(vhost::VHOST_NET_PATH)
                    .map_err(NetError::VhostNetUnavailable)?;
                NetBackend::VhostNet
            }
            NetBackend::Auto if vhost::available() => NetBackend::VhostNet,
            NetBackend::Auto => NetBackend::InProcess,
        };
        let queues = 2 * usize::from(pairs) + usize::from(pairs > 1);
        Ok(Net {
            taps: taps.into_iter().map(Arc::new).collect(),
            mac,
            requested: backend,
            in_use,
            avail_features: device_features(pairs),
            config: config_space(mac, pairs),
            queue_sizes: vec![QUEUE_SIZE; queues],
            active: None,
        })
    }

    /// The backend that moves (or will move) the frames: `VhostNet` or `InProcess`, never
    /// `Auto`. After a failed vhost-net start under `Auto`, `InProcess`.
    pub fn backend_in_use(&self) -> NetBackend {
        self.in_use
    }

    /// The backend asked for at creation.
    pub fn backend_requested(&self) -> NetBackend {
        self.requested
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        self.taps[0].name()
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The number of queue pairs (tap queues).
    pub fn queue_pairs(&self) -> u16 {
        self.taps.len() as u16
    }

    /// Whether the device is serving its queues.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn io(what: &'static str) -> impl FnOnce(TapError) -> ActivateError {
        move |e| ActivateError::Io {
            what,
            source: std::io::Error::other(e),
        }
    }

    fn start(&mut self, ctx: ActivateContext) -> Result<Active, ActivateError> {
        let acked = ctx.acked_features;
        let (pairs, ctrl_index) = queue_layout(acked, self.queue_pairs());
        let mut queues: Vec<Option<Queue>> = ctx.queues.into_iter().map(Some).collect();
        let mut events: Vec<Option<EventFd>> = ctx.queue_events.into_iter().map(Some).collect();
        // The pairs whose both queues the driver set up (pair 0 must be among them).
        let mut served = 0u16;
        while served < pairs {
            let (rx, tx) = (2 * usize::from(served), 2 * usize::from(served) + 1);
            let ready = |i: usize| {
                queues
                    .get(i)
                    .and_then(|q| q.as_ref())
                    .is_some_and(|q| q.ready())
            };
            if !(ready(rx) && ready(tx)) {
                if served == 0 {
                    return Err(ActivateError::QueueNotReady(if ready(rx) {
                        tx
                    } else {
                        rx
                    }));
                }
                break;
            }
            served += 1;
        }
        let offloads = tap_offloads(acked);
        for (i, tap) in self.taps.iter().enumerate() {
            tap.set_offload(offloads)
                .map_err(Self::io("set the tap's offloads"))?;
            // The driver starts on pair 0 only; VQ_PAIRS_SET brings in the others.
            tap.set_queue_enabled(i == 0)
                .map_err(Self::io("attach the tap's queues"))?;
        }
        let ctrl_ready = ctrl_index.is_some_and(|i| {
            queues
                .get(i)
                .and_then(|q| q.as_ref())
                .is_some_and(|q| q.ready())
        });
        let mut take = |i: usize| -> Result<(Queue, EventFd), ActivateError> {
            match (
                queues.get_mut(i).and_then(Option::take),
                events.get_mut(i).and_then(Option::take),
            ) {
                (Some(q), Some(e)) => Ok((q, e)),
                _ => Err(ActivateError::QueueNotReady(i)),
            }
        };
        let mut rings = Vec::new();
        for p in 0..usize::from(served) {
            let (rx, rx_kick) = take(2 * p)?;
            let (tx, tx_kick) = take(2 * p + 1)?;
            rings.push(PairRings {
                tap: self.taps[p].clone(),
                queues: [rx, tx],
                kicks: [rx_kick, tx_kick],
            });
        }
        let ctrl = match ctrl_index {
            Some(i) if ctrl_ready => Some(take(i)?),
            _ => None,
        };
        let mut active = Active {
            workers: Vec::new(),
            vhost: None,
            ctrl: None,
        };
        // In-process workers are kicked when the control queue attaches their tap queue.
        let mut pokes = Vec::new();
        if self.in_use == NetBackend::VhostNet {
            match VhostNetPairs::start(
                &rings,
                &ctx.mem,
                acked,
                ctx.interrupt.clone(),
                self.tap_name(),
            ) {
                Ok(v) => active.vhost = Some(v),
                Err(e) if self.requested == NetBackend::Auto => {
                    tracing::warn!(
                        "virtio-net {}: {}; moving frames in-process instead",
                        self.tap_name(),
                        lego_report::error_chain(&e)
                    );
                    self.in_use = NetBackend::InProcess;
                }
                Err(e) => {
                    return Err(ActivateError::Io {
                        what: "start vhost-net",
                        source: std::io::Error::other(e),
                    })
                }
            }
        }
        if active.vhost.is_none() {
            let mrg = acked & feature(VIRTIO_NET_F_MRG_RXBUF) != 0;
            for (p, r) in rings.into_iter().enumerate() {
                let [rx, tx] = r.queues;
                let [rx_kick, tx_kick] = r.kicks;
                let poke = rx_kick.try_clone().map_err(|source| ActivateError::Io {
                    what: "clone an rx eventfd",
                    source,
                })?;
                pokes.push(poke);
                let w = PairWorker::new(
                    p,
                    rx,
                    tx,
                    ctx.mem.clone(),
                    r.tap,
                    ctx.interrupt.clone(),
                    mrg,
                );
                let handle = w
                    .spawn(rx_kick, tx_kick)
                    .map_err(|source| ActivateError::Io {
                        what: "start a virtio-net worker",
                        source,
                    })?;
                active.workers.push(handle);
            }
        }
        if let Some((queue, event)) = ctrl {
            let taps = self.taps.clone();
            let set_pairs = Box::new(move |n: u16| -> Result<(), String> {
                for (i, tap) in taps.iter().enumerate() {
                    tap.set_queue_enabled(i < usize::from(n))
                        .map_err(|e| lego_report::error_chain(&e))?;
                }
                for poke in pokes.iter().take(usize::from(n)) {
                    // The worker's counter only wakes it; it cannot overflow in practice.
                    let _ = poke.write(1);
                }
                Ok(())
            });
            let ctrl = CtrlQueue::new(
                queue,
                ctx.mem.clone(),
                ctx.interrupt.clone(),
                served,
                set_pairs,
            );
            active.ctrl = Some(ctrl.spawn(event).map_err(|e| ActivateError::Io {
                what: "start the virtio-net control queue",
                source: std::io::Error::other(e),
            })?);
        }
        Ok(active)
    }
}

/// Logs which backend serves the device.
fn log_activation(net: &Net, acked: u64) {
    tracing::info!(
        tap = net.tap_name(),
        backend = %net.in_use,
        queue_pairs = net.queue_pairs(),
        features = format_args!("{acked:#x}"),
        offloads = format_args!("{:#x}", tap_offloads(acked)),
        "virtio-net active"
    );
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-net {}: ignoring a {}-byte config write at {offset:#x}",
            self.tap_name(),
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let expected = self.queue_sizes.len();
        if ctx.queues.len() != expected || ctx.queue_events.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: ctx.queues.len(),
            });
        }
        let acked = ctx.acked_features;
        let active = self.start(ctx)?;
        log_activation(self, acked);
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            active.stop();
            for tap in &self.taps {
                if let Err(e) = tap.set_offload(0) {
                    tracing::debug!("virtio-net: {}", lego_report::error_chain(&e));
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests;
