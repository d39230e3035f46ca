//! The Origin and Host policy: which web pages may talk to the gateway, and which host
//! names it answers to without keys (against DNS rebinding).
//!
//! - A request with `Origin` passes only when that origin is in `allowedOrigins`, or is the
//!   gateway's own origin (its scheme and the request's `Host`, as a page the gateway serves
//!   itself sends). `Origin: null` never passes.
//! - A `Host` that is a domain name other than `localhost` (or a name under `.localhost`)
//!   and not in `allowedHosts` never counts as the gateway's own origin; without API keys,
//!   such a request is refused outright. IP literals are not names and pass.
//! - A request without `Origin` (a program, not a browser) is judged by its key alone.

use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue};

use super::Refusal;
use crate::config::{AccessConfig, normalize_origin, split_host_port};

/// The longest origin or host quoted back in a refusal.
const QUOTE_LIMIT: usize = 200;

/// The Origin and Host rules of one gateway.
#[derive(Debug)]
pub struct OriginPolicy {
    /// `allowedOrigins`, normalized.
    allowed_origins: Vec<String>,
    /// `allowedHosts`, lower case.
    allowed_hosts: Vec<String>,
    /// `http` or `https`: the scheme of the gateway's own pages.
    scheme: &'static str,
    /// True when API keys are configured: the key, not the Host, is then the gate.
    keys_configured: bool,
}

/// What `Host` says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// No `Host` header (not a browser).
    Absent,
    /// An IP literal, `localhost`, a name under `.localhost`, or a name in `allowedHosts`.
    Trusted,
    /// Any other name, or something that is not a host at all.
    Foreign,
}

impl OriginPolicy {
    /// The policy of `access`, for a gateway serving `https` (TLS) or `http`.
    pub fn new(access: &AccessConfig, tls: bool) -> Self {
        Self {
            allowed_origins: access.allowed_origins.clone(),
            allowed_hosts: access.allowed_hosts.clone(),
            scheme: if tls { "https" } else { "http" },
            keys_configured: !access.api_keys.is_empty(),
        }
    }

    /// Judges a request's `Origin` and `Host`. `Ok(Some(origin))`: a browser page from an
    /// allowed origin, to be echoed in CORS headers; `Ok(None)`: no `Origin`.
    pub fn judge(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Refusal> {
        let host = headers.get(HOST).map(HeaderValue::as_bytes);
        let host_kind = self.host_kind(host);
        if host_kind == HostKind::Foreign && !self.keys_configured {
            let host = String::from_utf8_lossy(host.unwrap_or_default());
            return Err(Refusal::ForeignHost(quote(&host)));
        }
        let mut origins = headers.get_all(ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return Ok(None);
        };
        if origins.next().is_some() {
            return Err(Refusal::MalformedOrigin);
        }
        let text = origin.to_str().map_err(|_| Refusal::MalformedOrigin)?;
        if text == "null" {
            return Err(Refusal::NullOrigin);
        }
        let normalized = normalize_origin(text).ok_or(Refusal::MalformedOrigin)?;
        if self.allowed_origins.contains(&normalized) || self.is_own(&normalized, host, host_kind) {
            return Ok(Some(origin.clone()));
        }
        Err(Refusal::ForeignOrigin(quote(text)))
    }

    /// True when `origin` is the gateway's own, as a page it served would send it.
    fn is_own(&self, origin: &str, host: Option<&[u8]>, kind: HostKind) -> bool {
        let Some(host) = host.filter(|_| kind == HostKind::Trusted) else {
            return false;
        };
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        normalize_origin(&format!("{}://{host}", self.scheme)).as_deref() == Some(origin)
    }

    fn host_kind(&self, host: Option<&[u8]>) -> HostKind {
        let Some(host) = host else {
            return HostKind::Absent;
        };
        let Some((name, _port)) = std::str::from_utf8(host).ok().and_then(split_host_port) else {
            return HostKind::Foreign;
        };
        if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return match v6.parse::<std::net::Ipv6Addr>() {
                Ok(_) => HostKind::Trusted,
                Err(_) => HostKind::Foreign,
            };
        }
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return HostKind::Trusted;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let local = name == "localhost" || name.ends_with(".localhost");
        if local || self.allowed_hosts.contains(&name) {
            HostKind::Trusted
        } else {
            HostKind::Foreign
        }
    }
}

/// `text` as it may be quoted back: printable ASCII, at most [`QUOTE_LIMIT`] characters.
fn quote(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(QUOTE_LIMIT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, KeyMaterial, Secret, ServerGrant};

    fn policy(origins: &[&str], hosts: &[&str], keys: bool, tls: bool) -> OriginPolicy {
        let api_keys = if keys {
            vec![ApiKeyConfig {
                name: "k".into(),
                key: KeyMaterial::Plain(Secret::new("kkkkkkkkkkkkkkkkkkkk")),
                servers: ServerGrant::All,
                rate_limit: None,
                max_connections: None,
            }]
        } else {
            vec![]
        };
        let access = AccessConfig {
            api_keys,
            allowed_origins: origins.iter().filter_map(|o| normalize_origin(o)).collect(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allow_anonymous: false,
        };
        OriginPolicy::new(&access, tls)
    }

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(HOST, host.parse().unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    fn judge(
        policy: &OriginPolicy,
        host: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        policy
            .judge(&headers(host, origin))
            .map(|o| o.map(|v| v.to_str().unwrap().to_owned()))
    }

    #[test]
    fn programs_without_origin_pass_on_loopback() {
        let p = policy(&[], &[], false, false);
        for host in [
            None,
            Some("127.0.0.1:7300"),
            Some("localhost:7300"),
            Some("[::1]:7300"),
            Some("app.localhost"),
            Some("10.1.2.3"),
        ] {
            assert_eq!(judge(&p, host, None), Ok(None), "{host:?}");
        }
    }

    #[test]
    fn foreign_origins_and_null_are_refused() {
        let p = policy(&["http://localhost:5173"], &[], false, false);
        let host = Some("127.0.0.1:7300");
        assert_eq!(
            judge(&p, host, Some("http://evil.example")),
            Err(Refusal::ForeignOrigin("http://evil.example".into()))
        );
        assert_eq!(judge(&p, host, Some("null")), Err(Refusal::NullOrigin));
        assert_eq!(
            judge(&p, host, Some("not an origin")),
            Err(Refusal::MalformedOrigin)
        );
        // No prefix or suffix tricks.
        for tricky in [
            "http://localhost:51730",
            "http://localhost:5173.evil.example",
            "http://evil.localhost:5173",
            "https://localhost:5173",
            "http://localhost",
        ] {
            assert!(judge(&p, host, Some(tricky)).is_err(), "{tricky}");
        }
        assert_eq!(
            judge(&p, host, Some("http://LOCALHOST:5173")),
            Ok(Some("http://LOCALHOST:5173".into()))
        );
    }

    #[test]
    fn two_origin_headers_are_refused() {
        let p = policy(&["http://a.example"], &[], false, false);
        let mut h = headers(Some("127.0.0.1"), Some("http://a.example"));
        h.append(ORIGIN, "http://evil.example".parse().unwrap());
        assert_eq!(p.judge(&h), Err(Refusal::MalformedOrigin));
    }

    #[test]
    fn the_gateways_own_origin_passes_with_a_trusted_host() {
        let p = policy(&[], &[], false, false);
        for (host, origin) in [
            ("127.0.0.1:7300", "http://127.0.0.1:7300"),
            ("localhost:7300", "http://localhost:7300"),
            ("[::1]:7300", "http://[::1]:7300"),
            ("127.0.0.1", "http://127.0.0.1:80"),
        ] {
            assert!(
                judge(&p, Some(host), Some(origin)).unwrap().is_some(),
                "{origin}"
            );
        }
        // Another port of the same host is another origin.
        assert!(judge(&p, Some("127.0.0.1:7300"), Some("http://127.0.0.1:7301")).is_err());
        // Over TLS the own origin is https.
        let tls = policy(&[], &[], false, true);
        assert!(
            judge(&tls, Some("localhost:7300"), Some("https://localhost:7300"))
                .unwrap()
                .is_some()
        );
        assert!(judge(&tls, Some("localhost:7300"), Some("http://localhost:7300")).is_err());
    }

    #[test]
    fn rebinding_hosts_are_refused_without_keys() {
        let p = policy(&[], &["mcp.example.org"], false, false);
        assert_eq!(
            judge(&p, Some("evil.example:7300"), None),
            Err(Refusal::ForeignHost("evil.example:7300".into()))
        );
        // Even with what would be its own origin.
        assert!(
            judge(
                &p,
                Some("evil.example:7300"),
                Some("http://evil.example:7300")
            )
            .is_err()
        );
        assert_eq!(judge(&p, Some("MCP.example.org."), None), Ok(None));
        assert!(
            judge(
                &p,
                Some("mcp.example.org:7300"),
                Some("http://mcp.example.org:7300")
            )
            .unwrap()
            .is_some()
        );
        assert!(judge(&p, Some("bad host"), None).is_err());
        assert!(judge(&p, Some("[not-v6]:1"), None).is_err());
    }

    #[test]
    fn with_keys_a_foreign_host_is_left_to_the_key_but_is_never_the_own_origin() {
        let p = policy(&[], &[], true, false);
        assert_eq!(judge(&p, Some("evil.example:7300"), None), Ok(None));
        assert_eq!(
            judge(
                &p,
                Some("evil.example:7300"),
                Some("http://evil.example:7300")
            ),
            Err(Refusal::ForeignOrigin("http://evil.example:7300".into()))
        );
    }

    #[test]
    fn quoted_values_are_printable_and_short() {
        assert_eq!(quote("a\u{7}b\u{e9}c"), "abc");
        assert_eq!(quote(&"x".repeat(1000)).len(), QUOTE_LIMIT);
    }
}
