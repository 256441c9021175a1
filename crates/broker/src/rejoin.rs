//! Settling the raft id of a node whose store is empty, and answering peers that ask.
//!
//! An empty store is either a node's first start or a node that lost its store (quarantined
//! at start-up, wiped, a new disk). The second must never vote or acknowledge under its old
//! raft id: it may have voted in the current term or acknowledged entries it no longer has,
//! and amnesia can elect two leaders in one term. So (docs/DESIGN.md section 5):
//!
//! - a quarantined store always rejoins under a new raft id: the leader removes the node's old
//!   id, adds the new one as a learner, which catches up from a snapshot and is promoted; so
//!   does an empty store in a data directory that held one before (`ferry-node` says so);
//! - otherwise the node asks its peers whether its configured id has taken part (the leader
//!   records every id it sees replicate, `MembersSeen`). If any peer has seen it, it rejoins
//!   as above. If none has, it takes its configured id once enough peers answered: a majority
//!   of the initial voters (itself included) that have a store or never had one, or, for a node
//!   that joins a running cluster, one peer. Nodes of a new cluster thus start in any order; a
//!   node started late keeps its id; two nodes that lost their stores never outvote the one
//!   that kept it.
//!
//! Until then the node serves what it can without consensus and says what it waits for.

use crate::node::Ctx;
use crate::peer::Peers;
use crate::replication::{membership_command, ProposeError, Replica};
use ferry_proto::peer::{Rejoin, RejoinReply, StoreProbe, StoreProbeReply};
use ferry_proto::state::{command::Kind, Member, MemberRole, MembershipAction};
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
/// Raft ids are at most this: proposal tokens keep the proposer's id in 16 bits.
const RAFT_ID_MAX: u64 = u16::MAX as u64;

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
    ctx: &Arc<Ctx>,
    lost: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Identity> {
    let config = &ctx.config;
    let configured = config.raft.id;
    // What the node last logged it waits for: said once, not every round.
    let mut last_said: Option<String> = None;
    loop {
        let waiting = match (&ctx.peers, lost) {
            (None, None) => {
                return Some(Identity {
                    raft_id: configured,
                    voters: config.raft.initial_voters.clone(),
                })
            }
            (None, Some(_)) => "this node has no peers to rejoin: its data was only in the \
                                quarantined store; see docs/OPERATIONS.md, 'Lost stores'"
                .to_owned(),
            (Some(peers), Some(why)) => match ask_rejoin(ctx, peers, why).await {
                Ok(raft_id) => return Some(rejoined(raft_id, configured)),
                Err(waiting) => waiting,
            },
            (Some(peers), None) => match probe(ctx, peers).await {
                Probe::TakeConfigured => {
                    tracing::info!(
                        raft_id = configured,
                        "empty store: taking the configured raft id"
                    );
                    let voters = config.raft.initial_voters.clone();
                    return Some(Identity {
                        raft_id: configured,
                        voters,
                    });
                }
                Probe::Seen(by) => {
                    let why = format!(
                        "its store was empty while raft id {configured} had taken part in the \
                         cluster ({by} says so): wiped or lost"
                    );
                    match ask_rejoin(ctx, peers, &why).await {
                        Ok(raft_id) => return Some(rejoined(raft_id, configured)),
                        Err(waiting) => waiting,
                    }
                }
                Probe::Wait(waiting) => waiting,
            },
        };
        if last_said.as_deref() != Some(waiting.as_str()) {
            tracing::warn!(%waiting, "consensus cannot start yet");
            last_said = Some(waiting.clone());
        }
        ctx.services
            .report("raft", ferry_gate::ServiceState::Starting, waiting);
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

enum Probe {
    TakeConfigured,
    /// The configured id has taken part; the peer that says so.
    Seen(String),
    /// Not enough answers yet; what the node waits for.
    Wait(String),
}

async fn probe(ctx: &Ctx, peers: &Arc<Peers>) -> Probe {
    let config = &ctx.config;
    let id = config.raft.id;
    let answers = peers.probe(id).await;
    if let Some((peer, _)) = answers
        .iter()
        .find(|(_, a)| a.as_ref().is_some_and(|a| a.seen))
    {
        return Probe::Seen(peer.node_id.clone());
    }
    let answered: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a.is_some())
        .map(|(p, _)| p.node_id.as_str())
        .collect();
    let silent: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(p, _)| p.node_id.as_str())
        .collect();
    let voters = &config.raft.initial_voters;
    let enough = if voters.is_empty() {
        // Joining a running cluster: a peer with a store knows whether it saw this id (one
        // still opening its own store knows nothing).
        answers
            .iter()
            .any(|(_, a)| a.as_ref().is_some_and(|a| a.initialized))
    } else {
        // A peer that lost its store knows nothing: only one with a store, or one that never
        // had one (a cluster still forming), speaks for the cluster.
        let initial_answered = answers
            .iter()
            .filter(|(p, a)| {
                voters.contains(&p.raft_id) && a.as_ref().is_some_and(|a| a.initialized || a.fresh)
            })
            .count();
        let own = usize::from(voters.contains(&id));
        (initial_answered + own) * 2 > voters.len()
    };
    if enough {
        Probe::TakeConfigured
    } else {
        Probe::Wait(format!(
            "the store is empty: waiting for a majority of the initial voters to answer \
             whether raft id {id} has taken part before using it (answered: {}; no answer: {})",
            list(&answered),
            list(&silent)
        ))
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

async fn ask_rejoin(ctx: &Ctx, peers: &Peers, why: &str) -> Result<u64, String> {
    let config = &ctx.config;
    ctx.services.report(
        "raft",
        ferry_gate::ServiceState::Starting,
        format!("rejoining under a new raft id ({why}): asking the peers for the leader"),
    );
    let request = Rejoin {
        node_id: config.node_id.clone(),
        peer_addr: config.peer_addr.map(|a| a.to_string()).unwrap_or_default(),
        relay_addr: match config.role {
            crate::config::NodeRole::Broker => config.relay_addr.to_string(),
            crate::config::NodeRole::Witness => String::new(),
        },
        witness: config.role == crate::config::NodeRole::Witness,
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

/// A peer asks whether its raft id has taken part: answered from this node's applied state.
pub fn answer_probe(replica: &Replica, probe: &StoreProbe) -> StoreProbeReply {
    let initialized = replica.raft_id() != 0;
    StoreProbeReply {
        initialized,
        seen: initialized && replica.read().was_seen(probe.raft_id),
        fresh: !initialized && replica.is_fresh(),
    }
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
/// under a new raft id, which the leader promotes once it has caught up.
async fn replace(peers: &Peers, replica: &Replica, request: &Rejoin) -> Result<u64, String> {
    let node = &request.node_id;
    let membership = replica.membership();
    let in_config = |id: &u64| membership.voters.contains(id) || membership.learners.contains(id);
    let (old, next, voter) = {
        let state = replica.read();
        let mut old: Vec<u64> = peers
            .configured()
            .iter()
            .filter(|p| &p.node_id == node)
            .map(|p| p.raft_id)
            .chain(
                state
                    .members()
                    .filter(|m| &m.node_id == node)
                    .map(|m| m.raft_id),
            )
            .filter(in_config)
            .collect();
        old.sort_unstable();
        old.dedup();
        let next = membership
            .voters
            .iter()
            .chain(&membership.learners)
            .copied()
            .chain(state.known_raft_ids())
            .chain(peers.configured().iter().map(|p| p.raft_id))
            .chain([replica.raft_id()])
            .max()
            .unwrap_or(0)
            + 1;
        // It keeps its place: a voter comes back as a voter, a learner as a learner.
        let voter = old.is_empty()
            || old.iter().any(|id| {
                membership.voters.contains(id) || state.member(*id).is_some_and(|m| m.voter)
            });
        (old, next, voter)
    };
    if next > RAFT_ID_MAX {
        return Err(format!("no raft id is left below {RAFT_ID_MAX}"));
    }
    // Where the node is reached: its configured address where this leader has one (a node
    // may listen on a wildcard address, which nobody can dial), else what it says.
    let configured = peers.configured().iter().find(|p| &p.node_id == node);
    let peer_addr = match configured {
        Some(p) => p.peer_addr.to_string(),
        None => request.peer_addr.clone(),
    };
    let relay_addr = match configured.and_then(|p| p.relay_addr) {
        Some(addr) => addr.to_string(),
        None => request.relay_addr.clone(),
    };
    match peer_addr.parse::<std::net::SocketAddr>() {
        Ok(addr) if !addr.ip().is_unspecified() => {}
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
        voter,
        relay_addr: relay_addr.clone(),
    };
    let reason = format!("{node} rejoins under raft id {next}: {}", request.reason);
    for id in &old {
        // The leader counts a voter reachable when it heard from it within an election
        // timeout: right after a leader change the survivors may not have answered yet. Ask
        // again a few times.
        let mut attempts = 0;
        loop {
            match propose(replica, MembershipAction::Remove, member(*id), &reason).await {
                Err(e) if e.contains("reachable") && attempts < REMOVE_ATTEMPTS_MAX => {
                    attempts += 1;
                    tokio::time::sleep(REMOVE_RETRY).await;
                }
                result => break result?,
            }
        }
    }
    propose(replica, MembershipAction::AddLearner, member(next), &reason).await?;
    tracing::warn!(node = %node, old = ?old, raft_id = next, "member replaced: the new id catches up as a learner, then is promoted");
    Ok(next)
}

async fn propose(
    replica: &Replica,
    action: MembershipAction,
    member: Member,
    reason: &str,
) -> Result<(), String> {
    let mut command =
        membership_command(action, member, format!("node:raft-{}", replica.raft_id()));
    if let Some(Kind::ChangeMembership(change)) = &mut command.kind {
        change.reason = reason.to_owned();
    }
    match replica.propose(command).await {
        Ok(Outcome::Refused(r)) => Err(format!("the leader refused: {}", r.message)),
        Ok(_) => Ok(()),
        Err(ProposeError::NoLeader | ProposeError::NotLeader { .. }) => {
            Err("leadership changed; ask again".into())
        }
        Err(e) => Err(e.to_string()),
    }
}
