//! Node health and the planned-restart gate (docs/DESIGN.md section 6).
//!
//! Architecture invariant: this crate is pure. It never reads a clock, a socket or a file:
//! what each node reported about itself, how old that report is, and the time (`now_ms`)
//! arrive as inputs, and a [`Verdict`] with a sentence per check comes out. The broker feeds it
//! from the health reports its peers send and the replicated state; tests feed it tables.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod checks;
mod health;

pub use health::problems;

/// The state of one long-running part of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    /// It failed and its supervisor is about to start it again.
    Restarting,
    /// It is not running and will not be restarted (shut down, or stopped by a fault).
    Stopped,
    /// It has not started yet: it waits for something outside the node (the detail says what,
    /// e.g. consensus waiting for peers to settle the node's raft id).
    Starting,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Restarting => "restarting",
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Restarting,
            Self::Stopped,
            Self::Starting,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub state: ServiceState,
    /// The last error (restarting) or why it stopped; empty while running.
    pub detail: String,
    pub restarts: u64,
}

/// What a node does in the cluster (in its config file, `role = "broker"` or `"witness"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Raft voter (or learner) that serves hosts and clients and relays sessions.
    #[default]
    Broker,
    /// A Raft voter that persists and applies the log and serves no traffic: it gives a pair
    /// of brokers a third vote, and hands leadership to a broker whenever it wins it.
    Witness,
}

impl From<ferry_proto::state::MemberRole> for Role {
    fn from(role: ferry_proto::state::MemberRole) -> Self {
        match role {
            ferry_proto::state::MemberRole::Broker => Role::Broker,
            ferry_proto::state::MemberRole::Witness => Role::Witness,
        }
    }
}

impl Role {
    /// Its name in configs, reports and the API.
    pub fn name(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Witness => "witness",
        }
    }

    /// As the member directory records it.
    pub fn member_role(self) -> ferry_proto::state::MemberRole {
        match self {
            Role::Broker => ferry_proto::state::MemberRole::Broker,
            Role::Witness => ferry_proto::state::MemberRole::Witness,
        }
    }

    /// Parses [`Role::name`].
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "broker" => Some(Role::Broker),
            "witness" => Some(Role::Witness),
            _ => None,
        }
    }
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub started_at_ms: u64,
    /// Random per process: a different one means the node restarted.
    pub boot_id: u64,
    pub services: Vec<Service>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub leader: bool,
    /// Since this node last heard from a leader; `None`: never.
    pub leader_contact_ms: Option<u64>,
    /// Why the periodic storage probe failed; `None`: the store is writable.
    pub storage_error: Option<String>,
    /// Why the store is quarantined; `None`: it is not.
    pub quarantine: Option<String>,
    pub memory_rss_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Host agents attached, connections open, sessions relayed, and the node's limits.
    pub hosts: u64,
    pub connections: u64,
    pub sessions: u64,
    pub sessions_max: u64,
    pub connections_max: u64,
    /// Handing its endpoints off: new sessions are refused.
    pub draining: bool,
}

/// A member of the cluster as the evaluating node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub raft_id: u64,
    pub role: Role,
    /// A voter of the current configuration (else a learner).
    pub voter: bool,
    /// Its latest report, if one arrived.
    pub report: Option<Report>,
    /// How long ago that report arrived (0 for the evaluating node's own).
    pub report_age_ms: u64,
}

/// A node under maintenance (the replicated lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub holder: String,
    pub since_ms: u64,
    pub forced: bool,
    /// The node's process the lease was taken on (0: unknown).
    pub boot_id: u64,
}

/// Everything the gate looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub members: Vec<Member>,
    /// The leader's commit index, against which every member's applied index is compared.
    pub commit: u64,
    pub leases: Vec<Lease>,
    /// A membership change has been proposed and not applied yet.
    pub change_pending: bool,
}

impl Cluster {
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    /// Votes needed for a quorum of the voter configuration.
    pub fn quorum(&self) -> usize {
        self.members.iter().filter(|m| m.voter).count() / 2 + 1
    }

    /// Consul's failure tolerance: healthy voters minus the quorum. 0 means one more failure
    /// (or a planned restart) stops the cluster.
    pub fn failure_tolerance(&self, policy: &Policy) -> i64 {
        let healthy = self
            .members
            .iter()
            .filter(|m| m.voter && problems(m, self.commit, policy).is_empty())
            .count();
        healthy as i64 - self.quorum() as i64
    }
}

/// The thresholds of health and of the gate (`[gate]` in a node's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A node is in contact if its report and its last word from a leader are at most this
    /// old (about two election timeouts).
    pub contact_max_ms: u64,
    /// How far a node's applied index may trail the leader's commit index.
    pub applied_lag_max: u64,
    /// A broker counts as room for another's load only with at least this much memory left
    /// under its limit.
    pub memory_headroom_floor_bytes: u64,
    /// How long the other checks must have held before a restart is allowed.
    pub stabilization_ms: u64,
}

/// One check of the gate, with a sentence an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub reason: String,
}

/// The gate's answer for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub node: String,
    pub allowed: bool,
    pub failure_tolerance: i64,
    pub checks: Vec<Check>,
}

impl Verdict {
    /// "check: reason" for every failed check (what a forced lease records).
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect()
    }
}

/// Since when each node's checks have held without a break (the "steady" check). The leader
/// keeps one and feeds it every evaluation; a new leader starts afresh, so a restart is never
/// allowed on a view younger than the stabilization time.
#[derive(Debug, Clone, Default)]
pub struct Steadiness {
    passing_since_ms: BTreeMap<String, u64>,
}

/// Evaluates the gate for `target` at `now_ms` and records the outcome in `steadiness`.
/// `None` when `target` is not a member.
pub fn evaluate(
    cluster: &Cluster,
    target: &str,
    policy: &Policy,
    steadiness: &mut Steadiness,
    now_ms: u64,
) -> Option<Verdict> {
    let member = cluster.member(target)?;
    let mut checks = vec![
        checks::quorum(cluster, member, policy),
        checks::coverage(cluster, member, policy),
        checks::capacity(cluster, member, policy),
        checks::one_at_a_time(cluster, member, now_ms),
    ];
    let holding = checks.iter().all(|c| c.passed);
    checks.push(checks::steady(steadiness, target, holding, policy, now_ms));
    Some(Verdict {
        node: target.to_owned(),
        allowed: checks.iter().all(|c| c.passed),
        failure_tolerance: cluster.failure_tolerance(policy),
        checks,
    })
}

#[cfg(test)]
mod tests;
