//! What the directives mean, without nginx: model prices and declared families, checked and
//! built from a directive's arguments. The module's directive handlers convert nginx's
//! arguments, call these and log the error naming the directive.

use crate::buckets::{parse_bounds, BucketsError, DEFAULT_DURATION_BUCKETS};
use crate::catalogue::FAMILIES;
use crate::hash::family_id;
use crate::labels::{valid_label_name, valid_metric_name};
use crate::render::{CustomFamily, CustomKind};

/// Most labels a declared family may have.
pub const MAX_CUSTOM_LABELS: usize = 8;

/// Why a directive's arguments were refused; worded for `nginx -t`
/// (`<error> in "<directive>" directive`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Msg(&'static str),
    #[error("invalid {0} \"{1}\"")]
    Invalid(&'static str, String),
    #[error(transparent)]
    Buckets(#[from] BucketsError),
}

/// USD per 1M tokens of one model (`gateway_metrics_model_price`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Price of cached input tokens; the input price when not given.
    pub cached_input: Option<f64>,
    /// Price of prompt-cache writes (Anthropic bills them above the input price); the input
    /// price when not given.
    pub cache_write: Option<f64>,
}

impl Price {
    /// Parses `input=USD output=USD [cached_input=USD] [cache_write=USD]` (any order, each key
    /// once).
    pub fn parse(args: &[&str]) -> Result<Price, ConfigError> {
        if args.is_empty() {
            return Err(ConfigError::Msg(
                "no prices given (input=USD output=USD [cached_input=USD] [cache_write=USD] per 1M tokens)",
            ));
        }
        let mut p = Price::default();
        let mut seen = [false; 4];
        for s in args {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid("price", (*s).into()))?;
            let v: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| ConfigError::Invalid("price", (*s).into()))?;
            let i = match k {
                "input" => 0,
                "output" => 1,
                "cached_input" => 2,
                "cache_write" => 3,
                _ => {
                    return Err(ConfigError::Invalid(
                        "price key (input, output, cached_input, cache_write)",
                        k.into(),
                    ))
                }
            };
            if seen[i] {
                return Err(ConfigError::Invalid("duplicate price key", k.into()));
            }
            seen[i] = true;
            match i {
                0 => p.input = v,
                1 => p.output = v,
                2 => p.cached_input = Some(v),
                _ => p.cache_write = Some(v),
            }
        }
        Ok(p)
    }

    /// Cost in USD. `cached` and `cache_write` are parts of `input` (as the module counts them,
    /// see the README's token table): they are billed at their own prices instead of the input
    /// price; reasoning tokens are part of `output` and billed with it. Parts above the input
    /// are capped (no negative count).
    #[inline]
    pub fn cost(&self, input: u64, output: u64, cached: u64, cache_write: u64) -> f64 {
        let cached = cached.min(input);
        let cache_write = cache_write.min(input - cached);
        let fresh = input - cached - cache_write;
        let cached_price = self.cached_input.unwrap_or(self.input);
        let write_price = self.cache_write.unwrap_or(self.input);
        (fresh as f64 * self.input
            + cached as f64 * cached_price
            + cache_write as f64 * write_price
            + output as f64 * self.output)
            / 1_000_000.0
    }
}

/// Name prefixes kept for the module's families, present and future (and `up`, Prometheus'
/// own), beyond the names of the catalogue. `model_` is not one: other `model_*` names are free
/// (`model_accuracy_percent` is a custom metric of the design documents).
const RESERVED_PREFIXES: [&str; 10] = [
    "http_request",
    "gateway_request",
    "namespace_",
    "upstream_requests",
    "errors_total",
    "active_connections",
    "rate_limit_",
    "cache_",
    "gateway_metrics_",
    "nginx_",
];

/// Is this name the module's own (a family of the catalogue, or under one of its prefixes), or
/// Prometheus' `up`?
pub fn reserved_name(name: &str) -> bool {
    name == "up"
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || FAMILIES.iter().any(|f| f.name == name)
}

impl CustomFamily {
    /// A family declared with `gateway_metrics_counter|gauge|histogram NAME "help" LABEL...
    /// [buckets=a,b,c]`, checked against the families declared before it.
    pub fn declare(
        kind: CustomKind,
        args: &[&str],
        declared: &[CustomFamily],
    ) -> Result<CustomFamily, ConfigError> {
        let name = args.first().copied().unwrap_or("");
        // ':' is reserved for recording rules; promtool warns about it in exposed names.
        if !valid_metric_name(name) || name.contains(':') {
            return Err(ConfigError::Invalid("metric name", name.into()));
        }
        if declared.iter().any(|f| f.name == name) {
            return Err(ConfigError::Invalid("duplicate metric", name.into()));
        }
        if reserved_name(name) {
            return Err(ConfigError::Invalid(
                "metric name: the module emits it itself",
                name.into(),
            ));
        }
        // Prometheus naming rules that keep the page lint-clean and the sample names
        // unambiguous (a histogram "x" owns x_bucket, x_sum and x_count).
        if kind == CustomKind::Counter && !name.ends_with("_total") {
            return Err(ConfigError::Invalid(
                "counter name (must end in _total)",
                name.into(),
            ));
        }
        if kind != CustomKind::Counter
            && ["_total", "_bucket", "_sum", "_count", "_created"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            return Err(ConfigError::Invalid(
                "metric name (only counters end in _total; _bucket, _sum, _count and _created are reserved)",
                name.into(),
            ));
        }
        let id = family_id(name);
        if declared.iter().any(|f| f.id == id) {
            return Err(ConfigError::Invalid(
                "metric name (hash collision, rename it)",
                name.into(),
            ));
        }
        let help = args.get(1).copied().unwrap_or("");
        if help.trim().is_empty() {
            return Err(ConfigError::Msg(
                "missing help text (NAME \"help\" LABEL...)",
            ));
        }
        let mut labels: Vec<String> = Vec::new();
        let mut bounds = Vec::new();
        for &s in args.iter().skip(2) {
            if let Some(list) = s.strip_prefix("buckets=") {
                if kind != CustomKind::Histogram {
                    return Err(ConfigError::Msg("buckets= is only valid for histograms"));
                }
                if !bounds.is_empty() {
                    return Err(ConfigError::Msg("duplicate buckets="));
                }
                bounds = parse_bounds(list.split(','))?;
                continue;
            }
            if !valid_label_name(s) {
                return Err(ConfigError::Invalid("label name", s.into()));
            }
            if labels.iter().any(|l| l == s) {
                return Err(ConfigError::Invalid("duplicate label name", s.into()));
            }
            labels.push(s.to_string());
        }
        if labels.len() > MAX_CUSTOM_LABELS {
            return Err(ConfigError::Msg("too many labels (at most 8)"));
        }
        if kind == CustomKind::Histogram && bounds.is_empty() {
            bounds = DEFAULT_DURATION_BUCKETS.to_vec();
        }
        Ok(CustomFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            labels,
            bounds,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_in_any_order_and_refuse_bad_values() {
        let p = Price::parse(&["output=10", "input=2.5", "cached_input=1.25"]).unwrap();
        assert_eq!((p.input, p.output, p.cached_input), (2.5, 10.0, Some(1.25)));
        assert_eq!(Price::parse(&["input=1"]).unwrap().cached_input, None);
        for bad in [
            &[][..],
            &["input"],
            &["input=abc"],
            &["input=-1"],
            &["input=nan"],
            &["input=1e999"],
            &["foo=1"],
            &["input=1", "input=2"],
        ] {
            assert!(Price::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Price::parse(&["input=1", "input=2"]),
            Err(ConfigError::Invalid("duplicate price key", "input".into()))
        );
    }

    #[test]
    fn cost_bills_cached_input_at_its_price_and_never_below_zero() {
        let p = Price {
            input: 2.5,
            output: 10.0,
            cached_input: Some(1.25),
            cache_write: None,
        };
        // 1M input of which 400k cached, 200k output
        let c = p.cost(1_000_000, 200_000, 400_000, 0);
        assert!(
            (c - (0.6 * 2.5 + 0.4 * 1.25 + 0.2 * 10.0)).abs() < 1e-12,
            "{c}"
        );
        // cached above input is capped (no negative uncached count)
        assert_eq!(p.cost(10, 0, 50, 0), 10.0 * 1.25 / 1e6);
        // without a cached price, cached tokens cost the input price
        let q = Price {
            cached_input: None,
            ..p
        };
        assert_eq!(q.cost(100, 0, 40, 0), q.cost(100, 0, 0, 0));
        assert_eq!(p.cost(0, 0, 0, 0), 0.0);
        // cache writes at their price (Anthropic: 1.25x input), capped by what input leaves
        let w = Price {
            cache_write: Some(3.75),
            ..p
        };
        let c = w.cost(1_000_000, 0, 200_000, 300_000);
        assert!(
            (c - (0.5 * 2.5 + 0.2 * 1.25 + 0.3 * 3.75)).abs() < 1e-12,
            "{c}"
        );
        assert_eq!(w.cost(10, 0, 4, 50), (6.0 * 3.75 + 4.0 * 1.25) / 1e6);
        // without a write price, writes cost the input price
        assert_eq!(p.cost(100, 0, 0, 60), p.cost(100, 0, 0, 0));
    }

    #[test]
    fn declared_families_follow_the_naming_rules() {
        let c = CustomFamily::declare(
            CustomKind::Counter,
            &["tool_calls_total", "Tool calls.", "tool"],
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.labels.clone(), c.bounds.len()),
            (vec!["tool".to_string()], 0)
        );
        let h =
            CustomFamily::declare(CustomKind::Histogram, &["prompt_chars", "Size."], &[]).unwrap();
        assert_eq!(h.bounds, DEFAULT_DURATION_BUCKETS.to_vec());
        let h = CustomFamily::declare(
            CustomKind::Histogram,
            &["prompt_chars", "Size.", "model", "buckets=100,1000"],
            &[],
        )
        .unwrap();
        assert_eq!(h.bounds, vec![100.0, 1000.0]);
        assert!(CustomFamily::declare(
            CustomKind::Gauge,
            &["model_accuracy_percent", "Accuracy.", "model"],
            &[]
        )
        .is_ok());
        let bad: [(CustomKind, &[&str]); 14] = [
            (CustomKind::Counter, &["tool_calls", "help"]),
            (CustomKind::Gauge, &["level_total", "help"]),
            (CustomKind::Gauge, &["x_bucket", "help"]),
            (CustomKind::Gauge, &["a:b", "help"]),
            (CustomKind::Gauge, &["9lives", "help"]),
            (CustomKind::Gauge, &["level"]),
            (CustomKind::Gauge, &["level", "  "]),
            (CustomKind::Gauge, &["level", "help", "a", "a"]),
            (CustomKind::Gauge, &["level", "help", "le-bad"]),
            (CustomKind::Gauge, &["level", "help", "buckets=1,2"]),
            (CustomKind::Histogram, &["h", "help", "buckets=2,1"]),
            (CustomKind::Counter, &["model_cost_usd_total", "help"]),
            (CustomKind::Gauge, &["nginx_anything", "help"]),
            (
                CustomKind::Gauge,
                &["many", "help", "a", "b", "c", "d", "e", "f", "g", "h", "i"],
            ),
        ];
        for (kind, args) in bad {
            assert!(CustomFamily::declare(kind, args, &[]).is_err(), "{args:?}");
        }
        assert!(CustomFamily::declare(CustomKind::Gauge, &["up", "help"], &[]).is_err());
        let first = [c];
        assert_eq!(
            CustomFamily::declare(CustomKind::Counter, &["tool_calls_total", "Again."], &first),
            Err(ConfigError::Invalid(
                "duplicate metric",
                "tool_calls_total".into()
            ))
        );
    }

    #[test]
    fn reserved_names() {
        for n in [
            "http_requests_total",
            "gateway_metrics_series",
            "up",
            "cache_hits_total",
        ] {
            assert!(reserved_name(n), "{n}");
        }
        for n in [
            "upstream_latency",
            "model_accuracy_percent",
            "tool_calls_total",
            "upx",
        ] {
            assert!(!reserved_name(n), "{n}");
        }
    }
}
