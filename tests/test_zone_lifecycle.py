"""The zone across a worker's life: the in-flight gauge through reloads and killed workers (each
live worker has its own lane), bucket layouts the zone cannot remember (the configuration is
refused, nothing is recorded in wrong buckets), and a large zone that costs nothing until used."""

import os
import re
import signal
import socket
import subprocess

import pytest

import gmharness as gm
from gmharness import Gate, Nginx, wait_for


def start_request(port, path, ns):
    """Sends a request and returns its socket (the response is read by finish())."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Namespace: {ns}\r\nConnection: close\r\n\r\n"
              .encode())
    return s


def finish(s):
    data = b""
    with s:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    return int(data.split(b" ", 2)[1]) if data else 0


def gauge(n, ns):
    return n.metrics().get1("active_connections", namespace=ns)


ACTIVE_CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics_namespace $http_x_namespace;
    server {{
        listen 127.0.0.1:{{port}};
        gateway_metrics on;
        location /a/ {{ proxy_pass http://127.0.0.1:{a}; proxy_read_timeout 60s; }}
        location /b/ {{ proxy_pass http://127.0.0.1:{b}; proxy_read_timeout 60s; }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
        # {gen}
    }}
"""


def test_in_flight_gauge_across_a_reload_with_requests_in_flight():
    with Gate() as ga, Gate() as gb:
        n = Nginx(ACTIVE_CONF.format(a=ga.port, b=gb.port, gen=0), workers=1)
        with n:
            ns = "inflight"
            old = n.worker_pids()
            a = start_request(n.port, "/a/", ns)
            ga.wait_arrived(1)
            wait_for(lambda: gauge(n, ns), lambda v: v == 1, what="1 in flight")
            # reload: the old worker keeps serving its request while a new one starts
            n.write(ACTIVE_CONF.format(a=ga.port, b=gb.port, gen=1), workers=1)
            assert n.cmd("-s", "reload").returncode == 0
            new = wait_for(lambda: set(n.worker_pids()) - set(old), lambda p: len(p) == 1,
                           what="the new worker")
            # (until the old worker has closed its listening socket it may still accept)
            wait_for(n.error_log, lambda t: f"{old[0]}#{old[0]}: gracefully shutting down" in t,
                     what="the old worker shutting down")
            bs = [start_request(n.port, "/b/", ns) for _ in range(3)]
            gb.wait_arrived(3)
            wait_for(lambda: gauge(n, ns), lambda v: v == 4, what="4 in flight")
            # the old worker finishes its request and exits: the new worker's 3 remain
            ga.release()
            assert finish(a) == 200
            wait_for(lambda: set(n.worker_pids()), lambda p: p == new, what="old worker gone")
            assert gauge(n, ns) == 3
            more = start_request(n.port, "/b/", ns)
            gb.wait_arrived(4)
            wait_for(lambda: gauge(n, ns), lambda v: v == 4, what="one more: 4")
            # another reload while the new worker has 4 in flight: still exact
            n.write(ACTIVE_CONF.format(a=ga.port, b=gb.port, gen=2), workers=1)
            assert n.cmd("-s", "reload").returncode == 0
            wait_for(lambda: set(n.worker_pids()) - new, lambda p: len(p) == 1,
                     what="a third worker")
            assert gauge(n, ns) == 4
            gb.release()
            assert [finish(s) for s in bs + [more]] == [200] * 4
            wait_for(lambda: gauge(n, ns), lambda v: v == 0, what="back to 0")
            assert n.metrics().get1("gateway_metrics_dropped_updates_total", zone="gm",
                                    reason="worker_lanes_full") == 0
            assert n.crashes() == []


def test_in_flight_gauge_after_a_worker_is_killed():
    with Gate() as ga, Gate() as gb:
        n = Nginx(ACTIVE_CONF.format(a=ga.port, b=gb.port, gen=0), workers=1)
        with n:
            ns = "killed"
            [w] = n.worker_pids()
            held = [start_request(n.port, "/a/", ns) for _ in range(2)]
            ga.wait_arrived(2)
            wait_for(lambda: gauge(n, ns), lambda v: v == 2, what="2 in flight")
            os.kill(w, signal.SIGKILL)
            for s in held:
                assert finish(s) == 0  # connection reset with the worker
            wait_for(lambda: n.worker_pids(), lambda p: len(p) == 1 and p[0] != w,
                     what="the respawned worker")
            # the dead worker's requests are no longer in flight
            wait_for(lambda: gauge(n, ns), lambda v: v == 0, what="dead worker's count gone")
            bs = [start_request(n.port, "/b/", ns) for _ in range(3)]
            gb.wait_arrived(3)
            wait_for(lambda: gauge(n, ns), lambda v: v == 3, what="3 in flight")
            gb.release()
            assert [finish(s) for s in bs] == [200] * 3
            wait_for(lambda: gauge(n, ns), lambda v: v == 0, what="back to 0")


LAYOUT_CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics_buckets {buckets};
    server {{
        listen 127.0.0.1:{{port}};
        gateway_metrics on;
        location / {{ return 200 "ok\\n"; }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""


def les(m):
    return sorted({float(dict(k)["le"]) for k in m.select("http_request_duration_seconds_bucket")})


def test_a_bucket_layout_the_zone_cannot_remember_fails_the_reload():
    first = "0.1 0.3 0.5"
    n = Nginx(LAYOUT_CONF.format(buckets=first), workers=1)
    with n:
        # the zone holds 16 layouts: the 4 defaults/firsts (duration, ttft, throughput, time per
        # output token), then 12 other duration lists
        for i in range(12):
            n.write(LAYOUT_CONF.format(buckets=f"0.{i + 1}1 9"), workers=1)
            n.reload()
        for _ in range(5):
            assert n.get("/")[0] == 200
        m = wait_for(n.metrics, lambda m: m.total("http_requests_total") >= 5, what="recorded")
        assert les(m) == [0.121, 9, float("inf")]
        [w] = n.worker_pids()
        log_before = len(n.error_log())
        # a 17th layout: the reload is refused and the running configuration keeps working
        n.write(LAYOUT_CONF.format(buckets="0.001 0.002 0.003"), workers=1)
        assert n.cmd("-s", "reload").returncode == 0
        err = wait_for(lambda: n.error_log()[log_before:],
                       lambda t: "cannot register the bucket layout" in t, what="the error")
        assert "gateway_metrics_buckets" in err and "[emerg]" in err, err
        assert n.worker_pids() == [w]
        for _ in range(5):
            assert n.get("/")[0] == 200
        m = wait_for(n.metrics, lambda m: m.total("http_requests_total") >= 10, what="recorded")
        assert les(m) == [0.121, 9, float("inf")]
        assert m.get1("http_request_duration_seconds_count", method="GET", endpoint="/",
                      namespace="", upstream="") == 10
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm",
                      reason="layout_table_full") == 0
        # a list the zone knows is accepted again, with every request in its buckets
        n.write(LAYOUT_CONF.format(buckets=first), workers=1)
        n.reload()
        m = n.metrics()
        assert les(m) == [0.1, 0.3, 0.5, float("inf")]
        assert m.get1("http_request_duration_seconds_count", method="GET", endpoint="/",
                      namespace="", upstream="") == 10
        assert n.crashes() == []


# Run from a fresh interpreter: a child's peak RSS counts what it had before exec, i.e. the
# pages it shared with its parent when forked (pytest's own, hundreds of MB late in a run).
MEASURE = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, usage = os.wait4(p.pid, 0)
sys.stderr.buffer.write(err)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def max_rss_kb(args):
    """Runs a command; returns (exit code, stderr, its peak resident set in KiB)."""
    r = subprocess.run(["python3", "-c", MEASURE, *args], capture_output=True, text=True,
                       timeout=60)
    rc, rss = r.stdout.split()
    return int(rc), r.stderr, int(rss)


def test_a_large_zone_costs_nothing_until_used():
    conf = """
        gateway_metrics_zone gm 2g;
        server {
            listen 127.0.0.1:{port};
            gateway_metrics on;
            location / { return 200 "ok\\n"; }
            location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        }
    """
    n = Nginx(conf, workers=1)
    # nginx -t maps and initialises the zone: only its header is written
    rc, err, rss = max_rss_kb([gm.NGINX, "-p", n.dir, "-c", n.conf, "-t"])
    assert rc == 0, err
    assert rss < 200 * 1024, f"nginx -t peaked at {rss} KiB"
    with n:
        for _ in range(20):
            assert n.get("/")[0] == 200
        m = wait_for(n.metrics, lambda m: m.total("http_requests_total") >= 20, what="recorded")
        assert m.get1("gateway_metrics_zone_size_bytes", zone="gm") > 2_000_000_000
        for pid in [n.master_pid()] + n.worker_pids():
            with open(f"/proc/{pid}/status") as f:
                rss_kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
            assert rss_kb < 200 * 1024, f"pid {pid}: {rss_kb} KiB resident"
    n.__exit__()
