#!/usr/bin/env python3
"""The benchmarks behind scripts/bench (run that, not this: it builds the module first).

Sections (each prints its figures and its ratio against a baseline measured in the same run):
  callgrind  CPU instructions per request (valgrind --tool=callgrind, difference of two runs)
  usage      the same per proxied LLM request (JSON, SSE streams): native usage reading vs Lua
  wrk        throughput with and without the module (alternating runs, medians)
  scrape     /metrics render time and size by series count; harm to concurrent traffic
  scrape10k  complete scrapes of 10,000 stored series (min/median/max of 20), views off, harm
  memory     zone bytes per series, series that fit in a 32 MiB zone
  ffi        ns per call from LuaJIT: gm.add_tokens vs ngx.shared.DICT:incr
  workers2   exact counts and throughput with worker_processes 2
Writes RESULTS.md, results.json and chart.png into --out (default: bench/)."""

# The sections are in scripts/gmbench/ (one module each), the nginx harness in scripts/gmharness/;
# both are importable from here (the script's directory) and, after scripts/setup, from the venv.

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import gmharness as gm
from gmbench import SECTIONS
from gmbench.common import FULL, ROOT, SMOKE, Ctx, say
from gmbench.report import chart, machine, markdown, sh, write_json


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
    try:
        for s in SECTIONS:
            if s not in only:
                continue
            try:
                R[s] = SECTIONS[s](ctx)
            except Exception:
                R["errors"][s] = traceback.format_exc()
                say(f"!! section {s} failed:\n{R['errors'][s]}")
    finally:
        gm.kill_started()
        if not os.environ.get("GM_KEEP_TMP"):
            subprocess.run(["rm", "-rf", ctx.work])
    R["meta"]["loadavg_end"] = sh("cat /proc/loadavg")
    R["meta"]["duration_s"] = round(time.time() - started)
    write_json(os.path.join(args.out, "results.json"), R)
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
