//! An echo logic server: log in with any name (route 1:1), then every request on route 2:1 is
//! answered with its own payload.
//!
//! `cargo run -p logic-sdk --example echo -- --seeds 127.0.0.1:7946`

use clap::Parser;
use logic_sdk::{LogicServer, Reply};

/// Echo logic server.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: runtime::NodeArgs,
}

const LOGIN: u32 = proto::route(1, 1);
const ECHO: u32 = proto::route(2, 1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    LogicServer::new("echo")
        .public_route(LOGIN, |_, name| async move {
            let user = String::from_utf8_lossy(&name).into_owned();
            Ok(Reply::default().login(user))
        })
        .route(ECHO, |_, payload| async move { Ok(Reply::new(payload)) })
        .run_main(Args::parse().node)
        .await
}
