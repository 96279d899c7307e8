//! The hub's certificate authority.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// A hub CA lives this long; its certificates far less.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The hub's server certificate is made again at every start.
const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start a little in the past: clocks on a LAN disagree.
pub const BACKDATE: Duration = Duration::from_secs(300);

pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate the CA signed for a node.
#[derive(Debug, Clone)]
pub struct Issued {
    pub pem: String,
    pub serial: String,
    pub not_after: SystemTime,
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes = hex::decode(crate::random_hex(16)).expect("hex");
    // A positive integer, as RFC 5280 wants.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// The CA in `dir` (`ca.crt`, `ca.key`), made there if it is not.
    /// Returns whether it was made now.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<(Ca, bool)> {
        let (crt, key_file) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() || key_file.exists() {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read the hub CA {}: {e}", p.display()))
            };
            let (cert_pem, key_pem) = (read(&crt)?, read(&key_file)?);
            return Ok((Ca::from_pem(&cert_pem, &key_pem)?, false));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Harvester hub CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        crate::write_private(&key_file, key.serialize_pem().as_bytes())?;
        crate::write_private(&crt, cert.pem().as_bytes())?;
        Ok((Ca::from_pem(&cert.pem(), &key.serialize_pem())?, true))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| anyhow::anyhow!("unreadable hub CA key: {e}"))?;
        let cert_der = crate::certificates(cert_pem)?.remove(0);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| anyhow::anyhow!("unreadable hub CA: {e}"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate, as join tokens carry it.
    pub fn hash(&self) -> String {
        crate::sha256_hex(&self.cert_der)
    }

    /// A fresh server certificate for `names` (DNS names or IP addresses)
    /// and its key: the chain to serve is the certificate, then the CA.
    pub fn server_identity(
        &self,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Harvester hub");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => {
                    Ok(SanType::DnsName(n.as_str().try_into().map_err(|e| {
                        anyhow::anyhow!("{n:?} is not a host name or address: {e}")
                    })?))
                }
            })
            .collect::<anyhow::Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + SERVER_LIFETIME);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key))
    }

    /// Signs a node certificate for `name` with the public key of `csr_pem`
    /// and nothing else it asks for: client authentication only, `lifetime`.
    pub fn sign_node(&self, name: &str, csr_pem: &str, lifetime: Duration) -> anyhow::Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow::anyhow!("unreadable certificate request: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        let not_after = now + lifetime;
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.issuer)?;
        Ok(Issued {
            pem: cert.pem(),
            serial: hex::encode(serial.to_bytes()),
            // Whole seconds, as the certificate holds it.
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(not_after.duration_since(SystemTime::UNIX_EPOCH)?.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertInfo, NodeKey};

    #[test]
    fn the_ca_is_made_once_and_signs_only_what_it_decides() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, made) = Ca::load_or_create(dir.path()).unwrap();
        assert!(made);
        let (again, made) = Ca::load_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(again.hash(), ca.hash());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // The request asks for another name and a CA's powers: neither is granted.
        let key = NodeKey::generate().unwrap();
        let mut params = CertificateParams::new(vec!["hub.example".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "hub");
        params.distinguished_name = dn;
        let greedy = params
            .serialize_request(&KeyPair::from_pem(&key.pem()).unwrap())
            .unwrap()
            .pem()
            .unwrap();
        let issued = ca.sign_node("pi4", &greedy, Duration::from_secs(3600)).unwrap();
        let info = CertInfo::of_pem(&issued.pem).unwrap();
        assert_eq!(info.name, "pi4");
        assert_eq!(info.serial, issued.serial);
        let der = crate::certificates(&issued.pem).unwrap().remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(ca.sign_node("pi4", "not a csr", Duration::from_secs(1)).is_err());
    }
}
