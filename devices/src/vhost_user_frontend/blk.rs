//! [`VhostUserBlk`]: a virtio-blk device served by a vhost-user-blk backend (such as
//! `lego-vhost-blk` or `qemu-storage-daemon`) listening on a Unix socket. All it adds to the
//! generic [`VhostUserDevice`] is what makes it virtio-blk: the device type, the config space
//! and the queue count (`num_queues` with VIRTIO_BLK_F_MQ).

use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;

use super::device::{DeviceKind, VhostUserDevice};
use super::features;
use crate::virtio::block::config::{CONFIG_LEN, NUM_QUEUES_OFFSET};
use crate::virtio::{feature, TYPE_BLOCK};

/// virtio-blk over vhost-user.
pub struct Blk;

/// A virtio-blk device whose requests a vhost-user backend serves.
pub type VhostUserBlk = VhostUserDevice<Blk>;

impl DeviceKind for Blk {
    const DEVICE_TYPE: u32 = TYPE_BLOCK;
    const NAME: &'static str = "vhost-user-blk";
    const CONFIG_LEN: usize = CONFIG_LEN;

    fn queue_count(guest_features: u64, config: &[u8], backend_queues: Option<u64>) -> usize {
        let config_queues = u16::from_le_bytes([
            config.get(NUM_QUEUES_OFFSET).copied().unwrap_or(0),
            config.get(NUM_QUEUES_OFFSET + 1).copied().unwrap_or(0),
        ]);
        queue_count(guest_features, config_queues, backend_queues)
    }
}

/// The number of queues of the device: with VIRTIO_BLK_F_MQ the config space's
/// `num_queues` (at least 1), else 1; never more than the backend's queue count (when it
/// told one) or [`features::MAX_QUEUES`].
pub fn queue_count(device_features: u64, config_queues: u16, backend_queues: Option<u64>) -> usize {
    let wanted = if device_features & feature(VIRTIO_BLK_F_MQ) != 0 {
        usize::from(config_queues.max(1))
    } else {
        1
    };
    features::queue_count(wanted, backend_queues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user_frontend::device::QUEUE_MAX_SIZE;
    use crate::vhost_user_frontend::features::{MAX_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES};
    use crate::vhost_user_frontend::VhostUserError;
    use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;
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
        let mq = feature(VIRTIO_BLK_F_MQ);
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

    /// A pager that takes nothing (the fake backend never gets to SET_MEM_TABLE).
    struct NoPager;

    impl crate::vhost_user_frontend::BackendFaults for NoPager {
        fn adopt(
            &self,
            device: &str,
            _uffd: std::fs::File,
            _regions: Vec<crate::vhost_user_frontend::BackendRegion>,
        ) -> Result<(), crate::vhost_user_frontend::BackendFaultsError> {
            panic!("adopt called for {device}");
        }
    }

    /// What `connect_with_faults` acks to a fake backend offering `protocol`, or its error.
    fn acked_protocol(protocol: P, paged: bool) -> Result<u64, VhostUserError> {
        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = fake_backend(
            dir.path(),
            Offer {
                features: feature(VIRTIO_F_VERSION_1) | VHOST_USER_F_PROTOCOL_FEATURES,
                protocol,
                queues: 1,
                config: blk_config(8, 1),
            },
        );
        let faults: Option<std::sync::Arc<dyn crate::vhost_user_frontend::BackendFaults>> =
            paged.then(|| std::sync::Arc::new(NoPager) as _);
        // Dropped at once, so that the fake backend sees the hang-up and returns.
        let connected = VhostUserBlk::connect_with_faults(&path, faults).map(drop);
        let seen = backend.join().unwrap();
        connected.map(|()| {
            seen.iter()
                .find(|(r, _)| *r == SET_PROTOCOL_FEATURES)
                .expect("SET_PROTOCOL_FEATURES was sent")
                .1
        })
    }

    #[test]
    fn pagefault_is_required_and_acked_only_when_legovmm_pages_guest_ram() {
        let offered = P::CONFIG | P::REPLY_ACK | P::PAGEFAULT;
        assert_eq!(
            acked_protocol(offered, false).unwrap(),
            (P::CONFIG | P::REPLY_ACK).bits(),
            "without a pager nothing changes"
        );
        assert_eq!(
            acked_protocol(offered, true).unwrap(),
            (P::CONFIG | P::REPLY_ACK | P::PAGEFAULT).bits()
        );
        let err = acked_protocol(P::CONFIG | P::REPLY_ACK, true).expect_err("no PAGEFAULT");
        assert!(matches!(err, VhostUserError::NoPagefault(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("the vhost-user backend at /") && msg.contains("fake.sock"),
            "{msg}"
        );
        assert!(msg.contains("PAGEFAULT protocol feature"), "{msg}");
    }

    #[test]
    fn a_missing_socket_is_named_in_the_error() {
        let err = VhostUserBlk::connect(Path::new("/nonexistent/blk.sock"))
            .err()
            .expect("no backend there");
        let msg = lego_report::error_chain(&err);
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

    #[test]
    fn queue_count_follows_mq_and_the_backend() {
        let mq = feature(VIRTIO_BLK_F_MQ);
        assert_eq!(queue_count(0, 4, Some(4)), 1);
        assert_eq!(queue_count(mq, 4, Some(4)), 4);
        assert_eq!(queue_count(mq, 4, Some(2)), 2);
        assert_eq!(queue_count(mq, 0, None), 1);
        assert_eq!(queue_count(mq, 4, Some(0)), 1);
        assert_eq!(queue_count(mq, 1000, None), MAX_QUEUES);
    }
}
