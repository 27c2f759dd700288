//! Claiming the vNode id at start: a vNode runs once. Before legovmm places or touches any of
//! the vNode's remote memory and volumes, it announces the vNode to the manager; while another
//! legovmm runs that vNode (another pid, or another host, still announcing it), the manager
//! refuses and legovmm stops with the running one's pid and host. A claim held by a legovmm
//! on this host whose process is gone (killed: no `VNODE_DOWN` was sent) is waited out until
//! the manager forgets it. An unreachable manager is logged and not waited for: the vNode's
//! backends report it if they need the manager.

use std::time::{Duration, Instant};

use lego_fabric::{ClientConfig, Identity};
use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{RunningVnode, VnodeDown, VnodeUp};

use crate::background::Background;
use crate::config::RemoteConfig;

/// How long a claim held by a dead process on this host is waited out.
const DEAD_HOLDER_PATIENCE: Duration = Duration::from_secs(15);
/// How often the claim is tried again meanwhile.
const RETRY: Duration = Duration::from_millis(250);

/// Errors claiming the vNode.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another legovmm runs the vNode.
    #[error("vNode {vnode} already runs: pid {pid} on {host} announced it {age_ms} ms ago{api}; a vNode runs once (stop it first: legoctl vnode stop --vnode {vnode})")]
    Held {
        /// The vNode.
        vnode: u64,
        /// The running legovmm's pid.
        pid: u32,
        /// Its host.
        host: String,
        /// How long ago it announced the vNode.
        age_ms: u64,
        /// ", API socket PATH" when it has one.
        api: String,
    },
    /// The manager refused the vNode to this compute host (another one owns it).
    #[error("the manager refused vNode {vnode} to this compute host: {refusal}")]
    Refused {
        /// The vNode.
        vnode: u64,
        /// The manager's refusal.
        refusal: String,
    },
    /// Another compute host runs the vNode (a compute credential sees no other host's
    /// vNodes, so the manager's refusal is all there is to tell).
    #[error("vNode {vnode} already runs on another compute host: {refusal}; a vNode runs once")]
    HeldElsewhere {
        /// The vNode.
        vnode: u64,
        /// The manager's refusal.
        refusal: String,
    },
}

/// The vNode claimed for this legovmm; dropping it tells the manager the vNode stopped.
/// Until [`Claim::announced`], it announces the vNode again every interval the manager asks
/// for, so that the claim outlives a slow start (a compute credential may place and reach
/// only a vNode announced under its name).
pub struct Claim {
    client: Option<ManagerClient>,
    down: VnodeDown,
    keepalive: Option<KeepAlive>,
}

/// The thread re-announcing the claim; dropping it stops it.
struct KeepAlive {
    _thread: Background,
}

impl KeepAlive {
    fn start(client: ManagerClient, up: VnodeUp, interval: Duration) -> Option<KeepAlive> {
        let thread = Background::spawn("claim", move |stop| {
            let mut interval = interval.max(Duration::from_millis(100));
            while !stop.wait(interval) {
                if let Ok(next) = client.vnode_up(&up) {
                    interval = next.max(Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| tracing::warn!("cannot start the thread keeping the vNode's claim: {e}"))
        .ok()?;
        Some(KeepAlive { _thread: thread })
    }
}

impl Claim {
    /// The connection to the manager the claim was made on; `None` when the manager could not
    /// be reached (legovmm went on unclaimed).
    pub fn manager(&self) -> Option<&ManagerClient> {
        self.client.as_ref()
    }

    /// The announcer took over (it announces the vNode with its devices): stop re-announcing
    /// the claim.
    pub fn announced(&mut self) {
        self.keepalive = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.keepalive = None;
        if let Some(c) = &self.client {
            let _ = c.vnode_down(&self.down);
        }
    }
}

/// Claims `up.vnode` at the manager of `remote` for this legovmm (see the module doc).
pub fn claim(remote: &RemoteConfig, up: &VnodeUp) -> Result<Claim, ClaimError> {
    let down = VnodeDown {
        vnode: up.vnode,
        pid: up.pid,
        host: up.host.clone(),
    };
    let unclaimed = |why: String| {
        tracing::warn!(
            vnode = up.vnode,
            "cannot claim vNode {} at the manager at {} ({why}); going on without it",
            up.vnode,
            remote.manager
        );
        Claim {
            client: None,
            down: down.clone(),
            keepalive: None,
        }
    };
    let key = match Identity::load(remote.key_file.as_deref()) {
        Ok(k) => k,
        Err(e) => return Ok(unclaimed(lego_report::error_chain(&e))),
    };
    // The manager records a compute credential's vNodes under the credential's name.
    let compute = match &key {
        Identity::Credential(c) if c.role() == lego_fabric::Role::Compute => {
            Some(c.name().to_string())
        }
        _ => None,
    };
    let my_host = compute.clone().unwrap_or_else(|| up.host.clone());
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let client = match ManagerClient::connect(&remote.manager, key, config) {
        Ok(c) => c,
        Err(e) => return Ok(unclaimed(lego_report::error_chain(&e))),
    };
    let deadline = Instant::now() + DEAD_HOLDER_PATIENCE;
    let mut refusal = String::new();
    loop {
        match client.vnode_up(up) {
            Ok(interval) => {
                return Ok(Claim {
                    keepalive: KeepAlive::start(client.clone(), up.clone(), interval),
                    client: Some(client),
                    down,
                })
            }
            Err(e) if e.remote_code() == Some(lego_fabric::ErrorCode::Conflict) => {
                if compute.is_some() {
                    refusal = lego_report::error_chain(&e);
                }
            }
            Err(e) if e.remote_code() == Some(lego_fabric::ErrorCode::Forbidden) => {
                return Err(ClaimError::Refused {
                    vnode: up.vnode,
                    refusal: lego_report::error_chain(&e),
                })
            }
            Err(e) => return Ok(unclaimed(lego_report::error_chain(&e))),
        }
        let holder = client
            .status()
            .ok()
            .and_then(|s| s.running.into_iter().find(|r| r.up.vnode == up.vnode));
        let Some(holder) = holder else {
            if compute.is_some() {
                // Another compute host's vNodes are not listed to this one.
                return Err(ClaimError::HeldElsewhere {
                    vnode: up.vnode,
                    refusal,
                });
            }
            // It stopped meanwhile: claim again (unless this keeps happening).
            if Instant::now() >= deadline {
                return Ok(unclaimed(
                    "the manager refuses it but lists no holder".into(),
                ));
            }
            std::thread::sleep(RETRY);
            continue;
        };
        let dead_here = holder.up.host == my_host && !process_alive(holder.up.pid);
        if !dead_here || Instant::now() >= deadline {
            return Err(held(holder));
        }
        tracing::info!(
            vnode = up.vnode,
            "vNode {} is still listed for pid {}, which is gone; waiting for the manager to forget it",
            up.vnode,
            holder.up.pid
        );
        std::thread::sleep(RETRY);
    }
}

fn held(r: RunningVnode) -> ClaimError {
    ClaimError::Held {
        vnode: r.up.vnode,
        pid: r.up.pid,
        host: r.up.host,
        age_ms: r.last_seen_ms,
        api: r
            .up
            .api_socket
            .map(|s| format!(", API socket {s}"))
            .unwrap_or_default(),
    }
}

/// Whether process `pid` exists on this host.
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
