//! Opening consensus on a store: replay what is durable, then start the driver thread.

use crate::driver::Driver;
use crate::handle::{Event, EventQueue, ProposeError, RaftOptions, Replica};
use ferry_consensus::{Core, CoreConfig, Message};
use ferry_store::{SledLog, StoreError};
use std::sync::atomic::Ordering;

/// A storage error as the store said it, without raft-rs's "unknown error" wrapping.
pub(crate) fn storage_text(e: &ferry_consensus::Error) -> String {
    match e {
        ferry_consensus::Error::Raft(raft::Error::Store(raft::StorageError::Other(inner))) => {
            inner.to_string()
        }
        other => other.to_string(),
    }
}

/// Whether a raft-rs error met while opening a store says the store is damaged: our store's
/// own verdict, or a snapshot raft-rs cannot use.
fn is_damage(e: &raft::Error) -> bool {
    StoreError::is_corrupt(e)
        || matches!(
            e,
            raft::Error::Store(
                raft::StorageError::SnapshotOutOfDate
                    | raft::StorageError::SnapshotTemporarilyUnavailable
            )
        )
}

/// How a driver ended.
#[derive(Debug)]
pub enum DriverExit {
    /// Asked to stop ([`Replica::stop`]) or every handle dropped.
    Stopped,
    /// The store failed; nothing after the last durable Ready was acknowledged.
    StorageFailed(String),
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
    // Damage (a checksum or structure check failed, a snapshot that does not restore) means
    // the store must be quarantined; anything else may pass.
    let damaged = |e: ferry_consensus::Error| {
        let is_damage = match &e {
            ferry_consensus::Error::Snapshot { .. } | ferry_consensus::Error::ConfChange { .. } => {
                true
            }
            ferry_consensus::Error::Raft(raft_error) => is_damage(raft_error),
        };
        if is_damage {
            StartError::Damaged(e.to_string())
        } else {
            StartError::Other(e.to_string())
        }
    };
    let durable_commit = raft::Storage::initial_state(&log)
        .map_err(|e| damaged(e.into()))?
        .hard_state
        .commit;
    let mut core = Core::new(&config, log).map_err(damaged)?;
    while core.applied() < durable_commit {
        let before = core.applied();
        for message in core.handle_ready().map_err(damaged)?.messages {
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
    let driver = Driver::new(core, options, outbox, status);
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
