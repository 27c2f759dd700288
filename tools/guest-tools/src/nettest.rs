//! TCP checks and measurements between vNodes and hosts: a pattern stream sent by one side
//! and verified by the other (block by block, with its CRC32C), and a request-response
//! round trip. The same binary runs in guests and on the compute host.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::pattern::{fill_block, BLOCK_SIZE};

/// Errors of the network checks.
#[derive(Debug, thiserror::Error)]
pub enum NetTestError {
    /// Could not listen on the port.
    #[error("cannot listen on port {port}")]
    Listen {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No connection could be made before the deadline.
    #[error("cannot connect to {addr} within {secs:.1} s")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// The deadline.
        secs: f64,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// The connection failed while moving data.
    #[error("the connection with {addr} failed while {what}")]
    Transfer {
        /// The peer.
        addr: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What one side of a pattern transfer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes moved.
    pub bytes: u64,
    /// CRC32C of every byte moved.
    pub crc: u32,
    /// The first 4 KiB block that did not hold its pattern (receiver only).
    pub first_bad: Option<u64>,
    /// How long it took.
    pub elapsed: Duration,
    /// The peer.
    pub peer: String,
}

impl Transfer {
    /// MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Connects to `addr`, trying again for up to `wait` (the peer may still be booting).
pub fn connect(addr: SocketAddr, wait: Duration) -> Result<TcpStream, NetTestError> {
    let deadline = Instant::now() + wait;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(source) if Instant::now() >= deadline => {
                return Err(NetTestError::Connect {
                    addr,
                    secs: wait.as_secs_f64(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Sends `blocks` 4 KiB pattern blocks under `seed` to `addr`, then closes its side.
pub fn send(
    addr: SocketAddr,
    seed: u64,
    blocks: u64,
    wait: Duration,
) -> Result<Transfer, NetTestError> {
    let mut s = connect(addr, wait)?;
    let failed = |what| {
        move |source| NetTestError::Transfer {
            addr: addr.to_string(),
            what,
            source,
        }
    };
    let start = Instant::now();
    let mut crc = 0u32;
    let mut buf = vec![0u8; BLOCK_SIZE * 16];
    let mut b = 0u64;
    while b < blocks {
        let n = (blocks - b).min(16);
        for i in 0..n as usize {
            fill_block(
                seed,
                b + i as u64,
                &mut buf[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
            );
        }
        let chunk = &buf[..n as usize * BLOCK_SIZE];
        crc = crc32c::crc32c_append(crc, chunk);
        s.write_all(chunk).map_err(failed("sending"))?;
        b += n;
    }
    s.shutdown(Shutdown::Write).map_err(failed("closing"))?;
    // The receiver closes once it has read everything: the transfer ends there.
    let mut rest = [0u8; 64];
    while s
        .read(&mut rest)
        .map_err(failed("waiting for the receiver"))?
        > 0
    {}
    Ok(Transfer {
        bytes: blocks * BLOCK_SIZE as u64,
        crc,
        first_bad: None,
        elapsed: start.elapsed(),
        peer: addr.to_string(),
    })
}

/// Accepts one connection on `port` and reads it to the end, checking every 4 KiB block
/// against the pattern under `seed`.
pub fn receive(port: u16, seed: u64) -> Result<Transfer, NetTestError> {
    let l = TcpListener::bind(("0.0.0.0", port))
        .map_err(|source| NetTestError::Listen { port, source })?;
    let (mut s, peer) = l
        .accept()
        .map_err(|source| NetTestError::Listen { port, source })?;
    let failed = |source| NetTestError::Transfer {
        addr: peer.to_string(),
        what: "receiving",
        source,
    };
    let start = Instant::now();
    let (mut crc, mut bytes, mut first_bad) = (0u32, 0u64, None);
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut want = vec![0u8; BLOCK_SIZE];
    let mut filled = 0usize;
    loop {
        let n = s.read(&mut block[filled..]).map_err(failed)?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &block[filled..filled + n]);
        filled += n;
        bytes += n as u64;
        if filled == BLOCK_SIZE {
            let b = bytes / BLOCK_SIZE as u64 - 1;
            fill_block(seed, b, &mut want);
            if first_bad.is_none() && block != want {
                first_bad = Some(b);
            }
            filled = 0;
        }
    }
    if filled > 0 && first_bad.is_none() {
        first_bad = Some(bytes / BLOCK_SIZE as u64);
    }
    let elapsed = start.elapsed();
    let _ = s.shutdown(Shutdown::Both);
    Ok(Transfer {
        bytes,
        crc,
        first_bad,
        elapsed,
        peer: peer.ip().to_string(),
    })
}

/// Serves echo on `port` forever: every byte read is written back, a thread per client.
pub fn echo_server(port: u16) -> Result<(), NetTestError> {
    let l = TcpListener::bind(("0.0.0.0", port))
        .map_err(|source| NetTestError::Listen { port, source })?;
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut r = &s;
            let mut w = &s;
            let _ = io::copy(&mut r, &mut w);
        });
    }
    Ok(())
}

/// Round trips of `size`-byte messages to an echo server at `addr`, in microseconds, sorted.
pub fn round_trips(
    addr: SocketAddr,
    count: usize,
    size: usize,
    wait: Duration,
) -> Result<Vec<f64>, NetTestError> {
    let mut s = connect(addr, wait)?;
    let failed = |what| {
        move |source| NetTestError::Transfer {
            addr: addr.to_string(),
            what,
            source,
        }
    };
    let msg = vec![0x5au8; size.max(1)];
    let mut back = vec![0u8; msg.len()];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&msg).map_err(failed("sending"))?;
        s.read_exact(&mut back)
            .map_err(failed("reading the echo"))?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_pattern_stream_arrives_whole_and_checks() {
        let port = free_port();
        let rx = std::thread::spawn(move || receive(port, 7).unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let sent = send(addr, 7, 300, Duration::from_secs(5)).unwrap();
        let got = rx.join().unwrap();
        assert_eq!(
            (got.bytes, got.crc, got.first_bad),
            (sent.bytes, sent.crc, None)
        );
        assert_eq!(got.bytes, 300 * 4096);
    }

    #[test]
    fn a_stream_under_another_seed_is_caught() {
        let port = free_port();
        let rx = std::thread::spawn(move || receive(port, 8).unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        send(addr, 7, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(rx.join().unwrap().first_bad, Some(0));
    }

    #[test]
    fn echo_round_trips_are_measured() {
        let port = free_port();
        std::thread::spawn(move || echo_server(port));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let rtts = round_trips(addr, 50, 64, Duration::from_secs(5)).unwrap();
        assert_eq!(rtts.len(), 50);
        assert!(quantile(&rtts, 0.5) > 0.0 && quantile(&rtts, 0.5) <= quantile(&rtts, 0.99));
    }

    #[test]
    fn nobody_listening_is_a_clear_error() {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let e = send(addr, 1, 1, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("cannot connect to {addr} within 0.3 s")),
            "{e}"
        );
    }
}
