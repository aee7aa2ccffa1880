//! Shared helpers of the integration tests: regions, locks, keys, and a strict parser of the
//! Prometheus text exposition format (version 0.0.4) used to check every rendered page.
#![allow(dead_code)]

pub mod corpus;
pub mod page;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::labels::KeyBuilder;
use gateway_metrics_core::store::{InsertLock, SeriesKind};

/// A zeroed region of `bytes / 8` words, as nginx would hand out (but on the heap).
pub fn region(bytes: usize) -> Vec<AtomicU64> {
    (0..bytes / 8).map(|_| AtomicU64::new(0)).collect()
}

/// A spin lock whose word lives wherever the caller wants (a `Vec`, a shared mapping...).
pub struct SpinLock<'a>(pub &'a AtomicU64);

impl InsertLock for SpinLock<'_> {
    fn lock(&self) {
        let mut spins = 0u32;
        while self
            .0
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins & 63 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn unlock(&self) {
        let prev = self.0.swap(0, Ordering::Release);
        assert_eq!(prev, 1, "unlock of a lock that was not held");
    }
}

/// A single-threaded lock that panics on re-entry (a deadlock in nginx) or on an unbalanced
/// unlock, and counts acquisitions.
#[derive(Default)]
pub struct CheckedLock {
    held: Cell<bool>,
    pub acquisitions: Cell<u64>,
}

impl InsertLock for CheckedLock {
    fn lock(&self) {
        assert!(!self.held.get(), "InsertLock taken twice (would deadlock)");
        self.held.set(true);
        self.acquisitions.set(self.acquisitions.get() + 1);
    }

    fn unlock(&self) {
        assert!(self.held.get(), "InsertLock released while not held");
        self.held.set(false);
    }
}

impl CheckedLock {
    pub fn is_held(&self) -> bool {
        self.held.get()
    }
}

/// The kind of a stored `REQUEST` series for a layout of `n_bounds` bounds.
pub fn req_kind(layout: u8, n_bounds: usize) -> SeriesKind {
    SeriesKind {
        family: fam::REQUEST,
        layout,
        n_values: (n_bounds + 2) as u8,
    }
}

/// A `REQUEST` key: method, endpoint, status_code, namespace, upstream.
pub fn req_key(method: &str, endpoint: &str, status: &str, ns: &str, upstream: &str) -> Vec<u8> {
    key(&[method, endpoint, status, ns, upstream])
}

pub fn key(values: &[&str]) -> Vec<u8> {
    let mut k = KeyBuilder::new();
    for v in values {
        k.push(v.as_bytes());
    }
    k.as_bytes().to_vec()
}

/// Deterministic xorshift64* for garbage and workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ----------------------------------------------------------------------------------------------
// Exposition parser
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    /// In output order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub typ: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the sample `name` with exactly the label set `labels` (any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                if s.name != name {
                    return false;
                }
                let mut have: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                have.sort();
                have == want
            })
            .map(|s| s.value)
    }

    pub fn samples<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Sample> + 's {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(move |s| s.name == name)
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut it = n.bytes();
    matches!(it.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && it.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(n: &str) -> bool {
    let mut it = n.bytes();
    matches!(it.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && it.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
            {
                return Err(format!("bad value {s:?}"));
            }
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses `{a="x",b="y"}` starting after the `{`; returns the labels and the rest after `}`.
type Labels = Vec<(String, String)>;

fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    if let Some(rest) = s.strip_prefix('}') {
        return Err(format!("empty label set before {rest:?}"));
    }
    loop {
        let eq = s.find('=').ok_or("label without =")?;
        let name = &s[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label value")?;
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                '\n' => return Err("raw newline in label value".into()),
                c => value.push(c),
            }
        };
        if labels.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(format!("duplicate label name {name:?}"));
        }
        labels.push((name.to_string(), value));
        s = &s[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        } else {
            return Err(format!("expected , or }} at {s:?}"));
        }
    }
}

fn sample_belongs(family: &Family, name: &str) -> bool {
    match family.typ.as_str() {
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suf| name.strip_suffix(suf) == Some(family.name.as_str())),
        _ => name == family.name,
    }
}

/// Strictly parses a page: every line a HELP, TYPE or sample line; every family has exactly
/// one HELP immediately followed by one TYPE, and its samples follow contiguously; no series
/// appears twice; label values use only the escapes `\\`, `\"`, `\n`; histograms are
/// consistent (cumulative, monotone, ending in `+Inf` equal to `_count`).
pub fn parse(page: &[u8]) -> Result<Exposition, String> {
    let text = std::str::from_utf8(page).map_err(|e| format!("page is not UTF-8: {e}"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("page does not end with a newline".into());
    }
    let mut exp = Exposition::default();
    let mut names = HashSet::new();
    let mut series = HashSet::new();
    let mut pending_help: Option<(String, String)> = None;
    for (ln, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", ln + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if pending_help.is_some() {
                return Err(err("HELP not followed by TYPE".into()));
            }
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_metric_name(name) {
                return Err(err(format!("bad family name {name:?}")));
            }
            if !names.insert(name.to_string()) {
                return Err(err(format!(
                    "family {name} declared twice (not contiguous?)"
                )));
            }
            pending_help = Some((name.to_string(), unescape_help(help).map_err(err)?));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (hname, help) = pending_help
                .take()
                .ok_or_else(|| err("TYPE without HELP".into()))?;
            let (name, typ) = rest.split_once(' ').ok_or_else(|| err("bad TYPE".into()))?;
            if name != hname {
                return Err(err(format!("TYPE {name} after HELP {hname}")));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&typ) {
                return Err(err(format!("bad type {typ:?}")));
            }
            exp.families.push(Family {
                name: name.to_string(),
                help,
                typ: typ.to_string(),
                samples: Vec::new(),
            });
        } else if line.starts_with('#') {
            return Err(err("unexpected comment".into()));
        } else {
            if pending_help.is_some() {
                return Err(err("sample between HELP and TYPE".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !valid_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..]).map_err(err)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value".into()))?;
            if value.contains(' ') {
                return Err(err("trailing fields after the value".into()));
            }
            let value = parse_value(value).map_err(err)?;
            let family = exp
                .families
                .last_mut()
                .ok_or_else(|| err("sample before any family".into()))?;
            if !sample_belongs(family, name) {
                return Err(err(format!(
                    "sample {name} outside its family (current family {})",
                    family.name
                )));
            }
            let mut id = labels.clone();
            id.sort();
            if !series.insert((name.to_string(), id)) {
                return Err(err("duplicate series".into()));
            }
            family.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    if pending_help.is_some() {
        return Err("HELP at the end without TYPE".into());
    }
    for f in &exp.families {
        if f.typ == "histogram" {
            check_histogram(f)?;
        }
    }
    Ok(exp)
}

#[derive(Default)]
struct HistSeries {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

fn check_histogram(f: &Family) -> Result<(), String> {
    let mut groups: HashMap<Vec<(String, String)>, HistSeries> = HashMap::new();
    for s in &f.samples {
        let mut id: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(n, _)| n != "le")
            .cloned()
            .collect();
        id.sort();
        let g = groups.entry(id).or_default();
        let suffix = &s.name[f.name.len()..];
        match suffix {
            "_bucket" => {
                let le = s
                    .label("le")
                    .ok_or_else(|| format!("{}: bucket without le", f.name))?;
                let le = parse_value(le)?;
                if g.sum.is_some() || g.count.is_some() {
                    return Err(format!("{}: bucket after _sum/_count", f.name));
                }
                g.buckets.push((le, s.value));
            }
            "_sum" => g.sum = Some(s.value),
            "_count" => g.count = Some(s.value),
            _ => unreachable!(),
        }
    }
    for (id, g) in &groups {
        let ctx = || format!("{} {id:?}", f.name);
        if g.buckets.is_empty() {
            return Err(format!("{}: no buckets", ctx()));
        }
        for w in g.buckets.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!("{}: le not increasing: {:?}", ctx(), g.buckets));
            }
            if w[1].1 < w[0].1 {
                return Err(format!(
                    "{}: buckets not cumulative: {:?}",
                    ctx(),
                    g.buckets
                ));
            }
        }
        let last = g.buckets.last().unwrap();
        if last.0 != f64::INFINITY {
            return Err(format!("{}: last bucket is not +Inf", ctx()));
        }
        let count = g.count.ok_or_else(|| format!("{}: no _count", ctx()))?;
        g.sum.ok_or_else(|| format!("{}: no _sum", ctx()))?;
        if count != last.1 {
            return Err(format!("{}: +Inf {} != _count {count}", ctx(), last.1));
        }
    }
    Ok(())
}

/// Parses and panics with the page on error.
pub fn parse_ok(page: &[u8]) -> Exposition {
    match parse(page) {
        Ok(e) => e,
        Err(e) => panic!(
            "invalid exposition: {e}\n--- page ---\n{}",
            String::from_utf8_lossy(page)
        ),
    }
}

/// The text of one family: its HELP and TYPE lines and its samples.
pub fn block(page: &str, name: &str) -> String {
    let head = format!("# HELP {name} ");
    let start = page
        .find(&head)
        .unwrap_or_else(|| panic!("family {name} not rendered"));
    let rest = &page[start..];
    let end = rest.find("\n# HELP ").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}
