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
//!
//! The MCP routes over HTTP (`crate::routes`) take the [`Caller`] from step 1, and check
//! [`Caller::may_use`], [`ApiKey::check_rate`] and [`ApiKey::open_connection`] themselves.
//!
//! The admin API has a key of its own ([`AdminKey`]) and no other check.
//!
//! The keys and the Origin and Host policy are replaced as a whole when the
//! configuration is reloaded ([`Access::replace`]); every check reads the rules in force.
//! A session's grant is then checked again ([`Grant::refresh`]): a key that is gone
//! closes its connections with 4503.

mod admin_key;
mod admission;
mod cors;
mod gate;
mod keys;
mod origin;
mod pending;
mod presented;
mod rate;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

pub use admin_key::AdminKey;
pub use admission::{Admission, Admitted, Grant, RateLimited, Revoked};
pub use cors::MCP_PARAM_PREFIX;
pub use gate::{Route, gate, refuse};
pub use keys::{ApiKey, ConnectionSlot, Eviction, HeldSlot, KeyRing};
pub use origin::OriginPolicy;
pub use pending::{PendingPerIp, PendingSlot};
pub use presented::{
    API_KEY_HEADER, BEARER_SUBPROTOCOL_PREFIX, PresentedKey, bearer_subprotocol, presented_key,
};
pub use rate::{OverLimit, STREAK_LIMIT, STREAK_PAUSE, Streak};

use crate::config::GatewayConfig;
use crate::store::Store;

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

/// The rules in force: the keys and the Origin and Host policy.
#[derive(Debug)]
struct Rules {
    keys: Arc<KeyRing>,
    origins: Arc<OriginPolicy>,
}

/// The access rules of one gateway, shared by every request; replaced as a whole when
/// the configuration is reloaded.
#[derive(Debug)]
pub struct Access {
    rules: RwLock<Rules>,
    /// Serves HTTPS: the gateway's own origin is `https`. Fixed for the process.
    tls: bool,
    pending: Arc<PendingPerIp>,
    /// Where the keys' rate buckets and connection counts live.
    store: Store,
}

impl Access {
    /// The rules of `config`, the keys' limits in this instance's memory.
    pub fn new(config: &GatewayConfig) -> Arc<Self> {
        Self::with_store(config, Store::memory(config.instance.clone()))
    }

    /// The rules of `config`, the keys' limits in `store`.
    pub(crate) fn with_store(config: &GatewayConfig, store: Store) -> Arc<Self> {
        let tls = config.tls.is_some();
        Arc::new(Self {
            rules: RwLock::new(Rules {
                keys: Arc::new(KeyRing::new(&config.access.api_keys, &store)),
                origins: Arc::new(OriginPolicy::new(&config.access, tls)),
            }),
            tls,
            pending: PendingPerIp::new(config.max_pending_per_ip),
            store,
        })
    }

    /// Puts the access rules of `config` in force at once: its keys (a key that is
    /// the same as before keeps its counts, [`KeyRing::after`]), origins and hosts.
    pub fn replace(&self, config: &GatewayConfig) {
        let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
        let keys = KeyRing::after(&config.access.api_keys, &rules.keys, &self.store);
        *rules = Rules {
            keys: Arc::new(keys),
            origins: Arc::new(OriginPolicy::new(&config.access, self.tls)),
        };
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured keys.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.read().keys.clone()
    }

    /// True when API keys are configured.
    pub fn takes_keys(&self) -> bool {
        !self.read().keys.is_empty()
    }

    /// The Origin and Host policy.
    pub fn origins(&self) -> Arc<OriginPolicy> {
        self.read().origins.clone()
    }

    /// The caller a request's presented key (if any) makes it. `websocket`: the request is
    /// the upgrade, which may defer its key to `hello` and may carry it as a subprotocol.
    pub fn identify(
        &self,
        headers: &axum::http::HeaderMap,
        websocket: bool,
    ) -> Result<Caller, Refusal> {
        let keys = self.keys();
        if keys.is_empty() {
            // A key presented to a gateway without keys is ignored.
            return Ok(Caller::Anonymous);
        }
        match presented_key(headers, websocket)? {
            Some(presented) => keys
                .find(presented.bytes())
                .map(Caller::Key)
                .ok_or(Refusal::WrongKey),
            None if websocket => Ok(Caller::Unverified),
            None => Err(Refusal::MissingKey),
        }
    }

    /// Admits a WebSocket upgrade from `peer`: counts it against its key's `maxConnections`
    /// and against the address's `maxPendingPerIp` until `hello` is done.
    pub async fn admit_upgrade(
        self: &Arc<Self>,
        caller: Caller,
        peer: IpAddr,
    ) -> Result<Admission, Refusal> {
        // The address's pending sockets first: it costs no call to the store.
        let pending = self
            .pending
            .enter(peer)
            .ok_or(Refusal::TooManyPending(self.pending.limit()))?;
        let connection =
            match &caller {
                Caller::Key(key) => Some(key.open_connection().await.ok_or_else(|| {
                    Refusal::TooManyConnections {
                        key: key.name.clone(),
                        max: key.max_connections().unwrap_or(0),
                    }
                })?),
                Caller::Anonymous | Caller::Unverified => None,
            };
        Ok(Admission::new(self.clone(), caller, connection, pending))
    }
}

/// The keys and configuration the unit tests of this module's parts share.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::config::{
        ApiKeyConfig, GatewayConfig, KeyMaterial, Rate, RateLimitConfig, Secret, ServerGrant,
    };

    pub(crate) const KEY: &str = "dashboard-key-0123456789";
    pub(crate) const OTHER: &str = "ops-key-abcdefghijklmnop";

    /// Two keys: `dashboard` (one server, optional limits) and `ops` (every server).
    pub(crate) fn gateway(max_connections: Option<usize>, rate: Option<Rate>) -> GatewayConfig {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::{KEY, gateway};
    use super::*;

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
