//! A board's side: its key (made on the board, never sent) and the
//! certificate signing request carrying only its name and public key.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> anyhow::Result<NodeKey> {
        Ok(NodeKey {
            key: KeyPair::generate().map_err(|e| anyhow::anyhow!("cannot make a key: {e}"))?,
        })
    }

    pub fn from_pem(pem: &str) -> anyhow::Result<NodeKey> {
        Ok(NodeKey {
            key: KeyPair::from_pem(pem).map_err(|e| anyhow::anyhow!("unreadable private key: {e}"))?,
        })
    }

    pub fn pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR for `name`. The hub takes the public key from it and decides
    /// everything else itself.
    pub fn csr(&self, name: &str) -> anyhow::Result<String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| anyhow::anyhow!("cannot make a certificate request: {e}"))?;
        csr.pem()
            .map_err(|e| anyhow::anyhow!("cannot encode a certificate request: {e}"))
    }
}
