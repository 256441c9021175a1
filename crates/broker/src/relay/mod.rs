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

use crate::admission::Held;
use crate::context::Ctx;
use ferry_admission::SourceKey;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, hello_reply, HelloReply, Role};
use ferry_proto::PROTOCOL_VERSION;
use ferry_transport::{framed, CloseCode};
use std::sync::Arc;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::timeout;

/// What the relay holds across connections.
pub struct Sessions {
    /// Host agents attached here, by host name.
    pub hosts: crate::hosts::HostRegistry,
    /// Control streams of connected endpoints, for hand-off notices.
    pub notices: crate::handoff::NoticeBoard,
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

/// Service "relay": accepts host agents' and clients' connections until shutdown. Stopped
/// (by a failure or the fault switch), the endpoint stays bound and new connections wait
/// unanswered; connections already accepted carry on.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return Err("the QUIC endpoint closed".into()),
            },
            _ = shutdown.changed() => break,
        };
        let Some(places) = admit(&ctx, incoming) else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(handle(places, ctx));
    }
    endpoint.close(CloseCode::ShuttingDown.varint(), b"broker shutting down");
    // Give peers a moment to learn of the close before the sockets go away.
    let _ = timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

/// A connection admitted to its handshake, with the places it holds.
struct Admitted {
    incoming: quinn::Incoming,
    /// Its place among `limits.connections_max`, held while it is open.
    node: OwnedSemaphorePermit,
    /// Its place among its source's `limits.connections_per_source_max`.
    source: Held<SourceKey>,
    /// Its places among the unauthenticated, until it authenticates.
    unproven: Places,
}

/// Decides whether a new connection may start its handshake, in order: the node's connection
/// limit; address validation (a QUIC Retry) once half the unauthenticated pool is taken, so
/// that spoofed sources cannot fill the rest; its source's limits; the unauthenticated pool.
/// A refusal is counted by reason.
fn admit(ctx: &Ctx, incoming: quinn::Incoming) -> Option<Admitted> {
    let remote = incoming.remote_address();
    let refuse = |incoming: quinn::Incoming, reason: &'static str| {
        crate::admission::refused(ctx, reason, remote);
        ctx.metrics.refuse_connection(reason);
        incoming.refuse();
        None
    };
    let Ok(node) = ctx.sessions.connection_slots.clone().try_acquire_owned() else {
        return refuse(incoming, "connections_max");
    };
    let pool = &ctx.sessions.unauthenticated_slots;
    if pool.available_permits() <= ctx.config.limits.unauthenticated_max / 2
        && !incoming.remote_address_validated()
        && incoming.may_retry()
    {
        ctx.metrics.refuse_connection("address_validation_retry");
        // Stateless: a spoofed source never answers, and holds nothing here.
        let _ = incoming.retry();
        return None;
    }
    let key = SourceKey::of(remote.ip());
    let Some(source) = ctx.admission.connections.hold(key) else {
        return refuse(incoming, "connections_per_source");
    };
    let Some(pending) = ctx.admission.unauthenticated.hold(key) else {
        return refuse(incoming, "unauthenticated_per_source");
    };
    let Ok(permit) = pool.clone().try_acquire_owned() else {
        return refuse(incoming, "unauthenticated_max");
    };
    Some(Admitted {
        incoming,
        node,
        source,
        unproven: Places {
            _pool: permit,
            _source: pending,
        },
    })
}

/// What a connection holds while it has not authenticated: a place in the node's
/// unauthenticated pool and one among its source's.
pub(crate) struct Places {
    _pool: OwnedSemaphorePermit,
    _source: Held<SourceKey>,
}

/// A connection until it proves who it is (a host attaching, a client presenting a valid
/// password, token or resume secret): then [`Unproven::proven`] frees its unauthenticated
/// places and opens its flow-control window to the endpoint's full size. A connection that
/// has not proved itself within `limits.authenticate_timeout_ms` is closed.
#[derive(Clone)]
pub(crate) struct Unproven {
    places: Arc<std::sync::Mutex<Option<Places>>>,
    conn: quinn::Connection,
}

impl Unproven {
    fn new(places: Places, conn: quinn::Connection) -> Self {
        Self {
            places: Arc::new(std::sync::Mutex::new(Some(places))),
            conn,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Places>> {
        self.places
            .lock()
            .expect("never poisoned: nothing panics holding it")
    }

    /// The connection authenticated (idempotent).
    pub fn proven(&self) {
        if self.lock().take().is_some() {
            let window = ferry_transport::endpoint::Limits::default().connection_window_bytes;
            self.conn
                .set_receive_window(quinn::VarInt::from_u32(window));
        }
    }

    fn is_proven(&self) -> bool {
        self.lock().is_none()
    }

    /// Closes the connection unless it has proved itself within `limit`.
    async fn deadline(self, ctx: Arc<Ctx>, limit: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(limit) => {}
            _ = self.conn.closed() => return,
        }
        if !self.is_proven() {
            crate::admission::refused(&ctx, "authenticate_timeout", self.conn.remote_address());
            let reason = format!(
                "did not authenticate within {} ms (limits.authenticate_timeout_ms)",
                limit.as_millis()
            );
            // An orderly close: a client that simply had nothing to ask dials again when it has.
            CloseCode::Done.close(&self.conn, &reason);
        }
    }
}

/// Frame limits applied to every peer of this node.
pub(crate) fn frame_limits(ctx: &Ctx) -> FrameLimits {
    FrameLimits {
        max_frame_bytes: ctx.config.limits.frame_bytes_max,
    }
}

async fn handle(admitted: Admitted, ctx: Arc<Ctx>) {
    let Admitted {
        incoming,
        node: _node,
        source: _source,
        unproven,
    } = admitted;
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
    let unproven = Unproven::new(unproven, conn.clone());
    tokio::spawn(
        unproven
            .clone()
            .deadline(ctx.clone(), ctx.config.limits.authenticate_timeout()),
    );

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
            // The control stream carries the broker's notices to the client; the client has
            // nothing more to say on it, and what it sends anyway is read and bounded.
            let notices = ctx
                .sessions
                .notices
                .register(conn.stable_id(), Role::Client);
            tokio::spawn(crate::handoff::forward(send, notices));
            tokio::spawn(drain_control(ctx.clone(), conn.clone(), recv));
            client::serve(conn.clone(), ctx.clone(), remote, unproven).await;
            ctx.sessions.notices.unregister(conn.stable_id());
        }
        Role::Host => host::serve(conn, send, recv, ctx.clone(), remote, unproven).await,
        Role::Unspecified => {
            ctx.metrics.protocol_error("role");
            CloseCode::Protocol.close(&conn, "Hello names no role (client or host)");
        }
    }
}

/// Reads what an endpoint sends on its control stream after `Hello` (nothing, from a client
/// or host of this version) and discards it, up to `limits.control_stream_bytes_max` in all;
/// beyond that the connection is closed. Returns when the stream or connection ends.
pub(crate) async fn drain_control(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let limit = ctx.config.limits.control_stream_bytes_max;
    let mut read = 0u64;
    let mut scratch = [0u8; 1024];
    while let Ok(Some(n)) = recv.read(&mut scratch).await {
        read += n as u64;
        if read > limit {
            ctx.metrics.protocol_error("control_stream_bytes");
            CloseCode::Protocol.close(
                &conn,
                &format!(
                    "sent more than {limit} bytes on the control stream after Hello, \
                     which carries nothing from this side"
                ),
            );
            return;
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
        framed::Error::Io(_) | framed::Error::Ended => return,
    };
    ctx.metrics.protocol_error(label);
    let reason = format!("protocol error: {error}");
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
