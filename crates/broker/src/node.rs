//! Assembles a node: store, replica, relay listener, admin API; and shuts it down.

use crate::config::NodeConfig;
use crate::context::Ctx;
use crate::metrics::Metrics;
use crate::supervisor::SharedReceiver;
use crate::{admin, relay};
use ferry_peer::Peers;
use ferry_transport::{endpoint, tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Raft messages waiting for the peer transport.
const OUTBOX_MAX: usize = 4096;

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

/// Why a node could not start (its config or its files are wrong, or a port is taken).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    Endpoint(#[from] endpoint::Error),
    #[error("cannot read the admin token {path}: {source}")]
    AdminToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the admin token in {path} is shorter than 32 characters; regenerate it with `ferry init`"
    )]
    AdminTokenShort { path: std::path::PathBuf },
    #[error("cannot bind the admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the address a listener is bound to: {0}")]
    LocalAddr(std::io::Error),
}

/// Starts a node and returns once its listeners are bound.
pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
    let node_id = config.node_id.clone();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let raft_dir = crate::startup::raft_dir(&config.data_dir);
    let options = crate::startup::raft_options(&config);
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
    let peers = match config.peer_listen() {
        Some(peer_listen) if !config.peers.is_empty() => {
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
            let endpoint = endpoint::peer(peer_listen, identity, &trust, &limits)?;
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

    let admin_token = std::fs::read_to_string(&config.admin_token_file).map_err(|source| {
        StartError::AdminToken {
            path: config.admin_token_file.clone(),
            source,
        }
    })?;
    let admin_token = admin_token.trim();
    if admin_token.len() < 32 {
        return Err(StartError::AdminTokenShort {
            path: config.admin_token_file.clone(),
        });
    }

    let identity = tls::Identity::load(&config.cert, &config.key)?;
    let limits = endpoint::Limits {
        streams_per_connection_max: config.limits.streams_per_connection_max,
        udp_payload_bytes_max: config.limits.udp_payload_bytes_max,
        initial_connection_window_bytes: Some(config.limits.unauthenticated_window_bytes),
        ..Default::default()
    };
    let quic = endpoint::server(config.relay_listen(), identity, &limits)?;
    let relay_addr = quic.local_addr().map_err(StartError::LocalAddr)?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen())
        .await
        .map_err(|source| StartError::AdminBind {
            addr: config.admin_listen(),
            source,
        })?;
    let admin_addr = admin_listener.local_addr().map_err(StartError::LocalAddr)?;

    let metrics = Arc::new(Metrics::new(&node_id));
    let expiry = crate::certificates::Expiry::read(&config);
    expiry.export(&metrics);
    expiry.warn(crate::now_ms());
    let proposer = crate::propose::Proposer::new(
        replica.clone(),
        peers.clone(),
        metrics.clone(),
        Duration::from_millis(config.raft.propose_timeout_ms),
        Duration::from_millis(config.raft.read_staleness_ms),
    );
    let health = crate::health::Health {
        services: crate::supervisor::Services::new(&metrics),
        reports,
        local: Default::default(),
        started: std::time::Instant::now(),
        started_at_ms: crate::now_ms(),
        certificates: expiry,
        boot_id: rand::random::<u64>() | 1,
    };
    let ctx = Arc::new(Ctx {
        sessions: relay::Sessions::new(&config.limits),
        admission: crate::admission::Admission::new(&config.limits),
        metrics,
        proposer,
        health,
        gate: Default::default(),
        admin_token_hash: ferry_state::hash_secret(admin_token),
        replica,
        consensus,
        config,
        peers,
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
    let services = &ctx.health.services;
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
    supervise!("sessions", |c, s| crate::sweep::sweep_sessions(
        c.upkeep(),
        s
    ));
    supervise!("housekeeping", |c, s| {
        crate::sweep::housekeeping(c.upkeep(), raft_dir.clone(), s)
    });
    supervise!("withdraw", |c, s| crate::withdraw::watch_withdrawals(c, s));
    supervise!("failure-audit", |c, s| crate::admission::audit_failures(
        c, s
    ));
    supervise!("storage", |c, s| crate::health::storage_probe(c, s));
    supervise!("health", |c, s| crate::health::report_loop(c, s));
    supervise!("gate", |c, s| crate::gate::gate_loop(c, s));
    // Opens the store, settles the raft id, runs the consensus driver (a thread of its own)
    // and starts over from the store after a storage failure.
    supervise!("raft", |c, s| crate::startup::consensus_service(c, s));
    tasks
}
