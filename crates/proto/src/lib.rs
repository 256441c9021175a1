//! Ferry's wire and state messages (generated from `proto/` by prost) and the bounded frame
//! codec that carries them.
//!
//! Architecture invariant: this crate does no IO and knows nothing of QUIC or tokio. It turns
//! bytes into messages and back, and refuses anything larger than a configured bound.

#![forbid(unsafe_code)]

pub mod frame;

/// Messages between clients, host agents and brokers (`proto/ferry/wire.proto`).
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/ferry.wire.rs"));
}

/// Replicated state-machine commands, records and snapshots (`proto/ferry/state.proto`).
pub mod state {
    include!(concat!(env!("OUT_DIR"), "/ferry.state.rs"));
}

/// Messages between brokers (`proto/ferry/peer.proto`).
// A health report (with the leader's restart verdicts) is larger than the other requests; it
// is sent twice a second per peer, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
pub mod peer {
    include!(concat!(env!("OUT_DIR"), "/ferry.peer.rs"));
}

/// Raft's own messages (`proto/raft/eraftpb.proto`, raft-rs's definitions), decoded with prost
/// instead of rust-protobuf 2 wherever the bytes come from another node (see that file).
#[allow(clippy::doc_lazy_continuation, clippy::enum_variant_names)]
pub mod eraftpb {
    include!(concat!(env!("OUT_DIR"), "/eraftpb.rs"));
}

/// ALPN identifier of peer links between brokers; distinct from [`ALPN`], so an endpoint's
/// connection can never be mistaken for a peer's, and vice versa.
pub const PEER_ALPN: &[u8] = b"ferry-peer/1";

/// The protocol version this build speaks. A broker refuses any other with a reason that the
/// endpoint prints; bump it only for incompatible changes (protobuf absorbs additive ones).
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier of Ferry's QUIC connections; a TLS peer without it is refused by rustls.
pub const ALPN: &[u8] = b"ferry/1";

impl wire::Error {
    /// Builds a wire error from a code and a human-readable message.
    pub fn new(code: wire::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for wire::Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for wire::Error {}
