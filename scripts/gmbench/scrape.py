"""Section 3, scrape: /metrics render time and size by series count, and the harm of
back-to-back scraping to concurrent traffic."""

import math
import os
import re
import threading
import time

import gmharness as gm

from .common import (REQ_PATH, bench_nginx, fill_namespaces, fmt_b, fmt_t, gm_http, head, median,
                     ratio, run_wrk, say, wrk_script)


def stored_series(page):
    return int(gm.sample_value(page["body"], "gateway_metrics_series", -1))


def keepalive_check(port, n):
    """Scrapes n times over one keep-alive connection (as Prometheus does); returns (failed, n).
    A failed scrape (non-200) is followed by a new connection."""
    failed = 0
    c = gm.Conn(port)
    try:
        for _ in range(n):
            try:
                gm.scrape_timed(0, conn=c)
            except RuntimeError:
                failed += 1
                c.close()
                c = gm.Conn(port)
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
            raw = gm.request_bytes("/metrics")
            while not self.stop_ev.is_set():
                c = gm.Conn(self.port)
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
                r = run_wrk(srv.port, secs, threads=1, conns=ctx.p["wrk_conns"], script=script)
            finally:
                if sc:
                    sc.stop_ev.set()
                    sc.join(120)
            if sc:
                if sc.error:
                    raise sc.error
                out["scrapes"].append(len(sc.times))
                out["scrape_s"].append(median(sc.times))
                out["scrape_failed"] = out.get("scrape_failed", 0) + sc.failed
            out[mode].append(r)
    m = lambda mode, k: median([r[k] for r in out[mode]])  # noqa: E731
    return {
        "rps_alone": m("alone", "rps"), "rps_scraped": m("scraped", "rps"),
        "p99_alone_s": m("alone", "p99_s"), "p99_scraped_s": m("scraped", "p99_s"),
        "scrapes_per_run": median(out["scrapes"]), "scrape_s": median(out["scrape_s"]),
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


def run(ctx):
    head("3. scrape cost: /metrics render time and size; harm to concurrent traffic")
    p = ctx.p
    # sliced: the default (rendered in slices on the event loop); thread_pool: opt-in.
    modes = {"thread_pool": "default", "sliced": None}
    servers = {}
    res = {"points": [], "harm": []}
    try:
        for mode, pool in modes.items():
            servers[mode] = bench_nginx(gm_http(zone="256m", render_pool=pool), module=ctx.module,
                                        workers=1, name="scrape", workdir=ctx.work).start()
        have = {m: 0 for m in servers}

        def fill_to(mode, n):
            fill_namespaces(servers[mode].port, have[mode], n)
            have[mode] = max(have[mode], n)

        # Calibrate exposition samples per stored series (the derived views make several).
        cal = {}
        for n in (10, 20):
            fill_to("thread_pool", n)
            page = gm.scrape_timed(servers["thread_pool"].port)
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
        script = wrk_script(os.path.join(ctx.work, "scrape-ns.lua"),
                            [f"t{i:09d}" for i in range(10)], REQ_PATH)
        for n in sorted(points):
            labels = points[n]
            for mode in servers:
                fill_to(mode, n)
                # Timed scrapes each on a fresh connection (the clock starts once connected):
                # see keepalive_check for why not one keep-alive connection.
                port = servers[mode].port
                first = gm.scrape_timed(port)
                body = first.pop("body")
                pages = [first]
                reps = 15 if first["bytes"] < 5e6 else (5 if first["bytes"] < 1e8 else 3)
                for _ in range(reps - 1):
                    pg = gm.scrape_timed(port)
                    pg.pop("body")
                    pages.append(pg)
                ka_fail, ka_n = keepalive_check(port, 4 if first["bytes"] < 1e8 else 3)
                pt = {
                    "mode": mode, "labels": labels, "stored": int(gm.sample_value(
                        body, "gateway_metrics_series", -1)),
                    "samples": first["samples"], "bytes": first["bytes"],
                    "ttfb_s": median([x["ttfb_s"] for x in pages]),
                    "total_s": median([x["total_s"] for x in pages]), "reps": len(pages),
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
