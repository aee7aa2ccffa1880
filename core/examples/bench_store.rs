//! Store and render benchmark (no nginx): render time and size of `/metrics` at 1k/10k/100k
//! request series, hot-path update cost, and memory per series in a 32 MiB zone.
//! Run: `cargo run --release -p gateway-metrics-core --example bench_store [-- --quick]`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use gateway_metrics_core::buckets::DEFAULT_DURATION_BUCKETS;
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::exemplar;
use gateway_metrics_core::format::Format;
use gateway_metrics_core::labels::KeyBuilder;
use gateway_metrics_core::render::{render, render_cached, HistSpec, RenderCache, RenderSpec};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{observe, InsertLock, Limits, SeriesKind, Store};

struct Spin(AtomicBool);
impl InsertLock for Spin {
    fn lock(&self) {
        while self.0.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
    }
    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

fn region(bytes: usize) -> Vec<AtomicU64> {
    (0..bytes / 8).map(|_| AtomicU64::new(0)).collect()
}

/// Label values of ~10 bytes each, as in the memory target.
fn request_key(k: &mut KeyBuilder, i: usize) {
    k.clear();
    let ns = format!("tenant{:04}", i % 10_000);
    let ep = format!("/v1/ep{:04}", (i / 10_000) % 10_000);
    let up = format!("upstream{:02}", i % 7);
    k.push(b"POST")
        .push(ep.as_bytes())
        .push(b"200")
        .push(ns.as_bytes())
        .push(up.as_bytes());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lock = Spin(AtomicBool::new(false));
    let bounds = &DEFAULT_DURATION_BUCKETS[..];
    let limits = Limits {
        max_series: u64::MAX,
    };

    println!(
        "== render: /metrics of N request series (14 buckets, 5 labels), all derived views =="
    );
    let only: Option<usize> = std::env::args()
        .skip_while(|a| a != "--render")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let all = [1_000, 10_000, 100_000];
    let sizes: &[usize] = match (&only, quick) {
        (Some(n), _) => std::slice::from_ref(n),
        (None, true) => &all[..1],
        (None, false) => &all,
    };
    for &n in sizes {
        let mem = region(((n * 400) + (1 << 20)).max(4 << 20));
        let store = Store::format(&mem, 0).unwrap();
        let layout = store.register_layout(&lock, bounds).unwrap();
        let kind = SeriesKind {
            family: fam::REQUEST,
            layout,
            n_values: (bounds.len() + 2) as u8,
        };
        let mut k = KeyBuilder::new();
        for i in 0..n {
            request_key(&mut k, i);
            let (v, _) = series(&store, &lock, limits, kind, k.as_bytes(), 5);
            observe(v.unwrap(), bounds, (i % 100) as f64 * 0.01);
        }
        let spec = RenderSpec {
            zone_name: "bench",
            max_series: u64::MAX,
            duration: HistSpec { bounds, layout },
            ttft: HistSpec { bounds, layout: 0 },
            throughput: HistSpec { bounds, layout: 0 },
            tpot: HistSpec { bounds, layout: 0 },
            custom: &[],
            views: Default::default(),
            nginx: None,
            alive: None,
            format: Default::default(),
        };
        let cached_only = std::env::args().any(|a| a == "--cached");
        let runs = if cached_only {
            1
        } else if only.is_some() {
            50
        } else if n >= 100_000 || quick {
            3
        } else {
            15
        };
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let mut out = Vec::with_capacity(size + size / 16);
            let t = Instant::now();
            render(&store, &spec, &mut out);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            size = out.len();
        }
        let ms = median(times);
        println!(
            "render_ms{{series=\"{n}\"}} {ms:.2}   size_bytes {size}   ({:.0} ns/series)",
            ms * 1e6 / n as f64
        );
        // As a worker renders: with the cache of the previous scrapes, into a reused buffer.
        let mut cache = RenderCache::default();
        let mut out = Vec::with_capacity(size + size / 16);
        let mut times = Vec::new();
        let cached_runs = if cached_only { 50 } else { runs };
        for i in 0..=cached_runs {
            out.clear();
            let t = Instant::now();
            render_cached(&store, &spec, &mut out, &mut cache);
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ms = median(times);
        println!(
            "render_cached_ms{{series=\"{n}\"}} {ms:.2}   ({:.0} ns/series, cache {} bytes)",
            ms * 1e6 / n as f64,
            cache.bytes()
        );
        // The same page in OpenMetrics (`_created` lines), then with an exemplar in one bucket
        // of every series.
        for with_exemplars in [false, true] {
            if with_exemplars {
                store.for_each(|e| {
                    if e.kind.family != fam::REQUEST {
                        return;
                    }
                    let slots = store.exemplar_slots(
                        &lock,
                        e.values,
                        fam::REQUEST,
                        layout,
                        bounds.len() + 1,
                    );
                    if let Some(x) = slots {
                        let ex = exemplar::Exemplar {
                            trace: exemplar::TraceContext {
                                trace_id: [7; 16],
                                span_id: [9; 8],
                            },
                            value: 0.2,
                            ts_ms: 1_764_600_000_000,
                        };
                        exemplar::write(&x[5 * exemplar::SLOT_WORDS..], &ex);
                    }
                });
            }
            let om = RenderSpec {
                format: Format::OpenMetrics,
                ..spec
            };
            let mut times = Vec::new();
            for i in 0..=cached_runs {
                out.clear();
                let t = Instant::now();
                render_cached(&store, &om, &mut out, &mut cache);
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let ms = median(times);
            let what = if with_exemplars {
                "openmetrics_exemplars"
            } else {
                "openmetrics"
            };
            println!(
                "render_cached_{what}_ms{{series=\"{n}\"}} {ms:.2}   size_bytes {}   ({:.0} ns/series)",
                out.len(),
                ms * 1e6 / n as f64
            );
        }
    }

    println!(
        "== hot path: update of an existing series (lookup + histogram observe), one thread =="
    );
    {
        let mem = region(8 << 20);
        let store = Store::format(&mem, 0).unwrap();
        let layout = store.register_layout(&lock, bounds).unwrap();
        let kind = SeriesKind {
            family: fam::REQUEST,
            layout,
            n_values: (bounds.len() + 2) as u8,
        };
        let keys: Vec<KeyBuilder> = (0..10)
            .map(|i| {
                let mut k = KeyBuilder::new();
                request_key(&mut k, i);
                k
            })
            .collect();
        let iters = if quick { 100_000 } else { 5_000_000 };
        let t = Instant::now();
        for i in 0..iters {
            let k = &keys[i % keys.len()];
            let (v, _) = series(&store, &lock, limits, kind, k.as_bytes(), 5);
            observe(v.unwrap(), bounds, 0.042);
        }
        println!(
            "update_ns {:.1}",
            t.elapsed().as_secs_f64() * 1e9 / iters as f64
        );
    }

    println!("== memory: series that fit in a 32 MiB zone ==");
    for (what, family, n_values, layout_needed) in [
        (
            "histogram (14 buckets, 5 labels of ~10 bytes)",
            fam::REQUEST,
            (bounds.len() + 2) as u8,
            true,
        ),
        ("counter (2 labels of ~10 bytes)", fam::CACHE, 2u8, false),
    ] {
        let mem = region(32 << 20);
        let store = Store::format(&mem, 0).unwrap();
        let layout = if layout_needed {
            store.register_layout(&lock, bounds).unwrap()
        } else {
            0
        };
        let kind = SeriesKind {
            family,
            layout,
            n_values,
        };
        let mut k = KeyBuilder::new();
        let mut n = 0usize;
        loop {
            if family == fam::REQUEST {
                request_key(&mut k, n);
                // make every key distinct beyond 10k tenants x endpoints
                k.clear();
                let ns = format!("tenant{n:06}");
                k.push(b"POST")
                    .push(b"/v1/chat01")
                    .push(b"200")
                    .push(ns.as_bytes())
                    .push(b"upstream01");
            } else {
                k.clear();
                k.push(format!("tenant{n:06}").as_bytes())
                    .push(b"token_lim");
            }
            let (_, dropped) = series(
                &store,
                &lock,
                limits,
                kind,
                k.as_bytes(),
                if family == fam::REQUEST { 5 } else { 2 },
            );
            if dropped.is_some() {
                break;
            }
            n += 1;
        }
        let u = store.usage();
        println!(
            "fit_in_32MiB{{kind=\"{what}\"}} {n}   bytes_per_series {:.0}",
            (32u64 << 20) as f64 / n as f64
        );
        let _ = u;
    }
}
