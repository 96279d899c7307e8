//! Server-side apply: create or update an object from a manifest document,
//! bumping `generation` only when the spec changes, resolving the image to a
//! digest once, here, so every node runs identical bytes.

use crate::store::{Kind, Store, StoreError, Write};
use harvester_api::Digest;
use harvester_api::now_ms;
use harvester_api::resources::{Node, Object, Plugin, is_local_path};
use harvester_registry::{PullError, Registry};

pub use harvester_api::answers::{AppliedObject as Applied, ApplyAction as Action};

fn new_uid(kind: &str, name: &str) -> String {
    let seed = format!("{kind}/{name}/{}/{:?}", now_ms(), std::thread::current().id());
    let d = Digest::of(seed.as_bytes()).hex();
    format!(
        "{}-{}-{}-{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    )
}

/// Pins `plugin.spec.digest`: checks a local component was uploaded, or
/// resolves an OCI tag to its manifest digest,
/// once, here, so a tag moved later changes nothing until the next apply.
pub async fn resolve(store: &Store, registry: &Registry, plugin: &mut Plugin) -> Result<(), StoreError> {
    let image = plugin.spec.image.clone();
    let name = plugin.metadata.name.clone();
    let invalid = |msg: String| StoreError::Invalid(format!("Plugin {name}: spec.image {image:?}: {msg}"));
    if !is_local_path(&image) {
        let reference = harvester_registry::parse_reference(&image).map_err(|e| invalid(format!("{e:#}")))?;
        if let Some(d) = &plugin.spec.digest {
            // An explicit pin must agree with a digest in the reference.
            if reference.digest().is_some_and(|r| r != d.to_string()) {
                return Err(invalid(format!("spec.digest {d} differs from the digest in the image")));
            }
            return Ok(());
        }
        let (digest, _) = registry.resolve(&reference).await.map_err(|e| match e {
            PullError::Refused(r) => invalid(r.to_string()),
            PullError::Registry(e) => invalid(format!("cannot resolve it to a digest: {e:#}")),
        })?;
        tracing::info!(plugin = name, image, %digest, "resolved");
        plugin.spec.digest = Some(digest);
        return Ok(());
    }
    if let Some(d) = &plugin.spec.digest {
        if !store.has_blob(d)? {
            return Err(StoreError::Invalid(format!(
                "Plugin {name}: spec.digest {d}: no component with that digest was uploaded (harvester apply uploads local files)"
            )));
        }
        return Ok(());
    }
    // The hub never reads a file from its own disk on a client's word: that
    // would serve any file the hub can read to whoever may apply.
    Err(invalid(
        "a local component needs spec.digest naming a component uploaded first; `harvester apply -f` uploads it and pins its digest".into(),
    ))
}

/// Admission for exclusive grants: the first Plugin of `objects` (by
/// position) that would share an output pin or an LED with another plugin
/// on a node registered now, and why. Placement decides, as it does for
/// the reconciler; nodes that register later are guarded there
/// (condition GrantConflict).
pub(crate) fn refused_by_exclusive_grants(
    store: &Store,
    objects: &[Object],
) -> Result<Option<(usize, StoreError)>, StoreError> {
    let incoming: Vec<(usize, &Plugin)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Object::Plugin(p) if p.spec.run.grants.holds_exclusive() => Some((i, p)),
            _ => None,
        })
        .collect();
    if incoming.is_empty() {
        return Ok(None);
    }
    let nodes: Vec<Node> = store.list_as(Kind::Node)?;
    let plugins: Vec<&Plugin> = incoming.iter().map(|(_, p)| *p).collect();
    if !plugins
        .iter()
        .any(|p| nodes.iter().any(|n| crate::reconciler::placement::places(p, n)))
    {
        return Ok(None);
    }
    let stored: Vec<Plugin> = store.list_as(Kind::Plugin)?;
    Ok(
        crate::reconciler::placement::refused_at_apply(&stored, &plugins, &nodes)
            .map(|(k, why)| (incoming[k].0, StoreError::Invalid(why))),
    )
}

/// What applying `incoming` over `current` writes: one decision for
/// apply and its dry run.
fn plugin_decision(current: Option<&serde_json::Value>, incoming: &Plugin) -> Result<Write, StoreError> {
    let name = &incoming.metadata.name;
    let Some(current) = current else {
        let mut new = incoming.clone();
        new.metadata.uid = new_uid("Plugin", name);
        new.metadata.generation = 1;
        new.metadata.creation_timestamp = now_ms();
        new.status = None;
        return Ok(Write::Put(serde_json::to_value(new)?));
    };
    let current: Plugin = serde_json::from_value(current.clone())?;
    let sent_rv = incoming.metadata.resource_version;
    if sent_rv != 0 && sent_rv != current.metadata.resource_version {
        return Err(StoreError::Conflict {
            kind: "Plugin",
            name: name.clone(),
            sent: sent_rv,
            current: current.metadata.resource_version,
        });
    }
    let spec_changed = current.spec != incoming.spec;
    if !spec_changed && current.metadata.labels == incoming.metadata.labels {
        return Ok(Write::Keep);
    }
    let mut next = current.clone();
    next.metadata.labels = incoming.metadata.labels.clone();
    if spec_changed {
        next.spec = incoming.spec.clone();
        next.metadata.generation += 1;
    }
    Ok(Write::Put(serde_json::to_value(next)?))
}

/// What `apply` would do with `object`, resolved and checked like it, with
/// nothing written (`apply --dry-run=server`).
pub async fn dry_run(
    store: &Store,
    registry: &Registry,
    object: Object,
    by: LabelAuthority,
) -> Result<Applied, StoreError> {
    let (kind, name, decision) = match object {
        Object::Plugin(mut p) => {
            resolve(store, registry, &mut p).await?;
            let current = store.get(Kind::Plugin, &p.metadata.name)?;
            let d = plugin_decision(current.as_ref(), &p)?;
            (Kind::Plugin, p.metadata.name.clone(), (current, d))
        }
        Object::Node(n) => {
            let current = store.get(Kind::Node, &n.metadata.name)?;
            let d = node_update(current.as_ref(), &n, false, by)?;
            (Kind::Node, n.metadata.name.clone(), (current, d))
        }
    };
    let (current, decision) = decision;
    let (action, object) = match decision {
        Write::Keep => (Action::Unchanged, current.unwrap_or_default()),
        Write::Put(v) if current.is_none() => (Action::Created, v),
        Write::Put(v) => (Action::Configured, v),
        Write::Delete => (Action::Unchanged, current.unwrap_or_default()),
    };
    Ok(Applied {
        kind: kind.as_str().into(),
        name,
        action,
        generation: object["metadata"]["generation"].as_u64().unwrap_or(0),
        digest: object["spec"]["digest"].as_str().and_then(|d| d.parse().ok()),
    })
}

/// Creates or updates one object. `expected_rv` (from the object's
/// metadata.resourceVersion) makes the write conditional.
pub async fn apply(
    store: &Store,
    registry: &Registry,
    object: Object,
    by: LabelAuthority,
) -> Result<Applied, StoreError> {
    match object {
        Object::Plugin(mut p) => {
            resolve(store, registry, &mut p).await?;
            let name = p.metadata.name.clone();
            let incoming = p.clone();
            let mut action = Action::Unchanged;
            let (stored, event) = store
                .write(Kind::Plugin, &name, |current| plugin_decision(current, &incoming))
                .await?;
            if let Some(ev) = &event {
                action = if ev.event == crate::store::EventType::Added {
                    Action::Created
                } else {
                    Action::Configured
                };
            }
            let stored: Plugin = serde_json::from_value(stored.unwrap_or_default())?;
            Ok(Applied {
                kind: "Plugin".into(),
                name,
                action,
                generation: stored.metadata.generation,
                digest: stored.spec.digest,
            })
        }
        Object::Node(n) => {
            let name = n.metadata.name.clone();
            let (stored, event) = store
                .write(Kind::Node, &name, |current| node_update(current, &n, false, by))
                .await?;
            let stored: Node = serde_json::from_value(stored.unwrap_or_default())?;
            Ok(Applied {
                kind: "Node".into(),
                name,
                action: match event.map(|e| e.event) {
                    Some(crate::store::EventType::Added) => Action::Created,
                    Some(_) => Action::Configured,
                    None => Action::Unchanged,
                },
                generation: stored.metadata.generation,
                digest: None,
            })
        }
    }
}

/// Who writes a Node's labels: role labels (`node-role.harvester.dev/*`:
/// what a board is to the fleet) are an admin's; anyone else's write must
/// leave them as they are when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelAuthority {
    Admin,
    Other,
}

impl LabelAuthority {
    pub(crate) fn of(caller: &crate::identity::Identity) -> LabelAuthority {
        match caller {
            crate::identity::Identity::User {
                role: harvester_api::identity::Role::Admin,
                ..
            } => LabelAuthority::Admin,
            _ => LabelAuthority::Other,
        }
    }
}

fn role_labels(labels: &harvester_api::resources::Labels) -> Vec<(&String, &String)> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(harvester_api::resources::NODE_ROLE_PREFIX))
        .collect()
}

/// Refuses a write by `by` that would change the role labels `current`
/// has (none when it does not exist yet).
pub(crate) fn role_labels_allowed(
    current: Option<&serde_json::Value>,
    incoming: &Node,
    by: LabelAuthority,
) -> Result<(), StoreError> {
    if by == LabelAuthority::Admin {
        return Ok(());
    }
    let stored: harvester_api::resources::Labels = current
        .and_then(|c| serde_json::from_value(c["metadata"]["labels"].clone()).ok())
        .unwrap_or_default();
    if role_labels(&stored) != role_labels(&incoming.metadata.labels) {
        return Err(StoreError::Forbidden(format!(
            "node {}: only an admin sets or removes {}* labels",
            incoming.metadata.name,
            harvester_api::resources::NODE_ROLE_PREFIX
        )));
    }
    Ok(())
}

/// Labels come from whoever applies the Node (role labels only from an
/// admin, checked against the Node as it is at the write); status only
/// from the node itself (`with_status`).
pub(crate) fn node_update(
    current: Option<&serde_json::Value>,
    incoming: &Node,
    with_status: bool,
    by: LabelAuthority,
) -> Result<Write, StoreError> {
    role_labels_allowed(current, incoming, by)?;
    let Some(current) = current else {
        let mut new = incoming.clone();
        new.metadata.uid = new_uid("Node", &new.metadata.name);
        new.metadata.generation = 1;
        new.metadata.creation_timestamp = now_ms();
        if !with_status {
            new.status = Default::default();
        }
        return Ok(Write::Put(serde_json::to_value(new)?));
    };
    let current: Node = serde_json::from_value(current.clone())?;
    let mut next = current.clone();
    next.metadata.labels = incoming.metadata.labels.clone();
    if with_status {
        let conditions = next.status.conditions.clone();
        next.status = incoming.status.clone();
        // Readiness and heartbeats are the controller's to judge, by its own
        // clock on receipt (a Raspberry Pi has no real-time clock and steps
        // its time after boot). A heartbeat is a lease the reconciler keeps
        // in memory, as Kubernetes keeps Lease objects apart from Nodes: the
        // stored Node changes only when something about the node does.
        next.status.conditions = conditions;
        next.status.last_heartbeat = current.status.last_heartbeat;
        if next != current {
            next.status.last_heartbeat = now_ms();
        }
    }
    if next == current {
        return Ok(Write::Keep);
    }
    Ok(Write::Put(serde_json::to_value(next)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n: Node = serde_json::from_value(
            serde_json::json!({"apiVersion": "harvester.dev/v1alpha1", "kind": "Node", "metadata": {"name": "pi6"}}),
        )
        .unwrap();
        n.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n
    }

    /// Decided against the Node as it is at the write: a write checked
    /// earlier, against what it was then, cannot undo an admin's role.
    #[test]
    fn only_an_admin_changes_role_labels_whatever_was_read_before() {
        let stored = serde_json::to_value(node(&[("node-role.harvester.dev/hub", ""), ("role", "sensor")])).unwrap();
        let without_role = node(&[("role", "sensor"), ("zone", "north")]);
        let refused = node_update(Some(&stored), &without_role, false, LabelAuthority::Other);
        assert!(matches!(refused, Err(StoreError::Forbidden(ref m)) if m.contains("only an admin")));
        assert!(node_update(Some(&stored), &without_role, false, LabelAuthority::Admin).is_ok());
        let keeps_role = node(&[("node-role.harvester.dev/hub", ""), ("zone", "north")]);
        assert!(node_update(Some(&stored), &keeps_role, false, LabelAuthority::Other).is_ok());
        let adds_role = node(&[("node-role.harvester.dev/hub", "")]);
        assert!(node_update(None, &adds_role, false, LabelAuthority::Other).is_err());
    }
}
