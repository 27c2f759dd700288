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

/// How often L1's `/init` prints its heartbeat (`LEGO_L1_ALIVE`), in seconds; the testbed
/// treats a console silent for [`SILENCE_LIMIT_SECS`] as a hung compute host.
pub const HEARTBEAT_SECS: u64 = 10;
/// How long a nested try's console may stay silent before its compute host counts as hung
/// (18 missed heartbeats: generous for a loaded machine, and minutes rather than the job's
/// whole timeout).
pub const SILENCE_LIMIT_SECS: u64 = 180;

/// The compute host's command line words of a host tuned for VMs: shared memory may get
/// transparent huge pages where the VMM asks for them (`MADV_HUGEPAGE`). Tests and the
/// demo use it; benchmarks run without it unless their report says so.
pub const VM_HOST_THP: &str = "lego.shmem_thp=advise";

/// How TCG runs the compute host's vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcgThreads {
    /// One host thread per vCPU (QEMU's default for x86 on x86).
    #[default]
    Multi,
    /// All vCPUs on one host thread, taking turns.
    Single,
}

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
    /// L1's vCPUs. One by default: with two, QEMU's TCG emulation of SVM loses the compute
    /// host in about one demo-sized run in four (a kernel panic of recursive page faults on
    /// valid per-CPU addresses, a triple fault, or both vCPUs halted for good), with QEMU
    /// as the nested VMM as well as legovmm; with one it lost none (BENCHMARKS.md,
    /// "Testbed soak").
    pub cpus: u32,
    /// Extra kernel command line words for L1.
    pub extra_cmdline: String,
    /// Attach the user-mode network ([`NETDEV`]) and ask L1's `/init` to bring it up.
    pub network: bool,
    /// The emulated CPU model and flags (`-cpu`).
    pub cpu_model: String,
    /// How TCG runs the vCPUs.
    pub tcg_threads: TcgThreads,
    /// A Unix socket for QEMU's human monitor, used to read the vCPUs' registers when a
    /// try is killed; `None` for none.
    pub monitor: Option<PathBuf>,
    /// A file for QEMU's log of CPU resets and guest errors (`-d cpu_reset,guest_errors`):
    /// a compute host that resets itself (a triple fault) leaves its last CPU state there.
    pub debug_log: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from(DEFAULT_QEMU),
            bios: PathBuf::from(DEFAULT_BIOS),
            memory_mib: 2048,
            cpus: 1,
            extra_cmdline: String::new(),
            network: false,
            cpu_model: CPU.to_string(),
            tcg_threads: TcgThreads::Multi,
            monitor: None,
            debug_log: None,
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
    let mut s = format!(
        "console=ttyS0 rdinit=/init panic=-1 reboot=t edd=off lego.heartbeat={HEARTBEAT_SECS}"
    );
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
        let accel = match self.tcg_threads {
            TcgThreads::Multi => "tcg",
            TcgThreads::Single => "tcg,thread=single",
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-accel", accel, "-M", MACHINE, "-cpu", &self.cpu_model])
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
        if let Some(log) = &self.debug_log {
            cmd.args(["-d", "cpu_reset,guest_errors", "-D"]).arg(log);
        }
        if let Some(sock) = &self.monitor {
            cmd.arg("-monitor")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        cmd
    }
}

/// Asks QEMU's human monitor at `sock` for every vCPU's registers (the state of a hung
/// compute host), returning what it said, or why it could not.
pub fn dump_registers(sock: &Path) -> String {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let talk = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        s.write_all(b"info cpus\ninfo registers -a\n")?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
            if out.len() > 256 * 1024 {
                break;
            }
        }
        Ok(printable(&String::from_utf8_lossy(&out)))
    };
    match talk() {
        Ok(text) => format!("--- compute host vCPUs (QEMU monitor) ---\n{text}"),
        Err(e) => format!(
            "(the QEMU monitor at {} did not answer: {e})",
            sock.display()
        ),
    }
}

/// Drops the terminal escape sequences and carriage returns the monitor sends.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // ESC [ ... final byte: a terminal control sequence.
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\r' => {}
            c if c == '\n' || c == '\t' || !c.is_control() => out.push(c),
            _ => {}
        }
    }
    out
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
    fn knobs_reach_the_command_line() {
        let cfg = QemuConfig {
            cpu_model: "EPYC-Rome,+svm".into(),
            tcg_threads: TcgThreads::Single,
            monitor: Some(PathBuf::from("/run/m.sock")),
            debug_log: Some(PathBuf::from("/run/q.log")),
            extra_cmdline: "kvm_amd.vgif=0".into(),
            ..QemuConfig::default()
        };
        let line = describe(&cfg.command(Path::new("/k"), Path::new("/i"), Path::new("/d")));
        for want in [
            "-accel tcg,thread=single",
            "-cpu EPYC-Rome,+svm ",
            "-monitor unix:/run/m.sock,server=on,wait=off",
            "-d cpu_reset,guest_errors -D /run/q.log",
            "lego.heartbeat=10",
            "kvm_amd.vgif=0'",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
    }

    #[test]
    fn monitor_output_loses_its_escapes() {
        assert_eq!(
            printable("(qemu) \u{1b}[K\u{1b}[Dinfo cpus\r\nRIP=1\u{7}\n"),
            "(qemu) info cpus\nRIP=1\n"
        );
    }

    #[test]
    fn measures_a_plausible_tsc() {
        if let Some(khz) = tsc_khz() {
            assert!((100_000..20_000_000).contains(&khz), "{khz}");
        }
    }
}
