//! Leader election of managers through etcd.
//!
//! Each manager holds an etcd lease (kept alive every quarter of its TTL) and tries to create
//! the leader key (`<prefix>leader`, value: the manager's advertised fabric address) with that
//! lease, in a transaction that succeeds only while the key is absent. The one that creates it
//! leads; the others watch the key and try again when it is deleted (its owner resigned, or
//! its lease expired because the owner died or lost etcd). A leader whose lease cannot be
//! renewed for a TTL, or whose key changed owner, is told through [`Leadership::lost`]: it must
//! stop serving at once (`lego-manager` exits and its supervisor restarts it as a standby).
//! Every state write is also guarded by the key's lease (see `manager::etcd_store`).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::etcd_store::{Etcd, EtcdClients};

/// The lease TTL used unless configured: a dead leader is replaced within about this long.
///
/// It must outlast an etcd election: when the etcd member that leads raft dies, no lease can
/// be renewed until the others elect a new one (1 to 2 s with etcd's default 1 s election
/// timeout, longer on a loaded host). A leader whose TTL is shorter than that resigns
/// whenever etcd loses its raft leader.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Errors of an election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// An etcd request failed.
    #[error("the etcd request to {what} failed")]
    Etcd {
        /// What the request was for.
        what: &'static str,
        /// Cause.
        source: etcd_client::Error,
    },
}

fn etcd_err(what: &'static str) -> impl FnOnce(etcd_client::Error) -> ElectionError {
    move |source| ElectionError::Etcd { what, source }
}

/// A manager's candidacy: its lease and the key it campaigns for.
pub struct Election {
    etcd: Arc<Etcd>,
    key: String,
    advertise: String,
    ttl: Duration,
    lease: i64,
    lost_rx: Receiver<String>,
}

/// This manager leads: its lease owns the leader key.
pub struct Leadership {
    etcd: Arc<Etcd>,
    /// The leader key.
    pub key: String,
    /// The lease that owns it (guards every state write).
    pub lease: i64,
    lost: Receiver<String>,
}

impl Election {
    /// Grants a lease of `ttl` (whole seconds, at least 1) and keeps it alive in the background.
    pub fn new(etcd: Arc<Etcd>, advertise: &str, ttl: Duration) -> Result<Self, ElectionError> {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let key = etcd.target().key("leader");
        let secs = ttl.as_secs() as i64;
        let lease = etcd
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .map_err(etcd_err("grant the election lease"))?
            .id();
        let (lost_tx, lost_rx) = mpsc::channel();
        etcd.spawn(keep_alive(etcd.clients(), lease, ttl, lost_tx));
        Ok(Self {
            etcd,
            key,
            advertise: advertise.to_string(),
            ttl,
            lease,
            lost_rx,
        })
    }

    /// Campaigns until this manager leads. While another leads, `standby` is told its address
    /// (again whenever it changes; `None` between leaders).
    pub fn campaign(
        self,
        mut standby: impl FnMut(Option<&str>),
    ) -> Result<Leadership, ElectionError> {
        loop {
            if let Ok(why) = self.lost_rx.try_recv() {
                return Err(ElectionError::Etcd {
                    what: "keep the election lease",
                    source: etcd_client::Error::LeaseKeepAliveError(why),
                });
            }
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.advertise.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            // Safe to repeat: a repeat after a lost answer finds the key ours (below).
            let resp = match self.etcd.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "campaigning for the manager's leadership failed; retrying");
                    std::thread::sleep(self.ttl / 3);
                    continue;
                }
            };
            let mut rev = resp.header().map_or(0, |h| h.revision());
            let mut leader = None;
            let mut ours = resp.succeeded();
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    if let Some(kv) = g.kvs().first() {
                        leader = Some(String::from_utf8_lossy(kv.value()).into_owned());
                        rev = rev.max(kv.mod_revision());
                        ours |= kv.lease() == self.lease;
                    }
                }
            }
            if ours {
                let (lost_tx, lost) = mpsc::channel();
                let forward = self.lost_rx;
                let tx = lost_tx.clone();
                std::thread::spawn(move || {
                    if let Ok(why) = forward.recv() {
                        let _ = tx.send(why);
                    }
                });
                self.etcd.spawn(watch_owner(
                    self.etcd.clients(),
                    self.key.clone(),
                    self.lease,
                    lost_tx,
                ));
                return Ok(Leadership {
                    etcd: self.etcd,
                    key: self.key,
                    lease: self.lease,
                    lost,
                });
            }
            standby(leader.as_deref());
            // Wait until the key goes (or the watch breaks: then look again).
            let (member, mut client) = self.etcd.clients().get();
            let watched = self.etcd.block_on(async {
                let opts = WatchOptions::new().with_start_revision(rev + 1);
                let mut stream = client.watch(self.key.clone(), Some(opts)).await?;
                while let Some(msg) = stream.message().await? {
                    if msg
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return Ok(());
                    }
                }
                Ok::<(), etcd_client::Error>(())
            });
            if let Err(e) = watched {
                self.etcd.clients().failed(member);
                tracing::debug!(error = %e, "watching the leader key broke; looking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            standby(None);
        }
    }
}

impl Leadership {
    /// Blocks until leadership is lost or `timeout` passes; returns why it was lost.
    pub fn lost(&self, timeout: Duration) -> Option<String> {
        self.lost.recv_timeout(timeout).ok()
    }

    /// Gives leadership up now (revokes the lease, deleting the key), so a standby takes over
    /// without waiting for the lease to expire.
    pub fn resign(self) {
        let lease = self.lease;
        if let Err(e) = self
            .etcd
            .call(|mut c| async move { c.lease_revoke(lease).await })
        {
            tracing::warn!(error = %e, "could not revoke the leader's lease; it expires by itself");
        }
    }
}

/// Renews `lease` every quarter of `ttl`, moving to another etcd member when one fails;
/// reports on `lost` once it cannot have been renewed for a whole `ttl` (or etcd says it
/// expired), then stops.
///
/// A renewal counts from when its request was sent, not when its answer came: etcd's lease
/// runs from some moment in between, so this side never believes the lease lives longer than
/// it does.
async fn keep_alive(clients: Arc<EtcdClients>, lease: i64, ttl: Duration, lost: Sender<String>) {
    let period = ttl / 4;
    let mut renewed = Instant::now();
    let mut keeper = None;
    let mut member = 0;
    loop {
        if renewed.elapsed() >= ttl {
            let _ = lost.send(format!("the lease could not be renewed for {ttl:?}"));
            return;
        }
        let sent = Instant::now();
        let Some((k, stream)) = keeper.as_mut() else {
            // Opening a keep-alive stream renews the lease once (etcd-client waits for the
            // first answer).
            let (i, mut client) = clients.get();
            member = i;
            match tokio::time::timeout(period, client.lease_keep_alive(lease)).await {
                Ok(Ok(k)) => {
                    renewed = sent;
                    keeper = Some(k);
                    tokio::time::sleep(period).await;
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) => {
                    let _ = lost.send(format!("the lease expired ({e})"));
                    return;
                }
                _ => {
                    tracing::debug!(
                        member = i,
                        "renewing the election lease failed; trying the next etcd member"
                    );
                    clients.failed(i);
                    tokio::time::sleep(ttl / 20).await;
                }
            }
            continue;
        };
        let answer = async {
            k.keep_alive().await.ok()?;
            stream.message().await.ok()?
        };
        match tokio::time::timeout(period, answer).await {
            Ok(Some(r)) if r.ttl() > 0 => {
                renewed = sent;
                tokio::time::sleep(period).await;
            }
            Ok(Some(_)) => {
                let _ = lost.send("the lease expired".into());
                return;
            }
            _ => {
                tracing::debug!(
                    member,
                    "renewing the election lease failed; trying the next etcd member"
                );
                clients.failed(member);
                keeper = None;
            }
        }
    }
}

/// Reports on `lost` when the leader key is deleted or changes owner.
async fn watch_owner(clients: Arc<EtcdClients>, key: String, lease: i64, lost: Sender<String>) {
    loop {
        let (member, mut client) = clients.get();
        let r = async {
            let got = client.get(key.clone(), None).await?;
            let rev = got.header().map_or(0, |h| h.revision());
            if got.kvs().first().map(|kv| kv.lease()) != Some(lease) {
                return Ok(true);
            }
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let mut stream = client.watch(key.clone(), Some(opts)).await?;
            while let Some(msg) = stream.message().await? {
                for e in msg.events() {
                    let theirs = e.kv().map(|kv| kv.lease()) != Some(lease);
                    if e.event_type() == EventType::Delete || theirs {
                        return Ok(true);
                    }
                }
            }
            Ok::<bool, etcd_client::Error>(false)
        }
        .await;
        match r {
            Ok(true) => {
                let _ = lost.send(format!(
                    "the leader key '{key}' is gone or has another owner"
                ));
                return;
            }
            Ok(false) | Err(_) => {
                clients.failed(member);
                tokio::time::sleep(Duration::from_millis(200)).await
            }
        }
    }
}
