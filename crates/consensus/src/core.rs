//! [`Core`]: a raft-rs `RawNode` and the state machine it feeds, handled without IO.
//!
//! The order of [`Core::handle_ready`] is the contract with the driver:
//!
//! 1. `messages()` go out first: these are a leader's appends and heartbeats, which may be
//!    sent before the leader's own fsync (followers persist before acknowledging, and the
//!    leader only counts itself once its own write is durable).
//! 2. The snapshot (if any), new entries and the hard state are written, then `sync` when
//!    raft-rs says the Ready must be durable (entries, snapshot, new term or vote).
//! 3. `persisted_messages()` (votes, append responses) go out: they promise what step 2 made
//!    durable, so they must never leave before it.
//! 4. Committed entries are applied. They are durable in the local log (raft-rs only commits
//!    what this node has persisted, for a leader, or received and persisted, for a follower).
//! 5. `advance_append`; the light ready's commit index is written (made durable by the next
//!    sync; only entries already durable in the local log are ever applied), then its messages
//!    go out and its committed entries are applied; `advance_apply_to(applied)`.
//! 6. Every `snapshot_every_entries` applied entries, the state is snapshotted and the log
//!    compacted; lagging peers then catch up from that snapshot.

use crate::log::LogStore;
use ferry_proto::state::{Command, Snapshot as StateSnapshot};
use ferry_state::{Outcome, StateMachine};
use prost::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Configuration of one node's consensus core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Raft id of this node; never 0, unique in the cluster, never reused.
    pub id: u64,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Election timeout is drawn from `[min_election_tick, max_election_tick)` ticks.
    /// `max = min + 1` pins it, which the simulation uses for reproducibility.
    pub min_election_tick: usize,
    pub max_election_tick: usize,
    /// Applied entries between local snapshots (and log compactions).
    pub snapshot_every_entries: u64,
    /// Bytes of entries per append message, and append messages in flight per peer.
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
}

impl CoreConfig {
    fn raft(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.min_election_tick,
            min_election_tick: self.min_election_tick,
            max_election_tick: self.max_election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            // A leader that cannot hear a quorum steps down; a partitioned node cannot
            // disrupt the cluster with term inflation when it returns.
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("snapshot at index {index} cannot be restored: {detail}")]
    Snapshot { index: u64, detail: String },
    #[error("the configuration change at index {index} is {source}")]
    ConfChange {
        index: u64,
        source: crate::codec::DecodeError,
    },
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is 0 when none is known.
    #[error("not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("proposal dropped by raft: {0}")]
    Dropped(String),
}

/// A committed command, applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    /// Term of the entry: with `index`, what identifies it in the log.
    pub term: u64,
    /// The token given to [`Core::propose`], when the entry carries one. Tokens embed the
    /// proposing node's id, so a driver recognises its own.
    pub token: Option<u64>,
    pub outcome: Outcome,
}

/// What one [`Core::handle_ready`] produced, for the driver to carry out.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to peers, in order.
    pub messages: Vec<Message>,
    /// Commands applied, in log order.
    pub applied: Vec<Applied>,
    /// Index of a snapshot from the leader installed in this Ready (the node was too far
    /// behind for the log).
    pub installed_snapshot: Option<u64>,
    /// Answers to [`Core::read_index`]: the request's id and the commit index a read must wait
    /// to see applied.
    pub read_states: Vec<(u64, u64)>,
    /// Whether a configuration change was applied (or arrived in a snapshot).
    pub membership_changed: bool,
}

/// The applied state, shared with readers (the node's request handlers) without copying.
/// Only [`Core`] writes it; readers hold the lock briefly.
pub type SharedState = Arc<RwLock<StateMachine>>;

pub struct Core<L: LogStore> {
    pub(crate) raw: RawNode<L>,
    state: SharedState,
    /// Index of the last entry applied to `state`.
    applied: u64,
    /// Index of the latest local snapshot.
    snapshot_index: u64,
    snapshot_every_entries: u64,
    /// Set when a configuration change is applied: the next local snapshot is taken at once, so
    /// that a node the change added is sent a snapshot whose configuration includes it (raft-rs
    /// refuses one that does not), and never a log it would replay without the initial voters.
    snapshot_due: bool,
    /// Committed entries held back from a leader that must step down before applying them
    /// (see [`Core::apply`]); applied first thing in the next [`Core::handle_ready`].
    deferred: Vec<Entry>,
    /// Ticks since the core started, and the tick at which each peer was last heard from.
    /// raft-rs's own "recently active" mark is cleared at every check_quorum round (each
    /// election timeout), so sampling it at a fixed tick can find every peer inactive every
    /// time; this is what "reachable" means instead (see [`Core::progress`]).
    ticks: u64,
    heard: std::collections::HashMap<u64, u64>,
    /// A peer heard from within this many ticks is reachable: one election timeout.
    reachable_ticks: u64,
}

impl<L: LogStore> Core<L> {
    /// Opens the core on `log`, restoring the state machine from the log's snapshot; raft-rs
    /// then re-delivers the committed entries after it.
    pub fn new(config: &CoreConfig, log: L) -> Result<Self, Error> {
        let snapshot = log.latest_snapshot()?;
        let (state, applied) = restore(&snapshot)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config.raft(applied), log, &logger)?;
        Ok(Self {
            raw,
            state: Arc::new(RwLock::new(state)),
            applied,
            snapshot_index: applied,
            snapshot_every_entries: config.snapshot_every_entries,
            snapshot_due: false,
            deferred: Vec::new(),
            ticks: 0,
            heard: std::collections::HashMap::new(),
            reachable_ticks: config.min_election_tick as u64,
        })
    }

    /// Whether `peer` was heard from within the last election timeout.
    pub(crate) fn reachable(&self, peer: u64) -> bool {
        self.heard
            .get(&peer)
            .is_some_and(|at| self.ticks - at <= self.reachable_ticks)
    }

    /// Starts an election now instead of waiting for the election timeout (a lone voter at
    /// start-up, or a planned leadership hand-over).
    pub fn campaign(&mut self) -> Result<(), Error> {
        Ok(self.raw.campaign()?)
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.from != 0 {
            self.heard.insert(message.from, self.ticks);
        }
        Ok(self.raw.step(message)?)
    }

    /// Proposes a command; its outcome arrives in [`Output::applied`] with `token`.
    pub fn propose(&mut self, command: &Command, token: u64) -> Result<(), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.raw.raft.leader_id,
            });
        }
        self.raw
            .propose(token.to_be_bytes().to_vec(), command.encode_to_vec())
            .map_err(|e| ProposeError::Dropped(e.to_string()))
    }

    /// Asks for the commit index as of now, confirmed by a quorum (raft-rs's `read_index`). The
    /// answer arrives in [`Output::read_states`] under `id`. raft-rs drops the request silently
    /// when there is no leader, or when the leader has not yet committed an entry in its term:
    /// callers retry until their deadline.
    pub fn read_index(&mut self, id: u64) {
        self.raw.read_index(id.to_be_bytes().to_vec());
    }

    /// Handles one Ready, in the order documented at the top of this module.
    pub fn handle_ready(&mut self) -> Result<Output, Error> {
        let mut out = Output::default();
        if !self.deferred.is_empty() && self.raw.raft.state != StateRole::Leader {
            let deferred = std::mem::take(&mut self.deferred);
            self.apply(deferred, &mut out)?;
            self.raw.advance_apply_to(self.applied);
        }
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        out.messages.extend(ready.take_messages());
        out.read_states = ready
            .take_read_states()
            .into_iter()
            .filter_map(|rs| {
                Some((
                    u64::from_be_bytes(rs.request_ctx.try_into().ok()?),
                    rs.index,
                ))
            })
            .collect();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
            out.installed_snapshot = Some(snapshot.get_metadata().index);
            out.membership_changed = true;
        }
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().set_hard_state(hard_state)?;
        }
        // raft-rs says when the promises in `persisted_messages` need an fsync: new entries, a
        // snapshot, or a new term or vote. A Ready that only moves the commit index (or carries
        // heartbeats) is written without one, as etcd does; see step 5 for why that is safe.
        if ready.must_sync() {
            self.raw.mut_store().sync()?;
        }
        out.messages.extend(ready.take_persisted_messages());
        self.apply(ready.take_committed_entries(), &mut out)?;

        // `advance_append`, not `advance`: the latter would tell raft-rs that every committed entry
        // of the Ready is applied, which is untrue when some were deferred.
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            // Written, not synced: the next Ready's sync makes it durable. Losing it in a
            // crash is safe (the entries it covers are durable in the log; a restarted node
            // relearns the commit index from the leader, and until it hears from one it
            // authorizes nothing without a read_index), and an fsync here would double the
            // fsyncs per write.
            self.raw.mut_store().set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries(), &mut out)?;
        self.raw.advance_apply_to(self.applied);
        if !self.deferred.is_empty() && self.raw.raft.state == StateRole::Leader {
            // Outside any Ready, as raft-rs requires of a term change.
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term + 1, raft::INVALID_ID);
        }
        self.maybe_snapshot()?;
        Ok(out)
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), Error> {
        for entry in entries {
            // A leader must not apply its own removal: raft-rs would leave it in charge (a TODO
            // in its `post_conf_change`) and its next commit would look up a progress it no
            // longer has. Proposals refuse to remove the leader, but leadership can move between
            // a removal's proposal and its application. So the entry (and all after it) waits;
            // the leader steps down once the Ready is done, and applies them as a follower.
            if !self.deferred.is_empty()
                || (self.raw.raft.state == StateRole::Leader && self.removes_self(&entry))
            {
                self.deferred.push(entry);
                continue;
            }
            assert_eq!(
                entry.index,
                self.applied + 1,
                "committed entries arrive in order and without gaps"
            );
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {} // a new leader's no-op
                EntryType::EntryNormal => {
                    // Bytes that do not decode are applied as a refused no-op on every node
                    // alike, so the replicas stay identical.
                    let command = Command::decode(&entry.data[..]).unwrap_or_default();
                    let outcome = self.state_mut().apply(&command);
                    out.applied.push(Applied {
                        index: entry.index,
                        term: entry.term,
                        token: token_of(&entry),
                        outcome,
                    });
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = conf_change_of(&entry)?;
                    let conf_state = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(&conf_state)?;
                    self.snapshot_due = true;
                    out.membership_changed = true;
                    // raft-rs's own step out of a joint configuration carries no context.
                    if !cc.context.is_empty() {
                        let command = Command::decode(&cc.context[..]).unwrap_or_default();
                        let outcome = self.state_mut().apply_membership(&command);
                        out.applied.push(Applied {
                            index: entry.index,
                            term: entry.term,
                            token: token_of(&entry),
                            outcome,
                        });
                    }
                }
            }
            self.applied = entry.index;
        }
        Ok(())
    }

    /// Whether `entry` is a configuration change that takes this node's vote away.
    fn removes_self(&self, entry: &Entry) -> bool {
        entry.get_entry_type() != EntryType::EntryNormal
            && conf_change_of(entry).is_ok_and(|cc| {
                cc.get_changes().iter().any(|c| {
                    c.node_id == self.id()
                        && matches!(
                            c.get_change_type(),
                            ConfChangeType::RemoveNode | ConfChangeType::AddLearnerNode
                        )
                })
            })
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let (state, index) = restore(snapshot)?;
        self.raw.mut_store().apply_snapshot(snapshot)?;
        *self.state_mut() = state;
        self.applied = index;
        self.snapshot_index = index;
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<(), Error> {
        let due = self.snapshot_due && self.applied > self.snapshot_index;
        if self.applied - self.snapshot_index < self.snapshot_every_entries && !due {
            return Ok(());
        }
        self.snapshot_due = false;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(self.state().snapshot().encode_to_vec().into());
        let meta = snapshot.mut_metadata();
        meta.index = self.applied;
        meta.term = self.raw.raft.raft_log.term(self.applied)?;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        self.raw.mut_store().compact(snapshot)?;
        self.raw.mut_store().sync()?;
        self.snapshot_index = self.applied;
        Ok(())
    }

    /// A snapshot of the applied state whose configuration is this node alone: how an operator
    /// brings a cluster back from this node's store after a majority of the voters lost theirs
    /// (`ferry debug force-new-cluster`). It forgets every other voter, which is why nothing
    /// but an operator's explicit command builds one.
    pub fn single_voter_snapshot(&self) -> Result<Snapshot, Error> {
        let mut snapshot = Snapshot::default();
        snapshot.set_data(self.state().snapshot().encode_to_vec().into());
        let meta = snapshot.mut_metadata();
        meta.index = self.applied;
        meta.term = self.raw.raft.raft_log.term(self.applied)?;
        let conf_state = raft::eraftpb::ConfState {
            voters: vec![self.id()],
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        Ok(snapshot)
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this node knows of, 0 if none.
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The applied state machine (a read guard: hold it briefly).
    pub fn state(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.state
            .read()
            .expect("the state lock is never held across a panic")
    }

    /// A handle readers can keep to see the applied state.
    pub fn shared_state(&self) -> SharedState {
        self.state.clone()
    }

    /// Moves the applied state into `shared` and applies to it from now on: readers holding
    /// `shared` from an earlier core (one that stopped on a storage error) see the recovered
    /// state at once, never a partly replayed one.
    pub fn adopt_shared_state(&mut self, shared: &SharedState) {
        let state = std::mem::take(&mut *self.state_mut());
        *shared
            .write()
            .expect("the state lock is never held across a panic") = state;
        self.state = shared.clone();
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, StateMachine> {
        self.state
            .write()
            .expect("the state lock is never held across a panic")
    }

    /// Hard state and configuration facts for status output.
    pub fn voters(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        ids.sort_unstable();
        ids
    }

    pub fn log(&self) -> &L {
        self.raw.store()
    }

    /// Asks `to` to take over leadership (it campaigns at once if it is caught up).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// On a leader: the highest log index known to be replicated on `peer`.
    pub fn matched(&self, peer: u64) -> Option<u64> {
        self.raw.raft.prs().get(peer).map(|p| p.matched)
    }

    /// Index of the last entry in this node's log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Tells raft-rs whether a snapshot sent to `peer` arrived; after a failure the leader
    /// probes the peer again instead of waiting for it forever.
    pub fn report_snapshot(&mut self, peer: u64, delivered: raft::SnapshotStatus) {
        self.raw.report_snapshot(peer, delivered);
    }

    /// Tells raft-rs a peer could not be reached, so it stops optimistic pipelining to it.
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }
}

/// The configuration change a conf-change entry carries, as a `ConfChangeV2` (the older
/// `ConfChange` converted; this node only proposes V2, but a log may hold either).
fn conf_change_of(entry: &Entry) -> Result<ConfChangeV2, Error> {
    // Decoded with prost (`codec.rs`): an entry's bytes were written by whichever node led.
    let codec = |source| Error::ConfChange {
        index: entry.index,
        source,
    };
    if entry.get_entry_type() == EntryType::EntryConfChange {
        let mut cc = crate::codec::decode_conf_change(&entry.data).map_err(codec)?;
        // What raft-rs's `ConfChangeI::into_v2` does (the trait is not re-exported by `raft`).
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(cc.get_change_type());
        single.node_id = cc.node_id;
        let mut v2 = ConfChangeV2::default();
        v2.set_changes(vec![single].into());
        v2.set_context(cc.take_context());
        return Ok(v2);
    }
    crate::codec::decode_conf_change_v2(&entry.data).map_err(codec)
}

/// The proposal token an entry carries in its context, if any.
fn token_of(entry: &Entry) -> Option<u64> {
    <[u8; 8]>::try_from(&entry.context[..])
        .ok()
        .map(u64::from_be_bytes)
}

/// The state machine and index a snapshot holds (a fresh state at 0 when it holds no data).
fn restore(snapshot: &Snapshot) -> Result<(StateMachine, u64), Error> {
    let index = snapshot.get_metadata().index;
    if snapshot.data.is_empty() {
        return Ok((StateMachine::new(), index));
    }
    let fail = |detail: String| Error::Snapshot { index, detail };
    let decoded = StateSnapshot::decode(&snapshot.data[..]).map_err(|e| fail(e.to_string()))?;
    let state = StateMachine::restore(decoded).map_err(|e| fail(e.to_string()))?;
    Ok((state, index))
}
