//! `harvester dev DIR`: the edit-and-see loop. Builds the plugin folder,
//! pushes the component to the Plugin's repository under a fresh tag, signs
//! it, applies the Plugin pinned to the new digest and waits for the
//! rollout; then does it again whenever a source file changes. The nodes
//! swap the new version in without restarting.

use crate::build;
use crate::client::Client;
use anyhow::Context;
use harvester_api::resources::is_local_path;
use harvester_registry::{Registry, SigningKey, parse_reference};
use notify::Watcher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct DevOptions {
    pub dir: PathBuf,
    /// The Plugin object to roll out (default: the folder's name).
    pub plugin: Option<String>,
    /// `host/repository` to push to (default: the Plugin's current one).
    pub image: Option<String>,
    pub key: Option<PathBuf>,
    pub insecure_registry: Vec<String>,
    /// Roll out once and exit instead of watching.
    pub once: bool,
    pub timeout: Duration,
}

/// Quiet time after the last file event before building: editors write a
/// file in several steps.
const SETTLE: Duration = Duration::from_millis(400);

enum Target {
    /// Pushed to this repository (`host/repo`) and signed when a key is given.
    Oci { repository: String },
    /// Uploaded to the controller; nodes need --allow-unsigned.
    Local,
}

struct Dev<'a> {
    client: &'a Client,
    opts: DevOptions,
    name: String,
    target: Target,
    registry: Option<Registry>,
    key: Option<SigningKey>,
}

pub async fn run(client: &Client, opts: DevOptions) -> anyhow::Result<()> {
    let name = match &opts.plugin {
        Some(n) => n.clone(),
        None => build::plugin_name(&opts.dir)?,
    };
    let current = client.plugin(&name).await.with_context(|| {
        format!("plugin {name}: apply its manifest first (harvester apply -f ...); dev rolls out new builds of an existing Plugin")
    })?;
    let image = current.spec.image;
    let target = match &opts.image {
        Some(i) => Target::Oci {
            repository: repository_of(i)?,
        },
        None if is_local_path(&image) => Target::Local,
        None => Target::Oci {
            repository: repository_of(&image)?,
        },
    };
    let (registry, key) = match &target {
        Target::Oci { .. } => {
            // Decrypted once: the loop must not prompt on every save.
            let key = opts.key.as_deref().map(crate::oci::signing_key).transpose()?;
            if key.is_none() {
                eprintln!(
                    "warning: no --key: pushed builds are unsigned and only nodes started with --allow-unsigned run them"
                );
            }
            (
                Some(crate::oci::registry(&opts.insecure_registry, Default::default())?),
                key,
            )
        }
        Target::Local => (None, None),
    };
    let mut dev = Dev {
        client,
        opts,
        name,
        target,
        registry,
        key,
    };

    dev.opts.dir = std::fs::canonicalize(&dev.opts.dir)
        .with_context(|| format!("{}: no such plugin folder", dev.opts.dir.display()))?;
    let mut built = String::new();
    if dev.opts.once {
        return dev.roll_out(&mut built).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let root = dev.opts.dir.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev.paths.iter().any(|p| is_source(&root, p))
        {
            let _ = tx.send(());
        }
    })
    .context("cannot watch files")?;
    watcher
        .watch(&dev.opts.dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dev.opts.dir.display()))?;

    // One signal future for the whole session: Ctrl-C during a build or a
    // rollout stops too.
    let shutdown = crate::nodelet::shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        r = dev.roll_out(&mut built) => if let Err(e) = r { eprintln!("error: {e:#}") },
        _ = &mut shutdown => return Ok(()),
    }
    println!("watching {} for changes (Ctrl-C to stop)", dev.opts.dir.display());
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { break },
            _ = &mut shutdown => break,
        }
        // Let the burst of events of one save settle.
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
        tokio::select! {
            r = dev.roll_out(&mut built) => if let Err(e) = r {
                eprintln!("error: {e:#}");
                println!("watching {} for changes", dev.opts.dir.display());
            },
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}

/// Changes to these (under the plugin folder `root`) can change the component.
fn is_source(root: &Path, p: &Path) -> bool {
    let p = p.strip_prefix(root).unwrap_or(p);
    !p.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        s == "target" || s == "__pycache__" || s.starts_with('.')
    }) && !p
        .file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| n.ends_with(".wasm") || n.ends_with(".partial") || n.ends_with('~'))
}

fn repository_of(image: &str) -> anyhow::Result<String> {
    let r = parse_reference(image)?;
    Ok(harvester_registry::repository(&r))
}

impl Dev<'_> {
    /// Build, push, sign, apply, wait. Skipped when the sources are the
    /// ones last rolled out.
    async fn roll_out(&mut self, built: &mut String) -> anyhow::Result<()> {
        let fingerprint = build::source_fingerprint(&self.opts.dir)?;
        if fingerprint == *built {
            return Ok(());
        }
        let started = Instant::now();
        let dir = self.opts.dir.clone();
        let out = tokio::task::spawn_blocking(move || build::build(&dir, None)).await??;
        println!(
            "built {} ({:.1} MB) in {:.1}s",
            out.output.display(),
            out.size as f64 / 1e6,
            out.took.as_secs_f64()
        );
        let image = match &self.target {
            Target::Oci { repository } => self.push(repository, &out.output).await?,
            Target::Local => std::fs::canonicalize(&out.output)?.display().to_string(),
        };
        let generation = self.apply(&image).await?;
        crate::commands::rollout_status(self.client, &format!("plugin/{}", self.name), self.opts.timeout).await?;
        println!(
            "plugin/{} generation {generation} is live, {:.1}s after the change",
            self.name,
            started.elapsed().as_secs_f64()
        );
        *built = fingerprint;
        Ok(())
    }

    async fn push(&self, repository: &str, file: &Path) -> anyhow::Result<String> {
        let registry = self.registry.as_ref().context("no registry")?;
        let tag = format!("dev-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S%3f"));
        let reference = parse_reference(&format!("{repository}:{tag}"))?;
        let pushed = crate::oci::push_signed(registry, &reference, file, self.key.as_ref()).await?;
        Ok(format!("{repository}@{}", pushed.digest))
    }

    /// Applies the stored Plugin with only its image changed; returns the
    /// new generation.
    async fn apply(&self, image: &str) -> anyhow::Result<u64> {
        let mut plugin = self.client.plugin(&self.name).await?;
        plugin.status = None;
        plugin.metadata = harvester_api::resources::ObjectMeta {
            name: plugin.metadata.name,
            labels: plugin.metadata.labels,
            ..Default::default()
        };
        plugin.spec.image = image.to_string();
        plugin.spec.digest = None;
        // Local paths are uploaded by apply, relative to the manifest file.
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(format!("{}.yaml", self.name));
        std::fs::write(&file, serde_yaml::to_string(&plugin)?)?;
        crate::commands::apply(self.client, &file, false).await?;
        Ok(self.client.plugin(&self.name).await?.metadata.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_trigger_a_build() {
        // Temporary folders are often hidden ones; only the part under the plugin counts.
        let root = Path::new("/tmp/.tmpA1/dht22");
        let at = |p: &str| root.join(p);
        assert!(is_source(root, &at("app.py")));
        assert!(is_source(root, &at("wit/world.wit")));
        assert!(!is_source(root, &at("dht22.wasm")));
        assert!(!is_source(root, &at("dht22.wasm.partial")));
        assert!(!is_source(root, &at("__pycache__/app.cpython.pyc")));
        assert!(!is_source(root, &at("target/debug/x")));
        assert!(!is_source(root, &at(".app.py.swp")));
        assert!(!is_source(root, &at("app.py~")));
    }
}
