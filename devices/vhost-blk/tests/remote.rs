//! The daemon against a real cluster: a manager, a memory monitor and a storage monitor from
//! `lego-monitors`, run in this process on loopback, with the daemon placing its store through
//! the manager and reaching the monitors over the fabric with the capability it was issued.

mod common;

use common::cluster::Cluster;
use common::*;
use lego_testkit::vhost_user::blk::*;
use vm_memory::{Bytes, GuestAddress};

/// Writes a pattern at `sector`, reads it back through the device, and returns it.
fn write_and_read_back(d: &mut Driver, sector: u64, len: u32, seed: u32) -> Vec<u8> {
    let pattern: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(seed) % 251) as u8)
        .collect();
    d.mem
        .write_slice(&pattern, GuestAddress(DATA))
        .expect("data");
    assert_eq!(
        d.request(T_OUT, sector, Some((len, false))),
        (1, 0),
        "write"
    );
    d.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(
        d.request(T_IN, sector, Some((len, true))),
        (len + 1, 0),
        "read"
    );
    let mut back = vec![0u8; len as usize];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read back");
    assert_eq!(back, pattern, "data read back through the device");
    pattern
}

fn get_id(d: &mut Driver) -> Vec<u8> {
    assert_eq!(d.request(T_GET_ID, 0, Some((20, true))), (21, 0));
    let mut id = vec![0u8; 20];
    d.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    id
}

#[test]
fn remote_memory_pages_land_on_the_memory_monitor() {
    let c = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start_remote_memory(dir.path(), &c, "5", "4M");
    let mut d = Driver::connect(&daemon.socket);
    let cfg = d.config();
    assert_eq!(config_capacity(&cfg), 8192, "capacity");
    assert_eq!(config_blk_size(&cfg), 4096, "blk_size");
    assert_eq!(&get_id(&mut d)[..18], b"lego-remote-memory");

    // Pages across the 1 MiB region boundary, and a sub-page write in the middle of one.
    write_and_read_back(&mut d, 2040, 16384, 31);
    write_and_read_back(&mut d, 3, 1024, 17);
    let stats = c.pages.stats();
    assert_eq!(
        stats.per_vnode,
        vec![(5, 5)],
        "4 + 1 pages of vNode 5 are stored"
    );
    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0));
    assert!(daemon.terminate().success());
    // The device's swap dies with it: the backend gave the pages back as it stopped.
    let stats = c.pages.stats();
    assert!(
        stats.per_vnode.iter().all(|&(v, n)| v != 5 || n == 0),
        "vNode 5 still holds pages after its backend stopped: {:?}",
        stats.per_vnode
    );
}

/// The memory monitor restarts empty under the backend: the page the guest wrote before is
/// an I/O error from then on (never zeros), a page never written reads as zeros, and a page
/// written again reads back.
#[test]
fn pages_a_restarted_memory_monitor_lost_are_io_errors_not_zeros() {
    let mut c = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start_remote_memory(dir.path(), &c, "6", "4M");
    let mut d = Driver::connect(&daemon.socket);
    let pattern = write_and_read_back(&mut d, 8, 4096, 13);
    c.restart_memory();
    // The first requests may meet the broken connection; the backend reconnects by itself.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        d.mem
            .write_slice(&pattern, GuestAddress(DATA))
            .expect("fill");
        let (_, status) = d.request(T_IN, 8, Some((4096, true)));
        statuses.push(status);
        let mut back = vec![0u8; 4096];
        d.mem
            .read_slice(&mut back, GuestAddress(DATA))
            .expect("read back");
        assert_ne!(status, 0, "a lost page was answered as read ({statuses:?})");
    }
    assert!(
        statuses.iter().all(|&s| s == 1),
        "every read of the lost page is VIRTIO_BLK_S_IOERR: {statuses:?}"
    );
    // A page never written reads as zeros from the new monitor.
    d.mem
        .write_slice(&[0xaa; 4096], GuestAddress(DATA))
        .expect("fill");
    assert_eq!(d.request(T_IN, 800, Some((4096, true))), (4097, 0));
    let mut back = vec![0xffu8; 4096];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read back");
    assert_eq!(back, vec![0u8; 4096]);
    // Written again, the page is good.
    write_and_read_back(&mut d, 8, 4096, 29);
    assert!(daemon.terminate().success());
}

/// Capabilities that live 2 s and a backend that works for 7 s: the backend renews its
/// capability on every monitor connection before it expires, so no request is refused.
#[test]
fn capabilities_are_renewed_before_they_expire() {
    let c = Cluster::start_with_capability_ttl(std::time::Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Daemon::start_remote_memory(dir.path(), &c, "7", "4M");
    let disk_dir = tempfile::tempdir().expect("tempdir");
    let disk = Daemon::start_remote_disk(disk_dir.path(), &c, "7", "renewed", "1M");
    let mut m = Driver::connect(&memory.socket);
    let mut d = Driver::connect(&disk.socket);
    let start = std::time::Instant::now();
    let mut rounds = 0u32;
    while start.elapsed() < std::time::Duration::from_secs(7) {
        write_and_read_back(&mut m, u64::from(rounds % 64) * 8, 4096, rounds + 3);
        write_and_read_back(&mut d, u64::from(rounds % 64) * 8, 4096, rounds + 5);
        rounds += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(rounds > 20, "only {rounds} rounds");
    assert!(memory.terminate().success());
    assert!(disk.terminate().success());
}

/// The storage monitor's process restarts under a stream of writes: requests wait for it
/// and succeed, the next flush covers them, and everything reads back. After a restart of
/// its machine (a new incarnation), a flush cannot promise writes the old one acknowledged:
/// it is an error, once.
#[test]
fn a_restarting_storage_monitor_delays_requests_and_loses_nothing_flushed() {
    let mut c = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start_remote_disk(dir.path(), &c, "8", "vol", "4M");
    let mut d = Driver::connect(&daemon.socket);
    let mut written = Vec::new();
    for i in 0..8u32 {
        let sector = u64::from(i) * 8;
        written.push((sector, write_and_read_back(&mut d, sector, 4096, i + 3)));
    }
    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0), "flush");
    let restart = c.restart_storage(std::time::Duration::from_millis(300), false);
    // These are sent while nothing listens: they wait for the new process and succeed.
    for i in 8..12u32 {
        let sector = u64::from(i) * 8;
        written.push((sector, write_and_read_back(&mut d, sector, 4096, i + 3)));
    }
    restart.join().expect("restart");
    c.storage_restarted();
    assert_eq!(
        d.request(T_FLUSH, 0, None),
        (1, 0),
        "flush after the restart"
    );
    for (sector, pattern) in &written {
        assert_eq!(d.request(T_IN, *sector, Some((4096, true))), (4097, 0));
        let mut back = vec![0u8; 4096];
        d.mem
            .read_slice(&mut back, GuestAddress(DATA))
            .expect("read back");
        assert_eq!(&back, pattern, "sector {sector}");
    }
    // A write acknowledged, then the machine "reboots" before it was flushed.
    write_and_read_back(&mut d, 200, 4096, 77);
    let reboot = c.restart_storage(std::time::Duration::from_millis(50), true);
    reboot.join().expect("reboot");
    c.storage_restarted();
    assert_eq!(
        d.request(T_FLUSH, 0, None),
        (1, 1),
        "the flush cannot promise the write the old incarnation acknowledged"
    );
    assert_eq!(
        d.request(T_FLUSH, 0, None),
        (1, 0),
        "nothing unpromised left"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn remote_disk_is_created_written_flushed_and_reopened() {
    let c = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = c.key_hex();
    let env = [("LEGO_CLUSTER_KEY", key.as_str())];
    let base = [
        "--store",
        "remote-disk",
        "--manager",
        &c.manager_addr,
        "--vnode",
        "6",
        "--volume",
        "vol",
    ];

    // With --no-create, a missing volume is a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
        .arg("--socket")
        .arg(dir.path().join("x.sock"))
        .args(base)
        .arg("--no-create")
        .envs(env)
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vNode 6 has no volume 'vol'"), "{err}");

    let mut args = base.to_vec();
    args.extend(["--size", "2M"]);
    let daemon = Daemon::start_env(dir.path(), &args, &env);
    let mut d = Driver::connect(&daemon.socket);
    let cfg = d.config();
    assert_eq!(config_capacity(&cfg), 4096, "capacity");
    assert_eq!(&get_id(&mut d)[..], b"lego-remote-disk:vol");
    let pattern = write_and_read_back(&mut d, 100, 12288, 13);
    assert_eq!(d.request(T_FLUSH, 0, None), (1, 0), "flush");
    assert!(daemon.terminate().success());
    drop(d);

    // The bytes are in the monitor's volume file, in vNode 6's folder.
    let file = std::fs::read_dir(c.volumes_dir.path().join("vnode-6"))
        .expect("volumes")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "vol"))
        .expect("a volume file");
    let bytes = std::fs::read(file).expect("volume file");
    assert_eq!(&bytes[100 * 512..100 * 512 + 12288], &pattern[..]);

    // Reopened with --no-create, the data is still there.
    let mut args = base.to_vec();
    args.push("--no-create");
    let daemon = Daemon::start_env(dir.path(), &args, &env);
    let mut d = Driver::connect(&daemon.socket);
    d.mem
        .write_slice(&[0u8; 12288], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(d.request(T_IN, 100, Some((12288, true))), (12289, 0));
    let mut back = vec![0u8; 12288];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA))
        .expect("read");
    assert_eq!(back, pattern);
    assert!(daemon.terminate().success());
}

/// A remote disk whose storage monitor is gone after the manager placed the volume there:
/// the backend exits with an error naming the monitor and rolls the placement back, so
/// nothing stays reserved for a volume that does not exist.
#[test]
fn a_remote_disk_that_cannot_be_created_leaves_no_placement() {
    let mut c = Cluster::start();
    // The storage monitor stops (and would come back only after the test).
    let _later = c.restart_storage(std::time::Duration::from_secs(120), false);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = c.key_hex();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
        .arg("--socket")
        .arg(dir.path().join("x.sock"))
        .args([
            "--store",
            "remote-disk",
            "--manager",
            &c.manager_addr,
            "--vnode",
            "12",
            "--volume",
            "data",
            "--size",
            "2M",
        ])
        .env("LEGO_CLUSTER_KEY", &key)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "a disk was opened on a monitor that is gone"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("placement was rolled back"), "{err}");
    let mgr = lego_monitor_client::client::ManagerClient::connect(
        &c.manager_addr,
        c.key.clone(),
        lego_fabric::ClientConfig::default(),
    )
    .expect("manager");
    let st = mgr.status().expect("status");
    assert!(
        st.vnodes
            .iter()
            .filter(|v| v.vnode == 12)
            .all(|v| v.volumes.is_empty()),
        "the volume that was not created is still placed: {:?}",
        st.vnodes
    );
}

/// A compute host holding only its credential serves the remote memory of the vNode it
/// announced, and is refused a vNode it does not run.
#[test]
fn a_compute_credential_serves_only_the_vnode_it_announced() {
    let c = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = c
        .key
        .issue_credential(lego_fabric::Role::Compute, "host-a")
        .expect("issue");
    let text = cred.to_text();
    let env = [("LEGO_CLUSTER_KEY", text.as_str())];
    let args = |vnode: &'static str| {
        [
            "--store",
            "remote-memory",
            "--manager",
            &c.manager_addr,
            "--vnode",
            vnode,
            "--size",
            "4M",
        ]
        .map(String::from)
    };

    // vNode 8 is not announced by host-a: no placement, no capability.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
        .arg("--socket")
        .arg(dir.path().join("x.sock"))
        .args(args("8"))
        .envs(env)
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compute host host-a may not act on vNode 8"),
        "{err}"
    );

    // Announced (as legovmm does before it starts its backends), vNode 8 is served.
    let mgr = lego_monitor_client::client::ManagerClient::connect(
        &c.manager_addr,
        cred,
        lego_fabric::ClientConfig::default(),
    )
    .expect("manager");
    mgr.vnode_up(&lego_monitor_client::proto::manager::VnodeUp {
        vnode: 8,
        host: "host-a".into(),
        pid: std::process::id(),
        api_socket: None,
        vcpus: 1,
        memory_bytes: 4 << 20,
        devices: Vec::new(),
        started_unix_ms: 0,
    })
    .expect("announce vNode 8");
    let a = args("8");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let daemon = Daemon::start_env(dir.path(), &a, &env);
    let mut d = Driver::connect(&daemon.socket);
    write_and_read_back(&mut d, 8, 8192, 5);
    assert_eq!(c.pages.stats().per_vnode, vec![(8, 2)]);
    assert!(daemon.terminate().success());
}
