"""A real Prometheus server for the tests: started on a free port with a scrape config for one
target, queried through its HTTP API (the process: gmharness.services.Prometheus)."""
import json
import shutil
import tempfile
import urllib.parse

from . import services
from .wait import wait_for

PROMETHEUS = services.PROMETHEUS or "/usr/bin/prometheus"

CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gateway
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


class Prometheus:
    """A Prometheus server (Debian's /usr/bin/prometheus) scraping one target every second,
    with its own data directory; `flags`: extra command-line flags (e.g.
    `--enable-feature=exemplar-storage`)."""

    def __init__(self, target_port, flags=()):
        self.dir = tempfile.mkdtemp(prefix="gm-prom-")
        self.server = services.Prometheus(self.dir, "prometheus", CONFIG.format(port=target_port),
                                          flags=flags)
        self.port = None

    def ready(self, timeout=30):
        """Starts Prometheus on a free port (another one if that was taken meanwhile) and waits
        until it listens there itself and is ready."""
        self.server.start(timeout)
        self.port = self.server.port

    def _get(self, path):
        return services.http_get(f"{self.server.url}{path}")

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
        return self.server.log_tail()

    def settled(self, expr, pred, timeout=30):
        """The value of `expr` once pred(value) holds: a scrape that failed on a busy machine
        (1 s scrape timeout) leaves the target down and its series stale until the next one."""
        return wait_for(lambda: self.query(expr), pred, timeout=timeout, interval=0.2, what=expr)

    def stop(self):
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
