//! The store's high-water mark: what the store last made durable, kept outside sled.
//!
//! sled verifies its own log on recovery by stopping at the first damaged message, so a
//! truncated or damaged data file can come back as a *consistent but older* store: entries this
//! node acknowledged, or the vote it cast in the current term, silently gone. Raft is unsafe on
//! such a store (a node that forgot its vote can vote twice in one term; one that forgot
//! acknowledged entries can help elect a leader without them). After every sync the log writes
//! this mark, and at open it refuses a store that is behind it.
//!
//! Layout: two fixed slots of [`SLOT_BYTES`], written alternately, each
//! `[magic 8][sequence, raft id, term, vote, commit, last index, last term, snapshot index: u64 BE]
//! [crc32 of the preceding bytes: u32 BE]`. A torn write damages one slot only; the valid slot
//! with the highest sequence is the mark.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// The file, inside the store's directory.
pub const MARK_FILE: &str = "ferry-mark";
const MAGIC: &[u8; 8] = b"FRYMARK1";
/// Bytes of one slot: 8 magic + 8 fields of 8 + 4 checksum, padded.
pub const SLOT_BYTES: usize = 128;
const FIELDS: usize = 8;
const BODY_BYTES: usize = 8 + FIELDS * 8;

/// What the store held when it last synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Increases with every write; picks the newer of the two slots.
    pub sequence: u64,
    pub raft_id: u64,
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub snapshot_index: u64,
}

/// Why a slot could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("slot of {0} bytes is shorter than {SLOT_BYTES}")]
    Short(usize),
    #[error("slot has no mark (bad magic)")]
    Magic,
    #[error("slot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
}

impl Mark {
    fn fields(&self) -> [u64; FIELDS] {
        [
            self.sequence,
            self.raft_id,
            self.term,
            self.vote,
            self.commit,
            self.last_index,
            self.last_term,
            self.snapshot_index,
        ]
    }

    /// One slot's bytes.
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut slot = [0u8; SLOT_BYTES];
        slot[..8].copy_from_slice(MAGIC);
        for (i, field) in self.fields().iter().enumerate() {
            slot[8 + i * 8..16 + i * 8].copy_from_slice(&field.to_be_bytes());
        }
        let crc = crc32fast::hash(&slot[..BODY_BYTES]);
        slot[BODY_BYTES..BODY_BYTES + 4].copy_from_slice(&crc.to_be_bytes());
        slot
    }

    /// Reads one slot, verifying its magic and checksum.
    pub fn decode(slot: &[u8]) -> Result<Self, SlotError> {
        if slot.len() < SLOT_BYTES {
            return Err(SlotError::Short(slot.len()));
        }
        if &slot[..8] != MAGIC {
            return Err(SlotError::Magic);
        }
        let stored = u32::from_be_bytes(
            slot[BODY_BYTES..BODY_BYTES + 4]
                .try_into()
                .expect("a slice of 4 bytes"),
        );
        let computed = crc32fast::hash(&slot[..BODY_BYTES]);
        if stored != computed {
            return Err(SlotError::Checksum { stored, computed });
        }
        let field = |i: usize| {
            u64::from_be_bytes(
                slot[8 + i * 8..16 + i * 8]
                    .try_into()
                    .expect("a slice of 8 bytes"),
            )
        };
        Ok(Self {
            sequence: field(0),
            raft_id: field(1),
            term: field(2),
            vote: field(3),
            commit: field(4),
            last_index: field(5),
            last_term: field(6),
            snapshot_index: field(7),
        })
    }

    /// The newest valid mark of a whole file's bytes (both slots), or why there is none.
    pub fn decode_file(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 2 * SLOT_BYTES {
            return Err(format!(
                "the mark file has {} bytes, expected {}",
                bytes.len(),
                2 * SLOT_BYTES
            ));
        }
        let (a, b) = bytes.split_at(SLOT_BYTES);
        match (Self::decode(a), Self::decode(b)) {
            (Ok(a), Ok(b)) => Ok(if a.sequence >= b.sequence { a } else { b }),
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => Ok(m),
            (Err(a), Err(b)) => Err(format!("both slots are damaged ({a}; {b})")),
        }
    }

    /// Why a store holding `now` cannot be the store that wrote this mark, if it cannot: each
    /// of these only grows while a node lives, so a store behind its mark lost durable data.
    pub fn regression(&self, now: &Mark) -> Option<String> {
        if now.raft_id != self.raft_id {
            return Some(format!(
                "the store says raft id {}, its mark says {}",
                now.raft_id, self.raft_id
            ));
        }
        if now.term < self.term {
            return Some(format!("term went back from {} to {}", self.term, now.term));
        }
        if now.term == self.term && self.vote != 0 && now.vote != self.vote {
            return Some(format!(
                "the vote of term {} changed from {} to {}",
                self.term, self.vote, now.vote
            ));
        }
        if now.commit < self.commit {
            return Some(format!(
                "commit index went back from {} to {}",
                self.commit, now.commit
            ));
        }
        if now.snapshot_index < self.snapshot_index {
            return Some(format!(
                "snapshot index went back from {} to {}",
                self.snapshot_index, now.snapshot_index
            ));
        }
        // A conflicting suffix can shorten the log, but only in favour of a newer term.
        if (now.last_term, now.last_index) < (self.last_term, self.last_index) {
            return Some(format!(
                "entries up to {} (term {}) were durable; the log now ends at {} (term {})",
                self.last_index, self.last_term, now.last_index, now.last_term
            ));
        }
        None
    }
}

/// Why the mark could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The file could not be read (permissions, I/O): says nothing about the store.
    Io(String),
    /// The file holds no valid mark.
    Damaged(String),
}

/// The mark file, open for writing.
pub struct MarkFile {
    file: File,
    /// The last mark written (its sequence included).
    last: Mark,
}

impl MarkFile {
    /// Reads the mark in `dir`: `Ok(None)` when there is no file yet.
    pub fn read(dir: &Path) -> Result<Option<Mark>, ReadError> {
        let path = dir.join(MARK_FILE);
        let mut bytes = Vec::with_capacity(2 * SLOT_BYTES);
        match File::open(&path) {
            Ok(file) => {
                // Bounded: a larger file is damage, reported by `decode_file`.
                file.take(4 * SLOT_BYTES as u64)
                    .read_to_end(&mut bytes)
                    .map_err(|e| ReadError::Io(format!("cannot read {}: {e}", path.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ReadError::Io(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            }
        }
        // Created (or being sized) but never written: no mark yet.
        if bytes.len() <= 2 * SLOT_BYTES && bytes.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        Mark::decode_file(&bytes)
            .map(Some)
            .map_err(ReadError::Damaged)
    }

    /// Opens (creating) the mark file in `dir` for writing after `last` (the mark read at
    /// open, if any).
    pub fn open(dir: &Path, last: Option<&Mark>) -> std::io::Result<Self> {
        let path = dir.join(MARK_FILE);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() != 2 * SLOT_BYTES as u64 {
            file.set_len(2 * SLOT_BYTES as u64)?;
            file.sync_all()?;
        }
        if !existed {
            // The new file's directory entry must survive a crash as the marks in it do.
            File::open(dir)?.sync_all()?;
        }
        Ok(Self {
            file,
            last: last.copied().unwrap_or_default(),
        })
    }

    /// Before the log is shortened (a conflicting suffix replaced, a snapshot installed), the
    /// mark must stop claiming the entries about to go, or a crash before the next sync would
    /// make the store look as if it lost them. Writes a mark with the new end of the log and
    /// the durable rest of the last mark, if the new end is below the marked one.
    pub fn lower_last(&mut self, last_term: u64, last_index: u64) -> std::io::Result<()> {
        if (last_term, last_index) >= (self.last.last_term, self.last.last_index) {
            return Ok(());
        }
        let lowered = Mark {
            last_term,
            last_index,
            ..self.last
        };
        self.write(&lowered)
    }

    /// Writes `mark` (its sequence is assigned here) to the older slot, without waiting for
    /// the disk. Called after the store's own fsync, so the mark never gets to disk ahead of
    /// what it describes; after a power cut it may be older than the store, which only makes
    /// the check at open less strict, never wrong. (A process crash loses nothing: the page
    /// cache survives it.) An fsync here cost 20% of single-writer throughput (BENCHMARKS.md).
    pub fn record(&mut self, mark: &Mark) -> std::io::Result<()> {
        self.put(mark)
    }

    /// Writes `mark` and makes it durable before returning: for a mark that must be on disk
    /// before the store changes (the end of the log about to move back).
    pub fn write(&mut self, mark: &Mark) -> std::io::Result<()> {
        self.put(mark)?;
        self.file.sync_data()
    }

    fn put(&mut self, mark: &Mark) -> std::io::Result<()> {
        let mark = Mark {
            sequence: self.last.sequence + 1,
            ..*mark
        };
        let slot = mark.sequence % 2;
        self.file.seek(SeekFrom::Start(slot * SLOT_BYTES as u64))?;
        self.file.write_all(&mark.encode())?;
        self.last = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> Mark {
        Mark {
            sequence: 7,
            raft_id: 2,
            term: 5,
            vote: 1,
            commit: 40,
            last_index: 42,
            last_term: 5,
            snapshot_index: 30,
        }
    }

    #[test]
    fn slots_round_trip_and_damage_is_found() {
        let m = mark();
        assert_eq!(Mark::decode(&m.encode()), Ok(m));
        let mut slot = m.encode();
        slot[20] ^= 1;
        assert!(matches!(
            Mark::decode(&slot),
            Err(SlotError::Checksum { .. })
        ));
        assert_eq!(Mark::decode(&slot[..10]), Err(SlotError::Short(10)));
        assert_eq!(Mark::decode(&[0u8; SLOT_BYTES]), Err(SlotError::Magic));
    }

    #[test]
    fn the_newer_valid_slot_wins() {
        let older = mark();
        let newer = Mark {
            sequence: 8,
            commit: 41,
            ..mark()
        };
        let mut file = [older.encode(), newer.encode()].concat();
        assert_eq!(Mark::decode_file(&file), Ok(newer));
        file[SLOT_BYTES + 30] ^= 0xff; // a torn write of the newer slot
        assert_eq!(Mark::decode_file(&file), Ok(older));
        file[30] ^= 0xff;
        assert!(Mark::decode_file(&file).is_err());
        assert!(Mark::decode_file(&file[..5]).is_err());
    }

    #[test]
    fn regressions_are_named() {
        let m = mark();
        let check = |now: Mark, expect: Option<&str>| {
            let found = m.regression(&now);
            match expect {
                None => assert_eq!(found, None, "{now:?}"),
                Some(part) => assert!(
                    found.as_deref().is_some_and(|f| f.contains(part)),
                    "{now:?}: {found:?}"
                ),
            }
        };
        check(m, None);
        check(
            Mark {
                commit: 45,
                last_index: 50,
                ..m
            },
            None,
        );
        // A newer term may shorten the log (a conflicting suffix was replaced).
        check(
            Mark {
                term: 6,
                vote: 0,
                last_index: 41,
                last_term: 6,
                ..m
            },
            None,
        );
        check(Mark { raft_id: 3, ..m }, Some("raft id"));
        check(Mark { term: 4, ..m }, Some("term went back"));
        check(Mark { vote: 3, ..m }, Some("vote of term 5"));
        check(Mark { commit: 39, ..m }, Some("commit index"));
        check(
            Mark {
                snapshot_index: 29,
                ..m
            },
            Some("snapshot index"),
        );
        check(
            Mark {
                last_index: 41,
                ..m
            },
            Some("entries up to 42"),
        );
    }

    #[test]
    fn the_file_alternates_slots_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MarkFile::read(dir.path()), Ok(None));
        std::fs::write(dir.path().join(MARK_FILE), b"").unwrap();
        assert_eq!(
            MarkFile::read(dir.path()),
            Ok(None),
            "created, not sized yet"
        );
        let mut file = MarkFile::open(dir.path(), None).unwrap();
        for commit in 1..=3 {
            file.write(&Mark { commit, ..mark() }).unwrap();
        }
        let read = MarkFile::read(dir.path()).unwrap().unwrap();
        assert_eq!((read.sequence, read.commit), (3, 3));
        let mut file = MarkFile::open(dir.path(), Some(&read)).unwrap();
        file.write(&Mark {
            commit: 4,
            ..mark()
        })
        .unwrap();
        let read = MarkFile::read(dir.path()).unwrap().unwrap();
        assert_eq!((read.sequence, read.commit), (4, 4));
        // Lowering the end of the log keeps the rest of the mark.
        file.lower_last(5, 40).unwrap();
        let read = MarkFile::read(dir.path()).unwrap().unwrap();
        assert_eq!((read.last_index, read.commit, read.sequence), (40, 4, 5));
        file.lower_last(5, 41).unwrap();
        assert_eq!(
            MarkFile::read(dir.path()).unwrap().unwrap().sequence,
            5,
            "not lower: no write"
        );
    }
}
