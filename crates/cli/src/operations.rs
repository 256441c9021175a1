//! `ferry admin status`, `restart-check`, `drain`: the operator's view of the cluster and of
//! the restart gate (SPEC section 6). Results go to stdout, progress and guidance to stderr.

use crate::admin::{print_json, AdminClient};
use crate::{CliResult, Failure};
use ferry_agent::error::exit;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How often `drain --wait` looks at the node's progress.
const DRAIN_POLL: Duration = Duration::from_millis(500);
const MIB: u64 = 1024 * 1024;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Prints the cluster as a table, then every problem and lease in words.
pub fn print_cluster(s: &Value) {
    println!(
        "cluster {}: leader {}, term {}, {} voters (quorum {}), failure tolerance {}   (as {} sees it)",
        text(&s["cluster_name"]),
        text(&s["leader"]),
        text(&s["term"]),
        text(&s["voters"]),
        text(&s["quorum"]),
        text(&s["failure_tolerance"]),
        text(&s["reported_by"]),
    );
    let columns = [
        "NODE",
        "ROLE",
        "RAFT",
        "HEALTH",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "CONTACT",
        "SERVICES",
        "HOSTS",
        "SESSIONS",
        "MEMORY MiB",
        "STATE",
    ];
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let services = n["services"].as_array().cloned().unwrap_or_default();
            let running = services.iter().filter(|s| s["state"] == "running").count();
            let state = if n["maintenance"].is_object() {
                "maintenance"
            } else if n["draining"] == true {
                "draining"
            } else {
                "serving"
            };
            vec![
                text(&n["node_id"]),
                text(&n["role"]),
                text(&n["raft_role"]),
                if n["healthy"] == true {
                    "healthy"
                } else {
                    "UNHEALTHY"
                }
                .into(),
                text(&n["term"]),
                text(&n["commit"]),
                text(&n["applied"]),
                text(&n["lag"]),
                n["last_report_ms"]
                    .as_u64()
                    .map_or("never".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                format!("{running}/{}", services.len()),
                text(&n["hosts"]),
                format!("{}/{}", num(&n["sessions"]), num(&n["sessions_max"])),
                format!(
                    "{}/{}",
                    num(&n["memory_rss_bytes"]) / MIB,
                    num(&n["memory_limit_bytes"]) / MIB
                ),
                state.into(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([columns[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&columns.map(String::from));
    for row in &rows {
        line(row);
    }
    for n in &nodes {
        for problem in n["problems"].as_array().into_iter().flatten() {
            println!("  {}: {}", text(&n["node_id"]), text(problem));
        }
    }
    for lease in s["leases"].as_array().into_iter().flatten() {
        println!(
            "  maintenance: {} taken by {} {} s ago{}",
            text(&lease["node"]),
            text(&lease["holder"]),
            text(&lease["age_secs"]),
            if lease["forced"] == true {
                " (FORCED past failing checks)"
            } else {
                ""
            }
        );
    }
}

/// Prints a gate answer: the verdict, then every check with its reason.
fn print_verdict(answer: &Value) {
    let verdict = &answer["verdict"];
    println!(
        "restart of {}: {}   (evaluated by leader {}; failure tolerance {})",
        text(&verdict["node"]),
        match (verdict["allowed"] == true, answer["forced"] == true) {
            (true, _) => "ALLOWED",
            (false, true) => "REFUSED, but FORCED (--force)",
            (false, false) => "REFUSED",
        },
        text(&answer["evaluated_by"]),
        text(&verdict["failure_tolerance"]),
    );
    for check in verdict["checks"].as_array().into_iter().flatten() {
        println!(
            "  {:<4} {:<16} {}",
            if check["passed"] == true {
                "ok"
            } else {
                "FAIL"
            },
            text(&check["name"]),
            text(&check["reason"])
        );
    }
}

pub async fn restart_check(client: &AdminClient, node: &str, json: bool) -> CliResult {
    let answer = client
        .get(&format!("/v1/nodes/{node}/restart-check"))
        .await?;
    if json {
        print_json(&answer);
    } else {
        print_verdict(&answer);
    }
    if answer["verdict"]["allowed"] == true {
        Ok(())
    } else {
        Err(Failure::new(
            exit::REFUSED,
            format!("{node} may not be taken down now; fix what failed above, then ask again"),
        ))
    }
}

pub async fn drain(
    client: &AdminClient,
    node: &str,
    force: bool,
    wait: Option<Duration>,
    json: bool,
) -> CliResult {
    let body = serde_json::json!({ "force": force });
    let (status, answer) = client
        .post_with_status(&format!("/v1/nodes/{node}/maintenance"), &body)
        .await?;
    if status == reqwest::StatusCode::CONFLICT {
        let answer = &answer["answer"];
        if json {
            print_json(answer);
        } else {
            print_verdict(answer);
        }
        return Err(Failure::new(
            exit::REFUSED,
            format!(
                "drain of {node} refused; fix what failed above, or pass --force to override \
                 (audited)"
            ),
        ));
    }
    if !status.is_success() {
        let code = match status {
            reqwest::StatusCode::NOT_FOUND => exit::NOT_FOUND,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => exit::DENIED,
            reqwest::StatusCode::SERVICE_UNAVAILABLE => exit::UNAVAILABLE,
            _ => exit::FAILURE,
        };
        return Err(Failure::new(
            code,
            format!("{} ({status})", text(&answer["error"])),
        ));
    }
    if json {
        print_json(&answer);
    } else {
        print_verdict(&answer);
    }
    if answer["forced"] == true {
        eprintln!(
            "WARNING: {node} is being drained PAST FAILING RESTART CHECKS (--force); this is \
             recorded in the audit log with the checks that failed:"
        );
        for check in answer["verdict"]["checks"].as_array().into_iter().flatten() {
            if check["passed"] != true {
                eprintln!(
                    "  FAILED {}: {}",
                    text(&check["name"]),
                    text(&check["reason"])
                );
            }
        }
    }
    let Some(wait) = wait else {
        eprintln!(
            "{node}: maintenance lease taken; it is handing its hosts and sessions off \
             (follow with `ferry admin status`, or pass --wait)"
        );
        return Ok(());
    };
    wait_drained(client, node, wait).await
}

/// Polls the cluster until `node` holds no hosts or sessions and leads nothing.
async fn wait_drained(client: &AdminClient, node: &str, wait: Duration) -> CliResult {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let status = client.get("/v1/cluster").await?;
        let summary = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node_id"] == node)
            .cloned()
            .unwrap_or(Value::Null);
        let (hosts, sessions) = (num(&summary["hosts"]), num(&summary["sessions"]));
        let leads = summary["raft_role"] == "leader";
        let progress = format!(
            "{node}: {hosts} hosts, {sessions} sessions{}",
            if leads { ", still the leader" } else { "" }
        );
        if progress != last {
            eprintln!("[{:>5.1}s] {progress}", started.elapsed().as_secs_f64());
            last = progress;
        }
        if summary["draining"] == true && hosts == 0 && sessions == 0 && !leads {
            eprintln!(
                "{node} is drained: it holds no hosts or sessions. Restart it now; its lease is \
                 released once it is back and healthy for the stabilization time (or run \
                 `ferry admin undrain {node}`)."
            );
            return Ok(());
        }
        if summary["role"] == "witness" && !leads {
            eprintln!("{node} is a witness: it carries no traffic; restart it now.");
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "{node} still holds {hosts} hosts and {sessions} sessions after {} s; \
                     its lease stays held (see `ferry admin status`)",
                    wait.as_secs()
                ),
            ));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
