//! Per-request access: the request's metrics context, its label values, and the snapshot of a
//! finished request ([`Finished`]) that recording works from without seeing the request.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_metrics_core::cache::Label;
use gateway_metrics_core::catalogue::{CutReason, UsageMissing};
use gateway_metrics_core::exemplar::TraceContext;
use gateway_metrics_core::labels::{edge_words, header_matches, query_arg, short_eq};
use gateway_metrics_core::labels::{is_clean, Value};
use gateway_metrics_core::store::Store;
use gateway_metrics_core::usage::{Body, Format, Outcome, Tokens, UsageReader};
use nginx_sys::*;
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule, Request};

use crate::conf::{HeaderName, LabelSource, LocConf, MainConf, USAGE_OFF};
use crate::zone::{ShmLock, ZoneCtx};

/// What the module remembers about one request (the main request), across internal redirects.
/// Taken from the worker's spare contexts ([`SpareContexts`]) and given back by a cleanup of the
/// request pool: its destructor runs when the request is freed, aborted or not.
pub struct ReqCtx {
    /// The `active_connections` gauge this request incremented, until decremented.
    pub active: Option<&'static AtomicU64>,
    /// What Lua or the response's usage said for the model families, once anything did (see
    /// [`ReqCtx::llm_mut`]). Most requests have none: their context is made, checked and
    /// dropped as one word.
    pub llm: Option<LlmState>,
    /// Set once the log phase has recorded the request; later Lua calls are refused.
    pub logged: bool,
    /// The response's last buffer went through the body filters: its body was complete.
    pub complete: bool,
    /// When the last body data of a proxied response went through (`ngx_current_msec`).
    pub last_body_msec: ngx_msec_t,
    /// The exporter's state for this request (a scrape in progress), in the request pool.
    pub exporter: *mut std::ffi::c_void,
    /// The namespace as the request entered its content phase, when it is a request header
    /// that nothing can change later (see [`SeenHeader`]).
    pub namespace: SeenHeader,
}

/// A label read from a request header as the request entered its content phase (the
/// precontent handler counts it in flight under its namespace), kept for its log phase: where
/// no loaded module writes request headers after the access phases
/// (`MainConf::late_header_writers`), the header is then what it was. Used again only for the
/// same label of the same location, over a header list of one part holding as many headers
/// (checked at the log phase): the value is the one a second search would find.
pub struct SeenHeader {
    /// The label's source (null: nothing kept).
    source: *const LabelSource,
    value: *const u8,
    len: u32,
    nelts: u32,
}

impl SeenHeader {
    const NONE: SeenHeader = SeenHeader {
        source: ptr::null(),
        value: ptr::null(),
        len: 0,
        nelts: 0,
    };
}

impl Default for ReqCtx {
    fn default() -> Self {
        ReqCtx {
            active: None,
            llm: None,
            logged: false,
            complete: false,
            last_body_msec: 0,
            exporter: ptr::null_mut(),
            namespace: SeenHeader::NONE,
        }
    }
}

/// The model families' part of a request's context.
pub struct LlmState {
    /// Model set from Lua (`gm.set_model`), overriding `gateway_metrics_model` (sanitised; a
    /// usual model name is kept in place, without an allocation).
    pub model: Option<Value>,
    /// Tokens reported from Lua (`gm.add_tokens`, summed). When there are any, they are what is
    /// recorded: usage read from the response is not counted again. (Boxed: the context, reset
    /// for every request, stays small; only Lua's calls allocate it.)
    pub lua_tokens: Option<Box<Tokens>>,
    /// Reading the response's usage (`gateway_metrics_usage`).
    pub usage: UsageState,
    /// The response's reader (from the worker's pool: no allocation per buffer, and none per
    /// response once the pool has one) while its body is read, then kept for the model it read
    /// (`usage` then `Read`, or `Missing` for what the body lacked); none for a body that is
    /// not read. (Beside the state, not in it: ending the reading writes what the body said,
    /// without moving the reader.)
    pub reader: Option<Reader>,
    /// When the first token was seen, ms since the epoch (`gm.first_token`).
    pub first_token_ms: Option<u64>,
}

impl Default for LlmState {
    fn default() -> Self {
        LlmState {
            model: None,
            lua_tokens: None,
            usage: UsageState::Unread,
            reader: None,
            first_token_ms: None,
        }
    }
}

/// Where reading a response's usage stands.
pub enum UsageState {
    /// No body buffer has passed yet.
    Unread,
    /// The body is being read (by [`LlmState::reader`]).
    Reading,
    /// The body was read to its end, or to where it was cut: what its reader said (its model
    /// is in [`LlmState::reader`]). Kept as the reader said it (see [`UsageState::said`]): the
    /// reader's answer is written here as it is made, not copied into another form.
    Ended(Outcome),
    /// The body cannot be read, or was read without usage, for this reason.
    Missing(UsageMissing),
    /// Nothing to read: usage is off, or the response is not one that reports usage (not an
    /// upstream's 2xx).
    Skipped,
}

impl UsageState {
    /// What the response said once its reading ended or could not start: its tokens (final,
    /// or those before a cut), or why it has none. `None` while unread, reading, or skipped.
    pub fn said(&self) -> Option<Result<&Tokens, UsageMissing>> {
        match self {
            UsageState::Ended(Outcome::Usage(t) | Outcome::Partial(t)) => Some(Ok(t)),
            UsageState::Ended(Outcome::Absent) => Some(Err(UsageMissing::Absent)),
            UsageState::Ended(Outcome::Aborted) => Some(Err(UsageMissing::Aborted)),
            UsageState::Ended(Outcome::Malformed) => Some(Err(UsageMissing::Malformed)),
            UsageState::Missing(why) => Some(Err(*why)),
            UsageState::Unread | UsageState::Reading | UsageState::Skipped => None,
        }
    }
}

impl ReqCtx {
    /// The model families' part, made (empty) if the request has none yet.
    pub fn llm_mut(&mut self) -> &mut LlmState {
        self.llm.get_or_insert_with(LlmState::default)
    }

    /// Decrements the in-flight gauge once.
    pub fn leave(&mut self) {
        if let Some(g) = self.active.take() {
            g.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ReqCtx {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Pool cleanup of a ReqCtx; a plain (non-generic) function so that its address is unique and
/// `find_ctx` can recognise the cleanup by it.
unsafe extern "C" fn drop_req_ctx(data: *mut std::ffi::c_void) {
    // SAFETY: data is the box `ctx()` made or took from the worker's spare contexts, given
    // back once, when the request's pool is destroyed.
    let ctx = unsafe { Box::from_raw(data as *mut ReqCtx) };
    SPARE_CONTEXTS.put(ctx);
}

/// The request contexts a worker keeps for its next requests: a request's context is taken
/// from here and given back when the request is freed, so that it takes only its cleanup's
/// 24 bytes of the request's pool. (A context in the pool, ~200 bytes, moved nginx's own
/// allocations of a proxied request from one pool block to another, or into a new one: up to
/// ~600 instructions a request, measured, depending on the request's size.)
// Boxed: a context's address is the request's while it runs (nginx holds it).
#[allow(clippy::vec_box)]
struct SpareContexts(RefCell<Vec<Box<ReqCtx>>>);

// SAFETY: only the worker's event-loop thread makes and frees requests.
unsafe impl Sync for SpareContexts {}

static SPARE_CONTEXTS: SpareContexts = SpareContexts(RefCell::new(Vec::new()));

/// The most contexts a worker keeps (~48 KB): as many as its requests in flight at once, up to
/// this.
const SPARE_CONTEXTS_MAX: usize = 256;

impl SpareContexts {
    fn take(&self) -> Box<ReqCtx> {
        self.0
            .try_borrow_mut()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }

    /// Ends the request's context (its destructor: the in-flight gauge, the reader) and keeps
    /// it, reset, for another request.
    fn put(&self, mut ctx: Box<ReqCtx>) {
        *ctx = ReqCtx::default();
        if let Ok(mut v) = self.0.try_borrow_mut() {
            if v.len() < SPARE_CONTEXTS_MAX {
                if v.capacity() == 0 {
                    v.reserve_exact(SPARE_CONTEXTS_MAX);
                }
                v.push(ctx);
            }
        }
    }
}

/// The main request's slot in `r->ctx`: null, [`COMPLETE_MARK`], or its [`ReqCtx`]. nginx clears
/// it on internal redirects; the context itself (in the pool) survives them and is found again
/// by its pool cleanup.
///
fn slot(r: &ngx_http_request_t) -> *mut *mut std::ffi::c_void {
    // SAFETY: every request has a main request with a ctx array of ngx_http_max_module entries.
    unsafe { (*r.main).ctx.add(crate::boundary::module().ctx_index) }
}

/// The slot's value when the response's last buffer passed before the request had a context
/// (contexts are 8-aligned pool memory: never 1). Saves making one just for that.
const COMPLETE_MARK: usize = 1;

/// Did the response's last buffer pass (see `handlers::body_filter`)?
#[inline(always)]
fn body_complete(r: &ngx_http_request_t, ctx: Option<&ReqCtx>) -> bool {
    // SAFETY: the slot is the request's.
    ctx.is_some_and(|c| c.complete) || unsafe { *slot(r) } as usize == COMPLETE_MARK
}

/// Notes that the response's last buffer passed, in the context or, without one, in the slot.
pub fn mark_complete(r: &ngx_http_request_t) {
    // SAFETY: the slot is the request's; a value above the mark is the request's context.
    unsafe {
        let s = slot(r);
        match *s as usize {
            0 => *s = COMPLETE_MARK as *mut std::ffi::c_void,
            COMPLETE_MARK => {}
            p => (*(p as *mut ReqCtx)).complete = true,
        }
    }
}

/// The request context if the request has one: from the slot, else by its pool cleanup (after
/// an internal redirect), which is then put back in the slot.
#[allow(clippy::mut_from_ref)] // the context is the request's, in its pool, used by one thread
pub fn find_ctx(r: &ngx_http_request_t) -> Option<&mut ReqCtx> {
    // SAFETY: the slot holds a context of this request or less; the pool's cleanup list is a
    // valid singly linked list.
    unsafe {
        let s = slot(r);
        let v = *s as usize;
        if v > COMPLETE_MARK {
            return Some(&mut *(v as *mut ReqCtx));
        }
        let want = drop_req_ctx as unsafe extern "C" fn(*mut std::ffi::c_void) as usize;
        let mut c = (*(*r.main).pool).cleanup;
        while !c.is_null() {
            if (*c).handler.map(|h| h as usize) == Some(want) {
                let ctx = &mut *((*c).data as *mut ReqCtx);
                ctx.complete |= v == COMPLETE_MARK;
                *s = ctx as *mut ReqCtx as *mut std::ffi::c_void;
                return Some(ctx);
            }
            c = (*c).next;
        }
        None
    }
}

/// The request context, created on first use.
#[allow(clippy::mut_from_ref)] // as find_ctx
pub fn ctx(r: &ngx_http_request_t) -> Option<&mut ReqCtx> {
    // SAFETY: see find_ctx; the main request's pool outlives every use of the context.
    unsafe {
        if let Some(c) = find_ctx(r) {
            return Some(c);
        }
        let pool = (*r.main).pool;
        let cln = ngx_pool_cleanup_add(pool, 0);
        if cln.is_null() {
            return None;
        }
        let p = Box::into_raw(SPARE_CONTEXTS.take());
        (*cln).data = p as *mut std::ffi::c_void;
        (*cln).handler = Some(drop_req_ctx);
        let s = slot(r);
        (*p).complete = *s as usize == COMPLETE_MARK;
        *s = p as *mut std::ffi::c_void;
        Some(&mut *p)
    }
}

/// A label's value: read straight from the request header when the configured value is one
/// `$http_*` variable, from the query string when it is one `$arg_*` variable, as an indexed
/// variable when it is another single variable, else through nginx's complex value; `""`
/// when not configured. (Each way out of line: a call costs what its own way needs.)
#[inline(always)]
pub fn label<'r>(r: &'r Request, source: &LabelSource) -> &'r [u8] {
    if source.header.var.len != 0 {
        return header_label(r, source);
    }
    if source.arg.len != 0 {
        return arg_label(r, source);
    }
    match source.variable {
        0 => eval(r, source.cv),
        i => indexed(r, i - 1),
    }
}

/// The namespace as the request enters its content phase, kept in its context for the log
/// phase when it is a request header nothing can change later (see [`SeenHeader`]).
#[inline(always)]
pub fn entry_namespace<'r>(
    r: &'r Request,
    lc: &LocConf,
    mc: &MainConf,
    ctx: &mut ReqCtx,
) -> &'r [u8] {
    let ns = label(r, &lc.namespace);
    let h = &r.as_ref().headers_in.headers;
    ctx.namespace = match (u32::try_from(ns.len()), u32::try_from(h.part.nelts)) {
        (Ok(len), Ok(nelts))
            if lc.namespace.header.var.len != 0
                && !mc.late_header_writers
                && ptr::eq(h.last, &h.part) =>
        {
            SeenHeader {
                source: &lc.namespace,
                value: ns.as_ptr(),
                len,
                nelts,
            }
        }
        _ => SeenHeader::NONE,
    };
    ns
}

/// The namespace at the log phase: as the request entered its content phase when that still
/// holds (see [`SeenHeader`]), else read now.
#[inline(always)]
fn log_namespace<'r>(r: &'r Request, lc: &LocConf, ctx: Option<&'r ReqCtx>) -> &'r [u8] {
    if let Some(seen) = ctx.map(|c| &c.namespace) {
        let h = &r.as_ref().headers_in.headers;
        if ptr::eq(seen.source, &lc.namespace)
            && ptr::eq(h.last, &h.part)
            && h.part.nelts == seen.nelts as ngx_uint_t
        {
            // SAFETY: the value was a label of this request: in its pool (or static), alive
            // until the request is freed, after its log phase.
            return unsafe { std::slice::from_raw_parts(seen.value, seen.len as usize) };
        }
    }
    label(r, &lc.namespace)
}

/// A label that is one `$arg_*` variable, read from the query string as nginx reads it.
#[inline(never)]
fn arg_label<'r>(r: &'r Request, source: &LabelSource) -> &'r [u8] {
    let args = r.as_ref().args.as_bytes();
    let value = if source.arg_name.is_set() {
        source.arg_name.find(args)
    } else {
        query_arg(args, source.arg.as_bytes())
    };
    value.unwrap_or(b"")
}

/// Two labels that are `$arg_*` variables of names `ArgName` holds (`LocConf::ns_model_args`),
/// read in one walk of the query string. (Inline: only `Finished::read_query` reads them.)
#[inline(always)]
fn arg_pair<'r>(r: &'r Request, a: &LabelSource, b: &LabelSource) -> (&'r [u8], &'r [u8]) {
    let args = r.as_ref().args.as_bytes();
    let (x, y) = a.arg_name.find2(&b.arg_name, args);
    (x.unwrap_or(b""), y.unwrap_or(b""))
}

/// A label that is one `$http_*` variable, read from the request's headers.
#[inline(never)]
fn header_label<'r>(r: &'r Request, source: &LabelSource) -> &'r [u8] {
    let (cv, name) = (source.cv, &source.header);
    // SAFETY: the header list and its strings live in the request pool.
    unsafe {
        let want_len = name.var.len;
        let mut found: Option<&[u8]> = None;
        let mut part: *const ngx_list_part_t = &r.as_ref().headers_in.headers.part;
        while !part.is_null() {
            let elts = (*part).elts as *const ngx_table_elt_t;
            for i in 0..(*part).nelts {
                let h = &*elts.add(i);
                // Only headers of the right length are compared (out of line, to keep this
                // loop small).
                if h.key.len != want_len || h.hash == 0 || h.lowcase_key.is_null() {
                    continue;
                }
                let key = std::slice::from_raw_parts(h.lowcase_key, want_len);
                let usual = h.hash == name.hash && want_len <= 16 && edge_words(key) == name.words;
                if usual || header_is(h, name) {
                    if found.is_some() {
                        // Repeated header: let nginx decide what the variable gives.
                        return eval(r, cv);
                    }
                    found = Some(h.value.as_bytes());
                }
            }
            part = (*part).next;
        }
        found.unwrap_or(b"")
    }
}

/// Is this header (of the right length) the one a label reads?
#[inline(never)]
fn header_is(h: &ngx_table_elt_t, name: &HeaderName) -> bool {
    // SAFETY: the caller checked lowcase_key is set; it has key.len bytes; the names live in
    // the conf pool.
    let key = unsafe { std::slice::from_raw_parts(h.lowcase_key, h.key.len) };
    let (want, dashed) = (name.var.as_bytes(), name.dashed.as_bytes());
    // The usual spelling first (nginx's hash and one compare); then what the variable also
    // matches (`_` in its name stands for `-` or `_`).
    (h.hash == name.hash && short_eq(key, dashed)) || header_matches(key, want)
}

/// An indexed variable's value, nginx's cache of it left as it was (see
/// [`keeping_variables`]); `""` when it is not found.
fn indexed(r: &Request, index: ngx_uint_t) -> &[u8] {
    let rp = r as *const Request as *mut ngx_http_request_t;
    keeping_variables(r, [index].into_iter(), || {
        // SAFETY: the index was registered for this configuration; nginx returns the
        // request's value (in its pool) or null.
        match unsafe { ngx_http_get_flushed_variable(rp, index).as_ref() } {
            Some(v) if v.valid() != 0 && v.not_found() == 0 => v.as_bytes(),
            _ => b"",
        }
    })
}

/// Evaluates a complex value; `""` when unset or on error (the label reports what it got).
#[inline(never)]
fn eval(r: &Request, cv: *const ngx_http_complex_value_t) -> &[u8] {
    // SAFETY: a set cv was compiled for this request's configuration.
    let Some(cv) = (unsafe { cv.as_ref() }) else {
        return b"";
    };
    // The variables it reads: its `flushes`, ended by -1 (null: none).
    let mut at = cv.flushes as *const ngx_uint_t;
    let indexes = std::iter::from_fn(move || {
        // SAFETY: nginx ends a complex value's list of variable indexes with -1.
        let i = unsafe { at.as_ref() }
            .copied()
            .filter(|&i| i != ngx_uint_t::MAX)?;
        // SAFETY: not past the end: `i` was not the terminator.
        at = unsafe { at.add(1) };
        Some(i)
    });
    keeping_variables(r, indexes, || {
        r.get_complex_value(cv).map_or(b"", |v| v.as_bytes())
    })
}

/// Reads a label with `read`, then puts back the request's values of the variables it reads
/// (`indexes`) as they were: nginx caches a variable once evaluated (`$http_*` among them),
/// and a label read as the request enters its content phase would otherwise fix that value for
/// the request's later readers (an `add_header` after Lua changed the header would show the
/// old value). The value read stays valid: it is in the request pool.
fn keeping_variables<'r>(
    r: &'r Request,
    indexes: impl Iterator<Item = ngx_uint_t>,
    read: impl FnOnce() -> &'r [u8],
) -> &'r [u8] {
    let rr: &ngx_http_request_t = r.as_ref();
    let vars = rr.variables;
    // A label reads a handful of variables: those past 8 are not put back.
    let mut saved: [Option<(ngx_uint_t, ngx_variable_value_t)>; 8] = [None; 8];
    for (slot, i) in saved.iter_mut().zip(indexes) {
        // SAFETY: the indexes were registered for this configuration: `r->variables` has an
        // entry for each.
        *slot = Some((i, unsafe { *vars.add(i) }));
    }
    let value = read();
    for &(i, v) in saved.iter().flatten() {
        // SAFETY: as above.
        unsafe { *vars.add(i) = v };
    }
    value
}

/// The status nginx logs as `$status`.
#[inline(always)]
fn status(r: &ngx_http_request_t) -> ngx_uint_t {
    if r.err_status != 0 {
        r.err_status
    } else if r.headers_out.status != 0 {
        r.headers_out.status
    } else if r.http_version == NGX_HTTP_VERSION_9 as ngx_uint_t {
        9
    } else {
        0
    }
}

/// The endpoint label: `gateway_metrics_endpoint`, else the matched location's name (whose
/// identity, for the series cache, is the location's address: its name never changes).
#[inline(always)]
fn endpoint<'r>(r: &'r Request, lc: &LocConf) -> Label<'r> {
    if lc.endpoint.is_set() {
        return Label::bytes(label(r, &lc.endpoint));
    }
    match NgxHttpCoreModule::location_conf(r) {
        Some(clcf) => Label::with_id(clcf as *const _ as u64, clcf.name.as_bytes()),
        None => Label::with_id(1, b""),
    }
}

/// The upstream label: `gateway_metrics_upstream`, else the upstream whose response this is,
/// else `""`. A response is the upstream's when nginx got a status from it or failed talking to
/// it (502, 504); everything else is the gateway's own: `return`, Lua's `ngx.exit`, limit
/// rejections, cache hits, and a client gone before the upstream answered. A configured
/// upstream block is identified by its address (its host never changes).
#[inline(always)]
fn upstream<'r>(r: &'r Request, lc: &LocConf) -> Label<'r> {
    if lc.upstream.is_set() {
        return Label::bytes(label(r, &lc.upstream));
    }
    // SAFETY: r->upstream and its confs stay valid until the request is freed.
    unsafe {
        let u = r.as_ref().upstream;
        // u->state is the current try's; its status stays 0 until the upstream answers or
        // nginx gives up on it.
        if u.is_null() || (*u).state.is_null() || (*(*u).state).status == 0 {
            return Label::with_id(1, b"");
        }
        if !(*u).upstream.is_null() {
            return Label::with_id((*u).upstream as u64, (*(*u).upstream).host.as_bytes());
        }
        if !(*u).resolved.is_null() {
            return Label::bytes((*(*u).resolved).host.as_bytes());
        }
        Label::with_id(1, b"")
    }
}

/// Why a response whose header went out did not reach the client whole, if it did not: the
/// client closed or timed out (nginx marks the connection), else the response's last buffer
/// never went through the body filters (upstream reset or timed out mid-body, handler error).
/// Responses without a body (HEAD, 204, 304), upgraded connections and statuses that are
/// errors anyway are never cut.
#[inline(always)]
fn cut_reason(
    r: &ngx_http_request_t,
    ctx: Option<&ReqCtx>,
    complete: impl FnOnce() -> bool,
    status: ngx_uint_t,
) -> Option<CutReason> {
    if r.header_sent() == 0 || !(200..400).contains(&status) {
        return None;
    }
    // SAFETY: the request's connection is live.
    let c = unsafe { &*r.connection };
    if c.timedout() != 0 {
        return Some(CutReason::ClientTimeout);
    }
    if c.error() != 0 {
        return Some(CutReason::ClientClosed);
    }
    if r.header_only() != 0 || complete() {
        return None;
    }
    if r.upstream.is_null() {
        return Some(CutReason::Incomplete);
    }
    // SAFETY: r->upstream and its conf stay valid until the request is freed.
    let (u, conf) = unsafe {
        (
            &*r.upstream,
            r.upstream.as_ref().and_then(|u| u.conf.as_ref()),
        )
    };
    // nginx re-arms the upstream's read timer whenever data comes (moving it only when it
    // moves by more than NGX_TIMER_LAZY_DELAY, 300 ms): the body stopped for the read timeout
    // when the last data (or, without any, the header) is that old, less that slack.
    let last = match ctx.map_or(0, |c| c.last_body_msec) {
        0 if u.state.is_null() => return Some(CutReason::UpstreamError),
        // SAFETY: the upstream state lives in the request pool.
        0 => match unsafe { (*u.state).header_time } {
            ngx_msec_t::MAX => u.start_time,
            h => u.start_time.wrapping_add(h),
        },
        t => t,
    };
    let idle = now_msec().wrapping_sub(last);
    match conf {
        Some(conf) if conf.read_timeout > 0 && idle + TIMER_LAZY_DELAY >= conf.read_timeout => {
            Some(CutReason::UpstreamTimeout)
        }
        _ => Some(CutReason::UpstreamError),
    }
}

/// `NGX_TIMER_LAZY_DELAY` (a C macro bindgen does not see).
const TIMER_LAZY_DELAY: ngx_msec_t = 300;

/// nginx's monotonic millisecond clock of the current event loop iteration.
pub fn now_msec() -> ngx_msec_t {
    // SAFETY: a plain global of the worker, updated on its event loop (this thread).
    unsafe { ptr::read_volatile(ptr::addr_of!(ngx_current_msec)) }
}

/// The method label; a method nginx knows is identified by its number (nginx sets the name
/// from it: `GET` is always `NGX_HTTP_GET`). Those of [`METHOD_NAMES`] come without their
/// text, which [`fill_texts`] gives them where it is read.
#[inline(always)]
fn method(r: &ngx_http_request_t) -> Label<'_> {
    let m = r.method;
    if m & !KNOWN_METHODS == 0 && m.is_power_of_two() {
        return Label::with_id(m as u64, b"");
    }
    let name = r.method_name.as_bytes();
    if m == NGX_HTTP_UNKNOWN as ngx_uint_t {
        Label::bytes(name)
    } else {
        Label::with_id(m as u64, name)
    }
}

/// nginx's methods by the bit of their number (`NGX_HTTP_GET` is bit 1), as nginx spells them.
const METHOD_NAMES: [&[u8]; 17] = [
    b"",
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"OPTIONS",
    b"PROPFIND",
    b"PROPPATCH",
    b"LOCK",
    b"UNLOCK",
    b"PATCH",
    b"TRACE",
    b"CONNECT",
];

/// The method numbers [`METHOD_NAMES`] spells.
const KNOWN_METHODS: ngx_uint_t = 0x1_fffe;

/// Gives the request series' labels the texts [`Finished::read`] leaves out (the status
/// code's, a known method's): what a series is made with, or looked up by, when its key's
/// numbers are not enough.
pub fn fill_texts(labels: &mut [Label; 6], status: ngx_uint_t) {
    labels[2] = status_label(status);
    let m = &mut labels[RequestLabel::Method as usize];
    if m.bytes.is_empty() && m.id != 0 {
        m.bytes = METHOD_NAMES
            .get(m.id.trailing_zeros() as usize)
            .copied()
            .unwrap_or(b"");
    }
}

/// Milliseconds since the epoch from nginx's cached clock.
pub fn now_ms() -> u64 {
    // SAFETY: ngx_cached_time always points at a valid, periodically updated slot.
    unsafe {
        let t = ptr::read_volatile(ptr::addr_of!(ngx_cached_time));
        ((*t).sec as u64) * 1000 + (*t).msec as u64
    }
}

/// When the request started, ms since the epoch.
#[inline(always)]
fn start_ms(r: &ngx_http_request_t) -> u64 {
    (r.start_sec as u64) * 1000 + r.start_msec as u64
}

/// Milliseconds from `start` to `now` (0 if the clock went back), as an `i64`: both are ms since
/// the epoch, far below 2^63, and an `i64` becomes an `f64` in one instruction (a `u64` takes
/// six); the value is the same.
#[inline(always)]
fn elapsed_ms(now: u64, start: u64) -> i64 {
    (now as i64).wrapping_sub(start as i64).max(0)
}

/// A limiter's verdict for the request (`$limit_req_status` / `$limit_conn_status`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    None,
    Delayed,
    Rejected,
    /// `*_DRY_RUN`: the limit was hit but not enforced.
    DryRun,
}

/// The proxy cache's verdict (`$upstream_cache_status`) as a hit or a miss.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCache {
    None,
    Hit,
    Miss,
}

/// The limiters' and the cache's verdicts. The limiters' as nginx stores them (0 or 1: nothing
/// to record), made [`Limit`]s only when there is an event: the usual request pays one test.
#[derive(Clone, Copy)]
pub struct AutoStatus {
    limit_req: u32,
    limit_conn: u32,
    pub cache: UpstreamCache,
}

impl AutoStatus {
    /// Is there any event to record? (Both codes are below 8: their OR is at least 2 exactly
    /// when one of them is.)
    #[inline(always)]
    pub fn any(&self) -> bool {
        (self.limit_req | self.limit_conn) >= 2 || self.cache != UpstreamCache::None
    }

    /// `limit_req`'s verdict.
    pub fn limit_req(&self) -> Limit {
        match self.limit_req {
            LIMIT_REQ_DELAYED => Limit::Delayed,
            LIMIT_REQ_REJECTED => Limit::Rejected,
            LIMIT_REQ_DELAYED_DRY_RUN | LIMIT_REQ_REJECTED_DRY_RUN => Limit::DryRun,
            _ => Limit::None,
        }
    }

    /// `limit_conn`'s verdict.
    pub fn limit_conn(&self) -> Limit {
        match self.limit_conn {
            LIMIT_CONN_REJECTED => Limit::Rejected,
            LIMIT_CONN_REJECTED_DRY_RUN => Limit::DryRun,
            _ => Limit::None,
        }
    }
}

// The values nginx's limit_req and limit_conn modules store in the request (their .c files).
const LIMIT_REQ_DELAYED: u32 = 2;
const LIMIT_REQ_REJECTED: u32 = 3;
const LIMIT_REQ_DELAYED_DRY_RUN: u32 = 4;
const LIMIT_REQ_REJECTED_DRY_RUN: u32 = 5;
const LIMIT_CONN_REJECTED: u32 = 2;
const LIMIT_CONN_REJECTED_DRY_RUN: u32 = 3;

/// Reads what the limiters and the cache recorded in the request, straight from its fields
/// (what the `$limit_*_status` / `$upstream_cache_status` variables print, without evaluating
/// variables on every request).
#[inline(always)]
fn limiter_and_cache_status(r: &ngx_http_request_t) -> AutoStatus {
    // SAFETY: r->main is the live main request.
    let main = unsafe { &*r.main };
    AutoStatus {
        limit_req: main.limit_req_status(),
        limit_conn: main.limit_conn_status(),
        cache: upstream_cache(r),
    }
}

#[cfg(ngx_feature = "http_cache")]
#[inline(always)]
fn upstream_cache(r: &ngx_http_request_t) -> UpstreamCache {
    if r.upstream.is_null() {
        return UpstreamCache::None;
    }
    // SAFETY: r->upstream stays valid until the request is freed.
    match unsafe { (*r.upstream).cache_status() } {
        NGX_HTTP_CACHE_HIT
        | NGX_HTTP_CACHE_STALE
        | NGX_HTTP_CACHE_UPDATING
        | NGX_HTTP_CACHE_REVALIDATED => UpstreamCache::Hit,
        NGX_HTTP_CACHE_MISS | NGX_HTTP_CACHE_EXPIRED | NGX_HTTP_CACHE_BYPASS => UpstreamCache::Miss,
        _ => UpstreamCache::None,
    }
}

#[cfg(not(ngx_feature = "http_cache"))]
fn upstream_cache(_: &ngx_http_request_t) -> UpstreamCache {
    UpstreamCache::None
}

/// The zone, its store and lock, where a request (or a Lua call, or a scrape) records or reads.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) mc: &'a MainConf,
    pub(crate) zone: &'a ZoneCtx,
    pub(crate) store: Store<'static>,
    pub(crate) lock: ShmLock,
}

impl<'a> Target<'a> {
    /// The zone of `mc`, once it is initialised.
    pub(crate) fn of(mc: &'a MainConf) -> Option<Target<'a>> {
        // SAFETY: the zone ctx lives in the configuration pool as long as the cycle.
        let zone = unsafe { mc.zone.as_ref()? };
        Some(Target {
            mc,
            zone,
            store: zone.store()?,
            lock: zone.lock(),
        })
    }
}

/// What the log phase records of a finished request: read from the request once, so that the
/// recording code never sees the request itself. (Copied, never lent, to what is out of line:
/// a snapshot whose address no call takes stays in registers instead of being stored.)
#[derive(Clone, Copy)]
pub struct Finished<'r> {
    /// The labels of the stored request series, in its key order (see [`RequestLabel`]): method, endpoint, status_code, namespace,
    /// upstream, cut, built
    /// here once: the recording takes them as they are, but for the status code's and a known
    /// method's texts, which it adds ([`fill_texts`]) only where a series is looked up by its
    /// labels' bytes (a hit's key holds their numbers).
    pub request: [Label<'r>; 6],
    /// The status nginx logs (`$status`).
    pub status: ngx_uint_t,
    /// Why the response did not reach the client whole, if it did not.
    pub cut: Option<CutReason>,
    /// Seconds, as `$request_time` measures them.
    pub duration: f64,
    /// The limiters' and the cache's verdicts, when there is an event to record.
    pub auto: Option<AutoStatus>,
    /// The model label, `""` without one.
    pub model: &'r [u8],
    /// The model families' part when Lua or the response's usage had a say (its model is
    /// `model`): tokens, time to first token, missing usage. (In the caller's slot: the usual
    /// request, with or without a model, has none, and then nothing of it is written.)
    pub llm: Option<&'r Llm<'r>>,
}

/// Where the log phase keeps what [`Finished::read`] lends the snapshot besides the request's
/// own data: the model families' part (when there is one), and the sanitised copy of a response's
/// model that is not a label value as it is (the usual one is lent from its reader, no copy).
#[derive(Default)]
pub struct LlmSlot<'r> {
    llm: Option<Llm<'r>>,
    model: Option<Value>,
}

/// What a finished request says for the model families.
pub struct Llm<'r> {
    /// `""` without one.
    pub model: &'r [u8],
    /// Time to the first token, seconds.
    pub ttft: Option<f64>,
    /// Tokens reported for the request (by Lua, else read from the response), in its context.
    pub tokens: Option<&'r Tokens>,
    /// Why the response's usage could not be read, when it was to be read.
    pub usage_missing: Option<UsageMissing>,
}

/// Is `debug_http` logging on for `log` (nginx built `--with-debug`, `error_log ... debug`)?
/// Checked before calling anything, so that the usual request pays one test.
#[inline(always)]
pub fn debug_http(log: *mut ngx_log_t) -> bool {
    // SAFETY: a request's or a cycle's log is always valid.
    ngx::log::DEBUG
        && unsafe { log.as_ref() }.is_some_and(|l| l.log_level & NGX_LOG_DEBUG_HTTP as usize != 0)
}

/// Says what the log phase read, under `--with-debug` (`debug_http`).
#[cold]
#[inline(never)]
fn log_finished(r: &Request, mut f: Finished, whole: bool) {
    fill_texts(&mut f.request, f.status);
    ngx::ngx_log_debug_mask!(
        DebugMask::Http,
        r.log(),
        "gateway_metrics: method \"{}\" endpoint \"{}\" status {} namespace \"{}\" upstream \"{}\" cut {:?} model \"{}\" body whole {}",
        String::from_utf8_lossy(f.request[RequestLabel::Method as usize].bytes),
        String::from_utf8_lossy(f.request[RequestLabel::Endpoint as usize].bytes),
        f.status,
        String::from_utf8_lossy(f.namespace()),
        String::from_utf8_lossy(f.request[RequestLabel::Upstream as usize].bytes),
        f.cut.map(|c| c.label()),
        String::from_utf8_lossy(f.model),
        whole
    );
}

/// Positions in [`Finished::request`], whose order is the stored request series' key order:
/// method, endpoint, status_code, namespace, upstream, cut.
pub enum RequestLabel {
    Method = 0,
    Endpoint = 1,
    Namespace = 3,
    Upstream = 4,
}

impl<'r> Finished<'r> {
    pub fn namespace(&self) -> &'r [u8] {
        self.request[RequestLabel::Namespace as usize].bytes
    }

    /// Reads the finished main request `r` (with its location conf and metrics context).
    #[inline(always)]
    pub fn read(
        r: &'r Request,
        lc: &'r LocConf,
        ctx: Option<&'r mut ReqCtx>,
        llm_slot: &'r mut LlmSlot<'r>,
    ) -> Finished<'r> {
        Self::read_with::<false>(r, lc, ctx, llm_slot)
    }

    /// [`read`](Self::read) where the namespace and the model are both query arguments
    /// (`LocConf::ns_model_args`): the two read in one walk of the query string.
    #[inline(always)]
    pub fn read_query(
        r: &'r Request,
        lc: &'r LocConf,
        ctx: Option<&'r mut ReqCtx>,
        llm_slot: &'r mut LlmSlot<'r>,
    ) -> Finished<'r> {
        Self::read_with::<true>(r, lc, ctx, llm_slot)
    }

    #[inline(always)]
    fn read_with<const QUERY: bool>(
        r: &'r Request,
        lc: &'r LocConf,
        ctx: Option<&'r mut ReqCtx>,
        llm_slot: &'r mut LlmSlot<'r>,
    ) -> Finished<'r> {
        let rr: &ngx_http_request_t = r.as_ref();
        let status = status(rr);
        let start = start_ms(rr);
        let whole = body_complete(rr, ctx.as_deref());
        // The namespace, when read with the model (both from the query string: one walk).
        let mut ns = None;
        // The usual request's model (no Lua, no usage reading).
        let mut model: &[u8] = b"";
        // (`QUERY`: `ns_model_args` holds, with all it says; see `LocConf`.)
        let (llm, ctx): (Option<&Llm>, _) = match ctx {
            None if QUERY || lc.usage == USAGE_OFF => {
                if QUERY {
                    let (n, m) = arg_pair(r, &lc.namespace, &lc.model);
                    ns = Some(n);
                    model = m;
                } else if lc.model.is_set() {
                    model = label(r, &lc.model);
                }
                (None, None)
            }
            // A context with nothing of the model families (e.g. only the in-flight gauge's).
            Some(c) if lc.usage == USAGE_OFF && !lc.model.is_set() && c.llm.is_none() => {
                (None, Some(&*c))
            }
            ctx => model_and_usage(r, lc, ctx, whole, start, llm_slot),
        };
        let complete = || whole;
        let cut = cut_reason(rr, ctx, complete, status);
        let f = Finished {
            request: [
                method(rr),
                endpoint(r, lc),
                Label::with_id(status_id(status), b""),
                Label::bytes(match ns {
                    Some(ns) => ns,
                    None => log_namespace(r, lc, ctx),
                }),
                upstream(r, lc),
                match cut {
                    None => Label::with_id(1, b""),
                    Some(c) => cut_label(c),
                },
            ],
            status,
            cut,
            duration: elapsed_ms(now_ms(), start) as f64 / 1000.0,
            auto: Some(limiter_and_cache_status(rr)).filter(AutoStatus::any),
            model: match llm {
                Some(l) => l.model,
                None => model,
            },
            llm,
        };
        if debug_http(r.log()) {
            log_finished(r, f, whole);
        }
        f
    }
}

/// The `cut` label of a response that did not reach the client whole. (Out of line: the usual
/// response's label is a constant, not a pick among six.)
#[inline(never)]
fn cut_label(c: CutReason) -> Label<'static> {
    Label::with_id(2 + c as u64, c.label().as_bytes())
}

/// The request's trace context, from `gateway_metrics_exemplars` (an invalid value: none).
/// Read apart from [`Finished`]: requests without exemplars never pay for it.
#[cold]
#[inline(never)]
pub fn trace(r: &Request, lc: &LocConf) -> Option<TraceContext> {
    TraceContext::parse(label(r, &lc.exemplars))
}

/// A response's usage reader, taken from this worker's pool of readers and given back to it
/// when dropped (see [`READERS`]).
pub struct Reader(ManuallyDrop<Box<UsageReader>>);

/// The readers of responses done with, kept by the worker for the next responses: a response's
/// reader costs no allocation, no free and no zeroing of a new block when one is here (the usual
/// case: the pool holds as many readers as the worker had responses being read at once, up to
/// [`POOLED_READERS`]).
// Boxed: a reader (1,480 bytes) moves in and out of the pool as one pointer, never copied.
#[allow(clippy::vec_box)]
struct ReaderPool(RefCell<Vec<Box<UsageReader>>>);

// SAFETY: only the worker's event-loop thread reads responses and frees requests (body filter,
// log phase, pool cleanups, Lua calls); render threads never touch a request.
unsafe impl Sync for ReaderPool {}

static READERS: ReaderPool = ReaderPool(RefCell::new(Vec::new()));

/// The most readers a worker keeps for reuse: up to 32 x 5,576 bytes (an event stream's reader,
/// 1,480 bytes, with its 4 KiB carry buffer) held while idle.
pub const POOLED_READERS: usize = 32;

impl Reader {
    /// A reader for a new response: one of the pool's, reset, else a new one.
    fn new(format: Format, body: Body) -> Reader {
        let pooled = READERS.0.try_borrow_mut().ok().and_then(|mut p| p.pop());
        Reader(ManuallyDrop::new(match pooled {
            Some(mut r) => {
                r.reset(format, body);
                r
            }
            None => Box::new(UsageReader::new(format, body)),
        }))
    }
}

impl std::ops::Deref for Reader {
    type Target = UsageReader;
    fn deref(&self) -> &UsageReader {
        &self.0
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut UsageReader {
        &mut self.0
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: the box is taken once, here, and `self.0` is never used after.
        let r = unsafe { ManuallyDrop::take(&mut self.0) };
        if let Ok(mut pool) = READERS.0.try_borrow_mut() {
            if pool.len() < POOLED_READERS {
                if pool.capacity() == 0 {
                    pool.reserve_exact(POOLED_READERS);
                }
                pool.push(r);
            }
        }
    }
}

impl LlmState {
    /// Ends the reading of a body being read (`whole`: its last buffer passed): what it said
    /// (its reader stays, for the model). True when the first content came in the body's last
    /// event, one without blank line that only its end could read (see
    /// [`UsageReader::first_content_at_finish`]).
    #[inline(always)]
    pub fn conclude(&mut self, whole: bool) -> bool {
        let (UsageState::Reading, Some(reader)) = (&self.usage, self.reader.as_mut()) else {
            return false;
        };
        self.usage = UsageState::Ended(reader.finish(whole));
        reader.first_content_at_finish()
    }

    /// The response's model as the provider wrote it (see [`UsageReader::model`]), once its
    /// body was read (with or without usage).
    fn read_model(&self) -> Option<&[u8]> {
        match (&self.usage, &self.reader) {
            (UsageState::Reading, _) | (_, None) => None,
            (_, Some(reader)) => reader.model(),
        }
    }

    /// What the response said of its usage, at the log phase (after [`LlmState::conclude`]):
    /// the tokens to record, or why there are none. Lua's tokens win over the response's.
    fn usage_result(
        &self,
        r: &ngx_http_request_t,
        lc: &LocConf,
        whole: bool,
    ) -> (Option<&Tokens>, Option<UsageMissing>) {
        // Tokens Lua reported win: the response's are not counted on top of them.
        if let Some(t) = &self.lua_tokens {
            return (Some(t), None);
        }
        match self.usage.said() {
            Some(Ok(t)) => (Some(t), None),
            Some(Err(why)) => (None, Some(why)),
            None if matches!(self.usage, UsageState::Unread) => (None, unread_usage(r, lc, whole)),
            None => (None, None),
        }
    }

    /// The model the response named, sanitised as `gm.set_model` does: in place in its reader
    /// when it is a label value as it is (the usual name: no copy), else a copy kept in `copy`.
    fn response_model<'a>(&'a self, copy: &'a mut Option<Value>) -> Option<&'a [u8]> {
        let m = self.read_model()?;
        // (A model read in a kept shape was checked once, when the shape was made.)
        if self.reader.as_ref().is_some_and(|r| r.model_is_label()) || is_clean(m) {
            return Some(m);
        }
        Some(copy.insert(Value::sanitized(m)).as_bytes())
    }
}

/// The upstream's first `Content-Encoding` header, where nginx keeps it (before 1.23, with gzip
/// built in: set as the upstream's headers were parsed).
#[cfg(gm_upstream_content_encoding)]
fn upstream_content_encoding(r: &ngx_http_request_t) -> Option<&[u8]> {
    // SAFETY: r->upstream is live (the caller checked it); the header it points to, if any,
    // is in the request pool.
    let h = unsafe { (*r.upstream).headers_in.content_encoding.as_ref() }?;
    Some(h.value.as_bytes())
}

/// The upstream's first `Content-Encoding` header, found in its header list (nginx 1.23 and
/// later keep no field of their own for it).
#[cfg(not(gm_upstream_content_encoding))]
fn upstream_content_encoding(r: &ngx_http_request_t) -> Option<&[u8]> {
    // SAFETY: r->upstream is live (the caller checked it); its header list is in the request
    // pool.
    let headers = unsafe { &(*r.upstream).headers_in.headers };
    header_value(headers, b"content-encoding")
}

/// The value of the first header of this (lowercase) name in a header list.
#[cfg(not(gm_upstream_content_encoding))]
fn header_value<'l>(headers: &'l ngx_list_t, name: &[u8]) -> Option<&'l [u8]> {
    let mut part: *const ngx_list_part_t = &headers.part;
    // SAFETY: an nginx list's parts hold `nelts` initialised elements each; the strings live
    // in the request pool.
    unsafe {
        while let Some(p) = part.as_ref() {
            let elts = std::slice::from_raw_parts(p.elts as *const ngx_table_elt_t, p.nelts);
            for h in elts {
                if h.hash != 0 && h.key.as_bytes().eq_ignore_ascii_case(name) {
                    return Some(h.value.as_bytes());
                }
            }
            part = p.next;
        }
    }
    None
}

/// Usage of a response none of whose body passed: missing when the response should have had
/// some (an upstream's 2xx with a body), because it was cut before its body, or had none.
fn unread_usage(r: &ngx_http_request_t, lc: &LocConf, whole: bool) -> Option<UsageMissing> {
    let reads = lc.usage_format().is_some() && usage_applies(r);
    reads.then_some(if whole {
        UsageMissing::Absent
    } else {
        UsageMissing::Aborted
    })
}

/// Is this a response whose usage is read: an upstream's 2xx?
/// (Not a response without a body: HEAD, 204.)
fn usage_applies(r: &ngx_http_request_t) -> bool {
    let status = r.headers_out.status;
    !r.upstream.is_null()
        && (200..300).contains(&status)
        && status != NGX_HTTP_NO_CONTENT as ngx_uint_t
        && r.header_only() == 0
}

/// Starts reading the usage of a response about to pass (its header is out): the state, its
/// reader put in `reader` ([`LlmState::reader`]), or why there is none.
pub fn start_usage(
    r: &ngx_http_request_t,
    lc: &LocConf,
    reader: &mut Option<Reader>,
) -> UsageState {
    let Some(format) = lc.usage_format() else {
        return UsageState::Skipped;
    };
    if !usage_applies(r) {
        return UsageState::Skipped;
    }
    // The upstream's own header: gzip or other filters of this nginx may set the response's
    // encoding, but the bytes passing here are the upstream's. (Looked up in its header list:
    // nginx 1.28's upstream has no `content_encoding` field of its own any more.)
    if let Some(v) = upstream_content_encoding(r) {
        if !v.is_empty() && !v.eq_ignore_ascii_case(b"identity") {
            return UsageState::Missing(UsageMissing::Encoded);
        }
    }
    let ct = r.headers_out.content_type.as_bytes();
    let sse = ct.len() >= 17 && ct[..17].eq_ignore_ascii_case(b"text/event-stream");
    let body = if sse { Body::EventStream } else { Body::Json };
    *reader = Some(Reader::new(format, body));
    UsageState::Reading
}

/// The model families' part of a request with a context or that reads its response's usage
/// (`None` when it has no model, no tokens and no missing usage; written in `slot`), and the
/// context. The model the request set (Lua's, else the directive's) wins over the response's.
#[inline(never)]
fn model_and_usage<'r>(
    r: &'r Request,
    lc: &LocConf,
    ctx: Option<&'r mut ReqCtx>,
    whole: bool,
    start: u64,
    slot: &'r mut LlmSlot<'r>,
) -> (Option<&'r Llm<'r>>, Option<&'r ReqCtx>) {
    let LlmSlot {
        llm: slot,
        model: copy,
    } = slot;
    let rr: &ngx_http_request_t = r.as_ref();
    let conf_model: &[u8] = if lc.model.is_set() {
        label(r, &lc.model)
    } else {
        b""
    };
    let Some(c) = ctx else {
        let usage_missing = unread_usage(rr, lc, whole);
        if conf_model.is_empty() && usage_missing.is_none() {
            return (None, None);
        }
        let part = slot.insert(Llm {
            model: conf_model,
            ttft: None,
            tokens: None,
            usage_missing,
        });
        return (Some(&*part), None);
    };
    // The end of a body still being read (a cut one): what changes the context, first.
    if let Some(l) = c.llm.as_mut() {
        l.conclude(whole);
    }
    let c = &*c;
    let llm = c.llm.as_ref();
    let (tokens, usage_missing) = match llm {
        Some(l) => l.usage_result(rr, lc, whole),
        None => (None, unread_usage(rr, lc, whole)),
    };
    // Lua's model, else the directive's, else the response's.
    let model: &[u8] = match llm {
        Some(LlmState { model: Some(m), .. }) => m.as_bytes(),
        _ if !conf_model.is_empty() => conf_model,
        Some(l) => l.response_model(copy).unwrap_or(b""),
        None => b"",
    };
    if model.is_empty() && tokens.is_none() && usage_missing.is_none() {
        return (None, Some(c));
    }
    let ttft = llm
        .and_then(|l| l.first_token_ms)
        .map(|ms| ms.saturating_sub(start) as f64 / 1000.0);
    let part = slot.insert(Llm {
        model,
        ttft,
        tokens,
        usage_missing,
    });
    (Some(&*part), Some(c))
}

/// "000" to "999", three bytes each: the `status_code` label without formatting.
static STATUS_DIGITS: [u8; 3000] = {
    let mut t = [0u8; 3000];
    let mut s = 0;
    while s < 1000 {
        t[s * 3] = b'0' + (s / 100) as u8;
        t[s * 3 + 1] = b'0' + (s / 10 % 10) as u8;
        t[s * 3 + 2] = b'0' + (s % 10) as u8;
        s += 1;
    }
    t
};

/// The `status_code` label: the status in decimal (`0` when no response was produced). nginx
/// never sends a status above 999; one would show as `999+`.
#[inline(always)]
pub fn status_label(status: ngx_uint_t) -> Label<'static> {
    Label::with_id(status_id(status), STATUS_TEXT[status.min(1000)])
}

/// The `status_code` label's identity.
#[inline(always)]
fn status_id(status: ngx_uint_t) -> u64 {
    status as u64 | 1 << 40
}

/// Each status's `status_code` text, `999+` above 999 (the last entry): one load per request
/// instead of working out where the digits start.
static STATUS_TEXT: [&[u8]; 1001] = {
    let digits: &[u8] = &STATUS_DIGITS;
    let mut t: [&[u8]; 1001] = [b"999+"; 1001];
    let mut s = 0;
    while s < 1000 {
        let skip = if s < 10 {
            2
        } else if s < 100 {
            1
        } else {
            0
        };
        t[s] = digits.split_at(s * 3 + skip).1.split_at(3 - skip).0;
        s += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_nginxs() {
        let known = [
            (NGX_HTTP_GET, "GET"),
            (NGX_HTTP_HEAD, "HEAD"),
            (NGX_HTTP_POST, "POST"),
            (NGX_HTTP_PUT, "PUT"),
            (NGX_HTTP_DELETE, "DELETE"),
            (NGX_HTTP_MKCOL, "MKCOL"),
            (NGX_HTTP_COPY, "COPY"),
            (NGX_HTTP_MOVE, "MOVE"),
            (NGX_HTTP_OPTIONS, "OPTIONS"),
            (NGX_HTTP_PROPFIND, "PROPFIND"),
            (NGX_HTTP_PROPPATCH, "PROPPATCH"),
            (NGX_HTTP_LOCK, "LOCK"),
            (NGX_HTTP_UNLOCK, "UNLOCK"),
            (NGX_HTTP_PATCH, "PATCH"),
            (NGX_HTTP_TRACE, "TRACE"),
            (NGX_HTTP_CONNECT, "CONNECT"),
        ];
        let mut bits = 0;
        for (m, name) in known {
            bits |= m as ngx_uint_t;
            let mut labels = [Label::bytes(b""); 6];
            labels[RequestLabel::Method as usize] = Label::with_id(m as u64, b"");
            fill_texts(&mut labels, 200);
            assert_eq!(labels[RequestLabel::Method as usize].bytes, name.as_bytes());
            assert_eq!(labels[2].bytes, b"200");
        }
        assert_eq!(bits, KNOWN_METHODS);
    }

    #[test]
    fn status_labels_are_the_decimal_status() {
        for (s, text) in [
            (0, "0"),
            (9, "9"),
            (42, "42"),
            (200, "200"),
            (499, "499"),
            (999, "999"),
        ] {
            let l = status_label(s);
            assert_eq!(l.bytes, text.as_bytes());
            assert_eq!(l.id, s as u64 | 1 << 40);
        }
        assert_eq!(status_label(1000).bytes, b"999+");
        assert_eq!(status_label(1234).bytes, b"999+");
        for s in 0..1000 {
            assert_eq!(status_label(s).bytes, s.to_string().as_bytes());
        }
    }
}
