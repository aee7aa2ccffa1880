"""Reloads: counters survive a reload that keeps the zone, bucket changes apply cleanly, a
zone size change starts a new zone."""
import time

from gmharness import Nginx, histogram_consistent, run_concurrent, settle
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone gm {size};
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    {buckets}
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

HISTS = ["http_request_duration_seconds", "gateway_request_duration_seconds"]


def conf(size="8m", buckets=""):
    return CONF.replace("{size}", size).replace("{buckets}", buckets)


def traffic(n, ok, bad, ns="r"):
    """Sends the requests and waits until nginx has recorded them (http_requests_total grew by
    ok + bad)."""
    before = n.metrics().total("http_requests_total")
    reqs = [("GET", "/v1/a", {"X-Namespace": ns}, None)] * ok
    reqs += [("GET", "/nf/a", {"X-Namespace": ns}, None)] * bad
    res = run_concurrent(n.port, reqs, threads=8)
    assert sorted(r[0] for r in res) == sorted([200] * ok + [404] * bad)
    settle(n, lambda m: m.total("http_requests_total") >= before + ok + bad)


def ok_count(m, ns="r"):
    return m.get1("http_requests_total", method="GET", endpoint="/v1/", status_code="200",
                  namespace=ns, upstream="")


def bad_count(m, ns="r"):
    return m.get1("http_requests_total", method="GET", endpoint="/nf/", status_code="404",
                  namespace=ns, upstream="")


def les(m, h):
    return {dict(k)["le"] for k in m.select(h + "_bucket")}


def check(m):
    for h in HISTS:
        histogram_consistent(m, h)


def test_reload_keeps_counters():
    with Nginx(conf()) as n:
        traffic(n, 120, 30)
        m = n.metrics()
        assert (ok_count(m), bad_count(m)) == (120, 30)
        start = m.get1("gateway_metrics_start_time_seconds", zone="gm")
        n.reload()
        m = n.metrics()
        assert (ok_count(m), bad_count(m)) == (120, 30)
        traffic(n, 80, 11)
        m = n.metrics()
        assert (ok_count(m), bad_count(m)) == (200, 41)
        assert m.total("http_request_duration_seconds_count", namespace="r") == 241
        assert m.get1("gateway_requests_total", method="GET", path="/v1/", namespace="r") == 200
        assert m.get1("namespace_requests_total", namespace="r", status="error") == 41
        assert m.get1("gateway_metrics_start_time_seconds", zone="gm") == start
        check(m)
        # a second reload as well
        n.reload()
        traffic(n, 5, 0)
        m = n.metrics()
        assert (ok_count(m), bad_count(m)) == (205, 41)
        assert "counters kept" in n.error_log()
        assert n.crashes() == []


def test_reload_with_new_buckets():
    with Nginx(conf(buckets="gateway_metrics_buckets 0.1 1 10;")) as n:
        traffic(n, 50, 10)
        m = n.metrics()
        for h in HISTS:
            assert les(m, h) == {"0.1", "1", "10", "+Inf"}
        check(m)
        n.write(conf(buckets="gateway_metrics_buckets 0.05 0.5 5 50;"))
        n.reload()
        m = n.metrics()  # promtool passes on the page right after the reload
        assert (ok_count(m), bad_count(m)) == (50, 10)
        check(m)
        traffic(n, 30, 7)
        m = n.metrics()
        # the counters continue over the bucket change
        assert (ok_count(m), bad_count(m)) == (80, 17)
        assert m.get1("gateway_requests_total", method="GET", path="/v1/", namespace="r") == 80
        assert m.get1("namespace_requests_total", namespace="r", status="success") == 80
        assert m.get1("errors_total", error_type="client_error", namespace="r", upstream="") == 17
        for h in HISTS:
            # only the new bucket layout is shown ...
            assert les(m, h) == {"0.05", "0.5", "5", "50", "+Inf"}, (h, les(m, h))
        check(m)
        # ... with every observation: the ones made before the change (all under 0.1 s) in the
        # smallest new bucket that surely holds them (0.5), so _count never goes back
        hist = dict(method="GET", endpoint="/v1/", namespace="r", upstream="")
        assert m.get1("http_request_duration_seconds_count", **hist) == 80
        assert m.get1("http_request_duration_seconds_bucket", le="0.05", **hist) == 30
        assert m.get1("http_request_duration_seconds_bucket", le="0.5", **hist) == 80
        # back to the first layout: the same totals in its buckets (the 0.05 s bucket of the
        # second layout lands in 0.1): no counter, no bucket went down
        n.write(conf(buckets="gateway_metrics_buckets 0.1 1 10;"))
        n.reload()
        m = n.metrics()
        assert m.get1("http_request_duration_seconds_count", **hist) == 80
        assert m.get1("http_request_duration_seconds_bucket", le="0.1", **hist) == 80
        traffic(n, 4, 0)
        m = n.metrics()
        assert ok_count(m) == 84
        for h in HISTS:
            assert les(m, h) == {"0.1", "1", "10", "+Inf"}
        check(m)
        assert m.get1("http_request_duration_seconds_count", **hist) == 84
        assert m.get1("http_request_duration_seconds_bucket", le="0.1", **hist) == 84
        assert n.crashes() == []


def test_zone_size_change_starts_a_new_zone():
    with Nginx(conf(size="8m")) as n:
        traffic(n, 40, 4)
        m = n.metrics()
        assert ok_count(m) == 40
        size8 = m.get1("gateway_metrics_zone_size_bytes", zone="gm")
        n.write(conf(size="16m"))
        n.reload()
        m = n.metrics()
        assert ok_count(m) == 0 and bad_count(m) == 0
        assert m.get1("gateway_metrics_zone_size_bytes", zone="gm") > size8
        traffic(n, 9, 2)
        m = n.metrics()
        assert (ok_count(m), bad_count(m)) == (9, 2)
        assert m.total("http_requests_total") == 11
        check(m)
        assert n.crashes() == []


def test_reload_under_traffic_loses_nothing():
    """Requests finished by the old workers during a reload and those of the new ones all count."""
    import threading
    import urllib.request

    with Nginx(conf()) as n:
        stop = threading.Event()
        sent = [0] * 6
        errors = []

        def client(t):
            try:
                while not stop.is_set():
                    req = urllib.request.Request(n.url("/v1/x"), headers={"X-Namespace": "live"})
                    with urllib.request.urlopen(req, timeout=10) as r:
                        assert r.status == 200
                        r.read()
                    sent[t] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        try:
            for _ in range(3):
                wait = sum(sent) + 100
                while sum(sent) < wait and not errors:
                    time.sleep(0.01)
                n.reload()
        finally:
            stop.set()
            for th in threads:
                th.join()
        assert not errors, errors[0]
        m = settle(n, lambda m: ok_count(m, "live") >= sum(sent))
        assert ok_count(m, "live") == sum(sent)
        assert m.get1("active_connections", namespace="live") == 0
        check(m)
        assert n.crashes() == []
