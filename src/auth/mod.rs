//! Who may use the gateway: the Origin and Host policy, API keys (and which servers each
//! may use), rate limits, and the limits on sockets per key and per client address.
//!
//! A request meets these checks in order:
//! 1. [`gate`], on every HTTP route but `/healthz`: the Origin and Host policy (HTTP 403),
//!    then the key in the headers or the bearer subprotocol (HTTP 401). It leaves a
//!    [`Caller`] in the request for the handler; CORS headers echo allowed origins.
//! 2. [`Access::admit_upgrade`], in the WebSocket upgrade: the key's `maxConnections`
//!    and the address's `maxPendingPerIp` (HTTP 429), giving an [`Admission`].
//! 3. [`Admission::after_hello`], once `hello` arrived: the `token` in it, which must be the
//!    key given at the upgrade if there was one (else close 4501), and `maxConnections` for a
//!    key first seen there (close 4029), giving the session's [`Grant`].
//! 4. [`Grant::check_rate`] for every `rpc` frame; [`Grant::may_use`] for every server name.

mod gate;
mod keys;
mod origin;
mod pending;
mod presented;
mod rate;

use std::net::IpAddr;
use std::sync::Arc;

pub use gate::{Route, gate, refuse};
pub use keys::{ApiKey, ConnectionSlot, KeyRing};
pub use origin::OriginPolicy;
pub use pending::{PendingPerIp, PendingSlot};
pub use presented::{
    API_KEY_HEADER, BEARER_SUBPROTOCOL_PREFIX, PresentedKey, bearer_subprotocol, presented_key,
};
pub use rate::{OverLimit, STREAK_LIMIT, STREAK_PAUSE, Streak};

use crate::config::GatewayConfig;
use crate::protocol::close_code;

/// Why a request or socket is refused. The text is the response body or close reason; it
/// never holds a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Origin` is not allowed (HTTP 403).
    #[error(
        "pages from origin \"{0}\" may not use this gateway; add the origin to gateway.allowedOrigins to allow them"
    )]
    ForeignOrigin(String),
    /// `Origin: null` (HTTP 403).
    #[error(
        "pages with origin null (sandboxed frames, local files) may not use this gateway; serve the page from an origin listed in gateway.allowedOrigins"
    )]
    NullOrigin,
    /// `Origin` is not one origin (HTTP 403).
    #[error(
        "the Origin header is not one origin; pages may use this gateway only from an origin listed in gateway.allowedOrigins"
    )]
    MalformedOrigin,
    /// `Host` is a name the gateway does not answer to without keys (HTTP 403).
    #[error(
        "host \"{0}\" is not a name of this gateway (protection against DNS rebinding); add it to gateway.allowedHosts, or configure gateway.apiKeys"
    )]
    ForeignHost(String),
    /// The gateway needs a key and none was presented (HTTP 401).
    #[error(
        "this gateway needs an API key: send \"Authorization: Bearer KEY\" or \"X-API-Key: KEY\" (on /ws also the subprotocol mcpmux.bearer.<KEY in base64url>, or \"token\" in hello)"
    )]
    MissingKey,
    /// The presented key is not a configured one (HTTP 401).
    #[error("the API key is not valid")]
    WrongKey,
    /// Two places carry two different keys (HTTP 401).
    #[error("the request presents two different API keys; send one")]
    ConflictingKeys,
    /// A `mcpmux.bearer.` subprotocol that is not base64url (HTTP 401).
    #[error("a mcpmux.bearer. subprotocol must carry the API key in base64url")]
    MalformedBearerSubprotocol,
    /// The key has `maxConnections` sockets open (HTTP 429).
    #[error(
        "API key \"{key}\" has {max} sockets open already (maxConnections); close one or try again later"
    )]
    TooManyConnections {
        /// The key's name.
        key: Arc<str>,
        /// Its `maxConnections`.
        max: usize,
    },
    /// The address has `maxPendingPerIp` sockets that have not sent `hello` (HTTP 429).
    #[error(
        "too many sockets from this address have not sent hello yet (maxPendingPerIp is {0}); send hello promptly, or try again later"
    )]
    TooManyPending(usize),
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::ForeignOrigin(_)
            | Self::NullOrigin
            | Self::MalformedOrigin
            | Self::ForeignHost(_) => StatusCode::FORBIDDEN,
            Self::MissingKey
            | Self::WrongKey
            | Self::ConflictingKeys
            | Self::MalformedBearerSubprotocol => StatusCode::UNAUTHORIZED,
            Self::TooManyConnections { .. } | Self::TooManyPending(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

/// A gateway without keys on an address other than loopback, not marked `allowAnonymous`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "mcpmux refuses to listen on {0} without API keys: anyone who reaches that address could use every server. Add gateway.apiKeys, or set \"allowAnonymous\": true in gateway if that is intended"
)]
pub struct Exposed(pub std::net::SocketAddr);

/// Refuses to serve without keys on an address other than loopback, unless the
/// configuration says `allowAnonymous`.
pub fn check_exposure(config: &GatewayConfig, addr: std::net::SocketAddr) -> Result<(), Exposed> {
    let access = &config.access;
    if addr.ip().to_canonical().is_loopback()
        || !access.api_keys.is_empty()
        || access.allow_anonymous
    {
        Ok(())
    } else {
        Err(Exposed(addr))
    }
}

/// Who a request comes from, as far as the HTTP layer could tell.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The gateway takes no keys: every caller may use every server.
    Anonymous,
    /// The request presented this configured key.
    Key(Arc<ApiKey>),
    /// The gateway takes keys, and this WebSocket upgrade presented none: `hello` must.
    Unverified,
}

impl Caller {
    /// True when the caller may use (and see) `server`.
    pub fn may_use(&self, server: &str) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Key(key) => key.may_use(server),
            Self::Unverified => false,
        }
    }
}

/// The access rules of one gateway, shared by every request.
#[derive(Debug)]
pub struct Access {
    keys: KeyRing,
    origins: OriginPolicy,
    pending: Arc<PendingPerIp>,
}

impl Access {
    /// The rules of `config`.
    pub fn new(config: &GatewayConfig) -> Arc<Self> {
        Arc::new(Self {
            keys: KeyRing::new(&config.access.api_keys),
            origins: OriginPolicy::new(&config.access, config.tls.is_some()),
            pending: PendingPerIp::new(config.max_pending_per_ip),
        })
    }

    /// True when API keys are configured.
    pub fn takes_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The Origin and Host policy.
    pub fn origins(&self) -> &OriginPolicy {
        &self.origins
    }

    /// The caller a request's presented key (if any) makes it. `websocket`: the request is
    /// the upgrade, which may defer its key to `hello` and may carry it as a subprotocol.
    pub fn identify(
        &self,
        headers: &axum::http::HeaderMap,
        websocket: bool,
    ) -> Result<Caller, Refusal> {
        if self.keys.is_empty() {
            // A key presented to a gateway without keys is ignored.
            return Ok(Caller::Anonymous);
        }
        match presented_key(headers, websocket)? {
            Some(presented) => self
                .keys
                .find(presented.bytes())
                .map(Caller::Key)
                .ok_or(Refusal::WrongKey),
            None if websocket => Ok(Caller::Unverified),
            None => Err(Refusal::MissingKey),
        }
    }

    /// Admits a WebSocket upgrade from `peer`: counts it against its key's `maxConnections`
    /// and against the address's `maxPendingPerIp` until `hello` is done.
    pub fn admit_upgrade(
        self: &Arc<Self>,
        caller: Caller,
        peer: IpAddr,
    ) -> Result<Admission, Refusal> {
        let connection = match &caller {
            Caller::Key(key) => {
                Some(
                    key.open_connection()
                        .ok_or_else(|| Refusal::TooManyConnections {
                            key: key.name.clone(),
                            max: key.max_connections().unwrap_or(0),
                        })?,
                )
            }
            Caller::Anonymous | Caller::Unverified => None,
        };
        let pending = self
            .pending
            .enter(peer)
            .ok_or(Refusal::TooManyPending(self.pending.limit()))?;
        Ok(Admission {
            access: self.clone(),
            caller,
            connection,
            _pending: pending,
        })
    }
}

/// A socket admitted at the upgrade, waiting for its `hello`.
#[derive(Debug)]
pub struct Admission {
    access: Arc<Access>,
    caller: Caller,
    connection: Option<ConnectionSlot>,
    /// Frees the address's pending place when `hello` is done or the socket is gone.
    _pending: PendingSlot,
}

/// What a socket was granted once its `hello` was accepted.
#[derive(Debug)]
pub struct Admitted {
    /// What its client session may do.
    pub grant: Grant,
    /// Its place among its key's connections; held until the socket closes.
    pub connection: Option<ConnectionSlot>,
}

impl Admission {
    /// Decides on the `hello` `token`: a close code and reason when the socket must go.
    pub fn after_hello(self, token: Option<&str>) -> Result<Admitted, (u16, String)> {
        let unauthorized = |why: &str| (close_code::UNAUTHORIZED, why.to_owned());
        let found = token.map(|t| self.access.keys.find(t.as_bytes()));
        let (key, connection) = match (self.caller, found) {
            (Caller::Anonymous, _) => (None, None),
            (Caller::Key(key), None) => (Some(key), self.connection),
            (Caller::Key(key), Some(Some(same))) if Arc::ptr_eq(&key, &same) => {
                (Some(key), self.connection)
            }
            (Caller::Key(_), Some(_)) => {
                return Err(unauthorized(
                    "the hello token is not the API key presented at the upgrade",
                ));
            }
            (Caller::Unverified, None) => {
                return Err(unauthorized(
                    "this gateway needs an API key: send it as \"token\" in hello",
                ));
            }
            (Caller::Unverified, Some(None)) => {
                return Err(unauthorized("the API key is not valid"));
            }
            (Caller::Unverified, Some(Some(key))) => {
                let Some(slot) = key.open_connection() else {
                    let max = key.max_connections().unwrap_or(0);
                    let why = format!(
                        "API key \"{}\" has {max} sockets open already (maxConnections)",
                        key.name
                    );
                    return Err((close_code::RATE_LIMITED, why));
                };
                (Some(key), Some(slot))
            }
        };
        Ok(Admitted {
            grant: Grant {
                key,
                streak: Streak::default(),
            },
            connection,
        })
    }
}

/// What a client session may do: the servers its key may use, and its key's rate.
#[derive(Debug, Default)]
pub struct Grant {
    /// The key that opened the session; `None` on a gateway without keys.
    key: Option<Arc<ApiKey>>,
    /// Rate refusals of the session, for the 4029 rule.
    streak: Streak,
}

/// An `rpc` frame refused for rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// Milliseconds until a frame would be accepted.
    pub retry_after_ms: u64,
    /// A sentence for people.
    pub message: String,
    /// True when the connection has been refused without pause for too long (close 4029).
    pub close: bool,
}

impl Grant {
    /// Every server, no limit: a gateway without keys.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// The name of the key that opened the session; a resume must present the same.
    pub fn key_name(&self) -> Option<&Arc<str>> {
        self.key.as_ref().map(|k| &k.name)
    }

    /// True when the session may use (and see) `server`.
    pub fn may_use(&self, server: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.may_use(server))
    }

    /// Takes a token for one `rpc` frame naming `server` from the key's buckets.
    pub fn check_rate(&mut self, server: &str) -> Result<(), RateLimited> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let over = match key.check_rate(server) {
            Ok(()) => return Ok(()),
            Err(over) => over,
        };
        let close = self.streak.refused(tokio::time::Instant::now());
        let (per_second, burst) = over.rate;
        let scope = match &over.server {
            Some(server) => format!(" for server \"{server}\""),
            None => String::new(),
        };
        let message = format!(
            "API key \"{}\" is over its rate limit{scope} ({per_second} per second, burst {burst}); retry in {} ms",
            key.name, over.retry_after_ms
        );
        Err(RateLimited {
            retry_after_ms: over.retry_after_ms,
            message,
            close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, KeyMaterial, Rate, RateLimitConfig, Secret, ServerGrant};

    const KEY: &str = "dashboard-key-0123456789";
    const OTHER: &str = "ops-key-abcdefghijklmnop";

    fn gateway(max_connections: Option<usize>, rate: Option<Rate>) -> GatewayConfig {
        let mut config = GatewayConfig::default();
        config.access.api_keys = vec![
            ApiKeyConfig {
                name: "dashboard".into(),
                key: KeyMaterial::Plain(Secret::new(KEY)),
                servers: ServerGrant::Only(["everything".to_owned()].into()),
                rate_limit: rate.map(|r| RateLimitConfig {
                    overall: Some(r),
                    servers: Default::default(),
                }),
                max_connections,
            },
            ApiKeyConfig {
                name: "ops".into(),
                key: KeyMaterial::Plain(Secret::new(OTHER)),
                servers: ServerGrant::All,
                rate_limit: None,
                max_connections: None,
            },
        ];
        config.max_pending_per_ip = 2;
        config
    }

    fn headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    fn local() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn identify_by_header_or_defer_to_hello() {
        let access = Access::new(&gateway(None, None));
        let bearer = format!("Bearer {KEY}");
        match access.identify(&headers(&[("authorization", &bearer)]), false) {
            Ok(Caller::Key(key)) => assert_eq!(&*key.name, "dashboard"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            access
                .identify(&headers(&[("x-api-key", "wrong-key-0123456789")]), true)
                .err(),
            Some(Refusal::WrongKey)
        );
        assert_eq!(
            access.identify(&headers(&[]), false).err(),
            Some(Refusal::MissingKey)
        );
        assert!(matches!(
            access.identify(&headers(&[]), true),
            Ok(Caller::Unverified)
        ));
        // Without keys, whatever is presented is ignored.
        let open = Access::new(&GatewayConfig::default());
        assert!(matches!(
            open.identify(&headers(&[("x-api-key", "anything")]), false),
            Ok(Caller::Anonymous)
        ));
    }

    #[test]
    fn hello_tokens_must_match_the_upgrade() {
        let access = Access::new(&gateway(None, None));
        let key = access.keys.find(KEY.as_bytes()).unwrap();
        let admit = |caller: Caller| access.admit_upgrade(caller, local()).unwrap();
        let same = admit(Caller::Key(key.clone()))
            .after_hello(Some(KEY))
            .unwrap();
        assert_eq!(same.grant.key_name().map(|n| &**n), Some("dashboard"));
        assert!(same.connection.is_some());
        let code = |r: Result<Admitted, (u16, String)>| r.err().map(|e| e.0);
        assert_eq!(
            code(admit(Caller::Key(key.clone())).after_hello(Some(OTHER))),
            Some(4501)
        );
        assert_eq!(
            code(admit(Caller::Key(key.clone())).after_hello(Some("nope"))),
            Some(4501)
        );
        assert_eq!(
            code(admit(Caller::Unverified).after_hello(None)),
            Some(4501)
        );
        assert_eq!(
            code(admit(Caller::Unverified).after_hello(Some("nope"))),
            Some(4501)
        );
        let late = admit(Caller::Unverified).after_hello(Some(OTHER)).unwrap();
        assert_eq!(late.grant.key_name().map(|n| &**n), Some("ops"));
        assert!(late.grant.may_use("memory"));
        let anonymous = Access::new(&GatewayConfig::default());
        let open = anonymous
            .admit_upgrade(Caller::Anonymous, local())
            .unwrap()
            .after_hello(Some("ignored"))
            .unwrap();
        assert_eq!(open.grant.key_name(), None);
        assert!(open.grant.may_use("anything"));
    }

    #[test]
    fn max_connections_hold_at_the_upgrade_and_at_hello() {
        let access = Access::new(&gateway(Some(1), None));
        let key = access.keys.find(KEY.as_bytes()).unwrap();
        let first = access
            .admit_upgrade(Caller::Key(key.clone()), local())
            .unwrap()
            .after_hello(None)
            .unwrap();
        let refused = access
            .admit_upgrade(Caller::Key(key.clone()), local())
            .unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.to_string().contains("maxConnections"));
        let late = access
            .admit_upgrade(Caller::Unverified, local())
            .unwrap()
            .after_hello(Some(KEY));
        assert_eq!(late.err().map(|e| e.0), Some(4029));
        drop(first);
        assert!(
            access
                .admit_upgrade(Caller::Unverified, local())
                .unwrap()
                .after_hello(Some(KEY))
                .is_ok()
        );
    }

    #[test]
    fn pending_sockets_are_limited_until_hello() {
        let access = Access::new(&gateway(None, None));
        let a = access.admit_upgrade(Caller::Unverified, local()).unwrap();
        let _b = access.admit_upgrade(Caller::Unverified, local()).unwrap();
        assert_eq!(
            access.admit_upgrade(Caller::Unverified, local()).err(),
            Some(Refusal::TooManyPending(2))
        );
        let _done = a.after_hello(Some(KEY)).unwrap();
        assert!(access.admit_upgrade(Caller::Unverified, local()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn grants_limit_rate_and_close_after_a_streak() {
        let access = Access::new(&gateway(
            None,
            Some(Rate {
                per_second: 1.0,
                burst: 1,
            }),
        ));
        let mut grant = access
            .admit_upgrade(Caller::Unverified, local())
            .unwrap()
            .after_hello(Some(KEY))
            .unwrap()
            .grant;
        assert_eq!(grant.check_rate("everything"), Ok(()));
        let refused = grant.check_rate("everything").unwrap_err();
        assert_eq!(refused.retry_after_ms, 1000);
        assert!(
            refused
                .message
                .contains("API key \"dashboard\" is over its rate limit (1 per second, burst 1)"),
            "{}",
            refused.message
        );
        assert!(!refused.close);
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::advance(std::time::Duration::from_millis(300)).await;
            if let Err(refused) = grant.check_rate("everything") {
                closed |= refused.close;
            }
        }
        assert!(
            closed,
            "a connection sending 3 frames a second against 1 is closed"
        );
        let mut free = Grant::anonymous();
        assert!((0..1000).all(|_| free.check_rate("x").is_ok()));
    }

    #[test]
    fn exposure_needs_keys_or_allow_anonymous() {
        let mut config = GatewayConfig::default();
        let loopback = "127.0.0.1:7300".parse().unwrap();
        let all = "0.0.0.0:7300".parse().unwrap();
        assert!(check_exposure(&config, loopback).is_ok());
        assert!(check_exposure(&config, "[::1]:7300".parse().unwrap()).is_ok());
        let refused = check_exposure(&config, all).unwrap_err().to_string();
        assert!(
            refused.contains("apiKeys") && refused.contains("allowAnonymous"),
            "{refused}"
        );
        config.access.allow_anonymous = true;
        assert!(check_exposure(&config, all).is_ok());
        assert!(check_exposure(&gateway(None, None), all).is_ok());
    }
}
