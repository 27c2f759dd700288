//! What the monitors export to Prometheus: capacity and use (both monitors), and the memory
//! monitor's pages per vNode and request counters, read from the page store at each scrape.

use std::sync::Arc;

use lego_metrics::collect::{counter, gauge, gauge_family};
use lego_metrics::prometheus_client::collector::Collector;
use lego_metrics::prometheus_client::encoding::DescriptorEncoder;
use lego_metrics::prometheus_client::registry::Registry;

use lego_monitor_client::proto::manager::MonitorStatus;

use crate::manager::running::RunningVnodes;
use crate::manager::Manager;
use crate::pagestore::PageStore;

/// Capacity and use in bytes, as a monitor reports them to the manager.
pub type UsageProbe = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// A registry with a monitor's capacity and use (`lego_monitor_capacity_bytes`,
/// `lego_monitor_used_bytes`), labelled by kind (`memory`, `storage`).
pub fn monitor_registry(kind: &'static str, usage: UsageProbe) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(UsageCollector { kind, usage }));
    registry
}

struct UsageCollector {
    kind: &'static str,
    usage: UsageProbe,
}

impl std::fmt::Debug for UsageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageCollector")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Collector for UsageCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (capacity, used) = (self.usage)();
        let kind = self.kind.to_string();
        gauge_family(
            &mut e,
            "lego_monitor_capacity_bytes",
            "Capacity the monitor offers.",
            [(vec![("kind", kind.clone())], capacity as i64)],
        )?;
        gauge_family(
            &mut e,
            "lego_monitor_used_bytes",
            "Capacity in use.",
            [(vec![("kind", kind)], used as i64)],
        )
    }
}

/// Adds the memory monitor's page-store metrics to `registry`.
pub fn register_page_store(registry: &mut Registry, store: Arc<PageStore>) {
    registry.register_collector(Box::new(PageStoreCollector(store)));
}

struct PageStoreCollector(Arc<PageStore>);

impl std::fmt::Debug for PageStoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageStoreCollector")
    }
}

impl Collector for PageStoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        gauge(
            &mut e,
            "lego_memory_pages_stored",
            "Pages held (all vNodes; zero pages are not stored).",
            s.pages_stored as i64,
        )?;
        gauge(
            &mut e,
            "lego_memory_arena_mapped_bytes",
            "Address space mapped for page frames (freed frames are kept for reuse).",
            s.arena_mapped_bytes as i64,
        )?;
        gauge_family(
            &mut e,
            "lego_memory_vnode_pages",
            "Pages held per vNode.",
            s.per_vnode
                .iter()
                .map(|&(vnode, pages)| (vec![("vnode", vnode.to_string())], pages as i64)),
        )?;
        for (name, help, value) in [
            (
                "lego_memory_read_requests",
                "Read requests served.",
                s.read_ops,
            ),
            (
                "lego_memory_write_requests",
                "Write requests served.",
                s.write_ops,
            ),
            (
                "lego_memory_trim_requests",
                "Trim requests served.",
                s.trim_ops,
            ),
            ("lego_memory_pages_read", "Pages read.", s.pages_read),
            (
                "lego_memory_pages_written",
                "Pages written (zero pages included).",
                s.pages_written,
            ),
            (
                "lego_memory_zero_pages_written",
                "All-zero pages written (kept as holes).",
                s.zero_pages_written,
            ),
            (
                "lego_memory_nospace_errors",
                "Writes refused for lack of capacity.",
                s.nospace_errors,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        Ok(())
    }
}

/// A registry with the manager's view of the cluster: monitors by kind and state, each
/// monitor's capacity, use, reservations and heartbeat age, vNodes, and vRegions by health.
pub fn manager_registry(manager: Arc<Manager>, running: Arc<RunningVnodes>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ManagerCollector(manager, running)));
    registry
}

struct ManagerCollector(Arc<Manager>, Arc<RunningVnodes>);

impl std::fmt::Debug for ManagerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagerCollector")
    }
}

impl Collector for ManagerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let mut by_state: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for m in &status.monitors {
            *by_state
                .entry((m.kind.to_string(), m.state.to_string()))
                .or_default() += 1;
        }
        gauge_family(
            &mut e,
            "lego_manager_monitors",
            "Monitors registered, by kind and state.",
            by_state
                .into_iter()
                .map(|((kind, state), n)| (vec![("kind", kind), ("state", state)], n)),
        )?;
        type Field = fn(&MonitorStatus) -> u64;
        let fields: [(&str, &str, Field); 4] = [
            (
                "lego_manager_monitor_capacity_bytes",
                "Capacity a monitor offers, as last reported.",
                |m| m.capacity_bytes,
            ),
            (
                "lego_manager_monitor_used_bytes",
                "Bytes in use on a monitor, as last reported.",
                |m| m.used_bytes,
            ),
            (
                "lego_manager_monitor_reserved_bytes",
                "Bytes the manager placed on a monitor.",
                |m| m.reserved_bytes,
            ),
            (
                "lego_manager_monitor_heartbeat_age_ms",
                "Milliseconds since a monitor's last heartbeat.",
                |m| m.last_heartbeat_ms,
            ),
        ];
        for (name, help, field) in fields {
            let samples = status.monitors.iter().map(|m| {
                let labels = vec![("monitor", m.addr.clone()), ("kind", m.kind.to_string())];
                (labels, field(m) as i64)
            });
            gauge_family(&mut e, name, help, samples)?;
        }
        gauge(
            &mut e,
            "lego_manager_vnodes",
            "vNodes with memory or volumes placed.",
            status.vnodes.len() as i64,
        )?;
        let mut by_host: std::collections::BTreeMap<String, i64> = Default::default();
        for r in self.1.list() {
            *by_host.entry(r.up.host).or_default() += 1;
        }
        gauge_family(
            &mut e,
            "lego_manager_running_vnodes",
            "vNodes their legovmm announces as running, by compute host.",
            by_host
                .into_iter()
                .map(|(host, n)| (vec![("host", host)], n)),
        )?;
        let mut by_health: std::collections::BTreeMap<String, i64> = Default::default();
        for v in &status.vnodes {
            for r in &v.memory.regions {
                *by_health
                    .entry(r.health.unwrap_or_default().to_string())
                    .or_default() += 1;
            }
        }
        gauge_family(
            &mut e,
            "lego_manager_regions",
            "vRegions placed, by health.",
            by_health
                .into_iter()
                .map(|(health, n)| (vec![("health", health)], n)),
        )
    }
}
