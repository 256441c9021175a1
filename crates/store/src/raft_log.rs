//! [`SledLog`]: the Raft log in sled, implementing the consensus crate's [`LogStore`].
//!
//! Layout: tree `raft_log` maps an 8-byte big-endian index to a sealed `Entry`; tree
//! `raft_meta` holds sealed `hard_state`, `conf_state` and `snapshot` records. Hard state, conf
//! state and snapshot metadata are also kept in memory (loaded and verified at open), so raft-rs's
//! frequent `term`/`first_index`/`last_index` calls never touch the disk twice.
//!
//! Every read is verified; a damaged record is a storage error, never a plausible value.

use crate::record;
use ferry_consensus::{ConfState, Entry, HardState, LogStore, Snapshot};
use protobuf::Message as _;
use raft::{GetEntriesContext, RaftState, StorageError};
use std::path::Path;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// The file sled 0.34 keeps its log-structured data in, inside its directory.
const SLED_DATA_FILE: &str = "db";

/// A durable Raft log. Not `Clone`: one driver owns it.
pub struct SledLog {
    db: sled::Db,
    /// sled's data file, opened a second time for `fdatasync`: sled's own flush on Linux ends
    /// with `sync_file_range`, which neither flushes the disk's write cache nor persists the
    /// file's new size, so it is not a durability point. fsync works on the file, not on the
    /// descriptor, so syncing this one makes what sled wrote durable.
    data_file: std::fs::File,
    log: sled::Tree,
    meta: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    /// Metadata of the latest snapshot (its data stays on disk until asked for).
    snapshot_index: u64,
    snapshot_term: u64,
    /// Index of the last entry (or the snapshot index when the log is empty).
    last_index: u64,
}

fn store_error(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> raft::Error {
    store_error(format!("store is corrupt: {what}: {e}"))
}

impl SledLog {
    /// Opens the log in `dir`. A new log is bootstrapped with `voters` as its configuration;
    /// an existing one keeps its own (which only committed conf changes alter).
    pub fn open(dir: &Path, voters: &[u64]) -> raft::Result<Self> {
        let db = open_db(dir)?;
        let log = db.open_tree(LOG_TREE).map_err(store_error)?;
        let meta = db.open_tree(META_TREE).map_err(store_error)?;
        let data_file = std::fs::File::open(dir.join(SLED_DATA_FILE)).map_err(|e| {
            store_error(format!(
                "cannot open {}: {e}",
                dir.join(SLED_DATA_FILE).display()
            ))
        })?;
        let mut this = Self {
            db,
            data_file,
            log,
            meta,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_index: 0,
            snapshot_term: 0,
            last_index: 0,
        };
        match this.read_meta::<ConfState>(CONF_STATE_KEY)? {
            Some(conf_state) => {
                this.conf_state = conf_state;
                this.hard_state = this.read_meta(HARD_STATE_KEY)?.unwrap_or_default();
                if let Some(snapshot) = this.read_meta::<Snapshot>(SNAPSHOT_KEY)? {
                    this.snapshot_index = snapshot.get_metadata().index;
                    this.snapshot_term = snapshot.get_metadata().term;
                }
            }
            None => {
                this.conf_state.voters = voters.to_vec();
                this.write_meta(CONF_STATE_KEY, &this.conf_state.clone())?;
                this.sync()?;
            }
        }
        this.last_index = match this.log.last().map_err(store_error)? {
            Some((key, _)) => decode_index(&key)?,
            None => this.snapshot_index,
        };
        this.check_structure()?;
        Ok(this)
    }

    /// Start-up structural checks: the log is contiguous after the snapshot, the commit index is
    /// within the log, every entry's checksum holds.
    fn check_structure(&self) -> raft::Result<()> {
        let mut expected = self.snapshot_index + 1;
        for item in self.log.iter() {
            let (key, value) = item.map_err(store_error)?;
            let index = decode_index(&key)?;
            if index <= self.snapshot_index {
                continue; // compaction interrupted by a crash; harmless, removed next time
            }
            if index != expected {
                return Err(corrupt(
                    "raft log",
                    format!("entry {index} follows {}", expected - 1),
                ));
            }
            let entry = decode_entry(index, &value)?;
            if entry.index != index {
                return Err(corrupt(
                    "raft log",
                    format!("entry under key {index} says index {}", entry.index),
                ));
            }
            expected += 1;
        }
        if self.hard_state.commit > self.last_index {
            return Err(corrupt(
                "hard state",
                format!(
                    "commit {} beyond the last entry {}",
                    self.hard_state.commit, self.last_index
                ),
            ));
        }
        Ok(())
    }

    fn read_meta<M: protobuf::Message>(&self, key: &[u8]) -> raft::Result<Option<M>> {
        let Some(value) = self.meta.get(key).map_err(store_error)? else {
            return Ok(None);
        };
        let what = String::from_utf8_lossy(key).into_owned();
        let payload = record::open(&value).map_err(|e| corrupt(&what, e))?;
        let message = M::parse_from_bytes(payload).map_err(|e| corrupt(&what, e))?;
        Ok(Some(message))
    }

    fn write_meta<M: protobuf::Message>(&self, key: &[u8], message: &M) -> raft::Result<()> {
        let bytes = message.write_to_bytes().map_err(store_error)?;
        self.meta
            .insert(key, record::seal(&bytes))
            .map_err(store_error)?;
        Ok(())
    }

    fn first(&self) -> u64 {
        self.snapshot_index + 1
    }
}

/// How long `open` waits for the store's file lock. sled releases the lock only when its
/// background threads let go of a dropped database, a moment after the drop, so a reopen in
/// the same process (a restarted node in `ferry dev`, tests) can briefly find it held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database in `dir` as `SledLog::open` does, waiting up to `LOCK_WAIT` for a
/// lock a dropped database of this process still holds. Public for tests that inspect or
/// damage a store between opens.
pub fn open_db(dir: &Path) -> raft::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(store_error(format!(
                        "the store in {} is locked by another process for {LOCK_WAIT:?}; \
                         is another ferry node using this data directory?",
                        dir.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(store_error(e)),
        }
    }
}

fn decode_index(key: &[u8]) -> raft::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| corrupt("raft log key", format!("{} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_entry(index: u64, value: &[u8]) -> raft::Result<Entry> {
    let what = format!("raft log entry {index}");
    let payload = record::open(value).map_err(|e| corrupt(&what, e))?;
    Entry::parse_from_bytes(payload).map_err(|e| corrupt(&what, e))
}

impl raft::Storage for SledLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for item in self.log.range(low.to_be_bytes()..high.to_be_bytes()) {
            let (key, value) = item.map_err(store_error)?;
            let index = decode_index(&key)?;
            let entry = decode_entry(index, &value)?;
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
        }
        let expected = entries.first().map(|e| e.index);
        if expected != Some(low) {
            return Err(corrupt("raft log", format!("entry {low} is missing")));
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let value = self
            .log
            .get(index.to_be_bytes())
            .map_err(store_error)?
            .ok_or_else(|| corrupt("raft log", format!("entry {index} is missing")))?;
        Ok(decode_entry(index, &value)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.latest_snapshot()?;
        if snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot)
    }
}

impl LogStore for SledLog {
    fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        assert!(
            first.index > self.snapshot_index,
            "raft-rs never appends below the snapshot"
        );
        assert!(
            first.index <= self.last_index + 1,
            "appends are contiguous with the log"
        );
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = entry.write_to_bytes().map_err(store_error)?;
            batch.insert(&entry.index.to_be_bytes(), record::seal(&bytes));
        }
        // A conflicting suffix beyond the new entries is discarded.
        for index in last.index + 1..=self.last_index {
            batch.remove(&index.to_be_bytes());
        }
        self.log.apply_batch(batch).map_err(store_error)?;
        self.last_index = last.index;
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()> {
        self.write_meta(HARD_STATE_KEY, hard_state)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = commit;
        self.set_hard_state(&hard_state)
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> raft::Result<()> {
        self.write_meta(CONF_STATE_KEY, conf_state)?;
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        self.write_meta(SNAPSHOT_KEY, snapshot)?;
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = meta.index;
        hard_state.term = hard_state.term.max(meta.term);
        self.set_hard_state(&hard_state)?;
        self.set_conf_state(meta.get_conf_state())?;
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        // The snapshot replaces the whole log, as raft-rs's MemStorage does.
        self.log.clear().map_err(store_error)?;
        self.last_index = meta.index;
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if index <= self.snapshot_index {
            return Ok(());
        }
        // The snapshot must be durable before the entries it replaces are dropped.
        self.write_meta(SNAPSHOT_KEY, &snapshot)?;
        self.sync()?;
        self.snapshot_index = index;
        self.snapshot_term = term;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index.to_be_bytes()).keys() {
            batch.remove(key.map_err(store_error)?);
        }
        self.log.apply_batch(batch).map_err(store_error)?;
        Ok(())
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        Ok(self
            .read_meta::<Snapshot>(SNAPSHOT_KEY)?
            .unwrap_or_else(|| {
                // No snapshot yet: an empty one at index 0 with the current configuration.
                let mut snapshot = Snapshot::default();
                snapshot
                    .mut_metadata()
                    .set_conf_state(self.conf_state.clone());
                snapshot
            }))
    }

    fn sync(&mut self) -> raft::Result<()> {
        self.db.flush().map_err(store_error)?;
        self.data_file.sync_data().map_err(store_error)?;
        Ok(())
    }
}
