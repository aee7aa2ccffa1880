"""A real Prometheus server for the tests: started on a free port with a scrape config for one
target, queried through its HTTP API."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from .ports import free_port
from .wait import wait_for

PROMETHEUS = "/usr/bin/prometheus"


class Prometheus:
    """A Prometheus server (Debian's /usr/bin/prometheus) scraping one target every second,
    with its own data directory; `flags`: extra command-line flags (e.g.
    `--enable-feature=exemplar-storage`)."""

    def __init__(self, target_port, flags=()):
        self.flags = list(flags)
        self.dir = tempfile.mkdtemp(prefix="gm-prom-")
        self.port = None
        self.proc = None
        self.cfg = cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gateway
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")

    def ready(self, timeout=30, attempts=3):
        """Starts Prometheus on a free port and waits until it is ready. The port was only free
        when picked: another process (tests run in parallel) may bind it first, then ours exits
        and another server may answer there. So: ready *and* ours (its storage path), else
        another port."""
        for attempt in range(attempts):
            self.port = free_port()
            data = f"{self.dir}/data{attempt}"
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.cfg}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", *self.flags],
                stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.time() + timeout
            while time.time() < deadline and self.proc.poll() is None:
                status, body = self._get("/api/v1/status/flags")
                if status == 200 and json.loads(body)["data"].get("storage.tsdb.path") == data \
                        and self._get("/-/ready")[0] == 200:
                    return
                time.sleep(0.1)
            self._kill()
        raise AssertionError(f"prometheus did not start:\n{self.logs()}")

    def _get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except OSError as e:
            return getattr(e, "code", 0), b""

    def query(self, expr):
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if status != 200:
            return None
        d = json.loads(body)
        assert d["status"] == "success", d
        res = d["data"]["result"]
        if not res:
            return None
        assert len(res) == 1, res
        return float(res[0]["value"][1])

    def query_exemplars(self, expr, start, end):
        """The exemplars Prometheus stored for the series of `expr` between two Unix times:
        the API's list of {seriesLabels, exemplars}."""
        q = urllib.parse.urlencode({"query": expr, "start": start, "end": end})
        status, body = self._get("/api/v1/query_exemplars?" + q)
        if status != 200:
            return None
        d = json.loads(body)
        assert d["status"] == "success", d
        return d["data"]

    def logs(self):
        with open(os.path.join(self.dir, "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def settled(self, expr, pred, timeout=30):
        """The value of `expr` once pred(value) holds: a scrape that failed on a busy machine
        (1 s scrape timeout) leaves the target down and its series stale until the next one."""
        return wait_for(lambda: self.query(expr), pred, timeout=timeout, interval=0.2, what=expr)

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        self._kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
