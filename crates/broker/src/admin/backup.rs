//! `GET /v1/snapshot`: a backup of the replicated state (crates/state/src/backup.rs's file),
//! streamed. A read index first, so that it holds every write acknowledged before the request;
//! then one copy of the state taken under the read lock (consistent at one applied index) and
//! encoded row by row while the response is sent, so the file is never built in memory.
//! Admin role: it carries password and token hashes.

use super::{ApiError, Caller};
use crate::context::Ctx;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long the read index may take before the save is refused.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn save(
    State(ctx): State<Arc<Ctx>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Err(e) = ctx.replica.read_index(READ_INDEX_TIMEOUT).await {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node could not confirm it holds every committed write ({e}); no backup \
                 was taken: ask another node, or wait for the cluster to have a leader"
            ),
        )
        .into_response();
    }
    let (snapshot, applied_index) = {
        let state = ctx.replica.read();
        (state.snapshot(), ctx.replica.applied_index())
    };
    let header = ferry_state::BackupHeader {
        format_version: ferry_state::backup::BACKUP_FORMAT_VERSION,
        cluster_name: ctx.config.cluster_name.clone(),
        node_id: ctx.config.node_id.clone(),
        applied_index,
        term: ctx
            .replica
            .status()
            .term
            .load(std::sync::atomic::Ordering::Acquire),
        created_at_ms: crate::now_ms(),
        ferry_version: crate::build_info::describe(),
    };
    tracing::warn!(actor = %caller.actor(), source = %caller.source(), applied_index,
        "backup of the replicated state taken");
    let (writer, first) = ferry_state::backup::Writer::start(&header);
    let pieces = Pieces {
        first: Some(first),
        rows: Box::new(ferry_state::backup::snapshot_pieces(snapshot)),
        writer: Some(writer),
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ferry.backup\"",
            ),
        ],
        Body::new(pieces),
    )
        .into_response()
}

/// The backup file as a response body: the first bytes, one frame per body piece, the
/// trailer; each encoded when the connection asks for more.
struct Pieces {
    first: Option<Vec<u8>>,
    rows: Box<dyn Iterator<Item = Vec<u8>> + Send>,
    writer: Option<ferry_state::backup::Writer>,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = if let Some(first) = self.first.take() {
            Some(first)
        } else if let Some(piece) = self.rows.next() {
            let writer = self
                .writer
                .as_mut()
                .expect("taken only after the last piece");
            Some(writer.body(&piece))
        } else {
            self.writer.take().map(|w| w.finish())
        };
        Poll::Ready(next.map(|bytes| Ok(http_body::Frame::data(Bytes::from(bytes)))))
    }
}
