//! The log storage seam: what consensus needs from a durable store, and an in-memory store for
//! the deterministic simulation. The sled-backed store (issue 2) implements the same trait in
//! `ferry-store`, so nothing here names sled.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// A Raft log with its hard state, conf state and latest snapshot.
///
/// raft-rs reads through [`raft::Storage`]; [`crate::Core`] writes through the methods below and
/// calls [`LogStore::sync`] before anything that depends on the writes leaves the node.
/// Contract: `sync` makes every earlier write durable, and reads never return bytes the store
/// cannot vouch for (storage errors are fatal to raft-rs, so a lying store breaks safety).
pub trait LogStore: raft::Storage {
    /// Appends entries, first discarding any existing entries at or after the first new index.
    fn append(&mut self, entries: &[Entry]) -> raft::Result<()>;
    fn set_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()>;
    fn set_commit(&mut self, commit: u64) -> raft::Result<()>;
    fn set_conf_state(&mut self, conf_state: &ConfState) -> raft::Result<()>;
    /// Installs a snapshot from the leader, discarding the log it covers (or all of it).
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()>;
    /// Records `snapshot` (of the local state, built by [`crate::Core`]) and drops the entries
    /// it covers. A snapshot not newer than the current one is ignored.
    fn compact(&mut self, snapshot: Snapshot) -> raft::Result<()>;
    /// The latest snapshot (index 0 and no data when there is none).
    fn latest_snapshot(&self) -> raft::Result<Snapshot>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> raft::Result<()>;
}

/// An in-memory [`LogStore`]. Every write is "durable" at once, which is what the simulation
/// models: a crashed node keeps its `MemLog` and loses everything else.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// Latest snapshot; its index and term anchor the log.
    snapshot: Snapshot,
    /// Entries after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemLog {
    /// A log for a new cluster whose voters are `voters`.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let conf_state = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let mut log = Self {
            conf_state: conf_state.clone(),
            ..Default::default()
        };
        log.snapshot.mut_metadata().set_conf_state(conf_state);
        log
    }

    fn offset(&self) -> u64 {
        self.snapshot.get_metadata().index
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl raft::Storage for MemLog {
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
        if low <= self.offset() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index()? + 1 {
            return Err(unavailable());
        }
        let from = (low - self.offset() - 1) as usize;
        let to = (high - self.offset() - 1) as usize;
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if index == meta.index {
            return Ok(meta.term);
        }
        if index < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((index - meta.index - 1) as usize)
            .map(|e| e.term)
            .ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.offset() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.offset() + self.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index > self.offset(),
            "raft-rs never appends at or below the snapshot index ({} <= {})",
            first.index,
            self.offset()
        );
        let keep = (first.index - self.offset() - 1) as usize;
        assert!(
            keep <= self.entries.len(),
            "appends are contiguous with the log"
        );
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> raft::Result<()> {
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        self.hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> raft::Result<()> {
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.offset() {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        // As raft-rs's own MemStorage does: the snapshot replaces the whole log, and raft-rs
        // re-sends whatever follows it.
        self.entries.clear();
        self.hard_state.commit = meta.index;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snapshot.clone();
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        let index = snapshot.get_metadata().index;
        if index <= self.offset() {
            return Ok(());
        }
        let drop = (index - self.offset()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }

    fn latest_snapshot(&self) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }

    fn sync(&mut self) -> raft::Result<()> {
        Ok(())
    }
}
