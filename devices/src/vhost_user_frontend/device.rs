//! [`VhostUserDevice`]: a virtio device whose queues a vhost-user backend serves, for any
//! device type. The device-specific part is a [`DeviceKind`] (type, config-space size, queue
//! count); everything else (the protocol steps of [`Connection`], the interrupt relay with
//! its hang-up detection and reconnection, activation, reset) is shared.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::connection::{Connection, Started};
use super::features;
use super::postcopy::BackendFaults;
use super::reconnect::{copy_queue, lock, ReconnectPolicy, Reconnector, ResumeQueue};
use super::relay::{BackendWatcher, Relay};
use super::VhostUserError;
use crate::virtio::{read_config_bytes, ActivateContext, ActivateError, CallPath, VirtioDevice};

/// The largest queue the guest may set up (the backend learns the real size).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// What makes a vhost-user device a particular virtio device.
pub trait DeviceKind {
    /// The virtio device type (e.g. [`crate::virtio::TYPE_BLOCK`]).
    const DEVICE_TYPE: u32;
    /// The device's name in log messages, e.g. `vhost-user-blk`.
    const NAME: &'static str;
    /// The bytes of config space to read from the backend.
    const CONFIG_LEN: usize;

    /// How many queues the device has, given the features the guest may see, the config
    /// space and the backend's queue count (when it told one).
    fn queue_count(guest_features: u64, config: &[u8], backend_queues: Option<u64>) -> usize;
}

/// A virtio device of kind `K` served by a vhost-user backend.
pub struct VhostUserDevice<K: DeviceKind> {
    /// Shared with the relay, which replaces it when the backend comes back.
    connection: Arc<Mutex<Connection>>,
    path: String,
    reconnect: ReconnectPolicy,
    watcher: Option<BackendWatcher>,
    /// How the backend's calls become the guest's interrupt.
    call_path: CallPath,
    avail_features: u64,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    active: Option<Active>,
    kind: PhantomData<fn() -> K>,
}

/// What an active device holds: the queues the backend serves and the interrupt relay.
struct Active {
    queues: Vec<usize>,
    relay: Relay,
}

impl<K: DeviceKind> VhostUserDevice<K> {
    /// Connects to the backend at `socket`, negotiates features (see
    /// [`Connection::connect`]) and reads the config space (GET_CONFIG).
    pub fn connect(socket: &Path) -> Result<Self, VhostUserError> {
        Self::connect_with_faults(socket, None)
    }

    /// [`VhostUserDevice::connect`]; with `backend_faults` (legovmm pages guest RAM), the
    /// backend must offer the PAGEFAULT protocol feature ([`VhostUserError::NoPagefault`]
    /// otherwise) and, at activation and at every reconnection, hands its userfaultfd to
    /// `backend_faults` before any vring is set up (see
    /// [`postcopy`](super::postcopy)); the device's name there is the socket path.
    pub fn connect_with_faults(
        socket: &Path,
        backend_faults: Option<Arc<dyn BackendFaults>>,
    ) -> Result<Self, VhostUserError> {
        let paged = backend_faults.is_some();
        let mut connection = Connection::connect_with(socket, None, backend_faults)?;
        let config = connection.read_config(K::CONFIG_LEN)?;
        let backend_features = connection.backend_features();
        let avail_features = features::guest_features(backend_features);
        let queues = K::queue_count(avail_features, &config, connection.backend_queues());
        tracing::info!(
            socket = %connection.path(), features = format_args!("{backend_features:#x}"),
            protocol = format_args!("{:#x}", connection.protocol().bits()), queues, paged,
            "connected to the {} backend", K::NAME
        );
        Ok(Self {
            path: connection.path().to_string(),
            connection: Arc::new(Mutex::new(connection)),
            reconnect: ReconnectPolicy::default(),
            watcher: None,
            call_path: CallPath::from_env(),
            avail_features,
            config,
            queue_sizes: vec![QUEUE_MAX_SIZE; queues],
            active: None,
            kind: PhantomData,
        })
    }

    /// The backend's socket path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How long the device tries to reconnect when its backend hangs up (by default it
    /// never gives up).
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Tells `watcher` when the backend's connection is lost, back or given up on.
    pub fn with_watcher(mut self, watcher: BackendWatcher) -> Self {
        self.watcher = Some(watcher);
        self
    }

    /// Hands the backend the features, memory and rings, then starts the relay.
    fn start(&mut self, ctx: ActivateContext) -> Result<Active, VhostUserError> {
        let Started { queues, calls } = lock(&self.connection).start(&ctx, self.call_path)?;
        let path = self.path().to_string();
        let relay = self
            .reconnector(&ctx, &queues, &calls)
            .and_then(|reconnect| {
                let socket = lock(&self.connection).watch()?;
                let watcher = self.watcher.clone();
                // Direct calls reach KVM by themselves: the relay only watches the socket.
                let relayed = match self.call_path {
                    CallPath::Direct => Vec::new(),
                    CallPath::Relayed => calls,
                };
                Relay::start(
                    relayed,
                    socket,
                    ctx.interrupt,
                    path,
                    Some(reconnect),
                    watcher,
                )
            });
        match relay {
            Ok(relay) => Ok(Active { queues, relay }),
            Err(source) => {
                lock(&self.connection).stop_queues(&queues);
                Err(VhostUserError::Io {
                    what: "start the interrupt relay",
                    source,
                })
            }
        }
    }
}

impl<K: DeviceKind> VhostUserDevice<K> {
    /// What the relay needs to bring the started `queues` back after a backend restart.
    fn reconnector(
        &self,
        ctx: &ActivateContext,
        queues: &[usize],
        calls: &[vmm_sys_util::eventfd::EventFd],
    ) -> std::io::Result<Reconnector> {
        let mut resume = Vec::with_capacity(queues.len());
        for &index in queues {
            resume.push(ResumeQueue {
                index,
                queue: copy_queue(&ctx.queues[index]),
                kick: ctx.queue_events[index].try_clone()?,
                call: calls[index].try_clone()?,
            });
        }
        Ok(Reconnector::new(
            self.connection.clone(),
            ctx.acked_features,
            ctx.mem.clone(),
            resume,
            self.reconnect,
        ))
    }
}

impl<K: DeviceKind> VirtioDevice for VhostUserDevice<K> {
    fn device_type(&self) -> u32 {
        K::DEVICE_TYPE
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
            "{} {}: write of {} bytes at config offset {offset:#x} ignored",
            K::NAME,
            self.path(),
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != self.queue_sizes.len() || ctx.queue_events.len() != ctx.queues.len()
        {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: ctx.queues.len(),
            });
        }
        let active = self.start(ctx).map_err(|e| ActivateError::Io {
            what: "start the vhost-user backend",
            source: std::io::Error::other(e),
        })?;
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        // The relay first: a reconnection in progress must not start the queues again
        // behind the reset. Then GET_VRING_BASE stops each queue in the backend.
        active.relay.stop();
        lock(&self.connection).stop_queues(&active.queues);
    }
}

impl<K: DeviceKind> Drop for VhostUserDevice<K> {
    fn drop(&mut self) {
        self.reset();
    }
}
