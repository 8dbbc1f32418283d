//! The one kind of memory the PEP 768 reader keeps between calls: a map of
//! bounded size that, when full, forgets the half of its entries used
//! least recently (what `elf.rs` remembers of files, and `probe.rs` of
//! processes).

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` values by key; when a new key comes and it is full,
/// the half of the entries read or written least recently is forgotten
/// (one sort of the ages per half emptied, not one per insertion).
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    entries: HashMap<K, Entry<V>>,
    capacity: usize,
    /// Counts reads and writes: an entry's age is when it was last used.
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    used: u64,
}

impl<K: Eq + Hash, V> Cache<K, V> {
    /// An empty cache that holds at most `capacity` values (at least one).
    pub(crate) fn new(capacity: usize) -> Cache<K, V> {
        Cache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// The value for `key`, if remembered (and now used most recently).
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.used = self.clock;
        Some(&entry.value)
    }

    /// Remembers `value` for `key`, forgetting the older half first when
    /// full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.clock += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let mut ages: Vec<u64> = self.entries.values().map(|entry| entry.used).collect();
            let (_, &mut median, _) = ages.select_nth_unstable(self.entries.len() / 2);
            self.entries.retain(|_, entry| entry.used > median);
        }
        let used = self.clock;
        self.entries.insert(key, Entry { value, used });
    }

    /// How many values it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_capacity_the_least_recently_used_half_is_forgotten() {
        let mut cache = Cache::new(8);
        for key in 1..=8 {
            cache.insert(key, key * 10);
        }
        // 1 and 2 read again: recent.
        assert_eq!(cache.get(&1), Some(&10));
        assert_eq!(cache.get(&2), Some(&20));
        cache.insert(9, 90);
        assert!(cache.len() <= 8 && cache.len() >= 4, "{}", cache.len());
        for key in [1, 2, 9] {
            assert!(cache.get(&key).is_some(), "{key} forgotten");
        }
        assert_eq!(cache.get(&3), None);
        // Replacing a value keeps the rest.
        let before = cache.len();
        cache.insert(9, 91);
        assert_eq!((cache.len(), cache.get(&9)), (before, Some(&91)));
        // Bounded whatever comes.
        for key in 10..1000 {
            cache.insert(key, key);
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.get(&999), Some(&999));
    }
}
