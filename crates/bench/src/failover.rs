//! `ferry bench failover`: kill -9 the leader of a 3-broker cluster N times under write load and
//! measure the time from each kill to the first committed write, against the configured
//! election timeout (SPEC P6: <= 2x).
//!
//! Real `ferry broker` processes on loopback; writes go through the admin API of the nodes
//! that survive, as an operator's or a client's would.

use crate::report::{machine, median, Figure, Report};
use anyhow::{bail, Context};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Options {
    pub kills: u32,
}

const NODES: u16 = 3;
/// Concurrent writers keeping the cluster under load.
const WRITERS: usize = 8;
/// A single write attempt gives up after this long and tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

struct Node {
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
    admin: String,
}

impl Node {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(std::env::current_exe()?)
                .args([
                    "broker",
                    "--config",
                    self.config.to_str().context("UTF-8 path")?,
                ])
                .env("FERRY_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.kills == 0 {
        bail!("--kills must be greater than 0");
    }
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-failover-")
        .tempdir()?;
    let cluster = dir.path().join("cluster");
    let base = crate::relay::free_port_block(NODES)?;
    crate::relay::ferry(
        &[
            "init",
            "--out",
            path(&cluster),
            "--base-port",
            &base.to_string(),
            "--brokers",
            &NODES.to_string(),
            "--cluster-name",
            "bench",
        ],
        None,
    )?;
    let config = ferry_broker::NodeConfig::load(&cluster.join("b1.toml"))?;
    let election_timeout =
        Duration::from_millis(config.raft.tick_ms * config.raft.election_ticks as u64);
    let election_timeout_max = Duration::from_millis(
        config.raft.tick_ms
            * (config.raft.election_ticks + config.raft.election_jitter_ticks) as u64,
    );
    let token = std::fs::read_to_string(cluster.join("admin.token"))?
        .trim()
        .to_owned();
    let mut nodes: Vec<Node> = (1..=NODES)
        .map(|i| Node {
            config: cluster.join(format!("b{i}.toml")),
            log: dir.path().join(format!("b{i}.log")),
            child: None,
            admin: format!("http://127.0.0.1:{}", base + 10 * (i - 1) + 1),
        })
        .collect();
    for node in &mut nodes {
        node.start()?;
    }
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()?;
    let admins: Vec<String> = nodes.iter().map(|n| n.admin.clone()).collect();
    wait_for_leader(&http, &admins, &token, Duration::from_secs(30)).await?;

    // Background load: writers spread over every node; failures (during failover) are retried.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|k| {
            let (http, admins, token, stop, committed) = (
                http.clone(),
                admins.clone(),
                token.clone(),
                stop.clone(),
                committed.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let url = &admins[(k + n as usize) % admins.len()];
                    if write(&http, url, &token, &format!("load-{k}-{n}")).await {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut failovers = Vec::new();
    for round in 1..=options.kills {
        let leader = wait_for_leader(&http, &admins, &token, Duration::from_secs(30)).await?;
        nodes[leader].kill();
        let killed = Instant::now();
        let survivors: Vec<&String> = admins
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, a)| a)
            .collect();
        let mut attempt = 0u64;
        let elapsed = loop {
            attempt += 1;
            let url = survivors[attempt as usize % survivors.len()];
            if write(&http, url, &token, &format!("probe-{round}-{attempt}")).await {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write committed within 60 s of killing the leader (round {round})");
            }
        };
        eprintln!(
            "kill {round}/{}: b{} killed, first committed write after {:.3} s",
            options.kills,
            leader + 1,
            elapsed.as_secs_f64()
        );
        failovers.push(elapsed.as_secs_f64());
        nodes[leader].start()?;
        wait_caught_up(&http, &admins, &token, Duration::from_secs(60)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }

    let baseline = election_timeout.as_secs_f64();
    let p50 = median(&mut failovers.clone());
    let max = failovers.iter().copied().fold(0.0, f64::max);
    Ok(Report {
        scenario: "failover",
        machine: machine(),
        parameters: serde_json::json!({
            "kills": options.kills, "nodes": NODES, "writers": WRITERS,
            "election_timeout_s": baseline, "election_timeout_randomized_up_to_s": election_timeout_max.as_secs_f64(),
        }),
        figures: vec![
            Figure {
                id: "P6",
                metric: "leader SIGKILL to first committed write (median)".into(),
                unit: "s",
                ferry: p50,
                baseline,
                ratio: p50 / baseline,
                goal: "ratio <= 2",
                met: p50 / baseline <= 2.0,
            },
            Figure {
                id: "P6",
                metric: "leader SIGKILL to first committed write (max)".into(),
                unit: "s",
                ferry: max,
                baseline,
                ratio: max / baseline,
                goal: "ratio <= 2",
                met: max / baseline <= 2.0,
            },
        ],
        runs: serde_json::json!({ "failover_seconds": failovers, "writes_committed": committed.load(Ordering::Relaxed) }),
    })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

async fn write(http: &reqwest::Client, admin: &str, token: &str, name: &str) -> bool {
    let body = serde_json::json!({ "user_group": name, "host_group": "bench" });
    matches!(
        http.post(format!("{admin}/v1/grants")).bearer_auth(token).json(&body).send().await,
        Ok(r) if r.status().is_success()
    )
}

async fn status(http: &reqwest::Client, admin: &str, token: &str) -> Option<serde_json::Value> {
    let response = http
        .get(format!("{admin}/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// Index (from 0) of the node that leads.
async fn wait_for_leader(
    http: &reqwest::Client,
    admins: &[String],
    token: &str,
    deadline: Duration,
) -> anyhow::Result<usize> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        for (i, admin) in admins.iter().enumerate() {
            if status(http, admin, token)
                .await
                .is_some_and(|s| s["raft"]["role"] == "leader")
            {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no leader within {deadline:?}")
}

/// Waits for a steady cluster: every node answers, all name the same leader, and every node
/// has applied what that leader had committed when first asked. P6 is about a healthy
/// cluster losing its leader, not about one still catching up from the previous kill.
async fn wait_caught_up(
    http: &reqwest::Client,
    admins: &[String],
    token: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let mut statuses = Vec::new();
        for admin in admins {
            statuses.push(status(http, admin, token).await.map(|s| s["raft"].clone()));
        }
        let statuses: Option<Vec<serde_json::Value>> = statuses.into_iter().collect();
        if let Some(raft) = statuses {
            let leader = &raft[0]["leader"];
            let commit = raft
                .iter()
                .find(|r| r["role"] == "leader")
                .and_then(|r| r["commit"].as_u64());
            let steady = leader.as_u64().is_some_and(|l| l != 0)
                && raft.iter().all(|r| &r["leader"] == leader)
                && commit.is_some_and(|c| raft.iter().all(|r| r["applied"].as_u64() >= Some(c)));
            if steady {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster did not settle within {deadline:?} after the restart")
}
