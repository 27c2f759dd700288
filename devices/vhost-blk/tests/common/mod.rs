//! Shared by the integration tests: the daemon process and a minimal vhost-user frontend
//! driving one virtqueue laid out by hand in memfd-backed guest memory.

#![allow(dead_code)]

pub mod cluster;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: usize = 1 << 20;
pub const QUEUE_SIZE: u16 = 16;
/// Distance between the ring blocks of consecutive queues.
pub const RING_STRIDE: u64 = 0x4000;
pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const HDR: u64 = 0x3000;
pub const STATUS: u64 = 0x3100;
pub const DATA: u64 = 0x1_0000;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// The daemon process; killed if a test fails before stopping it.
pub struct Daemon {
    /// The process while it runs.
    pub child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_env(dir, extra, &[])
    }

    /// Starts the daemon with the file store on `disk` of `size`, then the `extra` arguments.
    pub fn start_file(dir: &Path, disk: &Path, size: &str, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--store",
            "file",
            "--path",
            disk.to_str().expect("utf-8"),
            "--size",
            size,
        ];
        args.extend_from_slice(extra);
        Self::start(dir, &args)
    }

    /// Starts the daemon with its store on remote memory of `size` for vNode `vnode`, placed
    /// through the manager of `cluster`.
    pub fn start_remote_memory(
        dir: &Path,
        cluster: &cluster::Cluster,
        vnode: &str,
        size: &str,
    ) -> Daemon {
        let key = cluster.key_hex();
        Self::start_env(
            dir,
            &[
                "--store",
                "remote-memory",
                "--manager",
                &cluster.manager_addr,
                "--vnode",
                vnode,
                "--size",
                size,
            ],
            &[("LEGO_CLUSTER_KEY", &key)],
        )
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_env(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let socket = dir.join("blk.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lego-vhost-blk");
        let d = Daemon {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut d = d;
        while !d.socket.exists() {
            let child = d.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("wait") {
                d.child = None;
                panic!("the daemon exited with {status} before creating its socket");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never created its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "the daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Guest memory in a memfd, mapped here and shared with the daemon.
pub fn guest_memory() -> GuestMemoryMmap {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vhost-blk-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).expect("size the memfd");
    let region = MmapRegion::from_file(FileOffset::new(file, 0), MEM_SIZE).expect("mmap");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
    GuestMemoryMmap::from_regions(vec![region]).expect("guest memory")
}

/// Gives `fe` the one region of `mem` as its memory table.
pub fn set_mem_table(fe: &mut Frontend, mem: &GuestMemoryMmap) {
    let region = mem.iter().next().expect("one region");
    let info = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
    fe.set_mem_table(&[info]).expect("set_mem_table");
}

/// Sets up and enables queue `q` of `size` entries with its descriptor table, available and
/// used rings at `base + DESC`, `base + AVAIL` and `base + USED`; returns its (kick, call)
/// eventfds.
pub fn setup_vring(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    q: usize,
    size: u16,
    base: u64,
) -> (EventFd, EventFd) {
    let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).expect("host") as u64;
    fe.set_vring_num(q, size).expect("set_vring_num");
    fe.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: host(base + DESC),
            used_ring_addr: host(base + USED),
            avail_ring_addr: host(base + AVAIL),
            log_addr: None,
        },
    )
    .expect("set_vring_addr");
    fe.set_vring_base(q, 0).expect("set_vring_base");
    let kick = EventFd::new(libc::EFD_NONBLOCK).expect("kick");
    let call = EventFd::new(libc::EFD_NONBLOCK).expect("call");
    fe.set_vring_call(q, &call).expect("set_vring_call");
    fe.set_vring_kick(q, &kick).expect("set_vring_kick");
    fe.set_vring_enable(q, true).expect("set_vring_enable");
    (kick, call)
}

/// The capacity (in 512-byte sectors) in a virtio-blk config space.
pub fn config_capacity(cfg: &[u8]) -> u64 {
    u64::from_le_bytes(cfg[..8].try_into().expect("8"))
}

/// The block size in a virtio-blk config space.
pub fn config_blk_size(cfg: &[u8]) -> u32 {
    u32::from_le_bytes(cfg[20..24].try_into().expect("4"))
}

/// One virtqueue laid out by hand: descriptor table, available and used rings at `base`.
struct Ring {
    base: u64,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    used_seen: u16,
}

/// A vhost-user frontend driving its virtqueues one request at a time.
pub struct Driver {
    /// The vhost-user connection.
    pub fe: Frontend,
    /// Guest memory shared with the daemon.
    pub mem: GuestMemoryMmap,
    rings: Vec<Ring>,
    queue: usize,
    event_idx: bool,
}

impl Driver {
    /// Connects with one queue and no EVENT_IDX.
    pub fn connect(socket: &Path) -> Driver {
        Self::connect_with(socket, 1, false)
    }

    /// Connects, checks the offered features, and sets up `queues` queues (the daemon must
    /// offer exactly that many), negotiating EVENT_IDX if asked.
    pub fn connect_with(socket: &Path, queues: u16, event_idx: bool) -> Driver {
        assert!((1..=3).contains(&queues), "the layout here fits 3 queues");
        let mem = guest_memory();
        let mut fe = Frontend::connect(socket, u64::from(queues)).expect("connect");
        fe.set_owner().expect("set_owner");
        let features = fe.get_features().expect("get_features");
        for (bit, name) in [
            (VIRTIO_F_VERSION_1, "VERSION_1"),
            (VIRTIO_BLK_F_FLUSH, "FLUSH"),
            (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
            (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
            (VIRTIO_BLK_F_MQ, "MQ"),
            (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        ] {
            assert_ne!(features & bit, 0, "{name} is not offered");
        }
        assert_eq!(
            features & VIRTIO_BLK_F_RO,
            0,
            "a writable store is offered RO"
        );
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_ne!(features & protocol, 0);
        let mut want = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_MQ | protocol;
        if event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        fe.set_features(want).expect("set_features");
        let pf = fe.get_protocol_features().expect("get_protocol_features");
        assert!(pf.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(pf.contains(VhostUserProtocolFeatures::MQ));
        fe.set_protocol_features(
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .expect("set_protocol_features");
        assert_eq!(
            fe.get_queue_num().expect("get_queue_num"),
            u64::from(queues)
        );

        set_mem_table(&mut fe, &mem);
        let mut rings = Vec::new();
        for q in 0..usize::from(queues) {
            let base = q as u64 * RING_STRIDE;
            let (kick, call) = setup_vring(&mut fe, &mem, q, QUEUE_SIZE, base);
            rings.push(Ring {
                base,
                kick,
                call,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        Driver {
            fe,
            mem,
            rings,
            queue: 0,
            event_idx,
        }
    }

    /// Sends the next requests on queue `q`.
    pub fn use_queue(&mut self, q: usize) {
        assert!(q < self.rings.len());
        self.queue = q;
    }

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
        let r = &mut self.rings[self.queue];
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let at = GuestAddress(r.base + DESC + 16 * i as u64);
            mem.write_obj(addr, at).expect("desc addr");
            mem.write_obj(len, at.unchecked_add(8)).expect("desc len");
            mem.write_obj(flags, at.unchecked_add(12))
                .expect("desc flags");
            mem.write_obj(i as u16 + 1, at.unchecked_add(14))
                .expect("desc next");
        }
        let avail = r.base + AVAIL;
        let used_ring = r.base + USED;
        if self.event_idx {
            // used_event: interrupt me once the device moves past what I have seen.
            mem.write_obj(
                r.used_seen,
                GuestAddress(avail + 4 + 2 * u64::from(QUEUE_SIZE)),
            )
            .expect("used_event");
        }
        let slot = u64::from(r.avail_idx % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .expect("avail ring");
        r.avail_idx = r.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(r.avail_idx, GuestAddress(avail + 2))
            .expect("avail idx");
        r.kick.write(1).expect("kick");

        let deadline = Instant::now() + Duration::from_secs(20);
        assert!(
            wait_readable(&r.call, deadline),
            "no interrupt came for the request"
        );
        let _ = r.call.read();
        let used: u16 = mem.read_obj(GuestAddress(used_ring + 2)).expect("used idx");
        assert_eq!(
            used,
            r.used_seen.wrapping_add(1),
            "one request, one completion"
        );
        let slot = u64::from(r.used_seen % QUEUE_SIZE);
        r.used_seen = used;
        let id: u32 = mem
            .read_obj(GuestAddress(used_ring + 4 + 8 * slot))
            .expect("id");
        assert_eq!(id, 0, "the head descriptor comes back");
        mem.read_obj(GuestAddress(used_ring + 8 + 8 * slot))
            .expect("len")
    }

    /// Sends a request with a header, optional data buffer and a status byte; returns
    /// (used length, status).
    pub fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u8) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(HDR)).expect("hdr");
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

/// Waits until `fd` is readable (`true`) or `deadline` passes (`false`).
pub fn wait_readable(fd: &EventFd, deadline: Instant) -> bool {
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0 && p.revents & libc::POLLIN != 0;
    }
}
