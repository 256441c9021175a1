//! The host agent: enrolls once, attaches to a broker, and connects each session the broker
//! opens to the local service it names. Reconnects with backoff and jitter when the broker
//! goes away, so a thousand agents do not return to one node at the same instant.

use crate::dial::{closed_now, Connected, Dialer};
use crate::resumable::{self, Ending, Link, Phase};
use crate::{ClientConfig, Error};
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, host_request, host_response, ErrorCode, HostRequest};
use ferry_transport::{close, framed};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Time allowed to connect to a local service.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff: first delay, cap, and how long an attachment must have lasted for
/// its loss to start the backoff afresh. Only failed attempts (and attachments that end at
/// once, a flapping broker) grow the delay: a host that loses a broker it was attached to
/// comes back within the first delay, however recently it lost the previous one.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const BACKOFF_RESET_ATTACHED: Duration = Duration::from_secs(1);

pub struct HostOptions {
    pub config: ClientConfig,
    pub name: String,
    /// Directory holding the host's credential after enrollment.
    pub state_dir: PathBuf,
    pub enroll_token: Option<String>,
    /// Service name -> local address.
    pub services: BTreeMap<String, SocketAddr>,
}

/// Runs the agent until `shutdown` resolves or a broker refuses it for good (bad credential,
/// used enrollment token, untrusted certificate).
pub async fn run(
    opts: HostOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    if opts.services.is_empty() {
        return Err(Error::Config(
            "expose at least one service: --expose NAME=ADDR:PORT".into(),
        ));
    }
    let crate::enrollment::Start {
        identity,
        mut pending,
    } = crate::enrollment::start(&opts)?;
    let dialer = Dialer::host(&opts.config, identity, &opts.state_dir)?;
    let agent = Arc::new(Agent {
        services: opts.services.clone(),
        sessions: Default::default(),
        stream_config: opts.config.session_stream_config(),
        attachments: tokio::sync::watch::channel(0).0,
        instance: rand::thread_rng().gen_range(1..u64::MAX),
    });
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_FIRST;
    // Where to attach next: a broker named by a draining one, or any but the one just lost.
    let mut target: Option<wire::BrokerInfo> = None;
    let mut avoid: Option<String> = None;
    loop {
        let attempt = attach_once(
            &dialer,
            &opts,
            &mut pending,
            agent.clone(),
            (target.take(), avoid.take()),
        );
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut shutdown => return Ok(()),
        };
        match result {
            // A broker that cannot serve us now (draining, no leader, full) is not a refusal
            // of this host: try again, elsewhere first.
            Err(Error::Refused {
                code: ErrorCode::Unavailable | ErrorCode::ResourceExhausted,
                message,
            }) => tracing::warn!(%message, "broker cannot take the host now"),
            Err(
                e @ (Error::Refused { .. }
                | Error::Untrusted(_)
                | Error::Config(_)
                | Error::Local(_)),
            ) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "connection to the broker lost"),
            Ok(AttachEnd::Lost {
                broker,
                why,
                attached_for,
            }) => {
                tracing::warn!(%broker, %why, "connection to the broker lost");
                avoid = Some(broker);
                if attached_for >= BACKOFF_RESET_ATTACHED {
                    backoff = BACKOFF_FIRST;
                }
            }
            Ok(AttachEnd::Moved { to, old }) => {
                // Make before break: attach to the broker named while the old connection
                // still carries the sessions, then retire it once none uses it.
                tracing::info!(to = %to.node_id, "broker is draining; moving");
                let attached_before = *agent.attachments.borrow();
                tokio::spawn(agent.clone().retire(old, attached_before));
                target = Some(to);
                backoff = BACKOFF_FIRST;
                continue;
            }
        }
        // Full jitter on the upper half: spreads a herd of agents across the interval.
        let delay = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The agent's state across connections: its services and its live sessions.
struct Agent {
    /// Service name -> local address.
    services: BTreeMap<String, SocketAddr>,
    /// Live sessions by id, each with its resume secret: they outlive any one connection.
    sessions: std::sync::Mutex<HashMap<u64, HostSession>>,
    stream_config: ferry_session::Config,
    /// Attachments made so far: a connection being retired stays up until the next one is
    /// made, so that the host is never attached nowhere while it moves.
    attachments: tokio::sync::watch::Sender<u64>,
    /// This process among agents of the same host: a broker tells a reconnection (same
    /// instance) from a second agent with a copy of the identity (another), and refuses the
    /// second while the first is attached.
    instance: u64,
}

struct HostSession {
    session: resumable::Session,
    resume_secret: String,
}

/// Why a connection to a broker ended without an error of ours.
enum AttachEnd {
    Lost {
        broker: String,
        why: String,
        /// How long the host was attached before the connection ended.
        attached_for: Duration,
    },
    /// The broker drains and named another; `old` still carries sessions.
    Moved {
        to: wire::BrokerInfo,
        old: quinn::Connection,
    },
}

/// Sessions one host holds at once; a session beyond it is refused.
pub(crate) const SESSIONS_MAX: usize = 4096;
/// How long a retired connection may keep carrying sessions before it is closed anyway.
const RETIRE_DEADLINE: Duration = Duration::from_secs(30);

impl Agent {
    /// Ends the sessions the cluster ended (killed, access withdrawn), relayed or waiting for
    /// a resume: the local connection closes, and the far side is told why if a link is up.
    fn end_sessions(&self, ended: &[wire::EndSession]) {
        let sessions = self.sessions();
        for end in ended {
            if let Some(held) = sessions.get(&end.session_id) {
                tracing::info!(session_id = end.session_id, reason = %end.reason, "the cluster ended the session");
                held.session
                    .abort(format!("the cluster ended the session: {}", end.reason));
            }
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HostSession>> {
        self.sessions
            .lock()
            .expect("never poisoned: no panics under the lock")
    }

    /// Closes `old` once the agent is attached again elsewhere (`attached_before` is the
    /// count of attachments when the move began) and no session uses `old` any more (each was
    /// resumed through the new broker): make before break, even with no session at all.
    async fn retire(self: Arc<Self>, old: quinn::Connection, attached_before: u64) {
        let deadline = tokio::time::Instant::now() + RETIRE_DEADLINE;
        let mut attachments = self.attachments.subscribe();
        let _ =
            tokio::time::timeout_at(deadline, attachments.wait_for(|n| *n > attached_before)).await;
        while tokio::time::Instant::now() < deadline {
            let in_use = self
                .sessions()
                .values()
                .any(|s| s.session.conn_id() == Some(old.stable_id()));
            if !in_use {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        old.close(0u32.into(), b"moved to another broker");
    }
}

/// One connection: enroll if needed, attach, serve sessions until the connection ends or
/// the broker asks us to move.
async fn attach_once(
    dialer: &Dialer,
    opts: &HostOptions,
    pending: &mut Option<crate::enrollment::Pending>,
    agent: Arc<Agent>,
    (target, avoid): (Option<wire::BrokerInfo>, Option<String>),
) -> Result<AttachEnd, Error> {
    let connected = match target {
        Some(target) => match dialer.connect_to(&target).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(to = %target.node_id, error = %e, "cannot reach the broker named");
                dialer.connect_avoiding(avoid.as_deref()).await?
            }
        },
        None => dialer.connect_avoiding(avoid.as_deref()).await?,
    };
    let Connected {
        conn,
        node_id,
        control: (mut send, mut recv),
        ..
    } = connected;
    let services = &agent.services;
    if let Some(enrollment) = pending.as_ref() {
        let enroll = host_request::Request::Enroll(wire::Enroll {
            name: opts.name.clone(),
            token: enrollment.token.clone(),
        });
        match exchange(&conn, &mut send, &mut recv, enroll).await? {
            host_response::Response::Enrolled(_) => {
                // Durable before use: a crash after attaching must not lose the only copy.
                crate::enrollment::save(opts, enrollment)?;
                eprintln!(
                    "ferry: host {:?} enrolled; its key is in {}",
                    opts.name,
                    opts.state_dir.display()
                );
                *pending = None;
            }
            _ => {
                return Err(Error::Protocol(
                    "broker answered Enroll with something else".into(),
                ))
            }
        }
    }
    let attach = host_request::Request::Attach(wire::Attach {
        name: opts.name.clone(),
        services: services.keys().cloned().collect(),
        instance: agent.instance,
        ..Default::default()
    });
    match exchange(&conn, &mut send, &mut recv, attach).await? {
        host_response::Response::Attached(_) => {}
        _ => {
            return Err(Error::Protocol(
                "broker answered Attach with something else".into(),
            ))
        }
    }
    tracing::info!(broker = %node_id, host = %opts.name, "attached");
    agent.attachments.send_modify(|n| *n += 1);
    let attached_at = tokio::time::Instant::now();
    eprintln!("ferry: host {:?} attached to broker {node_id}", opts.name);
    let _ = send; // kept open: closing it would tell the broker we left
    let notices = async {
        loop {
            match framed::read::<wire::BrokerNotice, _>(&mut recv, FrameLimits::default()).await {
                Ok(wire::BrokerNotice {
                    move_to: Some(to), ..
                }) => return Some(to),
                Ok(notice) => agent.end_sessions(&notice.end_sessions),
                Err(_) => return None,
            }
        }
    };
    tokio::pin!(notices);
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::spawn(agent.clone().serve_session(send, recv, conn.stable_id()));
                }
                Err(e) => {
                    return Ok(AttachEnd::Lost {
                        broker: node_id,
                        why: close::describe(&e),
                        attached_for: attached_at.elapsed(),
                    })
                }
            },
            notice = &mut notices => match notice {
                Some(to) => return Ok(AttachEnd::Moved { to, old: conn }),
                None => {
                    // The control stream ended: wait for the connection's own end.
                    let e = conn.closed().await;
                    return Ok(AttachEnd::Lost {
                        broker: node_id,
                        why: close::describe(&e),
                        attached_for: attached_at.elapsed(),
                    });
                }
            },
        }
    }
}

async fn exchange(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    request: host_request::Request,
) -> Result<host_response::Response, Error> {
    let request = HostRequest {
        request: Some(request),
    };
    framed::write(send, &request, FrameLimits::default())
        .await
        .map_err(|_| closed_now(conn))?;
    let response: wire::HostResponse = framed::read(recv, FrameLimits::default())
        .await
        .map_err(|_| closed_now(conn))?;
    match response.response {
        Some(host_response::Response::Error(e)) => Err(Error::refused(e)),
        Some(r) => Ok(r),
        None => Err(Error::Protocol("broker sent an empty response".into())),
    }
}

impl Agent {
    /// Serves one stream the broker opened: a new session (connect to the local service) or
    /// the resume of one this agent holds (continue it on this stream).
    async fn serve_session(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        conn_id: usize,
    ) {
        let start: wire::SessionStart = match framed::read(&mut recv, FrameLimits::default()).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "bad session start from broker");
                return;
            }
        };
        let span = tracing::info_span!("session", session_id = start.session_id, service = %start.service, user = %start.user);
        if start.resume {
            let _enter = span.enter();
            return self.resume(start, send, recv, conn_id);
        }
        let reply = |error: Option<wire::Error>| wire::SessionStartReply {
            error,
            ..Default::default()
        };
        let Some(addr) = self.services.get(&start.service).copied() else {
            let e = wire::Error::new(
                ErrorCode::NotFound,
                format!("this host does not expose service {:?}", start.service),
            );
            let _ = framed::write(&mut send, &reply(Some(e)), FrameLimits::default()).await;
            let _ = send.finish();
            return;
        };
        if self.sessions().len() >= SESSIONS_MAX {
            let e = wire::Error::new(
                ErrorCode::ResourceExhausted,
                format!("this host holds {SESSIONS_MAX} sessions already"),
            );
            let _ = framed::write(&mut send, &reply(Some(e)), FrameLimits::default()).await;
            let _ = send.finish();
            return;
        }
        let tcp = match timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return refuse_local(send, &start.service, addr, &e.to_string()).await,
            Err(_) => return refuse_local(send, &start.service, addr, "timed out").await,
        };
        let _ = tcp.set_nodelay(true);
        if framed::write(&mut send, &reply(None), FrameLimits::default())
            .await
            .is_err()
        {
            return;
        }
        span.in_scope(|| tracing::info!(%addr, "session connected to local service"));
        let (r, w) = tcp.into_split();
        let link = Link {
            send,
            recv,
            peer_received: 0,
            conn_id,
        };
        let session = resumable::Session::start(start.session_id, self.stream_config, r, w, link);
        self.sessions().insert(
            start.session_id,
            HostSession {
                session: session.clone(),
                resume_secret: start.resume_secret,
            },
        );
        let window = Duration::from_millis(start.resume_window_ms);
        let ending = watch_resume_window(&session, window).await;
        self.sessions().remove(&start.session_id);
        let (sent, received, resumes, replayed) = session.totals();
        span.in_scope(|| {
            tracing::info!(?ending, sent, received, resumes, replayed, "session ended")
        });
    }

    /// Continues a session this agent holds on the stream just opened by a broker.
    fn resume(
        &self,
        start: wire::SessionStart,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        conn_id: usize,
    ) {
        let refuse = |code, message: String| wire::SessionStartReply {
            error: Some(wire::Error::new(code, message)),
            ..Default::default()
        };
        let session = {
            let sessions = self.sessions();
            match sessions.get(&start.session_id) {
                None => Err(refuse(
                    ErrorCode::NotFound,
                    format!(
                        "session {} is not held by this host: it ended, or its resume window passed",
                        start.session_id
                    ),
                )),
                Some(s) if s.resume_secret != start.resume_secret => Err(refuse(
                    ErrorCode::PermissionDenied,
                    format!("wrong resume secret for session {}", start.session_id),
                )),
                Some(s) => Ok(s.session.clone()),
            }
        };
        let session = match session {
            Ok(session) => session,
            Err(reply) => {
                tracing::warn!(reason = ?reply.error, "resume refused");
                tokio::spawn(async move {
                    let _ = framed::write(&mut send, &reply, FrameLimits::default()).await;
                    let _ = send.finish();
                });
                return;
            }
        };
        // Freeze the offsets first (the old link stops), then answer with them.
        let detached = session.detach();
        tokio::spawn(async move {
            let reply = wire::SessionStartReply {
                error: None,
                received: detached.received,
                written: detached.written,
            };
            if framed::write(&mut send, &reply, FrameLimits::default())
                .await
                .is_err()
            {
                return; // the session waits for the next resume
            }
            let link = Link {
                send,
                recv,
                peer_received: start.client_received,
                conn_id,
            };
            match session.attach(detached, link) {
                Ok(()) => tracing::info!(
                    host_received = detached.received,
                    client_received = start.client_received,
                    "session resumed"
                ),
                Err(e) => tracing::info!(error = %e, "resume not taken"),
            }
        });
    }
}

/// Waits for the session to end, ending it as lost when it stays without a link for longer
/// than `window` (the client never came back).
async fn watch_resume_window(session: &resumable::Session, window: Duration) -> Ending {
    let mut phase = session.phase();
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::Ended => return session.ended().await,
            Phase::Linked(_) => {
                if phase.changed().await.is_err() {
                    return session.ended().await;
                }
            }
            Phase::Unlinked(since) => {
                let deadline = tokio::time::Instant::from_std(since + window);
                if tokio::time::timeout_at(deadline, phase.changed())
                    .await
                    .is_err()
                {
                    session.end(Ending::Lost(format!(
                        "not resumed within its {} s resume window",
                        window.as_secs()
                    )));
                }
            }
        }
    }
}

async fn refuse_local(mut send: quinn::SendStream, service: &str, addr: SocketAddr, why: &str) {
    tracing::warn!(%addr, why, "local service unreachable");
    let e = wire::Error::new(
        ErrorCode::Unavailable,
        format!("host cannot connect to its service {service:?} at {addr}: {why}"),
    );
    let _ = framed::write(
        &mut send,
        &wire::SessionStartReply {
            error: Some(e),
            ..Default::default()
        },
        FrameLimits::default(),
    )
    .await;
    let _ = send.finish();
}
