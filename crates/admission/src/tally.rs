//! Counts per key under a cap: connections per source, sessions per user or host.

use std::collections::HashMap;
use std::hash::Hash;

/// How many of something each key holds now, each at most `max_per_key`. A key leaves the
/// map when its count returns to zero, so the map holds only keys that hold something (it is
/// bounded by whatever bounds the things counted).
#[derive(Debug)]
pub struct Tally<K> {
    max_per_key: usize,
    counts: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone> Tally<K> {
    pub fn new(max_per_key: usize) -> Self {
        Self {
            max_per_key,
            counts: HashMap::new(),
        }
    }

    /// Counts one more for `key`, unless it already holds `max_per_key`.
    pub fn try_add(&mut self, key: &K) -> bool {
        let count = self.counts.entry(key.clone()).or_insert(0);
        if *count >= self.max_per_key {
            return false;
        }
        *count += 1;
        true
    }

    /// Counts one less for `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(count) = self.counts.get_mut(key) {
            debug_assert!(*count > 0, "a key in the tally holds something");
            *count -= 1;
            if *count == 0 {
                self.counts.remove(key);
            }
        }
    }

    /// What `key` holds now.
    pub fn get(&self, key: &K) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// Keys holding anything.
    pub fn keys(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_key_and_forgets_empty_keys() {
        let mut t = Tally::new(2);
        assert!(t.try_add(&"a"));
        assert!(t.try_add(&"a"));
        assert!(!t.try_add(&"a"), "a holds its maximum");
        assert!(t.try_add(&"b"), "other keys are unaffected");
        t.remove(&"a");
        assert!(t.try_add(&"a"), "room again");
        t.remove(&"a");
        t.remove(&"a");
        t.remove(&"b");
        assert_eq!(t.keys(), 0);
        assert_eq!(t.get(&"a"), 0);
    }
}
