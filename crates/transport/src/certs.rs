//! Generation of the cluster CA and node certificates (rcgen), written by `ferry init` and
//! `ferry dev`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Default validity of a node certificate: a year, renewed with `ferry init --renew NODE`.
pub const NODE_VALIDITY_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of a cluster CA: ten years, rotated with `ferry init --rotate-ca` well before.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a host's self-signed certificate. The cluster pins the certificate itself and
/// a re-enrollment replaces it, so its dates bound only what a verifier other than Ferry's
/// would accept.
pub const HOST_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts: clocks of machines differ.
const BACKDATE: Duration = Duration::from_secs(3600);

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
    /// Creates a new CA named after the cluster; `label` (a rotation's date) tells a
    /// rotated CA from the one before, so that both may be trusted at once during the change.
    pub fn generate(cluster_name: &str, label: Option<&str>) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = Self::params(cluster_name, label)?;
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA of an existing cluster, from its certificate (the first in `ca.pem`) and private
    /// key (`ca.key`), to sign certificates of nodes added or renewed later. The CA
    /// certificate is rebuilt from the same name, dates and key, so what it signs chains to
    /// the `ca.pem` every node and client already trusts.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    fn params(cluster_name: &str, label: Option<&str>) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        let name = match label {
            None => format!("Ferry cluster CA {cluster_name}"),
            Some(label) => format!("Ferry cluster CA {cluster_name} ({label})"),
        };
        dn.push(DnType::CommonName, name);
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
    /// put in SNI), `localhost`, the DNS `names` it is reached at (the admin API's HTTPS
    /// clients check the name in its URL) and the given IP addresses. It serves both as a TLS server
    /// certificate and, for peer links between brokers, as a client certificate.
    pub fn issue_node(
        &self,
        node_id: &str,
        names: &[String],
        ips: &[IpAddr],
        valid_for: Duration,
    ) -> Result<PemPair, Error> {
        let mut dns = vec![node_id.to_owned(), "localhost".to_owned()];
        for name in names {
            if !dns.contains(name) {
                dns.push(name.clone());
            }
        }
        let mut params = CertificateParams::new(dns)?;
        validity(&mut params, valid_for);
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
    validity(&mut params, HOST_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Valid from an hour ago (clock skew) for `valid_for` from now.
fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
}

/// When the first certificate in `pem` stops being valid.
pub fn not_after(pem: &str) -> Result<SystemTime, Error> {
    let params = CertificateParams::from_ca_cert_pem(pem)?;
    Ok(params.not_after.into())
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM bundle (a `ca.pem` during a CA
/// rotation), in order, each with its line ending.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|chunk| {
            let start = chunk.find("-----BEGIN CERTIFICATE-----")?;
            chunk
                .ends_with(END)
                .then(|| format!("{}\n", &chunk[start..]))
        })
        .collect()
}
