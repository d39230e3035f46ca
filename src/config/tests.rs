//! Tests of config parsing: every key, default, rule and message, through `Config::parse`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::expand::expand_env;
use super::raw::{Raw, RawConfig, RawGateway, RawServer, join};
use super::validate::check_url;
use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".to_string()),
        "HOST" => Some("example.org".to_string()),
        "EMPTY" => Some(String::new()),
        "DOLLAR" => Some("${TOKEN}".to_string()),
        "POD_NAME" => Some("mcpmux-2".to_string()),
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

/// `invalid_at` for each (entry, key, needle): server "s" is `entry`, the error at
/// `mcpServers.s.<key>`.
fn invalid_entries(cases: &[(&str, &str, &str)]) {
    for (entry, key, needle) in cases {
        invalid_at(&server(entry), &join("mcpServers.s", key), needle);
    }
}

/// `invalid_at` for each (section, key, needle): the `gateway` section is `section`, the error at
/// `gateway.<key>`.
fn invalid_gateways(cases: &[(&str, &str, &str)]) {
    for (section, key, needle) in cases {
        invalid_at(&gateway(section), &join("gateway", key), needle);
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
        let p = std::env::temp_dir().join(format!("mcpmux-config-{tag}-{}", std::process::id()));
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
                            "env": {"KEY": "${TOKEN}"}, "inheritEnv": ["LANG", "HTTPS_PROXY"],
                            "cwd": "/tmp", "type": "stdio" },
            "remote": { "url": "https://${HOST}/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"} }
          },
          "gateway": { "listen": "0.0.0.0:8080", "mcpProxy": ["node", "path/to/mcp-proxy.mjs"],
                       "helloTimeoutMs": 1, "requestTimeoutMs": 2, "connectTimeoutMs": 3, "startTimeoutMs": 4,
                       "stopGraceMs": 5, "restartBackoffMinMs": 6, "restartBackoffMaxMs": 7, "maxFrameBytes": 8,
                       "outboundQueueBytes": 9, "maxInflightRequests": 10, "maxUpstreamMessageBytes": 11,
                       "resumeWindowMs": 12, "resumeMaxFrames": 13, "resumeMaxBytes": 14, "writeTimeoutMs": 15,
                       "heartbeatMs": 16, "maxUpstreamSessions": 17, "shutdownGraceMs": 18 }
        }"#,
    )
    .unwrap();
    let s = stdio(&c, "everything");
    assert_eq!(s.command, "npx");
    assert_eq!(s.args, ["-y", "@modelcontextprotocol/server-everything"]);
    assert_eq!(s.env.get("KEY").map(String::as_str), Some("s3cret"));
    assert_eq!(s.inherit_env, ["LANG", "HTTPS_PROXY"]);
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
    assert_eq!(
        [
            g.resume_window,
            g.write_timeout,
            g.heartbeat,
            g.shutdown_grace
        ],
        [ms(12), ms(15), ms(16), ms(18)]
    );
    assert_eq!(
        [
            g.resume_max_frames,
            g.resume_max_bytes,
            g.max_upstream_sessions
        ],
        [13, 14, 17]
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
    assert_eq!(g.resume_window, Duration::from_secs(60));
    assert_eq!(g.resume_max_frames, 10_000);
    assert_eq!(g.resume_max_bytes, 8_388_608);
    assert_eq!(g.write_timeout, Duration::from_secs(10));
    assert_eq!(g.heartbeat, Duration::from_secs(15));
    assert_eq!(g.max_upstream_sessions, 64);
    assert_eq!(g.shutdown_grace, Duration::from_secs(5));
    assert_eq!(g.max_sessions, 10_000);
    assert_eq!(g.resume_budget_bytes, 256 << 20);
    // Absent and empty gateway sections both mean the defaults; stdio extras default to empty.
    let c = parse(r#"{"mcpServers": {"a": {"command": "x"}}}"#).unwrap();
    assert_eq!(c.gateway, g);
    assert_eq!(
        c.servers["a"],
        ServerConfig::Stdio(StdioServer {
            command: "x".into(),
            args: vec![],
            env: BTreeMap::new(),
            inherit_env: vec![],
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
    invalid_entries(&[
        (
            r#"{"command": "x", "headers": {}}"#,
            "headers",
            "applies only to url (remote) servers",
        ),
        (
            r#"{"command": "x", "transport": "sse"}"#,
            "transport",
            "remove it",
        ),
        (
            r#"{"url": "https://x.org", "env": {}}"#,
            "env",
            "applies only to command (stdio) servers",
        ),
        (
            r#"{"url": "https://x.org", "args": []}"#,
            "args",
            "remove it",
        ),
        (
            r#"{"url": "https://x.org", "inheritEnv": ["HOME"]}"#,
            "inheritEnv",
            "applies only to command (stdio) servers",
        ),
    ]);
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
    let with_name = |name: &str| format!(r#"{{"mcpServers": {{"{name}": {{"command": "x"}}}}}}"#);
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
    invalid_entries(&[
        (r#"{"command": 5}"#, "command", "expected a string"),
        (
            r#"{"command": "x", "args": "a b"}"#,
            "args",
            "expected a sequence",
        ),
        (
            r#"{"command": "x", "args": [1]}"#,
            "args",
            "invalid type: integer",
        ),
        (
            r#"{"command": "x", "env": {"K": 1}}"#,
            "env",
            "expected a string",
        ),
        (
            r#"{"command": "x", "cwd": true}"#,
            "cwd",
            "invalid type: boolean",
        ),
        (
            r#"{"command": "x", "inheritEnv": "HOME"}"#,
            "inheritEnv",
            "expected a sequence",
        ),
        (
            r#"{"command": "x", "inheritEnv": [1]}"#,
            "inheritEnv",
            "invalid type: integer",
        ),
        (
            r#"{"url": "https://x.org", "headers": ["a"]}"#,
            "headers",
            "invalid type",
        ),
    ]);
    invalid_gateways(&[
        (
            r#"{"helloTimeoutMs": "10"}"#,
            "helloTimeoutMs",
            "invalid type: string",
        ),
        (r#"{"helloTimeoutMs": -1}"#, "helloTimeoutMs", "invalid"),
        (
            r#"{"maxFrameBytes": 1.5}"#,
            "maxFrameBytes",
            "floating point",
        ),
        (
            r#"{"mcpProxy": "mcp-proxy"}"#,
            "mcpProxy",
            "expected a sequence",
        ),
    ]);
    invalid_at(
        &gateway("true"),
        "gateway",
        "expected an object, found a boolean",
    );
}

#[test]
fn stdio_checks() {
    invalid_entries(&[
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
        (
            r#"{"command": "x", "inheritEnv": ["HOME", "A=B"]}"#,
            "inheritEnv[1]",
            "not a valid environment",
        ),
        (
            r#"{"command": "x", "inheritEnv": [""]}"#,
            "inheritEnv[0]",
            "not a valid environment",
        ),
        (
            r#"{"command": "x", "inheritEnv": ["LANG", "TZ", "LANG"]}"#,
            "inheritEnv[2]",
            "repeats \"LANG\"; keep one",
        ),
        (
            r#"{"command": "x", "inheritEnv": ["MCP_PROXY_API_KEY"]}"#,
            "inheritEnv[0]",
            "set by mcpmux",
        ),
        (
            r#"{"command": "x", "env": {"MCP_PROXY_API_KEY": "k"}}"#,
            "env.MCP_PROXY_API_KEY",
            "set by mcpmux",
        ),
    ]);
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
    invalid_entries(&[
        (
            r#"{"url": "https://x.org", "type": "stdio"}"#,
            "type",
            "\"stdio\"",
        ),
        (
            r#"{"url": "https://x.org", "transport": "websocket"}"#,
            "transport",
            "\"sse\"",
        ),
        (
            r#"{"url": "https://x.org", "type": "http", "transport": "sse"}"#,
            "transport",
            "contradicts",
        ),
    ]);
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
    // The URL may hold credentials: no message repeats it.
    for bad in [
        "ftp://u:${TOKEN}@h/?k=${TOKEN}",
        "https://u:${TOKEN}@/?k=${TOKEN}",
        "https://u:${TOKEN}@h:x/?k=${TOKEN}",
        "https://h/?k=${TOKEN} x",
    ] {
        let msg = err(&server(&format!(r#"{{"url": "{bad}"}}"#)));
        assert!(msg.starts_with("mcpmux.json: mcpServers.s.url: "), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}

#[test]
fn header_checks() {
    invalid_entries(&[
        (
            r#"{"url": "https://x.org", "headers": {"X-A": "a\r\nEvil: 1"}}"#,
            "headers.X-A",
            "CR, LF",
        ),
        (
            r#"{"url": "https://x.org", "headers": {"X-A": "a\nb"}}"#,
            "headers.X-A",
            "CR, LF",
        ),
        (
            r#"{"url": "https://x.org", "headers": {"Bad Name": "v"}}"#,
            "headers.Bad Name",
            "not a valid HTTP header name",
        ),
        (
            r#"{"url": "https://x.org", "headers": {"X:Y": "v"}}"#,
            "headers.X:Y",
            "header name",
        ),
        (
            r#"{"url": "https://x.org", "headers": {"": "v"}}"#,
            "headers.",
            "header name",
        ),
    ]);
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
    invalid_gateways(&[
        (
            r#"{"listen": "localhost:7300"}"#,
            "listen",
            "not an \"ip:port\" address",
        ),
        (r#"{"listen": "127.0.0.1"}"#, "listen", "127.0.0.1:7300"),
        (r#"{"listen": "127.0.0.1:70000"}"#, "listen", "ip:port"),
    ]);
    assert_eq!(
        parse(&gateway(r#"{"listen": "[::1]:0"}"#))
            .unwrap()
            .gateway
            .listen,
        "[::1]:0".parse().unwrap()
    );
    invalid_gateways(&[
        (r#"{"mcpProxy": []}"#, "mcpProxy", "non-empty array"),
        (r#"{"mcpProxy": [""]}"#, "mcpProxy", "non-empty array"),
    ]);
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

/// Reads one numeric field of a [`GatewayConfig`], in ms or as a count.
type NumberField = fn(&GatewayConfig) -> u128;

/// Every numeric `gateway` key, with a valid value other than its default, and its field.
const NUMBER_KEYS: &[(&str, u64, NumberField)] = &[
    ("helloTimeoutMs", 11, |g| g.hello_timeout.as_millis()),
    ("requestTimeoutMs", 12, |g| g.request_timeout.as_millis()),
    ("connectTimeoutMs", 13, |g| g.connect_timeout.as_millis()),
    ("startTimeoutMs", 14, |g| g.start_timeout.as_millis()),
    ("stopGraceMs", 15, |g| g.stop_grace.as_millis()),
    ("restartBackoffMinMs", 16, |g| {
        g.restart_backoff_min.as_millis()
    }),
    ("restartBackoffMaxMs", 40_000, |g| {
        g.restart_backoff_max.as_millis()
    }),
    ("maxFrameBytes", 18, |g| g.max_frame_bytes as u128),
    ("outboundQueueBytes", 19, |g| g.outbound_queue_bytes as u128),
    ("maxInflightRequests", 20, |g| {
        g.max_inflight_requests as u128
    }),
    ("maxUpstreamMessageBytes", 21, |g| {
        g.max_upstream_message_bytes as u128
    }),
    ("resumeWindowMs", 22, |g| g.resume_window.as_millis()),
    ("resumeMaxFrames", 23, |g| g.resume_max_frames as u128),
    ("resumeMaxBytes", 9 << 20, |g| g.resume_max_bytes as u128),
    ("writeTimeoutMs", 25, |g| g.write_timeout.as_millis()),
    ("heartbeatMs", 26, |g| g.heartbeat.as_millis()),
    ("maxUpstreamSessions", 27, |g| {
        g.max_upstream_sessions as u128
    }),
    ("shutdownGraceMs", 28, |g| g.shutdown_grace.as_millis()),
    ("maxSessions", 29, |g| g.max_sessions as u128),
    ("upstreamIdleTimeoutMs", 30, |g| {
        g.upstream_idle_timeout.as_millis()
    }),
    ("maxPendingPerIp", 31, |g| g.max_pending_per_ip as u128),
    ("resumeBudgetBytes", 32, |g| g.resume_budget_bytes as u128),
    ("maxConnectionsPerIp", 33, |g| {
        g.max_connections_per_ip as u128
    }),
    ("headerTimeoutMs", 34, |g| g.header_timeout.as_millis()),
];

#[test]
fn each_gateway_number_is_read_into_its_field() {
    let default = GatewayConfig::default();
    // The table covers every numeric key: all keys but listen, mcpProxy and the access keys.
    let listed: Vec<&str> = NUMBER_KEYS.iter().map(|k| k.0).collect();
    assert_eq!(listed, RawGateway::KEYS[2..2 + listed.len()]);
    assert_eq!(
        RawGateway::KEYS[2 + listed.len()..],
        [
            "apiKeys",
            "allowedOrigins",
            "allowedHosts",
            "allowAnonymous",
            "tls",
            "admin",
            "watchConfig",
            "instance",
            "store"
        ]
    );
    for &(key, n, field) in NUMBER_KEYS {
        let g = parse(&gateway(&format!(r#"{{"{key}": {n}}}"#)))
            .unwrap()
            .gateway;
        assert_eq!(field(&g), u128::from(n), "{key}");
        assert_ne!(field(&default), u128::from(n), "{key}");
        // Only that field changed.
        for &(other, _, other_field) in NUMBER_KEYS.iter().filter(|k| k.0 != key) {
            assert_eq!(other_field(&g), other_field(&default), "{key} set {other}");
        }
        assert_eq!(
            g.changes_needing_restart(&default),
            [format!("gateway.{key}")]
        );
        // The same bounds for every key.
        invalid_at(
            &gateway(&format!(r#"{{"{key}": 0}}"#)),
            &format!("gateway.{key}"),
            "is 0; use a whole number from 1 to 4294967295 or remove it for the default",
        );
        invalid_at(
            &gateway(&format!(r#"{{"{key}": 4294967296}}"#)),
            &format!("gateway.{key}"),
            "is 4294967296; use a whole number from 1 to 4294967295",
        );
    }
}

#[test]
fn admin_takes_a_listener_and_always_a_key() {
    let g = parse(&gateway(r#"{"admin": {"key": "${TOKEN}-and-some-more"}}"#))
        .unwrap()
        .gateway;
    let admin = g.admin.expect("admin");
    assert_eq!(admin.listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(format!("{:?}", admin.key), "key ***");
    assert_eq!(
        admin.key.digest(),
        sha256(b"s3cret-and-some-more"),
        "${{VAR}} expanded"
    );
    let hashed = format!(
        r#"{{"admin": {{"listen": "127.0.0.1:0", "keySha256": "{}"}}, "watchConfig": false}}"#,
        "ab".repeat(32)
    );
    let g = parse(&gateway(&hashed)).unwrap().gateway;
    assert_eq!(g.admin.as_ref().map(|a| a.listen.port()), Some(0));
    assert!(!g.watch_config && GatewayConfig::default().watch_config);
    assert_eq!(
        g.changes_needing_restart(&GatewayConfig::default()),
        ["gateway.watchConfig", "gateway.admin.listen"]
    );
    invalid_gateways(&[
        (r#"{"admin": {}}"#, "admin", "needs \"key\""),
        (r#"{"admin": {"key": "short"}}"#, "admin.key", "too short"),
        (
            r#"{"admin": {"key": "0123456789abcdef", "keySha256": "x"}}"#,
            "admin",
            "keep one",
        ),
        (
            r#"{"admin": {"keySha256": "x"}}"#,
            "admin.keySha256",
            "64 hexadecimal",
        ),
        (
            r#"{"admin": {"key": "0123456789abcdef", "listen": "nowhere"}}"#,
            "admin.listen",
            "not an \"ip:port\"",
        ),
        (
            r#"{"admin": {"key": "${NOPE}"}}"#,
            "admin.key",
            "NOPE is not set",
        ),
        (r#"{"admin": {"port": 1}}"#, "admin.port", "unknown key"),
        (r#"{"watchConfig": 1}"#, "watchConfig", "invalid type"),
    ]);
}

#[test]
fn resume_max_bytes_must_hold_the_outbound_queue() {
    let msg = err(&gateway(
        r#"{"outboundQueueBytes": 2048, "resumeMaxBytes": 2047}"#,
    ));
    assert_eq!(
        msg,
        "mcpmux.json: gateway.resumeMaxBytes: (2047 bytes) must be at least outboundQueueBytes \
         (2048 bytes); raise resumeMaxBytes or lower outboundQueueBytes (a session kept for \
         resume must be able to hold a full outbound queue)"
    );
    // The default resumeMaxBytes (8 MiB) is checked against a configured queue, and the default
    // queue (1 MiB) against a configured resumeMaxBytes.
    invalid_gateways(&[
        (
            r#"{"outboundQueueBytes": 8388609}"#,
            "resumeMaxBytes",
            "(8388608 bytes) must be at least outboundQueueBytes (8388609 bytes)",
        ),
        (
            r#"{"resumeMaxBytes": 1048575}"#,
            "resumeMaxBytes",
            "(1048575 bytes) must be at least outboundQueueBytes (1048576 bytes)",
        ),
    ]);
    // Equal is enough.
    let equal = r#"{"outboundQueueBytes": 8388608, "resumeMaxBytes": 8388608}"#;
    let g = parse(&gateway(equal)).unwrap().gateway;
    assert_eq!(g.resume_max_bytes, g.outbound_queue_bytes);
}

#[test]
fn backoff_max_must_not_be_below_min() {
    invalid_gateways(&[
        (
            r#"{"restartBackoffMinMs": 1000, "restartBackoffMaxMs": 999}"#,
            "restartBackoffMaxMs",
            "(999 ms) must be at least restartBackoffMinMs (1000 ms)",
        ),
        // The default maximum (30 s) is checked against a configured minimum too.
        (
            r#"{"restartBackoffMinMs": 60000}"#,
            "restartBackoffMaxMs",
            "30000 ms",
        ),
    ]);
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
    assert!(err(r#"{"mcpServers": {"a": {"command": "x"}}} x"#).contains("trailing characters"));
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

#[test]
fn instance_is_a_short_lowercase_name_drawn_at_random_by_default() {
    let g = parse(&gateway(r#"{"instance": "eu-west-1"}"#))
        .unwrap()
        .gateway;
    assert_eq!(&*g.instance, "eu-west-1");
    assert_eq!(
        g.changes_needing_restart(&GatewayConfig::default()),
        ["gateway.instance"]
    );
    let default = GatewayConfig::default().instance;
    assert_eq!(default.len(), 8);
    assert!(
        default
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{default}"
    );
    // Drawn once: re-reading the configuration keeps it.
    assert_eq!(parse(&gateway("{}")).unwrap().gateway.instance, default);
    assert_eq!(
        parse(&gateway(&format!(
            r#"{{"instance": "{}"}}"#,
            "a".repeat(32)
        )))
        .unwrap()
        .gateway
        .instance
        .len(),
        32
    );
    for bad in [
        r#""""#,
        r#""EU""#,
        r#""eu_1""#,
        r#""eu.1""#,
        r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
    ] {
        invalid_at(
            &gateway(&format!(r#"{{"instance": {bad}}}"#)),
            "gateway.instance",
            "is not a valid instance name; use 1 to 32 characters from a-z 0-9 -",
        );
    }
    invalid_at(
        &gateway(r#"{"instance": 7}"#),
        "gateway.instance",
        "invalid type",
    );
}

#[test]
fn instance_may_come_from_the_environment() {
    let g = parse(&gateway(r#"{"instance": "${POD_NAME}"}"#))
        .unwrap()
        .gateway;
    assert_eq!(&*g.instance, "mcpmux-2");
    invalid_at(
        &gateway(r#"{"instance": "${NOPE}"}"#),
        "gateway.instance",
        "environment variable NOPE is not set",
    );
    // The expanded name obeys the same rule.
    invalid_at(
        &gateway(r#"{"instance": "${HOST}"}"#),
        "gateway.instance",
        "is not a valid instance name",
    );
}

#[test]
fn store_takes_a_redis_url_that_no_message_quotes() {
    let g = parse(&gateway(r#"{"store": {}}"#)).unwrap().gateway;
    assert_eq!(g.store, StoreConfig::default());
    let g = parse(&gateway(
        r#"{"store": {"redis": "redis://:${TOKEN}@10.0.0.5:6380/2"}}"#,
    ))
    .unwrap()
    .gateway;
    let url = g.store.redis.as_ref().expect("redis");
    assert_eq!(url.expose(), "redis://:s3cret@10.0.0.5:6380/2");
    assert!(!format!("{g:?}").contains("s3cret"), "Debug hides the URL");
    assert_eq!(
        g.changes_needing_restart(&GatewayConfig::default()),
        ["gateway.store"]
    );
    let plain = parse(&gateway(
        r#"{"store": {"redis": "redis://127.0.0.1:6379"}}"#,
    ));
    assert!(plain.is_ok(), "{plain:?}");
    for (url, needle) in [
        ("http://:s3cret@host:6379", "is not a redis:// URL"),
        ("redis://:s3cret@", "has no host"),
        ("redis://:s3cret@:6379", "has no host"),
        ("redis://:s3cret@host:port", "is not a valid Redis URL"),
        ("redis://:s3cret@host:6379/db", "is not a valid Redis URL"),
    ] {
        let text = gateway(&format!(r#"{{"store": {{"redis": "{url}"}}}}"#));
        invalid_at(&text, "gateway.store.redis", needle);
        assert!(!err(&text).contains("s3cret"), "{url}");
    }
    invalid_at(
        &gateway(r#"{"store": {"redis": "redis://:${NOPE}@host"}}"#),
        "gateway.store.redis",
        "environment variable NOPE is not set",
    );
    invalid_at(
        &gateway(r#"{"store": {"memcached": "x"}}"#),
        "gateway.store.memcached",
        "unknown key",
    );
}
