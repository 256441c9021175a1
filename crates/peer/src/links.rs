//! The set of peers this node links to, and the connection it keeps to each.
//!
//! The set is the configured one plus the members added at runtime (the replicated member
//! directory), minus retired raft ids; it is reconciled every second and whenever a message
//! or a connection names a peer not yet known.

use crate::Limits;
use ferry_consensus::Message;
use ferry_gate::Role;
use ferry_replica::Replica;
use ferry_transport::addr::HostPort;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex, Semaphore};

/// Time allowed to connect to a peer before trying again.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the set of peers is compared with the replicated member directory.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Another node of the cluster, as a node's config file lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id; its certificate must carry this name.
    pub node_id: String,
    pub raft_id: u64,
    /// Where its peer listener is reached (an IP or a DNS name, resolved at each dial).
    pub peer_addr: HostPort,
    #[serde(default)]
    pub role: Role,
    /// Its relay listener (brokers only): handed to hosts and clients as a place to fail
    /// over or move to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<HostPort>,
}

/// Another broker, as this node's links know it.
#[derive(Debug, Clone)]
pub struct PeerBroker {
    pub node_id: String,
    pub raft_id: u64,
    /// Its relay listener, when its config (or the member directory) says.
    pub relay_addr: Option<HostPort>,
}

pub(crate) struct Link {
    pub(crate) config: PeerConfig,
    /// Raft messages waiting to be sent.
    pub(crate) queue: mpsc::Sender<Message>,
    /// The connection this node dialed, shared by the sender and by requests.
    pub(crate) conn: Mutex<Option<quinn::Connection>>,
    /// Set when the peer left the cluster: its sender stops and its connection closes.
    retired: AtomicBool,
    /// A health report to this peer is on its way; the next one waits for the one after.
    pub(crate) report_in_flight: AtomicBool,
}

impl Link {
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// This node's side of every peer link.
pub struct Peers {
    pub(crate) endpoint: quinn::Endpoint,
    /// This node's id: never a peer of itself (its raft id can change when it rejoins).
    node_id: String,
    /// The peers from this node's config file (the initial configuration, or whom to join).
    configured: Vec<PeerConfig>,
    /// Current links by raft id (configured and added members).
    links: RwLock<HashMap<u64, Arc<Link>>>,
    pub(crate) replica: Replica,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) limits: Limits,
    /// One permit per incoming connection still in its handshake (`limits.handshakes_max`).
    pub(crate) handshakes: Arc<Semaphore>,
    /// Raft ids of peers cut off by the test-only fault switch: nothing is sent to them and
    /// nothing from them is accepted, as in a network partition.
    blocked: RwLock<HashSet<u64>>,
    /// Raft ids learned from authenticated Raft messages, by node id: a configured peer that
    /// rejoined under a new id, before this node's state (empty, if it rejoins too) says so.
    learned: RwLock<HashMap<String, u64>>,
}

/// Every lock here guards plain data and is never held across a panic or an await.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .expect("never poisoned: no panics under the lock")
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .expect("never poisoned: no panics under the lock")
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
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            endpoint,
            node_id: node_id.to_owned(),
            configured: peers.to_vec(),
            links: Default::default(),
            replica,
            shutdown,
            handshakes: Arc::new(Semaphore::new(limits.handshakes_max)),
            limits,
            blocked: Default::default(),
            learned: Default::default(),
        });
        this.reconcile();
        this
    }

    /// Service "peer-directory": follows the member directory every second.
    pub async fn reconcile_loop(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::LoopResult {
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
    pub(crate) fn reconcile(self: &Arc<Self>) {
        let (mut wanted, retired, retired_names): (Vec<PeerConfig>, Vec<u64>, Vec<String>) = {
            let state = self.replica.read();
            let added = state.members().filter_map(|m| {
                Some(PeerConfig {
                    node_id: m.node_id.clone(),
                    raft_id: m.raft_id,
                    peer_addr: m.peer_addr.parse().ok()?,
                    relay_addr: m.relay_addr.parse().ok(),
                    role: m.role().into(),
                })
            });
            let added: Vec<PeerConfig> = added.collect();
            (
                added,
                state.retired_raft_ids().collect(),
                state.retired_node_ids().map(str::to_owned).collect(),
            )
        };
        let learned = read(&self.learned).clone();
        for peer in &self.configured {
            let mut peer = peer.clone();
            if let Some(id) = learned.get(&peer.node_id) {
                peer.raft_id = *id;
            }
            if !wanted.iter().any(|w| w.raft_id == peer.raft_id) {
                wanted.push(peer);
            }
        }
        wanted.retain(|p| {
            p.node_id != self.node_id
                && !retired.contains(&p.raft_id)
                && !retired_names.contains(&p.node_id)
        });
        let mut links = write(&self.links);
        links.retain(|id, link| {
            let keep = wanted.iter().any(|w| w.raft_id == *id && w == &link.config);
            if !keep {
                tracing::info!(peer = %link.config.node_id, raft_id = id, "peer left the cluster; link closed");
                link.retired.store(true, Ordering::Release);
            }
            keep
        });
        for peer in wanted {
            if links.contains_key(&peer.raft_id) {
                continue;
            }
            tracing::info!(peer = %peer.node_id, raft_id = peer.raft_id, addr = %peer.peer_addr, "peer link added");
            let (queue, rx) = mpsc::channel(self.limits.raft_queue_max);
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

    pub(crate) fn link(&self, raft_id: u64) -> Option<Arc<Link>> {
        read(&self.links).get(&raft_id).cloned()
    }

    pub(crate) fn link_named(&self, node_id: &str) -> Option<Arc<Link>> {
        read(&self.links)
            .values()
            .find(|l| l.config.node_id == node_id)
            .cloned()
    }

    /// Every current link, cloned out of the lock.
    pub(crate) fn all_links(&self) -> Vec<Arc<Link>> {
        read(&self.links).values().cloned().collect()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        read(&self.links)
            .values()
            .map(|l| l.config.node_id.clone())
            .collect()
    }

    /// A Raft message from peer `node_id` (authenticated by its certificate) says it is now
    /// raft id `raft_id`: it rejoined under a new id. Adopted unless the id is retired or
    /// belongs to another node; the links are then rebuilt around it.
    pub(crate) fn learn_raft_id(self: &Arc<Self>, node_id: &str, raft_id: u64) -> bool {
        {
            let state = self.replica.read();
            if state.is_retired(raft_id)
                || state.member(raft_id).is_some_and(|m| m.node_id != node_id)
            {
                return false;
            }
        }
        let taken = read(&self.links)
            .values()
            .any(|l| l.config.raft_id == raft_id && l.config.node_id != node_id);
        if taken {
            return false;
        }
        tracing::info!(peer = node_id, raft_id, "peer speaks under a new raft id");
        write(&self.learned).insert(node_id.to_owned(), raft_id);
        self.reconcile();
        true
    }

    /// Test-only fault switch: cuts this node off from the peers named (by node id), or
    /// heals the partition with an empty list. Returns the ids it did not recognise.
    pub fn set_blocked(&self, node_ids: &[String]) -> Vec<String> {
        let mut blocked = write(&self.blocked);
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

    pub(crate) fn is_blocked(&self, raft_id: u64) -> bool {
        read(&self.blocked).contains(&raft_id)
    }

    /// Whether the peer named `node_id` is cut off by the fault switch, under the raft id it
    /// has now (it changes when the peer rejoins).
    pub(crate) fn is_blocked_named(&self, node_id: &str) -> bool {
        self.link_named(node_id)
            .is_some_and(|l| self.is_blocked(l.config.raft_id))
    }

    /// The connection to `link`, dialing it if needed.
    pub(crate) async fn connection(&self, link: &Link) -> Option<quinn::Connection> {
        let mut conn = link.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Some(c.clone());
        }
        let dial = async {
            let addr = link
                .config
                .peer_addr
                .resolve(self.endpoint.local_addr().ok())
                .await
                .map_err(|e| e.to_string())?;
            let connecting = self
                .endpoint
                .connect(addr, &link.config.node_id)
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
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

    /// The peers of this node's config file.
    pub fn configured(&self) -> &[PeerConfig] {
        &self.configured
    }

    /// Every peer this node links to (brokers and witnesses).
    pub fn all(&self) -> Vec<PeerConfig> {
        read(&self.links)
            .values()
            .map(|l| l.config.clone())
            .collect()
    }

    /// The other brokers (not witnesses) this node links to, with their relay listeners
    /// where known.
    pub fn brokers(&self) -> Vec<PeerBroker> {
        let mut brokers: Vec<PeerBroker> = read(&self.links)
            .values()
            .filter(|l| l.config.role == Role::Broker)
            .map(|l| PeerBroker {
                node_id: l.config.node_id.clone(),
                raft_id: l.config.raft_id,
                relay_addr: l.config.relay_addr.clone(),
            })
            .collect();
        brokers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        brokers
    }
}
