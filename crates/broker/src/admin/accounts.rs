//! What the admin API grants and withdraws: users (add, disable, enable, remove, password,
//! tokens), hosts (enroll, remove, re-enroll), grants (with the services they allow),
//! sessions (list, kill) and named admin tokens. Every change goes through the log with the
//! caller's token as actor and its address as source; withdrawals end live access on every
//! broker (`crate::withdraw`).

use super::access::{parse_role, role_name, Caller};
use super::{propose, ApiError, ApiResult};
use crate::context::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_state::hash_secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct AddUser {
    pub name: String,
    pub groups: Vec<String>,
    pub password: String,
}

/// Longest reason accepted for killing a session (it goes into the audit log).
const KILL_REASON_BYTES_MAX: usize = 200;

/// Checks a new password's length and hashes it with argon2id off the async threads.
pub async fn hash_new_password(password: String) -> Result<String, ApiError> {
    if let Some(problem) = crate::auth::new_password_problem(&password) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, problem));
    }
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub(super) async fn add_user(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<AddUser>,
) -> ApiResult<serde_json::Value> {
    let password_hash = hash_new_password(req.password).await?;
    propose(
        &ctx,
        &caller,
        Kind::AddUser(cmd::AddUser {
            name: req.name.clone(),
            groups: req.groups.clone(),
            password_hash,
        }),
    )
    .await?;
    Ok(Json(
        serde_json::json!({ "name": req.name, "groups": req.groups }),
    ))
}

pub(super) async fn list_users(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    let users: Vec<_> = state
        .users()
        .map(|u| {
            serde_json::json!({
                "name": u.name, "groups": u.groups, "disabled": u.disabled,
                "failed_logins": u.failed_logins,
            })
        })
        .collect();
    Json(serde_json::json!({ "users": users }))
}

/// `POST /v1/users/{name}/disable`: the user can no longer log in, list or open sessions;
/// their live sessions end on every broker.
pub(super) async fn disable_user(
    state: State<Arc<Ctx>>,
    caller: Extension<Caller>,
    name: Path<String>,
) -> ApiResult<serde_json::Value> {
    set_disabled(state, caller, name, true).await
}

/// `POST /v1/users/{name}/enable`: undoes `disable`.
pub(super) async fn enable_user(
    state: State<Arc<Ctx>>,
    caller: Extension<Caller>,
    name: Path<String>,
) -> ApiResult<serde_json::Value> {
    set_disabled(state, caller, name, false).await
}

async fn set_disabled(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    disabled: bool,
) -> ApiResult<serde_json::Value> {
    let kind = Kind::SetUserDisabled(cmd::SetUserDisabled {
        name: name.clone(),
        disabled,
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(
        serde_json::json!({ "name": name, "disabled": disabled }),
    ))
}

/// `DELETE /v1/users/{name}`: the user and their tokens are gone; their sessions end.
pub(super) async fn remove_user(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let kind = Kind::RemoveUser(cmd::RemoveUser { name: name.clone() });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({ "name": name, "removed": true })))
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

/// `PUT /v1/users/{name}/password`: a new password (the old one stops working; tokens and
/// sessions stay: revoke them with `DELETE /v1/users/{name}/tokens`).
pub(super) async fn set_password(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(req): Json<SetPassword>,
) -> ApiResult<serde_json::Value> {
    let password_hash = hash_new_password(req.password).await?;
    let kind = Kind::SetPassword(cmd::SetPassword {
        name: name.clone(),
        password_hash,
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({ "name": name, "password": "set" })))
}

/// `DELETE /v1/users/{name}/tokens`: every login token of the user stops working, and the
/// sessions they opened end.
pub(super) async fn revoke_user_tokens(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let kind = Kind::RevokeUserTokens(cmd::RevokeUserTokens { user: name.clone() });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(
        serde_json::json!({ "user": name, "tokens": "revoked" }),
    ))
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EnrollHost {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Deserialize, Serialize, Debug)]
pub struct Enrollment {
    pub name: String,
    pub token: String,
    pub expires_at_ms: u64,
}

pub(super) async fn enroll_host(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<EnrollHost>,
) -> ApiResult<Enrollment> {
    let token = crate::auth::new_secret();
    let expires_at_ms = crate::now_ms() + ctx.config.limits.enrollment_ttl_secs * 1000;
    propose(
        &ctx,
        &caller,
        Kind::CreateHost(cmd::CreateHost {
            name: req.name.clone(),
            groups: req.groups,
            enrollment_token_hash: hash_secret(&token),
            enrollment_expires_at_ms: expires_at_ms,
        }),
    )
    .await?;
    Ok(Json(Enrollment {
        name: req.name,
        token,
        expires_at_ms,
    }))
}

/// `POST /v1/hosts/{name}/re-enroll`: a new one-time token; the old credential is dead at
/// once (its agent is disconnected, its sessions end).
pub(super) async fn re_enroll_host(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Enrollment> {
    let token = crate::auth::new_secret();
    let expires_at_ms = crate::now_ms() + ctx.config.limits.enrollment_ttl_secs * 1000;
    let kind = Kind::ReEnrollHost(cmd::ReEnrollHost {
        name: name.clone(),
        enrollment_token_hash: hash_secret(&token),
        enrollment_expires_at_ms: expires_at_ms,
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(Enrollment {
        name,
        token,
        expires_at_ms,
    }))
}

/// `DELETE /v1/hosts/{name}`: the host is forgotten; its agent is disconnected and refused
/// everywhere, its sessions end.
pub(super) async fn remove_host(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let kind = Kind::RemoveHost(cmd::RemoveHost { name: name.clone() });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({ "name": name, "removed": true })))
}

pub(super) async fn list_hosts(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    let hosts: Vec<_> = state
        .hosts()
        .map(|h| {
            let attached = ctx.sessions.hosts.get(&h.name);
            serde_json::json!({
                "name": h.name, "groups": h.groups,
                "enrolled": h.enrollment() == ferry_state::EnrollmentState::Enrolled,
                "attached_broker": h.attached_broker,
                // Replicated presence: attached to some broker of the cluster.
                "connected": attached.is_some() || !h.attached_broker.is_empty(),
                "services": attached.map(|a| a.services).unwrap_or_default(),
            })
        })
        .collect();
    Json(serde_json::json!({ "hosts": hosts }))
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct AddGrant {
    pub user_group: String,
    pub host_group: String,
    /// The services allowed; absent or empty allows every service.
    #[serde(default)]
    pub services: Vec<String>,
}

/// `POST /v1/grants`: users of `user_group` may open sessions to `services` (all when empty)
/// of hosts in `host_group`. Granting again replaces the services; narrowing them ends the
/// sessions to the others.
pub(super) async fn add_grant(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<AddGrant>,
) -> ApiResult<AddGrant> {
    propose(
        &ctx,
        &caller,
        Kind::AddGrant(cmd::AddGrant {
            user_group: req.user_group.clone(),
            host_group: req.host_group.clone(),
            services: req.services.clone(),
        }),
    )
    .await?;
    Ok(Json(req))
}

/// `DELETE /v1/grants/{user_group}/{host_group}`: the grant is gone; sessions it allowed end.
pub(super) async fn remove_grant(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path((user_group, host_group)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let kind = Kind::RemoveGrant(cmd::RemoveGrant {
        user_group: user_group.clone(),
        host_group: host_group.clone(),
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({
        "user_group": user_group, "host_group": host_group, "removed": true
    })))
}

pub(super) async fn list_grants(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    let grants: Vec<_> = state
        .grants()
        .map(|g| {
            serde_json::json!({
                "user_group": g.user_group, "host_group": g.host_group, "services": g.services,
            })
        })
        .collect();
    Json(serde_json::json!({ "grants": grants }))
}

pub(super) async fn list_sessions(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    let sessions: Vec<_> = state
        .sessions()
        .map(|s| {
            let status = if !s.withdrawn.is_empty() {
                "ending"
            } else if s.detached_at_ms == 0 {
                "relaying"
            } else {
                "waiting_for_resume"
            };
            serde_json::json!({
                "id": s.id, "user": s.user, "host": s.host, "service": s.service,
                "broker": s.broker, "opened_at_ms": s.opened_at_ms,
                "state": status,
                "detached_at_ms": s.detached_at_ms, "resumes": s.resumes,
                "withdrawn": s.withdrawn,
            })
        })
        .collect();
    Json(serde_json::json!({ "sessions": sessions }))
}

#[derive(Deserialize, Debug)]
pub(super) struct KillQuery {
    #[serde(default)]
    reason: String,
}

/// `DELETE /v1/sessions/{id}?reason=...`: ends a session on every broker that carries it,
/// relayed or waiting for a resume.
pub(super) async fn kill_session(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<KillQuery>,
) -> ApiResult<serde_json::Value> {
    if q.reason.len() > KILL_REASON_BYTES_MAX || q.reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a reason is at most {KILL_REASON_BYTES_MAX} bytes, without control characters"
            ),
        ));
    }
    let kind = Kind::KillSession(cmd::KillSession {
        session_id: id,
        reason: q.reason.clone(),
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(
        serde_json::json!({ "id": id, "killed": true, "reason": q.reason }),
    ))
}

#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// "read", "operator" or "admin".
    pub role: String,
}

/// `POST /v1/tokens`: a named admin token; the answer holds the token, shown this once.
pub(super) async fn create_token(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<CreateToken>,
) -> ApiResult<serde_json::Value> {
    let Some(role) = parse_role(&req.role) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown role {:?}; a role is read, operator or admin",
                req.role
            ),
        ));
    };
    if req.name == super::access::INIT_TOKEN_NAME {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the name \"init\" belongs to the token `ferry init` wrote",
        ));
    }
    let token = crate::auth::new_secret();
    let kind = Kind::CreateAdminToken(cmd::CreateAdminToken {
        name: req.name.clone(),
        role: role as i32,
        token_hash: hash_secret(&token),
    });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({
        "name": req.name, "role": role_name(role), "token": token
    })))
}

/// `GET /v1/tokens`: names, roles, creators; never the tokens.
pub(super) async fn list_tokens(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    let mut tokens = vec![serde_json::json!({
        "name": super::access::INIT_TOKEN_NAME, "role": "admin", "created_by": "ferry init",
        "created_at_ms": 0,
    })];
    tokens.extend(state.admin_tokens().map(|t| {
        serde_json::json!({
            "name": t.name, "role": role_name(t.role()), "created_by": t.created_by,
            "created_at_ms": t.created_at_ms,
        })
    }));
    Json(serde_json::json!({ "tokens": tokens }))
}

/// `DELETE /v1/tokens/{name}`: the named token stops working at once on every node.
pub(super) async fn revoke_token(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    if name == super::access::INIT_TOKEN_NAME {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the init token lives in each node's configuration (`admin_token_file`): replace \
             admin.token and that hash on every node to rotate it (docs/OPERATIONS.md)",
        ));
    }
    let kind = Kind::RevokeAdminToken(cmd::RevokeAdminToken { name: name.clone() });
    propose(&ctx, &caller, kind).await?;
    Ok(Json(serde_json::json!({ "name": name, "revoked": true })))
}
