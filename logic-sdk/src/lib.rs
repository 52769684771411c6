//! The logic-server SDK: write a Switchyard logic server in a few lines.
//!
//! A server has a kind, one shared state (any `Clone` value, usually an `Arc`) and routes.
//! Typed handlers receive the state, the request's [`Context`] and the decoded protobuf request
//! (a payload that does not decode is answered `BAD_REQUEST` without running the handler), and
//! return a protobuf message or a [`Reply`] (a payload plus login, bindings, attributes):
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//!
//! use logic_sdk::{Context, LogicError, LogicServer, Reply};
//! use proto::matchmaking::v1::{self as mm, routes};
//!
//! #[derive(Default)]
//! struct Lobby {
//!     waiting: Mutex<Vec<String>>,
//! }
//!
//! async fn login(_: Arc<Lobby>, _: Context, request: mm::Login) -> Result<Reply, LogicError> {
//!     let ok = mm::LoginOk { user_id: request.user_id.clone() };
//!     Ok(Reply::message(&ok).login(request.user_id))
//! }
//!
//! async fn enqueue(
//!     lobby: Arc<Lobby>,
//!     ctx: Context,
//!     request: mm::Enqueue,
//! ) -> Result<mm::Queued, LogicError> {
//!     let mut waiting = lobby.waiting.lock().unwrap_or_else(|e| e.into_inner());
//!     waiting.push(ctx.user()?.to_owned());
//!     Ok(mm::Queued { mode: request.mode, position: waiting.len() as u32 })
//! }
//!
//! # async fn f(args: runtime::NodeArgs) -> anyhow::Result<()> {
//! LogicServer::with_state("lobby", Arc::new(Lobby::default()))
//!     .handle_public(routes::LOGIN, login)
//!     .handle(routes::ENQUEUE, enqueue)
//!     .run_main(args)
//!     .await
//! # }
//! ```
//!
//! Stateless servers can take raw payloads: `LogicServer::new(kind).route(r, |ctx, bytes| ..)`,
//! `.public_route(..)`, `.on_session_closed(|closed, sdk| ..)`.
//!
//! # Layout
//! - `server`: [`LogicServer`] (state, routes, the gRPC service the gateway calls) and
//!   [`Context`].
//! - `link`: the node's side of a link (one stream per gateway): calls handled in order per
//!   session, answers and pushes sent down in the order they were produced.
//! - `reply`: [`Reply`] (payload, login, "me" bindings, attributes), [`IntoReply`] and
//!   [`LogicError`].
//! - `sdk`: [`Sdk`]: push (ordered per gateway, or awaited), bind, kick, presence, call one node,
//!   call every node of a kind, and background tasks that stop with the node.

mod link;
mod reply;
mod sdk;
mod server;

pub use reply::{BindMode, IntoReply, LogicError, Reply, Will};
pub use sdk::{
    GatewayReport, MultiResponse, PUSHES_DROPPED, Recipient, Sdk, SdkError, UserOutcome,
};
pub use server::{Context, LogicServer, RunningLogic, SessionClosed};
