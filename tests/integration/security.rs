//! Who may use the gateway, end to end on the real binary: Origin and Host checks, API
//! keys in each of their three places, servers a key may not see, connection and rate
//! limits, TLS, the refusal to listen beyond loopback without keys, and logs (at trace
//! level) that never show a key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mcpmux::auth::bearer_subprotocol;
use serde_json::{Value, json};

use crate::binary::{Binary, Launch, TempDir};
use crate::harness::{Client, Ended, config, everything, memory, root};

const DASHBOARD: &str = "dashboard-key-0123456789abcdef";
const OPS: &str = "ops-key-0123456789abcdefghij";
const LIMITED: &str = "limited-key-0123456789abcdef";
const FLOOD: &str = "flood-key-0123456789abcdefgh";
const WRONG: &str = "wrong-key-0123456789abcdefgh";

/// The flood key's bucket: frames a second, and burst.
const FLOOD_RATE: (f64, u64) = (4.0, 12);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every form in which a key could leak into a log: as is, base64url, base64, hex.
fn leaked_forms(key: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        key.to_owned(),
        URL_SAFE_NO_PAD.encode(key),
        STANDARD.encode(key),
        hex(key.as_bytes()),
    ]
}

fn assert_no_key_in(log: &str, keys: &[&str]) {
    for key in keys {
        for form in leaked_forms(key) {
            assert!(!log.contains(&form), "the log shows a key (as {form:?})");
        }
    }
}

/// An HTTP GET with extra headers: status, headers and body.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    http_client(None)
        .await
        .request(reqwest::Method::GET, url, headers)
        .await
}

struct Http(reqwest::Client);

impl Http {
    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self.0.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }
}

/// An HTTP client; with a certificate, one that trusts only it, and finds `localhost` at
/// `addr`.
async fn http_client(tls: Option<(&[u8], SocketAddr)>) -> Http {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some((pem, addr)) = tls {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("certificate"))
            .resolve("localhost", addr);
    }
    Http(builder.build().expect("client"))
}

fn server_names(status: &str) -> Vec<String> {
    let value: Value = serde_json::from_str(status).expect("status JSON");
    value["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

fn welcome_names(client: &Client) -> Vec<String> {
    client.welcome["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

fn hello() -> Value {
    json!({"type": "hello", "client": {"name": "security-tests", "version": "1"}})
}

fn hello_with(token: &str) -> Value {
    json!({"type": "hello", "client": {"name": "security-tests", "version": "1"}, "token": token})
}

/// Opens `/ws` with `headers` and says `hello`: the welcomed client, or how it ended.
async fn connect(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    hello: Value,
) -> Result<Client, Ended> {
    let (ws, _) = Client::open_with(addr, headers)
        .await
        .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"));
    Client::greet(ws, hello).await
}

/// The HTTP refusal of an upgrade with `headers`.
async fn refused(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    match Client::open_with(addr, headers).await {
        Ok(_) => panic!("the upgrade with {headers:?} was accepted"),
        Err(refusal) => refusal,
    }
}

fn closed_with(ended: Result<Client, Ended>) -> u16 {
    match ended {
        Ok(client) => panic!("welcomed: {}", client.welcome),
        Err(Ended::Closed(code, _)) => code,
        Err(Ended::Dropped) => panic!("dropped without a close frame"),
    }
}

fn keyed_config() -> Value {
    config(
        json!({"everything": everything(), "memory": memory()}),
        json!({
            "apiKeys": [
                {"name": "dashboard", "key": "${MCPMUX_TEST_DASHBOARD_KEY}", "servers": ["everything"]},
                {"name": "ops", "keySha256": hex(&mcpmux::config::sha256(OPS.as_bytes())), "servers": "*"},
                {"name": "limited", "key": "${MCPMUX_TEST_LIMITED_KEY}", "servers": "*", "maxConnections": 2},
                {"name": "flood", "key": "${MCPMUX_TEST_FLOOD_KEY}", "servers": ["everything"],
                 "rateLimit": {"perSecond": FLOOD_RATE.0, "burst": FLOOD_RATE.1}},
            ],
            "allowedOrigins": ["http://app.example"],
        }),
    )
}

#[tokio::test]
async fn with_api_keys_only_the_right_key_gets_in_and_sees_only_its_servers() {
    let binary = Binary::launch(
        &keyed_config(),
        Launch {
            env: &[
                ("MCPMUX_TEST_DASHBOARD_KEY", DASHBOARD),
                ("MCPMUX_TEST_LIMITED_KEY", LIMITED),
                ("MCPMUX_TEST_FLOOD_KEY", FLOOD),
            ],
            log_filter: Some("trace"),
            ..Launch::default()
        },
    );
    let addr = binary.addr;
    http_routes_need_a_key(addr).await;
    a_socket_that_never_presents_a_key_is_closed_4501(addr).await;
    wrong_keys_are_refused_in_each_place(addr).await;
    right_keys_are_accepted_in_each_place(addr).await;
    a_key_cannot_learn_of_servers_it_may_not_use(addr).await;
    foreign_origins_are_refused_with_or_without_a_key(addr).await;
    too_many_connections_of_one_key_are_refused(addr).await;
    five_connections_of_one_key_share_its_rate(addr).await;

    let log = binary.log();
    assert!(
        log.contains("request refused") && log.contains("hello refused"),
        "a trace log was written"
    );
    assert_no_key_in(&log, &[DASHBOARD, OPS, LIMITED, FLOOD, WRONG]);
}

async fn http_routes_need_a_key(addr: SocketAddr) {
    let status = format!("http://{addr}/status");
    let (code, _, body) = get(&format!("http://{addr}/healthz"), &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok"), "/healthz needs no key");
    let (code, headers, body) = get(&status, &[]).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("needs an API key") && headers.contains_key("www-authenticate"),
        "{body}"
    );
    let (code, _, body) = get(&status, &[("x-api-key", WRONG)]).await;
    assert_eq!((code, body.as_str()), (401, "the API key is not valid"));
    let (code, _, body) = get(&format!("http://{addr}/anything"), &[]).await;
    assert_eq!(code, 401, "unknown routes are behind the gate too: {body}");

    let bearer = format!("Bearer {DASHBOARD}");
    let (code, _, body) = get(&status, &[("authorization", &bearer)]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        server_names(&body),
        ["everything"],
        "/status shows the caller's servers only"
    );
    let (code, _, body) = get(&status, &[("x-api-key", OPS)]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(server_names(&body), ["everything", "memory"]);
}

async fn a_socket_that_never_presents_a_key_is_closed_4501(addr: SocketAddr) {
    assert_eq!(closed_with(connect(addr, &[], hello()).await), 4501);
}

async fn wrong_keys_are_refused_in_each_place(addr: SocketAddr) {
    let bearer = format!("Bearer {WRONG}");
    let (code, body) = refused(addr, &[("authorization", &bearer)]).await;
    assert_eq!((code, body.as_str()), (401, "the API key is not valid"));
    assert_eq!(refused(addr, &[("x-api-key", WRONG)]).await.0, 401);
    let protocols = format!("mcpmux.v1, {}", bearer_subprotocol(WRONG));
    assert_eq!(
        refused(addr, &[("sec-websocket-protocol", &protocols)])
            .await
            .0,
        401
    );
    assert_eq!(
        closed_with(connect(addr, &[], hello_with(WRONG)).await),
        4501
    );
    // A right key at the upgrade and another in hello.
    let bearer = format!("Bearer {DASHBOARD}");
    let mixed = connect(addr, &[("authorization", &bearer)], hello_with(OPS)).await;
    assert_eq!(closed_with(mixed), 4501);
    // Two different keys at the upgrade.
    let two = [("authorization", bearer.as_str()), ("x-api-key", OPS)];
    assert_eq!(refused(addr, &two).await.0, 401);
}

async fn right_keys_are_accepted_in_each_place(addr: SocketAddr) {
    let bearer = format!("Bearer {DASHBOARD}");
    let by_header = connect(addr, &[("authorization", &bearer)], hello())
        .await
        .expect("welcome");
    assert_eq!(welcome_names(&by_header), ["everything"]);
    let same_in_hello = connect(addr, &[("x-api-key", DASHBOARD)], hello_with(DASHBOARD)).await;
    assert_eq!(
        welcome_names(&same_in_hello.expect("welcome")),
        ["everything"]
    );

    let protocols = format!("mcpmux.v1, {}", bearer_subprotocol(DASHBOARD));
    let (ws, selected) = Client::open_with(addr, &[("sec-websocket-protocol", &protocols)])
        .await
        .expect("upgrade");
    assert_eq!(
        selected.as_deref(),
        Some("mcpmux.v1"),
        "only mcpmux.v1 is echoed"
    );
    let by_subprotocol = Client::greet(ws, hello()).await.expect("welcome");
    assert_eq!(welcome_names(&by_subprotocol), ["everything"]);

    let by_hello = connect(addr, &[], hello_with(DASHBOARD))
        .await
        .expect("welcome");
    assert_eq!(welcome_names(&by_hello), ["everything"]);
    // The keySha256 key.
    let ops = connect(addr, &[], hello_with(OPS)).await.expect("welcome");
    assert_eq!(welcome_names(&ops), ["everything", "memory"]);
}

async fn a_key_cannot_learn_of_servers_it_may_not_use(addr: SocketAddr) {
    let mut client = connect(addr, &[], hello_with(DASHBOARD))
        .await
        .expect("welcome");
    // Its own server works.
    client.initialize("everything").await;
    let params = json!({"name": "echo", "arguments": {"message": "mine"}});
    let echo = client
        .call("everything", json!("echo"), "tools/call", params)
        .await;
    assert_eq!(crate::harness::tool_text(&echo), "Echo: mine");

    // The same request to a hidden server and to a server that does not exist.
    let hidden = probe(&mut client, "memory").await;
    let missing = probe(&mut client, "nowhere").await;
    let shape = |frame: &Value, server: &str| {
        let mut frame = frame.clone();
        frame["seq"] = json!(0);
        frame.to_string().replace(server, "SERVER")
    };
    assert_eq!(
        shape(&hidden, "memory"),
        shape(&missing, "nowhere"),
        "{hidden}\n{missing}"
    );
    assert_eq!(
        hidden["message"]["error"]["data"]["gateway"],
        "unknown_server"
    );

    // A notification and a close frame too.
    let notify = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    for server in ["memory", "nowhere"] {
        client
            .send(json!({"type": "rpc", "server": server, "message": notify, "ref": "n"}))
            .await;
        client
            .send(json!({"type": "close", "server": server, "ref": "c"}))
            .await;
    }
    let mut errors = Vec::new();
    while errors.len() < 4 {
        errors.push(
            client
                .wait_for("error frame", |f| f["type"] == "error")
                .await,
        );
    }
    assert_eq!(shape(&errors[0], "memory"), shape(&errors[2], "nowhere"));
    assert_eq!(shape(&errors[1], "memory"), shape(&errors[3], "nowhere"));
    assert!(
        errors.iter().all(|e| e["code"] == "unknown_server"),
        "{errors:?}"
    );
}

/// The answer to a `tools/list` request to `server`.
async fn probe(client: &mut Client, server: &str) -> Value {
    let id = json!(format!("probe-{server}"));
    let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    client.rpc(server, request).await;
    client.response(server, &id).await
}

async fn foreign_origins_are_refused_with_or_without_a_key(addr: SocketAddr) {
    let bearer = format!("Bearer {DASHBOARD}");
    let (code, body) = refused(addr, &[("origin", "http://evil.example")]).await;
    assert_eq!(code, 403);
    assert!(
        body.contains("allowedOrigins") && body.contains("http://evil.example"),
        "{body}"
    );
    let with_key = [
        ("origin", "http://evil.example"),
        ("authorization", bearer.as_str()),
    ];
    assert_eq!(
        refused(addr, &with_key).await.0,
        403,
        "the Origin check comes before the key"
    );
    let (code, body) = refused(addr, &[("origin", "null"), ("authorization", &bearer)]).await;
    assert_eq!(code, 403);
    assert!(body.contains("allowedOrigins"), "{body}");
    let status = format!("http://{addr}/status");
    let (code, _, _) = get(&status, &with_key).await;
    assert_eq!(code, 403, "/status answers no foreign page");

    // An allowed origin, with its key.
    let allowed = [
        ("origin", "http://app.example"),
        ("authorization", bearer.as_str()),
    ];
    let client = connect(addr, &allowed, hello()).await.expect("welcome");
    assert_eq!(welcome_names(&client), ["everything"]);
    let (code, headers, _) = get(&status, &allowed).await;
    assert_eq!(code, 200);
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
    assert_eq!(headers["vary"], "Origin");
    // Its preflight.
    let preflight = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "x-api-key"),
    ];
    let (code, headers, _) = http_client(None)
        .await
        .request(reqwest::Method::OPTIONS, &status, &preflight)
        .await;
    assert_eq!(code, 204);
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    // The gateway's own origin, with a loopback Host.
    let own = format!("http://{addr}");
    let client = connect(
        addr,
        &[("origin", &own), ("authorization", &bearer)],
        hello(),
    )
    .await;
    assert_eq!(welcome_names(&client.expect("welcome")), ["everything"]);
    // Without its key an allowed page gets 401, with CORS headers so it can read why.
    let (code, headers, _) = get(&status, &[("origin", "http://app.example")]).await;
    assert_eq!(code, 401);
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
}

async fn too_many_connections_of_one_key_are_refused(addr: SocketAddr) {
    let bearer = format!("Bearer {LIMITED}");
    let first = connect(addr, &[("authorization", &bearer)], hello())
        .await
        .expect("welcome");
    let second = connect(addr, &[], hello_with(LIMITED))
        .await
        .expect("welcome");
    let (code, body) = refused(addr, &[("authorization", &bearer)]).await;
    assert_eq!(code, 429);
    assert!(body.contains("maxConnections"), "{body}");
    assert_eq!(
        closed_with(connect(addr, &[], hello_with(LIMITED)).await),
        4029
    );
    // Other keys are not affected.
    connect(addr, &[], hello_with(OPS)).await.expect("welcome");
    drop((first, second));
}

async fn five_connections_of_one_key_share_its_rate(addr: SocketAddr) {
    const CALLS: usize = 20;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..5 {
        let protocols = format!("mcpmux.v1, {}", bearer_subprotocol(FLOOD));
        let headers = [("sec-websocket-protocol", protocols.as_str())];
        let mut client = match i % 2 {
            0 => connect(addr, &headers, hello()).await,
            _ => connect(addr, &[], hello_with(FLOOD)).await,
        }
        .expect("welcome");
        client.initialize("everything").await;
        clients.push(client);
    }
    // Every client sends all its calls at once, then reads every answer.
    let floods = clients.into_iter().enumerate().map(|(c, mut client)| async move {
        for n in 0..CALLS {
            let params = json!({"name": "echo", "arguments": {"message": format!("{c}-{n}")}});
            client
                .rpc("everything", json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}))
                .await;
        }
        let mut answers = Vec::new();
        for n in 0..CALLS {
            answers.push(client.response("everything", &json!(n)).await);
        }
        answers
    });
    let answers: Vec<Value> = futures::future::join_all(floods)
        .await
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    let mut carried = 0;
    let mut limited = 0;
    for answer in &answers {
        let message = &answer["message"];
        if message["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Echo: "))
        {
            carried += 1;
        } else {
            let data = &message["error"]["data"];
            assert_eq!(data["gateway"], "rate_limited", "{answer}");
            assert!(
                data["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1),
                "{answer}"
            );
            limited += 1;
        }
    }
    assert_eq!(carried + limited, 5 * CALLS, "every request is answered");
    assert!(limited > 0, "the flood went over the rate");
    // The initialize and initialized of each client count too. Together the five never
    // exceed the burst plus what the bucket refilled meanwhile.
    let (per_second, burst) = FLOOD_RATE;
    let allowed = burst as f64 + per_second * elapsed;
    let accepted = (carried + 10) as f64;
    assert!(
        accepted <= allowed + 1.0,
        "{accepted} frames carried in {elapsed:.2} s"
    );
}

/// A gateway with one remote server that is never reached.
fn remote_only_config(gateway: Value) -> Value {
    config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        gateway,
    )
}

#[tokio::test]
async fn without_keys_only_loopback_pages_and_names_get_in() {
    let binary = Binary::launch(
        &remote_only_config(json!({"allowedHosts": ["mcp.example.org"]})),
        Launch {
            log_filter: Some("trace"),
            ..Launch::default()
        },
    );
    let addr = binary.addr;
    let port = addr.port();
    let status = format!("http://{addr}/status");
    // A program, no Origin: welcome, and /status.
    connect(addr, &[], hello()).await.expect("welcome");
    assert_eq!(get(&status, &[]).await.0, 200);

    // DNS rebinding: a foreign name for this machine.
    let evil_host = format!("evil.example:{port}");
    let (code, body) = refused(addr, &[("host", &evil_host)]).await;
    assert_eq!(code, 403);
    assert!(body.contains("allowedHosts"), "{body}");
    let evil_origin = format!("http://evil.example:{port}");
    assert_eq!(
        refused(addr, &[("host", &evil_host), ("origin", &evil_origin)])
            .await
            .0,
        403
    );
    assert_eq!(get(&status, &[("host", &evil_host)]).await.0, 403);
    assert_eq!(
        get(&format!("http://{addr}/healthz"), &[("host", &evil_host)])
            .await
            .0,
        200
    );
    // Loopback names and listed hosts pass.
    for host in [
        format!("localhost:{port}"),
        format!("app.localhost:{port}"),
        format!("mcp.example.org:{port}"),
    ] {
        connect(addr, &[("host", &host)], hello())
            .await
            .expect("welcome");
    }

    // The gateway's own origin, with a loopback Host, as its own pages send it.
    let own = format!("http://127.0.0.1:{port}");
    connect(addr, &[("origin", &own)], hello())
        .await
        .expect("welcome");
    let (code, headers, _) = get(&status, &[("origin", &own)]).await;
    assert_eq!(code, 200);
    assert_eq!(headers["access-control-allow-origin"], own.as_str());
    let local = format!("http://localhost:{port}");
    let local_host = format!("localhost:{port}");
    connect(addr, &[("origin", &local), ("host", &local_host)], hello())
        .await
        .expect("welcome");
    // Foreign pages and null.
    let (code, body) = refused(addr, &[("origin", "http://evil.example")]).await;
    assert_eq!(code, 403);
    assert!(body.contains("allowedOrigins"), "{body}");
    assert_eq!(refused(addr, &[("origin", "null")]).await.0, 403);
    assert_eq!(
        get(&status, &[("origin", "http://evil.example")]).await.0,
        403
    );
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    assert_eq!(refused(addr, &[("origin", &other_port)]).await.0, 403);

    // A key presented to a gateway without keys is ignored.
    connect(addr, &[("x-api-key", WRONG)], hello_with(WRONG))
        .await
        .expect("welcome");
    assert_no_key_in(&binary.log(), &[WRONG]);
}

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn generate_certificate() -> (Vec<u8>, Vec<u8>) {
    let dir = TempDir::new();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .current_dir(&dir.0)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup --test installs it)");
    assert!(status.success(), "openssl made a certificate");
    let read = |name: &str| std::fs::read(dir.0.join(name)).expect("PEM file");
    (read("cert.pem"), read("key.pem"))
}

#[tokio::test]
async fn tls_serves_wss_and_https_with_a_certificate_the_test_made() {
    let (cert, key) = generate_certificate();
    let config = remote_only_config(json!({
        "tls": {"cert": "cert.pem", "key": "key.pem"},
        "apiKeys": [{"name": "dashboard", "key": DASHBOARD, "servers": "*"}],
    }));
    let binary = Binary::launch(
        &config,
        Launch {
            files: &[("cert.pem", &cert), ("key.pem", &key)],
            log_filter: Some("trace"),
            ..Launch::default()
        },
    );
    let port = binary.addr.port();

    // https: /status with the key, through a client that trusts only this certificate.
    let https = http_client(Some((&cert, binary.addr))).await;
    let status = format!("https://localhost:{port}/status");
    let (code, _, body) = https
        .request(reqwest::Method::GET, &status, &[("x-api-key", DASHBOARD)])
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(server_names(&body), ["remote"]);
    assert_eq!(
        https.request(reqwest::Method::GET, &status, &[]).await.0,
        401
    );

    // wss: the key in hello.
    let mut ws = wss_connect(port, &cert).await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(hello_with(DASHBOARD).to_string()))
        .await
        .expect("send");
    let welcome = match ws.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).expect("JSON"),
        other => panic!("no welcome: {other:?}"),
    };
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["servers"][0]["name"], "remote");

    // Plain ws:// to the TLS port gets no WebSocket.
    let plain = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await;
    assert!(plain.is_err(), "plain WebSocket on the TLS port");
    idle_connections_from_one_address_cannot_starve_handshakes(binary.addr, &cert).await;
    assert_no_key_in(&binary.log(), &[DASHBOARD]);
}

/// One address (127.0.0.2) opens connections and never says anything: past
/// MAX_HANDSHAKES_PER_IP they are closed at once, while the first still wait for their
/// first bytes; a client from another address completes its handshake meanwhile.
async fn idle_connections_from_one_address_cannot_starve_handshakes(addr: SocketAddr, cert: &[u8]) {
    use tokio::io::AsyncReadExt;
    let from_other_address = || async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
            .expect("bind 127.0.0.2");
        socket.connect(addr).await.expect("connect")
    };
    let mut idle = Vec::new();
    for _ in 0..mcpmux::tls::MAX_HANDSHAKES_PER_IP {
        idle.push(from_other_address().await);
    }
    let mut extra = from_other_address().await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(crate::harness::FRAME_WAIT, extra.read_to_end(&mut buf));
    assert_eq!(read.await.expect("closed").expect("read"), 0);
    for tcp in &idle {
        let mut byte = [0u8; 1];
        assert!(
            matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the first connections still wait for their handshakes"
        );
    }
    drop(wss_connect(addr.port(), cert).await);
    drop(idle);
}

async fn wss_connect(
    port: u16,
    cert: &[u8],
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert).expect("certificate"))
        .expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), tls)
        .await
        .expect("WebSocket over TLS");
    ws
}

#[tokio::test]
async fn a_non_loopback_listen_without_keys_is_refused_before_listening() {
    let dir = TempDir::new();
    let path = dir.0.join("mcpmux.json");
    std::fs::write(&path, remote_only_config(json!({})).to_string()).expect("config");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcpmux"))
        .args([
            "--config",
            path.to_str().expect("path"),
            "--listen",
            "0.0.0.0:0",
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("mcpmux exits at once")
        .expect("mcpmux runs");
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "it never listened: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("apiKeys") && stderr.contains("allowAnonymous"),
        "{stderr}"
    );
}

#[test]
fn check_config_masks_keys() {
    let dir = TempDir::new();
    let path = dir.0.join("mcpmux.json");
    std::fs::write(&path, keyed_config().to_string()).expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcpmux"))
        .args(["check-config", path.to_str().expect("path")])
        .env("MCPMUX_TEST_DASHBOARD_KEY", DASHBOARD)
        .env("MCPMUX_TEST_LIMITED_KEY", LIMITED)
        .env("MCPMUX_TEST_FLOOD_KEY", FLOOD)
        .current_dir(root())
        .output()
        .expect("check-config runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("api key dashboard: key ***; servers everything"),
        "{stdout}"
    );
    assert!(
        stdout.contains("api key ops: keySha256 ***; servers *"),
        "{stdout}"
    );
    assert!(
        stdout.contains("api key flood: key ***; servers everything; 4/s burst 12"),
        "{stdout}"
    );
    let ops_digest = hex(&mcpmux::config::sha256(OPS.as_bytes()));
    assert_no_key_in(&stdout, &[DASHBOARD, OPS, LIMITED, FLOOD, &ops_digest]);
    assert_no_key_in(
        &String::from_utf8_lossy(&output.stderr),
        &[DASHBOARD, OPS, LIMITED, FLOOD],
    );
}
