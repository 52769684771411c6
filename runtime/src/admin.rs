//! The node's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (process up) and `/readyz`
//! (online and a member of the cluster), as orchestrators and scrapers expect;
//! `/cluster/nodes`, the member list as this node sees it (JSON); the drain operations of this
//! node, `GET /admin/drain` (status), `POST /admin/drain?grace_ms=N` and `POST /admin/undrain`;
//! and the cluster admin API under `/admin/cluster/` (JSON in and out, see `docs/ADMIN.md`):
//! `POST init`, `register`, `purge`, `drain`, `undrain`, `GET nodes`, `rooms`. Everything under
//! `/admin/` takes `Authorization: Bearer <--admin-token>` (refused when no token is
//! configured). The cluster operations themselves are in `cluster_admin.rs`, shared with the
//! gRPC `Admin` service; this file only translates HTTP.

use std::future::Future;

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use proto::admin::v1 as admin_pb;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::cluster_admin::{AdminError, ClusterAdmin, Elsewhere, grace, path};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Mesh command of the cluster admin API's ListRooms, which every member is asked (nodes
/// without a handler host no rooms). The payload is JSON (`{}`); the answer a JSON array of
/// the node's rooms, each `{"room_id", "host", "members": [user ids], "gateways": [node ids]}`.
/// The runtime merges the arrays without reading them further, so it knows no room type.
pub const LIST_ROOMS: u32 = 0x1320;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) ops: ClusterAdmin,
    pub(crate) metrics: PrometheusHandle,
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
        .route(path::INIT, post(with_body(cluster_init)))
        .route(path::REGISTER, post(with_body(cluster_register)))
        .route(path::PURGE, post(with_body(cluster_purge)))
        .route(path::DRAIN, post(with_body(cluster_drain)))
        .route(path::UNDRAIN, post(with_body(cluster_undrain)))
        .route(path::NODES, get(cluster_list_nodes))
        .route(path::ROOMS, get(cluster_list_rooms))
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

async fn cluster_nodes(State(state): State<AdminState>) -> Response {
    let cluster = &state.ops.cluster;
    let nodes: Vec<serde_json::Value> = cluster
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
    let body = serde_json::json!({ "self": cluster.self_id().as_str(), "nodes": nodes });
    json(StatusCode::OK, &body)
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    let cluster = &state.ops.cluster;
    if cluster.is_fenced() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "fenced: out of touch with the majority of the regular nodes\n",
        )
    } else if !cluster.is_self_online() {
        (StatusCode::SERVICE_UNAVAILABLE, "offline: draining\n")
    } else if !cluster.is_ready() {
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
            "admin operations are off: no --admin-token is configured\n",
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

fn drain_json(status: admin_pb::DrainStatus) -> Response {
    json(StatusCode::OK, &drain_body(status))
}

async fn drain_status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    drain_json(state.ops.drain_status(state.ops.drains.status()))
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
    drain_json(state.ops.drain_here(grace(query.grace_ms.unwrap_or(0))))
}

async fn undrain(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    match state.ops.undrain_here() {
        Ok(status) => drain_json(status),
        Err(refused) => (StatusCode::CONFLICT, format!("{refused}\n")).into_response(),
    }
}

#[derive(Deserialize)]
struct InitBody {
    nodes: Vec<String>,
}

#[derive(Deserialize)]
struct RegisterBody {
    contact: String,
}

/// The body of purge, drain and undrain.
#[derive(Deserialize)]
struct NodeBody {
    node: String,
    #[serde(default)]
    grace_ms: Option<u64>,
}

/// What a cluster operation that changes something answers.
#[derive(Serialize)]
struct Done {
    ok: bool,
}

const DONE: Done = Done { ok: true };

/// A cluster operation's handler: parses the request's JSON body as `B` and runs `op` with
/// it, once the caller is authorized.
fn with_body<B, T, F, Fut>(
    op: F,
) -> impl Fn(State<AdminState>, HeaderMap, Bytes) -> Answering + Clone + Send + Sync + 'static
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(ClusterAdmin, B) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, AdminError>> + Send + 'static,
{
    move |State(state): State<AdminState>, headers: HeaderMap, body: Bytes| {
        let op = op.clone();
        Box::pin(async move {
            let ops = state.ops.clone();
            answer(&state, &headers, async {
                op(ops, parse::<B>(&body)?).await
            })
            .await
        })
    }
}

/// What a handler made by [`with_body`] returns.
type Answering = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

async fn cluster_init(ops: ClusterAdmin, body: InitBody) -> Result<Done, AdminError> {
    ops.init(&body.nodes).await.map(|()| DONE)
}

async fn cluster_register(ops: ClusterAdmin, body: RegisterBody) -> Result<Done, AdminError> {
    ops.register(&body.contact).await.map(|()| DONE)
}

async fn cluster_purge(ops: ClusterAdmin, body: NodeBody) -> Result<Done, AdminError> {
    ops.purge(&body.node).await.map(|()| DONE)
}

async fn cluster_drain(ops: ClusterAdmin, body: NodeBody) -> Result<serde_json::Value, AdminError> {
    let grace = grace(body.grace_ms.unwrap_or(0));
    ops.drain(&body.node, grace).map(drain_body)
}

async fn cluster_undrain(
    ops: ClusterAdmin,
    body: NodeBody,
) -> Result<serde_json::Value, AdminError> {
    ops.undrain(&body.node).map(drain_body)
}

async fn cluster_list_nodes(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    answer(&state, &headers, async { Ok(state.ops.nodes()) }).await
}

async fn cluster_list_rooms(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    answer(&state, &headers, async { Ok(state.ops.rooms().await) }).await
}

/// A drain status as JSON.
fn drain_body(status: admin_pb::DrainStatus) -> serde_json::Value {
    serde_json::json!({
        "node_id": status.node_id,
        "state": status.state,
        "grace_left_ms": status.grace_left_ms,
        "holding": status.holding,
    })
}

/// Runs a cluster operation once the caller is authorized; its answer or refusal as JSON.
/// (`op` is a future: nothing of it runs before the check.)
async fn answer<T: Serialize>(
    state: &AdminState,
    headers: &HeaderMap,
    op: impl Future<Output = Result<T, AdminError>>,
) -> Response {
    if let Err((status, text)) = authorize(state, headers) {
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthorized"
        };
        return error_json(status, code, text.trim_end(), None);
    }
    match op.await {
        Ok(body) => json(StatusCode::OK, &body),
        Err(error) => refusal(&error),
    }
}

/// A refused operation: `{"error", "message"}`, and where it runs for one that runs elsewhere
/// (307 with `Location`).
fn refusal(error: &AdminError) -> Response {
    let (code, status, _) = error.table();
    let elsewhere = match error {
        AdminError::Elsewhere(elsewhere) => Some(elsewhere),
        _ => None,
    };
    error_json(status, code, &error.to_string(), elsewhere)
}

fn error_json(
    status: StatusCode,
    code: &str,
    message: &str,
    elsewhere: Option<&Elsewhere>,
) -> Response {
    let mut body = serde_json::json!({ "error": code, "message": message });
    let location = elsewhere.and_then(|e| e.url());
    if let Some(elsewhere) = elsewhere {
        body["node"] = elsewhere.node.clone().into();
        body["grpc"] = elsewhere.grpc.clone().into();
        body["location"] = location.clone().into();
    }
    let mut response = json(status, &body);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// A request body as JSON; a 400 refusal when it is not what the operation takes.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|error| AdminError::Invalid {
        code: "bad_request",
        message: format!("the body is not the JSON this operation takes: {error}"),
    })
}
