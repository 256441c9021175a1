//! The client side: log in and the account requests (`account.rs`), open sessions, and carry
//! them over a local TCP port or stdio.

mod account;

pub use account::{change_password, list_hosts, login, logout, who_am_i};

use crate::dial::{closed_now, Dialer};
use crate::pool::{Notice, Opened, Pool};
use crate::resumable::{self, Ending, Link, Phase};
use crate::{ClientConfig, Error};
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, client_request, client_response, ClientRequest, ErrorCode, Role};
use ferry_transport::framed;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

/// Sends one request on `opened`'s stream and reads its response. The stream stays open so
/// that a session's bytes can follow the response.
pub(super) async fn request(
    opened: Opened,
    request: client_request::Request,
) -> Result<
    (
        quinn::SendStream,
        quinn::RecvStream,
        client_response::Response,
    ),
    Error,
> {
    let Opened {
        mut send,
        mut recv,
        conn,
    } = opened;
    let request = ClientRequest {
        request: Some(request),
    };
    framed::write(&mut send, &request, FrameLimits::default())
        .await
        .map_err(|_| closed_now(&conn))?;
    let response: wire::ClientResponse = framed::read(&mut recv, FrameLimits::default())
        .await
        .map_err(|_| closed_now(&conn))?;
    match response.response {
        Some(client_response::Response::Error(e)) => Err(Error::refused(e)),
        Some(r) => Ok((send, recv, r)),
        None => Err(Error::Protocol("broker sent an empty response".into())),
    }
}

/// A session the broker opened: its id, its resume secret, and the stream carrying its frames.
pub struct OpenedSession {
    pub id: u64,
    resume_secret: String,
    resume_window: Duration,
    link: Link,
}

/// Why a resume attempt failed.
enum ResumeFailure {
    /// The cluster refused it for good (wrong secret, session expired): the session is lost.
    Final(String),
    /// No broker could take it now; try again within the window.
    Retry(String),
}

/// Opens sessions over a pool of connections to the brokers, and keeps every session alive
/// across broker failures and drains by resuming it on another broker.
pub struct SessionOpener {
    pool: Pool,
    token: String,
    stream_config: ferry_session::Config,
    /// Live sessions, for moving them when their broker drains.
    sessions: std::sync::Mutex<HashMap<u64, resumable::Session>>,
}

/// Limits of one [`SessionOpener`].
#[derive(Debug, Clone, Copy)]
pub struct OpenerLimits {
    /// Most QUIC connections to the brokers at once. Each carries as many sessions as a broker
    /// grants streams per connection (256 by default, one of them the control stream).
    pub connections_max: usize,
}

impl Default for OpenerLimits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// Default of [`OpenerLimits::connections_max`]: with brokers' default 255 sessions per
/// connection, room for about 8,000 streams: the default `--max-sessions` (4,000) binds first,
/// with room left for streams that are closing and for resumes.
pub const CONNECTIONS_MAX_DEFAULT: usize = 32;

impl SessionOpener {
    pub fn new(
        config: &ClientConfig,
        token: String,
        limits: OpenerLimits,
    ) -> Result<Arc<Self>, Error> {
        let (pool, notices) = Pool::new(Dialer::new(config, Role::Client)?, limits.connections_max);
        let opener = Arc::new(Self {
            pool,
            token,
            stream_config: config.session_stream_config(),
            sessions: Default::default(),
        });
        tokio::spawn(Self::move_on_notices(Arc::downgrade(&opener), notices));
        Ok(opener)
    }

    /// Connects now if not connected, so that configuration and trust errors surface at once.
    pub async fn ensure_connected(self: &Arc<Self>) -> Result<(), Error> {
        self.pool.ensure_connected().await
    }

    /// Closes the connections and waits (briefly) until the brokers have been told, so they
    /// end this client's sessions at once instead of after the idle timeout.
    pub async fn close(&self) {
        self.pool.close_all("client done").await;
        let _ = tokio::time::timeout(CLOSE_GRACE, self.pool.dialer().endpoint().wait_idle()).await;
    }

    /// Opens a session to `service` on `host`; [`SessionOpener::carry`] then moves its bytes.
    pub async fn open(self: &Arc<Self>, host: &str, service: &str) -> Result<OpenedSession, Error> {
        let opened = self.pool.open().await?;
        let conn_id = opened.conn.stable_id();
        let open = client_request::Request::OpenSession(wire::OpenSession {
            token: self.token.clone(),
            host: host.to_owned(),
            service: service.to_owned(),
        });
        let (send, recv, response) = request(opened, open).await?;
        match response {
            client_response::Response::SessionOpened(s) => Ok(OpenedSession {
                id: s.session_id,
                resume_secret: s.resume_secret,
                resume_window: Duration::from_millis(s.resume_window_ms),
                link: Link {
                    send,
                    recv,
                    peer_received: 0,
                    conn_id,
                },
            }),
            _ => Err(Error::Protocol(
                "broker answered OpenSession with something else".into(),
            )),
        }
    }

    /// Carries an opened session between `local_read`/`local_write` and the cluster until it
    /// ends, resuming it through another broker whenever its path breaks or its broker drains.
    pub fn carry<R, W>(
        self: &Arc<Self>,
        opened: OpenedSession,
        local_read: R,
        local_write: W,
    ) -> resumable::Session
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let session = resumable::Session::start(
            opened.id,
            self.stream_config,
            local_read,
            local_write,
            opened.link,
        );
        self.sessions
            .lock()
            .expect("never poisoned: no panics under the lock")
            .insert(opened.id, session.clone());
        tokio::spawn(self.clone().supervise(
            session.clone(),
            opened.resume_secret,
            opened.resume_window,
        ));
        session
    }

    /// Whether a live session uses connection `conn_id`.
    fn in_use(&self, conn_id: usize) -> bool {
        self.sessions
            .lock()
            .expect("never poisoned: no panics under the lock")
            .values()
            .any(|s| s.conn_id() == Some(conn_id))
    }

    /// Resumes `session` whenever it has no link, until the resume window runs out.
    async fn supervise(
        self: Arc<Self>,
        session: resumable::Session,
        secret: String,
        window: Duration,
    ) {
        let mut phase = session.phase();
        loop {
            let current = *phase.borrow_and_update();
            match current {
                Phase::Ended => break,
                Phase::Linked(_) => {
                    if phase.changed().await.is_err() {
                        break;
                    }
                }
                Phase::Unlinked(since) => self.relink(&session, &secret, since + window).await,
            }
        }
        self.sessions
            .lock()
            .expect("never poisoned: no panics under the lock")
            .remove(&session.id());
        self.pool.close_idle(|id| self.in_use(id)).await;
    }

    async fn relink(
        self: &Arc<Self>,
        session: &resumable::Session,
        secret: &str,
        deadline: Instant,
    ) {
        let mut backoff = RESUME_BACKOFF_FIRST;
        loop {
            if Instant::now() >= deadline {
                session.end(Ending::Lost(
                    "no broker could resume the session within its resume window".into(),
                ));
                return;
            }
            let detached = session.detach();
            let started = Instant::now();
            // Bounded by the window too: a resume that started in time must not end after it.
            let attempt = tokio::time::timeout_at(
                deadline.into(),
                self.resume_link(session.id(), secret, detached),
            );
            let attempt = attempt.await.unwrap_or_else(|_| {
                Err(ResumeFailure::Retry(
                    "the resume window ran out during the attempt".into(),
                ))
            });
            match attempt {
                Ok(link) => {
                    if session.attach(detached, link).is_ok() {
                        tracing::info!(
                            session_id = session.id(),
                            resume_ms = started.elapsed().as_millis() as u64,
                            "session resumed"
                        );
                    }
                    return;
                }
                Err(ResumeFailure::Final(why)) => {
                    eprintln!("ferry: session {} lost: {why}", session.id());
                    session.end(Ending::Lost(why));
                    return;
                }
                Err(ResumeFailure::Retry(why)) => {
                    tracing::info!(session_id = session.id(), %why, "resume failed; retrying");
                    let delay = backoff
                        .mul_f64(rand::thread_rng().gen_range(0.5..1.0))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(delay).await;
                    backoff = (backoff * 2).min(RESUME_BACKOFF_MAX);
                }
            }
        }
    }

    /// Asks a broker to continue session `id` on a new stream, from the offsets in `detached`.
    async fn resume_link(
        self: &Arc<Self>,
        id: u64,
        secret: &str,
        detached: resumable::Detached,
    ) -> Result<Link, ResumeFailure> {
        let resume = client_request::Request::ResumeSession(wire::ResumeSession {
            session_id: id,
            resume_secret: secret.to_owned(),
            received: detached.received,
            written: detached.written,
        });
        let attempt = async {
            let opened = self.pool.open().await?;
            let conn_id = opened.conn.stable_id();
            request(opened, resume)
                .await
                .map(|answer| (conn_id, answer))
        };
        let (conn_id, answer) = match tokio::time::timeout(RESUME_REQUEST_TIMEOUT, attempt).await {
            Err(_) => {
                return Err(ResumeFailure::Retry(
                    "no broker answered the resume in time".into(),
                ))
            }
            Ok(Err(e @ Error::Refused { .. })) => (0, Err(e)),
            Ok(Err(e)) => return Err(ResumeFailure::Retry(e.to_string())),
            Ok(Ok((conn_id, answer))) => (conn_id, Ok(answer)),
        };
        match answer {
            Ok((send, recv, client_response::Response::SessionResumed(r))) => Ok(Link {
                send,
                recv,
                peer_received: r.received,
                conn_id,
            }),
            Ok(_) => Err(ResumeFailure::Retry(
                "broker answered ResumeSession with something else".into(),
            )),
            Err(Error::Refused {
                code: ErrorCode::PermissionDenied | ErrorCode::NotFound | ErrorCode::Expired,
                message,
            }) => Err(ResumeFailure::Final(message)),
            Err(e) => Err(ResumeFailure::Retry(e.to_string())),
        }
    }

    /// Carries out brokers' notices (a drain names where to move) for as long as the opener
    /// lives.
    async fn move_on_notices(this: std::sync::Weak<Self>, mut notices: mpsc::Receiver<Notice>) {
        while let Some(notice) = notices.recv().await {
            let Some(opener) = this.upgrade() else { return };
            tracing::info!(from = %notice.node_id, to = %notice.to.node_id, reason = %notice.reason, "broker asks us to move");
            opener.move_to(notice).await;
        }
    }

    /// Make before break: connect to the broker named, make it the connection for new
    /// sessions and resumes, move every session off the draining broker's connections, then
    /// close them.
    async fn move_to(self: Arc<Self>, notice: Notice) {
        let moving_off = self.pool.retire(&notice.node_id).await;
        if moving_off.is_empty() {
            return; // Another connection's notice moved us already.
        }
        let connected = match self.pool.dialer().connect_to(&notice.to).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(to = %notice.to.node_id, error = %e, "cannot reach the broker named; the pool dials another");
                None
            }
        };
        if let Some(connected) = connected {
            self.pool.add_first(connected).await;
        }
        // Detaching hands each session to its supervisor, which resumes it at once through
        // the pool (on the new connection, or a new one to another broker). The old links
        // stop at once, so their connections can close now: the new one was made first.
        let on_old = |s: &resumable::Session| s.conn_id().is_some_and(|c| moving_off.contains(&c));
        let moving: Vec<resumable::Session> = self
            .sessions
            .lock()
            .expect("never poisoned: no panics under the lock")
            .values()
            .filter(|s| on_old(s))
            .cloned()
            .collect();
        for session in &moving {
            session.detach();
        }
        for id in moving_off {
            self.pool.close(id, "moved to another broker").await;
        }
    }
}

/// First and largest delay between resume attempts (with jitter), so that many clients do not
/// retry in step against one broker.
const RESUME_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long one resume request may take (the broker waits for the host to come back).
const RESUME_REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a closing client waits for its brokers to learn of the close (so that they end
/// its sessions at once rather than after the idle timeout).
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pauses of `forward` after a failed accept (out of file descriptors, say): first and most.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long `stdio` waits for the session to complete once the remote side has ended.
const STDIO_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Default of `ferry connect --listen`'s limit on local connections forwarded at once.
pub const FORWARDED_SESSIONS_MAX_DEFAULT: usize = 4_000;

/// Accepts local TCP connections and carries each over its own session, for as long as the
/// process runs. Past `sessions_max` local connections at once, a new one is closed at once
/// with a log line saying why; no local connection ever waits without an answer.
pub async fn forward(
    listener: TcpListener,
    opener: Arc<SessionOpener>,
    host: String,
    service: String,
    sessions_max: usize,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(sessions_max));
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        // A failed accept (no file descriptor left, a connection reset before it was taken)
        // is the machine's or that connection's trouble, not the forward's: pause and go on,
        // as mini-redis does, and say so.
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                accepted
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accepting a local connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing local connection: {sessions_max} already forwarded (--max-sessions)");
            continue;
        };
        let (opener, host, service) = (opener.clone(), host.clone(), service.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            match opener.open(&host, &service).await {
                Ok(opened) => {
                    let id = opened.id;
                    tracing::info!(session_id = id, %peer, "session open");
                    let (r, w) = tcp.into_split();
                    let ending = opener.carry(opened, r, w).ended().await;
                    tracing::info!(session_id = id, ?ending, "session closed");
                    if let Ending::Lost(why) = ending {
                        eprintln!("ferry: session {id} to {host}/{service} lost: {why}");
                    }
                }
                // Like `ssh -L`: report and keep listening; the local connection is closed.
                Err(e) => eprintln!("ferry: session to {host}/{service} refused: {e}"),
            }
        });
    }
}

/// Carries one session over stdin and stdout (for OpenSSH's `ProxyCommand`). Returns when the
/// remote side has finished sending.
pub async fn stdio(opener: &Arc<SessionOpener>, host: &str, service: &str) -> Result<(), Error> {
    let opened = opener.open(host, service).await?;
    tracing::debug!(session_id = opened.id, "session open on stdio");
    let session = opener.carry(opened, tokio::io::stdin(), tokio::io::stdout());
    // The session is over when the remote side is done. Stdin may end first (half-close: the
    // remote still answers) or never (a terminal), so only the remote side is waited for.
    let ending = tokio::select! {
        ending = session.ended() => ending,
        () = session.remote_ended() => {
            // Finish our side too, so that the session completes (and is recorded closed).
            session.end_local();
            tokio::time::timeout(STDIO_CLOSE_GRACE, session.ended())
                .await
                .unwrap_or(Ending::Complete)
        }
    };
    // The last acknowledgement must reach the host before the connection closes, or the host
    // would wait for it (and the session would be recorded as broken, not closed).
    let _ = tokio::time::timeout(STDIO_CLOSE_GRACE, session.flushed()).await;
    opener.close().await;
    match ending {
        Ending::Complete => Ok(()),
        Ending::Aborted(why) | Ending::Lost(why) => Err(Error::Protocol(format!(
            "session ended with an error: {why}"
        ))),
    }
}
