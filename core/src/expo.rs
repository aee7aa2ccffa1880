//! Low-level writer of the exposition formats: the Prometheus text format (version 0.0.4) and
//! OpenMetrics 1.0.0 (the same lines, plus counter families named without `_total`, `# UNIT`,
//! `_created` samples, exemplars and `# EOF`).

use crate::exemplar::Exemplar;
use crate::labels::{escape_help, escape_label_value};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Appends `v` in decimal without going through `fmt`.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(format_u64(&mut buf, v));
}

/// "00" to "99": two digits per division when formatting integers.
const DIGITS2: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Formats `v` in decimal into `buf`, returning the digits (no allocation).
#[inline]
pub fn format_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    &buf[i..]
}

/// Appends a float the way Prometheus parses it (`NaN`, `+Inf`, `-Inf`, or decimal).
pub fn push_f64(out: &mut Vec<u8>, v: f64) {
    use std::io::Write;
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else if v == v.trunc() && v.abs() < 1e15 {
        if v < 0.0 {
            out.push(b'-');
        }
        push_u64(out, v.abs() as u64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Appends Unix milliseconds as seconds with three decimals (`1700000000.123`).
pub fn push_millis(out: &mut Vec<u8>, ms: u64) {
    push_u64(out, ms / 1000);
    let frac = ms % 1000;
    out.push(b'.');
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// Builds the inside of a label set, `a="x",b="y"`, escaping values.
pub fn push_labels(out: &mut Vec<u8>, names: &[&str], values: &[&[u8]]) {
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(out, v);
        out.push(b'"');
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    U64(u64),
    I64(i64),
    F64(f64),
    /// A float already formatted by [`push_f64`] (kept from an earlier page).
    Text(&'a [u8]),
    /// Unix milliseconds, written as seconds ([`push_millis`]).
    Millis(u64),
}

/// The unit OpenMetrics' `# UNIT` gives a family, from its name's suffix.
pub fn unit_of(family: &str) -> Option<&'static str> {
    ["seconds", "bytes", "usd"].into_iter().find(|u| {
        family
            .strip_suffix(u)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('_'))
    })
}

/// What OpenMetrics adds to a series: its creation time and exemplars.
#[derive(Clone, Copy, Default)]
pub struct SeriesExtras<'x> {
    /// When the series was created, Unix milliseconds (0: unknown, no `_created` line).
    pub created_ms: u64,
    /// The exemplar of each bucket (histograms; `None`: none there) or of the counter (one).
    pub exemplars: &'x [Option<(Exemplar, f64)>],
}

/// Writes families and samples into a byte buffer.
pub struct Encoder<'o> {
    pub out: &'o mut Vec<u8>,
    /// OpenMetrics rather than the text format.
    pub om: bool,
}

/// A counter's family name in OpenMetrics: its sample name without `_total`.
pub fn om_family(name: &str, t: MetricType) -> &str {
    match t {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

impl<'o> Encoder<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        Encoder { out, om: false }
    }

    /// An encoder of OpenMetrics (`om`) or of the text format.
    pub fn with_format(out: &'o mut Vec<u8>, om: bool) -> Self {
        Encoder { out, om }
    }

    /// `# HELP` and `# TYPE` lines (and `# UNIT` in OpenMetrics where the name ends in a unit);
    /// call once per family, before its samples.
    pub fn family(&mut self, name: &str, help: &str, t: MetricType) {
        let name = if self.om { om_family(name, t) } else { name };
        self.out.extend_from_slice(b"# HELP ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        if self.om {
            // OpenMetrics' HELP is an escaped string: quotes are escaped too.
            for part in help.split('"').enumerate() {
                if part.0 > 0 {
                    self.out.extend_from_slice(b"\\\"");
                }
                escape_help(self.out, part.1);
            }
        } else {
            escape_help(self.out, help);
        }
        self.out.extend_from_slice(b"\n# TYPE ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(t.as_str().as_bytes());
        self.out.push(b'\n');
        if let (true, Some(unit)) = (self.om, unit_of(name)) {
            self.out.extend_from_slice(b"# UNIT ");
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b' ');
            self.out.extend_from_slice(unit.as_bytes());
            self.out.push(b'\n');
        }
    }

    /// OpenMetrics' `_created` line of a series of the family `base` (its OpenMetrics name),
    /// when its creation time is known; nothing in the text format.
    pub fn created(&mut self, base: &str, labels: &[u8], created_ms: u64) {
        if self.om && created_ms != 0 {
            self.line(base, "_created", labels, None, Value::Millis(created_ms));
        }
    }

    /// The page's last line: `# EOF` in OpenMetrics, nothing in the text format.
    pub fn eof(&mut self) {
        if self.om {
            self.out.extend_from_slice(b"# EOF\n");
        }
    }

    /// Writes one sample line, `name{labels,extra} value`. `labels` is a prebuilt label set
    /// (see [`push_labels`]); `extra` one more label (name, value written as is), e.g. a
    /// histogram bucket's `le`. Every sample of the page is written here or by
    /// [`Encoder::histogram`] (which repeats a bucket line's start), and ends in [`Encoder::end`].
    #[inline]
    pub fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[u8],
        extra: Option<(&str, &[u8])>,
        v: Value,
    ) {
        self.line_ex(name, suffix, labels, extra, v, None);
    }

    /// [`Encoder::line`] with an exemplar (its exemplar and the value it shows), written in
    /// OpenMetrics only.
    #[inline]
    pub fn line_ex(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[u8],
        extra: Option<(&str, &[u8])>,
        v: Value,
        ex: Option<(Exemplar, f64)>,
    ) {
        let out = &mut *self.out;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        match extra {
            Some((n, x)) => {
                out.push(b'{');
                if !labels.is_empty() {
                    out.extend_from_slice(labels);
                    out.push(b',');
                }
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b"=\"");
                out.extend_from_slice(x);
                out.extend_from_slice(b"\"} ");
            }
            None if labels.is_empty() => out.push(b' '),
            None => {
                out.push(b'{');
                out.extend_from_slice(labels);
                out.extend_from_slice(b"} ");
            }
        }
        self.end_ex(v, ex);
    }

    /// A sample's value and the end of its line.
    #[inline]
    pub fn end(&mut self, v: Value) {
        self.end_ex(v, None);
    }

    /// [`Encoder::end`] with an exemplar (OpenMetrics only).
    #[inline]
    pub fn end_ex(&mut self, v: Value, ex: Option<(Exemplar, f64)>) {
        let out = &mut *self.out;
        match v {
            Value::U64(v) => push_u64(out, v),
            Value::I64(v) => {
                if v < 0 {
                    out.push(b'-');
                }
                push_u64(out, v.unsigned_abs());
            }
            Value::F64(v) => push_f64(out, v),
            Value::Text(t) => out.extend_from_slice(t),
            Value::Millis(ms) => push_millis(out, ms),
        }
        if let (true, Some((e, shown))) = (self.om, ex) {
            crate::exemplar::push(out, &e, shown);
        }
        out.push(b'\n');
    }

    /// A sample with an integer value; `labels` is a prebuilt label set (see [`push_labels`]).
    #[inline]
    pub fn sample_u64(&mut self, name: &str, labels: &[u8], v: u64) {
        self.line(name, "", labels, None, Value::U64(v));
    }

    pub fn sample_i64(&mut self, name: &str, labels: &[u8], v: i64) {
        self.line(name, "", labels, None, Value::I64(v));
    }

    pub fn sample_f64(&mut self, name: &str, labels: &[u8], v: f64) {
        self.line(name, "", labels, None, Value::F64(v));
    }

    /// A whole histogram: cumulative `_bucket` lines from non-cumulative `buckets` (the last one
    /// is `+Inf`), then `_sum` and `_count`. `le` holds the formatted bounds.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[u8],
        le: &[String],
        buckets: &[u64],
        sum: Value,
    ) {
        self.histogram_ex(name, labels, le, buckets, sum, SeriesExtras::default());
    }

    /// [`Encoder::histogram`] with what OpenMetrics adds: the buckets' exemplars and the
    /// `_created` line.
    pub fn histogram_ex(
        &mut self,
        name: &str,
        labels: &[u8],
        le: &[String],
        buckets: &[u64],
        sum: Value,
        x: SeriesExtras,
    ) {
        // The start of a bucket line, `name_bucket{labels,le="`, is written once and copied.
        let start = self.out.len();
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"_bucket{");
        if !labels.is_empty() {
            self.out.extend_from_slice(labels);
            self.out.push(b',');
        }
        self.out.extend_from_slice(b"le=\"");
        let head = start..self.out.len();
        let mut cum = 0u64;
        for (i, b) in buckets.iter().enumerate() {
            cum = cum.wrapping_add(*b);
            if i > 0 {
                self.out.extend_from_within(head.clone());
            }
            let le = le.get(i).map_or("+Inf", |s| s.as_str());
            self.out.extend_from_slice(le.as_bytes());
            self.out.extend_from_slice(b"\"} ");
            self.end_ex(Value::U64(cum), x.exemplars.get(i).copied().flatten());
        }
        if buckets.is_empty() {
            self.out.truncate(start);
        }
        self.line(name, "_sum", labels, None, sum);
        self.line(name, "_count", labels, None, Value::U64(cum));
        self.created(name, labels, x.created_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_floats() {
        let mut o = Vec::new();
        for v in [
            0u64,
            7,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            1234567890,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..64).map(|b| 1u64 << b))
        .chain((0..20).map(|e| 10u64.pow(e) - 1))
        {
            o.clear();
            push_u64(&mut o, v);
            assert_eq!(String::from_utf8(o.clone()).unwrap(), v.to_string());
        }
        let f = |v: f64| {
            let mut o = Vec::new();
            push_f64(&mut o, v);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(f(0.0), "0");
        assert_eq!(f(-3.0), "-3");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(1e20).parse::<f64>().unwrap(), 1e20);
    }

    #[test]
    fn golden_histogram() {
        let mut o = Vec::new();
        let mut e = Encoder::new(&mut o);
        e.family("d_seconds", "Request\nduration", MetricType::Histogram);
        let mut l = Vec::new();
        push_labels(&mut l, &["ns", "m"], &[b"a\"b", b"GET"]);
        e.histogram(
            "d_seconds",
            &l,
            &["0.1".into(), "1".into()],
            &[1, 0, 2],
            Value::F64(3.5),
        );
        assert_eq!(
            String::from_utf8(o).unwrap(),
            "# HELP d_seconds Request\\nduration\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{ns=\"a\\\"b\",m=\"GET\",le=\"0.1\"} 1\n\
             d_seconds_bucket{ns=\"a\\\"b\",m=\"GET\",le=\"1\"} 1\n\
             d_seconds_bucket{ns=\"a\\\"b\",m=\"GET\",le=\"+Inf\"} 3\n\
             d_seconds_sum{ns=\"a\\\"b\",m=\"GET\"} 3.5\n\
             d_seconds_count{ns=\"a\\\"b\",m=\"GET\"} 3\n"
        );
    }

    #[test]
    fn unlabelled_samples() {
        let mut o = Vec::new();
        let mut e = Encoder::new(&mut o);
        e.sample_u64("up", b"", 1);
        e.sample_i64("g", b"", -2);
        e.histogram("h", b"", &["1".into()], &[0, 0], Value::Text(b"0"));
        assert_eq!(
            String::from_utf8(o).unwrap(),
            "up 1\ng -2\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
        );
    }
}
