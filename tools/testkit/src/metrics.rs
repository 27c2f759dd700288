//! Scraping a daemon's Prometheus endpoint in a test: one `GET /metrics` over TCP, the
//! answer checked (200, the text format's content type) and parsed.

use std::io::{Read, Write};
use std::net::TcpStream;

pub use prometheus_parse::Scrape;

/// Scrapes `http://addr/metrics` and parses the answer; panics with the answer if it is not
/// a 200 in the Prometheus text format.
pub fn scrape(addr: &str) -> Scrape {
    let mut s = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to the metrics endpoint {addr}: {e}"));
    write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("the answer is not Prometheus text ({e}):\n{body}"))
}

/// The value of the counter, gauge or untyped sample `name` carrying every label of
/// `labels`, if there is one.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The total count of histogram `name`, if there is one.
pub fn histogram_count(scrape: &Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count),
            _ => None,
        })
}
