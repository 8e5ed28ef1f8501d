//! Live reload on file change. The config file's folder is watched with inotify (via
//! `notify`), which also sees the Kubernetes ConfigMap swap (`..data` renamed to a new
//! folder under a symlinked `gateway.yaml`); a 1 s poll of the file's content hash backs
//! it up on file systems that do not report events. A change is applied when the
//! content differs from what was last tried, so an invalid edit is reported once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::config::hex;
use crate::gateway::Gateway;

fn content_hash(path: &PathBuf) -> Option<String> {
    std::fs::read(path).ok().map(|b| hex(&Sha256::digest(&b)))
}

pub fn spawn(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let path = gw.config_path.clone();
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config folder; polling every second instead");
            None
        }
    };
    tokio::spawn(async move {
        let _keep = watcher;
        let mut last_tried = gw.current().hash.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = rx.recv() => {
                    // Let a burst of events (editor save, ConfigMap swap) settle.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(now) = content_hash(&path) else {
                continue;
            };
            if now != last_tried && now != gw.current().hash {
                last_tried = now;
                let _ = gw.reload("file").await;
            } else if now == gw.current().hash {
                last_tried = now;
            }
        }
    });
}
