//! Feature negotiation between the guest, legovmm and a vhost-user backend, for any device
//! type: which of the backend's virtio features the guest may see, which protocol features
//! legovmm uses, and the bounds on a device's queue count.

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::virtio::{
    feature, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// The vhost-user feature bit that enables protocol-feature negotiation (never shown to
/// the guest).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The most queues legovmm gives one vhost-user device.
pub const MAX_QUEUES: usize = 16;

/// The virtio features of the backend that the guest may negotiate: the device-specific
/// bits (0-23) and the ring and transport features the virtio-mmio transport handles
/// (INDIRECT_DESC, EVENT_IDX, VERSION_1). Everything else (packed rings, notification data,
/// queue reset, platform IOMMU, the vhost-user bits) stays hidden.
pub fn guest_features(backend: u64) -> u64 {
    let transport = feature(VIRTIO_RING_F_INDIRECT_DESC)
        | feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_F_VERSION_1);
    let device_specific = (1u64 << 24) - 1;
    backend & (device_specific | transport)
}

/// The features to send with SET_FEATURES: what the guest accepted, plus the vhost-user
/// protocol-features bit (the backend offered it, or negotiation would not have started).
pub fn features_to_ack(guest_acked: u64) -> u64 {
    guest_acked | VHOST_USER_F_PROTOCOL_FEATURES
}

/// The protocol features legovmm uses out of those the backend offers: CONFIG (required:
/// the config space holds the capacity), MQ and REPLY_ACK when offered. `None` when the
/// backend lacks CONFIG.
pub fn protocol_features(offered: VhostUserProtocolFeatures) -> Option<VhostUserProtocolFeatures> {
    if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
        return None;
    }
    let wanted = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    Some(offered & wanted)
}

/// The number of queues a device gets when it wants `wanted`: at least 1, never more than
/// the backend's queue count (when it told one) or [`MAX_QUEUES`].
pub fn queue_count(wanted: usize, backend_queues: Option<u64>) -> usize {
    let backend = backend_queues
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX)
        .max(1);
    wanted.max(1).min(backend).min(MAX_QUEUES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;

    #[test]
    fn the_guest_sees_device_bits_and_the_supported_ring_features_only() {
        let backend = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_BLK_F_MQ)
            | VHOST_USER_F_PROTOCOL_FEATURES
            | feature(34) // packed ring
            | feature(38) // notification data
            | feature(40); // ring reset
        let guest = guest_features(backend);
        assert_eq!(
            guest,
            feature(VIRTIO_F_VERSION_1)
                | feature(VIRTIO_RING_F_EVENT_IDX)
                | feature(VIRTIO_RING_F_INDIRECT_DESC)
                | feature(VIRTIO_BLK_F_MQ)
        );
        assert_eq!(
            features_to_ack(guest) & VHOST_USER_F_PROTOCOL_FEATURES,
            VHOST_USER_F_PROTOCOL_FEATURES
        );
    }

    #[test]
    fn protocol_features_need_config_and_take_only_what_legovmm_uses() {
        use VhostUserProtocolFeatures as P;
        assert_eq!(protocol_features(P::MQ | P::REPLY_ACK), None);
        assert_eq!(
            protocol_features(P::CONFIG | P::MQ | P::INFLIGHT_SHMFD | P::REPLY_ACK),
            Some(P::CONFIG | P::MQ | P::REPLY_ACK)
        );
        assert_eq!(protocol_features(P::CONFIG), Some(P::CONFIG));
    }
}
