//! A time-ordered set of keys, each due at one instant: the shared core of the refresh
//! scheduler and the staleness timer. Re-inserting a key moves it instead of duplicating it.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::ProviderKey;

/// An instant as nanoseconds since the Unix epoch: 8 bytes where a `DateTime<Utc>` takes
/// 12, so an entry of the two queues every provider is in is 16 bytes with its key (a
/// pointer), not 24. Instants past 2262 (or before 1677) are held as the last (first) one
/// that fits; keyrelay computes none, as lifetimes are capped by `max_ttl`.
type Nanos = i64;

fn nanos(at: DateTime<Utc>) -> Nanos {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        Nanos::MIN
    } else {
        Nanos::MAX
    })
}

/// Providers ordered by the instant something is due for them.
#[derive(Debug, Default)]
pub struct DueQueue {
    due: BTreeSet<(Nanos, ProviderKey)>,
    due_at: HashMap<ProviderKey, Nanos>,
}

impl DueQueue {
    /// Sets `key` due at `at`, replacing any earlier entry for it.
    pub fn insert(&mut self, key: ProviderKey, at: DateTime<Utc>) {
        let at = nanos(at);
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
        self.due
            .first()
            .map(|(at, _)| DateTime::from_timestamp_nanos(*at))
    }

    /// Takes the earliest key if it is due at `now`.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<ProviderKey> {
        if self.due.first()?.0 > nanos(now) {
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
    fn due_instants_keep_their_nanoseconds_and_far_ones_stay_last() {
        let now = Utc::now();
        let exact = now + Duration::nanoseconds(1);
        let mut queue = DueQueue::default();
        queue.insert(key("never"), DateTime::<Utc>::MAX_UTC);
        queue.insert(key("soon"), exact);
        assert_eq!(queue.next_due(), Some(exact));
        assert_eq!(queue.pop_due(now), None);
        assert_eq!(queue.pop_due(exact), Some(key("soon")));
        assert_eq!(queue.pop_due(now + Duration::days(365)), None);
        assert_eq!(queue.len(), 1);
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
