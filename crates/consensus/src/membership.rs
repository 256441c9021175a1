//! Membership changes: adding learners, promoting them once caught up, removing members.
//!
//! Each change is one `ConfChangeV2` with a single step, so raft-rs applies it without a joint
//! configuration; the [`ChangeMembership`] command rides in the change's context and is recorded
//! in the state machine's member directory when the change is applied (see `core.rs`). Only one
//! change is in flight at a time: raft-rs would turn a second one into an empty entry, so it is
//! refused here, with a reason, before it is proposed.

use crate::core::Core;
use crate::log::LogStore;
use ferry_proto::state::{command::Kind, ChangeMembership, Command, MembershipAction};
use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::{ProgressState, StateRole};

/// A learner is caught up, and may be promoted, when it holds all but this many of the
/// leader's entries and is replicating normally (not being sent a snapshot).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;

/// Why a membership change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes the configuration; `leader` is 0 when none is known.
    #[error("not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    /// The leader itself is to be removed: it must hand leadership over first. It has asked
    /// `to` (when some voter could take it) to take over; the caller retries with the new leader.
    #[error("the leader must hand over leadership before it is removed")]
    TransferFirst { to: Option<u64> },
    /// The change is unsafe or impossible now; the reason says what to do.
    #[error("{0}")]
    Refused(String),
}

/// How one peer's replication stands, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub voter: bool,
    /// Highest log index known to be on the peer.
    pub matched: u64,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
    /// Whether the leader is sending it a snapshot (it was too far behind for the log).
    pub snapshotting: bool,
}

impl<L: LogStore> Core<L> {
    /// Proposes the membership change in `command` (a [`Kind::ChangeMembership`]); its outcome
    /// arrives in `Output::applied` with `token` once the configuration change is applied.
    pub fn propose_membership(
        &mut self,
        command: &Command,
        token: u64,
    ) -> Result<(), MembershipError> {
        let refused = |why: String| Err(MembershipError::Refused(why));
        let Some(Kind::ChangeMembership(change)) = &command.kind else {
            return refused("not a membership change".into());
        };
        if self.raw.raft.state != StateRole::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.raw.raft.leader_id,
            });
        }
        if let Some(why) = self.change_in_flight() {
            return refused(why);
        }
        let id = change.member.as_ref().map_or(0, |m| m.raft_id);
        let step = self.check_change(change, id)?;
        let mut single = ConfChangeSingle::default();
        single.set_change_type(step);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_context(command.encode_to_vec().into());
        self.raw
            .propose_conf_change(token.to_be_bytes().to_vec(), cc)
            .map_err(|e| MembershipError::Refused(format!("raft dropped the change: {e}")))
    }

    /// A reason no change may start now, if there is one.
    fn change_in_flight(&self) -> Option<String> {
        let raft = &self.raw.raft;
        if raft.has_pending_conf() {
            return Some(format!(
                "another membership change (log index {}) is not applied yet; try again in a moment",
                raft.pending_conf_index
            ));
        }
        if self.is_joint() {
            return Some("the configuration is joint; wait until it has been left".into());
        }
        None
    }

    /// Validates `change` of member `id` against the configuration and the leader's view of
    /// its peers, returning the raft-rs step that carries it out.
    fn check_change(
        &mut self,
        change: &ChangeMembership,
        id: u64,
    ) -> Result<ConfChangeType, MembershipError> {
        let refused = |why: String| Err(MembershipError::Refused(why));
        if id == 0 {
            return refused("raft id 0 is not valid".into());
        }
        let voters = self.voters();
        let learners = self.learners();
        let known = voters.contains(&id) || learners.contains(&id);
        match change.action() {
            MembershipAction::AddLearner => {
                if known {
                    return refused(format!("raft id {id} is already a member"));
                }
                if self.state().is_retired(id) {
                    return refused(format!(
                        "raft id {id} belonged to a removed member and is never reused; \
                         give the new node a new raft id"
                    ));
                }
                Ok(ConfChangeType::AddLearnerNode)
            }
            MembershipAction::Promote => {
                if voters.contains(&id) {
                    return refused(format!("raft id {id} is already a voter"));
                }
                if !learners.contains(&id) {
                    return refused(format!("raft id {id} is not a learner of this cluster"));
                }
                let last = self.last_index();
                match self.progress().into_iter().find(|p| p.id == id) {
                    Some(p) if p.caught_up(last) => Ok(ConfChangeType::AddNode),
                    Some(p) => {
                        refused(format!(
                        "raft id {id} is not caught up ({} of {last} entries{}); it is promoted \
                         once it is",
                        p.matched,
                        if p.snapshotting { ", receiving a snapshot" } else { "" }
                    ))
                    }
                    None => refused(format!("no progress is known for raft id {id}")),
                }
            }
            MembershipAction::Remove => {
                if !known {
                    return refused(format!("raft id {id} is not a member of this cluster"));
                }
                if id == self.id() {
                    let to = self.best_successor();
                    if let Some(to) = to {
                        self.transfer_leader(to);
                    }
                    return Err(MembershipError::TransferFirst { to });
                }
                if voters.contains(&id) {
                    self.check_quorum_without(id, change.forced)?;
                }
                Ok(ConfChangeType::RemoveNode)
            }
            MembershipAction::Unspecified => refused("no membership action given".into()),
        }
    }

    /// Refuses to remove voter `id` when the voters left could not form a quorum among those
    /// the leader hears from (unless `forced`), and always when no voter would be left.
    fn check_quorum_without(&self, id: u64, forced: bool) -> Result<(), MembershipError> {
        let remaining: Vec<u64> = self.voters().into_iter().filter(|&v| v != id).collect();
        if remaining.is_empty() {
            return Err(MembershipError::Refused(format!(
                "raft id {id} is the only voter; add another before removing it"
            )));
        }
        let progress = self.progress();
        let reachable: Vec<u64> = remaining
            .iter()
            .copied()
            .filter(|&v| v == self.id() || progress.iter().any(|p| p.id == v && p.recent_active))
            .collect();
        if reachable.len() * 2 <= remaining.len() && !forced {
            return Err(MembershipError::Refused(format!(
                "removing raft id {id} would leave voters {remaining:?}, of which only \
                 {reachable:?} are reachable: the cluster would lose its quorum; bring the \
                 others back first, or force it"
            )));
        }
        Ok(())
    }

    /// The caught-up voter best placed to take over leadership, if any.
    fn best_successor(&self) -> Option<u64> {
        let last = self.last_index();
        self.progress()
            .into_iter()
            .filter(|p| p.voter && p.id != self.id() && p.recent_active)
            .max_by_key(|p| (p.matched, std::cmp::Reverse(p.id)))
            .filter(|p| p.caught_up(last))
            .map(|p| p.id)
    }

    /// On a leader: the replication progress of every member but itself (empty elsewhere).
    pub fn progress(&self) -> Vec<PeerProgress> {
        if self.raw.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let voters = self.voters();
        let mut out: Vec<PeerProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(&id, _)| id != self.id())
            .map(|(&id, p)| PeerProgress {
                id,
                voter: voters.contains(&id),
                matched: p.matched,
                recent_active: self.reachable(id),
                snapshotting: p.state == ProgressState::Snapshot,
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// Raft ids of the learners.
    pub fn learners(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether the configuration is joint (it never stays so: changes are single steps, and
    /// raft-rs leaves a joint state automatically).
    pub fn is_joint(&self) -> bool {
        !self
            .raw
            .raft
            .prs()
            .conf()
            .to_conf_state()
            .voters_outgoing
            .is_empty()
    }

    /// Whether a configuration change has been proposed and not yet applied.
    pub fn has_pending_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }
}

impl PeerProgress {
    /// Whether the peer is caught up with a leader whose log ends at `last_index`: heard from
    /// lately, replicating normally (not being sent a snapshot), and at most
    /// [`PROMOTE_LAG_ENTRIES_MAX`] entries behind. Only such a learner may be promoted.
    pub fn caught_up(&self, last_index: u64) -> bool {
        self.recent_active
            && !self.snapshotting
            && self.matched + PROMOTE_LAG_ENTRIES_MAX >= last_index
    }
}
