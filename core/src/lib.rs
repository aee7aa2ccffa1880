//! nginx-free core of gateway-metrics: the metric catalogue, label sanitising and escaping,
//! bucket maths, the shared-memory series table (over a plain region of atomic words) and the
//! Prometheus text encoder. The nginx module is thin glue around this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod buckets;
pub mod cache;
pub mod catalogue;
pub mod config;
pub mod exemplar;
pub mod expo;
pub mod follow;
pub mod format;
pub mod hash;
pub mod labels;
pub mod render;
pub mod store;
pub mod usage;

use std::sync::atomic::AtomicU64;

use cache::{Label, SeriesCache};
use labels::{KeyBuilder, StackKey};
use store::{DropReason, InsertLock, Limits, Placement, SeriesKind, Store};

/// [`series`] for raw label values: an existing series is found from the values joined on the
/// stack (no allocation, no sanitising: see [`StackKey`]); only a miss builds the sanitised key.
#[inline]
pub fn series_of<'a, L: InsertLock + ?Sized>(
    store: &Store<'a>,
    lock: &L,
    limits: Limits,
    kind: SeriesKind,
    values: &[&[u8]],
) -> (Option<&'a [AtomicU64]>, Option<DropReason>) {
    let short: StackKey = StackKey::join(values);
    let found = if short.padded().is_some() {
        store.find_joined(kind, &short)
    } else {
        store.find_joined(kind, &StackKey::<{ labels::STACK_KEY_BYTES }>::join(values))
    };
    if let Some(off) = found {
        return (Some(store.values(off)), None);
    }
    let mut key = KeyBuilder::new();
    key.set(values);
    series(store, lock, limits, kind, key.as_bytes(), values.len())
}

/// Finds or creates the series for `key`, falling back to the family's overflow series.
/// Returns the value words to update (`None` if even the overflow series could not be made)
/// and the drop reason when the update did not reach its own series.
#[inline]
pub fn series<'a, L: InsertLock + ?Sized>(
    store: &Store<'a>,
    lock: &L,
    limits: Limits,
    kind: SeriesKind,
    key: &[u8],
    n_labels: usize,
) -> (Option<&'a [AtomicU64]>, Option<DropReason>) {
    // Fast path: an existing series, no lock.
    if let Some(off) = store.find(kind, key) {
        return (Some(store.values(off)), None);
    }
    let overflow = labels::overflow_key(n_labels);
    match store.upsert(lock, limits, kind, key, &overflow) {
        Ok(Placement::Own(off)) => (Some(store.values(off)), None),
        Ok(Placement::Overflow(usize::MAX, r)) => (None, Some(r)),
        Ok(Placement::Overflow(off, r)) => (Some(store.values(off)), Some(r)),
        Err(_) => {
            store.count_drop(DropReason::Lost, 1);
            (None, Some(DropReason::Lost))
        }
    }
}

/// [`series_of`] behind a per-process [`SeriesCache`]: a series recorded before is found without
/// touching its key; what the shared table gives for a new key is remembered (not an overflow).
#[inline(always)]
pub fn series_cached<'a, L: InsertLock + ?Sized, const N: usize>(
    cache: &mut SeriesCache<'a>,
    store: &Store<'a>,
    lock: &L,
    limits: Limits,
    kind: SeriesKind,
    labels: &[Label; N],
) -> (Option<&'a [AtomicU64]>, Option<DropReason>) {
    if let Some(v) = cache.get(kind.bits(), labels) {
        return (Some(v), None);
    }
    series_cache_miss(cache, store, lock, limits, kind, labels)
}

/// The shared-table path of [`series_cached`], kept out of line so that the hit path stays small.
#[cold]
#[inline(never)]
fn series_cache_miss<'a, L: InsertLock + ?Sized>(
    cache: &mut SeriesCache<'a>,
    store: &Store<'a>,
    lock: &L,
    limits: Limits,
    kind: SeriesKind,
    labels: &[Label],
) -> (Option<&'a [AtomicU64]>, Option<DropReason>) {
    let values: Vec<&[u8]> = labels.iter().map(|l| l.bytes).collect();
    let found = series_of(store, lock, limits, kind, &values);
    if let (Some(v), None) = found {
        cache.insert(kind.bits(), labels, v);
    }
    found
}
