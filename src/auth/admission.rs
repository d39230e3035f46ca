//! A socket between its upgrade and its `hello`, and what its session is granted after:
//! the key (from the upgrade, or the `token` in `hello`), its place among the key's
//! connections, the servers it may use, and its rate with the 4029 rule.
//!
//! The key is judged by the rules in force when `hello` arrives, and again whenever
//! they are replaced ([`Grant::refresh`]): a key removed meanwhile is revoked (4503).

use std::sync::Arc;

use super::keys::{ApiKey, ConnectionSlot};
use super::pending::PendingSlot;
use super::rate::Streak;
use super::{Access, Caller};
use crate::protocol::close_code;

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
    /// A socket of `caller`, holding its places among its key's connections and its
    /// address's pending sockets.
    pub(super) fn new(
        access: Arc<Access>,
        caller: Caller,
        connection: Option<ConnectionSlot>,
        pending: PendingSlot,
    ) -> Self {
        Self {
            access,
            caller,
            connection,
            _pending: pending,
        }
    }

    /// Decides on the `hello` `token`: a close code and reason when the socket must go.
    pub async fn after_hello(self, token: Option<&str>) -> Result<Admitted, (u16, String)> {
        let unauthorized = |why: &str| (close_code::UNAUTHORIZED, why.to_owned());
        let keys = self.access.keys();
        // The rules may have been replaced since the upgrade.
        let caller = match self.caller {
            Caller::Key(key) => match keys.same(&key) {
                Some(key) => Caller::Key(key),
                None => return Err(Revoked.close_reason()),
            },
            Caller::Anonymous if !keys.is_empty() => Caller::Unverified,
            Caller::Unverified if keys.is_empty() => Caller::Anonymous,
            caller => caller,
        };
        let found = token.map(|t| keys.find(t.as_bytes()));
        let (key, connection) = match (caller, found) {
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
                let Some(slot) = key.open_connection().await else {
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
                access: Some(self.access),
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
    /// The gateway's rules, to check the key again when they are replaced.
    access: Option<Arc<Access>>,
}

/// The key a session was opened with is no longer configured (or the gateway, which
/// took no keys, now does): its connections are closed with 4503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the API key of this connection was revoked")]
pub struct Revoked;

impl Revoked {
    /// The close code and reason of a revoked connection.
    pub fn close_reason(self) -> (u16, String) {
        (close_code::KEY_REVOKED, self.to_string())
    }
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

    /// Checks the grant against the rules in force after they were replaced: the key
    /// continues as its new entry (with its new servers and limits), or it is revoked
    /// when it is gone. A session without a key is revoked once the gateway takes keys;
    /// one with a key, once its key is no longer configured.
    pub fn refresh(&mut self) -> Result<(), Revoked> {
        let Some(access) = &self.access else {
            return Ok(());
        };
        let keys = access.keys();
        match &self.key {
            None if keys.is_empty() => Ok(()),
            None => Err(Revoked),
            Some(key) => {
                self.key = Some(keys.same(key).ok_or(Revoked)?);
                Ok(())
            }
        }
    }

    /// Takes a token for one `rpc` frame naming `server` from the key's buckets.
    pub async fn check_rate(&mut self, server: &str) -> Result<(), RateLimited> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let over = match key.check_rate(server).await {
            Ok(()) => return Ok(()),
            Err(over) => over,
        };
        let close = self.streak.refused(tokio::time::Instant::now());
        Err(RateLimited {
            retry_after_ms: over.retry_after_ms,
            message: over.message(&key.name),
            close,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::auth::Refusal;
    use crate::auth::fixtures::{KEY, OTHER, gateway};
    use crate::config::{GatewayConfig, Rate, ServerGrant};

    fn local() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[tokio::test]
    async fn hello_tokens_must_match_the_upgrade() {
        let access = Access::new(&gateway(None, None));
        let key = access.keys().find(KEY.as_bytes()).unwrap();
        let admit = async |caller: Caller| access.admit_upgrade(caller, local()).await.unwrap();
        let same = admit(Caller::Key(key.clone()))
            .await
            .after_hello(Some(KEY))
            .await
            .unwrap();
        assert_eq!(same.grant.key_name().map(|n| &**n), Some("dashboard"));
        assert!(same.connection.is_some());
        let code = |r: Result<Admitted, (u16, String)>| r.err().map(|e| e.0);
        assert_eq!(
            code(
                admit(Caller::Key(key.clone()))
                    .await
                    .after_hello(Some(OTHER))
                    .await
            ),
            Some(4501)
        );
        assert_eq!(
            code(
                admit(Caller::Key(key.clone()))
                    .await
                    .after_hello(Some("nope"))
                    .await
            ),
            Some(4501)
        );
        assert_eq!(
            code(admit(Caller::Unverified).await.after_hello(None).await),
            Some(4501)
        );
        assert_eq!(
            code(
                admit(Caller::Unverified)
                    .await
                    .after_hello(Some("nope"))
                    .await
            ),
            Some(4501)
        );
        let late = admit(Caller::Unverified)
            .await
            .after_hello(Some(OTHER))
            .await
            .unwrap();
        assert_eq!(late.grant.key_name().map(|n| &**n), Some("ops"));
        assert!(late.grant.may_use("memory"));
        let anonymous = Access::new(&GatewayConfig::default());
        let open = anonymous
            .admit_upgrade(Caller::Anonymous, local())
            .await
            .unwrap()
            .after_hello(Some("ignored"))
            .await
            .unwrap();
        assert_eq!(open.grant.key_name(), None);
        assert!(open.grant.may_use("anything"));
    }

    #[tokio::test]
    async fn max_connections_hold_at_the_upgrade_and_at_hello() {
        let access = Access::new(&gateway(Some(1), None));
        let key = access.keys().find(KEY.as_bytes()).unwrap();
        let first = access
            .admit_upgrade(Caller::Key(key.clone()), local())
            .await
            .unwrap()
            .after_hello(None)
            .await
            .unwrap();
        let refused = access
            .admit_upgrade(Caller::Key(key.clone()), local())
            .await
            .unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.to_string().contains("maxConnections"));
        let late = access
            .admit_upgrade(Caller::Unverified, local())
            .await
            .unwrap()
            .after_hello(Some(KEY))
            .await;
        assert_eq!(late.err().map(|e| e.0), Some(4029));
        drop(first);
        assert!(
            access
                .admit_upgrade(Caller::Unverified, local())
                .await
                .unwrap()
                .after_hello(Some(KEY))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn pending_sockets_are_limited_until_hello() {
        let access = Access::new(&gateway(None, None));
        let a = access
            .admit_upgrade(Caller::Unverified, local())
            .await
            .unwrap();
        let _b = access
            .admit_upgrade(Caller::Unverified, local())
            .await
            .unwrap();
        assert_eq!(
            access
                .admit_upgrade(Caller::Unverified, local())
                .await
                .err(),
            Some(Refusal::TooManyPending(2))
        );
        let _done = a.after_hello(Some(KEY)).await.unwrap();
        assert!(
            access
                .admit_upgrade(Caller::Unverified, local())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_reload_revokes_removed_keys_and_narrows_the_others() {
        let mut config = gateway(None, None);
        let access = Access::new(&config);
        let admit = async |token| {
            access
                .admit_upgrade(Caller::Unverified, local())
                .await
                .unwrap()
                .after_hello(Some(token))
                .await
                .unwrap()
                .grant
        };
        let (mut dashboard, mut ops) = (admit(KEY).await, admit(OTHER).await);
        // A key at the upgrade that is gone by hello: 4503.
        let ops_key = access.keys().find(OTHER.as_bytes()).unwrap();
        let early = access
            .admit_upgrade(Caller::Key(ops_key), local())
            .await
            .unwrap();
        config.access.api_keys.remove(1);
        config.access.api_keys[0].servers = ServerGrant::Only(["memory".to_owned()].into());
        access.replace(&config);
        assert_eq!(early.after_hello(None).await.err().map(|e| e.0), Some(4503));
        assert_eq!(ops.refresh(), Err(Revoked));
        assert_eq!(dashboard.refresh(), Ok(()));
        assert!(dashboard.may_use("memory") && !dashboard.may_use("everything"));
        // Keys configured where there were none: anonymous sessions are revoked.
        let open = Access::new(&GatewayConfig::default());
        let mut anonymous = open
            .admit_upgrade(Caller::Anonymous, local())
            .await
            .unwrap()
            .after_hello(None)
            .await
            .unwrap()
            .grant;
        assert_eq!(anonymous.refresh(), Ok(()));
        open.replace(&config);
        assert_eq!(anonymous.refresh(), Err(Revoked));
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
            .await
            .unwrap()
            .after_hello(Some(KEY))
            .await
            .unwrap()
            .grant;
        assert_eq!(grant.check_rate("everything").await, Ok(()));
        let refused = grant.check_rate("everything").await.unwrap_err();
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
            if let Err(refused) = grant.check_rate("everything").await {
                closed |= refused.close;
            }
        }
        assert!(
            closed,
            "a connection sending 3 frames a second against 1 is closed"
        );
        let mut free = Grant::anonymous();
        for _ in 0..1000 {
            assert!(free.check_rate("x").await.is_ok());
        }
    }
}
