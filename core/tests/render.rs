//! The `/metrics` page: golden output of the request views, token, custom and self-metric
//! families, old bucket layouts, overflow series, hostile label values, and a strict parse of
//! every page rendered.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{block, key, parse, parse_ok, region, req_key, req_kind, CheckedLock};
use gateway_metrics_core::buckets::{DEFAULT_THROUGHPUT_BUCKETS, DEFAULT_TTFT_BUCKETS};
use gateway_metrics_core::catalogue::{fam, tokens};
use gateway_metrics_core::hash::family_id;
use gateway_metrics_core::labels::{overflow_key, MAX_LABEL_VALUE_BYTES};
use gateway_metrics_core::render::{
    render, CustomFamily, CustomKind, HistSpec, NginxStats, Render, RenderSpec,
};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{
    self, DropReason, Limits, Placement, SelfCounter, SeriesKind, Store,
};

const NO_LIMIT: Limits = Limits {
    max_series: u64::MAX,
};
const BOUNDS: [f64; 2] = [0.1, 1.0];

fn kind(family: u32, layout: u8, n_values: u8) -> SeriesKind {
    SeriesKind {
        family,
        layout,
        n_values,
    }
}

/// Finds or creates a series and returns its values (asserting it got its own series).
fn values<'a>(s: &Store<'a>, kind: SeriesKind, key: &[u8], n_labels: usize) -> &'a [AtomicU64] {
    let lock = CheckedLock::default();
    let (v, why) = series(s, &lock, NO_LIMIT, kind, key, n_labels);
    assert_eq!(why, None);
    v.unwrap()
}

fn request(s: &Store, layout: u8, labels: [&str; 5], obs: &[f64]) {
    let [m, e, c, n, u] = labels;
    let v = values(
        s,
        req_kind(layout, BOUNDS.len()),
        &req_key(m, e, c, n, u),
        5,
    );
    for &x in obs {
        store::observe(v, &BOUNDS, x);
    }
}

fn spec<'a>(layout: u8, custom: &'a [(CustomFamily, u8)]) -> RenderSpec<'a> {
    RenderSpec {
        zone_name: "gm",
        max_series: 1000,
        duration: HistSpec {
            bounds: &BOUNDS,
            layout,
        },
        ttft: HistSpec {
            bounds: &DEFAULT_TTFT_BUCKETS,
            layout: 2,
        },
        throughput: HistSpec {
            bounds: &DEFAULT_THROUGHPUT_BUCKETS,
            layout: 3,
        },
        tpot: HistSpec {
            bounds: &DEFAULT_THROUGHPUT_BUCKETS,
            layout: 3,
        },
        custom,
        views: Default::default(),
        nginx: None,
        alive: None,
    }
}

fn page(s: &Store, spec: &RenderSpec) -> String {
    let mut out = Vec::new();
    render(s, spec, &mut out);
    parse_ok(&out);
    String::from_utf8(out).unwrap()
}

/// A store with the three standard layouts (duration = 1, ttft = 2, throughput = 3).
fn layouts(s: &Store) {
    let lock = CheckedLock::default();
    assert_eq!(s.register_layout(&lock, &BOUNDS).unwrap(), 1);
    assert_eq!(s.register_layout(&lock, &DEFAULT_TTFT_BUCKETS).unwrap(), 2);
    assert_eq!(
        s.register_layout(&lock, &DEFAULT_THROUGHPUT_BUCKETS)
            .unwrap(),
        3
    );
}

fn custom_families() -> Vec<(CustomFamily, u8)> {
    let fam = |name: &str, kind, labels: &[&str], bounds: &[f64]| CustomFamily {
        name: name.to_string(),
        help: format!("Custom {name}."),
        kind,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        bounds: bounds.to_vec(),
        id: family_id(name),
    };
    vec![
        (
            fam(
                "model_accuracy_percent",
                CustomKind::Gauge,
                &["task_type"],
                &[],
            ),
            0,
        ),
        (
            fam("jobs_processed_total", CustomKind::Counter, &[], &[]),
            0,
        ),
        (
            fam(
                "batch_size",
                CustomKind::Histogram,
                &["queue"],
                &[1.0, 10.0],
            ),
            4,
        ),
    ]
}

/// The golden store: five request series, models, tokens, limits, caches, custom families.
fn golden_store(s: &Store, custom: &[(CustomFamily, u8)]) {
    layouts(s);
    let lock = CheckedLock::default();
    assert_eq!(s.register_layout(&lock, &custom[2].0.bounds).unwrap(), 4);

    request(
        s,
        1,
        ["GET", "/v1/chat", "200", "ns-a", "up1"],
        &[0.0625, 0.5],
    );
    request(s, 1, ["POST", "/v1/chat", "504", "ns-a", "up1"], &[2.0]);
    request(s, 1, ["POST", "/v1/chat", "499", "ns-b", "up2"], &[0.25]);
    request(
        s,
        1,
        ["GET", "/v1/models", "404", "ns-b", "up2"],
        &[0.03125],
    );
    request(s, 1, ["GET", "/v1/chat", "500", "ns-a", "up1"], &[1.0]);

    let mr = values(
        s,
        kind(fam::MODEL_REQUEST, 1, 4),
        &key(&["gpt-4o", "ns-a", "success"]),
        3,
    );
    store::observe(mr, &BOUNDS, 0.5);
    store::observe(mr, &BOUNDS, 0.5);

    let tk = kind(fam::MODEL_TOKENS, 0, tokens::N_VALUES);
    let t = values(s, tk, &key(&["gpt-4o", "ns-a"]), 2);
    store::add_u64(&t[tokens::INPUT], 100);
    store::add_u64(&t[tokens::OUTPUT], 40);
    store::add_u64(&t[tokens::CACHED_INPUT], 30);
    store::add_f64(&t[tokens::COST], 0.125);
    let t = values(s, tk, &key(&["claude", "ns-b"]), 2);
    store::add_u64(&t[tokens::INPUT], 10);
    store::add_u64(&t[tokens::OUTPUT], 5);
    store::add_u64(&t[tokens::REASONING], 3);
    let t = values(s, tk, &key(&["gpt-4o", "ns-b"]), 2);
    store::add_u64(&t[tokens::INPUT], 1);
    store::add_u64(&t[tokens::OUTPUT], 1);

    let ttft = values(s, kind(fam::TTFT, 2, 14), &key(&["gpt-4o", "ns-a"]), 2);
    store::observe(ttft, &DEFAULT_TTFT_BUCKETS, 0.3);
    let tp = values(
        s,
        kind(fam::THROUGHPUT, 3, 12),
        &key(&["gpt-4o", "ns-a"]),
        2,
    );
    store::observe(tp, &DEFAULT_THROUGHPUT_BUCKETS, 42.0);

    let a = values(s, kind(fam::ACTIVE, 0, 1), &key(&["ns-a"]), 1);
    store::add_u64(&a[0], 3);
    let a = values(s, kind(fam::ACTIVE, 0, 1), &key(&["ns-b"]), 1);
    a[0].fetch_sub(1, Ordering::Relaxed); // a decrement seen before its increment: -1

    let rl = values(s, kind(fam::RATE_LIMIT, 0, 2), &key(&["ns-a", "req"]), 2);
    store::add_u64(&rl[0], 5);
    store::add_u64(&rl[1], 2);
    let c = values(s, kind(fam::CACHE, 0, 2), &key(&["redis"]), 1);
    store::add_u64(&c[0], 7);
    store::add_u64(&c[1], 3);
    let u = values(s, kind(fam::UNPRICED, 0, 1), &key(&["mystery"]), 1);
    store::add_u64(&u[0], 4);

    let (f, _) = &custom[0];
    let g = values(s, kind(f.id, 0, f.n_values()), &key(&["qa"]), 1);
    store::set_f64(&g[0], 97.5);
    let (f, _) = &custom[1];
    let g = values(s, kind(f.id, 0, f.n_values()), b"", 0);
    store::add_f64(&g[0], 3.0);
    let (f, l) = &custom[2];
    let h = values(s, kind(f.id, *l, f.n_values()), &key(&["q1"]), 1);
    store::observe(h, &f.bounds, 5.0);
    store::observe(h, &f.bounds, 50.0);

    s.count_drop(DropReason::MaxSeries, 2);
    s.count_drop(DropReason::LayoutTableFull, 1);
    s.bump_self(SelfCounter::InvalidCalls, 6);
}

const FAMILIES: [(&str, &str); 40] = [
    ("http_requests_total", "counter"),
    ("http_request_duration_seconds", "histogram"),
    ("gateway_requests_total", "counter"),
    ("gateway_request_duration_seconds", "histogram"),
    ("namespace_requests_total", "counter"),
    ("upstream_requests_total", "counter"),
    ("errors_total", "counter"),
    ("active_connections", "gauge"),
    ("model_requests_total", "counter"),
    ("model_request_duration_seconds", "histogram"),
    ("model_tokens_input_total", "counter"),
    ("model_tokens_output_total", "counter"),
    ("namespace_tokens_total", "counter"),
    ("model_cost_usd_total", "counter"),
    ("model_time_to_first_token_seconds", "histogram"),
    ("model_throughput_tokens_per_second", "histogram"),
    ("model_time_per_output_token_seconds", "histogram"),
    ("model_usage_missing_total", "counter"),
    ("rate_limit_hits_total", "counter"),
    ("rate_limit_violations_total", "counter"),
    ("cache_hits_total", "counter"),
    ("cache_misses_total", "counter"),
    ("model_accuracy_percent", "gauge"),
    ("jobs_processed_total", "counter"),
    ("batch_size", "histogram"),
    ("gateway_metrics_zone_size_bytes", "gauge"),
    ("gateway_metrics_zone_used_bytes", "gauge"),
    ("gateway_metrics_zone_free_bytes", "gauge"),
    ("gateway_metrics_series", "gauge"),
    ("gateway_metrics_overflow_series", "gauge"),
    ("gateway_metrics_max_series", "gauge"),
    ("gateway_metrics_start_time_seconds", "gauge"),
    ("gateway_metrics_dropped_updates_total", "counter"),
    ("gateway_metrics_invalid_calls_total", "counter"),
    ("gateway_metrics_zone_resets_total", "counter"),
    ("gateway_metrics_unpriced_model_requests_total", "counter"),
    ("nginx_connections_active", "gauge"),
    ("nginx_connections_reading", "gauge"),
    ("nginx_connections_writing", "gauge"),
    ("nginx_connections_waiting", "gauge"),
];

#[test]
fn golden_request_views() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let custom = custom_families();
    golden_store(&s, &custom);
    let p = page(&s, &spec(1, &custom));

    assert_eq!(
        block(&p, "http_requests_total"),
        r#"# HELP http_requests_total HTTP requests handled by the gateway.
# TYPE http_requests_total counter
http_requests_total{method="GET",endpoint="/v1/chat",status_code="200",namespace="ns-a",upstream="up1"} 2
http_requests_total{method="POST",endpoint="/v1/chat",status_code="504",namespace="ns-a",upstream="up1"} 1
http_requests_total{method="POST",endpoint="/v1/chat",status_code="499",namespace="ns-b",upstream="up2"} 1
http_requests_total{method="GET",endpoint="/v1/models",status_code="404",namespace="ns-b",upstream="up2"} 1
http_requests_total{method="GET",endpoint="/v1/chat",status_code="500",namespace="ns-a",upstream="up1"} 1
"#
    );
    assert_eq!(
        block(&p, "http_request_duration_seconds"),
        r#"# HELP http_request_duration_seconds HTTP request duration in seconds, from the first request byte to the last response byte.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="0.1"} 1
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="1"} 3
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="+Inf"} 3
http_request_duration_seconds_sum{method="GET",endpoint="/v1/chat",namespace="ns-a",upstream="up1"} 1.5625
http_request_duration_seconds_count{method="GET",endpoint="/v1/chat",namespace="ns-a",upstream="up1"} 3
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="0.1"} 0
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="1"} 0
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-a",upstream="up1",le="+Inf"} 1
http_request_duration_seconds_sum{method="POST",endpoint="/v1/chat",namespace="ns-a",upstream="up1"} 2
http_request_duration_seconds_count{method="POST",endpoint="/v1/chat",namespace="ns-a",upstream="up1"} 1
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-b",upstream="up2",le="0.1"} 0
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-b",upstream="up2",le="1"} 1
http_request_duration_seconds_bucket{method="POST",endpoint="/v1/chat",namespace="ns-b",upstream="up2",le="+Inf"} 1
http_request_duration_seconds_sum{method="POST",endpoint="/v1/chat",namespace="ns-b",upstream="up2"} 0.25
http_request_duration_seconds_count{method="POST",endpoint="/v1/chat",namespace="ns-b",upstream="up2"} 1
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/models",namespace="ns-b",upstream="up2",le="0.1"} 1
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/models",namespace="ns-b",upstream="up2",le="1"} 1
http_request_duration_seconds_bucket{method="GET",endpoint="/v1/models",namespace="ns-b",upstream="up2",le="+Inf"} 1
http_request_duration_seconds_sum{method="GET",endpoint="/v1/models",namespace="ns-b",upstream="up2"} 0.03125
http_request_duration_seconds_count{method="GET",endpoint="/v1/models",namespace="ns-b",upstream="up2"} 1
"#
    );
    assert_eq!(
        block(&p, "gateway_requests_total"),
        r#"# HELP gateway_requests_total Gateway requests by method, path and namespace.
# TYPE gateway_requests_total counter
gateway_requests_total{method="GET",path="/v1/chat",namespace="ns-a"} 3
gateway_requests_total{method="POST",path="/v1/chat",namespace="ns-a"} 1
gateway_requests_total{method="POST",path="/v1/chat",namespace="ns-b"} 1
gateway_requests_total{method="GET",path="/v1/models",namespace="ns-b"} 1
"#
    );
    assert_eq!(
        block(&p, "namespace_requests_total"),
        r#"# HELP namespace_requests_total Requests per namespace; status is error for an HTTP status of 400 or more or a response cut short.
# TYPE namespace_requests_total counter
namespace_requests_total{namespace="ns-a",status="success"} 2
namespace_requests_total{namespace="ns-a",status="error"} 2
namespace_requests_total{namespace="ns-b",status="error"} 2
"#
    );
    assert_eq!(
        block(&p, "upstream_requests_total"),
        r#"# HELP upstream_requests_total Responses that came from an upstream; status is error for an HTTP status of 400 or more or a response cut short.
# TYPE upstream_requests_total counter
upstream_requests_total{upstream="up1",status="success"} 2
upstream_requests_total{upstream="up1",status="error"} 2
upstream_requests_total{upstream="up2",status="error"} 2
"#
    );
    assert_eq!(
        block(&p, "errors_total"),
        r#"# HELP errors_total Requests that ended in an HTTP error or whose response was cut short, by error type.
# TYPE errors_total counter
errors_total{error_type="upstream_timeout",namespace="ns-a",upstream="up1"} 1
errors_total{error_type="client_closed",namespace="ns-b",upstream="up2"} 1
errors_total{error_type="client_error",namespace="ns-b",upstream="up2"} 1
errors_total{error_type="server_error",namespace="ns-a",upstream="up1"} 1
"#
    );
    assert_eq!(
        block(&p, "gateway_request_duration_seconds"),
        r#"# HELP gateway_request_duration_seconds Gateway request duration in seconds by method, path and namespace.
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{method="GET",path="/v1/chat",namespace="ns-a",le="0.1"} 1
gateway_request_duration_seconds_bucket{method="GET",path="/v1/chat",namespace="ns-a",le="1"} 3
gateway_request_duration_seconds_bucket{method="GET",path="/v1/chat",namespace="ns-a",le="+Inf"} 3
gateway_request_duration_seconds_sum{method="GET",path="/v1/chat",namespace="ns-a"} 1.5625
gateway_request_duration_seconds_count{method="GET",path="/v1/chat",namespace="ns-a"} 3
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-a",le="0.1"} 0
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-a",le="1"} 0
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-a",le="+Inf"} 1
gateway_request_duration_seconds_sum{method="POST",path="/v1/chat",namespace="ns-a"} 2
gateway_request_duration_seconds_count{method="POST",path="/v1/chat",namespace="ns-a"} 1
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-b",le="0.1"} 0
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-b",le="1"} 1
gateway_request_duration_seconds_bucket{method="POST",path="/v1/chat",namespace="ns-b",le="+Inf"} 1
gateway_request_duration_seconds_sum{method="POST",path="/v1/chat",namespace="ns-b"} 0.25
gateway_request_duration_seconds_count{method="POST",path="/v1/chat",namespace="ns-b"} 1
gateway_request_duration_seconds_bucket{method="GET",path="/v1/models",namespace="ns-b",le="0.1"} 1
gateway_request_duration_seconds_bucket{method="GET",path="/v1/models",namespace="ns-b",le="1"} 1
gateway_request_duration_seconds_bucket{method="GET",path="/v1/models",namespace="ns-b",le="+Inf"} 1
gateway_request_duration_seconds_sum{method="GET",path="/v1/models",namespace="ns-b"} 0.03125
gateway_request_duration_seconds_count{method="GET",path="/v1/models",namespace="ns-b"} 1
"#
    );
}

#[test]
fn golden_models_tokens_limits_custom_and_self_metrics() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let custom = custom_families();
    golden_store(&s, &custom);
    let mut sp = spec(1, &custom);
    sp.nginx = Some(NginxStats {
        active: 5,
        reading: 1,
        writing: 2,
        waiting: 2,
        accepted: 100,
        handled: 99,
        requests: 250,
    });
    let p = page(&s, &sp);

    assert_eq!(
        block(&p, "active_connections"),
        r#"# HELP active_connections Requests in flight per namespace (past the access phases, not yet finalized).
# TYPE active_connections gauge
active_connections{namespace="ns-a"} 3
active_connections{namespace="ns-b"} 0
"#
    );
    assert_eq!(
        block(&p, "model_requests_total"),
        r#"# HELP model_requests_total Requests per model; status is success (HTTP status below 400) or error.
# TYPE model_requests_total counter
model_requests_total{model="gpt-4o",namespace="ns-a",status="success"} 2
"#
    );
    assert_eq!(
        block(&p, "model_tokens_input_total"),
        r#"# HELP model_tokens_input_total Input (prompt) tokens as reported by the provider, cached input included.
# TYPE model_tokens_input_total counter
model_tokens_input_total{model="gpt-4o",namespace="ns-a"} 100
model_tokens_input_total{model="claude",namespace="ns-b"} 10
model_tokens_input_total{model="gpt-4o",namespace="ns-b"} 1
"#
    );
    assert_eq!(
        block(&p, "model_tokens_output_total"),
        r#"# HELP model_tokens_output_total Output (completion) tokens as reported by the provider, reasoning included.
# TYPE model_tokens_output_total counter
model_tokens_output_total{model="gpt-4o",namespace="ns-a"} 40
model_tokens_output_total{model="claude",namespace="ns-b"} 5
model_tokens_output_total{model="gpt-4o",namespace="ns-b"} 1
"#
    );
    assert_eq!(
        block(&p, "namespace_tokens_total"),
        r#"# HELP namespace_tokens_total Tokens per namespace by type: input and output are the provider's totals; cached_input, cache_write and reasoning are the parts of them the provider reported separately.
# TYPE namespace_tokens_total counter
namespace_tokens_total{namespace="ns-a",token_type="input"} 100
namespace_tokens_total{namespace="ns-a",token_type="output"} 40
namespace_tokens_total{namespace="ns-a",token_type="cached_input"} 30
namespace_tokens_total{namespace="ns-b",token_type="input"} 11
namespace_tokens_total{namespace="ns-b",token_type="output"} 6
namespace_tokens_total{namespace="ns-b",token_type="reasoning"} 3
"#
    );
    assert_eq!(
        block(&p, "model_cost_usd_total"),
        r#"# HELP model_cost_usd_total Cost in USD from the configured price table (gateway_metrics_model_price).
# TYPE model_cost_usd_total counter
model_cost_usd_total{model="gpt-4o",namespace="ns-a"} 0.125
model_cost_usd_total{model="claude",namespace="ns-b"} 0
model_cost_usd_total{model="gpt-4o",namespace="ns-b"} 0
"#
    );
    let e = parse_ok(p.as_bytes());
    let mt = [("model", "gpt-4o"), ("namespace", "ns-a")];
    assert_eq!(
        e.get("model_time_to_first_token_seconds_count", &mt),
        Some(1.0)
    );
    assert_eq!(
        e.get("model_time_to_first_token_seconds_sum", &mt),
        Some(0.3)
    );
    let le = |v| [("model", "gpt-4o"), ("namespace", "ns-a"), ("le", v)];
    assert_eq!(
        e.get("model_time_to_first_token_seconds_bucket", &le("0.2")),
        Some(0.0)
    );
    assert_eq!(
        e.get("model_time_to_first_token_seconds_bucket", &le("0.3")),
        Some(1.0)
    );
    assert_eq!(
        e.get("model_throughput_tokens_per_second_bucket", &le("30")),
        Some(0.0)
    );
    assert_eq!(
        e.get("model_throughput_tokens_per_second_bucket", &le("50")),
        Some(1.0)
    );
    assert_eq!(
        e.get("model_throughput_tokens_per_second_sum", &mt),
        Some(42.0)
    );
    assert_eq!(
        e.get(
            "model_request_duration_seconds_count",
            &[("model", "gpt-4o"), ("namespace", "ns-a")]
        ),
        Some(2.0)
    );

    assert_eq!(
        block(&p, "rate_limit_hits_total"),
        "# HELP rate_limit_hits_total Requests that hit a rate limit (delayed, throttled or rejected).\n\
         # TYPE rate_limit_hits_total counter\n\
         rate_limit_hits_total{namespace=\"ns-a\",rule_type=\"req\"} 5\n"
    );
    assert_eq!(
        e.get(
            "rate_limit_violations_total",
            &[("namespace", "ns-a"), ("rule_type", "req")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.get("cache_hits_total", &[("cache_type", "redis")]),
        Some(7.0)
    );
    assert_eq!(
        e.get("cache_misses_total", &[("cache_type", "redis")]),
        Some(3.0)
    );

    // Custom families.
    assert_eq!(
        block(&p, "model_accuracy_percent"),
        "# HELP model_accuracy_percent Custom model_accuracy_percent.\n\
         # TYPE model_accuracy_percent gauge\n\
         model_accuracy_percent{task_type=\"qa\"} 97.5\n"
    );
    assert_eq!(
        block(&p, "jobs_processed_total"),
        "# HELP jobs_processed_total Custom jobs_processed_total.\n\
         # TYPE jobs_processed_total counter\n\
         jobs_processed_total 3\n"
    );
    assert_eq!(
        block(&p, "batch_size"),
        "# HELP batch_size Custom batch_size.\n\
         # TYPE batch_size histogram\n\
         batch_size_bucket{queue=\"q1\",le=\"1\"} 0\n\
         batch_size_bucket{queue=\"q1\",le=\"10\"} 1\n\
         batch_size_bucket{queue=\"q1\",le=\"+Inf\"} 2\n\
         batch_size_sum{queue=\"q1\"} 55\n\
         batch_size_count{queue=\"q1\"} 2\n"
    );

    // Self-metrics.
    assert_eq!(
        block(&p, "gateway_metrics_dropped_updates_total"),
        r#"# HELP gateway_metrics_dropped_updates_total Updates that did not reach their own series (redirected to the overflow series, or lost), by reason.
# TYPE gateway_metrics_dropped_updates_total counter
gateway_metrics_dropped_updates_total{zone="gm",reason="zone_full"} 0
gateway_metrics_dropped_updates_total{zone="gm",reason="max_series"} 2
gateway_metrics_dropped_updates_total{zone="gm",reason="lost"} 0
gateway_metrics_dropped_updates_total{zone="gm",reason="layout_table_full"} 1
gateway_metrics_dropped_updates_total{zone="gm",reason="worker_lanes_full"} 0
gateway_metrics_dropped_updates_total{zone="gm",reason="exemplar_zone_full"} 0
"#
    );
    let z = [("zone", "gm")];
    let u = s.usage();
    assert_eq!(
        e.get("gateway_metrics_zone_size_bytes", &z),
        Some((256 << 10) as f64)
    );
    assert_eq!(
        e.get("gateway_metrics_zone_used_bytes", &z),
        Some(u.used_bytes as f64)
    );
    assert_eq!(
        e.get("gateway_metrics_zone_free_bytes", &z),
        Some(u.free_bytes as f64)
    );
    assert_eq!(e.get("gateway_metrics_series", &z), Some(u.series as f64));
    assert_eq!(e.get("gateway_metrics_overflow_series", &z), Some(0.0));
    assert_eq!(e.get("gateway_metrics_max_series", &z), Some(1000.0));
    assert_eq!(e.get("gateway_metrics_start_time_seconds", &z), Some(1.7e9));
    assert_eq!(e.get("gateway_metrics_invalid_calls_total", &z), Some(6.0));
    assert_eq!(e.get("gateway_metrics_zone_resets_total", &z), Some(0.0));
    assert_eq!(
        e.get(
            "gateway_metrics_unpriced_model_requests_total",
            &[("model", "mystery")]
        ),
        Some(4.0)
    );
    assert!(p.contains("\ngateway_metrics_start_time_seconds{zone=\"gm\"} 1700000000\n"));
    assert_eq!(u.series, 19);

    // nginx counters, unlabelled.
    assert!(p.ends_with(
        "# HELP nginx_connections_accepted_total Client connections accepted.\n\
         # TYPE nginx_connections_accepted_total counter\n\
         nginx_connections_accepted_total 100\n\
         # HELP nginx_connections_handled_total Client connections handled.\n\
         # TYPE nginx_connections_handled_total counter\n\
         nginx_connections_handled_total 99\n\
         # HELP nginx_http_requests_total Client requests.\n\
         # TYPE nginx_http_requests_total counter\n\
         nginx_http_requests_total 250\n"
    ));
    assert_eq!(e.get("nginx_connections_active", &[]), Some(5.0));
    assert_eq!(e.get("nginx_connections_waiting", &[]), Some(2.0));

    // Every family exactly once, in this order, with its type (the parser already checked that
    // each has one HELP and one TYPE and that its samples are contiguous).
    let mut want: Vec<(&str, &str)> = FAMILIES.to_vec();
    want.extend([
        ("nginx_connections_accepted_total", "counter"),
        ("nginx_connections_handled_total", "counter"),
        ("nginx_http_requests_total", "counter"),
    ]);
    let got: Vec<(&str, &str)> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.typ.as_str()))
        .collect();
    assert_eq!(got, want);
    assert!(e.families.iter().all(|f| !f.help.is_empty()));
}

#[test]
fn an_empty_store_renders_every_family() {
    let r = region(64 << 10);
    let s = Store::format(&r, 5).unwrap();
    layouts(&s);
    let custom = custom_families();
    let p = page(&s, &spec(1, &custom));
    let e = parse_ok(p.as_bytes());
    let got: Vec<&str> = e.families.iter().map(|f| f.name.as_str()).collect();
    let want: Vec<&str> = FAMILIES[..36].iter().map(|f| f.0).collect();
    assert_eq!(got, want);
    for f in &e.families {
        let self_metric = f.name.starts_with("gateway_metrics_")
            && f.name != "gateway_metrics_unpriced_model_requests_total";
        assert_eq!(!f.samples.is_empty(), self_metric, "{}", f.name);
    }
    // Without custom families and with nothing registered at all.
    let r = region(64 << 10);
    let s = Store::format(&r, 5).unwrap();
    let p = page(&s, &spec(1, &[]));
    assert_eq!(parse_ok(p.as_bytes()).families.len(), 33);
}

#[test]
fn old_layout_series_are_shown_in_the_current_buckets() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    // Before the reload: two bounds of other values, and a shorter layout.
    let old_same_len = [0.2, 2.0];
    let old_short = [0.5];
    assert_eq!(s.register_layout(&lock, &old_same_len).unwrap(), 1);
    assert_eq!(s.register_layout(&lock, &old_short).unwrap(), 2);
    assert_eq!(s.register_layout(&lock, &BOUNDS).unwrap(), 3);
    let k = req_key("GET", "/v1/chat", "200", "ns", "up");
    let k_old = req_key("GET", "/v1/old", "503", "ns", "up");

    let v1 = values(&s, req_kind(1, 2), &k, 5);
    store::observe(v1, &old_same_len, 0.1);
    store::observe(v1, &old_same_len, 0.1);
    let v2 = values(&s, req_kind(2, 1), &k, 5);
    store::observe(v2, &old_short, 3.0);
    let v3 = values(&s, req_kind(3, 2), &k, 5);
    store::observe(v3, &BOUNDS, 0.5);
    let vo = values(&s, req_kind(1, 2), &k_old, 5);
    store::observe(vo, &old_same_len, 1.0);
    assert_eq!(s.usage().series, 4);

    let p = page(&s, &spec(3, &[]));
    let e = parse_ok(p.as_bytes());
    let full = |ep, code| {
        [
            ("method", "GET"),
            ("endpoint", ep),
            ("status_code", code),
            ("namespace", "ns"),
            ("upstream", "up"),
        ]
    };
    // Counter views: every layout.
    assert_eq!(
        e.get("http_requests_total", &full("/v1/chat", "200")),
        Some(4.0)
    );
    assert_eq!(
        e.get("http_requests_total", &full("/v1/old", "503")),
        Some(1.0)
    );
    assert_eq!(e.samples("http_requests_total").count(), 2);
    assert_eq!(
        e.get(
            "gateway_requests_total",
            &[("method", "GET"), ("path", "/v1/chat"), ("namespace", "ns")]
        ),
        Some(4.0)
    );
    assert_eq!(
        e.get(
            "namespace_requests_total",
            &[("namespace", "ns"), ("status", "success")]
        ),
        Some(4.0)
    );
    assert_eq!(
        e.get(
            "errors_total",
            &[
                ("error_type", "service_unavailable"),
                ("namespace", "ns"),
                ("upstream", "up")
            ]
        ),
        Some(1.0)
    );
    // Histogram views: every layout, each old bucket in the smallest current bucket that
    // surely holds its observations (0.2 -> le 1, 0.5 -> le 1, 2.0 and +Inf -> +Inf).
    let h = [
        ("method", "GET"),
        ("endpoint", "/v1/chat"),
        ("namespace", "ns"),
        ("upstream", "up"),
    ];
    let bucket = |e: &common::Exposition, le: &str| {
        let mut l = h.to_vec();
        l.push(("le", le));
        e.get("http_request_duration_seconds_bucket", &l)
    };
    assert_eq!(e.get("http_request_duration_seconds_count", &h), Some(4.0));
    let sum = e.get("http_request_duration_seconds_sum", &h).unwrap();
    assert!((sum - 3.7).abs() < 1e-9, "{sum}");
    assert_eq!(bucket(&e, "0.1"), Some(0.0));
    assert_eq!(bucket(&e, "1"), Some(3.0));
    assert_eq!(bucket(&e, "+Inf"), Some(4.0));
    assert_eq!(e.samples("http_request_duration_seconds_count").count(), 2);
    let old = [
        ("method", "GET"),
        ("endpoint", "/v1/old"),
        ("namespace", "ns"),
        ("upstream", "up"),
    ];
    assert_eq!(
        e.get("http_request_duration_seconds_count", &old),
        Some(1.0)
    );
    let le: Vec<&str> = e
        .samples("http_request_duration_seconds_bucket")
        .filter(|s| s.label("endpoint") == Some("/v1/chat"))
        .map(|s| s.label("le").unwrap())
        .collect();
    assert_eq!(le, ["0.1", "1", "+Inf"]);

    // Rolled back to the first layout: the same totals, in its buckets.
    let sp = RenderSpec {
        duration: HistSpec {
            bounds: &old_same_len,
            layout: 1,
        },
        ..spec(1, &[])
    };
    let p = page(&s, &sp);
    let e = parse_ok(p.as_bytes());
    assert_eq!(e.get("http_request_duration_seconds_count", &h), Some(4.0));
    assert_eq!(bucket(&e, "0.2"), Some(2.0));
    assert_eq!(bucket(&e, "2"), Some(3.0));
    assert_eq!(bucket(&e, "+Inf"), Some(4.0));
}

#[test]
fn bucket_changes_back_and_forth_keep_every_count_monotone() {
    // Reloads alternate between layouts while requests are recorded: at every step, rendered
    // with the layout then current, `_count` equals the requests so far and no cumulative bucket
    // of a layout goes down between two renders with that layout.
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    let lock = CheckedLock::default();
    let layouts: [&[f64]; 3] = [&[0.1, 0.3, 0.5], &[0.001, 0.002, 0.003], &[0.25, 1.0]];
    let ids: Vec<u8> = layouts
        .iter()
        .map(|b| s.register_layout(&lock, b).unwrap())
        .collect();
    let k = req_key("GET", "/", "200", "ns", "up");
    let mut last: Vec<Option<Vec<f64>>> = vec![None; 3];
    let mut n = 0.0;
    for step in 0..12 {
        let l = [0, 1, 0, 2, 1, 0][step % 6];
        let bounds = layouts[l];
        let v = values(&s, req_kind(ids[l], bounds.len()), &k, 5);
        for i in 0..5 {
            store::observe(v, bounds, 0.2 + 0.1 * i as f64);
            n += 1.0;
        }
        let sp = RenderSpec {
            duration: HistSpec {
                bounds,
                layout: ids[l],
            },
            ..spec(ids[l], &[])
        };
        let e = parse_ok(page(&s, &sp).as_bytes());
        let h = [
            ("method", "GET"),
            ("endpoint", "/"),
            ("namespace", "ns"),
            ("upstream", "up"),
        ];
        assert_eq!(e.get("http_request_duration_seconds_count", &h), Some(n));
        let buckets: Vec<f64> = e
            .samples("http_request_duration_seconds_bucket")
            .map(|s| s.value)
            .collect();
        assert_eq!(buckets.len(), bounds.len() + 1);
        if let Some(prev) = &last[l] {
            for (a, b) in prev.iter().zip(&buckets) {
                assert!(
                    b >= a,
                    "step {step}: bucket went down {prev:?} -> {buckets:?}"
                );
            }
        }
        last[l] = Some(buckets);
    }
}

#[test]
fn cut_responses_are_errors_and_gateway_responses_are_not_upstream_ones() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    layouts(&s);
    let rec = |labels: [&str; 6]| {
        let v = values(&s, req_kind(1, BOUNDS.len()), &key(&labels), 6);
        store::observe(v, &BOUNDS, 0.5);
    };
    rec(["POST", "/v1/chat", "200", "a", "llm", ""]);
    rec(["POST", "/v1/chat", "200", "a", "llm", "client_closed"]);
    rec(["POST", "/v1/chat", "200", "a", "llm", "upstream_timeout"]);
    rec(["POST", "/v1/chat", "429", "a", "", ""]);
    rec(["POST", "/v1/chat", "499", "a", "", ""]);
    let e = parse_ok(page(&s, &spec(1, &[])).as_bytes());
    // nginx's status stays the status_code label.
    let full = [
        ("method", "POST"),
        ("endpoint", "/v1/chat"),
        ("status_code", "200"),
        ("namespace", "a"),
        ("upstream", "llm"),
    ];
    assert_eq!(e.get("http_requests_total", &full), Some(3.0));
    let ns = |st| {
        e.get(
            "namespace_requests_total",
            &[("namespace", "a"), ("status", st)],
        )
    };
    assert_eq!((ns("success"), ns("error")), (Some(1.0), Some(4.0)));
    let up = |st| {
        e.get(
            "upstream_requests_total",
            &[("upstream", "llm"), ("status", st)],
        )
    };
    assert_eq!((up("success"), up("error")), (Some(1.0), Some(2.0)));
    // The gateway's own responses are not the upstream's.
    assert_eq!(e.samples("upstream_requests_total").count(), 2);
    let err = |t, u| {
        e.get(
            "errors_total",
            &[("error_type", t), ("namespace", "a"), ("upstream", u)],
        )
    };
    assert_eq!(err("client_closed", "llm"), Some(1.0));
    assert_eq!(err("upstream_timeout", "llm"), Some(1.0));
    assert_eq!(err("rate_limited", ""), Some(1.0));
    assert_eq!(err("client_closed", ""), Some(1.0));
    assert_eq!(e.samples("errors_total").count(), 4);
}

#[test]
fn status_codes_map_to_classes_and_error_types() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    layouts(&s);
    let cases = [
        ("101", "success", None),
        ("204", "success", None),
        ("304", "success", None),
        ("400", "error", Some("client_error")),
        ("408", "error", Some("client_timeout")),
        ("413", "error", Some("request_too_large")),
        ("429", "error", Some("rate_limited")),
        ("499", "error", Some("client_closed")),
        ("500", "error", Some("server_error")),
        ("502", "error", Some("upstream_error")),
        ("503", "error", Some("service_unavailable")),
        ("504", "error", Some("upstream_timeout")),
        ("0", "error", Some("unknown")),
        ("", "error", Some("unknown")),
        ("abc", "error", Some("unknown")),
        ("99999", "error", Some("unknown")),
        ("600", "error", Some("unknown")),
    ];
    for (i, (code, class, et)) in cases.iter().enumerate() {
        let sp = spec(1, &[]);
        let before = parse_ok(page(&s, &sp).as_bytes());
        request(&s, 1, ["GET", "/", code, &format!("ns{i}"), "up"], &[0.5]);
        let after = parse_ok(page(&s, &sp).as_bytes());
        let ns = format!("ns{i}");
        assert_eq!(
            after.get(
                "namespace_requests_total",
                &[("namespace", &ns), ("status", class)]
            ),
            Some(1.0),
            "status {code:?}"
        );
        let new_errors =
            after.samples("errors_total").count() - before.samples("errors_total").count();
        match et {
            Some(t) => {
                assert_eq!(new_errors, 1, "status {code:?}");
                assert_eq!(
                    after.get(
                        "errors_total",
                        &[("error_type", t), ("namespace", &ns), ("upstream", "up")]
                    ),
                    Some(1.0),
                    "status {code:?}"
                );
            }
            None => assert_eq!(new_errors, 0, "status {code:?}"),
        }
    }
}

#[test]
fn hostile_label_values_are_sanitised_and_escaped() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    layouts(&s);
    let mb_ascii = vec![b'x'; 1 << 20];
    let mb_multibyte = "é".repeat(1 << 19).into_bytes(); // 1 MiB of 2-byte characters
    let mut odd_cut = b"a".to_vec();
    odd_cut.extend_from_slice(&mb_multibyte); // the 256-byte boundary falls inside a character
    let injection = b"x\"} 1\nfake_metric{a=\"b\"} 2\n# HELP fake_metric injected".to_vec();
    let hostile: Vec<(Vec<u8>, String)> = vec![
        (b"a\"b\\c\nd".to_vec(), "a\"b\\c\nd".to_string()),
        (b"\\\\\"\"\n\n".to_vec(), "\\\\\"\"\n\n".to_string()),
        (b"\xff\xfe".to_vec(), "\u{FFFD}\u{FFFD}".to_string()),
        (b"a\0b".to_vec(), "a\u{FFFD}b".to_string()),
        (b"ns\xffevil".to_vec(), "ns\u{FFFD}evil".to_string()),
        (
            b"\xc3\x28\xa0\xa1".to_vec(),
            String::from_utf8_lossy(b"\xc3\x28\xa0\xa1").into_owned(),
        ),
        (mb_ascii.clone(), "x".repeat(MAX_LABEL_VALUE_BYTES)),
        (mb_multibyte, "é".repeat(MAX_LABEL_VALUE_BYTES / 2)),
        (
            odd_cut,
            format!("a{}", "é".repeat(MAX_LABEL_VALUE_BYTES / 2 - 1)),
        ),
        (injection.clone(), String::from_utf8(injection).unwrap()),
        (b"\r\t{}=,".to_vec(), "\r\t{}=,".to_string()),
        ("命名空间".as_bytes().to_vec(), "命名空间".to_string()),
        (Vec::new(), String::new()),
    ];
    let custom = vec![(
        CustomFamily {
            name: "hostile_gauge".into(),
            help: "Help with \\ backslash and\nnewline \"quoted\".".into(),
            kind: CustomKind::Gauge,
            labels: vec!["v".into()],
            bounds: vec![],
            id: family_id("hostile_gauge"),
        },
        0,
    )];
    for (i, (raw, _)) in hostile.iter().enumerate() {
        let mut kb = gateway_metrics_core::labels::KeyBuilder::new();
        kb.push(b"GET")
            .push(raw)
            .push(b"200")
            .push(raw)
            .push(format!("up{i}").as_bytes());
        assert_eq!(kb.len(), 5);
        let v = values(&s, req_kind(1, 2), kb.as_bytes(), 5);
        store::observe(v, &BOUNDS, 0.5);
        let mut kb = gateway_metrics_core::labels::KeyBuilder::new();
        kb.push(raw);
        let g = values(&s, kind(custom[0].0.id, 0, 1), kb.as_bytes(), 1);
        store::set_f64(&g[0], i as f64);
    }
    let mut sp = spec(1, &custom);
    sp.zone_name = "zone \"q\" \\ z";
    let mut out = Vec::new();
    render(&s, &sp, &mut out);
    let e = parse_ok(&out);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("\nfake_metric"));
    assert_eq!(
        e.families
            .iter()
            .filter(|f| f.name == "fake_metric")
            .count(),
        0
    );

    for (i, (_, want)) in hostile.iter().enumerate() {
        let up = format!("up{i}");
        let found: Vec<_> = e
            .samples("http_requests_total")
            .filter(|s| s.label("upstream") == Some(up.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "value {i}");
        let smp = found[0];
        assert_eq!(smp.labels.len(), 5);
        assert_eq!(smp.label("endpoint"), Some(want.as_str()), "value {i}");
        assert_eq!(smp.label("namespace"), Some(want.as_str()), "value {i}");
        assert_eq!(smp.label("status_code"), Some("200"));
        assert!(smp.label("endpoint").unwrap().len() <= MAX_LABEL_VALUE_BYTES);
        assert_eq!(smp.value, 1.0);
        assert_eq!(
            e.get("hostile_gauge", &[("v", want)]),
            Some(i as f64),
            "value {i}"
        );
    }
    assert_eq!(
        e.family("hostile_gauge").unwrap().help,
        "Help with \\ backslash and\nnewline \"quoted\"."
    );
    assert_eq!(
        e.get("gateway_metrics_series", &[("zone", "zone \"q\" \\ z")]),
        Some(s.usage().series as f64)
    );
    // No line is longer than the labels allow.
    let longest = text.lines().map(str::len).max().unwrap();
    assert!(longest < 8 * 1024, "a line of {longest} bytes");
}

#[test]
fn keys_with_more_or_fewer_values_than_labels() {
    // Keys are built by the module; if one has the wrong number of values the page must still
    // be valid (missing values render empty, extra values are ignored).
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    layouts(&s);
    let short = key(&["GET", "/short"]);
    let long = key(&["GET", "/long", "200", "ns", "up", "extra", "more"]);
    let none: Vec<u8> = Vec::new();
    let many = key(&["v"; 40]);
    for k in [&short, &long, &none, &many] {
        store::observe(values(&s, req_kind(1, 2), k, 5), &BOUNDS, 0.5);
        store::add_u64(&values(&s, kind(fam::ACTIVE, 0, 1), k, 1)[0], 1);
        store::add_u64(&values(&s, kind(fam::MODEL_TOKENS, 0, 5), k, 2)[0], 1);
        store::add_u64(&values(&s, kind(fam::CACHE, 0, 2), k, 1)[0], 1);
        // Wrong value counts for the family.
        let _ = values(&s, kind(fam::REQUEST, 1, 1), k, 5);
        let _ = values(&s, kind(fam::MODEL_TOKENS, 0, 1), k, 2);
        let _ = values(&s, kind(fam::TTFT, 2, 0), k, 2);
    }
    let p = page(&s, &spec(1, &[]));
    let e = parse_ok(p.as_bytes());
    let total: f64 = e.samples("http_requests_total").map(|s| s.value).sum();
    assert_eq!(total, 4.0);
}

#[test]
fn every_rendered_page_parses() {
    // A larger random store: many families, keys and layouts; the page must always parse.
    let r = region(2 << 20);
    let s = Store::format(&r, 1).unwrap();
    layouts(&s);
    let custom = custom_families();
    let lock = CheckedLock::default();
    s.register_layout(&lock, &custom[2].0.bounds).unwrap();
    let mut rng = common::Rng(7);
    let limits = Limits { max_series: 3000 };
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let (mut req_drops, mut all_drops) = (0u64, 0u64);
    let codes = [
        "200", "201", "301", "400", "404", "408", "429", "499", "500", "502", "503", "504", "0",
    ];
    for i in 0..5000u64 {
        let k = req_key(
            methods[rng.below(4) as usize],
            &format!("/api/{}", rng.below(50)),
            codes[rng.below(codes.len() as u64) as usize],
            &format!("ns-{}", rng.below(10)),
            &format!("up-{}", rng.below(5)),
        );
        let (v, why) = series(&s, &lock, limits, req_kind(1, 2), &k, 5);
        store::observe(v.unwrap(), &BOUNDS, rng.below(3000) as f64 / 1000.0);
        if why.is_some() {
            req_drops += 1;
            all_drops += 1;
        }
        if i % 10 == 0 {
            let mk = key(&[
                &format!("model-{}", rng.below(8)),
                &format!("ns-{}", rng.below(10)),
            ]);
            let (v, why) = series(&s, &lock, limits, kind(fam::MODEL_TOKENS, 0, 5), &mk, 2);
            all_drops += u64::from(why.is_some());
            let v = v.unwrap();
            for w in &v[..tokens::COST] {
                store::add_u64(w, rng.below(1000));
            }
            store::add_f64(&v[tokens::COST], rng.below(1000) as f64 / 7.0);
            let (v, why) = series(&s, &lock, limits, kind(fam::TTFT, 2, 14), &mk, 2);
            all_drops += u64::from(why.is_some());
            store::observe(
                v.unwrap(),
                &DEFAULT_TTFT_BUCKETS,
                rng.below(5000) as f64 / 1000.0,
            );
        }
    }
    let mut out = Vec::new();
    render(&s, &spec(1, &custom), &mut out);
    let e = parse_ok(&out);
    // Each view adds up to the same total.
    let sum = |name: &str| -> f64 { e.samples(name).map(|s| s.value).sum() };
    assert_eq!(sum("http_requests_total"), 5000.0);
    assert_eq!(sum("gateway_requests_total"), 5000.0);
    assert_eq!(sum("namespace_requests_total"), 5000.0);
    assert_eq!(sum("upstream_requests_total"), 5000.0);
    assert_eq!(sum("http_request_duration_seconds_count"), 5000.0);
    assert_eq!(sum("gateway_request_duration_seconds_count"), 5000.0);
    let errors: f64 = e
        .samples("namespace_requests_total")
        .filter(|s| s.label("status") == Some("error"))
        .map(|s| s.value)
        .sum();
    let overflowed: f64 = e
        .samples("namespace_requests_total")
        .filter(|s| s.label("status") == Some("__overflow__"))
        .map(|s| s.value)
        .sum();
    assert_eq!(sum("errors_total"), errors);
    assert_eq!(req_drops as f64, overflowed);
    assert_eq!(s.drops(DropReason::MaxSeries), all_drops);
    assert!(req_drops > 0);
}

#[test]
fn the_parser_rejects_invalid_pages() {
    let ok = "# HELP a A.\n# TYPE a counter\na{x=\"1\"} 1\na{x=\"2\"} 2\n\
              # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert!(parse(ok.as_bytes()).is_ok());
    let bad = [
        ("duplicate series", "# HELP a A.\n# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n"),
        ("family twice", "# HELP a A.\n# TYPE a counter\na 1\n# HELP b B.\n# TYPE b counter\nb 1\n# HELP a A.\n# TYPE a counter\n"),
        ("sample outside family", "# HELP a A.\n# TYPE a counter\nb 1\n"),
        ("no TYPE", "# HELP a A.\na 1\n"),
        ("TYPE without HELP", "# TYPE a counter\na 1\n"),
        ("bad escape", "# HELP a A.\n# TYPE a counter\na{x=\"\\t\"} 1\n"),
        ("unterminated", "# HELP a A.\n# TYPE a counter\na{x=\"1} 1\n"),
        ("bad value", "# HELP a A.\n# TYPE a counter\na 1x\n"),
        ("no newline", "# HELP a A.\n# TYPE a counter\na 1"),
        ("bad label", "# HELP a A.\n# TYPE a counter\na{1x=\"1\"} 1\n"),
        ("not cumulative", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n"),
        ("inf != count", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n"),
        ("no +Inf", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n"),
        ("duplicate label", "# HELP a A.\n# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n"),
    ];
    for (what, page) in bad {
        assert!(parse(page.as_bytes()).is_err(), "accepted: {what}");
    }
    assert!(parse(b"# HELP a A.\n# TYPE a counter\na{x=\"\xff\"} 1\n").is_err());
}

#[test]
fn render_appends_and_is_stable() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1).unwrap();
    let custom = custom_families();
    golden_store(&s, &custom);
    let sp = spec(1, &custom);
    let mut a = b"prefix\n".to_vec();
    render(&s, &sp, &mut a);
    let mut b = Vec::new();
    render(&s, &sp, &mut b);
    assert_eq!(&a[7..], &b[..]);
    // The overflow placement of a new series does not reorder the existing output.
    let lock = CheckedLock::default();
    let p = s
        .upsert(
            &lock,
            Limits { max_series: 0 },
            req_kind(1, 2),
            b"new",
            &overflow_key(5),
        )
        .unwrap();
    assert!(matches!(p, Placement::Overflow(_, DropReason::MaxSeries)));
    let mut c = Vec::new();
    render(&s, &sp, &mut c);
    let before = String::from_utf8(b).unwrap();
    let after = String::from_utf8(c).unwrap();
    assert!(
        block(&after, "http_requests_total").starts_with(&block(&before, "http_requests_total"))
    );
}

#[test]
fn custom_family_redeclared_with_other_labels_after_a_reload() {
    // nginx keeps the zone across a reload; a declared family may come back with fewer or more
    // labels (same name, so same family id). The old series must not render as duplicates of
    // the new ones.
    let lock = CheckedLock::default();
    let decl = |labels: &[&str], kind, bounds: &[f64]| CustomFamily {
        name: "queue_depth".into(),
        help: "Queue depth.".into(),
        kind,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        bounds: bounds.to_vec(),
        id: family_id("queue_depth"),
    };
    let hb = [1.0, 10.0];
    let hl = 1;
    for (kind, layout) in [
        (CustomKind::Gauge, 0),
        (CustomKind::Counter, 0),
        (CustomKind::Histogram, hl),
    ] {
        let r = region(256 << 10);
        let s = Store::format(&r, 1).unwrap();
        assert_eq!(s.register_layout(&lock, &hb).unwrap(), hl);
        let old = decl(&["queue", "region"], kind, &hb);
        let new = decl(&["queue"], kind, &hb);
        let none = decl(&[], kind, &hb);
        let nv = old.n_values();
        let put = |k: &[u8], x: f64| {
            let v = values(
                &s,
                SeriesKind {
                    family: old.id,
                    layout,
                    n_values: nv,
                },
                k,
                2,
            );
            if kind == CustomKind::Histogram {
                store::observe(v, &hb, x);
            } else {
                store::add_f64(&v[0], x);
            }
        };
        put(&key(&["q1", "eu"]), 1.0); // before the reload
        put(&key(&["q1", "us"]), 2.0);
        put(&key(&["q1"]), 3.0); // after the reload
        put(b"", 4.0); // a declaration without labels
        for d in [&old, &new, &none] {
            let custom = vec![(d.clone(), layout)];
            let p = page(&s, &spec(1, &custom)); // parses: no duplicate series
            let e = parse_ok(p.as_bytes());
            let f = e.family("queue_depth").unwrap();
            let n_series = f
                .samples
                .iter()
                .filter(|s| !s.name.ends_with("_bucket") && !s.name.ends_with("_sum"))
                .count();
            // Two labels: the two old series. One label: "q1" and "" (an empty value). No
            // labels: only the empty key.
            let want = if d.labels.is_empty() { 1 } else { 2 };
            assert_eq!(n_series, want, "{kind:?} with labels {:?}:\n{p}", d.labels);
        }
    }
}

// ---- rendering in bounded steps -------------------------------------------------------------

/// Most lines one unit of work may write: a histogram of 64 bounds is 67 lines, the self
/// metrics 33.
const MAX_OVERSHOOT_LINES: usize = 70;

fn dead_pid(pid: u64) -> bool {
    pid != 999
}

/// A spec with nginx stats and a liveness check, so that every stage runs.
fn full_spec<'a>(custom: &'a [(CustomFamily, u8)]) -> RenderSpec<'a> {
    RenderSpec {
        nginx: Some(NginxStats {
            active: 3,
            reading: 1,
            writing: 2,
            waiting: 0,
            accepted: 10,
            handled: 10,
            requests: 42,
        }),
        alive: Some(dead_pid),
        ..spec(1, custom)
    }
}

/// Every family, several series each, old bucket layouts and overflow series.
fn full_store(s: &Store, custom: &[(CustomFamily, u8)]) {
    golden_store(s, custom);
    let lock = CheckedLock::default();
    let methods = ["GET", "POST", "PUT"];
    let codes = ["200", "404", "429", "502", "503", "0"];
    for i in 0..240u32 {
        let ns = format!("ns-{}", i % 17);
        let ep = format!("/v1/e{}", i % 11);
        let code = codes[i as usize % codes.len()];
        let m = methods[i as usize % methods.len()];
        request(s, 1, [m, &ep, code, &ns, "up9"], &[f64::from(i % 7) * 0.3]);
    }
    // A bucket layout from before a reload, same length and shorter.
    let old = [0.2, 2.0];
    let old_short = [0.5];
    let lo = s.register_layout(&lock, &old).unwrap();
    let ls = s.register_layout(&lock, &old_short).unwrap();
    for i in 0..5 {
        let k = req_key("GET", &format!("/old{i}"), "200", "ns-a", "up1");
        store::observe(values(s, req_kind(lo, 2), &k, 5), &old, 1.5);
        store::observe(values(s, req_kind(ls, 1), &k, 5), &old_short, 0.1);
    }
    let tk = kind(fam::MODEL_TOKENS, 0, tokens::N_VALUES);
    for i in 0..30u64 {
        let t = values(
            s,
            tk,
            &key(&[&format!("m{}", i % 7), &format!("ns-{i}")]),
            2,
        );
        store::add_u64(&t[tokens::INPUT], 10 * i);
        store::add_u64(&t[tokens::OUTPUT], i);
        if i % 3 == 0 {
            store::add_u64(&t[tokens::REASONING], i);
        }
        store::add_f64(&t[tokens::COST], i as f64 / 8.0);
        let ttft = values(
            s,
            kind(fam::TTFT, 2, 14),
            &key(&[&format!("m{i}"), "ns"]),
            2,
        );
        store::observe(ttft, &DEFAULT_TTFT_BUCKETS, i as f64 / 10.0);
        let tp = values(
            s,
            kind(fam::THROUGHPUT, 3, 12),
            &key(&[&format!("m{i}"), "ns"]),
            2,
        );
        store::observe(tp, &DEFAULT_THROUGHPUT_BUCKETS, i as f64);
        // (The test spec gives time per output token the throughput bounds and layout.)
        let tpot = values(
            s,
            kind(fam::TPOT, 3, 12),
            &key(&[&format!("m{i}"), "ns"]),
            2,
        );
        store::observe(tpot, &DEFAULT_THROUGHPUT_BUCKETS, i as f64);
        let reason = ["absent", "aborted", "encoded"][i as usize % 3];
        let um = values(
            s,
            kind(fam::USAGE_MISSING, 0, 1),
            &key(&[&format!("m{i}"), "ns", reason]),
            3,
        );
        store::add_u64(&um[0], 1);
        let mr = values(
            s,
            kind(fam::MODEL_REQUEST, 1, 4),
            &key(&[&format!("m{i}"), "ns", "error"]),
            3,
        );
        store::observe(mr, &BOUNDS, 0.5);
        let u = values(s, kind(fam::UNPRICED, 0, 1), &key(&[&format!("m{i}")]), 1);
        store::add_u64(&u[0], i);
        let rl = values(
            s,
            kind(fam::RATE_LIMIT, 0, 2),
            &key(&[&format!("ns-{i}"), "token_limit"]),
            2,
        );
        store::add_u64(&rl[0], i);
        let c = values(
            s,
            kind(fam::CACHE, 0, 2),
            &key(&[&format!("c{}", i % 4)]),
            1,
        );
        store::add_u64(&c[(i % 2) as usize], 1);
    }
    // In-flight gauges per worker slot, one owned by a dead worker.
    for (slot, pid, n) in [("0", 100, 2), ("1", 999, 7), ("2", 101, 1)] {
        let a = values(s, kind(fam::ACTIVE, 0, 2), &key(&["ns-a", slot]), 2);
        store::add_u64(&a[0], n);
        store::add_u64(&a[1], pid);
    }
    for (f, l) in custom {
        for i in 0..25 {
            let labels: Vec<String> = (0..f.labels.len()).map(|j| format!("v{i}-{j}")).collect();
            let labels: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
            let v = values(s, kind(f.id, *l, f.n_values()), &key(&labels), labels.len());
            if f.kind == CustomKind::Histogram {
                store::observe(v, &f.bounds, f64::from(i));
            } else {
                store::add_f64(&v[0], f64::from(i) + 0.5);
            }
        }
    }
    // Overflow series of several families (the cap is reached for new label sets).
    let full = Limits { max_series: 0 };
    for i in 0..4 {
        let k = req_key("GET", &format!("/over{i}"), "200", "x", "y");
        let (v, why) = series(s, &lock, full, req_kind(1, 2), &k, 5);
        assert_eq!(why, Some(DropReason::MaxSeries));
        store::observe(v.unwrap(), &BOUNDS, 0.5);
        let (v, _) = series(s, &lock, full, tk, &key(&["mx", &format!("n{i}")]), 2);
        store::add_u64(&v.unwrap()[tokens::INPUT], 5);
        let (f, _) = &custom[0];
        let (v, _) = series(
            s,
            &lock,
            full,
            kind(f.id, 0, 1),
            &key(&[&format!("o{i}")]),
            1,
        );
        store::add_f64(&v.unwrap()[0], 1.0);
    }
    assert!(s.usage().overflow_series >= 3);
}

/// Renders in steps of `budget`, draining the output after each step (as the nginx module
/// does). Returns the concatenated page and the largest number of lines one step wrote.
fn stepped(s: &Store, spec: &RenderSpec, budget: usize) -> (Vec<u8>, usize, usize) {
    let mut r = Render::new(s, spec);
    let mut page = Vec::new();
    let mut out = Vec::new();
    let (mut steps, mut max_lines) = (0, 0);
    loop {
        out.clear();
        let done = r.step(&mut out, budget);
        steps += 1;
        max_lines = max_lines.max(out.iter().filter(|&&b| b == b'\n').count());
        page.extend_from_slice(&out);
        if done {
            assert!(r.is_done());
            break;
        }
        assert!(steps < 10_000_000, "no progress");
    }
    (page, max_lines, steps)
}

#[test]
fn steps_concatenate_to_the_one_shot_page() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let custom = custom_families();
    full_store(&s, &custom);
    let sp = full_spec(&custom);
    let mut whole = Vec::new();
    render(&s, &sp, &mut whole);
    let e = parse_ok(&whole);
    let got: Vec<&str> = e.families.iter().map(|f| f.name.as_str()).collect();
    let mut want: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
    want.extend([
        "nginx_connections_accepted_total",
        "nginx_connections_handled_total",
        "nginx_http_requests_total",
    ]);
    assert_eq!(got, want, "every family is on the page");
    for f in &e.families {
        assert!(!f.samples.is_empty(), "{} has samples", f.name);
    }
    let mut prev_steps = usize::MAX;
    for budget in [0, 1, 3, 17, 1000, usize::MAX] {
        let (page, max_lines, steps) = stepped(&s, &sp, budget);
        assert!(
            page == whole,
            "budget {budget}: pages differ:\n{}",
            String::from_utf8_lossy(&page)
        );
        assert!(
            max_lines <= budget.max(1).saturating_add(MAX_OVERSHOOT_LINES),
            "budget {budget}: a step wrote {max_lines} lines"
        );
        assert!(steps <= prev_steps, "bigger budgets, fewer steps");
        prev_steps = steps;
        if budget == usize::MAX {
            assert_eq!(steps, 1);
        }
    }
    // One unit per step: at least one step per series walked and per line.
    let lines = whole.iter().filter(|&&b| b == b'\n').count();
    let (_, _, steps) = stepped(&s, &sp, 1);
    assert!(steps > lines / MAX_OVERSHOOT_LINES + s.usage().series as usize);
}

#[test]
fn a_family_of_100k_series_renders_in_bounded_steps() {
    let r = region(32 << 20);
    let s = Store::format(&r, 1).unwrap();
    let custom = custom_families();
    layouts(&s);
    let lock = CheckedLock::default();
    assert_eq!(s.register_layout(&lock, &custom[2].0.bounds).unwrap(), 4);
    let (g, _) = &custom[0];
    for i in 0..100_000 {
        let v = values(&s, kind(g.id, 0, 1), &key(&[&format!("t{i}")]), 1);
        store::set_f64(&v[0], f64::from(i));
    }
    let (h, hl) = &custom[2];
    for i in 0..2_000 {
        let v = values(
            &s,
            kind(h.id, *hl, h.n_values()),
            &key(&[&format!("q{i}")]),
            1,
        );
        store::observe(v, &h.bounds, 5.0);
    }
    let sp = spec(1, &custom);
    // The walk itself is done in steps: the first ones write nothing.
    let mut rd = Render::new(&s, &sp);
    let mut out = Vec::new();
    for _ in 0..900 {
        assert!(!rd.step(&mut out, 100));
    }
    assert!(out.is_empty(), "still walking the store");
    let mut whole = Vec::new();
    render(&s, &sp, &mut whole);
    for budget in [100, 1000] {
        let (page, max_lines, steps) = stepped(&s, &sp, budget);
        assert!(page == whole);
        assert!(max_lines <= budget + MAX_OVERSHOOT_LINES, "{max_lines}");
        assert!(steps >= 2 * 102_000 / budget, "{steps} steps");
    }
    let e = parse_ok(&whole);
    assert_eq!(e.samples(&g.name).count(), 100_000);
    assert_eq!(e.samples("batch_size_count").count(), 2_000);
}

#[test]
fn series_inserted_between_steps() {
    let r = region(8 << 20);
    let s = Store::format(&r, 1).unwrap();
    let custom = custom_families();
    full_store(&s, &custom);
    let sp = full_spec(&custom);
    let lock = CheckedLock::default();
    let (g, _) = &custom[0];
    let tk = kind(fam::MODEL_TOKENS, 0, tokens::N_VALUES);
    for budget in [1, 7, 64] {
        let mut rd = Render::new(&s, &sp);
        let mut page = Vec::new();
        let mut out = Vec::new();
        let mut i = 0;
        let mut first_out = None;
        loop {
            out.clear();
            let done = rd.step(&mut out, budget);
            page.extend_from_slice(&out);
            if done {
                break;
            }
            let first = first_out.is_none() && !out.is_empty();
            if first {
                first_out = Some(i);
            }
            i += 1;
            if i != 1 && !first && i % (1 + 200 / budget) != 0 {
                continue;
            }
            // New series of several families (some overflowing), and updates of old ones.
            let tag = format!("b{budget}-{}", i - 1);
            request(&s, 1, ["GET", "/new", "200", &tag, "up"], &[0.5]);
            request(&s, 1, ["GET", "/v1/e1", "200", "ns-1", "up9"], &[0.5]);
            store::add_u64(&values(&s, tk, &key(&["new", &tag]), 2)[tokens::INPUT], 1);
            store::set_f64(&values(&s, kind(g.id, 0, 1), &key(&[&tag]), 1)[0], 1.0);
            if i % 5 == 0 {
                let k = req_key("GET", &format!("/cap{tag}"), "500", "ns", "up");
                let (v, _) = series(&s, &lock, Limits { max_series: 0 }, req_kind(1, 2), &k, 5);
                store::observe(v.unwrap(), &BOUNDS, 0.1);
            }
        }
        // Valid: HELP/TYPE once, families contiguous, no duplicate series.
        let e = parse_ok(&page);
        assert_eq!(e.families.len(), FAMILIES.len() + 3);
        // The views agree on the set of series: each request series is in every view.
        let http: Vec<(String, String)> = e
            .samples("http_requests_total")
            .map(|x| {
                (
                    x.label("endpoint").unwrap().to_string(),
                    x.label("namespace").unwrap().to_string(),
                )
            })
            .collect();
        for (ep, ns) in &http {
            let has = |name: &str| {
                e.samples(name)
                    .any(|x| x.label("path") == Some(ep) && x.label("namespace") == Some(ns))
            };
            assert!(has("gateway_requests_total"), "{ep} {ns}: counter view");
            // (Series of an old bucket layout are in the counter views only.)
            if !ep.starts_with("/old") {
                assert!(has("gateway_request_duration_seconds_count"), "{ep} {ns}");
            }
        }
        // Inserted during the walk (ahead of it): on the page; after it: not.
        let tag0 = format!("b{budget}-0");
        let on_page = |tag: &str| http.iter().any(|(_, ns)| ns == tag);
        assert!(on_page(&tag0), "series inserted during the walk");
        let after = format!("b{budget}-{}", first_out.unwrap());
        assert!(!on_page(&after), "series inserted after the walk");
    }
}

#[test]
fn store_walk_in_steps_visits_what_for_each_visits() {
    let r = region(1 << 20);
    let s = Store::format(&r, 1).unwrap();
    let custom = custom_families();
    full_store(&s, &custom);
    let mut all = Vec::new();
    s.for_each(|e| all.push((e.kind, e.values.as_ptr(), e.overflow)));
    assert!(all.iter().any(|x| x.2) && all.iter().any(|x| !x.2));
    for budget in [0, 1, 2, 5, 100, usize::MAX] {
        let mut pos = 0;
        let mut got = Vec::new();
        let mut calls = 0;
        while !s.for_each_from(&mut pos, budget, |e| {
            got.push((e.kind, e.values.as_ptr(), e.overflow))
        }) {
            calls += 1;
            assert!(calls <= all.len(), "budget {budget}: no progress");
        }
        assert_eq!(got, all, "budget {budget}");
        // A finished walk stays finished.
        assert!(s.for_each_from(&mut pos, budget, |_| panic!("walked again")));
    }
}

mod steps_prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_budget_gives_the_one_shot_page(
            ops in proptest::collection::vec((0u8..6, 0u8..12, 0u16..600), 0..120),
            budget in 1usize..40,
            cap in 1u64..80,
        ) {
            let r = region(256 << 10);
            let s = Store::format(&r, 1).unwrap();
            let custom = custom_families();
            layouts(&s);
            let lock = CheckedLock::default();
            s.register_layout(&lock, &custom[2].0.bounds).unwrap();
            let limits = Limits { max_series: cap };
            for (what, a, b) in ops {
                let (ka, kb) = (format!("a{a}"), format!("{b}"));
                let (k, n, sk) = match what {
                    0 => (req_key("GET", &ka, &kb, "ns", "up"), 5, req_kind(1, 2)),
                    1 => (key(&[&ka, &kb]), 2, kind(fam::MODEL_TOKENS, 0, tokens::N_VALUES)),
                    2 => (key(&[&ka]), 1, kind(fam::ACTIVE, 0, 1)),
                    3 => (key(&[&ka]), 1, kind(custom[0].0.id, 0, 1)),
                    4 => (key(&[&ka]), 1, kind(custom[2].0.id, 4, custom[2].0.n_values())),
                    _ => (key(&[&ka, "r"]), 2, kind(fam::RATE_LIMIT, 0, 2)),
                };
                if let (Some(v), _) = series(&s, &lock, limits, sk, &k, n) {
                    store::add_u64(&v[0], u64::from(b));
                }
            }
            let sp = full_spec(&custom);
            let mut whole = Vec::new();
            render(&s, &sp, &mut whole);
            let (page, max_lines, _) = stepped(&s, &sp, budget);
            prop_assert!(page == whole);
            prop_assert!(max_lines <= budget + MAX_OVERSHOOT_LINES);
            parse_ok(&page);
        }
    }
}

#[test]
fn views_switched_off_are_not_on_the_page_and_the_rest_is_unchanged() {
    let r = region(256 << 10);
    let s = Store::format(&r, 1_700_000_000).unwrap();
    let custom = custom_families();
    full_store(&s, &custom);
    let all = page(&s, &full_spec(&custom));
    let views = gateway_metrics_core::catalogue::Views::parse(&[
        "-gateway_requests_total",
        "-gateway_request_duration_seconds",
        "-nginx_connections_waiting",
    ])
    .unwrap();
    let fewer = page(
        &s,
        &RenderSpec {
            views,
            ..full_spec(&custom)
        },
    );
    let e = parse_ok(fewer.as_bytes());
    let names: Vec<&str> = e.families.iter().map(|f| f.name.as_str()).collect();
    for gone in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "nginx_connections_waiting",
    ] {
        assert!(!names.contains(&gone), "{gone} still on the page");
    }
    // every other family is there with the very same lines
    let kept: Vec<&str> = all
        .lines()
        .filter(|l| {
            !l.contains("gateway_requests_total")
                && !l.contains("gateway_request_duration_seconds")
                && !l.contains("nginx_connections_waiting")
        })
        .collect();
    assert_eq!(kept, fewer.lines().collect::<Vec<_>>());
    assert!(
        fewer.len() < all.len() * 3 / 4,
        "{} vs {}",
        fewer.len(),
        all.len()
    );
}
