//! LegoVMM fabric: the authenticated, pipelined request/response transport that joins
//! compute hosts to memory and storage monitors (LegoOS's FIT, over TCP).
//!
//! * [`frame`]: the fixed little-endian wire header and its checksum.
//! * [`error`]: error codes that travel on the wire ([`ErrorCode`], [`RemoteError`]).
//! * [`auth`]: the cluster key and the mutual challenge-response handshake.
//! * [`capability`]: per-vNode capabilities signed with the cluster key.
//! * [`request`]: service requests and responses, and the reserved fabric opcodes.
//! * [`server`]: a multi-connection server calling a [`server::Handler`].
//! * [`client`]: a thread-safe, pipelining, reconnecting [`client::Client`].

#![deny(missing_docs)]

pub mod auth;
pub mod capability;
pub mod client;
pub mod error;
pub mod frame;
mod io;
mod pool;
pub mod request;
pub mod server;

pub use auth::{AuthError, ClusterKey};
pub use capability::{Capability, CapabilityError, Rights};
pub use client::{Client, ClientConfig, ClientError, Pending};
pub use error::{ErrorCode, RemoteError};
pub use frame::{Frame, FrameError, Header, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
pub use request::{opcode, Request, Response};
pub use server::{
    Dispatch, Handler, RequestContext, Server, ServerConfig, ServerError, ServerHandle,
};
