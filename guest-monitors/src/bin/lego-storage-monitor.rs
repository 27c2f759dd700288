//! `lego-storage-monitor`: holds vNodes' volumes durably (LegoOS sComponent).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lego_fabric::ServerConfig;
use lego_monitors::agent::{Agent, AgentConfig};
use lego_monitors::config::{self, MonitorFileConfig};
use lego_monitors::daemon;
use lego_monitors::proto::manager::MonitorKind;
use lego_monitors::size::ByteSize;
use lego_monitors::storage_service::StorageService;
use lego_monitors::volume::{filesystem_capacity, VolumeStore};

/// Serve vNodes' volumes over the LegoVMM fabric.
#[derive(Debug, Parser)]
#[command(name = "lego-storage-monitor", version)]
struct Args {
    /// TOML config file (flags override its keys; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7200].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address announced to the manager [default: the bound address].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Folder holding the volume files [default: /var/lib/lego/storage].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Capacity offered to the manager, e.g. 100G [default: volumes + free space of the folder].
    #[arg(long, value_name = "SIZE")]
    capacity: Option<ByteSize>,
    /// Manager to register with and heartbeat to (none: run standalone).
    #[arg(long, value_name = "ADDR")]
    manager: Option<String>,
    /// Cluster key file [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Heartbeat interval in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Worker threads for disk I/O [default: 4].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

fn run(args: Args) -> Result<(), String> {
    let file: MonitorFileConfig =
        config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| config::DEFAULT_STORAGE_LISTEN.into());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lego/storage"));
    let manager = args.manager.or(file.manager);
    let heartbeat = Duration::from_millis(
        args.heartbeat_ms
            .or(file.heartbeat_ms)
            .unwrap_or(config::DEFAULT_HEARTBEAT_MS)
            .max(10),
    );
    let workers = args.workers.or(file.workers).unwrap_or(4).max(1);
    let key =
        daemon::load_key(args.key_file.or(file.key_file).as_deref()).map_err(|e| e.to_string())?;
    let mut signals = daemon::shutdown_signals().map_err(|e| e.to_string())?;

    let store = Arc::new(
        VolumeStore::open(&data_dir).map_err(|e| format!("the data folder is not usable: {e}"))?,
    );
    let (provisioned, _) = store.usage().map_err(|e| e.to_string())?;
    let capacity = match args.capacity.or(file.capacity) {
        Some(c) => c.bytes(),
        None => {
            let (_, avail) = filesystem_capacity(&data_dir).map_err(|e| {
                format!("cannot measure free space in '{}': {e}", data_dir.display())
            })?;
            provisioned + avail
        }
    };
    let service = Arc::new(StorageService::new(store.clone(), capacity));
    let server = daemon::serve(
        &listen,
        key.clone(),
        service.clone(),
        ServerConfig {
            workers,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let bound = server.local_addr();
    let advertise = match args.advertise.or(file.advertise) {
        Some(a) => a,
        None if bound.ip().is_unspecified() => {
            return Err(format!("listening on {bound} needs --advertise ADDR: the manager must be told a reachable address"))
        }
        None => bound.to_string(),
    };
    tracing::info!(listen = %bound, data_dir = %data_dir.display(), capacity = %ByteSize(capacity), "storage monitor serving");

    let agent = manager.map(|m| {
        let s = service.clone();
        Agent::start(
            AgentConfig {
                manager: m,
                kind: MonitorKind::Storage,
                advertise,
                interval: heartbeat,
            },
            key,
            Box::new(move || {
                (
                    capacity,
                    s.stats().map(|st| st.provisioned_bytes).unwrap_or(0),
                )
            }),
        )
    });
    let sig = daemon::wait_for_shutdown(&mut signals);
    tracing::info!(signal = sig, "shutting down");
    if let Some(a) = agent {
        a.stop();
    }
    server.shutdown();
    tracing::info!("storage monitor stopped");
    Ok(())
}

fn main() -> ExitCode {
    daemon::init_logging();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("lego-storage-monitor: error: {e}");
            ExitCode::FAILURE
        }
    }
}
