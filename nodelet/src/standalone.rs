//! `harvester nodelet --standalone FILE`: run the plugins a local manifest
//! lists, and follow the manifest and the component files as they change.
//!
//! Files are polled (size and modification time, then content digest), which
//! works the same for editors that rewrite in place and for ones that
//! replace the file, and on any filesystem.

use crate::events::EventKind;
use crate::runtime::{Applied, PluginSpec, Runtime};
use harvester_api::standalone::{StandaloneManifest, StandalonePlugin};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

type Fingerprint = BTreeMap<PathBuf, Option<(u64, SystemTime)>>;

fn stat(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn fingerprint(manifest: &Path, plugins: &[StandalonePlugin]) -> Fingerprint {
    let mut fp = BTreeMap::new();
    fp.insert(manifest.to_path_buf(), stat(manifest));
    for p in plugins {
        fp.insert(p.component.clone(), stat(&p.component));
    }
    fp
}

/// Applies every plugin of the manifest and removes the ones it no longer
/// lists. One plugin's failure never affects the others.
pub async fn sync(runtime: &Arc<Runtime>, manifest: &StandaloneManifest) -> usize {
    let mut failures = 0;
    for p in &manifest.plugins {
        let source = p.component.display().to_string();
        let bytes = match tokio::fs::read(&p.component).await {
            Ok(b) => b,
            Err(e) => {
                let error = format!("plugin {} ({source}): cannot read the component: {e}", p.name);
                runtime.report_load_failure(&p.name, &source, error);
                failures += 1;
                continue;
            }
        };
        let spec = PluginSpec {
            name: p.name.clone(),
            source,
            component: bytes.into(),
            run: p.run.clone(),
            generation: None,
        };
        let rt = runtime.clone();
        match crate::log_tap::spawn_blocking(move || rt.apply(spec)).await {
            Ok(Ok(Applied::Unchanged { .. })) => {}
            Ok(Ok(applied)) => tracing::debug!(plugin = p.name, ?applied, "applied"),
            // Already reported (log line, status, metric) by the runtime.
            Ok(Err(_)) => failures += 1,
            Err(e) => {
                tracing::error!(plugin = p.name, "loader panicked: {e}");
                failures += 1;
            }
        }
    }
    let wanted: Vec<&str> = manifest.plugins.iter().map(|p| p.name.as_str()).collect();
    for name in runtime.plugin_names() {
        if !wanted.contains(&name.as_str()) {
            let rt = runtime.clone();
            let _ = crate::log_tap::spawn_blocking(move || rt.remove(&name)).await;
        }
    }
    failures
}

/// Loads the manifest, starts its plugins, then follows changes until
/// `shutdown` resolves. An invalid manifest at start is an error; later, an
/// invalid edit is reported and the plugins keep running as they were.
pub async fn run(
    runtime: Arc<Runtime>,
    manifest_path: PathBuf,
    poll: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let manifest = StandaloneManifest::load(&manifest_path)?;
    // Taken before applying: an edit made while a component compiles must
    // not be mistaken for what was applied.
    let mut seen = fingerprint(&manifest_path, &manifest.plugins);
    let failures = sync(&runtime, &manifest).await;
    tracing::info!(
        manifest = %manifest_path.display(),
        plugins = manifest.plugins.len(),
        failures,
        "standalone manifest applied"
    );
    let mut current = manifest;
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        let now = fingerprint(&manifest_path, &current.plugins);
        if now == seen {
            continue;
        }
        match StandaloneManifest::load(&manifest_path) {
            Ok(m) => {
                tracing::info!(manifest = %manifest_path.display(), "change detected, applying");
                seen = fingerprint(&manifest_path, &m.plugins);
                sync(&runtime, &m).await;
                current = m;
            }
            Err(e) => {
                tracing::error!("{e}; the plugins keep running as they were");
                // Wait for the next edit rather than repeating the error.
                seen = now;
            }
        }
    }
    let rt = runtime.clone();
    let _ = crate::log_tap::spawn_blocking(move || rt.shutdown()).await;
    Ok(())
}

impl Runtime {
    /// Reports a plugin that could not even be handed to the runtime (its
    /// file is unreadable, say), the same way as any other load failure.
    pub fn report_load_failure(&self, plugin: &str, source: &str, error: String) {
        let report = self.reporter();
        report.update(plugin, source, |_| {});
        report.emit(plugin, EventKind::LoadFailed { generation: 0, error });
    }
}
