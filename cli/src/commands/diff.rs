//! `harvester diff -f FILE`: what `apply` would change, as a unified diff of
//! each object's labels and spec, live against what the hub would store
//! (its server dry run: validated, images resolved, nothing stored).
//! As kubectl's: exit code 0 when nothing would change, 1 when something
//! would, more for an error.

use super::apply::pin_local_images;
use super::read_manifests;
use crate::client::{Client, Kind};
use harvester_api::answers::ApplyAction;
use harvester_api::resources::{Object, parse_documents};
use std::path::Path;

/// What a person compares: the labels and the spec.
fn comparable(v: &serde_json::Value) -> anyhow::Result<String> {
    let shown = serde_json::json!({
        "metadata": {"labels": v["metadata"]["labels"]},
        "spec": v["spec"],
    });
    Ok(serde_yaml::to_string(&shown)?)
}

/// Prints the differences; whether there were any.
pub async fn diff(client: &Client, path: &Path) -> anyhow::Result<bool> {
    let mut stream = String::new();
    for (file, text) in read_manifests(path)? {
        stream.push_str(&pin_local_images(client, &file, &text).await?);
        stream.push('\n');
    }
    let results = client.apply(stream.clone(), true).await?;
    let objects = parse_documents(&stream).map_err(|errs| super::invalid_manifest(&errs, "nothing to compare"))?;
    let mut changed = false;
    for (object, result) in objects.into_iter().zip(results) {
        if result.action == ApplyAction::Unchanged {
            continue;
        }
        changed = true;
        let kind = Kind::parse(object.kind())?;
        let name = object.name().to_string();
        let mut incoming = match &object {
            Object::Plugin(p) => serde_json::to_value(p)?,
            Object::Node(n) => serde_json::to_value(n)?,
        };
        // The digest the hub would pin, as apply resolves it.
        if let Some(d) = result.digest {
            incoming["spec"]["digest"] = serde_json::json!(d);
        }
        let live = match (result.action, kind) {
            (ApplyAction::Created, _) => String::new(),
            (_, Kind::Plugin) => comparable(&serde_json::to_value(client.plugin(&name).await?)?)?,
            (_, Kind::Node) => comparable(&serde_json::to_value(client.node(&name).await?)?)?,
        };
        let after = comparable(&incoming)?;
        let label = format!("{}/{name}", kind.singular());
        let text = similar::TextDiff::from_lines(&live, &after);
        print!(
            "{}",
            text.unified_diff()
                .context_radius(3)
                .header(&format!("{label} (live)"), &format!("{label} (applied)"))
        );
    }
    Ok(changed)
}
