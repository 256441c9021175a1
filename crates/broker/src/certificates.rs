//! When the certificates a node uses stop being valid: its own (`cert`) and the cluster CAs it
//! trusts (`ca_cert`, possibly a bundle during a CA rotation). Read from the files once, at
//! start, like the TLS configuration itself (a renewed certificate takes effect when the node
//! restarts), so the metric (for the alert that comes before expiry) and the node's status
//! say what the running process presents.

use crate::config::NodeConfig;
use crate::metrics::{Certificate, Metrics};
use serde::{Deserialize, Serialize};
use std::time::UNIX_EPOCH;

/// Expiry dates in milliseconds since the Unix epoch; 0 when a file could not be read (the
/// node would not have started: the same files configure its TLS).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Expiry {
    pub node_certificate_expires_at_ms: u64,
    /// The earliest among the CAs in `ca_cert`.
    pub ca_expires_at_ms: u64,
}

impl Expiry {
    pub fn read(config: &NodeConfig) -> Self {
        Self {
            node_certificate_expires_at_ms: earliest(&config.cert),
            ca_expires_at_ms: earliest(&config.ca_cert),
        }
    }

    /// Says in the log, at start, what is already expired or expires within 30 days (the
    /// alert's horizon): an expired node certificate makes clients, hosts and peers refuse
    /// this node, however healthy it looks from inside.
    pub fn warn(&self, now_ms: u64) {
        const SOON_MS: u64 = 30 * 86_400_000;
        for (what, at_ms) in [
            (
                "this node's certificate",
                self.node_certificate_expires_at_ms,
            ),
            ("the cluster CA", self.ca_expires_at_ms),
        ] {
            if at_ms == 0 {
                continue;
            }
            if at_ms <= now_ms {
                tracing::error!(
                    expired_ms_ago = now_ms - at_ms,
                    "{what} has expired: clients, host agents and peers refuse this node; renew \
                     it (`ferry init --out DIR --renew NODE`, docs/OPERATIONS.md)"
                );
            } else if at_ms - now_ms < SOON_MS {
                tracing::warn!(
                    expires_in_s = (at_ms - now_ms) / 1000,
                    "{what} expires within 30 days; renew it (docs/OPERATIONS.md)"
                );
            }
        }
    }

    pub fn export(&self, metrics: &Metrics) {
        for (certificate, at_ms) in [
            ("node", self.node_certificate_expires_at_ms),
            ("ca", self.ca_expires_at_ms),
        ] {
            metrics
                .certificate_expiry
                .get_or_create(&Certificate { certificate })
                .set((at_ms / 1000) as i64);
        }
    }
}

/// The earliest expiry among the PEM certificates in `path`, in ms since the epoch.
fn earliest(path: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    ferry_transport::certs::pem_blocks(&text)
        .iter()
        .filter_map(|pem| ferry_transport::certs::not_after(pem).ok())
        .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_counts_its_earliest_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let old = ferry_transport::certs::ClusterCa::generate("c", None).unwrap();
        let new = ferry_transport::certs::ClusterCa::generate("c", Some("2")).unwrap();
        let node = new.issue_node("b1", &[], &[], 30 * day).unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, format!("{}{}", new.cert_pem(), old.cert_pem())).unwrap();
        let cert = dir.path().join("b1.pem");
        std::fs::write(&cert, &node.cert_pem).unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let node_at = earliest(&cert);
        assert!(node_at > now_ms + 29 * 86_400_000 && node_at < now_ms + 31 * 86_400_000);
        let ca_at = earliest(&bundle);
        assert!(ca_at > now_ms + 9 * 365 * 86_400_000, "{ca_at}");
        assert_eq!(
            ferry_transport::certs::pem_blocks(&std::fs::read_to_string(&bundle).unwrap()).len(),
            2
        );
        assert_eq!(earliest(&dir.path().join("missing.pem")), 0);
    }
}
