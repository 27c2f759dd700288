//! Backend benchmark: `lego-vhost-blk` on remote memory vs `qemu-storage-daemon` exporting a
//! vhost-user-blk device whose block node is an NBD client of `qemu-nbd` (file on tmpfs), both
//! over loopback and both driven by the same vhost-user frontend here (memfd guest memory, one
//! hand-laid split virtqueue, kick/call eventfds, no EVENT_IDX).
//!
//! Ours: `lego-manager` + `lego-memory-monitor` (release binaries of this workspace) and
//! `lego-vhost-blk --store remote-memory --size 256M`.
//! Theirs: `qemu-nbd -f raw -x bench -t --cache=writeback` serving a 256 MiB file in /dev/shm on
//! 127.0.0.1, and `qemu-storage-daemon --blockdev driver=nbd,... --export type=vhost-user-blk`.
//!
//! 4 KiB random reads and writes over the first 64 MiB (pre-written), at queue depth 1
//! (latency and ops/s) and 32 (ops/s, 32 requests kept in flight on one queue), rounds
//! interleaved (ours, theirs, ours, ...), medians. Prints a markdown table.
//!
//! Ours runs twice: sleeping at once after each batch, and polling (`--poll-us`, backend and
//! monitor, `BENCH_POLL_US`, default 100). The frontend kicks unless the device set
//! `VRING_USED_F_NO_NOTIFY` (as Linux's driver does without EVENT_IDX) and sleeps on the call
//! eventfd. CPU per 1,000 requests is each side's processes' user + system time.
//!
//! Run: `cargo build --release --workspace && cargo bench -p lego-vhost-blk --bench vs_qsd`.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lego_testkit::net::{free_loopback_addr, free_port};
use lego_testkit::process::{self, ChildGuard};
use lego_testkit::qemu_nbd;
use lego_testkit::stats::{median, percentile};
use lego_testkit::vhost_user::blk::{request_header, DATA, HDR, MEM_SIZE, T_IN, T_OUT};
use lego_testkit::vhost_user::queue::{F_NEXT, F_WRITE};
use lego_testkit::vhost_user::{
    guest_memory, handshake, set_mem_table, SplitQueue, VIRTIO_F_VERSION_1,
};
use lego_testkit::wait;
use vhost::vhost_user::Frontend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ROUNDS: usize = 5;
const ROW_TIME: Duration = Duration::from_millis(400);
const WARMUP: Duration = Duration::from_millis(50);
const DEV_SIZE: u64 = 256 << 20;
const WORK_BLOCKS: u64 = (64 << 20) / 4096;
const BLOCK: u32 = 4096;

// Guest memory layout (one queue): the test frontend's 1 MiB memory with the rings at 0 (see
// lego_testkit::vhost_user::queue), request headers at HDR (0x3000, 16 bytes per slot), data at
// DATA (0x1_0000, 4 KiB per slot) and the status bytes here.
const QSIZE: u16 = 128;
const STATUS: u64 = 0x3800; // 1 byte per slot
const MAX_QD: usize = 32;
/// The polled side's `--poll-us` (backend and monitor) unless `BENCH_POLL_US` says otherwise.
const DEFAULT_POLL_US: u64 = 100;

/// Starts `cmd` with no input and no output (a bench prints only its table).
fn spawn(name: &'static str, cmd: &mut Command) -> ChildGuard {
    ChildGuard::spawn(name, cmd.stdin(Stdio::null()).stdout(Stdio::null()))
}

/// Polls `ready` until it holds, failing early if one of `procs` exits.
fn wait_for(what: &str, procs: &mut [&mut ChildGuard], mut ready: impl FnMut() -> bool) {
    wait::until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(10),
        || {
            for p in procs.iter_mut() {
                p.check_alive();
            }
            ready().then_some(())
        },
    );
}

/// The workspace's release binaries (other packages' binaries are not built by `cargo bench
/// -p lego-vhost-blk`): next to this bench's target dir first, then the workspace's target.
fn release_bin(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/release/deps/vs_qsd-HASH
        if let Some(d) = exe.parent().and_then(Path::parent) {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release"));
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found in {dirs:?}: run `cargo build --release --workspace` first");
}

/// A vhost-user frontend with one queue of `QSIZE` entries; request slot `s` (0..32) uses
/// descriptors 3s (header), 3s+1 (4 KiB data) and 3s+2 (status), laid out once.
struct Driver {
    _fe: Frontend,
    mem: GuestMemoryMmap,
    queue: SplitQueue,
    free: Vec<u16>,
    started: [Option<Instant>; MAX_QD],
    rng: u64,
}

impl Driver {
    fn connect(socket: &Path) -> Driver {
        let mem = guest_memory(MEM_SIZE);
        let (mut fe, _) = handshake(socket, 1, &[], VIRTIO_F_VERSION_1);
        set_mem_table(&mut fe, &mem);
        let queue = SplitQueue::setup(&mut fe, &mem, 0, QSIZE, 0);
        for s in 0..MAX_QD as u16 {
            let s64 = u64::from(s);
            let chain = [
                (HDR + 16 * s64, 16u32, F_NEXT),
                (DATA + u64::from(BLOCK) * s64, BLOCK, F_NEXT),
                (STATUS + s64, 1, F_WRITE),
            ];
            for (i, desc) in (0u16..).zip(chain) {
                queue.write_desc(&mem, 3 * s + i, desc, 3 * s + i + 1);
            }
        }
        for s in 0..MAX_QD {
            let pattern = vec![(s as u8).wrapping_mul(37) | 1; BLOCK as usize];
            mem.write_slice(&pattern, GuestAddress(DATA + u64::from(BLOCK) * s as u64))
                .expect("data");
        }
        Driver {
            _fe: fe,
            mem,
            queue,
            free: (0..MAX_QD as u16).rev().collect(),
            started: [None; MAX_QD],
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Puts request slot `s` on the avail ring (not yet published).
    fn queue(&mut self, s: u16, kind: u32, block: u64) {
        let s64 = u64::from(s);
        self.mem
            .write_slice(
                &request_header(kind, block * 8),
                GuestAddress(HDR + 16 * s64),
            )
            .expect("hdr");
        let flags = if kind == T_IN {
            F_NEXT | F_WRITE
        } else {
            F_NEXT
        };
        self.queue.set_desc_flags(&self.mem, 3 * s + 1, flags);
        self.mem
            .write_obj(0xFFu8, GuestAddress(STATUS + s64))
            .expect("status");
        self.queue.push(&self.mem, 3 * s);
        self.started[usize::from(s)] = Some(Instant::now());
    }

    /// Waits for the interrupt and reaps every completion; adds their latencies (µs).
    fn reap(&mut self, lat: &mut Vec<f64>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = Instant::now();
            let mut n = 0;
            while let Some((id, _)) = self.queue.pop_used(&self.mem) {
                let s = (id / 3) as u16;
                assert!(
                    id.is_multiple_of(3) && usize::from(s) < MAX_QD,
                    "bad used id {id}"
                );
                let st: u8 = self
                    .mem
                    .read_obj(GuestAddress(STATUS + u64::from(s)))
                    .expect("status");
                assert_eq!(st, 0, "request failed with status {st}");
                let t0 = self.started[usize::from(s)].take().expect("in flight");
                lat.push((now - t0).as_secs_f64() * 1e6);
                self.free.push(s);
                n += 1;
            }
            if n > 0 {
                return n;
            }
            assert!(self.queue.wait_call(deadline), "no completion within 20 s");
        }
    }

    /// Runs `kind` at depth `qd` for `dur` (over the first `WORK_BLOCKS` blocks, random, or
    /// sequential when `seq`); returns (ops, elapsed, latencies in µs).
    fn run(&mut self, kind: u32, qd: usize, dur: Duration, seq: bool) -> (u64, Duration, Vec<f64>) {
        let mut lat = Vec::with_capacity(1 << 16);
        let mut next_seq = 0u64;
        let t0 = Instant::now();
        let mut ops = 0u64;
        let mut in_flight = 0usize;
        let mut stop = false;
        loop {
            let mut queued = false;
            while !stop && in_flight < qd {
                let s = self.free.pop().expect("free slot");
                let block = if seq {
                    next_seq += 1;
                    if next_seq >= WORK_BLOCKS {
                        stop = true;
                    }
                    next_seq - 1
                } else {
                    self.next_rand() % WORK_BLOCKS
                };
                self.queue(s, kind, block);
                in_flight += 1;
                queued = true;
            }
            if queued {
                self.queue.publish_unless_suppressed(&self.mem);
            }
            if in_flight == 0 {
                break;
            }
            let n = self.reap(&mut lat);
            in_flight -= n;
            ops += n as u64;
            if !seq && t0.elapsed() >= dur {
                stop = true;
            }
        }
        (ops, t0.elapsed(), lat)
    }
}

/// Our side: manager, memory monitor, lego-vhost-blk on remote memory; the backend's queue
/// worker and the monitor's connection poll for up to `poll_us` (0: they sleep at once).
fn start_ours(dir: &Path, poll_us: u64, procs: &mut Vec<ChildGuard>) -> PathBuf {
    let dir = dir.join(format!("ours-poll-{poll_us}"));
    std::fs::create_dir_all(&dir).expect("side folder");
    let dir = dir.as_path();
    let poll = poll_us.to_string();
    let key = lego_fabric::ClusterKey::generate()
        .expect("cluster key")
        .to_hex();
    let maddr = free_loopback_addr();
    let mut manager = spawn(
        "lego-manager",
        Command::new(release_bin("lego-manager"))
            .args(["--listen", &maddr, "--state-dir"])
            .arg(dir.join("manager-state"))
            .args(["--region-size", "64M"])
            .env("LEGO_CLUSTER_KEY", &key)
            .env("RUST_LOG", "warn"),
    );
    wait_for("lego-manager", &mut [&mut manager], || {
        TcpStream::connect(&maddr).is_ok()
    });
    let mon_addr = free_loopback_addr();
    let monitor = spawn(
        "lego-memory-monitor",
        Command::new(release_bin("lego-memory-monitor"))
            .args(["--listen", &mon_addr, "--manager", &maddr])
            .args(["--capacity", "1G", "--poll-us", &poll])
            .env("LEGO_CLUSTER_KEY", &key)
            .env("RUST_LOG", "warn"),
    );
    procs.push(manager);
    procs.push(monitor);
    // Placement fails until the monitor has registered: retry the daemon until it serves.
    let socket = dir.join("lego.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut d = spawn(
            "lego-vhost-blk",
            Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
                .arg("--socket")
                .arg(&socket)
                .args(["--store", "remote-memory", "--manager", &maddr])
                .args(["--vnode", "7", "--size", "256M", "--poll-us", &poll])
                .env("LEGO_CLUSTER_KEY", &key)
                .env("RUST_LOG", "off")
                .stderr(Stdio::null()),
        );
        loop {
            if socket.exists() {
                procs.push(d);
                return socket;
            }
            if d.try_wait().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in procs.iter_mut() {
            p.check_alive();
        }
        assert!(
            Instant::now() < deadline,
            "lego-vhost-blk never came up (rerun with RUST_LOG to see why)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reference: lego-vhost-blk with its file store on tmpfs (no fabric, no monitor).
fn start_ours_file(dir: &Path, image: &Path, procs: &mut Vec<ChildGuard>) -> PathBuf {
    let socket = dir.join("lego-file.sock");
    let mut d = spawn(
        "lego-vhost-blk (file)",
        Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
            .arg("--socket")
            .arg(&socket)
            .args(["--store", "file", "--path"])
            .arg(image)
            .env("RUST_LOG", "warn"),
    );
    wait_for("lego-vhost-blk (file)", &mut [&mut d], || socket.exists());
    procs.push(d);
    socket
}

/// Their side: qemu-nbd on a tmpfs file, qemu-storage-daemon exporting it as vhost-user-blk.
fn start_theirs(dir: &Path, image: &Path, procs: &mut Vec<ChildGuard>) -> PathBuf {
    let port = free_port();
    let mut nbd = spawn("qemu-nbd", &mut qemu_nbd::command(image, port));
    let addr = format!("127.0.0.1:{port}");
    wait_for("qemu-nbd", &mut [&mut nbd], || {
        TcpStream::connect(&addr).is_ok()
    });
    let socket = dir.join("qsd.sock");
    let mut qsd = spawn(
        "qemu-storage-daemon",
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=nbd,node-name=n,server.type=inet,server.host=127.0.0.1,\
                 server.port={port},export={}",
                qemu_nbd::EXPORT
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},writable=on",
                socket.display()
            )),
    );
    wait_for("qemu-storage-daemon", &mut [&mut nbd, &mut qsd], || {
        socket.exists()
    });
    procs.push(nbd);
    procs.push(qsd);
    socket
}

#[derive(Default)]
struct Samples {
    ops: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU ms the side's processes used per 1,000 requests.
    cpu: Vec<f64>,
}

/// Starts one side's processes (added to the list) and returns its vhost-user socket.
type StartSide<'a> = Box<dyn FnOnce(&mut Vec<ChildGuard>) -> PathBuf + 'a>;

/// One device under test: the frontend driving it and the processes serving it.
struct Side {
    driver: Driver,
    pids: Vec<u32>,
}

impl Side {
    fn cpu(&self) -> Duration {
        self.pids.iter().map(|&p| process::cpu_time(p)).sum()
    }
}

fn measure(side: &mut Side, kind: u32, qd: usize, s: &mut Samples) {
    side.driver.run(kind, qd, WARMUP, false);
    let cpu0 = side.cpu();
    let (ops, el, lat) = side.driver.run(kind, qd, ROW_TIME, false);
    let cpu = side.cpu().saturating_sub(cpu0);
    s.ops.push(ops as f64 / el.as_secs_f64());
    s.p50.push(percentile(&lat, 0.50));
    s.p99.push(percentile(&lat, 0.99));
    s.cpu
        .push(cpu.as_secs_f64() * 1e3 / (ops.max(1) as f64 / 1e3));
}

/// The processes `start` adds to `procs`, with what it returns.
fn started<T>(
    procs: &mut Vec<ChildGuard>,
    start: impl FnOnce(&mut Vec<ChildGuard>) -> T,
) -> (T, Vec<u32>) {
    let before = procs.len();
    let out = start(procs);
    (out, procs[before..].iter().map(ChildGuard::id).collect())
}

fn kops(x: f64) -> String {
    format!("{:.1}k", x / 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: then do nothing
    // (this starts daemons and takes a minute).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("vs_qsd: run with `cargo bench -p lego-vhost-blk --bench vs_qsd`");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("vs-qsd-")
        .tempdir()
        .expect("tempdir");
    let shm = |tag: &str| {
        let p = Path::new("/dev/shm").join(format!("lego-vs-qsd-{}-{tag}.img", std::process::id()));
        File::create(&p)
            .and_then(|f| f.set_len(DEV_SIZE))
            .expect("create a tmpfs image");
        tempfile::TempPath::try_from_path(p).expect("an absolute path")
    };
    let image = shm("nbd");
    let ref_image = shm("ref");

    // Children are killed when `procs` drops (also on panic).
    let poll_us: u64 = std::env::var("BENCH_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_POLL_US);
    let mut procs: Vec<ChildGuard> = Vec::new();
    let starts: [StartSide<'_>; 4] = [
        Box::new(|p| start_ours(dir.path(), 0, p)),
        Box::new(|p| start_ours(dir.path(), poll_us, p)),
        Box::new(|p| start_theirs(dir.path(), &image, p)),
        Box::new(|p| start_ours_file(dir.path(), &ref_image, p)),
    ];
    let mut sides: Vec<Side> = Vec::new();
    for (i, start) in starts.into_iter().enumerate() {
        let (socket, pids) = started(&mut procs, start);
        let mut driver = Driver::connect(&socket);
        driver.rng ^= 0x5555 * i as u64; // different (but fixed) offsets per side
        sides.push(Side { driver, pids });
    }

    // Pre-write the working set on each.
    for side in sides.iter_mut() {
        let t = Instant::now();
        let (ops, _, _) = side.driver.run(T_OUT, MAX_QD, Duration::ZERO, true);
        assert_eq!(ops, WORK_BLOCKS);
        eprintln!("pre-wrote 64 MiB in {:.2} s", t.elapsed().as_secs_f64());
    }

    let rows: [(&str, u32, usize); 4] = [
        ("4K random read, QD1", T_IN, 1),
        ("4K random write, QD1", T_OUT, 1),
        ("4K random read, QD32", T_IN, 32),
        ("4K random write, QD32", T_OUT, 32),
    ];
    let mut results: Vec<[Samples; 4]> = Vec::new();
    for &(name, kind, qd) in &rows {
        let mut s: [Samples; 4] = Default::default();
        for _ in 0..ROUNDS {
            for (i, side) in sides.iter_mut().enumerate() {
                measure(side, kind, qd, &mut s[i]);
            }
        }
        eprintln!("{name}: done");
        results.push(s);
    }
    drop(sides);
    drop(procs);

    println!();
    println!("Command: `BENCH_POLL_US={poll_us} cargo bench -p lego-vhost-blk --bench vs_qsd`");
    println!();
    println!(
        "| test | lego-vhost-blk (remote memory) | same, polling {poll_us} µs | \
         qemu-storage-daemon (qemu-nbd) | ratio | ratio, polling | \
         reference: lego-vhost-blk file store on tmpfs |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, _, qd), s) in rows.iter().zip(results) {
        let [ours, polled, theirs, refr] = s;
        let m = |x: &Vec<f64>| median(x);
        let (o, p, t, r) = (m(&ours.ops), m(&polled.ops), m(&theirs.ops), m(&refr.ops));
        println!(
            "| {name}, ops/s | {} | {} | {} | {:.2} | {:.2} | {} |",
            kops(o),
            kops(p),
            kops(t),
            o / t,
            p / t,
            kops(r)
        );
        let lats = if *qd == 1 {
            vec![
                ("p50", &ours.p50, &polled.p50, &theirs.p50, &refr.p50),
                ("p99", &ours.p99, &polled.p99, &theirs.p99, &refr.p99),
            ]
        } else {
            vec![(
                "p50 latency",
                &ours.p50,
                &polled.p50,
                &theirs.p50,
                &refr.p50,
            )]
        };
        for (label, o, p, t, r) in lats {
            let (o, p, t, r) = (m(o), m(p), m(t), m(r));
            println!(
                "| {name}, {label} | {o:.1} µs | {p:.1} µs | {t:.1} µs | {:.2} | {:.2} | {r:.1} µs |",
                t / o,
                t / p
            );
        }
        let (o, p, t, r) = (m(&ours.cpu), m(&polled.cpu), m(&theirs.cpu), m(&refr.cpu));
        println!(
            "| {name}, CPU ms per 1k ops | {o:.1} | {p:.1} | {t:.1} | {:.2} | {:.2} | {r:.1} |",
            t / o,
            t / p
        );
    }
    println!();
    println!(
        "{ROUNDS} interleaved rounds of {} ms per row and side, medians; ratio = ours/theirs \
         for ops/s and theirs/ours for latency and CPU (>1: lego-vhost-blk is better). CPU: \
         user + system time of every process of the side (ours: manager, memory monitor, \
         backend; theirs: qemu-nbd and qemu-storage-daemon), not the frontend's.",
        ROW_TIME.as_millis()
    );
}
