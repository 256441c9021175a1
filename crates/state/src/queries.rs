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

/// One grant, as `StateMachine::grants` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantView<'a> {
    pub user_group: &'a str,
    pub host_group: &'a str,
    /// The services it allows, sorted; empty allows every service.
    pub services: &'a [String],
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

    pub fn grants(&self) -> impl Iterator<Item = GrantView<'_>> {
        self.grants.iter().map(|((u, h), services)| GrantView {
            user_group: u,
            host_group: h,
            services,
        })
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

    /// The service lists of the grants of one of `user`'s groups to one of `host`'s groups.
    fn grants_between<'a>(
        &'a self,
        user: &'a User,
        host: &'a Host,
    ) -> impl Iterator<Item = &'a [String]> + 'a {
        user.groups.iter().flat_map(move |ug| {
            host.groups.iter().filter_map(move |hg| {
                self.grants
                    .get(&(ug.clone(), hg.clone()))
                    .map(Vec::as_slice)
            })
        })
    }

    /// Is one of `user`'s groups granted one of `host`'s groups (for some service)?
    fn granted(&self, user: &User, host: &Host) -> bool {
        self.grants_between(user, host).next().is_some()
    }

    /// Does a grant of one of `user`'s groups to one of `host`'s groups allow `service`?
    fn granted_service(&self, user: &User, host: &Host, service: &str) -> bool {
        self.grants_between(user, host)
            .any(|services| services.is_empty() || services.iter().any(|s| s == service))
    }

    /// The services of `host` (as its agent exposed them) that `user` may open.
    pub fn reachable_services(&self, user: &User, host: &Host) -> Vec<String> {
        host.services
            .iter()
            .filter(|s| self.granted_service(user, host, s))
            .cloned()
            .collect()
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

    /// May `user` open a session to `service` on `host`? Yes when the user is enabled, the host
    /// enrolled, and one of the user's groups is granted one of the host's groups for that
    /// service.
    pub fn may_open(&self, user: &str, host: &str, service: &str) -> Result<(), Refusal> {
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
        if !self.granted_service(u, h, service) {
            let allowed: Vec<&str> = self
                .grants_between(u, h)
                .flatten()
                .map(String::as_str)
                .collect();
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!(
                    "user {user:?} may reach host {host:?} only for service(s) {}, not {service:?}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(())
    }
}
