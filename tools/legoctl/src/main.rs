//! `legoctl`: operate a LegoVMM cluster through its manager.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lego_fabric::{
    AuthError, CapabilityError, CapabilityKey, ClientConfig, ClusterKey, Credential,
    CredentialError, Identity, Rights, Role,
};
use lego_monitor_client::client::{CallError, ManagerClient, MemoryClient, StorageClient};
use lego_monitor_client::proto::manager::MonitorKind;
use lego_monitor_client::proto::storage::VolumeInfo;
use lego_monitor_client::size::ByteSize;
use lego_report::error_chain;

/// Operate a LegoVMM cluster: status, placement, volumes, capabilities.
#[derive(Debug, Parser)]
#[command(name = "legoctl", version)]
struct Cli {
    /// Manager address, or the comma-separated addresses of a cluster's managers.
    #[arg(
        long,
        global = true,
        env = "LEGO_MANAGER",
        default_value = "127.0.0.1:7300"
    )]
    manager: String,
    /// Cluster key or credential file [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show monitors (alive/dead, capacity, use), vNodes and their placements.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print a new random cluster key (hex) for LEGO_CLUSTER_KEY or a key file.
    Keygen,
    /// Place (at least) SIZE of remote memory for a vNode as vRegions.
    PlaceMemory {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
        /// Total remote memory, e.g. 4G.
        #[arg(long)]
        size: ByteSize,
        /// Copies of each new vRegion on distinct memory monitors [default: the manager's].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
        copies: Option<u32>,
    },
    /// Place a volume for a vNode and create it on the chosen storage monitor.
    CreateVolume {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
        /// Volume name.
        #[arg(long)]
        name: String,
        /// Size, e.g. 10G.
        #[arg(long)]
        size: ByteSize,
    },
    /// Issue a capability for a vNode (printed in hex).
    Capability {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
        /// Rights: memory, storage or both (comma separated).
        #[arg(long, default_value = "memory,storage")]
        rights: String,
        /// Lifetime in seconds (0: the manager's default).
        #[arg(long, default_value_t = 0)]
        ttl_secs: u64,
    },
    /// Show a monitor's own statistics (pages per vNode, counters; volumes) as JSON.
    MonitorStats {
        /// The monitor's fabric address.
        #[arg(long)]
        addr: String,
        /// memory or storage.
        #[arg(long)]
        kind: MonitorKind,
    },
    /// Forget a vNode's placements (its data on monitors is not touched).
    Release {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
    },
    /// The monitors the manager knows.
    Monitor {
        #[command(subcommand)]
        action: MonitorAction,
    },
    /// The volumes the manager has placed.
    Volume {
        #[command(subcommand)]
        action: VolumeAction,
    },
    /// The running vNodes, as their legovmm announce them to the manager.
    Vnode {
        #[command(subcommand)]
        action: VnodeAction,
    },
    /// Type into a vNode's serial console (legovmm run --serial socket:PATH): standard input
    /// goes to the guest, its console output to standard output. Line by line, for scripts;
    /// for an interactive session use e.g. `socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:PATH`.
    Console {
        /// The vNode's serial socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Seconds to keep printing the console after standard input ends.
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        linger: f64,
    },
    /// Talk to a running legovmm through its API socket (legovmm run --api-socket).
    Vm {
        /// legovmm's API socket.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        #[command(subcommand)]
        action: VmAction,
    },
    /// Credentials for hosts that must not hold the cluster key (compute hosts, operators).
    Credential {
        #[command(subcommand)]
        action: CredentialAction,
    },
    /// The Ed25519 key managers sign capabilities with.
    CapabilityKey {
        #[command(subcommand)]
        action: CapabilityKeyAction,
    },
}

/// What to do with credentials.
#[derive(Debug, Subcommand)]
enum CredentialAction {
    /// Issue a credential from the cluster key (which this command needs).
    Issue {
        /// compute, monitor or operator.
        #[arg(long)]
        role: Role,
        /// The host's name: 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'.
        #[arg(long)]
        name: String,
        /// Write it to this new file, mode 0600 [default: standard output].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show a credential file's role and name (never its secret).
    Show {
        /// The credential file.
        file: PathBuf,
    },
}

/// What to do with the capability signing key.
#[derive(Debug, Subcommand)]
enum CapabilityKeyAction {
    /// Make a new signing key in a new file (mode 0600) for `lego-manager
    /// --capability-key-file`; prints its public key for `--capability-public-key`.
    Generate {
        /// The new key file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Print the public key of a signing key file [default: of the key derived from the
    /// cluster key].
    Public {
        /// The signing key file.
        file: Option<PathBuf>,
    },
}

/// What to do with monitors.
#[derive(Debug, Subcommand)]
enum MonitorAction {
    /// Forget a dead monitor that holds no placement (e.g. a host retired for good).
    Forget {
        /// The monitor's registered fabric address.
        #[arg(long)]
        addr: String,
    },
}

/// What to do with volumes.
#[derive(Debug, Subcommand)]
enum VolumeAction {
    /// Every volume: vNode, name, size, storage monitor.
    List,
    /// Delete a volume's data from its storage monitor, then forget its placement (refused
    /// while the vNode runs).
    Delete {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
        /// The volume.
        #[arg(long)]
        name: String,
    },
}

/// What to do with the running vNodes.
#[derive(Debug, Subcommand)]
enum VnodeAction {
    /// Every running vNode: host, pid, address, MAC, vCPUs, memory, uptime, API socket,
    /// devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One running vNode, as JSON (with its address, MAC and gateway if it has one).
    Info {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
    },
    /// A vNode's network address, MAC and gateway from the manager's --vnode-subnet
    /// (allocated now if it has none; kept until the vNode is released).
    Address {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
    },
    /// Shut a running vNode down through its API socket (on its compute host): the guest
    /// gets the power button and --grace seconds to power off by itself.
    Stop {
        /// The vNode.
        #[arg(long)]
        vnode: u64,
        /// Seconds the guest has to power off by itself before legovmm stops it (0: at once).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        grace: u32,
    },
}

/// What to ask a running legovmm.
#[derive(Debug, Subcommand)]
enum VmAction {
    /// Is it alive (version, pid).
    Ping,
    /// Its configuration, state, memory and devices (JSON).
    Info,
    /// Its devices' and pager's counters (JSON).
    Counters,
    /// Park its vCPUs.
    Pause,
    /// Let them run again.
    Resume,
    /// End the vNode: the guest gets the power button and --grace seconds to power off by
    /// itself, then legovmm stops it.
    Shutdown {
        /// Seconds the guest has to power off by itself (0: stop it at once).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        grace: u32,
    },
    /// Its Prometheus metrics.
    Metrics,
    /// Attach a disk (a file on legovmm's host) to the running vNode; prints the new device.
    AddDisk {
        /// The backing file or block device.
        #[arg(long, value_name = "FILE")]
        path: String,
        /// The guest may only read it.
        #[arg(long)]
        read_only: bool,
    },
    /// Attach remote memory to the running vNode (the guest image swaps on it); prints the
    /// new device.
    AddRemoteMemory {
        /// How much, e.g. 512M or 1G (whole MiB).
        #[arg(long)]
        size: String,
    },
    /// Attach one of the vNode's remote volumes (created with --size, else it must exist).
    AddRemoteDisk {
        /// The volume's name.
        #[arg(long)]
        volume: String,
        /// Create it with this size, e.g. 1G.
        #[arg(long)]
        size: Option<String>,
    },
    /// Detach a device added with add-disk or add-remote-disk, once the guest has let go of it.
    RemoveDevice {
        /// The device's id (vm info lists them), e.g. disk1.
        #[arg(long)]
        id: String,
    },
    /// Any request: METHOD PATH [BODY]; prints the status line and the body.
    Request {
        /// GET, PUT, ...
        method: String,
        /// e.g. /api/v1/vm.info
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    /// A word of --rights is not a right.
    #[error("'{0}' is not a right; use memory or storage")]
    BadRight(String),
    /// --rights named none.
    #[error("no rights given")]
    NoRights,
    /// A new cluster key could not be made.
    #[error(transparent)]
    Keygen(AuthError),
    /// The cluster key could not be loaded.
    #[error("cannot load the cluster key")]
    Key(#[source] AuthError),
    /// A credential could not be issued, read or written.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// A capability key could not be made, read or written.
    #[error(transparent)]
    CapabilityKey(#[from] CapabilityError),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A server could not be reached.
    #[error("cannot reach the {what} at {addr}")]
    Reach {
        /// Which server (manager, monitor, storage monitor).
        what: &'static str,
        /// Its address.
        addr: String,
        /// Cause.
        source: CallError,
    },
    /// A request failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// An answer could not be printed as JSON.
    #[error("cannot print the answer as JSON")]
    Json(#[from] serde_json::Error),
    /// The volume is not placed.
    #[error("vNode {vnode} has no volume '{name}' (legoctl volume list shows them)")]
    NoVolume {
        /// The vNode.
        vnode: u64,
        /// The volume.
        name: String,
    },
    /// The vNode runs: its disk is in use.
    #[error("vNode {vnode} is running (pid {pid} on {host}); stop it before deleting its volume")]
    VnodeRunning {
        /// The vNode.
        vnode: u64,
        /// Its legovmm.
        pid: u32,
        /// Its host.
        host: String,
    },
    /// The vNode is not running.
    #[error("vNode {0} is not running (legoctl vnode list shows the running ones)")]
    NotRunning(u64),
    /// The vNode serves no API socket.
    #[error(
        "vNode {0} runs without an API socket (legovmm run --api-socket); stop it on its host"
    )]
    NoApi(u64),
    /// legovmm's API failed or refused.
    #[error(transparent)]
    Api(#[from] legoctl::api_client::ApiClientError),
    /// The serial console failed.
    #[error(transparent)]
    Console(#[from] legoctl::console::ConsoleError),
    /// --linger is not a duration.
    #[error("--linger {0} is not a number of seconds")]
    BadLinger(f64),
}

fn parse_rights(s: &str) -> Result<Rights, CtlError> {
    let mut r = Rights::empty();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        r |= match part {
            "memory" => Rights::MEMORY,
            "storage" => Rights::STORAGE,
            other => return Err(CtlError::BadRight(other.to_string())),
        };
    }
    if r.is_empty() {
        return Err(CtlError::NoRights);
    }
    Ok(r)
}

/// Prints to stdout, ignoring a closed pipe (e.g. `legoctl status | head`).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn run(cli: Cli) -> Result<(), CtlError> {
    if let Cmd::Keygen = cli.cmd {
        out(&format!(
            "{}\n",
            ClusterKey::generate().map_err(CtlError::Keygen)?.to_hex()
        ));
        return Ok(());
    }
    let timeout = Duration::from_secs(cli.timeout.max(1));
    if let Cmd::Vm { api_socket, action } = &cli.cmd {
        return vm(api_socket, action, timeout);
    }
    if let Cmd::Console { socket, linger } = &cli.cmd {
        let linger =
            Duration::try_from_secs_f64(*linger).map_err(|_| CtlError::BadLinger(*linger))?;
        let ended =
            legoctl::console::attach(socket, std::io::stdin(), &mut std::io::stdout(), linger)?;
        if ended == legoctl::console::Ended::VnodeGone {
            eprintln!("legoctl: the vNode closed its console");
        }
        return Ok(());
    }
    if let Cmd::Credential { action } = &cli.cmd {
        return credential(cli.key_file.as_deref(), action);
    }
    if let Cmd::CapabilityKey { action } = &cli.cmd {
        return capability_key(cli.key_file.as_deref(), action);
    }
    let key = Identity::load(cli.key_file.as_deref()).map_err(CtlError::Key)?;
    let cc = ClientConfig {
        timeout: Duration::from_secs(cli.timeout.max(1)),
        connect_timeout: Duration::from_secs(cli.timeout.max(1)),
        ..Default::default()
    };
    if let Cmd::MonitorStats { addr, kind } = &cli.cmd {
        let c =
            lego_fabric::Client::connect(addr.as_str(), key, cc).map_err(|e| CtlError::Reach {
                what: "monitor",
                addr: addr.clone(),
                source: e.into(),
            })?;
        let json = match kind {
            MonitorKind::Memory => {
                MemoryClient::monitor_stats(&c).map(|s| serde_json::to_string_pretty(&s))
            }
            MonitorKind::Storage => {
                StorageClient::monitor_stats(&c).map(|s| serde_json::to_string_pretty(&s))
            }
        }??;
        out(&format!("{json}\n"));
        return Ok(());
    }
    let mgr = ManagerClient::connect(&cli.manager, key.clone(), cc.clone()).map_err(|source| {
        CtlError::Reach {
            what: "manager",
            addr: cli.manager.clone(),
            source,
        }
    })?;
    match cli.cmd {
        Cmd::Keygen
        | Cmd::MonitorStats { .. }
        | Cmd::Vm { .. }
        | Cmd::Console { .. }
        | Cmd::Credential { .. }
        | Cmd::CapabilityKey { .. } => {}
        Cmd::Status { json } => {
            let st = mgr.status()?;
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&st)?));
            } else {
                out(&legoctl::render::status(&st));
            }
        }
        Cmd::PlaceMemory {
            vnode,
            size,
            copies,
        } => {
            let p = mgr.place_memory_copies(vnode, size.bytes(), copies)?;
            let mut t = legoctl::table::Table::new(&["REGION", "MONITOR", "COPIES ON"]);
            for r in &p.regions {
                t.row(vec![
                    r.index.to_string(),
                    r.monitor.clone(),
                    r.replicas.join(","),
                ]);
            }
            out(&format!(
                "vNode {vnode}: {} region(s) of {}\n{}",
                p.regions.len(),
                ByteSize(p.region_size),
                t.render()
            ));
        }
        Cmd::CreateVolume { vnode, name, size } => {
            let p = mgr.place_volume(vnode, &name, size.bytes())?;
            let created = (|| -> Result<VolumeInfo, CtlError> {
                let cap = mgr.issue_capability(vnode, Rights::STORAGE, Duration::from_secs(300))?;
                let sc = StorageClient::connect(&p.monitor, key, &cap, cc).map_err(|source| {
                    CtlError::Reach {
                        what: "storage monitor",
                        addr: p.monitor.clone(),
                        source,
                    }
                })?;
                match sc.create(&name, size.bytes()) {
                    Ok(i) => Ok(i),
                    Err(e)
                        if e.remote_code() == Some(lego_fabric::ErrorCode::InvalidArgument)
                            && error_chain(&e).contains("exists") =>
                    {
                        Ok(sc.stat(&name)?)
                    }
                    Err(e) => Err(e.into()),
                }
            })();
            let info = match created {
                Ok(info) => info,
                // A placement this command made is rolled back, so a failed create leaves
                // nothing reserved behind; one placed before is left as it was.
                Err(e) if p.created => {
                    match mgr.forget_volume(vnode, &name) {
                        Ok(()) => eprintln!(
                            "legoctl: the placement of volume '{name}' of vNode {vnode} on {} was rolled back",
                            p.monitor
                        ),
                        Err(f) => eprintln!(
                            "legoctl: could not roll back the placement of volume '{name}' of vNode {vnode}: {}",
                            error_chain(&f)
                        ),
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            out(&format!(
                "volume '{}' of vNode {vnode}: {} on {}\n",
                info.name,
                ByteSize(info.size),
                p.monitor
            ));
        }
        Cmd::Capability {
            vnode,
            rights,
            ttl_secs,
        } => {
            let r = parse_rights(&rights)?;
            let cap = mgr.issue_capability(vnode, r, Duration::from_secs(ttl_secs))?;
            out(&format!("{cap}\n"));
        }
        Cmd::Release { vnode } => {
            mgr.release_vnode(vnode)?;
            out(&format!("vNode {vnode} released\n"));
        }
        Cmd::Monitor {
            action: MonitorAction::Forget { addr },
        } => {
            mgr.forget_monitor(&addr)?;
            out(&format!("monitor {addr} forgotten\n"));
        }
        Cmd::Volume {
            action: VolumeAction::List,
        } => out(&legoctl::render::volumes(&mgr.status()?)),
        Cmd::Volume {
            action: VolumeAction::Delete { vnode, name },
        } => {
            let st = mgr.status()?;
            if let Some(r) = st.running.iter().find(|r| r.up.vnode == vnode) {
                return Err(CtlError::VnodeRunning {
                    vnode,
                    pid: r.up.pid,
                    host: r.up.host.clone(),
                });
            }
            let placed = st
                .vnodes
                .iter()
                .filter(|v| v.vnode == vnode)
                .flat_map(|v| v.volumes.iter())
                .find(|v| v.name == name)
                .ok_or_else(|| CtlError::NoVolume {
                    vnode,
                    name: name.clone(),
                })?;
            let cap = mgr.issue_capability(vnode, Rights::STORAGE, Duration::from_secs(300))?;
            let sc = StorageClient::connect(&placed.monitor, key, &cap, cc).map_err(|source| {
                CtlError::Reach {
                    what: "storage monitor",
                    addr: placed.monitor.clone(),
                    source,
                }
            })?;
            match sc.delete(&name) {
                Ok(()) => {}
                // Deleted before, but the manager was not told: forget it now.
                Err(e) if e.remote_code() == Some(lego_fabric::ErrorCode::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            mgr.forget_volume(vnode, &name)?;
            out(&format!(
                "volume '{name}' of vNode {vnode} deleted from {}\n",
                placed.monitor
            ));
        }
        Cmd::Vnode {
            action: VnodeAction::Address { vnode },
        } => {
            let a = mgr.vnode_address(vnode)?;
            out(&format!(
                "vNode {vnode}: {}\n",
                legoctl::render::address(&a)
            ));
        }
        Cmd::Vnode { action } => {
            let st = mgr.status()?;
            let running = &st.running;
            match action {
                VnodeAction::Address { .. } => {}
                VnodeAction::List { json: true } => {
                    out(&format!("{}\n", serde_json::to_string_pretty(running)?))
                }
                VnodeAction::List { json: false } => out(&legoctl::render::running(&st)),
                VnodeAction::Info { vnode } | VnodeAction::Stop { vnode, .. } => {
                    let r = running
                        .iter()
                        .find(|r| r.up.vnode == vnode)
                        .ok_or(CtlError::NotRunning(vnode))?;
                    if let VnodeAction::Stop { grace, .. } = action {
                        let socket = r.up.api_socket.as_ref().ok_or(CtlError::NoApi(vnode))?;
                        let body = serde_json::json!({ "grace_s": grace }).to_string();
                        legoctl::api_client::call(
                            std::path::Path::new(socket),
                            "PUT",
                            "/api/v1/vm.shutdown",
                            Some(&body),
                            timeout,
                        )?;
                        let how = if grace == 0 {
                            "is being stopped".to_string()
                        } else {
                            format!("has {grace} s to power off after its power button")
                        };
                        out(&format!(
                            "vNode {vnode} (pid {} on {}) {how}\n",
                            r.up.pid, r.up.host
                        ));
                    } else {
                        let info = legoctl::render::running_info(r, &st);
                        out(&format!("{}\n", serde_json::to_string_pretty(&info)?));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `legoctl vm`: one request to legovmm's API socket.
fn vm(socket: &std::path::Path, action: &VmAction, mut timeout: Duration) -> Result<(), CtlError> {
    use legoctl::api_client::{call, request};
    let mut body = None;
    let (method, path) = match action {
        VmAction::Ping => ("GET", "/api/v1/vmm.ping"),
        VmAction::Info => ("GET", "/api/v1/vm.info"),
        VmAction::Counters => ("GET", "/api/v1/vm.counters"),
        VmAction::Pause => ("PUT", "/api/v1/vm.pause"),
        VmAction::Resume => ("PUT", "/api/v1/vm.resume"),
        VmAction::Shutdown { grace } => {
            body = Some(serde_json::json!({ "grace_s": grace }).to_string());
            ("PUT", "/api/v1/vm.shutdown")
        }
        VmAction::Metrics => ("GET", "/metrics"),
        VmAction::AddDisk { path, read_only } => {
            body = Some(serde_json::json!({ "path": path, "read_only": read_only }).to_string());
            ("PUT", "/api/v1/vm.add-disk")
        }
        VmAction::AddRemoteDisk { volume, size } => {
            body = Some(serde_json::json!({ "volume": volume, "size": size }).to_string());
            // The backend places the volume through the manager first.
            timeout = timeout.max(Duration::from_secs(90));
            ("PUT", "/api/v1/vm.add-remote-disk")
        }
        VmAction::AddRemoteMemory { size } => {
            body = Some(serde_json::json!({ "size": size }).to_string());
            // The backend places the memory through the manager first.
            timeout = timeout.max(Duration::from_secs(90));
            ("PUT", "/api/v1/vm.add-remote-memory")
        }
        VmAction::RemoveDevice { id } => {
            body = Some(serde_json::json!({ "id": id }).to_string());
            // The guest must let go first: wait longer than legovmm does.
            timeout = timeout.max(Duration::from_secs(30));
            ("PUT", "/api/v1/vm.remove-device")
        }
        VmAction::Request { method, path, body } => {
            let a = request(socket, method, path, body.as_deref(), timeout)?;
            out(&format!("HTTP {}\n{}\n", a.status, a.body.trim_end()));
            return Ok(());
        }
    };
    let body = call(socket, method, path, body.as_deref(), timeout)?;
    if body.is_empty() {
        out(&format!(
            "{}: done\n",
            path.rsplit('/').next().unwrap_or(path)
        ));
    } else if body.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&body)?;
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        out(&body);
    }
    Ok(())
}

fn credential(
    key_file: Option<&std::path::Path>,
    action: &CredentialAction,
) -> Result<(), CtlError> {
    match action {
        CredentialAction::Issue { role, name, output } => {
            let key = ClusterKey::load(key_file).map_err(CtlError::Key)?;
            let c = key.issue_credential(*role, name)?;
            match output {
                Some(f) => {
                    c.write_file(f)?;
                    eprintln!(
                        "legoctl: wrote the {role} credential of {name} to {}",
                        f.display()
                    );
                }
                None => out(&c.to_text()),
            }
        }
        CredentialAction::Show { file } => {
            let c = Credential::from_file(file)?;
            out(&format!("role {}\nname {}\n", c.role(), c.name()));
        }
    }
    Ok(())
}

fn capability_key(
    key_file: Option<&std::path::Path>,
    action: &CapabilityKeyAction,
) -> Result<(), CtlError> {
    let key = match action {
        CapabilityKeyAction::Generate { output } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let k = CapabilityKey::generate()?;
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(output)?;
                f.write_all(format!("{}\n", k.to_hex()).as_bytes())?;
                f.sync_all()
            };
            write().map_err(|source| CtlError::Write {
                path: output.clone(),
                source,
            })?;
            k
        }
        CapabilityKeyAction::Public { file: Some(f) } => CapabilityKey::from_file(f)?,
        CapabilityKeyAction::Public { file: None } => {
            CapabilityKey::derive(&ClusterKey::load(key_file).map_err(CtlError::Key)?)
        }
    };
    out(&format!("{}\n", key.public()));
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legoctl: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
