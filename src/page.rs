//! What the `/metrics` page is: its response header fields and what the renderer needs from
//! the configuration, the zone and nginx's own counters.

use std::ptr;
use std::sync::Mutex;

use gateway_metrics_core::expo::CONTENT_TYPE;
use gateway_metrics_core::render::{NginxStats, RenderCache, RenderSpec};
use nginx_sys::*;

use crate::conf::MainConf;
use crate::zone::{pid_alive, ZoneCtx};

/// Sets the status and header fields of the page; `length`: the Content-Length, if known.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn set_headers(r: *mut ngx_http_request_t, length: Option<usize>) {
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

/// What the renderer needs, from the configuration and the zone.
pub fn page_spec<'a>(mc: &'a MainConf, zone: &'a ZoneCtx) -> RenderSpec<'a> {
    RenderSpec {
        views: mc.views,
        ..RenderSpec::new(
            &zone.name,
            mc.max_series,
            &mc.bounds,
            &zone.layouts,
            &zone.custom,
        )
        .with(nginx_stats(), pid_alive)
    }
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

/// The most process memory a worker keeps for its render cache between scrapes (~1.5 KiB per
/// stored request series with the default families): a bigger one is dropped after the scrape
/// and the next one starts over.
const MAX_CACHE_BYTES: usize = 128 << 20;

/// This worker's render cache between scrapes (plain process memory: each worker has its
/// own). A scrape takes it and gives it back when it ends; a second scrape at the same time
/// renders without one.
static CACHE: Mutex<Option<RenderCache>> = Mutex::new(None);

/// The worker's render cache (empty if another scrape holds it, or none was kept).
pub fn take_cache() -> RenderCache {
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

/// Gives the render cache back for the next scrape (dropped if over MAX_CACHE_BYTES).
pub fn keep_cache(cache: RenderCache) {
    if cache.bytes() <= MAX_CACHE_BYTES {
        *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some(cache);
    }
}
