//! The environment a stdio server's processes start with: the guard, mcp-proxy, and the
//! server under it (mcp-proxy passes its whole environment on to the server).
//!
//! It is minimal, as the official MCP SDKs make it: the variables of
//! [`DEFAULT_INHERITED_ENV`] that mcpmux has, those its entry names in `inheritEnv`, then
//! its `env`, then mcp-proxy's key ([`MCP_PROXY_KEY_VAR`]). Nothing else of mcpmux's
//! environment reaches a server, so a token meant for one remote server's headers does
//! not reach every third-party stdio server.

use std::ffi::OsString;

use crate::config::{DEFAULT_INHERITED_ENV, MCP_PROXY_KEY_VAR, StdioServer};

/// The whole environment of `server`'s processes; `lookup` reads mcpmux's own.
pub fn for_server(
    server: &StdioServer,
    api_key: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let inherited = DEFAULT_INHERITED_ENV
        .into_iter()
        .chain(server.inherit_env.iter().map(String::as_str))
        .filter(|name| !server.env.contains_key(*name))
        .filter_map(|name| Some((OsString::from(name), lookup(name)?)));
    let set = server
        .env
        .iter()
        .map(|(name, value)| (OsString::from(name), OsString::from(value)));
    let key = (OsString::from(MCP_PROXY_KEY_VAR), OsString::from(api_key));
    inherited.chain(set).chain([key]).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn server(env: &[(&str, &str)], inherit: &[&str]) -> StdioServer {
        StdioServer {
            command: "x".into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            inherit_env: inherit.iter().map(|s| s.to_string()).collect(),
            cwd: None,
        }
    }

    /// mcpmux's environment in these tests.
    fn lookup(name: &str) -> Option<OsString> {
        let value = match name {
            "HOME" => "/home/u",
            "PATH" => "/usr/bin:/bin",
            "USER" => "u",
            "LANG" => "C.UTF-8",
            "GITHUB_TOKEN" => "ghp_secret",
            _ => return None,
        };
        Some(value.into())
    }

    fn render(env: Vec<(OsString, OsString)>) -> Vec<String> {
        env.into_iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect()
    }

    #[test]
    fn only_the_minimal_set_and_the_key_by_default() {
        let env = render(for_server(&server(&[], &[]), "k3y", lookup));
        assert_eq!(
            env,
            [
                "HOME=/home/u",
                "PATH=/usr/bin:/bin",
                "USER=u",
                "MCP_PROXY_API_KEY=k3y"
            ]
        );
    }

    #[test]
    fn an_entry_inherits_what_it_names_and_sets_what_it_sets() {
        let spec = server(&[("PATH", "/opt/bin"), ("MODE", "x")], &["LANG", "NOT_SET"]);
        let env = render(for_server(&spec, "k3y", lookup));
        assert_eq!(
            env,
            [
                "HOME=/home/u",
                "USER=u",
                "LANG=C.UTF-8",
                "MODE=x",
                "PATH=/opt/bin",
                "MCP_PROXY_API_KEY=k3y"
            ]
        );
        assert!(!env.iter().any(|v| v.contains("ghp_secret")));
    }
}
