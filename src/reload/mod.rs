//! Changing the configuration while the gateway runs: validate first, then apply.
//!
//! A new configuration (the file re-read when it changes or on SIGHUP, or the file as
//! the admin API edits it) is checked as a whole before anything changes: it must
//! parse, must not leave the gateway without keys on an exposed address, and every
//! remote entry must be usable. An invalid one is rejected (one log line naming the
//! problem) and the running configuration stays. A valid one is applied in this order:
//! the access rules (keys, what each may use, origins, hosts; a connection whose key is
//! gone is closed with 4503), the admin key, then removed servers (stopped, `removed`),
//! changed servers (restarted: `restarting`, `ready`), added servers (`starting`,
//! `ready`). Unchanged servers are not touched. Settings read only at start (the listen
//! address, TLS, timeouts and limits) are logged as needing a restart.
//!
//! Changes are applied one at a time, under one lock; the starts and stops they cause
//! are waited for by the caller, outside it. An edit runs in a task of its own, so that
//! once begun it is written and applied whole even if its caller goes away (an admin
//! client that disconnects): the file never holds a change that is not in force.

mod edit;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;

pub use edit::EditError;
pub use watch::{DEBOUNCE, watch};

use crate::auth::{self, Access, AdminKey};
use crate::config::{Config, ConfigError};
use crate::fleet::{Fleet, FleetError, Starting, Stopping};
use crate::registry::Registry;

/// Why a configuration was not applied; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is not valid (the message names the file, the key and
    /// the fix).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It would serve without keys on an address other than loopback.
    #[error(transparent)]
    Exposed(#[from] auth::Exposed),
    /// A server in it could not be served.
    #[error(transparent)]
    Server(#[from] FleetError),
    /// mcpmux runs without a configuration file.
    #[error(
        "mcpmux runs without a configuration file (it was started without --config and without ./mcpmux.json), so there is none to re-read or edit"
    )]
    NoFile,
    /// The file as it is now is not valid, so it cannot be edited.
    #[error(
        "the configuration file is not valid as it is, so it cannot be edited; fix it first: {0}"
    )]
    FileInvalid(ConfigError),
    /// The file could not be read or written.
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// What a reload changed, and what it started and stopped.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Servers added.
    pub added: Vec<String>,
    /// Servers removed.
    pub removed: Vec<String>,
    /// Servers whose entry changed (restarted).
    pub changed: Vec<String>,
    /// True when the access rules were replaced.
    pub access_changed: bool,
    /// Settings that changed but take effect only when mcpmux restarts (`gateway.<key>`).
    pub restart_needed: Vec<String>,
    /// The start attempts under way, by server.
    pub starting: Vec<(String, Starting)>,
    /// The servers being stopped.
    pub stopping: Vec<(String, Stopping)>,
    /// Servers added or changed whose start could not begin, and why.
    pub failed: Vec<(String, FleetError)>,
}

impl Outcome {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.access_changed
            && self.restart_needed.is_empty()
    }

    /// One line for the log.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        if self.access_changed {
            parts.push("access rules replaced".into());
        }
        if parts.is_empty() {
            parts.push("no server changed".into());
        }
        parts.join("; ")
    }
}

/// How the configuration may change.
#[derive(Debug, Clone)]
pub struct Source {
    /// The configuration file; `None` when mcpmux runs without one (the demo, or an
    /// embedding program's configuration).
    pub path: Option<PathBuf>,
    /// Where the gateway listens: a configuration without keys must still not expose it.
    pub local_addr: SocketAddr,
    /// True when the listen address came from the command line, so that the file's is
    /// not a change.
    pub listen_fixed: bool,
}

/// The configuration in force and what runs it.
#[derive(Debug)]
struct Current {
    config: Config,
    /// The file's text it was read from, to tell a change from a touch.
    text: Option<String>,
    fleet: Fleet,
}

/// Applies configuration changes, one at a time.
#[derive(Debug)]
pub struct Reloader {
    current: Mutex<Current>,
    access: Arc<Access>,
    admin_key: Option<Arc<AdminKey>>,
    registry: Arc<Registry>,
    source: Source,
}

impl Reloader {
    /// In force: `config`, run by `fleet`, read from `source`.
    pub fn new(
        config: Config,
        fleet: Fleet,
        access: Arc<Access>,
        admin_key: Option<Arc<AdminKey>>,
        registry: Arc<Registry>,
        source: Source,
    ) -> Self {
        let text = source
            .path
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok());
        Self {
            current: Mutex::new(Current {
                config,
                text,
                fleet,
            }),
            access,
            admin_key,
            registry,
            source,
        }
    }

    /// The configuration in force.
    pub async fn config(&self) -> Config {
        self.current.lock().await.config.clone()
    }

    /// Reads the file again and applies it if it changed.
    pub async fn reload(&self) -> Result<Outcome, ReloadError> {
        let path = self.source.path.as_deref().ok_or(ReloadError::NoFile)?;
        let mut current = self.current.lock().await;
        let text = edit::read_off_thread(path).await?;
        if current.text.as_deref() == Some(text.as_str()) {
            return Ok(Outcome::default());
        }
        let config = Config::from_file_text(&text, path)?;
        self.apply(&mut current, config, text)
    }

    /// [`Reloader::reload`], logged: one line for what changed, one for a rejection.
    pub async fn reload_logged(&self, why: &str) {
        match self.reload().await {
            Ok(outcome) if outcome.is_empty() => {}
            Ok(outcome) => tracing::info!("{why}; configuration applied: {}", outcome.summary()),
            Err(err @ ReloadError::NoFile) => tracing::warn!("{why}: {err}"),
            Err(err) => tracing::error!(
                "{why}, but the new configuration was rejected; the running configuration stays: {err}"
            ),
        }
    }

    /// Puts `entry` (a configuration entry as written, `${VAR}` and all) in the file as
    /// server `name`, or takes it out (`None`), and applies the result. The file is
    /// written only once the result is known to be valid, and not at all when nothing
    /// would change. It runs in a task of its own: dropping the returned future does not
    /// stop it half-way.
    pub async fn edit_server(
        self: &Arc<Self>,
        name: &str,
        entry: Option<Value>,
    ) -> Result<Outcome, ReloadError> {
        let reloader = self.clone();
        let name = name.to_owned();
        let edit = tokio::spawn(async move { reloader.edit_server_now(&name, entry).await });
        match edit.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(ReloadError::Server(FleetError::ShuttingDown)),
        }
    }

    async fn edit_server_now(
        &self,
        name: &str,
        entry: Option<Value>,
    ) -> Result<Outcome, ReloadError> {
        let path = self.source.path.as_deref().ok_or(ReloadError::NoFile)?;
        let mut current = self.current.lock().await;
        let text = edit::read_off_thread(path).await?;
        Config::from_file_text(&text, path).map_err(ReloadError::FileInvalid)?;
        let as_written = edit::entry_as_written(&text, name) == entry;
        let edited = edit::with_server(&text, name, entry)?;
        let config = Config::from_file_text(&edited, path)?;
        let plan = self.plan(&current, config)?;
        // An entry that means the same but is written otherwise (a `${VAR}` for its
        // value, say) changes nothing running, but the file keeps it as written.
        if plan.is_empty() && as_written {
            return Ok(Outcome::default());
        }
        edit::write_off_thread(path, edited.clone()).await?;
        let outcome = self.execute(&mut current, plan, Some(edited));
        tracing::info!(server = %name, "the admin API changed the configuration: {}", outcome.summary());
        Ok(outcome)
    }

    /// Restarts server `name` with its current entry.
    pub async fn restart(&self, name: &str) -> Result<Starting, FleetError> {
        let mut current = self.current.lock().await;
        let starting = current.fleet.restart(name)?;
        tracing::info!(server = %name, "restarting at the admin API's request");
        Ok(starting)
    }

    /// Stops every server (waiting up to `wait`); nothing changes after this. A change
    /// being applied is waited for up to `wait` too; past that the servers are left to
    /// end with the process (a child is killed when its handle is dropped).
    pub async fn shutdown(&self, wait: Duration) {
        match tokio::time::timeout(wait, self.current.lock()).await {
            Ok(mut current) => current.fleet.shutdown(wait).await,
            Err(_) => tracing::warn!(
                "a configuration change was still being applied at shutdown; not waiting for it"
            ),
        }
    }

    fn apply(
        &self,
        current: &mut Current,
        config: Config,
        text: String,
    ) -> Result<Outcome, ReloadError> {
        let plan = self.plan(current, config)?;
        Ok(self.execute(current, plan, Some(text)))
    }

    /// Checks `new` against the configuration in force; changes nothing.
    fn plan(&self, current: &Current, new: Config) -> Result<Plan, ReloadError> {
        let old = &current.config;
        auth::check_exposure(&new.gateway, self.source.local_addr)?;
        for (name, entry) in &new.servers {
            if old.servers.get(name) != Some(entry) {
                current.fleet.check(name, entry)?;
            }
        }
        let mut restart_needed = old.gateway.changes_needing_restart(&new.gateway);
        if self.source.listen_fixed {
            restart_needed.retain(|key| key != "gateway.listen");
        }
        Ok(Plan {
            added: new
                .servers
                .keys()
                .filter(|name| !old.servers.contains_key(*name))
                .cloned()
                .collect(),
            removed: old
                .servers
                .keys()
                .filter(|name| !new.servers.contains_key(*name))
                .cloned()
                .collect(),
            changed: new
                .servers
                .iter()
                .filter(|(name, entry)| old.servers.get(*name).is_some_and(|e| e != *entry))
                .map(|(name, _)| name.clone())
                .collect(),
            access_changed: old.gateway.access != new.gateway.access,
            admin_key_changed: old.gateway.admin.as_ref().map(|a| &a.key)
                != new.gateway.admin.as_ref().map(|a| &a.key),
            restart_needed,
            config: new,
        })
    }

    /// Applies a checked plan.
    fn execute(&self, current: &mut Current, plan: Plan, text: Option<String>) -> Outcome {
        let Plan {
            added,
            removed,
            changed,
            access_changed,
            admin_key_changed,
            restart_needed,
            config,
        } = plan;
        if access_changed {
            self.access.replace(&config.gateway);
            self.registry.announce_access();
        }
        if let (true, Some(admin_key)) = (admin_key_changed, &self.admin_key) {
            match &config.gateway.admin {
                Some(admin) => admin_key.replace(&admin.key),
                None => {
                    admin_key.revoke();
                    tracing::warn!(
                        "gateway.admin was removed: the admin API accepts no key from now on; its listener itself closes only when mcpmux restarts"
                    );
                }
            }
        }
        let fleet = &mut current.fleet;
        let mut outcome = Outcome {
            access_changed,
            ..Outcome::default()
        };
        for name in removed {
            match fleet.remove(&name) {
                Ok(stopping) => outcome.stopping.push((name.clone(), stopping)),
                Err(err) => tracing::warn!(server = %name, %err, "cannot remove the server"),
            }
            outcome.removed.push(name);
        }
        let entries = changed
            .into_iter()
            .map(|name| (name, true))
            .chain(added.into_iter().map(|name| (name, false)));
        for (name, was_there) in entries {
            let Some(entry) = config.servers.get(&name).cloned() else {
                continue;
            };
            let started = match was_there {
                true => fleet.replace(&name, entry),
                false => fleet.add(&name, entry),
            };
            match started {
                Ok(starting) => outcome.starting.push((name.clone(), starting)),
                Err(err) => {
                    tracing::warn!(server = %name, %err, "cannot start the server");
                    outcome.failed.push((name.clone(), err));
                }
            }
            match was_there {
                true => outcome.changed.push(name),
                false => outcome.added.push(name),
            }
        }
        for key in &restart_needed {
            tracing::warn!(
                "{key} changed in the configuration; it takes effect when mcpmux restarts"
            );
        }
        outcome.restart_needed = restart_needed;
        current.config = config;
        if text.is_some() {
            current.text = text;
        }
        outcome
    }
}

/// A checked change from one configuration to another.
#[derive(Debug)]
struct Plan {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    access_changed: bool,
    admin_key_changed: bool,
    restart_needed: Vec<String>,
    config: Config,
}

impl Plan {
    /// True when applying it would change nothing.
    fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.access_changed
            && !self.admin_key_changed
            && self.restart_needed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::SupervisorConfig;

    const KEY: &str = "dashboard-key-0123456789";

    /// A folder with a configuration file of remote servers (nothing to spawn).
    struct Setup {
        dir: PathBuf,
        path: PathBuf,
        reloader: Arc<Reloader>,
        registry: Arc<Registry>,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn remote(port: u16) -> Value {
        serde_json::json!({"url": format!("http://127.0.0.1:{port}/mcp")})
    }

    fn setup(name: &str, text: &str, local_addr: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("mcpmux-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mcpmux.json");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let registry = Arc::new(Registry::new());
        let supervision = crate::fleet::tests::supervision();
        let mut fleet = Fleet::new(registry.clone(), supervision, reqwest::Client::new());
        for (name, entry) in &config.servers {
            fleet.add(name, entry.clone()).unwrap();
        }
        let access = Access::new(&config.gateway);
        let source = Source {
            path: Some(path.clone()),
            local_addr: local_addr.parse().unwrap(),
            listen_fixed: false,
        };
        let reloader = Arc::new(Reloader::new(
            config,
            fleet,
            access,
            None,
            registry.clone(),
            source,
        ));
        Setup {
            dir,
            path,
            reloader,
            registry,
        }
    }

    fn file(servers: Value, gateway: Value) -> String {
        serde_json::json!({"mcpServers": servers, "gateway": gateway}).to_string()
    }

    #[tokio::test]
    async fn only_what_changed_changes_and_start_only_settings_are_named() {
        let text = file(
            serde_json::json!({"a": remote(1), "b": remote(2)}),
            serde_json::json!({}),
        );
        let s = setup("diff", &text, "127.0.0.1:7300");
        let a = s.registry.get("a").unwrap();
        assert!(
            s.reloader.reload().await.unwrap().is_empty(),
            "untouched file"
        );
        let text = file(
            serde_json::json!({"a": remote(1), "b": remote(3), "c": remote(4)}),
            serde_json::json!({"listen": "127.0.0.1:7400", "helloTimeoutMs": 500}),
        );
        std::fs::write(&s.path, text).unwrap();
        let outcome = s.reloader.reload().await.unwrap();
        assert_eq!(
            (
                outcome.added.clone(),
                outcome.changed.clone(),
                outcome.removed.clone()
            ),
            (vec!["c".to_owned()], vec!["b".to_owned()], vec![])
        );
        assert!(!outcome.access_changed);
        assert_eq!(
            outcome.restart_needed,
            ["gateway.listen", "gateway.helloTimeoutMs"]
        );
        assert!(
            Arc::ptr_eq(&s.registry.get("a").unwrap(), &a),
            "a untouched"
        );
        assert_eq!(a.status().restarts, 0);
        assert_eq!(s.registry.get("b").unwrap().status().restarts, 1);
        let text = file(serde_json::json!({"c": remote(4)}), serde_json::json!({}));
        std::fs::write(&s.path, text).unwrap();
        let outcome = s.reloader.reload().await.unwrap();
        assert_eq!(outcome.removed, ["a", "b"]);
        assert!(a.is_removed());
    }

    #[tokio::test]
    async fn an_invalid_or_exposing_configuration_changes_nothing() {
        let keys = serde_json::json!({"apiKeys": [{"name": "d", "key": KEY, "servers": "*"}]});
        let text = file(serde_json::json!({"a": remote(1)}), keys.clone());
        let s = setup("invalid", &text, "0.0.0.0:7300");
        std::fs::write(&s.path, "{").unwrap();
        assert!(matches!(
            s.reloader.reload().await,
            Err(ReloadError::Config(ConfigError::Syntax { .. }))
        ));
        // Without keys on 0.0.0.0: refused.
        let open = file(
            serde_json::json!({"a": remote(1), "b": remote(2)}),
            serde_json::json!({}),
        );
        std::fs::write(&s.path, open).unwrap();
        assert!(matches!(
            s.reloader.reload().await,
            Err(ReloadError::Exposed(_))
        ));
        assert!(s.registry.get("b").is_none());
        let config = s.reloader.config().await;
        assert_eq!(config.gateway.access.api_keys.len(), 1);
        // An edit that would leave a key naming a removed server is refused, file untouched.
        let narrow = serde_json::json!({"apiKeys": [{"name": "d", "key": KEY, "servers": ["a"]}]});
        std::fs::write(
            &s.path,
            file(serde_json::json!({"a": remote(1), "b": remote(2)}), narrow),
        )
        .unwrap();
        s.reloader.reload().await.unwrap();
        let before = std::fs::read_to_string(&s.path).unwrap();
        let refused = s.reloader.edit_server("a", None).await;
        assert!(
            matches!(refused, Err(ReloadError::Config(_))),
            "{refused:?}"
        );
        assert_eq!(std::fs::read_to_string(&s.path).unwrap(), before);
        assert!(s.registry.get("a").is_some());
    }

    #[tokio::test]
    async fn edits_write_the_file_then_a_reload_of_it_is_no_change() {
        let text = file(serde_json::json!({"a": remote(1)}), serde_json::json!({}));
        let s = setup("edit", &text, "127.0.0.1:7300");
        let outcome = s.reloader.edit_server("b", Some(remote(2))).await.unwrap();
        assert_eq!(outcome.added, ["b"]);
        let (_, starting) = &outcome.starting[0];
        assert_eq!(
            starting.outcome().await.state,
            crate::protocol::ServerState::Ready
        );
        assert!(s.reloader.reload().await.unwrap().is_empty());
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&s.path).unwrap()).unwrap();
        assert_eq!(written["mcpServers"]["b"], remote(2));
        let outcome = s.reloader.edit_server("a", None).await.unwrap();
        assert_eq!(outcome.removed, ["a"]);
        let no_file = Arc::new(Reloader::new(
            s.reloader.config().await,
            Fleet::new(
                s.registry.clone(),
                SupervisorConfig {
                    mcp_proxy: vec![],
                    start_timeout: Duration::from_secs(1),
                    stop_grace: Duration::from_secs(1),
                    backoff_min: Duration::from_secs(1),
                    backoff_max: Duration::from_secs(1),
                    guard: None,
                    metrics: crate::metrics::Metrics::new(),
                },
                reqwest::Client::new(),
            ),
            Access::new(&Default::default()),
            None,
            s.registry.clone(),
            Source {
                path: None,
                local_addr: "127.0.0.1:1".parse().unwrap(),
                listen_fixed: false,
            },
        ));
        assert!(matches!(no_file.reload().await, Err(ReloadError::NoFile)));
        assert!(matches!(
            no_file.edit_server("x", None).await,
            Err(ReloadError::NoFile)
        ));
    }

    #[tokio::test]
    async fn an_edit_whose_caller_goes_away_is_written_and_applied_whole() {
        let text = file(serde_json::json!({"a": remote(1)}), serde_json::json!({}));
        let s = setup("cancel", &text, "127.0.0.1:7300");
        let mut changes = s.registry.subscribe();
        {
            let edit = std::pin::pin!(s.reloader.edit_server("b", Some(remote(2))));
            assert!(futures::poll!(edit).is_pending());
        }
        // Dropped after it began: it goes on to the end.
        loop {
            match changes.recv().await.unwrap() {
                crate::registry::Change::Status(c) if &*c.server == "b" => break,
                _ => {}
            }
        }
        assert!(s.registry.get("b").is_some(), "applied");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&s.path).unwrap()).unwrap();
        assert_eq!(written["mcpServers"]["b"], remote(2), "and written");
    }

    #[tokio::test]
    async fn an_edit_that_changes_nothing_does_not_write() {
        let text = file(serde_json::json!({"a": remote(1)}), serde_json::json!({}));
        let s = setup("same", &text, "127.0.0.1:7300");
        let outcome = s.reloader.edit_server("a", Some(remote(1))).await.unwrap();
        assert!(outcome.is_empty(), "{outcome:?}");
        assert_eq!(std::fs::read_to_string(&s.path).unwrap(), text, "untouched");
    }

    #[tokio::test]
    async fn an_entry_written_otherwise_is_kept_as_written() {
        let home = std::env::var("HOME").expect("HOME is set");
        let entry = |value: &str| serde_json::json!({"url": "http://127.0.0.1:1/mcp", "headers": {"X-Home": value}});
        let text = file(
            serde_json::json!({"a": entry(&home)}),
            serde_json::json!({}),
        );
        let s = setup("as-written", &text, "127.0.0.1:7300");
        let outcome = s
            .reloader
            .edit_server("a", Some(entry("${HOME}")))
            .await
            .unwrap();
        assert!(outcome.is_empty(), "nothing running changes: {outcome:?}");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&s.path).unwrap()).unwrap();
        assert_eq!(
            written["mcpServers"]["a"],
            entry("${HOME}"),
            "kept as written"
        );
    }
}
