//! What the API can do to a running vNode: [`VmControl`], and [`LiveVm`], its implementation
//! over the VM's pause gate, exit notifier, devices and pager.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_devices::exit::{ExitNotifier, GuestExit};
use lego_devices::virtio::block::request::counters::BlockCounters;

use super::model::{
    ConfigInfo, Counters, DeviceCounters, DeviceInfo, MemoryInfo, PagingCounters, VmInfo, VmState,
};
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
    /// Ends the vNode (legovmm then exits with status 0).
    fn shutdown(&self);
    /// The figures in the Prometheus text format.
    fn metrics(&self) -> String;
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
    pub(super) devices: Vec<LiveDevice>,
    pub(super) gate: Arc<PauseGate>,
    pub(super) exit: ExitNotifier,
    pub(super) pager: Option<PagerView>,
}

impl LiveVm {
    /// The view of a vNode configured by `config` with `devices`, paused through `gate`,
    /// stopped through `exit`, its guest RAM paged by `pager` if any.
    pub fn new(
        config: &crate::config::VmConfig,
        devices: Vec<LiveDevice>,
        gate: Arc<PauseGate>,
        exit: ExitNotifier,
        pager: Option<PagerView>,
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
            }),
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
            devices: i.devices.iter().map(|d| d.info.clone()).collect(),
        }
    }

    fn counters(&self) -> Counters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let devices = self
            .inner
            .devices
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
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        if !self.inner.gate.held() {
            return Err(ControlError::NotPaused);
        }
        self.inner.gate.release();
        tracing::info!("vNode resumed through the API");
        Ok(())
    }

    fn shutdown(&self) {
        tracing::info!("vNode shut down through the API");
        self.inner.exit.notify(GuestExit::Shutdown);
        self.inner.gate.release();
    }

    fn metrics(&self) -> String {
        super::metrics::encode(self)
    }
}
