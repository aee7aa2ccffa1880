"""OpenMetrics on the exporter: content negotiation from `Accept`, a page the reference parser
(prometheus_client's OpenMetrics parser) accepts whole, `_created` samples and units, and
exemplars (`gateway_metrics_exemplars $http_traceparent`) that a real Prometheus stores and
serves back from /api/v1/query_exemplars."""

import http.client
import os
import re
import signal
import socket
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gmharness import (Nginx, parse, promtool_check, raw_request, run_concurrent, settle,
                       wait_for)
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)
from gmharness.prometheus import PROMETHEUS, Prometheus

OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus 2.42 sends.
PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
               "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

# An OpenAI Chat Completions body the gateway reads usage from (served by nginx itself as the
# upstream: the module reads every proxied 2xx response).
CHAT = ('{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o",'
        '"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
        '"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,'
        '"total_tokens":17}}')

CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_exemplars $http_traceparent;
    gateway_metrics_model_price gpt-4o input=2.5 output=10;
    gateway_metrics_counter tool_calls_total "Tool calls." tool;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /llm/ {
            proxy_pass http://127.0.0.1:{port}/body/;
            gateway_metrics_usage openai;
        }
        location /body/ {
            gateway_metrics off;
            default_type application/json;
            return 200 '%s';
        }
        location /noex/ { gateway_metrics_exemplars off; return 200 "ok"; }
        location = /metrics { gateway_metrics off; gateway_metrics_exemplars off; gateway_metrics_exporter; }
    }
""" % CHAT.replace("'", "\\'")


def tp(i):
    """A valid W3C traceparent whose ids encode i."""
    return f"00-{i:032x}-{i + 1:016x}-01"


def get(n, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        c.close()


def scrape_om(n):
    status, headers, body = get(n, "/metrics", {"Accept": PROM_ACCEPT})
    assert status == 200
    assert headers["Content-Type"] == OM_TYPE
    return body.decode()


def families(text):
    """The page through the reference OpenMetrics parser (it raises on anything invalid)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def exemplars_of(fam, sample_name):
    return [(s.labels, s.value, s.exemplar) for s in fam.samples
            if s.name == sample_name and s.exemplar is not None]


def test_negotiation_picks_the_format():
    with Nginx(CONF) as n:
        assert get(n, "/v1/x")[0] == 200
        settle(n, lambda m: m.total("http_requests_total") >= 1)
        for accept, ctype in [(None, TEXT_TYPE), ("*/*", TEXT_TYPE), ("text/plain", TEXT_TYPE),
                              (PROM_ACCEPT, OM_TYPE),
                              ("application/openmetrics-text", OM_TYPE),
                              ("application/openmetrics-text;version=0.0.1", TEXT_TYPE),
                              ("application/openmetrics-text;q=0.2, text/plain", TEXT_TYPE),
                              ("application/json", TEXT_TYPE)]:
            status, headers, body = get(n, "/metrics", {"Accept": accept} if accept else {})
            assert status == 200, accept
            assert headers["Content-Type"] == ctype, accept
            text = body.decode()
            if ctype == OM_TYPE:
                assert text.endswith("# EOF\n") and text.count("# EOF") == 1
                families(text)
            else:
                assert "# EOF" not in text and "_created" not in text
                promtool_check(text)
        # HEAD negotiates too (same headers, no body).
        st, head, rest = raw_request(n.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n"
                                             b"Accept: application/openmetrics-text\r\n"
                                             b"Connection: close\r\n\r\n")
        assert st == 200 and rest == b""
        assert f"Content-Type: {OM_TYPE}".encode() in head
        assert n.crashes() == []


def test_openmetrics_page_matches_the_text_page():
    with Nginx(CONF) as n:
        started = time.time()
        for i in range(20):
            ns = {"X-Namespace": ["a", "b"][i % 2]}
            assert get(n, "/v1/x", ns)[0] == 200
            assert get(n, "/llm/chat", ns)[0] == 200
        settle(n, lambda m: m.total("model_requests_total") >= 20
               and m.total("http_requests_total") >= 40)
        om = scrape_om(n)
        text = parse(get(n, "/metrics")[2].decode())
        fams = families(om)
        # Counter families are typed without _total; their samples keep it.
        assert fams["http_requests"].type == "counter"
        assert "# TYPE http_requests counter" in om
        assert "# TYPE http_requests_total" not in om
        assert "# UNIT http_request_duration_seconds seconds" in om
        assert "# UNIT model_cost_usd usd" in om
        assert re.search(r"^# UNIT gateway_metrics_zone_size_bytes bytes$", om, re.M)
        # Every sample of the text page is in the OpenMetrics page with the same value.
        om_samples = {}
        for f in fams.values():
            for s in f.samples:
                if not s.name.endswith("_created"):
                    om_samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        for (name, labels), v in text.items():
            # le values are written canonically in OpenMetrics (1.0 for 1)
            labels = tuple(sorted((k, str(float(x)) if k == "le" and x != "+Inf" else x)
                                  for k, x in labels))
            if name.startswith("nginx_") or name.startswith("gateway_metrics_zone_") \
                    or name == "gateway_metrics_series":
                continue  # changes between the two scrapes
            assert (name, labels) in om_samples, (name, labels)
            if not name.startswith("active_connections"):
                assert om_samples[(name, labels)] == v, (name, labels)
        # _created: when the series was first seen, for every counter and histogram series.
        created = [s for f in fams.values() for s in f.samples if s.name.endswith("_created")]
        assert created
        for s in created:
            assert started - 5 <= s.value <= time.time() + 1, s
        totals = [s for f in fams.values() if f.type == "counter" for s in f.samples
                  if s.name.endswith("_total")]
        created_keys = {(s.name[:-len("_created")], tuple(sorted(s.labels.items())))
                        for s in created}
        for s in totals:
            if s.name.startswith("nginx_"):
                continue  # nginx's own counters: no creation time known
            assert (s.name[:-len("_total")], tuple(sorted(s.labels.items()))) in created_keys, s
        assert n.crashes() == []


def test_exemplars_carry_the_traceparent():
    with Nginx(CONF) as n:
        # "The latest request" is the latest recorded: with two workers, one request's log
        # phase can run after the next request's, so each is recorded before the next is sent.
        for i in range(1, 6):
            assert get(n, "/v1/x", {"X-Namespace": "ex", "traceparent": tp(i)})[0] == 200
            settle(n, lambda m, i=i: m.total("http_requests_total") >= i)
        assert get(n, "/llm/chat", {"X-Namespace": "ex", "traceparent": tp(100)})[0] == 200
        # A location with exemplars off, and requests without a valid trace, add none.
        assert get(n, "/noex/x", {"X-Namespace": "off", "traceparent": tp(200)})[0] == 200
        assert get(n, "/v1/x", {"X-Namespace": "none"})[0] == 200
        settle(n, lambda m: m.total("http_requests_total") >= 8
               and m.total("model_requests_total") >= 1)
        fams = families(scrape_om(n))
        ids = lambda e: (e.labels["trace_id"], e.labels["span_id"])  # noqa: E731

        reqs = exemplars_of(fams["http_requests"], "http_requests_total")
        by_ns = {(lab["namespace"], lab["endpoint"]): e for lab, _, e in reqs}
        # The latest request of the series, counted once: value 1.
        e = by_ns[("ex", "/v1/")]
        assert ids(e) == (f"{5:032x}", f"{6:016x}") and e.value == 1
        assert e.timestamp is not None and abs(float(e.timestamp) - time.time()) < 60
        assert ("off", "/noex/") not in by_ns and ("none", "/v1/") not in by_ns
        assert by_ns[("ex", "/llm/")].labels["trace_id"] == f"{100:032x}"

        # Histogram buckets: the exemplar's value is the observed duration, within its bucket.
        bks = exemplars_of(fams["http_request_duration_seconds"], "http_request_duration_seconds_bucket")
        assert bks
        bounds = sorted({float(s.labels["le"]) for s in fams["http_request_duration_seconds"].samples
                         if s.name.endswith("_bucket")})
        for lab, _, e in bks:
            le = float(lab["le"])
            lower = max([b for b in bounds if b < le] + [0.0])
            assert lower <= e.value <= le, (lab, e)
            if lower > 0:
                assert e.value > lower, (lab, e)
            assert lab["namespace"] == "ex", lab
        # Model families: tokens and cost exemplars carry the values that request added.
        tin = exemplars_of(fams["model_tokens_input"], "model_tokens_input_total")
        tout = exemplars_of(fams["model_tokens_output"], "model_tokens_output_total")
        cost = exemplars_of(fams["model_cost_usd"], "model_cost_usd_total")
        assert [(e.labels["trace_id"], e.value) for _, _, e in tin] == [(f"{100:032x}", 12)]
        assert [(e.labels["trace_id"], e.value) for _, _, e in tout] == [(f"{100:032x}", 5)]
        assert [e.labels["trace_id"] for _, _, e in cost] == [f"{100:032x}"]
        assert cost[0][2].value == pytest.approx((12 * 2.5 + 5 * 10) / 1e6)
        mreq = exemplars_of(fams["model_request_duration_seconds"],
                            "model_request_duration_seconds_bucket")
        assert [e.labels["trace_id"] for _, _, e in mreq] == [f"{100:032x}"]
        # The text format has no exemplars.
        assert "trace_id" not in get(n, "/metrics")[2].decode()
        assert n.crashes() == []


HOSTILE = [
    "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 500,      # too long for version 00
    "00-" + "A" * 32 + "-" + "b" * 16 + "-01",                  # upper case
    "00-" + "g" * 32 + "-" + "b" * 16 + "-01",                  # not hex
    '00-"' + "a" * 31 + "-" + "b" * 16 + "-01",                 # a quote
    "00-" + "a" * 32 + "-" + "b" * 15 + '"} 1 2\n# EOF',       # an injection attempt
    "00-" + "0" * 32 + "-" + "b" * 16 + "-01",                  # all-zero trace id
    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",                  # forbidden version
    "\\" * 55,
    "00-" + "a" * 32 + "-" + "b" * 16 + "-01-",
]


def test_hostile_traceparents_never_break_the_page():
    with Nginx(CONF) as n:
        for i, v in enumerate(HOSTILE):
            raw = (f"GET /v1/h HTTP/1.1\r\nHost: x\r\nX-Namespace: hostile\r\n"
                   f"traceparent: {v}\r\nConnection: close\r\n\r\n").encode("latin-1")
            st, _, _ = raw_request(n.port, raw)
            assert st in (200, 400), (i, v, st)
        # two traceparent headers: nginx's variable gives the first
        assert get(n, "/v1/h", {"X-Namespace": "hostile2", "traceparent": tp(7)})[0] == 200
        settle(n, lambda m: m.total("http_requests_total") >= 2)
        om = scrape_om(n)
        fams = families(om)
        hostile = [e for lab, _, e in exemplars_of(fams["http_requests"], "http_requests_total")
                   if lab["namespace"] == "hostile"]
        assert hostile == []
        good = [e for lab, _, e in exemplars_of(fams["http_requests"], "http_requests_total")
                if lab["namespace"] == "hostile2"]
        assert [e.labels["trace_id"] for e in good] == [f"{7:032x}"]
        for line in om.splitlines():
            if " # {" in line:
                assert len(line.split(" # ", 1)[1].split("}")[0]) <= 128
        promtool_check(get(n, "/metrics")[2].decode())
        assert n.crashes() == []


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="no /usr/bin/prometheus")
def test_prometheus_stores_and_serves_the_exemplars():
    with Nginx(CONF) as n:
        p = Prometheus(n.port, flags=["--enable-feature=exemplar-storage"])
        try:
            p.ready()
            start = time.time() - 60

            def traces(expr):
                data = p.query_exemplars(expr, start, time.time() + 60) or []
                return {e["labels"]["trace_id"] for s in data for e in s["exemplars"]}

            # A bucket shows its latest exemplar: Prometheus keeps each one it scraped. One
            # request at a time, each seen by Prometheus before the next.
            expr = 'http_request_duration_seconds_bucket{namespace="prom"}'
            for i in range(1, 4):
                assert get(n, "/v1/x", {"X-Namespace": "prom", "traceparent": tp(i)})[0] == 200
                wait_for(lambda: traces(expr), lambda t, i=i: f"{i:032x}" in t, timeout=30,
                         what=f"exemplar {i} in Prometheus")
            assert get(n, "/llm/chat", {"X-Namespace": "prom", "traceparent": tp(42)})[0] == 200
            want = {f"{i:032x}" for i in (1, 2, 3, 42)}
            got = wait_for(lambda: traces(expr), lambda t: want <= t, timeout=30,
                           what="exemplars in Prometheus")
            assert want <= got
            # Counters carry them too.
            assert f"{3:032x}" in traces('http_requests_total{namespace="prom"}')
            # The same request's trace on the model families, as the dashboard queries them.
            assert wait_for(lambda: traces('model_time_to_first_token_seconds_bucket')
                            | traces('model_request_duration_seconds_bucket{namespace="prom"}'),
                            lambda t: f"{42:032x}" in t, timeout=30, what="model exemplars")
            # Prometheus ingested the OpenMetrics page: the same counts as ever.
            assert p.settled('sum(http_requests_total{namespace="prom"})',
                             lambda v: v == 4) == 4
            # Prometheus 2.42 keeps _created samples as series of their own: the creation time.
            created = p.settled('min(http_requests_created{namespace="prom"})',
                                lambda v: v is not None)
            assert start <= created <= time.time()
        finally:
            p.stop()
        assert n.crashes() == []


def test_a_scrape_cut_short_has_no_eof():
    """A page that does not reach its end (here: the worker dies mid-scrape) must not look
    complete: `# EOF` is only written once the whole page is rendered."""
    with Nginx(CONF, workers=1) as n:
        # 2,000 request series with 250-byte namespaces: a page of ~29 MB, far more than the
        # socket buffers (4 MB to send, 6 MB to receive at most on loopback) and the
        # exporter's four 256 KiB buffers hold, so the worker cannot have rendered it all when
        # it dies.
        reqs = [("GET", "/v1/x", {"X-Namespace": f"{i:05d}" + "t" * 245}, None)
                for i in range(2000)]
        run_concurrent(n.port, reqs, threads=8)
        settle(n, lambda m: m.total("http_requests_total") >= 2000, timeout=30)
        page_bytes = len(get(n, "/metrics", {"Accept": PROM_ACCEPT})[2])

        def buf_max(name):
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                return int(f.read().split()[2])
        # Our receive buffer is fixed (no autotuning; the kernel doubles what is asked).
        rcvbuf = 1 << 20
        in_flight = 2 * rcvbuf + buf_max("tcp_wmem") + 4 * 256 * 1024
        assert page_bytes > 2 * in_flight, (page_bytes, in_flight)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        s.connect(("127.0.0.1", n.port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + PROM_ACCEPT.encode()
                  + b"\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200") and b"application/openmetrics-text" in data
        # The page is several MB: the worker is still rendering it (waiting for us to read).
        (worker,) = n.worker_pids()
        os.kill(worker, signal.SIGKILL)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        s.close()
        assert b"# EOF" not in data
        assert not data.endswith(b"0\r\n\r\n")  # no last chunk either
        # A new worker serves whole pages again.
        wait_for(lambda: len(n.worker_pids()), lambda k: k == 1 and n.worker_pids() != [worker],
                 what="a new worker")
        assert scrape_om(n).endswith("# EOF\n")
