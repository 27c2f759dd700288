//! The API socket: binds a Unix socket (refusing one another process still serves, replacing
//! a stale one) and answers HTTP/1.1 requests through [`super::routes`] on one thread until
//! dropped; the socket file is removed then.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Response, Server};

use super::control::VmControl;
use super::routes;

/// The largest request body read (the API's bodies are small JSON documents).
pub const MAX_BODY: u64 = 64 << 10;

/// Errors starting the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process answers on the path.
    #[error("the API socket {0} is in use by another process (another legovmm?); pick another path or stop that one")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path.
    #[error("{0} exists and is not a socket; legovmm will not replace it with its API socket")]
    NotSocket(PathBuf),
    /// A stale socket could not be removed.
    #[error("cannot remove the stale API socket {path}")]
    Stale {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on the API socket {path}: {reason}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// tiny_http's error, as text.
        reason: String,
    },
    /// The serving thread could not be started.
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// A running API socket; dropping it stops serving and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` and answers requests about `vm`.
    pub fn start(path: &Path, vm: Arc<dyn VmControl>) -> Result<Self, ApiError> {
        clear_stale(path)?;
        let server = Server::http_unix(path).map_err(|e| ApiError::Bind {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(&serving, vm.as_ref()))
            .map_err(ApiError::Thread)?;
        tracing::info!(socket = %path.display(), "serving the API");
        Ok(Self {
            path: path.to_owned(),
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks that legovmm may take `path` for its API socket: nothing there, or a stale socket
/// nobody answers on (run before any VM is built, so a taken path fails at once).
pub fn check_path(path: &Path) -> Result<(), ApiError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotSocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ApiError::InUse(path.to_owned()));
    }
    Ok(())
}

/// Refuses a live socket or a non-socket at `path`; removes a socket nobody answers on.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    check_path(path)?;
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    std::fs::remove_file(path).map_err(|source| ApiError::Stale {
        path: path.to_owned(),
        source,
    })
}

/// Answers requests until the server is unblocked.
fn serve(server: &Server, vm: &dyn VmControl) {
    while let Ok(mut request) = server.recv() {
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(MAX_BODY + 1)
            .read_to_end(&mut body);
        let answer = match read {
            Err(e) => routes::Answer {
                status: 400,
                body: format!("{{\"error\":\"The request body could not be read: {e}.\"}}"),
                content_type: "application/json",
            },
            Ok(_) if body.len() as u64 > MAX_BODY => routes::Answer {
                status: 413,
                body: format!(
                    "{{\"error\":\"The request body is larger than {MAX_BODY} bytes.\"}}"
                ),
                content_type: "application/json",
            },
            Ok(_) => routes::answer(request.method().as_str(), request.url(), &body, vm),
        };
        tracing::debug!(method = %request.method(), url = request.url(), status = answer.status, "API request");
        let header = Header::from_bytes("Content-Type", answer.content_type)
            .expect("a constant header is valid");
        let response = Response::from_string(answer.body)
            .with_status_code(answer.status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            tracing::debug!("an API client went away before its answer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_path_is_refused_and_a_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_path(&file).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        let sock = dir.path().join("api.sock");
        let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = check_path(&sock).unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(live); // the file stays: a stale socket
        assert!(sock.exists());
        // Another test of this process may fork a child between our bind and drop; the child
        // holds the listener until its exec closes it (CLOEXEC), so wait for that window.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while UnixStream::connect(&sock).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        clear_stale(&sock).unwrap();
        assert!(!sock.exists());
        assert!(check_path(&sock).is_ok());
    }
}
