//! The operator's side of the admin API (docs/DESIGN.md section 6): the cluster's status and
//! status page, the restart gate, maintenance (drain and undrain), and the test-only service
//! switch.

use super::{page, ApiError, ApiResult};
use crate::context::Ctx;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `GET /v1/cluster`: the cluster as this node sees it.
pub(super) async fn cluster(State(ctx): State<Arc<Ctx>>) -> Json<crate::cluster::ClusterStatus> {
    Json(crate::cluster::status(&ctx))
}

/// `GET /status.json`, without the token, for dashboards: the same, redacted (health, roles,
/// counts and problems; no lease holders or overridden checks; never host, user or session
/// names, which the cluster status does not carry).
pub(super) async fn open_status(
    State(ctx): State<Arc<Ctx>>,
) -> Json<crate::cluster::ClusterStatus> {
    Json(crate::cluster::status(&ctx).redacted())
}

/// The status page: the cluster at a glance, refreshing itself (redacted as `/status.json`).
pub(super) async fn status_page(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page::render(&crate::cluster::status(&ctx).redacted()),
    )
        .into_response()
}

impl From<crate::gate::GateError> for ApiError {
    fn from(e: crate::gate::GateError) -> Self {
        use crate::gate::GateError;
        match e {
            GateError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            GateError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            GateError::Refused(answer) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "restart gate refused {}: {}",
                    answer.verdict.node,
                    answer.verdict.failures().join("; ")
                ),
            ),
        }
    }
}

/// `GET /v1/nodes/{node}/restart-check`: the gate's verdict, evaluated on the leader. 200
/// whether allowed or not (`verdict.allowed` says); 404 for an unknown node; 503 when no
/// leader can answer.
pub(super) async fn restart_check(
    State(ctx): State<Arc<Ctx>>,
    axum::extract::Path(node): axum::extract::Path<String>,
) -> ApiResult<crate::gate::GateAnswer> {
    Ok(Json(crate::gate::restart_check(&ctx, &node).await?))
}

#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Take the lease even though checks fail: loud, and audited with the failed checks.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/nodes/{node}/maintenance`: takes the maintenance lease through Raft when the
/// gate allows it (or `force`); the node then drains itself. 409 with the verdict when
/// refused.
pub(super) async fn drain(
    State(ctx): State<Arc<Ctx>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    axum::Extension(caller): axum::Extension<super::Caller>,
    Json(req): Json<DrainRequest>,
) -> Response {
    let actor = caller.actor();
    match crate::gate::acquire(&ctx, &node, &actor, req.force).await {
        Ok(answer) => Json(answer).into_response(),
        Err(crate::gate::GateError::Refused(answer)) => {
            let message = ApiError::from(crate::gate::GateError::Refused(answer.clone())).message;
            (
                StatusCode::CONFLICT,
                Json(serde_json::json!({ "error": message, "answer": answer })),
            )
                .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /v1/nodes/{node}/maintenance`: releases the lease; the node serves again.
pub(super) async fn undrain(
    State(ctx): State<Arc<Ctx>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    axum::Extension(caller): axum::Extension<super::Caller>,
) -> ApiResult<serde_json::Value> {
    let actor = caller.actor();
    crate::gate::release(
        &ctx,
        &node,
        0,
        &actor,
        &caller.source(),
        format!("undrained by {actor}"),
    )
    .await
    .map_err(|e| {
        let status = match &e {
            crate::gate::ReleaseError::NoLease(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    })?;
    Ok(Json(serde_json::json!({ "node": node, "released": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceFault {
    service: String,
    /// true: stop it and keep it stopped; false: let its supervisor start it again.
    stopped: bool,
}

/// Test-only: stops one of this node's services (or lets it run again), so that tests can
/// create the incident's condition — a node silently lacking a service — in a real process.
pub(super) async fn set_service_fault(
    State(ctx): State<Arc<Ctx>>,
    Json(req): Json<ServiceFault>,
) -> ApiResult<serde_json::Value> {
    if !ctx.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "fault injection is disabled on this node ([faults] enabled = true is for tests only)",
        ));
    }
    if !ctx.health.services.hold(&req.service, req.stopped) {
        let known: Vec<String> = ctx
            .health
            .services
            .snapshot()
            .into_iter()
            .map(|s| s.name)
            .collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no supervised service {:?} on this node; services: {}",
                req.service,
                known.join(", ")
            ),
        ));
    }
    tracing::warn!(service = %req.service, stopped = req.stopped, "fault injection: service switch");
    Ok(Json(
        serde_json::json!({ "service": req.service, "stopped": req.stopped }),
    ))
}
