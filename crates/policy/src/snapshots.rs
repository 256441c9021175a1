//! When the leader gives up on a snapshot it sent and sends it again.
//!
//! raft-rs holds a peer in "snapshot" state, sending it nothing else, until the peer answers
//! the snapshot or the application reports how its delivery went. Ferry's transport does not
//! report it, and an answer lost with a dropped connection (a peer that just rejoined or
//! restarted) would leave the peer stuck for good: a snapshot unanswered for `answer_max_ms`
//! is reported failed, and raft-rs probes the peer again.

use std::collections::BTreeMap;

/// The leader's memory of the snapshots it is sending, by peer: since when (ms).
#[derive(Debug, Clone, Default)]
pub struct SnapshotRetry {
    answer_max_ms: u64,
    /// Since when each peer has been in snapshot state without answering; bounded by the
    /// number of peers (entries of peers no longer snapshotting are dropped on every check).
    since_ms: BTreeMap<u64, u64>,
}

impl SnapshotRetry {
    /// A snapshot unanswered for `answer_max_ms` is given up and sent again.
    pub fn new(answer_max_ms: u64) -> Self {
        Self {
            answer_max_ms,
            since_ms: BTreeMap::new(),
        }
    }

    /// Called now and then with the peers the leader is sending a snapshot to (`snapshotting`,
    /// empty on a follower): returns the peers whose snapshot to report failed now.
    pub fn due(&mut self, now_ms: u64, is_leader: bool, snapshotting: &[u64]) -> Vec<u64> {
        if !is_leader {
            self.since_ms.clear();
            return Vec::new();
        }
        self.since_ms.retain(|id, _| snapshotting.contains(id));
        let mut due = Vec::new();
        for &id in snapshotting {
            let since = *self.since_ms.entry(id).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.answer_max_ms {
                due.push(id);
                self.since_ms.remove(&id);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_retry_steps() {
        /// (case, now ms, leads, snapshotting, expected due).
        type Step = (&'static str, u64, bool, &'static [u64], &'static [u64]);
        let steps: &[Step] = &[
            ("first seen sending to 2", 0, true, &[2], &[]),
            ("not yet", 4_999, true, &[2], &[]),
            ("3 starts later", 4_999, true, &[2, 3], &[]),
            ("2 is due at the limit", 5_000, true, &[2, 3], &[2]),
            (
                "2 sent again: its clock restarts",
                5_001,
                true,
                &[2, 3],
                &[],
            ),
            (
                "3 due five seconds after it started",
                9_999,
                true,
                &[2, 3],
                &[3],
            ),
            ("2 answered: forgotten", 10_000, true, &[3], &[]),
            ("2 again: a new clock", 10_001, true, &[2, 3], &[]),
            ("a follower forgets everything", 20_000, false, &[], &[]),
            (
                "leading again: clocks start over",
                20_001,
                true,
                &[2, 3],
                &[],
            ),
            ("due together", 25_001, true, &[2, 3], &[2, 3]),
        ];
        let mut retry = SnapshotRetry::new(5_000);
        for (case, now_ms, leads, sending, expected) in steps {
            assert_eq!(retry.due(*now_ms, *leads, sending), *expected, "{case}");
        }
    }
}
