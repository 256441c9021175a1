//! Read-only questions the broker asks of the state: who is this token, may this user reach
//! that host, what is open. Authorization decisions live here, next to the data they read.

use crate::apply::{unknown_host, unknown_user};
use crate::{
    AuditRecord, EnrollmentState, Host, Refusal, RefusalKind, Session, StateMachine, Token, User,
};

/// Result of looking a login token up.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenCheck<'a> {
    Valid(&'a User),
    Expired,
    Unknown,
}

/// Sizes of the tables, for status output and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: usize,
    pub hosts: usize,
    pub hosts_enrolled: usize,
    pub grants: usize,
    pub tokens: usize,
    pub sessions_open: usize,
    pub audit_records: usize,
}

impl StateMachine {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn grants(&self) -> impl Iterator<Item = (&str, &str)> {
        self.grants.iter().map(|(u, h)| (u.as_str(), h.as_str()))
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn session(&self, id: u64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Whether `secret_hash` resumes session `id`: the same check `ResumeSession` applies, for
    /// a broker to answer at once from its local state (the hash never changes once recorded).
    pub fn may_resume(&self, id: u64, secret_hash: &[u8]) -> Result<&Session, Refusal> {
        let session = self
            .sessions
            .get(&id)
            .ok_or_else(|| crate::apply::session_gone(id))?;
        if session.resume_secret_hash != secret_hash {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("wrong resume secret for session {id}"),
            ));
        }
        Ok(session)
    }

    /// Sessions whose path broke more than `window_ms` before `now_ms`: lost for good.
    pub fn sessions_expired(&self, now_ms: u64, window_ms: u64) -> impl Iterator<Item = &Session> {
        self.sessions.values().filter(move |s| {
            s.detached_at_ms != 0 && now_ms.saturating_sub(s.detached_at_ms) >= window_ms
        })
    }

    /// Audit records with `seq > after`, oldest first, at most `limit`.
    pub fn audit_after(&self, after: u64, limit: usize) -> impl Iterator<Item = &AuditRecord> {
        // Records are in `seq` order, so skip by binary search rather than a scan.
        let start = self.audit.partition_point(|r| r.seq <= after);
        self.audit.range(start..).take(limit)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            users: self.users.len(),
            hosts: self.hosts.len(),
            hosts_enrolled: self
                .hosts
                .values()
                .filter(|h| h.enrollment() == EnrollmentState::Enrolled)
                .count(),
            grants: self.grants.len(),
            tokens: self.tokens.len(),
            sessions_open: self.sessions.len(),
            audit_records: self.audit.len(),
        }
    }

    /// A login token's record (by the token's hash), expired or not.
    pub fn token(&self, token_hash: &[u8]) -> Option<&Token> {
        self.tokens.get(token_hash)
    }

    /// Looks up the user a login token (given by its hash) belongs to.
    pub fn check_token(&self, token_hash: &[u8], now_ms: u64) -> TokenCheck<'_> {
        match self.tokens.get(token_hash) {
            None => TokenCheck::Unknown,
            Some(t) if t.expires_at_ms <= now_ms => TokenCheck::Expired,
            Some(t) => match self.users.get(&t.user) {
                Some(user) => TokenCheck::Valid(user),
                // A token outliving its user is a bug in apply; refuse rather than panic.
                None => TokenCheck::Unknown,
            },
        }
    }

    /// Checks a host agent's long-term credential (given by its hash).
    pub fn check_host_credential(
        &self,
        name: &str,
        credential_hash: &[u8],
    ) -> Result<&Host, Refusal> {
        let host = self.hosts.get(name).ok_or_else(|| unknown_host(name))?;
        if host.enrollment() != EnrollmentState::Enrolled {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!(
                    "host {name:?} has not completed enrollment; run `ferry host --enroll TOKEN`"
                ),
            ));
        }
        if host.credential_hash != credential_hash {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("wrong credential for host {name:?}; re-enroll it"),
            ));
        }
        Ok(host)
    }

    /// Is one of `user`'s groups granted one of `host`'s groups?
    fn granted(&self, user: &User, host: &Host) -> bool {
        user.groups.iter().any(|ug| {
            host.groups
                .iter()
                .any(|hg| self.grants.contains(&(ug.clone(), hg.clone())))
        })
    }

    /// The enrolled hosts `user` may open sessions to, by name, those after `after` (a page's
    /// cursor; empty for the first). Nothing for a disabled user.
    pub fn reachable_hosts<'a>(
        &'a self,
        user: &'a User,
        after: &str,
    ) -> impl Iterator<Item = &'a Host> + 'a {
        use std::ops::Bound;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_owned())
        };
        self.hosts
            .range((start, Bound::Unbounded))
            .map(|(_, h)| h)
            .filter(move |h| {
                !user.disabled
                    && h.enrollment() == EnrollmentState::Enrolled
                    && self.granted(user, h)
            })
    }

    /// May `user` open a session to `host`? Yes when one of the user's groups is granted one of
    /// the host's groups.
    pub fn may_open(&self, user: &str, host: &str) -> Result<(), Refusal> {
        let u = self.users.get(user).ok_or_else(|| unknown_user(user))?;
        if u.disabled {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("user {user:?} is disabled"),
            ));
        }
        let h = self.hosts.get(host).ok_or_else(|| unknown_host(host))?;
        if h.enrollment() != EnrollmentState::Enrolled {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("host {host:?} has not completed enrollment"),
            ));
        }
        if !self.granted(u, h) {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!(
                    "user {user:?} (groups {}) is not granted access to host {host:?} (groups {}); \
                     an administrator can run `ferry admin grant USERGROUP HOSTGROUP`",
                    u.groups.join(","),
                    h.groups.join(",")
                ),
            ));
        }
        Ok(())
    }
}
