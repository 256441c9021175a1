//! What peers ask of this node, on its way to the node: every inbound request but Raft
//! messages (which go straight to the replica) is handed over here, through bounded queues.

use ferry_proto::peer::{
    GateRequest, GateResponse, HealthReport, LoginReserve, LoginVerdict, Rejoin, RejoinReply,
    RelayRequest, StoreProbe, StoreProbeReply,
};
use ferry_proto::state::Command;
use ferry_replica::ProposeError;
use ferry_state::Outcome;
use tokio::sync::{mpsc, oneshot};

/// A request from a peer, with where its answer goes (a dropped reply answers with an error
/// or nothing, as each kind says).
#[derive(Debug)]
pub enum Request {
    /// A proposal a follower forwards to this node as leader.
    Forward {
        command: Command,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    /// A node with an empty store asks whether its raft id has taken part.
    Probe {
        probe: StoreProbe,
        reply: oneshot::Sender<StoreProbeReply>,
    },
    /// A node asks for a new raft id (`from`: the name in the certificate of the peer that
    /// sent it, the node itself or a peer forwarding it to the leader).
    Rejoin {
        request: Rejoin,
        from: String,
        reply: oneshot::Sender<RejoinReply>,
    },
    /// A peer's health report.
    Health { from: String, report: HealthReport },
    /// A broker asks this node, as leader, to reserve a login attempt (or forgive one).
    Login {
        request: LoginReserve,
        reply: oneshot::Sender<LoginVerdict>,
    },
}

/// A session another broker asks this one to carry to a host attached here.
pub struct IncomingRelay {
    pub request: RelayRequest,
    /// Toward the client's broker; the answer (`RelayResponse`) goes first.
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// A gate request from a peer and where its answer goes.
pub type IncomingGate = (GateRequest, oneshot::Sender<GateResponse>);

/// The node's ends of the queues: bounded by [`crate::Limits`].
#[derive(Clone)]
pub struct Inbox {
    pub requests: mpsc::Sender<Request>,
    pub relays: mpsc::Sender<IncomingRelay>,
    pub gates: mpsc::Sender<IncomingGate>,
}

/// The receiving ends, for the node's services.
pub struct Queues {
    pub requests: mpsc::Receiver<Request>,
    pub relays: mpsc::Receiver<IncomingRelay>,
    pub gates: mpsc::Receiver<IncomingGate>,
}

impl Inbox {
    /// Creates the inbox and the queues behind it.
    pub fn new(limits: &crate::Limits) -> (Inbox, Queues) {
        let (requests, requests_rx) = mpsc::channel(limits.request_queue_max);
        let (relays, relays_rx) = mpsc::channel(limits.relay_queue_max);
        let (gates, gates_rx) = mpsc::channel(limits.gate_queue_max);
        (
            Inbox {
                requests,
                relays,
                gates,
            },
            Queues {
                requests: requests_rx,
                relays: relays_rx,
                gates: gates_rx,
            },
        )
    }
}
