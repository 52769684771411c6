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
//! A [`Session`] is the same with reconnection built in: given several gateways, it resumes
//! after a dropped connection and follows a draining gateway's move, and says so in its
//! events.
//!
//! ```no_run
//! # async fn f() -> Result<(), client::ClientError> {
//! use client::{Address, Session, SessionConfig, SessionEvent};
//! let gateways = ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7011"].map(|a| Address::parse(a).unwrap());
//! let (session, mut events) = Session::connect(gateways, SessionConfig::default()).await?;
//! let login = session.request(proto::route(1, 1), "alice").await?;
//! assert!(login.is_ok());
//! while let Some(event) = events.next().await {
//!     match event {
//!         SessionEvent::Push(push) => println!("{:?}", push.payload),
//!         SessionEvent::Connected { reconnect: true, resumed, .. } => println!("back (resumed: {resumed})"),
//!         SessionEvent::Disconnected { reconnect, reason } => println!("lost ({reason}), reconnecting: {reconnect}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `transport`: WebSocket and TCP as one frame stream/sink pair; [`Address`].
//! - `connection`: [`Client`] (requests), [`Events`] (pushes, kicks, offline, disconnect).
//! - `session`: [`Session`], a session that reconnects and resumes by itself (after a
//!   dropped connection, or to follow a draining gateway's move), with [`SessionEvents`].

mod connection;
mod session;
mod transport;

pub use connection::{
    Client, ClientConfig, ClientError, Event, Events, Push, Response, ResumeTicket,
};
pub use proto::client::v1::{Resumed, SessionInfo};
pub use session::{Session, SessionConfig, SessionEvent, SessionEvents};
pub use transport::Address;
pub use wire::ErrorCode;
