//! What a host agent keeps in its state directory, and when it enrolls.
//!
//! A host proves possession of a key, not a bearer secret: at enrollment the agent makes its
//! own key and a self-signed certificate for it (`host.key`, `host.pem`); the cluster pins the
//! certificate's SHA-256 and the agent proves it holds the key in every TLS handshake. A copy
//! of the state directory without `host.key` attaches nowhere.
//!
//! The agent enrolls when it holds no credential yet, or when it is given an enrollment token
//! other than the one it last enrolled with (after `ferry admin host re-enroll`): then it makes
//! a new key, and replaces the files only once the cluster accepted it. Restarting an agent
//! with the token it already used changes nothing.

use crate::host::HostOptions;
use crate::token_cache::write_private;
use crate::Error;
use ferry_transport::{certs, tls};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `credential.toml`: which cluster and host the key in `host.key` belongs to.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    cluster_name: String,
    host: String,
    /// SHA-256 (hex) of `host.pem`, as the cluster pinned it.
    certificate_sha256: String,
    /// SHA-256 (hex) of the enrollment token this key was enrolled with.
    enrollment_token_sha256: String,
}

/// An enrollment to make before attaching: the one-time token and the new key.
pub(crate) struct Pending {
    pub token: String,
    pub key: certs::PemPair,
}

/// The key the agent presents, and the enrollment it must make first, if any.
pub(crate) struct Start {
    pub identity: tls::Identity,
    pub pending: Option<Pending>,
}

fn path(opts: &HostOptions, name: &str) -> PathBuf {
    opts.state_dir.join(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Decides how the agent starts: with its enrolled key, or enrolling a new one.
pub(crate) fn start(opts: &HostOptions) -> Result<Start, Error> {
    let stored = match load(opts) {
        Ok(stored) => stored,
        // A new token enrolls afresh whatever the old file holds (a bearer credential of an
        // older version, a damaged file): it is replaced once the cluster accepts the key.
        Err(e) if opts.enroll_token.is_some() => {
            tracing::warn!(error = %e, "enrolling afresh with the token given");
            None
        }
        Err(e) => return Err(e),
    };
    let fresh = match (&stored, &opts.enroll_token) {
        (None, None) => {
            return Err(Error::Config(format!(
                "host {:?} is not enrolled yet: pass --enroll TOKEN (from `ferry admin host enroll {}`)",
                opts.name, opts.name
            )))
        }
        (None, Some(token)) => Some(token.clone()),
        (Some(stored), Some(token))
            if stored.enrollment_token_sha256 != sha256_hex(token.as_bytes()) =>
        {
            tracing::info!(
                "a new enrollment token: enrolling again with a new key (the old key works until \
                 the cluster accepts the new one)"
            );
            Some(token.clone())
        }
        (Some(_), Some(_)) => {
            tracing::debug!("already enrolled with this token; using the stored key");
            None
        }
        (Some(_), None) => None,
    };
    let invalid = |e: tls::Error| Error::Config(e.to_string());
    match fresh {
        Some(token) => {
            let key = certs::host_key(&opts.name).map_err(|e| Error::Local(e.to_string()))?;
            let identity = tls::Identity::from_pem(
                key.cert_pem.as_bytes(),
                key.key_pem.as_bytes(),
                &path(opts, "host.pem"),
            )
            .map_err(invalid)?;
            Ok(Start {
                identity,
                pending: Some(Pending { token, key }),
            })
        }
        None => {
            let identity = tls::Identity::load(&path(opts, "host.pem"), &path(opts, "host.key"))
                .map_err(|e| {
                    Error::Config(format!(
                        "{e}; the host's key is gone: re-enroll it (`ferry admin host \
                             re-enroll {}`, then --enroll with the new token)",
                        opts.name
                    ))
                })?;
            Ok(Start {
                identity,
                pending: None,
            })
        }
    }
}

fn load(opts: &HostOptions) -> Result<Option<Credential>, Error> {
    let file = path(opts, "credential.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Local(format!("cannot read {}: {e}", file.display()))),
    };
    let stored: Credential = toml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{} is damaged or from an older version with a bearer credential ({e}); re-enroll \
             the host: `ferry admin host re-enroll {}`, then --enroll with the new token",
            file.display(),
            opts.name
        ))
    })?;
    if stored.host != opts.name || stored.cluster_name != opts.config.cluster_name {
        return Err(Error::Config(format!(
            "{} belongs to host {:?} of cluster {:?}, not {:?} of {:?}; use another --state-dir",
            file.display(),
            stored.host,
            stored.cluster_name,
            opts.name,
            opts.config.cluster_name
        )));
    }
    Ok(Some(stored))
}

/// Keeps the enrolled key, durably, before the agent uses it: the key first, then the
/// certificate, then `credential.toml`, which names both.
pub(crate) fn save(opts: &HostOptions, pending: &Pending) -> Result<(), Error> {
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", opts.state_dir.display())))?;
    let write = |name: &str, bytes: &[u8]| {
        let file = path(opts, name);
        write_private(&file, bytes)
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", file.display())))
    };
    write("host.key", pending.key.key_pem.as_bytes())?;
    write("host.pem", pending.key.cert_pem.as_bytes())?;
    let der = tls::Identity::from_pem(
        pending.key.cert_pem.as_bytes(),
        pending.key.key_pem.as_bytes(),
        &path(opts, "host.pem"),
    )
    .map_err(|e| Error::Local(e.to_string()))?;
    let stored = Credential {
        cluster_name: opts.config.cluster_name.clone(),
        host: opts.name.clone(),
        certificate_sha256: sha256_hex(der.chain[0].as_ref()),
        enrollment_token_sha256: sha256_hex(pending.token.as_bytes()),
    };
    let text = toml::to_string(&stored).expect("a struct of strings serializes");
    write("credential.toml", text.as_bytes())
}
