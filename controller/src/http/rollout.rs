//! A Plugin's rollout for people: its revisions, and the decisions a
//! person takes on a rollout under way (pause, resume, promote, abort)
//! or after it (undo to an earlier revision). The reconciler acts on each
//! at its next pass; every one is in the audit trail as a write.

use super::access::Caller;
use super::{Api, ApiError};
use crate::store::{Kind, StoreError, Write};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use harvester_api::Reason;
use harvester_api::resources::Plugin;
use harvester_api::rollout::{RolloutPhase, RolloutStatus};
use serde::Deserialize;
use serde_json::json;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1alpha1/plugins/{name}/revisions", get(revisions))
        .route("/api/v1alpha1/plugins/{name}/rollout/undo", post(undo))
        .route("/api/v1alpha1/plugins/{name}/rollout/{action}", post(decide))
}

fn who(caller: &crate::identity::Identity) -> String {
    match caller {
        crate::identity::Identity::User { name, .. } => name.clone(),
        _ => String::new(),
    }
}

async fn revisions(State(api): State<Api>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let plugin = load(&api, &name)?;
    let items = api.reconciler.revisions(&name)?;
    let rollout = plugin.status.and_then(|s| s.rollout);
    Ok(Json(json!({"items": items, "rollout": rollout})).into_response())
}

fn load(api: &Api, name: &str) -> Result<Plugin, ApiError> {
    Ok(stored_plugin(api.store.get(Kind::Plugin, name)?.as_ref(), name)?)
}

/// The stored Plugin `name`, or NotFound.
fn stored_plugin(value: Option<&serde_json::Value>, name: &str) -> Result<Plugin, StoreError> {
    let value = value.ok_or_else(|| StoreError::NotFound {
        kind: "Plugin",
        name: name.to_string(),
    })?;
    Ok(serde_json::from_value(value.clone())?)
}

/// pause, resume, promote or abort: a change of the rollout's status,
/// written durably; refused when it means nothing now.
async fn decide(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !["pause", "resume", "promote", "abort"].contains(&action.as_str()) {
        return Err(ApiError::not_found(format!(
            "no rollout action {action:?}: use pause, resume, promote, abort or undo"
        )));
    }
    let by = who(&caller);
    let (stored, _) = api
        .store
        .write(Kind::Plugin, &name, |cur| {
            let mut p = stored_plugin(cur, &name)?;
            let status = p.status.get_or_insert_with(Default::default);
            let Some(r) = status.rollout.as_mut() else {
                return Err(StoreError::Invalid(format!(
                    "plugin/{name} has no rollout yet: apply it first"
                )));
            };
            apply_decision(r, &action, &by).map_err(StoreError::Invalid)?;
            Ok(Write::Put(serde_json::to_value(p)?))
        })
        .await?;
    api.reconciler.poke();
    let rollout = stored
        .and_then(|v| serde_json::from_value::<Plugin>(v).ok())
        .and_then(|p| p.status?.rollout);
    Ok(Json(json!({"plugin": name, "action": action, "rollout": rollout})).into_response())
}

fn apply_decision(r: &mut RolloutStatus, action: &str, by: &str) -> Result<(), String> {
    let done = matches!(r.phase, RolloutPhase::Complete | RolloutPhase::Aborted);
    let said = |what: &str| format!("the rollout of revision {} is {what}", r.revision);
    match action {
        _ if done => Err(said(&format!(
            "{}: nothing to {action}",
            r.phase.as_str().to_lowercase()
        ))),
        "pause" if r.paused => Err(said("paused already")),
        "pause" => {
            r.paused = true;
            Ok(())
        }
        "resume" if !r.paused => Err(said("not paused (promote ends a pause step)")),
        "resume" => {
            r.paused = false;
            Ok(())
        }
        "promote" => {
            r.promote = Some(r.step);
            r.paused = false;
            Ok(())
        }
        "abort" => {
            r.phase = RolloutPhase::Aborted;
            r.reason = Some(Reason::AbortedByUser);
            r.message = if by.is_empty() {
                "aborted".into()
            } else {
                format!("aborted by {by}")
            };
            Ok(())
        }
        _ => Err(format!("no rollout action {action:?}")),
    }
}

#[derive(Deserialize)]
struct UndoQuery {
    #[serde(rename = "toRevision")]
    to_revision: Option<u64>,
}

/// Runs an earlier revision again, as a new revision (as `kubectl rollout
/// undo` does): by default the one before the newest.
async fn undo(
    State(api): State<Api>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(q): Query<UndoQuery>,
) -> Result<Response, ApiError> {
    let plugin = load(&api, &name)?;
    let revisions = api.reconciler.revisions(&name)?;
    let newest = revisions
        .last()
        .ok_or_else(|| ApiError::invalid(format!("plugin/{name} has no revisions yet")))?;
    let to = match q.to_revision {
        Some(n) => revisions.iter().find(|r| r.number == n).ok_or_else(|| {
            let kept: Vec<String> = revisions.iter().map(|r| r.number.to_string()).collect();
            ApiError::not_found(format!("plugin/{name} has no revision {n} (kept: {})", kept.join(", ")))
        })?,
        None => revisions
            .iter()
            .rev()
            .find(|r| r.number != newest.number && !r.runs(&newest.digest, &newest.run))
            .ok_or_else(|| ApiError::invalid(format!("plugin/{name} has no earlier revision to go back to")))?,
    };
    if plugin.spec.digest == Some(to.digest) && plugin.spec.run == to.run {
        return Err(ApiError::invalid(format!(
            "plugin/{name} already runs what revision {} runs",
            to.number
        )));
    }
    api.reconciler
        .note_change(&name, &who(&caller), Some(format!("undo to revision {}", to.number)));
    let generation = plugin.metadata.generation;
    let (stored, _) = api
        .store
        .write(Kind::Plugin, &name, |cur| {
            let mut p = stored_plugin(cur, &name)?;
            if p.metadata.generation != generation {
                return Err(StoreError::Invalid(format!(
                    "plugin/{name} changed meanwhile (generation {}); look at its history again",
                    p.metadata.generation
                )));
            }
            p.spec.image = to.image.clone();
            p.spec.digest = Some(to.digest);
            p.spec.run = to.run.clone();
            p.metadata.generation += 1;
            Ok(Write::Put(serde_json::to_value(p)?))
        })
        .await?;
    let generation = stored
        .as_ref()
        .and_then(|v| v["metadata"]["generation"].as_u64())
        .unwrap_or_default();
    Ok(Json(json!({"plugin": name, "undoneTo": to.number, "generation": generation})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_apply_only_while_a_rollout_is_under_way() {
        let mut r = RolloutStatus {
            revision: 3,
            ..Default::default()
        };
        apply_decision(&mut r, "pause", "alice").unwrap();
        assert!(
            apply_decision(&mut r, "pause", "alice")
                .unwrap_err()
                .contains("paused already")
        );
        apply_decision(&mut r, "resume", "alice").unwrap();
        assert!(!r.paused);
        r.step = 2;
        apply_decision(&mut r, "promote", "alice").unwrap();
        assert_eq!(r.promote, Some(2));
        apply_decision(&mut r, "abort", "alice").unwrap();
        assert_eq!(
            (r.phase, r.message.as_str()),
            (RolloutPhase::Aborted, "aborted by alice")
        );
        let e = apply_decision(&mut r, "resume", "alice").unwrap_err();
        assert!(e.contains("revision 3 is aborted: nothing to resume"), "{e}");
    }
}
