//! A per-process table from a series already found (its *anchor*: the address of its value
//! words) and one more value (a few words) to a second series whose labels are those two
//! together: a request that updates a second series whose labels follow from the first's asks
//! this table instead of hashing and comparing all its labels again in the [`SeriesCache`].
//!
//! An anchor stands for its series' labels: a series never moves while the process lives, and
//! an overflow series (shared by many label sets) must never be one. The words must hold the
//! value exactly: [`bytes_words`] of up to 16 bytes in the usual three words, or (a table of
//! six words a key) those and [`middle_words`] of 17 to 40 bytes. As in the series cache, entries are
//! never invalidated and a miss is always safe: the caller finds the series its usual way and
//! remembers it here.
//!
//! [`SeriesCache`]: crate::cache::SeriesCache
//! [`bytes_words`]: crate::cache::bytes_words
//! [`middle_words`]: crate::cache::middle_words

use std::sync::atomic::AtomicU64;

/// Entries per set: a few keys whose hashes share a set all stay.
const WAYS: usize = 4;

#[derive(Clone, Copy)]
struct Pair<'a, const N: usize> {
    /// 0: an empty way (no series lives at address 0).
    anchor: usize,
    k: [u64; N],
    values: &'a [AtomicU64],
}

impl<const N: usize> Pair<'_, N> {
    const EMPTY: Self = Pair {
        anchor: 0,
        k: [0; N],
        values: &[],
    };
}

/// A 4-way set-associative table of `(anchor, N words) -> series`, allocated at the first insert
/// with `slots` entries, doubling (up to `max_slots`) rather than evicting while it holds more
/// than half as many keys as it has entries or a key's set is full; at its largest, a full
/// set's oldest way gives way.
pub struct FollowTable<'a, const N: usize = 3> {
    sets: Vec<[Pair<'a, N>; WAYS]>,
    slots: usize,
    /// 64 minus the set index's bits.
    shift: u32,
    max_slots: usize,
    used: usize,
}

/// [`FollowTable::shift`] for `slots` entries.
const fn shift_of(slots: usize) -> u32 {
    64 - (slots / WAYS).trailing_zeros()
}

#[inline(always)]
fn hash<const N: usize>(anchor: usize, k: &[u64; N]) -> u64 {
    // Each word folded in by a multiply, which carries its bits upwards: the top bits (the
    // set index, see `set_of`) depend on every bit of the anchor and the words.
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K1);
    k.iter().fold(anchor as u64, |h, &w| mix(h, w))
}

impl<'a, const N: usize> FollowTable<'a, N> {
    /// An empty table of `slots` entries at first (rounded up to a power of two, at least
    /// two sets).
    pub const fn new(slots: usize) -> Self {
        let slots = if slots < 2 * WAYS { 2 * WAYS } else { slots }.next_power_of_two();
        FollowTable {
            sets: Vec::new(),
            slots,
            shift: shift_of(slots),
            max_slots: slots,
            used: 0,
        }
    }

    /// Lets the table grow up to `max_slots` entries (rounded up to a power of two).
    pub fn grow_up_to(&mut self, max_slots: usize) {
        self.max_slots = max_slots.next_power_of_two().max(self.slots);
    }

    /// Entries the table holds (its size).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The set of a hash: its top bits.
    #[inline(always)]
    fn set_of(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    /// The series remembered for `anchor` and `k`.
    #[inline(always)]
    pub fn get(&self, anchor: usize, k: &[u64; N]) -> Option<&'a [AtomicU64]> {
        let set = self.sets.get(self.set_of(hash(anchor, k)))?;
        for p in set {
            // The words' differences gathered (no `memcmp` call for a six-word key).
            let differ = p.k.iter().zip(k).fold(0, |d, (a, b)| d | (a ^ b));
            if p.anchor == anchor && differ == 0 {
                return Some(p.values);
            }
        }
        None
    }

    /// Remembers `values` as the series of `anchor` and `k` (`anchor` must not be 0).
    pub fn insert(&mut self, anchor: usize, k: [u64; N], values: &'a [AtomicU64]) {
        if anchor == 0 {
            return;
        }
        if self.sets.is_empty() {
            self.sets = vec![[Pair::EMPTY; WAYS]; self.slots / WAYS];
        }
        // As often as needed: after one doubling the key's set may still be full (its four
        // keys and this one may agree on the next bit of their hashes too).
        while self.slots < self.max_slots
            && (self.used * 2 > self.slots || self.set_is_full(anchor, &k))
        {
            self.grow();
        }
        self.place(Pair { anchor, k, values });
    }

    fn set_is_full(&self, anchor: usize, k: &[u64; N]) -> bool {
        self.sets[self.set_of(hash(anchor, k))]
            .iter()
            .all(|w| w.anchor != 0)
    }

    #[cold]
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.sets);
        self.slots *= 2;
        self.shift = shift_of(self.slots);
        self.sets = vec![[Pair::EMPTY; WAYS]; self.slots / WAYS];
        self.used = 0;
        for p in old.into_iter().flatten() {
            if p.anchor != 0 {
                self.place(p);
            }
        }
    }

    fn place(&mut self, p: Pair<'a, N>) {
        let i = self.set_of(hash(p.anchor, &p.k));
        let set = &mut self.sets[i];
        if let Some(w) = set
            .iter_mut()
            .find(|w| w.anchor == 0 || (w.anchor == p.anchor && w.k == p.k))
        {
            if w.anchor == 0 {
                self.used += 1;
            }
            *w = p;
            return;
        }
        // Full: the newest goes first, the oldest way is dropped.
        set.copy_within(..WAYS - 1, 1);
        set[0] = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::bytes_words;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    /// Each (anchor, value) finds its own series, never another's: values that differ in one
    /// byte, anchors that differ by one word.
    #[test]
    fn finds_exactly_what_was_put() {
        let series = words(64 * 12);
        let models: Vec<String> = (0..12).map(|i| format!("model-{i}")).collect();
        let mut t = FollowTable::new(4);
        t.grow_up_to(1 << 16);
        // Anchors as heap addresses look (8 bytes apart), fixed: where the keys' sets fall
        // does not depend on where this run's allocator put `anchors`.
        let at = |a: usize| 0x5581_2c40_0a10 + 8 * a;
        let s = |a: usize, m: usize| &series[a * 12 + m..a * 12 + m + 1];
        for a in 0..64 {
            for (m, name) in models.iter().enumerate() {
                assert!(t.get(at(a), &bytes_words(name.as_bytes())).is_none());
                t.insert(at(a), bytes_words(name.as_bytes()), s(a, m));
            }
        }
        for a in 0..64 {
            for (m, name) in models.iter().enumerate() {
                let got = t
                    .get(at(a), &bytes_words(name.as_bytes()))
                    .unwrap_or_else(|| panic!("{a} {m} slots {} used {}", t.slots(), t.used));
                assert!(std::ptr::eq(got, s(a, m)), "anchor {a} model {name}");
            }
            assert!(t.get(at(a), &bytes_words(b"model-12")).is_none());
        }
        assert!(t.slots() >= 2 * 64 * 12);
    }

    /// Without room to grow, a full set drops a key (then a miss), never answers wrongly.
    #[test]
    fn a_full_table_misses_instead_of_answering_wrongly() {
        let anchors = words(1000);
        let series = words(1000);
        let mut t = FollowTable::new(8);
        let k = bytes_words(b"m");
        let at = |a: usize| &anchors[a] as *const AtomicU64 as usize;
        for a in 0..1000 {
            t.insert(at(a), k, &series[a..a + 1]);
        }
        assert_eq!(t.slots(), 8);
        let mut hits = 0;
        for a in 0..1000 {
            if let Some(v) = t.get(at(a), &k) {
                assert!(std::ptr::eq(v, &series[a..a + 1]));
                hits += 1;
            }
        }
        assert!((1..=8).contains(&hits), "{hits}");
        // A zero anchor (no series) is never remembered.
        t.insert(0, k, &series[..1]);
        assert!(t.get(0, &k).is_none());
    }

    /// Six-word keys (values of 17 to 40 bytes, as long model names): values that differ only
    /// in their middle bytes, or only in their length, find their own series.
    #[test]
    fn long_values_are_told_apart_by_every_byte() {
        use crate::cache::bytes_words6;
        let series = words(64);
        let names = [
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-6-20250929",
            "claude-sonnet-4-5-20250929-",
            "gpt-4o-2024-08-06",
            "gpt-4o-2024-08-07",
            "gpt-4o-mini-2024-07-18",
            "a-model-name-of-exactly-forty-bytes-0000",
            "a-model-name-of-exactly-forty-bytes-0001",
        ];
        let mut t: FollowTable<'_, 6> = FollowTable::new(8);
        t.grow_up_to(64);
        let at = |a: usize| 0x7f00_1000_0000 + 64 * a;
        for a in 0..4 {
            for (m, name) in names.iter().enumerate() {
                let k = bytes_words6(name.as_bytes()).expect("17 to 40 bytes");
                assert!(t.get(at(a), &k).is_none());
                t.insert(at(a), k, &series[a * 8 + m..a * 8 + m + 1]);
            }
        }
        for a in 0..4 {
            for (m, name) in names.iter().enumerate() {
                let k = bytes_words6(name.as_bytes()).expect("17 to 40 bytes");
                let got = t.get(at(a), &k).expect("kept");
                assert!(
                    std::ptr::eq(got, &series[a * 8 + m..a * 8 + m + 1]),
                    "{name}"
                );
            }
        }
        assert!(bytes_words6(b"gpt-4o-mini").is_none());
        assert!(bytes_words6(&[b'x'; 41]).is_none());
    }

    /// Thousands of keys like the cardinality benchmark's stay in a table that may grow to
    /// four entries per key.
    #[test]
    fn thousands_of_keys_stay() {
        let n = 10_000;
        let anchors = words(n * 31);
        let series = words(n);
        let mut t = FollowTable::new(1024);
        t.grow_up_to(4 * n);
        let at = |i: usize| &anchors[i * 31] as *const AtomicU64 as usize;
        let model = |i: usize| format!("m{}", i % 10);
        for i in 0..n {
            t.insert(at(i), bytes_words(model(i).as_bytes()), &series[i..i + 1]);
        }
        let hits = (0..n)
            .filter(|&i| t.get(at(i), &bytes_words(model(i).as_bytes())).is_some())
            .count();
        assert!(hits * 100 >= n * 98, "{hits} of {n}");
    }
}
