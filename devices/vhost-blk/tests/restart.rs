//! Backend restarts: `lego-vhost-blk` killed with SIGKILL while requests are in flight and
//! started again, with legovmm's own vhost-user frontend (`lego_devices::vhost_user_frontend`)
//! reconnecting and re-submitting; and a remote memory backend restarted for the same vNode
//! keeping its pages (or reporting them lost when their memory monitor restarted too).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use lego_devices::vhost_user_frontend::{ReconnectPolicy, VhostUserBlk};
use lego_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use lego_fabric::{ClientConfig, ServerConfig, ServerHandle};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{MonitorKind, RegisterMonitor};
use lego_monitors::memory_service::MemoryService;
use lego_monitors::pagestore::PageStore;
use lego_testkit::vhost_user::blk::*;
use lego_testkit::vhost_user::guest_memory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The queue's size (descriptors).
const QSIZE: u16 = 256;
/// Requests in flight at most (three descriptors each).
const SLOTS: u64 = 64;
const DESC_AT: u64 = 0x0;
const AVAIL_AT: u64 = 0x1000;
const USED_AT: u64 = 0x2000;
const HDRS_AT: u64 = 0x4000;
const STATUS_AT: u64 = 0x5000;
const DATA_AT: u64 = 0x10000;
const BLOCK: u64 = 4096;

/// A guest driver of one virtio-blk queue with up to [`SLOTS`] 4 KiB writes in flight.
struct Guest {
    mem: GuestMemoryMmap,
    kick: EventFd,
    avail: u16,
    used_seen: u16,
    /// Slot → the request it carries.
    outstanding: HashMap<u16, u64>,
    free: Vec<u16>,
}

impl Guest {
    fn new(mem: GuestMemoryMmap, kick: EventFd) -> Self {
        Guest {
            mem,
            kick,
            avail: 0,
            used_seen: 0,
            outstanding: HashMap::new(),
            free: (0..SLOTS as u16).rev().collect(),
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC_AT as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_AT as u32), Some(0));
        q.set_used_ring_address(Some(USED_AT as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC_AT + 16 * u64::from(i);
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).expect("desc");
        m.write_obj(len, GuestAddress(at + 8)).expect("desc");
        m.write_obj(flags, GuestAddress(at + 12)).expect("desc");
        m.write_obj(next, GuestAddress(at + 14)).expect("desc");
    }

    /// Puts a write of block `n` (its pattern) on the ring in a free slot; false if none.
    fn push_write(&mut self, n: u64) -> bool {
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let s = u64::from(slot);
        let (hdr, data, status) = (HDRS_AT + 16 * s, DATA_AT + BLOCK * s, STATUS_AT + s);
        self.mem
            .write_slice(&request_header(T_OUT, n * 8), GuestAddress(hdr))
            .expect("hdr");
        self.mem
            .write_slice(&pattern(n), GuestAddress(data))
            .expect("data");
        self.mem
            .write_obj(0xFFu8, GuestAddress(status))
            .expect("status");
        let d = slot * 3;
        self.desc(d, hdr, 16, 1, d + 1);
        self.desc(d + 1, data, BLOCK as u32, 1, d + 2);
        self.desc(d + 2, status, 1, 2, 0);
        let at = AVAIL_AT + 4 + 2 * u64::from(self.avail % QSIZE);
        self.mem.write_obj(d, GuestAddress(at)).expect("avail");
        self.avail = self.avail.wrapping_add(1);
        self.outstanding.insert(slot, n);
        true
    }

    fn publish(&self) {
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL_AT + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
        self.kick.write(1).expect("kick");
    }

    fn used_idx(&self) -> u16 {
        let idx = self.mem.read_obj(GuestAddress(USED_AT + 2)).expect("used");
        fence(Ordering::SeqCst);
        idx
    }

    /// Reaps every completion: (request, status) each. Panics on a completion of a slot
    /// that carries no request (a request completed twice).
    fn reap(&mut self) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        while self.used_seen != self.used_idx() {
            let at = USED_AT + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            self.used_seen = self.used_seen.wrapping_add(1);
            let slot = (id / 3) as u16;
            assert_eq!(id % 3, 0, "a used id that is no head: {id}");
            let n = self
                .outstanding
                .remove(&slot)
                .unwrap_or_else(|| panic!("slot {slot} completed with no request in it"));
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS_AT + u64::from(slot)))
                .expect("status");
            self.free.push(slot);
            out.push((n, status));
        }
        out
    }
}

/// Block `n`'s contents: its number, then a byte derived from it.
fn pattern(n: u64) -> Vec<u8> {
    let mut b = vec![(n % 251) as u8; BLOCK as usize];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b
}

/// Starts the file-store daemon on `disk`, after removing what a killed one left.
fn start_file_daemon(dir: &Path, disk: &Path) -> Daemon {
    let _ = std::fs::remove_file(dir.join("blk.sock"));
    Daemon::start_file(dir, disk, "16M", &[])
}

/// Drives `TOTAL` 4 KiB writes (block n gets `pattern(n)`) through legovmm's frontend with
/// up to [`SLOTS`] in flight, kills the daemon (SIGKILL) each time another [`KILL_EVERY`]
/// completed and starts it again with `start`; checks every request completes exactly once
/// and succeeds, and that requests were in flight at some kill. Returns each kill's
/// guest-visible stall (the kill to the first completion after it) with the requests in
/// flight at it, and the running daemon.
fn kill_mid_stream(
    socket: &Path,
    mut start: impl FnMut() -> Daemon,
) -> (Vec<(Duration, u16)>, Daemon) {
    lego_monitor_client::logging::init();
    let mut daemon = Some(start());
    let mut device = VhostUserBlk::connect(socket).expect("connect");
    let mem = guest_memory(4 << 20);
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let mut guest = Guest::new(mem.clone(), kick.try_clone().expect("kick"));
    let acked = device.avail_features() & (1 << 32);
    assert_ne!(acked, 0, "VERSION_1 is offered");
    device
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![guest.queue()],
            queue_events: vec![kick],
            interrupt: VirtioInterrupt::new().expect("interrupt"),
            acked_features: acked,
        })
        .expect("activate");

    let mut next = 0u64;
    let mut done = 0u64;
    // Per kill: when, requests in flight then, and the stall once known.
    let mut kills: Vec<(Instant, u16, Option<Duration>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done < TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {done} of {TOTAL} requests completed"
        );
        let mut pushed = false;
        while next < TOTAL && guest.push_write(next) {
            next += 1;
            pushed = true;
        }
        if pushed {
            guest.publish();
        }
        if done >= KILL_EVERY * (kills.len() as u64 + 1) && done < TOTAL - KILL_EVERY / 2 {
            daemon.take().expect("the daemon").kill();
            let at = Instant::now();
            kills.push((at, guest.avail.wrapping_sub(guest.used_idx()), None));
            daemon = Some(start());
        }
        let reaped = guest.reap();
        if reaped.is_empty() {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        if let Some((at, _, stall @ None)) = kills.last_mut() {
            *stall = Some(at.elapsed());
        }
        for (n, status) in reaped {
            assert_eq!(status, 0, "request {n} failed");
            done += 1;
        }
    }
    assert!(
        kills.iter().any(|k| k.1 > 0),
        "no request was in flight at any kill"
    );
    assert_eq!(
        guest.used_idx(),
        TOTAL as u16,
        "exactly one completion per request"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(guest.reap(), Vec::new(), "no late completion");
    device.reset();
    let kills = kills
        .into_iter()
        .map(|(_, in_flight, stall)| (stall.expect("a completion after each kill"), in_flight))
        .collect();
    (kills, daemon.take().expect("the daemon"))
}

/// Prints the kills' stalls and in-flight counts for `store` on one line.
fn report(store: &str, kills: &[(Duration, u16)]) {
    let stalls: Vec<String> = kills
        .iter()
        .map(|(s, _)| format!("{:.1}", s.as_secs_f64() * 1000.0))
        .collect();
    let in_flight: Vec<String> = kills.iter().map(|k| k.1.to_string()).collect();
    eprintln!(
        "RESULT store={store} restart-stall-ms={} in-flight-at-kill={}",
        stalls.join(","),
        in_flight.join(",")
    );
}

/// Completions between two kills.
const KILL_EVERY: u64 = 600;

/// Requests each kill test sends.
const TOTAL: u64 = 3000;

#[test]
fn a_backend_killed_with_requests_in_flight_is_reconnected_and_each_request_completes_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let socket = dir.path().join("blk.sock");
    let (kills, daemon) = kill_mid_stream(&socket, || start_file_daemon(dir.path(), &disk));
    assert!(daemon.terminate().success());
    report("file", &kills);
    let file = std::fs::read(&disk).expect("disk");
    for n in 0..TOTAL {
        let at = (n * BLOCK) as usize;
        assert!(
            file[at..at + BLOCK as usize] == pattern(n)[..],
            "block {n} does not hold its data"
        );
    }
}

#[test]
fn a_remote_memory_backend_killed_with_requests_in_flight_keeps_every_page() {
    killed_remote_memory_backend_keeps_every_page(32, "0");
}

/// The same with the queue worker polling its ring (`--poll-us`): a backend killed while it
/// polls (NO_NOTIFY set in the used ring) is replaced by one that serves the kick and
/// clears the flag, and no page is lost.
#[test]
fn a_polling_remote_memory_backend_killed_with_requests_in_flight_keeps_every_page() {
    killed_remote_memory_backend_keeps_every_page(33, "200");
}

fn killed_remote_memory_backend_keeps_every_page(vnode: u64, poll_us: &str) {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("memory.state");
    let socket = dir.path().join("blk.sock");
    let id = vnode.to_string();
    let (kills, daemon) = kill_mid_stream(&socket, || {
        start_memory_daemon(dir.path(), &cluster, &state, &id, "16M", poll_us)
    });
    report(&format!("remote-memory (poll {poll_us} us)"), &kills);
    let mut page = vec![0u8; BLOCK as usize];
    for n in 0..TOTAL {
        cluster.pages.read_run(vnode, n, &mut page).expect("read");
        assert!(page == pattern(n), "page {n} does not hold its data");
    }
    assert!(daemon.terminate().success());
    assert_eq!(
        cluster.pages.vnode_pages(vnode),
        0,
        "SIGTERM released the pages"
    );
}

/// A device over the file daemon at `socket` with `policy`, activated with every feature it
/// offers, and the guest driving it.
fn activated(socket: &Path, policy: ReconnectPolicy) -> (VhostUserBlk, Guest) {
    let mut device = VhostUserBlk::connect(socket)
        .expect("connect")
        .with_reconnect(policy);
    let mem = guest_memory(4 << 20);
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let guest = Guest::new(mem.clone(), kick.try_clone().expect("kick"));
    let acked = device.avail_features();
    device
        .activate(ActivateContext {
            mem,
            queues: vec![guest.queue()],
            queue_events: vec![kick],
            interrupt: VirtioInterrupt::new().expect("interrupt"),
            acked_features: acked,
        })
        .expect("activate");
    (device, guest)
}

/// Sends writes of blocks `from..to` and returns how many completed (successfully) within
/// `wait`.
fn write_blocks(guest: &mut Guest, from: u64, to: u64, wait: Duration) -> u64 {
    for n in from..to {
        assert!(guest.push_write(n), "a free slot");
    }
    guest.publish();
    let deadline = Instant::now() + wait;
    let mut done = 0;
    while done < to - from && Instant::now() < deadline {
        for (n, status) in guest.reap() {
            assert_eq!(status, 0, "request {n} failed");
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    done
}

#[test]
fn a_backend_back_without_a_feature_the_guest_acked_or_after_the_window_is_not_resumed() {
    // The frontend's log says why (shown with --nocapture).
    lego_monitor_client::logging::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let socket = dir.path().join("blk.sock");

    // The guest acked DISCARD; the backend comes back read-only, without it.
    let daemon = start_file_daemon(dir.path(), &disk);
    let (mut device, mut guest) = activated(&socket, ReconnectPolicy::default());
    assert_ne!(device.avail_features() & (1 << 13), 0, "DISCARD is offered");
    assert_eq!(write_blocks(&mut guest, 0, 8, Duration::from_secs(10)), 8);
    daemon.kill();
    let _ = std::fs::remove_file(&socket);
    let daemon = Daemon::start_file(dir.path(), &disk, "16M", &["--read-only"]);
    assert_eq!(
        write_blocks(&mut guest, 8, 16, Duration::from_secs(1)),
        0,
        "a backend without the guest's features must not serve it"
    );
    let t = Instant::now();
    device.reset();
    assert!(t.elapsed() < Duration::from_secs(5), "the reset hung");
    assert!(daemon.terminate().success());

    // A window of zero: the device gives up at the first failed attempt, and a backend
    // that comes back later is not used.
    let daemon = start_file_daemon(dir.path(), &disk);
    let (mut device, mut guest) = activated(
        &socket,
        ReconnectPolicy {
            window: Some(Duration::ZERO),
        },
    );
    assert_eq!(write_blocks(&mut guest, 0, 8, Duration::from_secs(10)), 8);
    daemon.kill();
    let _ = std::fs::remove_file(&socket);
    std::thread::sleep(Duration::from_millis(200));
    let daemon = start_file_daemon(dir.path(), &disk);
    assert_eq!(
        write_blocks(&mut guest, 8, 16, Duration::from_secs(1)),
        0,
        "the device gave up"
    );
    device.reset();
    assert!(daemon.terminate().success());
}

/// Writes 4 pages at sector 0 with a pattern; returns it.
fn write_pages(d: &mut Driver) -> Vec<u8> {
    let data: Vec<u8> = (0..4 * BLOCK).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    d.mem.write_slice(&data, GuestAddress(DATA)).expect("data");
    assert_eq!(
        d.request(T_OUT, 0, Some((data.len() as u32, false))),
        (1, 0)
    );
    data
}

/// Reads 4 pages at sector 0: (status, data).
fn read_pages(d: &mut Driver) -> (u8, Vec<u8>) {
    d.mem
        .write_slice(&[0u8; 4 * BLOCK as usize], GuestAddress(DATA))
        .expect("clear");
    let (_, status) = d.request(T_IN, 0, Some((4 * BLOCK as u32, true)));
    let mut back = vec![0u8; 4 * BLOCK as usize];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read");
    (status, back)
}

fn start_memory_daemon(
    dir: &Path,
    cluster: &Cluster,
    state: &Path,
    vnode: &str,
    size: &str,
    poll_us: &str,
) -> Daemon {
    let _ = std::fs::remove_file(dir.join("blk.sock"));
    let key = cluster.key_hex();
    Daemon::start_env(
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
            "--state-file",
            state.to_str().expect("utf-8"),
            "--poll-us",
            poll_us,
        ],
        &[("LEGO_CLUSTER_KEY", &key)],
    )
}

#[test]
fn a_restarted_remote_memory_backend_keeps_its_pages_unless_their_monitor_restarted() {
    let mut cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("memory.state");
    let daemon = start_memory_daemon(dir.path(), &cluster, &state, "31", "8M", "0");
    let mut d = Driver::connect(&daemon.socket);
    let data = write_pages(&mut d);
    drop(d);
    daemon.kill();
    assert_eq!(cluster.pages.vnode_pages(31), 4, "a crash released no page");

    // The same vNode again: the same placement, the same monitor process, the same pages.
    let daemon = start_memory_daemon(dir.path(), &cluster, &state, "31", "8M", "0");
    let mut d = Driver::connect(&daemon.socket);
    assert_eq!(read_pages(&mut d), (0, data.clone()), "the pages came back");
    drop(d);
    daemon.kill();

    // The monitor restarts empty while the backend is down: the pages are errors, not zeros.
    cluster.restart_memory();
    let daemon = start_memory_daemon(dir.path(), &cluster, &state, "31", "8M", "0");
    let mut d = Driver::connect(&daemon.socket);
    let (status, back) = read_pages(&mut d);
    assert_eq!(status, 1, "a lost page must be an I/O error");
    assert_ne!(back, data, "the old data cannot come back");
    // Written again, they are good again.
    let data = write_pages(&mut d);
    assert_eq!(read_pages(&mut d), (0, data));
    drop(d);
    // The vNode ends: SIGTERM releases its pages.
    assert!(daemon.terminate().success());
    assert_eq!(
        cluster.pages.vnode_pages(31),
        0,
        "SIGTERM released the pages"
    );
}

/// A second memory monitor of `cluster` serving `pages` (with `incarnation`, else a new
/// one), registered with its manager.
fn second_memory_monitor(
    cluster: &Cluster,
    addr: &str,
    pages: Arc<PageStore>,
    incarnation: Option<u64>,
) -> ServerHandle {
    let server = lego_monitors::daemon::serve(
        addr,
        cluster.key.clone(),
        Arc::new(MemoryService::new(pages)),
        ServerConfig {
            incarnation,
            ..ServerConfig::default()
        },
    )
    .expect("serve a second memory monitor");
    let mgr = ManagerClient::connect(
        &cluster.manager_addr,
        cluster.key.clone(),
        ClientConfig::default(),
    )
    .expect("manager");
    mgr.register(&RegisterMonitor {
        kind: MonitorKind::Memory,
        addr: server.local_addr().to_string(),
        // More free capacity than the first monitor: it holds every region's first copy,
        // the one reads go to.
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        incarnation: None,
    })
    .expect("register");
    server
}

#[test]
fn a_copy_that_missed_a_write_is_not_trusted_by_a_restarted_backend() {
    lego_monitor_client::logging::init();
    let cluster = Cluster::start();
    let pages2 = Arc::new(PageStore::new(1 << 30));
    let m2 = second_memory_monitor(&cluster, "127.0.0.1:0", pages2.clone(), None);
    let (addr2, inc2) = (m2.local_addr().to_string(), m2.incarnation());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("memory.state");

    // Two copies of every region (two memory monitors are alive): version A on both.
    let daemon = start_memory_daemon(dir.path(), &cluster, &state, "41", "8M", "0");
    let mut d = Driver::connect(&daemon.socket);
    let a = write_pages(&mut d);
    assert_eq!(pages2.vnode_pages(41), 4, "the second copy holds version A");

    // The second monitor drops off the network; version B reaches only the first copy.
    m2.shutdown();
    let b: Vec<u8> = a.iter().map(|x| !x).collect();
    d.mem.write_slice(&b, GuestAddress(DATA)).expect("data");
    assert_eq!(d.request(T_OUT, 0, Some((b.len() as u32, false))), (1, 0));
    let text = std::fs::read_to_string(&state).expect("state file");
    assert!(
        text.contains(&format!("tainted {addr2}")),
        "the copy that missed the write is recorded before the write completed:\n{text}"
    );

    // It comes back, the same process (same incarnation), still holding version A; the
    // backend crashes and restarts: it must not read A from it.
    let _m2 = second_memory_monitor(&cluster, &addr2, pages2.clone(), Some(inc2));
    drop(d);
    daemon.kill();
    let daemon = start_memory_daemon(dir.path(), &cluster, &state, "41", "8M", "0");
    let mut d = Driver::connect(&daemon.socket);
    assert_eq!(read_pages(&mut d), (0, b), "version B, never the stale A");
    drop(d);
    assert!(daemon.terminate().success());
}
