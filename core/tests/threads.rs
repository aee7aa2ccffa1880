//! Concurrency between threads: exact totals under contention, inserts racing with lookups,
//! the cardinality cap under races, and histograms rendered while they are being observed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{key, parse_ok, region, req_key, req_kind, SpinLock};
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::labels::overflow_key;
use gateway_metrics_core::render::{render, HistSpec, RenderSpec};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{self, DropReason, Limits, SeriesKind, Store};

const THREADS: usize = 4;
const BOUNDS: [f64; 4] = [0.25, 1.0, 4.0, 16.0];

/// The value observed by update `i` of thread `t`: a multiple of 1/8, so every sum is exact in
/// any order.
fn obs(t: usize, i: usize) -> f64 {
    ((t * 31 + i * 7) % 200) as f64 / 8.0
}

#[test]
fn four_threads_exact_totals() {
    const UPDATES: usize = 100_000;
    const KEYS: usize = 50;
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let layout = s.register_layout(&lock, &BOUNDS).unwrap();
    let limits = Limits { max_series: 10_000 };
    let hkind = req_kind(layout, BOUNDS.len());
    let ckind = SeriesKind {
        family: fam::CACHE,
        layout: 0,
        n_values: 2,
    };
    let hkeys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| req_key("GET", &format!("/k{i}"), "200", "ns", "up"))
        .collect();
    let ckeys: Vec<Vec<u8>> = (0..KEYS).map(|i| key(&[&format!("c{i}")])).collect();

    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (s, lock, hkeys, ckeys) = (&s, &lock, &hkeys, &ckeys);
            sc.spawn(move || {
                for i in 0..UPDATES {
                    let k = (i * 7 + t * 13) % KEYS;
                    if i % 2 == 0 {
                        let (v, why) = series(s, lock, limits, hkind, &hkeys[k], 5);
                        assert_eq!(why, None);
                        store::observe(v.unwrap(), &BOUNDS, obs(t, i));
                    } else {
                        let (v, why) = series(s, lock, limits, ckind, &ckeys[k], 1);
                        assert_eq!(why, None);
                        let v = v.unwrap();
                        store::add_u64(&v[0], 1);
                        store::add_u64(&v[1], k as u64);
                    }
                }
            });
        }
    });
    assert_eq!(lock_word.load(Ordering::Relaxed), 0);

    // Expected per key, computed single-threaded.
    let mut count = vec![0u64; KEYS];
    let mut sum = vec![0f64; KEYS];
    let mut ccount = vec![0u64; KEYS];
    for t in 0..THREADS {
        for i in 0..UPDATES {
            let k = (i * 7 + t * 13) % KEYS;
            if i % 2 == 0 {
                count[k] += 1;
                sum[k] += obs(t, i);
            } else {
                ccount[k] += 1;
            }
        }
    }
    // Exactly one series per key: no insert race created a twin.
    assert_eq!(s.usage().series, 2 * KEYS as u64);
    let mut n_entries = 0;
    s.for_each(|_| n_entries += 1);
    assert_eq!(n_entries, 2 * KEYS);
    for k in 0..KEYS {
        let v = s.values(s.find(hkind, &hkeys[k]).unwrap());
        let buckets: Vec<u64> = v[..BOUNDS.len() + 1]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        assert_eq!(buckets.iter().sum::<u64>(), count[k], "key {k}");
        assert_eq!(store::load_f64(&v[BOUNDS.len() + 1]), sum[k], "key {k}");
        // Bucket by bucket, too.
        let mut want = vec![0u64; BOUNDS.len() + 1];
        for t in 0..THREADS {
            for i in (0..UPDATES).step_by(2) {
                if (i * 7 + t * 13) % KEYS == k {
                    want[gateway_metrics_core::buckets::bucket_index(&BOUNDS, obs(t, i))] += 1;
                }
            }
        }
        assert_eq!(buckets, want, "key {k}");
        let c = s.values(s.find(ckind, &ckeys[k]).unwrap());
        assert_eq!(c[0].load(Ordering::Relaxed), ccount[k]);
        assert_eq!(c[1].load(Ordering::Relaxed), ccount[k] * k as u64);
    }
    assert_eq!(count.iter().sum::<u64>(), (THREADS * UPDATES / 2) as u64);
    for r in DropReason::ALL {
        assert_eq!(s.drops(r), 0);
    }
}

#[test]
fn racing_inserts_of_many_new_keys() {
    // Every thread inserts the same 5,000 new keys in a different order: each key must end up
    // as exactly one series, and every thread must see the same offset for it.
    const KEYS: usize = 5_000;
    let r = region(2 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let kind = SeriesKind {
        family: fam::UNPRICED,
        layout: 0,
        n_values: 1,
    };
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("model-{i}").into_bytes())
        .collect();
    let limits = Limits {
        max_series: u64::MAX,
    };
    let offsets: Vec<Vec<usize>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, lock, keys) = (&s, &lock, &keys);
                sc.spawn(move || {
                    let mut offs = vec![0usize; KEYS];
                    for j in 0..KEYS {
                        // A different permutation per thread (multipliers coprime to KEYS).
                        let i = (j * [1, 3, 7, 9][t] + t * 977) % KEYS;
                        let (v, why) = series(s, lock, limits, kind, &keys[i], 1);
                        assert_eq!(why, None);
                        let v = v.unwrap();
                        store::add_u64(&v[0], 1);
                        offs[i] = v.as_ptr() as usize;
                    }
                    offs
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in 0..THREADS {
        assert!(offsets[t].iter().all(|&o| o != 0), "thread {t} missed keys");
        let differ = (0..KEYS)
            .filter(|&i| offsets[t][i] != offsets[0][i])
            .count();
        assert_eq!(differ, 0, "thread {t} saw other series than thread 0");
    }
    assert_eq!(s.usage().series, KEYS as u64);
    let mut seen = 0;
    s.for_each(|e| {
        assert_eq!(e.values[0].load(Ordering::Relaxed), THREADS as u64);
        seen += 1;
    });
    assert_eq!(seen, KEYS);
}

#[test]
fn the_cap_holds_under_racing_inserts() {
    // 60 keys, a cap of 40: whichever keys win, the cap is exact, and the updates that went to
    // the overflow series are exactly the drops counted.
    const UPDATES: usize = 20_000;
    const KEYS: usize = 60;
    const CAP: u64 = 40;
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let limits = Limits { max_series: CAP };
    let kind = SeriesKind {
        family: fam::RATE_LIMIT,
        layout: 0,
        n_values: 2,
    };
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| key(&[&format!("ns{i}"), "req"]))
        .collect();
    let redirected = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (s, lock, keys, redirected) = (&s, &lock, &keys, &redirected);
            sc.spawn(move || {
                for i in 0..UPDATES {
                    let k = (i * 11 + t * 17) % KEYS;
                    let (v, why) = series(s, lock, limits, kind, &keys[k], 2);
                    match why {
                        None => {}
                        Some(DropReason::MaxSeries) => {
                            redirected.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) => panic!("{r:?}"),
                    }
                    store::add_u64(&v.unwrap()[0], 1);
                }
            });
        }
    });
    let u = s.usage();
    assert_eq!(u.series, CAP);
    assert_eq!(u.overflow_series, 1);
    let redirected = redirected.load(Ordering::Relaxed);
    assert_eq!(s.drops(DropReason::MaxSeries), redirected);
    let mut own = 0;
    let mut over = 0;
    s.for_each(|e| {
        let n = e.values[0].load(Ordering::Relaxed);
        if e.overflow {
            over += n;
        } else {
            own += n;
        }
    });
    let o = s.find(kind, &overflow_key(2)).unwrap();
    assert_eq!(s.values(o)[0].load(Ordering::Relaxed), over);
    assert_eq!(over, redirected);
    assert_eq!(own + over, (THREADS * UPDATES) as u64);
    assert!(redirected > 0);
}

#[test]
fn histograms_stay_consistent_while_rendered() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let layout = s.register_layout(&lock, &BOUNDS).unwrap();
    let kind = req_kind(layout, BOUNDS.len());
    let limits = Limits { max_series: 1000 };
    let done = AtomicBool::new(false);
    let spec = RenderSpec {
        zone_name: "gm",
        max_series: 1000,
        duration: HistSpec {
            bounds: &BOUNDS,
            layout,
        },
        ttft: HistSpec {
            bounds: &BOUNDS,
            layout,
        },
        throughput: HistSpec {
            bounds: &BOUNDS,
            layout,
        },
        tpot: HistSpec {
            bounds: &BOUNDS,
            layout,
        },
        custom: &[],
        views: Default::default(),
        nginx: None,
        alive: None,
        format: Default::default(),
    };
    const WRITES: usize = 200_000;
    let renders = std::thread::scope(|sc| {
        for t in 0..2 {
            let (s, lock, done) = (&s, &lock, &done);
            sc.spawn(move || {
                for i in 0..WRITES {
                    // New series keep appearing (up to 200), existing ones keep changing.
                    let k = req_key(
                        "GET",
                        &format!("/p{}", i % (1 + i / 1000).min(200)),
                        "200",
                        "ns",
                        "up",
                    );
                    let (v, _) = series(s, lock, limits, kind, &k, 5);
                    store::observe(v.unwrap(), &BOUNDS, obs(t, i));
                }
                done.store(true, Ordering::Release);
            });
        }
        let (s, spec, done) = (&s, &spec, &done);
        sc.spawn(move || {
            let mut renders = 0;
            let mut last_total = 0.0;
            let mut last_count: std::collections::HashMap<String, f64> = Default::default();
            let mut out = Vec::new();
            while renders < 5 || !done.load(Ordering::Acquire) {
                out.clear();
                render(s, spec, &mut out);
                // Parsing checks each histogram: cumulative, monotone, +Inf == _count.
                let e = parse_ok(&out);
                let total: f64 = e.samples("http_requests_total").map(|s| s.value).sum();
                assert!(total >= last_total, "requests went backwards");
                last_total = total;
                // Counts never go backwards across scrapes either.
                for smp in e.samples("http_request_duration_seconds_count") {
                    let id = format!("{:?}", smp.labels);
                    let prev = last_count.insert(id, smp.value).unwrap_or(0.0);
                    assert!(smp.value >= prev, "count went backwards");
                }
                renders += 1;
            }
            renders
        })
        .join()
        .unwrap()
    });
    assert!(renders >= 5);
    let mut out = Vec::new();
    render(&s, &spec, &mut out);
    let e = parse_ok(&out);
    let total: f64 = e
        .samples("http_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, (2 * WRITES) as f64);
}
