//! The remote-memory vNode with its monitors outside the compute host: the manager, memory
//! monitor and storage monitor run as processes on this machine, legovmm and its backends run
//! inside the nested compute host, and every fabric request crosses a real network hop (the
//! compute host's virtio-net to this machine's loopback). Where this host's KVM boots stock
//! kernels (direct mode), everything runs here and the hop is loopback. The figures are the
//! issue's: 128 MiB of local RAM, 1 GiB of remote memory, a 512 MiB workload.

use lego_testbed::{JobOutput, Mode};
use lego_tests::{json_number, marker, release_binary, JobFiles};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("../../tools/demo/remote-vnode.sh");
const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 512;

/// The daemons' ports on this machine's loopback, free when picked.
#[derive(Clone, Copy)]
struct Ports {
    manager: u16,
    memory: u16,
    storage: u16,
}

impl Ports {
    /// Asks the kernel for three free ports (bound together, so they differ).
    fn free() -> Self {
        let socks: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let port = |i: usize| socks[i].local_addr().unwrap().port();
        Self {
            manager: port(0),
            memory: port(1),
            storage: port(2),
        }
    }

    fn manager_addr(self) -> String {
        format!("127.0.0.1:{}", self.manager)
    }
}

/// The daemons on this machine; killed when dropped.
struct HostCluster {
    children: Vec<(&'static str, Child)>,
    _dir: tempfile::TempDir,
}

impl HostCluster {
    /// Panics if one of our daemons has exited (e.g. it could not bind its port because
    /// another process holds it: then whoever answers there is not ours).
    fn check_alive(&mut self) {
        for (name, c) in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("our {name} exited ({status}): is its port taken by another process?");
            }
        }
    }
}

impl Drop for HostCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn legoctl(key: &str, ports: Ports, args: &[&str]) -> String {
    let out = Command::new(release_binary("legoctl"))
        .env("LEGO_CLUSTER_KEY", key)
        .arg("--manager")
        .arg(ports.manager_addr())
        .args(args)
        .output()
        .expect("legoctl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn start_cluster(key: &str, advertise_host: &str, ports: Ports) -> HostCluster {
    let dir = tempfile::tempdir().unwrap();
    let spawn = |bin: &str, args: Vec<String>| -> Child {
        Command::new(release_binary(bin))
            .env("LEGO_CLUSTER_KEY", key)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} starts: {e}"))
    };
    let manager = ports.manager_addr();
    let mut children = vec![(
        "lego-manager",
        spawn(
            "lego-manager",
            vec![
                "--state-dir".into(),
                dir.path().join("state").display().to_string(),
                "--listen".into(),
                manager.clone(),
                "--heartbeat-ms".into(),
                "200".into(),
            ],
        ),
    )];
    std::thread::sleep(Duration::from_millis(300));
    children.push((
        "lego-memory-monitor",
        spawn(
            "lego-memory-monitor",
            vec![
                "--listen".into(),
                format!("127.0.0.1:{}", ports.memory),
                "--advertise".into(),
                format!("{advertise_host}:{}", ports.memory),
                "--capacity".into(),
                "1G".into(),
                "--manager".into(),
                manager.clone(),
                "--heartbeat-ms".into(),
                "200".into(),
            ],
        ),
    ));
    children.push((
        "lego-storage-monitor",
        spawn(
            "lego-storage-monitor",
            vec![
                "--listen".into(),
                format!("127.0.0.1:{}", ports.storage),
                "--advertise".into(),
                format!("{advertise_host}:{}", ports.storage),
                "--data-dir".into(),
                dir.path().join("volumes").display().to_string(),
                "--capacity".into(),
                "1G".into(),
                "--manager".into(),
                manager,
                "--heartbeat-ms".into(),
                "200".into(),
            ],
        ),
    ));
    let mut cluster = HostCluster {
        children,
        _dir: dir,
    };
    // Up when the manager we started lists the two monitors we started, at the addresses we
    // gave them: proof that legoctl reached our manager, not another process's.
    let ours = [
        format!("{advertise_host}:{}", ports.memory),
        format!("{advertise_host}:{}", ports.storage),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cluster.check_alive();
        let status = legoctl(key, ports, &["status"]);
        let up = ours.iter().all(|a| {
            status
                .lines()
                .any(|l| l.contains(a.as_str()) && l.contains("alive"))
        });
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host cluster did not come up with our monitors {ours:?}: {status}"
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
    let ports = Ports::free();
    let script = format!(
        "export LEGO_CLUSTER_KEY={key}\nexport REMOTE_SIDE=host HOST_MANAGER_PORT={} \
         HOST_MEMORY_PORT={} GUEST_RAM={GUEST_RAM_MIB}M REMOTE_MEMORY=1G \
         WORKLOAD_MIB={WORKLOAD_MIB} VOLUME_SIZE=64M\n{SCRIPT}",
        ports.manager, ports.memory
    );
    let mut job = lego_tests::guest_job("remote-vnode-network", script, Duration::from_secs(1200))
        .network(true)
        .file(lego_tests::vnode_bridge_script(), "vnode-bridge.sh");
    let testbed = lego_tests::testbed("remote_vnode_network", true);
    // Monitors tell the manager where clients reach them: from inside the nested compute
    // host this machine's loopback is 10.0.2.2.
    let advertise = if testbed.mode() == Mode::Nested {
        "10.0.2.2"
    } else {
        "127.0.0.1"
    };
    let mut cluster = start_cluster(&key, advertise, ports);
    for bin in ["lego-vhost-blk", "legoctl"] {
        job = job.file(release_binary(bin), bin);
    }
    let out = lego_tests::run_job(&testbed, &job, "remote_vnode_network");
    cluster.check_alive();
    let host_memory_stats = legoctl(
        &key,
        ports,
        &[
            "monitor-stats",
            "--kind",
            "memory",
            "--addr",
            &format!("127.0.0.1:{}", ports.memory),
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
