//! The client side: log in, open sessions, and carry them over a local TCP port or stdio.

use crate::dial::{closed, closed_now, Dialer};
use crate::{ClientConfig, Error};
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, client_request, client_response, ClientRequest, Role};
use ferry_transport::{framed, splice};
use std::sync::Arc;
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

/// An open session: the id the broker assigned and the stream carrying its bytes.
pub struct Session {
    pub id: u64,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Opens sessions over one shared connection, reconnecting when it is lost.
pub struct SessionOpener {
    dialer: Dialer,
    token: String,
    conn: Mutex<Option<quinn::Connection>>,
}

impl SessionOpener {
    pub fn new(config: &ClientConfig, token: String) -> Result<Self, Error> {
        Ok(Self {
            dialer: Dialer::new(config, Role::Client)?,
            token,
            conn: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<quinn::Connection, Error> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let connected = self.dialer.connect().await?;
        tracing::debug!(broker = %connected.node_id, "connected");
        *conn = Some(connected.conn.clone());
        Ok(connected.conn)
    }

    /// Connects now if not connected, so that configuration and trust errors surface at once.
    pub async fn ensure_connected(&self) -> Result<(), Error> {
        self.connection().await.map(drop)
    }

    /// Closes the connection and waits (briefly) until the broker has been told, so it ends
    /// this client's sessions at once instead of after the idle timeout.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close(0u32.into(), b"client done");
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.dialer.endpoint().wait_idle(),
        )
        .await;
    }

    pub async fn open(&self, host: &str, service: &str) -> Result<Session, Error> {
        let conn = self.connection().await?;
        let open = client_request::Request::OpenSession(wire::OpenSession {
            token: self.token.clone(),
            host: host.to_owned(),
            service: service.to_owned(),
        });
        let (send, recv, response) = request(&conn, open).await?;
        match response {
            client_response::Response::SessionOpened(s) => Ok(Session {
                id: s.session_id,
                send,
                recv,
            }),
            _ => Err(Error::Protocol(
                "broker answered OpenSession with something else".into(),
            )),
        }
    }
}

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
                Ok(session) => {
                    tracing::info!(session_id = session.id, %peer, "session open");
                    let (r, w) = tcp.into_split();
                    let (up, down) = tokio::join!(
                        splice::local_to_quic(r, session.send),
                        splice::quic_to_local(session.recv, w)
                    );
                    tracing::info!(session_id = session.id, up = ?up, down = ?down, "session closed");
                }
                // Like `ssh -L`: report and keep listening; the local connection is closed.
                Err(e) => eprintln!("ferry: session to {host}/{service} refused: {e}"),
            }
        });
    }
}

/// Carries one session over stdin and stdout (for OpenSSH's `ProxyCommand`). Returns when the
/// remote side has finished sending.
pub async fn stdio(opener: &SessionOpener, host: &str, service: &str) -> Result<(), Error> {
    let session = opener.open(host, service).await?;
    tracing::debug!(session_id = session.id, "session open on stdio");
    let up = splice::local_to_quic(tokio::io::stdin(), session.send);
    let down = splice::quic_to_local(session.recv, tokio::io::stdout());
    tokio::pin!(up, down);
    // The session is over when the remote side is done. Stdin may end first (half-close: the
    // remote still answers) or never (a terminal), so only the remote side is waited for.
    let result = tokio::select! {
        down = &mut down => down,
        up = &mut up => match up {
            Ok(_) => down.await,
            Err(e) => Err(e),
        },
    };
    opener.close().await;
    result
        .map(drop)
        .map_err(|e| Error::Protocol(format!("session ended with an error: {e}")))
}
