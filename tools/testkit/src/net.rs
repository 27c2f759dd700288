//! Free loopback ports.

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it for a listener that
/// is closed again before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_loopback_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_loopback_addr();
        TcpListener::bind(&addr).expect("the port is free");
    }
}
