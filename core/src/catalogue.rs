//! The built-in metric families: what is stored per request, and the views rendered from it.
//!
//! The hot path writes one *stored* series per request (`REQUEST`: a duration histogram keyed
//! by every request label); the families users query (`http_requests_total`,
//! `gateway_requests_total`, `namespace_requests_total`, `errors_total`, ...) are views of it,
//! summed when `/metrics` is rendered. That keeps a request to one lookup and a few atomic adds.

use crate::expo::MetricType;

/// Stored family ids (series header `family` field). Declared families use name hashes with the
/// top bit set (see [`crate::hash::family_id`]), so they never collide with these.
pub mod fam {
    /// `{method, endpoint, status_code, namespace, upstream, cut}`: duration histogram. `cut` is
    /// empty for a response sent whole, else the [`super::CutReason`] label of how it was cut.
    pub const REQUEST: u32 = 1;
    /// `{namespace}`: in-flight requests, an i64 gauge.
    pub const ACTIVE: u32 = 2;
    /// `{model, namespace, status}`: model request duration histogram.
    pub const MODEL_REQUEST: u32 = 3;
    /// `{model, namespace}`: token and cost counters, see [`super::tokens`].
    pub const MODEL_TOKENS: u32 = 4;
    /// `{model, namespace}`: time-to-first-token histogram.
    pub const TTFT: u32 = 5;
    /// `{model, namespace}`: output tokens per second histogram.
    pub const THROUGHPUT: u32 = 6;
    /// `{namespace, rule_type}`: `[hits, violations]`.
    pub const RATE_LIMIT: u32 = 7;
    /// `{cache_type}`: `[hits, misses]`.
    pub const CACHE: u32 = 8;
    /// `{model}`: requests whose model has no price.
    pub const UNPRICED: u32 = 9;
    /// `{model, namespace, reason}`: responses whose usage could not be read, see
    /// [`super::UsageMissing`].
    pub const USAGE_MISSING: u32 = 10;
    /// `{model, namespace}`: time-per-output-token histogram.
    pub const TPOT: u32 = 11;
    /// One more than the largest id above.
    pub const END: usize = 12;
}

/// One family of the exposition: name, help text, type and label names. The renderer writes
/// these, the check of declared families refuses their names ([`crate::config::reserved_name`])
/// and the README's metric tables list them (a test compares): one place for all three.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

/// Declares the families (`ID = "name", Kind, [labels], "help";`) and [`FAMILIES`], in page order.
macro_rules! families {
    ($($id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        /// The built-in families, one constant each.
        pub mod families {
            use super::{Family, MetricType};
            $(
                #[doc = $help]
                pub const $id: Family = Family {
                    name: $name,
                    help: $help,
                    kind: MetricType::$kind,
                    labels: &[$($label),*],
                };
            )*
        }
        /// Every built-in family, in the order of the page.
        pub const FAMILIES: &[&Family] = &[$(&families::$id),*];
    };
}

families! {
    HTTP_REQUESTS = "http_requests_total", Counter,
        ["method", "endpoint", "status_code", "namespace", "upstream"],
        "HTTP requests handled by the gateway.";
    HTTP_REQUEST_DURATION = "http_request_duration_seconds", Histogram,
        ["method", "endpoint", "namespace", "upstream"],
        "HTTP request duration in seconds, from the first request byte to the last response byte.";
    GATEWAY_REQUESTS = "gateway_requests_total", Counter, ["method", "path", "namespace"],
        "Gateway requests by method, path and namespace.";
    GATEWAY_REQUEST_DURATION = "gateway_request_duration_seconds", Histogram,
        ["method", "path", "namespace"],
        "Gateway request duration in seconds by method, path and namespace.";
    NAMESPACE_REQUESTS = "namespace_requests_total", Counter, ["namespace", "status"],
        "Requests per namespace; status is error for an HTTP status of 400 or more or a response cut short.";
    UPSTREAM_REQUESTS = "upstream_requests_total", Counter, ["upstream", "status"],
        "Responses that came from an upstream; status is error for an HTTP status of 400 or more or a response cut short.";
    ERRORS = "errors_total", Counter, ["error_type", "namespace", "upstream"],
        "Requests that ended in an HTTP error or whose response was cut short, by error type.";
    ACTIVE_CONNECTIONS = "active_connections", Gauge, ["namespace"],
        "Requests in flight per namespace (past the access phases, not yet finalized).";
    MODEL_REQUESTS = "model_requests_total", Counter, ["model", "namespace", "status"],
        "Requests per model; status is success (HTTP status below 400) or error.";
    MODEL_REQUEST_DURATION = "model_request_duration_seconds", Histogram, ["model", "namespace"],
        "Model request duration in seconds.";
    MODEL_TOKENS_INPUT = "model_tokens_input_total", Counter, ["model", "namespace"],
        "Input (prompt) tokens as reported by the provider, cached input included.";
    MODEL_TOKENS_OUTPUT = "model_tokens_output_total", Counter, ["model", "namespace"],
        "Output (completion) tokens as reported by the provider, reasoning included.";
    NAMESPACE_TOKENS = "namespace_tokens_total", Counter, ["namespace", "token_type"],
        "Tokens per namespace by type: input and output are the provider's totals; cached_input, cache_write and reasoning are the parts of them the provider reported separately.";
    MODEL_COST = "model_cost_usd_total", Counter, ["model", "namespace"],
        "Cost in USD from the configured price table (gateway_metrics_model_price).";
    MODEL_TTFT = "model_time_to_first_token_seconds", Histogram, ["model", "namespace"],
        "Time to first token of streamed responses, in seconds.";
    MODEL_THROUGHPUT = "model_throughput_tokens_per_second", Histogram, ["model", "namespace"],
        "Output tokens per second of generation time (request time minus time to first token when known).";
    MODEL_TPOT = "model_time_per_output_token_seconds", Histogram, ["model", "namespace"],
        "Time per output token after the first, in seconds: (request time - time to first token) / (output tokens - 1), for streams of 2 or more output tokens.";
    MODEL_USAGE_MISSING = "model_usage_missing_total", Counter, ["model", "namespace", "reason"],
        "Responses whose token usage could not be read (never estimated), by reason.";
    RATE_LIMIT_HITS = "rate_limit_hits_total", Counter, ["namespace", "rule_type"],
        "Requests that hit a rate limit (delayed, throttled or rejected).";
    RATE_LIMIT_VIOLATIONS = "rate_limit_violations_total", Counter, ["namespace", "rule_type"],
        "Requests rejected by a rate limit.";
    CACHE_HITS = "cache_hits_total", Counter, ["cache_type"], "Cache lookups that hit.";
    CACHE_MISSES = "cache_misses_total", Counter, ["cache_type"], "Cache lookups that missed.";
    ZONE_SIZE = "gateway_metrics_zone_size_bytes", Gauge, ["zone"],
        "Size of the metrics shared memory zone.";
    ZONE_USED = "gateway_metrics_zone_used_bytes", Gauge, ["zone"], "Bytes of the zone in use.";
    ZONE_FREE = "gateway_metrics_zone_free_bytes", Gauge, ["zone"], "Bytes of the zone still free.";
    SERIES = "gateway_metrics_series", Gauge, ["zone"],
        "Series stored in the zone (overflow series excluded).";
    OVERFLOW_SERIES = "gateway_metrics_overflow_series", Gauge, ["zone"],
        "Overflow series (label values __overflow__) in the zone.";
    MAX_SERIES = "gateway_metrics_max_series", Gauge, ["zone"],
        "The cardinality cap (gateway_metrics_max_series).";
    START_TIME = "gateway_metrics_start_time_seconds", Gauge, ["zone"],
        "Unix time at which the zone was created; counters restart from zero after it changes.";
    DROPPED_UPDATES = "gateway_metrics_dropped_updates_total", Counter, ["zone", "reason"],
        "Updates that did not reach their own series (redirected to the overflow series, or lost), by reason.";
    INVALID_CALLS = "gateway_metrics_invalid_calls_total", Counter, ["zone"],
        "Calls from Lua rejected for invalid arguments.";
    ZONE_RESETS = "gateway_metrics_zone_resets_total", Counter, ["zone"],
        "Times the zone was re-initialised because it held an incompatible layout.";
    UNPRICED = "gateway_metrics_unpriced_model_requests_total", Counter, ["model"],
        "Requests with token usage for a model that has no gateway_metrics_model_price entry (cost not counted).";
    NGINX_ACTIVE = "nginx_connections_active", Gauge, [],
        "Active client connections, including waiting ones.";
    NGINX_READING = "nginx_connections_reading", Gauge, [],
        "Connections where nginx is reading the request header.";
    NGINX_WRITING = "nginx_connections_writing", Gauge, [],
        "Connections where nginx is writing the response.";
    NGINX_WAITING = "nginx_connections_waiting", Gauge, [], "Idle keep-alive connections.";
    NGINX_ACCEPTED = "nginx_connections_accepted_total", Counter, [], "Client connections accepted.";
    NGINX_HANDLED = "nginx_connections_handled_total", Counter, [], "Client connections handled.";
    NGINX_REQUESTS = "nginx_http_requests_total", Counter, [], "Client requests.";
}

/// The families shown on the page: a bit per entry of [`FAMILIES`] (all by default).
/// `gateway_metrics_views` switches off those an operator does not graph (e.g. the `gateway_*`
/// copies of the `http_*` families); the zone's self-metrics always stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Views(u64);

impl Default for Views {
    fn default() -> Self {
        Views(u64::MAX)
    }
}

impl Views {
    /// Parses `gateway_metrics_views` arguments: `-family` switches one off, `+family` (or
    /// `family`) back on, applied in order from all on.
    pub fn parse(args: &[&str]) -> Result<Views, crate::config::ConfigError> {
        use crate::config::ConfigError;
        if args.is_empty() {
            return Err(ConfigError::Msg("no families given (-family or +family)"));
        }
        let mut v = Views::default();
        for a in args {
            let (on, name) = match a.strip_prefix('-') {
                Some(n) => (false, n),
                None => (true, a.strip_prefix('+').unwrap_or(a)),
            };
            let i = FAMILIES
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| ConfigError::Invalid("family", (*a).into()))?;
            if !on && FAMILIES[i].name.starts_with("gateway_metrics_") {
                return Err(ConfigError::Invalid(
                    "family: the zone's self-metrics cannot be switched off",
                    (*a).into(),
                ));
            }
            v.0 = if on { v.0 | 1 << i } else { v.0 & !(1 << i) };
        }
        Ok(v)
    }

    /// Is this family of the catalogue shown?
    pub fn shows(self, def: &Family) -> bool {
        FAMILIES
            .iter()
            .position(|f| std::ptr::eq(*f, def) || f.name == def.name)
            .is_none_or(|i| self.0 & 1 << i != 0)
    }
}

/// Value slots of a `MODEL_TOKENS` series.
pub mod tokens {
    pub const INPUT: usize = 0;
    pub const OUTPUT: usize = 1;
    pub const CACHED_INPUT: usize = 2;
    pub const REASONING: usize = 3;
    /// f64 bits: USD.
    pub const COST: usize = 4;
    /// Prompt-cache writes (after the cost: a series stored by an older build, without it,
    /// keeps its first five slots' meaning).
    pub const CACHE_WRITE: usize = 5;
    pub const N_VALUES: u8 = 6;
    /// The exemplar slots of a token series, in order: the input tokens, the output tokens and
    /// the cost a request added.
    pub const EXEMPLAR_SLOTS: [usize; 3] = [INPUT, OUTPUT, COST];
    /// The `token_type` label of each count slot, in `namespace_tokens_total`'s order; the
    /// last three only appear once some were reported (they are parts of input and output).
    pub const TYPES: [(usize, &str); 5] = [
        (INPUT, "input"),
        (OUTPUT, "output"),
        (CACHED_INPUT, "cached_input"),
        (CACHE_WRITE, "cache_write"),
        (REASONING, "reasoning"),
    ];
}

/// Why a response's token usage was not recorded (`model_usage_missing_total{reason}`). Usage is
/// never estimated: a response without readable usage is counted here instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageMissing {
    /// The response was complete but carried no usage (e.g. an OpenAI stream requested without
    /// `stream_options.include_usage`).
    Absent,
    /// The client or the upstream cut the response before the usage arrived.
    Aborted,
    /// The body had a `Content-Encoding` the module does not read (e.g. gzip).
    Encoded,
    /// The body was not what its format says (not JSON, a bad count).
    Malformed,
    /// Part of the body went to a temporary file (nginx's proxy buffers were full), which the
    /// module does not read back.
    Unreadable,
}

impl UsageMissing {
    pub const ALL: [UsageMissing; 5] = [
        UsageMissing::Absent,
        UsageMissing::Aborted,
        UsageMissing::Encoded,
        UsageMissing::Malformed,
        UsageMissing::Unreadable,
    ];

    /// Why, for an error message (the Lua API's).
    pub fn message(self) -> &'static std::ffi::CStr {
        match self {
            UsageMissing::Absent => c"usage missing: the response reported none",
            UsageMissing::Aborted => c"usage missing: the response was cut before it",
            UsageMissing::Encoded => c"usage missing: the body is compressed",
            UsageMissing::Malformed => c"usage missing: the body could not be read",
            UsageMissing::Unreadable => c"usage missing: the body went to a temporary file",
        }
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            UsageMissing::Absent => "absent",
            UsageMissing::Aborted => "aborted",
            UsageMissing::Encoded => "encoded",
            UsageMissing::Malformed => "malformed",
            UsageMissing::Unreadable => "unreadable",
        }
    }
}

/// `success` for 1xx-3xx, `error` otherwise (including 0: no response was produced).
#[inline]
pub fn status_class(code: u16) -> &'static str {
    if (100..400).contains(&code) {
        "success"
    } else {
        "error"
    }
}

/// The `error_type` of a status code, or `None` when it is not an error. Finer types where the
/// status code tells more than its class; documented in the README.
pub fn error_type(code: u16) -> Option<&'static str> {
    Some(match code {
        100..=399 => return None,
        408 => "client_timeout",
        413 => "request_too_large",
        429 => "rate_limited",
        499 => "client_closed",
        400..=498 => "client_error",
        502 => "upstream_error",
        503 => "service_unavailable",
        504 => "upstream_timeout",
        500..=599 => "server_error",
        _ => "unknown",
    })
}

/// Why a response whose status and header were sent did not reach the client whole. nginx's
/// status code stays what it was (usually 200); these make the request an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The client closed the connection (or a write to it failed) before the end.
    ClientClosed,
    /// The client did not take the response within `send_timeout`.
    ClientTimeout,
    /// The upstream sent nothing for its read timeout in the middle of the body.
    UpstreamTimeout,
    /// The upstream closed or reset the connection, or sent a malformed body, mid-body.
    UpstreamError,
    /// The response ended without its last part for another reason (e.g. a handler error).
    Incomplete,
}

impl CutReason {
    /// The `error_type` label (and the stored `cut` label).
    pub fn label(self) -> &'static str {
        match self {
            CutReason::ClientClosed => "client_closed",
            CutReason::ClientTimeout => "client_timeout",
            CutReason::UpstreamTimeout => "upstream_timeout",
            CutReason::UpstreamError => "upstream_error",
            CutReason::Incomplete => "incomplete_response",
        }
    }
}

/// Every `error_type` value, for documentation and tests.
pub const ERROR_TYPES: [&str; 11] = [
    "client_timeout",
    "request_too_large",
    "rate_limited",
    "client_closed",
    "client_error",
    "upstream_error",
    "service_unavailable",
    "upstream_timeout",
    "server_error",
    "unknown",
    "incomplete_response",
];

/// Parses a stored `status_code` label.
pub fn parse_status(v: &[u8]) -> u16 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_switch_families_off_and_on_but_never_self_metrics() {
        assert!(FAMILIES.len() <= 64, "Views holds a bit per family");
        let v = Views::parse(&[
            "-gateway_requests_total",
            "-gateway_request_duration_seconds",
        ])
        .unwrap();
        assert!(!v.shows(&families::GATEWAY_REQUESTS));
        assert!(!v.shows(&families::GATEWAY_REQUEST_DURATION));
        assert!(v.shows(&families::HTTP_REQUESTS));
        let v = Views::parse(&["-errors_total", "+errors_total"]).unwrap();
        assert_eq!(v, Views::default());
        assert!(Views::parse(&["-no_such_family"]).is_err());
        assert!(Views::parse(&["-gateway_metrics_series"]).is_err());
        assert!(Views::parse(&[]).is_err());
    }

    #[test]
    fn family_names_are_unique_and_labels_prometheus_names() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        for f in FAMILIES {
            assert!(crate::labels::valid_metric_name(f.name), "{}", f.name);
            assert_eq!(
                f.kind == MetricType::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty());
        }
    }

    /// The README's metric tables list every family with its labels.
    #[test]
    fn readme_lists_every_family() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        for f in FAMILIES {
            let row = readme
                .lines()
                .filter(|l| l.starts_with('|') && l.contains(&format!("`{}`", f.name)))
                .find(|l| {
                    let kind = l.split('|').nth(2).unwrap_or("").trim();
                    ["counter", "gauge", "histogram"].contains(&kind)
                })
                .unwrap_or_else(|| panic!("README has no table row for {}", f.name));
            for l in f.labels {
                assert!(
                    row.contains(l),
                    "README row of {} lacks label {l}: {row}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "success");
        assert_eq!(status_class(304), "success");
        assert_eq!(status_class(400), "error");
        assert_eq!(status_class(0), "error");
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(200), None);
        assert_eq!(error_type(404), Some("client_error"));
        assert_eq!(error_type(499), Some("client_closed"));
        assert_eq!(error_type(504), Some("upstream_timeout"));
        assert_eq!(error_type(500), Some("server_error"));
        assert_eq!(error_type(0), Some("unknown"));
        for c in [0u16, 400, 408, 413, 429, 499, 500, 502, 503, 504] {
            assert!(ERROR_TYPES.contains(&error_type(c).unwrap()));
        }
    }
}
