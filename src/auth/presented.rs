//! Finding the key a request presents: `Authorization: Bearer KEY`, `X-API-Key: KEY`, or
//! (on the WebSocket upgrade, where browsers cannot set headers) the subprotocol
//! `mcpmux.bearer.<KEY in base64url>`. The `hello` frame's `token` is read by the
//! connection; see [`super::Admission`].

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

use super::Refusal;

/// The subprotocol prefix that carries a key.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "mcpmux.bearer.";
/// The header that carries a key on its own.
pub const API_KEY_HEADER: &str = "x-api-key";

/// base64url, padded or not.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key as a client presented it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey(Vec<u8>);

impl PresentedKey {
    /// The key's bytes, for the key ring.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for PresentedKey {
    fn from(key: &str) -> Self {
        Self(key.as_bytes().to_vec())
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresentedKey(***)")
    }
}

/// The key `headers` present, if any: in `Authorization: Bearer`, in `X-API-Key`, and, when
/// `subprotocols` is true, in a `mcpmux.bearer.` subprotocol. Several places may carry the
/// same key; different keys, or a bearer subprotocol that is not base64url, are refused.
pub fn presented_key(
    headers: &HeaderMap,
    subprotocols: bool,
) -> Result<Option<PresentedKey>, Refusal> {
    let mut found: Option<PresentedKey> = None;
    let mut add = |key: PresentedKey| match &found {
        Some(earlier) if *earlier != key => Err(Refusal::ConflictingKeys),
        _ => {
            found = Some(key);
            Ok(())
        }
    };
    for value in headers.get_all(AUTHORIZATION) {
        let value = value.as_bytes();
        // `Bearer` is case-insensitive; other schemes are not for mcpmux.
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            let key = value[7..].trim_ascii();
            if !key.is_empty() {
                add(PresentedKey(key.to_vec()))?;
            }
        }
    }
    for value in headers.get_all(API_KEY_HEADER) {
        let key = value.as_bytes().trim_ascii();
        if !key.is_empty() {
            add(PresentedKey(key.to_vec()))?;
        }
    }
    if subprotocols {
        for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
            let offered = value
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii);
            for protocol in offered {
                if let Some(encoded) = protocol.strip_prefix(BEARER_SUBPROTOCOL_PREFIX.as_bytes()) {
                    let key = BASE64URL
                        .decode(encoded)
                        .map_err(|_| Refusal::MalformedBearerSubprotocol)?;
                    add(PresentedKey(key))?;
                }
            }
        }
    }
    Ok(found)
}

/// The subprotocol that carries `key` (for clients and tests).
pub fn bearer_subprotocol(key: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    format!("{BEARER_SUBPROTOCOL_PREFIX}{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn key(pairs: &[(&str, &str)], subprotocols: bool) -> Result<Option<Vec<u8>>, Refusal> {
        presented_key(&headers(pairs), subprotocols).map(|k| k.map(|k| k.0))
    }

    #[test]
    fn each_place_carries_a_key() {
        let k = Some(b"secret-key".to_vec());
        assert_eq!(
            key(&[("authorization", "Bearer secret-key")], false),
            Ok(k.clone())
        );
        assert_eq!(
            key(&[("authorization", "bearer   secret-key ")], false),
            Ok(k.clone())
        );
        assert_eq!(key(&[("x-api-key", "secret-key")], false), Ok(k.clone()));
        let protocols = format!("mcpmux.v1, {}", bearer_subprotocol("secret-key"));
        assert_eq!(
            key(&[("sec-websocket-protocol", &protocols)], true),
            Ok(k.clone())
        );
        // Padded base64url is read too.
        let padded = "mcpmux.v1, mcpmux.bearer.c2VjcmV0LWtleQ==";
        assert_eq!(key(&[("sec-websocket-protocol", padded)], true), Ok(k));
    }

    #[test]
    fn absent_or_foreign_forms_present_nothing() {
        assert_eq!(key(&[], true), Ok(None));
        assert_eq!(
            key(&[("authorization", "Basic dXNlcjpwYXNz")], true),
            Ok(None)
        );
        assert_eq!(key(&[("authorization", "Bearer ")], true), Ok(None));
        assert_eq!(
            key(&[("sec-websocket-protocol", "mcpmux.v1")], true),
            Ok(None)
        );
        // Subprotocols count only on the WebSocket upgrade.
        let protocols = bearer_subprotocol("secret-key");
        assert_eq!(
            key(&[("sec-websocket-protocol", &protocols)], false),
            Ok(None)
        );
    }

    #[test]
    fn the_same_key_twice_is_fine_and_two_keys_are_refused() {
        let same = [("authorization", "Bearer k1"), ("x-api-key", "k1")];
        assert_eq!(key(&same, true), Ok(Some(b"k1".to_vec())));
        let two = [("authorization", "Bearer k1"), ("x-api-key", "k2")];
        assert_eq!(key(&two, true), Err(Refusal::ConflictingKeys));
        let protocols = format!("mcpmux.v1, {}", bearer_subprotocol("k2"));
        let mixed = [
            ("x-api-key", "k1"),
            ("sec-websocket-protocol", protocols.as_str()),
        ];
        assert_eq!(key(&mixed, true), Err(Refusal::ConflictingKeys));
    }

    #[test]
    fn a_bearer_subprotocol_that_is_not_base64url_is_refused() {
        let bad = [("sec-websocket-protocol", "mcpmux.v1, mcpmux.bearer.a+b/")];
        assert_eq!(key(&bad, true), Err(Refusal::MalformedBearerSubprotocol));
    }

    #[test]
    fn debug_masks_the_key() {
        assert_eq!(
            format!("{:?}", PresentedKey::from("secret-key")),
            "PresentedKey(***)"
        );
    }
}
