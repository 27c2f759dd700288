//! `lego-vhost-blk`: the vhost-user-blk backend daemon. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use lego_vhost_blk::cli::{Cli, CliError};
use lego_vhost_blk::open::{open_store, OpenError};
use lego_vhost_blk::server::{Server, ServerError};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the signal thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] lego_metrics::MetricsError),
}

fn run(cli: Cli) -> Result<(), MainError> {
    let spec = cli.store_spec()?;
    let queues = cli.queue_settings()?;
    // Installed before any thread starts, so no signal is lost to a default handler.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(MainError::Signals)?;
    let store = open_store(&spec, cli.key_file.as_deref())?;
    let server = Server::bind(&cli.socket, store, queues)?;
    let _metrics = cli
        .metrics
        .as_deref()
        .map(|addr| {
            lego_metrics::MetricsServer::start(
                addr,
                lego_vhost_blk::metrics::registry(server.counters()),
            )
        })
        .transpose()?;
    let stop = server.stop_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Every later signal is taken here too (a second SIGTERM, e.g. the parent-death
            // signal legovmm sets and its own SIGTERM, must not end a release under way).
            let mut stopping = false;
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if stopping {
                    tracing::info!("{name} received again; already stopping");
                    continue;
                }
                tracing::info!("{name} received, stopping");
                stopping = true;
                stop.stop();
            }
        })
        .map_err(MainError::Thread)?;
    server.run()?;
    Ok(())
}

fn main() -> ExitCode {
    lego_monitor_client::logging::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lego-vhost-blk: {}", lego_report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
