//! Concurrency between processes, as in nginx: the table lives in an anonymous `MAP_SHARED`
//! mapping, forked children update it concurrently (inserting under a spin lock whose word is
//! in another shared mapping), and the parent checks exact totals.
//!
//! One test function only: fork() from a test binary is safest when no other test threads run.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{key, parse_ok, req_key, req_kind, SpinLock};
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::render::{render, HistSpec, RenderSpec};
use gateway_metrics_core::store::{self, DropReason, Limits, SeriesKind, Store};
use gateway_metrics_core::{exemplar, series};

/// An anonymous shared mapping, viewed as atomic words.
struct Shared {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Shared {
    fn new(bytes: usize) -> Shared {
        // SAFETY: a fresh anonymous mapping; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Shared { ptr, len: bytes }
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `len` bytes long, zero-filled, lives as long as
        // `self`, and is only ever accessed through atomics (in every process).
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU64, self.len / 8) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped; no references outlive self.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

const CHILDREN: usize = 4;
const UPDATES: usize = 50_000;
const HIST_KEYS: usize = 32;
/// Keys that every child meets in the same order, one every `NEW_EVERY` updates: the children
/// race to insert each of them.
const NEW_KEYS: usize = 500;
const NEW_EVERY: usize = 100;
const CAPPED_KEYS: usize = 20;
const BOUNDS: [f64; 3] = [0.5, 2.0, 8.0];
/// Word indices in the lock mapping: the lock, a start barrier, one result word per child.
const LOCK: usize = 0;
const BARRIER: usize = 1;
const RESULTS: usize = 8;

fn obs(c: usize, i: usize) -> f64 {
    ((c * 17 + i * 5) % 100) as f64 / 4.0
}

fn hist_key_of(c: usize, i: usize) -> usize {
    (i * 7 + c * 13) % HIST_KEYS
}

const NO_LIMIT: Limits = Limits {
    max_series: u64::MAX,
};

fn new_kind() -> SeriesKind {
    SeriesKind {
        family: fam::UNPRICED,
        layout: 0,
        n_values: 1,
    }
}

fn capped_kind() -> SeriesKind {
    SeriesKind {
        family: fam::RATE_LIMIT,
        layout: 0,
        n_values: 2,
    }
}

/// Forks `CHILDREN` children that wait at a barrier, run `work(child)`, store its result in the
/// lock mapping and `_exit`; waits for all of them (with a deadline) and returns the results.
fn run_children(lock_words: &[AtomicU64], work: impl Fn(usize) -> u64) -> Vec<u64> {
    lock_words[BARRIER].store(0, Ordering::SeqCst);
    let mut pids = Vec::new();
    for c in 0..CHILDREN {
        // SAFETY: the child only touches the shared mappings and memory inherited from the
        // parent, and leaves with _exit (no destructors, no test harness).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // Start together, so that the inserts really race.
                lock_words[BARRIER].fetch_add(1, Ordering::SeqCst);
                let t = Instant::now();
                while lock_words[BARRIER].load(Ordering::SeqCst) < CHILDREN as u64 {
                    assert!(t.elapsed() < Duration::from_secs(10), "barrier timeout");
                    std::hint::spin_loop();
                }
                work(c)
            }));
            let code = match r {
                Ok(v) => {
                    lock_words[RESULTS + c].store(v, Ordering::Release);
                    0
                }
                Err(_) => 101,
            };
            // SAFETY: ends the child immediately.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }

    // Wait for every child, with a deadline so that a deadlock fails instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = Vec::new();
    for &pid in &pids {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(r >= 0, "waitpid failed");
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                for &p in &pids {
                    // SAFETY: kills and reaps only the children forked here.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                        libc::waitpid(p, std::ptr::null_mut(), 0);
                    }
                }
                panic!("children did not finish in time (deadlock?)");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failures.push((pid, status));
        }
    }
    assert!(failures.is_empty(), "children failed: {failures:?}");
    assert_eq!(
        lock_words[LOCK].load(Ordering::Relaxed),
        0,
        "lock left held"
    );
    (0..CHILDREN)
        .map(|c| lock_words[RESULTS + c].load(Ordering::Acquire))
        .collect()
}

/// Every series of the zone once: `(kind, key) -> (value word 0, overflow)`.
fn series_map(s: &Store) -> HashMap<(SeriesKind, Vec<u8>), (u64, bool)> {
    let mut m = HashMap::new();
    let mut buf = Vec::new();
    s.for_each(|e| {
        e.key.read_into(&mut buf);
        let v0 = e.values.first().map_or(0, |w| w.load(Ordering::Relaxed));
        let prev = m.insert((e.kind, buf.clone()), (v0, e.overflow));
        assert!(prev.is_none(), "a series was created twice: {buf:?}");
    });
    m
}

#[test]
fn forked_children_update_one_shared_zone() {
    let started = Instant::now();
    let zone = Shared::new(1 << 20);
    let lock_map = Shared::new(4096);
    let region = zone.words();
    let lock_words = lock_map.words();
    {
        let s = Store::format(region, 1_700_000_000).unwrap();
        let lock = SpinLock(&lock_words[LOCK]);
        assert_eq!(s.register_layout(&lock, &BOUNDS).unwrap(), 1);
    }
    let hkind = req_kind(1, BOUNDS.len());
    // Keys are built before fork(): the children only look up, insert and add.
    let hkeys: Vec<Vec<u8>> = (0..HIST_KEYS)
        .map(|i| {
            let ns = format!("ns{}", i % 3);
            req_key(
                ["GET", "POST"][i % 2],
                &format!("/v1/{i}"),
                "200",
                &ns,
                "up",
            )
        })
        .collect();
    let nkeys: Vec<Vec<u8>> = (0..NEW_KEYS)
        .map(|i| key(&[&format!("model-{i}")]))
        .collect();
    let ckeys: Vec<Vec<u8>> = (0..CAPPED_KEYS)
        .map(|i| key(&[&format!("ns{i}"), "req"]))
        .collect();

    // Phase 1: histogram updates over shared keys, and racing inserts of new keys.
    run_children(lock_words, |c| {
        // A worker attaches to the zone its master created.
        let s = Store::open(region).expect("child cannot open the zone");
        let lock = SpinLock(&lock_words[LOCK]);
        for i in 0..UPDATES {
            let (v, why) = series(&s, &lock, NO_LIMIT, hkind, &hkeys[hist_key_of(c, i)], 5);
            assert_eq!(why, None);
            store::observe(v.unwrap(), &BOUNDS, obs(c, i));
            if i % NEW_EVERY == 0 {
                let (v, why) = series(&s, &lock, NO_LIMIT, new_kind(), &nkeys[i / NEW_EVERY], 1);
                assert_eq!(why, None);
                store::add_u64(&v.unwrap()[0], 1);
            }
        }
        0
    });
    let s = Store::open(region).unwrap();
    let mut buckets = vec![vec![0u64; BOUNDS.len() + 1]; HIST_KEYS];
    let mut sum = vec![0f64; HIST_KEYS];
    for c in 0..CHILDREN {
        for i in 0..UPDATES {
            let k = hist_key_of(c, i);
            sum[k] += obs(c, i);
            buckets[k][gateway_metrics_core::buckets::bucket_index(&BOUNDS, obs(c, i))] += 1;
        }
    }
    for k in 0..HIST_KEYS {
        let v = s.values(s.find(hkind, &hkeys[k]).expect("series missing"));
        let b: Vec<u64> = v[..BOUNDS.len() + 1]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        assert_eq!(b, buckets[k], "key {k}");
        assert_eq!(store::load_f64(&v[BOUNDS.len() + 1]), sum[k], "key {k}");
    }
    let m = series_map(&s);
    assert_eq!(m.len(), HIST_KEYS + NEW_KEYS);
    for k in &nkeys {
        assert_eq!(m[&(new_kind(), k.clone())], (CHILDREN as u64, false));
    }
    assert_eq!(s.usage().series, (HIST_KEYS + NEW_KEYS) as u64);

    // Phase 2: a cap 8 series above the current count, 20 new keys racing for those 8 places.
    let cap = s.usage().series + 8;
    let redirected: u64 = run_children(lock_words, |c| {
        let s = Store::open(region).expect("child cannot open the zone");
        let lock = SpinLock(&lock_words[LOCK]);
        let mut redirected = 0;
        for i in 0..UPDATES / 4 {
            let k = &ckeys[(i + c * 5) % CAPPED_KEYS];
            let (v, why) = series(&s, &lock, Limits { max_series: cap }, capped_kind(), k, 2);
            match why {
                None => {}
                Some(DropReason::MaxSeries) => redirected += 1,
                Some(r) => panic!("unexpected drop {r:?}"),
            }
            store::add_u64(&v.unwrap()[0], 1);
        }
        redirected
    })
    .iter()
    .sum();
    let u = s.usage();
    assert_eq!(u.series, cap);
    assert_eq!(u.overflow_series, 1);
    assert_eq!(s.drops(DropReason::MaxSeries), redirected);
    assert!(redirected > 0);
    let m = series_map(&s);
    assert_eq!(m.len(), cap as usize + 1);
    let (mut own, mut over) = (0u64, 0u64);
    for ((kind, _), (v, overflow)) in &m {
        if *kind == capped_kind() {
            if *overflow {
                over += v;
            } else {
                own += v;
            }
        }
    }
    assert_eq!(over, redirected);
    assert_eq!(own + over, (CHILDREN * UPDATES / 4) as u64);

    // And the page rendered from it adds up.
    let spec = RenderSpec {
        zone_name: "shm",
        max_series: cap,
        duration: HistSpec {
            bounds: &BOUNDS,
            layout: 1,
        },
        ttft: HistSpec {
            bounds: &BOUNDS,
            layout: 1,
        },
        throughput: HistSpec {
            bounds: &BOUNDS,
            layout: 1,
        },
        tpot: HistSpec {
            bounds: &BOUNDS,
            layout: 1,
        },
        custom: &[],
        views: Default::default(),
        nginx: None,
        alive: None,
    };
    let mut out = Vec::new();
    render(&s, &spec, &mut out);
    let e = parse_ok(&out);
    let total: f64 = e.samples("http_requests_total").map(|s| s.value).sum();
    assert_eq!(total, (CHILDREN * UPDATES) as f64);
    let hits: f64 = e.samples("rate_limit_hits_total").map(|s| s.value).sum();
    assert_eq!(hits, (CHILDREN * UPDATES / 4) as f64);
    let unpriced: f64 = e
        .samples("gateway_metrics_unpriced_model_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(unpriced, (CHILDREN * NEW_KEYS) as f64);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// The exemplar a child writes for its `i`-th update: its trace and span ids are derived from
/// the value, so a reader can tell one exemplar's words from a mix of two.
fn exemplar_of(c: usize, i: usize) -> exemplar::Exemplar {
    let n = (c * UPDATES + i) as u64 + 1;
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&n.to_be_bytes());
    trace_id[8..].copy_from_slice(&(!n).to_be_bytes());
    exemplar::Exemplar {
        trace: exemplar::TraceContext {
            trace_id,
            span_id: n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes(),
        },
        value: n as f64,
        // Close together, as real ones are: a claim is only taken over after a second.
        ts_ms: 1_700_000_000_000 + (i / 100) as u64,
    }
}

fn check_exemplar(e: &exemplar::Exemplar) {
    let n = e.value as u64;
    assert!(n >= 1, "value {n}");
    let c = (n - 1) as usize / UPDATES;
    let i = (n - 1) as usize % UPDATES;
    assert_eq!(*e, exemplar_of(c, i), "torn exemplar");
}

#[test]
fn forked_children_write_and_read_exemplars_without_tearing() {
    let zone = Shared::new(1 << 20);
    let lock_map = Shared::new(4096);
    let region = zone.words();
    let lock_words = lock_map.words();
    let s = Store::format(region, 1_700_000_000).unwrap();
    let lock = SpinLock(&lock_words[LOCK]);
    assert_eq!(s.register_layout(&lock, &BOUNDS).unwrap(), 1);
    let hkind = req_kind(1, BOUNDS.len());
    let keys: Vec<Vec<u8>> = (0..4)
        .map(|i| req_key("GET", &format!("/e/{i}"), "200", "ns", "up"))
        .collect();
    // The series exist before the children start; their exemplar entries do not.
    for k in &keys {
        series(&s, &lock, NO_LIMIT, hkind, k, 5).0.unwrap();
    }
    let slots = BOUNDS.len() + 1;
    let seen = run_children(lock_words, |c| {
        let s = Store::open(region).expect("child cannot open the zone");
        let lock = SpinLock(&lock_words[LOCK]);
        let mut seen = 0;
        for i in 0..UPDATES {
            let k = &keys[i % keys.len()];
            let v = s.values(s.find(hkind, k).unwrap());
            let ex = s
                .exemplar_slots(&lock, v, fam::REQUEST, 1, slots)
                .expect("no exemplar slots");
            let w = exemplar::SLOT_WORDS;
            exemplar::write(&ex[(i / keys.len() % slots) * w..], &exemplar_of(c, i));
            if let Some(e) = exemplar::read(&ex[((i + c) % slots) * w..]) {
                check_exemplar(&e);
                seen += 1;
            }
        }
        seen
    });
    assert!(seen.iter().sum::<u64>() > 0);
    // One exemplar entry per series (the racing first inserts made one), never counted as a
    // series; every slot holds one whole exemplar.
    let mut entries = 0;
    s.for_each(|e| {
        if e.kind.family & store::EXEMPLARS != 0 {
            entries += 1;
            assert_eq!(e.kind.family, store::EXEMPLARS | fam::REQUEST);
            for slot in e.values.chunks(exemplar::SLOT_WORDS) {
                check_exemplar(&exemplar::read(slot).expect("empty slot"));
            }
        }
    });
    assert_eq!(entries, keys.len());
    assert_eq!(s.usage().series, keys.len() as u64);
    assert_eq!(s.drops(DropReason::Exemplar), 0);
}
