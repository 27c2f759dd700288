//! End-to-end tests: a real server and real clients over loopback TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use lego_fabric::auth::client_handshake;
use lego_fabric::frame::{Frame, Header, HEADER_LEN, MAX_PAYLOAD, MAX_WIRE_PAYLOAD};
use lego_fabric::*;

const ECHO: u16 = 0x0100;
const GATED: u16 = 0x0101;
const FAIL: u16 = 0x0102;
const RIGHTS: u16 = 0x0103;
const SLEEP: u16 = 0x0104;
const PANIC: u16 = 0x0105;
/// Returns only once `BARRIER_N` of these requests are in the handler at the same time.
const BARRIER: u16 = 0x0106;
const BARRIER_N: usize = 4;

/// The longest a test handler blocks (so that a failing test fails instead of hanging).
const LIMIT: Duration = Duration::from_secs(30);

/// A gate the test opens to let a blocked handler finish.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cv.notify_all();
    }

    /// Waits for the gate, at most `LIMIT` so that a failing test cannot hang shutdown.
    fn wait(&self) -> bool {
        let deadline = std::time::Instant::now() + LIMIT;
        let mut g = self.open.lock().expect("gate");
        while !*g {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.cv.wait_timeout(g, deadline - now).expect("gate").0;
        }
        true
    }
}

#[derive(Default)]
struct TestHandler {
    gate: Gate,
    barrier: Mutex<usize>,
    barrier_cv: Condvar,
}

impl Handler for TestHandler {
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        match req.opcode {
            ECHO => Ok(req.payload),
            GATED => {
                if self.gate.wait() {
                    Ok(b"gated".to_vec())
                } else {
                    Err(RemoteError::new(
                        ErrorCode::Unavailable,
                        "the gate never opened",
                    ))
                }
            }
            FAIL => Err(RemoteError::new(ErrorCode::NotFound, "no such page")),
            RIGHTS => {
                let mut out = ctx.vnode.to_le_bytes().to_vec();
                out.extend_from_slice(&ctx.rights.bits().to_le_bytes());
                Ok(out)
            }
            SLEEP => {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(Vec::new())
            }
            PANIC => panic!("the test handler panics on purpose"),
            BARRIER => {
                let deadline = std::time::Instant::now() + LIMIT;
                let mut n = self.barrier.lock().expect("barrier");
                *n += 1;
                self.barrier_cv.notify_all();
                while *n < BARRIER_N {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(RemoteError::new(
                            ErrorCode::Unavailable,
                            "the barrier never filled",
                        ));
                    }
                    n = self
                        .barrier_cv
                        .wait_timeout(n, deadline - now)
                        .expect("barrier")
                        .0;
                }
                Ok(Vec::new())
            }
            _ => Err(RemoteError::new(
                ErrorCode::InvalidArgument,
                "unknown opcode",
            )),
        }
    }

    fn dispatch(&self, req: &Request) -> Dispatch {
        match req.opcode {
            GATED | SLEEP | BARRIER => Dispatch::Worker,
            _ => Dispatch::Inline,
        }
    }
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x42; 32])
}

fn ckey() -> CapabilityKey {
    CapabilityKey::derive(&key())
}

fn start() -> (ServerHandle, Arc<TestHandler>) {
    start_at("127.0.0.1:0")
}

fn start_at(addr: &str) -> (ServerHandle, Arc<TestHandler>) {
    let handler = Arc::new(TestHandler::default());
    let server = Server::bind(addr, key(), handler.clone(), ServerConfig::default()).expect("bind");
    (server.spawn(), handler)
}

fn config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, key(), config()).expect("connect")
}

fn remote_code(r: Result<Response, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Remote(e)) => e.code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Reads one frame from a raw stream (test helper, no buffering).
fn read_raw_frame(s: &mut TcpStream) -> Frame {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).expect("header");
    let header = Header::decode(&h).expect("valid header");
    let mut payload = vec![0u8; header.payload_len as usize];
    s.read_exact(&mut payload).expect("payload");
    header.verify(&payload).expect("crc");
    Frame { header, payload }
}

fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// A raw connection that finished the handshake asking for CRC-only frames (what a server
/// whose floor is `crc` grants), so the test can write frames by hand.
fn raw_authenticated(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let hs = client_handshake(&mut s, &key().into(), FrameProtection::Crc).expect("handshake");
    assert_eq!(
        hs.session.protection,
        FrameProtection::Crc,
        "the server's floor"
    );
    s
}

/// A server that allows CRC-only frames (for tests that write frames by hand).
fn start_crc_only() -> ServerHandle {
    let cfg = ServerConfig {
        protection: FrameProtection::Crc,
        ..ServerConfig::default()
    };
    let handler = Arc::new(TestHandler::default());
    Server::bind("127.0.0.1:0", key(), handler, cfg)
        .expect("bind")
        .spawn()
}

#[test]
fn echo_of_many_sizes_and_ping() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    client.ping().expect("ping");
    for size in [0usize, 1, 4096, 65_536, 1 << 20, MAX_PAYLOAD] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let resp = client
            .call(Request::new(ECHO, 0, payload.clone()))
            .expect("echo");
        assert_eq!(resp.payload, payload, "size {size}");
    }
    server.shutdown();
}

#[test]
fn busy_polling_sides_work_like_blocking_ones() {
    let handler = Arc::new(TestHandler::default());
    let spin = Duration::from_micros(200);
    let cfg = ServerConfig {
        spin,
        ..ServerConfig::default()
    };
    let server = Server::bind("127.0.0.1:0", key(), handler, cfg)
        .expect("bind")
        .spawn();
    let ccfg = ClientConfig { spin, ..config() };
    let client = Client::connect(server.local_addr(), key(), ccfg).expect("connect");
    for i in 0..100u32 {
        let p = i.to_le_bytes().repeat(1000);
        assert_eq!(
            client
                .call(Request::new(ECHO, 0, p.clone()))
                .expect("echo")
                .payload,
            p
        );
    }
    server.shutdown();
}

#[test]
fn remote_errors_and_panics_are_answers_not_disconnects() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    assert_eq!(
        remote_code(client.call(Request::new(FAIL, 0, vec![]))),
        ErrorCode::NotFound
    );
    assert_eq!(
        remote_code(client.call(Request::new(PANIC, 0, vec![]))),
        ErrorCode::Internal
    );
    assert_eq!(
        client
            .call(Request::new(ECHO, 0, vec![9]))
            .expect("echo")
            .payload,
        vec![9]
    );
    assert!(matches!(
        client.call(Request::new(0x0004, 0, vec![])),
        Err(ClientError::InvalidRequest(_))
    ));
}

#[test]
fn slow_request_is_overtaken_by_a_fast_one_on_the_same_connection() {
    let (server, handler) = start();
    let client = connect(server.local_addr());
    let slow = client.submit(Request::new(GATED, 0, vec![]));
    let fast = client.submit(Request::new(ECHO, 0, b"fast".to_vec()));
    // The slow handler is blocked until the gate opens, which happens only after the fast
    // response arrived: in-order completion would time out here.
    assert_eq!(fast.wait().expect("fast").payload, b"fast");
    handler.gate.open();
    assert_eq!(slow.wait().expect("slow").payload, b"gated");
}

#[test]
fn many_threads_share_one_client() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let mut p = vec![t; 4096];
                    p[..4].copy_from_slice(&i.to_le_bytes());
                    let r = c.call(Request::new(ECHO, 0, p.clone())).expect("echo");
                    assert_eq!(r.payload, p);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn calls_from_many_threads_are_in_flight_together() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    // Each call returns only when all are in the server at once: a client that
    // serialized its callers would time out here.
    let threads: Vec<_> = (0..BARRIER_N)
        .map(|_| {
            let c = client.clone();
            std::thread::spawn(move || c.call(Request::new(BARRIER, 0, vec![])))
        })
        .collect();
    for t in threads {
        t.join().expect("thread").expect("barrier call");
    }
}

#[test]
fn pipelined_submissions_and_batches_complete() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    let pendings: Vec<_> = (0..64u32)
        .map(|i| client.submit(Request::new(ECHO, 0, i.to_le_bytes().to_vec())))
        .collect();
    // Collect in reverse order to exercise out-of-order hand-off.
    for (i, p) in pendings.into_iter().enumerate().rev() {
        assert_eq!(p.wait().expect("echo").payload, (i as u32).to_le_bytes());
    }
    let batch: Vec<_> = (0..100u32)
        .map(|i| {
            if i % 10 == 3 {
                Request::new(FAIL, 0, vec![])
            } else {
                Request::new(ECHO, 0, vec![i as u8; (i as usize) * 40])
            }
        })
        .collect();
    for (i, r) in client.call_batch(batch).into_iter().enumerate() {
        if i % 10 == 3 {
            assert_eq!(remote_code(r), ErrorCode::NotFound);
        } else {
            assert_eq!(r.expect("echo").payload, vec![i as u8; i * 40]);
        }
    }
}

#[test]
fn wrong_key_and_unauthenticated_requests_are_rejected() {
    let (server, _) = start();
    let wrong = ClusterKey::from_bytes([1; 32]);
    match Client::connect(server.local_addr(), wrong, config()) {
        Err(ClientError::Auth(AuthError::PeerFailedProof)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a client with the wrong key connected"),
    }
    // A raw peer skipping the handshake gets Unauthenticated and is closed.
    let mut s = TcpStream::connect(server.local_addr()).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let f = Frame {
        header: Header::new(ECHO, 1, 0, 3),
        payload: b"hey".to_vec(),
    };
    s.write_all(&f.encode()).expect("write");
    let err = read_raw_frame(&mut s);
    assert_eq!(err.header.opcode, opcode::ERROR);
    assert_eq!(err.header.status, ErrorCode::Unauthenticated.to_u16());
    assert_closed(&mut s);
}

#[test]
fn version_mismatch_is_answered_with_both_versions() {
    let (server, _) = start();
    let mut s = TcpStream::connect(server.local_addr()).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut bytes = Frame {
        header: Header::new(opcode::HELLO, 0, 0, 32),
        payload: vec![0; 32],
    }
    .encode();
    bytes[4] = 7;
    s.write_all(&bytes).expect("write");
    let err = read_raw_frame(&mut s);
    assert_eq!(err.header.status, ErrorCode::VersionMismatch.to_u16());
    let text = String::from_utf8_lossy(&err.payload).into_owned();
    assert!(text.contains('7') && text.contains('1'), "{text}");
    assert_closed(&mut s);
}

#[test]
fn vnode_requests_need_that_vnodes_capability() {
    let (server, _) = start();
    let client = connect(server.local_addr());
    assert_eq!(
        remote_code(client.call(Request::new(RIGHTS, 5, vec![]))),
        ErrorCode::Forbidden
    );
    let cap6 = Capability::issue(&ckey(), 6, Rights::MEMORY, Duration::from_secs(600));
    client.attach(&cap6).expect("attach 6");
    assert_eq!(
        remote_code(client.call(Request::new(RIGHTS, 5, vec![]))),
        ErrorCode::Forbidden
    );
    let r = client
        .call(Request::new(RIGHTS, 6, vec![]))
        .expect("vnode 6");
    assert_eq!(&r.payload[..8], &6u64.to_le_bytes());
    assert_eq!(&r.payload[8..], &Rights::MEMORY.bits().to_le_bytes());
    // Cluster-level requests need no capability.
    client
        .call(Request::new(RIGHTS, 0, vec![]))
        .expect("vnode 0");

    let expired = Capability::issue_until(&ckey(), 5, Rights::MEMORY, 1);
    assert!(
        matches!(client.attach(&expired), Err(ClientError::Remote(e)) if e.code == ErrorCode::Forbidden)
    );
    let foreign = Capability::issue(
        &CapabilityKey::derive(&ClusterKey::from_bytes([9; 32])),
        5,
        Rights::all(),
        Duration::from_secs(600),
    );
    assert!(
        matches!(client.attach(&foreign), Err(ClientError::Remote(e)) if e.code == ErrorCode::Forbidden)
    );
    assert_eq!(
        remote_code(client.call(Request::new(RIGHTS, 5, vec![]))),
        ErrorCode::Forbidden
    );
}

#[test]
fn a_bad_frame_closes_only_its_own_connection() {
    let server = start_crc_only();
    let good = connect(server.local_addr());
    good.call(Request::new(ECHO, 0, vec![1])).expect("before");

    let valid = Frame {
        header: Header::new(ECHO, 1, 0, 4),
        payload: vec![1, 2, 3, 4],
    }
    .encode();
    let mut bad_crc = valid.clone();
    bad_crc[HEADER_LEN + 1] ^= 0x10;
    let mut oversized = valid.clone();
    oversized[28..32].copy_from_slice(&(MAX_WIRE_PAYLOAD as u32 + 1).to_le_bytes());
    let garbage = vec![0xA5u8; 100];
    for (name, bytes) in [
        ("bad crc", bad_crc),
        ("oversized", oversized),
        ("garbage", garbage),
    ] {
        let mut raw = raw_authenticated(server.local_addr());
        raw.write_all(&bytes).expect("write");
        let err = read_raw_frame(&mut raw);
        assert_eq!(err.header.opcode, opcode::ERROR, "{name}");
        assert_eq!(err.header.status, ErrorCode::BadFrame.to_u16(), "{name}");
        assert_closed(&mut raw);
        good.call(Request::new(ECHO, 0, vec![2])).expect(name);
    }
    // A truncated frame followed by a half-close: the server sees the end mid-frame.
    let mut raw = raw_authenticated(server.local_addr());
    raw.write_all(&valid[..20]).expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("half-close");
    let err = read_raw_frame(&mut raw);
    assert_eq!(err.header.status, ErrorCode::BadFrame.to_u16());
    good.call(Request::new(ECHO, 0, vec![3])).expect("after");
}

#[test]
fn a_slow_response_times_out_and_the_client_recovers() {
    let (server, _) = start();
    let cfg = ClientConfig {
        timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let client = Client::connect(server.local_addr(), key(), cfg).expect("connect");
    assert!(matches!(
        client.call(Request::new(SLEEP, 0, vec![])),
        Err(ClientError::Timeout(_))
    ));
    // The late response is discarded; the connection keeps working.
    let fast = Client::connect(server.local_addr(), key(), config()).expect("connect");
    fast.call(Request::new(ECHO, 0, vec![]))
        .expect("other client");
    let r = client
        .call(Request::new(ECHO, 0, vec![4]))
        .expect("after the timeout");
    assert_eq!(r.payload, vec![4]);
}

#[test]
fn connections_beyond_the_limit_are_refused_as_unavailable() {
    let cfg = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = Server::bind("127.0.0.1:0", key(), Arc::new(TestHandler::default()), cfg)
        .expect("bind")
        .spawn();
    let first = connect(server.local_addr());
    first.ping().expect("first client");
    match Client::connect(server.local_addr(), key(), config()) {
        Err(ClientError::Auth(AuthError::Rejected(e))) => {
            assert_eq!(e.code, ErrorCode::Unavailable)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second connection was accepted beyond the limit"),
    }
    first.ping().expect("the first client still works");
}

#[test]
fn in_flight_requests_fail_when_the_connection_dies() {
    // A fake server that authenticates, reads one request and hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        lego_fabric::auth::server_handshake(&mut s, &key(), 1, FrameProtection::Mac)
            .expect("handshake");
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).expect("request");
    });
    let client = Client::connect(addr, key(), config()).expect("connect");
    let r = client.call(Request::new(ECHO, 0, vec![]));
    assert!(matches!(r, Err(ClientError::Disconnected(_))), "{r:?}");
    fake.join().expect("fake server");
}

#[test]
fn the_client_reconnects_and_reattaches_after_a_server_restart() {
    let (server, _) = start();
    let addr = server.local_addr();
    let client = connect(addr);
    let cap = Capability::issue(&ckey(), 3, Rights::STORAGE, Duration::from_secs(600));
    client.attach(&cap).expect("attach");
    let before = client
        .call(Request::new(RIGHTS, 3, vec![]))
        .expect("before restart");
    assert_eq!(before.incarnation, server.incarnation());
    assert_eq!(client.incarnation(), Some(server.incarnation()));
    let old = server.incarnation();
    server.shutdown();
    let (server, _) = start_at(&addr.to_string());
    assert_ne!(
        server.incarnation(),
        old,
        "a new server draws a new incarnation"
    );
    let mut last = None;
    for _ in 0..5 {
        match client.call(Request::new(RIGHTS, 3, vec![])) {
            Ok(r) => {
                assert_eq!(&r.payload[8..], &Rights::STORAGE.bits().to_le_bytes());
                // The answer says it came from another process than the first one.
                assert_eq!(r.incarnation, server.incarnation());
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    assert!(last.is_none(), "no reconnection: {last:?}");
    server.shutdown();
}

#[test]
fn binding_a_used_address_is_a_clear_error() {
    let (server, _) = start();
    let err = Server::bind(
        server.local_addr(),
        key(),
        Arc::new(TestHandler::default()),
        ServerConfig::default(),
    )
    .err()
    .expect("second bind must fail");
    assert!(matches!(err, ServerError::AddrInUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
}

#[test]
fn shutdown_closes_connections_and_joins() {
    let (server, _) = start();
    let cfg = ClientConfig {
        timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let client = Client::connect(server.local_addr(), key(), cfg).expect("connect");
    client.ping().expect("ping");
    assert_eq!(server.connection_count(), 1);
    server.shutdown();
    // Nothing listens any more: reconnection attempts end at the call's deadline.
    let r = client.ping();
    assert!(matches!(r, Err(ClientError::Disconnected(_))), "{r:?}");
}

/// A client with somewhere else to go gives up on a dead server after one refused
/// connection instead of retrying until its (long) request timeout.
#[test]
fn reconnect_patience_bounds_the_wait_for_a_dead_server() {
    let (server, _) = start();
    let cfg = ClientConfig {
        timeout: Duration::from_secs(60),
        reconnect_patience: Some(Duration::ZERO),
        ..ClientConfig::default()
    };
    let client = Client::connect(server.local_addr(), key(), cfg).expect("connect");
    client.ping().expect("ping");
    server.shutdown();
    let t0 = std::time::Instant::now();
    for _ in 0..3 {
        let r = client.ping();
        assert!(matches!(r, Err(ClientError::Disconnected(_))), "{r:?}");
    }
    // Three calls against a 60 s timeout: each is one refused connection (or none, while
    // the backoff runs), so together they end in a small fraction of one timeout.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[test]
fn clients_and_servers_are_shareable_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Client>();
    shareable::<ServerHandle>();
    shareable::<Capability>();
    shareable::<ClusterKey>();
    fn sendable<T: Send>() {}
    sendable::<Pending>();
}
