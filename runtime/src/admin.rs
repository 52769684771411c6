//! The node's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (process up) and `/readyz`
//! (online and a member of the cluster), as orchestrators and scrapers expect.

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
