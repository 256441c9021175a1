//! The login rules: which password attempts may be verified at all.
//!
//! Three keys are counted, and checked in this order: the source (every user tried from one
//! address), the source and user together, and the user (from anywhere). An attempt is
//! *reserved* before its password is verified: it counts as a failure from that moment, and
//! is forgiven only when it succeeds. So attempts racing each other cannot slip past the
//! limit (no check-then-act), and a broker that dies mid-verification leaves the failure
//! counted, never lost.
//!
//! The source-and-user limit is the tight one (`failures_max`): one address gets that many
//! guesses at one user before a lockout. The user limit is wider (`user_failures_max`, which
//! must exceed it), so that an attacker at one address locks *that address* out of the user,
//! never the user out of every other address; only guesses from several addresses lock the
//! user itself. The source limit (`source_failures_max`) bounds spraying many users from one
//! address. The trade-off is written down in docs/SECURITY.md.

use crate::backoff::{Backoff, BackoffPolicy};
use crate::source::SourceKey;
use std::time::{Duration, Instant};

/// The configured limits (the broker's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures of one user from one source before that pair is locked out.
    pub failures_max: u32,
    /// Failures of one user from anywhere before the user is locked out; more than
    /// `failures_max`.
    pub user_failures_max: u32,
    /// Failures from one source, whatever the user, before the source is locked out.
    pub source_failures_max: u32,
    /// The first lockout; each further one in a row lasts twice as long.
    pub lockout: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
}

impl LoginLimits {
    /// What is wrong with these limits, if anything (a sentence for the config check).
    pub fn problem(&self) -> Option<String> {
        if self.failures_max == 0 || self.lockout.is_zero() {
            return Some("login failures and lockout must be positive".into());
        }
        if self.user_failures_max <= self.failures_max {
            return Some(format!(
                "limits.login_user_failures_max ({}) must be greater than \
                 limits.login_failures_max ({}): otherwise guesses from one address lock the \
                 user out of every address",
                self.user_failures_max, self.failures_max
            ));
        }
        if self.source_failures_max < self.failures_max {
            return Some(format!(
                "limits.login_source_failures_max ({}) must be at least \
                 limits.login_failures_max ({})",
                self.source_failures_max, self.failures_max
            ));
        }
        if self.lockout_max < self.lockout {
            return Some(
                "limits.login_lockout_max_secs must be at least login_lockout_secs".into(),
            );
        }
        None
    }

    fn policy(&self, failures_max: u32) -> BackoffPolicy {
        BackoffPolicy {
            failures_max,
            lockout: self.lockout,
            lockout_max: self.lockout_max,
        }
    }
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Source,
    SourceAndUser,
    User,
}

impl Scope {
    /// The label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Source => "source",
            Scope::SourceAndUser => "source_user",
            Scope::User => "user",
        }
    }
}

/// An attempt refused without verifying its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRefusal {
    pub scope: Scope,
    pub retry_after: Duration,
    /// For the person at the keyboard.
    pub message: String,
}

/// The login rules' state (see the module's documentation).
#[derive(Debug)]
pub struct LoginLimiter {
    by_source: Backoff<SourceKey>,
    by_source_user: Backoff<(SourceKey, String)>,
    by_user: Backoff<String>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            by_source: Backoff::new(limits.policy(limits.source_failures_max)),
            by_source_user: Backoff::new(limits.policy(limits.failures_max)),
            by_user: Backoff::new(limits.policy(limits.user_failures_max)),
        }
    }

    /// Reserves one attempt of `user` from `source`: `Ok` when its password may be verified
    /// (the attempt now counts as a failure until [`LoginLimiter::succeeded`]), or why not.
    pub fn reserve(
        &mut self,
        user: &str,
        source: SourceKey,
        now: Instant,
    ) -> Result<(), LoginRefusal> {
        let pair = (source, user.to_owned());
        let refuse = |scope, retry_after: Duration, message: String| {
            Err(LoginRefusal {
                scope,
                retry_after,
                message: format!("{message}; try again in {} s", retry_after.as_secs() + 1),
            })
        };
        if let Some(left) = self.by_source.locked_for(&source, now) {
            return refuse(
                Scope::Source,
                left,
                format!("too many failed logins from {source}"),
            );
        }
        if let Some(left) = self.by_source_user.locked_for(&pair, now) {
            return refuse(
                Scope::SourceAndUser,
                left,
                format!("too many failed logins for user {user:?} from {source}"),
            );
        }
        if let Some(left) = self.by_user.locked_for(&pair.1, now) {
            return refuse(
                Scope::User,
                left,
                format!("too many failed logins for user {user:?} from several addresses"),
            );
        }
        self.by_source.fail(&source, now);
        self.by_source_user.fail(&pair, now);
        self.by_user.fail(&pair.1, now);
        Ok(())
    }

    /// The reserved attempt of `user` from `source` verified: its failure is taken back, and
    /// the user's and the pair's histories are forgotten.
    pub fn succeeded(&mut self, user: &str, source: SourceKey) {
        self.by_source.forgive_one(&source);
        self.by_source_user.clear(&(source, user.to_owned()));
        self.by_user.clear(&user.to_owned());
    }

    /// Keys tracked, and new keys left untracked because a map was full.
    pub fn tracked(&self) -> (usize, u64) {
        (
            self.by_source.len() + self.by_source_user.len() + self.by_user.len(),
            self.by_source.untracked() + self.by_source_user.untracked() + self.by_user.untracked(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn limits() -> LoginLimits {
        LoginLimits {
            failures_max: 3,
            user_failures_max: 5,
            source_failures_max: 8,
            lockout: 60 * SECOND,
            lockout_max: 3600 * SECOND,
        }
    }

    fn source(s: &str) -> SourceKey {
        SourceKey::of(s.parse().unwrap())
    }

    /// Runs attempts `(user, source, password right)` at `t0` and returns the scope that
    /// refused each (`None`: verified).
    fn check(attempts: &[(&str, &str, bool)], expected: &[Option<Scope>]) {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(limits());
        for (i, &(user, from, right)) in attempts.iter().enumerate() {
            let got = l.reserve(user, source(from), t0).err().map(|r| r.scope);
            assert_eq!(got, expected[i], "attempt {i}: {user} from {from}");
            if got.is_none() && right {
                l.succeeded(user, source(from));
            }
        }
    }

    #[test]
    fn one_address_cannot_lock_a_user_out_of_others() {
        use Scope::*;
        let a = "192.0.2.1";
        let b = "198.51.100.2";
        check(
            &[
                ("alice", a, false),
                ("alice", a, false),
                ("alice", a, false),
                ("alice", a, false),
                ("alice", a, false),
                // alice from elsewhere, bob from the same address.
                ("alice", b, true),
                ("bob", a, true),
            ],
            &[
                None,
                None,
                None,
                Some(SourceAndUser),
                Some(SourceAndUser),
                None,
                None,
            ],
        );
    }

    #[test]
    fn guesses_from_several_addresses_lock_the_user() {
        use Scope::*;
        check(
            &[
                ("alice", "192.0.2.1", false),
                ("alice", "192.0.2.1", false),
                ("alice", "192.0.2.2", false),
                ("alice", "192.0.2.2", false),
                ("alice", "192.0.2.3", false),
                ("alice", "192.0.2.4", true),
                ("bob", "192.0.2.4", true),
            ],
            &[None, None, None, None, None, Some(User), None],
        );
    }

    #[test]
    fn spraying_users_from_one_address_locks_the_address() {
        use Scope::*;
        let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        let attempts: Vec<(&str, &str, bool)> = users
            .iter()
            .map(|u| (u.as_str(), "2001:db8::1", false))
            .chain([
                ("carol", "2001:db8::ffff", true),
                ("carol", "2001:db9::1", true),
            ])
            .collect();
        let mut expected = vec![None; 8];
        expected.extend([Some(Source), Some(Source), Some(Source), None]);
        check(&attempts, &expected);
    }

    #[test]
    fn a_success_forgives_its_reservation() {
        // Many right passwords in a row never lock anyone out.
        let attempts = vec![("alice", "192.0.2.1", true); 50];
        check(&attempts, &[None; 50]);
    }

    #[test]
    fn racing_attempts_cannot_pass_the_limit() {
        // Reserved before verifying: a burst of concurrent attempts gets `failures_max`.
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(limits());
        let reserved = (0..5000)
            .filter(|_| l.reserve("alice", source("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(reserved, 3);
        let refusal = l.reserve("alice", source("192.0.2.1"), t0).unwrap_err();
        assert_eq!(
            refusal.message,
            "too many failed logins for user \"alice\" from 192.0.2.1; try again in 61 s"
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(limits().problem(), None);
        let same = LoginLimits {
            user_failures_max: 3,
            ..limits()
        };
        assert!(same.problem().unwrap().contains("lock the user out"));
    }
}
