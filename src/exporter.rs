//! The `/metrics` content handler (`gateway_metrics_exporter`).
//!
//! By default the page is rendered on the worker's event loop in short slices ([`Slicer`]):
//! the response header goes out at once (no Content-Length: chunked for HTTP/1.1, connection
//! close for HTTP/1.0), then each slice renders at most ~100 µs or 64 KiB of the page with
//! [`Render`] and hands it to the output filters, and the loop serves other events before the
//! next one. With `gateway_metrics_render_thread_pool NAME` the whole page is rendered in a
//! thread of that pool instead and sent in one piece.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
#[cfg(ngx_feature = "threads")]
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_metrics_core::expo::CONTENT_TYPE;
#[cfg(ngx_feature = "threads")]
use gateway_metrics_core::render::render;
use gateway_metrics_core::render::{HistSpec, NginxStats, Render, RenderSpec};
#[cfg(ngx_feature = "threads")]
use gateway_metrics_core::store::Store;
use nginx_sys::*;

use crate::conf::MainConf;
use crate::error::HandlerError;
use crate::request::{target, Target};
use crate::zone::pid_alive;
use crate::zone::ZoneCtx;

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
        if (*r).main != r {
            // The page is sent in slices paced by the connection; inside another response
            // (SSI, `ngx.location.capture`...) it would be cut short.
            ngx::ngx_log_error!(
                NGX_LOG_ERR,
                (*(*r).connection).log,
                "gateway_metrics_exporter: the metrics page cannot be served in a subrequest"
            );
            return Err(HandlerError::Subrequest);
        }
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return Ok(rc);
        }
        // 'static: the confs and the zone ctx live in the cycle's pool, which a worker keeps
        // until it exits; the request (and a Slicer holding them) ends before.
        let t: Target<'static> = target(r).ok_or(HandlerError::ZoneUnavailable)?;
        #[cfg(ngx_feature = "threads")]
        if let Some(rc) = render_in_pool(r, &t) {
            return Ok(rc);
        }
        start_slices(r, &t)
    }
}

/// Sets the status and header fields of the page; `length`: the Content-Length, if known.
///
/// # Safety
/// `r` must be a live request.
unsafe fn set_headers(r: *mut ngx_http_request_t, length: Option<usize>) {
    // SAFETY: forwarded contract; CONTENT_TYPE is static.
    let rr = unsafe { &mut *r };
    rr.headers_out.status = NGX_HTTP_OK as ngx_uint_t;
    rr.headers_out.content_type = ngx_str_t {
        len: CONTENT_TYPE.len(),
        data: CONTENT_TYPE.as_ptr() as *mut u8,
    };
    // Up to ';': what gzip_types and friends compare against.
    rr.headers_out.content_type_len = "text/plain".len();
    rr.headers_out.content_type_lowcase = ptr::null_mut();
    // A response that names its charset is left alone by the charset filter (`charset`,
    // `source_charset`): the page stays UTF-8 and its Content-Type whole. (The header filter
    // writes `content_type` as is: it already ends in this charset.)
    rr.headers_out.charset = ngx_str_t {
        len: "utf-8".len(),
        data: c"utf-8".as_ptr() as *mut u8,
    };
    rr.headers_out.content_length_n = length.map_or(-1, |l| l as off_t);
}

/// Sends a page rendered in one piece as the response.
///
/// # Safety
/// `r` must be a live request.
#[cfg(ngx_feature = "threads")]
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

// ---- rendering in slices on the event loop ----------------------------------------------------

/// Rendering time of one slice while the worker has nothing else to do (sending it comes on
/// top), and the most output it renders before handing it over (plus one step's worth).
const SLICE_NS: u64 = 100_000;
const SLICE_BYTES: usize = 64 * 1024;
/// The same while the worker is busy with other traffic: requests that arrive meanwhile wait
/// for at most one such slice (about 30 µs, plus sending 16 KiB).
const BUSY_SLICE_NS: u64 = 30_000;
const BUSY_SLICE_BYTES: usize = 16 * 1024;
/// While busy, a slice starts at least PACE x its duration after the previous one started, and
/// at least BUSY_INTERVAL_NS after it ended (an nginx timer: whole ms): the scrapes take at most
/// 1/PACE of the worker's time (a few % with short slices), and at most ~16 KiB reach a client
/// every 1.5-2 ms (a busy server's own clients get the CPU first).
const PACE: u64 = 10;
const BUSY_INTERVAL_NS: u64 = 1_500_000;
/// Render units between two clock reads (~10-20 µs of rendering).
const STEP_UNITS: usize = 128;
/// Output buffers per scrape: the most rendered and not yet sent (backpressure beyond).
const BUFFERS: usize = 4;
/// The loop took longer than this (our own write events aside) to come back to a scrape after
/// a slice: it served other events.
const BUSY_GAP_NS: u64 = 20_000;
/// Requests per second per worker (nginx's stub_status counter, when built in) above which the
/// worker counts as busy, whether or not the requests happened to come between two slices
/// (the clients may not have had the CPU just then).
#[cfg(gm_stat_stub)]
const BUSY_RATE: u64 = 2_000;
/// Once busy, scrapes stay paced for this long: a quiet moment in the middle of traffic is not
/// the end of it.
const BUSY_HOLD_NS: u64 = 50_000_000;

/// Pacing state of this worker, shared by its scrapes (all on its event loop): two scrapes at
/// once share the budget.
struct Pacing {
    /// Until then the worker counts as busy with other traffic.
    busy_until: AtomicU64,
    /// While busy, no slice of any scrape starts before this.
    next_at: AtomicU64,
    /// Last sample of nginx's request counter: when, its value and our scrapes' count then.
    sampled_at: AtomicU64,
    sampled: AtomicU64,
    sampled_own: AtomicU64,
    /// Scrapes this worker started (they are requests too, not traffic to protect).
    scrapes: AtomicU64,
    /// Time the event loop spent on scrapes (slices and their write events), all of them:
    /// a scrape's wake-up delayed by another scrape is not other traffic.
    work_ns: AtomicU64,
}

static PACING: Pacing = Pacing {
    busy_until: AtomicU64::new(0),
    next_at: AtomicU64::new(0),
    sampled_at: AtomicU64::new(0),
    sampled: AtomicU64::new(0),
    sampled_own: AtomicU64::new(0),
    scrapes: AtomicU64::new(0),
    work_ns: AtomicU64::new(0),
};

impl Pacing {
    /// Notes other traffic now.
    fn busy(&self, now: u64) {
        self.busy_until.store(now + BUSY_HOLD_NS, Relaxed);
    }

    /// Samples the request rate (stub_status' counter, all workers) at least 1 ms apart.
    #[cfg(gm_stat_stub)]
    fn sample(&self, now: u64) {
        let Some(n) = requests_counter() else { return };
        let dt = now.saturating_sub(self.sampled_at.load(Relaxed));
        if dt < 1_000_000 {
            return;
        }
        let own = self.scrapes.load(Relaxed);
        let seen = n
            .saturating_sub(self.sampled.load(Relaxed))
            .saturating_sub(own.saturating_sub(self.sampled_own.load(Relaxed)));
        if seen.saturating_mul(1_000_000_000) > BUSY_RATE * worker_processes() * dt {
            self.busy(now);
        }
        self.sampled_at.store(now, Relaxed);
        self.sampled.store(n, Relaxed);
        self.sampled_own.store(own, Relaxed);
    }

    #[cfg(not(gm_stat_stub))]
    fn sample(&self, _now: u64) {}
}

/// nginx's count of client requests (all workers), if stub_status is built in.
#[cfg(gm_stat_stub)]
fn requests_counter() -> Option<u64> {
    // SAFETY: with stub_status compiled in, nginx points ngx_stat_requests at a shared atomic
    // counter before any request is served.
    unsafe {
        let p = ptr::read(ptr::addr_of!(ngx_stat_requests));
        (!p.is_null()).then(|| ptr::read_volatile(p) as u64)
    }
}

/// `worker_processes` of the running cycle (at least 1).
#[cfg(gm_stat_stub)]
fn worker_processes() -> u64 {
    // SAFETY: ngx_cycle and its core conf are valid in a worker.
    unsafe {
        let ccf = *(*ngx_cycle).conf_ctx.add(ngx_core_module.index) as *const ngx_core_conf_t;
        if ccf.is_null() {
            1
        } else {
            ((*ccf).worker_processes as u64).max(1)
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the vDSO: no system call).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Why the slicer runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// From the content handler.
    Start,
    /// Our posted event: the loop has served the other ready events since the last slice.
    Posted,
    /// Our pacing timer.
    Timer,
    /// The connection drained after all buffers were in flight.
    Writable,
}

/// What the caller does once the slicer has run.
enum Next {
    /// Finalize the request with this code: the last buffer was handed over (nginx's writer
    /// sends what is left), or an error.
    Finalize(ngx_int_t),
    /// Nothing: a posted event, a timer or the write event will resume the scrape.
    Wait,
}

/// A scrape being rendered and sent in slices. Lives in the request pool; its cleanup (Drop)
/// takes its event out of the timers and the posted queue, so that nothing fires after the
/// request is gone (client gone, request terminated, keep-alive, worker shutting down).
struct Slicer {
    r: *mut ngx_http_request_t,
    render: Render<'static>,
    /// Posted to run after the loop's other events, or a pacing timer.
    ev: ngx_event_t,
    /// Output buffers: the memory of `bufs[i]` is `data[i]`.
    data: [Vec<u8>; BUFFERS],
    bufs: [*mut ngx_buf_t; BUFFERS],
    free: Vec<usize>,
    /// Handed to the output filters, in order; free again once sent (`pos == last`).
    busy: VecDeque<usize>,
    /// Every buffer is in flight: the write event resumes the scrape.
    wait_writable: bool,
    /// End of the last slice, and `Pacing::work_ns` then.
    last_end: u64,
    work_at_end: u64,
    /// The pacing deadline our timer was armed for.
    armed_for: u64,
}

impl Drop for Slicer {
    fn drop(&mut self) {
        // SAFETY: the event is ours; the timer tree and posted queues are the worker's, valid
        // while it runs (a pool is destroyed on the event loop).
        unsafe {
            if self.ev.timer_set() != 0 {
                ngx_del_timer(&mut self.ev);
            }
            if self.ev.posted() != 0 {
                ngx_delete_posted_event(&mut self.ev);
            }
        }
    }
}

/// Sends the header, then the first slice; later slices run from [`slice_event`] and
/// [`slicer_write`].
///
/// # Safety
/// `r` must be a live request in its content phase.
unsafe fn start_slices(
    r: *mut ngx_http_request_t,
    t: &Target<'static>,
) -> Result<ngx_int_t, HandlerError> {
    // SAFETY: forwarded contract. The Slicer and its buffer headers live in the request pool.
    unsafe {
        let rr = &mut *r;
        set_headers(r, None);
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || rr.header_only() != 0 {
            return Ok(rc);
        }
        // From here on the header is out: a failure can only cut the response short.
        // Flush it now (nginx would hold it until the first part of the page): the client
        // knows at once that the scrape is under way.
        let flush = ngx_pcalloc(rr.pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if flush.is_null() {
            return Err(HandlerError::Aborted);
        }
        (*flush).set_flush(1);
        let mut cl = ngx_chain_t {
            buf: flush,
            next: ptr::null_mut(),
        };
        if ngx_http_output_filter(r, &mut cl) == NGX_ERROR as ngx_int_t {
            return Err(HandlerError::Aborted);
        }
        PACING.scrapes.fetch_add(1, Relaxed);
        let mut bufs = [ptr::null_mut(); BUFFERS];
        for b in &mut bufs {
            *b = ngx_pcalloc(rr.pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
            if b.is_null() {
                return Err(HandlerError::Aborted);
            }
        }
        let spec = page_spec(t.mc, t.zone);
        let s = crate::boundary::pool_alloc(
            rr.pool,
            Slicer {
                r,
                render: Render::new(&t.store, &spec),
                ev: std::mem::zeroed(),
                data: Default::default(),
                bufs,
                free: (0..BUFFERS).rev().collect(),
                busy: VecDeque::with_capacity(BUFFERS),
                wait_writable: false,
                last_end: 0,
                work_at_end: 0,
                armed_for: 0,
            },
        );
        if s.is_null() {
            return Err(HandlerError::Aborted);
        }
        let ev = &mut (*s).ev;
        ev.data = s as *mut std::ffi::c_void;
        ev.handler = Some(slice_event);
        ev.log = (*rr.connection).log;
        let ctx = crate::request::ctx(r).ok_or(HandlerError::Aborted)?;
        ctx.exporter = s as *mut std::ffi::c_void;
        rr.write_event_handler = Some(slicer_write);
        // A client that goes away ends the scrape at once (HTTP/2 reports it through the read
        // event only), instead of at the send timeout.
        rr.read_event_handler = Some(ngx_http_test_reading);
        match (*s).advance(Wake::Start) {
            Next::Finalize(rc) => Ok(rc),
            Next::Wait => {
                // The request stays open until a handler finalizes it.
                let main = &mut *rr.main;
                main.set_count(main.count() + 1);
                Ok(NGX_DONE as ngx_int_t)
            }
        }
    }
}

/// Our event: posted (the loop served its other events) or the pacing timer.
unsafe extern "C" fn slice_event(ev: *mut ngx_event_t) {
    // SAFETY: the event belongs to a live Slicer (its Drop unschedules it before the request
    // pool is freed); the Slicer's request and connection are live.
    unsafe {
        let s = (*ev).data as *mut Slicer;
        let wake = if (*ev).timedout() != 0 {
            (*ev).set_timedout(0);
            Wake::Timer
        } else {
            Wake::Posted
        };
        let r = (*s).r;
        let c = (*r).connection;
        let next = if (*c).error() != 0 {
            Next::Finalize(NGX_ERROR as ngx_int_t)
        } else {
            catch_unwind(AssertUnwindSafe(|| (*s).advance(wake)))
                .unwrap_or(Next::Finalize(NGX_ERROR as ngx_int_t))
        };
        // The Slicer may be freed from here on.
        if let Next::Finalize(rc) = next {
            ngx_http_finalize_request(r, rc);
        }
        ngx_http_run_posted_requests(c);
    }
}

/// The request's write event handler while slicing (nginx runs posted requests after it).
unsafe extern "C" fn slicer_write(r: *mut ngx_http_request_t) {
    // SAFETY: r is live; its context holds the Slicer set by start_slices (in its pool).
    unsafe {
        let Some(ctx) = crate::request::find_ctx(r) else {
            return;
        };
        let s = ctx.exporter as *mut Slicer;
        if s.is_null() {
            return;
        }
        let next = catch_unwind(AssertUnwindSafe(|| (*s).on_write()))
            .unwrap_or(Next::Finalize(NGX_ERROR as ngx_int_t));
        if let Next::Finalize(rc) = next {
            ngx_http_finalize_request(r, rc);
        }
    }
}

impl Slicer {
    /// Runs a slice now, or arms the timer for when pacing allows it.
    ///
    /// # Safety
    /// The request must be live (as for all methods below).
    unsafe fn advance(&mut self, wake: Wake) -> Next {
        let now = now_ns();
        // How long the loop took to come back after the last slice, the time it spent on
        // scrapes (this one's write events, other scrapes' slices) aside.
        let scrapes = PACING
            .work_ns
            .load(Relaxed)
            .saturating_sub(self.work_at_end);
        if wake == Wake::Posted
            && now.saturating_sub(self.last_end).saturating_sub(scrapes) > BUSY_GAP_NS
        {
            PACING.busy(now);
        }
        PACING.sample(now);
        let next_at = PACING.next_at.load(Relaxed);
        let busy = now < PACING.busy_until.load(Relaxed);
        // (A timer armed for the current deadline may fire a hair early: ms granularity.)
        if busy && now < next_at && !(wake == Wake::Timer && self.armed_for == next_at) {
            // SAFETY: forwarded contract.
            unsafe { self.arm_timer(now, next_at) };
            self.armed_for = next_at;
            return Next::Wait;
        }
        // SAFETY: forwarded contract.
        match unsafe { self.slice(now, busy) } {
            Ok(next) => next,
            Err(e) => Next::Finalize(e.status()),
        }
    }

    /// Renders one slice into a free buffer and hands it to the output filters.
    unsafe fn slice(&mut self, t0: u64, busy: bool) -> Result<Next, HandlerError> {
        // SAFETY: forwarded contract; the buffer headers are ours, and a free buffer is no
        // longer referenced by any filter.
        unsafe {
            self.reclaim();
            let Some(k) = self.free.pop() else {
                return self.wait_for_buffers();
            };
            let out = &mut self.data[k];
            out.clear();
            // Shorter slices while other requests wait behind them.
            let (max_ns, max_bytes) = if busy {
                (BUSY_SLICE_NS, BUSY_SLICE_BYTES)
            } else {
                (SLICE_NS, SLICE_BYTES)
            };
            let deadline = t0 + max_ns;
            let done = loop {
                if self.render.step(out, STEP_UNITS) {
                    break true;
                }
                if out.len() >= max_bytes || now_ns() >= deadline {
                    break false;
                }
            };
            let r = self.r;
            let rc = if out.is_empty() && !done {
                // Still walking or aggregating: nothing to send yet.
                self.free.push(k);
                NGX_OK as ngx_int_t
            } else {
                let b = self.bufs[k];
                ptr::write_bytes(b, 0, 1);
                if !out.is_empty() {
                    let p = out.as_mut_ptr();
                    (*b).start = p;
                    (*b).pos = p;
                    (*b).last = p.add(out.len());
                    (*b).end = p.add(out.capacity());
                    (*b).set_memory(1);
                }
                (*b).tag = crate::boundary::module_tag() as ngx_buf_tag_t;
                if done {
                    (*b).set_last_buf(if r == (*r).main { 1 } else { 0 });
                    (*b).set_last_in_chain(1);
                } else if self.free.is_empty() {
                    // No buffer left for the next slice: make sure the filters pass these on
                    // now (postpone_output, gzip) so that they come back.
                    (*b).set_flush(1);
                }
                self.busy.push_back(k);
                let mut cl = ngx_chain_t {
                    buf: b,
                    next: ptr::null_mut(),
                };
                ngx_http_output_filter(r, &mut cl)
            };
            if rc == NGX_ERROR as ngx_int_t {
                return Err(HandlerError::Aborted);
            }
            if done {
                return Ok(Next::Finalize(rc));
            }
            self.reclaim();
            let end = now_ns().max(t0);
            let work = PACING.work_ns.fetch_add(end - t0, Relaxed) + (end - t0);
            self.last_end = end;
            self.work_at_end = work;
            PACING.next_at.store(
                (t0 + PACE * (end - t0)).max(end + BUSY_INTERVAL_NS),
                Relaxed,
            );
            // Also the send timeout of the whole response: no progress for send_timeout
            // fails it, and the timer keeps a gracefully exiting worker until it is done.
            self.arm_write()?;
            if self.free.is_empty() {
                return self.wait_for_buffers();
            }
            ngx_post_event(&mut self.ev, ptr::addr_of_mut!(ngx_posted_next_events));
            Ok(Next::Wait)
        }
    }

    /// All buffers are in flight: resume from the write event once some are sent.
    unsafe fn wait_for_buffers(&mut self) -> Result<Next, HandlerError> {
        // SAFETY: forwarded contract.
        unsafe {
            if !self.buffered() {
                // A filter holds our buffers without saying so: nothing would wake us.
                return Err(HandlerError::Aborted);
            }
            self.arm_write()?;
        }
        self.wait_writable = true;
        Ok(Next::Wait)
    }

    /// The connection is writable (or its send timeout expired).
    unsafe fn on_write(&mut self) -> Next {
        let t0 = now_ns();
        // SAFETY: forwarded contract.
        let resume = unsafe { self.flush() };
        // Not other traffic: the loop's time spent on a scrape.
        PACING
            .work_ns
            .fetch_add(now_ns().saturating_sub(t0), Relaxed);
        match resume {
            // SAFETY: forwarded contract.
            Ok(true) => unsafe { self.advance(Wake::Writable) },
            Ok(false) => Next::Wait,
            Err(e) => Next::Finalize(e.status()),
        }
    }

    /// Pushes on what nginx holds of the page. True when the scrape was waiting for a buffer
    /// and one is free again.
    unsafe fn flush(&mut self) -> Result<bool, HandlerError> {
        // SAFETY: forwarded contract.
        unsafe {
            let c = (*self.r).connection;
            let wev = (*c).write;
            if (*wev).timedout() != 0 {
                ngx::ngx_log_error!(NGX_LOG_INFO, (*c).log, "client timed out");
                (*c).set_timedout(1);
                return Err(HandlerError::ClientTimedOut);
            }
            if (*wev).delayed() == 0
                && self.buffered()
                && ngx_http_output_filter(self.r, ptr::null_mut()) == NGX_ERROR as ngx_int_t
            {
                return Err(HandlerError::Aborted);
            }
            self.reclaim();
            self.arm_write()?;
        }
        if self.wait_writable && !self.free.is_empty() {
            self.wait_writable = false;
            return Ok(true);
        }
        Ok(false)
    }

    /// Moves the buffers that were sent (or consumed by a filter) back to the free list.
    unsafe fn reclaim(&mut self) {
        while let Some(&k) = self.busy.front() {
            let b = self.bufs[k];
            // SAFETY: our buffer header, in the request pool.
            if unsafe { (*b).pos != (*b).last } {
                break;
            }
            self.busy.pop_front();
            self.free.push(k);
        }
    }

    /// Does nginx still hold output of this request?
    unsafe fn buffered(&self) -> bool {
        // SAFETY: forwarded contract.
        unsafe {
            let r = &*self.r;
            r.buffered() != 0
                || !r.postponed.is_null()
                || (self.r == r.main && (*r.connection).buffered() != 0)
        }
    }

    /// Arms the connection's write event and its send timeout, as nginx's writer does.
    unsafe fn arm_write(&mut self) -> Result<(), HandlerError> {
        // SAFETY: forwarded contract; the core module's loc conf exists for every request.
        unsafe {
            let wev = (*(*self.r).connection).write;
            let clcf = *(*(*self.r).main)
                .loc_conf
                .add(ngx_http_core_module.ctx_index)
                as *const ngx_http_core_loc_conf_t;
            if (*wev).delayed() == 0 {
                ngx_add_timer(wev, (*clcf).send_timeout);
            }
            if ngx_handle_write_event(wev, (*clcf).send_lowat) != NGX_OK as ngx_int_t {
                return Err(HandlerError::Aborted);
            }
        }
        Ok(())
    }

    /// Runs the next slice at `at` (monotonic ns) at the earliest.
    unsafe fn arm_timer(&mut self, now: u64, at: u64) {
        // nginx's timers count from its clock, read at the start of the loop iteration (also
        // CLOCK_MONOTONIC, in whole ms): count from there, so the timer fires at `at` or later.
        // SAFETY: a plain global of the worker, updated on the event loop (this thread).
        let cur = unsafe { ptr::read_volatile(ptr::addr_of!(ngx_current_msec)) } as u64;
        let now_ms = now / 1_000_000;
        let ms = match now_ms.checked_sub(cur).filter(|&d| d < 1000) {
            Some(lag) => lag + at.saturating_sub(now_ms * 1_000_000).div_ceil(1_000_000),
            None => at.saturating_sub(now).div_ceil(1_000_000),
        };
        // SAFETY: our event, not posted (we run from it or from the write event).
        unsafe { ngx_add_timer(&mut self.ev, ms.max(1) as ngx_msec_t) };
    }
}

// ---- rendering in a thread pool (opt-in) ------------------------------------------------------

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
        crate::request::ctx(r)?.exporter = job as *mut std::ffi::c_void;
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
#[cfg(ngx_feature = "threads")]
unsafe fn render_job(r: *mut ngx_http_request_t) -> *mut RenderJob {
    // SAFETY: forwarded contract.
    unsafe { crate::request::find_ctx(r) }.map_or(ptr::null_mut(), |c| c.exporter as *mut RenderJob)
}

#[cfg(ngx_feature = "threads")]
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
#[cfg(ngx_feature = "threads")]
static LAST_PAGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What the renderer needs, from the configuration and the zone.
fn page_spec<'a>(mc: &'a MainConf, zone: &'a ZoneCtx) -> RenderSpec<'a> {
    RenderSpec {
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
    }
}

/// Renders the whole page (in a pool thread).
#[cfg(ngx_feature = "threads")]
fn render_page(mc: &MainConf, zone: &ZoneCtx, store: &Store) -> Vec<u8> {
    let spec = page_spec(mc, zone);
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
