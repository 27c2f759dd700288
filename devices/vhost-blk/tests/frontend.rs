//! Starts the real `lego-vhost-blk` daemon with a file store and drives it as a vhost-user
//! frontend: features, config space, a memfd-backed memory table, one virtqueue laid out here,
//! kick and call eventfds; then writes, reads back, flushes, asks GET_ID, sends a malformed
//! chain, reconnects, and stops the daemon with SIGTERM.

mod common;

use std::process::Command;

use common::*;
use lego_testkit::vhost_user::blk::*;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn file_store_serves_a_vhost_user_frontend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &[]);
    let mut d = Driver::connect(&daemon.socket);

    let cfg = d.config();
    assert_eq!(config_capacity(&cfg), 2048, "capacity");
    assert_eq!(config_blk_size(&cfg), 512, "blk_size");

    let pattern: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(31) % 253) as u8)
        .collect();
    d.mem
        .write_slice(&pattern, GuestAddress(DATA))
        .expect("data");
    assert_eq!(d.request(T_OUT, 16, Some((8192, false))), (1, 0), "write");
    d.mem
        .write_slice(&[0u8; 8192], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(d.request(T_IN, 16, Some((8192, true))), (8193, 0), "read");
    let mut back = vec![0u8; 8192];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read back");
    assert_eq!(back, pattern);

    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0), "flush");
    let file = std::fs::read(&disk).expect("disk file");
    assert_eq!(&file[16 * 512..16 * 512 + 8192], &pattern[..]);

    assert_eq!(d.request(T_GET_ID, 0, Some((20, true))), (21, 0), "get id");
    let mut id = [0u8; 20];
    d.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id[..19], b"lego-local:disk.img");
    assert_eq!(id[19], 0);

    // Errors come back as statuses: past the end is IOERR, an unknown type UNSUPP.
    assert_eq!(d.request(T_IN, 2048, Some((512, true))), (1, 1));
    assert_eq!(d.request(77, 0, None), (1, 2));
    // A chain with no writable byte completes empty, and the queue keeps working.
    assert_eq!(d.submit(&[(HDR, 16, false)]), 0);
    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0));

    // The next frontend is served after this one leaves.
    drop(d);
    let mut d = Driver::connect(&daemon.socket);
    d.mem
        .write_slice(&[0u8; 8192], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(d.request(T_IN, 16, Some((8192, true))), (8193, 0));
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read back");
    assert_eq!(back, pattern, "data survives the reconnection");

    // SIGTERM with a frontend connected: clean exit, socket removed.
    let socket = daemon.socket.clone();
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the socket was not removed");
    drop(d);
}

#[test]
fn two_queues_with_event_idx_are_served_independently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("mq.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &["--queues", "2"]);
    let mut d = Driver::connect_with(&daemon.socket, 2, true);
    let cfg = d.config();
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2, "num_queues");
    // Alternate queues; each round needs an interrupt that EVENT_IDX asked for.
    for round in 0..6u8 {
        let q = usize::from(round % 2);
        d.use_queue(q);
        let block = vec![round + 1; 4096];
        d.mem.write_slice(&block, GuestAddress(DATA)).expect("data");
        assert_eq!(
            d.request(T_OUT, u64::from(round) * 8, Some((4096, false))),
            (1, 0)
        );
    }
    for round in 0..6u8 {
        d.use_queue(usize::from(1 - round % 2));
        assert_eq!(
            d.request(T_IN, u64::from(round) * 8, Some((4096, true))),
            (4097, 0)
        );
        let mut back = vec![0u8; 4096];
        d.mem
            .read_slice(&mut back, GuestAddress(DATA))
            .expect("read");
        assert!(back.iter().all(|&b| b == round + 1), "round {round}");
    }
    assert!(daemon.terminate().success());
}

fn run_failing(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
        .args(args)
        .env("LEGO_CLUSTER_KEY", "00".repeat(32))
        .env("RUST_LOG", "off")
        .output()
        .expect("run lego-vhost-blk");
    assert!(!out.status.success(), "it should have failed: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("d.img");
    let disk = disk.to_str().expect("utf-8");
    let err = run_failing(&[
        "--socket",
        "/nonexistent-dir/x.sock",
        "--store",
        "file",
        "--path",
        disk,
        "--size",
        "1M",
    ]);
    assert!(
        err.contains("cannot listen on /nonexistent-dir/x.sock"),
        "{err}"
    );

    let not_socket = dir.path().join("plain");
    std::fs::write(&not_socket, b"keep me").expect("write");
    let err = run_failing(&[
        "--socket",
        not_socket.to_str().expect("utf-8"),
        "--store",
        "file",
        "--path",
        disk,
    ]);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&not_socket).expect("still there"), b"keep me");

    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().expect("utf-8");
    let err = run_failing(&[
        "--socket",
        sock,
        "--store",
        "remote-memory",
        "--manager",
        "127.0.0.1:1",
        "--vnode",
        "3",
        "--size",
        "16M",
    ]);
    assert!(
        err.contains("cannot reach the manager at 127.0.0.1:1"),
        "{err}"
    );

    let err = run_failing(&["--socket", sock, "--store", "remote-disk", "--vnode", "3"]);
    assert!(err.contains("needs --manager"), "{err}");

    let err = run_failing(&[
        "--socket",
        sock,
        "--store",
        "file",
        "--path",
        disk,
        "--poll-us",
        "20000",
    ]);
    assert!(err.contains("--poll-us 20000 is more than 10000"), "{err}");
}

/// Polling at its longest window (10 ms): requests in quick succession are served, and a
/// device left idle costs no CPU, since the worker polls one window at most after the last
/// request and then sleeps until a kick, which it still answers.
#[test]
fn a_polling_daemon_serves_quick_requests_and_idles_without_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &["--poll-us", "10000"]);
    let mut d = Driver::connect(&daemon.socket);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    d.mem
        .write_slice(&pattern, GuestAddress(DATA))
        .expect("data");
    for i in 0..200u64 {
        assert_eq!(d.request(T_OUT, (i % 64) * 8, Some((4096, false))), (1, 0));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = daemon.cpu_time();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let idle = daemon.cpu_time().saturating_sub(before);
    assert!(
        idle <= std::time::Duration::from_millis(50),
        "an idle polling daemon used {idle:?} of CPU in 1 s"
    );
    d.mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(d.request(T_IN, 8, Some((4096, true))), (4097, 0));
    let mut back = vec![0u8; 4096];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read back");
    assert_eq!(back, pattern);
    assert!(daemon.terminate().success());
}
