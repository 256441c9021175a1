//! Who may call what on the admin API: bearer tokens with roles.
//!
//! A token is either the one `ferry init` wrote (`admin.token`; its SHA-256 is in every node's
//! configuration; it is named `init` and is an `admin`), or a named token created through the
//! API (`ferry admin token create NAME --role R`; replicated, stored hashed). Each request's
//! method and path need a role ([`required_role`]); a token with a lesser role gets 403, and
//! the refusal is audited with the token's name and the client's address. The audit names the
//! token, never what a header claims: `X-Ferry-Operator` only adds a note.

use super::{ApiError, ADMIN_ACTOR};
use crate::context::Ctx;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_state::{hash_secret, AdminRole};
use std::net::SocketAddr;
use std::sync::Arc;

/// Name of the token `ferry init` writes to `admin.token`.
pub const INIT_TOKEN_NAME: &str = "init";
/// Longest note accepted from `X-Ferry-Operator`.
const NOTE_BYTES_MAX: usize = 64;

/// The authenticated caller of one admin API request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub token: String,
    pub role: AdminRole,
    /// The client's address (the TCP peer).
    pub addr: Option<SocketAddr>,
    /// What `X-Ferry-Operator` said (`ferry admin` sends `$USER@hostname`), if anything.
    pub note: Option<String>,
}

impl Caller {
    /// The audit log's actor: `token:NAME`, with the operator's note when given.
    pub fn actor(&self) -> String {
        match &self.note {
            Some(note) => format!("{ADMIN_ACTOR}:{} ({note})", self.token),
            None => format!("{ADMIN_ACTOR}:{}", self.token),
        }
    }

    /// The audit log's source: the client's address.
    pub fn source(&self) -> String {
        self.addr.map(|a| a.to_string()).unwrap_or_default()
    }
}

/// The role a request needs, by method and path (below `/v1`). Reads need `read`, except
/// the token list and the restart check; the operations of a maintenance window need
/// `operator`; everything that changes who may do what needs `admin`.
pub fn required_role(method: &Method, path: &str) -> AdminRole {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (_, ["v1", "tokens", ..]) => AdminRole::Admin,
        (&Method::GET, ["v1", "nodes", _, "restart-check"]) => AdminRole::Operator,
        // A backup holds password and token hashes.
        (&Method::GET, ["v1", "snapshot"]) => AdminRole::Admin,
        (&Method::GET, _) => AdminRole::Read,
        (&Method::POST | &Method::DELETE, ["v1", "nodes", _, "maintenance"]) => AdminRole::Operator,
        (&Method::POST, ["v1", "node", "handoff"]) => AdminRole::Operator,
        (&Method::DELETE, ["v1", "sessions", _]) => AdminRole::Operator,
        _ => AdminRole::Admin,
    }
}

/// Middleware: resolves the bearer token to a [`Caller`] (401 without a valid one), checks
/// its role against [`required_role`] (403, audited), and hands the caller to the handler.
pub async fn require_token(
    State(ctx): State<Arc<Ctx>>,
    mut request: Request,
    next: Next,
) -> Response {
    let addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| hash_secret(t.trim()));
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token; send `Authorization: Bearer <token>` (`ferry admin` reads \
             admin.token beside its config, --token-file or FERRY_ADMIN_TOKEN)",
        )
        .into_response();
    };
    // Comparing hashes: equal-time comparison of the token itself is not needed.
    let found = if presented == ctx.admin_token_hash {
        Some((INIT_TOKEN_NAME.to_owned(), AdminRole::Admin))
    } else {
        ctx.replica
            .read()
            .admin_token_by_hash(&presented)
            .map(|t| (t.name.clone(), t.role()))
    };
    let Some((token, role)) = found else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unknown or revoked admin token")
            .into_response();
    };
    let note = match operator_note(request.headers()) {
        Ok(note) => note,
        Err(e) => return e.into_response(),
    };
    let caller = Caller {
        token,
        role,
        addr,
        note,
    };
    let needed = required_role(request.method(), request.uri().path());
    if caller.role < needed {
        let what = format!("{} {}", request.method(), request.uri().path());
        let message = format!(
            "admin token {:?} has role {}; {what} needs role {}",
            caller.token,
            role_name(caller.role),
            role_name(needed)
        );
        tracing::warn!(token = %caller.token, addr = ?caller.addr, %what, "admin API call forbidden");
        // Audited through the log: the caller holds a valid token, so this is bounded by
        // what a known operator does, not by what strangers send.
        let denied = Kind::AdminForbidden(cmd::AdminForbidden {
            request: what,
            reason: message.clone(),
        });
        let _ = ctx
            .proposer
            .propose(caller.actor(), caller.source(), denied)
            .await;
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The operator's note from `X-Ferry-Operator`, checked.
fn operator_note(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-ferry-operator") else {
        return Ok(None);
    };
    let note = value.to_str().ok().filter(|v| {
        !v.is_empty() && v.len() <= NOTE_BYTES_MAX && v.chars().all(|c| c.is_ascii_graphic())
    });
    match note {
        Some(note) => Ok(Some(note.to_owned())),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "X-Ferry-Operator must be 1 to {NOTE_BYTES_MAX} printable ASCII characters \
                 without spaces"
            ),
        )),
    }
}

/// A role as the CLI and the API spell it.
pub fn role_name(role: AdminRole) -> &'static str {
    match role {
        AdminRole::Read => "read",
        AdminRole::Operator => "operator",
        AdminRole::Admin => "admin",
        AdminRole::Unspecified => "none",
    }
}

/// Parses a role as the CLI and the API spell it.
pub fn parse_role(name: &str) -> Option<AdminRole> {
    match name {
        "read" => Some(AdminRole::Read),
        "operator" => Some(AdminRole::Operator),
        "admin" => Some(AdminRole::Admin),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_needs_its_role() {
        use AdminRole::*;
        let cases = [
            (Method::GET, "/v1/status", Read),
            (Method::GET, "/v1/users", Read),
            (Method::GET, "/v1/audit", Read),
            (Method::GET, "/v1/sessions", Read),
            (Method::GET, "/v1/tokens", Admin),
            (Method::GET, "/v1/snapshot", Admin),
            (Method::POST, "/v1/tokens", Admin),
            (Method::DELETE, "/v1/tokens/ci", Admin),
            (Method::GET, "/v1/nodes/b1/restart-check", Operator),
            (Method::POST, "/v1/nodes/b1/maintenance", Operator),
            (Method::DELETE, "/v1/nodes/b1/maintenance", Operator),
            (Method::POST, "/v1/node/handoff", Operator),
            (Method::DELETE, "/v1/sessions/12", Operator),
            (Method::POST, "/v1/users", Admin),
            (Method::POST, "/v1/users/alice/disable", Admin),
            (Method::DELETE, "/v1/users/alice", Admin),
            (Method::POST, "/v1/grants", Admin),
            (Method::DELETE, "/v1/hosts/pc1", Admin),
            (Method::POST, "/v1/members", Admin),
            (Method::POST, "/v1/faults/peers", Admin),
            (Method::PUT, "/v1/status", Admin),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
        assert!(
            Read < Operator && Operator < Admin,
            "roles include the lesser ones"
        );
    }
}
