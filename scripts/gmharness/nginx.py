"""nginx with the gateway-metrics module, in a prefix directory of its own.

Two ways to run it. By default start() lets nginx daemonize, as the tests do: it returns once
the port answers and the workers are up, and stop() sends SIGTERM to the master. With
foreground=True nginx stays a child of this process (`daemon off`), optionally under a wrapper
command such as valgrind, as the benchmarks and memcheck do: start() returns once this very
process listens, and stop() repeats a graceful signal until it exits."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from . import env
from .metrics import parse, promtool_check
from .ports import free_port, owns_listener, wait_port
from .wait import wait_for

# Default of Nginx(module=...): the module of env.MODULE at the time the config is written.
DEFAULT_MODULE = object()

# Every foreground nginx started, so that an interrupted run leaves nothing behind.
_STARTED = []


def kill_started():
    for p in list(_STARTED):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass
        _STARTED.remove(p)


def _lua_unavailable():
    # Under pytest a test that needs Lua is skipped; elsewhere (benchmarks) it is an error.
    if "pytest" in sys.modules:
        import pytest
        pytest.skip("lua-nginx-module is not available for the nginx under test")
    raise RuntimeError("lua-nginx-module is not available")


class Nginx:
    """`http` is the body of the http block; `{port}`, `{dir}` (the prefix) and `{root}` (the
    checkout) in it are replaced. `module` is the .so to load (default env.MODULE, None: nginx
    without the module). `http_head` goes first in the http block; `lua_dirs` are searched for
    Lua modules before lua/. `port` fixes the port (otherwise a free one, changed at start if
    another process took it meanwhile)."""

    def __init__(self, http, workers=2, lua=False, main="", port=None, *, module=DEFAULT_MODULE,
                 foreground=False, wrapper=(), single_process=False, prefix="gm-nginx-",
                 workdir=None, worker_connections=4096, http_head="", lua_dirs=()):
        if lua and not env.HAVE_LUA:
            _lua_unavailable()
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        # Workers run as an unprivileged user when the tests run as root: let them reach the
        # temp paths (proxy_cache, buffered bodies).
        os.chmod(self.dir, 0o755)
        self.port = port or free_port()
        # A port from free_port() was free when picked: another process (tests run in parallel)
        # may bind it before nginx does; start() then picks another one.
        self.auto_port = port is None
        self.lua = lua
        self.module = module
        self.foreground = foreground
        self.wrapper = list(wrapper)
        self.single_process = single_process
        self.worker_connections = worker_connections
        self.http_head = http_head
        self.lua_dirs = list(lua_dirs)
        self.proc = None            # the foreground nginx
        self.proc_started = False   # the daemon
        for d in ("logs", "tmp"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.write(http, workers, main)

    # ---- configuration ------------------------------------------------------------------------

    def write(self, http, workers=2, main=""):
        """(Re)writes nginx.conf; reload() makes a running nginx read it."""
        self.written = (http, workers, main)
        module = env.MODULE if self.module is DEFAULT_MODULE else self.module
        loads = ""
        if self.lua:
            loads += "".join(f"load_module {m};\n" for m in env.LUA_MODULES)
        if module:
            loads += f"load_module {module};\n"
        run_mode = ""
        if self.foreground:
            run_mode = "daemon off;\n" + ("master_process off;\n" if self.single_process else "")
        lua_path = ""
        if self.lua:
            dirs = [f"{env.ROOT}/lua"] + self.lua_dirs + ["/usr/share/lua/5.1"]
            lua_path = f'lua_package_path "{"".join(d + "/?.lua;" for d in dirs)};";'
        t = os.path.join(self.dir, "tmp")
        body = (http.replace("{port}", str(self.port)).replace("{dir}", self.dir)
                .replace("{root}", env.ROOT))
        text = f"""{loads}{run_mode}worker_processes {workers};
error_log {self.dir}/logs/error.log notice;
pid {self.dir}/nginx.pid;
{main}
events {{ worker_connections {self.worker_connections}; }}
http {{
    access_log off;
{self.http_head}    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    {lua_path}
{body}
}}
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def _port_taken(self, stderr):
        return self.auto_port and \
            f"bind() to 127.0.0.1:{self.port} failed (98: Address already in use)" in stderr

    def _new_port(self):
        self.port = free_port()  # taken since free_port() picked it: another one
        self.write(*self.written)
        try:
            os.remove(os.path.join(self.dir, "logs/error.log"))  # (its [emerg] is not this run's)
        except FileNotFoundError:
            pass

    # ---- running --------------------------------------------------------------------------------

    def cmd(self, *args):
        return subprocess.run([env.NGINX, "-p", self.dir, "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=30)

    def test_config(self):
        r = self.cmd("-t")
        return r.returncode, r.stderr

    def start(self, timeout=60):
        """Starts nginx; `timeout`: how long a foreground nginx may take to listen."""
        if self.foreground:
            return self._start_foreground(timeout)
        for attempt in range(5):
            r = self.cmd()
            if r.returncode == 0 or not self._port_taken(r.stderr) or attempt == 4:
                break
            self._new_port()
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

    def _start_foreground(self, timeout):
        r = subprocess.run([env.NGINX, "-p", self.dir, "-c", self.conf, "-t", "-q"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"nginx -t failed for {self.conf}:\n{r.stderr}")
        for attempt in range(5):
            self.proc = subprocess.Popen(self.wrapper + [env.NGINX, "-p", self.dir, "-c", self.conf],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _STARTED.append(self.proc)
            deadline = time.time() + timeout
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace")
                    if self._port_taken(err) and attempt < 4:
                        _STARTED.remove(self.proc)
                        self._new_port()
                        break
                    raise RuntimeError(f"nginx exited at start (rc {self.proc.returncode}):\n"
                                       f"{err}\n{self.error_log()[-3000:]}")
                # this nginx, not another process on the same port
                if owns_listener(self.proc.pid, self.port):
                    return self
                if time.time() > deadline:
                    raise TimeoutError(f"nginx did not listen on {self.port}")
                time.sleep(0.05)

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

    def stop(self, sig=signal.SIGQUIT, timeout=120):
        """Stops nginx. A foreground one gets `sig` (graceful by default: workers finish,
        callgrind writes its output) and its exit code is returned; a daemon gets SIGTERM."""
        if self.foreground:
            return self._stop_foreground(sig, timeout)
        if not self.proc_started:
            return None
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
        return None

    def _stop_foreground(self, sig, timeout):
        if not self.proc:
            return None
        p, self.proc = self.proc, None
        # A signal that lands while nginx is busy (not in epoll_wait) is handled, but nginx
        # then checks for it only after its next event, which may never come (no timers, no
        # connections): repeat the signal until it exits (harmless, and negligible in the
        # instruction counts).
        deadline = time.time() + timeout
        while p.poll() is None and time.time() < deadline:
            p.send_signal(sig)
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if p in _STARTED:
            _STARTED.remove(p)
        return p.returncode

    def cleanup(self):
        """Stops nginx and removes its directory (kept with GM_KEEP_TMP=1)."""
        self.stop()
        if not os.environ.get("GM_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # ---- looking at it --------------------------------------------------------------------------

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
        """The page, checked by promtool unless check=False (see metrics.scrape_timed for the
        streamed, timed scrape of the benchmarks)."""
        status, body, headers = self.get(path)
        assert status == 200, status
        text = body.decode("utf-8")
        if check:
            promtool_check(text)
        return text

    def metrics(self, path="/metrics"):
        return parse(self.scrape(path))
