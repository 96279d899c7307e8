//! Code the hub compiled for this node, in three steps: fetch the hub's
//! offer (a signed statement and the code), verify the statement against
//! the compiler keys this node trusts and what this node needs, and store
//! the code in the compile cache while checking it is the code the
//! statement names. Nothing unverified reaches the cache's file name.

use super::Agent;
use super::failure::Failure;
use base64::Engine as _;
use futures::StreamExt;
use harvester_api::compiled::{CompiledStatement, SIGNATURE_HEADER, STATEMENT_HEADER};
use harvester_api::resources::Assignment;
use harvester_api::{Digest, Reason};
use harvester_registry::TrustedKey;
use sha2::Digest as _;
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// What the hub answered: its statement, the signature over it, and the
/// code still to be read.
struct Offer {
    statement: Vec<u8>,
    signature: String,
    body: reqwest::Response,
}

/// What this node needs the statement to name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Needed {
    artifact: Digest,
    component: Digest,
    target: String,
    engine: String,
}

/// Checks the statement is signed by a trusted compiler key and names what
/// this node needs; returns it and the key. The error says why not.
fn verify<'k>(
    statement: &[u8],
    signature: &str,
    trusted: &'k [TrustedKey],
    needed: &Needed,
) -> Result<(CompiledStatement, &'k TrustedKey), String> {
    let Some(key) = trusted.iter().find(|k| k.verifies_bytes(statement, signature)) else {
        return Err(format!(
            "the code the hub compiled for {} is not signed by a compiler key this node trusts ({})",
            needed.artifact,
            trusted
                .iter()
                .map(|k| k.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let st: CompiledStatement =
        serde_json::from_slice(statement).map_err(|e| format!("the hub's statement for {}: {e}", needed.artifact))?;
    for (what, theirs, ours) in [
        ("artifact", st.artifact.to_string(), needed.artifact.to_string()),
        ("component", st.component.to_string(), needed.component.to_string()),
        ("target", st.target.clone(), needed.target.clone()),
        ("engine", st.engine.clone(), needed.engine.clone()),
    ] {
        if theirs != ours {
            return Err(format!(
                "the hub's signed statement for {} names {what} {theirs}, this node needs {ours}",
                needed.artifact
            ));
        }
    }
    Ok((st, key))
}

impl Agent {
    /// Fetches the code the hub compiled for `a` (whose component is
    /// `component`) into the compile cache, verified.
    pub(super) async fn hub_code(&self, a: &Assignment, component: Digest) -> Result<(), Failure> {
        let g = a.generation;
        let refused = |m: String| Failure::compiled_code_refused(g, m);
        let engine = self.runtime.engine();
        let needed = Needed {
            artifact: a.digest,
            component,
            target: harvester_engine::config::host_target(),
            engine: engine.portable_hash().to_string(),
        };
        let started = std::time::Instant::now();
        let offer = self.offer(&needed).await.map_err(|e| match e {
            OfferError::Unavailable(m) => Failure::transient(g, Reason::CompileUnavailable, m),
            OfferError::Malformed(m) => refused(m),
        })?;
        let (st, key) =
            verify(&offer.statement, &offer.signature, &self.opts.trust.compilers, &needed).map_err(refused)?;
        let cache = self.runtime.cache();
        let path = cache.portable_path(engine, &component);
        let size = store(offer.body, &cache.scratch_path(&path), &path, &st, g).await?;
        // Checked against the statement as it arrived; sealed for the check
        // on every later load.
        cache
            .seal(&path, &st.code)
            .map_err(|e| Failure::transient(g, Reason::CompileUnavailable, format!("{}: {e}", path.display())))?;
        self.metrics
            .fetch_seconds
            .with_label_values(&["hub-code"])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            plugin = a.name,
            %component,
            key = key.fingerprint,
            bytes = size,
            ms = started.elapsed().as_millis() as u64,
            "compiled code from the hub verified"
        );
        Ok(())
    }

    async fn offer(&self, needed: &Needed) -> Result<Offer, OfferError> {
        let body = self
            .link
            .compiled(&needed.artifact, &needed.target, &needed.engine)
            .await
            .map_err(|e| OfferError::Unavailable(format!("{e:#}")))?;
        let header = |name: &str| {
            body.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    OfferError::Malformed(format!("the hub's answer for {} has no {name} header", needed.artifact))
                })
        };
        let statement = base64::engine::general_purpose::STANDARD
            .decode(header(STATEMENT_HEADER)?)
            .map_err(|e| {
                OfferError::Malformed(format!(
                    "the hub's statement for {} is not base64: {e}",
                    needed.artifact
                ))
            })?;
        let signature = header(SIGNATURE_HEADER)?;
        Ok(Offer {
            statement,
            signature,
            body,
        })
    }
}

enum OfferError {
    /// The hub cannot help now: compile here if allowed, or retry.
    Unavailable(String),
    /// The hub answered something this node will not use.
    Malformed(String),
}

/// Streams the code to `tmp` (a Python component's code is ~30 MB and never
/// sits in memory), checks its size and digest against the statement, and
/// only then renames it to `path`, where the cache loads it.
async fn store(
    body: reqwest::Response,
    tmp: &Path,
    path: &Path,
    st: &CompiledStatement,
    g: u64,
) -> Result<u64, Failure> {
    let unavailable = |m: String| Failure::transient(g, Reason::CompileUnavailable, m);
    let written = async {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
        let mut sha = sha2::Sha256::new();
        let mut size = 0u64;
        let mut chunks = body.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|e| unavailable(format!("downloading compiled code for {}: {e}", st.artifact)))?;
            size += chunk.len() as u64;
            if size > st.size {
                return Err(Failure::compiled_code_refused(
                    g,
                    format!(
                        "the hub sent more than the {} bytes its statement for {} names",
                        st.size, st.artifact
                    ),
                ));
            }
            sha.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
        }
        file.sync_all()
            .await
            .map_err(|e| unavailable(format!("{}: {e}", tmp.display())))?;
        let actual = Digest::from_sha256(sha);
        if size != st.size || actual != st.code {
            return Err(Failure::compiled_code_refused(
                g,
                format!(
                    "the code the hub sent for {} is not what it signed: {size} bytes with digest {actual}, signed {} bytes with {}",
                    st.artifact, st.size, st.code
                ),
            ));
        }
        Ok(size)
    }
    .await;
    let size = match written {
        Ok(size) => size,
        Err(f) => {
            let _ = std::fs::remove_file(tmp);
            return Err(f);
        }
    };
    std::fs::rename(tmp, path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvester_registry::SigningKey;

    fn needed() -> Needed {
        Needed {
            artifact: Digest::of(b"artifact"),
            component: Digest::of(b"component"),
            target: "aarch64-unknown-linux-gnu".into(),
            engine: "e1".into(),
        }
    }

    fn statement(n: &Needed) -> Vec<u8> {
        serde_json::to_vec(&CompiledStatement {
            artifact: n.artifact,
            component: n.component,
            target: n.target.clone(),
            engine: n.engine.clone(),
            code: Digest::of(b"code"),
            size: 4,
        })
        .unwrap()
    }

    fn key(dir: &Path, name: &str) -> (SigningKey, TrustedKey) {
        let k = SigningKey::load_or_create_unattended(&dir.join(name)).unwrap();
        let t = TrustedKey::from_signing_key(&k).unwrap();
        (k, t)
    }

    #[test]
    fn a_statement_is_used_only_when_a_trusted_key_signed_what_this_node_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, trusted) = key(dir.path(), "hub.key");
        let (other, _) = key(dir.path(), "other.key");
        let n = needed();
        let st = statement(&n);
        let sig = hub.sign_bytes(&st).unwrap();
        let keys = [trusted];

        let (ok, by) = verify(&st, &sig, &keys, &n).expect("signed by the trusted key");
        assert_eq!(ok.component, n.component);
        assert_eq!(by.fingerprint, keys[0].fingerprint);

        let err = verify(&st, &other.sign_bytes(&st).unwrap(), &keys, &n).unwrap_err();
        assert!(err.contains("not signed by a compiler key this node trusts"), "{err}");

        let other_engine = Needed {
            engine: "e2".into(),
            ..n.clone()
        };
        let err = verify(&st, &sig, &keys, &other_engine).unwrap_err();
        assert!(err.contains("names engine e1, this node needs e2"), "{err}");

        let mut tampered = st.clone();
        tampered[3] ^= 1;
        assert!(verify(&tampered, &sig, &keys, &n).is_err(), "a changed statement");
    }
}
