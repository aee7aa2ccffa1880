"""Section 6, workers2: exact counts under contention and throughput with worker_processes 2."""

import os
import re
import time

import gmharness as gm

from .common import (NAMESPACES, REQ_PATH, base_http, bench_nginx, gm_http, head, median,
                     paired_ratio, ratio, say, wrk_arms, wrk_script)

W2_HEADER = '            add_header X-Worker $pid always;'


def run(ctx):
    head("6. two workers: exact counts under contention, throughput")
    p = ctx.p
    res = {}
    srv = bench_nginx(gm_http(v1=W2_HEADER, listen=" reuseport"), module=ctx.module, workers=2,
                      name="w2", workdir=ctx.work)
    try:
        srv.start()
        total = p["w2_requests"]
        raws = [gm.request_bytes(REQ_PATH, {"X-Namespace": NAMESPACES[i % len(NAMESPACES)]})
                for i in range(total)]
        t0 = time.time()
        st, workers = gm.pipeline_many(srv.port, raws, conns=p["w2_conns"], batch=64,
                                       want_header=b"x-worker")
        el = time.time() - t0
        if set(st) != {200}:
            raise RuntimeError(f"unexpected statuses {st}")
        counted = None
        deadline = time.time() + 10
        while True:
            body = gm.scrape_timed(srv.port)["body"]
            counted = sum(v for _, v in gm.samples_named(body, "http_requests_total"))
            if counted >= total or time.time() > deadline:
                break
            time.sleep(0.1)
        per_ns = {}
        for lbl, v in gm.samples_named(body, "http_requests_total"):
            ns = re.search(r'namespace="([^"]*)"', lbl).group(1)
            per_ns[ns] = per_ns.get(ns, 0) + v
        hist_count = sum(v for _, v in gm.samples_named(body, "http_request_duration_seconds_count"))
        inf = sum(v for lbl, v in gm.samples_named(body, "http_request_duration_seconds_bucket")
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

    script = wrk_script(os.path.join(ctx.work, "w2-ns.lua"), NAMESPACES, REQ_PATH)
    servers = {}
    try:
        servers["nginx"] = bench_nginx(base_http(listen=" reuseport"), workers=2, name="w2",
                                       workdir=ctx.work).start()
        servers["module"] = bench_nginx(gm_http(listen=" reuseport"), module=ctx.module, workers=2,
                                        name="w2", workdir=ctx.work).start()
        runs = wrk_arms(ctx, servers, p["w2_wrk_secs"], p["w2_wrk_reps"], 2, 2 * p["wrk_conns"],
                        script)
    finally:
        for s in servers.values():
            s.cleanup()
    res["wrk"] = {k: median([r["rps"] for r in v]) for k, v in runs.items()}
    res["wrk_runs"] = runs
    res["ratio_module"] = ratio(res["wrk"]["module"], res["wrk"]["nginx"])
    res["ratio_module_paired"] = paired_ratio(runs, "module", "nginx")
    say(f"  wrk -t2 -c{2 * p['wrk_conns']}: nginx {res['wrk']['nginx']:,.0f} req/s, module "
        f"{res['wrk']['module']:,.0f} req/s -> ratio {res['ratio_module']:.3f} (median of the "
        f"per-round ratios: {res['ratio_module_paired']:.3f})")
    return res
