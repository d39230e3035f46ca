//! The web console: the page at `GET /` and its assets, compiled into the binary.
//!
//! The console is plain HTML, CSS and ES modules from `console/`, built on the TypeScript
//! client's committed ESM build (`clients/typescript/dist/`), so a fresh clone serves it
//! with no JavaScript build step. Every asset is answered with its content type, an
//! `ETag` (a hash of its bytes, computed at compile time) so that a reload costs a `304`,
//! `Cache-Control: no-cache` so that a new binary is never hidden behind a stale copy, and
//! a Content-Security-Policy that lets the page load only its own scripts and styles and
//! connect only to its own origin (`'self'`, which covers `ws:`/`wss:` of the same host
//! and port: it talks to the gateway that served it, at `/ws`), with Trusted Types
//! required, so that no string can become HTML or script.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The policy of every console response: own scripts and styles only, no inline code,
/// connections to its own origin only, no HTML or script made from strings (Trusted
/// Types, with no policy that could make them), no framing, no form submissions (forms
/// are handled by the page's script, so a key typed into one can never end up in a URL).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// One file of the console, served at `path`.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes, as compiled in.
    pub body: &'static [u8],
    /// A hash of `body`, the `ETag`.
    pub hash: u64,
}

const fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
        hash: fnv1a(body),
    }
}

/// Every console asset. The client library's files keep their names under
/// `/console/mcpmux/`, so its modules import one another unchanged.
pub static ASSETS: &[Asset] = &[
    asset("/", HTML, include_bytes!("../console/index.html")),
    asset(
        "/console/console.css",
        CSS,
        include_bytes!("../console/console.css"),
    ),
    asset("/console/app.js", JS, include_bytes!("../console/app.js")),
    asset("/console/dom.js", JS, include_bytes!("../console/dom.js")),
    asset(
        "/console/schema-form.js",
        JS,
        include_bytes!("../console/schema-form.js"),
    ),
    asset(
        "/console/stream.js",
        JS,
        include_bytes!("../console/stream.js"),
    ),
    asset(
        "/console/views.js",
        JS,
        include_bytes!("../console/views.js"),
    ),
    asset(
        "/console/icon.svg",
        SVG,
        include_bytes!("../console/icon.svg"),
    ),
    asset(
        "/console/mcpmux/index.js",
        JS,
        include_bytes!("../clients/typescript/dist/index.js"),
    ),
    asset(
        "/console/mcpmux/connection.js",
        JS,
        include_bytes!("../clients/typescript/dist/connection.js"),
    ),
    asset(
        "/console/mcpmux/errors.js",
        JS,
        include_bytes!("../clients/typescript/dist/errors.js"),
    ),
    asset(
        "/console/mcpmux/events.js",
        JS,
        include_bytes!("../clients/typescript/dist/events.js"),
    ),
    asset(
        "/console/mcpmux/mux.js",
        JS,
        include_bytes!("../clients/typescript/dist/mux.js"),
    ),
    asset(
        "/console/mcpmux/server.js",
        JS,
        include_bytes!("../clients/typescript/dist/server.js"),
    ),
    asset(
        "/console/mcpmux/timing.js",
        JS,
        include_bytes!("../clients/typescript/dist/timing.js"),
    ),
    asset(
        "/console/mcpmux/transport.js",
        JS,
        include_bytes!("../clients/typescript/dist/transport.js"),
    ),
    asset(
        "/console/mcpmux/wire.js",
        JS,
        include_bytes!("../clients/typescript/dist/wire.js"),
    ),
];

/// The console's address for a gateway listening on `addr` (over TLS when `secure`): a
/// wildcard address (`0.0.0.0`, `::`) is shown as loopback, which a browser on this
/// machine can open.
pub fn url(addr: SocketAddr, secure: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if secure { "https" } else { "http" };
    format!("{scheme}://{}/", SocketAddr::new(ip, addr.port()))
}

/// The routes that serve [`ASSETS`]; merged into the gateway's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

/// Answers one request for `asset`: `304` when the client's copy is current.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

/// 64-bit FNV-1a, in a `const fn` so that every asset's `ETag` is fixed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_path_and_a_body() {
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len(), "duplicate asset paths");
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }

    #[test]
    fn every_module_the_page_loads_is_served() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("utf-8 page");
        for reference in page
            .split(['"', '\''])
            .filter(|s| s.starts_with("/console/"))
        {
            assert!(
                ASSETS.iter().any(|a| a.path == reference),
                "index.html refers to {reference}, which is not served"
            );
        }
    }

    #[test]
    fn every_module_of_the_client_library_is_served() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript/dist");
        let entries = std::fs::read_dir(&dist).expect("clients/typescript/dist is committed");
        for entry in entries {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".js") {
                let path = format!("/console/mcpmux/{name}");
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "clients/typescript/dist/{name} is not served: add it to ASSETS in src/console.rs"
                );
            }
        }
    }

    #[test]
    fn a_matching_etag_gets_not_modified() {
        let asset = &ASSETS[0];
        let etag = format!("\"{:016x}\"", asset.hash);
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/{etag}")).expect("header"),
        );
        assert_eq!(serve(asset, &request).status(), StatusCode::NOT_MODIFIED);
        let full = serve(asset, &HeaderMap::new());
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(full.headers()[header::CONTENT_TYPE], HTML);
        assert_eq!(full.headers()[header::ETAG], etag.as_str());
    }

    #[test]
    fn the_url_of_a_wildcard_listener_is_loopback() {
        let at = |s: &str| url(s.parse().expect("address"), false);
        assert_eq!(at("127.0.0.1:7300"), "http://127.0.0.1:7300/");
        assert_eq!(at("0.0.0.0:7300"), "http://127.0.0.1:7300/");
        assert_eq!(at("[::]:80"), "http://[::1]:80/");
        assert_eq!(at("[::1]:7300"), "http://[::1]:7300/");
        let tls = url("127.0.0.1:443".parse().expect("address"), true);
        assert_eq!(tls, "https://127.0.0.1:443/");
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
