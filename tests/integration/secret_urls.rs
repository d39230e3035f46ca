//! A remote server's URL credentials (userinfo, query) and header values are never
//! shown: not in any frame, not in any log line (at trace level), not by `check-config`,
//! whichever way the server fails. Nor are they sent elsewhere: redirects are not
//! followed.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::binary::{Binary, Launch, kill};
use crate::harness::{Client, TestGateway, config};

const USER: &str = "usersecret-a1";
const PASSWORD: &str = "pwsecret-77c2";
const QUERY_SECRET: &str = "qsecret-5b1e";
/// Set in mcpmux's environment and used through `${...}` in a header.
const HEADER_VAR: &str = "MCPMUX_TEST_HEADER_TOKEN";
const HEADER_SECRET: &str = "hdrsecret-90d4";
/// The `Basic` value of `USER:PASSWORD`, which reqwest would send.
const BASIC: &str = "dXNlcnNlY3JldC1hMTpwd3NlY3JldC03N2My";

const SECRETS: [&str; 5] = [USER, PASSWORD, QUERY_SECRET, HEADER_SECRET, BASIC];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

/// A fake upstream; the first path segment picks how it fails.
async fn fake_upstream() -> SocketAddr {
    let app = Router::new().route("/{mode}/mcp", post(fake_post).get(fake_get));
    crate::harness::serve(app).await
}

async fn fake_get() -> Response {
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

async fn fake_post(
    Path(mode): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match mode.as_str() {
        // An error page that repeats the whole request, as debugging servers do.
        "echo500" => {
            let mut page = format!("{method} {uri}\n");
            for (name, value) in &headers {
                page.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            (StatusCode::INTERNAL_SERVER_ERROR, page).into_response()
        }
        "garbage" => (
            [(header::CONTENT_TYPE, "application/json")],
            "<<<not json>>>",
        )
            .into_response(),
        // Headers, part of a body, then the connection breaks.
        "cutbody" => {
            let chunks = [
                Ok(Bytes::from_static(b"{\"jsonrpc\":")),
                Err(std::io::Error::other("cut")),
            ];
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("response")
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// A remote entry at `host` whose URL and headers carry every secret.
fn entry(host: &str, path: &str) -> Value {
    json!({
        "url": format!("http://{USER}:{PASSWORD}@{host}{path}?key={QUERY_SECRET}"),
        "headers": {"X-Api-Key": format!("${{{HEADER_VAR}}}")},
    })
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn failing_remote_servers_show_no_url_secret_or_header_value() {
    let fake = fake_upstream().await.to_string();
    let servers = json!({
        "refused": entry(&format!("127.0.0.1:{}", closed_port()), "/mcp"),
        "echo500": entry(&fake, "/echo500/mcp"),
        "garbage": entry(&fake, "/garbage/mcp"),
        "cutbody": entry(&fake, "/cutbody/mcp"),
    });
    let launch = Launch {
        env: &[(HEADER_VAR, HEADER_SECRET)],
        log_filter: Some("trace"),
        ..Launch::default()
    };
    let mut binary = Binary::launch(
        &config(
            servers,
            json!({"connectTimeoutMs": 2000, "requestTimeoutMs": 3000}),
        ),
        launch,
    );
    let mut client = Client::connect(binary.addr).await;
    let mut shown = vec![client.welcome.to_string()];
    for server in ["refused", "echo500", "garbage", "cutbody"] {
        let params = json!({
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}
        });
        let reply = client
            .call(server, json!("init"), "initialize", params)
            .await;
        assert!(
            reply["message"]["error"]["data"]["gateway"].is_string(),
            "{server} fails: {reply}"
        );
        shown.push(reply.to_string());
        // A notification's failure comes back as an error frame.
        client
            .rpc(
                server,
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        let error = client
            .wait_for("an error frame", |f| {
                f["type"] == "error" && f["server"] == server
            })
            .await;
        shown.push(error.to_string());
    }
    let frames = shown.join("\n");
    assert_no_secret("a frame", &frames);
    // The error page was quoted, with what it repeated masked.
    assert!(
        frames.contains("HTTP 500: POST /echo500/mcp?***"),
        "{frames}"
    );
    let status = reqwest::get(format!("http://{}/status", binary.addr))
        .await
        .expect("status page")
        .text()
        .await
        .expect("body");
    assert_no_secret("/status", &status);

    // Every line is written once mcpmux has exited.
    kill(binary.child.id(), libc::SIGTERM);
    binary
        .wait_until_no_process_is_left(Duration::from_secs(10))
        .await;
    let log = binary.log();
    assert!(
        log.contains("TRACE") && log.contains(&fake),
        "the log was captured at trace level:\n{log}"
    );
    assert_no_secret("the log", &log);
}

/// Runs `mcpmux check-config` on `config`; returns its status and whole output.
fn check_config(config: &Value) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("mcpmux-check-{}.json", std::process::id()));
    std::fs::write(&path, config.to_string()).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_mcpmux"))
        .args(["check-config", path.to_str().expect("utf-8 path")])
        .env(HEADER_VAR, HEADER_SECRET)
        .env("MCPMUX_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .expect("check-config runs");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn check_config_shows_no_url_secret_or_header_value() {
    // From the environment, as operators write it.
    let query = format!("${{{HEADER_VAR}}}");
    let good = json!({"mcpServers": {
        "remote": entry("example.org", "/mcp"),
        "env": {"url": format!("https://example.org/mcp?token={query}")},
    }});
    let (ok, text) = check_config(&good);
    assert!(ok, "{text}");
    assert!(
        text.contains("server remote: remote http://***@example.org/mcp?***"),
        "{text}"
    );
    assert!(text.contains("headers: X-Api-Key"), "{text}");
    assert_no_secret("check-config", &text);

    // Nor the admin key.
    let admin_key = "admin-secret-key-0123456789";
    let mut with_admin = good.clone();
    with_admin["gateway"] = json!({"admin": {"key": admin_key}});
    let (ok, text) = check_config(&with_admin);
    assert!(ok, "{text}");
    assert!(
        text.contains("admin API: 127.0.0.1:7301, key ***"),
        "{text}"
    );
    assert!(!text.contains(admin_key), "{text}");

    for bad in [
        format!("ftp://{USER}:{PASSWORD}@h/?k={query}"),
        format!("http://{USER}:{PASSWORD}@h:port/?k={query}"),
        format!("http://{USER}:{PASSWORD}@/?k={query}"),
    ] {
        let (ok, text) = check_config(&json!({"mcpServers": {"s": {"url": bad}}}));
        assert!(!ok && text.contains("mcpServers.s.url"), "{text}");
        assert_no_secret("check-config's error", &text);
    }
}

/// A server that counts the requests it gets.
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    });
    let addr = crate::harness::serve(app).await;
    (addr, hits)
}

#[tokio::test]
async fn redirects_are_not_followed_and_name_their_status() {
    let (elsewhere, hits) = counting_server().await;
    let location = format!("http://{elsewhere}/collect?key={QUERY_SECRET}");
    // Every request, POST or GET, is sent elsewhere.
    let redirect = move || {
        let location = location.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
        }
    };
    let app = Router::new().fallback(redirect);
    let addr = crate::harness::serve(app).await;
    let server =
        json!({"url": format!("http://{addr}/mcp"), "headers": {"X-Api-Key": HEADER_SECRET}});
    let gateway = TestGateway::start(&config(json!({"moved": server}), json!({}))).await;
    let mut client = Client::connect(gateway.addr).await;
    let params = json!({
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}
    });
    let reply = client.call("moved", json!(1), "initialize", params).await;
    let error = &reply["message"]["error"];
    assert_eq!(error["data"]["gateway"], "upstream_error", "{reply}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("HTTP 307") && message.contains("redirects are not followed"),
        "{reply}"
    );
    assert!(!message.contains(&elsewhere.to_string()), "{reply}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a redirect was followed");
    gateway.shutdown().await;
}
