//! The series table: inserts and lookups, key encoding, overflow and drop accounting, bucket
//! layouts, reloads over an existing region, and robustness against corrupt regions.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{key, region, req_key, req_kind, CheckedLock, Rng};
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::labels::{overflow_key, OVERFLOW_VALUE};
use gateway_metrics_core::render::{self, HistSpec, RenderSpec};
use gateway_metrics_core::store::{
    self, DropReason, Limits, Placement, SelfCounter, SeriesKind, Store, StoreError,
    FORMAT_VERSION, MAX_BOUNDS, MAX_LAYOUTS, MIN_REGION_BYTES,
};
use gateway_metrics_core::{labels, series};

/// Word offsets of the header fields poked by these tests (see the layout in store.rs).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_TOTAL_WORDS: usize = 2;
const H_INDEX_CAP: usize = 4;
const HEADER_WORDS: usize = 64;

const NO_LIMIT: Limits = Limits {
    max_series: u64::MAX,
};

fn counter(family: u32) -> SeriesKind {
    SeriesKind {
        family,
        layout: 0,
        n_values: 1,
    }
}

fn own(p: Placement) -> usize {
    match p {
        Placement::Own(off) => off,
        other => panic!("expected Own, got {other:?}"),
    }
}

fn all_entries(s: &Store) -> Vec<(SeriesKind, Vec<u8>, usize, bool)> {
    let mut out = Vec::new();
    s.for_each(|e| {
        let mut k = Vec::new();
        e.key.read_into(&mut k);
        assert_eq!(k.len(), e.key.len());
        assert_eq!(e.key.is_empty(), k.is_empty());
        assert_eq!(e.values.len(), usize::from(e.kind.n_values));
        out.push((e.kind, k, e.values.as_ptr() as usize, e.overflow));
    });
    out
}

fn assert_usage_consistent(s: &Store, region_words: usize) {
    let u = s.usage();
    assert_eq!(u.region_bytes, region_words as u64 * 8);
    assert_eq!(u.used_bytes + u.free_bytes, u.region_bytes);
    assert!(u.index_capacity.is_power_of_two());
}

// ---------------------------------------------------------------------------------------------
// Table basics
// ---------------------------------------------------------------------------------------------

#[test]
fn twenty_thousand_series_round_trip() {
    let r = region(4 << 20);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let lock = CheckedLock::default();
    let kind = counter(fam::CACHE);
    let n = 20_000u64;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("series-{i}").into_bytes()).collect();

    let mut offs = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.find(kind, k), None, "key {i} found before insert");
        let off = own(s
            .upsert(&lock, NO_LIMIT, kind, k, &overflow_key(1))
            .unwrap());
        store::add_u64(&s.values(off)[0], i as u64 + 1);
        offs.push(off);
    }
    assert_eq!(offs.iter().collect::<HashSet<_>>().len(), n as usize);
    assert!(!lock.is_held());

    // Found again at the same offset, by find and by upsert, without taking the lock.
    let before = lock.acquisitions.get();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.find(kind, k), Some(offs[i]));
        let p = s
            .upsert(&lock, NO_LIMIT, kind, k, &overflow_key(1))
            .unwrap();
        assert_eq!(p, Placement::Own(offs[i]));
        assert_eq!(s.values(offs[i])[0].load(Ordering::Relaxed), i as u64 + 1);
    }
    assert_eq!(
        lock.acquisitions.get(),
        before,
        "lookups of existing series locked"
    );

    let u = s.usage();
    assert_eq!(u.series, n);
    assert_eq!(u.overflow_series, 0);
    assert_usage_consistent(&s, r.len());
    for reason in DropReason::ALL {
        assert_eq!(s.drops(reason), 0);
    }

    // for_each: every series once, in insertion order, with its key and values.
    let entries = all_entries(&s);
    assert_eq!(entries.len(), n as usize);
    for (i, (k, bytes, vptr, overflow)) in entries.iter().enumerate() {
        assert_eq!(*k, kind);
        assert_eq!(bytes, &keys[i]);
        assert_eq!(*vptr, s.values(offs[i]).as_ptr() as usize);
        assert!(!overflow);
    }
}

#[test]
fn kinds_with_the_same_key_bytes_are_different_series() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let k = b"same-key-bytes";
    let kinds = [
        SeriesKind {
            family: 1,
            layout: 0,
            n_values: 1,
        },
        SeriesKind {
            family: 2,
            layout: 0,
            n_values: 1,
        },
        SeriesKind {
            family: 1,
            layout: 1,
            n_values: 1,
        },
        SeriesKind {
            family: 1,
            layout: 0,
            n_values: 2,
        },
        SeriesKind {
            family: 1,
            layout: 2,
            n_values: 16,
        },
        SeriesKind {
            family: 0x8000_0001,
            layout: 0,
            n_values: 1,
        },
        SeriesKind {
            family: u32::MAX,
            layout: u8::MAX,
            n_values: u8::MAX,
        },
    ];
    let mut offs = Vec::new();
    for kind in kinds {
        let off = own(s.upsert(&lock, NO_LIMIT, kind, k, b"").unwrap());
        assert_eq!(s.values(off).len(), usize::from(kind.n_values));
        offs.push(off);
    }
    assert_eq!(offs.iter().collect::<HashSet<_>>().len(), kinds.len());
    for (kind, off) in kinds.iter().zip(&offs) {
        assert_eq!(s.find(*kind, k), Some(*off));
    }
    // Values of one kind are not shared with another.
    for (i, off) in offs.iter().enumerate() {
        store::add_u64(&s.values(*off)[0], 10 + i as u64);
    }
    for (i, off) in offs.iter().enumerate() {
        assert_eq!(s.values(*off)[0].load(Ordering::Relaxed), 10 + i as u64);
    }
    let entries = all_entries(&s);
    assert_eq!(
        entries.iter().map(|e| e.0).collect::<Vec<_>>(),
        kinds.to_vec()
    );
    assert!(entries.iter().all(|e| e.1 == k));
    assert_eq!(
        s.find(
            SeriesKind {
                family: 3,
                layout: 0,
                n_values: 1
            },
            k
        ),
        None
    );
}

#[test]
fn keys_of_every_length_including_trailing_zero_bytes() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let kind = counter(fam::UNPRICED);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for len in 0..=100usize {
        keys.push((0..len).map(|i| (i % 251) as u8 + 1).collect()); // no zero byte
        keys.push(vec![0u8; len]); // all zero bytes
        let mut t: Vec<u8> = b"ab".iter().copied().take(len).collect();
        t.resize(len, 0); // "ab" then trailing zeros
        keys.push(t);
        keys.push(vec![0xff; len]);
    }
    // Drop duplicates (short lengths make some patterns coincide), keep first-seen order.
    let mut seen = HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));

    let mut offs = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let off = own(s.upsert(&lock, NO_LIMIT, kind, k, b"").unwrap());
        store::add_u64(&s.values(off)[0], i as u64);
        offs.push(off);
    }
    assert_eq!(offs.iter().collect::<HashSet<_>>().len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.find(kind, k), Some(offs[i]), "key {k:?}");
        assert_eq!(s.values(offs[i])[0].load(Ordering::Relaxed), i as u64);
    }
    // A key and the same key with one more trailing zero byte are different series.
    for len in 0..100 {
        let mut k = vec![7u8; len];
        let a = own(s.upsert(&lock, NO_LIMIT, counter(77), &k, b"").unwrap());
        k.push(0);
        let b = own(s.upsert(&lock, NO_LIMIT, counter(77), &k, b"").unwrap());
        assert_ne!(a, b, "len {len}");
    }
    let entries = all_entries(&s);
    assert_eq!(entries.len(), keys.len() + 200);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(&entries[i].1, k);
    }
    assert_eq!(s.usage().series, keys.len() as u64 + 200);
}

#[test]
fn longest_key_is_accepted_and_longer_ones_rejected() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let kind = counter(9);
    let max: Vec<u8> = (0..u16::MAX as usize).map(|i| (i * 31) as u8).collect();
    let off = own(s.upsert(&lock, NO_LIMIT, kind, &max, b"").unwrap());
    assert_eq!(s.find(kind, &max), Some(off));
    let mut too_long = max.clone();
    too_long.push(1);
    assert_eq!(s.find(kind, &too_long), None);
    assert_eq!(
        s.upsert(&lock, NO_LIMIT, kind, &too_long, b""),
        Err(StoreError::KeyTooLong(too_long.len()))
    );
    assert_eq!(
        s.upsert(&lock, NO_LIMIT, kind, b"short", &too_long),
        Err(StoreError::KeyTooLong(too_long.len()))
    );
    // series() turns the error into a counted, lost update.
    let (v, r2) = series(&s, &lock, NO_LIMIT, kind, &too_long, 1);
    assert!(v.is_none());
    assert_eq!(r2, Some(DropReason::Lost));
    assert_eq!(s.drops(DropReason::Lost), 1);
    assert!(!lock.is_held());
    let e = all_entries(&s);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, max);
}

#[test]
fn an_empty_series_of_family_zero_does_not_hide_later_series() {
    // `family 0, layout 0, n_values 0` with an empty key has an all-zero header word; the walk
    // must not take it for the end of the heap.
    let r = region(64 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let zero = SeriesKind {
        family: 0,
        layout: 0,
        n_values: 0,
    };
    s.upsert(&lock, NO_LIMIT, counter(1), b"before", b"")
        .unwrap();
    let _ = s.upsert(&lock, NO_LIMIT, zero, b"", b"");
    s.upsert(&lock, NO_LIMIT, counter(1), b"after", b"")
        .unwrap();
    let keys: Vec<Vec<u8>> = all_entries(&s)
        .into_iter()
        .filter(|e| e.0.family == 1)
        .map(|e| e.1)
        .collect();
    assert_eq!(keys, vec![b"before".to_vec(), b"after".to_vec()]);
}

#[test]
fn series_helper_finds_and_creates() {
    let r = region(64 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let kind = req_kind(0, 2);
    let k = req_key("GET", "/v1/chat", "200", "ns", "up");
    let (v, reason) = series(&s, &lock, NO_LIMIT, kind, &k, 5);
    let v = v.unwrap();
    assert_eq!(reason, None);
    assert_eq!(v.len(), 4);
    assert_eq!(lock.acquisitions.get(), 1);
    let (v2, reason) = series(&s, &lock, NO_LIMIT, kind, &k, 5);
    assert_eq!(reason, None);
    assert_eq!(v2.unwrap().as_ptr(), v.as_ptr());
    assert_eq!(lock.acquisitions.get(), 1, "fast path took the lock");
}

// ---------------------------------------------------------------------------------------------
// Overflow and drops
// ---------------------------------------------------------------------------------------------

#[test]
fn max_series_redirects_new_series_to_the_overflow_series() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let n = 10u64;
    let limits = Limits { max_series: n };
    let kind = req_kind(0, 3);
    let ok = overflow_key(5);
    let k = |i: u64| req_key("GET", &format!("/e/{i}"), "200", "ns", "up");

    let offs: Vec<usize> = (0..n)
        .map(|i| own(s.upsert(&lock, limits, kind, &k(i), &ok).unwrap()))
        .collect();

    // The N+1-th new key lands in the overflow series.
    let p = s.upsert(&lock, limits, kind, &k(n), &ok).unwrap();
    let Placement::Overflow(ooff, DropReason::MaxSeries) = p else {
        panic!("expected max_series overflow, got {p:?}");
    };
    assert_eq!(s.find(kind, &ok), Some(ooff));
    assert_eq!(s.find(kind, &k(n)), None, "the capped series was created");
    assert_eq!(s.drops(DropReason::MaxSeries), 1);

    // More new keys: same overflow series, one drop each.
    for i in n + 1..n + 20 {
        assert_eq!(
            s.upsert(&lock, limits, kind, &k(i), &ok).unwrap(),
            Placement::Overflow(ooff, DropReason::MaxSeries)
        );
    }
    assert_eq!(s.drops(DropReason::MaxSeries), 20);

    // Existing series keep updating in place.
    for (i, off) in offs.iter().enumerate() {
        assert_eq!(
            s.upsert(&lock, limits, kind, &k(i as u64), &ok).unwrap(),
            Placement::Own(*off)
        );
        store::observe(s.values(*off), &[1.0, 2.0, 3.0], 0.5);
    }
    assert_eq!(s.drops(DropReason::MaxSeries), 20);

    let u = s.usage();
    assert_eq!(u.series, n);
    assert_eq!(u.overflow_series, 1);

    // The overflow series of another family is a different one.
    let other = SeriesKind {
        family: fam::MODEL_REQUEST,
        ..kind
    };
    let ok3 = overflow_key(3);
    let p = s
        .upsert(&lock, limits, other, &key(&["m", "ns", "success"]), &ok3)
        .unwrap();
    let Placement::Overflow(o2, DropReason::MaxSeries) = p else {
        panic!("{p:?}")
    };
    assert_ne!(o2, ooff);
    assert_eq!(s.usage().overflow_series, 2);
    assert_eq!(s.usage().series, n);

    // for_each lists the overflow series last, flagged, with every label __overflow__.
    let e = all_entries(&s);
    assert_eq!(e.len(), n as usize + 2);
    assert!(e[..n as usize].iter().all(|e| !e.3));
    assert!(e[n as usize..].iter().all(|e| e.3));
    assert_eq!(e[n as usize].1, ok);
    assert_eq!(e[n as usize + 1].1, ok3);
    assert!(labels::split_key(&e[n as usize].1).all(|v| v == OVERFLOW_VALUE.as_bytes()));
    assert_eq!(labels::split_key(&ok).count(), 5);
    assert!(!lock.is_held());
}

#[test]
fn series_helper_returns_the_overflow_values() {
    let r = region(64 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let limits = Limits { max_series: 2 };
    let kind = counter(fam::RATE_LIMIT);
    for i in 0..2 {
        let (v, why) = series(&s, &lock, limits, kind, &key(&["ns", &i.to_string()]), 2);
        assert!(why.is_none());
        store::add_u64(&v.unwrap()[0], 1);
    }
    let mut ptr = None;
    for i in 2..12 {
        let (v, why) = series(&s, &lock, limits, kind, &key(&["ns", &i.to_string()]), 2);
        assert_eq!(why, Some(DropReason::MaxSeries));
        let v = v.unwrap();
        store::add_u64(&v[0], 1);
        assert_eq!(*ptr.get_or_insert(v.as_ptr()), v.as_ptr());
    }
    let o = s.find(kind, &overflow_key(2)).unwrap();
    assert_eq!(s.values(o).as_ptr(), ptr.unwrap());
    assert_eq!(s.values(o)[0].load(Ordering::Relaxed), 10);
    assert_eq!(s.drops(DropReason::MaxSeries), 10);
    assert_eq!(s.usage().series, 2);
    assert_eq!(s.usage().overflow_series, 1);
}

#[test]
fn a_full_heap_redirects_to_overflow_and_overflow_still_works() {
    let r = region(MIN_REGION_BYTES);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let kind = req_kind(0, 14);
    let ok = overflow_key(5);
    let big = |i: usize| {
        let filler = format!("{i:04}-{}", "x".repeat(240));
        req_key("POST", &filler, "200", &filler, &filler)
    };
    let mut own_n = 0;
    let mut first_full = None;
    for i in 0..200 {
        match s.upsert(&lock, NO_LIMIT, kind, &big(i), &ok).unwrap() {
            Placement::Own(off) => {
                own_n += 1;
                assert!(
                    first_full.is_none(),
                    "insert succeeded after the zone was full"
                );
                store::observe(
                    s.values(off),
                    &gateway_metrics_core::buckets::DEFAULT_DURATION_BUCKETS,
                    1.0,
                );
            }
            Placement::Overflow(off, DropReason::ZoneFull) => {
                assert_ne!(off, usize::MAX);
                first_full.get_or_insert(i);
                store::observe(
                    s.values(off),
                    &gateway_metrics_core::buckets::DEFAULT_DURATION_BUCKETS,
                    1.0,
                );
            }
            p => panic!("unexpected {p:?}"),
        }
    }
    let first_full = first_full.expect("a 64 KiB zone never filled up");
    assert!(own_n > 5, "only {own_n} series fit");
    assert_eq!(s.drops(DropReason::ZoneFull), 200 - first_full as u64);
    assert_eq!(s.drops(DropReason::MaxSeries), 0);
    assert_eq!(s.drops(DropReason::Lost), 0);
    let u = s.usage();
    assert_eq!(u.series, own_n);
    assert_eq!(u.overflow_series, 1);
    assert_usage_consistent(&s, r.len());
    assert!(u.free_bytes < u.region_bytes / 4);

    // The overflow series counted every redirected update.
    let o = s.find(kind, &ok).unwrap();
    let count: u64 = s.values(o)[..15]
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .sum();
    assert_eq!(count, 200 - first_full as u64);

    // Existing series still found; small new series of other families still get an overflow.
    assert_eq!(
        s.upsert(&lock, NO_LIMIT, kind, &big(0), &ok).unwrap(),
        Placement::Own(s.find(kind, &big(0)).unwrap())
    );
    // (The space left after the big series may still hold a few small ones.)
    let small_full = (0..10_000).find_map(|i| {
        let (v, why) = series(
            &s,
            &lock,
            NO_LIMIT,
            counter(fam::CACHE),
            format!("c{i}").as_bytes(),
            1,
        );
        assert!(v.is_some());
        why
    });
    assert_eq!(small_full, Some(DropReason::ZoneFull));
}

#[test]
fn a_full_index_redirects_to_overflow() {
    let r = region(MIN_REGION_BYTES);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let cap = s.usage().index_capacity;
    let kind = SeriesKind {
        family: 1,
        layout: 0,
        n_values: 0,
    };
    let mut own_n = 0u64;
    let mut full = 0u64;
    for i in 0..cap {
        match s
            .upsert(&lock, NO_LIMIT, kind, &i.to_le_bytes(), b"o")
            .unwrap()
        {
            Placement::Own(_) => own_n += 1,
            Placement::Overflow(off, DropReason::ZoneFull) => {
                assert_ne!(off, usize::MAX);
                full += 1;
            }
            p => panic!("{p:?}"),
        }
    }
    // Main series may fill the index to 3/4.
    assert_eq!(own_n, cap / 4 * 3);
    assert_eq!(full, cap - own_n);
    assert_eq!(s.drops(DropReason::ZoneFull), full);
    // Overflow series of other families still fit in what is left of the index.
    for f in 2..10 {
        let (v, why) = series(&s, &lock, NO_LIMIT, counter(f), b"new", 1);
        assert!(v.is_some(), "family {f}");
        assert_eq!(why, Some(DropReason::ZoneFull));
    }
    assert_eq!(s.usage().series, own_n);
    assert_eq!(s.usage().overflow_series, 9);
}

#[test]
fn updates_are_lost_when_even_the_overflow_reserve_is_full() {
    let r = region(MIN_REGION_BYTES);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let limits = Limits { max_series: 0 };
    let ok = overflow_key(5);
    let mut lost_at = None;
    let mut overflow_n = 0;
    for f in 100..400u32 {
        let kind = SeriesKind {
            family: f,
            layout: 1,
            n_values: 66,
        };
        match s.upsert(&lock, limits, kind, b"k", &ok).unwrap() {
            Placement::Overflow(usize::MAX, DropReason::Lost) => {
                lost_at.get_or_insert(f);
            }
            Placement::Overflow(_, DropReason::MaxSeries) => {
                assert!(
                    lost_at.is_none(),
                    "overflow created after the reserve filled"
                );
                overflow_n += 1;
            }
            p => panic!("{p:?}"),
        }
    }
    let lost_at = lost_at.expect("the reserve never filled");
    let lost = u64::from(400 - lost_at);
    assert!(overflow_n > 5);
    assert_eq!(s.drops(DropReason::MaxSeries), 300);
    assert_eq!(s.drops(DropReason::Lost), lost);
    assert_eq!(s.usage().series, 0);
    assert_eq!(s.usage().overflow_series, overflow_n);
    // series(): no values, reason lost.
    let kind = SeriesKind {
        family: 399,
        layout: 1,
        n_values: 66,
    };
    let (v, why) = series(&s, &lock, limits, kind, b"k2", 5);
    assert!(v.is_none());
    assert_eq!(why, Some(DropReason::Lost));
    assert_eq!(s.drops(DropReason::Lost), lost + 1);
    // Earlier overflow series still work.
    let kind = SeriesKind {
        family: 100,
        layout: 1,
        n_values: 66,
    };
    let (v, why) = series(&s, &lock, limits, kind, b"k3", 5);
    assert!(v.is_some());
    assert_eq!(why, Some(DropReason::MaxSeries));
    assert!(!lock.is_held());
}

#[test]
fn counters_and_warnings() {
    let r = region(64 << 10);
    let s = Store::format(&r, 42).unwrap();
    assert_eq!(s.created(), 42);
    s.count_drop(DropReason::LayoutTableFull, 3);
    s.bump_self(SelfCounter::InvalidCalls, 2);
    s.bump_self(SelfCounter::Reserved, 5);
    assert_eq!(s.drops(DropReason::LayoutTableFull), 3);
    assert_eq!(s.self_counter(SelfCounter::InvalidCalls), 2);
    assert_eq!(s.self_counter(SelfCounter::Reserved), 5);
    assert_eq!(s.self_counter(SelfCounter::ZoneResets), 0);

    assert!(s.should_warn(1000, 60));
    assert!(!s.should_warn(1000, 60));
    assert!(!s.should_warn(1059, 60));
    assert!(s.should_warn(1060, 60));
    assert!(!s.should_warn(1061, 60));

    let w = AtomicU64::new(0);
    store::add_f64(&w, 0.25);
    store::add_f64(&w, 1.5);
    assert_eq!(store::load_f64(&w), 1.75);
    store::set_f64(&w, -3.0);
    assert_eq!(store::load_f64(&w), -3.0);
    store::add_u64(&w, 0); // bits untouched
    assert_eq!(store::load_f64(&w), -3.0);
}

#[test]
fn observe_picks_one_bucket_and_adds_the_sum() {
    let bounds = [0.1, 1.0, 10.0];
    let v: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(0)).collect();
    for x in [0.05, 0.1, 0.5, 1.0, 5.0, 50.0, f64::NAN] {
        store::observe(&v, &bounds, x);
    }
    let b: Vec<u64> = v[..4].iter().map(|w| w.load(Ordering::Relaxed)).collect();
    assert_eq!(b, vec![2, 2, 1, 2]);
    assert!(store::load_f64(&v[4]).is_nan());
    // Too few value words: ignored, not a panic.
    store::observe(&v[..3], &bounds, 1.0);
    store::observe(&[], &bounds, 1.0);
    let b: Vec<u64> = v[..4].iter().map(|w| w.load(Ordering::Relaxed)).collect();
    assert_eq!(b, vec![2, 2, 1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Layouts and reloads
// ---------------------------------------------------------------------------------------------

#[test]
fn layouts_are_registered_once_until_the_table_is_full() {
    let r = region(64 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let d = gateway_metrics_core::buckets::DEFAULT_DURATION_BUCKETS;
    let a = s.register_layout(&lock, &d).unwrap();
    assert_eq!(a, 1);
    assert_eq!(s.register_layout(&lock, &d).unwrap(), a);
    let before = lock.acquisitions.get();
    assert_eq!(s.register_layout(&lock, &d).unwrap(), a);
    assert_eq!(
        lock.acquisitions.get(),
        before,
        "known layout took the lock"
    );
    assert_eq!(s.layout_bounds(a).unwrap(), d.to_vec());

    let mut ids = vec![a];
    for i in 1..MAX_LAYOUTS {
        let b: Vec<f64> = (1..=i).map(|j| j as f64 * 0.5).collect();
        let id = s.register_layout(&lock, &b).unwrap();
        assert_eq!(usize::from(id), i + 1);
        assert_eq!(s.register_layout(&lock, &b).unwrap(), id);
        assert_eq!(s.layout_bounds(id).unwrap(), b);
        ids.push(id);
    }
    // A prefix of a layout is another layout; so is the same length with another value.
    assert_eq!(
        s.register_layout(&lock, &d[..3]),
        Err(StoreError::LayoutTableFull)
    );
    assert_eq!(
        s.register_layout(&lock, &[0.5, 1.5]),
        Err(StoreError::LayoutTableFull)
    );
    // Known layouts are still found.
    assert_eq!(s.register_layout(&lock, &[0.5, 1.0]).unwrap(), 3);
    assert_eq!(s.register_layout(&lock, &d).unwrap(), a);
    assert_eq!(s.layout_bounds(0), None);
    assert_eq!(s.layout_bounds(MAX_LAYOUTS as u8 + 1), None);
    assert!(!lock.is_held());

    let too_many: Vec<f64> = (0..=MAX_BOUNDS).map(|i| i as f64).collect();
    assert_eq!(
        s.register_layout(&lock, &too_many),
        Err(StoreError::TooManyBounds(MAX_BOUNDS + 1))
    );
    let r2 = region(64 << 10);
    let s2 = Store::format(&r2, 1).unwrap();
    assert_eq!(
        s2.register_layout(&lock, &too_many[..MAX_BOUNDS]).unwrap(),
        1
    );
    assert_eq!(
        s2.layout_bounds(1).unwrap(),
        too_many[..MAX_BOUNDS].to_vec()
    );
    assert_eq!(s2.layout_bounds(2), None);
}

#[test]
fn format_then_open_sees_the_same_data() {
    let r = region(256 << 10);
    let lock = CheckedLock::default();
    let bounds = [0.5, 1.0];
    let mut offs = Vec::new();
    {
        let s = Store::format(&r, 1234).unwrap();
        assert_eq!(s.register_layout(&lock, &bounds).unwrap(), 1);
        for i in 0..100 {
            let k = req_key("GET", &format!("/p{i}"), "200", "ns", "up");
            let off = own(s
                .upsert(&lock, NO_LIMIT, req_kind(1, 2), &k, &overflow_key(5))
                .unwrap());
            store::observe(s.values(off), &bounds, i as f64);
            offs.push(off);
        }
        s.count_drop(DropReason::MaxSeries, 7);
    }
    // A reload opens the same region (nginx keeps the zone): same series, same values.
    let s = Store::open(&r).unwrap();
    let (s2, reused) = Store::open_or_format(&r, 9999, false).unwrap();
    assert!(reused);
    for st in [s, s2] {
        assert_eq!(st.created(), 1234);
        assert_eq!(st.register_layout(&lock, &bounds).unwrap(), 1);
        assert_eq!(st.drops(DropReason::MaxSeries), 7);
        assert_eq!(st.self_counter(SelfCounter::ZoneResets), 0);
        assert_eq!(st.usage().series, 100);
        for (i, off) in offs.iter().enumerate() {
            let k = req_key("GET", &format!("/p{i}"), "200", "ns", "up");
            assert_eq!(st.find(req_kind(1, 2), &k), Some(*off));
            let v = st.values(*off);
            let count: u64 = v[..3].iter().map(|w| w.load(Ordering::Relaxed)).sum();
            assert_eq!(count, 1);
            assert_eq!(store::load_f64(&v[3]), i as f64);
        }
        assert_eq!(all_entries(&st).len(), 100);
    }
    // And keeps inserting after the existing series.
    let s = Store::open(&r).unwrap();
    let k = req_key("GET", "/new", "200", "ns", "up");
    own(s
        .upsert(&lock, NO_LIMIT, req_kind(1, 2), &k, &overflow_key(5))
        .unwrap());
    let e = all_entries(&s);
    assert_eq!(e.len(), 101);
    assert_eq!(e[100].1, k);
}

#[test]
fn open_rejects_regions_that_hold_no_table() {
    // Too small.
    let small = region(MIN_REGION_BYTES - 8);
    assert_eq!(
        Store::open(&small).err(),
        Some(StoreError::RegionTooSmall(MIN_REGION_BYTES - 8))
    );
    assert!(matches!(
        Store::format(&small, 1),
        Err(StoreError::RegionTooSmall(_))
    ));
    assert!(matches!(
        Store::open_or_format(&small, 1, false),
        Err(StoreError::RegionTooSmall(_))
    ));
    // Zeroed.
    let r = region(128 << 10);
    assert_eq!(Store::open(&r).err(), Some(StoreError::NotInitialised));
    // Garbage.
    let mut rng = Rng(0x1234_5678);
    for w in &r {
        w.store(rng.next(), Ordering::Relaxed);
    }
    assert_eq!(Store::open(&r).err(), Some(StoreError::NotInitialised));
    // Foreign: a region formatted for another size (the table seen through a shorter slice).
    let big = region(256 << 10);
    Store::format(&big, 1).unwrap();
    assert_eq!(
        Store::open(&big[..big.len() / 2]).err(),
        Some(StoreError::NotInitialised)
    );
    // Every single corrupted layout field is noticed.
    for (i, bad) in [
        (H_MAGIC, 1u64),
        (H_VERSION, FORMAT_VERSION + 1),
        (H_TOTAL_WORDS, 12),
        (3, 0),
        (H_INDEX_CAP, 3),
        (5, 1),
        (6, u64::MAX),
        (7, 5),
    ] {
        let r = region(128 << 10);
        Store::format(&r, 1).unwrap();
        assert!(Store::open(&r).is_ok());
        r[i].store(bad, Ordering::Relaxed);
        assert_eq!(
            Store::open(&r).err(),
            Some(StoreError::NotInitialised),
            "header word {i} = {bad}"
        );
    }
}

#[test]
fn open_or_format_resets_incompatible_regions() {
    let lock = CheckedLock::default();
    let k = req_key("GET", "/", "200", "ns", "up");
    for (word, bad) in [
        (H_VERSION, FORMAT_VERSION + 1),
        (H_VERSION, 0),
        (H_INDEX_CAP, 1000),
        (H_MAGIC, 0),
    ] {
        let r = region(128 << 10);
        let s = Store::format(&r, 1).unwrap();
        own(s.upsert(&lock, NO_LIMIT, req_kind(0, 0), &k, b"").unwrap());
        s.count_drop(DropReason::ZoneFull, 3);
        r[word].store(bad, Ordering::Relaxed);

        let (s, reused) = Store::open_or_format(&r, 77, false).unwrap();
        assert!(!reused, "word {word}");
        assert_eq!(s.self_counter(SelfCounter::ZoneResets), 1);
        assert_eq!(s.created(), 77);
        assert_eq!(s.find(req_kind(0, 0), &k), None);
        assert_eq!(s.drops(DropReason::ZoneFull), 0);
        assert_eq!(s.usage().series, 0);
        assert!(all_entries(&s).is_empty());
        // And is a working table that a later open reuses.
        own(s.upsert(&lock, NO_LIMIT, req_kind(0, 0), &k, b"").unwrap());
        let (s, reused) = Store::open_or_format(&r, 88, false).unwrap();
        assert!(reused);
        assert_eq!(s.created(), 77);
        assert_eq!(s.self_counter(SelfCounter::ZoneResets), 1);
        assert!(s.find(req_kind(0, 0), &k).is_some());
    }
    // A fresh (zeroed) region is formatted without counting a reset.
    let r = region(128 << 10);
    let (s, reused) = Store::open_or_format(&r, 5, false).unwrap();
    assert!(!reused);
    assert_eq!(s.self_counter(SelfCounter::ZoneResets), 0);
    // Garbage everywhere: reset.
    let r = region(128 << 10);
    let mut rng = Rng(99);
    for w in &r {
        w.store(rng.next(), Ordering::Relaxed);
    }
    let (s, reused) = Store::open_or_format(&r, 5, false).unwrap();
    assert!(!reused);
    assert_eq!(s.self_counter(SelfCounter::ZoneResets), 1);
    assert_eq!(s.usage().series, 0);
    // The old heap words stay (formatting clears the metadata only); none of them is seen.
    assert!(all_entries(&s).is_empty());
    let lock = CheckedLock::default();
    let k = key(&["fresh"]);
    let off = own(s
        .upsert(&lock, NO_LIMIT, counter(3), &k, &overflow_key(1))
        .unwrap());
    assert_eq!(all_entries(&s).len(), 1);
    assert_eq!(s.find(counter(3), &k), Some(off));
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

fn spec<'a>(bounds: &'a [f64]) -> RenderSpec<'a> {
    RenderSpec {
        zone_name: "corrupt",
        max_series: 100,
        duration: HistSpec { bounds, layout: 1 },
        ttft: HistSpec { bounds, layout: 1 },
        throughput: HistSpec { bounds, layout: 1 },
        tpot: HistSpec { bounds, layout: 1 },
        custom: &[],
        views: Default::default(),
        nginx: None,
        alive: None,
    }
}

/// Exercises every reader and writer on a (possibly corrupt) store; must not panic.
fn exercise(s: &Store, rng: &mut Rng, bounds: &[f64]) {
    let lock = CheckedLock::default();
    let limits = Limits { max_series: 1000 };
    for i in 0..150u64 {
        let f = (rng.below(12)) as u32;
        let kind = SeriesKind {
            family: f,
            layout: rng.below(3) as u8,
            n_values: rng.below(20) as u8,
        };
        let k = key(&["GET", &format!("/x/{}", rng.below(64)), "200", "ns", "up"]);
        let _ = s.find(kind, &k);
        let _ = s.upsert(&lock, limits, kind, &k, &overflow_key(5));
        let (v, _) = series(s, &lock, limits, kind, &k, 5);
        if let Some(v) = v {
            if let Some(w) = v.first() {
                store::add_u64(w, 1);
            }
            store::observe(v, bounds, i as f64 * 0.1);
        }
        let _ = s.values(rng.next() as usize);
        let _ = s.values(rng.below(s.usage().region_bytes / 8 + 10) as usize);
        let _ = s.layout_bounds(rng.next() as u8);
        let _ = s.register_layout(&lock, &[rng.below(100) as f64]);
        assert!(!lock.is_held());
    }
    let mut n = 0;
    let mut buf = Vec::new();
    s.for_each(|e| {
        e.key.read_into(&mut buf);
        for v in e.values {
            v.load(Ordering::Relaxed);
        }
        n += 1;
    });
    let _ = s.usage();
    let mut page = Vec::new();
    // Odd output is fine for a corrupt zone (key bytes are rendered as stored, so even invalid
    // UTF-8 may come out); a panic is not.
    render::render(s, &spec(bounds), &mut page);
    assert!(page.ends_with(b"\n"));
}

fn populate(s: &Store, bounds: &[f64]) {
    let lock = CheckedLock::default();
    s.register_layout(&lock, bounds).unwrap();
    for i in 0..200 {
        let k = req_key(
            "GET",
            &format!("/p{i}"),
            &format!("{}", 200 + i % 400),
            "ns",
            "up",
        );
        let (v, _) = series(s, &lock, NO_LIMIT, req_kind(1, bounds.len()), &k, 5);
        store::observe(v.unwrap(), bounds, i as f64);
        let k = key(&[&format!("m{i}"), "ns"]);
        let kind = SeriesKind {
            family: fam::MODEL_TOKENS,
            layout: 0,
            n_values: 5,
        };
        let (v, _) = series(s, &lock, NO_LIMIT, kind, &k, 2);
        store::add_u64(&v.unwrap()[0], 5);
    }
}

#[test]
fn garbage_in_the_heap_and_index_never_panics() {
    let bounds = [0.5, 1.0, 2.0];
    let words = (256 << 10) / 8;
    // Each mode fills the words after the header with a different kind of garbage.
    type Gen = fn(&mut Rng, usize) -> u64;
    let modes: [(&str, Gen); 7] = [
        ("random", |r, _| r.next()),
        ("ones", |_, _| u64::MAX),
        ("small", |r, _| r.below(16)),
        // Index-slot-like words pointing anywhere in the region, including the header.
        ("offsets", |r, n| {
            (r.next() & !0xffff_ffff) | r.below(n as u64 + 64)
        }),
        // Plausible entry headers: builtin families, short keys, few values.
        ("headers", |r, _| {
            (r.below(12) << 32) | (r.below(40) << 16) | (r.below(3) << 8) | r.below(20)
        }),
        ("huge-headers", |r, _| {
            (r.below(12) << 32) | (0xffff << 16) | 0xff
        }),
        ("sparse", |r, _| if r.below(8) == 0 { r.next() } else { 0 }),
    ];
    for (seed, (name, gen)) in modes.iter().enumerate() {
        for start in [HEADER_WORDS, 1104 /* index start */, words / 2] {
            let r = region(256 << 10);
            let s = Store::format(&r, 1).unwrap();
            populate(&s, &bounds);
            let mut rng = Rng(0x9e37_79b9 + seed as u64 * 1000 + start as u64);
            for w in &r[start..] {
                w.store(gen(&mut rng, words), Ordering::Relaxed);
            }
            let s = Store::open(&r).unwrap_or_else(|e| panic!("{name}: header damaged: {e}"));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exercise(&s, &mut rng, &bounds)
            }));
            assert!(result.is_ok(), "mode {name}, garbage from word {start}");
        }
    }
}

#[test]
fn random_word_flips_never_panic() {
    // Fewer, targeted flips keep most of the structure intact, so the walks go deeper.
    let bounds = [0.5, 1.0, 2.0];
    for seed in 1..=40u64 {
        let r = region(128 << 10);
        let s = Store::format(&r, 1).unwrap();
        populate(&s, &bounds);
        let mut rng = Rng(seed * 0x1000_0001);
        for _ in 0..(1 + rng.below(50)) {
            let i = HEADER_WORDS + rng.below((r.len() - HEADER_WORDS) as u64) as usize;
            let v = match rng.below(4) {
                0 => rng.next(),
                1 => 0,
                2 => r[i].load(Ordering::Relaxed) ^ (1 << rng.below(64)),
                _ => u64::MAX,
            };
            r[i].store(v, Ordering::Relaxed);
        }
        let s = Store::open(&r).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise(&s, &mut rng, &bounds)
        }));
        assert!(result.is_ok(), "seed {seed}");
    }
}

#[test]
fn garbage_in_the_header_counters_never_panics() {
    // Header words that change after format (bump pointers, published marks, counts) are not
    // checked by open(); garbage in them must not make any call panic either.
    let bounds = [0.5, 1.0, 2.0];
    // Targeted: each dynamic header word (bumps, published marks, counts, layout count) set to
    // values at the edges.
    for i in 8..=16usize {
        for v in [
            0,
            1,
            63,
            2000,
            16383,
            16384,
            1 << 40,
            u64::MAX - 3,
            u64::MAX,
        ] {
            let r = region(128 << 10);
            let s = Store::format(&r, 1).unwrap();
            populate(&s, &bounds);
            r[i].store(v, Ordering::Relaxed);
            let s = Store::open(&r).unwrap();
            let layout: Vec<u64> = r[..8].iter().map(|w| w.load(Ordering::Relaxed)).collect();
            let mut rng = Rng((i as u64 * 7) ^ v | 1);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exercise(&s, &mut rng, &bounds)
            }));
            assert!(result.is_ok(), "header word {i} = {v}");
            // A bad bump pointer must not make inserts write over the header or the index.
            let after: Vec<u64> = r[..8].iter().map(|w| w.load(Ordering::Relaxed)).collect();
            assert_eq!(layout, after, "header word {i} = {v}");
            assert!(Store::open(&r).is_ok(), "header word {i} = {v}");
        }
    }
    // Random.
    for seed in 1..=60u64 {
        let r = region(128 << 10);
        let s = Store::format(&r, 1).unwrap();
        populate(&s, &bounds);
        let mut rng = Rng(seed * 0x51_7cc1_b727);
        for _ in 0..(1 + rng.below(4)) {
            let i = 8 + rng.below(HEADER_WORDS as u64 - 8) as usize;
            let v = match rng.below(5) {
                0 => rng.next(),
                1 => 0,
                2 => u64::MAX,
                3 => rng.below(r.len() as u64 + 100),
                _ => r[i].load(Ordering::Relaxed) ^ (1 << rng.below(64)),
            };
            r[i].store(v, Ordering::Relaxed);
        }
        let Ok(s) = Store::open(&r) else { continue };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise(&s, &mut rng, &bounds)
        }));
        assert!(result.is_ok(), "seed {seed}");
    }
}

// ---------------------------------------------------------------------------------------------
// Lanes and formatting
// ---------------------------------------------------------------------------------------------

#[test]
fn lanes_are_exclusive_among_live_processes_and_reused_from_dead_ones() {
    let r = region(64 << 10);
    let s = Store::format(&r, 1).unwrap();
    let live = std::cell::RefCell::new(HashSet::new());
    let alive = |p: u64| live.borrow().contains(&p);
    let claim = |pid: u64| {
        live.borrow_mut().insert(pid);
        s.claim_lane(pid, alive)
    };
    // Two workers, then a reload's two new workers while the old ones still run.
    let a = claim(100).unwrap();
    let b = claim(101).unwrap();
    let c = claim(200).unwrap();
    let d = claim(201).unwrap();
    let all: HashSet<u32> = [a, b, c, d].into();
    assert_eq!(all.len(), 4);
    // Asking again gives the same lane.
    assert_eq!(s.claim_lane(100, alive), Some(a));
    assert_eq!(s.lane_holder(a), 100);
    // While the old workers still run (exiting), their lanes stay theirs.
    live.borrow_mut().insert(202);
    let g = s.claim_lane(202, alive).unwrap();
    assert!(![a, b, c, d].contains(&g));
    // Once they are gone (exited or killed), their lanes are reused.
    live.borrow_mut().remove(&100);
    live.borrow_mut().remove(&101);
    let e = claim(300).unwrap();
    let f = claim(301).unwrap();
    assert_eq!(HashSet::from([e, f]), HashSet::from([a, b]));
    assert_eq!((s.lane_holder(e), s.lane_holder(c)), (300, 200));
    // Every lane held by a live process: none left.
    for pid in 1000..1000 + store::MAX_LANES as u64 {
        live.borrow_mut().insert(pid);
        let _ = s.claim_lane(pid, alive);
    }
    live.borrow_mut().insert(5000);
    assert_eq!(s.claim_lane(5000, alive), None);
    assert_eq!(s.claim_lane(0, alive), None);
    assert_eq!(s.lane_holder(store::MAX_LANES as u32), 0);
}

#[test]
fn formatting_leaves_the_heap_untouched() {
    const GARBAGE: u64 = 0xA5A5_A5A5_A5A5_A5A5;
    // A reused region with foreign content: only the metadata is cleared.
    let r = region(256 << 10);
    for w in &r {
        w.store(GARBAGE, Ordering::Relaxed);
    }
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let untouched = r
        .iter()
        .filter(|w| w.load(Ordering::Relaxed) == GARBAGE)
        .count();
    assert!(untouched > r.len() / 2, "{untouched} of {}", r.len());
    let mut offs = Vec::new();
    for i in 0..50 {
        let k = key(&[&format!("ns{i}")]);
        let off = own(s
            .upsert(&lock, NO_LIMIT, counter(7), &k, &overflow_key(1))
            .unwrap());
        assert!(s.values(off).iter().all(|v| v.load(Ordering::Relaxed) == 0));
        s.values(off)[0].fetch_add(i, Ordering::Relaxed);
        offs.push(off);
    }
    assert_eq!(all_entries(&s).len(), 50);
    for (i, off) in offs.iter().enumerate() {
        let k = key(&[&format!("ns{i}")]);
        assert_eq!(s.find(counter(7), &k), Some(*off));
        assert_eq!(s.values(*off)[0].load(Ordering::Relaxed), i as u64);
    }
    assert_usage_consistent(&s, r.len());

    // A fresh (all-zero) mapping: formatting writes the header alone.
    let r = region(256 << 10);
    let s = Store::format_zeroed(&r, 1).unwrap();
    assert!(r[HEADER_WORDS..]
        .iter()
        .all(|w| w.load(Ordering::Relaxed) == 0));
    let (_, reused) = Store::open_or_format(&r, 2, true).unwrap();
    assert!(reused);
    let off = own(s
        .upsert(&lock, NO_LIMIT, counter(7), &key(&["x"]), &overflow_key(1))
        .unwrap());
    assert_eq!(s.find(counter(7), &key(&["x"])), Some(off));
}

#[test]
fn series_record_their_creation_time() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let lock = CheckedLock::default();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now();
    own(s
        .upsert(
            &lock,
            NO_LIMIT,
            counter(7),
            &key(&["a"]),
            &key(&[OVERFLOW_VALUE]),
        )
        .unwrap());
    let after = now();
    let mut seen = Vec::new();
    s.for_each(|e| seen.push((e.created_ms, e.values_off)));
    assert_eq!(seen.len(), 1);
    assert!(
        (before..=after).contains(&seen[0].0),
        "{seen:?} not in {before}..={after}"
    );
    // The value offset is where the values are.
    let off = s.find(counter(7), &key(&["a"])).unwrap();
    assert_eq!(s.offset_of(s.values(off)), Some(seen[0].1));
}

#[test]
fn exemplar_slots_are_made_once_and_never_count_as_series() {
    use gateway_metrics_core::exemplar::{self, SLOT_WORDS};
    let r = region(MIN_REGION_BYTES);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let lock = CheckedLock::default();
    let off = own(s
        .upsert(
            &lock,
            NO_LIMIT,
            counter(7),
            &key(&["a"]),
            &key(&[OVERFLOW_VALUE]),
        )
        .unwrap());
    let v = s.values(off);
    let a = s.exemplar_slots(&lock, v, 7, 0, 3).unwrap();
    assert_eq!(a.len(), 3 * SLOT_WORDS);
    let b = s.exemplar_slots(&lock, v, 7, 0, 3).unwrap();
    assert_eq!(a.as_ptr(), b.as_ptr());
    assert_eq!(s.usage().series, 1);
    // Not for words outside the store, too many slots, or an exemplar entry itself.
    let elsewhere = region(64);
    assert!(s.exemplar_slots(&lock, &elsewhere, 7, 0, 3).is_none());
    assert!(s
        .exemplar_slots(&lock, v, 7, 0, exemplar::MAX_SLOTS + 1)
        .is_none());
    assert!(s
        .exemplar_slots(&lock, v, store::EXEMPLARS | 7, 0, 3)
        .is_none());
    // A full zone: the exemplar is dropped and counted, the series keeps working.
    let mut i = 0;
    while s
        .upsert(
            &lock,
            NO_LIMIT,
            counter(8),
            &key(&[&format!("k{i}")]),
            &key(&[OVERFLOW_VALUE]),
        )
        .map(|p| matches!(p, Placement::Own(_)))
        .unwrap()
    {
        i += 1;
    }
    let mut last = None;
    s.for_each(|e| {
        if !e.overflow && e.kind.family == 8 {
            last = Some(e.values_off);
        }
    });
    let full = &r[last.unwrap()..last.unwrap() + 1];
    assert!(s.exemplar_slots(&lock, full, 8, 0, 40).is_none());
    assert_eq!(s.drops(DropReason::Exemplar), 1);
}
