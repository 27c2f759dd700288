//! virtio-net over a real tap, driven as a guest driver would (mock split queues on real
//! guest memory), against the kernel's network stack.
//!
//! Every tap lives in a network namespace of its own (`lgnet-<pid>-<n>`, deleted on drop),
//! opened from a thread that entered it; nothing touches the machine's root namespace.
//! Needs root and `ip`; without them the tests print why and pass, unless `CI=true`.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lego_devices::net::tap::{Tap, TapError};
use lego_devices::virtio::interrupt::INT_USED_RING;
use lego_devices::virtio::net::{Net, NetBackend, NetError};
use lego_devices::virtio::{
    feature, ActivateContext, VirtioDevice, VirtioInterrupt, TYPE_NET, VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x98, 0x00, 0x02];
const GUEST_IP: [u8; 4] = [10, 98, 0, 2];
const HOST_IP: [u8; 4] = [10, 98, 0, 1];
const QSIZE: u16 = 16;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const CTRL_BUF: u64 = 0x38_0000;
const HDR: usize = 12;

/// Why the test cannot run here, or `None` when it can.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and taps need CAP_NET_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command is missing".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// True when the test may run; prints the reason and returns false (or panics under CI).
fn can_run(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot run: {why}")
        }
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// A network namespace for one test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lgnet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Self { name };
        ns.run_ip(&["netns", "add", &ns.name]);
        // No IPv6 chatter (router solicitations, DAD) in the rx ring.
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
            .arg("net.ipv6.conf.all.disable_ipv6=1")
            .arg("net.ipv6.conf.default.disable_ipv6=1")
            .status();
        ns
    }

    fn run_ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <ns> args...`.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.run_ip(&all)
    }

    /// Runs `f` on a thread inside the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: `ns` is an open namespace file; setns only changes this thread's
                // network namespace, and the thread ends with `f`.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the namespace thread panicked")
        })
    }

    /// Opens tap `name` inside the namespace, gives it 10.98.0.1/24 and brings it up.
    fn tap_with_address(&self, name: &str, pairs: u16) -> Vec<Tap> {
        let taps = self.enter(|| Tap::open(name, pairs)).expect("open the tap");
        self.ip(&["addr", "add", "10.98.0.1/24", "dev", name]);
        self.ip(&["link", "set", name, "up"]);
        taps
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// The guest side of one split queue: descriptor table at `base`, available ring at
/// `base + 0x1000`, used ring at `base + 0x2000`. (`virtio_queue::mock::MockSplitQueue`
/// lays its used ring over the end of its available ring, which a test that fills the
/// ring trips over.)
struct Ring<'a> {
    mem: &'a GuestMemoryMmap<()>,
    base: u64,
    kick: EventFd,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap<()>, base: u64) -> Self {
        // Zero flags, indexes and event fields.
        mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
        Self {
            mem,
            base,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    fn avail(&self) -> u64 {
        self.base + 0x1000
    }

    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let half = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = half(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = half(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = half(self.used());
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// Publishes chains of descriptors (one chain per inner slice) and kicks. Descriptor
    /// slots are reused from 0 when the table's end is reached (the old ones are used).
    fn publish(&mut self, chains: &[&[(u64, u32, bool)]]) {
        for chain in chains {
            let mut base = self.next_desc;
            if usize::from(base) + chain.len() > usize::from(QSIZE) {
                base = 0;
            }
            for (i, &(addr, len, write)) in chain.iter().enumerate() {
                let index = base + i as u16;
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < chain.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d = SplitDescriptor::new(addr, len, flags, index + 1);
                self.mem
                    .write_obj(d, GuestAddress(self.base + 16 * u64::from(index)))
                    .unwrap();
            }
            self.next_desc = (base + chain.len() as u16) % QSIZE;
            let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QSIZE);
            self.mem.write_obj(base, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
                .unwrap();
        }
        self.kick.write(1).unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used() + 2)).unwrap()
    }

    /// The next used element (head, length), waiting up to 10 s.
    fn next_used(&mut self) -> (u32, u32) {
        let start = Instant::now();
        while self.used_idx() == self.seen_used {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for a used buffer"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let at = self.used() + 4 + 8 * u64::from(self.seen_used % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.seen_used = self.seen_used.wrapping_add(1);
        (id, len)
    }
}

/// A device activated on `rings` (in queue order), with all offered features acked.
fn activate(
    net: &mut Net,
    mem: &GuestMemoryMmap<()>,
    rings: &[&Ring<'_>],
) -> (VirtioInterrupt, u64) {
    let acked = net.avail_features();
    let event_idx = acked & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
    let irq = VirtioInterrupt::new().unwrap();
    net.activate(ActivateContext {
        mem: mem.clone(),
        queues: rings.iter().map(|r| r.queue(event_idx)).collect(),
        queue_events: rings.iter().map(|r| r.kick.try_clone().unwrap()).collect(),
        interrupt: irq.clone(),
        acked_features: acked,
    })
    .expect("activate");
    (irq, acked)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_echo(dst_mac: &[u8], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Sends `frame` (after a zero virtio-net header) through the tx ring and waits for it.
fn send(tx: &mut Ring<'_>, mem: &GuestMemoryMmap<()>, frame: &[u8]) {
    send_with_header(tx, mem, [0; HDR], frame);
}

/// Sends `frame` after the virtio-net header `hdr` through the tx ring and waits for it.
fn send_with_header(tx: &mut Ring<'_>, mem: &GuestMemoryMmap<()>, hdr: [u8; HDR], frame: &[u8]) {
    let mut bytes = hdr.to_vec();
    bytes.extend_from_slice(frame);
    let at = TX_BUFS + u64::from(tx.next_desc) * 0x1_0000;
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    tx.publish(&[&[(at, bytes.len() as u32, false)]]);
    let (_, len) = tx.next_used();
    assert_eq!(len, 0, "tx chains complete with length 0");
}

/// Waits for a received frame for which `wanted` holds; returns it (without the header).
fn receive(
    rx: &mut Ring<'_>,
    mem: &GuestMemoryMmap<()>,
    wanted: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    loop {
        let (head, len) = rx.next_used();
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(RX_BUFS + u64::from(head) * 0x1000))
            .unwrap();
        assert!(
            bytes.len() >= HDR,
            "a used rx buffer shorter than the header: head {head} len {len}"
        );
        assert_eq!(
            u16::from_le_bytes([bytes[10], bytes[11]]),
            1,
            "num_buffers of a small frame"
        );
        let frame = bytes.split_off(HDR);
        if wanted(&frame) {
            return frame;
        }
    }
}

/// The guest ARPs for the host, then pings it, through `backend`.
fn arp_and_ping(backend: NetBackend) {
    let ns = Netns::new();
    let taps = ns.tap_with_address("lgtap0", 1);
    let mut net = Net::new(taps, GUEST_MAC, backend).expect("create the device");
    assert_eq!(net.backend_in_use(), backend);
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes().len(), 2);
    let mut cfg = [0u8; 6];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, GUEST_MAC);

    let mem = memory();
    let mut rx = Ring::new(&mem, 0);
    let mut tx = Ring::new(&mem, 0x1_0000);
    let (irq, _) = activate(&mut net, &mem, &[&rx, &tx]);
    assert_eq!(net.backend_in_use(), backend);
    let bufs: Vec<[(u64, u32, bool); 1]> = (0..u64::from(QSIZE))
        .map(|i| [(RX_BUFS + i * 0x1000, 2048, true)])
        .collect();
    let chains: Vec<&[(u64, u32, bool)]> = bufs.iter().map(|b| &b[..]).collect();
    rx.publish(&chains);

    send(&mut tx, &mem, &arp_request());
    let reply = receive(&mut rx, &mem, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06]
    });
    assert_eq!(&reply[0..6], &GUEST_MAC, "the reply goes to the guest");
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[28..32], &HOST_IP);
    assert_eq!(&reply[38..42], &GUEST_IP);
    let host_mac = reply[22..28].to_vec();

    let payload: Vec<u8> = (0..56u8).collect();
    send(&mut tx, &mem, &icmp_echo(&host_mac, 0x4c47, 1, &payload));
    let pong = receive(&mut rx, &mem, |f| {
        f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[23] == 1
    });
    assert_eq!(&pong[26..30], &HOST_IP);
    assert_eq!(&pong[30..34], &GUEST_IP);
    assert_eq!(pong[34], 0, "an echo reply");
    assert_eq!(&pong[38..40], &0x4c47u16.to_be_bytes());
    assert_eq!(&pong[40..42], &1u16.to_be_bytes());
    assert_eq!(&pong[42..], &payload[..]);

    // Checksum offload on transmit (CSUM): the ICMP checksum left to the host, as
    // NEEDS_CSUM with its start and offset in the header; the kernel takes the frame as
    // checksummed and answers.
    let mut echo = icmp_echo(&host_mac, 0x4c47, 2, &payload);
    echo[36..38].copy_from_slice(&[0, 0]);
    let mut hdr = [0u8; HDR];
    hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the ICMP header
    hdr[8..10].copy_from_slice(&2u16.to_le_bytes()); // csum_offset: its checksum field
    send_with_header(&mut tx, &mem, hdr, &echo);
    let pong = receive(&mut rx, &mem, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
    });
    assert_eq!(&pong[40..42], &2u16.to_be_bytes());

    assert_ne!(irq.status() & INT_USED_RING, 0, "the interrupt was raised");
    net.reset();
    assert!(!net.is_active());
    net.reset();
}

#[test]
fn in_process_backend_answers_arp_and_ping() {
    if !can_run("in_process_backend_answers_arp_and_ping") {
        return;
    }
    arp_and_ping(NetBackend::InProcess);
}

#[test]
fn vhost_net_backend_answers_arp_and_ping() {
    let test = "vhost_net_backend_answers_arp_and_ping";
    if !can_run(test) {
        return;
    }
    if !std::path::Path::new("/dev/vhost-net").exists() {
        let _ = Command::new("modprobe").arg("vhost_net").status();
    }
    if !std::path::Path::new("/dev/vhost-net").exists() {
        // A property of the running kernel that no package installs (PVM hosts, for one, have
        // no vhost_net): the kernel data path is then run by the nested test
        // tests/tests/vnode_network.rs, whose compute host loads vhost_net and which checks
        // that legovmm chose it. Here: the clear error and the fallback.
        eprintln!(
            "{test}: /dev/vhost-net is missing (this kernel has no vhost_net module); checking \
             the error and the in-process fallback only (tests/tests/vnode_network.rs runs \
             vhost-net on the nested compute host)"
        );
        // Asking for vhost-net where there is none is a clear error.
        let ns = Netns::new();
        let taps = ns.enter(|| Tap::open("lgtap0", 1)).unwrap();
        let e = Net::new(taps, GUEST_MAC, NetBackend::VhostNet)
            .err()
            .unwrap();
        assert!(matches!(e, NetError::VhostNetUnavailable(_)), "{e}");
        assert!(e.to_string().contains("vhost_net module"), "{e}");
        let taps = ns.enter(|| Tap::open("lgtap1", 1)).unwrap();
        let net = Net::new(taps, GUEST_MAC, NetBackend::Auto).unwrap();
        assert_eq!(net.backend_in_use(), NetBackend::InProcess);
        return;
    }
    arp_and_ping(NetBackend::VhostNet);
}

/// Sends one control request and returns (used length, status byte).
fn control(ctrl: &mut Ring<'_>, mem: &GuestMemoryMmap<()>, req: &[u8]) -> (u32, u8) {
    let at = CTRL_BUF + u64::from(ctrl.next_desc) * 0x100;
    mem.write_slice(req, GuestAddress(at)).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(at + 0x80)).unwrap();
    ctrl.publish(&[&[(at, req.len() as u32, false), (at + 0x80, 1, true)]]);
    let (_, len) = ctrl.next_used();
    (len, mem.read_obj(GuestAddress(at + 0x80)).unwrap())
}

/// The tap's queue count as the kernel sees it (sysfs in the namespace).
fn kernel_rx_queues(ns: &Netns, tap: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ls"])
        .arg(format!("/sys/class/net/{tap}/queues"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|q| q.starts_with("rx-"))
        .count()
}

#[test]
fn multi_queue_control_queue_attaches_the_pairs_the_driver_uses() {
    if !can_run("multi_queue_control_queue_attaches_the_pairs_the_driver_uses") {
        return;
    }
    let ns = Netns::new();
    let taps = ns.tap_with_address("lgmq0", 2);
    assert_eq!(taps.len(), 2);
    assert!(taps.iter().all(|t| t.multi_queue() && t.name() == "lgmq0"));
    let mut net = Net::new(taps, GUEST_MAC, NetBackend::InProcess).unwrap();
    let f = net.avail_features();
    assert_ne!(f & feature(VIRTIO_NET_F_MQ), 0);
    assert_ne!(f & feature(VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(net.queue_max_sizes().len(), 5);
    let mut pairs = [0u8; 2];
    net.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 2);

    let mem = memory();
    let rings: Vec<Ring<'_>> = (0..5u64).map(|i| Ring::new(&mem, i * 0x1_0000)).collect();
    let mut rings = rings.into_iter();
    let (rx0, tx0, rx1, tx1) = (
        rings.next().unwrap(),
        rings.next().unwrap(),
        rings.next().unwrap(),
        rings.next().unwrap(),
    );
    let mut ctrl = rings.next().unwrap();
    activate(&mut net, &mem, &[&rx0, &tx0, &rx1, &tx1, &ctrl]);
    assert_eq!(
        kernel_rx_queues(&ns, "lgmq0"),
        1,
        "the driver starts on pair 0"
    );

    let mq = VIRTIO_NET_CTRL_MQ as u8;
    let set = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    assert_eq!(
        control(&mut ctrl, &mem, &[mq, set, 2, 0]),
        (1, VIRTIO_NET_OK as u8)
    );
    assert_eq!(kernel_rx_queues(&ns, "lgmq0"), 2);
    assert_eq!(
        control(&mut ctrl, &mem, &[mq, set, 3, 0]),
        (1, VIRTIO_NET_ERR as u8)
    );
    assert_eq!(
        control(&mut ctrl, &mem, &[0, 0, 1]),
        (1, VIRTIO_NET_ERR as u8)
    );
    assert_eq!(control(&mut ctrl, &mem, &[mq]), (1, VIRTIO_NET_ERR as u8));
    assert_eq!(
        control(&mut ctrl, &mem, &[mq, set, 1, 0]),
        (1, VIRTIO_NET_OK as u8)
    );
    assert_eq!(kernel_rx_queues(&ns, "lgmq0"), 1);
    net.reset();
    assert!(!net.is_active());
}

#[test]
fn a_busy_or_incompatible_tap_and_bad_names_give_clear_errors() {
    if !can_run("a_busy_or_incompatible_tap_and_bad_names_give_clear_errors") {
        return;
    }
    let ns = Netns::new();
    ns.enter(|| {
        let first = Tap::open("lgbusy0", 1).unwrap();
        let e = Tap::open("lgbusy0", 1).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
        assert_eq!(e.to_string(), "tap lgbusy0 is in use by another process");
        let e = Tap::open("lgbusy0", 2).unwrap_err();
        assert!(matches!(e, TapError::Incompatible { .. }), "{e}");
        assert!(e.to_string().contains("multi-queue tap"), "{e}");
        // Another tap's queues cannot make one device.
        let other = Tap::open("lgbusy1", 1).unwrap();
        let mixed: Vec<Tap> = first.into_iter().chain(other).collect();
        let e = Net::new(mixed, GUEST_MAC, NetBackend::InProcess)
            .err()
            .unwrap();
        assert!(matches!(e, NetError::MixedTaps { .. }), "{e}");
        // A loopback device is no tap.
        let e = Tap::open("lo", 1).unwrap_err();
        assert!(matches!(e, TapError::Incompatible { .. }), "{e}");
    });
    for bad in ["bad/name", "a-name-too-long-for-linux", "", "with space"] {
        let e = Tap::open(bad, 1).unwrap_err();
        assert!(matches!(e, TapError::InvalidName { .. }), "{bad:?}: {e}");
        assert!(e.to_string().contains("is not a valid tap name"), "{e}");
    }
}

#[test]
fn set_up_and_attach_to_bridge_act_in_the_taps_namespace() {
    if !can_run("set_up_and_attach_to_bridge_act_in_the_taps_namespace") {
        return;
    }
    let ns = Netns::new();
    let tap = ns.enter(|| Tap::open("lgbr-tap", 1)).unwrap().remove(0);
    ns.enter(|| {
        let e = tap.attach_to_bridge("lgnobr0").unwrap_err();
        assert!(matches!(e, TapError::BridgeMissing { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "the bridge lgnobr0 does not exist, so tap lgbr-tap cannot join it"
        );
        tap.set_up().unwrap();
    });
    assert!(ns.ip(&["link", "show", "lgbr-tap"]).contains(",UP"));
    ns.ip(&["link", "add", "lgbr0", "type", "bridge"]);
    // A device that is not a bridge: a second tap.
    let _other = ns.enter(|| Tap::open("lgother0", 1)).unwrap();
    ns.enter(|| {
        let e = tap.attach_to_bridge("lgother0").unwrap_err();
        assert!(matches!(e, TapError::NotABridge { .. }), "{e}");
        tap.attach_to_bridge("lgbr0").unwrap();
    });
    assert!(ns
        .ip(&["link", "show", "lgbr-tap"])
        .contains("master lgbr0"));
    tap.set_offload(lego_devices::net::tap::TUN_F_CSUM).unwrap();
}

/// Reads used rx buffer `head` (`len` bytes).
fn rx_buffer(mem: &GuestMemoryMmap<()>, head: u32, len: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(RX_BUFS + u64::from(head) * 0x1000))
        .unwrap();
    bytes
}

#[test]
fn rx_waits_for_buffers_skips_malformed_ones_and_merges_big_frames() {
    if !can_run("rx_waits_for_buffers_skips_malformed_ones_and_merges_big_frames") {
        return;
    }
    let ns = Netns::new();
    let taps = ns.tap_with_address("lgrx0", 1);
    ns.ip(&["link", "set", "lgrx0", "mtu", "9000"]);
    let mut net = Net::new(taps, GUEST_MAC, NetBackend::InProcess).unwrap();
    let mem = memory();
    let mut rx = Ring::new(&mem, 0);
    let mut tx = Ring::new(&mem, 0x1_0000);
    activate(&mut net, &mem, &[&rx, &tx]);

    // A malformed tx chain (device-writable) is completed with length 0 and skipped.
    tx.publish(&[&[(TX_BUFS, 64, true)]]);
    assert_eq!(tx.next_used().1, 0);

    // The ARP reply comes while the guest has posted no rx buffer: it waits.
    send(&mut tx, &mem, &arp_request());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rx.used_idx(), 0);

    // A malformed rx buffer (device-readable) is completed with length 0; the frame goes
    // to the next good one.
    rx.publish(&[&[(RX_BUFS, 2048, false)]]);
    assert_eq!(rx.next_used(), (0, 0));
    let bufs: Vec<[(u64, u32, bool); 1]> = (1..u64::from(QSIZE))
        .map(|i| [(RX_BUFS + i * 0x1000, 2048, true)])
        .collect();
    let chains: Vec<&[(u64, u32, bool)]> = bufs.iter().map(|b| &b[..]).collect();
    rx.publish(&chains);
    let reply = receive(&mut rx, &mem, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06]
    });
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    let host_mac = reply[22..28].to_vec();

    // A 4000-byte echo: its reply spans two 2048-byte buffers (MRG_RXBUF).
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    send(&mut tx, &mem, &icmp_echo(&host_mac, 7, 9, &payload));
    loop {
        let (head, len) = rx.next_used();
        let first = rx_buffer(&mem, head, len);
        let num_buffers = u16::from_le_bytes([first[10], first[11]]);
        let mut frame = first[HDR..].to_vec();
        for _ in 1..num_buffers {
            let (head, len) = rx.next_used();
            frame.extend(rx_buffer(&mem, head, len));
        }
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 1 {
            continue;
        }
        assert_eq!(num_buffers, 2, "the reply spans two buffers");
        assert_eq!(frame.len(), 14 + 20 + 8 + payload.len());
        assert_eq!(frame[34], 0, "an echo reply");
        assert_eq!(&frame[42..], &payload[..]);
        break;
    }
    net.reset();
}
