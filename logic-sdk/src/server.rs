//! [`LogicServer`]: the route table of a logic server, and the gRPC service the gateway calls.

use std::{collections::HashMap, future::Future, sync::Arc};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use mesh::{NodeId, NodeKind};
use prost::Message;
use proto::{
    client::v1::ErrorCode,
    logic::v1::{self as pb, logic_server},
};
use runtime::{Listeners, Node, NodeConfig, StartError};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, debug_span};

use crate::{
    link::{self, Handle},
    reply::{IntoReply, LogicError, Reply},
    sdk::Sdk,
};

/// What a handler knows about the request it handles.
#[derive(Clone)]
pub struct Context {
    /// The route called.
    pub route: u32,
    /// The client session (unique per gateway).
    pub session_id: u64,
    /// The logged-in user; `None` on public routes before login.
    pub user_id: Option<String>,
    /// The gateway holding the session.
    pub gateway: NodeId,
    /// Session attributes set by logic servers.
    pub attributes: HashMap<String, String>,
    sdk: Sdk,
}

impl Context {
    /// The SDK: push, bind, kick, presence, calls to other nodes.
    pub fn sdk(&self) -> &Sdk {
        &self.sdk
    }

    /// The logged-in user, or the login-required error.
    pub fn user(&self) -> Result<&str, LogicError> {
        self.user_id
            .as_deref()
            .ok_or_else(LogicError::login_required)
    }
}

type Handler<S> =
    Arc<dyn Fn(S, Context, Bytes) -> BoxFuture<'static, Result<Reply, LogicError>> + Send + Sync>;
type ClosedHandler<S> = Arc<dyn Fn(S, SessionClosed, Sdk) -> BoxFuture<'static, ()> + Send + Sync>;

/// A session this node watched (or was bound to) has closed.
#[derive(Clone, Debug)]
pub struct SessionClosed {
    /// The session.
    pub session_id: u64,
    /// Its user, if it had logged in.
    pub user_id: Option<String>,
    /// The gateway that held it.
    pub gateway: NodeId,
    /// Why it closed.
    pub reason: String,
}

struct Route<S> {
    handler: Handler<S>,
    public: bool,
}

/// A logic server under construction: its kind, its shared state and its routes.
///
/// Two kinds of handlers: `handle*` handlers receive a clone of the server's state `S` (one
/// `Arc` or a struct of them, as with axum's `Router::with_state`), the [`Context`] and the
/// decoded protobuf request, and return a protobuf message or a [`Reply`]; `route` and
/// `public_route` handlers receive the context and the raw payload.
pub struct LogicServer<S = ()> {
    kind: NodeKind,
    state: S,
    routes: HashMap<u32, Route<S>>,
    on_closed: Option<ClosedHandler<S>>,
}

impl LogicServer {
    /// A logic server of `kind` (`room`, `match`, or your own) with no state and no routes yet.
    pub fn new(kind: impl Into<NodeKind>) -> Self {
        Self::with_state(kind, ())
    }
}

impl<S: Clone + Send + Sync + 'static> LogicServer<S> {
    /// A logic server of `kind` whose `handle*` handlers all receive a clone of `state`.
    pub fn with_state(kind: impl Into<NodeKind>, state: S) -> Self {
        Self {
            kind: kind.into(),
            state,
            routes: HashMap::new(),
            on_closed: None,
        }
    }

    /// Handles `route` for logged-in users: `handler(state, ctx, request)`. A payload that does
    /// not decode as `Req` is answered `BAD_REQUEST` and the handler does not run.
    pub fn handle<Req, R, F, Fut>(self, route: u32, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        R: IntoReply,
        F: Fn(S, Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, LogicError>> + Send + 'static,
    {
        self.insert(route, false, typed(handler))
    }

    /// Like [`LogicServer::handle`], for anyone, logged in or not (login itself).
    pub fn handle_public<Req, R, F, Fut>(self, route: u32, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        R: IntoReply,
        F: Fn(S, Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, LogicError>> + Send + 'static,
    {
        self.insert(route, true, typed(handler))
    }

    /// Runs `handler(state, closed, sdk)` when a session this node is bound to, or watches,
    /// closes.
    pub fn handle_session_closed<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(S, SessionClosed, Sdk) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_closed = Some(Arc::new(move |state, closed, sdk| {
            Box::pin(handler(state, closed, sdk))
        }));
        self
    }

    /// Handles `route` for logged-in users with the raw payload.
    pub fn route<F, Fut>(self, route: u32, handler: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, LogicError>> + Send + 'static,
    {
        self.add(route, false, move |_, ctx, payload| handler(ctx, payload))
    }

    /// Handles `route` for anyone, logged in or not (login itself), with the raw payload.
    pub fn public_route<F, Fut>(self, route: u32, handler: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, LogicError>> + Send + 'static,
    {
        self.add(route, true, move |_, ctx, payload| handler(ctx, payload))
    }

    /// Runs `handler(closed, sdk)` when a session this node is bound to, or watches, closes.
    pub fn on_session_closed<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(SessionClosed, Sdk) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handle_session_closed(move |_, closed, sdk| handler(closed, sdk))
    }

    fn add<F, Fut>(self, route: u32, public: bool, handler: F) -> Self
    where
        F: Fn(S, Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, LogicError>> + Send + 'static,
    {
        let handler = move |state, ctx, payload| Box::pin(handler(state, ctx, payload)) as _;
        self.insert(route, public, Arc::new(handler))
    }

    fn insert(mut self, route: u32, public: bool, handler: Handler<S>) -> Self {
        self.routes.insert(route, Route { handler, public });
        self
    }

    /// Joins the cluster announcing the routes, and serves them. `config.kind` is replaced by
    /// this server's kind.
    pub async fn start(
        self,
        mut config: NodeConfig,
        listeners: Listeners,
    ) -> Result<RunningLogic, StartError> {
        config.kind = self.kind.clone();
        let mut routes: Vec<u32> = self.routes.keys().copied().collect();
        routes.sort_unstable();
        let mut public: Vec<u32> = self
            .routes
            .iter()
            .filter(|(_, r)| r.public)
            .map(|(id, _)| *id)
            .collect();
        public.sort_unstable();
        let mut node = Node::start(config, listeners, |record| {
            record.routes = routes;
            record.public_routes = public;
        })
        .await?;
        let sdk = Sdk::new(node.mesh().clone(), node.tasks());
        let service = Arc::new(LogicService {
            node: sdk.node_id(),
            state: self.state,
            routes: self.routes,
            on_closed: self.on_closed,
            sdk: sdk.clone(),
        });
        let service = node.authenticated(logic_server::LogicServer::new(LogicGrpc(service)));
        node.serve(|routes| routes.add_service(service)).await?;
        Ok(RunningLogic { node, sdk })
    }

    /// The whole life of a logic server binary: telemetry, listeners, start, serve until
    /// SIGTERM/SIGINT, drain, leave.
    pub async fn run_main(self, args: runtime::NodeArgs) -> anyhow::Result<()> {
        runtime::telemetry::init_logs(args.log_format);
        let listeners = Listeners::bind(args.listen(runtime::ListenDefaults::LOOPBACK)).await?;
        let mut config = args.node_config(self.kind.clone());
        if config.gossip.seeds.is_empty() {
            config.gossip.seeds = vec!["127.0.0.1:7946".into()];
        }
        let running = self.start(config, listeners).await?;
        let shutdown = runtime::signal::shutdown_token();
        let sdk = running.sdk.clone();
        running
            .node
            .run(shutdown, |_| {
                let sdk = sdk.clone();
                async move { sdk.flush_pushes().await }
            })
            .await;
        Ok(())
    }
}

/// A raw handler that decodes the payload as `Req` (refusing what does not decode, without
/// running `handler`) and encodes what `handler` returns.
fn typed<S, Req, R, F, Fut>(handler: F) -> Handler<S>
where
    S: Send + 'static,
    Req: Message + Default + 'static,
    R: IntoReply,
    F: Fn(S, Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, LogicError>> + Send + 'static,
{
    Arc::new(move |state, ctx, payload| match Req::decode(payload) {
        Ok(request) => {
            let reply = handler(state, ctx, request);
            Box::pin(async move { reply.await.map(IntoReply::into_reply) })
        }
        Err(_) => Box::pin(std::future::ready(Err(LogicError::bad_request(
            "undecodable request payload",
        )))),
    })
}

/// A logic server that has joined the cluster and serves its routes.
pub struct RunningLogic {
    /// The node (run it until shutdown with [`Node::run`]).
    pub node: Node,
    /// The SDK handle of this server.
    pub sdk: Sdk,
}

struct LogicService<S> {
    /// This node's id (read once: it is in every request's span).
    node: NodeId,
    state: S,
    routes: HashMap<u32, Route<S>>,
    on_closed: Option<ClosedHandler<S>>,
    sdk: Sdk,
}

fn status(code: ErrorCode, error: &str) -> pb::LogicResponse {
    pb::LogicResponse {
        status: code as u32,
        error: error.to_owned(),
        ..Default::default()
    }
}

/// The metadata entry in which a gateway names itself when it opens a link.
pub(crate) const NODE_HEADER: &str = "x-switchyard-node";

impl<S: Clone + Send + Sync + 'static> Handle for LogicService<S> {
    fn call(
        &self,
        request: pb::LogicRequest,
        gateway: &NodeId,
    ) -> BoxFuture<'static, pb::LogicResponse> {
        let Some(route) = self.routes.get(&request.route) else {
            return Box::pin(std::future::ready(status(
                ErrorCode::RouteNotFound,
                "route not served by this node",
            )));
        };
        // Cut off from the majority: serving nobody (a gateway that still reaches this node
        // is on the wrong side of an uneven partition).
        if self.sdk.cluster().is_fenced() {
            return Box::pin(std::future::ready(status(
                ErrorCode::Partitioned,
                "this server is cut off from the majority of the cluster",
            )));
        }
        let user_id = (!request.user_id.is_empty()).then_some(request.user_id);
        if !route.public && user_id.is_none() {
            return Box::pin(std::future::ready(status(
                ErrorCode::LoginRequired,
                "login required",
            )));
        }
        let span = debug_span!(
            "logic",
            node = %self.node,
            session = request.session_id,
            user = user_id.as_deref().unwrap_or(""),
            route = request.route,
        );
        let in_flight = self.sdk.cluster().track_request();
        let ctx = Context {
            route: request.route,
            session_id: request.session_id,
            user_id,
            gateway: gateway.clone(),
            attributes: request.attributes,
            sdk: self.sdk.clone(),
        };
        let handled = (route.handler)(self.state.clone(), ctx, request.payload).instrument(span);
        Box::pin(async move {
            let response = match handled.await {
                Ok(reply) => reply.into_proto(),
                Err(error) => {
                    debug!(code = error.code, message = %error.message, "handler returned an error");
                    status_code(error)
                }
            };
            drop(in_flight);
            response
        })
    }

    fn moved(&self, moved: pb::Moved, gateway: &NodeId, down: &Arc<link::Down>) {
        self.sdk.user_moved(moved, gateway, down);
    }

    fn closed(&self, ended: pb::SessionEnded) -> BoxFuture<'static, ()> {
        let Some(handler) = &self.on_closed else {
            return Box::pin(std::future::ready(()));
        };
        let closed = SessionClosed {
            session_id: ended.session_id,
            user_id: (!ended.user_id.is_empty()).then_some(ended.user_id),
            gateway: NodeId::new(ended.gateway_node),
            reason: ended.reason,
        };
        handler(self.state.clone(), closed, self.sdk.clone())
    }
}

/// The gRPC face of a logic server: the link, and the unary calls beside it.
struct LogicGrpc<S>(Arc<LogicService<S>>);

type DownStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::Down, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Clone + Send + Sync + 'static> logic_server::Logic for LogicGrpc<S> {
    type LinkStream = DownStream;

    async fn link(
        &self,
        request: Request<tonic::Streaming<pb::Up>>,
    ) -> Result<Response<DownStream>, Status> {
        let gateway = request
            .metadata()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(NodeId::from)
            .ok_or_else(|| {
                Status::invalid_argument("a link names its gateway in x-switchyard-node")
            })?;
        let up = request.into_inner();
        let down = link::Down::new();
        let service = self.0.clone();
        let sdk = service.sdk.clone();
        sdk.links().attach(&gateway, &down);
        debug!(%gateway, "link from a gateway opened");
        let serving = {
            let (gateway, down, sdk) = (gateway.clone(), down.clone(), sdk.clone());
            async move {
                link::serve(service, gateway.clone(), up, down.clone()).await;
                sdk.links().detach(&gateway, &down);
                debug!(%gateway, "link from a gateway closed");
            }
        };
        sdk.spawn(serving);
        Ok(Response::new(Box::pin(link::down_stream(down))))
    }

    async fn handle(
        &self,
        request: Request<pb::LogicRequest>,
    ) -> Result<Response<pb::LogicResponse>, Status> {
        let request = request.into_inner();
        let gateway = NodeId::new(request.gateway_node.as_str());
        Ok(Response::new(self.0.call(request, &gateway).await))
    }

    async fn session_closed(
        &self,
        request: Request<pb::SessionEnded>,
    ) -> Result<Response<pb::SessionClosedAck>, Status> {
        self.0.closed(request.into_inner()).await;
        Ok(Response::new(pb::SessionClosedAck {}))
    }
}

fn status_code(error: LogicError) -> pb::LogicResponse {
    pb::LogicResponse {
        status: error.code.max(1),
        error: error.message,
        ..Default::default()
    }
}
