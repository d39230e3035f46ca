//! The configuration file as the admin API edits it: the JSON as written, with its
//! `${VAR}` references and its key order, one `mcpServers` entry put or taken out, and
//! the result written atomically (a temporary file beside it, renamed over it), so that
//! a reader never sees half a file and the file stays the one source of truth.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file's text is not a JSON object with an `mcpServers` object.
    #[error("the configuration file has no \"mcpServers\" object to edit")]
    NoServers,
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// `text` with `mcpServers.<name>` set to `entry` (kept in its place when it exists,
/// else added last), or taken out for `None`. Everything else stays as written.
pub fn with_server(text: &str, name: &str, entry: Option<Value>) -> Result<String, EditError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut root: Value = serde_json::from_str(text).map_err(|_| EditError::NoServers)?;
    let servers = root
        .get_mut("mcpServers")
        .and_then(Value::as_object_mut)
        .ok_or(EditError::NoServers)?;
    match entry {
        Some(entry) => {
            servers.insert(name.to_owned(), entry);
        }
        None => {
            servers.shift_remove(name);
        }
    }
    let mut edited = serde_json::to_string_pretty(&root).map_err(|_| EditError::NoServers)?;
    edited.push('\n');
    Ok(edited)
}

/// The entry of server `name` as written in `text` (`${VAR}` references and all).
pub fn entry_as_written(text: &str, name: &str) -> Option<Value> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root: Value = serde_json::from_str(text).ok()?;
    root.get("mcpServers")?.get(name).cloned()
}

/// Reads the file at `path`.
pub fn read(path: &Path) -> Result<String, EditError> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

/// [`read`] on a thread for blocking work, off the async workers.
pub async fn read_off_thread(path: &Path) -> Result<String, EditError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || read(&owned))
        .await
        .unwrap_or_else(|join| Err(io_error(path, std::io::Error::other(join))))
}

/// [`write_atomically`] on a thread for blocking work (its `fsync` may take long), off
/// the async workers.
pub async fn write_off_thread(path: &Path, text: String) -> Result<(), EditError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&owned, &text))
        .await
        .unwrap_or_else(|join| Err(io_error(path, std::io::Error::other(join))))
}

/// Replaces the file at `path` (through a symbolic link: its target) by `text`, in one
/// step: written to a temporary file in the same folder, with the same permissions,
/// flushed to disk, then renamed over the file.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    let target = std::fs::canonicalize(path).map_err(|e| io_error(path, e))?;
    let temporary = temporary_beside(&target);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        if let Ok(metadata) = std::fs::metadata(&target) {
            file.set_permissions(metadata.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_error(&target, err));
    }
    // The rename itself reaches the disk with the folder.
    if let Some(folder) = target.parent() {
        if let Ok(folder) = std::fs::File::open(folder) {
            let _ = folder.sync_all();
        }
    }
    Ok(())
}

fn temporary_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn io_error(path: &Path, source: std::io::Error) -> EditError {
    EditError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"{
  "gateway": {"listen": "127.0.0.1:7300"},
  "mcpServers": {
    "b": {"url": "https://example.org/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
    "a": {"command": "node", "env": {"K": "$${LITERAL}"}}
  }
}"#;

    #[test]
    fn an_edit_keeps_references_and_order() {
        let put = with_server(
            FILE,
            "c",
            Some(json!({"command": "x", "env": {"V": "${V}"}})),
        )
        .unwrap();
        assert!(put.contains("Bearer ${TOKEN}") && put.contains("$${LITERAL}"));
        assert!(put.contains(r#""V": "${V}""#), "{put}");
        let order = ["\"gateway\"", "\"mcpServers\"", "\"b\"", "\"a\"", "\"c\""]
            .map(|key| put.find(key).expect(key));
        assert!(order.is_sorted(), "{put}");
        let replaced = with_server(&put, "b", Some(json!({"command": "y"}))).unwrap();
        let order = ["\"b\"", "\"a\"", "\"c\""].map(|key| replaced.find(key).expect(key));
        assert!(order.is_sorted(), "an entry keeps its place: {replaced}");
        let removed = with_server(&replaced, "b", None).unwrap();
        assert!(
            !removed.contains("\"b\"") && removed.ends_with("}\n"),
            "{removed}"
        );
        assert!(removed.find("\"a\"") < removed.find("\"c\""));
    }

    #[test]
    fn a_file_without_servers_is_not_edited() {
        for text in ["", "[]", "{}", r#"{"mcpServers": []}"#] {
            assert!(matches!(
                with_server(text, "a", None),
                Err(EditError::NoServers)
            ));
        }
    }

    #[test]
    fn writes_replace_the_file_in_one_step() {
        let dir = std::env::temp_dir().join(format!("mcpmux-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mcpmux.json");
        std::fs::write(&path, FILE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "{}\n").unwrap();
        assert_eq!(read(&path).unwrap(), "{}\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
        let missing = write_atomically(&dir.join("missing.json"), "{}");
        assert!(matches!(missing, Err(EditError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
