//! `lego-manager`: cluster membership, monitor liveness, placement of vRegions and volumes, and
//! capabilities (LegoOS GMM/GSM).
//!
//! With the default file store one manager serves alone. With `--store etcd://...` several
//! managers share the state in etcd: one leads (elected through an etcd lease), the others
//! stand by and refuse requests naming the leader; a leader that loses its lease exits
//! (status 1) at once so that a supervisor restarts it as a standby.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lego_fabric::{CapabilityKey, ClusterKey, ServerConfig};
use lego_metrics::MetricsServer;
use lego_monitor_client::size::ByteSize;
use lego_monitors::config::{self, ManagerFileConfig};
use lego_monitors::daemon::{self, DaemonError};
use lego_monitors::manager::election::{self, Election, Leadership};
use lego_monitors::manager::etcd_store::{Etcd, EtcdStateStore, EtcdTarget};
use lego_monitors::manager::service::ManagerService;
use lego_monitors::manager::standby::Gate;
use lego_monitors::manager::{
    FileStateStore, Manager, ManagerSettings, StateStore, VnodeLeases, VnodeSubnet,
};
use lego_monitors::metrics;

/// Place vNodes' remote memory and volumes on monitors and watch the monitors' heartbeats.
#[derive(Debug, Parser)]
#[command(name = "lego-manager", version)]
struct Args {
    /// TOML config file (flags override its keys; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7300].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Folder for the durable state [default: /var/lib/lego/manager].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep the state in etcd instead of --state-dir, e.g. etcd://10.0.0.1:2379,10.0.0.2:2379
    /// (optionally /PREFIX/ after the endpoints [default: /lego/]); several managers on the
    /// same etcd elect one leader, the others stand by [default: the file in --state-dir].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Address other hosts reach this manager at, named to clients by standbys (etcd store)
    /// [default: the address listened on].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Seconds of the etcd lease behind the leadership: a dead leader is replaced within about
    /// this long (etcd store); keep it above etcd's own election time, or the leader resigns
    /// whenever etcd's raft leader dies [default: 5].
    #[arg(long, value_name = "SECS")]
    leader_ttl_secs: Option<u64>,
    /// vRegion size for new vNodes, a multiple of 4K [default: 1G].
    #[arg(long, value_name = "SIZE")]
    region_size: Option<ByteSize>,
    /// Expected heartbeat interval of monitors in milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Heartbeat intervals a monitor may miss before it is declared dead [default: 3].
    #[arg(long, value_name = "N")]
    missed_heartbeats: Option<u32>,
    /// Default lifetime of issued capabilities in seconds [default: 86400].
    #[arg(long, value_name = "SECS")]
    capability_ttl_secs: Option<u64>,
    /// Copies of each vRegion on distinct memory monitors [default: 2 when two or more
    /// memory monitors are alive, else 1 with a warning].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    copies: Option<u32>,
    /// Rate limit in MiB/s of repairing a vRegion: after a memory monitor holding one of its
    /// copies dies, the vNode's backend copies the region's pages from a surviving copy to a
    /// new monitor at most this fast, so the repair does not starve the vNode's own I/O;
    /// 0 for no limit [default: 64].
    #[arg(long, value_name = "MIB_S")]
    repair_rate_mib: Option<u32>,
    /// Seconds a vNode's lease lasts: a vNode whose backends have not renewed it for longer
    /// (its compute host is gone) has its remote memory placements released; long enough
    /// for a backend to restart [default: 120].
    #[arg(long, value_name = "SECS")]
    vnode_lease_secs: Option<u64>,
    /// IPv4 subnet vNodes get their network addresses (and MACs) from, in CIDR notation: its
    /// first host address (.1 of a /24) is the gateway, the compute hosts' bridge, and is never
    /// handed out; each vNode gets the lowest free address after it until the vNode is
    /// released [default: 10.99.0.0/24].
    #[arg(long, value_name = "CIDR")]
    vnode_subnet: Option<VnodeSubnet>,
    /// Cluster key file [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// File holding the seed (64 hex digits) of the Ed25519 key that signs capabilities;
    /// give it to the managers only, and the monitors its public key (logged at start,
    /// `legoctl capability-key public`) [default: derived from the cluster key].
    #[arg(long, value_name = "FILE")]
    capability_key_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9101 [default: none].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn run(args: Args) -> Result<(), DaemonError> {
    let file: ManagerFileConfig = config::load(args.config.as_deref())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| config::DEFAULT_MANAGER_LISTEN.into());
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/lego/manager"));
    let settings = ManagerSettings {
        region_size: args
            .region_size
            .or(file.region_size)
            .map(ByteSize::bytes)
            .unwrap_or(1 << 30),
        heartbeat_interval: Duration::from_millis(
            args.heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(config::DEFAULT_HEARTBEAT_MS)
                .max(10),
        ),
        missed_heartbeats: args
            .missed_heartbeats
            .or(file.missed_heartbeats)
            .unwrap_or(3)
            .max(1),
        capability_ttl: Duration::from_secs(
            args.capability_ttl_secs
                .or(file.capability_ttl_secs)
                .unwrap_or(86400)
                .max(1),
        ),
        copies: args.copies.or(file.copies),
        repair_rate_mib: args
            .repair_rate_mib
            .or(file.repair_rate_mib)
            .unwrap_or(lego_monitors::manager::core::DEFAULT_REPAIR_RATE_MIB),
        vnode_subnet: args.vnode_subnet.or(file.vnode_subnet).unwrap_or_default(),
    };
    let lease = args
        .vnode_lease_secs
        .or(file.vnode_lease_secs)
        .map_or(lego_monitors::manager::lease::DEFAULT_LEASE, |s| {
            Duration::from_secs(s.max(1))
        });
    let leases = Arc::new(VnodeLeases::new(lease));
    let key = ClusterKey::load(args.key_file.or(file.key_file).as_deref())?;
    let capability_key = match args.capability_key_file.or(file.capability_key_file) {
        Some(f) => CapabilityKey::from_file(&f)?,
        None => CapabilityKey::derive(&key),
    };
    tracing::info!(public_key = %capability_key.public(), "capabilities are signed with this key");
    let signals = daemon::shutdown_signals()?;

    let listen_cfg = Listen {
        addr: listen,
        key,
        capability_key,
        metrics: args.metrics.or(file.metrics),
        settings,
        leases,
    };
    match args.store.or(file.store) {
        None => {
            let store = FileStateStore::open(&state_dir).map_err(DaemonError::StateDir)?;
            tracing::info!(state_dir = %state_dir.display(), "state in a file");
            run_alone(listen_cfg, Box::new(store), signals)
        }
        Some(url) => {
            let target: EtcdTarget = url.parse()?;
            let etcd = Etcd::connect(target)?;
            let ttl = args
                .leader_ttl_secs
                .or(file.leader_ttl_secs)
                .map_or(election::DEFAULT_TTL, Duration::from_secs);
            let advertise = args.advertise.or(file.advertise);
            run_elected(listen_cfg, etcd, advertise, ttl, signals)
        }
    }
}

/// What serving needs, whatever the store.
struct Listen {
    addr: String,
    key: ClusterKey,
    capability_key: CapabilityKey,
    metrics: Option<String>,
    settings: ManagerSettings,
    leases: Arc<VnodeLeases>,
}

/// A leading manager's service and the threads serving it.
struct Serving {
    metrics: Option<MetricsServer>,
    stop_tx: Sender<()>,
    watcher: std::thread::JoinHandle<()>,
}

impl Serving {
    /// Loads the state from `store`, then serves it through `gate` and watches liveness.
    fn start(l: &Listen, store: Box<dyn StateStore>, gate: &Gate) -> Result<Self, DaemonError> {
        let interval = l.settings.heartbeat_interval;
        let manager = Arc::new(Manager::new(
            l.settings.clone(),
            l.capability_key.clone(),
            store,
        )?);
        let service = ManagerService::new(manager.clone()).with_leases(l.leases.clone());
        let metrics = l
            .metrics
            .as_deref()
            .map(|addr| {
                let registry = metrics::manager_registry(manager.clone(), service.running());
                MetricsServer::start(addr, registry)
            })
            .transpose()?;
        gate.activate(Arc::new(service));
        tracing::info!(region_size = %ByteSize(manager.settings().region_size),
            vnode_subnet = %manager.settings().vnode_subnet,
            vnode_lease_secs = l.leases.lease().as_secs(), monitors = manager.status().monitors.len(),
            "manager serving");
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let leases = l.leases.clone();
        let watcher = std::thread::Builder::new()
            .name("liveness".into())
            .spawn(move || loop {
                manager.check_liveness();
                leases.reclaim(&manager);
                match stop_rx.recv_timeout(interval / 2) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            })
            .map_err(|source| DaemonError::Thread {
                name: "liveness",
                source,
            })?;
        Ok(Self {
            metrics,
            stop_tx,
            watcher,
        })
    }

    fn stop(self) {
        drop(self.stop_tx);
        let _ = self.watcher.join();
        drop(self.metrics);
    }
}

/// The only manager: state in `store`, serving until a signal.
fn run_alone(
    l: Listen,
    store: Box<dyn StateStore>,
    mut signals: signal_hook::iterator::Signals,
) -> Result<(), DaemonError> {
    let gate = Arc::new(Gate::new());
    let serving = Serving::start(&l, store, &gate)?;
    let server = daemon::serve(&l.addr, l.key.clone(), gate, ServerConfig::default())?;
    tracing::info!(listen = %server.local_addr(), "manager listening");
    let sig = daemon::wait_for_shutdown(&mut signals);
    tracing::info!(signal = sig, "shutting down");
    serving.stop();
    server.shutdown();
    tracing::info!("manager stopped");
    Ok(())
}

/// What the main thread of an elected manager waits for.
enum Event {
    Signal(&'static str),
    Elected(Result<Leadership, election::ElectionError>),
}

/// One of several managers on etcd: stands by (refusing requests, naming the leader) until
/// elected, then leads until a signal (resigning) or until its leadership is lost (exiting).
fn run_elected(
    l: Listen,
    etcd: Arc<Etcd>,
    advertise: Option<String>,
    ttl: Duration,
    mut signals: signal_hook::iterator::Signals,
) -> Result<(), DaemonError> {
    let gate = Arc::new(Gate::new());
    let server = daemon::serve(
        &l.addr,
        l.key.clone(),
        gate.clone(),
        ServerConfig::default(),
    )?;
    let bound = server.local_addr();
    let advertise = match advertise {
        Some(a) => a,
        None if bound.ip().is_unspecified() => return Err(DaemonError::NeedsAdvertise(bound)),
        None => bound.to_string(),
    };
    tracing::info!(listen = %bound, %advertise, etcd = %etcd.target().endpoints_text(),
        prefix = %etcd.target().prefix, "manager listening; campaigning for leadership");
    let (tx, events): (Sender<Event>, Receiver<Event>) = mpsc::channel();
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let _ = sig_tx.send(Event::Signal(daemon::wait_for_shutdown(&mut signals)));
        })
        .map_err(|source| DaemonError::Thread {
            name: "signals",
            source,
        })?;
    let election = Election::new(etcd.clone(), &advertise, ttl)?;
    let g = gate.clone();
    std::thread::Builder::new()
        .name("election".into())
        .spawn(move || {
            let mut last: Option<String> = None;
            let won = election.campaign(|leader| {
                g.set_leader(leader);
                if leader.is_some() && leader.map(str::to_string) != last {
                    tracing::info!(leader = leader.unwrap_or_default(), "standing by");
                }
                last = leader.map(str::to_string);
            });
            let _ = tx.send(Event::Elected(won));
        })
        .map_err(|source| DaemonError::Thread {
            name: "election",
            source,
        })?;
    let leadership = match events.recv() {
        Ok(Event::Elected(won)) => won?,
        Ok(Event::Signal(sig)) => {
            tracing::info!(signal = sig, "shutting down while standing by");
            server.shutdown();
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let started = std::time::Instant::now();
    let store = EtcdStateStore::new(etcd, Some((leadership.key.clone(), leadership.lease)));
    if let Err(e) = store.check_cluster_key(&l.key) {
        leadership.resign();
        return Err(e.into());
    }
    let serving = match Serving::start(&l, Box::new(store), &gate) {
        Ok(s) => s,
        Err(e) => {
            leadership.resign();
            return Err(e);
        }
    };
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "elected: leading"
    );
    loop {
        if let Some(why) = leadership.lost(Duration::from_millis(100)) {
            tracing::error!(reason = %why, "leadership lost: stopping at once");
            server.shutdown();
            serving.stop();
            return Err(DaemonError::LeadershipLost(why));
        }
        if let Ok(Event::Signal(sig)) = events.try_recv() {
            tracing::info!(signal = sig, "shutting down: resigning the leadership");
            server.shutdown();
            serving.stop();
            leadership.resign();
            tracing::info!("manager stopped");
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    lego_monitor_client::logging::init();
    lego_monitors::monitor_main::exit_code("lego-manager", run(Args::parse()))
}
