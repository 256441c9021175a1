//! The "raft" service: open and verify the store, quarantine it if it is damaged, settle this
//! node's raft id when the store is empty, run the consensus driver, and start over (from the
//! store) when the driver stops on a storage failure. docs/DESIGN.md section 5, lessons L3 and
//! L4.
//!
//! Nothing here blocks the rest of the node: the admin API, health reports, the relay
//! listener and the peer links run from the start; until the driver runs, the node reports
//! the "raft" service as starting, with what it waits for.

use crate::context::Ctx;
use crate::supervisor::ServiceResult;
use ferry_consensus::Message;
use ferry_gate::ServiceState;
use ferry_replica::{DriverExit, EventQueue, RaftOptions, StartError};
use ferry_store::{OpenError, SledLog};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where a quarantined store goes, inside the data directory.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The note written beside a quarantined store.
pub const QUARANTINE_NOTE: &str = "NOTE.txt";
/// Written in the data directory once its store is initialized: an empty store found later
/// beside it was wiped or lost, never new (`rejoin.rs`).
pub const HOSTED_MARKER: &str = "ferry-node";
/// How often a node that rejoined checks whether it has caught up (its quarantine then ends).
const REJOIN_CHECK_EVERY: Duration = Duration::from_millis(500);
/// A rejoined node is caught up when its applied index is this close to the commit index.
const CAUGHT_UP_ENTRIES: u64 = 64;

/// What the consensus driver needs, kept by the node across the driver's restarts.
pub struct Consensus {
    pub options: RaftOptions,
    /// Where the driver takes its events from (the replica's queue).
    pub queue: EventQueue,
    /// Toward the peer transport; held here so that it stays open between drivers.
    pub outbox: tokio::sync::mpsc::Sender<Message>,
    /// Set once the state has been recovered in this process: sessions the state says this
    /// node carried before it restarted are detached then, and only then (a driver restarted
    /// after a storage failure has not lost the sessions this process relays).
    pub recovered_once: std::sync::atomic::AtomicBool,
}

/// The store's directory inside the data directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

/// Service "raft". Returns an error (and is started again by its supervisor, with backoff)
/// when the store cannot be opened now or the driver stopped on a storage failure.
pub async fn consensus_service(
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> ServiceResult {
    let dir = raft_dir(&ctx.config.data_dir);
    ctx.health.services.report(
        "raft",
        ServiceState::Starting,
        "opening and verifying the store".into(),
    );
    count_quarantined(&ctx);
    let mut quarantined: Option<String> = None;
    let mut log = match open(&dir).await {
        Ok(log) => log,
        Err(OpenError::Unavailable(why)) => {
            ctx.replica.set_storage_error(Some(why.clone()));
            return Err(why);
        }
        Err(OpenError::Damaged(why)) => {
            quarantined = Some(quarantine(&ctx, &dir, &why)?);
            open(&dir).await.map_err(|e| e.to_string())?
        }
    };
    record_scan(&ctx, &log);
    if log.raft_id().is_none() {
        let marker = ctx.config.data_dir.join(HOSTED_MARKER);
        let lost = quarantined.or_else(|| {
            marker.exists().then(|| {
                format!(
                    "its store was empty but its data directory held one before ({} says \
                     so): wiped or lost",
                    marker.display()
                )
            })
        });
        ctx.replica.set_fresh(lost.is_none());
        let settled = crate::rejoin::settle(
            &ctx.config,
            ctx.peers.as_ref(),
            &ctx.health.services,
            lost.as_deref(),
            &mut shutdown,
        );
        let Some(identity) = settled.await else {
            return Ok(()); // shut down while waiting
        };
        let node = ctx.config.node_id.clone();
        log = blocking(move || {
            log.initialize(identity.raft_id, &identity.voters)
                .map_err(|e| format!("cannot initialize the store: {e}"))?;
            let text = format!(
                "node {node}: this data directory holds its store (raft id {}, initialized at \
                 {} UTC). An empty store found here later was lost, not new: the node then \
                 rejoins under a new raft id.\n",
                identity.raft_id,
                utc_stamp(crate::now_ms())
            );
            write_durably(&marker, &text)
                .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
            Ok(log)
        })
        .await?;
        ctx.replica.set_fresh(false);
    } else if !ctx.config.data_dir.join(HOSTED_MARKER).exists() {
        // A store from before the marker existed: mark its directory now.
        let marker = ctx.config.data_dir.join(HOSTED_MARKER);
        let text = format!(
            "node {}: this data directory holds its store.\n",
            ctx.config.node_id
        );
        write_durably(&marker, &text)
            .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    }
    let consensus = &ctx.consensus;
    let (replica, queue, options, outbox) = (
        ctx.replica.clone(),
        consensus.queue.clone(),
        consensus.options.clone(),
        consensus.outbox.clone(),
    );
    let started = blocking(move || {
        Ok(ferry_replica::start_driver(
            &replica, &queue, log, &options, outbox,
        ))
    })
    .await?;
    let driver = match started {
        Ok(driver) => driver,
        Err(StartError::Damaged(why)) => {
            // Found only when the state was rebuilt: quarantine now; the next attempt starts
            // on an empty store and rejoins.
            quarantine(&ctx, &dir, &why)?;
            return Err(format!(
                "the store could not be recovered ({why}); quarantined"
            ));
        }
        Err(StartError::Other(why)) => return Err(why),
    };
    ctx.health
        .services
        .report("raft", ServiceState::Running, String::new());
    if !consensus.recovered_once.swap(true, Ordering::AcqRel) {
        // In the background: with no leader yet (peers still starting), this waits.
        tokio::spawn(crate::sweep::detach_orphaned_sessions(ctx.upkeep()));
    }
    let mut join = tokio::task::spawn_blocking(move || driver.join());
    let mut every = tokio::time::interval(REJOIN_CHECK_EVERY);
    loop {
        tokio::select! {
            ended = &mut join => {
                return match ended {
                    Ok(Ok(DriverExit::Stopped)) if *shutdown.borrow() => Ok(()),
                    Ok(Ok(DriverExit::Stopped)) => Err("the consensus driver stopped".into()),
                    Ok(Ok(DriverExit::StorageFailed(e))) => Err(format!(
                        "consensus stopped on a storage failure ({e}); the store is opened again"
                    )),
                    Ok(Err(_)) | Err(_) => Err("the consensus driver panicked".into()),
                };
            }
            _ = shutdown.changed() => {
                ctx.replica.stop();
                let _ = join.await;
                return Ok(());
            }
            _ = every.tick() => end_quarantine_once_caught_up(&ctx),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the store task failed: {e}"))?
}

async fn open(dir: &Path) -> Result<SledLog, OpenError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || SledLog::open(&dir))
        .await
        .unwrap_or_else(|e| {
            Err(OpenError::Damaged(format!(
                "opening the store panicked: {e}"
            )))
        })
}

fn record_scan(ctx: &Ctx, log: &SledLog) {
    let scan = log.scan();
    let m = &ctx.metrics;
    m.store_scan_seconds.set(scan.duration.as_secs_f64());
    m.store_scan_records.set(scan.records as i64);
    for repair in &scan.repairs {
        tracing::warn!(%repair, "store repaired in place");
        m.store_repairs.inc();
    }
    tracing::info!(
        records = scan.records,
        bytes = scan.bytes,
        duration_ms = scan.duration.as_millis() as u64,
        "store verified"
    );
}

/// Moves the damaged store in `dir` to `<data-dir>/quarantine/<UTC time>/` with a note of
/// what was found, and raises the quarantine alarm. Returns the reason, for the rejoin.
fn quarantine(ctx: &Ctx, dir: &Path, why: &str) -> Result<String, String> {
    let note = format!(
        "node: {node}\n\
         configured raft id: {id}\n\
         what was found: {why}\n\n\
         The node started on an empty store and rejoins the cluster under a new raft id (its\n\
         old id is removed from the configuration; it never votes under it again). It catches\n\
         up from a snapshot of a healthy peer. Nothing here is used again: keep it to\n\
         investigate, then delete it.\n",
        node = ctx.config.node_id,
        id = ctx.config.raft.id,
    );
    let target = move_aside(&ctx.config.data_dir, dir, "", &note).map_err(|e| {
        format!(
            "the store in {} is damaged ({why}) and cannot be moved aside: {e}",
            dir.display()
        )
    })?;
    let alarm = format!(
        "the store was damaged ({why}); moved to {} and rejoining under a new raft id",
        target.display()
    );
    tracing::error!(quarantine = %target.display(), %why, "store damaged: quarantined");
    *ctx.health
        .local
        .quarantine
        .lock()
        .expect("never poisoned: no panics under the lock") = Some(alarm);
    ctx.metrics.quarantines.inc();
    count_quarantined(ctx);
    Ok(format!("its store was quarantined: {why}"))
}

/// Moves the store in `dir` to a new `<data-dir>/quarantine/<UTC time><suffix>/raft`, with
/// `note` in a `NOTE.txt` beside it, durably. Returns the new directory.
fn move_aside(data_dir: &Path, dir: &Path, suffix: &str, note: &str) -> std::io::Result<PathBuf> {
    let base = data_dir.join(QUARANTINE_DIR);
    let stamp = utc_stamp(crate::now_ms());
    let mut target = base.join(format!("{stamp}{suffix}"));
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = base.join(format!("{stamp}{suffix}-{n}"));
    }
    std::fs::create_dir_all(&target)?;
    std::fs::rename(dir, target.join("raft"))?;
    let note = format!("Ferry moved this store aside at {stamp} (UTC).\n{note}");
    std::fs::write(target.join(QUARANTINE_NOTE), note)?;
    // The move must survive a crash, or the next start would find the store again.
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(target)
}

/// `ferry debug force-new-cluster`: on a stopped node, replaces its store with one whose
/// configuration is this node alone, holding the state its store had committed. The way back
/// when a majority of the voters lost their stores (docs/OPERATIONS.md, "Lost stores"); the
/// old store is kept in the quarantine directory. Returns what it did, in words.
pub fn force_new_cluster(config: &crate::NodeConfig) -> Result<String, ForceError> {
    let dir = raft_dir(&config.data_dir);
    let open_error = |e: OpenError| ForceError::Open {
        dir: dir.clone(),
        detail: e.to_string(),
    };
    let log = SledLog::open(&dir).map_err(open_error)?;
    if log.raft_id().is_none() {
        return Err(ForceError::Empty { dir });
    }
    let options = raft_options(config);
    let core = ferry_replica::recover(log, &options, None)?;
    let snapshot = core.single_voter_snapshot().map_err(ForceError::Snapshot)?;
    // The new store keeps the highest term this id has seen (with no vote in it): it must
    // never vote again in a term it may have voted in already.
    let (raft_id, index, term) = (core.id(), core.applied(), core.term());
    drop(core);
    let note = format!(
        "node: {node}, raft id {raft_id}\n\
         `ferry debug force-new-cluster` replaced this store with one whose only voter is this\n\
         node, holding the state at index {index}. This is the store as it was before.\n",
        node = config.node_id
    );
    // sled lets go of its lock a moment after the store is dropped; the move does not need it.
    let kept = move_aside(&config.data_dir, &dir, "-before-force-new-cluster", &note)?;
    let mut log = SledLog::open(&dir).map_err(open_error)?;
    log.initialize(raft_id, &[raft_id])?;
    ferry_consensus::LogStore::apply_snapshot(&mut log, &snapshot)?;
    let mut hard_state = raft::Storage::initial_state(&log)?.hard_state;
    hard_state.term = hard_state.term.max(term);
    hard_state.vote = 0;
    ferry_consensus::LogStore::set_hard_state(&mut log, &hard_state)?;
    ferry_consensus::LogStore::sync(&mut log)?;
    Ok(format!(
        "{node} (raft id {raft_id}) is now the only voter of its cluster, with the state at \
         index {index}; the previous store is in {kept}. Start it, then start the other nodes \
         with their data_dir/raft moved aside: they rejoin under new raft ids.",
        node = config.node_id,
        kept = kept.display()
    ))
}

/// Why `ferry debug force-new-cluster` or `ferry debug restore` did nothing (or stopped
/// half-way: the old store is then in the quarantine directory, the message says where).
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    #[error("{}: {detail}", .dir.display())]
    Open { dir: PathBuf, detail: String },
    #[error("the store in {dir} is empty: there is nothing to force a cluster from", dir = .dir.display())]
    Empty { dir: PathBuf },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Recover(#[from] ferry_replica::StartError),
    #[error("cannot snapshot the state: {0}")]
    Snapshot(ferry_consensus::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot write the new store: {0}")]
    Store(#[from] raft::Error),
}

/// Writes `text` to `path` and makes the file and its directory entry durable.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `ferry_store_quarantined_dirs`: the quarantined stores on disk, however old.
fn count_quarantined(ctx: &Ctx) {
    let kept = std::fs::read_dir(ctx.config.data_dir.join(QUARANTINE_DIR))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    ctx.metrics.quarantined_dirs.set(kept as i64);
}

/// The quarantine alarm ends when the node, under its new raft id, is back in the
/// configuration in its place (a voter again if it is meant to be one) and caught up.
fn end_quarantine_once_caught_up(ctx: &Ctx) {
    let mut alarm = ctx
        .health
        .local
        .quarantine
        .lock()
        .expect("never poisoned: no panics under the lock");
    if alarm.is_none() {
        return;
    }
    let id = ctx.replica.raft_id();
    let membership = ctx.replica.membership();
    let voter_meant = ctx.replica.read().member(id).is_none_or(|m| m.voter);
    let in_place = if voter_meant {
        membership.voters.contains(&id)
    } else {
        membership.learners.contains(&id)
    };
    let status = ctx.replica.status();
    let applied = status.applied.load(Ordering::Acquire);
    let commit = status.commit.load(Ordering::Acquire);
    if in_place
        && applied + CAUGHT_UP_ENTRIES >= commit
        && status.leader.load(Ordering::Acquire) != 0
    {
        tracing::info!(raft_id = id, "rejoined and caught up: quarantine ended");
        *alarm = None;
    }
}

/// `YYYYMMDDTHHMMSSZ` for a time in ms since the Unix epoch (UTC).
fn utc_stamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The consensus settings of a node's config.
pub fn raft_options(config: &crate::NodeConfig) -> ferry_replica::RaftOptions {
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

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamps() {
        let check = |ms: u64, expect: &str| assert_eq!(super::utc_stamp(ms), expect);
        check(0, "19700101T000000Z");
        check(951_782_400_000, "20000229T000000Z");
        check(1_795_569_302_000, "20261125T011502Z");
    }
}
