"""Histograms under load: every scrape valid and consistent, counters monotone; custom buckets."""
import os
import threading

import pytest

from prometheus_client.parser import text_string_to_metric_families

from gmharness import (MockLLM, Nginx, histogram_consistent, parse, promtool_check, run_concurrent,
                       settle, wait_for)
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    upstream llm { server 127.0.0.1:{mock} max_fails=0; keepalive 16; }
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    {buckets}
    server {
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /v1/ { proxy_pass http://llm; }
        location /ok/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
HISTOGRAMS = ["http_request_duration_seconds", "gateway_request_duration_seconds"]


def monotone_samples(text):
    """{(name, labels): value} of every sample that must never decrease: counters and the
    _bucket/_count/_sum of histograms."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.type not in ("counter", "histogram"):
            continue
        for s in fam.samples:
            if fam.type == "counter" and not s.name.endswith("_total"):
                continue  # _created, if a parser adds it
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_scrapes_under_load_are_consistent_and_monotone():
    with MockLLM() as mock, Nginx(CONF.replace("{mock}", str(mock.port))
                                  .replace("{buckets}", "")) as n:
        stop = threading.Event()
        sent = [0]
        lock = threading.Lock()
        errors = []

        def traffic(t):
            reqs = []
            for j in range(40):
                ns = f"ns{(t + j) % 7}"
                path = ["/ok/a", "/nf/b", "/v1/models"][j % 3]
                reqs.append(("GET", path, {"X-Namespace": ns}, None))
            try:
                while not stop.is_set():
                    run_concurrent(n.port, reqs, threads=2)
                    with lock:
                        sent[0] += len(reqs)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=traffic, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        prev = None
        scrapes = 0
        try:
            # 50 scrapes however long they take (promtool is slow on a busy machine): a count
            # reached within a fixed time would measure the machine, not the module
            while scrapes < 50:
                text = n.scrape()  # promtool check included
                m = parse(text)
                for h in HISTOGRAMS:
                    histogram_consistent(m, h)
                cur = monotone_samples(text)
                if prev is not None:
                    dec = {k: (prev[k], cur.get(k)) for k in prev
                           if k in cur and cur[k] < prev[k]}
                    assert not dec, f"counters decreased between scrapes: {list(dec.items())[:5]}"
                    gone = [k for k in prev if k not in cur]
                    assert not gone, f"series disappeared: {gone[:5]}"
                prev = cur
                scrapes += 1
        finally:
            stop.set()
            for th in threads:
                th.join()
        assert not errors, errors[0]
        assert scrapes == 50
        # after the traffic: the counters add up to what was sent
        m = settle(n, lambda m: m.total("http_requests_total") >= sent[0])
        assert m.total("http_requests_total") == sent[0]
        for h in HISTOGRAMS:
            assert m.total(h + "_count") == sent[0]
            histogram_consistent(m, h)


def test_custom_buckets_give_exactly_those_bounds():
    # nginx logs each request's $request_time (the duration the module observes, from the same
    # cached clock in the same log phase): the expected buckets come from it, so a slow machine
    # moves requests between buckets without failing the test.
    conf = (CONF.replace("{buckets}", "gateway_metrics_buckets 0.1 1 10;\n"
                         "    log_format times '$request_time $request_method $uri';")
            .replace("listen 127.0.0.1:{port};",
                     "listen 127.0.0.1:{port};\n        access_log {dir}/logs/times.log times;"))
    with MockLLM() as mock, Nginx(conf.replace("{mock}", str(mock.port))) as n:
        fast, medium, slow = 30, 6, 3
        reqs = [("GET", "/ok/x", {"X-Namespace": "b"}, None)] * fast
        # (the mock applies X-Mock-Delay-Ms to completions only)
        slow_req = lambda ms: ("POST", "/v1/chat/completions",  # noqa: E731
                               {"X-Namespace": "b", "X-Mock-Delay-Ms": str(ms),
                                "Content-Type": "application/json"}, CHAT)
        reqs += [slow_req(250)] * medium + [slow_req(1200)] * slow
        res = run_concurrent(n.port, reqs, threads=8)
        assert [r[0] for r in res] == [200] * len(reqs)
        low = 0.25 * medium + 1.2 * slow  # (the module adds a request's _sum after its bucket)
        settle(n, lambda m: m.total("http_requests_total") >= len(reqs) and m.get1(
            "http_request_duration_seconds_sum", method="POST", endpoint="/v1/", namespace="b",
            upstream="llm") >= low)

        def logged():
            with open(os.path.join(n.dir, "logs", "times.log")) as f:
                return [line.split() for line in f if "/metrics" not in line]
        lines = wait_for(logged, lambda ls: len(ls) >= len(reqs), what="access log lines")
        times = {"/ok/": [], "/v1/": []}
        for t, _, uri in lines:
            times["/ok/" if uri.startswith("/ok/") else "/v1/"].append(float(t))
        assert len(times["/ok/"]) == fast and len(times["/v1/"]) == medium + slow
        # the proxied ones waited for the mock's delay at least
        assert all(t >= 0.25 for t in times["/v1/"])
        assert sum(t >= 1.2 for t in times["/v1/"]) >= slow
        text = n.scrape()
        promtool_check(text)
        m = parse(text)
        for h in HISTOGRAMS:
            les = {dict(k)["le"] for k in m.select(h + "_bucket")}
            assert les == {"0.1", "1", "10", "+Inf"}, (h, les)
            histogram_consistent(m, h)
        # the observations land in the right buckets (cumulative)
        b = lambda le, ep: m.get1("http_request_duration_seconds_bucket",  # noqa: E731
                                  method="GET" if ep == "/ok/" else "POST", endpoint=ep,
                                  namespace="b", upstream="llm" if ep == "/v1/" else "", le=le)
        for ep in ("/ok/", "/v1/"):
            for le in ("0.1", "1", "10"):
                assert b(le, ep) == sum(t <= float(le) for t in times[ep]), (ep, le, times[ep])
            assert b("+Inf", ep) == len(times[ep])
        assert b("0.1", "/v1/") == 0
        s = m.get1("http_request_duration_seconds_sum", method="POST", endpoint="/v1/",
                   namespace="b", upstream="llm")
        assert s == pytest.approx(sum(times["/v1/"]), abs=0.0015 * (medium + slow))
        medium_in_1 = b("1", "/v1/")
        g = m.select("gateway_request_duration_seconds_bucket", path="/v1/", le="1")
        assert list(g.values()) == [medium_in_1]
