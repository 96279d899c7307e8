//! Cosign-compatible, key-based signatures, fully offline.
//!
//! Keys are ECDSA P-256 in cosign's formats (`cosign.key`: scrypt-encrypted,
//! `cosign.pub`: PEM). A signature is a simple-signing payload naming the
//! repository and the manifest digest, signed by the key, stored as one layer
//! of the manifest at the tag `sha256-<hex>.sig` in the same repository,
//! exactly where `cosign sign --key` puts it.
//!
//! Verifying checks three things and needs all of them: the signature over
//! the payload bytes is valid for a trusted key; the payload names this very
//! digest; and it names this repository (a signature copied along with an
//! artifact into another repository does not count there).

use base64::Engine as _;
use harvester_api::Digest;
use sha2::Digest as _;
use sigstore::cosign::payload::simple_signing::{CRITICAL_TYPE_NAME, Critical, Identity, Image, SimpleSigning};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::{CosignVerificationKey, SigStoreSigner, Signature, SigningScheme};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

const SCHEME: SigningScheme = SigningScheme::ECDSA_P256_SHA256_ASN1;

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// A new key pair: (encrypted private key PEM, public key PEM).
pub fn generate_key_pair(password: &[u8]) -> anyhow::Result<(Zeroizing<String>, String)> {
    let pair = SCHEME
        .create_signer()
        .and_then(|s| s.to_sigstore_keypair())
        .map_err(|e| anyhow::anyhow!("generating a key pair: {e}"))?;
    let private = pair
        .private_key_to_encrypted_pem(password)
        .map_err(|e| anyhow::anyhow!("encrypting the private key: {e}"))?;
    let public = pair
        .public_key_to_pem()
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    Ok((private, public))
}

/// A short, stable name for a public key: the first 16 hex digits of the
/// SHA-256 of its DER encoding.
fn fingerprint_of(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))[..16].to_string()
}

/// The DER bytes inside a PEM block.
fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

/// A private key that signs.
pub struct SigningKey {
    signer: SigStoreSigner,
    public_pem: String,
    pub fingerprint: String,
}

impl SigningKey {
    /// Loads a cosign private key. A wrong password and a damaged file both
    /// end up here, and the underlying library cannot tell them apart.
    pub fn load(path: &Path, password: &[u8]) -> anyhow::Result<SigningKey> {
        let pem = Zeroizing::new(
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading signing key {}: {e}", path.display()))?,
        );
        let pair = SigStoreKeyPair::from_encrypted_pem(&pem, password).map_err(|_| {
            anyhow::anyhow!(
                "{}: cannot decrypt the signing key: wrong password (COSIGN_PASSWORD) or not a cosign private key",
                path.display()
            )
        })?;
        SigningKey::from_pair(&pair, path)
    }

    fn from_pair(pair: &SigStoreKeyPair, path: &Path) -> anyhow::Result<SigningKey> {
        let der = pair
            .public_key_to_der()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let signer = pair
            .to_sigstore_signer(&SCHEME)
            .map_err(|e| anyhow::anyhow!("{}: not an ECDSA P-256 key: {e}", path.display()))?;
        let public_pem = pair
            .public_key_to_pem()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(SigningKey {
            signer,
            public_pem,
            fingerprint: fingerprint_of(&der),
        })
    }

    /// A service's own key, kept unencrypted (mode 0600) in its state folder
    /// because it signs unattended: loaded, or made on first use together
    /// with its public half beside it (`.pub`), which others then trust.
    pub fn load_or_create_unattended(path: &Path) -> anyhow::Result<SigningKey> {
        let public_path = path.with_extension("pub");
        if path.exists() {
            let pem = Zeroizing::new(
                std::fs::read(path).map_err(|e| anyhow::anyhow!("reading signing key {}: {e}", path.display()))?,
            );
            let pair = SigStoreKeyPair::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not an unencrypted ECDSA P-256 private key: {e}", path.display()))?;
            let key = SigningKey::from_pair(&pair, path)?;
            if !public_path.exists() {
                crate::store::write_atomic(&public_path, key.public_pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", public_path.display()))?;
            }
            return Ok(key);
        }
        let pair = SCHEME
            .create_signer()
            .and_then(|s| s.to_sigstore_keypair())
            .map_err(|e| anyhow::anyhow!("generating a key pair: {e}"))?;
        let private = pair
            .private_key_to_pem()
            .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
        let key = SigningKey::from_pair(&pair, path)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("key.tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&tmp)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
            f.write_all(private.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        crate::store::write_atomic(&public_path, key.public_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", public_path.display()))?;
        Ok(key)
    }

    /// A base64 signature of `payload` itself.
    pub fn sign_bytes(&self, payload: &[u8]) -> anyhow::Result<String> {
        let sig = self.signer.sign(payload).map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The payload and its base64 signature for `repository@digest`.
    pub fn sign(&self, repository: &str, digest: &Digest) -> anyhow::Result<(Vec<u8>, String)> {
        let payload = serde_json::to_vec(&payload_for(repository, digest))?;
        let sig = self
            .signer
            .sign(&payload)
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok((payload, base64::engine::general_purpose::STANDARD.encode(sig)))
    }
}

fn payload_for(repository: &str, digest: &Digest) -> SimpleSigning {
    SimpleSigning {
        critical: Critical {
            identity: Identity {
                docker_reference: repository.to_string(),
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            type_name: CRITICAL_TYPE_NAME.to_string(),
        },
        optional: None,
    }
}

/// A public key a node trusts.
#[derive(Clone)]
pub struct TrustedKey {
    pub path: PathBuf,
    pub fingerprint: String,
    key: CosignVerificationKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({} {})", self.fingerprint, self.path.display())
    }
}

impl TrustedKey {
    pub fn load(path: &Path) -> anyhow::Result<TrustedKey> {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading public key {}: {e}", path.display()))?;
        TrustedKey::from_pem(path, &pem)
    }

    pub fn from_pem(path: &Path, pem: &[u8]) -> anyhow::Result<TrustedKey> {
        if !String::from_utf8_lossy(pem).contains("-----BEGIN PUBLIC KEY-----") {
            anyhow::bail!(
                "{}: not a cosign public key (expected a PEM \"PUBLIC KEY\" block; is this the private key?)",
                path.display()
            );
        }
        let key = CosignVerificationKey::from_pem(pem, &SCHEME).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a cosign public key (ECDSA P-256 PEM, as written by `harvester keygen` or `cosign generate-key-pair`): {e}",
                path.display()
            )
        })?;
        let der = pem_body(pem).ok_or_else(|| anyhow::anyhow!("{}: not PEM", path.display()))?;
        Ok(TrustedKey {
            path: path.to_path_buf(),
            fingerprint: fingerprint_of(&der),
            key,
        })
    }

    /// The public half of a signing key, to recognise its own signatures.
    pub fn from_signing_key(key: &SigningKey) -> anyhow::Result<TrustedKey> {
        TrustedKey::from_pem(Path::new("<signing key>"), key.public_pem().as_bytes())
    }

    fn verifies(&self, sig: &SignatureLayer) -> bool {
        self.verifies_bytes(&sig.payload, &sig.signature)
    }

    /// Whether `signature` (base64) is this key's signature of `payload`.
    pub fn verifies_bytes(&self, payload: &[u8], signature: &str) -> bool {
        self.key
            .verify_signature(Signature::Base64Encoded(signature.as_bytes()), payload)
            .is_ok()
    }
}

/// One layer of a signature manifest: the payload bytes exactly as stored,
/// and the base64 signature from the layer's annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// Why an artifact is refused. Each is final for this digest and these keys:
/// retrying cannot help until someone signs (or the node trusts another key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{image} is not signed (no signature at the tag {tag})")]
    Unsigned { image: String, tag: String },
    #[error("{image}: none of its {count} signature(s) is valid for a trusted key ({trusted})")]
    Untrusted {
        image: String,
        count: usize,
        trusted: String,
    },
    #[error(
        "{image}: the signature by trusted key {key} was made for {signed_for:?}, not for this repository: refusing a signature copied from elsewhere"
    )]
    IdentityMismatch {
        image: String,
        key: String,
        signed_for: String,
    },
    #[error("{what}: expected digest {expected}, got {actual}: refusing tampered bytes")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{image}: {problem}")]
    NotAComponent { image: String, problem: String },
    /// More bytes than this side accepts (the registry's own claim, or
    /// what it actually sent).
    #[error("{what} is {size} bytes, over the limit of {limit}: refusing it")]
    TooLarge { what: String, size: String, limit: u64 },
}

impl Refusal {
    /// The reason a status condition shows.
    pub fn reason(&self) -> harvester_api::Reason {
        use harvester_api::Reason;
        match self {
            Refusal::Unsigned { .. } | Refusal::Untrusted { .. } | Refusal::IdentityMismatch { .. } => {
                Reason::SignatureInvalid
            }
            Refusal::DigestMismatch { .. } => Reason::DigestMismatch,
            Refusal::NotAComponent { .. } => Reason::InvalidArtifact,
            Refusal::TooLarge { .. } => Reason::TooLarge,
        }
    }

    /// A low-cardinality metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unsigned { .. } => "unsigned",
            Refusal::Untrusted { .. } => "untrusted",
            Refusal::IdentityMismatch { .. } => "identity_mismatch",
            Refusal::DigestMismatch { .. } => "digest_mismatch",
            Refusal::NotAComponent { .. } => "not_a_component",
            Refusal::TooLarge { .. } => "too_large",
        }
    }
}

/// Who vouched for an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key: String,
}

/// `registry/repository` of a `docker-reference`, dropping a tag or digest.
fn repository_of(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or("");
    // A colon after the last slash is a tag; before it, a port.
    match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => without_digest[..i].to_string(),
        _ => without_digest.to_string(),
    }
}

/// Checks the signatures of `repository@digest` against `keys`.
pub fn verify(
    repository: &str,
    digest: &Digest,
    signatures: &[SignatureLayer],
    keys: &[TrustedKey],
) -> Result<Verified, Refusal> {
    let image = format!("{repository}@{digest}");
    if signatures.is_empty() {
        return Err(Refusal::Unsigned {
            image,
            tag: signature_tag(digest),
        });
    }
    let mut mismatch = None;
    for sig in signatures {
        for key in keys {
            if !key.verifies(sig) {
                continue;
            }
            let Ok(payload) = serde_json::from_slice::<SimpleSigning>(&sig.payload) else {
                continue;
            };
            if payload.critical.image.docker_manifest_digest != digest.to_string() {
                continue;
            }
            let signed_for = payload.critical.identity.docker_reference;
            if repository_of(&signed_for) == repository {
                return Ok(Verified {
                    key: key.fingerprint.clone(),
                });
            }
            mismatch = Some(Refusal::IdentityMismatch {
                image: image.clone(),
                key: key.fingerprint.clone(),
                signed_for,
            });
        }
    }
    Err(mismatch.unwrap_or_else(|| Refusal::Untrusted {
        image,
        count: signatures.len(),
        trusted: if keys.is_empty() {
            "this node trusts no key: start it with --trust-key".into()
        } else {
            keys.iter()
                .map(|k| k.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_pair(dir: &Path, name: &str) -> (SigningKey, TrustedKey) {
        let (private, public) = generate_key_pair(b"pw").unwrap();
        let priv_path = dir.join(format!("{name}.key"));
        std::fs::write(&priv_path, private.as_bytes()).unwrap();
        let signer = SigningKey::load(&priv_path, b"pw").unwrap();
        let trusted = TrustedKey::from_pem(&dir.join(format!("{name}.pub")), public.as_bytes()).unwrap();
        assert_eq!(signer.fingerprint, trusted.fingerprint);
        (signer, trusted)
    }

    fn layer(signer: &SigningKey, repo: &str, d: &Digest) -> SignatureLayer {
        let (payload, signature) = signer.sign(repo, d).unwrap();
        SignatureLayer { payload, signature }
    }

    #[test]
    fn signatures_verify_only_for_their_key_digest_and_repository() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_pub) = key_pair(dir.path(), "alice");
        let (mallory, _) = key_pair(dir.path(), "mallory");
        let repo = "127.0.0.1:5000/plugins/dht22";
        let d = Digest::of(b"manifest");

        let ok = layer(&alice, repo, &d);
        assert_eq!(
            verify(repo, &d, std::slice::from_ref(&ok), std::slice::from_ref(&alice_pub)),
            Ok(Verified {
                key: alice_pub.fingerprint.clone()
            })
        );
        // Any one good signature among others is enough.
        let both = [layer(&mallory, repo, &d), ok.clone()];
        assert!(verify(repo, &d, &both, std::slice::from_ref(&alice_pub)).is_ok());

        let err = verify(repo, &d, &[], std::slice::from_ref(&alice_pub)).unwrap_err();
        assert_eq!(err.label(), "unsigned");
        let err = verify(repo, &d, &[layer(&mallory, repo, &d)], std::slice::from_ref(&alice_pub)).unwrap_err();
        assert_eq!(err.label(), "untrusted");
        assert_eq!(err.reason(), harvester_api::Reason::SignatureInvalid);
        let err = verify(repo, &d, std::slice::from_ref(&ok), &[]).unwrap_err();
        assert!(err.to_string().contains("--trust-key"), "{err}");
        // The same signature for another digest or another repository.
        let other = Digest::of(b"other manifest");
        assert_eq!(
            verify(
                repo,
                &other,
                std::slice::from_ref(&ok),
                std::slice::from_ref(&alice_pub)
            )
            .unwrap_err()
            .label(),
            "untrusted"
        );
        let err = verify(
            "127.0.0.1:5000/evil/dht22",
            &d,
            std::slice::from_ref(&ok),
            std::slice::from_ref(&alice_pub),
        )
        .unwrap_err();
        assert_eq!(err.label(), "identity_mismatch");
        // A payload edited after signing no longer verifies.
        let mut edited = ok.clone();
        edited.payload = String::from_utf8(ok.payload.clone())
            .unwrap()
            .replace("plugins/dht22", "evil/dht22")
            .into_bytes();
        assert!(verify("127.0.0.1:5000/evil/dht22", &d, &[edited], &[alice_pub]).is_err());
    }

    #[test]
    fn identities_may_carry_a_tag() {
        assert_eq!(repository_of("127.0.0.1:5000/p/x:1.0"), "127.0.0.1:5000/p/x");
        assert_eq!(repository_of("127.0.0.1:5000/p/x"), "127.0.0.1:5000/p/x");
        assert_eq!(repository_of("127.0.0.1:5000/p/x@sha256:ab"), "127.0.0.1:5000/p/x");
    }

    #[test]
    fn wrong_password_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key_pair(b"right").unwrap();
        let p = dir.path().join("cosign.key");
        std::fs::write(&p, private.as_bytes()).unwrap();
        let err = SigningKey::load(&p, b"wrong").err().unwrap().to_string();
        assert!(err.contains("wrong password"), "{err}");
        let err = TrustedKey::from_pem(&p, private.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("not a cosign public key"), "{err}");
        assert!(TrustedKey::from_pem(&p, public.as_bytes()).is_ok());
    }

    #[test]
    fn an_unattended_key_is_made_once_kept_private_and_its_signatures_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/compiler.key");
        let made = SigningKey::load_or_create_unattended(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = SigningKey::load_or_create_unattended(&path).unwrap();
        assert_eq!(made.fingerprint, again.fingerprint, "a restart keeps the key");
        let public = TrustedKey::load(&path.with_extension("pub")).unwrap();
        assert_eq!(public.fingerprint, made.fingerprint);

        let sig = again.sign_bytes(b"statement").unwrap();
        assert!(public.verifies_bytes(b"statement", &sig));
        assert!(!public.verifies_bytes(b"statemenT", &sig));
        assert!(!public.verifies_bytes(b"statement", "bm90IGEgc2lnbmF0dXJl"));
        let (_, other) = key_pair(dir.path(), "other");
        assert!(!other.verifies_bytes(b"statement", &sig));

        std::fs::write(&path, b"garbage").unwrap();
        let err = SigningKey::load_or_create_unattended(&path).err().unwrap().to_string();
        assert!(
            err.contains("compiler.key") && err.contains("not an unencrypted"),
            "{err}"
        );
    }
}
