//! Watching the configuration file: every change to it (written in place, or replaced
//! by a rename as editors and the admin API do) is re-read once it has been quiet for
//! [`DEBOUNCE`], so that a file written in several steps is read once, whole.
//!
//! The folder is watched rather than the file, since a file replaced by a rename is a
//! new file. Only events naming the file count, unless the file is a symbolic link
//! (a Kubernetes ConfigMap, whose links are swapped): then any change in the folder
//! does, and re-reading an unchanged file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Reloader;

/// How long the file must stay unchanged before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the file at `path` until `stop` is cancelled (or the returned watcher is
/// dropped), calling [`Reloader::reload_logged`] after each quiet change.
pub fn watch(
    path: &Path,
    reloader: Weak<Reloader>,
    stop: CancellationToken,
) -> notify::Result<notify::RecommendedWatcher> {
    let path = std::path::absolute(path)?;
    let folder = path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = path.file_name().map(ToOwned::to_owned);
    let linked = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    // One pending signal is enough: the reload reads the file as it is then.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let ours = linked || event.paths.iter().any(|p| p.file_name() == name.as_deref());
        if ours {
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                signal = changes.recv() => if signal.is_none() { return },
            }
            // Quiet for DEBOUNCE: every further change starts the wait afresh.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    signal = changes.recv() => if signal.is_none() { return },
                }
            }
            let Some(reloader) = reloader.upgrade() else {
                return;
            };
            reloader
                .reload_logged("the configuration file changed")
                .await;
        }
    });
    Ok(watcher)
}
