//! The backend's Prometheus metrics: the device's request counters (requests, errors, bytes
//! each way, batch latency as a histogram), read at each scrape.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lego_devices::virtio::block::request::counters::{BlockCounters, LATENCY_BUCKETS};
use lego_metrics::collect::{counter, histogram};
use lego_metrics::prometheus_client::collector::Collector;
use lego_metrics::prometheus_client::encoding::DescriptorEncoder;
use lego_metrics::prometheus_client::registry::Registry;

/// A registry exporting `counters` as `lego_blk_*`.
pub fn registry(counters: Arc<BlockCounters>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BlockCollector(counters)));
    registry
}

#[derive(Debug)]
struct BlockCollector(Arc<BlockCounters>);

impl Collector for BlockCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "lego_blk_requests",
                "Requests completed.",
                load(&c.requests),
            ),
            (
                "lego_blk_errors",
                "Requests completed with an error status.",
                load(&c.errors),
            ),
            (
                "lego_blk_read_bytes",
                "Data bytes written into guest buffers (reads).",
                load(&c.bytes_to_guest),
            ),
            (
                "lego_blk_written_bytes",
                "Data bytes taken from guest buffers (writes, discard segments).",
                load(&c.bytes_from_guest),
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
            .map(|i| {
                let bound =
                    BlockCounters::bucket_bound_us(i).map_or(f64::INFINITY, |us| us as f64 / 1e6);
                (bound, load(&c.batch_latency[i]))
            })
            .collect();
        histogram(
            &mut e,
            "lego_blk_batch_latency_seconds",
            "Time to serve a batch of requests taken from a queue together.",
            load(&c.batch_latency_sum_us) as f64 / 1e6,
            &buckets,
        )
    }
}
