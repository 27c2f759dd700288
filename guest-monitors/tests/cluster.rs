//! End-to-end tests of the real daemons over the fabric, each daemon in its own network
//! namespace (see `common`).

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use lego_fabric::{Client, ClusterKey, ErrorCode, Request, Rights};
use lego_monitor_client::client::{
    CallError, ManagerClient, MemoryClient, PageOp, StorageClient, VnodeMemory,
};
use lego_monitor_client::proto::manager::{MemoryPlacement, MonitorState};
use lego_monitor_client::proto::memory::{self as mm, PAGE_SIZE};

const REGION: u64 = 64 << 20;

fn start_memory(
    net: &mut Net,
    key: &ClusterKey,
    name: &str,
    capacity: &str,
    manager: Option<&str>,
) -> Daemon {
    let h = net.host("mem");
    let mut a = args(&[
        "--listen",
        &h.addr,
        "--capacity",
        capacity,
        "--heartbeat-ms",
        "200",
    ]);
    if let Some(m) = manager {
        a.extend(args(&["--manager", m]));
    }
    let mut d = Daemon::start(net, name, MEMORY_BIN, &h, &a, key);
    d.wait_ready(key);
    d
}

fn start_storage(net: &mut Net, key: &ClusterKey, data: &str) -> (Daemon, Host) {
    start_storage_with(net, key, data, None)
}

fn start_storage_with(
    net: &mut Net,
    key: &ClusterKey,
    data: &str,
    manager: Option<&str>,
) -> (Daemon, Host) {
    let h = net.host("st");
    let dir = net.path(data);
    let mut a = args(&[
        "--listen",
        &h.addr,
        "--data-dir",
        dir.to_str().expect("utf8"),
        "--capacity",
        "1G",
        "--heartbeat-ms",
        "200",
    ]);
    if let Some(m) = manager {
        a.extend(args(&["--manager", m]));
    }
    let mut d = Daemon::start(net, "storage", STORAGE_BIN, &h, &a, key);
    d.wait_ready(key);
    (d, h)
}

/// Deterministic page content, distinct per page and cheap to make even in debug builds
/// (a fill byte plus stamps of the page index and a hash); every 97th page is all zeros.
fn fill_page(page: u64, buf: &mut [u8]) {
    if page.is_multiple_of(97) {
        buf.fill(0);
        return;
    }
    buf.fill((page % 251) as u8 + 1);
    let h = page.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    for (i, off) in [0usize, 1000, 2048, 3000, 4088].into_iter().enumerate() {
        let v = if i % 2 == 0 { page } else { h };
        buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes then reads back every page of `runs` (first page, count) through `client`, with
/// `window` requests in flight; returns the number of pages checked.
fn write_and_verify(client: &MemoryClient, runs: &[(u64, u32)], window: usize) -> u64 {
    let mut crcs: Vec<u32> = Vec::new();
    let mut inflight = VecDeque::new();
    let mut buf = Vec::new();
    for &(start, count) in runs {
        buf.resize(count as usize * PAGE_SIZE, 0);
        for (i, p) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
            fill_page(start + i as u64, p);
            crcs.push(crc32c::crc32c(p));
        }
        inflight.push_back(client.submit_write_run(start, &buf).expect("submit write"));
        if inflight.len() >= window {
            inflight
                .pop_front()
                .expect("pending")
                .wait()
                .expect("write");
        }
    }
    for p in inflight.drain(..) {
        p.wait().expect("write");
    }
    let mut idx = 0usize;
    let mut checked = 0u64;
    let mut verify = |data: Vec<u8>, start: u64| {
        for (i, p) in data.chunks_exact(PAGE_SIZE).enumerate() {
            assert_eq!(
                crc32c::crc32c(p),
                crcs[idx],
                "page {} read back wrong",
                start + i as u64
            );
            idx += 1;
            checked += 1;
        }
    };
    let mut reads = VecDeque::new();
    for &(start, count) in runs {
        reads.push_back((
            start,
            client.submit_read_run(start, count).expect("submit read"),
        ));
        if reads.len() >= window {
            let (s, p) = reads.pop_front().expect("pending");
            verify(p.wait().expect("read"), s);
        }
    }
    for (s, p) in reads.drain(..) {
        verify(p.wait().expect("read"), s);
    }
    checked
}

#[test]
fn million_pages_across_two_memory_monitors() {
    let key = key();
    let mut net = Net::new("million_pages");
    // One copy of each region: this test is about spreading, not copies.
    let mgr = start_manager(&mut net, &key, &["--copies", "1"]);
    let m1 = start_memory(&mut net, &key, "mem1", "3G", Some(mgr.addr()));
    let m2 = start_memory(&mut net, &key, "mem2", "3G", Some(mgr.addr()));
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("both memory monitors registered", || {
        (mc.status().ok()?.monitors.len() == 2).then_some(())
    });
    const PAGES: u64 = 1_000_000;
    let vnode = 11;
    let placement: MemoryPlacement = mc
        .place_memory(vnode, PAGES * PAGE_SIZE as u64)
        .expect("place");
    assert_eq!(placement.region_size, REGION);
    let on: Vec<usize> = [m1.addr(), m2.addr()]
        .iter()
        .map(|a| placement.regions.iter().filter(|r| r.monitor == *a).count())
        .collect();
    assert!(
        on[0] > 0 && on[1] > 0,
        "regions spread over both monitors: {on:?}"
    );
    let cap = mc
        .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
        .expect("cap");

    // Split the pages into 256-page runs, grouped by the monitor owning each run's region.
    let rp = placement.region_pages();
    let per_monitor: Vec<(String, Vec<(u64, u32)>)> = [m1.addr(), m2.addr()]
        .iter()
        .map(|addr| {
            let mut runs = Vec::new();
            let mut p = 0;
            while p < PAGES {
                let n = 256.min(PAGES - p).min(rp - p % rp);
                if placement.monitor_of_page(p) == Some(*addr) {
                    runs.push((p, n as u32));
                }
                p += n;
            }
            (addr.to_string(), runs)
        })
        .collect();
    let checked: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = per_monitor
            .iter()
            .map(|(addr, runs)| {
                let client = MemoryClient::connect(addr, key.clone(), &cap, client_config())
                    .expect("connect");
                s.spawn(move || write_and_verify(&client, runs, 16))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    assert_eq!(checked, PAGES);

    // A scattered read across regions, and the monitors' own accounting.
    let client =
        MemoryClient::connect(m1.addr(), key.clone(), &cap, client_config()).expect("connect");
    let pages: Vec<u64> = per_monitor[0]
        .1
        .iter()
        .step_by(97)
        .map(|r| r.0 + 1)
        .collect();
    let data = client
        .read_list(&pages[..pages.len().min(512)])
        .expect("read list");
    for (p, d) in pages.iter().zip(data.chunks_exact(PAGE_SIZE)) {
        let mut want = vec![0; PAGE_SIZE];
        fill_page(*p, &mut want);
        assert_eq!(d, &want[..], "page {p}");
    }
    let zero_pages = PAGES.div_ceil(97);
    let stored: u64 = [m1.addr(), m2.addr()]
        .iter()
        .map(|a| {
            let c = Client::connect(*a, key.clone(), client_config()).expect("connect");
            MemoryClient::monitor_stats(&c)
                .expect("stats")
                .store
                .pages_stored
        })
        .sum();
    assert_eq!(stored, PAGES - zero_pages, "zero pages cost nothing");
}

#[test]
fn storage_flush_survives_kill9_and_restart() {
    let key = key();
    let mut net = Net::new("flush_kill9");
    let (mut st, h) = start_storage(&mut net, &key, "vols");
    let cap = cap(&key, 3, Rights::STORAGE);
    let sc = StorageClient::connect(&h.addr, key.clone(), &cap, client_config()).expect("connect");
    sc.create("root", 64 << 20).expect("create");
    let mut expected = Vec::new();
    for i in 0..64u64 {
        let data: Vec<u8> = (0..4096u32).map(|b| (b as u64 * 31 + i) as u8).collect();
        let off = i * 997 * 4096 % (60 << 20) / 4096 * 4096;
        sc.write("root", off, &data, false).expect("write");
        expected.push((off, data));
    }
    sc.write("root", 63 << 20, b"forced unit access", true)
        .expect("fua write");
    sc.flush("root").expect("flush");
    st.kill9();
    st.restart();
    st.wait_ready(&key);
    let sc =
        StorageClient::connect(&h.addr, key.clone(), &cap, client_config()).expect("reconnect");
    assert_eq!(sc.stat("root").expect("stat").owner, 3);
    for (off, data) in &expected {
        assert_eq!(
            &sc.read("root", *off, 4096).expect("read"),
            data,
            "offset {off}"
        );
    }
    assert_eq!(
        sc.read("root", 63 << 20, 18).expect("read"),
        b"forced unit access"
    );
    // Names are per vNode: another vNode does not see vNode 3's `root`, and may have its own
    // `root` on the same monitor without touching vNode 3's; names cannot escape the folder.
    let other = StorageClient::connect(&h.addr, key.clone(), &cap_for(&key, 4), client_config())
        .expect("connect");
    assert_eq!(
        other
            .read("root", 0, 1)
            .map(|_| ())
            .expect_err("vNode 4 has no root yet")
            .remote_code(),
        Some(ErrorCode::NotFound)
    );
    other.create("root", 1 << 20).expect("vNode 4's own root");
    other
        .write("root", 0, b"vNode 4 was here", true)
        .expect("write vNode 4's root");
    assert_eq!(
        other.read("root", 0, 16).expect("read vNode 4's root"),
        b"vNode 4 was here"
    );
    let (off, data) = &expected[0];
    assert_eq!(
        &sc.read("root", *off, 4096)
            .expect("vNode 3's root after vNode 4's writes"),
        data
    );
    assert_eq!(sc.stat("root").expect("stat").size, 64 << 20);
    assert_eq!(
        other
            .create("../escape", 1)
            .expect_err("traversal")
            .remote_code(),
        Some(ErrorCode::InvalidArgument)
    );
}

/// A memory monitor killed with SIGKILL and started again comes back empty: the client
/// reconnects by itself, sees the new incarnation, and answers every page the old process
/// held with an error (never the zeros the new one would read back). Pages never written
/// read as zeros, pages written again read back, and the stale pages stay errors.
#[test]
fn a_restarted_memory_monitor_never_serves_zeros_for_pages_it_lost() {
    let key = key();
    let mut net = Net::new("memory_restart");
    let mut mem = start_memory(&mut net, &key, "memory", "64M", None);
    let addr = mem.addr().to_string();
    let client = MemoryClient::connect(&addr, key.clone(), &cap_for(&key, 7), client_config())
        .expect("connect");
    let first = client.fabric().incarnation().expect("connected");
    let mut page = vec![0u8; PAGE_SIZE];
    let mut written = Vec::new();
    for p in 0..8u64 {
        fill_page(p + 1, &mut page);
        client.write_page(p, &page).expect("write");
        written.push(page.clone());
    }
    assert_eq!(client.read_run(0, 8).expect("read"), written.concat());
    assert_eq!(client.custody_counts(), (8, 0));

    mem.kill9();
    mem.restart();
    mem.wait_ready(&key);
    // The first answer from the new process may take a reconnection or two.
    let zeros = eventually("a read from the restarted monitor", || {
        client.read_page(100).ok()
    });
    assert_eq!(zeros, vec![0u8; PAGE_SIZE], "page 100 was never written");
    assert_ne!(
        client.fabric().incarnation(),
        Some(first),
        "a new incarnation"
    );
    assert_eq!(
        client.custody_counts(),
        (0, 8),
        "all 8 stored pages are lost"
    );
    for p in 0..8u64 {
        match client.read_page(p) {
            Err(CallError::Lost { .. }) => {}
            other => panic!("page {p} of the dead monitor: {other:?}"),
        }
    }
    let err = client.read_run(6, 4).expect_err("a run over lost pages");
    let text = lego_report::error_chain(&err);
    assert!(
        text.contains("restarted") && text.contains("page 6"),
        "{text}"
    );
    // Writing a page again makes it good; its neighbours stay lost.
    fill_page(42, &mut page);
    client.write_page(3, &page).expect("write again");
    assert_eq!(client.read_page(3).expect("read"), page);
    assert!(matches!(client.read_page(4), Err(CallError::Lost { .. })));
    // The same through VnodeMemory's batched path.
    let ops = [PageOp::Read { start: 2, count: 2 }];
    let mut done = client.submit_runs(&ops).expect("submit");
    assert!(matches!(done.remove(0).wait(), Err(CallError::Lost { .. })));
    // Trimmed pages read as zeros rightly.
    client.trim(4, 4).expect("trim");
    assert_eq!(
        client.read_run(4, 4).expect("read"),
        vec![0u8; 4 * PAGE_SIZE]
    );
}

/// Three memory monitors and the manager's default of two copies per vRegion: one monitor
/// is killed with SIGKILL in the middle of a stream of writes. Every page still reads back
/// right (from the surviving copy), writes go on without an error, and once the monitor
/// comes back empty the pages it lost are served by the other copy, never as zeros.
#[test]
fn a_vnode_keeps_every_page_when_a_monitor_holding_a_copy_dies() {
    let key = key();
    let mut net = Net::new("copies");
    let mgr = start_manager(&mut net, &key, &[]);
    let mut mons: Vec<Daemon> = (1..=3)
        .map(|i| start_memory(&mut net, &key, &format!("mem{i}"), "1G", Some(mgr.addr())))
        .collect();
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("three memory monitors registered", || {
        (mc.status().ok()?.monitors.len() == 3).then_some(())
    });
    let vnode = 31;
    let p = mc.place_memory(vnode, 4 * REGION).expect("place");
    for r in &p.regions {
        let h: Vec<&str> = r.holders().collect();
        assert_eq!(h.len(), 2, "two copies by default: {p:?}");
        assert_ne!(h[0], h[1]);
    }
    let cap = mc
        .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
        .expect("cap");
    let config = lego_fabric::ClientConfig {
        reconnect_patience: Some(Duration::ZERO),
        ..client_config()
    };
    let vm = VnodeMemory::connect(p.clone(), key.clone(), &cap, config).expect("connect");
    let pages = vm.pages();
    let stamp = |page: u64, round: u64| {
        let mut buf = vec![0u8; PAGE_SIZE];
        fill_page(page * 7 + round, &mut buf);
        buf
    };
    // Round 0 everywhere, in 64-page runs.
    let run = 64u64;
    let mut expected_round = vec![0u64; pages as usize];
    let write = |start: u64, round: u64| {
        let data: Vec<u8> = (start..start + run).flat_map(|p| stamp(p, round)).collect();
        vm.write_run(start, &data)
    };
    for start in (0..pages).step_by(run as usize) {
        write(start, 0).expect("write round 0");
    }
    // The monitor holding the first region's primary dies; writes of round 1 go on.
    let victim = mons
        .iter()
        .position(|m| m.addr() == p.regions[0].monitor)
        .expect("the primary's daemon");
    let mut errors = 0;
    for (i, start) in (0..pages).step_by(run as usize).enumerate() {
        if i == 8 {
            mons[victim].kill9();
        }
        if i % 3 == 0 {
            match write(start, 1) {
                Ok(()) => {
                    for p in start..start + run {
                        expected_round[p as usize] = 1;
                    }
                }
                Err(_) => errors += 1,
            }
        }
    }
    assert_eq!(
        errors, 0,
        "writes failed although a copy of every region was alive"
    );
    let check = |vm: &VnodeMemory, expected_round: &[u64], what: &str| {
        for start in (0..pages).step_by(run as usize) {
            let got = vm
                .read_run(start, run)
                .unwrap_or_else(|e| panic!("{what}: pages {start}+{run}: {e:?}"));
            for (k, page) in got.chunks_exact(PAGE_SIZE).enumerate() {
                let p = start + k as u64;
                assert!(
                    page == stamp(p, expected_round[p as usize]).as_slice(),
                    "{what}: page {p} is not round {}",
                    expected_round[p as usize]
                );
            }
        }
    };
    check(&vm, &expected_round, "with a monitor dead");
    // The monitor comes back empty: the pages it held are lost there, and served elsewhere.
    mons[victim].restart();
    mons[victim].wait_ready(&key);
    std::thread::sleep(super_down_for());
    check(&vm, &expected_round, "after the monitor came back empty");
    // And new writes land on both copies again.
    write(0, 2).expect("write after the restart");
    for p in 0..run {
        expected_round[p as usize] = 2;
    }
    check(&vm, &expected_round, "after writing again");
}

/// A little more than the time a failed copy is skipped, so the next request tries it again.
fn super_down_for() -> Duration {
    lego_monitor_client::client::vnode::DOWN_FOR + Duration::from_millis(200)
}

fn cap_for(key: &ClusterKey, vnode: u64) -> lego_fabric::Capability {
    cap(key, vnode, Rights::STORAGE | Rights::MEMORY)
}

#[test]
fn unauthenticated_and_foreign_vnode_requests_are_rejected() {
    let key = key();
    let mut net = Net::new("auth");
    let m = start_memory(&mut net, &key, "mem", "64M", None);
    let wrong = ClusterKey::from_bytes([0x11; 32]);
    assert!(
        Client::connect(m.addr(), wrong, client_config()).is_err(),
        "a wrong cluster key must be refused"
    );

    let owner = MemoryClient::connect(
        m.addr(),
        key.clone(),
        &cap(&key, 1, Rights::MEMORY),
        client_config(),
    )
    .expect("owner");
    owner.write_page(5, &[0xee; PAGE_SIZE]).expect("write");

    // vNode 2 asks for vNode 1's page on a connection holding only vNode 2's capability.
    let intruder = Client::connect(m.addr(), key.clone(), client_config()).expect("connect");
    intruder
        .attach(&cap(&key, 2, Rights::MEMORY))
        .expect("attach");
    let body = mm::MemoryOp::ReadRun { start: 5, count: 1 }.encode();
    let e = intruder
        .call(Request::new(mm::READ_RUN, 1, body.clone()))
        .expect_err("foreign vNode");
    let code = CallError::from(e).remote_code();
    assert!(
        matches!(
            code,
            Some(ErrorCode::Forbidden | ErrorCode::Unauthenticated)
        ),
        "{code:?}"
    );
    // Its own vNode sees zeros at the same index, not vNode 1's data.
    let own = MemoryClient::from_client(intruder.clone(), 2);
    assert_eq!(own.read_page(5).expect("own page"), vec![0; PAGE_SIZE]);
    // A forged capability (signed with another key) is refused.
    let forged = cap(&ClusterKey::from_bytes([0x22; 32]), 1, Rights::MEMORY);
    assert!(
        intruder.attach(&forged).is_err()
            || intruder.call(Request::new(mm::READ_RUN, 1, body)).is_err()
    );
    // A storage-only capability does not open memory.
    let c3 = Client::connect(m.addr(), key.clone(), client_config()).expect("connect");
    c3.attach(&cap(&key, 3, Rights::STORAGE)).expect("attach");
    let e = MemoryClient::from_client(c3, 3)
        .read_page(0)
        .expect_err("no memory right");
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden));
    assert_eq!(
        owner.read_page(5).expect("owner still reads"),
        vec![0xee; PAGE_SIZE]
    );
}

/// A memory monitor with a manager serves a vNode only the pages of the vRegions placed on
/// it: a vNode with a valid capability can neither write far beyond its placement nor into the
/// region reserved for another vNode, so that vNode's writes still find room.
#[test]
fn a_vnode_is_served_only_within_its_placement() {
    let key = key();
    let mut net = Net::new("bounds");
    let mgr = start_manager(&mut net, &key, &[]);
    let mem = start_memory(&mut net, &key, "mem", "192M", Some(mgr.addr()));
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("the memory monitor registered", || {
        (mc.status().ok()?.monitors.len() == 1).then_some(())
    });
    let p7 = mc.place_memory(7, REGION).expect("place vNode 7");
    let p8 = mc.place_memory(8, REGION).expect("place vNode 8");
    assert_eq!((p7.regions.len(), p8.regions.len()), (1, 1));
    let region_pages = REGION / PAGE_SIZE as u64;
    let client = |vnode: u64| {
        let cap = mc
            .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
            .expect("capability");
        MemoryClient::connect(mem.addr(), key.clone(), &cap, client_config()).expect("connect")
    };
    let (v7, v8) = (client(7), client(8));
    v7.write_page(0, &[7; PAGE_SIZE])
        .expect("inside vNode 7's region");
    v7.write_page(region_pages - 1, &[7; PAGE_SIZE])
        .expect("the last page of vNode 7's region");
    for page in [region_pages, 1_000_000_000] {
        let e = v7
            .write_page(page, &[0xbad_u32 as u8; PAGE_SIZE])
            .expect_err("a page outside vNode 7's placement was written");
        assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "page {page}");
        assert!(
            lego_report::error_chain(&e).contains("outside the vRegions"),
            "{}",
            lego_report::error_chain(&e)
        );
        let e = v7.read_page(page).expect_err("read outside the placement");
        assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden));
    }
    let e = v7
        .write_run(region_pages - 1, &vec![7; 2 * PAGE_SIZE])
        .expect_err("a run crossing the end of the region");
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden));
    // vNode 8's reservation is intact: its whole region's last page still finds room.
    v8.write_page(region_pages - 1, &[8; PAGE_SIZE])
        .expect("vNode 8 writes into its own reservation");
    assert_eq!(v7.read_page(0).expect("read back"), vec![7; PAGE_SIZE]);
    assert_eq!(
        v8.read_page(region_pages - 1).expect("read back"),
        vec![8; PAGE_SIZE]
    );
    // An unplaced vNode with a capability gets nothing.
    let e = client(9)
        .write_page(0, &[9; PAGE_SIZE])
        .expect_err("an unplaced vNode wrote");
    assert!(
        matches!(
            e.remote_code(),
            Some(ErrorCode::Forbidden | ErrorCode::Unavailable)
        ),
        "{e:?}"
    );
    // Once its placement grows, the vNode uses its new region (the monitor asks the manager
    // again on a page outside what it knew, at most every MISS_REFETCH_EVERY).
    mc.place_memory(7, 2 * REGION).expect("grow vNode 7");
    std::thread::sleep(lego_monitors::bounds::MISS_REFETCH_EVERY);
    v7.write_page(region_pages, &[17; PAGE_SIZE])
        .expect("the first page of vNode 7's new region");
    assert_eq!(
        v7.read_page(region_pages).expect("read back"),
        vec![17; PAGE_SIZE]
    );
}

/// A storage monitor with a manager creates a vNode's volume only as the manager placed it;
/// two vNodes may each have a volume `root` on it.
#[test]
fn volumes_are_created_only_as_placed_and_named_per_vnode() {
    let key = key();
    let mut net = Net::new("volbounds");
    let mgr = start_manager(&mut net, &key, &[]);
    let (_st, h) = start_storage_with(&mut net, &key, "vols", Some(mgr.addr()));
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("the storage monitor registered", || {
        (mc.status().ok()?.monitors.len() == 1).then_some(())
    });
    let client = |vnode: u64| {
        let cap = mc
            .issue_capability(vnode, Rights::STORAGE, Duration::ZERO)
            .expect("capability");
        StorageClient::connect(&h.addr, key.clone(), &cap, client_config()).expect("connect")
    };
    let (s3, s4) = (client(3), client(4));
    let e = s3
        .create("root", 1 << 20)
        .expect_err("created without a placement");
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden));
    assert!(
        lego_report::error_chain(&e).contains("has not placed it"),
        "{}",
        lego_report::error_chain(&e)
    );
    for vnode in [3, 4] {
        let p = mc.place_volume(vnode, "root", 1 << 20).expect("place");
        assert_eq!(p.monitor, h.addr);
    }
    s3.create("root", 1 << 20).expect("vNode 3's root");
    s4.create("root", 1 << 20)
        .expect("vNode 4's root on the same monitor");
    s3.write("root", 0, b"three", true).expect("write 3");
    s4.write("root", 0, b"four!", true).expect("write 4");
    assert_eq!(s3.read("root", 0, 5).expect("read 3"), b"three");
    assert_eq!(s4.read("root", 0, 5).expect("read 4"), b"four!");
    let e = s3
        .resize("root", 64 << 20)
        .expect_err("grown beyond its reservation");
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden));
    s3.resize("root", 4096)
        .expect("shrinking needs no placement");
    mc.place_volume(3, "big", 2 << 20).expect("place big");
    let e = s3
        .create("big", 4 << 20)
        .expect_err("created larger than placed");
    assert!(
        lego_report::error_chain(&e).contains("reserved 2097152 bytes"),
        "{}",
        lego_report::error_chain(&e)
    );
}

#[test]
fn malformed_frames_do_not_disturb_other_clients() {
    let key = key();
    let mut net = Net::new("malformed");
    let m = start_memory(&mut net, &key, "mem", "64M", None);
    let good = MemoryClient::connect(
        m.addr(),
        key.clone(),
        &cap(&key, 7, Rights::MEMORY),
        client_config(),
    )
    .expect("connect");
    good.write_page(1, &[1; PAGE_SIZE]).expect("write");
    for round in 0..5u8 {
        // Garbage on a raw TCP connection: the server closes that connection only.
        let mut raw = TcpStream::connect(m.addr()).expect("raw connect");
        raw.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut junk = vec![0xffu8; 64];
        junk[0] = round;
        let _ = raw.write_all(&junk);
        let mut sink = [0u8; 256];
        let _ = raw.read(&mut sink);
        // A bad body on an authenticated connection: an error answer, the connection lives on.
        let e = good
            .fabric()
            .call(Request::new(mm::WRITE_RUN, 7, vec![round; 13]))
            .expect_err("bad body");
        assert_eq!(
            CallError::from(e).remote_code(),
            Some(ErrorCode::InvalidArgument)
        );
        let e = good
            .fabric()
            .call(Request::new(0x01ee, 7, Vec::new()))
            .expect_err("bad opcode");
        assert_eq!(
            CallError::from(e).remote_code(),
            Some(ErrorCode::InvalidArgument)
        );
        good.write_page(2 + round as u64, &[round + 2; PAGE_SIZE])
            .expect("still working");
    }
    assert_eq!(good.read_page(1).expect("read"), vec![1; PAGE_SIZE]);
    assert_eq!(good.read_page(6).expect("read"), vec![6; PAGE_SIZE]);
}

#[test]
fn manager_restarts_with_placements_and_reports_dead_monitors() {
    let key = key();
    let mut net = Net::new("manager");
    let mut mgr = start_manager(
        &mut net,
        &key,
        &["--missed-heartbeats", "3", "--copies", "1"],
    );
    let mut m1 = start_memory(&mut net, &key, "mem1", "1G", Some(mgr.addr()));
    let _m2 = start_memory(&mut net, &key, "mem2", "512M", Some(mgr.addr()));
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("monitors registered", || {
        (mc.status().ok()?.monitors.len() == 2).then_some(())
    });
    let p = mc.place_memory(21, 1 << 30).expect("place");
    assert_eq!(p.regions.len(), 16);
    // Never over-committed: 1.5 GiB in total, 1 GiB reserved, 1 GiB more does not fit.
    let e = mc
        .place_memory(22, 1 << 30)
        .expect_err("over-commit refused");
    assert_eq!(e.remote_code(), Some(ErrorCode::NoSpace));

    // A run across a region boundary goes to both monitors through VnodeMemory.
    let cap21 = mc
        .issue_capability(21, Rights::MEMORY, Duration::ZERO)
        .expect("cap");
    let vm = VnodeMemory::connect(p.clone(), key.clone(), &cap21, client_config())
        .expect("vnode memory");
    let rp = p.region_pages();
    let boundary: Vec<u8> = (0..8 * PAGE_SIZE)
        .map(|i| (i / PAGE_SIZE) as u8 + 1)
        .collect();
    let cross = (1..p.regions.len() as u64)
        .find(|&r| p.regions[r as usize].monitor != p.regions[r as usize - 1].monitor)
        .expect("adjacent regions on different monitors");
    vm.write_run(cross * rp - 4, &boundary)
        .expect("write across the boundary");
    assert_eq!(vm.read_run(cross * rp - 4, 8).expect("read back"), boundary);
    assert!(
        vm.read_run(vm.pages() - 1, 2).is_err(),
        "past the placed memory"
    );
    // One batch of many ops over both monitors: writes on either side of the boundary and a
    // bad op in the middle, then reads of them all; only the bad op fails.
    let page = |n: u8| vec![n; PAGE_SIZE];
    let (a, b) = (cross * rp - 1, cross * rp);
    let (pa, pb) = (page(0xa1), page(0xb2));
    let writes = [
        PageOp::Write {
            start: a,
            data: &pa,
        },
        PageOp::Read {
            start: vm.pages(),
            count: 1,
        },
        PageOp::Write {
            start: b,
            data: &pb,
        },
    ];
    let done: Vec<_> = vm.submit(&writes).into_iter().map(|p| p.wait()).collect();
    assert!(done[0].is_ok() && done[2].is_ok(), "{done:?}");
    assert!(done[1].is_err(), "a read past the placed memory must fail");
    let reads = [
        PageOp::Read { start: b, count: 1 },
        PageOp::Read { start: a, count: 2 },
    ];
    let got: Vec<_> = vm
        .submit(&reads)
        .into_iter()
        .map(|p| p.wait().expect("batched read"))
        .collect();
    assert_eq!(got[0], pb);
    assert_eq!(got[1], [pa.clone(), pb.clone()].concat());
    assert_eq!(vm.trim(cross * rp - 4, 8).expect("trim"), 8);
    vm.write_run(a, &[pa.clone(), pb.clone()].concat())
        .expect("two pages on two monitors");
    assert_eq!(vm.free_all().expect("free all"), 2);
    assert_eq!(
        vm.read_run(a, 2).expect("read freed"),
        vec![0; 2 * PAGE_SIZE]
    );

    mgr.kill9();
    mgr.restart();
    mgr.wait_ready(&key);
    let mc =
        ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager again");
    let st = mc.status().expect("status");
    let v = st
        .vnodes
        .iter()
        .find(|v| v.vnode == 21)
        .expect("vNode 21 remembered");
    assert_eq!(v.memory, p, "placements survive the restart");

    m1.kill9();
    let m1_addr = m1.addr().to_string();
    eventually("the killed monitor reported dead", || {
        let st = mc.status().ok()?;
        let mon = st.monitors.iter().find(|m| m.addr == m1_addr)?;
        (mon.state == MonitorState::Dead).then_some(())
    });
    assert!(
        mgr.log_text().contains("considered dead"),
        "the manager logs the death"
    );
    let st = mc.status().expect("status");
    assert!(st
        .monitors
        .iter()
        .any(|m| m.addr != m1_addr && m.state == MonitorState::Alive));
    // New placements avoid the dead monitor.
    let p2 = mc
        .place_memory(23, 128 << 20)
        .expect("place on the live monitor");
    assert!(p2.regions.iter().all(|r| r.monitor != m1_addr));
}

#[test]
fn capacity_trim_and_stats_over_the_fabric() {
    let key = key();
    let mut net = Net::new("capacity");
    let m = start_memory(&mut net, &key, "mem", "1M", None);
    let c = MemoryClient::connect(
        m.addr(),
        key.clone(),
        &cap(&key, 9, Rights::MEMORY),
        client_config(),
    )
    .expect("connect");
    let run = vec![0x42u8; 128 * PAGE_SIZE];
    c.write_run(0, &run).expect("first 128 pages");
    c.write_run(128, &run).expect("256 pages = 1 MiB");
    let e = c
        .write_page(1000, &[1; PAGE_SIZE])
        .expect_err("over capacity");
    assert_eq!(e.remote_code(), Some(ErrorCode::NoSpace));
    let msg = lego_report::error_chain(&e);
    assert!(msg.contains("full"), "clear message: {msg}");
    // Overwrites and zero pages need no capacity.
    c.write_page(5, &[7; PAGE_SIZE]).expect("overwrite");
    c.write_page(6, &[0; PAGE_SIZE]).expect("zero page frees");
    c.write_page(1000, &[1; PAGE_SIZE])
        .expect("the freed page is usable");
    assert_eq!(c.trim(0, 100).expect("trim"), 99);
    assert_eq!(c.stats().expect("stats").pages_stored, 157);
    c.write_list(&[3, 77_777], &[[3u8; PAGE_SIZE], [4u8; PAGE_SIZE]].concat())
        .expect("write list");
    assert_eq!(
        c.read_list(&[77_777, 3, 2]).expect("read list"),
        [[4u8; PAGE_SIZE], [3u8; PAGE_SIZE], [0u8; PAGE_SIZE]].concat()
    );
    let admin = Client::connect(m.addr(), key.clone(), client_config()).expect("connect");
    let st = MemoryClient::monitor_stats(&admin)
        .expect("monitor stats")
        .store;
    assert_eq!(st.capacity_bytes, 1 << 20);
    assert_eq!(st.per_vnode, vec![(9, 159)]);
    assert!(st.nospace_errors >= 1 && st.zero_pages_written >= 1);
    assert_eq!(c.free_all().expect("free all"), 159);
    assert_eq!(c.read_page(1000).expect("read"), vec![0; PAGE_SIZE]);
}

#[test]
fn volume_operations_over_the_fabric() {
    let key = key();
    let mut net = Net::new("volumes");
    let (_st, h) = start_storage(&mut net, &key, "vols");
    let sc = StorageClient::connect(
        &h.addr,
        key.clone(),
        &cap(&key, 8, Rights::STORAGE),
        client_config(),
    )
    .expect("connect");
    sc.create("data", 1 << 20).expect("create");
    assert_eq!(
        sc.create("data", 1).expect_err("exists").remote_code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        sc.create("huge", 2 << 30)
            .expect_err("capacity")
            .remote_code(),
        Some(ErrorCode::NoSpace)
    );
    sc.write("data", 0, &[9u8; 65536], false).expect("write");
    sc.discard("data", 0, 4096).expect("discard");
    sc.write_zeroes("data", 8192, 4096).expect("write zeroes");
    let back = sc.read("data", 0, 16384).expect("read");
    assert_eq!(&back[..4096], &[0u8; 4096][..]);
    assert_eq!(&back[4096..8192], &[9u8; 4096][..]);
    assert_eq!(&back[8192..12288], &[0u8; 4096][..]);
    assert_eq!(
        sc.read("data", (1 << 20) - 1, 2)
            .expect_err("past the end")
            .remote_code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(sc.resize("data", 2 << 20).expect("resize").size, 2 << 20);
    sc.read("data", (2 << 20) - 2, 2).expect("grown");
    assert_eq!(sc.list().expect("list").len(), 1);
    assert_eq!(
        sc.stat("nope").expect_err("missing").remote_code(),
        Some(ErrorCode::NotFound)
    );
    sc.delete("data").expect("delete");
    assert!(sc.list().expect("list").is_empty());
}
