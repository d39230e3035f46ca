//! mcpmux configuration: parsing and validating the JSON config file.
//!
//! This module owns the config file format (the Claude Desktop style `mcpServers` map plus
//! mcpmux's own `gateway` section), `${NAME}` environment expansion, every validation rule and
//! the error messages users see, the gateway defaults, the built-in demo config, and the choice
//! of the command that launches `mcp-proxy`.
//!
//! Parsing runs in three steps: the text becomes a JSON tree (syntax errors and duplicate keys are
//! reported with line and column), each object is decoded into a private raw struct with
//! `deny_unknown_fields`, and the raw structs are converted into the public types and validated.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The pinned `mcp-proxy` npm version launched when no local or configured copy is found.
pub const MCP_PROXY_VERSION: &str = "6.7.19";
/// The pinned `@modelcontextprotocol/server-everything` npm version used by [`Config::demo`].
pub const SERVER_EVERYTHING_VERSION: &str = "2026.8.31";

/// Largest number accepted for any `gateway` timeout or limit (about 49 days in ms, 4 GiB).
const MAX_NUMBER: u64 = u32::MAX as u64;

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

/// A stdio server entry (`command`, `args`, `env`, `cwd`); env values are already expanded.
#[derive(Clone, Debug, PartialEq)]
pub struct StdioServer {
    /// The program to run (non-empty; looked up on PATH by whoever spawns it).
    pub command: String,
    /// Its arguments, as written.
    pub args: Vec<String>,
    /// Extra environment variables for the server, `${NAME}` already expanded.
    pub env: BTreeMap<String, String>,
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
    /// `resumeWindowMs`: how long a dropped client session is kept for resume.
    pub resume_window: Duration,
    /// `resumeMaxFrames`: frames kept for resume per session.
    pub resume_max_frames: usize,
    /// `resumeMaxBytes`: bytes kept for resume per session.
    pub resume_max_bytes: usize,
    /// `writeTimeoutMs`: deadline of one WebSocket write.
    pub write_timeout: Duration,
    /// `heartbeatMs`: ping interval; a client silent for two intervals is closed.
    pub heartbeat: Duration,
    /// `maxUpstreamSessions`: upstream sessions one connection may hold.
    pub max_upstream_sessions: usize,
    /// `shutdownGraceMs`: how long in-flight requests may finish on shutdown.
    pub shutdown_grace: Duration,
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
        }
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
        Parser { source_name, env }.parse(text)
    }

    /// Reads and parses the file at `path`, expanding `${NAME}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            source_name: source_name.clone(),
            source,
        })?;
        Config::parse(&text, &source_name, &|name| std::env::var(name).ok())
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

// ---------------------------------------------------------------------------------------------
// Raw structs: what serde decodes, before validation. Every field is optional so that missing
// keys get mcpmux's own messages; `KEYS` lists the accepted keys for "unknown key" messages.

type Keys = &'static [&'static str];

trait Raw: DeserializeOwned {
    const KEYS: Keys;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    mcp_servers: Option<Map<String, Value>>,
    gateway: Option<Value>,
}

impl Raw for RawConfig {
    const KEYS: Keys = &["mcpServers", "gateway"];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    transport: Option<String>,
}

impl Raw for RawServer {
    const KEYS: Keys = &[
        "command",
        "args",
        "env",
        "cwd",
        "type",
        "url",
        "headers",
        "transport",
    ];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGateway {
    listen: Option<String>,
    mcp_proxy: Option<Vec<String>>,
    #[serde(rename = "helloTimeoutMs")]
    hello_timeout: Option<u64>,
    #[serde(rename = "requestTimeoutMs")]
    request_timeout: Option<u64>,
    #[serde(rename = "connectTimeoutMs")]
    connect_timeout: Option<u64>,
    #[serde(rename = "startTimeoutMs")]
    start_timeout: Option<u64>,
    #[serde(rename = "stopGraceMs")]
    stop_grace: Option<u64>,
    #[serde(rename = "restartBackoffMinMs")]
    restart_backoff_min: Option<u64>,
    #[serde(rename = "restartBackoffMaxMs")]
    restart_backoff_max: Option<u64>,
    max_frame_bytes: Option<u64>,
    outbound_queue_bytes: Option<u64>,
    max_inflight_requests: Option<u64>,
    max_upstream_message_bytes: Option<u64>,
}

impl Raw for RawGateway {
    const KEYS: Keys = &[
        "listen",
        "mcpProxy",
        "helloTimeoutMs",
        "requestTimeoutMs",
        "connectTimeoutMs",
        "startTimeoutMs",
        "stopGraceMs",
        "restartBackoffMinMs",
        "restartBackoffMaxMs",
        "maxFrameBytes",
        "outboundQueueBytes",
        "maxInflightRequests",
        "maxUpstreamMessageBytes",
    ];
}

// ---------------------------------------------------------------------------------------------
// Conversion and validation.

struct Parser<'a> {
    source_name: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

type Res<T> = Result<T, ConfigError>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Parser<'_> {
    fn fail<T>(&self, path: &str, message: impl Into<String>) -> Res<T> {
        let (source_name, path) = (self.source_name.to_string(), path.to_string());
        Err(ConfigError::Invalid {
            source_name,
            path,
            message: message.into(),
        })
    }

    fn parse(&self, text: &str) -> Res<Config> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut de = serde_json::Deserializer::from_str(text);
        let tree = Tree { path: "" }
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v));
        let tree = tree.map_err(|e| self.syntax(e))?;
        let raw: RawConfig = self.decode(&tree, "")?;
        let Some(entries) = raw.mcp_servers else {
            return self.fail(
                "mcpServers",
                "is missing; add an \"mcpServers\" object with a server",
            );
        };
        if entries.is_empty() {
            return self.fail("mcpServers", "is empty; add at least one server");
        }
        let mut servers = BTreeMap::new();
        for (name, value) in &entries {
            let path = join("mcpServers", name);
            if !is_server_name(name) {
                return self.fail(
                    &path,
                    "is not a valid server name; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
                );
            }
            servers.insert(name.clone(), self.server(value, &path)?);
        }
        let gateway = match &raw.gateway {
            Some(value) => self.gateway(value)?,
            None => GatewayConfig::default(),
        };
        Ok(Config { servers, gateway })
    }

    fn syntax(&self, e: serde_json::Error) -> ConfigError {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let mut message = full.strip_suffix(&format!(" at line {line} column {column}"));
        let mut message = message.get_or_insert(&full).to_string();
        if e.is_syntax() {
            message
                .push_str("; fix the JSON syntax (comments and trailing commas are not allowed)");
        } else if e.is_eof() {
            message.push_str("; the JSON is incomplete");
        }
        ConfigError::Syntax {
            source_name: self.source_name.to_string(),
            line,
            column,
            message,
        }
    }

    /// Decodes an object into a raw struct, naming the offending key when it fails.
    fn decode<T: Raw>(&self, value: &Value, path: &str) -> Res<T> {
        let Value::Object(map) = value else {
            return self.fail(
                path,
                format!("expected an object, found {}", kind_of(value)),
            );
        };
        if let Some(key) = map.keys().find(|k| !T::KEYS.contains(&k.as_str())) {
            let allowed = T::KEYS.join(", ");
            let msg =
                format!("unknown key; remove it or fix its spelling (allowed here: {allowed})");
            return self.fail(&join(path, key), msg);
        }
        let err = match T::deserialize(value) {
            Ok(raw) => return Ok(raw),
            Err(e) => e,
        };
        // Find the key at fault: every raw field is optional, so each key decodes on its own.
        for (key, v) in map {
            let single = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
            if let Err(e) = T::deserialize(&single) {
                return self.fail(&join(path, key), e.to_string());
            }
        }
        self.fail(path, err.to_string())
    }

    fn expand(&self, value: &str, path: &str) -> Res<String> {
        match expand_env(value, self.env) {
            Ok(s) => Ok(s),
            Err(name) => self.fail(
                path,
                format!(
                    "environment variable {name} is not set; export it or write the value directly"
                ),
            ),
        }
    }

    fn server(&self, value: &Value, path: &str) -> Res<ServerConfig> {
        let mut raw: RawServer = self.decode(value, path)?;
        let stdio_keys = [
            ("args", raw.args.is_some()),
            ("env", raw.env.is_some()),
            ("cwd", raw.cwd.is_some()),
        ];
        let remote_keys = [
            ("headers", raw.headers.is_some()),
            ("transport", raw.transport.is_some()),
        ];
        let (stray, kind, have) = match (&raw.command, &raw.url) {
            (Some(_), Some(_)) => {
                let msg = "has both \"command\" and \"url\"; use \"command\" for a local \
                           stdio server or \"url\" for a remote one";
                return self.fail(path, msg);
            }
            (None, None) => {
                return self.fail(
                    path,
                    "needs \"command\" (a local stdio server) or \"url\" (a remote server)",
                );
            }
            (Some(_), None) => (remote_keys.iter().find(|k| k.1), "url (remote)", "command"),
            (None, Some(_)) => (stdio_keys.iter().find(|k| k.1), "command (stdio)", "url"),
        };
        if let Some((key, _)) = stray {
            let msg =
                format!("applies only to {kind} servers and this entry has \"{have}\"; remove it");
            return self.fail(&join(path, key), msg);
        }
        match raw.command.take() {
            Some(command) => self.stdio(command, raw, path),
            None => self.remote(raw, path),
        }
    }

    fn stdio(&self, command: String, raw: RawServer, path: &str) -> Res<ServerConfig> {
        if let Some(kind) = raw.kind.filter(|k| k != "stdio") {
            let msg =
                format!("is \"{kind}\" but a \"command\" entry is a stdio server; write \"stdio\"");
            return self.fail(&join(path, "type"), msg);
        }
        if command.is_empty() {
            return self.fail(&join(path, "command"), "is empty; write the program to run");
        }
        let mut env = BTreeMap::new();
        for (key, value) in raw.env.unwrap_or_default() {
            let key_path = format!("{path}.env.{key}");
            if key.is_empty() || key.contains(['=', '\0']) {
                return self.fail(&key_path, "is not a valid environment variable name");
            }
            let value = self.expand(&value, &key_path)?;
            env.insert(key, value);
        }
        if raw.cwd.as_ref().is_some_and(String::is_empty) {
            return self.fail(
                &join(path, "cwd"),
                "is empty; write a directory or remove \"cwd\"",
            );
        }
        let (args, cwd) = (raw.args.unwrap_or_default(), raw.cwd.map(PathBuf::from));
        Ok(ServerConfig::Stdio(StdioServer {
            command,
            args,
            env,
            cwd,
        }))
    }

    fn remote(&self, raw: RawServer, path: &str) -> Res<ServerConfig> {
        let url_path = join(path, "url");
        let url = self.expand(raw.url.as_deref().unwrap_or_default(), &url_path)?;
        if let Err(msg) = check_url(&url) {
            return self.fail(&url_path, msg);
        }
        let by_type = match raw.kind.as_deref() {
            None => None,
            Some("http" | "streamable-http") => Some(RemoteTransport::StreamableHttp),
            Some("sse") => Some(RemoteTransport::Sse),
            Some(other) => {
                let msg = format!(
                    "is \"{other}\"; a \"url\" entry takes \"http\", \"streamable-http\" or \"sse\""
                );
                return self.fail(&join(path, "type"), msg);
            }
        };
        let by_transport = match raw.transport.as_deref() {
            None => None,
            Some("streamable-http") => Some(RemoteTransport::StreamableHttp),
            Some("sse") => Some(RemoteTransport::Sse),
            Some(other) => {
                let msg =
                    format!("is \"{other}\"; write \"streamable-http\" (the default) or \"sse\"");
                return self.fail(&join(path, "transport"), msg);
            }
        };
        let transport = match (by_type, by_transport) {
            (Some(a), Some(b)) if a != b => {
                return self.fail(
                    &join(path, "transport"),
                    "contradicts \"type\"; keep only one of them",
                );
            }
            (a, b) => b.or(a).unwrap_or_default(),
        };
        let mut headers: BTreeMap<String, Secret> = BTreeMap::new();
        for (name, value) in raw.headers.unwrap_or_default() {
            let header_path = format!("{path}.headers.{name}");
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                let msg =
                    "is not a valid HTTP header name; use letters, digits and !#$%&'*+-.^_`|~";
                return self.fail(&header_path, msg);
            }
            if headers.keys().any(|k| k.eq_ignore_ascii_case(&name)) {
                return self.fail(
                    &header_path,
                    "repeats a header name (names ignore case); keep one",
                );
            }
            let value = self.expand(&value, &header_path)?;
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                let msg = "has a value that is not visible ASCII; CR, LF and control characters \
                           are not allowed";
                return self.fail(&header_path, msg);
            }
            headers.insert(name, Secret(value));
        }
        Ok(ServerConfig::Remote(RemoteServer {
            url,
            headers,
            transport,
        }))
    }

    fn gateway(&self, value: &Value) -> Res<GatewayConfig> {
        let r: RawGateway = self.decode(value, "gateway")?;
        let mut g = GatewayConfig::default();
        if let Some(s) = r.listen {
            let Ok(addr) = s.parse() else {
                let msg = format!(
                    "\"{s}\" is not an \"ip:port\" address; write e.g. \"127.0.0.1:7300\" \
                     or \"[::1]:7300\""
                );
                return self.fail("gateway.listen", msg);
            };
            g.listen = addr;
        }
        if let Some(cmd) = r.mcp_proxy {
            if cmd.first().is_none_or(String::is_empty) {
                let msg =
                    "must be a non-empty array of strings (the command that launches mcp-proxy)";
                return self.fail("gateway.mcpProxy", msg);
            }
            g.mcp_proxy = Some(cmd);
        }
        // Each numeric key: field (the same in RawGateway and GatewayConfig), JSON key, conversion.
        macro_rules! numbers {
            ($($field:ident: $key:literal => $conv:path;)*) => {$(
                if let Some(n) = r.$field {
                    if n == 0 || n > MAX_NUMBER {
                        let msg = format!("is {n}; use a whole number from 1 to {MAX_NUMBER} \
                                           or remove it for the default");
                        return self.fail(concat!("gateway.", $key), msg);
                    }
                    g.$field = $conv(n);
                }
            )*};
        }
        numbers! {
            hello_timeout: "helloTimeoutMs" => Duration::from_millis;
            request_timeout: "requestTimeoutMs" => Duration::from_millis;
            connect_timeout: "connectTimeoutMs" => Duration::from_millis;
            start_timeout: "startTimeoutMs" => Duration::from_millis;
            stop_grace: "stopGraceMs" => Duration::from_millis;
            restart_backoff_min: "restartBackoffMinMs" => Duration::from_millis;
            restart_backoff_max: "restartBackoffMaxMs" => Duration::from_millis;
            max_frame_bytes: "maxFrameBytes" => to_usize;
            outbound_queue_bytes: "outboundQueueBytes" => to_usize;
            max_inflight_requests: "maxInflightRequests" => to_usize;
            max_upstream_message_bytes: "maxUpstreamMessageBytes" => to_usize;
        }
        if g.restart_backoff_max < g.restart_backoff_min {
            let (max, min) = (
                g.restart_backoff_max.as_millis(),
                g.restart_backoff_min.as_millis(),
            );
            let msg =
                format!("({max} ms) must be at least restartBackoffMinMs ({min} ms); raise it");
            return self.fail("gateway.restartBackoffMaxMs", msg);
        }
        Ok(g)
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// HTTP `tchar` (RFC 9110 token characters).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Light URL check: `http://` or `https://`, a non-empty host, an optional numeric port.
fn check_url(url: &str) -> Result<(), String> {
    const HINT: &str = "write an http:// or https:// URL such as \"https://example.org/mcp\"";
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|p| {
            url.get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        })
        .map(|p| p.len());
    let Some(rest) = scheme_len.and_then(|n| url.get(n..)) else {
        return Err(format!("\"{url}\" is not an http(s) URL; {HINT}"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters; {HINT}"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) if p.is_empty() || p.starts_with(':') => (h, p.strip_prefix(':')),
            _ => return Err(format!("has a malformed [IPv6] host; {HINT}")),
        },
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host; {HINT}"));
    }
    if port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_err()) {
        return Err(format!("\"{url}\" has an invalid port; {HINT}"));
    }
    Ok(())
}

/// Expands `${NAME}` from `env`; `$$` is a literal `$` and any other `$` is literal.
/// Returns the name of the first missing variable on failure.
fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let braced = after.strip_prefix('{').and_then(|b| b.split_once('}'));
        match braced {
            Some((name, tail)) if is_var_name(name) => {
                out.push_str(&env(name).ok_or_else(|| name.to_string())?);
                rest = tail;
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// The JSON tree: like `serde_json::Value`, but a repeated object key is an error (serde_json keeps
// the last one silently), reported with its key path and, via serde_json, line and column.

struct Tree<'p> {
    path: &'p str,
}

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        let mut i = 0usize;
        loop {
            let path = format!("{}[{i}]", self.path);
            match seq.next_element_seed(Tree { path: &path })? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(self.path, &key);
            if out.contains_key(&key) {
                let msg = if self.path == "mcpServers" {
                    format!("{path}: duplicate server name; rename or remove one of the entries")
                } else {
                    format!("{path}: duplicate key; remove one of them")
                };
                return Err(serde::de::Error::custom(msg));
            }
            let value = map.next_value_seed(Tree { path: &path })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".to_string()),
            "HOST" => Some("example.org".to_string()),
            "EMPTY" => Some(String::new()),
            "DOLLAR" => Some("${TOKEN}".to_string()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "mcpmux.json", &env)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts the error is `Invalid` at `path` and its one-line message contains `needle`.
    fn invalid_at(text: &str, path: &str, needle: &str) {
        match parse(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let msg = e.to_string();
                let ConfigError::Invalid {
                    source_name,
                    path: p,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(source_name, "mcpmux.json");
                assert_eq!(p, path, "{msg}");
                assert!(msg.starts_with(&format!("mcpmux.json: {path}: ")), "{msg}");
                assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}");
                assert!(!msg.contains('\n'), "{msg}");
            }
            other => panic!("expected Invalid at {path}, got {other:?}"),
        }
    }

    fn server(text: &str) -> String {
        format!(r#"{{"mcpServers": {{"s": {text}}}}}"#)
    }

    fn gateway(text: &str) -> String {
        format!(r#"{{"mcpServers": {{"s": {{"command": "x"}}}}, "gateway": {text}}}"#)
    }

    fn remote(c: &Config, name: &str) -> RemoteServer {
        match c.servers.get(name) {
            Some(ServerConfig::Remote(r)) => r.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn stdio(c: &Config, name: &str) -> StdioServer {
        match c.servers.get(name) {
            Some(ServerConfig::Stdio(s)) => s.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("mcpmux-config-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn file(&self, rel: &str, mode: u32) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let _ = mode;
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"{
              "mcpServers": {
                "everything": { "command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"],
                                "env": {"KEY": "${TOKEN}"}, "cwd": "/tmp", "type": "stdio" },
                "remote": { "url": "https://${HOST}/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"} }
              },
              "gateway": { "listen": "0.0.0.0:8080", "mcpProxy": ["node", "path/to/mcp-proxy.mjs"],
                           "helloTimeoutMs": 1, "requestTimeoutMs": 2, "connectTimeoutMs": 3, "startTimeoutMs": 4,
                           "stopGraceMs": 5, "restartBackoffMinMs": 6, "restartBackoffMaxMs": 7, "maxFrameBytes": 8,
                           "outboundQueueBytes": 9, "maxInflightRequests": 10, "maxUpstreamMessageBytes": 11 }
            }"#,
        )
        .unwrap();
        let s = stdio(&c, "everything");
        assert_eq!(s.command, "npx");
        assert_eq!(s.args, ["-y", "@modelcontextprotocol/server-everything"]);
        assert_eq!(s.env.get("KEY").map(String::as_str), Some("s3cret"));
        assert_eq!(s.cwd, Some(PathBuf::from("/tmp")));
        let r = remote(&c, "remote");
        assert_eq!(r.url, "https://example.org/mcp");
        assert_eq!(r.headers["Authorization"].expose(), "Bearer s3cret");
        assert_eq!(r.transport, RemoteTransport::StreamableHttp);
        let g = &c.gateway;
        assert_eq!(g.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            g.mcp_proxy.as_deref(),
            Some(&["node".to_string(), "path/to/mcp-proxy.mjs".to_string()][..])
        );
        let ms = Duration::from_millis;
        assert_eq!(
            [
                g.hello_timeout,
                g.request_timeout,
                g.connect_timeout,
                g.start_timeout,
                g.stop_grace
            ],
            [ms(1), ms(2), ms(3), ms(4), ms(5)]
        );
        assert_eq!(
            (g.restart_backoff_min, g.restart_backoff_max),
            (ms(6), ms(7))
        );
        assert_eq!(
            [
                g.max_frame_bytes,
                g.outbound_queue_bytes,
                g.max_inflight_requests,
                g.max_upstream_message_bytes
            ],
            [8, 9, 10, 11]
        );
    }

    #[test]
    fn defaults() {
        let g = GatewayConfig::default();
        assert_eq!(g.listen.to_string(), "127.0.0.1:7300");
        assert_eq!(g.mcp_proxy, None);
        assert_eq!(g.hello_timeout, Duration::from_secs(10));
        assert_eq!(g.request_timeout, Duration::from_secs(300));
        assert_eq!(g.connect_timeout, Duration::from_secs(30));
        assert_eq!(g.start_timeout, Duration::from_secs(60));
        assert_eq!(g.stop_grace, Duration::from_secs(5));
        assert_eq!(g.restart_backoff_min, Duration::from_millis(500));
        assert_eq!(g.restart_backoff_max, Duration::from_secs(30));
        assert_eq!(g.max_frame_bytes, 4_194_304);
        assert_eq!(g.outbound_queue_bytes, 1_048_576);
        assert_eq!(g.max_inflight_requests, 1024);
        assert_eq!(g.max_upstream_message_bytes, 16_777_216);
        // Absent and empty gateway sections both mean the defaults; stdio extras default to empty.
        let c = parse(r#"{"mcpServers": {"a": {"command": "x"}}}"#).unwrap();
        assert_eq!(c.gateway, g);
        assert_eq!(
            c.servers["a"],
            ServerConfig::Stdio(StdioServer {
                command: "x".into(),
                args: vec![],
                env: BTreeMap::new(),
                cwd: None,
            })
        );
        assert_eq!(parse(&gateway("{}")).unwrap().gateway, g);
        // Null counts as absent.
        assert_eq!(parse(&gateway(r#"{"listen": null}"#)).unwrap().gateway, g);
    }

    #[test]
    fn env_expansion() {
        let ok = |s: &str| expand_env(s, &env);
        assert_eq!(ok("${TOKEN}").unwrap(), "s3cret");
        assert_eq!(ok("a${TOKEN}b${HOST}c").unwrap(), "as3cretbexample.orgc");
        assert_eq!(ok("$$").unwrap(), "$");
        assert_eq!(ok("$${TOKEN}").unwrap(), "${TOKEN}");
        assert_eq!(ok("$$$${TOKEN}").unwrap(), "$${TOKEN}");
        assert_eq!(ok("$$${TOKEN}").unwrap(), "$s3cret");
        assert_eq!(
            ok("cost $5 $TOKEN ${} ${1X} ${A-B} ${TOKEN").unwrap(),
            "cost $5 $TOKEN ${} ${1X} ${A-B} ${TOKEN"
        );
        assert_eq!(ok("end$").unwrap(), "end$");
        assert_eq!(ok("${EMPTY}x").unwrap(), "x");
        // Expanded values are not expanded again.
        assert_eq!(ok("${DOLLAR}").unwrap(), "${TOKEN}");
        assert_eq!(ok("é${TOKEN}ü").unwrap(), "és3cretü");
        assert_eq!(ok("x ${MISSING_1} ${ALSO}"), Err("MISSING_1".to_string()));
        // Through the parser: env, header and url values are expanded; command, args, cwd are not.
        let c = parse(&server(r#"{"command": "${TOKEN}", "args": ["${TOKEN}"], "cwd": "${TOKEN}", "env": {"A": "$${TOKEN}"}}"#)).unwrap();
        let s = stdio(&c, "s");
        assert_eq!(
            (s.command.as_str(), s.args[0].as_str()),
            ("${TOKEN}", "${TOKEN}")
        );
        assert_eq!(s.cwd, Some(PathBuf::from("${TOKEN}")));
        assert_eq!(s.env["A"], "${TOKEN}");
    }

    #[test]
    fn missing_variable_names_file_path_and_variable() {
        let msg = err(
            r#"{"mcpServers": {"remote": {"url": "https://x.org", "headers": {"Authorization": "Bearer ${TOKEN2}"}}}}"#,
        );
        assert_eq!(
            msg,
            "mcpmux.json: mcpServers.remote.headers.Authorization: environment variable TOKEN2 is not set; export it or write the value directly"
        );
        invalid_at(
            &server(r#"{"command": "x", "env": {"K": "${NOPE}"}}"#),
            "mcpServers.s.env.K",
            "NOPE is not set",
        );
        invalid_at(
            &server(r#"{"url": "https://${NOPE}/"}"#),
            "mcpServers.s.url",
            "NOPE is not set",
        );
    }

    #[test]
    fn unknown_keys_at_every_level() {
        invalid_at(
            r#"{"mcpServers": {"a": {"command": "x"}}, "extra": 1}"#,
            "extra",
            "unknown key",
        );
        invalid_at(
            &server(r#"{"command": "x", "argz": []}"#),
            "mcpServers.s.argz",
            "allowed here: command, args",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "header": {}}"#),
            "mcpServers.s.header",
            "unknown key",
        );
        invalid_at(
            &gateway(r#"{"listen": "127.0.0.1:1", "helloTimeout": 5}"#),
            "gateway.helloTimeout",
            "unknown key",
        );
        invalid_at(
            &gateway(r#"{"hello_timeout_ms": 5}"#),
            "gateway.hello_timeout_ms",
            "helloTimeoutMs",
        );
    }

    #[test]
    fn raw_key_lists_match_serde() {
        fn check<T: Raw>() {
            for key in T::KEYS {
                let one = Value::Object(Map::from_iter([(key.to_string(), Value::Null)]));
                assert!(T::deserialize(&one).is_ok(), "{key}");
            }
        }
        check::<RawConfig>();
        check::<RawServer>();
        check::<RawGateway>();
    }

    #[test]
    fn keys_of_the_other_kind() {
        invalid_at(
            &server(r#"{"command": "x", "headers": {}}"#),
            "mcpServers.s.headers",
            "applies only to url (remote) servers",
        );
        invalid_at(
            &server(r#"{"command": "x", "transport": "sse"}"#),
            "mcpServers.s.transport",
            "remove it",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "env": {}}"#),
            "mcpServers.s.env",
            "applies only to command (stdio) servers",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "args": []}"#),
            "mcpServers.s.args",
            "remove it",
        );
    }

    #[test]
    fn duplicate_names_and_keys() {
        let text =
            "{\"mcpServers\": {\n  \"a\": {\"command\": \"x\"},\n  \"a\": {\"command\": \"y\"}\n}}";
        match parse(text) {
            Err(ConfigError::Syntax { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(
                    message.contains("mcpServers.a: duplicate server name"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err(text).starts_with("mcpmux.json: line 3, column "),
            "{}",
            err(text)
        );
        let msg = err(&server(r#"{"command": "x", "env": {"K": "1", "K": "2"}}"#));
        assert!(msg.contains("mcpServers.s.env.K: duplicate key"), "{msg}");
        let msg = err(r#"{"mcpServers": {"a": {"command": "x"}}, "mcpServers": {}}"#);
        assert!(msg.contains("mcpServers: duplicate key"), "{msg}");
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"X-A": "1", "x-a": "2"}}"#),
            "mcpServers.s.headers.x-a",
            "ignore case",
        );
    }

    #[test]
    fn server_names() {
        let with_name =
            |name: &str| format!(r#"{{"mcpServers": {{"{name}": {{"command": "x"}}}}}}"#);
        let long = "a".repeat(65);
        for bad in ["", long.as_str(), "has space", "a/b", "é"] {
            invalid_at(
                &with_name(bad),
                &join("mcpServers", bad),
                "not a valid server name",
            );
        }
        let max = "b".repeat(64);
        for good in ["a", "A-z_0.9", max.as_str()] {
            assert!(parse(&with_name(good)).unwrap().servers.contains_key(good));
        }
    }

    #[test]
    fn entry_kind_errors() {
        invalid_at(
            &server(r#"{"command": "x", "url": "https://x.org"}"#),
            "mcpServers.s",
            "has both \"command\" and \"url\"",
        );
        invalid_at(&server("{}"), "mcpServers.s", "needs \"command\"");
        invalid_at(
            &server(r#"{"args": ["a"]}"#),
            "mcpServers.s",
            "needs \"command\"",
        );
        invalid_at(
            &server("[]"),
            "mcpServers.s",
            "expected an object, found an array",
        );
        invalid_at(r#"{"mcpServers": {}}"#, "mcpServers", "at least one server");
        invalid_at(r#"{"gateway": {}}"#, "mcpServers", "is missing");
        invalid_at(
            r#"{"mcpServers": []}"#,
            "mcpServers",
            "invalid type: sequence",
        );
        let msg = err("[1]");
        assert_eq!(msg, "mcpmux.json: expected an object, found an array");
    }

    #[test]
    fn wrong_types_name_the_key() {
        invalid_at(
            &server(r#"{"command": 5}"#),
            "mcpServers.s.command",
            "expected a string",
        );
        invalid_at(
            &server(r#"{"command": "x", "args": "a b"}"#),
            "mcpServers.s.args",
            "expected a sequence",
        );
        invalid_at(
            &server(r#"{"command": "x", "args": [1]}"#),
            "mcpServers.s.args",
            "invalid type: integer",
        );
        invalid_at(
            &server(r#"{"command": "x", "env": {"K": 1}}"#),
            "mcpServers.s.env",
            "expected a string",
        );
        invalid_at(
            &server(r#"{"command": "x", "cwd": true}"#),
            "mcpServers.s.cwd",
            "invalid type: boolean",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": ["a"]}"#),
            "mcpServers.s.headers",
            "invalid type",
        );
        invalid_at(
            &gateway(r#"{"helloTimeoutMs": "10"}"#),
            "gateway.helloTimeoutMs",
            "invalid type: string",
        );
        invalid_at(
            &gateway(r#"{"helloTimeoutMs": -1}"#),
            "gateway.helloTimeoutMs",
            "invalid",
        );
        invalid_at(
            &gateway(r#"{"maxFrameBytes": 1.5}"#),
            "gateway.maxFrameBytes",
            "floating point",
        );
        invalid_at(
            &gateway(r#"{"mcpProxy": "mcp-proxy"}"#),
            "gateway.mcpProxy",
            "expected a sequence",
        );
        invalid_at(
            &gateway("true"),
            "gateway",
            "expected an object, found a boolean",
        );
    }

    #[test]
    fn stdio_checks() {
        let cases = [
            (
                r#"{"command": "x", "type": "http"}"#,
                "type",
                "write \"stdio\"",
            ),
            (r#"{"command": ""}"#, "command", "is empty"),
            (
                r#"{"command": "x", "env": {"A=B": "1"}}"#,
                "env.A=B",
                "not a valid environment",
            ),
            (
                r#"{"command": "x", "env": {"": "1"}}"#,
                "env.",
                "not a valid environment",
            ),
            (r#"{"command": "x", "cwd": ""}"#, "cwd", "write a directory"),
        ];
        for (entry, key, needle) in cases {
            invalid_at(&server(entry), &format!("mcpServers.s.{key}"), needle);
        }
        // A NUL in an argument is passed through (spawning reports it), not a parse error.
        let s = stdio(
            &parse(&server(r#"{"command": "x", "args": ["a\u0000"]}"#)).unwrap(),
            "s",
        );
        assert_eq!(s.args, ["a\0"]);
    }

    #[test]
    fn remote_transport_and_type_alias() {
        let t = |extra: &str| {
            remote(
                &parse(&server(&format!(r#"{{"url": "http://x.org"{extra}}}"#))).unwrap(),
                "s",
            )
            .transport
        };
        assert_eq!(t(""), RemoteTransport::StreamableHttp);
        assert_eq!(t(r#", "transport": "sse""#), RemoteTransport::Sse);
        assert_eq!(
            t(r#", "transport": "streamable-http""#),
            RemoteTransport::StreamableHttp
        );
        assert_eq!(t(r#", "type": "http""#), RemoteTransport::StreamableHttp);
        assert_eq!(
            t(r#", "type": "streamable-http""#),
            RemoteTransport::StreamableHttp
        );
        assert_eq!(t(r#", "type": "sse""#), RemoteTransport::Sse);
        assert_eq!(
            t(r#", "type": "sse", "transport": "sse""#),
            RemoteTransport::Sse
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "type": "stdio"}"#),
            "mcpServers.s.type",
            "\"stdio\"",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "transport": "websocket"}"#),
            "mcpServers.s.transport",
            "\"sse\"",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "type": "http", "transport": "sse"}"#),
            "mcpServers.s.transport",
            "contradicts",
        );
    }

    #[test]
    fn url_validation() {
        for good in [
            "https://example.org/mcp",
            "HTTP://h",
            "http://user:pw@h:8080/p?q#f",
            "http://[::1]:3000/mcp",
            "https://h:/x",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://h",
            "example.org/mcp",
            "https://",
            "https:///path",
            "http://user@/",
            "http://:80",
            "http://h:99999",
            "http://h:x",
            "http://[::1/",
            "http://h/a b",
            "https//h",
            "hé://x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        invalid_at(
            &server(r#"{"url": "ws://x.org"}"#),
            "mcpServers.s.url",
            "https://example.org/mcp",
        );
        invalid_at(
            &server(r#"{"url": "https://${EMPTY}/mcp"}"#),
            "mcpServers.s.url",
            "has no host",
        );
    }

    #[test]
    fn header_checks() {
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"X-A": "a\r\nEvil: 1"}}"#),
            "mcpServers.s.headers.X-A",
            "CR, LF",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"X-A": "a\nb"}}"#),
            "mcpServers.s.headers.X-A",
            "CR, LF",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"Bad Name": "v"}}"#),
            "mcpServers.s.headers.Bad Name",
            "not a valid HTTP header name",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"X:Y": "v"}}"#),
            "mcpServers.s.headers.X:Y",
            "header name",
        );
        invalid_at(
            &server(r#"{"url": "https://x.org", "headers": {"": "v"}}"#),
            "mcpServers.s.headers.",
            "header name",
        );
        let r = remote(
            &parse(&server(
                r#"{"url": "https://x.org", "headers": {"X-Tab": "a\tb", "x-custom!": ""}}"#,
            ))
            .unwrap(),
            "s",
        );
        assert_eq!(r.headers["X-Tab"].expose(), "a\tb");
        assert_eq!(r.headers["x-custom!"].expose(), "");
    }

    #[test]
    fn gateway_values() {
        invalid_at(
            &gateway(r#"{"listen": "localhost:7300"}"#),
            "gateway.listen",
            "not an \"ip:port\" address",
        );
        invalid_at(
            &gateway(r#"{"listen": "127.0.0.1"}"#),
            "gateway.listen",
            "127.0.0.1:7300",
        );
        invalid_at(
            &gateway(r#"{"listen": "127.0.0.1:70000"}"#),
            "gateway.listen",
            "ip:port",
        );
        assert_eq!(
            parse(&gateway(r#"{"listen": "[::1]:0"}"#))
                .unwrap()
                .gateway
                .listen,
            "[::1]:0".parse().unwrap()
        );
        invalid_at(
            &gateway(r#"{"mcpProxy": []}"#),
            "gateway.mcpProxy",
            "non-empty array",
        );
        invalid_at(
            &gateway(r#"{"mcpProxy": [""]}"#),
            "gateway.mcpProxy",
            "non-empty array",
        );
        for key in [
            "helloTimeoutMs",
            "stopGraceMs",
            "restartBackoffMinMs",
            "maxFrameBytes",
            "maxInflightRequests",
        ] {
            invalid_at(
                &gateway(&format!(r#"{{"{key}": 0}}"#)),
                &format!("gateway.{key}"),
                "from 1 to 4294967295",
            );
        }
        invalid_at(
            &gateway(r#"{"requestTimeoutMs": 4294967296}"#),
            "gateway.requestTimeoutMs",
            "is 4294967296",
        );
        invalid_at(
            &gateway(r#"{"maxUpstreamMessageBytes": 18446744073709551615}"#),
            "gateway.maxUpstreamMessageBytes",
            "or remove it",
        );
    }

    #[test]
    fn backoff_max_must_not_be_below_min() {
        invalid_at(
            &gateway(r#"{"restartBackoffMinMs": 1000, "restartBackoffMaxMs": 999}"#),
            "gateway.restartBackoffMaxMs",
            "(999 ms) must be at least restartBackoffMinMs (1000 ms)",
        );
        // The default maximum (30 s) is checked against a configured minimum too.
        invalid_at(
            &gateway(r#"{"restartBackoffMinMs": 60000}"#),
            "gateway.restartBackoffMaxMs",
            "30000 ms",
        );
        let g = parse(&gateway(
            r#"{"restartBackoffMinMs": 7, "restartBackoffMaxMs": 7}"#,
        ))
        .unwrap()
        .gateway;
        assert_eq!(g.restart_backoff_max, Duration::from_millis(7));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let text = "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\",}\n  }\n}";
        match parse(text) {
            Err(e @ ConfigError::Syntax { .. }) => {
                let msg = e.to_string();
                let ConfigError::Syntax { line, column, .. } = e else {
                    unreachable!()
                };
                assert_eq!((line, column), (3, 26));
                assert!(
                    msg.starts_with("mcpmux.json: line 3, column 26: trailing comma"),
                    "{msg}"
                );
                assert!(
                    msg.contains("fix the JSON syntax") && !msg.contains(" at line "),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(err("").contains("line 1, column 0: EOF while parsing"));
        assert!(
            err(r#"{"mcpServers": {"a": {"command": "x"}}} x"#).contains("trailing characters")
        );
        // A UTF-8 byte order mark is tolerated.
        assert!(parse("\u{feff}{\"mcpServers\": {\"a\": {\"command\": \"x\"}}}").is_ok());
        // Deep nesting is an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&deep).contains("recursion limit exceeded"));
    }

    #[test]
    fn secret_debug_is_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
        let c = parse(r#"{"mcpServers": {"r": {"url": "https://x.org", "headers": {"Authorization": "Bearer ${TOKEN}"}}}}"#).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("s3cret") && dump.contains("***"), "{dump}");
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let dir = TempDir::new("load");
        let path = dir.0.join("mcpmux.json");
        std::fs::write(&path, r#"{"mcpServers": {"a": {"command": "x"}}}"#).unwrap();
        assert!(Config::load(&path).unwrap().servers.contains_key("a"));
        std::fs::write(
            &path,
            r#"{"mcpServers": {"a": {"command": "x", "bogus": 1}}}"#,
        )
        .unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: mcpServers.a.bogus: unknown key",
                path.display()
            )),
            "{msg}"
        );
        let missing = dir.0.join("nope.json");
        let e = Config::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(
            e.to_string().starts_with(&format!(
                "{}: cannot read the config file: ",
                missing.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn demo_prefers_local_install() {
        let dir = TempDir::new("demo");
        let c = Config::demo(&dir.0);
        assert_eq!(c.gateway, GatewayConfig::default());
        let s = stdio(&c, "everything");
        assert_eq!(c.servers.len(), 1);
        assert_eq!(s.command, "npx");
        assert_eq!(
            s.args,
            [
                "-y",
                "@modelcontextprotocol/server-everything@2026.8.31",
                "stdio"
            ]
        );
        let script = dir.file(
            "@modelcontextprotocol/server-everything/dist/index.js",
            0o644,
        );
        let s = stdio(&Config::demo(&dir.0), "everything");
        assert_eq!(s.command, "node");
        assert_eq!(s.args, [script.to_str().unwrap(), "stdio"]);
        assert!(Path::new(&s.args[0]).is_absolute());
    }

    #[test]
    fn resolve_mcp_proxy_branches() {
        let dir = TempDir::new("proxy");
        let modules = dir.0.join("node_modules");
        let bin_dir = dir.0.join("bin");
        let npx = vec![
            "npx".to_string(),
            "-y".to_string(),
            format!("mcp-proxy@{MCP_PROXY_VERSION}"),
        ];
        assert_eq!(MCP_PROXY_VERSION, "6.7.19");
        // Nothing anywhere: npx with the pinned version.
        let path_var = std::env::join_paths([&bin_dir, &dir.0.join("missing")]).unwrap();
        let path_var = path_var.to_str().unwrap();
        assert_eq!(resolve_mcp_proxy(None, &modules, Some(path_var)), npx);
        assert_eq!(resolve_mcp_proxy(None, &modules, None), npx);
        assert_eq!(resolve_mcp_proxy(Some(&[]), &modules, Some("")), npx);
        // On PATH (non-executable files are skipped on unix).
        #[cfg(unix)]
        {
            dir.file("bin/mcp-proxy", 0o644);
            assert_eq!(resolve_mcp_proxy(None, &modules, Some(path_var)), npx);
        }
        let on_path = dir.file("bin/mcp-proxy", 0o755);
        assert_eq!(
            resolve_mcp_proxy(None, &modules, Some(path_var)),
            [on_path.to_str().unwrap()]
        );
        // A local install wins over PATH.
        let local = dir.file("node_modules/.bin/mcp-proxy", 0o755);
        assert_eq!(
            resolve_mcp_proxy(None, &modules, Some(path_var)),
            [local.to_str().unwrap()]
        );
        // A configured command wins over everything.
        let configured = vec!["node".to_string(), "proxy.mjs".to_string()];
        assert_eq!(
            resolve_mcp_proxy(Some(&configured), &modules, Some(path_var)),
            configured
        );
    }

    #[test]
    fn never_panics_on_truncated_or_mangled_input() {
        let text = r#"{"mcpServers": {"a": {"command": "x", "env": {"K": "${TOKEN}$$"}},
            "r": {"url": "https://[::1]:80/", "headers": {"H": "v"}, "type": "sse"}},
            "gateway": {"listen": "[::1]:1", "mcpProxy": ["p"], "maxFrameBytes": 5}}"#;
        assert!(parse(text).is_ok());
        for (i, _) in text.char_indices() {
            for candidate in [&text[..i], &format!("{}{}", &text[..i], &text[i + 1..])] {
                if let Err(e) = parse(candidate) {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with("mcpmux.json: ") && !msg.contains('\n'),
                        "{msg}"
                    );
                }
            }
        }
    }
}
