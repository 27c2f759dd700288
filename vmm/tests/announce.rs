//! legovmm's announcer against a real `lego-manager` process on loopback: a running vNode is
//! listed with what it announced, forgotten at once when the announcer says it stopped, and
//! forgotten after a few heartbeat intervals when it falls silent (a killed legovmm). A device
//! added while it runs shows in the listing at the next announcement. A vNode runs once: a
//! second claim is refused while it runs, and a claim left by a killed process is waited out.

use std::process::{Command, Stdio};
use std::time::Duration;

use lego_fabric::{ClientConfig, ClusterKey};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::VnodeUp;
use lego_testkit::net::free_port;
use lego_testkit::process::ChildGuard;
use legovmm::announce::Announcer;
use legovmm::api::control::LiveDevice;
use legovmm::api::model::DeviceInfo;
use legovmm::claim::{claim, ClaimError};
use legovmm::config::RemoteConfig;
use std::sync::{Arc, Mutex};

/// The workspace's `lego-manager`, built beside this test's executable.
fn manager_bin() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("lego-manager");
    p.is_file().then_some(p)
}

/// A real `lego-manager` on a free loopback port (100 ms heartbeats, its state in `dir`) and
/// a cluster-key client of it.
struct TestManager {
    manager: ChildGuard,
    key: ClusterKey,
    dir: tempfile::TempDir,
    addr: String,
    client: ManagerClient,
}

/// Starts a [`TestManager`]; `None` (skip) when `lego-manager` is not built, which fails
/// under CI.
fn start_manager() -> Option<TestManager> {
    let Some(bin) = manager_bin() else {
        assert!(
            !lego_testkit::prerequisite::under_ci(),
            "lego-manager is not built beside the tests (cargo build --workspace first)"
        );
        eprintln!("skipped: lego-manager is not built");
        return None;
    };
    let key = ClusterKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut manager = ChildGuard::spawn(
        "lego-manager",
        Command::new(bin)
            .args(["--listen", &addr, "--heartbeat-ms", "100", "--state-dir"])
            .arg(dir.path())
            .env("LEGO_CLUSTER_KEY", key.to_hex())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let client = lego_testkit::wait::until(
        "the manager",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            manager.check_alive();
            ManagerClient::connect(&addr, key.clone(), ClientConfig::default()).ok()
        },
    );
    Some(TestManager {
        manager,
        key,
        dir,
        addr,
        client,
    })
}

fn up(vnode: u64) -> VnodeUp {
    VnodeUp {
        vnode,
        host: legovmm::announce::host_name(),
        pid: std::process::id(),
        api_socket: Some("/run/lego/v.sock".into()),
        vcpus: 2,
        memory_bytes: 1 << 30,
        devices: vec!["disk0: virtio-blk data.img".into()],
        started_unix_ms: 1,
    }
}

fn device(id: &str, kind: &str, backing: &str) -> LiveDevice {
    LiveDevice {
        info: DeviceInfo {
            id: id.into(),
            kind: kind.into(),
            backing: backing.into(),
            read_only: false,
            mmio_base: 0xd000_0000,
            gsi: 5,
        },
        counters: None,
    }
}

#[test]
fn the_manager_lists_an_announced_vnode_until_it_stops() {
    let Some(TestManager {
        manager: _manager,
        key,
        dir: _dir,
        addr,
        client,
    }) = start_manager()
    else {
        return;
    };
    let running = |c: &ManagerClient| c.status().expect("status").running;
    assert!(running(&client).is_empty());

    std::env::set_var("LEGO_CLUSTER_KEY", key.to_hex());
    let remote = RemoteConfig {
        manager: addr.clone(),
        vnode: 7,
        key_file: None,
        memory: None,
        disk: None,
    };
    let devices = Arc::new(Mutex::new(vec![device("disk0", "virtio-blk", "data.img")]));
    let announcer = Announcer::start(&remote, up(7), devices.clone()).expect("announcing");
    let listed = lego_testkit::wait::until(
        "vNode 7 listed",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let r = running(&client);
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].up, up(7));
    // Still listed several intervals later: it is announced again.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        running(&client).len(),
        1,
        "an announced vNode was forgotten"
    );
    // A hot-added device is listed at the next announcement.
    devices
        .lock()
        .unwrap()
        .push(device("disk1", "vhost-user-blk", "remote memory, 256 MiB"));
    let listed = lego_testkit::wait::until(
        "the added device listed",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let r = running(&client);
            (r.first()?.up.devices.len() == 2).then_some(r)
        },
    );
    assert_eq!(
        listed[0].up.devices,
        [
            "disk0: virtio-blk data.img",
            "disk1: vhost-user-blk remote memory, 256 MiB"
        ]
    );
    // A vNode runs once: another legovmm's claim on it is refused with who runs it.
    let other = VnodeUp {
        pid: std::process::id() + 1,
        ..up(7)
    };
    match claim(&remote, &other) {
        Err(ClaimError::Held {
            vnode, pid, host, ..
        }) => {
            assert_eq!((vnode, pid), (7, std::process::id()));
            assert_eq!(host, legovmm::announce::host_name());
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second legovmm claimed a running vNode"),
    }
    drop(announcer);
    assert!(
        running(&client).is_empty(),
        "a stopped vNode is still listed"
    );
    // Once it stopped, the vNode can be claimed; dropping the claim says it stopped.
    let claimed = claim(&remote, &other).expect("claim a stopped vNode");
    assert_eq!(running(&client)[0].up.pid, other.pid);
    drop(claimed);
    assert!(
        running(&client).is_empty(),
        "a dropped claim is still listed"
    );

    // A claim held by a process of this host that is gone (killed: it never said it
    // stopped) is waited out until the manager forgets it, then taken.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    client
        .vnode_up(&VnodeUp {
            pid: gone_pid,
            ..up(9)
        })
        .expect("announce for a dead process");
    let mine = VnodeUp { vnode: 9, ..up(7) };
    let remote9 = RemoteConfig {
        vnode: 9,
        ..remote.clone()
    };
    let _claimed = claim(&remote9, &mine).expect("a dead holder is waited out");
    let r = running(&client);
    assert_eq!((r[0].up.vnode, r[0].up.pid), (9, std::process::id()));
    drop(_claimed);

    // A vNode that falls silent (its legovmm killed: no VNODE_DOWN) is forgotten.
    client.vnode_up(&up(8)).expect("announce 8");
    assert_eq!(running(&client).len(), 1);
    lego_testkit::wait::until(
        "vNode 8 forgotten",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || running(&client).is_empty().then_some(()),
    );
}

/// With compute credentials, a vNode is claimed under the credential's name, and another
/// compute host's claim is refused though it cannot list who holds the vNode.
#[test]
fn compute_credentials_claim_under_their_names() {
    let Some(TestManager {
        manager: _manager,
        key,
        dir,
        addr,
        client: admin,
    }) = start_manager()
    else {
        return;
    };
    let remote_as = |name: &str| {
        let file = dir.path().join(format!("{name}.cred"));
        key.issue_credential(lego_fabric::Role::Compute, name)
            .unwrap()
            .write_file(&file)
            .unwrap();
        RemoteConfig {
            manager: addr.clone(),
            vnode: 9,
            key_file: Some(file),
            memory: None,
            disk: None,
        }
    };
    let held = claim(&remote_as("host-a"), &up(9)).expect("host-a claims vNode 9");
    let running = admin.status().expect("status").running;
    assert_eq!(running.len(), 1);
    assert_eq!(
        running[0].up.host, "host-a",
        "listed under the credential's name"
    );
    // The claim is kept announced past the manager's forgetting time (3 s) until an
    // announcer takes over, so a slow start keeps the vNode its own.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(admin.status().expect("status").running.len(), 1);
    let other = VnodeUp { pid: 1, ..up(9) };
    match claim(&remote_as("host-b"), &other) {
        Err(ClaimError::HeldElsewhere { vnode, refusal }) => {
            assert_eq!(vnode, 9);
            assert!(refusal.contains("host-a"), "{refusal}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("host-b claimed host-a's vNode"),
    }
    drop(held);
    assert!(admin.status().expect("status").running.is_empty());
}
