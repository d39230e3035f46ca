//! Test harness: gateways on port 0 with real mcp-proxy and real MCP servers from
//! `node_modules`, and a WebSocket client that buffers frames so tests can wait for the
//! one they need.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mcpmux::{Config, Gateway, Options};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// The repository root (where `node_modules` is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn module(path: &str) -> String {
    let full = root().join("node_modules").join(path);
    assert!(
        full.exists(),
        "{} is missing: run `npm ci` in the repository root first",
        full.display()
    );
    full.display().to_string()
}

/// The `mcpServers` entry of the real server-everything.
pub fn everything() -> Value {
    json!({"command": "node", "args": [module("@modelcontextprotocol/server-everything/dist/index.js"), "stdio"]})
}

/// The `mcpServers` entry of the real server-memory.
pub fn memory() -> Value {
    json!({"command": "node", "args": [module("@modelcontextprotocol/server-memory/dist/index.js")]})
}

/// A configuration with `servers` and the local mcp-proxy, plus `gateway` overrides.
pub fn config(servers: Value, gateway: Value) -> Value {
    let mut gateway_section = json!({
        "mcpProxy": ["node", module("mcp-proxy/dist/bin/mcp-proxy.mjs")],
        "restartBackoffMinMs": 100,
    });
    if let (Some(base), Some(extra)) = (gateway_section.as_object_mut(), gateway.as_object()) {
        base.extend(extra.clone());
    }
    json!({ "mcpServers": servers, "gateway": gateway_section })
}

/// Serves `app` on 127.0.0.1:0 in the background, for fake upstreams; returns where.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Test logs: `MCPMUX_LOG=debug cargo test ...` shows the gateway's log.
fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MCPMUX_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A gateway running in this test's runtime.
pub struct TestGateway {
    gateway: Option<Gateway>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestGateway {
    /// Starts a gateway for `config` on 127.0.0.1:0.
    pub async fn start(config: &Value) -> Self {
        Self::start_with(config, Options::default()).await
    }

    /// Starts a gateway for `config` on 127.0.0.1:0, with `options`.
    pub async fn start_with(config: &Value, options: Options) -> Self {
        init_logs();
        let config = Config::parse(&config.to_string(), "test config", &|_| None)
            .unwrap_or_else(|e| panic!("test config rejected: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gateway = Gateway::start_with(config, listener, options)
            .await
            .expect("gateway starts");
        let addr = gateway.local_addr();
        Self {
            gateway: Some(gateway),
            addr,
        }
    }

    /// Starts a gateway for the configuration file at `path` on 127.0.0.1:0: the file
    /// can then be changed and reloaded ([`Gateway::reload`], or its watch).
    pub async fn start_from_file(path: &std::path::Path) -> Self {
        Self::start_from_file_with(path, Options::default()).await
    }

    /// [`TestGateway::start_from_file`] with `options` (its `config_path` is `path`).
    pub async fn start_from_file_with(path: &std::path::Path, options: Options) -> Self {
        init_logs();
        let config = Config::load(path).unwrap_or_else(|e| panic!("test config rejected: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let options = Options {
            config_path: Some(path.to_path_buf()),
            ..options
        };
        let gateway = Gateway::start_with(config, listener, options)
            .await
            .expect("gateway starts");
        let addr = gateway.local_addr();
        Self {
            gateway: Some(gateway),
            addr,
        }
    }

    /// Shuts the gateway down gracefully.
    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// The running gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }
}

/// One gateway with server-everything and server-memory shared by the tests of this
/// binary. It runs on its own runtime thread; tests reach it only over sockets.
pub fn shared_gateway() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let gateway = TestGateway::start(&config(
                    json!({"everything": everything(), "memory": memory()}),
                    json!({}),
                ))
                .await;
                tx.send(gateway.addr).expect("send addr");
                // Serve until the test process exits.
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("shared gateway started")
    })
}

/// A client WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client of the `mcpmux.v1` protocol.
pub struct Client {
    ws: Socket,
    buffered: VecDeque<Value>,
    /// Each server's latest state, from the welcome and every status frame read.
    states: std::collections::HashMap<String, String>,
    /// The `welcome` frame.
    pub welcome: Value,
}

/// What the socket did instead of delivering a frame.
#[derive(Debug)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Closes the socket with a close frame, which ends the client session, and waits
    /// for the gateway's reply.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(FRAME_WAIT, async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }

    /// Opens a socket without sending anything.
    pub async fn raw(addr: SocketAddr) -> Socket {
        Self::raw_url(&format!("ws://{addr}/ws")).await
    }

    /// Opens a socket at `url` (`ws://HOST:PORT/ws`, perhaps with `?session=ID`)
    /// without sending anything.
    pub async fn raw_url(url: &str) -> Socket {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        ws
    }

    /// Connects with a subprotocol offer; returns the HTTP error status on refusal.
    pub async fn offer(addr: SocketAddr, protocols: &str) -> Result<Option<String>, u16> {
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().expect("header"));
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => Ok(response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or_default().to_owned())),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("unexpected handshake error: {other}"),
        }
    }

    /// Opens a socket with extra request headers (`Origin`, `Host`, keys, subprotocols).
    /// Returns the socket and the subprotocol the gateway selected; on refusal, the HTTP
    /// status and body.
    pub async fn open_with(
        addr: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Result<(Socket, Option<String>), (u16, String)> {
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                name.parse().expect("header name");
            request
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                let selected = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap_or_default().to_owned());
                Ok((ws, selected))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err((
                    response.status().as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            }
            Err(other) => panic!("unexpected handshake error: {other}"),
        }
    }

    /// Says `hello` on an open socket: the client once welcomed, or how the socket ended.
    pub async fn greet(ws: Socket, hello: Value) -> Result<Self, Ended> {
        let mut client = Self {
            ws,
            buffered: VecDeque::new(),
            states: Default::default(),
            welcome: Value::Null,
        };
        client.send(hello).await;
        let welcome = client.next_raw().await?;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        for server in welcome["servers"].as_array().into_iter().flatten() {
            if let (Some(name), Some(state)) = (server["name"].as_str(), server["state"].as_str()) {
                client.states.insert(name.to_owned(), state.to_owned());
            }
        }
        client.welcome = welcome;
        Ok(client)
    }

    /// Connects, says hello, and reads the welcome.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::hello(
            addr,
            json!({"type": "hello", "client": {"name": "tests", "version": "1"}}),
        )
        .await
    }

    /// Connects asking to resume `session` after `last_seq`.
    pub async fn resume(addr: SocketAddr, session: &str, last_seq: u64) -> Self {
        let hello = json!({"type": "hello", "resume": {"session": session, "last_seq": last_seq}});
        Self::hello(addr, hello).await
    }

    async fn hello(addr: SocketAddr, hello: Value) -> Self {
        Self::greet(Self::raw(addr).await, hello)
            .await
            .unwrap_or_else(|e| panic!("no welcome: {e:?}"))
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends raw text; the gateway may close the socket while it is being sent.
    pub async fn try_send_text(&mut self, text: &str) {
        let _ = self.ws.send(Message::text(text.to_owned())).await;
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send binary");
    }

    /// Sends `message` to `server` in an rpc frame.
    pub async fn rpc(&mut self, server: &str, message: Value) {
        self.send(json!({"type": "rpc", "server": server, "message": message}))
            .await;
    }

    async fn next_raw(&mut self) -> Result<Value, Ended> {
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value =
                        serde_json::from_str(&text).expect("gateway frames are JSON");
                    if frame["type"] == "status" {
                        if let (Some(name), Some(state)) =
                            (frame["server"].as_str(), frame["state"].as_str())
                        {
                            self.states.insert(name.to_owned(), state.to_owned());
                        }
                    }
                    if std::env::var_os("MCPMUX_TEST_FRAMES").is_some() {
                        eprintln!("frame: {frame}");
                    }
                    return Ok(frame);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(Ended::Closed(1005, String::new()), |f| {
                        Ended::Closed(f.code.into(), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    if std::env::var_os("MCPMUX_TEST_FRAMES").is_some() {
                        eprintln!("socket error: {err}");
                    }
                    return Err(Ended::Dropped);
                }
                None => return Err(Ended::Dropped),
            }
        }
    }

    /// The next frame (buffered first).
    pub async fn next(&mut self) -> Value {
        if let Some(frame) = self.buffered.pop_front() {
            return frame;
        }
        self.next_raw()
            .await
            .unwrap_or_else(|e| panic!("socket ended: {e:?}"))
    }

    /// The next frame (buffered first), or how the socket ended.
    pub async fn next_or_end(&mut self) -> Result<Value, Ended> {
        match self.buffered.pop_front() {
            Some(frame) => Ok(frame),
            None => self.next_raw().await,
        }
    }

    /// Waits for the socket to close; returns its close code and reason.
    pub async fn closed(&mut self) -> Ended {
        loop {
            match self.next_raw().await {
                Ok(_) => {}
                Err(ended) => return ended,
            }
        }
    }

    /// The first frame matching `pred`; frames before it stay buffered for later waits.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.buffered.iter().position(&pred) {
            return self.buffered.remove(index).expect("index");
        }
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match tokio::time::timeout(remaining, self.next_raw()).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(ended)) => panic!("socket ended while waiting for {what}: {ended:?}"),
                Err(_) => panic!(
                    "no {what} within {FRAME_WAIT:?}; buffered: {:?}",
                    self.buffered
                ),
            };
            if pred(&frame) {
                return frame;
            }
            self.buffered.push_back(frame);
        }
    }

    /// Frames received so far that match `pred`, taken out of the buffer.
    pub fn take_buffered(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (hit, keep): (Vec<Value>, Vec<Value>) = self.buffered.drain(..).partition(|f| pred(f));
        self.buffered = keep.into();
        hit
    }

    /// The response to request `id` from `server` (its rpc frame).
    pub async fn response(&mut self, server: &str, id: &Value) -> Value {
        let what = format!("response {id} from {server}");
        self.wait_for(&what, |f| is_response(f, server, id)).await
    }

    /// Sends a request and returns its response frame.
    pub async fn call(&mut self, server: &str, id: Value, method: &str, params: Value) -> Value {
        self.rpc(
            server,
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .await;
        self.response(server, &id).await
    }

    /// The session id the welcome gave.
    pub fn session_id(&self) -> String {
        self.welcome["session"]
            .as_str()
            .expect("welcome.session")
            .to_owned()
    }

    /// Waits for the `status` frame saying a server reached `state`.
    pub async fn status(&mut self, state: &str) -> Value {
        let what = format!("status {state}");
        self.wait_for(&what, |f| f["type"] == "status" && f["state"] == state)
            .await
    }

    /// Waits for the `session` frame saying an upstream session reached `state`.
    pub async fn session_state(&mut self, state: &str) -> Value {
        let what = format!("session {state}");
        self.wait_for(&what, |f| f["type"] == "session" && f["state"] == state)
            .await
    }

    /// Starts server-everything's `trigger-long-running-operation` (request `id`, `steps`
    /// progress notifications with `token` over `duration` seconds) without waiting.
    pub async fn start_long_operation(
        &mut self,
        server: &str,
        id: &Value,
        duration: u64,
        steps: u64,
        token: &str,
    ) {
        let params = json!({
            "name": "trigger-long-running-operation",
            "arguments": {"duration": duration, "steps": steps},
            "_meta": {"progressToken": token}
        });
        self.rpc(
            server,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}),
        )
        .await;
    }

    /// Waits until `server` is ready (as far as the frames read so far tell).
    pub async fn ready(&mut self, server: &str) {
        if self.states.get(server).map(String::as_str) != Some("ready") {
            self.wait_for("status ready", |f| {
                f["type"] == "status" && f["server"] == server && f["state"] == "ready"
            })
            .await;
        }
    }

    /// Initializes an MCP session with `server` (waiting for it to be ready first).
    pub async fn initialize(&mut self, server: &str) -> Value {
        self.ready(server).await;
        let id = json!(format!("init-{server}"));
        let params = json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "mcpmux-tests", "version": "1"}
        });
        let response = self.call(server, id, "initialize", params).await;
        assert!(
            response["message"]["result"]["protocolVersion"].is_string(),
            "{response}"
        );
        self.rpc(
            server,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
        response
    }
}

/// True for the rpc frame that answers `id` from `server`.
pub fn is_response(frame: &Value, server: &str, id: &Value) -> bool {
    frame["type"] == "rpc"
        && frame["server"] == server
        && frame["message"]["id"] == *id
        && frame["message"].get("method").is_none()
}

/// The text of the first content item of a tools/call result.
pub fn tool_text(frame: &Value) -> &str {
    frame["message"]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
}

/// The progress values of `token` among `frames`, in order.
pub fn progress_values(frames: &[Value], token: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| {
            f["message"]["method"] == "notifications/progress"
                && f["message"]["params"]["progressToken"] == token
        })
        .filter_map(|f| f["message"]["params"]["progress"].as_u64())
        .collect()
}
