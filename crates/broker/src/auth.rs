//! Secrets and passwords at the edge of the state machine: hashing (salted, so never inside
//! the deterministic state machine) and random secrets. Login limits are `admission.rs`'s.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;

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
}
