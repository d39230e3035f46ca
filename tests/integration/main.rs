//! Integration tests: mcpmux on port 0 against real mcp-proxy and real MCP servers from
//! `node_modules` (`npm ci`), over real WebSockets; fake upstreams only for faults a
//! real server cannot produce on demand.

mod binary;
mod harness;

mod bench_smoke;
mod carrying;
mod decoder_props;
mod faults;
mod frames;
mod legacy_sse;
mod lifecycle;
mod protocol_doc;
mod resume;
mod resume_budget;
mod upstream_faults;
