"""/metrics rendered in slices on the event loop (the default, no render thread pool): big
pages are complete and valid, chunked keep-alive scrapes follow each other, HTTP/1.0 and HEAD
work, a slow or vanished client neither holds up the worker nor leaks, reloads and shutdowns
in the middle of a scrape are clean, and the opt-in thread-pool mode renders the same page."""
import http.client
import os
import re
import socket
import struct
import threading
import time

import pytest

import gmharness as gm
from gmharness import Nginx, parse, promtool_check, raw_request, wait_for
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone gm 64m;
    gateway_metrics_max_series 1000000;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_counter filled_total "Series filled from Lua." kind id;
    {pool}
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        {fill}
    }
"""
LUA_FILL = """
        location = /fill {
            gateway_metrics off;
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local labels = { "lua", "" }
                for i = tonumber(ngx.var.arg_from), tonumber(ngx.var.arg_to) - 1 do
                    labels[2] = string.format("s%07d", i)
                    if gm.inc("filled_total", labels, i % 7 + 1) ~= true then
                        ngx.status = 500
                        ngx.say("failed at ", i)
                        return
                    end
                end
                ngx.say("ok")
            }
        }
"""
POOL = "gateway_metrics_render_thread_pool default;"
# One stored request series renders as this many sample lines (all the derived views).
LINES_PER_REQUEST_SERIES = 37


def conf(pool="", lua=False):
    return CONF.replace("{pool}", pool).replace("{fill}", LUA_FILL if lua else "")


def fill(port, start, end, prefix="t"):
    """One request per namespace {prefix}{i}, i in [start, end), pipelined over one
    connections of 500 requests: one new stored request series each."""
    for b0 in range(start, end, 500):
        b1 = min(b0 + 500, end)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"".join(f"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-Namespace: {prefix}{i}\r\n\r\n"
                               .encode() for i in range(b0, b1)))
            got = b""
            while got.count(b"\r\n\r\nok") < b1 - b0:
                chunk = s.recv(1 << 20)
                assert chunk, "connection closed while filling"
                got += chunk
            assert got.count(b" 200 OK\r\n") == b1 - b0


def series_count(n):
    return int(n.metrics().get1("gateway_metrics_series", zone="gm"))


def dechunk(body):
    """Decodes a chunked body; raises if it is incomplete."""
    out, i = [], 0
    while True:
        j = body.index(b"\r\n", i)
        size = int(body[i:j].split(b";")[0], 16)
        if size == 0:
            assert body[j + 2:j + 4] == b"\r\n", "no end after the last chunk"
            return b"".join(out)
        out.append(body[j + 2:j + 2 + size])
        assert len(out[-1]) == size, "chunk cut short"
        assert body[j + 2 + size:j + 4 + size] == b"\r\n"
        i = j + 4 + size


def stable(text):
    """The page without the lines that change from one scrape to the next."""
    return [line for line in text.splitlines()
            if not re.match(r"(# (HELP|TYPE) )?(nginx_|gateway_metrics_zone_)", line)]


def series_lines(text):
    """The stable lines without their values (values read later may have moved)."""
    return [re.sub(r" [^ ]+$", "", line) for line in stable(text)]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def open_scrape(port, rcvbuf=None, request=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def stalled(n, s):
    """Whether nginx's side of scrape socket `s` holds data the client has no room for (the
    client's window is closed): the scrape now waits for the client."""
    peer = s.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == n.port and int(remote[1], 16) == peer:
                return int(fields[4].split(":")[0], 16) > 0  # tx_queue
    return False


def read_until_closed_or(s, n=None):
    """Reads until the server closes, or until n bytes."""
    data = bytearray()
    while n is None or len(data) < n:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
    return bytes(data)


def read_response(s, already=b""):
    """Reads one chunked response from a keep-alive socket: (head, decoded body, what was
    read past it)."""
    data = bytearray(already)

    def more():
        b = s.recv(1 << 20)
        assert b, "closed mid-response"
        data.extend(b)

    while b"\r\n\r\n" not in data:
        more()
    end = data.index(b"\r\n\r\n")
    head, i = bytes(data[:end]), end + 4
    assert b"Transfer-Encoding: chunked" in head, head
    out = []
    while True:
        while data.find(b"\r\n", i) < 0:
            more()
        j = data.index(b"\r\n", i)
        size = int(data[i:j], 16)
        while len(data) < j + 4 + size:
            more()
        out.append(bytes(data[j + 2:j + 2 + size]))
        assert data[j + 2 + size:j + 4 + size] == b"\r\n"
        i = j + 4 + size
        if size == 0:
            return head, b"".join(out), bytes(data[i:])


def clean(n):
    log = n.error_log()
    assert n.crashes() == [], n.crashes()
    assert "[alert]" not in log and "[crit]" not in log and "[emerg]" not in log, log[-3000:]


def test_big_page_is_complete_and_valid():
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 1500)
        status, body, headers = n.get("/metrics")
        assert status == 200
        assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
        text = body.decode()
        assert len(body) > 4_000_000  # many slices of 256 KiB
        promtool_check(text)
        m = parse(text)
        assert m.get1("gateway_metrics_series", zone="gm") == 1500
        assert m.total("http_requests_total") == 1500
        assert len(m.select("http_requests_total")) == 1500
        assert len(m.select("namespace_requests_total")) == 1500
        samples = sum(1 for line in text.splitlines() if not line.startswith("#"))
        assert samples >= 1500 * LINES_PER_REQUEST_SERIES
        clean(n)


@pytest.mark.skipif(not gm.HAVE_LUA, reason="needs Debian's lua-nginx-module")
def test_25k_declared_series_match_the_thread_pool_render():
    """The same zone rendered in slices and (after a reload that keeps the zone) in the
    render thread: the same page."""
    n_series = 25_000
    with Nginx(conf(lua=True), workers=1, lua=True) as n:
        for a in range(0, n_series, 5000):
            st, body, _ = n.get(f"/fill?from={a}&to={a + 5000}")
            assert st == 200 and body == b"ok\n", body
        fill(n.port, 0, 200)
        sliced = n.scrape()  # promtool-checked
        m = parse(sliced)
        filled = m.select("filled_total")
        assert len(filled) == n_series
        assert sum(filled.values()) == sum(i % 7 + 1 for i in range(n_series))
        assert m.get1("gateway_metrics_series", zone="gm") == n_series + 200

        n.write(conf(POOL, lua=True), workers=1)
        n.reload()
        status, body, headers = n.get("/metrics")
        assert status == 200 and int(headers["Content-Length"]) == len(body)
        pooled = body.decode()
        assert stable(pooled) == stable(sliced)
        assert len(stable(sliced)) > n_series + 200 * LINES_PER_REQUEST_SERIES
        clean(n)


def test_keepalive_scrapes_in_a_row_and_pipelined():
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 400)
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
        pages = []
        for i in range(5):
            c.request("GET", "/metrics")
            r = c.getresponse()
            body = r.read()
            assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
            pages.append(body.decode())
            c.request("GET", "/v1/between", headers={"X-Namespace": "t1"})
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"ok"
        c.close()
        promtool_check(pages[-1])
        assert len({len(stable(p)) for p in pages}) == 1
        # Three scrapes pipelined on one connection, then a request.
        pages.append(n.scrape(check=False))
        with socket.create_connection(("127.0.0.1", n.port), timeout=30) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                      + b"GET /v1/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = b""
            for _ in range(3):
                _, body, rest = read_response(s, rest)
                assert stable(body.decode()) == stable(pages[-1])
            rest += read_until_closed_or(s)
            assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"ok")
        clean(n)


def test_http10_and_head():
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 300)
        page11 = n.scrape()
        # HTTP/1.0: no chunked encoding; the end of the page is the end of the connection.
        for req in (b"GET /metrics HTTP/1.0\r\n\r\n",
                    b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
            st, head, body = raw_request(n.port, req)
            assert st == 200
            assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
            assert b"Connection: close" in head
            text = body.decode()
            promtool_check(text)
            assert stable(text) == stable(page11)
        # HEAD: the header only, whatever the version.
        for req in (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"HEAD /metrics HTTP/1.0\r\n\r\n"):
            st, head, body = raw_request(n.port, req)
            assert st == 200 and body == b""
            assert b"text/plain; version=0.0.4" in head
            assert b"Transfer-Encoding" not in head
        # HEAD then GET on one keep-alive connection.
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
        c.request("HEAD", "/metrics")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b""
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert r.status == 200 and stable(r.read().decode()) == stable(page11)
        c.close()
        clean(n)


def test_slow_reader_does_not_hold_up_the_worker():
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 5000)
        full = n.scrape(check=False)
        size = len(full)
        assert size > 15_000_000
        [pid] = n.worker_pids()
        rss0 = rss_kb(pid)
        s = open_scrape(n.port, rcvbuf=16384)
        first = read_until_closed_or(s, 100_000)
        wait_for(lambda: stalled(n, s), bool, what="the scrape waiting for its client")
        lat = []
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        for i in range(200):
            t = time.perf_counter()
            c.request("GET", "/v1/x", headers={"X-Namespace": f"t{i}"})
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"ok"
            lat.append(time.perf_counter() - t)
        c.close()
        assert max(lat) < 1.0, max(lat)
        # Backpressure: the worker holds a few buffers, not the page.
        grown = rss_kb(pid) - rss0
        assert grown * 1024 < size / 4, f"worker RSS grew by {grown} kB for a {size} B page"
        # Reading on, slowly at first: the rest of the page comes, complete.
        rest = bytearray()
        for _ in range(5):
            rest += s.recv(4096)
            time.sleep(0.05)
        data = first + bytes(rest)
        while not data.endswith(b"\r\n0\r\n\r\n"):
            b = s.recv(1 << 20)
            assert b, "closed before the end of the page"
            data += b
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        text = dechunk(body).decode()
        promtool_check(text)
        assert series_lines(text) == series_lines(full)
        assert n.worker_pids() == [pid]
        clean(n)


def test_client_gone_mid_page():
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 2000)
        [pid] = n.worker_pids()
        for i, cut in enumerate([0, 1, 4000, 100_000, 1_000_000, 3_000_000, 6_000_000]):
            for rst in (False, True):
                s = open_scrape(n.port, rcvbuf=65536 if i % 2 else None)
                got = len(read_until_closed_or(s, cut)) if cut else 0
                assert got >= cut
                if rst:  # an abortive close: RST instead of FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        # Stalled first, then gone.
        s = open_scrape(n.port, rcvbuf=4096)
        s.recv(1000)
        wait_for(lambda: stalled(n, s), bool, what="the scrape waiting for its client")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        # Every scrape's connection is closed and freed once the worker has seen the client
        # go (this one is then the only one writing): wait for that, not for a fixed time.
        writing = lambda t: re.search(r"^nginx_connections_writing (\d+)$", t, re.M)  # noqa: E731
        wait_for(lambda: n.scrape(check=False), lambda t: writing(t) is None
                 or writing(t).group(1) == "1", what="the aborted scrapes freed")
        for i in range(3):
            text = n.scrape(check=i == 0)
            assert 'gateway_metrics_series{zone="gm"} 2000\n' in text
        assert n.worker_pids() == [pid]
        assert writing(text) is None or writing(text).group(1) == "1", writing(text)
        clean(n)


def test_requests_are_served_while_big_pages_render():
    """A request arriving during a scrape waits for one slice, not for the page (which is paced
    while the worker has this traffic)."""
    with Nginx(conf(), workers=1) as n:
        fill(n.port, 0, 3000)
        durations, errors = [], []
        done = threading.Event()

        def scraper():
            try:
                for _ in range(3):
                    t = time.perf_counter()
                    st, body, _ = n.get("/metrics")
                    assert st == 200 and body.endswith(b"\n")
                    durations.append(time.perf_counter() - t)
            except Exception as e:  # reported below
                errors.append(e)
            finally:
                done.set()

        th = threading.Thread(target=scraper)
        lat = []
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        th.start()
        while not done.is_set():
            t = time.perf_counter()
            c.request("GET", "/v1/x", headers={"X-Namespace": "t5"})
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"ok"
            lat.append(time.perf_counter() - t)
        th.join()
        c.close()
        assert not errors, errors
        lat.sort()
        page_time = sorted(durations)[len(durations) // 2]
        # One-shot rendering would make some request wait for a whole page (tens of ms).
        assert len(lat) > 20
        assert lat[int(len(lat) * 0.95)] < page_time / 4, (lat[-5:], page_time)
        clean(n)


def test_reload_and_shutdown_during_a_scrape():
    main = "worker_shutdown_timeout 3s;"
    with Nginx(conf(), workers=1, main=main) as n:
        fill(n.port, 0, 2000)
        full = n.scrape(check=False)
        [old] = n.worker_pids()
        # A reload while a scrape waits for its client: the old worker finishes the scrape.
        s = open_scrape(n.port, rcvbuf=8192)
        data = read_until_closed_or(s, 50_000)
        r = n.cmd("-s", "reload")
        assert r.returncode == 0, r.stderr
        wait_for(n.worker_pids, lambda p: len(set(p) - {old}) == 1, what="new worker")
        assert n.scrape(check=False)
        data += read_until_closed_or(s)
        s.close()
        text = dechunk(data.partition(b"\r\n\r\n")[2]).decode()
        assert series_lines(text) == series_lines(full)
        wait_for(n.worker_pids, lambda p: old not in p, what="old worker exit")
        # A client that stalls through a reload: the old worker closes it at
        # worker_shutdown_timeout and exits.
        [old] = n.worker_pids()
        s = open_scrape(n.port, rcvbuf=4096)
        s.recv(1000)
        r = n.cmd("-s", "reload")
        assert r.returncode == 0, r.stderr
        wait_for(n.worker_pids, lambda p: old not in p, timeout=15, what="old worker exit")
        s.settimeout(5)
        rest = read_until_closed_or(s)
        assert not rest.endswith(b"\r\n0\r\n\r\n"), "the stalled scrape was cut"
        s.close()
        # Shutting down (quit) with a stalled scrape.
        s = open_scrape(n.port, rcvbuf=4096)
        s.recv(1000)
        r = n.cmd("-s", "quit")
        assert r.returncode == 0
        pid = n.master_pid()
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break
        else:
            raise AssertionError("nginx did not exit")
        s.close()
        n.proc_started = False
        clean(n)


def test_thread_pool_mode_still_renders_in_one_piece():
    with Nginx(conf(POOL), workers=1) as n:
        fill(n.port, 0, 600)
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
        sizes = []
        for _ in range(3):
            c.request("GET", "/metrics")
            r = c.getresponse()
            body = r.read()
            assert r.status == 200
            assert int(r.getheader("Content-Length")) == len(body)
            assert r.getheader("Transfer-Encoding") is None
            sizes.append(len(stable(body.decode())))
        c.close()
        promtool_check(body.decode())
        assert len(set(sizes)) == 1
        st, head, body = raw_request(n.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert st == 200 and body == b""
        clean(n)
