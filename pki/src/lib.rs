//! Who is who in a fleet: the hub's certificate authority, the
//! certificates it gives boards, the join tokens boards enrol with, and the
//! TLS configurations built on them. One crypto provider (aws-lc-rs) for
//! all of it: [`install_provider`] runs first thing in every process.
//!
//! - [`Ca`]: the hub CA, made on first start; signs the hub's server
//!   certificate and node certificates (client-auth only, the CSR's public
//!   key and nothing else it asks for).
//! - [`JoinToken`]: `H10<sha256 of the CA>::<id>.<secret>`, so a board checks
//!   the hub before it sends the secret (k3s's `K10` tokens do the same).
//! - [`tls`]: server and client configurations, the client-certificate
//!   verifier with a grace period for renewal, and the enrolment probe
//!   that finds the CA a hub presents.
//! - [`NodeKey`]: a board's key and its certificate signing request.

mod ca;
mod node;
pub mod tls;
mod token;

pub use ca::{BACKDATE, Ca, Issued};
pub use node::NodeKey;
pub use token::{JoinToken, TokenError};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The one crypto provider of every Harvester process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process default, so no library can pick another
/// (with two providers compiled in, rustls refuses to choose).
pub fn install_provider() {
    // Err means one is installed already: the same one, by this function.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `n` random bytes from the provider's secure generator, in hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random generator failed");
    hex::encode(bytes)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Compares two secrets' hashes in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name: a node's name.
    pub name: String,
    /// The serial number, hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn of_der(der: &[u8]) -> anyhow::Result<CertInfo> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let at = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs < 0 {
                UNIX_EPOCH
            } else {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            }
        };
        Ok(CertInfo {
            name,
            serial: hex::encode(cert.raw_serial()),
            not_before: at(&cert.validity().not_before),
            not_after: at(&cert.validity().not_after),
        })
    }

    /// The first certificate of a PEM file's text.
    pub fn of_pem(pem: &str) -> anyhow::Result<CertInfo> {
        let der = certificates(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no certificate in the PEM text"))?;
        CertInfo::of_der(&der)
    }

    /// When to renew: two thirds into its life, counted from when it was
    /// issued (its validity starts [`BACKDATE`] earlier).
    pub fn renew_at(&self) -> SystemTime {
        let issued = (self.not_before + BACKDATE).min(self.not_after);
        let life = self.not_after.duration_since(issued).unwrap_or_default();
        issued + life * 2 / 3
    }
}

/// Every certificate in PEM text.
pub fn certificates(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("unreadable PEM certificate: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in the PEM text");
    }
    Ok(certs)
}

/// The hash a join token carries: SHA-256 of the CA certificate's DER.
pub fn ca_hash(ca_pem: &str) -> anyhow::Result<String> {
    let ca = certificates(ca_pem)?;
    Ok(sha256_hex(ca.last().expect("certificates() is never empty")))
}

/// Writes a secret: a new file of mode 0600 created exclusively beside
/// `path` (never into a file or link another user planted), synced, then
/// renamed into place, so a crash leaves the old file or the new one.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    harvester_api::files::write_durable(path, contents)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A time as RFC 3339, for messages people read.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{} ms since the epoch", unix_ms(t)))
}

/// SHA-256 of a certificate's public key (SPKI), base64: what Chromium's
/// `--ignore-certificate-errors-spki-list` pins and HPKP-style tools show.
pub fn spki_sha256_base64(cert_pem: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let der = certificates(cert_pem)?.remove(0);
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(cert.public_key().raw)))
}
