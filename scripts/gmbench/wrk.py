"""Section 2, wrk: throughput with and without the module (alternating runs, medians)."""

import os

import gmharness as gm

from .common import (LUA_WAY, LUA_WAY_DICT, NAMESPACES, REQ_PATH, base_http, bench_nginx, fmt_t,
                     gm_http, head, median, paired_ratio, ratio, say, wrk_arms, wrk_script)


def run(ctx):
    head("2. throughput: wrk, worker_processes 1")
    p = ctx.p
    script = wrk_script(os.path.join(ctx.work, "ns.lua"), NAMESPACES, REQ_PATH)
    confs = {"nginx": (base_http(), None, False), "module": (gm_http(), ctx.module, False)}
    if gm.HAVE_LUA:
        confs["lua_way"] = (base_http(v1=LUA_WAY, http_extra=LUA_WAY_DICT), None, True)
    servers = {}
    try:
        for name, (http, so, lua) in confs.items():
            servers[name] = bench_nginx(http, module=so, lua=lua, workers=1, name="wrk",
                                        workdir=ctx.work).start()
        say(f"wrk -t1 -c{p['wrk_conns']} -d{p['wrk_secs']}s, {len(NAMESPACES)} label combinations, "
            f"{p['wrk_reps']} alternating runs per configuration")
        runs = wrk_arms(ctx, servers, p["wrk_secs"], p["wrk_reps"], 1, p["wrk_conns"], script)
    finally:
        for s in servers.values():
            s.cleanup()
    res = {"runs": runs, "median_rps": {}, "median_p99_s": {}}
    for name, rs in runs.items():
        res["median_rps"][name] = median([r["rps"] for r in rs])
        res["median_p99_s"][name] = median([r["p99_s"] for r in rs])
        runs_txt = ", ".join(format(r["rps"], ",.0f") for r in rs)
        say(f"  {name:8s} {res['median_rps'][name]:10,.0f} requests/s (median; runs: "
            f"{runs_txt}), p99 {fmt_t(res['median_p99_s'][name])}")
    res["ratio_module"] = ratio(res["median_rps"]["module"], res["median_rps"]["nginx"])
    res["ratio_module_paired"] = paired_ratio(runs, "module", "nginx")
    say(f"  -> ratio module / nginx alone: {res['ratio_module']:.3f} (ratio of medians; median "
        f"of the per-round ratios: {res['ratio_module_paired']:.3f}; target >= 0.97)")
    if "lua_way" in res["median_rps"]:
        res["ratio_lua_way"] = ratio(res["median_rps"]["lua_way"], res["median_rps"]["nginx"])
        say(f"  -> ratio Lua way / nginx alone: {res['ratio_lua_way']:.3f}")
    res["target_097_met"] = res["ratio_module"] >= 0.97
    return res
