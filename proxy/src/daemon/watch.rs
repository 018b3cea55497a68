//! Watching files for changes: the config file, TLS certificates and keys.
//! Each is watched through its directory, because editors, config
//! management and ACME clients replace files by rename or re-point
//! symlinks; opening or reading a file is not a change.

use std::path::PathBuf;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Watches `files` through their directories (editors, config management
/// and ACME clients replace files by rename or re-point symlinks); sends a
/// unit per event about one of them.
pub fn watch(
    files: &[PathBuf],
) -> Option<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    if files.is_empty() {
        return None;
    }
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            // Opening or reading a file is not a change. Without this, our
            // own read of the file after an event is an event again: the
            // daemon would re-read its config every debounce period forever.
            if !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            {
                let _ = tx.send(());
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch files for changes ({e}); reload with SIGHUP or `bgctl reload`");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!(
                "cannot watch {} for changes ({e}); reload with SIGHUP or `bgctl reload`",
                dir.display()
            );
        }
    }
    Some((watcher, rx))
}

/// The bytes of `files`, to tell a real change from a touch.
pub fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reading a watched file (as the daemon does after every event) is not
    /// a change; writing it, or replacing it by rename, is.
    #[tokio::test]
    async fn reads_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bgproxy.toml");
        std::fs::write(&file, "a").unwrap();
        let (_watcher, mut rx) = watch(std::slice::from_ref(&file)).unwrap();
        for _ in 0..3 {
            std::fs::read(&file).unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(quiet.is_err(), "a read was reported as a change");

        std::fs::write(&file, "b").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(changed, Ok(Some(())), "a write was not reported");
        while rx.try_recv().is_ok() {}

        let other = dir.path().join("bgproxy.toml.new");
        std::fs::write(&other, "c").unwrap();
        std::fs::rename(&other, &file).unwrap();
        let replaced = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            replaced,
            Ok(Some(())),
            "a rename over the file was not reported"
        );
    }
}
