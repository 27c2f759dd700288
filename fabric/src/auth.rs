//! The cluster key and the mutual challenge-response handshake run at connect.
//!
//! A client authenticates with an [`Identity`]: the cluster key, or a [`Credential`] issued
//! from it for a role and a name ([`crate::credential`]). Both proofs use the client's *proof
//! key* `pk` ([`proof_key`]): the cluster key itself for its holders, else the credential's
//! secret, which the server derives from the cluster key, the role and the name.
//!
//! 1. client -> server `HELLO` (`ch`): the client's 32-byte nonce `cn`, the frame protection
//!    it asks for `want` (1 byte, see [`crate::seal`]), its role (1 byte: 0 cluster, 1
//!    monitor, 2 compute, 3 operator), its name's length (1 byte, 0 for the cluster key, else
//!    1 to 64) and its name.
//! 2. server -> client `HELLO` response: the server's nonce `sn`, its incarnation `inc`
//!    (u64, little-endian), the protection it chose `got` (the stronger of `want` and its
//!    own floor) and `HMAC(pk, "lego-fabric/v1 server" | ch | sn | inc | got)`.
//! 3. client -> server `AUTH`: `HMAC(pk, "lego-fabric/v1 client" | ch | sn | inc | got)`.
//! 4. server -> client `AUTH` response: empty success.
//!
//! Either side that sees a wrong proof stops; the server answers with an `Unauthenticated`
//! error frame and closes before serving anything. Since the server proves with the client's
//! own proof key, a credential holder can impersonate a server only to itself, and a
//! credential claiming another name or role fails the proof. A client never accepts a
//! protection weaker than it asked for. Both sides then derive the session keys of every
//! later frame from `pk` and the two nonces ([`crate::seal::Session`]).
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

use crate::credential::{check_name, derive_secret, CredentialError, Identity, Peer, Role};
use crate::error::{ErrorCode, RemoteError};
use crate::frame::{FrameError, Header, FLAG_RESPONSE};
use crate::io::{read_frame_unbuffered, write_connection_error, write_frame};
use crate::request::opcode;
use crate::seal::{FrameProtection, SealError, Session};

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
/// The server's HELLO: its nonce, incarnation, chosen protection and proof.
const SERVER_HELLO_LEN: usize = NONCE_LEN + INCARNATION_LEN + 1 + PROOF_LEN;
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
    /// A server was given a credential: it needs the cluster key itself.
    #[error("{what} holds a credential ({role} {name}), but a server (manager or monitor) needs the cluster key itself")]
    CredentialForServer {
        /// The file or variable.
        what: String,
        /// The credential's role.
        role: Role,
        /// The credential's name.
        name: String,
    },
    /// A credential could not be parsed or read.
    #[error("the credential could not be loaded")]
    Credential(#[from] CredentialError),
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
    /// The frame protection could not be agreed or its keys derived.
    #[error("the frame protection could not be set up")]
    Protection(#[from] SealError),
}

/// What a successful client handshake yields.
#[derive(Debug)]
pub struct Handshake {
    /// The server's incarnation.
    pub incarnation: u64,
    /// The protection and keys of the frames that follow.
    pub session: Session,
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

    /// Reads a key file holding 32 raw bytes or 64 hex digits (a credential file there is
    /// refused: see [`ClusterKey::load`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterKey, AuthError> {
        let path = path.as_ref();
        Identity::from_file(path)?.into_cluster_key(|| format!("the key file {}", path.display()))
    }

    /// Reads the key from `LEGO_CLUSTER_KEY` (hex), else from the file named by
    /// `LEGO_CLUSTER_KEY_FILE`.
    pub fn from_env() -> Result<ClusterKey, AuthError> {
        ClusterKey::load(None)
    }

    /// Loads the key from `file` if one is given (a `--key-file` flag or config key), else from
    /// the environment: how every server (manager, monitor) finds its key. It is found as
    /// clients find theirs ([`Identity::load`]), but a credential is refused
    /// ([`AuthError::CredentialForServer`]).
    pub fn load(file: Option<&Path>) -> Result<ClusterKey, AuthError> {
        Identity::load(file)?.into_cluster_key(|| match file {
            Some(f) => format!("the key file {}", f.display()),
            None => format!("{KEY_ENV} or {KEY_FILE_ENV}"),
        })
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

/// The key of one client's handshake proofs (see the module doc and [`proof_key`]). Redacted
/// in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProofKey([u8; KEY_LEN]);

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProofKey(<redacted>)")
    }
}

impl ProofKey {
    /// A proof key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ProofKey {
        ProofKey(bytes)
    }

    /// The raw bytes (to derive further keys from, e.g. a session's).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        ClusterKey(self.0).mac(parts)
    }

    /// Whether `tag` is the HMAC of `parts`, compared in constant time.
    pub fn verify_mac(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        ClusterKey(self.0).verify_mac(parts, tag)
    }
}

/// The proof key of `peer` in the cluster of `key`: the cluster key itself for
/// [`Role::Cluster`], else the secret of `peer`'s credential. The client side's is
/// [`Identity::proof_key`]; both sides of a handshake hold the same one.
pub fn proof_key(key: &ClusterKey, peer: &Peer) -> ProofKey {
    match peer.role {
        Role::Cluster => ProofKey(key.0),
        role => ProofKey(derive_secret(key, role, &peer.name)),
    }
}

/// The client's HELLO payload: its nonce, the protection it asks for, its role, name length
/// and name.
fn hello_payload(cn: &[u8; NONCE_LEN], want: FrameProtection, peer: &Peer) -> Vec<u8> {
    let mut p = Vec::with_capacity(NONCE_LEN + 3 + peer.name.len());
    p.extend_from_slice(cn);
    p.push(want.to_wire());
    p.push(peer.role.to_byte());
    // Names are at most 64 bytes (checked where credentials are made and parsed).
    p.push(peer.name.len() as u8);
    p.extend_from_slice(peer.name.as_bytes());
    p
}

/// Parses a client's HELLO payload: its nonce, the protection it asks for and the peer it
/// claims to be.
fn parse_hello(payload: &[u8]) -> Option<([u8; NONCE_LEN], FrameProtection, Peer)> {
    if payload.len() < NONCE_LEN + 3 {
        return None;
    }
    let (cn, rest) = payload.split_at(NONCE_LEN);
    let want = FrameProtection::from_wire(rest[0]).ok()?;
    let rest = &rest[1..];
    let role = Role::from_byte(rest[0])?;
    let name = std::str::from_utf8(&rest[2..]).ok()?;
    if usize::from(rest[1]) != name.len() {
        return None;
    }
    match role {
        Role::Cluster if !name.is_empty() => return None,
        Role::Cluster => {}
        _ => check_name(name).ok()?,
    }
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(cn);
    Some((
        n,
        want,
        Peer {
            role,
            name: name.into(),
        },
    ))
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

/// Runs the client side of the handshake on a fresh connection as `identity`, asking for
/// frame protection `want` (the server may choose a stronger one, never a weaker).
pub fn client_handshake<S: Read + Write>(
    stream: &mut S,
    identity: &Identity,
    want: FrameProtection,
) -> Result<Handshake, AuthError> {
    let key = identity.proof_key();
    let cn = nonce()?;
    let hello = hello_payload(&cn, want, &identity.peer());
    write_frame(
        stream,
        &Header::new(opcode::HELLO, 0, 0, hello.len()),
        &hello,
    )?;
    let reply = read_frame_unbuffered(stream, SERVER_REPLY_MAX_PAYLOAD)?;
    expect_reply(&reply, opcode::HELLO)?;
    if reply.payload.len() != SERVER_HELLO_LEN {
        return Err(AuthError::Protocol(format!(
            "the server hello holds {} bytes, not {SERVER_HELLO_LEN}",
            reply.payload.len(),
        )));
    }
    let (signed, server_proof) = reply.payload.split_at(SERVER_HELLO_LEN - PROOF_LEN);
    let (sn, rest) = signed.split_at(NONCE_LEN);
    let (inc, got) = rest.split_at(INCARNATION_LEN);
    if !key.verify_mac(&[SERVER_LABEL, &hello, signed], server_proof) {
        let _ = write_connection_error(
            stream,
            ErrorCode::Unauthenticated,
            "the server failed to prove it holds the cluster key",
        );
        return Err(AuthError::PeerFailedProof);
    }
    let got = FrameProtection::from_wire(got[0])?;
    if got < want {
        let msg =
            format!("the server chose frame protection {got}, weaker than the {want} asked for");
        let _ = write_connection_error(stream, ErrorCode::Unauthenticated, &msg);
        return Err(AuthError::Protocol(msg));
    }
    let proof = key.mac(&[CLIENT_LABEL, &hello, signed]);
    write_frame(
        stream,
        &Header::new(opcode::AUTH, 1, 0, proof.len()),
        &proof,
    )?;
    let done = read_frame_unbuffered(stream, SERVER_REPLY_MAX_PAYLOAD)?;
    expect_reply(&done, opcode::AUTH)?;
    let mut b = [0u8; INCARNATION_LEN];
    b.copy_from_slice(inc);
    Ok(Handshake {
        incarnation: u64::from_le_bytes(b),
        session: Session::derive(key.as_bytes(), &cn, sn, got)?,
    })
}

/// The most payload a handshake frame may carry: the client's hello (nonce, protection, role,
/// name of at most 64 bytes: 99 bytes), its proof, or the server's hello (nonce, incarnation,
/// protection, proof: 73 bytes). A
/// peer that announces more before it has authenticated is refused before anything is
/// allocated for it.
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

/// What the server keeps between the client's HELLO and its AUTH.
#[derive(Debug)]
pub(crate) struct HelloSeen {
    /// The client's HELLO payload (nonce, protection asked for, role, name).
    pub client_hello: Vec<u8>,
    /// The server's signed fields: nonce, incarnation, chosen protection.
    pub signed: Vec<u8>,
    /// The protection chosen.
    pub protection: FrameProtection,
    /// Who the client says it is (proved by its AUTH).
    pub peer: Peer,
    /// That peer's proof key.
    pub proof_key: ProofKey,
}

/// The server's first step: its answer to the client's HELLO (header and payload to send)
/// and what the check of the client's proof needs. `floor` is the weakest frame protection
/// this server accepts.
pub(crate) fn answer_hello(
    key: &ClusterKey,
    incarnation: u64,
    floor: FrameProtection,
    hello: &crate::frame::Frame,
) -> Result<(Header, Vec<u8>, HelloSeen), Refusal> {
    let parsed = (hello.header.opcode == opcode::HELLO)
        .then(|| parse_hello(&hello.payload))
        .flatten();
    let Some((_, want, peer)) = parsed else {
        let msg = "the connection must start with a fabric HELLO carrying a 32-byte nonce, a frame protection, a role and a valid name";
        return Err(Refusal::new(
            AuthError::Protocol(msg.into()),
            ErrorCode::Unauthenticated,
            msg,
        ));
    };
    let protection = want.max(floor);
    let pk = proof_key(key, &peer);
    let sn = nonce().map_err(|error| Refusal { error, reply: None })?;
    let mut signed = Vec::with_capacity(SERVER_HELLO_LEN - PROOF_LEN);
    signed.extend_from_slice(&sn);
    signed.extend_from_slice(&incarnation.to_le_bytes());
    signed.push(protection.to_wire());
    let proof = pk.mac(&[SERVER_LABEL, &hello.payload, &signed]);
    let mut body = Vec::with_capacity(SERVER_HELLO_LEN);
    body.extend_from_slice(&signed);
    body.extend_from_slice(&proof);
    let mut h = Header::new(opcode::HELLO, hello.header.request_id, 0, body.len());
    h.flags = FLAG_RESPONSE;
    Ok((
        h,
        body,
        HelloSeen {
            client_hello: hello.payload.clone(),
            signed,
            protection,
            peer,
            proof_key: pk,
        },
    ))
}

/// The server's second step: checks the client's AUTH (its proof over both HELLOs with its
/// proof key); the header of the empty frame that tells the client it is in, and the session
/// that follows.
pub(crate) fn check_auth(
    seen: &HelloSeen,
    auth: &crate::frame::Frame,
) -> Result<(Header, Session), Refusal> {
    if auth.header.opcode == opcode::ERROR {
        return Err(Refusal {
            error: AuthError::Rejected(RemoteError::from_wire(auth.header.status, &auth.payload)),
            reply: None,
        });
    }
    let key = &seen.proof_key;
    if auth.header.opcode != opcode::AUTH
        || !key.verify_mac(
            &[CLIENT_LABEL, &seen.client_hello, &seen.signed],
            &auth.payload,
        )
    {
        let msg = match seen.peer.role {
            Role::Cluster => "the client failed to prove it holds the cluster key".to_string(),
            _ => format!(
                "the client failed to prove it holds the credential of {}",
                seen.peer
            ),
        };
        return Err(Refusal::new(
            AuthError::PeerFailedProof,
            ErrorCode::Unauthenticated,
            &msg,
        ));
    }
    let session = Session::derive(
        key.as_bytes(),
        &seen.client_hello[..NONCE_LEN],
        &seen.signed[..NONCE_LEN],
        seen.protection,
    )
    .map_err(|e| Refusal {
        error: e.into(),
        reply: None,
    })?;
    let mut h = Header::new(opcode::AUTH, auth.header.request_id, 0, 0);
    h.flags = FLAG_RESPONSE;
    Ok((h, session))
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
/// stream (the fabric server drives the same steps without blocking); returns the
/// authenticated peer. On failure it has already sent the error frame (the caller closes
/// the connection).
pub fn server_handshake<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
    incarnation: u64,
    floor: FrameProtection,
) -> Result<(Peer, Session), AuthError> {
    let steps = |stream: &mut S| -> Result<(Peer, Session), Refusal> {
        let hello = read_frame_unbuffered(stream, HANDSHAKE_MAX_PAYLOAD).map_err(refuse_frame)?;
        let (h, body, seen) = answer_hello(key, incarnation, floor, &hello)?;
        write_frame(stream, &h, &body).map_err(|e| Refusal {
            error: e.into(),
            reply: None,
        })?;
        let auth = read_frame_unbuffered(stream, HANDSHAKE_MAX_PAYLOAD).map_err(refuse_frame)?;
        let (done, session) = check_auth(&seen, &auth)?;
        write_frame(stream, &done, &[]).map_err(|e| Refusal {
            error: e.into(),
            reply: None,
        })?;
        Ok((seen.peer, session))
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
    use crate::credential::Credential;
    use std::os::unix::net::UnixStream;

    type Outcome = (
        Result<Handshake, AuthError>,
        Result<(Peer, Session), AuthError>,
    );

    fn run_with(
        client: impl Into<Identity>,
        server_key: ClusterKey,
        want: FrameProtection,
        floor: FrameProtection,
    ) -> Outcome {
        let client = client.into();
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let t = std::thread::spawn(move || server_handshake(&mut b, &server_key, 77, floor));
        let c = client_handshake(&mut a, &client, want);
        drop(a);
        let s = t.join().expect("server thread");
        (c, s)
    }

    fn run(client: impl Into<Identity>, server_key: ClusterKey) -> Outcome {
        run_with(
            client,
            server_key,
            FrameProtection::Mac,
            FrameProtection::Mac,
        )
    }

    fn incarnation(c: Result<Handshake, AuthError>) -> u64 {
        c.expect("client side").incarnation
    }

    #[test]
    fn right_key_is_accepted() {
        let k = ClusterKey::generate().expect("key");
        let (c, s) = run(k.clone(), k);
        let c = c.expect("client side");
        assert_eq!(c.incarnation, 77, "the server's incarnation");
        assert_eq!(c.session.protection, FrameProtection::Mac);
        let (peer, session) = s.expect("server side");
        assert_eq!(peer, Peer::cluster());
        assert_eq!(session.protection, FrameProtection::Mac);
    }

    #[test]
    fn the_stronger_of_the_asked_protection_and_the_servers_floor_wins() {
        use FrameProtection::*;
        let k = ClusterKey::generate().expect("key");
        for (want, floor, got) in [(Crc, Mac, Mac), (Encrypt, Mac, Encrypt), (Crc, Crc, Crc)] {
            let (c, s) = run_with(k.clone(), k.clone(), want, floor);
            assert_eq!(c.expect("client").session.protection, got);
            assert_eq!(s.expect("server").1.protection, got);
        }
    }

    #[test]
    fn both_sides_derive_the_same_session_keys() {
        let k = ClusterKey::generate().expect("key");
        let cred = k.issue_credential(Role::Compute, "host-a").expect("issue");
        let (c, s) = run(cred, k);
        let (mut client_tx, mut client_rx) = c.expect("client").session.client_halves();
        let (mut server_tx, mut server_rx) = s.expect("server").1.server_halves();
        let h = Header::new(0x100, 1, 2, 3);
        for (tx, rx) in [
            (&mut client_tx, &mut server_rx),
            (&mut server_tx, &mut client_rx),
        ] {
            let sealed = tx.seal(&h, b"abc");
            let mut bytes = sealed.header.to_vec();
            bytes.extend_from_slice(sealed.body(b"abc"));
            bytes.extend_from_slice(sealed.tag());
            let header = Header::decode(&bytes).expect("header");
            let mut f = crate::frame::Frame {
                header,
                payload: bytes[crate::frame::HEADER_LEN..].to_vec(),
            };
            rx.open(&mut f).expect("the other side opens it");
            assert_eq!(f.payload, b"abc");
        }
    }

    #[test]
    fn a_downgraded_protection_fails_the_servers_proof() {
        let key = ClusterKey::generate().expect("key");
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        // A man in the middle rewrites the client's request for encryption into crc.
        let k2 = key.clone();
        let t = std::thread::spawn(move || {
            let mut hello =
                read_frame_unbuffered(&mut b, HANDSHAKE_MAX_PAYLOAD).expect("client hello");
            let (mut c, mut d) = UnixStream::pair().expect("socketpair");
            let server =
                std::thread::spawn(move || server_handshake(&mut d, &k2, 5, FrameProtection::Crc));
            hello.payload[NONCE_LEN] = FrameProtection::Crc.to_wire();
            write_frame(&mut c, &hello.header, &hello.payload).expect("relay hello");
            let reply = read_frame_unbuffered(&mut c, HANDSHAKE_MAX_PAYLOAD).expect("server hello");
            write_frame(&mut b, &reply.header, &reply.payload).expect("relay reply");
            drop(c);
            let _ = server.join();
        });
        let c = client_handshake(&mut a, &key.into(), FrameProtection::Encrypt);
        assert!(matches!(c, Err(AuthError::PeerFailedProof)), "{c:?}");
        t.join().expect("relay");
    }

    #[test]
    fn a_credential_is_accepted_and_seen_with_its_role_and_name() {
        let k = ClusterKey::generate().expect("key");
        let cred = k.issue_credential(Role::Compute, "host-a").expect("issue");
        let (c, s) = run(cred, k);
        assert_eq!(incarnation(c), 77);
        let (peer, _) = s.expect("server side");
        assert_eq!((peer.role, peer.name.as_ref()), (Role::Compute, "host-a"));
    }

    #[test]
    fn the_longest_name_fits_the_handshake_frame_limit() {
        let k = ClusterKey::generate().expect("key");
        let name = "n".repeat(crate::credential::MAX_NAME_LEN);
        let cred = k.issue_credential(Role::Operator, &name).expect("issue");
        let hello = hello_payload(&[0; NONCE_LEN], FrameProtection::Encrypt, &cred.peer());
        assert!(
            hello.len() <= HANDSHAKE_MAX_PAYLOAD,
            "{} bytes",
            hello.len()
        );
        let (c, s) = run(cred, k);
        assert_eq!(incarnation(c), 77);
        assert_eq!(s.expect("server side").0.name.as_ref(), name);
    }

    #[test]
    fn a_credential_of_another_cluster_fails_both_proofs() {
        let k = ClusterKey::generate().expect("key");
        let other = ClusterKey::generate().expect("key");
        let cred = other
            .issue_credential(Role::Operator, "ops")
            .expect("issue");
        let (c, s) = run(cred, k);
        assert!(matches!(c, Err(AuthError::PeerFailedProof)), "{c:?}");
        assert!(s.is_err());
    }

    #[test]
    fn a_credential_claiming_another_name_or_role_fails() {
        let k = ClusterKey::generate().expect("key");
        let real = k.issue_credential(Role::Compute, "host-a").expect("issue");
        // host-a's secret under host-b's name, and under the operator role.
        for (role, name) in [(Role::Compute, "host-b"), (Role::Operator, "host-a")] {
            let text = real
                .to_text()
                .replace("name host-a", &format!("name {name}"))
                .replace("role compute", &format!("role {role}"));
            let forged = Credential::from_text(&text).expect("parses");
            let (c, s) = run(forged, k.clone());
            assert!(matches!(c, Err(AuthError::PeerFailedProof)), "{c:?}");
            assert!(s.is_err());
        }
    }

    #[test]
    fn proof_keys_agree_on_both_sides() {
        let k = ClusterKey::generate().expect("key");
        let cred = k.issue_credential(Role::Monitor, "m1").expect("issue");
        let id = Identity::from(cred.clone());
        assert_eq!(proof_key(&k, &cred.peer()), id.proof_key());
        assert_eq!(
            proof_key(&k, &Peer::cluster()),
            Identity::from(k.clone()).proof_key()
        );
    }

    #[test]
    fn a_server_refuses_a_credential_file() {
        let k = ClusterKey::generate().expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("cred");
        k.issue_credential(Role::Compute, "h")
            .expect("issue")
            .write_file(&f)
            .expect("write");
        let e = ClusterKey::load(Some(&f)).expect_err("a credential is no cluster key");
        assert!(matches!(e, AuthError::CredentialForServer { .. }), "{e:?}");
        assert!(e.to_string().contains("needs the cluster key"), "{e}");
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
            let server =
                std::thread::spawn(move || server_handshake(&mut d, &k2, 5, FrameProtection::Mac));
            write_frame(&mut c, &hello.header, &hello.payload).expect("relay hello");
            let mut reply =
                read_frame_unbuffered(&mut c, HANDSHAKE_MAX_PAYLOAD).expect("server hello");
            reply.payload[NONCE_LEN] ^= 1;
            write_frame(&mut b, &reply.header, &reply.payload).expect("relay reply");
            drop(c);
            let _ = server.join();
        });
        let c = client_handshake(&mut a, &key.into(), FrameProtection::Mac);
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
        let t = std::thread::spawn(move || server_handshake(&mut b, &k2, 1, FrameProtection::Mac));
        let mut hello = vec![5u8; 32];
        hello.extend_from_slice(&[1, 0, 0]);
        write_frame(&mut a, &Header::new(opcode::HELLO, 0, 0, 35), &hello).expect("hello");
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
