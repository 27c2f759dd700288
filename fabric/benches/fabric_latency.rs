//! Fabric latency and throughput over loopback TCP, against a raw TCP round trip.
//!
//! Run: `cargo bench -p lego-fabric --bench fabric_latency` (env `ITERS` overrides the
//! per-mode iteration count). Prints markdown tables.
//!
//! Across a veth pair between two network namespaces instead of loopback (root needed):
//! `fabric/benches/netns.sh up`, then run with `BENCH_NETNS=1`, then `netns.sh down`.
//! `BENCH_PIN=1` pins the servers to CPU 1 and the client to CPU 0; `BENCH_ROUNDS=1`
//! prints each round's medians.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_fabric::{
    Client, ClientConfig, ClusterKey, Handler, RemoteError, Request, RequestContext, Server,
    ServerConfig,
};
use lego_testkit::stats::{median, percentile};

const PAGE: usize = 4096;
const ECHO: u16 = 0x0100;
const READ: u16 = 0x0101;
const WRITE: u16 = 0x0102;

/// A stand-in for a memory monitor: echo, read a page, write a page.
struct Bench {
    page: Vec<u8>,
}

impl Handler for Bench {
    fn handle(&self, _ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        match req.opcode {
            ECHO => Ok(req.payload),
            READ => Ok(self.page.clone()),
            _ => Ok(Vec::new()),
        }
    }
}

/// Namespaces and server address made by `netns.sh up`.
const NETNS_SERVER: &str = "/var/run/netns/lego-fab-srv";
const NETNS_CLIENT: &str = "/var/run/netns/lego-fab-cli";
const NETNS_SERVER_IP: &str = "10.201.0.2";

/// Moves the calling thread into the network namespace at `path`; sockets it creates
/// from then on live there (threads it spawns inherit it).
fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).expect("open netns (run netns.sh up as root)");
    // SAFETY: `f` is an open namespace descriptor for the duration of the call;
    // CLONE_NEWNET only switches this thread's network namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
}

/// Pins the calling thread to `cpu`; threads it spawns later inherit the mask.
fn pin_to(cpu: usize) {
    // SAFETY: `set` is a plain bitmask initialized by CPU_ZERO before use, and
    // sched_setaffinity only reads it; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A raw TCP server answering every `req_len` bytes with `resp_len` bytes.
fn raw_server(ip: &str, req_len: usize, resp_len: usize) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind raw");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_nodelay(true).expect("nodelay");
            std::thread::spawn(move || {
                let mut req = vec![0u8; req_len];
                let resp = vec![7u8; resp_len];
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

struct Raw {
    s: TcpStream,
    req: Vec<u8>,
    resp: Vec<u8>,
}

impl Raw {
    fn new(addr: SocketAddr, req_len: usize, resp_len: usize) -> Raw {
        let s = TcpStream::connect(addr).expect("connect raw");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            s,
            req: vec![1u8; req_len],
            resp: vec![0u8; resp_len],
        }
    }

    fn round_trip(&mut self) {
        self.s.write_all(&self.req).expect("raw write");
        self.s.read_exact(&mut self.resp).expect("raw read");
    }
}

/// (name, raw request bytes, raw response bytes, fabric opcode, fabric request payload)
const SHAPES: [(&str, usize, usize, u16, usize); 3] = [
    ("echo 4 KiB both ways", PAGE, PAGE, ECHO, PAGE),
    ("read 4 KiB (16 B request)", 16, PAGE, READ, 16),
    (
        "write 4 KiB (empty response)",
        PAGE + 16,
        16,
        WRITE,
        PAGE + 16,
    ),
];

/// Microseconds since `t`.
fn micros_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn main() {
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let netns = std::env::var_os("BENCH_NETNS").is_some();
    let rounds_detail = std::env::var_os("BENCH_ROUNDS").is_some();
    // BENCH_PIN=1: servers (raw and fabric alike, with every thread they spawn) on CPU 1,
    // the client on CPU 0, so that placement cannot favour one side. On a host shared with
    // CPU-bound work, pinning exposes both sides to the hogs (p99 ~ one scheduler tick).
    let pin = std::env::var("BENCH_PIN")
        .map(|v| v == "1")
        .unwrap_or(false);
    if pin {
        pin_to(1);
    }
    let ip = if netns {
        enter_netns(NETNS_SERVER);
        NETNS_SERVER_IP
    } else {
        "127.0.0.1"
    };
    let key = ClusterKey::generate().expect("key");
    let server = Server::bind(
        (ip, 0),
        key.clone(),
        Arc::new(Bench {
            page: vec![3u8; PAGE],
        }),
        ServerConfig::default(),
    )
    .expect("bind fabric");
    let handle = server.spawn();
    let key2 = ClusterKey::generate().expect("key");
    let spinning = Server::bind(
        (ip, 0),
        key2.clone(),
        Arc::new(Bench {
            page: vec![3u8; PAGE],
        }),
        ServerConfig {
            spin: Duration::from_micros(50),
            ..ServerConfig::default()
        },
    )
    .expect("bind spinning fabric")
    .spawn();
    let raw_addrs: Vec<SocketAddr> = SHAPES
        .iter()
        .map(|&(_, rq, rs, _, _)| raw_server(ip, rq, rs))
        .collect();
    if netns {
        enter_netns(NETNS_CLIENT);
    }
    if pin {
        pin_to(0);
    }
    let path = if netns {
        "veth between two netns"
    } else {
        "loopback"
    };
    let client =
        Client::connect(handle.local_addr(), key, ClientConfig::default()).expect("connect");

    let placement = if pin {
        "servers pinned to CPU 1, client to CPU 0"
    } else {
        "unpinned"
    };
    println!(
        "QD1 over TCP ({path}; {placement}), {iters} iterations per row, interleaved in rounds of 500:\n"
    );
    println!(
        "| shape | raw p50 µs | raw p99 µs | fabric p50 µs | fabric p99 µs | p50/raw p50 | p99/raw p99 | p99/raw p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (&(name, rq, rs, op, len), &raw_addr) in SHAPES.iter().zip(&raw_addrs) {
        let mut raw = Raw::new(raw_addr, rq, rs);
        let payload = vec![5u8; len];
        for _ in 0..500 {
            raw.round_trip();
            client
                .call(Request::new(op, 0, payload.clone()))
                .expect("warm-up");
        }
        let mut raw_us = Vec::with_capacity(iters);
        let mut fab_us = Vec::with_capacity(iters);
        while raw_us.len() < iters {
            let n = 500.min(iters - raw_us.len());
            for _ in 0..n {
                let t = Instant::now();
                raw.round_trip();
                raw_us.push(micros_since(t));
            }
            for _ in 0..n {
                let req = Request::new(op, 0, payload.clone());
                let t = Instant::now();
                let r = client.call(req).expect("fabric call");
                fab_us.push(micros_since(t));
                std::hint::black_box(r);
            }
            if rounds_detail {
                let k = raw_us.len();
                eprintln!(
                    "  round: raw p50 {:.1} µs, fabric p50 {:.1} µs",
                    median(&raw_us[k - n..]),
                    median(&fab_us[k - n..])
                );
            }
        }
        let (r50, r99) = (percentile(&raw_us, 0.5), percentile(&raw_us, 0.99));
        let (f50, f99) = (percentile(&fab_us, 0.5), percentile(&fab_us, 0.99));
        println!(
            "| {name} | {r50:.1} | {r99:.1} | {f50:.1} | {f99:.1} | {:.2} | {:.2} | {:.2} |",
            f50 / r50,
            f99 / r99,
            f99 / r50
        );
    }

    // Opt-in busy-polling on both sides (ClientConfig::spin, ServerConfig::spin).
    let spin = Duration::from_micros(50);
    let spin_client = Client::connect(
        spinning.local_addr(),
        key2,
        ClientConfig {
            spin,
            ..ClientConfig::default()
        },
    )
    .expect("connect spinning");
    let mut us = Vec::with_capacity(iters);
    for i in 0..iters + 500 {
        let req = Request::new(READ, 0, vec![0u8; 16]);
        let t = Instant::now();
        spin_client.call(req).expect("spin read");
        if i >= 500 {
            us.push(micros_since(t));
        }
    }
    println!(
        "| read 4 KiB, fabric busy-polling 50 µs both sides | - | - | {:.1} | {:.1} | - | - | - |",
        percentile(&us, 0.5),
        percentile(&us, 0.99)
    );
    drop(spin_client);
    spinning.shutdown();

    println!("\nThroughput, 4 KiB reads on one client (one connection, {path}):\n");
    println!("| mode | ops | seconds | kIOPS |");
    println!("|---|---|---|---|");
    let ops = iters * 4;
    let qd = 32;
    let read = || Request::new(READ, 0, vec![0u8; 16]);
    let t = Instant::now();
    let mut window = VecDeque::with_capacity(qd);
    for _ in 0..ops {
        if window.len() == qd {
            let p: lego_fabric::Pending = window.pop_front().expect("non-empty");
            p.wait().expect("qd32 read");
        }
        window.push_back(client.submit(read()));
    }
    for p in window {
        p.wait().expect("qd32 read");
    }
    report("QD32 submit/wait window", ops, t.elapsed());
    let t = Instant::now();
    for _ in 0..ops / qd {
        for r in client.call_batch((0..qd).map(|_| read()).collect()) {
            r.expect("batch read");
        }
    }
    report("QD32 call_batch (one writev)", ops / qd * qd, t.elapsed());
    let t = Instant::now();
    for _ in 0..ops / 4 {
        client.call(read()).expect("qd1 read");
    }
    report("QD1 call", ops / 4, t.elapsed());
    let threads = 4;
    let t = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let c = client.clone();
            std::thread::spawn(move || {
                for _ in 0..ops / threads / 4 {
                    c.call(Request::new(READ, 0, vec![0u8; 16]))
                        .expect("mt read");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("thread");
    }
    report("4 threads x QD1 on one client", ops / 4, t.elapsed());
    handle.shutdown();
}

fn report(mode: &str, ops: usize, d: Duration) {
    println!(
        "| {mode} | {ops} | {:.3} | {:.1} |",
        d.as_secs_f64(),
        ops as f64 / d.as_secs_f64() / 1000.0
    );
}
