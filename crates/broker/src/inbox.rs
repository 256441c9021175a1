//! The node's side of the peer inbox: what peers ask of this node (`ferry_peer::Inbox`),
//! answered by the parts of the node that know: the replica (forwarded proposals), the
//! amnesia guard's answers (`rejoin.rs`), the health reports, the restart gate and the relay.

use crate::context::Ctx;
use crate::supervisor::ServiceResult;
use crate::supervisor::SharedReceiver;
use ferry_peer::{IncomingGate, IncomingRelay, Request};
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

/// Service "peer-requests": answers forwarded proposals, store probes and rejoins, and keeps
/// the peers' health reports. Each request is answered on a task of its own, at most
/// `limits.peer_request_queue_max` at once; beyond that a request is dropped (its peer hears
/// "busy" at once) rather than waited for, so that this loop never stops taking health
/// reports.
pub async fn requests(
    ctx: Arc<Ctx>,
    requests: SharedReceiver<Request>,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceResult {
    let mut requests = requests.lock().await;
    let answering = Arc::new(Semaphore::new(ctx.config.limits.peer_request_queue_max));
    loop {
        let request = tokio::select! {
            request = requests.recv() => match request {
                Some(request) => request,
                None => return Err("the peer transport's request queue closed".into()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        if let Request::Health { from, report } = request {
            ctx.health.reports.store(&from, report);
            continue;
        }
        let Ok(permit) = answering.clone().try_acquire_owned() else {
            tracing::debug!("peer request dropped: too many in hand");
            continue; // the reply is dropped: the peer answers its caller "busy"
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            answer(&ctx, request).await;
            drop(permit);
        });
    }
}

async fn answer(ctx: &Ctx, request: Request) {
    match request {
        Request::Forward { command, reply } => {
            let _ = reply.send(ctx.replica.propose(command).await);
        }
        Request::Probe { probe, reply } => {
            let _ = reply.send(crate::rejoin::answer_probe(
                &ctx.config,
                &ctx.replica,
                &probe,
            ));
        }
        Request::Rejoin {
            request,
            from,
            reply,
        } => {
            let answer = match &ctx.peers {
                Some(peers) => {
                    crate::rejoin::answer_rejoin(peers, &ctx.replica, request, &from).await
                }
                None => ferry_proto::peer::RejoinReply {
                    raft_id: 0,
                    error: "this node has no peers".into(),
                },
            };
            let _ = reply.send(answer);
        }
        Request::Health { from, report } => ctx.health.reports.store(&from, report),
        Request::Login { request, reply } => {
            let _ = reply.send(crate::admission::answer_login(ctx, request));
        }
    }
}

/// Service "relay-queue": starts carrying each session a peer asks this node to relay.
pub async fn relays(
    ctx: Arc<Ctx>,
    relays: SharedReceiver<IncomingRelay>,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceResult {
    let mut relays = relays.lock().await;
    loop {
        tokio::select! {
            incoming = relays.recv() => match incoming {
                Some(incoming) => drop(tokio::spawn(crate::relay::carry_for_peer(ctx.clone(), incoming))),
                None => return Err("the peer transport's relay queue closed".into()),
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Service "gate-queue": answers the restart-gate questions peers send this node as leader,
/// at most `limits.peer_gate_queue_max` at once.
pub async fn gates(
    ctx: Arc<Ctx>,
    gates: SharedReceiver<IncomingGate>,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceResult {
    let mut gates = gates.lock().await;
    let answering = Arc::new(Semaphore::new(ctx.config.limits.peer_gate_queue_max));
    loop {
        tokio::select! {
            request = gates.recv() => match request {
                Some((request, reply)) => {
                    let ctx = ctx.clone();
                    let permit = answering.clone().acquire_owned().await
                        .expect("never closed: the semaphore lives in this function");
                    tokio::spawn(async move {
                        let _ = reply.send(crate::gate::answer_peer(&ctx, request).await);
                        drop(permit);
                    });
                }
                None => return Err("the peer transport's gate queue closed".into()),
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
