//! `lego-vhost-blk --metrics`: the real daemon driven as a vhost-user frontend, its
//! Prometheus endpoint scraped; the counters match the requests the test made.

mod common;

use common::*;
use lego_testkit::metrics::{histogram_count, scrape, value};
use lego_testkit::net::free_loopback_addr;
use lego_testkit::vhost_user::blk::*;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn the_backend_exports_its_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let addr = free_loopback_addr();
    let daemon = Daemon::start_file(dir.path(), &disk, "1M", &["--metrics", &addr]);
    let mut d = Driver::connect(&daemon.socket);

    let before = scrape(&addr);
    assert_eq!(value(&before, "lego_blk_requests_total", &[]), Some(0.0));

    d.mem
        .write_slice(&[7u8; 8192], GuestAddress(DATA))
        .expect("data");
    assert_eq!(d.request(T_OUT, 16, Some((8192, false))), (1, 0), "write");
    assert_eq!(d.request(T_IN, 16, Some((4096, true))), (4097, 0), "read");
    assert_eq!(
        d.request(T_IN, 2048, Some((512, true))),
        (1, 1),
        "past the end"
    );
    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0), "flush");

    let s = scrape(&addr);
    assert_eq!(value(&s, "lego_blk_requests_total", &[]), Some(4.0));
    assert_eq!(value(&s, "lego_blk_errors_total", &[]), Some(1.0));
    assert_eq!(value(&s, "lego_blk_written_bytes_total", &[]), Some(8192.0));
    assert_eq!(value(&s, "lego_blk_read_bytes_total", &[]), Some(4096.0));
    let batches = histogram_count(&s, "lego_blk_batch_latency_seconds").expect("histogram");
    assert!(
        (1.0..=4.0).contains(&batches),
        "{batches} batches for 4 requests made one at a time"
    );

    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the metrics endpoint outlived the daemon"
    );
}
