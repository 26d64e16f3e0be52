//! Answers by (name, type, class), each kept for its TTL (bounded by `max_ttl`), at most
//! `capacity` of them. When full, the entries past their time go first, then the oldest
//! eighth at once, so that eviction costs O(log n) per insert amortized, not a scan per
//! insert.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub qtype: String,
    pub qclass: String,
}

struct Entry<V> {
    value: V,
    stored: Instant,
    expires: Instant,
}

/// Values (an answer's bytes and what they say) by key.
pub struct Cache<V> {
    entries: HashMap<Key, Entry<V>>,
    capacity: usize,
    max_ttl: Duration,
}

/// Negative answers (NXDOMAIN, no data) are kept this long at most.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

impl<V: Clone> Cache<V> {
    pub fn new(capacity: usize, max_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            max_ttl,
        }
    }

    pub fn get(&mut self, key: &Key, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some(entry) if entry.expires > now => Some(entry.value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps an answer whose smallest TTL is `ttl` (None: a negative answer).
    pub fn put(&mut self, key: Key, value: V, ttl: Option<u32>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let ttl = ttl.map_or(NEGATIVE_TTL, |t| Duration::from_secs(u64::from(t)));
        let ttl = ttl.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                let mut by_age: Vec<(Instant, Key)> = self
                    .entries
                    .iter()
                    .map(|(k, e)| (e.stored, k.clone()))
                    .collect();
                by_age.sort_unstable_by_key(|(stored, _)| *stored);
                let evict = (self.capacity / 8).max(1);
                for (_, old) in by_age.into_iter().take(evict) {
                    self.entries.remove(&old);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                value,
                stored: now,
                expires: now + ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            name: name.to_owned(),
            qtype: "A".to_owned(),
            qclass: "IN".to_owned(),
        }
    }

    #[test]
    fn answers_expire_and_the_cache_stays_bounded() {
        let now = Instant::now();
        let mut cache = Cache::new(2, Duration::from_secs(60));
        cache.put(key("a"), vec![1], Some(5), now);
        assert_eq!(cache.get(&key("a"), now), Some(vec![1]));
        assert_eq!(cache.get(&key("a"), now + Duration::from_secs(6)), None);
        cache.put(key("b"), vec![2], Some(3600), now);
        cache.put(key("c"), vec![3], None, now + Duration::from_secs(1));
        cache.put(key("d"), vec![4], Some(10), now + Duration::from_secs(2));
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.get(&key("b"), now), None, "the oldest went");
        assert_eq!(
            cache.get(&key("c"), now + Duration::from_secs(2)),
            Some(vec![3])
        );
        // max_ttl caps a long TTL; a zero TTL is not cached.
        assert_eq!(
            cache.get(&key("d"), now + Duration::from_secs(3)),
            Some(vec![4])
        );
        cache.put(key("z"), vec![9], Some(0), now);
        assert_eq!(cache.get(&key("z"), now), None);
    }
}

#[cfg(test)]
mod bounded {
    use super::*;

    #[test]
    fn a_full_cache_evicts_an_eighth_of_the_oldest_at_once() {
        let now = Instant::now();
        let mut cache = Cache::new(80, Duration::from_secs(600));
        let key = |i: usize| Key {
            name: format!("q{i}.example"),
            qtype: "A".to_owned(),
            qclass: "IN".to_owned(),
        };
        for i in 0..80 {
            cache.put(
                key(i),
                vec![1],
                Some(600),
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(cache.entries.len(), 80);
        cache.put(key(80), vec![1], Some(600), now + Duration::from_secs(1));
        assert_eq!(cache.entries.len(), 71, "ten oldest gone, one added");
        assert!(cache.get(&key(9), now).is_none() && cache.get(&key(10), now).is_some());
        // The next nine inserts need no eviction.
        for i in 81..90 {
            cache.put(key(i), vec![1], Some(600), now + Duration::from_secs(1));
        }
        assert_eq!(cache.entries.len(), 80);
    }
}
