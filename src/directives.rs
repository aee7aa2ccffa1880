//! The directives: each handler converts nginx's pointers in its first lines, then runs safe
//! code that checks the arguments and fills the confs (conf.rs); errors are logged in nginx's
//! wording, naming the directive.

use std::ffi::{c_char, c_void};
use std::ptr;

use gateway_metrics_core::buckets::{parse_bounds, Histogram};
use gateway_metrics_core::config::Price;
use gateway_metrics_core::render::{CustomFamily, CustomKind};
use nginx_sys::*;

use crate::conf::*;
use crate::error::ConfError;
use crate::zone;

/// Turns a directive handler's result into nginx's convention, logging errors with the
/// directive's name.
fn conf_result(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    r: Result<(), ConfError>,
) -> *mut c_char {
    match r {
        Ok(()) => ptr::null_mut(),
        // nginx's own wording, as for its own directives: it logs
        // `"<directive>" directive <returned string>`.
        Err(ConfError::Duplicate) => c"is duplicate".as_ptr() as *mut c_char,
        Err(e) => {
            // SAFETY: nginx passes the command being parsed.
            let name = unsafe { (*cmd).name.as_bytes() };
            let name = String::from_utf8_lossy(name);
            ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{e} in \"{name}\" directive");
            ngx::core::NGX_CONF_ERROR
        }
    }
}

/// The directive's arguments after its name.
///
/// # Safety
/// `cf` must be the conf being parsed.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a [u8]> {
    // SAFETY: cf->args is an array of ngx_str_t, element 0 being the directive name.
    unsafe {
        let a = &*(*cf).args;
        let elts = std::slice::from_raw_parts(a.elts as *const ngx_str_t, a.nelts);
        elts[1..].iter().map(|s| s.as_bytes()).collect()
    }
}

fn text(b: &[u8]) -> Result<&str, ConfError> {
    std::str::from_utf8(b).map_err(|_| ConfError::msg("argument is not valid UTF-8"))
}

/// The common frame of the main-conf directives: converts nginx's pointers, then runs the
/// safe `f` with the conf and the arguments.
///
/// # Safety
/// `cf`, `cmd` and `conf` must be what nginx passes to a main-conf directive handler.
unsafe fn main_directive(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
    f: impl FnOnce(&mut MainConf, &[&[u8]]) -> Result<(), ConfError>,
) -> *mut c_char {
    // SAFETY: per the function contract, conf is this module's main conf.
    let (mc, a) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
    conf_result(cf, cmd, f(mc, &a))
}

/// An `extern "C"` handler of a main-conf directive: converts nginx's pointers, then runs the
/// safe `$f(main conf, arguments)` (see [`main_directive`]).
macro_rules! main_directive_handler {
    ($name:ident, $f:expr) => {
        pub unsafe extern "C" fn $name(
            cf: *mut ngx_conf_t,
            cmd: *mut ngx_command_t,
            conf: *mut c_void,
        ) -> *mut c_char {
            // SAFETY: nginx calls this for the main conf of the http block.
            unsafe { main_directive(cf, cmd, conf, $f) }
        }
    };
}

pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx for this module's main conf while parsing.
    let (mc, a) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
    let r = zone_directive(cf, mc, &a);
    conf_result(cf, cmd, r)
}

fn zone_directive(cf: *mut ngx_conf_t, mc: &mut MainConf, a: &[&[u8]]) -> Result<(), ConfError> {
    if !mc.zone.is_null() {
        return Err(ConfError::Duplicate);
    }
    let name = a[0];
    if name.is_empty()
        || !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return Err(ConfError::invalid(
            "zone name",
            String::from_utf8_lossy(name),
        ));
    }
    let size = parse_size(a[1])
        .filter(|&s| (MIN_ZONE_SIZE..=MAX_ZONE_SIZE).contains(&s))
        .ok_or_else(|| {
            ConfError::invalid("zone size (128k to 16g)", String::from_utf8_lossy(a[1]))
        })?;
    // SAFETY: cf is the conf being parsed; mc lives in its pool for the whole cycle.
    mc.zone = unsafe { zone::add_zone(cf, name, size)? };
    Ok(())
}

/// Parses an nginx size (`32m`, `512k`, `1048576`).
pub fn parse_size(b: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(b).ok()?;
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        b'g' | b'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    num.parse::<usize>().ok()?.checked_mul(mul)
}

pub unsafe extern "C" fn set_enable(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx for this module's loc conf while parsing the http block.
    let (lc, a, mc) = unsafe { (&mut *(conf as *mut LocConf), args(cf), main_conf_of(cf)) };
    let r = (|| {
        if lc.enable != UNSET {
            return Err(ConfError::Duplicate);
        }
        lc.enable = match a[0] {
            b"on" => 1,
            b"off" => 0,
            v => {
                return Err(ConfError::invalid(
                    "value, must be \"on\" or \"off\"",
                    String::from_utf8_lossy(v),
                ))
            }
        };
        if lc.enable == 1 {
            mc.used = true;
        }
        Ok(())
    })();
    conf_result(cf, cmd, r)
}

main_directive_handler!(set_duration_buckets, |mc, a| buckets(
    mc,
    a,
    Histogram::Duration
));

main_directive_handler!(set_ttft_buckets, |mc, a| buckets(mc, a, Histogram::Ttft));

main_directive_handler!(set_throughput_buckets, |mc, a| buckets(
    mc,
    a,
    Histogram::Throughput
));

fn buckets(mc: &mut MainConf, a: &[&[u8]], which: Histogram) -> Result<(), ConfError> {
    if std::mem::replace(mc.bounds_set.get_mut(which), true) {
        return Err(ConfError::Duplicate);
    }
    let strs = a.iter().map(|b| text(b)).collect::<Result<Vec<_>, _>>()?;
    *mc.bounds.get_mut(which) = parse_bounds(strs)?;
    Ok(())
}

main_directive_handler!(set_max_series, max_series_directive);

fn max_series_directive(mc: &mut MainConf, a: &[&[u8]]) -> Result<(), ConfError> {
    if mc.max_series_set {
        return Err(ConfError::Duplicate);
    }
    let v = text(a[0])?;
    // Digits only: Rust's parser also takes a leading `+`.
    mc.max_series = Some(v)
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| (1..=1 << 32).contains(&n))
        .ok_or_else(|| ConfError::invalid("number of series (1..4294967296)", v))?;
    mc.max_series_set = true;
    Ok(())
}

pub unsafe extern "C" fn set_exporter(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: in a location block cf->ctx is an ngx_http_conf_ctx_t whose loc_conf holds the
    // core module's location conf.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let clcf =
            *(*ctx).loc_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_loc_conf_t;
        (*clcf).handler = Some(crate::exporter::exporter_handler);
        let mc = main_conf_of(cf);
        mc.used = true;
        mc.exporter = true;
    }
    conf_result(cf, cmd, Ok(()))
}

main_directive_handler!(set_render_pool, render_pool_directive);

fn render_pool_directive(mc: &mut MainConf, a: &[&[u8]]) -> Result<(), ConfError> {
    if mc.render_mode != RenderMode::Default {
        return Err(ConfError::Duplicate);
    }
    if a[0].is_empty() {
        return Err(ConfError::msg("empty thread pool name"));
    }
    if a[0] == b"off" {
        mc.render_mode = RenderMode::Slices;
        return Ok(());
    }
    if cfg!(not(ngx_feature = "threads")) {
        return Err(ConfError::msg(
            "nginx was built without thread pools (--with-threads)",
        ));
    }
    mc.render_mode = RenderMode::ThreadPool(a[0].to_vec());
    Ok(())
}

main_directive_handler!(set_price, price_directive);

fn price_directive(mc: &mut MainConf, a: &[&[u8]]) -> Result<(), ConfError> {
    let model = a[0];
    if model.is_empty() {
        return Err(ConfError::msg("empty model name"));
    }
    if mc.prices.contains_key(model) {
        return Err(ConfError::invalid(
            "duplicate price for model",
            String::from_utf8_lossy(model),
        ));
    }
    let args = a[1..]
        .iter()
        .map(|b| text(b))
        .collect::<Result<Vec<_>, _>>()?;
    let p = Price::parse(&args)?;
    mc.prices.insert(model.to_vec(), p);
    Ok(())
}

main_directive_handler!(set_counter, |mc, a| custom_directive(
    mc,
    CustomKind::Counter,
    a
));

main_directive_handler!(set_gauge, |mc, a| custom_directive(
    mc,
    CustomKind::Gauge,
    a
));

main_directive_handler!(set_histogram, |mc, a| custom_directive(
    mc,
    CustomKind::Histogram,
    a
));

fn custom_directive(mc: &mut MainConf, kind: CustomKind, a: &[&[u8]]) -> Result<(), ConfError> {
    let args = a.iter().map(|b| text(b)).collect::<Result<Vec<_>, _>>()?;
    let family = CustomFamily::declare(kind, &args, &mc.custom)?;
    mc.custom.push(family);
    Ok(())
}
