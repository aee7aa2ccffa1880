"""A fleet of gateways on existing engines (monitoring/fleet/), on loopback: N gateways of the
Lua-free example (nginx-conf/ai-gateway-native.conf) in front of the mock LLM; a Prometheus agent
(monitoring/fleet/agent.yml) scraping them (file_sd) and node_exporter, remote-writing to
VictoriaMetrics (single node) and to a Prometheus server with --web.enable-remote-write-receiver
(monitoring/fleet/receiver.yml); the rules of monitoring/rules/ evaluated by vmalert against
VictoriaMetrics and by the receiving Prometheus; Alertmanager for both.

Used by scripts/fleet (which runs `python -m gmharness.fleet`) and tests/test_fleet.py. The
demo traffic (demo_calls) is every demo API key of the example times every operation
scripts/run shows, with token counts the mock LLM is told (X-Mock-*): a Ledger adds up what a
round must make the fleet count (requests, tokens by type, cost from the example's price table)."""

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import namedtuple

import mock_llm
import monitoring_config

from . import env
from .client import run_concurrent
from .nginx import Nginx
from .servers import MockLLM
from .services import (Alertmanager, NodeExporter, PromAPI, Prometheus, VictoriaMetrics, VMAlert,
                       http_get, schedstat_seconds)

FLEET_DIR = os.path.join(env.ROOT, "monitoring", "fleet")
RULES = os.path.join(env.ROOT, "monitoring", "rules", "*.yml")
NATIVE_CONF = os.path.join(env.ROOT, "nginx-conf", "ai-gateway-native.conf")
JOB = "ai-gateway"  # the gateways' job in agent.yml (and monitoring/prometheus.yml)
TOKEN_TYPES = ("input", "output", "cached_input", "cache_write", "reasoning")


def _swap(text, old, new):
    """Replaces the one occurrence of `old` (a loopback default of a config in FLEET_DIR)."""
    if text.count(old) != 1:
        raise ValueError(f"expected {old!r} exactly once in the config")
    return text.replace(old, new)


def native_http(upstream_port):
    """nginx-conf/ai-gateway-native.conf with its placeholders in gmharness.Nginx's form."""
    with open(NATIVE_CONF) as f:
        text = f.read()
    text = (text.replace("@PORT@", "{port}").replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@PREFIX@", "{dir}"))
    if re.search(r"@[A-Z_]+@", text):
        raise ValueError(f"unknown placeholder left in {NATIVE_CONF}")
    return text


def demo_keys():
    """{API key: namespace} of the example's key map."""
    with open(NATIVE_CONF) as f:
        return dict(re.findall(r"^\s*(sk-demo-[\w-]+)\s+([\w-]+);", f.read(), re.M))


def price_table():
    """{model: {input, output, cached_input, cache_write}} (USD per 1M tokens) of the example."""
    out = {}
    with open(NATIVE_CONF) as f:
        for m in re.finditer(r"^\s*gateway_metrics_model_price\s+(\S+)\s+([^;]*);", f.read(), re.M):
            kv = {k: float(v) for k, v in (a.split("=") for a in m.group(2).split())}
            kv.setdefault("cached_input", kv["input"])
            kv.setdefault("cache_write", kv["input"])
            out[m.group(1)] = kv
    return out


def cost_of(model, t, prices):
    p = prices.get(model)
    if not p:
        return 0.0
    fresh = t["input"] - t["cached_input"] - t["cache_write"]
    return (fresh * p["input"] + t["cached_input"] * p["cached_input"]
            + t["cache_write"] * p["cache_write"] + t["output"] * p["output"]) / 1e6


# ---- the demo traffic -----------------------------------------------------------------------

# (name, usage format of mock_llm.usage_truth or None, method, path, body, key header, model)
OPERATIONS = [
    ("chat", "openai", "POST", "/v1/chat/completions",
     {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, "bearer", "gpt-4o"),
    ("chat-stream", "openai", "POST", "/v1/chat/completions",
     {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
      "messages": [{"role": "user", "content": "hi"}]}, "bearer", "gpt-4o-mini"),
    ("responses-stream", "openai", "POST", "/v1/responses",
     {"model": "gpt-4o", "input": "hi", "stream": True}, "bearer", "gpt-4o"),
    ("embeddings", "openai", "POST", "/v1/embeddings",
     {"model": "text-embedding-3-small", "input": "hi"}, "bearer", "text-embedding-3-small"),
    ("messages-stream", "anthropic", "POST", "/v1/messages",
     {"model": "claude-sonnet", "stream": True, "max_tokens": 64,
      "messages": [{"role": "user", "content": "hi"}]}, "x-api-key", "claude-sonnet"),
    ("gemini-stream", "gemini", "POST",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"contents": [{"parts": [{"text": "hi"}]}]}, "x-goog-api-key", "gemini-2.5-flash"),
    ("models", None, "GET", "/v1/models", None, "bearer", None),
]

Call = namedtuple("Call", "key namespace op fmt method path body auth model tokens")


def demo_calls(round_no=0):
    """One round of the demo traffic: every demo key x every operation. Token counts differ by
    key, operation and round, so that a total says which requests it counts."""
    calls = []
    for ki, (key, ns) in enumerate(sorted(demo_keys().items())):
        for oi, (op, fmt, method, path, body, auth, model) in enumerate(OPERATIONS):
            tokens = None
            if fmt:
                p = 20 + 3 * ki + 7 * oi + round_no
                c = 0 if op == "embeddings" else 5 + 2 * ki + oi + round_no % 3
                cached = 0 if op == "embeddings" else min(4 + ki, p)
                tokens = (p, c, cached)
            calls.append(Call(key, ns, op, fmt, method, path, body, auth, model, tokens))
    return calls


def http_request(call):
    """(method, path, headers, body) for gmharness.run_concurrent."""
    if call.auth == "bearer":
        h = {"Authorization": f"Bearer {call.key}"}
    else:
        h = {call.auth: call.key}  # x-api-key (Anthropic), x-goog-api-key (Gemini)
    body = None
    if call.body is not None:
        h["Content-Type"] = "application/json"
        body = json.dumps(call.body).encode()
    if call.tokens:
        p, c, cached = call.tokens
        h.update({"X-Mock-Prompt-Tokens": str(p), "X-Mock-Completion-Tokens": str(c),
                  "X-Mock-Cached-Tokens": str(cached), "X-Mock-Chunks": "3"})
    return (call.method, call.path, h, body)


class Ledger:
    """What the requests sent so far must make the fleet count."""

    def __init__(self):
        self.prices = price_table()
        self.requests = 0
        self.tokens = dict.fromkeys(TOKEN_TYPES, 0)
        self.cost = 0.0
        self.by_gateway = {}

    def add(self, gateway, calls):
        self.requests += len(calls)
        self.by_gateway[gateway] = self.by_gateway.get(gateway, 0) + len(calls)
        for c in calls:
            if c.tokens:
                t = mock_llm.usage_truth(c.fmt, *c.tokens)
                for k in TOKEN_TYPES:
                    self.tokens[k] += t[k]
                self.cost += cost_of(c.model, t, self.prices)


def send(port, calls, threads=8):
    """Sends the calls to the gateway on `port`; every one must succeed."""
    res = run_concurrent(port, [http_request(c) for c in calls], threads=threads)
    bad = [(c.op, c.namespace, s) for c, (s, _) in zip(calls, res) if s != 200]
    if bad:
        raise AssertionError(f"requests failed: {bad[:5]}")


# ---- the fleet --------------------------------------------------------------------------------

# Ports of scripts/fleet (the tests use free ports): name -> (environment variable, default).
PORTS = {
    "vm": ("GM_FLEET_VM_PORT", 8428),
    "receiver": ("GM_FLEET_PROMETHEUS_PORT", 9190),
    "agent": ("GM_FLEET_AGENT_PORT", 9191),
    "node": ("GM_FLEET_NODE_EXPORTER_PORT", 9192),
    "alertmanager": ("GM_FLEET_ALERTMANAGER_PORT", 9193),
    "vmalert": ("GM_FLEET_VMALERT_PORT", 8880),
}


class Fleet:
    """`ports`: {name: port} for the names of PORTS and "mock"; a missing one is picked free.
    `base_port`: gateway i listens on base_port + i (None: free ports). `interval`: scrape and
    rule evaluation interval (None: the configs' own, 15 s)."""

    def __init__(self, workdir, gateways=3, base_port=None, ports=None, interval=None, workers=2,
                 rule_interval=None, say=lambda msg: None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        # nginx workers run as an unprivileged user when started as root: let them reach their
        # prefix (the response cache)
        os.chmod(workdir, 0o755)
        self.n = gateways
        self.base_port = base_port
        self.ports = dict(ports or {})
        self.interval = interval
        self.rule_interval = rule_interval or interval
        self.workers = workers
        self.say = say
        self.mock = None
        self.gateways = []
        self.services = []
        self.vm = self.receiver = self.agent = self.vmalert = self.alertmanager = self.node = None

    # ---- configs --------------------------------------------------------------------------

    def _read(self, name):
        with open(os.path.join(FLEET_DIR, name)) as f:
            return f.read()

    def agent_config(self):
        text = self._read("agent.yml")
        text = _swap(text, "http://127.0.0.1:8428/api/v1/write", f"{self.vm.url}/api/v1/write")
        text = _swap(text, "http://127.0.0.1:9190/api/v1/write",
                     f"{self.receiver.url}/api/v1/write")
        # file_sd paths resolved against the run directory: the targets file written below
        return monitoring_config.rewrite(text, self.workdir,
                                         targets={"node": [self.node.addr],
                                                  "prometheus-agent": ["@SELF@"]},
                                         interval=self.interval)

    def receiver_config(self):
        text = _swap(self._read("receiver.yml"), '"127.0.0.1:9193"', f'"{self.alertmanager.addr}"')
        text = monitoring_config.rewrite(text, FLEET_DIR,
                                         targets={"prometheus-receiver": ["@SELF@"]},
                                         interval=self.interval)
        if self.rule_interval:
            text = re.sub(r"(?m)^(\s*evaluation_interval:\s*)\S+", r"\g<1>" + self.rule_interval, text)
        return text

    def write_targets(self):
        """The agent's file_sd file: the gateways (the agent re-reads it when it changes)."""
        d = os.path.join(self.workdir, "targets")
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, ".gateways.yml.tmp")
        with open(tmp, "w") as f:
            f.write("# written by gmharness.fleet (scripts/fleet)\n- targets: [%s]\n"
                    "  labels:\n    site: local\n"
                    % ", ".join(f'"127.0.0.1:{g.port}"' for g in self.gateways))
        os.replace(tmp, os.path.join(d, "gateways.yml"))  # (never half a file)

    # ---- running ----------------------------------------------------------------------------

    def _service(self, s):
        self.services.append(s)
        return s.start()

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        rule_interval = self.rule_interval or "15s"
        self.mock = MockLLM("--chunk-delay-ms", "1", port=self.ports.get("mock", 0))
        self.say(f"mock LLM on 127.0.0.1:{self.mock.port}")
        http = native_http(self.mock.port)
        for i in range(self.n):
            port = self.base_port + i if self.base_port else None
            g = Nginx(http, workers=self.workers, port=port, workdir=self.workdir,
                      prefix=f"gateway-{i + 1}-")
            self.gateways.append(g)
            g.start()
        self.say("gateways on " + ", ".join(f"127.0.0.1:{g.port}" for g in self.gateways))
        self.write_targets()
        w = self.workdir
        self.node = self._service(NodeExporter(w, port=self.ports.get("node")))
        self.vm = self._service(VictoriaMetrics(w, port=self.ports.get("vm")))
        self.alertmanager = self._service(Alertmanager(
            w, os.path.join(FLEET_DIR, "alertmanager.yml"), port=self.ports.get("alertmanager")))
        self.receiver = Prometheus(w, "prometheus-receiver", None, port=self.ports.get("receiver"),
                                   receiver=True)
        self.receiver.config_text = self.receiver_config()
        self._service(self.receiver)
        self.vmalert = self._service(VMAlert(w, [RULES], self.vm.url, self.alertmanager.url,
                                             interval=rule_interval,
                                             port=self.ports.get("vmalert")))
        self.agent = Prometheus(w, "prometheus-agent", None, port=self.ports.get("agent"),
                                agent=True)
        self.agent.config_text = self.agent_config()
        self._service(self.agent)
        self.say("agent, VictoriaMetrics, vmalert, receiving Prometheus, Alertmanager up")

    def stop(self, remove=False):
        for s in reversed(self.services):
            s.stop()
        self.services = []
        for g in self.gateways:
            g.cleanup() if remove else g.stop()
        self.gateways = []
        if self.mock:
            self.mock.stop()
            self.mock = None

    # ---- looking at it ----------------------------------------------------------------------

    @property
    def backends(self):
        """The two stores, queried with the same PromQL."""
        return {"victoriametrics": PromAPI(self.vm.url, "victoriametrics"),
                "prometheus": PromAPI(self.receiver.url, "prometheus")}

    def instance(self, i):
        return f"127.0.0.1:{self.gateways[i].port}"

    def gateway_pids(self, i):
        g = self.gateways[i]
        return [g.master_pid()] + g.worker_pids()

    def kill_gateway(self, i):
        """SIGKILL to the gateway's master and workers: a host that died."""
        pids = self.gateway_pids(i)
        for p in pids:
            os.kill(p, signal.SIGKILL)
        for p in pids:
            deadline = time.time() + 10
            while os.path.exists(f"/proc/{p}") and _state(p) != "Z" and time.time() < deadline:
                time.sleep(0.05)
        self.gateways[i].proc_started = False

    def urls(self):
        return {
            "gateways": [f"http://127.0.0.1:{g.port}/" for g in self.gateways],
            "mock LLM": f"http://127.0.0.1:{self.mock.port}/",
            "agent": self.agent.url + "/",
            "VictoriaMetrics": self.vm.url + "/",
            "vmalert": self.vmalert.url + "/",
            "receiving Prometheus": self.receiver.url + "/",
            "Alertmanager": self.alertmanager.url + "/",
            "node_exporter": self.node.url + "/metrics",
        }


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---- scripts/fleet ----------------------------------------------------------------------------

def _env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def _banner(fleet):
    u = fleet.urls()
    vm, prom = u["VictoriaMetrics"], u["receiving Prometheus"]
    gws = "\n".join(f"    {g}metrics" for g in u["gateways"])
    return f"""
  gateway-metrics fleet is running (configs, data and logs: {fleet.workdir})

  gateways ({len(u['gateways'])}, nginx-conf/ai-gateway-native.conf, mock LLM {u['mock LLM']}):
{gws}
  Prometheus agent:      {u['agent']}targets    (scrapes the gateways, remote_write to both stores)
  VictoriaMetrics:       {vm}vmui/         query API {vm}api/v1/query
  vmalert:               {u['vmalert']}          (monitoring/rules/ against VictoriaMetrics)
  receiving Prometheus:  {prom}classic/graph  (--web.enable-remote-write-receiver, monitoring/rules/)
  Alertmanager:          {u['Alertmanager']}
  node_exporter:         {u['node_exporter']}

  the same PromQL on both stores, e.g. the fleet's requests and cost:
    curl -s {vm}api/v1/query --data-urlencode 'query=sum(http_requests_total)'
    curl -s {prom}api/v1/query --data-urlencode 'query=sum(model_cost_usd_total)'
  Grafana: a Prometheus datasource at {vm} (or {prom}), then
           monitoring/grafana/dashboards/ai-gateway-overview.json
  traffic: any demo key of scripts/run (sk-demo-wechat...) on any gateway, or scripts/fleet --traffic

  Ctrl-C to stop.
"""


def _traffic_loop(fleet, stop):
    """One round of the demo traffic to each gateway every second, until stop()."""
    r = 0
    while not stop():
        for g in fleet.gateways:
            send(g.port, demo_calls(r), threads=4)
        r += 1
        time.sleep(1)


def measure_cost(fleet, seconds, say=print):
    """Cost of one scrape of a gateway at the demo's cardinality: one round of the demo traffic
    on every gateway, then `seconds` of scrapes with no traffic, and the CPU used meanwhile by
    each process (from /proc/PID/schedstat) divided by the scrapes. node_exporter, scraped by
    the same agent in the same window, is the baseline."""
    import statistics
    for g in fleet.gateways:
        send(g.port, demo_calls(0))
    prom = fleet.backends["prometheus"]
    n = len(fleet.gateways)
    total = 7 * len(demo_keys()) * n
    _wait(lambda: prom.value(f'sum(http_requests_total{{job="{JOB}"}})') == total,
          120, "the demo traffic in the receiving Prometheus")
    _wait(lambda: fleet.backends["victoriametrics"].value(
        f'sum(http_requests_total{{job="{JOB}"}})') == total, 120, "the demo traffic in VictoriaMetrics")

    def cpu():
        out = {f"gateway {i + 1}": sum(schedstat_seconds(p) for p in fleet.gateway_pids(i))
               for i in range(n)}
        for s in (fleet.node, fleet.agent, fleet.vm, fleet.receiver, fleet.vmalert):
            out[s.name] = s.cpu_seconds()
        return out

    def agent_counters():
        _, body = http_get(fleet.agent.url + "/metrics")
        out = {}
        for name in ("prometheus_remote_storage_bytes_total",
                     "prometheus_remote_storage_samples_total"):
            for m in re.finditer(rb"^" + name.encode() + rb'\{[^}]*remote_name="([^"]+)"[^}]*\} (\S+)$',
                                 body, re.M):
                out[(name, m.group(1).decode())] = float(m.group(2))
        return out

    say(f"measuring {seconds} s of scrapes (interval {fleet.interval or '15s'}), no traffic")
    t0, c0, a0 = time.time(), cpu(), agent_counters()
    time.sleep(seconds)
    t1, c1, a1 = time.time(), cpu(), agent_counters()
    w = f"{int(t1 - t0)}s"

    def per_target(expr):
        ok, err, res = prom.query(expr, at=t1)
        if not ok:
            raise RuntimeError(f"{expr}: {err}")
        return {m.get("instance"): v for m, v in res}

    scrapes = per_target(f'count_over_time(up{{job=~"{JOB}|node"}}[{w}])')
    samples = per_target(f'avg_over_time(scrape_samples_scraped{{job=~"{JOB}|node"}}[{w}])')
    duration = per_target(f'avg_over_time(scrape_duration_seconds{{job=~"{JOB}|node"}}[{w}])')
    all_scrapes = sum(per_target(f"count_over_time(up[{w}])").values())
    accept = {"Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
              "Accept-Encoding": "gzip"}

    def page_bytes(url):
        import urllib.request
        with urllib.request.urlopen(urllib.request.Request(url, headers=accept), timeout=10) as r:
            return len(r.read()), r.headers.get("Content-Type", "")

    rows = []
    gw_cpu = []
    for i in range(n):
        inst = fleet.instance(i)
        cpu_ms = (c1[f"gateway {i + 1}"] - c0[f"gateway {i + 1}"]) / scrapes[inst] * 1e3
        gw_cpu.append(cpu_ms)
        b, ct = page_bytes(f"http://{inst}/metrics")
        rows.append((f"gateway {i + 1}", scrapes[inst], samples[inst], b, duration[inst], cpu_ms))
    node_cpu = (c1["node-exporter"] - c0["node-exporter"]) / scrapes[fleet.node.addr] * 1e3
    nb, _ = page_bytes(fleet.node.url + "/metrics")
    rows.append(("node_exporter (baseline)", scrapes[fleet.node.addr], samples[fleet.node.addr],
                 nb, duration[fleet.node.addr], node_cpu))
    say(f"\nper scrape, {w} window ({ct or 'exposition'} as negotiated by the agent):")
    say(f"  {'target':26} {'scrapes':>7} {'samples':>8} {'page bytes':>11} {'duration':>10} "
        f"{'target CPU':>11}")
    for name, sc, sa, b, d, c in rows:
        say(f"  {name:26} {sc:7.0f} {sa:8.0f} {b:11,d} {d * 1e3:8.2f}ms {c:9.3f}ms")
    gw_samples = statistics.mean(samples[fleet.instance(i)] for i in range(n))
    gw_cpu_med = statistics.median(gw_cpu)
    say(f"  gateway / node_exporter: samples x{gw_samples / samples[fleet.node.addr]:.2f}, "
        f"target CPU x{gw_cpu_med / node_cpu:.2f}")

    # Downstream: per sample, the agent's remote_write bytes and every engine's CPU, then for
    # one gateway scrape (its samples).
    sent = {r: a1[("prometheus_remote_storage_samples_total", r)]
            - a0[("prometheus_remote_storage_samples_total", r)] for r in ("victoriametrics", "prometheus")}
    sent_bytes = {r: a1[("prometheus_remote_storage_bytes_total", r)]
                  - a0[("prometheus_remote_storage_bytes_total", r)] for r in sent}
    samples_all = sent["victoriametrics"]
    say(f"\ndownstream, for one gateway scrape ({gw_samples:.0f} samples; "
        f"{all_scrapes:.0f} scrapes, {samples_all:.0f} samples sent per store in the window):")
    for r in sent:
        bps = sent_bytes[r] / sent[r] if sent[r] else float("nan")
        say(f"  remote_write to {r:16} {bps:6.2f} bytes/sample (compressed) = "
            f"{bps * gw_samples:9,.0f} bytes per gateway scrape")
    for s in (fleet.agent, fleet.vm, fleet.receiver, fleet.vmalert):
        sec = c1[s.name] - c0[s.name]
        per_sample_us = sec / samples_all * 1e6 if samples_all else float("nan")
        say(f"  {s.name:22} CPU {per_sample_us:6.2f} us/sample = "
            f"{per_sample_us * gw_samples / 1e3:6.2f} ms per gateway scrape "
            f"({sec / (t1 - t0) * 100:5.2f}% of a core)")
    say(f"  (the stores' CPU includes the rules' evaluation every {fleet.rule_interval}: vmalert's "
        f"queries to VictoriaMetrics, the receiving Prometheus' own; the agent evaluates none)")
    return rows


def _wait(cond, timeout, what):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout}s")
        time.sleep(0.2)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--traffic", action="store_true",
                    help="send the demo traffic (every demo key x every API) to every gateway, "
                         "one round a second")
    ap.add_argument("--cost", action="store_true",
                    help="measure the cost of one scrape per gateway at the demo's cardinality, "
                         "print it and exit")
    a = ap.parse_args(argv)
    n = _env_int("GM_FLEET_GATEWAYS", 3)
    base = _env_int("GM_FLEET_BASE_PORT", 8180)
    ports = {name: _env_int(var, default) for name, (var, default) in PORTS.items()}
    ports["mock"] = _env_int("GM_FLEET_MOCK_PORT", base - 1)
    # --cost: many scrapes in little time (1 s), the rules at the configs' pace (15 s)
    interval = os.environ.get("GM_FLEET_INTERVAL") or ("1s" if a.cost else None)
    rule_interval = "15s" if a.cost else None
    workdir = os.environ.get("GM_FLEET_DIR") or os.path.join(env.ROOT, ".run", "fleet")
    marker = os.path.join(workdir, ".gm-fleet")
    if os.path.isdir(workdir) and os.listdir(workdir):
        # a previous run's data goes (totals start from zero), never a directory of something else
        if not os.path.exists(marker):
            print(f"scripts/fleet: {workdir} is not empty and not a fleet's directory", file=sys.stderr)
            return 1
        import shutil
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    open(marker, "w").close()

    def say(msg):
        print(msg, flush=True)

    fleet = Fleet(workdir, gateways=n, base_port=base, ports=ports, interval=interval,
                  rule_interval=rule_interval, say=lambda m: say(f"==> {m}"))

    def terminate(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        fleet.start()
        if a.cost:
            measure_cost(fleet, _env_int("GM_FLEET_COST_SECONDS", 60), say)
            return 0
        say(_banner(fleet))
        if a.traffic:
            say("==> sending the demo traffic (--traffic), a round a second")
            _traffic_loop(fleet, lambda: False)
        while all(s.running() for s in fleet.services):
            time.sleep(0.5)
        dead = [s.name for s in fleet.services if not s.running()]
        say(f"==> {', '.join(dead)} exited; its log:\n"
            + next(s for s in fleet.services if not s.running()).log_tail())
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("==> stopping")
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
