"""Section 5, ffi: ns per call from LuaJIT, gm.add_tokens vs ngx.shared.DICT:incr (scripts/bench_ffi.lua)."""

import gmharness as gm

from .common import bench_nginx, gm_http, head, median, ratio, say

FFI_HTTP_EXTRA = """    lua_shared_dict gm_bench_ffi 1m;
    gateway_metrics_counter bench_ffi_calls_total "FFI bench counter" tool;
"""
FFI_LOC = """
        location = /ffi {
            gateway_metrics off;
            content_by_lua_block { require("bench_ffi").run() }
        }
"""


def run(ctx):
    head("5. FFI call cost from LuaJIT (tight loop in content_by_lua)")
    if not gm.HAVE_LUA:
        say("  skipped: lua-nginx-module not available")
        return {"skipped": True}
    p = ctx.p
    srv = bench_nginx(gm_http(http_extra=FFI_HTTP_EXTRA, extra=FFI_LOC), module=ctx.module, lua=True,
                      workers=1, name="ffi", workdir=ctx.work)
    try:
        srv.start()
        c = gm.Conn(srv.port)
        st, body, _ = c.request(gm.request_bytes(f"/ffi?n={p['ffi_n']}&reps={p['ffi_reps']}"))
        c.close()
    finally:
        srv.cleanup()
    text = body.decode(errors="replace")
    if st != 200:
        raise RuntimeError(f"/ffi returned {st}: {text[:500]}")
    per = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] != "check":
            per.setdefault(parts[0], []).append(float(parts[2]))
    if "check add_tokens true" not in text:
        raise RuntimeError(f"gm.add_tokens failed in the FFI bench: {text[-300:]}")
    res = {"n": p["ffi_n"], "reps": p["ffi_reps"], "ns_per_call": {k: median(v) for k, v in per.items()},
           "runs": per}
    say(f"  {p['ffi_n']:,} calls per loop, {p['ffi_reps']} alternating repetitions, median:")
    for k, v in res["ns_per_call"].items():
        say(f"  {k:14s} {v:8.1f} ns/call")
    a, i = res["ns_per_call"]["gm.add_tokens"], res["ns_per_call"]["shdict:incr"]
    res["ratio_add_tokens_vs_incr"] = ratio(a, i)
    res["target_50ns_met"] = a < 50
    say(f"  -> gm.add_tokens / shdict:incr = {res['ratio_add_tokens_vs_incr']:.2f} "
        f"(target: gm.add_tokens < 50 ns: {'met' if res['target_50ns_met'] else 'NOT met'})")
    return res
