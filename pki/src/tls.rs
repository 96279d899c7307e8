//! TLS configurations: the hub's server side (client certificates
//! optional, verified against the hub CA), clients trusting only the hub's
//! anchor, and the enrolment probe.

use crate::JoinToken;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
};
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// How long past its expiry a node certificate may still renew itself: a
/// board powered off for a month comes back without a new join token.
pub const RENEWAL_GRACE: Duration = Duration::from_secs(30 * 86_400);

fn roots(anchors: &[CertificateDer<'static>]) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for a in anchors {
        roots
            .add(a.clone())
            .map_err(|e| anyhow::anyhow!("unusable CA certificate: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// The hub's server configuration: `chain` and `key` to present; client
/// certificates optional (people send bearer tokens), and when sent they
/// must come from `client_ca`. Expired ones within [`RENEWAL_GRACE`] pass
/// the handshake; the hub lets them renew and nothing else.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: &CertificateDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = crate::provider();
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(std::slice::from_ref(client_ca))?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(GraceVerifier { inner }))
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("unusable server certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a certificate chain and its key from PEM files the user supplies.
pub fn read_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let text = std::fs::read_to_string(cert).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?;
    let chain = crate::certificates(&text).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("cannot read the key {}: {e}", key.display()))?;
    Ok((chain, key))
}

#[derive(Debug)]
struct GraceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for GraceVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Err(e @ Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
                // Checked as of its last valid second, if that is within the grace.
                let Ok(info) = crate::CertInfo::of_der(end_entity) else {
                    return Err(e);
                };
                let last = info
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_secs(1));
                if now.as_secs() > last.as_secs() + RENEWAL_GRACE.as_secs() {
                    return Err(e);
                }
                self.inner
                    .verify_client_cert(end_entity, intermediates, UnixTime::since_unix_epoch(last))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client trusting only `anchor_pem` (the hub CA), presenting
/// `identity` (certificate chain and key, PEM) when given.
pub fn client_config(anchor_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<ClientConfig> {
    let anchors = crate::certificates(anchor_pem)?;
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&anchors)?);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = crate::certificates(cert)?;
            let key =
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| anyhow::anyhow!("unreadable key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow::anyhow!("unusable certificate or key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a board would not trust a hub.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the hub at {0}: {1}")]
    Unreachable(String, String),
    #[error(
        "the hub at {at} does not present the CA this join token names (expected sha256 {expected}, it presents {presented}): \
         a token from another hub, or someone between this board and the hub; nothing was sent"
    )]
    OtherCa {
        at: String,
        expected: String,
        presented: String,
    },
    #[error("the hub at {0} presents the token's CA, but its own certificate does not check out against it: {1}")]
    BadServerCertificate(String, String),
}

/// Connects to the hub at `host:port`, finds the CA certificate whose
/// SHA-256 the join token carries among those it presents, and checks the
/// hub's certificate against it. Returns that CA (PEM) to trust from then
/// on. The token's secret is not sent. Blocking; run it off the runtime.
pub fn probe_hub(host: &str, port: u16, token: &JoinToken, timeout: Duration) -> Result<String, ProbeError> {
    use std::net::ToSocketAddrs;
    let at = format!("{host}:{port}");
    let unreachable = |e: &dyn std::fmt::Display| ProbeError::Unreachable(at.clone(), e.to_string());
    let provider = crate::provider();
    let server_name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .map_err(|e| unreachable(&e))?;
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Presented(provider.clone())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut socket = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| unreachable(&e))?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| unreachable(&e))?;
    socket.set_write_timeout(Some(timeout)).map_err(|e| unreachable(&e))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name.clone()).map_err(|e| unreachable(&e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).map_err(|e| unreachable(&e))?;
    }
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let Some(anchor) = chain.iter().skip(1).find(|c| crate::sha256_hex(c) == token.ca_hash) else {
        return Err(ProbeError::OtherCa {
            at,
            expected: token.ca_hash.clone(),
            presented: chain
                .last()
                .map(|c| crate::sha256_hex(c))
                .unwrap_or_else(|| "nothing".into()),
        });
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(std::slice::from_ref(anchor)).map_err(|e| ProbeError::BadServerCertificate(at.clone(), e.to_string()))?,
        provider,
    )
    .build()
    .map_err(|e| ProbeError::BadServerCertificate(at.clone(), e.to_string()))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
        .map_err(|e| ProbeError::BadServerCertificate(at.clone(), e.to_string()))?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", anchor.to_vec())))
}

/// Accepts whatever the hub presents, checking only that it holds the
/// key: [`probe_hub`] judges the chain itself.
#[derive(Debug)]
struct Presented(Arc<CryptoProvider>);

impl ServerCertVerifier for Presented {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, NodeKey};

    #[test]
    fn an_expired_node_certificate_passes_the_handshake_only_within_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::load_or_create(dir.path()).unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .sign_node("pi4", &key.csr("pi4").unwrap(), Duration::from_secs(60))
            .unwrap();
        let cert = crate::certificates(&issued.pem).unwrap().remove(0);
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(std::slice::from_ref(ca.cert_der())).unwrap(),
            crate::provider(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let verifier = GraceVerifier { inner };
        let at = |secs_after_expiry: u64| {
            let t = issued.not_after.duration_since(std::time::UNIX_EPOCH).unwrap()
                + Duration::from_secs(secs_after_expiry);
            verifier.verify_client_cert(&cert, &[], UnixTime::since_unix_epoch(t))
        };
        assert!(at(0).is_ok());
        assert!(at(3600).is_ok(), "expired an hour ago: within the grace");
        assert!(at(RENEWAL_GRACE.as_secs() + 3600).is_err(), "past the grace");
    }
}
