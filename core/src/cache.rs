//! A per-process cache in front of the shared table: the hot path finds the value words of a
//! series it recorded before without joining, hashing or probing its key.
//!
//! A label value is given either as bytes or with an *identity*: a non-zero number that the
//! caller guarantees always stands for the same bytes at that label position (nginx's method
//! number, the address of the location whose name is the endpoint, the status code...). Only the
//! values given as bytes are compared; identities are compared as numbers. A miss is always safe:
//! the caller then takes the shared-table path and stores what it found.
//!
//! Entries are never invalidated: the table is append-only and never moves while the process
//! lives, so a series found once stays where it is. Overflow series are never cached (every
//! update to them must be counted as dropped).

use std::sync::atomic::AtomicU64;

use crate::labels::{load8, load_short};

/// Label values per cached key (the built-in families have at most six).
pub const MAX_VALUES: usize = 6;
/// Bytes beyond the first and last 8 of long byte values, in total, that an entry can hold.
pub const VALUE_BYTES: usize = 64;

/// One label value as the hot path knows it.
#[derive(Clone, Copy)]
pub struct Label<'v> {
    /// Non-zero (and below 2^63): stands for `bytes` at this position, always (see the module
    /// docs).
    pub id: u64,
    pub bytes: &'v [u8],
}

impl<'v> Label<'v> {
    /// A value known only by its bytes.
    #[inline]
    pub fn bytes(bytes: &'v [u8]) -> Self {
        Label { id: 0, bytes }
    }

    /// A value with an identity (`id` must be non-zero to be used as one).
    #[inline]
    pub fn with_id(id: u64, bytes: &'v [u8]) -> Self {
        Label { id, bytes }
    }
}

/// What identifies one label value in an entry: an identity, or the value's length with its
/// first and last (up to) 8 bytes, which is the whole value when it has at most 16 bytes.
pub type Word3 = [u64; 3];

struct Entry<'a> {
    tag: u64,
    kind: u64,
    /// The key's number of values and whether it was made by `get_packed`/`insert_packed` (a
    /// caller's own exact encoding) rather than from labels: [`shape`], one word to compare.
    shape: u64,
    k: [Word3; MAX_VALUES],
    /// The middle bytes of byte values longer than 16 bytes, one after the other.
    long: [u8; VALUE_BYTES],
    values: &'a [AtomicU64],
}

/// Entries per set: a key may live in any way of its set, so that a few keys whose hashes share
/// a set do not evict each other (a direct-mapped table loses its hit rate to such conflicts,
/// whose pattern also depends on addresses used as identities, hence on luck).
pub const WAYS: usize = 4;

/// One set: its ways' tags side by side (0: an empty way), checked in one cache line before
/// any entry is read, then the entries (an empty way's is a placeholder, never compared).
struct Set<'a> {
    tags: [u64; WAYS],
    entries: [Entry<'a>; WAYS],
}

impl Set<'_> {
    fn empty() -> Self {
        Set {
            tags: [0; WAYS],
            entries: std::array::from_fn(|_| Entry {
                tag: 0,
                kind: 0,
                shape: 0,
                k: [[0; 3]; MAX_VALUES],
                long: [0; VALUE_BYTES],
                values: &[],
            }),
        }
    }
}

/// The [`Entry::shape`] of a key of `n` values.
#[inline(always)]
const fn shape(n: usize, packed: bool) -> u64 {
    (n as u64) << 1 | packed as u64
}

/// A set-associative cache of `slots` entries (a power of two, [`WAYS`] per set), allocated on
/// first insert, that doubles (up to `max_slots`) while it holds more than half as many keys
/// as it has entries: small where few series are active, as large as needed where many are.
pub struct SeriesCache<'a> {
    /// `slots / WAYS` sets once allocated (a set is found with one bounds check, its ways with
    /// none).
    sets: Vec<Set<'a>>,
    slots: usize,
    max_slots: usize,
    /// Entries in use.
    used: usize,
    /// The way to replace next in a full set (round robin over the whole cache: cheap, and no
    /// key stays out for long).
    victim: usize,
}

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// One word into the running hash (a multiply carries each bit of `w` to the bits above it;
/// [`finish`] brings the high bits down).
#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K1)
}

/// The final avalanche: every input bit reaches every bit of the tag, so the set index (its low
/// bits) depends on every byte of the key, whatever the names look like.
#[inline(always)]
fn finish(h: u64) -> u64 {
    let x = (h ^ (h >> 32)).wrapping_mul(K2);
    x ^ (x >> 29)
}

/// The tag of a key whose running hash is `h` (never 0: an empty way's).
#[inline(always)]
fn tag(h: u64) -> u64 {
    finish(h) | 1
}

#[inline(always)]
fn word3(l: &Label) -> Word3 {
    if l.id != 0 {
        return [l.id, 0, 0];
    }
    let [first, last] = crate::labels::edge_words(l.bytes);
    // Identities are below 2^63: a length tag (u64::MAX - n) is never one.
    [u64::MAX - l.bytes.len() as u64, first, last]
}

/// The middle bytes of a value longer than 16 bytes (what its `Word3` does not cover).
#[inline(always)]
fn middle(b: &[u8]) -> &[u8] {
    if b.len() > 16 {
        &b[8..b.len() - 8]
    } else {
        &[]
    }
}

impl<'a> SeriesCache<'a> {
    /// An empty cache of `slots` entries (rounded up to a power of two, at least [`WAYS`]).
    pub const fn new(slots: usize) -> Self {
        let slots = if slots < WAYS { WAYS } else { slots }.next_power_of_two();
        SeriesCache {
            sets: Vec::new(),
            slots,
            max_slots: slots,
            used: 0,
            victim: 0,
        }
    }

    /// Lets the cache grow up to `max_slots` entries (rounded up to a power of two) as it fills.
    pub fn grow_up_to(&mut self, max_slots: usize) {
        self.max_slots = max_slots.next_power_of_two().max(self.slots);
    }

    /// Entries the cache holds (its size).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The running hash of a key's kind and words (the middles of its long values, if any, go
    /// on top: [`salt`]); [`tag`] makes its tag.
    #[inline(always)]
    fn hash(kind: u64, ks: &[Word3]) -> u64 {
        let mut h = mix(0x51ed_2701, kind);
        for k in ks {
            h = mix(mix(mix(h, k[0]), k[1]), k[2]);
        }
        h
    }

    /// The index of the set of `tag`.
    #[inline(always)]
    fn set_of(&self, tag: u64) -> usize {
        tag as usize & (self.slots / WAYS - 1)
    }

    /// The value words cached for this kind (`SeriesKind::bits`) and these labels. Generic over
    /// the number of labels so that each call site gets straight-line code.
    #[inline(always)]
    pub fn get<const N: usize>(&self, kind: u64, labels: &[Label; N]) -> Option<&'a [AtomicU64]> {
        if N > MAX_VALUES {
            return None;
        }
        let mut ks = [[0u64; 3]; N];
        for (k, l) in ks.iter_mut().zip(labels) {
            *k = word3(l);
        }
        if labels.iter().any(|l| l.id == 0 && l.bytes.len() > 16) {
            return self.get_long(kind, labels, ks);
        }
        let tag = tag(Self::hash(kind, &ks));
        let set = self.sets.get(self.set_of(tag))?;
        // Way by way, with constant indices (no copy of the tags, no bounds checks).
        for way in 0..WAYS {
            let e = &set.entries[way];
            if set.tags[way] == tag && same_words(e, kind, false, &ks) {
                return Some(e.values);
            }
        }
        None
    }

    /// [`get`](Self::get) for labels of which some values are longer than 16 bytes: their
    /// middles (which the words do not hold) salt the tag and are compared with the entry's
    /// middle bytes, in order. Out of line: the usual short values' path stays small.
    #[inline(never)]
    fn get_long<const N: usize>(
        &self,
        kind: u64,
        labels: &[Label; N],
        ks: [Word3; N],
    ) -> Option<&'a [AtomicU64]> {
        let long = |l: &&Label| l.id == 0 && l.bytes.len() > 16;
        let h = labels.iter().filter(long).map(|l| l.bytes);
        let tag = tag(h.fold(Self::hash(kind, &ks), salt));
        let set = self.sets.get(self.set_of(tag))?;
        for way in 0..WAYS {
            let e = &set.entries[way];
            if set.tags[way] == tag && same_words(e, kind, false, &ks) {
                let mut at = 0;
                if labels
                    .iter()
                    .filter(long)
                    .all(|l| long_matches(e, &mut at, l.bytes))
                {
                    return Some(e.values);
                }
            }
        }
        None
    }

    /// Like [`get`](Self::get) for a key the caller encoded itself as `N` word triples, exactly
    /// (distinct label values, distinct words), plus its byte values that may be longer than 16
    /// bytes (`longs`, in a fixed order: the words must hold each one's length and first and last
    /// 8 bytes; their middles are compared here). Cheaper than labels when most values have
    /// identities, which can share words.
    #[inline(always)]
    pub fn get_packed<const N: usize, const L: usize>(
        &self,
        kind: u64,
        ks: &[Word3; N],
        longs: &[&[u8]; L],
    ) -> Option<&'a [AtomicU64]> {
        if N > MAX_VALUES {
            return None;
        }
        let h = Self::hash(kind, ks);
        if longs.iter().any(|l| l.len() > 16) {
            return self.get_packed_long(h, kind, ks, longs);
        }
        let tag = tag(h);
        let set = self.sets.get(self.set_of(tag))?;
        for way in 0..WAYS {
            let e = &set.entries[way];
            if set.tags[way] == tag && same_words(e, kind, true, ks) {
                return Some(e.values);
            }
        }
        None
    }

    /// [`get_packed`](Self::get_packed) for keys with a value longer than 16 bytes (see
    /// [`get_long`](Self::get_long)), from the hash of the key's words (`h`).
    #[inline(never)]
    fn get_packed_long<const N: usize, const L: usize>(
        &self,
        h: u64,
        kind: u64,
        ks: &[Word3; N],
        longs: &[&[u8]; L],
    ) -> Option<&'a [AtomicU64]> {
        let tag = tag(longs.iter().fold(h, |h, l| salt(h, l)));
        let set = self.sets.get(self.set_of(tag))?;
        for way in 0..WAYS {
            let e = &set.entries[way];
            // Values with the same edges differ in the middle: the next way may hold this one.
            if set.tags[way] == tag && same_words(e, kind, true, ks) {
                let mut at = 0;
                if longs.iter().all(|l| long_matches(e, &mut at, l)) {
                    return Some(e.values);
                }
            }
        }
        None
    }

    /// Remembers where the series of these labels is. Keys whose long byte values do not fit
    /// are not cached.
    pub fn insert(&mut self, kind: u64, labels: &[Label], values: &'a [AtomicU64]) {
        if labels.len() > MAX_VALUES {
            return;
        }
        let mut k = [[0u64; 3]; MAX_VALUES];
        for (k, l) in k.iter_mut().zip(labels) {
            *k = word3(l);
        }
        let longs = labels.iter().filter(|l| l.id == 0).map(|l| l.bytes);
        self.put(kind, false, &k[..labels.len()], longs, values);
    }

    /// Remembers a key encoded as for [`get_packed`](Self::get_packed).
    pub fn insert_packed(
        &mut self,
        kind: u64,
        ks: &[Word3],
        longs: &[&[u8]],
        values: &'a [AtomicU64],
    ) {
        if ks.len() <= MAX_VALUES {
            self.put(kind, true, ks, longs.iter().copied(), values);
        }
    }

    fn put<'v>(
        &mut self,
        kind: u64,
        packed: bool,
        ks: &[Word3],
        longs: impl Iterator<Item = &'v [u8]> + Clone,
        values: &'a [AtomicU64],
    ) {
        let mut k = [[0u64; 3]; MAX_VALUES];
        k[..ks.len()].copy_from_slice(ks);
        let mut e = Entry {
            tag: tag(longs.clone().fold(Self::hash(kind, ks), salt)),
            kind,
            shape: shape(ks.len(), packed),
            k,
            long: [0; VALUE_BYTES],
            values,
        };
        let mut at = 0;
        for b in longs {
            let m = middle(b);
            let Some(dst) = e.long.get_mut(at..at + m.len()) else {
                return;
            };
            dst.copy_from_slice(m);
            at += m.len();
        }
        if self.sets.is_empty() {
            self.sets = (0..self.slots / WAYS).map(|_| Set::empty()).collect();
        } else if self.slots < self.max_slots
            && (self.used * 2 > self.slots || self.set_is_full(e.tag))
        {
            // Rather than evict, make room while the cache may still grow.
            self.grow();
        }
        self.place(e);
    }

    fn set_is_full(&self, tag: u64) -> bool {
        self.sets[self.set_of(tag)].tags.iter().all(|&t| t != 0)
    }

    /// Doubles the table and puts every entry in its new set.
    #[cold]
    fn grow(&mut self) {
        let old = std::mem::take(&mut self.sets);
        self.slots *= 2;
        self.sets = (0..self.slots / WAYS).map(|_| Set::empty()).collect();
        self.used = 0;
        for set in old {
            for (e, t) in set.entries.into_iter().zip(set.tags) {
                if t != 0 {
                    self.place(e);
                }
            }
        }
    }

    fn place(&mut self, e: Entry<'a>) {
        let i = self.set_of(e.tag);
        let set = &mut self.sets[i];
        let way = match set.tags.iter().position(|&t| t == 0) {
            Some(free) => {
                self.used += 1;
                free
            }
            None => {
                self.victim = self.victim.wrapping_add(1);
                self.victim % WAYS
            }
        };
        set.tags[way] = e.tag;
        set.entries[way] = e;
    }
}

/// Folds the middle bytes of a value longer than 16 bytes (what its `Word3` does not hold)
/// into `h`, so that values differing only there get other tags (and sets); `h` as it is for
/// shorter values.
#[inline(always)]
fn salt(h: u64, b: &[u8]) -> u64 {
    if b.len() <= 16 {
        return h;
    }
    salt_middle(h, middle(b))
}

/// Folds a middle (at least one byte) into `h` by its words: its whole words from its start,
/// then its last (up to) 8 bytes, which may overlap the word before (the value's length is in
/// its `Word3`). Word loads, no byte copy.
#[inline(always)]
fn salt_middle(mut h: u64, m: &[u8]) -> u64 {
    let mut i = 0;
    while i + 8 < m.len() {
        h = mix(h, load8(&m[i..]));
        i += 8;
    }
    mix(h, last_word(m))
}

/// The last word of a middle (see [`salt_middle`]).
#[inline(always)]
fn last_word(m: &[u8]) -> u64 {
    match m.len().checked_sub(8) {
        Some(at) => load8(&m[at..]),
        None => load_short(m),
    }
}

/// Does the entry have this kind and these words? (One test at the end: N is a constant, so
/// this is straight-line code.)
#[inline(always)]
fn same_words<const N: usize>(e: &Entry, kind: u64, packed: bool, ks: &[Word3; N]) -> bool {
    let mut diff = (e.kind ^ kind) | (e.shape ^ shape(N, packed));
    for (a, b) in e.k.iter().zip(ks) {
        diff |= (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]);
    }
    diff == 0
}

/// Does the entry hold `b`'s middle bytes at `*at`? Advances `*at`. (Compared by the words
/// [`salt_middle`] reads, stopping at the first that differs: no `memcmp` call for a few
/// words.)
#[inline(always)]
fn long_matches(e: &Entry, at: &mut usize, b: &[u8]) -> bool {
    let m = middle(b);
    let Some(held) = e.long.get(*at..*at + m.len()) else {
        return false;
    };
    *at += m.len();
    let mut i = 0;
    while i + 8 < m.len() {
        if load8(&m[i..]) != load8(&held[i..]) {
            return false;
        }
        i += 8;
    }
    last_word(m) == last_word(held)
}

/// The middle of a value of 17 to 40 bytes (at most 24 bytes), exactly, as a word triple (with
/// the value's length, from its [`bytes_words`]): a packed key can hold such a value whole in
/// two triples, with no middle to hash and compare apart (see [`SeriesCache::get_packed`]).
/// `None` for other lengths.
#[inline(always)]
pub fn middle_words(b: &[u8]) -> Option<Word3> {
    if !(17..=40).contains(&b.len()) {
        return None;
    }
    Some(triple(middle(b)))
}

/// A value of 17 to 40 bytes, exactly, in six words: its [`bytes_words`] and
/// [`middle_words`] (e.g. a key of a [`FollowTable`](crate::follow::FollowTable) of six words).
/// `None` for other lengths.
#[inline(always)]
pub fn bytes_words6(b: &[u8]) -> Option<[u64; 6]> {
    let m = middle_words(b)?;
    let w = bytes_words(b);
    Some([w[0], w[1], w[2], m[0], m[1], m[2]])
}

/// [`middle_words`] for a value of 41 to 64 bytes (a middle of 25 to 48 bytes): two triples.
#[inline(always)]
pub fn middle_words2(b: &[u8]) -> Option<[Word3; 2]> {
    if !(41..=64).contains(&b.len()) {
        return None;
    }
    let m = middle(b);
    Some([
        [load8(m), load8(&m[8..]), load8(&m[16..])],
        triple(&m[24..]),
    ])
}

/// 1 to 24 bytes as a word triple, exactly given their number: whole words from the start,
/// then the last (up to) 8 bytes, which may overlap the word before; zeros after.
#[inline(always)]
fn triple(m: &[u8]) -> Word3 {
    let n = m.len();
    if n <= 8 {
        [load_short(m), 0, 0]
    } else if n <= 16 {
        [load8(m), load8(&m[n - 8..]), 0]
    } else {
        [load8(m), load8(&m[8..]), load8(&m[n - 8..])]
    }
}

/// The words of a byte value in a packed key (see [`SeriesCache::get_packed`]): its length tag
/// and its first and last (up to) 8 bytes.
#[inline(always)]
pub fn bytes_words(b: &[u8]) -> Word3 {
    word3(&Label::bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of keys that differ only in their last bytes (`ns00000`...), or that are
    /// random, or long, all stay cached in a table twice their number: the hash spreads every
    /// byte, and the ways absorb the sets that get more than their share.
    #[test]
    fn thousands_of_similar_keys_all_stay_cached() {
        let values = words(1);
        for make in [
            (|i: usize| format!("ns{i:05}")) as fn(usize) -> String,
            |i| format!("tenant-{i}"),
            |i| {
                format!(
                    "{:010x}",
                    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24
                )
            },
            |i| format!("a-rather-long-tenant-name-of-forty-{i:05}"),
        ] {
            let n = 5000;
            let mut c = SeriesCache::new(64);
            c.grow_up_to(4 * n);
            let keys: Vec<String> = (0..n).map(make).collect();
            for k in &keys {
                let ks = [[7 << 32 | 200, 0x1000, 1], bytes_words(k.as_bytes())];
                c.insert_packed(1, &ks, &[k.as_bytes()], &values);
            }
            let hits = keys
                .iter()
                .filter(|k| {
                    let ks = [[7 << 32 | 200, 0x1000, 1], bytes_words(k.as_bytes())];
                    c.get_packed(1, &ks, &[k.as_bytes()]).is_some()
                })
                .count();
            assert!(
                hits * 100 >= n * 97,
                "{} of {n} keys like {:?} cached",
                hits,
                keys[0]
            );
        }
    }

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn finds_what_was_inserted_and_nothing_else() {
        let a = words(2);
        let b = words(2);
        let mut c = SeriesCache::new(64);
        let la = [Label::with_id(1, b"GET"), Label::bytes(b"ns-a")];
        let lb = [Label::with_id(1, b"GET"), Label::bytes(b"ns-b")];
        assert!(c.get(7, &la).is_none());
        c.insert(7, &la, &a);
        c.insert(7, &lb, &b);
        assert!(std::ptr::eq(c.get(7, &la).unwrap(), &a[..]));
        assert!(std::ptr::eq(c.get(7, &lb).unwrap(), &b[..]));
        // Other kind, other identity, other bytes, other arity: misses.
        assert!(c.get(8, &la).is_none());
        assert!(c
            .get(7, &[Label::with_id(2, b"POST"), Label::bytes(b"ns-a")])
            .is_none());
        assert!(c
            .get(7, &[Label::with_id(1, b"GET"), Label::bytes(b"ns-c")])
            .is_none());
        assert!(c.get(7, &[Label::with_id(1, b"GET")]).is_none());
        // An identity and bytes in the same position never match each other.
        assert!(c
            .get(7, &[Label::bytes(b"GET"), Label::bytes(b"ns-a")])
            .is_none());
    }

    #[test]
    fn packed_keys_are_their_own_entries() {
        let a = words(1);
        let b = words(1);
        let mut c = SeriesCache::new(64);
        let ns = b"tenant-with-a-long-name-0001";
        let ks = [[7 << 32 | 200, 0x1000, 1], bytes_words(ns)];
        assert!(c.get_packed(3, &ks, &[ns]).is_none());
        c.insert_packed(3, &ks, &[ns], &a);
        assert!(std::ptr::eq(c.get_packed(3, &ks, &[ns]).unwrap(), &a[..]));
        // Same first and last 8 bytes and length, other middle: a miss.
        let other = b"tenant-with-a-LONG-name-0001";
        assert!(c
            .get_packed(3, &[ks[0], bytes_words(other)], &[other])
            .is_none());
        // Other status in the shared word, other kind: misses.
        assert!(c
            .get_packed(3, &[[7 << 32 | 201, 0x1000, 1], ks[1]], &[ns])
            .is_none());
        assert!(c.get_packed(4, &ks, &[ns]).is_none());
        // A label entry of the same words is not a packed entry, and the other way round.
        let labels = [Label::with_id(7 << 32 | 200, b"x"), Label::bytes(ns)];
        assert!(c.get(3, &labels).is_none());
        c.insert(3, &labels, &b);
        assert!(std::ptr::eq(c.get(3, &labels).unwrap(), &b[..]));
    }

    #[test]
    fn label_keys_of_a_model_family_are_cached() {
        let a = words(3);
        let mut c = SeriesCache::new(1024);
        for i in 0..10 {
            let ns = format!("{:010x}", i * 7919);
            let model = format!("m{}", i % 3);
            let l = [
                Label::bytes(model.as_bytes()),
                Label::bytes(ns.as_bytes()),
                Label::with_id(1, b"success"),
            ];
            assert!(c.get(3, &l).is_none());
            c.insert(3, &l, &a);
            assert!(c.get(3, &l).is_some(), "{model} {ns}");
        }
    }

    /// A packed key with two values that may be long (a model and a namespace): each one's
    /// middle counts, in its place.
    #[test]
    fn packed_keys_with_two_long_values() {
        let (a, b) = (words(1), words(1));
        let mut c = SeriesCache::new(64);
        let model = b"claude-sonnet-4-5-20250929";
        let (ns1, ns2) = (
            b"tenant-00001-with-a-long-name",
            b"tenant-00001-WITH-a-long-name",
        );
        let key = |m: &[u8], ns: &[u8]| [bytes_words(m), bytes_words(ns)];
        c.insert_packed(5, &key(model, ns1), &[model, ns1], &a);
        c.insert_packed(5, &key(model, ns2), &[model, ns2], &b);
        let got = |m: &[u8], ns: &[u8]| c.get_packed(5, &key(m, ns), &[m, ns]);
        assert!(std::ptr::eq(got(model, ns1).unwrap(), &a[..]));
        assert!(std::ptr::eq(got(model, ns2).unwrap(), &b[..]));
        assert!(got(b"claude-sonnet-4-X-20250929", ns1).is_none());
        assert!(got(b"gpt-4o", ns1).is_none());
        assert!(got(model, b"tenant-00001-with-a-LONG-name").is_none());
        // In their places: the same bytes the other way round are another key.
        let entry = c.sets.iter().flat_map(|s| s.entries.iter().zip(s.tags));
        let e = entry
            .filter(|(_, t)| *t != 0)
            .map(|(e, _)| e)
            .next()
            .unwrap();
        let mut at = 0;
        let first = long_matches(e, &mut at, model);
        assert!(first && long_matches(e, &mut at, if ptr_of(e, &a) { ns1 } else { ns2 }));
        let mut at = 0;
        assert!(!long_matches(e, &mut at, ns1));
    }

    fn ptr_of(e: &Entry, v: &[AtomicU64]) -> bool {
        std::ptr::eq(e.values, v)
    }

    /// Values of 17 to 64 bytes held whole in a packed key (their edges and middle words):
    /// every byte counts, and each length has its own keys.
    #[test]
    fn middle_words_hold_values_exactly() {
        let a = words(1);
        assert_eq!(middle_words(&[b'x'; 16]), None);
        assert_eq!(middle_words(&[b'x'; 41]), None);
        assert_eq!(middle_words2(&[b'x'; 40]), None);
        assert_eq!(middle_words2(&[b'x'; 65]), None);
        for len in 17..=64 {
            let x: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let key = |v: &[u8]| -> [Word3; 3] {
                let [m1, m2] =
                    middle_words2(v).unwrap_or_else(|| [middle_words(v).unwrap(), [0; 3]]);
                [bytes_words(v), m1, m2]
            };
            let mut c = SeriesCache::new(64);
            c.insert_packed(2, &key(&x), &[], &a);
            assert!(c.get_packed(2, &key(&x), &[]).is_some(), "{len}");
            for j in 0..len {
                let mut y = x.clone();
                y[j] = b'#';
                assert_ne!(key(&x), key(&y), "{len} {j}");
                assert!(c.get_packed(2, &key(&y), &[]).is_none(), "{len} {j}");
            }
            // A value one byte shorter with the same bytes otherwise: other words.
            if len > 17 {
                assert_ne!(key(&x), key(&x[..len - 1]), "{len}");
            }
        }
    }

    #[test]
    fn forty_byte_packed_values_are_cached() {
        let a = words(1);
        let mut c = SeriesCache::new(1024);
        for i in 0..10 {
            let ns = format!("tenant-{i:05}-{}", "x".repeat(27));
            assert_eq!(ns.len(), 40);
            let ks = [[7 << 32 | 200, 0x1000, 1], bytes_words(ns.as_bytes())];
            assert!(c.get_packed(3, &ks, &[ns.as_bytes()]).is_none());
            c.insert_packed(3, &ks, &[ns.as_bytes()], &a);
            assert!(c.get_packed(3, &ks, &[ns.as_bytes()]).is_some(), "{ns}");
        }
    }

    #[test]
    fn long_byte_values_are_not_cached() {
        let a = words(1);
        let mut c = SeriesCache::new(8);
        let long = [0x61u8; VALUE_BYTES + 17];
        c.insert(1, &[Label::bytes(&long)], &a);
        assert!(c.get(1, &[Label::bytes(&long)]).is_none());
    }

    /// Long values of every cacheable length that differ in one byte of their middle (which
    /// is hashed and compared a word at a time, the last word overlapping) are told apart, as
    /// labels and as a packed key.
    #[test]
    fn every_middle_byte_counts() {
        let a = words(1);
        for len in 17..=16 + VALUE_BYTES {
            let x: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut c = SeriesCache::new(64);
            c.insert(1, &[Label::bytes(&x)], &a);
            c.insert_packed(2, &[bytes_words(&x)], &[&x], &a);
            assert!(c.get(1, &[Label::bytes(&x)]).is_some(), "{len}");
            assert!(
                c.get_packed(2, &[bytes_words(&x)], &[&x]).is_some(),
                "{len}"
            );
            // The hash alone already tells them apart: compare with the entries themselves too.
            let entries: Vec<&Entry> = (c.sets.iter())
                .flat_map(|s| s.entries.iter().zip(s.tags).filter(|(_, t)| *t != 0))
                .map(|(e, _)| e)
                .collect();
            assert_eq!(entries.len(), 2);
            for e in &entries {
                assert!(long_matches(e, &mut 0, &x));
            }
            for j in 8..len - 8 {
                let mut y = x.clone();
                y[j] = b'#';
                assert!(c.get(1, &[Label::bytes(&y)]).is_none(), "{len} {j}");
                assert!(
                    c.get_packed(2, &[bytes_words(&y)], &[&y]).is_none(),
                    "{len} {j}"
                );
                for e in &entries {
                    assert!(!long_matches(e, &mut 0, &y), "{len} {j}");
                }
            }
        }
    }

    #[test]
    fn values_differing_only_inside_are_told_apart() {
        let a = words(1);
        let mut c = SeriesCache::new(1);
        let x = b"/v1/chat/completions/aaaa-bbbb";
        let mut y = *x;
        y[12] = b'X';
        c.insert(1, &[Label::bytes(x)], &a);
        assert!(c.get(1, &[Label::bytes(x)]).is_some());
        // Same length, first and last 8 bytes: same tag and slot, different bytes.
        assert!(c.get(1, &[Label::bytes(&y)]).is_none());
    }
}
