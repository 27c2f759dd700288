//! Runs the `legoctl` binary against an in-process manager on loopback.

use std::process::Command;
use std::sync::Arc;

use lego_fabric::{ClientConfig, ClusterKey, Server, ServerConfig};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{ClusterStatus, MonitorKind, RegisterMonitor};
use lego_monitors::manager::service::ManagerService;
use lego_monitors::manager::{Manager, ManagerSettings, MemoryStateStore};

fn legoctl(key: &ClusterKey, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_legoctl"))
        .args(args)
        .env("LEGO_CLUSTER_KEY", key.to_hex())
        .output()
        .expect("run legoctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_place_and_capability() {
    let key = ClusterKey::from_bytes([3; 32]);
    let settings = ManagerSettings {
        region_size: 1 << 20,
        ..Default::default()
    };
    let manager = Arc::new(
        Manager::new(settings, key.clone(), Box::new(MemoryStateStore::default()))
            .expect("manager"),
    );
    let server = Server::bind(
        "127.0.0.1:0",
        key.clone(),
        Arc::new(ManagerService::new(manager)),
        ServerConfig::default(),
    )
    .expect("bind")
    .spawn();
    let addr = server.local_addr().to_string();
    let mc = ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).expect("connect");
    mc.register(&RegisterMonitor {
        kind: MonitorKind::Memory,
        addr: "10.9.9.9:7100".into(),
        capacity_bytes: 8 << 20,
        used_bytes: 4096,
        incarnation: None,
    })
    .expect("register");

    let (ok, out, err) = legoctl(
        &key,
        &[
            "--manager",
            &addr,
            "place-memory",
            "--vnode",
            "4",
            "--size",
            "3M",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("3 region(s)"), "{out}");

    let (ok, out, err) = legoctl(&key, &["--manager", &addr, "status"]);
    assert!(ok, "{err}");
    for want in [
        "MONITORS",
        "10.9.9.9:7100",
        "alive",
        "8.0 MiB",
        "VNODE MEMORY",
        "0-2",
    ] {
        assert!(out.contains(want), "status lacks {want}:\n{out}");
    }
    let (ok, out, err) = legoctl(&key, &["--manager", &addr, "status", "--json"]);
    assert!(ok, "{err}");
    let st: ClusterStatus = serde_json::from_str(&out).expect("json status");
    assert_eq!(st.vnodes[0].memory.regions.len(), 3);

    let (ok, out, err) = legoctl(
        &key,
        &[
            "--manager",
            &addr,
            "capability",
            "--vnode",
            "4",
            "--rights",
            "memory",
        ],
    );
    assert!(ok, "{err}");
    let cap: lego_fabric::Capability = out.trim().parse().expect("capability hex");
    assert_eq!(cap.vnode, 4);

    let (ok, _, err) = legoctl(
        &key,
        &[
            "--manager",
            &addr,
            "capability",
            "--vnode",
            "4",
            "--rights",
            "disk",
        ],
    );
    assert!(!ok && err.contains("not a right"), "{err}");
    let (ok, _, err) = legoctl(
        &key,
        &[
            "--manager",
            &addr,
            "place-memory",
            "--vnode",
            "5",
            "--size",
            "64M",
        ],
    );
    assert!(!ok && err.contains("cannot place"), "{err}");
    // A monitor's own statistics.
    let store = Arc::new(lego_monitors::pagestore::PageStore::new(1 << 20));
    store.write_run(4, 0, &[1u8; 4096]).expect("write");
    let mem = Server::bind(
        "127.0.0.1:0",
        key.clone(),
        Arc::new(lego_monitors::memory_service::MemoryService::new(store)),
        ServerConfig::default(),
    )
    .expect("bind")
    .spawn();
    let maddr = mem.local_addr().to_string();
    let (ok, out, err) = legoctl(
        &key,
        &["monitor-stats", "--kind", "memory", "--addr", &maddr],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["store"]["pages_stored"], 1, "{out}");
    mem.shutdown();

    server.shutdown();
    let (ok, _, err) = legoctl(&key, &["--manager", &addr, "--timeout", "2", "status"]);
    assert!(!ok && err.contains("cannot reach the manager"), "{err}");
}
