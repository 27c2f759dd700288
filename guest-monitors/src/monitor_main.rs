//! What the memory and storage monitors share: their common flags, how flags and the config
//! file resolve into settings, and the serve / heartbeat / wait / shutdown sequence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lego_fabric::{CapabilityPublicKey, ClusterKey, Handler, ServerConfig};
use lego_metrics::prometheus_client::registry::Registry;
use lego_metrics::MetricsServer;
use lego_monitor_client::proto::manager::MonitorKind;
use lego_report::error_chain;

use crate::agent::{Agent, AgentConfig, UsageFn};
use crate::config::{self, MonitorFileConfig};
use crate::daemon::{self, DaemonError};

/// Flags every monitor takes (flatten into the binary's own `Args`).
#[derive(Debug, clap::Args)]
pub struct MonitorFlags {
    /// TOML config file (flags override its keys; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7100 for memory, 127.0.0.1:7200 for storage].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address announced to the manager [default: the bound address].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Manager to register with and heartbeat to; several, comma-separated, when managers
    /// fail over through etcd (none: run standalone).
    #[arg(long, value_name = "ADDR")]
    pub manager: Option<String>,
    /// Cluster key file [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The managers' capability public key (64 hex digits, or a file holding them) that
    /// capabilities must be signed with [default: derived from the cluster key, as the
    /// manager's default signing key is].
    #[arg(long, value_name = "HEX|FILE")]
    pub capability_public_key: Option<String>,
    /// Heartbeat interval in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Worker threads for blocking requests [default: 4].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// After each request, busy-poll the connection's socket for up to this many µs before
    /// sleeping in read (trades CPU for a wake-up on a quick next request; at most 10000)
    /// [default: 0, never].
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 [default: none].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// Resolved settings every monitor needs.
pub struct MonitorSettings {
    /// Address to bind.
    pub listen: String,
    /// Address to announce, if given.
    pub advertise: Option<String>,
    /// Manager address, if any.
    pub manager: Option<String>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Worker threads.
    pub workers: usize,
    /// How long each connection's reader busy-polls its socket before sleeping.
    pub poll: Duration,
    /// Cluster key.
    pub key: ClusterKey,
    /// The managers' capability public key (`None`: derived from the cluster key).
    pub capability_key: Option<CapabilityPublicKey>,
    /// The incarnation to report (`None`: new with each process).
    pub incarnation: Option<u64>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<String>,
}

/// Loads the config file named by the flags and resolves the common settings (flags win).
pub fn resolve(
    flags: MonitorFlags,
    default_listen: &str,
) -> Result<(MonitorSettings, MonitorFileConfig), DaemonError> {
    let file: MonitorFileConfig = config::load(flags.config.as_deref())?;
    let key = ClusterKey::load(flags.key_file.or(file.key_file.clone()).as_deref())?;
    let capability_key = flags
        .capability_public_key
        .or(file.capability_public_key.clone())
        .map(|k| CapabilityPublicKey::from_hex_or_file(&k))
        .transpose()?;
    let poll_us = flags.poll_us.or(file.poll_us).unwrap_or(0);
    if poll_us > daemon::MAX_POLL_US {
        return Err(DaemonError::PollTooLong(poll_us));
    }
    let settings = MonitorSettings {
        listen: flags
            .listen
            .or(file.listen.clone())
            .unwrap_or_else(|| default_listen.into()),
        advertise: flags.advertise.or(file.advertise.clone()),
        manager: flags.manager.or(file.manager.clone()),
        heartbeat: Duration::from_millis(
            flags
                .heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(config::DEFAULT_HEARTBEAT_MS)
                .max(10),
        ),
        workers: flags.workers.or(file.workers).unwrap_or(4).max(1),
        poll: Duration::from_micros(poll_us),
        key,
        capability_key,
        incarnation: None,
        metrics: flags.metrics.or(file.metrics.clone()),
    };
    Ok((settings, file))
}

/// Serves `handler`, registers and heartbeats to the manager (if any) with `usage`, serves
/// `metrics` if the settings name an address, waits for SIGTERM/SIGINT and shuts down.
/// `serving` is called once the address is bound, with the address, the address announced to
/// the manager and the server's incarnation.
pub fn serve_until_signal(
    settings: MonitorSettings,
    kind: MonitorKind,
    handler: Arc<dyn Handler>,
    usage: UsageFn,
    metrics: Registry,
    serving: impl FnOnce(SocketAddr, &str, u64),
) -> Result<(), DaemonError> {
    let mut signals = daemon::shutdown_signals()?;
    let metrics_server = settings
        .metrics
        .as_deref()
        .map(|addr| MetricsServer::start(addr, metrics))
        .transpose()?;
    let server = daemon::serve(
        &settings.listen,
        settings.key.clone(),
        handler,
        ServerConfig {
            workers: settings.workers,
            spin: settings.poll,
            incarnation: settings.incarnation,
            capability_key: settings.capability_key,
            ..Default::default()
        },
    )?;
    let bound = server.local_addr();
    let advertise = advertise_addr(settings.advertise, bound)?;
    serving(bound, &advertise, server.incarnation());
    let agent = settings.manager.map(|manager| {
        Agent::start(
            AgentConfig {
                manager,
                kind,
                advertise,
                interval: settings.heartbeat,
                incarnation: Some(server.incarnation()),
            },
            settings.key,
            usage,
        )
    });
    let sig = daemon::wait_for_shutdown(&mut signals);
    tracing::info!(signal = sig, "shutting down");
    if let Some(a) = agent {
        a.stop();
    }
    server.shutdown();
    drop(metrics_server);
    Ok(())
}

/// The address the manager is told: the given one, else the bound one unless it is a wildcard.
fn advertise_addr(given: Option<String>, bound: SocketAddr) -> Result<String, DaemonError> {
    match given {
        Some(a) => Ok(a),
        None if bound.ip().is_unspecified() => Err(DaemonError::NeedsAdvertise(bound)),
        None => Ok(bound.to_string()),
    }
}

/// Runs a daemon's `run`, logging and printing its error as `NAME: error: ...`.
pub fn exit_code(name: &str, result: Result<(), DaemonError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e = error_chain(&e);
            tracing::error!("{e}");
            eprintln!("{name}: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_needs_an_advertised_address() {
        let any: SocketAddr = "0.0.0.0:7100".parse().unwrap();
        assert!(advertise_addr(None, any)
            .unwrap_err()
            .to_string()
            .contains("--advertise"));
        assert_eq!(
            advertise_addr(Some("10.0.2.2:7100".into()), any).unwrap(),
            "10.0.2.2:7100"
        );
        let lo: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        assert_eq!(advertise_addr(None, lo).unwrap(), "127.0.0.1:7100");
    }
}
