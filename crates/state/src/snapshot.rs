//! Snapshot and restore: the whole state as one protobuf message.
//!
//! Used by the store for compaction today and by consensus for snapshot transfer (issue 2).
//! Restore validates what it reads: a snapshot is input from disk or a peer, not trusted.

use crate::{Snapshot, StateMachine, AUDIT_RETAINED_MAX};

/// Version of the snapshot layout; restore refuses versions it does not know.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("snapshot format version {found} is not supported (this build reads {SNAPSHOT_FORMAT_VERSION})")]
    Version { found: u32 },
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

impl StateMachine {
    /// SHA-256 of the encoded snapshot: equal on two nodes exactly when their states are
    /// (every table is ordered, so the encoding is deterministic).
    pub fn digest(&self) -> [u8; 32] {
        use prost::Message as _;
        use sha2::Digest as _;
        sha2::Sha256::digest(self.snapshot().encode_to_vec()).into()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            users: self.users.values().cloned().collect(),
            tokens: self.tokens.values().cloned().collect(),
            hosts: self.hosts.values().cloned().collect(),
            grants: self
                .grants
                .iter()
                .map(|((u, h), services)| crate::Grant {
                    user_group: u.clone(),
                    host_group: h.clone(),
                    services: services.clone(),
                })
                .collect(),
            sessions: self.sessions.values().cloned().collect(),
            audit: self.audit.iter().cloned().collect(),
            next_session_id: self.next_session_id,
            next_audit_seq: self.next_audit_seq,
            members: self.members.values().cloned().collect(),
            retired_raft_ids: self.retired_raft_ids.iter().copied().collect(),
            leases: self.leases.values().cloned().collect(),
            seen_raft_ids: self.seen_raft_ids.iter().copied().collect(),
            admin_tokens: self.admin_tokens.values().cloned().collect(),
            retired_node_ids: self.retired_node_ids.iter().cloned().collect(),
        }
    }

    pub fn restore(snapshot: Snapshot) -> Result<Self, RestoreError> {
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(RestoreError::Version {
                found: snapshot.format_version,
            });
        }
        let inconsistent = |why: String| Err(RestoreError::Inconsistent(why));
        let mut state = StateMachine::new();
        state.next_session_id = snapshot.next_session_id.max(1);
        state.next_audit_seq = snapshot.next_audit_seq.max(1);
        for user in snapshot.users {
            if state.users.insert(user.name.clone(), user).is_some() {
                return inconsistent("duplicate user".into());
            }
        }
        for token in snapshot.tokens {
            if !state.users.contains_key(&token.user) {
                return inconsistent(format!("token of unknown user {:?}", token.user));
            }
            state.tokens.insert(token.token_hash.clone(), token);
        }
        for host in snapshot.hosts {
            state.hosts.insert(host.name.clone(), host);
        }
        for grant in snapshot.grants {
            state
                .grants
                .insert((grant.user_group, grant.host_group), grant.services);
        }
        for session in snapshot.sessions {
            if session.id >= state.next_session_id {
                return inconsistent(format!(
                    "session {} is not below next_session_id {}",
                    session.id, state.next_session_id
                ));
            }
            state.sessions.insert(session.id, session);
        }
        if snapshot.audit.len() > AUDIT_RETAINED_MAX {
            return inconsistent(format!("{} audit records", snapshot.audit.len()));
        }
        let in_order = snapshot.audit.windows(2).all(|w| w[0].seq < w[1].seq);
        let below_next = snapshot
            .audit
            .last()
            .is_none_or(|r| r.seq < state.next_audit_seq);
        if !in_order || !below_next {
            return inconsistent("audit records out of sequence".into());
        }
        state.audit = snapshot.audit.into();
        state.retired_raft_ids = snapshot.retired_raft_ids.into_iter().collect();
        state.seen_raft_ids = snapshot.seen_raft_ids.into_iter().collect();
        state.retired_node_ids = snapshot.retired_node_ids.into_iter().collect();
        for member in snapshot.members {
            if state.retired_raft_ids.contains(&member.raft_id) {
                return inconsistent(format!("member {} is also retired", member.raft_id));
            }
            if state.members.insert(member.raft_id, member).is_some() {
                return inconsistent("duplicate member".into());
            }
        }
        for token in snapshot.admin_tokens {
            if state
                .admin_tokens
                .insert(token.name.clone(), token)
                .is_some()
            {
                return inconsistent("duplicate admin token".into());
            }
        }
        for lease in snapshot.leases {
            if state.leases.insert(lease.node.clone(), lease).is_some() {
                return inconsistent("duplicate maintenance lease".into());
            }
        }
        Ok(state)
    }
}
