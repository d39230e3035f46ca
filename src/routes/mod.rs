//! The MCP routes over HTTP: mcpmux as a streaming reverse proxy for MCP clients that
//! speak HTTP rather than the `mcpmux.v1` WebSocket (every official SDK, mcp-remote, MCP
//! Inspector), reaching the same servers under the same keys, Origins and rate limits.
//!
//! - Streamable HTTP ([`streamable`]): `POST`, `GET` and `DELETE` on
//!   `/servers/{name}/mcp`, and the same on `/mcp` naming the server in `X-MCP-Server`.
//! - The legacy HTTP+SSE transport ([`legacy`]): `GET /servers/{name}/sse`, whose
//!   `endpoint` event names `/servers/{name}/messages?session=...` for the messages.
//!
//! The gate ([`crate::auth::gate`]) has checked Origin, Host and key before a handler
//! runs, and left the [`Caller`]. A handler reads and counts a POSTed message
//! ([`message`]), finds the server (one the key may not use is answered as one that does
//! not exist), waits for it to be ready as a WebSocket message would, and sends the
//! request ([`exchange`]) with the MCP headers ([`headers`]); the answer flows back as it
//! comes ([`relay`]). Refusals and failures ([`error`]) are an HTTP status with a
//! JSON-RPC error body, as `protocol.md` (section 12) lists them.
//!
//! Nothing here keeps MCP sessions: the upstream does. mcpmux keeps only, per open legacy
//! SSE stream, where its messages go.

mod error;
mod exchange;
mod headers;
mod legacy;
mod message;
mod relay;
mod streamable;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::error::{Refused, RouteError};
use self::exchange::Answer;
use self::message::Message;
use self::relay::{Held, Relay};
use crate::auth::Caller;
use crate::context::SessionContext;
use crate::registry::Server;
use crate::state::GatewayState;
use crate::upstream::{Endpoint, Transport};

/// The MCP routes, to merge into the gateway's router (behind its gate).
pub fn router<S: Clone + Send + Sync + 'static>(gateway: Arc<GatewayState>) -> Router<S> {
    let routes = Arc::new(Routes {
        gateway,
        legacy: Arc::default(),
    });
    Router::new()
        .route(
            "/mcp",
            post(streamable::post_by_header)
                .get(streamable::get_by_header)
                .delete(streamable::delete_by_header),
        )
        .route(
            "/servers/{name}/mcp",
            post(streamable::post)
                .get(streamable::get)
                .delete(streamable::delete),
        )
        .route("/servers/{name}/sse", get(legacy::open))
        .route("/servers/{name}/messages", post(legacy::message))
        .with_state(routes)
}

/// What the MCP routes share.
struct Routes {
    /// The gateway's servers, limits, HTTP client, shutdown signal and trackers.
    gateway: Arc<GatewayState>,
    /// The open legacy SSE streams, by the session token their `endpoint` event named.
    legacy: Arc<legacy::Sessions>,
}

impl Routes {
    fn context(&self) -> &SessionContext {
        &self.gateway.context
    }

    /// Refuses new exchanges once the gateway is shutting down.
    fn check_running(&self) -> Result<(), RouteError> {
        if self.context().shutdown.is_cancelled() {
            Err(RouteError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// The server `name`, if the caller may use it; otherwise the answer for a server
    /// that does not exist, so that a key cannot learn the names of others.
    fn server(&self, caller: &Caller, name: &str) -> Result<Arc<Server>, RouteError> {
        self.context()
            .servers
            .get(name)
            .filter(|_| caller.may_use(name))
            .ok_or_else(|| RouteError::UnknownServer(name.to_owned()))
    }

    /// Takes in a POSTed message for server `name`: refused while shutting down, read and
    /// looked into ([`Message::read`]), and counted against the caller's rate.
    async fn receive(&self, caller: &Caller, name: &str, body: Body) -> Result<Message, Refused> {
        self.check_running()
            .map_err(|e| e.about(Some(name), None))?;
        let limit = self.context().config.max_frame_bytes;
        let message = Message::read(body, limit).await.map_err(|mut refused| {
            refused.server = Some(name.to_owned());
            refused
        })?;
        message.check_rate(caller, name).await?;
        Ok(message)
    }

    /// The server's ready instance, waiting up to `connectTimeoutMs` while it starts or
    /// restarts, as a WebSocket message does.
    async fn endpoint(&self, server: &Server) -> Result<Arc<Endpoint>, RouteError> {
        let wait = self.context().config.connect_timeout;
        Ok(server.ready_endpoint(wait).await?)
    }

    /// What an exchange holds while its answer flows: its count among the exchanges a
    /// shutdown waits for.
    fn exchange(&self) -> Held {
        Held {
            exchange: Some(self.gateway.connections.token()),
            ..Held::default()
        }
    }

    /// What an event stream holds besides: a place among `maxSessions`, and one of its
    /// key's `maxConnections`, as a WebSocket does.
    async fn stream(&self, caller: &Caller) -> Result<Held, RouteError> {
        let key_slot = match caller {
            Caller::Key(key) => {
                Some(
                    key.open_connection()
                        .await
                        .ok_or_else(|| RouteError::TooManyStreams {
                            key: key.name.clone(),
                            max: key.max_connections().unwrap_or(0),
                        })?,
                )
            }
            Caller::Anonymous | Caller::Unverified => None,
        };
        let place = self
            .gateway
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| RouteError::Full)?;
        Ok(Held {
            place: Some(place),
            key_slot,
            ..self.exchange()
        })
    }

    /// When a relayed event stream stops at the latest: as soon as the gateway shuts down.
    fn stream_stop(&self) -> impl Future<Output = ()> + Send + 'static {
        self.context().shutdown.clone().cancelled_owned()
    }

    /// When a relayed answer to a message stops at the latest: `shutdownGraceMs` after the
    /// gateway began to shut down, as requests in flight on a WebSocket.
    fn message_stop(&self) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = self.context().shutdown.clone();
        let grace = self.context().config.shutdown_grace;
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    }

    /// The answer to a refused or failed request, counted.
    fn refused(&self, refused: Refused) -> Response {
        let named = refused.server.as_deref().unwrap_or("");
        let configured = if self.context().servers.get(named).is_some() {
            named
        } else {
            ""
        };
        self.record(configured, refused.error.code().as_str());
        tracing::debug!(server = named, error = %refused.error, "MCP route request refused");
        refused.into_response()
    }

    /// The client's answer to an upstream's: a success flows on through a [`Relay`]
    /// holding `held` until `stop`; an upstream's own refusal is passed on whole.
    fn answer(
        &self,
        server: &str,
        answer: Answer,
        held: Held,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Response {
        let (status, headers, body, outcome) = match answer {
            Answer::Flow {
                status,
                headers,
                body,
            } => {
                let relay = Relay::new(body, stop, held);
                (status, headers, Body::from_stream(relay), "ok")
            }
            Answer::Refusal {
                status,
                headers,
                body,
            } => (status, headers, Body::from(body), "refused_by_server"),
        };
        self.record(server, outcome);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// Counts one request on an MCP route by its outcome: `ok`, `refused_by_server` (an
    /// upstream's own 4xx), or the gateway error code. The server is a configured one or
    /// `""`, never a name a client made up: the labels stay bounded.
    fn record(&self, server: &str, outcome: &'static str) {
        tracing::debug!(server, outcome, "MCP route request");
        self.context().metrics.http_route_request(server, outcome);
    }
}

/// True when the server can be reached only through the legacy HTTP+SSE transport.
fn legacy_only(server: &Server, endpoint: &Endpoint) -> bool {
    match endpoint.transport {
        Transport::LegacySse => true,
        Transport::Detect => server.speaks_legacy_sse(),
        Transport::StreamableHttp => false,
    }
}

/// The server `/mcp` names in its one `X-MCP-Server` header.
fn named_by_header(headers: &HeaderMap) -> Result<String, RouteError> {
    let mut values = headers.get_all(headers::X_MCP_SERVER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .map(|name| name.trim().to_owned())
            .map_err(|_| RouteError::NoServerNamed),
        _ => Err(RouteError::NoServerNamed),
    }
}
