"""Section 4, memory: zone bytes per series and the series that fit, filling the zone through
nginx until it drops new series."""

import subprocess
import time

import gmharness as gm

from .common import ROOT, bench_nginx, fill_namespaces, gm_http, head, say

MEM_COUNTER_FILL = """
    gateway_metrics_counter bench_requests_total "Memory bench counter" method endpoint status_code namespace upstream;
"""
MEM_COUNTER_LOC = """
        location = /fill {
            gateway_metrics off;
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local a = tonumber(ngx.var.arg_from)
                local b = tonumber(ngx.var.arg_to)
                local labels = { "POST", "/v1/chat01", "200", "", "upstream01" }
                for i = a, b - 1 do
                    labels[4] = string.format("t%09d", i)
                    gm.inc("bench_requests_total", labels, 1)
                end
                ngx.say("ok")
            }
        }
"""


def zone_figures(body):
    z = {}
    for k in ("zone_size_bytes", "zone_used_bytes", "series", "overflow_series"):
        z[k] = gm.sample_value(body, "gateway_metrics_" + k, float("nan"))
    z["dropped"] = {lbl: v for lbl, v in gm.samples_named(body, "gateway_metrics_dropped_updates_total")}
    return z


def dropping(srv):
    return "is dropping new series" in srv.error_log()


def mem_fill(ctx, kind):
    p = ctx.p
    zone = p["mem_zone"]
    lua = kind == "counter"
    if lua and not gm.HAVE_LUA:
        return None
    if kind == "histogram":
        http = gm_http(zone=zone, http_extra="    gateway_metrics_endpoint /v1/chat01;\n"
                                             "    gateway_metrics_upstream upstream01;\n")
    else:
        http = gm_http(zone=zone, http_extra=MEM_COUNTER_FILL, extra=MEM_COUNTER_LOC)
    srv = bench_nginx(http, module=ctx.module, lua=lua, workers=1, name="mem", workdir=ctx.work)
    try:
        srv.start()
        z0 = zone_figures(gm.scrape_timed(srv.port)["body"])
        n = 0
        t0 = time.time()
        while n < p["mem_limit"] and not dropping(srv):
            m = n + p["mem_chunk"]
            if kind == "histogram":
                fill_namespaces(srv.port, n, m, conns=2, method="POST")
            else:
                c = gm.Conn(srv.port)
                st, _, _ = c.request(gm.request_bytes(f"/fill?from={n}&to={m}"))
                c.close()
                if st != 200:
                    raise RuntimeError(f"/fill returned {st}")
            n = m
        fill_s = time.time() - t0
        page = gm.scrape_timed(srv.port, keep_tail=1 << 20)
        z1 = zone_figures(page["body"])
    finally:
        srv.cleanup()
    full = any(v > 0 for v in z1["dropped"].values())
    series = z1["series"]
    size = z1["zone_size_bytes"]
    r = {
        "kind": kind, "zone": zone, "attempted": n, "fit": series, "full": bool(full),
        "zone_size_bytes": size, "used_bytes_empty": z0["zone_used_bytes"],
        "used_bytes_full": z1["zone_used_bytes"], "dropped": z1["dropped"],
        "heap_bytes_per_series": (z1["zone_used_bytes"] - z0["zone_used_bytes"]) / series
        if series else float("nan"),
        "zone_bytes_per_series": size / series if series else float("nan"),
        "fill_s": fill_s, "page_bytes": page["bytes"], "page_samples": page["samples"],
    }
    return r


def run(ctx):
    head(f"4. memory: zone bytes per series, series that fit in a {ctx.p['mem_zone']} zone")
    say("labels: method=POST endpoint=/v1/chat01 status_code=200 namespace=t%09d "
        "upstream=upstream01 (5 labels, ~10 bytes each); filled through nginx until the zone "
        "drops new series")
    res = {"through_nginx": {}}
    for kind, what in (("histogram", "request histogram series (14 buckets), via HTTP requests"),
                       ("counter", "declared counter series (same 5 labels), via gm.inc")):
        r = mem_fill(ctx, kind)
        if r is None:
            continue
        res["through_nginx"][kind] = r
        say(f"  {kind:9s}: {r['fit']:,.0f} series fit ({'zone full' if r['full'] else 'NOT full: limit of the run'}); "
            f"{r['heap_bytes_per_series']:.0f} heap bytes/series, "
            f"{r['zone_bytes_per_series']:.0f} zone bytes/series (zone size / series, index "
            f"and overflow reserve included) [{what}]")
    h = res["through_nginx"].get("histogram")
    if h and ctx.p["mem_zone"] == "32m":
        res["target_150k_met"] = h["fit"] >= 150_000
        say(f"  -> {h['fit']:,.0f} histogram series in 32 MiB (target >= 150,000: "
            f"{'met' if res['target_150k_met'] else 'NOT met'})")
    if ctx.p["mem_crosscheck"]:
        say("  cross-check, pure Rust store (core/examples/bench_store.rs --quick):")
        try:
            r = subprocess.run(["cargo", "run", "-q", "--release", "-p", "gateway-metrics-core",
                                "--example", "bench_store", "--", "--quick"], cwd=ROOT,
                               capture_output=True, text=True, timeout=1200)
            lines = [l for l in r.stdout.splitlines() if "fit_in_32MiB" in l]
            res["bench_store"] = lines
            for l in lines:
                say(f"    {l}")
            if r.returncode != 0:
                say(f"    (bench_store failed: {r.stderr[-500:]})")
        except Exception as e:
            say(f"    (bench_store unavailable: {e})")
    return res
