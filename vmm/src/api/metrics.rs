//! `GET /metrics` on the API socket: the vNode's figures in the Prometheus text format —
//! state, memory, each in-process device's requests, bytes and batch latency (labelled by
//! device id), and the pager's faults, evictions, resident pages and fetch latency.

use std::sync::atomic::{AtomicU64, Ordering};

use lego_devices::virtio::block::request::counters::BlockCounters;
use lego_metrics::collect::{counter_family, gauge, histogram};
use lego_metrics::prometheus_client::collector::Collector;
use lego_metrics::prometheus_client::encoding::{prometheus_text, DescriptorEncoder};
use lego_metrics::prometheus_client::registry::Registry;

use super::control::{LiveVm, VmControl};
use super::model::VmState;
use crate::paging::table::PAGE;

/// The vNode's figures as Prometheus text (read now).
pub fn encode(vm: &LiveVm) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(VmCollector(vm.clone())));
    let mut body = String::new();
    if prometheus_text::encode(&mut body, &registry).is_err() {
        tracing::warn!("the vNode's metrics could not be encoded");
    }
    body
}

struct VmCollector(LiveVm);

impl std::fmt::Debug for VmCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VmCollector")
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for VmCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vm = &self.0;
        let info = vm.info();
        gauge(
            &mut e,
            "lego_vm_paused",
            "1 while an operator has the vNode paused.",
            i64::from(info.state == VmState::Paused),
        )?;
        gauge(
            &mut e,
            "lego_vm_vcpus",
            "vCPUs.",
            i64::from(info.config.vcpus),
        )?;
        gauge(
            &mut e,
            "lego_vm_memory_bytes",
            "Guest RAM the guest sees.",
            info.memory.total_bytes as i64,
        )?;
        let list = vm.inner.device_list();
        let devices: Vec<(&str, &BlockCounters)> = list
            .iter()
            .filter_map(|d| Some((d.info.id.as_str(), d.counters.as_deref()?)))
            .collect();
        let family = |pick: fn(&BlockCounters) -> &AtomicU64| {
            devices
                .iter()
                .map(move |(id, c)| (vec![("device", id.to_string())], load(pick(c))))
                .collect::<Vec<_>>()
        };
        counter_family(
            &mut e,
            "lego_blk_requests",
            "Requests completed by a disk legovmm serves.",
            family(|c| &c.requests),
        )?;
        counter_family(
            &mut e,
            "lego_blk_errors",
            "Requests completed with an error status.",
            family(|c| &c.errors),
        )?;
        counter_family(
            &mut e,
            "lego_blk_read_bytes",
            "Data bytes written into guest buffers (reads).",
            family(|c| &c.bytes_to_guest),
        )?;
        counter_family(
            &mut e,
            "lego_blk_written_bytes",
            "Data bytes taken from guest buffers (writes).",
            family(|c| &c.bytes_from_guest),
        )?;
        if let Some(pager) = &vm.inner.pager {
            encode_pager(&mut e, pager)?;
        }
        Ok(())
    }
}

fn encode_pager(
    e: &mut DescriptorEncoder,
    pager: &crate::paging::PagerView,
) -> Result<(), std::fmt::Error> {
    let s = pager.stats();
    let (resident, remote) = pager.counts();
    let page = PAGE as i64;
    gauge(
        e,
        "lego_paging_resident_bytes",
        "Guest RAM resident on this host.",
        resident as i64 * page,
    )?;
    gauge(
        e,
        "lego_paging_remote_bytes",
        "Guest RAM whose only copy is on the memory monitors.",
        remote as i64 * page,
    )?;
    gauge(
        e,
        "lego_paging_limit_bytes",
        "Guest RAM that may be resident (--local-memory).",
        pager.limit_pages() as i64 * page,
    )?;
    counter_family(
        e,
        "lego_paging_faults",
        "Faults on guest RAM served, by how.",
        [
            ("zero", &s.zero_faults),
            ("fetch", &s.fetch_faults),
            ("buffer", &s.buffer_faults),
            ("woken", &s.woken_faults),
        ]
        .map(|(how, c)| (vec![("served_by", how.to_string())], load(c))),
    )?;
    counter_family(
        e,
        "lego_paging_evicted_pages",
        "Pages evicted from guest RAM, by what the eviction had to write.",
        [
            ("clean", &s.evicted_clean),
            ("zero", &s.evicted_zero),
            ("dirty", &s.evicted_dirty),
        ]
        .map(|(v, c)| (vec![("verdict", v.to_string())], load(c))),
    )?;
    counter_family(
        e,
        "lego_paging_fetched_pages",
        "Pages fetched from the memory monitors (faulting and prefetched).",
        [(vec![], load(&s.fetched_pages))],
    )?;
    counter_family(
        e,
        "lego_paging_pauses",
        "Eviction rounds (each pauses the vCPUs once).",
        [(vec![], load(&s.pauses))],
    )?;
    let buckets = s.fetch_buckets();
    let sum: f64 = buckets
        .iter()
        .filter(|(b, _)| b.is_finite())
        .map(|&(b, n)| b * n as f64)
        .sum();
    histogram(
        e,
        "lego_paging_fetch_latency_seconds",
        "Time to fetch a fault's pages from the memory monitors (the sum is an upper bound: \
         each fetch counts as its bucket's edge).",
        sum,
        &buckets,
    )?;
    Ok(())
}
