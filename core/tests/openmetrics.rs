//! The OpenMetrics page: the text page's samples with the same values, counter families named
//! without `_total`, units, canonical `le`, a `_created` line after every counter and histogram
//! series, exemplars where the series have some (and the latest of the series a view sums),
//! `# EOF` once, last. The reference parsers (Python's prometheus_client, Prometheus) read the
//! module's pages in tests/test_openmetrics.py; this checks the renderer alone, on a zone with
//! every kind of series.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;

use common::page::{custom, fill, layouts, region, spec};
use common::SpinLock;
use gateway_metrics_core::buckets::format_bound_canonical;
use gateway_metrics_core::format::Format;
use gateway_metrics_core::render::{render, RenderSpec};
use gateway_metrics_core::store::Store;

fn page(store: &Store, spec: &RenderSpec) -> String {
    let mut out = Vec::new();
    render(store, spec, &mut out);
    String::from_utf8(out).unwrap()
}

/// Splits a sample line into (name, labels text, value, exemplar text).
fn sample(line: &str) -> (&str, &str, &str, Option<&str>) {
    let (line, ex) = match line.split_once(" # ") {
        Some((l, e)) => (l, Some(e)),
        None => (line, None),
    };
    let (series, value) = line.rsplit_once(' ').unwrap();
    match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').unwrap(), value, ex),
        None => (series, "", value, ex),
    }
}

/// `le="…"` of a label text.
fn le_of(labels: &str) -> Option<&str> {
    let i = labels.find("le=\"")?;
    let rest = &labels[i + 4..];
    Some(&rest[..rest.find('"')?])
}

#[test]
fn the_openmetrics_page_is_the_text_page_and_more() {
    let mem = region();
    let lock_word = AtomicU64::new(0);
    let lock = SpinLock(&lock_word);
    let store = Store::format(&mem, 1_700_000_000).unwrap();
    for round in 0..3 {
        fill(&store, &lock, u64::MAX, round);
    }
    let cf = custom(layouts(&store, &lock).2);
    let text_spec = spec(&store, &lock, &cf);
    let om_spec = RenderSpec {
        format: Format::OpenMetrics,
        ..text_spec
    };
    let text = page(&store, &text_spec);
    let om = page(&store, &om_spec);
    assert!(!text.contains("# EOF") && !text.contains("_created") && !text.contains(" # {"));
    assert!(om.ends_with("\n# EOF\n") && om.matches("# EOF").count() == 1);

    // Every text sample is in the OpenMetrics page with the same value (le written
    // canonically there).
    let mut text_samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, labels, value, _) = sample(line);
        let labels = match le_of(labels) {
            Some(le) if le != "+Inf" => labels.replace(
                &format!("le=\"{le}\""),
                &format!("le=\"{}\"", format_bound_canonical(le.parse().unwrap())),
            ),
            _ => labels.to_string(),
        };
        text_samples.insert((name.to_string(), labels), value.to_string());
    }
    let mut om_samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut family = String::new();
    let mut created = HashSet::new();
    let mut exemplars = 0;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (f, t) = rest.split_once(' ').unwrap();
            family = f.to_string();
            assert!(
                types.insert(f.to_string(), t.to_string()).is_none(),
                "{f} twice"
            );
            if t == "counter" {
                assert!(!f.ends_with("_total"), "{line}");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (f, unit) = rest.split_once(' ').unwrap();
            assert_eq!(f, family);
            assert!(f.ends_with(&format!("_{unit}")), "{line}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value, ex) = sample(line);
        let suffix = name
            .strip_prefix(family.as_str())
            .unwrap_or_else(|| panic!("{line}"));
        let t = types[&family].as_str();
        let allowed: &[&str] = match t {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{line}");
        if suffix == "_created" {
            let secs: f64 = value.parse().unwrap();
            assert!((1_699_999_999.0..4e9).contains(&secs), "{line}");
            created.insert((family.clone(), labels.to_string()));
            continue;
        }
        if let Some(le) = le_of(labels) {
            if le != "+Inf" {
                assert_eq!(le, format_bound_canonical(le.parse().unwrap()), "{line}");
            }
        }
        if let Some(ex) = ex {
            assert!(suffix == "_total" || suffix == "_bucket", "{line}");
            let set = &ex[ex.find('{').unwrap() + 1..ex.find('}').unwrap()];
            assert!(set.chars().count() <= 128);
            assert!(
                set.starts_with("trace_id=\"") && set.contains("\",span_id=\""),
                "{line}"
            );
            // The value of a bucket's exemplar lies in that bucket.
            let v: f64 = ex.rsplit(' ').nth(1).unwrap().parse().unwrap();
            if let Some(le) = le_of(labels) {
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                assert!(v <= le, "{line}");
            }
            exemplars += 1;
        }
        om_samples.insert((name.to_string(), labels.to_string()), value.to_string());
    }
    assert_eq!(om_samples, text_samples);
    assert!(exemplars > 20, "{exemplars} exemplars");
    // A `_created` line for every counter and histogram series.
    for (name, labels) in om_samples.keys() {
        let (fam, kind) = if let Some(f) = name.strip_suffix("_total") {
            (f, "counter")
        } else if let Some(f) = name.strip_suffix("_count") {
            (f, "histogram")
        } else {
            continue;
        };
        if types.get(fam).map(String::as_str) == Some(kind) {
            assert!(
                created.contains(&(fam.to_string(), labels.clone())),
                "{name}{{{labels}}}"
            );
        }
    }
    // The request counts show the latest request's trace with the value 1.
    let line = om
        .lines()
        .find(|l| l.starts_with("http_requests_total{") && l.contains(" # {"))
        .unwrap();
    let ex = line.split_once(" # ").unwrap().1;
    assert_eq!(ex.split(' ').nth(1), Some("1"), "{line}");
}
