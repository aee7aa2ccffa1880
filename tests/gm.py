"""Test harness: real nginx (Debian's /usr/sbin/nginx by default) with the built module, the
mock LLM upstream, scraping and parsing /metrics, promtool."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.environ.get("GM_MODULE", os.path.join(ROOT, "target/modules/ngx_http_gateway_metrics_module.so"))
NGINX = os.environ.get("GM_NGINX", "/usr/sbin/nginx")
LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so"]
# Whether the nginx under test can load Debian's lua module (not the case for other builds).
HAVE_LUA = os.environ.get("GM_NO_LUA") != "1" and all(os.path.exists(p) for p in LUA_MODULES)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


class Nginx:
    """An nginx instance in its own prefix directory. `http` is the body of the http block;
    `{port}` in it is replaced by the listening port."""

    def __init__(self, http, workers=2, lua=False, main="", port=None):
        if lua and not HAVE_LUA:
            import pytest
            pytest.skip("lua-nginx-module is not available for the nginx under test")
        self.dir = tempfile.mkdtemp(prefix="gm-nginx-")
        # Workers run as an unprivileged user when the tests run as root: let them reach the
        # temp paths (proxy_cache, buffered bodies).
        os.chmod(self.dir, 0o755)
        self.port = port or free_port()
        # A port from free_port() was free when picked: another process (tests run in parallel)
        # may bind it before nginx does; start() then picks another one.
        self.auto_port = port is None
        self.lua = lua
        for d in ("logs", "tmp"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.write(http, workers, main)
        self.proc_started = False

    def write(self, http, workers=2, main=""):
        self.written = (http, workers, main)
        loads = ""
        if self.lua:
            loads = "".join(f"load_module {m};\n" for m in LUA_MODULES)
        lua_path = ""
        if self.lua:
            lua_path = f'lua_package_path "{ROOT}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";\n'
        t = os.path.join(self.dir, "tmp")
        text = f"""{loads}load_module {MODULE};
worker_processes {workers};
error_log {self.dir}/logs/error.log notice;
pid {self.dir}/nginx.pid;
{main}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    {lua_path}
{http.replace("{port}", str(self.port)).replace("{dir}", self.dir)}
}}
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def cmd(self, *args):
        return subprocess.run([NGINX, "-p", self.dir, "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=30)

    def test_config(self):
        r = self.cmd("-t")
        return r.returncode, r.stderr

    def start(self):
        for attempt in range(5):
            r = self.cmd()
            taken = f"bind() to 127.0.0.1:{self.port} failed (98: Address already in use)"
            if r.returncode == 0 or not (self.auto_port and taken in r.stderr) or attempt == 4:
                break
            self.port = free_port()  # taken since free_port() picked it: another one
            self.write(*self.written)
            os.remove(os.path.join(self.dir, "logs/error.log"))  # (its [emerg] is not this run's)
        if r.returncode != 0:
            raise RuntimeError(f"nginx failed to start: {r.stderr}\n{self.error_log()}")
        self.proc_started = True
        wait_port(self.port)
        # `nginx` returns as soon as its daemon has the listening sockets (a connection then
        # succeeds), maybe before that daemon has written its pid file and forked the workers
        # (tests look at worker_pids()): wait for those too.
        workers = self.written[1]
        if "master_process off" not in self.written[2]:
            want = workers if isinstance(workers, int) else 1
            wait_for(self._children, lambda c: c is not None and len(c) >= want, timeout=30,
                     what="nginx's worker processes")
        return self

    def _children(self):
        try:
            return self.worker_pids()
        except (FileNotFoundError, ValueError):  # no pid file yet, or half written
            return None

    def master_pid(self):
        with open(os.path.join(self.dir, "nginx.pid")) as f:
            return int(f.read().strip())

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.master_pid())], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def reload(self, wait=True):
        before = set(self.worker_pids())
        r = self.cmd("-s", "reload")
        assert r.returncode == 0, r.stderr
        if wait:
            deadline = time.time() + 10
            while time.time() < deadline:
                now = set(self.worker_pids())
                if now and not (now & before):
                    return
                time.sleep(0.05)
            raise TimeoutError("reload did not replace the workers")

    def stop(self):
        if not self.proc_started:
            return
        try:
            pid = self.master_pid()
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                    time.sleep(0.05)
                except ProcessLookupError:
                    break
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        self.proc_started = False

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "logs/error.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def crashes(self):
        """Worker crashes or restarts seen in error.log."""
        return [l for l in self.error_log().splitlines()
                if "exited on signal" in l or "worker process" in l and "exited with code" in l
                and "code 0" not in l]

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, headers=None, method="GET", data=None):
        req = urllib.request.Request(self.url(path), headers=headers or {}, method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def scrape(self, path="/metrics", check=True):
        status, body, headers = self.get(path)
        assert status == 200, status
        text = body.decode("utf-8")
        if check:
            promtool_check(text)
        return text

    def metrics(self, path="/metrics"):
        return parse(self.scrape(path))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if not os.environ.get("GM_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def promtool_check(text):
    """`promtool check metrics` must report nothing (it also lints names and HELP)."""
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        f"promtool check metrics: rc={r.returncode}\n{r.stdout}\n{r.stderr}"


class Samples(dict):
    """{(sample_name, frozenset(labels.items())): value} with helpers."""

    def get1(self, name, **labels):
        return self.get((name, frozenset(labels.items())), 0.0)

    def select(self, name, **labels):
        want = set(labels.items())
        return {k[1]: v for k, v in self.items() if k[0] == name and want <= set(k[1])}

    def total(self, name, **labels):
        return sum(self.select(name, **labels).values())


def parse(text):
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def histogram_consistent(samples, name):
    """Every histogram series of `name`: cumulative buckets monotone, +Inf == _count."""
    series = {}
    for (n, labels), v in samples.items():
        if n == name + "_bucket":
            d = dict(labels)
            le = d.pop("le")
            series.setdefault(frozenset(d.items()), []).append((float(le), v))
    for labels, buckets in series.items():
        buckets.sort()
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{name}{dict(labels)} buckets not monotone: {buckets}"
        assert buckets[-1][0] == float("inf")
        count = samples[(name + "_count", labels)]
        assert buckets[-1][1] == count, f"{name}{dict(labels)} +Inf {buckets[-1][1]} != count {count}"
    return len(series)


class MockLLM:
    """scripts/mock_llm.py on a free port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            ["python3", os.path.join(ROOT, "scripts/mock_llm.py"), "--port", "0", "--quiet", *args],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)\s*$", line)
        assert m, f"mock did not start: {line!r}"
        self.port = int(m.group(1))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class LoopbackServer:
    """A TCP server on a free loopback port serving each connection in a thread of its own:
    subclasses define _serve(conn) and call start() once their state is set."""

    def __init__(self, backlog=512):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()


class Gate(LoopbackServer):
    """An HTTP upstream on a free loopback port that holds every request until release(). A test
    that needs requests in flight waits for them (wait_arrived, or a gauge) instead of racing a
    fixed upstream delay that a loaded machine can outrun. Answers 200 with a small JSON body and
    `Connection: close`; hold() makes it hold the requests that arrive from then on."""

    BODY = b'{"object":"gate"}'

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition()
        self.arrived = 0        # requests read so far
        self.released = False
        self.releases = 0       # release() calls: a request held before one is answered
        self.closed = False
        self.start()

    def _serve(self, c):
        try:
            with c:
                c.settimeout(300)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head, re.I)
                while length and len(body) < int(length.group(1)):
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                with self.cond:
                    self.arrived += 1
                    self.cond.notify_all()
                    seen = self.releases
                    self.cond.wait_for(lambda: self.released or self.releases != seen
                                       or self.closed)
                    if self.closed:
                        return
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(self.BODY), self.BODY))
        except OSError:
            pass  # nginx gave up on the request (client gone, timeout, worker killed)

    def wait_arrived(self, n, timeout=30.0):
        """Waits until `n` requests in all have arrived (and are held, unless released)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.arrived >= n, timeout):
                raise TimeoutError(f"gate: {self.arrived} of {n} requests arrived in {timeout}s")

    def release(self):
        """Answers the held requests, and the next ones at once."""
        with self.cond:
            self.released = True
            self.releases += 1
            self.cond.notify_all()

    def hold(self):
        with self.cond:
            self.released = False

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- generic helpers (appended for the foundation tests) -------------------------------------

def wait_for(fn, pred, timeout=10.0, interval=0.05, what="condition"):
    """Calls fn() until pred(value) holds; returns that value. Raises with the last value."""
    deadline = time.time() + timeout
    while True:
        value = fn()
        if pred(value):
            return value
        if time.time() >= deadline:
            raise TimeoutError(f"{what}: not reached within {timeout}s, last value {value!r}")
        time.sleep(interval)


def run_concurrent(port, requests, threads=16, timeout=30, bodies=False):
    """Sends `requests` (tuples (method, path, headers, body)) over `threads` keep-alive
    http.client connections, request i on connection i % threads. Returns a list of
    (status, headers) — (status, headers, body) with `bodies` — in the order of `requests`;
    raises if any request failed."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    results = [None] * len(requests)

    def worker(t):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            for i in range(t, len(requests), threads):
                method, path, headers, body = requests[i]
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                results[i] = (resp.status, dict(resp.headers)) + ((data,) if bodies else ())
        finally:
            conn.close()

    with ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(worker, t) for t in range(threads)]:
            f.result()
    return results


def raw_request(port, data, timeout=30):
    """Sends raw bytes (a complete request, normally with `Connection: close`) and reads the
    response until the server closes. Returns (status, header bytes, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, body


def settle(n, pred, timeout=5.0):
    """Scrapes `n` until pred(samples) holds (nginx runs the log phase just after sending the
    response, so a client can be a hair faster than the recording). Returns the last scrape
    either way: the caller's exact assertions then report any difference."""
    deadline = time.time() + timeout
    while True:
        m = n.metrics()
        if pred(m) or time.time() >= deadline:
            return m
        time.sleep(0.05)


_PRIVATE_MODULE = None


def private_module_copy():
    """A snapshot of MODULE private to this test process. scripts/build overwrites the .so in
    place (`cp -f` keeps the inode), which crashes every nginx that has it mapped; tests running
    against a snapshot are immune to a rebuild happening at the same time."""
    global _PRIVATE_MODULE
    if _PRIVATE_MODULE is None:
        import atexit
        d = tempfile.mkdtemp(prefix="gm-module-")
        os.chmod(d, 0o755)
        dst = os.path.join(d, os.path.basename(MODULE))
        wait_for(lambda: os.path.exists(MODULE), bool, timeout=300, interval=1,
                 what=f"{MODULE} (being built?)")
        for _ in range(20):  # until the copy is not torn by a concurrent build
            shutil.copyfile(MODULE, dst)
            with open(MODULE, "rb") as a, open(dst, "rb") as b:
                if a.read() == b.read():
                    break
            time.sleep(0.5)
        os.chmod(dst, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _PRIVATE_MODULE = dst
    return _PRIVATE_MODULE


def _private_module_fixture():
    import sys

    import pytest

    @pytest.fixture(autouse=True)
    def private_module(monkeypatch):
        """Import this into a test module to run its nginx instances on a private_module_copy()."""
        monkeypatch.setattr(sys.modules[__name__], "MODULE", private_module_copy())
        yield

    return private_module


private_module = _private_module_fixture()


def listener_inodes(port, host="127.0.0.1"):
    """Socket inodes of the TCP sockets LISTENing on host:port (IPv4), from /proc/net/tcp."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: TCP_LISTEN
                out.add(int(fields[9]))
    return out


def _socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def owns_listener(pid, port, host="127.0.0.1"):
    """Whether process `pid` holds a socket listening on host:port. A port picked by free_port()
    and then bound by a child process may have been taken meanwhile by another test's server: an
    answer on the port alone does not say it is ours."""
    inodes = listener_inodes(port, host)
    return bool(inodes and inodes & _socket_inodes(pid))


def listener_pids(port, host="127.0.0.1"):
    """The processes holding a socket listening on host:port."""
    inodes = listener_inodes(port, host)
    if not inodes:
        return set()
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and inodes & _socket_inodes(p)}
