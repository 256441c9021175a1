//! [`SledLog`]: the Raft log in sled, implementing the consensus crate's [`LogStore`].
//!
//! Layout: tree `raft_log` maps an 8-byte big-endian index to a sealed `Entry`; tree
//! `raft_meta` holds sealed `hard_state`, `conf_state` and `snapshot` records. Hard state, conf
//! state and snapshot metadata are also kept in memory (loaded and verified at open), so raft-rs's
//! frequent `term`/`first_index`/`last_index` calls never touch the disk twice.
//!
//! Every read is verified; a damaged record is a storage error, never a plausible value.

use crate::mark::{Mark, MarkFile};
use crate::record;
use ferry_consensus::{ConfState, Entry, HardState, LogStore, Snapshot};
use protobuf::Message as _;
use raft::{GetEntriesContext, RaftState, StorageError};
use std::path::Path;

use crate::error::{corrupt, open_error, sled_error, sled_open_error, store_error};
pub use crate::error::{OpenError, StoreError};

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
    /// The raft id this store belongs to; 0 until [`SledLog::initialize`].
    raft_id: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// Metadata of the latest snapshot (its data stays on disk until asked for).
    snapshot_index: u64,
    snapshot_term: u64,
    /// Index and term of the last entry (the snapshot's when the log is empty).
    last_index: u64,
    last_term: u64,
    /// What the store last made durable, written after every sync (see [`crate::mark`]).
    mark: MarkFile,
    /// What the start-up scan found and did.
    scan: Scan,
}

/// What [`SledLog::open`] checked, how long it took, and what it repaired.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Records read and verified (entries and metadata).
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    pub duration: std::time::Duration,
    /// Repairs made in place, in words (empty when none was needed).
    pub repairs: Vec<String>,
}

const IDENTITY_KEY: &[u8] = b"identity";

impl SledLog {
    /// Opens (creating if need be) the store in `dir` and verifies all of it: every record's
    /// checksum, the structure of the log, and that nothing durable was lost since the last
    /// sync (the high-water mark). sled 0.34 can panic on damaged files: a panic while opening
    /// is reported as damage too. A new store is empty until [`SledLog::initialize`].
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let started = std::time::Instant::now();
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_inner(dir)));
        let mut this = match opened {
            Ok(result) => result?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                return Err(OpenError::Damaged(format!(
                    "sled panicked reading it: {what}"
                )));
            }
        };
        this.scan.duration = started.elapsed();
        Ok(this)
    }

    fn open_inner(dir: &Path) -> Result<Self, OpenError> {
        let db = open_db_classified(dir)?;
        let log = db.open_tree(LOG_TREE).map_err(sled_open_error)?;
        let meta = db.open_tree(META_TREE).map_err(sled_open_error)?;
        let data_file = std::fs::File::open(dir.join(SLED_DATA_FILE)).map_err(|e| {
            OpenError::Unavailable(format!(
                "cannot open {}: {e}",
                dir.join(SLED_DATA_FILE).display()
            ))
        })?;
        let mark = MarkFile::read(dir).map_err(|e| match e {
            crate::mark::ReadError::Io(e) => OpenError::Unavailable(e),
            crate::mark::ReadError::Damaged(e) => {
                OpenError::Damaged(format!("the high-water mark: {e}"))
            }
        })?;
        let mark_file = MarkFile::open(dir, mark.as_ref()).map_err(|e| {
            OpenError::Unavailable(format!(
                "cannot open the mark file in {}: {e}",
                dir.display()
            ))
        })?;
        let mut this = Self {
            db,
            data_file,
            log,
            meta,
            raft_id: 0,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot_index: 0,
            snapshot_term: 0,
            last_index: 0,
            last_term: 0,
            mark: mark_file,
            scan: Scan::default(),
        };
        this.load(mark).map_err(open_error)?;
        Ok(this)
    }

    /// Reads and verifies everything at open.
    fn load(&mut self, mark: Option<Mark>) -> raft::Result<()> {
        let identity = self.read_meta_raw(IDENTITY_KEY)?;
        let hard_state = self.read_meta::<HardState>(HARD_STATE_KEY)?;
        let conf_state = self.read_meta::<ConfState>(CONF_STATE_KEY)?;
        let snapshot = self.read_meta::<Snapshot>(SNAPSHOT_KEY)?;
        let has_entries = !self.log.is_empty();
        let Some(identity) = identity else {
            if hard_state.is_some() || snapshot.is_some() || has_entries || mark.is_some() {
                return Err(corrupt(
                    "identity",
                    "the store holds Raft state but no record of whose it is",
                ));
            }
            if conf_state.is_some() {
                // An initialization interrupted before its identity was written: start over.
                self.meta.clear().map_err(sled_error)?;
                self.scan
                    .repairs
                    .push("an interrupted initialization was discarded".into());
            }
            return Ok(());
        };
        self.raft_id = decode_identity(&identity)?;
        self.conf_state =
            conf_state.ok_or_else(|| corrupt("conf state", "missing from an initialized store"))?;
        self.hard_state = hard_state.unwrap_or_default();
        if let Some(snapshot) = snapshot {
            self.snapshot_index = snapshot.get_metadata().index;
            self.snapshot_term = snapshot.get_metadata().term;
        }
        self.last_index = match self.log.last().map_err(sled_error)? {
            Some((key, _)) => decode_index(&key)?.max(self.snapshot_index),
            None => self.snapshot_index,
        };
        self.check_structure()?;
        let now = self.current_mark();
        match mark {
            Some(mark) => {
                if let Some(lost) = mark.regression(&now) {
                    return Err(corrupt("store behind its high-water mark", lost));
                }
            }
            // A store that never synced more than its initialization has no mark yet.
            None if self.hard_state == HardState::default() && !has_entries => {}
            None => return Err(corrupt("high-water mark", "missing")),
        }
        Ok(())
    }

    /// Start-up structural checks: the log is contiguous after the snapshot, terms never go
    /// down along it, the commit index is within the log and not
    /// below the snapshot, every entry's checksum holds. Leftovers of an interrupted
    /// compaction (entries at or below the snapshot) are removed.
    fn check_structure(&mut self) -> raft::Result<()> {
        let mut expected = self.snapshot_index + 1;
        let mut term = self.snapshot_term;
        let mut leftovers = Vec::new();
        for item in self.log.iter() {
            let (key, value) = item.map_err(sled_error)?;
            let index = decode_index(&key)?;
            self.scan.records += 1;
            self.scan.bytes += value.len() as u64;
            if index <= self.snapshot_index {
                leftovers.push(key);
                continue;
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
            if entry.term < term {
                return Err(corrupt(
                    "raft log",
                    format!("entry {index} has term {} after term {term}", entry.term),
                ));
            }
            term = entry.term;
            expected += 1;
        }
        self.last_term = term;
        if self.hard_state.commit > self.last_index {
            return Err(corrupt(
                "hard state",
                format!(
                    "commit {} beyond the last entry {}",
                    self.hard_state.commit, self.last_index
                ),
            ));
        }
        if self.hard_state.commit < self.snapshot_index {
            return Err(corrupt(
                "hard state",
                format!(
                    "commit {} below the snapshot at {}",
                    self.hard_state.commit, self.snapshot_index
                ),
            ));
        }
        if !leftovers.is_empty() {
            let mut batch = sled::Batch::default();
            for key in &leftovers {
                batch.remove(key);
            }
            self.log.apply_batch(batch).map_err(sled_error)?;
            self.scan.repairs.push(format!(
                "{} entries left over from an interrupted compaction were removed",
                leftovers.len()
            ));
        }
        Ok(())
    }

    /// Makes an empty store this node's: records `raft_id` as its owner and `voters` as its
    /// configuration (empty for a node that waits to be added by a leader), durably.
    pub fn initialize(&mut self, raft_id: u64, voters: &[u64]) -> raft::Result<()> {
        assert_eq!(
            self.raft_id, 0,
            "initialize is called on an empty store only"
        );
        assert!(raft_id > 0, "raft id 0 is not valid");
        self.conf_state.voters = voters.to_vec();
        self.write_meta(CONF_STATE_KEY, &self.conf_state.clone())?;
        // The identity goes last: a store with one is complete.
        self.meta
            .insert(IDENTITY_KEY, record::seal(&raft_id.to_be_bytes()))
            .map_err(sled_error)?;
        self.raft_id = raft_id;
        self.sync()
    }

    /// The raft id this store belongs to, once initialized.
    pub fn raft_id(&self) -> Option<u64> {
        (self.raft_id != 0).then_some(self.raft_id)
    }

    /// What the start-up scan checked and repaired.
    pub fn scan(&self) -> &Scan {
        &self.scan
    }

    fn current_mark(&self) -> Mark {
        Mark {
            sequence: 0,
            raft_id: self.raft_id,
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            commit: self.hard_state.commit,
            last_index: self.last_index,
            last_term: self.last_term,
            snapshot_index: self.snapshot_index,
        }
    }

    fn read_meta_raw(&mut self, key: &[u8]) -> raft::Result<Option<sled::IVec>> {
        let value = self.meta.get(key).map_err(sled_error)?;
        if let Some(value) = &value {
            self.scan.records += 1;
            self.scan.bytes += value.len() as u64;
        }
        Ok(value)
    }

    fn read_meta<M: protobuf::Message>(&self, key: &[u8]) -> raft::Result<Option<M>> {
        let Some(value) = self.meta.get(key).map_err(sled_error)? else {
            return Ok(None);
        };
        decode_meta(key, &value).map(Some)
    }

    fn write_meta<M: protobuf::Message>(&self, key: &[u8], message: &M) -> raft::Result<()> {
        let bytes = message.write_to_bytes().map_err(store_error)?;
        self.meta
            .insert(key, record::seal(&bytes))
            .map_err(sled_error)?;
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
    open_db_classified(dir).map_err(store_error)
}

fn open_db_classified(dir: &Path) -> Result<sled::Db, OpenError> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(OpenError::Unavailable(format!(
                        "the store in {} is locked by another process for {LOCK_WAIT:?}; \
                         is another ferry node using this data directory?",
                        dir.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(sled_open_error(e)),
        }
    }
}

/// Decodes a sealed metadata record (hard state, conf state, snapshot) under `key`.
pub fn decode_meta<M: protobuf::Message>(key: &[u8], value: &[u8]) -> raft::Result<M> {
    let what = String::from_utf8_lossy(key).into_owned();
    let payload = record::open(value).map_err(|e| corrupt(&what, e))?;
    M::parse_from_bytes(payload).map_err(|e| corrupt(&what, e))
}

/// Decodes the sealed identity record: the store owner's raft id.
pub fn decode_identity(value: &[u8]) -> raft::Result<u64> {
    let payload = record::open(value).map_err(|e| corrupt("identity", e))?;
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| corrupt("identity", format!("{} bytes, expected 8", payload.len())))?;
    match u64::from_be_bytes(bytes) {
        0 => Err(corrupt("identity", "raft id 0")),
        id => Ok(id),
    }
}

/// Decodes a log key: the entry's index, 8 bytes big-endian.
pub fn decode_index(key: &[u8]) -> raft::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| corrupt("raft log key", format!("{} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes the sealed log entry stored under `index`.
pub fn decode_entry(index: u64, value: &[u8]) -> raft::Result<Entry> {
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
            let (key, value) = item.map_err(sled_error)?;
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
            .map_err(sled_error)?
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
        self.mark
            .lower_last(last.term, last.index)
            .map_err(store_error)?;
        self.log.apply_batch(batch).map_err(sled_error)?;
        self.last_index = last.index;
        self.last_term = last.term;
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
        // The snapshot replaces the whole log, as raft-rs's MemStorage does. The log goes
        // first, in one atomic batch: a crash before the metadata below is written then fails
        // the start-up checks (commit beyond the log) instead of leaving the new snapshot
        // followed by entries of another history.
        self.mark
            .lower_last(meta.term, meta.index)
            .map_err(store_error)?;
        let mut batch = sled::Batch::default();
        for key in self.log.iter().keys() {
            batch.remove(key.map_err(sled_error)?);
        }
        self.log.apply_batch(batch).map_err(sled_error)?;
        self.write_meta(SNAPSHOT_KEY, snapshot)?;
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = meta.index;
        hard_state.term = hard_state.term.max(meta.term);
        self.set_hard_state(&hard_state)?;
        self.set_conf_state(meta.get_conf_state())?;
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.last_index = meta.index;
        self.last_term = meta.term;
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
            batch.remove(key.map_err(sled_error)?);
        }
        self.log.apply_batch(batch).map_err(sled_error)?;
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
        self.db.flush().map_err(sled_error)?;
        self.data_file.sync_data().map_err(store_error)?;
        // Only now is this state durable: the mark may claim it.
        self.mark
            .record(&self.current_mark())
            .map_err(store_error)?;
        Ok(())
    }
}
