//! The manager's fabric [`Handler`]: decodes JSON requests and calls [`Manager`].

use std::sync::Arc;
use std::time::Duration;

use lego_fabric::{Dispatch, ErrorCode, Handler, RemoteError, Request, RequestContext};

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
            ManagerError::State(_) => ErrorCode::Io,
            ManagerError::VolumeOnDeadMonitor { .. } => ErrorCode::Unavailable,
        };
        RemoteError::new(code, lego_report::error_chain(&e))
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

    fn serve(&self, req: &Request) -> Result<Vec<u8>, RemoteError> {
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
                to_json(&status)
            }
            m::VNODE_UP => {
                let up: m::VnodeUp = from_json(body)?;
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
                self.running.down(&from_json::<m::VnodeDown>(body)?);
                Vec::new()
            }
            m::PLACE_MEMORY => {
                let p: m::PlaceMemory = from_json(body)?;
                to_json(&mg.place_memory_copies(p.vnode, p.bytes, p.copies)?)
            }
            m::PLACE_VOLUME => {
                let p: m::PlaceVolume = from_json(body)?;
                to_json(&mg.place_volume(p.vnode, &p.name, p.size)?)
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
        let r = self.serve(&req);
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
