//! `AuthFailures`: the failed attempts of unauthenticated peers, one summary per node and
//! period (see `ferry_admission::FailureLedger`, which counts them).

use crate::names::{validate_name, NameKind, NAME_BYTES_MAX};
use crate::{Outcome, Refusal, RefusalKind, StateMachine};
use ferry_proto::state as pb;
use std::fmt::Write as _;

/// Counts one summary lists at most (the rest are summed as "others").
pub const AUTH_FAILURE_COUNTS_MAX: usize = 16;

/// The name a count carries when the attempt named something that is not a valid name (the
/// attacker's bytes are never replicated).
pub const INVALID_NAME: &str = "(invalid name)";

/// Longest source: an IPv6 /64 in text, with room.
const SOURCE_BYTES_MAX: usize = 48;

const ATTEMPTS: [&str; 3] = ["login", "enroll", "resume"];

impl StateMachine {
    /// Checks the summary's bounds, and adds each login count to its user's failed-login
    /// counter (unknown users have none).
    pub(crate) fn auth_failures(
        &mut self,
        c: &pb::AuthFailures,
        now: u64,
    ) -> Result<Outcome, Refusal> {
        let invalid = |why: String| Err(Refusal::new(RefusalKind::Invalid, why));
        if c.counts.len() > AUTH_FAILURE_COUNTS_MAX {
            return invalid(format!(
                "a failure summary lists at most {AUTH_FAILURE_COUNTS_MAX} counts, not {}",
                c.counts.len()
            ));
        }
        for count in &c.counts {
            if count.source.is_empty() || count.source.len() > SOURCE_BYTES_MAX {
                return invalid("a failure count names no source, or too long a one".into());
            }
            if !ATTEMPTS.contains(&count.attempt.as_str()) {
                return invalid("a failure count names an unknown attempt".into());
            }
            if count.name != INVALID_NAME && count.name.len() > NAME_BYTES_MAX {
                return invalid("a failure count names too long a name".into());
            }
        }
        validate_name(NameKind::Node, &c.node)?;
        for count in c.counts.iter().filter(|c| c.attempt == "login") {
            if let Some(user) = self.users.get_mut(&count.name) {
                let added = u32::try_from(count.count).unwrap_or(u32::MAX);
                user.failed_logins = user.failed_logins.saturating_add(added);
                user.last_failed_login_ms = now;
            }
        }
        Ok(Outcome::Applied)
    }
}

/// The audit record's outcome: every count, and the rest in one sum.
pub(crate) fn describe(c: &pb::AuthFailures) -> String {
    let mut text = format!("failed attempts in {} s:", c.period_ms.div_ceil(1000));
    for (i, count) in c.counts.iter().enumerate() {
        let sep = if i == 0 { " " } else { "; " };
        let _ = write!(
            text,
            "{sep}{} {:?} from {}: {}",
            count.attempt, count.name, count.source, count.count
        );
    }
    if c.other_attempts > 0 {
        let _ = write!(
            text,
            "; {} more from {} other source(s)",
            c.other_attempts, c.other_sources
        );
    }
    text
}

/// `text` cut to at most `chars_max` characters (an ellipsis says it was cut).
pub(crate) fn bounded(text: String, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        None => text,
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Kind};

    fn count(source: &str, attempt: &str, name: &str, n: u64) -> pb::AuthFailureCount {
        pb::AuthFailureCount {
            source: source.into(),
            attempt: attempt.into(),
            name: name.into(),
            count: n,
        }
    }

    fn apply(state: &mut StateMachine, summary: pb::AuthFailures) -> Outcome {
        state.apply(&Command {
            now_ms: 1_000,
            actor: "node:b1".into(),
            source: String::new(),
            kind: Some(Kind::AuthFailures(summary)),
        })
    }

    #[test]
    fn a_summary_is_one_audit_record_and_counts_for_its_users() {
        let mut state = StateMachine::default();
        let alice = Kind::AddUser(pb::AddUser {
            name: "alice".into(),
            groups: vec!["staff".into()],
            password_hash: "$argon2id$fake".into(),
        });
        state.apply(&Command {
            now_ms: 1,
            actor: "admin".into(),
            source: String::new(),
            kind: Some(alice),
        });
        let before = state.audit.len();
        let summary = pb::AuthFailures {
            node: "b1".into(),
            period_ms: 60_000,
            counts: vec![
                count("192.0.2.1", "enroll", INVALID_NAME, 20_000),
                count("192.0.2.1", "login", "alice", 5_000),
                count("2001:db8::/64", "resume", "7", 3),
            ],
            other_attempts: 12,
            other_sources: 2,
        };
        assert_eq!(apply(&mut state, summary), Outcome::Applied);
        assert_eq!(state.audit.len(), before + 1);
        let record = state.audit.back().unwrap();
        assert_eq!(record.action, "auth.failures");
        assert_eq!(
            record.outcome,
            "failed attempts in 60 s: enroll \"(invalid name)\" from 192.0.2.1: 20000; \
             login \"alice\" from 192.0.2.1: 5000; resume \"7\" from 2001:db8::/64: 3; \
             12 more from 2 other source(s)"
        );
        assert_eq!(state.user("alice").unwrap().failed_logins, 5_000);
    }

    #[test]
    fn oversized_summaries_are_refused() {
        let mut state = StateMachine::default();
        let check = |counts: Vec<pb::AuthFailureCount>, expected: &str| {
            let mut state = StateMachine::default();
            let summary = pb::AuthFailures {
                node: "b1".into(),
                counts,
                ..Default::default()
            };
            match apply(&mut state, summary) {
                Outcome::Refused(r) => assert!(r.message.contains(expected), "{}", r.message),
                other => panic!("expected a refusal with {expected:?}, got {other:?}"),
            }
        };
        check(
            vec![count("192.0.2.1", "login", "a", 1); AUTH_FAILURE_COUNTS_MAX + 1],
            "at most 16",
        );
        check(vec![count("", "login", "a", 1)], "no source");
        check(vec![count("192.0.2.1", "dance", "a", 1)], "unknown attempt");
        check(
            vec![count("192.0.2.1", "login", &"x".repeat(65), 1)],
            "too long a name",
        );
        assert_eq!(
            apply(
                &mut state,
                pb::AuthFailures {
                    node: "b1".into(),
                    ..Default::default()
                }
            ),
            Outcome::Applied
        );
    }

    #[test]
    fn bounded_cuts_at_a_character() {
        assert_eq!(bounded("abc".into(), 3), "abc");
        assert_eq!(bounded("abcd".into(), 3), "abc…");
        assert_eq!(bounded("ééé".into(), 2), "éé…");
    }
}
