//! `lego-memory-monitor`: holds 4 KiB pages of many vNodes' remote memory (LegoOS mComponent).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lego_monitor_client::proto::manager::MonitorKind;
use lego_monitor_client::size::ByteSize;
use lego_monitors::bounds::{ManagerSource, PlacementBounds};
use lego_monitors::config;
use lego_monitors::daemon::DaemonError;
use lego_monitors::memory_service::MemoryService;
use lego_monitors::metrics::{self, UsageProbe};
use lego_monitors::monitor_main::{self, MonitorFlags};
use lego_monitors::pagestore::PageStore;

/// Serve vNodes' remote memory pages over the LegoVMM fabric.
#[derive(Debug, Parser)]
#[command(name = "lego-memory-monitor", version)]
struct Args {
    #[command(flatten)]
    common: MonitorFlags,
    /// Most page data to hold, e.g. 4G [default: 4G].
    #[arg(long, value_name = "SIZE")]
    capacity: Option<ByteSize>,
}

fn run(args: Args) -> Result<(), DaemonError> {
    let (settings, file) = monitor_main::resolve(args.common, config::DEFAULT_MEMORY_LISTEN)?;
    if file.data_dir.is_some() {
        return Err(DaemonError::ForeignKey {
            key: "data_dir",
            owner: "storage monitor",
            daemon: "memory monitor",
        });
    }
    let capacity = args
        .capacity
        .or(file.capacity)
        .map(ByteSize::bytes)
        .unwrap_or(config::DEFAULT_MEMORY_CAPACITY);
    if capacity < 4096 {
        return Err(DaemonError::CapacityTooSmall(capacity));
    }
    let store = Arc::new(PageStore::new(capacity));
    let usage_store = store.clone();
    let usage: UsageProbe =
        Arc::new(move || (usage_store.capacity_bytes(), usage_store.used_bytes()));
    let mut registry = metrics::monitor_registry("memory", usage.clone());
    metrics::register_page_store(&mut registry, store.clone());
    // With a manager, a vNode is served only the pages of the vRegions placed here.
    let bounds = settings.manager.as_ref().map(|m| {
        Arc::new(PlacementBounds::new(Box::new(ManagerSource::new(
            m.clone(),
            settings.key.clone(),
        ))))
    });
    let service = match &bounds {
        Some(b) => MemoryService::with_bounds(store.clone(), b.clone()),
        None => {
            tracing::warn!("no manager: any page of a vNode with a capability is served (placement bounds need the manager)");
            MemoryService::new(store.clone())
        }
    };
    monitor_main::serve_until_signal(
        settings,
        MonitorKind::Memory,
        Arc::new(service),
        Box::new(move || usage()),
        registry,
        |bound, advertised, incarnation| {
            if let Some(b) = &bounds {
                b.set_address(advertised);
            }
            tracing::info!(listen = %bound, capacity = %ByteSize(capacity), incarnation = format_args!("{incarnation:#018x}"), "memory monitor serving (empty: a new incarnation)")
        },
    )?;
    tracing::info!(pages = store.stats().pages_stored, "memory monitor stopped");
    Ok(())
}

fn main() -> ExitCode {
    lego_monitor_client::logging::init();
    monitor_main::exit_code("lego-memory-monitor", run(Args::parse()))
}
