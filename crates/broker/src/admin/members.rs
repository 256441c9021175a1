//! `/v1/members`: the cluster's membership, and changing it one step at a time.
//!
//! A member added here starts as a learner: it receives a snapshot and then the log, and the
//! leader promotes it to voter once it has caught up (unless it was added as a learner to
//! stay). Removal retires the member's raft id for good. Every change is a Raft configuration
//! change made by the leader (followers forward it), audited in the state machine.

use super::{propose, ApiError, ApiResult, Caller};
use crate::context::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use ferry_gate::Role;
use ferry_proto::state::{command::Kind, ChangeMembership, Member, MembershipAction};
use ferry_transport::addr::HostPort;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One member as `GET /v1/members` shows it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MemberStatus {
    pub node_id: String,
    pub raft_id: u64,
    /// "broker" or "witness".
    pub role: String,
    /// "voter" or "learner".
    pub suffrage: String,
    pub peer_addr: String,
    /// Whether a learner is to be promoted once caught up.
    pub promote_when_caught_up: bool,
    pub is_leader: bool,
    /// Replication facts, known on the leader only (`None` elsewhere).
    pub matched_index: Option<u64>,
    pub reachable: Option<bool>,
    pub receiving_snapshot: Option<bool>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Members {
    /// The node that answered, and whether it leads (only the leader knows progress).
    pub answered_by: String,
    pub leader_raft_id: u64,
    pub progress_known: bool,
    /// A change has been proposed and not applied yet (known on the leader).
    pub change_pending: bool,
    pub last_index: u64,
    pub members: Vec<MemberStatus>,
}

/// What this node knows of a raft id: its name, role and address.
fn describe(ctx: &Ctx, raft_id: u64) -> (String, Role, String) {
    let config = &ctx.config;
    if raft_id == config.raft.id {
        let addr = config
            .peer_addr
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        return (config.node_id.clone(), config.role, addr);
    }
    if let Some(m) = ctx.replica.read().member(raft_id) {
        return (m.node_id.clone(), m.role().into(), m.peer_addr.clone());
    }
    match config.peers.iter().find(|p| p.raft_id == raft_id) {
        Some(p) => (p.node_id.clone(), p.role, p.peer_addr.to_string()),
        None => (format!("raft-{raft_id}"), Role::Broker, String::new()),
    }
}

pub(super) async fn list(State(ctx): State<Arc<Ctx>>) -> Json<Members> {
    use std::sync::atomic::Ordering::Acquire;
    let membership = ctx.replica.membership();
    let status = ctx.replica.status();
    let leader = status.leader.load(Acquire);
    let progress_known = status.is_leader.load(Acquire);
    let suffrages = membership
        .voters
        .iter()
        .map(|&id| (id, "voter"))
        .chain(membership.learners.iter().map(|&id| (id, "learner")));
    let members = suffrages
        .map(|(id, suffrage)| {
            let (node_id, role, peer_addr) = describe(&ctx, id);
            let progress = membership.progress.iter().find(|p| p.id == id);
            let is_self = id == ctx.replica.raft_id();
            let known = |f: &dyn Fn(&ferry_consensus::PeerProgress) -> u64| {
                progress_known.then(|| progress.map_or(ctx.replica.applied_index(), f))
            };
            MemberStatus {
                node_id,
                raft_id: id,
                role: role.name().into(),
                suffrage: suffrage.into(),
                peer_addr,
                promote_when_caught_up: suffrage == "learner"
                    && ctx.replica.read().member(id).is_some_and(|m| m.voter),
                is_leader: id == leader,
                matched_index: known(&|p| p.matched),
                reachable: progress_known
                    .then(|| is_self || progress.is_some_and(|p| p.recent_active)),
                receiving_snapshot: progress_known
                    .then(|| progress.is_some_and(|p| p.snapshotting)),
            }
        })
        .collect();
    Json(Members {
        answered_by: ctx.config.node_id.clone(),
        leader_raft_id: leader,
        progress_known,
        change_pending: membership.change_pending,
        last_index: status.commit.load(Acquire),
        members,
    })
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AddMember {
    pub node_id: String,
    /// Never used by this cluster before (removed members' ids are retired).
    pub raft_id: u64,
    /// Where its peer listener is reached, `host:port` (an IP or a DNS name).
    pub peer_addr: HostPort,
    /// Where its relay listener is reached, `host:port` (a broker's, for hosts and clients
    /// to move to).
    #[serde(default)]
    pub relay_addr: Option<HostPort>,
    /// "broker" (default) or "witness".
    #[serde(default)]
    pub role: Role,
    /// Keep it a learner (a non-voting broker that relays traffic) instead of promoting it.
    #[serde(default)]
    pub learner: bool,
}

pub(super) async fn add(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<AddMember>,
) -> ApiResult<MemberChanged> {
    ferry_state::validate_name(ferry_state::NameKind::Host, &req.node_id)
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, format!("node_id: {r}")))?;
    if req.raft_id == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "raft_id must be greater than 0",
        ));
    }
    if ctx.replica.read().is_node_retired(&req.node_id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node id {:?} was removed from this cluster, and its certificate is refused \
                 everywhere; give the machine a new node id (`ferry init --join NEW_ID`)",
                req.node_id
            ),
        ));
    }
    let membership = ctx.replica.membership();
    let taken = membership
        .voters
        .iter()
        .chain(&membership.learners)
        .map(|&id| (id, describe(&ctx, id).0))
        .find(|(id, name)| *id == req.raft_id || *name == req.node_id);
    if let Some((id, name)) = taken {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} (raft id {id}) is already a member; pick another node id and raft id"),
        ));
    }
    let member = Member {
        raft_id: req.raft_id,
        node_id: req.node_id.clone(),
        peer_addr: req.peer_addr.to_string(),
        role: req.role.member_role() as i32,
        voter: !req.learner,
        relay_addr: req
            .relay_addr
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    change(&ctx, &caller, MembershipAction::AddLearner, member, false).await?;
    let message = if req.learner {
        format!("{} added as a learner; it stays one", req.node_id)
    } else {
        format!(
            "{} added as a learner; the leader promotes it to voter once it has caught up",
            req.node_id
        )
    };
    Ok(Json(MemberChanged { message }))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MemberChanged {
    pub message: String,
}

#[derive(Deserialize, Debug, Default)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// The member named `node_id`, from the current configuration.
fn find(ctx: &Ctx, node_id: &str) -> Result<Member, ApiError> {
    let membership = ctx.replica.membership();
    membership
        .voters
        .iter()
        .chain(&membership.learners)
        .find_map(|&id| {
            let (name, role, peer_addr) = describe(ctx, id);
            (name == node_id).then_some(Member {
                raft_id: id,
                node_id: name,
                peer_addr,
                role: role.member_role() as i32,
                voter: true,
                relay_addr: String::new(),
            })
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{node_id:?} is not a member of this cluster (see `ferry admin member list`)"
                ),
            )
        })
}

pub(super) async fn promote(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(node_id): Path<String>,
) -> ApiResult<MemberChanged> {
    let member = find(&ctx, &node_id)?;
    change(&ctx, &caller, MembershipAction::Promote, member, false).await?;
    Ok(Json(MemberChanged {
        message: format!("{node_id} is now a voter"),
    }))
}

pub(super) async fn remove(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(node_id): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> ApiResult<MemberChanged> {
    let member = find(&ctx, &node_id)?;
    if query.force {
        tracing::warn!(node = %node_id, "forced removal: the quorum check is skipped");
    }
    change(&ctx, &caller, MembershipAction::Remove, member, query.force).await?;
    Ok(Json(MemberChanged {
        message: format!(
            "{node_id} removed; its raft id is retired. Stop its process; to bring the machine \
             back, give it a new node id and raft id and add it again"
        ),
    }))
}

async fn change(
    ctx: &Ctx,
    caller: &Caller,
    action: MembershipAction,
    member: Member,
    forced: bool,
) -> Result<(), ApiError> {
    let kind = Kind::ChangeMembership(ChangeMembership {
        action: action as i32,
        member: Some(member),
        forced,
        reason: String::new(),
        // An operator's removal is for good: the name goes with it.
        retire_node_id: action == MembershipAction::Remove,
    });
    propose(ctx, caller, kind).await.map(drop).inspect_err(|e| {
        tracing::info!(actor = %caller.actor(), error = %e.message, "membership change refused");
    })
}
