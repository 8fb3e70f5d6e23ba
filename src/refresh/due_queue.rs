//! A time-ordered set of keys, each due at one instant: the shared core of the refresh
//! scheduler and the staleness timer. Re-inserting a key moves it instead of duplicating it.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::ProviderKey;

/// Providers ordered by the instant something is due for them.
#[derive(Debug, Default)]
pub struct DueQueue {
    due: BTreeSet<(DateTime<Utc>, ProviderKey)>,
    due_at: HashMap<ProviderKey, DateTime<Utc>>,
}

impl DueQueue {
    /// Sets `key` due at `at`, replacing any earlier entry for it.
    pub fn insert(&mut self, key: ProviderKey, at: DateTime<Utc>) {
        if let Some(previous) = self.due_at.insert(key.clone(), at) {
            self.due.remove(&(previous, key.clone()));
        }
        self.due.insert((at, key));
    }

    /// Drops `key`.
    pub fn remove(&mut self, key: &ProviderKey) {
        if let Some(at) = self.due_at.remove(key) {
            self.due.remove(&(at, key.clone()));
        }
    }

    /// The earliest due instant.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Takes the earliest key if it is due at `now`.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<ProviderKey> {
        if self.next_due()? > now {
            return None;
        }
        let (_, key) = self.due.pop_first()?;
        self.due_at.remove(&key);
        Some(key)
    }

    /// Number of keys queued.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn key(name: &str) -> ProviderKey {
        ProviderKey::parse("t", name).unwrap()
    }

    #[test]
    fn keys_pop_in_time_order_and_only_when_due() {
        let now = Utc::now();
        let mut queue = DueQueue::default();
        queue.insert(key("late"), now + Duration::seconds(20));
        queue.insert(key("early"), now + Duration::seconds(10));
        assert_eq!(queue.next_due(), Some(now + Duration::seconds(10)));
        assert_eq!(queue.pop_due(now), None);
        let later = now + Duration::seconds(30);
        assert_eq!(queue.pop_due(later), Some(key("early")));
        assert_eq!(queue.pop_due(later), Some(key("late")));
        assert_eq!(queue.pop_due(later), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn re_inserting_moves_a_key_instead_of_duplicating_it() {
        let now = Utc::now();
        let mut queue = DueQueue::default();
        queue.insert(key("a"), now);
        queue.insert(key("a"), now + Duration::seconds(60));
        assert_eq!(queue.pop_due(now), None);
        assert_eq!(queue.len(), 1);
        queue.remove(&key("a"));
        assert!(queue.is_empty());
    }
}
