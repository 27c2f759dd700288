//! The monitors' link to the manager: register, then heartbeat with current use; re-register
//! when the manager forgot us (e.g. it restarted without state) and reconnect when it is away.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use lego_fabric::{ClientConfig, ClusterKey, ErrorCode};

use lego_monitor_client::client::ManagerClient;
use lego_monitor_client::proto::manager::{Heartbeat, MonitorKind, RegisterMonitor};

/// Reports `(capacity_bytes, used_bytes)` of the monitor.
pub type UsageFn = Box<dyn Fn() -> (u64, u64) + Send>;

/// A running heartbeat thread; dropping it (or [`Agent::stop`]) stops it.
pub struct Agent {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the agent announces.
pub struct AgentConfig {
    /// Manager address, or the comma-separated addresses of a cluster's managers.
    pub manager: String,
    /// Monitor kind.
    pub kind: MonitorKind,
    /// Address announced to the manager.
    pub advertise: String,
    /// Heartbeat interval.
    pub interval: Duration,
    /// The monitor's fabric incarnation, reported at registration.
    pub incarnation: Option<u64>,
}

/// State of the heartbeat loop between ticks.
struct Link {
    cfg: AgentConfig,
    key: ClusterKey,
    usage: UsageFn,
    client: Option<ManagerClient>,
    registered: bool,
    /// Set while the manager is unreachable, so the warning is logged once, not every tick.
    failing: bool,
}

impl Link {
    fn connect(&mut self) {
        let cc = ClientConfig {
            timeout: self.cfg.interval.max(Duration::from_secs(2)),
            ..Default::default()
        };
        match ManagerClient::connect(&self.cfg.manager, self.key.clone(), cc) {
            Ok(c) => self.client = Some(c),
            Err(e) => self.failed(
                "cannot reach the manager; will keep retrying",
                &lego_report::error_chain(&e),
            ),
        }
    }

    fn failed(&mut self, what: &str, error: &str) {
        if self.failing {
            tracing::debug!(manager = %self.cfg.manager, error, "{what}");
        } else {
            tracing::warn!(manager = %self.cfg.manager, error, "{what}");
        }
        self.failing = true;
    }

    /// One registration or heartbeat; returns true when it should be retried at once.
    fn tick(&mut self) -> bool {
        let (capacity_bytes, used_bytes) = (self.usage)();
        if self.client.is_none() {
            self.connect();
        }
        let Some(c) = &self.client else { return false };
        let addr = self.cfg.advertise.clone();
        let r = if self.registered {
            c.heartbeat(&Heartbeat {
                addr,
                capacity_bytes,
                used_bytes,
            })
        } else {
            let kind = self.cfg.kind;
            c.register(&RegisterMonitor {
                kind,
                addr,
                capacity_bytes,
                used_bytes,
                incarnation: self.cfg.incarnation,
            })
            .map(|_| ())
        };
        match r {
            Ok(()) => {
                if !self.registered {
                    tracing::info!(manager = %self.cfg.manager, advertise = %self.cfg.advertise,
                        "registered with the manager");
                }
                self.registered = true;
                self.failing = false;
                false
            }
            Err(e) if e.remote_code() == Some(ErrorCode::NotFound) && self.registered => {
                tracing::info!("the manager does not know this monitor; registering again");
                self.registered = false;
                true
            }
            Err(e) => {
                self.failed(
                    "registration or heartbeat failed; reconnecting",
                    &lego_report::error_chain(&e),
                );
                self.client = None;
                self.registered = false;
                false
            }
        }
    }
}

impl Agent {
    /// Starts the heartbeat thread.
    pub fn start(cfg: AgentConfig, key: ClusterKey, usage: UsageFn) -> Agent {
        let (tx, rx) = mpsc::channel::<()>();
        let interval = cfg.interval;
        let mut link = Link {
            cfg,
            key,
            usage,
            client: None,
            registered: false,
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                if link.tick() {
                    continue;
                }
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the heartbeat thread");
        }
        Agent {
            stop: Some(tx),
            thread,
        }
    }

    /// Stops the heartbeat thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.halt();
    }
}
