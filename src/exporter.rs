//! The `/metrics` content handler (`gateway_metrics_exporter`).
//!
//! By default the page is rendered on the worker's event loop in short slices (slicer.rs):
//! the response header goes out at once (no Content-Length: chunked for HTTP/1.1, connection
//! close for HTTP/1.0), then each slice renders at most ~100 µs or 256 KiB of the page with
//! core's `Render` and hands it to the output filters, and the loop serves other events before the
//! next one. With `gateway_metrics_render_thread_pool NAME` the whole page is rendered in a
//! thread of that pool instead and sent in one piece.

use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::*;

use crate::conf::main_conf;
use crate::error::HandlerError;
use crate::page::requested_format;
#[cfg(ngx_feature = "threads")]
use crate::render_pool::render_in_pool;
use crate::request::Target;
use crate::slicer::start_slices;

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
        let t: Target<'static> = main_conf(&*r)
            .and_then(Target::of)
            .ok_or(HandlerError::ZoneUnavailable)?;
        // The format the scraper asks for: OpenMetrics (Prometheus' default) or the text format.
        let format = requested_format(&*r);
        #[cfg(ngx_feature = "threads")]
        if let Some(rc) = render_in_pool(r, &t, format) {
            return Ok(rc);
        }
        start_slices(r, &t, format)
    }
}
