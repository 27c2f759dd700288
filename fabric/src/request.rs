//! Service requests and responses, and the opcodes the fabric reserves for itself.

/// Opcodes. 0x0000-0x00FF belong to the fabric; services use 0x0100 and up
/// (memory monitor 0x01xx, storage monitor 0x02xx, manager 0x03xx).
pub mod opcode {
    /// Handshake step 1: client nonce; answered with server nonce and server proof.
    pub const HELLO: u16 = 0x0001;
    /// Handshake step 2: client proof; answered with an empty success.
    pub const AUTH: u16 = 0x0002;
    /// Attaches a capability (payload: `Capability::to_bytes`) to the connection.
    pub const ATTACH_CAPABILITY: u16 = 0x0003;
    /// Liveness check; the payload is echoed back.
    pub const PING: u16 = 0x0004;
    /// A connection-level error frame (status: the code, payload: the message); the
    /// connection is closed after it.
    pub const ERROR: u16 = 0x0005;
    /// The first opcode available to services.
    pub const FIRST_SERVICE: u16 = 0x0100;
    /// The memory monitor's range starts here.
    pub const MEMORY_BASE: u16 = 0x0100;
    /// The storage monitor's range starts here.
    pub const STORAGE_BASE: u16 = 0x0200;
    /// The manager's range starts here.
    pub const MANAGER_BASE: u16 = 0x0300;

    /// Whether `op` is reserved for the fabric itself.
    pub fn is_reserved(op: u16) -> bool {
        op < FIRST_SERVICE
    }
}

/// A request to a service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The operation (0x0100 and up for services).
    pub opcode: u16,
    /// The vNode the request concerns; 0 for cluster-level requests.
    pub vnode: u64,
    /// Service-defined flags (bit 15 is reserved by the fabric).
    pub flags: u16,
    /// The request's body.
    pub payload: Vec<u8>,
}

impl Request {
    /// A request with no flags.
    pub fn new(opcode: u16, vnode: u64, payload: impl Into<Vec<u8>>) -> Request {
        Request {
            opcode,
            vnode,
            flags: 0,
            payload: payload.into(),
        }
    }

    /// The same request with `flags` set.
    pub fn with_flags(mut self, flags: u16) -> Request {
        self.flags = flags;
        self
    }
}

/// A successful response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The response's body.
    pub payload: Vec<u8>,
    /// The incarnation of the server process that answered (see [`crate::auth`]): the same
    /// for every response while the server lives, another once it restarted.
    pub incarnation: u64,
}
