//! [`Ctx`]: the handles of a node's components, built and wired by `node.rs` and handed to the
//! services and handlers that need them. Each handle is defined by the component that owns it
//! (`Proposer` in `propose.rs`, `Health` in `health.rs`, `Sessions` in `relay/`, `GateState` in
//! `gate.rs`); this module only groups them, and hands a component the few it needs
//! (`Ctx::upkeep`). Nothing here does anything.

use crate::config::NodeConfig;
use crate::gate::GateState;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::propose::Proposer;
use crate::relay::Sessions;
use crate::startup::Consensus;
use ferry_peer::Peers;
use ferry_replica::Replica;
use std::sync::Arc;

/// Everything the node's services and handlers share, as handles.
pub struct Ctx {
    /// This node's settings, as loaded and validated at start.
    pub config: NodeConfig,
    /// The replicated state and this node's consensus driver.
    pub replica: Replica,
    /// Writes and fresh reads from anywhere in the cluster (forwarding to the leader).
    pub proposer: Proposer,
    /// Links to the other brokers; `None` in a one-node cluster.
    pub peers: Option<Arc<Peers>>,
    pub metrics: Arc<Metrics>,
    /// The node's services, its peers' reports, its own findings, its process identity.
    pub health: Health,
    /// What the relay holds: attached hosts, endpoints' control streams, slots, throttle.
    pub sessions: Sessions,
    /// The restart gate's memory, this node's lease and drain state.
    pub gate: GateState,
    /// The consensus driver's settings and queues, for the "raft" service that (re)starts it.
    pub consensus: Consensus,
    /// Limits on what unauthenticated peers can make this node do or hold.
    pub admission: crate::admission::Admission,
    /// SHA-256 of the admin bearer token.
    pub admin_token_hash: Vec<u8>,
}

impl Ctx {
    /// The handles the leader's upkeep (`sweep.rs`) needs.
    pub fn upkeep(&self) -> crate::sweep::Upkeep {
        crate::sweep::Upkeep {
            node_id: self.config.node_id.clone(),
            replica: self.replica.clone(),
            proposer: self.proposer.clone(),
            peers: self.peers.clone(),
            metrics: self.metrics.clone(),
            resume_window: self.config.limits.session_resume_window(),
        }
    }
}
