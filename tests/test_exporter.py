"""The exporter location: headers, methods, gzip, exposition structure and stable order."""
import gzip
import http.client
import re

from gmharness import Nginx, parse, promtool_check, raw_request, run_concurrent, settle
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /unavail { return 503; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        location = /metrics-gz {
            gateway_metrics off;
            gzip on; gzip_types text/plain; gzip_min_length 0;
            gateway_metrics_exporter;
        }
    }
"""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def traffic(n):
    reqs = []
    for i in range(300):
        ns = ["zeta", "alpha", "mid", ""][i % 4]
        path = ["/v1/a", "/nf/b", "/unavail", "/v1/c"][(i // 4) % 4]
        method = ["GET", "POST", "DELETE"][i % 3]
        reqs.append((method, path, {"X-Namespace": ns} if ns else {}, b"" if method == "POST" else None))
    run_concurrent(n.port, reqs, threads=8)
    settle(n, lambda m: m.total("http_requests_total") >= len(reqs))


def request(n, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        c.close()


def test_headers_and_methods():
    with Nginx(CONF) as n:
        traffic(n)
        status, headers, body = request(n, "GET", "/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        # Rendered in slices as it is sent: no length known up front.
        assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
        promtool_check(body.decode())

        # HEAD: 200, same headers, no body bytes on the wire
        st, head, rest = raw_request(n.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n"
                                             b"Connection: close\r\n\r\n")
        assert st == 200
        assert rest == b""
        assert f"Content-Type: {CONTENT_TYPE}".encode() in head
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert length is None or int(length.group(1)) > 0

        for method in ("POST", "PUT", "DELETE", "PATCH"):
            st, hd, _ = request(n, method, "/metrics", body=b"x=1")
            assert st == 405, method
        # OPTIONS and a made-up method are refused as well
        assert request(n, "OPTIONS", "/metrics")[0] == 405
        st, _, _ = raw_request(n.port, b"BREW /metrics HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n")
        assert st == 405
        # still serving after the refused requests, and they were not recorded
        m = n.metrics()
        assert not m.select("http_requests_total", endpoint="/metrics")
        assert n.crashes() == []


def test_gzip():
    with Nginx(CONF) as n:
        traffic(n)
        status, headers, body = request(n, "GET", "/metrics-gz", {"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers.get("Content-Encoding") == "gzip"
        assert headers["Content-Type"] == CONTENT_TYPE
        text = gzip.decompress(body).decode()
        promtool_check(text)
        m = parse(text)
        assert m.total("http_requests_total") == 300
        plain = request(n, "GET", "/metrics-gz")  # no Accept-Encoding: not compressed
        assert "Content-Encoding" not in plain[1]
        promtool_check(plain[2].decode())


def families(text):
    """Checks HELP/TYPE once per family, before its samples, samples contiguous; returns the
    family names in order."""
    helps, types, order = {}, {}, []
    current = None
    finished = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            helps[name] = helps.get(name, 0) + 1
            assert name not in finished, f"HELP {name} again after its samples"
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, t = line.split(" ", 3)
            types[name] = types.get(name, 0) + 1
            assert name == current, f"TYPE {name} not right after its HELP"
            order.append((name, t))
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        sname = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        t = dict(order)[current]
        assert any(sname == current + s for s in suffixes[t]), \
            f"sample {sname} inside family {current} ({t}): families not contiguous"
    assert all(c == 1 for c in helps.values()), {k: c for k, c in helps.items() if c != 1}
    assert all(c == 1 for c in types.values()), {k: c for k, c in types.items() if c != 1}
    assert set(helps) == set(types)
    return [name for name, _ in order]


VOLATILE = re.compile(r"^(nginx_|gateway_metrics_zone_)")


def stable_part(text):
    return [l for l in text.splitlines()
            if not VOLATILE.match(l) and not re.match(r"# (HELP|TYPE) (nginx_|gateway_metrics_zone_)", l)]


def test_structure_and_stable_order():
    with Nginx(CONF) as n:
        traffic(n)
        a = n.scrape()
        b = n.scrape()
        fa = families(a)
        fb = families(b)
        assert fa == fb
        for name in ("http_requests_total", "http_request_duration_seconds",
                     "gateway_requests_total", "gateway_request_duration_seconds",
                     "namespace_requests_total", "upstream_requests_total", "errors_total",
                     "active_connections", "gateway_metrics_series",
                     "gateway_metrics_dropped_updates_total"):
            assert name in fa, name
        # identical apart from the nginx_* and zone usage lines
        assert stable_part(a) == stable_part(b)
        assert len(stable_part(a)) > 100
        # still identical after more traffic to existing series (values change, order not)
        traffic(n)
        c = n.scrape()
        strip = lambda t: [re.sub(r" [^ ]+$", "", l) for l in stable_part(t)]  # noqa: E731
        assert strip(a) == strip(c)
        assert families(c) == fa
