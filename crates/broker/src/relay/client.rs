//! Client connections: one request per stream. `Login` answers a token; `OpenSession` checks
//! the token and the grants, records the session, opens a stream to the host agent, and then
//! splices the two streams until both directions end.

use super::{frame_limits, on_drop, propose_error_to_wire, refusal_to_wire, reject_input, stale};
use crate::auth;
use crate::node::Ctx;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, client_request, client_response, ClientResponse, ErrorCode};
use ferry_state::{hash_secret, Outcome, TokenCheck};
use ferry_transport::{framed, splice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::timeout;
use tracing::Instrument;

pub(super) async fn serve(conn: quinn::Connection, ctx: Arc<Ctx>, remote: SocketAddr) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (conn, ctx) = (conn.clone(), ctx.clone());
        tokio::spawn(async move { request(conn, send, recv, ctx, remote).await });
    }
}

async fn request(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    remote: SocketAddr,
) {
    let deadline = ctx.config.limits.handshake_timeout();
    let request: wire::ClientRequest =
        match timeout(deadline, framed::read(&mut recv, frame_limits(&ctx))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return reject_input(&ctx, &conn, &e),
            Err(_) => return,
        };
    use client_request::Request;
    use client_response::Response;
    // Requests answered with one response, after which the stream is finished.
    let response = match request.request {
        Some(Request::Login(login)) => {
            one_shot(self::login(&ctx, login, remote).await, Response::LoginOk)
        }
        Some(Request::ListHosts(list)) => one_shot(
            super::account::list_hosts(&ctx, list).await,
            Response::HostList,
        ),
        Some(Request::WhoAmI(who)) => one_shot(
            super::account::who_am_i(&ctx, who).await,
            Response::Identity,
        ),
        Some(Request::Logout(logout)) => one_shot(
            super::account::logout(&ctx, logout, remote).await,
            Response::LoggedOut,
        ),
        // Requests whose stream goes on to carry a session.
        Some(Request::OpenSession(open)) => {
            return open_session(&ctx, open, send, recv, remote).await;
        }
        Some(Request::ResumeSession(resume)) => {
            let span = tracing::info_span!("session", session_id = resume.session_id);
            return resume_session(&ctx, resume, send, recv, remote)
                .instrument(span)
                .await;
        }
        None => {
            ctx.metrics.protocol_error("empty_request");
            ferry_transport::CloseCode::Protocol.close(&conn, "request names no operation");
            return;
        }
    };
    respond(&ctx, &mut send, response).await;
    let _ = send.finish();
}

/// The response to a one-shot request: its answer, or the error.
fn one_shot<T>(
    result: Result<T, wire::Error>,
    answer: fn(T) -> client_response::Response,
) -> client_response::Response {
    result.map_or_else(client_response::Response::Error, answer)
}

async fn respond(ctx: &Ctx, send: &mut quinn::SendStream, response: client_response::Response) {
    let response = ClientResponse {
        response: Some(response),
    };
    let _ = framed::write(send, &response, frame_limits(ctx)).await;
}

fn error(code: ErrorCode, message: impl Into<String>) -> wire::Error {
    wire::Error::new(code, message)
}

async fn login(
    ctx: &Ctx,
    login: wire::Login,
    remote: SocketAddr,
) -> Result<wire::LoginOk, wire::Error> {
    let source = remote.ip();
    let result_label = |result| crate::metrics::Result_ { result };
    ctx.throttle
        .lock()
        .expect("no code panics while holding the throttle lock")
        .check(&login.user, source, Instant::now())
        .map_err(|why| {
            ctx.metrics
                .logins
                .get_or_create(&result_label("throttled"))
                .inc();
            error(ErrorCode::ResourceExhausted, why)
        })?;
    ctx.confirm_fresh().await.map_err(stale)?;
    let stored = ctx
        .replica
        .read()
        .user(&login.user)
        .map(|u| u.password_hash.clone());
    let password = login.password;
    // An unknown user costs the same argon2 work as a known one (against a dummy hash), so
    // response times do not reveal which users exist.
    let known = stored.is_some();
    let hash = stored.clone();
    let verified = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => auth::verify_password(&hash, &password),
        None => {
            auth::verify_password(auth::dummy_password_hash(), &password);
            false
        }
    })
    .await
    .unwrap_or(false)
        && known;
    let actor = format!("user:{}", login.user);
    if !verified {
        ctx.metrics
            .logins
            .get_or_create(&result_label("failed"))
            .inc();
        ctx.throttle
            .lock()
            .expect("no code panics while holding the throttle lock")
            .record_failure(&login.user, source, Instant::now());
        let reason = if stored.is_some() {
            "wrong password"
        } else {
            "unknown user"
        };
        let _ = ctx
            .propose(
                actor,
                remote.to_string(),
                Kind::LoginFailed(cmd::LoginFailed {
                    user: login.user.clone(),
                    reason: reason.into(),
                }),
            )
            .await;
        // The same answer for both cases: telling them apart would let anyone list the users.
        // The audit log records which it was.
        return Err(error(
            ErrorCode::Unauthenticated,
            format!(
                "login failed for {:?}: unknown user or wrong password",
                login.user
            ),
        ));
    }
    let token = auth::new_secret();
    let expires_at_ms = crate::now_ms() + ctx.config.limits.token_ttl_secs * 1000;
    let issue = Kind::IssueToken(cmd::IssueToken {
        user: login.user.clone(),
        token_hash: hash_secret(&token),
        expires_at_ms,
    });
    match ctx.propose(actor, remote.to_string(), issue).await {
        Ok(Outcome::Refused(r)) => Err(refusal_to_wire(&r)),
        Ok(_) => {
            ctx.metrics.logins.get_or_create(&result_label("ok")).inc();
            ctx.throttle
                .lock()
                .expect("no code panics while holding the throttle lock")
                .record_success(&login.user);
            Ok(wire::LoginOk {
                token,
                expires_at_ms,
            })
        }
        Err(e) => Err(propose_error_to_wire(&e)),
    }
}

/// Authorizes, records and relays one session.
async fn open_session(
    ctx: &Ctx,
    open: wire::OpenSession,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: SocketAddr,
) {
    if crate::handoff::is_draining(ctx) {
        ctx.metrics.refuse_session("draining");
        let e = crate::handoff::draining_error(ctx);
        respond(ctx, &mut send, client_response::Response::Error(e)).await;
        let _ = send.finish();
        return;
    }
    let authorized = match ctx.confirm_fresh().await {
        Ok(()) => authorize(ctx, &open),
        Err(e) => Err(("state_unconfirmed", stale(e))),
    };
    let (user, route) = match authorized {
        Ok(authorized) => authorized,
        Err((label, e)) => {
            ctx.metrics.refuse_session(label);
            respond(ctx, &mut send, client_response::Response::Error(e)).await;
            let _ = send.finish();
            return;
        }
    };
    let Ok(slot) = ctx.session_slots.clone().try_acquire_owned() else {
        ctx.metrics.refuse_session("sessions_max");
        let e = error(
            ErrorCode::ResourceExhausted,
            format!(
                "broker {} is at its limit of {} sessions; try again later or another broker",
                ctx.config.node_id, ctx.config.limits.sessions_max
            ),
        );
        respond(ctx, &mut send, client_response::Response::Error(e)).await;
        let _ = send.finish();
        return;
    };
    let resume_secret = auth::new_secret();
    let opened = ctx
        .propose(
            format!("user:{user}"),
            remote.to_string(),
            Kind::OpenSession(cmd::OpenSession {
                user: user.clone(),
                host: open.host.clone(),
                service: open.service.clone(),
                broker: ctx.config.node_id.clone(),
                resume_secret_hash: hash_secret(&resume_secret),
            }),
        )
        .await;
    let session_id = match opened {
        Ok(Outcome::SessionOpened { session_id }) => session_id,
        Ok(Outcome::Refused(r)) => {
            ctx.metrics.refuse_session("refused");
            respond(
                ctx,
                &mut send,
                client_response::Response::Error(refusal_to_wire(&r)),
            )
            .await;
            let _ = send.finish();
            return;
        }
        Ok(Outcome::Applied) | Err(_) => {
            ctx.metrics.refuse_session("unavailable");
            let e = error(
                ErrorCode::Unavailable,
                "the session could not be recorded; try again",
            );
            respond(ctx, &mut send, client_response::Response::Error(e)).await;
            let _ = send.finish();
            return;
        }
    };
    let span = tracing::info_span!("session", session_id, %user, host = %open.host, service = %open.service);
    let start = wire::SessionStart {
        session_id,
        service: open.service.clone(),
        user,
        resume_secret,
        resume_window_ms: ctx.config.limits.session_resume_window().as_millis() as u64,
        ..Default::default()
    };
    relay(ctx, route, &open.host, start, send, recv)
        .instrument(span)
        .await;
    drop(slot);
}

/// How long a resume may wait for the session's host agent to attach somewhere (it is
/// reconnecting too when its broker died).
const RESUME_HOST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Time one attempt to reach the host may take before the next try.
const RESUME_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Pause between attempts while the host is not attached anywhere yet.
const RESUME_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

/// Continues a session whose path broke or moved: checks the resume secret, reaches the host
/// agent (here or through its broker), exchanges the offsets, and relays again.
///
/// The secret is checked against the local state, without confirming freshness with the
/// leader: a session's secret hash never changes once recorded, and a resume must work while
/// the cluster elects a new leader after a crash. The cluster records the resume (and audits
/// a refused one) through Raft afterwards.
async fn resume_session(
    ctx: &Ctx,
    resume: wire::ResumeSession,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: SocketAddr,
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
        ctx.propose(actor, remote.to_string(), command)
    };
    let refuse = |e: wire::Error| client_response::Response::Error(e);
    if crate::handoff::is_draining(ctx) {
        ctx.metrics.refuse_session("draining");
        respond(ctx, &mut send, refuse(crate::handoff::draining_error(ctx))).await;
        let _ = send.finish();
        return;
    }
    let session = ctx
        .replica
        .read()
        .may_resume(resume.session_id, &secret_hash)
        .cloned();
    let session = match session {
        Ok(session) => session,
        Err(refusal) => {
            tracing::warn!(reason = %refusal.message, "resume refused");
            ctx.metrics.refuse_session("resume_refused");
            respond(ctx, &mut send, refuse(refusal_to_wire(&refusal))).await;
            let _ = send.finish();
            // Through Raft, so that the refusal is audited on every node.
            let _ = record_resume().await;
            return;
        }
    };
    let Ok(slot) = ctx.session_slots.clone().try_acquire_owned() else {
        ctx.metrics.refuse_session("sessions_max");
        let e = error(
            ErrorCode::ResourceExhausted,
            format!("broker {} is at its session limit", ctx.config.node_id),
        );
        respond(ctx, &mut send, refuse(e)).await;
        let _ = send.finish();
        return;
    };
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
    let deadline = Instant::now() + RESUME_HOST_DEADLINE;
    let (route, (host_send, host_recv, reply)) = loop {
        let route = route_to_host(ctx, &session.host);
        let attempt = match &route {
            Some(current) => {
                // While an attempt waits (say, on the broker that died, which presence still
                // names), the agent may attach elsewhere: then the attempt is abandoned at once.
                let moved = async {
                    loop {
                        tokio::time::sleep(RESUME_RETRY_DELAY).await;
                        if route_to_host(ctx, &session.host).as_ref() != Some(current) {
                            return;
                        }
                    }
                };
                tokio::select! {
                    attempt = tokio::time::timeout(
                        RESUME_ATTEMPT_TIMEOUT,
                        start_session(ctx, current, &session.host, start.clone()),
                    ) => attempt.unwrap_or_else(|_| {
                        Err(error(
                            ErrorCode::Unavailable,
                            "the host did not answer in time",
                        ))
                    }),
                    () = moved => Err(error(ErrorCode::Unavailable, "the host moved")),
                }
            }
            None => Err(error(
                ErrorCode::Unavailable,
                format!("host {:?} is not attached to any broker yet", session.host),
            )),
        };
        match attempt {
            Ok(streams) => break (route, streams),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::PermissionDenied) => {
                // The host no longer holds the session: it is lost for good.
                tracing::warn!(reason = %e.message, "resume refused by the host");
                ctx.metrics.lose_session("host_gone");
                respond(ctx, &mut send, refuse(e.clone())).await;
                let _ = send.finish();
                let close = Kind::CloseSession(cmd::CloseSession {
                    session_id: session.id,
                    reason: format!("lost: {}", e.message),
                    ..Default::default()
                });
                let _ = ctx
                    .propose(format!("node:{}", ctx.config.node_id), String::new(), close)
                    .await;
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::info!(reason = %e.message, "resume failed: host unreachable");
                respond(ctx, &mut send, refuse(e)).await;
                let _ = send.finish();
                return;
            }
            Err(_) => tokio::time::sleep(RESUME_RETRY_DELAY).await,
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

/// Where the host agent is now: attached here, or to the peer broker its presence names.
fn route_to_host(ctx: &Ctx, host: &str) -> Option<Route> {
    if ctx.hosts.get(host).is_some() {
        return Some(Route::Local);
    }
    let broker = ctx.replica.read().host(host)?.attached_broker.clone();
    (!broker.is_empty() && broker != ctx.config.node_id && ctx.peers.is_some())
        .then_some(Route::Peer(broker))
}

/// Sends `start` to the host agent by `route`; on success the streams carry the session.
async fn start_session(
    ctx: &Ctx,
    route: &Route,
    host: &str,
    start: wire::SessionStart,
) -> Result<ferry_peer::SessionStreams, wire::Error> {
    match route {
        Route::Local => start_on_host(ctx, host, start).await,
        Route::Peer(broker) => {
            let request = ferry_proto::peer::RelayRequest {
                host: host.to_owned(),
                start: Some(start),
            };
            let peers = ctx
                .peers
                .as_ref()
                .expect("a Peer route exists only with peer links");
            peers
                .open_relay(broker, request, ctx.config.limits.handshake_timeout())
                .await
        }
    }
}

/// Where a session's host is reachable from this node.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Its agent is attached here.
    Local,
    /// Its agent is attached to this peer broker (by node id), which carries the session.
    Peer(String),
}

impl Route {
    fn describe(&self) -> String {
        match self {
            Route::Local => "local".into(),
            Route::Peer(broker) => format!("peer {broker}"),
        }
    }
}

/// Who the token belongs to, if they may reach the host's service, and by which route.
fn authorize(
    ctx: &Ctx,
    open: &wire::OpenSession,
) -> Result<(String, Route), (&'static str, wire::Error)> {
    let user = {
        let state = ctx.replica.read();
        let user =
            match state.check_token(&hash_secret(&open.token), crate::now_ms()) {
                TokenCheck::Valid(user) => user.name.clone(),
                TokenCheck::Expired => {
                    return Err((
                        "token_expired",
                        error(
                            ErrorCode::Expired,
                            "your login token has expired; run `ferry login` again",
                        ),
                    ))
                }
                TokenCheck::Unknown => return Err((
                    "token_unknown",
                    error(
                        ErrorCode::Unauthenticated,
                        "your login token is not valid on this cluster; run `ferry login` again",
                    ),
                )),
            };
        state
            .may_open(&user, &open.host)
            .map_err(|r| ("not_granted", refusal_to_wire(&r)))?;
        // Presence is replicated: when the agent is attached to another broker, that broker
        // carries the session (it also checks the service, which only it knows).
        let elsewhere = state
            .host(&open.host)
            .map(|h| h.attached_broker.clone())
            .filter(|b| !b.is_empty() && *b != ctx.config.node_id && ctx.peers.is_some());
        if ctx.hosts.get(&open.host).is_none() {
            if let Some(broker) = elsewhere {
                return Ok((user, Route::Peer(broker)));
            }
        }
        user
    };
    let Some(host) = ctx.hosts.get(&open.host) else {
        return Err((
            "host_offline",
            error(
                ErrorCode::Unavailable,
                format!(
                    "host {:?} is enrolled but its agent is not connected",
                    open.host
                ),
            ),
        ));
    };
    if !host.services.contains(&open.service) {
        return Err((
            "no_such_service",
            error(
                ErrorCode::NotFound,
                format!(
                    "host {:?} does not expose service {:?} (it exposes: {})",
                    open.host,
                    open.service,
                    host.services.join(", ")
                ),
            ),
        ));
    }
    Ok((user, Route::Local))
}

async fn relay(
    ctx: &Ctx,
    route: Route,
    host: &str,
    start: wire::SessionStart,
    mut client_send: quinn::SendStream,
    client_recv: quinn::RecvStream,
) {
    let session_id = start.session_id;
    let (resume_secret, resume_window_ms) = (start.resume_secret.clone(), start.resume_window_ms);
    if let Route::Peer(broker) = &route {
        tracing::info!(%broker, "host attached to another broker; relaying through it");
    }
    match start_session(ctx, &route, host, start).await {
        Err(e) => {
            tracing::info!(error = %e, "host refused the session");
            ctx.metrics.refuse_session("host_refused");
            let reason = format!("host refused: {e}");
            respond(ctx, &mut client_send, client_response::Response::Error(e)).await;
            let _ = client_send.finish();
            let close = Kind::CloseSession(cmd::CloseSession {
                session_id,
                reason,
                ..Default::default()
            });
            if let Err(e) = ctx
                .propose(format!("node:{}", ctx.config.node_id), String::new(), close)
                .await
            {
                tracing::warn!(error = %e, "could not record the session's end");
            }
        }
        Ok((host_send, host_recv, _)) => {
            let opened = client_response::Response::SessionOpened(wire::SessionOpened {
                session_id,
                resume_secret,
                resume_window_ms,
            });
            respond(ctx, &mut client_send, opened).await;
            ctx.metrics.sessions_opened.inc();
            tracing::info!("session relaying");
            carry(
                ctx,
                (session_id, 0),
                (client_send, client_recv),
                (host_send, host_recv),
            )
            .await;
        }
    }
}

/// Relays a session's frames until both directions end, then records how: closed when both
/// endpoints finished their streams (the session is complete), detached when the path broke
/// (the endpoints will resume it elsewhere, or it expires).
async fn carry(
    ctx: &Ctx,
    (session_id, resumes): (u64, u32),
    (client_send, client_recv): (quinn::SendStream, quinn::RecvStream),
    (host_send, host_recv): (quinn::SendStream, quinn::RecvStream),
) {
    let (a, b) = splice_session(ctx, client_recv, host_send, host_recv, client_send).await;
    let up = *a.as_ref().unwrap_or(&0);
    let down = *b.as_ref().unwrap_or(&0);
    let actor = format!("node:{}", ctx.config.node_id);
    let command = match (a, b) {
        (Ok(_), Ok(_)) => {
            tracing::info!(
                bytes_client_to_host = up,
                bytes_host_to_client = down,
                "session ended"
            );
            Kind::CloseSession(cmd::CloseSession {
                session_id,
                bytes_client_to_host: up,
                bytes_host_to_client: down,
                reason: "closed".into(),
            })
        }
        (a, b) => {
            let reason = match (a, b) {
                (Err(e), _) => format!("client side: {e}"),
                (_, Err(e)) => format!("host side: {e}"),
                _ => unreachable!("both Ok is handled above"),
            };
            tracing::info!(bytes_client_to_host = up, bytes_host_to_client = down, %reason, "session path broke; waiting for a resume");
            Kind::DetachSession(cmd::DetachSession {
                session_id,
                broker: ctx.config.node_id.clone(),
                reason,
                resumes,
            })
        }
    };
    if let Err(e) = ctx.propose(actor, String::new(), command).await {
        tracing::warn!(error = %e, "could not record the session's state");
    }
}

/// Opens the session's stream to the host agent attached here, sends `start`, and waits for
/// the agent's answer (it reached the local service, or took the resume).
async fn start_on_host(
    ctx: &Ctx,
    host_name: &str,
    start: wire::SessionStart,
) -> Result<ferry_peer::SessionStreams, wire::Error> {
    let unavailable = |why: String| error(ErrorCode::Unavailable, why);
    let host = ctx.hosts.get(host_name).ok_or_else(|| {
        unavailable(format!(
            "host {host_name:?} is not connected to broker {}",
            ctx.config.node_id
        ))
    })?;
    // Bounded: a host that grants no more streams (it holds as many sessions as it takes)
    // must not leave the client waiting.
    let (mut send, mut recv) = timeout(ctx.config.limits.handshake_timeout(), host.conn.open_bi())
        .await
        .map_err(|_| {
            error(
                ErrorCode::ResourceExhausted,
                format!("host {host_name:?} takes no more sessions now; try again later"),
            )
        })?
        .map_err(|e| unavailable(format!("cannot reach host {host_name:?}: {e}")))?;
    framed::write(&mut send, &start, frame_limits(ctx))
        .await
        .map_err(|e| unavailable(format!("cannot reach host {host_name:?}: {e}")))?;
    let reply: wire::SessionStartReply = timeout(
        ctx.config.limits.handshake_timeout(),
        framed::read(&mut recv, frame_limits(ctx)),
    )
    .await
    .map_err(|_| unavailable(format!("host {host_name:?} did not answer in time")))?
    .map_err(|e| unavailable(format!("host {host_name:?} failed: {e}")))?;
    match reply.error {
        Some(e) => Err(e),
        None => Ok((send, recv, reply)),
    }
}

/// Carries a session another broker authorized and recorded, to a host attached here.
pub(crate) async fn carry_for_peer(ctx: std::sync::Arc<Ctx>, incoming: ferry_peer::IncomingRelay) {
    let ferry_peer::IncomingRelay {
        request,
        mut send,
        recv,
    } = incoming;
    let start = request.start.unwrap_or_default();
    let span = tracing::info_span!("session", session_id = start.session_id, user = %start.user, host = %request.host, service = %start.service, resume = start.resume);
    async move {
        let peer_limits = ferry_proto::frame::FrameLimits::default();
        match start_on_host(&ctx, &request.host, start).await {
            Err(e) => {
                tracing::info!(error = %e, "could not carry a session for a peer");
                let response = ferry_proto::peer::RelayResponse {
                    error: Some(e),
                    reply: None,
                };
                let _ = framed::write(&mut send, &response, peer_limits).await;
                let _ = send.finish();
            }
            Ok((host_send, host_recv, reply)) => {
                let response = ferry_proto::peer::RelayResponse {
                    error: None,
                    reply: Some(reply),
                };
                if framed::write(&mut send, &response, peer_limits)
                    .await
                    .is_err()
                {
                    return;
                }
                tracing::info!("carrying a session for a peer broker");
                let (up, down) = splice_session(&ctx, recv, host_send, host_recv, send).await;
                tracing::info!(up = ?up, down = ?down, "peer session ended");
            }
        }
    }
    .instrument(span)
    .await;
}

/// Moves a session's bytes both ways until both directions end, keeping the open-sessions
/// gauge and the byte counters. Returns each direction's result (client to host first).
async fn splice_session(
    ctx: &Ctx,
    from_client: quinn::RecvStream,
    to_host: quinn::SendStream,
    from_host: quinn::RecvStream,
    to_client: quinn::SendStream,
) -> (Result<u64, splice::Error>, Result<u64, splice::Error>) {
    ctx.metrics.sessions_open.inc();
    let _open = on_drop(|| {
        ctx.metrics.sessions_open.dec();
    });
    let (up, down) = tokio::join!(
        splice::quic_to_quic(from_client, to_host),
        splice::quic_to_quic(from_host, to_client),
    );
    let count = |direction, result: &Result<u64, splice::Error>| {
        ctx.metrics
            .relay_bytes
            .get_or_create(&crate::metrics::Direction { direction })
            .inc_by(*result.as_ref().unwrap_or(&0));
    };
    count("client_to_host", &up);
    count("host_to_client", &down);
    (up, down)
}
