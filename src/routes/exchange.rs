//! One request to an upstream, and what its answer becomes for the client.
//!
//! - A success with a usable body (an event stream, JSON, or none) flows on as it comes
//!   ([`Answer::Flow`]).
//! - A client error of the upstream's own (400 bad request, 404 unknown session, 405 no
//!   standalone stream, 406, 409, 413, 415...) is what an MCP client must see to react
//!   to it: it is passed on with its body, the upstream's secrets masked
//!   ([`Answer::Refusal`]).
//! - Everything else is a failure of the upstream ([`UpstreamError`]): no connection, no
//!   answer within `connectTimeoutMs`, a redirect (never followed), a refusal of
//!   mcpmux's own credentials (401, 403, 407), a server error (5xx), or a success whose
//!   body is not MCP.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::headers;
use super::relay::ByteStream;
use crate::redact::Scrubber;
use crate::upstream::http::{HttpClient, error_status, send_error};
use crate::upstream::{Endpoint, UpstreamError};

/// The most of an upstream's refusal body that is passed on.
const REFUSAL_BODY_LIMIT: usize = 64 * 1024;

/// What the answer of a request must be to count as MCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A POST: `202`, JSON, an event stream, or no body.
    Message,
    /// A GET: an event stream.
    EventStream,
    /// A DELETE: any success.
    Anything,
}

/// One request to an upstream.
pub struct Request<'a> {
    /// `GET`, `POST` or `DELETE`.
    pub method: reqwest::Method,
    /// Where to.
    pub url: reqwest::Url,
    /// The endpoint, for its own headers and its secrets.
    pub endpoint: &'a Endpoint,
    /// The client's request headers, of which the MCP ones are forwarded.
    pub client_headers: &'a HeaderMap,
    /// The body of a POST.
    pub body: Option<Bytes>,
    /// What the answer must be.
    pub expect: Expect,
}

/// What came back.
pub enum Answer {
    /// A success: its status and headers now, its body as it arrives.
    Flow {
        /// The upstream's status.
        status: StatusCode,
        /// The headers the client gets.
        headers: HeaderMap,
        /// The body.
        body: ByteStream,
    },
    /// A client error of the upstream's own, passed on.
    Refusal {
        /// The upstream's status.
        status: StatusCode,
        /// The headers the client gets.
        headers: HeaderMap,
        /// The body, its secrets masked.
        body: Bytes,
    },
}

/// Sends `request` and waits up to the header timeout (`connectTimeoutMs`) for the
/// answer's headers.
pub async fn send(http: &HttpClient, request: Request<'_>) -> Result<Answer, UpstreamError> {
    let timeout = http.header_timeout();
    let mut builder = http
        .raw()
        .request(request.method, request.url.clone())
        .headers(headers::upstream_request(
            request.client_headers,
            request.endpoint,
        ));
    if let Some(body) = request.body {
        builder = builder.body(body);
    }
    let response = match tokio::time::timeout(timeout, builder.send()).await {
        Err(_) => return Err(UpstreamError::Timeout(timeout)),
        Ok(Err(err)) => return Err(send_error(err, timeout)),
        Ok(Ok(response)) => response,
    };
    let secrets = Scrubber::new(&request.url, &request.endpoint.headers);
    let status = response.status();
    if status.is_success() {
        check_media_type(&response, request.expect)?;
        let event_stream = headers::is_event_stream(response.headers());
        return Ok(Answer::Flow {
            status,
            headers: headers::client_response(response.headers(), event_stream),
            body: Box::pin(response.bytes_stream()),
        });
    }
    let credentials_refused = matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PROXY_AUTHENTICATION_REQUIRED
    );
    if credentials_refused {
        let body = "the server refused mcpmux's credentials; check the headers of its entry in the configuration";
        return Err(UpstreamError::Status {
            status: status.as_u16(),
            body: body.into(),
        });
    }
    if !status.is_client_error() {
        return Err(error_status(response, false, &secrets).await);
    }
    let headers = headers::client_response(response.headers(), false);
    let body = read_refusal(response, timeout, &secrets).await?;
    Ok(Answer::Refusal {
        status,
        headers,
        body,
    })
}

/// Refuses a success whose body is not what MCP answers with.
fn check_media_type(response: &reqwest::Response, expect: Expect) -> Result<(), UpstreamError> {
    let media_type = headers::media_type(response.headers());
    let event_stream = media_type.starts_with("text/event-stream");
    let json = media_type.starts_with("application/json");
    let empty = response.status() == StatusCode::ACCEPTED
        || response.status() == StatusCode::NO_CONTENT
        || response.content_length() == Some(0);
    let usable = match expect {
        Expect::Message => event_stream || json || empty,
        Expect::EventStream => event_stream,
        Expect::Anything => true,
    };
    if usable {
        Ok(())
    } else {
        let shown = if media_type.is_empty() {
            "no content type".to_owned()
        } else {
            format!("content type {media_type:?}")
        };
        Err(UpstreamError::Protocol(format!(
            "the server answered {} with {shown}, which is not MCP",
            response.status().as_u16()
        )))
    }
}

/// Reads an upstream's refusal body, bounded in size and time, its secrets masked.
async fn read_refusal(
    response: reqwest::Response,
    timeout: Duration,
    secrets: &Scrubber,
) -> Result<Bytes, UpstreamError> {
    let status = response.status().as_u16();
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    let reading = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| send_error(e, timeout))?;
            if body.len() + chunk.len() > REFUSAL_BODY_LIMIT {
                return Err(UpstreamError::Protocol(format!(
                    "the server answered HTTP {status} with a body over {REFUSAL_BODY_LIMIT} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(Err(UpstreamError::Timeout(timeout)))?;
    if secrets.longest() == 0 {
        return Ok(body.freeze());
    }
    Ok(Bytes::from(secrets.scrub(&String::from_utf8_lossy(&body))))
}
