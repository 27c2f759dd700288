//! Building and running one vNode, in named phases (the order [`run`] calls them):
//!
//! 1. preflight: check the inputs and the host before anything is built ([`build::preflight`]);
//!    and make its network ready: address, taps, bridge ([`build::prepare_network`]);
//! 2. open KVM and start the remote devices' backends ([`build::open_kvm`],
//!    [`build::start_remote_backends`]);
//! 3. create the VM: interrupt controllers, PIT, TSS ([`build::create_vm`]);
//! 4. guest memory: create guest RAM and register it with KVM ([`build::guest_memory`]);
//! 5. devices: create them and wire them into KVM ([`build::create_devices`]);
//! 6. ACPI tables and kernel: write the tables, load kernel, initrd and command line
//!    ([`build::write_acpi_tables`], [`build::load_kernel`]);
//! 7. start the vCPUs: configure each one, serve the API socket if asked
//!    ([`build::start_api`]), then run each vCPU on its own thread ([`build::create_vcpus`],
//!    [`running::start_vcpus`]), and announce the vNode to the manager when it has an id
//!    ([`build::announce`]);
//! 8. wait for the guest (or a signal) to end the vNode ([`running::wait_for_end`]);
//! 9. tear down: stop and join the vCPUs, then drop devices, memory, VM and backends in that
//!    order ([`running::tear_down`]); tell the manager the vNode stopped.

pub mod build;
pub mod running;
mod signals;

use crate::backends;
use crate::boot;
use crate::config::VmConfig;
use crate::device_manager;
use crate::events::EventLog;
use crate::hotplug::{DeviceList, Hotplug, RemoteSetup};
use crate::kvm;
use crate::memory;
use crate::memory::MemoryBacking;
use crate::paging::pause::PauseGate;
use lego_devices::exit::{ExitNotifier, GuestExit};
use lego_devices::virtio::rings::RingRegistry;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How the vNode ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ended itself.
    Guest(GuestExit),
    /// The VMM was told to stop by a signal.
    Signal(i32),
}

/// Errors building or running the vNode.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    /// A KVM VM-level ioctl failed.
    #[error("cannot {what}")]
    VmIoctl {
        /// The step.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// A device could not be created.
    #[error(transparent)]
    Devices(#[from] device_manager::DeviceError),
    /// ACPI tables could not be built or written.
    #[error("cannot set up ACPI tables")]
    Acpi(#[from] crate::acpi::AcpiError),
    /// The ACPI tables could not be written into guest memory.
    #[error("cannot write the ACPI tables into guest memory")]
    AcpiWrite(#[source] vm_memory::GuestMemoryError),
    /// A guest memory region has no host mapping to register with KVM.
    #[error("guest memory region {slot} has no host mapping")]
    HostMapping {
        /// The region's KVM slot.
        slot: usize,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] crate::cpu::vcpu::VcpuError),
    /// A remote device's backend could not be started.
    #[error(transparent)]
    Backend(#[from] backends::BackendError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// Paged guest RAM could not be set up.
    #[error(transparent)]
    Paging(#[from] crate::paging::PagingError),
    /// The vNode's remote memory for paged guest RAM could not be opened.
    #[error(transparent)]
    Remote(#[from] crate::paging::remote::RemoteError),
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The event log could not be opened.
    #[error(transparent)]
    Events(#[from] crate::events::EventsError),
    /// Another legovmm runs the vNode.
    #[error(transparent)]
    Claim(#[from] crate::claim::ClaimError),
    /// The vNode's network could not be made ready.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
}

/// Boots `config` on the KVM at `kvm_path` and runs it to the end.
///
/// The locals are declared in the order the phases create them, so that on every return
/// path they drop in reverse: devices before guest RAM, guest RAM before the VM, the VM
/// before the remote backends.
pub fn run(config: &VmConfig, kvm_path: &Path) -> Result<Outcome, VmError> {
    let started = Instant::now();
    build::preflight(config)?;
    let mut claim = build::claim(config)?;
    let nets = build::prepare_network(config, claim.as_ref())?;
    let cmdline = crate::network::cmdline_with_addresses(&config.cmdline, &nets);
    let events = Arc::new(EventLog::from_config(config.events.as_deref())?);
    let kvm = build::open_kvm(kvm_path)?;
    let (config, _remote) = build::start_remote_backends(config)?;
    let vm = Arc::new(build::create_vm(&kvm)?);
    let ram = build::guest_memory(&vm, &config)?;
    let exit = ExitNotifier::new().map_err(VmError::Thread)?;
    let rings = RingRegistry::new();
    let gate = Arc::new(PauseGate::new());
    let pager = build::start_pager(&config, &ram, &exit, &rings, &gate)?;
    let mut devices = build::create_devices(
        &vm,
        &ram.mem,
        &config,
        &exit,
        &rings,
        pager.as_ref().map(|(p, _)| p),
        &events,
        nets,
    )?;
    let rsdp_addr = build::write_acpi_tables(&ram.mem, &config, &devices)?;
    let entry = build::load_kernel(&ram.mem, &config, &cmdline, rsdp_addr)?;
    let vcpus = build::create_vcpus(
        &kvm,
        &vm,
        &ram.mem,
        &config,
        &devices,
        &exit,
        entry,
        gate.clone(),
    )?;
    let device_list: DeviceList = Arc::new(Mutex::new(devices.live.clone()));
    let hotplug = devices.hotplug.take().map(|board| {
        Arc::new(Hotplug::new(
            vm.clone(),
            ram.mem.clone(),
            rings.clone(),
            events.clone(),
            board,
            device_list.clone(),
            RemoteSetup {
                cluster: config.remote.clone(),
                shared_ram: config.memory_backing_used() != MemoryBacking::Private,
                backend_faults: pager.as_ref().map(|(p, _)| p.backend_faults()),
            },
        ))
    });
    let api = build::start_api(
        &config,
        &device_list,
        hotplug.as_ref(),
        &gate,
        &exit,
        pager.as_ref(),
        &events,
    )?;
    let vcpus = running::start_vcpus(vcpus, &exit, started)?;
    build::tell_started(&events, &config, &devices);
    let announcer = build::announce(&config, &device_list);
    if let (Some(c), Some(_)) = (claim.as_mut(), announcer.as_ref()) {
        c.announced();
    }
    if let Some((p, _)) = &pager {
        p.arm();
    }
    let outcome = running::wait_for_end(&exit);
    if let Outcome::Guest(GuestExit::Crashed(why)) = &outcome {
        events.emit("guest_panic", serde_json::json!({ "detail": why }));
    }
    drop(api);
    let all_stopped = running::tear_down(vcpus, devices, &outcome, started);
    drop(announcer);
    if let Some((pager, remote)) = pager {
        let failed = pager.failure().is_some();
        pager.stop();
        // After a failure the monitors are what failed: freeing would only wait on them.
        if !failed {
            remote.release();
        }
    }
    events.emit("stopped", crate::events::stopped_fields(&outcome));
    if !all_stopped {
        // A vCPU is blocked on a page of guest RAM that could not be had: unmapping guest
        // RAM or closing the VM under it is not safe; the process is about to exit.
        std::mem::forget(ram);
        std::mem::forget(vm);
    }
    Ok(outcome)
}
