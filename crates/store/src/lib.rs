//! Durable storage for a node: a log of state-machine commands and the latest snapshot, in sled.
//!
//! Every value written carries a checksum ([`record`]) verified on every read: sled has open
//! reports of corruption after a crash, and Raft's storage contract (issue 2) treats a lying
//! store as fatal, so we refuse to return bytes we cannot vouch for.
//!
//! Architecture invariant: this is the only crate that names sled. It knows commands and
//! snapshots as protobuf messages and nothing of networking or consensus.

pub mod raft_log;
pub mod record;

pub use raft_log::SledLog;

use ferry_proto::state::{Command, Snapshot};
use ferry_state::StateMachine;
use prost::Message;
use std::path::Path;

/// Trees (sled's keyspaces) of the store.
const LOG_TREE: &str = "log";
const META_TREE: &str = "meta";
/// Key of the latest snapshot in the meta tree; its value is the snapshot's log index (8 bytes
/// big-endian) followed by the encoded snapshot, sealed as one record.
const SNAPSHOT_KEY: &[u8] = b"snapshot";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O error: {0}")]
    Io(#[from] sled::Error),
    #[error("store is corrupt: {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

impl Error {
    fn corrupt(what: impl Into<String>, detail: impl ToString) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// A node's store. Cheap to clone (sled handles are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Commands by log index (8-byte big-endian keys, so sled's order is index order).
    log: sled::Tree,
    /// Singleton records: the snapshot.
    meta: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from our explicit `flush` before acknowledging; sled's own
            // periodic flush would only add background IO.
            .flush_every_ms(None)
            .open()?;
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        Ok(Self { db, log, meta })
    }

    /// Appends commands at consecutive indices. Not durable until [`Store::flush`].
    pub fn append(&self, entries: &[(u64, &Command)]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for (index, command) in entries {
            batch.insert(&index.to_be_bytes(), record::seal(&command.encode_to_vec()));
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Makes everything written so far durable (fsync). Callers acknowledge writes only after it.
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }

    /// Index of the newest log entry, or of the snapshot if the log is empty, or 0.
    pub fn last_index(&self) -> Result<u64, Error> {
        if let Some((key, _)) = self.log.last()? {
            return decode_index(&key);
        }
        Ok(self.load_snapshot()?.map_or(0, |(index, _)| index))
    }

    /// Log entries with index > `after`, in order, each verified.
    pub fn entries_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, Command), Error>> + '_ {
        let start = after.saturating_add(1).to_be_bytes();
        self.log.range(start..).map(|item| {
            let (key, value) = item?;
            let index = decode_index(&key)?;
            let payload = record::open(&value)
                .map_err(|e| Error::corrupt(format!("log entry {index}"), e))?;
            let command = Command::decode(payload)
                .map_err(|e| Error::corrupt(format!("log entry {index}"), e))?;
            Ok((index, command))
        })
    }

    /// Saves a snapshot of the state at `index`, makes it durable, then drops the log entries
    /// it covers. A crash between the two leaves extra entries, which recovery skips.
    pub fn save_snapshot(&self, index: u64, snapshot: &Snapshot) -> Result<(), Error> {
        let mut value = index.to_be_bytes().to_vec();
        snapshot.encode(&mut value).expect("Vec grows on demand");
        self.meta.insert(SNAPSHOT_KEY, record::seal(&value))?;
        self.flush()?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index.to_be_bytes()).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// The latest snapshot and the log index it covers, verified.
    pub fn load_snapshot(&self) -> Result<Option<(u64, Snapshot)>, Error> {
        let Some(value) = self.meta.get(SNAPSHOT_KEY)? else {
            return Ok(None);
        };
        let payload = record::open(&value).map_err(|e| Error::corrupt("snapshot", e))?;
        if payload.len() < 8 {
            return Err(Error::corrupt("snapshot", "shorter than its index"));
        }
        let index = decode_index(&payload[..8])?;
        let snapshot =
            Snapshot::decode(&payload[8..]).map_err(|e| Error::corrupt("snapshot", e))?;
        Ok(Some((index, snapshot)))
    }

    /// Rebuilds the state machine: the snapshot, then every later log entry, checking that the
    /// log is contiguous. Returns the state and the index of the last command applied.
    pub fn recover(&self) -> Result<(StateMachine, u64), Error> {
        let (mut applied, mut state) = match self.load_snapshot()? {
            Some((index, snapshot)) => (
                index,
                StateMachine::restore(snapshot).map_err(|e| Error::corrupt("snapshot", e))?,
            ),
            None => (0, StateMachine::new()),
        };
        for entry in self.entries_after(applied) {
            let (index, command) = entry?;
            if index != applied + 1 {
                return Err(Error::corrupt(
                    "log",
                    format!("gap: entry {index} follows {applied}"),
                ));
            }
            state.apply(&command);
            applied = index;
        }
        Ok((state, applied))
    }

    /// Number of log entries held (not yet compacted into a snapshot).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Bytes the store occupies on disk, for metrics.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(self.db.size_on_disk()?)
    }
}

fn decode_index(key: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::corrupt("log key", format!("{} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests;
