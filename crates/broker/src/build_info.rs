//! Which build this is: the package version and the git commit (crates/broker/build.rs).

/// The release version (the workspace's `version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the build comes from (12 hex digits), or "unknown".
pub const REVISION: &str = env!("FERRY_REVISION");

/// `VERSION (REVISION)`: what nodes report to each other, `ferry admin status` shows and
/// `ferry --version` prints.
pub const VERSION_LONG: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_REVISION"), ")");

/// [`VERSION_LONG`] as a `String`.
pub fn describe() -> String {
    VERSION_LONG.to_owned()
}
