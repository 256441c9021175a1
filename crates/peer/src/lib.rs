//! Peer links between brokers: Raft messages and peer requests over QUIC with mutual TLS.
//!
//! Each node dials every peer and keeps one connection per peer for what it sends: Raft
//! messages on one unidirectional stream, requests (forwarded proposals, gate questions,
//! store probes, rejoins, relayed sessions, health reports) on bidirectional streams. It
//! accepts the peers' connections for what they send. A peer is identified by its client
//! certificate (signed by the cluster CA and naming a known node), never by what it claims,
//! and a Raft message is accepted only with that peer's Raft id as sender.
//!
//! - `links.rs`: the set of peers ([`Peers`]), reconciled with the member directory, and the
//!   test-only fault switch;
//! - `send.rs`: Raft messages out (the outbox, one sender per peer) and health broadcasts;
//! - `rpc.rs`: this node's requests to peers, all through one request/response path;
//! - `serve.rs`: the peers' connections in, every request handed to the node's [`Inbox`];
//! - `convert.rs`: proposal outcomes on the wire.
//!
//! Architecture invariants: every queue is bounded by [`Limits`] (a slow or dead peer loses its
//! own Raft messages, which Raft retransmits, and never stalls the others); the fault switch is
//! honoured on every path, in and out; this crate answers nothing itself: what a request means
//! is the node's business, reached through the [`Inbox`].

#![forbid(unsafe_code)]

mod convert;
mod inbox;
mod links;
mod rpc;
mod send;
mod serve;

pub use inbox::{Inbox, IncomingGate, IncomingRelay, Queues, Request};
pub use links::{PeerBroker, PeerConfig, Peers};
pub use rpc::SessionStreams;

/// Every bound the peer links enforce (the node's `limits.peer_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Raft messages queued per peer; beyond it they are dropped (Raft retransmits).
    pub raft_queue_max: usize,
    /// Largest peer frame: a Raft append (1 MiB of entries) or a whole-state snapshot.
    pub frame_bytes_max: usize,
    /// Peer requests (forwarded proposals, probes, rejoins, health reports) waiting for the
    /// node; beyond it they are refused.
    pub request_queue_max: usize,
    /// Relayed sessions waiting for the node; beyond it they are refused (the sessions limit
    /// applies on the client's broker, this bounds what peers can queue here).
    pub relay_queue_max: usize,
    /// Gate requests waiting for the node; beyond it they are refused.
    pub gate_queue_max: usize,
    /// Incoming peer connections still in their TLS handshake; beyond it new ones are
    /// refused, so that connection attempts cannot hold unbounded memory.
    pub handshakes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            raft_queue_max: 1024,
            frame_bytes_max: 64 * 1024 * 1024,
            request_queue_max: 1024,
            relay_queue_max: 256,
            gate_queue_max: 16,
            handshakes_max: 64,
        }
    }
}

impl Limits {
    fn frames(&self) -> ferry_proto::frame::FrameLimits {
        ferry_proto::frame::FrameLimits {
            max_frame_bytes: self.frame_bytes_max,
        }
    }
}

/// Why a long-running loop of the peer links ended (the node's supervisor restarts it).
pub type LoopResult = Result<(), String>;
