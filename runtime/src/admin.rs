//! The node's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (process up) and `/readyz`
//! (online and a member of the cluster), as orchestrators and scrapers expect; and
//! `/cluster/nodes`, the member list as this node sees it (JSON).

use axum::{Router, extract::State, http::StatusCode, routing::get};
use mesh::Cluster;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Clone)]
struct AdminState {
    cluster: Cluster,
    metrics: PrometheusHandle,
}

pub(crate) async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/cluster/nodes", get(cluster_nodes))
        .with_state(AdminState { cluster, metrics });
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
