//! The seam between the node and consensus: propose a command, read the applied state.
//!
//! One thread ("ferry-raft") owns the consensus [`Core`] over the node's [`SledLog`]. It takes
//! events from one bounded channel (proposals, peer messages), ticks on a deadline, and after
//! each batch of events handles one Ready: a batch of proposals costs one fsync (group commit).
//! Proposers get their outcome when their entry is applied, or a clear error (not the leader,
//! timed out, shutting down). Outgoing peer messages go to the peer transport's queue.

use ferry_consensus::{
    Core, CoreConfig, MembershipError, Message, PeerProgress, ProposeError as CoreProposeError,
    SharedState, StateRole,
};
use ferry_policy::LeaderView;
use ferry_proto::state::{command::Kind, ChangeMembership, Command, Member, MembershipAction};
use ferry_state::{Outcome, Refusal, RefusalKind, StateMachine};
use ferry_store::SledLog;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Events handled per Ready at most; bounds the latency a large burst adds to its first member.
const BATCH_MAX: usize = 512;
/// A read_index request without an answer is asked again after this long: raft-rs drops
/// requests silently while there is no leader, or while a new leader has not yet committed an
/// entry in its term.
const READ_INDEX_RETRY: Duration = Duration::from_millis(200);
/// Linearizable reads waiting at once; beyond it readers are told to retry.
const READS_PENDING_MAX: usize = 4096;
/// A snapshot sent to a peer and not answered within this long is sent again (see
/// `ferry_policy::SnapshotRetry`). Far above the time a whole-state snapshot takes on a LAN.
const SNAPSHOT_ANSWER_MAX: Duration = Duration::from_secs(5);
/// Ticks between the leader's checks for learners to promote and membership facts to publish.
const MEMBERSHIP_CHECK_TICKS: u64 = 5;

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
    #[error("the write could not be made durable: {0}")]
    Storage(String),
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
    pub role: crate::config::NodeRole,
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
    stop: AtomicBool,
    /// Set while the node is under maintenance: it hands leadership to a caught-up broker
    /// whenever it holds it, as a witness does.
    avoid_leadership: AtomicBool,
    /// Why the store cannot take writes now (the last driver stopped on it, or the store
    /// cannot be opened); cleared when a driver starts. Writes fail at once with it.
    storage_error: std::sync::Mutex<Option<String>>,
    /// This node's store is empty and its data directory never held one (see `rejoin.rs`).
    fresh: AtomicBool,
}

/// A cheap, cloneable handle to the replicated state. It exists before the consensus driver
/// runs (the node serves and reports while its store is checked and its raft id settled) and
/// outlives each driver: a driver stopped by a storage failure is replaced behind it.
#[derive(Clone)]
pub struct Replica {
    events: SyncSender<Event>,
    state: SharedState,
    status: Arc<Status>,
    /// This node's raft id: 0 until its store is open and its identity settled (a node that
    /// rejoins under a new id learns it from the leader).
    raft_id: Arc<AtomicU64>,
    propose_timeout: Duration,
}

/// The receiving end of a [`Replica`]'s events: held by the running driver, handed back when
/// it stops, so that the next driver takes the same queue.
pub type EventQueue = Arc<std::sync::Mutex<Option<mpsc::Receiver<Event>>>>;

/// A storage error as the store said it, without raft-rs's "unknown error" wrapping.
fn storage_text(e: &ferry_consensus::Error) -> String {
    match e {
        ferry_consensus::Error::Raft(raft::Error::Store(raft::StorageError::Other(inner))) => {
            inner.to_string()
        }
        other => other.to_string(),
    }
}

/// How a driver ended.
#[derive(Debug)]
pub enum DriverExit {
    /// Asked to stop ([`Replica::stop`]) or every handle dropped.
    Stopped,
    /// The store failed; nothing after the last durable Ready was acknowledged.
    StorageFailed(String),
}

impl Status {
    /// Milliseconds since this node's consensus epoch: the monotonic `now_ms` of its policies.
    fn elapsed_ms(&self) -> u64 {
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

/// Why a driver could not start on a store.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// What the store holds cannot be used: its snapshot does not restore, or its committed
    /// log does not replay. The store must be quarantined.
    #[error("the store's contents cannot be recovered: {0}")]
    Damaged(String),
    #[error("{0}")]
    Other(String),
}

/// Opens consensus on an initialized store and re-applies what this node already knows is
/// committed, before anyone reads the state: a restarted node must never authorize from a state
/// older than its own durable log. Messages the replay produces go to `outbox`, if any.
pub fn recover(
    log: SledLog,
    options: &RaftOptions,
    outbox: Option<&tokio::sync::mpsc::Sender<Message>>,
) -> Result<Core<SledLog>, StartError> {
    let raft_id = log
        .raft_id()
        .expect("recovery runs on an initialized store only");
    let config = CoreConfig {
        id: raft_id,
        heartbeat_tick: options.heartbeat_ticks,
        min_election_tick: options.election_ticks,
        max_election_tick: options.election_ticks + options.election_jitter_ticks,
        snapshot_every_entries: options.snapshot_every_entries,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
    };
    let damaged = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        if text.contains(ferry_store::raft_log::CORRUPT_PREFIX) || text.contains("snapshot") {
            StartError::Damaged(text)
        } else {
            StartError::Other(text)
        }
    };
    let durable_commit = raft::Storage::initial_state(&log)
        .map_err(|e| damaged(&e))?
        .hard_state
        .commit;
    let mut core = Core::new(&config, log).map_err(|e| damaged(&e))?;
    while core.applied() < durable_commit {
        let before = core.applied();
        for message in core.handle_ready().map_err(|e| damaged(&e))?.messages {
            if let Some(outbox) = outbox {
                let _ = outbox.try_send(message);
            }
        }
        if core.applied() <= before {
            return Err(StartError::Damaged(format!(
                "cannot replay the log: applied {before}, durable commit {durable_commit}"
            )));
        }
    }
    Ok(core)
}

/// Recovers the state from `log` (an initialized store) and runs a consensus driver on it, on
/// a thread of its own, until it is stopped or the store fails. Blocking: the replay reads the
/// whole committed log.
pub fn start_driver(
    replica: &Replica,
    queue: &EventQueue,
    log: SledLog,
    options: &RaftOptions,
    outbox: tokio::sync::mpsc::Sender<Message>,
) -> Result<std::thread::JoinHandle<DriverExit>, StartError> {
    let raft_id = log
        .raft_id()
        .expect("the driver starts on an initialized store only");
    let voters = raft::Storage::initial_state(&log)
        .map_err(|e| StartError::Damaged(e.to_string()))?
        .conf_state
        .voters;
    let mut core = recover(log, options, Some(&outbox))?;
    tracing::info!(
        applied = core.applied(),
        raft_id,
        "state recovered from the log"
    );
    if voters == [raft_id] && core.voters() == [raft_id] {
        // A lone voter need not wait an election timeout to lead.
        core.campaign()
            .map_err(|e| StartError::Other(e.to_string()))?;
    }
    core.adopt_shared_state(&replica.state);
    let status = replica.status.clone();
    status.applied.store(core.applied(), Ordering::Release);
    status.commit.store(core.commit(), Ordering::Release);
    status.leader.store(0, Ordering::Release);
    // Contact with a leader is earned again by this driver: until then, authorization confirms
    // the recovered state with a read index (it may be older than what was applied before).
    status.leader_contact_ms.store(0, Ordering::Release);
    replica.raft_id.store(raft_id, Ordering::Release);
    let rx = queue
        .lock()
        .expect("never poisoned: no panics under the lock")
        .take()
        .ok_or_else(|| StartError::Other("another consensus driver is running".into()))?;
    replica.set_storage_error(None);
    status.running.store(true, Ordering::Release);
    let driver = Driver {
        role: options.role,
        brokers: options.brokers.clone(),
        core,
        outbox,
        status,
        pending: HashMap::new(),
        next_seq: 0,
        tick: options.tick,
        ticks: 0,
        reads: HashMap::new(),
        reads_ready: Vec::new(),
        snapshot_retry: ferry_policy::SnapshotRetry::new(SNAPSHOT_ANSWER_MAX.as_millis() as u64),
    };
    let queue = queue.clone();
    let status = replica.status.clone();
    std::thread::Builder::new()
        .name("ferry-raft".into())
        .spawn(move || {
            // raft-rs panics on some storage read errors (a damaged record met at run time):
            // that ends this driver like a storage failure, and the queue survives it.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(&rx)));
            let exit = run.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let error = format!("the consensus driver panicked: {what}");
                status.running.store(false, Ordering::Release);
                *status
                    .storage_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
                DriverExit::StorageFailed(error)
            });
            // Events that arrived for this driver are answered, not left for the next one.
            for event in rx.try_iter() {
                match event {
                    Event::Propose(_, reply) => {
                        let _ = reply.send(Err(ProposeError::ShuttingDown));
                    }
                    Event::ReadIndex(_, reply) => {
                        let _ = reply.send(Err(ProposeError::ShuttingDown));
                    }
                    Event::Peer(_) => {}
                }
            }
            *queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
            exit
        })
        .map_err(|e| StartError::Other(format!("cannot start the consensus thread: {e}")))
}

struct Driver {
    role: crate::config::NodeRole,
    brokers: Vec<u64>,
    core: Core<SledLog>,
    outbox: tokio::sync::mpsc::Sender<Message>,
    status: Arc<Status>,
    /// Proposals awaiting their entry, by token (raft id in the high 16 bits, sequence below).
    pending: HashMap<u64, (Instant, oneshot::Sender<Result<Outcome, ProposeError>>)>,
    next_seq: u64,
    tick: Duration,
    /// Ticks since start.
    ticks: u64,
    /// Linearizable reads waiting for their read index, by request id: when they were last
    /// asked for, their deadline, and who waits.
    reads: HashMap<u64, PendingRead>,
    /// On the leader: when to give up on a snapshot a peer has not answered.
    snapshot_retry: ferry_policy::SnapshotRetry,
    /// Reads that have their read index and wait for it to be applied.
    reads_ready: Vec<(u64, PendingRead)>,
}

struct PendingRead {
    asked: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), ProposeError>>,
}

impl Driver {
    fn run(mut self, rx: &mpsc::Receiver<Event>) -> DriverExit {
        let mut exit = DriverExit::Stopped;
        self.publish_membership();
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(event) => {
                    self.handle(event);
                    for event in rx.try_iter().take(BATCH_MAX) {
                        self.handle(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.status.stop.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= next_tick {
                self.core.tick();
                self.ticks += 1;
                next_tick += self.tick;
                self.expire_pending();
                self.retry_reads();
                self.hand_off_if_witness();
                if self.ticks.is_multiple_of(MEMBERSHIP_CHECK_TICKS) {
                    self.leader_duties();
                    self.publish_membership();
                }
            }
            if let Err(e) = self.ready().map_err(|e| storage_text(&e)) {
                // Storage failed: raft-rs cannot continue safely on a store that may lie.
                tracing::error!(error = %e, "consensus stopped: storage failure");
                for (_, (_, reply)) in self.pending.drain() {
                    let _ = reply.send(Err(ProposeError::Storage(e.to_string())));
                }
                *self
                    .status
                    .storage_error
                    .lock()
                    .expect("never poisoned: no panics under the lock") = Some(e.to_string());
                exit = DriverExit::StorageFailed(e.to_string());
                break;
            }
        }
        self.status.running.store(false, Ordering::Release);
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::ShuttingDown));
        }
        for read in self
            .reads
            .drain()
            .map(|(_, r)| r)
            .chain(self.reads_ready.drain(..).map(|(_, r)| r))
        {
            let _ = read.reply.send(Err(ProposeError::ShuttingDown));
        }
        self.status.is_leader.store(false, Ordering::Release);
        self.status.leader.store(0, Ordering::Release);
        tracing::debug!("consensus driver stopped");
        exit
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(message) => {
                if message.to != self.core.id() {
                    // Meant for an identity this node no longer has (it rejoined under a new
                    // raft id): answering would vote or acknowledge as the old one.
                    return;
                }
                let from_leader =
                    message.from == self.core.leader() && message.term >= self.core.term();
                if let Err(e) = self.core.step(message) {
                    tracing::debug!(error = %e, "peer message ignored");
                } else if from_leader {
                    self.mark_leader_contact();
                }
            }
            Event::ReadIndex(deadline, reply) => {
                if self.reads.len() + self.reads_ready.len() >= READS_PENDING_MAX {
                    let _ = reply.send(Err(ProposeError::Busy));
                    return;
                }
                self.next_seq += 1;
                let id = self.next_seq;
                self.core.read_index(id);
                let read = PendingRead {
                    asked: Instant::now(),
                    deadline,
                    reply,
                };
                self.reads.insert(id, read);
            }
            Event::Propose(command, reply) => {
                let token = self.next_token();
                if let Some(Kind::ChangeMembership(_)) = &command.kind {
                    self.propose_membership(&command, token, reply);
                    return;
                }
                match self.core.propose(&command, token) {
                    Ok(()) => {
                        self.pending.insert(token, (Instant::now(), reply));
                    }
                    Err(CoreProposeError::NotLeader { leader: 0 }) => {
                        let _ = reply.send(Err(ProposeError::NoLeader));
                    }
                    Err(CoreProposeError::NotLeader { leader }) => {
                        let _ = reply.send(Err(ProposeError::NotLeader { leader }));
                    }
                    Err(CoreProposeError::Dropped(why)) => {
                        tracing::debug!(%why, "proposal dropped");
                        let _ = reply.send(Err(ProposeError::NoLeader));
                    }
                }
            }
        }
    }

    fn next_token(&mut self) -> u64 {
        self.next_seq += 1;
        (self.core.id() << 48) | (self.next_seq & ((1 << 48) - 1))
    }

    fn propose_membership(
        &mut self,
        command: &Command,
        token: u64,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    ) {
        let result = match self.core.propose_membership(command, token) {
            Ok(()) => {
                self.pending.insert(token, (Instant::now(), reply));
                return;
            }
            Err(MembershipError::NotLeader { leader: 0 }) => Err(ProposeError::NoLeader),
            Err(MembershipError::NotLeader { leader }) => Err(ProposeError::NotLeader { leader }),
            Err(MembershipError::TransferFirst { to }) => {
                tracing::info!(?to, "removing the leader: handing leadership over first");
                // The proposer retries; by then another node leads and takes the change.
                Err(ProposeError::NoLeader)
            }
            Err(MembershipError::Refused(why)) => {
                Ok(Outcome::Refused(Refusal::new(RefusalKind::Invalid, why)))
            }
        };
        let _ = reply.send(result);
    }

    /// What the leader's policies see: its configuration and its peers' progress.
    fn leader_view<'a>(&self, voters: &'a [u64], progress: &'a [PeerProgress]) -> LeaderView<'a> {
        LeaderView {
            own: self.core.id(),
            is_leader: self.core.role() == StateRole::Leader,
            change_pending: self.core.has_pending_change(),
            last_index: self.core.last_index(),
            voters,
            progress,
        }
    }

    /// The leader's periodic membership duties, decided by `ferry-policy`: promote a learner
    /// that caught up, record the members seen taking part, give up on unanswered snapshots.
    fn leader_duties(&mut self) {
        let (voters, progress) = (self.core.voters(), self.core.progress());
        let view = self.leader_view(&voters, &progress);
        let promote = {
            let state = self.core.state();
            ferry_policy::promotion(&view, |id| state.member(id).is_some_and(|m| m.voter))
                .and_then(|id| state.member(id).cloned())
        };
        let unseen = {
            let state = self.core.state();
            ferry_policy::unseen_members(&view, |id| state.was_seen(id))
        };
        let snapshotting: Vec<u64> = progress
            .iter()
            .filter(|p| p.snapshotting)
            .map(|p| p.id)
            .collect();
        let now_ms = self.status.elapsed_ms();
        let stalled = self
            .snapshot_retry
            .due(now_ms, view.is_leader, &snapshotting);
        if let Some(member) = promote {
            self.promote(member);
        }
        if !unseen.is_empty() {
            self.record_seen(unseen);
        }
        for peer in stalled {
            tracing::info!(peer, "snapshot not answered; sending again");
            self.core
                .report_snapshot(peer, ferry_consensus::SnapshotStatus::Failure);
        }
    }

    /// Proposes the promotion of a learner that caught up (one change at a time: the policy
    /// proposes none while another is pending).
    fn promote(&mut self, member: Member) {
        let command = membership_command(
            MembershipAction::Promote,
            member.clone(),
            format!("node:raft-{}", self.core.id()),
        );
        let token = self.next_token();
        match self.core.propose_membership(&command, token) {
            Ok(()) => {
                tracing::info!(node = %member.node_id, raft_id = member.raft_id, "learner caught up: promoting it to voter")
            }
            Err(e) => tracing::debug!(error = %e, "promotion not proposed"),
        }
    }

    /// Records raft ids the leader has seen take part, so that an empty store never takes one
    /// of them again (`MembersSeen`).
    fn record_seen(&mut self, unseen: Vec<u64>) {
        let command = Command {
            now_ms: crate::now_ms(),
            actor: format!("node:raft-{}", self.core.id()),
            source: String::new(),
            kind: Some(Kind::MembersSeen(ferry_proto::state::MembersSeen {
                raft_ids: unseen,
            })),
        };
        let token = self.next_token();
        if let Err(e) = self.core.propose(&command, token) {
            tracing::debug!(error = %e, "members seen not proposed");
        }
    }

    fn publish_membership(&self) {
        let view = Membership {
            voters: self.core.voters(),
            learners: self.core.learners(),
            change_pending: self.core.has_pending_change(),
            progress: self.core.progress(),
        };
        *self
            .status
            .membership
            .write()
            .expect("never poisoned: no panics under the lock") = view;
    }

    fn mark_leader_contact(&self) {
        if let Some(epoch) = self.status.epoch.get() {
            let ms = epoch.elapsed().as_millis() as u64;
            self.status
                .leader_contact_ms
                .store(ms.max(1), Ordering::Release);
        }
    }

    /// Asks again for reads raft-rs may have dropped; fails those past their deadline.
    fn retry_reads(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                let _ = read
                    .reply
                    .send(Err(ProposeError::Timeout(read.deadline - read.asked)));
            }
        }
        for (&id, read) in self.reads.iter_mut() {
            if now.duration_since(read.asked) >= READ_INDEX_RETRY {
                read.asked = now;
                self.core.read_index(id);
            }
        }
        self.reads_ready.retain(|(_, r)| !r.reply.is_closed());
    }

    fn ready(&mut self) -> Result<(), ferry_consensus::Error> {
        let output = self.core.handle_ready()?;
        if self.core.role() == StateRole::Leader {
            self.mark_leader_contact();
        }
        for (id, index) in output.read_states {
            if let Some(read) = self.reads.remove(&id) {
                self.reads_ready.push((index, read));
            }
        }
        if !self.reads_ready.is_empty() {
            let applied = self.core.applied();
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
                .into_iter()
                .partition(|(index, _)| *index <= applied);
            self.reads_ready = waiting;
            for (_, read) in done {
                let _ = read.reply.send(Ok(()));
            }
        }
        if output.membership_changed {
            self.publish_membership();
        }
        if let Some(index) = output.installed_snapshot {
            tracing::info!(index, "installed a snapshot from the leader");
            self.status
                .snapshots_installed
                .fetch_add(1, Ordering::AcqRel);
        }
        for message in output.messages {
            // A full queue means the peer link is behind; Raft retransmits what matters.
            let _ = self.outbox.try_send(message);
        }
        for applied in output.applied {
            if let Some((_, reply)) = applied.token.and_then(|t| self.pending.remove(&t)) {
                let _ = reply.send(Ok(applied.outcome));
            }
        }
        let s = &self.status;
        let leads = self.core.role() == StateRole::Leader;
        if leads && !s.is_leader.load(Ordering::Acquire) {
            // One line per term this node leads: tests check no term ever has two leaders.
            tracing::info!(
                term = self.core.term(),
                raft_id = self.core.id(),
                "this node leads"
            );
        }
        s.leader.store(self.core.leader(), Ordering::Release);
        s.term.store(self.core.term(), Ordering::Release);
        s.commit.store(self.core.commit(), Ordering::Release);
        s.applied.store(self.core.applied(), Ordering::Release);
        s.is_leader
            .store(self.core.role() == StateRole::Leader, Ordering::Release);
        Ok(())
    }

    /// A witness that became leader (it can: it is a voter) hands leadership to a broker whose
    /// log is complete, so that the leader is always a node that serves traffic. A node under
    /// maintenance does the same, so that its restart costs no election.
    fn hand_off_if_witness(&mut self) {
        let avoid = self.role == crate::config::NodeRole::Witness
            || self.status.avoid_leadership.load(Ordering::Acquire);
        if !avoid || self.core.role() != StateRole::Leader {
            return;
        }
        // Brokers of the initial configuration, and those added since.
        let brokers: Vec<u64> = self
            .brokers
            .iter()
            .copied()
            .chain(
                self.core
                    .state()
                    .members()
                    .filter(|m| m.role() == ferry_proto::state::MemberRole::Broker)
                    .map(|m| m.raft_id),
            )
            .collect();
        let (voters, progress) = (self.core.voters(), self.core.progress());
        let view = self.leader_view(&voters, &progress);
        if let Some(broker) = ferry_policy::handoff_target(&view, avoid, &brokers) {
            tracing::info!(
                to = broker,
                "handing leadership to a broker (this node is a witness or under maintenance)"
            );
            self.core.transfer_leader(broker);
        }
    }

    /// Proposals whose entry was lost (a deposed leader's uncommitted tail) never complete;
    /// their proposers time out on their own, and their entries are forgotten here.
    fn expire_pending(&mut self) {
        /// Longer than any proposer waits.
        const FORGET_AFTER: Duration = Duration::from_secs(60);
        self.pending
            .retain(|_, (since, reply)| since.elapsed() < FORGET_AFTER && !reply.is_closed());
    }
}
