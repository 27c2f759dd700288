//! Configuration files of the daemons (TOML; unknown keys are rejected) and their defaults.
//!
//! Each daemon merges: command-line flag, else config file key, else the default here.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::manager::addresses::VnodeSubnet;
use lego_monitor_client::size::ByteSize;

/// Default fabric address of the manager.
pub const DEFAULT_MANAGER_LISTEN: &str = "127.0.0.1:7300";
/// Default fabric address of the memory monitor.
pub const DEFAULT_MEMORY_LISTEN: &str = "127.0.0.1:7100";
/// Default fabric address of the storage monitor.
pub const DEFAULT_STORAGE_LISTEN: &str = "127.0.0.1:7200";
/// Default memory monitor capacity (4 GiB).
pub const DEFAULT_MEMORY_CAPACITY: u64 = 4 << 30;
/// Default heartbeat interval in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;

/// Errors from loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read the config file '{path}'")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid for this daemon (syntax, type, or an unknown key).
    #[error("the config file '{path}' is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (names the key and line).
        reason: String,
    },
}

/// Loads a TOML config file, or the default (all keys unset) when `path` is `None`.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.display().to_string(),
        reason: e.to_string().trim_end().replace('\n', " "),
    })
}

/// Keys shared by both monitors.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MonitorFileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Address to announce to the manager (default: the bound address).
    pub advertise: Option<String>,
    /// Capacity offered.
    pub capacity: Option<ByteSize>,
    /// Manager address (no registration when unset).
    pub manager: Option<String>,
    /// Cluster key file (else `LEGO_CLUSTER_KEY` / `LEGO_CLUSTER_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// The managers' capability public key, in hex or a file holding it (default: derived
    /// from the cluster key).
    pub capability_public_key: Option<String>,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: Option<u64>,
    /// Worker threads for blocking requests.
    pub workers: Option<usize>,
    /// µs each connection's reader busy-polls its socket before sleeping (0: never).
    pub poll_us: Option<u64>,
    /// Address of the Prometheus metrics endpoint (none when unset).
    pub metrics: Option<String>,
    /// Storage monitor only: folder of volume files.
    pub data_dir: Option<PathBuf>,
}

/// Keys of the manager's config file.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManagerFileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Folder for the state file.
    pub state_dir: Option<PathBuf>,
    /// Where the state lives instead of the folder: `etcd://HOST:PORT[,...][/PREFIX/]`.
    pub store: Option<String>,
    /// Fabric address other hosts reach this manager at (etcd store only).
    pub advertise: Option<String>,
    /// Seconds of the etcd lease behind the manager's leadership (etcd store only).
    pub leader_ttl_secs: Option<u64>,
    /// vRegion size.
    pub region_size: Option<ByteSize>,
    /// Expected heartbeat interval of monitors in milliseconds.
    pub heartbeat_ms: Option<u64>,
    /// Missed heartbeats before a monitor is dead.
    pub missed_heartbeats: Option<u32>,
    /// Default capability lifetime in seconds.
    pub capability_ttl_secs: Option<u64>,
    /// Copies of each vRegion on distinct memory monitors.
    pub copies: Option<u32>,
    /// Rate limit of a vRegion repair's copy in MiB/s (0: none).
    pub repair_rate_mib: Option<u32>,
    /// Seconds without a lease renewal after which a vNode's memory is reclaimed.
    pub vnode_lease_secs: Option<u64>,
    /// IPv4 subnet (CIDR) vNodes get their addresses from; its first host address is the
    /// gateway.
    pub vnode_subnet: Option<VnodeSubnet>,
    /// Cluster key file.
    pub key_file: Option<PathBuf>,
    /// File holding the capability signing key's seed in hex (default: derived from the
    /// cluster key).
    pub capability_key_file: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint (none when unset).
    pub metrics: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_clearly() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("m.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\ncapacity = \"2G\"\n").expect("write");
        let c: MonitorFileConfig = load(Some(&p)).expect("valid");
        assert_eq!(c.capacity, Some(ByteSize(2 << 30)));
        std::fs::write(&p, "listen = \"x\"\ncapacityy = \"2G\"\n").expect("write");
        let e = load::<MonitorFileConfig>(Some(&p)).expect_err("unknown key");
        assert!(e.to_string().contains("capacityy"), "{e}");
        std::fs::write(&p, "capacity = \"2Q\"\n").expect("write");
        assert!(load::<MonitorFileConfig>(Some(&p)).is_err());
        assert!(load::<ManagerFileConfig>(Some(&d.path().join("missing.toml"))).is_err());
        std::fs::write(&p, "vnode_subnet = \"10.50.0.0/16\"\n").expect("write");
        let c: ManagerFileConfig = load(Some(&p)).expect("a subnet");
        assert_eq!(
            c.vnode_subnet.map(|s| s.to_string()).as_deref(),
            Some("10.50.0.0/16")
        );
        std::fs::write(&p, "vnode_subnet = \"10.50.0.0/31\"\n").expect("write");
        let e = load::<ManagerFileConfig>(Some(&p)).expect_err("too small");
        assert!(e.to_string().contains("too small for a vNode"), "{e}");
        assert_eq!(
            load::<ManagerFileConfig>(None).expect("default"),
            ManagerFileConfig::default()
        );
    }
}
