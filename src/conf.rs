//! Configuration as data: the module's main and location confs (created and merged here, filled
//! by the directives in directives.rs) and how code without a request finds the running one.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::ptr;

use gateway_metrics_core::buckets::Histograms;
use gateway_metrics_core::config::Price;
use gateway_metrics_core::labels::{edge_words, header_variable};
use gateway_metrics_core::render::CustomFamily;
use nginx_sys::*;

use crate::zone::ZoneCtx;

/// Default cardinality cap: enough for many tenants x models x endpoints, small enough that a
/// label-cardinality attack cannot fill a default-sized zone.
pub const DEFAULT_MAX_SERIES: u64 = 50_000;
/// Smallest zone accepted by `gateway_metrics_zone`.
pub const MIN_ZONE_SIZE: usize = 128 * 1024;
/// Largest zone: index slots hold 32-bit word offsets (32 GiB), with margin.
pub const MAX_ZONE_SIZE: usize = 16 << 30;

/// How `/metrics` is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderMode {
    /// Not configured: in slices on the event loop.
    Default,
    /// `gateway_metrics_render_thread_pool off`: in slices on the event loop.
    Slices,
    /// In a thread of this nginx thread pool, in one piece.
    ThreadPool(Vec<u8>),
}

pub struct MainConf {
    /// The zone's per-cycle context; null without `gateway_metrics_zone`.
    pub zone: *mut ZoneCtx,
    /// The built-in histograms' bucket bounds, and whether their directive was given.
    pub bounds: Histograms<Vec<f64>>,
    pub bounds_set: Histograms<bool>,
    pub max_series: u64,
    pub max_series_set: bool,
    pub prices: BTreeMap<Vec<u8>, Price>,
    pub custom: Vec<CustomFamily>,
    /// Some location records or exports metrics (so a zone is required).
    pub used: bool,
    /// Some location has `gateway_metrics_exporter`.
    pub exporter: bool,
    /// How `/metrics` is rendered (`gateway_metrics_render_thread_pool`).
    pub render_mode: RenderMode,
    /// The thread pool `/metrics` is rendered in (null: render in the event loop).
    pub render_pool: *mut std::ffi::c_void,
}

#[repr(C)]
pub struct LocConf {
    pub enable: ngx_flag_t,
    pub namespace: LabelSource,
    pub upstream: LabelSource,
    pub endpoint: LabelSource,
    pub model: LabelSource,
}

/// Where a label's value comes from (`gateway_metrics_namespace` and the like).
#[repr(C)]
pub struct LabelSource {
    /// The configured complex value (null: not configured). nginx's
    /// `ngx_http_set_complex_value_slot` writes it: the directive's offset points here.
    pub cv: *mut ngx_http_complex_value_t,
    /// The header, when the value is exactly one `$http_*` variable (read directly, see
    /// `request::label`); empty names otherwise.
    pub header: HeaderName,
}

impl LabelSource {
    pub fn is_set(&self) -> bool {
        !self.cv.is_null()
    }
}

/// A request header a label reads directly.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderName {
    /// The variable's name after `http_`, lowercased (`x_namespace`).
    pub var: ngx_str_t,
    /// The header name as clients send it, lowercased (`x-namespace`).
    pub dashed: ngx_str_t,
    /// nginx's hash of the lowercased header name (what it stores in `ngx_table_elt_t.hash`).
    pub hash: ngx_uint_t,
    /// `edge_words` of `dashed`: the whole name when it has at most 16 bytes.
    pub words: [u64; 2],
}

pub const UNSET: ngx_flag_t = -1;

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    let conf = MainConf {
        zone: ptr::null_mut(),
        bounds: Histograms::default_bounds(),
        bounds_set: Histograms::default(),
        max_series: DEFAULT_MAX_SERIES,
        max_series_set: false,
        prices: BTreeMap::new(),
        custom: Vec::new(),
        used: false,
        exporter: false,
        render_mode: RenderMode::Default,
        render_pool: ptr::null_mut(),
    };
    // SAFETY: nginx passes a valid conf with a pool.
    unsafe { crate::boundary::pool_alloc((*cf).pool, conf) as *mut c_void }
}

pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes a valid conf with a pool; LocConf is plain data.
    unsafe {
        let lc = ngx_pcalloc((*cf).pool, std::mem::size_of::<LocConf>()) as *mut LocConf;
        if !lc.is_null() {
            (*lc).enable = UNSET;
        }
        lc as *mut c_void
    }
}

/// A copy of `bytes` in the configuration pool.
///
/// # Safety
/// `cf` must be a valid configuration context.
unsafe fn conf_str(cf: *mut ngx_conf_t, bytes: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: forwarded contract; the pool returns `len` writable bytes or null.
    unsafe {
        let data = ngx_pnalloc((*cf).pool, bytes.len()) as *mut u8;
        if data.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
        Some(ngx_str_t {
            len: bytes.len(),
            data,
        })
    }
}

pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the two LocConf created by create_loc_conf.
    let (prev, conf) = unsafe { (&*(parent as *const LocConf), &mut *(child as *mut LocConf)) };
    if conf.enable == UNSET {
        conf.enable = if prev.enable == UNSET { 0 } else { prev.enable };
    }
    for (c, p) in [
        (&mut conf.namespace, &prev.namespace),
        (&mut conf.upstream, &prev.upstream),
        (&mut conf.endpoint, &prev.endpoint),
        (&mut conf.model, &prev.model),
    ] {
        if c.cv.is_null() {
            c.cv = p.cv;
        }
        if c.cv.is_null() {
            continue;
        }
        // SAFETY: cv is a compiled complex value in the conf pool; its value is the source.
        let source = unsafe { (*c.cv).value.as_bytes() };
        if let Some(name) = header_variable(source) {
            let dashed: Vec<u8> = name
                .iter()
                .map(|&b| if b == b'_' { b'-' } else { b })
                .collect();
            // SAFETY: cf is valid; the copies live as long as the conf pool.
            unsafe {
                let (Some(var), Some(dash)) = (conf_str(cf, &name), conf_str(cf, &dashed)) else {
                    return ngx::core::NGX_CONF_ERROR;
                };
                c.header = HeaderName {
                    var,
                    dashed: dash,
                    hash: dashed.iter().fold(0 as ngx_uint_t, |a, &b| {
                        a.wrapping_mul(31).wrapping_add(b.into())
                    }),
                    words: edge_words(&dashed),
                };
            }
        }
    }
    ptr::null_mut()
}

/// The module's main conf while parsing.
///
/// # Safety
/// `cf` must be inside the http block.
pub unsafe fn main_conf_of<'a>(cf: *mut ngx_conf_t) -> &'a mut MainConf {
    // SAFETY: in the http block cf->ctx is an ngx_http_conf_ctx_t.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(crate::boundary::module().ctx_index) as *mut MainConf)
    }
}

/// The current cycle's main conf (works without a request: timers, init_worker).
pub(crate) fn cycle_main_conf<'a>() -> Option<&'a MainConf> {
    // SAFETY: ngx_cycle is the live cycle of this worker; its http conf ctx (if any) holds the
    // main confs of all http modules.
    unsafe {
        let cycle = ptr::read_volatile(ptr::addr_of!(ngx_cycle));
        if cycle.is_null() || (*cycle).conf_ctx.is_null() {
            return None;
        }
        let http = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        if http.is_null() {
            return None;
        }
        let mc = *(*http).main_conf.add(crate::boundary::module().ctx_index) as *const MainConf;
        mc.as_ref()
    }
}
