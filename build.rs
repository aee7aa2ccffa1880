//! Detects nginx build options the module's code depends on.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gm_stat_stub)");
    // nginx-sys exports the nginx build's features (threads, http_cache, ...); mirror them as
    // `ngx_feature = "..."` cfgs for this crate too.
    let check = env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "\"threads\"".into());
    println!("cargo::rustc-check-cfg=cfg(ngx_feature, values({check}))");
    for f in env::var("DEP_NGINX_FEATURES")
        .unwrap_or_default()
        .split(',')
    {
        if !f.is_empty() {
            println!("cargo::rustc-cfg=ngx_feature=\"{f}\"");
        }
    }
    // Before 1.23, nginx keeps the upstream's `Content-Encoding` header in a field of its own
    // (with gzip built in): read there instead of searching the upstream's header list.
    println!("cargo::rustc-check-cfg=cfg(gm_upstream_content_encoding)");
    let version = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let gzip = env::var("DEP_NGINX_FEATURES")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == "http_gzip");
    if gzip && version.is_some_and(|v| v < 1_023_000) {
        println!("cargo::rustc-cfg=gm_upstream_content_encoding");
    }
    // nginx-sys tells its direct dependents where the configured nginx build directory is.
    let Some(dir) = env::var_os("DEP_NGINX_BUILD_DIR") else {
        return;
    };
    let config = PathBuf::from(dir).join("ngx_auto_config.h");
    println!("cargo::rerun-if-changed={}", config.display());
    if let Ok(text) = fs::read_to_string(&config) {
        // stub_status counters (ngx_stat_*) exist only when nginx was built with it.
        if text.contains("#define NGX_STAT_STUB") {
            println!("cargo::rustc-cfg=gm_stat_stub");
        }
    }
}
