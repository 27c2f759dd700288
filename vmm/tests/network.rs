//! legovmm's network devices against a real `lego-manager`, both in a network namespace of
//! the test's own (its taps and bridge never touch the machine's network): the vNode's
//! address comes from the manager before anything else of the guest is built, and every bad
//! input is a clear error before the guest boots — a missing bridge, a tap another process
//! holds, an exhausted address pool, an unreachable manager, no permission. The kernel is a
//! file of garbage: each launch that gets past the network stops at KVM or at the kernel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use lego_fabric::{ClientConfig, ClusterKey};
use lego_monitor_client::client::ManagerClient;
use lego_testkit::netns::NetNs;
use lego_testkit::process::ChildGuard;

/// The pool: a /30 holds the gateway (.1) and one vNode address (.2).
const SUBNET: &str = "10.99.7.0/30";

/// The workspace's `lego-manager`, built beside this test's executable.
fn manager_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("lego-manager");
    p.is_file().then_some(p)
}

struct Rig {
    ns: NetNs,
    _manager: ChildGuard,
    addr: String,
    key: ClusterKey,
    /// World-readable: the kernel (garbage) and a copy of legovmm, for the unprivileged run.
    files: tempfile::TempDir,
}

impl Rig {
    fn start() -> Option<Rig> {
        let ns = NetNs::create("vmmnet")?;
        let Some(bin) = manager_bin() else {
            assert!(
                !lego_testkit::prerequisite::under_ci(),
                "lego-manager is not built beside the tests (cargo build --workspace first)"
            );
            eprintln!("skipped: lego-manager is not built");
            return None;
        };
        ns.ip(&["link", "add", "name", "lgbr0", "type", "bridge"]);
        ns.ip(&["addr", "add", "10.99.7.1/30", "dev", "lgbr0"]);
        ns.ip(&["link", "set", "lgbr0", "up"]);
        let key = ClusterKey::generate().unwrap();
        let state = tempfile::tempdir().unwrap();
        let addr = "127.0.0.1:7300".to_string();
        let manager = ChildGuard::spawn(
            "lego-manager",
            ns.command(bin)
                .args([
                    "--listen",
                    &addr,
                    "--heartbeat-ms",
                    "100",
                    "--vnode-subnet",
                    SUBNET,
                ])
                .arg("--state-dir")
                .arg(state.path())
                .env("LEGO_CLUSTER_KEY", key.to_hex())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let files = tempfile::tempdir().unwrap();
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(files.path().join("kernel"), vec![0x5a; 8192]).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_legovmm"), files.path().join("legovmm")).unwrap();
        let rig = Rig {
            ns,
            _manager: manager,
            addr,
            key,
            files,
        };
        lego_testkit::wait::until(
            "the manager",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || rig.client().ok(),
        );
        std::mem::forget(state);
        Some(rig)
    }

    /// A cluster-key client of the manager, from inside the namespace.
    fn client(&self) -> Result<ManagerClient, String> {
        let (addr, key) = (self.addr.clone(), self.key.clone());
        self.ns.run_inside(move || {
            ManagerClient::connect(&addr, key, ClientConfig::default()).map_err(|e| e.to_string())
        })
    }

    /// Runs `legovmm run` in the namespace with the garbage kernel and `args`.
    fn legovmm(&self, args: &[&str]) -> Output {
        self.legovmm_as(None, args)
    }

    fn legovmm_as(&self, user: Option<u32>, args: &[&str]) -> Output {
        let bin = self.files.path().join("legovmm");
        let mut c = match user {
            None => self.ns.command(&bin),
            Some(uid) => {
                let mut c = self.ns.command("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(&bin);
                c
            }
        };
        c.args([
            "--log-level",
            "info",
            "run",
            "--serial",
            "none",
            "--memory",
            "64M",
            "--kernel",
        ])
        .arg(self.kernel())
        .args(args)
        .env("LEGO_CLUSTER_KEY", self.key.to_hex())
        .env_remove("RUST_LOG")
        .output()
        .expect("legovmm runs")
    }

    fn kernel(&self) -> PathBuf {
        self.files.path().join("kernel")
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn vnode_net(vnode: &str, manager: &str, net: &str) -> Vec<String> {
    ["--vnode", vnode, "--manager", manager, "--net", net]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// legovmm's closing error line.
fn failure(err: &str) -> &str {
    err.lines()
        .rev()
        .find(|l| l.starts_with("legovmm: "))
        .unwrap_or_else(|| panic!("legovmm printed no error:\n{err}"))
}

#[test]
fn a_vnode_gets_its_address_from_the_manager_and_every_bad_input_is_refused_before_boot() {
    let Some(rig) = Rig::start() else { return };
    let m = rig.addr.clone();

    // vNode 1: the network is made ready (address .2, its MAC, the tap on the bridge), then
    // the launch stops later, at KVM or at the garbage kernel.
    let out = rig.legovmm(&strs(&vnode_net("1", &m, "tap=lgt1,bridge=lgbr0")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("network device ready"), "{err}");
    assert!(err.contains("10.99.7.2/30 via 10.99.7.1"), "{err}");
    assert!(
        err.contains("02:4c:47:63:07:02"),
        "the MAC is not the manager's:\n{err}"
    );
    let why = failure(&err);
    assert!(
        !["tap", "bridge", "address", "network"]
            .iter()
            .any(|w| why.contains(w)),
        "the launch failed at the network, not later: {why}"
    );
    let a = rig
        .client()
        .unwrap()
        .vnode_address(1)
        .expect("vNode 1 keeps its address");
    assert_eq!(a.ip.to_string(), "10.99.7.2");

    // vNode 2: the pool has no address left.
    let out = rig.legovmm(&strs(&vnode_net("2", &m, "tap=lgt2,bridge=lgbr0")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot get vNode 2's network address from the manager at 127.0.0.1:7300"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pool {SUBNET} is exhausted")),
        "{err}"
    );
    assert!(
        !rig.ns.has_link("lgt2"),
        "a refused launch left its tap behind"
    );

    // A bridge that does not exist.
    let out = rig.legovmm(&strs(&vnode_net("1", &m, "tap=lgt1,bridge=nosuch")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the bridge nosuch does not exist, so tap lgt1 cannot join it"),
        "{err}"
    );

    // A tap another process holds.
    let holder = rig.ns.run_inside(|| {
        lego_devices::net::tap::Tap::open("lgheld", 1).expect("the test opens its tap")
    });
    let out = rig.legovmm(&["--net", "tap=lgheld"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tap lgheld is in use by another process"),
        "{err}"
    );
    drop(holder);

    // No manager to take the address from.
    let out = rig.legovmm(&strs(&vnode_net("3", "127.0.0.1:1", "tap=lgt3")));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "vNode 3 has a network device but the manager at 127.0.0.1:1 could not be reached"
        ),
        "{err}"
    );

    // No permission to create a tap.
    let out = rig.legovmm_as(Some(65534), &["--net", "tap=lgt4"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open tap lgt4: this needs CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(Path::new(&rig.kernel()).exists());
}
