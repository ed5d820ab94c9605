//! The HTTP endpoints next to gRPC: `GET /metrics` (Prometheus text),
//! `GET /health` (200 when this node is a member that knows a leader, 503
//! otherwise; JSON body either way), and the probes `GET /livez` (the
//! process serves) and `GET /readyz` (it is ready to take requests: see
//! [`not_ready`]).

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

/// The paths served here.
const PATHS: [&str; 4] = ["/metrics", "/health", "/livez", "/readyz"];

pub fn routes(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route(PATHS[0], axum::routing::get(metrics))
        .route(PATHS[1], axum::routing::get(health))
        .route(PATHS[2], axum::routing::get(livez))
        .route(PATHS[3], axum::routing::get(readyz))
        .with_state(state)
}

/// With `--metrics-listen ADDRESS`: the same paths on the main port answer
/// 404 saying where they are served (otherwise gRPC would answer them with
/// HTTP 200 and a gRPC error, which a probe takes for "ready").
pub fn moved_to(address: &str) -> axum::Router {
    let message = format!("served on http://{address} (--metrics-listen), not on this port\n");
    PATHS.iter().fold(axum::Router::new(), |router, path| {
        let message = message.clone();
        router.route(
            path,
            axum::routing::get(move || async move { (StatusCode::NOT_FOUND, message) }),
        )
    })
}

/// A ready node has applied all but at most this many entries of those the
/// leader told it are committed.
pub const READY_MAX_APPLY_LAG: u64 = 1_000;

/// Why this node should not be sent requests now, if so: it was removed,
/// its peers belong to another cluster, it knows no leader, it has applied
/// more than [`READY_MAX_APPLY_LAG`] entries less than the leader told it
/// are committed (it is behind), or its disk is out of space (writes
/// refused, NOSPACE).
pub fn not_ready(replica: &Replica) -> Option<String> {
    let status = replica.status();
    if status.role == Role::Removed {
        return Some("removed from the cluster".to_string());
    }
    if let Err(e) = replica.check_cluster_contact(false) {
        return Some(e.to_string());
    }
    if status.leader_id == 0 {
        return Some("no leader known".to_string());
    }
    let lag = status.leader_commit.saturating_sub(status.applied_index);
    if lag > READY_MAX_APPLY_LAG {
        return Some(format!(
            "behind: applied index {} is {lag} entries behind the cluster's commit index {}",
            status.applied_index, status.leader_commit
        ));
    }
    if replica.is_out_of_space() {
        return Some("out of disk space (alarm NOSPACE): writes are refused".to_string());
    }
    if replica.quota_alarm() {
        return Some(
            "the space quota is passed (alarm NOSPACE, --quota-bytes): writes are refused"
                .to_string(),
        );
    }
    None
}

/// How often the gRPC health status (`grpc.health.v1`) is brought in line
/// with [`not_ready`].
const HEALTH_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Keeps the gRPC health service's status for the whole server (service
/// name "") at SERVING while [`not_ready`] finds nothing, NOT_SERVING
/// otherwise; watchers hear each change.
pub async fn report_readiness(replica: Replica, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let status = if not_ready(&replica).is_none() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
        tokio::time::sleep(HEALTH_CHECK_EVERY).await;
    }
}

/// `/livez`: 200 while the process answers.
async fn livez(State(state): State<HttpState>) -> impl IntoResponse {
    let body = serde_json::json!({"status": "ok", "id": state.replica.node_id()});
    json_answer(true, body)
}

/// `/readyz`: 200 when [`not_ready`] finds nothing, 503 with the reason.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let status = state.replica.status();
    let problem = not_ready(&state.replica);
    let body = serde_json::json!({
        "status": if problem.is_none() { "ready" } else { "not ready" },
        "reason": problem,
        "id": status.id,
        "role": status.role.as_str(),
        "leader_id": status.leader_id,
        "commit_index": status.leader_commit,
        "applied_index": status.applied_index,
    });
    json_answer(problem.is_none(), body)
}

/// A JSON body with 200 when `ok`, 503 otherwise.
fn json_answer(ok: bool, body: serde_json::Value) -> axum::response::Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
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
    json_answer(problem.is_none(), body)
}
