"""Cardinality cap and full zones: overflow series, exact totals, drop counters, bounded logs."""
import re

from gmharness import Nginx, histogram_consistent, run_concurrent, settle
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone {zone};
    {max_series}
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    large_client_header_buffers 4 16k;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""
OVF = "__overflow__"


def conf(zone, max_series=""):
    return CONF.replace("{zone}", zone).replace("{max_series}", max_series)


def warnings(n, zone):
    return [l for l in n.error_log().splitlines()
            if "gateway_metrics" in l and "[warn]" in l and f'zone "{zone}"' in l]


def keep(n, count):
    res = run_concurrent(n.port, [("GET", "/v1/k", {"X-Namespace": "keep"}, None)] * count, 4)
    assert [r[0] for r in res] == [200] * count


def keep_count(m):
    return m.get1("http_requests_total", method="GET", endpoint="/v1/", status_code="200",
                  namespace="keep", upstream="")


def test_max_series_overflow():
    with Nginx(conf("gm 8m", "gateway_metrics_max_series 20;")) as n:
        keep(n, 5)
        m = settle(n, lambda m: keep_count(m) >= 5)
        assert keep_count(m) == 5
        reqs = []
        for i in range(200):
            path = "/v1/x" if i % 3 else "/nf/x"
            reqs.append(("GET", path, {"X-Namespace": f"tenant-{i:03d}"}, None))
        res = run_concurrent(n.port, reqs, threads=16)
        assert sorted(r[0] for r in res) == sorted(200 if i % 3 else 404 for i in range(200))
        keep(n, 7)
        total = 5 + 200 + 7
        m = settle(n, lambda m: m.total("http_requests_total") >= total)

        assert m.total("http_requests_total") == total
        assert m.total("http_request_duration_seconds_count") == total
        assert m.total("gateway_requests_total") == total
        assert m.total("namespace_requests_total") == total
        # (only the responses that came from an upstream)
        assert m.total("upstream_requests_total") == total - m.total("http_requests_total",
                                                                     upstream="")
        assert m.total("http_requests_total", upstream="") < total
        # the series that existed before the cap keep counting
        assert keep_count(m) == 12
        assert m.get1("gateway_metrics_max_series", zone="gm") == 20
        assert 0 < m.get1("gateway_metrics_series", zone="gm") <= 20
        assert m.get1("gateway_metrics_overflow_series", zone="gm") >= 1
        # the overflow series: every label value __overflow__
        ovf = m.get1("http_requests_total", method=OVF, endpoint=OVF, status_code=OVF,
                     namespace=OVF, upstream=OVF)
        assert ovf > 0
        for labels in m.select("http_requests_total", namespace=OVF):
            assert set(dict(labels).values()) == {OVF}, dict(labels)
        # own series + overflow = everything; at most 20 namespaces have their own series
        own_ns = {dict(k)["namespace"] for k in m.select("http_requests_total")} - {OVF}
        assert len(own_ns) <= 20
        assert m.total("http_requests_total", namespace=OVF) == total - sum(
            v for k, v in m.select("http_requests_total").items()
            if dict(k)["namespace"] != OVF)
        assert m.get1("namespace_requests_total", namespace=OVF, status=OVF) == ovf
        drops = m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="max_series")
        assert drops >= ovf
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="lost") == 0
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="zone_full") == 0
        # in-flight gauges, overflow included, are back to 0
        assert all(v == 0 for v in m.select("active_connections").values())
        histogram_consistent(m, "http_request_duration_seconds")
        histogram_consistent(m, "gateway_request_duration_seconds")
        # a few warnings naming the zone, not one per dropped update
        w = warnings(n, "gm")
        assert 1 <= len(w) <= 3, w
        assert all("max_series" in l for l in w), w
        assert n.crashes() == []


def test_small_zone_fills_up():
    with Nginx(conf("gm 128k")) as n:
        reqs = []
        for i in range(1000):
            ns = f"{i:04d}-" + "n" * 195  # 200 bytes
            reqs.append(("GET", "/v1/x", {"X-Namespace": ns}, None))
        res = run_concurrent(n.port, reqs, threads=16)
        assert [r[0] for r in res] == [200] * len(reqs)
        m = settle(n, lambda m: m.total("http_requests_total") >= len(reqs))  # promtool passes
        full = m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="zone_full")
        assert full > 0
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="lost") == 0
        # nothing is lost: the overflow series take the rest
        assert m.total("http_requests_total") == len(reqs)
        assert m.get1("http_requests_total", method=OVF, endpoint=OVF, status_code=OVF,
                      namespace=OVF, upstream=OVF) > 0
        stored = [dict(k)["namespace"] for k in m.select("http_requests_total")]
        assert all(len(ns.encode()) == 200 for ns in stored if ns != OVF)
        assert m.get1("gateway_metrics_zone_size_bytes", zone="gm") <= 128 * 1024
        assert m.get1("gateway_metrics_zone_free_bytes", zone="gm") < 16 * 1024
        histogram_consistent(m, "http_request_duration_seconds")
        w = warnings(n, "gm")
        assert 1 <= len(w) <= 3, w
        assert any(re.search(r"zone_full", l) for l in w), w
        # the exporter still works after more traffic and old series still count
        first = reqs[0][2]["X-Namespace"]
        run_concurrent(n.port, [("GET", "/v1/x", {"X-Namespace": first}, None)] * 3, 1)
        m = settle(n, lambda m: m.total("http_requests_total") >= len(reqs) + 3)
        assert m.total("http_requests_total") == len(reqs) + 3
        assert m.get1("http_requests_total", method="GET", endpoint="/v1/", status_code="200",
                      namespace=first, upstream="") == 4
        assert n.crashes() == []
