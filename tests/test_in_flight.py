"""active_connections: in-flight requests per namespace, across workers, with aborted clients."""
import http.client
import time

from gmharness import Gate, Nginx, parse, settle, wait_for
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    upstream llm { server 127.0.0.1:{mock} max_fails=0; }
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        add_header X-Pid $pid always;
        location /v1/ { proxy_pass http://llm; }
        location /fast/ { return 200; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def connections(n, per_worker):
    """Keep-alive connections, `per_worker` of them to each of the two workers (told apart by
    the X-Pid response header of a first, fast request)."""
    by_pid = {}
    for _ in range(500):
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=15)
        c.request("GET", "/fast/x")
        r = c.getresponse()
        r.read()
        assert r.status == 200
        conns = by_pid.setdefault(r.getheader("X-Pid"), [])
        if len(conns) < per_worker:
            conns.append(c)
        else:
            c.close()
        if len(by_pid) == 2 and all(len(v) == per_worker for v in by_pid.values()):
            break
    assert len(by_pid) == 2 and all(len(v) == per_worker for v in by_pid.values()), \
        {k: len(v) for k, v in by_pid.items()}
    a, b = by_pid.values()
    return [c for pair in zip(a, b) for c in pair]  # alternating workers


def start_slow(conns, ns):
    """Requests that stay in flight: the gate (the upstream) holds them until release()."""
    for c in conns:
        c.request("POST", "/v1/chat/completions", body=CHAT,
                  headers={"X-Namespace": ns, "Content-Type": "application/json"})


def finish(c):
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, r.getheader("X-Pid")


class Gauge:
    """Scrapes active_connections, remembering every value seen."""

    def __init__(self, n):
        self.n = n
        self.seen = []

    def __call__(self, ns):
        m = parse(self.n.scrape(check=False))  # fast polling; promtool runs on other scrapes
        v = m.get1("active_connections", namespace=ns)
        self.seen.append(v)
        for k, x in m.select("active_connections").items():
            assert x >= 0, (dict(k), x)
        return v


def test_active_connections():
    with Gate() as gate, Nginx(CONF.replace("{mock}", str(gate.port))) as n:
        g = Gauge(n)
        ns = "act"
        # 1. 16 slow requests in flight at once, 8 on each worker
        socks = connections(n, 8)
        start_slow(socks, ns)
        wait_for(lambda: g(ns), lambda v: v == 16, interval=0.02, what="16 in flight")
        # other namespaces are not affected by fast traffic
        for _ in range(5):
            assert n.get("/fast/x", {"X-Namespace": "other"})[0] == 200
        assert g(ns) == 16
        gate.release()
        results = [finish(s) for s in socks]
        assert [r[0] for r in results] == [200] * 16
        assert len({r[1] for r in results}) == 2, results
        wait_for(lambda: g(ns), lambda v: v == 0, timeout=5, what="back to 0")

        # 2. 10 in flight, 5 clients hang up, 5 finish
        gate.hold()
        socks = connections(n, 5)
        start_slow(socks, ns)
        wait_for(lambda: g(ns), lambda v: v == 10, interval=0.02, what="10 in flight")
        for c in socks[:5]:  # (alternating workers: both have aborts)
            c.close()
        wait_for(lambda: g(ns), lambda v: v == 5, interval=0.02, what="5 left after the aborts")
        gate.release()
        assert [finish(s)[0] for s in socks[5:]] == [200] * 5
        wait_for(lambda: g(ns), lambda v: v == 0, timeout=5, what="back to 0")
        assert max(g.seen) == 16

        m = settle(n, lambda m: m.total("http_requests_total", namespace=ns) >= 26)
        # Clients gone before the upstream answered: the gateway's responses, not the upstream's.
        assert m.get1("http_requests_total", method="POST", endpoint="/v1/", status_code="499",
                      namespace=ns, upstream="") == 5
        assert m.get1("errors_total", error_type="client_closed", namespace=ns, upstream="") == 5
        assert m.get1("upstream_requests_total", upstream="llm", status="error") == 0
        assert m.get1("http_requests_total", method="POST", endpoint="/v1/", status_code="200",
                      namespace=ns, upstream="llm") == 21

        # 3. the gauge did not drift (a negative internal value would be hidden by a 0 on the
        # page but show here as fewer than 3)
        gate.hold()
        socks = connections(n, 2)[:3]
        start_slow(socks, ns)
        wait_for(lambda: g(ns), lambda v: v == 3, interval=0.02, what="3 in flight")
        gate.release()
        assert [finish(s)[0] for s in socks] == [200] * 3
        wait_for(lambda: g(ns), lambda v: v == 0, timeout=5, what="back to 0")
        time.sleep(0.3)
        assert n.metrics().get1("active_connections", namespace=ns) == 0
        assert all(v >= 0 for v in g.seen)
        assert n.crashes() == []
