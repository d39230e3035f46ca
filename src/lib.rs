//! mcpmux: one WebSocket to every MCP server.
//!
//! A client opens one WebSocket (`GET /ws`, subprotocol `mcpmux.v1`, see `protocol.md`)
//! and sends JSON-RPC messages tagged with a server name. mcpmux carries each onto that
//! client's upstream session with the server over Streamable HTTP, and sends back every
//! upstream event as a tagged frame.
//!
//! Map of the crate:
//! - [`config`]: the JSON configuration file and its validation.
//! - [`auth`]: who may connect: Origin and Host policy, API keys, rate and socket limits.
//! - [`gateway`]: start-up, HTTP routes, graceful shutdown; the shared state.
//! - [`console`]: the web console at `/`, its assets compiled into the binary.
//! - [`connection`]: one WebSocket: handshake, frame reader, writer task, heartbeats.
//! - [`session`]: a client session: its upstream sessions, its outbox, frame handling.
//! - [`resume`]: live and detached sessions by id; holding and handing them over.
//! - [`protocol`]: the `mcpmux.v1` frames, decoded and encoded.
//! - [`outbox`]: a client session's sequenced, bounded outbound frames, kept for replay.
//! - [`jsonrpc`]: the small look into JSON-RPC messages the gateway needs.
//! - [`open_files`]: the open-file limit, raised at start, and the clients it holds.
//! - [`redact`]: what may be shown of URLs and texts that carry secrets.
//! - [`registry`]: each server's lifecycle state and current endpoint.
//! - [`supervisor`]: mcp-proxy children for stdio servers, restarts, no orphans.
//! - [`upstream`]: Streamable HTTP exchanges, the SSE parser, upstream sessions.
//! - [`tls`]: serving `wss://` and `https://` with rustls.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod connection;
pub mod console;
pub mod gateway;
pub mod jsonrpc;
pub mod open_files;
pub mod outbox;
pub mod protocol;
pub mod redact;
pub mod registry;
pub mod resume;
pub mod session;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use gateway::{Gateway, GatewayError, Options};
