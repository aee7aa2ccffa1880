//! Renders the `/metrics` page from a store: the views of the stored families, declared
//! families, self-metrics and nginx's connection counters. Takes no lock: it walks the
//! published series and reads each value word atomically.
//!
//! [`Render`] produces the page in steps of bounded work (the nginx module renders in short
//! slices between other events); [`render`] produces it in one go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buckets::{format_bound, format_bound_canonical, Histogram, Histograms};
use crate::catalogue::{self, fam, families, tokens, Family, Views};
use crate::exemplar::{self, Exemplar, PACKED_WORDS, SLOT_WORDS};
use crate::expo::{om_family, push_f64, push_labels, Encoder, MetricType, SeriesExtras, Value};
use crate::format::Format;
use crate::labels::{split_key, SEP};
use crate::store::{load_f64, DropReason, Entry, KeyWords, SelfCounter, Store, EXEMPLARS};

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
#[derive(Clone, Copy)]
pub struct RenderSpec<'a> {
    pub zone_name: &'a str,
    pub max_series: u64,
    pub duration: HistSpec<'a>,
    pub ttft: HistSpec<'a>,
    pub throughput: HistSpec<'a>,
    pub tpot: HistSpec<'a>,
    /// Declared families with their layouts (0 for non-histograms).
    pub custom: &'a [(CustomFamily, u8)],
    pub nginx: Option<NginxStats>,
    /// The families shown (`gateway_metrics_views`).
    pub views: Views,
    /// Is the process with this pid alive? In-flight gauges owned by a dead worker (killed
    /// while it had requests in flight) are not counted. `None`: all owners count as alive.
    pub alive: Option<fn(u64) -> bool>,
    /// The exposition format of the page.
    pub format: Format,
}

impl<'a> RenderSpec<'a> {
    /// The page of a zone: its name and cap, the built-in histograms' bounds with the layout ids
    /// the zone registered them under, and the declared families. Without nginx's figures and
    /// with every in-flight owner alive until [`RenderSpec::with`] says otherwise.
    pub fn new(
        zone_name: &'a str,
        max_series: u64,
        bounds: &'a Histograms<Vec<f64>>,
        layouts: &Histograms<u8>,
        custom: &'a [(CustomFamily, u8)],
    ) -> Self {
        let hist = |h: Histogram| HistSpec {
            bounds: bounds.get(h),
            layout: *layouts.get(h),
        };
        RenderSpec {
            zone_name,
            max_series,
            duration: hist(Histogram::Duration),
            ttft: hist(Histogram::Ttft),
            throughput: hist(Histogram::Throughput),
            tpot: hist(Histogram::Tpot),
            custom,
            views: Views::default(),
            nginx: None,
            alive: None,
            format: Format::Text,
        }
    }

    /// The bounds and layout of a built-in histogram.
    pub fn hist(&self, which: Histogram) -> HistSpec<'a> {
        match which {
            Histogram::Duration => self.duration,
            Histogram::Ttft => self.ttft,
            Histogram::Throughput => self.throughput,
            Histogram::Tpot => self.tpot,
        }
    }

    /// The same spec with nginx's own figures and the liveness check of in-flight owners.
    pub fn with(self, nginx: Option<NginxStats>, alive: fn(u64) -> bool) -> Self {
        RenderSpec {
            nginx,
            alive: Some(alive),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_pairs_each_histogram_with_its_layout() {
        let bounds = Histograms {
            duration: vec![0.1, 1.0],
            ttft: vec![0.5],
            throughput: vec![10.0, 20.0, 40.0],
            tpot: vec![0.1],
        };
        let layouts = Histograms {
            duration: 3,
            ttft: 1,
            throughput: 2,
            tpot: 4,
        };
        let spec = RenderSpec::new("gm", 7, &bounds, &layouts, &[]);
        assert_eq!((spec.zone_name, spec.max_series), ("gm", 7));
        assert_eq!(
            (spec.duration.bounds, spec.duration.layout),
            (&[0.1, 1.0][..], 3)
        );
        assert_eq!((spec.ttft.bounds, spec.ttft.layout), (&[0.5][..], 1));
        assert_eq!((spec.throughput.layout, spec.tpot.layout), (2, 4));
        assert!(spec.nginx.is_none() && spec.alive.is_none());
        let spec = spec.with(Some(NginxStats::default()), |pid| pid == 1);
        assert!(spec.nginx.is_some() && spec.alive.is_some_and(|f| f(1) && !f(2)));
    }
}

/// A stored series of one walk. Its key stays in the zone: it is read only for a series the
/// render cache has not seen yet.
#[derive(Clone, Copy)]
struct Item<'a> {
    layout: u8,
    key: KeyWords<'a>,
    values: &'a [AtomicU64],
    /// Where its values are in the zone (what its exemplar entry is keyed by).
    off: usize,
    created_ms: u64,
    /// Its exemplar slots, when it has some and the page shows them (OpenMetrics).
    ex: Option<&'a [AtomicU64]>,
}

impl Item<'_> {
    /// The series' identity within a zone generation: where its values are (series never move).
    fn id(&self) -> usize {
        self.values.as_ptr() as usize
    }
}

/// The series of one walk, grouped by family.
struct Collected<'a> {
    builtin: [Vec<Item<'a>>; fam::END],
    custom: std::collections::BTreeMap<u32, Vec<Item<'a>>>,
    /// Exemplar entries by the value offset of their series (kept for OpenMetrics only).
    exemplars: HashMap<usize, &'a [AtomicU64]>,
    keep_exemplars: bool,
    /// An exemplar entry's key, read out of the zone.
    key: Vec<u8>,
}

impl<'a> Collected<'a> {
    fn new(keep_exemplars: bool) -> Self {
        Collected {
            builtin: Default::default(),
            custom: std::collections::BTreeMap::new(),
            exemplars: HashMap::new(),
            keep_exemplars,
            key: Vec::with_capacity(8),
        }
    }

    fn push(&mut self, e: Entry<'a>) {
        if e.kind.family & EXEMPLARS != 0 && e.kind.family & 0x8000_0000 == 0 {
            if self.keep_exemplars && e.key.len() == 8 {
                e.key.read_into(&mut self.key);
                let off = u64::from_le_bytes(self.key[..].try_into().unwrap_or_default());
                self.exemplars.insert(off as usize, e.values);
            }
            return;
        }
        let item = Item {
            layout: e.kind.layout,
            key: e.key,
            values: e.values,
            off: e.values_off,
            created_ms: e.created_ms,
            ex: None,
        };
        match self.builtin.get_mut(e.kind.family as usize) {
            Some(v) => v.push(item),
            None => self.custom.entry(e.kind.family).or_default().push(item),
        }
    }

    /// Gives the series their exemplar entries (once the walk is complete).
    fn link_exemplars(&mut self) {
        if self.exemplars.is_empty() {
            return;
        }
        for items in &mut self.builtin {
            for it in items {
                it.ex = self.exemplars.get(&it.off).copied();
            }
        }
    }

    fn family(&self, family: u32) -> &[Item<'a>] {
        self.builtin
            .get(family as usize)
            .map_or(&[][..], |v| v.as_slice())
    }
}

/// How a view derives one output label from a stored key.
#[derive(Clone, Copy)]
enum Col {
    /// The stored label at this index, as is.
    Label(usize),
    /// `success`/`error` from the `status_code` label at the first index: `error` whatever the
    /// code when the `cut` label at the second index is set (the body was cut short).
    StatusClass(usize, usize),
    /// `error_type`: the `cut` label at the second index when set, else from the `status_code`
    /// label at the first; series that are not errors are skipped.
    ErrorType(usize, usize),
    /// The stored label at this index; series where it is empty are skipped.
    NonEmpty(usize),
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
            Col::StatusClass(j, cut) => {
                let raw = vals.get(j).copied().unwrap_or(b"");
                if raw == crate::labels::OVERFLOW_VALUE.as_bytes() {
                    raw
                } else if !vals.get(cut).copied().unwrap_or(b"").is_empty() {
                    b"error"
                } else {
                    catalogue::status_class(catalogue::parse_status(raw)).as_bytes()
                }
            }
            Col::ErrorType(j, cut) => {
                let raw = vals.get(j).copied().unwrap_or(b"");
                if raw == crate::labels::OVERFLOW_VALUE.as_bytes() {
                    return None;
                }
                match vals.get(cut).copied().unwrap_or(b"") {
                    b"" => catalogue::error_type(catalogue::parse_status(raw))?.as_bytes(),
                    cut => cut,
                }
            }
            Col::NonEmpty(j) => match vals.get(j).copied().unwrap_or(b"") {
                b"" => return None,
                v => v,
            },
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

/// What one family of the page (one stage) keeps across scrapes: the group of every stored
/// series it has seen (series are append-only and never move within a zone generation), and
/// each group's label set, escaped once. A scrape then only sums values and formats numbers.
#[derive(Default)]
struct ViewCache {
    /// The series seen, in walk order: identity ([`Item::id`]) and group (`NO_GROUP`: the view
    /// skips it whatever its values).
    ids: Vec<usize>,
    group_of: Vec<u32>,
    /// Groups by the hash of their projected key, with collision chains.
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>,
    /// Projected keys and label sets of the groups, in two arenas.
    keys: Vec<u8>,
    text: Vec<u8>,
    groups: Vec<GroupSpan>,
    floats: Floats,
}

/// Per group: the last float shown (bits) and its text, up to 31 bytes: a value that did not
/// change since the last scrape (most series, between two scrapes) is not formatted again.
#[derive(Default)]
struct Floats {
    slots: Vec<(u64, u8, [u8; 31])>,
    tmp: Vec<u8>,
}

impl Floats {
    /// Float `bits` of group `g` as a value to write: its text from the last scrape if
    /// unchanged.
    fn value(&mut self, g: u32, bits: u64) -> Value<'_> {
        let gi = g as usize;
        if self.slots.len() <= gi {
            self.slots.resize(gi + 1, (0, 0, [0; 31]));
        }
        let e = &mut self.slots[gi];
        if e.1 == 0 || e.0 != bits {
            self.tmp.clear();
            push_f64(&mut self.tmp, f64::from_bits(bits));
            let n = self.tmp.len();
            if n > e.2.len() {
                return Value::F64(f64::from_bits(bits));
            }
            e.0 = bits;
            e.1 = n as u8;
            e.2[..n].copy_from_slice(&self.tmp);
        }
        Value::Text(&e.2[..usize::from(e.1)])
    }
}

/// Where a group's projected key and label set are, and the next group of the same hash.
struct GroupSpan {
    key: (usize, usize),
    text: (usize, usize),
    next: u32,
}

impl ViewCache {
    fn key(&self, g: u32) -> &[u8] {
        let (s, l) = self.groups[g as usize].key;
        &self.keys[s..s + l]
    }

    /// The escaped label set of group `g` (the inside of `{}`).
    fn text(&self, g: u32) -> &[u8] {
        let (s, l) = self.groups[g as usize].text;
        &self.text[s..s + l]
    }

    /// Keeps what is known of the series of `items` that were already there, in the same
    /// order, last time (a new generation of the zone shares none).
    fn keep_prefix(&mut self, items: &[Item]) {
        let n = self
            .ids
            .iter()
            .zip(items)
            .take_while(|(&id, it)| id == it.id())
            .count();
        self.ids.truncate(n);
        self.group_of.truncate(n);
    }

    /// The group of projected key `proj`, created (with its label set for `names`) if new;
    /// `own`: a new group whatever the key.
    fn group(&mut self, proj: &[u8], names: &[&str], labels: &mut Vec<u8>, own: bool) -> u32 {
        let h = crate::hash::hash_key(0, proj);
        let head = if own {
            NO_GROUP
        } else {
            self.index.get(&h).copied().unwrap_or(NO_GROUP)
        };
        let mut g = head;
        while g != NO_GROUP {
            if self.key(g) == proj {
                return g;
            }
            g = self.groups[g as usize].next;
        }
        set_labels(labels, names, proj);
        let n = self.groups.len() as u32;
        self.groups.push(GroupSpan {
            key: (self.keys.len(), if own { 0 } else { proj.len() }),
            text: (self.text.len(), labels.len()),
            next: head,
        });
        if !own {
            self.keys.extend_from_slice(proj);
        }
        self.text.extend_from_slice(labels);
        if !own {
            self.index.insert(h, n);
        }
        n
    }

    fn bytes(&self) -> usize {
        self.floats.slots.capacity() * 40
            + self.ids.capacity() * 8
            + self.group_of.capacity() * 4
            + self.index.capacity() * 16
            + self.keys.capacity()
            + self.text.capacity()
            + self.groups.capacity() * std::mem::size_of::<GroupSpan>()
    }
}

/// Per scrape: each group's sums (`width` words per group) and the groups in the order of
/// their first contributing series (the store's insertion order: a stable page, the same
/// whatever the cache holds).
#[derive(Default)]
struct Sums {
    acc: Vec<u64>,
    width: usize,
    seen: Vec<bool>,
    order: Vec<u32>,
}

impl Sums {
    fn reset(&mut self, width: usize, groups: usize) {
        self.width = width;
        self.acc.clear();
        self.acc.resize(width * groups, 0);
        self.seen.clear();
        self.seen.resize(groups, false);
        self.order.clear();
    }

    fn vals(&self, g: u32) -> &[u64] {
        let w = self.width;
        &self.acc[g as usize * w..(g as usize + 1) * w]
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

/// Prepares, for the histogram `h`, where the buckets of every layout the zone knows go among
/// `h`'s buckets: series recorded before a bucket change (the zone keeps them across reloads)
/// are shown in the current buckets, so `_count` and every cumulative bucket stay monotone
/// whatever the changes (see [`crate::buckets::remap`]).
fn set_remap(remap: &mut Vec<Option<Vec<usize>>>, store: &Store, h: HistSpec) {
    remap.clear();
    remap.push(None);
    for id in 1..=crate::store::MAX_LAYOUTS as u8 {
        let map = if id == h.layout {
            Some((0..=h.bounds.len()).collect())
        } else {
            store
                .layout_bounds(id)
                .map(|from| crate::buckets::remap(&from, h.bounds))
        };
        remap.push(map);
    }
}

/// The bucket map of a stored histogram series, if its layout is known and its values fit it.
fn bucket_map<'m>(remap: &'m [Option<Vec<usize>>], it: &Item) -> Option<&'m [usize]> {
    let map = remap.get(usize::from(it.layout))?.as_deref()?;
    (it.values.len() == map.len() + 1).then_some(map)
}

/// Adds a stored histogram (`[buckets.., +Inf, sum]`, not cumulative) into an aggregate of the
/// current buckets and the sum's f64 bits.
fn add_histogram(a: &mut [u64], map: &[usize], values: &[AtomicU64]) {
    let nb = a.len() - 1;
    for (&to, x) in map.iter().zip(values) {
        let b = &mut a[to.min(nb - 1)];
        *b = b.wrapping_add(x.load(Ordering::Relaxed));
    }
    a[nb] = (f64::from_bits(a[nb]) + load_f64(&values[map.len()])).to_bits();
}

/// The aggregation of every view: sums the stored series `items` into `w.sums`, `width` words
/// per group. The group of a series the cache `vc` has not seen yet is the key `group` makes
/// of it (`None`: the view skips it), with the label set of `names` (`own`: every series is a
/// group of its own, for the families of one line per stored series); `add` adds a series'
/// contribution, false if it has none this time (the group then only appears if another series
/// contributes). Resumable from `cur` within the budget `left`; true once every item is summed.
#[allow(clippy::too_many_arguments)]
fn sum_view<'a>(
    vc: &mut ViewCache,
    w: &mut Scratch,
    items: &[Item<'a>],
    names: &[&str],
    (width, own): (usize, bool),
    cur: &mut usize,
    left: &mut usize,
    group: impl Fn(&Item<'a>, &[u8], &mut Vec<u8>) -> Option<()>,
    add: impl Fn(&mut [u64], &Item<'a>) -> bool,
) -> bool {
    sum_view_ex(
        vc,
        w,
        items,
        names,
        (width, 0, own),
        cur,
        left,
        group,
        add,
        |_, _| {},
    )
}

/// [`sum_view`] with `extra` more words per group after the sums, which `more` updates for
/// every series that contributed (OpenMetrics: creation time and exemplars, see [`Extra`]).
#[allow(clippy::too_many_arguments)]
fn sum_view_ex<'a>(
    vc: &mut ViewCache,
    w: &mut Scratch,
    items: &[Item<'a>],
    names: &[&str],
    (base, extra, own): (usize, usize, bool),
    cur: &mut usize,
    left: &mut usize,
    group: impl Fn(&Item<'a>, &[u8], &mut Vec<u8>) -> Option<()>,
    add: impl Fn(&mut [u64], &Item<'a>) -> bool,
    more: impl Fn(&mut [u64], &Item<'a>),
) -> bool {
    let width = base + extra;
    if *cur == 0 {
        vc.keep_prefix(items);
        w.sums.reset(width, vc.groups.len());
    }
    while let Some(it) = items.get(*cur) {
        if *left == 0 {
            return false;
        }
        *left -= 1;
        let g = match vc.group_of.get(*cur) {
            Some(&g) => g,
            None => {
                // A series not seen before: its key is read and projected once.
                it.key.read_into(&mut w.tmp);
                let g = match group(it, &w.tmp, &mut w.proj) {
                    Some(()) => {
                        let g = vc.group(&w.proj, names, &mut w.labels, own);
                        if g as usize == w.sums.seen.len() {
                            w.sums.seen.push(false);
                            w.sums.acc.resize(w.sums.acc.len() + width, 0);
                        }
                        g
                    }
                    None => NO_GROUP,
                };
                vc.ids.push(it.id());
                vc.group_of.push(g);
                g
            }
        };
        *cur += 1;
        if g == NO_GROUP {
            continue;
        }
        let s = &mut w.sums;
        let gi = g as usize;
        let (sums, ext) = s.acc[gi * width..(gi + 1) * width].split_at_mut(base);
        if add(sums, it) {
            if extra > 0 {
                more(ext, it);
            }
            if !s.seen[gi] {
                s.seen[gi] = true;
                s.order.push(g);
            }
        }
    }
    true
}

/// What an OpenMetrics page keeps per group besides the sums: the earliest creation time of
/// the series summed (one word, bit-inverted so that 0 is "none" and the max is the earliest),
/// then the latest exemplars, [`PACKED_WORDS`] each.
#[derive(Clone, Copy)]
enum Extra {
    /// Nothing (the text format, gauges).
    None,
    /// The creation time only.
    Created,
    /// And one exemplar: the latest of all the series' slots (a request count from a
    /// histogram series).
    Latest,
    /// And one exemplar: the series' slot `k` (a token or cost counter).
    Slot(usize),
    /// And one exemplar per bucket of the view (`n` buckets with `+Inf`): a histogram.
    Buckets(usize),
}

impl Extra {
    fn words(self) -> usize {
        match self {
            Extra::None => 0,
            Extra::Created => 1,
            Extra::Latest | Extra::Slot(_) => 1 + PACKED_WORDS,
            Extra::Buckets(n) => 1 + n * PACKED_WORDS,
        }
    }

    /// Merges a contributing series into the extra words `ext`; `map`: where the series'
    /// buckets go among the view's (histograms).
    fn merge(self, ext: &mut [u64], it: &Item, map: Option<&[usize]>) {
        if ext.is_empty() {
            return;
        }
        if it.created_ms != 0 {
            ext[0] = ext[0].max(!it.created_ms);
        }
        let Some(slots) = it.ex else { return };
        let read = |i: usize| slots.get(i * SLOT_WORDS..).and_then(exemplar::read);
        let n_slots = slots.len() / SLOT_WORDS;
        match self {
            Extra::None | Extra::Created => {}
            Extra::Latest => {
                for i in 0..n_slots {
                    if let Some(e) = read(i) {
                        exemplar::merge_latest(&mut ext[1..], &e);
                    }
                }
            }
            Extra::Slot(k) => {
                if let Some(e) = read(k) {
                    exemplar::merge_latest(&mut ext[1..], &e);
                }
            }
            Extra::Buckets(n) => {
                let Some(map) = map else { return };
                for (i, &to) in map.iter().enumerate().take(n_slots) {
                    if let Some(e) = read(i) {
                        let b = to.min(n - 1);
                        exemplar::merge_latest(&mut ext[1 + b * PACKED_WORDS..], &e);
                    }
                }
            }
        }
    }
}

/// The creation time in a group's extra words (0: unknown).
fn created_of(ext: &[u64]) -> u64 {
    match ext.first() {
        Some(&w) if w != 0 => !w,
        _ => 0,
    }
}

/// [`sum_view`] for histograms: each stored series in `h`'s buckets, whatever its layout
/// (buckets, then the sum's f64 bits, per group). Series of a layout the zone does not know
/// (or whose values do not fit it) are left out.
#[allow(clippy::too_many_arguments)]
fn sum_histograms(
    vc: &mut ViewCache,
    w: &mut Scratch,
    items: &[Item],
    names: &[&str],
    store: &Store,
    (h, extra): (HistSpec, Extra),
    cur: &mut usize,
    left: &mut usize,
    group: impl Fn(&[u8], &mut Vec<u8>) -> Option<()>,
) -> bool {
    if *cur == 0 {
        set_remap(&mut w.remap, store, h);
    }
    let remap = std::mem::take(&mut w.remap);
    let done = sum_view_ex(
        vc,
        w,
        items,
        names,
        (h.bounds.len() + 2, extra.words(), false),
        cur,
        left,
        |_, key, out| group(key, out),
        |a, it| match bucket_map(&remap, it) {
            Some(map) => {
                add_histogram(a, map, it.values);
                true
            }
            None => false,
        },
        |ext, it| extra.merge(ext, it, bucket_map(&remap, it)),
    );
    w.remap = remap;
    done
}

/// Writes the histograms summed in `w.sums` (label sets from `vc`, buckets `w.le`), from
/// `cur` on; true once all are written.
fn emit_histograms(
    enc: &mut Encoder,
    vc: &mut ViewCache,
    w: &mut Scratch,
    name: &str,
    cur: &mut usize,
    left: &mut usize,
) -> bool {
    let nb = w.le.len() + 1;
    while let Some(&g) = w.sums.order.get(*cur) {
        if *left == 0 {
            return false;
        }
        spend(left, nb + 2);
        let a = w.sums.vals(g);
        let ext = &a[nb + 1..];
        w.exs.clear();
        if ext.len() > 1 {
            w.exs.extend(
                ext[1..]
                    .chunks_exact(PACKED_WORDS)
                    .map(|p| exemplar::unpack(p).map(|e| (e, e.value))),
            );
        }
        let x = SeriesExtras {
            created_ms: created_of(ext),
            exemplars: &w.exs,
        };
        let sum = vc.floats.value(g, a[nb]);
        let (s, l) = vc.groups[g as usize].text;
        enc.histogram_ex(name, &vc.text[s..s + l], &w.le, &a[..nb], sum, x);
        *cur += 1;
    }
    true
}

/// A counter exemplar from a group's extra words, with the value it shows (`one`: 1, the
/// request counted; else the value observed).
fn counter_exemplar(ext: &[u64], one: bool) -> Option<(Exemplar, f64)> {
    let e = exemplar::unpack(ext.get(1..)?)?;
    Some((e, if one { 1.0 } else { e.value }))
}

/// How a group's first word is shown.
#[derive(Clone, Copy)]
enum Show {
    U64,
    /// In-flight gauges.
    I64,
    /// f64 bits.
    F64,
}

/// Writes one line per group summed in `w.sums` (the first word of each), from `cur` on.
/// `(om_base, one)`: for a counter in OpenMetrics, its family name (for `_created`) and whether
/// its exemplar shows 1 (a request count) or the value observed.
#[allow(clippy::too_many_arguments)]
fn emit_lines(
    enc: &mut Encoder,
    vc: &mut ViewCache,
    w: &Scratch,
    name: &str,
    show: Show,
    counter: Option<(&str, bool)>,
    cur: &mut usize,
    left: &mut usize,
) -> bool {
    while let Some(&g) = w.sums.order.get(*cur) {
        if *left == 0 {
            return false;
        }
        *left -= 1;
        let a = w.sums.vals(g);
        let v = a[0];
        let (s, l) = vc.groups[g as usize].text;
        let value = match show {
            Show::U64 => Value::U64(v),
            Show::I64 => Value::I64(v as i64),
            Show::F64 => vc.floats.value(g, v),
        };
        let labels = &vc.text[s..s + l];
        match counter {
            Some((base, one)) if a.len() > 1 => {
                let ext = &a[1..];
                enc.line_ex(name, "", labels, None, value, counter_exemplar(ext, one));
                enc.created(base, labels, created_of(ext));
            }
            _ => enc.line(name, "", labels, None, value),
        }
        *cur += 1;
    }
    true
}

/// Renders `/metrics` into `out` (appending), in one go.
pub fn render(store: &Store, spec: &RenderSpec, out: &mut Vec<u8>) {
    let mut cache = RenderCache::default();
    render_cached(store, spec, out, &mut cache);
}

/// [`render`] with a cache kept from earlier renders (updated for this one): the same page.
pub fn render_cached(store: &Store, spec: &RenderSpec, out: &mut Vec<u8>, cache: &mut RenderCache) {
    let mut r = Render::with_cache(store, spec, std::mem::take(cache));
    while !r.step(out, usize::MAX) {}
    *cache = r.into_cache();
}

/// What a counter view sums per stored series.
#[derive(Clone, Copy)]
enum Val {
    /// A histogram's count.
    HistCount,
    /// One value word.
    Slot(usize),
}

impl Val {
    fn of(self, v: &[AtomicU64]) -> u64 {
        match self {
            Val::HistCount => hist_count(v),
            Val::Slot(i) => v.get(i).map_or(0, |w| w.load(Ordering::Relaxed)),
        }
    }
}

/// A family (of the catalogue) rendered from the series of one stored family: which of the
/// stored labels (or values derived from them) make its labels.
#[derive(Clone, Copy)]
struct View {
    family: u32,
    def: &'static Family,
    cols: &'static [Col],
}

/// The page is a sequence of stages, each one family (or a fixed block of them).
#[derive(Clone, Copy)]
enum Stage {
    /// The walk of the store.
    Collect,
    /// A counter view: the sum over stored series of a value, grouped by the view's columns.
    Counter(View, Val),
    /// A histogram view: stored histograms of the current layout, summed by the columns.
    Histogram(View, Histogram),
    Active,
    NamespaceTokens,
    Cost,
    /// A declared family (index into `RenderSpec::custom`).
    Custom(usize),
    SelfMetrics,
    Nginx,
    /// OpenMetrics' `# EOF`.
    Eof,
}

/// The request views, from the stored `REQUEST` series
/// (`{method, endpoint, status_code, namespace, upstream, cut}`); `true` for histograms.
const REQUEST_VIEWS: [(bool, View); 7] = {
    use families::*;
    use Col::*;
    const fn v(def: &'static Family, cols: &'static [Col]) -> View {
        View {
            family: fam::REQUEST,
            def,
            cols,
        }
    }
    [
        (
            false,
            v(
                &HTTP_REQUESTS,
                &[Label(0), Label(1), Label(2), Label(3), Label(4)],
            ),
        ),
        (
            true,
            v(
                &HTTP_REQUEST_DURATION,
                &[Label(0), Label(1), Label(3), Label(4)],
            ),
        ),
        (false, v(&GATEWAY_REQUESTS, &[Label(0), Label(1), Label(3)])),
        (
            true,
            v(&GATEWAY_REQUEST_DURATION, &[Label(0), Label(1), Label(3)]),
        ),
        (
            false,
            v(&NAMESPACE_REQUESTS, &[Label(3), StatusClass(2, 5)]),
        ),
        (
            false,
            v(&UPSTREAM_REQUESTS, &[NonEmpty(4), StatusClass(2, 5)]),
        ),
        (false, v(&ERRORS, &[ErrorType(2, 5), Label(3), Label(4)])),
    ]
};

/// Columns of the `{model, namespace}` (and `{namespace, rule_type}`) views: the stored labels.
const TWO_COLS: &[Col] = &[Col::Label(0), Col::Label(1)];

/// The stages in page order.
fn stages(n_custom: usize, nginx: bool, views: Views, format: Format) -> Vec<Stage> {
    use families::*;
    use Col::*;
    let view = |family, def, cols| View { family, def, cols };
    let mut s = vec![Stage::Collect];
    for (histogram, v) in REQUEST_VIEWS {
        s.push(if histogram {
            Stage::Histogram(v, Histogram::Duration)
        } else {
            Stage::Counter(v, Val::HistCount)
        });
    }
    s.push(Stage::Active);
    let model_requests = view(
        fam::MODEL_REQUEST,
        &MODEL_REQUESTS,
        &[Label(0), Label(1), Label(2)],
    );
    s.push(Stage::Counter(model_requests, Val::HistCount));
    let model_duration = view(fam::MODEL_REQUEST, &MODEL_REQUEST_DURATION, TWO_COLS);
    s.push(Stage::Histogram(model_duration, Histogram::Duration));
    for (def, slot) in [
        (&MODEL_TOKENS_INPUT, tokens::INPUT),
        (&MODEL_TOKENS_OUTPUT, tokens::OUTPUT),
    ] {
        s.push(Stage::Counter(
            view(fam::MODEL_TOKENS, def, TWO_COLS),
            Val::Slot(slot),
        ));
    }
    s.push(Stage::NamespaceTokens);
    s.push(Stage::Cost);
    s.push(Stage::Histogram(
        view(fam::TTFT, &MODEL_TTFT, TWO_COLS),
        Histogram::Ttft,
    ));
    let throughput = view(fam::THROUGHPUT, &MODEL_THROUGHPUT, TWO_COLS);
    s.push(Stage::Histogram(throughput, Histogram::Throughput));
    s.push(Stage::Histogram(
        view(fam::TPOT, &MODEL_TPOT, TWO_COLS),
        Histogram::Tpot,
    ));
    let missing = view(
        fam::USAGE_MISSING,
        &MODEL_USAGE_MISSING,
        &[Label(0), Label(1), Label(2)],
    );
    s.push(Stage::Counter(missing, Val::Slot(0)));
    for (family, def, cols, slot) in [
        (fam::RATE_LIMIT, &RATE_LIMIT_HITS, TWO_COLS, 0),
        (fam::RATE_LIMIT, &RATE_LIMIT_VIOLATIONS, TWO_COLS, 1),
        (fam::CACHE, &CACHE_HITS, &[Label(0)][..], 0),
        (fam::CACHE, &CACHE_MISSES, &[Label(0)][..], 1),
    ] {
        s.push(Stage::Counter(view(family, def, cols), Val::Slot(slot)));
    }
    s.extend((0..n_custom).map(Stage::Custom));
    s.push(Stage::SelfMetrics);
    s.push(Stage::Counter(
        view(fam::UNPRICED, &UNPRICED, &[Label(0)]),
        Val::Slot(0),
    ));
    if nginx {
        s.push(Stage::Nginx);
    }
    if format == Format::OpenMetrics {
        s.push(Stage::Eof);
    }
    s.retain(|st| match st {
        Stage::Counter(v, _) | Stage::Histogram(v, _) => views.shows(v.def),
        Stage::Active => views.shows(&ACTIVE_CONNECTIONS),
        Stage::NamespaceTokens => views.shows(&NAMESPACE_TOKENS),
        Stage::Cost => views.shows(&MODEL_COST),
        _ => true,
    });
    s
}

/// A page being rendered: the walk of the store, then one family after the other.
///
/// Each [`Render::step`] does a bounded amount of work, counted in units: one per series
/// walked, aggregated or scanned, one per line written (a histogram's lines count together,
/// at most [`crate::store::MAX_BOUNDS`] + 3). A step stops once its budget is spent, so it
/// overshoots by one histogram at most, and appends at most that much output. The steps'
/// outputs, concatenated, are the page [`render`] makes of the same store. Series inserted
/// between steps appear if the walk has not passed their place yet (they are in every view
/// then) and are left out otherwise; values are read when a view reaches them.
/// A page being rendered: the walk of the store, then one family after the other.
///
/// Each [`Render::step`] does a bounded amount of work, counted in units: one per series
/// walked, aggregated or scanned, one per line written (a histogram's lines count together,
/// at most [`crate::store::MAX_BOUNDS`] + 3). A step stops once its budget is spent, so it
/// overshoots by one histogram at most, and appends at most that much output. The steps'
/// outputs, concatenated, are the page [`render`] makes of the same store. Series inserted
/// between steps appear if the walk has not passed their place yet (they are in every view
/// then) and are left out otherwise; values are read when a view reaches them.
pub struct Render<'a> {
    store: Store<'a>,
    spec: RenderSpec<'a>,
    stages: Vec<Stage>,
    /// Current stage, its phase (0: aggregate / start, 1: emit) and position in that phase.
    stage: usize,
    phase: u8,
    cur: usize,
    walk: usize,
    c: Collected<'a>,
    cache: RenderCache,
    /// Label names of each declared family.
    custom_names: Vec<Vec<&'a str>>,
}

/// What a worker keeps from one render to the next ([`Render::with_cache`],
/// [`Render::into_cache`]): per family of the page, the group and label set of every stored
/// series seen (see `ViewCache`), and the render's buffers. Emptied when the zone (a new
/// generation) or the configuration of the page changes.
#[derive(Default)]
pub struct RenderCache {
    ident: Option<Ident>,
    views: Vec<ViewCache>,
    w: Scratch,
}

impl RenderCache {
    /// Bytes of process memory held.
    pub fn bytes(&self) -> usize {
        self.views.iter().map(ViewCache::bytes).sum::<usize>()
            + self.w.sums.acc.capacity() * 8
            + self.w.sums.seen.capacity()
            + self.w.sums.order.capacity() * 4
    }
}

/// What the cached groups and label sets depend on: the zone's generation and the page's
/// configuration.
#[derive(PartialEq)]
struct Ident {
    created: u64,
    resets: u64,
    region_bytes: u64,
    views: Views,
    nginx: bool,
    custom: Vec<(CustomFamily, u8)>,
}

impl Ident {
    fn of(store: &Store, spec: &RenderSpec) -> Ident {
        Ident {
            created: store.created(),
            resets: store.self_counter(SelfCounter::ZoneResets),
            region_bytes: store.usage().region_bytes,
            views: spec.views,
            nginx: spec.nginx.is_some(),
            custom: spec.custom.to_vec(),
        }
    }
}

/// Buffers reused by the stages.
#[derive(Default)]
struct Scratch {
    sums: Sums,
    /// For the histogram being rendered: per stored layout id, where that layout's buckets go
    /// among the current ones (`None`: the layout is unknown to the zone).
    remap: Vec<Option<Vec<usize>>>,
    le: Vec<String>,
    labels: Vec<u8>,
    proj: Vec<u8>,
    tmp: Vec<u8>,
    /// A histogram's bucket exemplars, for the one being written.
    exs: Vec<Option<(Exemplar, f64)>>,
}

/// Builds the label set of a sample from a (projected) key.
fn set_labels(labels: &mut Vec<u8>, names: &[&str], key: &[u8]) {
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
    labels.clear();
    push_labels(labels, names, &vals[..names.len().min(n)]);
}

/// Takes `n` units from the budget (a step may overshoot by one item's cost).
#[inline]
fn spend(left: &mut usize, n: usize) {
    *left = left.saturating_sub(n);
}

/// A family's aggregation is complete: its header goes out, and its lines are emitted from the
/// first group on.
fn open_family(
    enc: &mut Encoder,
    left: &mut usize,
    (phase, cur): (&mut u8, &mut usize),
    (name, help, kind): (&str, &str, MetricType),
) {
    enc.family(name, help, kind);
    spend(left, 1);
    *phase = 1;
    *cur = 0;
}

impl<'a> Render<'a> {
    /// Starts a render; no work is done until [`Render::step`].
    pub fn new(store: &Store<'a>, spec: &RenderSpec<'a>) -> Self {
        Self::with_cache(store, spec, RenderCache::default())
    }

    /// Starts a render with what an earlier one left ([`Render::into_cache`]); it is emptied
    /// first if it was made for another zone generation or another page configuration.
    pub fn with_cache(store: &Store<'a>, spec: &RenderSpec<'a>, mut cache: RenderCache) -> Self {
        let custom_names = spec
            .custom
            .iter()
            .map(|(f, _)| f.labels.iter().map(|s| s.as_str()).collect())
            .collect();
        let stages = stages(
            spec.custom.len(),
            spec.nginx.is_some(),
            spec.views,
            spec.format,
        );
        let ident = Ident::of(store, spec);
        if cache.ident.as_ref() != Some(&ident) {
            cache.views.clear();
            cache.ident = Some(ident);
        }
        cache.views.resize_with(stages.len(), ViewCache::default);
        Render {
            store: *store,
            spec: *spec,
            stages,
            stage: 0,
            phase: 0,
            cur: 0,
            walk: 0,
            c: Collected::new(spec.format == Format::OpenMetrics),
            cache,
            custom_names,
        }
    }

    /// The cache, for the next render. A render stopped part-way leaves a cache as good as
    /// a complete one.
    pub fn into_cache(mut self) -> RenderCache {
        self.take_cache()
    }

    /// [`Render::into_cache`] for a render that is being dropped (it cannot go on after this).
    pub fn take_cache(&mut self) -> RenderCache {
        self.stage = self.stages.len();
        std::mem::take(&mut self.cache)
    }

    /// Is the page complete?
    pub fn is_done(&self) -> bool {
        self.stage >= self.stages.len()
    }

    /// Renders the next part of the page into `out` (appending), doing about `budget` units
    /// of work (at least one). Returns true once the page is complete.
    pub fn step(&mut self, out: &mut Vec<u8>, budget: usize) -> bool {
        let mut left = budget.max(1);
        let mut enc = Encoder::with_format(out, self.om());
        while let Some(&stage) = self.stages.get(self.stage) {
            if left == 0 {
                return false;
            }
            let finished = match stage {
                Stage::Collect => self.collect(&mut left),
                Stage::Counter(v, val) => self.counter(&mut enc, &mut left, &v, val),
                Stage::Histogram(v, l) => self.histogram(&mut enc, &mut left, &v, l),
                Stage::Active => self.active(&mut enc, &mut left),
                Stage::NamespaceTokens => self.namespace_tokens(&mut enc, &mut left),
                Stage::Cost => self.cost(&mut enc, &mut left),
                Stage::Custom(i) => self.custom(&mut enc, &mut left, i),
                Stage::SelfMetrics => {
                    self.self_metrics(&mut enc);
                    spend(&mut left, 33);
                    true
                }
                Stage::Nginx => {
                    if let Some(n) = self.spec.nginx {
                        nginx(&mut enc, &n, self.spec.views);
                    }
                    spend(&mut left, 21);
                    true
                }
                Stage::Eof => {
                    enc.eof();
                    true
                }
            };
            if finished {
                self.stage += 1;
                self.phase = 0;
                self.cur = 0;
            }
        }
        true
    }

    fn collect(&mut self, left: &mut usize) -> bool {
        let c = &mut self.c;
        let mut n = 0;
        let done = self.store.for_each_from(&mut self.walk, *left, |e| {
            n += 1;
            c.push(e);
        });
        spend(left, if done { n } else { usize::MAX });
        if done {
            c.link_exemplars();
        }
        done
    }

    fn om(&self) -> bool {
        self.spec.format == Format::OpenMetrics
    }

    /// The bucket bounds' `le` texts of histogram `bounds`, as the page's format writes them.
    fn set_le(le: &mut Vec<String>, bounds: &[f64], om: bool) {
        le.clear();
        le.extend(bounds.iter().map(|&b| {
            if om {
                format_bound_canonical(b)
            } else {
                format_bound(b)
            }
        }));
    }

    fn counter(&mut self, enc: &mut Encoder, left: &mut usize, v: &View, val: Val) -> bool {
        let om = self.om();
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        // A request count shows the latest request's trace; a token count that of the latest
        // request that added some.
        let extra = match (om, v.family, val) {
            (false, ..) => Extra::None,
            (true, fam::REQUEST | fam::MODEL_REQUEST, Val::HistCount) => Extra::Latest,
            (true, fam::MODEL_TOKENS, Val::Slot(slot)) => tokens::EXEMPLAR_SLOTS
                .iter()
                .position(|&s| s == slot)
                .map_or(Extra::Created, Extra::Slot),
            (true, ..) => Extra::Created,
        };
        if *phase == 0 {
            let cols = v.cols;
            let summed = sum_view_ex(
                vc,
                w,
                c.family(v.family),
                v.def.labels,
                (1, extra.words(), false),
                cur,
                left,
                |_, key, out| project(key, cols, out),
                |a, it| {
                    a[0] = a[0].wrapping_add(val.of(it.values));
                    true
                },
                |ext, it| extra.merge(ext, it, None),
            );
            if !summed {
                return false;
            }
            open_family(
                enc,
                left,
                (phase, cur),
                (v.def.name, v.def.help, MetricType::Counter),
            );
        }
        let base = om_family(v.def.name, MetricType::Counter);
        let one = matches!(extra, Extra::Latest);
        emit_lines(
            enc,
            vc,
            w,
            v.def.name,
            Show::U64,
            Some((base, one)),
            cur,
            left,
        )
    }

    fn histogram(
        &mut self,
        enc: &mut Encoder,
        left: &mut usize,
        v: &View,
        which: Histogram,
    ) -> bool {
        let h = self.spec.hist(which);
        let om = self.om();
        let extra = if om {
            Extra::Buckets(h.bounds.len() + 1)
        } else {
            Extra::None
        };
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            store,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        if *phase == 0 {
            let cols = v.cols;
            let group = |key: &[u8], out: &mut Vec<u8>| project(key, cols, out);
            let items = c.family(v.family);
            let hx = (h, extra);
            if !sum_histograms(vc, w, items, v.def.labels, store, hx, cur, left, group) {
                return false;
            }
            Self::set_le(&mut w.le, h.bounds, om);
            open_family(
                enc,
                left,
                (phase, cur),
                (v.def.name, v.def.help, MetricType::Histogram),
            );
        }
        emit_histograms(enc, vc, w, v.def.name, cur, left)
    }

    /// `active_connections`: the stored series are `{namespace, worker slot}` with values
    /// `[in flight, owner pid]` (the older `{namespace}` / `[in flight]` shape is accepted too),
    /// summed per namespace; series whose owner died are skipped, negatives count as 0.
    fn active(&mut self, enc: &mut Encoder, left: &mut usize) -> bool {
        let def = &families::ACTIVE_CONNECTIONS;
        let alive = self.spec.alive;
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        if *phase == 0 {
            let summed = sum_view(
                vc,
                w,
                c.family(fam::ACTIVE),
                def.labels,
                (1, false),
                cur,
                left,
                |it, key, out| {
                    let shape_ok = (it.values.len() == 1 && has_arity(key, 1))
                        || (it.values.len() == 2 && has_arity(key, 2));
                    if !shape_ok {
                        return None;
                    }
                    project(key, &[Col::Label(0)], out)
                },
                |a, it| {
                    // In-flight requests of a dead worker (killed mid-request) no longer are.
                    if let (Some(owner), Some(alive)) = (it.values.get(1), alive) {
                        let pid = owner.load(Ordering::Relaxed);
                        if pid != 0 && !alive(pid) {
                            return false;
                        }
                    }
                    let v = (it.values[0].load(Ordering::Relaxed) as i64).max(0);
                    a[0] = (a[0] as i64).saturating_add(v) as u64;
                    true
                },
            );
            if !summed {
                return false;
            }
            open_family(enc, left, (phase, cur), (def.name, def.help, def.kind));
        }
        emit_lines(enc, vc, w, def.name, Show::I64, None, cur, left)
    }

    /// `namespace_tokens_total`: one group per namespace and token type; cached_input and
    /// reasoning only once some were reported (they are parts of input and output).
    fn namespace_tokens(&mut self, enc: &mut Encoder, left: &mut usize) -> bool {
        let def = &families::NAMESPACE_TOKENS;
        let extra = if self.om() {
            Extra::Created
        } else {
            Extra::None
        };
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        if *phase == 0 {
            let summed = sum_view_ex(
                vc,
                w,
                c.family(fam::MODEL_TOKENS),
                &def.labels[..1],
                (tokens::TYPES.len(), extra.words(), false),
                cur,
                left,
                |_, key, out| project(key, &[Col::Label(1)], out),
                |a, it| {
                    for (sum, (slot, _)) in a.iter_mut().zip(tokens::TYPES) {
                        *sum = sum.wrapping_add(
                            it.values.get(slot).map_or(0, |x| x.load(Ordering::Relaxed)),
                        );
                    }
                    true
                },
                |ext, it| extra.merge(ext, it, None),
            );
            if !summed {
                return false;
            }
            open_family(enc, left, (phase, cur), (def.name, def.help, def.kind));
        }
        // The group's label set is the namespace's; the token type is the line's last label.
        while let Some(&g) = w.sums.order.get(*cur) {
            if *left == 0 {
                return false;
            }
            spend(left, tokens::TYPES.len());
            let a = w.sums.vals(g);
            let created = created_of(&a[tokens::TYPES.len()..]);
            for (i, (_, t)) in tokens::TYPES.iter().enumerate() {
                if i >= 2 && a[i] == 0 {
                    continue;
                }
                let extra = Some((def.labels[1], t.as_bytes()));
                enc.line(def.name, "", vc.text(g), extra, Value::U64(a[i]));
                if created != 0 {
                    // The line's label set, for its `_created` line.
                    w.labels.clear();
                    w.labels.extend_from_slice(vc.text(g));
                    if !w.labels.is_empty() {
                        w.labels.push(b',');
                    }
                    push_labels(&mut w.labels, &def.labels[1..2], &[t.as_bytes()]);
                    let base = om_family(def.name, MetricType::Counter);
                    enc.created(base, &w.labels, created);
                }
            }
            *cur += 1;
        }
        true
    }

    /// `model_cost_usd_total`: one line per stored token series.
    fn cost(&mut self, enc: &mut Encoder, left: &mut usize) -> bool {
        let def = &families::MODEL_COST;
        let extra = if self.om() {
            let slot = tokens::EXEMPLAR_SLOTS
                .iter()
                .position(|&s| s == tokens::COST);
            slot.map_or(Extra::Created, Extra::Slot)
        } else {
            Extra::None
        };
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        if *phase == 0 {
            let summed = sum_view_ex(
                vc,
                w,
                c.family(fam::MODEL_TOKENS),
                def.labels,
                (1, extra.words(), true),
                cur,
                left,
                |it, key, out| {
                    if it.values.len() != usize::from(tokens::N_VALUES)
                        || !has_arity(key, def.labels.len())
                    {
                        return None;
                    }
                    out.clear();
                    out.extend_from_slice(key);
                    Some(())
                },
                |a, it| {
                    a[0] = it.values.get(tokens::COST).map_or(0.0, load_f64).to_bits();
                    true
                },
                |ext, it| extra.merge(ext, it, None),
            );
            if !summed {
                return false;
            }
            open_family(enc, left, (phase, cur), (def.name, def.help, def.kind));
        }
        let base = om_family(def.name, MetricType::Counter);
        emit_lines(
            enc,
            vc,
            w,
            def.name,
            Show::F64,
            Some((base, false)),
            cur,
            left,
        )
    }

    /// A declared family: one line (or one histogram) per stored series.
    fn custom(&mut self, enc: &mut Encoder, left: &mut usize, i: usize) -> bool {
        let Some((f, layout)) = self.spec.custom.get(i) else {
            return true;
        };
        let om = self.om();
        let Render {
            cache,
            c,
            stage,
            phase,
            cur,
            store,
            custom_names,
            ..
        } = self;
        let (vc, w) = (&mut cache.views[*stage], &mut cache.w);
        let names = &custom_names[i];
        let n_values = usize::from(f.n_values());
        let items = c.custom.get(&f.id).map_or(&[][..], |v| v.as_slice());
        if *phase == 0 {
            let t = match f.kind {
                CustomKind::Counter => MetricType::Counter,
                CustomKind::Gauge => MetricType::Gauge,
                CustomKind::Histogram => MetricType::Histogram,
            };
            enc.family(&f.name, &f.help, t);
            spend(left, 1);
            if f.kind == CustomKind::Histogram {
                Self::set_le(&mut w.le, &f.bounds, om);
            }
            *phase = 1;
        }
        let arity = names.len();
        if f.kind == CustomKind::Histogram {
            // A label set may be stored under several layouts (bucket changes across
            // reloads): summed per label set, in the current buckets.
            let h = HistSpec {
                bounds: &f.bounds,
                layout: *layout,
            };
            if *phase == 1 {
                let group = |key: &[u8], out: &mut Vec<u8>| {
                    has_arity(key, arity).then(|| {
                        out.clear();
                        out.extend_from_slice(key);
                    })
                };
                // (sum_histograms sets the remap, not `le`: the bounds stay.)
                let extra = if om { Extra::Created } else { Extra::None };
                if !sum_histograms(vc, w, items, names, store, (h, extra), cur, left, group) {
                    return false;
                }
                *phase = 2;
                *cur = 0;
            }
            return emit_histograms(enc, vc, w, &f.name, cur, left);
        }
        let counter = f.kind == CustomKind::Counter;
        let extra = if om && counter {
            Extra::Created
        } else {
            Extra::None
        };
        if *phase == 1 {
            let summed = sum_view_ex(
                vc,
                w,
                items,
                names,
                (1, extra.words(), true),
                cur,
                left,
                |it, key, out| {
                    (it.values.len() == n_values && has_arity(key, arity)).then(|| {
                        out.clear();
                        out.extend_from_slice(key);
                    })
                },
                |a, it| {
                    a[0] = load_f64(&it.values[0]).to_bits();
                    true
                },
                |ext, it| extra.merge(ext, it, None),
            );
            if !summed {
                return false;
            }
            *phase = 2;
            *cur = 0;
        }
        let base = om_family(&f.name, MetricType::Counter);
        let counter = counter.then_some((base, false));
        emit_lines(enc, vc, w, &f.name, Show::F64, counter, cur, left)
    }

    /// The zone's own figures (a fixed number of lines).
    fn self_metrics(&mut self, enc: &mut Encoder) {
        let (store, spec, w) = (&self.store, &self.spec, &mut self.cache.w);
        let u = store.usage();
        w.labels.clear();
        push_labels(&mut w.labels, &["zone"], &[spec.zone_name.as_bytes()]);
        let zone = w.labels.clone();
        use families::*;
        let gauges: [(&Family, u64); 7] = [
            (&ZONE_SIZE, u.region_bytes),
            (&ZONE_USED, u.used_bytes),
            (&ZONE_FREE, u.free_bytes),
            (&SERIES, u.series),
            (&OVERFLOW_SERIES, u.overflow_series),
            (&MAX_SERIES, spec.max_series),
            (&START_TIME, store.created()),
        ];
        for (def, v) in gauges {
            enc.family(def.name, def.help, def.kind);
            enc.sample_u64(def.name, &zone, v);
        }
        // The zone's counters count from its creation.
        let created_ms = store.created().saturating_mul(1000);
        let def = &DROPPED_UPDATES;
        enc.family(def.name, def.help, def.kind);
        for r in DropReason::ALL {
            w.labels.clear();
            push_labels(
                &mut w.labels,
                def.labels,
                &[spec.zone_name.as_bytes(), r.label().as_bytes()],
            );
            enc.sample_u64(def.name, &w.labels, store.drops(r));
            enc.created(om_family(def.name, def.kind), &w.labels, created_ms);
        }
        for (def, c) in [
            (&INVALID_CALLS, SelfCounter::InvalidCalls),
            (&ZONE_RESETS, SelfCounter::ZoneResets),
        ] {
            enc.family(def.name, def.help, def.kind);
            enc.sample_u64(def.name, &zone, store.self_counter(c));
            enc.created(om_family(def.name, def.kind), &zone, created_ms);
        }
    }
}

fn nginx(enc: &mut Encoder, n: &NginxStats, views: Views) {
    use families::*;
    for (def, v) in [
        (&NGINX_ACTIVE, n.active),
        (&NGINX_READING, n.reading),
        (&NGINX_WRITING, n.writing),
        (&NGINX_WAITING, n.waiting),
        (&NGINX_ACCEPTED, n.accepted),
        (&NGINX_HANDLED, n.handled),
        (&NGINX_REQUESTS, n.requests),
    ] {
        if views.shows(def) {
            enc.family(def.name, def.help, def.kind);
            enc.sample_u64(def.name, b"", v);
        }
    }
}
