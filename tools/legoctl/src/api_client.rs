//! A client for legovmm's API socket: one HTTP/1.1 request over a Unix socket, its status
//! and body back. (The API's answers are small JSON or text documents with a Content-Length;
//! the request asks the server to close the connection after it.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors talking to the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The socket could not be reached.
    #[error("cannot reach legovmm's API socket {path} (is the vNode running with --api-socket?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("the API socket {path} failed during the request")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("the API socket {0} answered something that is not an HTTP response")]
    NotHttp(PathBuf),
    /// The API answered with an error status.
    #[error("the API answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error's message (or the body, if it is not an API error).
        message: String,
    },
}

/// An answer from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// Sends `method path` with `body` (if any) to the API at `socket`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ApiClientError> {
    let io = |source| ApiClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or_else(|| ApiClientError::NotHttp(socket.to_owned()))
}

/// Like [`request`], but an error status is an error whose message is the API's.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, ApiClientError> {
    let a = request(socket, method, path, body, timeout)?;
    if a.status >= 400 {
        return Err(ApiClientError::Status {
            status: a.status,
            message: error_message(&a.body),
        });
    }
    Ok(a.body)
}

/// The `error` of an API error body, or the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Splits a raw HTTP response into status and body (de-chunking a chunked one).
fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Answer { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_plain_or_chunked() {
        let plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}";
        let a = parse(plain).unwrap();
        assert_eq!((a.status, a.body.as_str()), (404, "{\"error\":\"x\"}"));
        assert_eq!(error_message(&a.body), "x");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap().body, "abcde");
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let e = request(
            Path::new("/nonexistent/api.sock"),
            "GET",
            "/api/v1/vmm.ping",
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("cannot reach legovmm's API socket /nonexistent/api.sock"));
    }
}
