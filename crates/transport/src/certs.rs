//! Generation of the cluster CA and node certificates (rcgen), written by `ferry init` and
//! `ferry dev`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct Error(#[from] rcgen::Error);

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs node certificates; clients and hosts trust only it.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl ClusterCa {
    /// Creates a new CA named after the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let cert = Self::params(cluster_name)?.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA of an existing cluster, from its private key (`ca.key`), to sign certificates of
    /// nodes added later. The CA certificate is rebuilt with the same name and key, so what it
    /// signs chains to the `ca.pem` every node and client already trusts.
    pub fn load(cluster_name: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert = Self::params(cluster_name)?.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    fn params(cluster_name: &str) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Ferry cluster CA {cluster_name}"),
        );
        dn.push(DnType::OrganizationName, "Ferry");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for node `node_id`, valid for its id as a DNS name (what endpoints
    /// put in SNI), `localhost`, and the given IP addresses. It serves both as a TLS server
    /// certificate and, for peer links between brokers, as a client certificate.
    pub fn issue_node(&self, node_id: &str, ips: &[IpAddr]) -> Result<PemPair, Error> {
        let mut params = CertificateParams::new(vec![node_id.to_owned(), "localhost".to_owned()])?;
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ferry node {node_id}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A host agent's own key and a self-signed certificate carrying it, made on the host at
/// enrollment. The cluster pins the certificate (its SHA-256, see
/// [`crate::tls::presented_certificate_hash`]); the agent proves it holds the key in every
/// TLS handshake, so a copy of the certificate without the key is useless.
pub fn host_key(host_name: &str) -> Result<PemPair, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("ferry host {host_name}"));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
