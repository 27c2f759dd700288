//! vNode leases: the real manager, with a short `--vnode-lease-secs`, keeps the memory of a
//! vNode whose lease is renewed, reclaims (and logs) a vNode whose renewals stopped, and
//! never touches a vNode no backend ever renewed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lego_monitor_client::client::{LeaseKeeper, ManagerClient};

/// The vRegions the manager has placed for `vnode`.
fn regions(mc: &ManagerClient, vnode: u64) -> usize {
    mc.status()
        .expect("status")
        .vnodes
        .iter()
        .find(|v| v.vnode == vnode)
        .map_or(0, |v| v.memory.regions.len())
}

#[test]
fn a_vnode_whose_lease_lapsed_has_its_memory_reclaimed() {
    let key = key();
    let mut net = Net::new("vnode_lease");
    let mgr = start_manager_sized(&mut net, &key, "16M", &["--vnode-lease-secs", "2"]);
    let _mem = start_memory_monitor(&mut net, &key, "mem", mgr.addr(), &[]);
    let mc = ManagerClient::connect(mgr.addr(), key.clone(), client_config()).expect("manager");
    eventually("the memory monitor registered", || {
        (mc.status().ok()?.monitors.len() == 1).then_some(())
    });
    for vnode in [21, 22, 23] {
        mc.place_memory(vnode, 32 << 20).expect("place");
        assert_eq!(regions(&mc, vnode), 2);
    }
    // 21 is renewed by a keeper, 22 once only, 23 never (placed without a backend).
    let keeper = LeaseKeeper::start(mc.clone(), 21);
    assert_eq!(mc.renew_lease(22).expect("renew"), Duration::from_secs(2));
    let renewed = Instant::now();

    eventually("vNode 22's memory reclaimed", || {
        (regions(&mc, 22) == 0).then_some(())
    });
    let took = renewed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "reclaimed after {took:?}, before the lease ran out"
    );
    assert_eq!(regions(&mc, 21), 2, "a renewed lease keeps the memory");
    assert_eq!(
        regions(&mc, 23),
        2,
        "a vNode never renewed is not reclaimed"
    );
    let log = mgr.log_text();
    assert!(
        log.contains("lease lapsed") && log.contains("vnode=22"),
        "the reclaim is logged:\n{log}"
    );

    // The backend stops renewing (its host is gone): the memory goes too.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        regions(&mc, 21),
        2,
        "still renewed after longer than a lease"
    );
    drop(keeper);
    eventually("vNode 21's memory reclaimed", || {
        (regions(&mc, 21) == 0).then_some(())
    });
    // Placed again, it gets memory like any vNode.
    mc.place_memory(22, 16 << 20).expect("place again");
    assert_eq!(regions(&mc, 22), 1);
}
