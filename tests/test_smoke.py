"""Basic end-to-end checks: the module loads, records and exports."""
from gmharness import Nginx, histogram_consistent, settle

BASIC = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def test_counts_requests_per_namespace():
    with Nginx(BASIC) as n:
        for i in range(7):
            n.get("/v1/chat/completions", {"X-Namespace": "wechat"})
        n.get("/v1/chat/completions", {"X-Namespace": "other"})
        # two workers: the log phase of the last requests can run after we have the responses
        m = settle(n, lambda m: m.total("http_requests_total") >= 8)
        assert m.get1("http_requests_total", method="GET", endpoint="/v1/", status_code="200",
                      namespace="wechat", upstream="") == 7
        assert m.get1("namespace_requests_total", namespace="other", status="success") == 1
        assert histogram_consistent(m, "http_request_duration_seconds") == 2
