//! Conversion of the raw structs into the public config types, with every validation rule:
//! server names, the kind of each entry and the keys that belong to it, environment variable
//! names, URLs, HTTP headers, and the `gateway` values (addresses, the mcp-proxy command, the
//! bounds of the numbers and how they relate). The messages say what is wrong and what to do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::access::RawAccess;
use super::expand::expand_env;
use super::raw::{Fault, Raw, RawConfig, RawGateway, RawServer, decode, join, read_tree};
use super::{
    Config, ConfigError, GatewayConfig, MCP_PROXY_KEY_VAR, RemoteServer, RemoteTransport, Secret,
    ServerConfig, StdioServer,
};

/// Largest number accepted for any `gateway` timeout or limit (about 49 days in ms, 4 GiB).
pub(super) const MAX_NUMBER: u64 = u32::MAX as u64;

/// Parses one config text; errors name `source_name`, `${NAME}` is looked up in `env`.
pub(super) struct Parser<'a> {
    pub source_name: &'a str,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

type Res<T> = Result<T, ConfigError>;

impl Parser<'_> {
    pub(super) fn fail<T>(&self, path: &str, message: impl Into<String>) -> Res<T> {
        let (source_name, path) = (self.source_name.to_string(), path.to_string());
        Err(ConfigError::Invalid {
            source_name,
            path,
            message: message.into(),
        })
    }

    /// `decode`, with its fault reported against this file.
    pub(super) fn decode<T: Raw>(&self, value: &Value, path: &str) -> Res<T> {
        decode(value, path).or_else(|Fault { path, message }| self.fail(&path, message))
    }

    pub fn parse(&self, text: &str) -> Res<Config> {
        let tree = read_tree(text, self.source_name)?;
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
            Some(value) => self.gateway(value, &servers)?,
            None => GatewayConfig::default(),
        };
        Ok(Config { servers, gateway })
    }

    pub(super) fn expand(&self, value: &str, path: &str) -> Res<String> {
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
            ("inheritEnv", raw.inherit_env.is_some()),
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
            self.env_name(&key, &key_path)?;
            let value = self.expand(&value, &key_path)?;
            env.insert(key, value);
        }
        let inherit_env = raw.inherit_env.unwrap_or_default();
        for (i, name) in inherit_env.iter().enumerate() {
            let name_path = format!("{path}.inheritEnv[{i}]");
            self.env_name(name, &name_path)?;
            if inherit_env[..i].contains(name) {
                return self.fail(&name_path, format!("repeats {name:?}; keep one"));
            }
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
            inherit_env,
            cwd,
        }))
    }

    /// Fails at `path` unless `name` can name an environment variable a server may get.
    fn env_name(&self, name: &str, path: &str) -> Res<()> {
        if name.is_empty() || name.contains(['=', '\0']) {
            return self.fail(path, "is not a valid environment variable name");
        }
        if name == MCP_PROXY_KEY_VAR {
            let msg = format!(
                "{MCP_PROXY_KEY_VAR} is set by mcpmux (the key of the server's mcp-proxy); remove it"
            );
            return self.fail(path, msg);
        }
        Ok(())
    }

    fn remote(&self, raw: RawServer, path: &str) -> Res<ServerConfig> {
        let url_path = join(path, "url");
        let url = self.expand(raw.url.as_deref().unwrap_or_default(), &url_path)?;
        if let Err(msg) = check_url(&url) {
            return self.fail(&url_path, msg);
        }
        use RemoteTransport::{Sse, StreamableHttp};
        let by_type = self.one_of(
            raw.kind.as_deref(),
            &join(path, "type"),
            &[
                ("http", StreamableHttp),
                ("streamable-http", StreamableHttp),
                ("sse", Sse),
            ],
            "a \"url\" entry takes \"http\", \"streamable-http\" or \"sse\"",
        )?;
        let by_transport = self.one_of(
            raw.transport.as_deref(),
            &join(path, "transport"),
            &[("streamable-http", StreamableHttp), ("sse", Sse)],
            "write \"streamable-http\" (the default) or \"sse\"",
        )?;
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

    /// The value that `word` stands for in `choices` (`None` when absent); else fails at `path`
    /// with `is "<word>"; <hint>`.
    fn one_of<T: Copy>(
        &self,
        word: Option<&str>,
        path: &str,
        choices: &[(&str, T)],
        hint: &str,
    ) -> Res<Option<T>> {
        let Some(word) = word else {
            return Ok(None);
        };
        match choices.iter().find(|(w, _)| *w == word) {
            Some(&(_, value)) => Ok(Some(value)),
            None => self.fail(path, format!("is \"{word}\"; {hint}")),
        }
    }

    fn gateway(
        &self,
        value: &Value,
        servers: &BTreeMap<String, ServerConfig>,
    ) -> Res<GatewayConfig> {
        let mut r: RawGateway = self.decode(value, "gateway")?;
        let mut g = GatewayConfig::default();
        if let Some(s) = r.listen.take() {
            let Ok(addr) = s.parse() else {
                let msg = format!(
                    "\"{s}\" is not an \"ip:port\" address; write e.g. \"127.0.0.1:7300\" \
                     or \"[::1]:7300\""
                );
                return self.fail("gateway.listen", msg);
            };
            g.listen = addr;
        }
        if let Some(cmd) = r.mcp_proxy.take() {
            if cmd.first().is_none_or(String::is_empty) {
                let msg =
                    "must be a non-empty array of strings (the command that launches mcp-proxy)";
                return self.fail("gateway.mcpProxy", msg);
            }
            g.mcp_proxy = Some(cmd);
        }
        let access = RawAccess {
            api_keys: r.api_keys.take(),
            allowed_origins: r.allowed_origins.take(),
            allowed_hosts: r.allowed_hosts.take(),
            allow_anonymous: r.allow_anonymous.take(),
            tls: r.tls.take(),
        };
        (g.access, g.tls) = self.access(access, servers)?;
        if let Some(admin) = r.admin.take() {
            g.admin = Some(self.admin(&admin)?);
        }
        if let Some(watch) = r.watch_config.take() {
            g.watch_config = watch;
        }
        if let Some(name) = r.instance.take() {
            g.instance = self.instance(&name)?;
        }
        if let Some(store) = r.store.take() {
            g.store = self.store(&store)?;
        }
        r.numbers(&mut g, |key, n| {
            if n == 0 || n > MAX_NUMBER {
                let msg = format!(
                    "is {n}; use a whole number from 1 to {MAX_NUMBER} or remove it for the default"
                );
                return self.fail(&format!("gateway.{key}"), msg);
            }
            Ok(())
        })?;
        let (max, min) = (g.restart_backoff_max, g.restart_backoff_min);
        let names = ["restartBackoffMaxMs", "restartBackoffMinMs"];
        self.at_least(names, [max.as_millis(), min.as_millis()], "ms", "raise it")?;
        let (resume, queue) = (g.resume_max_bytes as u128, g.outbound_queue_bytes as u128);
        let names = ["resumeMaxBytes", "outboundQueueBytes"];
        let fix = "raise resumeMaxBytes or lower outboundQueueBytes (a session kept for resume \
                   must be able to hold a full outbound queue)";
        self.at_least(names, [resume, queue], "bytes", fix)?;
        Ok(g)
    }

    /// Fails at `gateway.<key>` unless its value is at least that of `min_key` (both in `unit`).
    fn at_least(
        &self,
        [key, min_key]: [&str; 2],
        [value, min]: [u128; 2],
        unit: &str,
        fix: &str,
    ) -> Res<()> {
        if value >= min {
            return Ok(());
        }
        let msg = format!("({value} {unit}) must be at least {min_key} ({min} {unit}); {fix}");
        self.fail(&format!("gateway.{key}"), msg)
    }
}

pub(super) fn is_server_name(name: &str) -> bool {
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
/// The messages never quote the URL: it may hold credentials, from `${NAME}` or not.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    const HINT: &str = "write an http:// or https:// URL such as \"https://example.org/mcp\"";
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|p| {
            url.get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        })
        .map(|p| p.len());
    let Some(rest) = scheme_len.and_then(|n| url.get(n..)) else {
        return Err(format!("is not an http(s) URL; {HINT}"));
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
        return Err(format!("has no host; {HINT}"));
    }
    if port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_err()) {
        return Err(format!("has an invalid port; {HINT}"));
    }
    Ok(())
}
