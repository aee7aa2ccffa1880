"""Monitoring engines as processes of their own on loopback, for the tests and scripts/fleet:
Prometheus (server, agent, remote-write receiver), VictoriaMetrics single node, vmalert,
Alertmanager, node_exporter; and PromAPI, a client of the Prometheus query API that
Prometheus and VictoriaMetrics both serve.

A Service listens on a port given to it, or on a free one (port=None): a port picked free may be
taken by another process before ours binds it (tests run side by side), so a service that
exits at start on an automatic port is started again on another, and it is up only once the
listening socket is its own and it answers its readiness URL."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from .ports import free_port, owns_listener


def _which(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


PROMETHEUS = _which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus")
                                      else None)
VICTORIA_METRICS = _which("victoria-metrics", "victoria-metrics-prod")
VMALERT = _which("vmalert", "vmalert-prod")
ALERTMANAGER = _which("prometheus-alertmanager", "alertmanager")
NODE_EXPORTER = _which("prometheus-node-exporter", "node_exporter")


def http_get(url, timeout=5):
    """(status, body bytes); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


class Service:
    """A server process writing to `<workdir>/<name>/log`. Subclasses give argv() (which may
    write config files naming self.port) and ready_path."""

    binary = None
    ready_path = "/"

    def __init__(self, workdir, name, port=None):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port
        self.auto_port = port is None
        self.proc = None
        self.log_path = os.path.join(self.dir, "log")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.addr}"

    def argv(self):
        raise NotImplementedError

    def ready(self):
        return http_get(self.url + self.ready_path, timeout=2)[0] == 200

    def start(self, timeout=60):
        if self.binary is None:
            raise RuntimeError(f"{self.name}: its program is not installed (scripts/setup)")
        for _ in range(5):
            if self.auto_port:
                self.port = free_port()
            argv = self.argv()
            with open(self.log_path, "ab") as log:
                # A session of its own: Ctrl-C in scripts/fleet's terminal reaches scripts/fleet
                # only, which then stops every service in order.
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.time() + timeout
            while self.proc.poll() is None and time.time() < deadline:
                if owns_listener(self.proc.pid, self.port) and self.ready():
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.kill()
                raise TimeoutError(f"{self.name} did not get ready on {self.addr} in {timeout}s:\n"
                                   f"{self.log_tail()}")
            if not self.auto_port:
                raise RuntimeError(f"{self.name} exited at start (port {self.port} in use?):\n"
                                   f"{self.log_tail()}")
            # (an automatic port: probably taken meanwhile; another one)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        """SIGTERM (a clean shutdown: stores flush), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except FileNotFoundError:
            return ""

    def cpu_seconds(self):
        """CPU time the process has used so far, in seconds."""
        return schedstat_seconds(self.proc.pid)


def schedstat_seconds(pid):
    """CPU time of every thread of process `pid` so far, in seconds (/proc/PID/task/*/schedstat:
    nanoseconds; a thread that exited no longer counts, which Go servers' long-lived threads and
    nginx's single-threaded workers do not do)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


class Prometheus(Service):
    """A Prometheus server (or an agent: agent=True) with `config_text`, `@SELF@` in it being its
    own address. receiver=True opens /api/v1/write (--web.enable-remote-write-receiver)."""

    binary = PROMETHEUS
    ready_path = "/-/ready"

    def __init__(self, workdir, name, config_text, port=None, agent=False, receiver=False,
                 retention="30d", flags=()):
        super().__init__(workdir, name, port)
        self.config_text = config_text
        self.agent = agent
        self.receiver = receiver
        self.retention = retention
        self.flags = list(flags)  # more, e.g. --enable-feature=exemplar-storage
        self.config = os.path.join(self.dir, "prometheus.yml")

    def argv(self):
        with open(self.config, "w") as f:
            f.write(self.config_text.replace("@SELF@", self.addr))
        check = ["promtool", "check", "config"] + (["--agent"] if self.agent else []) + [self.config]
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: promtool check config failed:\n{r.stdout}{r.stderr}")
        a = [self.binary, f"--config.file={self.config}", f"--web.listen-address={self.addr}",
             "--web.enable-lifecycle"]
        if self.agent:
            a += ["--enable-feature=agent", f"--storage.agent.path={self.dir}/wal"]
        else:
            a += [f"--storage.tsdb.path={self.dir}/data",
                  f"--storage.tsdb.retention.time={self.retention}"]
        if self.receiver:
            a.append("--web.enable-remote-write-receiver")
        return a + self.flags


class VictoriaMetrics(Service):
    """VictoriaMetrics single node. Its data stays in <dir>/data across stop() and start()
    (start() again after stop(): the same port, the same data).

    -search.latencyOffset: VictoriaMetrics hides the newest `latencyOffset` of every series from
    queries (default 30 s, for samples that arrive late); scripts/fleet and the tests use 2 s, so
    that a query sees what the agent sent a moment ago, as the receiving Prometheus does."""

    binary = VICTORIA_METRICS
    ready_path = "/health"

    def __init__(self, workdir, name="victoria-metrics", port=None, retention="30d",
                 latency_offset="2s"):
        super().__init__(workdir, name, port)
        self.retention = retention
        self.latency_offset = latency_offset

    def start(self, timeout=60):
        super().start(timeout)
        self.auto_port = False  # a restart keeps the port the agent writes to
        return self

    def argv(self):
        return [self.binary, f"-httpListenAddr={self.addr}", f"-storageDataPath={self.dir}/data",
                f"-retentionPeriod={self.retention}",
                f"-search.latencyOffset={self.latency_offset}", "-loggerLevel=WARN"]


class VMAlert(Service):
    """vmalert: evaluates Prometheus rule files against VictoriaMetrics (`datasource`), writes
    what the recording rules record and the alerts' state back to it, sends alerts to
    Alertmanager (`notifier`)."""

    binary = VMALERT
    ready_path = "/health"

    def __init__(self, workdir, rules, datasource, notifier, interval="15s", port=None,
                 name="vmalert"):
        super().__init__(workdir, name, port)
        self.rules = list(rules)
        self.datasource = datasource
        self.notifier = notifier
        self.interval = interval

    def argv(self):
        return ([self.binary, f"-httpListenAddr={self.addr}",
                 f"-datasource.url={self.datasource}", f"-remoteWrite.url={self.datasource}",
                 f"-remoteRead.url={self.datasource}", f"-notifier.url={self.notifier}",
                 f"-evaluationInterval={self.interval}", "-loggerLevel=WARN"]
                + [f"-rule={r}" for r in self.rules])


class Alertmanager(Service):
    """Alertmanager alone (no cluster: --cluster.listen-address= keeps it off port 9094)."""

    binary = ALERTMANAGER
    ready_path = "/-/ready"

    def __init__(self, workdir, config, port=None, name="alertmanager"):
        super().__init__(workdir, name, port)
        self.config = config

    def argv(self):
        return [self.binary, f"--config.file={self.config}", f"--storage.path={self.dir}/data",
                f"--web.listen-address={self.addr}", "--cluster.listen-address="]


class NodeExporter(Service):
    binary = NODE_EXPORTER
    ready_path = "/metrics"

    def __init__(self, workdir, port=None, name="node-exporter"):
        super().__init__(workdir, name, port)

    def argv(self):
        return [self.binary, f"--web.listen-address={self.addr}"]


class PromAPI:
    """The Prometheus HTTP query API, as Prometheus and VictoriaMetrics serve it."""

    def __init__(self, url, name):
        self.url = url
        self.name = name

    def api(self, path, **params):
        data = urllib.parse.urlencode(params).encode() if params else None
        try:
            with urllib.request.urlopen(self.url + path, data=data, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read() or b"{}")
            except ValueError:
                return {"status": "error", "error": str(e)}
        except (OSError, ValueError) as e:
            return {"status": "error", "error": str(e)}

    def query(self, expr, at=None):
        """(ok, error, result): result is [(labels, value)] for an instant vector or a scalar,
        [(labels, [(t, value)...])] for a range vector (raw samples)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        d = self.api("/api/v1/query", **params)
        if d.get("status") != "success":
            return False, d.get("error"), []
        kind, res = d["data"]["resultType"], d["data"]["result"]
        if kind == "scalar":
            return True, None, [({}, float(res[1]))]
        if kind == "matrix":
            return True, None, [(s["metric"], [(float(t), float(v)) for t, v in s["values"]])
                                for s in res]
        return True, None, [(s["metric"], float(s["value"][1])) for s in res]

    def value(self, expr, at=None):
        """The value of a one-element result; None when empty (or an error, or several)."""
        ok, _, res = self.query(expr, at)
        return res[0][1] if ok and len(res) == 1 else None
