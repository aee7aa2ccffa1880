//! The directives: each handler converts nginx's pointers in its first lines, then runs safe
//! code that checks the arguments and fills the confs (conf.rs); errors are logged in nginx's
//! wording, naming the directive.

use std::ffi::{c_char, c_void};
use std::ptr;

use gateway_metrics_core::buckets::{parse_bounds, Histogram};
use gateway_metrics_core::catalogue::Views;
use gateway_metrics_core::config::Price;
use gateway_metrics_core::render::{CustomFamily, CustomKind};
use nginx_sys::*;
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::boundary::directive_args;
use crate::conf::*;
use crate::error::ConfError;
use crate::zone;

/// Turns a directive handler's result into nginx's convention, logging errors with the
/// directive's name.
fn conf_result(cf: &ngx_conf_t, cmd: &ngx_command_t, r: Result<(), ConfError>) -> *mut c_char {
    match r {
        Ok(()) => ptr::null_mut(),
        // nginx's own wording, as for its own directives: it logs
        // `"<directive>" directive <returned string>`.
        Err(ConfError::Duplicate) => c"is duplicate".as_ptr() as *mut c_char,
        Err(e) => {
            let name = String::from_utf8_lossy(cmd.name.as_bytes());
            let cf = cf as *const ngx_conf_t as *mut ngx_conf_t;
            ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{e} in \"{name}\" directive");
            ngx::core::NGX_CONF_ERROR
        }
    }
}

fn text(b: &[u8]) -> Result<&str, ConfError> {
    std::str::from_utf8(b).map_err(|_| ConfError::msg("argument is not valid UTF-8"))
}

/// The common frame of the main-conf directives: runs the safe `f` with the conf and the
/// arguments, and reports its result.
fn main_directive(
    cf: &ngx_conf_t,
    cmd: &ngx_command_t,
    mc: &mut MainConf,
    f: impl FnOnce(&mut MainConf, &[&[u8]]) -> Result<(), ConfError>,
) -> *mut c_char {
    conf_result(cf, cmd, f(mc, &directive_args(cf)))
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
            // SAFETY: nginx calls this with the conf being parsed, this command and this
            // module's main conf.
            let (cf, cmd, mc) = unsafe { (&*cf, &*cmd, &mut *(conf as *mut MainConf)) };
            main_directive(cf, cmd, mc, $f)
        }
    };
}

pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx with the conf being parsed, this command and this module's main
    // conf.
    let (cf, cmd, mc) = unsafe { (&mut *cf, &*cmd, &mut *(conf as *mut MainConf)) };
    let r = zone_directive(cf, mc);
    conf_result(cf, cmd, r)
}

fn zone_directive(cf: &mut ngx_conf_t, mc: &mut MainConf) -> Result<(), ConfError> {
    if !mc.zone.is_null() {
        return Err(ConfError::Duplicate);
    }
    let a = directive_args(cf);
    let (name, size) = (a[0], a[1]);
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
    let size = parse_size(size)
        .filter(|&s| (MIN_ZONE_SIZE..=MAX_ZONE_SIZE).contains(&s))
        .ok_or_else(|| {
            ConfError::invalid("zone size (128k to 16g)", String::from_utf8_lossy(size))
        })?;
    let name = name.to_vec();
    mc.zone = zone::add_zone(cf, &name, size)?;
    Ok(())
}

/// An nginx size (`32m`, `512k`, `1048576`, and `2g`): `ngx_parse_offset`, the parser that also
/// takes gigabytes (`ngx_parse_size` stops at megabytes).
fn parse_size(b: &[u8]) -> Option<usize> {
    let mut s = ngx_str_t {
        len: b.len(),
        data: b.as_ptr() as *mut u8,
    };
    // SAFETY: ngx_parse_offset only reads the string's bytes.
    let n = unsafe { ngx_parse_offset(&mut s) };
    usize::try_from(n).ok()
}

pub unsafe extern "C" fn set_enable(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx with the conf being parsed, this command and this module's loc
    // conf, inside the http block.
    let (cf, cmd, lc) = unsafe { (&*cf, &*cmd, &mut *(conf as *mut LocConf)) };
    let a = directive_args(cf);
    let r = (|| {
        let mc = parsing_main_conf(cf).ok_or(ConfError::msg("no http block"))?;
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

pub unsafe extern "C" fn set_usage(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx with the conf being parsed, this command and this module's loc
    // conf.
    let (cf, cmd, lc) = unsafe { (&*cf, &*cmd, &mut *(conf as *mut LocConf)) };
    let r = usage_directive(lc, &directive_args(cf)).and_then(|()| {
        let mc = parsing_main_conf(cf).ok_or(ConfError::msg("no http block"))?;
        mc.reads_usage |= lc.usage != USAGE_OFF;
        Ok(())
    });
    conf_result(cf, cmd, r)
}

fn usage_directive(lc: &mut LocConf, a: &[&[u8]]) -> Result<(), ConfError> {
    if lc.usage != UNSET {
        return Err(ConfError::Duplicate);
    }
    lc.usage = match a[0] {
        b"off" => USAGE_OFF,
        v => match USAGE_SETTINGS.iter().position(|s| s.0 == v) {
            Some(i) => i as ngx_int_t + 1,
            None => {
                return Err(ConfError::invalid(
                    "value, must be \"auto\", \"openai\", \"anthropic\", \"gemini\" or \"off\"",
                    String::from_utf8_lossy(v),
                ))
            }
        },
    };
    Ok(())
}

main_directive_handler!(set_tpot_buckets, |mc, a| buckets(mc, a, Histogram::Tpot));

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
    // SAFETY: called by nginx with the conf being parsed (a location) and this command.
    let (cf, cmd) = unsafe { (&*cf, &*cmd) };
    let r = (|| {
        let clcf = NgxHttpCoreModule::location_conf_mut(cf).ok_or(ConfError::msg("no location"))?;
        // The exporter answers the location's requests itself (its content handler).
        clcf.handler = Some(crate::exporter::exporter_handler);
        let mc = parsing_main_conf(cf).ok_or(ConfError::msg("no http block"))?;
        mc.used = true;
        mc.exporter = true;
        Ok(())
    })();
    conf_result(cf, cmd, r)
}

main_directive_handler!(set_views, views_directive);

fn views_directive(mc: &mut MainConf, a: &[&[u8]]) -> Result<(), ConfError> {
    if std::mem::replace(&mut mc.views_set, true) {
        return Err(ConfError::Duplicate);
    }
    let args = a.iter().map(|b| text(b)).collect::<Result<Vec<_>, _>>()?;
    mc.views = Views::parse(&args)?;
    Ok(())
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
