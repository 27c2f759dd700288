//! Peers that never authenticate, against a real fabric server on loopback: 2,000 of them,
//! idle or trickling a byte at a time, plus 48 announcing 8 MiB handshake frames, must not
//! lock a legitimate client out, nor cost the server a thread each, nor grow its memory
//! beyond a stated bound; a trickling peer is cut at the handshake deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_fabric::frame::{Header, HEADER_LEN, MAX_PAYLOAD};
use lego_fabric::request::opcode;
use lego_fabric::*;

/// Unauthenticated peers held open at once.
const PEERS: usize = 2000;
/// Of those, how many trickle a byte of a HELLO at a time instead of sitting idle.
const TRICKLERS: usize = 1000;
/// Peers that announce a handshake payload of `MAX_PAYLOAD` bytes.
const OVERSIZED: usize = 48;
/// The bound on the server's growth: threads, and resident memory.
const MAX_EXTRA_THREADS: usize = 32;
const MAX_EXTRA_RSS: u64 = 64 << 20;

struct Echo;

impl Handler for Echo {
    fn handle(&self, _ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        Ok(req.payload)
    }
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x17; 32])
}

fn serve(config: ServerConfig) -> ServerHandle {
    Server::bind("127.0.0.1:0", key(), Arc::new(Echo), config)
        .expect("bind")
        .spawn()
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("tasks").count()
}

/// Resident bytes of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Lets this process hold the peers' descriptors and the server's.
fn raise_descriptor_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= want,
        "this test needs {want} descriptors; the hard limit is {}",
        lim.rlim_max
    );
    lim.rlim_cur = lim.rlim_cur.max(want);
    // SAFETY: `lim` is a valid rlimit within the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// A client HELLO's bytes (header, nonce, role 0 and an empty name: the cluster key), which
/// tricklers send one byte at a time.
fn hello_bytes() -> Vec<u8> {
    let mut nonce = [7u8; 34];
    nonce[32..].fill(0);
    let h = Header::new(opcode::HELLO, 0, 0, nonce.len());
    let mut b = h.encode(&nonce).to_vec();
    b.extend_from_slice(&nonce);
    b
}

/// One attacking peer: its socket and how much of the HELLO it sent.
struct Peer {
    stream: TcpStream,
    sent: usize,
}

fn connect(addr: SocketAddr) -> Peer {
    let stream = TcpStream::connect(addr).expect("connect an unauthenticated peer");
    stream.set_nonblocking(true).expect("nonblocking");
    Peer { stream, sent: 0 }
}

#[test]
fn a_flood_of_unauthenticated_peers_costs_no_threads_and_locks_out_no_client() {
    raise_descriptor_limit(4 * PEERS as u64 + 1024);
    let server = serve(ServerConfig::default());
    let addr = server.local_addr();
    let (threads_before, rss_before) = (threads(), rss());

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    // The attacker: holds PEERS connections; tricklers send one byte each second; a peer the
    // server cuts is replaced at once.
    let attacker = {
        let (stop, connected) = (stop.clone(), connected.clone());
        std::thread::spawn(move || {
            let hello = hello_bytes();
            let mut peers: Vec<Peer> = (0..PEERS).map(|_| connect(addr)).collect();
            connected.store(true, Ordering::SeqCst);
            let mut replaced = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for (i, p) in peers.iter_mut().enumerate() {
                    let mut sink = [0u8; 256];
                    let closed = match (&p.stream).read(&mut sink) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    let cut = closed
                        || (i < TRICKLERS
                            && p.sent < hello.len() - 1
                            && (&p.stream).write(&hello[p.sent..p.sent + 1]).is_err());
                    if cut {
                        *p = connect(addr);
                        replaced += 1;
                    } else if i < TRICKLERS && p.sent < hello.len() - 1 {
                        p.sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            replaced
        })
    };
    while !connected.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }

    // 48 peers announce 8 MiB handshake frames: each is refused before anything is read or
    // allocated for it, with a sentence.
    let oversized: Vec<TcpStream> = (0..OVERSIZED)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            // The announced length sits at bytes 28..32 (encode sets it from the payload).
            let mut h = Header::new(opcode::HELLO, 0, 0, 0).encode(&[]);
            h[28..32].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
            s.write_all(&h).expect("send the header");
            s
        })
        .collect();
    for mut s in oversized {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(answer.len() > HEADER_LEN, "no error frame: {answer:?}");
        let text = String::from_utf8_lossy(&answer[HEADER_LEN..]);
        assert!(
            text.contains("more than the limit of 128 bytes"),
            "the refusal says: {text}"
        );
    }

    // With all of that going on, legitimate clients connect and are served, one after the
    // other, for several handshake deadlines.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let client = Client::connect(addr, key(), ClientConfig::default())
            .expect("a legitimate client is locked out");
        let r = client
            .call(Request::new(0x0100, 0, vec![served as u8]))
            .expect("a legitimate call failed");
        assert_eq!(r.payload, vec![served as u8]);
        served += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (threads_during, rss_during) = (threads(), rss());
    stop.store(true, Ordering::SeqCst);
    let replaced = attacker.join().expect("attacker");
    eprintln!(
        "served {served} clients; server threads +{}, resident +{} KiB; {replaced} peers cut \
         at the handshake deadline and replaced",
        threads_during.saturating_sub(threads_before),
        rss_during.saturating_sub(rss_before) >> 10
    );
    assert!(
        threads_during <= threads_before + MAX_EXTRA_THREADS,
        "{PEERS} unauthenticated peers cost {} threads",
        threads_during - threads_before
    );
    assert!(
        rss_during <= rss_before + MAX_EXTRA_RSS,
        "{PEERS} unauthenticated peers grew the process by {} MiB",
        (rss_during - rss_before) >> 20
    );
    assert!(
        replaced >= TRICKLERS as u64,
        "tricklers were not cut at the handshake deadline (only {replaced} were)"
    );
}

#[test]
fn a_trickling_peer_is_cut_at_the_handshake_deadline() {
    let server = serve(ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    });
    let hello = hello_bytes();
    let mut s = TcpStream::connect(server.local_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let started = Instant::now();
    let mut cut = false;
    // One byte every 200 ms would keep a per-read timeout happy for as long as it likes.
    for b in &hello[..hello.len() - 1] {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            cut = true;
            break;
        }
        let mut sink = [0u8; 64];
        match s.read(&mut sink) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => panic!("the server answered half a HELLO"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "a peer trickling its HELLO was served for {:?}",
        started.elapsed()
    );
    // And a client that does finish its handshake is served.
    let client =
        Client::connect(server.local_addr(), key(), ClientConfig::default()).expect("connect");
    client.ping().expect("ping");
}
