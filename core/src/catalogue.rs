//! The built-in metric families: what is stored per request, and the views rendered from it.
//!
//! The hot path writes one *stored* series per request (`REQUEST`: a duration histogram keyed
//! by every request label); the families users query (`http_requests_total`,
//! `gateway_requests_total`, `namespace_requests_total`, `errors_total`, ...) are views of it,
//! summed when `/metrics` is rendered. That keeps a request to one lookup and a few atomic adds.

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
}

/// Label names of the stored families, in key order.
pub const ACTIVE_LABELS: [&str; 1] = ["namespace"];
pub const MODEL_LABELS: [&str; 2] = ["model", "namespace"];

/// Value slots of a `MODEL_TOKENS` series.
pub mod tokens {
    pub const INPUT: usize = 0;
    pub const OUTPUT: usize = 1;
    pub const CACHED_INPUT: usize = 2;
    pub const REASONING: usize = 3;
    /// f64 bits: USD.
    pub const COST: usize = 4;
    pub const N_VALUES: u8 = 5;
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
