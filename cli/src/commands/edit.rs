//! `harvester label` and `harvester edit`: change a stored object in place.
//! Both read the object, change it and send it back with the
//! resourceVersion they read, so a change made by someone else in between
//! is never overwritten (label reads again and retries; edit says so).

use crate::client::{Client, Kind};
use anyhow::{Context, bail};
use serde_json::Value;
use std::collections::BTreeMap;

/// What `label` does to one key: set it, or remove it (`key-`).
#[derive(Debug, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

/// `app=climate`, `app-`.
pub fn parse_label_change(s: &str) -> anyhow::Result<LabelChange> {
    if let Some((k, v)) = s.split_once('=') {
        check_label(k, v).with_context(|| format!("{s:?}"))?;
        return Ok(LabelChange::Set(k.to_string(), v.to_string()));
    }
    if let Some(k) = s.strip_suffix('-') {
        check_label(k, "").with_context(|| format!("{s:?}"))?;
        return Ok(LabelChange::Remove(k.to_string()));
    }
    bail!("{s:?}: expected KEY=VALUE to set a label or KEY- to remove one")
}

/// The hub checks labels again; this only catches a typo before anything is sent.
fn check_label(key: &str, value: &str) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    labels.insert(key.to_string(), value.to_string());
    let mut errors = harvester_api::ValidationErrors::default();
    harvester_api::resources::validate_labels(&labels, "label", &mut errors);
    errors.into_result().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Applies `changes` to an object's labels: an existing value is replaced
/// only with `overwrite`; whether anything changed.
fn relabel(object: &mut Value, changes: &[LabelChange], overwrite: bool) -> anyhow::Result<bool> {
    let labels = object["metadata"]
        .as_object_mut()
        .context("the object has no metadata")?
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    let labels = labels.as_object_mut().context("metadata.labels is not a mapping")?;
    let mut changed = false;
    for change in changes {
        match change {
            LabelChange::Set(k, v) => match labels.get(k).and_then(Value::as_str) {
                Some(old) if old == v => {}
                Some(old) if !overwrite => {
                    bail!("label {k:?} already has the value {old:?}: give --overwrite to replace it")
                }
                _ => {
                    labels.insert(k.clone(), Value::String(v.clone()));
                    changed = true;
                }
            },
            LabelChange::Remove(k) => changed |= labels.remove(k).is_some(),
        }
    }
    Ok(changed)
}

pub async fn label(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    changes: &[String],
    overwrite: bool,
) -> anyhow::Result<()> {
    // `label plugin/dht22 app=x` or `label plugin dht22 app=x`.
    let (kind, named) = Kind::target(kind, None)?;
    let (name, changes): (String, Vec<&str>) = match named {
        Some(n) => (n, name.into_iter().chain(changes.iter().map(String::as_str)).collect()),
        None => (
            name.context("give TYPE NAME KEY=VALUE... (label plugin dht22 app=climate)")?
                .to_string(),
            changes.iter().map(String::as_str).collect(),
        ),
    };
    if changes.is_empty() {
        bail!("give at least one KEY=VALUE or KEY-");
    }
    let changes: Vec<LabelChange> = changes.into_iter().map(parse_label_change).collect::<Result<_, _>>()?;
    // Someone else's write in between: read again and redo, a few times.
    for attempt in 0..5 {
        let mut object: Value = client.object(kind, &name).await?;
        if !relabel(&mut object, &changes, overwrite)? {
            println!("{}/{name} not labeled (no change)", kind.singular());
            return Ok(());
        }
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        match client.update(kind, &name, &object).await {
            Ok(_) => {
                println!("{}/{name} labeled", kind.singular());
                return Ok(());
            }
            Err(e) if attempt < 4 && format!("{e}").contains("changed by someone else") => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("{}/{name} kept changing; try again", kind.singular())
}

const EDIT_HEADER: &str = "# Edit the object below and save to apply it; lines starting with # are ignored,\n\
# and an empty file (or one left unchanged) changes nothing.\n";

/// The command that edits a file: HARVESTER_EDITOR, else EDITOR, else vi
/// (as kubectl's KUBE_EDITOR); it may carry arguments.
fn editor() -> Vec<String> {
    let line = std::env::var("HARVESTER_EDITOR")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    line.split_whitespace().map(str::to_string).collect()
}

fn run_editor(path: &std::path::Path) -> anyhow::Result<String> {
    let cmd = editor();
    let (program, args) = cmd.split_first().context("HARVESTER_EDITOR/EDITOR is empty")?;
    let status = std::process::Command::new(program)
        .args(args)
        .arg(path)
        .status()
        .with_context(|| format!("cannot run the editor {program:?} (set HARVESTER_EDITOR or EDITOR)"))?;
    if !status.success() {
        bail!("the editor {program:?} exited with {status}: nothing was changed");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Without the comment lines.
fn content(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

pub async fn edit(client: &Client, kind: &str, name: Option<&str>) -> anyhow::Result<()> {
    let (kind, name) = Kind::target(kind, name)?;
    let name = name.context("give TYPE NAME or TYPE/NAME (edit plugin dht22)")?;
    let mut object: Value = client.object(kind, &name).await?;
    // A Plugin's status is the hub's to write; a Node's comes from the board.
    if kind == Kind::Plugin
        && let Some(o) = object.as_object_mut()
    {
        o.remove("status");
    }
    harvester_api::time::to_rfc3339(&mut object);
    let original = serde_yaml::to_string(&object)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{}-{name}.yaml", kind.singular()));
    let mut text = format!("{EDIT_HEADER}{original}");
    let mut last_error: Option<String> = None;
    loop {
        std::fs::write(&path, &text)?;
        let edited = run_editor(&path)?;
        let body = content(&edited);
        if body.trim().is_empty() || body == original {
            println!("Edit cancelled, no changes made.");
            return Ok(());
        }
        if let Some(e) = &last_error
            && content(&text) == body
        {
            // Saved again without a fix: stop, keeping the work.
            let keep = std::env::temp_dir().join(format!("harvester-edit-{}-{name}.yaml", kind.singular()));
            std::fs::write(&keep, &edited)?;
            bail!("{e}\nyour changes are kept in {}", keep.display());
        }
        let result = match serde_yaml::from_str::<Value>(&body) {
            Ok(value) => client.update(kind, &name, &value).await.map(|_| ()),
            Err(e) => Err(anyhow::anyhow!("not YAML: {e}")),
        };
        match result {
            Ok(()) => {
                println!("{}/{name} edited", kind.singular());
                return Ok(());
            }
            Err(e) => {
                let message = format!("{e:#}");
                let notes: String = message.lines().map(|l| format!("# {l}\n")).collect();
                text = format!("{EDIT_HEADER}#\n# The edit was refused:\n{notes}#\n{body}");
                last_error = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_read_as_kubectl_writes_them() {
        assert_eq!(
            parse_label_change("app=climate").unwrap(),
            LabelChange::Set("app".into(), "climate".into())
        );
        assert_eq!(parse_label_change("app-").unwrap(), LabelChange::Remove("app".into()));
        assert!(parse_label_change("app").is_err());
        assert!(parse_label_change("bad key=x").is_err());
        let mut o = serde_json::json!({"metadata": {"name": "a", "labels": {"app": "x"}}});
        assert!(relabel(&mut o, &[LabelChange::Set("app".into(), "x".into())], false).is_ok());
        let err = relabel(&mut o, &[LabelChange::Set("app".into(), "y".into())], false).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert!(relabel(&mut o, &[LabelChange::Set("app".into(), "y".into())], true).unwrap());
        assert!(relabel(&mut o, &[LabelChange::Remove("app".into())], false).unwrap());
        assert_eq!(o["metadata"]["labels"], serde_json::json!({}));
    }
}
