//! The manager's state in etcd: [`EtcdTarget`] (what `--store etcd://...` names), [`Etcd`] (a
//! connection with the small runtime that drives it) and [`EtcdStateStore`].
//!
//! Layout under the prefix (default `/lego/`): `meta` (the layout version), `monitors/<addr>`
//! and `vnodes/<id>` (one JSON value per object), `cluster-key` (the fingerprint of the key
//! capabilities are signed with), `leader` (see `manager::election`). A save
//! writes only what changed since the last load or save, in one transaction that holds only
//! while this manager's lease still owns the leader key, so a deposed leader's late write is
//! refused instead of overwriting its successor's.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use lego_fabric::ClusterKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::{
    ClusterState, MonitorRecord, StateError, StateStore, VnodeRecord, STATE_VERSION,
};

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "/lego/";

/// How long one etcd request may take before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd's default limit of operations in one transaction (`--max-txn-ops`), less headroom.
const MAX_TXN_OPS: usize = 100;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The `--store` value is not an etcd URL this build understands.
    #[error("'{0}' is not an etcd store: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]")]
    BadUrl(String),
    /// The runtime that drives the etcd client could not start.
    #[error("could not start the etcd client's runtime")]
    Runtime(#[source] std::io::Error),
    /// No endpoint answered.
    #[error("etcd at {endpoints} is unreachable")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// Cause.
        source: etcd_client::Error,
    },
    /// A request failed.
    #[error("the etcd request to {what} failed")]
    Request {
        /// What the request was for.
        what: String,
        /// Cause.
        source: etcd_client::Error,
    },
    /// A value under the prefix does not parse.
    #[error("the etcd key '{key}' does not hold a valid {what}")]
    Corrupt {
        /// The key.
        key: String,
        /// What it should hold.
        what: &'static str,
    },
    /// The layout version in etcd is another one.
    #[error("the state in etcd has layout version {0}, not {STATE_VERSION}")]
    Version(u32),
    /// This manager's cluster key is not the one the cluster's state was written with.
    #[error("this manager's cluster key (fingerprint {here}) is not the cluster's (fingerprint {found} in etcd): every manager must share one key")]
    ForeignKey {
        /// The fingerprint recorded in etcd.
        found: String,
        /// This manager's.
        here: String,
    },
    /// The transaction's guard failed: another manager leads now.
    #[error("this manager no longer leads (its lease does not own '{0}'): the write was refused")]
    NotLeader(String),
}

/// Where an etcd store is: endpoints and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
}

impl FromStr for EtcdTarget {
    type Err = EtcdError;

    /// Parses `etcd://h1:p1,h2:p2[/prefix/]`.
    fn from_str(s: &str) -> Result<Self, EtcdError> {
        let bad = || EtcdError::BadUrl(s.to_string());
        let rest = s.strip_prefix("etcd://").ok_or_else(bad)?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        let endpoints: Vec<String> = hosts.split(',').map(|h| h.trim().to_string()).collect();
        let valid = |h: &String| match h.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
            None => false,
        };
        if endpoints.is_empty() || !endpoints.iter().all(valid) {
            return Err(bad());
        }
        let mut prefix = prefix.to_string();
        if prefix.len() < 2 || prefix.contains("//") {
            prefix = DEFAULT_PREFIX.into();
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { endpoints, prefix })
    }
}

impl EtcdTarget {
    /// The full key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// One etcd client per endpoint and the one in use: a request that fails on a member moves
/// the next request to the next member (etcd's own balancing keeps sending to a stopped one).
pub struct EtcdClients {
    clients: Vec<etcd_client::Client>,
    current: AtomicUsize,
}

impl EtcdClients {
    /// The client in use and its index.
    pub fn get(&self) -> (usize, etcd_client::Client) {
        let i = self.current.load(Ordering::Acquire) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Says the client at `i` failed: the next request goes to the next member.
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Members to try before giving up on a request.
    pub fn tries(&self) -> usize {
        self.clients.len() + 1
    }
}

/// A connection to etcd and the one-thread runtime that drives it (the manager is synchronous:
/// it calls [`Etcd::call`] or [`Etcd::block_on`]).
pub struct Etcd {
    runtime: tokio::runtime::Runtime,
    clients: Arc<EtcdClients>,
    target: EtcdTarget,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("target", &self.target)
            .finish()
    }
}

impl Etcd {
    /// Connects and checks that a member answers.
    pub fn connect(target: EtcdTarget) -> Result<Arc<Self>, EtcdError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(EtcdError::Runtime)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let endpoints = target.endpoints_text();
        let unreachable = |source| EtcdError::Unreachable {
            endpoints: endpoints.clone(),
            source,
        };
        let clients = runtime.block_on(async {
            let mut clients = Vec::new();
            for e in &target.endpoints {
                clients.push(etcd_client::Client::connect([e], Some(options.clone())).await?);
            }
            Ok(clients)
        });
        let clients = EtcdClients {
            clients: clients.map_err(unreachable)?,
            current: AtomicUsize::new(0),
        };
        let etcd = Self {
            runtime,
            clients: Arc::new(clients),
            target,
        };
        let meta = etcd.target.key("meta");
        etcd.call(|mut c| {
            let meta = meta.clone();
            async move { c.get(meta, None).await }
        })
        .map_err(unreachable)?;
        Ok(Arc::new(etcd))
    }

    /// Runs the request `f` makes with a client, moving on to the next member when it fails
    /// (so `f` must be safe to repeat), until every member was tried.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.clients.tries() {
            let (i, c) = self.clients.get();
            match self.runtime.block_on(f(c)) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::debug!(member = %self.target.endpoints[i], error = %e, "etcd request failed; trying the next member");
                    self.clients.failed(i);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())))
    }

    /// Runs `f` to completion on the etcd runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Spawns `f` on the etcd runtime.
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(f);
    }

    /// The client in use (cheap: clones share the connection).
    pub fn client(&self) -> etcd_client::Client {
        self.clients.get().1
    }

    /// The clients of every member (for background tasks, which must not hold the runtime).
    pub fn clients(&self) -> Arc<EtcdClients> {
        self.clients.clone()
    }

    /// Endpoints and prefix.
    pub fn target(&self) -> &EtcdTarget {
        &self.target
    }
}

/// The layout record at `<prefix>meta`.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
}

/// One write of a save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set key to value.
    Put(String, Vec<u8>),
    /// Remove key.
    Delete(String),
}

/// The writes that turn `old` (what etcd holds; `None`: nothing) into `new`.
pub fn diff(target: &EtcdTarget, old: Option<&ClusterState>, new: &ClusterState) -> Vec<Write> {
    let mut w = Vec::new();
    if old.is_none() {
        let meta = serde_json::to_vec(&Meta {
            version: new.version,
        })
        .unwrap_or_default();
        w.push(Write::Put(target.key("meta"), meta));
    }
    let empty = ClusterState::default();
    let old = old.unwrap_or(&empty);
    diff_map(&mut w, target, "monitors/", &old.monitors, &new.monitors);
    diff_map(&mut w, target, "vnodes/", &old.vnodes, &new.vnodes);
    w
}

fn diff_map<K: Ord + std::fmt::Display, V: PartialEq + Serialize>(
    w: &mut Vec<Write>,
    target: &EtcdTarget,
    dir: &str,
    old: &std::collections::BTreeMap<K, V>,
    new: &std::collections::BTreeMap<K, V>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let bytes = serde_json::to_vec(v).unwrap_or_default();
            w.push(Write::Put(target.key(&format!("{dir}{k}")), bytes));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        w.push(Write::Delete(target.key(&format!("{dir}{k}"))));
    }
}

/// Rebuilds the state from the keys under the prefix (`None`: nothing was ever saved).
pub fn assemble(
    target: &EtcdTarget,
    kvs: &[(String, Vec<u8>)],
) -> Result<Option<ClusterState>, EtcdError> {
    let mut state = ClusterState::default();
    let mut seen = false;
    for (key, value) in kvs {
        let Some(rel) = key.strip_prefix(&target.prefix) else {
            continue;
        };
        let corrupt = |what| EtcdError::Corrupt {
            key: key.clone(),
            what,
        };
        if rel == "meta" {
            let m: Meta = serde_json::from_slice(value).map_err(|_| corrupt("layout record"))?;
            if m.version != STATE_VERSION {
                return Err(EtcdError::Version(m.version));
            }
            seen = true;
        } else if let Some(addr) = rel.strip_prefix("monitors/") {
            let r: MonitorRecord =
                serde_json::from_slice(value).map_err(|_| corrupt("monitor record"))?;
            state.monitors.insert(addr.to_string(), r);
            seen = true;
        } else if let Some(id) = rel.strip_prefix("vnodes/") {
            let id: u64 = id.parse().map_err(|_| corrupt("vNode id"))?;
            let r: VnodeRecord =
                serde_json::from_slice(value).map_err(|_| corrupt("vNode record"))?;
            state.vnodes.insert(id, r);
            seen = true;
        }
    }
    Ok(seen.then_some(state))
}

/// A [`StateStore`] in etcd, written only while this manager's lease owns the leader key.
pub struct EtcdStateStore {
    etcd: Arc<Etcd>,
    /// `(leader key, lease)` that every write is guarded by (`None`: unguarded, tests only).
    fence: Option<(String, i64)>,
    /// What etcd holds as far as this store knows (the base of the next diff).
    last: Mutex<Option<ClusterState>>,
}

impl EtcdStateStore {
    /// A store whose writes hold only while `lease` owns `leader_key`.
    pub fn new(etcd: Arc<Etcd>, fence: Option<(String, i64)>) -> Self {
        Self {
            etcd,
            fence,
            last: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<Option<ClusterState>, EtcdError> {
        let target = self.etcd.target();
        let prefix = target.prefix.clone();
        let resp = self
            .etcd
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .map_err(|source| EtcdError::Request {
                what: format!("read {}", target.prefix),
                source,
            })?;
        let kvs: Vec<(String, Vec<u8>)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        assemble(target, &kvs)
    }

    fn write(&self, writes: Vec<Write>) -> Result<(), EtcdError> {
        // Normally one transaction: a manager operation changes one vNode or monitor. Only a
        // first save of a large state is split (etcd limits operations per transaction).
        for chunk in writes.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|w| match w {
                    Write::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
                    Write::Delete(k) => TxnOp::delete(k.clone(), None),
                })
                .collect();
            let mut txn = Txn::new();
            if let Some((key, lease)) = &self.fence {
                txn = txn.when([Compare::lease(key.clone(), CompareOp::Equal, *lease)]);
            }
            let txn = txn.and_then(ops);
            // Safe to repeat: the same writes, guarded by the same lease.
            let resp = self
                .etcd
                .call(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .map_err(|source| EtcdError::Request {
                    what: "save the manager state".into(),
                    source,
                })?;
            if !resp.succeeded() {
                let key = self.fence.as_ref().map(|f| f.0.clone()).unwrap_or_default();
                return Err(EtcdError::NotLeader(key));
            }
        }
        Ok(())
    }
}

/// A public fingerprint of the cluster key: the first 8 bytes of SHA-256 over a label and the
/// key, in hex. etcd records it (never the key) so that every manager signs capabilities with
/// the key the monitors hold.
pub fn key_fingerprint(key: &ClusterKey) -> String {
    let mut h = Sha256::new();
    h.update(b"lego-cluster-key-fingerprint\0");
    h.update(key.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EtcdStateStore {
    /// Records the fingerprint of `key` at `<prefix>cluster-key` if none is recorded yet, else
    /// checks that it is the one recorded.
    pub fn check_cluster_key(&self, key: &ClusterKey) -> Result<(), EtcdError> {
        let here = key_fingerprint(key);
        let k = self.etcd.target().key("cluster-key");
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), here.clone(), None)])
            .or_else([TxnOp::get(k.clone(), None)]);
        let resp = self
            .etcd
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .map_err(|source| EtcdError::Request {
                what: format!("check {k}"),
                source,
            })?;
        if resp.succeeded() {
            return Ok(());
        }
        let mut found = String::new();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    found = String::from_utf8_lossy(kv.value()).into_owned();
                }
            }
        }
        if found == here {
            Ok(())
        } else {
            Err(EtcdError::ForeignKey { found, here })
        }
    }
}

impl StateStore for EtcdStateStore {
    fn load(&self) -> Result<Option<ClusterState>, StateError> {
        let state = self.read()?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
        Ok(state)
    }

    fn save(&self, state: &ClusterState) -> Result<(), StateError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let writes = diff(self.etcd.target(), last.as_ref(), state);
        if !writes.is_empty() {
            self.write(writes)?;
        }
        *last = Some(state.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::state::VolumeRecord;
    use lego_monitor_client::proto::manager::MonitorKind;

    fn target() -> EtcdTarget {
        "etcd://a:2379".parse().expect("target")
    }

    #[test]
    fn urls_parse_or_are_refused_clearly() {
        let t: EtcdTarget = "etcd://10.0.0.1:2379,10.0.0.2:2379/lab/"
            .parse()
            .expect("url");
        assert_eq!(t.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(t.prefix, "/lab/");
        assert_eq!(target().prefix, DEFAULT_PREFIX);
        assert_eq!(
            "etcd://h:1/x".parse::<EtcdTarget>().expect("x").prefix,
            "/x/"
        );
        for bad in [
            "http://h:1",
            "etcd://",
            "etcd://h",
            "etcd://h:0",
            "etcd://h:1,:2",
            "h:1",
        ] {
            let e = bad.parse::<EtcdTarget>().expect_err(bad);
            assert!(e.to_string().contains("is not an etcd store"), "{e}");
        }
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let mon = MonitorRecord {
            kind: MonitorKind::Memory,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            incarnation: Some(7),
        };
        s.monitors.insert("m1:7000".into(), mon.clone());
        s.monitors.insert("m2:7000".into(), mon);
        let mut v = VnodeRecord {
            region_size: 4096,
            regions: vec!["m1:7000".into()],
            ..Default::default()
        };
        v.volumes.insert(
            "root".into(),
            VolumeRecord {
                size: 1 << 20,
                monitor: "s:7100".into(),
            },
        );
        s.vnodes.insert(3, v);
        s
    }

    fn apply(kvs: &mut std::collections::BTreeMap<String, Vec<u8>>, writes: &[Write]) {
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    kvs.insert(k.clone(), v.clone());
                }
                Write::Delete(k) => {
                    kvs.remove(k);
                }
            }
        }
    }

    #[test]
    fn a_diff_writes_only_what_changed_and_round_trips() {
        let t = target();
        let s1 = state();
        let first = diff(&t, None, &s1);
        assert_eq!(first.len(), 4, "meta, two monitors, one vNode: {first:?}");
        let mut kvs = std::collections::BTreeMap::new();
        apply(&mut kvs, &first);

        let mut s2 = s1.clone();
        s2.monitors.remove("m2:7000");
        s2.vnodes
            .get_mut(&3)
            .expect("v3")
            .regions
            .push("m1:7000".into());
        s2.vnodes.insert(4, VnodeRecord::default());
        let second = diff(&t, Some(&s1), &s2);
        assert_eq!(second.len(), 3, "{second:?}");
        assert!(second.contains(&Write::Delete("/lego/monitors/m2:7000".into())));
        assert!(diff(&t, Some(&s2), &s2).is_empty());
        apply(&mut kvs, &second);

        let kvs: Vec<(String, Vec<u8>)> = kvs.into_iter().collect();
        assert_eq!(assemble(&t, &kvs).expect("assemble"), Some(s2));
        assert_eq!(assemble(&t, &[]).expect("empty"), None);
    }

    #[test]
    fn foreign_versions_and_garbage_are_refused() {
        let t = target();
        let meta = ("/lego/meta".to_string(), br#"{"version":99}"#.to_vec());
        let e = assemble(&t, &[meta]).expect_err("version");
        assert!(e.to_string().contains("layout version 99"), "{e}");
        let bad = ("/lego/vnodes/x".to_string(), b"{}".to_vec());
        let e = assemble(&t, &[bad]).expect_err("id");
        assert!(e.to_string().contains("/lego/vnodes/x"), "{e}");
    }
}
