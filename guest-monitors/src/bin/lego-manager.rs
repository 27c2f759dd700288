//! `lego-manager`: cluster membership, monitor liveness, placement of vRegions and volumes, and
//! capabilities (LegoOS GMM/GSM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lego_fabric::{ClusterKey, ServerConfig};
use lego_metrics::MetricsServer;
use lego_monitor_client::size::ByteSize;
use lego_monitors::config::{self, ManagerFileConfig};
use lego_monitors::daemon::{self, DaemonError};
use lego_monitors::manager::service::ManagerService;
use lego_monitors::manager::{FileStateStore, Manager, ManagerSettings, VnodeLeases};
use lego_monitors::metrics;

/// Place vNodes' remote memory and volumes on monitors and watch the monitors' heartbeats.
#[derive(Debug, Parser)]
#[command(name = "lego-manager", version)]
struct Args {
    /// TOML config file (flags override its keys; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7300].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Folder for the durable state [default: /var/lib/lego/manager].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// vRegion size for new vNodes, a multiple of 4K [default: 1G].
    #[arg(long, value_name = "SIZE")]
    region_size: Option<ByteSize>,
    /// Expected heartbeat interval of monitors in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Heartbeat intervals a monitor may miss before it is declared dead [default: 3].
    #[arg(long, value_name = "N")]
    missed_heartbeats: Option<u32>,
    /// Default lifetime of issued capabilities in seconds [default: 86400].
    #[arg(long, value_name = "SECS")]
    capability_ttl_secs: Option<u64>,
    /// Copies of each vRegion on distinct memory monitors [default: 2 when two or more
    /// memory monitors are alive, else 1 with a warning].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    copies: Option<u32>,
    /// Rate limit in MiB/s of repairing a vRegion: after a memory monitor holding one of its
    /// copies dies, the vNode's backend copies the region's pages from a surviving copy to a
    /// new monitor at most this fast, so the repair does not starve the vNode's own I/O;
    /// 0 for no limit [default: 64].
    #[arg(long, value_name = "MIB_S")]
    repair_rate_mib: Option<u32>,
    /// Seconds a vNode's lease lasts: a vNode whose backends have not renewed it for longer
    /// (its compute host is gone) has its remote memory placements released; long enough
    /// for a backend to restart [default: 120].
    #[arg(long, value_name = "SECS")]
    vnode_lease_secs: Option<u64>,
    /// Cluster key file [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9101 [default: none].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn run(args: Args) -> Result<(), DaemonError> {
    let file: ManagerFileConfig = config::load(args.config.as_deref())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| config::DEFAULT_MANAGER_LISTEN.into());
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lego/manager"));
    let settings = ManagerSettings {
        region_size: args
            .region_size
            .or(file.region_size)
            .map(ByteSize::bytes)
            .unwrap_or(1 << 30),
        heartbeat_interval: Duration::from_millis(
            args.heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(config::DEFAULT_HEARTBEAT_MS)
                .max(10),
        ),
        missed_heartbeats: args
            .missed_heartbeats
            .or(file.missed_heartbeats)
            .unwrap_or(3)
            .max(1),
        capability_ttl: Duration::from_secs(
            args.capability_ttl_secs
                .or(file.capability_ttl_secs)
                .unwrap_or(86400)
                .max(1),
        ),
        copies: args.copies.or(file.copies),
        repair_rate_mib: args
            .repair_rate_mib
            .or(file.repair_rate_mib)
            .unwrap_or(lego_monitors::manager::core::DEFAULT_REPAIR_RATE_MIB),
    };
    let lease = args
        .vnode_lease_secs
        .or(file.vnode_lease_secs)
        .map_or(lego_monitors::manager::lease::DEFAULT_LEASE, |s| {
            Duration::from_secs(s.max(1))
        });
    let leases = Arc::new(VnodeLeases::new(lease));
    let key = ClusterKey::load(args.key_file.or(file.key_file).as_deref())?;
    let mut signals = daemon::shutdown_signals()?;

    let store = FileStateStore::open(&state_dir).map_err(DaemonError::StateDir)?;
    let interval = settings.heartbeat_interval;
    let manager = Arc::new(Manager::new(settings, key.clone(), Box::new(store))?);
    let service = ManagerService::new(manager.clone()).with_leases(leases.clone());
    let metrics = args
        .metrics
        .or(file.metrics)
        .map(|addr| {
            let registry = metrics::manager_registry(manager.clone(), service.running());
            MetricsServer::start(&addr, registry)
        })
        .transpose()?;
    let server = daemon::serve(&listen, key, Arc::new(service), ServerConfig::default())?;
    tracing::info!(listen = %server.local_addr(), state_dir = %state_dir.display(),
        region_size = %ByteSize(manager.settings().region_size),
        vnode_lease_secs = lease.as_secs(), "manager serving");

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let m = manager.clone();
    let watcher = std::thread::Builder::new()
        .name("liveness".into())
        .spawn(move || loop {
            m.check_liveness();
            leases.reclaim(&m);
            match stop_rx.recv_timeout(interval / 2) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        })
        .map_err(|source| DaemonError::Thread {
            name: "liveness",
            source,
        })?;
    let sig = daemon::wait_for_shutdown(&mut signals);
    tracing::info!(signal = sig, "shutting down");
    drop(stop_tx);
    let _ = watcher.join();
    server.shutdown();
    drop(metrics);
    tracing::info!("manager stopped");
    Ok(())
}

fn main() -> ExitCode {
    lego_monitor_client::logging::init();
    lego_monitors::monitor_main::exit_code("lego-manager", run(Args::parse()))
}
