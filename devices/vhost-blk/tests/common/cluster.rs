//! An in-process cluster for the integration tests: a manager, a memory monitor and a storage
//! monitor from `lego-monitors`, served on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use lego_fabric::{ClusterKey, ServerConfig, ServerHandle};
use lego_monitor_client::proto::manager::{MonitorKind, RegisterMonitor};
use lego_monitors::manager::core::{Manager, ManagerSettings};
use lego_monitors::manager::service::ManagerService;
use lego_monitors::manager::state::MemoryStateStore;
use lego_monitors::memory_service::MemoryService;
use lego_monitors::pagestore::PageStore;
use lego_monitors::storage_service::StorageService;
use lego_monitors::volume::VolumeStore;

/// What the memory monitor offers (pages are only allocated when written).
pub const MEMORY_CAPACITY: u64 = 512 << 20;

/// A manager plus one memory and one storage monitor, all on 127.0.0.1.
pub struct Cluster {
    /// The cluster key.
    pub key: ClusterKey,
    /// The manager's fabric address.
    pub manager_addr: String,
    /// The memory monitor's pages.
    pub pages: Arc<PageStore>,
    /// The storage monitor's data folder.
    pub volumes_dir: tempfile::TempDir,
    memory: Option<ServerHandle>,
    storage: Option<ServerHandle>,
    pending_storage: Option<std::sync::mpsc::Receiver<ServerHandle>>,
    _servers: Vec<ServerHandle>,
}

/// The storage monitor's incarnation in these tests until a "reboot" changes it.
const STORAGE_INCARNATION: u64 = 0x5707;

fn serve_storage(
    key: &ClusterKey,
    addr: &str,
    dir: &std::path::Path,
    incarnation: u64,
) -> ServerHandle {
    let volumes = Arc::new(VolumeStore::open(dir).expect("volumes"));
    lego_monitors::daemon::serve(
        addr,
        key.clone(),
        Arc::new(StorageService::new(volumes, 1 << 30)),
        ServerConfig {
            incarnation: Some(incarnation),
            ..ServerConfig::default()
        },
    )
    .expect("serve the storage monitor")
}

fn serve(key: &ClusterKey, handler: Arc<dyn lego_fabric::Handler>) -> ServerHandle {
    lego_monitors::daemon::serve("127.0.0.1:0", key.clone(), handler, ServerConfig::default())
        .expect("serve on loopback")
}

impl Cluster {
    /// Starts the three services and registers both monitors with the manager.
    pub fn start() -> Cluster {
        Self::start_with_capability_ttl(ManagerSettings::default().capability_ttl)
    }

    /// [`Cluster::start`] with a manager that issues capabilities valid for `ttl`.
    pub fn start_with_capability_ttl(ttl: Duration) -> Cluster {
        let key = ClusterKey::from_bytes([7; 32]);
        let manager = Arc::new(
            Manager::new(
                ManagerSettings {
                    region_size: 1 << 20,
                    // No heartbeats are sent here: keep every monitor alive for the test.
                    heartbeat_interval: Duration::from_secs(3600),
                    capability_ttl: ttl,
                    ..ManagerSettings::default()
                },
                lego_fabric::CapabilityKey::derive(&key),
                Box::new(MemoryStateStore::default()),
            )
            .expect("manager"),
        );
        let m = serve(&key, Arc::new(ManagerService::new(manager.clone())));
        let pages = Arc::new(PageStore::new(MEMORY_CAPACITY));
        let mem = serve(&key, Arc::new(MemoryService::new(pages.clone())));
        let volumes_dir = tempfile::tempdir().expect("tempdir");
        let st = serve_storage(&key, "127.0.0.1:0", volumes_dir.path(), STORAGE_INCARNATION);
        for (kind, server, capacity) in [
            (MonitorKind::Memory, &mem, MEMORY_CAPACITY),
            (MonitorKind::Storage, &st, 1 << 30),
        ] {
            manager
                .register(&RegisterMonitor {
                    kind,
                    addr: server.local_addr().to_string(),
                    capacity_bytes: capacity,
                    used_bytes: 0,
                    incarnation: None,
                })
                .expect("register");
        }
        Cluster {
            key,
            manager_addr: m.local_addr().to_string(),
            pages,
            volumes_dir,
            memory: Some(mem),
            storage: Some(st),
            pending_storage: None,
            _servers: vec![m],
        }
    }

    /// Stops the memory monitor and starts an empty one (a new incarnation) at its address,
    /// as a monitor killed and restarted would be; returns the new one's pages.
    pub fn restart_memory(&mut self) -> Arc<PageStore> {
        let old = self.memory.take().expect("the memory monitor runs");
        let addr = old.local_addr();
        old.shutdown();
        let pages = Arc::new(PageStore::new(MEMORY_CAPACITY));
        let mem = lego_monitors::daemon::serve(
            &addr.to_string(),
            self.key.clone(),
            Arc::new(MemoryService::new(pages.clone())),
            ServerConfig::default(),
        )
        .expect("serve again at the same address");
        self.memory = Some(mem);
        self.pages = pages.clone();
        pages
    }

    /// Stops the storage monitor, waits `gap`, and serves the same volumes again at the
    /// same address: as after a restart of its process (`rebooted` false: same incarnation)
    /// or of its machine (`rebooted` true: a new one). Runs the restart on a thread and
    /// returns at once, so the caller can issue requests during the gap.
    pub fn restart_storage(
        &mut self,
        gap: Duration,
        rebooted: bool,
    ) -> std::thread::JoinHandle<()> {
        let old = self.storage.take().expect("the storage monitor runs");
        let addr = old.local_addr();
        old.shutdown();
        let key = self.key.clone();
        let dir = self.volumes_dir.path().to_path_buf();
        let incarnation = STORAGE_INCARNATION + u64::from(rebooted);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(gap);
            tx.send(serve_storage(&key, &addr.to_string(), &dir, incarnation))
                .expect("the test waits for the new server");
        });
        self.pending_storage = Some(rx);
        t
    }

    /// Takes over the storage monitor a [`Cluster::restart_storage`] started.
    pub fn storage_restarted(&mut self) {
        let rx = self.pending_storage.take().expect("a restart was started");
        self.storage = Some(rx.recv().expect("the new storage monitor"));
    }

    /// The key as `LEGO_CLUSTER_KEY` wants it.
    pub fn key_hex(&self) -> String {
        self.key.to_hex()
    }
}
