//! The shell library given to every job as `$LEGO_TESTBED_LIB` (see `lib.sh`).

/// The library's text: `lego_vnode NAME TRIES READY_SECS ARGS...` runs `$LEGOVMM run ARGS`
/// with hang detection and retries inside the compute host.
pub const SHELL_LIB: &str = include_str!("lib.sh");

/// The environment variable naming the library's path in a job.
pub const LIB_ENV: &str = "LEGO_TESTBED_LIB";

/// The library's path relative to the staging root (`.lego/lib.sh`).
pub const LIB_PATH: &str = ".lego/lib.sh";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_lego_vnode() {
        assert!(SHELL_LIB.contains("lego_vnode() {"));
        assert!(SHELL_LIB.contains("LEGO_GUEST_READY"));
    }
}
