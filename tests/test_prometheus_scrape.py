"""A real Prometheus server scrapes the exporter and sees the exact counts."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from gmharness import Nginx, free_port, parse, run_concurrent, wait_for
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

PROMETHEUS = "/usr/bin/prometheus"

CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /nf/ { return 404; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


class Prometheus:
    def __init__(self, target_port):
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
                 f"--web.listen-address=127.0.0.1:{self.port}"],
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


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="no /usr/bin/prometheus")
def test_prometheus_scrapes_exact_counts():
    with Nginx(CONF) as n:
        p = Prometheus(n.port)
        try:
            p.ready()
            ok, bad, other = 137, 41, 22
            reqs = [("GET", "/v1/x", {"X-Namespace": "promtest"}, None)] * ok
            reqs += [("POST", "/nf/x", {"X-Namespace": "promtest"}, b"{}")] * bad
            reqs += [("GET", "/v1/x", {"X-Namespace": "other"}, None)] * other
            res = run_concurrent(n.port, reqs, threads=8)
            assert sorted(r[0] for r in res) == sorted([200] * (ok + other) + [404] * bad)
            try:
                got = wait_for(lambda: p.query('sum(http_requests_total{namespace="promtest"})'),
                               lambda v: v == ok + bad, timeout=30, what="prometheus sum")
            except TimeoutError:
                raise AssertionError(f"prometheus never saw {ok + bad}; its log:\n{p.logs()}")
            assert got == ok + bad
            exact = lambda want: lambda v: v == want  # noqa: E731
            assert p.settled('up{job="gateway"}', exact(1.0)) == 1.0
            assert p.settled('sum(errors_total{namespace="promtest",error_type="client_error"})',
                             exact(bad)) == bad
            assert p.settled('sum(namespace_requests_total{namespace="promtest",status="success"})',
                             exact(ok)) == ok
            assert p.settled('sum(http_request_duration_seconds_count{namespace="promtest"})',
                             exact(ok + bad)) == ok + bad
            # Prometheus ingested the histogram as such: histogram_quantile works on it
            q = p.settled('histogram_quantile(0.5, sum by (le) '
                          '(http_request_duration_seconds_bucket{namespace="promtest"}))',
                          lambda q: q is not None and 0 <= q <= 0.005)
            assert q is not None and 0 <= q <= 0.005
            # the scrapes produced no rejected samples (Prometheus's own counters)
            assert p.settled('scrape_samples_scraped{job="gateway"}', lambda v: v and v > 0) > 0
            status, body = p._get("/metrics")
            assert status == 200
            own = parse(body.decode())
            for name in ("prometheus_target_scrapes_sample_duplicate_timestamp_total",
                         "prometheus_target_scrapes_sample_out_of_order_total",
                         "prometheus_target_scrapes_sample_out_of_bounds_total",
                         "prometheus_target_scrapes_exceeded_sample_limit_total"):
                assert own.select(name), f"prometheus does not export {name}"
                assert own.total(name) == 0, name
        finally:
            p.stop()
