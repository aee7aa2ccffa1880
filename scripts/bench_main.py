#!/usr/bin/env python3
"""The benchmarks behind scripts/bench (run that, not this: it builds the module first).

Sections (each prints its figures and its ratio against a baseline measured in the same run):
  callgrind  CPU instructions per request (valgrind --tool=callgrind, difference of two runs)
  wrk        throughput with and without the module (alternating runs, medians)
  scrape     /metrics render time and size by series count; harm to concurrent traffic
  memory     zone bytes per series, series that fit in a 32 MiB zone
  ffi        ns per call from LuaJIT: gm.add_tokens vs ngx.shared.DICT:incr
  workers2   exact counts and throughput with worker_processes 2
Writes RESULTS.md, results.json and chart.png into --out (default: bench/)."""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as bl  # noqa: E402

ROOT = bl.ROOT
SECTIONS = ["callgrind", "wrk", "scrape", "memory", "ffi", "workers2"]

FULL = dict(
    cg_warm=200, cg_n1=1000, cg_n2=3000, cg_layouts=5, cg_content=True,
    wrk_secs=5, wrk_reps=9, wrk_conns=16,
    scrape_samples=[1000, 10000, 100000], scrape_stored=[1000, 10000, 100000],
    harm_secs=4, harm_reps=3, harm_at=["samples=10000", "stored=10000"],
    mem_zone="32m", mem_chunk=20000, mem_limit=1_000_000, mem_crosscheck=True,
    ffi_n=1_000_000, ffi_reps=7,
    w2_requests=200_000, w2_conns=16, w2_wrk_secs=5, w2_wrk_reps=3,
)
SMOKE = dict(
    cg_warm=20, cg_n1=40, cg_n2=120, cg_layouts=1, cg_content=False,
    wrk_secs=1, wrk_reps=1, wrk_conns=8,
    scrape_samples=[1000], scrape_stored=[100],
    harm_secs=1, harm_reps=1, harm_at=["samples=1000"],
    mem_zone="1m", mem_chunk=2000, mem_limit=40_000, mem_crosscheck=False,
    ffi_n=100_000, ffi_reps=3,
    w2_requests=4000, w2_conns=8, w2_wrk_secs=1, w2_wrk_reps=1,
)

NAMESPACES = [f"ns{i}" for i in range(10)]  # ~10 label combinations for the traffic
REQ_PATH = "/v1/chat/completions"

# ---- nginx configurations ---------------------------------------------------------------------

SERVER = """
    server {{
        listen 127.0.0.1:{{port}}{listen};
        location /v1/ {{
            return 200 "ok";
{v1}
        }}
        location = /gif {{
            empty_gif;
{v1}
        }}
{extra}
    }}
"""


def base_http(v1="", extra="", http_extra="", listen=""):
    """nginx without the module (the baseline), with the same locations as gm_http: a
    `/metrics` location of its own, so that both find the request's location in the same tree."""
    extra = extra + """
        location = /metrics { return 404; }
"""
    return http_extra + SERVER.format(listen=listen, v1=v1, extra=extra)


def gm_http(v1="", extra="", http_extra="", zone="32m", max_series=4_000_000_000,
            render_pool=None, listen=""):
    """nginx with the module recording the default families (5 labels, duration histogram)."""
    pool = f"    gateway_metrics_render_thread_pool {render_pool};\n" if render_pool else ""
    head = f"""
    gateway_metrics_zone gm {zone};
    gateway_metrics_max_series {max_series};
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
{pool}{http_extra}"""
    extra = extra + """
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
"""
    return head + SERVER.format(listen=listen, v1=v1, extra=extra)


LUA_GM_CALLS = """            log_by_lua_block {
                local gm = require "resty.gateway_metrics"
                gm.set_model("gpt-4o")
                gm.add_tokens(120, 30)
            }"""
LUA_NOOP = """            log_by_lua_block { return }"""
LUA_WAY = """            log_by_lua_block { require("bench_lua_way").log() }"""
PRICE = "    gateway_metrics_model_price gpt-4o input=2.50 output=10.00;\n"
LUA_WAY_DICT = "    lua_shared_dict gm_bench_metrics 32m;\n"

# name: (description, module?, lua?, http body, request path)
CG_VARIANTS = {
    "nginx": ("nginx alone, `return 200`", False, False, base_http(), REQ_PATH),
    "module": ("module, default families", True, False, gm_http(), REQ_PATH),
    "module+lua_calls": ("module + `log_by_lua` calling `gm.set_model` and `gm.add_tokens`",
                         True, True, gm_http(v1=LUA_GM_CALLS, http_extra=PRICE), REQ_PATH),
    "lua_noop": ("nginx + an empty `log_by_lua_block` (no module)", False, True,
                 base_http(v1=LUA_NOOP), REQ_PATH),
    "lua_way": ("the Lua way: `log_by_lua` reading `ngx.var` + 4 `ngx.shared.DICT:incr`",
                False, True, base_http(v1=LUA_WAY, http_extra=LUA_WAY_DICT), REQ_PATH),
    "module_loaded": ("module loaded (`load_module`), no directive", True, False, base_http(),
                      REQ_PATH),
    "module_off": ("module loaded, zone declared, `gateway_metrics off`", True, False,
                   gm_http().replace("gateway_metrics on;", "gateway_metrics off;"), REQ_PATH),
    "module_thread_pool": ("module + `gateway_metrics_render_thread_pool default` (opt-in)",
                           True, False, gm_http(render_pool="default"), REQ_PATH),
    "nginx_content": ("nginx alone, `empty_gif` (content phase)", False, False, base_http(),
                      "/gif"),
    "module_content": ("module, `empty_gif` (content phase: + in-flight gauge)", True, False,
                       gm_http(), "/gif"),
}


# ---- output helpers -----------------------------------------------------------------------------

def say(msg=""):
    print(msg, flush=True)


def head(title):
    say()
    say(f"== {title} ==")


def fmt_int(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def fmt_t(s):
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_b(n):
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def ratio(a, b):
    return a / b if b else float("nan")


# ---- section 1: callgrind -----------------------------------------------------------------------

def section_callgrind(ctx):
    head("1. per-request cost: CPU instructions (valgrind --tool=callgrind)")
    p = ctx.p
    warm, n1, n2 = p["cg_warm"], p["cg_n1"], p["cg_n2"]
    names = ["nginx", "module"]
    if bl.HAVE_LUA:
        names += ["module+lua_calls", "lua_noop", "lua_way"]
    if p["cg_content"]:
        names += ["module_loaded", "module_off", "module_thread_pool", "nginx_content", "module_content"]
    if os.environ.get("GM_CG_VARIANTS"):  # e.g. "nginx,module" while iterating on the hot path
        names = [n for n in names if n in os.environ["GM_CG_VARIANTS"].split(",")]
    say(f"requests: {warm} warm-up + N over one keep-alive connection, {len(NAMESPACES)} "
        f"label combinations; per request = (Ir(N={n2}) - Ir(N={n1})) / {n2 - n1}; each "
        f"configuration under {p['cg_layouts']} heap layout(s) (0-{p['cg_layouts'] - 1} unused "
        f"`map` blocks: nginx's own cost moves by a few hundred instructions with the layout of "
        f"its heap), median")
    cgdir = os.path.join(ctx.work, "callgrind")
    os.makedirs(cgdir, exist_ok=True)
    res = {"method": {"warm": warm, "n1": n1, "n2": n2, "layouts": p["cg_layouts"]},
           "variants": {}}
    files = {}
    for name in names:
        desc, module, lua, http, path = CG_VARIANTS[name]
        raws = [bl.request_bytes(path, {"X-Namespace": NAMESPACES[i % len(NAMESPACES)]})
                for i in range(warm + n2)]
        per, totals = [], []
        for layout in range(p["cg_layouts"]):
            # Unused map blocks only move what nginx allocates at start-up (the layout of its
            # heap, hence the cost of its mallocs per request), nothing a request runs.
            pad = "".join(f"    map $http_x_gm_pad{i} $gm_pad{i} {{ default 1; }}\n"
                          for i in range(layout))
            irs = []
            for n in (n1, n2):
                out = os.path.join(cgdir, f"{name}.{n}.{layout}.out")
                srv = bl.Nginx(pad + http, module=ctx.module if module else None, lua=lua,
                               workers=1, single_process=True, name="cg", workdir=ctx.work,
                               wrapper=["valgrind", "--tool=callgrind", "-q",
                                        f"--callgrind-out-file={out}"])
                try:
                    srv.start(timeout=180)
                    ok = bl.sequential(srv.port, raws[:warm + n])
                    if ok != warm + n:
                        raise RuntimeError(f"{name}: {warm + n - ok} requests failed")
                    rc = srv.stop(signal.SIGQUIT, timeout=300)
                    if rc != 0:
                        raise RuntimeError(f"{name}: nginx under valgrind exited with {rc}")
                finally:
                    srv.cleanup()
                irs.append(bl.callgrind_total(out))
                files[(name, n, layout)] = out
            totals.append(irs)
            per.append((irs[1] - irs[0]) / (n2 - n1))
        med = bl.median(per)
        # The layout whose figure is the median (for the function breakdown).
        mid = min(range(len(per)), key=lambda i: abs(per[i] - med))
        res["variants"][name] = {"desc": desc, "per_request": med, "layouts": per,
                                 "totals": totals, "median_layout": mid}
        say(f"  {name:20s} {med:10,.0f} instructions/request"
            f"{'  (layouts: ' + ', '.join(fmt_int(x) for x in per) + ')' if len(per) > 1 else ''}")

    v = {k: x["per_request"] for k, x in res["variants"].items()}
    added = {}
    for name in ("module_loaded", "module_off"):
        if name in v:
            added[name] = v[name] - v["nginx"]
            say(f"  -> {CG_VARIANTS[name][0]}: {added[name]:,.0f} instructions/request")
    if "module" not in v:
        return res
    added["module"] = v["module"] - v["nginx"]
    say(f"  -> module adds {added['module']:,.0f} instructions/request "
        f"({ratio(v['module'], v['nginx']):.3f}x nginx alone; target <= 600)")
    if all(k in v for k in ("module+lua_calls", "lua_noop", "lua_way")):
        added["module+lua_calls"] = v["module+lua_calls"] - v["nginx"]
        added["lua_noop"] = v["lua_noop"] - v["nginx"]
        added["gm_calls_only"] = v["module+lua_calls"] - v["module"] - added["lua_noop"]
        added["lua_way"] = v["lua_way"] - v["nginx"]
        say(f"  -> module + Lua calls add {added['module+lua_calls']:,.0f} "
            f"(of which entering log_by_lua: {added['lua_noop']:,.0f}; the two gm calls and "
            f"recording the model/token families: {added['gm_calls_only']:,.0f})")
        say(f"  -> the Lua way adds {added['lua_way']:,.0f} instructions/request = "
            f"{ratio(added['lua_way'], added['module']):.0f}x the module's")
    if "module_thread_pool" in v:
        added["module_thread_pool"] = v["module_thread_pool"] - v["nginx"]
        say(f"  -> with the opt-in render thread pool the module adds "
            f"{added['module_thread_pool']:,.0f} (the pool's threads make every libc syscall "
            f"wrapper take its multi-threaded path)")
    if "module_content" in v:
        added["module_content"] = v["module_content"] - v["nginx_content"]
        say(f"  -> with a content phase (empty_gif: in-flight gauge too) the module adds "
            f"{added['module_content']:,.0f} (nginx alone: {v['nginx_content']:,.0f})")
    res["added"] = added
    res["target_600_met"] = added["module"] <= 600

    # Where the module's instructions go: per-request difference of function profiles.
    try:
        def per_fn(name):
            mid = res["variants"][name]["median_layout"]
            f1 = bl.callgrind_functions(files[(name, n1, mid)])
            f2 = bl.callgrind_functions(files[(name, n2, mid)])
            return {k: (f2.get(k, 0) - f1.get(k, 0)) / (n2 - n1) for k in set(f1) | set(f2)}

        base = per_fn("nginx")
        for name in ("module", "lua_way"):
            if name not in v:
                continue
            mod = per_fn(name)
            diff = {k: mod.get(k, 0) - base.get(k, 0) for k in set(mod) | set(base)}
            top = sorted(diff.items(), key=lambda kv: -kv[1])[:14]
            res.setdefault("top_functions", {})[name] = [(bl.short_function(k), round(d, 1))
                                                         for k, d in top if d >= 1]
            say(f"  top functions added per request ({name} minus nginx):")
            for fn, d in res["top_functions"][name][:10]:
                say(f"    {d:9,.1f}  {fn}")
    except Exception as e:  # the breakdown is a bonus; the totals above stand
        say(f"  (function breakdown unavailable: {e})")
    return res


# ---- section 2: throughput ----------------------------------------------------------------------

def wrk_arms(ctx, arms, secs, reps, threads, conns, script):
    """Runs wrk against each started server, alternating the order each repetition."""
    runs = {name: [] for name in arms}
    order = list(arms)
    for rep in range(reps):
        seq = order if rep % 2 == 0 else list(reversed(order))
        for name in seq:
            r = bl.run_wrk(arms[name].port, secs, threads=threads, conns=conns, script=script)
            if r["non2xx"]:
                raise RuntimeError(f"wrk {name}: {r['non2xx']} non-2xx responses")
            runs[name].append(r)
    return runs


def paired_ratio(runs, a, b):
    """Median of a/b over the rounds (each round runs a and b back to back)."""
    return bl.median([ratio(x["rps"], y["rps"]) for x, y in zip(runs[a], runs[b])])


def section_wrk(ctx):
    head("2. throughput: wrk, worker_processes 1")
    p = ctx.p
    script = bl.wrk_script(os.path.join(ctx.work, "ns.lua"), NAMESPACES, REQ_PATH)
    confs = {"nginx": (base_http(), None, False), "module": (gm_http(), ctx.module, False)}
    if bl.HAVE_LUA:
        confs["lua_way"] = (base_http(v1=LUA_WAY, http_extra=LUA_WAY_DICT), None, True)
    servers = {}
    try:
        for name, (http, so, lua) in confs.items():
            servers[name] = bl.Nginx(http, module=so, lua=lua, workers=1, name="wrk",
                                     workdir=ctx.work).start()
        say(f"wrk -t1 -c{p['wrk_conns']} -d{p['wrk_secs']}s, {len(NAMESPACES)} label combinations, "
            f"{p['wrk_reps']} alternating runs per configuration")
        runs = wrk_arms(ctx, servers, p["wrk_secs"], p["wrk_reps"], 1, p["wrk_conns"], script)
    finally:
        for s in servers.values():
            s.cleanup()
    res = {"runs": runs, "median_rps": {}, "median_p99_s": {}}
    for name, rs in runs.items():
        res["median_rps"][name] = bl.median([r["rps"] for r in rs])
        res["median_p99_s"][name] = bl.median([r["p99_s"] for r in rs])
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


# ---- section 3: scrape cost ---------------------------------------------------------------------

def fill_namespaces(port, start, end, conns=2, method="GET", prefix="t"):
    """One request per namespace `{prefix}{i:09d}`, i in [start, end): one new stored series each."""
    if end <= start:
        return
    raws = [bl.request_bytes(REQ_PATH, {"X-Namespace": f"{prefix}{i:09d}"}, method=method)
            for i in range(start, end)]
    st, _ = bl.pipeline_many(port, raws, conns=conns, batch=512)
    if set(st) != {200}:
        raise RuntimeError(f"fill: unexpected statuses {st}")


def stored_series(page):
    return int(bl.sample_value(page["body"], "gateway_metrics_series", -1))


def keepalive_check(port, n):
    """Scrapes n times over one keep-alive connection (as Prometheus does); returns (failed, n).
    A failed scrape (non-200) is followed by a new connection."""
    failed = 0
    c = bl.Conn(port)
    try:
        for _ in range(n):
            try:
                bl.scrape(0, conn=c)
            except RuntimeError:
                failed += 1
                c.close()
                c = bl.Conn(port)
    finally:
        c.close()
    return failed, n


def discard_response(sock):
    """Reads one response to its last byte without keeping or parsing the page (Content-Length
    or chunked: the sliced render sends no length); returns the status. As cheap for the client
    in both cases, so that the harm measured is the server's."""
    scratch = memoryview(bytearray(1 << 20))
    buf = bytearray()

    def more():
        n = sock.recv_into(scratch)
        if not n:
            raise ConnectionError("connection closed mid-response")
        buf.extend(scratch[:n])

    def skip(n):
        take = min(n, len(buf))
        del buf[:take]
        n -= take
        while n > 0:
            got = sock.recv_into(scratch, min(n, len(scratch)))
            if not got:
                raise ConnectionError("connection closed mid-body")
            n -= got

    while b"\r\n\r\n" not in buf:
        more()
    end = buf.find(b"\r\n\r\n")
    head = bytes(buf[:end])
    del buf[:end + 4]
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        skip(int(m.group(1)))
    elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        while True:
            while b"\r\n" not in buf:
                more()
            i = buf.find(b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0], 16)
            del buf[:i + 2]
            skip(size + 2)
            if size == 0:
                break
    return status


class Scraper(threading.Thread):
    """Scrapes /metrics back to back until stopped, a new connection per scrape (so that the
    keep-alive failure keepalive_check reports does not turn renders into quick errors). Reads
    each page to its last byte without keeping it. Only scrapes started once `measure_from`
    (perf_counter) is set are timed: the ones before the traffic starts run on an idle worker."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop_ev, self.times, self.error = port, threading.Event(), [], None
        self.failed = 0
        self.measure_from = float("inf")

    def run(self):
        try:
            raw = bl.request_bytes("/metrics")
            while not self.stop_ev.is_set():
                c = bl.Conn(self.port)
                t0 = time.perf_counter()
                c.sock.sendall(raw)
                st = discard_response(c.sock)
                c.close()
                if st != 200:
                    self.failed += 1
                    continue
                if t0 >= self.measure_from:
                    self.times.append(time.perf_counter() - t0)
        except Exception as e:
            self.error = e


def harm(ctx, srv, script, secs, reps):
    """wrk traffic without and with back-to-back scraping, alternating; medians."""
    out = {"alone": [], "scraped": [], "scrapes": [], "scrape_s": [], "scrape_failed": 0}
    for rep in range(reps):
        for mode in (("alone", "scraped") if rep % 2 == 0 else ("scraped", "alone")):
            sc = None
            if mode == "scraped":
                sc = Scraper(srv.port)
                sc.start()
                time.sleep(0.2)
                sc.measure_from = time.perf_counter()
            try:
                r = bl.run_wrk(srv.port, secs, threads=1, conns=ctx.p["wrk_conns"], script=script)
            finally:
                if sc:
                    sc.stop_ev.set()
                    sc.join(120)
            if sc:
                if sc.error:
                    raise sc.error
                out["scrapes"].append(len(sc.times))
                out["scrape_s"].append(bl.median(sc.times))
                out["scrape_failed"] = out.get("scrape_failed", 0) + sc.failed
            out[mode].append(r)
    m = lambda mode, k: bl.median([r[k] for r in out[mode]])  # noqa: E731
    return {
        "rps_alone": m("alone", "rps"), "rps_scraped": m("scraped", "rps"),
        "p99_alone_s": m("alone", "p99_s"), "p99_scraped_s": m("scraped", "p99_s"),
        "scrapes_per_run": bl.median(out["scrapes"]), "scrape_s": bl.median(out["scrape_s"]),
        "scrape_failed": out["scrape_failed"],
        "rps_ratio": ratio(m("scraped", "rps"), m("alone", "rps")),
        "p99_ratio": ratio(m("scraped", "p99_s"), m("alone", "p99_s")),
        "runs": out,
    }


def render_s(pt):
    """The render figure of a scrape point: the thread pool sends the header once the page is
    rendered (time to first byte); the sliced render sends it at once and renders the page as
    it is sent, so its render time is the complete scrape."""
    return pt["total_s"] if pt["mode"] == "sliced" else pt["ttfb_s"]


def section_scrape(ctx):
    head("3. scrape cost: /metrics render time and size; harm to concurrent traffic")
    p = ctx.p
    # sliced: the default (rendered in slices on the event loop); thread_pool: opt-in.
    modes = {"thread_pool": "default", "sliced": None}
    servers = {}
    res = {"points": [], "harm": []}
    try:
        for mode, pool in modes.items():
            servers[mode] = bl.Nginx(gm_http(zone="256m", render_pool=pool), module=ctx.module,
                                     workers=1, name="scrape", workdir=ctx.work).start()
        have = {m: 0 for m in servers}

        def fill_to(mode, n):
            fill_namespaces(servers[mode].port, have[mode], n)
            have[mode] = max(have[mode], n)

        # Calibrate exposition samples per stored series (the derived views make several).
        cal = {}
        for n in (10, 20):
            fill_to("thread_pool", n)
            page = bl.scrape(servers["thread_pool"].port)
            cal[n] = (stored_series(page), page["samples"])
        slope = (cal[20][1] - cal[10][1]) / (cal[20][0] - cal[10][0])
        fixed = cal[10][1] - slope * cal[10][0]
        res["samples_per_stored_series"] = slope
        res["fixed_samples"] = fixed
        say(f"exposition: {slope:.1f} sample lines per stored request series + {fixed:.0f} "
            f"(self-metrics, nginx stats); 'stored' = series in the zone, 'samples' = non-comment "
            f"lines of /metrics")
        points = {}
        for t in p["scrape_samples"]:
            points.setdefault(max(1, math.ceil((t - fixed) / slope)), []).append(f"samples={t}")
        for t in p["scrape_stored"]:
            points.setdefault(t, []).append(f"stored={t}")
        script = bl.wrk_script(os.path.join(ctx.work, "scrape-ns.lua"),
                               [f"t{i:09d}" for i in range(10)], REQ_PATH)
        for n in sorted(points):
            labels = points[n]
            for mode in servers:
                fill_to(mode, n)
                # Timed scrapes each on a fresh connection (the clock starts once connected):
                # see keepalive_check for why not one keep-alive connection.
                port = servers[mode].port
                first = bl.scrape(port)
                body = first.pop("body")
                pages = [first]
                reps = 15 if first["bytes"] < 5e6 else (5 if first["bytes"] < 1e8 else 3)
                for _ in range(reps - 1):
                    pg = bl.scrape(port)
                    pg.pop("body")
                    pages.append(pg)
                ka_fail, ka_n = keepalive_check(port, 4 if first["bytes"] < 1e8 else 3)
                pt = {
                    "mode": mode, "labels": labels, "stored": int(bl.sample_value(
                        body, "gateway_metrics_series", -1)),
                    "samples": first["samples"], "bytes": first["bytes"],
                    "ttfb_s": bl.median([x["ttfb_s"] for x in pages]),
                    "total_s": bl.median([x["total_s"] for x in pages]), "reps": len(pages),
                    "keepalive_failed": ka_fail, "keepalive_scrapes": ka_n,
                }
                pt["render_s"] = render_s(pt)
                del body
                res["points"].append(pt)
                # sliced: the header goes out first, the page is rendered as it is sent.
                what = "complete scrape" if mode == "sliced" else "time to first byte"
                say(f"  {mode:11s} stored {pt['stored']:7,d}  samples {pt['samples']:9,d}  "
                    f"{fmt_b(pt['bytes']):>9s}  render ({what}) {fmt_t(pt['render_s']):>9s}  "
                    f"[first byte {fmt_t(pt['ttfb_s'])}, complete scrape "
                    f"{fmt_t(pt['total_s'])}]  [{', '.join(labels)}]")
                if ka_fail:
                    say(f"    !! {ka_fail} of {ka_n} scrapes on one keep-alive connection "
                        f"failed (HTTP 500)")
                if any(l in p["harm_at"] for l in labels):
                    h = harm(ctx, servers[mode], script, p["harm_secs"], p["harm_reps"])
                    h.update(mode=mode, labels=labels, stored=pt["stored"], samples=pt["samples"])
                    res["harm"].append(h)
                    say(f"    harm ({mode}): traffic {h['rps_alone']:,.0f} -> "
                        f"{h['rps_scraped']:,.0f} req/s (x{h['rps_ratio']:.2f}, target >= 0.80), "
                        f"p99 {fmt_t(h['p99_alone_s'])} -> {fmt_t(h['p99_scraped_s'])} "
                        f"(x{h['p99_ratio']:.2f}, target <= 2); "
                        f"{h['scrapes_per_run']:.0f} scrapes/run of {fmt_t(h['scrape_s'])}")
            # sliced vs thread pool, same page: until the last byte
            pair = {x["mode"]: x for x in res["points"] if x["labels"] == labels}
            if len(pair) == 2:
                say(f"    ratio sliced / thread pool complete scrape time: "
                    f"{ratio(pair['sliced']['total_s'], pair['thread_pool']['total_s']):.2f}")
    finally:
        for s in servers.values():
            s.cleanup()
    t10k = [x for x in res["points"] if "samples=10000" in x["labels"]]
    if t10k:
        res["target_10k_10ms_met"] = all(x["render_s"] < 0.010 for x in t10k)
    hs = [h for h in res["harm"] if "samples=10000" in h["labels"]]
    if hs:
        res["target_harm_met"] = {h["mode"]: h["rps_ratio"] >= 0.8 and h["p99_ratio"] <= 2
                                  for h in hs}
    return res


# ---- section 4: memory --------------------------------------------------------------------------

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
        z[k] = bl.sample_value(body, "gateway_metrics_" + k, float("nan"))
    z["dropped"] = {lbl: v for lbl, v in bl.samples_named(body, "gateway_metrics_dropped_updates_total")}
    return z


def dropping(srv):
    return "is dropping new series" in srv.error_log()


def mem_fill(ctx, kind):
    p = ctx.p
    zone = p["mem_zone"]
    lua = kind == "counter"
    if lua and not bl.HAVE_LUA:
        return None
    if kind == "histogram":
        http = gm_http(zone=zone, http_extra="    gateway_metrics_endpoint /v1/chat01;\n"
                                             "    gateway_metrics_upstream upstream01;\n")
    else:
        http = gm_http(zone=zone, http_extra=MEM_COUNTER_FILL, extra=MEM_COUNTER_LOC)
    srv = bl.Nginx(http, module=ctx.module, lua=lua, workers=1, name="mem", workdir=ctx.work)
    try:
        srv.start()
        z0 = zone_figures(bl.scrape(srv.port)["body"])
        n = 0
        t0 = time.time()
        while n < p["mem_limit"] and not dropping(srv):
            m = n + p["mem_chunk"]
            if kind == "histogram":
                fill_namespaces(srv.port, n, m, conns=2, method="POST")
            else:
                c = bl.Conn(srv.port)
                st, _, _ = c.request(bl.request_bytes(f"/fill?from={n}&to={m}"))
                c.close()
                if st != 200:
                    raise RuntimeError(f"/fill returned {st}")
            n = m
        fill_s = time.time() - t0
        page = bl.scrape(srv.port, keep_tail=1 << 20)
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


def section_memory(ctx):
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


# ---- section 5: FFI -----------------------------------------------------------------------------

FFI_HTTP_EXTRA = """    lua_shared_dict gm_bench_ffi 1m;
    gateway_metrics_counter bench_ffi_calls_total "FFI bench counter" tool;
"""
FFI_LOC = """
        location = /ffi {
            gateway_metrics off;
            content_by_lua_block { require("bench_ffi").run() }
        }
"""


def section_ffi(ctx):
    head("5. FFI call cost from LuaJIT (tight loop in content_by_lua)")
    if not bl.HAVE_LUA:
        say("  skipped: lua-nginx-module not available")
        return {"skipped": True}
    p = ctx.p
    srv = bl.Nginx(gm_http(http_extra=FFI_HTTP_EXTRA, extra=FFI_LOC), module=ctx.module, lua=True,
                   workers=1, name="ffi", workdir=ctx.work)
    try:
        srv.start()
        c = bl.Conn(srv.port)
        st, body, _ = c.request(bl.request_bytes(f"/ffi?n={p['ffi_n']}&reps={p['ffi_reps']}"))
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
    res = {"n": p["ffi_n"], "reps": p["ffi_reps"], "ns_per_call": {k: bl.median(v) for k, v in per.items()},
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


# ---- section 6: two workers ---------------------------------------------------------------------

W2_HEADER = '            add_header X-Worker $pid always;'


def section_workers2(ctx):
    head("6. two workers: exact counts under contention, throughput")
    p = ctx.p
    res = {}
    srv = bl.Nginx(gm_http(v1=W2_HEADER, listen=" reuseport"), module=ctx.module, workers=2,
                   name="w2", workdir=ctx.work)
    try:
        srv.start()
        total = p["w2_requests"]
        raws = [bl.request_bytes(REQ_PATH, {"X-Namespace": NAMESPACES[i % len(NAMESPACES)]})
                for i in range(total)]
        t0 = time.time()
        st, workers = bl.pipeline_many(srv.port, raws, conns=p["w2_conns"], batch=64,
                                       want_header=b"x-worker")
        el = time.time() - t0
        if set(st) != {200}:
            raise RuntimeError(f"unexpected statuses {st}")
        counted = None
        deadline = time.time() + 10
        while True:
            body = bl.scrape(srv.port)["body"]
            counted = sum(v for _, v in bl.samples_named(body, "http_requests_total"))
            if counted >= total or time.time() > deadline:
                break
            time.sleep(0.1)
        per_ns = {}
        for lbl, v in bl.samples_named(body, "http_requests_total"):
            ns = re.search(r'namespace="([^"]*)"', lbl).group(1)
            per_ns[ns] = per_ns.get(ns, 0) + v
        hist_count = sum(v for _, v in bl.samples_named(body, "http_request_duration_seconds_count"))
        inf = sum(v for lbl, v in bl.samples_named(body, "http_request_duration_seconds_bucket")
                  if 'le="+Inf"' in lbl)
        crashes = srv.crashes()
    finally:
        srv.cleanup()
    exact = (counted == total and hist_count == total and inf == total
             and all(per_ns.get(ns) == total // len(NAMESPACES) for ns in NAMESPACES))
    res.update(sent=total, counted=counted, histogram_count=hist_count, inf_bucket=inf,
               per_namespace=per_ns, per_worker=workers, exact=exact, crashes=crashes,
               pipelined_rps=total / el)
    say(f"  sent {total:,} requests over {p['w2_conns']} pipelined connections "
        f"({total / el:,.0f} req/s), {len(NAMESPACES)} label combinations shared by both workers; "
        f"responses per worker: {sorted(workers.values(), reverse=True)}")
    say(f"  counted {counted:,.0f} (http_requests_total), histogram _count {hist_count:,.0f}, "
        f"+Inf {inf:,.0f}: {'EXACT, no lost updates' if exact else 'MISMATCH'}")

    script = bl.wrk_script(os.path.join(ctx.work, "w2-ns.lua"), NAMESPACES, REQ_PATH)
    servers = {}
    try:
        servers["nginx"] = bl.Nginx(base_http(listen=" reuseport"), workers=2, name="w2",
                                    workdir=ctx.work).start()
        servers["module"] = bl.Nginx(gm_http(listen=" reuseport"), module=ctx.module, workers=2,
                                     name="w2", workdir=ctx.work).start()
        runs = wrk_arms(ctx, servers, p["w2_wrk_secs"], p["w2_wrk_reps"], 2, 2 * p["wrk_conns"],
                        script)
    finally:
        for s in servers.values():
            s.cleanup()
    res["wrk"] = {k: bl.median([r["rps"] for r in v]) for k, v in runs.items()}
    res["wrk_runs"] = runs
    res["ratio_module"] = ratio(res["wrk"]["module"], res["wrk"]["nginx"])
    res["ratio_module_paired"] = paired_ratio(runs, "module", "nginx")
    say(f"  wrk -t2 -c{2 * p['wrk_conns']}: nginx {res['wrk']['nginx']:,.0f} req/s, module "
        f"{res['wrk']['module']:,.0f} req/s -> ratio {res['ratio_module']:.3f} (median of the "
        f"per-round ratios: {res['ratio_module_paired']:.3f})")
    return res


# ---- results ------------------------------------------------------------------------------------

def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except Exception as e:
        return f"n/a ({e})"


def machine(module):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    h = hashlib.sha256()
    with open(module, "rb") as f:
        h.update(f.read())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "memory": sh("free -h | awk '/Mem:/ {print $2}'"),
        "nginx": sh(f"{bl.NGINX} -v"), "rustc": sh("rustc -V"), "valgrind": sh("valgrind --version"),
        "wrk": sh("wrk -v 2>&1 | head -1"), "python": platform.python_version(),
        "luajit": sh("dpkg-query -W -f='${Package} ${Version}' 'libluajit*-5.1-2' 2>/dev/null"),
        "lua_module": sh("dpkg-query -W -f='${Package} ${Version}' libnginx-mod-http-lua 2>/dev/null"),
        "module_sha256": h.hexdigest()[:16], "loadavg_start": sh("cat /proc/loadavg"),
    }


def yes(v):
    return "n/a" if v is None else ("**met**" if v else "**NOT met**")


def markdown(R, smoke):
    m = R["meta"]
    L = []
    a = L.append
    a("# Benchmark results" + (" (smoke run: tiny sizes, figures meaningless)" if smoke else ""))
    a("")
    a(f"Produced by `scripts/bench{' --smoke' if smoke else ''}` on {m['date']}; every ratio "
      f"is against a baseline measured in the same run. Raw data: `results.json`.")
    a("")
    a("| machine | |")
    a("|---|---|")
    for k in ("cpu", "nproc", "memory", "kernel", "nginx", "lua_module", "luajit", "rustc",
              "valgrind", "wrk", "python", "module_sha256", "loadavg_start", "loadavg_end",
              "duration_s"):
        a(f"| {k} | {m.get(k, '')} |")
    a("")
    cg, wk, sc = R.get("callgrind"), R.get("wrk"), R.get("scrape")
    mem, ffi, w2 = R.get("memory"), R.get("ffi"), R.get("workers2")
    a("## Targets")
    a("")
    a("| # | target | measured | |")
    a("|---|---|---|---|")
    if cg and "added" in cg:
        a(f"| 1 | ≤ 600 instructions added per request (default families) | "
          f"{cg['added']['module']:,.0f} | {yes(cg.get('target_600_met'))} |")
    if wk and "ratio_module" in wk:
        a(f"| 2 | throughput ratio ≥ 0.97 | {wk['ratio_module']:.3f} (per-round ratios: median "
          f"{wk.get('ratio_module_paired', float('nan')):.3f}) | {yes(wk.get('target_097_met'))} |")
    if sc and sc.get("points"):
        for x in sc["points"]:
            if "samples=10000" in x["labels"]:
                rs = x.get("render_s", x["ttfb_s"])
                a(f"| 3 | 10,000 series (exposition samples) rendered in < 10 ms ({x['mode']}"
                  f"{': complete scrape' if x['mode'] == 'sliced' else ''}) | "
                  f"{fmt_t(rs)} ({x['samples']:,} samples, {x['stored']:,} stored series) | "
                  f"{yes(rs < 0.010)} |")
        for h in sc.get("harm", []):
            if "samples=10000" in h["labels"] or smoke:
                a(f"| 3 | scraping: traffic keeps ≥ 80% throughput, p99 ≤ 2x ({h['mode']}, "
                  f"{h['samples']:,} samples) | x{h['rps_ratio']:.2f} req/s, x{h['p99_ratio']:.2f} p99 | "
                  f"{yes(h['rps_ratio'] >= 0.8 and h['p99_ratio'] <= 2)} |")
    if mem and mem.get("through_nginx", {}).get("histogram"):
        h = mem["through_nginx"]["histogram"]
        a(f"| 4 | ≥ 150,000 histogram series in 32 MB | {h['fit']:,.0f} in {h['zone']} | "
          f"{yes(mem.get('target_150k_met'))} |")
    if ffi and "ns_per_call" in ffi:
        a(f"| 5 | `gm.add_tokens` < 50 ns per call | {ffi['ns_per_call']['gm.add_tokens']:.1f} ns | "
          f"{yes(ffi.get('target_50ns_met'))} |")
    if w2 and "exact" in w2:
        a(f"| 6 | exact counts with 2 workers | {w2['counted']:,.0f} of {w2['sent']:,} | "
          f"{yes(w2['exact'])} |")
    a("")
    if R.get("errors"):
        a("## Errors")
        a("")
        for k, e in R["errors"].items():
            a(f"- {k}: `{e.splitlines()[-1] if e else e}`")
        a("")
    if cg and "variants" in cg:
        mth = cg["method"]
        a("## 1. Instructions per request (callgrind)")
        a("")
        a(f"nginx in the foreground (`master_process off`, `worker_processes 1`, `access_log off`) "
          f"under `valgrind --tool=callgrind`; {mth['warm']} warm-up + N keep-alive requests over "
          f"one connection ({len(NAMESPACES)} label combinations); per request = "
          f"(Ir(N={mth['n2']}) − Ir(N={mth['n1']})) / {mth['n2'] - mth['n1']}, which cancels "
          f"start-up and shut-down. nginx's own cost per request moves by a few hundred "
          f"instructions with the layout of its heap (adding an unused `map` block or location "
          f"is enough: glibc's malloc then splits and merges chunks differently), so each "
          f"configuration is measured under {mth.get('layouts', 1)} heap layouts (0 to "
          f"{mth.get('layouts', 1) - 1} unused `map` blocks) and the median is reported; the "
          f"figure of each layout is in results.json.")
        a("")
        a("| configuration | instructions/request (median) | over the layouts | added vs nginx alone |")
        a("|---|---:|---:|---:|")
        base = {"nginx_content": cg["variants"].get("nginx_content", {}).get("per_request")}
        for k, v in cg["variants"].items():
            ref = base["nginx_content"] if k.endswith("_content") else cg["variants"]["nginx"]["per_request"]
            lay = v.get("layouts") or [v["per_request"]]
            a(f"| `{k}`: {v['desc']} | {v['per_request']:,.0f} | {min(lay):,.0f}–{max(lay):,.0f} | "
              f"{'—' if k in ('nginx', 'nginx_content') else format(v['per_request'] - ref, ',.0f')} |")
        a("")
        ad = cg["added"]
        if "lua_way" in ad:
            a(f"The Lua way adds **{ad['lua_way']:,.0f}** instructions per request, "
              f"**{ratio(ad['lua_way'], ad['module']):.0f}x** the module's {ad['module']:,.0f}. "
              f"Calling `gm.set_model` + `gm.add_tokens` from `log_by_lua` costs "
              f"{ad['module+lua_calls'] - ad['module']:,.0f} more, of which {ad['lua_noop']:,.0f} "
              f"is entering `log_by_lua` at all and {ad['gm_calls_only']:,.0f} the two calls plus "
              f"recording the model, token and cost families.")
            a("")
        tops = cg.get("top_functions", {})
        for name, top in sorted(tops.items(), key=lambda kv: kv[0] != "module"):
            a(f"Top functions by instructions added per request (`{name}` minus `nginx`):")
            a("")
            a("| instr/request | function |")
            a("|---:|---|")
            for fn, d in top[:12]:
                a(f"| {d:,.1f} | `{fn}` |")
            a("")
    if wk and "median_rps" in wk:
        a("## 2. Throughput (wrk)")
        a("")
        a("`worker_processes 1`, `wrk -t1` with a Lua script rotating the 10 label combinations, "
          "configurations alternating, medians.")
        a("")
        a("| configuration | requests/s (median) | runs | p99 (median) | ratio vs nginx | median per-round ratio |")
        a("|---|---:|---|---:|---:|---:|")
        for k, v in wk["median_rps"].items():
            runs = ", ".join(format(r["rps"], ",.0f") for r in wk["runs"][k])
            a(f"| {k} | {v:,.0f} | {runs} | {fmt_t(wk['median_p99_s'][k])} | "
              f"{ratio(v, wk['median_rps']['nginx']):.3f} | "
              f"{paired_ratio(wk['runs'], k, 'nginx'):.3f} |")
        a("")
    if sc and sc.get("points"):
        a("## 3. Scrape cost")
        a("")
        a(f"One stored request series (a duration histogram per method, endpoint, status, "
          f"namespace, upstream) renders as **{sc['samples_per_stored_series']:.1f}** exposition "
          f"sample lines (all derived views), plus {sc['fixed_samples']:.0f} fixed lines. "
          f"*stored* = series in the zone (`gateway_metrics_series`); *samples* = non-comment "
          f"lines of `/metrics`. Render time, median over repeated scrapes: *thread_pool* "
          f"(`gateway_metrics_render_thread_pool default`) sends the header once the page is "
          f"rendered, so its render time is the time to the first byte; *sliced* (the default) "
          f"sends the header at once and renders the page in slices as it is sent, so its render "
          f"time is the complete scrape; complete = until the last byte.")
        a("")
        a("| render | stored series | samples | size | render time | complete scrape | keep-alive scrapes failed | point |")
        a("|---|---:|---:|---:|---:|---:|---:|---|")
        for x in sc["points"]:
            a(f"| {x['mode']} | {x['stored']:,} | {x['samples']:,} | {fmt_b(x['bytes'])} | "
              f"{fmt_t(x.get('render_s', x['ttfb_s']))} | {fmt_t(x['total_s'])} | "
              f"{x['keepalive_failed']} of {x['keepalive_scrapes']} | {', '.join(x['labels'])} |")
        a("")
        a("Timed scrapes use a new connection each (the clock starts once connected). "
          "*keep-alive scrapes failed*: of consecutive scrapes over one keep-alive connection, as "
          "Prometheus makes them, those that did not return 200.")
        a("")
        bad = [x for x in sc["points"] if x["keepalive_failed"]]
        if bad:
            modes = sorted({x["mode"] for x in bad})
            a(f"**Failures**: with render mode {', '.join(modes)}, scrapes over a keep-alive "
              f"connection failed with HTTP 500 on pages of {min(x['bytes'] for x in bad) / 1e6:.0f} MB "
              f"and more ({sum(x['keepalive_failed'] for x in bad)} of "
              f"{sum(x['keepalive_scrapes'] for x in bad)} such scrapes); scrapes on new "
              f"connections did not fail.")
            a("")
        if sc.get("harm"):
            a("Harm to traffic: `wrk -t1` on `/v1/` (existing series) alone vs while one client "
              "scrapes `/metrics` back to back (a new connection per scrape); alternating, "
              "medians. On a 2-CPU machine wrk, the nginx worker, the render thread (thread_pool) "
              "and the scraper share two CPUs. *sliced*: slices of at most ~100 µs / 64 KiB "
              "between the worker's other events; while it has other traffic, ~30 µs / 16 KiB "
              "at least 1.5 ms (and 10x their duration) apart, so a scrape takes longer then. "
              "*scrapes/run*: scrapes started while wrk ran (the scraper reads each page to its "
              "end without parsing it).")
            a("")
            a("| render | page | req/s alone | req/s scraped | ratio | p99 alone | p99 scraped | ratio | scrapes/run |")
            a("|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for h in sc["harm"]:
                a(f"| {h['mode']} | {h['samples']:,} samples ({h['stored']:,} stored) | "
                  f"{h['rps_alone']:,.0f} | {h['rps_scraped']:,.0f} | {h['rps_ratio']:.2f} | "
                  f"{fmt_t(h['p99_alone_s'])} | {fmt_t(h['p99_scraped_s'])} | {h['p99_ratio']:.2f} | "
                  f"{h['scrapes_per_run']:.0f} |")
            a("")
    if mem and mem.get("through_nginx"):
        a("## 4. Memory")
        a("")
        a("Filled through nginx until the zone drops new series; labels method=POST, "
          "endpoint=/v1/chat01, status_code=200, namespace=t%09d, upstream=upstream01. Heap "
          "bytes/series = growth of `gateway_metrics_zone_used_bytes` / series; zone bytes/series "
          "= zone size / series that fit (hash index and overflow reserve included).")
        a("")
        a("| series kind | zone | series that fit | heap bytes/series | zone bytes/series | zone used when full | drops | `/metrics` of the full zone |")
        a("|---|---|---:|---:|---:|---:|---|---|")
        for k, r in mem["through_nginx"].items():
            what = ("request histogram (14 buckets + sum), via HTTP" if k == "histogram"
                    else "declared counter, via `gm.inc`")
            drops = ", ".join(f"{lbl} {v:,.0f}" for lbl, v in r["dropped"].items() if v) or "none"
            a(f"| {what} | {r['zone']} | {r['fit']:,.0f}{'' if r['full'] else ' (not full)'} | "
              f"{r['heap_bytes_per_series']:.0f} | {r['zone_bytes_per_series']:.0f} | "
              f"{100 * r['used_bytes_full'] / r['zone_size_bytes']:.0f}% | {drops} | "
              f"{r['page_samples']:,} samples, {fmt_b(r['page_bytes'])} |")
        a("")
        if mem.get("bench_store"):
            a("Cross-check with the pure-Rust store bench (`cargo run --release -p "
              "gateway-metrics-core --example bench_store -- --quick`, no nginx):")
            a("")
            for l in mem["bench_store"]:
                a(f"    {l}")
            a("")
    if ffi and "ns_per_call" in ffi:
        a("## 5. FFI call cost")
        a("")
        a(f"`content_by_lua` loops of {ffi['n']:,} calls (after a warm-up that JIT-compiles "
          f"them), cases alternating, median of {ffi['reps']}; timed with "
          f"`clock_gettime(CLOCK_MONOTONIC)`.")
        a("")
        a("| call | ns/call | ratio vs `shdict:incr` |")
        a("|---|---:|---:|")
        for k, v in ffi["ns_per_call"].items():
            a(f"| `{k}` | {v:.1f} | {ratio(v, ffi['ns_per_call']['shdict:incr']):.2f} |")
        a("")
    if w2 and "exact" in w2:
        a("## 6. Two workers")
        a("")
        a(f"`worker_processes 2`, `listen ... reuseport`; {w2['sent']:,} pipelined requests over "
          f"several connections, 10 label combinations shared by both workers (same atomic words). "
          f"Responses per worker: {sorted(w2['per_worker'].values(), reverse=True)}.")
        a("")
        a(f"- `http_requests_total` sum: {w2['counted']:,.0f}; histogram `_count`: "
          f"{w2['histogram_count']:,.0f}; `+Inf` bucket: {w2['inf_bucket']:,.0f}; per namespace "
          f"all equal to {w2['sent'] // len(NAMESPACES):,}: **{'exact' if w2['exact'] else 'MISMATCH'}**")
        a(f"- wrk -t2: nginx {w2['wrk']['nginx']:,.0f} req/s, module {w2['wrk']['module']:,.0f} req/s, "
          f"ratio {w2['ratio_module']:.3f}")
        a("")
    if ctx_note := R.get("note"):
        a("## Notes")
        a("")
        a(ctx_note)
        a("")
    return "\n".join(L)


def chart(R, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"gateway-metrics benchmarks — {R['meta']['cpu']}, {R['meta']['nproc']} CPUs, "
                 f"{R['meta']['nginx'].replace('nginx version: ', '')}, {R['meta']['date']}",
                 fontsize=11)
    cg, wk, sc = R.get("callgrind"), R.get("wrk"), R.get("scrape")
    mem, ffi = R.get("memory"), R.get("ffi")

    def bars(ax, labels, values, colors, fmt="{:,.0f}", log=False):
        b = ax.bar(labels, values, color=colors)
        for rect, v in zip(b, values):
            ax.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelsize=8)

    ax = axes[0][0]
    if cg and "added" in cg:
        ad = cg["added"]
        labels, values, colors = ["module\n(default families)"], [ad["module"]], ["tab:green"]
        if "module+lua_calls" in ad:
            labels += ["module +\ngm.set_model/add_tokens", "Lua way\n(ngx.var + shdict:incr)"]
            values += [ad["module+lua_calls"], ad["lua_way"]]
            colors += ["tab:olive", "tab:red"]
        bars(ax, labels, values, colors, log=True)
        ax.set_ylim(bottom=100)
        ax.axhline(600, color="k", ls="--", lw=1)
        ax.text(-0.4, 640, "target 600", fontsize=8)
        ax.set_title(f"1. instructions added per request\n(nginx alone: "
                     f"{cg['variants']['nginx']['per_request']:,.0f})", fontsize=10)
    ax = axes[0][1]
    if wk and "median_rps" in wk:
        ks = list(wk["median_rps"])
        bars(ax, ks, [wk["median_rps"][k] for k in ks],
             ["tab:gray", "tab:green", "tab:red"][:len(ks)])
        ax.set_title(f"2. throughput, 1 worker (req/s, median)\nmodule/nginx = "
                     f"{wk['ratio_module']:.3f} (target ≥ 0.97)", fontsize=10)
    ax = axes[0][2]
    if sc and sc.get("points"):
        for mode, color, what in (("thread_pool", "tab:green", "render"),
                                  ("sliced", "tab:orange", "complete scrape")):
            pts = sorted((x for x in sc["points"] if x["mode"] == mode), key=lambda x: x["samples"])
            if pts:
                ax.plot([x["samples"] for x in pts],
                        [x.get("render_s", x["ttfb_s"]) * 1e3 for x in pts], "o-",
                        color=color, label=f"{what} ({mode})")
        ax.axhline(10, color="k", ls="--", lw=1)
        ax.axvline(10000, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("exposition samples (lines)")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
        ax.set_title("3. /metrics render time (target: 10k samples < 10 ms)", fontsize=10)
    ax = axes[1][0]
    if sc and sc.get("harm"):
        labels = [f"{h['mode']}\n{h['samples'] / 1000:,.0f}k samples" for h in sc["harm"]]
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], [h["rps_ratio"] for h in sc["harm"]], 0.4,
               label="req/s scraped / alone", color="tab:blue")
        ax.bar([i + 0.2 for i in x], [h["p99_ratio"] for h in sc["harm"]], 0.4,
               label="p99 scraped / alone", color="tab:purple")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
        ax.axhline(0.8, color="tab:blue", ls="--", lw=1)
        ax.axhline(2, color="tab:purple", ls="--", lw=1)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("3. traffic while /metrics is scraped back to back\n(targets: req/s ≥ 0.8, "
                     "p99 ≤ 2)", fontsize=10)
    ax = axes[1][1]
    if mem and mem.get("through_nginx"):
        ks = list(mem["through_nginx"])
        bars(ax, [f"{k}\n({mem['through_nginx'][k]['zone_bytes_per_series']:.0f} B/series)" for k in ks],
             [mem["through_nginx"][k]["fit"] for k in ks], ["tab:green", "tab:cyan"][:len(ks)])
        if ctx_zone(mem) == "32m":
            ax.axhline(150000, color="k", ls="--", lw=1)
        ax.set_title(f"4. series that fit in a {ctx_zone(mem)} zone (target: 150k histograms)",
                     fontsize=10)
    ax = axes[1][2]
    if ffi and "ns_per_call" in ffi:
        ks = [k for k in ffi["ns_per_call"] if k != "empty_loop"]
        bars(ax, ks, [ffi["ns_per_call"][k] for k in ks],
             ["tab:red" if "shdict" in k else "tab:green" for k in ks], fmt="{:.1f}")
        ax.axhline(50, color="k", ls="--", lw=1)
        ax.set_ylabel("ns per call")
        ax.set_title("5. FFI call cost from LuaJIT (target: add_tokens < 50 ns)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ctx_zone(mem):
    for r in mem.get("through_nginx", {}).values():
        return r["zone"]
    return ""


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", help="the built ngx_http_gateway_metrics_module.so")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"), help="results directory")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections ({','.join(SECTIONS)})")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--note", default=os.environ.get("GM_BENCH_NOTE", ""),
                    help="a note for RESULTS.md (e.g. about machine load)")
    ap.add_argument("--from-json", metavar="RESULTS_JSON",
                    help="only rewrite RESULTS.md and chart.png (in --out) from a results.json")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            R = json.load(f)
        md = markdown(R, R.get("mode") == "smoke")
        with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
            f.write(md + "\n")
        if not args.no_chart:
            chart(R, os.path.join(args.out, "chart.png"))
        say(f"rewrote {os.path.join(args.out, 'RESULTS.md')} from {args.from_json}")
        return 0
    if not args.module:
        ap.error("--module is required")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s): {bad}")

    ctx = Ctx()
    ctx.p = SMOKE if args.smoke else FULL
    os.makedirs(args.out, exist_ok=True)
    ctx.work = tempfile.mkdtemp(prefix="gm-bench-")
    # A private copy: a concurrent scripts/build must not swap the module in mid-run.
    ctx.module = os.path.join(ctx.work, "ngx_http_gateway_metrics_module.so")
    shutil.copyfile(os.path.abspath(args.module), ctx.module)
    started = time.time()
    R = {"meta": machine(ctx.module), "module": os.path.abspath(args.module), "mode": "smoke" if args.smoke else "full", "errors": {},
         "note": args.note}
    say(f"gateway-metrics benchmarks ({R['mode']}): {R['meta']['cpu']}, {R['meta']['nproc']} CPUs, "
        f"{R['meta']['nginx']}, load average {R['meta']['loadavg_start']}")
    funcs = {"callgrind": section_callgrind, "wrk": section_wrk, "scrape": section_scrape,
             "memory": section_memory, "ffi": section_ffi, "workers2": section_workers2}
    try:
        for s in SECTIONS:
            if s not in only:
                continue
            try:
                R[s] = funcs[s](ctx)
            except Exception:
                R["errors"][s] = traceback.format_exc()
                say(f"!! section {s} failed:\n{R['errors'][s]}")
    finally:
        bl.kill_started()
        if not os.environ.get("GM_KEEP_TMP"):
            subprocess.run(["rm", "-rf", ctx.work])
    R["meta"]["loadavg_end"] = sh("cat /proc/loadavg")
    R["meta"]["duration_s"] = round(time.time() - started)
    bl.write_json(os.path.join(args.out, "results.json"), R)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(markdown(R, args.smoke) + "\n")
    if not args.no_chart:
        try:
            chart(R, os.path.join(args.out, "chart.png"))
            say(f"\nchart: {os.path.join(args.out, 'chart.png')}")
        except ImportError:
            say("\nchart skipped: matplotlib not installed")
    say(f"results: {os.path.join(args.out, 'RESULTS.md')} (load average at the end "
        f"{R['meta']['loadavg_end']}; {R['meta']['duration_s']} s)")
    return 1 if R["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
