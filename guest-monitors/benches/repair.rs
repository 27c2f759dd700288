//! How fast a vRegion that lost a copy is repaired, and what the repair costs the vNode: a
//! real manager and three memory monitor processes over loopback, one vNode (this program,
//! through `VnodeMemory` with its repair follower, as the `lego-vhost-blk` backend runs it)
//! with one 256 MiB region on two of them, every page written. A QD1 stream of 4 KiB writes
//! runs throughout; the monitor holding the region's first copy is killed with SIGKILL, the
//! manager declares it dead and picks the third monitor, and the client copies the region
//! there. Measured per round, with the manager's `--repair-rate-mib` at 0 (unthrottled) and
//! at its default (64):
//!
//! * repair throughput: the pages copied over the time from the copy's start (the first
//!   progress report) to the manager recording the region healthy again;
//! * QD1 write latency (p50, p99, max) before the kill and during the copy.
//!
//! Run: `cargo bench -p lego-monitors --bench repair`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lego_fabric::{Client, ClientConfig, ClusterKey, Rights};
use lego_monitor_client::client::{ManagerClient, VnodeMemory};
use lego_monitor_client::proto::manager::RegionHealth;
use lego_testkit::net::free_port;
use lego_testkit::process::ChildGuard;
use lego_testkit::stats::{median, percentile};
use lego_testkit::wait;

const ROUNDS: usize = 3;
const REGION: u64 = 256 << 20;
const PAGE: usize = 4096;
const PAGES: u64 = REGION / PAGE as u64;
const BASELINE: Duration = Duration::from_secs(2);

fn spawn(key: &ClusterKey, bin: &str, args: &[&str]) -> (ChildGuard, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let c = ChildGuard::spawn(
        bin,
        Command::new(bin)
            .arg("--listen")
            .arg(&addr)
            .args(args)
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait::until(
        "a daemon to listen",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || Client::connect(&addr, key.clone(), ClientConfig::default()).ok(),
    );
    (c, addr)
}

/// One round's figures.
struct Round {
    mib_s: f64,
    secs: f64,
    before: Vec<f64>,
    during: Vec<f64>,
}

fn round(key: &ClusterKey, rate: u32, vnode: u64) -> Round {
    let state = tempfile::tempdir().expect("state dir");
    let (_m, maddr) = spawn(
        key,
        env!("CARGO_BIN_EXE_lego-manager"),
        &[
            "--state-dir",
            state.path().to_str().expect("utf8"),
            "--region-size",
            "256M",
            "--copies",
            "2",
            "--heartbeat-ms",
            "200",
            "--repair-rate-mib",
            &rate.to_string(),
        ],
    );
    let mem = env!("CARGO_BIN_EXE_lego-memory-monitor");
    let mut mons: Vec<(ChildGuard, String)> = (0..3)
        .map(|_| {
            spawn(
                key,
                mem,
                &[
                    "--capacity",
                    "1G",
                    "--heartbeat-ms",
                    "200",
                    "--manager",
                    &maddr,
                ],
            )
        })
        .collect();
    let mc = ManagerClient::connect(&maddr, key.clone(), ClientConfig::default()).expect("mgr");
    wait::until(
        "three monitors registered",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (mc.status().ok()?.monitors.len() == 3).then_some(()),
    );
    let p = mc.place_memory(vnode, REGION).expect("place");
    let victim = p.regions[0].monitor.clone();
    let cap = mc
        .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
        .expect("cap");
    let config = ClientConfig {
        reconnect_patience: Some(Duration::ZERO),
        ..ClientConfig::default()
    };
    let mut vm = VnodeMemory::connect(p, key.clone(), &cap, config).expect("connect");
    vm.keep_repaired(mc.clone());
    for start in (0..PAGES).step_by(256) {
        let data: Vec<u8> = (0..256 * PAGE)
            .map(|i| (i as u64 + start) as u8 | 1)
            .collect();
        vm.write_run(start, &data).expect("fill");
    }
    let vm = Arc::new(vm);
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (vm, stop, lat) = (vm.clone(), stop.clone(), lat.clone());
        std::thread::spawn(move || {
            let data = vec![0x77u8; PAGE];
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = Instant::now();
                vm.write_run(x % PAGES, &data)
                    .expect("write during the repair");
                let us = t.elapsed().as_secs_f64() * 1e6;
                lat.lock().expect("lock").push((t, us));
            }
        })
    };
    std::thread::sleep(BASELINE);
    let killed = Instant::now();
    if let Some(m) = mons.iter_mut().find(|(_, a)| *a == victim) {
        m.0.kill();
    }
    let (mut began, mut total) = (None, 0u64);
    let ended = loop {
        let r = mc.memory_placement(vnode).expect("placement").regions[0].clone();
        match r.health {
            Some(RegionHealth::Repairing) => {
                began.get_or_insert_with(Instant::now);
                total = r.repair.map_or(total, |x| x.total_pages);
            }
            Some(RegionHealth::Healthy) if began.is_some() => break Instant::now(),
            _ => {}
        }
        assert!(killed.elapsed() < Duration::from_secs(300), "not repaired");
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let began = began.expect("the repair started");
    let secs = ended.duration_since(began).as_secs_f64();
    let lat = lat.lock().expect("lock");
    let before = lat
        .iter()
        .filter(|(t, _)| *t < killed)
        .map(|l| l.1)
        .collect();
    let during = lat
        .iter()
        .filter(|(t, _)| *t >= began && *t < ended)
        .map(|l| l.1)
        .collect();
    Round {
        mib_s: (total * PAGE as u64) as f64 / 1048576.0 / secs,
        secs,
        before,
        during,
    }
}

fn main() {
    let key = ClusterKey::generate().expect("key");
    println!(
        "| repair of a 256 MiB vRegion (every page stored), loopback, median of {ROUNDS} | \
         --repair-rate-mib 0 (off) | default (64) |"
    );
    println!("|---|---|---|");
    let mut cols = Vec::new();
    for (i, rate) in [0u32, 64].into_iter().enumerate() {
        let rounds: Vec<Round> = (0..ROUNDS)
            .map(|r| round(&key, rate, 1 + (i * ROUNDS + r) as u64))
            .collect();
        cols.push(rounds);
    }
    let med = |f: &dyn Fn(&Round) -> f64, c: &[Round]| median(&c.iter().map(f).collect::<Vec<_>>());

    let row = |name: &str, v: [f64; 2], digits: usize| {
        println!("| {name} | {:.*} | {:.*} |", digits, v[0], digits, v[1]);
    };
    row(
        "repair throughput (MiB/s)",
        [med(&|r| r.mib_s, &cols[0]), med(&|r| r.mib_s, &cols[1])],
        1,
    );
    row(
        "repair time (s)",
        [med(&|r| r.secs, &cols[0]), med(&|r| r.secs, &cols[1])],
        2,
    );
    for (phase, pick) in [("before the kill", 0), ("during the repair", 1)] {
        let all = |c: &[Round]| -> Vec<f64> {
            c.iter()
                .flat_map(|r| if pick == 0 { &r.before } else { &r.during })
                .copied()
                .collect()
        };
        let (a, b) = (all(&cols[0]), all(&cols[1]));
        for (stat, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            row(
                &format!("QD1 4 KiB write {stat} µs, {phase}"),
                [percentile(&a, q), percentile(&b, q)],
                0,
            );
        }
    }
}
