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
    /// When the node's certificate expires (ms since the Unix epoch); 0 when not reported.
    #[serde(default)]
    pub certificate_expires_at_ms: u64,
    /// May it be taken down now? The restart gate's verdict as the answering node evaluates
    /// it (`restart-check` asks the leader after a read index, which is what a drain obeys).
    #[serde(default)]
    pub restart: RestartVerdict,
}

/// The leader's latest verdicts: this node's own when it leads, else from the leader's last
/// health report.
fn restart_verdicts(ctx: &Ctx, leader_id: u64) -> Vec<ferry_proto::peer::RestartVerdict> {
    if leader_id != 0 && leader_id == ctx.replica.raft_id() {
        return crate::gate::verdicts(ctx);
    }
    let Some(leader) = ctx
        .replica
        .read()
        .member(leader_id)
        .map(|m| m.node_id.clone())
        .or_else(|| {
            ctx.config
                .peers
                .iter()
                .find(|p| p.raft_id == leader_id)
                .map(|p| p.node_id.clone())
        })
    else {
        return Vec::new();
    };
    ctx.health
        .reports
        .get(&leader)
        .map(|(report, _)| report.restart_verdicts)
        .unwrap_or_default()
}

/// The restart gate's answer for one node, in short.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestartVerdict {
    pub allowed: bool,
    /// The first check that failed and its reason (empty when allowed).
    #[serde(default)]
    pub failed_check: String,
    #[serde(default)]
    pub reason: String,
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

use crate::context::Ctx;
use crate::health::{local_report, to_gate};
use ferry_gate::Policy;
use ferry_gate::Role;
use std::sync::atomic::Ordering;

/// How a voter or learner this node has no link to is named (`raft-id-7`).
pub const UNNAMED_MEMBER_PREFIX: &str = "raft-id-";

/// A node of the current configuration.
struct MemberInfo {
    node_id: String,
    raft_id: u64,
    role: Role,
    voter: bool,
}

/// This node and the peers it links to, as far as they are in the configuration it applied.
fn members(ctx: &Ctx) -> Vec<MemberInfo> {
    let membership = ctx.replica.membership();
    let in_config = |id: u64| {
        if membership.voters.contains(&id) {
            Some(true)
        } else if membership.learners.contains(&id) {
            Some(false)
        } else {
            None
        }
    };
    let own = std::iter::once((
        ctx.config.node_id.clone(),
        ctx.replica.raft_id(),
        ctx.config.role,
    ));
    let peers = ctx
        .peers
        .as_ref()
        .map(|p| p.all())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.node_id, p.raft_id, p.role));
    let mut members: Vec<MemberInfo> = own
        .chain(peers)
        .filter_map(|(node_id, raft_id, role)| {
            Some(MemberInfo {
                voter: in_config(raft_id)?,
                node_id,
                raft_id,
                role,
            })
        })
        .collect();
    // Every id of the configuration counts, even one this node has no link to yet (a member
    // just added, or a directory entry not applied here): leaving it out would shrink the
    // quorum the gate computes. Unnamed, it has no report and so counts as unhealthy.
    let unnamed: Vec<MemberInfo> = membership
        .voters
        .iter()
        .map(|id| (*id, true))
        .chain(membership.learners.iter().map(|id| (*id, false)))
        .filter(|(id, _)| !members.iter().any(|m| m.raft_id == *id))
        .map(|(raft_id, voter)| MemberInfo {
            node_id: format!("{UNNAMED_MEMBER_PREFIX}{raft_id}"),
            raft_id,
            role: Role::Broker,
            voter,
        })
        .collect();
    members.extend(unnamed);
    members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    members
}

/// The thresholds of `[gate]`.
pub fn policy(ctx: &Ctx) -> Policy {
    let gate = &ctx.config.gate;
    Policy {
        contact_max_ms: gate.contact_max_ms,
        applied_lag_max: gate.applied_lag_entries_max,
        memory_headroom_floor_bytes: gate.memory_headroom_floor_bytes,
        stabilization_ms: gate.stabilization_secs * 1000,
    }
}

/// The gate's input, as this node sees the cluster now.
pub fn gate_view(ctx: &Ctx) -> ferry_gate::Cluster {
    let own = local_report(ctx);
    let members = members(ctx)
        .into_iter()
        .map(|m| {
            let (report, age) = if m.node_id == ctx.config.node_id {
                (Some(to_gate(&own)), 0)
            } else {
                match ctx.health.reports.get(&m.node_id) {
                    Some((r, age)) => (Some(to_gate(&r)), age.as_millis() as u64),
                    None => (None, 0),
                }
            };
            ferry_gate::Member {
                node_id: m.node_id,
                raft_id: m.raft_id,
                role: m.role,
                voter: m.voter,
                report,
                report_age_ms: age,
            }
        })
        .collect();
    let leases = ctx
        .replica
        .read()
        .leases()
        .map(|l| ferry_gate::Lease {
            node: l.node.clone(),
            holder: l.holder.clone(),
            since_ms: l.since_ms,
            forced: l.forced,
            boot_id: l.boot_id,
        })
        .collect();
    ferry_gate::Cluster {
        members,
        commit: own.commit,
        leases,
        change_pending: ctx.replica.membership().change_pending,
    }
}

fn lease_summaries(ctx: &Ctx, now_ms: u64) -> Vec<LeaseSummary> {
    ctx.replica
        .read()
        .leases()
        .map(|l| LeaseSummary {
            node: l.node.clone(),
            holder: l.holder.clone(),
            since_ms: l.since_ms,
            age_secs: now_ms.saturating_sub(l.since_ms) / 1000,
            forced: l.forced,
            failed_checks: l.failed_checks.clone(),
        })
        .collect()
}

/// `GET /v1/cluster`: every member with its report, health and lease.
pub fn status(ctx: &Ctx) -> ClusterStatus {
    let now_ms = crate::now_ms();
    let view = gate_view(ctx);
    let policy = policy(ctx);
    let leases = lease_summaries(ctx, now_ms);
    let raw = |node_id: &str| {
        if node_id == ctx.config.node_id {
            Some((local_report(ctx), std::time::Duration::ZERO))
        } else {
            ctx.health.reports.get(node_id)
        }
    };
    let leader_id = ctx.replica.status().leader.load(Ordering::Acquire);
    let verdicts = restart_verdicts(ctx, leader_id);
    let nodes = view
        .members
        .iter()
        .map(|m| {
            let problems = ferry_gate::problems(m, view.commit, &policy);
            let report = raw(&m.node_id);
            let r = m.report.clone();
            let (relay_addr, admin_addr, version, certificate_expires_at_ms) = report
                .as_ref()
                .map(|(r, _)| {
                    (
                        r.relay_addr.clone(),
                        r.admin_addr.clone(),
                        r.version.clone(),
                        r.certificate_expires_at_ms,
                    )
                })
                .unwrap_or_default();
            let raft_role = match (&r, m.voter) {
                (None, _) => "unknown",
                (Some(r), _) if r.leader => "leader",
                (Some(_), true) => "follower",
                (Some(_), false) => "learner",
            };
            NodeSummary {
                node_id: m.node_id.clone(),
                raft_id: m.raft_id,
                role: m.role.name().into(),
                voter: m.voter,
                raft_role: raft_role.into(),
                healthy: problems.is_empty(),
                problems,
                term: r.as_ref().map_or(0, |r| r.term),
                commit: r.as_ref().map_or(0, |r| r.commit),
                applied: r.as_ref().map_or(0, |r| r.applied),
                lag: r
                    .as_ref()
                    .map_or(0, |r| view.commit.saturating_sub(r.applied)),
                last_report_ms: r.as_ref().map(|_| m.report_age_ms),
                leader_contact_ms: r.as_ref().and_then(|r| r.leader_contact_ms),
                services: r.as_ref().map(|r| r.services.clone()).unwrap_or_default(),
                memory_rss_bytes: r.as_ref().map_or(0, |r| r.memory_rss_bytes),
                memory_limit_bytes: r.as_ref().map_or(0, |r| r.memory_limit_bytes),
                hosts: r.as_ref().map_or(0, |r| r.hosts),
                connections: r.as_ref().map_or(0, |r| r.connections),
                sessions: r.as_ref().map_or(0, |r| r.sessions),
                sessions_max: r.as_ref().map_or(0, |r| r.sessions_max),
                connections_max: r.as_ref().map_or(0, |r| r.connections_max),
                draining: r.as_ref().is_some_and(|r| r.draining),
                maintenance: leases.iter().find(|l| l.node == m.node_id).cloned(),
                relay_addr,
                admin_addr,
                version,
                uptime_secs: r
                    .as_ref()
                    .map_or(0, |r| now_ms.saturating_sub(r.started_at_ms) / 1000),
                certificate_expires_at_ms,
                restart: verdicts
                    .iter()
                    .find(|v| v.node == m.node_id)
                    .map(|v| RestartVerdict {
                        allowed: v.allowed,
                        failed_check: v.failed_check.clone(),
                        reason: v.reason.clone(),
                    })
                    .unwrap_or_else(|| RestartVerdict {
                        allowed: false,
                        failed_check: "leader".into(),
                        reason: "no verdict from a leader yet (the restart gate is evaluated \
                                 by the leader)"
                            .into(),
                    }),
            }
        })
        .collect::<Vec<_>>();
    let leader = view
        .members
        .iter()
        .find(|m| m.raft_id == leader_id && leader_id != 0)
        .map(|m| m.node_id.clone());
    ClusterStatus {
        cluster_name: ctx.config.cluster_name.clone(),
        reported_by: ctx.config.node_id.clone(),
        leader,
        term: ctx.replica.status().term.load(Ordering::Acquire),
        commit: view.commit,
        voters: view.members.iter().filter(|m| m.voter).count(),
        quorum: view.quorum(),
        failure_tolerance: view.failure_tolerance(&policy),
        nodes,
        leases,
        generated_at_ms: now_ms,
    }
}

impl ClusterStatus {
    /// What the unauthenticated `/status.json` and status page show: health, roles, counts and
    /// problems, without who holds a lease or the checks a forced drain overrode (the audit
    /// log and `/v1/cluster` have those, behind the token).
    pub fn redacted(mut self) -> Self {
        for lease in self
            .leases
            .iter_mut()
            .chain(self.nodes.iter_mut().filter_map(|n| n.maintenance.as_mut()))
        {
            lease.holder = "(an operator)".into();
            lease.failed_checks.clear();
        }
        self
    }
}

/// What is wrong with this node, in words (empty: healthy). `/readyz` and `ferry_node_healthy`.
pub fn own_problems(ctx: &Ctx) -> Vec<String> {
    let view = gate_view(ctx);
    if let Some(member) = view.member(&ctx.config.node_id) {
        return ferry_gate::problems(member, view.commit, &policy(ctx));
    }
    // Not in the configuration (yet): say so, and what else its own report shows (a node
    // still settling its raft id says what it waits for).
    let own = ferry_gate::Member {
        node_id: ctx.config.node_id.clone(),
        raft_id: ctx.replica.raft_id(),
        role: ctx.config.role,
        voter: false,
        report: Some(crate::health::to_gate(&crate::health::local_report(ctx))),
        report_age_ms: 0,
    };
    let mut problems =
        vec!["this node is not (yet) a member of the cluster's configuration".to_owned()];
    problems.extend(ferry_gate::problems(&own, view.commit, &policy(ctx)));
    problems
}

/// Refreshes the health gauges from this node's view.
pub fn refresh_metrics(ctx: &Ctx, own: &ferry_proto::peer::HealthReport) {
    let m = &ctx.metrics;
    let view = gate_view(ctx);
    let policy = policy(ctx);
    let mut members = Vec::new();
    for member in &view.members {
        let healthy = ferry_gate::problems(member, view.commit, &policy).is_empty();
        let label = crate::metrics::MemberLabel {
            member: member.node_id.clone(),
        };
        members.push((label, i64::from(healthy)));
        if member.node_id == ctx.config.node_id {
            m.node_healthy.set(i64::from(healthy));
        }
    }
    m.member_healthy.replace(members);
    m.failure_tolerance.set(view.failure_tolerance(&policy));
    m.memory_rss_bytes.set(own.memory_rss_bytes as i64);
    m.memory_limit_bytes
        .set(own.memory_limit_bytes.min(i64::MAX as u64) as i64);
    m.memory_headroom_floor_bytes
        .set(policy.memory_headroom_floor_bytes as i64);
    m.quarantined.set(i64::from(!own.quarantine.is_empty()));
    // Never heard from a leader: as long as the node has been up.
    m.leader_contact_seconds
        .set(own.leader_contact_ms.map_or_else(
            || ctx.health.started.elapsed().as_secs_f64(),
            |ms| ms as f64 / 1000.0,
        ));
    m.apply_lag_entries
        .set(own.commit.saturating_sub(own.applied) as i64);
    m.draining.set(i64::from(own.draining));
    m.applied_index.set(own.applied as i64);
    m.hosts_attached.set(own.hosts as i64);
    let now_ms = crate::now_ms();
    let leases = lease_summaries(ctx, now_ms)
        .into_iter()
        .map(|lease| {
            let age_secs = now_ms.saturating_sub(lease.since_ms) as i64 / 1000;
            let label = crate::metrics::LeaseLabel {
                lease_node: lease.node,
            };
            (label, age_secs)
        })
        .collect();
    m.lease_seconds.replace(leases);
}
