//! The node's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (process up) and `/readyz`
//! (online and a member of the cluster), as orchestrators and scrapers expect;
//! `/cluster/nodes`, the member list as this node sees it (JSON); and the drain operations
//! `GET /admin/drain` (status), `POST /admin/drain?grace_ms=N` and `POST /admin/undrain`, which
//! take `Authorization: Bearer <--admin-token>` (refused when no token is configured).

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use mesh::Cluster;
use serde::Deserialize;

use crate::drain::{DrainControl, DrainStatus};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) cluster: Cluster,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) drains: DrainControl,
    pub(crate) token: Option<String>,
}

pub(crate) async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/cluster/nodes", get(cluster_nodes))
        .route("/admin/drain", get(drain_status).post(drain))
        .route("/admin/undrain", post(undrain))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        warn!(%error, "admin endpoint stopped");
    }
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

async fn cluster_nodes(State(state): State<AdminState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let nodes: Vec<serde_json::Value> = state
        .cluster
        .members()
        .values()
        .map(|n| {
            serde_json::json!({
                "id": n.id.as_str(),
                "kind": n.kind.as_str(),
                "state": n.state.as_str(),
                "grpc": n.grpc_addr.to_string(),
                "client": n.client_addr,
                "routes": n.routes,
                "public_routes": n.public_routes,
                "load": {
                    "sessions": n.load.sessions,
                    "rooms": n.load.rooms,
                    "in_flight": n.load.in_flight,
                    "capacity": n.load.capacity,
                },
                "version": n.version,
                "started_at_ms": n.started_at_ms,
            })
        })
        .collect();
    let body = serde_json::json!({ "self": state.cluster.self_id().as_str(), "nodes": nodes });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if !state.cluster.is_self_online() {
        (StatusCode::SERVICE_UNAVAILABLE, "offline: draining\n")
    } else if !state.cluster.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet a member of the cluster\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Checks the bearer token (in constant time); the refusal to send when it is wrong.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(expected) = &state.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "drain operations are off: no --admin-token is configured\n",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <token>)\n",
        ))
    }
}

fn status_json(state: &AdminState, status: DrainStatus) -> Response {
    let status = crate::node::admin_status(&state.cluster, status);
    let body = serde_json::json!({
        "node_id": status.node_id,
        "state": status.state,
        "grace_left_ms": status.grace_left_ms,
        "holding": status.holding,
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn drain_status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    status_json(&state, state.drains.status())
}

#[derive(Deserialize)]
struct DrainQuery {
    grace_ms: Option<u64>,
}

async fn drain(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    let Ok(Query(query)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "grace_ms must be a number of milliseconds\n",
        )
            .into_response();
    };
    let grace = query
        .grace_ms
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis);
    status_json(&state, state.drains.drain(grace))
}

async fn undrain(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    match state.drains.undrain() {
        Ok(status) => status_json(&state, status),
        Err(refused) => (StatusCode::CONFLICT, format!("{refused}\n")).into_response(),
    }
}
