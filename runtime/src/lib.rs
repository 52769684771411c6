//! What every Switchyard server binary shares: configuration, telemetry, the admin endpoint,
//! the node's gRPC server and the one shutdown sequence.
//!
//! A binary's `main` parses its `Config` (with [`NodeArgs`] flattened in), calls
//! [`telemetry::init_logs`], binds [`Listeners`], and hands them to its library's `run`, which
//! [`Node::start`]s, [`Node::serve`]s its services and [`Node::run`]s until the shutdown token
//! is cancelled (by [`signal::shutdown`] in `main`, by the test in tests).
//!
//! # Layout
//! - [`config`]: [`NodeArgs`] (command line and environment) and [`NodeConfig`].
//! - [`node`]: [`Node`]: joins the cluster, serves gRPC, runs the shutdown sequence.
//! - [`admin`]: the admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, drain, and the
//!   cluster admin API (`/admin/cluster/…`); [`admin::LIST_ROOMS`], the mesh command its
//!   ListRooms asks.
//! - `cluster_admin`: the cluster admin operations and their refusals, shared by the HTTP
//!   endpoint and the gRPC `Admin` service.
//! - [`flavor`]: [`RuntimeFlavor`], the tokio runtime a binary runs on.
//! - [`telemetry`]: log subscriber and Prometheus recorder.
//! - [`signal`]: SIGTERM/SIGINT, for `main` only.

pub mod admin;
mod cluster_admin;
pub mod config;
pub mod drain;
pub mod flavor;
pub mod node;
pub mod signal;
pub mod telemetry;

pub use config::{ListenDefaults, LogFormat, NodeArgs, NodeConfig, Role};
pub use drain::{Drain, DrainControl, DrainState, Held};
pub use flavor::RuntimeFlavor;
pub use node::{BoundAddrs, Listeners, Node, StartError};
pub use quorum::{Quorum, QuorumStatus};
