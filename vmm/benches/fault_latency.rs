//! Fault latency on the host path (outside the testbed): a remote 4 KiB fault of VMM-paged
//! guest RAM, served through userfaultfd by legovmm's pager with a fetch from a real memory
//! monitor, against a raw TCP 4 KiB round trip on the same loopback path (the goal: fault p50
//! at most 1.5x the raw round trip's p50).
//!
//! One run:
//! 1. starts a real `lego-manager` (`--copies 1`) and one `lego-memory-monitor` on loopback
//!    on free ports, and checks that the manager answering is the one started (it speaks this
//!    run's fresh cluster key) and lists exactly the monitor started;
//! 2. creates 256 MiB of guest RAM (a shared memfd), opens the vNode's remote memory through
//!    the manager ([`RemoteGuestRam`], as `legovmm run --local-memory` does) and starts the
//!    [`Pager`] with a 64 MiB limit, `prefetch: 0` (one page per fault) and legovmm's 4 fault
//!    threads, armed; no vCPU exists: this thread's own loads and stores fault into the pager;
//! 3. writes a pattern into the first 192 MiB (registered with the pause gate like a vCPU, so
//!    no store can race an eviction) and waits until the resident count is under the limit;
//!    then faults in (untimed) more pages than the limit holds, so that every page written
//!    and still resident is evicted and written back before measuring: evictions while
//!    measuring are clean (no write-back traffic);
//! 4. measures, interleaved in rounds of 100 after 200 warm-up operations each (short rounds,
//!    so that a burst of other work on a shared host lands on every row alike):
//!    * raw TCP: a 16-byte request answered with 4 KiB by an echo thread (TCP_NODELAY,
//!      blocking sockets, one connection);
//!    * a fabric READ of one page through `VnodeMemory` (the call the pager makes, through
//!      the same `PageStore` implementation) and through a `MemoryClient` to the monitor;
//!    * a load of one byte of a random page written long ago and evicted (each page once):
//!      the access's wall time. An access counts as a remote fault only if the pager's
//!      `fetch_faults` counter grew by exactly one across it (this thread is the only one
//!      faulting), so a page that was still or again resident, or served from an eviction
//!      buffer, is left out (and counted);
//!    * for context, a load of a page never written (zero-filled, no round trip), counted by
//!      `zero_faults` the same way;
//!
//!    and checks every page read (fault or fabric) against its pattern.
//!
//! Run: `cargo build --release -p lego-monitors --bin lego-manager --bin lego-memory-monitor`
//! then `cargo bench -p legovmm --bench fault_latency` (as root: faults of legovmm's own
//! threads need no privilege, but the pager asks for a userfaultfd that also sees the kernel's
//! faults, as KVM's are). Env `ITERS` sets the measured operations per row (default 10000, at
//! most about 14000); `FAULT_THREADS` the pager's fault threads (default: legovmm's, 4);
//! `FAULT_SPIN_US` how long a fault thread polls for the next fault (default: legovmm's);
//! `RUST_LOG` turns on legovmm's log (the pager's summary at the end). Prints a markdown
//! table. Nothing is pinned: `taskset -c 0 cargo bench ...` puts every thread and both
//! daemons on one CPU, which on a VM host takes cross-CPU wake-ups out of the figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_devices::exit::ExitNotifier;
use lego_devices::virtio::rings::RingRegistry;
use lego_fabric::{ClientConfig, ClusterKey, Rights};
use lego_monitor_client::client::{ManagerClient, MemoryClient, VnodeMemory};
use lego_monitor_client::proto::manager::MonitorState;
use lego_testkit::net::free_loopback_addr;
use lego_testkit::process::ChildGuard;
use lego_testkit::stats::percentile;
use lego_testkit::wait;
use legovmm::config::RemoteConfig;
use legovmm::memory::{create_guest_memory, MemoryBacking};
use legovmm::paging::remote::RemoteGuestRam;
use legovmm::paging::stats::Stats;
use legovmm::paging::store::PageStore;
use legovmm::paging::{Pager, PagingConfig};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const PAGE: usize = 4096;
const GUEST: u64 = 256 << 20;
const LIMIT: u64 = 64 << 20;
const WRITTEN: u64 = 192 << 20;
const GUEST_PAGES: u64 = GUEST / PAGE as u64;
const LIMIT_PAGES: u64 = LIMIT / PAGE as u64;
const WRITTEN_PAGES: u64 = WRITTEN / PAGE as u64;
/// The vNode whose guest RAM is paged, and the one the direct fabric reads use.
const VNODE: u64 = 1;
const PEER_VNODE: u64 = 2;
const PEER_BYTES: u64 = 64 << 20;
const PEER_PAGES: u64 = PEER_BYTES / PAGE as u64;
const ROUND: usize = 100;
const WARMUP: usize = 200;
/// The raw TCP request: about what a fabric READ request carries.
const RAW_REQUEST: usize = 16;

/// Word `w` of page `page`'s pattern: never zero, so no written page is mistaken for a page
/// of zeros (which the evictor drops instead of writing back).
fn pattern_word(page: u64, w: usize) -> u64 {
    ((page << 12) | w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn fill_pattern(page: u64, out: &mut [u8]) {
    for (w, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&pattern_word(page, w).to_le_bytes());
    }
}

/// Panics unless `got` is page `page`'s pattern (or zeros, with `zero`).
fn check_page(what: &str, page: u64, got: &[u8], zero: bool) {
    assert_eq!(
        got.len(),
        PAGE,
        "{what}: page {page} has {} bytes",
        got.len()
    );
    for (w, chunk) in got.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let want = if zero { 0 } else { pattern_word(page, w) };
        assert_eq!(
            v,
            want,
            "{what}: page {page} differs from what was written at byte {}",
            w * 8
        );
    }
}

/// xorshift64: random pages without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The pages of `range` in a random order (each once).
    fn shuffled(&mut self, range: Range<u64>) -> Vec<u64> {
        let mut v: Vec<u64> = range.collect();
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// Microseconds since `t`.
fn micros_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// The workspace's release binaries (other packages' binaries are not built by `cargo bench
/// -p legovmm`): next to this bench's target dir first, then the workspace's target.
fn release_bin(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/release/deps/fault_latency-HASH
        if let Some(d) = exe.parent().and_then(Path::parent) {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found in {dirs:?}: run `cargo build --release -p lego-monitors --bin \
         lego-manager --bin lego-memory-monitor` first"
    );
}

/// Starts `cmd` with no input and no output (its warnings still reach stderr).
fn spawn(name: &'static str, cmd: &mut Command) -> ChildGuard {
    ChildGuard::spawn(name, cmd.stdin(Stdio::null()).stdout(Stdio::null()))
}

/// The manager and its one memory monitor, started for this run.
struct Cluster {
    procs: Vec<ChildGuard>,
    manager_addr: String,
    monitor_addr: String,
    manager: ManagerClient,
}

fn client_config() -> ClientConfig {
    // What RemoteGuestRam connects with (one copy: no reconnect patience override).
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn start_cluster(dir: &Path, key: &ClusterKey) -> Cluster {
    let manager_addr = free_loopback_addr();
    let mut manager = spawn(
        "lego-manager",
        Command::new(release_bin("lego-manager"))
            .args(["--listen", &manager_addr, "--state-dir"])
            .arg(dir.join("manager-state"))
            .args(["--region-size", "64M", "--copies", "1"])
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .env("RUST_LOG", "warn"),
    );
    // Only the manager started here knows this run's fresh key: a handshake that succeeds is
    // with it, not with something else that took the port.
    let client = wait::until(
        "lego-manager to answer",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            manager.check_alive();
            let c = ManagerClient::connect(&manager_addr, key.clone(), client_config()).ok()?;
            c.status().ok().map(|_| c)
        },
    );
    let monitor_addr = free_loopback_addr();
    let mut monitor = spawn(
        "lego-memory-monitor",
        Command::new(release_bin("lego-memory-monitor"))
            .args(["--listen", &monitor_addr, "--manager", &manager_addr])
            .args(["--capacity", "1G"])
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .env("RUST_LOG", "warn"),
    );
    let monitors = wait::until(
        "the memory monitor to register",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            manager.check_alive();
            monitor.check_alive();
            let s = client.status().ok()?;
            s.monitors
                .iter()
                .any(|m| m.addr == monitor_addr && m.state == MonitorState::Alive)
                .then_some(s.monitors)
        },
    );
    assert_eq!(
        monitors.len(),
        1,
        "the manager started here should know only the monitor started here: {monitors:?}"
    );
    Cluster {
        procs: vec![manager, monitor],
        manager_addr,
        monitor_addr,
        manager: client,
    }
}

/// A thread answering every `RAW_REQUEST` bytes with one page, on one connection at a time.
fn raw_server() -> SocketAddr {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind the raw TCP server");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_nodelay(true).expect("nodelay");
            std::thread::spawn(move || {
                let mut req = [0u8; RAW_REQUEST];
                let mut resp = vec![0u8; PAGE];
                fill_pattern(0, &mut resp);
                while s.read_exact(&mut req).is_ok() {
                    if s.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The address of memfd page `page` in legovmm's mapping.
fn page_ptr(base: usize, page: u64) -> *mut u8 {
    (base + page as usize * PAGE) as *mut u8
}

/// Loads one byte of `page` (faulting it in if it is missing).
fn touch(base: usize, page: u64) -> u8 {
    // SAFETY: `page` lies in guest RAM's mapping (checked by the callers' ranges), which lives
    // as long as `mem` in main; a load of a missing page blocks until the pager installs it.
    unsafe { std::ptr::read_volatile(page_ptr(base, page)) }
}

/// A copy of `page` as it is now.
fn copy_page(base: usize, page: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE];
    // SAFETY: as in `touch`; nothing writes guest RAM while this reads it.
    unsafe { std::ptr::copy_nonoverlapping(page_ptr(base, page), buf.as_mut_ptr(), PAGE) };
    buf
}

/// One row of the table.
#[derive(Default)]
struct Row {
    us: Vec<f64>,
    /// Accesses left out (no fault of the kind measured).
    excluded: usize,
}

impl Row {
    fn p50(&self) -> f64 {
        percentile(&self.us, 0.5)
    }
}

/// What one fault measurement needs.
struct Faults<'a> {
    base: usize,
    counter: &'a AtomicU64,
    zero: bool,
    what: &'static str,
}

impl Faults<'_> {
    /// Touches `page` and, if it took exactly one fault of the kind counted, records its time
    /// in `row` (when given); checks its contents either way.
    fn run(&self, page: u64, row: Option<&mut Row>) {
        let before = self.counter.load(Ordering::Acquire);
        let t = Instant::now();
        let byte = std::hint::black_box(touch(self.base, page));
        let us = micros_since(t);
        let faults = self.counter.load(Ordering::Acquire) - before;
        let want = if self.zero {
            0
        } else {
            pattern_word(page, 0) as u8
        };
        assert_eq!(byte, want, "{}: page {page}'s first byte", self.what);
        check_page(self.what, page, &copy_page(self.base, page), self.zero);
        if let Some(row) = row {
            if faults == 1 {
                row.us.push(us);
            } else {
                row.excluded += 1;
            }
        }
    }
}

fn thp_policy(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or("unknown")
        .to_string()
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ClusterKey::generate().expect("cluster key");
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, key.to_hex()).expect("write the key file");
    let mut cluster = start_cluster(dir.path(), &key);

    // Guest RAM, paged to vNode VNODE's remote memory.
    let (mem, memfd) = create_guest_memory(GUEST, MemoryBacking::Shared).expect("guest RAM");
    let memfd = memfd.expect("shared guest RAM has a memfd");
    let region = mem.iter().next().expect("one region");
    assert!(
        mem.iter().count() == 1 && region.file_offset().map(|f| f.start()) == Some(0),
        "256 MiB of guest RAM is one region at memfd offset 0"
    );
    let base = mem.get_host_address(GuestAddress(0)).expect("mapped") as usize;
    let remote = RemoteConfig {
        manager: cluster.manager_addr.clone(),
        vnode: VNODE,
        key_file: Some(key_file),
        memory: None,
        disk: None,
    };
    let ram = Arc::new(RemoteGuestRam::open(&remote, GUEST).unwrap_or_else(|e| {
        panic!(
            "cannot open the vNode's remote memory: {}",
            lego_report::error_chain(&e)
        )
    }));
    let mut config = PagingConfig {
        prefetch: 0,
        ..PagingConfig::new(LIMIT)
    };
    if let Some(n) = std::env::var("FAULT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.threads = n;
    }
    if let Some(us) = std::env::var("FAULT_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.spin = Duration::from_micros(us);
    }
    let (threads, batch, zero_run) = (config.threads, config.evict_batch as u64, config.zero_run);
    let spin_us = config.spin.as_micros();
    let gate = std::sync::Arc::new(legovmm::paging::pause::PauseGate::new());
    let pager = Pager::start(
        &mem,
        memfd,
        ram.clone(),
        config,
        ExitNotifier::new().expect("exit eventfd"),
        RingRegistry::new(),
        gate.clone(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "cannot start the pager (run as root): {}",
            lego_report::error_chain(&e)
        )
    });
    pager.arm();
    let stats: &Stats = pager.stats();

    // Populate, as a vCPU would: a pause for an eviction waits for this thread's checkpoint,
    // so no store lands between the evictor's copy of a page and its removal.
    legovmm::kick::install();
    gate.register();
    let mut buf = vec![0u8; PAGE];
    for page in 0..WRITTEN_PAGES {
        gate.checkpoint();
        fill_pattern(page, &mut buf);
        // SAFETY: `page` < WRITTEN_PAGES < GUEST_PAGES: within guest RAM's mapping; the store
        // faults the page in first if it is missing.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), page_ptr(base, page), PAGE) };
    }
    gate.unregister();
    wait::until(
        "the resident count to fall under the limit",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || {
            assert!(pager.failure().is_none(), "{:?}", pager.failure());
            (pager.counts().0 <= LIMIT_PAGES).then_some(())
        },
    );
    let populated = micros_since(started) / 1e6;

    // Pages written long ago (evicted), and pages never written: each used once, at random.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut remote_pages = rng.shuffled(0..WRITTEN_PAGES - LIMIT_PAGES - 2 * batch);
    let zero_pages = rng.shuffled(WRITTEN_PAGES + zero_run + 64..GUEST_PAGES);
    let flush: Vec<u64> = remote_pages
        .drain(..(LIMIT_PAGES + 2 * batch) as usize)
        .collect();
    let most = remote_pages.len().min(zero_pages.len()) - WARMUP;
    assert!(iters <= most, "ITERS is at most {most} with this layout");
    let fetch = Faults {
        base,
        counter: &stats.fetch_faults,
        zero: false,
        what: "remote fault",
    };
    let zero = Faults {
        base,
        counter: &stats.zero_faults,
        zero: true,
        what: "zero fault",
    };
    // Every page still resident from the populate pass is evicted and written back now: the
    // evictions while measuring are of clean pages (fetched, unchanged) or zeros.
    for &page in &flush {
        fetch.run(page, None);
    }
    std::thread::sleep(Duration::from_millis(300));
    let dirty_before = stats.evicted_dirty.load(Ordering::Acquire);

    // The peers: raw TCP, and direct fabric READs of vNode PEER_VNODE's pages.
    let mut raw = TcpStream::connect(raw_server()).expect("connect raw");
    raw.set_nodelay(true).expect("nodelay");
    let placement = cluster
        .manager
        .place_memory(PEER_VNODE, PEER_BYTES)
        .expect("place the peer's memory");
    let cap = cluster
        .manager
        .issue_capability(PEER_VNODE, Rights::MEMORY, Duration::ZERO)
        .expect("capability");
    // The pager's client polls for its answer (MONITOR_SPIN); this row's does the same.
    let pager_client = ClientConfig {
        spin: legovmm::paging::remote::MONITOR_SPIN,
        ..client_config()
    };
    let vm = VnodeMemory::connect(placement, key.clone(), &cap, pager_client)
        .expect("connect VnodeMemory");
    let mc = MemoryClient::connect(&cluster.monitor_addr, key.clone(), &cap, client_config())
        .expect("connect MemoryClient");
    for start in (0..PEER_PAGES).step_by(64) {
        let mut data = vec![0u8; 64 * PAGE];
        for (k, chunk) in data.chunks_exact_mut(PAGE).enumerate() {
            fill_pattern(start + k as u64, chunk);
        }
        vm.write_run(start, &data).expect("write the peer's pages");
    }

    let mut rows: [Row; 5] = Default::default();
    let [raw_row, vnode_row, client_row, fetch_row, zero_row] = &mut rows;
    let mut req = [1u8; RAW_REQUEST];
    let mut resp = vec![0u8; PAGE];
    let mut fetch_iter = remote_pages.iter().copied();
    let mut zero_iter = zero_pages.iter().copied();
    let mut rounds: Vec<usize> = vec![WARMUP];
    let mut left = iters;
    while left > 0 {
        rounds.push(ROUND.min(left));
        left -= ROUND.min(left);
    }
    for (i, &n) in rounds.iter().enumerate() {
        let keep = i > 0;
        for _ in 0..n {
            req[0] = req[0].wrapping_add(1);
            let t = Instant::now();
            raw.write_all(&req).expect("raw write");
            raw.read_exact(&mut resp).expect("raw read");
            let us = micros_since(t);
            if keep {
                raw_row.us.push(us);
            }
        }
        check_page("raw TCP", 0, &resp, false);
        for _ in 0..n {
            let p = rng.next() % PEER_PAGES;
            let t = Instant::now();
            let data = PageStore::read(&vm, p, 1).expect("VnodeMemory read");
            let us = micros_since(t);
            check_page("VnodeMemory read", p, &data, false);
            if keep {
                vnode_row.us.push(us);
            }
        }
        for _ in 0..n {
            let p = rng.next() % PEER_PAGES;
            let t = Instant::now();
            let data = mc.read_run(p, 1).expect("MemoryClient read");
            let us = micros_since(t);
            check_page("MemoryClient read", p, &data, false);
            if keep {
                client_row.us.push(us);
            }
        }
        for page in fetch_iter.by_ref().take(n) {
            fetch.run(page, keep.then_some(&mut *fetch_row));
        }
        for page in zero_iter.by_ref().take(n) {
            zero.run(page, keep.then_some(&mut *zero_row));
        }
    }
    let dirty_during = stats.evicted_dirty.load(Ordering::Acquire) - dirty_before;
    assert!(pager.failure().is_none(), "{:?}", pager.failure());
    let (resident, remote_count) = pager.counts();
    let summary = stats.summary(resident, remote_count, LIMIT_PAGES);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Fault latency on the host path (loopback), {cores}-core host shared with other work, \
         no pinning, default THP (enabled: {}, shmem_enabled: {}; the pager sets MADV_NOHUGEPAGE \
         on guest RAM).",
        thp_policy("/sys/kernel/mm/transparent_hugepage/enabled"),
        thp_policy("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
    );
    println!(
        "Guest RAM {} MiB (shared memfd), local limit {} MiB, {} MiB written then evicted to one \
         lego-memory-monitor (lego-manager --copies 1); pager: prefetch 0, {threads} fault \
         threads polling {spin_us} µs after a fault, evict batch {batch}. {iters} operations \
         per row, interleaved in rounds of {ROUND} after {WARMUP} warm-up each; every page \
         read checked against its pattern.\n",
        GUEST >> 20,
        LIMIT >> 20,
        WRITTEN >> 20,
    );
    println!("| path | n | p50 µs | p99 µs | mean µs | p50 / raw TCP p50 |");
    println!("|---|---|---|---|---|---|");
    let base_p50 = raw_row.p50();
    for (name, row) in [
        (
            "raw TCP round trip: 16 B request, 4 KiB reply (TCP_NODELAY, blocking)",
            &*raw_row,
        ),
        (
            "fabric READ 4 KiB via VnodeMemory (the pager's call and client: polls 50 µs)",
            &*vnode_row,
        ),
        (
            "fabric READ 4 KiB via MemoryClient (sleeps on the socket)",
            &*client_row,
        ),
        (
            "remote 4 KiB fault via userfaultfd (fetch + UFFDIO_COPY)",
            &*fetch_row,
        ),
        (
            "never-written page fault via userfaultfd (UFFDIO_ZEROPAGE, no round trip)",
            &*zero_row,
        ),
    ] {
        let mean = row.us.iter().sum::<f64>() / row.us.len().max(1) as f64;
        println!(
            "| {name} | {} | {:.1} | {:.1} | {mean:.1} | {:.2} |",
            row.us.len(),
            row.p50(),
            percentile(&row.us, 0.99),
            row.p50() / base_p50
        );
    }
    let ratio = fetch_row.p50() / base_p50;
    println!(
        "\nGoal (remote fault p50 <= 1.5x raw TCP p50): {} ({ratio:.2}x). Accesses left out of \
         the fault rows (no fault of that kind): remote {}, zero {}; dirty evictions while \
         measuring: {dirty_during}. Set up in {populated:.1} s, whole run {:.1} s.",
        if ratio <= 1.5 { "met" } else { "not met" },
        fetch_row.excluded,
        zero_row.excluded,
        micros_since(started) / 1e6,
    );
    println!("pager: {summary}");

    drop((vm, mc, raw));
    pager.stop();
    ram.release();
    drop(ram);
    for p in &mut cluster.procs {
        p.check_alive();
    }
}
