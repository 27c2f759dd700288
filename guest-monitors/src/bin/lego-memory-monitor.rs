//! `lego-memory-monitor`: holds 4 KiB pages of many vNodes' remote memory (LegoOS mComponent).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lego_fabric::ServerConfig;
use lego_monitors::agent::{Agent, AgentConfig};
use lego_monitors::config::{self, MonitorFileConfig};
use lego_monitors::daemon;
use lego_monitors::memory_service::MemoryService;
use lego_monitors::pagestore::PageStore;
use lego_monitors::proto::manager::MonitorKind;
use lego_monitors::size::ByteSize;

/// Serve vNodes' remote memory pages over the LegoVMM fabric.
#[derive(Debug, Parser)]
#[command(name = "lego-memory-monitor", version)]
struct Args {
    /// TOML config file (flags override its keys; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7100].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address announced to the manager [default: the bound address].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Most page data to hold, e.g. 4G [default: 4G].
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
    /// Worker threads for blocking requests [default: 4].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

fn run(args: Args) -> Result<(), String> {
    let file: MonitorFileConfig =
        config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if file.data_dir.is_some() {
        return Err(
            "the key 'data_dir' belongs to the storage monitor, not the memory monitor".into(),
        );
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| config::DEFAULT_MEMORY_LISTEN.into());
    let capacity = args
        .capacity
        .or(file.capacity)
        .map(ByteSize::bytes)
        .unwrap_or(config::DEFAULT_MEMORY_CAPACITY);
    if capacity < 4096 {
        return Err(format!(
            "the capacity {capacity} is smaller than one 4096-byte page"
        ));
    }
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

    let store = Arc::new(PageStore::new(capacity));
    let handler = Arc::new(MemoryService::new(store.clone()));
    let server = daemon::serve(
        &listen,
        key.clone(),
        handler,
        ServerConfig {
            workers,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let bound = server.local_addr();
    let advertise = advertise_addr(args.advertise.or(file.advertise), bound)?;
    tracing::info!(listen = %bound, capacity = %ByteSize(capacity), "memory monitor serving");

    let agent = manager.map(|m| {
        let s = store.clone();
        Agent::start(
            AgentConfig {
                manager: m,
                kind: MonitorKind::Memory,
                advertise: advertise.clone(),
                interval: heartbeat,
            },
            key,
            Box::new(move || (s.capacity_bytes(), s.used_bytes())),
        )
    });
    let sig = daemon::wait_for_shutdown(&mut signals);
    tracing::info!(signal = sig, "shutting down");
    if let Some(a) = agent {
        a.stop();
    }
    server.shutdown();
    let st = store.stats();
    tracing::info!(pages = st.pages_stored, "memory monitor stopped");
    Ok(())
}

fn advertise_addr(given: Option<String>, bound: std::net::SocketAddr) -> Result<String, String> {
    match given {
        Some(a) => Ok(a),
        None if bound.ip().is_unspecified() => Err(format!(
            "listening on {bound} needs --advertise ADDR: the manager must be told a reachable address"
        )),
        None => Ok(bound.to_string()),
    }
}

fn main() -> ExitCode {
    daemon::init_logging();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("lego-memory-monitor: error: {e}");
            ExitCode::FAILURE
        }
    }
}
