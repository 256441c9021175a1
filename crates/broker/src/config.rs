//! A node's configuration: one TOML file per node, written by `ferry init`.
//!
//! Relative paths are resolved against the directory holding the file, so a cluster directory
//! can be moved as a whole. Every default lives in the `Default` impls below, and
//! `docs/OPERATIONS.md` lists them.

pub use ferry_transport::addr::HostPort;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster (`b1`, `w1`); also its certificate's DNS name.
    pub node_id: String,
    /// Broker (serves hosts and clients) or witness (a voter that only stores the log).
    #[serde(default)]
    pub role: Role,
    /// Name of the cluster, shown in status output and used to key cached login tokens.
    pub cluster_name: String,
    /// Where the node keeps its store.
    pub data_dir: PathBuf,
    /// Where hosts and clients reach the QUIC relay listener (UDP): an IP or a DNS name,
    /// with its port. The node listens there too unless `[listen]` says otherwise.
    pub relay_addr: HostPort,
    /// Where operators reach the admin API (TCP; HTTPS+JSON under the cluster CA, metrics,
    /// health), listened on unless `[listen]` says otherwise.
    pub admin_addr: HostPort,
    /// How the admin API serves: plain HTTP beside HTTPS (loopback only), its bounds.
    /// Omitted from generated files while it holds the defaults.
    #[serde(default, skip_serializing_if = "AdminApi::is_default")]
    pub admin_api: AdminApi,
    /// The cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), signed by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// File holding the admin API's bearer token.
    pub admin_token_file: PathBuf,
    /// Where other nodes reach this node's QUIC listener for peers (UDP, mutual TLS).
    /// Required when the cluster has more than one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<HostPort>,
    /// The addresses to listen on, where they differ from the addresses others reach the
    /// node at (behind NAT, in a container, or when those are DNS names).
    #[serde(default, skip_serializing_if = "Listen::is_default")]
    pub listen: Listen,
    /// The other nodes of the cluster.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub raft: RaftConfig,
    /// Omitted from generated files while it holds the defaults (docs/OPERATIONS.md lists
    /// them), so that one `[gate]` table can be added by hand.
    #[serde(default, skip_serializing_if = "GateConfig::is_default")]
    pub gate: GateConfig,
    /// Test-only fault injection; off unless a test turns it on.
    #[serde(default, skip_serializing_if = "Faults::is_off")]
    pub faults: Faults,
}

/// Local addresses to listen on. Each one left out is the matching advertised address
/// (`relay_addr`, `admin_addr`, `peer_addr`) when that is an IP, or every IPv4 address
/// (`0.0.0.0`) on its port when it is a DNS name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

impl Listen {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The local address for an advertised one: itself when it is an IP, else every IPv4
/// address on its port.
fn listen_on(advertised: &HostPort) -> SocketAddr {
    advertised.as_socket_addr().unwrap_or(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        advertised.port(),
    ))
}

/// The admin API's listener: TLS, and the bounds that keep slow or idle clients from holding
/// it (`crates/broker/src/admin/listener.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminApi {
    /// Also answer plain HTTP (beside HTTPS, on the same port). Allowed only when
    /// `admin_addr` is a loopback address: for probes and scrapers on the node itself.
    pub plain_http: bool,
    /// Connections held at once. At the cap, a new connection displaces the oldest one that
    /// has no request in progress, so idle or slow clients cannot shut operators out.
    pub connections_max: usize,
    /// Time a client has for the TLS handshake and each request's headers.
    pub header_timeout_ms: u64,
    /// Time a request's body may take to arrive.
    pub body_timeout_ms: u64,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for AdminApi {
    fn default() -> Self {
        Self {
            plain_http: false,
            connections_max: 256,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            idle_timeout_secs: 60,
        }
    }
}

impl AdminApi {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// Switches that let end-to-end tests create real failure conditions in a real process.
/// Never enable them in production: they let an admin-token holder cut a node off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub enabled: bool,
}

impl Faults {
    fn is_off(&self) -> bool {
        !self.enabled
    }
}

pub use ferry_gate::Role;

pub use ferry_peer::PeerConfig;

/// Consensus settings. Every node of a cluster should use the same timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// This node's Raft id: unique in the cluster, never reused (a replaced node gets a new one).
    pub id: u64,
    /// Raft ids of the voters a new cluster starts with. Ignored once the log holds a
    /// configuration; membership then changes only through committed changes. Empty for a
    /// node joining a running cluster: it waits, serving nothing of the state, until the
    /// leader adds it (`ferry admin member add`) and sends it a snapshot.
    pub initial_voters: Vec<u64>,
    /// Length of one Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns, plus a random 0 to
    /// `election_jitter_ticks` more, so that followers rarely campaign at once.
    pub election_ticks: usize,
    /// Width of that randomization. It must be large compared with the time an election
    /// takes on the network (milliseconds on a LAN); a narrower range elects faster after a
    /// leader dies, because every survivor must time out before voting (check_quorum).
    pub election_jitter_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// How long a write waits to be applied before the caller is told it timed out.
    pub propose_timeout_ms: u64,
    /// A node that heard from the leader this recently authorizes from its applied state;
    /// beyond it, it first confirms with the leader (read_index). See `Proposer::confirm_fresh`.
    pub read_staleness_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            id: 1,
            initial_voters: vec![1],
            tick_ms: 100,
            election_ticks: 10,
            election_jitter_ticks: 5,
            heartbeat_ticks: 2,
            propose_timeout_ms: 5_000,
            // One election timeout: a follower that has not heard from the leader for longer
            // may be on the minority side of a partition.
            read_staleness_ms: 1_000,
        }
    }
}

/// Health thresholds and the planned-restart gate (docs/DESIGN.md section 6). Every node of a
/// cluster should use the same values: the leader's are the ones applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// How long the gate's checks must hold before a restart is allowed, and how long a node
    /// back from maintenance must stay healthy before its lease is released.
    pub stabilization_secs: u64,
    /// A node is in contact when its health report and its last word from a leader are at
    /// most this old (about two election timeouts).
    pub contact_max_ms: u64,
    /// How far a node's applied index may trail the commit index and still count as healthy.
    pub applied_lag_entries_max: u64,
    /// A broker counts as room for another's load only with this much memory left under its
    /// limit (`limits.memory_bytes_max`).
    pub memory_headroom_floor_bytes: u64,
}

impl GateConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            stabilization_secs: 30,
            // Two election timeouts of the default Raft timing (10 ticks of 100 ms).
            contact_max_ms: 2_000,
            applied_lag_entries_max: 1_000,
            memory_headroom_floor_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Every bound a node enforces (STYLE: bound everything). Units are in the names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// QUIC connections open at once; further handshakes are refused.
    pub connections_max: usize,
    /// Connections that have not yet authenticated; bounds what anonymous peers can hold.
    pub unauthenticated_max: usize,
    /// Streams (sessions and requests) one connection may have open at once.
    pub streams_per_connection_max: u32,
    /// Sessions relayed by this node at once.
    pub sessions_max: usize,
    /// Largest control frame accepted from a peer.
    pub frame_bytes_max: usize,
    /// Time allowed for the TLS handshake and the first frame.
    pub handshake_timeout_ms: u64,
    /// Lifetime of a login token.
    pub token_ttl_secs: u64,
    /// Lifetime of a host enrollment token.
    pub enrollment_ttl_secs: u64,
    /// Failed logins of one user from one source (an IPv4 address, an IPv6 /64) before that
    /// pair is locked out for `login_lockout_secs`; each further lockout in a row lasts twice
    /// as long, up to `login_lockout_max_secs`. Counted by the leader, for the whole cluster.
    pub login_failures_max: u32,
    pub login_lockout_secs: u64,
    /// Failed logins of one user from any source before the user is locked out; greater than
    /// `login_failures_max`, so that one address cannot lock a user out of the others.
    #[serde(skip_serializing_if = "admission_default::login_user_failures_max")]
    pub login_user_failures_max: u32,
    /// Failed logins from one source, whatever the user, before the source is locked out.
    #[serde(skip_serializing_if = "admission_default::login_source_failures_max")]
    pub login_source_failures_max: u32,
    /// The longest login lockout.
    #[serde(skip_serializing_if = "admission_default::login_lockout_max_secs")]
    pub login_lockout_max_secs: u64,
    /// Passwords verified at once (argon2id, 19 MiB each); 0: twice the CPU cores.
    #[serde(skip_serializing_if = "admission_default::password_workers_max")]
    pub password_workers_max: usize,
    /// Password verifications waiting for a worker; beyond it a login is told to retry.
    #[serde(skip_serializing_if = "admission_default::password_queue_max")]
    pub password_queue_max: usize,
    /// Enrollments and resumes that fail from one source before it is locked out of them
    /// (for `login_lockout_secs`, doubling).
    #[serde(skip_serializing_if = "admission_default::anonymous_failures_per_source_max")]
    pub anonymous_failures_per_source_max: u32,
    /// QUIC connections open at once from one source.
    #[serde(skip_serializing_if = "admission_default::connections_per_source_max")]
    pub connections_per_source_max: usize,
    /// Connections from one source that have not authenticated yet.
    #[serde(skip_serializing_if = "admission_default::unauthenticated_per_source_max")]
    pub unauthenticated_per_source_max: usize,
    /// Time a connection has to authenticate (a host attaching, a client presenting a valid
    /// password or token) before it is closed.
    #[serde(skip_serializing_if = "admission_default::authenticate_timeout_ms")]
    pub authenticate_timeout_ms: u64,
    /// Bytes a connection may have in flight toward this node until it has authenticated
    /// (its QUIC receive window); then the endpoint's full window applies.
    #[serde(skip_serializing_if = "admission_default::unauthenticated_window_bytes")]
    pub unauthenticated_window_bytes: u32,
    /// Bytes an endpoint may send on its control stream after `Hello` (it has nothing more
    /// to say there); beyond it the connection is closed.
    #[serde(skip_serializing_if = "admission_default::control_stream_bytes_max")]
    pub control_stream_bytes_max: u64,
    /// Sessions one user may have relayed by this node at once.
    #[serde(skip_serializing_if = "admission_default::sessions_per_user_max")]
    pub sessions_per_user_max: usize,
    /// Sessions to one host relayed by this node at once.
    #[serde(skip_serializing_if = "admission_default::sessions_per_host_max")]
    pub sessions_per_host_max: usize,
    /// Refusals of one reason are logged at most once per this period (every one is counted
    /// in `ferry_admission_refused_total{reason}`).
    #[serde(skip_serializing_if = "admission_default::refusal_log_period_secs")]
    pub refusal_log_period_secs: u64,
    /// Failed anonymous attempts are audited as one summary per node and this period.
    #[serde(skip_serializing_if = "admission_default::failure_audit_period_secs")]
    pub failure_audit_period_secs: u64,
    /// A snapshot is taken (and the log compacted) after this many new log entries.
    pub snapshot_every_entries: u64,
    /// Proposals waiting for the log writer; further proposers wait (backpressure).
    pub proposal_queue_max: usize,
    /// Largest UDP payload the relay listener sends and accepts (see
    /// `ferry_transport::endpoint::Limits::udp_payload_bytes_max`).
    pub udp_payload_bytes_max: u16,
    /// How long a session whose path broke waits for its endpoints to resume it through
    /// another broker; after that it is lost (both endpoints close their local connections).
    pub session_resume_window_secs: u64,
    /// The node's memory limit: above it the node reports itself unhealthy and the restart
    /// gate does not count on it. 0: the machine's memory.
    pub memory_bytes_max: u64,
    /// Raft messages queued per peer; beyond it they are dropped (Raft retransmits).
    #[serde(skip_serializing_if = "peer_default::raft_queue")]
    pub peer_raft_queue_max: usize,
    /// Largest frame on a peer link: a Raft append (1 MiB of entries) or a whole-state
    /// snapshot, so it bounds the state a cluster can hold.
    #[serde(skip_serializing_if = "peer_default::frame_bytes")]
    pub peer_frame_bytes_max: usize,
    /// Peer requests (forwarded proposals, store probes, rejoins, health reports) waiting for
    /// this node; beyond it they are refused and the peer retries.
    #[serde(skip_serializing_if = "peer_default::request_queue")]
    pub peer_request_queue_max: usize,
    /// Sessions other brokers ask this node to carry, waiting to start; beyond it refused.
    #[serde(skip_serializing_if = "peer_default::relay_queue")]
    pub peer_relay_queue_max: usize,
    /// Restart-gate questions from peers waiting for this node (as leader); beyond it refused.
    #[serde(skip_serializing_if = "peer_default::gate_queue")]
    pub peer_gate_queue_max: usize,
    /// Incoming peer connections in their TLS handshake at once; beyond it refused.
    #[serde(skip_serializing_if = "peer_default::handshakes")]
    pub peer_handshakes_max: usize,
}

/// Whether a peer limit holds its default: written configs leave those out, so that a node of
/// an older version (which knows no `peer_*` limits) can still read a config written by this
/// one during a rolling upgrade or a rollback.
mod peer_default {
    fn defaults() -> ferry_peer::Limits {
        ferry_peer::Limits::default()
    }
    pub fn raft_queue(v: &usize) -> bool {
        *v == defaults().raft_queue_max
    }
    pub fn frame_bytes(v: &usize) -> bool {
        *v == defaults().frame_bytes_max
    }
    pub fn request_queue(v: &usize) -> bool {
        *v == defaults().request_queue_max
    }
    pub fn relay_queue(v: &usize) -> bool {
        *v == defaults().relay_queue_max
    }
    pub fn gate_queue(v: &usize) -> bool {
        *v == defaults().gate_queue_max
    }
    pub fn handshakes(v: &usize) -> bool {
        *v == defaults().handshakes_max
    }
}

/// Whether an admission limit (issue 10/12) holds its default: written configs leave those
/// out, for the same reason as the peer limits.
mod admission_default {
    macro_rules! is_default {
        ($($field:ident: $ty:ty),* $(,)?) => {$(
            pub fn $field(v: &$ty) -> bool {
                *v == super::Limits::default().$field
            }
        )*};
    }
    is_default!(
        login_user_failures_max: u32,
        login_source_failures_max: u32,
        login_lockout_max_secs: u64,
        password_workers_max: usize,
        password_queue_max: usize,
        anonymous_failures_per_source_max: u32,
        connections_per_source_max: usize,
        unauthenticated_per_source_max: usize,
        authenticate_timeout_ms: u64,
        unauthenticated_window_bytes: u32,
        control_stream_bytes_max: u64,
        sessions_per_user_max: usize,
        sessions_per_host_max: usize,
        refusal_log_period_secs: u64,
        failure_audit_period_secs: u64,
    );
}

impl Default for Limits {
    fn default() -> Self {
        let peer = ferry_peer::Limits::default();
        Self {
            connections_max: 20_000,
            unauthenticated_max: 512,
            streams_per_connection_max: 256,
            sessions_max: 10_000,
            frame_bytes_max: ferry_proto::frame::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout_ms: 10_000,
            token_ttl_secs: 12 * 3600,
            enrollment_ttl_secs: 7 * 24 * 3600,
            login_failures_max: 5,
            login_lockout_secs: 60,
            login_user_failures_max: 20,
            login_source_failures_max: 100,
            login_lockout_max_secs: 3600,
            password_workers_max: 0,
            password_queue_max: 64,
            anonymous_failures_per_source_max: 100,
            // A school's NAT may put a thousand hosts behind one address, and a benchmark
            // ten thousand behind loopback.
            connections_per_source_max: 16_384,
            unauthenticated_per_source_max: 128,
            authenticate_timeout_ms: 30_000,
            unauthenticated_window_bytes: 64 * 1024,
            control_stream_bytes_max: 64 * 1024,
            // A quarter of `sessions_max`: a browser or a database pool behind one forward
            // opens hundreds at once, yet four tokens are needed to fill a node.
            sessions_per_user_max: 2_500,
            sessions_per_host_max: 2_500,
            refusal_log_period_secs: 60,
            failure_audit_period_secs: 60,
            snapshot_every_entries: 10_000,
            proposal_queue_max: 4096,
            udp_payload_bytes_max: ferry_transport::endpoint::UDP_PAYLOAD_BYTES_DEFAULT,
            session_resume_window_secs: 60,
            memory_bytes_max: 0,
            peer_raft_queue_max: peer.raft_queue_max,
            peer_frame_bytes_max: peer.frame_bytes_max,
            peer_request_queue_max: peer.request_queue_max,
            peer_relay_queue_max: peer.relay_queue_max,
            peer_gate_queue_max: peer.gate_queue_max,
            peer_handshakes_max: peer.handshakes_max,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn authenticate_timeout(&self) -> Duration {
        Duration::from_millis(self.authenticate_timeout_ms)
    }

    /// The login rules' limits.
    pub fn login(&self) -> ferry_admission::LoginLimits {
        ferry_admission::LoginLimits {
            failures_max: self.login_failures_max,
            user_failures_max: self.login_user_failures_max,
            source_failures_max: self.login_source_failures_max,
            lockout: Duration::from_secs(self.login_lockout_secs),
            lockout_max: Duration::from_secs(self.login_lockout_max_secs),
        }
    }

    /// Password verifications run at once.
    pub fn password_workers(&self) -> usize {
        match self.password_workers_max {
            0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn session_resume_window(&self) -> Duration {
        Duration::from_secs(self.session_resume_window_secs)
    }

    /// The bounds of the peer links.
    pub fn peer(&self) -> ferry_peer::Limits {
        ferry_peer::Limits {
            raft_queue_max: self.peer_raft_queue_max,
            frame_bytes_max: self.peer_frame_bytes_max,
            request_queue_max: self.peer_request_queue_max,
            relay_queue_max: self.peer_relay_queue_max,
            gate_queue_max: self.peer_gate_queue_max,
            handshakes_max: self.peer_handshakes_max,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl NodeConfig {
    /// The local address of the relay listener.
    pub fn relay_listen(&self) -> SocketAddr {
        self.listen
            .relay
            .unwrap_or_else(|| listen_on(&self.relay_addr))
    }

    /// The local address of the admin API.
    pub fn admin_listen(&self) -> SocketAddr {
        self.listen
            .admin
            .unwrap_or_else(|| listen_on(&self.admin_addr))
    }

    /// The local address of the peer listener, when the node has peers.
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.listen
            .peer
            .or_else(|| self.peer_addr.as_ref().map(listen_on))
    }

    /// Reads, parses, validates, and resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.ca_cert,
            &mut config.cert,
            &mut config.key,
            &mut config.admin_token_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.validate().map_err(|detail| Error::Invalid {
            path: path.to_owned(),
            detail,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        ferry_state::validate_name(ferry_state::NameKind::Host, &self.node_id)
            .map_err(|r| format!("node_id: {r}"))?;
        let l = &self.limits;
        let positive = [
            ("limits.connections_max", l.connections_max as u64),
            ("limits.unauthenticated_max", l.unauthenticated_max as u64),
            (
                "limits.streams_per_connection_max",
                u64::from(l.streams_per_connection_max),
            ),
            ("limits.sessions_max", l.sessions_max as u64),
            ("limits.login_failures_max", u64::from(l.login_failures_max)),
            ("limits.login_lockout_secs", l.login_lockout_secs),
            ("limits.password_queue_max", l.password_queue_max as u64),
            (
                "limits.anonymous_failures_per_source_max",
                u64::from(l.anonymous_failures_per_source_max),
            ),
            (
                "limits.connections_per_source_max",
                l.connections_per_source_max as u64,
            ),
            (
                "limits.unauthenticated_per_source_max",
                l.unauthenticated_per_source_max as u64,
            ),
            ("limits.authenticate_timeout_ms", l.authenticate_timeout_ms),
            (
                "limits.unauthenticated_window_bytes",
                u64::from(l.unauthenticated_window_bytes),
            ),
            (
                "limits.control_stream_bytes_max",
                l.control_stream_bytes_max,
            ),
            (
                "limits.sessions_per_user_max",
                l.sessions_per_user_max as u64,
            ),
            (
                "limits.sessions_per_host_max",
                l.sessions_per_host_max as u64,
            ),
            ("limits.refusal_log_period_secs", l.refusal_log_period_secs),
            (
                "limits.failure_audit_period_secs",
                l.failure_audit_period_secs,
            ),
            ("limits.token_ttl_secs", l.token_ttl_secs),
            ("limits.enrollment_ttl_secs", l.enrollment_ttl_secs),
            ("limits.snapshot_every_entries", l.snapshot_every_entries),
            ("limits.proposal_queue_max", l.proposal_queue_max as u64),
            (
                "limits.session_resume_window_secs",
                l.session_resume_window_secs,
            ),
            ("gate.contact_max_ms", self.gate.contact_max_ms),
            ("limits.peer_raft_queue_max", l.peer_raft_queue_max as u64),
            ("limits.peer_frame_bytes_max", l.peer_frame_bytes_max as u64),
            (
                "limits.peer_request_queue_max",
                l.peer_request_queue_max as u64,
            ),
            ("limits.peer_relay_queue_max", l.peer_relay_queue_max as u64),
            ("limits.peer_gate_queue_max", l.peer_gate_queue_max as u64),
            ("limits.peer_handshakes_max", l.peer_handshakes_max as u64),
            (
                "admin_api.connections_max",
                self.admin_api.connections_max as u64,
            ),
            (
                "admin_api.header_timeout_ms",
                self.admin_api.header_timeout_ms,
            ),
            ("admin_api.body_timeout_ms", self.admin_api.body_timeout_ms),
            (
                "admin_api.idle_timeout_secs",
                self.admin_api.idle_timeout_secs,
            ),
        ];
        if self.admin_api.plain_http && !self.admin_listen().ip().is_loopback() {
            return Err(format!(
                "admin_api.plain_http is allowed only on a loopback admin_addr, not {}: \
                 elsewhere the admin API answers HTTPS alone",
                self.admin_listen()
            ));
        }
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        use ferry_transport::endpoint::{UDP_PAYLOAD_BYTES_MAX, UDP_PAYLOAD_BYTES_MIN};
        if let Some(problem) = l.login().problem() {
            return Err(problem);
        }
        if !(UDP_PAYLOAD_BYTES_MIN..=UDP_PAYLOAD_BYTES_MAX).contains(&l.udp_payload_bytes_max) {
            return Err(format!(
                "limits.udp_payload_bytes_max is {}; it must be between {UDP_PAYLOAD_BYTES_MIN} and {UDP_PAYLOAD_BYTES_MAX}",
                l.udp_payload_bytes_max
            ));
        }
        if !self.peers.is_empty() && self.peer_addr.is_none() {
            return Err("peer_addr is required when peers are configured".into());
        }
        let mut ids = std::collections::BTreeSet::from([self.raft.id]);
        for peer in &self.peers {
            if !ids.insert(peer.raft_id) || peer.raft_id == 0 {
                return Err(format!(
                    "peer {} has raft_id {}, which is 0 or used twice",
                    peer.node_id, peer.raft_id
                ));
            }
        }
        let r = &self.raft;
        if r.id == 0 {
            return Err("raft.id must be greater than 0".into());
        }
        if r.initial_voters.is_empty() && self.peers.is_empty() {
            return Err(
                "raft.initial_voters is empty (a node joining a cluster) but no peers are \
                 configured to join"
                    .into(),
            );
        }
        if r.election_jitter_ticks == 0 {
            return Err("raft.election_jitter_ticks must be at least 1".into());
        }
        if r.tick_ms == 0 || r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err(format!(
                "raft timing is invalid: tick_ms {} must be > 0 and election_ticks {} must exceed heartbeat_ticks {} (> 0)",
                r.tick_ms, r.election_ticks, r.heartbeat_ticks
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&l.frame_bytes_max) {
            return Err(format!(
                "limits.frame_bytes_max is {}; it must be between 1 KiB and 16 MiB",
                l.frame_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config written with the default peer limits names none of them, so that a node of the
    /// version before them (whose `limits` deny unknown fields) reads it; set ones are kept.
    #[test]
    fn default_peer_limits_are_not_written() {
        let written = toml::to_string(&Limits::default()).expect("Limits serialize");
        assert!(!written.contains("peer_"), "{written}");
        let set = Limits {
            peer_handshakes_max: 8,
            ..Limits::default()
        };
        let written = toml::to_string(&set).expect("Limits serialize");
        assert!(written.contains("peer_handshakes_max = 8"), "{written}");
        let back: Limits = toml::from_str(&written).expect("what is written reads back");
        assert_eq!(back.peer_handshakes_max, 8);
        assert_eq!(
            back.peer_raft_queue_max,
            Limits::default().peer_raft_queue_max
        );
    }
}
