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

/// An in-process manager with `settings` on a loopback port: the manager, its server and its
/// address.
fn start_manager(
    key: &ClusterKey,
    settings: ManagerSettings,
) -> (Arc<Manager>, lego_fabric::ServerHandle, String) {
    let manager = Arc::new(
        Manager::new(
            settings,
            lego_fabric::CapabilityKey::derive(key),
            Box::new(MemoryStateStore::default()),
        )
        .expect("manager"),
    );
    let server = Server::bind(
        "127.0.0.1:0",
        key.clone(),
        Arc::new(ManagerService::new(manager.clone())),
        ServerConfig::default(),
    )
    .expect("bind")
    .spawn();
    let addr = server.local_addr().to_string();
    (manager, server, addr)
}

#[test]
fn status_place_and_capability() {
    let key = ClusterKey::from_bytes([3; 32]);
    let settings = ManagerSettings {
        region_size: 1 << 20,
        ..Default::default()
    };
    let (_manager, server, addr) = start_manager(&key, settings);
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

#[test]
fn volumes_are_listed_and_deleted_but_not_under_a_running_vnode() {
    let key = ClusterKey::from_bytes([5; 32]);
    let (_manager, server, addr) = start_manager(&key, ManagerSettings::default());
    let dir = tempfile::tempdir().unwrap();
    let volumes = Arc::new(lego_monitors::volume::VolumeStore::open(dir.path()).expect("store"));
    let storage = Server::bind(
        "127.0.0.1:0",
        key.clone(),
        Arc::new(lego_monitors::storage_service::StorageService::new(
            volumes.clone(),
            64 << 20,
        )),
        ServerConfig::default(),
    )
    .expect("bind storage")
    .spawn();
    let saddr = storage.local_addr().to_string();
    let mc = ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).expect("connect");
    mc.register(&RegisterMonitor {
        kind: MonitorKind::Storage,
        addr: saddr.clone(),
        capacity_bytes: 64 << 20,
        used_bytes: 0,
        incarnation: None,
    })
    .expect("register");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--manager", addr.as_str()];
        all.extend_from_slice(args);
        legoctl(&key, &all)
    };
    let (ok, _, err) = ctl(&[
        "create-volume",
        "--vnode",
        "3",
        "--name",
        "data",
        "--size",
        "4M",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = ctl(&["volume", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("data") && out.contains(&saddr), "{out}");

    // While vNode 3 runs, its volume is not deleted.
    mc.vnode_up(&lego_monitor_client::proto::manager::VnodeUp {
        vnode: 3,
        host: "compute1".into(),
        pid: 77,
        api_socket: None,
        vcpus: 1,
        memory_bytes: 1 << 28,
        devices: vec![],
        started_unix_ms: 0,
    })
    .expect("vnode up");
    let (ok, out, err) = ctl(&["vnode", "list"]);
    assert!(
        ok && out.contains("compute1") && out.contains("77"),
        "{out}{err}"
    );
    let (ok, _, err) = ctl(&["volume", "delete", "--vnode", "3", "--name", "data"]);
    assert!(!ok, "deleted under a running vNode");
    assert!(
        err.contains("vNode 3 is running (pid 77 on compute1)"),
        "{err}"
    );
    let (ok, _, err) = ctl(&["vnode", "stop", "--vnode", "3"]);
    assert!(!ok && err.contains("runs without an API socket"), "{err}");
    mc.vnode_down(&lego_monitor_client::proto::manager::VnodeDown {
        vnode: 3,
        pid: 77,
        host: "compute1".into(),
    })
    .expect("vnode down");

    let (ok, out, err) = ctl(&["volume", "delete", "--vnode", "3", "--name", "data"]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted"), "{out}");
    assert!(
        volumes.list(3).expect("list").is_empty(),
        "the data is still on the monitor"
    );
    let (ok, out, _) = ctl(&["volume", "list"]);
    assert!(ok && out.contains("(none placed)"), "{out}");
    let (ok, _, err) = ctl(&["volume", "delete", "--vnode", "3", "--name", "data"]);
    assert!(!ok && err.contains("vNode 3 has no volume 'data'"), "{err}");
    storage.shutdown();
    server.shutdown();
}

/// A storage monitor that dies after its last heartbeat is still placed on; the volume it
/// cannot create is not left reserved: `create-volume` rolls its placement back.
#[test]
fn a_volume_that_cannot_be_created_leaves_no_placement() {
    let key = ClusterKey::from_bytes([6; 32]);
    let (manager, server, addr) = start_manager(&key, ManagerSettings::default());
    // A port that nothing listens on any more: the monitor "died" after registering.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = gone.local_addr().expect("addr").to_string();
    drop(gone);
    let mc = ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).expect("connect");
    mc.register(&RegisterMonitor {
        kind: MonitorKind::Storage,
        addr: dead_addr.clone(),
        capacity_bytes: 64 << 20,
        used_bytes: 0,
        incarnation: None,
    })
    .expect("register");
    let (ok, _, err) = legoctl(
        &key,
        &[
            "--manager",
            &addr,
            "create-volume",
            "--vnode",
            "8",
            "--name",
            "data",
            "--size",
            "4M",
        ],
    );
    assert!(!ok, "a volume was created on a monitor that is gone");
    assert!(
        err.contains(&dead_addr) && err.contains("rolled back"),
        "{err}"
    );
    let st = manager.status();
    assert!(
        st.vnodes.iter().all(|v| v.volumes.is_empty()),
        "the failed volume is still placed: {:?}",
        st.vnodes
    );
    assert_eq!(
        st.monitors.iter().map(|m| m.reserved_bytes).sum::<u64>(),
        0,
        "capacity is still reserved"
    );
    server.shutdown();
}

#[test]
fn only_a_dead_monitor_holding_nothing_is_forgotten() {
    let key = ClusterKey::from_bytes([6; 32]);
    let settings = ManagerSettings {
        region_size: 1 << 20,
        heartbeat_interval: std::time::Duration::from_millis(20),
        missed_heartbeats: 2,
        copies: Some(1),
        ..Default::default()
    };
    let (manager, server, addr) = start_manager(&key, settings);
    let mc = ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).expect("connect");
    for m in ["10.0.0.1:7100", "10.0.0.2:7100"] {
        mc.register(&RegisterMonitor {
            kind: MonitorKind::Memory,
            addr: m.into(),
            capacity_bytes: 1 << 20,
            used_bytes: 0,
            incarnation: None,
        })
        .expect("register");
    }
    // One region, on one of the two (each has room for exactly one).
    mc.place_memory(9, 1 << 20).expect("place");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--manager", addr.as_str()];
        all.extend_from_slice(args);
        legoctl(&key, &all)
    };
    let (ok, _, err) = ctl(&["monitor", "forget", "--addr", "10.0.0.1:7100"]);
    assert!(!ok && err.contains("is alive"), "{err}");
    let (ok, _, err) = ctl(&["monitor", "forget", "--addr", "10.9.9.9:1"]);
    assert!(!ok && err.contains("not registered"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    manager.check_liveness();
    let st = mc.status().expect("status");
    let holder = st.vnodes[0].memory.regions[0].monitor.clone();
    let empty = st
        .monitors
        .iter()
        .map(|m| m.addr.clone())
        .find(|a| *a != holder)
        .unwrap();
    let (ok, _, err) = ctl(&["monitor", "forget", "--addr", &holder]);
    assert!(!ok && err.contains("still holds"), "{err}");
    let (ok, out, err) = ctl(&["monitor", "forget", "--addr", &empty]);
    assert!(ok, "{err}");
    assert!(out.contains("forgotten"), "{out}");
    let st = mc.status().expect("status");
    assert_eq!(st.monitors.len(), 1);
    assert_eq!(st.monitors[0].addr, holder);
    server.shutdown();
}

#[test]
fn credentials_are_issued_to_files_and_shown_without_their_secret() {
    let key = ClusterKey::from_bytes([4; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("host-a.cred");
    let f = file.to_str().expect("utf-8");
    let (ok, _, err) = legoctl(
        &key,
        &[
            "credential",
            "issue",
            "--role",
            "compute",
            "--name",
            "host-a",
            "-o",
            f,
        ],
    );
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credential file is private");
    let issued = lego_fabric::Credential::from_file(&file).expect("a credential");
    assert_eq!(
        issued,
        key.issue_credential(lego_fabric::Role::Compute, "host-a")
            .expect("issue")
    );
    let (ok, out, err) = legoctl(&key, &["credential", "show", f]);
    assert!(ok, "{err}");
    assert_eq!(out, "role compute\nname host-a\n");
    let text = std::fs::read_to_string(&file).expect("read");
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret "))
        .expect("a secret line");
    assert!(!out.contains(secret) && !err.contains(secret));
    // An existing file is not overwritten; bad names and the cluster role are refused.
    let (ok, _, err) = legoctl(
        &key,
        &[
            "credential",
            "issue",
            "--role",
            "operator",
            "--name",
            "x",
            "-o",
            f,
        ],
    );
    assert!(!ok && err.contains("could not be read or written"), "{err}");
    for (role, name) in [("compute", "a b"), ("cluster", "a")] {
        let (ok, _, err) = legoctl(
            &key,
            &["credential", "issue", "--role", role, "--name", name],
        );
        assert!(!ok, "{role} {name}: {err}");
    }
    // Issuing needs the cluster key: a credential cannot issue another.
    let out = Command::new(env!("CARGO_BIN_EXE_legoctl"))
        .args(["credential", "issue", "--role", "operator", "--name", "ops"])
        .env("LEGO_CLUSTER_KEY_FILE", &file)
        .env_remove("LEGO_CLUSTER_KEY")
        .output()
        .expect("run legoctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a credential issued a credential");
    assert!(err.contains("needs the cluster key itself"), "{err}");
}

#[test]
fn a_compute_credential_is_refused_what_needs_the_operator_role() {
    let key = ClusterKey::from_bytes([5; 32]);
    let settings = ManagerSettings {
        region_size: 1 << 20,
        ..Default::default()
    };
    let (_manager, _server, addr) = start_manager(&key, settings);
    let dir = tempfile::tempdir().expect("tempdir");
    let run_as = |role: &str, args: &[&str]| {
        let file = dir.path().join(role);
        if !file.exists() {
            let r = role.parse().expect("role");
            key.issue_credential(r, role)
                .expect("issue")
                .write_file(&file)
                .expect("write");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_legoctl"))
            .args([
                "--key-file",
                file.to_str().expect("utf-8"),
                "--manager",
                &addr,
            ])
            .args(args)
            .env_remove("LEGO_CLUSTER_KEY")
            .output()
            .expect("run legoctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run_as("compute", &["capability", "--vnode", "4"]);
    assert!(!ok && err.contains("may not act on vNode 4"), "{err}");
    let (ok, err) = run_as("compute", &["release", "--vnode", "4"]);
    assert!(!ok && err.contains("may not act on vNode 4"), "{err}");
    let (ok, err) = run_as("operator", &["status"]);
    assert!(ok, "{err}");
}

#[test]
fn capability_keys_are_generated_private_and_their_public_keys_printed() {
    let key = ClusterKey::from_bytes([6; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cap.key");
    let f = file.to_str().expect("utf-8");
    let (ok, out, err) = legoctl(&key, &["capability-key", "generate", "-o", f]);
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the signing key file is private");
    let signer = lego_fabric::CapabilityKey::from_file(&file).expect("a key file");
    assert_eq!(out.trim(), signer.public().to_string());
    let (ok, again, err) = legoctl(&key, &["capability-key", "public", f]);
    assert!(ok, "{err}");
    assert_eq!(again, out);
    let (ok, derived, err) = legoctl(&key, &["capability-key", "public"]);
    assert!(ok, "{err}");
    assert_eq!(
        derived.trim(),
        lego_fabric::CapabilityPublicKey::derive(&key).to_string()
    );
    let (ok, _, _) = legoctl(&key, &["capability-key", "generate", "-o", f]);
    assert!(!ok, "an existing key file was overwritten");
}

#[test]
fn vnode_addresses_are_allocated_listed_and_a_full_pool_is_a_clear_error() {
    let key = ClusterKey::from_bytes([9; 32]);
    let settings = ManagerSettings {
        vnode_subnet: "10.99.5.0/30".parse().expect("subnet"),
        ..Default::default()
    };
    let (_manager, server, addr) = start_manager(&key, settings);
    let ctl = |args: &[&str]| {
        let mut all = vec!["--manager", addr.as_str()];
        all.extend_from_slice(args);
        legoctl(&key, &all)
    };
    let (ok, out, err) = ctl(&["vnode", "address", "--vnode", "8"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "vNode 8: address 10.99.5.2/30 mac 02:4c:47:63:05:02 gateway 10.99.5.1\n"
    );
    let (ok, again, _) = ctl(&["vnode", "address", "--vnode", "8"]);
    assert!(ok && again == out, "{again}");

    // The status lists it; vnode list and vnode info show a running vNode's.
    let (ok, out, err) = ctl(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("VNODE ADDRESSES") && out.contains("10.99.5.2/30  02:4c:47:63:05:02"),
        "{out}"
    );
    let mc = ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).expect("connect");
    mc.vnode_up(&lego_monitor_client::proto::manager::VnodeUp {
        vnode: 8,
        host: "compute1".into(),
        pid: 88,
        api_socket: None,
        vcpus: 1,
        memory_bytes: 1 << 28,
        devices: vec![],
        started_unix_ms: 0,
    })
    .expect("vnode up");
    let (ok, out, err) = ctl(&["vnode", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ADDRESS") && out.contains("10.99.5.2/30  02:4c:47:63:05:02"),
        "{out}"
    );
    let (ok, out, err) = ctl(&["vnode", "info", "--vnode", "8"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(info["address"], "10.99.5.2/30");
    assert_eq!(info["mac"], "02:4c:47:63:05:02");
    assert_eq!(info["gateway"], "10.99.5.1");

    // A /30 holds one vNode: the next is refused, until the first is released.
    let (ok, _, err) = ctl(&["vnode", "address", "--vnode", "9"]);
    assert!(!ok);
    assert!(
        err.contains(
            "the vNode address pool 10.99.5.0/30 is exhausted (1 address, all held); release a \
             vNode or give the manager a larger --vnode-subnet"
        ),
        "{err}"
    );
    let (ok, _, err) = ctl(&["release", "--vnode", "8"]);
    assert!(ok, "{err}");
    let (ok, out, err) = ctl(&["vnode", "address", "--vnode", "9"]);
    assert!(
        ok && out.contains("vNode 9: address 10.99.5.2/30"),
        "{out}{err}"
    );
    server.shutdown();
}
