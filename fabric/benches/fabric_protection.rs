//! What frame protection costs: the same fabric client and server over loopback with CRC-only
//! frames, with a MAC on every frame (the default) and with payloads encrypted, side by side
//! in one run, rounds interleaved so that all three see the same machine.
//!
//! Run: `cargo bench -p lego-fabric --bench fabric_protection` (env `ITERS`: QD1 round trips
//! per protection, default 20000; `ROUNDS`: default 5). Prints a markdown table.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use lego_fabric::{
    Client, ClientConfig, ClusterKey, FrameProtection, Handler, RemoteError, Request,
    RequestContext, Server, ServerConfig, ServerHandle,
};
use lego_testkit::stats::{median, percentile};

const PAGE: usize = 4096;
const READ: u16 = 0x0101;
const WRITE: u16 = 0x0102;
const QD: usize = 32;

/// A stand-in for a memory monitor: read a page, write a page.
struct Pages {
    page: Vec<u8>,
}

impl Handler for Pages {
    fn handle(&self, _ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        match req.opcode {
            READ => Ok(self.page.clone()),
            _ => Ok(Vec::new()),
        }
    }
}

struct Side {
    protection: FrameProtection,
    _server: ServerHandle,
    client: Client,
    qd1_read_us: Vec<f64>,
    qd1_write_us: Vec<f64>,
    qd32_read_ops: Vec<f64>,
    qd32_write_ops: Vec<f64>,
}

fn side(protection: FrameProtection) -> Side {
    let key = ClusterKey::from_bytes([7; 32]);
    let handler = Arc::new(Pages {
        page: vec![0x5a; PAGE],
    });
    let server = Server::bind(
        "127.0.0.1:0",
        key.clone(),
        handler,
        ServerConfig {
            protection,
            ..ServerConfig::default()
        },
    )
    .expect("bind")
    .spawn();
    let client = Client::connect(
        server.local_addr(),
        key,
        ClientConfig {
            protection,
            ..ClientConfig::default()
        },
    )
    .expect("connect");
    Side {
        protection,
        _server: server,
        client,
        qd1_read_us: Vec::new(),
        qd1_write_us: Vec::new(),
        qd32_read_ops: Vec::new(),
        qd32_write_ops: Vec::new(),
    }
}

fn read() -> Request {
    Request::new(READ, 0, 0u64.to_le_bytes().to_vec())
}

fn write() -> Request {
    Request::new(WRITE, 0, vec![0xa5; PAGE])
}

fn qd32(client: &Client, ops: usize, make: fn() -> Request) -> f64 {
    let t = Instant::now();
    let mut window = VecDeque::with_capacity(QD);
    for _ in 0..ops {
        if window.len() == QD {
            let p: lego_fabric::Pending = window.pop_front().expect("window");
            p.wait().expect("qd32");
        }
        window.push_back(client.submit(make()));
    }
    for p in window {
        p.wait().expect("qd32");
    }
    ops as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut sides: Vec<Side> = [
        FrameProtection::Crc,
        FrameProtection::Mac,
        FrameProtection::Encrypt,
    ]
    .into_iter()
    .map(side)
    .collect();
    // Warm up every connection.
    for s in &sides {
        for _ in 0..2000 {
            s.client.call(read()).expect("warm-up");
        }
    }
    let per_round = (iters / rounds).max(1);
    for _ in 0..rounds {
        for s in &mut sides {
            for _ in 0..per_round {
                let t = Instant::now();
                s.client.call(read()).expect("qd1 read");
                s.qd1_read_us.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                s.client.call(write()).expect("qd1 write");
                s.qd1_write_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let r = qd32(&s.client, per_round * 4, read);
            s.qd32_read_ops.push(r);
            let w = qd32(&s.client, per_round * 4, write);
            s.qd32_write_ops.push(w);
        }
    }
    println!(
        "4 KiB pages over loopback, one client connection; QD1: {} round trips per protection; \
         QD32: submit/wait window; {rounds} interleaved rounds (QD32 figures are medians of rounds)\n",
        per_round * rounds
    );
    println!(
        "| protection | QD1 read p50 µs | QD1 read p99 µs | QD1 write p50 µs | QD32 read kops/s | QD32 write kops/s | QD32 read vs crc | QD32 write vs crc |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let base_r = median(&sides[0].qd32_read_ops);
    let base_w = median(&sides[0].qd32_write_ops);
    for s in &sides {
        let r = median(&s.qd32_read_ops);
        let w = median(&s.qd32_write_ops);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
            s.protection,
            percentile(&s.qd1_read_us, 0.5),
            percentile(&s.qd1_read_us, 0.99),
            percentile(&s.qd1_write_us, 0.5),
            r / 1e3,
            w / 1e3,
            r / base_r,
            w / base_w,
        );
    }
}
