//! Failures per key, and lockouts that double on each repeat.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most keys one [`Backoff`] remembers. Beyond it, keys idle past `lockout_max` are swept; if
/// it is still full, new keys are not tracked (the caller's coarser keys still count them).
pub const BACKOFF_KEYS_MAX: usize = 100_000;

/// The rule of one [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures allowed before the key is locked out.
    pub failures_max: u32,
    /// The first lockout; each further one in a row lasts twice as long as the one before.
    pub lockout: Duration,
    /// The longest lockout; also how long a key must stay quiet for its history to be
    /// forgotten.
    pub lockout_max: Duration,
}

/// One key's history.
#[derive(Debug, Clone)]
struct Entry {
    /// Failures since the last lockout (or since the history was forgotten).
    failures: u32,
    /// Lockouts in a row: the next one lasts `lockout * 2^lockouts`.
    lockouts: u32,
    /// The last failure, to forget a key that has stayed quiet.
    last: Instant,
    /// Refused until then.
    locked_until: Option<Instant>,
}

/// Counts failures per key; after `failures_max` of them the key is locked out for
/// `lockout`, then `2 * lockout` after the next `failures_max`, and so on up to `lockout_max`.
/// A key quiet for `lockout` (unlocked) starts counting failures from zero again; one quiet
/// for `lockout_max` also forgets its lockouts.
#[derive(Debug)]
pub struct Backoff<K> {
    policy: BackoffPolicy,
    entries: HashMap<K, Entry>,
    /// New keys not tracked because the map was full (a metric for the node).
    untracked: u64,
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            untracked: 0,
        }
    }

    /// How long `key` stays locked out, if it is.
    pub fn locked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one failure of `key`; returns the lockout it started, if it started one.
    pub fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if !self.entries.contains_key(key) && !self.room(now) {
            self.untracked += 1;
            return None;
        }
        let policy = self.policy;
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            lockouts: 0,
            last: now,
            locked_until: None,
        });
        let quiet = now.saturating_duration_since(entry.last);
        let unlocked = entry.locked_until.is_none_or(|until| until <= now);
        if unlocked && quiet >= policy.lockout_max {
            entry.lockouts = 0;
        }
        if unlocked && quiet >= policy.lockout {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last = now;
        if entry.failures < policy.failures_max {
            return None;
        }
        let lockout = policy
            .lockout
            .saturating_mul(1u32 << entry.lockouts.min(20))
            .min(policy.lockout_max);
        entry.failures = 0;
        entry.lockouts = entry.lockouts.saturating_add(1);
        entry.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// Takes back one failure of `key` (an attempt counted in advance that succeeded). A
    /// lockout already started stays.
    pub fn forgive_one(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures = entry.failures.saturating_sub(1);
        }
    }

    /// Forgets `key` entirely (its owner proved itself).
    pub fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// New keys left untracked so far because the map was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Whether a new key fits, after sweeping keys whose history is forgotten anyway.
    fn room(&mut self, now: Instant) -> bool {
        if self.entries.len() < BACKOFF_KEYS_MAX {
            return true;
        }
        let forget = self.policy.lockout_max;
        self.entries.retain(|_, e| {
            e.locked_until.is_some_and(|until| until > now)
                || now.saturating_duration_since(e.last) < forget
        });
        self.entries.len() < BACKOFF_KEYS_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            failures_max: 3,
            lockout: 60 * SECOND,
            lockout_max: 600 * SECOND,
        }
    }

    /// One step of a table: at `at_s` seconds, `fail` (or only look), and expect the lockout
    /// that remains afterwards, in whole seconds.
    fn check(steps: &[(u64, bool, Option<u64>)]) {
        let t0 = Instant::now();
        let mut b = Backoff::new(policy());
        for (i, &(at_s, fail, expected)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_secs(at_s);
            if fail {
                b.fail(&"k", now);
            }
            let left = b.locked_for(&"k", now).map(|d| d.as_secs());
            assert_eq!(left, expected, "step {i} at {at_s} s");
        }
    }

    #[test]
    fn lockouts_start_after_the_limit_and_double() {
        check(&[
            (0, true, None),
            (1, true, None),
            (2, true, Some(60)),
            (30, false, Some(32)),
            (62, false, None),
            // Right after the lockout: the next run of failures locks for twice as long.
            (63, true, None),
            (64, true, None),
            (65, true, Some(120)),
            (186, true, None),
            (187, true, None),
            (188, true, Some(240)),
        ]);
    }

    #[test]
    fn quiet_keys_are_forgiven() {
        check(&[
            (0, true, None),
            (1, true, None),
            // Quiet for a lockout period: the count starts over.
            (61, true, None),
            (62, true, None),
            (63, true, Some(60)),
            // Quiet for the longest lockout: the doubling starts over too.
            (63 + 60 + 600, true, None),
            (63 + 60 + 601, true, None),
            (63 + 60 + 602, true, Some(60)),
        ]);
    }

    #[test]
    fn lockouts_stop_growing_at_the_maximum() {
        let t0 = Instant::now();
        let mut b = Backoff::new(policy());
        let mut now = t0;
        let mut last = None;
        for _ in 0..40 {
            for _ in 0..3 {
                last = b.fail(&1u8, now).or(last);
            }
            now += b.locked_for(&1u8, now).unwrap_or_default();
        }
        assert_eq!(last, Some(600 * SECOND));
    }

    #[test]
    fn clear_and_forgive() {
        let t0 = Instant::now();
        let mut b = Backoff::new(policy());
        b.fail(&"a", t0);
        b.fail(&"a", t0);
        b.forgive_one(&"a");
        assert_eq!(b.fail(&"a", t0), None, "one failure was taken back");
        assert_eq!(b.fail(&"a", t0), Some(60 * SECOND));
        b.clear(&"a");
        assert_eq!(b.locked_for(&"a", t0), None);
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_map_stops_tracking_new_keys() {
        let t0 = Instant::now();
        let mut b = Backoff::new(policy());
        for k in 0..BACKOFF_KEYS_MAX {
            b.fail(&k, t0);
        }
        b.fail(&usize::MAX, t0);
        assert_eq!(b.len(), BACKOFF_KEYS_MAX);
        assert_eq!(b.untracked(), 1);
        // Once the old keys are forgotten, there is room again.
        b.fail(&usize::MAX, t0 + 601 * SECOND);
        assert_eq!(b.len(), 1);
    }
}
