//! Error codes that travel on the wire.
//!
//! A response frame whose `status` is not zero carries an [`ErrorCode`] there and a UTF-8
//! message in its payload; together they form a [`RemoteError`].

use std::fmt;

/// Why a request failed, as a `u16` in the frame's `status` field (0 means success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame was malformed (bad magic, length, checksum or layout).
    BadFrame = 1,
    /// The peer speaks another protocol version.
    VersionMismatch = 2,
    /// The peer did not prove membership of the cluster.
    Unauthenticated = 3,
    /// The peer lacks a valid capability for the vNode or the right for the operation.
    Forbidden = 4,
    /// The object (vNode, region, volume, page) does not exist.
    NotFound = 5,
    /// The serving side has no space left.
    NoSpace = 6,
    /// The request's arguments were invalid.
    InvalidArgument = 7,
    /// An I/O error happened on the serving side.
    Io = 8,
    /// The service is temporarily unavailable (shutting down, overloaded).
    Unavailable = 9,
    /// An internal error happened on the serving side.
    Internal = 10,
    /// Someone else holds the object (a vNode another legovmm runs).
    Conflict = 11,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadFrame,
        ErrorCode::VersionMismatch,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NoSpace,
        ErrorCode::InvalidArgument,
        ErrorCode::Io,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Conflict,
    ];

    /// The code's value on the wire.
    pub fn to_u16(self) -> u16 {
        self as u16
    }

    /// The code for a wire value; `None` for 0 (success) and unknown values.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.to_u16() == value)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorCode::BadFrame => "the frame was malformed",
            ErrorCode::VersionMismatch => "the peer speaks another protocol version",
            ErrorCode::Unauthenticated => "the peer is not authenticated as a cluster member",
            ErrorCode::Forbidden => "the peer is not allowed to do this",
            ErrorCode::NotFound => "the object was not found",
            ErrorCode::NoSpace => "there is no space left",
            ErrorCode::InvalidArgument => "the request had an invalid argument",
            ErrorCode::Io => "an I/O error happened on the serving side",
            ErrorCode::Unavailable => "the service is unavailable",
            ErrorCode::Internal => "an internal error happened on the serving side",
            ErrorCode::Conflict => "someone else holds the object",
        };
        f.write_str(text)
    }
}

/// An error answered by the peer: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// Details for humans; travels as the frame's payload.
    pub message: String,
}

impl RemoteError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }

    /// Rebuilds an error from a response's status and payload. Unknown codes become
    /// [`ErrorCode::Internal`] with the raw value in the message.
    pub fn from_wire(status: u16, payload: &[u8]) -> RemoteError {
        let text = String::from_utf8_lossy(payload).into_owned();
        match ErrorCode::from_u16(status) {
            Some(code) => RemoteError::new(code, text),
            None => RemoteError::new(
                ErrorCode::Internal,
                format!("unknown error code {status}: {text}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_zero_is_success() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.to_u16()), Some(code));
            assert!(!code.to_string().is_empty());
        }
        assert_eq!(ErrorCode::from_u16(0), None);
    }

    #[test]
    fn unknown_code_becomes_internal() {
        let e = RemoteError::from_wire(999, b"boom");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("999") && e.message.contains("boom"));
    }
}
