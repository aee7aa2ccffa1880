"""Repeated scrapes of a large page over one keep-alive connection (as Prometheus scrapes), in
both render modes: sliced on the event loop (chunked; each response must end before the next
request is read) and in the thread pool (which must not answer a write event that arrives
before the render is done)."""
import http.client

from gmharness import Nginx

CONF = """
    gateway_metrics_zone gm 32m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def test_large_pages_over_one_keepalive_connection():
    for pool in ("", "gateway_metrics_render_thread_pool default;"):
        with Nginx(pool + CONF, workers=1) as n:
            c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
            for i in range(2500):
                c.request("GET", "/v1/x", headers={"X-Namespace": f"ns{i}"})
                c.getresponse().read()
            sizes = []
            for _ in range(6):
                c.request("GET", "/metrics")
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, (pool, sizes)
                chunked = r.getheader("Transfer-Encoding") == "chunked"
                assert chunked == (pool == ""), pool
                sizes.append(len(body))
            assert min(sizes) > 5_000_000 and len(set(sizes)) == 1, sizes
