//! Renders the whole `/metrics` page from a store: the views of the stored families, declared
//! families, self-metrics and nginx's connection counters. Takes no lock: it walks the
//! published series and reads each value word atomically.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buckets::format_bound;
use crate::catalogue::{self, fam, tokens};
use crate::expo::{push_labels, Encoder, MetricType};
use crate::labels::{split_key, SEP};
use crate::store::{load_f64, DropReason, SelfCounter, Store};

/// The type of a family declared in nginx.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomKind {
    Counter,
    Gauge,
    Histogram,
}

/// A family declared with `gateway_metrics_counter|gauge|histogram`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomFamily {
    pub name: String,
    pub help: String,
    pub kind: CustomKind,
    pub labels: Vec<String>,
    /// Histogram bounds (empty for counters and gauges).
    pub bounds: Vec<f64>,
    /// Stored family id, [`crate::hash::family_id`] of the name.
    pub id: u32,
}

impl CustomFamily {
    /// Value words per series: one f64 for counters and gauges; buckets, `+Inf` and sum for
    /// histograms.
    pub fn n_values(&self) -> u8 {
        match self.kind {
            CustomKind::Counter | CustomKind::Gauge => 1,
            CustomKind::Histogram => (self.bounds.len() + 2) as u8,
        }
    }
}

/// A histogram family's bounds and the layout id they were registered under in the zone.
#[derive(Debug, Clone, Copy)]
pub struct HistSpec<'a> {
    pub bounds: &'a [f64],
    pub layout: u8,
}

/// stub_status figures, when the nginx build has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NginxStats {
    pub active: u64,
    pub reading: u64,
    pub writing: u64,
    pub waiting: u64,
    pub accepted: u64,
    pub handled: u64,
    pub requests: u64,
}

/// What the renderer needs from the configuration.
pub struct RenderSpec<'a> {
    pub zone_name: &'a str,
    pub max_series: u64,
    pub duration: HistSpec<'a>,
    pub ttft: HistSpec<'a>,
    pub throughput: HistSpec<'a>,
    /// Declared families with their layouts (0 for non-histograms).
    pub custom: &'a [(CustomFamily, u8)],
    pub nginx: Option<NginxStats>,
    /// Is the process with this pid alive? In-flight gauges owned by a dead worker (killed
    /// while it had requests in flight) are not counted. `None`: all owners count as alive.
    pub alive: Option<fn(u64) -> bool>,
}

struct Item<'a> {
    layout: u8,
    key: (usize, usize),
    values: &'a [AtomicU64],
}

/// The series of one walk, grouped by family, keys copied into one arena.
struct Collected<'a> {
    arena: Vec<u8>,
    builtin: [Vec<Item<'a>>; 10],
    custom: HashMap<u32, Vec<Item<'a>>>,
}

impl<'a> Collected<'a> {
    fn collect(store: &Store<'a>) -> Self {
        let mut c = Collected {
            arena: Vec::with_capacity(64 * 1024),
            builtin: Default::default(),
            custom: HashMap::new(),
        };
        let mut tmp = Vec::new();
        store.for_each(|e| {
            e.key.read_into(&mut tmp);
            let start = c.arena.len();
            c.arena.extend_from_slice(&tmp);
            let item = Item {
                layout: e.kind.layout,
                key: (start, tmp.len()),
                values: e.values,
            };
            match c.builtin.get_mut(e.kind.family as usize) {
                Some(v) => v.push(item),
                None => c.custom.entry(e.kind.family).or_default().push(item),
            }
        });
        c
    }

    fn key(&self, it: &Item) -> &[u8] {
        &self.arena[it.key.0..it.key.0 + it.key.1]
    }
}

/// How a view derives one output label from a stored key.
#[derive(Clone, Copy)]
enum Col {
    /// The stored label at this index, as is.
    Label(usize),
    /// `success`/`error` from the `status_code` label at this index.
    StatusClass(usize),
    /// `error_type` from the `status_code` label; series that are not errors are skipped.
    ErrorType(usize),
}

const MAX_LABELS: usize = 16;

/// Projects a stored key onto a view's columns; `None` if the view skips this series.
fn project(key: &[u8], cols: &[Col], out: &mut Vec<u8>) -> Option<()> {
    let mut vals: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
    let mut n = 0;
    for v in split_key(key) {
        if n < MAX_LABELS {
            vals[n] = v;
            n += 1;
        }
    }
    out.clear();
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        let v: &[u8] = match *c {
            Col::Label(j) => vals.get(j).copied().unwrap_or(b""),
            Col::StatusClass(j) => {
                let raw = vals.get(j).copied().unwrap_or(b"");
                if raw == crate::labels::OVERFLOW_VALUE.as_bytes() {
                    raw
                } else {
                    catalogue::status_class(catalogue::parse_status(raw)).as_bytes()
                }
            }
            Col::ErrorType(j) => {
                let raw = vals.get(j).copied().unwrap_or(b"");
                if raw == crate::labels::OVERFLOW_VALUE.as_bytes() {
                    return None;
                }
                catalogue::error_type(catalogue::parse_status(raw))?.as_bytes()
            }
        };
        out.extend_from_slice(v);
    }
    Some(())
}

/// Hasher for keys that are already hashes.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const NO_GROUP: u32 = u32::MAX;

/// Aggregation groups in first-seen order (insertion order of the store: stable output).
/// Keys live in one arena, indexed by their hash with collision chains: no allocation per group.
struct Groups<V> {
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>,
    arena: Vec<u8>,
    /// Per group: key start, key length, next group with the same hash.
    spans: Vec<(u32, u32, u32)>,
    vals: Vec<V>,
}

impl<V> Groups<V> {
    fn new() -> Self {
        Groups {
            index: HashMap::default(),
            arena: Vec::new(),
            spans: Vec::new(),
            vals: Vec::new(),
        }
    }

    fn key(&self, i: usize) -> &[u8] {
        let (s, l, _) = self.spans[i];
        &self.arena[s as usize..(s + l) as usize]
    }

    fn get(&mut self, key: &[u8], init: impl FnOnce() -> V) -> &mut V {
        let h = crate::hash::hash_key(0, key);
        let head = self.index.get(&h).copied().unwrap_or(NO_GROUP);
        let mut i = head;
        while i != NO_GROUP {
            if self.key(i as usize) == key {
                return &mut self.vals[i as usize];
            }
            i = self.spans[i as usize].2;
        }
        let n = self.spans.len();
        self.spans
            .push((self.arena.len() as u32, key.len() as u32, head));
        self.arena.extend_from_slice(key);
        self.index.insert(h, n as u32);
        self.vals.push(init());
        &mut self.vals[n]
    }

    fn len(&self) -> usize {
        self.vals.len()
    }
}

/// Does `key` hold exactly `n` label values? The views that print one line per stored series
/// skip series of another label set: a family re-declared with other labels across a reload
/// (the zone survives it) would otherwise print duplicate series.
fn has_arity(key: &[u8], n: usize) -> bool {
    if n == 0 {
        key.is_empty()
    } else {
        split_key(key).count() == n
    }
}

fn hist_count(values: &[AtomicU64]) -> u64 {
    // Histogram words are [buckets.., +Inf, sum]: the count is the sum of all but the last.
    // Sums of shared-memory words wrap (like the counters themselves) rather than panic on
    // overflow: a corrupt zone must not take a worker down.
    let n = values.len().saturating_sub(1);
    values[..n]
        .iter()
        .fold(0u64, |a, w| a.wrapping_add(w.load(Ordering::Relaxed)))
}

struct HistAgg {
    buckets: Vec<u64>,
    sum: f64,
}

/// Renders `/metrics` into `out` (appending).
pub fn render(store: &Store, spec: &RenderSpec, out: &mut Vec<u8>) {
    let c = Collected::collect(store);
    let mut r = Renderer {
        c: &c,
        enc: Encoder::new(out),
        labels: Vec::with_capacity(512),
        proj: Vec::with_capacity(256),
    };
    r.requests(spec);
    r.active(spec);
    r.models(spec);
    r.limits_and_caches();
    r.custom(spec);
    r.self_metrics(store, spec);
    if let Some(n) = spec.nginx {
        r.nginx(&n);
    }
}

/// A family rendered from the stored `REQUEST` series
/// (`{method, endpoint, status_code, namespace, upstream}`).
struct RequestView {
    name: &'static str,
    help: &'static str,
    histogram: bool,
    labels: &'static [&'static str],
    cols: &'static [Col],
}

const REQUEST_VIEWS: [RequestView; 7] = {
    use Col::*;
    [
        RequestView {
            name: "http_requests_total",
            help: "HTTP requests handled by the gateway.",
            histogram: false,
            labels: &["method", "endpoint", "status_code", "namespace", "upstream"],
            cols: &[Label(0), Label(1), Label(2), Label(3), Label(4)],
        },
        RequestView {
            name: "http_request_duration_seconds",
            help: "HTTP request duration in seconds, from the first request byte to the last response byte.",
            histogram: true,
            labels: &["method", "endpoint", "namespace", "upstream"],
            cols: &[Label(0), Label(1), Label(3), Label(4)],
        },
        RequestView {
            name: "gateway_requests_total",
            help: "Gateway requests by method, path and namespace.",
            histogram: false,
            labels: &["method", "path", "namespace"],
            cols: &[Label(0), Label(1), Label(3)],
        },
        RequestView {
            name: "gateway_request_duration_seconds",
            help: "Gateway request duration in seconds by method, path and namespace.",
            histogram: true,
            labels: &["method", "path", "namespace"],
            cols: &[Label(0), Label(1), Label(3)],
        },
        RequestView {
            name: "namespace_requests_total",
            help: "Requests per namespace; status is success (HTTP status below 400) or error.",
            histogram: false,
            labels: &["namespace", "status"],
            cols: &[Label(3), StatusClass(2)],
        },
        RequestView {
            name: "upstream_requests_total",
            help: "Requests per upstream; status is success (HTTP status below 400) or error.",
            histogram: false,
            labels: &["upstream", "status"],
            cols: &[Label(4), StatusClass(2)],
        },
        RequestView {
            name: "errors_total",
            help: "Requests that ended in an HTTP error, by error type.",
            histogram: false,
            labels: &["error_type", "namespace", "upstream"],
            cols: &[ErrorType(2), Label(3), Label(4)],
        },
    ]
};

struct Renderer<'c, 'a, 'o> {
    c: &'c Collected<'a>,
    enc: Encoder<'o>,
    labels: Vec<u8>,
    proj: Vec<u8>,
}

impl Renderer<'_, '_, '_> {
    fn set_labels(&mut self, names: &[&str], key: &[u8]) {
        let mut vals: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
        let mut n = 0;
        if !names.is_empty() {
            for v in split_key(key) {
                if n < MAX_LABELS {
                    vals[n] = v;
                    n += 1;
                }
            }
        }
        self.labels.clear();
        push_labels(&mut self.labels, names, &vals[..names.len().min(n)]);
    }

    /// A counter view: the sum over stored series of `value(series)`, grouped by `cols`.
    fn counter_view(
        &mut self,
        family: u32,
        name: &str,
        help: &str,
        names: &[&str],
        cols: &[Col],
        value: impl Fn(&[AtomicU64]) -> u64,
    ) {
        let mut g: Groups<u64> = Groups::new();
        for it in &self.c.builtin[family as usize] {
            if project(self.c.key(it), cols, &mut self.proj).is_some() {
                let v = g.get(&self.proj, || 0);
                *v = v.wrapping_add(value(it.values));
            }
        }
        self.enc.family(name, help, MetricType::Counter);
        for i in 0..g.len() {
            self.set_labels(names, g.key(i));
            self.enc.sample_u64(name, &self.labels, g.vals[i]);
        }
    }

    /// A histogram view: stored histograms of the current layout, summed by `cols`.
    fn histogram_view(
        &mut self,
        family: u32,
        name: &str,
        help: &str,
        names: &[&str],
        cols: &[Col],
        h: HistSpec,
    ) {
        let nb = h.bounds.len() + 1;
        let mut g: Groups<HistAgg> = Groups::new();
        for it in &self.c.builtin[family as usize] {
            // Series of an older bucket layout (before a reload) are not comparable; their
            // counts still reach the counter views.
            if it.layout != h.layout || it.values.len() != nb + 1 {
                continue;
            }
            if project(self.c.key(it), cols, &mut self.proj).is_some() {
                let a = g.get(&self.proj, || HistAgg {
                    buckets: vec![0; nb],
                    sum: 0.0,
                });
                for (b, w) in a.buckets.iter_mut().zip(it.values) {
                    *b = b.wrapping_add(w.load(Ordering::Relaxed));
                }
                a.sum += load_f64(&it.values[nb]);
            }
        }
        self.enc.family(name, help, MetricType::Histogram);
        let le: Vec<String> = h.bounds.iter().map(|&b| format_bound(b)).collect();
        for i in 0..g.len() {
            self.set_labels(names, g.key(i));
            let a = &g.vals[i];
            self.enc
                .histogram(name, &self.labels, &le, &a.buckets, a.sum);
        }
    }

    fn requests(&mut self, spec: &RenderSpec) {
        for v in &REQUEST_VIEWS {
            if v.histogram {
                self.histogram_view(
                    fam::REQUEST,
                    v.name,
                    v.help,
                    v.labels,
                    v.cols,
                    spec.duration,
                );
            } else {
                self.counter_view(fam::REQUEST, v.name, v.help, v.labels, v.cols, hist_count);
            }
        }
    }

    /// `active_connections`: the stored series are `{namespace, worker slot}` with values
    /// `[in flight, owner pid]` (the older `{namespace}` / `[in flight]` shape is accepted too),
    /// summed per namespace; series whose owner died are skipped, negatives count as 0.
    fn active(&mut self, spec: &RenderSpec) {
        self.enc.family(
            "active_connections",
            "Requests in flight per namespace (past the access phases, not yet finalized).",
            MetricType::Gauge,
        );
        let mut g: Groups<i64> = Groups::new();
        for it in &self.c.builtin[fam::ACTIVE as usize] {
            let key = self.c.key(it);
            let shape_ok = (it.values.len() == 1 && has_arity(key, 1))
                || (it.values.len() == 2 && has_arity(key, 2));
            if !shape_ok {
                continue;
            }
            if let (Some(owner), Some(alive)) = (it.values.get(1), spec.alive) {
                let pid = owner.load(Ordering::Relaxed);
                if pid != 0 && !alive(pid) {
                    continue;
                }
            }
            let v = (it.values[0].load(Ordering::Relaxed) as i64).max(0);
            if project(key, &[Col::Label(0)], &mut self.proj).is_some() {
                let a = g.get(&self.proj, || 0);
                *a = a.saturating_add(v);
            }
        }
        for i in 0..g.len() {
            self.set_labels(&catalogue::ACTIVE_LABELS, g.key(i));
            self.enc
                .sample_i64("active_connections", &self.labels, g.vals[i]);
        }
    }

    fn models(&mut self, spec: &RenderSpec) {
        use Col::*;
        self.counter_view(
            fam::MODEL_REQUEST,
            "model_requests_total",
            "Requests per model; status is success (HTTP status below 400) or error.",
            &["model", "namespace", "status"],
            &[Label(0), Label(1), Label(2)],
            hist_count,
        );
        self.histogram_view(
            fam::MODEL_REQUEST,
            "model_request_duration_seconds",
            "Model request duration in seconds.",
            &["model", "namespace"],
            &[Label(0), Label(1)],
            spec.duration,
        );
        let slot =
            |i: usize| move |v: &[AtomicU64]| v.get(i).map_or(0, |w| w.load(Ordering::Relaxed));
        self.counter_view(
            fam::MODEL_TOKENS,
            "model_tokens_input_total",
            "Input (prompt) tokens as reported by the provider, cached input included.",
            &["model", "namespace"],
            &[Label(0), Label(1)],
            slot(tokens::INPUT),
        );
        self.counter_view(
            fam::MODEL_TOKENS,
            "model_tokens_output_total",
            "Output (completion) tokens as reported by the provider, reasoning included.",
            &["model", "namespace"],
            &[Label(0), Label(1)],
            slot(tokens::OUTPUT),
        );
        // namespace_tokens_total: one group per namespace and token type; cached_input and
        // reasoning only once some were reported (they are parts of input and output).
        let mut g: Groups<[u64; 4]> = Groups::new();
        for it in &self.c.builtin[fam::MODEL_TOKENS as usize] {
            if project(self.c.key(it), &[Label(1)], &mut self.proj).is_some() {
                let a = g.get(&self.proj, || [0; 4]);
                for (i, slot) in a.iter_mut().enumerate() {
                    *slot = slot
                        .wrapping_add(it.values.get(i).map_or(0, |w| w.load(Ordering::Relaxed)));
                }
            }
        }
        self.enc.family(
            "namespace_tokens_total",
            "Tokens per namespace by type: input and output are the provider's totals; cached_input and reasoning are the parts of them the provider reported separately.",
            MetricType::Counter,
        );
        for gi in 0..g.len() {
            let (k, a) = (g.key(gi), &g.vals[gi]);
            for (i, t) in ["input", "output", "cached_input", "reasoning"]
                .iter()
                .enumerate()
            {
                if i >= 2 && a[i] == 0 {
                    continue;
                }
                self.labels.clear();
                let mut ns = k.to_vec();
                ns.push(SEP);
                ns.extend_from_slice(t.as_bytes());
                self.set_labels(&["namespace", "token_type"], &ns);
                self.enc
                    .sample_u64("namespace_tokens_total", &self.labels, a[i]);
            }
        }
        self.enc.family(
            "model_cost_usd_total",
            "Cost in USD from the configured price table (gateway_metrics_model_price).",
            MetricType::Counter,
        );
        let items = self.c.builtin[fam::MODEL_TOKENS as usize]
            .iter()
            .filter(|it| {
                it.values.len() == usize::from(tokens::N_VALUES)
                    && has_arity(self.c.key(it), catalogue::MODEL_LABELS.len())
            });
        for it in items {
            let cost = it.values.get(tokens::COST).map_or(0.0, load_f64);
            self.set_labels(&catalogue::MODEL_LABELS, self.c.key(it));
            self.enc
                .sample_f64("model_cost_usd_total", &self.labels, cost);
        }
        self.histogram_view(
            fam::TTFT,
            "model_time_to_first_token_seconds",
            "Time to first token of streamed responses, in seconds.",
            &["model", "namespace"],
            &[Label(0), Label(1)],
            spec.ttft,
        );
        self.histogram_view(
            fam::THROUGHPUT,
            "model_throughput_tokens_per_second",
            "Output tokens per second of generation time (request time minus time to first token when known).",
            &["model", "namespace"],
            &[Label(0), Label(1)],
            spec.throughput,
        );
    }

    fn limits_and_caches(&mut self) {
        use Col::*;
        let slot =
            |i: usize| move |v: &[AtomicU64]| v.get(i).map_or(0, |w| w.load(Ordering::Relaxed));
        let rl = [Label(0), Label(1)];
        self.counter_view(
            fam::RATE_LIMIT,
            "rate_limit_hits_total",
            "Requests that hit a rate limit (delayed, throttled or rejected).",
            &["namespace", "rule_type"],
            &rl,
            slot(0),
        );
        self.counter_view(
            fam::RATE_LIMIT,
            "rate_limit_violations_total",
            "Requests rejected by a rate limit.",
            &["namespace", "rule_type"],
            &rl,
            slot(1),
        );
        self.counter_view(
            fam::CACHE,
            "cache_hits_total",
            "Cache lookups that hit.",
            &["cache_type"],
            &[Label(0)],
            slot(0),
        );
        self.counter_view(
            fam::CACHE,
            "cache_misses_total",
            "Cache lookups that missed.",
            &["cache_type"],
            &[Label(0)],
            slot(1),
        );
    }

    fn custom(&mut self, spec: &RenderSpec) {
        for (f, layout) in spec.custom {
            let names: Vec<&str> = f.labels.iter().map(|s| s.as_str()).collect();
            let n_values = usize::from(f.n_values());
            let items: Vec<&Item> = self
                .c
                .custom
                .get(&f.id)
                .map_or(&[][..], |v| v.as_slice())
                .iter()
                .filter(|it| it.values.len() == n_values && has_arity(self.c.key(it), names.len()))
                .collect();
            match f.kind {
                CustomKind::Counter | CustomKind::Gauge => {
                    let t = if f.kind == CustomKind::Counter {
                        MetricType::Counter
                    } else {
                        MetricType::Gauge
                    };
                    self.enc.family(&f.name, &f.help, t);
                    for it in &items {
                        self.set_labels(&names, self.c.key(it));
                        self.enc
                            .sample_f64(&f.name, &self.labels, load_f64(&it.values[0]));
                    }
                }
                CustomKind::Histogram => {
                    self.enc.family(&f.name, &f.help, MetricType::Histogram);
                    let le: Vec<String> = f.bounds.iter().map(|&b| format_bound(b)).collect();
                    let nb = f.bounds.len() + 1;
                    let mut buckets = vec![0u64; nb];
                    for it in items.iter().filter(|it| it.layout == *layout) {
                        for (b, w) in buckets.iter_mut().zip(it.values) {
                            *b = w.load(Ordering::Relaxed);
                        }
                        self.set_labels(&names, self.c.key(it));
                        let sum = load_f64(&it.values[nb]);
                        self.enc
                            .histogram(&f.name, &self.labels, &le, &buckets, sum);
                    }
                }
            }
        }
    }

    fn self_metrics(&mut self, store: &Store, spec: &RenderSpec) {
        let u = store.usage();
        self.labels.clear();
        push_labels(&mut self.labels, &["zone"], &[spec.zone_name.as_bytes()]);
        let zone = self.labels.clone();
        let gauges: [(&str, &str, u64); 7] = [
            ("gateway_metrics_zone_size_bytes", "Size of the metrics shared memory zone.", u.region_bytes),
            ("gateway_metrics_zone_used_bytes", "Bytes of the zone in use.", u.used_bytes),
            ("gateway_metrics_zone_free_bytes", "Bytes of the zone still free.", u.free_bytes),
            ("gateway_metrics_series", "Series stored in the zone (overflow series excluded).", u.series),
            ("gateway_metrics_overflow_series", "Overflow series (label values __overflow__) in the zone.", u.overflow_series),
            ("gateway_metrics_max_series", "The cardinality cap (gateway_metrics_max_series).", spec.max_series),
            ("gateway_metrics_start_time_seconds", "Unix time at which the zone was created; counters restart from zero after it changes.", store.created()),
        ];
        for (name, help, v) in gauges {
            self.enc.family(name, help, MetricType::Gauge);
            self.enc.sample_u64(name, &zone, v);
        }
        self.enc.family(
            "gateway_metrics_dropped_updates_total",
            "Updates that did not reach their own series (redirected to the overflow series, or lost), by reason.",
            MetricType::Counter,
        );
        for r in DropReason::ALL {
            self.labels.clear();
            push_labels(
                &mut self.labels,
                &["zone", "reason"],
                &[spec.zone_name.as_bytes(), r.label().as_bytes()],
            );
            self.enc.sample_u64(
                "gateway_metrics_dropped_updates_total",
                &self.labels,
                store.drops(r),
            );
        }
        let counters: [(&str, &str, SelfCounter); 2] = [
            (
                "gateway_metrics_invalid_calls_total",
                "Calls from Lua rejected for invalid arguments.",
                SelfCounter::InvalidCalls,
            ),
            (
                "gateway_metrics_zone_resets_total",
                "Times the zone was re-initialised because it held an incompatible layout.",
                SelfCounter::ZoneResets,
            ),
        ];
        for (name, help, c) in counters {
            self.enc.family(name, help, MetricType::Counter);
            self.enc.sample_u64(name, &zone, store.self_counter(c));
        }
        self.counter_view(
            fam::UNPRICED,
            "gateway_metrics_unpriced_model_requests_total",
            "Requests with token usage for a model that has no gateway_metrics_model_price entry (cost not counted).",
            &["model"],
            &[Col::Label(0)],
            |v| v.first().map_or(0, |w| w.load(Ordering::Relaxed)),
        );
    }

    fn nginx(&mut self, n: &NginxStats) {
        let gauges = [
            (
                "nginx_connections_active",
                "Active client connections, including waiting ones.",
                n.active,
            ),
            (
                "nginx_connections_reading",
                "Connections where nginx is reading the request header.",
                n.reading,
            ),
            (
                "nginx_connections_writing",
                "Connections where nginx is writing the response.",
                n.writing,
            ),
            (
                "nginx_connections_waiting",
                "Idle keep-alive connections.",
                n.waiting,
            ),
        ];
        for (name, help, v) in gauges {
            self.enc.family(name, help, MetricType::Gauge);
            self.enc.sample_u64(name, b"", v);
        }
        let counters = [
            (
                "nginx_connections_accepted_total",
                "Client connections accepted.",
                n.accepted,
            ),
            (
                "nginx_connections_handled_total",
                "Client connections handled.",
                n.handled,
            ),
            ("nginx_http_requests_total", "Client requests.", n.requests),
        ];
        for (name, help, v) in counters {
            self.enc.family(name, help, MetricType::Counter);
            self.enc.sample_u64(name, b"", v);
        }
    }
}
