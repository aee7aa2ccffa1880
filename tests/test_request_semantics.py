"""What a request counts as: a response cut short is an error whatever its status code (client
gone, client too slow for send_timeout, upstream reset, closed or silent mid-body), and only the
responses that came from an upstream are the upstream's (upstream_requests_total and the upstream
label): a local `return`, a limit_req rejection or a client gone before the upstream answered are
the gateway's own. The upstream here is a scripted one (OpenAI Chat Completions SSE chunks over
HTTP/1.1 chunked encoding) that can stop a stream in each of those ways on request."""

import json
import socket
import struct
import threading
import time

import pytest

from gmharness import LoopbackServer, Nginx, wait_for

N_CHUNKS = 40


def sse_chunk(i):
    body = {"id": "chatcmpl-cut", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ScriptedUpstream(LoopbackServer):
    """An HTTP/1.1 upstream whose behaviour the request path picks:
    /<kind>/<mode>: mode `complete` (40 chunks, then the end), `reset-3` (3 chunks, then a TCP
    reset), `close-3` (3 chunks, then a close without the last chunk), `stall-3` (3 chunks, then
    nothing until the test ends), `big` (4 MiB at once, Content-Length)."""

    def __init__(self, gap=0.05):
        super().__init__(backlog=64)
        self.gap = gap
        self.closing = threading.Event()
        self.start()

    def _serve(self, c):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return c.close()
                data += chunk
            line = data.split(b"\r\n", 1)[0].decode()
            method, path = line.split(" ")[:2]
            mode = path.rsplit("/", 1)[-1]
            if mode == "big":
                body = b"x" * (4 << 20)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
                if method != "HEAD":
                    c.sendall(body)
                return c.close()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n")
            if method == "HEAD":
                return c.close()
            stop = int(mode.split("-")[1]) if "-" in mode else N_CHUNKS
            for i in range(stop):
                ev = sse_chunk(i)
                c.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(self.gap)
            if mode.startswith("reset"):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return c.close()
            if mode.startswith("close"):
                c.shutdown(socket.SHUT_WR)
                return c.close()
            if mode.startswith("stall"):
                self.closing.wait(60)
                return c.close()
            done = b"data: [DONE]\n\n"
            c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            c.close()
        except OSError:
            c.close()

    def close(self):
        self.closing.set()
        self.sock.close()


CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_model $http_x_model;
    limit_req_zone $http_x_namespace zone=one:1m rate=1r/m;
    upstream script {{ server 127.0.0.1:{up}; }}
    server {{
        listen 127.0.0.1:{{port}};
        send_timeout 1s;
        gateway_metrics on;
        location /s/ {{
            proxy_pass http://script;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 1s;
        }}
        location /buffered/ {{
            proxy_pass http://script;
            proxy_http_version 1.1;
            proxy_read_timeout 1s;
        }}
        location /local {{ return 429 "budget spent\\n"; }}
        location /limited/ {{
            limit_req zone=one nodelay;
            proxy_pass http://script;
            proxy_http_version 1.1;
        }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""


@pytest.fixture(scope="module")
def gw():
    up = ScriptedUpstream()
    n = Nginx(CONF.format(up=up.port), workers=2)
    with n:
        yield n
    up.close()


def request(port, path, ns, method="POST"):
    return (f"{method} {path} HTTP/1.1\r\nHost: gw\r\nX-Namespace: {ns}\r\nX-Model: gpt-4o-mini\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            ).encode()


def read_all(port, path, ns, method="POST"):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request(port, path, ns, method))
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                return data
            data += b


def views(n, ns):
    """The views of a namespace's request in one scrape: namespace and model (success, error),
    error types, status codes, upstreams."""
    m = n.metrics()
    errors = {dict(k)["error_type"]: v for k, v in m.select("errors_total", namespace=ns).items()}
    return m, {
        "ns": (m.get1("namespace_requests_total", namespace=ns, status="success"),
               m.get1("namespace_requests_total", namespace=ns, status="error")),
        "model": (m.get1("model_requests_total", model="gpt-4o-mini", namespace=ns,
                         status="success"),
                  m.get1("model_requests_total", model="gpt-4o-mini", namespace=ns,
                         status="error")),
        "errors": errors,
        "status_code": {dict(k)["status_code"]: v
                        for k, v in m.select("http_requests_total", namespace=ns).items()},
        "upstream": {dict(k)["upstream"]
                     for k in m.select("http_requests_total", namespace=ns)},
    }


def upstream_counts(n):
    m = n.metrics()
    return (m.get1("upstream_requests_total", upstream="script", status="success"),
            m.get1("upstream_requests_total", upstream="script", status="error"))


def recorded(gw, ns):
    """The views once the request is recorded: the log phase records the request series, then
    the model series; a sliced page reads families at different moments."""
    return wait_for(lambda: views(gw, ns), lambda mv: sum(mv[1]["ns"]) >= 1
                    and sum(mv[1]["model"]) >= 1, timeout=15, what=f"{ns} recorded")


def test_a_whole_stream_is_a_success(gw):
    body = read_all(gw.port, "/s/complete", "whole")
    assert body.count(b"data: {") == N_CHUNKS and b"data: [DONE]" in body
    _, v = recorded(gw, "whole")
    assert v["ns"] == (1, 0) and v["model"] == (1, 0) and v["errors"] == {}
    assert v["status_code"] == {"200": 1} and v["upstream"] == {"script"}
    # a response without a body (HEAD) is whole too
    read_all(gw.port, "/s/complete", "head", method="HEAD")
    _, v = recorded(gw, "head")
    assert v["ns"] == (1, 0) and v["errors"] == {}


def cut(gw, ns, error_type, send):
    before = upstream_counts(gw)
    send()
    m, v = recorded(gw, ns)
    # nginx's own status stays the status_code label; the request is an error everywhere else
    assert v["status_code"] == {"200": 1}, v
    assert v["ns"] == (0, 1), v
    assert v["model"] == (0, 1), v
    assert v["errors"] == {error_type: 1}, v
    assert v["upstream"] == {"script"}
    assert m.get1("errors_total", error_type=error_type, namespace=ns, upstream="script") == 1
    after = upstream_counts(gw)
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


def test_client_abandoning_a_stream_is_client_closed(gw):
    def send():
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            s.sendall(request(gw.port, "/s/complete", "abandon"))
            data = b""
            while data.count(b"data: {") < 3:
                b = s.recv(65536)
                assert b, data
                data += b
        # 3 of 40 chunks read, then the client is gone
    cut(gw, "abandon", "client_closed", send)


@pytest.mark.parametrize("path,ns", [("/s/reset-3", "reset"), ("/buffered/reset-3", "reset-b"),
                                     ("/s/close-3", "close"), ("/buffered/close-3", "close-b")])
def test_upstream_reset_or_close_mid_body_is_upstream_error(gw, path, ns):
    def send():
        body = read_all(gw.port, path, ns)
        assert body.startswith(b"HTTP/1.1 200") and b"data: [DONE]" not in body
    cut(gw, ns, "upstream_error", send)


@pytest.mark.parametrize("path,ns", [("/s/stall-3", "stall"), ("/buffered/stall-3", "stall-b")])
def test_upstream_silent_mid_body_is_upstream_timeout(gw, path, ns):
    def send():
        t0 = time.time()
        body = read_all(gw.port, path, ns)
        assert body.count(b"data: {") == 3
        assert time.time() - t0 >= 1.0  # proxy_read_timeout
    cut(gw, ns, "upstream_timeout", send)


def test_client_too_slow_for_send_timeout_is_client_timeout(gw):
    def send():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        try:
            s.sendall(request(gw.port, "/s/big", "slow-client"))
            # never reads: nginx gives up after send_timeout (1 s) and records the request
            wait_for(gw.metrics,
                     lambda m: m.total("http_requests_total", namespace="slow-client") >= 1,
                     timeout=15, what="the send timeout")
        finally:
            s.close()
    cut(gw, "slow-client", "client_timeout", send)


def test_the_gateways_own_responses_are_not_the_upstreams(gw):
    before = gw.metrics()
    # a local return, and a limit_req rejection (the first request of the minute passes)
    assert read_all(gw.port, "/local", "own").startswith(b"HTTP/1.1 429")
    statuses = [read_all(gw.port, "/limited/complete", "lim")[9:12] for _ in range(3)]
    assert statuses == [b"200", b"503", b"503"], statuses
    m = wait_for(gw.metrics, lambda m: m.total("http_requests_total", namespace="lim") >= 3
                 and m.total("http_requests_total", namespace="own") >= 1, what="recorded")
    assert m.get1("http_requests_total", method="POST", endpoint="/local", status_code="429",
                  namespace="own", upstream="") == 1
    assert m.get1("errors_total", error_type="rate_limited", namespace="own", upstream="") == 1
    assert m.get1("http_requests_total", method="POST", endpoint="/limited/", status_code="503",
                  namespace="lim", upstream="") == 2
    assert m.get1("http_requests_total", method="POST", endpoint="/limited/", status_code="200",
                  namespace="lim", upstream="script") == 1
    # upstream_requests_total: only the one response the upstream gave, and no "" upstream
    assert not m.select("upstream_requests_total", upstream="")
    assert (m.get1("upstream_requests_total", upstream="script", status="success")
            - before.get1("upstream_requests_total", upstream="script", status="success")) == 1
    assert (m.get1("upstream_requests_total", upstream="script", status="error")
            == before.get1("upstream_requests_total", upstream="script", status="error"))
    assert gw.crashes() == []
