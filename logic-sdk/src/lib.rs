//! The logic-server SDK: write a Switchyard logic server in a few lines.
//!
//! ```no_run
//! use logic_sdk::{LogicServer, Reply};
//! # async fn f(args: runtime::NodeArgs) -> anyhow::Result<()> {
//! LogicServer::new("echo")
//!     .public_route(proto::route(1, 1), |_, who| async move {
//!         Ok(Reply::default().login(String::from_utf8_lossy(&who)))
//!     })
//!     .route(proto::route(2, 1), |_, payload| async move { Ok(Reply::new(payload)) })
//!     .run_main(args)
//!     .await
//! # }
//! ```
//!
//! # Layout
//! - `server`: [`LogicServer`] (routes, the gRPC service the gateway calls) and [`Context`].
//! - `reply`: [`Reply`] (payload, login, "me" bindings, attributes) and [`LogicError`].
//! - `sdk`: [`Sdk`]: push, bind, kick, presence, call one node, call every node of a kind.

mod reply;
mod sdk;
mod server;

pub use reply::{BindMode, LogicError, Reply};
pub use sdk::{
    GatewayReport, MultiResponse, PUSHES_DROPPED, Recipient, Sdk, SdkError, UserOutcome,
};
pub use server::{Context, LogicServer, RunningLogic, SessionClosed};
