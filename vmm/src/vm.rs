//! Building and running one vNode: KVM VM, guest RAM, devices, ACPI, boot, vCPUs; then
//! waiting for the guest (or a signal) to end it and stopping everything cleanly.

use crate::acpi::{self, AcpiInputs};
use crate::backends;
use crate::boot::{self, BootSpec};
use crate::config::VmConfig;
use crate::cpu::vcpu::{Vcpu, VcpuShared};
use crate::device_manager;
use crate::kick;
use crate::kvm;
use crate::layout;
use crate::memory;
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use lego_devices::exit::{ExitNotifier, GuestExit};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

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
    #[error("cannot {what}: {source}")]
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
    #[error("cannot set up ACPI tables: {0}")]
    Acpi(String),
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
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// The eventfd that SIGINT/SIGTERM write to, and which signal arrived.
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    SIGNAL_RECEIVED.store(signal, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live u64 of 8 bytes and the
        // fd is the exit eventfd, which stays open for the life of the run.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

fn install_stop_signals(event_fd: i32) {
    SIGNAL_EVENT_FD.store(event_fd, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only performs async-signal-safe operations (atomics and write).
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Boots `config` on the KVM at `kvm_path` and runs it to the end.
pub fn run(config: &VmConfig, kvm_path: &Path) -> Result<Outcome, VmError> {
    let started = Instant::now();
    boot::check_readable(&config.kernel, config.initrd.as_deref())?;
    memory::check_available(config.memory)?;
    device_manager::check_disks(config)?;
    device_manager::check_vhost_user(config)?;
    let kvm = kvm::open(kvm_path)?;
    kvm::probe_stock_kernel_support(&kvm)?;
    // Remote devices: start their backends (they ask the manager for placement), then attach
    // their sockets like any vhost-user-blk disk. They stop when `_remote` is dropped.
    let mut with_remote;
    let mut config = config;
    let _remote = match &config.remote {
        Some(remote) => {
            let devices = backends::start(remote)?;
            with_remote = config.clone();
            with_remote
                .vhost_user_blk
                .extend(devices.sockets.iter().cloned());
            config = &with_remote;
            Some(devices)
        }
        None => None,
    };
    let ioctl = |what| move |source| VmError::VmIoctl { what, source };

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

    let (mem, _memfd) = memory::create_guest_memory(config.memory)?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Acpi(format!("guest region has no host mapping: {e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: both
        // are dropped when this function returns, after every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(r) }.map_err(ioctl("register guest memory"))?;
    }

    let exit = ExitNotifier::new().map_err(VmError::Thread)?;
    let devices = device_manager::create(&vm, &mem, config, &exit)?;

    let tables = acpi::build(&AcpiInputs {
        vcpus: config.vcpus,
        virtio: devices.virtio.clone(),
        ports: device_manager::platform_ports(),
    })
    .map_err(|e| VmError::Acpi(e.to_string()))?;
    for (addr, blob) in &tables.blobs {
        mem.write_slice(blob, GuestAddress(*addr))
            .map_err(|e| VmError::Acpi(e.to_string()))?;
    }

    let (entry, format) = boot::load(
        &mem,
        &BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &config.cmdline,
            mem_size: config.memory,
            rsdp_addr: tables.rsdp_addr,
        },
    )?;
    tracing::info!(
        kernel = %config.kernel.display(), ?format, ?entry,
        memory_mib = config.memory >> 20, vcpus = config.vcpus, disks = config.disks.len(),
        vhost_user_blk = config.vhost_user_blk.len(),
        "booting vNode"
    );

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("read the supported CPUID"))?;
    if !crate::cpu::cpuid::has_kvm_leaves(cpuid.as_slice()) {
        tracing::warn!("KVM offers no paravirtual CPUID leaves: the guest will not use kvm-clock");
    }
    let shared = VcpuShared {
        vm: &vm,
        mem: &mem,
        cpuid: &cpuid,
        vcpus: config.vcpus,
        entry,
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        exit: exit.clone(),
    };
    let vcpus = (0..config.vcpus)
        .map(|id| Vcpu::new(id, &shared))
        .collect::<Result<Vec<_>, _>>()?;

    kick::install();
    install_stop_signals(exit.event().as_raw_fd());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu.run(stop))
            .map_err(VmError::Thread)?;
        threads.push(t);
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "vCPUs running"
    );

    wait_readable(exit.event().as_raw_fd());
    let outcome = match exit.exit() {
        Some(e) => Outcome::Guest(e),
        None => Outcome::Signal(SIGNAL_RECEIVED.load(Ordering::SeqCst)),
    };

    stop.store(true, Ordering::Release);
    for t in &threads {
        while !t.is_finished() {
            kick::kick(t);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        ?outcome,
        "vNode stopped"
    );
    drop(devices);
    Ok(outcome)
}

/// Blocks until `fd` is readable, riding out signal interruptions.
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// Asks KVM not to give the guest a PMU (older KVMs lack the capability: then nothing changes).
fn disable_pmu(vm: &kvm_ioctls::VmFd) {
    let mut cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_PMU_CAPABILITY,
        ..Default::default()
    };
    cap.args[0] = u64::from(kvm_bindings::KVM_PMU_CAP_DISABLE);
    if let Err(e) = vm.enable_cap(&cap) {
        tracing::debug!("KVM keeps the vPMU: {e}");
    }
}
