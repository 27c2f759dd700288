//! The cluster key and the mutual challenge-response handshake run at connect.
//!
//! 1. client -> server `HELLO`: the client's 32-byte nonce `cn`.
//! 2. server -> client `HELLO` response: the server's nonce `sn`, its incarnation `inc`
//!    (u64, little-endian) and `HMAC(key, "lego-fabric/v1 server" | cn | sn | inc)`.
//! 3. client -> server `AUTH`: `HMAC(key, "lego-fabric/v1 client" | cn | sn)`.
//! 4. server -> client `AUTH` response: empty success.
//!
//! Either side that sees a wrong proof stops; the server answers with an `Unauthenticated`
//! error frame and closes before serving anything.
//!
//! A server's *incarnation* is a random number it draws when it starts
//! ([`new_incarnation`]): a client that reconnects and finds another one knows the process
//! that held its state is gone, so state kept only in memory (a memory monitor's pages) is
//! lost. The proof covers it, so no one without the key can forge a restart or hide one.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use lego_report::error_chain;
use sha2::Sha256;

use crate::error::{ErrorCode, RemoteError};
use crate::frame::{FrameError, Header, FLAG_RESPONSE};
use crate::io::{read_frame_unbuffered, write_connection_error, write_frame};
use crate::request::opcode;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable holding the cluster key in hex.
pub const KEY_ENV: &str = "LEGO_CLUSTER_KEY";
/// Environment variable naming a file holding the cluster key (hex or 32 raw bytes).
pub const KEY_FILE_ENV: &str = "LEGO_CLUSTER_KEY_FILE";
/// Length of a cluster key in bytes.
pub const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 32;
const INCARNATION_LEN: usize = 8;
const PROOF_LEN: usize = 32;
const SERVER_LABEL: &[u8] = b"lego-fabric/v1 server";
const CLIENT_LABEL: &[u8] = b"lego-fabric/v1 client";

/// Why a key could not be loaded or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The text is not 64 hexadecimal digits.
    #[error("the cluster key must be 64 hexadecimal digits: {0}")]
    BadHex(String),
    /// The key file could not be read.
    #[error("the cluster key file {path} could not be read")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds neither 32 raw bytes nor 64 hex digits.
    #[error("the cluster key file {path} holds neither 32 raw bytes nor 64 hex digits")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// Neither environment variable is set.
    #[error("no cluster key is configured: set {KEY_ENV} (hex) or {KEY_FILE_ENV}")]
    NotConfigured,
    /// The operating system's random generator failed.
    #[error("the random number generator failed")]
    Random(#[source] getrandom::Error),
    /// The peer refused us with an error frame.
    #[error("the peer refused the handshake")]
    Rejected(#[source] RemoteError),
    /// The peer's proof of the cluster key was wrong.
    #[error("the peer failed to prove it holds the cluster key")]
    PeerFailedProof,
    /// The server turned an authenticated peer away: it serves as many connections as it may.
    #[error("the server has too many connections")]
    TooManyConnections,
    /// The peer broke the handshake protocol.
    #[error("the peer broke the handshake protocol: {0}")]
    Protocol(String),
    /// A handshake frame could not be read.
    #[error("a handshake frame could not be read")]
    Frame(#[from] FrameError),
    /// A handshake frame could not be written.
    #[error("a handshake frame could not be written")]
    Io(#[from] std::io::Error),
}

/// The 32-byte secret shared by every member of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh random key.
    pub fn generate() -> Result<ClusterKey, AuthError> {
        let mut b = [0u8; KEY_LEN];
        getrandom::fill(&mut b).map_err(AuthError::Random)?;
        Ok(ClusterKey(b))
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<ClusterKey, AuthError> {
        let bytes = decode_hex(text.trim()).ok_or_else(|| {
            AuthError::BadHex("it contains a non-hex character or has an odd length".into())
        })?;
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|v: Vec<u8>| {
            AuthError::BadHex(format!("it holds {} bytes, not 32", v.len()))
        })?;
        Ok(ClusterKey(arr))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Reads a key file holding 32 raw bytes or 64 hex digits.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterKey, AuthError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| AuthError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(arr) = <[u8; KEY_LEN]>::try_from(data.as_slice()) {
            return Ok(ClusterKey(arr));
        }
        std::str::from_utf8(&data)
            .ok()
            .and_then(|t| ClusterKey::from_hex(t).ok())
            .ok_or_else(|| AuthError::BadKeyFile {
                path: path.to_path_buf(),
            })
    }

    /// Reads the key from `LEGO_CLUSTER_KEY` (hex), else from the file named by
    /// `LEGO_CLUSTER_KEY_FILE`.
    pub fn from_env() -> Result<ClusterKey, AuthError> {
        if let Ok(hex) = std::env::var(KEY_ENV) {
            return ClusterKey::from_hex(&hex);
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV) {
            return ClusterKey::from_file(PathBuf::from(path));
        }
        Err(AuthError::NotConfigured)
    }

    /// Loads the key from `file` if one is given (a `--key-file` flag or config key), else from
    /// the environment ([`ClusterKey::from_env`]): how every daemon and client finds its key.
    pub fn load(file: Option<&Path>) -> Result<ClusterKey, AuthError> {
        match file {
            Some(f) => ClusterKey::from_file(f),
            None => ClusterKey::from_env(),
        }
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `parts`, compared in constant time.
    pub(crate) fn verify_mac(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.hmac(parts).verify_slice(tag).is_ok()
    }

    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for p in parts {
            m.update(p);
        }
        m
    }
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if t.len() & 1 == 1 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    t.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

fn nonce() -> Result<[u8; NONCE_LEN], AuthError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(AuthError::Random)?;
    Ok(n)
}

fn expect_reply(frame: &crate::frame::Frame, op: u16) -> Result<(), AuthError> {
    let h = &frame.header;
    if h.status != 0 {
        return Err(AuthError::Rejected(RemoteError::from_wire(
            h.status,
            &frame.payload,
        )));
    }
    if h.opcode != op || !h.is_response() {
        return Err(AuthError::Protocol(format!(
            "expected a response to opcode {op:#06x}, got opcode {:#06x}",
            h.opcode
        )));
    }
    Ok(())
}

/// A fresh incarnation for a server process: random and never 0.
pub fn new_incarnation() -> Result<u64, AuthError> {
    let mut b = [0u8; INCARNATION_LEN];
    loop {
        getrandom::fill(&mut b).map_err(AuthError::Random)?;
        let n = u64::from_le_bytes(b);
        if n != 0 {
            return Ok(n);
        }
    }
}

/// Runs the client side of the handshake on a fresh connection; returns the server's
/// incarnation.
pub fn client_handshake<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<u64, AuthError> {
    let cn = nonce()?;
    write_frame(stream, &Header::new(opcode::HELLO, 0, 0, cn.len()), &cn)?;
    let reply = read_frame_unbuffered(stream, SERVER_REPLY_MAX_PAYLOAD)?;
    expect_reply(&reply, opcode::HELLO)?;
    let expected = NONCE_LEN + INCARNATION_LEN + PROOF_LEN;
    if reply.payload.len() != expected {
        return Err(AuthError::Protocol(format!(
            "the server hello holds {} bytes, not {expected}",
            reply.payload.len(),
        )));
    }
    let (sn, rest) = reply.payload.split_at(NONCE_LEN);
    let (inc, server_proof) = rest.split_at(INCARNATION_LEN);
    if !key.verify_mac(&[SERVER_LABEL, &cn, sn, inc], server_proof) {
        let _ = write_connection_error(
            stream,
            ErrorCode::Unauthenticated,
            "the server failed to prove it holds the cluster key",
        );
        return Err(AuthError::PeerFailedProof);
    }
    let proof = key.mac(&[CLIENT_LABEL, &cn, sn]);
    write_frame(
        stream,
        &Header::new(opcode::AUTH, 1, 0, proof.len()),
        &proof,
    )?;
    let done = read_frame_unbuffered(stream, SERVER_REPLY_MAX_PAYLOAD)?;
    expect_reply(&done, opcode::AUTH)?;
    let mut b = [0u8; INCARNATION_LEN];
    b.copy_from_slice(inc);
    Ok(u64::from_le_bytes(b))
}

/// The most payload a handshake frame may carry: a nonce, or the server's hello (nonce,
/// incarnation, proof). A peer that announces more before it has authenticated is refused
/// before anything is allocated for it.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 128;

/// The most payload a client reads from a server during the handshake (its hello, or an
/// error frame's sentence).
const SERVER_REPLY_MAX_PAYLOAD: usize = 4096;

/// The server refusing a handshake: why, and the error frame to send the peer first (none
/// when the peer sent its own error).
#[derive(Debug)]
pub(crate) struct Refusal {
    /// Why.
    pub error: AuthError,
    /// The error frame to send before closing.
    pub reply: Option<(ErrorCode, String)>,
}

impl Refusal {
    fn new(error: AuthError, code: ErrorCode, message: &str) -> Self {
        Self {
            error,
            reply: Some((code, message.into())),
        }
    }
}

/// The server's first step: its answer to the client's HELLO (header and payload to send)
/// and the server nonce the client's proof must cover.
pub(crate) fn answer_hello(
    key: &ClusterKey,
    incarnation: u64,
    hello: &crate::frame::Frame,
) -> Result<(Header, Vec<u8>, [u8; NONCE_LEN]), Refusal> {
    if hello.header.opcode != opcode::HELLO || hello.payload.len() != NONCE_LEN {
        let msg = "the connection must start with a fabric HELLO carrying a 32-byte nonce";
        return Err(Refusal::new(
            AuthError::Protocol(msg.into()),
            ErrorCode::Unauthenticated,
            msg,
        ));
    }
    let cn = &hello.payload;
    let sn = nonce().map_err(|error| Refusal { error, reply: None })?;
    let inc = incarnation.to_le_bytes();
    let proof = key.mac(&[SERVER_LABEL, cn, &sn, &inc]);
    let mut body = Vec::with_capacity(NONCE_LEN + INCARNATION_LEN + PROOF_LEN);
    body.extend_from_slice(&sn);
    body.extend_from_slice(&inc);
    body.extend_from_slice(&proof);
    let mut h = Header::new(opcode::HELLO, hello.header.request_id, 0, body.len());
    h.flags = FLAG_RESPONSE;
    Ok((h, body, sn))
}

/// The server's second step: checks the client's AUTH (its proof over the client nonce `cn`
/// and the server nonce `sn`); the header of the empty frame that tells the client it is in.
pub(crate) fn check_auth(
    key: &ClusterKey,
    cn: &[u8],
    sn: &[u8],
    auth: &crate::frame::Frame,
) -> Result<Header, Refusal> {
    if auth.header.opcode == opcode::ERROR {
        return Err(Refusal {
            error: AuthError::Rejected(RemoteError::from_wire(auth.header.status, &auth.payload)),
            reply: None,
        });
    }
    if auth.header.opcode != opcode::AUTH || !key.verify_mac(&[CLIENT_LABEL, cn, sn], &auth.payload)
    {
        return Err(Refusal::new(
            AuthError::PeerFailedProof,
            ErrorCode::Unauthenticated,
            "the client failed to prove it holds the cluster key",
        ));
    }
    let mut h = Header::new(opcode::AUTH, auth.header.request_id, 0, 0);
    h.flags = FLAG_RESPONSE;
    Ok(h)
}

/// The refusal for a handshake frame that could not be read: an error frame unless the peer
/// is gone.
pub(crate) fn refuse_frame(e: FrameError) -> Refusal {
    let reply = (!matches!(e, FrameError::Closed | FrameError::Io(_)))
        .then(|| (crate::io::frame_error_code(&e), error_chain(&e)));
    Refusal {
        error: e.into(),
        reply,
    }
}

/// Runs the server side of the handshake for a server of `incarnation` on a blocking
/// stream (the fabric server drives the same steps without blocking); on failure it has
/// already sent the error frame (the caller closes the connection).
pub fn server_handshake<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
    incarnation: u64,
) -> Result<(), AuthError> {
    let steps = |stream: &mut S| -> Result<(), Refusal> {
        let hello = read_frame_unbuffered(stream, HANDSHAKE_MAX_PAYLOAD).map_err(refuse_frame)?;
        let (h, body, sn) = answer_hello(key, incarnation, &hello)?;
        write_frame(stream, &h, &body).map_err(|e| Refusal {
            error: e.into(),
            reply: None,
        })?;
        let auth = read_frame_unbuffered(stream, HANDSHAKE_MAX_PAYLOAD).map_err(refuse_frame)?;
        let done = check_auth(key, &hello.payload, &sn, &auth)?;
        write_frame(stream, &done, &[]).map_err(|e| Refusal {
            error: e.into(),
            reply: None,
        })
    };
    steps(stream).map_err(|r| {
        if let Some((code, msg)) = &r.reply {
            let _ = write_connection_error(stream, *code, msg);
        }
        r.error
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn run(
        client_key: ClusterKey,
        server_key: ClusterKey,
    ) -> (Result<u64, AuthError>, Result<(), AuthError>) {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let t = std::thread::spawn(move || server_handshake(&mut b, &server_key, 77));
        let c = client_handshake(&mut a, &client_key);
        drop(a);
        let s = t.join().expect("server thread");
        (c, s)
    }

    #[test]
    fn right_key_is_accepted() {
        let k = ClusterKey::generate().expect("key");
        let (c, s) = run(k.clone(), k);
        assert_eq!(c.expect("client side"), 77, "the server's incarnation");
        s.expect("server side");
    }

    #[test]
    fn a_forged_incarnation_fails_the_servers_proof() {
        let key = ClusterKey::generate().expect("key");
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        // A man in the middle relays the real server's hello with another incarnation.
        let k2 = key.clone();
        let t = std::thread::spawn(move || {
            let hello = read_frame_unbuffered(&mut b, HANDSHAKE_MAX_PAYLOAD).expect("client hello");
            let (mut c, mut d) = UnixStream::pair().expect("socketpair");
            let server = std::thread::spawn(move || server_handshake(&mut d, &k2, 5));
            write_frame(&mut c, &hello.header, &hello.payload).expect("relay hello");
            let mut reply =
                read_frame_unbuffered(&mut c, HANDSHAKE_MAX_PAYLOAD).expect("server hello");
            reply.payload[NONCE_LEN] ^= 1;
            write_frame(&mut b, &reply.header, &reply.payload).expect("relay reply");
            drop(c);
            let _ = server.join();
        });
        let c = client_handshake(&mut a, &key);
        assert!(matches!(c, Err(AuthError::PeerFailedProof)), "{c:?}");
        t.join().expect("relay");
    }

    #[test]
    fn incarnations_are_random_and_never_zero() {
        let a = new_incarnation().expect("random");
        let b = new_incarnation().expect("random");
        assert!(a != 0 && b != 0 && a != b);
    }

    #[test]
    fn wrong_key_is_rejected_by_both_sides() {
        let (c, s) = run(
            ClusterKey::generate().expect("key"),
            ClusterKey::generate().expect("key"),
        );
        // The server proves first, so the client notices and stops.
        assert!(matches!(c, Err(AuthError::PeerFailedProof)), "{c:?}");
        assert!(s.is_err());
    }

    #[test]
    fn a_client_with_a_wrong_proof_gets_unauthenticated() {
        let key = ClusterKey::generate().expect("key");
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let k2 = key.clone();
        let t = std::thread::spawn(move || server_handshake(&mut b, &k2, 1));
        write_frame(&mut a, &Header::new(opcode::HELLO, 0, 0, 32), &[5u8; 32]).expect("hello");
        let _ = read_frame_unbuffered(&mut a, SERVER_REPLY_MAX_PAYLOAD).expect("server hello");
        write_frame(&mut a, &Header::new(opcode::AUTH, 1, 0, 32), &[0u8; 32]).expect("auth");
        let err = read_frame_unbuffered(&mut a, SERVER_REPLY_MAX_PAYLOAD).expect("error frame");
        assert_eq!(err.header.opcode, opcode::ERROR);
        assert_eq!(err.header.status, ErrorCode::Unauthenticated.to_u16());
        assert!(matches!(
            t.join().expect("join"),
            Err(AuthError::PeerFailedProof)
        ));
    }

    #[test]
    fn keys_come_from_the_environment() {
        // The only test touching these variables.
        let k = ClusterKey::generate().expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("key");
        std::fs::write(&file, k.to_hex()).expect("write");
        std::env::remove_var(KEY_ENV);
        std::env::remove_var(KEY_FILE_ENV);
        assert!(matches!(
            ClusterKey::from_env(),
            Err(AuthError::NotConfigured)
        ));
        std::env::set_var(KEY_FILE_ENV, &file);
        assert_eq!(ClusterKey::from_env().expect("file"), k);
        let other = ClusterKey::generate().expect("key");
        std::env::set_var(KEY_ENV, other.to_hex());
        assert_eq!(ClusterKey::from_env().expect("hex wins"), other);
        std::env::remove_var(KEY_ENV);
        std::env::remove_var(KEY_FILE_ENV);
    }

    #[test]
    fn keys_parse_from_hex_files_and_raw_files() {
        let k = ClusterKey::generate().expect("key");
        assert_eq!(ClusterKey::from_hex(&k.to_hex()).expect("hex"), k);
        assert!(ClusterKey::from_hex("abcd").is_err());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", k.to_hex())).expect("write");
        assert_eq!(ClusterKey::from_file(&hex).expect("hex file"), k);
        let raw = dir.path().join("raw");
        std::fs::write(&raw, k.as_bytes()).expect("write");
        assert_eq!(ClusterKey::from_file(&raw).expect("raw file"), k);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"nope").expect("write");
        assert!(matches!(
            ClusterKey::from_file(&bad),
            Err(AuthError::BadKeyFile { .. })
        ));
        assert!(format!("{k:?}").contains("redacted"));
    }
}
