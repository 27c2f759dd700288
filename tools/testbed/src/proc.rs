//! Child processes that never outlive us: each runs in its own process group, dies with
//! its parent, and is killed (the whole group) when its handle is dropped.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Errors from running child processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The pipe for the child's output could not be made.
    #[error("could not create a pipe for a child's output")]
    Pipe(#[source] io::Error),
    /// The program could not be started.
    #[error("could not start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Waiting for the child failed.
    #[error("could not wait for {program}")]
    Wait {
        /// The program.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Returns a pipe `(read end, write end)`, both close-on-exec.
fn pipe() -> Result<(File, File), ProcError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(ProcError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let files = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    Ok(files)
}

/// A running child in its own process group; dropping it kills the group.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    program: String,
    status: Option<ExitStatus>,
}

impl GroupChild {
    /// Starts `cmd` in a new process group with standard input from /dev/null and standard
    /// output and error merged into one pipe, whose read end is returned. The child gets
    /// SIGKILL if this process dies.
    pub fn spawn(mut cmd: Command) -> Result<(Self, File), ProcError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let (reader, writer) = pipe()?;
        let writer2 = writer.try_clone().map_err(ProcError::Pipe)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl, which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProcError::Spawn {
            program: program.clone(),
            source,
        })?;
        // `cmd` still holds the write ends; dropping it closes them so that the reader
        // sees end-of-file when the child's group is gone.
        drop(cmd);
        Ok((
            Self {
                child,
                program,
                status: None,
            },
            reader,
        ))
    }

    /// Returns the exit status if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ProcError::Wait {
                program: self.program.clone(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, ProcError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().map_err(|source| ProcError::Wait {
            program: self.program.clone(),
            source,
        })?;
        self.status = Some(s);
        Ok(s)
    }

    /// Kills the child's whole process group with SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        self.kill_group();
        let _ = self.wait();
    }

    /// Sends SIGKILL to the process group (which outlives the leader's exit while any
    /// member lives).
    fn kill_group(&self) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill only sends a signal; the group id is our child's pid, which we
        // have not reaped unless `status` is set, so it cannot name another group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
        } else {
            // The leader is reaped, but members of its group may remain.
            self.kill_group();
        }
    }
}

/// Returns the shell-style exit code of a status: the code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Runs `cmd` to completion (killing it after `timeout`) and returns its exit code
/// (`None` if it was killed for the timeout) and its merged output.
pub fn output_with_timeout(
    cmd: Command,
    timeout: Duration,
) -> Result<(Option<i32>, String), ProcError> {
    let (mut child, mut reader) = GroupChild::spawn(cmd)?;
    let handle = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait()? {
            break Some(exit_code(status));
        }
        if Instant::now() >= deadline {
            child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    let text = handle.join().unwrap_or_default();
    Ok((code, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_merged_output_and_exit_code() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (code, text) = output_with_timeout(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(code, Some(3));
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }

    #[test]
    fn kills_the_whole_group_on_timeout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000 & sleep 1000"]);
        let start = Instant::now();
        let (code, _) = output_with_timeout(cmd, Duration::from_millis(300)).unwrap();
        assert_eq!(code, None);
        // The reader only sees end-of-file once the background sleep is dead too.
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = GroupChild::spawn(Command::new("/nonexistent/prog")).unwrap_err();
        assert!(err.to_string().contains("could not start"), "{err}");
    }
}
