//! The manager's durable state and the [`StateStore`] it is kept in.
//!
//! [`FileStateStore`] replaces one JSON file atomically (temp + fsync + rename + fsync of the
//! folder), which is plenty for a membership and placement table on one machine;
//! `manager::etcd_store` keeps the same state in etcd for a cluster of managers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};
use lego_monitor_client::proto::manager::{MonitorKind, RegionRepair};

/// Version of the state layout written by this build.
pub const STATE_VERSION: u32 = 1;

/// A registered monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MonitorRecord {
    /// Kind.
    pub kind: MonitorKind,
    /// Capacity offered.
    pub capacity_bytes: u64,
    /// Bytes in use as last reported.
    pub used_bytes: u64,
    /// The incarnation it last registered with (kept across manager restarts, so a monitor
    /// that restarted while the manager was down is still seen as new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

/// A placed volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    /// Size reserved.
    pub size: u64,
    /// Storage monitor address.
    pub monitor: String,
}

/// A vNode's placements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct VnodeRecord {
    /// Bytes per vRegion for this vNode (fixed when its first region was placed).
    pub region_size: u64,
    /// Memory monitor address of each region, by region index.
    pub regions: Vec<String>,
    /// Further monitors holding a copy of each region, by region index (missing or empty:
    /// no copy; absent from state files written before replication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<String>>,
    /// The repair of each region that lost a copy, by region index (missing or `None`: no
    /// repair; absent from state files written before repairs; see `manager::repair`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Option<RegionRepair>>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// The compute host (its credential's name) whose vNode this is: set when a compute
    /// credential first announces or places it; no other compute host may claim it until an
    /// operator releases it (absent: none yet, and from state files written before
    /// credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The vNode's network address, from the manager's vNode subnet (see
    /// `manager::addresses`): set at the first `VNODE_ADDRESS`, free again when the record
    /// goes (absent: none asked for yet, and from state files written before addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

impl VnodeRecord {
    /// Every monitor holding region `i`: its primary first, then its copies.
    pub fn holders(&self, i: usize) -> Vec<String> {
        let mut h: Vec<String> = self.regions.get(i).into_iter().cloned().collect();
        h.extend(self.replicas.get(i).into_iter().flatten().cloned());
        h
    }

    /// Sets the holders of region `i` (primary first), growing the table as needed.
    pub fn set_holders(&mut self, i: usize, holders: Vec<String>) {
        let mut it = holders.into_iter();
        let primary = it.next().unwrap_or_default();
        if i < self.regions.len() {
            self.regions[i] = primary;
        } else {
            self.regions.push(primary);
        }
        let rest: Vec<String> = it.collect();
        if !rest.is_empty() && self.replicas.len() <= i {
            self.replicas.resize(i + 1, Vec::new());
        }
        if let Some(r) = self.replicas.get_mut(i) {
            *r = rest;
        }
    }
}

/// Everything the manager must remember across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    /// Layout version.
    pub version: u32,
    /// Monitors by fabric address.
    pub monitors: BTreeMap<String, MonitorRecord>,
    /// vNodes by id.
    pub vnodes: BTreeMap<u64, VnodeRecord>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            monitors: BTreeMap::new(),
            vnodes: BTreeMap::new(),
        }
    }
}

impl ClusterState {
    /// The addresses held by vNodes other than `except`.
    pub fn addresses_held_except(&self, except: u64) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vnodes
            .iter()
            .filter(move |(&id, _)| id != except)
            .filter_map(|(_, v)| v.address)
    }

    /// Bytes reserved on monitor `addr` by all placements.
    pub fn reserved_on(&self, addr: &str) -> u64 {
        self.vnodes
            .values()
            .map(|v| {
                let targets = v.repairs.iter().flatten().filter_map(|r| r.target.as_ref());
                let copies = v
                    .regions
                    .iter()
                    .chain(v.replicas.iter().flatten())
                    .chain(targets);
                let regions = copies.filter(|m| *m == addr).count() as u64 * v.region_size;
                let vols: u64 = v
                    .volumes
                    .values()
                    .filter(|r| r.monitor == addr)
                    .map(|r| r.size)
                    .sum();
                regions + vols
            })
            .sum()
    }
}

/// Errors from a state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading the state failed.
    #[error("could not read the manager state from '{path}'")]
    Read {
        /// Where.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The stored state does not parse.
    #[error("the manager state in '{path}' is corrupt or from another version")]
    Corrupt {
        /// Where.
        path: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// The stored state has another layout version.
    #[error("the manager state in '{path}' is from another version: layout version {found} is not {STATE_VERSION}")]
    Version {
        /// Where.
        path: String,
        /// The version found.
        found: u32,
    },
    /// The state could not be encoded.
    #[error("could not encode the manager state")]
    Encode(#[source] serde_json::Error),
    /// Writing the state failed.
    #[error("could not save the manager state")]
    Write(#[from] FsError),
    /// The etcd store failed.
    #[error(transparent)]
    Etcd(#[from] super::etcd_store::EtcdError),
}

/// Where the manager keeps its state.
pub trait StateStore: Send + Sync {
    /// Loads the last saved state (`None` if nothing was ever saved).
    fn load(&self) -> Result<Option<ClusterState>, StateError>;
    /// Saves the state durably; when this returns `Ok`, a crash cannot lose it.
    fn save(&self, state: &ClusterState) -> Result<(), StateError>;
}

/// A state store in one JSON file, replaced atomically.
#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
}

impl FileStateStore {
    /// A store at `<dir>/manager-state.json`; checks the folder is writable.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fsutil::check_writable_dir(dir)?;
        Ok(Self {
            path: dir.join("manager-state.json"),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore for FileStateStore {
    fn load(&self) -> Result<Option<ClusterState>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        };
        let state: ClusterState =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.display().to_string(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.display().to_string(),
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    fn save(&self, state: &ClusterState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(StateError::Encode)?;
        fsutil::write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}

/// A state store in memory (tests, or a manager that need not survive restarts).
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    state: Mutex<Option<ClusterState>>,
}

impl StateStore for MemoryStateStore {
    fn load(&self) -> Result<Option<ClusterState>, StateError> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn save(&self, state: &ClusterState) -> Result<(), StateError> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterState {
        let mut s = ClusterState::default();
        s.monitors.insert(
            "10.0.0.1:7000".into(),
            MonitorRecord {
                kind: MonitorKind::Memory,
                capacity_bytes: 4 << 30,
                used_bytes: 12,
                incarnation: None,
            },
        );
        let mut v = VnodeRecord {
            region_size: 1 << 30,
            regions: vec!["10.0.0.1:7000".into(); 2],
            ..Default::default()
        };
        v.volumes.insert(
            "root".into(),
            VolumeRecord {
                size: 1 << 20,
                monitor: "10.0.0.2:7100".into(),
            },
        );
        s.vnodes.insert(42, v);
        s
    }

    #[test]
    fn file_store_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = FileStateStore::open(d.path()).expect("open");
        assert!(store.load().expect("load").is_none());
        let s = sample();
        store.save(&s).expect("save");
        let again = FileStateStore::open(d.path()).expect("reopen");
        assert_eq!(again.load().expect("load"), Some(s.clone()));
        assert_eq!(s.reserved_on("10.0.0.1:7000"), 2 << 30);
        assert_eq!(s.reserved_on("10.0.0.2:7100"), 1 << 20);
    }

    #[test]
    fn a_state_file_from_before_repairs_loads() {
        let old = r#"{"version":1,"monitors":{},"vnodes":{"3":{"region_size":4096,
            "regions":["a:1"],"replicas":[["b:1"]],"volumes":{}}}}"#;
        let s: ClusterState = serde_json::from_str(old).expect("old state");
        assert!(s.vnodes[&3].repairs.is_empty());
        assert!(s.vnodes[&3].address.is_none());
        assert_eq!(s.vnodes[&3].holders(0), ["a:1", "b:1"]);
    }

    #[test]
    fn a_vnodes_address_is_stored_with_it() {
        let mut s = sample();
        s.vnodes.get_mut(&42).expect("42").address = Some(Ipv4Addr::new(10, 99, 0, 2));
        s.vnodes.insert(
            43,
            VnodeRecord {
                address: Some(Ipv4Addr::new(10, 99, 0, 3)),
                ..Default::default()
            },
        );
        let json = serde_json::to_string(&s).expect("json");
        assert!(json.contains(r#""address":"10.99.0.2""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ClusterState>(&json).expect("back"),
            s
        );
        let others: Vec<Ipv4Addr> = s.addresses_held_except(42).collect();
        assert_eq!(others, [Ipv4Addr::new(10, 99, 0, 3)]);
    }

    #[test]
    fn corrupt_state_is_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = FileStateStore::open(d.path()).expect("open");
        std::fs::write(store.path(), b"{not json").expect("write");
        let e = store.load().expect_err("corrupt");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn memory_store_round_trip() {
        let m = MemoryStateStore::default();
        m.save(&sample()).expect("save");
        assert_eq!(m.load().expect("load"), Some(sample()));
    }
}
