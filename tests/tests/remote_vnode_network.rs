//! The remote-memory vNode with its monitors outside the compute host: the manager, memory
//! monitor and storage monitor run as processes on this machine, legovmm and its backends run
//! inside the nested compute host, and every fabric request crosses a real network hop (the
//! compute host's virtio-net to this machine's loopback). Where this host's KVM boots stock
//! kernels (direct mode), everything runs here and the hop is loopback. The figures are the
//! issue's: 128 MiB of local RAM, 1 GiB of remote memory, a 512 MiB workload.

use lego_testbed::{JobOutput, Mode};
use lego_testkit::process::ChildGuard;
use lego_tests::{json_number, marker, release_binary, JobFiles};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("../../tools/demo/remote-vnode.sh");
const MANAGER_PORT: u16 = 17300;
const MEMORY_PORT: u16 = 17100;
const STORAGE_PORT: u16 = 17200;
const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 512;

/// The daemons on this machine; killed when dropped.
struct HostCluster {
    _children: Vec<ChildGuard>,
    _dir: tempfile::TempDir,
}

fn legoctl(key: &str, args: &[&str]) -> String {
    let out = Command::new(release_binary("legoctl"))
        .env("LEGO_CLUSTER_KEY", key)
        .arg("--manager")
        .arg(format!("127.0.0.1:{MANAGER_PORT}"))
        .args(args)
        .output()
        .expect("legoctl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn start_cluster(key: &str, advertise_host: &str) -> HostCluster {
    let dir = tempfile::tempdir().unwrap();
    let spawn = |bin: &str, args: Vec<String>| -> ChildGuard {
        ChildGuard::spawn(
            bin,
            Command::new(release_binary(bin))
                .env("LEGO_CLUSTER_KEY", key)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let manager = format!("127.0.0.1:{MANAGER_PORT}");
    let mut children = vec![spawn(
        "lego-manager",
        vec![
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--listen".into(),
            manager.clone(),
            "--heartbeat-ms".into(),
            "200".into(),
        ],
    )];
    std::thread::sleep(Duration::from_millis(300));
    children.push(spawn(
        "lego-memory-monitor",
        vec![
            "--listen".into(),
            format!("127.0.0.1:{MEMORY_PORT}"),
            "--advertise".into(),
            format!("{advertise_host}:{MEMORY_PORT}"),
            "--capacity".into(),
            "1G".into(),
            "--manager".into(),
            manager.clone(),
            "--heartbeat-ms".into(),
            "200".into(),
        ],
    ));
    children.push(spawn(
        "lego-storage-monitor",
        vec![
            "--listen".into(),
            format!("127.0.0.1:{STORAGE_PORT}"),
            "--advertise".into(),
            format!("{advertise_host}:{STORAGE_PORT}"),
            "--data-dir".into(),
            dir.path().join("volumes").display().to_string(),
            "--capacity".into(),
            "1G".into(),
            "--manager".into(),
            manager,
            "--heartbeat-ms".into(),
            "200".into(),
        ],
    ));
    let cluster = HostCluster {
        _children: children,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while legoctl(key, &["status"]).matches("alive").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the host cluster did not come up: {}",
            legoctl(key, &["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster
}

struct Results {
    out: JobOutput,
    host_memory_stats: String,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let key = Command::new(release_binary("legoctl"))
        .arg("keygen")
        .output()
        .expect("keygen");
    let key = String::from_utf8(key.stdout)
        .expect("a hex key")
        .trim()
        .to_string();
    let script = format!(
        "export LEGO_CLUSTER_KEY={key}\nexport REMOTE_SIDE=host HOST_MANAGER_PORT={MANAGER_PORT} \
         HOST_MEMORY_PORT={MEMORY_PORT} GUEST_RAM={GUEST_RAM_MIB}M REMOTE_MEMORY=1G \
         WORKLOAD_MIB={WORKLOAD_MIB} VOLUME_SIZE=64M\n{SCRIPT}"
    );
    let mut job = lego_tests::guest_job("remote-vnode-network", script, Duration::from_secs(1200))
        .network(true);
    let testbed = lego_tests::testbed("remote_vnode_network", true);
    // Monitors tell the manager where clients reach them: from inside the nested compute
    // host this machine's loopback is 10.0.2.2.
    let advertise = if testbed.mode() == Mode::Nested {
        "10.0.2.2"
    } else {
        "127.0.0.1"
    };
    let _cluster = start_cluster(&key, advertise);
    for bin in ["lego-vhost-blk", "legoctl"] {
        job = job.file(release_binary(bin), bin);
    }
    let out = lego_tests::run_job(&testbed, &job, "remote_vnode_network");
    let host_memory_stats = legoctl(
        &key,
        &[
            "monitor-stats",
            "--kind",
            "memory",
            "--addr",
            &format!("127.0.0.1:{MEMORY_PORT}"),
        ],
    );
    Results {
        out,
        host_memory_stats,
    }
}

#[test]
fn swap_pages_cross_the_network_to_a_memory_monitor_on_this_host() {
    let r = results();
    let console = r.out.text("first.console");
    assert!(console.contains("LEGO_SWAP_ON dev="), "{console}");
    let line = console
        .lines()
        .find(|l| l.contains("LEGO_MEMTEST"))
        .unwrap_or_else(|| panic!("no memtest:\n{console}"));
    assert_eq!(marker(line, "bad"), Some("0"), "{line}");
    assert_eq!(marker(&console, "LEGO_RUN_EXIT"), Some("0"), "{console}");
    // Counted by the monitor process on this machine, asked from this machine.
    let written = json_number(&r.host_memory_stats, "pages_written");
    assert!(
        written >= (WORKLOAD_MIB - GUEST_RAM_MIB) * 256 / 2,
        "only {written} pages reached the host's memory monitor:\n{}",
        r.host_memory_stats
    );
    assert!(
        json_number(&r.host_memory_stats, "pages_read") > 0,
        "{}",
        r.host_memory_stats
    );
}

#[test]
fn the_remote_disk_on_this_host_keeps_the_file_across_launches() {
    let r = results();
    assert!(
        r.out.text("second.console").contains("written-by-vnode-1"),
        "{}",
        r.out.text("second.console")
    );
    assert!(
        r.out.console.contains("LEGO_DEMO_DONE first=0 second=0"),
        "{}",
        r.out.console_tail(120)
    );
}
