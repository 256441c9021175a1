//! The client side: log in, open sessions, and carry them over a local TCP port or stdio.

use crate::dial::{closed, closed_now, Dialer};
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
use tokio::sync::{Mutex, Semaphore};

/// Sends one request on a new stream and reads its response. The stream stays open so that a
/// session's bytes can follow the response.
async fn request(
    conn: &quinn::Connection,
    request: client_request::Request,
) -> Result<
    (
        quinn::SendStream,
        quinn::RecvStream,
        client_response::Response,
    ),
    Error,
> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(conn, &e))?;
    let request = ClientRequest {
        request: Some(request),
    };
    framed::write(&mut send, &request, FrameLimits::default())
        .await
        .map_err(|_| closed_now(conn))?;
    let response: wire::ClientResponse = framed::read(&mut recv, FrameLimits::default())
        .await
        .map_err(|_| closed_now(conn))?;
    match response.response {
        Some(client_response::Response::Error(e)) => Err(Error::refused(e)),
        Some(r) => Ok((send, recv, r)),
        None => Err(Error::Protocol("broker sent an empty response".into())),
    }
}

/// Logs `user` in and returns the token and its expiry.
pub async fn login(
    config: &ClientConfig,
    user: &str,
    password: &str,
) -> Result<wire::LoginOk, Error> {
    let dialer = Dialer::new(config, Role::Client)?;
    let connected = dialer.connect().await?;
    let login = client_request::Request::Login(wire::Login {
        user: user.to_owned(),
        password: password.to_owned(),
    });
    let (_, _, response) = request(&connected.conn, login).await?;
    connected.conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        dialer.endpoint().wait_idle(),
    )
    .await;
    match response {
        client_response::Response::LoginOk(ok) => Ok(ok),
        _ => Err(Error::Protocol(
            "broker answered a login with something else".into(),
        )),
    }
}

/// A session the broker opened: its id, its resume secret, and the stream carrying its frames.
pub struct Opened {
    pub id: u64,
    resume_secret: String,
    resume_window: Duration,
    link: Link,
}

/// The connection sessions are opened and resumed on.
struct Current {
    conn: quinn::Connection,
    node_id: String,
}

/// Why a resume attempt failed.
enum ResumeFailure {
    /// The cluster refused it for good (wrong secret, session expired): the session is lost.
    Final(String),
    /// No broker could take it now; try again within the window.
    Retry(String),
}

/// Opens sessions over one shared connection, reconnecting when it is lost, and keeps every
/// session alive across broker failures and drains by resuming it on another broker.
pub struct SessionOpener {
    dialer: Dialer,
    token: String,
    stream_config: ferry_session::Config,
    conn: Mutex<Option<Current>>,
    /// The broker whose connection was lost last: tried last when reconnecting.
    lost_broker: std::sync::Mutex<Option<String>>,
    /// Live sessions, for moving them when their broker drains.
    sessions: std::sync::Mutex<HashMap<u64, resumable::Session>>,
}

impl SessionOpener {
    pub fn new(config: &ClientConfig, token: String) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            dialer: Dialer::new(config, Role::Client)?,
            token,
            stream_config: config.session_stream_config(),
            conn: Mutex::new(None),
            lost_broker: Default::default(),
            sessions: Default::default(),
        }))
    }

    async fn connection(self: &Arc<Self>) -> Result<quinn::Connection, Error> {
        let mut current = self.conn.lock().await;
        if let Some(c) = current.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok(c.conn.clone());
            }
            *self
                .lost_broker
                .lock()
                .expect("never poisoned: no panics under the lock") = Some(c.node_id.clone());
        }
        let avoid = self
            .lost_broker
            .lock()
            .expect("never poisoned: no panics under the lock")
            .clone();
        let connected = self.dialer.connect_avoiding(avoid.as_deref()).await?;
        tracing::debug!(broker = %connected.node_id, "connected");
        let conn = connected.conn.clone();
        tokio::spawn(
            self.clone()
                .watch_notices(conn.clone(), connected.control.1),
        );
        *current = Some(Current {
            conn: conn.clone(),
            node_id: connected.node_id,
        });
        Ok(conn)
    }

    /// Connects now if not connected, so that configuration and trust errors surface at once.
    pub async fn ensure_connected(self: &Arc<Self>) -> Result<(), Error> {
        self.connection().await.map(drop)
    }

    /// Closes the connection and waits (briefly) until the broker has been told, so it ends
    /// this client's sessions at once instead of after the idle timeout.
    pub async fn close(&self) {
        if let Some(current) = self.conn.lock().await.take() {
            current.conn.close(0u32.into(), b"client done");
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.dialer.endpoint().wait_idle(),
        )
        .await;
    }

    /// Opens a session to `service` on `host`; [`SessionOpener::carry`] then moves its bytes.
    pub async fn open(self: &Arc<Self>, host: &str, service: &str) -> Result<Opened, Error> {
        let conn = self.connection().await?;
        let open = client_request::Request::OpenSession(wire::OpenSession {
            token: self.token.clone(),
            host: host.to_owned(),
            service: service.to_owned(),
        });
        let (send, recv, response) = request(&conn, open).await?;
        match response {
            client_response::Response::SessionOpened(s) => Ok(Opened {
                id: s.session_id,
                resume_secret: s.resume_secret,
                resume_window: Duration::from_millis(s.resume_window_ms),
                link: Link {
                    send,
                    recv,
                    peer_received: 0,
                    conn_id: conn.stable_id(),
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
        opened: Opened,
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
            match self.resume_link(session.id(), secret, detached).await {
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
        let conn = self
            .connection()
            .await
            .map_err(|e| ResumeFailure::Retry(e.to_string()))?;
        let resume = client_request::Request::ResumeSession(wire::ResumeSession {
            session_id: id,
            resume_secret: secret.to_owned(),
            received: detached.received,
            written: detached.written,
        });
        let answer = tokio::time::timeout(RESUME_REQUEST_TIMEOUT, request(&conn, resume))
            .await
            .map_err(|_| ResumeFailure::Retry("the broker did not answer in time".into()))?;
        match answer {
            Ok((send, recv, client_response::Response::SessionResumed(r))) => Ok(Link {
                send,
                recv,
                peer_received: r.received,
                conn_id: conn.stable_id(),
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

    /// Reads a broker's notices on the connection's control stream: when it drains, move.
    /// (Boxed: a move watches the new connection's notices in turn.)
    fn watch_notices(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut control: quinn::RecvStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            while let Ok(notice) =
                framed::read::<wire::BrokerNotice, _>(&mut control, FrameLimits::default()).await
            {
                if let Some(target) = notice.move_to {
                    tracing::info!(to = %target.node_id, reason = %notice.reason, "broker asks us to move");
                    self.clone().move_to(conn.clone(), target).await;
                }
            }
        })
    }

    /// Make before break: connect to `target`, make it the connection for new sessions and
    /// resumes, move every session off `old`, then close `old`.
    async fn move_to(self: Arc<Self>, old: quinn::Connection, target: wire::BrokerInfo) {
        let connected = match self.dialer.connect_to(&target).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(to = %target.node_id, error = %e, "cannot reach the broker named; trying the others");
                match self.dialer.connect_avoiding(None).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "no broker to move to; staying");
                        return;
                    }
                }
            }
        };
        let conn = connected.conn.clone();
        tokio::spawn(
            self.clone()
                .watch_notices(conn.clone(), connected.control.1),
        );
        {
            let mut current = self.conn.lock().await;
            *current = Some(Current {
                conn,
                node_id: connected.node_id,
            });
        }
        // Detaching hands each session to its supervisor, which resumes it on the new
        // connection at once.
        let on_old = |s: &resumable::Session| s.conn_id() == Some(old.stable_id());
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
        let deadline = Instant::now() + MOVE_DEADLINE;
        while Instant::now() < deadline && moving.iter().any(on_old) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        old.close(0u32.into(), b"moved to another broker");
    }
}

/// First and largest delay between resume attempts (with jitter), so that many clients do not
/// retry in step against one broker.
const RESUME_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long one resume request may take (the broker waits for the host to come back).
const RESUME_REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
/// How long `stdio` waits for the session to complete once the remote side has ended.
const STDIO_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a move waits for its sessions to leave the old connection before closing it.
const MOVE_DEADLINE: Duration = Duration::from_secs(10);

/// Local connections forwarded at once by `ferry connect --listen`; matches the broker's
/// default per-connection stream limit.
const FORWARDED_CONNECTIONS_MAX: usize = 256;

/// Accepts local TCP connections and carries each over its own session, until `listener` fails.
pub async fn forward(
    listener: TcpListener,
    opener: Arc<SessionOpener>,
    host: String,
    service: String,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(FORWARDED_CONNECTIONS_MAX));
    loop {
        let (tcp, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::Local(format!("accepting local connections failed: {e}")))?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing local connection: {FORWARDED_CONNECTIONS_MAX} already forwarded");
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
