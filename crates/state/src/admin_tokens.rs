//! Named admin API tokens with roles: created and revoked through the log, stored hashed,
//! looked up by hash for every admin API request. (The token `ferry init` writes lives in each
//! node's configuration instead, so that a new cluster can be administered before its first
//! entry; it is the first `admin`.)

use crate::names::{validate_name, NameKind};
use crate::{AdminRole, AdminToken, Outcome, Refusal, RefusalKind, StateMachine};
use ferry_proto::state as pb;

/// How many named admin tokens the cluster keeps; each is one row, looked up per request.
pub const ADMIN_TOKENS_MAX: usize = 256;

type Applied = Result<Outcome, Refusal>;

impl StateMachine {
    pub(crate) fn create_admin_token(
        &mut self,
        c: &pb::CreateAdminToken,
        actor: &str,
        now: u64,
    ) -> Applied {
        validate_name(NameKind::Token, &c.name)?;
        let role = AdminRole::try_from(c.role).unwrap_or(AdminRole::Unspecified);
        if role == AdminRole::Unspecified {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "an admin token needs a role: read, operator or admin",
            ));
        }
        if c.token_hash.len() != 32 {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "an admin token is stored as its SHA-256",
            ));
        }
        if self.admin_tokens.contains_key(&c.name) {
            return Err(Refusal::new(
                RefusalKind::AlreadyExists,
                format!(
                    "an admin token named {:?} exists; revoke it first or pick another name",
                    c.name
                ),
            ));
        }
        if self.admin_tokens.len() >= ADMIN_TOKENS_MAX {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "the cluster keeps at most {ADMIN_TOKENS_MAX} admin tokens; revoke unused ones"
                ),
            ));
        }
        if self.admin_token_by_hash(&c.token_hash).is_some() {
            return Err(Refusal::new(RefusalKind::AlreadyExists, "token reused"));
        }
        self.admin_tokens.insert(
            c.name.clone(),
            AdminToken {
                name: c.name.clone(),
                role: role as i32,
                token_hash: c.token_hash.clone(),
                created_at_ms: now,
                created_by: actor.to_owned(),
            },
        );
        Ok(Outcome::Applied)
    }

    pub(crate) fn revoke_admin_token(&mut self, c: &pb::RevokeAdminToken) -> Applied {
        self.admin_tokens.remove(&c.name).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                format!("no admin token named {:?}", c.name),
            )
        })?;
        Ok(Outcome::Applied)
    }

    /// The named admin token whose SHA-256 is `token_hash`.
    pub fn admin_token_by_hash(&self, token_hash: &[u8]) -> Option<&AdminToken> {
        self.admin_tokens
            .values()
            .find(|t| t.token_hash == token_hash)
    }

    pub fn admin_tokens(&self) -> impl Iterator<Item = &AdminToken> {
        self.admin_tokens.values()
    }
}

#[cfg(test)]
mod tests {
    use crate::{hash_secret, AdminRole, Command, Kind, Outcome, StateMachine};
    use ferry_proto::state as pb;

    fn apply(state: &mut StateMachine, kind: Kind) -> Outcome {
        state.apply(&Command {
            now_ms: 1,
            actor: "token:init".into(),
            source: "127.0.0.1:1".into(),
            kind: Some(kind),
        })
    }

    fn create(name: &str, role: AdminRole, secret: &str) -> Kind {
        Kind::CreateAdminToken(pb::CreateAdminToken {
            name: name.into(),
            role: role as i32,
            token_hash: hash_secret(secret),
        })
    }

    #[test]
    fn tokens_are_created_once_found_by_hash_and_revoked() {
        let mut state = StateMachine::new();
        // (case, command, refused with)
        let cases: Vec<(&str, Kind, Option<&str>)> = vec![
            ("create", create("ci", AdminRole::Read, "s1"), None),
            (
                "same name",
                create("ci", AdminRole::Admin, "s2"),
                Some("exists"),
            ),
            (
                "same secret",
                create("ci2", AdminRole::Admin, "s1"),
                Some("reused"),
            ),
            (
                "no role",
                create("x", AdminRole::Unspecified, "s3"),
                Some("needs a role"),
            ),
            (
                "bad name",
                create("a b", AdminRole::Read, "s4"),
                Some("may contain only"),
            ),
            (
                "short hash",
                Kind::CreateAdminToken(pb::CreateAdminToken {
                    name: "y".into(),
                    role: AdminRole::Read as i32,
                    token_hash: vec![1, 2],
                }),
                Some("SHA-256"),
            ),
            ("operator", create("ops", AdminRole::Operator, "s5"), None),
            (
                "revoke",
                Kind::RevokeAdminToken(pb::RevokeAdminToken { name: "ops".into() }),
                None,
            ),
            (
                "revoke again",
                Kind::RevokeAdminToken(pb::RevokeAdminToken { name: "ops".into() }),
                Some("no admin token"),
            ),
        ];
        for (case, kind, refused) in cases {
            match (apply(&mut state, kind), refused) {
                (Outcome::Refused(r), Some(fragment)) => {
                    assert!(r.message.contains(fragment), "{case}: {}", r.message)
                }
                (Outcome::Refused(r), None) => panic!("{case}: refused: {}", r.message),
                (outcome, Some(_)) => panic!("{case}: applied ({outcome:?})"),
                (_, None) => {}
            }
        }
        let ci = state.admin_token_by_hash(&hash_secret("s1")).expect("ci");
        assert_eq!((ci.name.as_str(), ci.role()), ("ci", AdminRole::Read));
        assert_eq!(ci.created_by, "token:init");
        assert!(state.admin_token_by_hash(&hash_secret("s5")).is_none());
        let restored = StateMachine::restore(state.snapshot()).expect("restores");
        assert_eq!(restored, state);
    }
}
