//! What a broker decides about peers that have not proved who they are, as pure data
//! structures: time comes in as `now: Instant`, nothing here performs IO, reads a clock, locks
//! or spawns a task, so every rule is table-tested.
//!
//! - [`SourceKey`]: the unit a source is counted in (an IPv4 address, an IPv6 /64).
//! - [`Backoff`]: failures per key, and lockouts that double on each repeat.
//! - [`LoginLimiter`]: the login rules (per source, per source and user, per user; checked in
//!   that order, and reserved before the password is verified).
//! - [`FailureLedger`]: failed anonymous attempts counted per source, attempt and name over a
//!   period, so that the cluster audits one bounded record per node and period, not one per
//!   attempt.
//! - [`Tally`]: counts per key under a cap (connections per source, sessions per user).
//! - [`Quiet`]: at most one log line per reason and period.
//!
//! Architecture invariant: every map here has a named bound; a full map stops tracking new
//! keys (and says so) rather than growing.

#![forbid(unsafe_code)]

mod backoff;
mod ledger;
mod login;
mod quiet;
mod source;
mod tally;

pub use backoff::{Backoff, BackoffPolicy, BACKOFF_KEYS_MAX};
pub use ledger::SUMMARY_COUNTS_MAX;
pub use ledger::{Attempt, FailureCount, FailureLedger, FailureSummary, LEDGER_KEYS_MAX};
pub use login::{LoginLimiter, LoginLimits, LoginRefusal, Scope};
pub use quiet::Quiet;
pub use source::SourceKey;
pub use tally::Tally;
