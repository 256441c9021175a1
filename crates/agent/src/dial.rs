//! Connecting to a broker: QUIC + TLS against the cluster CA, then the `Hello` exchange.

use crate::config::{BrokerEntry, ClientConfig};
use crate::Error;
use ferry_proto::frame::FrameLimits;
use ferry_proto::wire::{self, hello_reply, Role};
use ferry_proto::PROTOCOL_VERSION;
use ferry_transport::{close, endpoint, framed, tls};
use std::time::Duration;
use tokio::time::timeout;

/// How long one broker gets to complete the QUIC/TLS handshake and answer `Hello`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that has completed the `Hello` exchange.
pub struct Connected {
    pub conn: quinn::Connection,
    /// The broker that answered.
    pub node_id: String,
    /// The control stream; host agents keep using it, clients may drop it.
    pub control: (quinn::SendStream, quinn::RecvStream),
    /// Every broker the answering node knows of.
    pub brokers: Vec<wire::BrokerInfo>,
}

/// Dials the brokers of one cluster.
pub struct Dialer {
    endpoint: quinn::Endpoint,
    brokers: Vec<BrokerEntry>,
    role: Role,
}

impl Dialer {
    pub fn new(config: &ClientConfig, role: Role) -> Result<Self, Error> {
        let trust = tls::Trust::load(&config.ca_cert).map_err(|e| Error::Config(e.to_string()))?;
        let endpoint = endpoint::client(&trust, &config.transport_limits())
            .map_err(|e| Error::Local(e.to_string()))?;
        Ok(Self {
            endpoint,
            brokers: config.brokers.clone(),
            role,
        })
    }

    /// Connects to the first broker that answers, trying each in turn.
    ///
    /// A broker whose certificate the cluster CA did not sign is reported as untrusted even
    /// if another broker answers later: it means a misconfigured or impersonated node.
    pub async fn connect(&self) -> Result<Connected, Error> {
        let mut failures = Vec::new();
        for broker in &self.brokers {
            match self.connect_to(broker).await {
                Ok(connected) => return Ok(connected),
                Err(e @ (Error::Untrusted(_) | Error::Refused { .. })) => return Err(e),
                Err(e) => {
                    tracing::debug!(broker = %broker.node_id, error = %e, "broker unreachable");
                    failures.push(format!("{} ({}): {e}", broker.node_id, broker.relay_addr));
                }
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    async fn connect_to(&self, broker: &BrokerEntry) -> Result<Connected, Error> {
        let connecting = self
            .endpoint
            .connect(broker.relay_addr, &broker.node_id)
            .map_err(|e| Error::Config(format!("cannot dial {}: {e}", broker.relay_addr)))?;
        let conn = match timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(Error::Unreachable("no answer within 5 s".into())),
            Ok(Err(e)) => {
                let text = close::describe(&e);
                return Err(if text.contains("certificate") {
                    Error::Untrusted(format!(
                        "broker {} at {}: {text}",
                        broker.node_id, broker.relay_addr
                    ))
                } else {
                    Error::Unreachable(text)
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let hello = wire::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: self.role as i32,
            software: format!("ferry {}", env!("CARGO_PKG_VERSION")),
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&conn, &e))?;
            framed::write(&mut send, &hello, FrameLimits::default())
                .await
                .map_err(|_| closed_now(&conn))?;
            let reply: wire::HelloReply = framed::read(&mut recv, FrameLimits::default())
                .await
                .map_err(|_| closed_now(&conn))?;
            Ok::<_, Error>((send, recv, reply))
        };
        let (send, recv, reply) = timeout(CONNECT_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Unreachable("no Hello reply within 5 s".into()))??;
        match reply.reply {
            Some(hello_reply::Reply::Ack(ack)) => Ok(Connected {
                conn,
                node_id: ack.node_id,
                control: (send, recv),
                brokers: ack.brokers,
            }),
            Some(hello_reply::Reply::Error(e)) => Err(Error::refused(e)),
            None => Err(Error::Protocol("broker sent an empty Hello reply".into())),
        }
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

/// The error for a stream operation that failed because the connection closed. A close that
/// carries a refusal (authentication, protocol version) is final and reported as such, so
/// callers that retry on lost connections do not retry a refusal.
pub(crate) fn closed(conn: &quinn::Connection, e: &dyn std::fmt::Display) -> Error {
    use ferry_transport::CloseCode;
    let Some(reason) = conn.close_reason() else {
        return Error::Protocol(format!("connection failed: {e}"));
    };
    let text = close::describe(&reason);
    let refusal = match &reason {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == CloseCode::Unauthenticated.varint() =>
        {
            Some(wire::ErrorCode::Unauthenticated)
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == CloseCode::UnsupportedVersion.varint() =>
        {
            Some(wire::ErrorCode::UnsupportedVersion)
        }
        _ => None,
    };
    match refusal {
        Some(code) => Error::Refused {
            code,
            message: String::from_utf8_lossy(match &reason {
                quinn::ConnectionError::ApplicationClosed(c) => &c.reason,
                _ => &[],
            })
            .into_owned(),
        },
        None => Error::Protocol(format!("broker {text}")),
    }
}

/// Like [`closed`], waiting briefly for the close reason to arrive.
pub(crate) fn closed_now(conn: &quinn::Connection) -> Error {
    closed(conn, &"stream ended unexpectedly")
}
