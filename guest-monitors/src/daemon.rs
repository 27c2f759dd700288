//! What every daemon needs: logging, a bound fabric server, and a clean stop on SIGTERM/SIGINT.
//! The cluster key is loaded by [`ClusterKey::load`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lego_fabric::{
    AuthError, ClusterKey, FrameProtection, Handler, Server, ServerConfig, ServerError,
    ServerHandle,
};

use crate::config::ConfigError;
use crate::manager::{ManagerError, StateError};
use crate::volume::VolumeError;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

pub use lego_fabric::server::MAX_POLL_US;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster key could not be loaded.
    #[error("cannot load the cluster key")]
    Key(#[from] AuthError),
    /// `LEGO_FABRIC_PROTECTION` names no frame protection.
    #[error("cannot choose the fabric's frame protection")]
    Protection(#[from] lego_fabric::SealError),
    /// The capability signing or public key could not be loaded.
    #[error("cannot load the capability key")]
    CapabilityKey(#[from] lego_fabric::CapabilityError),
    /// The server could not bind or start.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// Cause.
        source: ServerError,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signals(#[source] std::io::Error),
    /// A helper thread could not be started.
    #[error("cannot start the {name} thread")]
    Thread {
        /// The thread's job.
        name: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The server listens on a wildcard address and no address to announce was given.
    #[error(
        "listening on {0} needs --advertise ADDR: the manager must be told a reachable address"
    )]
    NeedsAdvertise(SocketAddr),
    /// The etcd store could not be used.
    #[error(transparent)]
    Etcd(#[from] crate::manager::etcd_store::EtcdError),
    /// The manager could not campaign for leadership.
    #[error("the manager's leader election failed")]
    Election(#[from] crate::manager::election::ElectionError),
    /// The leading manager lost its leadership and stopped serving.
    #[error("this manager lost its leadership ({0}) and stopped serving; restart it to stand by")]
    LeadershipLost(String),
    /// `--poll-us` (or `poll_us`) asks for a longer poll than a daemon allows.
    #[error("a poll of {0} µs is more than the {max} µs allowed", max = MAX_POLL_US)]
    PollTooLong(u64),
    /// A config key was given to the wrong daemon.
    #[error("the key '{key}' belongs to the {owner}, not the {daemon}")]
    ForeignKey {
        /// The key.
        key: &'static str,
        /// The daemon that takes it.
        owner: &'static str,
        /// The daemon that was given it.
        daemon: &'static str,
    },
    /// The memory monitor's capacity cannot hold a page.
    #[error("the capacity {0} is smaller than one 4096-byte page")]
    CapacityTooSmall(u64),
    /// The manager's state folder cannot be used.
    #[error("the state folder is not usable")]
    StateDir(#[source] StateError),
    /// The manager could not load its state.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Metrics(#[from] lego_metrics::MetricsError),
    /// The storage monitor's data folder cannot be used.
    #[error("the data folder is not usable")]
    DataDir(#[source] VolumeError),
    /// The storage monitor could not read its volumes.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The free space of the data folder could not be measured.
    #[error("cannot measure free space in '{}'", path.display())]
    FreeSpace {
        /// The data folder.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Binds a fabric server and starts serving.
pub fn serve(
    addr: &str,
    key: ClusterKey,
    handler: Arc<dyn Handler>,
    mut config: ServerConfig,
) -> Result<ServerHandle, DaemonError> {
    // The default config already took LEGO_FABRIC_PROTECTION; a bad value is an error here.
    config.protection = FrameProtection::from_env()?;
    tracing::info!(%addr, protection = %config.protection, "fabric frames protected");
    let server =
        Server::bind(addr, key, handler, config).map_err(|source| DaemonError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    Ok(server.spawn())
}

/// Installs SIGTERM/SIGINT handlers; call before starting threads so no signal is lost.
pub fn shutdown_signals() -> Result<Signals, DaemonError> {
    Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)
}

/// Blocks until SIGTERM or SIGINT arrives; returns the signal's name.
pub fn wait_for_shutdown(signals: &mut Signals) -> &'static str {
    match signals.forever().next() {
        Some(SIGINT) => "SIGINT",
        Some(SIGTERM) => "SIGTERM",
        _ => "signal",
    }
}
