//! A zone holding every kind of series the page shows (every built-in family, declared
//! counters, gauges and histograms, overflow series, in-flight gauges of live and dead owners,
//! a second bucket layout, hostile label values), filled in rounds: the pages of the render
//! cache's tests.

use std::sync::atomic::AtomicU64;

use gateway_metrics_core::catalogue::{fam, tokens};
use gateway_metrics_core::hash::family_id;
use gateway_metrics_core::render::{CustomFamily, CustomKind, HistSpec, RenderSpec};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{
    add_u64, observe, set_f64, InsertLock, Limits, SeriesKind, Store,
};

use super::key;

pub const BOUNDS: [f64; 4] = [0.1, 0.5, 1.0, 5.0];
pub const OLD_BOUNDS: [f64; 2] = [0.2, 2.0];
pub const CUSTOM_BOUNDS: [f64; 2] = [1.0, 10.0];

/// The declared families of the page, with their layouts (from [`layouts`]).
pub fn custom(hist_layout: u8) -> Vec<(CustomFamily, u8)> {
    let f = |name: &str, kind, labels: &[&str], bounds: &[f64]| CustomFamily {
        name: name.into(),
        help: format!("help of {name}"),
        kind,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        bounds: bounds.to_vec(),
        id: family_id(name),
    };
    vec![
        (
            f(
                "app_jobs_total",
                CustomKind::Counter,
                &["queue", "result"],
                &[],
            ),
            0,
        ),
        (f("app_depth", CustomKind::Gauge, &[], &[]), 0),
        (
            f(
                "app_size_bytes",
                CustomKind::Histogram,
                &["queue"],
                &CUSTOM_BOUNDS,
            ),
            hist_layout,
        ),
    ]
}

/// Registers the layouts: (current request layout, an older one, the declared histogram's).
pub fn layouts<L: InsertLock + ?Sized>(store: &Store, lock: &L) -> (u8, u8, u8) {
    (
        store.register_layout(lock, &BOUNDS).unwrap(),
        store.register_layout(lock, &OLD_BOUNDS).unwrap(),
        store.register_layout(lock, &CUSTOM_BOUNDS).unwrap(),
    )
}

/// Round `round` of traffic: new series of every family (some hostile, some over the cap of
/// `max_series` into the overflow series) and more values for the old ones.
pub fn fill<L: InsertLock + ?Sized>(store: &Store, lock: &L, max_series: u64, round: u64) {
    let (cur, old, hist) = layouts(store, lock);
    let limits = Limits { max_series };
    let nb = BOUNDS.len();
    let put = |kind: SeriesKind, k: &[&str]| {
        let (v, _) = series(store, lock, limits, kind, &key(k), k.len());
        v
    };
    let statuses = ["200", "404", "499", "502", "0", "503", "201"];
    let cuts = ["", "", "client_closed", "", "upstream_error"];
    for i in 0..40u64 {
        let j = i + round * 7;
        let ns = match j % 6 {
            0 => "a\"quote".to_string(),
            1 => "back\\slash\nnl".to_string(),
            _ => format!("ns{}", j % 13),
        };
        let up = if j.is_multiple_of(5) {
            String::new()
        } else {
            format!("up{}", j % 3)
        };
        let st = statuses[(j % 7) as usize];
        let cut = cuts[(j % 5) as usize];
        let ep = format!("/v1/e{}", j % 4);
        let method = if j.is_multiple_of(2) { "POST" } else { "GET" };
        let layout = if j % 9 == 4 { old } else { cur };
        let n = if layout == old { OLD_BOUNDS.len() } else { nb };
        let kind = SeriesKind {
            family: fam::REQUEST,
            layout,
            n_values: (n + 2) as u8,
        };
        let bounds: &[f64] = if layout == old { &OLD_BOUNDS } else { &BOUNDS };
        if let Some(v) = put(kind, &[method, &ep, st, &ns, &up, cut]) {
            observe(v, bounds, (j % 11) as f64 * 0.37);
        }
        let model = format!("m{}", j % 3);
        let mkind = |family, n: usize, layout| SeriesKind {
            family,
            layout,
            n_values: n as u8,
        };
        if let Some(v) = put(mkind(fam::MODEL_REQUEST, nb + 2, cur), &[&model, &ns, st]) {
            observe(v, &BOUNDS, 0.3 + j as f64 / 7.0);
        }
        let tk = mkind(fam::MODEL_TOKENS, usize::from(tokens::N_VALUES), 0);
        if let Some(v) = put(tk, &[&model, &ns]) {
            add_u64(&v[tokens::INPUT], 10 + j);
            add_u64(&v[tokens::OUTPUT], 3 * j);
            if j.is_multiple_of(4) {
                add_u64(&v[tokens::REASONING], j);
            }
            set_f64(&v[tokens::COST], j as f64 * 0.0013);
        }
        for family in [fam::TTFT, fam::THROUGHPUT, fam::TPOT] {
            if let Some(v) = put(mkind(family, nb + 2, cur), &[&model, &ns]) {
                observe(v, &BOUNDS, j as f64 * 0.11);
            }
        }
        // In-flight gauges: `{namespace, slot}` with an owner pid (odd pids are dead).
        if let Some(v) = put(mkind(fam::ACTIVE, 2, 0), &[&ns, &format!("{}", j % 2)]) {
            add_u64(&v[0], 1 + j % 3);
            add_u64(&v[1], 100 + j % 4);
        }
        if let Some(v) = put(mkind(fam::RATE_LIMIT, 2, 0), &[&ns, "req"]) {
            add_u64(&v[j as usize % 2], 1);
        }
        if let Some(v) = put(mkind(fam::CACHE, 2, 0), &[&format!("c{}", j % 2)]) {
            add_u64(&v[0], j);
        }
        if let Some(v) = put(mkind(fam::UNPRICED, 1, 0), &[&model]) {
            add_u64(&v[0], 1);
        }
        if let Some(v) = put(mkind(fam::USAGE_MISSING, 1, 0), &[&model, &ns, "absent"]) {
            add_u64(&v[0], 1);
        }
        let cfam = custom(hist);
        let ck = |i: usize| mkind(cfam[i].0.id, cfam[i].0.n_values().into(), cfam[i].1);
        if let Some(v) = put(ck(0), &[&format!("q{}", j % 5), st]) {
            add_u64(&v[0], 1);
        }
        if let Some(v) = put(ck(1), &[]) {
            set_f64(&v[0], -(j as f64) / 3.0);
        }
        if let Some(v) = put(ck(2), &[&format!("q{}", j % 3)]) {
            observe(v, &CUSTOM_BOUNDS, j as f64);
        }
    }
}

/// The spec of the page of a zone filled by [`fill`].
pub fn spec<'a>(
    store: &Store,
    lock: &impl InsertLock,
    custom: &'a [(CustomFamily, u8)],
) -> RenderSpec<'a> {
    let (cur, _, _) = layouts(store, lock);
    let h = HistSpec {
        bounds: &BOUNDS,
        layout: cur,
    };
    RenderSpec {
        zone_name: "z",
        max_series: 1000,
        duration: h,
        ttft: h,
        throughput: h,
        tpot: h,
        custom,
        views: Default::default(),
        nginx: None,
        alive: Some(|pid| pid % 2 == 0),
    }
}

/// A region for [`fill`].
pub fn region() -> Vec<AtomicU64> {
    super::region(4 << 20)
}
