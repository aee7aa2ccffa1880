//! Histogram bucket bounds: parsing, validation and the bucket an observation falls into.

/// The default duration buckets, in seconds (LLM requests run from milliseconds to minutes).
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Time to first token, seconds.
pub const DEFAULT_TTFT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Output tokens per second.
pub const DEFAULT_THROUGHPUT_BUCKETS: [f64; 10] =
    [1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0];

/// Time per output token, seconds: the bounds OpenTelemetry's GenAI conventions advise for
/// `gen_ai.server.time_per_output_token`.
pub const DEFAULT_TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketsError {
    #[error("no bucket bounds given")]
    Empty,
    #[error("invalid bucket bound \"{0}\"")]
    Invalid(String),
    #[error("bucket bound \"{0}\" is not finite")]
    NotFinite(String),
    #[error("bucket bounds must be strictly increasing: {0} after {1}")]
    NotIncreasing(f64, f64),
    #[error("too many bucket bounds: {0}, at most {1}")]
    TooMany(usize, usize),
}

/// Parses and validates bucket bounds given as text (a directive's arguments).
pub fn parse_bounds<'a, I: IntoIterator<Item = &'a str>>(
    args: I,
) -> Result<Vec<f64>, BucketsError> {
    let mut out: Vec<f64> = Vec::new();
    for a in args {
        let v: f64 = a
            .trim()
            .parse()
            .map_err(|_| BucketsError::Invalid(a.to_string()))?;
        if !v.is_finite() {
            return Err(BucketsError::NotFinite(a.to_string()));
        }
        if let Some(&prev) = out.last() {
            if v <= prev {
                return Err(BucketsError::NotIncreasing(v, prev));
            }
        }
        out.push(v);
    }
    validate(&out)?;
    Ok(out)
}

/// Checks bounds built in code or read back from a zone.
pub fn validate(bounds: &[f64]) -> Result<(), BucketsError> {
    if bounds.is_empty() {
        return Err(BucketsError::Empty);
    }
    if bounds.len() > crate::store::MAX_BOUNDS {
        return Err(BucketsError::TooMany(
            bounds.len(),
            crate::store::MAX_BOUNDS,
        ));
    }
    for w in bounds.windows(2) {
        if w[1] <= w[0] || !w[1].is_finite() {
            return Err(BucketsError::NotIncreasing(w[1], w[0]));
        }
    }
    Ok(())
}

/// Index of the bucket for `v`: the first bound `>= v` (Prometheus `le` semantics), or
/// `bounds.len()` for the `+Inf` bucket. NaN lands in `+Inf`.
#[inline(always)]
pub fn bucket_index(bounds: &[f64], v: f64) -> usize {
    if bounds.len() <= 16 {
        bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
    } else {
        bounds.partition_point(|&b| b < v)
    }
}

/// The built-in histograms, each configured with its own bucket list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    /// Request duration (`gateway_metrics_buckets`).
    Duration,
    /// Time to first token (`gateway_metrics_ttft_buckets`).
    Ttft,
    /// Output tokens per second (`gateway_metrics_throughput_buckets`).
    Throughput,
    /// Time per output token (`gateway_metrics_tpot_buckets`).
    Tpot,
}

impl Histogram {
    pub const ALL: [Histogram; 4] = [
        Histogram::Duration,
        Histogram::Ttft,
        Histogram::Throughput,
        Histogram::Tpot,
    ];

    /// The directive that sets its buckets.
    pub fn directive(self) -> &'static str {
        match self {
            Histogram::Duration => "gateway_metrics_buckets",
            Histogram::Ttft => "gateway_metrics_ttft_buckets",
            Histogram::Throughput => "gateway_metrics_throughput_buckets",
            Histogram::Tpot => "gateway_metrics_tpot_buckets",
        }
    }
}

/// One value per built-in histogram (its bounds, whether they were set, its layout id...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histograms<T> {
    pub duration: T,
    pub ttft: T,
    pub throughput: T,
    pub tpot: T,
}

impl<T> Histograms<T> {
    pub fn get(&self, h: Histogram) -> &T {
        match h {
            Histogram::Duration => &self.duration,
            Histogram::Ttft => &self.ttft,
            Histogram::Throughput => &self.throughput,
            Histogram::Tpot => &self.tpot,
        }
    }

    pub fn get_mut(&mut self, h: Histogram) -> &mut T {
        match h {
            Histogram::Duration => &mut self.duration,
            Histogram::Ttft => &mut self.ttft,
            Histogram::Throughput => &mut self.throughput,
            Histogram::Tpot => &mut self.tpot,
        }
    }
}

impl Histograms<Vec<f64>> {
    /// The default bucket lists.
    pub fn default_bounds() -> Self {
        Histograms {
            duration: DEFAULT_DURATION_BUCKETS.to_vec(),
            ttft: DEFAULT_TTFT_BUCKETS.to_vec(),
            throughput: DEFAULT_THROUGHPUT_BUCKETS.to_vec(),
            tpot: DEFAULT_TPOT_BUCKETS.to_vec(),
        }
    }
}

/// Where each bucket of a histogram recorded with the bounds `from` goes among the buckets of
/// `to` (both with `+Inf` last): the smallest `to` bucket whose bound is at least the `from`
/// bucket's, the one that surely holds every observation the `from` bucket counted. Cumulative
/// counts stay monotone and the total count is unchanged.
pub fn remap(from: &[f64], to: &[f64]) -> Vec<usize> {
    from.iter()
        .map(|&b| bucket_index(to, b))
        .chain(std::iter::once(to.len()))
        .collect()
}

/// The `le` label value of a bound, formatted as Prometheus clients do (`1.0` → `"1"` is fine
/// for parsers; we keep the shortest round-trip form).
pub fn format_bound(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".to_string()
    } else {
        format!("{b}")
    }
}

/// A bucket bound as OpenMetrics wants `le` label values: the canonical number text that the
/// reference client libraries write (and their parsers check): the shortest digits that read
/// back as the same float, always with a fraction (`1.0`, `0.25`, `10.0`), in exponent form
/// below 1e-4 (`1e-05`) and from 1e6 up (`1e+06`), `+Inf` for infinity.
pub fn format_bound_canonical(b: f64) -> String {
    if b.is_nan() {
        return "NaN".into();
    }
    if b.is_infinite() {
        return if b > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if b == 0.0 {
        return if b.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Shortest round-trip digits and the decimal exponent, from Rust's `{:e}` ("1.5e-5").
    let sci = format!("{:e}", b.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if b < 0.0 { "-" } else { "" };
    let exponent_form = |digits: &str, exp: i32| {
        let (first, rest) = digits.split_at(1);
        let m = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    };
    if !(-4..16).contains(&exp) || (b > 0.0 && exp >= 6) {
        return exponent_form(&digits, exp);
    }
    let n = digits.len() as i32;
    let text = if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else if n > exp + 1 {
        let (int, frac) = digits.split_at((exp + 1) as usize);
        format!("{int}.{frac}")
    } else {
        format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
    };
    format!("{sign}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bounds_read_like_the_reference_clients() {
        for (v, want) in [
            (1.0, "1.0"),
            (0.005, "0.005"),
            (0.25, "0.25"),
            (2.5, "2.5"),
            (10.0, "10.0"),
            (60.0, "60.0"),
            (100000.0, "100000.0"),
            (1_000_000.0, "1e+06"),
            (1_500_000.0, "1.5e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000015, "1.5e-05"),
            (1e20, "1e+20"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.0, "-2.0"),
            (-1e-7, "-1e-07"),
            (0.0, "0.0"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(format_bound_canonical(v), want, "{v}");
            if v.is_finite() {
                assert_eq!(format_bound_canonical(v).parse::<f64>().unwrap(), v);
            }
        }
    }

    #[test]
    fn remap_puts_each_bucket_where_its_observations_surely_are() {
        let to = [0.1, 0.3, 0.5];
        // 0.2 -> le 0.3; 0.3 -> le 0.3; 0.6 -> +Inf; +Inf -> +Inf
        assert_eq!(remap(&[0.2, 0.3, 0.6], &to), vec![1, 1, 3, 3]);
        assert_eq!(remap(&[0.001, 0.002], &to), vec![0, 0, 3]);
        assert_eq!(remap(&to, &to), vec![0, 1, 2, 3]);
        assert_eq!(remap(&[], &to), vec![3]);
    }

    #[test]
    fn parse_accepts_increasing_bounds() {
        assert_eq!(
            parse_bounds(["0.5", "1", "2.5"]).unwrap(),
            vec![0.5, 1.0, 2.5]
        );
    }

    #[test]
    fn parse_rejects_bad_bounds() {
        assert_eq!(parse_bounds([]), Err(BucketsError::Empty));
        assert!(matches!(
            parse_bounds(["1", "x"]),
            Err(BucketsError::Invalid(_))
        ));
        assert!(matches!(
            parse_bounds(["1", "1"]),
            Err(BucketsError::NotIncreasing(..))
        ));
        assert!(matches!(
            parse_bounds(["2", "1"]),
            Err(BucketsError::NotIncreasing(..))
        ));
        assert!(matches!(
            parse_bounds(["inf"]),
            Err(BucketsError::NotFinite(_))
        ));
        assert!(matches!(
            parse_bounds(["NaN"]),
            Err(BucketsError::NotFinite(_))
        ));
        let many: Vec<String> = (1..=65).map(|i| i.to_string()).collect();
        assert!(matches!(
            parse_bounds(many.iter().map(|s| s.as_str())),
            Err(BucketsError::TooMany(65, 64))
        ));
    }

    #[test]
    fn bucket_index_uses_le_semantics() {
        let b = [0.1, 0.5, 1.0];
        assert_eq!(bucket_index(&b, 0.0), 0);
        assert_eq!(bucket_index(&b, 0.1), 0);
        assert_eq!(bucket_index(&b, 0.11), 1);
        assert_eq!(bucket_index(&b, 1.0), 2);
        assert_eq!(bucket_index(&b, 1.01), 3);
        assert_eq!(bucket_index(&b, f64::NAN), 3);
        assert_eq!(bucket_index(&b, -5.0), 0);
    }

    #[test]
    fn long_layouts_agree_with_linear_scan() {
        let b: Vec<f64> = (1..=40).map(|i| i as f64 * 0.5).collect();
        for i in 0..500 {
            let v = i as f64 * 0.05 - 1.0;
            let linear = b.iter().position(|&x| v <= x).unwrap_or(b.len());
            assert_eq!(bucket_index(&b, v), linear, "v={v}");
        }
    }

    #[test]
    fn bounds_format_shortest() {
        assert_eq!(format_bound(0.005), "0.005");
        assert_eq!(format_bound(1.0), "1");
        assert_eq!(format_bound(2.5), "2.5");
        assert_eq!(format_bound(f64::INFINITY), "+Inf");
    }
}
