//! The render cache (each stored series' group and escaped label set kept from one scrape to
//! the next) never changes a page: a render with a cache, cold or warm, in one go or in steps,
//! after new series (main heap and overflow reserve), after a render stopped part-way, and
//! after the configuration changed, gives the bytes of a fresh render of the same zone.

mod common;

use std::sync::atomic::AtomicU64;

use common::page::{custom, fill, layouts, region, spec};
use common::SpinLock;
use gateway_metrics_core::catalogue::Views;
use gateway_metrics_core::render::{render, render_cached, Render, RenderCache, RenderSpec};
use gateway_metrics_core::store::Store;

fn fresh(store: &Store, spec: &RenderSpec) -> Vec<u8> {
    let mut out = Vec::new();
    render(store, spec, &mut out);
    out
}

fn cached(store: &Store, spec: &RenderSpec, cache: &mut RenderCache) -> Vec<u8> {
    let mut out = Vec::new();
    render_cached(store, spec, &mut out, cache);
    out
}

/// The page in steps of `budget` units, with the cache.
fn stepped(store: &Store, spec: &RenderSpec, cache: &mut RenderCache, budget: usize) -> Vec<u8> {
    let mut r = Render::with_cache(store, spec, std::mem::take(cache));
    let mut out = Vec::new();
    while !r.step(&mut out, budget) {}
    *cache = r.into_cache();
    out
}

fn text(page: &[u8]) -> String {
    String::from_utf8(page.to_vec()).unwrap()
}

#[test]
fn cached_pages_are_fresh_pages() {
    let mem = region();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let store = Store::format(&mem, 1).unwrap();
    let mut cache = RenderCache::default();
    let mut cap = u64::MAX;
    for round in 0..7 {
        // The cap sends the new series of rounds 3 and 4 to the overflow series, then is
        // lifted: the new series of the main heap come before the overflow series in the walk.
        if round == 3 {
            cap = store.usage().series;
        } else if round == 5 {
            cap = u64::MAX;
        }
        fill(&store, &lock, cap, round);
        let cf = custom(layouts(&store, &lock).2);
        let spec = spec(&store, &lock, &cf);
        let want = fresh(&store, &spec);
        assert_eq!(
            text(&want).contains("=\"__overflow__\""),
            round >= 3,
            "round {round}"
        );
        assert_eq!(
            text(&cached(&store, &spec, &mut cache)),
            text(&want),
            "cold/warm, round {round}"
        );
        assert_eq!(
            text(&cached(&store, &spec, &mut cache)),
            text(&want),
            "warm, round {round}"
        );
        for budget in [1, 3, 50] {
            let got = stepped(&store, &spec, &mut cache, budget);
            assert_eq!(text(&got), text(&want), "steps of {budget}, round {round}");
        }
        // A render stopped part-way (the client went away) leaves a cache as good.
        let mut r = Render::with_cache(&store, &spec, std::mem::take(&mut cache));
        let mut out = Vec::new();
        for _ in 0..(round as usize * 37 + 5) {
            r.step(&mut out, 7);
        }
        cache = r.into_cache();
        assert!(cache.bytes() > 0);
    }
    let cf = custom(layouts(&store, &lock).2);
    let spec = spec(&store, &lock, &cf);
    // Another configuration of the page: the cache starts over.
    let views = Views::parse(&["-gateway_requests_total", "-errors_total"]).unwrap();
    let fewer = RenderSpec { views, ..spec };
    assert_eq!(
        text(&cached(&store, &fewer, &mut cache)),
        text(&fresh(&store, &fewer))
    );
    let less_custom = RenderSpec {
        custom: &cf[1..],
        ..spec
    };
    let want = fresh(&store, &less_custom);
    assert_eq!(text(&cached(&store, &less_custom, &mut cache)), text(&want));
    assert_eq!(
        text(&cached(&store, &spec, &mut cache)),
        text(&fresh(&store, &spec))
    );
}

#[test]
fn a_new_zone_generation_empties_the_cache() {
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let mut cache = RenderCache::default();
    let mem = region();
    {
        let store = Store::format(&mem, 1).unwrap();
        fill(&store, &lock, 1000, 0);
        let cf = custom(layouts(&store, &lock).2);
        let spec = spec(&store, &lock, &cf);
        assert_eq!(
            text(&cached(&store, &spec, &mut cache)),
            text(&fresh(&store, &spec))
        );
    }
    // The same region formatted again (a later creation time) holds other series at the same
    // places.
    let store = Store::format(&mem, 2).unwrap();
    fill(&store, &lock, 1000, 3);
    let cf = custom(layouts(&store, &lock).2);
    let spec = spec(&store, &lock, &cf);
    assert_eq!(
        text(&cached(&store, &spec, &mut cache)),
        text(&fresh(&store, &spec))
    );
}
