//! `lego-storage-monitor`: holds vNodes' volumes durably (LegoOS sComponent).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lego_monitor_client::proto::manager::MonitorKind;
use lego_monitor_client::size::ByteSize;
use lego_monitors::bounds::{ManagerSource, VolumeBounds};
use lego_monitors::config;
use lego_monitors::daemon::DaemonError;
use lego_monitors::metrics::{self, UsageProbe};
use lego_monitors::monitor_main::{self, MonitorFlags};
use lego_monitors::storage_service::StorageService;
use lego_monitors::volume::{filesystem_capacity, VolumeStore};

/// Serve vNodes' volumes over the LegoVMM fabric.
#[derive(Debug, Parser)]
#[command(name = "lego-storage-monitor", version)]
struct Args {
    #[command(flatten)]
    common: MonitorFlags,
    /// Folder holding the volume files [default: /var/lib/lego/storage].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Capacity offered to the manager, e.g. 100G [default: volumes + free space of the folder].
    #[arg(long, value_name = "SIZE")]
    capacity: Option<ByteSize>,
}

fn run(args: Args) -> Result<(), DaemonError> {
    let (mut settings, file) = monitor_main::resolve(args.common, config::DEFAULT_STORAGE_LISTEN)?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lego/storage"));
    let store = Arc::new(VolumeStore::open(&data_dir).map_err(DaemonError::DataDir)?);
    settings.incarnation = lego_monitors::storage_service::storage_incarnation(&data_dir);
    let (provisioned, _) = store.usage()?;
    let capacity = match args.capacity.or(file.capacity) {
        Some(c) => c.bytes(),
        None => {
            let (_, avail) =
                filesystem_capacity(&data_dir).map_err(|source| DaemonError::FreeSpace {
                    path: data_dir.clone(),
                    source,
                })?;
            provisioned + avail
        }
    };
    // With a manager, a volume is created only as the manager placed it.
    let bounds = settings.manager.as_ref().map(|m| {
        Arc::new(VolumeBounds::new(Box::new(ManagerSource::new(
            m.clone(),
            settings.key.clone(),
        ))))
    });
    let mut service = StorageService::new(store, capacity);
    if let Some(b) = &bounds {
        service = service.with_bounds(b.clone());
    }
    let service = Arc::new(service);
    let usage_service = service.clone();
    let usage: UsageProbe = Arc::new(move || {
        let used = usage_service
            .stats()
            .map(|st| st.provisioned_bytes)
            .unwrap_or(0);
        (capacity, used)
    });
    let registry = metrics::monitor_registry("storage", usage.clone());
    monitor_main::serve_until_signal(
        settings,
        MonitorKind::Storage,
        service,
        Box::new(move || usage()),
        registry,
        |bound, advertised, incarnation| {
            if let Some(b) = &bounds {
                b.set_address(advertised);
            }
            tracing::info!(listen = %bound, incarnation = format_args!("{incarnation:#018x}"), data_dir = %data_dir.display(), capacity = %ByteSize(capacity), "storage monitor serving")
        },
    )?;
    tracing::info!("storage monitor stopped");
    Ok(())
}

fn main() -> ExitCode {
    lego_monitor_client::logging::init();
    monitor_main::exit_code("lego-storage-monitor", run(Args::parse()))
}
