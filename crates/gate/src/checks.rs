//! The five checks of the restart gate, each a sentence an operator can act on.

use crate::health::{problems, secs};
use crate::{Check, Cluster, Member, Policy, Role, Steadiness};

const MIB: u64 = 1024 * 1024;

fn check(name: &str, passed: bool, reason: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        reason,
    }
}

/// "b2 (service relay is stopped (...))": a node and what is wrong with it.
fn describe_unhealthy(cluster: &Cluster, members: &[&Member], policy: &Policy) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "{} ({})",
                m.node_id,
                problems(m, cluster.commit, policy).join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn voters_word(n: usize) -> String {
    match n {
        1 => "1 healthy voter".into(),
        n => format!("{n} healthy voters"),
    }
}

fn healthy(cluster: &Cluster, member: &Member, policy: &Policy) -> bool {
    problems(member, cluster.commit, policy).is_empty()
}

fn names(members: &[&Member]) -> String {
    if members.is_empty() {
        return "none".into();
    }
    members
        .iter()
        .map(|m| m.node_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check 1: the healthy voters other than `target` form a majority of the voter configuration.
pub(crate) fn quorum(cluster: &Cluster, target: &Member, policy: &Policy) -> Check {
    let voters: Vec<&Member> = cluster.members.iter().filter(|m| m.voter).collect();
    let quorum = cluster.quorum();
    let others: Vec<&Member> = voters
        .iter()
        .copied()
        .filter(|m| m.node_id != target.node_id)
        .collect();
    let (healthy_others, unhealthy_others): (Vec<&Member>, Vec<&Member>) = others
        .iter()
        .copied()
        .partition(|m| healthy(cluster, m, policy));
    let tolerance = cluster.failure_tolerance(policy);
    if healthy_others.len() >= quorum {
        return check(
            "quorum",
            true,
            format!(
                "without {}, {} remain ({}) and {quorum} are needed; \
                 failure tolerance now {tolerance}",
                target.node_id,
                voters_word(healthy_others.len()),
                names(&healthy_others)
            ),
        );
    }
    let mut reason = format!(
        "without {}, {} would remain ({}) of the {quorum} needed for a quorum \
         of {} voters (failure tolerance now {tolerance})",
        target.node_id,
        voters_word(healthy_others.len()),
        names(&healthy_others),
        voters.len()
    );
    if voters.len() == 2 {
        reason.push_str(
            "; two voters cannot lose either: add a witness as the third voter \
             (`ferry init --out DIR --join w1 --join-as-witness`, start it, then \
             `ferry admin member add w1 --raft-id N --peer-addr IP:PORT --witness --wait`)",
        );
    } else if !unhealthy_others.is_empty() {
        reason.push_str(&format!(
            "; bring back first: {}",
            describe_unhealthy(cluster, &unhealthy_others, policy)
        ));
    } else {
        reason.push_str("; add voters before taking one down");
    }
    check("quorum", false, reason)
}

/// Brokers other than `target` that could take its place: healthy (every service running,
/// storage writable, caught up), not under maintenance and not handing off themselves.
fn standby_brokers<'a>(cluster: &'a Cluster, target: &Member, policy: &Policy) -> Vec<&'a Member> {
    cluster
        .members
        .iter()
        .filter(|m| m.role == Role::Broker && m.node_id != target.node_id)
        .filter(|m| healthy(cluster, m, policy))
        .filter(|m| !cluster.leases.iter().any(|l| l.node == m.node_id))
        .filter(|m| m.report.as_ref().is_some_and(|r| !r.draining))
        .collect()
}

/// Check 2: at least one other healthy broker has every service running.
pub(crate) fn coverage(cluster: &Cluster, target: &Member, policy: &Policy) -> Check {
    let standby = standby_brokers(cluster, target, policy);
    if !standby.is_empty() {
        return check(
            "service coverage",
            true,
            format!(
                "{} would still serve hosts and clients, healthy with every service running",
                names(&standby)
            ),
        );
    }
    let others: Vec<&Member> = cluster
        .members
        .iter()
        .filter(|m| m.role == Role::Broker && m.node_id != target.node_id)
        .collect();
    let reason = if others.is_empty() {
        format!(
            "{} is the only broker: nothing would serve hosts and clients; add a broker first",
            target.node_id
        )
    } else {
        let mut parts = Vec::new();
        for m in &others {
            let wrong = problems(m, cluster.commit, policy);
            if !wrong.is_empty() {
                parts.push(format!("{}: {}", m.node_id, wrong.join("; ")));
            } else if let Some(lease) = cluster.leases.iter().find(|l| l.node == m.node_id) {
                parts.push(format!(
                    "{}: under maintenance (lease taken by {})",
                    m.node_id, lease.holder
                ));
            } else if m.report.as_ref().is_some_and(|r| r.draining) {
                parts.push(format!(
                    "{}: handing its endpoints off (draining)",
                    m.node_id
                ));
            }
        }
        format!(
            "no other broker is healthy with every service running, so nothing would serve \
             {}'s hosts and clients: {}; fix that first",
            target.node_id,
            parts.join(", ")
        )
    };
    check("service coverage", false, reason)
}

/// Check 3: the other healthy brokers have room for `target`'s hosts and sessions within
/// their limits, and memory headroom above the floor.
pub(crate) fn capacity(cluster: &Cluster, target: &Member, policy: &Policy) -> Check {
    if target.role == Role::Witness {
        return check(
            "capacity",
            true,
            format!(
                "{} is a witness: it carries no hosts or sessions",
                target.node_id
            ),
        );
    }
    let (sessions, connections, hosts) = target
        .report
        .as_ref()
        .map_or((0, 0, 0), |r| (r.sessions, r.connections, r.hosts));
    let standby = standby_brokers(cluster, target, policy);
    let mut counted = Vec::new();
    let mut low_memory = Vec::new();
    for m in &standby {
        let r = m.report.as_ref().expect("a healthy member has a report");
        let headroom = r.memory_limit_bytes.saturating_sub(r.memory_rss_bytes);
        if headroom < policy.memory_headroom_floor_bytes {
            low_memory.push(format!(
                "{} has {} MiB of memory headroom, below the floor of {} MiB",
                m.node_id,
                headroom / MIB,
                policy.memory_headroom_floor_bytes / MIB
            ));
        } else {
            counted.push((m, r));
        }
    }
    // Saturating: limits are configuration, and huge ones must not wrap into "no room".
    let room_sessions = counted
        .iter()
        .map(|(_, r)| r.sessions_max.saturating_sub(r.sessions))
        .fold(0u64, u64::saturating_add);
    let room_connections = counted
        .iter()
        .map(|(_, r)| r.connections_max.saturating_sub(r.connections))
        .fold(0u64, u64::saturating_add);
    let detail = counted
        .iter()
        .map(|(m, r)| {
            format!(
                "{}: {} of {} sessions, {} of {} connections in use",
                m.node_id, r.sessions, r.sessions_max, r.connections, r.connections_max
            )
        })
        .chain(low_memory.iter().cloned())
        .collect::<Vec<_>>()
        .join("; ");
    let load = format!(
        "{} carries {sessions} sessions and {connections} connections ({hosts} hosts)",
        target.node_id
    );
    if counted.is_empty() {
        let why = if low_memory.is_empty() {
            "no other healthy broker could take them".to_owned()
        } else {
            format!(
                "no other healthy broker has memory to spare: {}",
                low_memory.join("; ")
            )
        };
        return check("capacity", false, format!("{load}; {why}"));
    }
    if sessions > room_sessions || connections > room_connections {
        return check(
            "capacity",
            false,
            format!(
                "{load}, but the other healthy brokers have room for only {room_sessions} \
                 sessions and {room_connections} connections ({detail}); raise their \
                 limits.sessions_max or limits.connections_max, add a broker, or wait for \
                 sessions to end"
            ),
        );
    }
    check(
        "capacity",
        true,
        format!(
            "{load}; the other healthy brokers have room for {room_sessions} sessions and \
             {room_connections} connections ({detail})"
        ),
    )
}

/// Check 4: no other node holds a maintenance lease, and no membership change is pending.
pub(crate) fn one_at_a_time(cluster: &Cluster, target: &Member, now_ms: u64) -> Check {
    if let Some(lease) = cluster.leases.iter().find(|l| l.node != target.node_id) {
        return check(
            "one at a time",
            false,
            format!(
                "node {} is under maintenance (lease taken by {} {} ago); wait until it is \
                 back, or `ferry admin undrain {}`",
                lease.node,
                lease.holder,
                secs(now_ms.saturating_sub(lease.since_ms)),
                lease.node
            ),
        );
    }
    if cluster.change_pending {
        return check(
            "one at a time",
            false,
            "a membership change is in progress; wait for it to complete".into(),
        );
    }
    let own = cluster.leases.iter().any(|l| l.node == target.node_id);
    check(
        "one at a time",
        true,
        if own {
            format!("only {} is under maintenance", target.node_id)
        } else {
            "no node is under maintenance and no membership change is pending".into()
        },
    )
}

/// Check 5: the other checks have held for the stabilization time.
pub(crate) fn steady(
    steadiness: &mut Steadiness,
    target: &str,
    holding: bool,
    policy: &Policy,
    now_ms: u64,
) -> Check {
    let required = secs(policy.stabilization_ms);
    if !holding {
        steadiness.passing_since_ms.remove(target);
        return check(
            "steady",
            false,
            format!("the checks above must hold for {required} first"),
        );
    }
    let since = *steadiness
        .passing_since_ms
        .entry(target.to_owned())
        .or_insert(now_ms);
    let held = now_ms.saturating_sub(since);
    if held >= policy.stabilization_ms {
        check(
            "steady",
            true,
            format!(
                "the checks above have held for {} (at least {required})",
                secs(held)
            ),
        )
    } else {
        check(
            "steady",
            false,
            format!(
                "the checks above have held for {} of the {required} required; ask again in {}",
                secs(held),
                secs(policy.stabilization_ms - held)
            ),
        )
    }
}
