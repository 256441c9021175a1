//! Client connections: one request per stream. `Login` answers a token, the account requests
//! (`account.rs`) answer from the state; `OpenSession` (`session.rs`) and `ResumeSession`
//! (`resume.rs`) go on to carry a session on the same stream.

use super::{frame_limits, propose_error_to_wire, refusal_to_wire, reject_input, stale, Unproven};
use crate::admission;
use crate::auth;
use crate::context::Ctx;
use ferry_admission::Attempt;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, client_request, client_response, ClientResponse, ErrorCode};
use ferry_state::NameKind;
use ferry_state::{hash_secret, Outcome};
use ferry_transport::framed;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::timeout;
use tracing::Instrument;

pub(super) async fn serve(
    conn: quinn::Connection,
    ctx: Arc<Ctx>,
    remote: SocketAddr,
    unproven: Unproven,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (conn, ctx, unproven) = (conn.clone(), ctx.clone(), unproven.clone());
        tokio::spawn(async move { request(conn, send, recv, ctx, remote, unproven).await });
    }
}

/// Answers one request. The first that proves who the client is (a password that verifies,
/// a valid token or resume secret) makes the connection authenticated (`Unproven::proven`).
async fn request(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    remote: SocketAddr,
    unproven: Unproven,
) {
    let deadline = ctx.config.limits.handshake_timeout();
    let request: wire::ClientRequest =
        match timeout(deadline, framed::read(&mut recv, frame_limits(&ctx))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return reject_input(&ctx, &conn, &e),
            Err(_) => return,
        };
    use client_request::Request;
    use client_response::Response;
    // Requests answered with one response, after which the stream is finished.
    let response = match request.request {
        Some(Request::Login(login)) => {
            one_shot(self::login(&ctx, login, remote).await, Response::LoginOk)
        }
        Some(Request::ListHosts(list)) => one_shot(
            super::account::list_hosts(&ctx, list).await,
            Response::HostList,
        ),
        Some(Request::WhoAmI(who)) => one_shot(
            super::account::who_am_i(&ctx, who).await,
            Response::Identity,
        ),
        Some(Request::Logout(logout)) => one_shot(
            super::account::logout(&ctx, logout, remote).await,
            Response::LoggedOut,
        ),
        Some(Request::ChangePassword(change)) => one_shot(
            super::account::change_password(&ctx, change, remote).await,
            Response::PasswordChanged,
        ),
        // Requests whose stream goes on to carry a session.
        Some(Request::OpenSession(open)) => {
            let session = super::session::open_session(&ctx, open, send, recv, remote, &unproven);
            return session.await;
        }
        Some(Request::ResumeSession(resume)) => {
            let span = tracing::info_span!("session", session_id = resume.session_id);
            return super::resume::resume_session(&ctx, resume, send, recv, remote, &unproven)
                .instrument(span)
                .await;
        }
        None => {
            ctx.metrics.protocol_error("empty_request");
            ferry_transport::CloseCode::Protocol.close(&conn, "request names no operation");
            return;
        }
    };
    // An answer that is not a refusal proved a password or token, except a logout of a token
    // that was not valid (which anyone can ask).
    let proved = !matches!(
        response,
        client_response::Response::Error(_)
            | client_response::Response::LoggedOut(wire::LoggedOut { revoked: false })
    );
    if proved {
        unproven.proven();
    }
    respond(&ctx, &mut send, response).await;
    let _ = send.finish();
}

/// The response to a one-shot request: its answer, or the error.
fn one_shot<T>(
    result: Result<T, wire::Error>,
    answer: fn(T) -> client_response::Response,
) -> client_response::Response {
    result.map_or_else(client_response::Response::Error, answer)
}

pub(super) async fn respond(
    ctx: &Ctx,
    send: &mut quinn::SendStream,
    response: client_response::Response,
) {
    let response = ClientResponse {
        response: Some(response),
    };
    let _ = framed::write(send, &response, frame_limits(ctx)).await;
}

pub(super) fn error(code: ErrorCode, message: impl Into<String>) -> wire::Error {
    wire::Error::new(code, message)
}

/// Logs a user in: the name checked, an attempt reserved (on this node and at the leader,
/// `admission.rs`), the password verified on the bounded pool, a token issued through Raft.
/// A failure is counted in the node's failure ledger, never proposed one by one.
async fn login(
    ctx: &Arc<Ctx>,
    login: wire::Login,
    remote: SocketAddr,
) -> Result<wire::LoginOk, wire::Error> {
    let source = remote.ip();
    let count = |result| {
        ctx.metrics
            .logins
            .get_or_create(&crate::metrics::Result_ { result })
            .inc();
    };
    // A name that cannot be a user's is refused before anything is reserved or verified.
    if let Err(r) = ferry_state::validate_name(NameKind::User, &login.user) {
        count("invalid");
        admission::failed(ctx, source, Attempt::Login, ferry_state::INVALID_NAME);
        return Err(error(ErrorCode::InvalidArgument, r.message));
    }
    if login.password.len() > auth::PASSWORD_BYTES_MAX {
        count("invalid");
        admission::failed(ctx, source, Attempt::Login, &login.user);
        return Err(error(
            ErrorCode::InvalidArgument,
            format!(
                "a password is at most {} bytes long",
                auth::PASSWORD_BYTES_MAX
            ),
        ));
    }
    admission::reserve_login(ctx, &login.user, source)
        .await
        .inspect_err(|_| count("throttled"))?;
    ctx.proposer.confirm_fresh().await.map_err(stale)?;
    let stored = ctx
        .replica
        .read()
        .user(&login.user)
        .map(|u| u.password_hash.clone());
    let password = login.password;
    // An unknown user costs the same argon2 work as a known one (against a dummy hash), so
    // response times do not reveal which users exist.
    let known = stored.is_some();
    let verified = ctx
        .admission
        .passwords
        .run(ctx, move || match stored {
            Some(hash) => auth::verify_password(&hash, &password),
            None => {
                auth::verify_password(auth::dummy_password_hash(), &password);
                false
            }
        })
        .await?
        && known;
    if !verified {
        count("failed");
        admission::failed(ctx, source, Attempt::Login, &login.user);
        // The same answer for both cases: telling them apart would let anyone list the users.
        return Err(error(
            ErrorCode::Unauthenticated,
            format!(
                "login failed for {:?}: unknown user or wrong password",
                login.user
            ),
        ));
    }
    admission::login_succeeded(ctx, &login.user, source);
    let token = auth::new_secret();
    let expires_at_ms = crate::now_ms() + ctx.config.limits.token_ttl_secs * 1000;
    let issue = Kind::IssueToken(cmd::IssueToken {
        user: login.user.clone(),
        token_hash: hash_secret(&token),
        expires_at_ms,
    });
    let actor = format!("user:{}", login.user);
    match ctx.proposer.propose(actor, remote.to_string(), issue).await {
        Ok(Outcome::Refused(r)) => Err(refusal_to_wire(&r)),
        Ok(_) => {
            count("ok");
            Ok(wire::LoginOk {
                token,
                expires_at_ms,
            })
        }
        Err(e) => Err(propose_error_to_wire(&e)),
    }
}

/// A session request refused before its session started: what the client is told, and what
/// the refusal counts as.
pub(super) struct Refused {
    pub error: wire::Error,
    pub counted: Counted,
}

/// Which metric a refusal counts in.
pub(super) enum Counted {
    /// `ferry_sessions_refused_total{reason}`.
    Refused(&'static str),
    /// `ferry_sessions_lost_total{reason}`: the session existed and is gone for good.
    Lost(&'static str),
    /// Not counted (the client retries: a resume that could not reach its host yet).
    Not,
}

impl Refused {
    pub fn new(reason: &'static str, error: wire::Error) -> Self {
        Self {
            error,
            counted: Counted::Refused(reason),
        }
    }
}

/// The one place a refused session request is answered: counted, told, and the stream
/// finished.
pub(super) async fn answer_refused(ctx: &Ctx, send: &mut quinn::SendStream, refused: Refused) {
    match refused.counted {
        Counted::Refused(reason) => ctx.metrics.refuse_session(reason),
        Counted::Lost(reason) => ctx.metrics.lose_session(reason),
        Counted::Not => {}
    }
    respond(ctx, send, client_response::Response::Error(refused.error)).await;
    let _ = send.finish();
}
