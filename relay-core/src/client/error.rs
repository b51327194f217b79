//! Why a TURN transaction failed.

use crate::wire::EncodeError;

/// Why a TURN transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error response.
    #[error("{method} rejected: {code} {reason}")]
    Rejected {
        /// The request's method.
        method: &'static str,
        /// The ERROR-CODE (0 when the response had none).
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// No response after every retransmission.
    #[error("{method}: no response after {tries} tries")]
    Timeout {
        /// The request's method.
        method: &'static str,
        /// Requests sent.
        tries: u32,
    },
    /// The credentials cannot be used (e.g. a password SASLprep refuses).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The password algorithm asked for cannot be used with this server
    /// (RFC 8489 §9.2: it does not offer it); the client does not fall
    /// back to another.
    #[error("password algorithm: {0}")]
    PasswordAlgorithm(String),
    /// Over a reliable transport, a response to an authenticated request
    /// whose MESSAGE-INTEGRITY is missing or does not verify (RFC 8489
    /// §9.2.5; over UDP such a response is discarded instead).
    #[error("response not authenticated: {0}")]
    Unauthenticated(&'static str),
    /// The server's answer lacked something the client needs.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A request could not be written.
    #[error("cannot encode request: {0}")]
    Encode(#[from] EncodeError),
    /// A request was started while another was in flight.
    #[error("a transaction is already in flight")]
    Busy,
    /// The driver's socket failed (the sans-IO machines never return this;
    /// it lets a driver report its transport's errors in the same type).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The STUN error code, for rejections.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}
