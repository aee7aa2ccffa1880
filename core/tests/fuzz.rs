//! Property-based fuzzing of what hostile input reaches: label sanitising and escaping, the
//! encoder (every page must parse), the store under arbitrary keys and updates, the checks of
//! Lua's arguments, and the response-usage reader under hostile and mutated bodies (no panic,
//! bounded state). `PROPTEST_CASES` sets the number of cases (scripts/fuzz runs many more).

mod common;

use std::sync::atomic::AtomicU64;

use gateway_metrics_core::api;
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::expo::push_labels;
use gateway_metrics_core::labels::{
    escape_label_value, sanitize_into, KeyBuilder, MAX_LABEL_VALUE_BYTES,
};
use gateway_metrics_core::render::{render, HistSpec, RenderSpec};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{add_u64, observe, Limits, SeriesKind, Store};
use gateway_metrics_core::usage::{Body, Format, UsageReader, CARRY_CAP, SHAPE_CAP};
use proptest::prelude::*;

/// Reverses the exposition escaping of a label value.
fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = v.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(&c) => out.push(c),
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    out
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(
            prop::sample::select(vec![
                b'"', b'\\', b'\n', b'\r', 0u8, 0xff, 0xc3, b'a', b'{', b'}', b'=', b','
            ]),
            0..300
        ),
        ".{0,300}".prop_map(|s: String| s.into_bytes()),
    ]
}

proptest! {
    #[test]
    fn sanitised_values_are_valid_bounded_and_round_trip(raw in hostile_bytes()) {
        let mut clean = Vec::new();
        sanitize_into(&mut clean, &raw);
        prop_assert!(clean.len() <= MAX_LABEL_VALUE_BYTES);
        prop_assert!(std::str::from_utf8(&clean).is_ok());
        prop_assert!(!clean.contains(&0));
        if std::str::from_utf8(&raw).is_ok() && !raw.contains(&0) && raw.len() <= MAX_LABEL_VALUE_BYTES {
            prop_assert_eq!(&clean, &raw, "a valid short value is kept as is");
        }
        let mut esc = Vec::new();
        escape_label_value(&mut esc, &clean);
        prop_assert!(!esc.contains(&b'\n'));
        // every quote is escaped
        for (i, &b) in esc.iter().enumerate() {
            if b == b'"' {
                let backslashes = esc[..i].iter().rev().take_while(|&&c| c == b'\\').count();
                prop_assert!(backslashes % 2 == 1);
            }
        }
        prop_assert_eq!(unescape(&esc), clean);
    }

    #[test]
    fn label_sets_always_parse(values in proptest::collection::vec(hostile_bytes(), 1..6)) {
        let mut clean: Vec<Vec<u8>> = Vec::new();
        for v in &values {
            let mut c = Vec::new();
            sanitize_into(&mut c, v);
            clean.push(c);
        }
        let names = ["a", "b", "c", "d", "e", "f"];
        let refs: Vec<&[u8]> = clean.iter().map(|v| v.as_slice()).collect();
        let mut labels = Vec::new();
        push_labels(&mut labels, &names[..refs.len()], &refs);
        let page = format!("# HELP x_total X.\n# TYPE x_total counter\nx_total{{{}}} 1\n", String::from_utf8(labels).unwrap());
        let parsed = common::parse(page.as_bytes());
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let parsed = parsed.unwrap();
        let s = parsed.samples("x_total").next().unwrap();
        for (i, v) in clean.iter().enumerate() {
            prop_assert_eq!(s.label(names[i]).unwrap().as_bytes(), v.as_slice());
        }
    }

    #[test]
    fn pages_from_hostile_traffic_parse_and_add_up(
        reqs in proptest::collection::vec((hostile_bytes(), hostile_bytes(), 0u16..700, 0.0f64..200.0), 1..60),
        max_series in 1u64..40,
    ) {
        let mem = common::region(256 * 1024);
        let store = Store::format(&mem, 1).unwrap();
        let word = AtomicU64::new(0);
        let lock = common::SpinLock(&word);
        let bounds = [0.1, 1.0, 10.0];
        let layout = store.register_layout(&lock, &bounds).unwrap();
        let kind = SeriesKind { family: fam::REQUEST, layout, n_values: 5 };
        let limits = Limits { max_series };
        let mut k = KeyBuilder::new();
        let mut recorded = 0u64;
        for (ns, ep, status, dur) in &reqs {
            k.clear();
            k.push(b"POST").push(ep).push(status.to_string().as_bytes()).push(ns).push(b"up");
            if let (Some(v), _) = series(&store, &lock, limits, kind, k.as_bytes(), 5) {
                observe(v, &bounds, *dur);
                recorded += 1;
            }
            let mut ak = KeyBuilder::new();
            ak.push(ns);
            if let (Some(v), _) = series(&store, &lock, limits, SeriesKind { family: fam::ACTIVE, layout: 0, n_values: 1 }, ak.as_bytes(), 1) {
                add_u64(&v[0], 1);
            }
        }
        prop_assert_eq!(recorded, reqs.len() as u64, "the overflow series always takes the update");
        let spec = RenderSpec {
            zone_name: "fuzz\"zone",
            max_series,
            duration: HistSpec { bounds: &bounds, layout },
            ttft: HistSpec { bounds: &bounds, layout: 0 },
            throughput: HistSpec { bounds: &bounds, layout: 0 },
            tpot: HistSpec { bounds: &bounds, layout: 0 },
            custom: &[],
            views: Default::default(),
            nginx: None,
            alive: None,
            format: Default::default(),
        };
        let mut out = Vec::new();
        render(&store, &spec, &mut out);
        let page = common::parse(&out);
        prop_assert!(page.is_ok(), "{:?}", page.err());
        let page = page.unwrap();
        let total: f64 = page.samples("http_requests_total").map(|s| s.value).sum();
        prop_assert_eq!(total as u64, recorded);
        let by_ns: f64 = page.samples("namespace_requests_total").map(|s| s.value).sum();
        prop_assert_eq!(by_ns as u64, recorded);
        prop_assert!(store.usage().series <= max_series);
    }

    #[test]
    fn key_set_equals_pushing_each_value(values in proptest::collection::vec(hostile_bytes(), 1..7)) {
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let mut a = KeyBuilder::new();
        a.set(&refs);
        let mut b = KeyBuilder::new();
        for v in &refs {
            b.push(v);
        }
        prop_assert_eq!(a.as_bytes(), b.as_bytes());
        prop_assert_eq!(a.len(), refs.len());
    }

    #[test]
    fn token_counts_accept_only_whole_non_negative_numbers(v in any::<f64>()) {
        match api::token_count(v) {
            Some(n) => {
                prop_assert!(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= api::MAX_TOKENS);
                prop_assert_eq!(n as f64, v);
            }
            None => prop_assert!(!v.is_finite() || v < 0.0 || v.fract() != 0.0 || v > api::MAX_TOKENS),
        }
    }

    #[test]
    fn metric_values_accept_finite_numbers_and_no_negative_increments(v in any::<f64>(), counter in any::<bool>()) {
        match api::metric_value(v, counter) {
            Ok(x) => {
                prop_assert!(v.is_finite() && !(counter && v < 0.0));
                prop_assert_eq!(x.to_bits(), v.to_bits());
            }
            Err(_) => prop_assert!(!v.is_finite() || (counter && v < 0.0)),
        }
    }

    #[test]
    fn store_survives_arbitrary_keys(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..200)) {
        let mem: Vec<AtomicU64> = common::region(128 * 1024);
        let store = Store::format(&mem, 1).unwrap();
        let word = AtomicU64::new(0);
        let lock = common::SpinLock(&word);
        let kind = SeriesKind { family: 77, layout: 0, n_values: 1 };
        for key in &keys {
            let (v, _) = series(&store, &lock, Limits { max_series: 1000 }, kind, key, 1);
            if let Some(v) = v { add_u64(&v[0], 1); }
        }
        let mut total = 0;
        store.for_each(|e| total += e.values[0].load(std::sync::atomic::Ordering::Relaxed));
        prop_assert_eq!(total, keys.len() as u64);
    }
}

fn raw_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z0-9/_.-]{0,12}".prop_map(|s: String| s.into_bytes()),
        1 => hostile_bytes(),
        1 => proptest::collection::vec(prop::sample::select(vec![b'a', 0xff, 0u8, 0xc3]), 0..6),
    ]
}

proptest! {
    /// The hot path's lookup from raw values (joined on the stack, never sanitised) reaches
    /// exactly the series the sanitised key names, whatever the values hold.
    #[test]
    fn raw_lookup_reaches_the_sanitised_series(
        rounds in proptest::collection::vec(proptest::collection::vec(raw_value(), 3), 1..40)
    ) {
        let region = common::region(1 << 20);
        let store = Store::format(&region, 0).unwrap();
        let lock = common::CheckedLock::default();
        let kind = SeriesKind { family: fam::MODEL_REQUEST, layout: 0, n_values: 1 };
        let limits = Limits { max_series: 1_000_000 };
        for values in &rounds {
            let vals: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let mut k = KeyBuilder::new();
            k.set(&vals);
            let (want, _) = series(&store, &lock, limits, kind, k.as_bytes(), 3);
            let (got, _) = gateway_metrics_core::series_of(&store, &lock, limits, kind, &vals);
            prop_assert!(std::ptr::eq(want.unwrap(), got.unwrap()));
            let mut plain_values = true;
            for v in &vals {
                let mut one = Vec::new();
                sanitize_into(&mut one, v);
                plain_values &= one == *v && !v.contains(&0xff);
            }
            let joined_len = vals.iter().map(|v| v.len() + 1).sum::<usize>() - 1;
            if plain_values && joined_len <= gateway_metrics_core::labels::STACK_KEY_BYTES {
                let joined = gateway_metrics_core::labels::StackKey::<{ gateway_metrics_core::labels::STACK_KEY_BYTES }>::join(&vals);
                prop_assert!(store.find_joined(kind, &joined).is_some(), "plain values must hit");
            }
            add_u64(&got.unwrap()[0], 1);
            // A direct hit only ever happens for values that are their own sanitised form.
            let joined = gateway_metrics_core::labels::StackKey::<{ gateway_metrics_core::labels::STACK_KEY_BYTES }>::join(&vals);
            if store.find_joined(kind, &joined).is_some() {
                let mut plain = Vec::new();
                for (i, v) in vals.iter().enumerate() {
                    if i > 0 {
                        plain.push(0xff);
                    }
                    plain.extend_from_slice(v);
                }
                prop_assert_eq!(plain.as_slice(), k.as_bytes());
            }
        }
        let mut total = 0;
        store.for_each(|e| total += e.values[0].load(std::sync::atomic::Ordering::Relaxed));
        prop_assert_eq!(total, rounds.len() as u64);
    }
}

proptest! {
    /// The stack join (word stores, two buffer sizes) gives the plain join, zero-padded.
    #[test]
    fn stack_join_is_the_plain_join(values in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
        use gateway_metrics_core::labels::{StackKey, STACK_KEY_BYTES};
        let vals: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let mut plain = Vec::new();
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                plain.push(0xff);
            }
            plain.extend_from_slice(v);
        }
        let mut padded = plain.clone();
        padded.resize(plain.len().div_ceil(8) * 8, 0);
        let short: StackKey = StackKey::join(&vals);
        match short.padded() {
            Some(p) => prop_assert_eq!(p, padded.as_slice()),
            None => prop_assert!(plain.len() + 16 > 128),
        }
        let long = StackKey::<STACK_KEY_BYTES>::join(&vals);
        prop_assert_eq!(long.padded().unwrap(), padded.as_slice());
        prop_assert_eq!(long.len(), plain.len());
    }
}

proptest! {
    #[test]
    fn short_eq_is_eq(a in proptest::collection::vec(0u8..3, 0..24), b in proptest::collection::vec(0u8..3, 0..24)) {
        prop_assert_eq!(gateway_metrics_core::labels::short_eq(&a, &b), a == b);
        prop_assert!(gateway_metrics_core::labels::short_eq(&a, &a.clone()));
    }
}

proptest! {
    /// The per-process cache in front of the table never changes what an update reaches, and
    /// never hides a drop: with identities standing for fixed bytes (as the glue guarantees),
    /// random label mixes, hostile bytes and a cap that forces overflow.
    #[test]
    fn cached_lookup_is_the_table_lookup(
        rounds in proptest::collection::vec(
            (0usize..4, proptest::collection::vec(raw_value(), 2), 0u8..2), 1..80),
        cap in 1u64..20,
    ) {
        use gateway_metrics_core::cache::{Label, SeriesCache};
        use gateway_metrics_core::series_cached;
        let region = common::region(1 << 20);
        let store = Store::format(&region, 0).unwrap();
        let lock = common::CheckedLock::default();
        let limits = Limits { max_series: cap };
        let mut cache = SeriesCache::new(4);
        // Identity i stands for these bytes, always.
        let idents: [&[u8]; 4] = [b"GET", b"POST", b"/v1/chat/completions", b""];
        for (ident, values, fam_pick) in &rounds {
            let kind = SeriesKind {
                family: if *fam_pick == 0 { fam::MODEL_REQUEST } else { fam::RATE_LIMIT },
                layout: 0,
                n_values: 1,
            };
            let labels = [
                Label::with_id(*ident as u64 + 1, idents[*ident]),
                Label::bytes(&values[0]),
                Label::bytes(&values[1]),
            ];
            let plain: Vec<&[u8]> = labels.iter().map(|l| l.bytes).collect();
            let (want, want_drop) =
                gateway_metrics_core::series_of(&store, &lock, limits, kind, &plain);
            let (got, got_drop) = series_cached(&mut cache, &store, &lock, limits, kind, &labels);
            prop_assert!(std::ptr::eq(want.unwrap(), got.unwrap()));
            prop_assert_eq!(want_drop.is_some(), got_drop.is_some());
        }
    }
}

/// Feeds `body` to every reader kind in pieces cut at `cuts`: it must not panic, and its state
/// must stay within its bound. A reader reset after reading the body before, as every other
/// kind (the glue reuses readers), reads it exactly as the new one does.
fn read_usage_everywhere(body: &[u8], cuts: &[usize]) {
    let mut reused = UsageReader::new(Format::Auto, Body::EventStream);
    for format in [
        Format::Auto,
        Format::OpenAi,
        Format::Anthropic,
        Format::Gemini,
    ] {
        for kind in [Body::EventStream, Body::Json] {
            let mut r = UsageReader::new(format, kind);
            reused.reset(format, kind);
            let bound = r.state_bytes();
            assert!(bound <= std::mem::size_of::<UsageReader>() + CARRY_CAP.max(SHAPE_CAP));
            let mut start = 0;
            for &c in cuts.iter().chain(std::iter::once(&body.len())) {
                let c = c.clamp(start, body.len());
                assert_eq!(r.feed(&body[start..c]), reused.feed(&body[start..c]));
                start = c;
                assert_eq!(r.state_bytes(), bound);
                assert!(
                    reused.state_bytes()
                        <= std::mem::size_of::<UsageReader>() + CARRY_CAP + SHAPE_CAP
                );
            }
            let complete = cuts.len().is_multiple_of(2);
            assert_eq!(r.finish(complete), reused.finish(complete));
            assert_eq!(r.model(), reused.model());
            assert_eq!(
                r.first_content_at_finish(),
                reused.first_content_at_finish()
            );
            assert!(r
                .model()
                .is_none_or(|m| m.len() <= gateway_metrics_core::usage::MODEL_CAP));
        }
    }
}

fn sorted(mut cuts: Vec<usize>) -> Vec<usize> {
    cuts.sort_unstable();
    cuts
}

proptest! {
    #[test]
    fn usage_reader_survives_hostile_bytes(body in hostile_bytes(), cuts in proptest::collection::vec(0usize..600, 0..8)) {
        read_usage_everywhere(&body, &sorted(cuts));
    }

    #[test]
    fn usage_reader_survives_mutated_corpus(
        pick in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let cases = common::corpus::load();
        let mut body = cases[pick % cases.len()].body.clone();
        for (at, byte, op) in edits {
            let at = if body.is_empty() { 0 } else { at % body.len() };
            match op {
                0 if !body.is_empty() => body[at] = byte,
                1 => body.insert(at, byte),
                2 if !body.is_empty() => { body.remove(at); }
                // Structure-heavy bytes: quotes, brackets, escapes, line ends.
                _ => {
                    let hot = br#""\{}[]:,"#;
                    let hot = [hot.as_slice(), b"\n\r "].concat();
                    body.insert(at, hot[usize::from(byte) % hot.len()]);
                }
            }
        }
        let len = body.len().max(1);
        let cuts = sorted(cuts.into_iter().map(|c| c % len).collect());
        read_usage_everywhere(&body, &cuts);
    }

    /// A JSON body fed whole (read by the whole-buffer walk when it can) reads as the same
    /// body fed byte by byte (read by the resumable scanner), also when damaged.
    #[test]
    fn json_body_whole_reads_as_byte_by_byte(
        pick in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4),
    ) {
        let cases: Vec<_> = common::corpus::load()
            .into_iter()
            .filter(|c| c.kind == Body::Json)
            .collect();
        let mut body = cases[pick % cases.len()].body.clone();
        for (at, byte, op) in edits {
            let at = if body.is_empty() { 0 } else { at % body.len() };
            let hot = b"\"\\{}[]:,0-e \n";
            match op {
                0 if !body.is_empty() => body[at] = hot[usize::from(byte) % hot.len()],
                1 => body.insert(at, hot[usize::from(byte) % hot.len()]),
                2 if !body.is_empty() => { body.remove(at); }
                _ => body.truncate(at),
            }
        }
        for format in [Format::Auto, Format::OpenAi, Format::Anthropic, Format::Gemini] {
            for complete in [true, false] {
                let mut whole = UsageReader::new(format, Body::Json);
                whole.feed(&body);
                let mut bytes = UsageReader::new(format, Body::Json);
                for b in body.chunks(1) {
                    bytes.feed(b);
                }
                prop_assert_eq!(whole.finish(complete), bytes.finish(complete));
                prop_assert_eq!(whole.model(), bytes.model());
            }
        }
    }
}
