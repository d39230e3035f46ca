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
mod lifetime;
mod message;
mod relay;
mod scan;
mod streamable;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;

use self::error::{Refused, RouteError};
use self::exchange::Answer;
use self::lifetime::Grant;
use self::message::Message;
use self::relay::{Asked, Held, Relay, Tally};
use crate::auth::Caller;
use crate::context::SessionContext;
use crate::metrics::{Direction, Outcome, RequestMeter};
use crate::protocol::ErrorCode;
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
            post(streamable::post)
                .get(streamable::get)
                .delete(streamable::delete),
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

    /// Takes in a POSTed message for server `name`: read and looked into
    /// ([`Message::read`]), refused (with its id) while shutting down, and counted
    /// against the caller's rate.
    async fn receive(&self, caller: &Caller, name: &str, body: Body) -> Result<Message, Refused> {
        let limit = self.context().config.max_frame_bytes;
        let message = Message::read(body, limit).await.map_err(|mut refused| {
            refused.server = Some(name.to_owned());
            refused
        })?;
        self.check_running()
            .map_err(|e| e.about(Some(name), message.id.as_deref()))?;
        let metrics = &self.context().metrics;
        let configured = self.context().servers.get(name).map(|s| s.name.clone());
        message
            .check_rate(caller, configured.as_ref(), name, metrics)
            .await?;
        Ok(message)
    }

    /// Starts measuring a request (`method` is its label) to `server`: its outcome and
    /// latency count when its answer ends or it is refused ([`RequestMeter`]).
    fn meter(&self, server: &Server, method: Option<&'static str>) -> Option<RequestMeter> {
        let metrics = &self.context().metrics;
        method.map(|method| RequestMeter::start(metrics, &server.name, method))
    }

    /// Counts a message of `bytes` bytes sent on to `server`.
    fn sent(&self, server: &Server, bytes: usize) {
        let metrics = &self.context().metrics;
        metrics.message(&server.name, Direction::ToServer, bytes);
    }

    /// The server's ready instance, waiting up to `connectTimeoutMs` while it starts or
    /// restarts, as a WebSocket message does.
    async fn endpoint(&self, server: &Server) -> Result<Arc<Endpoint>, RouteError> {
        let wait = self.context().config.connect_timeout;
        Ok(server.ready_endpoint(wait).await?)
    }

    /// What an exchange holds while its answer flows: its count among the exchanges a
    /// shutdown waits for, and the request's meter.
    fn exchange(&self, meter: Option<RequestMeter>) -> Held {
        Held {
            exchange: Some(self.gateway.connections.token()),
            meter,
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
            ..self.exchange(None)
        })
    }

    /// What an answer from `server`'s instance `endpoint`, asked for by `caller`, flows
    /// under ([`lifetime`]).
    fn grant(&self, caller: &Caller, server: Arc<Server>, endpoint: &Endpoint) -> Grant {
        Grant {
            registry: self.context().servers.clone(),
            access: self.gateway.access.clone(),
            caller: caller.clone(),
            server,
            generation: endpoint.generation,
        }
    }

    /// When a relayed answer stops at the latest, and with what code: once `grant` no
    /// longer holds (`unknown_server` or `session_lost`, [`lifetime`]), or on shutdown
    /// (`server_unavailable`): at once for an event stream of its own ([`Until::Stream`]),
    /// `shutdownGraceMs` after it for the answer to a message ([`Until::Answered`]), as
    /// requests in flight on a WebSocket.
    fn stop(&self, grant: Grant, until: Until) -> impl Future<Output = ErrorCode> + Send + 'static {
        let shutdown = self.context().shutdown.clone();
        let grace = match until {
            Until::Stream => std::time::Duration::ZERO,
            Until::Answered => self.context().config.shutdown_grace,
        };
        let lost = grant.lost();
        async move {
            let drained = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                _ = drained => ErrorCode::ServerUnavailable,
                why = lost => why,
            }
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
    /// holding `held` while `grant` holds ([`Routes::stop`]); an upstream's own refusal
    /// is passed on whole. A success whose grant is gone already (the server changed
    /// while the request was on its way) is refused as the stop would have cut it.
    fn answer(
        &self,
        answer: Answer,
        held: Held,
        grant: Grant,
        until: Until,
        asked: Asked,
    ) -> Result<Response, Refused> {
        let metrics = &self.context().metrics;
        let server = asked.server.clone();
        let configured = self.context().servers.get(&server).map(|s| s.name.clone());
        let (status, headers, body, outcome) = match answer {
            Answer::Flow {
                status,
                headers,
                body,
            } => {
                if let Err(code) = grant.check() {
                    if let Some(meter) = &held.meter {
                        meter.finish(Outcome::Gateway(code));
                    }
                    let error = match code {
                        ErrorCode::UnknownServer => RouteError::UnknownServer(server.clone()),
                        _ => RouteError::InstanceGone(server.clone()),
                    };
                    return Err(error.about(Some(&server), asked.id.as_deref()));
                }
                let events = headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                let stop = self.stop(grant, until);
                let mut relay = Relay::new(body, events, stop, held).answering(asked);
                if let Some(server) = configured {
                    relay = relay.counted(Tally::new(metrics.clone(), server, events));
                }
                (status, headers, Body::from_stream(relay), "ok")
            }
            Answer::Refusal {
                status,
                headers,
                body,
            } => {
                if let Some(meter) = &held.meter {
                    meter.finish(Outcome::Error);
                }
                if let Some(server) = configured {
                    metrics.message(&server, Direction::ToClient, body.len());
                }
                (status, headers, Body::from(body), "refused_by_server")
            }
        };
        self.record(&server, outcome);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// [`Routes::answer`] for the answer to a POSTed message (`id`: the request's), with
    /// its `meter`.
    fn answer_message(
        &self,
        answer: Answer,
        meter: Option<RequestMeter>,
        grant: Grant,
        name: &str,
        id: Option<&RawValue>,
    ) -> Result<Response, Refused> {
        let asked = Asked {
            server: name.to_owned(),
            id: id.map(RawValue::to_owned),
        };
        self.answer(answer, self.exchange(meter), grant, Until::Answered, asked)
    }

    /// Counts one request on an MCP route by its outcome: `ok`, `refused_by_server` (an
    /// upstream's own 4xx), or the gateway error code. The server is a configured one or
    /// `""`, never a name a client made up: the labels stay bounded.
    fn record(&self, server: &str, outcome: &'static str) {
        tracing::debug!(server, outcome, "MCP route request");
        self.context().metrics.http_route_request(server, outcome);
    }
}

/// How long a relayed answer may flow after the gateway begins to shut down.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// An event stream of its own (`GET`, a legacy stream): it ends at once.
    Stream,
    /// The answer to a message: it may flow for `shutdownGraceMs`.
    Answered,
}

/// True when the server can be reached only through the legacy HTTP+SSE transport.
fn legacy_only(server: &Server, endpoint: &Endpoint) -> bool {
    match endpoint.transport {
        Transport::LegacySse => true,
        Transport::Detect => server.speaks_legacy_sse(),
        Transport::StreamableHttp => false,
    }
}

/// The server an MCP route request names: the `{name}` of its path, or on `/mcp` (only)
/// its one `X-MCP-Server` header. Without one, or with a path name that is not UTF-8
/// once decoded, it is refused (400, counted) before anything.
pub struct ServerName(pub String);

impl FromRequestParts<Arc<Routes>> for ServerName {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        routes: &Arc<Routes>,
    ) -> Result<Self, Self::Rejection> {
        if parts.uri.path() == "/mcp" {
            return named_by_header(&parts.headers)
                .map(Self)
                .map_err(|error| routes.refused(error.into()));
        }
        RawPathParams::from_request_parts(parts, routes)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(key, _)| *key == "name")
                    .map(|(_, name)| name.to_owned())
            })
            .map(Self)
            .ok_or_else(|| routes.refused(RouteError::BadServerName.into()))
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
