//! `ngx_http_gateway_metrics_module`: Prometheus metrics for an AI/LLM gateway, kept in an
//! nginx shared-memory zone shared by all workers.
//!
//! This crate is glue: configuration directives, the shm zone, the phase handlers, the
//! `/metrics` content handler and the C-ABI functions Lua calls. Everything that can be written
//! without nginx lives in `gateway-metrics-core`.

mod boundary;
mod conf;
mod directives;
mod error;
mod exporter;
mod handlers;
mod lua_api;
mod pacing;
mod page;
mod recording;
mod render_pool;
mod request;
mod slicer;
mod zone;

use std::ffi::{c_char, c_void};
use std::mem::offset_of;
use std::ptr;

use nginx_sys::*;

/// `NGX_HTTP_MAIN_CONF_OFFSET` / `NGX_HTTP_LOC_CONF_OFFSET` (C macros bindgen cannot see).
const MAIN_CONF_OFFSET: ngx_uint_t = offset_of!(ngx_http_conf_ctx_t, main_conf) as ngx_uint_t;
const LOC_CONF_OFFSET: ngx_uint_t = offset_of!(ngx_http_conf_ctx_t, loc_conf) as ngx_uint_t;

const HTTP_ANY: ngx_uint_t =
    (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as ngx_uint_t;
const HTTP_MAIN: ngx_uint_t = NGX_HTTP_MAIN_CONF as ngx_uint_t;

const fn cmd(
    name: &'static std::ffi::CStr,
    ty: ngx_uint_t,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    conf: ngx_uint_t,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name: ngx_str_t {
            // nginx compares directive names with strcmp: they must be NUL-terminated.
            len: name.to_bytes().len(),
            data: name.as_ptr() as *mut u8,
        },
        type_: ty,
        set: Some(set),
        conf,
        offset,
        post: ptr::null_mut(),
    }
}

const CV_SLOT: unsafe extern "C" fn(
    *mut ngx_conf_t,
    *mut ngx_command_t,
    *mut c_void,
) -> *mut c_char = ngx_http_set_complex_value_slot;

// The directive table. nginx walks it until the null command.
static mut COMMANDS: [ngx_command_t; 21] = [
    cmd(
        c"gateway_metrics_zone",
        HTTP_MAIN | NGX_CONF_TAKE2 as ngx_uint_t,
        directives::set_zone,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics",
        HTTP_ANY | NGX_CONF_FLAG as ngx_uint_t,
        directives::set_enable,
        LOC_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_namespace",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        CV_SLOT,
        LOC_CONF_OFFSET,
        offset_of!(conf::LocConf, namespace.cv),
    ),
    cmd(
        c"gateway_metrics_upstream",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        CV_SLOT,
        LOC_CONF_OFFSET,
        offset_of!(conf::LocConf, upstream.cv),
    ),
    cmd(
        c"gateway_metrics_endpoint",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        CV_SLOT,
        LOC_CONF_OFFSET,
        offset_of!(conf::LocConf, endpoint.cv),
    ),
    cmd(
        c"gateway_metrics_model",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        CV_SLOT,
        LOC_CONF_OFFSET,
        offset_of!(conf::LocConf, model.cv),
    ),
    cmd(
        c"gateway_metrics_exemplars",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        CV_SLOT,
        LOC_CONF_OFFSET,
        offset_of!(conf::LocConf, exemplars.cv),
    ),
    cmd(
        c"gateway_metrics_buckets",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_duration_buckets,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_ttft_buckets",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_ttft_buckets,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_throughput_buckets",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_throughput_buckets,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_max_series",
        HTTP_MAIN | NGX_CONF_TAKE1 as ngx_uint_t,
        directives::set_max_series,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_exporter",
        (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        directives::set_exporter,
        LOC_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_model_price",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_price,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_counter",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_counter,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_gauge",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_gauge,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_histogram",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_histogram,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_usage",
        HTTP_ANY | NGX_CONF_TAKE1 as ngx_uint_t,
        directives::set_usage,
        LOC_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_tpot_buckets",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_tpot_buckets,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_views",
        HTTP_MAIN | NGX_CONF_1MORE as ngx_uint_t,
        directives::set_views,
        MAIN_CONF_OFFSET,
        0,
    ),
    cmd(
        c"gateway_metrics_render_thread_pool",
        HTTP_MAIN | NGX_CONF_TAKE1 as ngx_uint_t,
        directives::set_render_pool,
        MAIN_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
];

static mut MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(handlers::postconfiguration),
    create_main_conf: Some(conf::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(conf::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

/// The module object nginx loads (`load_module .../ngx_http_gateway_metrics_module.so`).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_gateway_metrics_module: ngx_module_t = ngx_module_t {
    // Only the statics' addresses are taken; nginx reads them after loading the module.
    ctx: ptr::addr_of_mut!(MODULE_CTX) as *mut c_void,
    commands: ptr::addr_of_mut!(COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_module: Some(handlers::init_module),
    init_process: Some(handlers::init_process),
    ..ngx_module_t::default()
};

ngx::ngx_modules!(ngx_http_gateway_metrics_module);
