//! The legacy HTTP+SSE transport (2024-11-05) through mcpmux: `GET /servers/{name}/sse`
//! opens the server's event stream (mcp-proxy's `/sse` beside its `/mcp` for a stdio
//! server; the configured url for a remote one), and `POST
//! /servers/{name}/messages?session=TOKEN` carries a message to it.
//!
//! The stream's first `endpoint` event names where the server takes messages. mcpmux
//! keeps that address to itself (it is the upstream's, and only mcpmux holds the key it
//! needs) and announces instead `messages?session=TOKEN`, relative to the stream's own
//! url, with a fresh random token; everything else on the stream flows as it comes.
//! The token is good, for the key that opened the stream and for that server, while the
//! stream is open: [`Sessions`] holds one entry per open stream, which the stream's
//! [`Registration`] removes when it ends, so the table is bounded by the streams open
//! (at most `maxSessions`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::Rng;

use super::error::{Refused, RouteError};
use super::exchange::{self, Answer, Expect, Request};
use super::message::Message;
use super::relay::{Asked, ByteStream};
use super::{Routes, ServerName, Until};
use crate::auth::Caller;
use crate::metrics::Outcome;
use crate::upstream::legacy::post_url;
use crate::upstream::{Endpoint, Transport, UpstreamError};

/// The most a stream may send before its `endpoint` event.
const BEFORE_ENDPOINT_LIMIT: usize = 64 * 1024;

/// Where the messages of one open legacy stream go.
#[derive(Debug)]
struct Target {
    /// The server the stream is of.
    server: String,
    /// The name of the key that opened it (`None` on a gateway without keys).
    key: Option<Arc<str>>,
    /// The upstream's message url, from its `endpoint` event.
    post_url: reqwest::Url,
    /// The instance the stream is open on, for its headers.
    endpoint: Arc<Endpoint>,
}

/// Every open legacy stream, by the token its `endpoint` event announced.
#[derive(Debug, Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Arc<Target>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Target>>> {
        self.by_token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `target` under a fresh token, until the registration is dropped.
    fn register(self: &Arc<Self>, target: Target) -> Registration {
        let token = random_token();
        self.lock().insert(token.clone(), Arc::new(target));
        Registration {
            sessions: self.clone(),
            token,
        }
    }

    /// The stream `token` names, if it is open, of `server`, and opened by `key`.
    fn find(&self, token: &str, server: &str, key: Option<&Arc<str>>) -> Option<Arc<Target>> {
        self.lock()
            .get(token)
            .filter(|t| t.server == server && t.key.as_deref() == key.map(|k| &**k))
            .cloned()
    }
}

/// An open stream's entry in [`Sessions`]; dropping it (when the stream ends) removes it.
pub struct Registration {
    sessions: Arc<Sessions>,
    token: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.token);
    }
}

fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key name of a caller, which a legacy session is bound to.
fn key_name(caller: &Caller) -> Option<Arc<str>> {
    match caller {
        Caller::Key(key) => Some(key.name.clone()),
        Caller::Anonymous | Caller::Unverified => None,
    }
}

/// Where a server serves the legacy transport: mcp-proxy's `/sse` beside its `/mcp` for
/// a stdio server, the configured url for a remote one.
fn sse_url(endpoint: &Endpoint) -> Result<reqwest::Url, UpstreamError> {
    match endpoint.transport {
        Transport::StreamableHttp => endpoint
            .url
            .join("/sse")
            .map_err(|e| UpstreamError::Protocol(e.to_string())),
        Transport::Detect | Transport::LegacySse => Ok(endpoint.url.clone()),
    }
}

/// `GET /servers/{name}/sse`.
pub async fn open(
    State(routes): State<Arc<Routes>>,
    ServerName(name): ServerName,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    open_stream(&routes, &caller, &name, &headers)
        .await
        .unwrap_or_else(|r| routes.refused(r))
}

async fn open_stream(
    routes: &Routes,
    caller: &Caller,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let about = |error: RouteError| error.about(Some(name), None);
    routes.check_running().map_err(about)?;
    let server = routes.server(caller, name).map_err(about)?;
    let mut held = routes.stream(caller).await.map_err(about)?;
    let endpoint = routes.endpoint(&server).await.map_err(about)?;
    let url = sse_url(&endpoint).map_err(|e| about(e.into()))?;
    let request = Request {
        method: reqwest::Method::GET,
        url: url.clone(),
        endpoint: &endpoint,
        client_headers: headers,
        body: None,
        expect: Expect::EventStream,
    };
    let http = &routes.context().http;
    let answer = exchange::send(http, request)
        .await
        .map_err(|e| about(e.into()))?;
    let Answer::Flow {
        status,
        headers,
        body,
    } = answer
    else {
        let grant = routes.grant(caller, server, &endpoint);
        return routes.answer(answer, held, grant, Until::Stream, Asked::nothing(name));
    };
    let wait = http.header_timeout();
    let opened = tokio::time::timeout(wait, until_endpoint(body))
        .await
        .unwrap_or(Err(UpstreamError::Timeout(wait)))
        .map_err(|e| about(e.into()))?;
    let post_url = post_url(&url, &opened.endpoint).map_err(|e| about(e.into()))?;
    let registration = routes.legacy.register(Target {
        server: name.to_owned(),
        key: key_name(caller),
        post_url,
        endpoint: endpoint.clone(),
    });
    let announced = format!("messages?session={}", registration.token);
    held.legacy = Some(registration);
    let prefix = opened.prefix_with(&announced);
    let body: ByteStream = Box::pin(futures::stream::once(async { Ok(prefix) }).chain(opened.rest));
    let answer = Answer::Flow {
        status,
        headers,
        body,
    };
    let grant = routes.grant(caller, server, &endpoint);
    routes.answer(answer, held, grant, Until::Stream, Asked::nothing(name))
}

/// `POST /servers/{name}/messages?session=TOKEN`.
pub async fn message(
    State(routes): State<Arc<Routes>>,
    ServerName(name): ServerName,
    RawQuery(query): RawQuery,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let token = query.as_deref().and_then(session_token);
    carry_message(&routes, &caller, &name, token, &headers, body)
        .await
        .unwrap_or_else(|r| routes.refused(r))
}

/// The first `session` of a message url's query (tokens are hex: nothing to decode).
fn session_token(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("session="))
}

async fn carry_message(
    routes: &Routes,
    caller: &Caller,
    name: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let about =
        |error: RouteError, id: Option<&serde_json::value::RawValue>| error.about(Some(name), id);
    let Message { body, id, method } = routes.receive(caller, name, body).await?;
    let id = id.as_deref();
    let server = routes.server(caller, name).map_err(|e| about(e, id))?;
    let meter = routes.meter(&server, method);
    let body_len = body.len();
    let refuse = |error: RouteError| {
        if let Some(meter) = &meter {
            meter.finish(Outcome::Gateway(error.code()));
        }
        about(error, id)
    };
    let key = key_name(caller);
    let target = token
        .and_then(|token| routes.legacy.find(token, name, key.as_ref()))
        .ok_or_else(|| refuse(RouteError::NoLegacySession(name.to_owned())))?;
    let request = Request {
        method: reqwest::Method::POST,
        url: target.post_url.clone(),
        endpoint: &target.endpoint,
        client_headers: headers,
        body: Some(body),
        expect: Expect::Anything,
    };
    routes.sent(&server, body_len);
    let answer = exchange::send(&routes.context().http, request)
        .await
        .map_err(|e| refuse(e.into()))?;
    let grant = routes.grant(caller, server, &target.endpoint);
    routes.answer_message(answer, meter, grant, name, id)
}

/// A stream read up to its `endpoint` event.
struct Opened {
    /// What the stream sent before that event, passed on as it was.
    before: Bytes,
    /// The event's data: where the upstream takes messages.
    endpoint: String,
    /// What came after the event in the same reads.
    after: Bytes,
    /// The rest of the stream.
    rest: ByteStream,
}

impl Opened {
    /// What the client gets first: the events before, the `endpoint` event naming
    /// `announced`, and what followed it.
    fn prefix_with(&self, announced: &str) -> Bytes {
        let mut prefix = BytesMut::with_capacity(self.before.len() + self.after.len() + 64);
        prefix.extend_from_slice(&self.before);
        prefix.extend_from_slice(format!("event: endpoint\ndata: {announced}\n\n").as_bytes());
        prefix.extend_from_slice(&self.after);
        prefix.freeze()
    }
}

/// Reads `body` until its `endpoint` event, at most [`BEFORE_ENDPOINT_LIMIT`] bytes.
async fn until_endpoint(mut body: ByteStream) -> Result<Opened, UpstreamError> {
    let mut read = BytesMut::new();
    loop {
        if let Some(found) = find_endpoint(&read) {
            let after = read.split_off(found.end).freeze();
            return Ok(Opened {
                before: read.split_to(found.start).freeze(),
                endpoint: found.data,
                after,
                rest: body,
            });
        }
        if read.len() > BEFORE_ENDPOINT_LIMIT {
            let why = format!("no endpoint event in the first {BEFORE_ENDPOINT_LIMIT} bytes");
            return Err(UpstreamError::Protocol(why));
        }
        match body.next().await {
            Some(Ok(chunk)) => read.extend_from_slice(&chunk),
            Some(Err(err)) => return Err(UpstreamError::StreamCut(err.without_url().to_string())),
            None => {
                let why = "the event stream ended before its endpoint event";
                return Err(UpstreamError::Protocol(why.into()));
            }
        }
    }
}

/// Where the first `endpoint` event is in a stream's first bytes.
#[derive(Debug, PartialEq, Eq)]
struct EndpointEvent {
    /// Its first byte.
    start: usize,
    /// The byte after its blank line.
    end: usize,
    /// Its data.
    data: String,
}

/// Finds the first complete `endpoint` event in `read` (events are separated by a blank
/// line; lines end with CRLF, LF or CR).
fn find_endpoint(read: &[u8]) -> Option<EndpointEvent> {
    let mut event_start = 0;
    let mut event_name: Option<String> = None;
    let mut data: Option<String> = None;
    let mut line_start = 0;
    while let Some(offset) = read[line_start..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
    {
        let line_end = line_start + offset;
        let mut next = line_end + 1;
        if read[line_end] == b'\r' {
            match read.get(next) {
                Some(b'\n') => next += 1,
                Some(_) => {}
                // A CR at the end may be the first half of a CRLF.
                None => return None,
            }
        }
        let line = &read[line_start..line_end];
        if line.is_empty() {
            if event_name.as_deref() == Some("endpoint") {
                if let Some(data) = data {
                    return Some(EndpointEvent {
                        start: event_start,
                        end: next,
                        data,
                    });
                }
            }
            event_start = next;
            event_name = None;
            data = None;
        } else if line[0] != b':' {
            let line = String::from_utf8_lossy(line);
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event_name = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        line_start = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_event_is_found_whole_or_not_at_all() {
        let stream = b": hello\n\nevent: endpoint\ndata: /messages?sessionId=abc\n\nevent: message\ndata: {}\n\n";
        let found = find_endpoint(stream).unwrap();
        assert_eq!(found.data, "/messages?sessionId=abc");
        assert_eq!(&stream[..found.start], b": hello\n\n");
        assert_eq!(&stream[found.end..], b"event: message\ndata: {}\n\n");
        for cut in 0..found.end {
            assert_eq!(find_endpoint(&stream[..cut]), None, "cut at {cut}");
        }
        let crlf = b"event:endpoint\r\ndata: /m?s=1\r\n\r\n";
        assert_eq!(find_endpoint(crlf).unwrap().end, crlf.len());
        // A CR at the end may be half a CRLF: the event is complete once more came.
        let cr = b"event: endpoint\rdata: /m\r\r";
        assert_eq!(find_endpoint(cr), None);
        let found = find_endpoint(b"event: endpoint\rdata: /m\r\r:").unwrap();
        assert_eq!((found.data.as_str(), found.end), ("/m", cr.len()));
        assert_eq!(find_endpoint(b"event: message\ndata: {}\n\n"), None);
    }

    #[tokio::test]
    async fn the_endpoint_is_replaced_and_the_rest_flows_unchanged() {
        let chunks = [
            &b"event: endp"[..],
            b"oint\ndata: /messages?sessionId=abc\n\nevent: message\n",
            b"data: {\"jsonrpc\":\"2.0\"}\n\n",
        ];
        let body: ByteStream = Box::pin(futures::stream::iter(
            chunks.map(|c| Ok(Bytes::from_static(c))),
        ));
        let opened = until_endpoint(body).await.unwrap();
        assert_eq!(opened.endpoint, "/messages?sessionId=abc");
        let prefix = opened.prefix_with("messages?session=t");
        assert_eq!(
            prefix,
            "event: endpoint\ndata: messages?session=t\n\nevent: message\n"
        );
        let rest: Vec<_> = opened.rest.collect().await;
        assert_eq!(rest.len(), 1);
    }

    #[tokio::test]
    async fn a_stream_without_an_endpoint_event_is_refused() {
        let body: ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from_static(
            b"event: message\ndata: {}\n\n",
        ))]));
        assert!(matches!(
            until_endpoint(body).await,
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn the_token_is_the_first_session_of_the_query() {
        assert_eq!(session_token("session=ab12"), Some("ab12"));
        assert_eq!(session_token("x=1&session=ab&session=cd"), Some("ab"));
        assert_eq!(session_token("sessions=ab"), None);
        assert_eq!(session_token(""), None);
    }

    #[test]
    fn a_session_is_found_only_for_its_server_and_key() {
        let sessions = Arc::new(Sessions::default());
        let endpoint = Arc::new(Endpoint {
            url: "http://127.0.0.1:1/sse".parse().unwrap(),
            headers: HeaderMap::new(),
            generation: 1,
            transport: Transport::LegacySse,
        });
        let key: Arc<str> = Arc::from("dashboard");
        let registration = sessions.register(Target {
            server: "a".into(),
            key: Some(key.clone()),
            post_url: "http://127.0.0.1:1/messages?s=1".parse().unwrap(),
            endpoint,
        });
        let token = registration.token.clone();
        assert!(sessions.find(&token, "a", Some(&key)).is_some());
        assert!(sessions.find(&token, "b", Some(&key)).is_none());
        assert!(
            sessions
                .find(&token, "a", Some(&Arc::from("ops")))
                .is_none()
        );
        assert!(sessions.find(&token, "a", None).is_none());
        drop(registration);
        assert!(sessions.find(&token, "a", Some(&key)).is_none());
    }
}
