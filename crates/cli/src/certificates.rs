//! `ferry init --out DIR --renew NODE | --rotate-ca | --retire-old-ca`: the certificate
//! chores of a running cluster, done where its `ca.key` is kept (never on a broker).
//!
//! - **Renew**: a node gets a new key and certificate from the current CA, valid for
//!   `--cert-validity`, for the addresses its config names. The node uses them once restarted
//!   (through a drain: `ferry admin drain NODE --wait`, restart, `ferry admin undrain NODE`).
//! - **Rotate**: a new CA is made; `ca.key` becomes its key (the old one is kept as
//!   `ca.key.previous` until the end), and `ca.pem` lists the new CA, then the old: everything
//!   that reads it trusts both. Clients and host agents read `ca.pem` again at their next
//!   connection; nodes at their next start. Then every node is renewed (signed by the new CA)
//!   and restarted one at a time.
//! - **Retire**: `ca.pem` lists the new CA alone, `ca.key.previous` is deleted; after the nodes
//!   restart once more, a certificate of the old CA is trusted nowhere.
//!
//! Each step also updates the nodes' own directories (`DIR/nodes/NODE/`, see `bundle.rs`),
//! which are what gets copied to the nodes' machines.

use crate::args::InitArgs;
use crate::Failure;
use ferry_agent::error::exit;
use ferry_broker::config::NodeConfig;
use ferry_transport::certs::ClusterCa;
use std::path::{Path, PathBuf};

fn read(dir: &Path, name: &str) -> Result<String, Failure> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| {
        Failure::new(
            exit::CONFIG,
            format!(
                "cannot read {}: {e} (run this where the cluster's ca.key is kept)",
                dir.join(name).display()
            ),
        )
    })
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(exit::FAILURE, e.to_string())
}

/// The CA that signs now: the first of `ca.pem`, with `ca.key`.
fn current_ca(dir: &Path) -> Result<ClusterCa, Failure> {
    let bundle = read(dir, "ca.pem")?;
    let first = ferry_transport::certs::pem_blocks(&bundle)
        .into_iter()
        .next()
        .ok_or_else(|| Failure::new(exit::CONFIG, "ca.pem holds no certificate"))?;
    ClusterCa::load(&first, &read(dir, "ca.key")?).map_err(failure)
}

/// What a node's certificate must name besides its id: every DNS name and IP address it is
/// reached at (`relay_addr`, `admin_addr`, `peer_addr`) or listens on (`[listen]`, unless
/// that is every address).
pub(crate) fn subjects(config: &NodeConfig) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let advertised = [Some(&config.relay_addr), Some(&config.admin_addr)]
        .into_iter()
        .chain([config.peer_addr.as_ref()])
        .flatten();
    let mut names = Vec::new();
    let mut ips: Vec<std::net::IpAddr> = [
        &config.listen.relay,
        &config.listen.admin,
        &config.listen.peer,
    ]
    .into_iter()
    .flatten()
    .map(|a| a.ip())
    .collect();
    for addr in advertised {
        match addr.as_ip() {
            Some(ip) => ips.push(ip),
            None => names.push(addr.host()),
        }
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    names.sort();
    names.dedup();
    (names, ips)
}

/// Issues NODE a new key and certificate; returns the certificate's path.
pub fn renew(args: &InitArgs, node_id: &str) -> Result<PathBuf, Failure> {
    let dir = &args.out;
    let config_path = dir.join(format!("{node_id}.toml"));
    let config = NodeConfig::load(&config_path).map_err(|e| {
        Failure::new(
            exit::CONFIG,
            format!(
                "{e} (is {node_id:?} a node of the cluster in {}?)",
                dir.display()
            ),
        )
    })?;
    let ca = current_ca(dir)?;
    let (names, ips) = subjects(&config);
    let pair = ca
        .issue_node(node_id, &names, &ips, args.cert_validity)
        .map_err(failure)?;
    // The key first: a certificate beside the wrong key would not load.
    crate::init::replace_file(&config.key, pair.key_pem.as_bytes(), true)?;
    crate::init::replace_file(&config.cert, pair.cert_pem.as_bytes(), false)?;
    crate::bundle::refresh(dir, node_id)?;
    Ok(config.cert)
}

/// Starts a CA rotation: a new CA signs; `ca.pem` trusts the new and the old.
pub fn rotate(args: &InitArgs) -> Result<(), Failure> {
    let dir = &args.out;
    if dir.join("ca.key.previous").exists() {
        return Err(Failure::new(
            exit::CONFIG,
            "a CA rotation is under way (ca.key.previous exists): finish it with \
             --retire-old-ca first",
        ));
    }
    let cluster_name = ferry_agent::ClientConfig::load(&dir.join("client.toml"))
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?
        .cluster_name;
    let old_bundle = read(dir, "ca.pem")?;
    let old_key = read(dir, "ca.key")?;
    let label = crate::time::rfc3339(crate::time::now_ms());
    let new = ClusterCa::generate(&cluster_name, Some(&label)).map_err(failure)?;
    crate::init::replace_file(&dir.join("ca.key.previous"), old_key.as_bytes(), true)?;
    crate::init::replace_file(&dir.join("ca.key"), new.key_pem().as_bytes(), true)?;
    let bundle = format!("{}{}", new.cert_pem(), old_bundle);
    crate::init::replace_file(&dir.join("ca.pem"), bundle.as_bytes(), false)?;
    crate::bundle::refresh_ca(dir)
}

/// Ends a CA rotation: `ca.pem` trusts the newest CA alone.
pub fn retire(args: &InitArgs) -> Result<(), Failure> {
    let dir = &args.out;
    let blocks = ferry_transport::certs::pem_blocks(&read(dir, "ca.pem")?);
    let Some(newest) = blocks.first() else {
        return Err(Failure::new(exit::CONFIG, "ca.pem holds no certificate"));
    };
    if blocks.len() == 1 {
        return Err(Failure::new(
            exit::CONFIG,
            "ca.pem trusts one CA already: no rotation is under way",
        ));
    }
    // Every node must hold a certificate of the new CA first, or it would be refused.
    let stale: Vec<String> = std::fs::read_dir(dir)
        .map_err(failure)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let node = name.strip_suffix(".toml")?.to_owned();
            // client.toml, and copies of it naming one broker (client-b1.toml).
            (!node.starts_with("client")).then_some(node)
        })
        .filter(|node| {
            // A config that does not load is counted as stale: better refuse than strand it.
            let Ok(config) = NodeConfig::load(&dir.join(format!("{node}.toml"))) else {
                return true;
            };
            let cert = std::fs::read_to_string(&config.cert).unwrap_or_default();
            !signed_by(&cert, newest)
        })
        .collect();
    if !stale.is_empty() {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "nodes {} still hold certificates of the old CA: renew them (--renew NODE) and \
                 restart them first, or they would be refused everywhere",
                stale.join(", ")
            ),
        ));
    }
    crate::init::replace_file(&dir.join("ca.pem"), newest.as_bytes(), false)?;
    let _ = std::fs::remove_file(dir.join("ca.key.previous"));
    crate::bundle::refresh_ca(dir)
}

/// Whether `cert_pem` chains to the CA certificate `ca_pem` (and is valid now).
fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let Ok(leaf) = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(anchor) = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(anchor).is_err() {
        return false;
    }
    let provider = rustls::crypto::ring::default_provider();
    let Ok(verifier) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.into())
            .build()
    else {
        return false;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
        .is_ok()
}
