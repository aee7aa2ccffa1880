//! The boundary with nginx that every other file builds on: the module as the `ngx` crate's
//! [`HttpModule`] (whose typed accessors find its confs), the module object's tag, directive
//! arguments and values kept in nginx pools. Imports nothing of this crate but the module object.

use std::ffi::c_void;
use std::ptr;

use nginx_sys::*;
use ngx::http::HttpModule;

/// This module, for the `ngx` crate's conf accessors: `Module::main_conf(cf)`,
/// `Module::location_conf(r)` (conf.rs says which types they are).
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        module()
    }
}

/// The module object, for `ctx_index` lookups.
pub fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indexes once while loading it, before any handler runs.
    unsafe { &*ptr::addr_of!(crate::ngx_http_gateway_metrics_module) }
}

/// The module object's address, as nginx's tags want it (shm zones, buffers).
pub fn module_tag() -> *mut c_void {
    ptr::addr_of_mut!(crate::ngx_http_gateway_metrics_module) as *mut c_void
}

/// Allocates `value` in `pool` and registers its destructor there.
///
/// # Safety
/// `pool` must be a valid nginx pool.
pub unsafe fn pool_alloc<T>(pool: *mut ngx_pool_t, value: T) -> *mut T {
    // (Not the ngx crate's allocator: it does not check the cleanup for null.)
    // SAFETY: ngx_pcalloc returns memory aligned for any type or null; the cleanup runs once,
    // when the pool is destroyed.
    unsafe {
        let cln = ngx_pool_cleanup_add(pool, 0);
        if cln.is_null() {
            return ptr::null_mut();
        }
        let p = ngx_pcalloc(pool, std::mem::size_of::<T>()) as *mut T;
        if p.is_null() {
            return ptr::null_mut();
        }
        ptr::write(p, value);
        (*cln).handler = Some(drop_in_pool::<T>);
        (*cln).data = p as *mut c_void;
        p
    }
}

unsafe extern "C" fn drop_in_pool<T>(data: *mut c_void) {
    // SAFETY: `data` is the value written by pool_alloc, dropped exactly once here.
    unsafe { ptr::drop_in_place(data as *mut T) };
}

/// The arguments of the directive being parsed, after its name.
pub fn directive_args(cf: &ngx_conf_t) -> Vec<&[u8]> {
    // SAFETY: while a directive is parsed, cf->args is an array of ngx_str_t whose element 0 is
    // the directive's name; the strings live in the configuration pool.
    let all: &[ngx_str_t] = unsafe { (*cf.args).as_slice() };
    all.iter().skip(1).map(|s| s.as_bytes()).collect()
}

/// A copy of `bytes` in the configuration pool (for names nginx keeps a pointer to).
pub fn conf_copy(cf: &ngx_conf_t, bytes: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: cf->pool is the configuration's pool, alive for the whole cycle.
    unsafe { ngx_str_t::from_bytes(cf.pool, bytes) }
}

/// Is a module of this name in the cycle being configured (built in, or added by
/// `load_module` before the `http` block)?
pub fn module_loaded(cf: &ngx_conf_t, name: &std::ffi::CStr) -> bool {
    // SAFETY: the cycle's module list (`modules_n` entries, null-terminated) is set before the
    // configuration is parsed; each module's name is a static C string (or null).
    unsafe {
        let Some(cycle) = cf.cycle.as_ref() else {
            return false;
        };
        if cycle.modules.is_null() {
            return false;
        }
        std::slice::from_raw_parts(cycle.modules, cycle.modules_n)
            .iter()
            .filter_map(|m| m.as_ref())
            .any(|m| !m.name.is_null() && std::ffi::CStr::from_ptr(m.name) == name)
    }
}
