//! Side-by-side benchmark of the monitors against `qemu-nbd`, one client (this program) driving
//! both over loopback:
//!
//! * 4 KiB random page reads and writes at QD32: memory monitor vs qemu-nbd serving a file on
//!   tmpfs (memory against memory);
//! * 4 KiB random write + flush at QD1 (latency): storage monitor vs qemu-nbd serving a file in
//!   the same disk folder, `--cache=writeback` so NBD_CMD_FLUSH is an fdatasync like ours;
//! * 1 MiB sequential writes (then flush) and reads at QD4 (throughput), same pair.
//!
//! Rounds alternate between the two servers; medians are printed with ratios.
//! Run: `cargo bench -p lego-monitors --bench vs_nbd` (needs `qemu-nbd` from qemu-utils).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lego_fabric::{Capability, Client, ClientConfig, ClusterKey, Rights};
use lego_monitor_client::client::{MemoryClient, StorageClient};
use lego_testkit::net::free_port;
use lego_testkit::process::ChildGuard;
use lego_testkit::qemu_nbd;
use lego_testkit::stats::{median, percentile};
use lego_testkit::wait;

const ROUNDS: usize = 5;
const MEM_PAGES: u64 = 16384; // 64 MiB working set
const QD_OPS: u64 = 40_000;
const SYNC_OPS: usize = 200;
const SEQ_BYTES: u64 = 128 << 20;
const SEQ_QD: usize = 4;

/// A tiny NBD client (fixed newstyle handshake, simple replies, pipelined).
mod nbd {
    use super::*;

    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const FLUSH: u16 = 3;

    pub struct Nbd {
        s: TcpStream,
        next: u64,
        lens: HashMap<u64, u32>,
    }

    fn rd<const N: usize>(s: &mut TcpStream) -> [u8; N] {
        let mut b = [0u8; N];
        s.read_exact(&mut b).expect("nbd read");
        b
    }

    impl Nbd {
        pub fn connect(addr: &str, export: &str) -> Nbd {
            let mut s = TcpStream::connect(addr).expect("nbd connect");
            s.set_nodelay(true).expect("nodelay");
            let hello: [u8; 18] = rd(&mut s);
            assert_eq!(
                &hello[..16],
                b"NBDMAGICIHAVEOPT",
                "not an NBD newstyle server"
            );
            s.write_all(&3u32.to_be_bytes()).expect("client flags"); // FIXED_NEWSTYLE | NO_ZEROES
            let mut opt = b"IHAVEOPT".to_vec();
            opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
            opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
            opt.extend_from_slice(export.as_bytes());
            s.write_all(&opt).expect("option");
            let _size: [u8; 8] = rd(&mut s);
            let _flags: [u8; 2] = rd(&mut s);
            Nbd {
                s,
                next: 1,
                lens: HashMap::new(),
            }
        }

        pub fn send(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) {
            let h = self.next;
            self.next += 1;
            let mut req = Vec::with_capacity(28 + data.len());
            req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            req.extend_from_slice(&0u16.to_be_bytes());
            req.extend_from_slice(&kind.to_be_bytes());
            req.extend_from_slice(&h.to_be_bytes());
            req.extend_from_slice(&offset.to_be_bytes());
            req.extend_from_slice(&len.to_be_bytes());
            req.extend_from_slice(data);
            self.s.write_all(&req).expect("nbd send");
            self.lens.insert(h, if kind == READ { len } else { 0 });
        }

        /// Reads one reply (any order), returning its data length.
        pub fn recv(&mut self, buf: &mut Vec<u8>) -> usize {
            let r: [u8; 16] = rd(&mut self.s);
            assert_eq!(
                u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
                0x6744_6698,
                "bad NBD reply magic"
            );
            let err = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
            assert_eq!(err, 0, "NBD error {err}");
            let h = u64::from_be_bytes(r[8..16].try_into().expect("8 bytes"));
            let n = self.lens.remove(&h).expect("known handle") as usize;
            buf.resize(n, 0);
            self.s.read_exact(&mut buf[..n]).expect("nbd data");
            n
        }

        /// One request at QD1.
        pub fn call(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) {
            self.send(kind, offset, len, data);
            let mut b = Vec::new();
            self.recv(&mut b);
        }
    }
}

/// Polls `up` until it holds, for at most 30 s.
fn wait_up(what: &str, mut up: impl FnMut() -> bool) {
    let (timeout, interval) = (Duration::from_secs(30), Duration::from_millis(50));
    wait::until(what, timeout, interval, || up().then_some(()));
}

fn qemu_nbd(file: &Path, port: u16) -> ChildGuard {
    let c = ChildGuard::spawn(
        "qemu-nbd (install qemu-utils)",
        qemu_nbd::command(file, port)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{port}");
    wait_up(&addr, || TcpStream::connect(&addr).is_ok());
    c
}

fn daemon(bin: &str, args: &[String], key: &ClusterKey, addr: &str) -> ChildGuard {
    let c = ChildGuard::spawn(
        bin,
        Command::new(bin)
            .args(args)
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    wait_up(bin, || {
        Client::connect(addr, key.clone(), ClientConfig::default()).is_ok()
    });
    c
}

fn rand_pages(n: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % MEM_PAGES
        })
        .collect()
}

/// QD-pipelined page ops on the memory monitor; returns ops/s.
fn mon_qd(c: &MemoryClient, write: bool, pages: &[u64], qd: usize) -> f64 {
    let data = vec![0x5au8; 4096];
    let t = Instant::now();
    let mut q = VecDeque::with_capacity(qd);
    for &p in pages {
        if q.len() == qd {
            let pending: lego_monitor_client::client::PendingPages =
                q.pop_front().expect("pending");
            pending.wait().expect("op");
        }
        q.push_back(
            if write {
                c.submit_write_run(p, &data)
            } else {
                c.submit_read_run(p, 1)
            }
            .expect("submit"),
        );
    }
    for p in q {
        p.wait().expect("op");
    }
    pages.len() as f64 / t.elapsed().as_secs_f64()
}

/// QD-pipelined 4 KiB ops on NBD; returns ops/s.
fn nbd_qd(n: &mut nbd::Nbd, write: bool, pages: &[u64], qd: usize) -> f64 {
    let data = vec![0x5au8; 4096];
    let mut buf = Vec::new();
    let t = Instant::now();
    let mut inflight = 0;
    for &p in pages {
        if inflight == qd {
            n.recv(&mut buf);
            inflight -= 1;
        }
        if write {
            n.send(nbd::WRITE, p * 4096, 4096, &data);
        } else {
            n.send(nbd::READ, p * 4096, 4096, &[]);
        }
        inflight += 1;
    }
    for _ in 0..inflight {
        n.recv(&mut buf);
    }
    pages.len() as f64 / t.elapsed().as_secs_f64()
}

fn report(title: &str, unit: &str, a_name: &str, a: Vec<f64>, b_name: &str, b: Vec<f64>) {
    let (ma, mb) = (median(&a), median(&b));
    println!(
        "{title:44} {a_name} {ma:>10.1} {unit}   {b_name} {mb:>10.1} {unit}   ratio {:.2}",
        ma / mb
    );
}

fn main() {
    let key = ClusterKey::generate().expect("key");
    let mem_bin = env!("CARGO_BIN_EXE_lego-memory-monitor");
    let st_bin = env!("CARGO_BIN_EXE_lego-storage-monitor");
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let disk = tempfile::tempdir_in("/var/tmp").expect("disk dir");

    // ---------------- memory: QD32 4 KiB page ops ----------------
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let _mon = daemon(
        mem_bin,
        &[
            "--listen".into(),
            maddr.clone(),
            "--capacity".into(),
            "1G".into(),
        ],
        &key,
        &maddr,
    );
    let cap = Capability::issue(
        &lego_fabric::CapabilityKey::derive(&key),
        1,
        Rights::MEMORY | Rights::STORAGE,
        Duration::from_secs(3600),
    );
    let mc =
        MemoryClient::connect(&maddr, key.clone(), &cap, ClientConfig::default()).expect("connect");
    let img = shm.path().join("mem.img");
    std::fs::write(&img, vec![0x11u8; (MEM_PAGES * 4096) as usize]).expect("image");
    let nport = free_port();
    let _qn = qemu_nbd(&img, nport);
    let naddr = format!("127.0.0.1:{nport}");
    let mut nb = nbd::Nbd::connect(&naddr, qemu_nbd::EXPORT);
    // Pre-populate the monitor so reads hit stored pages.
    let all: Vec<u64> = (0..MEM_PAGES).collect();
    mon_qd(&mc, true, &all, 32);
    println!("memory: {QD_OPS} x 4 KiB random ops over 64 MiB at QD32, {ROUNDS} rounds, medians (qemu-nbd file on tmpfs)");
    for write in [false, true] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let pages = rand_pages(QD_OPS, 77 + r as u64);
            a.push(mon_qd(&mc, write, &pages, 32));
            b.push(nbd_qd(&mut nb, write, &pages, 32));
        }
        let t = if write {
            "  4K random write QD32"
        } else {
            "  4K random read  QD32"
        };
        report(t, "IOPS", "memory-monitor", a, "qemu-nbd", b);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let pages = rand_pages(QD_OPS / 4, 99 + r as u64);
        a.push(mon_qd(&mc, false, &pages, 1));
        b.push(nbd_qd(&mut nb, false, &pages, 1));
    }
    report(
        "  4K random read  QD1",
        "IOPS",
        "memory-monitor",
        a,
        "qemu-nbd",
        b,
    );
    drop(nb);

    // ---------------- storage: durability and throughput ----------------
    let sport = free_port();
    let saddr = format!("127.0.0.1:{sport}");
    let data_dir = disk.path().join("vols");
    let _st = daemon(
        st_bin,
        &[
            "--listen".into(),
            saddr.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--capacity".into(),
            "4G".into(),
        ],
        &key,
        &saddr,
    );
    let sc = StorageClient::connect(&saddr, key.clone(), &cap, ClientConfig::default())
        .expect("connect");
    let vol_size = SEQ_BYTES + (64 << 20);
    sc.create("bench", vol_size).expect("create");
    let nimg = disk.path().join("nbd.img");
    let f = std::fs::File::create(&nimg).expect("nbd image");
    f.set_len(vol_size).expect("size");
    drop(f);
    let nport = free_port();
    let _qs = qemu_nbd(&nimg, nport);
    let mut nb = nbd::Nbd::connect(&format!("127.0.0.1:{nport}"), qemu_nbd::EXPORT);
    let block = vec![0xa5u8; 4096];
    println!(
        "storage: files in {} (same filesystem for both), {ROUNDS} rounds, medians",
        disk.path().display()
    );
    let (mut a_med, mut a_fua, mut b_med, mut a_p99, mut b_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let offs = rand_pages(SYNC_OPS as u64, 5 + r as u64);
        let (mut la, mut lf, mut lb) = (Vec::new(), Vec::new(), Vec::new());
        for &p in &offs {
            let t = Instant::now();
            sc.write("bench", p * 4096, &block, false).expect("write");
            sc.flush("bench").expect("flush");
            la.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            sc.write("bench", p * 4096, &block, true)
                .expect("fua write");
            lf.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            nb.call(nbd::WRITE, p * 4096, 4096, &block);
            nb.call(nbd::FLUSH, 0, 0, &[]);
            lb.push(t.elapsed().as_secs_f64() * 1e6);
        }
        a_p99.push(percentile(&la, 0.99));
        b_p99.push(percentile(&lb, 0.99));
        a_med.push(median(&la));
        a_fua.push(median(&lf));
        b_med.push(median(&lb));
    }
    report(
        "  4K random write+flush QD1 median latency",
        "us",
        "storage-monitor",
        a_med.clone(),
        "qemu-nbd",
        b_med.clone(),
    );
    report(
        "  4K random write+flush QD1 p99 latency",
        "us",
        "storage-monitor",
        a_p99,
        "qemu-nbd",
        b_p99,
    );
    report(
        "  4K random write (FUA flag) QD1 median",
        "us",
        "storage-monitor",
        a_fua,
        "qemu-nbd w+flush",
        b_med,
    );

    let mib = vec![0x3cu8; 1 << 20];
    let chunks = SEQ_BYTES >> 20;
    let (mut wa, mut wb, mut ra, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut q = VecDeque::new();
        for i in 0..chunks {
            if q.len() == SEQ_QD {
                let p: lego_fabric::Pending = q.pop_front().expect("p");
                p.wait().expect("write");
            }
            q.push_back(sc.submit_write("bench", i << 20, &mib, false));
        }
        for p in q {
            p.wait().expect("write");
        }
        sc.flush("bench").expect("flush");
        wa.push(SEQ_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6);

        let t = Instant::now();
        let mut buf = Vec::new();
        let mut inflight = 0;
        for i in 0..chunks {
            if inflight == SEQ_QD {
                nb.recv(&mut buf);
                inflight -= 1;
            }
            nb.send(nbd::WRITE, i << 20, 1 << 20, &mib);
            inflight += 1;
        }
        for _ in 0..inflight {
            nb.recv(&mut buf);
        }
        nb.call(nbd::FLUSH, 0, 0, &[]);
        wb.push(SEQ_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6);

        let t = Instant::now();
        let mut q = VecDeque::new();
        for i in 0..chunks {
            if q.len() == SEQ_QD {
                let p: lego_fabric::Pending = q.pop_front().expect("p");
                assert_eq!(p.wait().expect("read").payload.len(), 1 << 20);
            }
            q.push_back(sc.submit_read("bench", i << 20, 1 << 20));
        }
        for p in q {
            p.wait().expect("read");
        }
        ra.push(SEQ_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6);

        let t = Instant::now();
        let mut inflight = 0;
        for i in 0..chunks {
            if inflight == SEQ_QD {
                nb.recv(&mut buf);
                inflight -= 1;
            }
            nb.send(nbd::READ, i << 20, 1 << 20, &[]);
            inflight += 1;
        }
        for _ in 0..inflight {
            nb.recv(&mut buf);
        }
        rb.push(SEQ_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    report(
        "  1 MiB sequential write QD4 + flush",
        "MB/s",
        "storage-monitor",
        wa,
        "qemu-nbd",
        wb,
    );
    report(
        "  1 MiB sequential read QD4 (page cache)",
        "MB/s",
        "storage-monitor",
        ra,
        "qemu-nbd",
        rb,
    );
}
