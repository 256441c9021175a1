//! rustls configurations: TLS 1.3 only, ALPN `ferry/1`, trust rooted in the cluster CA alone.

use ferry_proto::ALPN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} from {path}: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the cluster CA certificate in {path} is not usable as a trust anchor: {detail}")]
    BadCa { path: PathBuf, detail: String },
}

/// A node's certificate chain and private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, Error> {
        Self::from_pem(
            &read(cert_path, "certificate")?,
            &read(key_path, "private key")?,
            cert_path,
        )
    }

    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], origin: &Path) -> Result<Self, Error> {
        let pem_err = |what, e: rustls::pki_types::pem::Error| Error::Pem {
            what,
            path: origin.to_owned(),
            detail: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("certificate", e))?;
        if chain.is_empty() {
            return Err(Error::NoCertificate {
                path: origin.to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err("private key", e))?;
        Ok(Self { chain, key })
    }
}

/// The trust anchors: exactly the cluster CA.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<rustls::RootCertStore>,
}

impl Trust {
    pub fn load(ca_path: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(ca_path, "CA certificate")?, ca_path)
    }

    pub fn from_pem(ca_pem: &[u8], origin: &Path) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| Error::Pem {
                what: "CA certificate",
                path: origin.to_owned(),
                detail: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| Error::BadCa {
                path: origin.to_owned(),
                detail: e.to_string(),
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(Error::NoCertificate {
                path: origin.to_owned(),
            });
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }
}

/// Makes ring the process's default TLS provider, for libraries that build their own rustls
/// configuration (reqwest's plain clients in the benchmarks and tests). Ferry's own
/// configurations name their provider. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for a broker's relay listener: presents the node certificate. Clients authenticate
/// inside the connection (passwords, tokens); host agents present their own key's
/// certificate, which the handshake proves they hold ([`KeyOfAnyClient`]) and the broker
/// compares with the one pinned at enrollment.
pub fn server(identity: Identity) -> Result<rustls::ServerConfig, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(KeyOfAnyClient {
            algorithms: provider().signature_verification_algorithms,
        }))
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// ALPN of the admin API: HTTP/1.1 over TLS.
const HTTP_ALPN: &[u8] = b"http/1.1";

/// TLS for a node's admin API (HTTPS): presents the node certificate; callers authenticate
/// with bearer tokens inside.
pub fn https_server(identity: Identity) -> Result<rustls::ServerConfig, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![HTTP_ALPN.to_vec()];
    Ok(config)
}

/// TLS for `ferry admin` and other HTTPS callers of the admin API: verifies the node
/// against the cluster CA.
pub fn https_client(trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(trust.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![HTTP_ALPN.to_vec()];
    Ok(config)
}

/// TLS for a client: verifies the broker against the cluster CA.
pub fn client(trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(trust.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS for a host agent: verifies the broker against the cluster CA and presents the host's
/// own certificate (`certs::host_key`), proving it holds the key.
pub fn host_client(trust: &Trust, identity: Identity) -> Result<rustls::ClientConfig, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(trust.roots.clone())
        .with_client_auth_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The relay listener's view of client certificates: optional (clients present none), and
/// any well-formed one is accepted, because what it certifies is only its key. The handshake
/// checks the client's signature with that key (so the client holds it); whose key it is, the
/// broker decides by comparing the certificate with the one the cluster pinned for the host.
#[derive(Debug)]
struct KeyOfAnyClient {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for KeyOfAnyClient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        rustls::server::ParsedCertificate::try_from(end_entity)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// SHA-256 of the certificate the far end of `conn` presented (and proved it holds the key
/// of), if it presented one: how a broker knows which host key a connection carries.
pub fn presented_certificate_hash(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, leaf.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// TLS for a broker's peer listener: presents the node certificate and requires the peer's,
/// signed by the cluster CA. Which node it is, [`peer_node`] decides from its names.
pub fn peer_server(identity: Identity, trust: &Trust) -> Result<rustls::ServerConfig, Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        trust.roots.clone(),
        provider(),
    )
    .build()
    .map_err(|e| Error::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ferry_proto::PEER_ALPN.to_vec()];
    Ok(config)
}

/// TLS for dialing a peer: verifies it against the cluster CA and presents this node's
/// certificate as a client certificate.
pub fn peer_client(identity: Identity, trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(trust.roots.clone())
        .with_client_auth_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ferry_proto::PEER_ALPN.to_vec()];
    Ok(config)
}

/// Which of `candidates` (node ids) the certificate chain `presented` (already verified
/// against the cluster CA by the handshake) was issued to, if any.
pub fn peer_node<'a>(
    presented: &[CertificateDer<'_>],
    candidates: &'a [String],
) -> Option<&'a str> {
    let leaf = presented.first()?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).ok()?;
    candidates
        .iter()
        .find(|id| {
            rustls::pki_types::ServerName::try_from(id.as_str())
                .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
        })
        .map(String::as_str)
}

impl Identity {
    /// A second copy (the private key is copied in memory).
    pub fn duplicate(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Pem {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}
