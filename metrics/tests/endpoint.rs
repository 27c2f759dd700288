//! The metrics endpoint over real TCP: a scrape parses as Prometheus text and carries the
//! registry's values; other paths and methods get errors; a dropped server stops listening.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use lego_metrics::collect;
use lego_metrics::prometheus_client::collector::Collector;
use lego_metrics::prometheus_client::encoding::DescriptorEncoder;
use lego_metrics::prometheus_client::metrics::counter::Counter;
use lego_metrics::prometheus_client::registry::Registry;
use lego_metrics::MetricsServer;

#[derive(Debug)]
struct Held;

impl Collector for Held {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        collect::gauge(&mut e, "test_capacity_bytes", "Capacity.", 4096)?;
        collect::counter(&mut e, "test_pages_written", "Pages written.", 17)?;
        collect::histogram(
            &mut e,
            "test_latency_seconds",
            "Latency.",
            0.5,
            &[(0.001, 2), (0.01, 3), (f64::INFINITY, 1)],
        )?;
        collect::gauge_family(
            &mut e,
            "test_vnode_pages",
            "Pages per vNode.",
            [
                (vec![("vnode", "1".to_string())], 5),
                (vec![("vnode", "2".to_string())], 12),
            ],
        )
    }
}

fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(s, "{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, vnode: Option<&str>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && vnode.is_none_or(|v| s.labels.get("vnode") == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {vnode:?} in {:?}", scrape.samples));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn a_scrape_carries_the_registry_and_bad_requests_get_errors() {
    let mut registry = Registry::default();
    let requests: Counter = Counter::default();
    registry.register("test_requests", "Requests served.", requests.clone());
    registry.register_collector(Box::new(Held));
    requests.inc_by(3);
    let server = MetricsServer::start("127.0.0.1:0", registry).expect("start");
    let addr = server.local_addr();

    let (status, body) = request(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    assert_eq!(value(&scrape, "test_requests_total", None), 3.0);
    assert_eq!(value(&scrape, "test_capacity_bytes", None), 4096.0);
    assert_eq!(value(&scrape, "test_pages_written_total", None), 17.0);
    assert_eq!(value(&scrape, "test_vnode_pages", Some("1")), 5.0);
    assert_eq!(value(&scrape, "test_vnode_pages", Some("2")), 12.0);
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "test_latency_seconds")
        .expect("the histogram");
    let prometheus_parse::Value::Histogram(buckets) = &latency.value else {
        panic!("test_latency_seconds is {:?}", latency.value)
    };
    let cumulative: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
    assert_eq!(
        cumulative,
        vec![(0.001, 2.0), (0.01, 5.0), (f64::INFINITY, 6.0)]
    );

    // Live: a later scrape sees a later value.
    requests.inc();
    let (_, body) = request(addr, "GET", "/metrics");
    assert!(body.contains("test_requests_total 4"), "{body}");

    let (status, body) = request(addr, "GET", "/nothing");
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    let (status, body) = request(addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert!(body.contains("GET"), "{body}");

    // tiny_http closes its listener from its accept thread just after the drop returns.
    drop(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoint still listens 5 s after the server was dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_taken_address_is_a_clear_error() {
    let first = MetricsServer::start("127.0.0.1:0", Registry::default()).unwrap();
    let taken = first.local_addr().to_string();
    let err = MetricsServer::start(&taken, Registry::default())
        .err()
        .expect("a second bind of the same address fails");
    assert!(
        err.to_string().contains(&taken),
        "the error names the address: {err}"
    );
}
