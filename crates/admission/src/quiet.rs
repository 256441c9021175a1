//! At most one log line per reason and period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Decides whether a repeated event is logged now: the first of each reason is, then at most
/// one per `period`, which says how many were left unlogged in between. (The metrics count
/// every one; the log only has to tell an operator that it happens.)
#[derive(Debug)]
pub struct Quiet {
    period: Duration,
    /// Per reason (a static label, so the map is bounded by the code): when it was last
    /// logged, and how many went unlogged since.
    reasons: HashMap<&'static str, (Instant, u64)>,
}

impl Quiet {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            reasons: HashMap::new(),
        }
    }

    /// `Some(unlogged since the last line)` when this event is to be logged.
    pub fn log(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.reasons.get_mut(reason) {
            None => {
                self.reasons.insert(reason, (now, 0));
                Some(0)
            }
            Some((last, unlogged)) if now.saturating_duration_since(*last) >= self.period => {
                let was = std::mem::take(unlogged);
                *last = now;
                Some(was)
            }
            Some((_, unlogged)) => {
                *unlogged += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_and_period() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut q = Quiet::new(10 * second);
        assert_eq!(q.log("a", t0), Some(0));
        assert_eq!(q.log("b", t0), Some(0), "reasons are apart");
        for _ in 0..99 {
            assert_eq!(q.log("a", t0 + second), None);
        }
        assert_eq!(q.log("a", t0 + 10 * second), Some(99));
        assert_eq!(q.log("a", t0 + 11 * second), None);
    }
}
