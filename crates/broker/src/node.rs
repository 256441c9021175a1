//! Assembles a node: store, replica, relay listener, admin API; and shuts it down.

use crate::auth::LoginThrottle;
use crate::config::NodeConfig;
use crate::hosts::HostRegistry;
use crate::metrics::Metrics;
use crate::{admin, relay};
use anyhow::Context as _;
use ferry_peer::Peers;
use ferry_proto::state::{command::Kind, CloseSession, Command, DetachSession};
use ferry_replica::{ProposeError, Replica};
use ferry_transport::{endpoint, tls};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Raft messages waiting for the peer transport.
const OUTBOX_MAX: usize = 4096;
/// How long a request waits for a read index before it is refused.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded write waits for this node to apply it before answering anyway.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of the files directly in `dir` (sled keeps its files flat).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Everything the node's tasks share.
pub struct Ctx {
    pub config: NodeConfig,
    pub replica: Replica,
    /// The consensus driver's settings and queues, for the "raft" service that (re)starts it.
    pub consensus: crate::startup::Consensus,
    pub hosts: HostRegistry,
    pub metrics: Metrics,
    /// Failed-login bookkeeping; a std mutex because it is never held across an await.
    pub throttle: Mutex<LoginThrottle>,
    /// One permit per session relayed at once (`limits.sessions_max`).
    pub session_slots: Arc<Semaphore>,
    /// SHA-256 of the admin bearer token.
    pub admin_token_hash: Vec<u8>,
    pub started: std::time::Instant,
    /// Links to the other brokers; `None` in a one-node cluster.
    pub peers: Option<Arc<Peers>>,
    /// Control streams of connected endpoints, for hand-off notices.
    pub notices: crate::handoff::NoticeBoard,
    /// Set by a hand-off: new sessions and attachments are refused.
    pub draining: std::sync::atomic::AtomicBool,
    /// Every supervised (and watched) service of this node and its state.
    pub services: Arc<crate::supervisor::Services>,
    /// The latest health report of each peer.
    pub reports: Arc<crate::health::Reports>,
    /// Storage probe and quarantine findings.
    pub local_health: crate::health::LocalHealth,
    /// The restart gate's memory (steadiness on the leader) and this node's lease state.
    pub gate: crate::gate::GateState,
    /// Wall-clock start of this process (ms since the Unix epoch), for status output.
    pub started_at_ms: u64,
    /// Random, nonzero, chosen at start: which process of this node a maintenance lease was
    /// taken on (a different one has restarted since).
    pub boot_id: u64,
    /// One permit per QUIC connection (`limits.connections_max`), kept across restarts of
    /// the relay listener.
    pub connection_slots: Arc<Semaphore>,
    /// One permit per connection not yet authenticated (`limits.unauthenticated_max`).
    pub unauthenticated_slots: Arc<Semaphore>,
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub node_id: String,
    pub relay_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningNode {
    /// Stops accepting, closes connections, and waits for every service, the consensus
    /// driver included (the "raft" service stops it and waits for its thread).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Whatever still holds a replica handle, no driver runs past this point.
        self.ctx.replica.stop();
    }

    /// Resolves when the node was asked to shut down by [`RunningNode::shutdown`] or failed.
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The consensus settings of a node's config.
pub fn raft_options(config: &NodeConfig) -> ferry_replica::RaftOptions {
    ferry_replica::RaftOptions {
        raft_id: config.raft.id,
        voters: config.raft.initial_voters.clone(),
        tick: Duration::from_millis(config.raft.tick_ms),
        election_ticks: config.raft.election_ticks,
        election_jitter_ticks: config.raft.election_jitter_ticks,
        heartbeat_ticks: config.raft.heartbeat_ticks,
        snapshot_every_entries: config.limits.snapshot_every_entries,
        queue_max: config.limits.proposal_queue_max,
        propose_timeout: Duration::from_millis(config.raft.propose_timeout_ms),
        role: config.role,
        brokers: std::iter::once((config.raft.id, config.role))
            .chain(config.peers.iter().map(|p| (p.raft_id, p.role)))
            .filter(|(_, role)| *role == ferry_gate::Role::Broker)
            .map(|(id, _)| id)
            .collect(),
    }
}

/// Starts a node and returns once its listeners are bound.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    let node_id = config.node_id.clone();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let raft_dir = crate::startup::raft_dir(&config.data_dir);
    let options = raft_options(&config);
    let (outbox, outbox_rx) = tokio::sync::mpsc::channel(OUTBOX_MAX);
    // The store is opened, verified and recovered by the "raft" service, in the background:
    // nothing below waits for it (docs/DESIGN.md, lessons L3, L4).
    let (replica, queue) = ferry_replica::replica(&options);
    let consensus = crate::startup::Consensus {
        options,
        queue,
        outbox,
        recovered_once: Default::default(),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (inbox, queues) = ferry_peer::Inbox::new(&config.limits.peer());
    let reports = Arc::new(crate::health::Reports::default());
    // The consensus driver's messages for peers, drained by the "raft-outbox" service.
    let outbox_rx = Arc::new(tokio::sync::Mutex::new(outbox_rx));
    let peers = match config.peer_addr {
        Some(peer_addr) if !config.peers.is_empty() => {
            let identity = tls::Identity::load(&config.cert, &config.key)?;
            let trust = tls::Trust::load(&config.ca_cert)?;
            let limits = endpoint::Limits {
                udp_payload_bytes_max: config.limits.udp_payload_bytes_max,
                // One stream of Raft messages per connection, with room for reconnects.
                uni_streams_per_connection_max: 16,
                // A dead peer must be noticed well within an election timeout, so that
                // forwarded writes move on to the new leader quickly, and sessions relayed
                // through it are resumed within the stall budget (docs/DESIGN.md, P7; its first
                // goal was 3 s).
                idle_timeout: Duration::from_millis(1500),
                keep_alive: Duration::from_millis(300),
                ..Default::default()
            };
            let endpoint = endpoint::peer(peer_addr, identity, &trust, &limits)?;
            Some(Peers::start(
                endpoint,
                &config.node_id,
                &config.peers,
                replica.clone(),
                config.limits.peer(),
                shutdown_rx.clone(),
            ))
        }
        _ => {
            // A one-node cluster has no one to talk to; drain the (empty) outbox.
            let outbox_rx = outbox_rx.clone();
            tokio::spawn(async move { while outbox_rx.lock().await.recv().await.is_some() {} });
            None
        }
    };

    let admin_token = std::fs::read_to_string(&config.admin_token_file).with_context(|| {
        format!(
            "cannot read the admin token {}",
            config.admin_token_file.display()
        )
    })?;
    let admin_token = admin_token.trim();
    anyhow::ensure!(
        admin_token.len() >= 32,
        "the admin token in {} is shorter than 32 characters; regenerate it with `ferry init`",
        config.admin_token_file.display()
    );

    let identity = tls::Identity::load(&config.cert, &config.key)?;
    let limits = endpoint::Limits {
        streams_per_connection_max: config.limits.streams_per_connection_max,
        udp_payload_bytes_max: config.limits.udp_payload_bytes_max,
        ..Default::default()
    };
    let quic = endpoint::server(config.relay_addr, identity, &limits)?;
    let relay_addr = quic.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin API on {}", config.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;

    let metrics = Metrics::new(&node_id);
    let services = crate::supervisor::Services::new(&metrics);
    let ctx = Arc::new(Ctx {
        metrics,
        services: services.clone(),
        reports,
        local_health: Default::default(),
        gate: Default::default(),
        started_at_ms: crate::now_ms(),
        boot_id: rand::random::<u64>() | 1,
        connection_slots: Arc::new(Semaphore::new(config.limits.connections_max)),
        unauthenticated_slots: Arc::new(Semaphore::new(config.limits.unauthenticated_max)),
        throttle: Mutex::new(LoginThrottle::new(
            config.limits.login_failures_max,
            Duration::from_secs(config.limits.login_lockout_secs),
        )),
        session_slots: Arc::new(Semaphore::new(config.limits.sessions_max)),
        admin_token_hash: ferry_state::hash_secret(admin_token),
        hosts: HostRegistry::default(),
        replica,
        consensus,
        config,
        started: std::time::Instant::now(),
        peers,
        notices: Default::default(),
        draining: Default::default(),
    });
    let tasks = supervise_services(
        &ctx,
        &shutdown_rx,
        quic,
        admin_listener,
        inbox,
        queues,
        outbox_rx,
        raft_dir,
    );
    tracing::info!(node = %node_id, %relay_addr, %admin_addr, "node started");
    Ok(RunningNode {
        node_id,
        relay_addr,
        admin_addr,
        ctx,
        shutdown,
        tasks,
    })
}

/// A queue's receiving end, shared by the attempts of the service that drains it.
pub(crate) type SharedReceiver<T> = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>;

/// Starts every long-running part of the node under its supervisor (docs/DESIGN.md, lesson L2).
#[allow(clippy::too_many_arguments)]
fn supervise_services(
    ctx: &Arc<Ctx>,
    shutdown: &watch::Receiver<bool>,
    quic: quinn::Endpoint,
    admin_listener: tokio::net::TcpListener,
    inbox: ferry_peer::Inbox,
    queues: ferry_peer::Queues,
    outbox: SharedReceiver<ferry_consensus::Message>,
    raft_dir: std::path::PathBuf,
) -> JoinSet<()> {
    let services = &ctx.services;
    let mut tasks = JoinSet::new();
    macro_rules! supervise {
        ($name:literal, |$c:ident, $s:ident| $body:expr) => {{
            let ($c, $s) = (ctx.clone(), shutdown.clone());
            let make = move || {
                let ($c, $s) = ($c.clone(), $s.clone());
                $body
            };
            tasks.spawn(services.clone().supervise($name, shutdown.clone(), make));
        }};
    }
    // A witness serves no hosts or clients: its relay port stays closed.
    if ctx.config.role == ferry_gate::Role::Broker {
        supervise!("relay", |c, s| relay::serve(quic.clone(), c, s));
    } else {
        drop(quic);
    }
    // The first attempt serves on the listener bound at start; a restart binds it again.
    let admin_listener = Arc::new(std::sync::Mutex::new(Some(admin_listener)));
    supervise!("admin", |c, s| {
        let first = admin_listener
            .lock()
            .expect("never poisoned: no panics under the lock")
            .take();
        admin::serve(first, c, s)
    });
    if let Some(peers) = ctx.peers.clone() {
        let (p, o) = (peers.clone(), outbox);
        supervise!("raft-outbox", |_c, s| {
            p.clone().dispatch_loop(o.clone(), s)
        });
        let p = peers.clone();
        supervise!("peer-directory", |_c, s| p.clone().reconcile_loop(s));
        supervise!("peer-links", |_c, s| {
            peers.clone().accept_loop(inbox.clone(), s)
        });
        // What peers ask of this node: forwarded proposals, probes, rejoins, health reports.
        let requests: SharedReceiver<_> = Arc::new(tokio::sync::Mutex::new(queues.requests));
        supervise!("peer-requests", |c, s| {
            crate::inbox::requests(c, requests.clone(), s)
        });
        // Sessions other brokers ask this one to carry to hosts attached here.
        let relays: SharedReceiver<_> = Arc::new(tokio::sync::Mutex::new(queues.relays));
        supervise!("relay-queue", |c, s| {
            crate::inbox::relays(c, relays.clone(), s)
        });
        // Gate questions followers ask this node as leader.
        let gates: SharedReceiver<_> = Arc::new(tokio::sync::Mutex::new(queues.gates));
        supervise!("gate-queue", |c, s| crate::inbox::gates(
            c,
            gates.clone(),
            s
        ));
    } else {
        // A one-node cluster: nothing arrives from peers, so there are no queues to drain.
        drop((inbox, queues, outbox));
    }
    supervise!("sessions", |c, s| sweep_sessions(c, s));
    supervise!("housekeeping", |c, s| housekeeping(c, raft_dir.clone(), s));
    supervise!("storage", |c, s| crate::health::storage_probe(c, s));
    supervise!("health", |c, s| crate::health::report_loop(c, s));
    supervise!("gate", |c, s| crate::gate::gate_loop(c, s));
    // Opens the store, settles the raft id, runs the consensus driver (a thread of its own)
    // and starts over from the store after a storage failure.
    supervise!("raft", |c, s| crate::startup::consensus_service(c, s));
    tasks
}

/// Sessions the state says this node carries lost their path when it restarted: mark them
/// detached, so that they expire unless their endpoints resume them (here or elsewhere).
pub(crate) async fn detach_orphaned_sessions(ctx: Arc<Ctx>) {
    let actions = ferry_policy::orphaned_at_restart(&ctx.replica.read(), &ctx.config.node_id);
    carry_out(&ctx, actions).await;
}

/// How often the leader looks for sessions whose broker is gone or whose window passed.
const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// On the leader: sessions carried by a broker it no longer hears from are marked detached,
/// and sessions detached for longer than the resume window are closed as lost
/// (`ferry_policy::sweep`).
async fn sweep_sessions(
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    let mut every = tokio::time::interval(SESSION_SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if !ctx
            .replica
            .status()
            .is_leader
            .load(std::sync::atomic::Ordering::Acquire)
        {
            continue;
        }
        let window_ms = ctx.config.limits.session_resume_window().as_millis() as u64;
        let unreachable = unreachable_brokers(&ctx);
        let actions = ferry_policy::sweep(
            &ctx.replica.read(),
            crate::now_ms(),
            window_ms,
            &unreachable,
        );
        carry_out(&ctx, actions).await;
    }
}

/// Proposes what the session sweep decided, counting sessions lost.
async fn carry_out(ctx: &Ctx, actions: Vec<ferry_policy::SweepAction>) {
    let actor = format!("node:{}", ctx.config.node_id);
    for action in actions {
        match action {
            ferry_policy::SweepAction::Close { session_id, reason } => {
                let close = Kind::CloseSession(CloseSession {
                    session_id,
                    reason,
                    ..Default::default()
                });
                if ctx
                    .propose(actor.clone(), String::new(), close)
                    .await
                    .is_ok()
                {
                    ctx.metrics.lose_session("expired");
                    tracing::warn!(session_id, "session lost: not resumed within its window");
                }
            }
            ferry_policy::SweepAction::Detach {
                session_id,
                broker,
                resumes,
                reason,
            } => {
                let detach = Kind::DetachSession(DetachSession {
                    session_id,
                    broker,
                    reason,
                    resumes,
                });
                if let Err(e) = ctx.propose(actor.clone(), String::new(), detach).await {
                    tracing::warn!(session_id, error = %e, "could not detach a session");
                }
            }
        }
    }
}

/// Brokers the leader has not heard from within an election timeout (by node id).
fn unreachable_brokers(ctx: &Ctx) -> Vec<String> {
    let Some(peers) = &ctx.peers else {
        return Vec::new();
    };
    let brokers: Vec<(String, u64)> = peers
        .brokers()
        .into_iter()
        .map(|b| (b.node_id, b.raft_id))
        .collect();
    ferry_policy::unreachable_brokers(&brokers, &ctx.replica.membership().progress)
}

/// Periodic upkeep: purge expired tokens, refresh gauges.
async fn housekeeping(
    ctx: Arc<Ctx>,
    store_dir: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> crate::supervisor::ServiceResult {
    /// Expired tokens are refused on sight; purging them is only to bound the state's size.
    const PURGE_EVERY: Duration = Duration::from_secs(300);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = purge.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        // The leader purges for everyone; the command replicates like any other.
        if ctx
            .replica
            .status()
            .is_leader
            .load(std::sync::atomic::Ordering::Acquire)
        {
            let actor = format!("node:{}", ctx.config.node_id);
            let purge = Kind::PurgeExpired(Default::default());
            if let Err(e) = ctx.propose(actor, String::new(), purge).await {
                tracing::warn!(error = %e, "token purge failed");
            }
        }
        ctx.metrics.store_bytes.set(dir_bytes(&store_dir) as i64);
    }
}

impl Ctx {
    /// Makes sure the local state is fresh enough to authorize a request (docs/DESIGN.md
    /// section 3.1).
    ///
    /// A node that heard from a leader within `raft.read_staleness_ms` reads its applied state
    /// as is: it can be behind by at most what the leader committed in that window (a token
    /// revoked or a grant removed less than that long ago may still be honoured once). Past
    /// the window, it asks the leader for a read index and waits until it has applied it, so an
    /// isolated node never authorizes from a state it cannot vouch for; when no quorum answers
    /// in time the request is refused (the safe default: a minority admits nothing new).
    pub async fn confirm_fresh(&self) -> Result<(), ProposeError> {
        let window = Duration::from_millis(self.config.raft.read_staleness_ms);
        match self.replica.since_leader_contact() {
            Some(since) if since <= window => Ok(()),
            _ => self.confirm_current().await,
        }
    }

    /// Makes sure the local state holds every write committed before this call (a read
    /// index): for answers that must not miss a recent write, such as "this token is not
    /// valid" before a logout is declared done.
    pub async fn confirm_current(&self) -> Result<(), ProposeError> {
        self.metrics.read_index_reads.inc();
        self.replica.read_index(READ_INDEX_TIMEOUT).await
    }

    /// Proposes locally when this node leads, else forwards to the leader; when the leader is
    /// unreachable (it may just have died), retries against whoever leads next, until the
    /// propose timeout.
    async fn propose_anywhere(
        &self,
        command: Command,
    ) -> Result<ferry_state::Outcome, ProposeError> {
        let timeout = Duration::from_millis(self.config.raft.propose_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leader = match self.replica.propose(command.clone()).await {
                Err(ProposeError::NotLeader { leader }) => leader,
                other => return other,
            };
            let Some(peers) = &self.peers else {
                return Err(ProposeError::NotLeader { leader });
            };
            match peers.forward(leader, &command).await {
                Err(ProposeError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ProposeError::NotLeader { .. }) => return Err(ProposeError::Timeout(timeout)),
                Ok(outcome) => {
                    // The leader applied it; this node may not have yet. Whoever asked here
                    // reads this node's state next (a host agent attaching right after its
                    // enrollment), so wait until it reflects the write: read your writes.
                    // Best effort: the write is done whatever this answers.
                    let _ = self.replica.read_index(READ_YOUR_WRITES_TIMEOUT).await;
                    return Ok(outcome);
                }
                other => return other,
            }
        }
    }

    /// Proposes a command stamped with the current time, counting the result.
    pub async fn propose(
        &self,
        actor: String,
        source: String,
        kind: Kind,
    ) -> Result<ferry_state::Outcome, ferry_replica::ProposeError> {
        let command = Command {
            now_ms: crate::now_ms(),
            actor,
            source,
            kind: Some(kind),
        };
        let result = self.propose_anywhere(command).await;
        let label = match &result {
            Ok(ferry_state::Outcome::Refused(_)) => "refused",
            Ok(_) => "applied",
            Err(_) => "failed",
        };
        self.metrics
            .proposals
            .get_or_create(&crate::metrics::Result_ { result: label })
            .inc();
        result
    }
}
