//! Repair of a vRegion that lost a copy, end to end: the real manager and memory monitors
//! (each in its own network namespace where it can be, see `common`), a vNode's client
//! (`VnodeMemory` with its repair follower, as the `lego-vhost-blk` backend runs it) writing
//! and trimming pages throughout, and monitors killed with SIGKILL.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lego_fabric::{ClusterKey, Rights};
use lego_monitor_client::client::{ManagerClient, VnodeMemory};
use lego_monitor_client::proto::manager::{MonitorState, RegionHealth, RegionPlacement};
use lego_monitor_client::proto::memory::PAGE_SIZE;

const RUN: u64 = 64;
/// Expected content of a page that was trimmed: zeros.
const TRIMMED: u64 = u64::MAX;

/// Deterministic content of `page` in write round `round` (all zeros now and then, so zero
/// writes happen during the repair too).
fn stamp(page: u64, round: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE_SIZE];
    if round != TRIMMED && !(page * 7 + round).is_multiple_of(97) {
        buf.fill(((page * 7 + round) % 251) as u8 + 1);
        buf[..8].copy_from_slice(&page.to_le_bytes());
        buf[8..16].copy_from_slice(&round.to_le_bytes());
    }
    buf
}

fn write(vm: &VnodeMemory, start: u64, round: u64) -> Result<(), String> {
    let data: Vec<u8> = (start..start + RUN).flat_map(|p| stamp(p, round)).collect();
    vm.write_run(start, &data).map_err(|e| format!("{e:?}"))
}

/// A cluster of a manager and three memory monitors, and a vNode with one 64 MiB region
/// placed on two of them.
struct Cluster {
    _net: Net,
    _mgr: Daemon,
    mons: Vec<Daemon>,
    mc: ManagerClient,
    vnode: u64,
    key: ClusterKey,
    first: RegionPlacement,
}

impl Cluster {
    fn new(name: &str, rate_mib: &str, vnode: u64) -> Cluster {
        // The client's repair log (on stderr, not captured) when asked for with RUST_LOG.
        if std::env::var_os("RUST_LOG").is_some() {
            lego_monitor_client::logging::init();
        }
        let key = key();
        let mut net = Net::new(name);
        let mgr = start_manager(
            &mut net,
            &key,
            &["--copies", "2", "--repair-rate-mib", rate_mib],
        );
        let mons: Vec<Daemon> = (1..=3)
            .map(|i| start_memory_monitor(&mut net, &key, &format!("mem{i}"), mgr.addr(), &[]))
            .collect();
        let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("mgr");
        eventually("three memory monitors registered", || {
            (mc.status().ok()?.monitors.len() == 3).then_some(())
        });
        let p = mc.place_memory(vnode, 64 << 20).expect("place");
        assert_eq!(p.regions.len(), 1);
        let first = p.regions[0].clone();
        assert_eq!(first.holders().count(), 2, "{first:?}");
        Cluster {
            _net: net,
            _mgr: mgr,
            mons,
            mc,
            vnode,
            key,
            first,
        }
    }

    /// The vNode's client, following repairs as the backend does.
    fn vnode_memory(&self) -> VnodeMemory {
        let p = self
            .mc
            .place_memory(self.vnode, 64 << 20)
            .expect("placement");
        let cap = self
            .mc
            .issue_capability(self.vnode, Rights::MEMORY, Duration::ZERO)
            .expect("cap");
        let config = lego_fabric::ClientConfig {
            reconnect_patience: Some(Duration::ZERO),
            ..client_config()
        };
        let mut vm = VnodeMemory::connect(p, self.key.clone(), &cap, config).expect("connect");
        vm.keep_repaired(self.mc.clone());
        vm
    }

    fn daemon(&mut self, addr: &str) -> &mut Daemon {
        self.mons
            .iter_mut()
            .find(|m| m.addr() == addr)
            .expect("a daemon of this test")
    }

    fn third(&self) -> String {
        let h: Vec<&str> = self.first.holders().collect();
        self.mons
            .iter()
            .map(|m| m.addr().to_string())
            .find(|a| !h.contains(&a.as_str()))
            .expect("a monitor outside the placement")
    }

    fn region(&self) -> RegionPlacement {
        self.mc
            .memory_placement(self.vnode)
            .expect("placement")
            .regions[0]
            .clone()
    }
}

/// Checks every page against `expected` rounds through `vm`.
fn check_all(vm: &VnodeMemory, expected: &[u64], what: &str) {
    for start in (0..expected.len() as u64).step_by(RUN as usize) {
        let got = vm
            .read_run(start, RUN)
            .unwrap_or_else(|e| panic!("{what}: pages {start}+{RUN}: {e:?}"));
        for (k, page) in got.chunks_exact(PAGE_SIZE).enumerate() {
            let p = start + k as u64;
            let round = expected[p as usize];
            assert!(
                page == stamp(p, round).as_slice(),
                "{what}: page {p} is not what was last written (round {round}); it holds page \
                 {} of round {} (all zeros: {})",
                u64::from_le_bytes(page[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(page[8..16].try_into().expect("8 bytes")),
                page.iter().all(|&b| b == 0)
            );
        }
    }
}

#[test]
fn a_region_that_lost_a_copy_is_repaired_onto_the_third_monitor_while_the_vnode_writes() {
    let mut c = Cluster::new("repair", "16", 41);
    let third = c.third();
    let vm = Arc::new(c.vnode_memory());
    let pages = vm.pages();
    // 48 MiB of the region's 64 are written before the failure (round 0); 1 in 97 is zeros.
    let mut expected = vec![TRIMMED; pages as usize];
    for start in (0..pages * 3 / 4).step_by(RUN as usize) {
        write(&vm, start, 0).expect("write round 0");
        expected[start as usize..(start + RUN) as usize].fill(0);
    }
    // A writer goes on writing and trimming all over the region, new pages included.
    let expected = Arc::new(Mutex::new(expected));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let writer = {
        let (vm, expected, stop, errors, ops) = (
            vm.clone(),
            expected.clone(),
            stop.clone(),
            errors.clone(),
            ops.clone(),
        );
        std::thread::spawn(move || {
            let mut round = 1u64;
            let mut x = 0x2545_f491_4f6c_dd1du64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let start = (x % (pages / RUN)) * RUN;
                let range = start as usize..(start + RUN) as usize;
                if round.is_multiple_of(10) {
                    match vm.trim(start, RUN) {
                        Ok(_) => expected.lock().expect("lock")[range].fill(TRIMMED),
                        Err(e) => errors.lock().expect("lock").push(format!("trim: {e:?}")),
                    }
                } else {
                    match write(&vm, start, round) {
                        Ok(()) => expected.lock().expect("lock")[range].fill(round),
                        Err(e) => errors.lock().expect("lock").push(e),
                    }
                }
                round += 1;
                ops.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let victim = c.first.monitor.clone();
    let survivor = c.first.replicas[0].clone();
    c.daemon(&victim).kill9();
    // Status goes degraded, then repairing, then healthy with two copies again.
    let mut seen: Vec<RegionHealth> = Vec::new();
    let began = Instant::now();
    let last = loop {
        let r = c.region();
        let h = r.health.expect("a health");
        if seen.last() != Some(&h) {
            eprintln!("{:?} after {:?}: {r:?}", h, began.elapsed());
            seen.push(h);
        }
        if h == RegionHealth::Healthy && seen.len() > 1 {
            break r;
        }
        assert!(began.elapsed() < TIMEOUT, "not repaired: {seen:?} {r:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let order: Vec<RegionHealth> = seen
        .iter()
        .copied()
        .filter(|h| *h != RegionHealth::Healthy)
        .collect();
    assert_eq!(
        order,
        [RegionHealth::Degraded, RegionHealth::Repairing],
        "status went {seen:?}"
    );
    let mut holders: Vec<&str> = last.holders().collect();
    holders.sort_unstable();
    let mut want = vec![survivor.as_str(), third.as_str()];
    want.sort_unstable();
    assert_eq!(
        holders, want,
        "the region ends on the survivor and the third monitor"
    );
    // The client reads from the new copy once the manager recorded the repair.
    eventually("the client to use the new copy", || {
        let (h, filling) = vm.holders(0);
        (h.contains(&third) && filling.is_none()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let errors = errors.lock().expect("lock").clone();
    assert!(
        errors.is_empty(),
        "writes failed with a live copy: {errors:?}"
    );
    assert!(ops.load(Ordering::Relaxed) > 100, "the writer kept writing");
    let expected = expected.lock().expect("lock").clone();
    check_all(&vm, &expected, "after the repair");
    // The other original holder dies too: every page still reads right, from the new copy.
    c.daemon(&survivor).kill9();
    check_all(&vm, &expected, "from the repaired copy alone");
    // And a fresh client (a relaunched backend) reads them from it as well.
    eventually("the manager to drop the survivor", || {
        let r = c.region();
        (r.holders().collect::<Vec<_>>() == [third.as_str()]).then_some(())
    });
    check_all(&c.vnode_memory(), &expected, "through a new client");
}

#[test]
fn when_the_survivor_dies_during_the_repair_the_region_is_lost_and_reads_are_errors() {
    // 1 MiB/s: the 16 MiB copy takes long enough to kill the survivor in the middle of it.
    let mut c = Cluster::new("repair-lost", "1", 42);
    let third = c.third();
    let vm = c.vnode_memory();
    let written = 4096u64;
    for start in (0..written).step_by(RUN as usize) {
        write(&vm, start, 0).expect("write");
    }
    let victim = c.first.monitor.clone();
    let survivor = c.first.replicas[0].clone();
    c.daemon(&victim).kill9();
    eventually("the repair to start", || {
        let r = c.region();
        (r.health == Some(RegionHealth::Repairing)).then_some(r)
    });
    assert_eq!(vm.holders(0).1.as_deref(), Some(third.as_str()));
    c.daemon(&survivor).kill9();
    let r = eventually("the region to be lost", || {
        let r = c.region();
        (r.health == Some(RegionHealth::Lost)).then_some(r)
    });
    assert!(r.repair.is_none(), "no repair from a lost region: {r:?}");
    // The client stops writing to the half-filled copy and never reads from it.
    eventually("the client to drop the half-filled copy", || {
        vm.holders(0).1.is_none().then_some(())
    });
    for start in (0..written).step_by(RUN as usize) {
        match vm.read_run(start, RUN) {
            Err(_) => {}
            Ok(data) => panic!(
                "pages {start}+{RUN} read {} bytes (zeros: {}) although every copy is gone",
                data.len(),
                data.iter().all(|&b| b == 0)
            ),
        }
    }
    let st = c.mc.status().expect("status");
    let v = st.vnodes.iter().find(|v| v.vnode == 42).expect("vnode");
    assert_eq!(v.memory.regions[0].health, Some(RegionHealth::Lost));
}

#[test]
fn a_target_that_restarts_mid_repair_gets_the_whole_copy_again() {
    let mut c = Cluster::new("repair-restart", "4", 43);
    let third = c.third();
    let vm = c.vnode_memory();
    let written = 2048u64;
    let mut expected = vec![TRIMMED; vm.pages() as usize];
    for start in (0..written).step_by(RUN as usize) {
        write(&vm, start, 0).expect("write");
        expected[start as usize..(start + RUN) as usize].fill(0);
    }
    let victim = c.first.monitor.clone();
    let survivor = c.first.replicas[0].clone();
    c.daemon(&victim).kill9();
    eventually("the repair to start", || {
        (c.region().health == Some(RegionHealth::Repairing)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    // The target restarts empty in the middle of the copy; writes go on meanwhile.
    let key = c.key.clone();
    let t = c.daemon(&third);
    t.kill9();
    t.restart();
    t.wait_ready(&key);
    for start in (0..written).step_by(4 * RUN as usize) {
        write(&vm, start, 1).expect("write while the target restarts");
        expected[start as usize..(start + RUN) as usize].fill(1);
    }
    let r = eventually("the region to be repaired", || {
        let r = c.region();
        (r.health == Some(RegionHealth::Healthy) && r.holders().count() == 2).then_some(r)
    });
    assert!(r.holders().any(|h| h == third), "{r:?}");
    eventually("the client to use the new copy", || {
        let (h, filling) = vm.holders(0);
        (h.contains(&third) && filling.is_none()).then_some(())
    });
    c.daemon(&survivor).kill9();
    check_all(
        &vm,
        &expected,
        "from the copy that restarted during its repair",
    );
}

#[test]
fn repair_requests_from_peers_are_validated() {
    use lego_fabric::{Client, ErrorCode, Request};
    use lego_monitor_client::client::{CallError, MemoryClient};
    use lego_monitor_client::proto::manager::{self as m, RepairProgress};
    use lego_monitor_client::proto::memory::{self as mm, MemoryOp, MAX_FENCE_PAGES};

    let c = Cluster::new("repair-validate", "64", 44);
    let addr = c.first.monitor.clone();
    let mc = MemoryClient::connect(
        &addr,
        c.key.clone(),
        &cap(&c.key, 44, Rights::MEMORY),
        client_config(),
    )
    .expect("connect");
    let code = |e: CallError| e.remote_code();
    // A repair write outside any open repair fence.
    let e = mc.fill_run(0, &[1u8; PAGE_SIZE]).expect_err("no fence");
    assert!(format!("{e:?}").contains("FILL_BEGIN"), "{e:?}");
    assert_eq!(code(e), Some(ErrorCode::InvalidArgument));
    // Oversize fences and presence queries.
    let e = mc.fill_begin(0, MAX_FENCE_PAGES + 1).expect_err("oversize");
    assert_eq!(code(e), Some(ErrorCode::InvalidArgument));
    let e = mc.fill_begin(u64::MAX, 2).expect_err("overflow");
    assert_eq!(code(e), Some(ErrorCode::InvalidArgument));
    let raw = Client::connect(addr.as_str(), c.key.clone(), client_config()).expect("raw");
    raw.attach(&cap(&c.key, 44, Rights::MEMORY))
        .expect("attach");
    let body = MemoryOp::Present {
        start: 0,
        count: mm::MAX_PRESENT_PAGES,
    }
    .encode();
    let mut big = body.clone();
    big[8..12].copy_from_slice(&(mm::MAX_PRESENT_PAGES + 1).to_le_bytes());
    let e = raw
        .call(Request::new(mm::PRESENT, 44, big))
        .expect_err("oversize presence query");
    assert_eq!(
        CallError::from(e).remote_code(),
        Some(ErrorCode::InvalidArgument)
    );
    // A presence query over the vNode's whole region (64 MiB, 16384 pages) is answered; the
    // largest one runs past the region, which the monitor does not hold for the vNode.
    let whole_region = MemoryOp::Present {
        start: 0,
        count: 16384,
    }
    .encode();
    assert!(raw
        .call(Request::new(mm::PRESENT, 44, whole_region))
        .is_ok());
    let e = raw
        .call(Request::new(mm::PRESENT, 44, body.clone()))
        .expect_err("a presence query past the vNode's placement");
    assert_eq!(CallError::from(e).remote_code(), Some(ErrorCode::Forbidden));
    // Another vNode's capability, and none at all, are refused.
    let e = raw
        .call(Request::new(mm::PRESENT, 45, body.clone()))
        .expect_err("foreign vNode");
    assert!(
        matches!(
            CallError::from(e).remote_code(),
            Some(ErrorCode::Forbidden | ErrorCode::Unauthenticated)
        ),
        "a request for a vNode without its capability"
    );
    let e = raw
        .call(Request::new(
            mm::FILL_BEGIN,
            0,
            MemoryOp::FillBegin { start: 0, count: 1 }.encode(),
        ))
        .expect_err("vNode 0");
    assert_eq!(CallError::from(e).remote_code(), Some(ErrorCode::Forbidden));
    // A truncated fill is refused, and the monitor still serves.
    let e = raw
        .call(Request::new(mm::FILL_RUN, 44, vec![0; 13]))
        .expect_err("truncated");
    assert_eq!(
        CallError::from(e).remote_code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert!(mc.present(0, 8).is_ok());
    // The manager refuses reports about regions that do not exist, and cancels reports
    // for a target that is not the region's.
    let report = |region: u64, target: &str, copied: u64| RepairProgress {
        vnode: 44,
        region,
        target: target.into(),
        copied_pages: copied,
        total_pages: 10,
        done: false,
    };
    let e =
        c.mc.repair_progress(&report(9, "x", 0))
            .expect_err("no region 9");
    assert_eq!(code(e), Some(ErrorCode::InvalidArgument));
    let e =
        c.mc.repair_progress(&report(0, "x", 11))
            .expect_err("11 of 10");
    assert_eq!(code(e), Some(ErrorCode::InvalidArgument));
    assert_eq!(
        c.mc.repair_progress(&report(0, "x", 1)).expect("report"),
        m::RepairAck::Cancelled
    );
    let e = c.mc.memory_placement(999).expect_err("unknown vNode");
    assert_eq!(code(e), Some(ErrorCode::NotFound));
}

#[test]
fn a_holder_restarted_before_it_was_missed_is_repaired_like_a_dead_one() {
    let mut c = Cluster::new("repair-reborn", "0", 44);
    let vm = c.vnode_memory();
    let written = 4096u64;
    let mut expected = vec![TRIMMED; vm.pages() as usize];
    for start in (0..written).step_by(RUN as usize) {
        write(&vm, start, 0).expect("write");
        expected[start as usize..(start + RUN) as usize].fill(0);
    }
    let victim = c.first.monitor.clone();
    let survivor = c.first.replicas[0].clone();
    // Killed and started again at once, empty, at the same address: well inside the
    // manager's three missed heartbeats (600 ms), so it is never declared dead. Its new
    // incarnation at registration tells the manager its copy is gone.
    let key = c.key.clone();
    let d = c.daemon(&victim);
    d.kill9();
    d.restart();
    d.wait_ready(&key);
    let r = eventually("the region to be repaired", || {
        let r = c.region();
        let h: Vec<&str> = r.holders().collect();
        (r.health == Some(RegionHealth::Healthy) && h.len() == 2 && r.repair.is_none()).then_some(r)
    });
    assert!(
        r.holders().any(|h| h == survivor),
        "the survivor keeps its copy: {r:?}"
    );
    let status = c.mc.status().expect("status");
    let restarted = status
        .monitors
        .iter()
        .find(|m| m.addr == victim)
        .expect("the restarted monitor is listed");
    assert_ne!(
        restarted.state,
        MonitorState::Dead,
        "it was never declared dead: {restarted:?}"
    );
    // Every page reads right, and still does from the repaired copy alone.
    eventually("the client to use the repaired copy", || {
        vm.holders(0).1.is_none().then_some(())
    });
    check_all(&vm, &expected, "after the repair");
    c.daemon(&survivor).kill9();
    eventually("the manager to drop the survivor", || {
        let gone = !c.region().holders().any(|h| h == survivor);
        gone.then_some(())
    });
    check_all(&c.vnode_memory(), &expected, "from the repaired copy alone");
}
