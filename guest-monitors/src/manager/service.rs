//! The manager's fabric [`Handler`]: decodes JSON requests, checks the peer's role and calls
//! [`Manager`].
//!
//! What each role may ask ([`ManagerService::authorize`]):
//! * the cluster key (managers, monitors, the single-machine demo) and operators: anything,
//!   except that only monitors and the cluster key register and heartbeat (`REGISTER`,
//!   `HEARTBEAT`);
//! * a monitor credential: `REGISTER`, `HEARTBEAT`, `STATUS`, `MEMORY_PLACEMENT`;
//! * a compute credential: `VNODE_UP` and `VNODE_DOWN`, recorded under the credential's
//!   name whatever host name the request says, and for a vNode its compute host announced
//!   (runs now on the host of that name) `PLACE_MEMORY`, `PLACE_VOLUME`, `ISSUE_CAPABILITY`,
//!   `MEMORY_PLACEMENT`, `REPAIR_PROGRESS`, `RENEW_LEASE`, `FORGET_VOLUME`,
//!   `RELEASE_VNODE` and `VNODE_ADDRESS`; its `STATUS` lists the monitors and its own vNodes
//!   only. Anything else is `Forbidden`. The first compute host to announce, place or get
//!   the address of a vNode owns it (kept in the manager's state): another compute host
//!   cannot claim it, even while it is stopped, until an operator releases it.

use std::sync::Arc;
use std::time::Duration;

use lego_fabric::{Dispatch, ErrorCode, Handler, RemoteError, Request, RequestContext, Role};

use super::addresses::AddressError;
use super::core::{Manager, ManagerError};
use super::lease::VnodeLeases;
use super::running::RunningVnodes;
use crate::placement::PlacementError;
use lego_monitor_client::proto::manager::{self as m, Registered};
use lego_monitor_client::proto::{from_json, to_json, ProtoError};

impl From<ManagerError> for RemoteError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::UnknownMonitor(_) | ManagerError::UnknownVnode(_) => ErrorCode::NotFound,
            ManagerError::Invalid(_)
            | ManagerError::Repair(_)
            | ManagerError::VolumeName(_)
            | ManagerError::Placement(PlacementError::ZeroUnit | PlacementError::TooMany(_)) => {
                ErrorCode::InvalidArgument
            }
            ManagerError::Placement(
                PlacementError::NoSpace { .. } | PlacementError::TooFewMonitors { .. },
            ) => ErrorCode::NoSpace,
            ManagerError::Address(AddressError::Exhausted { .. }) => ErrorCode::NoSpace,
            ManagerError::Address(_) => ErrorCode::InvalidArgument,
            ManagerError::State(_) => ErrorCode::Io,
            ManagerError::VolumeOnDeadMonitor { .. } => ErrorCode::Unavailable,
            ManagerError::OwnedBy { .. } => ErrorCode::Forbidden,
        };
        RemoteError::new(code, lego_report::error_chain(&e))
    }
}

/// The vNode a request is about (every vNode-level request body has it).
#[derive(serde::Deserialize)]
struct VnodeOf {
    vnode: u64,
}

/// The peer of `ctx` in a sentence's subject: "compute host h", "operator o", ...
fn describe(ctx: &RequestContext) -> String {
    match ctx.role {
        Role::Cluster => "a holder of the cluster key".into(),
        Role::Compute => format!("compute host {}", ctx.name),
        role => format!("{role} {}", ctx.name),
    }
}

/// Serves manager requests over the fabric.
pub struct ManagerService {
    manager: Arc<Manager>,
    leases: Arc<VnodeLeases>,
    running: Arc<RunningVnodes>,
}

impl ManagerService {
    /// A handler around `manager`, with leases of the default length.
    pub fn new(manager: Arc<Manager>) -> Self {
        let settings = manager.settings();
        let running = Arc::new(RunningVnodes::new(
            settings.heartbeat_interval,
            settings.missed_heartbeats,
        ));
        Self {
            manager,
            leases: Arc::default(),
            running,
        }
    }

    /// The running vNodes this handler records (for the manager's metrics).
    pub fn running(&self) -> Arc<RunningVnodes> {
        self.running.clone()
    }

    /// The same handler renewing the vNode leases in `leases` (which the caller reclaims).
    pub fn with_leases(mut self, leases: Arc<VnodeLeases>) -> Self {
        self.leases = leases;
        self
    }

    /// Whether the peer of `ctx` may send `req` (see the module doc); `Forbidden` with a
    /// sentence if not.
    pub fn authorize(&self, ctx: &RequestContext, req: &Request) -> Result<(), RemoteError> {
        let forbidden = |what: &str| {
            RemoteError::new(
                ErrorCode::Forbidden,
                format!("{} may not {what}", describe(ctx)),
            )
        };
        let op = req.opcode;
        match (ctx.role, op) {
            (Role::Cluster, _) => Ok(()),
            (Role::Monitor, m::REGISTER | m::HEARTBEAT | m::STATUS | m::MEMORY_PLACEMENT) => Ok(()),
            (_, m::REGISTER | m::HEARTBEAT) => Err(forbidden("register or heartbeat as a monitor")),
            (Role::Operator, _) => Ok(()),
            (Role::Compute, m::STATUS | m::VNODE_UP | m::VNODE_DOWN) => Ok(()),
            (
                Role::Compute,
                m::PLACE_MEMORY
                | m::PLACE_VOLUME
                | m::ISSUE_CAPABILITY
                | m::MEMORY_PLACEMENT
                | m::REPAIR_PROGRESS
                | m::RENEW_LEASE
                | m::FORGET_VOLUME
                | m::RELEASE_VNODE
                | m::VNODE_ADDRESS,
            ) => {
                let vnode = from_json::<VnodeOf>(&req.payload)?.vnode;
                match self.running.host_of(vnode) {
                    Some(h) if *h == *ctx.name => Ok(()),
                    Some(h) => Err(forbidden(&format!(
                        "act on vNode {vnode}: it runs on compute host {h}"
                    ))),
                    None => Err(forbidden(&format!(
                        "act on vNode {vnode}: no compute host announces it (a compute host announces its vNode before it places or reaches its memory and volumes)"
                    ))),
                }
            }
            _ => Err(forbidden(&format!(
                "send manager request {op:#06x} (it needs the operator role)"
            ))),
        }
    }

    /// After a compute host placed `vnode` or got its address, makes it the vNode's owner
    /// (see [`Manager::bind_owner`]).
    fn bind_compute_owner(&self, ctx: &RequestContext, vnode: u64) -> Result<(), RemoteError> {
        if ctx.role == Role::Compute {
            self.manager.bind_owner(vnode, &ctx.name)?;
        }
        Ok(())
    }

    fn serve(&self, ctx: &RequestContext, req: &Request) -> Result<Vec<u8>, RemoteError> {
        let mg = &self.manager;
        let body = &req.payload;
        Ok(match req.opcode {
            m::REGISTER => {
                mg.register(&from_json::<m::RegisterMonitor>(body)?)?;
                to_json(&Registered {
                    heartbeat_interval_ms: mg.settings().heartbeat_interval.as_millis() as u64,
                })
            }
            m::HEARTBEAT => {
                mg.heartbeat(&from_json::<m::Heartbeat>(body)?)?;
                Vec::new()
            }
            m::STATUS => {
                let mut status = mg.status();
                status.running = self.running.list();
                if ctx.role == Role::Compute {
                    // Other vNodes' statistics are for operators.
                    status.running.retain(|r| *r.up.host == *ctx.name);
                    let own: Vec<u64> = status.running.iter().map(|r| r.up.vnode).collect();
                    status.vnodes.retain(|v| own.contains(&v.vnode));
                }
                to_json(&status)
            }
            m::VNODE_UP => {
                let mut up: m::VnodeUp = from_json(body)?;
                if ctx.role == Role::Compute {
                    up.host = ctx.name.to_string();
                    // A vNode placed by one compute host is not another's to claim.
                    if up.vnode != 0 {
                        mg.bind_owner(up.vnode, &ctx.name)?;
                    }
                }
                if up.vnode == 0 {
                    return Err(RemoteError::new(
                        ErrorCode::InvalidArgument,
                        "vNode 0 is the cluster, not a vNode",
                    ));
                }
                let vnode = up.vnode;
                let interval = self.running.up(up).map_err(|held| {
                    RemoteError::new(
                        ErrorCode::Conflict,
                        format!(
                            "vNode {vnode} already runs: pid {} on {} announced it {} ms ago",
                            held.up.pid, held.up.host, held.last_seen_ms
                        ),
                    )
                })?;
                to_json(&m::VnodeUpAck {
                    interval_ms: interval.as_millis() as u64,
                })
            }
            m::FORGET_MONITOR => {
                let f: m::ForgetMonitor = from_json(body)?;
                mg.forget_monitor(&f.addr)?;
                Vec::new()
            }
            m::FORGET_VOLUME => {
                let f: m::ForgetVolume = from_json(body)?;
                mg.forget_volume(f.vnode, &f.name)?;
                Vec::new()
            }
            m::VNODE_DOWN => {
                let mut down: m::VnodeDown = from_json(body)?;
                if ctx.role == Role::Compute {
                    down.host = ctx.name.to_string();
                }
                self.running.down(&down);
                Vec::new()
            }
            m::PLACE_MEMORY => {
                let p: m::PlaceMemory = from_json(body)?;
                let placed = mg.place_memory_copies(p.vnode, p.bytes, p.copies)?;
                self.bind_compute_owner(ctx, p.vnode)?;
                to_json(&placed)
            }
            m::PLACE_VOLUME => {
                let p: m::PlaceVolume = from_json(body)?;
                let placed = mg.place_volume(p.vnode, &p.name, p.size)?;
                self.bind_compute_owner(ctx, p.vnode)?;
                to_json(&placed)
            }
            m::ISSUE_CAPABILITY => {
                let p: m::IssueCapability = from_json(body)?;
                to_json(&mg.issue_capability(p.vnode, p.rights, Duration::from_secs(p.ttl_secs))?)
            }
            m::MEMORY_PLACEMENT => {
                let p: m::GetMemoryPlacement = from_json(body)?;
                to_json(&mg.memory_placement_of(p.vnode)?)
            }
            m::REPAIR_PROGRESS => to_json(&mg.repair_progress(&from_json(body)?)?),
            m::RELEASE_VNODE => {
                let p: m::ReleaseVnode = from_json(body)?;
                mg.release_vnode(p.vnode)?;
                Vec::new()
            }
            m::VNODE_ADDRESS => {
                let p: m::GetVnodeAddress = from_json(body)?;
                let address = mg.vnode_address(p.vnode)?;
                self.bind_compute_owner(ctx, p.vnode)?;
                to_json(&address)
            }
            m::RENEW_LEASE => {
                let p: m::RenewLease = from_json(body)?;
                let lease = self.leases.renew(p.vnode);
                to_json(&m::LeaseGranted {
                    lease_ms: lease.as_millis() as u64,
                })
            }
            other => return Err(ProtoError::UnknownOpcode(other).into()),
        })
    }
}

impl Handler for ManagerService {
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        if ctx.vnode != 0 {
            return Err(RemoteError::new(
                ErrorCode::InvalidArgument,
                "manager requests are cluster-level; send them for vNode 0",
            ));
        }
        let r = self
            .authorize(ctx, &req)
            .and_then(|()| self.serve(ctx, &req));
        if let Err(e) = &r {
            tracing::debug!(peer = %ctx.peer, opcode = req.opcode, error = %lego_report::error_chain(&e), "manager request failed");
        }
        r
    }

    fn dispatch(&self, req: &Request) -> Dispatch {
        // Anything that may persist state (fsync) runs on the worker pool.
        match req.opcode {
            m::STATUS
            | m::ISSUE_CAPABILITY
            | m::MEMORY_PLACEMENT
            | m::RENEW_LEASE
            | m::VNODE_UP
            | m::VNODE_DOWN => Dispatch::Inline,
            _ => Dispatch::Worker,
        }
    }
}
