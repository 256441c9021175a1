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
/// When a broker has not answered within this, the next one is tried in parallel (as in
/// "happy eyeballs"): a dead broker costs this much, not a whole `CONNECT_TIMEOUT`.
const CONNECT_STAGGER: Duration = Duration::from_millis(300);
/// Brokers learned from `HelloAck`s, beyond the configured ones.
const LEARNED_BROKERS_MAX: usize = 64;

/// A connection that has completed the `Hello` exchange.
pub struct Connected {
    pub conn: quinn::Connection,
    /// The broker that answered.
    pub node_id: String,
    /// The control stream; host agents keep using it, clients may drop it.
    pub control: (quinn::SendStream, quinn::RecvStream),
    /// Every broker the answering node knows of.
    pub brokers: Vec<wire::BrokerInfo>,
    /// Node ids the cluster removed, as the answering node knows them.
    pub retired: Vec<String>,
}

/// Dials the brokers of one cluster.
pub struct Dialer {
    endpoint: quinn::Endpoint,
    /// The configured brokers, then those learned from brokers' `HelloAck`s.
    brokers: std::sync::Mutex<Vec<BrokerEntry>>,
    role: Role,
    /// What each connection trusts and presents, read again when `ca_cert` changes.
    tls: Trusted,
    /// Brokers the cluster removed: never dialed, never trusted.
    retired: crate::retired::Retired,
}

/// The CA bundle a dialer trusts, followed on disk: during a CA rotation the operator
/// replaces `ca.pem` (old and new CA, then the new alone) and long-running agents and clients
/// trust what it says from their next connection on, without a restart.
struct Trusted {
    ca_cert: std::path::PathBuf,
    /// A host agent's own certificate and key, presented in every handshake.
    identity: Option<tls::Identity>,
    limits: endpoint::Limits,
    /// The configuration built from `ca_cert` as it was last modified.
    current: std::sync::Mutex<(Option<std::time::SystemTime>, quinn::ClientConfig)>,
}

/// A client configuration trusting the CAs in `ca_cert` (presenting `identity` if given).
fn client_config(
    ca_cert: &std::path::Path,
    identity: Option<&tls::Identity>,
    limits: &endpoint::Limits,
) -> Result<quinn::ClientConfig, Error> {
    let trust = tls::Trust::load(ca_cert).map_err(|e| Error::Config(e.to_string()))?;
    let crypto = match identity {
        Some(identity) => tls::host_client(&trust, identity.duplicate()),
        None => tls::client(&trust),
    }
    .map_err(|e| Error::Config(e.to_string()))?;
    endpoint::client_config(crypto, limits).map_err(|e| Error::Local(e.to_string()))
}

impl Trusted {
    fn build(&self) -> Result<quinn::ClientConfig, Error> {
        client_config(&self.ca_cert, self.identity.as_ref(), &self.limits)
    }

    /// The configuration for the next connection: rebuilt when `ca_cert` changed since, else
    /// the last one. A file that cannot be read now (being replaced) leaves the last one.
    fn config(&self) -> quinn::ClientConfig {
        let modified = std::fs::metadata(&self.ca_cert)
            .and_then(|m| m.modified())
            .ok();
        let mut current = self
            .current
            .lock()
            .expect("never poisoned: no panics under the lock");
        if modified.is_some() && modified != current.0 {
            match self.build() {
                Ok(config) => {
                    tracing::info!(ca_cert = %self.ca_cert.display(), "trusting the CA bundle as it is now");
                    *current = (modified, config);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the CA bundle again; trusting it as it was")
                }
            }
        }
        current.1.clone()
    }
}

impl Dialer {
    /// For a client: removed brokers are remembered beside the cached login tokens.
    pub fn new(config: &ClientConfig, role: Role) -> Result<Self, Error> {
        let file = crate::token_cache::path(&config.cluster_name)
            .ok()
            .map(|p| p.with_extension("retired-nodes"));
        Self::build(config, role, None, file)
    }

    /// For a host agent: presents the host's own certificate (`certs::host_key`) in every
    /// handshake, proving it holds the key the cluster pinned at enrollment; removed brokers
    /// are remembered in the agent's state directory.
    pub fn host(
        config: &ClientConfig,
        identity: tls::Identity,
        state_dir: &std::path::Path,
    ) -> Result<Self, Error> {
        let file = state_dir.join("retired-nodes");
        Self::build(config, Role::Host, Some(identity), Some(file))
    }

    fn build(
        config: &ClientConfig,
        role: Role,
        identity: Option<tls::Identity>,
        retired_file: Option<std::path::PathBuf>,
    ) -> Result<Self, Error> {
        let trust = tls::Trust::load(&config.ca_cert).map_err(|e| Error::Config(e.to_string()))?;
        let mut limits = config.transport_limits();
        if role == Role::Host {
            // The broker opens one stream per session on a host's connection: grant at least
            // as many as the agent takes sessions (its own limit refuses with a reason), or the
            // broker's next open would wait for a free one. quinn announces freed streams only
            // once an eighth of the limit is free, hence the margin.
            let sessions = crate::host::SESSIONS_MAX as u32;
            limits.streams_per_connection_max = sessions + sessions / 8 + 1;
        }
        let endpoint = match &identity {
            Some(identity) => endpoint::host(&trust, identity.duplicate(), &limits),
            None => endpoint::client(&trust, &limits),
        }
        .map_err(|e| Error::Local(e.to_string()))?;
        let modified = std::fs::metadata(&config.ca_cert)
            .and_then(|m| m.modified())
            .ok();
        let first = client_config(&config.ca_cert, identity.as_ref(), &limits)?;
        let tls = Trusted {
            ca_cert: config.ca_cert.clone(),
            identity,
            limits,
            current: std::sync::Mutex::new((modified, first)),
        };
        Ok(Self {
            endpoint,
            brokers: std::sync::Mutex::new(config.brokers.clone()),
            role,
            tls,
            retired: crate::retired::Retired::load(retired_file),
        })
    }

    /// Every broker known: configured and learned.
    pub fn brokers(&self) -> Vec<BrokerEntry> {
        self.brokers
            .lock()
            .expect("never poisoned: no panics under the lock")
            .clone()
    }

    /// Adds brokers a broker told us about, so that failover reaches nodes added since the
    /// config file was written.
    fn learn(&self, connected: &Connected) {
        self.retired.learn(&connected.retired);
        let mut known = self
            .brokers
            .lock()
            .expect("never poisoned: no panics under the lock");
        known.retain(|b| !self.retired.contains(&b.node_id));
        for b in &connected.brokers {
            let Ok(relay_addr) = b.relay_addr.parse() else {
                continue;
            };
            if known.len() < LEARNED_BROKERS_MAX && !known.iter().any(|k| k.node_id == b.node_id) {
                tracing::debug!(broker = %b.node_id, %relay_addr, "learned a broker");
                known.push(BrokerEntry {
                    node_id: b.node_id.clone(),
                    relay_addr,
                    admin_url: String::new(),
                });
            }
        }
    }

    /// Connects to a broker, any that answers first. The order is rotated at random so that a
    /// thousand endpoints spread over the brokers, `avoid` (a broker just lost) goes last,
    /// and each next broker is tried after [`CONNECT_STAGGER`] in parallel.
    ///
    /// A broker whose certificate the cluster CA did not sign is reported as untrusted even
    /// if another broker answers later: it means a misconfigured or impersonated node.
    pub async fn connect(&self) -> Result<Connected, Error> {
        self.connect_avoiding(None).await
    }

    pub async fn connect_avoiding(&self, avoid: Option<&str>) -> Result<Connected, Error> {
        use rand::Rng;
        let mut order = self.brokers();
        if order.len() > 1 {
            let start = rand::thread_rng().gen_range(0..order.len());
            order.rotate_left(start);
        }
        order.sort_by_key(|b| Some(b.node_id.as_str()) == avoid);
        let (retired, order): (Vec<BrokerEntry>, Vec<BrokerEntry>) = order
            .into_iter()
            .partition(|b| self.retired.contains(&b.node_id));
        if order.is_empty() {
            if let Some(b) = retired.first() {
                return Err(removed(&b.node_id));
            }
        }
        let mut attempts = tokio::task::JoinSet::new();
        for (i, broker) in order.iter().cloned().enumerate() {
            let (endpoint, role, config) = (self.endpoint.clone(), self.role, self.tls.config());
            attempts.spawn(async move {
                tokio::time::sleep(CONNECT_STAGGER * i as u32).await;
                let result = connect_to(&endpoint, config, role, &broker).await;
                (broker, result)
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = attempts.join_next().await {
            let Ok((broker, result)) = done else { continue };
            match result {
                Ok(connected) => {
                    self.learn(&connected);
                    return Ok(connected);
                }
                Err(e @ (Error::Untrusted(_) | Error::Refused { .. })) => return Err(e),
                Err(e) => {
                    tracing::debug!(broker = %broker.node_id, error = %e, "broker unreachable");
                    failures.push(format!("{} ({}): {e}", broker.node_id, broker.relay_addr));
                }
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    /// Connects to one broker (the one a draining broker named).
    pub async fn connect_to(&self, broker: &wire::BrokerInfo) -> Result<Connected, Error> {
        let relay_addr = broker.relay_addr.parse().map_err(|_| {
            Error::Protocol(format!(
                "broker named an invalid address {:?}",
                broker.relay_addr
            ))
        })?;
        if self.retired.contains(&broker.node_id) {
            return Err(removed(&broker.node_id));
        }
        let entry = BrokerEntry {
            node_id: broker.node_id.clone(),
            relay_addr,
            admin_url: String::new(),
        };
        let connected = connect_to(&self.endpoint, self.tls.config(), self.role, &entry).await?;
        self.learn(&connected);
        Ok(connected)
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

async fn connect_to(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    role: Role,
    broker: &BrokerEntry,
) -> Result<Connected, Error> {
    {
        let dial = async {
            let addr = broker
                .relay_addr
                .resolve(endpoint.local_addr().ok())
                .await
                .map_err(|e| {
                    Error::Unreachable(format!("cannot resolve {}: {e}", broker.relay_addr))
                })?;
            let connecting = endpoint
                .connect_with(config, addr, &broker.node_id)
                .map_err(|e| Error::Config(format!("cannot dial {}: {e}", broker.relay_addr)))?;
            Ok::<_, Error>(connecting.await)
        };
        let conn = match timeout(CONNECT_TIMEOUT, dial).await {
            Err(_) => return Err(Error::Unreachable("no answer within 5 s".into())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Err(e))) => {
                let text = close::describe(&e);
                return Err(if close::is_untrusted(&e) {
                    Error::Untrusted(format!(
                        "broker {} at {}: {text}",
                        broker.node_id, broker.relay_addr
                    ))
                } else {
                    Error::Unreachable(text)
                });
            }
            Ok(Ok(Ok(conn))) => conn,
        };
        let hello = wire::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: role as i32,
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
                retired: ack.retired_nodes,
            }),
            Some(hello_reply::Reply::Error(e)) => Err(Error::refused(e)),
            None => Err(Error::Protocol("broker sent an empty Hello reply".into())),
        }
    }
}

/// The refusal of a broker the cluster removed.
fn removed(node_id: &str) -> Error {
    Error::Untrusted(format!(
        "broker {node_id} was removed from the cluster: its certificate is no longer trusted \
         (remove it from the config file)"
    ))
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
