//! `ferry bench failover`: kill -9 the leader of a 3-broker cluster N times under write load and
//! measure the time from each kill to the first committed write, against the configured
//! election timeout (docs/DESIGN.md, P6; this scenario checks its first goal, <= 2x).
//!
//! Real `ferry broker` processes on loopback; writes go through the admin API of the nodes
//! that survive, as an operator's or a client's would.

use crate::cluster::Cluster;
use crate::report::{machine, median, Figure, Report};
use anyhow::bail;
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

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.kills == 0 {
        bail!("--kills must be greater than 0");
    }
    let mut cluster = Cluster::init("failover", NODES)?;
    let config = ferry_broker::NodeConfig::load(&cluster.files().join("b1.toml"))?;
    let election_timeout =
        Duration::from_millis(config.raft.tick_ms * config.raft.election_ticks as u64);
    let election_timeout_max = Duration::from_millis(
        config.raft.tick_ms
            * (config.raft.election_ticks + config.raft.election_jitter_ticks) as u64,
    );
    let token = cluster.token.clone();
    cluster.start_all()?;
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()?;
    let admins = cluster.admins();
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

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
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        cluster.nodes[leader].kill();
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
        cluster.nodes[leader].start()?;
        cluster.wait_caught_up(Duration::from_secs(60)).await?;
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
        notes: Vec::new(),
        runs: serde_json::json!({ "failover_seconds": failovers, "writes_committed": committed.load(Ordering::Relaxed) }),
    })
}

async fn write(http: &reqwest::Client, admin: &str, token: &str, name: &str) -> bool {
    let body = serde_json::json!({ "user_group": name, "host_group": "bench" });
    matches!(
        http.post(format!("{admin}/v1/grants")).bearer_auth(token).json(&body).send().await,
        Ok(r) if r.status().is_success()
    )
}
