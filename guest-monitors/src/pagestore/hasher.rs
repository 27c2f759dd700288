//! A fast seeded hasher for `(vnode, page)` keys.
//!
//! SipHash (std's default) costs more than the rest of a page lookup; keys here are two u64s,
//! so a seeded multiply-xorshift mix is enough. The seed is random per process so that a peer
//! cannot aim many pages at one bucket chain across restarts.

use std::hash::{BuildHasher, Hasher};

/// The key of one stored page: the owning vNode and the page index inside its remote memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    /// Owning vNode.
    pub vnode: u64,
    /// Page index (byte offset / 4096) in the vNode's remote memory.
    pub page: u64,
}

/// Finalizer from SplitMix64: a bijective mix with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// log2 of the number of consecutive pages kept in one shard.
pub const SHARD_GROUP_SHIFT: u32 = 6;
/// Consecutive pages kept in one shard (64 pages, 256 KiB).
pub const SHARD_GROUP_PAGES: u64 = 1 << SHARD_GROUP_SHIFT;

/// Builds [`KeyHasher`]s sharing one random seed.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    /// A builder with a seed drawn from std's per-process random keys.
    pub fn random() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x6c65_676f_u64);
        Self { seed }
    }

    /// The shard index (in `0..shards`, a power of two) for a key; independent of the map hash.
    /// Runs of [`SHARD_GROUP_PAGES`] consecutive pages share a shard, so a sequential run is
    /// served from one lock and its frames are allocated next to each other.
    #[inline]
    pub fn shard_of(&self, key: &PageKey, shards: usize) -> usize {
        let group = key.page >> SHARD_GROUP_SHIFT;
        let h = mix64(key.vnode.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ group ^ !self.seed);
        (h as usize) & (shards - 1)
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// Hasher state; `write_u64` folds each word in with a multiply and the finish mixes.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher {
    state: u64,
}

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        mix64(self.state)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.state = (self.state.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
