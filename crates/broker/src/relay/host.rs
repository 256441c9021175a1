//! Host agent connections: enrollment (one-time token -> long-term credential) and attachment,
//! on the control stream. Once attached, the broker opens one stream per session to the host.

use super::{frame_limits, propose_error_to_wire, refusal_to_wire, reject_input};
use crate::context::Ctx;
use crate::hosts::AttachedHost;
use ferry_admission::Attempt;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, host_request, host_response, ErrorCode, HostResponse};
use ferry_state::{hash_secret, NameKind, Outcome, SERVICES_PER_HOST_MAX};
use ferry_transport::{framed, CloseCode};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::timeout;

pub(super) async fn serve(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    remote: SocketAddr,
    unproven: super::Unproven,
) {
    let deadline = ctx.config.limits.handshake_timeout();
    // At most an enrollment and an attachment; anything more before attaching is abuse.
    for _ in 0..2 {
        let request: wire::HostRequest =
            match timeout(deadline, framed::read(&mut recv, frame_limits(&ctx))).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return reject_input(&ctx, &conn, &e),
                Err(_) => {
                    CloseCode::Protocol
                        .close(&conn, "host sent no request within the handshake timeout");
                    return;
                }
            };
        let result = match request.request {
            Some(host_request::Request::Enroll(e)) => {
                enroll(&ctx, &conn, e, remote).await.map(Some)
            }
            Some(host_request::Request::Attach(a)) => {
                let name = a.name.clone();
                match attach(&ctx, &conn, a, remote).await {
                    Ok(attached) => {
                        let response = HostResponse {
                            response: Some(host_response::Response::Attached(attached)),
                        };
                        if framed::write(&mut send, &response, frame_limits(&ctx))
                            .await
                            .is_ok()
                        {
                            unproven.proven();
                            // The control stream now carries hand-off notices to the agent.
                            let notices = ctx
                                .sessions
                                .notices
                                .register(conn.stable_id(), wire::Role::Host);
                            tokio::spawn(crate::handoff::forward(send, notices));
                            stay_attached(&ctx, &conn, &name, recv).await;
                            ctx.sessions.notices.unregister(conn.stable_id());
                        }
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            None => Err(wire::Error::new(
                ErrorCode::Malformed,
                "host request names no operation",
            )),
        };
        match result {
            Ok(Some(enrolled)) => {
                let response = HostResponse {
                    response: Some(host_response::Response::Enrolled(enrolled)),
                };
                if framed::write(&mut send, &response, frame_limits(&ctx))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let reason = e.message.clone();
                // Only a refusal of the host itself is final; "not now" lets it retry.
                let code = match e.code() {
                    ErrorCode::Unavailable | ErrorCode::ResourceExhausted => CloseCode::Overloaded,
                    _ => CloseCode::Unauthenticated,
                };
                let response = HostResponse {
                    response: Some(host_response::Response::Error(e)),
                };
                let _ = framed::write(&mut send, &response, frame_limits(&ctx)).await;
                let _ = send.finish();
                super::close_after_reply(&conn, code, &reason).await;
                return;
            }
        }
    }
    CloseCode::Protocol.close(&conn, "host did not attach");
}

/// The SHA-256 of the certificate the agent presented (and proved it holds the key of) in
/// this connection's handshake: the host's identity.
fn presented_key(conn: &quinn::Connection) -> Result<Vec<u8>, wire::Error> {
    ferry_transport::tls::presented_certificate_hash(conn).ok_or_else(|| {
        wire::Error::new(
            ErrorCode::Unauthenticated,
            "this agent presented no key of its own: hosts prove possession of a key; \
             upgrade the agent and re-enroll the host",
        )
    })
}

async fn enroll(
    ctx: &Ctx,
    conn: &quinn::Connection,
    enroll: wire::Enroll,
    remote: SocketAddr,
) -> Result<wire::Enrolled, wire::Error> {
    let label = |result| crate::metrics::Result_ { result };
    crate::admission::check_anonymous(ctx, remote.ip())?;
    // Checked here first: an invalid name, no key, or a wrong, used or expired token
    // proposes nothing (an anonymous peer must not add a Raft entry per guess); each is
    // counted in the failure ledger. The state machine checks again when it applies.
    let refused = |error: wire::Error| {
        ctx.metrics
            .enrollments
            .get_or_create(&label("refused"))
            .inc();
        let name = crate::admission::counted_name(NameKind::Host, &enroll.name);
        crate::admission::failed(ctx, remote.ip(), Attempt::Enroll, name);
        error
    };
    ferry_state::validate_name(NameKind::Host, &enroll.name)
        .map_err(|r| refused(refusal_to_wire(&r)))?;
    let key = presented_key(conn).map_err(refused)?;
    let complete = cmd::CompleteEnrollment {
        name: enroll.name.clone(),
        enrollment_token_hash: hash_secret(&enroll.token),
        credential_hash: key.clone(),
    };
    ctx.proposer.confirm_fresh().await.map_err(super::stale)?;
    let checked = ctx
        .replica
        .read()
        .enrollment_check(&complete, crate::now_ms());
    checked.map_err(|r| refused(refusal_to_wire(&r)))?;
    let complete = Kind::CompleteEnrollment(complete);
    match ctx
        .proposer
        .propose(
            format!("host:{}", enroll.name),
            remote.to_string(),
            complete,
        )
        .await
    {
        Ok(Outcome::Refused(r)) => {
            ctx.metrics
                .enrollments
                .get_or_create(&label("refused"))
                .inc();
            Err(refusal_to_wire(&r))
        }
        Ok(_) => {
            ctx.metrics.enrollments.get_or_create(&label("ok")).inc();
            tracing::info!(host = %enroll.name, %remote, "host enrolled");
            Ok(wire::Enrolled {
                credential: hex::encode(&key),
            })
        }
        Err(e) => Err(propose_error_to_wire(&e)),
    }
}

async fn attach(
    ctx: &Ctx,
    conn: &quinn::Connection,
    attach: wire::Attach,
    remote: SocketAddr,
) -> Result<wire::Attached, wire::Error> {
    if attach.services.is_empty() || attach.services.len() > SERVICES_PER_HOST_MAX {
        return Err(wire::Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "a host exposes between 1 and {SERVICES_PER_HOST_MAX} services, not {}",
                attach.services.len()
            ),
        ));
    }
    for service in &attach.services {
        ferry_state::validate_name(NameKind::Service, service)
            .map_err(|r| wire::Error::new(ErrorCode::InvalidArgument, r.message))?;
    }
    if crate::handoff::is_draining(ctx) {
        return Err(crate::handoff::draining_error(ctx));
    }
    let key = presented_key(conn)?;
    ctx.proposer.confirm_fresh().await.map_err(super::stale)?;
    ctx.replica
        .read()
        .check_host_credential(&attach.name, &key)
        .map_err(|r| refusal_to_wire(&r))?;
    if let Some(broker) = attached_elsewhere(ctx, &attach) {
        ctx.metrics.host_duplicate_attach.inc();
        ctx.metrics
            .host_duplicate_attach_last
            .set((crate::now_ms() / 1000) as i64);
        tracing::warn!(host = %attach.name, %remote, attached_to = %broker, "a second agent with the host's identity tried to attach; refused");
        return Err(wire::Error::new(
            ErrorCode::Unavailable,
            format!(
                "host {:?} is attached to broker {broker} by another agent with the same \
                 identity; a second one is refused while the first is attached (if the first \
                 died, this one gets in once its broker notices)",
                attach.name
            ),
        ));
    }
    // Registered here before the cluster learns of it: another broker that applies the
    // attachment may send a session at once, before this node's own proposal returns (it
    // waits to apply the entry itself, which can take a heartbeat), and the host must be found.
    let replaced = ctx.sessions.hosts.attach(
        &attach.name,
        AttachedHost {
            conn: conn.clone(),
            services: attach.services.clone(),
            credential_hash: key,
            instance: attach.instance,
        },
    );
    // A host's newer connection displaces its older one whatever the proposal's fate (the
    // agent reconnects if this one fails).
    if let Some(old) = replaced {
        CloseCode::Done.close(&old, "replaced by a newer connection of the same host");
    }
    let presence = Kind::AttachHost(cmd::AttachHost {
        name: attach.name.clone(),
        broker: ctx.config.node_id.clone(),
        services: attach.services.clone(),
        instance: attach.instance,
    });
    let recorded = ctx
        .proposer
        .propose(
            format!("host:{}", attach.name),
            remote.to_string(),
            presence,
        )
        .await;
    let refused = match recorded {
        Ok(Outcome::Refused(r)) => Some(refusal_to_wire(&r)),
        Ok(_) => None,
        Err(e) => Some(propose_error_to_wire(&e)),
    };
    if let Some(error) = refused {
        ctx.sessions.hosts.detach(&attach.name, conn.stable_id());
        return Err(error);
    }
    ctx.metrics
        .hosts_attached
        .set(ctx.sessions.hosts.len() as i64);
    tracing::info!(host = %attach.name, %remote, services = ?attach.services, "host attached");
    Ok(wire::Attached {
        node_id: ctx.config.node_id.clone(),
    })
}

/// How recently a peer broker must have reported its health for an attachment there to
/// count as live (reports come every half second).
const PEER_REPORT_FRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// The broker where another agent of this host (another instance) is attached and alive, if
/// any: a second agent with a copy of the identity is refused, never silently preferred.
/// A reconnection of the same agent (same instance: after its broker died, or moving on a
/// drain) is not a duplicate; neither is an attachment whose connection or broker is gone.
fn attached_elsewhere(ctx: &Ctx, attach: &wire::Attach) -> Option<String> {
    let state = ctx.replica.read();
    let host = state.host(&attach.name)?;
    if host.attached_broker.is_empty()
        || host.attached_instance == 0
        || host.attached_instance == attach.instance
    {
        return None;
    }
    let live = if host.attached_broker == ctx.config.node_id {
        ctx.sessions.hosts.get(&attach.name).is_some_and(|a| {
            a.instance == host.attached_instance && a.conn.close_reason().is_none()
        })
    } else {
        ctx.health
            .reports
            .get(&host.attached_broker)
            .is_some_and(|(_, age)| age < PEER_REPORT_FRESH)
    };
    live.then(|| host.attached_broker.clone())
}

/// Holds the host registered until its connection or control stream ends.
async fn stay_attached(
    ctx: &Arc<Ctx>,
    conn: &quinn::Connection,
    name: &str,
    control: quinn::RecvStream,
) {
    // The agent sends nothing more on the control stream today; reading it to the end notices a
    // clean close as soon as the connection's own close does. Bytes are discarded, bounded.
    tokio::select! {
        _ = conn.closed() => {}
        _ = super::drain_control(ctx.clone(), conn.clone(), control) => {}
    }
    ctx.sessions.hosts.detach(name, conn.stable_id());
    ctx.metrics
        .hosts_attached
        .set(ctx.sessions.hosts.len() as i64);
    tracing::info!(host = %name, "host detached");
    // Unless the same host already attached here again, tell the cluster it is gone from here.
    if ctx.sessions.hosts.get(name).is_none() {
        let detach = Kind::DetachHost(cmd::DetachHost {
            name: name.to_owned(),
            broker: ctx.config.node_id.clone(),
        });
        if let Err(e) = ctx
            .proposer
            .propose(format!("host:{name}"), String::new(), detach)
            .await
        {
            tracing::warn!(host = %name, error = %e, "could not record the host's detachment");
        }
    }
}
