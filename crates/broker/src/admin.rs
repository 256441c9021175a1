//! The admin API: HTTP+JSON for operators and `ferry admin`, plus health and metrics.
//!
//! `/v1/*` requires a bearer token whose role allows the request (`admin/access.rs`).
//! `/healthz`, `/readyz` and `/metrics` are open, because probes and scrapers rarely carry
//! secrets; they reveal no secrets either.

use crate::context::Ctx;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use ferry_proto::state::command::Kind;
use ferry_replica::ProposeError;
use ferry_state::{Outcome, RefusalKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;

mod access;
mod accounts;
mod backup;
mod listener;
mod members;
mod operations;
mod page;
pub use access::{parse_role, required_role, role_name, Caller, INIT_TOKEN_NAME};
pub use accounts::{AddGrant, AddUser, CreateToken, EnrollHost, Enrollment, SetPassword};
pub use members::{MemberStatus, Members};

/// Prefix of the audit log's actor for admin API calls: `token:<name of the bearer token>`.
const ADMIN_ACTOR: &str = "token";

/// Service "admin": serves the admin API on `listener`, or (restarted) binds the admin
/// address again.
pub(crate) async fn serve(
    listener: Option<tokio::net::TcpListener>,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let listener = match listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(ctx.config.admin_listen())
            .await
            .map_err(|e| {
                format!(
                    "cannot bind the admin API on {}: {e}",
                    ctx.config.admin_listen()
                )
            })?,
    };
    let app = router(ctx.clone());
    listener::serve(listener, ctx, app, shutdown).await
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/users",
            get(accounts::list_users).post(accounts::add_user),
        )
        .route("/v1/users/{name}", delete(accounts::remove_user))
        .route("/v1/users/{name}/disable", post(accounts::disable_user))
        .route("/v1/users/{name}/enable", post(accounts::enable_user))
        .route("/v1/users/{name}/password", put(accounts::set_password))
        .route(
            "/v1/users/{name}/tokens",
            delete(accounts::revoke_user_tokens),
        )
        .route(
            "/v1/hosts",
            get(accounts::list_hosts).post(accounts::enroll_host),
        )
        .route("/v1/hosts/{name}", delete(accounts::remove_host))
        .route("/v1/hosts/{name}/re-enroll", post(accounts::re_enroll_host))
        .route(
            "/v1/grants",
            get(accounts::list_grants).post(accounts::add_grant),
        )
        .route(
            "/v1/grants/{user_group}/{host_group}",
            delete(accounts::remove_grant),
        )
        .route("/v1/sessions", get(accounts::list_sessions))
        .route("/v1/sessions/{id}", delete(accounts::kill_session))
        .route(
            "/v1/tokens",
            get(accounts::list_tokens).post(accounts::create_token),
        )
        .route("/v1/tokens/{name}", delete(accounts::revoke_token))
        .route("/v1/audit", get(audit))
        .route("/v1/snapshot", get(backup::save))
        .route("/v1/state/digest", get(state_digest))
        .route("/v1/members", get(members::list).post(members::add))
        .route("/v1/members/{node}", axum::routing::delete(members::remove))
        .route(
            "/v1/members/{node}/promote",
            axum::routing::post(members::promote),
        )
        .route("/v1/faults/peers", axum::routing::post(set_peer_faults))
        .route("/v1/node/handoff", axum::routing::post(handoff))
        .route("/v1/cluster", get(operations::cluster))
        .route(
            "/v1/nodes/{node}/restart-check",
            get(operations::restart_check),
        )
        .route(
            "/v1/nodes/{node}/maintenance",
            axum::routing::post(operations::drain).delete(operations::undrain),
        )
        .route(
            "/v1/faults/services",
            axum::routing::post(operations::set_service_fault),
        )
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            access::require_token,
        ));
    Router::new()
        .route("/", get(operations::status_page))
        .route("/status.json", get(operations::open_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(ctx)
}

/// An API error: a status and a sentence, sent as `{"error": "..."}`.
pub struct ApiError {
    status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// How many JSON bodies [`decode_json_body`] knows.
pub const JSON_BODIES: usize = 14;

/// Decodes `bytes` as the JSON body number `index` (modulo [`JSON_BODIES`]) of those this API
/// takes in (and `ferry admin` reads back), as the handlers' extractors do: for the tests and
/// fuzz targets of network input (`crates/input-check`), which must reach every one.
pub fn decode_json_body(index: usize, bytes: &[u8]) -> Result<(), serde_json::Error> {
    use serde_json::from_slice as de;
    match index % JSON_BODIES {
        0 => de::<accounts::AddUser>(bytes).map(drop),
        1 => de::<accounts::SetPassword>(bytes).map(drop),
        2 => de::<accounts::EnrollHost>(bytes).map(drop),
        3 => de::<accounts::AddGrant>(bytes).map(drop),
        4 => de::<accounts::CreateToken>(bytes).map(drop),
        5 => de::<members::AddMember>(bytes).map(drop),
        6 => de::<operations::DrainRequest>(bytes).map(drop),
        7 => de::<operations::ServiceFault>(bytes).map(drop),
        8 => de::<PeerFaults>(bytes).map(drop),
        9 => de::<HandoffRequest>(bytes).map(drop),
        10 => de::<serde_json::Value>(bytes).map(drop),
        11 => de::<NodeStatus>(bytes).map(drop),
        12 => de::<members::Members>(bytes).map(drop),
        _ => de::<crate::cluster::ClusterStatus>(bytes).map(drop),
    }
}

/// Proposes an admin command on behalf of `caller` and maps a refusal to an HTTP status.
async fn propose(ctx: &Ctx, caller: &Caller, kind: Kind) -> Result<Outcome, ApiError> {
    match ctx
        .proposer
        .propose(caller.actor(), caller.source(), kind)
        .await?
    {
        Outcome::Refused(r) => {
            let status = match r.kind {
                RefusalKind::Invalid => StatusCode::BAD_REQUEST,
                RefusalKind::NotFound => StatusCode::NOT_FOUND,
                RefusalKind::AlreadyExists | RefusalKind::AlreadyUsed => StatusCode::CONFLICT,
                RefusalKind::PermissionDenied => StatusCode::FORBIDDEN,
                RefusalKind::Expired => StatusCode::GONE,
            };
            Err(ApiError::new(status, r.message))
        }
        outcome => Ok(outcome),
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub running: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NodeStatus {
    pub node_id: String,
    pub cluster_name: String,
    pub role: String,
    pub version: String,
    pub uptime_secs: u64,
    pub relay_addr: String,
    pub admin_addr: String,
    pub applied_index: u64,
    pub raft: RaftStatus,
    pub services: Vec<ServiceStatus>,
    pub hosts_attached: Vec<String>,
    pub sessions_relayed: u64,
    pub sessions_max: usize,
    pub users: usize,
    pub hosts: usize,
    pub hosts_enrolled: usize,
    pub grants: usize,
    pub sessions_open: usize,
    pub audit_records: usize,
    /// When this node's certificate and its trusted CA stop being valid.
    #[serde(default)]
    pub certificates: crate::certificates::Expiry,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RaftStatus {
    pub id: u64,
    /// "leader" or "follower" (a candidate reports "follower" until it wins).
    pub role: String,
    pub term: u64,
    /// Raft id of the leader this node knows of, 0 if none.
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub snapshots_installed: u64,
    /// The configuration as this node last applied it.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Milliseconds since this node last heard from a leader (0 on the leader; absent if never).
    pub leader_contact_ms_ago: Option<u64>,
}

fn raft_status(ctx: &Ctx) -> RaftStatus {
    use std::sync::atomic::Ordering::Acquire;
    let s = ctx.replica.status();
    let membership = ctx.replica.membership();
    RaftStatus {
        id: ctx.replica.raft_id(),
        role: if s.is_leader.load(Acquire) {
            "leader"
        } else {
            "follower"
        }
        .into(),
        term: s.term.load(Acquire),
        leader: s.leader.load(Acquire),
        commit: s.commit.load(Acquire),
        applied: s.applied.load(Acquire),
        snapshots_installed: s.snapshots_installed.load(Acquire),
        voters: membership.voters,
        learners: membership.learners,
        leader_contact_ms_ago: ctx
            .replica
            .since_leader_contact()
            .map(|d| d.as_millis() as u64),
    }
}

fn services(ctx: &Ctx) -> Vec<ServiceStatus> {
    ctx.health
        .services
        .snapshot()
        .into_iter()
        .map(|s| ServiceStatus {
            running: s.state == ferry_gate::ServiceState::Running,
            name: s.name,
        })
        .collect()
}

pub fn node_status(ctx: &Ctx) -> NodeStatus {
    let counts = ctx.replica.read().counts();
    NodeStatus {
        node_id: ctx.config.node_id.clone(),
        cluster_name: ctx.config.cluster_name.clone(),
        role: ctx.config.role.name().into(),
        version: crate::build_info::describe(),
        uptime_secs: ctx.health.started.elapsed().as_secs(),
        relay_addr: ctx.config.relay_addr.to_string(),
        admin_addr: ctx.config.admin_addr.to_string(),
        applied_index: ctx.replica.applied_index(),
        raft: raft_status(ctx),
        services: services(ctx),
        hosts_attached: ctx.sessions.hosts.names(),
        sessions_relayed: ctx.metrics.sessions_open.get().max(0) as u64,
        sessions_max: ctx.config.limits.sessions_max,
        users: counts.users,
        hosts: counts.hosts,
        hosts_enrolled: counts.hosts_enrolled,
        grants: counts.grants,
        sessions_open: counts.sessions_open,
        audit_records: counts.audit_records,
        certificates: ctx.health.certificates,
    }
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<NodeStatus> {
    Json(node_status(&ctx))
}

/// Ready when this node is healthy: every service running, in contact with the leader, caught
/// up, storage writable, not quarantined, memory under its limit. Else 503 and the list.
async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let problems = crate::cluster::own_problems(&ctx);
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}\n{}\n",
                ctx.config.node_id,
                problems.join("\n")
            ),
        )
            .into_response()
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    crate::cluster::refresh_metrics(&ctx, &crate::health::local_report(&ctx));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

/// The applied index and a digest of the whole applied state: two nodes at the same applied
/// index must have the same digest (the corruption trials compare them).
async fn state_digest(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let state = ctx.replica.read();
    Json(serde_json::json!({
        "node_id": ctx.config.node_id,
        "raft_id": ctx.replica.raft_id(),
        "applied": ctx.replica.applied_index(),
        "digest": hex::encode(state.digest()),
    }))
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// Largest page of audit records one request returns.
const AUDIT_PAGE_MAX: usize = 1000;

async fn audit(
    State(ctx): State<Arc<Ctx>>,
    Query(q): Query<AuditQuery>,
) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(AUDIT_PAGE_MAX).min(AUDIT_PAGE_MAX);
    let state = ctx.replica.read();
    let records: Vec<_> = state
        .audit_after(q.after, limit)
        .map(|r| {
            serde_json::json!({
                "seq": r.seq, "at_ms": r.at_ms, "actor": r.actor, "source": r.source,
                "action": r.action, "target": r.target, "outcome": r.outcome,
            })
        })
        .collect();
    Json(serde_json::json!({ "records": records }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFaults {
    /// Node ids to cut this node off from; empty heals.
    blocked: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffRequest {
    /// The broker to send endpoints to; chosen by the node when absent.
    to: Option<String>,
    /// How long to wait for this node to carry no session (default 30 s).
    wait_secs: Option<u64>,
}

/// Hands this node's host agents and clients off to another broker (live drain). The operator
/// interface (`ferry admin drain`, with the maintenance lease and the restart gate) builds on
/// it; on its own it is the mechanism, and what tests trigger.
async fn handoff(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<HandoffRequest>,
) -> ApiResult<crate::handoff::HandoffReport> {
    let wait = std::time::Duration::from_secs(req.wait_secs.unwrap_or(30))
        .min(crate::handoff::HANDOFF_WAIT_MAX);
    crate::handoff::hand_off(&ctx, req.to.as_deref(), wait)
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

/// Test-only: partitions this node from chosen peers (both directions of traffic it handles).
async fn set_peer_faults(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<PeerFaults>,
) -> ApiResult<serde_json::Value> {
    if !ctx.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "fault injection is disabled on this node ([faults] enabled = true is for tests only)",
        ));
    }
    let Some(peers) = &ctx.peers else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this node has no peers",
        ));
    };
    let unknown = peers.set_blocked(&req.blocked);
    if !unknown.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown peers: {}", unknown.join(", ")),
        ));
    }
    tracing::warn!(blocked = ?req.blocked, "fault injection: peer traffic blocked");
    Ok(Json(serde_json::json!({ "blocked": req.blocked })))
}
