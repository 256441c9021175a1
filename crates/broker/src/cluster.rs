//! The cluster as this node sees it: its own health report and those its peers send every
//! half second, combined with the replicated state (leases) and consensus (configuration).
//! What `GET /v1/cluster`, `ferry admin status`, the status page and the restart gate read.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`: every node, the leases, and the failure tolerance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    /// The node that answered (its view: reports from unreachable peers age).
    pub reported_by: String,
    /// Node id of the leader this node knows, if any.
    pub leader: Option<String>,
    pub term: u64,
    /// The commit index as the answering node knows it.
    pub commit: u64,
    pub voters: usize,
    pub quorum: usize,
    /// Consul-style: healthy voters minus the quorum; 0 means one more failure stops writes.
    pub failure_tolerance: i64,
    pub nodes: Vec<NodeSummary>,
    pub leases: Vec<LeaseSummary>,
    pub generated_at_ms: u64,
}

/// One node of [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node_id: String,
    pub raft_id: u64,
    /// "broker" or "witness".
    pub role: String,
    /// Voter of the current configuration (else a learner).
    pub voter: bool,
    /// "leader", "follower", "learner", or "unknown" (no report).
    pub raft_role: String,
    pub healthy: bool,
    /// What is wrong with it, in words; empty when healthy.
    pub problems: Vec<String>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// How far its applied index trails the cluster's commit index.
    pub lag: u64,
    /// How long ago its last health report arrived (0 for the answering node); `None`: never.
    pub last_report_ms: Option<u64>,
    /// How long ago it last heard from a leader, by its own report.
    pub leader_contact_ms: Option<u64>,
    pub services: Vec<ferry_gate::Service>,
    pub memory_rss_bytes: u64,
    pub memory_limit_bytes: u64,
    pub hosts: u64,
    pub connections: u64,
    pub sessions: u64,
    pub sessions_max: u64,
    pub connections_max: u64,
    pub draining: bool,
    /// Its maintenance lease, if it holds one.
    pub maintenance: Option<LeaseSummary>,
    pub relay_addr: String,
    pub admin_addr: String,
    pub version: String,
    pub uptime_secs: u64,
}

/// A node under maintenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseSummary {
    pub node: String,
    /// Who took it ("admin:alice").
    pub holder: String,
    pub since_ms: u64,
    pub age_secs: u64,
    /// Taken past a failing gate (`--force`).
    pub forced: bool,
    pub failed_checks: Vec<String>,
}
