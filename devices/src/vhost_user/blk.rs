//! [`VhostUserBlk`]: a virtio-blk device served by a vhost-user-blk backend (such as
//! `lego-vhost-blk` or `qemu-storage-daemon`) listening on a Unix socket.

use std::os::unix::net::UnixStream;
use std::path::Path;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::virtio_blk_config;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{self, VHOST_USER_F_PROTOCOL_FEATURES};
use super::relay::Relay;
use super::VhostUserError;
use crate::virtio::{
    feature, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// The size of the virtio-blk config space legovmm reads from the backend.
pub const CONFIG_LEN: usize = std::mem::size_of::<virtio_blk_config>();
/// The offset of `num_queues` in the virtio-blk config space.
const NUM_QUEUES_OFFSET: usize = 34;
/// The largest queue the guest may set up (the backend learns the real size).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// A virtio-blk device whose requests a vhost-user backend serves.
pub struct VhostUserBlk {
    path: String,
    frontend: Frontend,
    /// A clone of the backend connection, for the relay to notice a hang-up.
    socket: UnixStream,
    avail_features: u64,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    active: Option<Active>,
}

/// What an active device holds: the queues the backend serves and the interrupt relay.
struct Active {
    queues: Vec<usize>,
    relay: Relay,
}

impl VhostUserBlk {
    /// Connects to the backend at `socket` and reads its features, queue count and
    /// config space (SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
    /// GET_CONFIG).
    pub fn connect(socket: &Path) -> Result<Self, VhostUserError> {
        let path = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|source| VhostUserError::Connect {
            path: path.clone(),
            source,
        })?;
        let watch = stream.try_clone().map_err(|source| VhostUserError::Io {
            what: "duplicate the backend socket",
            source,
        })?;
        let proto = |step: &str| {
            let path = path.clone();
            let step = step.to_string();
            move |source| VhostUserError::Protocol { path, step, source }
        };
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
        let protocol = features::protocol_features(offered)
            .ok_or_else(|| VhostUserError::NoConfig(path.clone()))?;
        frontend
            .set_protocol_features(protocol)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(vhost::vhost_user::VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later request is acknowledged, so a backend's refusal is seen.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let backend_queues = if protocol.contains(vhost::vhost_user::VhostUserProtocolFeatures::MQ)
        {
            Some(frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?)
        } else {
            None
        };
        let (_, config) = frontend
            .get_config(
                0,
                CONFIG_LEN as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_LEN],
            )
            .map_err(proto("GET_CONFIG"))?;
        let avail_features = features::guest_features(backend_features);
        let config_queues = u16::from_le_bytes([
            config.get(NUM_QUEUES_OFFSET).copied().unwrap_or(0),
            config.get(NUM_QUEUES_OFFSET + 1).copied().unwrap_or(0),
        ]);
        let queues = features::queue_count(avail_features, config_queues, backend_queues);
        tracing::info!(
            socket = %path, features = format_args!("{backend_features:#x}"),
            protocol = format_args!("{:#x}", protocol.bits()), queues,
            "connected to the vhost-user-blk backend"
        );
        Ok(Self {
            path,
            frontend,
            socket: watch,
            avail_features,
            config: config.to_vec(),
            queue_sizes: vec![QUEUE_MAX_SIZE; queues],
            active: None,
        })
    }

    /// The backend's socket path.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn proto(&self, step: String) -> impl FnOnce(vhost::Error) -> VhostUserError + '_ {
        move |source| VhostUserError::Protocol {
            path: self.path.clone(),
            step,
            source,
        }
    }

    /// Tells the backend the features, memory and rings, then starts the relay.
    fn start(&mut self, ctx: ActivateContext) -> Result<Active, VhostUserError> {
        self.frontend
            .set_features(features::features_to_ack(ctx.acked_features))
            .map_err(self.proto("SET_FEATURES".into()))?;
        let regions = ctx
            .mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| VhostUserError::MemoryNotShared(r.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.proto("SET_MEM_TABLE".into()))?;

        let io = |what| move |source| VhostUserError::Io { what, source };
        let mut calls = Vec::new();
        let mut started = Vec::new();
        for (index, (queue, kick)) in ctx.queues.iter().zip(&ctx.queue_events).enumerate() {
            let call = EventFd::new(EFD_NONBLOCK).map_err(io("create a call eventfd"))?;
            calls.push(call.try_clone().map_err(io("duplicate a call eventfd"))?);
            if !queue.ready() {
                continue;
            }
            if let Err(e) = self.start_queue(index, queue, &ctx.mem, kick, &call) {
                // Leave no queue running behind a device the guest sees as failed.
                self.stop_queues(&started);
                return Err(e);
            }
            started.push(index);
        }
        let relay = self
            .socket
            .try_clone()
            .and_then(|socket| Relay::start(calls, socket, ctx.interrupt, self.path.clone()));
        let relay = match relay {
            Ok(relay) => relay,
            Err(source) => {
                self.stop_queues(&started);
                return Err(VhostUserError::Io {
                    what: "start the interrupt relay",
                    source,
                });
            }
        };
        Ok(Active {
            queues: started,
            relay,
        })
    }

    /// Stops `queues` in the backend (GET_VRING_BASE), logging what fails.
    fn stop_queues(&self, queues: &[usize]) {
        for &index in queues {
            if let Err(e) = self.frontend.get_vring_base(index) {
                tracing::warn!(
                    "vhost-user backend at {}: could not stop queue {index}: {e}",
                    self.path
                );
            }
        }
    }

    fn start_queue(
        &mut self,
        index: usize,
        queue: &Queue,
        mem: &GuestMemoryMmap<()>,
        kick: &EventFd,
        call: &EventFd,
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
        let step = |s: &str| format!("{s} for queue {index}");
        self.frontend
            .set_vring_num(index, queue.size())
            .map_err(self.proto(step("SET_VRING_NUM")))?;
        self.frontend
            .set_vring_addr(index, &rings)
            .map_err(self.proto(step("SET_VRING_ADDR")))?;
        self.frontend
            .set_vring_base(index, 0)
            .map_err(self.proto(step("SET_VRING_BASE")))?;
        self.frontend
            .set_vring_call(index, call)
            .map_err(self.proto(step("SET_VRING_CALL")))?;
        self.frontend
            .set_vring_kick(index, kick)
            .map_err(self.proto(step("SET_VRING_KICK")))?;
        self.frontend
            .set_vring_enable(index, true)
            .map_err(self.proto(step("SET_VRING_ENABLE")))?;
        Ok(())
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
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
            "vhost-user-blk {}: write of {} bytes at config offset {offset:#x} ignored",
            self.path,
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
        // GET_VRING_BASE stops each queue in the backend.
        self.stop_queues(&active.queues);
        active.relay.stop();
    }
}

impl Drop for VhostUserBlk {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use vhost::vhost_user::VhostUserProtocolFeatures as P;

    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const GET_QUEUE_NUM: u32 = 17;
    const GET_CONFIG: u32 = 24;
    const FLAG_REPLY: u32 = 0x4;
    const FLAG_NEED_REPLY: u32 = 0x8;

    /// What the fake backend offers.
    struct Offer {
        features: u64,
        protocol: P,
        queues: u64,
        config: Vec<u8>,
    }

    fn reply(sock: &mut UnixStream, request: u32, body: &[u8]) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&(0x1 | FLAG_REPLY).to_le_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(body);
        sock.write_all(&msg).unwrap();
    }

    /// A hand-written backend speaking just enough vhost-user for `connect`; returns the
    /// socket and a thread that yields every `(request, u64 body)` it received.
    fn fake_backend(
        dir: &Path,
        offer: Offer,
    ) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<(u32, u64)>>) {
        let path = dir.join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut hdr = [0u8; 12];
            while sock.read_exact(&mut hdr).is_ok() {
                let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
                let (request, flags, size) = (word(0), word(1), word(2));
                let mut body = vec![0u8; size as usize];
                sock.read_exact(&mut body).unwrap();
                let value = body
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                seen.push((request, value));
                match request {
                    GET_FEATURES => reply(&mut sock, request, &offer.features.to_le_bytes()),
                    GET_PROTOCOL_FEATURES => {
                        reply(&mut sock, request, &offer.protocol.bits().to_le_bytes())
                    }
                    GET_QUEUE_NUM => reply(&mut sock, request, &offer.queues.to_le_bytes()),
                    GET_CONFIG => {
                        let offset = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
                        let len = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
                        let mut out = body[..12].to_vec();
                        out.extend_from_slice(&offer.config[offset..offset + len]);
                        reply(&mut sock, request, &out);
                    }
                    _ if flags & FLAG_NEED_REPLY != 0 => {
                        reply(&mut sock, request, &0u64.to_le_bytes())
                    }
                    _ => {}
                }
            }
            seen
        });
        (path, thread)
    }

    fn blk_config(capacity: u64, num_queues: u16) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        config[NUM_QUEUES_OFFSET..NUM_QUEUES_OFFSET + 2].copy_from_slice(&num_queues.to_le_bytes());
        config
    }

    #[test]
    fn connect_negotiates_features_queues_and_config_with_a_fake_backend() {
        let dir = tempfile::tempdir().unwrap();
        let version_1 = feature(VIRTIO_F_VERSION_1);
        let mq = feature(features::VIRTIO_BLK_F_MQ);
        let (path, backend) = fake_backend(
            dir.path(),
            Offer {
                features: version_1 | mq | VHOST_USER_F_PROTOCOL_FEATURES | feature(34),
                protocol: P::CONFIG | P::MQ | P::REPLY_ACK | P::INFLIGHT_SHMFD,
                queues: 4,
                config: blk_config(2048, 2),
            },
        );
        let blk = VhostUserBlk::connect(&path).unwrap();
        assert_eq!(blk.avail_features(), version_1 | mq);
        assert_eq!(blk.queue_max_sizes(), [QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]);
        let mut capacity = [0u8; 8];
        blk.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 2048);
        let mut beyond = [0xffu8; 4];
        blk.read_config(CONFIG_LEN as u64, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        drop(blk);
        let seen = backend.join().unwrap();
        let acked = seen
            .iter()
            .find(|(r, _)| *r == SET_PROTOCOL_FEATURES)
            .expect("SET_PROTOCOL_FEATURES was sent");
        assert_eq!(acked.1, (P::CONFIG | P::MQ | P::REPLY_ACK).bits());
    }

    #[test]
    fn a_backend_without_config_or_version_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = fake_backend(
            dir.path(),
            Offer {
                features: feature(VIRTIO_F_VERSION_1) | VHOST_USER_F_PROTOCOL_FEATURES,
                protocol: P::MQ | P::REPLY_ACK,
                queues: 1,
                config: blk_config(8, 1),
            },
        );
        let err = VhostUserBlk::connect(&path)
            .err()
            .expect("CONFIG is missing");
        assert!(matches!(err, VhostUserError::NoConfig(_)), "{err}");
        assert!(err.to_string().contains("CONFIG protocol feature"), "{err}");
        backend.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = fake_backend(
            dir.path(),
            Offer {
                features: VHOST_USER_F_PROTOCOL_FEATURES,
                protocol: P::CONFIG,
                queues: 1,
                config: blk_config(8, 1),
            },
        );
        let err = VhostUserBlk::connect(&path)
            .err()
            .expect("VERSION_1 is missing");
        assert!(matches!(err, VhostUserError::NotModern(_)), "{err}");
        backend.join().unwrap();
    }

    #[test]
    fn a_missing_socket_is_named_in_the_error() {
        let err = VhostUserBlk::connect(Path::new("/nonexistent/blk.sock"))
            .err()
            .expect("no backend there");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot connect to the vhost-user backend at /nonexistent/blk.sock: "),
            "{msg}"
        );
    }

    #[test]
    fn a_backend_that_hangs_up_at_once_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("blk.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let err = VhostUserBlk::connect(&sock)
            .err()
            .expect("the backend is gone");
        t.join().unwrap();
        assert!(
            err.to_string().contains("failed SET_OWNER")
                || err.to_string().contains("failed GET_FEATURES"),
            "{err}"
        );
    }
}
