//! The QEMU command line of the compute host: TCG, a microvm machine with qboot, an
//! emulated EPYC CPU with SVM and nested paging, the console on the serial port, and the
//! job disk as a virtio-mmio block device; optionally a user-mode (slirp) network to this
//! machine's loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The QEMU binary used unless configured otherwise.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// The qboot firmware: SeaBIOS corrupts the initramfs tail when a virtio disk is attached.
pub const DEFAULT_BIOS: &str = "/usr/share/qemu/qboot.rom";
/// The machine: microvm without option ROMs, legacy PIT or PIC (ACPI stays on, so the
/// kernel finds the virtio-mmio devices in the DSDT; the RTC stays on, since without it
/// the kernel's RTC probe waits seconds).
pub const MACHINE: &str = "microvm,x-option-roms=off,pit=off,pic=off";
/// The CPU: an EPYC with SVM and nested paging, so that L1 gets a working `kvm-amd`,
/// less the features TCG cannot emulate (QEMU would drop them anyway, with a warning per
/// feature and vCPU).
pub const CPU: &str = "EPYC,+svm,+npt,-fxsr-opt,-misalignsse,-osvw,-topoext,-perfctr-core,-clzero,-ibpb,-nrip-save,-xsavec,-xsaves";

/// The optional network: QEMU user mode (slirp) as a virtio-mmio NIC. L1 is `10.0.2.15`
/// and reaches this machine's `127.0.0.1` at `10.0.2.2` (slirp maps its host address to
/// the loopback). IPv6 is off so that no router advertisement gives L1 a default route;
/// L1's `/init` routes only `10.0.2.0/24`, so nothing goes past this machine.
/// `restrict=on` would block the connections to `10.0.2.2` as well.
pub const NETDEV: &str = "user,id=n0,restrict=off,ipv4=on,ipv6=off";
/// The NIC the network is attached to.
pub const NIC: &str = "virtio-net-device,netdev=n0";
/// The kernel command line word that tells L1's `/init` to bring the network up.
pub const NET_CMDLINE: &str = "lego.net=1";
/// L1's address on the network.
pub const L1_ADDR: &str = "10.0.2.15";
/// The address at which L1 reaches this machine's loopback.
pub const HOST_ADDR: &str = "10.0.2.2";

/// Errors from preparing the QEMU command.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The firmware file is missing.
    #[error("the firmware {0} is missing; install qemu-system-x86 (from bookworm-backports on Debian 12)")]
    NoBios(PathBuf),
}

/// How to run the compute host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// The firmware.
    pub bios: PathBuf,
    /// L1's memory in MiB.
    pub memory_mib: u32,
    /// L1's vCPUs.
    pub cpus: u32,
    /// Extra kernel command line words for L1.
    pub extra_cmdline: String,
    /// Attach the user-mode network ([`NETDEV`]) and ask L1's `/init` to bring it up.
    pub network: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from(DEFAULT_QEMU),
            bios: PathBuf::from(DEFAULT_BIOS),
            memory_mib: 2048,
            cpus: 2,
            extra_cmdline: String::new(),
            network: false,
        }
    }
}

/// Returns this host's TSC frequency in kHz, measured once against the monotonic clock.
/// Under TCG the guest's TSC is the host's, and telling the guest its rate
/// (`tsc_early_khz=`) avoids the PIT calibration, which fails on a loaded host and then
/// stalls the boot.
pub fn tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure_tsc_khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC is available on every x86_64 CPU and only reads a counter.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_rdtsc()
        }
    }
    let mut best: Option<u64> = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let c0 = rdtsc();
        std::thread::sleep(Duration::from_millis(40));
        let c1 = rdtsc();
        let ns = t0.elapsed().as_nanos();
        if ns == 0 || c1 <= c0 {
            continue;
        }
        let khz = u64::try_from(u128::from(c1 - c0) * 1_000_000 / ns).ok()?;
        best = Some(best.map_or(khz, |b: u64| b.min(khz)));
    }
    // Round to 1 MHz: the measurement is not finer than that.
    best.filter(|k| *k > 100_000)
        .map(|k| (k + 500) / 1000 * 1000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

/// Returns L1's kernel command line.
pub fn kernel_cmdline(extra: &str) -> String {
    let mut s = String::from("console=ttyS0 rdinit=/init panic=-1 reboot=t edd=off");
    if let Some(khz) = tsc_khz() {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

impl QemuConfig {
    /// Checks that the files QEMU needs exist.
    pub fn check(&self) -> Result<(), QemuError> {
        if !self.bios.is_file() {
            return Err(QemuError::NoBios(self.bios.clone()));
        }
        Ok(())
    }

    /// Returns the command that boots L1 from `kernel` and `initramfs` with `disk`
    /// attached as a virtio-mmio block device (`/dev/vda`), and the network when
    /// [`QemuConfig::network`] is set.
    pub fn command(&self, kernel: &Path, initramfs: &Path, disk: &Path) -> Command {
        let mut extra = self.extra_cmdline.clone();
        if self.network {
            extra = format!("{NET_CMDLINE} {extra}");
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-accel", "tcg", "-M", MACHINE, "-cpu", CPU])
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-bios")
            .arg(&self.bios)
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .arg("-append")
            .arg(kernel_cmdline(&extra))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-drive")
            .arg(format!(
                "id=job,file={},format=raw,if=none,cache=unsafe",
                disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=job"]);
        if self.network {
            cmd.args(["-netdev", NETDEV, "-device", NIC]);
        }
        cmd
    }
}

/// Renders a command as one shell-like line, for logs and reports.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains([' ', '"', '=']) && a.contains(' ') {
            parts.push(format!("'{a}'"));
        } else {
            parts.push(a.into_owned());
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_has_the_essentials() {
        let cfg = QemuConfig::default();
        let cmd = cfg.command(Path::new("/k"), Path::new("/i"), Path::new("/d.img"));
        let line = describe(&cmd);
        for want in [
            "-accel tcg",
            "EPYC,+svm,+npt",
            "qboot.rom",
            "-no-reboot",
            "virtio-blk-device,drive=job",
            "file=/d.img",
            "'console=ttyS0",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
        assert!(!line.contains("-netdev"), "{line}");
        assert!(!line.contains(NET_CMDLINE), "{line}");
    }

    #[test]
    fn network_adds_slirp_and_the_cmdline_word() {
        let cfg = QemuConfig {
            network: true,
            extra_cmdline: "x=1".into(),
            ..QemuConfig::default()
        };
        let line = describe(&cfg.command(Path::new("/k"), Path::new("/i"), Path::new("/d")));
        for want in [
            "-netdev user,id=n0,restrict=off,ipv4=on,ipv6=off",
            "-device virtio-net-device,netdev=n0",
            "lego.net=1 x=1'",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
        assert!(
            !line.contains("hostfwd") && !line.contains("guestfwd"),
            "{line}"
        );
    }

    #[test]
    fn measures_a_plausible_tsc() {
        if let Some(khz) = tsc_khz() {
            assert!((100_000..20_000_000).contains(&khz), "{khz}");
        }
    }
}
