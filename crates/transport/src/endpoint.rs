//! quinn endpoints for brokers, host agents and clients, with Ferry's transport limits.

use crate::tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Transport limits of one side of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bidirectional streams the peer may have open at once on one connection.
    pub streams_per_connection_max: u32,
    /// Unidirectional streams the peer may have open at once: none for clients and hosts;
    /// peer links carry Raft messages on them.
    pub uni_streams_per_connection_max: u32,
    /// Bytes the peer may have in flight on one connection (all streams).
    pub connection_window_bytes: u32,
    /// The connection window a new connection starts with, when smaller: a broker grants
    /// an anonymous peer little until it authenticates, then raises the window to
    /// `connection_window_bytes` (`quinn::Connection::set_receive_window`).
    pub initial_connection_window_bytes: Option<u32>,
    /// Bytes the peer may have in flight on one stream.
    pub stream_window_bytes: u32,
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive pings, so an idle but healthy connection never hits the idle timeout.
    pub keep_alive: Duration,
    /// Largest UDP payload sent (MTU discovery searches up to it) and accepted. 1452 fits any
    /// Ethernet path; loopback and jumbo-frame networks can go up to 65527, which cuts the
    /// per-packet cost of bulk transfers. Discovery makes a too-high value safe, only slower
    /// to converge; the receive buffer grows linearly with it.
    pub udp_payload_bytes_max: u16,
}

/// Ethernet-safe UDP payload for IPv4 and IPv6 (quinn's default MTU discovery bound).
pub const UDP_PAYLOAD_BYTES_DEFAULT: u16 = 1452;
/// QUIC's minimum; nothing smaller can carry an Initial packet.
pub const UDP_PAYLOAD_BYTES_MIN: u16 = 1200;
/// The largest UDP payload IPv6 allows.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 65527;

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_connection_max: 256,
            uni_streams_per_connection_max: 0,
            connection_window_bytes: 32 * 1024 * 1024,
            initial_connection_window_bytes: None,
            stream_window_bytes: 8 * 1024 * 1024,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            udp_payload_bytes_max: UDP_PAYLOAD_BYTES_DEFAULT,
        }
    }
}

fn transport(limits: &Limits) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits.udp_payload_bytes_max);
    t.mtu_discovery_config(Some(mtu));
    // Ask the peer to acknowledge every 8th ack-eliciting packet instead of every 2nd: bulk
    // transfers spend a large share of their CPU on ACKs (measured in docs/BENCHMARKS.md).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(7u32.into());
    t.ack_frequency_config(Some(ack));
    t.max_concurrent_bidi_streams(limits.streams_per_connection_max.into())
        .max_concurrent_uni_streams(limits.uni_streams_per_connection_max.into())
        .receive_window(
            limits
                .initial_connection_window_bytes
                .unwrap_or(limits.connection_window_bytes)
                .into(),
        )
        .stream_receive_window(limits.stream_window_bytes.into())
        .send_window(u64::from(limits.connection_window_bytes))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_idle_timeout(Some(limits.idle_timeout.try_into().expect(
            "idle timeout is configured in seconds, far below QUIC's 2^62 ms limit",
        )));
    Arc::new(t)
}

/// A broker's listening endpoint.
pub fn server(
    addr: SocketAddr,
    identity: tls::Identity,
    limits: &Limits,
) -> Result<quinn::Endpoint, Error> {
    let reset = reset_key(&identity);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server(identity)?)
        .map_err(|e| Error::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(limits));
    bind(addr, Some(config), limits, Some(reset))
}

/// The key of a node's stateless resets, derived from its private key so that it survives a
/// restart: the restarted process can then reset its previous incarnation's connections, and
/// peers and endpoints learn at once that those are gone instead of waiting for the idle timeout.
fn reset_key(identity: &tls::Identity) -> ring::hmac::Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"ferry stateless reset key v1");
    context.update(identity.key.secret_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, context.finish().as_ref())
}

/// Binds a UDP socket and builds an endpoint with Ferry's endpoint-wide limits.
fn bind(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    limits: &Limits,
    reset_key: Option<ring::hmac::Key>,
) -> Result<quinn::Endpoint, Error> {
    let mut config = match reset_key {
        Some(key) => quinn::EndpointConfig::new(Arc::new(key)),
        None => quinn::EndpointConfig::default(),
    };
    config
        .max_udp_payload_size(limits.udp_payload_bytes_max.max(UDP_PAYLOAD_BYTES_MIN))
        .map_err(|e| {
            Error::Quic(format!(
                "UDP payload limit {}: {e}",
                limits.udp_payload_bytes_max
            ))
        })?;
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    let runtime = quinn::default_runtime().ok_or_else(|| Error::Quic("no async runtime".into()))?;
    quinn::Endpoint::new(config, server, socket, runtime)
        .map_err(|source| Error::Bind { addr, source })
}

/// A broker's peer endpoint: accepts peers (mutual TLS) and dials them with the same identity.
pub fn peer(
    addr: SocketAddr,
    identity: tls::Identity,
    trust: &tls::Trust,
    limits: &Limits,
) -> Result<quinn::Endpoint, Error> {
    let reset = reset_key(&identity);
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(tls::peer_server(
        identity.duplicate(),
        trust,
    )?)
    .map_err(|e| Error::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport(limits));
    let client =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls::peer_client(identity, trust)?)
            .map_err(|e| Error::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport(limits));
    let mut endpoint = bind(addr, Some(server), limits, Some(reset))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A QUIC client configuration from a TLS one, with Ferry's transport limits: for dialing
/// with a configuration newer than the endpoint's default (a CA bundle read again).
pub fn client_config(
    crypto: rustls::ClientConfig,
    limits: &Limits,
) -> Result<quinn::ClientConfig, Error> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| Error::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(limits));
    Ok(config)
}

/// An endpoint that dials brokers, trusting only the cluster CA.
pub fn client(trust: &tls::Trust, limits: &Limits) -> Result<quinn::Endpoint, Error> {
    dialer(tls::client(trust)?, limits)
}

/// An endpoint that dials brokers as a host agent: trusting only the cluster CA, presenting
/// the host's own certificate.
pub fn host(
    trust: &tls::Trust,
    identity: tls::Identity,
    limits: &Limits,
) -> Result<quinn::Endpoint, Error> {
    dialer(tls::host_client(trust, identity)?, limits)
}

fn dialer(crypto: rustls::ClientConfig, limits: &Limits) -> Result<quinn::Endpoint, Error> {
    let config = client_config(crypto, limits)?;
    let addr: SocketAddr = "0.0.0.0:0".parse().expect("literal socket address");
    let mut endpoint = bind(addr, None, limits, None)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
