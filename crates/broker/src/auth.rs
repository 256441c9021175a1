//! Secrets and passwords at the edge of the state machine: hashing (salted, so never inside
//! the deterministic state machine), random secrets, and login throttling.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes, as OWASP advises).
/// Shortest password accepted; longer is better, but a floor stops accidents like an empty one.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted; bounds the argon2 input (and the request) sensibly.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// What is wrong with `password` as a new password, if anything.
pub fn new_password_problem(password: &str) -> Option<String> {
    (password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX).then(
        || {
            format!(
                "the password must be {PASSWORD_CHARS_MIN} to {PASSWORD_BYTES_MAX} characters long"
            )
        },
    )
}

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a stored PHC hash. A malformed stored hash never verifies.
pub fn verify_password(stored_hash: &str, password: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A valid argon2id hash of a random password, computed once: verifying against it costs what
/// verifying a real user's password costs, and never succeeds.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&new_secret())
            .expect("hashing a random password with default parameters succeeds")
    })
}

/// A new 256-bit random secret, hex-encoded (login tokens, enrollment tokens, credentials).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Most keys each throttle table remembers; beyond it, expired entries are swept and, if still
/// full, new keys are tracked no further (their failures still count per source or user).
const THROTTLE_KEYS_MAX: usize = 100_000;

/// Counts failed logins per user and per source address and locks either out for a while once
/// it reaches the limit. Time is an input, so the rules are tested without a clock.
pub struct LoginThrottle {
    by_user: Window<String>,
    by_source: Window<IpAddr>,
}

/// Failures per key within the lockout period.
struct Window<K> {
    failures_max: u32,
    lockout: Duration,
    entries: HashMap<K, (u32, Instant)>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    fn new(failures_max: u32, lockout: Duration) -> Self {
        Self {
            failures_max,
            lockout,
            entries: HashMap::new(),
        }
    }

    fn locked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let (count, last) = self.entries.get(key)?;
        let until = *last + self.lockout;
        (*count >= self.failures_max && until > now).then(|| until - now)
    }

    fn fail(&mut self, key: &K, now: Instant) {
        if self.entries.len() >= THROTTLE_KEYS_MAX && !self.entries.contains_key(key) {
            let lockout = self.lockout;
            self.entries.retain(|_, (_, last)| *last + lockout > now);
            if self.entries.len() >= THROTTLE_KEYS_MAX {
                return;
            }
        }
        let entry = self.entries.entry(key.clone()).or_insert((0, now));
        if entry.1 + self.lockout <= now {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
    }
}

impl LoginThrottle {
    pub fn new(failures_max: u32, lockout: Duration) -> Self {
        // A source (one address, possibly a NAT of a whole school) gets more room than a user.
        Self {
            by_user: Window::new(failures_max, lockout),
            by_source: Window::new(failures_max.saturating_mul(4), lockout),
        }
    }

    /// `Err` with a reason when this attempt must be refused without checking the password.
    pub fn check(&self, user: &str, source: IpAddr, now: Instant) -> Result<(), String> {
        if let Some(left) = self.by_user.locked_for(&user.to_owned(), now) {
            return Err(format!(
                "too many failed logins for user {user:?}; try again in {} s",
                left.as_secs() + 1
            ));
        }
        if let Some(left) = self.by_source.locked_for(&source, now) {
            return Err(format!(
                "too many failed logins from {source}; try again in {} s",
                left.as_secs() + 1
            ));
        }
        Ok(())
    }

    pub fn record_failure(&mut self, user: &str, source: IpAddr, now: Instant) {
        self.by_user.fail(&user.to_owned(), now);
        self.by_source.fail(&source, now);
    }

    pub fn record_success(&mut self, user: &str) {
        self.by_user.entries.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert!(dummy_password_hash().starts_with("$argon2id$"));
        assert!(!verify_password(dummy_password_hash(), ""));
    }

    #[test]
    fn throttle_locks_a_user_then_forgets() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut t = LoginThrottle::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(t.check("alice", ip, t0).is_ok());
            t.record_failure("alice", ip, t0);
        }
        let err = t.check("alice", other, t0).unwrap_err();
        assert!(err.contains("too many failed logins for user"), "{err}");
        assert!(
            t.check("bob", other, t0).is_ok(),
            "other users are unaffected"
        );
        assert!(
            t.check("alice", ip, t0 + Duration::from_secs(61)).is_ok(),
            "lockout ends"
        );
        // Many users from one source lock the source.
        for i in 0..12 {
            t.record_failure(&format!("u{i}"), ip, t0);
        }
        let err = t.check("carol", ip, t0).unwrap_err();
        assert!(err.contains("from 192.0.2.1"), "{err}");
    }
}
