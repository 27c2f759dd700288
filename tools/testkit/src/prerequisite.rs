//! Tests whose prerequisite (QEMU, qemu-storage-daemon, apt lists, /dev/kvm, ...) is missing:
//! skipped with a message on a developer's machine, failed under CI, so that a CI run cannot
//! pass by skipping. `tools/test.sh` provides every prerequisite on a fresh Debian 12: the
//! packages through `tools/setup.sh`, then the guest image.

/// The environment variable that marks a CI run (when it is `true` or `1`).
pub const CI_ENV: &str = "CI";

/// Whether this process runs under CI (`CI=true` or `CI=1`).
pub fn under_ci() -> bool {
    std::env::var(CI_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether a test may go on: `true` when `available`. Otherwise it panics under CI with a
/// message naming `what` is missing, and elsewhere prints "skipped: {what} is missing" and
/// returns `false`, for the test to return early.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(
        !under_ci(),
        "{what} is missing, and under CI a test must not skip: run tools/test.sh, which installs \
         every package the tests need (tools/setup.sh) and builds the guest image first"
    );
    eprintln!("skipped: {what} is missing");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_prerequisite_never_skips() {
        assert!(require("something present", true));
    }

    #[test]
    fn a_missing_prerequisite_fails_only_under_ci() {
        let missing = std::panic::catch_unwind(|| require("a missing thing", false));
        match missing {
            Ok(went_on) => assert!(!under_ci() && !went_on),
            Err(_) => assert!(under_ci()),
        }
    }
}
