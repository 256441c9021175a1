//! The member directory: nodes added to the cluster at runtime, and retired Raft ids.
//!
//! Raft owns the configuration itself (who votes); this directory holds what the configuration
//! cannot: where a member listens and which name its certificate carries. The consensus core
//! records a change here when it applies the configuration change that carries it, so the two
//! move together, in log order, on every node.

use crate::{Command, Kind, Outcome, Refusal, RefusalKind, StateMachine};
use ferry_proto::state::{Member, MembersSeen, MembershipAction};

impl StateMachine {
    /// Records a membership change whose Raft configuration change has just been applied.
    /// Called by the consensus core only; [`StateMachine::apply`] refuses these commands, so a
    /// plain log entry can never alter the directory.
    pub fn apply_membership(&mut self, command: &Command) -> Outcome {
        let Some(Kind::ChangeMembership(change)) = &command.kind else {
            return Outcome::Refused(Refusal::new(
                RefusalKind::Invalid,
                "a configuration change carried no membership command",
            ));
        };
        let member = change.member.clone().unwrap_or_default();
        let action = match change.action() {
            MembershipAction::AddLearner => {
                self.members.insert(member.raft_id, member.clone());
                "member.add"
            }
            MembershipAction::Promote => {
                if let Some(m) = self.members.get_mut(&member.raft_id) {
                    m.voter = true;
                }
                "member.promote"
            }
            MembershipAction::Remove => {
                self.members.remove(&member.raft_id);
                self.retired_raft_ids.insert(member.raft_id);
                // A node removed for good leaves its name behind; one replaced under a new raft
                // id keeps it (the removal says which; a member still carrying the name wins).
                if change.retire_node_id
                    && !member.node_id.is_empty()
                    && !self.members.values().any(|m| m.node_id == member.node_id)
                {
                    self.retired_node_ids.insert(member.node_id.clone());
                }
                "member.remove"
            }
            MembershipAction::Unspecified => "member.unknown",
        };
        let action = if change.forced {
            format!("{action}.forced")
        } else {
            action.to_owned()
        };
        let target = format!("{} (raft id {})", member.node_id, member.raft_id);
        let outcome = Outcome::Applied;
        self.record_audit(command, &action, target, &outcome);
        outcome
    }

    /// Members added at runtime, by raft id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, raft_id: u64) -> Option<&Member> {
        self.members.get(&raft_id)
    }

    /// Whether `raft_id` belonged to a member that was removed (and so may never return).
    pub fn is_retired(&self, raft_id: u64) -> bool {
        self.retired_raft_ids.contains(&raft_id)
    }

    pub fn retired_raft_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.retired_raft_ids.iter().copied()
    }

    /// Whether node id `node_id` was removed from the cluster for good: its certificate is
    /// refused, and no node may join under that name again.
    pub fn is_node_retired(&self, node_id: &str) -> bool {
        self.retired_node_ids.contains(node_id)
    }

    pub fn retired_node_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.retired_node_ids.iter().map(String::as_str)
    }

    /// Records raft ids the leader saw take part.
    pub(crate) fn members_seen(&mut self, command: &MembersSeen) -> Outcome {
        self.seen_raft_ids.extend(command.raft_ids.iter().copied());
        Outcome::Applied
    }

    /// Whether an empty store may not take `raft_id`: it took part in this cluster (or was
    /// removed), so its old store may have voted or acknowledged entries.
    pub fn was_seen(&self, raft_id: u64) -> bool {
        self.seen_raft_ids.contains(&raft_id) || self.retired_raft_ids.contains(&raft_id)
    }

    /// Every raft id this state knows of: members, retired, seen. A new id is above them all.
    pub fn known_raft_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.members
            .keys()
            .chain(&self.retired_raft_ids)
            .chain(&self.seen_raft_ids)
            .copied()
    }
}
