//! The module's nginx callbacks: postconfiguration and process start (lifecycle), the phase
//! handlers (precontent: the in-flight gauge; log: recording the request) and the body filter.
//! Each converts nginx's pointers in its first lines, then calls safe code; none lets a panic
//! reach nginx or changes what the request does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use gateway_metrics_core::catalogue::UsageMissing;
use nginx_sys::*;
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule, Request};

#[cfg(ngx_feature = "threads")]
use crate::conf::RenderMode;
use crate::conf::{
    cycle_main_conf, loc_conf, main_conf, parsing_main_conf, LocConf, MainConf, USAGE_OFF,
};
use crate::recording;
use crate::request::{self, Finished, ReqCtx, Target, UsageState};
use crate::zone::ZoneSpec;

/// The next body filter (nginx's filter chain is a linked list of function pointers).
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

pub unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls this with the conf of the http block just parsed.
    let cf = unsafe { &mut *cf };
    match configure(cf) {
        Ok(()) => NGX_OK as ngx_int_t,
        Err(msg) => {
            if let Some(msg) = msg {
                ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
            }
            NGX_ERROR as ngx_int_t
        }
    }
}

/// Hands the block's settings to the zone, adds the render pool, the body filter and the phase
/// handlers. `Err(None)`: out of memory (nginx has logged it).
fn configure(cf: &mut ngx_conf_t) -> Result<(), Option<&'static str>> {
    let mc = parsing_main_conf(cf).ok_or(None)?;
    if mc.used && mc.zone.is_null() {
        return Err(Some(
            "\"gateway_metrics\" and \"gateway_metrics_exporter\" need a \"gateway_metrics_zone\" in the http block",
        ));
    }
    // SAFETY: the zone ctx lives in the configuration pool.
    // The zone's series are shaped by the settings of the whole block, known only now.
    if let Some(zone) = unsafe { mc.zone.as_mut() } {
        zone.spec = ZoneSpec {
            max_series: mc.max_series,
            bounds: mc.bounds.clone(),
            custom: mc.custom.clone(),
        };
    }
    // lua-nginx-module can set request headers after the access phases (content, filter and
    // log code): then a header's label is read again at the log phase.
    mc.late_header_writers = crate::boundary::module_loaded(cf, c"ngx_http_lua_module");
    #[cfg(ngx_feature = "threads")]
    add_render_pool(cf, mc)?;
    // Watches response bodies for their end (see `body_filter`), and reads their usage too
    // when some location asks for it (`usage_filter`: no cost where none does).
    if mc.used {
        // SAFETY: the filter chain is set up in postconfiguration, one module after the other.
        unsafe {
            NEXT_BODY_FILTER = ngx_http_top_body_filter;
            ngx_http_top_body_filter = Some(if mc.reads_usage {
                usage_filter
            } else {
                body_filter
            });
        }
    }
    let cmcf = NgxHttpCoreModule::main_conf_mut(cf).ok_or(None)?;
    for (phase, handler) in [
        (
            ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
            precontent_handler as unsafe extern "C" fn(_) -> _,
        ),
        (ngx_http_phases_NGX_HTTP_LOG_PHASE, log_handler),
    ] {
        // SAFETY: the phase's handler array was made by the core module for ngx_http_handler_pt.
        let h = unsafe { ngx_array_push(&mut cmcf.phases[phase as usize].handlers) }
            as *mut ngx_http_handler_pt;
        // SAFETY: a pushed element is writable (or null when out of memory).
        unsafe { h.as_mut() }.ok_or(None)?.replace(handler);
    }
    Ok(())
}

/// The nginx thread pool `/metrics` is rendered in, when configured. Off unless configured: the
/// pool's threads would put every libc call of the worker on its multi-threaded path (slower for
/// all traffic); the default renders in bounded slices on the event loop instead.
#[cfg(ngx_feature = "threads")]
fn add_render_pool(cf: &mut ngx_conf_t, mc: &mut MainConf) -> Result<(), Option<&'static str>> {
    let RenderMode::ThreadPool(name) = &mc.render_mode else {
        return Ok(());
    };
    if !mc.exporter {
        return Ok(());
    }
    // nginx keeps the name: it goes into the configuration pool.
    let mut name = crate::boundary::conf_copy(cf, name).ok_or(None)?;
    // SAFETY: cf is the conf being parsed; nginx returns its pool entry or null.
    mc.render_pool = unsafe { ngx_thread_pool_add(cf, &mut name) } as *mut std::ffi::c_void;
    if mc.render_pool.is_null() {
        return Err(None);
    }
    Ok(())
}

/// Runs once every module's postconfiguration is done: moves the log handler to the end of the
/// log phase (log handlers run in array order), so that what Lua gives in `log_by_lua` (which
/// registers its handler in its own postconfiguration, maybe after ours) is still recorded.
pub unsafe extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls this in the master with the new cycle, after the http block was parsed.
    let cycle = unsafe { &*cycle };
    let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cycle) else {
        return NGX_OK as ngx_int_t;
    };
    let arr = &mut cmcf.phases[ngx_http_phases_NGX_HTTP_LOG_PHASE as usize].handlers;
    // SAFETY: the log phase's array holds ngx_http_handler_pt.
    let hs: &mut [ngx_http_handler_pt] = unsafe { arr.as_slice_mut() };
    let ours = log_handler as unsafe extern "C" fn(_) -> _ as usize;
    if let Some(i) = hs.iter().position(|h| h.map(|f| f as usize) == Some(ours)) {
        hs[i..].rotate_left(1);
    }
    NGX_OK as ngx_int_t
}

/// Per worker: the allocator's tuning for a render pool, and the worker's lane in the zone.
pub unsafe extern "C" fn init_process(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // The configuration this worker runs (not a global set by the master's last parse: a
    // reload that failed after postconfiguration must not change what respawned workers do).
    let mc = cycle_main_conf();
    // Large allocations (rendered pages, megabytes each, made in up to 32 render threads) go
    // straight to mmap and back to the system when freed, instead of staying cached in glibc's
    // per-thread arenas. Only with a render pool: a fixed threshold also switches off glibc's
    // dynamic trim threshold, which makes every malloc of ordinary traffic slower.
    if mc.is_some_and(|mc| !mc.render_pool.is_null()) {
        // SAFETY: mallopt only changes allocator tuning; no render thread runs yet.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024) };
    }
    // A lane of its own: the new workers of a reload do not share the in-flight series of
    // the old ones still finishing their requests.
    // SAFETY: ngx_pid is this process's pid.
    let pid = unsafe { ngx_pid } as u64;
    let target = mc.and_then(Target::of);
    if let Some(t) = target {
        recording::set_worker_target(t);
    }
    let lane = target.and_then(|t| t.store.claim_lane(pid, crate::zone::pid_alive));
    if let Some(lane) = lane {
        recording::set_worker_lane(lane);
    }
    if let Some(mc) = mc {
        recording::size_cache(mc.max_series);
    }
    NGX_OK as ngx_int_t
}

/// Counts the request as in flight once it has passed the access phases (so a namespace set
/// by rewrite/access Lua code is seen). Never affects the request.
pub unsafe extern "C" fn precontent_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let _ = catch_unwind(AssertUnwindSafe(|| enter(r)));
    NGX_DECLINED as ngx_int_t
}

fn enter(r: &Request) {
    let Some(lc) = loc_conf(r) else { return };
    if !r.is_main() || lc.enable != 1 {
        return;
    }
    let mut owned = None;
    let Some(mc) = main_conf(r) else { return };
    let Some(t) = recording::target_of(mc, &mut owned) else {
        return;
    };
    let t = &recording::Recorder { t, log: r.log() };
    // One walk of the pool's cleanups finds (or creates) the context.
    let Some(ctx) = request::ctx(r.as_ref()) else {
        return;
    };
    let ns = request::entry_namespace(r, lc, mc, ctx);
    recording::enter(t, ctx, ns);
}

/// Records the finished request (see `recording::record`).
pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let _ = catch_unwind(AssertUnwindSafe(|| log(r)));
    NGX_OK as ngx_int_t
}

fn log(r: &Request) {
    if !r.is_main() {
        return;
    }
    let mut ctx = request::find_ctx(r.as_ref());
    if let Some(c) = ctx.as_deref_mut() {
        c.leave();
        if c.logged {
            return;
        }
        c.logged = true;
    }
    let Some(lc) = loc_conf(r) else { return };
    if lc.enable != 1 {
        return;
    }
    let mut owned = None;
    let Some(t) = main_conf(r).and_then(|mc| recording::target_of(mc, &mut owned)) else {
        return;
    };
    let t = &recording::Recorder { t, log: r.log() };
    let mut llm = request::LlmSlot::default();
    // Where the namespace and the model are both query arguments (and exemplars are off), a
    // copy of the path that reads the two inline, in one walk of the query string (a call to
    // read them cost ~50 instructions more; inline here, they cost the other paths ~10).
    if lc.ns_model_args {
        return recording::record(t, &Finished::read_query(r, lc, ctx, &mut llm));
    }
    if lc.exemplars_on {
        return log_traced(r, lc, ctx, t);
    }
    recording::record(t, &Finished::read(r, lc, ctx, &mut llm));
}

/// [`log`] in a location with exemplars on: out of line, so that the usual request's log
/// phase stays as small as it was without them.
#[cold]
#[inline(never)]
fn log_traced(r: &Request, lc: &LocConf, ctx: Option<&mut ReqCtx>, t: &recording::Recorder) {
    let mut llm = request::LlmSlot::default();
    let f = Finished::read(r, lc, ctx, &mut llm);
    recording::record_traced(t, &f, request::trace(r, lc));
}

/// Notes, for the log phase, that a response's body went out whole (its last buffer passed)
/// and when a proxied body last carried data. Only looks at the buffers: the response is
/// passed on unchanged, at once.
unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its output chain (null or valid links).
    let (req, links) = unsafe { (&*r, chain.as_ref()) };
    let _ = catch_unwind(AssertUnwindSafe(|| watch_body(req, links)));
    // SAFETY: NEXT_BODY_FILTER was set in postconfiguration, before any request.
    match unsafe { *ptr::addr_of!(NEXT_BODY_FILTER) } {
        // SAFETY: the next filter takes what ours was given.
        Some(next) => unsafe { next(r, chain) },
        None => NGX_OK as ngx_int_t,
    }
}

#[inline(always)]
fn watch_body(r: &ngx_http_request_t, chain: Option<&ngx_chain_t>) {
    if !std::ptr::eq(r.main, r) {
        return;
    }
    // Only the end of a body, and a proxied body's data, are of interest: a response of the
    // gateway's own is only looked at for its last buffer.
    let (mut last, mut data) = (false, false);
    let mut cl = chain;
    if r.upstream.is_null() {
        while let Some(link) = cl {
            // SAFETY: the chain's buffers are live while the filter runs.
            if unsafe { link.buf.as_ref() }.is_some_and(|b| b.last_buf() != 0) {
                last = true;
                break;
            }
            // SAFETY: as above, for the next link.
            cl = unsafe { link.next.as_ref() };
        }
    } else {
        (last, data) = last_and_data(chain);
    }
    // The mark is noted whatever the location: only a location that records reads it (its log
    // phase), and noting it costs less than looking up the location's configuration.
    if last {
        request::mark_complete(r);
    }
    if !data || loc_conf(r).is_none_or(|lc| lc.enable != 1) {
        return;
    }
    if let Some(ctx) = request::find_ctx(r) {
        ctx.last_body_msec = request::now_msec();
    }
}

/// `body_filter`'s work, and reading the usage of responses in locations with
/// `gateway_metrics_usage` (see `request::start_usage`): only looks at the buffers, which it
/// passes on unchanged, at once.
unsafe extern "C" fn usage_filter(
    r: *mut ngx_http_request_t,
    chain: *mut ngx_chain_t,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its output chain (null or valid links).
    let (req, links) = unsafe { (&*r, chain.as_ref()) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let proxied = std::ptr::eq(req.main, req) && !req.upstream.is_null();
        if !proxied {
            return watch_body(req, links);
        }
        // A response whose reading started goes straight on: its location was checked at its
        // first buffer, and a response's location never changes once its body passes.
        // read_usage does watch_body's work too: one walk of the chain.
        let ctx = match request::find_ctx(req) {
            Some(ctx)
                if ctx
                    .llm
                    .as_ref()
                    .is_some_and(|l| !matches!(l.usage, UsageState::Unread)) =>
            {
                ctx
            }
            found => {
                let lc = loc_conf(req).filter(|lc| lc.enable == 1 && lc.usage != USAGE_OFF);
                let Some(lc) = lc else {
                    return watch_body(req, links);
                };
                // The context the lookup above found (the usual case: the precontent handler
                // made it), else a new one.
                let Some(ctx) = found.or_else(|| request::ctx(req)) else {
                    return watch_body(req, links);
                };
                let llm = ctx.llm_mut();
                if let UsageState::Unread = llm.usage {
                    llm.usage = request::start_usage(req, lc, &mut llm.reader);
                }
                ctx
            }
        };
        read_usage(ctx, links)
    }));
    // SAFETY: NEXT_BODY_FILTER was set in postconfiguration, before any request.
    match unsafe { *ptr::addr_of!(NEXT_BODY_FILTER) } {
        // SAFETY: the next filter takes what ours was given.
        Some(next) => unsafe { next(r, chain) },
        None => NGX_OK as ngx_int_t,
    }
}

/// Hands the response's buffers to its usage reader (made at the first one).
/// Also notes, as `watch_body` does, when the body's last buffer passed and when data last came
/// (in the context of the proxied main request, in a location that records).
fn read_usage(ctx: &mut ReqCtx, chain: Option<&ngx_chain_t>) {
    let Some(llm) = ctx.llm.as_mut() else {
        return watch_read(ctx, chain);
    };
    let (UsageState::Reading, Some(reader)) = (&llm.usage, llm.reader.as_mut()) else {
        return watch_read(ctx, chain);
    };
    let (mut first, mut last, mut data) = (false, false, false);
    let mut cl = chain;
    while let Some(link) = cl {
        // SAFETY: the chain's buffers are live while the filter runs.
        if let Some(b) = unsafe { link.buf.as_ref() } {
            if b.in_file() != 0 && b.temporary() == 0 && b.memory() == 0 && b.mmap() == 0 {
                // Spilled to a temporary file by nginx's proxy buffering: not read back (its
                // reader goes back to the pool at once).
                llm.usage = UsageState::Missing(UsageMissing::Unreadable);
                llm.reader = None;
                return watch_read(ctx, chain);
            }
            if !b.pos.is_null() && b.last > b.pos {
                // SAFETY: an in-memory buffer's bytes from pos to last are readable.
                let bytes = unsafe {
                    std::slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize)
                };
                first |= reader.feed(bytes);
                data = true;
            }
            last |= b.last_buf() != 0;
        }
        // SAFETY: as above, for the next link.
        cl = unsafe { link.next.as_ref() };
    }
    if last {
        // The body is whole: its usage is known now (Lua's log phase may ask for it).
        first |= llm.conclude(true);
        ctx.complete = true;
    }
    if data {
        ctx.last_body_msec = request::now_msec();
    }
    if first && llm.first_token_ms.is_none() {
        llm.first_token_ms = Some(request::now_ms());
    }
}

/// Whether the chain holds the body's last buffer, and whether it holds data.
#[inline(always)]
fn last_and_data(chain: Option<&ngx_chain_t>) -> (bool, bool) {
    let (mut last, mut data) = (false, false);
    let mut cl = chain;
    while let Some(link) = cl {
        // SAFETY: the chain's buffers are live while the filter runs.
        if let Some(b) = unsafe { link.buf.as_ref() } {
            last |= b.last_buf() != 0;
            data |= b.pos != b.last || b.in_file() != 0;
        }
        // SAFETY: as above, for the next link.
        cl = unsafe { link.next.as_ref() };
    }
    (last, data)
}

/// [`watch_body`]'s work for a proxied main request in a location that records, whose context
/// is known (found in its slot: its last buffer is noted in the context itself).
fn watch_read(ctx: &mut ReqCtx, chain: Option<&ngx_chain_t>) {
    let (last, data) = last_and_data(chain);
    if last {
        ctx.complete = true;
    }
    if data {
        ctx.last_body_msec = request::now_msec();
    }
}
