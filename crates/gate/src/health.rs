//! What makes a node healthy (docs/DESIGN.md section 6.2): in contact with the leader, caught
//! up, every service running, storage writable, not quarantined, memory under its limit.

use crate::{Member, Policy, ServiceState};

const MIB: u64 = 1024 * 1024;

/// Everything wrong with `member`, in words; empty when it is healthy.
pub fn problems(member: &Member, commit: u64, policy: &Policy) -> Vec<String> {
    let Some(report) = &member.report else {
        return vec!["no health report received: the node is down or unreachable".into()];
    };
    let mut problems = Vec::new();
    if member.report_age_ms > policy.contact_max_ms {
        problems.push(format!(
            "last health report {} ago: the node is down or unreachable",
            secs(member.report_age_ms)
        ));
    }
    match report.leader_contact_ms {
        Some(ms) if ms <= policy.contact_max_ms => {}
        Some(ms) => problems.push(format!("no contact with the leader for {}", secs(ms))),
        None => problems.push("has never heard from a leader".into()),
    }
    let lag = commit.saturating_sub(report.applied);
    if lag > policy.applied_lag_max {
        problems.push(format!(
            "applied index {} is {lag} entries behind the commit index {commit}",
            report.applied
        ));
    }
    for service in &report.services {
        match service.state {
            ServiceState::Running => {}
            ServiceState::Restarting => problems.push(format!(
                "service {} is restarting ({} restarts; last error: {})",
                service.name, service.restarts, service.detail
            )),
            ServiceState::Stopped => problems.push(format!(
                "service {} is stopped ({})",
                service.name, service.detail
            )),
            ServiceState::Starting => problems.push(format!(
                "service {} is starting: {}",
                service.name, service.detail
            )),
        }
    }
    if let Some(error) = &report.storage_error {
        problems.push(format!("storage is not writable: {error}"));
    }
    if let Some(why) = &report.quarantine {
        problems.push(format!("store quarantined: {why}"));
    }
    if report.memory_rss_bytes > report.memory_limit_bytes {
        problems.push(format!(
            "memory {} MiB is over its limit of {} MiB",
            report.memory_rss_bytes / MIB,
            report.memory_limit_bytes / MIB
        ));
    }
    problems
}

pub(crate) fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}
