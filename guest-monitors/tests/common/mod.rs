//! Test harness: runs the real daemon binaries, each in its own network namespace joined by a
//! bridge in a hub namespace (addresses 10.77.0.0/24 live only inside those namespaces). Where
//! namespaces cannot be made (or `LEGO_TEST_LOOPBACK=1`), it falls back to loopback and says so.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lego_fabric::{Capability, CapabilityKey, Client, ClientConfig, ClusterKey, Rights};
use lego_testkit::net::free_loopback_addr;
use lego_testkit::process::ChildGuard;
use lego_testkit::wait;

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "lgm";
const FABRIC_PORT: u16 = 7000;

/// Generous timeout for anything that should take a moment.
pub const TIMEOUT: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces left behind by test processes that no longer exist.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A set of network namespaces for one test (or loopback when namespaces are unavailable).
pub struct Net {
    tag: String,
    hub: Option<String>,
    nodes: Vec<String>,
    client_ns: Option<String>,
    pub dir: tempfile::TempDir,
}

/// Where a daemon or the test client lives.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name (None: loopback fallback).
    pub ns: Option<String>,
    /// Address daemons listen on.
    pub addr: String,
}

impl Net {
    /// Creates the hub namespace and a namespace for the test client, and moves the calling
    /// thread (and so every thread and socket it creates later) into the client namespace.
    pub fn new(test: &str) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}x{n}", std::process::id());
        let mut net = Net {
            tag: tag.clone(),
            hub: None,
            nodes: Vec::new(),
            client_ns: None,
            dir,
        };
        remove_stale_namespaces();
        let hub = format!("{tag}h");
        // LEGO_TEST_LOOPBACK=1 forces the loopback fallback (to exercise it, or where `ip` is absent).
        let forced = std::env::var_os("LEGO_TEST_LOOPBACK").is_some_and(|v| v == "1");
        let ok = !forced && ip(&["netns", "add", &hub]).is_ok();
        if !ok {
            eprintln!(
                "[{test}] network namespaces not available (or LEGO_TEST_LOOPBACK=1): falling back to loopback (127.0.0.1)"
            );
            return net;
        }
        net.hub = Some(hub.clone());
        let setup = ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])
            .and_then(|_| ip(&["-n", &hub, "link", "set", "br0", "up"]));
        if let Err(e) = setup {
            panic!("[{test}] could not set up the hub bridge: {e}");
        }
        let client = net.add_ns("c");
        enter_netns(&client);
        net.client_ns = Some(client);
        eprintln!("[{test}] using network namespaces {tag}* on 10.77.0.0/24");
        net
    }

    /// Whether real namespaces are in use.
    pub fn namespaces(&self) -> bool {
        self.hub.is_some()
    }

    fn add_ns(&mut self, role: &str) -> String {
        let hub = self.hub.clone().expect("hub");
        let idx = self.nodes.len() + 1;
        let ns = format!("{}{role}{idx}", self.tag);
        let (a, b) = (format!("v{idx}"), format!("p{idx}"));
        let addr = format!("10.77.0.{idx}/24");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec![
                "-n", &hub, "link", "add", &a, "type", "veth", "peer", "name", &b,
            ],
            vec!["-n", &hub, "link", "set", &a, "netns", &ns],
            vec!["-n", &hub, "link", "set", &b, "master", "br0"],
            vec!["-n", &hub, "link", "set", &b, "up"],
            vec!["-n", &ns, "addr", "add", &addr, "dev", &a],
            vec!["-n", &ns, "link", "set", &a, "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ];
        self.nodes.push(ns.clone());
        for s in steps {
            if let Err(e) = ip(&s) {
                panic!("could not set up namespace {ns}: {e}");
            }
        }
        ns
    }

    /// A new host for a daemon: its own namespace and address (or a free loopback port).
    pub fn host(&mut self, role: &str) -> Host {
        if self.hub.is_some() {
            let ns = self.add_ns(role);
            let idx = self.nodes.len();
            Host {
                ns: Some(ns),
                addr: format!("10.77.0.{idx}:{FABRIC_PORT}"),
            }
        } else {
            Host {
                ns: None,
                addr: free_loopback_addr(),
            }
        }
    }

    /// A path in the test's temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(h) = &self.hub {
            let _ = ip(&["netns", "del", h]);
        }
    }
}

/// Moves the calling thread into a network namespace.
fn enter_netns(ns: &str) {
    use std::os::unix::io::AsRawFd;
    let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns with a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A daemon process; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<ChildGuard>,
    pub log: PathBuf,
    bin: String,
    host: Host,
    args: Vec<String>,
    key_hex: String,
}

impl Daemon {
    /// Starts `bin` with `args` on `host`, the key in the environment, stderr to a log file.
    pub fn start(
        net: &Net,
        name: &str,
        bin: &str,
        host: &Host,
        args: &[String],
        key: &ClusterKey,
    ) -> Daemon {
        let mut d = Daemon {
            name: name.into(),
            child: None,
            log: net.path(&format!("{name}.log")),
            bin: bin.into(),
            host: host.clone(),
            args: args.to_vec(),
            key_hex: key.to_hex(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match &self.host.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.bin]);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(&self.args)
            .env("LEGO_CLUSTER_KEY", &self.key_hex)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        self.child = Some(ChildGuard::spawn(self.name.clone(), &mut cmd));
    }

    /// Restarts the daemon with the same arguments (after it stopped).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} still running", self.name);
        self.spawn();
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        c.terminate(TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {TIMEOUT:?} of SIGTERM; log:\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    /// Waits for the process to exit by itself (e.g. on a start-up error).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        c.wait_timeout(TIMEOUT)
            .unwrap_or_else(|| panic!("{} did not exit; log:\n{}", self.name, self.log_text()))
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon accepts authenticated fabric connections.
    pub fn wait_ready(&mut self, key: &ClusterKey) {
        let interval = Duration::from_millis(50);
        let ready = wait::poll(TIMEOUT, interval, || {
            if let Some(st) = self.child.as_mut().and_then(ChildGuard::try_wait) {
                panic!(
                    "{} exited early ({st}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            let cc = ClientConfig {
                connect_timeout: Duration::from_secs(2),
                ..Default::default()
            };
            Client::connect(self.host.addr.as_str(), key.clone(), cc).ok()
        });
        assert!(
            ready.is_some(),
            "{} not ready; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// The fabric address.
    pub fn addr(&self) -> &str {
        &self.host.addr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// A fixed cluster key for tests.
pub fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x5a; 32])
}

/// A capability for `vnode` signed with `key`.
pub fn cap(key: &ClusterKey, vnode: u64, rights: Rights) -> Capability {
    Capability::issue(
        &CapabilityKey::derive(key),
        vnode,
        rights,
        Duration::from_secs(3600),
    )
}

/// A client config with generous timeouts.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: TIMEOUT,
        connect_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Polls `f` until it returns Some, or panics after the timeout.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait::until(what, TIMEOUT, Duration::from_millis(100), f)
}

/// Paths of the daemon binaries.
pub const MEMORY_BIN: &str = env!("CARGO_BIN_EXE_lego-memory-monitor");
/// Storage monitor binary.
pub const STORAGE_BIN: &str = env!("CARGO_BIN_EXE_lego-storage-monitor");
/// Manager binary.
pub const MANAGER_BIN: &str = env!("CARGO_BIN_EXE_lego-manager");

/// Builds an argument vector.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Starts a manager in its own namespace (64 MiB vRegions, 200 ms heartbeats) with `extra`
/// flags, and waits until it answers.
pub fn start_manager(net: &mut Net, key: &ClusterKey, extra: &[&str]) -> Daemon {
    start_manager_sized(net, key, "64M", extra)
}

/// [`start_manager`] with vRegions of `region_size`.
pub fn start_manager_sized(
    net: &mut Net,
    key: &ClusterKey,
    region_size: &str,
    extra: &[&str],
) -> Daemon {
    let h = net.host("m");
    let state = net.path("manager-state");
    let mut a = args(&[
        "--listen",
        &h.addr,
        "--state-dir",
        state.to_str().expect("utf8"),
        "--region-size",
        region_size,
        "--heartbeat-ms",
        "200",
    ]);
    a.extend(args(extra));
    let mut d = Daemon::start(net, "manager", MANAGER_BIN, &h, &a, key);
    d.wait_ready(key);
    d
}

/// Starts a 256 MiB memory monitor called `name` that registers with `manager` (200 ms
/// heartbeats), with `extra` flags, and waits until it answers.
pub fn start_memory_monitor(
    net: &mut Net,
    key: &ClusterKey,
    name: &str,
    manager: &str,
    extra: &[&str],
) -> Daemon {
    let h = net.host("mem");
    let mut a = args(&[
        "--listen",
        &h.addr,
        "--capacity",
        "256M",
        "--heartbeat-ms",
        "200",
        "--manager",
        manager,
    ]);
    a.extend(args(extra));
    let mut d = Daemon::start(net, name, MEMORY_BIN, &h, &a, key);
    d.wait_ready(key);
    d
}
