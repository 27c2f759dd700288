//! The pager's figures: faults by kind, fetch latency, evictions and write-backs, pauses. Kept
//! in atomics (the fault threads update them without a lock) and summed up at exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Fetch latency buckets: bucket `i` counts fetches that took under 2^i µs (the last one the
/// rest).
const BUCKETS: usize = 24;

/// The pager's counters.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Faults served with zeros (no round trip), and the pages those installs covered.
    pub zero_faults: AtomicU64,
    /// Pages installed as zeros.
    pub zero_pages: AtomicU64,
    /// Faults served by a fetch from the monitors.
    pub fetch_faults: AtomicU64,
    /// Pages fetched (the faulting ones plus those prefetched with them).
    pub fetched_pages: AtomicU64,
    /// Faults served from an eviction buffer (the write-back had not landed yet).
    pub buffer_faults: AtomicU64,
    /// Faults on a page another thread was installing, or already resident (woken only).
    pub woken_faults: AtomicU64,
    /// Pages evicted without a write (the monitors' copy was current).
    pub evicted_clean: AtomicU64,
    /// Pages evicted as zeros never written out (no write, no remote memory).
    pub evicted_zero: AtomicU64,
    /// Pages evicted with a write-back.
    pub evicted_dirty: AtomicU64,
    /// Write-back batches sent.
    pub writeback_batches: AtomicU64,
    /// Eviction rounds (each one pauses the vCPUs once).
    pub pauses: AtomicU64,
    /// Total time the vCPUs stood paused, in µs.
    pub paused_us: AtomicU64,
    /// The most pages resident at once.
    pub max_resident: AtomicU64,
    /// Faults installed past the limit (one page each): a vCPU's or device thread's fault
    /// during an eviction pause, or a backend's that waited out the stall guard.
    pub over_limit_installs: AtomicU64,
    fetch_us: [AtomicU64; BUCKETS],
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            zero_faults: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            fetch_faults: AtomicU64::new(0),
            fetched_pages: AtomicU64::new(0),
            buffer_faults: AtomicU64::new(0),
            woken_faults: AtomicU64::new(0),
            evicted_clean: AtomicU64::new(0),
            evicted_zero: AtomicU64::new(0),
            evicted_dirty: AtomicU64::new(0),
            writeback_batches: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            paused_us: AtomicU64::new(0),
            max_resident: AtomicU64::new(0),
            over_limit_installs: AtomicU64::new(0),
            fetch_us: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a fetch that took `took`.
    pub fn fetch_took(&self, took: Duration) {
        let us = took.as_micros().max(1) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.fetch_us[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Notes the resident page count.
    pub fn resident_now(&self, pages: u64) {
        self.max_resident.fetch_max(pages, Ordering::Relaxed);
    }

    /// The fetch latency below which `q` (0..1) of fetches completed, in µs (an upper bound:
    /// the bucket's edge).
    pub fn fetch_quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .fetch_us
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(1u64 << i);
            }
        }
        None
    }

    /// The fetch latency histogram: (upper bound in seconds, count) per bucket, the last
    /// bound infinite.
    pub fn fetch_buckets(&self) -> Vec<(f64, u64)> {
        self.fetch_us
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = if i + 1 < BUCKETS {
                    (1u64 << i) as f64 / 1e6
                } else {
                    f64::INFINITY
                };
                (bound, c.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// One line for the log at exit: every figure, with faults per second over the run.
    pub fn summary(&self, resident: u64, remote: u64, limit_pages: u64) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let faults = get(&self.zero_faults)
            + get(&self.fetch_faults)
            + get(&self.buffer_faults)
            + get(&self.woken_faults);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let q = |x| {
            self.fetch_quantile_us(x)
                .map_or("-".to_string(), |us| format!("<{us}"))
        };
        format!(
            "faults={faults} faults_per_s={:.0} zero_faults={} zero_pages={} fetch_faults={} \
             fetched_pages={} buffer_faults={} woken_faults={} fetch_p50_us={} fetch_p99_us={} \
             resident_pages={resident} max_resident_pages={} limit_pages={limit_pages} \
             over_limit_installs={} \
             remote_pages={remote} evicted_clean={} evicted_zero={} evicted_dirty={} \
             writeback_batches={} pauses={} paused_ms={}",
            faults as f64 / secs,
            get(&self.zero_faults),
            get(&self.zero_pages),
            get(&self.fetch_faults),
            get(&self.fetched_pages),
            get(&self.buffer_faults),
            get(&self.woken_faults),
            q(0.5),
            q(0.99),
            get(&self.max_resident),
            get(&self.over_limit_installs),
            get(&self.evicted_clean),
            get(&self.evicted_zero),
            get(&self.evicted_dirty),
            get(&self.writeback_batches),
            get(&self.pauses),
            get(&self.paused_us) / 1000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let s = Stats::new();
        for _ in 0..99 {
            s.fetch_took(Duration::from_micros(30));
        }
        s.fetch_took(Duration::from_millis(5));
        assert_eq!(s.fetch_quantile_us(0.5), Some(32));
        assert_eq!(s.fetch_quantile_us(0.99), Some(32));
        assert_eq!(s.fetch_quantile_us(1.0), Some(8192));
        assert!(s.summary(1, 2, 3).contains("fetch_p50_us=<32"));
    }
}
