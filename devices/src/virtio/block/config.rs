//! What a virtio-blk device offers, for the in-process disk and the vhost-user backend alike:
//! the virtio feature bits and the config space (capacity, block size, segment and queue counts,
//! discard and write-zeroes limits).

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::request::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use super::store::{BlockStore, SECTOR_SIZE};
use crate::virtio::read_config_bytes;

/// Bytes in the config space (the kernel's `struct virtio_blk_config`, zoned fields included).
pub const CONFIG_LEN: usize = std::mem::size_of::<virtio_blk_config>();
/// The offset of `num_queues` in the config space.
pub const NUM_QUEUES_OFFSET: usize = 34;

/// What the device offers; built from a store and the queue settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Writes are refused.
    pub read_only: bool,
    /// DISCARD is served.
    pub discard: bool,
    /// WRITE_ZEROES is served.
    pub write_zeroes: bool,
    /// Number of request queues.
    pub queues: u16,
    /// Largest queue size.
    pub queue_size: u16,
}

impl DeviceConfig {
    /// The device for `store` with `queues` queues of up to `queue_size` entries.
    pub fn for_store(store: &dyn BlockStore, queues: u16, queue_size: u16) -> Self {
        let read_only = store.read_only();
        Self {
            capacity: store.capacity(),
            block_size: store.block_size(),
            read_only,
            discard: store.supports_discard() && !read_only,
            write_zeroes: store.supports_write_zeroes() && !read_only,
            queues,
            queue_size,
        }
    }

    /// Data segments per request: the queue size less the header and status descriptors.
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size).saturating_sub(2).max(1)
    }

    /// Virtio feature bits offered (the vhost-user PROTOCOL_FEATURES bit is added by the
    /// backend).
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if self.write_zeroes {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// The whole config space, little-endian, laid out as `struct virtio_blk_config`.
    pub fn space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.capacity / SECTOR_SIZE).to_le_bytes());
        put(12, &self.seg_max().to_le_bytes());
        put(20, &self.block_size.to_le_bytes());
        put(NUM_QUEUES_OFFSET, &self.queues.to_le_bytes());
        let align = self.block_size / SECTOR_SIZE as u32;
        if self.discard {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
            put(44, &align.to_le_bytes());
        }
        if self.write_zeroes {
            put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
            put(56, &[1]);
        }
        c
    }

    /// `size` bytes of the config space from `offset`; bytes past its end read as zero.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        read_config_bytes(&self.space(), u64::from(offset), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(read_only: bool) -> DeviceConfig {
        DeviceConfig {
            capacity: 1 << 30,
            block_size: 4096,
            read_only,
            discard: !read_only,
            write_zeroes: !read_only,
            queues: 4,
            queue_size: 128,
        }
    }

    #[test]
    fn layout_matches_the_kernel_struct() {
        let c = cfg(false);
        let k = virtio_blk_config {
            capacity: (1u64 << 30) / 512,
            seg_max: 126,
            blk_size: 4096,
            num_queues: 4,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEGMENTS,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS,
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };
        // SAFETY: virtio_blk_config is a packed plain-old-data struct of CONFIG_LEN bytes.
        let raw: [u8; CONFIG_LEN] = unsafe { std::mem::transmute(k) };
        assert_eq!(c.space(), raw);
    }

    #[test]
    fn features_follow_the_store() {
        let rw = cfg(false).features();
        let ro = cfg(true).features();
        assert_ne!(rw & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_ne!(ro & (1 << VIRTIO_F_VERSION_1), 0);
    }

    #[test]
    fn reads_are_sized_as_asked() {
        let c = cfg(false);
        assert_eq!(c.read(0, 8), ((1u64 << 30) / 512).to_le_bytes().to_vec());
        assert_eq!(c.read(34, 2), vec![4, 0]);
        assert_eq!(c.read(CONFIG_LEN as u32 - 2, 8).len(), 8);
        assert_eq!(c.read(u32::MAX, 4), vec![0; 4]);
    }
}
