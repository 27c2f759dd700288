//! The phases that build a vNode, from checking the inputs to configured vCPUs. Each phase is
//! one function; [`super::run`] calls them in order.

use super::VmError;
use crate::acpi::{self, AcpiInputs};
use crate::api::{ApiServer, LiveVm};
use crate::backends::{self, RemoteDevices};
use crate::boot::{self, BootEntry, BootSpec};
use crate::config::VmConfig;
use crate::cpu::vcpu::{Vcpu, VcpuShared};
use crate::device_manager::{self, Devices};
use crate::events::EventLog;
use crate::hotplug::{DeviceList, Hotplug};
use crate::kvm;
use crate::layout;
use crate::memory::{self, GuestMemory};
use crate::network::PreparedNet;
use crate::paging::pause::PauseGate;
use crate::paging::remote::RemoteGuestRam;
use crate::paging::{Pager, PagingConfig, PagingError};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use lego_devices::exit::ExitNotifier;
use lego_devices::virtio::rings::RingRegistry;
use std::borrow::Cow;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Maps a failed VM ioctl to [`VmError::VmIoctl`] naming the step.
fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::VmIoctl { what, source }
}

/// Preflight: checks the kernel, initrd, host memory, disks and vhost-user sockets before
/// anything is built, so that a bad input fails fast with a clear message.
pub fn preflight(config: &VmConfig) -> Result<(), VmError> {
    boot::check_readable(&config.kernel, config.initrd.as_deref())?;
    memory::check_available(config.resident_memory())?;
    device_manager::check_disks(config)?;
    device_manager::check_vhost_user(config)?;
    if let Some(path) = &config.api_socket {
        crate::api::server::check_path(path)?;
    }
    Ok(())
}

/// Opens the KVM device at `kvm_path` and checks it offers what a stock kernel needs.
pub fn open_kvm(kvm_path: &Path) -> Result<Kvm, VmError> {
    let kvm = kvm::open(kvm_path)?;
    kvm::probe_stock_kernel_support(&kvm)?;
    Ok(kvm)
}

/// Starts the remote devices' backends (they ask the manager for placement) and returns the
/// configuration with their sockets attached like any vhost-user-blk disk. The backends stop
/// when the returned [`RemoteDevices`] is dropped.
pub fn start_remote_backends(
    config: &VmConfig,
) -> Result<(Cow<'_, VmConfig>, Option<RemoteDevices>), VmError> {
    let Some(remote) = config
        .remote
        .as_ref()
        .filter(|r| r.memory.is_some() || r.disk.is_some())
    else {
        return Ok((Cow::Borrowed(config), None));
    };
    let devices = backends::start(remote)?;
    let mut with_remote = config.clone();
    with_remote
        .vhost_user_blk
        .extend(devices.sockets.iter().cloned());
    Ok((Cow::Owned(with_remote), Some(devices)))
}

/// Creates the VM with its in-kernel interrupt controllers and PIT, and without a vPMU.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(ioctl("create the VM"))?;
    disable_pmu(&vm);
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(ioctl("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(ioctl("create the in-kernel interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("create the PIT"))?;
    Ok(vm)
}

/// Asks KVM not to give the guest a PMU (older KVMs lack the capability: then nothing changes).
fn disable_pmu(vm: &VmFd) {
    let mut cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_PMU_CAPABILITY,
        ..Default::default()
    };
    cap.args[0] = u64::from(kvm_bindings::KVM_PMU_CAP_DISABLE);
    if let Err(e) = vm.enable_cap(&cap) {
        tracing::debug!("KVM keeps the vPMU: {e}");
    }
}

/// Guest RAM for the life of the run: the mapping and the file that backs it.
pub struct GuestRam {
    /// The mapping the VMM, its devices and KVM use.
    pub mem: GuestMemory,
    /// The backing file of shared guest RAM, kept open for the run (vhost-user backends
    /// map it; the pager frees evicted pages from it); `None` for private memory.
    pub backing: Option<Arc<File>>,
}

/// Guest memory: creates guest RAM ([`memory::create_guest_memory`]) with the backing the
/// configuration and its devices call for (logged, with why), and registers every region
/// with KVM as one memory slot.
pub fn guest_memory(vm: &VmFd, config: &VmConfig) -> Result<GuestRam, VmError> {
    let backing = config.memory_backing_used();
    tracing::info!(
        "{}",
        memory::describe_backing(config.memory_backing, backing, config.memory)
    );
    let (mem, backing) = memory::create_guest_memory(config.memory, backing)?;
    register_guest_memory(vm, &mem)?;
    Ok(GuestRam { mem, backing })
}

/// Registers each region of `mem` with KVM, slot by slot.
fn register_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|source| VmError::HostMapping { slot, source })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM's use of
        // it: [`super::run`] holds both until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(r) }.map_err(ioctl("register guest memory"))?;
    }
    Ok(())
}

/// Devices: creates every device of `config` and wires it into KVM; with paged guest RAM the
/// vhost-user backends hand `pager` their userfaultfds.
#[allow(clippy::too_many_arguments)]
pub fn create_devices(
    vm: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    exit: &ExitNotifier,
    rings: &RingRegistry,
    pager: Option<&Pager>,
    events: &Arc<EventLog>,
    nets: Vec<PreparedNet>,
) -> Result<Devices, VmError> {
    let backend_faults = pager.map(|p| p.backend_faults());
    Ok(device_manager::create(
        vm,
        mem,
        config,
        exit,
        rings,
        backend_faults,
        events,
        nets,
    )?)
}

/// Pager: with `--local-memory`, places the vNode's remote memory for guest RAM and starts
/// paging it (before anything is written into guest RAM: every page's first touch must be
/// seen). `None` when all of guest RAM stays local.
pub fn start_pager(
    config: &VmConfig,
    ram: &GuestRam,
    exit: &ExitNotifier,
    rings: &RingRegistry,
    gate: &Arc<PauseGate>,
) -> Result<Option<(Pager, Arc<RemoteGuestRam>)>, VmError> {
    let (Some(limit), Some(remote)) = (config.local_memory, &config.remote) else {
        return Ok(None);
    };
    let memfd = ram.backing.clone().ok_or(PagingError::NotShared)?;
    let store = Arc::new(RemoteGuestRam::open(remote, config.memory)?);
    let pager = Pager::start(
        &ram.mem,
        memfd,
        store.clone(),
        PagingConfig {
            prefetch: config.paging_prefetch,
            ..PagingConfig::new(limit)
        },
        exit.clone(),
        rings.clone(),
        gate.clone(),
    )?;
    Ok(Some((pager, store)))
}

/// ACPI tables: builds them for the vCPUs and devices and writes them into guest RAM.
/// Returns the guest address of the RSDP, for the boot parameters.
pub fn write_acpi_tables(
    mem: &GuestMemory,
    config: &VmConfig,
    devices: &Devices,
) -> Result<u64, VmError> {
    let tables = acpi::build(&AcpiInputs {
        vcpus: config.vcpus,
        virtio: devices.virtio.clone(),
        ports: device_manager::platform_ports(),
        hotplug: devices.hotplug.as_ref().map(|h| h.aml()),
    })?;
    for (addr, blob) in &tables.blobs {
        mem.write_slice(blob, GuestAddress(*addr))
            .map_err(VmError::AcpiWrite)?;
    }
    Ok(tables.rsdp_addr)
}

/// Load kernel: places the kernel, initrd, command line and boot parameters in guest RAM.
/// Returns where the boot vCPU starts.
pub fn load_kernel(
    mem: &GuestMemory,
    config: &VmConfig,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootEntry, VmError> {
    let (entry, format) = boot::load(
        mem,
        &BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline,
            mem_size: config.memory,
            rsdp_addr,
        },
    )?;
    tracing::info!(
        kernel = %config.kernel.display(), ?format, ?entry,
        memory_mib = config.memory >> 20, vcpus = config.vcpus, disks = config.disks.len(),
        vhost_user_blk = config.vhost_user_blk.len(),
        "booting vNode"
    );
    Ok(entry)
}

/// vCPUs: creates and configures every vCPU (CPUID, registers, MSRs, LAPIC), ready to run;
/// each passes `gate` before entering the guest.
#[allow(clippy::too_many_arguments)]
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    devices: &Devices,
    exit: &ExitNotifier,
    entry: BootEntry,
    gate: Arc<PauseGate>,
) -> Result<Vec<Vcpu>, VmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("read the supported CPUID"))?;
    if !crate::cpu::cpuid::has_kvm_leaves(cpuid.as_slice()) {
        tracing::warn!("KVM offers no paravirtual CPUID leaves: the guest will not use kvm-clock");
    }
    let shared = VcpuShared {
        vm,
        mem,
        cpuid: &cpuid,
        vcpus: config.vcpus,
        entry,
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        exit: exit.clone(),
        gate,
    };
    Ok((0..config.vcpus)
        .map(|id| Vcpu::new(id, &shared))
        .collect::<Result<Vec<_>, _>>()?)
}

/// API: serves `--api-socket` (if given) over the running vNode's devices, pause gate,
/// exit notifier and pager; dropping the server stops it and removes the socket.
pub fn start_api(
    config: &VmConfig,
    devices: &DeviceList,
    hotplug: Option<&Arc<Hotplug>>,
    gate: &Arc<PauseGate>,
    exit: &ExitNotifier,
    pager: Option<&(Pager, Arc<RemoteGuestRam>)>,
    events: &Arc<EventLog>,
) -> Result<Option<ApiServer>, VmError> {
    let Some(path) = &config.api_socket else {
        return Ok(None);
    };
    let vm = LiveVm::new(
        config,
        devices.clone(),
        gate.clone(),
        exit.clone(),
        pager.map(|(p, _)| p.view()),
        events.clone(),
        hotplug.cloned(),
    );
    Ok(Some(ApiServer::start(path, Arc::new(vm))?))
}

/// Tells the event log the vNode runs, with each device it started with.
pub fn tell_started(events: &EventLog, config: &VmConfig, devices: &Devices) {
    for d in &devices.live {
        events.emit(
            "device_added",
            serde_json::to_value(&d.info).unwrap_or_default(),
        );
    }
    events.emit(
        "started",
        serde_json::json!({
            "pid": std::process::id(),
            "vnode": config.remote.as_ref().map(|r| r.vnode),
            "vcpus": config.vcpus,
            "memory_bytes": config.memory,
            "api_socket": config.api_socket,
        }),
    );
}

/// Network: the vNode's address from the manager (through the claim's connection), its taps
/// opened and bridged; before the guest is built, so that a missing tap or an exhausted
/// address pool stops legovmm with a clear error.
pub fn prepare_network(
    config: &VmConfig,
    claim: Option<&crate::claim::Claim>,
) -> Result<Vec<PreparedNet>, VmError> {
    Ok(crate::network::prepare(
        config,
        claim.and_then(crate::claim::Claim::manager),
    )?)
}

/// Claims the vNode id at the manager before anything of the vNode is placed or touched (a
/// vNode runs once; see [`crate::claim`]), when the vNode has an id.
pub fn claim(config: &VmConfig) -> Result<Option<crate::claim::Claim>, crate::claim::ClaimError> {
    let Some(remote) = config.remote.as_ref() else {
        return Ok(None);
    };
    let up = crate::announce::describe(config, remote.vnode, &[]);
    crate::claim::claim(remote, &up).map(Some)
}

/// Announce: tells the manager the vNode runs with the devices `devices` lists (again every
/// interval, and that it stopped when the returned announcer drops), when the vNode has an id.
pub fn announce(config: &VmConfig, devices: &DeviceList) -> Option<crate::announce::Announcer> {
    let remote = config.remote.as_ref()?;
    let list = devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let up = crate::announce::describe(config, remote.vnode, &list);
    crate::announce::Announcer::start(remote, up, devices.clone())
}
