//! `harvester apply -f FILE|DIR|-`: local components are uploaded and
//! their digests pinned, then the whole stream is applied at once.

use crate::client::Client;
use anyhow::Context;
use harvester_api::Digest;
use harvester_api::resources::is_local_path;
use std::path::{Path, PathBuf};

/// Reads `-f`: a file, a directory (its .yaml/.yml files, sorted), or `-`.
pub fn read_manifests(path: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        // Named for messages; relative images resolve against the working directory.
        return Ok(vec![(PathBuf::from("<stdin>"), s)]);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        return files
            .into_iter()
            .map(|f| {
                Ok((
                    f.clone(),
                    std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                ))
            })
            .collect();
    }
    Ok(vec![(
        path.to_path_buf(),
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )])
}

/// Uploads local components and pins their digests, so the controller
/// stores exactly the bytes this machine has.
pub(super) async fn pin_local_images(client: &Client, file: &Path, text: &str) -> anyhow::Result<String> {
    use serde::Deserialize;
    let base = file.parent().unwrap_or(Path::new("."));
    if let Err((document, why)) = harvester_api::validation::check_yaml_size(text) {
        anyhow::bail!("{} document {document}: {why}", file.display());
    }
    let mut out = String::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            // Let the controller report syntax errors with line and column.
            Err(_) => return Ok(text.to_string()),
        };
        if value.is_null() {
            continue;
        }
        // apply is declarative, as kubectl's: what `get -o yaml` printed
        // applies again even after the hub wrote the object's status since.
        // (An update that must not overwrite anyone's change is `edit` or
        // the API's PUT, which keep the resourceVersion.)
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.remove("resourceVersion");
        }
        let is_plugin = value.get("kind").and_then(|k| k.as_str()) == Some("Plugin");
        let image = value
            .get("spec")
            .and_then(|s| s.get("image"))
            .and_then(|i| i.as_str())
            .map(str::to_string);
        if let (true, Some(image)) = (is_plugin, image)
            && is_local_path(&image)
        {
            let path = base.join(&image);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "{} document {}: spec.image {image:?}: cannot read {}",
                    file.display(),
                    i + 1,
                    path.display()
                )
            })?;
            let digest = Digest::of(&bytes);
            client.put_blob(&digest, bytes).await?;
            value["spec"]["digest"] = serde_yaml::Value::String(digest.to_string());
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

/// `dry_run`: the hub validates, resolves and admits everything and stores
/// nothing (a local component is still uploaded: blobs are content-addressed
/// and run nowhere until a Plugin names them).
pub async fn apply(client: &Client, path: &Path, dry_run: bool) -> anyhow::Result<()> {
    let mut stream = String::new();
    for (file, text) in read_manifests(path)? {
        stream.push_str(&pin_local_images(client, &file, &text).await?);
        stream.push('\n');
    }
    for r in client.apply(stream, dry_run).await? {
        let kind = r.kind.to_lowercase();
        let mut line = format!("{kind}/{} {}", r.name, r.action.as_str());
        if kind == "plugin" {
            line.push_str(&format!(" (generation {}", r.generation));
            if r.digest.is_some() {
                line.push_str(&format!(", {}", super::short(r.digest.as_ref())));
            }
            line.push(')');
        }
        if dry_run {
            line.push_str(" (server dry run)");
        }
        println!("{line}");
    }
    Ok(())
}
