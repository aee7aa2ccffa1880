"""A real Prometheus server scrapes the exporter and sees the exact counts."""
import os

import pytest

from gmharness import Nginx, parse, run_concurrent, wait_for
from gmharness.prometheus import PROMETHEUS, Prometheus
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="no /usr/bin/prometheus")
def test_prometheus_scrapes_exact_counts():
    with Nginx(CONF) as n:
        p = Prometheus(n.port)
        try:
            p.ready()
            ok, bad, other = 137, 41, 22
            reqs = [("GET", "/v1/x", {"X-Namespace": "promtest"}, None)] * ok
            reqs += [("POST", "/nf/x", {"X-Namespace": "promtest"}, b"{}")] * bad
            reqs += [("GET", "/v1/x", {"X-Namespace": "other"}, None)] * other
            res = run_concurrent(n.port, reqs, threads=8)
            assert sorted(r[0] for r in res) == sorted([200] * (ok + other) + [404] * bad)
            try:
                got = wait_for(lambda: p.query('sum(http_requests_total{namespace="promtest"})'),
                               lambda v: v == ok + bad, timeout=30, what="prometheus sum")
            except TimeoutError:
                raise AssertionError(f"prometheus never saw {ok + bad}; its log:\n{p.logs()}")
            assert got == ok + bad
            exact = lambda want: lambda v: v == want  # noqa: E731
            assert p.settled('up{job="gateway"}', exact(1.0)) == 1.0
            assert p.settled('sum(errors_total{namespace="promtest",error_type="client_error"})',
                             exact(bad)) == bad
            assert p.settled('sum(namespace_requests_total{namespace="promtest",status="success"})',
                             exact(ok)) == ok
            assert p.settled('sum(http_request_duration_seconds_count{namespace="promtest"})',
                             exact(ok + bad)) == ok + bad
            # Prometheus ingested the histogram as such: histogram_quantile works on it
            q = p.settled('histogram_quantile(0.5, sum by (le) '
                          '(http_request_duration_seconds_bucket{namespace="promtest"}))',
                          lambda q: q is not None and 0 <= q <= 0.005)
            assert q is not None and 0 <= q <= 0.005
            # the scrapes produced no rejected samples (Prometheus's own counters)
            assert p.settled('scrape_samples_scraped{job="gateway"}', lambda v: v and v > 0) > 0
            status, body = p._get("/metrics")
            assert status == 200
            own = parse(body.decode())
            for name in ("prometheus_target_scrapes_sample_duplicate_timestamp_total",
                         "prometheus_target_scrapes_sample_out_of_order_total",
                         "prometheus_target_scrapes_sample_out_of_bounds_total",
                         "prometheus_target_scrapes_exceeded_sample_limit_total"):
                assert own.select(name), f"prometheus does not export {name}"
                assert own.total(name) == 0, name
        finally:
            p.stop()
