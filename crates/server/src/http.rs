//! The HTTP endpoints next to gRPC: `GET /metrics` (Prometheus text) and
//! `GET /health` (200 when this node is a member that knows a leader, 503
//! otherwise; JSON body either way).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use raftkv_replica::{Replica, Role, SnapshotMeta, SnapshotStore};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub replica: Replica,
    pub metrics: Arc<Metrics>,
    pub snapshots: SnapshotStore,
}

pub fn routes(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(health))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let snapshots = state.snapshots.clone();
    let text = state
        .metrics
        .render(&state.replica, move |index, term| {
            snapshots.size_bytes(SnapshotMeta { index, term })
        })
        .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let status = state.replica.status();
    let problem = if status.role == Role::Removed {
        Some("removed from the cluster".to_string())
    } else if let Err(e) = state.replica.check_cluster_contact(false) {
        Some(e.to_string())
    } else if status.leader_id == 0 {
        Some("no leader known".to_string())
    } else {
        None
    };
    let body = serde_json::json!({
        "status": if problem.is_none() { "ok" } else { "unhealthy" },
        "reason": problem,
        "id": status.id,
        "role": status.role.as_str(),
        "term": status.term,
        "leader_id": status.leader_id,
        "applied_index": status.applied_index,
    });
    let code = if problem.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
