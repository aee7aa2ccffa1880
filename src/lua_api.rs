//! C-ABI functions for Lua (LuaJIT FFI, see `lua/resty/gateway_metrics.lua`, whose `ffi.cdef`
//! mirrors these one for one). nginx loads modules with `RTLD_GLOBAL`, so `ffi.C` finds them.
//!
//! Every function returns `0` on success or `-1` with `*err` set to a static, NUL-terminated
//! message; none of them panics into the worker (each body runs under `catch_unwind`) and none
//! trusts its arguments: pointers are checked for null, lengths are capped, numbers must be
//! finite and in range.

use std::ffi::{c_char, c_double, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use gateway_metrics_core::api;
use gateway_metrics_core::catalogue::fam;
use gateway_metrics_core::config::MAX_CUSTOM_LABELS;
use gateway_metrics_core::labels::Value;
use gateway_metrics_core::render::CustomKind;
use gateway_metrics_core::series_of;
use gateway_metrics_core::store::{add_f64, add_u64, observe, set_f64, SelfCounter, SeriesKind};
use gateway_metrics_core::usage::Tokens;
use nginx_sys::*;

use crate::conf::cycle_main_conf;
use crate::request::{self, Target, UsageState};

/// A byte string passed from Lua (pointer and length of a Lua string).
#[repr(C)]
pub struct GatewayMetricsStr {
    pub data: *const c_char,
    pub len: usize,
}

type ApiResult = Result<(), &'static CStr>;

/// Runs `f`, maps its result to the C convention and counts rejected calls.
fn api(err: Option<&mut *const c_char>, f: impl FnOnce() -> ApiResult) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(c"internal error"));
    match r {
        Ok(()) => 0,
        Err(msg) => {
            if let Some(err) = err {
                *err = msg.as_ptr();
            }
            if let Ok(t) = zone() {
                t.store.bump_self(SelfCounter::InvalidCalls, 1);
            }
            -1
        }
    }
}

/// # Safety
/// `data` must be null or point at `len` readable bytes.
unsafe fn bytes<'a>(data: *const c_char, len: usize) -> Result<&'a [u8], &'static CStr> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(c"null string");
    }
    if !api::arg_len_ok(len) {
        return Err(c"string too long");
    }
    // SAFETY: per the function contract.
    Ok(unsafe { std::slice::from_raw_parts(data as *const u8, len) })
}

fn count(v: c_double, what: &'static CStr) -> Result<u64, &'static CStr> {
    api::token_count(v).ok_or(what)
}

/// The request's context, refusing calls without a request or after its log phase.
///
/// # Safety
/// `r` must be null or the current request (as `resty.core.base.get_request()` returns it).
unsafe fn req_ctx<'a>(
    r: *mut ngx_http_request_t,
) -> Result<&'a mut request::ReqCtx, &'static CStr> {
    if r.is_null() {
        return Err(c"no request");
    }
    // lua-nginx-module runs timers and init_worker code on a fake request whose connection has
    // no socket: there is no client request to attach values to.
    // SAFETY: r is the current (possibly fake) request; its connection is valid.
    if unsafe { (*(*r).connection).fd } == -1 {
        return Err(c"no request");
    }
    // SAFETY: per the function contract.
    let ctx = request::ctx(unsafe { &*r }).ok_or(c"out of memory")?;
    if ctx.logged {
        return Err(c"request already logged");
    }
    Ok(ctx)
}

/// Sets this request's model label (overrides `gateway_metrics_model`).
///
/// # Safety
/// `r`: null or the current request; `model`: `len` readable bytes; `err`: null or writable.
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_set_model(
    r: *mut ngx_http_request_t,
    model: *const c_char,
    len: usize,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        // SAFETY: forwarded contract.
        let (ctx, m) = unsafe { (req_ctx(r)?, bytes(model, len)?) };
        ctx.llm_mut().model = Some(Value::sanitized(m));
        Ok(())
    })
}

/// Adds token counts to this request (they accumulate; recorded once at the log phase).
///
/// # Safety
/// As [`gateway_metrics_set_model`].
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_add_tokens(
    r: *mut ngx_http_request_t,
    input: c_double,
    output: c_double,
    cached_input: c_double,
    reasoning: c_double,
    cache_write: c_double,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        let n = Tokens {
            input: count(input, c"invalid input token count")?,
            output: count(output, c"invalid output token count")?,
            cached_input: count(cached_input, c"invalid cached_input token count")?,
            reasoning: count(reasoning, c"invalid reasoning token count")?,
            cache_write: count(cache_write, c"invalid cache_write token count")?,
        };
        // SAFETY: forwarded contract.
        let ctx = unsafe { req_ctx(r)? };
        let t = ctx.llm_mut().lua_tokens.get_or_insert_with(Box::default);
        t.input = t.input.saturating_add(n.input);
        t.output = t.output.saturating_add(n.output);
        t.cached_input = t.cached_input.saturating_add(n.cached_input);
        t.cache_write = t.cache_write.saturating_add(n.cache_write);
        t.reasoning = t.reasoning.saturating_add(n.reasoning);
        Ok(())
    })
}

/// Marks the time to first token (the first call wins).
///
/// # Safety
/// As [`gateway_metrics_set_model`].
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_first_token(
    r: *mut ngx_http_request_t,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        // SAFETY: forwarded contract.
        let ctx = unsafe { req_ctx(r)? };
        let llm = ctx.llm_mut();
        if llm.first_token_ms.is_none() {
            llm.first_token_ms = Some(request::now_ms());
        }
        Ok(())
    })
}

/// The usage the module read from this request's response (`gateway_metrics_usage`), once its
/// body is whole: `out` gets input, output, cached input, cache write and reasoning tokens.
/// Refused while the body is still being read, and when the usage could not be read (the
/// message says why), so that Lua (e.g. a token budget in `log_by_lua`) never takes a guess.
///
/// # Safety
/// `r`: null or the current request; `out`: null or 5 writable doubles; `err`: null or writable.
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_response_usage(
    r: *mut ngx_http_request_t,
    out: *mut c_double,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        if out.is_null() {
            return Err(c"null output");
        }
        // SAFETY: forwarded contract.
        let ctx = unsafe { req_ctx(r)? };
        let usage = ctx.llm.as_ref().map_or(&UsageState::Unread, |l| &l.usage);
        let t = match (usage.said(), usage) {
            (Some(Ok(t)), _) => *t,
            (Some(Err(why)), _) => return Err(why.message()),
            (None, UsageState::Reading) => {
                return Err(c"usage not read yet: the body is not complete")
            }
            (None, _) => return Err(c"no usage read for this response"),
        };
        let counts = [
            t.input,
            t.output,
            t.cached_input,
            t.cache_write,
            t.reasoning,
        ];
        for (i, n) in counts.into_iter().enumerate() {
            // SAFETY: per the contract, out has 5 writable doubles.
            unsafe { *out.add(i) = n as c_double };
        }
        Ok(())
    })
}

/// The zone of the current cycle (Lua calls come without a request, e.g. from timers).
fn zone() -> Result<Target<'static>, &'static CStr> {
    let mc = cycle_main_conf().ok_or(c"no http configuration")?;
    if mc.zone.is_null() {
        return Err(c"no gateway_metrics_zone configured");
    }
    Target::of(mc).ok_or(c"metrics zone not ready")
}

fn update(
    t: &Target,
    family: u32,
    layout: u8,
    n_values: u8,
    values: &[&[u8]],
    f: impl FnOnce(&[std::sync::atomic::AtomicU64]),
) -> ApiResult {
    let kind = SeriesKind {
        family,
        layout,
        n_values,
    };
    // An existing series is found from the values joined on the stack: no allocation per call.
    if let (Some(v), _) = series_of(&t.store, &t.lock, t.zone.limits(), kind, values) {
        f(v);
    }
    // A redirected or lost update is counted by the store; it is not the caller's error.
    Ok(())
}

/// One rate-limit event: always a hit, and a violation too when `rejected` is non-zero.
///
/// # Safety
/// The strings must be `len` readable bytes; `err`: null or writable.
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_rate_limit(
    namespace: *const c_char,
    namespace_len: usize,
    rule_type: *const c_char,
    rule_type_len: usize,
    rejected: c_int,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        // SAFETY: forwarded contract.
        let (ns, rule) = unsafe {
            (
                bytes(namespace, namespace_len)?,
                bytes(rule_type, rule_type_len)?,
            )
        };
        if rule.is_empty() {
            return Err(c"empty rule_type");
        }
        let t = zone()?;
        update(&t, fam::RATE_LIMIT, 0, 2, &[ns, rule], |v| {
            add_u64(&v[0], 1);
            if rejected != 0 {
                add_u64(&v[1], 1);
            }
        })
    })
}

/// One cache lookup, hit (`hit` non-zero) or miss.
///
/// # Safety
/// As [`gateway_metrics_rate_limit`].
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_cache(
    cache_type: *const c_char,
    len: usize,
    hit: c_int,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        // SAFETY: forwarded contract.
        let kind = unsafe { bytes(cache_type, len)? };
        if kind.is_empty() {
            return Err(c"empty cache_type");
        }
        let t = zone()?;
        update(&t, fam::CACHE, 0, 2, &[kind], |v| {
            add_u64(&v[if hit != 0 { 0 } else { 1 }], 1)
        })
    })
}

/// Operations on declared families.
pub const OP_INC: c_int = 0;
pub const OP_SET: c_int = 1;
pub const OP_OBSERVE: c_int = 2;

/// `gm.inc` / `gm.set` / `gm.observe` on a family declared in nginx.conf.
///
/// # Safety
/// `name`: `name_len` readable bytes; `labels`: `n_labels` readable entries, each pointing at
/// readable bytes; `err`: null or writable.
#[no_mangle]
pub unsafe extern "C" fn gateway_metrics_custom(
    op: c_int,
    name: *const c_char,
    name_len: usize,
    labels: *const GatewayMetricsStr,
    n_labels: usize,
    value: c_double,
    err: *mut *const c_char,
) -> c_int {
    // SAFETY: `err` is null or a writable `const char *[1]` (the function's contract).
    api(unsafe { err.as_mut() }, || {
        // SAFETY: forwarded contract.
        let name = unsafe { bytes(name, name_len)? };
        let t = zone()?;
        // The zone's list: each family with its bucket layout.
        let (f, layout) = t
            .zone
            .custom
            .iter()
            .find(|(f, _)| f.name.as_bytes() == name)
            .map(|(f, layout)| (f, *layout))
            .ok_or(c"undeclared metric")?;
        if n_labels != f.labels.len() || n_labels > MAX_CUSTOM_LABELS {
            return Err(c"wrong number of label values");
        }
        if n_labels > 0 && labels.is_null() {
            return Err(c"null labels");
        }
        // (The fuzzed check of core, not a copy of it.)
        let value = api::metric_value(value, (f.kind, op) == (CustomKind::Counter, OP_INC))?;
        let mut vals: [&[u8]; MAX_CUSTOM_LABELS] = [&[]; MAX_CUSTOM_LABELS];
        for (j, v) in vals.iter_mut().enumerate().take(n_labels) {
            // SAFETY: per the contract, labels has n_labels entries.
            let l = unsafe { &*labels.add(j) };
            // SAFETY: as above, each entry points at len readable bytes.
            *v = unsafe { bytes(l.data, l.len)? };
        }
        let k = &vals[..n_labels];
        match (f.kind, op) {
            (CustomKind::Counter, OP_INC) => update(&t, f.id, 0, 1, k, |v| add_f64(&v[0], value)),
            (CustomKind::Gauge, OP_INC) => update(&t, f.id, 0, 1, k, |v| add_f64(&v[0], value)),
            (CustomKind::Gauge, OP_SET) => update(&t, f.id, 0, 1, k, |v| set_f64(&v[0], value)),
            (CustomKind::Histogram, OP_OBSERVE) => {
                if layout == 0 {
                    return Err(c"histogram bucket layout not registered");
                }
                update(&t, f.id, layout, f.n_values(), k, |v| {
                    observe(v, &f.bounds, value)
                })
            }
            (CustomKind::Counter, _) => Err(c"counters only support inc"),
            (CustomKind::Gauge, _) => Err(c"gauges support inc and set, not observe"),
            (CustomKind::Histogram, _) => Err(c"histograms only support observe"),
        }
    })
}
