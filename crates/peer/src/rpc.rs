//! This node's requests to its peers. Every one goes through [`Peers::exchange`]: one stream,
//! one request, at most one answer, within a deadline, and never to a peer the fault switch
//! cuts off.

use crate::convert::outcome_from_wire;
use crate::links::{Link, Peers};
use ferry_proto::peer::{
    peer_request, ForwardRequest, ForwardResponse, GateRequest, GateResponse, LoginReserve,
    LoginVerdict, PeerRequest, Rejoin, RejoinReply, RelayRequest, RelayResponse, StoreProbe,
    StoreProbeReply,
};
use ferry_proto::state::Command;
use ferry_proto::wire;
use ferry_replica::ProposeError;
use ferry_state::Outcome;
use ferry_transport::framed;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

/// Time a forwarded proposal may take; past it the leader is presumed gone and the caller
/// retries with whoever leads next. Covers the leader's fsync and a quorum round trip.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a peer may take to say whether it has seen a raft id (an answer from local state).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time a rejoin may take: up to three membership changes, each a proposal of
/// `raft.propose_timeout_ms` (5 s by default), forwarded once.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Time a gate request to the leader may take: a read index (2 s at most), a proposal
/// (`raft.propose_timeout_ms`, 5 s by default) and room for both round trips. Giving up
/// earlier would report a failure for a lease that is then recorded.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the leader may take to reserve a login attempt (an answer from memory).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A session's streams toward whoever carries it on (its host agent, or the broker the host is
/// attached to), after the answer to its `SessionStart`.
pub type SessionStreams = (
    quinn::SendStream,
    quinn::RecvStream,
    wire::SessionStartReply,
);

/// Why a request got no answer (said after the peer's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoAnswer {
    #[error("is cut off by the fault switch")]
    Blocked,
    #[error("is unreachable")]
    Unreachable,
    #[error("failed: {0}")]
    Failed(String),
    #[error("did not answer in time")]
    Timeout,
}

impl Peers {
    /// Sends `request` on a new stream to `link` and reads its one answer, within `timeout`.
    /// The streams stay open for what follows (a relayed session).
    async fn exchange_streams<R: prost::Message + Default>(
        &self,
        link: &Link,
        request: peer_request::Request,
        timeout: Duration,
        finish: bool,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, R), NoAnswer> {
        if self.is_blocked(link.config.raft_id) {
            return Err(NoAnswer::Blocked);
        }
        let limits = self.limits.frames();
        let exchange = async {
            let conn = self.connection(link).await.ok_or(NoAnswer::Unreachable)?;
            let failed = |e: &dyn std::fmt::Display| NoAnswer::Failed(e.to_string());
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
            let request = PeerRequest {
                request: Some(request),
            };
            framed::write(&mut send, &request, limits)
                .await
                .map_err(|e| failed(&e))?;
            if finish {
                let _ = send.finish();
            }
            let answer = framed::read::<R, _>(&mut recv, limits)
                .await
                .map_err(|e| failed(&e))?;
            Ok((send, recv, answer))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| NoAnswer::Timeout)?
    }

    /// One request, one answer (see [`Peers::exchange_streams`]).
    pub(crate) async fn exchange<R: prost::Message + Default>(
        &self,
        link: &Link,
        request: peer_request::Request,
        timeout: Duration,
    ) -> Result<R, NoAnswer> {
        self.exchange_streams(link, request, timeout, true)
            .await
            .map(|(_, _, answer)| answer)
    }

    /// One request that has no answer (a health report), within `timeout`.
    pub(crate) async fn notify(
        &self,
        link: &Link,
        request: peer_request::Request,
        timeout: Duration,
    ) -> Result<(), NoAnswer> {
        if self.is_blocked(link.config.raft_id) {
            return Err(NoAnswer::Blocked);
        }
        let limits = self.limits.frames();
        let send = async {
            let conn = self.connection(link).await.ok_or(NoAnswer::Unreachable)?;
            let failed = |e: &dyn std::fmt::Display| NoAnswer::Failed(e.to_string());
            let (mut send, _recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
            let request = PeerRequest {
                request: Some(request),
            };
            framed::write(&mut send, &request, limits)
                .await
                .map_err(|e| failed(&e))?;
            send.finish().map_err(|e| failed(&e))
        };
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| NoAnswer::Timeout)?
    }

    /// Asks the leader (raft id `leader`) to propose `command` and returns its outcome. A
    /// leader that cannot be reached or does not answer in time is reported as not leading:
    /// the caller retries with whoever leads next.
    pub async fn forward(&self, leader: u64, command: &Command) -> Result<Outcome, ProposeError> {
        let link = self
            .link(leader)
            .ok_or(ProposeError::NotLeader { leader })?;
        let request = peer_request::Request::Forward(ForwardRequest {
            command: command.encode_to_vec(),
        });
        let response: ForwardResponse = self
            .exchange(&link, request, FORWARD_TIMEOUT)
            .await
            .map_err(|_| ProposeError::NotLeader { leader })?;
        outcome_from_wire(response)
    }

    /// Asks the leader `leader` (raft id) to reserve a login attempt (or forgive one). `None`
    /// when it cannot be reached or does not answer (a leader of an older version).
    pub async fn reserve_login(&self, leader: u64, request: &LoginReserve) -> Option<LoginVerdict> {
        let link = self.link(leader)?;
        let request = peer_request::Request::Login(request.clone());
        self.exchange(&link, request, LOGIN_TIMEOUT).await.ok()
    }

    /// Asks the leader `leader` (raft id) for a gate answer. `None` when it cannot be reached.
    pub async fn ask_gate(&self, leader: u64, request: &GateRequest) -> Option<GateResponse> {
        let link = self.link(leader)?;
        let request = peer_request::Request::Gate(request.clone());
        self.exchange(&link, request, GATE_TIMEOUT).await.ok()
    }

    /// Asks every peer, at once, whether it has seen `raft_id` take part: each peer's config
    /// and its answer (`None`: no answer).
    pub async fn probe(
        self: &Arc<Self>,
        raft_id: u64,
    ) -> Vec<(crate::PeerConfig, Option<StoreProbeReply>)> {
        let mut asks = tokio::task::JoinSet::new();
        for link in self.all_links() {
            let this = self.clone();
            asks.spawn(async move {
                let request = peer_request::Request::Probe(StoreProbe { raft_id });
                let answer = this.exchange(&link, request, PROBE_TIMEOUT).await.ok();
                (link.config.clone(), answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = asks.join_next().await {
            answers.extend(answer.ok());
        }
        answers
    }

    /// Asks the peers in turn to have the leader give this node a new raft id; the first
    /// answer with an id wins. The errors of those that refused, otherwise.
    pub async fn rejoin(&self, request: &Rejoin) -> Result<u64, Vec<String>> {
        let mut links = self.all_links();
        links.sort_by(|a, b| a.config.node_id.cmp(&b.config.node_id));
        let mut errors = Vec::new();
        for link in links {
            let ask = peer_request::Request::Rejoin(request.clone());
            match self
                .exchange::<RejoinReply>(&link, ask, REJOIN_TIMEOUT)
                .await
            {
                Ok(reply) if reply.raft_id != 0 => return Ok(reply.raft_id),
                Ok(reply) => errors.push(format!("{}: {}", link.config.node_id, reply.error)),
                Err(e) => errors.push(format!("{} {e}", link.config.node_id)),
            }
        }
        Err(errors)
    }

    /// Forwards a rejoin request to the leader `leader`.
    pub async fn forward_rejoin(&self, leader: u64, request: &Rejoin) -> Option<RejoinReply> {
        let link = self.link(leader)?;
        let ask = peer_request::Request::Rejoin(request.clone());
        self.exchange(&link, ask, REJOIN_TIMEOUT).await.ok()
    }

    /// Asks broker `node_id` to carry a session to a host attached to it. On success the
    /// returned streams carry the session's frames, after the host's reply.
    pub async fn open_relay(
        &self,
        node_id: &str,
        request: RelayRequest,
        deadline: Duration,
    ) -> Result<SessionStreams, wire::Error> {
        let unavailable = |why: String| wire::Error::new(wire::ErrorCode::Unavailable, why);
        let link = self
            .link_named(node_id)
            .ok_or_else(|| unavailable(format!("broker {node_id} is not a peer of this one")))?;
        let request = peer_request::Request::Relay(request);
        match self
            .exchange_streams::<RelayResponse>(&link, request, deadline, false)
            .await
        {
            Err(e) => Err(unavailable(format!("broker {node_id} {e}"))),
            Ok((_, _, RelayResponse { error: Some(e), .. })) => Err(e),
            Ok((send, recv, RelayResponse { error: None, reply })) => {
                Ok((send, recv, reply.unwrap_or_default()))
            }
        }
    }
}
