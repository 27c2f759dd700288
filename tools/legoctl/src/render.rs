//! Human-readable rendering of the manager's [`ClusterStatus`].

use lego_monitor_client::proto::manager::{
    ClusterStatus, MemoryPlacement, MonitorState, RegionHealth, RegionPlacement, RunningVnode,
    VnodeAddress,
};
use lego_monitor_client::size::human;

use crate::table::Table;

/// How one region stands: as the manager says, or (an older manager) from `dead` monitors.
fn region_health(r: &RegionPlacement, dead: &[&str]) -> RegionHealth {
    if let Some(h) = r.health {
        return h;
    }
    let gone = r.holders().filter(|h| dead.contains(h)).count();
    if gone == r.holders().count() {
        RegionHealth::Lost
    } else if gone > 0 {
        RegionHealth::Degraded
    } else {
        RegionHealth::Healthy
    }
}

/// How a vNode's regions stand: "healthy" when every region is, else how many regions are
/// lost, repairing or degraded.
fn health(p: &MemoryPlacement, dead: &[&str]) -> String {
    let mut counts = [0usize; 4];
    for r in &p.regions {
        counts[region_health(r, dead) as usize] += 1;
    }
    let parts: Vec<String> = [
        (RegionHealth::Lost, "lost"),
        (RegionHealth::Repairing, "repairing"),
        (RegionHealth::Degraded, "degraded"),
    ]
    .iter()
    .filter(|(h, _)| counts[*h as usize] > 0)
    .map(|(h, name)| format!("{name}: {}", counts[*h as usize]))
    .collect();
    if parts.is_empty() {
        "healthy".into()
    } else {
        format!("{} region(s)", parts.join(", "))
    }
}

/// The progress of a region's repair, e.g. "42% (1.0 GiB of the 2.4 GiB it stores) at
/// most 64 MiB/s".
fn progress(r: &RegionPlacement) -> String {
    let Some(rep) = &r.repair else {
        return String::new();
    };
    let page = 4096u64;
    match (&rep.target, rep.started) {
        (None, _) => "waiting for a monitor with room".into(),
        (Some(_), false) => "waiting for the vNode's backend to start the copy".into(),
        (Some(_), true) => {
            let pct = (rep.copied_pages * 100)
                .checked_div(rep.total_pages)
                .unwrap_or(100);
            let limit = if rep.rate_mib_s == 0 {
                "unthrottled".to_string()
            } else {
                format!("at most {} MiB/s", rep.rate_mib_s)
            };
            format!(
                "{pct}% ({} of the {} it stores) {limit}",
                human(rep.copied_pages * page),
                human(rep.total_pages * page),
            )
        }
    }
}

/// Renders the status as tables: monitors, vNode memory placements, volumes.
pub fn status(st: &ClusterStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "region size {}   heartbeat {} ms   {} monitor(s), {} vNode(s)\n\nMONITORS\n",
        human(st.region_size),
        st.heartbeat_interval_ms,
        st.monitors.len(),
        st.vnodes.len()
    ));
    let mut m = Table::new(&[
        "KIND",
        "ADDRESS",
        "STATE",
        "CAPACITY",
        "USED",
        "RESERVED",
        "LAST HEARTBEAT",
    ]);
    for mon in &st.monitors {
        m.row(vec![
            mon.kind.to_string(),
            mon.addr.clone(),
            mon.state.to_string(),
            human(mon.capacity_bytes),
            human(mon.used_bytes),
            human(mon.reserved_bytes),
            format!("{:.1} s ago", mon.last_heartbeat_ms as f64 / 1000.0),
        ]);
    }
    out.push_str(if m.is_empty() {
        "(none registered)\n"
    } else {
        ""
    });
    if !m.is_empty() {
        out.push_str(&m.render());
    }

    out.push_str("\nVNODE MEMORY (vRegions)\n");
    let mut v = Table::new(&[
        "VNODE",
        "REGIONS",
        "SIZE",
        "COPIES",
        "HEALTH",
        "MONITOR",
        "REGION INDEXES",
    ]);
    let dead: Vec<&str> = st
        .monitors
        .iter()
        .filter(|m| m.state == MonitorState::Dead)
        .map(|m| m.addr.as_str())
        .collect();
    for vn in &st.vnodes {
        // Group the regions' copies by monitor for a compact view.
        let mut by_mon: Vec<(String, Vec<u64>)> = Vec::new();
        for r in &vn.memory.regions {
            for holder in r.holders() {
                match by_mon.iter_mut().find(|(m, _)| *m == holder) {
                    Some((_, idx)) => idx.push(r.index),
                    None => by_mon.push((holder.to_string(), vec![r.index])),
                }
            }
        }
        let copies = {
            let counts: Vec<usize> = vn
                .memory
                .regions
                .iter()
                .map(|r| r.holders().count())
                .collect();
            match (counts.iter().min(), counts.iter().max()) {
                (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
                (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
                _ => String::new(),
            }
        };
        if by_mon.is_empty() {
            continue;
        }
        for (i, (mon, idx)) in by_mon.iter().enumerate() {
            let (id, count, size, copies, health) = if i == 0 {
                (
                    vn.vnode.to_string(),
                    vn.memory.regions.len().to_string(),
                    human(vn.memory.regions.len() as u64 * vn.memory.region_size),
                    copies.clone(),
                    health(&vn.memory, &dead),
                )
            } else {
                Default::default()
            };
            let mon = if dead.contains(&mon.as_str()) {
                format!("{mon} (dead)")
            } else {
                mon.clone()
            };
            v.row(vec![id, count, size, copies, health, mon, ranges(idx)]);
        }
    }
    out.push_str(&if v.is_empty() {
        "(none placed)\n".to_string()
    } else {
        v.render()
    });

    out.push_str("\nVREGIONS NOT HEALTHY\n");
    let mut h = Table::new(&[
        "VNODE",
        "REGION",
        "HEALTH",
        "HOLDERS",
        "NEW COPY ON",
        "PROGRESS",
    ]);
    for vn in &st.vnodes {
        for r in &vn.memory.regions {
            let state = region_health(r, &dead);
            if state == RegionHealth::Healthy {
                continue;
            }
            let target = r.repair.as_ref().and_then(|x| x.target.clone());
            h.row(vec![
                vn.vnode.to_string(),
                r.index.to_string(),
                state.to_string(),
                r.holders().collect::<Vec<_>>().join(","),
                target.unwrap_or_else(|| "-".into()),
                progress(r),
            ]);
        }
    }
    out.push_str(&if h.is_empty() {
        "(none)\n".to_string()
    } else {
        h.render()
    });

    out.push_str("\nRUNNING VNODES\n");
    out.push_str(&running(st));

    out.push_str("\nVNODE ADDRESSES\n");
    out.push_str(&addresses(st));

    out.push_str("\nVOLUMES\n");
    out.push_str(&volumes(st));
    out
}

/// The placed volumes as a table (`legoctl volume list`, and a section of `legoctl status`).
pub fn volumes(st: &ClusterStatus) -> String {
    let mut t = Table::new(&["VNODE", "NAME", "SIZE", "MONITOR"]);
    for vn in &st.vnodes {
        for vol in &vn.volumes {
            let dead = st
                .monitors
                .iter()
                .any(|m| m.addr == vol.monitor && m.state == MonitorState::Dead);
            t.row(vec![
                vn.vnode.to_string(),
                vol.name.clone(),
                human(vol.size),
                if dead {
                    format!("{} (dead)", vol.monitor)
                } else {
                    vol.monitor.clone()
                },
            ]);
        }
    }
    if t.is_empty() {
        "(none placed)\n".to_string()
    } else {
        t.render()
    }
}

/// A vNode's address as one line: `address 10.99.0.2/24 mac 02:4c:47:63:00:02 gateway
/// 10.99.0.1`.
pub fn address(a: &VnodeAddress) -> String {
    format!("address {a}")
}

/// The address of `vnode` in `st`, if it has one.
fn address_of(st: &ClusterStatus, vnode: u64) -> Option<&VnodeAddress> {
    st.vnodes
        .iter()
        .find(|v| v.vnode == vnode)
        .and_then(|v| v.address.as_ref())
}

/// Every vNode holding an address, as a table (a section of `legoctl status`).
pub fn addresses(st: &ClusterStatus) -> String {
    let mut t = Table::new(&["VNODE", "ADDRESS", "MAC", "GATEWAY"]);
    for vn in &st.vnodes {
        if let Some(a) = &vn.address {
            t.row(vec![
                vn.vnode.to_string(),
                a.cidr(),
                a.mac_text(),
                a.gateway.to_string(),
            ]);
        }
    }
    if t.is_empty() {
        "(none allocated)\n".to_string()
    } else {
        t.render()
    }
}

/// One running vNode as `legoctl vnode info` prints it: what it announced, and its
/// `address`, `mac` and `gateway` as text if it has an address.
pub fn running_info(r: &RunningVnode, st: &ClusterStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let (Some(obj), Some(a)) = (v.as_object_mut(), address_of(st, r.up.vnode)) {
        obj.insert("address".into(), a.cidr().into());
        obj.insert("mac".into(), a.mac_text().into());
        obj.insert("gateway".into(), a.gateway.to_string().into());
    }
    v
}

/// The running vNodes of `st` as a table, with their addresses (`legoctl vnode list`, and a
/// section of `legoctl status`).
pub fn running(st: &ClusterStatus) -> String {
    let mut t = Table::new(&[
        "VNODE",
        "HOST",
        "PID",
        "ADDRESS",
        "MAC",
        "VCPUS",
        "MEMORY",
        "UP",
        "API SOCKET",
        "DEVICES",
    ]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for r in &st.running {
        let up = &r.up;
        let a = address_of(st, up.vnode);
        t.row(vec![
            up.vnode.to_string(),
            up.host.clone(),
            up.pid.to_string(),
            a.map_or_else(|| "-".into(), VnodeAddress::cidr),
            a.map_or_else(|| "-".into(), VnodeAddress::mac_text),
            up.vcpus.to_string(),
            human(up.memory_bytes),
            format!(
                "{:.0} s",
                now_ms.saturating_sub(up.started_unix_ms) as f64 / 1000.0
            ),
            up.api_socket.clone().unwrap_or_else(|| "-".into()),
            if up.devices.is_empty() {
                "-".into()
            } else {
                up.devices.join("; ")
            },
        ]);
    }
    if t.is_empty() {
        "(none running)\n".to_string()
    } else {
        t.render()
    }
}

/// Compacts sorted indexes into ranges: `[0, 1, 2, 5]` becomes `"0-2,5"`.
pub fn ranges(idx: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let start = idx[i];
        let mut end = start;
        while i + 1 < idx.len() && idx[i + 1] == end + 1 {
            i += 1;
            end = idx[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_monitor_client::proto::manager::*;

    #[test]
    fn renders_status() {
        let st = ClusterStatus {
            region_size: 1 << 30,
            heartbeat_interval_ms: 1000,
            monitors: vec![
                MonitorStatus {
                    kind: MonitorKind::Memory,
                    addr: "10.0.0.1:7100".into(),
                    state: MonitorState::Dead,
                    capacity_bytes: 4 << 30,
                    used_bytes: 1 << 20,
                    reserved_bytes: 2 << 30,
                    last_heartbeat_ms: 5000,
                },
                MonitorStatus {
                    kind: MonitorKind::Memory,
                    addr: "b".into(),
                    state: MonitorState::Dead,
                    capacity_bytes: 4 << 30,
                    used_bytes: 0,
                    reserved_bytes: 2 << 30,
                    last_heartbeat_ms: 5000,
                },
            ],
            vnodes: vec![VnodeStatus {
                vnode: 7,
                memory: MemoryPlacement {
                    vnode: 7,
                    region_size: 1 << 30,
                    regions: vec![
                        RegionPlacement {
                            index: 0,
                            monitor: "a".into(),
                            replicas: vec!["b".into()],
                            ..Default::default()
                        },
                        RegionPlacement {
                            index: 1,
                            monitor: "a".into(),
                            replicas: Vec::new(),
                            ..Default::default()
                        },
                        RegionPlacement {
                            index: 2,
                            monitor: "b".into(),
                            replicas: Vec::new(),
                            ..Default::default()
                        },
                    ],
                },
                volumes: vec![VolumePlacement {
                    name: "root".into(),
                    size: 1 << 30,
                    monitor: "s".into(),
                    created: false,
                }],
                address: Some(VnodeAddress::new(
                    "10.99.0.2".parse().expect("ip"),
                    24,
                    "10.99.0.1".parse().expect("ip"),
                )),
            }],
            running: vec![RunningVnode {
                up: VnodeUp {
                    vnode: 7,
                    host: "compute1".into(),
                    pid: 4242,
                    api_socket: Some("/run/v7.sock".into()),
                    vcpus: 2,
                    memory_bytes: 1 << 30,
                    devices: vec!["disk0: virtio-blk d.img".into()],
                    started_unix_ms: 0,
                },
                last_seen_ms: 10,
            }],
        };
        let s = status(&st);
        assert!(s.contains("dead"), "{s}");
        assert!(s.contains("0-1"), "{s}");
        assert!(s.contains("1-2"), "copies per region: {s}");
        assert!(s.contains("b (dead)"), "{s}");
        assert!(
            s.contains("lost: 1, degraded: 1 region(s)"),
            "region 2 only on dead b, region 0 still on a: {s}"
        );
        assert!(
            s.contains("0,2"),
            "b holds a copy of region 0 and region 2: {s}"
        );
        assert!(s.contains("root"), "{s}");
        assert!(s.contains("compute1"), "{s}");
        assert!(s.contains("/run/v7.sock"), "{s}");
        assert!(s.contains("3.0 GiB"), "{s}");
        assert!(
            s.contains("10.99.0.2/24  02:4c:47:63:00:02  10.99.0.1"),
            "the addresses section: {s}"
        );
        let list = running(&st);
        assert!(
            list.contains("10.99.0.2/24  02:4c:47:63:00:02"),
            "vnode list: {list}"
        );
        let info = running_info(&st.running[0], &st);
        assert_eq!(info["address"], "10.99.0.2/24");
        assert_eq!(info["mac"], "02:4c:47:63:00:02");
        assert_eq!(info["host"], "compute1");
        assert_eq!(
            address(st.vnodes[0].address.as_ref().expect("address")),
            "address 10.99.0.2/24 mac 02:4c:47:63:00:02 gateway 10.99.0.1"
        );
        // As a newer manager reports it: region 1 repairing with progress.
        let mut st = st;
        st.vnodes[0].memory.regions[1].health = Some(RegionHealth::Repairing);
        st.vnodes[0].memory.regions[1].repair = Some(RegionRepair {
            missing: 1,
            target: Some("c".into()),
            started: true,
            copied_pages: 1 << 17,
            total_pages: 1 << 18,
            rate_mib_s: 64,
            ..Default::default()
        });
        let s = status(&st);
        assert!(
            s.contains("lost: 1, repairing: 1, degraded: 1 region(s)"),
            "{s}"
        );
        assert!(
            s.contains("50% (512.0 MiB of the 1.0 GiB it stores)"),
            "{s}"
        );
        assert!(s.contains("at most 64 MiB/s"), "{s}");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
