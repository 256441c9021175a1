//! Withdrawing what was granted: disabling and removing users, changing passwords, revoking
//! a user's tokens, removing grants and hosts, re-enrolling hosts, killing sessions; and the
//! question every broker asks of the sessions it carries once the state changed: is this
//! session still allowed?
//!
//! A session is not ended here: the state only stops allowing it, because its user, host or
//! grant is gone, or because it is marked `withdrawn` (killed, its token revoked). The brokers
//! that carry it watch the applied state and close both ends; the leader's sweep then closes
//! it in the table (`ferry_policy::sweep`).

use crate::apply::unknown_host;
use crate::{EnrollmentState, Outcome, Refusal, RefusalKind, Session, StateMachine};
use ferry_proto::state as pb;

type Applied = Result<Outcome, Refusal>;

fn no_user(name: &str) -> Refusal {
    Refusal::new(RefusalKind::NotFound, format!("unknown user {name:?}"))
}

impl StateMachine {
    pub(crate) fn set_user_disabled(&mut self, c: &pb::SetUserDisabled) -> Applied {
        let user = self
            .users
            .get_mut(&c.name)
            .ok_or_else(|| no_user(&c.name))?;
        // Disabling twice is not an error: the operator's intent holds either way.
        user.disabled = c.disabled;
        Ok(Outcome::Applied)
    }

    pub(crate) fn remove_user(&mut self, c: &pb::RemoveUser) -> Applied {
        self.users.remove(&c.name).ok_or_else(|| no_user(&c.name))?;
        self.tokens.retain(|_, t| t.user != c.name);
        Ok(Outcome::Applied)
    }

    pub(crate) fn set_password(&mut self, c: &pb::SetPassword) -> Applied {
        if !c.password_hash.starts_with("$argon2") {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "a password is stored as an argon2 hash, never as itself",
            ));
        }
        let user = self
            .users
            .get_mut(&c.name)
            .ok_or_else(|| no_user(&c.name))?;
        user.password_hash = c.password_hash.clone();
        user.failed_logins = 0;
        Ok(Outcome::Applied)
    }

    pub(crate) fn revoke_user_tokens(&mut self, c: &pb::RevokeUserTokens) -> Applied {
        if !self.users.contains_key(&c.user) {
            return Err(no_user(&c.user));
        }
        let revoked: Vec<Vec<u8>> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.user == c.user)
            .map(|(hash, _)| hash.clone())
            .collect();
        for hash in &revoked {
            self.tokens.remove(hash);
            self.withdraw_sessions_of_token(hash);
        }
        Ok(Outcome::Applied)
    }

    /// Marks the sessions opened with the token `token_hash` withdrawn: revoking a token ends
    /// what it opened. (An expired token is purged without this: expiry limits new sessions,
    /// not live ones.)
    pub(crate) fn withdraw_sessions_of_token(&mut self, token_hash: &[u8]) {
        for session in self.sessions.values_mut() {
            if !session.token_hash.is_empty() && session.token_hash == token_hash {
                session.withdrawn = "the login token that opened it was revoked".into();
            }
        }
    }

    pub(crate) fn remove_host(&mut self, c: &pb::RemoveHost) -> Applied {
        self.hosts
            .remove(&c.name)
            .ok_or_else(|| unknown_host(&c.name))?;
        Ok(Outcome::Applied)
    }

    pub(crate) fn re_enroll_host(&mut self, c: &pb::ReEnrollHost) -> Applied {
        if c.enrollment_token_hash.is_empty() {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "enrollment token hash is empty",
            ));
        }
        let host = self
            .hosts
            .get_mut(&c.name)
            .ok_or_else(|| unknown_host(&c.name))?;
        // Back to pending: the old credential stops working at once, its sessions end, and
        // only the new one-time token enrolls the host again.
        host.enrollment = EnrollmentState::Pending as i32;
        host.credential_hash.clear();
        host.enrollment_token_hash = c.enrollment_token_hash.clone();
        host.enrollment_expires_at_ms = c.enrollment_expires_at_ms;
        Ok(Outcome::Applied)
    }

    pub(crate) fn remove_grant(&mut self, c: &pb::RemoveGrant) -> Applied {
        let grant = (c.user_group.clone(), c.host_group.clone());
        if self.grants.remove(&grant).is_none() {
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!(
                    "no grant of host group {:?} to user group {:?}",
                    c.host_group, c.user_group
                ),
            ));
        }
        Ok(Outcome::Applied)
    }

    pub(crate) fn kill_session(&mut self, c: &pb::KillSession) -> Applied {
        let session = self.sessions.get_mut(&c.session_id).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("no open session {}", c.session_id),
            )
        })?;
        session.withdrawn = if c.reason.is_empty() {
            "killed by an administrator".into()
        } else {
            format!("killed by an administrator: {}", c.reason)
        };
        Ok(Outcome::Applied)
    }

    /// Whether the session with id `session_id` may go on as the state stands: it is still
    /// open and not withdrawn (killed, its token revoked), its user exists and is enabled, its
    /// host is still enrolled, and a grant still covers its service. The refusal says why not,
    /// for the ends' close reason and the audit.
    pub fn session_allowed(&self, session_id: u64) -> Result<&Session, Refusal> {
        let session = self.sessions.get(&session_id).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("session {session_id} was ended"),
            )
        })?;
        if !session.withdrawn.is_empty() {
            return Err(Refusal::new(
                RefusalKind::PermissionDenied,
                format!("session {session_id} was {}", session.withdrawn),
            ));
        }
        self.may_open(&session.user, &session.host, &session.service)?;
        Ok(session)
    }

    /// Open sessions that may no longer go on, with why: the leader closes them.
    pub fn sessions_withdrawn(&self) -> impl Iterator<Item = (&Session, Refusal)> {
        self.sessions
            .values()
            .filter_map(|s| self.session_allowed(s.id).err().map(|r| (s, r)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{hash_secret, Command, Kind, Outcome, StateMachine};
    use ferry_proto::state as pb;

    const T0: u64 = 1_700_000_000_000;

    fn apply(state: &mut StateMachine, kind: Kind) -> Outcome {
        state.apply(&Command {
            now_ms: T0,
            actor: "admin:root".into(),
            source: "127.0.0.1:1".into(),
            kind: Some(kind),
        })
    }

    /// alice (staff) with a session to pc1 (lab), staff granted lab, a token for alice.
    fn world() -> (StateMachine, pb::Session) {
        let mut state = StateMachine::new();
        let steps = [
            Kind::AddUser(pb::AddUser {
                name: "alice".into(),
                groups: vec!["staff".into()],
                password_hash: "$argon2id$old".into(),
            }),
            Kind::CreateHost(pb::CreateHost {
                name: "pc1".into(),
                groups: vec!["lab".into()],
                enrollment_token_hash: hash_secret("tok"),
                enrollment_expires_at_ms: T0 + 1000,
            }),
            Kind::CompleteEnrollment(pb::CompleteEnrollment {
                name: "pc1".into(),
                enrollment_token_hash: hash_secret("tok"),
                credential_hash: hash_secret("cred"),
            }),
            Kind::AddGrant(pb::AddGrant {
                user_group: "staff".into(),
                host_group: "lab".into(),
                services: vec![],
            }),
            Kind::IssueToken(pb::IssueToken {
                user: "alice".into(),
                token_hash: hash_secret("alice-token"),
                expires_at_ms: T0 + 60_000,
            }),
            Kind::OpenSession(pb::OpenSession {
                user: "alice".into(),
                host: "pc1".into(),
                service: "ssh".into(),
                broker: "b1".into(),
                resume_secret_hash: hash_secret("resume"),
                token_hash: hash_secret("alice-token"),
            }),
        ];
        for kind in steps {
            let outcome = apply(&mut state, kind.clone());
            assert!(
                !matches!(outcome, Outcome::Refused(_)),
                "{kind:?}: {outcome:?}"
            );
        }
        let session = state.sessions().next().expect("one session").clone();
        (state, session)
    }

    /// Each withdrawal, applied alone to the same world: (case, command, refused with, whether
    /// the session is still allowed afterwards, a fragment of why not).
    #[test]
    fn withdrawals_end_what_they_withdraw() {
        let (_, session) = world();
        let cases: Vec<(&str, Kind, Option<&str>, Option<&str>)> = vec![
            (
                "disable",
                Kind::SetUserDisabled(pb::SetUserDisabled {
                    name: "alice".into(),
                    disabled: true,
                }),
                None,
                Some("is disabled"),
            ),
            (
                "enable again",
                Kind::SetUserDisabled(pb::SetUserDisabled {
                    name: "alice".into(),
                    disabled: false,
                }),
                None,
                None,
            ),
            (
                "disable nobody",
                Kind::SetUserDisabled(pb::SetUserDisabled {
                    name: "bob".into(),
                    disabled: true,
                }),
                Some("unknown user"),
                None,
            ),
            (
                "remove user",
                Kind::RemoveUser(pb::RemoveUser {
                    name: "alice".into(),
                }),
                None,
                Some("unknown user"),
            ),
            (
                "remove grant",
                Kind::RemoveGrant(pb::RemoveGrant {
                    user_group: "staff".into(),
                    host_group: "lab".into(),
                }),
                None,
                Some("not granted"),
            ),
            (
                "remove a grant never made",
                Kind::RemoveGrant(pb::RemoveGrant {
                    user_group: "staff".into(),
                    host_group: "dmz".into(),
                }),
                Some("no grant"),
                None,
            ),
            (
                "kill",
                Kind::KillSession(pb::KillSession {
                    session_id: session.id,
                    reason: "offboarding".into(),
                }),
                None,
                Some("killed by an administrator: offboarding"),
            ),
            (
                "kill twice",
                Kind::KillSession(pb::KillSession {
                    session_id: session.id + 1,
                    reason: String::new(),
                }),
                Some("no open session"),
                None,
            ),
            (
                "remove host",
                Kind::RemoveHost(pb::RemoveHost { name: "pc1".into() }),
                None,
                Some("unknown host"),
            ),
            (
                "re-enroll host",
                Kind::ReEnrollHost(pb::ReEnrollHost {
                    name: "pc1".into(),
                    enrollment_token_hash: hash_secret("tok2"),
                    enrollment_expires_at_ms: T0 + 1000,
                }),
                None,
                Some("has not completed enrollment"),
            ),
            (
                "narrow the grant to other services",
                Kind::AddGrant(pb::AddGrant {
                    user_group: "staff".into(),
                    host_group: "lab".into(),
                    services: vec!["vnc".into(), "rdp".into()],
                }),
                None,
                Some("only for service(s) rdp, vnc, not \"ssh\""),
            ),
            (
                "narrow the grant to its service",
                Kind::AddGrant(pb::AddGrant {
                    user_group: "staff".into(),
                    host_group: "lab".into(),
                    services: vec!["ssh".into()],
                }),
                None,
                None,
            ),
            (
                "revoke another token",
                Kind::RevokeToken(pb::RevokeToken {
                    token_hash: hash_secret("alice-token-2"),
                }),
                Some("not valid"),
                None,
            ),
            (
                "revoke its token",
                Kind::RevokeToken(pb::RevokeToken {
                    token_hash: hash_secret("alice-token"),
                }),
                None,
                Some("token that opened it was revoked"),
            ),
            (
                "new password",
                Kind::SetPassword(pb::SetPassword {
                    name: "alice".into(),
                    password_hash: "$argon2id$new".into(),
                }),
                None,
                None,
            ),
            (
                "a password in clear",
                Kind::SetPassword(pb::SetPassword {
                    name: "alice".into(),
                    password_hash: "hunter2".into(),
                }),
                Some("argon2"),
                None,
            ),
            (
                "revoke alice's tokens",
                Kind::RevokeUserTokens(pb::RevokeUserTokens {
                    user: "alice".into(),
                }),
                None,
                Some("token that opened it was revoked"),
            ),
        ];
        for (case, kind, refused, not_allowed) in cases {
            let (mut state, session) = world();
            let audits_before = state.counts().audit_records;
            match (apply(&mut state, kind), refused) {
                (Outcome::Refused(r), Some(fragment)) => {
                    assert!(r.message.contains(fragment), "{case}: {}", r.message)
                }
                (Outcome::Refused(r), None) => panic!("{case}: refused: {}", r.message),
                (outcome, Some(_)) => panic!("{case}: applied ({outcome:?}), wanted a refusal"),
                (_, None) => {}
            }
            assert_eq!(
                state.counts().audit_records,
                audits_before + 1,
                "{case}: audited"
            );
            match (state.session_allowed(session.id).map(|_| ()), not_allowed) {
                (Ok(()), None) => {}
                (Err(r), Some(fragment)) => {
                    assert!(r.message.contains(fragment), "{case}: {}", r.message)
                }
                (Ok(()), Some(fragment)) => panic!("{case}: still allowed, wanted {fragment:?}"),
                (Err(r), None) => panic!("{case}: no longer allowed: {}", r.message),
            }
        }
    }

    #[test]
    fn removing_a_user_or_revoking_its_tokens_invalidates_them() {
        for kind in [
            Kind::RemoveUser(pb::RemoveUser {
                name: "alice".into(),
            }),
            Kind::RevokeUserTokens(pb::RevokeUserTokens {
                user: "alice".into(),
            }),
        ] {
            let (mut state, _) = world();
            assert!(state.token(&hash_secret("alice-token")).is_some());
            apply(&mut state, kind.clone());
            assert!(
                state.token(&hash_secret("alice-token")).is_none(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_new_password_replaces_the_old_and_clears_failures() {
        let (mut state, _) = world();
        apply(
            &mut state,
            Kind::LoginFailed(pb::LoginFailed {
                user: "alice".into(),
                reason: "wrong password".into(),
            }),
        );
        assert_eq!(state.user("alice").map(|u| u.failed_logins), Some(1));
        apply(
            &mut state,
            Kind::SetPassword(pb::SetPassword {
                name: "alice".into(),
                password_hash: "$argon2id$new".into(),
            }),
        );
        let alice = state.user("alice").expect("alice");
        assert_eq!(
            (alice.password_hash.as_str(), alice.failed_logins),
            ("$argon2id$new", 0)
        );
    }
}
