//! `ferry bench drain` (docs/DESIGN.md, P8): hand b1's host agent and client off to b2
//! (`POST /v1/node/handoff`) while b1 carries N live sessions moving data both ways, and
//! measure what the sessions lived through: sessions dropped, the longest stall of each
//! (against steady traffic just before the hand-off), bytes lost. Goal: nothing dropped,
//! stall <= 200 ms.

use crate::live_sessions::{describe, Fault, LiveSessions, Load, Target};
use crate::report::{machine, Report};
use crate::stall::quantiles;
use anyhow::{bail, Context};
use std::time::{Duration, Instant};

pub struct Options {
    pub load: Load,
}

const P8: Target = Target {
    id: "P8",
    stall_max_s: 0.2,
    stall_goal: "stall <= 200 ms",
    lost: "dropped",
};
/// How long the hand-off may wait for b1 to carry no session (the broker's `wait_secs`),
/// and how much longer its answer may take to arrive.
const HANDOFF_WAIT: Duration = Duration::from_secs(60);
const HANDOFF_ANSWER_SLACK: Duration = Duration::from_secs(10);
/// Every direction must flow again within this after the hand-off answered.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let load = options.load;
    let live = LiveSessions::start("drain", &load).await?;
    eprintln!("{} s of steady traffic first", load.steady.as_secs());
    tokio::time::sleep(load.steady).await;

    let (from, to) = (
        live.cluster.nodes[0].name.clone(),
        live.cluster.nodes[1].name.clone(),
    );
    let started = Instant::now();
    let response = live
        .cluster
        .http
        .post(format!("{}/v1/node/handoff", live.cluster.nodes[0].admin))
        .bearer_auth(&live.cluster.token)
        .json(&serde_json::json!({ "to": to, "wait_secs": HANDOFF_WAIT.as_secs() }))
        .timeout(HANDOFF_WAIT + HANDOFF_ANSWER_SLACK)
        .send()
        .await
        .with_context(|| format!("asking {from} to hand off to {to}"))?;
    let answered = Instant::now();
    let status = response.status();
    let handoff: serde_json::Value = response
        .json()
        .await
        .context("the hand-off's answer is not JSON")?;
    if !status.is_success() {
        bail!("{from} refused the hand-off ({status}): {handoff}");
    }
    eprintln!(
        "{from} handed off to {to} in {} ms (broker's count): {handoff}",
        handoff["elapsed_ms"]
    );
    let fault = Fault {
        label: format!("drain {from} -> {to}"),
        start_us: live.traffic.us(started),
        end_us: live.traffic.us(answered),
    };
    match live.wait_flowing_since(answered, RECOVERY_DEADLINE).await {
        Ok(secs) => {
            eprintln!("every session flowing after the hand-off ({secs:.3} s after its answer)")
        }
        Err(still) => eprintln!(
            "{still} directions still stalled {RECOVERY_DEADLINE:?} after the hand-off answered"
        ),
    }
    tokio::time::sleep(load.after).await;

    let outcome = live.finish().await;
    let stalls = [outcome.stalls(&fault, load.steady)];
    eprintln!(
        "{}: stall {}; baseline {}",
        stalls[0].label,
        describe(&quantiles(&stalls[0].stall_us)?),
        describe(&quantiles(&stalls[0].baseline_us)?)
    );
    let (figures, mut runs) = outcome.figures(&P8, &stalls)?;
    runs["handoff"] = handoff.clone();
    let mut notes = outcome.notes(&P8, &stalls, "hand-off (from the request until its answer)");
    if handoff["sessions_remaining"].as_i64() != Some(0) {
        notes.push(format!(
            "WARNING: the hand-off answered with {} sessions still on {from}: stalls after \
             its answer are not attributed to it",
            handoff["sessions_remaining"]
        ));
    }
    notes.push(format!(
        "hand-off: {} ms by the broker's count, {:.3} s from request to answer; {} hosts and {} \
         clients notified; {} sessions left on {from}",
        handoff["elapsed_ms"],
        (answered - started).as_secs_f64(),
        handoff["hosts_notified"],
        handoff["clients_notified"],
        handoff["sessions_remaining"],
    ));
    Ok(Report {
        scenario: "drain",
        machine: machine(),
        parameters: load.json(),
        figures,
        notes,
        runs,
    })
}
