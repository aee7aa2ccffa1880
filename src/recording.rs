//! Recording into the zone: the in-flight gauge, a finished request's families ([`record`], from
//! the snapshot [`Finished`]), through the worker's series cache. Never sees a request.

use std::cell::RefCell;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_metrics_core::buckets::bucket_index;
use gateway_metrics_core::cache::{
    bytes_words, bytes_words6, middle_words, middle_words2, Label, SeriesCache, Word3,
};
use gateway_metrics_core::catalogue::{self, fam, tokens};
use gateway_metrics_core::exemplar::{self, Exemplar, TraceContext, SLOT_WORDS};
use gateway_metrics_core::follow::FollowTable;
use gateway_metrics_core::store::{add_f64, add_u64, observe, observe_in, DropReason, SeriesKind};
use gateway_metrics_core::usage::Tokens;
use gateway_metrics_core::{series_cached, series_of};
use nginx_sys::*;

use crate::conf::MainConf;
use crate::request::{self, AutoStatus, Finished, Limit, Llm, ReqCtx, Target, UpstreamCache};

/// Entries of the per-worker series cache at first (about 250 bytes each); it doubles as it fills,
/// up to [`cache_limit`].
const CACHE_SLOTS: usize = 1024;

/// The most entries the worker's cache grows to: four per series the zone may hold (a request
/// updates up to six families), at most 64 Ki entries (16 MiB).
pub fn cache_limit(max_series: u64) -> usize {
    (max_series.saturating_mul(4)).clamp(CACHE_SLOTS as u64, 1 << 16) as usize
}

/// Sizes this worker's cache (and its table of model request series) for the zone (from
/// `init_process`, before any request).
pub fn size_cache(max_series: u64) {
    if let Ok(mut c) = CACHE.0.try_borrow_mut() {
        c.grow_up_to(cache_limit(max_series));
    }
    if let Ok(mut m) = MODEL_OF.0.try_borrow_mut() {
        m.grow_up_to(cache_limit(max_series));
    }
    if let Ok(mut m) = MODEL_OF_LONG.0.try_borrow_mut() {
        m.grow_up_to(cache_limit(max_series));
    }
}

/// The worker's cache of series it recorded before (see `gateway_metrics_core::cache`). A plain
/// static, not a `thread_local!` (whose access from a dynamically loaded library costs a TLS
/// lookup per use).
struct WorkerCache(RefCell<SeriesCache<'static>>);

// SAFETY: only the worker's event-loop thread records (phase handlers and Lua calls); render
// threads never touch it.
unsafe impl Sync for WorkerCache {}

static CACHE: WorkerCache = WorkerCache(RefCell::new(SeriesCache::new(CACHE_SLOTS)));

/// The worker's `model_requests` series by request series and model (see
/// `gateway_metrics_core::follow`): the request series' labels give the model series'
/// namespace and status class, so a request with a model that was seen before with the same
/// request labels finds its model series from the request series' address and the model's
/// words, without the series cache's packed key of model, namespace and class.
struct ModelOf(RefCell<FollowTable<'static>>);

// SAFETY: as WorkerCache: only the worker's event-loop thread records.
unsafe impl Sync for ModelOf {}

static MODEL_OF: ModelOf = ModelOf(RefCell::new(FollowTable::new(CACHE_SLOTS)));

/// [`MODEL_OF`] for models of 17 to 40 bytes (`gpt-4o-mini-2024-07-18`,
/// `claude-sonnet-4-5-20250929`), six words a key: asked only for a model of that length
/// (the usual one), so that short models pay nothing for it.
struct ModelOfLong(RefCell<FollowTable<'static, 6>>);

// SAFETY: as WorkerCache: only the worker's event-loop thread records.
unsafe impl Sync for ModelOfLong {}

static MODEL_OF_LONG: ModelOfLong = ModelOfLong(RefCell::new(FollowTable::new(CACHE_SLOTS / 4)));

/// This worker's lane in the zone (see `Store::claim_lane`), as a label value (the in-flight
/// gauge's second label), claimed once per process in `init_process`; empty when it has none.
static mut WORKER_LANE: ([u8; 20], usize) = ([0; 20], 0);

/// Sets this worker's lane label (from `init_process`, before the worker serves requests).
pub fn set_worker_lane(lane: u32) {
    // SAFETY: see worker_lane: called once, before any reader.
    let slot = unsafe { &mut *ptr::addr_of_mut!(WORKER_LANE) };
    let mut digits = [0u8; 20];
    let text = gateway_metrics_core::expo::format_u64(&mut digits, lane.into());
    slot.0[..text.len()].copy_from_slice(text);
    slot.1 = text.len();
}

/// This worker's zone as its cycle's configuration gives it, found once in `init_process`: the
/// log phase takes it from here instead of resolving the zone and its store for every request.
static mut WORKER_TARGET: Option<Target<'static>> = None;

/// Remembers this worker's zone (from `init_process`, before the worker serves requests).
pub fn set_worker_target(t: Target<'static>) {
    // SAFETY: written once before any reader, then only read on the worker's one thread.
    unsafe { *ptr::addr_of_mut!(WORKER_TARGET) = Some(t) };
}

/// This worker's zone, when it is the one of `mc` (the configuration the worker started with).
#[inline(always)]
pub(crate) fn worker_target(mc: &MainConf) -> Option<&'static Target<'static>> {
    // SAFETY: see set_worker_target.
    unsafe { &*ptr::addr_of!(WORKER_TARGET) }
        .as_ref()
        .filter(|t| ptr::eq(t.mc, mc))
}

/// The zone requests of `mc` record into: the worker's, or one found now (kept in `slot`).
#[inline(always)]
pub(crate) fn target_of<'s>(
    mc: &'static MainConf,
    slot: &'s mut Option<Target<'static>>,
) -> Option<&'s Target<'static>> {
    match worker_target(mc) {
        Some(t) => Some(t),
        None => {
            *slot = Target::of(mc);
            slot.as_ref()
        }
    }
}

/// A zone and where its warnings go, for recording.
pub(crate) struct Recorder<'t> {
    pub(crate) t: &'t Target<'t>,
    /// The request's connection log (or the cycle's).
    pub(crate) log: *mut ngx_log_t,
}

impl<'t> std::ops::Deref for Recorder<'t> {
    type Target = Target<'t>;
    fn deref(&self) -> &Target<'t> {
        self.t
    }
}

fn worker_lane() -> &'static [u8] {
    // SAFETY: written once in init_process, before the worker serves any request; only read
    // afterwards, on the worker's one event-loop thread.
    unsafe {
        let (buf, len) = &*ptr::addr_of!(WORKER_LANE);
        &buf[..*len]
    }
}

impl Recorder<'_> {
    /// The value words of the series of these labels (own or overflow), warning about
    /// drops once per burst.
    #[inline(always)]
    fn series<const N: usize>(
        &self,
        family: u32,
        layout: u8,
        n_values: u8,
        labels: &[Label; N],
    ) -> Option<&'static [AtomicU64]> {
        let kind = SeriesKind {
            family,
            layout,
            n_values,
        };
        let mut cache = CACHE.0.try_borrow_mut().ok()?;
        self.cached(&mut cache, kind, labels).0
    }

    /// `series_cached`, warning about a drop; also says whether the series is the labels' own.
    #[inline(always)]
    fn cached<const N: usize>(
        &self,
        cache: &mut SeriesCache<'static>,
        kind: SeriesKind,
        labels: &[Label; N],
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let (v, reason) = series_cached(
            cache,
            &self.store,
            &self.lock,
            self.zone.limits(),
            kind,
            labels,
        );
        if let Some(reason) = reason {
            self.warn(reason);
        }
        (v, reason.is_none())
    }

    /// The `REQUEST` series of these labels (method, endpoint, status code, namespace,
    /// upstream, cut). When method, endpoint and upstream have identities (the usual case: a
    /// known method, the location's name, the proxied upstream block or none), the cache is
    /// asked with a packed key: those three, the status code and the cut take one word triple,
    /// the namespace another. Also says whether the series is the labels' own (not an overflow
    /// series).
    #[inline(always)]
    fn request_series(
        &self,
        layout: u8,
        n_values: u8,
        labels: &[Label; 6],
        status: ngx_uint_t,
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let [method, endpoint, _, ns, upstream, cut] = labels;
        let kind = SeriesKind {
            family: fam::REQUEST,
            layout,
            n_values,
        };
        let packable = method.id != 0
            && method.id < 1 << 31
            && endpoint.id != 0
            && upstream.id != 0
            && status < 1 << 24
            && cut.id < 1 << 8;
        // The slow paths get a copy: lending them the snapshot's labels (which they walk in
        // loops) would keep the snapshot in memory, stored on every request.
        if !packable {
            let mut labels = *labels;
            request::fill_texts(&mut labels, status);
            let Ok(mut cache) = CACHE.0.try_borrow_mut() else {
                return (None, false);
            };
            return self.cached(&mut cache, kind, &labels);
        }
        let ids = [
            method.id << 32 | cut.id << 24 | status as u64,
            endpoint.id,
            upstream.id,
        ];
        let b = ns.bytes;
        if b.len() <= 16 {
            return self.request_packed(kind, [ids, bytes_words(b)], [], labels, status);
        }
        // A namespace of up to 64 bytes is held whole in the key's words: no middle to hash
        // and compare apart.
        if let Some(mid) = middle_words(b) {
            return self.request_packed(kind, [ids, bytes_words(b), mid], [], labels, status);
        }
        match middle_words2(b) {
            Some([m1, m2]) => {
                self.request_packed(kind, [ids, bytes_words(b), m1, m2], [], labels, status)
            }
            None => self.request_packed(kind, [ids, bytes_words(b)], [b], labels, status),
        }
    }

    /// A series asked of the cache with a packed key (see `SeriesCache::get_packed`), else
    /// found or made in the zone (and then cached under that key).
    #[inline(always)]
    fn packed<const N: usize, const L: usize, const M: usize>(
        &self,
        kind: SeriesKind,
        ks: [Word3; N],
        longs: [&[u8]; L],
        labels: &[Label; M],
    ) -> Option<&'static [AtomicU64]> {
        self.packed_own(kind, ks, longs, labels).0
    }

    /// [`packed`](Self::packed), also saying whether the series is the labels' own (not an
    /// overflow series).
    #[inline(always)]
    fn packed_own<const N: usize, const L: usize, const M: usize>(
        &self,
        kind: SeriesKind,
        ks: [Word3; N],
        longs: [&[u8]; L],
        labels: &[Label; M],
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let Ok(mut cache) = CACHE.0.try_borrow_mut() else {
            return (None, false);
        };
        // Only a series' own key is cached.
        if let Some(v) = cache.get_packed(kind.bits(), &ks, &longs) {
            return (Some(v), true);
        }
        // The slow path gets copies: lending it the key or the snapshot's labels would keep
        // them in memory, stored on every request.
        let (ks, longs, labels) = (ks, longs, *labels);
        self.packed_miss(&mut cache, kind, &ks, &longs, &labels)
    }

    /// [`packed_own`](Self::packed_own) for the request series, whose status code and method
    /// labels come without their texts (see `Finished::request`): added here on a miss, the
    /// only place they are read (a hit's key holds their numbers).
    #[inline(always)]
    fn request_packed<const N: usize, const L: usize>(
        &self,
        kind: SeriesKind,
        ks: [Word3; N],
        longs: [&[u8]; L],
        labels: &[Label; 6],
        status: ngx_uint_t,
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let Ok(mut cache) = CACHE.0.try_borrow_mut() else {
            return (None, false);
        };
        if let Some(v) = cache.get_packed(kind.bits(), &ks, &longs) {
            return (Some(v), true);
        }
        let (ks, longs, mut labels) = (ks, longs, *labels);
        request::fill_texts(&mut labels, status);
        self.packed_miss(&mut cache, kind, &ks, &longs, &labels)
    }

    /// [`packed`](Self::packed)'s cache miss.
    #[cold]
    #[inline(never)]
    fn packed_miss<const M: usize>(
        &self,
        cache: &mut SeriesCache<'static>,
        kind: SeriesKind,
        ks: &[Word3],
        longs: &[&[u8]],
        labels: &[Label; M],
    ) -> (Option<&'static [AtomicU64]>, bool) {
        // The namespace's place among the family's labels (see `catalogue::fam`).
        let ns = match kind.family {
            fam::REQUEST => 3,
            fam::ACTIVE => 0,
            _ => 1,
        };
        ngx::ngx_log_debug_mask!(
            DebugMask::Http,
            self.log,
            "gateway_metrics: series cache miss (namespace \"{}\"): looking in the zone",
            String::from_utf8_lossy(labels.get(ns).map_or(&b""[..], |l| l.bytes))
        );
        // Straight to the zone: the series is cached under its packed key only (an entry under
        // its labels too would take a second place in the cache, never looked up).
        let values: [&[u8]; M] = std::array::from_fn(|i| labels[i].bytes);
        let (v, reason) = series_of(&self.store, &self.lock, self.zone.limits(), kind, &values);
        match (v, reason) {
            (Some(v), None) => cache.insert_packed(kind.bits(), ks, longs, v),
            (_, Some(reason)) => self.warn(reason),
            _ => {}
        }
        (v, reason.is_none())
    }

    /// The series of a model family whose labels start with the request's model and namespace
    /// (`key`), then values with identities. With `rel` (the family's place in a [`Related`]
    /// entry) and the key's anchor, the key's copy of the related table's entry is asked first;
    /// else the cache, with a packed key. Also says whether the series is the labels' own (not
    /// an overflow series).
    #[inline(always)]
    fn model_series<const N: usize>(
        &self,
        (family, layout, n_values): (u32, u8, u8),
        key: &ModelKey,
        rel: Option<usize>,
        labels: &[Label; N],
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let anchor = rel.filter(|_| key.anchor != 0).map(|i| (key.anchor, i));
        if let Some(v) = rel.and_then(|i| key.related.get(i).copied().flatten()) {
            return (Some(v), true);
        }
        let kind = SeriesKind {
            family,
            layout,
            n_values,
        };
        let (v, own) = if labels.iter().skip(2).all(|l| l.id != 0) {
            let mut ks = [[0u64; 3]; N];
            for (i, (k, l)) in ks.iter_mut().zip(labels).enumerate() {
                *k = match i {
                    0 | 1 => bytes_words(l.bytes),
                    _ => [l.id, 0, 0],
                };
            }
            // A key of the model alone holds only the model's long value.
            let longs = match N {
                1 => [key.model, &b""[..]],
                _ => [key.model, key.ns],
            };
            self.packed_own(kind, ks, longs, labels)
        } else {
            let Ok(mut cache) = CACHE.0.try_borrow_mut() else {
                return (None, false);
            };
            let labels = *labels;
            self.cached(&mut cache, kind, &labels)
        };
        if let (Some((a, i)), Some(v), true) = (anchor, v, own) {
            related_put(a, i, v);
        }
        (v, own)
    }

    /// The in-flight series of `ns` in this worker's lane. The lane is the same for every
    /// request of the worker, so the cache is asked with the namespace alone (packed).
    #[inline(always)]
    fn active_series(&self, ns: &[u8], lane: &[u8]) -> Option<&'static [AtomicU64]> {
        let kind = SeriesKind {
            family: fam::ACTIVE,
            layout: 0,
            n_values: 2,
        };
        let labels = [Label::bytes(ns), Label::with_id(1, lane)];
        self.packed(kind, [bytes_words(ns)], [ns], &labels)
    }

    /// The `MODEL_REQUEST` series of (model, namespace, status class: `class_id` 1 or 2 for
    /// `class`), asked of the cache with a packed key: the model's words with the class in the
    /// top byte of its length word (a length never reaches it), then the namespace's. Also
    /// says whether it is the labels' own series (the anchor of the related table).
    #[inline(always)]
    fn model_request_series(
        &self,
        layout: u8,
        n_values: u8,
        model: &[u8],
        ns: &[u8],
        class: (u64, &'static str),
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let kind = SeriesKind {
            family: fam::MODEL_REQUEST,
            layout,
            n_values,
        };
        let mut model_words = bytes_words(model);
        model_words[0] ^= class.0 << 56;
        let labels = [
            Label::bytes(model),
            Label::bytes(ns),
            Label::with_id(class.0, class.1.as_bytes()),
        ];
        if model.len() <= 16 && ns.len() <= 16 {
            return self.packed_own(kind, [model_words, bytes_words(ns)], [], &labels);
        }
        // With a short model, a namespace of up to 64 bytes is held whole, as in the request
        // series' key.
        if model.len() <= 16 {
            if let Some(mid) = middle_words(ns) {
                return self.packed_own(kind, [model_words, bytes_words(ns), mid], [], &labels);
            }
            if let Some([m1, m2]) = middle_words2(ns) {
                let ks = [model_words, bytes_words(ns), m1, m2];
                return self.packed_own(kind, ks, [], &labels);
            }
        }
        self.packed_own(kind, [model_words, bytes_words(ns)], [model, ns], &labels)
    }

    /// The `MODEL_REQUEST` series of a request whose model and request series (`anchor`, 0
    /// when it cannot stand for the namespace and class) were not in the worker's `MODEL_OF`
    /// or `MODEL_OF_LONG` table: asked of the cache (see
    /// [`model_request_series`](Self::model_request_series)), then remembered in the table
    /// of its length when it is the labels' own.
    #[cold]
    #[inline(never)]
    fn model_request_miss(
        &self,
        layout: u8,
        n_values: u8,
        (model, ns): (&[u8], &[u8]),
        (cut, status): (bool, ngx_uint_t),
        anchor: usize,
    ) -> (Option<&'static [AtomicU64]>, bool) {
        let long = if anchor != 0 {
            bytes_words6(model)
        } else {
            None
        };
        // Only the model families have a status class (computed here: the usual request has
        // none of them). The snapshot's values, not the snapshot: see `Finished`.
        let class = if cut {
            "error"
        } else {
            catalogue::status_class(status.min(u16::MAX as ngx_uint_t) as u16)
        };
        let class_id = if class == "success" { 1 } else { 2 };
        let (v, own) = self.model_request_series(layout, n_values, model, ns, (class_id, class));
        if let (Some(v), true) = (v, own) {
            if anchor != 0 && model.len() <= 16 {
                if let Ok(mut m) = MODEL_OF.0.try_borrow_mut() {
                    m.insert(anchor, bytes_words(model), v);
                }
            } else if let Some(k) = long {
                if let Ok(mut m) = MODEL_OF_LONG.0.try_borrow_mut() {
                    m.insert(anchor, k, v);
                }
            }
        }
        (v, own)
    }

    /// Writes the request's exemplar into slot `slot` (of `slots`) of the series `values`.
    #[cold]
    #[inline(never)]
    fn exemplar(&self, values: &[AtomicU64], kind: (u32, u8), slots: (usize, usize), e: Exemplar) {
        let (family, layout) = kind;
        let (slots, slot) = slots;
        if let Some(ex) = self
            .store
            .exemplar_slots(&self.lock, values, family, layout, slots)
        {
            exemplar::write(&ex[slot * SLOT_WORDS..], &e);
        }
    }

    /// The exemplar of a histogram observation: in the slot of the bucket `value` falls in.
    /// (Compiled out of the recording without exemplars: `EX` false.)
    #[inline(always)]
    fn bucket_exemplar<const EX: bool>(
        &self,
        trace: Option<&Trace>,
        values: &[AtomicU64],
        kind: (u32, u8),
        bounds: &[f64],
        value: f64,
    ) {
        if !EX {
            return;
        }
        if let Some(tr) = trace {
            let slot = bucket_index(bounds, value);
            self.exemplar(values, kind, (bounds.len() + 1, slot), tr.at(value));
        }
    }

    #[cold]
    #[inline(never)]
    fn warn(&self, reason: DropReason) {
        if self.store.should_warn(request::now_ms() / 1000, 60) {
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                self.log,
                "gateway_metrics: zone \"{}\" is dropping new series ({}); their updates go to the \"__overflow__\" series and are counted in gateway_metrics_dropped_updates_total (next warning in 60s at the earliest)",
                self.zone.name,
                reason.label()
            );
        }
    }
}

/// The model families' first two labels, model and namespace, and the request's own
/// `model_requests` series once found (the anchor of the related table). Their packed key words
/// are only computed on a related-table miss: most requests find their series there.
struct ModelKey<'l> {
    /// The request's own `model_requests` series (its address), once found; 0 before, or when
    /// it is an overflow series. See [`Related`].
    anchor: usize,
    /// The anchor's series in the related table, read once for all the request's families
    /// (`None` where it has none yet: an entry's series never change but from `None`).
    related: [Option<&'static [AtomicU64]>; RELATED_FAMILIES],
    /// The two values, for their middles when longer than 16 bytes (see
    /// `SeriesCache::get_packed`).
    model: &'l [u8],
    ns: &'l [u8],
}

/// The series of the model families of one (model, namespace) other than `model_requests`,
/// found from the address of a `model_requests` series of those labels (the *anchor*: a
/// series never moves while the worker lives, so its address stands for its labels; an
/// overflow series, shared by many, is never one). A request with a model then asks the series
/// cache once, for its `model_requests` series, and finds the others here by that address.
#[derive(Clone, Copy)]
struct Related {
    anchor: usize,
    series: [Option<&'static [AtomicU64]>; RELATED_FAMILIES],
}

/// Places in [`Related::series`].
mod rel {
    pub const TOKENS: usize = 0;
    pub const UNPRICED: usize = 1;
    pub const THROUGHPUT: usize = 2;
    pub const TTFT: usize = 3;
    pub const TPOT: usize = 4;
}
const RELATED_FAMILIES: usize = 5;

/// Entries of the worker's related table (direct-mapped by the anchor's address; 88 bytes
/// each, allocated at the first request with a model). A miss only costs the cache lookups.
const RELATED_SLOTS: usize = 1024;

struct RelatedTable(RefCell<Vec<Related>>);

// SAFETY: as WorkerCache: only the worker's event-loop thread records.
unsafe impl Sync for RelatedTable {}

static RELATED: RelatedTable = RelatedTable(RefCell::new(Vec::new()));

/// The `model_requests` series of the request series at `anchor` and a model of these words
/// (see [`MODEL_OF`]).
#[inline(always)]
fn model_of(anchor: usize, k: &Word3) -> Option<&'static [AtomicU64]> {
    MODEL_OF.0.try_borrow().ok()?.get(anchor, k)
}

/// [`model_of`] for a model of 17 to 40 bytes (see [`MODEL_OF_LONG`]).
#[inline(always)]
fn model_of_long(anchor: usize, k: &[u64; 6]) -> Option<&'static [AtomicU64]> {
    MODEL_OF_LONG.0.try_borrow().ok()?.get(anchor, k)
}

#[inline(always)]
fn related_slot(anchor: usize) -> usize {
    // Series are 8-byte aligned words: the bits above those spread by a multiply.
    ((anchor as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % RELATED_SLOTS
}

/// The series of the related table's entry of `anchor` (none for 0, or without an entry).
#[inline(always)]
fn related_of(anchor: usize) -> [Option<&'static [AtomicU64]>; RELATED_FAMILIES] {
    let none = [None; RELATED_FAMILIES];
    if anchor == 0 {
        return none;
    }
    let Ok(table) = RELATED.0.try_borrow() else {
        return none;
    };
    match table.get(related_slot(anchor)) {
        Some(e) if e.anchor == anchor => e.series,
        _ => none,
    }
}

#[cold]
#[inline(never)]
fn related_put(anchor: usize, i: usize, v: &'static [AtomicU64]) {
    let Ok(mut table) = RELATED.0.try_borrow_mut() else {
        return;
    };
    if table.is_empty() {
        let empty = Related {
            anchor: 0,
            series: [None; RELATED_FAMILIES],
        };
        *table = vec![empty; RELATED_SLOTS];
    }
    let Some(e) = table.get_mut(related_slot(anchor)) else {
        return;
    };
    if e.anchor != anchor {
        e.anchor = anchor;
        e.series = [None; RELATED_FAMILIES];
    }
    if let Some(slot) = e.series.get_mut(i) {
        *slot = Some(v);
    }
}

/// Counts a request of namespace `ns` as in flight (once per request).
#[inline(always)]
pub(crate) fn enter(t: &Recorder, ctx: &mut ReqCtx, ns: &[u8]) {
    if ctx.active.is_some() || ctx.logged {
        return;
    }
    let lane = worker_lane();
    if lane.is_empty() {
        t.store.count_drop(DropReason::NoLane, 1);
        return;
    }
    // One series per namespace and worker lane, owned by the pid that last used it: a
    // worker killed with requests in flight leaves a series whose owner is dead; the
    // renderer skips it and the next worker of that lane resets it.
    if let Some(v) = t.active_series(ns, lane) {
        // SAFETY: ngx_pid is this process's pid, set before any request.
        let me = unsafe { ngx_pid } as u64;
        let owner = v[1].load(Ordering::Relaxed);
        if owner != me {
            let stale = owner != 0 && !crate::zone::pid_alive(owner);
            if owner == 0 || stale {
                let claimed = v[1]
                    .compare_exchange(owner, me, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
                // A dead owner's in-flight count is void: start from zero.
                if claimed && stale {
                    v[0].store(0, Ordering::Relaxed);
                }
            }
        }
        add_u64(&v[0], 1);
        ctx.active = Some(&v[0]);
    }
}

/// A request's trace and when it ended: what its exemplars carry besides their values.
struct Trace {
    ctx: TraceContext,
    ts_ms: u64,
}

impl Trace {
    fn at(&self, value: f64) -> Exemplar {
        Exemplar {
            trace: self.ctx,
            value,
            ts_ms: self.ts_ms,
        }
    }
}

/// Records a finished request: one stored series update for the request families, plus the
/// model, token and automatic limiter/cache events when there are any.
#[inline(always)]
pub(crate) fn record(t: &Recorder, f: &Finished) {
    record_with::<false>(t, f, None);
}

/// [`record`] for a location with exemplars on: the same updates, plus the exemplars of the
/// request's trace (`None`: it has no valid one) in the series it updated. (Cold: kept out of
/// the layout of the usual request's path.)
#[cold]
#[inline(never)]
pub(crate) fn record_traced(t: &Recorder, f: &Finished, trace: Option<TraceContext>) {
    // The zone's clock (a series' creation time is read from it too), not nginx's cached
    // time, which may be a few milliseconds behind.
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let trace = trace.map(|ctx| Trace { ctx, ts_ms });
    record_with::<true>(t, f, trace.as_ref());
}

#[inline(always)]
fn record_with<const EX: bool>(t: &Recorder, f: &Finished, trace: Option<&Trace>) {
    let (mc, status) = (t.mc, f.status);
    let hist_words = |b: &[f64]| (b.len() + 2) as u8;
    let (bounds, layouts) = (&mc.bounds, &t.zone.layouts);
    let words = hist_words(&bounds.duration);
    // The request series and the model request series observe the same duration in the same
    // buckets: one search.
    let (n_bounds, bucket) = (
        bounds.duration.len(),
        bucket_index(&bounds.duration, f.duration),
    );
    let (req, req_own) = t.request_series(layouts.duration, words, &f.request, status);
    if let Some(v) = req {
        observe_in(v, n_bounds, bucket, f.duration);
        let kind = (fam::REQUEST, layouts.duration);
        t.bucket_exemplar::<EX>(trace, v, kind, &bounds.duration, f.duration);
    }

    let ns = f.namespace();
    if !f.model.is_empty() || f.llm.is_some() {
        let model = f.model;
        let kind = (fam::MODEL_REQUEST, layouts.duration);
        // The request's own series stands for its namespace and status class: with a model of
        // up to 40 bytes (held whole in its words), the model series is found from the two.
        // (The model's words are made again on a miss: kept for it, they would be stored.)
        let anchor = match req {
            Some(r) if req_own => r.as_ptr() as usize,
            _ => 0,
        };
        let found = match model.len() {
            _ if anchor == 0 => None,
            0..=16 => model_of(anchor, &bytes_words(model)),
            // The usual model name (17 to 40 bytes) is as much a hit as a short one.
            _ => bytes_words6(model).and_then(|k| model_of_long(anchor, &k)),
        };
        let (v, own) = match found {
            Some(v) => (Some(v), true),
            None => {
                let how = (f.cut.is_some(), status);
                t.model_request_miss(kind.1, words, (model, ns), how, anchor)
            }
        };
        let mut anchor = 0;
        if let Some(v) = v {
            observe_in(v, n_bounds, bucket, f.duration);
            t.bucket_exemplar::<EX>(trace, v, kind, &bounds.duration, f.duration);
            if own {
                anchor = v.as_ptr() as usize;
            }
        }
        // The usual request with a model has no other model family.
        let more = |l: &&Llm| l.ttft.is_some() || l.tokens.is_some() || l.usage_missing.is_some();
        if let Some(llm) = f.llm.filter(more) {
            record_model_families::<EX>(t, (anchor, model, ns), llm, f.duration, trace);
        }
    }
    if let Some(auto) = f.auto {
        record_auto_events(t, ns, auto);
    }
}

/// The model families of a request with a model other than `model_requests` (its time to first
/// token, tokens, missing usage), from the key of its model and namespace. (Out of line: the
/// usual request with a model has none.)
#[inline(never)]
fn record_model_families<const EX: bool>(
    t: &Recorder,
    (anchor, model, ns): (usize, &[u8], &[u8]),
    llm: &Llm,
    duration: f64,
    trace: Option<&Trace>,
) {
    let key = &ModelKey {
        anchor,
        related: related_of(anchor),
        model,
        ns,
    };
    let (bounds, layouts) = (&t.mc.bounds, &t.zone.layouts);
    let labels = [Label::bytes(key.model), Label::bytes(key.ns)];
    if let Some(ttft) = llm.ttft {
        let words = (bounds.ttft.len() + 2) as u8;
        let kind = (fam::TTFT, layouts.ttft, words);
        if let (Some(v), _) = t.model_series(kind, key, Some(rel::TTFT), &labels) {
            observe(v, &bounds.ttft, ttft);
            t.bucket_exemplar::<EX>(trace, v, (fam::TTFT, layouts.ttft), &bounds.ttft, ttft);
        }
    }
    if let Some(tokens) = llm.tokens {
        record_tokens::<EX>(t, key, &labels, tokens, duration, llm.ttft, trace);
    }
    if let Some(why) = llm.usage_missing {
        let labels = [
            Label::bytes(key.model),
            Label::bytes(key.ns),
            Label::with_id(1 + why as u64, why.label().as_bytes()),
        ];
        if let (Some(v), _) = t.model_series((fam::USAGE_MISSING, 0, 1), key, None, &labels) {
            add_u64(&v[0], 1);
        }
    }
}

fn record_tokens<const EX: bool>(
    t: &Recorder,
    key: &ModelKey,
    labels: &[Label; 2],
    n: &Tokens,
    duration: f64,
    ttft: Option<f64>,
    trace: Option<&Trace>,
) {
    let mc = t.mc;
    let model = labels[0].bytes;
    let kind = (fam::MODEL_TOKENS, 0, tokens::N_VALUES);
    if let (Some(v), _) = t.model_series(kind, key, Some(rel::TOKENS), labels) {
        // The request's cost, once: recorded, and shown in its exemplar.
        let cost = mc
            .prices
            .get(model)
            .map(|p| p.cost(n.input, n.output, n.cached_input, n.cache_write));
        if let (true, Some(tr)) = (EX, trace) {
            for (slot, value) in [
                (n.input > 0).then_some(n.input as f64),
                (n.output > 0).then_some(n.output as f64),
                cost.filter(|c| *c > 0.0),
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(value) = value {
                    let slots = (tokens::EXEMPLAR_SLOTS.len(), slot);
                    t.exemplar(v, (fam::MODEL_TOKENS, 0), slots, tr.at(value));
                }
            }
        }
        for (slot, count) in [
            (tokens::INPUT, n.input),
            (tokens::OUTPUT, n.output),
            (tokens::CACHED_INPUT, n.cached_input),
            (tokens::CACHE_WRITE, n.cache_write),
            (tokens::REASONING, n.reasoning),
        ] {
            if count > 0 {
                add_u64(&v[slot], count);
            }
        }
        match cost {
            Some(c) => add_f64(&v[tokens::COST], c),
            None => {
                let labels = [Label::bytes(model)];
                let kind = (fam::UNPRICED, 0, 1);
                if let (Some(u), _) = t.model_series(kind, key, Some(rel::UNPRICED), &labels) {
                    add_u64(&u[0], 1);
                }
            }
        }
    }
    let (bounds, layouts) = (&mc.bounds, &t.zone.layouts);
    let generation = duration - ttft.unwrap_or(0.0);
    if n.output > 0 && generation > 0.0 {
        let words = (bounds.throughput.len() + 2) as u8;
        let kind = (fam::THROUGHPUT, layouts.throughput, words);
        if let (Some(v), _) = t.model_series(kind, key, Some(rel::THROUGHPUT), labels) {
            let tps = n.output as f64 / generation;
            observe(v, &bounds.throughput, tps);
            let kind = (fam::THROUGHPUT, layouts.throughput);
            t.bucket_exemplar::<EX>(trace, v, kind, &bounds.throughput, tps);
        }
    }
    // OpenTelemetry GenAI's time per output token: the generation after the first token, per
    // token after the first (streams only: without a first token there is no TTFT).
    if let (Some(_), true) = (ttft, n.output >= 2) {
        let words = (bounds.tpot.len() + 2) as u8;
        let kind = (fam::TPOT, layouts.tpot, words);
        if let (Some(v), _) = t.model_series(kind, key, Some(rel::TPOT), labels) {
            let tpot = generation.max(0.0) / (n.output - 1) as f64;
            observe(v, &bounds.tpot, tpot);
            t.bucket_exemplar::<EX>(trace, v, (fam::TPOT, layouts.tpot), &bounds.tpot, tpot);
        }
    }
}

/// What `$limit_req_status`, `$limit_conn_status` and `$upstream_cache_status` report, as events.
fn record_auto_events(t: &Recorder, ns: &[u8], st: AutoStatus) {
    for (status, rule, id) in [
        (st.limit_req(), "limit_req", 1),
        (st.limit_conn(), "limit_conn", 2),
    ] {
        let (hit, violation) = match status {
            Limit::Delayed | Limit::DryRun => (true, false),
            Limit::Rejected => (true, true),
            Limit::None => (false, false),
        };
        if hit {
            if let Some(v) = t.series(
                fam::RATE_LIMIT,
                0,
                2,
                &[Label::bytes(ns), Label::with_id(id, rule.as_bytes())],
            ) {
                add_u64(&v[0], 1);
                if violation {
                    add_u64(&v[1], 1);
                }
            }
        }
    }
    let slot = match st.cache {
        UpstreamCache::Hit => 0,
        UpstreamCache::Miss => 1,
        UpstreamCache::None => return,
    };
    if let Some(v) = t.series(fam::CACHE, 0, 2, &[Label::with_id(1, b"proxy_cache")]) {
        add_u64(&v[slot], 1);
    }
}
