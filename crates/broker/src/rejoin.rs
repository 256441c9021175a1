//! Settling the raft id of a node whose store is empty, and answering peers that ask.
//!
//! The decisions are `ferry-policy`'s (`identity`: may this empty store take its configured
//! raft id, given its peers' answers; `replacement`: how the leader replaces a member that lost
//! its store), where the rules and their reasons are written down and simulated. This module
//! asks the peers, carries the decisions out, and says what the node waits for.
//!
//! Until then the node serves what it can without consensus.

use crate::config::NodeConfig;
use crate::supervisor::Services;
use ferry_peer::Peers;
use ferry_policy::identity::Known;
use ferry_policy::{Asked, Decision};
use ferry_proto::peer::{Rejoin, RejoinReply, StoreProbe, StoreProbeReply};
use ferry_proto::state::{command::Kind, Member, MemberRole, MembershipAction};
use ferry_replica::{membership_command, ProposeError, Replica};
use ferry_state::Outcome;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Pause between rounds of asking peers.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// Attempts at removing a rejoining node's old id while the survivors look unreachable.
const REMOVE_ATTEMPTS_MAX: u32 = 10;
/// Pause between them: about a heartbeat round trip.
const REMOVE_RETRY: Duration = Duration::from_millis(300);

/// How this node's empty store is to be made its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub raft_id: u64,
    /// The configuration a new cluster starts with; empty for a node a leader adds.
    pub voters: Vec<u64>,
}

/// Waits until this node may initialize its empty store, and returns under which raft id.
/// `lost` says why it must rejoin whatever its peers say (its store was quarantined, or its data
/// directory held a store before). `None` on shutdown.
pub async fn settle(
    config: &NodeConfig,
    peers: Option<&Arc<Peers>>,
    services: &Services,
    lost: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Identity> {
    let configured = config.raft.id;
    // Once a peer said the configured id took part, the node rejoins whatever later answers
    // say: a later answer may come from a peer that has not caught up yet.
    let mut lost: Option<String> = lost.map(str::to_owned);
    // What the node last logged it waits for: said once, not every round.
    let mut last_said: Option<String> = None;
    loop {
        // Peers are asked only while the answer matters.
        let answers = match (peers, &lost) {
            (Some(peers), None) => Some(probe(peers, configured).await),
            (Some(_), Some(_)) => Some(Vec::new()),
            (None, _) => None,
        };
        let decision = ferry_policy::identity(
            configured,
            &config.raft.initial_voters,
            lost.as_deref(),
            answers.as_deref(),
        );
        let waiting = match decision {
            Decision::TakeConfigured => {
                tracing::info!(
                    raft_id = configured,
                    "empty store: taking the configured raft id"
                );
                return Some(Identity {
                    raft_id: configured,
                    voters: config.raft.initial_voters.clone(),
                });
            }
            Decision::Rejoin { why } => {
                let peers = peers.expect("the policy rejoins only with peers");
                lost = Some(why.clone());
                match ask_rejoin(config, peers, services, &why).await {
                    Ok(raft_id) => return Some(rejoined(raft_id, configured)),
                    Err(waiting) => waiting,
                }
            }
            Decision::Wait { waiting } => waiting,
        };
        if last_said.as_deref() != Some(waiting.as_str()) {
            tracing::warn!(%waiting, "consensus cannot start yet");
            last_said = Some(waiting.clone());
        }
        services.report("raft", ferry_gate::ServiceState::Starting, waiting);
        tokio::select! {
            _ = tokio::time::sleep(ASK_EVERY) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

fn rejoined(raft_id: u64, configured: u64) -> Identity {
    tracing::warn!(
        raft_id,
        old_raft_id = configured,
        "rejoining the cluster under a new raft id"
    );
    Identity {
        raft_id,
        voters: Vec::new(),
    }
}

/// Asks every peer whether `raft_id` has taken part.
async fn probe(peers: &Arc<Peers>, raft_id: u64) -> Vec<Asked> {
    peers
        .probe(raft_id)
        .await
        .into_iter()
        .map(|(peer, answer)| Asked {
            node_id: peer.node_id,
            raft_id: peer.raft_id,
            answer,
        })
        .collect()
}

async fn ask_rejoin(
    config: &NodeConfig,
    peers: &Peers,
    services: &Services,
    why: &str,
) -> Result<u64, String> {
    services.report(
        "raft",
        ferry_gate::ServiceState::Starting,
        format!("rejoining under a new raft id ({why}): asking the peers for the leader"),
    );
    let request = Rejoin {
        node_id: config.node_id.clone(),
        peer_addr: config
            .peer_addr
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        relay_addr: match config.role {
            ferry_gate::Role::Broker => config.relay_addr.to_string(),
            ferry_gate::Role::Witness => String::new(),
        },
        witness: config.role == ferry_gate::Role::Witness,
        reason: why.to_owned(),
    };
    peers.rejoin(&request).await.map_err(|errors| {
        format!(
            "rejoining under a new raft id ({why}); asked the peers, none could do it yet: {}. \
             A leader is needed: if a majority of the voters lost their stores, the cluster \
             cannot recover by itself (docs/OPERATIONS.md, 'Lost stores')",
            errors.join("; ")
        )
    })
}

/// A peer asks whether its raft id has taken part: answered from this node's applied state
/// (`ferry_policy::answer` says what counts).
pub fn answer_probe(config: &NodeConfig, replica: &Replica, probe: &StoreProbe) -> StoreProbeReply {
    let raft_id = replica.raft_id();
    ferry_policy::answer(&ferry_policy::Knowledge {
        raft_id,
        applied: replica.applied_index(),
        never_had_store: replica.is_fresh(),
        bootstrapped: raft_id == config.raft.id && !config.raft.initial_voters.is_empty(),
        seen: replica.read().was_seen(probe.raft_id),
    })
}

/// One replacement at a time on a leader: each is up to three membership changes in a row.
static REPLACING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node with an empty store asks for a new raft id (`from` is the name in the certificate
/// of the peer that sent the request: the node itself, or a peer forwarding it to the leader).
pub async fn answer_rejoin(
    peers: &Arc<Peers>,
    replica: &Replica,
    request: Rejoin,
    from: &str,
) -> RejoinReply {
    let refuse = |error: String| RejoinReply { raft_id: 0, error };
    if replica.raft_id() == 0 {
        return refuse("this node has not started consensus yet".into());
    }
    if !replica.status().is_leader.load(Ordering::Acquire) {
        let leader = replica.status().leader.load(Ordering::Acquire);
        if from != request.node_id {
            // Forwarded already: never forward twice (the leader changed meanwhile).
            return refuse("the leader changed; ask again".into());
        }
        if leader == 0 {
            return refuse("no leader is known; ask again".into());
        }
        return peers
            .forward_rejoin(leader, &request)
            .await
            .unwrap_or_else(|| refuse(format!("the leader (raft id {leader}) did not answer")));
    }
    let _one = REPLACING.lock().await;
    match replace(peers, replica, &request).await {
        Ok(raft_id) => RejoinReply {
            raft_id,
            error: String::new(),
        },
        Err(e) => {
            tracing::warn!(node = %request.node_id, error = %e, "cannot replace a member that asks to rejoin yet");
            refuse(e)
        }
    }
}

/// On the leader: removes every raft id of `request.node_id` and adds the node as a learner
/// under a new raft id (planned by `ferry_policy::replacement`), which the leader promotes
/// once it has caught up.
async fn replace(peers: &Peers, replica: &Replica, request: &Rejoin) -> Result<u64, String> {
    let node = &request.node_id;
    let plan = {
        let membership = replica.membership();
        let state = replica.read();
        let configured: Vec<(&str, u64)> = peers
            .configured()
            .iter()
            .map(|p| (p.node_id.as_str(), p.raft_id))
            .collect();
        let members: Vec<(&str, u64, bool)> = state
            .members()
            .map(|m| (m.node_id.as_str(), m.raft_id, m.voter))
            .collect();
        let known_ids: Vec<u64> = state.known_raft_ids().collect();
        ferry_policy::replacement(&Known {
            node,
            configured: &configured,
            members: &members,
            voters: &membership.voters,
            learners: &membership.learners,
            known_ids: &known_ids,
            own: replica.raft_id(),
        })
        .map_err(|e| e.to_string())?
    };
    // Where the node is reached: its configured address where this leader has one (a node
    // may listen on a wildcard address, which nobody can dial), else what it says.
    let configured = peers.configured().iter().find(|p| &p.node_id == node);
    let peer_addr = match configured {
        Some(p) => p.peer_addr.to_string(),
        None => request.peer_addr.clone(),
    };
    let relay_addr = match configured.and_then(|p| p.relay_addr.as_ref()) {
        Some(addr) => addr.to_string(),
        None => request.relay_addr.clone(),
    };
    match peer_addr.parse::<ferry_transport::addr::HostPort>() {
        Ok(addr) if !addr.as_ip().is_some_and(|ip| ip.is_unspecified()) => {}
        _ => {
            return Err(format!(
                "{node}'s peer address {peer_addr:?} cannot be dialled; list it in the peers \
                 of this node's config, or give {node} a specific peer_addr"
            ))
        }
    }
    let member = |raft_id: u64| Member {
        raft_id,
        node_id: node.clone(),
        peer_addr: peer_addr.clone(),
        role: if request.witness {
            MemberRole::Witness
        } else {
            MemberRole::Broker
        } as i32,
        voter: plan.voter,
        relay_addr: relay_addr.clone(),
    };
    let next = plan.add;
    let reason = format!("{node} rejoins under raft id {next}: {}", request.reason);
    for id in &plan.remove {
        // The leader counts a voter reachable when it heard from it within an election
        // timeout: right after a leader change the survivors may not have answered yet, and
        // it refuses a removal that would leave too few reachable. Ask again a few times.
        let mut attempts = 0;
        loop {
            match propose(replica, MembershipAction::Remove, member(*id), &reason).await {
                Err(ChangeError::Refused(_)) if attempts < REMOVE_ATTEMPTS_MAX => {
                    attempts += 1;
                    tokio::time::sleep(REMOVE_RETRY).await;
                }
                result => break result.map_err(|e| e.to_string())?,
            }
        }
    }
    propose(replica, MembershipAction::AddLearner, member(next), &reason)
        .await
        .map_err(|e| e.to_string())?;
    tracing::warn!(node = %node, old = ?plan.remove, raft_id = next, "member replaced: the new id catches up as a learner, then is promoted");
    Ok(next)
}

/// Why a membership change of a replacement was not made.
#[derive(Debug, thiserror::Error)]
enum ChangeError {
    #[error("the leader refused: {0}")]
    Refused(String),
    #[error("leadership changed; ask again")]
    LeaderChanged,
    #[error(transparent)]
    Failed(ProposeError),
}

async fn propose(
    replica: &Replica,
    action: MembershipAction,
    member: Member,
    reason: &str,
) -> Result<(), ChangeError> {
    let mut command =
        membership_command(action, member, format!("node:raft-{}", replica.raft_id()));
    if let Some(Kind::ChangeMembership(change)) = &mut command.kind {
        change.reason = reason.to_owned();
    }
    match replica.propose(command).await {
        Ok(Outcome::Refused(r)) => Err(ChangeError::Refused(r.message)),
        Ok(_) => Ok(()),
        Err(ProposeError::NoLeader | ProposeError::NotLeader { .. }) => {
            Err(ChangeError::LeaderChanged)
        }
        Err(e) => Err(ChangeError::Failed(e)),
    }
}
