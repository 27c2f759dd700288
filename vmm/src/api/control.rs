//! What the API can do to a running vNode: [`VmControl`], and [`LiveVm`], its implementation
//! over the VM's pause gate, exit notifier, devices and pager.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_devices::exit::{ExitNotifier, GuestExit};
use lego_devices::virtio::block::request::counters::BlockCounters;

use super::model::{
    AddDisk, AddRemoteDisk, AddRemoteMemory, ConfigInfo, Counters, DeviceCounters, DeviceInfo,
    MemoryInfo, PagingCounters, ShutdownStarted, VmInfo, VmState,
};
use crate::hotplug::{DeviceList, Hotplug, HotplugError, NewDisk};
use crate::paging::pause::{PauseError, PauseGate};
use crate::paging::table::PAGE;
use crate::paging::PagerView;

/// How long `vm.pause` waits for the vCPUs to park.
pub const PAUSE_PATIENCE: Duration = Duration::from_secs(5);

/// Errors of an action on the vNode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// `vm.pause` on a paused vNode.
    #[error("the vNode is already paused")]
    AlreadyPaused,
    /// `vm.resume` on a running vNode.
    #[error("the vNode is not paused")]
    NotPaused,
    /// The vCPUs did not park.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// A device could not be added or removed.
    #[error(transparent)]
    Hotplug(#[from] HotplugErrorText),
    /// A size could not be read.
    #[error("{0}")]
    BadSize(String),
    /// The vNode has no hotplug slots.
    #[error("this vNode has no hotplug slots (its boot devices took every virtio window)")]
    NoHotplug,
}

/// A hotplug error as the API reports it: its kind (for the HTTP status) and its sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct HotplugErrorText {
    /// What kind of failure.
    pub kind: HotplugFailure,
    /// The error chain, as text.
    pub message: String,
}

/// The kinds of hotplug failure the API tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotplugFailure {
    /// The request names something that does not exist or cannot be used (400).
    BadRequest,
    /// No such device (404).
    NotFound,
    /// The vNode's state refuses it: no free slot, a boot device (409).
    Conflict,
    /// The guest did not let go in time (504).
    GuestTimeout,
    /// The cluster could not provide the device: its backend did not come up (502).
    Upstream,
    /// legovmm failed (500).
    Internal,
}

impl From<HotplugError> for HotplugErrorText {
    fn from(e: HotplugError) -> Self {
        let kind = match &e {
            HotplugError::BadDisk { .. } | HotplugError::Disk { .. } => HotplugFailure::BadRequest,
            HotplugError::UnknownDevice(_) => HotplugFailure::NotFound,
            HotplugError::NoFreeSlot(_)
            | HotplugError::NotHotplugged(_)
            | HotplugError::NoCluster
            | HotplugError::RemoteMemoryTaken(_)
            | HotplugError::PrivateRam => HotplugFailure::Conflict,
            HotplugError::Backend { .. } | HotplugError::VhostUser { .. } => {
                HotplugFailure::Upstream
            }
            HotplugError::GuestKeeps { .. } => HotplugFailure::GuestTimeout,
            HotplugError::Wiring(_) | HotplugError::Interrupt(_) => HotplugFailure::Internal,
        };
        Self {
            kind,
            message: lego_report::error_chain(&e),
        }
    }
}

/// The actions and views the API offers on one vNode.
pub trait VmControl: Send + Sync {
    /// The configuration and state.
    fn info(&self) -> VmInfo;
    /// The devices' and pager's counters.
    fn counters(&self) -> Counters;
    /// Parks the vCPUs until [`VmControl::resume`].
    fn pause(&self) -> Result<(), ControlError>;
    /// Lets paused vCPUs run again.
    fn resume(&self) -> Result<(), ControlError>;
    /// Ends the vNode (legovmm then exits with status 0): presses the power button and
    /// stops the guest after `grace` unless it powers off first; a zero grace stops it now.
    fn shutdown(&self, grace: Duration) -> ShutdownStarted;
    /// The figures in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Attaches a disk to the running vNode.
    fn add_disk(&self, disk: &AddDisk) -> Result<DeviceInfo, ControlError>;
    /// Attaches the vNode's remote volume (created when a size is given).
    fn add_remote_disk(&self, disk: &AddRemoteDisk) -> Result<DeviceInfo, ControlError>;
    /// Attaches `size` of the vNode's remote memory (swap in the guest image).
    fn add_remote_memory(&self, memory: &AddRemoteMemory) -> Result<DeviceInfo, ControlError>;
    /// Detaches a device added through the API, once the guest has let go of it.
    fn remove_device(&self, id: &str) -> Result<(), ControlError>;
}

/// A device of the running vNode, as the API shows it.
#[derive(Debug, Clone)]
pub struct LiveDevice {
    /// What `vm.info` says about it.
    pub info: DeviceInfo,
    /// Its request counters, when legovmm serves it.
    pub counters: Option<Arc<BlockCounters>>,
}

/// The running vNode, seen from the API thread.
#[derive(Clone)]
pub struct LiveVm {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) started: Instant,
    pub(super) config: ConfigInfo,
    pub(super) total_bytes: u64,
    pub(super) local_limit: Option<u64>,
    pub(super) devices: DeviceList,
    pub(super) hotplug: Option<Arc<Hotplug>>,
    pub(super) gate: Arc<PauseGate>,
    pub(super) exit: ExitNotifier,
    pub(super) pager: Option<PagerView>,
    pub(super) events: Arc<crate::events::EventLog>,
}

impl Inner {
    /// The devices now attached.
    pub(super) fn device_list(&self) -> Vec<LiveDevice> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl LiveVm {
    /// The view of a vNode configured by `config` with `devices`, paused through `gate`,
    /// stopped through `exit`, its guest RAM paged by `pager` if any.
    /// `devices` lists the devices (the hotplug controller, when there is one, adds to it).
    pub fn new(
        config: &crate::config::VmConfig,
        devices: DeviceList,
        gate: Arc<PauseGate>,
        exit: ExitNotifier,
        pager: Option<PagerView>,
        events: Arc<crate::events::EventLog>,
        hotplug: Option<Arc<Hotplug>>,
    ) -> Self {
        let remote = config.remote.as_ref();
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                config: ConfigInfo {
                    kernel: config.kernel.display().to_string(),
                    initrd: config.initrd.as_ref().map(|p| p.display().to_string()),
                    cmdline: config.cmdline.clone(),
                    vcpus: config.vcpus,
                    vnode: remote.map(|r| r.vnode),
                    manager: remote.map(|r| r.manager.clone()),
                },
                total_bytes: config.memory,
                local_limit: config.local_memory,
                devices,
                gate,
                exit,
                pager,
                events,
                hotplug,
            }),
        }
    }
}

impl LiveVm {
    /// Ends the vNode now (`GuestExit::Shutdown`), waking vCPUs parked by a pause.
    fn stop_now(&self, power_button: bool) -> ShutdownStarted {
        self.inner.exit.notify(GuestExit::Shutdown);
        self.inner.gate.release();
        ShutdownStarted {
            power_button,
            grace_s: 0,
        }
    }
}

impl VmControl for LiveVm {
    fn info(&self) -> VmInfo {
        let i = &self.inner;
        let counts = i.pager.as_ref().map(|p| p.counts());
        VmInfo {
            state: if i.gate.held() {
                VmState::Paused
            } else {
                VmState::Running
            },
            pid: std::process::id(),
            uptime_ms: i.started.elapsed().as_millis() as u64,
            config: i.config.clone(),
            memory: MemoryInfo {
                total_bytes: i.total_bytes,
                local_limit_bytes: i.local_limit,
                resident_bytes: counts.map(|(r, _)| r * PAGE as u64),
                remote_bytes: counts.map(|(_, r)| r * PAGE as u64),
            },
            devices: i.device_list().into_iter().map(|d| d.info).collect(),
        }
    }

    fn counters(&self) -> Counters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let devices = self
            .inner
            .device_list()
            .iter()
            .filter_map(|d| {
                let c = d.counters.as_ref()?;
                Some((
                    d.info.id.clone(),
                    DeviceCounters {
                        requests: load(&c.requests),
                        errors: load(&c.errors),
                        read_bytes: load(&c.bytes_to_guest),
                        written_bytes: load(&c.bytes_from_guest),
                        latency_us_total: load(&c.batch_latency_sum_us),
                    },
                ))
            })
            .collect::<BTreeMap<_, _>>();
        let paging = self.inner.pager.as_ref().map(|p| {
            let s = p.stats();
            PagingCounters {
                zero_faults: load(&s.zero_faults),
                fetch_faults: load(&s.fetch_faults),
                fetched_pages: load(&s.fetched_pages),
                evicted_clean: load(&s.evicted_clean),
                evicted_dirty: load(&s.evicted_dirty),
                evicted_zero: load(&s.evicted_zero),
                pauses: load(&s.pauses),
                max_resident_pages: load(&s.max_resident),
                fetch_p50_us: s.fetch_quantile_us(0.5),
                fetch_p99_us: s.fetch_quantile_us(0.99),
            }
        });
        Counters { devices, paging }
    }

    fn pause(&self) -> Result<(), ControlError> {
        if self.inner.gate.held() {
            return Err(ControlError::AlreadyPaused);
        }
        self.inner
            .gate
            .hold(crate::kick::signal_number(), PAUSE_PATIENCE)?;
        tracing::info!("vNode paused through the API");
        self.inner.events.emit("paused", serde_json::json!({}));
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        if !self.inner.gate.held() {
            return Err(ControlError::NotPaused);
        }
        self.inner.gate.release();
        tracing::info!("vNode resumed through the API");
        self.inner.events.emit("resumed", serde_json::json!({}));
        Ok(())
    }

    fn shutdown(&self, grace: Duration) -> ShutdownStarted {
        let i = &self.inner;
        // A paused guest cannot act on the button: it is stopped at once.
        let pressed = !grace.is_zero()
            && !i.gate.held()
            && match &i.hotplug {
                Some(h) => h
                    .press_power_button()
                    .map_err(|e| tracing::warn!("cannot press the power button: {e}"))
                    .is_ok(),
                None => false,
            };
        if !pressed {
            tracing::info!("vNode shut down through the API");
            return self.stop_now(false);
        }
        let secs = grace.as_secs() as u32;
        tracing::info!("power button pressed through the API; the guest has {secs} s to power off");
        i.events
            .emit("power_button", serde_json::json!({ "grace_s": secs }));
        let (exit, gate) = (i.exit.clone(), i.gate.clone());
        let timer = std::thread::Builder::new()
            .name("shutdown-grace".into())
            .spawn(move || {
                std::thread::sleep(grace);
                tracing::info!("the guest did not power off within {secs} s; stopping it");
                exit.notify(GuestExit::Shutdown);
                gate.release();
            });
        if let Err(e) = timer {
            tracing::warn!("cannot start the shutdown timer ({e}); stopping the vNode now");
            return self.stop_now(true);
        }
        ShutdownStarted {
            power_button: true,
            grace_s: secs,
        }
    }

    fn metrics(&self) -> String {
        super::metrics::encode(self)
    }

    fn add_disk(&self, disk: &AddDisk) -> Result<DeviceInfo, ControlError> {
        let hotplug = self.inner.hotplug.as_ref().ok_or(ControlError::NoHotplug)?;
        let new = NewDisk {
            path: disk.path.clone().into(),
            read_only: disk.read_only,
        };
        let info = hotplug.add_disk(&new).map_err(HotplugErrorText::from)?;
        tracing::info!(device = %info.id, path = %disk.path, "disk added through the API");
        Ok(info)
    }

    fn add_remote_disk(&self, disk: &AddRemoteDisk) -> Result<DeviceInfo, ControlError> {
        let hotplug = self.inner.hotplug.as_ref().ok_or(ControlError::NoHotplug)?;
        let size = match &disk.size {
            Some(s) => Some(
                crate::config::parse_size(s).map_err(|e| ControlError::BadSize(e.to_string()))?,
            ),
            None => None,
        };
        let info = hotplug
            .add_remote_disk(&disk.volume, size)
            .map_err(HotplugErrorText::from)?;
        tracing::info!(device = %info.id, volume = %disk.volume, "remote disk added through the API");
        Ok(info)
    }

    fn add_remote_memory(&self, memory: &AddRemoteMemory) -> Result<DeviceInfo, ControlError> {
        let hotplug = self.inner.hotplug.as_ref().ok_or(ControlError::NoHotplug)?;
        let size = crate::config::parse_size(&memory.size)
            .map_err(|e| ControlError::BadSize(e.to_string()))?;
        if size == 0 || size % (1 << 20) != 0 {
            return Err(ControlError::BadSize(format!(
                "remote memory comes in whole MiB, not {} ({size} bytes)",
                memory.size
            )));
        }
        let info = hotplug
            .add_remote_memory(size)
            .map_err(HotplugErrorText::from)?;
        tracing::info!(device = %info.id, size, "remote memory added through the API");
        Ok(info)
    }

    fn remove_device(&self, id: &str) -> Result<(), ControlError> {
        let hotplug = self.inner.hotplug.as_ref().ok_or(ControlError::NoHotplug)?;
        hotplug.remove(id).map_err(HotplugErrorText::from)?;
        tracing::info!(device = %id, "device removed through the API");
        Ok(())
    }
}
