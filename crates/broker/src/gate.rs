//! The planned-restart gate as a node runs it (docs/DESIGN.md section 6): evaluated on the
//! leader after a read index, with the steadiness the leader accumulates; maintenance leases
//! taken through Raft; and what a node does when it holds one (hand off, give up leadership)
//! or is back.
//!
//! The decisions themselves are `ferry-gate`'s (pure); this module gathers the inputs, asks
//! the leader, and proposes the lease commands.

use crate::context::Ctx;
use crate::supervisor::ServiceResult;
use ferry_gate::{Steadiness, Verdict};
use ferry_proto::peer::{GateRequest, GateResponse};
use ferry_proto::state::{command::Kind, AcquireLease, ReleaseLease};
use ferry_replica::ProposeError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often the leader evaluates the gate for every member (feeding "steady") and looks for
/// leases to release, and every node checks whether it holds a new lease.
const EVALUATE_EVERY: Duration = Duration::from_millis(500);
/// How long the leader waits to confirm its leadership (read index) before answering.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower keeps trying to reach a leader for a gate answer (covers one full
/// exchange, `GATE_TIMEOUT` of `ferry-peer`, plus a leader change).
const ASK_LEADER_DEADLINE: Duration = Duration::from_secs(12);
/// After a failed hand-off (no broker to send endpoints to), how long a leased node waits
/// before trying again.
const HANDOFF_RETRY: Duration = Duration::from_secs(5);

/// The gate's memory on this node, and whether it drains.
#[derive(Default)]
pub struct GateState {
    /// Since when each member's checks have held (meaningful on the leader only).
    steadiness: Mutex<Steadiness>,
    /// Since when each node back from maintenance has been healthy (leader only), in ms.
    healthy_since_ms: Mutex<HashMap<String, u64>>,
    /// Serializes lease acquisition on the leader: evaluate, then propose, one at a time.
    acquiring: tokio::sync::Mutex<()>,
    /// This node is draining because it holds a lease taken while it ran.
    draining_for_lease: AtomicBool,
    /// Set by a hand-off: new sessions and attachments are refused.
    pub draining: AtomicBool,
    /// The verdict for every member as this node last evaluated it while leading (empty
    /// otherwise): carried in its health reports, shown in every node's status.
    verdicts: Mutex<Vec<ferry_proto::peer::RestartVerdict>>,
}

/// The verdicts this node last evaluated as leader (empty when it does not lead).
pub fn verdicts(ctx: &Ctx) -> Vec<ferry_proto::peer::RestartVerdict> {
    lock(&ctx.gate.verdicts).clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("never poisoned: no panics under the lock")
}

/// The answer to a restart check or a drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateAnswer {
    pub verdict: Verdict,
    /// The leader that evaluated it.
    pub evaluated_by: String,
    /// A drain: the maintenance lease is now held for the node.
    pub lease_taken: bool,
    /// A drain past failing checks (`--force`).
    pub forced: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    #[error("no node {0:?} in the cluster's configuration")]
    NotFound(String),
    /// The checks failed (or another lease won); the answer says which.
    #[error("refused")]
    Refused(Box<GateAnswer>),
    #[error("{0}")]
    Unavailable(String),
}

pub(crate) fn is_leader(ctx: &Ctx) -> bool {
    ctx.replica.status().is_leader.load(Ordering::Acquire)
}

/// Whether `node` may be taken down now, as the leader sees it.
pub async fn restart_check(ctx: &Ctx, node: &str) -> Result<GateAnswer, GateError> {
    ask(
        ctx,
        GateRequest {
            node: node.to_owned(),
            acquire: false,
            force: false,
            actor: String::new(),
        },
    )
    .await
}

/// Takes the maintenance lease for `node` if the gate allows it (or `force`).
pub async fn acquire(
    ctx: &Ctx,
    node: &str,
    actor: &str,
    force: bool,
) -> Result<GateAnswer, GateError> {
    ask(
        ctx,
        GateRequest {
            node: node.to_owned(),
            acquire: true,
            force,
            actor: actor.to_owned(),
        },
    )
    .await
}

/// Evaluates here when this node leads, else asks the leader over the peer link.
async fn ask(ctx: &Ctx, request: GateRequest) -> Result<GateAnswer, GateError> {
    let deadline = tokio::time::Instant::now() + ASK_LEADER_DEADLINE;
    loop {
        if is_leader(ctx) {
            match on_leader(ctx, &request).await {
                Err(LeaderError::NotLeader) => {}
                Err(LeaderError::Gate(e)) => return Err(e),
                Ok(answer) => return Ok(answer),
            }
        } else {
            let leader = ctx.replica.status().leader.load(Ordering::Acquire);
            if let (Some(peers), true) = (&ctx.peers, leader != 0) {
                if let Some(response) = peers.ask_gate(leader, &request).await {
                    if response.not_leader == 0 {
                        return from_response(response);
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(GateError::Unavailable(
                "no leader answered: the cluster may have lost its quorum, so no node can be \
                 taken down safely; bring the missing voters back"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum LeaderError {
    NotLeader,
    Gate(GateError),
}

/// On the leader: confirm leadership and the applied state (read index), evaluate, and for a
/// drain propose the lease.
async fn on_leader(ctx: &Ctx, request: &GateRequest) -> Result<GateAnswer, LeaderError> {
    match ctx.replica.read_index(READ_INDEX_TIMEOUT).await {
        Ok(()) => {}
        Err(ProposeError::NotLeader { .. }) => return Err(LeaderError::NotLeader),
        Err(e) => {
            return Err(LeaderError::Gate(GateError::Unavailable(format!(
                "the leader could not confirm the cluster's state with a quorum ({e}); \
                 no node can be taken down safely now"
            ))))
        }
    }
    if !is_leader(ctx) {
        return Err(LeaderError::NotLeader);
    }
    // Drains are evaluated and proposed one at a time; the state machine re-checks "one at a
    // time" when the lease is applied, should another leader have raced this one.
    let _one_at_a_time = if request.acquire {
        Some(ctx.gate.acquiring.lock().await)
    } else {
        None
    };
    let verdict = evaluate(ctx, &request.node)
        .ok_or_else(|| LeaderError::Gate(GateError::NotFound(request.node.clone())))?;
    let mut answer = GateAnswer {
        verdict,
        evaluated_by: ctx.config.node_id.clone(),
        lease_taken: false,
        forced: false,
    };
    if !request.acquire {
        return Ok(answer);
    }
    // Draining a node that already holds its lease again (an operator drained it, then a
    // stop hook asks once more) changes nothing: the node stays drained. The gate is not
    // asked again, since its own lease (or a new leader's fresh steadiness) would refuse it.
    if ctx.replica.read().lease(&request.node).is_some() {
        answer.lease_taken = true;
        return Ok(answer);
    }
    if !answer.verdict.allowed && !request.force {
        return Err(LeaderError::Gate(GateError::Refused(Box::new(answer))));
    }
    let forced = !answer.verdict.allowed;
    let failed_checks = answer.verdict.failures();
    if forced {
        tracing::warn!(node = %request.node, actor = %request.actor, failed = ?failed_checks,
            "maintenance lease FORCED past failing restart checks");
    }
    // The node's process now: it drains while it is this process.
    let boot_id = if request.node == ctx.config.node_id {
        ctx.health.boot_id
    } else {
        ctx.health
            .reports
            .get(&request.node)
            .map_or(0, |(report, _)| report.boot_id)
    };
    let lease = Kind::AcquireLease(AcquireLease {
        node: request.node.clone(),
        forced,
        failed_checks,
        boot_id,
    });
    match ctx
        .proposer
        .propose(request.actor.clone(), "admin-api".into(), lease)
        .await
    {
        Ok(ferry_state::Outcome::Refused(refusal)) => {
            // Another drain won between the evaluation and the apply.
            answer.verdict.allowed = false;
            answer.verdict.checks.push(ferry_gate::Check {
                name: "one at a time".into(),
                passed: false,
                reason: refusal.message,
            });
            Err(LeaderError::Gate(GateError::Refused(Box::new(answer))))
        }
        Ok(_) => {
            answer.lease_taken = true;
            answer.forced = forced;
            Ok(answer)
        }
        Err(ProposeError::NotLeader { .. }) => Err(LeaderError::NotLeader),
        Err(e @ ProposeError::Timeout(_)) => {
            Err(LeaderError::Gate(GateError::Unavailable(format!(
                "the maintenance lease was proposed but not confirmed ({e}); it may still be \
             recorded: check `ferry admin status` before trying again"
            ))))
        }
        Err(e) => Err(LeaderError::Gate(GateError::Unavailable(format!(
            "the maintenance lease could not be recorded: {e}"
        )))),
    }
}

/// Evaluates the gate for `node` with this node's steadiness (`None`: not a member).
fn evaluate(ctx: &Ctx, node: &str) -> Option<Verdict> {
    let view = crate::cluster::gate_view(ctx);
    let policy = crate::cluster::policy(ctx);
    ferry_gate::evaluate(
        &view,
        node,
        &policy,
        &mut lock(&ctx.gate.steadiness),
        crate::now_ms(),
    )
}

/// A peer's gate request, answered here (as leader) or with "not the leader".
pub async fn answer_peer(ctx: &Ctx, request: GateRequest) -> GateResponse {
    let not_leader = || GateResponse {
        not_leader: ctx.replica.status().leader.load(Ordering::Acquire).max(1),
        ..Default::default()
    };
    if !is_leader(ctx) {
        return not_leader();
    }
    let json = |answer: &GateAnswer| serde_json::to_string(answer).unwrap_or_default();
    match on_leader(ctx, &request).await {
        Err(LeaderError::NotLeader) => not_leader(),
        Ok(answer) => GateResponse {
            verdict_json: json(&answer),
            ..Default::default()
        },
        Err(LeaderError::Gate(GateError::Refused(answer))) => GateResponse {
            verdict_json: json(&answer),
            error: "refused".into(),
            ..Default::default()
        },
        Err(LeaderError::Gate(GateError::NotFound(node))) => GateResponse {
            error: format!("not found: {node}"),
            ..Default::default()
        },
        Err(LeaderError::Gate(GateError::Unavailable(why))) => GateResponse {
            error: why,
            ..Default::default()
        },
    }
}

fn from_response(response: GateResponse) -> Result<GateAnswer, GateError> {
    let answer = || {
        serde_json::from_str::<GateAnswer>(&response.verdict_json).map_err(|e| {
            GateError::Unavailable(format!("the leader's answer could not be read: {e}"))
        })
    };
    match response.error.as_str() {
        "" => answer(),
        "refused" => Err(GateError::Refused(Box::new(answer()?))),
        e => match e.strip_prefix("not found: ") {
            Some(node) => Err(GateError::NotFound(node.to_owned())),
            None => Err(GateError::Unavailable(e.to_owned())),
        },
    }
}

/// Releases the lease on `node` (`ferry admin undrain`).
/// `source` is where the request came from, for the audit log ("admin-api", or empty for the
/// node's own decision).
/// `since_ms`: release only the lease taken at that time (0: whatever lease is held).
pub async fn release(
    ctx: &Ctx,
    node: &str,
    since_ms: u64,
    actor: &str,
    source: &str,
    reason: String,
) -> Result<(), ReleaseError> {
    let release = Kind::ReleaseLease(ReleaseLease {
        node: node.to_owned(),
        reason,
        since_ms,
    });
    match ctx
        .proposer
        .propose(actor.to_owned(), source.to_owned(), release)
        .await
    {
        Ok(ferry_state::Outcome::Refused(r)) if r.kind == ferry_state::RefusalKind::NotFound => {
            Err(ReleaseError::NoLease(r.message))
        }
        Ok(ferry_state::Outcome::Refused(r)) => Err(ReleaseError::Refused(r.message)),
        Ok(_) => Ok(()),
        Err(e) => Err(ReleaseError::Failed(e)),
    }
}

/// Why a maintenance lease was not released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The node holds no lease (it was released already, or never taken).
    #[error("{0}")]
    NoLease(String),
    /// The state refused it for another reason (an older lease than the one named).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Failed(ferry_replica::ProposeError),
}

/// Service "gate": on the leader, evaluates every member (so "steady" measures real time)
/// and releases the leases of nodes back and healthy for the stabilization time; on every
/// node, follows this node's own lease.
pub async fn gate_loop(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) -> ServiceResult {
    let mut every = tokio::time::interval(EVALUATE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        follow_own_lease(&ctx);
        if !is_leader(&ctx) {
            // A future leadership starts from scratch: "steady" is measured by the leader.
            *lock(&ctx.gate.steadiness) = Steadiness::default();
            ctx.metrics.restart_allowed.replace(Vec::new());
            lock(&ctx.gate.verdicts).clear();
            lock(&ctx.gate.healthy_since_ms).clear();
            continue;
        }
        let view = crate::cluster::gate_view(&ctx);
        let policy = crate::cluster::policy(&ctx);
        let now_ms = crate::now_ms();
        {
            let mut steadiness = lock(&ctx.gate.steadiness);
            let verdicts: Vec<ferry_gate::Verdict> = view
                .members
                .iter()
                .filter_map(|member| {
                    ferry_gate::evaluate(&view, &member.node_id, &policy, &mut steadiness, now_ms)
                })
                .collect();
            let allowed = verdicts
                .iter()
                .map(|v| {
                    let label = crate::metrics::MemberLabel {
                        member: v.node.clone(),
                    };
                    (label, i64::from(v.allowed))
                })
                .collect();
            ctx.metrics.restart_allowed.replace(allowed);
            *lock(&ctx.gate.verdicts) = verdicts
                .iter()
                .map(|v| {
                    let failed = v.checks.iter().find(|c| !c.passed);
                    ferry_proto::peer::RestartVerdict {
                        node: v.node.clone(),
                        allowed: v.allowed,
                        failed_check: failed.map(|c| c.name.clone()).unwrap_or_default(),
                        reason: failed.map(|c| c.reason.clone()).unwrap_or_default(),
                    }
                })
                .collect();
        }
        let all_named = view
            .members
            .iter()
            .all(|m| !m.node_id.starts_with(crate::cluster::UNNAMED_MEMBER_PREFIX));
        for lease in &view.leases {
            let Some(member) = view.member(&lease.node) else {
                if !all_named {
                    continue; // it may be the member this node cannot name yet
                }
                // Removed from the cluster while under maintenance: nothing will come back
                // to release it, and it would block every other drain.
                let actor = format!("node:{}", ctx.config.node_id);
                let reason = format!("{} is no longer a member of the cluster", lease.node);
                if let Err(e) = release(&ctx, &lease.node, lease.since_ms, &actor, "", reason).await
                {
                    tracing::warn!(node = %lease.node, error = %e, "could not release a lease");
                }
                continue;
            };
            // Back: another process than the one the lease was taken on, and healthy since.
            let restarted = member.report.as_ref().is_some_and(|r| {
                if lease.boot_id != 0 {
                    r.boot_id != lease.boot_id
                } else {
                    // Taken without knowing the node's process (no report yet): by the clock.
                    r.started_at_ms > lease.since_ms
                }
            });
            let back = restarted && ferry_gate::problems(member, view.commit, &policy).is_empty();
            let since = {
                let mut healthy = lock(&ctx.gate.healthy_since_ms);
                if !back {
                    healthy.remove(&lease.node);
                    continue;
                }
                *healthy.entry(lease.node.clone()).or_insert(now_ms)
            };
            let held_ms = now_ms.saturating_sub(since);
            if held_ms >= policy.stabilization_ms {
                let reason = format!(
                    "{} is back and has been healthy for {} s",
                    lease.node,
                    held_ms / 1000
                );
                let actor = format!("node:{}", ctx.config.node_id);
                match release(&ctx, &lease.node, lease.since_ms, &actor, "", reason).await {
                    Ok(()) => {
                        tracing::info!(node = %lease.node, "maintenance over: lease released")
                    }
                    Err(e) => {
                        tracing::warn!(node = %lease.node, error = %e, "could not release a lease")
                    }
                }
                lock(&ctx.gate.healthy_since_ms).remove(&lease.node);
            }
        }
    }
}

/// Whether a lease taken at `since_ms` on process `boot_id` was taken on this process (the
/// node has not restarted since). Leases recorded without a boot id fall back to the clocks.
fn taken_on_this_process(ctx: &Ctx, since_ms: u64, boot_id: u64) -> bool {
    if boot_id != 0 {
        boot_id == ctx.health.boot_id
    } else {
        since_ms >= ctx.health.started_at_ms
    }
}

/// A lease on this node taken while it runs: drain (give up leadership, refuse new work,
/// hand hosts and clients off). The lease gone: serve again. A lease older than this process
/// means the node was restarted for the maintenance: it serves, and the leader releases the
/// lease once it has been healthy for the stabilization time.
fn follow_own_lease(ctx: &Arc<Ctx>) {
    let lease = ctx
        .replica
        .read()
        .lease(&ctx.config.node_id)
        .map(|l| (l.since_ms, l.boot_id));
    let draining = ctx.gate.draining_for_lease.load(Ordering::Acquire);
    match lease {
        Some((since, boot_id)) if !draining && taken_on_this_process(ctx, since, boot_id) => {
            ctx.gate.draining_for_lease.store(true, Ordering::Release);
            // New work is refused at once, whether or not the hand-off finds a target.
            ctx.gate.draining.store(true, Ordering::Release);
            ctx.replica.set_avoid_leadership(true);
            tracing::warn!("maintenance lease taken: draining this node");
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match crate::handoff::hand_off(&ctx, None, crate::handoff::HANDOFF_WAIT_MAX).await {
                    Ok(report) => tracing::info!(?report, "drain finished"),
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?HANDOFF_RETRY, "drain could not hand off");
                        // Try again (the lease still held) once a broker may have come back.
                        tokio::time::sleep(HANDOFF_RETRY).await;
                        ctx.gate.draining_for_lease.store(false, Ordering::Release);
                    }
                }
            });
        }
        None if draining => {
            ctx.gate.draining_for_lease.store(false, Ordering::Release);
            ctx.gate.draining.store(false, Ordering::Release);
            ctx.replica.set_avoid_leadership(false);
            tracing::info!("maintenance lease released: serving again");
        }
        _ => {}
    }
}
