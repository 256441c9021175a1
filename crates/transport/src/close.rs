//! QUIC application close codes. The reason travels with the code, so the other side can print
//! what went wrong instead of "connection lost".

use quinn::{ConnectionError, VarInt};

/// Why a Ferry endpoint closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close: the work is done.
    Done = 0,
    /// The peer sent a malformed or oversized frame.
    Protocol = 1,
    /// The peer speaks a protocol version we do not.
    UnsupportedVersion = 2,
    /// Authentication failed.
    Unauthenticated = 3,
    /// The node is shutting down.
    ShuttingDown = 4,
    /// A limit was reached (connections, unauthenticated connections, streams).
    Overloaded = 5,
}

/// Longest close reason sent.
pub const CLOSE_REASON_BYTES_MAX: usize = 400;

/// `reason` cut to at most [`CLOSE_REASON_BYTES_MAX`] bytes, at a character boundary.
pub fn bounded_reason(reason: &str) -> &str {
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl CloseCode {
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    /// Closes `conn` with this code and a human-readable reason, cut at a character boundary to
    /// at most [`CLOSE_REASON_BYTES_MAX`] (QUIC carries it in one packet).
    pub fn close(self, conn: &quinn::Connection, reason: &str) {
        conn.close(self.varint(), bounded_reason(reason).as_bytes());
    }
}

/// TLS alerts that reject a certificate (RFC 8446 section 6.2): bad, unsupported, revoked,
/// expired, unknown, unknown CA, access denied (a verifier's own refusal), decrypt error
/// (rustls's alert for a certificate whose signature does not verify: one from another CA
/// under the same name), required.
const CERTIFICATE_ALERTS: [u8; 9] = [42, 43, 44, 45, 46, 48, 49, 51, 116];

/// Whether the connection failed because a certificate was rejected, as this side's TLS stack
/// reports it: QUIC carries a TLS alert as the transport error code 0x100 + alert (RFC 9001
/// section 4.8). A close the peer sends (`ConnectionClosed`) is not read here.
pub fn is_untrusted(error: &ConnectionError) -> bool {
    let ConnectionError::TransportError(e) = error else {
        return false;
    };
    CERTIFICATE_ALERTS
        .iter()
        .any(|&alert| e.code == quinn::TransportErrorCode::crypto(alert))
}

/// Turns a connection error into a sentence for a person, keeping the peer's reason.
pub fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                format!("closed by peer (code {})", close.error_code)
            } else {
                format!("closed by peer: {reason}")
            }
        }
        // TLS alert 45: certificate expired (RFC 8446 section 6.2).
        ConnectionError::TransportError(e) if e.code == quinn::TransportErrorCode::crypto(45) => {
            format!(
                "TLS handshake failed: {e}. The broker's certificate has expired: its operator \
                 must renew it (`ferry init --out DIR --renew NODE`, then restart the node)"
            )
        }
        ConnectionError::TransportError(e) if is_untrusted(error) => format!(
            "TLS handshake failed: {e}. The broker's certificate is not signed by the cluster CA \
             this config trusts; check that the config file belongs to this cluster"
        ),
        ConnectionError::ConnectionClosed(close) => format!("closed by peer: {close}"),
        ConnectionError::TimedOut => "timed out: no answer from the broker".to_owned(),
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod bounded_reason_tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let long = "é".repeat(300); // two bytes each: 400 is a boundary
        assert_eq!(bounded_reason(&long).len(), 400);
        let odd = format!("a{}", "é".repeat(300)); // 400 falls inside an é
        assert_eq!(bounded_reason(&odd).len(), 399);
    }
}
