"""The results: machine description, RESULTS.md, results.json, chart.png."""

import datetime
import hashlib
import json
import os
import platform
import subprocess

import gmharness as gm

from .common import NAMESPACES, fmt_b, fmt_t, paired_ratio, ratio


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
        "nginx": sh(f"{gm.NGINX} -v"), "rustc": sh("rustc -V"), "valgrind": sh("valgrind --version"),
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
    us = R.get("usage")
    if us and "added" in us and "usage" in us["added"]:
        j = us["added"]["usage"]["/v1/json"]
        k = us["per_chunk"]["usage"] - us["per_chunk"]["proxy"]
        a(f"| 1u | native usage: ≤ 2,500 instructions added per JSON request | {j:,.0f} | "
          f"{yes(j <= 2500)} |")
        a(f"| 1u | native usage: ≤ 300 instructions added per further SSE chunk | {k:,.0f} | "
          f"{yes(k <= 300)} |")
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
    if us and "cost" in us and "per_chunk" in us:
        a("## Native usage reading (callgrind, per proxied request)")
        a("")
        a("| configuration | JSON | JSON, 8,000-byte answer | JSON, two shapes in turn "
          "| SSE 4 chunks | SSE 20 | SSE 200 | per further chunk |")
        a("|---|---|---|---|---|---|---|---|")
        for name, c in us["cost"].items():
            a(f"| {name} | " + " | ".join(f"{c[p]:,.0f}" if p in c else "" for p in
                                          ("/v1/json", "/v1/json_long", "/v1/json_alt",
                                           "/v1/sse/4", "/v1/sse/20", "/v1/sse/200"))
              + f" | {us['per_chunk'][name]:,.0f} |")
        pp = us.get("per_chunk_providers", {})
        if pp.get("usage") and pp.get("proxy"):
            a("")
            a("Per further chunk over proxying, other providers' streams (slope from 20 to 200 "
              "content events): " + ", ".join(f"{fmt} {pp['usage'][fmt] - pp['proxy'][fmt]:,.0f}"
                                             for fmt in pp["usage"]) + ".")
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
              "and the scraper share two CPUs. *sliced*: slices of at most ~100 µs / 256 KiB "
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
    s10 = R.get("scrape10k")
    if s10 and s10.get("modules"):
        a(f"## Complete scrapes of {s10['stored']:,} stored series")
        a("")
        a(f"{s10['scrapes']} scrapes per module and page on an idle worker, each on a new "
          "connection, read to the last byte by a client that discards the page (min / median / "
          "max); worker CPU: the nginx worker's CPU time per scrape (`/proc/PID/schedstat`); "
          "floor: the same bytes served as a static file; curl: the page and the floor read by "
          "curl (its `time_total`); *baseline*: `GM_BASELINE_MODULE`.")
        a("")
        a("| module | page | complete scrape | worker CPU | floor | curl: page; floor | harness client "
          "| harm: req/s, p99 |")
        a("|---|---|---|---|---|---|---|---|")
        mm = lambda x: " / ".join(fmt_t(x[k]) for k in ("min_s", "median_s", "max_s"))  # noqa: E731
        for label, by in s10["modules"].items():
            for views, x in by.items():
                if views == "harm":
                    continue
                h = by.get("harm") if views == "default" else None
                hc = x.get("harness_client")
                cu = f"{mm(x['curl'])}; {mm(x['curl_floor'])}" if x.get("curl") else ""
                a(f"| {label} | {views}: {x['samples']:,} samples, {fmt_b(x['bytes'])} | {mm(x)} | "
                  f"{mm(x['worker_cpu'])} | {mm(x['floor'])} | {cu} | {mm(hc) if hc else ''} | "
                  + (f"x{h['rps_ratio']:.2f}, x{h['p99_ratio']:.2f}" if h else "") + " |")
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


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
