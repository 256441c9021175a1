//! `ferry admin status`, `restart-check`, `drain`: the operator's view of the cluster and of
//! the restart gate (docs/DESIGN.md section 6). Results go to stdout, progress and guidance
//! to stderr.

use crate::admin::{cell, print_json, AdminClient};
use crate::{CliResult, Failure};
use ferry_agent::error::exit;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How often `drain --wait` looks at the node's progress.
const DRAIN_POLL: Duration = Duration::from_millis(500);
const MIB: u64 = 1024 * 1024;

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Prints the cluster as a table, then every problem and lease in words.
pub fn print_cluster(s: &Value) {
    println!(
        "cluster {}: leader {}, term {}, {} voters (quorum {}), failure tolerance {}   (as {} sees it)",
        cell(&s["cluster_name"]),
        cell(&s["leader"]),
        cell(&s["term"]),
        cell(&s["voters"]),
        cell(&s["quorum"]),
        cell(&s["failure_tolerance"]),
        cell(&s["reported_by"]),
    );
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = nodes
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
            serde_json::json!({
                "node": n["node_id"],
                "role": n["role"],
                "raft": n["raft_role"],
                "health": if n["healthy"] == true { "healthy" } else { "UNHEALTHY" },
                "term": n["term"],
                "commit": n["commit"],
                "applied": n["applied"],
                "lag": n["lag"],
                "contact": n["last_report_ms"]
                    .as_u64()
                    .map_or("never".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                "services": format!("{running}/{}", services.len()),
                "hosts": n["hosts"],
                "sessions": format!("{}/{}", num(&n["sessions"]), num(&n["sessions_max"])),
                "memory_mib": format!(
                    "{}/{}",
                    num(&n["memory_rss_bytes"]) / MIB,
                    num(&n["memory_limit_bytes"]) / MIB
                ),
                "state": state,
                "cert_expires": crate::time::relative(
                    num(&n["certificate_expires_at_ms"]),
                    crate::time::now_ms()
                ),
                "version": n["version"],
                "restart": if n["restart"]["allowed"] == true {
                    "allowed".to_owned()
                } else {
                    format!("no: {}", cell(&n["restart"]["failed_check"]))
                },
            })
        })
        .collect();
    crate::admin::table(
        false,
        &serde_json::json!({ "nodes": rows }),
        "nodes",
        &[
            "node",
            "role",
            "raft",
            "health",
            "term",
            "commit",
            "applied",
            "lag",
            "contact",
            "services",
            "hosts",
            "sessions",
            "memory_mib",
            "state",
            "cert_expires",
            "version",
            "restart",
        ],
    );
    for n in &nodes {
        for problem in n["problems"].as_array().into_iter().flatten() {
            println!("  {}: {}", cell(&n["node_id"]), cell(problem));
        }
    }
    for n in nodes.iter().filter(|n| n["restart"]["allowed"] != true) {
        println!(
            "  {} may not be restarted now: {}: {}",
            cell(&n["node_id"]),
            cell(&n["restart"]["failed_check"]),
            cell(&n["restart"]["reason"])
        );
    }
    for lease in s["leases"].as_array().into_iter().flatten() {
        println!(
            "  maintenance: {} taken by {} {} s ago{}",
            cell(&lease["node"]),
            cell(&lease["holder"]),
            cell(&lease["age_secs"]),
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
        cell(&verdict["node"]),
        match (verdict["allowed"] == true, answer["forced"] == true) {
            (true, _) => "ALLOWED",
            (false, true) => "REFUSED, but FORCED (--force)",
            (false, false) => "REFUSED",
        },
        cell(&answer["evaluated_by"]),
        cell(&verdict["failure_tolerance"]),
    );
    for check in verdict["checks"].as_array().into_iter().flatten() {
        println!(
            "  {:<4} {:<16} {}",
            if check["passed"] == true {
                "ok"
            } else {
                "FAIL"
            },
            cell(&check["name"]),
            cell(&check["reason"])
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
            format!("{} ({status})", cell(&answer["error"])),
        ));
    }
    // A lease taken with a failing verdict and no --force: the node already held it.
    let already = answer["verdict"]["allowed"] != true && answer["forced"] != true;
    if json {
        print_json(&answer);
    } else if already {
        eprintln!(
            "{node} already holds its maintenance lease (drained before); nothing to ask the gate"
        );
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
                    cell(&check["name"]),
                    cell(&check["reason"])
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
