//! Live hand-off: a draining node tells its host agents and clients to move to a healthy
//! broker, in-band on each connection's control stream, and they move their sessions there
//! before leaving (make before break). Also the list of brokers endpoints learn at connect
//! time, so that they can fail over to nodes their config file does not name.

use crate::context::Ctx;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, BrokerInfo, BrokerNotice, Role};
use ferry_transport::framed;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Notices queued per connection; a hand-off sends one, so a full queue means the endpoint
/// is not reading and a further notice would not help.
const NOTICES_QUEUED_MAX: usize = 4;
/// How long a hand-off waits for the hosts to attach elsewhere before telling the clients.
const HOSTS_MOVE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest `wait` a hand-off request may ask for.
pub const HANDOFF_WAIT_MAX: Duration = Duration::from_secs(300);

/// The control streams of the endpoints connected to this node, by connection.
#[derive(Default)]
pub struct NoticeBoard {
    endpoints: Mutex<HashMap<usize, (Role, mpsc::Sender<BrokerNotice>)>>,
}

impl NoticeBoard {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<usize, (Role, mpsc::Sender<BrokerNotice>)>> {
        self.endpoints
            .lock()
            .expect("never poisoned: no panics under the lock")
    }

    /// Registers connection `conn_id`'s control stream; `forward` writes what arrives.
    pub fn register(&self, conn_id: usize, role: Role) -> mpsc::Receiver<BrokerNotice> {
        let (tx, rx) = mpsc::channel(NOTICES_QUEUED_MAX);
        self.lock().insert(conn_id, (role, tx));
        rx
    }

    pub fn unregister(&self, conn_id: usize) {
        self.lock().remove(&conn_id);
    }

    /// Queues `notice` for the endpoint of connection `conn_id`; false when it is not
    /// registered or its queue is full.
    pub fn notify_connection(&self, conn_id: usize, notice: BrokerNotice) -> bool {
        self.lock()
            .get(&conn_id)
            .is_some_and(|(_, tx)| tx.try_send(notice).is_ok())
    }

    /// Queues `notice` for every endpoint of `role`; returns how many got it.
    fn notify(&self, role: Role, notice: &BrokerNotice) -> usize {
        self.lock()
            .values()
            .filter(|(r, _)| *r == role)
            .filter(|(_, tx)| tx.try_send(notice.clone()).is_ok())
            .count()
    }
}

/// Writes the notices queued for one connection on its control stream, until either ends.
pub async fn forward(mut send: quinn::SendStream, mut notices: mpsc::Receiver<BrokerNotice>) {
    while let Some(notice) = notices.recv().await {
        if framed::write(&mut send, &notice, FrameLimits::default())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// This node and every other broker whose relay listener is known: what endpoints learn.
pub fn known_brokers(ctx: &Ctx) -> Vec<BrokerInfo> {
    let mut brokers = vec![BrokerInfo {
        node_id: ctx.config.node_id.clone(),
        relay_addr: ctx.config.relay_addr.to_string(),
    }];
    if let Some(peers) = &ctx.peers {
        brokers.extend(peers.brokers().into_iter().filter_map(|b| {
            Some(BrokerInfo {
                node_id: b.node_id,
                relay_addr: b.relay_addr?.to_string(),
            })
        }));
    }
    brokers
}

/// Whether this node is handing its endpoints off (it refuses new sessions and attachments).
pub fn is_draining(ctx: &Ctx) -> bool {
    ctx.gate.draining.load(Ordering::Acquire)
}

/// The refusal a draining node answers to new work.
pub fn draining_error(ctx: &Ctx) -> wire::Error {
    wire::Error::new(
        wire::ErrorCode::Unavailable,
        format!(
            "broker {} is draining; connect to another broker",
            ctx.config.node_id
        ),
    )
}

/// What a hand-off did.
#[derive(Debug, Serialize)]
pub struct HandoffReport {
    /// The broker the endpoints were sent to.
    pub target: String,
    pub hosts_notified: usize,
    pub clients_notified: usize,
    /// What this node still holds when the report was written.
    pub hosts_remaining: usize,
    pub sessions_remaining: i64,
    pub elapsed_ms: u64,
}

/// Drains this node's endpoints to `to` (or a broker chosen here): hosts first, so that
/// they are attached at the target before their sessions' clients resume there, then
/// clients. Waits up to `wait` for the node to carry no session.
pub async fn hand_off(
    ctx: &Ctx,
    to: Option<&str>,
    wait: Duration,
) -> Result<HandoffReport, String> {
    let started = Instant::now();
    let candidates: Vec<BrokerInfo> = known_brokers(ctx)
        .into_iter()
        .filter(|b| b.node_id != ctx.config.node_id)
        .collect();
    let target = match to {
        Some(name) => candidates
            .into_iter()
            .find(|b| b.node_id == name)
            .ok_or_else(|| format!("{name:?} is not another broker with a known relay address"))?,
        None => pick_target(ctx, candidates).ok_or_else(|| {
            "no other broker with a known relay address is in contact; nothing to hand off to"
                .to_owned()
        })?,
    };
    ctx.gate.draining.store(true, Ordering::Release);
    tracing::warn!(to = %target.node_id, "draining: handing hosts and clients off");
    let notice = BrokerNotice {
        move_to: Some(target.clone()),
        reason: format!("broker {} is draining", ctx.config.node_id),
        end_sessions: Vec::new(),
    };
    let hosts_notified = ctx.sessions.notices.notify(Role::Host, &notice);
    let hosts = ctx.sessions.hosts.names();
    let deadline = Instant::now() + HOSTS_MOVE_DEADLINE.min(wait);
    while Instant::now() < deadline {
        // Moved means attached elsewhere, not merely gone from here: a client sent on before
        // its host is attached somewhere would find the host offline.
        let moved = {
            let state = ctx.replica.read();
            hosts.iter().all(|h| {
                state.host(h).is_none_or(|h| {
                    !h.attached_broker.is_empty() && h.attached_broker != ctx.config.node_id
                })
            })
        };
        if moved {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clients_notified = ctx.sessions.notices.notify(Role::Client, &notice);
    let deadline = started + wait;
    while Instant::now() < deadline && ctx.metrics.sessions_open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(HandoffReport {
        target: target.node_id,
        hosts_notified,
        clients_notified,
        hosts_remaining: ctx.sessions.hosts.len(),
        sessions_remaining: ctx.metrics.sessions_open.get(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// A broker to send endpoints to: a healthy one not under maintenance itself (by the health
/// reports), else one the consensus layer has heard from lately when this node knows (the
/// leader does), else the first.
fn pick_target(ctx: &Ctx, candidates: Vec<BrokerInfo>) -> Option<BrokerInfo> {
    let view = crate::cluster::gate_view(ctx);
    let policy = crate::cluster::policy(ctx);
    let fit = candidates.iter().find(|b| {
        view.member(&b.node_id).is_some_and(|m| {
            ferry_gate::problems(m, view.commit, &policy).is_empty()
                && !view.leases.iter().any(|l| l.node == b.node_id)
                && m.report.as_ref().is_some_and(|r| !r.draining)
        })
    });
    if let Some(fit) = fit {
        return Some(fit.clone());
    }
    let membership = ctx.replica.membership();
    let peers = ctx.peers.as_ref()?.brokers();
    let active = |b: &BrokerInfo| {
        let raft_id = peers.iter().find(|p| p.node_id == b.node_id)?.raft_id;
        let progress = membership.progress.iter().find(|p| p.id == raft_id)?;
        Some(progress.recent_active)
    };
    candidates
        .iter()
        .find(|b| active(b) == Some(true))
        .or_else(|| candidates.iter().find(|b| active(b).is_none()))
        .or(candidates.first())
        .cloned()
}
