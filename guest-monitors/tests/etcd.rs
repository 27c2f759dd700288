//! The manager on etcd: a 3-member etcd cluster and two managers, each in its own network
//! namespace. Fail-over of the leader, placements and vNode addresses kept, a running vNode's
//! memory unaffected, one etcd member stopped; a deposed leader's write refused; clear errors
//! for a bad store.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use lego_fabric::{Client, ClusterKey, ErrorCode, Request, Rights};
use lego_monitor_client::client::{ManagerClient, VnodeMemory};
use lego_monitor_client::proto::manager::{self as m, parse_standby_refusal, MonitorState};
use lego_monitor_client::proto::memory::PAGE_SIZE;
use lego_monitors::manager::election::{self, Election};
use lego_monitors::manager::etcd_store::{Etcd, EtcdStateStore, EtcdTarget};
use lego_monitors::manager::{ClusterState, StateError, StateStore};
use lego_testkit::net::free_loopback_addr;
use lego_testkit::prerequisite::require;

const ETCD_BIN: &str = "/usr/bin/etcd";

fn etcd_present() -> bool {
    require(
        "etcd (Debian's etcd-server, installed by tools/setup.sh)",
        std::path::Path::new(ETCD_BIN).exists(),
    )
}

/// A running etcd cluster of this test's own (fresh data folders, a token unique to the test).
struct EtcdCluster {
    members: Vec<Daemon>,
    /// Client endpoints, `host:port` each.
    endpoints: Vec<String>,
}

impl EtcdCluster {
    fn start(net: &mut Net, key: &ClusterKey, n: usize) -> Self {
        let mut hosts = Vec::new();
        for _ in 0..n {
            let h = net.host("etcd");
            let (client, peer) = if net.namespaces() {
                let ip = h.addr.rsplit_once(':').expect("host:port").0.to_string();
                (format!("{ip}:2379"), format!("{ip}:2380"))
            } else {
                (free_loopback_addr(), free_loopback_addr())
            };
            hosts.push((h, client, peer));
        }
        let initial: Vec<String> = (0..n)
            .map(|i| format!("etcd{i}=http://{}", hosts[i].2))
            .collect();
        let token = format!(
            "lego-test-{}-{}",
            std::process::id(),
            net.path("").display()
        );
        let mut members = Vec::new();
        for (i, (h, client, peer)) in hosts.iter().enumerate() {
            let data = net.path(&format!("etcd{i}.data"));
            let a = args(&[
                "--name",
                &format!("etcd{i}"),
                "--data-dir",
                data.to_str().expect("utf8"),
                "--listen-client-urls",
                &format!("http://{client}"),
                "--advertise-client-urls",
                &format!("http://{client}"),
                "--listen-peer-urls",
                &format!("http://{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
            ]);
            members.push(Daemon::start(
                net,
                &format!("etcd{i}"),
                ETCD_BIN,
                h,
                &a,
                key,
            ));
        }
        let endpoints: Vec<String> = hosts.into_iter().map(|h| h.1).collect();
        for e in &endpoints {
            eventually(&format!("etcd at {e} healthy"), || healthy(e).then_some(()));
        }
        Self { members, endpoints }
    }

    /// The index of the member that leads etcd's raft, as the members themselves report it
    /// (`/v3/maintenance/status` of etcd's HTTP gateway).
    fn raft_leader(&self) -> Option<usize> {
        self.endpoints.iter().position(|e| {
            let Some(status) = http_post(e, "/v3/maintenance/status", "{}") else {
                return false;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&status) else {
                return false;
            };
            let me = v["header"]["member_id"].as_str();
            me.is_some() && me == v["leader"].as_str()
        })
    }

    fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}

/// The body of etcd's answer to a POST of `body` (JSON) to `path` at `addr`.
fn http_post(addr: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Whether the etcd member at `addr` answers `/health` with a leader.
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn start_manager(net: &mut Net, key: &ClusterKey, name: &str, store: &str) -> Daemon {
    let h = net.host("m");
    let a = args(&[
        "--listen",
        &h.addr,
        "--store",
        store,
        "--region-size",
        "64M",
        "--heartbeat-ms",
        "200",
        "--copies",
        "1",
    ]);
    let mut d = Daemon::start(net, name, MANAGER_BIN, &h, &a, key);
    d.wait_ready(key);
    d
}

fn start_memory(net: &mut Net, key: &ClusterKey, name: &str, managers: &str) -> Daemon {
    let h = net.host("mem");
    let a = args(&[
        "--listen",
        &h.addr,
        "--capacity",
        "1G",
        "--heartbeat-ms",
        "200",
        "--manager",
        managers,
    ]);
    let mut d = Daemon::start(net, name, MEMORY_BIN, &h, &a, key);
    d.wait_ready(key);
    d
}

/// What one manager (alone, no following) answers to `STATUS`: `Ok` when it leads, else the
/// leader its refusal names.
fn ask(addr: &str, key: &ClusterKey) -> Result<m::ClusterStatus, Option<String>> {
    let c = Client::connect(addr, key.clone(), client_config()).map_err(|_| None)?;
    match c.call(Request::new(m::STATUS, 0, Vec::new())) {
        Ok(r) => Ok(serde_json::from_slice(&r.payload).expect("status")),
        Err(lego_fabric::ClientError::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
            let leader = parse_standby_refusal(&e.message).unwrap_or_else(|| panic!("{e}"));
            Err(leader.map(str::to_string))
        }
        Err(_) => Err(None),
    }
}

#[test]
fn the_standby_manager_takes_over_with_placements_and_survives_an_etcd_member() {
    if !etcd_present() {
        return;
    }
    let key = key();
    let mut net = Net::new("etcd-failover");
    let mut etcd = EtcdCluster::start(&mut net, &key, 3);
    let url = etcd.url();
    let mut a = start_manager(&mut net, &key, "manager-a", &url);
    eventually("manager A leads", || ask(a.addr(), &key).ok());
    let b = start_manager(&mut net, &key, "manager-b", &url);
    // B stands by and names A (until its first look at the election, it names no one).
    let named = eventually("manager B stands by naming a leader", || {
        ask(b.addr(), &key).err().flatten()
    });
    assert_eq!(named, a.addr());

    let managers = format!("{},{}", a.addr(), b.addr());
    let _m1 = start_memory(&mut net, &key, "mem1", &managers);
    let _m2 = start_memory(&mut net, &key, "mem2", &managers);
    // The client is given B first: it follows B's refusal to A.
    let mc = ManagerClient::connect(
        &format!("{},{}", b.addr(), a.addr()),
        key.clone(),
        client_config(),
    )
    .expect("managers");
    eventually("monitors registered", || {
        (mc.status().ok()?.monitors.len() == 2).then_some(())
    });
    assert_eq!(mc.current_addr(), a.addr());
    let p = mc.place_memory(21, 256 << 20).expect("place");
    assert_eq!(p.regions.len(), 4);

    // A running vNode's workload: it talks to the memory monitors, never to the manager.
    let cap = mc
        .issue_capability(21, Rights::MEMORY, Duration::ZERO)
        .expect("capability");
    let vm = VnodeMemory::connect(p.clone(), key.clone(), &cap, client_config()).expect("vnode");
    let data: Vec<u8> = (0..64 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    vm.write_run(100, &data).expect("write");
    let address = mc.vnode_address(21).expect("vNode 21's address");
    let before = mc.status().expect("status");

    // Kill -9 the leader: B leads within a few seconds.
    a.kill9();
    let killed = Instant::now();
    let after = eventually("manager B leads", || ask(b.addr(), &key).ok());
    let took = killed.elapsed();
    eprintln!(
        "fail-over: manager B leads {} ms after the leader was killed",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(10), "fail-over took {took:?}");
    assert_eq!(
        after.vnodes, before.vnodes,
        "placements and addresses intact"
    );
    assert_eq!(mc.memory_placement(21).expect("placement"), p);
    assert_eq!(
        mc.vnode_address(21).expect("address after fail-over"),
        address
    );
    assert_ne!(
        mc.vnode_address(22).expect("a new vNode's address"),
        address
    );
    assert_eq!(mc.current_addr(), b.addr());

    // The workload went on meanwhile, and goes on.
    assert_eq!(vm.read_run(100, 64).expect("read"), data);
    vm.write_run(1000, &data[..PAGE_SIZE])
        .expect("write after fail-over");
    // The monitors heartbeat to the new leader and stay alive past its grace period.
    std::thread::sleep(Duration::from_secs(2));
    let st = mc.status().expect("status");
    assert_eq!(st.monitors.len(), 2);
    assert!(
        st.monitors.iter().all(|m| m.state == MonitorState::Alive),
        "{:?}",
        st.monitors
    );
    // A new vNode can be placed.
    assert_eq!(
        mc.place_memory(22, 128 << 20)
            .expect("new vNode")
            .regions
            .len(),
        2
    );

    // The etcd member that leads raft stops: the others elect another while the manager's
    // lease is due for renewal, and the manager goes on leading.
    let raft_leader = eventually("etcd names its raft leader", || etcd.raft_leader());
    etcd.members[raft_leader].kill9();
    let p23 = eventually("placing with an etcd member down", || {
        mc.place_memory(23, 64 << 20).ok()
    });
    assert_eq!(p23.regions.len(), 1);
    assert_eq!(mc.status().expect("status").vnodes.len(), 3);
    // A whole lease later B still leads: it renewed through etcd's election.
    std::thread::sleep(election::DEFAULT_TTL);
    assert!(
        ask(b.addr(), &key).is_ok(),
        "manager B stopped leading after etcd's raft leader died"
    );

    // The old leader comes back as a standby naming B.
    a.restart();
    a.wait_ready(&key);
    let named = eventually("manager A stands by", || {
        ask(a.addr(), &key).err().flatten()
    });
    assert_eq!(named, b.addr());
    assert_eq!(vm.read_run(1000, 1).expect("read"), data[..PAGE_SIZE]);
}

#[test]
fn a_deposed_leader_cannot_write() {
    if !etcd_present() {
        return;
    }
    let key = key();
    let mut net = Net::new("etcd-fence");
    let etcd = EtcdCluster::start(&mut net, &key, 1);
    let target: EtcdTarget = format!("{}/fence/", etcd.url()).parse().expect("url");
    let conn = Etcd::connect(target).expect("etcd");

    let first = Election::new(conn.clone(), "first:1", Duration::from_secs(2))
        .expect("election")
        .campaign(|_| {})
        .expect("first leads");
    let old = EtcdStateStore::new(conn.clone(), Some((first.key.clone(), first.lease)));
    let mut s = ClusterState::default();
    s.vnodes.insert(1, Default::default());
    old.save(&s).expect("the leader writes");

    // The first leader's lease goes (as when it is cut off for longer than its TTL).
    let mut client = conn.client();
    conn.block_on(client.lease_revoke(first.lease))
        .expect("revoke");
    let second = Election::new(conn.clone(), "second:1", Duration::from_secs(2))
        .expect("election")
        .campaign(|_| {})
        .expect("second leads");
    assert!(
        first.lost(Duration::from_secs(5)).is_some(),
        "the first is told"
    );
    let new = EtcdStateStore::new(conn.clone(), Some((second.key.clone(), second.lease)));
    let mut s2 = new.load().expect("load").expect("state");
    assert_eq!(s2, s);
    s2.vnodes.insert(2, Default::default());
    new.save(&s2).expect("the new leader writes");

    let mut late = s.clone();
    late.vnodes.clear();
    let e = old.save(&late).expect_err("the deposed leader's write");
    assert!(matches!(e, StateError::Etcd(_)), "{e}");
    assert!(e.to_string().contains("no longer leads"), "{e}");
    // The cluster key's fingerprint is recorded once; a manager with another key is refused.
    new.check_cluster_key(&key).expect("first key recorded");
    new.check_cluster_key(&key).expect("same key");
    let other = ClusterKey::from_bytes([0x11; 32]);
    let e = new.check_cluster_key(&other).expect_err("another key");
    assert!(
        e.to_string().contains("every manager must share one key"),
        "{e}"
    );
    let reader = EtcdStateStore::new(conn, None);
    assert_eq!(reader.load().expect("load"), Some(s2));
}

#[test]
fn a_bad_or_unreachable_store_is_refused_clearly() {
    let key = key();
    let mut net = Net::new("etcd-errors");
    let unused = free_loopback_addr();
    for (store, says) in [
        (
            "etcd:/nowhere".to_string(),
            "is not an etcd store".to_string(),
        ),
        (
            format!("etcd://{unused}"),
            format!("etcd at {unused} is unreachable"),
        ),
    ] {
        let h = net.host("m");
        let a = args(&["--listen", &h.addr, "--store", &store]);
        let mut d = Daemon::start(&net, "manager", MANAGER_BIN, &h, &a, &key);
        let st = d.wait_exit();
        assert!(!st.success(), "{store}: {st}");
        assert!(d.log_text().contains(&says), "{store}: {}", d.log_text());
    }
}
