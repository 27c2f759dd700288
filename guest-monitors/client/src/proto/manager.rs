//! Manager operations (opcodes 0x03xx); every body is JSON and every request is cluster-level
//! (vNode 0 on the wire; the vNode concerned travels in the body).
//!
//! | opcode | request | response |
//! |---|---|---|
//! | `REGISTER` 0x0301 | [`RegisterMonitor`] | [`Registered`] |
//! | `HEARTBEAT` 0x0302 | [`Heartbeat`] | empty (`NotFound`: register again) |
//! | `STATUS` 0x0303 | empty | [`ClusterStatus`] |
//! | `PLACE_MEMORY` 0x0304 | [`PlaceMemory`] | [`MemoryPlacement`] |
//! | `PLACE_VOLUME` 0x0305 | [`PlaceVolume`] | [`VolumePlacement`] |
//! | `ISSUE_CAPABILITY` 0x0306 | [`IssueCapability`] | [`IssuedCapability`] |
//! | `RELEASE_VNODE` 0x0307 | [`ReleaseVnode`] | empty |
//! | `MEMORY_PLACEMENT` 0x0308 | [`GetMemoryPlacement`] | [`MemoryPlacement`] (changes nothing) |
//! | `REPAIR_PROGRESS` 0x0309 | [`RepairProgress`] | [`RepairAck`] |
//! | `RENEW_LEASE` 0x030A | [`RenewLease`] | [`LeaseGranted`] |
//! | `VNODE_UP` 0x030B | [`VnodeUp`] | [`VnodeUpAck`] (a running vNode, every interval) |
//! | `VNODE_DOWN` 0x030C | [`VnodeDown`] | empty (the vNode stopped) |
//! | `FORGET_VOLUME` 0x030D | [`ForgetVolume`] | empty (after its data was deleted) |
//! | `FORGET_MONITOR` 0x030E | [`ForgetMonitor`] | empty (a dead monitor holding nothing) |
//! | `VNODE_ADDRESS` 0x030F | [`GetVnodeAddress`] | [`VnodeAddress`] (allocated on first ask; `NoSpace`: [`pool_exhausted`]) |

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Register a monitor.
pub const REGISTER: u16 = 0x0301;
/// Heartbeat of a monitor.
pub const HEARTBEAT: u16 = 0x0302;
/// Cluster status.
pub const STATUS: u16 = 0x0303;
/// Place a vNode's remote memory.
pub const PLACE_MEMORY: u16 = 0x0304;
/// Place a vNode's volume.
pub const PLACE_VOLUME: u16 = 0x0305;
/// Issue a capability for a vNode.
pub const ISSUE_CAPABILITY: u16 = 0x0306;
/// Forget a vNode's placements and release their reservations.
pub const RELEASE_VNODE: u16 = 0x0307;
/// A vNode's memory placement as it stands, without placing anything.
pub const MEMORY_PLACEMENT: u16 = 0x0308;
/// A client's report on the repair of a vRegion it is copying.
pub const REPAIR_PROGRESS: u16 = 0x0309;
/// Renew a vNode's lease: its compute host is alive (a manager that sees no renewal for
/// longer than the lease reclaims the vNode's remote memory).
pub const RENEW_LEASE: u16 = 0x030A;

/// A running vNode announces itself (again every interval: the manager forgets one it has
/// not heard from for a few intervals).
pub const VNODE_UP: u16 = 0x030B;
/// A vNode stopped.
pub const VNODE_DOWN: u16 = 0x030C;

/// Forget a volume's placement (its data was deleted from its storage monitor).
pub const FORGET_VOLUME: u16 = 0x030D;

/// Forget a dead monitor that holds no placement.
pub const FORGET_MONITOR: u16 = 0x030E;

/// The network address of a vNode: allocated from the manager's vNode subnet on the first
/// ask, the same on every later ask until the vNode is released.
pub const VNODE_ADDRESS: u16 = 0x030F;

/// Body of `VNODE_ADDRESS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GetVnodeAddress {
    /// The vNode (not 0).
    pub vnode: u64,
}

/// A vNode's network address: answer to `VNODE_ADDRESS`, and in [`VnodeStatus`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct VnodeAddress {
    /// The vNode's IPv4 address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length (24 for a /24).
    pub prefix_len: u8,
    /// The gateway: the subnet's first host address, the compute host's bridge.
    pub gateway: Ipv4Addr,
    /// The vNode's MAC address ([`VnodeAddress::mac_for`] its IP).
    pub mac: [u8; 6],
}

impl VnodeAddress {
    /// The first three bytes of every vNode MAC: locally administered, unicast (`02`), then
    /// `4c:47` ("LG").
    pub const MAC_PREFIX: [u8; 3] = [0x02, 0x4c, 0x47];

    /// The address `ip` in a subnet of `prefix_len` bits behind `gateway`, with its MAC.
    pub fn new(ip: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> Self {
        Self {
            ip,
            prefix_len,
            gateway,
            mac: Self::mac_for(ip),
        }
    }

    /// The MAC of the vNode at `ip`: [`VnodeAddress::MAC_PREFIX`] then the low 24 bits of
    /// the IP, so two vNodes of one subnet (of at most 2^24 addresses) never share one.
    pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
        let [_, a, b, c] = ip.octets();
        let [p0, p1, p2] = Self::MAC_PREFIX;
        [p0, p1, p2, a, b, c]
    }

    /// The MAC as text: `02:4c:47:63:00:02`.
    pub fn mac_text(&self) -> String {
        let parts: Vec<String> = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        parts.join(":")
    }

    /// The address with its prefix length: `10.99.0.2/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix_len)
    }
}

impl fmt::Display for VnodeAddress {
    /// `10.99.0.2/24 mac 02:4c:47:63:00:02 gateway 10.99.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mac {} gateway {}",
            self.cidr(),
            self.mac_text(),
            self.gateway
        )
    }
}

/// How the manager's refusal of `VNODE_ADDRESS` for want of a free address begins.
const POOL_EXHAUSTED: &str = "the vNode address pool ";

/// The message of the manager's `NoSpace` answer to `VNODE_ADDRESS` when every one of the
/// `addresses` vNode addresses of `subnet` is held; [`parse_pool_exhausted`] reads it back.
pub fn pool_exhausted(subnet: &str, addresses: u64) -> String {
    let noun = if addresses == 1 {
        "address"
    } else {
        "addresses"
    };
    format!(
        "{POOL_EXHAUSTED}{subnet} is exhausted ({addresses} {noun}, all held); release a vNode \
         or give the manager a larger --vnode-subnet"
    )
}

/// Reads a [`pool_exhausted`] message: the subnet and its number of vNode addresses, or
/// `None` if `message` is not one.
pub fn parse_pool_exhausted(message: &str) -> Option<(String, u64)> {
    let rest = message.strip_prefix(POOL_EXHAUSTED)?;
    let (subnet, rest) = rest.split_once(" is exhausted (")?;
    let (count, _) = rest.split_once(' ')?;
    Some((subnet.to_string(), count.parse().ok()?))
}

/// Body of `FORGET_MONITOR`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForgetMonitor {
    /// The monitor's registered address.
    pub addr: String,
}

/// Body of `FORGET_VOLUME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForgetVolume {
    /// The vNode.
    pub vnode: u64,
    /// The volume.
    pub name: String,
}

/// Body of `VNODE_UP`: what runs where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VnodeUp {
    /// The vNode (not 0).
    pub vnode: u64,
    /// The compute host's name.
    pub host: String,
    /// legovmm's process id there.
    pub pid: u32,
    /// legovmm's API socket there, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Its devices (`disk0: virtio-blk data.img`, ...).
    #[serde(default)]
    pub devices: Vec<String>,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

/// Answer to `VNODE_UP`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VnodeUpAck {
    /// How often to announce the vNode again, in milliseconds.
    pub interval_ms: u64,
}

/// Body of `VNODE_DOWN`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VnodeDown {
    /// The vNode.
    pub vnode: u64,
    /// The pid that announced it (a newer instance of the vNode is not forgotten).
    pub pid: u32,
    /// Its host.
    pub host: String,
}

/// A running vNode in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunningVnode {
    /// What it announced.
    #[serde(flatten)]
    pub up: VnodeUp,
    /// Milliseconds since it last announced itself.
    pub last_seen_ms: u64,
}

/// Kind of monitor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MonitorKind {
    /// Holds pages (mComponent).
    Memory,
    /// Holds volumes (sComponent).
    Storage,
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MonitorKind::Memory => "memory",
            MonitorKind::Storage => "storage",
        })
    }
}

impl FromStr for MonitorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(MonitorKind::Memory),
            "storage" => Ok(MonitorKind::Storage),
            _ => Err(format!(
                "'{s}' is not a monitor kind; use memory or storage"
            )),
        }
    }
}

/// Liveness of a monitor as seen by the manager.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MonitorState {
    /// Heartbeats arrive.
    Alive,
    /// It missed the allowed number of heartbeats.
    Dead,
}

impl fmt::Display for MonitorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MonitorState::Alive => "alive",
            MonitorState::Dead => "dead",
        })
    }
}

/// Body of `REGISTER`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterMonitor {
    /// Kind of monitor.
    pub kind: MonitorKind,
    /// Fabric address clients should use (its identity in the cluster).
    pub addr: String,
    /// Capacity offered.
    pub capacity_bytes: u64,
    /// Bytes in use now.
    pub used_bytes: u64,
    /// The monitor's fabric incarnation, new at each start (see `lego_fabric`). A memory
    /// monitor that registers with a new one restarted empty: the manager treats the copies
    /// it held as lost and repairs them, even if it never missed a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

/// Answer to `REGISTER`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registered {
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// Body of `HEARTBEAT`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The monitor's registered address.
    pub addr: String,
    /// Capacity offered (may change).
    pub capacity_bytes: u64,
    /// Bytes in use now.
    pub used_bytes: u64,
}

/// One monitor in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitorStatus {
    /// Kind.
    pub kind: MonitorKind,
    /// Fabric address.
    pub addr: String,
    /// Alive or dead.
    pub state: MonitorState,
    /// Capacity offered.
    pub capacity_bytes: u64,
    /// Bytes in use as last reported.
    pub used_bytes: u64,
    /// Bytes reserved by placements.
    pub reserved_bytes: u64,
    /// Milliseconds since the last heartbeat (since the manager started, if none yet).
    pub last_heartbeat_ms: u64,
}

/// How a vRegion stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegionHealth {
    /// Every copy it was placed with is on a live monitor.
    #[default]
    Healthy,
    /// A copy was lost and nothing is copying it yet (no monitor with room, or the vNode's
    /// backend has not started the copy); the remaining copies serve it.
    Degraded,
    /// A copy was lost and a new one is being filled from a surviving copy.
    Repairing,
    /// No live monitor holds a complete copy: its pages are gone.
    Lost,
}

impl fmt::Display for RegionHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionHealth::Healthy => "healthy",
            RegionHealth::Degraded => "degraded",
            RegionHealth::Repairing => "repairing",
            RegionHealth::Lost => "lost",
        })
    }
}

/// A repair of a vRegion: a copy was lost with its monitor, and `target` is being filled from
/// the region's holders (which it is not yet one of: nothing reads from it until the
/// repair is done).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RegionRepair {
    /// Copies short of what the region was placed with.
    pub missing: u32,
    /// The monitor being filled (`None`: no live monitor outside the holders has room yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the vNode's client has started copying to `target`.
    #[serde(default)]
    pub started: bool,
    /// Pages copied so far, as last reported.
    #[serde(default)]
    pub copied_pages: u64,
    /// Pages to copy (those the survivor stored when the copy began).
    #[serde(default)]
    pub total_pages: u64,
    /// The copy's rate limit in MiB/s (0: unthrottled), the manager's setting.
    #[serde(default)]
    pub rate_mib_s: u32,
    /// How many targets this repair has had (a target that died starts it over elsewhere).
    #[serde(default)]
    pub attempt: u32,
    /// The dead monitors whose copies are being replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_from: Vec<String>,
}

/// One vRegion of a vNode's remote memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RegionPlacement {
    /// Region index: it covers pages `index * region_pages .. (index + 1) * region_pages`.
    pub index: u64,
    /// Memory monitor holding it (its primary copy).
    pub monitor: String,
    /// Further memory monitors holding a copy of it (empty: no copy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The repair under way, if a copy was lost (absent from older managers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RegionRepair>,
    /// How the region stands, as the manager sees it (absent from older managers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RegionHealth>,
}

impl RegionPlacement {
    /// Every monitor holding the region: its primary, then its copies.
    pub fn holders(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.monitor.as_str()).chain(self.replicas.iter().map(String::as_str))
    }
}

/// A vNode's remote memory layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryPlacement {
    /// The vNode.
    pub vnode: u64,
    /// Bytes per region.
    pub region_size: u64,
    /// Regions in index order.
    pub regions: Vec<RegionPlacement>,
}

impl MemoryPlacement {
    /// Pages per region.
    pub fn region_pages(&self) -> u64 {
        (self.region_size / super::memory::PAGE_SIZE as u64).max(1)
    }

    /// The monitor holding `page`, if the page lies inside the placed memory.
    pub fn monitor_of_page(&self, page: u64) -> Option<&str> {
        let idx = page / self.region_pages();
        self.regions
            .get(idx as usize)
            .filter(|r| r.index == idx)
            .map(|r| r.monitor.as_str())
    }
}

/// A volume's location.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumePlacement {
    /// Volume name.
    pub name: String,
    /// Size reserved.
    pub size: u64,
    /// Storage monitor holding it.
    pub monitor: String,
    /// Whether the call that answered placed it just now (false: it was placed before), so
    /// a caller whose next step fails knows whether the placement is its own to roll back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

/// One vNode in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VnodeStatus {
    /// The vNode.
    pub vnode: u64,
    /// Its remote memory.
    pub memory: MemoryPlacement,
    /// Its volumes.
    pub volumes: Vec<VolumePlacement>,
    /// Its network address, once one was asked for (`VNODE_ADDRESS`; absent from older
    /// managers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<VnodeAddress>,
}

/// Answer to `STATUS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Region size in bytes.
    pub region_size: u64,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Monitors, by kind then address.
    pub monitors: Vec<MonitorStatus>,
    /// vNodes, by id.
    pub vnodes: Vec<VnodeStatus>,
    /// vNodes running now (announced by their legovmm), by id.
    #[serde(default)]
    pub running: Vec<RunningVnode>,
}

/// Body of `PLACE_MEMORY`: make sure the vNode has at least `bytes` of remote memory placed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlaceMemory {
    /// The vNode (not 0).
    pub vnode: u64,
    /// Bytes wanted in total (rounded up to whole regions).
    pub bytes: u64,
    /// Copies of each new region on distinct monitors (absent: the manager's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<u32>,
}

/// Body of `PLACE_VOLUME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlaceVolume {
    /// The vNode (not 0).
    pub vnode: u64,
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Body of `ISSUE_CAPABILITY`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssueCapability {
    /// The vNode (not 0).
    pub vnode: u64,
    /// Rights bits (`Rights::MEMORY` 1, `Rights::STORAGE` 2).
    pub rights: u32,
    /// Lifetime in seconds (0: the manager's default).
    pub ttl_secs: u64,
}

/// Answer to `ISSUE_CAPABILITY`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCapability {
    /// The capability in hex (`Capability`'s `Display`).
    pub capability: String,
    /// Expiry (Unix seconds).
    pub expires_unix: u64,
}

/// Body of `MEMORY_PLACEMENT`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GetMemoryPlacement {
    /// The vNode.
    pub vnode: u64,
}

/// Body of `REPAIR_PROGRESS`: how far the copy of a region to `target` has come.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepairProgress {
    /// The vNode.
    pub vnode: u64,
    /// The region.
    pub region: u64,
    /// The monitor being filled.
    pub target: String,
    /// Pages copied so far.
    pub copied_pages: u64,
    /// Pages to copy.
    pub total_pages: u64,
    /// The copy is complete: every page the survivor held is on `target`, and every write
    /// since the copy began went to it too.
    pub done: bool,
}

/// Answer to `REPAIR_PROGRESS`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RepairAck {
    /// Go on copying.
    Continue,
    /// The repair is done: `target` is a holder of the region now, and may be read.
    Repaired,
    /// `target` is no longer the repair's target (it died, the region was lost or
    /// released): stop copying to it.
    Cancelled,
}

/// Body of `RELEASE_VNODE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseVnode {
    /// The vNode.
    pub vnode: u64,
}

/// Body of `RENEW_LEASE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RenewLease {
    /// The vNode.
    pub vnode: u64,
}

/// Answer to `RENEW_LEASE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseGranted {
    /// How long the lease lasts from now, in milliseconds: renew well before.
    pub lease_ms: u64,
}

/// How a standby manager's refusals (`ErrorCode::Unavailable`) begin; see [`standby_refusal`].
pub const STANDBY: &str = "this manager is standing by";

/// The message a standby manager refuses every request with, naming the leader if it knows it.
pub fn standby_refusal(leader: Option<&str>) -> String {
    match leader {
        Some(addr) => format!("{STANDBY}; the leader is at {addr}"),
        None => format!("{STANDBY}; no leader is elected yet"),
    }
}

/// Reads a standby's refusal: `None` if `message` is not one, `Some(None)` if it names no
/// leader, `Some(Some(addr))` if it names the leader at `addr`.
pub fn parse_standby_refusal(message: &str) -> Option<Option<&str>> {
    let rest = message.strip_prefix(STANDBY)?;
    Some(rest.strip_prefix("; the leader is at ").map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_to_monitor() {
        let p = MemoryPlacement {
            vnode: 1,
            region_size: 8192,
            regions: vec![
                RegionPlacement {
                    index: 0,
                    monitor: "a".into(),
                    replicas: vec!["c".into()],
                    ..Default::default()
                },
                RegionPlacement {
                    index: 1,
                    monitor: "b".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(p.monitor_of_page(1), Some("a"));
        assert_eq!(p.monitor_of_page(2), Some("b"));
        assert_eq!(p.monitor_of_page(4), None);
        assert_eq!(p.regions[0].holders().collect::<Vec<_>>(), ["a", "c"]);
        // A placement from before copies existed still reads.
        let old: RegionPlacement =
            serde_json::from_str(r#"{"index":3,"monitor":"m"}"#).expect("old placement");
        assert!(old.replicas.is_empty() && old.repair.is_none() && old.health.is_none());
        assert!("memory".parse::<MonitorKind>().is_ok());
        assert!("disk".parse::<MonitorKind>().is_err());
    }

    #[test]
    fn vnode_addresses_and_the_exhausted_pool() {
        let a = VnodeAddress::new(Ipv4Addr::new(10, 99, 1, 2), 23, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(a.mac, [0x02, 0x4c, 0x47, 0x63, 0x01, 0x02]);
        assert_eq!(a.mac_text(), "02:4c:47:63:01:02");
        assert_eq!(a.cidr(), "10.99.1.2/23");
        assert_eq!(
            a.to_string(),
            "10.99.1.2/23 mac 02:4c:47:63:01:02 gateway 10.99.0.1"
        );
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(
            serde_json::from_str::<VnodeAddress>(&json).expect("back"),
            a
        );
        // A status from before addresses still reads.
        let old: VnodeStatus = serde_json::from_str(
            r#"{"vnode":1,"memory":{"vnode":1,"region_size":4096,"regions":[]},"volumes":[]}"#,
        )
        .expect("old status");
        assert!(old.address.is_none());
        let m = pool_exhausted("10.99.0.0/30", 1);
        assert_eq!(
            m,
            "the vNode address pool 10.99.0.0/30 is exhausted (1 address, all held); release a \
             vNode or give the manager a larger --vnode-subnet"
        );
        assert_eq!(parse_pool_exhausted(&m), Some(("10.99.0.0/30".into(), 1)));
        assert!(pool_exhausted("10.0.0.0/29", 5).contains("(5 addresses, all held)"));
        assert_eq!(parse_pool_exhausted("no space on any monitor"), None);
    }
}
