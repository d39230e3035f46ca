//! What may be shown of values that carry secrets, in error texts, logs and
//! `check-config`.
//!
//! A server's URL may hold credentials in its userinfo (`https://user:pass@host`) or its
//! query (`?key=...`), often put there through `${NAME}`; its header values are secrets
//! by definition. [`url`] shows a URL without userinfo, query or fragment; a
//! [`Scrubber`] masks the secrets of one endpoint wherever they appear in a text that
//! came from elsewhere (an upstream's error body that echoes the request, say).

use reqwest::header::HeaderMap;

/// What stands in place of a removed secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are not masked in free text: they would mask ordinary words
/// and numbers, and protect nothing.
const MIN_SCRUBBED_LEN: usize = 4;

/// `url` for showing: userinfo, query and fragment replaced by [`MASK`], the rest
/// (scheme, host, port, path) kept. Works on any text, URL or not.
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(path_start);
    let host = match authority.rfind('@') {
        Some(at) => format!("{MASK}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let (path, hidden) = match tail.find(['?', '#']) {
        Some(i) => (&tail[..i], Some(&tail[i..i + 1])),
        None => (tail, None),
    };
    let hidden = hidden.map_or_else(String::new, |mark| format!("{mark}{MASK}"));
    format!("{scheme}{host}{path}{hidden}")
}

/// The secrets of one endpoint, to mask in texts that may repeat them.
#[derive(Debug, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// The secrets of an endpoint: its URL's userinfo and query (whole and each value,
    /// raw and decoded), and every header value.
    pub fn new(url: &reqwest::Url, headers: &HeaderMap) -> Self {
        let mut scrubber = Self::default();
        scrubber.add(url.username());
        if let Some(password) = url.password() {
            scrubber.add(password);
        }
        if let Some(query) = url.query() {
            scrubber.add(query);
            for pair in query.split('&') {
                scrubber.add(pair.split_once('=').map_or(pair, |(_, value)| value));
            }
            for (_, value) in url.query_pairs() {
                scrubber.add(&value);
            }
        }
        for value in headers.values() {
            if let Ok(value) = value.to_str() {
                scrubber.add(value);
                // `Bearer TOKEN`: the token alone may be echoed too.
                if let Some((_, token)) = value.split_once(' ') {
                    scrubber.add(token.trim());
                }
            }
        }
        // Longest first, so that a secret containing another is masked whole.
        scrubber
            .secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        scrubber.secrets.dedup();
        scrubber
    }

    fn add(&mut self, secret: &str) {
        if secret.len() >= MIN_SCRUBBED_LEN {
            self.secrets.push(secret.to_owned());
        }
    }

    /// The length of the longest secret (0 without any).
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), MASK);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn url_hides_userinfo_query_and_fragment() {
        let cases = [
            ("https://example.org/mcp", "https://example.org/mcp"),
            (
                "https://user:pass@example.org:8443/mcp?key=SECRET&x=1#frag",
                "https://***@example.org:8443/mcp?***",
            ),
            ("http://h/p#SECRET", "http://h/p#***"),
            ("http://tok@h", "http://***@h"),
            ("http://h?SECRET", "http://h?***"),
            ("http://[::1]:3000/a/b", "http://[::1]:3000/a/b"),
            // A path may hold an @ that is not userinfo.
            ("http://h/@me?k=v", "http://h/@me?***"),
            ("not a url?k=SECRET", "not a url?***"),
            ("", ""),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn scrubber_masks_every_secret_of_an_endpoint() {
        let endpoint: reqwest::Url = "http://alice:hunter22@h/mcp?key=SECRET%2Fx&v=1"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer tok-123"));
        headers.insert("x-api-key", HeaderValue::from_static("k3y-value"));
        let scrubber = Scrubber::new(&endpoint, &headers);
        let echoed = "GET /mcp?key=SECRET%2Fx&v=1 as alice:hunter22 with Bearer tok-123, \
                      token tok-123, key k3y-value, decoded SECRET/x, version 1";
        let shown = scrubber.scrub(echoed);
        for secret in ["SECRET", "alice", "hunter22", "tok-123", "k3y-value"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // Short values are left alone: they are not secrets worth masking.
        assert!(shown.ends_with("version 1"), "{shown}");
    }
}
