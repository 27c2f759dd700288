//! Placement bounds: a memory monitor serves a vNode only the pages of the vRegions the manager
//! placed on it (as a holder or as a repair's target), so a vNode with a valid capability can
//! neither write page 10^9 nor fill capacity the manager reserved for another vNode.
//!
//! The monitor learns a vNode's regions from the manager the first time the vNode asks, keeps
//! them, and asks again when a page falls outside them (the vNode may have grown, or a repair
//! may have picked this monitor) or when they are older than [`REFRESH_AFTER`]. A manager that
//! cannot be reached does not stop a running vNode: the bounds already known stay in force.
//!
//! A storage monitor creates (or grows) a vNode's volume only as the manager placed it: on
//! this monitor, at most the size reserved ([`VolumeBounds`]); reads and writes are then bound
//! by the volume's size.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use lego_fabric::{ClientConfig, ClusterKey, ErrorCode, RemoteError};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{MemoryPlacement, VolumePlacement};

/// Bounds older than this are fetched again on the vNode's next request.
pub const REFRESH_AFTER: Duration = Duration::from_secs(30);
/// A page outside the known bounds asks the manager again at most this often per vNode.
pub const MISS_REFETCH_EVERY: Duration = Duration::from_millis(100);

/// Why a vNode's request was refused by its bounds.
#[derive(Debug, thiserror::Error)]
pub enum BoundsError {
    /// The pages lie outside the vRegions placed on this monitor.
    #[error(
        "pages {start}..{end} of vNode {vnode} lie outside the vRegions the manager placed on this \
         monitor ({held})"
    )]
    Outside {
        /// The vNode.
        vnode: u64,
        /// First page asked.
        start: u64,
        /// One past the last page asked.
        end: u64,
        /// The page ranges it holds here, as text.
        held: String,
    },
    /// The page range runs past the largest page index.
    #[error("pages {start}+{count} of vNode {vnode} run past the largest page index")]
    Overflow {
        /// The vNode.
        vnode: u64,
        /// First page asked.
        start: u64,
        /// Pages asked.
        count: u64,
    },
    /// The volume is not placed on this monitor, or not that large.
    #[error(
        "vNode {vnode}'s volume '{name}' of {size} bytes is not placed on this monitor ({placed})"
    )]
    VolumeNotPlaced {
        /// The vNode.
        vnode: u64,
        /// The volume.
        name: String,
        /// The size asked for.
        size: u64,
        /// What the manager has, as text.
        placed: String,
    },
    /// The manager could not say where the vNode's memory or volume is, and nothing is known yet.
    #[error("cannot learn where vNode {vnode}'s memory or volume is placed: {reason}")]
    Unknown {
        /// The vNode.
        vnode: u64,
        /// What the manager (or the link to it) said.
        reason: String,
    },
}

impl From<BoundsError> for RemoteError {
    fn from(e: BoundsError) -> Self {
        let code = match e {
            BoundsError::Outside { .. } | BoundsError::VolumeNotPlaced { .. } => {
                ErrorCode::Forbidden
            }
            BoundsError::Unknown { .. } => ErrorCode::Unavailable,
            BoundsError::Overflow { .. } => ErrorCode::InvalidArgument,
        };
        RemoteError::new(code, e.to_string())
    }
}

/// Where the bounds come from: the manager, or a fake in unit tests.
pub trait PlacementSource: Send + Sync {
    /// `vnode`'s memory placement as the manager has it.
    fn memory_placement(&self, vnode: u64) -> Result<MemoryPlacement, String>;
    /// `vnode`'s volume `name` as the manager placed it, if it did.
    fn volume_placement(&self, vnode: u64, name: &str) -> Result<Option<VolumePlacement>, String>;
}

/// Asks a manager over the fabric (connecting on first use and after a failure).
pub struct ManagerSource {
    addr: String,
    key: ClusterKey,
    client: Mutex<Option<ManagerClient>>,
}

impl ManagerSource {
    /// A source asking the manager at `addr`.
    pub fn new(addr: impl Into<String>, key: ClusterKey) -> Self {
        Self {
            addr: addr.into(),
            key,
            client: Mutex::new(None),
        }
    }
}

impl ManagerSource {
    /// Runs `f` on a connected client, connecting first if needed; a failure of the link (not
    /// an answer of the manager) drops the client so the next call connects again.
    fn with_client<T>(
        &self,
        f: impl FnOnce(&ManagerClient) -> Result<T, lego_monitor_client::client::CallError>,
    ) -> Result<T, String> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if client.is_none() {
            let cc = ClientConfig {
                timeout: Duration::from_secs(2),
                ..Default::default()
            };
            let c = ManagerClient::connect(&self.addr, self.key.clone(), cc).map_err(|e| {
                format!(
                    "the manager at {} is unreachable: {}",
                    self.addr,
                    lego_report::error_chain(&e)
                )
            })?;
            *client = Some(c);
        }
        let Some(c) = client.as_ref() else {
            return Err("no manager client".into());
        };
        f(c).map_err(|e| {
            if e.remote_code().is_none() {
                *client = None;
            }
            lego_report::error_chain(&e)
        })
    }
}

impl PlacementSource for ManagerSource {
    fn memory_placement(&self, vnode: u64) -> Result<MemoryPlacement, String> {
        self.with_client(|c| c.memory_placement(vnode))
    }

    fn volume_placement(&self, vnode: u64, name: &str) -> Result<Option<VolumePlacement>, String> {
        let status = self.with_client(|c| c.status())?;
        Ok(status
            .vnodes
            .into_iter()
            .filter(|v| v.vnode == vnode)
            .flat_map(|v| v.volumes)
            .find(|v| v.name == name))
    }
}

/// What a storage monitor may create: the volumes the manager placed on it, at most as large
/// as placed.
pub struct VolumeBounds {
    source: Box<dyn PlacementSource>,
    me: OnceLock<String>,
}

impl VolumeBounds {
    /// Bounds asked of `source`; [`VolumeBounds::set_address`] names this monitor.
    pub fn new(source: Box<dyn PlacementSource>) -> Self {
        Self {
            source,
            me: OnceLock::new(),
        }
    }

    /// Names this monitor as the manager knows it (its advertised address).
    pub fn set_address(&self, addr: impl Into<String>) {
        let _ = self.me.set(addr.into());
    }

    /// Checks that `vnode`'s volume `name` may have `size` bytes here.
    pub fn check(&self, vnode: u64, name: &str, size: u64) -> Result<(), BoundsError> {
        let me = self.me.get().map(String::as_str).unwrap_or("");
        let placed = self
            .source
            .volume_placement(vnode, name)
            .map_err(|reason| BoundsError::Unknown { vnode, reason })?;
        match placed {
            Some(p) if p.monitor == me && size <= p.size => Ok(()),
            other => Err(BoundsError::VolumeNotPlaced {
                vnode,
                name: name.into(),
                size,
                placed: match other {
                    Some(p) if p.monitor != me => format!("the manager placed it on {}", p.monitor),
                    Some(p) => format!("the manager reserved {} bytes", p.size),
                    None => "the manager has not placed it".into(),
                },
            }),
        }
    }
}

/// The page ranges one vNode may use here, and when they were learnt.
struct Grant {
    /// Half-open page ranges, sorted.
    ranges: Vec<(u64, u64)>,
    fetched: Instant,
}

impl Grant {
    fn covers(&self, start: u64, end: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= start && end <= b)
    }

    fn describe(&self) -> String {
        if self.ranges.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|(a, b)| format!("pages {a}..{b}"))
            .collect();
        parts.join(", ")
    }
}

/// The bounds of every vNode served by one memory monitor.
pub struct PlacementBounds {
    source: Box<dyn PlacementSource>,
    me: OnceLock<String>,
    grants: RwLock<HashMap<u64, Grant>>,
    /// One fetch at a time: concurrent misses wait for it instead of asking again.
    fetching: Mutex<()>,
}

impl PlacementBounds {
    /// Bounds learnt from `source`; [`PlacementBounds::set_address`] must name this monitor
    /// before any request is checked.
    pub fn new(source: Box<dyn PlacementSource>) -> Self {
        Self {
            source,
            me: OnceLock::new(),
            grants: RwLock::new(HashMap::new()),
            fetching: Mutex::new(()),
        }
    }

    /// Names this monitor as the manager knows it (its advertised address).
    pub fn set_address(&self, addr: impl Into<String>) {
        let _ = self.me.set(addr.into());
    }

    /// The page ranges of `p` held (or being filled) by the monitor at `me`.
    fn ranges_of(p: &MemoryPlacement, me: &str) -> Vec<(u64, u64)> {
        let per = p.region_pages();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in &p.regions {
            let here = r.holders().any(|h| h == me)
                || r.repair
                    .as_ref()
                    .and_then(|x| x.target.as_deref())
                    .is_some_and(|t| t == me);
            if !here {
                continue;
            }
            let (a, b) = (r.index * per, (r.index + 1) * per);
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        out
    }

    /// Whether the known grant of `vnode` covers the pages, and whether it is fresh.
    fn known(&self, vnode: u64, start: u64, end: u64) -> Option<(bool, Instant)> {
        let g = self.grants.read().unwrap_or_else(|e| e.into_inner());
        g.get(&vnode).map(|g| (g.covers(start, end), g.fetched))
    }

    /// Asks the source for `vnode`'s placement and keeps the answer; a failed ask keeps what
    /// was known (a running vNode never needs the manager on its data path).
    fn refresh(&self, vnode: u64, unless_newer_than: Option<Instant>) -> Result<(), String> {
        let _one = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(since), Some((_, fetched))) = (unless_newer_than, self.known(vnode, 0, 0)) {
            if fetched > since {
                return Ok(()); // another request fetched it meanwhile
            }
        }
        let me = self.me.get().map(String::as_str).unwrap_or("");
        let p = self.source.memory_placement(vnode)?;
        let ranges = Self::ranges_of(&p, me);
        tracing::debug!(vnode, ?ranges, "placement bounds learnt from the manager");
        self.grants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                vnode,
                Grant {
                    ranges,
                    fetched: Instant::now(),
                },
            );
        Ok(())
    }

    /// Checks that pages `start..start+count` of `vnode` lie in vRegions placed here.
    pub fn check(&self, vnode: u64, start: u64, count: u64) -> Result<(), BoundsError> {
        let end = start
            .checked_add(count.max(1))
            .ok_or(BoundsError::Overflow {
                vnode,
                start,
                count,
            })?;
        let now = Instant::now();
        match self.known(vnode, start, end) {
            Some((true, fetched)) if now.duration_since(fetched) < REFRESH_AFTER => return Ok(()),
            Some((true, fetched)) => {
                if let Err(reason) = self.refresh(vnode, Some(fetched)) {
                    tracing::debug!(
                        vnode,
                        reason,
                        "could not refresh placement bounds; keeping the known ones"
                    );
                    return Ok(());
                }
            }
            Some((false, fetched)) if now.duration_since(fetched) < MISS_REFETCH_EVERY => {}
            Some((false, fetched)) => {
                if let Err(reason) = self.refresh(vnode, Some(fetched)) {
                    tracing::debug!(vnode, reason, "could not refresh placement bounds");
                }
            }
            None => {
                self.refresh(vnode, None)
                    .map_err(|reason| BoundsError::Unknown { vnode, reason })?;
            }
        }
        let g = self.grants.read().unwrap_or_else(|e| e.into_inner());
        match g.get(&vnode) {
            Some(grant) if grant.covers(start, end) => Ok(()),
            Some(grant) => Err(BoundsError::Outside {
                vnode,
                start,
                end,
                held: grant.describe(),
            }),
            None => Err(BoundsError::Unknown {
                vnode,
                reason: "no placement is known".into(),
            }),
        }
    }

    /// Checks every page of `pages` (see [`PlacementBounds::check`]).
    pub fn check_list(&self, vnode: u64, pages: &[u64]) -> Result<(), BoundsError> {
        let (Some(&lo), Some(&hi)) = (pages.iter().min(), pages.iter().max()) else {
            return Ok(());
        };
        if self.check(vnode, lo, hi - lo + 1).is_ok() {
            return Ok(());
        }
        pages.iter().try_for_each(|&p| self.check(vnode, p, 1))
    }

    /// Forgets `vnode`'s bounds (its pages were freed), so the next use asks the manager.
    pub fn forget(&self, vnode: u64) {
        self.grants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vnode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_monitor_client::proto::manager::{RegionPlacement, RegionRepair};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A manager stand-in: vNode 7 has 4 regions of 4 pages; this monitor ("m1") holds
    /// regions 0 and 1, region 3 copies to it once `grown` is set.
    struct Fake {
        asked: Arc<AtomicU64>,
        grown: Arc<AtomicU64>,
        down: Arc<AtomicU64>,
    }

    impl PlacementSource for Fake {
        fn memory_placement(&self, vnode: u64) -> Result<MemoryPlacement, String> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) == 1 {
                return Err("the manager is down".into());
            }
            if vnode != 7 {
                return Err(format!("vNode {vnode} has no placements"));
            }
            let region = |index: u64, monitor: &str| RegionPlacement {
                index,
                monitor: monitor.into(),
                replicas: vec![],
                repair: None,
                health: None,
            };
            let mut regions = vec![region(0, "m1"), region(1, "m1"), region(2, "m2")];
            let mut r3 = region(3, "m2");
            if self.grown.load(Ordering::SeqCst) == 1 {
                r3.repair = Some(RegionRepair {
                    missing: 1,
                    target: Some("m1".into()),
                    ..Default::default()
                });
            }
            regions.push(r3);
            Ok(MemoryPlacement {
                vnode,
                region_size: 4 * 4096,
                regions,
            })
        }

        fn volume_placement(
            &self,
            vnode: u64,
            name: &str,
        ) -> Result<Option<VolumePlacement>, String> {
            Ok((vnode == 7).then(|| VolumePlacement {
                name: name.into(),
                size: 1 << 20,
                monitor: if name == "root" { "m1" } else { "m2" }.into(),
                created: false,
            }))
        }
    }

    fn bounds() -> (
        PlacementBounds,
        Arc<AtomicU64>,
        Arc<AtomicU64>,
        Arc<AtomicU64>,
    ) {
        let (asked, grown, down) = Default::default();
        let b = PlacementBounds::new(Box::new(Fake {
            asked: Arc::clone(&asked),
            grown: Arc::clone(&grown),
            down: Arc::clone(&down),
        }));
        b.set_address("m1");
        (b, asked, grown, down)
    }

    #[test]
    fn pages_of_regions_held_here_pass_and_others_are_refused() {
        let (b, asked, _, _) = bounds();
        b.check(7, 0, 8).expect("regions 0 and 1 are here");
        b.check_list(7, &[1, 7, 3]).expect("a list inside");
        let e = b.check(7, 8, 1).expect_err("region 2 is on m2");
        assert!(e.to_string().contains("pages 0..8"), "{e}");
        let e = b.check(7, 1_000_000_000, 1).expect_err("far outside");
        assert!(matches!(e, BoundsError::Outside { .. }), "{e}");
        assert!(b.check_list(7, &[1, 12]).is_err());
        assert!(
            b.check(7, u64::MAX, 5).is_err(),
            "overflowing ranges are refused"
        );
        let e = b.check(9, 0, 1).expect_err("an unplaced vNode");
        assert!(matches!(e, BoundsError::Unknown { .. }), "{e}");
        // Misses within MISS_REFETCH_EVERY do not ask the manager again.
        let before = asked.load(Ordering::SeqCst);
        for _ in 0..100 {
            let _ = b.check(7, 8, 1);
        }
        assert!(asked.load(Ordering::SeqCst) <= before + 1);
    }

    #[test]
    fn volumes_are_created_only_as_placed() {
        let (asked, grown, down) = Default::default();
        let b = VolumeBounds::new(Box::new(Fake { asked, grown, down }));
        b.set_address("m1");
        b.check(7, "root", 1 << 20).expect("placed here");
        b.check(7, "root", 4096).expect("smaller than placed");
        let e = b.check(7, "root", 2 << 20).expect_err("larger than placed");
        assert!(e.to_string().contains("reserved 1048576 bytes"), "{e}");
        let e = b.check(7, "data", 4096).expect_err("placed elsewhere");
        assert!(e.to_string().contains("placed it on m2"), "{e}");
        let e = b.check(8, "root", 4096).expect_err("not placed");
        assert!(e.to_string().contains("has not placed it"), "{e}");
    }

    #[test]
    fn a_repair_target_is_learnt_on_a_miss_and_a_manager_outage_keeps_known_bounds() {
        let (b, _, grown, down) = bounds();
        b.check(7, 0, 1).expect("known");
        grown.store(1, Ordering::SeqCst);
        std::thread::sleep(MISS_REFETCH_EVERY);
        b.check(7, 12, 4).expect("region 3 is being copied here");
        down.store(1, Ordering::SeqCst);
        b.check(7, 0, 1)
            .expect("known bounds survive the manager's outage");
        b.forget(7);
        let e = b.check(7, 0, 1).expect_err("nothing known and no manager");
        assert!(e.to_string().contains("the manager is down"), "{e}");
    }
}
