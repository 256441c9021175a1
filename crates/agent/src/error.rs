//! Endpoint errors, each with the exit code scripts can rely on (README "Exit codes").

use ferry_proto::wire::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file or a flag is wrong.
    #[error("{0}")]
    Config(String),
    /// No broker answered.
    #[error("cannot reach any broker: {0}")]
    Unreachable(String),
    /// A broker answered with a certificate the cluster CA did not sign.
    #[error("{0}")]
    Untrusted(String),
    /// A broker refused the request and said why.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// The broker closed the connection or broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A local resource failed (listening socket, local service, file).
    #[error("{0}")]
    Local(String),
}

/// Exit codes of the `ferry` binary. 2 is clap's usage error and 3 the restart gate's refusal.
pub mod exit {
    pub const FAILURE: u8 = 1;
    /// The restart gate refused (restart-check, drain).
    pub const REFUSED: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    pub const UNTRUSTED: u8 = 7;
    pub const CONFIG: u8 = 8;
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Unreachable(_) => exit::UNAVAILABLE,
            Error::Untrusted(_) => exit::UNTRUSTED,
            Error::Refused { code, .. } => match code {
                ErrorCode::Unauthenticated
                | ErrorCode::PermissionDenied
                | ErrorCode::Expired
                | ErrorCode::AlreadyUsed => exit::DENIED,
                ErrorCode::NotFound => exit::NOT_FOUND,
                ErrorCode::Unavailable | ErrorCode::ResourceExhausted => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            },
            Error::Protocol(_) | Error::Local(_) => exit::FAILURE,
        }
    }

    pub(crate) fn refused(e: ferry_proto::wire::Error) -> Self {
        Error::Refused {
            code: e.code(),
            message: e.message,
        }
    }
}
