//! Getting an assignment's component: from the local store, the hub (an
//! uploaded component, checked against its digest) or an OCI registry
//! (its signature checked first, once, and remembered for restarts).

use super::Agent;
use super::failure::Failure;
use harvester_api::resources::Assignment;
use harvester_api::{Digest, Reason};
use harvester_registry::{PullError, Reference, Refusal};
use std::path::{Path, PathBuf};

/// Recorded when a signature checked out, so a restart with the registry
/// down runs the same verified bytes from the local store.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VerifiedRecord {
    repository: String,
    key: String,
}

fn verified_path(data: &Path, digest: &Digest) -> PathBuf {
    data.join("verified").join(format!("{}.json", digest.hex()))
}

impl Agent {
    /// A component uploaded to the controller: from the local store, else
    /// downloaded and checked against its digest.
    pub(super) async fn controller_blob(&self, a: &Assignment) -> Result<Vec<u8>, Failure> {
        let g = a.generation;
        let digest = a.digest;
        let store = self.store.clone();
        let local = crate::log_tap::spawn_blocking(move || store.get(&digest))
            .await
            .map_err(|e| Failure::transient(g, Reason::PullFailed, e))?
            .map_err(|e| Failure::transient(g, Reason::PullFailed, format!("local store: {e}")))?;
        if let Some(bytes) = local {
            return Ok(bytes);
        }
        let bytes = self
            .link
            .blob(&digest)
            .await
            .map_err(|e| Failure::transient(g, Reason::PullFailed, format!("{e:#}")))?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(Failure::refused(
                g,
                &Refusal::DigestMismatch {
                    what: format!("component {digest} from the controller"),
                    expected: digest,
                    actual,
                },
            ));
        }
        let store = self.store.clone();
        let b = bytes.clone();
        crate::log_tap::spawn_blocking(move || store.put(&digest, &b))
            .await
            .map_err(|e| Failure::transient(g, Reason::PullFailed, e))?
            .map_err(|e| Failure::transient(g, Reason::PullFailed, format!("local store: {e}")))?;
        Ok(bytes)
    }

    /// Checks an OCI image pinned by digest is signed by a key this node
    /// trusts (once; remembered for restarts). Returns whether it runs
    /// unsigned (--allow-unsigned).
    pub(super) async fn verify_oci(&self, a: &Assignment, reference: &Reference) -> Result<bool, Failure> {
        let g = a.generation;
        let repository = harvester_registry::repository(reference);
        let record_path = verified_path(&self.opts.data_dir, &a.digest);
        let trusted_before = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VerifiedRecord>(&b).ok())
            .is_some_and(|r| r.repository == repository && self.opts.trust.keys.iter().any(|k| k.fingerprint == r.key));
        if trusted_before {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let outcome = self.registry.verify(reference, &a.digest, &self.opts.trust.keys).await;
        self.metrics
            .fetch_seconds
            .with_label_values(&["verify"])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(v) => {
                tracing::info!(plugin = a.name, image = %a.image, artifact = %a.digest, key = v.key, "signature verified");
                let record = serde_json::to_vec(&VerifiedRecord { repository, key: v.key })
                    .map_err(|e| Failure::transient(g, Reason::PullFailed, e))?;
                let _ = harvester_registry::store::write_atomic(&record_path, &record);
                Ok(false)
            }
            Err(PullError::Refused(r)) if self.opts.trust.allow_unsigned && r.reason() == Reason::SignatureInvalid => {
                tracing::warn!(
                    plugin = a.name,
                    "RUNNING UNVERIFIED CODE because of --allow-unsigned: {r}"
                );
                Ok(true)
            }
            Err(e) => Err(Failure::pulling(g, e)),
        }
    }

    /// The component bytes of a verified OCI image, pulled and checked.
    pub(super) async fn oci_bytes(&self, a: &Assignment, reference: &Reference) -> Result<Vec<u8>, Failure> {
        let started = std::time::Instant::now();
        let pulled = self
            .registry
            .pull(reference, &a.digest, &self.store, &indicatif::ProgressBar::hidden())
            .await;
        self.metrics
            .fetch_seconds
            .with_label_values(&["pull"])
            .observe(started.elapsed().as_secs_f64());
        pulled.map_err(|e| Failure::pulling(a.generation, e))
    }

    /// The digest of the component (the WebAssembly bytes) an assignment
    /// names: the artifact itself for an uploaded component, the layer's for
    /// an OCI image.
    pub(super) async fn component_digest(
        &self,
        a: &Assignment,
        reference: Option<&Reference>,
    ) -> Result<Digest, Failure> {
        match reference {
            None => Ok(a.digest),
            Some(r) => self
                .registry
                .component_digest(r, &a.digest, &self.store)
                .await
                .map_err(|e| Failure::pulling(a.generation, e)),
        }
    }
}
