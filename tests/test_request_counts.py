"""Exact request counts in every view, under concurrent traffic served by two workers."""
import json
import random
import socket
import threading
import time
from collections import Counter

from gmharness import (Gate, MockLLM, Nginx, histogram_consistent, run_concurrent, wait_for)
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    upstream llm { server 127.0.0.1:{mock} max_fails=0; keepalive 32; }
    upstream llm_slow { server 127.0.0.1:{held} max_fails=0; }  # a gm.Gate, never released
    upstream dead { server 127.0.0.1:{closed} max_fails=0; }
    limit_req_zone "all" zone=lr:1m rate=1r/m;
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        add_header X-Pid $pid always;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /v1/ { proxy_pass http://llm; }
        location /named/ { gateway_metrics_endpoint chat-api; proxy_pass http://llm; }
        location /dynep/ { gateway_metrics_endpoint "ep-$http_x_ep"; return 204; }
        location /direct/ {
            gateway_metrics_upstream $proxy_host;
            proxy_pass http://127.0.0.1:{mock};
        }
        location /nf/ { return 404; }
        location = /unavail { return 503; }
        location /bad/ { proxy_pass http://dead; }
        location /slow/ {
            proxy_pass http://llm_slow;
            proxy_read_timeout 200ms;
        }
        location /abort/ { proxy_pass http://llm_slow; }
        location /upload/ { client_max_body_size 1k; return 200; }
        location = /five { return 500; }
        location = /limited {
            limit_req zone=lr; limit_req_status 429;
            proxy_pass http://llm/v1/models;
        }
        location /off/ { gateway_metrics off; return 200 "off"; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
NAMESPACES = ["alpha", "beta", "gamma", "delta", ""]

ERROR_TYPE = {404: "client_error", 405: "client_error", 413: "request_too_large",
              429: "rate_limited", 499: "client_closed", 500: "server_error",
              502: "upstream_error", 503: "service_unavailable", 504: "upstream_timeout"}


def kinds(mock_port):
    """(weight, method, path, body, expected status, endpoint label, upstream label)."""
    return [
        (6, "POST", "/v1/chat/completions", CHAT, 200, "/v1/", "llm"),
        (2, "GET", "/v1/models", None, 200, "/v1/", "llm"),
        (1, "GET", "/v1/chat/completions", None, 405, "/v1/", "llm"),
        (2, "POST", "/named/chat/completions", CHAT, 200, "chat-api", "llm"),
        (2, "POST", "/direct/chat/completions", CHAT, 200, "/direct/", f"127.0.0.1:{mock_port}"),
        (3, "GET", "/nf/x", None, 404, "/nf/", ""),
        (1, "DELETE", "/nf/y", None, 404, "/nf/", ""),
        (1, "HEAD", "/nf/z", None, 404, "/nf/", ""),
        (2, "GET", "/unavail", None, 503, "/unavail", ""),
        (1, "PUT", "/unavail", b"", 503, "/unavail", ""),
        (2, "POST", "/bad/x", CHAT, 502, "/bad/", "dead"),
        (1, "POST", "/upload/x", b"x" * 2048, 413, "/upload/", ""),
        (1, "GET", "/five", None, 500, "/five", ""),
        # rate 1r/m, no burst: exactly one of these passes during the test
        # (upstream label: "llm" for the one that passes, "" for the rejected ones)
        (1, "GET", "/limited", None, (200, 429), "/limited", None),
        (1, "GET", "/dynep/a", None, 204, None, ""),  # endpoint "ep-<X-Ep header>"
        (2, "GET", "/off/x", None, 200, None, None),  # not recorded
    ]


def labels_of(samples, name, names):
    out = {}
    for labels, v in samples.select(name).items():
        d = dict(labels)
        assert set(d) == set(names), f"{name}: unexpected label names {sorted(d)}"
        out[tuple(d[n] for n in names)] = v
    return out


def is_error(status):
    return not (100 <= status < 400)


def abort_requests(port, ns, n, scrape):
    """n requests to a slow upstream whose client sockets are closed while nginx waits for the
    upstream: nginx logs them as 499."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"POST /abort/chat/completions HTTP/1.1\r\nHost: x\r\nX-Namespace: {ns}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\n\r\n"
                  .encode() + CHAT)
        socks.append(s)
    # Wait until nginx has all of them in flight (past the access phases), then hang up.
    wait_for(lambda: scrape().get1("active_connections", namespace=ns), lambda v: v == n,
             timeout=5, what="aborting requests in flight")
    for s in socks:
        s.close()


def test_exact_counts_in_every_view():
    # A port bound and not listening: connection refused -> 502. (A port only picked free could
    # be taken by another process before nginx connects to it.)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    closed = dead.getsockname()[1]
    with dead, MockLLM() as mock, Gate() as gate:
        conf = (CONF.replace("{mock}", str(mock.port)).replace("{closed}", str(closed))
                .replace("{held}", str(gate.port)))
        with Nginx(conf) as n:
            rnd = random.Random(1234)
            ks = kinds(mock.port)
            weights = [k[0] for k in ks]
            plan = []  # (method, path, headers, body) and expectation
            expect = []
            for i in range(2000):
                w, method, path, body, status, endpoint, upstream = rnd.choices(ks, weights)[0]
                ns = rnd.choice(NAMESPACES)
                headers = {"X-Namespace": ns} if ns else {}
                if path.startswith("/dynep/"):
                    ep = rnd.choice(["one", "two"])
                    headers["X-Ep"] = ep
                    endpoint = "ep-" + ep
                if body is not None:
                    headers["Content-Type"] = "application/json"
                plan.append((method, path, headers, body))
                expect.append((method, endpoint, status, ns, upstream))
            # a few 504s (the gate never answers within proxy_read_timeout 200ms)
            for i in range(8):
                ns = NAMESPACES[i % 4]
                plan.append(("POST", "/slow/chat/completions",
                             {"X-Namespace": ns, "Content-Type": "application/json"}, CHAT))
                expect.append(("POST", "/slow/", 504, ns, "llm_slow"))

            # scrape concurrently with the traffic: every scrape valid and consistent
            stop = threading.Event()
            scrape_errors, scrapes = [], [0]

            def scraper():
                while not stop.is_set():
                    try:
                        m = n.metrics()
                        histogram_consistent(m, "http_request_duration_seconds")
                        histogram_consistent(m, "gateway_request_duration_seconds")
                        scrapes[0] += 1
                    except Exception as e:  # noqa: BLE001 - reported below
                        scrape_errors.append(repr(e))
                        return
                    time.sleep(0.02)

            th = threading.Thread(target=scraper)
            th.start()
            try:
                results = run_concurrent(n.port, plan, threads=16)
            finally:
                stop.set()
                th.join()
            assert not scrape_errors, scrape_errors[0]
            assert scrapes[0] >= 1

            got_status = [r[0] for r in results]
            limited = [g for g, e in zip(got_status, expect) if e[1] == "/limited"]
            assert sorted(limited) == [200] + [429] * (len(limited) - 1), Counter(limited)
            expect = [(e[0], e[1], g, e[3], "llm" if g == 200 else "")
                      if e[1] == "/limited" else e for g, e in zip(got_status, expect)]
            want_status = [e[2] for e in expect]
            assert got_status == want_status, Counter(
                (p[1], g, w) for p, g, w in zip(plan, got_status, want_status) if g != w)
            pids = {r[1].get("X-Pid") for r in results}
            assert len(pids) == 2, f"traffic was not served by both workers: {pids}"

            abort_ns = "aborted"
            abort_requests(n.port, abort_ns, 4, n.metrics)
            for _ in range(4):
                # gone before the upstream answered: the gateway's response, not the upstream's
                expect.append(("POST", "/abort/", 499, abort_ns, ""))
            # the 499s are recorded once nginx notices the closed sockets
            recorded = [e for e in expect if e[4] is not None]
            m = wait_for(n.metrics, lambda m: m.total("http_requests_total") == len(recorded),
                         timeout=10, what="all requests recorded")
            check_views(m, recorded)
            rejected = sum(1 for e in recorded if e[2] == 429)
            assert m.total("rate_limit_violations_total", rule_type="limit_req") == rejected
            # nothing more arrives later (e.g. a double count of the aborted requests)
            time.sleep(0.5)
            m2 = n.metrics()
            check_views(m2, recorded)
            assert m2.get1("active_connections", namespace=abort_ns) == 0
            assert n.crashes() == []


def check_views(m, recorded):
    # http_requests_total: every label set exactly
    want = Counter(recorded)
    got = labels_of(m, "http_requests_total",
                    ["method", "endpoint", "status_code", "namespace", "upstream"])
    want_http = {(me, ep, str(st), ns, up): c for (me, ep, st, ns, up), c in want.items()}
    assert got == want_http

    # nothing from the `gateway_metrics off` location, nor from /metrics
    assert not [k for k in got if k[1] in ("/off/", "/metrics")]

    gw = Counter()
    hist = Counter()
    nsv = Counter()
    upv = Counter()
    errs = Counter()
    for (me, ep, st, ns, up), c in want.items():
        gw[(me, ep, ns)] += c
        hist[(me, ep, ns, up)] += c
        nsv[(ns, "error" if is_error(st) else "success")] += c
        if up:  # only responses that came from an upstream
            upv[(up, "error" if is_error(st) else "success")] += c
        if is_error(st):
            errs[(ERROR_TYPE[st], ns, up)] += c
    assert labels_of(m, "gateway_requests_total", ["method", "path", "namespace"]) == dict(gw)
    assert labels_of(m, "namespace_requests_total", ["namespace", "status"]) == dict(nsv)
    assert labels_of(m, "upstream_requests_total", ["upstream", "status"]) == dict(upv)
    assert labels_of(m, "errors_total", ["error_type", "namespace", "upstream"]) == dict(errs)
    # histograms: _count equals the counters, buckets consistent
    assert labels_of(m, "http_request_duration_seconds_count",
                     ["method", "endpoint", "namespace", "upstream"]) == dict(hist)
    assert labels_of(m, "gateway_request_duration_seconds_count",
                     ["method", "path", "namespace"]) == dict(gw)
    assert histogram_consistent(m, "http_request_duration_seconds") == len(hist)
    assert histogram_consistent(m, "gateway_request_duration_seconds") == len(gw)
    # the 504s took at least proxy_read_timeout
    for (me, ep, ns, up), c in hist.items():
        if ep == "/slow/":
            s = m.get1("http_request_duration_seconds_sum", method=me, endpoint=ep, namespace=ns,
                       upstream=up)
            assert s >= 0.19 * c, (ns, s, c)
