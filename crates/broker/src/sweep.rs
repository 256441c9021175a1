//! The leader's upkeep of the replicated state: the session sweep (sessions whose broker is
//! gone are detached, those not resumed in time are closed, as `ferry_policy::sweep` decides)
//! and the purge of expired tokens; and this node's own orphans after a restart.

use crate::metrics::Metrics;
use crate::propose::Proposer;
use ferry_peer::Peers;
use ferry_proto::state::{command::Kind, CloseSession, DetachSession};
use ferry_replica::Replica;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the upkeep needs, and nothing more: built by `node.rs` from the node's handles.
#[derive(Clone)]
pub struct Upkeep {
    /// This node's id: the actor of what it proposes, and whose orphans it detaches.
    pub node_id: String,
    /// The applied state, and whether this node leads.
    pub replica: Replica,
    pub proposer: Proposer,
    /// Which brokers there are (none in a one-node cluster).
    pub peers: Option<Arc<Peers>>,
    pub metrics: Arc<Metrics>,
    /// How long a detached session may wait for a resume (`limits.session_resume_window_secs`).
    pub resume_window: Duration,
}

/// Sessions the state says this node carries lost their path when it restarted: mark them
/// detached, so that they expire unless their endpoints resume them (here or elsewhere).
pub async fn detach_orphaned_sessions(ctx: Upkeep) {
    let actions = ferry_policy::orphaned_at_restart(&ctx.replica.read(), &ctx.node_id);
    carry_out(&ctx, actions).await;
}

/// How often the leader looks for sessions whose broker is gone or whose window passed.
const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// On the leader: sessions carried by a broker it no longer hears from are marked detached,
/// and sessions detached for longer than the resume window are closed as lost
/// (`ferry_policy::sweep`).
pub async fn sweep_sessions(
    ctx: Upkeep,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let mut every = tokio::time::interval(SESSION_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if !ctx
            .replica
            .status()
            .is_leader
            .load(std::sync::atomic::Ordering::Acquire)
        {
            continue;
        }
        let window_ms = ctx.resume_window.as_millis() as u64;
        let unreachable = unreachable_brokers(&ctx);
        let actions = ferry_policy::sweep(
            &ctx.replica.read(),
            crate::now_ms(),
            window_ms,
            &unreachable,
        );
        carry_out(&ctx, actions).await;
    }
}

/// Proposes what the session sweep decided, counting sessions lost.
async fn carry_out(ctx: &Upkeep, actions: Vec<ferry_policy::SweepAction>) {
    let actor = format!("node:{}", ctx.node_id);
    for action in actions {
        match action {
            ferry_policy::SweepAction::Close { session_id, reason } => {
                let close = Kind::CloseSession(CloseSession {
                    session_id,
                    reason,
                    ..Default::default()
                });
                if ctx
                    .proposer
                    .propose(actor.clone(), String::new(), close)
                    .await
                    .is_ok()
                {
                    ctx.metrics.lose_session("expired");
                    tracing::warn!(session_id, "session lost: not resumed within its window");
                }
            }
            ferry_policy::SweepAction::Detach {
                session_id,
                broker,
                resumes,
                reason,
            } => {
                let detach = Kind::DetachSession(DetachSession {
                    session_id,
                    broker,
                    reason,
                    resumes,
                });
                if let Err(e) = ctx
                    .proposer
                    .propose(actor.clone(), String::new(), detach)
                    .await
                {
                    // The next sweep, a second later, tries again: no warning each time.
                    tracing::debug!(session_id, error = %e, "could not detach a session");
                }
            }
        }
    }
}

/// Brokers the leader has not heard from within an election timeout (by node id).
fn unreachable_brokers(ctx: &Upkeep) -> Vec<String> {
    let Some(peers) = &ctx.peers else {
        return Vec::new();
    };
    let brokers: Vec<(String, u64)> = peers
        .brokers()
        .into_iter()
        .map(|b| (b.node_id, b.raft_id))
        .collect();
    ferry_policy::unreachable_brokers(&brokers, &ctx.replica.membership().progress)
}

/// Periodic upkeep: purge expired tokens, refresh gauges.
pub async fn housekeeping(
    ctx: Upkeep,
    store_dir: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    /// Expired tokens are refused on sight; purging them is only to bound the state's size.
    const PURGE_EVERY: Duration = Duration::from_secs(300);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = purge.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        // The leader purges for everyone; the command replicates like any other.
        if ctx
            .replica
            .status()
            .is_leader
            .load(std::sync::atomic::Ordering::Acquire)
        {
            let actor = format!("node:{}", ctx.node_id);
            let purge = Kind::PurgeExpired(Default::default());
            if let Err(e) = ctx.proposer.propose(actor, String::new(), purge).await {
                tracing::warn!(error = %e, "token purge failed");
            }
        }
        ctx.metrics.store_bytes.set(dir_bytes(&store_dir) as i64);
    }
}

/// Bytes of the files directly in `dir` (sled keeps its files flat).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
