//! LegoVMM fabric: the authenticated, pipelined request/response transport that joins
//! compute hosts to memory and storage monitors (LegoOS's FIT, over TCP).
//!
//! * [`frame`]: the fixed little-endian wire header and its checksum.
//! * [`error`]: error codes that travel on the wire ([`ErrorCode`], [`RemoteError`]).
//! * [`auth`]: the cluster key and the mutual challenge-response handshake.
//! * [`credential`]: per-host credentials by role, issued from the cluster key.
//! * [`capability`]: per-vNode capabilities signed by the manager (Ed25519).
//! * [`request`]: service requests and responses, and the reserved fabric opcodes.
//! * [`seal`]: per-frame MAC, sequence numbers and optional encryption after the handshake.
//! * [`server`]: a multi-connection server calling a [`server::Handler`].
//! * [`client`]: a thread-safe, pipelining, reconnecting [`client::Client`].

#![deny(missing_docs)]

pub mod auth;
pub mod capability;
pub mod client;
pub mod credential;
pub mod error;
pub mod frame;
mod io;
mod pool;
pub mod request;
pub mod seal;
pub mod server;

pub use auth::{AuthError, ClusterKey};
pub use capability::{Capability, CapabilityError, CapabilityKey, CapabilityPublicKey, Rights};
pub use client::{Client, ClientConfig, ClientError, Pending};
pub use credential::{Credential, CredentialError, Identity, Peer, Role};
pub use error::{ErrorCode, RemoteError};
pub use frame::{Frame, FrameError, Header, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
pub use request::{opcode, Request, Response};
pub use seal::{FrameProtection, SealError};
pub use server::{
    Dispatch, Handler, RequestContext, Server, ServerConfig, ServerError, ServerHandle,
};
