//! The Switchyard client library: connect to a gateway over WebSocket or TCP, log in, send
//! requests and await their responses by message id, receive pushes and connection events.
//!
//! ```no_run
//! # async fn f() -> Result<(), client::ClientError> {
//! use client::{Address, Client, Event};
//! let (client, mut events) = Client::connect(Address::Tcp("127.0.0.1:7001".parse().unwrap())).await?;
//! let login = client.request(proto::route(1, 1), "alice").await?;
//! assert!(login.is_ok());
//! while let Some(event) = events.next().await {
//!     if let Event::Push(push) = event { println!("{:?}", push.payload) }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `transport`: WebSocket and TCP as one frame stream/sink pair; [`Address`].
//! - `connection`: [`Client`] (requests), [`Events`] (pushes, kicks, offline, disconnect).

mod connection;
mod transport;

pub use connection::{
    Client, ClientConfig, ClientError, Event, Events, Push, Response, ResumeTicket,
};
pub use proto::client::v1::{Resumed, SessionInfo};
pub use transport::Address;
pub use wire::ErrorCode;
