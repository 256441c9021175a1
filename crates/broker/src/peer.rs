//! Peer links between brokers: Raft messages and forwarded proposals over QUIC with mutual TLS.
//!
//! Each node dials every peer and keeps one connection per peer for what it sends: Raft
//! messages on one unidirectional stream, forwarded proposals on bidirectional streams. It
//! accepts the peers' connections for what they send. A peer is identified by its client
//! certificate (signed by the cluster CA and naming a configured node), never by what it
//! claims, and a Raft message is accepted only with that peer's Raft id as sender.
//!
//! Every queue is bounded: a slow or dead peer loses its own messages (Raft retransmits) and
//! never stalls the others.
//!
//! The set of peers is the configured one plus the members added at runtime (the replicated
//! member directory), minus retired raft ids; it is reconciled every second and whenever a
//! message or a connection names a peer not yet known.

use crate::config::PeerConfig;
use crate::replication::{ProposeError, Replica};
use ferry_consensus::Message;
use ferry_proto::frame::FrameLimits;
use ferry_proto::peer::{
    forward_response, peer_request, ForwardRequest, ForwardResponse, GateRequest, GateResponse,
    HealthReport, PeerRequest, RaftMessage, Refusal, Rejoin, RejoinReply, RelayRequest,
    RelayResponse, StoreProbe, StoreProbeReply,
};
use ferry_proto::state::Command;
use ferry_proto::wire;
use ferry_state::{Outcome, RefusalKind};
use ferry_transport::framed;
use prost::Message as _;
use protobuf::Message as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};

/// Raft messages queued per peer; beyond it they are dropped.
const PEER_QUEUE_MAX: usize = 1024;
/// Largest peer frame: a Raft append (1 MiB of entries) or a whole-state snapshot.
const PEER_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Time allowed to connect to a peer before trying again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a forwarded proposal may take; past it the leader is presumed gone and the caller
/// retries with whoever leads next. Covers the leader's fsync and a quorum round trip.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach a peer that is down.
const RECONNECT_DELAY: Duration = Duration::from_millis(300);
/// How often the set of peers is compared with the replicated member directory.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Time a peer may take to say whether it has seen a raft id (an answer from local state).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time a rejoin may take: up to three membership changes, each a proposal of
/// `raft.propose_timeout_ms` (5 s by default), forwarded once.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(20);

fn limits() -> FrameLimits {
    FrameLimits {
        max_frame_bytes: PEER_FRAME_BYTES_MAX,
    }
}

struct Link {
    config: PeerConfig,
    /// Raft messages waiting to be sent.
    queue: mpsc::Sender<Message>,
    /// The connection this node dialed, shared by the sender and by forwarders.
    conn: Mutex<Option<quinn::Connection>>,
    /// Set when the peer left the cluster: its sender stops and its connection closes.
    retired: std::sync::atomic::AtomicBool,
    /// A health report to this peer is on its way; the next one waits for the one after.
    report_in_flight: std::sync::atomic::AtomicBool,
}

impl Link {
    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Another broker, as this node's links know it.
#[derive(Debug, Clone)]
pub struct PeerBroker {
    pub node_id: String,
    pub raft_id: u64,
    /// Its relay listener, when its config (or the member directory) says.
    pub relay_addr: Option<std::net::SocketAddr>,
}

/// A session another broker asks this one to carry to a host attached here.
pub struct IncomingRelay {
    pub request: RelayRequest,
    /// Toward the client's broker; the answer (`RelayResponse`) goes first.
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Relay requests waiting for the node; beyond it they are refused (the sessions limit
/// applies on the client's broker, this bounds what peers can queue here).
pub const RELAY_QUEUE_MAX: usize = 256;
/// Gate requests from peers waiting for this node; beyond it they are refused.
pub const GATE_QUEUE_MAX: usize = 16;
/// Time a health report may take to reach a peer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a gate request to the leader may take: a read index (2 s at most), a proposal
/// (`raft.propose_timeout_ms`, 5 s by default) and room for both round trips. Giving up
/// earlier would report a failure for a lease that is then recorded.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gate request from a peer and where its answer goes.
pub type IncomingGate = (GateRequest, tokio::sync::oneshot::Sender<GateResponse>);

/// Where what peers send ends up: relayed sessions, health reports, gate requests.
#[derive(Clone)]
pub struct Inbox {
    pub relays: mpsc::Sender<IncomingRelay>,
    pub reports: Arc<crate::health::Reports>,
    pub gates: mpsc::Sender<IncomingGate>,
}

/// This node's side of every peer link.
pub struct Peers {
    endpoint: quinn::Endpoint,
    /// This node's id: never a peer of itself (its raft id can change when it rejoins).
    node_id: String,
    /// The peers from this node's config file (the initial configuration, or whom to join).
    configured: Vec<PeerConfig>,
    /// Current links by raft id (configured and added members).
    links: std::sync::RwLock<HashMap<u64, Arc<Link>>>,
    replica: Replica,
    shutdown: watch::Receiver<bool>,
    /// Raft ids of peers cut off by the test-only fault switch: nothing is sent to them and
    /// nothing from them is accepted, as in a network partition.
    blocked: std::sync::RwLock<std::collections::HashSet<u64>>,
    /// Raft ids learned from authenticated Raft messages, by node id: a configured peer that
    /// rejoined under a new id, before this node's state (empty, if it rejoins too) says so.
    learned: std::sync::RwLock<HashMap<String, u64>>,
}

impl Peers {
    /// Creates the links to the configured peers (a sender task per peer). The node runs the
    /// rest as supervised services: [`Peers::accept_loop`], [`Peers::dispatch_loop`] and
    /// [`Peers::reconcile_loop`].
    pub fn start(
        endpoint: quinn::Endpoint,
        node_id: &str,
        peers: &[PeerConfig],
        replica: Replica,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            endpoint,
            node_id: node_id.to_owned(),
            configured: peers.to_vec(),
            links: Default::default(),
            replica: replica.clone(),
            shutdown: shutdown.clone(),
            blocked: Default::default(),
            learned: Default::default(),
        });
        this.reconcile();
        this
    }

    /// Service "raft-outbox": hands each message of the consensus driver to its peer's queue.
    pub async fn dispatch_loop(
        self: Arc<Self>,
        outbox: Arc<Mutex<mpsc::Receiver<Message>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::supervisor::ServiceResult {
        let mut outbox = outbox.lock().await;
        loop {
            let message = tokio::select! {
                message = outbox.recv() => match message {
                    Some(message) => message,
                    None => return Err("the consensus driver's outbox closed".into()),
                },
                _ = shutdown.changed() => return Ok(()),
            };
            if self.is_blocked(message.to) {
                continue;
            }
            let link = self.link(message.to).or_else(|| {
                self.reconcile(); // a member the directory has just added
                self.link(message.to)
            });
            match link {
                // Full: this peer is behind; drop rather than stall the others.
                Some(link) => drop(link.queue.try_send(message)),
                None => tracing::debug!(to = message.to, "message for an unknown peer dropped"),
            }
        }
    }

    /// Service "peer-directory": follows the member directory every second.
    pub async fn reconcile_loop(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::supervisor::ServiceResult {
        let mut every = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => self.reconcile(),
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Brings the links in line with the configured peers and the member directory: links for
    /// new members, none for retired raft ids.
    fn reconcile(self: &Arc<Self>) {
        let (mut wanted, retired): (Vec<PeerConfig>, Vec<u64>) = {
            let state = self.replica.read();
            let added = state.members().filter_map(|m| {
                let peer_addr = m.peer_addr.parse().ok()?;
                Some(PeerConfig {
                    node_id: m.node_id.clone(),
                    raft_id: m.raft_id,
                    peer_addr,
                    relay_addr: m.relay_addr.parse().ok(),
                    role: match m.role() {
                        ferry_proto::state::MemberRole::Witness => crate::config::NodeRole::Witness,
                        ferry_proto::state::MemberRole::Broker => crate::config::NodeRole::Broker,
                    },
                })
            });
            let added: Vec<PeerConfig> = added.collect();
            (added, state.retired_raft_ids().collect())
        };
        let learned = self
            .learned
            .read()
            .expect("never poisoned: no panics under the lock")
            .clone();
        for peer in &self.configured {
            let mut peer = peer.clone();
            if let Some(id) = learned.get(&peer.node_id) {
                peer.raft_id = *id;
            }
            if !wanted.iter().any(|w| w.raft_id == peer.raft_id) {
                wanted.push(peer);
            }
        }
        wanted.retain(|p| p.node_id != self.node_id && !retired.contains(&p.raft_id));
        let mut links = self
            .links
            .write()
            .expect("never poisoned: no panics under the lock");
        links.retain(|id, link| {
            let keep = wanted.iter().any(|w| w.raft_id == *id && w == &link.config);
            if !keep {
                tracing::info!(peer = %link.config.node_id, raft_id = id, "peer left the cluster; link closed");
                link.retired.store(true, std::sync::atomic::Ordering::Release);
            }
            keep
        });
        for peer in wanted {
            if links.contains_key(&peer.raft_id) {
                continue;
            }
            tracing::info!(peer = %peer.node_id, raft_id = peer.raft_id, addr = %peer.peer_addr, "peer link added");
            let (queue, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let link = Arc::new(Link {
                config: peer.clone(),
                queue,
                conn: Mutex::new(None),
                retired: Default::default(),
                report_in_flight: Default::default(),
            });
            links.insert(peer.raft_id, link.clone());
            tokio::spawn(self.clone().send_loop(link, rx, self.shutdown.clone()));
        }
    }

    fn link(&self, raft_id: u64) -> Option<Arc<Link>> {
        self.links
            .read()
            .expect("never poisoned: no panics under the lock")
            .get(&raft_id)
            .cloned()
    }

    /// A Raft message from peer `node_id` (authenticated by its certificate) says it is now
    /// raft id `raft_id`: it rejoined under a new id. Adopted unless the id is retired or
    /// belongs to another node; the links are then rebuilt around it.
    fn learn_raft_id(self: &Arc<Self>, node_id: &str, raft_id: u64) -> bool {
        {
            let state = self.replica.read();
            if state.is_retired(raft_id)
                || state.member(raft_id).is_some_and(|m| m.node_id != node_id)
            {
                return false;
            }
        }
        let taken = self
            .links
            .read()
            .expect("never poisoned: no panics under the lock")
            .values()
            .any(|l| l.config.raft_id == raft_id && l.config.node_id != node_id);
        if taken {
            return false;
        }
        tracing::info!(peer = node_id, raft_id, "peer speaks under a new raft id");
        self.learned
            .write()
            .expect("never poisoned: no panics under the lock")
            .insert(node_id.to_owned(), raft_id);
        self.reconcile();
        true
    }

    /// Every current link, cloned out of the lock.
    fn all_links(&self) -> Vec<Arc<Link>> {
        self.links
            .read()
            .expect("never poisoned: no panics under the lock")
            .values()
            .cloned()
            .collect()
    }

    fn link_named(&self, node_id: &str) -> Option<Arc<Link>> {
        self.links
            .read()
            .expect("never poisoned: no panics under the lock")
            .values()
            .find(|l| l.config.node_id == node_id)
            .cloned()
    }

    fn names(&self) -> Vec<String> {
        self.links
            .read()
            .expect("never poisoned: no panics under the lock")
            .values()
            .map(|l| l.config.node_id.clone())
            .collect()
    }

    /// Test-only fault switch: cuts this node off from the peers named (by node id), or
    /// heals the partition with an empty list. Returns the ids it did not recognise.
    pub fn set_blocked(&self, node_ids: &[String]) -> Vec<String> {
        let mut blocked = self
            .blocked
            .write()
            .expect("never poisoned: no panics under the lock");
        blocked.clear();
        let mut unknown = Vec::new();
        for id in node_ids {
            match self.link_named(id) {
                Some(link) => {
                    blocked.insert(link.config.raft_id);
                }
                None => unknown.push(id.clone()),
            }
        }
        unknown
    }

    fn is_blocked(&self, raft_id: u64) -> bool {
        self.blocked
            .read()
            .expect("never poisoned: no panics under the lock")
            .contains(&raft_id)
    }

    /// The connection to `link`, dialing it if needed.
    async fn connection(&self, link: &Link) -> Option<quinn::Connection> {
        let mut conn = link.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Some(c.clone());
        }
        let connecting = self
            .endpoint
            .connect(link.config.peer_addr, &link.config.node_id)
            .ok()?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => {
                tracing::info!(peer = %link.config.node_id, "peer link up");
                *conn = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %link.config.node_id, error = %e, "peer unreachable");
                None
            }
            Err(_) => None,
        }
    }

    async fn send_loop(
        self: Arc<Self>,
        link: Arc<Link>,
        mut rx: mpsc::Receiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if link.is_retired() {
                if let Some(conn) = link.conn.lock().await.take() {
                    conn.close(
                        ferry_transport::CloseCode::ShuttingDown.varint(),
                        b"removed from the cluster",
                    );
                }
                return;
            }
            let Some(conn) = self.connection(&link).await else {
                // Drop what queued up while the peer was down: it is stale by now.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let Ok(mut stream) = conn.open_uni().await else {
                continue;
            };
            loop {
                let message = tokio::select! {
                    m = rx.recv() => match m { Some(m) => m, None => return },
                    _ = shutdown.changed() => return,
                    // Look at `retired` now and then even when nothing is sent.
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {
                        if link.is_retired() { break }
                        continue
                    }
                };
                let frame = RaftMessage {
                    message: message.write_to_bytes().unwrap_or_default(),
                };
                if framed::write(&mut stream, &frame, limits()).await.is_err() {
                    break; // reconnect; Raft retransmits what was lost
                }
            }
        }
    }

    /// Service "peer-links": accepts the peers' connections and serves what they send, until
    /// shutdown.
    pub async fn accept_loop(
        self: Arc<Self>,
        inbox: Inbox,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::supervisor::ServiceResult {
        let replica = self.replica.clone();
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return Err("the peer endpoint closed".into()),
                },
                _ = shutdown.changed() => {
                    // Closing the endpoint ends every peer connection and the tasks serving them.
                    self.endpoint.close(ferry_transport::CloseCode::ShuttingDown.varint(), b"node shutting down");
                    return Ok(());
                }
            };
            let (replica, inbox) = (replica.clone(), inbox.clone());
            let this = self.clone();
            tokio::spawn(async move {
                let Ok(Ok(conn)) = tokio::time::timeout(CONNECT_TIMEOUT, incoming).await else {
                    return;
                };
                let mut peer = identify(&conn, &this.names()).and_then(|id| this.link_named(&id));
                if peer.is_none() {
                    this.reconcile(); // perhaps a member added a moment ago
                    peer = identify(&conn, &this.names()).and_then(|id| this.link_named(&id));
                }
                let Some(peer) = peer.map(|link| link.config.clone()) else {
                    tracing::warn!(remote = %conn.remote_address(), "peer connection refused: certificate names no configured peer");
                    conn.close(1u32.into(), b"certificate names no configured peer");
                    return;
                };
                serve_peer(this, conn, peer, replica, inbox).await;
            });
        }
    }

    /// Asks the leader to propose `command` and returns its outcome.
    pub async fn forward(&self, leader: u64, command: &Command) -> Result<Outcome, ProposeError> {
        let link = self
            .link(leader)
            .ok_or(ProposeError::NotLeader { leader })?;
        let conn = self
            .connection(&link)
            .await
            .ok_or(ProposeError::NotLeader { leader })?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let request = PeerRequest {
                request: Some(peer_request::Request::Forward(ForwardRequest {
                    command: command.encode_to_vec(),
                })),
            };
            framed::write(&mut send, &request, limits()).await.ok()?;
            let _ = send.finish();
            framed::read::<ForwardResponse, _>(&mut recv, limits())
                .await
                .ok()
        };
        let response = tokio::time::timeout(FORWARD_TIMEOUT, exchange)
            .await
            .ok()
            .flatten()
            .ok_or(ProposeError::NotLeader { leader })?;
        outcome_from_wire(response)
    }

    /// Every peer this node links to (brokers and witnesses).
    pub fn all(&self) -> Vec<PeerConfig> {
        self.links
            .read()
            .expect("never poisoned: no panics under the lock")
            .values()
            .map(|l| l.config.clone())
            .collect()
    }

    /// Sends this node's health report to every peer, in the background. A peer still
    /// receiving the previous one skips this one: reports are snapshots, the next replaces it.
    pub fn broadcast_health(self: &Arc<Self>, report: &HealthReport) {
        use std::sync::atomic::Ordering;
        let links = self.all_links();
        for link in links {
            if link.is_retired()
                || self.is_blocked(link.config.raft_id)
                || link.report_in_flight.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            let (this, report) = (self.clone(), report.clone());
            tokio::spawn(async move {
                let send = async {
                    let conn = this.connection(&link).await?;
                    let (mut send, _recv) = conn.open_bi().await.ok()?;
                    let request = PeerRequest {
                        request: Some(peer_request::Request::Health(report)),
                    };
                    framed::write(&mut send, &request, limits()).await.ok()?;
                    send.finish().ok()
                };
                let _ = tokio::time::timeout(REPORT_TIMEOUT, send).await;
                link.report_in_flight.store(false, Ordering::Release);
            });
        }
    }

    /// Asks the leader `leader` (raft id) for a gate answer. `None` when it cannot be reached.
    pub async fn ask_gate(&self, leader: u64, request: &GateRequest) -> Option<GateResponse> {
        let link = self.link(leader)?;
        let request = peer_request::Request::Gate(request.clone());
        self.exchange(&link, request, GATE_TIMEOUT).await
    }

    /// Sends one request on a new stream of the link and reads its one answer, within
    /// `timeout`; `None` when the peer is unreachable, cut off, or does not answer.
    async fn exchange<R: prost::Message + Default>(
        &self,
        link: &Link,
        request: peer_request::Request,
        timeout: Duration,
    ) -> Option<R> {
        if self.is_blocked(link.config.raft_id) {
            return None;
        }
        let exchange = async {
            let conn = self.connection(link).await?;
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let request = PeerRequest {
                request: Some(request),
            };
            framed::write(&mut send, &request, limits()).await.ok()?;
            let _ = send.finish();
            framed::read::<R, _>(&mut recv, limits()).await.ok()
        };
        tokio::time::timeout(timeout, exchange).await.ok().flatten()
    }

    /// Asks every peer, at once, whether it has seen `raft_id` take part: each peer's node id
    /// and its answer (`None`: no answer).
    pub async fn probe(
        self: &Arc<Self>,
        raft_id: u64,
    ) -> Vec<(PeerConfig, Option<StoreProbeReply>)> {
        let links = self.all_links();
        let mut asks = tokio::task::JoinSet::new();
        for link in links {
            let this = self.clone();
            asks.spawn(async move {
                let request = peer_request::Request::Probe(StoreProbe { raft_id });
                let answer = this.exchange(&link, request, PROBE_TIMEOUT).await;
                (link.config.clone(), answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = asks.join_next().await {
            answers.extend(answer.ok());
        }
        answers
    }

    /// Asks the peers in turn to have the leader give this node a new raft id; the first
    /// answer with an id wins. The errors of those that refused, otherwise.
    pub async fn rejoin(&self, request: &Rejoin) -> Result<u64, Vec<String>> {
        let mut links = self.all_links();
        links.sort_by(|a, b| a.config.node_id.cmp(&b.config.node_id));
        let mut errors = Vec::new();
        for link in links {
            let ask = peer_request::Request::Rejoin(request.clone());
            match self
                .exchange::<RejoinReply>(&link, ask, REJOIN_TIMEOUT)
                .await
            {
                Some(reply) if reply.raft_id != 0 => return Ok(reply.raft_id),
                Some(reply) => errors.push(format!("{}: {}", link.config.node_id, reply.error)),
                None => errors.push(format!("{}: no answer", link.config.node_id)),
            }
        }
        Err(errors)
    }

    /// Forwards a rejoin request to the leader `leader`.
    pub async fn forward_rejoin(&self, leader: u64, request: &Rejoin) -> Option<RejoinReply> {
        let link = self.link(leader)?;
        let ask = peer_request::Request::Rejoin(request.clone());
        self.exchange(&link, ask, REJOIN_TIMEOUT).await
    }

    /// The peers of this node's config file.
    pub fn configured(&self) -> &[PeerConfig] {
        &self.configured
    }

    /// The other brokers (not witnesses) this node links to, with their relay listeners
    /// where known, and whether the leader (if this node leads) has heard from them lately.
    pub fn brokers(&self) -> Vec<PeerBroker> {
        let links = self
            .links
            .read()
            .expect("never poisoned: no panics under the lock");
        let mut brokers: Vec<PeerBroker> = links
            .values()
            .filter(|l| l.config.role == crate::config::NodeRole::Broker)
            .map(|l| PeerBroker {
                node_id: l.config.node_id.clone(),
                raft_id: l.config.raft_id,
                relay_addr: l.config.relay_addr,
            })
            .collect();
        brokers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        brokers
    }

    /// Asks broker `node_id` to carry a session to a host attached to it. On success the
    /// returned streams carry the session's frames, after the host's reply.
    pub async fn open_relay(
        &self,
        node_id: &str,
        request: RelayRequest,
        deadline: Duration,
    ) -> Result<crate::relay::SessionStreams, wire::Error> {
        let unavailable = |why: String| wire::Error::new(wire::ErrorCode::Unavailable, why);
        let link = self
            .link_named(node_id)
            .ok_or_else(|| unavailable(format!("broker {node_id} is not a peer of this one")))?;
        if self.is_blocked(link.config.raft_id) {
            return Err(unavailable(format!("broker {node_id} is unreachable")));
        }
        let conn = self
            .connection(&link)
            .await
            .ok_or_else(|| unavailable(format!("broker {node_id} is unreachable")))?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let request = PeerRequest {
                request: Some(peer_request::Request::Relay(request)),
            };
            framed::write(&mut send, &request, limits())
                .await
                .map_err(|e| e.to_string())?;
            let response: RelayResponse = framed::read(&mut recv, limits())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv, response))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Err(_) => Err(unavailable(format!(
                "broker {node_id} did not answer in time"
            ))),
            Ok(Err(e)) => Err(unavailable(format!("broker {node_id} failed: {e}"))),
            Ok(Ok((_, _, RelayResponse { error: Some(e), .. }))) => Err(e),
            Ok(Ok((send, recv, RelayResponse { error: None, reply }))) => {
                Ok((send, recv, reply.unwrap_or_default()))
            }
        }
    }
}

/// The configured node whose name the peer's (CA-verified) certificate carries.
fn identify(conn: &quinn::Connection, names: &[String]) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    ferry_transport::tls::peer_node(&chain, names).map(str::to_owned)
}

async fn serve_peer(
    this: Arc<Peers>,
    conn: quinn::Connection,
    peer: PeerConfig,
    replica: Replica,
    inbox: Inbox,
) {
    loop {
        tokio::select! {
            uni = conn.accept_uni() => {
                let Ok(mut recv) = uni else { return };
                let (replica, peer, this) = (replica.clone(), peer.clone(), this.clone());
                tokio::spawn(async move {
                    while let Ok(frame) = framed::read::<RaftMessage, _>(&mut recv, limits()).await {
                        // The peer's raft id as of now: it changes when the peer rejoins.
                        let raft_id = this.link_named(&peer.node_id).map_or(peer.raft_id, |l| l.config.raft_id);
                        if this.is_blocked(raft_id) {
                            continue;
                        }
                        match Message::parse_from_bytes(&frame.message) {
                            Ok(m) if m.from == raft_id || this.learn_raft_id(&peer.node_id, m.from) => replica.step(m),
                            Ok(m) => tracing::warn!(peer = %peer.node_id, from = m.from, "raft message with a forged sender dropped"),
                            Err(e) => tracing::warn!(peer = %peer.node_id, error = %e, "undecodable raft message dropped"),
                        }
                    }
                });
            }
            bi = conn.accept_bi() => {
                let Ok((mut send, mut recv)) = bi else { return };
                if this.is_blocked(peer.raft_id) {
                    continue; // dropped: the peer times out, as across a partition
                }
                let (replica, inbox, from, this) = (replica.clone(), inbox.clone(), peer.node_id.clone(), this.clone());
                tokio::spawn(async move {
                    let Ok(request) = framed::read::<PeerRequest, _>(&mut recv, limits()).await else { return };
                    match request.request {
                        Some(peer_request::Request::Forward(forward)) => {
                            let response = match Command::decode(&forward.command[..]) {
                                Ok(command) => outcome_to_wire(replica.propose(command).await),
                                Err(e) => outcome_to_wire(Err(ProposeError::Storage(format!("undecodable command: {e}")))),
                            };
                            let _ = framed::write(&mut send, &response, limits()).await;
                            let _ = send.finish();
                        }
                        Some(peer_request::Request::Relay(request)) => {
                            let incoming = IncomingRelay { request, send, recv };
                            if let Err(e) = inbox.relays.try_send(incoming) {
                                let mut refused = e.into_inner();
                                let error = wire::Error::new(wire::ErrorCode::ResourceExhausted, "too many relayed sessions waiting");
                                let _ = framed::write(&mut refused.send, &RelayResponse { error: Some(error), reply: None }, limits()).await;
                                let _ = refused.send.finish();
                            }
                        }
                        Some(peer_request::Request::Health(report)) => inbox.reports.store(&from, report),
                        Some(peer_request::Request::Probe(probe)) => {
                            let reply = crate::rejoin::answer_probe(&replica, &probe);
                            let _ = framed::write(&mut send, &reply, limits()).await;
                            let _ = send.finish();
                        }
                        Some(peer_request::Request::Rejoin(request)) => {
                            let reply = crate::rejoin::answer_rejoin(&this, &replica, request, &from).await;
                            let _ = framed::write(&mut send, &reply, limits()).await;
                            let _ = send.finish();
                        }
                        Some(peer_request::Request::Gate(request)) => {
                            let (reply, answer) = tokio::sync::oneshot::channel();
                            let response = match inbox.gates.try_send((request, reply)) {
                                Ok(()) => answer.await.unwrap_or_default(),
                                Err(_) => GateResponse { error: "too many gate requests waiting; try again".into(), ..Default::default() },
                            };
                            let _ = framed::write(&mut send, &response, limits()).await;
                            let _ = send.finish();
                        }
                        None => {}
                    }
                });
            }
        }
    }
}

const REFUSAL_KINDS: [RefusalKind; 6] = [
    RefusalKind::Invalid,
    RefusalKind::NotFound,
    RefusalKind::AlreadyExists,
    RefusalKind::PermissionDenied,
    RefusalKind::AlreadyUsed,
    RefusalKind::Expired,
];

fn outcome_to_wire(result: Result<Outcome, ProposeError>) -> ForwardResponse {
    use forward_response::Result as R;
    let result = match result {
        Ok(Outcome::Applied) => R::Applied(true),
        Ok(Outcome::SessionOpened { session_id }) => R::SessionOpened(session_id),
        Ok(Outcome::Refused(r)) => R::Refused(Refusal {
            kind: REFUSAL_KINDS.iter().position(|k| *k == r.kind).unwrap_or(0) as u32,
            message: r.message,
        }),
        Err(ProposeError::NotLeader { leader }) => R::NotLeader(leader),
        Err(ProposeError::NoLeader) => R::NotLeader(0),
        Err(e) => R::Error(e.to_string()),
    };
    ForwardResponse {
        result: Some(result),
    }
}

fn outcome_from_wire(response: ForwardResponse) -> Result<Outcome, ProposeError> {
    use forward_response::Result as R;
    match response.result {
        Some(R::Applied(_)) => Ok(Outcome::Applied),
        Some(R::SessionOpened(session_id)) => Ok(Outcome::SessionOpened { session_id }),
        Some(R::Refused(r)) => Ok(Outcome::Refused(ferry_state::Refusal::new(
            REFUSAL_KINDS
                .get(r.kind as usize)
                .copied()
                .unwrap_or(RefusalKind::Invalid),
            r.message,
        ))),
        Some(R::NotLeader(leader)) => Err(ProposeError::NotLeader { leader }),
        Some(R::Error(e)) => Err(ProposeError::Storage(format!(
            "the leader could not apply it: {e}"
        ))),
        None => Err(ProposeError::Storage(
            "the leader sent an empty answer".into(),
        )),
    }
}
