"""monitoring/ proven against a real Prometheus: two gateway instances (a small Lua gateway of
its own, configured unlike nginx-conf/: another zone name, namespace header, upstream and price
table), node_exporter, and Prometheus (Debian's package) on loopback with a copy of
monitoring/prometheus.yml whose gateway job is renamed and pointed at the test ports, loading
monitoring/rules/. JSON and streamed traffic with token usage, upstream errors, rate-limit
rejections and cache lookups go through both gateways; then every PromQL expression of the
dashboard and the rule files runs against Prometheus's HTTP API: each must parse, each that the
traffic feeds must return data, and the sums over the two instances must equal what was sent."""
import json
import math
import os
import re
import shutil
import tempfile
import time

from collections import namedtuple

import pytest

from gmharness import HAVE_LUA, ROOT, MockLLM, Nginx, run_concurrent, services, wait_for
import monitoring_config
import monitoring_promql as mp

DASHBOARD = os.path.join(ROOT, "monitoring/grafana/dashboards/ai-gateway-overview.json")
JOB = "llm-edge"  # not the job name of monitoring/prometheus.yml, on purpose

pytestmark = [
    pytest.mark.skipif(not services.PROMETHEUS, reason="no prometheus"),
    pytest.mark.skipif(not services.NODE_EXPORTER, reason="no prometheus-node-exporter"),
    pytest.mark.skipif(not HAVE_LUA, reason="no lua-nginx-module"),
]

# USD per 1M tokens: input, output, cached input (input when not given); llama-local: no price
PRICES = {"gpt-4o": (2.50, 10.00, 1.25), "claude-sonnet": (3.00, 15.00, 3.00), "llama-local": None}
TENANTS = ["acme-ops", "globex"]

GATEWAY = """
    gateway_metrics_zone edge_zone 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_tenant;
    gateway_metrics_model_price gpt-4o input=2.50 output=10.00 cached_input=1.25;
    gateway_metrics_model_price claude-sonnet input=3.00 output=15.00;

    upstream provider {
        server 127.0.0.1:@MOCK@;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:{port};

        location /v1/ {
            access_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local h = ngx.req.get_headers()
                if h["x-model"] then gm.set_model(h["x-model"]) end
                gm.cache("tenant_config", h["x-cache"] == "hit")
                if h["x-over-budget"] then
                    gm.rate_limit(ngx.var.http_x_tenant or "", "token_budget", true)
                    return ngx.exit(429)
                end
            }
            body_filter_by_lua_block {
                if ngx.status ~= 200 then return end
                local gm = require "resty.gateway_metrics"
                local ct = ngx.header.content_type or ""
                if ngx.arg[1] ~= "" and ct:find("event-stream", 1, true) then gm.first_token() end
                if ngx.arg[2] then
                    local h = ngx.req.get_headers()
                    gm.add_tokens(tonumber(h["x-mock-prompt-tokens"]) or 0,
                                  tonumber(h["x-mock-completion-tokens"]) or 0,
                                  tonumber(h["x-mock-cached-tokens"]) or 0,
                                  tonumber(h["x-mock-reasoning-tokens"]) or 0)
                end
            }
            proxy_pass http://provider;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }

        location = /metrics {
            gateway_metrics off;
            gateway_metrics_exporter;
        }
    }
"""


Req = namedtuple("Req", "kind tenant model input output cached reasoning cache")


def plan(scale):
    """The requests of one traffic round."""
    out = []
    for ti, tenant in enumerate(TENANTS):
        for mi, model in enumerate(PRICES):
            p, c = 10 + 7 * ti + 3 * mi, 20 + 5 * mi + ti
            out += [Req("json", tenant, model, p, c, 4, 3, "hit")] * (2 * scale)
            out += [Req("stream", tenant, model, p + 1, c + 2, 0, 0, "miss")] * scale
            out += [Req("error", tenant, model, 0, 0, 0, 0, "hit"),
                    Req("limited", tenant, model, 0, 0, 0, 0, "miss")]
    return out


def http_request(r):
    body = {"model": r.model, "messages": [{"role": "user", "content": "hi"}]}
    h = {"X-Tenant": r.tenant, "X-Model": r.model, "X-Cache": r.cache,
         "Content-Type": "application/json"}
    kind = r.kind
    if kind in ("json", "stream"):
        h.update({"X-Mock-Prompt-Tokens": str(r.input), "X-Mock-Completion-Tokens": str(r.output),
                  "X-Mock-Cached-Tokens": str(r.cached),
                  "X-Mock-Reasoning-Tokens": str(r.reasoning)})
    if kind == "stream":
        body["stream"] = True
        h.update({"X-Mock-Chunks": "3", "X-Mock-Chunk-Delay-Ms": "2"})
    if kind == "error":
        h["X-Mock-Status"] = "502"
    if kind == "limited":
        h["X-Over-Budget"] = "1"
    return ("POST", "/v1/chat/completions", h, json.dumps(body).encode())


STATUS = {"json": 200, "stream": 200, "error": 502, "limited": 429}


def send(gw, reqs):
    res = run_concurrent(gw.port, [http_request(r) for r in reqs], threads=6)
    assert [s for s, _ in res] == [STATUS[r.kind] for r in reqs], gw.error_log()[-2000:]


class Prometheus(services.Prometheus):
    """gmharness's Prometheus on a free loopback port (`@SELF@` in the config: its own address),
    with a directory of its own, queried through its HTTP API."""

    def __init__(self, config_text):
        self.workdir = tempfile.mkdtemp(prefix="gm-mon-prom-")
        super().__init__(self.workdir, "prometheus", config_text)

    def api(self, path, **params):
        return services.PromAPI(self.url, self.name).api(path, **params)

    def query(self, expr):
        """(ok, error, [(labels, value)])"""
        return services.PromAPI(self.url, self.name).query(expr)

    def value(self, expr):
        ok, err, res = self.query(expr)
        assert ok, f"{expr}: {err}"
        return res[0][1] if len(res) == 1 else None

    def logs(self):
        return self.log_tail()

    def stop(self):
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_gateway(conf, attempts=3):
    for _ in range(attempts):
        g = Nginx(conf, workers=2, lua=True)
        try:
            return g.start()
        except (RuntimeError, TimeoutError) as e:
            err = e
            g.__exit__(None, None, None)
    raise err


@pytest.fixture(scope="module")
def stack():
    with MockLLM() as mock:
        conf = GATEWAY.replace("@MOCK@", str(mock.port))
        gws = []
        node_dir = tempfile.mkdtemp(prefix="gm-mon-node-")
        node = None
        prom = None
        try:
            gws = [start_gateway(conf) for _ in range(2)]
            node = services.NodeExporter(node_dir).start()
            node_port = node.port
            with open(os.path.join(ROOT, "monitoring/prometheus.yml")) as f:
                text = f.read()
            cfg = monitoring_config.rewrite(
                text, os.path.join(ROOT, "monitoring"),
                targets={"ai-gateway": [f"127.0.0.1:{g.port}" for g in gws],
                         "node": [f"127.0.0.1:{node_port}"], "prometheus": ["@SELF@"]},
                rename={"ai-gateway": JOB}, interval="1s")
            prom = Prometheus(cfg).start()
            yield prom, gws, f"127.0.0.1:{node_port}"
        finally:
            if prom:
                prom.stop()
            if node:
                node.stop()
            shutil.rmtree(node_dir, ignore_errors=True)
            for g in gws:
                g.__exit__(None, None, None)


def _diagnostics(prom):
    targets = [(t["scrapeUrl"], t["health"], t["lastError"])
               for t in prom.api("/api/v1/targets").get("data", {}).get("activeTargets", [])]
    return f"targets: {targets}\nprometheus log:\n{prom.logs()}"


def eventually(prom, fn, pred, what, timeout=30):
    """fn() until pred(value) holds. Prometheus scrapes every second with a timeout of a second
    (the interval's length: it can be no longer): on a loaded machine one scrape can time out,
    which sets `up` to 0 for a moment and marks that target's series stale, so an instant query
    just then finds them gone until the next scrape. A check of what Prometheus has therefore
    polls for its condition (until a deadline), never reads a single instant."""
    try:
        return wait_for(fn, pred, timeout=timeout, interval=0.2, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_diagnostics(prom)}")


def wait_value(prom, expr, want, timeout=30):
    """The value of `expr` once it is `want` (or want(value) holds, for a callable)."""
    pred = want if callable(want) else (lambda v: v == want)
    return eventually(prom, lambda: prom.value(expr), pred, expr, timeout)


def query_until(prom, expr, pred, timeout=20):
    """prom.query(expr) until pred(result list) holds, or the last answer at the deadline (the
    caller reports it)."""
    deadline = time.time() + timeout
    while True:
        ok, err, res = prom.query(expr)
        if (ok and pred(res)) or time.time() >= deadline:
            return ok, err, res
        time.sleep(0.2)


def grafana_regex(*vals):
    """A multi-value variable as Grafana puts it in a PromQL regex matcher."""
    esc = [re.sub(r"([.$^*+?()\[\]{}|])", r"\\\\\1", v) for v in vals]
    return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


def finite(res):
    return [v for _, v in res if not math.isnan(v) and not math.isinf(v)]


def test_stack_end_to_end(stack):
    prom, gws, node = stack
    instances = [f"127.0.0.1:{g.port}" for g in gws]
    up = f'count(up{{job="{JOB}"}} == 1)'
    wait_value(prom, up, 2)
    # the target labels of monitoring/prometheus.yml survive the rewrite (scripts/monitoring)
    _, _, ups = prom.query(f'up{{job="{JOB}"}}')
    assert sorted((m["instance"], m.get("site")) for m, _ in ups) == \
        sorted((f"127.0.0.1:{g.port}", "local") for g in gws), ups

    # Round 1 creates every series; once Prometheus has scraped it, round 2 makes them grow, so
    # every rate() over the test's few seconds is positive.
    sent = {i: [] for i in range(2)}
    for i, g in enumerate(gws):
        send(g, plan(1))
        sent[i] += plan(1)
    total = f'sum(http_requests_total{{job="{JOB}"}})'
    wait_value(prom, total, sum(len(s) for s in sent.values()))
    for i, g in enumerate(gws):
        send(g, plan(3 - i))
        sent[i] += plan(3 - i)
    everything = sent[0] + sent[1]
    wait_value(prom, total, len(everything))
    # one more scrape of both gateways: each request's figures are all in the zone by now
    t = time.time()
    wait_for(lambda: prom.value(f'min(timestamp(up{{job="{JOB}"}}))'), lambda v: v and v > t,
             timeout=20, interval=0.2, what="a scrape after the traffic")

    # ---- the sums over both instances equal what was sent -----------------------------------
    def q(expr, want):
        """Waits until the value of expr is `want` (or want(value) holds)."""
        wait_value(prom, expr.replace("JOB", f'job="{JOB}"'), want)

    for i, inst in enumerate(instances):
        q(f'sum(http_requests_total{{JOB, instance="{inst}"}})', len(sent[i]))
    ok = [r for r in everything if r.kind in ("json", "stream")]
    streams = [r for r in everything if r.kind == "stream"]
    errors = [r for r in everything if r.kind == "error"]
    limited = [r for r in everything if r.kind == "limited"]
    n = len(everything)
    q("sum(namespace_requests_total{JOB})", n)
    q('sum(namespace_requests_total{JOB, status="success"})', len(ok))
    q("sum(gateway_requests_total{JOB})", n)
    q("sum(http_request_duration_seconds_count{JOB})", n)
    q("sum(model_requests_total{JOB})", n)
    q('sum(errors_total{JOB, error_type="upstream_error"})', len(errors))
    q('sum(errors_total{JOB, error_type="rate_limited"})', len(limited))
    q("sum(rate_limit_violations_total{JOB})", len(limited))
    q('sum(cache_hits_total{JOB})', sum(r.cache == "hit" for r in everything))
    q('sum(cache_misses_total{JOB})', sum(r.cache == "miss" for r in everything))
    for token_type in ("input", "output", "cached", "reasoning"):
        t = "cached_input" if token_type == "cached" else token_type
        q(f'sum(namespace_tokens_total{{JOB, token_type="{t}"}})',
          sum(getattr(r, token_type) for r in ok))
    q("sum(model_tokens_input_total{JOB})", sum(r.input for r in ok))
    q("sum(model_tokens_output_total{JOB})", sum(r.output for r in ok))
    q("sum(model_time_to_first_token_seconds_count{JOB})", len(streams))
    for tenant in TENANTS:
        q(f'sum(http_requests_total{{JOB, namespace="{tenant}"}})',
          sum(r.tenant == tenant for r in everything))
    cost = 0.0
    for r in ok:
        if PRICES[r.model]:
            pin, pout, pcached = PRICES[r.model]
            cost += ((r.input - r.cached) * pin + r.cached * pcached + r.output * pout) / 1e6
    q("sum(model_cost_usd_total{JOB})", pytest.approx(cost, rel=1e-9))
    q('sum(gateway_metrics_unpriced_model_requests_total{JOB, model="llama-local"})',
      lambda v: v is not None and v > 0)

    # ---- rule evaluation: wait for one evaluation of every group after round 2 --------------
    t_done = time.time()

    def evaluated():
        groups = (prom.api("/api/v1/rules").get("data") or {}).get("groups") or []
        rules = [r for g in groups for r in g["rules"]]
        if not rules:
            return None
        last = [r.get("lastEvaluation", "") for r in rules]
        return rules if all(l and not l.startswith("0001") for l in last) and \
            all(_ts(g["lastEvaluation"]) > t_done for g in groups) else None

    rules = wait_for(evaluated, lambda r: r is not None, timeout=20, interval=0.2,
                     what="rule evaluation")
    mine = mp.all_rules()
    assert sorted(r["name"] for r in rules) == sorted(r["name"] for r in mine), \
        "Prometheus did not load the rules of monitoring/rules/"
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad

    failures = []
    # every rule's expression parses and runs; every recording rule returns data, and so does
    # its recorded series
    # (each polled for a while: see eventually())
    for r in mine:
        record = r["kind"] == "record"
        ok_, err, res = query_until(prom, r["expr"], lambda res: not record or finite(res))
        if not ok_:
            failures.append(f'{r["kind"]} {r["name"]}: {err}')
        elif record:
            if not finite(res):
                failures.append(f'record {r["name"]}: no data: {res}')
            _, _, rec = query_until(prom, r["name"], bool)
            if not rec:
                failures.append(f'record {r["name"]}: nothing recorded')
            # aggregated across the instances (no instance label unless the level keeps it),
            # by the job, whatever its name
            if rec and "instance" not in r["name"].split(":")[0]:
                if any("instance" in m for m, _ in rec):
                    failures.append(f'record {r["name"]}: not aggregated across instances')
            if rec and any(m.get("job") != JOB for m, _ in rec):
                failures.append(f'record {r["name"]}: job label lost: {rec}')

    assert not failures, "\n".join(failures) + f"\nprometheus log:\n{prom.logs()}"

    # ---- the dashboard's variables, resolved as Grafana does -------------------------------
    variables = {re.search(r'"(\w+)"', w).group(1): e
                 for w, e, k in mp.dashboard_exprs(DASHBOARD) if k == "variable"}

    def values(var, label, chosen, pred):
        """The variable's values once pred(values) holds (see eventually())."""
        def get():
            ok_, err, res = prom.query(mp.substitute(variables[var], chosen))
            assert ok_, err
            return sorted({m.get(label, "") for m, _ in res})
        return eventually(prom, get, pred, f"values of ${var}")

    # "All" of job/instance/node: the values listed; of namespace/model: ".*"
    chosen = {}
    chosen["job"] = grafana_regex(*values("job", "job", chosen, lambda v: v == [JOB]))
    chosen["instance"] = grafana_regex(*values("instance", "instance", chosen,
                                               lambda v: v == sorted(instances)))
    chosen["node"] = grafana_regex(*values("node", "instance", chosen, lambda v: node in v))
    values("job", "job", {}, lambda v: v == [JOB])                  # gateway jobs only
    values("instance", "instance", chosen, lambda v: v == sorted(instances))
    values("namespace", "namespace", chosen, lambda v: set(TENANTS) <= set(v))
    values("model", "model", chosen, lambda v: set(PRICES) <= set(v))
    values("node", "instance", chosen, lambda v: node in v)

    # every dashboard expression parses; panels and variables return data
    lenient = ("Disk usage", "Network traffic", "Disk I/O")   # depend on the host, not traffic
    for where, expr, kind in mp.dashboard_exprs(DASHBOARD):
        e = mp.substitute(expr, chosen)
        need = kind in ("panel", "variable") and not any(f'"{t}"' in where for t in lenient)
        ok_, err, res = query_until(prom, e, lambda res: not need or finite(res))
        if not ok_:
            failures.append(f"{where}: {err}\n  {e}")
        elif need and not finite(res):
            failures.append(f"{where}: no data\n  {e}")
    assert not failures, "\n".join(failures) + f"\nprometheus log:\n{prom.logs()}"

    # ---- panels filtered by the variables --------------------------------------------------
    def panel(title, ref=0):
        with open(DASHBOARD) as f:
            d = json.load(f)
        return next(p for p in d["panels"] if p["title"] == title)["targets"][ref]["expr"]

    total_expr = panel("Total requests")
    wait_value(prom, mp.substitute(total_expr, chosen), n)
    for i, inst in enumerate(instances):
        e = mp.substitute(total_expr, dict(chosen, instance=grafana_regex(inst)))
        wait_value(prom, e, len(sent[i]))
    e = mp.substitute(total_expr, dict(chosen, namespace=grafana_regex(TENANTS[0])))
    wait_value(prom, e, sum(r.tenant == TENANTS[0] for r in everything))
    wait_value(prom, mp.substitute(panel("Success rate"), chosen),
               lambda v: v is not None and 0 < v < 1)
    wait_value(prom, mp.substitute(panel("Gateways up", 0), chosen), 2)
    wait_value(prom, mp.substitute(panel("Gateways up", 1), chosen), 2)

    # ---- healthy targets raise no gateway alert --------------------------------------------
    # (one scrape timing out on a loaded machine makes AIGatewayTargetDown pending until the
    # next evaluation; with healthy targets nothing stays, pending or firing)
    alerts = 'ALERTS{alertname=~"AIGatewayTargetDown|AIGatewayMetrics.*"}'
    eventually(prom, lambda: prom.query(alerts), lambda r: r[0] and not r[2], alerts)


def _ts(rfc3339):
    """Seconds since the epoch of Prometheus's RFC 3339 timestamps (nanoseconds dropped)."""
    import datetime
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = datetime.timezone.utc if m.group(3) == "Z" else datetime.datetime.strptime(
        m.group(3).replace(":", ""), "%z").tzinfo
    frac = float(m.group(2) or 0)
    return base.replace(tzinfo=tz).timestamp() + frac
