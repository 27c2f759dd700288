//! Opening KVM, checking the capabilities the VMM needs, and probing whether this KVM can
//! boot a stock kernel at all (a paravirtual KVM such as PVM cannot).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the probe guest may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe guest memory size.
const PROBE_MEM: usize = 2 << 20;
/// Where the probe code runs (where a kernel would).
const PROBE_CODE: u64 = 0x10_0000;
/// The probe copies this many bytes backwards, as the kernel's decompressor relocates itself.
const PROBE_COPY_LEN: u64 = 0x1_0000;
const PROBE_COPY_SRC: u64 = 0x11_0000;
const PROBE_COPY_DST: u64 = 0x12_0000;

/// The probe's 64-bit code: a backwards `rep movsq` (what a bzImage's decompressor does
/// first, and where PVM stalls), then `out 0x80, 0x42` and `hlt`.
fn probe_code() -> Vec<u8> {
    let mut code = vec![0x48, 0xbe]; // mov rsi, imm64
    code.extend_from_slice(&(PROBE_COPY_SRC + PROBE_COPY_LEN - 8).to_le_bytes());
    code.extend_from_slice(&[0x48, 0xbf]); // mov rdi, imm64
    code.extend_from_slice(&(PROBE_COPY_DST + PROBE_COPY_LEN - 8).to_le_bytes());
    code.push(0xb9); // mov ecx, imm32
    code.extend_from_slice(&((PROBE_COPY_LEN / 8) as u32).to_le_bytes());
    code.extend_from_slice(&[0xfd, 0xf3, 0x48, 0xa5, 0xfc]); // std; rep movsq; cld
    code.extend_from_slice(&[0xb0, 0x42, 0xe6, 0x80, 0xf4]); // mov al, 0x42; out 0x80, al; hlt
    code
}

/// Errors reaching a usable KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No KVM device node.
    #[error("there is no KVM device at {0}: this host has no KVM (load kvm_intel or kvm_amd, or enable virtualization in the firmware); without it, run through the nested-KVM testbed (`lego-testbed`)")]
    Missing(String),
    /// Permission denied.
    #[error("permission denied opening {0}: run as root or add your user to the `kvm` group")]
    Permission(String),
    /// Another open failure.
    #[error("cannot open {path}")]
    Open {
        /// The device path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The API version is not the stable one.
    #[error("KVM at {path} speaks API version {found}, but legovmm needs version 12")]
    ApiVersion {
        /// The device path.
        path: String,
        /// The version found.
        found: i32,
    },
    /// A required capability is missing.
    #[error("this KVM lacks {0:?}, which legovmm needs")]
    MissingCap(Cap),
    /// The stock-kernel probe failed.
    #[error("this KVM cannot boot a stock kernel: {reason}. {hint}")]
    CannotBootStockKernels {
        /// What the probe saw.
        reason: String,
        /// What to do instead.
        hint: &'static str,
    },
}

const TESTBED_HINT: &str = "Run legovmm inside the nested-KVM testbed instead: `cargo run -p lego-testbed -- vnode -- <command>` boots a compute-host VM with a real KVM and runs legovmm there";

/// Capabilities the VMM relies on.
const REQUIRED_CAPS: [Cap; 7] = [
    Cap::Irqchip,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::Pit2,
    Cap::ExtCpuid,
];

/// Opens the KVM device at `path` and checks its API version and capabilities.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    let shown = path.display().to_string();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| KvmError::Missing(shown.clone()))?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing(shown.clone()),
        libc::EACCES | libc::EPERM => KvmError::Permission(shown.clone()),
        _ => KvmError::Open {
            path: shown.clone(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        },
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion {
            path: shown,
            found: version,
        });
    }
    for cap in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(cap));
        }
    }
    Ok(kvm)
}

/// Whether the host's /dev/kvm is served by PVM, the paravirtual KVM: its module is loaded
/// and neither hardware vendor module is.
fn is_pvm() -> bool {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Refuses PVM, then runs a few instructions in a scratch VM entered exactly as a stock kernel is (long mode,
/// identity paging, the boot GDT), then checks they ran. Takes a few milliseconds.
pub fn probe_stock_kernel_support(kvm: &Kvm) -> Result<(), KvmError> {
    if is_pvm() {
        // PVM runs the probe below, but emulates a stock kernel's boot path so slowly (and
        // then fails in instruction emulation) that it never reaches the console.
        return Err(KvmError::CannotBootStockKernels {
            reason: "this host's /dev/kvm is PVM (module kvm_pvm), a paravirtual KVM that only runs PVM-enabled guest kernels".into(),
            hint: TESTBED_HINT,
        });
    }
    let fail = |reason: String| KvmError::CannotBootStockKernels {
        reason,
        hint: TESTBED_HINT,
    };
    let vm = kvm
        .create_vm()
        .map_err(|e| fail(format!("creating a VM failed: {e}")))?;
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), PROBE_MEM)])
            .map_err(|e| fail(format!("cannot allocate probe memory: {e}")))?;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
    mem.write_slice(&probe_code(), vm_memory::GuestAddress(PROBE_CODE))
        .map_err(|e| fail(format!("cannot write probe code: {e}")))?;
    let pattern: Vec<u8> = (0..PROBE_COPY_LEN).map(|i| (i * 7 + 3) as u8).collect();
    mem.write_slice(&pattern, vm_memory::GuestAddress(PROBE_COPY_SRC))
        .map_err(|e| fail(format!("cannot write probe data: {e}")))?;
    let region = mem
        .iter()
        .next()
        .ok_or_else(|| fail("no probe memory".into()))?;
    let host_addr = mem
        .get_host_address(vm_memory::GuestAddress(0))
        .map_err(|e| fail(format!("probe memory has no host address: {e}")))?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`, which
    // outlives the VM (both are dropped at the end of this function, the VM first).
    unsafe { vm.set_user_memory_region(slot) }
        .map_err(|e| fail(format!("registering memory failed: {e}")))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| fail(format!("creating a vCPU failed: {e}")))?;
    let entry = crate::boot::BootEntry::Linux64 { entry: PROBE_CODE };
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| fail(format!("reading sregs failed: {e}")))?;
    let sregs = crate::cpu::regs::boot_sregs(&mem, entry, sregs).map_err(|e| {
        fail(format!(
            "cannot write probe page tables: {}",
            lego_report::error_chain(&e)
        ))
    })?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| fail(format!("setting long-mode sregs failed: {e}")))?;
    vcpu.set_regs(&crate::cpu::regs::boot_regs(entry))
        .map_err(|e| fail(format!("setting registers failed: {e}")))?;

    // A watchdog kicks the vCPU out of KVM_RUN if the probe hangs.
    crate::kick::install();
    let runner = std::thread::spawn(move || {
        let mut saw_out = false;
        for _ in 0..16 {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(0x80, data)) if data == [0x42] => saw_out = true,
                Ok(VcpuExit::Hlt) if saw_out => return Ok(()),
                Ok(other) => return Err(format!("a long-mode guest stopped with {other:?}")),
                Err(e) if e.errno() == libc::EINTR => return Err("a long-mode guest hung".into()),
                Err(e) => return Err(format!("running a long-mode guest failed: {e}")),
            }
        }
        Err("a long-mode guest did not reach its HLT".into())
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !runner.is_finished() {
        if Instant::now() >= deadline {
            crate::kick::kick(&runner);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    match runner.join() {
        Ok(Ok(())) => {
            let mut copied = vec![0u8; PROBE_COPY_LEN as usize];
            mem.read_slice(&mut copied, vm_memory::GuestAddress(PROBE_COPY_DST))
                .map_err(|e| fail(format!("cannot read probe data: {e}")))?;
            if copied == pattern {
                Ok(())
            } else {
                Err(fail(
                    "a backwards `rep movsq` copied the wrong bytes".into(),
                ))
            }
        }
        Ok(Err(reason)) => Err(fail(reason)),
        Err(_) => Err(fail("the probe thread panicked".into())),
    }
}
