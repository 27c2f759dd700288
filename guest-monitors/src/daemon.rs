//! What every daemon needs: logging, a bound fabric server, and a clean stop on SIGTERM/SIGINT.
//! The cluster key is loaded by [`ClusterKey::load`].

use std::sync::Arc;

use lego_fabric::{
    AuthError, ClusterKey, Handler, Server, ServerConfig, ServerError, ServerHandle,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Errors from daemon start-up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The cluster key could not be loaded.
    #[error("cannot load the cluster key: {0}")]
    Key(#[from] AuthError),
    /// The server could not bind or start.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Cause.
        source: ServerError,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds a fabric server and starts serving.
pub fn serve(
    addr: &str,
    key: ClusterKey,
    handler: Arc<dyn Handler>,
    config: ServerConfig,
) -> Result<ServerHandle, DaemonError> {
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
