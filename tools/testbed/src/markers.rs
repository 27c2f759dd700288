//! Console markers printed by the compute host's `/init` and the vNode guest, and how to
//! read values from them.

/// L1's `/init` started.
pub const L1_INIT: &str = "LEGO_L1_INIT";
/// L1 has a usable `/dev/kvm`.
pub const L1_KVM_YES: &str = "LEGO_L1_KVM=yes";
/// L1 has no `/dev/kvm`.
pub const L1_KVM_NO: &str = "LEGO_L1_KVM=no";
/// L1's network is up (the job asked for it); the line goes on with `addr=` and `host=`.
pub const L1_NET_UP: &str = "LEGO_L1_NET=up";
/// L1's network was asked for but could not be brought up; the line says why.
pub const L1_NET_DOWN: &str = "LEGO_L1_NET=down";
/// Prefix of the job script's exit status in L1.
pub const L1_JOB_EXIT: &str = "LEGO_L1_JOB_EXIT=";
/// Prefix of the guest command's exit status in a vNode (printed by lego-image's init).
pub const RUN_EXIT: &str = lego_image::init::RUN_EXIT_PREFIX;
/// The vNode guest's init is up (printed by lego-image's init).
pub const GUEST_READY: &str = lego_image::init::READY_MARKER;

/// Returns the integer after the last occurrence of `prefix` in `console`, if any.
/// Text before the prefix on the same line (interleaved kernel messages) is ignored.
pub fn last_value(console: &str, prefix: &str) -> Option<i32> {
    console.lines().rev().find_map(|line| {
        let at = line.rfind(prefix)?;
        let rest = &line[at + prefix.len()..];
        let end = rest
            .char_indices()
            .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        rest[..end].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_value() {
        let c = "x\nLEGO_L1_JOB_EXIT=3\n[ 1.0] foo LEGO_L1_JOB_EXIT=42 bar\n";
        assert_eq!(last_value(c, L1_JOB_EXIT), Some(42));
        assert_eq!(last_value("LEGO_RUN_EXIT=-1\r", RUN_EXIT), Some(-1));
        assert_eq!(last_value("none", RUN_EXIT), None);
        assert_eq!(last_value("LEGO_RUN_EXIT=", RUN_EXIT), None);
    }
}
