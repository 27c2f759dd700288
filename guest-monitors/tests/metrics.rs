//! The monitors' Prometheus endpoints, scraped from real daemons: the values match what the
//! test wrote; a taken metrics address is a clear start-up error.

mod common;

use common::*;
use lego_fabric::Rights;
use lego_monitor_client::client::{ManagerClient, MemoryClient};
use lego_monitor_client::proto::manager::VnodeUp;
use lego_testkit::metrics::{scrape, value, Scrape};
use lego_testkit::net::free_loopback_addr;

/// An address for a daemon's metrics endpoint on `host` (its namespace's address, another
/// port; or a free loopback port).
fn metrics_addr(host: &Host) -> String {
    match &host.ns {
        Some(_) => {
            let ip = host.addr.rsplit_once(':').expect("host:port").0;
            format!("{ip}:9100")
        }
        None => free_loopback_addr(),
    }
}

/// The value of sample `name` (with label `label`=`value`, if given); panics if absent.
fn sample(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let labels: Vec<(&str, &str)> = label.into_iter().collect();
    value(scrape, name, &labels).unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

#[test]
fn the_memory_monitor_exports_what_it_holds() {
    let mut net = Net::new("metrics_memory");
    let h = net.host("m");
    let maddr = metrics_addr(&h);
    let key = key();
    let mut m = Daemon::start(
        &net,
        "memory",
        MEMORY_BIN,
        &h,
        &args(&[
            "--listen",
            &h.addr,
            "--capacity",
            "64M",
            "--metrics",
            &maddr,
        ]),
        &key,
    );
    m.wait_ready(&key);
    // The endpoint is this daemon's: its log names the address.
    eventually("the metrics endpoint in the log", || {
        m.log_text()
            .contains(&format!("http://{maddr}/metrics"))
            .then_some(())
    });

    let before = scrape(&maddr);
    assert_eq!(
        sample(
            &before,
            "lego_monitor_capacity_bytes",
            Some(("kind", "memory"))
        ),
        (64u64 << 20) as f64
    );
    assert_eq!(sample(&before, "lego_memory_pages_stored", None), 0.0);

    // vNode 7 writes 10 pages (one of them zeros), vNode 8 writes 3.
    let write = |vnode: u64, pages: u64| {
        let c = MemoryClient::connect(
            m.addr(),
            key.clone(),
            &cap(&key, vnode, Rights::MEMORY),
            client_config(),
        )
        .expect("connect");
        let mut data = vec![0x5au8; pages as usize * 4096];
        data[..4096].fill(0);
        c.write_run(0, &data).expect("write");
    };
    write(7, 10);
    write(8, 3);

    let after = scrape(&maddr);
    assert_eq!(
        sample(&after, "lego_memory_vnode_pages", Some(("vnode", "7"))),
        9.0
    );
    assert_eq!(
        sample(&after, "lego_memory_vnode_pages", Some(("vnode", "8"))),
        2.0
    );
    assert_eq!(sample(&after, "lego_memory_pages_stored", None), 11.0);
    assert_eq!(
        sample(&after, "lego_memory_pages_written_total", None),
        13.0
    );
    assert_eq!(
        sample(&after, "lego_memory_zero_pages_written_total", None),
        2.0
    );
    assert_eq!(
        sample(&after, "lego_memory_write_requests_total", None),
        2.0
    );
    assert_eq!(
        sample(&after, "lego_monitor_used_bytes", Some(("kind", "memory"))),
        (11 * 4096) as f64
    );
}

#[test]
fn the_manager_exports_its_cluster_and_sees_a_monitor_die() {
    let mut net = Net::new("metrics_manager");
    let key = key();
    let mh = net.host("mgr");
    let maddr = metrics_addr(&mh);
    let state = net.path("manager-state");
    let mut manager = Daemon::start(
        &net,
        "manager",
        MANAGER_BIN,
        &mh,
        &args(&[
            "--listen",
            &mh.addr,
            "--state-dir",
            state.to_str().expect("utf8"),
            "--region-size",
            "64M",
            "--heartbeat-ms",
            "200",
            "--metrics",
            &maddr,
        ]),
        &key,
    );
    manager.wait_ready(&key);
    let h = net.host("mem");
    let mut memory = Daemon::start(
        &net,
        "memory",
        MEMORY_BIN,
        &h,
        &args(&[
            "--listen",
            &h.addr,
            "--capacity",
            "1G",
            "--heartbeat-ms",
            "200",
            "--manager",
            manager.addr(),
        ]),
        &key,
    );
    memory.wait_ready(&key);
    let alive = ("state", "alive");
    eventually("the monitor registered", || {
        let s = scrape(&maddr);
        (sample_or_zero(&s, "lego_manager_monitors", &[("kind", "memory"), alive]) == 1.0)
            .then_some(())
    });

    let mc = ManagerClient::connect(manager.addr(), key.clone(), client_config()).expect("manager");
    mc.place_memory(3, 100 << 20).expect("place");
    let s = scrape(&maddr);
    assert_eq!(sample(&s, "lego_manager_vnodes", None), 1.0);
    assert_eq!(sample_or_zero(&s, "lego_manager_running_vnodes", &[]), 0.0);
    mc.vnode_up(&VnodeUp {
        vnode: 3,
        host: "compute7".into(),
        pid: 42,
        api_socket: None,
        vcpus: 1,
        memory_bytes: 1 << 30,
        devices: vec![],
        started_unix_ms: 1,
    })
    .expect("announce");
    let s = scrape(&maddr);
    assert_eq!(
        sample(
            &s,
            "lego_manager_running_vnodes",
            Some(("host", "compute7"))
        ),
        1.0
    );
    assert_eq!(
        sample(&s, "lego_manager_regions", Some(("health", "healthy"))),
        2.0
    );
    let mon = ("monitor", h.addr.as_str());
    assert_eq!(
        sample(&s, "lego_manager_monitor_reserved_bytes", Some(mon)),
        (128u64 << 20) as f64
    );
    assert_eq!(
        sample(&s, "lego_manager_monitor_capacity_bytes", Some(mon)),
        (1u64 << 30) as f64
    );

    memory.kill9();
    eventually("the manager counts the monitor dead", || {
        let s = scrape(&maddr);
        (sample_or_zero(
            &s,
            "lego_manager_monitors",
            &[("kind", "memory"), ("state", "dead")],
        ) == 1.0)
            .then_some(())
    });
}

/// The value of the sample `name` with all of `labels`, or 0 if there is none.
fn sample_or_zero(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or(0.0)
}

#[test]
fn a_taken_metrics_address_is_a_clear_error() {
    let mut net = Net::new("metrics_taken");
    let h = net.host("m");
    let maddr = metrics_addr(&h);
    let key = key();
    let mut first = Daemon::start(
        &net,
        "first",
        MEMORY_BIN,
        &h,
        &args(&["--listen", &h.addr, "--metrics", &maddr]),
        &key,
    );
    first.wait_ready(&key);
    // Same metrics address, so the same host (namespace), another fabric port.
    let second_host = Host {
        ns: h.ns.clone(),
        addr: match &h.ns {
            Some(_) => format!("{}:9101", h.addr.rsplit_once(':').unwrap().0),
            None => free_loopback_addr(),
        },
    };
    let mut second = Daemon::start(
        &net,
        "second",
        MEMORY_BIN,
        &second_host,
        &args(&["--listen", &second_host.addr, "--metrics", &maddr]),
        &key,
    );
    let status = second.wait_exit();
    assert!(!status.success(), "a second endpoint on {maddr} started");
    let log = second.log_text();
    assert!(
        log.contains(&format!("cannot serve metrics on {maddr}")),
        "the error names the address:\n{log}"
    );
}
