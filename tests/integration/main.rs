//! Integration tests: mcpmux on port 0 against real mcp-proxy and real MCP servers from
//! `node_modules` (`npm ci`), over real WebSockets; fake upstreams only for faults a
//! real server cannot produce on demand.

mod binary;
mod harness;
mod http_client;
mod support;

mod access;
mod admin;
mod bench_smoke;
mod carrying;
mod decoder_props;
mod faults;
mod frames;
mod http_route_ends;
mod http_route_faults;
mod http_routes;
mod legacy_sse;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod protocol_doc;
mod readiness;
mod reload;
mod resume;
mod resume_budget;
mod routing;
mod scale_faults;
mod scale_sessions;
mod secret_urls;
mod secrets;
mod security;
mod shared_limits;
mod store;
mod store_faults;
mod strict_upstream;
mod upstream_faults;
mod upstream_sockets;
