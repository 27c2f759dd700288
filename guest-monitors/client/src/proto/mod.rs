//! Wire messages of the monitors and the manager, shared by servers and typed clients.
//!
//! Hot page and block operations use a small hand-rolled little-endian codec ([`wire`]); control
//! operations carry JSON bodies (rare, and readable in captures).

pub mod manager;
pub mod memory;
pub mod storage;
pub mod wire;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors from encoding or decoding a message body.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The body ended before a field.
    #[error("the message body is truncated: needed {needed} more byte(s) for {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes were left after the last field.
    #[error("the message body has {0} unexpected trailing byte(s)")]
    Trailing(usize),
    /// A count or length is out of bounds.
    #[error("{what} is {got}, but at most {max} is allowed")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// Value found.
        got: u64,
        /// Limit.
        max: u64,
    },
    /// A data length does not match the header.
    #[error("the message carries {got} data bytes where {expected} were announced")]
    LengthMismatch {
        /// Expected bytes.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// A string field is not UTF-8.
    #[error("the field {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A JSON body did not parse.
    #[error("the JSON body could not be decoded")]
    Json(#[source] serde_json::Error),
    /// The opcode is not known to this service.
    #[error("the opcode {0:#06x} is not known to this service")]
    UnknownOpcode(u16),
}

impl From<ProtoError> for lego_fabric::RemoteError {
    fn from(e: ProtoError) -> Self {
        lego_fabric::RemoteError::new(
            lego_fabric::ErrorCode::InvalidArgument,
            lego_report::error_chain(&e),
        )
    }
}

/// Encodes a control message as JSON.
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain structs of numbers, strings and vectors cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decodes a JSON control message.
pub fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(b).map_err(ProtoError::Json)
}
