//! What copies of a vRegion cost, and what they buy: one client (this program) drives real
//! memory monitor processes over loopback through `VnodeMemory`, with every region on one
//! monitor (1 copy) and on two (2 copies), rounds interleaved:
//!
//! * 4 KiB page writes and reads at QD1 (latency, p50 and p99) and at QD32 (ops/s);
//! * the longest a page op takes, and how many fail, when the monitor holding the first copy
//!   is killed with SIGKILL in the middle of a QD1 read/write stream (2 copies; with 1 copy
//!   every op after the kill fails, which the table says too).
//!
//! Run: `cargo bench -p lego-monitors --bench copies`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lego_fabric::{Capability, Client, ClientConfig, ClusterKey, Rights};
use lego_monitor_client::client::{PageOp, VnodeMemory};
use lego_monitor_client::proto::manager::{MemoryPlacement, RegionPlacement};
use lego_testkit::net::free_port;
use lego_testkit::process::ChildGuard;
use lego_testkit::stats::{median, percentile};
use lego_testkit::wait;

const ROUNDS: usize = 5;
const REGION: u64 = 64 << 20;
const REGIONS: u64 = 2;
const PAGES: u64 = REGION * REGIONS / 4096;
const QD1_OPS: usize = 4000;
const QD32_OPS: usize = 32_000;
const PAGE: usize = 4096;

fn monitor(key: &ClusterKey) -> (ChildGuard, String) {
    let bin = env!("CARGO_BIN_EXE_lego-memory-monitor");
    let addr = format!("127.0.0.1:{}", free_port());
    let c = ChildGuard::spawn(
        bin,
        Command::new(bin)
            .args(["--listen", &addr, "--capacity", "1G"])
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    wait::until(
        "the memory monitor to listen",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || Client::connect(&addr, key.clone(), ClientConfig::default()).ok(),
    );
    (c, addr)
}

fn placement(holders: &[&str]) -> MemoryPlacement {
    MemoryPlacement {
        vnode: 1,
        region_size: REGION,
        regions: (0..REGIONS)
            .map(|i| RegionPlacement {
                index: i,
                monitor: holders[0].to_string(),
                replicas: holders[1..].iter().map(|h| h.to_string()).collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn connect(key: &ClusterKey, cap: &Capability, holders: &[&str]) -> VnodeMemory {
    let config = ClientConfig {
        reconnect_patience: (holders.len() > 1).then_some(Duration::ZERO),
        ..ClientConfig::default()
    };
    VnodeMemory::connect(placement(holders), key.clone(), cap, config).expect("connect")
}

fn pages(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % PAGES
        })
        .collect()
}

/// Latencies of `n` single-page ops at QD1, in µs.
fn qd1(vm: &VnodeMemory, write: bool, seed: u64) -> Vec<f64> {
    let data = vec![0x5au8; PAGE];
    pages(QD1_OPS, seed)
        .into_iter()
        .map(|p| {
            let t = Instant::now();
            if write {
                vm.write_run(p, &data).expect("write");
            } else {
                vm.read_run(p, 1).expect("read");
            }
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Single-page ops per second with 32 in flight.
fn qd32(vm: &VnodeMemory, write: bool, seed: u64) -> f64 {
    let data = vec![0xa5u8; PAGE];
    let all = pages(QD32_OPS, seed);
    let t = Instant::now();
    for chunk in all.chunks(32) {
        let ops: Vec<PageOp<'_>> = chunk
            .iter()
            .map(|&p| {
                if write {
                    PageOp::Write {
                        start: p,
                        data: &data,
                    }
                } else {
                    PageOp::Read { start: p, count: 1 }
                }
            })
            .collect();
        for r in vm.submit(&ops) {
            r.wait().expect("op");
        }
    }
    QD32_OPS as f64 / t.elapsed().as_secs_f64()
}

/// A QD1 write-then-read stream for `total`, with the first copy's monitor killed after
/// `kill_at`: the longest op (ms) and the failed ops.
fn kill_during_stream(
    key: &ClusterKey,
    cap: &Capability,
    copies: usize,
    kill_at: Duration,
    total: Duration,
) -> (f64, usize, usize) {
    let (mut a, addr_a) = monitor(key);
    let (_b, addr_b) = monitor(key);
    let holders: Vec<&str> = [addr_a.as_str(), addr_b.as_str()][..copies].to_vec();
    let vm = connect(key, cap, &holders);
    let data = vec![0x3cu8; PAGE];
    // Every page written once, so reads after the kill have something to find.
    for p in (0..PAGES).step_by(64) {
        vm.write_run(p, &vec![0x3cu8; 64 * PAGE]).expect("fill");
    }
    let start = Instant::now();
    let (mut longest, mut failed, mut ops) = (0f64, 0usize, 0usize);
    let mut killed = false;
    let mut seq = pages(1 << 20, 99).into_iter();
    while start.elapsed() < total {
        if !killed && start.elapsed() >= kill_at {
            a.kill();
            killed = true;
        }
        let p = seq.next().unwrap_or(0);
        for write in [true, false] {
            let t = Instant::now();
            let r = if write {
                vm.write_run(p, &data)
            } else {
                vm.read_run(p, 1).map(|_| ())
            };
            longest = longest.max(t.elapsed().as_secs_f64() * 1e3);
            ops += 1;
            if r.is_err() {
                failed += 1;
            }
        }
    }
    (longest, failed, ops)
}

fn main() {
    let key = ClusterKey::generate().expect("key");
    let cap = Capability::issue(
        &lego_fabric::CapabilityKey::derive(&key),
        1,
        Rights::MEMORY,
        Duration::from_secs(3600),
    );
    let (_a, addr_a) = monitor(&key);
    let (_b, addr_b) = monitor(&key);
    let one = connect(&key, &cap, &[&addr_a]);
    let two = connect(&key, &cap, &[&addr_a, &addr_b]);
    // Fill both so reads find pages everywhere.
    for vm in [&one, &two] {
        for p in (0..PAGES).step_by(64) {
            vm.write_run(p, &vec![1u8; 64 * PAGE]).expect("fill");
        }
    }
    type Row = (Vec<f64>, Vec<f64>);
    let mut w1: Row = (Vec::new(), Vec::new());
    let mut r1: Row = (Vec::new(), Vec::new());
    let mut q: [(Vec<f64>, Vec<f64>); 2] = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for round in 0..ROUNDS as u64 {
        for (i, vm) in [&one, &two].into_iter().enumerate() {
            let w = qd1(vm, true, round * 10 + 1);
            let r = qd1(vm, false, round * 10 + 2);
            if i == 0 {
                w1.0.extend(w);
                r1.0.extend(r);
            } else {
                w1.1.extend(w);
                r1.1.extend(r);
            }
            let qw = qd32(vm, true, round * 10 + 3);
            let qr = qd32(vm, false, round * 10 + 4);
            let slot = &mut q[i];
            slot.0.push(qw);
            slot.1.push(qr);
        }
    }
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
    println!("| 4 KiB page ops, loopback | 1 copy | 2 copies | 2 / 1 |");
    println!("|---|---|---|---|");
    for (name, row) in [("write QD1", &w1), ("read QD1", &r1)] {
        for (stat, pct) in [("p50 µs", 0.5), ("p99 µs", 0.99)] {
            let a = percentile(&row.0, pct);
            let b = percentile(&row.1, pct);
            println!("| {name} {stat} | {a:.1} | {b:.1} | {:.2} |", ratio(a, b));
        }
    }
    for (name, pick) in [("write QD32 ops/s", 0), ("read QD32 ops/s", 1)] {
        let a = median(&if pick == 0 {
            q[0].0.clone()
        } else {
            q[0].1.clone()
        });
        let b = median(&if pick == 0 {
            q[1].0.clone()
        } else {
            q[1].1.clone()
        });
        println!(
            "| {name} (median of {ROUNDS}) | {a:.0} | {b:.0} | {:.2} |",
            ratio(a, b)
        );
    }
    drop((one, two));
    let total = Duration::from_secs(3);
    let kill_at = Duration::from_secs(1);
    println!();
    println!("| first copy's monitor killed (SIGKILL) 1 s into a 3 s QD1 write+read stream | 1 copy | 2 copies |");
    println!("|---|---|---|");
    let (l1, f1, n1) = kill_during_stream(&key, &cap, 1, kill_at, total);
    let (l2, f2, n2) = kill_during_stream(&key, &cap, 2, kill_at, total);
    println!("| longest page op (ms) | {l1:.1} | {l2:.1} |");
    println!("| failed ops / all ops | {f1} / {n1} | {f2} / {n2} |");
}
