//! The vNode's remote memory for paged guest RAM: placed by the manager (as many bytes as
//! guest RAM, in vRegions with the manager's copies), reached with the capability it issues,
//! kept repaired, its capability renewed and the vNode's lease kept while the vNode runs. On a
//! clean end its pages are freed on the monitors.

use std::time::Duration;

use lego_fabric::{ClientConfig, Identity, Rights};
use lego_monitor_client::client::{CallError, LeaseKeeper, ManagerClient, Renewal, VnodeMemory};

use super::store::{PageStore, StoreError};
use crate::config::RemoteConfig;

/// Errors opening the vNode's remote memory.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The cluster key could not be loaded.
    #[error("cannot load the cluster key")]
    Key(#[source] lego_fabric::AuthError),
    /// The manager did not answer.
    #[error("cannot reach the manager at {addr}")]
    Manager {
        /// Its address.
        addr: String,
        /// Why.
        source: CallError,
    },
    /// The manager refused.
    #[error("the manager could not {what}")]
    Refused {
        /// What was asked.
        what: String,
        /// Why.
        source: CallError,
    },
    /// The monitors could not be reached.
    #[error("cannot reach the memory monitors holding vNode {vnode}'s guest RAM")]
    Monitors {
        /// The vNode.
        vnode: u64,
        /// Why.
        source: CallError,
    },
    /// Less was placed than guest RAM needs.
    #[error(
        "the manager placed {placed} bytes for vNode {vnode}'s guest RAM, less than its {wanted}"
    )]
    Short {
        /// The vNode.
        vnode: u64,
        /// Placed.
        placed: u64,
        /// Wanted.
        wanted: u64,
    },
}

/// Remote memory holding a vNode's paged-out guest RAM.
pub struct RemoteGuestRam {
    memory: VnodeMemory,
    vnode: u64,
    _renewal: Renewal,
    _lease: LeaseKeeper,
}

/// How long a fault thread busy-polls for a monitor's answer before it sleeps.
pub const MONITOR_SPIN: Duration = Duration::from_micros(50);

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

impl RemoteGuestRam {
    /// Places `bytes` of remote memory for `remote.vnode` and connects to its monitors.
    pub fn open(remote: &RemoteConfig, bytes: u64) -> Result<Self, RemoteError> {
        let key = Identity::load(remote.key_file.as_deref()).map_err(RemoteError::Key)?;
        let vnode = remote.vnode;
        let mgr = ManagerClient::connect(&remote.manager, key.clone(), client_config()).map_err(
            |source| RemoteError::Manager {
                addr: remote.manager.clone(),
                source,
            },
        )?;
        let refused = |what: String| move |source| RemoteError::Refused { what, source };
        let placement = mgr.place_memory(vnode, bytes).map_err(refused(format!(
            "place {bytes} bytes of memory for vNode {vnode}"
        )))?;
        let cap = mgr
            .issue_capability(vnode, Rights::MEMORY, Duration::ZERO)
            .map_err(refused(format!(
                "issue a memory capability for vNode {vnode}"
            )))?;
        let copies = placement
            .regions
            .iter()
            .map(|r| r.holders().count())
            .min()
            .unwrap_or(1);
        // With another copy to go to, a dead monitor costs a refused connection, not a wait.
        // A fault thread busy-polls briefly for its answer: a round trip on a fast fabric is
        // shorter than the two thread wake-ups of sleeping on it (as lego-vhost-blk does).
        let config = ClientConfig {
            reconnect_patience: (copies > 1).then_some(Duration::ZERO),
            spin: MONITOR_SPIN,
            ..client_config()
        };
        let mut memory = VnodeMemory::connect(placement, key, &cap, config)
            .map_err(|source| RemoteError::Monitors { vnode, source })?;
        let placed = memory.pages() * super::table::PAGE as u64;
        if placed < bytes {
            return Err(RemoteError::Short {
                vnode,
                placed,
                wanted: bytes,
            });
        }
        let lease = LeaseKeeper::start(mgr.clone(), vnode);
        memory.keep_repaired(mgr.clone());
        let renewal = Renewal::start_with(mgr, cap, memory.fabric_client_list());
        tracing::info!(vnode, bytes, copies, "remote memory for guest RAM ready");
        Ok(Self {
            memory,
            vnode,
            _renewal: renewal,
            _lease: lease,
        })
    }

    /// Frees the vNode's pages on the monitors (the vNode ended: its RAM dies with it).
    pub fn release(&self) {
        match self.memory.free_all() {
            Ok(pages) => tracing::info!(
                vnode = self.vnode,
                pages,
                "freed the vNode's guest RAM pages on the memory monitors"
            ),
            Err(e) => tracing::warn!(
                vnode = self.vnode,
                "cannot free the vNode's guest RAM pages on the memory monitors: {}",
                lego_report::error_chain(&e)
            ),
        }
    }
}

impl PageStore for RemoteGuestRam {
    fn read(&self, start: u64, count: u64) -> Result<Vec<u8>, StoreError> {
        self.memory.read(start, count)
    }

    fn write(&self, runs: &[(u64, &[u8])]) -> Result<(), StoreError> {
        PageStore::write(&self.memory, runs)
    }
}
