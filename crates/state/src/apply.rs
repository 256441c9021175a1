//! `StateMachine::apply`: one command in, one outcome out, one audit record written.

use crate::failures::bounded;
use crate::names::{validate_name, NameKind};
use crate::{
    AuditRecord, Command, EnrollmentState, Host, Kind, Outcome, Refusal, RefusalKind, Session,
    SessionState, StateMachine, Token, User, AUDIT_RETAINED_MAX, AUDIT_TARGET_CHARS_MAX,
    SERVICES_PER_HOST_MAX, TOKENS_PER_USER_MAX,
};
use ferry_proto::state as pb;

type Applied = Result<Outcome, Refusal>;

impl StateMachine {
    /// Applies one command. Deterministic: depends only on the state and the command.
    ///
    /// Every command that names an action leaves an audit record, refused or not; a refusal
    /// changes nothing else.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let Some(kind) = &command.kind else {
            // A command from a newer node that this build cannot interpret. Applying it as a
            // no-op keeps every node's state identical; the newer nodes apply it for real.
            return Outcome::Refused(Refusal::new(
                RefusalKind::Invalid,
                "command of an unknown kind (written by a newer version?)",
            ));
        };
        let now = command.now_ms;
        let (action, target, result) = match kind {
            Kind::AddUser(c) => ("user.add", c.name.clone(), self.add_user(c)),
            Kind::IssueToken(c) => ("login", c.user.clone(), self.issue_token(c, now)),
            Kind::RevokeToken(c) => {
                let user = self.tokens.get(&c.token_hash).map(|t| t.user.clone());
                ("logout", user.unwrap_or_default(), self.revoke_token(c))
            }
            Kind::LoginFailed(c) => ("login.failed", c.user.clone(), self.login_failed(c, now)),
            Kind::AuthFailures(c) => ("auth.failures", c.node.clone(), self.auth_failures(c, now)),
            Kind::CreateHost(c) => ("host.enroll", c.name.clone(), self.create_host(c)),
            Kind::CompleteEnrollment(c) => (
                "host.enrolled",
                c.name.clone(),
                self.complete_enrollment(c, now),
            ),
            Kind::AddGrant(c) => (
                "grant.add",
                format!("{}->{}", c.user_group, c.host_group),
                self.add_grant(c),
            ),
            Kind::AttachHost(c) => ("host.attach", c.name.clone(), self.attach_host(c)),
            Kind::DetachHost(c) => ("host.detach", c.name.clone(), self.detach_host(c)),
            Kind::OpenSession(c) => (
                "session.open",
                format!("{}/{}", c.host, c.service),
                self.open_session(c, now),
            ),
            Kind::CloseSession(c) => (
                "session.close",
                c.session_id.to_string(),
                self.close_session(c, now),
            ),
            Kind::ResumeSession(c) => (
                "session.resume",
                c.session_id.to_string(),
                self.resume_session(c),
            ),
            Kind::DetachSession(c) => (
                "session.detach",
                c.session_id.to_string(),
                self.detach_session(c, now),
            ),
            Kind::AcquireLease(c) => (
                if c.forced {
                    "maintenance.acquire.forced"
                } else {
                    "maintenance.acquire"
                },
                c.node.clone(),
                self.acquire_lease(c, &command.actor, now),
            ),
            Kind::ReleaseLease(c) => ("maintenance.release", c.node.clone(), self.release_lease(c)),
            Kind::SetUserDisabled(c) => (
                if c.disabled {
                    "user.disable"
                } else {
                    "user.enable"
                },
                c.name.clone(),
                self.set_user_disabled(c),
            ),
            Kind::RemoveUser(c) => ("user.remove", c.name.clone(), self.remove_user(c)),
            Kind::SetPassword(c) => ("user.passwd", c.name.clone(), self.set_password(c)),
            Kind::RevokeUserTokens(c) => (
                "token.revoke_user",
                c.user.clone(),
                self.revoke_user_tokens(c),
            ),
            Kind::RemoveGrant(c) => (
                "grant.remove",
                format!("{}->{}", c.user_group, c.host_group),
                self.remove_grant(c),
            ),
            Kind::KillSession(c) => (
                "session.kill",
                c.session_id.to_string(),
                self.kill_session(c),
            ),
            Kind::RemoveHost(c) => ("host.remove", c.name.clone(), self.remove_host(c)),
            Kind::ReEnrollHost(c) => ("host.re_enroll", c.name.clone(), self.re_enroll_host(c)),
            Kind::CreateAdminToken(c) => (
                "token.create",
                c.name.clone(),
                self.create_admin_token(c, &command.actor, now),
            ),
            Kind::AdminForbidden(c) => (
                "admin.forbidden",
                c.request
                    .chars()
                    .take(crate::names::NAME_BYTES_MAX * 4)
                    .collect(),
                Err(Refusal::new(
                    RefusalKind::PermissionDenied,
                    c.reason.clone(),
                )),
            ),
            Kind::RevokeAdminToken(c) => {
                ("token.revoke", c.name.clone(), self.revoke_admin_token(c))
            }
            Kind::PurgeExpired(_) => ("purge", String::new(), Ok(self.purge_expired(now))),
            Kind::MembersSeen(c) => ("member.seen", String::new(), Ok(self.members_seen(c))),
            Kind::ChangeMembership(c) => (
                "member.refused",
                c.member
                    .as_ref()
                    .map(|m| m.node_id.clone())
                    .unwrap_or_default(),
                Err(Refusal::new(
                    RefusalKind::Invalid,
                    "membership changes are made only through a Raft configuration change",
                )),
            ),
        };
        let outcome = result.unwrap_or_else(Outcome::Refused);
        // Housekeeping commands are frequent and say nothing an auditor needs.
        if !matches!(
            kind,
            Kind::PurgeExpired(_)
                | Kind::AttachHost(_)
                | Kind::DetachHost(_)
                | Kind::MembersSeen(_)
        ) {
            self.record_audit(command, action, target, &outcome);
        }
        outcome
    }

    pub(crate) fn record_audit(
        &mut self,
        command: &Command,
        action: &str,
        target: String,
        outcome: &Outcome,
    ) {
        let outcome = match (outcome, &command.kind) {
            // The login itself failed; the command only records it, so say why.
            (Outcome::Applied, Some(Kind::LoginFailed(c))) => format!("failed: {}", c.reason),
            (Outcome::Applied, Some(Kind::AuthFailures(c))) => crate::failures::describe(c),
            // Who forced what is the actor and target; which checks failed is said here.
            (Outcome::Applied, Some(Kind::AcquireLease(c))) if c.forced => format!(
                "ok, FORCED past failing checks: {}",
                if c.failed_checks.is_empty() {
                    "none".to_owned()
                } else {
                    c.failed_checks.join("; ")
                }
            ),
            (Outcome::Applied, Some(Kind::ReleaseLease(c))) => format!("ok: {}", c.reason),
            (Outcome::Applied, Some(Kind::ChangeMembership(c))) if !c.reason.is_empty() => {
                format!("ok: {}", c.reason)
            }
            (Outcome::Applied, Some(Kind::CloseSession(c))) if !c.reason.is_empty() => {
                format!("ok: {}", c.reason)
            }
            (Outcome::Applied, Some(Kind::KillSession(c))) if !c.reason.is_empty() => {
                format!("ok: {}", c.reason)
            }
            (Outcome::Applied, _) => "ok".to_owned(),
            (Outcome::SessionOpened { session_id }, _) => format!("ok session {session_id}"),
            (Outcome::Refused(r), _) => format!("refused: {}", r.message),
        };
        // Targets are validated names almost always; a refused command may carry anything.
        let target = bounded(target, AUDIT_TARGET_CHARS_MAX);
        let record = AuditRecord {
            seq: self.next_audit_seq,
            at_ms: command.now_ms,
            actor: command.actor.clone(),
            source: command.source.clone(),
            action: action.to_owned(),
            target,
            outcome,
        };
        self.next_audit_seq += 1;
        if self.audit.len() == AUDIT_RETAINED_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(record);
        debug_assert!(self.audit.len() <= AUDIT_RETAINED_MAX);
    }

    fn add_user(&mut self, c: &pb::AddUser) -> Applied {
        validate_name(NameKind::User, &c.name)?;
        validate_groups(&c.groups)?;
        if c.password_hash.is_empty() {
            return Err(Refusal::new(RefusalKind::Invalid, "password hash is empty"));
        }
        if self.users.contains_key(&c.name) {
            return Err(Refusal::new(
                RefusalKind::AlreadyExists,
                format!("user {:?} already exists", c.name),
            ));
        }
        self.users.insert(
            c.name.clone(),
            User {
                name: c.name.clone(),
                groups: sorted(&c.groups),
                password_hash: c.password_hash.clone(),
                disabled: false,
                failed_logins: 0,
                last_failed_login_ms: 0,
            },
        );
        Ok(Outcome::Applied)
    }

    fn issue_token(&mut self, c: &pb::IssueToken, now: u64) -> Applied {
        let user = self
            .users
            .get_mut(&c.user)
            .ok_or_else(|| unknown_user(&c.user))?;
        if user.disabled {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("user {:?} is disabled", c.user),
            ));
        }
        user.failed_logins = 0;
        // Bound the tokens one user holds: drop the expired ones, then the soonest to expire.
        let mut held: Vec<(u64, Vec<u8>)> = self
            .tokens
            .values()
            .filter(|t| t.user == c.user)
            .map(|t| (t.expires_at_ms, t.token_hash.clone()))
            .collect();
        held.sort();
        let live = held.iter().filter(|(expires, _)| *expires > now).count();
        let excess = (live + 1).saturating_sub(TOKENS_PER_USER_MAX);
        let expired = held.len() - live;
        for (_, hash) in held.iter().take(expired + excess) {
            self.tokens.remove(hash);
        }
        self.tokens.insert(
            c.token_hash.clone(),
            Token {
                token_hash: c.token_hash.clone(),
                user: c.user.clone(),
                expires_at_ms: c.expires_at_ms,
            },
        );
        Ok(Outcome::Applied)
    }
}

impl StateMachine {
    fn login_failed(&mut self, c: &pb::LoginFailed, now: u64) -> Applied {
        // Unknown users are audited but have no counter to bump.
        if let Some(user) = self.users.get_mut(&c.user) {
            user.failed_logins = user.failed_logins.saturating_add(1);
            user.last_failed_login_ms = now;
        }
        Ok(Outcome::Applied)
    }

    fn create_host(&mut self, c: &pb::CreateHost) -> Applied {
        validate_name(NameKind::Host, &c.name)?;
        validate_groups(&c.groups)?;
        if c.enrollment_token_hash.is_empty() {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "enrollment token hash is empty",
            ));
        }
        if let Some(host) = self.hosts.get(&c.name) {
            if host.enrollment() == EnrollmentState::Enrolled {
                return Err(Refusal::new(
                    RefusalKind::AlreadyExists,
                    format!("host {:?} is already enrolled", c.name),
                ));
            }
        }
        // A pending host may be re-issued a token: the old one stops working.
        self.hosts.insert(
            c.name.clone(),
            Host {
                name: c.name.clone(),
                groups: sorted(&c.groups),
                enrollment: EnrollmentState::Pending as i32,
                enrollment_token_hash: c.enrollment_token_hash.clone(),
                enrollment_expires_at_ms: c.enrollment_expires_at_ms,
                credential_hash: Vec::new(),
                attached_broker: String::new(),
                presence_epoch: 0,
                services: Vec::new(),
                attached_instance: 0,
            },
        );
        Ok(Outcome::Applied)
    }

    fn complete_enrollment(&mut self, c: &pb::CompleteEnrollment, now: u64) -> Applied {
        self.enrollment_check(c, now)?;
        let host = self
            .hosts
            .get_mut(&c.name)
            .expect("enrollment_check found the host");
        host.enrollment = EnrollmentState::Enrolled as i32;
        host.enrollment_token_hash.clear();
        host.credential_hash = c.credential_hash.clone();
        Ok(Outcome::Applied)
    }

    /// Whether `c` would complete an enrollment at `now`: the same answer `apply` gives, read
    /// only, so that a broker refuses a wrong token before proposing anything (an anonymous
    /// peer must not add a Raft entry per guess).
    pub fn enrollment_check(&self, c: &pb::CompleteEnrollment, now: u64) -> Result<(), Refusal> {
        validate_name(NameKind::Host, &c.name)?;
        let host = self
            .hosts
            .get(&c.name)
            .ok_or_else(|| unknown_host(&c.name))?;
        if host.enrollment() == EnrollmentState::Enrolled {
            return Err(Refusal::new(
                RefusalKind::AlreadyUsed,
                format!(
                    "host {:?} is already enrolled; an enrollment token works once \
                     (ask an administrator for a new one with `ferry admin host enroll`)",
                    c.name
                ),
            ));
        }
        if host.enrollment_token_hash != c.enrollment_token_hash {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("wrong enrollment token for host {:?}", c.name),
            ));
        }
        if now >= host.enrollment_expires_at_ms {
            return Err(Refusal::new(
                RefusalKind::Expired,
                format!("the enrollment token for host {:?} has expired", c.name),
            ));
        }
        if c.credential_hash.is_empty() {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "credential hash is empty",
            ));
        }
        Ok(())
    }

    fn add_grant(&mut self, c: &pb::AddGrant) -> Applied {
        validate_name(NameKind::Group, &c.user_group)?;
        validate_name(NameKind::Group, &c.host_group)?;
        if c.services.len() > SERVICES_PER_HOST_MAX {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "a grant names at most {SERVICES_PER_HOST_MAX} services, not {}",
                    c.services.len()
                ),
            ));
        }
        for service in &c.services {
            validate_name(NameKind::Service, service)?;
        }
        // Granting twice is not an error: the operator's intent holds either way, and the
        // latest list of services is the one that counts.
        self.grants.insert(
            (c.user_group.clone(), c.host_group.clone()),
            sorted(&c.services),
        );
        Ok(Outcome::Applied)
    }

    fn revoke_token(&mut self, c: &pb::RevokeToken) -> Applied {
        match self.tokens.remove(&c.token_hash) {
            Some(_) => {
                self.withdraw_sessions_of_token(&c.token_hash);
                Ok(Outcome::Applied)
            }
            None => Err(Refusal::new(
                RefusalKind::NotFound,
                "the token is not valid (expired, revoked, or never issued)",
            )),
        }
    }

    fn attach_host(&mut self, c: &pb::AttachHost) -> Applied {
        if c.services.len() > SERVICES_PER_HOST_MAX {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "a host exposes at most {SERVICES_PER_HOST_MAX} services, not {}",
                    c.services.len()
                ),
            ));
        }
        for service in &c.services {
            validate_name(NameKind::Service, service)?;
        }
        let host = self
            .hosts
            .get_mut(&c.name)
            .ok_or_else(|| unknown_host(&c.name))?;
        host.attached_broker = c.broker.clone();
        host.attached_instance = c.instance;
        host.presence_epoch += 1;
        // An older node's command names no services: keep what is known.
        if !c.services.is_empty() {
            host.services = c.services.clone();
        }
        Ok(Outcome::Applied)
    }

    fn detach_host(&mut self, c: &pb::DetachHost) -> Applied {
        let host = self
            .hosts
            .get_mut(&c.name)
            .ok_or_else(|| unknown_host(&c.name))?;
        if host.attached_broker == c.broker {
            host.attached_broker.clear();
            host.attached_instance = 0;
        }
        Ok(Outcome::Applied)
    }

    fn open_session(&mut self, c: &pb::OpenSession, now: u64) -> Applied {
        validate_name(NameKind::Service, &c.service)?;
        self.may_open(&c.user, &c.host, &c.service)?;
        let id = self.next_session_id;
        self.next_session_id += 1;
        self.sessions.insert(
            id,
            Session {
                id,
                user: c.user.clone(),
                host: c.host.clone(),
                service: c.service.clone(),
                broker: c.broker.clone(),
                resume_secret_hash: c.resume_secret_hash.clone(),
                state: SessionState::Open as i32,
                opened_at_ms: now,
                closed_at_ms: 0,
                bytes_client_to_host: 0,
                bytes_host_to_client: 0,
                close_reason: String::new(),
                detached_at_ms: 0,
                resumes: 0,
                token_hash: c.token_hash.clone(),
                withdrawn: String::new(),
            },
        );
        Ok(Outcome::SessionOpened { session_id: id })
    }

    fn close_session(&mut self, c: &pb::CloseSession, _now: u64) -> Applied {
        self.end_session(c.session_id)
    }

    /// Removes an open session: closed or killed sessions leave the table; their totals and
    /// reasons live on in the audit record.
    pub(crate) fn end_session(&mut self, session_id: u64) -> Applied {
        self.sessions.remove(&session_id).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("no open session {session_id}"),
            )
        })?;
        Ok(Outcome::Applied)
    }

    fn resume_session(&mut self, c: &pb::ResumeSession) -> Applied {
        let session = self
            .sessions
            .get(&c.session_id)
            .ok_or_else(|| session_gone(c.session_id))?;
        if session.resume_secret_hash != c.resume_secret_hash {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("wrong resume secret for session {}", c.session_id),
            ));
        }
        // A withdrawn session is not resumed, even where a broker's view lagged.
        self.session_allowed(c.session_id)?;
        let session = self
            .sessions
            .get_mut(&c.session_id)
            .expect("session_allowed found it");
        session.broker = c.broker.clone();
        session.detached_at_ms = 0;
        session.resumes += 1;
        Ok(Outcome::Applied)
    }

    fn detach_session(&mut self, c: &pb::DetachSession, now: u64) -> Applied {
        let session = self
            .sessions
            .get_mut(&c.session_id)
            .ok_or_else(|| session_gone(c.session_id))?;
        // A resume may have been applied first: then this is old news about a previous path.
        if session.broker == c.broker && session.resumes == c.resumes && session.detached_at_ms == 0
        {
            session.detached_at_ms = now.max(1);
        }
        Ok(Outcome::Applied)
    }

    fn purge_expired(&mut self, now: u64) -> Outcome {
        self.tokens.retain(|_, t| t.expires_at_ms > now);
        Outcome::Applied
    }
}

/// The refusal for a session that is no longer in the table.
pub(crate) fn session_gone(session_id: u64) -> Refusal {
    Refusal::new(
        RefusalKind::NotFound,
        format!("session {session_id} has ended or expired; open a new session"),
    )
}

fn validate_groups(groups: &[String]) -> Result<(), Refusal> {
    if groups.is_empty() {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            "at least one group is required",
        ));
    }
    groups
        .iter()
        .try_for_each(|g| validate_name(NameKind::Group, g))
}

fn sorted(groups: &[String]) -> Vec<String> {
    let mut groups = groups.to_vec();
    groups.sort();
    groups.dedup();
    groups
}

pub(crate) fn unknown_user(name: &str) -> Refusal {
    Refusal::new(RefusalKind::NotFound, format!("unknown user {name:?}"))
}

pub(crate) fn unknown_host(name: &str) -> Refusal {
    Refusal::new(RefusalKind::NotFound, format!("unknown host {name:?}"))
}
