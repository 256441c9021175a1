//! Opening a session: admit it (drain, fresh state, token, grant, route, slot), record it
//! through Raft, reach the host agent (here or through its broker) and relay until both
//! directions end; and carrying sessions other brokers authorized, to hosts attached here.

use super::client::{answer_refused, error, respond, Refused};
use super::{frame_limits, on_drop, refusal_to_wire, stale};
use crate::admission::Held;
use crate::auth;
use crate::context::Ctx;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, client_response, ErrorCode};
use ferry_state::{hash_secret, Outcome, TokenCheck};
use ferry_transport::{framed, splice};
use std::net::SocketAddr;
use tokio::time::timeout;
use tracing::Instrument;

/// Authorizes, records and relays one session.
pub(super) async fn open_session(
    ctx: &Ctx,
    open: wire::OpenSession,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: SocketAddr,
    unproven: &super::Unproven,
) {
    let admitted = match admit(ctx, &open, remote).await {
        Ok(admitted) => admitted,
        Err(refused) => return answer_refused(ctx, &mut send, refused).await,
    };
    unproven.proven();
    let Admitted {
        user,
        route,
        session_id,
        resume_secret,
        slot,
    } = admitted;
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

/// A session's places on this node: among the `limits.sessions_max` sessions it relays at
/// once, among its user's `limits.sessions_per_user_max` and its host's
/// `limits.sessions_per_host_max`; held while the session is relayed (opened or resumed), so
/// that one token cannot take every slot of a node.
pub(super) struct Slot {
    _node: tokio::sync::OwnedSemaphorePermit,
    _user: Held<String>,
    _host: Held<String>,
}

pub(super) fn session_slot(ctx: &Ctx, user: &str, host: &str) -> Result<Slot, Refused> {
    let node_id = &ctx.config.node_id;
    let full = |reason: &'static str, message: String| {
        crate::admission::refused(ctx, reason, &message);
        Refused::new(reason, error(ErrorCode::ResourceExhausted, message))
    };
    let limits = &ctx.config.limits;
    let user_held = ctx
        .admission
        .user_sessions
        .hold(user.to_owned())
        .ok_or_else(|| {
            full(
                "sessions_per_user",
                format!(
                    "user {user:?} has {} sessions through broker {node_id}, its limit \
                 (limits.sessions_per_user_max); close one first",
                    limits.sessions_per_user_max
                ),
            )
        })?;
    let host_held = ctx
        .admission
        .host_sessions
        .hold(host.to_owned())
        .ok_or_else(|| {
            full(
                "sessions_per_host",
                format!(
                    "host {host:?} has {} sessions through broker {node_id}, its limit \
                 (limits.sessions_per_host_max); try again later",
                    limits.sessions_per_host_max
                ),
            )
        })?;
    let node = ctx.sessions.slots.clone().try_acquire_owned().map_err(|_| {
        let e = error(
            ErrorCode::ResourceExhausted,
            format!(
                "broker {node_id} is at its limit of {} sessions; try again later or another broker",
                limits.sessions_max
            ),
        );
        Refused::new("sessions_max", e)
    })?;
    Ok(Slot {
        _node: node,
        _user: user_held,
        _host: host_held,
    })
}

/// A session admitted and recorded, about to reach its host.
struct Admitted {
    user: String,
    route: Route,
    session_id: u64,
    resume_secret: String,
    /// Its places on this node, held while it is relayed.
    slot: Slot,
}

/// Everything that may refuse a new session, in order, and its record in the state.
async fn admit(
    ctx: &Ctx,
    open: &wire::OpenSession,
    remote: SocketAddr,
) -> Result<Admitted, Refused> {
    if crate::handoff::is_draining(ctx) {
        return Err(Refused::new(
            "draining",
            crate::handoff::draining_error(ctx),
        ));
    }
    ctx.proposer
        .confirm_fresh()
        .await
        .map_err(|e| Refused::new("state_unconfirmed", stale(e)))?;
    let (user, route) = authorize(ctx, open).map_err(|(label, e)| Refused::new(label, e))?;
    let token_hash = hash_secret(&open.token);
    let slot = session_slot(ctx, &user, &open.host)?;
    let resume_secret = auth::new_secret();
    let opened = ctx
        .proposer
        .propose(
            format!("user:{user}"),
            remote.to_string(),
            Kind::OpenSession(cmd::OpenSession {
                user: user.clone(),
                host: open.host.clone(),
                service: open.service.clone(),
                broker: ctx.config.node_id.clone(),
                resume_secret_hash: hash_secret(&resume_secret),
                token_hash,
            }),
        )
        .await;
    match opened {
        Ok(Outcome::SessionOpened { session_id }) => Ok(Admitted {
            user,
            route,
            session_id,
            resume_secret,
            slot,
        }),
        Ok(Outcome::Refused(r)) => Err(Refused::new("refused", refusal_to_wire(&r))),
        Ok(Outcome::Applied) | Err(_) => Err(Refused::new(
            "unavailable",
            error(
                ErrorCode::Unavailable,
                "the session could not be recorded; try again",
            ),
        )),
    }
}

/// Where the host agent is now: attached here, or to the peer broker its presence names.
pub(super) fn route_to_host(ctx: &Ctx, host: &str) -> Option<Route> {
    if ctx.sessions.hosts.get(host).is_some() {
        return Some(Route::Local);
    }
    let broker = ctx.replica.read().host(host)?.attached_broker.clone();
    (!broker.is_empty() && broker != ctx.config.node_id && ctx.peers.is_some())
        .then_some(Route::Peer(broker))
}

/// Sends `start` to the host agent by `route`; on success the streams carry the session.
pub(super) async fn start_session(
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
pub(super) enum Route {
    /// Its agent is attached here.
    Local,
    /// Its agent is attached to this peer broker (by node id), which carries the session.
    Peer(String),
}

impl Route {
    pub(super) fn describe(&self) -> String {
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
            .may_open(&user, &open.host, &open.service)
            .map_err(|r| ("not_granted", refusal_to_wire(&r)))?;
        // Presence is replicated: when the agent is attached to another broker, that broker
        // carries the session (it also checks the service, which only it knows).
        let elsewhere = state
            .host(&open.host)
            .map(|h| h.attached_broker.clone())
            .filter(|b| !b.is_empty() && *b != ctx.config.node_id && ctx.peers.is_some());
        if ctx.sessions.hosts.get(&open.host).is_none() {
            if let Some(broker) = elsewhere {
                return Ok((user, Route::Peer(broker)));
            }
        }
        user
    };
    let Some(host) = ctx.sessions.hosts.get(&open.host) else {
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
                .proposer
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
pub(super) async fn carry(
    ctx: &Ctx,
    (session_id, resumes): (u64, u32),
    (client_send, client_recv): (quinn::SendStream, quinn::RecvStream),
    (host_send, host_recv): (quinn::SendStream, quinn::RecvStream),
) {
    let registration = ctx.sessions.carried.register_known(session_id);
    let (a, b) = splice_session(
        ctx,
        client_recv,
        host_send,
        host_recv,
        client_send,
        registration.cut.clone(),
    )
    .await;
    drop(registration);
    let up = *a.as_ref().unwrap_or(&0);
    let down = *b.as_ref().unwrap_or(&0);
    let actor = format!("node:{}", ctx.config.node_id);
    if matches!(a, Err(splice::Error::Ended)) || matches!(b, Err(splice::Error::Ended)) {
        // Withdrawn: the leader's sweep closes it with the reason; a detach would say less.
        tracing::info!(
            bytes_client_to_host = up,
            bytes_host_to_client = down,
            "session cut: its access was withdrawn"
        );
        return;
    }
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
    if let Err(e) = ctx.proposer.propose(actor, String::new(), command).await {
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
    let host = ctx.sessions.hosts.get(host_name).ok_or_else(|| {
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
    let session_id = start.session_id;
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
                let registration = ctx.sessions.carried.register_unseen(session_id);
                let (up, down) = splice_session(
                    &ctx,
                    recv,
                    host_send,
                    host_recv,
                    send,
                    registration.cut.clone(),
                )
                .await;
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
    cut: tokio::sync::watch::Receiver<bool>,
) -> (Result<u64, splice::Error>, Result<u64, splice::Error>) {
    ctx.metrics.sessions_open.inc();
    let _open = on_drop(|| {
        ctx.metrics.sessions_open.dec();
    });
    let (up, down) = tokio::join!(
        splice::quic_to_quic(from_client, to_host, cut.clone()),
        splice::quic_to_quic(from_host, to_client, cut),
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
