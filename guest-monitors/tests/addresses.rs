//! vNode addresses against the real manager: each vNode gets its own address and MAC from
//! `--vnode-subnet`, the same on every ask and across a manager restart (file store); a
//! released vNode's address goes to the next vNode; a full pool is a clear, typed error; a
//! bad subnet stops the manager at start; a compute host gets only its own vNodes' addresses
//! (and owns a vNode whose address it got).

mod common;

use std::net::Ipv4Addr;
use std::process::Command;

use common::*;
use lego_fabric::{ErrorCode, Role};
use lego_monitor_client::client::{CallError, ManagerClient};
use lego_monitor_client::proto::manager::{VnodeAddress, VnodeDown, VnodeUp};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// The address the manager's `STATUS` shows for `vnode`.
fn shown(mc: &ManagerClient, vnode: u64) -> Option<VnodeAddress> {
    let st = mc.status().expect("status");
    st.vnodes.iter().find(|v| v.vnode == vnode)?.address
}

#[test]
fn vnodes_get_distinct_addresses_kept_across_restarts_and_freed_on_release() {
    let key = key();
    let mut net = Net::new("addresses");
    let mut mgr = start_manager(&mut net, &key, &[]);
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");

    // The default subnet 10.99.0.0/24: .1 is the gateway, vNodes get .2, .3, ...
    let a1 = mc.vnode_address(1).expect("vNode 1");
    let a2 = mc.vnode_address(2).expect("vNode 2");
    assert_eq!(
        a1,
        VnodeAddress {
            ip: ip("10.99.0.2"),
            prefix_len: 24,
            gateway: ip("10.99.0.1"),
            mac: [0x02, 0x4c, 0x47, 0x63, 0x00, 0x02],
        }
    );
    assert_eq!(a1.mac_text(), "02:4c:47:63:00:02");
    assert_eq!(a2.ip, ip("10.99.0.3"));
    assert_ne!(a1.mac, a2.mac);
    assert_eq!(
        mc.vnode_address(1).expect("again"),
        a1,
        "the same on every ask"
    );
    assert_eq!(shown(&mc, 1), Some(a1));
    assert_eq!(shown(&mc, 2), Some(a2));

    // A restarted manager (same state folder) serves the same addresses.
    mgr.terminate();
    mgr.restart();
    mgr.wait_ready(&key);
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    assert_eq!(mc.vnode_address(2).expect("after restart"), a2);
    assert_eq!(shown(&mc, 1), Some(a1));

    // Released, vNode 1's address is the lowest free one: the next vNode gets it.
    mc.release_vnode(1).expect("release");
    assert_eq!(shown(&mc, 1), None);
    let a3 = mc.vnode_address(3).expect("vNode 3");
    assert_eq!(a3.ip, a1.ip);
    assert_eq!(a3.mac, a1.mac);
    assert_eq!(mc.vnode_address(4).expect("vNode 4").ip, ip("10.99.0.4"));
    assert!(mgr.log_text().contains("vNode address allocated"));
}

#[test]
fn a_full_pool_is_a_clear_error_until_a_vnode_is_released() {
    let key = key();
    let mut net = Net::new("addresses-full");
    // A /30: network .0, gateway .1, broadcast .3: room for one vNode (.2).
    let mgr = start_manager(&mut net, &key, &["--vnode-subnet", "10.99.7.0/30"]);
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    let a = mc.vnode_address(5).expect("the only address");
    assert_eq!((a.ip, a.prefix_len), (ip("10.99.7.2"), 30));
    assert_eq!(a.gateway, ip("10.99.7.1"));

    let e = mc.vnode_address(6).expect_err("no address left");
    assert!(
        matches!(&e, CallError::AddressPoolExhausted { subnet, addresses: 1 } if subnet == "10.99.7.0/30"),
        "{e:?}"
    );
    assert_eq!(e.remote_code(), Some(ErrorCode::NoSpace));
    assert_eq!(
        e.to_string(),
        "the vNode address pool 10.99.7.0/30 is exhausted (1 address, all held); release a \
         vNode or give the manager a larger --vnode-subnet"
    );
    assert_eq!(shown(&mc, 6), None, "a refused vNode holds nothing");
    assert_eq!(mc.vnode_address(5).expect("still 5's"), a);

    mc.release_vnode(5).expect("release");
    assert_eq!(mc.vnode_address(6).expect("freed").ip, a.ip);
}

#[test]
fn a_malformed_or_too_small_subnet_stops_the_manager_at_start() {
    for (subnet, says) in [
        (
            "10.99.0.0/31",
            "the subnet 10.99.0.0/31 is too small for a vNode",
        ),
        ("10.99.0.0", "is not an IPv4 subnet in CIDR notation"),
        ("10.99.0.9/24", "the subnet it lies in is 10.99.0.0/24"),
        ("10.99.0.0/40", "is more than 32 bits"),
    ] {
        let out = Command::new(MANAGER_BIN)
            .args(["--vnode-subnet", subnet, "--listen", "127.0.0.1:0"])
            .env("LEGO_CLUSTER_KEY", key().to_hex())
            .output()
            .expect("run lego-manager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{subnet}: {err}");
        assert!(err.contains(says), "{subnet}: {err}");
    }
    let out = Command::new(MANAGER_BIN)
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--vnode-subnet <CIDR>") && help.contains("10.99.0.0/24"),
        "{help}"
    );
}

fn up(vnode: u64) -> VnodeUp {
    VnodeUp {
        vnode,
        host: "ignored".into(),
        pid: std::process::id(),
        api_socket: None,
        vcpus: 1,
        memory_bytes: 1 << 20,
        devices: Vec::new(),
        started_unix_ms: 0,
    }
}

#[test]
fn a_compute_host_gets_only_its_own_vnodes_addresses() {
    let key = key();
    let mut net = Net::new("addresses-credentials");
    let mgr = start_manager(&mut net, &key, &[]);
    let connect = |role: Role, name: &str| {
        let cred = key.issue_credential(role, name).expect("credential");
        ManagerClient::connect(mgr.addr(), cred, client_config()).expect("connect")
    };
    let a = connect(Role::Compute, "host-a");
    let b = connect(Role::Compute, "host-b");
    let forbidden = |r: Result<VnodeAddress, CallError>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{what}: {e:?}");
        lego_report::error_chain(&e)
    };

    // Nobody announces vNode 1 yet: no compute host may ask its address.
    forbidden(a.vnode_address(1), "A asked an unannounced vNode's address");

    // A runs vNode 1 (nothing placed, so announcing binds no owner) and gets its address,
    // which makes A the vNode's owner.
    a.vnode_up(&up(1)).expect("A announces vNode 1");
    let a1 = a.vnode_address(1).expect("A's own vNode");
    let why = forbidden(b.vnode_address(1), "B asked A's vNode's address");
    assert!(why.contains("it runs on compute host host-a"), "{why}");
    a.vnode_down(&VnodeDown {
        vnode: 1,
        pid: std::process::id(),
        host: "ignored".into(),
    })
    .expect("A stops vNode 1");
    let why = b
        .vnode_up(&up(1))
        .expect_err("B claimed the vNode whose address A got");
    assert!(
        lego_report::error_chain(&why).contains("belongs to compute host host-a"),
        "{why:?}"
    );
    forbidden(b.vnode_address(1), "B asked A's stopped vNode's address");

    // B's own vNode gets the next address; an operator and the cluster key see both.
    b.vnode_up(&up(2)).expect("B announces vNode 2");
    let b2 = b.vnode_address(2).expect("B's own vNode");
    assert_ne!(a1.ip, b2.ip);
    let op = connect(Role::Operator, "ops");
    assert_eq!(op.vnode_address(1).expect("operator"), a1);
    let admin = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("admin");
    assert_eq!(admin.vnode_address(2).expect("cluster key"), b2);
    // A monitor credential may not ask.
    let monitor = connect(Role::Monitor, "mem");
    forbidden(monitor.vnode_address(2), "a monitor asked an address");
}
