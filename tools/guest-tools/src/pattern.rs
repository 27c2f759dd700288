//! The deterministic 4 KiB block pattern shared by the guest and host tests.
//!
//! Block `b` under seed `s` starts with `b` and `s` as little-endian u64s (so a misplaced
//! block is easy to spot in a hex dump), followed by a splitmix64 stream seeded from both.

/// The size of one pattern block in bytes.
pub const BLOCK_SIZE: usize = 4096;

/// One splitmix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Returns the 64-bit word stream seed for a block.
fn block_state(seed: u64, block: u64) -> u64 {
    let mut s = seed ^ 0x4C45_474F_564D_4D21; // "LEGOVMM!"
    let a = splitmix64(&mut s);
    a ^ block.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Fills `buf` (which must be [`BLOCK_SIZE`] bytes; shorter buffers get a prefix of the
/// pattern) with the pattern of block `block` under `seed`.
pub fn fill_block(seed: u64, block: u64, buf: &mut [u8]) {
    let mut state = block_state(seed, block);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = match i {
            0 => block,
            1 => seed,
            _ => splitmix64(&mut state),
        };
        let bytes = word.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Returns the pattern of one block as a new buffer.
pub fn block(seed: u64, block: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK_SIZE];
    fill_block(seed, block, &mut v);
    v
}

/// Returns true if `buf` holds exactly the pattern of `block` under `seed`.
pub fn check_block(seed: u64, block: u64, buf: &[u8]) -> bool {
    let mut want = [0u8; BLOCK_SIZE];
    let n = buf.len().min(BLOCK_SIZE);
    fill_block(seed, block, &mut want[..n]);
    buf.len() == BLOCK_SIZE && want[..] == buf[..]
}

/// Returns the CRC32C of the first `blocks` blocks under `seed`, as the disk commands
/// report it.
pub fn crc(seed: u64, blocks: u64) -> u32 {
    let mut buf = [0u8; BLOCK_SIZE];
    let mut crc = 0u32;
    for b in 0..blocks {
        fill_block(seed, b, &mut buf);
        crc = crc32c::crc32c_append(crc, &buf);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_distinct() {
        assert_eq!(block(1, 5), block(1, 5));
        assert_ne!(block(1, 5), block(1, 6));
        assert_ne!(block(1, 5), block(2, 5));
        let b = block(7, 3);
        assert_eq!(&b[..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        // Not mostly zeros.
        assert!(b.iter().filter(|&&x| x == 0).count() < 200);
    }

    #[test]
    fn check_detects_any_flipped_byte() {
        let mut b = block(42, 9);
        assert!(check_block(42, 9, &b));
        assert!(!check_block(42, 10, &b));
        assert!(!check_block(43, 9, &b));
        b[4095] ^= 1;
        assert!(!check_block(42, 9, &b));
        assert!(!check_block(42, 9, &b[..100]));
    }

    #[test]
    fn crc_depends_on_seed_and_length() {
        assert_eq!(crc(1, 4), crc(1, 4));
        assert_ne!(crc(1, 4), crc(2, 4));
        assert_ne!(crc(1, 4), crc(1, 5));
        assert_eq!(crc(1, 0), 0);
    }
}
