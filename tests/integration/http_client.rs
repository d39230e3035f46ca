//! An HTTP client for the MCP routes in tests: requests with extra headers, JSON bodies,
//! and an event-stream reader that yields each event as it arrives.

use std::net::SocketAddr;

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::FRAME_WAIT;

/// The accept header of an MCP client's POST.
pub const ACCEPT_BOTH: (&str, &str) = ("accept", "application/json, text/event-stream");

/// An HTTP client of one gateway.
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    /// A client of the gateway at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            base: format!("http://{addr}"),
        }
    }

    /// Sends `method` to `path` with `headers` and, if any, a JSON `body`; returns the
    /// response once its headers arrived.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        tokio::time::timeout(FRAME_WAIT, request.send())
            .await
            .expect("response headers in time")
            .expect("HTTP request")
    }

    /// POSTs one JSON-RPC message as an MCP client does.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        message: &Value,
    ) -> reqwest::Response {
        let mut all = vec![ACCEPT_BOTH];
        all.extend_from_slice(headers);
        self.send(reqwest::Method::POST, path, &all, Some(message))
            .await
    }
}

/// Status and parsed JSON body of a response.
pub async fn json_answer(response: reqwest::Response) -> (u16, HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, body)
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `event:`, if any.
    pub event: Option<String>,
    /// `id:`, if any.
    pub id: Option<String>,
    /// The `data:` lines, joined.
    pub data: String,
}

impl Event {
    /// The data as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// How an event stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Its body ended cleanly.
    Clean,
    /// Its body broke.
    Broken,
}

/// Reads an event stream event by event, as the bytes arrive.
pub struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    /// The events of `response`'s body.
    pub fn of(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event with data (comments and empty priming events are skipped), or how
    /// the stream ended.
    pub async fn next_or_end(&mut self) -> Result<Event, End> {
        loop {
            if let Some(event) = self.take_buffered() {
                return Ok(event);
            }
            let chunk = tokio::time::timeout(FRAME_WAIT, self.body.next())
                .await
                .expect("an event or the end of the stream in time");
            match chunk {
                None => return Err(End::Clean),
                Some(Err(_)) => return Err(End::Broken),
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
            }
        }
    }

    /// The next event; panics when the stream ends first.
    pub async fn next(&mut self) -> Event {
        match self.next_or_end().await {
            Ok(event) => event,
            Err(end) => panic!("the event stream ended ({end:?}) before the event expected"),
        }
    }

    /// The next event whose JSON data satisfies `pred`, skipping others.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Event {
        loop {
            let event = self.next().await;
            if pred(&event.json()) {
                return event;
            }
        }
    }

    fn take_buffered(&mut self) -> Option<Event> {
        loop {
            let normalized = self.buffer.replace("\r\n", "\n");
            let end = normalized.find("\n\n")?;
            let block = normalized[..end].to_owned();
            self.buffer = normalized[end + 2..].to_owned();
            let mut event = Event::default();
            let mut has_data = false;
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.event = Some(value.to_owned()),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if !event.data.is_empty() {
                return Some(event);
            }
        }
    }
}
