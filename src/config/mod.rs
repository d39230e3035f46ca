//! mcpmux configuration: the public config types and the entry points.
//!
//! This module owns the types the rest of the crate uses (`Config`, the server entries, the
//! `gateway` section with its defaults, `ConfigError`), `Config::parse`/`load`, the built-in
//! demo config, and the choice of the command that launches `mcp-proxy`.
//!
//! Parsing runs in three steps: the text becomes a JSON tree (syntax errors and duplicate keys are
//! reported with line and column), each object is decoded into a private raw struct with
//! `deny_unknown_fields`, and the raw structs are converted into the public types and validated.
//! The steps live in submodules:
//! - `raw`: the JSON tree, the raw serde structs, and naming the key at fault when decoding fails.
//! - `expand`: `${NAME}` environment expansion.
//! - `validate`: the conversion to the public types and every validation rule and message.
//! - `access`: the keys about who may connect (`apiKeys`, `allowedOrigins`, `allowedHosts`,
//!   `allowAnonymous`) and `tls`: their types and rules.
//! - `origins`: the form of origins and host names.
//! - `admin`: the admin API's listener and key (`gateway.admin`).
//! - `store`: the instance's name and the store shared by instances (`gateway.instance`,
//!   `gateway.store`).

mod access;
mod admin;
mod expand;
mod origins;
mod raw;
mod store;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use access::{
    AccessConfig, ApiKeyConfig, KeyMaterial, Rate, RateLimitConfig, ServerGrant, TlsConfig, sha256,
};
pub use admin::{AdminConfig, DEFAULT_ADMIN_LISTEN};
pub use origins::{normalize_origin, split_host_port};
pub use store::{StoreConfig, default_instance};

/// The pinned `mcp-proxy` npm version launched when no local or configured copy is found.
pub const MCP_PROXY_VERSION: &str = "6.7.19";
/// The pinned `@modelcontextprotocol/server-everything` npm version used by [`Config::demo`].
pub const SERVER_EVERYTHING_VERSION: &str = "2026.8.31";
/// The variables of mcpmux's environment every stdio server gets, as the official MCP SDKs
/// do on POSIX systems; anything else only when its entry names it in `inheritEnv`.
pub const DEFAULT_INHERITED_ENV: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];
/// The variable mcp-proxy reads its API key from; mcpmux sets it, so entries may not.
pub const MCP_PROXY_KEY_VAR: &str = "MCP_PROXY_API_KEY";

/// A parsed and validated mcpmux configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Upstream MCP servers by name (names match `[A-Za-z0-9_.-]{1,64}`); never empty.
    pub servers: BTreeMap<String, ServerConfig>,
    /// Gateway settings, with defaults filled in.
    pub gateway: GatewayConfig,
}

/// One upstream MCP server.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerConfig {
    /// A local stdio server, run behind a supervised `mcp-proxy` child.
    Stdio(StdioServer),
    /// A remote server reached directly over HTTP.
    Remote(RemoteServer),
}

/// A stdio server entry (`command`, `args`, `env`, `inheritEnv`, `cwd`); env values are
/// already expanded.
///
/// The server (and the mcp-proxy in front of it) starts with a minimal environment: the
/// variables of [`DEFAULT_INHERITED_ENV`] and of `inherit_env` that mcpmux has, then `env`.
#[derive(Clone, Debug, PartialEq)]
pub struct StdioServer {
    /// The program to run (non-empty; looked up on PATH by whoever spawns it).
    pub command: String,
    /// Its arguments, as written.
    pub args: Vec<String>,
    /// Environment variables set for the server, `${NAME}` already expanded.
    pub env: BTreeMap<String, String>,
    /// Names of mcpmux's environment variables passed on to the server, beyond
    /// [`DEFAULT_INHERITED_ENV`] (`inheritEnv`; valid names, no repeats).
    pub inherit_env: Vec<String>,
    /// Its working directory, if configured (non-empty; existence is not checked).
    pub cwd: Option<PathBuf>,
}

/// A remote server entry; `url` and header values are already expanded and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteServer {
    /// An `http://` or `https://` URL with a host.
    pub url: String,
    /// Header names are HTTP tokens; values are visible ASCII or tab (valid `HeaderValue`s).
    pub headers: BTreeMap<String, Secret>,
    /// `transport`, or the `type` alias (default Streamable HTTP).
    pub transport: RemoteTransport,
}

/// How a remote server is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RemoteTransport {
    /// MCP Streamable HTTP (`"streamable-http"`, or `type` `"http"`).
    #[default]
    StreamableHttp,
    /// The legacy HTTP+SSE transport (`"sse"`).
    Sse,
}

/// A value that must not be logged: Debug prints "***".
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a sensitive value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The real value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The `gateway` section. Every value is positive; see [`GatewayConfig::default`] for defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// `listen`: the WebSocket listen address (default 127.0.0.1:7300; port 0 is allowed).
    pub listen: SocketAddr,
    /// `mcpProxy`: the command that launches mcp-proxy, if configured (never empty).
    pub mcp_proxy: Option<Vec<String>>,
    /// `helloTimeoutMs` (default 10 s).
    pub hello_timeout: Duration,
    /// `requestTimeoutMs`: a whole upstream call (default 300 s).
    pub request_timeout: Duration,
    /// `connectTimeoutMs`: until upstream response headers (default 30 s).
    pub connect_timeout: Duration,
    /// `startTimeoutMs`: until mcp-proxy is ready (default 60 s).
    pub start_timeout: Duration,
    /// `stopGraceMs`: SIGTERM to SIGKILL for children, and the shutdown drain (default 5 s).
    pub stop_grace: Duration,
    /// `restartBackoffMinMs` (default 500 ms).
    pub restart_backoff_min: Duration,
    /// `restartBackoffMaxMs` (default 30 s; always >= the minimum).
    pub restart_backoff_max: Duration,
    /// `maxFrameBytes`: inbound WebSocket message limit (default 4 MiB).
    pub max_frame_bytes: usize,
    /// `outboundQueueBytes` (default 1 MiB).
    pub outbound_queue_bytes: usize,
    /// `maxInflightRequests` per connection (default 1024).
    pub max_inflight_requests: usize,
    /// `maxUpstreamMessageBytes`: one upstream JSON-RPC message (default 16 MiB).
    pub max_upstream_message_bytes: usize,
    /// `resumeWindowMs`: how long a dropped client session is kept for resume (default 60 s).
    pub resume_window: Duration,
    /// `resumeMaxFrames`: frames kept for resume per session (default 10000).
    pub resume_max_frames: usize,
    /// `resumeMaxBytes`: bytes kept for resume per session (default 8 MiB; always >=
    /// `outboundQueueBytes`).
    pub resume_max_bytes: usize,
    /// `writeTimeoutMs`: deadline of one WebSocket write; past it the client is slow (default
    /// 10 s).
    pub write_timeout: Duration,
    /// `heartbeatMs`: the gateway pings each client this often; a client silent for two
    /// intervals is closed (default 15 s).
    pub heartbeat: Duration,
    /// `maxUpstreamSessions`: upstream sessions one connection may hold (default 64).
    pub max_upstream_sessions: usize,
    /// `shutdownGraceMs`: how long in-flight requests may finish on shutdown (default 5 s).
    pub shutdown_grace: Duration,
    /// `maxSessions`: client sessions, attached or held for resume, the gateway keeps at
    /// once; more sockets are refused with HTTP 503 (default 10000).
    pub max_sessions: usize,
    /// `upstreamIdleTimeoutMs`: a long-lived upstream stream (the standalone GET stream,
    /// a legacy SSE stream) silent this long counts as broken (default 60 s; mcp-proxy
    /// sends a keep-alive every 15 s).
    pub upstream_idle_timeout: Duration,
    /// `maxPendingPerIp`: sockets from one client address (IPv6: one /64) that have not
    /// finished `hello`; more get HTTP 429 (default 64).
    pub max_pending_per_ip: usize,
    /// Who may connect, from where: API keys, allowed origins and hosts.
    pub access: AccessConfig,
    /// `tls`: serve `wss://` and `https://` (paths made absolute by [`Config::load`]).
    pub tls: Option<TlsConfig>,
    /// `resumeBudgetBytes`: bytes of frames kept for resume by all sessions together;
    /// past it, attached sessions drop their oldest written frames first (default 256 MiB).
    pub resume_budget_bytes: usize,
    /// `maxConnectionsPerIp`: open TCP connections from one client address (IPv6: one
    /// /64), WebSockets included; one more is closed at once, before anything is read
    /// (default 1024).
    pub max_connections_per_ip: usize,
    /// `headerTimeoutMs`: how long a connection may take to send a request's headers,
    /// and how long a kept-alive connection may wait idle for its next request; then it
    /// is closed (default 10 s).
    pub header_timeout: Duration,
    /// `admin`: the admin API's listener and key; none without it.
    pub admin: Option<AdminConfig>,
    /// `watchConfig`: re-read the configuration file when it changes (default true;
    /// SIGHUP and the admin API's reload work either way).
    pub watch_config: bool,
    /// `instance`: this instance's name among those sharing a store (`[a-z0-9-]{1,32}`);
    /// default [`default_instance`], a random name drawn once per process.
    pub instance: Arc<str>,
    /// `store`: where instances share rate limits, connection counts and sessions
    /// (default: none, everything in this instance's memory).
    pub store: StoreConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            mcp_proxy: None,
            hello_timeout: Duration::from_millis(10_000),
            request_timeout: Duration::from_millis(300_000),
            connect_timeout: Duration::from_millis(30_000),
            start_timeout: Duration::from_millis(60_000),
            stop_grace: Duration::from_millis(5_000),
            restart_backoff_min: Duration::from_millis(500),
            restart_backoff_max: Duration::from_millis(30_000),
            max_frame_bytes: 4 << 20,
            outbound_queue_bytes: 1 << 20,
            max_inflight_requests: 1024,
            max_upstream_message_bytes: 16 << 20,
            resume_window: Duration::from_millis(60_000),
            resume_max_frames: 10_000,
            resume_max_bytes: 8 << 20,
            write_timeout: Duration::from_millis(10_000),
            heartbeat: Duration::from_millis(15_000),
            max_upstream_sessions: 64,
            shutdown_grace: Duration::from_millis(5_000),
            max_sessions: 10_000,
            upstream_idle_timeout: Duration::from_millis(60_000),
            max_pending_per_ip: 64,
            access: AccessConfig::default(),
            tls: None,
            resume_budget_bytes: 256 << 20,
            max_connections_per_ip: 1024,
            header_timeout: Duration::from_secs(10),
            admin: None,
            watch_config: true,
            instance: default_instance(),
            store: StoreConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The settings (as `gateway.<key>`) that differ from `other` and take effect only
    /// when mcpmux starts: everything but who may connect (`apiKeys`, `allowedOrigins`,
    /// `allowedHosts`, `allowAnonymous`) and the admin key, which apply at once.
    pub fn changes_needing_restart(&self, other: &GatewayConfig) -> Vec<String> {
        let mut changed: Vec<&str> = Vec::new();
        let listed = [
            ("listen", self.listen != other.listen),
            ("tls", self.tls != other.tls),
            ("mcpProxy", self.mcp_proxy != other.mcp_proxy),
            ("watchConfig", self.watch_config != other.watch_config),
            ("instance", self.instance != other.instance),
            ("store", self.store != other.store),
            (
                "admin.listen",
                self.admin.as_ref().map(|a| a.listen) != other.admin.as_ref().map(|a| a.listen),
            ),
        ];
        changed.extend(listed.iter().filter(|(_, c)| *c).map(|(key, _)| *key));
        changed.extend(raw::changed_numbers(self, other));
        changed.iter().map(|key| format!("gateway.{key}")).collect()
    }
}

/// Why a config could not be loaded. Display is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{source_name}: cannot read the config file: {source}")]
    Io {
        /// The file, as given.
        source_name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not valid JSON (or repeats a key).
    #[error("{source_name}: line {line}, column {column}: {message}")]
    Syntax {
        /// The file, as given.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error (0 for an empty file).
        column: usize,
        /// What is wrong, without the position.
        message: String,
    },
    /// The JSON is well formed but a value is wrong; `path` is like `mcpServers.remote.url`.
    #[error("{source_name}: {}{message}", path_prefix(.path))]
    Invalid {
        /// The file, as given.
        source_name: String,
        /// The dotted key path, e.g. `mcpServers.remote.headers.Authorization` (empty for the root).
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl Config {
    /// Parses and validates config text. `source_name` names the file in errors; `env` looks up
    /// environment variables for `${NAME}` expansion.
    pub fn parse(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        validate::Parser { source_name, env }.parse(text)
    }

    /// Reads and parses the file at `path`, expanding `${NAME}` from the process environment.
    /// Relative file paths in it (`gateway.tls`) are made relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            source_name: path.display().to_string(),
            source,
        })?;
        Config::from_file_text(&text, path)
    }

    /// Parses `text` as the contents of the file at `path`, as [`Config::load`] does.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let mut config = Config::parse(text, &source_name, &|name| std::env::var(name).ok())?;
        if let Some(tls) = &mut config.gateway.tls {
            tls.relative_to(path.parent().unwrap_or(Path::new(".")));
        }
        Ok(config)
    }

    /// The built-in demo used when no config file is given: one stdio server "everything".
    ///
    /// `node_modules_dir` is where a local npm install may live (the working directory's
    /// node_modules). If `<node_modules_dir>/@modelcontextprotocol/server-everything/dist/index.js`
    /// exists, the command is `node <that path, made absolute> stdio`; otherwise
    /// `npx -y @modelcontextprotocol/server-everything@2026.8.31 stdio`.
    pub fn demo(node_modules_dir: &Path) -> Config {
        let local = node_modules_dir.join("@modelcontextprotocol/server-everything/dist/index.js");
        let (command, args) = match existing_file(&local) {
            Some(script) => ("node", vec![script, "stdio".to_string()]),
            None => {
                let pkg =
                    format!("@modelcontextprotocol/server-everything@{SERVER_EVERYTHING_VERSION}");
                ("npx", vec!["-y".to_string(), pkg, "stdio".to_string()])
            }
        };
        let server = StdioServer {
            command: command.to_string(),
            args,
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
            cwd: None,
        };
        Config {
            servers: BTreeMap::from([("everything".to_string(), ServerConfig::Stdio(server))]),
            gateway: GatewayConfig::default(),
        }
    }
}

/// The command that launches mcp-proxy: the configured one if any (an empty one counts as none);
/// else `<node_modules_dir>/.bin/mcp-proxy` (made absolute) if it exists; else the first executable
/// `mcp-proxy` in the directories of `path_var` (a PATH value; nothing is spawned), as a full path;
/// else `["npx", "-y", "mcp-proxy@6.7.19"]`.
pub fn resolve_mcp_proxy(
    configured: Option<&[String]>,
    node_modules_dir: &Path,
    path_var: Option<&str>,
) -> Vec<String> {
    if let Some(cmd) = configured.filter(|c| !c.is_empty()) {
        return cmd.to_vec();
    }
    let local = node_modules_dir.join(".bin").join("mcp-proxy");
    if let Some(s) = existing_file(&local) {
        return vec![s];
    }
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("mcp-proxy"))
        .find(|p| is_executable(p));
    if let Some(s) = on_path.as_deref().and_then(Path::to_str) {
        return vec![s.to_string()];
    }
    vec![
        "npx".to_string(),
        "-y".to_string(),
        format!("mcp-proxy@{MCP_PROXY_VERSION}"),
    ]
}

/// `p` as an absolute UTF-8 path string, if it is an existing file.
fn existing_file(p: &Path) -> Option<String> {
    let p = if p.is_file() {
        std::path::absolute(p).ok()?
    } else {
        return None;
    };
    p.to_str().map(String::from)
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}
