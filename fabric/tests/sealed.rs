//! Frames after the handshake carry a MAC and an implicit sequence number: a man in the
//! middle (a real TCP proxy between a real client and server) that alters a frame and fixes
//! its CRC, replays one, or reads one is caught or sees nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lego_fabric::frame::{Header, HEADER_LEN};
use lego_fabric::*;

const ECHO: u16 = 0x0100;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([42; 32])
}

/// Echoes payloads and records every request it served.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Vec<u8>>>,
}

impl Handler for Recorder {
    fn handle(&self, _ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        self.seen
            .lock()
            .expect("recorder lock")
            .push(req.payload.clone());
        Ok(req.payload)
    }
}

/// What the proxy does to the first frame after the handshake in one direction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    /// Pass everything.
    None,
    /// Flip a payload byte and recompute the CRC, as an attacker who knows the format would.
    Flip,
    /// Send the frame twice.
    Replay,
}

/// Which way the attack goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    ToServer,
    ToClient,
}

/// A one-connection proxy that forwards whole frames and keeps a copy of what it saw.
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

fn read_frame_bytes(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let header = Header::decode(&h).ok()?;
    let mut bytes = h.to_vec();
    bytes.resize(HEADER_LEN + header.payload_len as usize, 0);
    s.read_exact(&mut bytes[HEADER_LEN..]).ok()?;
    Some(bytes)
}

/// Forwards frames from `from` to `to`; the third frame (the first after HELLO and AUTH) is
/// attacked as told.
fn pump(mut from: TcpStream, mut to: TcpStream, attack: Attack, seen: Arc<Mutex<Vec<u8>>>) {
    let mut n = 0;
    while let Some(mut bytes) = read_frame_bytes(&mut from) {
        n += 1;
        seen.lock().expect("seen").extend_from_slice(&bytes);
        let copies = if n == 3 && attack == Attack::Replay {
            2
        } else {
            1
        };
        if n == 3 && attack == Attack::Flip && bytes.len() > HEADER_LEN {
            bytes[HEADER_LEN] ^= 0x01;
            let header = Header::decode(&bytes).expect("header");
            let fixed = header.encode(&bytes[HEADER_LEN..]);
            bytes[..HEADER_LEN].copy_from_slice(&fixed);
        }
        for _ in 0..copies {
            if to.write_all(&bytes).is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Proxy {
    fn start(server: SocketAddr, attack: Attack, direction: Direction) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let (client, _) = listener.accept().expect("accept");
            let upstream = TcpStream::connect(server).expect("connect upstream");
            let (to_server, to_client) = match direction {
                Direction::ToServer => (attack, Attack::None),
                Direction::ToClient => (Attack::None, attack),
            };
            let (c2, u2) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            let seen3 = seen2.clone();
            let up = std::thread::spawn(move || pump(client, upstream, to_server, seen2));
            pump(u2, c2, to_client, seen3);
            let _ = up.join();
        });
        Proxy { addr, seen, thread }
    }
}

/// A server of `floor`, a proxy in front of it attacking as told, and a client asking for
/// `want` connected through the proxy.
struct Rig {
    server: ServerHandle,
    handler: Arc<Recorder>,
    proxy: Proxy,
    client: Client,
}

impl Rig {
    fn new(
        floor: FrameProtection,
        want: FrameProtection,
        attack: Attack,
        direction: Direction,
    ) -> Rig {
        let handler = Arc::new(Recorder::default());
        let cfg = ServerConfig {
            protection: floor,
            ..ServerConfig::default()
        };
        let server = Server::bind("127.0.0.1:0", key(), handler.clone(), cfg)
            .expect("bind")
            .spawn();
        let proxy = Proxy::start(server.local_addr(), attack, direction);
        let cfg = ClientConfig {
            timeout: Duration::from_secs(10),
            reconnect_patience: Some(Duration::ZERO),
            protection: want,
            ..ClientConfig::default()
        };
        let client = Client::connect(proxy.addr, key(), cfg).expect("connect through the proxy");
        Rig {
            server,
            handler,
            proxy,
            client,
        }
    }

    /// Sends `payload` to be echoed.
    fn echo(&self, payload: &[u8]) -> Result<Response, ClientError> {
        self.client.call(Request::new(ECHO, 0, payload.to_vec()))
    }

    /// The requests the handler served.
    fn served(&self) -> Vec<Vec<u8>> {
        self.handler.seen.lock().expect("seen").clone()
    }

    /// Closes everything; returns every byte the proxy saw.
    fn finish(self) -> Vec<u8> {
        drop(self.client);
        drop(self.server);
        let _ = self.proxy.thread.join();
        let seen = self.proxy.seen.lock().expect("seen").clone();
        seen
    }
}

const SECRET: &[u8] = b"the tenant's page: 0123456789abcdef";

fn shows_secret(wire: &[u8]) -> bool {
    wire.windows(SECRET.len()).any(|w| w == SECRET)
}

#[test]
fn under_crc_only_an_altered_frame_is_served_altered() {
    // The control: a CRC is no protection against an attacker who recomputes it.
    let crc = FrameProtection::Crc;
    let rig = Rig::new(crc, crc, Attack::Flip, Direction::ToServer);
    let r = rig.echo(SECRET).expect("served");
    assert_ne!(r.payload, SECRET, "the proxy altered the request");
    assert_eq!(rig.served().len(), 1);
    rig.finish();
}

#[test]
fn an_altered_request_is_refused_and_never_served() {
    for p in [FrameProtection::Mac, FrameProtection::Encrypt] {
        let rig = Rig::new(p, p, Attack::Flip, Direction::ToServer);
        let r = rig.echo(SECRET);
        assert!(
            matches!(r, Err(ClientError::Disconnected(_))),
            "{p}: the connection must be closed, got {r:?}"
        );
        assert!(
            rig.served().is_empty(),
            "{p}: the altered request reached the handler"
        );
        rig.finish();
    }
}

#[test]
fn an_altered_response_is_refused_not_returned() {
    for p in [FrameProtection::Mac, FrameProtection::Encrypt] {
        let rig = Rig::new(p, p, Attack::Flip, Direction::ToClient);
        match rig.echo(SECRET) {
            Err(ClientError::Disconnected(why)) => {
                assert!(why.contains("authentication"), "{p}: {why}")
            }
            other => panic!("{p}: an altered response must not be returned: {other:?}"),
        }
        rig.finish();
    }
}

#[test]
fn a_replayed_request_is_refused_and_served_once() {
    let mac = FrameProtection::Mac;
    let rig = Rig::new(mac, mac, Attack::Replay, Direction::ToServer);
    // The first copy is served; the replay fails its tag and the server closes the
    // connection, so the next request on it fails.
    let first = rig.echo(SECRET);
    let second = rig.echo(b"next");
    assert!(
        first.is_err() || second.is_err(),
        "the replay went unnoticed: {first:?} {second:?}"
    );
    assert_eq!(rig.served(), vec![SECRET.to_vec()], "served exactly once");
    rig.finish();
}

#[test]
fn encrypted_frames_show_the_proxy_no_payload() {
    for (p, visible) in [
        (FrameProtection::Mac, true),
        (FrameProtection::Encrypt, false),
    ] {
        let rig = Rig::new(p, p, Attack::None, Direction::ToServer);
        assert_eq!(rig.echo(SECRET).expect("echo").payload, SECRET);
        let wire = rig.finish();
        assert_eq!(shows_secret(&wire), visible, "{p}: plaintext on the wire");
    }
}

#[test]
fn a_client_asking_for_less_gets_the_servers_floor() {
    let rig = Rig::new(
        FrameProtection::Encrypt,
        FrameProtection::Crc,
        Attack::None,
        Direction::ToServer,
    );
    assert_eq!(rig.echo(SECRET).expect("echo").payload, SECRET);
    let wire = rig.finish();
    assert!(
        !shows_secret(&wire),
        "the server's floor (encrypt) was not applied"
    );
}
