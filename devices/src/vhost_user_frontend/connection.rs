//! [`Connection`]: one frontend connection to a vhost-user backend and the protocol steps
//! every vhost-user device needs, whatever its type: connect and claim the backend
//! (SET_OWNER), negotiate virtio and protocol features, read the config space, hand over the
//! memory table and the vrings with their call and kick eventfds, and stop the queues again
//! (GET_VRING_BASE). When legovmm pages guest RAM, every memory table goes through
//! [`postcopy`](super::postcopy) first.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{self, VHOST_USER_F_PROTOCOL_FEATURES};
use super::postcopy::{BackendFaults, Postcopy};
use super::VhostUserError;
use crate::virtio::{feature, ActivateContext, CallPath, VIRTIO_F_VERSION_1};

/// A negotiated connection to a vhost-user backend.
pub struct Connection {
    path: String,
    frontend: Frontend,
    /// A clone of the backend connection, to watch for a hang-up.
    socket: UnixStream,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    backend_queues: Option<u64>,
    /// Set when legovmm pages guest RAM: the backend's faults go to the pager.
    postcopy: Option<Postcopy>,
}

/// The queues a backend serves after [`Connection::start`].
pub struct Started {
    /// The indexes of the queues started (the ready ones).
    pub queues: Vec<usize>,
    /// One call eventfd per queue (ready or not), which the backend signals after using
    /// buffers: the device's irqfd with [`CallPath::Direct`], one for the relay to watch
    /// with [`CallPath::Relayed`].
    pub calls: Vec<EventFd>,
}

impl Connection {
    /// Connects to the backend at `socket` and negotiates with it: SET_OWNER, GET_FEATURES
    /// (VERSION_1 and PROTOCOL_FEATURES are required), GET/SET_PROTOCOL_FEATURES (CONFIG is
    /// required; MQ and REPLY_ACK are used when offered) and, with MQ, GET_QUEUE_NUM.
    pub fn connect(socket: &Path) -> Result<Self, VhostUserError> {
        Self::connect_with_timeout(socket, None)
    }

    /// [`Connection::connect`], with every reply awaited at most `timeout` (when given), so
    /// that a backend that accepts but never answers cannot hold the caller.
    pub fn connect_with_timeout(
        socket: &Path,
        timeout: Option<Duration>,
    ) -> Result<Self, VhostUserError> {
        Self::connect_with(socket, timeout, None)
    }

    /// [`Connection::connect_with_timeout`]; with `backend_faults` (legovmm pages guest
    /// RAM), the backend must also offer the PAGEFAULT protocol feature
    /// ([`VhostUserError::NoPagefault`] otherwise), and every memory table it is given goes
    /// through postcopy, its faults served by `backend_faults` (see
    /// [`postcopy`](super::postcopy)). The device's name there is the socket path.
    pub fn connect_with(
        socket: &Path,
        timeout: Option<Duration>,
        backend_faults: Option<Arc<dyn BackendFaults>>,
    ) -> Result<Self, VhostUserError> {
        let path = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|source| VhostUserError::Connect {
            path: path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|source| VhostUserError::Io {
                what: "set the backend socket's timeouts",
                source,
            })?;
        let watch = stream.try_clone().map_err(|source| VhostUserError::Io {
            what: "duplicate the backend socket",
            source,
        })?;
        let proto = |step: &str| protocol_error(&path, step.to_string());
        // Queue requests are range-checked against this until GET_QUEUE_NUM answers.
        let mut frontend = Frontend::from_stream(stream, 1);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if backend_features & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(VhostUserError::NotModern(path));
        }
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(VhostUserError::NoConfig(path));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let mut protocol = features::protocol_features(offered)
            .ok_or_else(|| VhostUserError::NoConfig(path.clone()))?;
        if backend_faults.is_some() {
            if !offered.contains(VhostUserProtocolFeatures::PAGEFAULT) {
                return Err(VhostUserError::NoPagefault(path));
            }
            protocol |= VhostUserProtocolFeatures::PAGEFAULT;
        }
        frontend
            .set_protocol_features(protocol)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later request is acknowledged, so a backend's refusal is seen.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let backend_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            Some(frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?)
        } else {
            None
        };
        let postcopy = backend_faults.map(|faults| Postcopy::new(faults, path.clone()));
        Ok(Self {
            path,
            frontend,
            socket: watch,
            backend_features,
            protocol,
            backend_queues,
            postcopy,
        })
    }

    /// The backend's socket path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The virtio features the backend offers.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features in use.
    pub fn protocol(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// The pager serving the backend's faults, when legovmm pages guest RAM.
    pub fn backend_faults(&self) -> Option<Arc<dyn BackendFaults>> {
        self.postcopy.as_ref().map(Postcopy::faults)
    }

    /// The number of queues the backend serves at most, when it said (MQ).
    pub fn backend_queues(&self) -> Option<u64> {
        self.backend_queues
    }

    /// Reads the first `len` bytes of the device's config space (GET_CONFIG).
    pub fn read_config(&mut self, len: usize) -> Result<Vec<u8>, VhostUserError> {
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let (_, config) = self
            .frontend
            .get_config(0, len32, VhostUserConfigFlags::WRITABLE, &vec![0u8; len])
            .map_err(protocol_error(&self.path, "GET_CONFIG".into()))?;
        Ok(config)
    }

    /// A clone of the backend connection, to watch for the backend hanging up (the relay
    /// only polls it; replies belong to whoever sent the request).
    pub fn watch(&self) -> io::Result<UnixStream> {
        self.socket.try_clone()
    }

    /// Tells the backend the features the guest accepted (SET_FEATURES) and the guest
    /// memory table (SET_MEM_TABLE, through postcopy when legovmm pages guest RAM), then sets
    /// up and enables every ready queue of `ctx`, its call eventfd as `call_path` says. When a queue fails, the queues already
    /// started are stopped again.
    pub fn start(
        &mut self,
        ctx: &ActivateContext,
        call_path: CallPath,
    ) -> Result<Started, VhostUserError> {
        self.set_features_and_memory(ctx.acked_features, &ctx.mem)?;

        let io = |what| move |source| VhostUserError::Io { what, source };
        let mut calls = Vec::new();
        let mut started = Vec::new();
        for (index, (queue, kick)) in ctx.queues.iter().zip(&ctx.queue_events).enumerate() {
            let call = match call_path {
                CallPath::Direct => ctx.interrupt.direct_call(),
                CallPath::Relayed => EventFd::new(EFD_NONBLOCK),
            }
            .map_err(io("create a call eventfd"))?;
            calls.push(call.try_clone().map_err(io("duplicate a call eventfd"))?);
            if !queue.ready() {
                continue;
            }
            if let Err(e) = self.start_queue(index, queue, &ctx.mem, kick, &call, 0) {
                // Leave no queue running behind a device the guest sees as failed.
                self.stop_queues(&started);
                return Err(e);
            }
            started.push(index);
        }
        Ok(Started {
            queues: started,
            calls,
        })
    }

    /// Hands a backend that restarted what the one before it had: the features the guest
    /// accepted, the memory table, and each queue of `queues` (index, queue, kick, call)
    /// with its base set to the used ring's index as the guest sees it, so that the requests
    /// the old backend had taken but not completed are served again; then kicks each queue.
    /// Returns each queue's index with the base it resumed from.
    ///
    /// This is exact only because a backend completes each queue's requests in the order it
    /// took them (see `lego-vhost-blk`'s `backend.rs`): the used index then counts precisely
    /// the requests done, and every request after it is still owed to the guest.
    pub fn resume(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap<()>,
        queues: &[(usize, Queue, EventFd, EventFd)],
    ) -> Result<Vec<(usize, u16)>, VhostUserError> {
        self.set_features_and_memory(acked_features, mem)?;
        let mut bases = Vec::with_capacity(queues.len());
        for (index, queue, kick, call) in queues {
            let base = used_index(mem, queue).ok_or(VhostUserError::QueueOutsideMemory(*index))?;
            self.start_queue(*index, queue, mem, kick, call, base)?;
            bases.push((*index, base));
        }
        for (index, _, kick, _) in queues {
            // The guest's kicks during the outage went nowhere: serve what is waiting.
            kick.write(1).map_err(|source| VhostUserError::Io {
                what: "kick a resumed queue",
                source,
            })?;
            tracing::debug!(queue = index, "kicked the resumed queue");
        }
        Ok(bases)
    }

    /// SET_FEATURES with what the guest accepted, then SET_MEM_TABLE with `mem`: through
    /// postcopy when legovmm pages guest RAM, so that the pager serves the backend's faults
    /// before any vring can touch guest memory.
    fn set_features_and_memory(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<(), VhostUserError> {
        self.frontend
            .set_features(features::features_to_ack(acked_features))
            .map_err(protocol_error(&self.path, "SET_FEATURES".into()))?;
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| VhostUserError::MemoryNotShared(r.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match &mut self.postcopy {
            Some(postcopy) => postcopy.set_mem_table(&mut self.frontend, &self.path, &regions)?,
            None => {
                self.frontend
                    .set_mem_table(&regions)
                    .map_err(protocol_error(&self.path, "SET_MEM_TABLE".into()))?;
            }
        }
        Ok(())
    }

    /// Stops `queues` in the backend (GET_VRING_BASE), logging what fails.
    pub fn stop_queues(&self, queues: &[usize]) {
        for &index in queues {
            if let Err(e) = self.frontend.get_vring_base(index) {
                tracing::warn!(
                    "vhost-user backend at {}: could not stop queue {index}: {e}",
                    self.path
                );
            }
        }
    }

    /// Hands queue `index` to the backend: its size, ring addresses, `base` (the next
    /// available entry to take), call and kick eventfds, then enables it.
    fn start_queue(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap<()>,
        kick: &EventFd,
        call: &EventFd,
        base: u16,
    ) -> Result<(), VhostUserError> {
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| VhostUserError::QueueOutsideMemory(index))
        };
        let rings = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: host(queue.desc_table())?,
            used_ring_addr: host(queue.used_ring())?,
            avail_ring_addr: host(queue.avail_ring())?,
            log_addr: None,
        };
        let step = |s: &str| protocol_error(&self.path, format!("{s} for queue {index}"));
        self.frontend
            .set_vring_num(index, queue.size())
            .map_err(step("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_addr(index, &rings)
            .map_err(step("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_base(index, base)
            .map_err(step("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_call(index, call)
            .map_err(step("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_kick(index, kick)
            .map_err(step("SET_VRING_KICK"))?;
        self.frontend
            .set_vring_enable(index, true)
            .map_err(step("SET_VRING_ENABLE"))?;
        Ok(())
    }
}

/// The used ring's index of `queue` as it is in guest memory (the device's `idx` field, two
/// bytes into the used ring), or `None` if the ring is outside `mem`.
pub fn used_index(mem: &GuestMemoryMmap<()>, queue: &Queue) -> Option<u16> {
    let at = GuestAddress(queue.used_ring().checked_add(2)?);
    let idx: u16 = mem.read_obj(at).ok()?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    Some(u16::from_le(idx))
}

/// Maps a failed request `step` to the backend at `path` to [`VhostUserError::Protocol`].
fn protocol_error(path: &str, step: String) -> impl FnOnce(vhost::Error) -> VhostUserError {
    let path = path.to_string();
    move |source| VhostUserError::Protocol { path, step, source }
}
