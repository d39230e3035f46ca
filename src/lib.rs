//! mcpmux: one WebSocket to every MCP server.
//!
//! A client opens one WebSocket (`GET /ws`, subprotocol `mcpmux.v1`, see `protocol.md`)
//! and sends JSON-RPC messages tagged with a server name. mcpmux carries each onto that
//! client's upstream session with the server over Streamable HTTP, and sends back every
//! upstream event as a tagged frame.
//!
//! Map of the crate, from the top down (each module uses only those below it):
//! - [`gateway`]: start-up, HTTP routes, graceful shutdown.
//! - [`admin`]: the admin API on its own listener: servers changed at run time, metrics.
//! - [`status`]: `/healthz`, `/readyz`, `/status` and `/servers`.
//! - [`console`]: the web console at `/`, its assets compiled into the binary.
//! - `serve`: the HTTP/1.1 connections: per-address cap, header timeout, graceful stop.
//! - [`tls`]: serving `wss://` and `https://` with rustls.
//! - `routes`: the MCP routes over HTTP (Streamable HTTP, legacy SSE), a streaming
//!   reverse proxy to the servers.
//! - `connection`: one WebSocket: handshake, frame reader, writer task, heartbeats.
//! - `state`: what the gateway lends its connections.
//! - [`reload`]: configuration changes at run time: validated, then applied; the file
//!   watched and edited.
//! - [`fleet`]: every server's supervisor or endpoint, added, replaced and removed.
//! - [`metrics`]: the Prometheus text format of the gateway's metrics.
//! - [`auth`]: who may connect: Origin and Host policy, API keys, rate and socket limits.
//! - `resume`: every client session by id; holding and handing them over.
//! - `session`: a client session: its upstream sessions, its outbox, frame handling.
//! - `context`: what client sessions share, a narrow handle.
//! - `store`: the state instances of a fleet share (rate limits, connection counts,
//!   sessions): in memory, or in Redis.
//! - `outbox`: a client session's sequenced, bounded outbound frames, kept for replay.
//! - [`upstream`]: Streamable HTTP exchanges, the SSE parser, upstream sessions.
//! - [`supervisor`]: mcp-proxy children for stdio servers, restarts, no orphans.
//! - [`metrics`]: the gateway's metrics in the Prometheus text format.
//! - [`logging`]: the log's two formats (text, JSON lines) and its filter.
//! - [`registry`]: the servers by name (changing at run time), each with its lifecycle
//!   state and current endpoint.
//! - [`protocol`]: the `mcpmux.v1` frames, decoded and encoded.
//! - [`jsonrpc`]: the small look into JSON-RPC messages the gateway needs.
//! - [`config`]: the JSON configuration file and its validation.
//! - [`open_files`]: the open-file limit, raised at start, and the clients it holds.
//! - [`redact`]: what may be shown of URLs and texts that carry secrets.
//!
//! Public modules are what the binary, the tests, the fuzz targets and embedders use;
//! the rest are the gateway's own.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
mod connection;
pub mod console;
mod context;
pub mod fleet;
pub mod gateway;
pub mod jsonrpc;
pub mod logging;
pub mod metrics;
pub mod open_files;
mod outbox;
pub mod protocol;
pub mod redact;
pub mod registry;
pub mod reload;
mod resume;
mod routes;
mod serve;
mod session;
mod state;
pub mod status;
mod store;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use gateway::{Gateway, GatewayError, Options};
pub use store::StoreError;
