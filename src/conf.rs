//! Configuration as data: the module's main and location confs (created and merged here, filled
//! by the directives in directives.rs) and how code without a request finds the running one.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::ptr;

use gateway_metrics_core::buckets::Histograms;
use gateway_metrics_core::catalogue::Views;
use gateway_metrics_core::config::Price;
use gateway_metrics_core::labels::{
    arg_variable, edge_words, header_variable, single_variable, ArgName,
};
use gateway_metrics_core::render::CustomFamily;
use gateway_metrics_core::usage::Format;
use nginx_sys::*;
use ngx::http::{HttpModuleConfExt, HttpModuleLocationConf, HttpModuleMainConf};

use crate::boundary::{conf_copy, Module};
use crate::zone::ZoneCtx;

// SAFETY: create_main_conf/create_loc_conf below make the confs nginx stores for this module:
// a MainConf and a LocConf.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

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
    /// Some location reads responses' usage (`gateway_metrics_usage`).
    pub reads_usage: bool,
    /// A module that can change a request's headers after its access phases is loaded
    /// (lua-nginx-module: `ngx.req.set_header` in content, filter or log code). Without one, a
    /// label read from a request header when the request enters its content phase is still
    /// the header's value at its log phase (see `request::SeenHeader`).
    pub late_header_writers: bool,
    /// The families `/metrics` shows (`gateway_metrics_views`), and whether it was given.
    pub views: Views,
    pub views_set: bool,
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
    /// `gateway_metrics_exemplars`: the W3C `traceparent` whose ids become the request's
    /// exemplars (not set: no exemplars).
    pub exemplars: LabelSource,
    /// Exemplars are on here: `exemplars` is set, and not to the literal `off`.
    pub exemplars_on: bool,
    /// The namespace and the model are both `$arg_*` variables that
    /// [`ArgName`] holds, read together, in one walk of the query string, and nothing else
    /// here reads them (no exemplars, no usage reading): the log phase's checks for those are
    /// made once, here.
    pub ns_model_args: bool,
    /// `gateway_metrics_usage`: [`USAGE_OFF`], [`UNSET`] or a [`UsageSetting`] as a number.
    pub usage: ngx_int_t,
}

/// `gateway_metrics_usage off` (the default).
pub const USAGE_OFF: ngx_int_t = 0;

/// Which provider format `gateway_metrics_usage` reads (its values other than `off`).
pub const USAGE_SETTINGS: [(&[u8], Format); 4] = [
    (b"auto", Format::Auto),
    (b"openai", Format::OpenAi),
    (b"anthropic", Format::Anthropic),
    (b"gemini", Format::Gemini),
];

impl LocConf {
    /// The format the location reads responses' usage in, if it does.
    pub fn usage_format(&self) -> Option<Format> {
        let i = usize::try_from(self.usage).ok()?.checked_sub(1)?;
        USAGE_SETTINGS.get(i).map(|s| s.1)
    }
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
    /// 1 + the variable's index when the value is exactly one other variable (read as an
    /// indexed variable: no script); 0 otherwise.
    pub variable: ngx_uint_t,
    /// The argument, lowercased, when the value is exactly one `$arg_*` variable: read from
    /// the query string directly (as nginx reads it, without its variable machinery); empty
    /// otherwise.
    pub arg: ngx_str_t,
    /// `arg` as the hot path compares it, when it can (names of up to 15 bytes).
    pub arg_name: ArgName,
}

impl LabelSource {
    pub fn is_set(&self) -> bool {
        !self.cv.is_null()
    }

    /// Is it read from the query string by its [`ArgName`] (see `request::label`)?
    fn reads_arg_name(&self) -> bool {
        self.header.var.len == 0 && self.arg_name.is_set()
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
        reads_usage: false,
        late_header_writers: false,
        views: Views::default(),
        views_set: false,
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
            (*lc).usage = UNSET;
        }
        lc as *mut c_void
    }
}

pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the conf being parsed and the two LocConf made by create_loc_conf.
    let (cf, prev, conf) = unsafe {
        (
            &*cf,
            &*(parent as *const LocConf),
            &mut *(child as *mut LocConf),
        )
    };
    match conf.merge(cf, prev) {
        Some(()) => ptr::null_mut(),
        None => ngx::core::NGX_CONF_ERROR,
    }
}

impl LocConf {
    /// Takes what this level does not set from the level above; `None` when out of memory.
    fn merge(&mut self, cf: &ngx_conf_t, prev: &LocConf) -> Option<()> {
        if self.enable == UNSET {
            self.enable = if prev.enable == UNSET { 0 } else { prev.enable };
        }
        if self.usage == UNSET {
            self.usage = if prev.usage == UNSET {
                USAGE_OFF
            } else {
                prev.usage
            };
        }
        for (c, p) in [
            (&mut self.namespace, &prev.namespace),
            (&mut self.upstream, &prev.upstream),
            (&mut self.endpoint, &prev.endpoint),
            (&mut self.model, &prev.model),
            (&mut self.exemplars, &prev.exemplars),
        ] {
            if c.cv.is_null() {
                c.cv = p.cv;
            }
            c.header = HeaderName::of(cf, c.cv)?;
            c.arg = arg_of(cf, c.cv)?;
            c.arg_name = ArgName::new(c.arg.as_bytes()).unwrap_or_default();
            c.variable = if c.arg.len == 0 {
                variable_of(cf, c.cv, &c.header)
            } else {
                0
            };
        }
        // `gateway_metrics_exemplars off` switches off what an outer level set.
        // SAFETY: a set cv is a compiled complex value in the conf pool.
        self.exemplars_on = unsafe { self.exemplars.cv.as_ref() }
            .is_some_and(|cv| !(cv.lengths.is_null() && cv.value.as_bytes() == b"off"));
        // (Exemplars and usage reading have their own ways of reading the labels.)
        self.ns_model_args = self.namespace.reads_arg_name()
            && self.model.reads_arg_name()
            && !self.exemplars_on
            && self.usage == USAGE_OFF;
        Some(())
    }
}

/// The query argument a complex value is exactly (`$arg_ns`: `ns`), copied into the conf pool;
/// empty otherwise. `None`: out of memory.
fn arg_of(cf: &ngx_conf_t, cv: *const ngx_http_complex_value_t) -> Option<ngx_str_t> {
    // SAFETY: a set cv is a compiled complex value in the conf pool.
    let Some(cv) = (unsafe { cv.as_ref() }) else {
        return Some(ngx_str_t::empty());
    };
    match arg_variable(cv.value.as_bytes()) {
        Some(name) => conf_copy(cf, &name),
        None => Some(ngx_str_t::empty()),
    }
}

/// 1 + the index of the one variable a complex value is, unless it is a header read directly;
/// 0 otherwise.
fn variable_of(
    cf: &ngx_conf_t,
    cv: *const ngx_http_complex_value_t,
    header: &HeaderName,
) -> ngx_uint_t {
    // SAFETY: a set cv is a compiled complex value in the conf pool.
    let Some(cv) = (unsafe { cv.as_ref() }) else {
        return 0;
    };
    if header.var.len != 0 {
        return 0;
    }
    let Some(name) = single_variable(cv.value.as_bytes()) else {
        return 0;
    };
    let mut name = ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: cf is the conf being merged (its ctx is the http block's); nginx copies the name.
    // The variable exists: compiling the complex value looked it up.
    let index = unsafe { ngx_http_get_variable_index(cf as *const _ as *mut _, &mut name) };
    usize::try_from(index).map_or(0, |i| i + 1)
}

impl HeaderName {
    /// The header a label reads directly when its value is exactly one `$http_*` variable;
    /// empty names otherwise.
    fn of(cf: &ngx_conf_t, cv: *const ngx_http_complex_value_t) -> Option<HeaderName> {
        // SAFETY: a set cv is a compiled complex value in the conf pool.
        let source = match unsafe { cv.as_ref() } {
            Some(cv) => cv.value.as_bytes(),
            None => return Some(HeaderName::NONE),
        };
        let Some(name) = header_variable(source) else {
            return Some(HeaderName::NONE);
        };
        let mut dashed: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        // SAFETY: ngx_hash_key only reads `len` bytes.
        let hash = unsafe { ngx_hash_key(dashed.as_mut_ptr(), dashed.len()) };
        Some(HeaderName {
            var: conf_copy(cf, &name)?,
            dashed: conf_copy(cf, &dashed)?,
            hash,
            words: edge_words(&dashed),
        })
    }

    const NONE: HeaderName = HeaderName {
        var: ngx_str_t::empty(),
        dashed: ngx_str_t::empty(),
        hash: 0,
        words: [0; 2],
    };
}

/// The current cycle's main conf (works without a request: timers, init_worker, Lua).
pub(crate) fn cycle_main_conf() -> Option<&'static MainConf> {
    // SAFETY: ngx_cycle is the live cycle of this worker (or of the master while it starts one).
    let cycle = unsafe { ptr::read_volatile(ptr::addr_of!(ngx_cycle)).as_ref()? };
    if cycle.conf_ctx.is_null() {
        return None;
    }
    Module::main_conf(cycle)
}

/// The main conf of the http block being parsed.
pub(crate) fn parsing_main_conf(cf: &ngx_conf_t) -> Option<&'static mut MainConf> {
    Module::main_conf_mut(cf)
}

/// The location conf `r` runs with.
pub(crate) fn loc_conf(r: &impl HttpModuleConfExt) -> Option<&'static LocConf> {
    Module::location_conf(r)
}

/// The main conf `r` runs with.
pub(crate) fn main_conf(r: &impl HttpModuleConfExt) -> Option<&'static MainConf> {
    Module::main_conf(r)
}
