//! Phase handlers (precontent: in-flight gauge; log: recording) and the `/metrics` handler.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use gateway_metrics_core::catalogue::{self, fam, tokens};
use gateway_metrics_core::expo::CONTENT_TYPE;
use gateway_metrics_core::labels::KeyBuilder;
use gateway_metrics_core::render::{render, HistSpec, NginxStats, RenderSpec};
use gateway_metrics_core::series;
use gateway_metrics_core::store::{add_f64, add_u64, observe, DropReason, SeriesKind, Store};
use nginx_sys::*;

use crate::conf::MainConf;
use crate::error::HandlerError;
use crate::request::{self, ReqCtx};
use crate::zone::{ShmLock, ZoneCtx};

/// One reusable key buffer per worker: no allocation per request. A plain static, not a
/// `thread_local!` (whose access from a dynamically loaded library costs a TLS lookup per use).
struct WorkerKey(RefCell<KeyBuilder>);

// SAFETY: only the worker's event-loop thread runs the phase handlers that use KEY; the render
// threads never touch it.
unsafe impl Sync for WorkerKey {}

static KEY: WorkerKey = WorkerKey(RefCell::new(KeyBuilder::empty()));

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
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let cmcf =
            *(*ctx).main_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_main_conf_t;
        #[cfg(ngx_feature = "threads")]
        if mc.exporter {
            let name = match &mc.render_pool_name {
                None => Some(b"default".to_vec()),
                Some(n) => n.clone(),
            };
            if let Some(name) = name {
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
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
    }
    NGX_OK as ngx_int_t
}

/// The zone, its store and lock, when the request should be recorded.
struct Target<'a> {
    mc: &'a MainConf,
    zone: &'a ZoneCtx,
    store: Store<'static>,
    lock: ShmLock,
}

/// # Safety
/// `r` must be a live request.
unsafe fn target<'a>(r: *mut ngx_http_request_t) -> Option<Target<'a>> {
    // SAFETY: forwarded contract; the zone ctx lives as long as the cycle.
    unsafe {
        let mc = request::main_conf(r);
        let zone = mc.zone.as_ref()?;
        let store = zone.store()?;
        let lock = zone.lock();
        Some(Target {
            mc,
            zone,
            store,
            lock,
        })
    }
}

impl Target<'_> {
    /// The value words of a series (own or overflow), warning about drops once per burst.
    fn series(
        &self,
        r: *mut ngx_http_request_t,
        family: u32,
        layout: u8,
        n_values: u8,
        key: &KeyBuilder,
    ) -> Option<&'static [AtomicU64]> {
        let kind = SeriesKind {
            family,
            layout,
            n_values,
        };
        let (v, reason) = series(
            &self.store,
            &self.lock,
            self.zone.limits(),
            kind,
            key.as_bytes(),
            key.len(),
        );
        if let Some(reason) = reason {
            self.warn(r, reason);
        }
        v
    }

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

/// Is the process alive? (`kill(pid, 0)`: EPERM still means it exists.)
pub fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for the process's existence.
    let rc = unsafe { kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(1 /* EPERM */)
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
        let Some(t) = target(r) else { return };
        // One walk of the pool's cleanups finds (or creates) the context.
        let Some(ctx) = request::ctx(r) else { return };
        if ctx.active.is_some() || ctx.logged {
            return;
        }
        let ns = request::label(r, lc.namespace, &lc.headers[0]);
        (|| {
            let Ok(mut k) = KEY.0.try_borrow_mut() else {
                return;
            };
            // One series per namespace and worker slot, owned by the pid that last used it:
            // a worker killed with requests in flight leaves a series whose owner is dead;
            // the renderer skips it and the respawned worker of that slot resets it.
            let mut slot = [0u8; 20];
            let slot = gateway_metrics_core::expo::format_u64(&mut slot, ngx_worker as u64);
            k.set(&[ns, slot]);
            if let Some(v) = t.series(r, fam::ACTIVE, 0, 2, &k) {
                let me = ngx_pid as u64;
                let owner = v[1].load(Ordering::Relaxed);
                let stale = owner != 0 && owner != me && !pid_alive(owner);
                let claim = owner == 0 || stale;
                if claim
                    && v[1]
                        .compare_exchange(owner, me, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    && stale
                {
                    v[0].store(0, Ordering::Relaxed);
                }
                add_u64(&v[0], 1);
                ctx.active = Some(&v[0]);
            }
        })();
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
        let Some(t) = target(r) else { return };
        let rr = &*r;
        let status = request::status(rr);
        let duration = request::request_seconds(rr);
        let ns = request::label(r, lc.namespace, &lc.headers[0]);
        let upstream = request::upstream(r, lc);
        let endpoint = request::endpoint(r, lc);
        let method = request::str_bytes(&rr.method_name);
        let mut status_buf = [0u8; 20];
        let status_buf = gateway_metrics_core::expo::format_u64(&mut status_buf, status as u64);
        let class = catalogue::status_class(status.min(u16::MAX as ngx_uint_t) as u16);
        let model: &[u8] = match ctx.as_deref() {
            Some(ReqCtx { model: Some(m), .. }) => m.as_slice(),
            _ => request::label(r, lc.model, &lc.headers[3]),
        };
        let auto = request::limiter_and_cache_status(rr);
        (|| {
            let Ok(mut k) = KEY.0.try_borrow_mut() else {
                return;
            };
            let mc = t.mc;
            let hist_words = |i: usize| (mc.bounds[i].len() + 2) as u8;

            k.set(&[method, endpoint, status_buf, ns, upstream]);
            if let Some(v) = t.series(r, fam::REQUEST, t.zone.layouts[0], hist_words(0), &k) {
                observe(v, &mc.bounds[0], duration);
            }

            let reqctx = ctx.as_deref();
            let has_tokens = reqctx.is_some_and(|c| c.has_tokens);
            if !model.is_empty() || has_tokens {
                k.set(&[model, ns, class.as_bytes()]);
                if let Some(v) =
                    t.series(r, fam::MODEL_REQUEST, t.zone.layouts[0], hist_words(0), &k)
                {
                    observe(v, &mc.bounds[0], duration);
                }
                let ttft = reqctx.and_then(|c| c.first_token_ms).map(|ms| {
                    let start = rr.start_sec as u64 * 1000 + rr.start_msec as u64;
                    ms.saturating_sub(start) as f64 / 1000.0
                });
                k.set(&[model, ns]);
                if let Some(ttft) = ttft {
                    if let Some(v) = t.series(r, fam::TTFT, t.zone.layouts[1], hist_words(1), &k) {
                        observe(v, &mc.bounds[1], ttft);
                    }
                }
                if let Some(c) = reqctx.filter(|c| c.has_tokens) {
                    record_tokens(&t, r, &k, model, c, duration, ttft);
                }
            }
            record_auto_events(&t, r, &mut k, ns, auto);
        })();
    }
}

fn record_tokens(
    t: &Target,
    r: *mut ngx_http_request_t,
    k: &KeyBuilder,
    model: &[u8],
    c: &ReqCtx,
    duration: f64,
    ttft: Option<f64>,
) {
    let mc = t.mc;
    if let Some(v) = t.series(r, fam::MODEL_TOKENS, 0, tokens::N_VALUES, k) {
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
                let mut mk = KeyBuilder::new();
                mk.push(model);
                if let Some(u) = t.series(r, fam::UNPRICED, 0, 1, &mk) {
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
            t.zone.layouts[2],
            (mc.bounds[2].len() + 2) as u8,
            k,
        ) {
            observe(v, &mc.bounds[2], output as f64 / generation);
        }
    }
}

/// What `$limit_req_status`, `$limit_conn_status` and `$upstream_cache_status` report, as events.
fn record_auto_events(
    t: &Target,
    r: *mut ngx_http_request_t,
    k: &mut KeyBuilder,
    ns: &[u8],
    st: request::AutoStatus,
) {
    use request::{Limit, UpstreamCache};
    for (status, rule) in [(st.limit_req, "limit_req"), (st.limit_conn, "limit_conn")] {
        let (hit, violation) = match status {
            Limit::Delayed | Limit::DryRun => (true, false),
            Limit::Rejected => (true, true),
            Limit::None => (false, false),
        };
        if hit {
            k.clear();
            k.push(ns).push(rule.as_bytes());
            if let Some(v) = t.series(r, fam::RATE_LIMIT, 0, 2, k) {
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
    k.clear();
    k.push(b"proxy_cache");
    if let Some(v) = t.series(r, fam::CACHE, 0, 2, k) {
        add_u64(&v[slot], 1);
    }
}

/// `gateway_metrics_exporter`: renders the zone as the Prometheus text format.
pub unsafe extern "C" fn exporter_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request to its location's content handler.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { export(r) }));
    match result {
        Ok(Ok(rc)) => rc,
        Ok(Err(e)) => e.status(),
        Err(_) => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
    }
}

/// # Safety
/// `r` must be a live request.
unsafe fn export(r: *mut ngx_http_request_t) -> Result<ngx_int_t, HandlerError> {
    // SAFETY: forwarded contract.
    unsafe {
        if (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
            return Err(HandlerError::MethodNotAllowed);
        }
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return Ok(rc);
        }
        let t = target(r).ok_or(HandlerError::ZoneUnavailable)?;
        #[cfg(ngx_feature = "threads")]
        if let Some(rc) = render_in_pool(r, &t) {
            return Ok(rc);
        }
        send_page(r, render_page(t.mc, t.zone, &t.store))
    }
}

/// Sends a rendered page as the response.
///
/// # Safety
/// `r` must be a live request.
unsafe fn send_page(r: *mut ngx_http_request_t, body: Vec<u8>) -> Result<ngx_int_t, HandlerError> {
    // SAFETY: forwarded contract; buffers handed to nginx live in the request pool.
    unsafe {
        let rr = &mut *r;
        rr.headers_out.status = NGX_HTTP_OK as ngx_uint_t;
        rr.headers_out.content_type = ngx_str_t {
            len: CONTENT_TYPE.len(),
            data: CONTENT_TYPE.as_ptr() as *mut u8,
        };
        // Up to ';': what gzip_types and friends compare against.
        rr.headers_out.content_type_len = "text/plain".len();
        rr.headers_out.content_type_lowcase = ptr::null_mut();
        rr.headers_out.content_length_n = body.len() as off_t;
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || rr.header_only() != 0 {
            return Ok(rc);
        }
        // The rendered page is handed to nginx as is (no copy); the pool frees it.
        let body = crate::conf::pool_alloc(rr.pool, body);
        if body.is_null() {
            return Err(HandlerError::NoMemory);
        }
        let b = ngx_pcalloc(rr.pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if b.is_null() {
            return Err(HandlerError::NoMemory);
        }
        (*b).pos = (*body).as_ptr() as *mut u8;
        (*b).last = (*b).pos.add((*body).len());
        (*b).set_memory(1);
        (*b).set_last_buf(if r == rr.main { 1 } else { 0 });
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        Ok(ngx_http_output_filter(r, &mut out))
    }
}

/// A render done in a thread pool so that big pages never block the worker's event loop.
/// Lives in the request pool; the thread only reads the zone (atomics) and the confs.
#[cfg(ngx_feature = "threads")]
struct RenderJob {
    mc: *const MainConf,
    zone: *const ZoneCtx,
    out: Vec<u8>,
    /// Set on the event loop when the thread has finished; until then write events on the
    /// connection (it may be writable at any time) must not send anything.
    done: bool,
}

/// Posts the render to the configured thread pool; `None` to render inline instead.
///
/// # Safety
/// `r` must be a live request in its content phase.
#[cfg(ngx_feature = "threads")]
unsafe fn render_in_pool(r: *mut ngx_http_request_t, t: &Target) -> Option<ngx_int_t> {
    if t.mc.render_pool.is_null() {
        return None;
    }
    // SAFETY: forwarded contract. While the task runs the request is `blocked` (nginx will not
    // free it) and its count is raised (it stays open until send_rendered finalizes it).
    unsafe {
        let rr = &mut *r;
        let job = crate::conf::pool_alloc(
            rr.pool,
            RenderJob {
                mc: t.mc,
                zone: t.zone,
                out: Vec::new(),
                done: false,
            },
        );
        let task = ngx_thread_task_alloc(rr.pool, 0);
        if job.is_null() || task.is_null() {
            return None;
        }
        (*task).ctx = job as *mut std::ffi::c_void;
        (*task).handler = Some(render_task);
        (*task).event.data = r as *mut std::ffi::c_void;
        (*task).event.handler = Some(render_done);
        if ngx_thread_task_post(t.mc.render_pool as *mut ngx_thread_pool_t, task)
            != NGX_OK as ngx_int_t
        {
            return None;
        }
        *rr.ctx.add(crate::module().ctx_index) = job as *mut std::ffi::c_void;
        let main = &mut *rr.main;
        main.set_blocked(main.blocked() + 1);
        main.set_count(main.count() + 1);
        rr.set_aio(1);
        rr.write_event_handler = Some(send_rendered);
        Some(NGX_DONE as ngx_int_t)
    }
}

/// Runs in a pool thread.
#[cfg(ngx_feature = "threads")]
unsafe extern "C" fn render_task(data: *mut std::ffi::c_void, _log: *mut ngx_log_t) {
    // SAFETY: data is the RenderJob posted by render_in_pool; nothing else touches it until
    // render_done runs on the event loop.
    let job = unsafe { &mut *(data as *mut RenderJob) };
    lower_render_priority();
    let out = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the confs and the zone ctx outlive the cycle's requests.
        let (mc, zone) = unsafe { (&*job.mc, &*job.zone) };
        zone.store().map(|s| render_page(mc, zone, &s))
    }));
    job.out = out.ok().flatten().unwrap_or_default();
}

/// Renders run at a lower CPU priority than the worker's event loop (nice +10 for this
/// thread only): when CPUs are busy, traffic comes first and a scrape takes longer instead.
#[cfg(ngx_feature = "threads")]
fn lower_render_priority() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    DONE.with(|d| {
        if !d.replace(true) {
            // SAFETY: plain syscalls on the calling thread; failure just leaves the priority.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
        }
    });
}

/// Back on the event loop when the render task is done.
#[cfg(ngx_feature = "threads")]
unsafe extern "C" fn render_done(ev: *mut ngx_event_t) {
    // SAFETY: the event's data is the blocked request, still alive.
    unsafe {
        let r = (*ev).data as *mut ngx_http_request_t;
        let rr = &mut *r;
        // The handler below may free the request: keep the connection (it outlives it).
        let c = rr.connection;
        let job = *rr.ctx.add(crate::module().ctx_index) as *mut RenderJob;
        if !job.is_null() {
            (*job).done = true;
        }
        let main = &mut *rr.main;
        main.set_blocked(main.blocked() - 1);
        rr.set_aio(0);
        // send_rendered, unless nginx replaced the handler to terminate the request meanwhile.
        if let Some(h) = rr.write_event_handler {
            h(r);
        }
        ngx_http_run_posted_requests(c);
    }
}

#[cfg(ngx_feature = "threads")]
unsafe extern "C" fn send_rendered(r: *mut ngx_http_request_t) {
    // SAFETY: r is live; its ctx holds the RenderJob set by render_in_pool.
    unsafe {
        let job = *(*r).ctx.add(crate::module().ctx_index) as *mut RenderJob;
        if (*r).aio() != 0 || (!job.is_null() && !(*job).done) {
            // A write event before the render finished: nothing to send yet.
            return;
        }
        let rc = if job.is_null() || (*job).out.is_empty() {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        } else {
            let body = std::mem::take(&mut (*job).out);
            send_page(r, body).unwrap_or_else(|e| e.status())
        };
        ngx_http_finalize_request(r, rc);
    }
}

/// Size of the last rendered page in this process.
static LAST_PAGE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn render_page(mc: &MainConf, zone: &ZoneCtx, store: &Store) -> Vec<u8> {
    let spec = RenderSpec {
        zone_name: &zone.name,
        max_series: mc.max_series,
        duration: HistSpec {
            bounds: &mc.bounds[0],
            layout: zone.layouts[0],
        },
        ttft: HistSpec {
            bounds: &mc.bounds[1],
            layout: zone.layouts[1],
        },
        throughput: HistSpec {
            bounds: &mc.bounds[2],
            layout: zone.layouts[2],
        },
        custom: &zone.custom,
        nginx: nginx_stats(),
        alive: Some(pid_alive),
    };
    // Reserve what the last page needed (plus margin): growing a multi-megabyte Vec by doubling
    // costs more than rendering it.
    let hint = LAST_PAGE_BYTES.load(Ordering::Relaxed);
    let mut out = Vec::with_capacity((hint + hint / 8).max(64 * 1024));
    render(store, &spec, &mut out);
    LAST_PAGE_BYTES.store(out.len(), Ordering::Relaxed);
    out
}

#[cfg(gm_stat_stub)]
fn nginx_stats() -> Option<NginxStats> {
    // SAFETY: with stub_status compiled in, nginx points these at shared atomic counters before
    // any request is served.
    unsafe {
        let read = |p: *mut ngx_atomic_t| {
            if p.is_null() {
                0
            } else {
                ptr::read_volatile(p) as u64
            }
        };
        Some(NginxStats {
            active: read(ngx_stat_active),
            reading: read(ngx_stat_reading),
            writing: read(ngx_stat_writing),
            waiting: read(ngx_stat_waiting),
            accepted: read(ngx_stat_accepted),
            handled: read(ngx_stat_handled),
            requests: read(ngx_stat_requests),
        })
    }
}

#[cfg(not(gm_stat_stub))]
fn nginx_stats() -> Option<NginxStats> {
    None
}
