//! A scrape rendered on the worker's event loop in short slices: the response header goes out
//! at once, then each slice renders at most ~100 µs or 256 KiB of the page and hands it to the
//! output filters; the loop serves its other events before the next slice (see pacing.rs for
//! how slices are spaced while the worker has other traffic).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use gateway_metrics_core::format::Format;
use gateway_metrics_core::render::Render;
use nginx_sys::*;

use crate::error::HandlerError;
use crate::pacing::{cpu_ns, now_ns, PACING};
use crate::page::{page_spec, set_headers};
use crate::request::Target;

/// Rendering time of one slice while the worker has nothing else to do (sending it comes on
/// top), and the most output it renders before handing it over (plus one step's worth).
/// Each slice costs a turn of the event loop, and on loopback a wake-up of the client, which
/// drains a slice faster than it is rendered and then sleeps: with 64 KiB slices (~600 for a
/// 38 MB page) waking the client took ~20% of the worker's time, ~4% with 256 KiB.
const SLICE_NS: u64 = 100_000;
const SLICE_BYTES: usize = 256 * 1024;
/// The same while the worker is busy with other traffic: requests that arrive meanwhile wait
/// for at most one such slice (about 30 µs, plus sending 16 KiB).
const BUSY_SLICE_NS: u64 = 30_000;
const BUSY_SLICE_BYTES: usize = 16 * 1024;
/// Render units between two clock reads (~10-20 µs of rendering).
const STEP_UNITS: usize = 128;
/// Output buffers per scrape: the most rendered and not yet sent (backpressure beyond).
const BUFFERS: usize = 4;
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
    /// The worker's CPU time at the end of the last slice, and `Pacing::work_cpu` then.
    cpu_end: u64,
    work_at_end: u64,
    /// The pacing deadline our timer was armed for.
    armed_for: u64,
}

impl Drop for Slicer {
    fn drop(&mut self) {
        // Finished or not, what the render learnt of the zone serves the next scrape.
        crate::page::keep_cache(self.render.take_cache());
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
pub unsafe fn start_slices(
    r: *mut ngx_http_request_t,
    t: &Target<'static>,
    format: Format,
) -> Result<ngx_int_t, HandlerError> {
    // SAFETY: forwarded contract. The Slicer and its buffer headers live in the request pool.
    unsafe {
        let rr = &mut *r;
        set_headers(r, None, format);
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
        PACING.scrape_started();
        let mut bufs = [ptr::null_mut(); BUFFERS];
        for b in &mut bufs {
            *b = ngx_pcalloc(rr.pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
            if b.is_null() {
                return Err(HandlerError::Aborted);
            }
        }
        let spec = page_spec(t.mc, t.zone, format);
        let s = crate::boundary::pool_alloc(
            rr.pool,
            Slicer {
                r,
                render: Render::with_cache(&t.store, &spec, crate::page::take_cache()),
                ev: std::mem::zeroed(),
                data: Default::default(),
                bufs,
                free: (0..BUFFERS).rev().collect(),
                busy: VecDeque::with_capacity(BUFFERS),
                wait_writable: false,
                cpu_end: 0,
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
        let ctx = crate::request::ctx(rr).ok_or(HandlerError::Aborted)?;
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
        let Some(ctx) = crate::request::find_ctx(&*r) else {
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
        if wake == Wake::Posted {
            PACING.woke_up(now, cpu_ns(), self.cpu_end, self.work_at_end);
        }
        let paced = PACING.paced(now);
        let busy = paced.is_some();
        let next_at = paced.unwrap_or(0);
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
        let cpu0 = cpu_ns();
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
            let cpu = cpu_ns();
            self.work_at_end = PACING.slice_done(t0, end, cpu.saturating_sub(cpu0));
            self.cpu_end = cpu;
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
        let (t0, cpu0) = (now_ns(), cpu_ns());
        // SAFETY: forwarded contract.
        let resume = unsafe { self.flush() };
        // Not other traffic: the loop's time spent on a scrape.
        PACING.add_work(now_ns().saturating_sub(t0), cpu_ns().saturating_sub(cpu0));
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
