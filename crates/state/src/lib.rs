//! The replicated state machine: users, login tokens, hosts, grants, sessions and the audit log.
//!
//! Architecture invariant: this crate is pure. It never reads a clock, a socket, a file or a
//! random number generator; time arrives in each [`Command`] as `now_ms`, secrets arrive already
//! hashed. Applying the same commands in the same order to the same snapshot therefore yields the
//! same state on every node, which is what lets consensus (issue 2) replicate it.

#![forbid(unsafe_code)]

mod admin_tokens;
mod apply;
pub mod backup;
mod failures;
mod maintenance;
mod members;
mod names;
mod queries;
mod snapshot;
mod withdraw;

pub use admin_tokens::ADMIN_TOKENS_MAX;
pub use failures::{AUTH_FAILURE_COUNTS_MAX, INVALID_NAME};
pub use ferry_proto::state::{
    command::Kind, AdminRole, AdminToken, AuditRecord, BackupHeader, BackupTrailer,
    ChangeMembership, Command, EnrollmentState, Grant, Host, MaintenanceLease, Member, MemberRole,
    MembershipAction, Session, SessionState, Snapshot, Token, User,
};
pub use names::{validate_name, NameKind};
pub use queries::{Counts, GrantView, TokenCheck};
pub use snapshot::RestoreError;

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many audit records the state keeps. Older records are dropped first; operators who need
/// more ship the audit stream to their own store (the admin API pages through it by `seq`).
pub const AUDIT_RETAINED_MAX: usize = 100_000;

/// Longest audit target kept, in characters (targets are names almost always; a refused
/// command may name anything).
pub const AUDIT_TARGET_CHARS_MAX: usize = 256;

/// How many unexpired login tokens one user may hold; logging in again beyond it revokes the
/// token that expires first, so a script that logs in in a loop cannot grow the state.
pub const TOKENS_PER_USER_MAX: usize = 64;

/// Services one host may expose; bounds the host record and the agent's Attach.
pub const SERVICES_PER_HOST_MAX: usize = 64;

/// Hash of a bearer secret (login token, enrollment token, host credential, resume secret).
///
/// Secrets are 256-bit random values, so a fast hash is enough: there is nothing to brute-force.
/// Passwords are different and use argon2id at the edge.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command took effect.
    Applied,
    /// A session was opened with this id.
    SessionOpened { session_id: u64 },
    /// The command was valid input but the state refused it; nothing changed except the audit log.
    Refused(Refusal),
}

/// Why the state machine refused a command, in words for the person who asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// Broad class of a refusal, mapped to wire error codes and HTTP statuses at the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Invalid,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    AlreadyUsed,
    Expired,
}

impl From<RefusalKind> for ferry_proto::peer::RefusalKind {
    fn from(kind: RefusalKind) -> Self {
        use ferry_proto::peer::RefusalKind as Wire;
        match kind {
            RefusalKind::Invalid => Wire::Invalid,
            RefusalKind::NotFound => Wire::NotFound,
            RefusalKind::AlreadyExists => Wire::AlreadyExists,
            RefusalKind::PermissionDenied => Wire::PermissionDenied,
            RefusalKind::AlreadyUsed => Wire::AlreadyUsed,
            RefusalKind::Expired => Wire::Expired,
        }
    }
}

/// A kind this build does not know reads as `Invalid` (prost maps unknown numbers there).
impl From<ferry_proto::peer::RefusalKind> for RefusalKind {
    fn from(kind: ferry_proto::peer::RefusalKind) -> Self {
        use ferry_proto::peer::RefusalKind as Wire;
        match kind {
            Wire::Invalid => RefusalKind::Invalid,
            Wire::NotFound => RefusalKind::NotFound,
            Wire::AlreadyExists => RefusalKind::AlreadyExists,
            Wire::PermissionDenied => RefusalKind::PermissionDenied,
            Wire::AlreadyUsed => RefusalKind::AlreadyUsed,
            Wire::Expired => RefusalKind::Expired,
        }
    }
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The state itself. Fields are ordered maps so iteration (and so snapshots) is deterministic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateMachine {
    /// Users by name.
    users: BTreeMap<String, User>,
    /// Login tokens by SHA-256 of the token.
    tokens: BTreeMap<Vec<u8>, Token>,
    /// Hosts by name, enrolled or pending.
    hosts: BTreeMap<String, Host>,
    /// (user group, host group) -> services: members of the first may open sessions to those
    /// services of the second (every service when the list is empty). Lists are sorted.
    grants: BTreeMap<(String, String), Vec<String>>,
    /// Open sessions by id; closed sessions leave only an audit record.
    sessions: BTreeMap<u64, Session>,
    /// The most recent audit records, oldest first, at most [`AUDIT_RETAINED_MAX`].
    audit: VecDeque<AuditRecord>,
    /// Id of the next session; ids are never reused.
    next_session_id: u64,
    /// Sequence number of the next audit record; never reused, so readers can page by it.
    next_audit_seq: u64,
    /// Nodes added at runtime, by raft id (see `members.rs`).
    members: BTreeMap<u64, Member>,
    /// Raft ids of removed members, never to be reused.
    retired_raft_ids: BTreeSet<u64>,
    /// Node ids of removed members (no member carries them any more): their certificates are
    /// refused everywhere, and no node may join under them again (see `members.rs`).
    retired_node_ids: BTreeSet<String>,
    /// Raft ids that have taken part (see `members.rs`): never to be taken again by an empty
    /// store.
    seen_raft_ids: BTreeSet<u64>,
    /// Nodes under maintenance, by node id (see `maintenance.rs`).
    leases: BTreeMap<String, MaintenanceLease>,
    /// Named admin API tokens, by name (see `admin_tokens.rs`).
    admin_tokens: BTreeMap<String, AdminToken>,
}

impl StateMachine {
    pub fn new() -> Self {
        Self {
            next_session_id: 1,
            next_audit_seq: 1,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
