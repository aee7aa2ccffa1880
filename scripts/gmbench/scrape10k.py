"""Section scrape10k: complete scrapes of 10,000 stored request series on an idle worker
(min / median / max of 20, the default families and with the `gateway_*` copies off), the
client's own floor (the same page served by the same nginx as a static file, read by the same
client), the same two read by curl (a standard client, its own `time_total`), and the harm of
back-to-back scrapes to concurrent traffic at that size.

With GM_BASELINE_MODULE=path/to/other.so the same figures are measured for that module too,
alternating the two in one run, and the ratios printed (e.g. the build before a change)."""

import os
import shutil
import subprocess
import tempfile
import time

import gmharness as gm

from .common import REQ_PATH, bench_nginx, fill_namespaces, fmt_b, fmt_t, gm_http, head, median
from .common import ratio, say, wrk_script
from .scrape import discard_response, harm

STORED = 10_000
SCRAPES = 20
VIEWS_OFF = "    gateway_metrics_views -gateway_requests_total -gateway_request_duration_seconds;\n"


def cpu_ns(pid):
    """CPU time a process has run so far, in ns (the scheduler's figure)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def timed(port, path, n, worker=None, cpu=None):
    """n complete reads of `path`, each on a fresh connection (the clock starts once connected);
    with `worker` (its pid), the CPU time the worker spent on each is appended to `cpu` (wall
    clock figures move with the machine's load, this one much less)."""
    raw = gm.request_bytes(path)
    out = []
    for _ in range(n):
        c = gm.Conn(port)
        try:
            c0 = cpu_ns(worker) if worker else 0
            t0 = time.perf_counter()
            c.sock.sendall(raw)
            st = discard_response(c.sock)
            out.append(time.perf_counter() - t0)
            if worker:
                cpu.append((cpu_ns(worker) - c0) / 1e9)
        finally:
            c.close()
        if st != 200:
            raise RuntimeError(f"{path}: HTTP {st}")
    return out


def curl_timed(port, path, n, worker, cpu):
    """n complete reads of `path` by curl (one process and connection each, the body to
    /dev/null; curl's own time_total, connection included), the worker's CPU time of each
    appended to `cpu`."""
    out = []
    for _ in range(n):
        c0 = cpu_ns(worker)
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                            f"http://127.0.0.1:{port}{path}"],
                           capture_output=True, text=True, timeout=120)
        cpu.append((cpu_ns(worker) - c0) / 1e9)
        code, t = (r.stdout.split() + ["", ""])[:2]
        if r.returncode != 0 or code != "200":
            raise RuntimeError(f"curl {path}: rc {r.returncode}, {r.stdout} {r.stderr}")
        out.append(float(t))
    return out


def mmm(ts):
    return {"min_s": min(ts), "median_s": median(ts), "max_s": max(ts), "all_s": ts}


def fmt_mmm(x):
    return " / ".join(fmt_t(x[k]) for k in ("min_s", "median_s", "max_s"))


def run(ctx):
    head(f"scrape10k. complete scrapes of {STORED:,d} stored series (min / median / max of "
         f"{SCRAPES}), client floor, harm")
    n = 200 if ctx.p.get("cg_layouts") == 1 else STORED
    scrapes = 3 if n < STORED else SCRAPES
    modules = [("this build", ctx.module)]
    if os.environ.get("GM_BASELINE_MODULE"):
        modules.insert(0, ("baseline", os.path.abspath(os.environ["GM_BASELINE_MODULE"])))
    # Readable by nginx's workers (the work directory is private to this user).
    page_dir = tempfile.mkdtemp(prefix="gm-bench-page-")
    os.chmod(page_dir, 0o755)
    page_file = os.path.join(page_dir, "page.txt")
    static = f"""
        location = /page.txt {{ gateway_metrics off; alias {page_file}; }}
"""
    res = {"stored": n, "scrapes": scrapes, "modules": {}}
    script = wrk_script(os.path.join(ctx.work, "scrape10k-ns.lua"),
                        [f"t{i:09d}" for i in range(10)], REQ_PATH)
    for views, http_extra in (("default", ""), ("views off", VIEWS_OFF)):
        servers = {}
        try:
            for label, so in modules:
                servers[label] = bench_nginx(
                    gm_http(zone="256m", http_extra=http_extra, extra=static), module=so,
                    workers=1, name="scrape10k", workdir=ctx.work).start()
                fill_namespaces(servers[label].port, 0, n)
            # Same page size for the floor: the page of the first module, saved once.
            port0 = servers[modules[0][0]].port
            page = gm.scrape_timed(port0)
            with open(page_file, "wb") as f:
                f.write(page["body"])
            os.chmod(page_file, 0o644)
            size, samples = page["bytes"], page["samples"]
            del page
            say(f"  {views}: {samples:,d} samples, {fmt_b(size)}")
            fcpu = []
            floor = mmm(timed(port0, "/page.txt", scrapes, servers[modules[0][0]].worker_pids()[0],
                              fcpu))
            floor["worker_cpu"] = mmm(fcpu)
            say(f"    client floor (same bytes as a static file):  {fmt_mmm(floor)}  "
                f"[worker CPU {fmt_mmm(floor['worker_cpu'])}]")
            per = {label: [] for label, _ in modules}
            cpu = {label: [] for label, _ in modules}
            # Alternating the modules, a few scrapes at a time: machine noise hits both.
            for _ in range(scrapes // 5 or 1):
                for label, _ in modules:
                    srv = servers[label]
                    per[label] += timed(srv.port, "/metrics", min(5, scrapes),
                                        srv.worker_pids()[0], cpu[label])
            for label, _ in modules:
                pt = mmm(per[label])
                pt.update(bytes=size, samples=samples, floor=floor, worker_cpu=mmm(cpu[label]))
                res["modules"].setdefault(label, {})[views] = pt
                say(f"    {label:10s} complete scrape: {fmt_mmm(pt)}  (min / median / max; target "
                    f"<= 30 ms, stable)  [worker CPU {fmt_mmm(pt['worker_cpu'])}]")
            # curl, a standard client, on this build and on the static file, alternating.
            last = servers[modules[-1][0]]
            wpid = last.worker_pids()[0]
            ct = {"/metrics": [], "/page.txt": []}
            cc = {"/metrics": [], "/page.txt": []}
            for _ in range(scrapes // 5 or 1):
                for path in ct:
                    ct[path] += curl_timed(last.port, path, min(5, scrapes), wpid, cc[path])
            for path, what in (("/metrics", "complete scrape"), ("/page.txt", "static file")):
                x = mmm(ct[path])
                x["worker_cpu"] = mmm(cc[path])
                key = "curl" if path == "/metrics" else "curl_floor"
                res["modules"][modules[-1][0]][views][key] = x
                say(f"    {modules[-1][0]:10s} read by curl, {what}: {fmt_mmm(x)}  "
                    f"[worker CPU {fmt_mmm(x['worker_cpu'])}]")
            # The test harness's client (gmharness.scrape_timed: counts the lines and keeps the
            # page) on the same server: what the client alone adds to a figure.
            hc = []
            for _ in range(min(5, scrapes)):
                t0 = time.perf_counter()
                gm.scrape_timed(servers[modules[-1][0]].port).pop("body")
                hc.append(time.perf_counter() - t0)
            res["modules"][modules[-1][0]][views]["harness_client"] = mmm(hc)
            say(f"    {modules[-1][0]:10s} read by the harness's client (gm.scrape_timed, "
                f"{len(hc)} scrapes): {fmt_mmm(mmm(hc))}")
            if len(modules) == 2:
                a, b = (res["modules"][l][views] for l, _ in modules)
                say(f"    ratio this build / baseline (median): "
                    f"{ratio(b['median_s'], a['median_s']):.2f}; worker CPU "
                    f"{ratio(b['worker_cpu']['median_s'], a['worker_cpu']['median_s']):.2f}")
            # GM_SCRAPE10K_HARM=0: scrape times only (while iterating).
            if views == "default" and os.environ.get("GM_SCRAPE10K_HARM") != "0":
                for label, _ in modules:
                    h = harm(ctx, servers[label], script, ctx.p["harm_secs"], ctx.p["harm_reps"])
                    h.pop("runs", None)
                    res["modules"][label]["harm"] = h
                    say(f"    harm ({label}): traffic {h['rps_alone']:,.0f} -> "
                        f"{h['rps_scraped']:,.0f} req/s (x{h['rps_ratio']:.2f}, target >= 0.80), "
                        f"p99 {fmt_t(h['p99_alone_s'])} -> {fmt_t(h['p99_scraped_s'])} "
                        f"(x{h['p99_ratio']:.2f}, target <= 2); "
                        f"{h['scrapes_per_run']:.0f} scrapes/run of {fmt_t(h['scrape_s'])}")
        finally:
            for s in servers.values():
                s.cleanup()
    shutil.rmtree(page_dir, ignore_errors=True)
    return res
