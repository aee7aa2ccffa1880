"""The exporter at its edges: scrapes that overlap share the worker's scrape budget instead of
throttling each other, a client that goes away ends its scrape at once (HTTP/1.1 and HTTP/2),
subrequests are refused with a clear error instead of a page cut short, and the page keeps its
bytes and Content-Type under charset filters."""

import os
import signal
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import gmharness as gm
from gmharness import Nginx, run_concurrent, wait_for

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def nginx_has(flag):
    r = subprocess.run([gm.NGINX, "-V"], capture_output=True, text=True)
    return flag in r.stderr


def fill(n, count, prefix="ns"):
    reqs = [("GET", "/r", {"X-Namespace": f"{prefix}{i:05d}"}, None) for i in range(count)]
    res = run_concurrent(n.port, reqs, threads=8)
    assert {s for s, _ in res} == {200}
    wait_for(lambda: n.get("/metrics")[1].count(b'http_requests_total{'), lambda c: c >= count,
             timeout=30, what="all namespaces recorded")


def scrape_bytes(port, path="/metrics"):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
        return r.read()


def test_overlapping_scrapes_share_the_worker_instead_of_crawling():
    conf = """
        gateway_metrics_zone gm 64m;
        gateway_metrics_namespace $http_x_namespace;
        server {
            listen 127.0.0.1:{port};
            gateway_metrics on;
            location = /r { return 200 "ok\\n"; }
            location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        }
    """
    with Nginx(conf, workers=1) as n:
        fill(n, 3000)
        size = len(scrape_bytes(n.port))
        assert size > 5_000_000, size
        t0 = time.time()
        for _ in range(2):
            assert len(scrape_bytes(n.port)) >= size
        one_after_the_other = time.time() - t0
        t0 = time.time()
        with ThreadPoolExecutor(2) as ex:
            sizes = list(ex.map(lambda _: len(scrape_bytes(n.port)), range(2)))
        together = time.time() - t0
        assert min(sizes) >= size
        # Before, the second scrape's slices counted as traffic and both crawled at ~16 KiB per
        # 1.5 ms (x36); sharing the worker, two at once take about as long as two in a row.
        assert together < 3 * one_after_the_other + 1.0, (together, one_after_the_other)


H2_CONF = """
    gateway_metrics_zone gm 64m;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port} http2;
        listen 127.0.0.1:%d;
        gateway_metrics on;
        send_timeout 60s;
        gzip on;
        gzip_types text/plain;
        location = /r { return 200 "ok\\n"; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        location = /status { stub_status; }
    }
"""

needs_h2 = pytest.mark.skipif(not nginx_has("--with-http_v2_module"),
                              reason="nginx built without HTTP/2")


def h2_gateway(namespaces):
    """An HTTP/2 (prior knowledge) gateway, plus an HTTP/1.1 port to fill it quickly."""
    for _ in range(5):
        h1 = gm.free_port()
        n = Nginx(H2_CONF % h1, workers=1)
        try:
            n.start()
            break
        except RuntimeError as e:  # the second port was taken meanwhile: another one
            n.__exit__()
            if "Address already in use" not in str(e):
                raise
    else:
        raise RuntimeError("no free port pair")
    reqs = [("GET", "/r", {"X-Namespace": f"h{i:05d}"}, None) for i in range(namespaces)]
    assert {s for s, _ in run_concurrent(h1, reqs, threads=8)} == {200}
    wait_for(lambda: scrape_bytes(h1).count(b"http_requests_total{"),
             lambda c: c >= namespaces, timeout=30, what="all namespaces recorded")
    return n, h1


def active_connections(port):
    """stub_status' count (this request's connection included)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as r:
        return int(r.read().decode().split("Active connections:")[1].split()[0])


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) \
        + payload


def h2_scrape(port, window=1024):
    """Starts an HTTP/2 (prior knowledge) GET /metrics with a 1 KiB flow-control window that is
    never widened: nginx sends that much and then waits for a window update, not for the socket."""
    def literal(index, value):  # HPACK literal without indexing, name from the static table
        return bytes([index, len(value)]) + value.encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    s.sendall(h2_frame(0x4, 0, 0, struct.pack(">HI", 0x4, window)))  # INITIAL_WINDOW_SIZE
    headers = b"\x82\x86" + literal(4, "/metrics") + literal(1, "localhost")  # GET, http
    s.sendall(h2_frame(0x1, 0x5, 1, headers))  # END_STREAM | END_HEADERS
    return s


def read_for(s, seconds):
    s.settimeout(0.1)
    got, end = 0, time.time() + seconds
    while time.time() < end:
        try:
            b = s.recv(65536)
        except socket.timeout:
            continue
        if not b:
            break
        got += len(b)
    return got


@needs_h2
def test_http2_scrapes_whose_client_left_end_at_once():
    n, h1 = h2_gateway(2000)
    try:
        base = active_connections(h1)
        socks = [h2_scrape(n.port) for _ in range(10)]
        wait_for(lambda: active_connections(h1), lambda c: c >= base + 10,
                 what="10 scrapes under way")
        for s in socks:
            # everything nginx sent is read, then a clean close (FIN, nothing unread)
            assert read_for(s, 0.3) > 1024
            s.shutdown(socket.SHUT_WR)
            s.close()
        # nginx reports the close to a stream through its read event only: the scrapes end
        # now, not at send_timeout (60 s), and the sockets do not stay in CLOSE-WAIT
        wait_for(lambda: active_connections(h1), lambda c: c == base, timeout=10,
                 what="the abandoned scrapes closed")
        assert n.crashes() == []
    finally:
        n.__exit__()


@needs_h2
def test_http2_gzip_scrapes_on_shared_connections_finish():
    n, h1 = h2_gateway(3000)
    try:
        size = len(scrape_bytes(h1))
        assert size > 5_000_000, size
        # 3 connections, 30 scrapes, gzip, several streams at once on each connection
        r = subprocess.run(["h2load", "-n", "30", "-c", "3", "-m", "4",
                            "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{n.port}/metrics"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "30 succeeded, 0 failed, 0 errored, 0 timeout" in r.stdout, r.stdout
        assert "30 2xx" in r.stdout, r.stdout
        assert n.crashes() == []
    finally:
        n.__exit__()


def test_the_exporter_in_a_subrequest_is_refused_with_a_clear_error():
    conf = """
        gateway_metrics_zone gm 4m;
        server {
            listen 127.0.0.1:{port};
            gateway_metrics on;
            location = /page.html {
                ssi on;
                default_type text/html;
                return 200 '<p>before</p><!--# include virtual="/metrics" --><p>after</p>';
            }
            location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        }
    """
    with Nginx(conf) as n:
        status, body, _ = n.get("/page.html")
        assert status == 200
        assert b"<p>before</p>" in body and b"<p>after</p>" in body
        assert b"# HELP" not in body
        assert b"500 Internal Server Error" in body  # what SSI includes for a failed include
        assert "the metrics page cannot be served in a subrequest" in n.error_log()
        # the page itself still works
        assert n.metrics()
        assert n.crashes() == []


def test_charset_filters_leave_the_page_alone():
    conf = """
        gateway_metrics_zone gm 4m;
        gateway_metrics_namespace $http_x_namespace;
        include /etc/nginx/win-utf;
        server {
            listen 127.0.0.1:{port};
            gateway_metrics on;
            charset windows-1251;
            source_charset utf-8;
            location = /r { return 200 "ok\\n"; }
            location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
            location = /plain { gateway_metrics off; charset off; gateway_metrics_exporter; }
        }
    """
    if not os.path.exists("/etc/nginx/win-utf"):
        pytest.skip("no /etc/nginx/win-utf")
    with Nginx(conf, workers=1) as n:
        ns = "привет"
        assert n.get("/r", {"X-Namespace": ns.encode().decode("latin-1")})[0] == 200
        wait_for(lambda: n.get("/plain")[1], lambda b: ns.encode() in b, what="recorded")
        status, body, headers = n.get("/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        assert ns.encode() in body
        _, plain, plain_headers = n.get("/plain")
        assert plain_headers["Content-Type"] == CONTENT_TYPE
        gm.promtool_check(body.decode("utf-8"))
