//! The opt-in render mode (`gateway_metrics_render_thread_pool NAME`): the whole page is rendered
//! in a thread of an nginx thread pool and sent in one piece with a Content-Length.
#![cfg(ngx_feature = "threads")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_metrics_core::render::render_cached;
use gateway_metrics_core::store::Store;
use nginx_sys::*;

use crate::conf::MainConf;
use crate::error::HandlerError;
use crate::page::{page_spec, set_headers};
use crate::request::Target;
use crate::zone::ZoneCtx;

/// Sends a page rendered in one piece as the response.
///
/// # Safety
/// `r` must be a live request.
unsafe fn send_page(r: *mut ngx_http_request_t, body: Vec<u8>) -> Result<ngx_int_t, HandlerError> {
    // SAFETY: forwarded contract; buffers handed to nginx live in the request pool.
    unsafe {
        let rr = &mut *r;
        set_headers(r, Some(body.len()));
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || rr.header_only() != 0 {
            return Ok(rc);
        }
        // The rendered page is handed to nginx as is (no copy); the pool frees it.
        let body = crate::boundary::pool_alloc(rr.pool, body);
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
pub unsafe fn render_in_pool(r: *mut ngx_http_request_t, t: &Target) -> Option<ngx_int_t> {
    if t.mc.render_pool.is_null() {
        return None;
    }
    // SAFETY: forwarded contract. While the task runs the request is `blocked` (nginx will not
    // free it) and its count is raised (it stays open until send_rendered finalizes it).
    unsafe {
        let rr = &mut *r;
        let job = crate::boundary::pool_alloc(
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
        // (Before the task is posted: once it runs, this request must not render inline.)
        crate::request::ctx(rr)?.exporter = job as *mut std::ffi::c_void;
        (*task).ctx = job as *mut std::ffi::c_void;
        (*task).handler = Some(render_task);
        (*task).event.data = r as *mut std::ffi::c_void;
        (*task).event.handler = Some(render_done);
        if ngx_thread_task_post(t.mc.render_pool as *mut ngx_thread_pool_t, task)
            != NGX_OK as ngx_int_t
        {
            return None;
        }
        let main = &mut *rr.main;
        main.set_blocked(main.blocked() + 1);
        main.set_count(main.count() + 1);
        rr.set_aio(1);
        rr.write_event_handler = Some(send_rendered);
        Some(NGX_DONE as ngx_int_t)
    }
}

/// Runs in a pool thread.
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
unsafe extern "C" fn render_done(ev: *mut ngx_event_t) {
    // SAFETY: the event's data is the blocked request, still alive.
    unsafe {
        let r = (*ev).data as *mut ngx_http_request_t;
        let rr = &mut *r;
        // The handler below may free the request: keep the connection (it outlives it).
        let c = rr.connection;
        let job = render_job(r);
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

/// The request's RenderJob set by render_in_pool (null if none).
///
/// # Safety
/// `r` must be a live request.
unsafe fn render_job(r: *mut ngx_http_request_t) -> *mut RenderJob {
    // SAFETY: forwarded contract.
    crate::request::find_ctx(unsafe { &*r })
        .map_or(ptr::null_mut(), |c| c.exporter as *mut RenderJob)
}

unsafe extern "C" fn send_rendered(r: *mut ngx_http_request_t) {
    // SAFETY: r is live; its ctx holds the RenderJob set by render_in_pool.
    unsafe {
        let job = render_job(r);
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

/// Renders the whole page (in a pool thread).
fn render_page(mc: &MainConf, zone: &ZoneCtx, store: &Store) -> Vec<u8> {
    let spec = page_spec(mc, zone);
    // Reserve what the last page needed (plus margin): growing a multi-megabyte Vec by doubling
    // costs more than rendering it.
    let hint = LAST_PAGE_BYTES.load(Ordering::Relaxed);
    let mut out = Vec::with_capacity((hint + hint / 8).max(64 * 1024));
    let mut cache = crate::page::take_cache();
    render_cached(store, &spec, &mut out, &mut cache);
    crate::page::keep_cache(cache);
    LAST_PAGE_BYTES.store(out.len(), Ordering::Relaxed);
    out
}
