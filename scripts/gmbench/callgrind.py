"""Section 1, callgrind: CPU instructions per request, the difference of two runs under
`valgrind --tool=callgrind`, for nginx alone and with the module in several configurations."""

import os
import re
import signal
import subprocess

import gmharness as gm

from .common import (LUA_WAY, LUA_WAY_DICT, NAMESPACES, REQ_PATH, base_http, bench_nginx, fmt_int,
                     gm_http, head, median, ratio, say)

LUA_GM_CALLS = """            log_by_lua_block {
                local gm = require "resty.gateway_metrics"
                gm.set_model("gpt-4o")
                gm.add_tokens(120, 30)
            }"""
LUA_NOOP = """            log_by_lua_block { return }"""
PRICE = "    gateway_metrics_model_price gpt-4o input=2.50 output=10.00;\n"
EXEMPLARS = "    gateway_metrics_exemplars $http_traceparent;\n"
# Requests of the exemplar variants carry a W3C trace context (a new one per request).
TRACED = "traceparent"

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
    "nginx_traced": ("nginx alone, requests with a `traceparent` header", False, False,
                     base_http(), REQ_PATH, TRACED),
    "module_traced": ("module, default families, requests with a `traceparent` header "
                      "(exemplars off)", True, False, gm_http(), REQ_PATH, TRACED),
    "module_exemplars": ("module + `gateway_metrics_exemplars $http_traceparent`", True, False,
                         gm_http(http_extra=EXEMPLARS), REQ_PATH, TRACED),
}


def request_headers(i, traced):
    h = {"X-Namespace": NAMESPACES[i % len(NAMESPACES)]}
    if traced:
        h["traceparent"] = f"00-{0x5eed0000 + i:032x}-{i + 1:016x}-01"
    return h


def run(ctx):
    head("1. per-request cost: CPU instructions (valgrind --tool=callgrind)")
    p = ctx.p
    warm, n1, n2 = p["cg_warm"], p["cg_n1"], p["cg_n2"]
    names = ["nginx", "module"]
    if gm.HAVE_LUA:
        names += ["module+lua_calls", "lua_noop", "lua_way"]
    if p["cg_content"]:
        names += ["module_loaded", "module_off", "module_thread_pool", "nginx_content", "module_content",
                  "nginx_traced", "module_traced", "module_exemplars"]
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
        desc, module, lua, http, path, *traced = CG_VARIANTS[name]
        raws = [gm.request_bytes(path, request_headers(i, traced))
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
                irs.append(callgrind_run(ctx, pad + http, module, raws[:warm + n], out, name,
                                         lua=lua))
                files[(name, n, layout)] = out
            totals.append(irs)
            per.append((irs[1] - irs[0]) / (n2 - n1))
        med = median(per)
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
    if all(k in v for k in ("nginx_traced", "module_traced", "module_exemplars")):
        added["module_traced"] = v["module_traced"] - v["nginx_traced"]
        added["module_exemplars"] = v["module_exemplars"] - v["nginx_traced"]
        added["exemplars_only"] = v["module_exemplars"] - v["module_traced"]
        say(f"  -> with exemplars on (a valid traceparent on every request) the module adds "
            f"{added['module_exemplars']:,.0f} ({added['exemplars_only']:,.0f} more than with "
            f"them off: reading and parsing the traceparent, finding the series' exemplar "
            f"slots, writing one)")
    res["added"] = added
    res["target_600_met"] = added["module"] <= 600

    # Where the module's instructions go: per-request difference of function profiles.
    try:
        def per_fn(name):
            mid = res["variants"][name]["median_layout"]
            f1 = callgrind_functions(files[(name, n1, mid)])
            f2 = callgrind_functions(files[(name, n2, mid)])
            return {k: (f2.get(k, 0) - f1.get(k, 0)) / (n2 - n1) for k in set(f1) | set(f2)}

        base = per_fn("nginx")
        for name in ("module", "lua_way"):
            if name not in v:
                continue
            mod = per_fn(name)
            diff = {k: mod.get(k, 0) - base.get(k, 0) for k in set(mod) | set(base)}
            top = sorted(diff.items(), key=lambda kv: -kv[1])[:14]
            res.setdefault("top_functions", {})[name] = [(k, round(d, 1))
                                                         for k, d in top if d >= 1]
            say(f"  top functions added per request ({name} minus nginx):")
            for fn, d in res["top_functions"][name][:10]:
                say(f"    {d:9,.1f}  {fn}")
    except Exception as e:  # the breakdown is a bonus; the totals above stand
        say(f"  (function breakdown unavailable: {e})")
    return res


# ---- callgrind output ---------------------------------------------------------------------------

def callgrind_run(ctx, http, module, raws, out, name, lua=False, lua_dirs=(), timeout=300,
                  exclude=()):
    """Runs nginx (with the module if `module`) in one process under callgrind, sends `raws`
    one by one over one keep-alive connection, and returns the run's total instructions. With
    GM_CG_INSTR=1 the output has per-instruction costs (for addr2line; GM_KEEP_TMP=1 keeps it).
    The functions in `exclude` are not counted, nor what they call (callgrind stops collecting
    on their entry and starts again on their return)."""
    srv = bench_nginx(http, module=ctx.module if module else None, lua=lua, workers=1,
                      single_process=True, name="cg", workdir=ctx.work, lua_dirs=lua_dirs,
                      wrapper=["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}"]
                      + ([f"--toggle-collect={f}" for f in exclude] + ["--collect-atstart=yes"]
                         if exclude else [])
                      + (["--dump-instr=yes"] if os.environ.get("GM_CG_INSTR") else []))
    try:
        srv.start(timeout=180)
        ok = gm.sequential(srv.port, raws)
        if ok != len(raws):
            raise RuntimeError(f"{name}: {len(raws) - ok} requests failed")
        rc = srv.stop(signal.SIGQUIT, timeout=timeout)
        if rc != 0:
            raise RuntimeError(f"{name}: nginx under valgrind exited with {rc}")
    finally:
        srv.cleanup()
    return callgrind_total(out)


def callgrind_total(path):
    """Total Ir of a callgrind output file."""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary in {path}")


_ANNO = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def callgrind_functions(path):
    """{function (file:function [object]): exclusive Ir} from callgrind_annotate."""
    r = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                       capture_output=True, text=True, timeout=300)
    out = {}
    in_funcs = False
    for line in r.stdout.splitlines():
        if "file:function" in line:
            in_funcs = True
            continue
        if not in_funcs:
            continue
        if line.startswith("----") or not line.strip():
            if out and not line.strip():
                break
            continue
        m = _ANNO.match(line)
        if m and "PROGRAM TOTALS" not in m.group(2):
            k = function_key(m.group(2))
            out[k] = out.get(k, 0) + int(m.group(1).replace(",", ""))
    return out


def function_key(name):
    """'file:function [object]' -> 'function': callgrind_annotate splits a function by the
    source file of its inlined code; add those parts up."""
    obj = ""
    m = re.match(r"^(.*) \[([^\]]*)\]$", name)
    if m:
        name, obj = m.group(1), os.path.basename(m.group(2))
    if name.startswith("???:"):
        name = name[4:]
    else:
        m = re.match(r"^(?:[^:]*?\.(?:rs|c|h|S|s|cc|cpp)):(.*)$", name)
        name = m.group(1) if m else name
    if name.startswith("0x"):  # no symbol: say where it is (LuaJIT has none; JIT code none either)
        return f"{name.split(chr(39))[0]} in {obj or 'JIT-compiled code'}"
    return name
