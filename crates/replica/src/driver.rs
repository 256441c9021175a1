//! The consensus driver: one thread that owns the core, takes events, ticks, and handles
//! each Ready in the order `ferry-consensus` documents.

use crate::handle::{membership_command, Event, Membership, ProposeError, Status};
use crate::recover::{storage_text, DriverExit};
use ferry_consensus::{
    Core, MembershipError, Message, PeerProgress, ProposeError as CoreProposeError, StateRole,
};
use ferry_policy::LeaderView;
use ferry_proto::state::{command::Kind, Command, Member, MembershipAction};
use ferry_state::{Outcome, Refusal, RefusalKind};
use ferry_store::SledLog;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
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

pub(crate) struct Driver {
    role: ferry_gate::Role,
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
    pub(crate) fn new(
        core: Core<SledLog>,
        options: &crate::RaftOptions,
        outbox: tokio::sync::mpsc::Sender<Message>,
        status: Arc<Status>,
    ) -> Self {
        Self {
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
        }
    }

    pub(crate) fn run(mut self, rx: &mpsc::Receiver<Event>) -> DriverExit {
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
        let avoid = self.role == ferry_gate::Role::Witness
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
