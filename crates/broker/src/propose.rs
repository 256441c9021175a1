//! [`Proposer`]: writes and fresh reads from anywhere in the cluster. A command proposed on a
//! follower is forwarded to the leader (through the peer links); a read that must be fresh
//! waits for a read index. Every handler that writes goes through it.

use crate::metrics::Metrics;
use ferry_peer::Peers;
use ferry_proto::state::{command::Kind, Command};
use ferry_replica::{ProposeError, Replica};
use std::sync::Arc;
use std::time::Duration;

/// How long a request waits for a read index before it is refused.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded write waits for this node to apply it before answering anyway.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(1);

/// A cheap handle (clone it) to propose and confirm reads.
#[derive(Clone)]
pub struct Proposer {
    replica: Replica,
    /// Where forwarded proposals go; `None` in a one-node cluster.
    peers: Option<Arc<Peers>>,
    metrics: Arc<Metrics>,
    /// How long a proposal may take, forwarding and leader changes included.
    propose_timeout: Duration,
    /// How recent a leader's contact must be for the local state to authorize a request.
    read_staleness: Duration,
}

impl Proposer {
    pub fn new(
        replica: Replica,
        peers: Option<Arc<Peers>>,
        metrics: Arc<Metrics>,
        propose_timeout: Duration,
        read_staleness: Duration,
    ) -> Self {
        Self {
            replica,
            peers,
            metrics,
            propose_timeout,
            read_staleness,
        }
    }

    /// Makes sure the local state is fresh enough to authorize a request (docs/DESIGN.md
    /// section 3.1).
    ///
    /// A node that heard from a leader within `raft.read_staleness_ms` reads its applied state
    /// as is: it can be behind by at most what the leader committed in that window (a token
    /// revoked or a grant removed less than that long ago may still be honoured once). Past
    /// the window, it asks the leader for a read index and waits until it has applied it, so an
    /// isolated node never authorizes from a state it cannot vouch for; when no quorum answers
    /// in time the request is refused (the safe default: a minority admits nothing new).
    pub async fn confirm_fresh(&self) -> Result<(), ProposeError> {
        match self.replica.since_leader_contact() {
            Some(since) if since <= self.read_staleness => Ok(()),
            _ => self.confirm_current().await,
        }
    }

    /// Makes sure the local state holds every write committed before this call (a read
    /// index): for answers that must not miss a recent write, such as "this token is not
    /// valid" before a logout is declared done.
    pub async fn confirm_current(&self) -> Result<(), ProposeError> {
        self.metrics.read_index_reads.inc();
        self.replica.read_index(READ_INDEX_TIMEOUT).await
    }

    /// Proposes locally when this node leads, else forwards to the leader; when the leader is
    /// unreachable (it may just have died), retries against whoever leads next, until the
    /// propose timeout.
    async fn propose_anywhere(
        &self,
        command: Command,
    ) -> Result<ferry_state::Outcome, ProposeError> {
        let timeout = self.propose_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leader = match self.replica.propose(command.clone()).await {
                Err(ProposeError::NotLeader { leader }) => leader,
                other => return other,
            };
            let Some(peers) = &self.peers else {
                return Err(ProposeError::NotLeader { leader });
            };
            match peers.forward(leader, &command).await {
                Err(ProposeError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ProposeError::NotLeader { .. }) => return Err(ProposeError::Timeout(timeout)),
                Ok(outcome) => {
                    // The leader applied it; this node may not have yet. Whoever asked here
                    // reads this node's state next (a host agent attaching right after its
                    // enrollment), so wait until it reflects the write: read your writes.
                    // Best effort: the write is done whatever this answers.
                    let _ = self.replica.read_index(READ_YOUR_WRITES_TIMEOUT).await;
                    return Ok(outcome);
                }
                other => return other,
            }
        }
    }

    /// Proposes a command stamped with the current time, counting the result.
    pub async fn propose(
        &self,
        actor: String,
        source: String,
        kind: Kind,
    ) -> Result<ferry_state::Outcome, ProposeError> {
        let command = Command {
            now_ms: crate::now_ms(),
            actor,
            source,
            kind: Some(kind),
        };
        let result = self.propose_anywhere(command).await;
        let label = match &result {
            Ok(ferry_state::Outcome::Refused(_)) => "refused",
            Ok(_) => "applied",
            Err(_) => "failed",
        };
        self.metrics
            .proposals
            .get_or_create(&crate::metrics::Result_ { result: label })
            .inc();
        result
    }
}
