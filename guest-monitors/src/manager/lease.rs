//! [`VnodeLeases`]: which vNodes' compute hosts are alive, by the leases their backends
//! renew (`RENEW_LEASE`), and reclaiming the remote memory of a vNode whose lease lapsed.
//!
//! A backend renews every few seconds; a backend that restarts misses a few renewals,
//! well within the lease (`--vnode-lease-secs`, default 120 s). A vNode whose lease lapsed
//! (its compute host is gone, or legovmm was killed with its backends) has its memory
//! placements released ([`Manager::release_vnode_memory`]), so its vRegions' capacity can
//! be placed again; its volumes stay (their data outlives any vNode).
//!
//! Leases live in memory only: a vNode is subject to reclaim once a backend renewed its
//! lease with this manager process, so a manager restart never reclaims a vNode whose
//! backend has not been heard from yet, and a vNode placed without a backend (`legoctl`)
//! is never reclaimed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::core::Manager;

/// The default lease: long enough for a backend to restart.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// The vNodes' leases.
#[derive(Debug)]
pub struct VnodeLeases {
    lease: Duration,
    renewed: Mutex<HashMap<u64, Instant>>,
}

impl Default for VnodeLeases {
    fn default() -> Self {
        Self::new(DEFAULT_LEASE)
    }
}

impl VnodeLeases {
    /// Leases of `lease` each.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            renewed: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Renews `vnode`'s lease from now; returns its length.
    pub fn renew(&self, vnode: u64) -> Duration {
        self.lock().insert(vnode, Instant::now());
        self.lease
    }

    /// Takes out the vNodes whose lease lapsed at `now`, with how long ago it was renewed.
    pub fn lapsed(&self, now: Instant) -> Vec<(u64, Duration)> {
        let mut renewed = self.lock();
        let gone: Vec<(u64, Duration)> = renewed
            .iter()
            .map(|(&v, &at)| (v, now.saturating_duration_since(at)))
            .filter(|&(_, ago)| ago > self.lease)
            .collect();
        for (v, _) in &gone {
            renewed.remove(v);
        }
        gone
    }

    /// Releases the memory placements of every vNode whose lease lapsed, logging each;
    /// returns those vNodes. A release that fails (the state could not be saved) is logged
    /// and tried again at the next call.
    pub fn reclaim(&self, manager: &Manager) -> Vec<u64> {
        let mut done = Vec::new();
        for (vnode, ago) in self.lapsed(Instant::now()) {
            match manager.release_vnode_memory(vnode) {
                Ok(0) => {
                    tracing::debug!(vnode, "the vNode's lease lapsed; it has no memory placed");
                }
                Ok(regions) => {
                    tracing::warn!(
                        vnode,
                        regions,
                        silent_secs = ago.as_secs(),
                        lease_secs = self.lease.as_secs(),
                        "the vNode's lease lapsed (no backend renewed it: its compute host is \
                         gone?); released its remote memory placements"
                    );
                    done.push(vnode);
                }
                Err(e) => {
                    tracing::error!(
                        vnode,
                        "cannot release the memory of a vNode whose lease lapsed: {}",
                        lego_report::error_chain(&e)
                    );
                    // Retried at the next call, as if it had lapsed just now.
                    self.lock().insert(
                        vnode,
                        Instant::now() - self.lease - Duration::from_millis(1),
                    );
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_once_after_its_length() {
        let l = VnodeLeases::new(Duration::from_secs(10));
        let now = Instant::now();
        l.renew(3);
        assert!(l.lapsed(now + Duration::from_secs(9)).is_empty());
        let gone = l.lapsed(now + Duration::from_secs(11));
        assert_eq!(gone.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
        assert!(
            l.lapsed(now + Duration::from_secs(20)).is_empty(),
            "reported once"
        );
    }
}
