//! [`Replica`]: the handle to the replicated state, and what consensus reports.

use ferry_consensus::{Message, PeerProgress, SharedState};
use ferry_proto::state::{command::Kind, ChangeMembership, Command, Member, MembershipAction};
use ferry_state::{Outcome, StateMachine};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("this node is not the leader (leader: {})", leader_name(*.leader))]
    NotLeader { leader: u64 },
    #[error("no leader elected yet; the cluster may have lost its quorum")]
    NoLeader,
    #[error("the write was not applied within {0:?}; it may still be applied later")]
    Timeout(Duration),
    #[error("the consensus queue is full; try again")]
    Busy,
    /// The leader had too many forwarded requests in hand to take this one.
    #[error("the leader has too many forwarded requests waiting; try again")]
    Overloaded,
    #[error("the write could not be made durable: {0}")]
    Storage(String),
    /// The leader a proposal was forwarded to could not apply it (it says why).
    #[error("the leader could not apply it: {0}")]
    Leader(String),
    /// The command itself cannot be proposed (a forwarded command that does not decode).
    #[error("the command is invalid: {0}")]
    Invalid(String),
}

fn leader_name(id: u64) -> String {
    if id == 0 {
        "unknown".into()
    } else {
        format!("raft id {id}")
    }
}

/// Consensus settings of a node.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub raft_id: u64,
    /// Voters a new cluster starts with (ignored once the log holds a configuration).
    pub voters: Vec<u64>,
    pub tick: Duration,
    pub election_ticks: usize,
    pub election_jitter_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_every_entries: u64,
    pub queue_max: usize,
    /// How long a proposer waits for its entry to be applied.
    pub propose_timeout: Duration,
    /// Whether this node may keep leadership: a witness hands it to one of `brokers`.
    pub role: ferry_gate::Role,
    /// Raft ids of the broker nodes (this one included if it is a broker).
    pub brokers: Vec<u64>,
}

pub enum Event {
    Propose(Command, oneshot::Sender<Result<Outcome, ProposeError>>),
    Peer(Message),
    /// A linearizable read: answered once the state has applied a commit index confirmed by a
    /// quorum after the request was made.
    ReadIndex(Instant, oneshot::Sender<Result<(), ProposeError>>),
}

/// The configuration as this node last applied it, and (on the leader) each peer's progress.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// A change has been proposed and not applied yet (known on the leader only).
    pub change_pending: bool,
    /// Filled on the leader only.
    pub progress: Vec<PeerProgress>,
}

/// Facts about consensus the node reports; written by the driver, read by anyone.
#[derive(Default)]
pub struct Status {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub is_leader: AtomicBool,
    pub running: AtomicBool,
    /// Snapshots received from a leader and installed since start.
    pub snapshots_installed: AtomicU64,
    /// Milliseconds since `epoch` when this node last knew a leader to be in charge: a message
    /// from the current leader, or, on the leader, its own (check_quorum makes a leader that
    /// lost its quorum step down within an election timeout).
    pub leader_contact_ms: AtomicU64,
    pub epoch: std::sync::OnceLock<Instant>,
    /// Refreshed every few ticks and whenever the configuration changes.
    pub membership: RwLock<Membership>,
    /// Set by [`Replica::stop`]; the driver exits within one tick.
    pub(crate) stop: AtomicBool,
    /// Set while the node is under maintenance: it hands leadership to a caught-up broker
    /// whenever it holds it, as a witness does.
    pub(crate) avoid_leadership: AtomicBool,
    /// Why the store cannot take writes now (the last driver stopped on it, or the store
    /// cannot be opened); cleared when a driver starts. Writes fail at once with it.
    pub(crate) storage_error: std::sync::Mutex<Option<String>>,
    /// This node's store is empty and its data directory never held one (see `rejoin.rs`).
    pub(crate) fresh: AtomicBool,
}

/// A cheap, cloneable handle to the replicated state. It exists before the consensus driver
/// runs (the node serves and reports while its store is checked and its raft id settled) and
/// outlives each driver: a driver stopped by a storage failure is replaced behind it.
#[derive(Clone)]
pub struct Replica {
    pub(crate) events: SyncSender<Event>,
    pub(crate) state: SharedState,
    pub(crate) status: Arc<Status>,
    /// This node's raft id: 0 until its store is open and its identity settled (a node that
    /// rejoins under a new id learns it from the leader).
    pub(crate) raft_id: Arc<AtomicU64>,
    pub(crate) propose_timeout: Duration,
}

/// The receiving end of a [`Replica`]'s events: held by the running driver, handed back when
/// it stops, so that the next driver takes the same queue.
pub type EventQueue = Arc<std::sync::Mutex<Option<mpsc::Receiver<Event>>>>;

impl Status {
    /// Milliseconds since this node's consensus epoch: the monotonic `now_ms` of its policies.
    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.epoch
            .get()
            .map_or(0, |epoch| epoch.elapsed().as_millis() as u64)
    }
}

impl Replica {
    /// Proposes a command and waits until it is durable on a quorum and applied here.
    ///
    /// While no leader is known (start-up, election) it retries until the timeout.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        if let Some(error) = self.storage_error() {
            return Err(ProposeError::Storage(error));
        }
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        loop {
            let (reply, outcome) = oneshot::channel();
            match self.events.try_send(Event::Propose(command.clone(), reply)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(ProposeError::Busy),
                Err(TrySendError::Disconnected(_)) => return Err(ProposeError::ShuttingDown),
            }
            let result = tokio::time::timeout_at(deadline, outcome)
                .await
                .map_err(|_| ProposeError::Timeout(self.propose_timeout))?
                .map_err(|_| ProposeError::ShuttingDown)?;
            match result {
                Err(ProposeError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Hands a message from a peer to consensus. Dropped when the queue is full: Raft
    /// retransmits what matters.
    pub fn step(&self, message: Message) {
        let _ = self.events.try_send(Event::Peer(message));
    }

    /// Read access to the applied state. Hold the guard briefly: the driver waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.state
            .read()
            .expect("the state lock is never held across a panic")
    }

    pub fn applied_index(&self) -> u64 {
        self.status.applied.load(Ordering::Acquire)
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Waits until the local state reflects every write committed before this call (raft-rs's
    /// read_index), retrying while no leader can confirm it, until `timeout`.
    pub async fn read_index(&self, timeout: Duration) -> Result<(), ProposeError> {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        match self.events.try_send(Event::ReadIndex(deadline, reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ProposeError::ShuttingDown),
        }
        tokio::time::timeout(timeout + Duration::from_millis(100), answer)
            .await
            .map_err(|_| ProposeError::Timeout(timeout))?
            .map_err(|_| ProposeError::ShuttingDown)?
    }

    /// How long ago this node last knew a leader to be in charge (`None`: never).
    pub fn since_leader_contact(&self) -> Option<Duration> {
        let epoch = self.status.epoch.get()?;
        let at = self.status.leader_contact_ms.load(Ordering::Acquire);
        (at > 0).then(|| epoch.elapsed().saturating_sub(Duration::from_millis(at)))
    }

    /// The configuration as last applied here (and peer progress, on the leader).
    pub fn membership(&self) -> Membership {
        self.status
            .membership
            .read()
            .expect("never poisoned: no panics under the lock")
            .clone()
    }

    /// This node's raft id; 0 while the consensus driver has not started yet.
    pub fn raft_id(&self) -> u64 {
        self.raft_id.load(Ordering::Acquire)
    }

    /// Stops the consensus driver (within one tick), whoever still holds handles.
    pub fn stop(&self) {
        self.status.stop.store(true, Ordering::Release);
    }

    /// Makes this node give leadership away whenever it holds it (a draining node), or stop
    /// doing so.
    pub fn set_avoid_leadership(&self, avoid: bool) {
        self.status.avoid_leadership.store(avoid, Ordering::Release);
    }

    /// Why this node's store cannot take writes now, if it cannot.
    pub fn storage_error(&self) -> Option<String> {
        self.status
            .storage_error
            .lock()
            .expect("never poisoned: no panics under the lock")
            .clone()
    }

    /// Records why the store cannot take writes (`None`: it can again).
    pub fn set_storage_error(&self, error: Option<String>) {
        *self
            .status
            .storage_error
            .lock()
            .expect("never poisoned: no panics under the lock") = error;
    }

    /// Whether this node has never had a store: its store is empty and its data directory
    /// never held one. Set by the "raft" service.
    pub fn is_fresh(&self) -> bool {
        self.status.fresh.load(Ordering::Acquire)
    }

    pub fn set_fresh(&self, fresh: bool) {
        self.status.fresh.store(fresh, Ordering::Release);
    }

    /// Whether the consensus driver is alive to take proposals.
    pub fn is_running(&self) -> bool {
        self.status.running.load(Ordering::Acquire)
    }
}

/// A membership command as the node proposes it.
pub fn membership_command(action: MembershipAction, member: Member, actor: String) -> Command {
    Command {
        now_ms: crate::now_ms(),
        actor,
        source: String::new(),
        kind: Some(Kind::ChangeMembership(ChangeMembership {
            action: action as i32,
            member: Some(member),
            forced: false,
            reason: String::new(),
            retire_node_id: false,
        })),
    }
}

/// Creates the replica handle and its event queue; the driver starts later, once the store is
/// open ([`start_driver`]). Until then proposals wait (and time out) and reads see an empty
/// state, which nothing authorizes from: no leader contact has been recorded.
pub fn replica(options: &RaftOptions) -> (Replica, EventQueue) {
    let (events, rx) = mpsc::sync_channel(options.queue_max);
    let status = Arc::new(Status::default());
    let _ = status.epoch.set(Instant::now());
    let replica = Replica {
        events,
        state: Arc::new(RwLock::new(StateMachine::new())),
        status,
        raft_id: Arc::new(AtomicU64::new(0)),
        propose_timeout: options.propose_timeout,
    };
    (replica, Arc::new(std::sync::Mutex::new(Some(rx))))
}
