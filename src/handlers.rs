//! Phase handlers: precontent (the in-flight gauge) and log (recording the request).

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_metrics_core::cache::{bytes_words, Label, SeriesCache};
use gateway_metrics_core::catalogue::{self, fam, tokens};
use gateway_metrics_core::series_cached;
use gateway_metrics_core::store::{add_f64, add_u64, observe, DropReason, SeriesKind};
use nginx_sys::*;

#[cfg(ngx_feature = "threads")]
use crate::conf::RenderMode;
use crate::request::{self, ReqCtx, Target};
use crate::zone::ZoneSpec;

/// Entries of the per-worker series cache (about 150 bytes each).
const CACHE_SLOTS: usize = 1024;

/// The worker's cache of series it recorded before (see `gateway_metrics_core::cache`). A plain
/// static, not a `thread_local!` (whose access from a dynamically loaded library costs a TLS
/// lookup per use).
struct WorkerCache(RefCell<SeriesCache<'static>>);

// SAFETY: only the worker's event-loop thread records (phase handlers and Lua calls); render
// threads never touch it.
unsafe impl Sync for WorkerCache {}

static CACHE: WorkerCache = WorkerCache(RefCell::new(SeriesCache::new(CACHE_SLOTS)));

/// This worker's lane in the zone (see `Store::claim_lane`), as a label value (the in-flight
/// gauge's second label), claimed once per process in `init_process`; empty when it has none.
static mut WORKER_LANE: ([u8; 20], usize) = ([0; 20], 0);

fn worker_lane() -> &'static [u8] {
    // SAFETY: written once in init_process, before the worker serves any request; only read
    // afterwards, on the worker's one event-loop thread.
    unsafe {
        let (buf, len) = &*ptr::addr_of!(WORKER_LANE);
        &buf[..*len]
    }
}

/// The next body filter (nginx's filter chain is a linked list of function pointers).
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

pub unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls this with the http block's conf; the core module's main conf holds
    // the phase handler arrays.
    unsafe {
        let mc = crate::conf::main_conf_of(cf);
        if mc.used && mc.zone.is_null() {
            ngx::ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"gateway_metrics\" and \"gateway_metrics_exporter\" need a \"gateway_metrics_zone\" in the http block"
            );
            return NGX_ERROR as ngx_int_t;
        }
        // The zone's series are shaped by the settings of the whole block, known only now.
        if let Some(zone) = mc.zone.as_mut() {
            zone.spec = ZoneSpec {
                max_series: mc.max_series,
                bounds: mc.bounds.clone(),
                custom: mc.custom.clone(),
            };
        }
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let cmcf =
            *(*ctx).main_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_main_conf_t;
        #[cfg(ngx_feature = "threads")]
        if mc.exporter {
            // Off unless configured: the pool's threads would put every libc call of the
            // worker on its multi-threaded path (slower for all traffic); the default renders
            // in bounded slices on the event loop instead.
            if let RenderMode::ThreadPool(name) = mc.render_mode.clone() {
                // nginx keeps the name: copy it into the configuration pool.
                let data = ngx_pnalloc((*cf).pool, name.len()) as *mut u8;
                if data.is_null() {
                    return NGX_ERROR as ngx_int_t;
                }
                ptr::copy_nonoverlapping(name.as_ptr(), data, name.len());
                let mut s = ngx_str_t {
                    len: name.len(),
                    data,
                };
                mc.render_pool = ngx_thread_pool_add(cf, &mut s) as *mut std::ffi::c_void;
                if mc.render_pool.is_null() {
                    return NGX_ERROR as ngx_int_t;
                }
            }
        }
        // Watches response bodies for their end (see `body_filter`).
        if mc.used {
            NEXT_BODY_FILTER = ngx_http_top_body_filter;
            ngx_http_top_body_filter = Some(body_filter);
        }
        for (phase, handler) in [
            (
                ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
                precontent_handler as unsafe extern "C" fn(_) -> _,
            ),
            (ngx_http_phases_NGX_HTTP_LOG_PHASE, log_handler),
        ] {
            let h = ngx_array_push(&mut (*cmcf).phases[phase as usize].handlers)
                as *mut ngx_http_handler_pt;
            if h.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            *h = Some(handler);
        }
    }
    NGX_OK as ngx_int_t
}

/// Runs once every module's postconfiguration is done: moves the log handler to the end of the
/// log phase (log handlers run in array order), so that what Lua gives in `log_by_lua` (which
/// registers its handler in its own postconfiguration, maybe after ours) is still recorded.
pub unsafe extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls this in the master with the new cycle, after the http block was
    // parsed; its http conf ctx holds the core module's main conf.
    unsafe {
        let http = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        if http.is_null() {
            return NGX_OK as ngx_int_t;
        }
        let cmcf = *(*http).main_conf.add(ngx_http_core_module.ctx_index)
            as *mut ngx_http_core_main_conf_t;
        let arr = &mut (*cmcf).phases[ngx_http_phases_NGX_HTTP_LOG_PHASE as usize].handlers;
        let hs = std::slice::from_raw_parts_mut(arr.elts as *mut ngx_http_handler_pt, arr.nelts);
        let ours = log_handler as unsafe extern "C" fn(_) -> _ as usize;
        if let Some(i) = hs.iter().position(|h| h.map(|f| f as usize) == Some(ours)) {
            hs[i..].rotate_left(1);
        }
    }
    NGX_OK as ngx_int_t
}

/// Per worker: large allocations (rendered pages, megabytes each, made in up to 32 render
/// threads) go straight to mmap and back to the system when freed, instead of staying cached in
/// glibc's per-thread arenas (whose dynamic threshold would otherwise grow to the page size).
pub unsafe extern "C" fn init_process(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: mallopt only changes allocator tuning; called before any render thread runs.
    // WORKER_LANE is written before the worker serves requests (see worker_lane).
    unsafe {
        // The configuration this worker runs (not a global set by the master's last parse: a
        // reload that failed after postconfiguration must not change what respawned workers do).
        let mc = crate::conf::cycle_main_conf();
        // Only with a render pool: a fixed threshold also switches off glibc's dynamic trim
        // threshold, which makes every malloc of ordinary traffic slower.
        if mc.is_some_and(|mc| !mc.render_pool.is_null()) {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
        }
        // A lane of its own: the new workers of a reload do not share the in-flight series of
        // the old ones still finishing their requests.
        let lane = mc
            .and_then(|mc| mc.zone.as_ref())
            .and_then(|z| z.store())
            .and_then(|s| s.claim_lane(ngx_pid as u64, crate::zone::pid_alive));
        let slot = &mut *ptr::addr_of_mut!(WORKER_LANE);
        if let Some(lane) = lane {
            let mut digits = [0u8; 20];
            let text = gateway_metrics_core::expo::format_u64(&mut digits, lane.into());
            slot.0[..text.len()].copy_from_slice(text);
            slot.1 = text.len();
        }
    }
    NGX_OK as ngx_int_t
}

impl Target<'_> {
    /// The value words of the series of these labels (own or overflow), warning about
    /// drops once per burst.
    #[inline(always)]
    fn series<const N: usize>(
        &self,
        r: *mut ngx_http_request_t,
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
        self.cached(r, &mut cache, kind, labels).0
    }

    /// `series_cached`, warning about a drop; also says whether the series is the labels' own.
    #[inline(always)]
    fn cached<const N: usize>(
        &self,
        r: *mut ngx_http_request_t,
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
            self.warn(r, reason);
        }
        (v, reason.is_none())
    }

    /// The `REQUEST` series of these labels (method, endpoint, status code, namespace,
    /// upstream, cut). When method, endpoint and upstream have identities (the usual case: a
    /// known method, the location's name, the proxied upstream block or none), the cache is
    /// asked with a packed key: those three, the status code and the cut take one word triple,
    /// the namespace another.
    #[inline(always)]
    fn request_series(
        &self,
        r: *mut ngx_http_request_t,
        layout: u8,
        n_values: u8,
        labels: &[Label; 6],
        status: ngx_uint_t,
    ) -> Option<&'static [AtomicU64]> {
        let [method, endpoint, _, ns, upstream, cut] = labels;
        let packable = method.id != 0
            && method.id < 1 << 31
            && endpoint.id != 0
            && upstream.id != 0
            && status < 1 << 24
            && cut.id < 1 << 8;
        if !packable {
            return self.series(r, fam::REQUEST, layout, n_values, labels);
        }
        let kind = SeriesKind {
            family: fam::REQUEST,
            layout,
            n_values,
        };
        let ks = [
            [
                method.id << 32 | cut.id << 24 | status as u64,
                endpoint.id,
                upstream.id,
            ],
            bytes_words(ns.bytes),
        ];
        let mut cache = CACHE.0.try_borrow_mut().ok()?;
        if let Some(v) = cache.get_packed(kind.bits(), &ks, ns.bytes) {
            return Some(v);
        }
        // SAFETY: r is live; its connection's log is valid.
        let log = unsafe { (*(*r).connection).log };
        ngx::ngx_log_debug_mask!(
            DebugMask::Http,
            log,
            "gateway_metrics: series cache miss (namespace \"{}\"): looking in the zone",
            String::from_utf8_lossy(ns.bytes)
        );
        let (v, own) = self.cached(r, &mut cache, kind, labels);
        if let (Some(v), true) = (v, own) {
            cache.insert_packed(kind.bits(), &ks, ns.bytes, v);
        }
        v
    }

    #[cold]
    #[inline(never)]
    fn warn(&self, r: *mut ngx_http_request_t, reason: DropReason) {
        if self.store.should_warn(request::now_ms() / 1000, 60) {
            // SAFETY: r is live; its connection's log is valid.
            let log = unsafe { (*(*r).connection).log };
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "gateway_metrics: zone \"{}\" is dropping new series ({}); their updates go to the \"__overflow__\" series and are counted in gateway_metrics_dropped_updates_total (next warning in 60s at the earliest)",
                self.zone.name,
                reason.label()
            );
        }
    }
}

/// Counts the request as in flight once it has passed the access phases (so a namespace set
/// by rewrite/access Lua code is seen). Never affects the request.
pub unsafe extern "C" fn precontent_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { enter(r) }));
    NGX_DECLINED as ngx_int_t
}

/// # Safety
/// `r` must be a live request.
unsafe fn enter(r: *mut ngx_http_request_t) {
    // SAFETY: forwarded contract.
    unsafe {
        let lc = request::loc_conf(r);
        if (*r).main != r || lc.enable != 1 {
            return;
        }
        let Some(t) = request::target(r) else { return };
        // One walk of the pool's cleanups finds (or creates) the context.
        let Some(ctx) = request::ctx(r) else { return };
        if ctx.active.is_some() || ctx.logged {
            return;
        }
        let lane = worker_lane();
        if lane.is_empty() {
            t.store.count_drop(DropReason::NoLane, 1);
            return;
        }
        let ns = request::label(r, &lc.namespace);
        // One series per namespace and worker lane, owned by the pid that last used it: a
        // worker killed with requests in flight leaves a series whose owner is dead; the
        // renderer skips it and the next worker of that lane resets it.
        if let Some(v) = t.series(
            r,
            fam::ACTIVE,
            0,
            2,
            &[Label::bytes(ns), Label::with_id(1, lane)],
        ) {
            let me = ngx_pid as u64;
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
}

/// Records the finished request: one stored series update for the request families, plus
/// the model, token and automatic limiter/cache events when there are any.
pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { record(r) }));
    NGX_OK as ngx_int_t
}

/// # Safety
/// `r` must be a live request.
unsafe fn record(r: *mut ngx_http_request_t) {
    // SAFETY: forwarded contract; all borrowed label bytes live in the request pool or confs.
    unsafe {
        if (*r).main != r {
            return;
        }
        let mut ctx = request::find_ctx(r);
        if let Some(c) = ctx.as_deref_mut() {
            c.leave();
            if c.logged {
                return;
            }
            c.logged = true;
        }
        let lc = request::loc_conf(r);
        if lc.enable != 1 {
            return;
        }
        let Some(t) = request::target(r) else { return };
        let rr = &*r;
        let status = request::status(rr);
        let duration = request::request_seconds(rr);
        let ns = request::label(r, &lc.namespace);
        let upstream = request::upstream(r, lc);
        let endpoint = request::endpoint(r, lc);
        let method = request::method(rr);
        let mut status_buf = [0u8; 20];
        let status_label = status_label(&mut status_buf, status);
        let complete = || request::body_complete(r, ctx.as_deref());
        let cut = request::cut_reason(rr, ctx.as_deref(), complete, status);
        let class = match cut {
            Some(_) => "error",
            None => catalogue::status_class(status.min(u16::MAX as ngx_uint_t) as u16),
        };
        let model: &[u8] = match ctx.as_deref() {
            Some(ReqCtx { model: Some(m), .. }) => m.as_slice(),
            _ if !lc.model.is_set() => b"",
            _ => request::label(r, &lc.model),
        };
        let auto = request::limiter_and_cache_status(rr);
        ngx::ngx_log_debug_mask!(
            DebugMask::Http,
            (*rr.connection).log,
            "gateway_metrics: method \"{}\" endpoint \"{}\" status {} namespace \"{}\" upstream \"{}\" cut {:?} model \"{}\" body whole {}",
            String::from_utf8_lossy(method.bytes),
            String::from_utf8_lossy(endpoint.bytes),
            status,
            String::from_utf8_lossy(ns),
            String::from_utf8_lossy(upstream.bytes),
            cut.map(|c| c.label()),
            String::from_utf8_lossy(model),
            complete()
        );
        let mc = t.mc;
        let hist_words = |b: &[f64]| (b.len() + 2) as u8;

        let labels = [
            method,
            endpoint,
            Label::with_id(status as u64 | 1 << 40, status_label),
            Label::bytes(ns),
            upstream,
            cut.map_or(Label::with_id(1, b""), |c| {
                Label::with_id(2 + c as u64, c.label().as_bytes())
            }),
        ];
        let (bounds, layouts) = (&mc.bounds, &t.zone.layouts);
        let words = hist_words(&bounds.duration);
        if let Some(v) = t.request_series(r, layouts.duration, words, &labels, status) {
            observe(v, &bounds.duration, duration);
        }

        let reqctx = ctx.as_deref();
        let has_tokens = reqctx.is_some_and(|c| c.has_tokens);
        if !model.is_empty() || has_tokens {
            let class_id = if class == "success" { 1 } else { 2 };
            let labels = [
                Label::bytes(model),
                Label::bytes(ns),
                Label::with_id(class_id, class.as_bytes()),
            ];
            if let Some(v) = t.series(r, fam::MODEL_REQUEST, layouts.duration, words, &labels) {
                observe(v, &bounds.duration, duration);
            }
            let ttft = reqctx.and_then(|c| c.first_token_ms).map(|ms| {
                let start = rr.start_sec as u64 * 1000 + rr.start_msec as u64;
                ms.saturating_sub(start) as f64 / 1000.0
            });
            let labels = [Label::bytes(model), Label::bytes(ns)];
            if let Some(ttft) = ttft {
                let words = hist_words(&bounds.ttft);
                if let Some(v) = t.series(r, fam::TTFT, layouts.ttft, words, &labels) {
                    observe(v, &bounds.ttft, ttft);
                }
            }
            if let Some(c) = reqctx.filter(|c| c.has_tokens) {
                record_tokens(&t, r, &labels, c, duration, ttft);
            }
        }
        if auto.any() {
            record_auto_events(&t, r, ns, auto);
        }
    }
}

/// "100" to "999", three bytes each: the `status_code` label without formatting.
static STATUS_DIGITS: [u8; 2700] = {
    let mut t = [0u8; 2700];
    let mut s = 100;
    while s < 1000 {
        let i = (s - 100) * 3;
        t[i] = b'0' + (s / 100) as u8;
        t[i + 1] = b'0' + (s / 10 % 10) as u8;
        t[i + 2] = b'0' + (s % 10) as u8;
        s += 1;
    }
    t
};

/// The `status_code` label.
fn status_label(buf: &mut [u8; 20], status: ngx_uint_t) -> &[u8] {
    if (100..1000).contains(&status) {
        let i = (status - 100) * 3;
        &STATUS_DIGITS[i..i + 3]
    } else {
        gateway_metrics_core::expo::format_u64(buf, status as u64)
    }
}

fn record_tokens(
    t: &Target,
    r: *mut ngx_http_request_t,
    labels: &[Label; 2],
    c: &ReqCtx,
    duration: f64,
    ttft: Option<f64>,
) {
    let mc = t.mc;
    let model = labels[0].bytes;
    if let Some(v) = t.series(r, fam::MODEL_TOKENS, 0, tokens::N_VALUES, labels) {
        for (i, n) in c.tokens.iter().enumerate() {
            if *n > 0 {
                add_u64(&v[i], *n);
            }
        }
        match mc.prices.get(model) {
            Some(p) => add_f64(
                &v[tokens::COST],
                p.cost(c.tokens[0], c.tokens[1], c.tokens[2]),
            ),
            None => {
                if let Some(u) = t.series(r, fam::UNPRICED, 0, 1, &[Label::bytes(model)]) {
                    add_u64(&u[0], 1);
                }
            }
        }
    }
    let output = c.tokens[tokens::OUTPUT];
    let generation = duration - ttft.unwrap_or(0.0);
    if output > 0 && generation > 0.0 {
        if let Some(v) = t.series(
            r,
            fam::THROUGHPUT,
            t.zone.layouts.throughput,
            (mc.bounds.throughput.len() + 2) as u8,
            labels,
        ) {
            observe(v, &mc.bounds.throughput, output as f64 / generation);
        }
    }
}

/// What `$limit_req_status`, `$limit_conn_status` and `$upstream_cache_status` report, as events.
fn record_auto_events(t: &Target, r: *mut ngx_http_request_t, ns: &[u8], st: request::AutoStatus) {
    use request::{Limit, UpstreamCache};
    for (status, rule, id) in [
        (st.limit_req, "limit_req", 1),
        (st.limit_conn, "limit_conn", 2),
    ] {
        let (hit, violation) = match status {
            Limit::Delayed | Limit::DryRun => (true, false),
            Limit::Rejected => (true, true),
            Limit::None => (false, false),
        };
        if hit {
            if let Some(v) = t.series(
                r,
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
    if let Some(v) = t.series(r, fam::CACHE, 0, 2, &[Label::with_id(1, b"proxy_cache")]) {
        add_u64(&v[slot], 1);
    }
}

/// Notes, for the log phase, that a response's body went out whole (its last buffer passed)
/// and when a proxied body last carried data. Only looks at the buffers: the response is
/// passed on unchanged, at once.
unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its output chain.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { watch_body(r, chain) }));
    // SAFETY: NEXT_BODY_FILTER was set in postconfiguration, before any request.
    match unsafe { *ptr::addr_of!(NEXT_BODY_FILTER) } {
        // SAFETY: the next filter takes what ours was given.
        Some(next) => unsafe { next(r, chain) },
        None => NGX_OK as ngx_int_t,
    }
}

/// # Safety
/// `r` must be a live request and `chain` null or its output chain.
unsafe fn watch_body(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) {
    // SAFETY: forwarded contract; the chain's links and buffers are live.
    unsafe {
        if (*r).main != r {
            return;
        }
        let (mut last, mut data) = (false, false);
        let mut cl = chain;
        while !cl.is_null() {
            let b = (*cl).buf;
            if !b.is_null() {
                last |= (*b).last_buf() != 0;
                data |= (*b).pos != (*b).last || (*b).in_file() != 0;
            }
            cl = (*cl).next;
        }
        // Only the end of a body, and a proxied body's data, are of interest.
        let proxied = data && !(*r).upstream.is_null();
        if !(last || proxied) || request::loc_conf(r).enable != 1 {
            return;
        }
        if last {
            request::mark_complete(r);
        }
        if proxied {
            if let Some(ctx) = request::find_ctx(r) {
                ctx.last_body_msec = request::now_msec();
            }
        }
    }
}
