//! The metrics endpoint: `GET /metrics` answered with a registry in the Prometheus text
//! format, from one thread; anything else gets a short error in plain text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};

/// The `Content-Type` of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot serve metrics on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why (tiny_http's error, as text).
        reason: String,
    },
    /// The address bound is not an IP address.
    #[error("the metrics endpoint on {0} is not bound to an IP address")]
    NotIp(String),
    /// The serving thread could not be started.
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// A running metrics endpoint; dropping it stops its thread (tiny_http closes the listening
/// socket from its accept thread just after).
pub struct MetricsServer {
    addr: SocketAddr,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (e.g. `127.0.0.1:9100`; port 0 picks a free one) and serves `registry`.
    pub fn start(addr: &str, registry: Registry) -> Result<Self, MetricsError> {
        let server = Server::http(addr).map_err(|e| MetricsError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| MetricsError::NotIp(addr.to_string()))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &registry))
            .map_err(MetricsError::Thread)?;
        tracing::info!(addr = %bound, "serving metrics at http://{bound}/metrics");
        Ok(Self {
            addr: bound,
            server,
            thread: Some(thread),
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers requests until the server is unblocked.
fn serve(server: &Server, registry: &Registry) {
    while let Ok(request) = server.recv() {
        let (status, body, content_type) = answer(&request, registry);
        let header =
            Header::from_bytes("Content-Type", content_type).expect("a constant header is valid");
        let response = Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            tracing::debug!("a metrics client went away before its answer: {e}");
        }
    }
}

/// The status, body and content type for `request`.
fn answer(request: &Request, registry: &Registry) -> (u16, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = request.url().split('?').next().unwrap_or("");
    if path != "/metrics" {
        return (
            404,
            format!("There is nothing at {path}: metrics are at /metrics.\n"),
            TEXT,
        );
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        return (
            405,
            format!("/metrics answers GET, not {}.\n", request.method()),
            TEXT,
        );
    }
    let mut body = String::new();
    match prometheus_text::encode(&mut body, registry) {
        Ok(()) => (200, body, CONTENT_TYPE),
        Err(_) => (500, "The metrics could not be encoded.\n".to_string(), TEXT),
    }
}
