//! Talking to OCI registries: push a component, resolve a tag, pull by
//! digest into the local store, read and add cosign signatures.
//!
//! Plain HTTP is used only for loopback registries and hosts named with
//! `--insecure-registry`; everything else is HTTPS.

use crate::artifact::{self, ComponentLayer};
use crate::auth::Credentials;
use crate::fetch::{Body, FetchError, FetchLimits, Fetcher};
use crate::signing::{self, Refusal, SignatureLayer, SigningKey, TrustedKey, Verified};
use crate::store::BlobStore;
use futures::StreamExt;
use harvester_api::Digest;
use indicatif::ProgressBar;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`) reached over plain HTTP although they
    /// are not loopback.
    pub insecure: Vec<String>,
    pub credentials: Credentials,
    /// What registries may send, and how long they may take.
    pub limits: FetchLimits,
}

/// Why a pull did not produce a component.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The artifact itself is unacceptable: final for this digest.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The registry could not be reached or answered an error: worth retrying.
    #[error("{0:#}")]
    Registry(anyhow::Error),
}

/// A parsed `host/repository[:tag][@digest]`, with a friendly error.
pub fn parse_reference(s: &str) -> anyhow::Result<Reference> {
    s.parse::<Reference>()
        .map_err(|e| anyhow::anyhow!("{s:?} is not an OCI reference (host/repository:tag or @sha256:...): {e}"))
}

/// `registry/repository`, the identity a signature names.
pub fn repository(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// `registry/repository@digest`.
pub fn pinned(reference: &Reference, digest: &Digest) -> Reference {
    Reference::with_digest(
        reference.registry().to_string(),
        reference.repository().to_string(),
        digest.to_string(),
    )
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    }
}

/// What `push` produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `registry/repository@sha256:...` of the manifest.
    pub reference: String,
    pub digest: Digest,
    pub layer_digest: Digest,
    pub size: u64,
}

pub struct Registry {
    opts: RegistryOptions,
    /// For pushes, to a registry the user chose.
    clients: Mutex<HashMap<String, Client>>,
    /// For every read: bounded in size and time.
    fetcher: Fetcher,
}

impl Registry {
    pub fn new(opts: RegistryOptions) -> Registry {
        // Fails only when no TLS backend can be set up at all: at start, never
        // from anything a registry sends.
        let fetcher = Fetcher::new(opts.limits).expect("an HTTP client for registries");
        Registry {
            opts,
            clients: Mutex::new(HashMap::new()),
            fetcher,
        }
    }

    /// `http://host` or `https://host` for `reference`'s registry.
    fn base(&self, reference: &Reference) -> String {
        let registry = reference.resolve_registry();
        let scheme = if self.is_plain_http(registry) { "http" } else { "https" };
        format!("{scheme}://{registry}")
    }

    /// A fetch failure as a pull error: too large is final, the rest may pass.
    fn pull_error(e: FetchError) -> PullError {
        match e {
            FetchError::TooLarge { what, size, limit } => PullError::Refused(Refusal::TooLarge { what, size, limit }),
            other => PullError::Registry(Self::fetch_context(other)),
        }
    }

    fn fetch_context(e: FetchError) -> anyhow::Error {
        match e {
            FetchError::Unauthorized { what } => anyhow::anyhow!(
                "{what}: the registry refused the credentials (or wants some): log in with `docker login`, `oras login` or `skopeo login --authfile`, or put them in {}",
                Credentials::default_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "$DOCKER_CONFIG/config.json".into())
            ),
            other => anyhow::anyhow!("{other}"),
        }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// Whether `registry` is reached over plain HTTP.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .opts
                .insecure
                .iter()
                .any(|h| h == registry || registry.split(':').next() == Some(h.as_str()))
    }

    fn client(&self, reference: &Reference) -> (Client, RegistryAuth) {
        let registry = reference.resolve_registry().to_string();
        let auth = self.opts.credentials.for_registry(reference.registry());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = clients
            .entry(registry.clone())
            .or_insert_with(|| {
                let protocol = if self.is_plain_http(&registry) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    ..ClientConfig::default()
                })
            })
            .clone();
        (client, auth)
    }

    fn context(reference: &Reference, what: &str, e: OciDistributionError) -> anyhow::Error {
        if is_unauthorized(&e) {
            return anyhow::anyhow!(
                "{what} {reference}: the registry {} refused the credentials (or wants some): log in with `docker login`, `oras login` or `skopeo login --authfile`, or put them in {}",
                reference.registry(),
                Credentials::default_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "$DOCKER_CONFIG/config.json".into())
            );
        }
        anyhow::anyhow!("{what} {reference}: {e}")
    }

    /// Uploads `component` as a wasm artifact at `target` (a tag), returning
    /// the manifest digest everything should refer to from now on.
    pub async fn push(
        &self,
        target: &Reference,
        component: &[u8],
        title: &str,
        progress: &ProgressBar,
    ) -> anyhow::Result<Pushed> {
        artifact::check_component(component).map_err(|e| anyhow::anyhow!("{title}: {e}"))?;
        let (client, auth) = self.client(target);
        client
            .auth(target, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| Self::context(target, "authenticating to push", e))?;
        let created = rfc3339_now();
        let built = artifact::build(component, title, &created);
        let layer = built.layer_digest.to_string();

        progress.set_length(component.len() as u64);
        let exists = client.blob_exists(target, &layer).await.unwrap_or(false);
        if !exists {
            let chunks: Vec<bytes::Bytes> = bytes::Bytes::copy_from_slice(component)
                .chunks(1 << 20)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let pb = progress.clone();
            let stream = futures::stream::iter(chunks).map(move |c| {
                pb.inc(c.len() as u64);
                Ok(c)
            });
            client
                .push_blob_stream(target, stream, &layer, Some(component.len() as u64))
                .await
                .map_err(|e| Self::context(target, "uploading the component to", e))?;
        }
        progress.set_position(component.len() as u64);
        let config_digest = Digest::of(&built.config).to_string();
        if !client.blob_exists(target, &config_digest).await.unwrap_or(false) {
            client
                .push_blob(target, built.config.clone(), &config_digest)
                .await
                .map_err(|e| Self::context(target, "uploading the config to", e))?;
        }
        let digest = Digest::of(&built.manifest);
        client
            .push_manifest_raw(
                target,
                built.manifest,
                artifact::MANIFEST_MEDIA_TYPE.parse().expect("a valid header value"),
            )
            .await
            .map_err(|e| Self::context(target, "pushing the manifest to", e))?;
        progress.finish_and_clear();
        Ok(Pushed {
            reference: pinned(target, &digest).whole(),
            digest,
            layer_digest: built.layer_digest,
            size: component.len() as u64,
        })
    }

    /// The raw manifest at `reference` (a tag or a digest) and its digest.
    async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, Digest), FetchError> {
        let auth = self.opts.credentials.for_registry(reference.registry());
        let part = reference
            .digest()
            .map(str::to_string)
            .unwrap_or_else(|| reference.tag().unwrap_or("latest").to_string());
        let bytes = self
            .fetcher
            .manifest(
                reference,
                &part,
                &self.base(reference),
                &auth,
                &[artifact::MANIFEST_MEDIA_TYPE, artifact::DOCKER_MANIFEST_MEDIA_TYPE],
            )
            .await?;
        let digest = Digest::of(&bytes);
        Ok((bytes, digest))
    }

    /// Resolves a tag (or checks a digest) to the manifest digest of a wasm
    /// component artifact.
    pub async fn resolve(&self, reference: &Reference) -> Result<(Digest, ComponentLayer), PullError> {
        let (bytes, digest) = self.manifest(reference).await.map_err(|e| match e {
            FetchError::NotFound(_) => {
                PullError::Registry(anyhow::anyhow!("{reference}: no such image in the registry"))
            }
            e => Self::pull_error(e),
        })?;
        if let Some(want) = reference.digest()
            && want != digest.to_string()
        {
            let expected: Digest = want
                .parse()
                .map_err(|e: String| PullError::Registry(anyhow::anyhow!(e)))?;
            return Err(Refusal::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected,
                actual: digest,
            }
            .into());
        }
        let layer = artifact::component_layer(&bytes).map_err(|problem| Refusal::NotAComponent {
            image: reference.whole(),
            problem,
        })?;
        Ok((digest, layer))
    }

    /// Every cosign signature layer of `digest` in `reference`'s repository.
    /// An empty list means unsigned; an error means the registry could not
    /// say.
    pub async fn signatures(&self, reference: &Reference, digest: &Digest) -> anyhow::Result<Vec<SignatureLayer>> {
        let sig_ref = Reference::with_tag(
            reference.registry().to_string(),
            reference.repository().to_string(),
            signing::signature_tag(digest),
        );
        let bytes = match self.manifest(&sig_ref).await {
            Ok((bytes, _)) => bytes,
            Err(FetchError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Self::fetch_context(e).context(format!("reading the signatures of {reference}"))),
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the signature manifest of {reference} is not JSON: {e}"))?;
        let mut out = Vec::new();
        // A real image has a handful; more is a registry trying to make
        // this side fetch without end.
        const MAX_SIGNATURES: usize = 64;
        for layer in manifest["layers"].as_array().into_iter().flatten().take(MAX_SIGNATURES) {
            if layer["mediaType"].as_str() != Some(signing::SIGNATURE_LAYER_MEDIA_TYPE) {
                continue;
            }
            let Some(signature) = layer["annotations"][signing::SIGNATURE_ANNOTATION].as_str() else {
                continue;
            };
            let Some(d) = layer["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
                continue;
            };
            let payload = self
                .blob(&sig_ref, &d, Body::Signature, &ProgressBar::hidden())
                .await
                .map_err(|e| match e {
                    PullError::Refused(r) => anyhow::anyhow!("{r}"),
                    PullError::Registry(e) => e,
                })?;
            out.push(SignatureLayer {
                payload,
                signature: signature.to_string(),
            });
        }
        Ok(out)
    }

    /// Checks `reference@digest` is signed, for this repository, by one of
    /// `keys`.
    pub async fn verify(
        &self,
        reference: &Reference,
        digest: &Digest,
        keys: &[TrustedKey],
    ) -> Result<Verified, PullError> {
        let sigs = self.signatures(reference, digest).await.map_err(PullError::Registry)?;
        Ok(signing::verify(&repository(reference), digest, &sigs, keys)?)
    }

    /// Adds a signature of `reference@digest` by `key`, keeping every
    /// signature already there. Returns how many signatures it now has.
    pub async fn sign(&self, reference: &Reference, digest: &Digest, key: &SigningKey) -> anyhow::Result<usize> {
        let repo = repository(reference);
        let mut layers = self.signatures(reference, digest).await?;
        let (payload, signature) = key.sign(&repo, digest)?;
        // ECDSA signatures differ every time; one per key is enough.
        let own = TrustedKey::from_signing_key(key)?;
        if layers
            .iter()
            .any(|l| signing::verify(&repo, digest, std::slice::from_ref(l), std::slice::from_ref(&own)).is_ok())
        {
            return Ok(layers.len());
        }
        layers.push(SignatureLayer { payload, signature });

        let sig_ref = Reference::with_tag(
            reference.registry().to_string(),
            reference.repository().to_string(),
            signing::signature_tag(digest),
        );
        let (client, auth) = self.client(&sig_ref);
        client
            .auth(&sig_ref, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| Self::context(&sig_ref, "authenticating to push", e))?;
        let mut descriptors = Vec::new();
        for l in &layers {
            let d = Digest::of(&l.payload);
            if !client.blob_exists(&sig_ref, &d.to_string()).await.unwrap_or(false) {
                client
                    .push_blob(&sig_ref, l.payload.clone(), &d.to_string())
                    .await
                    .map_err(|e| Self::context(&sig_ref, "uploading a signature to", e))?;
            }
            descriptors.push(serde_json::json!({
                "mediaType": signing::SIGNATURE_LAYER_MEDIA_TYPE,
                "digest": d.to_string(),
                "size": l.payload.len(),
                "annotations": { signing::SIGNATURE_ANNOTATION: l.signature },
            }));
        }
        // cosign's own config for signature images: the layer diff ids.
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| Digest::of(&l.payload).to_string()).collect::<Vec<_>>(),
            },
        }))?;
        let config_digest = Digest::of(&config).to_string();
        client
            .push_blob(&sig_ref, config.clone(), &config_digest)
            .await
            .map_err(|e| Self::context(&sig_ref, "uploading the signature config to", e))?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": artifact::MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": signing::SIGNATURE_CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descriptors,
        }))?;
        client
            .push_manifest_raw(
                &sig_ref,
                manifest,
                artifact::MANIFEST_MEDIA_TYPE.parse().expect("a valid header value"),
            )
            .await
            .map_err(|e| Self::context(&sig_ref, "pushing signatures to", e))?;
        Ok(layers.len())
    }

    /// Downloads one blob (within `body`'s cap) and checks it against its digest.
    async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        body: Body,
        progress: &ProgressBar,
    ) -> Result<Vec<u8>, PullError> {
        let auth = self.opts.credentials.for_registry(reference.registry());
        let bytes = self
            .fetcher
            .blob(reference, digest, &self.base(reference), &auth, body, |n| {
                progress.inc(n)
            })
            .await
            .map_err(Self::pull_error);
        progress.finish_and_clear();
        let bytes = bytes?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(Refusal::DigestMismatch {
                what: format!("blob of {}", repository(reference)),
                expected: *digest,
                actual,
            }
            .into());
        }
        Ok(bytes)
    }

    /// The manifest of `reference@digest`, from `store` when present and
    /// intact, else from the registry, checked against the digest and kept.
    async fn pinned_manifest(
        &self,
        reference: &Reference,
        digest: &Digest,
        store: &BlobStore,
    ) -> Result<Vec<u8>, PullError> {
        let at = pinned(reference, digest);
        let io = |e: std::io::Error| PullError::Registry(anyhow::anyhow!("local store: {e}"));
        if let Some(m) = store.get(digest).map_err(io)? {
            return Ok(m);
        }
        let (bytes, actual) = self.manifest(&at).await.map_err(Self::pull_error)?;
        if &actual != digest {
            return Err(Refusal::DigestMismatch {
                what: format!("manifest of {at}"),
                expected: *digest,
                actual,
            }
            .into());
        }
        store.put(digest, &bytes).map_err(io)?;
        Ok(bytes)
    }

    /// The digest of the component inside `reference@digest`, reading only
    /// its manifest (kept in `store`).
    pub async fn component_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
        store: &BlobStore,
    ) -> Result<Digest, PullError> {
        let manifest = self.pinned_manifest(reference, digest, store).await?;
        let layer = artifact::component_layer(&manifest).map_err(|problem| Refusal::NotAComponent {
            image: pinned(reference, digest).whole(),
            problem,
        })?;
        Ok(layer.digest)
    }

    /// The component of `reference@digest`: its manifest and layer from
    /// `store` when present and intact, else from the registry, checked and
    /// kept. Signatures are not checked here: call `verify` first.
    pub async fn pull(
        &self,
        reference: &Reference,
        digest: &Digest,
        store: &BlobStore,
        progress: &ProgressBar,
    ) -> Result<Vec<u8>, PullError> {
        let at = pinned(reference, digest);
        let io = |e: std::io::Error| PullError::Registry(anyhow::anyhow!("local store: {e}"));
        let manifest = self.pinned_manifest(reference, digest, store).await?;
        let layer = artifact::component_layer(&manifest).map_err(|problem| Refusal::NotAComponent {
            image: at.whole(),
            problem,
        })?;
        if let Some(bytes) = store.get(&layer.digest).map_err(io)? {
            return Ok(bytes);
        }
        if layer.size > self.fetcher.limits().layer_bytes {
            return Err(Refusal::TooLarge {
                what: format!("the component of {}", at.whole()),
                size: layer.size.to_string(),
                limit: self.fetcher.limits().layer_bytes,
            }
            .into());
        }
        let bytes = self.blob(&at, &layer.digest, Body::Layer, progress).await?;
        artifact::check_component(&bytes).map_err(|problem| Refusal::NotAComponent {
            image: at.whole(),
            problem,
        })?;
        store.put(&layer.digest, &bytes).map_err(io)?;
        Ok(bytes)
    }
}

/// Now, as RFC 3339 in UTC (the OCI `created` annotation's format).
fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_named_hosts() {
        let r = Registry::new(RegistryOptions {
            insecure: vec!["lab.local:5000".into(), "10.0.0.9".into()],
            ..RegistryOptions::default()
        });
        assert!(r.is_plain_http("127.0.0.1:5000"));
        assert!(r.is_plain_http("localhost:5000"));
        assert!(r.is_plain_http("[::1]:5000"));
        assert!(r.is_plain_http("lab.local:5000"));
        assert!(r.is_plain_http("10.0.0.9:5000"));
        assert!(!r.is_plain_http("lab.local:5001"));
        assert!(!r.is_plain_http("ghcr.io"));
        assert!(!r.is_plain_http("127.0.0.1.example.com:5000"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
