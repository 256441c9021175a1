//! The admin API's listener: HTTPS under the cluster CA (plain HTTP beside it only on a
//! loopback address, and only when `admin_api.plain_http` says so), with the bounds that keep
//! one slow or idle client from holding the API or starving the node.
//!
//! - **Connections are capped** (`admin_api.connections_max`). At the cap, a new connection
//!   displaces the oldest connection that has no request in progress (idle, or still sending
//!   its headers), the way a proxy sheds idle keep-alives: operators get in however many
//!   idle sockets a stranger opened. Only when every connection is busy is the new one closed.
//! - **Every wait has a deadline**: the TLS handshake and each request's headers
//!   (`header_timeout_ms`), its body (`body_timeout_ms`, read whole before the handler runs;
//!   admin requests are small JSON), and the gap between requests (`idle_timeout_secs`).
//! - **The protocol is told by the first byte**: a TLS handshake begins with 0x16; anything
//!   else is plain HTTP, answered only when allowed, else the connection is closed unanswered.

use crate::config::AdminApi;
use crate::context::Ctx;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// Largest request body accepted: admin requests are small JSON documents.
const BODY_BYTES_MAX: usize = 64 * 1024;
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts admin API connections on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let identity = ferry_transport::tls::Identity::load(&ctx.config.cert, &ctx.config.key)
        .map_err(|e| format!("the admin API cannot load this node's certificate: {e}"))?;
    let tls = ferry_transport::tls::https_server(identity)
        .map_err(|e| format!("the admin API's TLS configuration: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let limits = ctx.config.admin_api.clone();
    let connections = Arc::new(Connections::default());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // back off a moment rather than spin.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(state) = connections.admit(limits.connections_max, &ctx) else {
            ctx.metrics.admin_connections_refused.inc();
            drop(stream);
            continue;
        };
        ctx.metrics
            .admin_connections_open
            .set(connections.len() as i64);
        let task = Connection {
            ctx: ctx.clone(),
            app: app.clone(),
            acceptor: acceptor.clone(),
            limits: limits.clone(),
            remote,
            state,
            connections: connections.clone(),
        };
        tokio::spawn(task.run(stream, shutdown.clone()));
    }
}

/// The connections held, for the cap and for displacing idle ones.
#[derive(Default)]
struct Connections {
    held: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
}

/// One connection's standing, shared between its task and the registry.
struct ConnState {
    id: u64,
    /// Requests in progress on it (HTTP/1.1: zero or one).
    busy: AtomicU64,
    /// When it last became idle (accepted, or a response finished), in ms since `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// Told to close (displaced by a newer connection).
    close: Notify,
}

impl ConnState {
    fn mark_idle(&self) {
        self.idle_since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
}

impl Connections {
    /// A place for a new connection: at the cap, the oldest idle connection is displaced;
    /// `None` when every held connection is busy.
    fn admit(&self, max: usize, ctx: &Ctx) -> Option<Arc<ConnState>> {
        let mut held = self.lock();
        if held.len() >= max {
            let oldest_idle = held
                .values()
                .filter(|c| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire))
                .map(|c| c.id)?;
            if let Some(displaced) = held.remove(&oldest_idle) {
                displaced.close.notify_one();
                ctx.metrics.admin_connections_displaced.inc();
            }
        }
        let state = Arc::new(ConnState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            close: Notify::new(),
        });
        held.insert(state.id, state.clone());
        Some(state)
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.held
            .lock()
            .expect("never poisoned: no code panics while holding the admin connections lock")
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    ctx: Arc<Ctx>,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: AdminApi,
    remote: SocketAddr,
    state: Arc<ConnState>,
    connections: Arc<Connections>,
}

impl Connection {
    async fn run(self, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
        let state = self.state.clone();
        let connections = self.connections.clone();
        let ctx = self.ctx.clone();
        tokio::select! {
            () = self.serve(stream) => {}
            () = state.close.notified() => {}
            () = watchdog(&state, &ctx.config.admin_api) => {}
            _ = shutdown.changed() => {}
        }
        connections.release(state.id);
        ctx.metrics
            .admin_connections_open
            .set(connections.len() as i64);
    }

    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let header_timeout = self.limits.header_timeout();
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)).await;
        if !matches!(peeked, Ok(Ok(1))) {
            return; // silent, closed, or too slow to say anything
        }
        if first[0] == TLS_HANDSHAKE {
            match tokio::time::timeout(header_timeout, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => self.http(tls).await,
                Ok(Err(e)) => {
                    tracing::debug!(remote = %self.remote, error = %e, "admin API TLS handshake failed")
                }
                Err(_) => {
                    tracing::debug!(remote = %self.remote, "admin API TLS handshake timed out")
                }
            }
        } else if self.limits.plain_http {
            self.http(stream).await;
        } else {
            // Plain HTTP where only HTTPS is served: no answer at all.
            tracing::debug!(remote = %self.remote, "plain HTTP on the HTTPS-only admin API; closed");
        }
    }

    async fn http<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let header_timeout = self.limits.header_timeout();
        let Connection {
            app,
            limits,
            remote,
            state,
            ..
        } = self;
        let service = hyper::service::service_fn(move |request| {
            handle(request, app.clone(), remote, state.clone(), limits.clone())
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Some(header_timeout))
            .keep_alive(true);
        if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
            tracing::debug!(%remote, error = %e, "admin API connection ended with an error");
        }
    }
}

/// Ends the connection once it has been idle (no request in progress) for longer than the
/// idle timeout.
async fn watchdog(state: &ConnState, limits: &AdminApi) {
    let idle_timeout_ms = limits.idle_timeout().as_millis() as u64;
    loop {
        let now_ms = state.epoch.elapsed().as_millis() as u64;
        let busy = state.busy.load(Ordering::Acquire) > 0;
        let idle_for_ms = now_ms.saturating_sub(state.idle_since_ms.load(Ordering::Acquire));
        if !busy && idle_for_ms >= idle_timeout_ms {
            return;
        }
        let wait_ms = if busy {
            idle_timeout_ms
        } else {
            idle_timeout_ms - idle_for_ms
        };
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms.max(10))).await;
    }
}

/// One request: marked busy (not to be displaced) while it runs, its body read whole within
/// the body timeout, then handed to the router with the client's address.
async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    app: Router,
    remote: SocketAddr,
    state: Arc<ConnState>,
    limits: AdminApi,
) -> Result<axum::response::Response, Infallible> {
    use axum::response::IntoResponse;
    state.busy.fetch_add(1, Ordering::AcqRel);
    let _idle = crate::relay::on_drop(|| {
        state.mark_idle();
        state.busy.fetch_sub(1, Ordering::AcqRel);
    });
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        limits.body_timeout(),
        Limited::new(body, BODY_BYTES_MAX).collect(),
    )
    .await;
    let bytes = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            let message =
                format!("the request body could not be read (at most {BODY_BYTES_MAX} bytes): {e}");
            return Ok(
                super::ApiError::new(axum::http::StatusCode::BAD_REQUEST, message).into_response(),
            );
        }
        Err(_) => {
            let message = format!(
                "the request body did not arrive within {} ms",
                limits.body_timeout_ms
            );
            return Ok(
                super::ApiError::new(axum::http::StatusCode::REQUEST_TIMEOUT, message)
                    .into_response(),
            );
        }
    };
    let mut request = axum::http::Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(ConnectInfo(remote));
    Ok(app.oneshot(request).await.unwrap_or_else(|e| match e {}))
}
