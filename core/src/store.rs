//! The shared-memory series table, laid out over a plain region of `AtomicU64` words.
//!
//! The region is shared between nginx worker *processes*, so everything in it is an atomic word
//! and every offset read from it is bounds-checked: a corrupt or foreign region can make a lookup
//! miss, never panic or read out of bounds.
//!
//! Layout (word offsets):
//! ```text
//! [ header | bucket-layout table | lane table | hash index | main heap | overflow reserve ]
//! ```
//! * Only the words before the heap are metadata that formatting writes: a fresh mapping is
//!   already zero, and heap words are only read once an insert has written and published them
//!   (a 2 GB zone costs nothing until series fill it).
//! * The lane table gives every live worker process a number of its own (see
//!   [`Store::claim_lane`]): per-process series (the in-flight gauge) are keyed by it.
//! * The hash index is open-addressed with linear probing; a slot holds
//!   `(hash >> 32) << 32 | entry_offset` and never changes once set (series are never removed),
//!   so lookups are lock-free: an update of an existing series is one probe plus atomic adds.
//! * Entries are appended to a heap:
//!   `[header word][key bytes packed in words][value words][creation time]`. The header word is
//!   `family:32 | key_len:16 | layout:8 | n_values:8`; the creation time (Unix milliseconds, for
//!   OpenMetrics' `_created`) comes last so that lookups and updates never step over it.
//! * A series' exemplars (see [`crate::exemplar`]) live in a companion entry of the family
//!   `EXEMPLARS | family` keyed by the offset of the series' values: made the first time the
//!   series gets an exemplar, never counted as a series.
//! * Inserts take the caller's lock (nginx's shm mutex in the module). An entry is fully
//!   written before its index slot and the heap's `published` mark are released, so readers
//!   (lookups and the renderer walking the heap) never see a half-written entry.
//! * New series beyond the cardinality cap or the heap's end go to one overflow series per
//!   family, kept in a separate reserve so that they can always be created.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::hash_key;
use crate::labels::StackKey;

const MAGIC: u64 = 0x4757_4d45_5452_4943; // "GWMETRIC"
/// Bumped whenever the region layout changes; a region with another version is re-initialised.
pub const FORMAT_VERSION: u64 = 3;

/// Maximum number of distinct bucket layouts a zone remembers (a reload may add one).
pub const MAX_LAYOUTS: usize = 16;
/// Maximum number of bucket bounds (excluding `+Inf`) in one layout.
pub const MAX_BOUNDS: usize = 64;
const LAYOUT_WORDS: usize = 1 + MAX_BOUNDS;

// Header word indices.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_TOTAL_WORDS: usize = 2;
const H_INDEX_START: usize = 3;
const H_INDEX_CAP: usize = 4;
const H_MAIN_START: usize = 5;
const H_MAIN_END: usize = 6;
const H_RESERVE_END: usize = 7;
const H_MAIN_BUMP: usize = 8;
const H_MAIN_PUBLISHED: usize = 9;
const H_RESERVE_BUMP: usize = 10;
const H_RESERVE_PUBLISHED: usize = 11;
const H_SERIES: usize = 12;
const H_ENTRIES: usize = 13;
const H_CREATED: usize = 14;
const H_LAST_WARN: usize = 15;
const H_LAYOUT_COUNT: usize = 16;
const H_DROPS: usize = 24; // DropReason::COUNT words
const H_SELF: usize = 40; // SelfCounter::COUNT words
const HEADER_WORDS: usize = 64;
const LAYOUT_TABLE: usize = HEADER_WORDS;
/// Lanes: one word per worker process that holds one, its pid (0: free).
pub const MAX_LANES: usize = 256;
const LANE_TABLE: usize = LAYOUT_TABLE + MAX_LAYOUTS * LAYOUT_WORDS;
const INDEX_START: usize = LANE_TABLE + MAX_LANES;

/// Smallest region the store accepts, in bytes.
pub const MIN_REGION_BYTES: usize = 64 * 1024;

/// Why an update did not reach its own series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The heap (or the hash index) has no room for a new series.
    ZoneFull = 0,
    /// `gateway_metrics_max_series` was reached.
    MaxSeries = 1,
    /// Not even the family's overflow series could be created; the update is lost.
    Lost = 2,
    /// The histogram's bucket layout could not be registered in the zone.
    LayoutTableFull = 3,
    /// A worker process found no free lane (see [`Store::claim_lane`]): its in-flight requests
    /// are not in the gauge.
    NoLane = 4,
    /// A series' exemplars found no room in the zone (the update itself was recorded).
    Exemplar = 5,
}

impl DropReason {
    pub const COUNT: usize = 6;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::ZoneFull,
        DropReason::MaxSeries,
        DropReason::Lost,
        DropReason::LayoutTableFull,
        DropReason::NoLane,
        DropReason::Exemplar,
    ];

    /// The value of the `reason` label in the self-metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ZoneFull => "zone_full",
            DropReason::MaxSeries => "max_series",
            DropReason::Lost => "lost",
            DropReason::LayoutTableFull => "layout_table_full",
            DropReason::NoLane => "worker_lanes_full",
            DropReason::Exemplar => "exemplar_zone_full",
        }
    }
}

/// Zone-wide counters of events that are not series (bad API calls, unknown model prices...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfCounter {
    /// Calls from Lua rejected for bad arguments.
    InvalidCalls = 0,
    /// Unused (unpriced models are a family of their own); the word keeps its place in the
    /// zone's format.
    Reserved = 1,
    /// Zone re-initialisations because the region did not hold this module's layout.
    ZoneResets = 2,
}

impl SelfCounter {
    pub const COUNT: usize = 3;
}

/// Errors of the store; all of them are handled by counting a drop, never by failing a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("shared memory region too small: {0} bytes, at least {MIN_REGION_BYTES} needed")]
    RegionTooSmall(usize),
    #[error("region does not hold a gateway-metrics table")]
    NotInitialised,
    #[error("series key too long: {0} bytes")]
    KeyTooLong(usize),
    #[error("too many values for one series: {0}")]
    TooManyValues(usize),
    #[error("too many bucket bounds: {0}, at most {MAX_BOUNDS}")]
    TooManyBounds(usize),
    #[error("bucket layout table is full")]
    LayoutTableFull,
}

/// A lock around inserts. In nginx this is the zone's shm mutex; in tests a spin lock.
pub trait InsertLock {
    fn lock(&self);
    fn unlock(&self);
}

struct Guard<'l, L: InsertLock + ?Sized>(&'l L);

impl<'l, L: InsertLock + ?Sized> Guard<'l, L> {
    fn new(lock: &'l L) -> Self {
        lock.lock();
        Guard(lock)
    }
}

impl<L: InsertLock + ?Sized> Drop for Guard<'_, L> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// The family bit of exemplar entries: `EXEMPLARS | family` holds the exemplars of a series of
/// `family` (built-in ids are small, declared ones have the top bit: neither has this one).
pub const EXEMPLARS: u32 = 0x4000_0000;

/// Identity of a series apart from its label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesKind {
    /// Family id: small numbers for built-in families, name hashes for declared ones.
    pub family: u32,
    /// Bucket layout id (1-based index into the zone's layout table), 0 for non-histograms.
    pub layout: u8,
    /// Number of value words.
    pub n_values: u8,
}

impl SeriesKind {
    /// The header bits that do not depend on the key (family, layout, number of values).
    pub fn bits(self) -> u64 {
        self.header(0)
    }

    fn header(self, key_len: usize) -> u64 {
        (u64::from(self.family) << 32)
            | ((key_len as u64) << 16)
            | (u64::from(self.layout) << 8)
            | u64::from(self.n_values)
    }

    fn from_header(h: u64) -> (SeriesKind, usize) {
        (
            SeriesKind {
                family: (h >> 32) as u32,
                layout: (h >> 8) as u8,
                n_values: h as u8,
            },
            ((h >> 16) & 0xffff) as usize,
        )
    }
}

/// Limits an insert is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Cardinality cap over all families (overflow series not counted).
    pub max_series: u64,
}

/// Where an update landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the series the labels asked for.
    Own(usize),
    /// In the family's overflow series, for the given reason.
    Overflow(usize, DropReason),
}

/// One series as the renderer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub kind: SeriesKind,
    pub key: KeyWords<'a>,
    pub values: &'a [AtomicU64],
    /// True for the overflow reserve's series.
    pub overflow: bool,
    /// When the series was created (Unix milliseconds).
    pub created_ms: u64,
    /// Word offset of its values in the region (what its exemplars are keyed by).
    pub values_off: usize,
}

/// A series key as stored: bytes packed little-endian in words.
#[derive(Debug, Clone, Copy)]
pub struct KeyWords<'a> {
    words: &'a [AtomicU64],
    len: usize,
}

impl KeyWords<'_> {
    /// Copies the key bytes out of shared memory.
    pub fn read_into(&self, out: &mut Vec<u8>) {
        out.clear();
        for w in self.words {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(self.len);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Space accounting for the self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub region_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub series: u64,
    pub overflow_series: u64,
    pub index_capacity: u64,
}

/// A view of an initialised region.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    w: &'a [AtomicU64],
}

/// The time a new series records as its creation (Unix milliseconds). Read only when a series
/// is inserted, so the clock costs nothing on the update path.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn words_for(bytes: usize) -> usize {
    bytes.div_ceil(8)
}

impl<'a> Store<'a> {
    /// Formats `region` as an empty table (the caller holds it exclusively, e.g. at zone creation).
    /// Clears the metadata (header, tables, index) and leaves the heap untouched: its words are
    /// written by the inserts that publish them.
    pub fn format(region: &'a [AtomicU64], now_unix: u64) -> Result<Store<'a>, StoreError> {
        Self::format_inner(region, now_unix, false)
    }

    /// [`Store::format`] for a region known to be all zero (a shared mapping nginx has just
    /// created): writes only the header words, so memory the store has not used yet stays
    /// untouched (not even paged in).
    pub fn format_zeroed(region: &'a [AtomicU64], now_unix: u64) -> Result<Store<'a>, StoreError> {
        Self::format_inner(region, now_unix, true)
    }

    fn format_inner(
        region: &'a [AtomicU64],
        now_unix: u64,
        zeroed: bool,
    ) -> Result<Store<'a>, StoreError> {
        let total = region.len();
        if total * 8 < MIN_REGION_BYTES {
            return Err(StoreError::RegionTooSmall(total * 8));
        }
        // One index slot per 24 heap words keeps the index at ~1/3 of the region for tiny
        // series and ~6% for histogram series, and the load factor under 3/4 in practice.
        let rest = total - INDEX_START;
        let mut cap = (rest / 24).max(64).next_power_of_two();
        while cap > rest / 4 {
            cap /= 2;
        }
        let main_start = INDEX_START + cap;
        let heap = total - main_start;
        // The overflow reserve: room for a few hundred overflow series whatever the zone size.
        let reserve = (heap / 32).clamp(1024, 32 * 1024);
        let main_end = total - reserve;
        if !zeroed {
            for w in &region[..main_start] {
                w.store(0, Ordering::Relaxed);
            }
        }
        let set = |i: usize, v: u64| region[i].store(v, Ordering::Relaxed);
        set(H_VERSION, FORMAT_VERSION);
        set(H_TOTAL_WORDS, total as u64);
        set(H_INDEX_START, INDEX_START as u64);
        set(H_INDEX_CAP, cap as u64);
        set(H_MAIN_START, main_start as u64);
        set(H_MAIN_END, main_end as u64);
        set(H_RESERVE_END, total as u64);
        set(H_MAIN_BUMP, main_start as u64);
        set(H_MAIN_PUBLISHED, main_start as u64);
        set(H_RESERVE_BUMP, main_end as u64);
        set(H_RESERVE_PUBLISHED, main_end as u64);
        set(H_CREATED, now_unix);
        region[H_MAGIC].store(MAGIC, Ordering::Release);
        Ok(Store { w: region })
    }

    /// Opens a region formatted earlier (by this process or another one sharing it).
    pub fn open(region: &'a [AtomicU64]) -> Result<Store<'a>, StoreError> {
        let total = region.len();
        if total * 8 < MIN_REGION_BYTES {
            return Err(StoreError::RegionTooSmall(total * 8));
        }
        let get = |i: usize| region[i].load(Ordering::Acquire);
        if get(H_MAGIC) != MAGIC || get(H_VERSION) != FORMAT_VERSION {
            return Err(StoreError::NotInitialised);
        }
        let idx_start = get(H_INDEX_START) as usize;
        let cap = get(H_INDEX_CAP) as usize;
        let main_start = get(H_MAIN_START) as usize;
        let main_end = get(H_MAIN_END) as usize;
        let consistent = get(H_TOTAL_WORDS) as usize == total
            && idx_start == INDEX_START
            && cap.is_power_of_two()
            && main_start == idx_start + cap
            && main_start < main_end
            && main_end < total
            && get(H_RESERVE_END) as usize == total;
        if !consistent {
            return Err(StoreError::NotInitialised);
        }
        Ok(Store { w: region })
    }

    /// Attaches to a region this process has already opened successfully (the hot path skips
    /// re-validating the header on every request; every access stays bounds-checked).
    pub fn attach(region: &'a [AtomicU64]) -> Option<Store<'a>> {
        (region.len() >= HEADER_WORDS).then_some(Store { w: region })
    }

    /// Opens the region if it holds a table, formats it otherwise. Returns whether it was reused.
    /// `zeroed`: the region is known to be all zero (see [`Store::format_zeroed`]).
    pub fn open_or_format(
        region: &'a [AtomicU64],
        now_unix: u64,
        zeroed: bool,
    ) -> Result<(Store<'a>, bool), StoreError> {
        match Store::open(region) {
            Ok(s) => Ok((s, true)),
            Err(StoreError::NotInitialised) => {
                let had_data = region
                    .iter()
                    .take(HEADER_WORDS)
                    .any(|w| w.load(Ordering::Relaxed) != 0);
                let s = Self::format_inner(region, now_unix, zeroed && !had_data)?;
                if had_data {
                    s.bump_self(SelfCounter::ZoneResets, 1);
                }
                Ok((s, false))
            }
            Err(e) => Err(e),
        }
    }

    #[inline]
    fn word(&self, i: usize) -> Option<&'a AtomicU64> {
        self.w.get(i)
    }

    #[inline]
    fn hdr(&self, i: usize) -> u64 {
        self.w[i].load(Ordering::Acquire)
    }

    /// Unix time at which the zone was formatted (for `*_start_time_seconds`).
    pub fn created(&self) -> u64 {
        self.hdr(H_CREATED)
    }

    /// Claims a lane for the process `pid`: a number no other live process of the zone holds,
    /// reused from processes that are gone (`alive` says whether a pid still runs). A worker
    /// keeps its lane while it runs, through reloads: the new workers of a reload take other
    /// lanes while the old ones finish their requests. A lane is free again once its holder is
    /// gone (not when it starts exiting: its last requests may still decrement its series).
    /// `None`: every lane is held by a live process.
    pub fn claim_lane(&self, pid: u64, alive: impl Fn(u64) -> bool) -> Option<u32> {
        if pid == 0 {
            return None;
        }
        let lanes = self.w.get(LANE_TABLE..LANE_TABLE + MAX_LANES)?;
        if let Some(i) = lanes.iter().position(|l| l.load(Ordering::Acquire) == pid) {
            return Some(i as u32);
        }
        for (i, l) in lanes.iter().enumerate() {
            let holder = l.load(Ordering::Acquire);
            if (holder == 0 || !alive(holder))
                && l.compare_exchange(holder, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(i as u32);
            }
        }
        None
    }

    /// The pid holding a lane (0: free).
    pub fn lane_holder(&self, lane: u32) -> u64 {
        if lane as usize >= MAX_LANES {
            return 0;
        }
        self.w
            .get(LANE_TABLE + lane as usize)
            .map_or(0, |l| l.load(Ordering::Acquire))
    }

    /// Registers a bucket layout (or finds it) and returns its 1-based id.
    pub fn register_layout<L: InsertLock + ?Sized>(
        &self,
        lock: &L,
        bounds: &[f64],
    ) -> Result<u8, StoreError> {
        if bounds.len() > MAX_BOUNDS {
            return Err(StoreError::TooManyBounds(bounds.len()));
        }
        if let Some(id) = self.find_layout(bounds) {
            return Ok(id);
        }
        let _g = Guard::new(lock);
        if let Some(id) = self.find_layout(bounds) {
            return Ok(id);
        }
        let n = self.hdr(H_LAYOUT_COUNT) as usize;
        if n >= MAX_LAYOUTS {
            return Err(StoreError::LayoutTableFull);
        }
        let base = LAYOUT_TABLE + n * LAYOUT_WORDS;
        self.w[base].store(bounds.len() as u64, Ordering::Relaxed);
        for (i, b) in bounds.iter().enumerate() {
            self.w[base + 1 + i].store(b.to_bits(), Ordering::Relaxed);
        }
        self.w[H_LAYOUT_COUNT].store(n as u64 + 1, Ordering::Release);
        Ok(n as u8 + 1)
    }

    fn find_layout(&self, bounds: &[f64]) -> Option<u8> {
        let n = (self.hdr(H_LAYOUT_COUNT) as usize).min(MAX_LAYOUTS);
        (0..n)
            .find(|&l| {
                let base = LAYOUT_TABLE + l * LAYOUT_WORDS;
                self.w[base].load(Ordering::Relaxed) as usize == bounds.len()
                    && bounds
                        .iter()
                        .enumerate()
                        .all(|(i, b)| self.w[base + 1 + i].load(Ordering::Relaxed) == b.to_bits())
            })
            .map(|l| l as u8 + 1)
    }

    /// The bounds of a registered layout.
    pub fn layout_bounds(&self, id: u8) -> Option<Vec<f64>> {
        let l = usize::from(id).checked_sub(1)?;
        if l >= (self.hdr(H_LAYOUT_COUNT) as usize).min(MAX_LAYOUTS) {
            return None;
        }
        let base = LAYOUT_TABLE + l * LAYOUT_WORDS;
        let n = (self.w[base].load(Ordering::Relaxed) as usize).min(MAX_BOUNDS);
        Some(
            (0..n)
                .map(|i| f64::from_bits(self.w[base + 1 + i].load(Ordering::Relaxed)))
                .collect(),
        )
    }

    /// Finds a series without inserting it.
    #[inline]
    pub fn find(&self, kind: SeriesKind, key: &[u8]) -> Option<usize> {
        if key.len() > u16::MAX as usize {
            return None;
        }
        let header = kind.header(key.len());
        self.probe(header, key, hash_key(header, key)).ok()
    }

    /// Finds a series by its raw label values joined on the stack (see [`StackKey`] for why a
    /// match needs no sanitising); `None` when the series does not exist under those bytes.
    #[inline]
    pub fn find_joined<const N: usize>(
        &self,
        kind: SeriesKind,
        key: &StackKey<N>,
    ) -> Option<usize> {
        let padded = key.padded()?;
        let header = kind.header(key.len());
        let hash = crate::hash::hash_padded(header, padded, key.len());
        self.probe_by(hash, |off| {
            if self.w[off].load(Ordering::Relaxed) != header {
                return false;
            }
            let Some(words) = self.w.get(off + 1..off + 1 + padded.len() / 8) else {
                return false;
            };
            words.iter().zip(padded.chunks_exact(8)).all(|(w, c)| {
                w.load(Ordering::Relaxed) == u64::from_le_bytes(c.try_into().unwrap_or_default())
            })
        })
        .ok()
    }

    /// Probes the index: `Ok(entry offset)` when found, `Err(first empty slot)` otherwise
    /// (`Err(usize::MAX)` if the index is full or unreadable).
    #[inline]
    fn probe(&self, header: u64, key: &[u8], hash: u64) -> Result<usize, usize> {
        self.probe_by(hash, |off| self.entry_matches(off, header, key))
    }

    /// The probe loop; `matches` is asked about every entry whose slot tag matches the hash
    /// (with an offset inside the region).
    #[inline]
    fn probe_by(&self, hash: u64, matches: impl Fn(usize) -> bool) -> Result<usize, usize> {
        let start = self.hdr(H_INDEX_START) as usize;
        let cap = self.hdr(H_INDEX_CAP) as usize;
        if cap == 0 {
            return Err(usize::MAX);
        }
        let mask = cap - 1;
        let tag = hash >> 32;
        let mut i = (hash as usize) & mask;
        for _ in 0..cap {
            let Some(slot) = self.word(start + i) else {
                return Err(usize::MAX);
            };
            let s = slot.load(Ordering::Acquire);
            if s == 0 {
                return Err(start + i);
            }
            if s >> 32 == tag {
                let off = (s & 0xffff_ffff) as usize;
                if off < self.w.len() && matches(off) {
                    return Ok(off);
                }
            }
            i = (i + 1) & mask;
        }
        Err(usize::MAX)
    }

    #[inline]
    fn entry_matches(&self, off: usize, header: u64, key: &[u8]) -> bool {
        match self.word(off) {
            Some(h) if h.load(Ordering::Relaxed) == header => {}
            _ => return false,
        }
        let Some(words) = self.w.get(off + 1..off + 1 + words_for(key.len())) else {
            return false;
        };
        let mut chunks = key.chunks(8);
        words.iter().all(|w| {
            let c = chunks.next().unwrap_or(&[]);
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            w.load(Ordering::Relaxed) == u64::from_le_bytes(b)
        })
    }

    /// The value words of the series at `off` (an offset from `find`/`upsert`).
    #[inline]
    pub fn values(&self, off: usize) -> &'a [AtomicU64] {
        let Some(h) = self.word(off) else { return &[] };
        let (kind, key_len) = SeriesKind::from_header(h.load(Ordering::Relaxed));
        let start = off + 1 + words_for(key_len);
        self.w
            .get(start..start + usize::from(kind.n_values))
            .unwrap_or(&[])
    }

    /// Finds or creates the series for `key`; on a cap or a full zone the update is redirected
    /// to the family's overflow series (`overflow_key`), and the drop is counted.
    pub fn upsert<L: InsertLock + ?Sized>(
        &self,
        lock: &L,
        limits: Limits,
        kind: SeriesKind,
        key: &[u8],
        overflow_key: &[u8],
    ) -> Result<Placement, StoreError> {
        if key.len() > u16::MAX as usize || overflow_key.len() > u16::MAX as usize {
            return Err(StoreError::KeyTooLong(key.len().max(overflow_key.len())));
        }
        let header = kind.header(key.len());
        let hash = hash_key(header, key);
        if let Ok(off) = self.probe(header, key, hash) {
            return Ok(Placement::Own(off));
        }
        let reason = {
            let _g = Guard::new(lock);
            match self.insert_locked(Some(limits), kind, header, key, hash, false) {
                Ok(off) => return Ok(Placement::Own(off)),
                Err(r) => r,
            }
        };
        self.count_drop(reason, 1);
        let oheader = kind.header(overflow_key.len());
        let ohash = hash_key(oheader, overflow_key);
        if let Ok(off) = self.probe(oheader, overflow_key, ohash) {
            return Ok(Placement::Overflow(off, reason));
        }
        let _g = Guard::new(lock);
        match self.insert_locked(Some(limits), kind, oheader, overflow_key, ohash, true) {
            Ok(off) => Ok(Placement::Overflow(off, reason)),
            Err(_) => {
                self.count_drop(DropReason::Lost, 1);
                Ok(Placement::Overflow(usize::MAX, DropReason::Lost))
            }
        }
    }

    /// Inserts an entry (the caller holds the insert lock). `limits`: `None` for an entry that is
    /// not a series (exemplars), neither capped nor counted.
    fn insert_locked(
        &self,
        limits: Option<Limits>,
        kind: SeriesKind,
        header: u64,
        key: &[u8],
        hash: u64,
        overflow: bool,
    ) -> Result<usize, DropReason> {
        let slot = match self.probe(header, key, hash) {
            Ok(off) => return Ok(off),
            Err(usize::MAX) => return Err(DropReason::ZoneFull),
            Err(slot) => slot,
        };
        let cap = self.hdr(H_INDEX_CAP);
        let entries = self.hdr(H_ENTRIES);
        if let (false, Some(l)) = (overflow, limits) {
            if self.hdr(H_SERIES) >= l.max_series {
                return Err(DropReason::MaxSeries);
            }
        }
        // Main series may fill the index to 3/4; overflow series may use what is left.
        let index_limit = if overflow {
            cap - cap / 16
        } else {
            cap / 4 * 3
        };
        if entries >= index_limit {
            return Err(DropReason::ZoneFull);
        }
        let (bump_i, pub_i, start, end) = if overflow {
            (
                H_RESERVE_BUMP,
                H_RESERVE_PUBLISHED,
                self.hdr(H_MAIN_END),
                self.hdr(H_RESERVE_END),
            )
        } else {
            (
                H_MAIN_BUMP,
                H_MAIN_PUBLISHED,
                self.hdr(H_MAIN_START),
                self.hdr(H_MAIN_END),
            )
        };
        let off = self.hdr(bump_i) as usize;
        let kw = words_for(key.len());
        let size = 1 + kw + usize::from(kind.n_values) + 1;
        // The bump pointer is shared memory too: never write outside its area (a corrupt one
        // could point into the header or past the end).
        let fits = off >= start as usize
            && off
                .checked_add(size)
                .is_some_and(|e| e <= end as usize && e <= self.w.len());
        if !fits {
            return Err(DropReason::ZoneFull);
        }
        let (Some(entry), Some(slot_w)) = (self.w.get(off..off + size), self.word(slot)) else {
            return Err(DropReason::ZoneFull);
        };
        for (i, c) in key.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            entry[1 + i].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        for v in &entry[1 + kw..size - 1] {
            v.store(0, Ordering::Relaxed);
        }
        entry[size - 1].store(now_ms(), Ordering::Relaxed);
        entry[0].store(header, Ordering::Relaxed);
        self.w[bump_i].store((off + size) as u64, Ordering::Relaxed);
        // Release: the entry's words become visible before the slot and the published mark.
        slot_w.store(((hash >> 32) << 32) | off as u64, Ordering::Release);
        self.w[pub_i].store((off + size) as u64, Ordering::Release);
        self.w[H_ENTRIES].fetch_add(1, Ordering::Relaxed);
        if !overflow && limits.is_some() {
            self.w[H_SERIES].fetch_add(1, Ordering::Relaxed);
        }
        Ok(off)
    }

    /// The word offset in the region of `values` (words of this store), if they are in it.
    pub fn offset_of(&self, values: &[AtomicU64]) -> Option<usize> {
        let base = self.w.as_ptr() as usize;
        let p = values.as_ptr() as usize;
        let bytes = p.checked_sub(base)?;
        let off = bytes / 8;
        (bytes % 8 == 0 && off < self.w.len()).then_some(off)
    }

    /// The exemplar slots ([`crate::exemplar`], `slots` of them) of the series whose value
    /// words are `values` (of the family `family`, layout `layout`), made on first use without
    /// counting as a series. `None` when the series is not in this store, `slots` is more than
    /// [`crate::exemplar::MAX_SLOTS`] or the zone has no room (counted as
    /// [`DropReason::Exemplar`]).
    pub fn exemplar_slots<L: InsertLock + ?Sized>(
        &self,
        lock: &L,
        values: &[AtomicU64],
        family: u32,
        layout: u8,
        slots: usize,
    ) -> Option<&'a [AtomicU64]> {
        if slots == 0 || slots > crate::exemplar::MAX_SLOTS || family & EXEMPLARS != 0 {
            return None;
        }
        let key = (self.offset_of(values)? as u64).to_le_bytes();
        let kind = SeriesKind {
            family: EXEMPLARS | family,
            layout,
            n_values: (slots * crate::exemplar::SLOT_WORDS) as u8,
        };
        let header = kind.header(key.len());
        let hash = hash_key(header, &key);
        if let Ok(off) = self.probe(header, &key, hash) {
            return Some(self.values(off));
        }
        let inserted = {
            let _g = Guard::new(lock);
            self.insert_locked(None, kind, header, &key, hash, false)
        };
        match inserted {
            Ok(off) => Some(self.values(off)),
            Err(_) => {
                self.count_drop(DropReason::Exemplar, 1);
                None
            }
        }
    }

    /// Counts an update that did not reach its own series.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.w[H_DROPS + reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.hdr(H_DROPS + reason as usize)
    }

    pub fn bump_self(&self, c: SelfCounter, n: u64) {
        self.w[H_SELF + c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn self_counter(&self, c: SelfCounter) -> u64 {
        self.hdr(H_SELF + c as usize)
    }

    /// Rate-limits warnings across all processes: true for the first caller in each window.
    pub fn should_warn(&self, now_unix: u64, window_secs: u64) -> bool {
        let w = &self.w[H_LAST_WARN];
        let last = w.load(Ordering::Relaxed);
        if last != 0 && now_unix < last.saturating_add(window_secs) {
            return false;
        }
        w.compare_exchange(last, now_unix.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub fn usage(&self) -> Usage {
        let total = self.w.len() as u64 * 8;
        let main_start = self.hdr(H_MAIN_START);
        let used_main = self.hdr(H_MAIN_PUBLISHED).saturating_sub(main_start);
        let used_res = self
            .hdr(H_RESERVE_PUBLISHED)
            .saturating_sub(self.hdr(H_MAIN_END));
        // Saturating: these header words are shared and may be garbage in a corrupt zone.
        let used = main_start
            .saturating_add(used_main)
            .saturating_add(used_res)
            .saturating_mul(8);
        let entries = self.hdr(H_ENTRIES);
        let series = self.hdr(H_SERIES);
        Usage {
            region_bytes: total,
            used_bytes: used.min(total),
            free_bytes: total.saturating_sub(used),
            series,
            overflow_series: entries.saturating_sub(series),
            index_capacity: self.hdr(H_INDEX_CAP),
        }
    }

    /// Walks every published series, main heap first then the overflow reserve, in insertion
    /// order (so the output order is stable across scrapes). Takes no lock.
    pub fn for_each(&self, f: impl FnMut(Entry<'a>)) {
        let mut pos = 0;
        self.for_each_from(&mut pos, usize::MAX, f);
    }

    /// [`Store::for_each`] in bounded steps: visits at most `budget` heap entries (at least
    /// one) from the cursor `pos` (0 to start a walk; updated in place) and returns true once the
    /// walk is complete. Same order as `for_each`; series published while a walk is under way are
    /// visited if the cursor has not passed their place yet, never twice. Takes no lock.
    pub fn for_each_from(
        &self,
        pos: &mut usize,
        budget: usize,
        mut f: impl FnMut(Entry<'a>),
    ) -> bool {
        let main_end = self.hdr(H_MAIN_END) as usize;
        // The cursor is a word offset: below main_end it is in the main heap, else in the
        // reserve. usize::MAX: done.
        let areas = [
            (
                self.hdr(H_MAIN_START) as usize,
                self.hdr(H_MAIN_PUBLISHED) as usize,
                main_end,
                false,
            ),
            (
                main_end,
                self.hdr(H_RESERVE_PUBLISHED) as usize,
                usize::MAX,
                true,
            ),
        ];
        let mut left = budget.max(1);
        for (start, end, limit, overflow) in areas {
            if *pos >= limit {
                continue;
            }
            let end = end.min(limit).min(self.w.len());
            let mut off = (*pos).max(start);
            while off < end {
                if left == 0 {
                    *pos = off;
                    return false;
                }
                left -= 1;
                let h = self.w[off].load(Ordering::Acquire);
                if h == 0 {
                    // An all-zero header is a one-word entry with no key and no values (family
                    // 0, layout 0, n_values 0, empty key): nothing to show, but the entries
                    // after it must still be walked (its creation time follows).
                    off += 2;
                    continue;
                }
                let (kind, key_len) = SeriesKind::from_header(h);
                let kw = words_for(key_len);
                let n = usize::from(kind.n_values);
                let size = 1 + kw + n + 1;
                let Some(words) = self.w.get(off + 1..off + size) else {
                    break;
                };
                f(Entry {
                    kind,
                    key: KeyWords {
                        words: &words[..kw],
                        len: key_len,
                    },
                    values: &words[kw..kw + n],
                    overflow,
                    created_ms: words[kw + n].load(Ordering::Relaxed),
                    values_off: off + 1 + kw,
                });
                off += size;
            }
            // This area is done (what is published later in it is left for the next walk).
            *pos = limit;
        }
        *pos = usize::MAX;
        true
    }
}

/// Adds to a counter or gauge word.
#[inline]
pub fn add_u64(w: &AtomicU64, n: u64) {
    w.fetch_add(n, Ordering::Relaxed);
}

/// Adds to a floating-point word (f64 bits); a CAS loop, uncontended in practice.
#[inline]
pub fn add_f64(w: &AtomicU64, v: f64) {
    let mut cur = w.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + v).to_bits();
        match w.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(c) => cur = c,
        }
    }
}

/// Stores a floating-point gauge.
#[inline]
pub fn set_f64(w: &AtomicU64, v: f64) {
    w.store(v.to_bits(), Ordering::Relaxed);
}

pub fn load_f64(w: &AtomicU64) -> f64 {
    f64::from_bits(w.load(Ordering::Relaxed))
}

/// Records one observation into a histogram series whose values are
/// `[bucket_0 .. bucket_n (= +Inf), sum]`, buckets *not* cumulative: one atomic add picks the
/// bucket, so the renderer's prefix sums are monotone and `+Inf` equals `_count` by construction.
#[inline(always)]
pub fn observe(values: &[AtomicU64], bounds: &[f64], v: f64) {
    observe_in(
        values,
        bounds.len(),
        crate::buckets::bucket_index(bounds, v),
        v,
    );
}

/// [`observe`] with the value's bucket already found (`bucket_index(bounds, v)` for bounds of
/// `n` bounds): series that observe the same value in the same buckets search them once.
#[inline(always)]
pub fn observe_in(values: &[AtomicU64], n: usize, bucket: usize, v: f64) {
    if values.len() < n + 2 || bucket > n {
        return;
    }
    values[bucket].fetch_add(1, Ordering::Relaxed);
    add_f64(&values[n + 1], v);
}
