//! [`RunningVnodes`]: which vNodes run now, where — each legovmm announces its vNode
//! (`VNODE_UP`) every interval and says when it stops (`VNODE_DOWN`); a vNode not heard from
//! for [`RunningVnodes::forget_after`] (its compute host died, or legovmm was killed) is
//! forgotten, with a log line. Kept in memory only: after a manager restart the running
//! vNodes reappear at their next announcement.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lego_monitor_client::proto::manager::{RunningVnode, VnodeDown, VnodeUp};

/// The shortest silence after which a vNode is forgotten: a legovmm on a loaded compute host
/// may announce late by more than a few short heartbeat intervals, and forgetting a running
/// vNode is worse than listing a dead one for a few seconds.
pub const MIN_FORGET: Duration = Duration::from_secs(3);

/// The running vNodes, by id.
#[derive(Debug)]
pub struct RunningVnodes {
    interval: Duration,
    forget_after: Duration,
    entries: Mutex<BTreeMap<u64, (VnodeUp, Instant)>>,
}

impl RunningVnodes {
    /// A registry asking for an announcement every `interval`, forgetting a vNode silent for
    /// `missed` intervals, and never sooner than [`MIN_FORGET`].
    pub fn new(interval: Duration, missed: u32) -> Self {
        Self {
            interval,
            forget_after: (interval * missed.max(1)).max(MIN_FORGET),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// A registry with an explicit silence limit (tests).
    pub fn with_forget_after(interval: Duration, forget_after: Duration) -> Self {
        Self {
            interval,
            forget_after,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, (VnodeUp, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a silent vNode is kept.
    pub fn forget_after(&self) -> Duration {
        self.forget_after
    }

    /// Records an announcement; returns the interval to announce again at. A vNode runs
    /// once: while another legovmm (another pid or host) announces it and has not fallen
    /// silent, the announcement is refused with the running one.
    pub fn up(&self, up: VnodeUp) -> Result<Duration, RunningVnode> {
        let mut entries = self.lock();
        match entries.get(&up.vnode) {
            None => {
                tracing::info!(vnode = up.vnode, host = %up.host, pid = up.pid, "vNode running")
            }
            Some((old, seen)) if old.pid != up.pid || old.host != up.host => {
                let silent = seen.elapsed();
                if silent <= self.forget_after {
                    tracing::warn!(
                        vnode = up.vnode,
                        "refused vNode {} to pid {} on {}: pid {} on {} runs it",
                        up.vnode,
                        up.pid,
                        up.host,
                        old.pid,
                        old.host
                    );
                    return Err(RunningVnode {
                        up: old.clone(),
                        last_seen_ms: silent.as_millis() as u64,
                    });
                }
                tracing::warn!(
                    vnode = up.vnode,
                    "vNode {} now runs as pid {} on {} (pid {} on {} fell silent)",
                    up.vnode,
                    up.pid,
                    up.host,
                    old.pid,
                    old.host
                );
            }
            Some(_) => {}
        }
        entries.insert(up.vnode, (up, Instant::now()));
        Ok(self.interval)
    }

    /// Forgets a stopped vNode (unless another instance announced it since).
    pub fn down(&self, down: &VnodeDown) {
        let mut entries = self.lock();
        if let Some((up, _)) = entries.get(&down.vnode) {
            if up.pid == down.pid && up.host == down.host {
                entries.remove(&down.vnode);
                tracing::info!(vnode = down.vnode, "vNode stopped");
            }
        }
    }

    /// The host that runs `vnode` now (the name of its compute host's credential, or the
    /// host name a holder of the cluster key reported), if it has not fallen silent.
    pub fn host_of(&self, vnode: u64) -> Option<String> {
        let entries = self.lock();
        entries
            .get(&vnode)
            .filter(|(_, seen)| seen.elapsed() <= self.forget_after)
            .map(|(up, _)| up.host.clone())
    }

    /// The running vNodes, by id (forgetting the silent ones first).
    pub fn list(&self) -> Vec<RunningVnode> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|id, (up, seen)| {
            let keep = now.duration_since(*seen) <= self.forget_after;
            if !keep {
                tracing::warn!(
                    vnode = id,
                    host = %up.host,
                    "forgot vNode {id}: its legovmm (pid {} on {}) has not announced it for {:?}",
                    up.pid,
                    up.host,
                    self.forget_after
                );
            }
            keep
        });
        entries
            .values()
            .map(|(up, seen)| RunningVnode {
                up: up.clone(),
                last_seen_ms: now.duration_since(*seen).as_millis() as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(vnode: u64, pid: u32) -> VnodeUp {
        VnodeUp {
            vnode,
            host: "h1".into(),
            pid,
            api_socket: Some("/run/v.sock".into()),
            vcpus: 1,
            memory_bytes: 1 << 30,
            devices: vec!["disk0: virtio-blk d.img".into()],
            started_unix_ms: 1,
        }
    }

    #[test]
    fn a_vnode_is_listed_until_it_stops_or_falls_silent() {
        let r =
            RunningVnodes::with_forget_after(Duration::from_millis(20), Duration::from_millis(60));
        assert_eq!(
            RunningVnodes::new(Duration::from_millis(20), 3).forget_after(),
            MIN_FORGET
        );
        assert_eq!(r.up(up(1, 10)), Ok(Duration::from_millis(20)));
        r.up(up(2, 20)).unwrap();
        assert_eq!(r.list().len(), 2);
        // A stale DOWN (another pid) does not forget the running instance.
        r.down(&VnodeDown {
            vnode: 1,
            pid: 99,
            host: "h1".into(),
        });
        assert_eq!(r.list().len(), 2);
        r.down(&VnodeDown {
            vnode: 1,
            pid: 10,
            host: "h1".into(),
        });
        let left = r.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].up, up(2, 20));
        std::thread::sleep(Duration::from_millis(80));
        assert!(r.list().is_empty(), "a silent vNode was kept");
    }

    #[test]
    fn a_vnode_runs_once_until_its_legovmm_stops_or_falls_silent() {
        let r =
            RunningVnodes::with_forget_after(Duration::from_millis(20), Duration::from_millis(60));
        r.up(up(1, 10)).unwrap();
        let held = r
            .up(up(1, 11))
            .expect_err("a second legovmm took a running vNode");
        assert_eq!(held.up, up(1, 10));
        r.up(up(1, 10)).expect("the running one announces again");
        // Once it stops, another may run it.
        r.down(&VnodeDown {
            vnode: 1,
            pid: 10,
            host: "h1".into(),
        });
        r.up(up(1, 11)).expect("after VNODE_DOWN");
        // Once it falls silent (killed), too.
        std::thread::sleep(Duration::from_millis(80));
        r.up(up(1, 12)).expect("after silence");
        assert_eq!(r.list()[0].up.pid, 12);
    }
}
