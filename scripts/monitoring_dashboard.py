#!/usr/bin/env python3
"""Generates monitoring/grafana/dashboards/ai-gateway-overview.json, the "AI Gateway Overview"
Grafana dashboard (the JSON is committed; tests/test_monitoring.py checks that it is up to date).

    scripts/monitoring_dashboard.py          # rewrite the JSON
    scripts/monitoring_dashboard.py --check  # exit 1 if the committed JSON differs

Every query filters with the dashboard variables ($job, $instance, $namespace, $model, $node),
whose values come from label_values(): nothing here names a job, zone, namespace or model of
ours, so the dashboard works against any gateway fleet. It reads the raw series (not the
recording rules) so that the instance filter works and it needs nothing but the scrapes.
Standard library only."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "monitoring/grafana/dashboards/ai-gateway-overview.json")

DS = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers for the gateway series.
G = 'job=~"$job", instance=~"$instance"'
GN = G + ', namespace=~"$namespace"'
GM = GN + ', model=~"$model"'
NODE = 'instance=~"$node"'
FS = NODE + ', fstype!~"tmpfs|ramfs|devtmpfs|squashfs|overlay|nsfs|fuse.lxcfs"'
RI = "$__rate_interval"


class Board:
    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.y = 0

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def line(self, panels, h=8):
        """A line of panels of equal width."""
        x = 0
        n = len(panels)
        for i, p in enumerate(panels):
            w = 24 // n if i < n - 1 else 24 - x
            p["id"] = self._id()
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": self.y}
            self.panels.append(p)
            x += w
        self.y += h


def target(expr, legend="", ref="A", instant=False, exemplar=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "refId": ref}
    if instant:
        t["format"] = "time_series"
    if exemplar:
        # Grafana asks Prometheus' /api/v1/query_exemplars for the series under the query and
        # draws each exemplar (a request's trace id) as a dot linking to the trace.
        t["exemplar"] = True
    return t


def targets(*items, instant=False, exemplar=False):
    return [target(e, l, chr(ord("A") + i), instant, exemplar) for i, (e, l) in enumerate(items)]


def thresholds(*steps):
    out = [{"color": "green", "value": None}]
    out += [{"color": c, "value": v} for v, c in steps]
    return {"mode": "absolute", "steps": out}


def stat(title, desc, tgts, unit="short", decimals=None, th=None, graph=True, calc="lastNotNull"):
    d = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": th or thresholds(),
         "mappings": []}
    if decimals is not None:
        d["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": d, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area" if graph else "none",
            "justifyMode": "auto", "orientation": "auto", "textMode": "auto",
            "showPercentChange": False, "wideLayout": True,
        },
        "targets": tgts,
    }


def ts(title, desc, tgts, unit="short", stack=False, minv=0, maxv=None, decimals=None):
    d = {
        "unit": unit, "color": {"mode": "palette-classic"}, "mappings": [],
        "thresholds": thresholds(),
        "custom": {
            "drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 1,
            "fillOpacity": 25 if stack else 10, "gradientMode": "none", "showPoints": "never",
            "pointSize": 4, "spanNulls": False, "axisPlacement": "auto", "axisLabel": "",
            "scaleDistribution": {"type": "linear"},
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "off"},
            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        },
    }
    if minv is not None:
        d["min"] = minv
    if maxv is not None:
        d["max"] = maxv
    if decimals is not None:
        d["decimals"] = decimals
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": d, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True,
                       "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": tgts,
    }


def bargauge(title, desc, tgts, unit="short", maxv=None, th=None):
    d = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": th or thresholds(),
         "mappings": [], "min": 0}
    if maxv is not None:
        d["max"] = maxv
    return {
        "type": "bargauge", "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": d, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
            "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
            "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300,
        },
        "targets": tgts,
    }


def query_var(name, label, query, all_value=None):
    """A multi-value query variable, "All" by default. "All" means the values listed (so only
    the gateways' jobs and instances) unless all_value is given: ".*" also matches series
    where the label is empty, which label_values() never lists (requests without namespace)."""
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "definition": query, "query": query,
        "refresh": 2, "regex": "", "sort": 1, "multi": True, "includeAll": True,
        "allValue": all_value, "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "hide": 0, "skipUrlSync": False,
    }


def build():
    b = Board()

    # ---- overview -------------------------------------------------------------------------
    b.row("Overview")
    b.line([
        stat("Total requests",
             "Requests counted by the selected gateways since each of them started (counters "
             "restart from zero when nginx restarts; a reload keeps them). 总请求数.",
             targets((f"sum(http_requests_total{{{GN}}})", "requests")), unit="short", decimals=0),
        stat("Success rate",
             "Share of requests answered with an HTTP status below 400 (the module's "
             "status=\"success\"). 成功率.",
             targets((f'sum(rate(namespace_requests_total{{{GN}, status="success"}}[{RI}]))\n/\n'
                      f"sum(rate(namespace_requests_total{{{GN}}}[{RI}]))", "success")),
             unit="percentunit", decimals=2,
             th={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                               {"color": "orange", "value": 0.95},
                                               {"color": "green", "value": 0.99}]}),
        stat("Average response time",
             "Mean request duration, first request byte to last response byte (streams "
             "included). 平均响应时间.",
             targets((f"sum(rate(http_request_duration_seconds_sum{{{GN}}}[{RI}]))\n/\n"
                      f"sum(rate(http_request_duration_seconds_count{{{GN}}}[{RI}]))", "mean")),
             unit="s", decimals=3, th=thresholds((10, "orange"), (30, "red"))),
        stat("P95 response time",
             "95th percentile of the request duration, from the http_request_duration_seconds "
             "histogram.",
             targets((f"histogram_quantile(0.95, sum by (le) "
                      f"(rate(http_request_duration_seconds_bucket{{{GN}}}[{RI}])))", "p95")),
             unit="s", decimals=3, th=thresholds((10, "orange"), (30, "red"))),
        stat("QPS", "Requests per second over the selected gateways. QPS.",
             targets((f"sum(rate(http_requests_total{{{GN}}}[{RI}]))", "requests/s")),
             unit="reqps", decimals=2),
        stat("Active connections",
             "Requests in flight: past the access phases and not finished yet "
             "(active_connections), summed over the gateways. 活跃连接数.",
             targets((f"sum(active_connections{{{GN}}})", "in flight")), unit="short", decimals=0),
    ], h=4)
    b.line([
        stat("Input tokens (time range)",
             "Input (prompt) tokens reported by the providers over the dashboard's time range.",
             targets((f'sum(increase(namespace_tokens_total{{{GN}, token_type="input"}}[$__range]))',
                      "input"), instant=True), unit="short", decimals=0, graph=False),
        stat("Output tokens (time range)",
             "Output (completion) tokens reported by the providers over the time range.",
             targets((f'sum(increase(namespace_tokens_total{{{GN}, token_type="output"}}[$__range]))',
                      "output"), instant=True), unit="short", decimals=0, graph=False),
        stat("Model cost (time range)",
             "Cost in USD over the time range, from the gateway_metrics_model_price table "
             "(models without a price count 0: see \"Unpriced model requests\").",
             targets((f"sum(increase(model_cost_usd_total{{{GM}}}[$__range]))", "USD"),
                     instant=True), unit="currencyUSD", decimals=2, graph=False),
        stat("Rate-limit rejections (time range)",
             "Requests rejected by a rate limit (limit_req, limit_conn or Lua token budgets) over "
             "the time range.",
             targets((f"sum(increase(rate_limit_violations_total{{{GN}}}[$__range]))", "rejected"),
                     instant=True), unit="short", decimals=0, graph=False,
             th=thresholds((1, "orange"))),
        stat("Cache hit ratio",
             "Cache hits over lookups (proxy_cache and Lua caches), all cache types.",
             targets((f"sum(rate(cache_hits_total{{{G}}}[{RI}]))\n/\n"
                      f"(sum(rate(cache_hits_total{{{G}}}[{RI}])) + "
                      f"sum(rate(cache_misses_total{{{G}}}[{RI}])))", "hit ratio")),
             unit="percentunit", decimals=1),
        stat("Gateways up",
             "Gateway targets Prometheus scraped successfully in its last scrape / all gateway "
             "targets.",
             targets((f"sum(up{{{G}}})", "up"), (f"count(up{{{G}}})", "targets")),
             unit="short", decimals=0, graph=False),
    ], h=4)

    # ---- traffic ----------------------------------------------------------------------------
    b.row("Traffic")
    b.line([
        ts("Requests per second by namespace",
           "Per-namespace request trend. 命名空间请求趋势.",
           targets((f"sum by (namespace) (rate(http_requests_total{{{GN}}}[{RI}]))",
                    "{{namespace}}")), unit="reqps", stack=True),
        ts("Requests per second by status code", "HTTP status codes returned by the gateways.",
           targets((f"sum by (status_code) (rate(http_requests_total{{{GN}}}[{RI}]))",
                    "{{status_code}}")), unit="reqps", stack=True),
    ])
    b.line([
        ts("Success rate by namespace",
           "Share of each namespace's requests answered with a status below 400.",
           targets((f'sum by (namespace) (rate(namespace_requests_total{{{GN}, status="success"}}[{RI}]))\n/\n'
                    f"sum by (namespace) (rate(namespace_requests_total{{{GN}}}[{RI}]))",
                    "{{namespace}}")), unit="percentunit", minv=None, maxv=1),
        ts("Errors per second by type",
           "errors_total by error_type: client_error, rate_limited, upstream_error (502), "
           "service_unavailable (503), upstream_timeout (504), server_error...",
           targets((f"sum by (error_type) (rate(errors_total{{{GN}}}[{RI}]))", "{{error_type}}")),
           unit="reqps", stack=True),
        ts("Requests per second by instance", "Load over the gateway instances.",
           targets((f"sum by (instance) (rate(http_requests_total{{{GN}}}[{RI}]))",
                    "{{instance}}")), unit="reqps"),
    ])
    b.line([
        ts("Upstream requests per second",
           "Requests per upstream and outcome (success: status below 400).",
           targets((f"sum by (upstream, status) (rate(upstream_requests_total{{{G}}}[{RI}]))",
                    "{{upstream}} {{status}}")), unit="reqps"),
        ts("Requests per second by endpoint", "By endpoint label (gateway_metrics_endpoint).",
           targets((f"sum by (endpoint) (rate(http_requests_total{{{GN}}}[{RI}]))",
                    "{{endpoint}}")), unit="reqps", stack=True),
    ])

    # ---- latency ----------------------------------------------------------------------------
    b.row("Latency")
    q = "histogram_quantile({p}, sum by (le) (rate(http_request_duration_seconds_bucket{{{m}}}[{ri}])))"
    b.line([
        ts("Response time percentiles", "p50, p95 and p99 of the request duration.",
           targets((q.format(p="0.50", m=GN, ri=RI), "p50"),
                   (q.format(p="0.95", m=GN, ri=RI), "p95"),
                   (q.format(p="0.99", m=GN, ri=RI), "p99"), exemplar=True), unit="s"),
        ts("P95 response time by namespace", "95th percentile of the request duration per namespace.",
           targets((f"histogram_quantile(0.95, sum by (le, namespace) "
                    f"(rate(http_request_duration_seconds_bucket{{{GN}}}[{RI}])))",
                    "{{namespace}}"), exemplar=True), unit="s"),
    ])
    b.line([
        ts("Average response time by namespace", "Mean request duration per namespace.",
           targets((f"sum by (namespace) (rate(http_request_duration_seconds_sum{{{GN}}}[{RI}]))\n/\n"
                    f"sum by (namespace) (rate(http_request_duration_seconds_count{{{GN}}}[{RI}]))",
                    "{{namespace}}")), unit="s"),
        ts("P95 response time by model", "95th percentile of model request durations.",
           targets((f"histogram_quantile(0.95, sum by (le, model) "
                    f"(rate(model_request_duration_seconds_bucket{{{GM}}}[{RI}])))",
                    "{{model}}"), exemplar=True), unit="s"),
    ])

    # ---- LLM --------------------------------------------------------------------------------
    b.row("LLM: tokens, cost, models")
    b.line([
        ts("Token usage (input / output)",
           "Tokens per second as reported by the providers. Token使用情况 (输入/输出). "
           "cached_input and reasoning are parts of input and output.",
           targets((f'sum by (token_type) (rate(namespace_tokens_total{{{GN}, token_type=~"input|output"}}[{RI}]))',
                    "{{token_type}}"),
                   (f'sum by (token_type) (rate(namespace_tokens_total{{{GN}, token_type=~"cached_input|reasoning"}}[{RI}]))',
                    "{{token_type}} (part of the above)")),
           unit="short"),
        ts("Tokens per second by namespace", "Input + output tokens per namespace.",
           targets((f'sum by (namespace, token_type) (rate(namespace_tokens_total{{{GN}, token_type=~"input|output"}}[{RI}]))',
                    "{{namespace}} {{token_type}}")), unit="short", stack=True),
    ])
    b.line([
        ts("Tokens per second by model", "Input and output tokens per model.",
           targets((f"sum by (model) (rate(model_tokens_input_total{{{GM}}}[{RI}]))",
                    "{{model}} input"),
                   (f"sum by (model) (rate(model_tokens_output_total{{{GM}}}[{RI}]))",
                    "{{model}} output")), unit="short"),
        ts("Model requests per second", "Requests per model and outcome.",
           targets((f"sum by (model, status) (rate(model_requests_total{{{GM}}}[{RI}]))",
                    "{{model}} {{status}}")), unit="reqps", stack=True),
    ])
    b.line([
        ts("Model cost per hour", "USD per hour by model, at the current rate.",
           targets((f"3600 * sum by (model) (rate(model_cost_usd_total{{{GM}}}[{RI}]))",
                    "{{model}}")), unit="currencyUSD", stack=True),
        bargauge("Cost by namespace (time range)", "USD spent per namespace over the time range.",
                 targets((f"sort_desc(sum by (namespace) (increase(model_cost_usd_total{{{GM}}}[$__range])))",
                          "{{namespace}}"), instant=True), unit="currencyUSD"),
        ts("Unpriced model requests",
           "Requests with token usage for models without a gateway_metrics_model_price line: "
           "their cost is not counted.",
           targets((f'sum by (model) (rate(gateway_metrics_unpriced_model_requests_total{{{G}, model=~"$model"}}[{RI}]))',
                    "{{model}}")), unit="reqps"),
    ])
    b.line([
        ts("Time to first token by model",
           "p50 and p95 of the time to first token of streamed responses.",
           targets((f"histogram_quantile(0.50, sum by (le, model) "
                    f"(rate(model_time_to_first_token_seconds_bucket{{{GM}}}[{RI}])))",
                    "{{model}} p50"),
                   (f"histogram_quantile(0.95, sum by (le, model) "
                    f"(rate(model_time_to_first_token_seconds_bucket{{{GM}}}[{RI}])))",
                    "{{model}} p95"), exemplar=True), unit="s"),
        ts("Generation throughput by model",
           "Median output tokens per second of generation time, per model.",
           targets((f"histogram_quantile(0.50, sum by (le, model) "
                    f"(rate(model_throughput_tokens_per_second_bucket{{{GM}}}[{RI}])))",
                    "{{model}}")), unit="short"),
    ])

    # ---- limits and caches ------------------------------------------------------------------
    b.row("Rate limits and cache")
    b.line([
        ts("Rate-limit hits and violations",
           "Hits: requests delayed, throttled or rejected by a limit; violations: rejected.",
           targets((f"sum by (namespace, rule_type) (rate(rate_limit_hits_total{{{GN}}}[{RI}]))",
                    "{{namespace}} {{rule_type}} hits"),
                   (f"sum by (namespace, rule_type) (rate(rate_limit_violations_total{{{GN}}}[{RI}]))",
                    "{{namespace}} {{rule_type}} violations")), unit="reqps"),
        ts("Cache hit ratio by cache type", "Hits over lookups per cache type.",
           targets((f"sum by (cache_type) (rate(cache_hits_total{{{G}}}[{RI}]))\n/\n"
                    f"(sum by (cache_type) (rate(cache_hits_total{{{G}}}[{RI}])) + "
                    f"sum by (cache_type) (rate(cache_misses_total{{{G}}}[{RI}])))",
                    "{{cache_type}}")), unit="percentunit", maxv=1),
    ])

    # ---- gateways and the metrics zone ------------------------------------------------------
    b.row("Gateways and metrics zone")
    b.line([
        ts("Active connections by namespace",
           "Requests in flight per namespace (active_connections).",
           targets((f"sum by (namespace) (active_connections{{{GN}}})", "{{namespace}}")),
           unit="short", stack=True),
        ts("nginx connections", "Client connections by state (stub_status figures).",
           targets((f"sum(nginx_connections_active{{{G}}})", "active"),
                   (f"sum(nginx_connections_reading{{{G}}})", "reading"),
                   (f"sum(nginx_connections_writing{{{G}}})", "writing"),
                   (f"sum(nginx_connections_waiting{{{G}}})", "waiting")), unit="short"),
        bargauge("Metrics zone usage",
                 "Share of each gateway's metrics shared-memory zone in use. New label sets go "
                 "to __overflow__ series when it is full.",
                 targets((f"sum by (instance, zone) (gateway_metrics_zone_used_bytes{{{G}}})\n/\n"
                          f"sum by (instance, zone) (gateway_metrics_zone_size_bytes{{{G}}})",
                          "{{instance}} {{zone}}"), instant=True),
                 unit="percentunit", maxv=1, th=thresholds((0.8, "orange"), (0.9, "red"))),
    ])
    b.line([
        ts("Series stored / gateway_metrics_max_series",
           "Series in each zone over the cardinality cap.",
           targets((f"sum by (instance, zone) (gateway_metrics_series{{{G}}})\n/\n"
                    f"sum by (instance, zone) (gateway_metrics_max_series{{{G}}})",
                    "{{instance}} {{zone}}")), unit="percentunit", maxv=1),
        ts("Dropped updates and invalid Lua calls",
           "Updates that did not reach their own series (overflow or lost), by reason; calls "
           "from Lua rejected for invalid arguments.",
           targets((f"sum by (instance, reason) (rate(gateway_metrics_dropped_updates_total{{{G}}}[{RI}]))",
                    "{{instance}} dropped {{reason}}"),
                   (f"sum by (instance) (rate(gateway_metrics_invalid_calls_total{{{G}}}[{RI}]))",
                    "{{instance}} invalid calls")), unit="ops"),
        ts("Gateway uptime",
           "Time since each gateway's metrics zone was created (a restart resets it; a reload "
           "does not).",
           targets((f"time() - max by (instance) (gateway_metrics_start_time_seconds{{{G}}})",
                    "{{instance}}")), unit="s"),
    ])

    # ---- system -----------------------------------------------------------------------------
    b.row("System (node_exporter)")
    b.line([
        ts("CPU usage", "Busy CPU share per host (all modes but idle).",
           targets((f'100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{{{NODE}, mode="idle"}}[{RI}])))',
                    "{{instance}}")), unit="percent", maxv=100),
        ts("Memory usage", "Memory in use per host (total minus available).",
           targets((f"100 * (1 - node_memory_MemAvailable_bytes{{{NODE}}} / node_memory_MemTotal_bytes{{{NODE}}})",
                    "{{instance}}")), unit="percent", maxv=100),
        ts("Disk usage", "Used share of each mounted filesystem (tmpfs and the like left out).",
           targets((f"100 * (1 - node_filesystem_avail_bytes{{{FS}}} / node_filesystem_size_bytes{{{FS}}})",
                    "{{instance}} {{mountpoint}}")), unit="percent", maxv=100),
    ])
    b.line([
        ts("Network traffic", "Bytes per second received and sent per host (loopback left out).",
           targets((f'sum by (instance) (rate(node_network_receive_bytes_total{{{NODE}, device!="lo"}}[{RI}]))',
                    "{{instance}} received"),
                   (f'sum by (instance) (rate(node_network_transmit_bytes_total{{{NODE}, device!="lo"}}[{RI}]))',
                    "{{instance}} sent")), unit="Bps"),
        ts("Disk I/O", "Bytes per second read and written per host.",
           targets((f"sum by (instance) (rate(node_disk_read_bytes_total{{{NODE}}}[{RI}]))",
                    "{{instance}} read"),
                   (f"sum by (instance) (rate(node_disk_written_bytes_total{{{NODE}}}[{RI}]))",
                    "{{instance}} written")), unit="Bps"),
        ts("Load average", "1-minute load average per host, and its CPU count.",
           targets((f"node_load1{{{NODE}}}", "{{instance}} load1"),
                   (f'count by (instance) (node_cpu_seconds_total{{{NODE}, mode="idle"}})',
                    "{{instance}} CPUs")), unit="short"),
    ])

    templating = [
        {
            "type": "datasource", "name": "datasource", "label": "Data source",
            "query": "prometheus", "regex": "", "refresh": 1, "hide": 0, "multi": False,
            "includeAll": False, "current": {}, "options": [], "skipUrlSync": False,
        },
        query_var("job", "Job", "label_values(gateway_metrics_zone_size_bytes, job)"),
        query_var("instance", "Instance",
                  'label_values(gateway_metrics_zone_size_bytes{job=~"$job"}, instance)'),
        query_var("namespace", "Namespace",
                  'label_values(namespace_requests_total{job=~"$job", instance=~"$instance"}, namespace)',
                  all_value=".*"),
        query_var("model", "Model",
                  'label_values(model_requests_total{job=~"$job", instance=~"$instance"}, model)',
                  all_value=".*"),
        query_var("node", "Host (node_exporter)", "label_values(node_uname_info, instance)"),
    ]

    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "bargauge", "name": "Bar gauge", "version": ""},
        ],
        "annotations": {"list": [
            {
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard",
            },
            {
                "datasource": DS, "enable": True, "hide": False, "iconColor": "orange",
                "name": "Gateway restarts",
                "expr": f"changes(gateway_metrics_start_time_seconds{{{G}}}[$__interval]) > 0",
                "step": "1m", "titleFormat": "gateway restarted", "textFormat": "{{instance}}",
                "useValueForTime": False,
            },
        ]},
        "description": "AI/LLM gateway metrics from the gateway_metrics nginx module: requests, "
                       "latency, tokens, cost, time to first token, rate limits, cache, the "
                       "metrics zone, and the hosts (node_exporter).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "panels": b.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["ai-gateway", "llm", "nginx", "prometheus"],
        "templating": {"list": templating},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "AI Gateway Overview",
        "uid": "ai-gateway-overview",
        "version": 1,
        "weekStart": "",
    }


def render():
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        try:
            with open(OUT, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{OUT} is not up to date: run scripts/monitoring_dashboard.py", file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
