//! Failed attempts of anonymous peers, counted over a period for one audit record.
//!
//! A wrong enrollment token, a refused resume or a failed login is an attacker's cheapest
//! move. Proposing each one through Raft would let anyone without an account fill the
//! proposal queue and push real records out of the audit log. Instead each node counts them
//! here, per source, attempt and name, and once per period proposes one bounded summary.

use crate::source::SourceKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most (source, attempt, name) keys counted in one period; attempts beyond it are counted
/// only in the totals ("others").
pub const LEDGER_KEYS_MAX: usize = 4096;

/// Counts a summary lists by name; the rest are summed into `others`.
pub const SUMMARY_COUNTS_MAX: usize = 16;

/// What an anonymous peer attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attempt {
    /// A password that did not verify (or a user that does not exist).
    Login,
    /// An enrollment with a wrong, used or expired token, or an invalid name.
    Enroll,
    /// A resume with a wrong secret or an unknown session.
    Resume,
}

impl Attempt {
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Login => "login",
            Attempt::Enroll => "enroll",
            Attempt::Resume => "resume",
        }
    }
}

/// One line of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    pub source: SourceKey,
    pub attempt: Attempt,
    /// The user, host or session named (already validated by the caller; an invalid name is
    /// passed as a placeholder, never as the attacker's bytes).
    pub name: String,
    pub count: u64,
}

/// The failures of one period, largest counts first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSummary {
    pub period: Duration,
    /// At most [`SUMMARY_COUNTS_MAX`].
    pub counts: Vec<FailureCount>,
    /// Attempts not listed in `counts`, and how many distinct sources they came from (an
    /// estimate when the ledger was full: then at least one).
    pub other_attempts: u64,
    pub other_sources: u64,
}

/// Counts failures until [`FailureLedger::take_due`] hands them over.
#[derive(Debug)]
pub struct FailureLedger {
    period: Duration,
    started: Instant,
    counts: HashMap<(SourceKey, Attempt, String), u64>,
    /// Attempts that found the map full.
    overflow: u64,
}

impl FailureLedger {
    pub fn new(period: Duration, now: Instant) -> Self {
        Self {
            period,
            started: now,
            counts: HashMap::new(),
            overflow: 0,
        }
    }

    /// Counts one failed attempt.
    pub fn record(&mut self, source: SourceKey, attempt: Attempt, name: &str) {
        let key = (source, attempt, name.to_owned());
        if let Some(count) = self.counts.get_mut(&key) {
            *count += 1;
        } else if self.counts.len() < LEDGER_KEYS_MAX {
            self.counts.insert(key, 1);
        } else {
            self.overflow += 1;
        }
    }

    /// The period's summary once the period is over and anything was counted; the ledger
    /// starts a new period. `None` otherwise.
    pub fn take_due(&mut self, now: Instant) -> Option<FailureSummary> {
        if now.saturating_duration_since(self.started) < self.period {
            return None;
        }
        let period = now.saturating_duration_since(self.started);
        self.started = now;
        if self.counts.is_empty() && self.overflow == 0 {
            return None;
        }
        let mut all: Vec<FailureCount> = self
            .counts
            .drain()
            .map(|((source, attempt, name), count)| FailureCount {
                source,
                attempt,
                name,
                count,
            })
            .collect();
        // Largest first; ties in a fixed order so that a summary is reproducible.
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.source.cmp(&b.source))
                .then(a.attempt.cmp(&b.attempt))
                .then(a.name.cmp(&b.name))
        });
        let rest = all.split_off(all.len().min(SUMMARY_COUNTS_MAX));
        let mut other_sources: Vec<SourceKey> = rest.iter().map(|c| c.source).collect();
        other_sources.sort();
        other_sources.dedup();
        let overflow = std::mem::take(&mut self.overflow);
        Some(FailureSummary {
            period,
            counts: all,
            other_attempts: rest.iter().map(|c| c.count).sum::<u64>() + overflow,
            other_sources: other_sources.len() as u64 + u64::from(overflow > 0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn source(i: u32) -> SourceKey {
        SourceKey::of(std::net::Ipv4Addr::from(0xc000_0200 + i).into())
    }

    #[test]
    fn a_flood_becomes_one_bounded_summary_per_period() {
        let t0 = Instant::now();
        let mut ledger = FailureLedger::new(MINUTE, t0);
        for _ in 0..20_000 {
            ledger.record(source(1), Attempt::Enroll, "(invalid name)");
            ledger.record(source(1), Attempt::Resume, "7");
        }
        for i in 0..10_000 {
            ledger.record(source(2 + i % 30), Attempt::Login, &format!("u{i}"));
        }
        assert_eq!(ledger.take_due(t0 + MINUTE / 2), None, "not due yet");
        let summary = ledger.take_due(t0 + MINUTE).expect("due, and not empty");
        assert_eq!(summary.counts.len(), SUMMARY_COUNTS_MAX);
        assert_eq!(summary.counts[0].count, 20_000);
        assert_eq!(summary.counts[0].attempt, Attempt::Enroll);
        assert_eq!(summary.counts[1].attempt, Attempt::Resume);
        let listed: u64 = summary.counts.iter().map(|c| c.count).sum();
        assert_eq!(
            listed + summary.other_attempts,
            50_000,
            "every attempt counted"
        );
        assert_eq!(
            summary.other_sources, 31,
            "30 login sources and the overflow"
        );
        // The next period starts empty.
        assert_eq!(ledger.take_due(t0 + 2 * MINUTE), None);
    }

    #[test]
    fn quiet_periods_propose_nothing() {
        let t0 = Instant::now();
        let mut ledger = FailureLedger::new(MINUTE, t0);
        assert_eq!(ledger.take_due(t0 + 10 * MINUTE), None);
        ledger.record(source(1), Attempt::Login, "alice");
        let summary = ledger.take_due(t0 + 11 * MINUTE).unwrap();
        assert_eq!(summary.period, MINUTE);
        assert_eq!(summary.other_attempts, 0);
        assert_eq!(summary.other_sources, 0);
    }
}
