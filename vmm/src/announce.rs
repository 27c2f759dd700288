//! Announcing the running vNode to the manager (`VNODE_UP`, again every interval the manager
//! asks for; `VNODE_DOWN` at exit), so that the cluster knows what runs where: `legoctl
//! vnode list`. A vNode whose legovmm stops announcing it (killed, or its host died) is
//! forgotten by the manager after a few intervals. An unreachable manager is logged and
//! retried; it never stops the vNode.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lego_fabric::{ClientConfig, Identity};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{VnodeDown, VnodeUp};

use crate::api::control::LiveDevice;
use crate::background::{Background, StopFlag};
use crate::config::{RemoteConfig, VmConfig};
use crate::hotplug::DeviceList;

/// How long to wait before trying an unreachable manager again.
const RETRY: Duration = Duration::from_secs(1);

/// The announcing thread; dropping it says the vNode stopped.
pub struct Announcer {
    _thread: Background,
}

/// This host's name (`/proc/sys/kernel/hostname`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What the manager is told about the vNode of `config` with `devices`.
pub fn describe(config: &VmConfig, vnode: u64, devices: &[LiveDevice]) -> VnodeUp {
    VnodeUp {
        vnode,
        host: host_name(),
        pid: std::process::id(),
        api_socket: config.api_socket.as_ref().map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string()
        }),
        vcpus: u32::from(config.vcpus),
        memory_bytes: config.memory,
        devices: device_lines(devices),
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

/// How the manager lists each device: `id: kind backing`.
fn device_lines(devices: &[LiveDevice]) -> Vec<String> {
    devices
        .iter()
        .map(|d| format!("{}: {} {}", d.info.id, d.info.kind, d.info.backing))
        .collect()
}

impl Announcer {
    /// Starts announcing `up` to the manager of `remote`, its devices as `devices` lists them
    /// at each announcement (hot-added ones too); `None` (logged) when the cluster key cannot
    /// be loaded.
    pub fn start(remote: &RemoteConfig, up: VnodeUp, devices: DeviceList) -> Option<Self> {
        let key = match Identity::load(remote.key_file.as_deref()) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(
                    "vNode {} is not announced to the manager: {}",
                    up.vnode,
                    lego_report::error_chain(&e)
                );
                return None;
            }
        };
        let manager = remote.manager.clone();
        let thread = Background::spawn("announce", move |stop| {
            run(&manager, key, up, &devices, stop)
        })
        .map_err(|e| tracing::warn!("cannot start the thread announcing the vNode: {e}"))
        .ok()?;
        Some(Self { _thread: thread })
    }
}

fn run(manager: &str, key: Identity, mut up: VnodeUp, devices: &DeviceList, stop: &StopFlag) {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let mut client: Option<ManagerClient> = None;
    let mut reachable = true;
    loop {
        if client.is_none() {
            client = ManagerClient::connect(manager, key.clone(), config.clone()).ok();
        }
        up.devices = device_lines(&devices.lock().unwrap_or_else(|e| e.into_inner()));
        let next = match client.as_ref().map(|c| c.vnode_up(&up)) {
            Some(Ok(interval)) => {
                if !reachable {
                    tracing::info!(
                        vnode = up.vnode,
                        "the manager at {manager} hears from this vNode again"
                    );
                }
                reachable = true;
                interval.clamp(Duration::from_millis(50), Duration::from_secs(60))
            }
            failed => {
                if reachable {
                    let why = match failed {
                        Some(Err(e)) => lego_report::error_chain(&e),
                        _ => "cannot connect".into(),
                    };
                    tracing::warn!(
                        vnode = up.vnode,
                        "cannot announce the vNode to the manager at {manager} ({why}); retrying"
                    );
                }
                reachable = false;
                client = None;
                RETRY
            }
        };
        if stop.wait(next) {
            break;
        }
    }
    if let Some(c) = client {
        let down = VnodeDown {
            vnode: up.vnode,
            pid: up.pid,
            host: up.host.clone(),
        };
        if let Err(e) = c.vnode_down(&down) {
            tracing::debug!(
                "cannot tell the manager the vNode stopped: {}",
                lego_report::error_chain(&e)
            );
        }
    }
}
