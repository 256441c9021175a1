//! The status page served at `/` by every node: the cluster as the answering node sees it.
//!
//! Server-side rendered from a [`ClusterStatus`], so it is pure (status in, HTML out) and the
//! page works without JavaScript or any external asset: an operator on a phone in the middle
//! of an incident gets one self-contained document that reloads itself every few seconds.
//! Nodes are cards that wrap rather than table rows, so the page stays readable on a narrow
//! screen. Colour carries the verdict (a stopped service is red, a restarting one amber), and
//! the same verdict is written in words and in `data-*` attributes that tests and scripts read.
//!
//! Every string taken from the status is HTML-escaped: node ids come from configs and problem
//! texts and service details can quote errors, so none of them may inject markup.

use crate::cluster::{ClusterStatus, LeaseSummary, NodeSummary};
use ferry_gate::{Service, ServiceState};
use std::fmt::Write;

/// Seconds between the page's automatic reloads.
const REFRESH_SECS: u32 = 5;

const MIB: u64 = 1024 * 1024;

/// Inline style sheet. Red (#c62828) appears only where something is wrong, so a healthy
/// cluster renders without any red at all.
const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;padding:0.75rem;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f4f5f7;color:#1d2329}\
h1{font-size:1.3rem;margin:0 0 0.25rem}\
h2{font-size:1.05rem;margin:1rem 0 0.5rem}\
.meta{color:#4a5560;margin:0 0 0.5rem}\
.stats,.nodes,.leases{display:flex;flex-wrap:wrap;gap:0.6rem;padding:0;margin:0;list-style:none}\
.stat{flex:1 1 8rem;background:#fff;border:1px solid #d5dae0;border-radius:8px;padding:0.5rem 0.7rem}\
.stat b{display:block;font-size:1.4rem}\
.ft-bad{background:#c62828;border-color:#c62828;color:#fff}\
.warn{color:#8a4b00;font-weight:600}\
.node,.lease{flex:1 1 19rem;max-width:100%;background:#fff;border:1px solid #d5dae0;\
border-radius:8px;padding:0.6rem 0.75rem}\
.node h3{font-size:1.1rem;margin:0 0 0.3rem;display:flex;flex-wrap:wrap;gap:0.4rem;align-items:center}\
.badge{font-size:0.8rem;font-weight:600;border-radius:4px;padding:0.1rem 0.45rem}\
.badge-healthy{background:#2e7d32;color:#fff}\
.badge-unhealthy{background:#c62828;color:#fff}\
.badge-info{background:#e3e7ec;color:#1d2329}\
.badge-amber{background:#ef6c00;color:#fff}\
.problems{margin:0.3rem 0;padding-left:1.2rem;color:#8e1b1b}\
.svcs{list-style:none;padding:0;margin:0.4rem 0;display:flex;flex-wrap:wrap;gap:0.3rem}\
.svc-wide{flex-basis:100%}\
.svc{display:inline-block;border-radius:4px;padding:0.1rem 0.45rem;font-weight:600}\
.svc-running{background:#2e7d32;color:#fff}\
.svc-restarting{background:#ef6c00;color:#fff}\
.svc-starting{background:#ef6c00;color:#fff}\
.svc-stopped{background:#c62828;color:#fff}\
.svc-detail{display:block;color:#4a5560;font-size:0.85rem;overflow-wrap:anywhere}\
dl{display:grid;grid-template-columns:auto 1fr;gap:0.1rem 0.7rem;margin:0.4rem 0 0}\
dt{color:#4a5560}dd{margin:0;overflow-wrap:anywhere}\
.empty{color:#4a5560}";

/// The status page for `status`: a complete, self-contained HTML document.
pub fn render(status: &ClusterStatus) -> String {
    let mut html = String::with_capacity(8 * 1024 + 2 * 1024 * status.nodes.len());
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Ferry {cluster}: status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        cluster = escape(&status.cluster_name),
    );
    header(&mut html, status);
    leases(&mut html, &status.leases);
    let _ = writeln!(html, "<h2>Nodes</h2>\n<ul class=\"nodes\">");
    for node in &status.nodes {
        node_card(&mut html, node);
    }
    html.push_str("</ul>\n</body>\n</html>\n");
    html
}

/// Cluster name, who answered, the leader, and the failure tolerance.
fn header(html: &mut String, status: &ClusterStatus) {
    let leader = match &status.leader {
        Some(id) => escape(id),
        None => "<span class=\"warn\">none known</span>".to_owned(),
    };
    let _ = writeln!(
        html,
        "<h1>Ferry cluster {name}</h1>\n<p class=\"meta\">Answered by <b>{by}</b>; \
         reloads every {REFRESH_SECS} s.</p>",
        name = escape(&status.cluster_name),
        by = escape(&status.reported_by),
    );
    let tolerance_class = if status.failure_tolerance <= 0 {
        "stat ft ft-bad"
    } else {
        "stat ft"
    };
    let tolerance_note = match status.failure_tolerance {
        t if t < 0 => "writes are stopped: no healthy quorum",
        0 => "one more failure stops writes",
        _ => "failures the cluster can absorb",
    };
    let _ = writeln!(
        html,
        "<ul class=\"stats\">\n\
         <li class=\"stat\">Leader<b data-leader>{leader}</b></li>\n\
         <li class=\"stat\">Term<b>{term}</b></li>\n\
         <li class=\"{tolerance_class}\" data-failure-tolerance=\"{ft}\">Failure tolerance\
         <b>{ft}</b>{tolerance_note}</li>\n\
         <li class=\"stat\">Voters / quorum<b>{voters} / {quorum}</b></li>\n\
         <li class=\"stat\">Commit<b>{commit}</b></li>\n</ul>",
        term = status.term,
        ft = status.failure_tolerance,
        voters = status.voters,
        quorum = status.quorum,
        commit = status.commit,
    );
}

/// The maintenance leases held in the cluster.
fn leases(html: &mut String, leases: &[LeaseSummary]) {
    html.push_str("<h2>Maintenance</h2>\n");
    if leases.is_empty() {
        html.push_str("<p class=\"empty\">No node is under maintenance.</p>\n");
        return;
    }
    html.push_str("<ul class=\"leases\">\n");
    for lease in leases {
        let _ = write!(
            html,
            "<li class=\"lease\" data-lease-node=\"{node}\"><b>{node}</b> held by {holder} \
             for {age}",
            node = escape(&lease.node),
            holder = escape(&lease.holder),
            age = duration_secs(lease.age_secs),
        );
        if lease.forced {
            html.push_str(" <span class=\"badge badge-amber\">forced</span>");
            if !lease.failed_checks.is_empty() {
                html.push_str("<ul class=\"problems\">");
                for check in &lease.failed_checks {
                    let _ = write!(html, "<li>{}</li>", escape(check));
                }
                html.push_str("</ul>");
            }
        }
        html.push_str("</li>\n");
    }
    html.push_str("</ul>\n");
}

/// One node's card: verdict, problems, services, load and memory.
fn node_card(html: &mut String, node: &NodeSummary) {
    let id = escape(&node.node_id);
    let (badge_class, badge_text) = if node.healthy {
        ("badge-healthy", "healthy")
    } else {
        ("badge-unhealthy", "unhealthy")
    };
    let suffrage = if node.voter { "voter" } else { "learner" };
    let _ = writeln!(
        html,
        "<li class=\"node\" data-node=\"{id}\" data-healthy=\"{healthy}\">\n\
         <h3>{id} <span class=\"badge {badge_class}\">{badge_text}</span>\
         <span class=\"badge badge-info\">{role}</span>\
         <span class=\"badge badge-info\">{raft_role}</span>\
         <span class=\"badge badge-info\">{suffrage}</span></h3>",
        healthy = node.healthy,
        role = escape(&node.role),
        raft_role = escape(&node.raft_role),
    );
    if !node.problems.is_empty() {
        html.push_str("<ul class=\"problems\">\n");
        for problem in &node.problems {
            let _ = writeln!(html, "<li>{}</li>", escape(problem));
        }
        html.push_str("</ul>\n");
    }
    services(html, &id, &node.services);
    let memory = format!(
        "{} / {} MiB",
        node.memory_rss_bytes / MIB,
        node.memory_limit_bytes / MIB
    );
    let last_report = match node.last_report_ms {
        Some(ms) => format!("{} ago", duration_ms(ms)),
        None => "<span class=\"warn\">never</span>".to_owned(),
    };
    let leader_contact = match node.leader_contact_ms {
        Some(ms) => format!("{} ago", duration_ms(ms)),
        None => "<span class=\"warn\">never</span>".to_owned(),
    };
    let draining = if node.draining {
        "<span class=\"warn\">yes</span>"
    } else {
        "no"
    };
    let maintenance = match &node.maintenance {
        Some(lease) => format!(
            "<span class=\"warn\">held by {} for {}{}</span>",
            escape(&lease.holder),
            duration_secs(lease.age_secs),
            if lease.forced { ", forced" } else { "" }
        ),
        None => "no".to_owned(),
    };
    // The restart gate's verdict (the leader's), with data-* attributes for tests and tools.
    let restart = if node.restart.allowed {
        format!(
            "<span class=\"restart\" data-node=\"{id}\" data-restart=\"allowed\">allowed</span>",
            id = escape(&node.node_id)
        )
    } else {
        format!(
            "<span class=\"warn restart\" data-node=\"{id}\" data-restart=\"refused\" \
             data-check=\"{check}\">no: {check}: {reason}</span>",
            id = escape(&node.node_id),
            check = escape(&node.restart.failed_check),
            reason = escape(&node.restart.reason)
        )
    };
    let _ = writeln!(
        html,
        "<dl>\n\
         <dt>Hosts</dt><dd>{hosts}</dd>\n\
         <dt>Sessions</dt><dd>{sessions} / {sessions_max}</dd>\n\
         <dt>Connections</dt><dd>{connections} / {connections_max}</dd>\n\
         <dt>Memory</dt><dd>{memory}</dd>\n\
         <dt>Apply lag</dt><dd>{lag} entries</dd>\n\
         <dt>Last report</dt><dd>{last_report}</dd>\n\
         <dt>Leader contact</dt><dd>{leader_contact}</dd>\n\
         <dt>Draining</dt><dd>{draining}</dd>\n\
         <dt>Maintenance</dt><dd>{maintenance}</dd>\n\
         <dt>Restart now</dt><dd>{restart}</dd>\n\
         <dt>Term / applied</dt><dd>{term} / {applied}</dd>\n\
         <dt>Relay</dt><dd>{relay}</dd>\n\
         <dt>Admin</dt><dd>{admin}</dd>\n\
         <dt>Version</dt><dd>{version}, up {uptime}</dd>\n\
         </dl>\n</li>",
        hosts = node.hosts,
        sessions = node.sessions,
        sessions_max = node.sessions_max,
        connections = node.connections,
        connections_max = node.connections_max,
        lag = node.lag,
        term = node.term,
        applied = node.applied,
        relay = escape(&node.relay_addr),
        admin = escape(&node.admin_addr),
        version = escape(&node.version),
        uptime = duration_secs(node.uptime_secs),
    );
}

/// A node's services, each a coloured badge carrying its state in `data-*` attributes.
/// `node_id` is already escaped.
fn services(html: &mut String, node_id: &str, services: &[Service]) {
    if services.is_empty() {
        html.push_str("<p class=\"empty\">No services reported.</p>\n");
        return;
    }
    html.push_str("<ul class=\"svcs\">\n");
    for service in services {
        let name = escape(&service.name);
        let state = service.state.as_str();
        // A service with something to say takes a line of its own; running ones wrap.
        let explained = service.state != ServiceState::Running && !service.detail.is_empty();
        let row_class = if explained || service.restarts > 0 {
            " class=\"svc-wide\""
        } else {
            ""
        };
        let _ = write!(
            html,
            "<li{row_class}><span class=\"svc svc-{state}\" data-node=\"{node_id}\" \
             data-service=\"{name}\" data-state=\"{state}\">{name}: {state}</span>"
        );
        match service.restarts {
            0 => {}
            1 => html.push_str(" restarted once"),
            n => {
                let _ = write!(html, " restarted {n} times");
            }
        }
        if explained {
            let _ = write!(
                html,
                "<span class=\"svc-detail\">{}</span>",
                escape(&service.detail)
            );
        }
        html.push_str("</li>\n");
    }
    html.push_str("</ul>\n");
}

/// `text` with the characters that are markup in HTML (content and attribute values) escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short age for a human: "0.4 s", "12 s", "3 min 4 s", "2 h 5 min".
fn duration_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{}.{} s", ms / 1000, ms % 1000 / 100)
    } else {
        duration_secs(ms / 1000)
    }
}

fn duration_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, state: ServiceState, detail: &str) -> Service {
        Service {
            name: name.to_owned(),
            state,
            detail: detail.to_owned(),
            restarts: 0,
        }
    }

    fn node(id: &str) -> NodeSummary {
        NodeSummary {
            node_id: id.to_owned(),
            raft_id: 1,
            role: "broker".to_owned(),
            voter: true,
            raft_role: "follower".to_owned(),
            healthy: true,
            problems: Vec::new(),
            term: 3,
            commit: 40,
            applied: 40,
            lag: 0,
            last_report_ms: Some(400),
            leader_contact_ms: Some(120),
            services: vec![
                service("relay", ServiceState::Running, ""),
                service("peer", ServiceState::Running, ""),
            ],
            memory_rss_bytes: 40 * MIB,
            memory_limit_bytes: 1024 * MIB,
            hosts: 2,
            connections: 5,
            sessions: 3,
            sessions_max: 1000,
            connections_max: 4096,
            draining: false,
            maintenance: None,
            relay_addr: "127.0.0.1:7000".to_owned(),
            admin_addr: "127.0.0.1:7001".to_owned(),
            version: "0.1.0".to_owned(),
            uptime_secs: 75,
            certificate_expires_at_ms: 0,
            restart: Default::default(),
        }
    }

    fn cluster(nodes: Vec<NodeSummary>, failure_tolerance: i64) -> ClusterStatus {
        ClusterStatus {
            cluster_name: "prod".to_owned(),
            reported_by: "b1".to_owned(),
            leader: Some("b1".to_owned()),
            term: 3,
            commit: 40,
            voters: 3,
            quorum: 2,
            failure_tolerance,
            nodes,
            leases: Vec::new(),
            generated_at_ms: 1_700_000_000_000,
        }
    }

    /// Renders `status` and checks that every fragment of `present` appears and none of
    /// `absent` does.
    fn check(name: &str, status: ClusterStatus, present: &[&str], absent: &[&str]) {
        let html = render(&status);
        for fragment in present {
            assert!(
                html.contains(fragment),
                "{name}: page lacks {fragment:?}:\n{html}"
            );
        }
        for fragment in absent {
            assert!(
                !html.contains(fragment),
                "{name}: page contains {fragment:?}:\n{html}"
            );
        }
    }

    #[test]
    fn renders() {
        let healthy = cluster(vec![node("b1"), node("b2")], 1);

        let mut stopped = node("b2");
        stopped.healthy = false;
        stopped.problems = vec!["service relay is stopped".to_owned()];
        stopped.services[0] = service(
            "relay",
            ServiceState::Stopped,
            "stopped by the test-only fault switch",
        );
        let mut restarting = node("b1");
        restarting.services[1] = service("peer", ServiceState::Restarting, "bind: address in use");
        restarting.services[1].restarts = 2;
        let one_down = cluster(vec![restarting, stopped], 0);

        let mut hostile = node("<b>&\"x'");
        hostile.healthy = false;
        hostile.problems = vec!["<script>alert(1)</script>".to_owned()];
        hostile.services[0] = service("relay", ServiceState::Stopped, "a<b & c>d");
        let mut hostile = cluster(vec![hostile], 1);
        hostile.cluster_name = "</title><img src=x>".to_owned();
        hostile.leases.push(LeaseSummary {
            node: "<i>b9</i>".to_owned(),
            holder: "admin:\"eve\"".to_owned(),
            since_ms: 0,
            age_secs: 4000,
            forced: true,
            failed_checks: vec!["quorum: <lost>".to_owned()],
        });

        let mut no_leader = cluster(vec![node("b1")], -1);
        no_leader.leader = None;

        check(
            "healthy: self-contained, refreshing, phone-sized, no red",
            healthy,
            &[
                "<meta http-equiv=\"refresh\" content=\"5\">",
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
                "Ferry cluster prod",
                "Answered by <b>b1</b>",
                "<li class=\"stat ft\" data-failure-tolerance=\"1\">",
                "data-node=\"b2\" data-healthy=\"true\"",
                "<span class=\"svc svc-running\" data-node=\"b2\" data-service=\"relay\" \
                 data-state=\"running\">relay: running</span>",
                "No node is under maintenance.",
                "<dd>3 / 1000</dd>",
                "<dd>40 / 1024 MiB</dd>",
                "<dd>0.4 s ago</dd>",
            ],
            &[
                "<script",
                "src=",
                "href=",
                "stat ft ft-bad",
                "svc-stopped\"",
                "badge-unhealthy\"",
            ],
        );
        check(
            "a stopped service is red with its detail; tolerance 0 is highlighted",
            one_down,
            &[
                ".svc-stopped{background:#c62828;color:#fff}",
                "<span class=\"svc svc-stopped\" data-node=\"b2\" data-service=\"relay\" \
                 data-state=\"stopped\">relay: stopped</span>\
                 <span class=\"svc-detail\">stopped by the test-only fault switch</span>",
                "data-node=\"b2\" data-healthy=\"false\"",
                "<span class=\"badge badge-unhealthy\">unhealthy</span>",
                "<li>service relay is stopped</li>",
                "<span class=\"svc svc-restarting\" data-node=\"b1\" data-service=\"peer\" \
                 data-state=\"restarting\">peer: restarting</span> restarted 2 times\
                 <span class=\"svc-detail\">bind: address in use</span>",
                "<li class=\"stat ft ft-bad\" data-failure-tolerance=\"0\">",
                "one more failure stops writes",
            ],
            &[],
        );
        check(
            "every string from the status is escaped",
            hostile,
            &[
                "data-node=\"&lt;b&gt;&amp;&quot;x&#39;\"",
                "<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>",
                "<span class=\"svc-detail\">a&lt;b &amp; c&gt;d</span>",
                "&lt;/title&gt;&lt;img src=x&gt;",
                "<b>&lt;i&gt;b9&lt;/i&gt;</b> held by admin:&quot;eve&quot; for 1 h 6 min",
                "<li>quorum: &lt;lost&gt;</li>",
            ],
            &["<script>", "<b>&\"x", "<img", "<i>b9"],
        );
        check(
            "no leader and negative tolerance",
            no_leader,
            &[
                "<span class=\"warn\">none known</span>",
                "<li class=\"stat ft ft-bad\" data-failure-tolerance=\"-1\">",
                "writes are stopped",
            ],
            &[],
        );
    }
}
