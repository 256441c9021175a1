//! The backup file: the replicated state at one applied index, written by `ferry admin
//! snapshot save` and read by `ferry debug restore`.
//!
//! Layout: the magic bytes `FERRYBAK`, then frames, each one kind byte, a little-endian u32
//! length and the payload: a [`BackupHeader`], body frames holding the state's [`Snapshot`]
//! encoding in pieces of at most [`BODY_FRAME_BYTES_MAX`], and a [`BackupTrailer`] carrying
//! the SHA-256 of every byte before it. The body is produced one table row at a time (the
//! concatenation of a message's fields is that message's encoding), so the file is never
//! built whole in memory; a damaged or truncated file is refused with what is wrong.
//!
//! Pure: bytes in, bytes out; the broker streams the pieces, the CLI writes and reads files.

use crate::{BackupHeader, BackupTrailer, Snapshot};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"FERRYBAK";
/// Version of the file layout; [`read`] refuses others.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// Largest body frame written; a frame that says it is larger (plus room for the header and
/// trailer) is refused without reading it.
pub const BODY_FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Largest state a restore accepts (it decodes the state in memory): far above what the
/// bounded tables of a cluster hold.
pub const BODY_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
const FRAME_HEADER: u8 = 1;
const FRAME_BODY: u8 = 2;
const FRAME_TRAILER: u8 = 3;

/// Why a backup file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Ferry backup file (it does not start with FERRYBAK)")]
    NotABackup,
    #[error("the file is truncated: it ends {0}; it was not saved completely or was cut short")]
    Truncated(&'static str),
    #[error("the file is damaged: {0}")]
    Damaged(String),
    #[error(
        "backup format version {0} is not supported (this build reads {BACKUP_FORMAT_VERSION})"
    )]
    Version(u32),
}

/// Writes a backup's bytes piece by piece, keeping the running checksum.
pub struct Writer {
    hash: Sha256,
    body_bytes: u64,
}

impl Writer {
    /// The writer, and the file's first bytes (the magic and the header frame).
    pub fn start(header: &BackupHeader) -> (Self, Vec<u8>) {
        let mut writer = Writer {
            hash: Sha256::new(),
            body_bytes: 0,
        };
        let mut first = MAGIC.to_vec();
        first.extend(frame(FRAME_HEADER, &header.encode_to_vec()));
        writer.hash.update(&first);
        (writer, first)
    }

    /// A body frame holding `piece` (at most [`BODY_FRAME_BYTES_MAX`] bytes).
    pub fn body(&mut self, piece: &[u8]) -> Vec<u8> {
        assert!(
            piece.len() <= BODY_FRAME_BYTES_MAX,
            "body pieces are cut to BODY_FRAME_BYTES_MAX by snapshot_pieces"
        );
        let bytes = frame(FRAME_BODY, piece);
        self.hash.update(&bytes);
        self.body_bytes += piece.len() as u64;
        bytes
    }

    /// The trailer frame: the file's last bytes.
    pub fn finish(self) -> Vec<u8> {
        let trailer = BackupTrailer {
            sha256: self.hash.finalize().to_vec(),
            body_bytes: self.body_bytes,
        };
        frame(FRAME_TRAILER, &trailer.encode_to_vec())
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frames are at most a few MiB");
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The encoding of `snapshot`, in pieces of at most [`BODY_FRAME_BYTES_MAX`] bytes, made one
/// row at a time: each row is encoded as a snapshot holding that row alone, and the
/// concatenation of such encodings decodes as the whole snapshot (protobuf appends repeated
/// fields and keeps the last scalar).
pub fn snapshot_pieces(snapshot: Snapshot) -> impl Iterator<Item = Vec<u8>> {
    let Snapshot {
        format_version,
        users,
        tokens,
        hosts,
        grants,
        sessions,
        audit,
        next_session_id,
        next_audit_seq,
        members,
        retired_raft_ids,
        leases,
        seen_raft_ids,
        admin_tokens,
        retired_node_ids,
    } = snapshot;
    let scalars = Snapshot {
        format_version,
        next_session_id,
        next_audit_seq,
        retired_raft_ids,
        seen_raft_ids,
        retired_node_ids,
        ..Default::default()
    };
    fn rows<T>(rows: Vec<T>, one: fn(T) -> Snapshot) -> impl Iterator<Item = Vec<u8>> {
        rows.into_iter().map(move |row| one(row).encode_to_vec())
    }
    let encoded = std::iter::once(scalars.encode_to_vec())
        .chain(rows(users, |r| Snapshot {
            users: vec![r],
            ..Default::default()
        }))
        .chain(rows(tokens, |r| Snapshot {
            tokens: vec![r],
            ..Default::default()
        }))
        .chain(rows(hosts, |r| Snapshot {
            hosts: vec![r],
            ..Default::default()
        }))
        .chain(rows(grants, |r| Snapshot {
            grants: vec![r],
            ..Default::default()
        }))
        .chain(rows(sessions, |r| Snapshot {
            sessions: vec![r],
            ..Default::default()
        }))
        .chain(rows(audit, |r| Snapshot {
            audit: vec![r],
            ..Default::default()
        }))
        .chain(rows(members, |r| Snapshot {
            members: vec![r],
            ..Default::default()
        }))
        .chain(rows(leases, |r| Snapshot {
            leases: vec![r],
            ..Default::default()
        }))
        .chain(rows(admin_tokens, |r| Snapshot {
            admin_tokens: vec![r],
            ..Default::default()
        }));
    Batches {
        rows: encoded,
        pending: Vec::new(),
    }
}

/// Gathers encoded rows into pieces of at most [`BODY_FRAME_BYTES_MAX`] (a larger row is cut).
struct Batches<I> {
    rows: I,
    pending: Vec<u8>,
}

impl<I: Iterator<Item = Vec<u8>>> Iterator for Batches<I> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        while self.pending.len() < BODY_FRAME_BYTES_MAX {
            match self.rows.next() {
                Some(row) => self.pending.extend(row),
                None => break,
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        let rest = self
            .pending
            .split_off(self.pending.len().min(BODY_FRAME_BYTES_MAX));
        Some(std::mem::replace(&mut self.pending, rest))
    }
}

/// Reads a backup file from `input`, checking every frame and the checksum: its header and
/// its state.
pub fn read(mut input: impl std::io::Read) -> Result<(BackupHeader, Snapshot), BackupError> {
    let mut hash = Sha256::new();
    let mut magic = [0u8; 8];
    read_exact(&mut input, &mut magic, "inside its first bytes")?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    hash.update(magic);
    let mut header = None;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 5];
        read_exact(&mut input, &mut head, "before its trailer (no checksum)")?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > BODY_FRAME_BYTES_MAX {
            return Err(BackupError::Damaged(format!(
                "a frame claims {len} bytes (at most {BODY_FRAME_BYTES_MAX})"
            )));
        }
        let mut payload = vec![0u8; len];
        read_exact(&mut input, &mut payload, "in the middle of a frame")?;
        match (head[0], &header) {
            (FRAME_HEADER, None) => {
                let h = BackupHeader::decode(payload.as_slice())
                    .map_err(|e| BackupError::Damaged(format!("its header: {e}")))?;
                if h.format_version != BACKUP_FORMAT_VERSION {
                    return Err(BackupError::Version(h.format_version));
                }
                header = Some(h);
            }
            (FRAME_BODY, Some(_)) => {
                if (body.len() + len) as u64 > BODY_BYTES_MAX {
                    return Err(BackupError::Damaged(format!(
                        "its state is larger than {BODY_BYTES_MAX} bytes"
                    )));
                }
                body.extend_from_slice(&payload);
            }
            (FRAME_TRAILER, Some(_)) => {
                let trailer = BackupTrailer::decode(payload.as_slice())
                    .map_err(|e| BackupError::Damaged(format!("its trailer: {e}")))?;
                let sum: [u8; 32] = hash.finalize().into();
                if trailer.sha256 != sum {
                    return Err(BackupError::Damaged(
                        "its SHA-256 does not match its contents (bytes changed on the way or \
                         on disk)"
                            .into(),
                    ));
                }
                if trailer.body_bytes != body.len() as u64 {
                    return Err(BackupError::Damaged(format!(
                        "its state has {} bytes, its trailer says {}",
                        body.len(),
                        trailer.body_bytes
                    )));
                }
                let mut rest = [0u8; 1];
                if input
                    .read(&mut rest)
                    .map_err(|e| BackupError::Damaged(e.to_string()))?
                    != 0
                {
                    return Err(BackupError::Damaged("bytes follow its trailer".into()));
                }
                let snapshot = Snapshot::decode(body.as_slice())
                    .map_err(|e| BackupError::Damaged(format!("its state: {e}")))?;
                return Ok((header.expect("matched Some"), snapshot));
            }
            (kind, _) => {
                return Err(BackupError::Damaged(format!(
                    "a frame of kind {kind} where none can be"
                )))
            }
        }
        hash.update(head);
        hash.update(&payload);
    }
}

/// The state of a backup as a new cluster starts from it: everything the old cluster knew of
/// its own nodes is dropped (members, retired and seen raft ids, retired node ids, leases)
/// and so are its sessions, which lived on its connections; `voters` are the new cluster's
/// raft ids. Users, tokens, hosts, grants, admin tokens and the audit log are kept.
pub fn for_new_cluster(mut snapshot: Snapshot, voters: &[u64]) -> Snapshot {
    snapshot.members.clear();
    snapshot.retired_raft_ids.clear();
    snapshot.retired_node_ids.clear();
    snapshot.leases.clear();
    snapshot.sessions.clear();
    snapshot.seen_raft_ids = voters.to_vec();
    snapshot
}

fn read_exact(
    input: &mut impl std::io::Read,
    buf: &mut [u8],
    where_: &'static str,
) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated(where_),
        _ => BackupError::Damaged(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StateMachine, User};

    fn header() -> BackupHeader {
        BackupHeader {
            format_version: BACKUP_FORMAT_VERSION,
            cluster_name: "ferry".into(),
            node_id: "b1".into(),
            applied_index: 42,
            term: 3,
            created_at_ms: 1,
            ferry_version: "test".into(),
        }
    }

    fn state(users: usize) -> Snapshot {
        let mut snapshot = StateMachine::default().snapshot();
        snapshot.next_session_id = 7;
        snapshot.retired_raft_ids = vec![4, 9];
        snapshot.users = (0..users)
            .map(|i| User {
                name: format!("user{i:06}"),
                password_hash: "x".repeat(300),
                ..Default::default()
            })
            .collect();
        snapshot
    }

    fn file(snapshot: Snapshot) -> Vec<u8> {
        let (mut writer, mut bytes) = Writer::start(&header());
        for piece in snapshot_pieces(snapshot) {
            bytes.extend(writer.body(&piece));
        }
        bytes.extend(writer.finish());
        bytes
    }

    #[test]
    fn a_file_reads_back_as_the_state_it_was_written_from() {
        // 10,000 users of ~330 bytes: several body frames.
        for users in [0, 1, 10_000] {
            let snapshot = state(users);
            let bytes = file(snapshot.clone());
            let (h, read) = read(bytes.as_slice()).expect("reads back");
            assert_eq!(h, header());
            assert_eq!(read, snapshot, "{users} users");
        }
    }

    #[test]
    fn damage_and_truncation_are_refused() {
        let bytes = file(state(5_000));
        let check = |bytes: &[u8], fragment: &str| {
            let e = read(bytes).expect_err("refused").to_string();
            assert!(e.contains(fragment), "{e}");
        };
        check(&bytes[..bytes.len() - 1], "truncated");
        check(&bytes[..bytes.len() / 2], "truncated");
        check(&bytes[..3], "truncated");
        check(b"PK\x03\x04 a zip file", "not a Ferry backup");
        // A flipped byte anywhere: in the body, in the header, in the trailer's checksum.
        for at in [20, bytes.len() / 2, bytes.len() - 3] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let e = read(damaged.as_slice()).expect_err("refused").to_string();
            assert!(
                e.contains("damaged") || e.contains("truncated"),
                "{at}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        check(&longer, "bytes follow its trailer");
    }
}
