//! The admin API on the real binary (every endpoint with and without its key; servers
//! added, changed, restarted and removed through it, in the file), and the probes and
//! status routes of the main listener (`/readyz` while a server is down, `/servers`).

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::binary::{Binary, Launch, marked_entry};
use crate::harness::{Client, TestGateway, config, everything, memory, tool_text};

const ADMIN_KEY: &str = "admin-key-for-the-tests-0123";

fn with_admin(servers: Value) -> Value {
    config(
        servers,
        json!({"admin": {"listen": "127.0.0.1:0", "key": "${MCPMUX_TEST_ADMIN_KEY}"}}),
    )
}

fn launch(servers: Value, env: &[(&str, &str)]) -> Binary {
    let mut all = vec![("MCPMUX_TEST_ADMIN_KEY", ADMIN_KEY)];
    all.extend_from_slice(env);
    Binary::launch(
        &with_admin(servers),
        Launch {
            env: &all,
            ..Launch::default()
        },
    )
}

/// An answer of the admin API: status and JSON body (or `Value::String` of the text).
async fn send(request: reqwest::RequestBuilder) -> (u16, Value, String) {
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, content_type)
}

/// A client of the admin API at `addr`, with the key.
struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn new(addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = send(self.request(reqwest::Method::GET, path)).await;
        (status, body)
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self
            .request(reqwest::Method::PUT, path)
            .body(body.to_string());
        let (status, body, _) = send(request).await;
        (status, body)
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = send(self.request(reqwest::Method::POST, path)).await;
        (status, body)
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = send(self.request(reqwest::Method::DELETE, path)).await;
        (status, body)
    }
}

fn is_status(frame: &Value, server: &str, state: &str) -> bool {
    frame["type"] == "status" && frame["server"] == server && frame["state"] == state
}

#[tokio::test]
async fn every_admin_endpoint_needs_its_key() {
    let binary = launch(json!({"everything": everything()}), &[]);
    let admin = binary.admin.expect("the admin API listens");
    let http = reqwest::Client::new();
    let endpoints = [
        (reqwest::Method::GET, "/admin/servers"),
        (reqwest::Method::PUT, "/admin/servers/nothing-here"),
        (reqwest::Method::DELETE, "/admin/servers/nothing-here"),
        (reqwest::Method::POST, "/admin/servers/nothing-here/restart"),
        (reqwest::Method::POST, "/admin/reload"),
        (reqwest::Method::GET, "/metrics"),
    ];
    for (method, path) in endpoints {
        let url = format!("http://{admin}{path}");
        let request = || http.request(method.clone(), &url).body("[]");
        let refusals = [
            request(),
            request().bearer_auth("not-the-admin-key-0123"),
            request().header("x-api-key", "not-the-admin-key-0123"),
        ];
        for refused in refusals {
            let (status, body, content_type) = send(refused).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert!(
                content_type.starts_with("application/json"),
                "{content_type}"
            );
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains("gateway.admin.key"), "{body}");
            assert!(!error.contains("not-the-admin-key"), "{body}");
        }
        for admitted in [
            request().bearer_auth(ADMIN_KEY),
            request().header("x-api-key", ADMIN_KEY),
        ] {
            let (status, body, _) = send(admitted).await;
            assert_ne!(status, 401, "{method} {path}: {body}");
            let expected = match path {
                "/admin/servers" | "/admin/reload" | "/metrics" => 200,
                // A body that is not an entry.
                _ if method == reqwest::Method::PUT => 400,
                _ => 404,
            };
            assert_eq!(status, expected, "{method} {path}: {body}");
        }
    }
    let (status, body, content_type) = send(
        http.get(format!("http://{admin}/metrics"))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    // The admin routes are not on the main listener, and the main routes not on it.
    let (status, _, _) = send(http.get(format!("http://{}/admin/servers", binary.addr))).await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        http.get(format!("http://{admin}/ws"))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_admin_api_adds_changes_restarts_and_removes_servers_in_the_file() {
    let mut greeting = everything();
    greeting["env"] = json!({"GREETING": "${MCPMUX_TEST_GREETING}"});
    let binary = launch(
        json!({"everything": greeting}),
        &[("MCPMUX_TEST_GREETING", "hello")],
    );
    let admin = Admin::new(binary.admin.expect("the admin API listens"));
    let mut client = Client::connect(binary.addr).await;
    client.initialize("everything").await;
    let file = || std::fs::read_to_string(binary.config_path()).expect("the file");

    // Added: answered once started, and written to the file.
    let entry = marked_entry(&memory());
    let (status, body) = admin.put("/admin/servers/memory", &entry).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "ready", "{body}");
    assert_eq!(
        (&body["change"], &body["type"]),
        (&json!("added"), &json!("stdio"))
    );
    client
        .wait_for("memory starting", |f| is_status(f, "memory", "starting"))
        .await;
    client
        .wait_for("memory ready", |f| is_status(f, "memory", "ready"))
        .await;
    let written: Value = serde_json::from_str(&file()).expect("JSON");
    assert_eq!(written["mcpServers"]["memory"], entry);
    assert_eq!(
        written["mcpServers"]["everything"]["env"]["GREETING"], "${MCPMUX_TEST_GREETING}",
        "references stay as written"
    );
    let (status, body) = admin.get("/admin/servers").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["everything", "memory"], "{body}");
    assert!(body["servers"][1]["uptimeMs"].is_u64(), "{body}");

    // The same entry again changes nothing.
    let (status, body) = admin.put("/admin/servers/memory", &entry).await;
    assert_eq!(
        (status, &body["change"]),
        (200, &json!("unchanged")),
        "{body}"
    );

    // Changed: restarted.
    let mut changed = entry.clone();
    changed["env"] = json!({"MCPMUX_TEST_CHANGED": "1"});
    let (status, body) = admin.put("/admin/servers/memory", &changed).await;
    assert_eq!(
        (status, &body["change"]),
        (200, &json!("changed")),
        "{body}"
    );
    assert_eq!(
        (&body["state"], &body["restarts"]),
        (&json!("ready"), &json!(1))
    );
    client
        .wait_for("memory restarting", |f| {
            is_status(f, "memory", "restarting")
        })
        .await;
    client
        .wait_for("memory ready again", |f| is_status(f, "memory", "ready"))
        .await;

    // Restarted with its entry.
    let (status, body) = admin.post("/admin/servers/memory/restart").await;
    assert_eq!((status, &body["state"]), (200, &json!("ready")), "{body}");
    assert_eq!(body["restarts"], 2, "{body}");
    client
        .wait_for("memory restarting", |f| {
            is_status(f, "memory", "restarting")
        })
        .await;

    // A bad entry is refused, naming what is wrong; the file is unchanged.
    let before = file();
    let (status, body) = admin
        .put("/admin/servers/memory", &json!({"command": ""}))
        .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("mcpServers.memory.command"), "{body}");
    let (status, body) = admin
        .put("/admin/servers/bad%20name", &json!({"command": "x"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin
        .put(
            "/admin/servers/x",
            &json!({"url": "https://x/", "secret": "${NOPE}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("mcpServers.x.secret")
    );
    assert_eq!(file(), before);

    // Removed: stopped, `removed`, and out of the file.
    let (status, body) = admin.delete("/admin/servers/memory").await;
    assert_eq!((status, &body["state"]), (200, &json!("removed")), "{body}");
    client
        .wait_for("memory removed", |f| is_status(f, "memory", "removed"))
        .await;
    let written: Value = serde_json::from_str(&file()).expect("JSON");
    assert!(written["mcpServers"].get("memory").is_none(), "{written}");
    let (status, _) = admin.delete("/admin/servers/memory").await;
    assert_eq!(status, 404);
    let (status, _) = admin.post("/admin/servers/memory/restart").await;
    assert_eq!(status, 404);
    // The last server cannot go: the configuration needs one.
    let (status, body) = admin.delete("/admin/servers/everything").await;
    assert_eq!(status, 409, "{body}");

    // A reload of the unchanged file changes nothing; the file edits were the file.
    let (status, body) = admin.post("/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], json!([]), "{body}");
    let echo = client
        .call(
            "everything",
            json!("e"),
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "still"}}),
        )
        .await;
    assert_eq!(tool_text(&echo), "Echo: still");
}

/// A stdio server that never answers `initialize`: mcp-proxy waits for it.
pub(crate) fn never_ready() -> Value {
    json!({"command": "node", "args": ["-e", "setInterval(() => {}, 1000)"]})
}

#[tokio::test]
async fn readyz_waits_for_every_first_start_and_then_stays_ready_while_a_server_is_down() {
    let crasher = json!({"command": "node", "args": ["-e", "process.exit(1)"]});
    let gateway = TestGateway::start(&config(
        json!({"everything": everything(), "crasher": crasher, "slow": never_ready()}),
        json!({"startTimeoutMs": 10000, "restartBackoffMaxMs": 500}),
    ))
    .await;
    let http = reqwest::Client::new();
    let readyz = || async {
        let response = http
            .get(format!("http://{}/readyz", gateway.addr))
            .send()
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        (status, body)
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "slow cannot have started: {body}");
    assert_eq!(body["ready"], false);
    let state_of = |body: &Value, name: &str| {
        body["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|e| e["name"] == name))
            .map(|e| e["state"].clone())
    };
    assert_eq!(state_of(&body, "slow"), Some(json!("starting")), "{body}");

    let mut client = Client::connect(gateway.addr).await;
    client
        .wait_for("slow down", |f| is_status(f, "slow", "down"))
        .await;
    // The first starts latch readiness themselves, a moment after they end.
    gateway.gateway().first_starts_ended().await;
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["ready"], &body["draining"]),
        (&json!(true), &json!(false))
    );
    // Readiness does not wait for `everything` to be ready; on a loaded machine its first
    // start may even time out and be retried. It stays 200 until everything is ready.
    let mut body = body;
    for _ in 0..600 {
        if state_of(&body, "everything") == Some(json!("ready")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (status, next) = readyz().await;
        assert_eq!(status, 200, "{next}");
        body = next;
    }
    assert_eq!(
        state_of(&body, "everything"),
        Some(json!("ready")),
        "{body}"
    );
    // Servers that fail and restart do not take it back.
    for _ in 0..2 {
        client
            .wait_for("crasher restarting", |f| {
                is_status(f, "crasher", "restarting")
            })
            .await;
        let (status, body) = readyz().await;
        assert_eq!(status, 200, "{body}");
        client
            .wait_for("crasher down", |f| is_status(f, "crasher", "down"))
            .await;
    }
    let healthz = http
        .get(format!("http://{}/healthz", gateway.addr))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(healthz.status(), 200);
    gateway.shutdown().await;
}

#[tokio::test]
async fn servers_lists_what_the_key_may_use_with_state_uptime_and_errors() {
    const KEY: &str = "dashboard-key-0123456789";
    let crasher = json!({"command": "node", "args": ["-e", "process.exit(1)"]});
    let keys = json!([{"name": "dashboard", "key": KEY, "servers": ["everything", "crasher"]}]);
    let gateway = TestGateway::start(&config(
        json!({"everything": everything(), "crasher": crasher, "memory": memory()}),
        json!({"apiKeys": keys}),
    ))
    .await;
    let hello = json!({"type": "hello", "token": KEY});
    let mut client = Client::greet(Client::raw(gateway.addr).await, hello)
        .await
        .expect("welcome");
    client.ready("everything").await;
    client
        .wait_for("crasher down", |f| is_status(f, "crasher", "down"))
        .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/servers", gateway.addr);
    let refused = http.get(&url).send().await.expect("GET /servers");
    assert_eq!(refused.status(), 401);
    let response = http
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET /servers");
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    let servers = body["servers"].as_array().expect("servers");
    let names: Vec<&str> = servers.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["crasher", "everything"], "only its servers: {body}");
    let everything = &servers[1];
    assert_eq!(everything["state"], "ready");
    assert!(everything["uptimeMs"].is_u64(), "{body}");
    assert_eq!(everything["restarts"], 0);
    let crasher = &servers[0];
    assert!(crasher["uptimeMs"].is_null(), "{body}");
    assert!(crasher["restarts"].as_u64() >= Some(1), "{body}");
    assert!(crasher["lastError"].is_string(), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn removing_gateway_admin_from_the_file_stops_accepting_its_key() {
    let dir = crate::binary::TempDir::new();
    let path = dir.0.join("mcpmux.json");
    let admin = json!({"listen": "127.0.0.1:0", "key": ADMIN_KEY});
    let text = config(
        json!({"everything": everything()}),
        json!({"watchConfig": false, "admin": admin}),
    );
    std::fs::write(&path, text.to_string()).expect("write config");
    let gateway = TestGateway::start_from_file(&path).await;
    let admin = Admin::new(gateway.gateway().admin_addr().expect("admin listener"));
    assert_eq!(admin.get("/admin/servers").await.0, 200);

    let text = config(
        json!({"everything": everything()}),
        json!({"watchConfig": false}),
    );
    std::fs::write(&path, text.to_string()).expect("write config");
    gateway.gateway().reload().await;
    let (status, body) = admin.get("/admin/servers").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(admin.get("/metrics").await.0, 401);
    gateway.shutdown().await;
}

#[tokio::test]
async fn two_puts_at_once_of_a_new_name_are_one_add_and_one_change() {
    let dir = crate::binary::TempDir::new();
    let path = dir.0.join("mcpmux.json");
    let file = config(
        json!({"everything": everything()}),
        json!({"watchConfig": false, "admin": {"listen": "127.0.0.1:0", "key": ADMIN_KEY}}),
    );
    std::fs::write(&path, file.to_string()).expect("write config");
    let gateway = TestGateway::start_from_file(&path).await;
    let admin = Admin::new(
        gateway
            .gateway()
            .admin_addr()
            .expect("the admin API listens"),
    );
    // Nothing listens on port 1: each start ends at once (down), the entries differ.
    let first = json!({"url": "http://127.0.0.1:1/first"});
    let second = json!({"url": "http://127.0.0.1:1/second"});
    let ((a, body_a), (b, body_b)) = tokio::join!(
        admin.put("/admin/servers/twin", &first),
        admin.put("/admin/servers/twin", &second),
    );
    let mut changes = [(a, body_a["change"].clone()), (b, body_b["change"].clone())];
    changes.sort_by_key(|(status, _)| *status);
    assert_eq!(
        changes,
        [(200, json!("changed")), (201, json!("added"))],
        "{body_a} {body_b}"
    );
    // The same entry again: unchanged, and the file is not written (a write renames a
    // new file over it).
    use std::os::unix::fs::MetadataExt;
    let inode = || std::fs::metadata(&path).expect("the file").ino();
    let before = inode();
    let written = std::fs::read_to_string(&path).expect("the file");
    let entry: Value =
        serde_json::from_str::<Value>(&written).expect("JSON")["mcpServers"]["twin"].clone();
    let (status, body) = admin.put("/admin/servers/twin", &entry).await;
    assert_eq!(
        (status, &body["change"]),
        (200, &json!("unchanged")),
        "{body}"
    );
    assert_eq!(inode(), before, "not written again");
    gateway.shutdown().await;
}
