//! Page store micro-benchmark: 1M pages written then read, single- and multi-threaded, for the
//! arena-backed sharded store and for a baseline holding one `Box<[u8; 4096]>` per page in the
//! same sharded maps. Run: `cargo bench -p lego-monitors --bench pagestore`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lego_monitors::pagestore::{PageStore, PAGE_SIZE};
use lego_testkit::stats::median;

const PAGES: u64 = 1_000_000;
const ROUNDS: usize = 3;

/// One shard of the baseline.
type BoxShard = Mutex<HashMap<(u64, u64), Box<[u8; PAGE_SIZE]>>>;

/// Baseline: the obvious design, a Box per page behind 64 sharded mutexes.
struct BoxStore {
    shards: Vec<BoxShard>,
}

impl BoxStore {
    fn new() -> Self {
        Self {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
    fn shard(&self, v: u64, p: u64) -> &BoxShard {
        let h = (p ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        &self.shards[(h >> 58) as usize]
    }
    fn write(&self, v: u64, p: u64, d: &[u8]) {
        let mut g = self.shard(v, p).lock().expect("lock");
        match g.get_mut(&(v, p)) {
            Some(b) => b.copy_from_slice(d),
            None => {
                let mut b = Box::new([0u8; PAGE_SIZE]);
                b.copy_from_slice(d);
                g.insert((v, p), b);
            }
        }
    }
    fn read(&self, v: u64, p: u64, out: &mut [u8]) {
        let g = self.shard(v, p).lock().expect("lock");
        match g.get(&(v, p)) {
            Some(b) => out.copy_from_slice(&b[..]),
            None => out.fill(0),
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Runs `f(thread, first_page, end_page)` over `threads` threads splitting PAGES; returns ops/s.
fn run(threads: u64, f: Arc<dyn Fn(u64, u64, u64) + Send + Sync>) -> f64 {
    let t = Instant::now();
    let per = PAGES / threads;
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i, i * per, (i + 1) * per))
        })
        .collect();
    for h in hs {
        h.join().expect("join");
    }
    PAGES as f64 / t.elapsed().as_secs_f64()
}

/// A permutation of 0..PAGES (multiplication by a constant coprime to 10^6).
fn scatter(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b1) % PAGES
}

fn main() {
    println!("page store bench: {PAGES} pages of 4 KiB, {ROUNDS} rounds, medians (Mops/s = million page ops/s; read: in order, rread: scattered)");
    for threads in [1u64, 2] {
        let mut res: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut rss: HashMap<&str, u64> = HashMap::new();
        for _ in 0..ROUNDS {
            let before = rss_kib();
            let s = Arc::new(PageStore::new(8 << 30));
            let s2 = s.clone();
            res.entry("arena write").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut page = vec![1u8; PAGE_SIZE];
                    for p in a..b {
                        page[0] = p as u8 | 1;
                        s2.write_run(1, p, &page).expect("write");
                    }
                }),
            ));
            rss.insert("arena", rss_kib().saturating_sub(before));
            let s3 = s.clone();
            res.entry("arena read").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut out = vec![0u8; PAGE_SIZE];
                    for p in a..b {
                        s3.read_run(1, p, &mut out).expect("read");
                    }
                }),
            ));
            let s4 = s.clone();
            res.entry("arena rread").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut out = vec![0u8; PAGE_SIZE];
                    for i in a..b {
                        s4.read_run(1, scatter(i), &mut out).expect("read");
                    }
                }),
            ));
            drop(s);
            let before = rss_kib();
            let bs = Arc::new(BoxStore::new());
            let b2 = bs.clone();
            res.entry("box write").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut page = vec![1u8; PAGE_SIZE];
                    for p in a..b {
                        page[0] = p as u8 | 1;
                        b2.write(1, p, &page);
                    }
                }),
            ));
            rss.insert("box", rss_kib().saturating_sub(before));
            let b3 = bs.clone();
            res.entry("box read").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut out = vec![0u8; PAGE_SIZE];
                    for p in a..b {
                        b3.read(1, p, &mut out);
                    }
                }),
            ));
            let b4 = bs.clone();
            res.entry("box rread").or_default().push(run(
                threads,
                Arc::new(move |_, a, b| {
                    let mut out = vec![0u8; PAGE_SIZE];
                    for i in a..b {
                        b4.read(1, scatter(i), &mut out);
                    }
                }),
            ));
            let t = Instant::now();
            drop(bs);
            res.entry("box free")
                .or_default()
                .push(PAGES as f64 / t.elapsed().as_secs_f64());
            let s = PageStore::new(8 << 30);
            let page = vec![1u8; PAGE_SIZE];
            for p in 0..PAGES {
                s.write_run(1, p, &page).expect("write");
            }
            let t = Instant::now();
            s.free_vnode(1);
            res.entry("arena free")
                .or_default()
                .push(PAGES as f64 / t.elapsed().as_secs_f64());
        }
        println!("threads={threads}");
        for op in ["write", "read", "rread", "free"] {
            let a = median(&res[format!("arena {op}").as_str()]);
            let b = median(&res[format!("box {op}").as_str()]);
            println!(
                "  {op:5}  arena {:6.2} Mops/s   box-per-page {:6.2} Mops/s   arena/box {:.2}x",
                a / 1e6,
                b / 1e6,
                a / b
            );
        }
        println!(
            "  RSS growth for 1M pages: arena {} MiB, box-per-page {} MiB (last round)",
            rss["arena"] / 1024,
            rss["box"] / 1024
        );
    }
}
