//! `ferry bench failover --sessions N` (docs/DESIGN.md, P7): SIGKILL the broker that carries
//! N live sessions moving data both ways, and measure what the sessions lived through: the
//! longest stall of each (against steady traffic just before the kill), sessions lost, bytes
//! lost. Goal: stall <= 3 s, nothing lost.
//!
//! The first kill hits b1, which the host agent and the client are attached to. With
//! `--kills K`, the killed broker is restarted, the cluster left to settle, and the next kill
//! hits whichever broker then carries the most sessions.

use crate::live_sessions::{describe, Fault, LiveSessions, Load, Target};
use crate::report::{machine, Report};
use crate::stall::quantiles;
use anyhow::bail;
use std::time::{Duration, Instant};

pub struct Options {
    pub load: Load,
    pub kills: u32,
}

const P7: Target = Target {
    id: "P7",
    stall_max_s: 3.0,
    stall_goal: "stall <= 3 s",
    lost: "lost",
};
/// Every direction must flow again within this after a kill, or the round counts as failed
/// (and no further kill is made).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// A restarted broker must rejoin (the cluster settle) within this.
const REJOIN_DEADLINE: Duration = Duration::from_secs(60);

pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.kills == 0 {
        bail!("--kills must be greater than 0");
    }
    let (load, kills) = (options.load, options.kills);
    let mut live = LiveSessions::start("failover-sessions", &load).await?;
    let mut faults = Vec::new();
    let mut victims = Vec::new();
    for round in 1..=kills {
        eprintln!(
            "kill {round}/{kills}: {} s of steady traffic first",
            load.steady.as_secs()
        );
        tokio::time::sleep(load.steady).await;
        let victim = if round == 1 {
            0
        } else {
            busiest_broker(&live).await?
        };
        let role = live
            .cluster
            .status(victim)
            .await
            .and_then(|s| s["raft"]["role"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let name = live.cluster.nodes[victim].name.clone();
        let killed = Instant::now();
        live.cluster.nodes[victim].kill();
        let at_us = live.traffic.us(killed);
        faults.push(Fault {
            label: format!("kill {round} ({name}, {role})"),
            start_us: at_us,
            end_us: at_us,
        });
        victims.push(serde_json::json!({ "broker": name, "raft_role": role }));
        match live.wait_flowing_since(killed, RECOVERY_DEADLINE).await {
            Ok(secs) => eprintln!(
                "kill {round}/{kills}: {name} ({role}) SIGKILLed; every session flowing again after {secs:.3} s"
            ),
            Err(still) => {
                eprintln!(
                    "kill {round}/{kills}: {name} ({role}) SIGKILLed; {still} directions still stalled after {RECOVERY_DEADLINE:?}; no further kill"
                );
                break;
            }
        }
        tokio::time::sleep(load.after).await;
        if round < kills {
            eprintln!("kill {round}/{kills}: restarting {name}");
            live.cluster.nodes[victim].start()?;
            live.cluster.wait_caught_up(REJOIN_DEADLINE).await?;
        }
    }
    let outcome = live.finish().await;
    let stalls: Vec<_> = faults
        .iter()
        .map(|f| outcome.stalls(f, load.steady))
        .collect();
    for s in &stalls {
        eprintln!(
            "{}: stall {}; baseline {}",
            s.label,
            describe(&quantiles(&s.stall_us)?),
            describe(&quantiles(&s.baseline_us)?)
        );
    }
    let (figures, mut runs) = outcome.figures(&P7, &stalls)?;
    runs["killed"] = victims.into();
    let mut parameters = load.json();
    parameters["kills"] = kills.into();
    Ok(Report {
        scenario: "failover-sessions",
        machine: machine(),
        parameters,
        figures,
        notes: outcome.notes(&P7, &stalls, "kill"),
        runs,
    })
}

/// Index of the live broker reporting the most open sessions.
async fn busiest_broker(live: &LiveSessions) -> anyhow::Result<usize> {
    let mut busiest: Option<(usize, f64)> = None;
    for i in 0..live.cluster.nodes.len() {
        if let Some(open) = live.cluster.metric(i, "ferry_sessions_open").await {
            if open > busiest.map_or(0.0, |(_, n)| n) {
                busiest = Some((i, open));
            }
        }
    }
    match busiest {
        Some((i, _)) => Ok(i),
        None => bail!("no broker reports open sessions; nothing to kill"),
    }
}
