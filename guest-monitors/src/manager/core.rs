//! The manager's logic: membership, liveness, placement and capabilities (LegoOS GMM/GSM).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lego_fabric::{Capability, CapabilityKey, Rights};

use super::addresses::{AddressError, VnodeSubnet};
use super::repair::{self, RepairError, Reported};
use super::state::{
    ClusterState, MonitorRecord, StateError, StateStore, VnodeRecord, VolumeRecord,
};
use crate::placement::{self, Candidate, PlacementError};
use crate::volume::VolumeError;
use lego_monitor_client::proto::manager::{
    ClusterStatus, Heartbeat, IssuedCapability, MemoryPlacement, MonitorKind, MonitorState,
    MonitorStatus, RegionPlacement, RegisterMonitor, RepairAck, RepairProgress, VnodeAddress,
    VnodeStatus, VolumePlacement,
};

/// The default rate limit of a repair's copy, in MiB/s.
pub const DEFAULT_REPAIR_RATE_MIB: u32 = 64;

/// Tunables of the manager.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Bytes per vRegion for newly placed vNodes.
    pub region_size: u64,
    /// Expected heartbeat interval of monitors.
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals a monitor may miss before it is declared dead.
    pub missed_heartbeats: u32,
    /// Default lifetime of issued capabilities.
    pub capability_ttl: Duration,
    /// Copies of each vRegion on distinct memory monitors (`None`: 2 when at least two are
    /// alive, else 1 with a warning).
    pub copies: Option<u32>,
    /// Rate limit in MiB/s of copying a vRegion to a new monitor after a monitor holding a
    /// copy died (0: unthrottled); handed to the vNode's client, which does the copy.
    pub repair_rate_mib: u32,
    /// The subnet vNodes get their network addresses from (its first host address is the
    /// gateway, never handed out).
    pub vnode_subnet: VnodeSubnet,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            region_size: 1 << 30,
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            capability_ttl: Duration::from_secs(24 * 3600),
            copies: None,
            repair_rate_mib: DEFAULT_REPAIR_RATE_MIB,
            vnode_subnet: VnodeSubnet::default(),
        }
    }
}

/// Errors from manager operations.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The monitor is not registered.
    #[error("the monitor {0} is not registered; register it first")]
    UnknownMonitor(String),
    /// A request argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The volume name is invalid.
    #[error(transparent)]
    VolumeName(#[from] VolumeError),
    /// Placement failed.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A volume's storage monitor is dead; its data lives there, so it cannot move.
    #[error(
        "vNode {vnode}'s volume '{name}' lives on the storage monitor {monitor}, which is dead; \
         its data cannot move: bring the monitor back (its data folder survives restarts)"
    )]
    VolumeOnDeadMonitor {
        /// The vNode.
        vnode: u64,
        /// The volume.
        name: String,
        /// Its monitor.
        monitor: String,
    },
    /// The vNode belongs to another compute host.
    #[error("vNode {vnode} belongs to compute host {owner}; an operator may release it (legoctl release --vnode {vnode})")]
    OwnedBy {
        /// The vNode.
        vnode: u64,
        /// The compute host owning it.
        owner: String,
    },
    /// The vNode has no placements.
    #[error("vNode {0} has no placements; place its memory first")]
    UnknownVnode(u64),
    /// A repair report does not fit the placements.
    #[error(transparent)]
    Repair(#[from] RepairError),
    /// No vNode address is free (or the subnet is unusable).
    #[error(transparent)]
    Address(#[from] AddressError),
    /// Persisting the state failed (the change was not made).
    #[error(transparent)]
    State(#[from] StateError),
}

struct Inner {
    state: ClusterState,
    last_seen: HashMap<String, Instant>,
    dead: HashSet<String>,
}

/// The global manager.
pub struct Manager {
    settings: ManagerSettings,
    /// Signs the capabilities it issues.
    key: CapabilityKey,
    store: Box<dyn StateStore>,
    inner: Mutex<Inner>,
}

impl Manager {
    /// Loads the state from `store` (empty if none) and starts with every known monitor given one
    /// full grace period to heartbeat before it is declared dead.
    pub fn new(
        settings: ManagerSettings,
        key: CapabilityKey,
        store: Box<dyn StateStore>,
    ) -> Result<Self, ManagerError> {
        if settings.region_size < 4096 || !settings.region_size.is_multiple_of(4096) {
            return Err(ManagerError::Invalid(format!(
                "the region size {} is not a positive multiple of 4096 bytes",
                settings.region_size
            )));
        }
        let state = store.load()?.unwrap_or_default();
        let now = Instant::now();
        let last_seen = state.monitors.keys().map(|a| (a.clone(), now)).collect();
        tracing::info!(
            monitors = state.monitors.len(),
            vnodes = state.vnodes.len(),
            "manager state loaded"
        );
        Ok(Self {
            settings,
            key,
            store,
            inner: Mutex::new(Inner {
                state,
                last_seen,
                dead: HashSet::new(),
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &ManagerSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves `new` and makes it current only if the save succeeded.
    fn commit(&self, inner: &mut Inner, new: ClusterState) -> Result<(), ManagerError> {
        self.store.save(&new)?;
        inner.state = new;
        Ok(())
    }

    fn mark_seen(inner: &mut Inner, addr: &str) {
        inner.last_seen.insert(addr.to_string(), Instant::now());
        if inner.dead.remove(addr) {
            tracing::warn!(monitor = addr, "monitor is alive again");
        }
    }

    /// Whether registration `r` comes from a memory monitor that restarted since `prev`, its
    /// record: a new incarnation means its pages are gone (a storage monitor's data survives
    /// its restarts).
    fn restarted_empty(prev: Option<&MonitorRecord>, r: &RegisterMonitor) -> bool {
        r.kind == MonitorKind::Memory
            && matches!((prev.and_then(|m| m.incarnation), r.incarnation),
                (Some(old), Some(new)) if old != new)
    }

    /// Registers (or re-registers) a monitor.
    pub fn register(&self, r: &RegisterMonitor) -> Result<(), ManagerError> {
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ManagerError::Invalid(format!(
                "'{}' is not an IP:port address",
                r.addr
            )));
        }
        let mut inner = self.lock();
        let prev = inner.state.monitors.get(&r.addr).cloned();
        let rec = MonitorRecord {
            kind: r.kind,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            incarnation: r.incarnation.or(prev.as_ref().and_then(|m| m.incarnation)),
        };
        let reborn = Self::restarted_empty(prev.as_ref(), r);
        let changed = prev
            .as_ref()
            .map(|m| (m.kind, m.capacity_bytes, m.incarnation))
            != Some((rec.kind, rec.capacity_bytes, rec.incarnation));
        if changed {
            let mut new = inner.state.clone();
            new.monitors.insert(r.addr.clone(), rec);
            if reborn {
                tracing::warn!(monitor = %r.addr,
                    "memory monitor restarted (new incarnation): the copies it held are lost; \
                     repairing them from the survivors");
                // Its copies are dropped as a dead holder's would be, and repaired.
                let mut gone = inner.dead.clone();
                gone.insert(r.addr.clone());
                repair::plan(&mut new, &gone, self.settings.repair_rate_mib);
            }
            self.commit(&mut inner, new)?;
        } else if let Some(m) = inner.state.monitors.get_mut(&r.addr) {
            m.used_bytes = r.used_bytes;
        }
        Self::mark_seen(&mut inner, &r.addr);
        tracing::info!(kind = %r.kind, monitor = %r.addr, capacity = r.capacity_bytes, "monitor registered");
        Ok(())
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, h: &Heartbeat) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        let Some(m) = inner.state.monitors.get(&h.addr).cloned() else {
            return Err(ManagerError::UnknownMonitor(h.addr.clone()));
        };
        if m.capacity_bytes != h.capacity_bytes {
            let mut new = inner.state.clone();
            if let Some(r) = new.monitors.get_mut(&h.addr) {
                r.capacity_bytes = h.capacity_bytes;
                r.used_bytes = h.used_bytes;
            }
            self.commit(&mut inner, new)?;
        } else if let Some(r) = inner.state.monitors.get_mut(&h.addr) {
            r.used_bytes = h.used_bytes;
        }
        Self::mark_seen(&mut inner, &h.addr);
        Ok(())
    }

    /// Declares dead every monitor silent for longer than the allowed missed heartbeats, and
    /// plans the repair of every vRegion that lost a copy (see [`repair`]); returns the
    /// monitors newly declared dead.
    pub fn check_liveness(&self) -> Vec<String> {
        let newly = self.mark_dead();
        let mut inner = self.lock();
        let mut new = inner.state.clone();
        if repair::plan(&mut new, &inner.dead, self.settings.repair_rate_mib) {
            if let Err(e) = self.commit(&mut inner, new) {
                tracing::error!(error = %lego_report::error_chain(&e),
                    "could not save the repair plan; trying again at the next check");
            }
        }
        newly
    }

    fn mark_dead(&self) -> Vec<String> {
        let limit = self.settings.heartbeat_interval * self.settings.missed_heartbeats;
        let mut inner = self.lock();
        let now = Instant::now();
        let mut newly = Vec::new();
        let addrs: Vec<String> = inner.state.monitors.keys().cloned().collect();
        for addr in addrs {
            let seen = inner.last_seen.get(&addr).copied().unwrap_or(now);
            if now.duration_since(seen) > limit && inner.dead.insert(addr.clone()) {
                tracing::warn!(
                    monitor = %addr,
                    silent_ms = now.duration_since(seen).as_millis() as u64,
                    missed = self.settings.missed_heartbeats,
                    "monitor missed its heartbeats and is now considered dead"
                );
                newly.push(addr);
            }
        }
        newly
    }

    fn candidates(inner: &Inner, kind: MonitorKind, state: &ClusterState) -> Vec<Candidate> {
        state
            .monitors
            .iter()
            .filter(|(_, m)| m.kind == kind)
            .map(|(a, m)| Candidate {
                id: a.clone(),
                capacity: m.capacity_bytes,
                reserved: state.reserved_on(a),
                alive: !inner.dead.contains(a),
            })
            .collect()
    }

    fn check_vnode(vnode: u64) -> Result<(), ManagerError> {
        if vnode == 0 {
            return Err(ManagerError::Invalid(
                "vNode 0 is reserved for cluster-level requests".into(),
            ));
        }
        Ok(())
    }

    fn memory_placement(
        vnode: u64,
        v: &VnodeRecord,
        default_region: u64,
        dead: &HashSet<String>,
    ) -> MemoryPlacement {
        MemoryPlacement {
            vnode,
            region_size: if v.region_size == 0 {
                default_region
            } else {
                v.region_size
            },
            regions: v
                .regions
                .iter()
                .enumerate()
                .map(|(i, m)| RegionPlacement {
                    index: i as u64,
                    monitor: m.clone(),
                    replicas: v.replicas.get(i).cloned().unwrap_or_default(),
                    repair: repair::repair_of(v, i).cloned(),
                    health: Some(repair::health(v, i, dead)),
                })
                .collect(),
        }
    }

    /// `vnode`'s memory placement as it stands, with its repairs; places nothing.
    pub fn memory_placement_of(&self, vnode: u64) -> Result<MemoryPlacement, ManagerError> {
        Self::check_vnode(vnode)?;
        let inner = self.lock();
        let v = inner
            .state
            .vnodes
            .get(&vnode)
            .ok_or(ManagerError::UnknownVnode(vnode))?;
        Ok(Self::memory_placement(
            vnode,
            v,
            self.settings.region_size,
            &inner.dead,
        ))
    }

    /// A client's report on the copy of a region to its repair target: progress is kept
    /// in memory (it is only for status), completion makes the target a holder and is saved.
    pub fn repair_progress(&self, p: &RepairProgress) -> Result<RepairAck, ManagerError> {
        Self::check_vnode(p.vnode)?;
        let mut inner = self.lock();
        if !p.done {
            let r = repair::report(
                &mut inner.state,
                p.vnode,
                p.region,
                &p.target,
                p.copied_pages,
                p.total_pages,
                false,
            )?;
            return Ok(match r {
                Reported::NotTarget => RepairAck::Cancelled,
                _ => RepairAck::Continue,
            });
        }
        let mut new = inner.state.clone();
        let r = repair::report(
            &mut new,
            p.vnode,
            p.region,
            &p.target,
            p.copied_pages,
            p.total_pages,
            true,
        )?;
        if r != Reported::Repaired {
            return Ok(RepairAck::Cancelled);
        }
        repair::plan(&mut new, &inner.dead, self.settings.repair_rate_mib);
        self.commit(&mut inner, new)?;
        Ok(RepairAck::Repaired)
    }

    /// Makes sure `vnode` has at least `bytes` of remote memory placed (whole vRegions), new
    /// regions with the manager's number of copies; see [`Manager::place_memory_copies`].
    pub fn place_memory(&self, vnode: u64, bytes: u64) -> Result<MemoryPlacement, ManagerError> {
        self.place_memory_copies(vnode, bytes, None)
    }

    /// How many copies new regions get: `asked`, else the setting, else 2 when two memory
    /// monitors are alive (1, with a warning, when only one is).
    fn copies(&self, asked: Option<u32>, live: usize) -> Result<usize, ManagerError> {
        match asked.or(self.settings.copies) {
            Some(0) => Err(ManagerError::Invalid(
                "a vRegion needs at least one copy".into(),
            )),
            Some(n) => Ok(n as usize),
            None if live >= 2 => Ok(2),
            None => {
                tracing::warn!(
                    live,
                    "only one memory monitor is alive: vRegions get a single copy, and the \
                     vNode loses its remote memory if that monitor fails"
                );
                Ok(1)
            }
        }
    }

    /// Makes sure `vnode` has at least `bytes` of remote memory placed (whole vRegions); extra
    /// regions get `copies` copies (`None`: see [`Manager::copies`]) on distinct live memory
    /// monitors with the most free capacity.
    ///
    /// A region whose every copy is on a dead monitor (lost: a region that keeps a live copy
    /// is repaired instead, see [`repair`]) is placed again on live ones: its pages are gone
    /// either way, and no launch is blocked by a dead monitor until an operator releases the
    /// vNode.
    pub fn place_memory_copies(
        &self,
        vnode: u64,
        bytes: u64,
        copies: Option<u32>,
    ) -> Result<MemoryPlacement, ManagerError> {
        Self::check_vnode(vnode)?;
        let mut inner = self.lock();
        let mut new = inner.state.clone();
        let rec = new.vnodes.entry(vnode).or_default();
        if rec.region_size == 0 {
            rec.region_size = self.settings.region_size;
        }
        let region = rec.region_size;
        let want = bytes.div_ceil(region);
        let have = rec.regions.len() as u64;
        let all_dead =
            |rec: &VnodeRecord, i: usize| rec.holders(i).iter().all(|m| inner.dead.contains(m));
        let orphaned: Vec<usize> = (0..rec.regions.len())
            .filter(|&i| all_dead(rec, i))
            .collect();
        if want <= have && orphaned.is_empty() {
            return Ok(Self::memory_placement(vnode, rec, region, &inner.dead));
        }
        // Copies on dead monitors are dropped first, so their reservations are not counted.
        let mut lost = Vec::new();
        for &i in &orphaned {
            let holders = rec.holders(i);
            let (dead, live): (Vec<String>, Vec<String>) =
                holders.into_iter().partition(|m| inner.dead.contains(m));
            lost.push((i, dead, live.clone(), live.len()));
            rec.set_holders(i, live);
        }
        for (i, dead, live, kept) in lost {
            let cands = Self::candidates(&inner, MonitorKind::Memory, &new);
            let placed = placement::place_copies(&cands, 1, region, dead.len(), &live)?;
            let mut holders = live;
            holders.extend(placed.into_iter().flatten());
            tracing::warn!(
                vnode,
                region = i,
                dead = %dead.join(","),
                kept,
                holders = %holders.join(","),
                "vRegion had copies on dead memory monitors (their pages died with them); \
                 placed again"
            );
            if let Some(rec) = new.vnodes.get_mut(&vnode) {
                rec.set_holders(i, holders);
            }
        }
        let extra = want.saturating_sub(have);
        if extra > 0 {
            let cands = Self::candidates(&inner, MonitorKind::Memory, &new);
            let live = cands.iter().filter(|c| c.alive).count();
            let n = self.copies(copies, live)?;
            let placed = placement::place_copies(&cands, extra, region, n, &[])?;
            let rec = new.vnodes.entry(vnode).or_default();
            for holders in placed {
                let i = rec.regions.len();
                rec.set_holders(i, holders);
            }
        }
        let rec = new.vnodes.entry(vnode).or_default();
        let p = Self::memory_placement(vnode, rec, region, &inner.dead);
        self.commit(&mut inner, new)?;
        tracing::info!(
            vnode,
            regions = p.regions.len(),
            copies = p.regions.first().map_or(0, |r| r.holders().count()),
            region_size = region,
            "memory placed"
        );
        Ok(p)
    }

    /// Places a volume of `size` bytes on the live storage monitor with the most free capacity
    /// (idempotent for the same name and size).
    pub fn place_volume(
        &self,
        vnode: u64,
        name: &str,
        size: u64,
    ) -> Result<VolumePlacement, ManagerError> {
        Self::check_vnode(vnode)?;
        crate::volume::validate_name(name)?;
        let mut inner = self.lock();
        if let Some(v) = inner
            .state
            .vnodes
            .get(&vnode)
            .and_then(|r| r.volumes.get(name))
        {
            if inner.dead.contains(&v.monitor) {
                return Err(ManagerError::VolumeOnDeadMonitor {
                    vnode,
                    name: name.into(),
                    monitor: v.monitor.clone(),
                });
            }
            if v.size == size {
                return Ok(VolumePlacement {
                    name: name.into(),
                    size,
                    monitor: v.monitor.clone(),
                    created: false,
                });
            }
            return Err(ManagerError::Invalid(format!(
                "vNode {vnode} already has a volume '{name}' of {} bytes",
                v.size
            )));
        }
        let mut new = inner.state.clone();
        let cands = Self::candidates(&inner, MonitorKind::Storage, &new);
        let placed = placement::place(&cands, 1, size.max(1))?;
        let monitor = placed.into_iter().next().unwrap_or_default();
        new.vnodes
            .entry(vnode)
            .or_insert_with(|| VnodeRecord {
                region_size: self.settings.region_size,
                ..Default::default()
            })
            .volumes
            .insert(
                name.to_string(),
                VolumeRecord {
                    size,
                    monitor: monitor.clone(),
                },
            );
        self.commit(&mut inner, new)?;
        tracing::info!(vnode, volume = name, size, monitor = %monitor, "volume placed");
        Ok(VolumePlacement {
            name: name.into(),
            size,
            monitor,
            created: true,
        })
    }

    /// Issues a capability for `vnode` with `rights` (a ttl of zero means the default).
    pub fn issue_capability(
        &self,
        vnode: u64,
        rights: u32,
        ttl: Duration,
    ) -> Result<IssuedCapability, ManagerError> {
        Self::check_vnode(vnode)?;
        let rights = Rights::from_bits(rights)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                ManagerError::Invalid(format!("{rights:#x} is not a valid set of rights"))
            })?;
        let ttl = if ttl.is_zero() {
            self.settings.capability_ttl
        } else {
            ttl
        };
        let cap = Capability::issue(&self.key, vnode, rights, ttl);
        tracing::debug!(vnode, ?rights, "capability issued");
        Ok(IssuedCapability {
            capability: cap.to_string(),
            expires_unix: cap.expires_unix,
        })
    }

    /// Makes the compute host `host` (a credential's name) the owner of `vnode` if the vNode
    /// has placements and no owner yet; refuses with [`ManagerError::OwnedBy`] if another
    /// compute host owns it. A vNode without placements gets its owner at its first
    /// placement (the caller binds again then).
    pub fn bind_owner(&self, vnode: u64, host: &str) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        match inner.state.vnodes.get(&vnode).map(|r| r.owner.as_deref()) {
            None => return Ok(()),
            Some(Some(o)) if o == host => return Ok(()),
            Some(Some(o)) => {
                return Err(ManagerError::OwnedBy {
                    vnode,
                    owner: o.into(),
                })
            }
            Some(None) => {}
        }
        let mut new = inner.state.clone();
        if let Some(r) = new.vnodes.get_mut(&vnode) {
            r.owner = Some(host.into());
        }
        self.commit(&mut inner, new)?;
        tracing::info!(vnode, owner = host, "vNode bound to its compute host");
        Ok(())
    }

    /// Forgets a vNode's placements, releasing their reservations.
    pub fn release_vnode(&self, vnode: u64) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if !inner.state.vnodes.contains_key(&vnode) {
            return Ok(());
        }
        let mut new = inner.state.clone();
        new.vnodes.remove(&vnode);
        self.commit(&mut inner, new)?;
        tracing::info!(vnode, "vNode released");
        Ok(())
    }

    /// Forgets vNode `vnode`'s volume `name` (its data must already be deleted from its
    /// storage monitor); an unknown volume is an error, so a typo is not taken for success.
    pub fn forget_volume(&self, vnode: u64, name: &str) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        let known = inner
            .state
            .vnodes
            .get(&vnode)
            .is_some_and(|r| r.volumes.contains_key(name));
        if !known {
            return Err(ManagerError::Invalid(format!(
                "vNode {vnode} has no volume '{name}'"
            )));
        }
        let mut new = inner.state.clone();
        if let Some(r) = new.vnodes.get_mut(&vnode) {
            r.volumes.remove(name);
        }
        self.commit(&mut inner, new)?;
        tracing::info!(vnode, volume = name, "volume forgotten");
        Ok(())
    }

    /// Forgets the monitor at `addr`, which must be dead and hold no placement (no vRegion
    /// copy, repair target or volume: those must be repaired, released or deleted first, or
    /// the manager would lose track of data).
    pub fn forget_monitor(&self, addr: &str) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if !inner.state.monitors.contains_key(addr) {
            return Err(ManagerError::UnknownMonitor(addr.into()));
        }
        if !inner.dead.contains(addr) {
            return Err(ManagerError::Invalid(format!(
                "the monitor {addr} is alive (it heartbeats); stop it first, and forget it once \
                 the manager counts it dead"
            )));
        }
        let reserved = inner.state.reserved_on(addr);
        if reserved > 0 {
            return Err(ManagerError::Invalid(format!(
                "the dead monitor {addr} still holds {reserved} bytes of placements (vRegion \
                 copies or volumes); wait for their repair, or release or delete them, first"
            )));
        }
        let mut new = inner.state.clone();
        new.monitors.remove(addr);
        self.commit(&mut inner, new)?;
        inner.dead.remove(addr);
        inner.last_seen.remove(addr);
        tracing::info!(monitor = addr, "monitor forgotten");
        Ok(())
    }

    /// The cluster as the manager sees it.
    pub fn status(&self) -> ClusterStatus {
        let inner = self.lock();
        let now = Instant::now();
        let monitors = inner
            .state
            .monitors
            .iter()
            .map(|(a, m)| MonitorStatus {
                kind: m.kind,
                addr: a.clone(),
                state: if inner.dead.contains(a) {
                    MonitorState::Dead
                } else {
                    MonitorState::Alive
                },
                capacity_bytes: m.capacity_bytes,
                used_bytes: m.used_bytes,
                reserved_bytes: inner.state.reserved_on(a),
                last_heartbeat_ms: inner
                    .last_seen
                    .get(a)
                    .map(|t| now.duration_since(*t).as_millis() as u64)
                    .unwrap_or(0),
            })
            .collect();
        let vnodes = inner
            .state
            .vnodes
            .iter()
            .map(|(&id, v)| VnodeStatus {
                vnode: id,
                memory: Self::memory_placement(id, v, self.settings.region_size, &inner.dead),
                volumes: v
                    .volumes
                    .iter()
                    .map(|(n, r)| VolumePlacement {
                        name: n.clone(),
                        size: r.size,
                        monitor: r.monitor.clone(),
                        created: false,
                    })
                    .collect(),
                address: self.address_of(v),
            })
            .collect();
        ClusterStatus {
            region_size: self.settings.region_size,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
            monitors,
            vnodes,
            running: Vec::new(),
        }
    }
}

/// The vNodes' network addresses (the pool is `super::addresses`), kept apart from placement.
impl Manager {
    /// `v`'s address as its vNode sees it, if it holds one in the vNode subnet (one from
    /// another subnet, before `--vnode-subnet` changed, is replaced at the next ask).
    fn address_of(&self, v: &VnodeRecord) -> Option<VnodeAddress> {
        let subnet = &self.settings.vnode_subnet;
        v.address
            .filter(|ip| subnet.holds(*ip))
            .map(|ip| subnet.describe(ip))
    }

    /// `vnode`'s network address: the one it holds, else the lowest one no vNode holds,
    /// recorded with the vNode (a vNode with no record yet gets one holding just its
    /// address). It is free again when the vNode's record goes ([`Manager::release_vnode`],
    /// or a lapsed lease's [`Manager::release_vnode_memory`]).
    pub fn vnode_address(&self, vnode: u64) -> Result<VnodeAddress, ManagerError> {
        Self::check_vnode(vnode)?;
        let mut inner = self.lock();
        let held = inner.state.vnodes.get(&vnode);
        if let Some(a) = held.and_then(|v| self.address_of(v)) {
            return Ok(a);
        }
        let subnet = self.settings.vnode_subnet;
        let ip = subnet.allocate(inner.state.addresses_held_except(vnode))?;
        let mut new = inner.state.clone();
        let rec = new.vnodes.entry(vnode).or_default();
        if let Some(old) = rec.address {
            tracing::warn!(vnode, %old, %subnet, "vNode address outside the vNode subnet: replaced");
        }
        rec.address = Some(ip);
        self.commit(&mut inner, new)?;
        let a = subnet.describe(ip);
        tracing::info!(vnode, address = %a, "vNode address allocated");
        Ok(a)
    }
}

/// Reclaiming a vNode's memory (see `super::lease`), kept apart from placement.
impl Manager {
    /// Forgets `vnode`'s memory placements (its vRegions), its owner and its address, keeping
    /// its volumes; returns how many vRegions it had. A vNode left with nothing is forgotten.
    pub fn release_vnode_memory(&self, vnode: u64) -> Result<usize, ManagerError> {
        let mut inner = self.lock();
        let Some(rec) = inner.state.vnodes.get(&vnode) else {
            return Ok(0);
        };
        let regions = rec.regions.len();
        if regions == 0 {
            return Ok(0);
        }
        let mut new = inner.state.clone();
        if let Some(rec) = new.vnodes.get_mut(&vnode) {
            if rec.volumes.is_empty() {
                new.vnodes.remove(&vnode);
            } else {
                // Everything about its memory goes; only the volumes stay.
                *rec = VnodeRecord {
                    volumes: std::mem::take(&mut rec.volumes),
                    ..VnodeRecord::default()
                };
            }
        }
        self.commit(&mut inner, new)?;
        Ok(regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::state::MemoryStateStore;
    use lego_monitor_client::proto::manager::RegionHealth;
    use std::sync::Arc;

    struct Shared(Arc<MemoryStateStore>);
    impl StateStore for Shared {
        fn load(&self) -> Result<Option<ClusterState>, StateError> {
            self.0.load()
        }
        fn save(&self, s: &ClusterState) -> Result<(), StateError> {
            self.0.save(s)
        }
    }

    fn key() -> CapabilityKey {
        CapabilityKey::derive(&lego_fabric::ClusterKey::from_bytes([7; 32]))
    }

    fn settings() -> ManagerSettings {
        ManagerSettings {
            region_size: 1 << 20,
            heartbeat_interval: Duration::from_millis(20),
            missed_heartbeats: 3,
            copies: Some(1),
            ..Default::default()
        }
    }

    fn reg(m: &Manager, kind: MonitorKind, addr: &str, cap: u64) {
        m.register(&RegisterMonitor {
            kind,
            addr: addr.into(),
            capacity_bytes: cap,
            used_bytes: 0,
            incarnation: None,
        })
        .expect("register");
    }

    #[test]
    fn a_vnodes_owner_is_bound_once_and_survives_restart() {
        let store = Arc::new(MemoryStateStore::default());
        let m = Manager::new(settings(), key(), Box::new(Shared(store.clone()))).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 4 << 20);
        m.bind_owner(5, "host-a")
            .expect("nothing placed: nothing to bind");
        m.place_memory(5, 1 << 20).expect("place");
        m.bind_owner(5, "host-a").expect("bind");
        m.bind_owner(5, "host-a").expect("the owner again");
        drop(m);
        let m = Manager::new(settings(), key(), Box::new(Shared(store))).expect("restart");
        assert!(matches!(
            m.bind_owner(5, "host-b"),
            Err(ManagerError::OwnedBy { vnode: 5, ref owner }) if owner == "host-a"
        ));
        m.release_vnode(5).expect("release");
        m.bind_owner(5, "host-b").expect("released: free");
    }

    #[test]
    fn places_memory_and_survives_restart() {
        let store = Arc::new(MemoryStateStore::default());
        let m = Manager::new(settings(), key(), Box::new(Shared(store.clone()))).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 3 << 20);
        reg(&m, MonitorKind::Memory, "10.0.0.2:1", 2 << 20);
        reg(&m, MonitorKind::Storage, "10.0.0.3:1", 1 << 30);
        let p = m.place_memory(5, 4 << 20).expect("place");
        assert_eq!(p.regions.len(), 4);
        let on_a = p
            .regions
            .iter()
            .filter(|r| r.monitor == "10.0.0.1:1")
            .count();
        assert_eq!(on_a, 3, "spread by free capacity (3M vs 2M): {p:?}");
        assert!(m.place_memory(6, 2 << 20).is_err(), "only 1 MiB left");
        assert_eq!(m.place_memory(5, 1).expect("idempotent").regions.len(), 4);
        let v = m.place_volume(5, "root", 1 << 20).expect("volume");
        assert_eq!(v.monitor, "10.0.0.3:1");
        drop(m);
        let m2 = Manager::new(settings(), key(), Box::new(Shared(store))).expect("restart");
        let st = m2.status();
        assert_eq!(st.vnodes.len(), 1);
        assert_eq!(st.vnodes[0].memory, p);
        assert_eq!(st.vnodes[0].volumes.len(), 1);
        assert_eq!(st.monitors.len(), 3);
        m2.release_vnode(5).expect("release");
        assert!(m2.place_memory(6, 5 << 20).is_ok(), "reservations released");
    }

    #[test]
    fn dead_monitors_are_detected_and_excluded() {
        let m =
            Manager::new(settings(), key(), Box::new(MemoryStateStore::default())).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 8 << 20);
        reg(&m, MonitorKind::Memory, "10.0.0.2:1", 1 << 20);
        std::thread::sleep(Duration::from_millis(100));
        m.heartbeat(&Heartbeat {
            addr: "10.0.0.2:1".into(),
            capacity_bytes: 1 << 20,
            used_bytes: 0,
        })
        .expect("hb");
        let dead = m.check_liveness();
        assert_eq!(dead, vec!["10.0.0.1:1".to_string()]);
        assert!(m.check_liveness().is_empty(), "reported once");
        let st = m.status();
        assert_eq!(st.monitors[0].state, MonitorState::Dead);
        let p = m.place_memory(1, 1 << 20).expect("place on the live one");
        assert_eq!(p.regions[0].monitor, "10.0.0.2:1");
        assert!(m
            .heartbeat(&Heartbeat {
                addr: "9.9.9.9:9".into(),
                capacity_bytes: 0,
                used_bytes: 0
            })
            .is_err());
    }

    #[test]
    fn regions_on_a_dead_monitor_are_placed_again_and_volumes_there_are_clear_errors() {
        let m =
            Manager::new(settings(), key(), Box::new(MemoryStateStore::default())).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 4 << 20);
        reg(&m, MonitorKind::Memory, "10.0.0.2:1", 4 << 20);
        reg(&m, MonitorKind::Storage, "10.0.0.3:1", 1 << 30);
        let p = m.place_memory(1, 4 << 20).expect("place");
        assert_eq!(p.regions.len(), 4);
        m.place_volume(1, "data", 1 << 20).expect("volume");
        // Monitor 1 and the storage monitor stop heartbeating.
        std::thread::sleep(Duration::from_millis(100));
        m.heartbeat(&Heartbeat {
            addr: "10.0.0.2:1".into(),
            capacity_bytes: 4 << 20,
            used_bytes: 0,
        })
        .expect("hb");
        assert_eq!(m.check_liveness().len(), 2);
        let again = m.place_memory(1, 4 << 20).expect("placed again");
        assert_eq!(again.regions.len(), 4);
        assert!(
            again.regions.iter().all(|r| r.monitor == "10.0.0.2:1"),
            "every region on the live monitor: {again:?}"
        );
        // Regions that were on the live monitor stayed where they were.
        for (a, b) in p.regions.iter().zip(&again.regions) {
            if a.monitor == "10.0.0.2:1" {
                assert_eq!(a, b);
            }
        }
        let e = m.place_volume(1, "data", 1 << 20).expect_err("dead");
        assert!(
            e.to_string().contains("10.0.0.3:1") && e.to_string().contains("dead"),
            "{e}"
        );
        // Too little room for the orphans is the usual placement error, and changes nothing.
        let m2 =
            Manager::new(settings(), key(), Box::new(MemoryStateStore::default())).expect("new");
        reg(&m2, MonitorKind::Memory, "10.0.0.1:1", 2 << 20);
        reg(&m2, MonitorKind::Memory, "10.0.0.2:1", 1 << 20);
        m2.place_memory(1, 3 << 20).expect("place");
        std::thread::sleep(Duration::from_millis(100));
        m2.heartbeat(&Heartbeat {
            addr: "10.0.0.2:1".into(),
            capacity_bytes: 1 << 20,
            used_bytes: 0,
        })
        .expect("hb");
        m2.check_liveness();
        assert!(matches!(
            m2.place_memory(1, 3 << 20),
            Err(ManagerError::Placement(_))
        ));
        assert_eq!(
            m2.status().vnodes[0].memory.regions[0].monitor,
            "10.0.0.1:1"
        );
    }

    #[test]
    fn regions_get_two_copies_by_default_and_lost_copies_are_placed_again() {
        let auto = ManagerSettings {
            copies: None,
            ..settings()
        };
        let m = Manager::new(auto, key(), Box::new(MemoryStateStore::default())).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 4 << 20);
        // One monitor: one copy (with a warning).
        let p = m.place_memory(1, 1 << 20).expect("one copy");
        assert_eq!(p.regions[0].holders().count(), 1);
        reg(&m, MonitorKind::Memory, "10.0.0.2:1", 4 << 20);
        reg(&m, MonitorKind::Memory, "10.0.0.3:1", 4 << 20);
        let p = m.place_memory(2, 3 << 20).expect("two copies");
        for r in &p.regions {
            let h: Vec<&str> = r.holders().collect();
            assert_eq!(h.len(), 2, "{p:?}");
            assert_ne!(h[0], h[1]);
        }
        // Asked for per placement: three copies; four cannot be had on three monitors.
        let p3 = m.place_memory_copies(3, 1 << 20, Some(3)).expect("three");
        assert_eq!(p3.regions[0].holders().count(), 3);
        let e = m
            .place_memory_copies(4, 1 << 20, Some(4))
            .expect_err("four");
        assert!(e.to_string().contains("distinct monitors"), "{e}");
        assert!(m.place_memory_copies(4, 1 << 20, Some(0)).is_err());
        // Reservations count every copy: 1 + 6 + 3 = 10 MiB of 12.
        let reserved: u64 = m.status().monitors.iter().map(|s| s.reserved_bytes).sum();
        assert_eq!(reserved, 10 << 20);
        // Monitor 1 dies: every region it held gets a new copy elsewhere, the survivors stay.
        std::thread::sleep(Duration::from_millis(100));
        for a in ["10.0.0.2:1", "10.0.0.3:1"] {
            m.heartbeat(&Heartbeat {
                addr: a.into(),
                capacity_bytes: 4 << 20,
                used_bytes: 0,
            })
            .expect("hb");
        }
        assert_eq!(m.check_liveness(), vec!["10.0.0.1:1".to_string()]);
        // Every region that had a copy there keeps its survivor and gets a repair target
        // distinct from it; a relaunch sees the same and places nothing new.
        let again = m.place_memory(2, 3 << 20).expect("placement");
        assert_eq!(again, m.memory_placement_of(2).expect("as it stands"));
        for (a, b) in p.regions.iter().zip(&again.regions) {
            let hb: Vec<&str> = b.holders().collect();
            assert!(!hb.contains(&"10.0.0.1:1"), "{again:?}");
            for h in a.holders().filter(|h| *h != "10.0.0.1:1") {
                assert!(hb.contains(&h), "a live copy moved: {a:?} -> {b:?}");
            }
            if a.holders().any(|h| h == "10.0.0.1:1") {
                let r = b.repair.as_ref().expect("a repair");
                let t = r.target.as_deref().expect("a target");
                assert!(!hb.contains(&t) && t != "10.0.0.1:1", "{b:?}");
                assert_eq!(b.health, Some(RegionHealth::Degraded));
                // The client copies and reports completion: two copies again.
                let ack = m
                    .repair_progress(&RepairProgress {
                        vnode: 2,
                        region: b.index,
                        target: t.into(),
                        copied_pages: 1,
                        total_pages: 1,
                        done: true,
                    })
                    .expect("report");
                assert_eq!(ack, RepairAck::Repaired);
            } else {
                assert_eq!(b.health, Some(RegionHealth::Healthy));
            }
        }
        for r in m.memory_placement_of(2).expect("repaired").regions {
            assert_eq!(r.holders().count(), 2, "{r:?}");
            assert_eq!(r.health, Some(RegionHealth::Healthy));
        }
        assert!(matches!(
            m.memory_placement_of(99),
            Err(ManagerError::UnknownVnode(99))
        ));
    }

    #[test]
    fn a_memory_monitor_that_restarts_empty_loses_its_copies_and_they_are_repaired() {
        let m =
            Manager::new(settings(), key(), Box::new(MemoryStateStore::default())).expect("new");
        let inc = |addr: &str, incarnation: u64| {
            m.register(&RegisterMonitor {
                kind: MonitorKind::Memory,
                addr: addr.into(),
                capacity_bytes: 4 << 20,
                used_bytes: 0,
                incarnation: Some(incarnation),
            })
            .expect("register")
        };
        for a in ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"] {
            inc(a, 1);
        }
        let p = m
            .place_memory_copies(1, 2 << 20, Some(2))
            .expect("two copies");
        let victim = p.regions[0].monitor.clone();
        // Registering again as the same incarnation (a reconnect) changes nothing.
        inc(&victim, 1);
        assert_eq!(m.memory_placement_of(1).expect("placement"), p);
        // A new incarnation: it never missed a heartbeat, yet every copy it held is gone.
        inc(&victim, 2);
        let after = m.memory_placement_of(1).expect("placement");
        for (a, b) in p.regions.iter().zip(&after.regions) {
            let hb: Vec<&str> = b.holders().collect();
            assert!(!hb.contains(&victim.as_str()), "{b:?}");
            if a.holders().any(|h| h == victim) {
                assert_eq!(hb.len(), 1, "{b:?}");
                let r = b.repair.as_ref().expect("a repair");
                assert!(r.lost_from.contains(&victim), "{r:?}");
                assert!(r.target.is_some(), "a repair target: {r:?}");
                assert_ne!(b.health, Some(RegionHealth::Healthy));
            } else {
                assert_eq!(a, b);
            }
        }
        // A storage monitor's data survives its restarts: a new incarnation is no loss.
        let storage = RegisterMonitor {
            kind: MonitorKind::Storage,
            addr: "10.0.0.9:1".into(),
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            incarnation: Some(1),
        };
        assert!(!Manager::restarted_empty(
            Some(&MonitorRecord {
                kind: MonitorKind::Storage,
                capacity_bytes: 1 << 30,
                used_bytes: 0,
                incarnation: Some(7),
            }),
            &storage
        ));
        // Nor is a first registration, or one from a monitor that reports none.
        let first = RegisterMonitor {
            kind: MonitorKind::Memory,
            incarnation: Some(3),
            ..storage.clone()
        };
        assert!(!Manager::restarted_empty(None, &first));
        let old = MonitorRecord {
            kind: MonitorKind::Memory,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            incarnation: Some(7),
        };
        let silent = RegisterMonitor {
            incarnation: None,
            ..first.clone()
        };
        assert!(!Manager::restarted_empty(Some(&old), &silent));
        assert!(Manager::restarted_empty(Some(&old), &first));
    }

    #[test]
    fn vnode_addresses_are_distinct_kept_and_freed_with_the_vnode() {
        let store = Arc::new(MemoryStateStore::default());
        let small = ManagerSettings {
            vnode_subnet: "10.99.7.0/29".parse().expect("subnet"),
            ..settings()
        };
        let m = Manager::new(small.clone(), key(), Box::new(Shared(store.clone()))).expect("new");
        reg(&m, MonitorKind::Memory, "10.0.0.1:1", 8 << 20);
        let ip = |a: VnodeAddress| a.ip.to_string();
        assert_eq!(ip(m.vnode_address(1).expect("1")), "10.99.7.2");
        m.place_memory(2, 1 << 20).expect("place");
        let a2 = m.vnode_address(2).expect("2");
        assert_eq!(ip(a2), "10.99.7.3");
        assert_eq!(a2.gateway.to_string(), "10.99.7.1");
        assert_eq!(m.vnode_address(2).expect("again"), a2);
        assert!(m.vnode_address(0).is_err());
        // Placing memory keeps the address, and the status shows it.
        m.place_memory(1, 1 << 20).expect("place 1");
        let st = m.status();
        let shown: Vec<_> = st.vnodes.iter().map(|v| v.address.map(ip)).collect();
        assert_eq!(shown, [Some("10.99.7.2".into()), Some("10.99.7.3".into())]);
        drop(m);
        let m = Manager::new(small.clone(), key(), Box::new(Shared(store))).expect("restart");
        assert_eq!(m.vnode_address(2).expect("after restart"), a2);
        // Released vNode 1's address is the lowest free one again.
        m.release_vnode(1).expect("release");
        assert_eq!(ip(m.vnode_address(3).expect("3")), "10.99.7.2");
        for v in 4..=6 {
            m.vnode_address(v).expect("room for five");
        }
        let e = m.vnode_address(7).expect_err("full");
        assert!(
            matches!(
                &e,
                ManagerError::Address(AddressError::Exhausted { addresses: 5, .. })
            ),
            "{e}"
        );
        // A lapsed lease frees the address with the memory.
        m.release_vnode_memory(2).expect("lease lapsed");
        assert_eq!(ip(m.vnode_address(7).expect("7")), "10.99.7.3");
        // A manager given another subnet replaces an address outside it.
        drop(m);
        let store = Arc::new(MemoryStateStore::default());
        let m = Manager::new(small, key(), Box::new(Shared(store.clone()))).expect("new");
        m.vnode_address(9).expect("9");
        drop(m);
        let m = Manager::new(settings(), key(), Box::new(Shared(store))).expect("other subnet");
        assert!(m.status().vnodes[0].address.is_none());
        assert_eq!(ip(m.vnode_address(9).expect("9 again")), "10.99.0.2");
    }

    #[test]
    fn capabilities_verify() {
        let m =
            Manager::new(settings(), key(), Box::new(MemoryStateStore::default())).expect("new");
        let c = m
            .issue_capability(3, Rights::MEMORY.bits(), Duration::ZERO)
            .expect("issue");
        let cap: Capability = c.capability.parse().expect("parse");
        cap.verify(&key().public(), lego_fabric::capability::unix_now())
            .expect("valid");
        assert_eq!(cap.vnode, 3);
        assert!(m.issue_capability(0, 1, Duration::ZERO).is_err());
        assert!(m.issue_capability(3, 0x80, Duration::ZERO).is_err());
    }
}
