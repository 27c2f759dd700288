//! Repair planning: when a memory monitor dies, every vRegion that had a copy there gets a new
//! monitor to be filled from a surviving copy (pure functions over [`ClusterState`]; the
//! manager calls them under its lock after each liveness check and on the client's reports).
//!
//! A region's dead holders leave its holder list at once (so no client, and no relaunch,
//! waits for them) and are counted as `missing` copies in its [`RegionRepair`]. The repair's
//! `target` is a live memory monitor that holds no copy of the region and has room for one
//! more (its reservation is counted from the moment it is chosen). It is not a holder until
//! the vNode's client, which does the copy, reports it complete: until then nothing reads
//! from it. A target that dies is replaced by another (the copy starts over there); a
//! region whose last holder dies is lost, and its repair is dropped, since no complete copy
//! remains to copy from.

use std::collections::HashSet;

use super::state::{ClusterState, VnodeRecord};
use crate::placement::{self, Candidate};
use lego_monitor_client::proto::manager::{MonitorKind, RegionHealth, RegionRepair};

/// Errors from a client's repair report.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The vNode has no such region.
    #[error("vNode {vnode} has no region {region}")]
    NoRegion {
        /// The vNode.
        vnode: u64,
        /// The region asked about.
        region: u64,
    },
    /// The counts do not make sense.
    #[error("a repair cannot have copied {copied} of {total} pages")]
    BadCounts {
        /// Pages copied.
        copied: u64,
        /// Pages to copy.
        total: u64,
    },
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Progress noted.
    Progress,
    /// The target became a holder.
    Repaired,
    /// The target is not (or no longer) this region's repair target.
    NotTarget,
}

/// The live memory monitors as placement candidates.
fn candidates(state: &ClusterState, dead: &HashSet<String>) -> Vec<Candidate> {
    state
        .monitors
        .iter()
        .filter(|(_, m)| m.kind == MonitorKind::Memory)
        .map(|(a, m)| Candidate {
            id: a.clone(),
            capacity: m.capacity_bytes,
            reserved: state.reserved_on(a),
            alive: !dead.contains(a),
        })
        .collect()
}

/// The repair record of region `i`, if any.
pub fn repair_of(rec: &VnodeRecord, i: usize) -> Option<&RegionRepair> {
    rec.repairs.get(i).and_then(Option::as_ref)
}

fn set_repair(rec: &mut VnodeRecord, i: usize, r: Option<RegionRepair>) {
    if r.is_some() && rec.repairs.len() <= i {
        rec.repairs.resize(i + 1, None);
    }
    if let Some(slot) = rec.repairs.get_mut(i) {
        *slot = r;
    }
    while rec.repairs.last().is_some_and(Option::is_none) {
        rec.repairs.pop();
    }
}

/// How region `i` of `rec` stands with `dead` monitors.
pub fn health(rec: &VnodeRecord, i: usize, dead: &HashSet<String>) -> RegionHealth {
    let holders = rec.holders(i);
    if holders.iter().all(|h| dead.contains(h)) {
        return RegionHealth::Lost;
    }
    match repair_of(rec, i) {
        Some(r) if r.started && r.target.is_some() => RegionHealth::Repairing,
        Some(r) if r.missing > 0 => RegionHealth::Degraded,
        _ if holders.iter().any(|h| dead.contains(h)) => RegionHealth::Degraded,
        _ => RegionHealth::Healthy,
    }
}

/// Brings every region's repair up to date with `dead`; returns true if `state` changed
/// (and must be saved). `rate_mib_s` is the copy's rate limit handed to clients.
pub fn plan(state: &mut ClusterState, dead: &HashSet<String>, rate_mib_s: u32) -> bool {
    let mut changed = false;
    let vnodes: Vec<u64> = state.vnodes.keys().copied().collect();
    for vnode in vnodes {
        let n = state.vnodes.get(&vnode).map_or(0, |r| r.regions.len());
        for i in 0..n {
            changed |= plan_region(state, dead, rate_mib_s, vnode, i);
        }
    }
    changed
}

fn plan_region(
    state: &mut ClusterState,
    dead: &HashSet<String>,
    rate_mib_s: u32,
    vnode: u64,
    i: usize,
) -> bool {
    let Some(rec) = state.vnodes.get_mut(&vnode) else {
        return false;
    };
    let region_size = rec.region_size;
    let holders = rec.holders(i);
    let (gone, live): (Vec<String>, Vec<String>) =
        holders.into_iter().partition(|h| dead.contains(h));
    let mut rep = repair_of(rec, i).cloned();
    let before = rep.clone();
    if live.is_empty() {
        // Lost: the dead holders stay listed (status says so, a relaunch places it afresh),
        // and a copy half-filled from a holder now gone can never be completed.
        if let Some(r) = &rep {
            tracing::error!(
                vnode,
                region = i,
                target = r.target.as_deref().unwrap_or("-"),
                "the last copy of a vRegion died during its repair: its pages are lost"
            );
        }
        set_repair(rec, i, None);
        return before.is_some();
    }
    if !gone.is_empty() {
        tracing::warn!(vnode, region = i, dead = %gone.join(","), kept = live.len(),
            "vRegion lost copies with their monitors; repairing it from the survivors");
        rec.set_holders(i, live.clone());
        let r = rep.get_or_insert_with(RegionRepair::default);
        r.missing += gone.len() as u32;
        r.lost_from.extend(gone);
    }
    let Some(mut r) = rep else {
        return false;
    };
    if let Some(t) = r.target.clone().filter(|t| dead.contains(t)) {
        tracing::warn!(vnode, region = i, target = %t,
            "the monitor a vRegion was being repaired onto died; the repair starts over");
        r.target = None;
    }
    if r.missing == 0 {
        set_repair(rec, i, None);
        return true;
    }
    if r.target.is_none() {
        r.started = false;
        r.copied_pages = 0;
        r.total_pages = 0;
        // Candidates must not count this region's old target: take it out of the state first.
        set_repair(rec, i, Some(r.clone()));
        let cands = candidates(state, dead);
        match placement::place_copies(&cands, 1, region_size, 1, &live) {
            Ok(placed) => {
                if let Some(t) = placed.into_iter().flatten().next() {
                    r.attempt += 1;
                    r.rate_mib_s = rate_mib_s;
                    tracing::info!(vnode, region = i, target = %t, attempt = r.attempt,
                        "vRegion repair planned: a new copy is to be filled from a survivor");
                    r.target = Some(t);
                }
            }
            Err(e) => {
                tracing::debug!(vnode, region = i, error = %e,
                    "no live memory monitor has room for a new copy of a degraded vRegion yet");
            }
        }
    }
    let after = Some(r);
    let changed = after != before;
    if let Some(rec) = state.vnodes.get_mut(&vnode) {
        set_repair(rec, i, after);
    }
    changed
}

/// A client's report on the copy of `vnode`'s region `region` to `target`. On `done`, the
/// target becomes a holder and the region's next missing copy (if any) is planned by the
/// next [`plan`].
#[allow(clippy::too_many_arguments)]
pub fn report(
    state: &mut ClusterState,
    vnode: u64,
    region: u64,
    target: &str,
    copied: u64,
    total: u64,
    done: bool,
) -> Result<Reported, RepairError> {
    let no_region = RepairError::NoRegion { vnode, region };
    let rec = state.vnodes.get_mut(&vnode).ok_or(no_region)?;
    let i = usize::try_from(region)
        .ok()
        .filter(|&i| i < rec.regions.len())
        .ok_or(RepairError::NoRegion { vnode, region })?;
    if copied > total {
        return Err(RepairError::BadCounts { copied, total });
    }
    let Some(mut r) = repair_of(rec, i).cloned() else {
        return Ok(Reported::NotTarget);
    };
    if r.target.as_deref() != Some(target) {
        return Ok(Reported::NotTarget);
    }
    if !done {
        r.started = true;
        r.copied_pages = copied;
        r.total_pages = total;
        set_repair(rec, i, Some(r));
        return Ok(Reported::Progress);
    }
    let mut holders = rec.holders(i);
    holders.push(target.to_string());
    rec.set_holders(i, holders);
    r.missing = r.missing.saturating_sub(1);
    tracing::info!(
        vnode,
        region = i,
        target,
        pages = copied,
        "vRegion repaired: the new copy is complete"
    );
    if r.missing == 0 {
        set_repair(rec, i, None);
    } else {
        r.target = None;
        r.started = false;
        set_repair(rec, i, Some(r));
    }
    Ok(Reported::Repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::state::MonitorRecord;

    fn state(monitors: &[(&str, u64)], holders: &[&[&str]]) -> ClusterState {
        let mut s = ClusterState::default();
        for (a, cap) in monitors {
            s.monitors.insert(
                a.to_string(),
                MonitorRecord {
                    kind: MonitorKind::Memory,
                    capacity_bytes: *cap,
                    used_bytes: 0,
                    incarnation: None,
                },
            );
        }
        let mut v = VnodeRecord {
            region_size: 1 << 20,
            ..Default::default()
        };
        for (i, h) in holders.iter().enumerate() {
            v.set_holders(i, h.iter().map(|s| s.to_string()).collect());
        }
        s.vnodes.insert(1, v);
        s
    }

    fn dead(a: &[&str]) -> HashSet<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_dead_holder_is_replaced_by_a_distinct_monitor_with_room() {
        // d has no room; c is the only choice outside the survivor b.
        let mut s = state(
            &[("a", 4 << 20), ("b", 4 << 20), ("c", 4 << 20), ("d", 0)],
            &[&["a", "b"], &["b", "c"]],
        );
        let d = dead(&["a"]);
        assert!(plan(&mut s, &d, 64));
        let v = &s.vnodes[&1];
        assert_eq!(v.holders(0), ["b"]);
        let r = repair_of(v, 0).expect("repair");
        assert_eq!(
            (r.missing, r.target.as_deref(), r.attempt),
            (1, Some("c"), 1)
        );
        assert_eq!(r.rate_mib_s, 64);
        assert_eq!(r.lost_from, ["a"]);
        assert!(repair_of(v, 1).is_none(), "region 1 lost nothing");
        assert_eq!(health(v, 0, &d), RegionHealth::Degraded, "not started yet");
        assert_eq!(s.reserved_on("c"), 2 << 20, "the target's room is reserved");
        assert!(!plan(&mut s, &d, 64), "nothing more to do");
        // The client copies, reports progress, then completion.
        assert_eq!(
            report(&mut s, 1, 0, "c", 5, 10, false).expect("progress"),
            Reported::Progress
        );
        assert_eq!(health(&s.vnodes[&1], 0, &d), RegionHealth::Repairing);
        assert_eq!(
            report(&mut s, 1, 0, "d", 5, 10, false).expect("other"),
            Reported::NotTarget
        );
        assert!(report(&mut s, 1, 7, "c", 0, 0, false).is_err());
        assert!(report(&mut s, 1, 0, "c", 11, 10, false).is_err());
        assert!(report(&mut s, 9, 0, "c", 0, 0, false).is_err());
        assert_eq!(
            report(&mut s, 1, 0, "c", 10, 10, true).expect("done"),
            Reported::Repaired
        );
        let v = &s.vnodes[&1];
        assert_eq!(v.holders(0), ["b", "c"]);
        assert!(v.repairs.is_empty());
        assert_eq!(health(v, 0, &d), RegionHealth::Healthy);
    }

    #[test]
    fn a_dead_target_starts_the_repair_over_and_a_dead_survivor_loses_the_region() {
        let mut s = state(
            &[
                ("a", 4 << 20),
                ("b", 4 << 20),
                ("c", 4 << 20),
                ("e", 4 << 20),
            ],
            &[&["a", "b"]],
        );
        plan(&mut s, &dead(&["a"]), 0);
        let t1 = repair_of(&s.vnodes[&1], 0)
            .and_then(|r| r.target.clone())
            .expect("target");
        report(&mut s, 1, 0, &t1, 3, 10, false).expect("progress");
        let d = dead(&["a", &t1]);
        assert!(plan(&mut s, &d, 0));
        let r = repair_of(&s.vnodes[&1], 0).expect("repair");
        let t2 = r.target.clone().expect("a new target");
        assert!(t2 != t1 && t2 != "b" && t2 != "a");
        assert_eq!((r.attempt, r.started, r.copied_pages), (2, false, 0));
        assert_eq!(s.reserved_on(&t1), 0, "the dead target's room is released");
        assert_eq!(
            report(&mut s, 1, 0, &t1, 10, 10, true).expect("late"),
            Reported::NotTarget
        );
        // The survivor dies before the copy completes: lost, and the target is released.
        let d = dead(&["a", &t1, "b"]);
        assert!(plan(&mut s, &d, 0));
        let v = &s.vnodes[&1];
        assert!(v.repairs.is_empty());
        assert_eq!(health(v, 0, &d), RegionHealth::Lost);
        assert_eq!(s.reserved_on(&t2), 0);
    }

    #[test]
    fn with_no_room_the_region_stays_degraded_until_room_appears() {
        let mut s = state(&[("a", 4 << 20), ("b", 4 << 20)], &[&["a", "b"]]);
        let d = dead(&["a"]);
        assert!(plan(&mut s, &d, 0));
        let r = repair_of(&s.vnodes[&1], 0).expect("repair");
        assert_eq!((r.missing, r.target.as_deref()), (1, None));
        assert_eq!(health(&s.vnodes[&1], 0, &d), RegionHealth::Degraded);
        assert!(!plan(&mut s, &d, 0), "nothing changes without room");
        s.monitors.insert(
            "c".into(),
            MonitorRecord {
                kind: MonitorKind::Memory,
                capacity_bytes: 1 << 20,
                used_bytes: 0,
                incarnation: None,
            },
        );
        assert!(plan(&mut s, &d, 0));
        assert_eq!(
            repair_of(&s.vnodes[&1], 0).and_then(|r| r.target.as_deref()),
            Some("c")
        );
    }
}
