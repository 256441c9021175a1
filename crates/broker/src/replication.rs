//! The seam between the node and consensus: propose a command, read the applied state.
//!
//! Today one node applies commands alone: a log-writer thread takes proposals in batches,
//! appends them to the store, fsyncs once per batch (group commit), applies them, and answers
//! each proposer. Issue 2 replaces the thread with a Raft driver behind the same [`Replica`]
//! handle; nothing else in the node changes.

use ferry_proto::state::Command;
use ferry_state::{Outcome, StateMachine};
use ferry_store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use tokio::sync::{mpsc, oneshot};

/// Most proposals written by one fsync. Larger batches amortise the fsync further but delay
/// the first proposer of the batch; 512 keeps a batch's write under a millisecond.
const BATCH_MAX: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the write could not be made durable: {0}")]
    Storage(String),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// A cheap, cloneable handle to the replicated state.
#[derive(Clone)]
pub struct Replica {
    /// Bounded: when the writer falls behind, proposers wait here (backpressure).
    proposals: mpsc::Sender<Proposal>,
    /// The applied state; written only by the log writer.
    state: Arc<RwLock<StateMachine>>,
    /// Index of the last applied command.
    applied: Arc<AtomicU64>,
}

impl Replica {
    /// Proposes a command and waits until it is durable and applied.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        outcome.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Read access to the applied state. Hold the guard briefly: the writer waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.state
            .read()
            .expect("the log writer never panics while holding the state lock")
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

/// Recovers the state from `store` and starts the single-node log writer.
///
/// The writer thread ends when every [`Replica`] handle has been dropped.
pub fn start_single_node(
    store: Store,
    snapshot_every_entries: u64,
    queue_max: usize,
) -> Result<(Replica, std::thread::JoinHandle<()>), ferry_store::Error> {
    let (state, applied) = store.recover()?;
    tracing::info!(
        applied,
        log_entries = store.log_len(),
        "state recovered from the store"
    );
    let (tx, rx) = mpsc::channel(queue_max);
    let replica = Replica {
        proposals: tx,
        state: Arc::new(RwLock::new(state)),
        applied: Arc::new(AtomicU64::new(applied)),
    };
    let writer = Writer {
        store,
        state: replica.state.clone(),
        applied: replica.applied.clone(),
        snapshot_index: applied,
        snapshot_every_entries,
    };
    let handle = std::thread::Builder::new()
        .name("ferry-log".into())
        .spawn(move || writer.run(rx))
        .expect("spawning a thread succeeds unless the process is out of resources");
    Ok((replica, handle))
}

struct Writer {
    store: Store,
    state: Arc<RwLock<StateMachine>>,
    applied: Arc<AtomicU64>,
    /// Index covered by the latest snapshot (or recovery point).
    snapshot_index: u64,
    snapshot_every_entries: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Proposal>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
        tracing::debug!("log writer stopped: every replica handle is gone");
    }

    fn commit(&mut self, batch: &mut Vec<Proposal>) {
        let first = self.applied.load(Ordering::Acquire) + 1;
        let entries: Vec<(u64, &Command)> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| (first + i as u64, &p.command))
            .collect();
        let durable = self
            .store
            .append(&entries)
            .and_then(|()| self.store.flush());
        if let Err(e) = durable {
            tracing::error!(error = %e, "log write failed; refusing the batch");
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(ProposeError::Storage(e.to_string())));
            }
            return;
        }
        let last = first + batch.len() as u64 - 1;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut state = self
                .state
                .write()
                .expect("only this thread writes the state");
            for p in batch.iter() {
                outcomes.push(state.apply(&p.command));
            }
        }
        self.applied.store(last, Ordering::Release);
        for (p, outcome) in batch.drain(..).zip(outcomes) {
            // A proposer that gave up waiting is not an error: the command still took effect.
            let _ = p.reply.send(Ok(outcome));
        }
        if last - self.snapshot_index >= self.snapshot_every_entries {
            self.snapshot(last);
        }
    }

    fn snapshot(&mut self, index: u64) {
        let snapshot = self
            .state
            .read()
            .expect("only this thread writes the state")
            .snapshot();
        match self.store.save_snapshot(index, &snapshot) {
            Ok(()) => {
                self.snapshot_index = index;
                tracing::info!(index, "snapshot saved; log compacted");
            }
            // The log still holds everything, so a failed snapshot loses nothing; retry later.
            Err(e) => tracing::warn!(index, error = %e, "snapshot failed; will retry"),
        }
    }
}

impl Replica {
    /// Whether the log writer is alive to take proposals.
    pub fn is_running(&self) -> bool {
        !self.proposals.is_closed()
    }
}
