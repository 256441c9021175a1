//! The relay listener's TLS accepts a host's own certificate only from a client that holds
//! its key: the handshake's signature is checked with the key the certificate carries. A
//! client that presents a copied certificate but signs with another key (what a thief of the
//! credential files without `host.key` could at best do, with a TLS stack of their own) fails
//! the handshake. In memory, with rustls alone.

use ferry_transport::certs::{host_key, ClusterCa};
use ferry_transport::tls::{self, Identity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// Presents `cert` and signs with `key`, whether or not they belong together.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn identity(pair: &ferry_transport::certs::PemPair) -> Identity {
    Identity::from_pem(
        pair.cert_pem.as_bytes(),
        pair.key_pem.as_bytes(),
        Path::new("mem"),
    )
    .unwrap()
}

/// Runs a handshake between a broker's relay TLS and a client presenting `cert` signed with
/// `key`; the certificate the server saw, or the server's error.
fn handshake(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
    let ca = ClusterCa::generate("test", None).unwrap();
    let node = ca
        .issue_node(
            "b1",
            &[],
            &[],
            ferry_transport::certs::NODE_VALIDITY_DEFAULT,
        )
        .unwrap();
    let trust = tls::Trust::from_pem(ca.cert_pem().as_bytes(), Path::new("mem")).unwrap();
    let server = Arc::new(tls::server(identity(&node)).unwrap());
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let presents = Presents(Arc::new(CertifiedKey::new(vec![cert], signing)));
    // A client of the broker (trusting the cluster CA), with a certificate resolver that pairs
    // the certificate with whatever key it was given.
    let mut client_config = tls::client(&trust).unwrap();
    client_config.client_auth_cert_resolver = Arc::new(presents);
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("b1").unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut back = Vec::new();
        server.write_tls(&mut back).unwrap();
        client.read_tls(&mut back.as_slice()).unwrap();
        let _ = client.process_new_packets();
        if !server.is_handshaking() {
            return Ok(server.peer_certificates().unwrap_or_default().to_vec());
        }
    }
    panic!("the handshake neither finished nor failed");
}

#[test]
fn the_host_certificate_is_accepted_only_with_its_key() {
    let host = identity(&host_key("pc1").unwrap());
    let other = identity(&host_key("pc2").unwrap());
    let seen = handshake(host.chain[0].clone(), host.key.clone_key()).expect("own key");
    assert_eq!(seen, host.chain, "the server sees the host's certificate");
    let forged = handshake(host.chain[0].clone(), other.key.clone_key());
    assert!(
        matches!(
            forged,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature
            ))
        ),
        "a copied certificate with another key fails the handshake's signature: {forged:?}"
    );
}
