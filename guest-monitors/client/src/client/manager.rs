//! [`ManagerClient`]: membership, placement and capabilities from the manager.
//!
//! The manager may run as several instances, one leading and the others standing by (see
//! `lego-manager --store etcd://...`): the client takes a comma-separated list of their
//! addresses and finds the leader by itself. It follows a standby's refusal to the leader it
//! names, and moves on to the next address when the one it uses stops answering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lego_fabric::{
    Capability, Client, ClientConfig, ClientError, ErrorCode, Identity, RemoteError, Request,
    Rights,
};

use super::CallError;
use crate::proto::manager::{
    self as m, ClusterStatus, MemoryPlacement, Registered, VnodeAddress, VolumePlacement,
};
use crate::proto::{from_json, to_json};

/// How long a request waits for a lost manager connection when there is another to try.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(1);

/// Pause between tries while no leader answers (e.g. during an election).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A client of the manager. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct ManagerClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The managers' addresses as given.
    addrs: Vec<String>,
    /// The key to connect to another manager with (`None`: this client cannot move).
    key: Option<Identity>,
    config: ClientConfig,
    /// The manager in use and its connection.
    current: Mutex<(String, Client)>,
}

impl ManagerClient {
    /// Connects to the manager at `addrs`: one address, or a comma-separated list of a
    /// cluster's managers (the first that accepts a connection is used until it refuses as a
    /// standby or stops answering), as `key` (the cluster key or a credential).
    pub fn connect(
        addrs: &str,
        key: impl Into<Identity>,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        let key = key.into();
        let list: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if list.is_empty() {
            return Err(CallError::Invalid(format!(
                "'{addrs}' names no manager address"
            )));
        }
        let mut config = config;
        if list.len() > 1 {
            let patience = config.reconnect_patience.unwrap_or(FAILOVER_PATIENCE);
            config.reconnect_patience = Some(patience.min(FAILOVER_PATIENCE));
        }
        let mut last = None;
        for addr in &list {
            match Client::connect(addr.as_str(), key.clone(), config.clone()) {
                Ok(client) => {
                    return Ok(Self::build(
                        list.clone(),
                        Some(key),
                        config,
                        addr.clone(),
                        client,
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(CallError::Fabric)
            .unwrap_or_else(|| CallError::Invalid(format!("'{addrs}' names no manager address"))))
    }

    /// Wraps a connected fabric client.
    pub fn from_client(client: Client) -> Self {
        let addr = client.peer_addr().to_string();
        Self::build(
            vec![addr.clone()],
            None,
            ClientConfig::default(),
            addr,
            client,
        )
    }

    fn build(
        addrs: Vec<String>,
        key: Option<Identity>,
        config: ClientConfig,
        addr: String,
        client: Client,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                addrs,
                key,
                config,
                current: Mutex::new((addr, client)),
            }),
        }
    }

    /// The address of the manager this client talks to now.
    pub fn current_addr(&self) -> String {
        self.current().0
    }

    fn current(&self) -> (String, Client) {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `req` to the leader, following standbys' refusals and moving past managers that
    /// do not answer, for at most the client's timeout.
    fn call_raw(&self, req: Request) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now() + self.inner.config.timeout;
        let several = self.inner.addrs.len() > 1;
        loop {
            let (addr, client) = self.current();
            let hint = match client.call(req.clone()) {
                Ok(r) => return Ok(r.payload),
                Err(ClientError::Remote(RemoteError {
                    code: ErrorCode::Unavailable,
                    message,
                })) if m::parse_standby_refusal(&message).is_some() => {
                    let leader = m::parse_standby_refusal(&message).flatten();
                    if Instant::now() >= deadline {
                        return Err(CallError::Fabric(ClientError::Remote(RemoteError::new(
                            ErrorCode::Unavailable,
                            message,
                        ))));
                    }
                    leader.map(str::to_string)
                }
                Err(
                    e @ (ClientError::Disconnected(_)
                    | ClientError::Timeout(_)
                    | ClientError::Io(_)),
                ) if several => {
                    if Instant::now() >= deadline {
                        return Err(e.into());
                    }
                    None
                }
                Err(e) => return Err(e.into()),
            };
            self.switch(&addr, hint);
        }
    }

    /// Moves to `hint` (a leader a standby named) or else to the address after `from`.
    fn switch(&self, from: &str, hint: Option<String>) {
        let addrs = &self.inner.addrs;
        let Some(key) = &self.inner.key else {
            std::thread::sleep(RETRY_PAUSE);
            return;
        };
        let at = addrs.iter().position(|a| a == from);
        let next = at.map_or(0, |i| (i + 1) % addrs.len());
        let mut order: Vec<String> = hint.into_iter().filter(|h| h != from).collect();
        order.extend(addrs[next..].iter().chain(&addrs[..next]).cloned());
        for addr in order {
            if addr == from && addrs.len() > 1 {
                continue;
            }
            if let Ok(c) = Client::connect(addr.as_str(), key.clone(), self.inner.config.clone()) {
                tracing::debug!(from, to = %addr, "switching manager");
                *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = (addr, c);
                break;
            }
        }
        std::thread::sleep(RETRY_PAUSE);
    }

    fn call<T: serde::Serialize>(&self, opcode: u16, body: &T) -> Result<Vec<u8>, CallError> {
        self.call_raw(Request::new(opcode, 0, to_json(body)))
    }

    /// Registers a monitor; returns the heartbeat interval to use.
    pub fn register(&self, r: &m::RegisterMonitor) -> Result<Registered, CallError> {
        Ok(from_json(&self.call(m::REGISTER, r)?)?)
    }

    /// Sends a heartbeat (`NotFound` means: register again).
    pub fn heartbeat(&self, h: &m::Heartbeat) -> Result<(), CallError> {
        self.call(m::HEARTBEAT, h).map(|_| ())
    }

    /// The cluster's monitors, vNodes and placements.
    pub fn status(&self) -> Result<ClusterStatus, CallError> {
        let r = self.call_raw(Request::new(m::STATUS, 0, Vec::new()))?;
        Ok(from_json(&r)?)
    }

    /// Ensures `vnode` has at least `bytes` of remote memory placed, new regions with the
    /// manager's number of copies.
    pub fn place_memory(&self, vnode: u64, bytes: u64) -> Result<MemoryPlacement, CallError> {
        self.place_memory_copies(vnode, bytes, None)
    }

    /// [`ManagerClient::place_memory`] with `copies` of each new region (`None`: the
    /// manager's setting).
    pub fn place_memory_copies(
        &self,
        vnode: u64,
        bytes: u64,
        copies: Option<u32>,
    ) -> Result<MemoryPlacement, CallError> {
        Ok(from_json(&self.call(
            m::PLACE_MEMORY,
            &m::PlaceMemory {
                vnode,
                bytes,
                copies,
            },
        )?)?)
    }

    /// Places a volume of `vnode`.
    pub fn place_volume(
        &self,
        vnode: u64,
        name: &str,
        size: u64,
    ) -> Result<VolumePlacement, CallError> {
        let body = m::PlaceVolume {
            vnode,
            name: name.into(),
            size,
        };
        Ok(from_json(&self.call(m::PLACE_VOLUME, &body)?)?)
    }

    /// Gets a capability for `vnode` (ttl zero: the manager's default).
    pub fn issue_capability(
        &self,
        vnode: u64,
        rights: Rights,
        ttl: Duration,
    ) -> Result<Capability, CallError> {
        let body = m::IssueCapability {
            vnode,
            rights: rights.bits(),
            ttl_secs: ttl.as_secs(),
        };
        let issued: m::IssuedCapability = from_json(&self.call(m::ISSUE_CAPABILITY, &body)?)?;
        issued.capability.parse().map_err(CallError::BadCapability)
    }

    /// `vnode`'s memory placement as it stands, repairs included; places nothing.
    pub fn memory_placement(&self, vnode: u64) -> Result<MemoryPlacement, CallError> {
        Ok(from_json(&self.call(
            m::MEMORY_PLACEMENT,
            &m::GetMemoryPlacement { vnode },
        )?)?)
    }

    /// Reports how far the copy of a region to its repair target has come.
    pub fn repair_progress(&self, p: &m::RepairProgress) -> Result<m::RepairAck, CallError> {
        Ok(from_json(&self.call(m::REPAIR_PROGRESS, p)?)?)
    }

    /// Renews `vnode`'s lease; returns how long it lasts.
    pub fn renew_lease(&self, vnode: u64) -> Result<Duration, CallError> {
        let granted: m::LeaseGranted =
            from_json(&self.call(m::RENEW_LEASE, &m::RenewLease { vnode })?)?;
        Ok(Duration::from_millis(granted.lease_ms))
    }

    /// Announces a running vNode; returns how often to announce it again.
    pub fn vnode_up(&self, up: &m::VnodeUp) -> Result<Duration, CallError> {
        let ack: m::VnodeUpAck = from_json(&self.call(m::VNODE_UP, up)?)?;
        Ok(Duration::from_millis(ack.interval_ms))
    }

    /// Says a vNode stopped.
    pub fn vnode_down(&self, down: &m::VnodeDown) -> Result<(), CallError> {
        self.call(m::VNODE_DOWN, down).map(|_| ())
    }

    /// Forgets a dead monitor that holds no placement.
    pub fn forget_monitor(&self, addr: &str) -> Result<(), CallError> {
        let body = m::ForgetMonitor { addr: addr.into() };
        self.call(m::FORGET_MONITOR, &body).map(|_| ())
    }

    /// Forgets a volume's placement (delete its data from its storage monitor first).
    pub fn forget_volume(&self, vnode: u64, name: &str) -> Result<(), CallError> {
        let body = m::ForgetVolume {
            vnode,
            name: name.into(),
        };
        self.call(m::FORGET_VOLUME, &body).map(|_| ())
    }

    /// Forgets a vNode's placements (and frees its address).
    pub fn release_vnode(&self, vnode: u64) -> Result<(), CallError> {
        self.call(m::RELEASE_VNODE, &m::ReleaseVnode { vnode })
            .map(|_| ())
    }

    /// `vnode`'s network address, which the manager allocates on the first ask and keeps
    /// until the vNode is released; [`CallError::AddressPoolExhausted`] when no address is
    /// free.
    pub fn vnode_address(&self, vnode: u64) -> Result<VnodeAddress, CallError> {
        match self.call(m::VNODE_ADDRESS, &m::GetVnodeAddress { vnode }) {
            Ok(body) => Ok(from_json(&body)?),
            Err(e) => Err(pool_exhausted(&e).unwrap_or(e)),
        }
    }
}

/// `e` as [`CallError::AddressPoolExhausted`] if it is the manager's answer that its vNode
/// address pool is exhausted.
fn pool_exhausted(e: &CallError) -> Option<CallError> {
    let CallError::Fabric(ClientError::Remote(RemoteError {
        code: ErrorCode::NoSpace,
        message,
    })) = e
    else {
        return None;
    };
    let (subnet, addresses) = m::parse_pool_exhausted(message)?;
    Some(CallError::AddressPoolExhausted { subnet, addresses })
}
