//! The network benchmark's job script (POSIX sh for the compute host's busybox): set up the
//! bridge with the compute host's address and an echo server, then run each setup in turn
//! per round (legovmm with vhost-net, legovmm in-process, QEMU with vhost-net, legovmm ...),
//! each boot under `boot-timer` and retried while its guest never comes up. Around each
//! boot the compute host runs its side of the streams in the background (a receiver for
//! the guest's stream, then a sender of its own), and its lines are kept next to the
//! guest's console; one result line per try goes to [`RESULTS_FILE`].

use super::{
    Setup, BRIDGE, ECHO_PORT, GUEST_IP, GUEST_RECV_PORT, GUEST_TO_HOST_SEED, HOST_IP,
    HOST_RECV_PORT, HOST_TO_GUEST_SEED, LEGOVMM_TAP, PREFIX, QEMU_TAP,
};
use crate::script::{self, bench_fn, files, sh_quote, START_MARKER};

/// The file in the job folder holding one `LEGO_BENCH_RESULT` line per try.
pub const RESULTS_FILE: &str = "net-results.txt";
/// The job file name of `tools/vnode-bridge.sh`.
pub const BRIDGE_SCRIPT: &str = "vnode-bridge.sh";
/// The console lines each result line carries (besides the timer's): the guest's network
/// lines, its command's status and errors, and the compute host's lines (renamed
/// `LEGO_HOST_*`, from the try's `.console.host` file).
pub const CONSOLE_GREP: &str = "LEGO_(NET_|HOST_|RUN_EXIT|ERROR)";
/// Printed by the guest before its tests, with the name of its clock source.
pub const CLOCKSOURCE_MARKER: &str = "LEGO_NET_CLOCKSOURCE";
/// Where Linux names its clock source.
pub const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
/// The suffix of the file, next to a try's console, holding the compute host's lines.
pub const HOST_SUFFIX: &str = ".host";
/// Seconds the compute host's side may take to finish once the VMM exited.
pub const HOST_GRACE_SECS: u32 = 5;

/// What the job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Measured runs per setup.
    pub runs: u32,
    /// Tries per run (1 + retries after a guest that never came up).
    pub tries: u32,
    /// The setups, in the order each round runs them.
    pub setups: Vec<Setup>,
    /// Seconds to wait for the guest's ready marker before killing a try.
    pub ready_timeout_secs: u64,
    /// Seconds a try may take in all.
    pub run_timeout_secs: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// The guest's MAC (lower case), the same in every setup.
    pub mac: String,
    /// Round trips the guest times.
    pub rtt_count: u32,
    /// Bytes per round-trip message.
    pub rtt_size: u32,
    /// MiB the guest sends to the compute host.
    pub guest_to_host_mib: u32,
    /// MiB the compute host sends to the guest (0: not measured).
    pub host_to_guest_mib: u32,
    /// Extra guest kernel command line words (after `lego.run=` and `lego.net=`).
    pub cmdline_extra: String,
    /// Memory sampling period of the timer, ms.
    pub sample_ms: u64,
    /// QEMU's `-M` value.
    pub qemu_machine: String,
    /// QEMU's `-cpu` value.
    pub qemu_cpu: String,
    /// QEMU's network device (`-device` driver), e.g. `virtio-net-pci`.
    pub qemu_net_device: String,
}

impl NetPlan {
    /// The guest command: its clock source (what the round trips are timed with), round trips to the compute host's echo server, a stream to its
    /// receiver, then (when measured) a stream from its sender, stopping at the first
    /// failure. It contains no double quote, so it fits in `lego.run="..."`.
    pub fn guest_command(&self) -> String {
        let mut c = format!(
            "echo {CLOCKSOURCE_MARKER} $(cat {CLOCKSOURCE}); lego-guest-tools net-rtt {HOST_IP}:{ECHO_PORT} --count {} --size {} && \
             lego-guest-tools net-send {HOST_IP}:{HOST_RECV_PORT} --mib {} --seed {GUEST_TO_HOST_SEED}",
            self.rtt_count, self.rtt_size, self.guest_to_host_mib
        );
        if self.host_to_guest_mib > 0 {
            c.push_str(&format!(
                " && lego-guest-tools net-recv {GUEST_RECV_PORT} --seed {HOST_TO_GUEST_SEED}"
            ));
        }
        c
    }

    /// The guest's `lego.net=` word: its MAC, address and gateway (the compute host).
    pub fn lego_net(&self) -> String {
        format!("lego.net={},{GUEST_IP}/{PREFIX},{HOST_IP}", self.mac)
    }

    /// The guest kernel command line (the same for every setup).
    pub fn cmdline(&self) -> Result<String, lego_testbed::vnode::VnodeError> {
        let extra = format!("quiet {} {}", self.lego_net(), self.cmdline_extra.trim());
        lego_testbed::vnode::guest_cmdline(&self.guest_command(), &extra)
    }

    /// legovmm's `--net` value for the setup; `None` for QEMU's.
    pub fn legovmm_net(&self, setup: Setup) -> Option<String> {
        setup.legovmm_backend().map(|backend| {
            format!(
                "tap={LEGOVMM_TAP},bridge={BRIDGE},backend={backend},mac={}",
                self.mac
            )
        })
    }

    /// The legovmm arguments of the setup after `$LEGOVMM` (the command line follows
    /// `--cmdline`, then `--net` and its value). `None` for QEMU's setup.
    pub fn legovmm_args(&self, setup: Setup) -> Option<String> {
        setup
            .legovmm_backend()
            .map(|_| script::legovmm_run_args(self.memory_mib, self.vcpus))
    }

    /// QEMU's network options: the tap the job made (vhost-net on) and the device with the
    /// guest's MAC (a PCI device without its option ROM, which the job folder lacks).
    pub fn qemu_net_args(&self) -> String {
        let rom = if self.qemu_net_device.ends_with("-pci") {
            ",romfile="
        } else {
            ""
        };
        format!(
            "-netdev tap,id=n0,ifname={QEMU_TAP},script=no,downscript=no,vhost=on \
             -device {},netdev=n0,mac={}{rom}",
            self.qemu_net_device, self.mac
        )
    }

    /// QEMU's arguments (the command line follows `-append`): QEMU's default RAM (private,
    /// as legovmm's is with no vhost-user device) and the network device.
    pub fn qemu_args(&self) -> String {
        script::qemu_private_ram_args(
            &self.qemu_machine,
            &self.qemu_cpu,
            self.vcpus,
            self.memory_mib,
            &self.qemu_net_args(),
        )
    }

    fn uses_qemu(&self) -> bool {
        self.setups.iter().any(|s| s.is_qemu())
    }

    /// The job files the script runs, besides `$LEGOVMM` (made executable).
    fn executables(&self) -> Vec<&'static str> {
        let mut v = vec![files::TIMER];
        if self.uses_qemu() {
            v.extend([files::LOADER, files::QEMU]);
        }
        v
    }

    /// The shell functions `host_start CONSOLE` and `host_stop CONSOLE`: the compute host's
    /// side of one run.
    fn host_fns(&self) -> String {
        let mut s = format!(
            "# host_start CONSOLE: the compute host's side of one run, in the background: a\n\
             # receiver for the guest's stream, then, once that one has ended, a sender to the guest.\n\
             host_start() {{\n    \
             ip neigh flush dev {BRIDGE} > /dev/null 2>&1\n    \
             rm -f \"$1.host-recv\" \"$1.host-send\" \"$1{HOST_SUFFIX}\"\n    \
             $T net-recv {HOST_RECV_PORT} --seed {GUEST_TO_HOST_SEED} > \"$1.host-recv\" 2>&1 &\n    \
             hr=$!\n    hs=\n"
        );
        if self.host_to_guest_mib > 0 {
            s.push_str(&format!(
                "    (\n        \
                 while ! grep -q '^LEGO_' \"$1.host-recv\" 2> /dev/null; do sleep 0.1; done\n        \
                 exec $T net-send {GUEST_IP}:{GUEST_RECV_PORT} --mib {} --seed {HOST_TO_GUEST_SEED} --wait 60\n    \
                 ) > \"$1.host-send\" 2>&1 &\n    hs=$!\n",
                self.host_to_guest_mib
            ));
        }
        s.push_str(&format!(
            "}}\n\
             # host_stop CONSOLE: once the VMM exited, gives the compute host's side {HOST_GRACE_SECS} s to\n\
             # finish, stops what is left and keeps its lines, LEGO_* renamed LEGO_HOST_*, in CONSOLE{HOST_SUFFIX}.\n\
             host_stop() {{\n    n=0\n    \
             while [ $n -lt {ticks} ]; do\n        \
             grep -q '^LEGO_' \"$1.host-recv\" 2> /dev/null && \
             {{ [ -z \"$hs\" ] || grep -q '^LEGO_' \"$1.host-send\" 2> /dev/null; }} && break\n        \
             sleep 0.1; n=$((n + 1))\n    done\n    \
             # The sender first: it starts when the receiver ends.\n    \
             kill $hs $hr 2> /dev/null\n    wait $hs $hr 2> /dev/null\n    \
             sed -n 's/^LEGO_/LEGO_HOST_/p' \"$1.host-recv\" \"$1.host-send\" > \"$1{HOST_SUFFIX}\" 2> /dev/null\n    \
             return 0\n}}\n",
            ticks = HOST_GRACE_SECS * 10
        ));
        s
    }

    /// Renders the job script.
    pub fn render(&self) -> Result<String, lego_testbed::vnode::VnodeError> {
        let mut s = String::from("# Generated by net-bench (lego-bench).\n");
        s.push_str(&format!(
            "T=./{}\nCMDLINE={}\nchmod 755{}\n",
            files::TIMER,
            sh_quote(&self.cmdline()?),
            self.executables()
                .iter()
                .map(|f| format!(" ./{f}"))
                .collect::<String>()
        ));
        s.push_str(&format!(
            "ip link set lo up 2> /dev/null || true\n\
             # The bridge joining the taps and the compute host, which takes the guests' gateway address.\n\
             if ! sh ./{BRIDGE_SCRIPT} --bridge {BRIDGE} --gateway {HOST_IP}/{PREFIX}; then\n    \
             echo \"LEGO_BENCH_NOTE no bridge {BRIDGE}: nothing to measure\"\n    exit 1\nfi\n\
             # The round trips' echo server, for the whole job.\n\
             $T net-echo {ECHO_PORT} > net-echo.log 2>&1 &\n\
             echo_pid=$!\n"
        ));
        s.push_str(
            "# Warm the page cache so that no setup pays for reading the job disk.\n\
             cat ./* > /dev/null\n",
        );
        s.push_str(&format!(
            "echo \"{START_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo) \
             mem_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2) \
             clocksource=$(cat {CLOCKSOURCE}) vhost_net=$([ -c /dev/vhost-net ] && echo yes || echo no) tun=$([ -c /dev/net/tun ] && echo yes || echo no)\"\n"
        ));
        s.push_str(&format!(
            "TIMER=\"$T boot-timer --forward '' --sample-ms {} --ready-timeout {} --timeout {}\"\n",
            self.sample_ms, self.ready_timeout_secs, self.run_timeout_secs
        ));
        s.push_str(&self.host_fns());
        s.push_str("# boot_SETUP CONSOLE CMDLINE: one run, its timer line on standard output.\n");
        for setup in &self.setups {
            if let (Some(args), Some(net)) = (self.legovmm_args(*setup), self.legovmm_net(*setup)) {
                s.push_str(&format!(
                    "boot_{name}() {{\n    c=$1; l=$2; shift 2\n    \
                     # legovmm creates its tap and joins it to the bridge; none may be left from before.\n    \
                     ip link del {LEGOVMM_TAP} > /dev/null 2>&1\n    \
                     host_start \"$c\"\n    \
                     $TIMER --label {label} --console \"$c\" -- $LEGOVMM {args} \"$l\" --net {net} \"$@\" 2> \"$c.err\"\n    \
                     rc=$?\n    host_stop \"$c\"\n    return $rc\n}}\n",
                    name = setup.shell_name(),
                    label = setup.name(),
                ));
            }
        }
        if self.uses_qemu() {
            let setup = Setup::QemuVhostNet;
            s.push_str(&format!(
                "# QEMU's tap, made before QEMU opens it and joined to the bridge (should busybox's\n\
                 # tunctl fail, QEMU makes it and it joins once it shows).\n\
                 qemu_tap() {{\n    \
                 tunctl -d {QEMU_TAP} > /dev/null 2>&1\n    \
                 if tunctl -t {QEMU_TAP} > /dev/null 2>&1; then\n        \
                 ip link set {QEMU_TAP} master {BRIDGE} && ip link set {QEMU_TAP} up\n    \
                 else\n        \
                 echo \"LEGO_BENCH_NOTE tunctl failed: QEMU makes {QEMU_TAP}\" >&2\n        \
                 (\n            n=0\n            \
                 while [ ! -e /sys/class/net/{QEMU_TAP} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done\n            \
                 ip link set {QEMU_TAP} master {BRIDGE} && ip link set {QEMU_TAP} up\n        \
                 ) > /dev/null 2>&1 &\n    fi\n}}\n\
                 boot_{name}() {{\n    c=$1; l=$2; shift 2\n    \
                 qemu_tap\n    \
                 host_start \"$c\"\n    \
                 $TIMER --label {label} --console \"$c\" -- ./{loader} --library-path \"$JOB_DIR\" ./{qemu} {args} \"$l\" \"$@\" 2> \"$c.err\"\n    \
                 rc=$?\n    host_stop \"$c\"\n    \
                 tunctl -d {QEMU_TAP} > /dev/null 2>&1\n    return $rc\n}}\n",
                name = setup.shell_name(),
                label = setup.name(),
                loader = files::LOADER,
                qemu = files::QEMU,
                args = self.qemu_args(),
            ));
        }
        s.push_str(&net_bench_fn(self.tries));
        let setups: Vec<String> = self.setups.iter().map(ToString::to_string).collect();
        s.push_str(&script::rounds(self.runs, &setups, RESULTS_FILE));
        s.push_str(&format!(
            "kill $echo_pid 2> /dev/null\n\
             sh ./{BRIDGE_SCRIPT} --bridge {BRIDGE} --down\n\
             echo LEGO_BENCH_DONE\n"
        ));
        Ok(s)
    }
}

/// The script's `bench` function ([`bench_fn`]) with the compute host's lines: it greps
/// [`CONSOLE_GREP`] from the try's console and from its [`HOST_SUFFIX`] file, and calls
/// the boot function of a setup by its shell name ([`Setup::shell_name`]).
fn net_bench_fn(tries: u32) -> String {
    let f = bench_fn(tries, Some(CONSOLE_GREP));
    let grep = format!("grep -E {}", sh_quote(CONSOLE_GREP));
    let console = "\"$vmm-$round-$try.console\" 2> /dev/null";
    let call = "out=$(boot_$vmm ";
    debug_assert!(
        f.contains(&grep) && f.contains(console) && f.contains(call),
        "bench_fn changed: {f}"
    );
    f.replace(&grep, &format!("grep -hE {}", sh_quote(CONSOLE_GREP)))
        .replace(
            console,
            &format!("\"$vmm-$round-$try.console\" \"$vmm-$round-$try.console{HOST_SUFFIX}\" 2> /dev/null"),
        )
        .replace(call, "out=$(boot_$(echo \"$vmm\" | tr - _) ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::DEFAULT_MAC;
    use crate::script::assert_parses_as_sh;

    fn plan() -> NetPlan {
        NetPlan {
            runs: 3,
            tries: 2,
            setups: Setup::ALL.to_vec(),
            ready_timeout_secs: 120,
            run_timeout_secs: 300,
            vcpus: 1,
            memory_mib: 256,
            mac: DEFAULT_MAC.into(),
            rtt_count: 2000,
            rtt_size: 1,
            guest_to_host_mib: 64,
            host_to_guest_mib: 32,
            cmdline_extra: "initcall_blacklist=cmos_init".into(),
            sample_ms: 200,
            qemu_machine: "microvm,x-option-roms=off,pcie=on".into(),
            qemu_cpu: script::DEFAULT_QEMU_CPU.into(),
            qemu_net_device: "virtio-net-pci".into(),
        }
    }

    #[test]
    fn the_script_parses_as_posix_sh() {
        assert_parses_as_sh(&plan().render().unwrap());
        let mut p = plan();
        p.host_to_guest_mib = 0;
        p.setups = vec![Setup::QemuVhostNet];
        assert_parses_as_sh(&p.render().unwrap());
    }

    #[test]
    fn the_guest_gets_its_address_and_its_tests() {
        let p = plan();
        let c = p.cmdline().unwrap();
        assert_eq!(
            c,
            "console=ttyS0 panic=-1 lego.run=\"echo LEGO_NET_CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource); lego-guest-tools net-rtt 10.99.0.1:9001 --count 2000 --size 1 && \
             lego-guest-tools net-send 10.99.0.1:9000 --mib 64 --seed 1 && lego-guest-tools net-recv 9002 --seed 2\" \
             quiet lego.net=02:4c:47:00:00:0a,10.99.0.10/24,10.99.0.1 initcall_blacklist=cmos_init"
        );
        let mut p = plan();
        p.host_to_guest_mib = 0;
        assert!(!p.guest_command().contains("net-recv"));
        assert!(p.guest_command().ends_with("--mib 64 --seed 1"));
    }

    #[test]
    fn each_setup_gets_its_vmm_and_device() {
        let s = plan().render().unwrap();
        assert!(
            s.contains("$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 1 --cmdline \"$l\" --net tap=lgb0,bridge=lego0,backend=vhost-net,mac=02:4c:47:00:00:0a \"$@\" 2> \"$c.err\""),
            "{s}"
        );
        assert!(
            s.contains("--cmdline \"$l\" --net tap=lgb0,bridge=lego0,backend=in-process,mac=02:4c:47:00:00:0a \"$@\""),
            "{s}"
        );
        assert!(
            s.contains("$TIMER --label qemu-vhost-net --console \"$c\" -- ./ld-linux-x86-64.so.2 --library-path \"$JOB_DIR\" ./qemu-system-x86_64 -accel kvm -M microvm,x-option-roms=off,pcie=on -cpu host -smp 1 -m 256M -bios qboot.rom -kernel vmlinuz -initrd initramfs.cpio -nodefaults -no-user-config -display none -serial stdio -no-reboot \
             -netdev tap,id=n0,ifname=lgq0,script=no,downscript=no,vhost=on -device virtio-net-pci,netdev=n0,mac=02:4c:47:00:00:0a,romfile= -append \"$l\" \"$@\""),
            "{s}"
        );
        assert!(!s.contains("memory-backend"), "{s}");
        // QEMU's tap is made and joined to the bridge before QEMU starts, and removed after.
        let tap = s.find("tunctl -t lgq0").unwrap();
        assert!(
            s.contains("ip link set lgq0 master lego0 && ip link set lgq0 up"),
            "{s}"
        );
        let boot = s.find("boot_qemu_vhost_net() {").unwrap();
        assert!(tap < boot);
        assert!(
            s[boot..].contains("qemu_tap\n    host_start \"$c\"\n    $TIMER"),
            "{s}"
        );
        assert!(s[boot..].contains("tunctl -d lgq0"), "{s}");
        // The bridge, the echo server, then the rounds; the bridge goes at the end.
        let bridge = s
            .find("sh ./vnode-bridge.sh --bridge lego0 --gateway 10.99.0.1/24")
            .unwrap();
        let echo = s.find("$T net-echo 9001 > net-echo.log 2>&1 &").unwrap();
        let rounds = s.find("while [ $r -lt 3 ]").unwrap();
        assert!(bridge < echo && echo < rounds, "{s}");
        assert!(
            s.contains("sh ./vnode-bridge.sh --bridge lego0 --down\necho LEGO_BENCH_DONE\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "chmod 755 ./lego-guest-tools ./ld-linux-x86-64.so.2 ./qemu-system-x86_64\n"
            ),
            "{s}"
        );
        // Interleaved in each round.
        let a = s
            .find("bench legovmm-vhost-net $r \"$CMDLINE\" net-results.txt")
            .unwrap();
        let b = s.find("bench legovmm-in-process $r").unwrap();
        let q = s.find("bench qemu-vhost-net $r").unwrap();
        assert!(a < b && b < q, "{s}");
        assert!(s.contains("while [ $try -lt 2 ]"), "{s}");
        // The host's side: a receiver, and a sender once the receiver has ended.
        assert!(
            s.contains("$T net-recv 9000 --seed 1 > \"$1.host-recv\" 2>&1 &"),
            "{s}"
        );
        assert!(
            s.contains("exec $T net-send 10.99.0.10:9002 --mib 32 --seed 2 --wait 60"),
            "{s}"
        );
        assert!(s.contains("--ready-timeout 120 --timeout 300"), "{s}");
    }

    #[test]
    fn unused_parts_are_left_out() {
        let mut p = plan();
        p.setups = vec![Setup::LegovmmInProcess];
        p.host_to_guest_mib = 0;
        p.qemu_net_device = "virtio-net-device".into();
        let s = p.render().unwrap();
        for absent in [
            "qemu",
            "tunctl",
            "boot_legovmm_vhost_net",
            "net-send 10.99.0.10",
            "romfile",
        ] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
        assert!(s.contains("chmod 755 ./lego-guest-tools\n"), "{s}");
        assert_eq!(
            p.qemu_net_args(),
            "-netdev tap,id=n0,ifname=lgq0,script=no,downscript=no,vhost=on -device virtio-net-device,netdev=n0,mac=02:4c:47:00:00:0a"
        );
    }

    /// Runs the script's host functions and bench function with stand-ins for the tools
    /// and a boot function: the result line carries the timer's line, the guest's console
    /// lines and the compute host's, renamed.
    #[test]
    fn a_result_line_gathers_the_guest_and_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("tools.sh");
        std::fs::write(
            &tools,
            "#!/bin/sh\ncase \"$1\" in\n\
             net-recv) echo LEGO_NET_RECV from=10.99.0.10 bytes=4096 crc32c=1 pattern=ok ms=1 mib_s=50.0 ;;\n\
             net-send) echo LEGO_NET_SENT to=10.99.0.10:9002 bytes=8192 crc32c=2 ms=1 mib_s=40.0 ;;\n\
             esac\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&tools)
            .status()
            .unwrap();
        let p = plan();
        let script = format!(
            "T={}\nip() {{ :; }}\n{}\
             boot_legovmm_in_process() {{\n    c=$1\n    host_start \"$c\"\n    \
             printf 'LEGO_NET_RTT to=x count=2 size=1 p50_us=10.0 p99_us=20.0\\r\\nnoise\\nLEGO_RUN_EXIT=0\\n' > \"$c\"\n    \
             echo \"LEGO_BOOT_TIMING vmm=legovmm-in-process status=ok exit_ms=900 exit_code=0\"\n    \
             host_stop \"$c\"\n}}\n{}bench legovmm-in-process 1 'a b' {RESULTS_FILE}\n",
            tools.display(),
            p.host_fns(),
            net_bench_fn(2)
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let res = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
        let line = res.trim_end();
        assert!(
            line.starts_with("LEGO_BENCH_RESULT vmm=legovmm-in-process round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=legovmm-in-process status=ok"),
            "{line}"
        );
        for part in [
            "LEGO_NET_RTT to=x count=2 size=1 p50_us=10.0 p99_us=20.0",
            "LEGO_RUN_EXIT=0",
            "LEGO_HOST_NET_RECV from=10.99.0.10 bytes=4096",
            "LEGO_HOST_NET_SENT to=10.99.0.10:9002 bytes=8192",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(!line.contains("noise"), "{line}");
        let t = crate::net::results::parse_line(line).unwrap();
        assert_eq!(t.run.vmm, "legovmm-in-process");
        assert_eq!(t.host_received.as_ref().unwrap().bytes, 4096);
        assert_eq!(t.host_sent.as_ref().unwrap().bytes, 8192);
        assert_eq!(t.rtt.as_ref().unwrap().p99_us, 20.0);
    }
}
