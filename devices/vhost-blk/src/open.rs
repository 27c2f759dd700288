//! Opening the store a daemon serves: a local file, or remote memory / a remote disk placed
//! by the manager and reached with the capability it issues.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lego_fabric::{AuthError, ClientConfig, ErrorCode, Identity, Rights};
use lego_monitor_client::client::{
    CallError, LeaseKeeper, ManagerClient, Renewal, StorageClient, VnodeMemory,
};

use crate::state::{HolderState, LiveState, StateError, Verdict};
use crate::store::file::{FileStore, FileStoreError, FileStoreOptions};
use crate::store::remote_disk::RemoteDiskStore;
use crate::store::remote_memory::RemoteMemoryStore;
use crate::store::{BlockStore, StoreError};

/// Which store to open, and where it lives.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// A local file.
    File(FileStoreOptions),
    /// A vNode's remote memory, placed by the manager.
    RemoteMemory {
        /// The manager's fabric address.
        manager: String,
        /// The vNode.
        vnode: u64,
        /// Bytes of remote memory to expose.
        size: u64,
        /// Where to keep what a restart of this backend needs (see [`crate::state`]).
        state_file: Option<PathBuf>,
    },
    /// A vNode volume on a storage monitor.
    RemoteDisk {
        /// The manager's fabric address.
        manager: String,
        /// The vNode.
        vnode: u64,
        /// The volume name.
        volume: String,
        /// Its size (needed to create it; checked against an existing one).
        size: Option<u64>,
        /// Create the volume if it does not exist.
        create: bool,
        /// Serve it read-only.
        read_only: bool,
    },
}

/// Errors from opening a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The cluster key could not be loaded.
    #[error("cannot load the cluster key")]
    Key(#[source] AuthError),
    /// The local file could not be opened.
    #[error(transparent)]
    File(#[from] FileStoreError),
    /// The manager did not answer.
    #[error("cannot reach the manager at {addr}")]
    Manager {
        /// Its address.
        addr: String,
        /// Cause.
        source: CallError,
    },
    /// The manager refused a request.
    #[error("the manager could not {what}")]
    Refused {
        /// What was asked.
        what: String,
        /// Cause.
        source: CallError,
    },
    /// A monitor did not answer or refused the capability.
    #[error("cannot reach the {kind} monitor at {addr}")]
    Monitor {
        /// "memory" or "storage".
        kind: &'static str,
        /// Its address (or addresses).
        addr: String,
        /// Cause.
        source: CallError,
    },
    /// The manager placed less memory than asked for.
    #[error("the manager placed {placed} bytes of remote memory for vNode {vnode}, less than the {wanted} asked for")]
    ShortPlacement {
        /// The vNode.
        vnode: u64,
        /// Bytes placed.
        placed: u64,
        /// Bytes wanted.
        wanted: u64,
    },
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The volume does not exist and may not be created.
    #[error("vNode {vnode} has no volume '{volume}'{hint}")]
    NoVolume {
        /// The vNode.
        vnode: u64,
        /// The volume.
        volume: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A volume operation on the storage monitor failed.
    #[error("the storage monitor could not {what} the volume '{volume}'")]
    Volume {
        /// What was attempted.
        what: &'static str,
        /// The volume.
        volume: String,
        /// Cause.
        source: CallError,
    },
}

/// Fabric client settings used for the manager and the monitors.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// How long a queue worker busy-polls for a monitor's answer before it sleeps: a round trip
/// on a fast fabric is shorter than two thread wake-ups.
pub const MONITOR_SPIN: Duration = Duration::from_micros(50);

/// Fabric client settings for the data path (the monitors serving the device's blocks).
pub fn monitor_client_config() -> ClientConfig {
    ClientConfig {
        spin: MONITOR_SPIN,
        ..client_config()
    }
}

/// Opens the store `spec` names. Remote stores load the cluster key from `key_file`, else
/// from `LEGO_CLUSTER_KEY` / `LEGO_CLUSTER_KEY_FILE`.
pub fn open_store(
    spec: &StoreSpec,
    key_file: Option<&Path>,
) -> Result<Arc<dyn BlockStore>, OpenError> {
    let key = || Identity::load(key_file).map_err(OpenError::Key);
    match spec {
        StoreSpec::File(opts) => Ok(Arc::new(FileStore::open(opts)?)),
        StoreSpec::RemoteMemory {
            manager,
            vnode,
            size,
            state_file,
        } => Ok(Arc::new(open_remote_memory(
            manager,
            *vnode,
            *size,
            state_file.as_deref(),
            key()?,
        )?)),
        StoreSpec::RemoteDisk {
            manager,
            vnode,
            volume,
            size,
            create,
            read_only,
        } => {
            let d = DiskRequest {
                vnode: *vnode,
                volume,
                size: *size,
                create: *create,
                read_only: *read_only,
            };
            Ok(Arc::new(open_remote_disk(manager, &d, key()?)?))
        }
    }
}

fn connect_manager(addr: &str, key: &Identity) -> Result<ManagerClient, OpenError> {
    ManagerClient::connect(addr, key.clone(), client_config()).map_err(|source| {
        OpenError::Manager {
            addr: addr.into(),
            source,
        }
    })
}

fn open_remote_memory(
    manager: &str,
    vnode: u64,
    size: u64,
    state_file: Option<&Path>,
    key: Identity,
) -> Result<RemoteMemoryStore, OpenError> {
    let mgr = connect_manager(manager, &key)?;
    let placement = mgr
        .place_memory(vnode, size)
        .map_err(|source| OpenError::Refused {
            what: format!("place {size} bytes of remote memory for vNode {vnode}"),
            source,
        })?;
    let cap = mgr
        .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
        .map_err(|source| OpenError::Refused {
            what: format!("issue a memory capability for vNode {vnode}"),
            source,
        })?;
    let mut monitors: Vec<String> = Vec::new();
    for m in placement.regions.iter().flat_map(|r| r.holders()) {
        if !monitors.iter().any(|x| x == m) {
            monitors.push(m.to_string());
        }
    }
    // With a second copy to go to, a dead monitor must cost a refused connection, not the
    // request timeout of waiting for it to come back.
    let copies = placement
        .regions
        .iter()
        .map(|r| r.holders().count())
        .min()
        .unwrap_or(1);
    let config = ClientConfig {
        reconnect_patience: (copies > 1).then_some(Duration::ZERO),
        ..monitor_client_config()
    };
    let mut memory = VnodeMemory::connect(placement, key, &cap, config).map_err(|source| {
        OpenError::Monitor {
            kind: "memory",
            addr: monitors.join(", "),
            source,
        }
    })?;
    let placed = memory.pages() * lego_monitor_client::proto::memory::PAGE_SIZE as u64;
    if placed < size {
        return Err(OpenError::ShortPlacement {
            vnode,
            placed,
            wanted: size,
        });
    }
    let live = match state_file {
        Some(path) => Some(Arc::new(resume_custody(&memory, vnode, path)?)),
        None => None,
    };
    tracing::info!(vnode, size, placed, copies, monitors = %monitors.join(","), "remote memory ready");
    // The vNode's lease tells the manager this compute host is alive; a crash of this
    // backend pauses it for no longer than a restart takes.
    let lease = LeaseKeeper::start(mgr.clone(), vnode);
    // Follow the manager's repairs of regions that lose a copy, and renew the capability on
    // every connection, including a new copy's.
    memory.keep_repaired(mgr.clone());
    let renewal = Renewal::start_with(mgr, cap, memory.fabric_client_list());
    let store = RemoteMemoryStore::new(memory, size)
        .with_renewal(renewal)
        .with_lease(lease);
    Ok(match live {
        Some(live) => store.with_after_write(Arc::new(move || {
            live.check().map_err(|e| StoreError::Io {
                op: "recording a memory monitor that missed a write",
                source: std::io::Error::other(e),
            })
        })),
        None => store,
    })
}

/// Resumes the custody of the vNode's pages after a restart of this backend (see
/// [`crate::state`]): a holder whose incarnation is the recorded one (and that is not
/// tainted) keeps every page of its regions; any other holder lost them. Then records the
/// holders, durably, before any page is served, and returns the state to keep current.
pub fn resume_custody(
    memory: &VnodeMemory,
    vnode: u64,
    path: &Path,
) -> Result<LiveState, OpenError> {
    let mut state = HolderState::load(path, vnode)?;
    let (mut trusted, mut lost) = (0, 0);
    for (addr, client, runs) in memory.holdings() {
        let verdict = match client.fabric().incarnation() {
            Some(live) => state.judge(&addr, live),
            None => Verdict::Lost { recorded: None },
        };
        if let Verdict::Lost { recorded } = verdict {
            tracing::warn!(
                vnode,
                monitor = %addr,
                recorded = ?recorded.map(|r| format!("{r:#018x}")),
                live = ?client.fabric().incarnation().map(|r| format!("{r:#018x}")),
                "this memory monitor is not the process this vNode's pages were written to, or \
                 it missed a write: reading them from it is an error until they are written again"
            );
        }
        // Each run is one region (start, region pages).
        for &(start, count) in &runs {
            let region = start / count.max(1);
            if verdict == Verdict::Fresh {
                state.trust_region(verdict, region, &addr);
            } else if state.trust_region(verdict, region, &addr) {
                trusted += 1;
                client.adopt(start, count);
            } else {
                lost += 1;
                client.forget(start, count);
            }
        }
    }
    state.save(path)?;
    if state.is_fresh() {
        tracing::info!(vnode, state = %path.display(), "recorded the memory monitors' incarnations");
    } else {
        tracing::info!(
            vnode,
            trusted,
            lost,
            state = %path.display(),
            "resumed the vNode's remote memory after a restart of this backend (copies of \
             vRegions trusted and lost)"
        );
    }
    let clients = memory
        .holdings()
        .into_iter()
        .map(|(addr, client, _)| (addr, client))
        .collect();
    Ok(LiveState::new(path.to_path_buf(), state, clients))
}

struct DiskRequest<'a> {
    vnode: u64,
    volume: &'a str,
    size: Option<u64>,
    create: bool,
    read_only: bool,
}

fn open_remote_disk(
    manager: &str,
    d: &DiskRequest<'_>,
    key: Identity,
) -> Result<RemoteDiskStore, OpenError> {
    let (vnode, volume) = (d.vnode, d.volume);
    let mgr = connect_manager(manager, &key)?;
    let status = mgr.status().map_err(|source| OpenError::Refused {
        what: "report the cluster status".into(),
        source,
    })?;
    let known = status
        .vnodes
        .iter()
        .filter(|v| v.vnode == vnode)
        .flat_map(|v| v.volumes.iter())
        .find(|v| v.name == volume)
        .cloned();
    let (monitor, placed_now) = match (known, d.size) {
        (Some(p), _) if !d.create => (p.monitor, false),
        (None, _) if !d.create => {
            return Err(OpenError::NoVolume {
                vnode,
                volume: volume.into(),
                hint: " (and --no-create was given)",
            })
        }
        (Some(p), None) => (p.monitor, false),
        (None, None) => {
            return Err(OpenError::NoVolume {
                vnode,
                volume: volume.into(),
                hint: "; give --size to create it",
            })
        }
        (_, Some(size)) => {
            let p = mgr
                .place_volume(vnode, volume, size)
                .map_err(|source| OpenError::Refused {
                    what: format!("place the {size}-byte volume '{volume}' of vNode {vnode}"),
                    source,
                })?;
            (p.monitor, p.created)
        }
    };
    let opened = open_placed_disk(&mgr, d, &monitor, key);
    if opened.is_err() && placed_now {
        // The placement made above is rolled back, so a failed open leaves nothing reserved.
        match mgr.forget_volume(vnode, volume) {
            Ok(()) => tracing::warn!(
                vnode,
                volume,
                monitor,
                "the volume was not created: its placement was rolled back"
            ),
            Err(e) => {
                tracing::warn!(vnode, volume, monitor, error = %lego_report::error_chain(&e), "could not roll back the placement of a volume that was not created")
            }
        }
    }
    opened
}

/// Connects to the storage monitor holding `d`'s volume and opens it (creating it if allowed).
fn open_placed_disk(
    mgr: &ManagerClient,
    d: &DiskRequest<'_>,
    monitor: &str,
    key: Identity,
) -> Result<RemoteDiskStore, OpenError> {
    let (vnode, volume) = (d.vnode, d.volume);
    let monitor = monitor.to_string();
    let cap = mgr
        .issue_capability(vnode, Rights::STORAGE, Duration::ZERO)
        .map_err(|source| OpenError::Refused {
            what: format!("issue a storage capability for vNode {vnode}"),
            source,
        })?;
    let client =
        StorageClient::connect(&monitor, key, &cap, monitor_client_config()).map_err(|source| {
            OpenError::Monitor {
                kind: "storage",
                addr: monitor.clone(),
                source,
            }
        })?;
    let info = match client.stat(volume) {
        Ok(info) => info,
        Err(e) if e.remote_code() == Some(ErrorCode::NotFound) => {
            let Some(size) = d.size.filter(|_| d.create) else {
                return Err(OpenError::NoVolume {
                    vnode,
                    volume: volume.into(),
                    hint: " on its storage monitor (and --no-create was given)",
                });
            };
            tracing::info!(vnode, volume, size, monitor, "creating the volume");
            client
                .create(volume, size)
                .map_err(|source| OpenError::Volume {
                    what: "create",
                    volume: volume.into(),
                    source,
                })?
        }
        Err(source) => {
            return Err(OpenError::Volume {
                what: "describe",
                volume: volume.into(),
                source,
            })
        }
    };
    tracing::info!(
        vnode,
        volume,
        size = info.size,
        monitor,
        "remote disk ready"
    );
    let renewal = Renewal::start(mgr.clone(), cap, vec![client.fabric().clone()]);
    Ok(RemoteDiskStore::new(client, volume, info.size, d.read_only).with_renewal(renewal))
}
