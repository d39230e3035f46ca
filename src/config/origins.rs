//! The form of origins and host names: how `allowedOrigins` and `allowedHosts` entries
//! are checked and normalized, and how an origin is compared as browsers send it (lower
//! case, without the scheme's default port). The run-time policy uses the same functions.

/// An origin (`scheme://host[:port]`) in the form browsers send: lower case, without the
/// scheme's default port. `None` when `origin` is not one (a path, a wildcard, `null`).
pub fn normalize_origin(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || authority.is_empty() {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    if !host_ok {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when the port is not a number.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

pub(super) fn check_origin(origin: &str) -> Result<String, String> {
    const FORM: &str = "write an origin as a browser sends it: scheme://host[:port], e.g. \
                        \"https://app.example.org\" or \"http://localhost:5173\"";
    if origin == "null" {
        return Err(
            "\"null\" is the origin of sandboxed frames and local files, which any page \
                    can take on; it cannot be allowed"
                .into(),
        );
    }
    if origin.contains('*') {
        return Err(format!(
            "wildcards are not supported; list each origin. {FORM}"
        ));
    }
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "has more than an origin (a path, query or user); {FORM}"
        ));
    }
    normalize_origin(origin).ok_or_else(|| format!("\"{origin}\" is not an origin; {FORM}"))
}

pub(super) fn check_host_name(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.contains("://") || name.contains([':', '/']) {
        return Err(format!(
            "\"{host}\" is not a host name; write the name alone, without scheme or port \
             (e.g. \"mcp.example.org\")"
        ));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(
            "is an IP address, which needs no listing (IP addresses always pass); remove it".into(),
        );
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "\"{host}\" is not a host name; use letters, digits, '-' and dots (e.g. \"mcp.example.org\")"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized_as_browsers_send_them() {
        assert_eq!(
            normalize_origin("HTTPS://App.Example.org:443").as_deref(),
            Some("https://app.example.org")
        );
        assert_eq!(
            normalize_origin("http://localhost:80").as_deref(),
            Some("http://localhost")
        );
        assert_eq!(
            normalize_origin("http://localhost:5173").as_deref(),
            Some("http://localhost:5173")
        );
        assert_eq!(
            normalize_origin("http://[::1]:7300").as_deref(),
            Some("http://[::1]:7300")
        );
        assert_eq!(
            normalize_origin("https://example.org:80").as_deref(),
            Some("https://example.org:80")
        );
        assert_eq!(
            normalize_origin("chrome-extension://abcdef").as_deref(),
            Some("chrome-extension://abcdef")
        );
        for bad in [
            "null",
            "",
            "http://",
            "http://a b",
            "http://a:x",
            "http://a:",
            "://a",
            "http://[::1",
            "1http://a",
            "http://a:b:80",
            "http://[zz]:80",
            "http://[::1]x",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }
}
