//! The relay listener: QUIC connections from host agents and clients.
//!
//! Per connection: TLS handshake, then a control stream whose first frame is `Hello`. Clients
//! then open one stream per request (login, open session); hosts authenticate on the control
//! stream and receive one stream per session from the broker. Bad input closes the connection
//! with a reason; it never panics the node and never makes it buffer more than a frame.

mod account;
mod client;
mod host;
mod resume;
mod session;

pub(crate) use session::carry_for_peer;

use crate::context::Ctx;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, hello_reply, HelloReply, Role};
use ferry_proto::PROTOCOL_VERSION;
use ferry_transport::{framed, CloseCode};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::timeout;

/// What the relay holds across connections.
pub struct Sessions {
    /// Host agents attached here, by host name.
    pub hosts: crate::hosts::HostRegistry,
    /// Control streams of connected endpoints, for hand-off notices.
    pub notices: crate::handoff::NoticeBoard,
    /// Failed-login bookkeeping; a std mutex because it is never held across an await.
    pub throttle: std::sync::Mutex<crate::auth::LoginThrottle>,
    /// One permit per session relayed at once (`limits.sessions_max`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The sessions relayed now, each with its cut switch (`withdraw.rs`).
    pub carried: crate::withdraw::Carried,
    /// One permit per QUIC connection (`limits.connections_max`), kept across restarts of
    /// the relay listener.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per connection not yet authenticated (`limits.unauthenticated_max`).
    pub unauthenticated_slots: Arc<tokio::sync::Semaphore>,
}

impl Sessions {
    pub fn new(limits: &crate::config::Limits) -> Self {
        use tokio::sync::Semaphore;
        Self {
            hosts: Default::default(),
            notices: Default::default(),
            throttle: std::sync::Mutex::new(crate::auth::LoginThrottle::new(
                limits.login_failures_max,
                std::time::Duration::from_secs(limits.login_lockout_secs),
            )),
            slots: Arc::new(Semaphore::new(limits.sessions_max)),
            carried: Default::default(),
            connection_slots: Arc::new(Semaphore::new(limits.connections_max)),
            unauthenticated_slots: Arc::new(Semaphore::new(limits.unauthenticated_max)),
        }
    }
}

/// Retired node ids a `HelloAck` carries at most (names are at most 64 bytes: this keeps the
/// answer far below a frame).
const RETIRED_NODES_SENT_MAX: usize = 1024;

/// Longest close reason sent; QUIC carries it in one packet.
const CLOSE_REASON_BYTES_MAX: usize = 400;

/// Service "relay": accepts host agents' and clients' connections until shutdown. Stopped
/// (by a failure or the fault switch), the endpoint stays bound and new connections wait
/// unanswered; connections already accepted carry on.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let connection_slots = ctx.sessions.connection_slots.clone();
    let unauthenticated_slots = ctx.sessions.unauthenticated_slots.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return Err("the QUIC endpoint closed".into()),
            },
            _ = shutdown.changed() => break,
        };
        let Ok(connection) = connection_slots.clone().try_acquire_owned() else {
            ctx.metrics.refuse_connection("connections_max");
            incoming.refuse();
            continue;
        };
        let Ok(unauthenticated) = unauthenticated_slots.clone().try_acquire_owned() else {
            ctx.metrics.refuse_connection("unauthenticated_max");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _connection = connection;
            handle(incoming, ctx, unauthenticated).await;
        });
    }
    endpoint.close(CloseCode::ShuttingDown.varint(), b"broker shutting down");
    // Give peers a moment to learn of the close before the sockets go away.
    let _ = timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

/// Frame limits applied to every peer of this node.
pub(crate) fn frame_limits(ctx: &Ctx) -> FrameLimits {
    FrameLimits {
        max_frame_bytes: ctx.config.limits.frame_bytes_max,
    }
}

async fn handle(
    incoming: quinn::Incoming,
    ctx: Arc<Ctx>,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let deadline = ctx.config.limits.handshake_timeout();
    let conn = match timeout(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            ctx.metrics.refuse_connection("handshake");
            return;
        }
        Err(_) => {
            ctx.metrics.refuse_connection("handshake_timeout");
            return;
        }
    };
    ctx.metrics.connections_accepted.inc();
    ctx.metrics.connections_open.inc();
    let _open = on_drop(|| {
        ctx.metrics.connections_open.dec();
    });

    let (mut send, mut recv) = match timeout(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return,
        Err(_) => {
            CloseCode::Protocol.close(&conn, "no Hello within the handshake timeout");
            return;
        }
    };
    let hello: wire::Hello =
        match timeout(deadline, framed::read(&mut recv, frame_limits(&ctx))).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => return reject_input(&ctx, &conn, &e),
            Err(_) => {
                CloseCode::Protocol.close(&conn, "no Hello within the handshake timeout");
                return;
            }
        };
    if hello.protocol_version != PROTOCOL_VERSION {
        let message = format!(
            "unsupported protocol version {} (broker {} speaks {PROTOCOL_VERSION}); upgrade the older side",
            hello.protocol_version, ctx.config.node_id
        );
        ctx.metrics.protocol_error("version");
        let reply = HelloReply {
            reply: Some(hello_reply::Reply::Error(wire::Error::new(
                wire::ErrorCode::UnsupportedVersion,
                &message,
            ))),
        };
        let _ = framed::write(&mut send, &reply, frame_limits(&ctx)).await;
        let _ = send.finish();
        close_after_reply(&conn, CloseCode::UnsupportedVersion, &message).await;
        return;
    }
    let ack = HelloReply {
        reply: Some(hello_reply::Reply::Ack(wire::HelloAck {
            protocol_version: PROTOCOL_VERSION,
            node_id: ctx.config.node_id.clone(),
            brokers: crate::handoff::known_brokers(&ctx),
            retired_nodes: ctx
                .replica
                .read()
                .retired_node_ids()
                .take(RETIRED_NODES_SENT_MAX)
                .map(str::to_owned)
                .collect(),
        })),
    };
    if framed::write(&mut send, &ack, frame_limits(&ctx))
        .await
        .is_err()
    {
        return;
    }
    match hello.role() {
        Role::Client => {
            // A client authenticates per request (password or token), and each request is
            // bounded by the per-connection stream limit, so the connection no longer counts
            // as unauthenticated once it has spoken the protocol.
            drop(unauthenticated);
            // The control stream stays open for hand-off notices.
            let notices = ctx
                .sessions
                .notices
                .register(conn.stable_id(), Role::Client);
            tokio::spawn(crate::handoff::forward(send, notices));
            client::serve(conn.clone(), ctx.clone(), remote).await;
            ctx.sessions.notices.unregister(conn.stable_id());
        }
        Role::Host => host::serve(conn, send, recv, ctx.clone(), remote, unauthenticated).await,
        Role::Unspecified => {
            ctx.metrics.protocol_error("role");
            CloseCode::Protocol.close(&conn, "Hello names no role (client or host)");
        }
    }
}

/// Closes `conn` because it sent bytes that are not a valid frame.
pub(crate) fn reject_input(ctx: &Ctx, conn: &quinn::Connection, error: &framed::Error) {
    use ferry_proto::frame::Error as F;
    let label = match error {
        framed::Error::Codec(F::TooLarge { .. }) => "oversized_frame",
        framed::Error::Codec(F::Malformed { .. }) => "malformed_frame",
        framed::Error::Truncated => "truncated_frame",
        // The stream or connection failed under us: nothing to tell the peer.
        framed::Error::Io(_) => return,
    };
    ctx.metrics.protocol_error(label);
    let mut reason = format!("protocol error: {error}");
    reason.truncate(CLOSE_REASON_BYTES_MAX);
    tracing::info!(remote = %conn.remote_address(), %reason, "closing connection");
    CloseCode::Protocol.close(conn, &reason);
}

/// Closes `conn` after giving the peer a moment to read the reply just sent and hang up itself:
/// a close sent at once can overtake the reply, and the peer would see only the close.
pub(crate) async fn close_after_reply(conn: &quinn::Connection, code: CloseCode, reason: &str) {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(1);
    let _ = timeout(GRACE, conn.closed()).await;
    code.close(conn, reason);
}

/// Runs `f` when dropped (keeps gauges right on every exit path).
pub(crate) fn on_drop<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The wire form of a state-machine refusal.
pub(crate) fn refusal_to_wire(refusal: &ferry_state::Refusal) -> wire::Error {
    use ferry_state::RefusalKind as K;
    use wire::ErrorCode as C;
    let code = match refusal.kind {
        K::Invalid | K::AlreadyExists => C::InvalidArgument,
        K::NotFound => C::NotFound,
        K::PermissionDenied => C::PermissionDenied,
        K::AlreadyUsed => C::AlreadyUsed,
        K::Expired => C::Expired,
    };
    wire::Error::new(code, &refusal.message)
}

/// The wire form of a failed proposal.
pub(crate) fn propose_error_to_wire(error: &ferry_replica::ProposeError) -> wire::Error {
    wire::Error::new(
        wire::ErrorCode::Unavailable,
        format!("broker cannot record this now: {error}"),
    )
}

/// A request refused because this node could not confirm its state with a leader.
pub(crate) fn stale(error: ferry_replica::ProposeError) -> wire::Error {
    wire::Error::new(
        wire::ErrorCode::Unavailable,
        format!(
            "this broker cannot reach the cluster's leader to confirm your access ({error}); \
             try another broker"
        ),
    )
}
