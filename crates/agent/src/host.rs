//! The host agent: enrolls once, attaches to a broker, and connects each session the broker
//! opens to the local service it names. Reconnects with backoff and jitter when the broker
//! goes away, so a thousand agents do not return to one node at the same instant.

use crate::dial::{closed_now, Connected, Dialer};
use crate::token_cache::write_private;
use crate::{ClientConfig, Error};
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, host_request, host_response, ErrorCode, HostRequest, Role};
use ferry_transport::{close, framed, splice};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Time allowed to connect to a local service.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff: first delay, cap, and how long an attachment must last to reset it.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

pub struct HostOptions {
    pub config: ClientConfig,
    pub name: String,
    /// Directory holding the host's credential after enrollment.
    pub state_dir: PathBuf,
    pub enroll_token: Option<String>,
    /// Service name -> local address.
    pub services: BTreeMap<String, SocketAddr>,
}

/// What the agent keeps on disk after enrollment.
#[derive(Serialize, Deserialize)]
struct Credential {
    cluster_name: String,
    host: String,
    credential: String,
}

fn credential_path(opts: &HostOptions) -> PathBuf {
    opts.state_dir.join("credential.toml")
}

fn load_credential(opts: &HostOptions) -> Result<Option<String>, Error> {
    let path = credential_path(opts);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Local(format!("cannot read {}: {e}", path.display()))),
    };
    let stored: Credential = toml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{} is damaged ({e}); re-enroll the host",
            path.display()
        ))
    })?;
    if stored.host != opts.name || stored.cluster_name != opts.config.cluster_name {
        return Err(Error::Config(format!(
            "{} belongs to host {:?} of cluster {:?}, not {:?} of {:?}; use another --state-dir",
            path.display(),
            stored.host,
            stored.cluster_name,
            opts.name,
            opts.config.cluster_name
        )));
    }
    Ok(Some(stored.credential))
}

fn save_credential(opts: &HostOptions, credential: &str) -> Result<(), Error> {
    let path = credential_path(opts);
    let local = |e: std::io::Error| Error::Local(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(&opts.state_dir).map_err(local)?;
    let stored = Credential {
        cluster_name: opts.config.cluster_name.clone(),
        host: opts.name.clone(),
        credential: credential.to_owned(),
    };
    let text = toml::to_string(&stored).expect("a struct of strings serializes");
    write_private(&path, text.as_bytes()).map_err(local)
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
    let mut credential = load_credential(&opts)?;
    if credential.is_some() && opts.enroll_token.is_some() {
        tracing::warn!(
            "already enrolled (credential in {}); ignoring --enroll",
            opts.state_dir.display()
        );
    }
    if credential.is_none() && opts.enroll_token.is_none() {
        return Err(Error::Config(format!(
            "host {:?} is not enrolled yet: pass --enroll TOKEN (from `ferry admin host enroll {}`)",
            opts.name, opts.name
        )));
    }
    let dialer = Dialer::new(&opts.config, Role::Host)?;
    let services = Arc::new(opts.services.clone());
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let attempt = attach_once(&dialer, &opts, &mut credential, services.clone());
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut shutdown => return Ok(()),
        };
        match result {
            Err(
                e @ (Error::Refused { .. }
                | Error::Untrusted(_)
                | Error::Config(_)
                | Error::Local(_)),
            ) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "connection to the broker lost"),
            Ok(()) => {}
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = BACKOFF_FIRST;
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

/// One connection: enroll if needed, attach, serve sessions until the connection ends.
async fn attach_once(
    dialer: &Dialer,
    opts: &HostOptions,
    credential: &mut Option<String>,
    services: Arc<BTreeMap<String, SocketAddr>>,
) -> Result<(), Error> {
    let Connected {
        conn,
        node_id,
        control: (mut send, mut recv),
        ..
    } = dialer.connect().await?;
    if credential.is_none() {
        let token = opts.enroll_token.clone().unwrap_or_default();
        let enroll = host_request::Request::Enroll(wire::Enroll {
            name: opts.name.clone(),
            token,
        });
        match exchange(&conn, &mut send, &mut recv, enroll).await? {
            host_response::Response::Enrolled(enrolled) => {
                // Durable before use: a crash after attaching must not lose the only copy.
                save_credential(opts, &enrolled.credential)?;
                eprintln!(
                    "ferry: host {:?} enrolled; credential saved in {}",
                    opts.name,
                    opts.state_dir.display()
                );
                *credential = Some(enrolled.credential);
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
        credential: credential.clone().unwrap_or_default(),
        services: services.keys().cloned().collect(),
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
    eprintln!("ferry: host {:?} attached to broker {node_id}", opts.name);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_session(send, recv, services.clone()));
            }
            Err(e) => return Err(Error::Unreachable(close::describe(&e))),
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

/// Connects one session to its local service and moves its bytes both ways.
async fn serve_session(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    services: Arc<BTreeMap<String, SocketAddr>>,
) {
    let start: wire::SessionStart = match framed::read(&mut recv, FrameLimits::default()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "bad session start from broker");
            return;
        }
    };
    let span = tracing::info_span!("session", session_id = start.session_id, service = %start.service, user = %start.user);
    let _enter = span.enter();
    let reply = |error: Option<wire::Error>| wire::SessionStartReply { error };
    let Some(addr) = services.get(&start.service).copied() else {
        let e = wire::Error::new(
            ErrorCode::NotFound,
            format!("this host does not expose service {:?}", start.service),
        );
        let _ = framed::write(&mut send, &reply(Some(e)), FrameLimits::default()).await;
        let _ = send.finish();
        return;
    };
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
    tracing::info!(%addr, "session connected to local service");
    drop(_enter);
    let (r, w) = tcp.into_split();
    let (up, down) = tokio::join!(
        splice::local_to_quic(r, send),
        splice::quic_to_local(recv, w)
    );
    let _enter = span.enter();
    tracing::info!(to_client = ?up, from_client = ?down, "session ended");
}

async fn refuse_local(mut send: quinn::SendStream, service: &str, addr: SocketAddr, why: &str) {
    tracing::warn!(%addr, why, "local service unreachable");
    let e = wire::Error::new(
        ErrorCode::Unavailable,
        format!("host cannot connect to its service {service:?} at {addr}: {why}"),
    );
    let _ = framed::write(
        &mut send,
        &wire::SessionStartReply { error: Some(e) },
        FrameLimits::default(),
    )
    .await;
    let _ = send.finish();
}
