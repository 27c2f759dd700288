//! What a block device has served, for its metrics: plain atomics the request path bumps
//! and a scrape reads. Latency is per batch (a batch's requests are in flight together), in
//! power-of-two microsecond buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: bucket `i` counts batches that took less than `2^i` µs (and at least
/// `2^(i-1)`); the last one also takes everything longer.
pub const LATENCY_BUCKETS: usize = 24;

/// A block device's request counters.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Requests completed with an error status.
    pub errors: AtomicU64,
    /// Data bytes the device wrote into guest buffers (reads).
    pub bytes_to_guest: AtomicU64,
    /// Bytes the device took from guest buffers after each request's header (write data;
    /// discard and write-zeroes segments).
    pub bytes_from_guest: AtomicU64,
    /// Batches served, by how long they took.
    pub batch_latency: [AtomicU64; LATENCY_BUCKETS],
    /// Total time of all batches, in microseconds.
    pub batch_latency_sum_us: AtomicU64,
}

impl BlockCounters {
    /// Counts one batch that took `took`.
    pub fn batch(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.batch_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.batch_latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one completed request.
    pub fn request(&self, to_guest: usize, from_guest: usize, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_to_guest
            .fetch_add(to_guest as u64, Ordering::Relaxed);
        self.bytes_from_guest
            .fetch_add(from_guest as u64, Ordering::Relaxed);
    }

    /// The upper bound, in µs, of bucket `i` (`None` for the last, unbounded one).
    pub fn bucket_bound_us(i: usize) -> Option<u64> {
        (i + 1 < LATENCY_BUCKETS).then(|| 1u64 << i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_power_of_two_buckets() {
        let c = BlockCounters::default();
        c.batch(Duration::ZERO);
        c.batch(Duration::from_micros(1));
        c.batch(Duration::from_micros(3));
        c.batch(Duration::from_micros(4));
        c.batch(Duration::from_secs(3600));
        let n = |i: usize| c.batch_latency[i].load(Ordering::Relaxed);
        assert_eq!((n(0), n(1), n(2), n(3)), (1, 1, 1, 1));
        assert_eq!(n(LATENCY_BUCKETS - 1), 1);
        assert_eq!(BlockCounters::bucket_bound_us(0), Some(1));
        assert_eq!(BlockCounters::bucket_bound_us(3), Some(8));
        assert_eq!(BlockCounters::bucket_bound_us(LATENCY_BUCKETS - 1), None);
        // A batch of 3 µs is under 4 (bucket 2), one of 4 µs under 8 (bucket 3).
    }
}
