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
    _servers: Vec<ServerHandle>,
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
                key.clone(),
                Box::new(MemoryStateStore::default()),
            )
            .expect("manager"),
        );
        let m = serve(&key, Arc::new(ManagerService::new(manager.clone())));
        let pages = Arc::new(PageStore::new(MEMORY_CAPACITY));
        let mem = serve(&key, Arc::new(MemoryService::new(pages.clone())));
        let volumes_dir = tempfile::tempdir().expect("tempdir");
        let volumes = Arc::new(VolumeStore::open(volumes_dir.path()).expect("volumes"));
        let st = serve(&key, Arc::new(StorageService::new(volumes, 1 << 30)));
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
                })
                .expect("register");
        }
        Cluster {
            key,
            manager_addr: m.local_addr().to_string(),
            pages,
            volumes_dir,
            memory: Some(mem),
            _servers: vec![m, st],
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

    /// The key as `LEGO_CLUSTER_KEY` wants it.
    pub fn key_hex(&self) -> String {
        self.key.to_hex()
    }
}
