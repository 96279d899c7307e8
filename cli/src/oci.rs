//! `harvester keygen | push | sign | verify`: signed plugins in an OCI
//! registry, compatible with cosign's key-based signatures.

use anyhow::{Context, bail};
use harvester_api::Digest;
use harvester_registry::{
    Credentials, PullError, Registry, RegistryOptions, SigningKey, TrustedKey, generate_key_pair, parse_reference,
    progress_bar,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub fn registry(insecure: &[String], limits: harvester_registry::FetchLimits) -> anyhow::Result<Registry> {
    Ok(Registry::new(RegistryOptions {
        insecure: insecure.to_vec(),
        credentials: Credentials::from_environment()?,
        limits,
    }))
}

/// What a registry may send and how long it may take, for the commands that
/// read from registries they should not have to trust.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryLimits {
    /// The largest component accepted from a registry (manifests are capped
    /// at 4Mi, signatures at 1Mi).
    #[arg(long, value_name = "SIZE", default_value = "128Mi")]
    pub max_component_size: harvester_api::MemorySize,
    /// How long a registry may take to connect or go silent mid-answer;
    /// an answer may take four times this in all (a component more, by its size).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub registry_timeout: harvester_api::DurationSpec,
}

impl RegistryLimits {
    pub fn limits(&self) -> harvester_registry::FetchLimits {
        let t = self.registry_timeout.as_duration();
        harvester_registry::FetchLimits {
            layer_bytes: self.max_component_size.bytes(),
            connect_timeout: t.min(std::time::Duration::from_secs(10)),
            idle_timeout: t,
            total_timeout: t * 4,
            ..Default::default()
        }
    }
}

/// The key password, as cosign takes it: `COSIGN_PASSWORD`, else a prompt
/// on a terminal.
fn password(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("COSIGN_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("set COSIGN_PASSWORD to the key's password (no terminal to ask on)");
    }
    let p = Zeroizing::new(rpassword::prompt_password("Enter password for private key: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Enter password for private key again: ")?);
        if *again != *p {
            bail!("the passwords differ");
        }
    }
    Ok(p)
}

/// Writes `PREFIX.key` (encrypted, mode 0600) and `PREFIX.pub`, never over
/// existing files.
pub fn keygen(prefix: &Path) -> anyhow::Result<()> {
    let key = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&key, &public] {
        if p.exists() {
            bail!("{} exists: refusing to overwrite a key", p.display());
        }
    }
    let pw = password(true)?;
    let (private_pem, public_pem) = generate_key_pair(pw.as_bytes())?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("creating {}", key.display()))?;
        f.write_all(private_pem.as_bytes())?;
    }
    std::fs::write(&public, public_pem).with_context(|| format!("writing {}", public.display()))?;
    let fp = TrustedKey::load(&public)?.fingerprint;
    println!(
        "Private key written to {} (encrypted with the password)\nPublic key written to {} (fingerprint {fp})",
        key.display(),
        public.display()
    );
    Ok(())
}

pub fn signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pw = password(false)?;
    SigningKey::load(path, pw.as_bytes())
}

pub async fn push(file: &Path, target: &str, key: Option<&Path>, insecure: &[String]) -> anyhow::Result<()> {
    let reference = parse_reference(target)?;
    if reference.digest().is_some() {
        bail!("{target}: push to a tag (host/repository:tag); the digest is computed from the content");
    }
    // Decrypt first: a wrong password should not leave an unsigned push behind.
    let key = key.map(signing_key).transpose()?;
    push_signed(&registry(insecure, Default::default())?, &reference, file, key.as_ref()).await?;
    Ok(())
}

/// Pushes `file` to `reference` (a tag) with a progress bar, then signs the
/// pushed digest with `key` if given; says what it did.
pub async fn push_signed(
    registry: &Registry,
    reference: &harvester_registry::Reference,
    file: &Path,
    key: Option<&SigningKey>,
) -> anyhow::Result<harvester_registry::Pushed> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let title = file.file_name().and_then(|n| n.to_str()).unwrap_or("plugin.wasm");
    let started = std::time::Instant::now();
    let pushed = registry
        .push(reference, &bytes, title, &progress_bar(&format!("pushing {title}")))
        .await?;
    println!(
        "pushed {} ({:.1} MB) in {:.2}s",
        pushed.reference,
        pushed.size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    if let Some(key) = key {
        let n = registry.sign(reference, &pushed.digest, key).await?;
        println!(
            "signed {} with key {} ({n} signature(s))",
            pushed.reference, key.fingerprint
        );
    }
    Ok(pushed)
}

pub async fn sign(target: &str, key: &Path, insecure: &[String]) -> anyhow::Result<()> {
    let reference = parse_reference(target)?;
    let key = signing_key(key)?;
    let registry = registry(insecure, Default::default())?;
    let digest = resolve(&registry, target).await?;
    let n = registry.sign(&reference, &digest, &key).await?;
    println!(
        "signed {}@{digest} with key {} ({n} signature(s))",
        harvester_registry::repository(&reference),
        key.fingerprint
    );
    Ok(())
}

async fn resolve(registry: &Registry, target: &str) -> anyhow::Result<Digest> {
    Ok(registry.resolve(&parse_reference(target)?).await?.0)
}

/// What `verify` and `pull` establish first: the digest `target` names now
/// and which of `keys` signed it for its repository.
struct Checked {
    registry: Registry,
    reference: harvester_registry::Reference,
    digest: Digest,
    keys: Vec<TrustedKey>,
    signer: String,
}

async fn check(
    target: &str,
    keys: &[PathBuf],
    insecure: &[String],
    limits: harvester_registry::FetchLimits,
) -> anyhow::Result<Checked> {
    if keys.is_empty() {
        bail!("name at least one public key with --key");
    }
    let keys: Vec<TrustedKey> = keys
        .iter()
        .map(|k| TrustedKey::load(k))
        .collect::<anyhow::Result<_>>()?;
    let reference = parse_reference(target)?;
    let registry = registry(insecure, limits)?;
    let digest = resolve(&registry, target).await?;
    let signer = match registry.verify(&reference, &digest, &keys).await {
        Ok(v) => v.key,
        Err(PullError::Refused(r)) => bail!("verification failed: {r}"),
        Err(PullError::Registry(e)) => return Err(e),
    };
    Ok(Checked {
        registry,
        reference,
        digest,
        keys,
        signer,
    })
}

pub async fn verify(
    target: &str,
    keys: &[PathBuf],
    insecure: &[String],
    limits: harvester_registry::FetchLimits,
) -> anyhow::Result<()> {
    let c = check(target, keys, insecure, limits).await?;
    let by = c
        .keys
        .iter()
        .find(|k| k.fingerprint == c.signer)
        .map(|k| k.path.display().to_string())
        .unwrap_or_default();
    let repository = harvester_registry::repository(&c.reference);
    println!(
        "Verified {repository}@{}\n  signed for {repository} by key {} ({by})",
        c.digest, c.signer
    );
    Ok(())
}

/// Verifies, then downloads the component of `target` to `output`.
pub async fn pull(
    target: &str,
    keys: &[PathBuf],
    output: &Path,
    insecure: &[String],
    limits: harvester_registry::FetchLimits,
) -> anyhow::Result<()> {
    let c = check(target, keys, insecure, limits).await?;
    // A throwaway store: the bytes are checked against their digest on the way in.
    let scratch = tempfile::tempdir()?;
    let store = harvester_registry::BlobStore::new(scratch.path());
    let bytes = c
        .registry
        .pull(&c.reference, &c.digest, &store, &progress_bar("pulling component"))
        .await?;
    harvester_registry::store::write_atomic(output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "pulled {}@{} ({:.1} MB, signed by key {}) to {}",
        harvester_registry::repository(&c.reference),
        c.digest,
        bytes.len() as f64 / 1e6,
        c.signer,
        output.display()
    );
    Ok(())
}
