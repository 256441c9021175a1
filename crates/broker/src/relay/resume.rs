//! Resuming a session whose path broke or moved: check the resume secret, reach the host
//! agent (here or through its broker, while it may itself be reconnecting), exchange the
//! offsets each side received, and relay again.
//!
//! The secret is checked against the local state, without confirming freshness with the
//! leader: a session's secret hash never changes once recorded, and a resume must work while
//! the cluster elects a new leader after a crash. The cluster records the resume through Raft
//! afterwards. A wrong secret proposes nothing: it is counted in the node's failure ledger
//! (audited once per period, `admission.rs`), and a source that keeps guessing is locked out.

use super::client::{answer_refused, error, respond, Counted, Refused};
use super::refusal_to_wire;
use super::session::{carry, route_to_host, session_slot, start_session, Route};
use crate::context::Ctx;
use ferry_admission::Attempt;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, client_response, ErrorCode};
use ferry_state::{hash_secret, Outcome, Session};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a resume may wait for the session's host agent to attach somewhere (it is
/// reconnecting too when its broker died).
const RESUME_HOST_DEADLINE: Duration = Duration::from_secs(10);
/// Time one attempt to reach the host may take before the next try.
const RESUME_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts while the host is not attached anywhere yet.
const RESUME_RETRY_DELAY: Duration = Duration::from_millis(25);

/// Continues a session (see the module's documentation).
pub(super) async fn resume_session(
    ctx: &Ctx,
    resume: wire::ResumeSession,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: SocketAddr,
    unproven: &super::Unproven,
) {
    let started = Instant::now();
    let secret_hash = hash_secret(&resume.resume_secret);
    let record_resume = || {
        let command = Kind::ResumeSession(cmd::ResumeSession {
            session_id: resume.session_id,
            broker: ctx.config.node_id.clone(),
            resume_secret_hash: secret_hash.clone(),
        });
        let actor = format!("session:{}", resume.session_id);
        ctx.proposer.propose(actor, remote.to_string(), command)
    };
    if let Err(error) = crate::admission::check_anonymous(ctx, remote.ip()) {
        let refused = Refused::new("resume_throttled", error);
        return answer_refused(ctx, &mut send, refused).await;
    }
    let (session, slot) = match admit(ctx, &resume, &secret_hash) {
        Ok(admitted) => admitted,
        Err((refused, wrong_secret)) => {
            answer_refused(ctx, &mut send, refused).await;
            if wrong_secret {
                // Counted for the period's audit summary, not proposed one by one.
                let id = resume.session_id.to_string();
                crate::admission::failed(ctx, remote.ip(), Attempt::Resume, &id);
            }
            return;
        }
    };
    unproven.proven();
    let start = wire::SessionStart {
        session_id: session.id,
        service: session.service.clone(),
        user: session.user.clone(),
        resume_secret: resume.resume_secret.clone(),
        resume_window_ms: ctx.config.limits.session_resume_window().as_millis() as u64,
        resume: true,
        client_received: resume.received,
        client_written: resume.written,
    };
    let (route, (host_send, host_recv, reply)) = match reach_host(ctx, &session, start).await {
        Ok(reached) => reached,
        Err(Unreached::Retry(refused)) => return answer_refused(ctx, &mut send, refused).await,
        Err(Unreached::Gone(refused)) => {
            // Told first: the close goes through Raft, which may be slow during a failover.
            let reason = format!("lost: {}", refused.error.message);
            answer_refused(ctx, &mut send, refused).await;
            let close = Kind::CloseSession(cmd::CloseSession {
                session_id: session.id,
                reason,
                ..Default::default()
            });
            let actor = format!("node:{}", ctx.config.node_id);
            let _ = ctx.proposer.propose(actor, String::new(), close).await;
            return;
        }
    };
    let resumed = client_response::Response::SessionResumed(wire::SessionResumed {
        received: reply.received,
    });
    respond(ctx, &mut send, resumed).await;
    let elapsed = started.elapsed();
    let replayed = resume.written.saturating_sub(reply.received)
        + reply.written.saturating_sub(resume.received);
    ctx.metrics.sessions_resumed.inc();
    ctx.metrics.resume_seconds.observe(elapsed.as_secs_f64());
    ctx.metrics.replay_bytes.inc_by(replayed);
    tracing::info!(
        via = ?route.as_ref().map(Route::describe),
        resume_ms = elapsed.as_millis() as u64,
        replayed,
        "session resumed"
    );
    let record = async {
        match record_resume().await {
            Ok(Outcome::Refused(r)) => tracing::warn!(reason = %r.message, "resume not recorded"),
            Err(e) => tracing::warn!(error = %e, "resume not recorded"),
            Ok(_) => {}
        }
    };
    // This path is the session's next: its record will say one more resume (racing resumes
    // of one session are the client's doing, and only one of them carries it on).
    let relay = carry(
        ctx,
        (session.id, session.resumes + 1),
        (send, recv),
        (host_send, host_recv),
    );
    tokio::join!(record, relay);
    drop(slot);
}

/// Whether this node takes the resume: not draining, the secret matches a session that may
/// resume, a slot is free. A refusal says whether it counts as a failed anonymous attempt (a
/// wrong or stale secret).
fn admit(
    ctx: &Ctx,
    resume: &wire::ResumeSession,
    secret_hash: &[u8],
) -> Result<(Session, super::session::Slot), (Refused, bool)> {
    if crate::handoff::is_draining(ctx) {
        let refused = Refused::new("draining", crate::handoff::draining_error(ctx));
        return Err((refused, false));
    }
    let state = ctx.replica.read();
    // The secret first (a stranger learns nothing about the session), then whether the session
    // may still go on: a resume re-checks authorization like an open.
    let session = state
        .may_resume(resume.session_id, secret_hash)
        .and_then(|s| state.session_allowed(s.id))
        .cloned()
        .map_err(|refusal| {
            tracing::warn!(reason = %refusal.message, "resume refused");
            (
                Refused::new("resume_refused", refusal_to_wire(&refusal)),
                true,
            )
        })?;
    drop(state);
    let slot =
        session_slot(ctx, &session.user, &session.host).map_err(|refused| (refused, false))?;
    Ok((session, slot))
}

/// Why a resume could not reach its session on the host.
enum Unreached {
    /// Not now (the host is not attached anywhere, or did not answer): the client may retry.
    Retry(Refused),
    /// The host no longer holds the session: it is lost for good, and is to be closed.
    Gone(Refused),
}

/// Reaches the session's host agent wherever it is attached, trying again while it is not
/// attached anywhere yet or has just moved, until `RESUME_HOST_DEADLINE`.
async fn reach_host(
    ctx: &Ctx,
    session: &Session,
    start: wire::SessionStart,
) -> Result<(Option<Route>, ferry_peer::SessionStreams), Unreached> {
    let deadline = Instant::now() + RESUME_HOST_DEADLINE;
    loop {
        let route = route_to_host(ctx, &session.host);
        let attempt = match &route {
            Some(current) => attempt(ctx, current, &session.host, start.clone()).await,
            None => Err(error(
                ErrorCode::Unavailable,
                format!("host {:?} is not attached to any broker yet", session.host),
            )),
        };
        match attempt {
            Ok(streams) => return Ok((route, streams)),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::PermissionDenied) => {
                tracing::warn!(reason = %e.message, "resume refused by the host");
                return Err(Unreached::Gone(Refused {
                    error: e,
                    counted: Counted::Lost("host_gone"),
                }));
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::info!(reason = %e.message, "resume failed: host unreachable");
                return Err(Unreached::Retry(Refused {
                    error: e,
                    counted: Counted::Not,
                }));
            }
            Err(_) => tokio::time::sleep(RESUME_RETRY_DELAY).await,
        }
    }
}

/// One attempt to start the resumed session on the host by `route`. While it waits (say, on
/// the broker that died, which presence still names), the agent may attach elsewhere: then the
/// attempt is abandoned at once.
async fn attempt(
    ctx: &Ctx,
    route: &Route,
    host: &str,
    start: wire::SessionStart,
) -> Result<ferry_peer::SessionStreams, wire::Error> {
    let moved = async {
        loop {
            tokio::time::sleep(RESUME_RETRY_DELAY).await;
            if route_to_host(ctx, host).as_ref() != Some(route) {
                return;
            }
        }
    };
    tokio::select! {
        attempt = tokio::time::timeout(
            RESUME_ATTEMPT_TIMEOUT,
            start_session(ctx, route, host, start),
        ) => attempt.unwrap_or_else(|_| {
            Err(error(ErrorCode::Unavailable, "the host did not answer in time"))
        }),
        () = moved => Err(error(ErrorCode::Unavailable, "the host moved")),
    }
}
