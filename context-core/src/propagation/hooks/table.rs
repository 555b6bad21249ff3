//! A hash table from tokio task ids to values, for the hooks' hot path: open addressing with
//! linear probing, and a Fibonacci hash of the id.
//!
//! Task ids are consecutive integers, so multiplying by 2^64 / φ and keeping the top bits
//! spreads live tasks over the buckets with few collisions, and a lookup is a multiply, a
//! shift, and usually one comparison: about a fifth of what a general-purpose table costs,
//! paid twice per poll. Removal shifts later entries back (no tombstones), so probes stay short
//! however many tasks come and go.

use std::hash::{Hash, Hasher};

use tokio::task::Id;

/// The smallest table that holds anything.
const MIN_BUCKETS: usize = 16;

pub(super) struct Table<V> {
    /// A power of two in length (or empty until the first insert); at most half full.
    buckets: Vec<Option<(Id, V)>>,
    len: usize,
}

impl<V> Table<V> {
    pub(super) const fn new() -> Self {
        Table {
            buckets: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bucket where `id`'s probe starts.
    #[inline]
    fn home(&self, id: Id) -> usize {
        // `buckets.len()` is a power of two of at most 2^63, so `bits` is below 64.
        let bits = self.buckets.len().trailing_zeros();
        usize::try_from(fibonacci(id) >> (u64::BITS - bits)).unwrap_or_default()
    }

    /// Where `id` is stored.
    #[inline]
    fn find(&self, id: Id) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut index = self.home(id);
        loop {
            match &self.buckets[index] {
                None => return None,
                Some((key, _)) if *key == id => return Some(index),
                Some(_) => index = (index + 1) & mask,
            }
        }
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: Id) -> Option<&mut V> {
        let index = self.find(id)?;
        self.buckets[index].as_mut().map(|(_, value)| value)
    }

    /// Stores `value` for `id`, and returns what was stored for it before. (The hooks use
    /// [`insert_new`](Self::insert_new); the tests check both against a model.)
    #[cfg(test)]
    pub(super) fn insert(&mut self, id: Id, value: V) -> Option<V> {
        if let Some(index) = self.find(id) {
            return self.buckets[index].replace((id, value)).map(|(_, old)| old);
        }
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        self.place(id, value);
        self.len += 1;
        None
    }

    /// Stores `value` for `id`, which the caller knows is not in the table (tokio never reuses
    /// a task id): one probe instead of [`insert`](Self::insert)'s two.
    pub(super) fn insert_new(&mut self, id: Id, value: V) {
        debug_assert!(self.find(id).is_none(), "task {id} is stored already");
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        self.place(id, value);
        self.len += 1;
    }

    /// Puts `(id, value)` in the first free bucket of its probe; `id` is not in the table.
    fn place(&mut self, id: Id, value: V) {
        let mask = self.buckets.len() - 1;
        let mut index = self.home(id);
        while self.buckets[index].is_some() {
            index = (index + 1) & mask;
        }
        self.buckets[index] = Some((id, value));
    }

    fn grow(&mut self) {
        self.rebuild((self.buckets.len() * 2).max(MIN_BUCKETS));
    }

    /// Moves every entry into a new array of `size` buckets.
    fn rebuild(&mut self, size: usize) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets.resize_with(size, || None);
        for (id, value) in old.into_iter().flatten() {
            self.place(id, value);
        }
    }

    pub(super) fn remove(&mut self, id: Id) -> Option<V> {
        let index = self.find(id)?;
        self.remove_at(index)
    }

    /// Where `id` is stored, to look at with [`at`](Self::at) and remove with
    /// [`remove_at`](Self::remove_at) without probing again.
    #[inline]
    pub(super) fn position(&self, id: Id) -> Option<usize> {
        self.find(id)
    }

    /// The value stored at `index` (from [`position`](Self::position)).
    ///
    /// # Panics
    /// If nothing is stored there.
    #[inline]
    pub(super) fn at(&mut self, index: usize) -> &mut V {
        &mut self.buckets[index]
            .as_mut()
            .expect("`position` gives the index of a stored entry")
            .1
    }

    /// Empties bucket `hole` (from [`position`](Self::position)) and returns its value.
    pub(super) fn remove_at(&mut self, mut hole: usize) -> Option<V> {
        let (_, value) = self.buckets[hole].take()?;
        self.len -= 1;
        // Later entries of the same run whose probe starts at or before the hole move into it,
        // so that every entry stays reachable from its home without tombstones.
        let mask = self.buckets.len() - 1;
        let mut next = (hole + 1) & mask;
        while let Some((key, _)) = &self.buckets[next] {
            let start = self.home(*key);
            // Distances along the probe, modulo the table size: the entry moves if the hole
            // lies between its probe's start and where it sits.
            if (next.wrapping_sub(start) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.buckets[hole] = self.buckets[next].take();
                hole = next;
            }
            next = (next + 1) & mask;
        }
        // A burst of tasks must not keep its memory: at an eighth full, halve (a quarter full
        // after, so that growing again takes as many inserts as shrinking took removals).
        if self.len * 8 < self.buckets.len() && self.buckets.len() > MIN_BUCKETS {
            self.rebuild(self.buckets.len() / 2);
        }
        Some(value)
    }
}

/// The id times 2^64 / φ: consecutive ids land far apart in the top bits.
#[inline]
pub(super) fn fibonacci(id: Id) -> u64 {
    let mut hasher = IdHasher(0);
    id.hash(&mut hasher);
    hasher.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Takes the integer a task id hashes as (tokio exposes no other way to read it).
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;

    use super::Table;

    /// Random inserts and removals, checked against std's map, with ids from real tasks.
    #[test]
    fn agrees_with_a_hash_map() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ids: Vec<_> = (0..3000).map(|_| runtime.spawn(async {}).id()).collect();
        let mut table = Table::new();
        let mut model = HashMap::new();
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        for step in 0..200_000_u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = ids[usize::try_from(seed % 3000).unwrap()];
            if seed.is_multiple_of(3) {
                assert_eq!(table.remove(id), model.remove(&id), "step {step}");
            } else {
                match model.entry(id) {
                    Entry::Occupied(mut entry) => {
                        assert_eq!(
                            table.insert(id, step),
                            Some(entry.insert(step)),
                            "step {step}"
                        );
                    }
                    // What the spawn hook does: an id never stored before.
                    Entry::Vacant(entry) => {
                        table.insert_new(id, step);
                        entry.insert(step);
                    }
                }
            }
            assert_eq!(table.len(), model.len());
        }
        for (id, value) in &model {
            assert_eq!(table.get_mut(*id), Some(&mut value.clone()));
        }
        // Emptied, it gives its memory back.
        let grown = table.buckets.len();
        for id in &ids {
            assert_eq!(table.remove(*id), model.remove(id));
        }
        assert_eq!(table.len(), 0);
        assert!(
            table.buckets.len() < grown,
            "{} buckets kept",
            table.buckets.len()
        );
        assert_eq!(table.buckets.len(), super::MIN_BUCKETS);
    }
}
