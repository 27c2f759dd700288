//! Child processes killed (and reaped) when dropped, also when a test or bench panics.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// A child process that is sent SIGKILL and reaped when dropped, unless it was already reaped.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Starts `cmd` (with the standard streams it sets); panics with "cannot start {name}" when
    /// it cannot be started.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> ChildGuard {
        let name = name.into();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard { name, child }
    }

    /// The name given at start, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used so far, user and system, all threads (from
    /// `/proc/PID/stat`, in clock ticks).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.child.id())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name))
    }

    /// Panics with "{name} exited early with {status}" if the process has exited.
    pub fn check_alive(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!("{} exited early with {st}", self.name);
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait::poll(timeout, Duration::from_millis(10), || self.try_wait())
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; `None` if it is still running
    /// (it is then killed when dropped).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Some(st);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) only sends SIGTERM; the child is not reaped yet (try_wait just
            // said so), so its pid cannot belong to another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        self.wait_timeout(timeout)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time process `pid` has used so far, user and system, all threads (zero if it is gone).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminates_and_reports_the_signal() {
        let mut c = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"));
        c.check_alive();
        let st = c
            .terminate(Duration::from_secs(10))
            .expect("exits on SIGTERM");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGTERM)
        );
    }

    #[test]
    fn cpu_time_counts_a_busy_process_and_not_a_gone_one() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(std::process::id()) >= Duration::from_millis(50));
        let c = ChildGuard::spawn("true", &mut Command::new("true"));
        let pid = c.id();
        drop(c);
        assert_eq!(cpu_time(pid), Duration::ZERO);
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let c = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"));
        let proc_dir = format!("/proc/{}", c.id());
        drop(c);
        assert!(!std::path::Path::new(&proc_dir).exists());
    }
}
