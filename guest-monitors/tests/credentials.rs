//! Credentials by role against the real daemons: a manager and a memory monitor started with
//! the cluster key, and clients holding compute and operator credentials only. A compute
//! host cannot register a monitor, get a capability for (and so read) a vNode another
//! compute host runs or owns, release it or forge a capability; it places, gets a capability
//! for and reads and writes its own vNode. An operator can act on any vNode; a monitor
//! credential registers; a server refuses to start with a credential.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use lego_fabric::{
    Capability, CapabilityKey, Client, ClusterKey, ErrorCode, Request, Rights, Role,
};
use lego_monitor_client::client::{CallError, ManagerClient, MemoryClient, VnodeMemory};
use lego_monitor_client::proto::manager::{MonitorKind, RegisterMonitor, VnodeDown, VnodeUp};
use lego_monitor_client::proto::memory::{self as mm, PAGE_SIZE};

const REGION: u64 = 64 << 20;

fn up(vnode: u64, host: &str) -> VnodeUp {
    VnodeUp {
        vnode,
        host: host.into(),
        pid: std::process::id(),
        api_socket: None,
        vcpus: 1,
        memory_bytes: REGION,
        devices: Vec::new(),
        started_unix_ms: 0,
    }
}

fn forbidden(r: Result<impl std::fmt::Debug, CallError>, what: &str) -> String {
    let e = r.expect_err(what);
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{what}: {e:?}");
    lego_report::error_chain(&e)
}

#[test]
fn a_compute_credential_acts_only_for_the_vnode_it_runs() {
    let key = key();
    let mut net = Net::new("credentials");
    let mgr = start_manager(&mut net, &key, &[]);
    let mem = start_memory_monitor(&mut net, &key, "mem", mgr.addr(), &[]);
    let admin = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("admin");
    eventually("the memory monitor registered", || {
        (admin.status().ok()?.monitors.len() == 1).then_some(())
    });
    let host_a = key.issue_credential(Role::Compute, "host-a").expect("a");
    let host_b = key.issue_credential(Role::Compute, "host-b").expect("b");
    let a = ManagerClient::connect(mgr.addr(), host_a.clone(), client_config()).expect("a");
    let b = ManagerClient::connect(mgr.addr(), host_b.clone(), client_config()).expect("b");

    // A compute host cannot register (or heartbeat) as a monitor.
    let why = forbidden(
        b.register(&RegisterMonitor {
            kind: MonitorKind::Memory,
            addr: "10.9.9.9:7100".into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            incarnation: None,
        }),
        "a compute host registered a monitor",
    );
    assert!(
        why.contains("compute host host-b may not register"),
        "{why}"
    );

    // Host A runs vNode 1: it places its memory, gets a capability and reads and writes it.
    // The manager records the credential's name, not the host name the request says.
    a.vnode_up(&up(1, "claims-to-be-host-b"))
        .expect("A announces vNode 1");
    let placement = a.place_memory(1, REGION).expect("A places vNode 1");
    let cap1 = a
        .issue_capability(1, Rights::MEMORY, Duration::ZERO)
        .expect("A's capability for its own vNode");
    let vm1 = VnodeMemory::connect(placement, host_a.clone(), &cap1, client_config())
        .expect("A reaches its memory");
    let own = MemoryClient::connect(mem.addr(), host_a.clone(), &cap1, client_config())
        .expect("A connects");
    own.write_page(3, &[0xa1; PAGE_SIZE]).expect("A writes");
    assert_eq!(own.read_page(3).expect("A reads"), vec![0xa1; PAGE_SIZE]);
    drop(vm1);

    // Host B cannot claim vNode 1, place it, get a capability for it or release it.
    let why = forbidden(b.vnode_up(&up(1, "host-b")), "B claimed A's vNode");
    assert!(why.contains("belongs to compute host host-a"), "{why}");
    let why = forbidden(
        b.issue_capability(1, Rights::MEMORY, Duration::ZERO),
        "B got a capability for A's vNode",
    );
    assert!(why.contains("it runs on compute host host-a"), "{why}");
    forbidden(b.place_memory(1, 2 * REGION), "B placed A's vNode");
    forbidden(b.release_vnode(1), "B released A's vNode");
    forbidden(b.memory_placement(1), "B read A's placement");
    forbidden(
        b.issue_capability(9, Rights::MEMORY, Duration::ZERO),
        "B got a capability for a vNode no one runs",
    );
    forbidden(b.forget_monitor(mem.addr()), "B forgot a monitor");

    // B runs vNode 2; with vNode 2's capability it still cannot read vNode 1's pages, and a
    // capability for vNode 1 that B signs itself is refused by the monitor.
    b.vnode_up(&up(2, "host-b")).expect("B announces vNode 2");
    b.place_memory(2, REGION).expect("B places vNode 2");
    let cap2 = b
        .issue_capability(2, Rights::MEMORY, Duration::ZERO)
        .expect("B's capability for its own vNode");
    let intruder = Client::connect(mem.addr(), host_b.clone(), client_config()).expect("B");
    intruder
        .attach(&cap2)
        .expect("B attaches vNode 2's capability");
    let read1 = || {
        let body = mm::MemoryOp::ReadRun { start: 3, count: 1 }.encode();
        intruder.call(Request::new(mm::READ_RUN, 1, body))
    };
    let e = CallError::from(read1().expect_err("B read vNode 1 with vNode 2's capability"));
    assert!(
        matches!(
            e.remote_code(),
            Some(ErrorCode::Forbidden | ErrorCode::Unauthenticated)
        ),
        "{e:?}"
    );
    let own_key = CapabilityKey::generate().expect("B's own key");
    let minted = Capability::issue(&own_key, 1, Rights::MEMORY, Duration::from_secs(600));
    let e = CallError::from(intruder.attach(&minted).expect_err("B's own signature"));
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{e:?}");
    assert!(
        lego_report::error_chain(&e).contains("signature is not valid"),
        "{e:?}"
    );
    assert!(read1().is_err(), "B reads vNode 1 after a refused attach");

    // B sees only its own vNodes in the status, and no monitor's statistics of all vNodes.
    let st = b.status().expect("B's status");
    assert_eq!(
        st.vnodes.iter().map(|v| v.vnode).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        st.running.iter().map(|r| r.up.vnode).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(st.monitors.len(), 1, "the monitors are listed");
    let e = CallError::from(
        intruder
            .call(Request::new(mm::STATS, 0, Vec::new()))
            .expect_err("B read the monitor's statistics"),
    );
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{e:?}");

    // The manager lists vNode 1 under A's credential name.
    let all = admin.status().expect("status");
    let r1 = all
        .running
        .iter()
        .find(|r| r.up.vnode == 1)
        .expect("vNode 1");
    assert_eq!(r1.up.host, "host-a");

    // Stopped, vNode 1 still belongs to host A: B cannot claim it to read what A left.
    a.vnode_down(&VnodeDown {
        vnode: 1,
        pid: std::process::id(),
        host: "anything".into(),
    })
    .expect("A stops vNode 1");
    assert!(admin
        .status()
        .expect("status")
        .running
        .iter()
        .all(|r| r.up.vnode != 1));
    let why = forbidden(b.vnode_up(&up(1, "host-b")), "B claimed A's stopped vNode");
    assert!(why.contains("belongs to compute host host-a"), "{why}");
    forbidden(
        b.issue_capability(1, Rights::MEMORY, Duration::ZERO),
        "B got a capability for A's stopped vNode",
    );
    a.vnode_up(&up(1, "host-a")).expect("A runs vNode 1 again");

    // An operator acts on any vNode, but registers no monitor.
    let ops = key.issue_credential(Role::Operator, "ops").expect("ops");
    let op = ManagerClient::connect(mgr.addr(), ops, client_config()).expect("operator");
    forbidden(
        op.register(&RegisterMonitor {
            kind: MonitorKind::Memory,
            addr: "10.9.9.9:7100".into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            incarnation: None,
        }),
        "an operator registered a monitor",
    );
    assert_eq!(op.status().expect("operator status").vnodes.len(), 2);
    op.issue_capability(1, Rights::MEMORY, Duration::ZERO)
        .expect("an operator's capability for vNode 1");
    op.release_vnode(1).expect("an operator releases vNode 1");
    forbidden(a.release_vnode(2), "A released B's vNode");
    b.release_vnode(2).expect("B releases its own vNode");
    assert!(admin.status().expect("status").vnodes.is_empty());
    // Released, vNode 1 is free for another compute host (once A no longer runs it).
    a.vnode_down(&VnodeDown {
        vnode: 1,
        pid: std::process::id(),
        host: "anything".into(),
    })
    .expect("A stops vNode 1");
    b.vnode_up(&up(1, "host-b"))
        .expect("B claims the released vNode 1");
    b.place_memory(1, REGION).expect("B places vNode 1 anew");

    // A monitor credential registers and heartbeats (a storage monitor, so that nothing is
    // placed on this address that serves nothing).
    let mon = key
        .issue_credential(Role::Monitor, "st-x")
        .expect("monitor");
    let mon = ManagerClient::connect(mgr.addr(), mon, client_config()).expect("monitor");
    mon.register(&RegisterMonitor {
        kind: MonitorKind::Storage,
        addr: "10.9.9.8:7200".into(),
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        incarnation: None,
    })
    .expect("a monitor credential registers");
    forbidden(
        mon.issue_capability(2, Rights::MEMORY, Duration::ZERO),
        "a monitor credential got a capability",
    );
}

#[test]
fn a_server_given_a_credential_refuses_to_start() {
    let key = ClusterKey::from_bytes([0x5b; 32]);
    let cred = key.issue_credential(Role::Monitor, "mem-1").expect("issue");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf8");
    for (bin, extra) in [
        (MEMORY_BIN, ["--capacity", "64M"]),
        (MANAGER_BIN, ["--state-dir", state]),
    ] {
        let out = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("LEGO_CLUSTER_KEY", cred.to_text())
            .env_remove("LEGO_CLUSTER_KEY_FILE")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started with a credential");
        assert!(err.contains("needs the cluster key itself"), "{bin}: {err}");
    }
}

/// With a signing key file for the manager and only its public key for the monitor, the
/// manager's capabilities open the monitor and those signed with the key derived from the
/// cluster key (what the default would be) do not.
#[test]
fn a_manager_signing_key_file_and_the_monitors_public_key() {
    let key = key();
    let mut net = Net::new("capability-key");
    let signer = CapabilityKey::generate().expect("key");
    let key_file = net.path("capability.key");
    std::fs::write(&key_file, format!("{}\n", signer.to_hex())).expect("write");
    let public = signer.public().to_string();
    let mgr = start_manager(
        &mut net,
        &key,
        &["--capability-key-file", key_file.to_str().expect("utf8")],
    );
    let mem = start_memory_monitor(
        &mut net,
        &key,
        "mem",
        mgr.addr(),
        &["--capability-public-key", &public],
    );
    let admin = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("admin");
    eventually("the memory monitor registered", || {
        (admin.status().ok()?.monitors.len() == 1).then_some(())
    });
    admin.place_memory(4, REGION).expect("place");
    let issued = admin
        .issue_capability(4, Rights::MEMORY, Duration::ZERO)
        .expect("capability");
    issued
        .verify(&signer.public(), lego_fabric::capability::unix_now())
        .expect("signed with the key file's key");
    let c = MemoryClient::connect(mem.addr(), key.clone(), &issued, client_config())
        .expect("the manager's capability opens the monitor");
    c.write_page(1, &[4; PAGE_SIZE]).expect("write");
    assert_eq!(c.read_page(1).expect("read"), vec![4; PAGE_SIZE]);
    let derived = cap(&key, 4, Rights::MEMORY);
    let e = MemoryClient::connect(mem.addr(), key.clone(), &derived, client_config())
        .err()
        .expect("a capability from the cluster key's derived signer");
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{e:?}");
}
