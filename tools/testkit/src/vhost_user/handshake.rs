//! Connecting to a vhost-user backend and negotiating its features.

use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

/// Feature bit VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// What a backend offered in [`handshake`].
pub struct Offered {
    /// Its virtio features.
    pub features: u64,
    /// Its vhost-user protocol features.
    pub protocol: VhostUserProtocolFeatures,
}

/// Connects to the backend at `socket` for `queues` queues and negotiates: panics with
/// "{name} is not offered" unless it offers VERSION_1, PROTOCOL_FEATURES and every
/// `(bit, name)` of `required`; acknowledges those two and `want`; takes the CONFIG, MQ and
/// REPLY_ACK protocol features it offers. The memory table and the queues come next.
pub fn handshake(
    socket: &Path,
    queues: u16,
    required: &[(u64, &str)],
    want: u64,
) -> (Frontend, Offered) {
    let mut fe = Frontend::connect(socket, u64::from(queues)).expect("vhost-user connect");
    fe.set_owner().expect("set_owner");
    let features = fe.get_features().expect("get_features");
    let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let always = [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (protocol_bit, "PROTOCOL_FEATURES"),
    ];
    for &(bit, name) in always.iter().chain(required) {
        assert_ne!(features & bit, 0, "{name} is not offered");
    }
    fe.set_features(VIRTIO_F_VERSION_1 | protocol_bit | want)
        .expect("set_features");
    let protocol = fe.get_protocol_features().expect("get_protocol_features");
    fe.set_protocol_features(
        protocol
            & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK),
    )
    .expect("set_protocol_features");
    (fe, Offered { features, protocol })
}
