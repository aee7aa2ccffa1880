"""monitoring/: the Prometheus config, the rules and their unit tests (promtool), the Grafana
dashboard and provisioning, and the metric names they use (which must all be emitted by the
module, or by node_exporter / Prometheus itself). The end-to-end run against a real Prometheus
is tests/test_monitoring_stack.py."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

import gmharness as gm
from gmharness import ROOT, Nginx, free_port, wait_for
import monitoring_config
import monitoring_promql as mp

MON = os.path.join(ROOT, "monitoring")
CONFIG = os.path.join(MON, "prometheus.yml")
DASHBOARD = os.path.join(MON, "grafana/dashboards/ai-gateway-overview.json")
RULE_TESTS = sorted(glob.glob(os.path.join(MON, "tests", "*.test.yml")))
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="no promtool")

# Series Prometheus makes itself (not scraped from any exporter).
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added",
                     "ALERTS", "ALERTS_FOR_STATE"}


def promtool(*args):
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=MON)
    return r.returncode, r.stdout + r.stderr


def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_exprs():
    out = [(f'{r["kind"]} {r["name"]}', r["expr"]) for r in mp.all_rules()]
    out += [(w, e) for w, e, _ in mp.dashboard_exprs(DASHBOARD)]
    return out


# ---- promtool ---------------------------------------------------------------------------------

@needs_promtool
def test_promtool_check_config_is_clean():
    rc, out = promtool("check", "config", "--lint=all", "--lint-fatal", CONFIG)
    assert rc == 0, out
    assert "WARNING" not in out, out
    # it found and checked the rule files through rule_files
    assert f"SUCCESS: {len(mp.RULE_FILES)} rule files found" in out, out


@needs_promtool
def test_promtool_check_rules_is_clean():
    rc, out = promtool("check", "rules", "--lint=all", "--lint-fatal", *mp.RULE_FILES)
    assert rc == 0, out
    assert "WARNING" not in out, out
    # the small rule reader of scripts/monitoring_promql.py sees every rule promtool sees
    counts = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", out)]
    assert sum(counts) == len(mp.all_rules()), out


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS
    rc, out = promtool("test", "rules", *RULE_TESTS)
    assert rc == 0, out
    assert "FAILED" not in out, out


def _alert_cases():
    """{alertname: set of "fires"/"quiet"} from the promtool test files."""
    cases = {}
    for path in RULE_TESTS:
        with open(path) as f:
            lines = f.read().splitlines()
        for i, ln in enumerate(lines):
            m = re.match(r"^\s*alertname:\s*(\S+)", ln)
            if not m:
                continue
            for nxt in lines[i + 1:]:
                mm = re.match(r"^\s*exp_alerts:\s*(.*)$", nxt)
                if mm:
                    kind = "quiet" if mm.group(1).strip() == "[]" else "fires"
                    cases.setdefault(m.group(1), set()).add(kind)
                    break
    return cases


def test_every_alert_is_unit_tested_firing_and_quiet():
    alerts = {r["name"] for r in mp.all_rules() if r["kind"] == "alert"}
    cases = _alert_cases()
    missing = {a: cases.get(a, set()) for a in alerts if cases.get(a) != {"fires", "quiet"}}
    assert not missing, f"alerts without a firing and a quiet unit test: {missing}"
    # and every severity variant of an alert fires in some test
    text = "".join(open(p).read() for p in RULE_TESTS)
    for r in mp.all_rules():
        if r["kind"] == "alert":
            assert re.search(r"exp_labels: \{severity: %s, [^}]*\}" % r["labels"]["severity"], text)


def test_alert_rules_are_complete():
    required = {
        "high error ratio": "AIGatewayHighErrorRatio",
        "high p95 latency": "AIGatewayHighLatencyP95",
        "upstream errors": "AIGatewayUpstreamErrors",
        "token burn": "AIGatewayNamespaceTokenBurnHigh",
        "cost": "AIGatewayNamespaceCostHigh",
        "rate-limit violations spike": "AIGatewayRateLimitViolationsSpike",
        "zone nearly full": "AIGatewayMetricsZoneNearlyFull",
        "dropping series": "AIGatewayMetricsDroppingUpdates",
        "target down": "AIGatewayTargetDown",
    }
    alerts = [r for r in mp.all_rules() if r["kind"] == "alert"]
    names = {a["name"] for a in alerts}
    assert not set(required.values()) - names
    for a in alerts:
        assert a["for"], f'{a["name"]} has no for:'
        assert a["labels"].get("severity") in ("critical", "warning", "info"), a
        assert {"summary", "description"} <= set(a.get("annotations", [])), a


def test_recording_rules_follow_the_naming_convention_and_aggregate_by_job():
    records = [r for r in mp.all_rules() if r["kind"] == "record"]
    assert len(records) >= 20
    names = [r["name"] for r in records]
    assert len(names) == len(set(names)), "duplicate record names"
    for r in records:
        m = re.fullmatch(r"([a-z_]+):([a-z0-9_]+):([a-z0-9_]+)", r["name"])
        assert m, f'{r["name"]}: not level:metric:operations'
        level = m.group(1)
        assert level.startswith("job"), r["name"]
        # every label named in the level is kept by the aggregation; "le" is for bucket rates
        kept = set()
        for g in re.findall(r"\bby\s*\(([^)]*)\)", r["expr"]):
            kept |= {x.strip() for x in g.split(",")}
        uses_recorded = bool(re.search(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", r["expr"]))
        if kept:
            labels = {"job", "namespace", "model", "instance", "zone", "le", "upstream",
                      "status_code", "status", "error_type", "token_type", "rule_type",
                      "cache_type", "reason"}
            for lbl in labels:
                if re.search(rf"(^|_){lbl}(_|$)", level) and not (lbl == "status" and "status_code" in level):
                    assert lbl in kept or uses_recorded, f'{r["name"]}: level names {lbl}, not kept'
        else:
            assert uses_recorded, f'{r["name"]}: does not aggregate'
    # what the issue asks for
    want = ["job_namespace:http_requests:rate5m", "job_namespace:namespace_requests_success:ratio_rate5m",
            "job_namespace:http_request_duration_seconds:p50_rate5m",
            "job_namespace:http_request_duration_seconds:p95_rate5m",
            "job_namespace:http_request_duration_seconds:p99_rate5m",
            "job_model:model_request_duration_seconds:p95_rate5m",
            "job_namespace_model:model_tokens_input:rate5m", "job_namespace_model:model_tokens_output:rate5m",
            "job_namespace_model:model_cost_usd:hourly_rate5m", "job_namespace_error_type:errors:rate5m",
            "job_model:model_time_to_first_token_seconds:p95_rate5m"]
    assert not set(want) - set(names)


def test_recorded_names_used_are_defined():
    defined = {r["name"] for r in mp.all_rules() if r["kind"] == "record"}
    for where, e in all_exprs():
        for n in mp.metric_names(e):
            if ":" in n:
                assert n in defined, f"{where} uses {n}, which no rule records"


def test_rules_and_dashboard_hard_code_no_deployment_label_values():
    """Nothing may depend on how this repository names its job, zone, namespaces, models or
    upstreams: rules select no such label at all, the dashboard only through its variables."""
    deployment = ("job", "instance", "namespace", "model", "zone", "upstream", "endpoint")
    for r in mp.all_rules():
        for name, matchers in mp.selectors(r["expr"]):
            for lbl in deployment:
                assert not re.search(rf"\b{lbl}\s*(=|!=|=~|!~)", matchers), \
                    f'{r["name"]}: selects {lbl} in {name}{{{matchers}}}'
    variable_of = {"job": "$job", "instance": "$instance", "namespace": "$namespace",
                   "model": "$model"}
    for where, e, kind in mp.dashboard_exprs(DASHBOARD):
        sels = mp.selectors(e)
        assert sels, f"{where}: no selector in {e!r}"
        for name, matchers in sels:
            for lbl in deployment:
                for op, val in re.findall(rf"\b{lbl}\s*(=|!=|=~|!~)\s*\"([^\"]*)\"", matchers):
                    if name.startswith("node_") and lbl == "instance":
                        assert val == "$node", f"{where}: {name}{{{matchers}}}"
                    else:
                        assert val == variable_of.get(lbl), f"{where}: {name}{{{matchers}}}"
            if kind == "panel" or kind == "annotation":
                if name.startswith("node_"):
                    assert 'instance=~"$node"' in matchers, f"{where}: {name} not filtered by $node"
                else:
                    assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, \
                        f"{where}: {name}{{{matchers}}} not filtered by $job and $instance"


# ---- dashboard --------------------------------------------------------------------------------

def test_dashboard_is_generated_from_scripts_monitoring_dashboard():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/monitoring_dashboard.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dashboard_is_an_importable_grafana_dashboard():
    d = load_dashboard()
    assert d["title"] == "AI Gateway Overview"
    assert d["uid"] and len(d["uid"]) <= 40
    assert d["id"] is None and isinstance(d["schemaVersion"], int)
    assert "__inputs" not in d, "the datasource comes from the $datasource variable"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name, label in (("job", "job"), ("instance", "instance"), ("namespace", "namespace"),
                        ("model", "model")):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        conv = mp.label_values_to_promql(v["query"])
        assert conv and conv[1] == label, v["query"]
        assert v["includeAll"] and v["multi"]
        # "All" of job/instance lists the gateways' values (so `up` of other jobs is left out);
        # of namespace/model, also the series without the label (label_values never lists "")
        assert v["allValue"] == (".*" if name in ("namespace", "model") else None), name
    ids = set()
    cells = set()
    for p in d["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()


def test_dashboard_has_the_design_document_panels():
    titles = {p["title"] for p in load_dashboard()["panels"]}
    want = [
        # prometheus-integration-guide.md: 仪表盘功能
        "Total requests", "Success rate", "Average response time", "QPS",
        "Requests per second by namespace", "Token usage (input / output)",
        # the issue
        "P95 response time", "Model cost per hour", "Time to first token by model",
        "Rate-limit hits and violations", "Cache hit ratio", "Active connections",
        "Metrics zone usage",
        # node_exporter (prometheus-data-plan.md: 系统监控指标)
        "CPU usage", "Memory usage", "Disk usage", "Network traffic",
    ]
    assert not [t for t in want if t not in titles], sorted(titles)


def test_grafana_provisioning_files():
    with open(os.path.join(MON, "grafana/provisioning/datasources/prometheus.yml")) as f:
        ds = f.read()
    assert re.search(r"^apiVersion: 1$", ds, re.M) and "type: prometheus" in ds
    # $__rate_interval is right only if Grafana knows the scrape interval
    with open(CONFIG) as f:
        scrape = re.search(r"^\s+scrape_interval:\s*(\S+)", f.read(), re.M).group(1)
    assert re.search(rf"timeInterval:\s*{scrape}\b", ds)
    # Exemplars link to traces by their trace_id label (what the module writes).
    assert re.search(r"exemplarTraceIdDestinations:\n\s+- name: trace_id\n", ds)
    with open(os.path.join(MON, "grafana/provisioning/dashboards/ai-gateway.yml")) as f:
        prov = f.read()
    assert re.search(r"^apiVersion: 1$", prov, re.M) and "type: file" in prov
    assert re.search(r"^\s+path:\s*/\S+", prov, re.M)


def test_latency_and_ttft_panels_show_exemplars():
    with open(DASHBOARD) as f:
        panels = json.load(f)["panels"]
    with_exemplars = {p["title"] for p in panels
                      if any(t.get("exemplar") for t in p.get("targets", []))}
    assert with_exemplars == {"Response time percentiles", "P95 response time by namespace",
                              "P95 response time by model", "Time to first token by model"}
    # ... and only where the query reads a histogram whose buckets carry them
    for p in panels:
        for t in p.get("targets", []):
            if t.get("exemplar"):
                assert "_bucket{" in t["expr"], t["expr"]
    with open(CONFIG) as f:
        text = f.read()
    assert "--enable-feature=exemplar-storage" in text
    with open(os.path.join(ROOT, "scripts/monitoring")) as f:
        assert "--enable-feature=exemplar-storage" in f.read()


def test_scrape_and_retention_settings():
    with open(CONFIG) as f:
        text = f.read()
    m = re.search(r"^global:\n(?:\s+.*\n)*?\s+scrape_interval:\s*(\d+)s", text, re.M)
    assert m and 10 <= int(m.group(1)) <= 15
    assert "--storage.tsdb.retention.time=30d" in text
    assert re.search(r"^# remote_write:", text, re.M)
    assert "file_sd_configs" in text and "job_name: node" in text


# ---- metric names -----------------------------------------------------------------------------

MODULE_CONF = """
    gateway_metrics_zone names_check 4m;
    gateway_metrics on;
    server {
        listen 127.0.0.1:{port};
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def exposition_names(text):
    """Sample names a /metrics page can have: every `# TYPE` family (printed even without
    samples), with _bucket/_sum/_count for histograms, and every sample name."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) in ("histogram", "summary"):
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
        elif line and not line.startswith("#"):
            names.add(re.match(r"^[^{\s]+", line).group(0))
    return names


def node_exporter_names(attempts=5):
    """Sample names of a node_exporter started on a free port. The port was free when picked:
    another server (tests run in parallel) may take it before ours binds it, and ours then exits
    while the other one answers. So the page is read only once the listening socket is seen to
    be our process's own (another port and another try otherwise)."""
    for _ in range(attempts):
        port = free_port()
        with tempfile.TemporaryFile() as log:
            p = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                                 stdout=log, stderr=log)
            try:
                wait_for(lambda: p.poll() is not None or gm.owns_listener(p.pid, port), bool,
                         timeout=20, what="node_exporter listening")
                if p.poll() is not None:
                    continue     # it lost the port: another one
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                    text = r.read().decode()
                assert "node_exporter_build_info" in text, text[:2000]
                return exposition_names(text)
            finally:
                if p.poll() is None:
                    p.terminate()
                p.wait(10)
    raise AssertionError("node_exporter did not start")


def test_every_metric_name_used_in_monitoring_is_emitted():
    """Fails when a rule or the dashboard references a metric the module does not emit."""
    with Nginx(MODULE_CONF, workers=1) as n:
        module = exposition_names(n.scrape())
    # sanity: the families of the README are there, with the histograms' series
    assert {"http_requests_total", "http_request_duration_seconds_bucket",
            "model_time_to_first_token_seconds_count", "gateway_metrics_zone_used_bytes",
            "gateway_metrics_dropped_updates_total"} <= module
    used = set()
    for _, e in all_exprs():
        used |= mp.metric_names(e)
    used = {n for n in used if ":" not in n}          # recorded names: checked above
    node = {n for n in used if n.startswith("node_")}
    unknown = used - node - module - PROMETHEUS_SERIES
    assert not unknown, f"not emitted by the module: {sorted(unknown)}"
    assert used & module, "no module metric found at all: the extraction is broken"
    # the rule unit tests feed series of the module's names too (a typo there tests nothing)
    for path in RULE_TESTS:
        with open(path) as f:
            fed = set(re.findall(r"series:\s*'([A-Za-z_:][A-Za-z0-9_:]*)\{", f.read()))
        assert fed and not fed - module - PROMETHEUS_SERIES, (path, fed - module)
    if node:
        if not NODE_EXPORTER:
            pytest.skip("no node_exporter to check the node_* names against")
        missing = node - node_exporter_names()
        assert not missing, f"not emitted by node_exporter: {sorted(missing)}"


def test_metric_name_extraction():
    e = ('histogram_quantile(0.95, sum by (le, namespace) (rate(http_request_duration_seconds_bucket'
         '{job=~"$job", status_code=~"5.."}[$__rate_interval]))) / on (job) group_left '
         'job:foo:rate5m offset 5m > bool 1e3 and time() - max(bar_total{a="x y"} offset 1h)')
    assert mp.metric_names(e) == {"http_request_duration_seconds_bucket", "job:foo:rate5m",
                                  "bar_total"}
    assert mp.label_values_to_promql('label_values(up{job=~"$job"}, instance)') == \
        ('count by (instance) (up{job=~"$job"})', "instance")
    assert mp.substitute('rate(x{a=~"$a", b=~"${b}"}[$__rate_interval])', {"a": "1"}) == \
        'rate(x{a=~"1", b=~".*"}[1m])'


# ---- scripts ----------------------------------------------------------------------------------

@needs_promtool
def test_config_rewrite_for_other_ports_and_job_names(tmp_path):
    with open(CONFIG) as f:
        text = f.read()
    out = monitoring_config.rewrite(
        text, MON, targets={"ai-gateway": ["127.0.0.1:1", "127.0.0.1:2"], "node": ["127.0.0.1:3"]},
        rename={"ai-gateway": "edge"}, interval="2s")
    assert "job_name: edge" in out and "job_name: ai-gateway" not in out
    assert 'targets: ["127.0.0.1:1", "127.0.0.1:2"]' in out
    assert 'targets: ["127.0.0.1:3"]' in out
    # the labels the config gives the replaced targets are kept on the new ones
    assert re.search(r'- targets: \["127\.0\.0\.1:1", "127\.0\.0\.1:2"\]\n\s+labels:\n\s+site: local\n',
                     out), out
    assert "file_sd_configs" not in out
    assert re.search(r"scrape_interval: 2s", out) and "evaluation_interval: 2s" in out
    assert f'"{MON}/rules/*.yml"' in out
    path = tmp_path / "prometheus.yml"
    path.write_text(out)
    rc, msg = promtool("check", "config", "--lint=all", "--lint-fatal", str(path))
    assert rc == 0 and "WARNING" not in msg, msg + out
    with pytest.raises(ValueError):
        monitoring_config.rewrite(text, MON, targets={"no-such-job": ["x:1"]})
    # without changes, only relative paths become absolute
    same = monitoring_config.rewrite(text, MON)
    assert same.replace(f"{MON}/", "").replace('"rules/*.yml"', "rules/*.yml") == text


@needs_promtool
def test_scripts_monitoring_check_mode(tmp_path):
    """`scripts/monitoring --check` writes and checks the stack's config without starting it.
    Fixed ports are safe here: in --check mode scripts/monitoring neither probes nor binds them
    (pick_port skips the busy check, and it exits after `promtool check config`, before
    starting node_exporter or Prometheus); they only end up in the config text."""
    env = dict(os.environ, GM_MONITORING_DIR=str(tmp_path), GM_PORT="18080",
               GM_NODE_EXPORTER_PORT="19100", GM_PROMETHEUS_PORT="19090")
    r = subprocess.run([os.path.join(ROOT, "scripts/monitoring"), "--check"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = (tmp_path / "prometheus.yml").read_text()
    assert 'targets: ["127.0.0.1:18080"]' in cfg
    assert re.search(r'- targets: \["127\.0\.0\.1:18080"\]\n\s+labels:\n\s+site: local\n', cfg), cfg
    assert 'targets: ["127.0.0.1:19100"]' in cfg and 'targets: ["127.0.0.1:19090"]' in cfg
