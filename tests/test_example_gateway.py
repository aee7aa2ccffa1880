"""The example AI gateway (nginx-conf/ai-gateway.conf + lua/gateway/) end to end: real nginx with
two workers, lua-nginx-module and the mock LLM upstream.

Token totals, cost, TTFT (read by the module: gateway_metrics_usage auto), the include_usage
the gateway adds to OpenAI chat streams (spliced into the request: every case), the token budget
(charged with what the module read, gm.response_usage), the accuracy gauge; the endpoint
label, API keys as the only source of the tenant, /metrics for the scrapers only, the
/v1/models cache, the OpenAI SDK (Responses and Embeddings APIs) through the gateway, the mock
LLM itself and scripts/run. The example without Lua: tests/test_example_native.py."""
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import pytest

import gmharness as gm
from gmharness import (MockLLM, Nginx, bound_get, fixtures, free_port, histogram_consistent,
                       wait_for)

pytestmark = pytest.mark.skipif(not gm.HAVE_LUA, reason="needs Debian's lua-nginx-module")

CONF_PATH = os.path.join(gm.ROOT, "nginx-conf", "ai-gateway.conf")
# What gm.Nginx(lua=True) puts in the http block itself.
HARNESS_LUA_PATH = f'lua_package_path "{gm.ROOT}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";'

# The demo's API keys (nginx-conf/ai-gateway.conf) and the namespaces they map to.
DEMO_KEYS = {"wechat": "sk-demo-wechat", "support": "sk-demo-support", "free-tier": "sk-demo-free",
             "premium": "sk-demo-premium", "internal": "sk-demo-internal"}
# Namespaces the tests add to the demo's key map (key sk-test-NS), so that each test has figures
# of its own.
TEST_NAMESPACES = ["tok-a", "tok-b", "tok-c", "ttft", "quiet", "quiet-err", "quiet-end", "abort",
                   "ep", "sec", "browser", "sdk", "cache", "inc"]
# The endpoint label's values (map $uri $gateway_endpoint).
ENDPOINTS = {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings",
             "/v1/models", "/v1beta/models/*:generateContent",
             "/v1beta/models/*:streamGenerateContent", "other"}
KEY_MAP = "map $gateway_api_key $gateway_namespace {\n"


def key(ns):
    return DEMO_KEYS.get(ns) or f"sk-test-{ns}"


def auth(ns):
    return {"Authorization": f"Bearer {key(ns)}"}


@pytest.fixture(scope="module", autouse=True)
def private_module_copy():
    """nginx loads a private copy of the module: a concurrent scripts/build cannot crash it."""
    saved = gm.env.MODULE
    gm.env.MODULE = fixtures.private_module_copy()
    yield
    gm.env.MODULE = saved


def gateway_http(upstream_port, extra="", keep_lua_path=False, test_keys=True):
    """The gateway template with its placeholders substituted, ready for gm.Nginx: `@PORT@`
    becomes the harness's `{port}`, `@PREFIX@` its `{dir}`. gm.Nginx(lua=True) adds the same
    lua_package_path line itself and nginx rejects a duplicate, so the template's line is checked
    to be identical and dropped (unless keep_lua_path, for a wrapper that adds none). With
    test_keys, the keys of TEST_NAMESPACES are added to the template's key map."""
    with open(CONF_PATH) as f:
        text = f.read()
    assert "{port}" not in text and "{dir}" not in text, "the harness would substitute these"
    text = (text.replace("@PORT@", "{port}").replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@ROOT@", gm.ROOT).replace("@PREFIX@", "{dir}"))
    assert not re.search(r"@[A-Z_]+@", text), "unknown placeholder left"
    if test_keys:
        assert text.count(KEY_MAP) == 1, "the key map is not where the tests expect it"
        text = text.replace(KEY_MAP, KEY_MAP + "".join(f"    sk-test-{ns} {ns};\n"
                                                       for ns in TEST_NAMESPACES))
    lines = text.splitlines()
    paths = [l for l in lines if l.strip().startswith("lua_package_path")]
    assert [p.strip() for p in paths] == [HARNESS_LUA_PATH]
    if not keep_lua_path:
        lines = [l for l in lines if not l.strip().startswith("lua_package_path")]
    return "\n".join(lines) + "\n" + extra


def prices():
    """{model: (input, output, cached_input)} from the template's price table."""
    out = {}
    with open(CONF_PATH) as f:
        for line in f:
            m = re.match(r"\s*gateway_metrics_model_price\s+(\S+)\s+(.*);", line)
            if m:
                kv = dict(a.split("=") for a in m.group(2).split())
                inp = float(kv["input"])
                out[m.group(1)] = (inp, float(kv["output"]), float(kv.get("cached_input", inp)))
    return out


def fetch_all(port, requests, threads=16, timeout=30):
    """requests: (method, path, headers, body). Returns (status, headers, body) per request."""
    return gm.run_concurrent(port, requests, threads, timeout, bodies=True)


def post(n, path, body, headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return n.get(path, h, "POST", json.dumps(body).encode() if not isinstance(body, bytes) else body)


def recorded(n, *checks, timeout=30):
    """Scrapes until every check(m) passes (a check asserts figures), and returns that scrape;
    at the deadline, the last scrape (the caller runs its checks on it, so their assertions
    report what differs). The module records in the log phase, which may run after the client
    has its whole response, and within one request records the request series first, then the
    model, first token, tokens, cost, limiter and cache events one after the other; /metrics is
    rendered in slices, so one page reads the families at different moments: a test waits until
    every figure it asserts has arrived, not just the request count."""
    deadline = time.time() + timeout
    while True:
        m = n.metrics()
        try:
            for check in checks:
                check(m)
            return m
        except AssertionError:
            if time.time() >= deadline:
                return m
        time.sleep(0.05)


def settled(n, check, timeout=30):
    """recorded(n, check), then check(m) once more to report its assertion; returns m."""
    m = recorded(n, check, timeout=timeout)
    check(m)
    return m


def cache_lookups(m):
    """proxy_cache lookups recorded (a hit or a miss each; recorded last of a request's figures)."""
    return m.total("cache_hits_total", cache_type="proxy_cache") + \
        m.total("cache_misses_total", cache_type="proxy_cache")


def ns_of(key):
    return dict(key[1]).get("namespace") if isinstance(key, tuple) else dict(key).get("namespace")


@pytest.fixture(scope="module")
def gateway():
    with MockLLM("--chunk-delay-ms", "1") as mock:
        with Nginx(gateway_http(mock.port), workers=2, lua=True) as n:
            yield n
            assert not n.crashes(), n.crashes()
            # (the refused /metrics scrapes of test_metrics_only_from_the_scrapers log errors)
            log = "\n".join(l for l in n.error_log().splitlines()
                            if "access forbidden by rule" not in l)
            assert "[error]" not in log and "[alert]" not in log, log[-3000:]


def test_template_as_a_whole_passes_nginx_t():
    """The template with its own lua_package_path (as scripts/run wraps it) is a valid config."""
    http = gateway_http(free_port(), keep_lua_path=True, test_keys=False)
    main = "".join(f"load_module {m};\n" for m in gm.LUA_MODULES)
    n = Nginx(http, lua=False, main=main)
    try:
        rc, err = n.test_config()
        assert rc == 0, err
    finally:
        n.__exit__()


# ---- token totals, cost, TTFT under concurrent traffic ------------------------------------------

STYLES = ["openai-json", "openai-sse", "openai-sse-nousage", "anthropic-json", "anthropic-sse",
          "openai-json-nousage"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "mystery-model"]
NAMESPACES = ["tok-a", "tok-b", "tok-c"]


def make_request(style, model, ns, p, c, cached, reasoning, chunks, extra_headers=None):
    openai = style.startswith("openai")
    path = "/v1/chat/completions" if openai else "/v1/messages"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    if "sse" in style:
        body["stream"] = True
        if style == "openai-sse":
            body["stream_options"] = {"include_usage": True}
    headers = {"Content-Type": "application/json", "X-Mock-Prompt-Tokens": str(p),
               "X-Mock-Completion-Tokens": str(c), "X-Mock-Cached-Tokens": str(cached),
               "X-Mock-Reasoning-Tokens": str(reasoning), "X-Mock-Chunks": str(chunks)}
    # the tenant is the one of the API key: OpenAI clients send a bearer token, Anthropic's x-api-key
    if openai:
        headers["Authorization"] = f"Bearer {key(ns)}"
    else:
        headers["x-api-key"] = key(ns)
    if style == "openai-json-nousage":
        headers["X-Mock-No-Usage"] = "1"
    headers.update(extra_headers or {})
    return ("POST", path, headers, json.dumps(body).encode())


def expected_usage(style, p, c, cached, reasoning):
    """(input, output, cached_input, reasoning) the gateway must report, or None.

    OpenAI's prompt_tokens include the cached ones; Anthropic's input_tokens do not, so the
    gateway reports input = input_tokens + cache_read_input_tokens for Anthropic. A chat stream
    sent without stream_options.include_usage gets it from the gateway, so its usage counts too;
    a response without usage (X-Mock-No-Usage) reports nothing (never estimated)."""
    if style == "openai-json-nousage":
        return None
    if style.startswith("openai"):
        return (p, c, cached, reasoning)
    return (p + cached, c, cached, 0)


def cost(price, u):
    inp, out, cp = price
    i, o, c, _ = u
    c = min(c, i)
    return ((i - c) * inp + c * cp + o * out) / 1e6


@pytest.fixture(scope="module")
def workload(gateway):
    n = gateway
    rng = random.Random(20261122)
    reqs, plan = [], []
    for _ in range(180):
        style, model, ns = rng.choice(STYLES), rng.choice(MODELS), rng.choice(NAMESPACES)
        p = rng.randint(1, 6000)
        c = rng.randint(0, 3000)
        cached = rng.randint(0, p)
        reasoning = rng.randint(0, c)
        chunks = rng.choice([0, 1, 2, 5])
        reqs.append(make_request(style, model, ns, p, c, cached, reasoning, chunks))
        plan.append((style, model, ns, p, c, cached, reasoning, chunks))
    # what was there before (series of other tests, if any ran first)
    before = n.metrics()
    results = fetch_all(n.port, reqs)
    # one snapshot for the three tests below, once every figure they assert has arrived (the
    # histograms' consistency is not waited for: the tests assert it of that snapshot)
    m = recorded(n, lambda m: check_token_totals(plan, m, before, histograms=False),
                 lambda m: check_cost(plan, m, before),
                 lambda m: check_ttft(plan, m, histograms=False))
    return plan, results, m, before


def test_responses_pass_through_unchanged(workload):
    plan, results, _, _ = workload
    for (style, model, ns, p, c, cached, reasoning, chunks), (status, headers, body) in zip(plan, results):
        assert status == 200, (style, body[:300])
        text = body.decode()
        if "sse" in style:
            assert headers["Content-Type"].startswith("text/event-stream")
            assert text.count('"tok "') == chunks, text
            if style.startswith("openai"):
                assert text.rstrip().endswith("data: [DONE]")
                # (openai-sse-nousage: the include_usage the gateway added brings the usage
                # chunk, just before [DONE])
                assert f'"choices":[],"usage":{{"prompt_tokens":{p},' in text
                assert text.rstrip().split("\n\n")[-2].startswith('data: {"id"')
            else:
                assert "event: message_stop" in text
        else:
            obj = json.loads(text)
            assert int(headers["Content-Length"]) == len(body)
            if style == "openai-json":
                assert obj["usage"]["prompt_tokens"] == p
            elif style == "anthropic-json":
                assert obj["usage"]["input_tokens"] == p


def test_exact_token_totals_per_model_and_namespace(workload):
    plan, _, m, before = workload
    check_token_totals(plan, m, before)


def check_token_totals(plan, m, before, histograms=True):
    per_model = defaultdict(lambda: [0, 0, 0, 0])
    per_ns = defaultdict(lambda: [0, 0, 0, 0])
    requests = Counter()
    for style, model, ns, p, c, cached, reasoning, chunks in plan:
        requests[(model, ns)] += 1
        u = expected_usage(style, p, c, cached, reasoning)
        if u:
            for i in range(4):
                per_model[(model, ns)][i] += u[i]
                per_ns[ns][i] += u[i]
    for (model, ns), u in per_model.items():
        assert m.get1("model_tokens_input_total", model=model, namespace=ns) == u[0], (model, ns)
        assert m.get1("model_tokens_output_total", model=model, namespace=ns) == u[1], (model, ns)
    # no other token series than the expected ones (of all the series the workload added, and
    # of the workload's namespaces)
    old = set(before.select("model_tokens_input_total"))
    got = {(dict(k)["model"], dict(k)["namespace"]) for k in m.select("model_tokens_input_total")
           if k not in old or dict(k)["namespace"] in NAMESPACES}
    assert got == set(per_model), got ^ set(per_model)
    for ns, u in per_ns.items():
        for i, t in enumerate(["input", "output", "cached_input", "reasoning"]):
            assert m.get1("namespace_tokens_total", namespace=ns, token_type=t) == u[i], (ns, t)
    for (model, ns), k in requests.items():
        assert m.get1("model_requests_total", model=model, namespace=ns, status="success") == k
    if histograms:
        histogram_consistent(m, "model_request_duration_seconds")
        histogram_consistent(m, "model_throughput_tokens_per_second")


def test_cost_matches_price_table(workload):
    plan, _, m, before = workload
    check_cost(plan, m, before)


def check_cost(plan, m, before):
    table = prices()
    assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet"} <= set(table)
    assert "mystery-model" not in table
    want = defaultdict(float)
    unpriced = 0
    for style, model, ns, p, c, cached, reasoning, chunks in plan:
        u = expected_usage(style, p, c, cached, reasoning)
        if not u:
            continue
        if model in table:
            want[(model, ns)] += cost(table[model], u)
        else:
            unpriced += 1
    assert unpriced > 0 and len(want) > 3
    for (model, ns), usd in want.items():
        got = m.get1("model_cost_usd_total", model=model, namespace=ns)
        assert got == pytest.approx(usd, rel=1e-9, abs=0), (model, ns)
    for ns in NAMESPACES:
        assert m.get1("model_cost_usd_total", model="mystery-model", namespace=ns) == 0
    # (deltas: the unpriced counter has no namespace label)
    unpriced_name = "gateway_metrics_unpriced_model_requests_total"
    assert m.get1(unpriced_name, model="mystery-model") - \
        before.get1(unpriced_name, model="mystery-model") == unpriced
    grew = {k for k, v in m.select(unpriced_name).items()
            if v != before.select(unpriced_name).get(k, 0)}
    assert grew == {frozenset({("model", "mystery-model")})}, grew


def test_ttft_only_for_streams_with_content(workload):
    plan, _, m, _ = workload
    check_ttft(plan, m)


def check_ttft(plan, m, histograms=True):
    want = Counter()
    for style, model, ns, p, c, cached, reasoning, chunks in plan:
        if "sse" in style and chunks > 0:
            want[(model, ns)] += 1
    for model in MODELS:
        for ns in NAMESPACES:
            got = m.get1("model_time_to_first_token_seconds_count", model=model, namespace=ns)
            assert got == want[(model, ns)], (model, ns)
    if histograms:
        histogram_consistent(m, "model_time_to_first_token_seconds")


def test_ttft_reflects_upstream_delay(gateway):
    n = gateway
    delay = {"X-Mock-Delay-Ms": "200"}
    reqs = []
    for i in range(3):
        reqs.append(make_request("openai-sse", "gpt-4o-mini", "ttft", 100, 50, 0, 0, 3, delay))
        reqs.append(make_request("anthropic-sse", "claude-sonnet", "ttft", 100, 50, 0, 0, 3, delay))
        reqs.append(make_request("openai-json", "gpt-4o-mini", "ttft", 100, 50, 0, 0, 3, delay))
    reqs.append(make_request("anthropic-json", "claude-sonnet", "ttft", 100, 50, 0, 0, 3, delay))
    start = time.time()
    results = fetch_all(n.port, reqs, threads=10)
    # every request, first token included, happened within this time (the bound adapts to a
    # loaded machine, and still catches a first-token time not measured from the request's start)
    elapsed = time.time() - start
    assert all(r[0] == 200 for r in results)

    def check(m):
        for model, json_requests in (("gpt-4o-mini", 3), ("claude-sonnet", 1)):
            lab = dict(model=model, namespace="ttft")
            count = m.get1("model_time_to_first_token_seconds_count", **lab)
            assert count == 3, model  # the JSON requests add nothing
            assert m.get1("model_requests_total", status="success", **lab) == 3 + json_requests
            # every first token came after the 200 ms the upstream waited
            assert m.get1("model_time_to_first_token_seconds_bucket", le="0.2", **lab) == 0
            total = m.get1("model_time_to_first_token_seconds_sum", **lab)
            assert 0.2 * count <= total <= elapsed * count, (total, elapsed)
            # and before the request ended
            assert total <= m.get1("model_request_duration_seconds_sum", **lab)

    settled(n, check)


def test_requests_without_model_or_usage_record_no_model_series(gateway):
    n = gateway
    h = auth("quiet")
    before = n.metrics()
    # one keep-alive connection: nginx finishes a request's log phase (every figure of it) before
    # it reads the next request from the connection, so once the last request (namespace
    # quiet-end) is recorded, any series the others would wrongly add is there too
    conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
    statuses = []
    for method, path, headers, body in [
            ("GET", "/v1/models", h, None),
            ("GET", "/healthz", h, None),
            # not JSON: no model; the mock answers 400 without usage
            ("POST", "/v1/chat/completions", h, b"hello"),
            # an upstream error with a model: a model series, but no tokens
            ("POST", "/v1/chat/completions", {**auth("quiet-err"), "X-Mock-Status": "503",
                                              "Content-Type": "application/json"},
             json.dumps({"model": "gpt-4o"}).encode()),
            ("GET", "/v1/models", auth("quiet-end"), None)]:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
        assert not r.will_close, "the requests must share one connection"
    conn.close()
    assert statuses == [200, 200, 400, 503, 200]

    def check(m):
        assert m.total("http_requests_total", namespace="quiet-end") == 1
        assert m.total("http_requests_total", namespace="quiet") == 2
        assert m.get1("model_requests_total", model="gpt-4o", namespace="quiet-err",
                      status="error") == 1
        assert cache_lookups(m) == cache_lookups(before) + 2  # the two /v1/models

    m = settled(n, check)
    for (name, labels), v in m.items():
        d = dict(labels)
        if name.startswith(("model_", "namespace_tokens")) and d.get("namespace") == "quiet":
            pytest.fail(f"unexpected series {name}{d} = {v}")
    assert not m.select("model_tokens_input_total", namespace="quiet-err")
    assert not m.select("namespace_tokens_total", namespace="quiet-err")
    assert not m.select("model_time_to_first_token_seconds_count", namespace="quiet-err")


# ---- token budget ----------------------------------------------------------------------------

def test_token_budget_near_limit_then_rejects(gateway):
    """free-tier (key sk-demo-free): 2000 tokens per minute, "near" from 1600 on (see the maps in
    the template). Every request also claims `X-Namespace: internal` (the unlimited tier): the
    tenant comes from the key alone, so it is limited and counted as free-tier all the same."""
    n = gateway
    claim = {"X-Namespace": "internal", "X-Tenant": "internal"}
    ns = dict(namespace="free-tier")
    hits = dict(ns, rule_type="token_limit")

    def send(style, p, c, cached=0):
        method, path, headers, body = make_request(style, "claude-sonnet", "free-tier", p, c,
                                                   cached, 0, 2, claim)
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        out = (r.status, dict(r.headers), r.read())
        conn.close()
        return out

    def delta(m, before, name, **labels):
        return m.total(name, **labels) - before.total(name, **labels)

    def scenario():
        """The four requests, each sent once the previous one is charged and recorded (the
        budget is charged in log_by_lua, which runs before the module records the request:
        lua-nginx-module is loaded first). Returns what was seen, checked by the caller."""
        before = n.metrics()
        seen = []
        for i, (style, p, c, cached) in enumerate([("anthropic-json", 900, 100, 0),
                                                   ("anthropic-sse", 500, 150, 50),
                                                   ("openai-sse", 350, 50, 0),
                                                   ("openai-json", 10, 10, 0)]):
            s, h, body = send(style, p, c, cached)

            def arrived(m):
                assert delta(m, before, "http_requests_total", **ns) == i + 1
                # (a limiter event is recorded after the request series)
                assert delta(m, before, "rate_limit_hits_total", **hits) >= (i >= 2) + (i >= 3)

            seen.append((s, h, body, recorded(n, arrived)))
        # the other figures of the last request (model series, limiter events) are recorded
        # after its request series: wait for all that is asserted below
        m = recorded(n, lambda m: final_figures(m, before))
        return before, seen, m

    def final_figures(m, before):
        assert delta(m, before, "rate_limit_hits_total", **hits) == 2
        assert delta(m, before, "rate_limit_violations_total", **hits) == 1
        # the rejected request never reached the provider: no tokens for it
        assert delta(m, before, "model_tokens_input_total", model="claude-sonnet", **ns) == 1800
        assert delta(m, before, "model_requests_total", model="claude-sonnet", status="error",
                     **ns) == 1
        assert delta(m, before, "model_requests_total", model="claude-sonnet", status="success",
                     **ns) == 3
        assert delta(m, before, "errors_total", error_type="rate_limited", upstream="", **ns) == 1
        # the claimed namespace got nothing
        assert delta(m, before, "http_requests_total", **ns) == 4
        assert not [k for k in m if dict(k[1]).get("namespace") == "internal"]

    # The budget is per wall-clock minute (ngx.now() // 60): the four requests must fall in one
    # window. They start early in a window; if one ran past its end all the same (a very slow
    # machine), the scenario is run again from the start of a fresh window: its figures are
    # deltas from its own start, and a fresh window has nothing charged yet.
    for attempt in range(3):
        if time.time() % 60 > 45:
            time.sleep(60.05 - time.time() % 60)
        window = time.time() // 60  # (nginx reads its clock after this: the same or later)
        before, seen, m = scenario()
        if time.time() // 60 == window:  # (and nginx read its clock for them before this)
            break
        time.sleep(60.05 - time.time() % 60)
    else:
        pytest.fail("the budget scenario never fit in one minute")

    (s1, h1, _, m1), (s2, h2, _, m2), (s3, h3, _, m3), (s4, h4, body, _) = seen
    assert s1 == 200 and h1["X-Gateway-Token-Budget-Remaining"] == "2000"   # 1000 used
    assert s2 == 200 and h2["X-Gateway-Token-Budget-Remaining"] == "1000"   # 1700 used
    assert delta(m2, before, "rate_limit_hits_total", **hits) == 0
    # near the limit: admitted, a hit; 2100 used
    assert s3 == 200 and h3["X-Gateway-Token-Budget-Remaining"] == "300"
    assert delta(m3, before, "rate_limit_hits_total", **hits) == 1
    assert delta(m3, before, "rate_limit_violations_total", **hits) == 0
    assert s4 == 429, body
    assert json.loads(body)["error"]["code"] == "token_budget_exceeded"
    assert 1 <= int(h4["Retry-After"]) <= 60
    final_figures(m, before)


# ---- the accuracy gauge (custom metric from the design documents) -----------------------------

def test_accuracy_gauge(gateway):
    n = gateway
    s, _, _ = post(n, "/gateway/accuracy", {"model": "gpt-4o", "task_type": "qa", "accuracy_percent": 91.5})
    assert s == 204
    s, _, _ = post(n, "/gateway/accuracy", {"model": "gpt-4o", "task_type": "qa", "accuracy_percent": 93})
    assert s == 204
    s, _, _ = post(n, "/gateway/accuracy", {"model": "claude-sonnet", "task_type": "summarize",
                                          "accuracy_percent": 88.25})
    assert s == 204
    for bad in [{"model": "gpt-4o"}, {"model": 1, "task_type": "qa", "accuracy_percent": 5},
                {"model": "x", "task_type": "qa", "accuracy_percent": 101}, b"not json", b"[]"]:
        s, body, _ = post(n, "/gateway/accuracy", bad)
        assert s == 400, (bad, body)
        assert json.loads(body)["error"]["message"]
    assert n.get("/gateway/accuracy")[0] == 405
    m = n.metrics()
    assert m.get1("model_accuracy_percent", model="gpt-4o", task_type="qa") == 93
    assert m.get1("model_accuracy_percent", model="claude-sonnet", task_type="summarize") == 88.25
    assert len(m.select("model_accuracy_percent")) == 2
    text = n.scrape()
    assert "# TYPE model_accuracy_percent gauge" in text


# ---- the include_usage splice (pure Lua, driven through a test-only server) ------------------

PARSER_SERVER = r"""
server {
    listen 127.0.0.1:%d;
    gateway_metrics off;
    client_body_buffer_size 1m;
    location = /include_usage {
        content_by_lua_block {
            local phases = require "gateway.phases"
            ngx.req.read_body()
            ngx.print(phases.with_include_usage(ngx.req.get_body_data()) or "nil")
        }
    }
}
"""


@pytest.fixture(scope="module")
def parser_port():
    # a second nginx on the same template with a test-only server for the pure Lua part, on a
    # second port of its own: Nginx.start() takes another {port} when that one was taken since
    # free_port() picked it, this one is retried here likewise
    with MockLLM() as mock:
        for attempt in range(5):
            port = free_port()
            n = Nginx(gateway_http(mock.port, PARSER_SERVER % port), workers=1, lua=True)
            try:
                n.start()
                break
            except RuntimeError as e:
                n.__exit__(None, None, None)
                taken = f"bind() to 127.0.0.1:{port} failed (98: Address already in use)"
                if taken not in str(e) or attempt == 4:
                    raise
        try:
            gm.wait_port(port)
            yield port
            assert not n.crashes()
        finally:
            n.__exit__(None, None, None)


def ask_parser(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body.encode() if isinstance(body, str) else body)
    r = conn.getresponse()
    out = r.read().decode()
    assert r.status == 200, out
    return out


INCLUDE_USAGE_CASES = [
    # (request body, the body the provider gets; None: unchanged)
    ('{"model":"m","stream":true,"messages":[]}',
     '{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}'),
    # other stream_options keys survive, and so does everything else byte for byte ([] stays [],
    # numbers keep their digits, escapes stay as sent)
    ('{ "stream" : true , "stream_options" : { "continuous_usage_stats" : true }, "tools": [], '
     '"temperature": 0.123456789012345678, "stop": ["\\n\\u00e9"]}',
     '{ "stream" : true , "stream_options" : {"include_usage":true, "continuous_usage_stats" : true }, '
     '"tools": [], "temperature": 0.123456789012345678, "stop": ["\\n\\u00e9"]}'),
    ('{"stream":true,"stream_options":{"include_usage":false,"x":{"include_usage":1}}}',
     '{"stream":true,"stream_options":{"include_usage":true,"x":{"include_usage":1}}}'),
    ('{"stream":true,"stream_options":{}}', '{"stream":true,"stream_options":{"include_usage":true}}'),
    ('{"stream":true,"stream_options":null}', '{"stream":true,"stream_options":{"include_usage":true}}'),
    # a key inside a string or a nested object is not the top-level one
    ('{"messages":[{"content":"\\"stream_options\\": {}"}],"meta":{"stream_options":1},"stream":true}',
     '{"stream_options":{"include_usage":true},"messages":[{"content":"\\"stream_options\\": {}"}],'
     '"meta":{"stream_options":1},"stream":true}'),
    # nothing to do
    ('{"stream":true,"stream_options":{"include_usage":true}}', None),
    ('{"stream":false,"messages":[]}', None),
    ('{"messages":[]}', None),
    ('not json', None),
    ('[{"stream":true}]', None),
]


@pytest.mark.parametrize("body,want", INCLUDE_USAGE_CASES)
def test_include_usage_is_spliced_into_the_request(parser_port, body, want):
    got = ask_parser(parser_port, "/include_usage", body)
    if want is None:
        assert got == "nil"
        return
    assert got == want
    req, new = json.loads(body), json.loads(got)
    assert new["stream_options"]["include_usage"] is True
    old_opts = req.get("stream_options") or {}
    assert {k: v for k, v in new["stream_options"].items() if k != "include_usage"} == \
        {k: v for k, v in old_opts.items() if k != "include_usage"}
    assert {k: v for k, v in new.items() if k != "stream_options"} == \
        {k: v for k, v in req.items() if k != "stream_options"}


def test_aborted_stream_still_reports_the_input_tokens(gateway):
    """A client that goes away mid-stream: the module counts what the provider had said until
    then (Anthropic's message_start: the input tokens). The provider bills those tokens, so they
    must count."""
    import socket
    n = gateway
    method, path, headers, body = make_request(
        "anthropic-sse", "claude-sonnet", "abort", 700, 50, 300, 0, 30,
        {"X-Mock-Chunk-Delay-Ms": "50", "Connection": "close"})
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
           ).encode() + body
    with socket.create_connection(("127.0.0.1", n.port), timeout=10) as s:
        s.sendall(raw)
        got = b""
        while b"content_block_delta" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk

    def check(m):
        lab = dict(model="claude-sonnet", namespace="abort")
        assert m.total("http_requests_total", namespace="abort") == 1
        assert m.get1("model_time_to_first_token_seconds_count", **lab) == 1
        assert m.get1("model_tokens_input_total", **lab) == 1000, \
            "input tokens of an aborted stream were not recorded"

    settled(n, check)


def test_stream_without_include_usage_and_gemini_are_counted_and_charged(gateway):
    """A chat stream whose stream_options lacks include_usage gets it from the gateway (its other
    keys kept): the client sees the usage chunk, the module counts the tokens, the budget is
    charged them; the same for Gemini (x-goog-api-key, the model from modelVersion)."""
    n = gateway
    h = {**auth("inc"), "Content-Type": "application/json"}
    window = time.time() // 60
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [],
            "stream_options": {"include_obfuscation": False}}
    s, b, _ = n.get("/v1/chat/completions", {**h, **mock_usage(300, 40, 100, 8, chunks=2)}, "POST",
                    json.dumps(body).encode())
    events = [l[6:] for l in b.decode().split("\n") if l.startswith("data: ")]
    assert s == 200 and events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["prompt_tokens"] == 300
    s, b, _ = n.get("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                    {"x-goog-api-key": key("inc"), **mock_usage(90, 30, 0, 10, chunks=2)}, "POST",
                    json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode())
    assert s == 200 and b.count(b"usageMetadata") == 2
    def check(m):
        mini, gem = dict(model="gpt-4o-mini", namespace="inc"), dict(model="gemini-2.5-flash",
                                                                      namespace="inc")
        assert m.get1("model_tokens_input_total", **mini) == 300
        assert m.get1("model_tokens_output_total", **mini) == 40
        assert m.get1("model_tokens_input_total", **gem) == 90
        assert m.get1("model_tokens_output_total", **gem) == 30
        want = {"input": 390, "output": 70, "cached_input": 100, "reasoning": 18}
        for t, v in want.items():
            assert m.get1("namespace_tokens_total", namespace="inc", token_type=t) == v, t
        assert m.get1("model_time_to_first_token_seconds_count", **mini) == 1
        assert m.get1("model_time_to_first_token_seconds_count", **gem) == 1
        assert m.total("http_requests_total", namespace="inc",
                       endpoint="/v1beta/models/*:streamGenerateContent") == 1

    # (recorded: the budget was charged before, in log_by_lua)
    settled(n, check)
    s, _, headers = n.get("/v1/chat/completions", {**h, "X-Mock-Usage": "none"}, "POST",
                          json.dumps({"model": "gpt-4o-mini", "messages": []}).encode())
    if time.time() // 60 == window:  # (the budget is per wall-clock minute)
        assert int(headers["X-Gateway-Token-Budget-Remaining"]) == 1000000 - (340 + 120)


# ---- the endpoint label -----------------------------------------------------------------------

def test_endpoint_label_is_the_api_operation(gateway):
    """endpoint/path is the API operation (map $uri $gateway_endpoint), a bounded set: the design's
    gateway_requests_total{path="/v1/chat/completions"} matches; anything else is "other"."""
    n = gateway
    ns = "ep"
    h = {**auth(ns), "Content-Type": "application/json"}
    reqs = [
        make_request("openai-json", "gpt-4o", ns, 10, 5, 0, 0, 1),
        make_request("openai-sse", "gpt-4o", ns, 10, 5, 0, 0, 1),
        make_request("anthropic-json", "claude-sonnet", ns, 10, 5, 0, 0, 1),
        ("POST", "/v1/responses", h, json.dumps({"model": "gpt-4o", "input": "hi"}).encode()),
        ("POST", "/v1/embeddings", h, json.dumps({"model": "text-embedding-3-small",
                                                  "input": "hi"}).encode()),
        ("GET", "/v1/models", auth(ns), None),
        ("GET", "/v1/chat/completions?debug=1", auth(ns), None),  # the mock: 405; args ignored
        ("POST", "/v1//chat/completions", h, json.dumps({"model": "gpt-4o"}).encode()),  # $uri: merged
    ] + [("GET", f"/v1/made-up/{i}?x={i}", auth(ns), None) for i in range(5)]
    before = n.metrics()
    results = fetch_all(n.port, reqs, threads=4)
    assert [r[0] for r in results] == [200] * 6 + [405, 200] + [404] * 5, [r[2][:200] for r in results]

    def check(m):
        got = Counter()
        for labels, v in m.select("http_requests_total", namespace=ns).items():
            got[dict(labels)["endpoint"]] += v
        assert got == {"/v1/chat/completions": 4, "/v1/messages": 1, "/v1/responses": 1,
                       "/v1/embeddings": 1, "/v1/models": 1, "other": 5}, got
        # the design seed's query, and the per-endpoint latency
        assert m.total("gateway_requests_total", path="/v1/chat/completions", namespace=ns) == 4
        assert m.total("http_request_duration_seconds_count", endpoint="/v1/responses",
                       namespace=ns) == 1
        assert cache_lookups(m) == cache_lookups(before) + 1  # GET /v1/models

    m = settled(n, check)
    # over everything recorded so far: only the bounded set of values
    assert {dict(k)["endpoint"] for k in m.select("http_requests_total")} <= ENDPOINTS
    assert {dict(k)["path"] for k in m.select("gateway_requests_total")} <= ENDPOINTS


def test_browser_requests_leave_no_series(gateway):
    """Only the API locations record: a browser's GET / or /favicon.ico, /healthz and /metrics
    are not API traffic and leave no series."""
    n = gateway
    before = n.metrics()
    conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
    statuses = []
    for path in ("/", "/favicon.ico", "/healthz", "/robots.txt", "/metrics", "/v1/models"):
        h = {"User-Agent": "Mozilla/5.0", "Accept": "text/html"}
        if path == "/v1/models":
            h.update(auth("browser"))
        conn.request("GET", path, headers=h)
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    assert statuses == [200, 404, 200, 404, 200, 200]
    # nginx logs a request before it reads the next one from the connection: once the last one
    # (an API request) is counted, the others have been through the log phase too. Series of
    # other tests' namespaces are theirs (an earlier test's last figures may still be arriving):
    # the totals below leave them out, whatever ran before.
    others = set(TEST_NAMESPACES + NAMESPACES + ["free-tier"]) - {"browser"}

    def mine(samples, name):
        return sum(v for k, v in samples.select(name).items() if ns_of(k) not in others)

    def check(m):
        assert m.get1("http_requests_total", method="GET", endpoint="/v1/models",
                      status_code="200", namespace="browser", upstream="llm") + \
            m.get1("http_requests_total", method="GET", endpoint="/v1/models", status_code="200",
                   namespace="browser", upstream="") == 1
        assert mine(m, "http_requests_total") == mine(before, "http_requests_total") + 1
        assert mine(m, "gateway_requests_total") == mine(before, "gateway_requests_total") + 1
        # the one API request's cache lookup (recorded last)
        assert cache_lookups(m) == cache_lookups(before) + 1

    m = settled(n, check)
    # New series: the API request's own (namespace browser; and, when this runs first, the
    # series without a namespace of its upstream and cache lookup, which none of the local
    # answers to the browser has), nothing else.
    def explained(k):
        d = dict(k[1])
        return d.get("namespace") == "browser" or "namespace" not in d and (
            d.get("upstream") == "llm" or d.get("cache_type") == "proxy_cache")

    new = [k for k in m if k not in before and not k[0].startswith(("nginx_", "gateway_metrics_"))
           and ns_of(k) not in others]
    assert any(ns_of(k) == "browser" for k in new), new
    assert all(explained(k) for k in new), [k for k in new if not explained(k)]


# ---- tenants from API keys, the scrapers only on /metrics --------------------------------------

def test_unknown_or_missing_api_key_is_refused(gateway):
    """No valid key: 401 with OpenAI's error body, never proxied (X-Mock-Status would show), and
    recorded as a client error of namespace "" (no model, no tokens). A namespace header or a key
    in the wrong place is not a key."""
    n = gateway
    before = n.metrics()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    cases = [{}, {"Authorization": "Bearer sk-not-a-key"}, {"Authorization": "Bearer "},
             {"Authorization": "sk-demo-wechat"}, {"Authorization": "Basic c2stZGVtby13ZWNoYXQ="},
             {"x-api-key": "sk-demo-wechat-2"}, {"X-Namespace": "internal"},
             {"X-Namespace": "wechat", "Authorization": "Bearer wechat"}]
    for h in cases:
        s, b, headers = post(n, "/v1/chat/completions", body, {**h, "X-Mock-Status": "500"})
        assert s == 401, (h, b)
        assert headers["Content-Type"] == "application/json"
        err = json.loads(b)["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key", err
        assert err["message"]
    s, _, headers = n.get("/v1/models", {"Authorization": "Bearer sk-nope"})
    assert s == 401 and "X-Cache" not in headers   # refused before the cache
    # the OpenAI SDK sees its AuthenticationError
    import openai
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=n.url("/v1"), api_key="sk-wrong", max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_api_key"
    refused = len(cases) + 2

    def check(m):
        def added(name, **labels):
            return m.total(name, **labels) - before.total(name, **labels)
        assert added("http_requests_total", namespace="") == refused
        assert added("http_requests_total", namespace="", status_code="401") == refused
        assert added("errors_total", error_type="client_error", namespace="", upstream="") == refused
        assert added("namespace_requests_total", namespace="", status="error") == refused
        assert added("namespace_requests_total", namespace="", status="success") == 0

    m = settled(n, check)
    assert not m.select("model_requests_total", namespace="")
    assert not m.select("namespace_tokens_total", namespace="")


def test_client_api_key_is_not_forwarded(gateway):
    """The provider never sees the client's key (Authorization / x-api-key are replaced)."""
    n = gateway
    for path, body, h in (
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": []}, auth("sec")),
            ("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}, auth("sec")),
            ("/v1/messages", {"model": "claude-sonnet", "messages": []}, {"x-api-key": key("sec")})):
        s, b, headers = post(n, path, body, {**h, "X-Mock-Echo-Headers": "1"})
        assert s == 200, b
        seen = json.loads(headers["X-Mock-Request-Headers"])
        assert seen.get("x-mock-echo-headers") == "1", seen   # the echo works
        assert "authorization" not in seen and "x-api-key" not in seen, seen
        assert key("sec") not in json.dumps(seen)
    # (all recorded before the next test: it would not matter to the others, which leave other
    # tests' namespaces out, but keeps the gateway quiet between tests)
    def check(m):
        assert m.total("http_requests_total", namespace="sec") == 3
        assert m.total("model_requests_total", namespace="sec") == 3

    settled(n, check)


def test_metrics_only_from_the_scrapers(gateway):
    """/metrics names every tenant, model and cost: allowed from the listed addresses (loopback
    here), refused from any other; so is the accuracy endpoint. The API itself is open."""
    n = gateway
    assert bound_get("127.0.0.1", n.port, "/metrics") == 200
    assert bound_get("127.0.0.2", n.port, "/metrics") == 403
    assert bound_get("127.0.0.3", n.port, "/metrics?x") == 403
    assert bound_get("127.0.0.2", n.port, "/gateway/accuracy") == 403
    assert bound_get("127.0.0.2", n.port, "/healthz") == 200
    with open(CONF_PATH) as f:
        conf = f.read()
    loc = re.search(r"location = /metrics \{(.*?)\}", conf, re.S).group(1)
    assert "deny all;" in loc and "allow 127.0.0.1;" in loc and "scrapers" in conf


# ---- the OpenAI SDK through the gateway: Responses and Embeddings -----------------------------

def mock_usage(p, c, cached=0, reasoning=0, chunks=3):
    return {"X-Mock-Prompt-Tokens": str(p), "X-Mock-Completion-Tokens": str(c),
            "X-Mock-Cached-Tokens": str(cached), "X-Mock-Reasoning-Tokens": str(reasoning),
            "X-Mock-Chunks": str(chunks)}


RESPONSE_EVENTS = (["response.created", "response.in_progress", "response.output_item.added",
                    "response.content_part.added"] + ["response.output_text.delta"] * 3 +
                   ["response.output_text.done", "response.content_part.done",
                    "response.output_item.done", "response.completed"])


def test_openai_sdk_responses_and_embeddings_exact_tokens(gateway):
    """client.responses.create (JSON and stream), client.responses.stream and
    client.embeddings.create of the real openai SDK through the demo: the SDK parses every
    answer, and the token counters are exactly the provider's usage."""
    import openai
    n = gateway
    client = openai.OpenAI(base_url=n.url("/v1"), api_key=key("sdk"), max_retries=0, timeout=30)

    r = client.responses.create(model="gpt-4o", input="hi", extra_headers=mock_usage(700, 40, 512, 16))
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == "tok " * 3
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (700, 40, 740)
    assert r.usage.input_tokens_details.cached_tokens == 512
    assert r.usage.output_tokens_details.reasoning_tokens == 16

    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True,
                                          extra_headers=mock_usage(300, 90, 0, 30)))
    assert [e.type for e in events] == RESPONSE_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok " * 3
    assert events[-1].response.usage.output_tokens == 90
    assert events[-1].response.output_text == "tok " * 3

    with client.responses.stream(model="gpt-4o-mini", input="hi",
                                 extra_headers=mock_usage(50, 20, 10, 0, chunks=2)) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["tok "] * 2 and final.usage.total_tokens == 70

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"],
                                   extra_headers={"X-Mock-Prompt-Tokens": "17"})
    assert [d.index for d in emb.data] == [0, 1, 2] and len(emb.data[0].embedding) == 8
    assert (emb.usage.prompt_tokens, emb.usage.total_tokens) == (17, 17)
    emb = client.embeddings.create(model="text-embedding-3-small", input="a", dimensions=4,
                                   encoding_format="float", extra_headers={"X-Mock-Prompt-Tokens": "5"})
    assert len(emb.data[0].embedding) == 4

    def check(m):
        gpt4o, mini, embed = (dict(model=x, namespace="sdk") for x in
                              ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small"))
        assert m.get1("model_tokens_input_total", **gpt4o) == 1000
        assert m.get1("model_tokens_output_total", **gpt4o) == 130
        assert m.get1("model_tokens_input_total", **mini) == 50
        assert m.get1("model_tokens_output_total", **mini) == 20
        assert m.get1("model_tokens_input_total", **embed) == 22
        assert m.get1("model_tokens_output_total", **embed) == 0
        want = {"input": 1072, "output": 150, "cached_input": 522, "reasoning": 46}
        for t, v in want.items():
            assert m.get1("namespace_tokens_total", namespace="sdk", token_type=t) == v, t
        # streams: time to first token; JSON: none
        assert m.get1("model_time_to_first_token_seconds_count", **gpt4o) == 1
        assert m.get1("model_time_to_first_token_seconds_count", **mini) == 1
        assert m.get1("model_time_to_first_token_seconds_count", **embed) == 0
        table = prices()
        assert m.get1("model_cost_usd_total", **gpt4o) == pytest.approx(
            cost(table["gpt-4o"], (1000, 130, 512, 46)), rel=1e-9)
        assert m.get1("model_cost_usd_total", **embed) == pytest.approx(
            cost(table["text-embedding-3-small"], (22, 0, 0, 0)), rel=1e-9)
        assert m.total("http_requests_total", endpoint="/v1/responses", namespace="sdk") == 3
        assert m.total("http_requests_total", endpoint="/v1/embeddings", namespace="sdk") == 2

    settled(n, check)


# ---- the cached model list --------------------------------------------------------------------

def test_models_list_is_cached_and_counted():
    """GET /v1/models through proxy_cache: the first request fills the cache (MISS), the next
    ones HIT, on either worker (proxy_cache_lock: a request that finds the entry being filled
    waits for it), and cache_misses_total / cache_hits_total are what the X-Cache headers said.
    A gateway of its own, so its cache starts empty."""
    with MockLLM() as mock:
        with Nginx(gateway_http(mock.port), workers=2, lua=True) as n:
            said = []
            for i in range(16):   # a new connection each: the requests spread over the workers
                h = auth("cache") if i % 2 else {"x-api-key": key("cache")}
                s, body, headers = n.get("/v1/models", h)
                assert s == 200 and json.loads(body)["object"] == "list", body
                said.append(headers["X-Cache"])
            # (an entry lives 10 s: a request that late would say EXPIRED, a miss)
            assert said[0] == "MISS" and "HIT" in said, said
            assert set(said[1:]) <= {"HIT", "EXPIRED"}, said
            s, _, headers = n.get("/v1/models", {"Authorization": "Bearer sk-nope"})
            assert s == 401 and "X-Cache" not in headers
            misses = sum(x in ("MISS", "EXPIRED") for x in said)

            def check(m):
                assert m.total("http_requests_total") == 17
                # (a request's cache event is recorded after its request series)
                assert m.get1("cache_misses_total", cache_type="proxy_cache") == misses
                assert m.get1("cache_hits_total", cache_type="proxy_cache") == said.count("HIT")
                assert m.total("http_requests_total", endpoint="/v1/models", namespace="cache") == 16

            settled(n, check)


# ---- the mock LLM -----------------------------------------------------------------------------

def test_mock_llm_answers_a_browser_and_speaks_the_openai_wire_formats(mock_llm):
    base = f"http://127.0.0.1:{mock_llm.port}"

    def call(path, method="GET", body=None, headers=None):
        req = urllib.request.Request(base + path, method=method, headers=headers or {},
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    # the URL scripts/run prints, and what a browser asks for next
    for path in ("/", "/favicon.ico", "/index.html"):
        s, h, b = call(path, headers={"Accept": "text/html"})
        assert s == 200 and h["Content-Type"].startswith("text/html"), (path, s)
        for api in (b"/v1/chat/completions", b"/v1/responses", b"/v1/embeddings", b"/v1/messages"):
            assert api in b
    s, h, b = call("/v1/models")
    assert s == 200 and json.loads(b)["object"] == "list"
    assert call("/v1/models", "HEAD")[0] == 200
    s, h, b = call("/v1/chat/completions")
    assert s == 405 and h["Allow"] == "POST"
    assert call("/v1/unknown", "POST", {})[0] == 404

    # Responses, JSON: the response object of the real API
    s, h, b = call("/v1/responses", "POST", {"model": "gpt-4o", "input": "hi"}, mock_usage(70, 30, 64, 12, 2))
    r = json.loads(b)
    assert s == 200 and r["object"] == "response" and r["id"].startswith("resp_")
    assert r["status"] == "completed" and r["model"] == "gpt-4o" and isinstance(r["created_at"], int)
    assert len(r["output"]) == 1
    msg = r["output"][0]
    assert msg["type"] == "message" and msg["id"].startswith("msg_") and msg["role"] == "assistant"
    assert msg["status"] == "completed"
    assert msg["content"] == [{"type": "output_text", "text": "tok tok ", "annotations": [], "logprobs": []}]
    assert r["usage"] == {"input_tokens": 70, "input_tokens_details": {"cached_tokens": 64},
                          "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 12},
                          "total_tokens": 100}
    s, h, b = call("/v1/responses", "POST", {"model": "m", "input": "hi"}, {"X-Mock-No-Usage": "1"})
    assert s == 200 and json.loads(b)["usage"] is None

    # Responses, stream: `event: TYPE` + `data: {"type": TYPE, "sequence_number": i, ...}`
    s, h, b = call("/v1/responses", "POST", {"model": "gpt-4o", "input": "hi", "stream": True},
                   mock_usage(70, 30, 64, 12, 3))
    assert s == 200 and h["Content-Type"] == "text/event-stream"
    blocks = b.decode().split("\n\n")
    assert blocks[-1] == ""
    events = []
    for blk in blocks[:-1]:
        ev, data = blk.split("\n")
        assert ev.startswith("event: ") and data.startswith("data: ")
        obj = json.loads(data[6:])
        assert obj["type"] == ev[7:]
        events.append(obj)
    assert [e["type"] for e in events] == RESPONSE_EVENTS
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None
    item_id = events[2]["item"]["id"]
    for e in events[3:9]:
        assert (e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0)
    assert [e["delta"] for e in events[4:7]] == ["tok "] * 3
    assert events[7]["text"] == "tok " * 3 and events[8]["part"]["text"] == "tok " * 3
    assert events[9]["item"]["status"] == "completed"
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"] == [events[9]["item"]]
    assert done["usage"]["input_tokens"] == 70 and done["usage"]["total_tokens"] == 100

    # Embeddings: float and base64 (the openai SDK's default), usage.prompt_tokens = total_tokens
    s, h, b = call("/v1/embeddings", "POST", {"model": "e", "input": ["x", "y"], "dimensions": 3},
                   {"X-Mock-Prompt-Tokens": "9"})
    e = json.loads(b)
    assert s == 200 and e["object"] == "list" and e["model"] == "e"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in e["data"]] == \
        [("embedding", 0, 3), ("embedding", 1, 3)]
    assert e["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    s, h, b = call("/v1/embeddings", "POST", {"model": "e", "input": "x", "encoding_format": "base64"})
    vec = struct.unpack("<8f", base64.b64decode(json.loads(b)["data"][0]["embedding"]))
    assert len(vec) == 8 and all(-1 <= v <= 1 for v in vec)


# ---- scripts/run ------------------------------------------------------------------------------

def test_scripts_run_side_by_side():
    """Two scripts/run on different ports: a run directory each (.run/demo-PORT: config, pid
    file, logs, cache), the mock next to each gateway, the zone notice printed once per start
    (no second copy from a separate `nginx -t`), the banner with API keys; stopping one leaves
    the other running."""
    runs = []

    def text(f):
        f.seek(0)
        return f.read().decode(errors="replace")

    def stop(r):
        if r["p"].poll() is None:
            r["p"].send_signal(signal.SIGTERM)
            try:
                r["p"].wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(r["p"].pid, signal.SIGKILL)
                r["p"].wait(5)
        r["out"].close()
        r["err"].close()
        if not r.get("foreign"):
            shutil.rmtree(r["dir"], ignore_errors=True)

    def ours(r):
        """Both listeners belong to this run (its own session): a port taken by another server
        since free_port() picked it answers scripts/run's readiness probe all the same, while
        our nginx or mock fails to bind it and exits."""
        try:
            with open(os.path.join(r["dir"], "nginx.pid")) as f:
                r["nginx"] = int(f.read())
            return os.getsid(r["nginx"]) == r["p"].pid and gm.owns_listener(r["nginx"], r["port"]) \
                and any(os.getsid(q) == r["p"].pid for q in gm.listener_pids(r["upstream"]))
        except (OSError, ValueError):
            return False

    def start():
        """A scripts/run on two free ports; other ports when one of them was taken meanwhile
        (tests run in parallel)."""
        for attempt in range(5):
            port, upstream = free_port(), free_port()
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            env = dict(os.environ, GM_PORT=str(port), GM_UPSTREAM_PORT=str(upstream),
                       GM_MODULE=gm.env.MODULE)
            env.pop("GM_CONF", None)
            p = subprocess.Popen([os.path.join(gm.ROOT, "scripts/run")], env=env, stdout=out,
                                 stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
            r = dict(p=p, port=port, upstream=upstream, out=out, err=err,
                     dir=os.path.join(gm.ROOT, ".run", f"demo-{port}"))
            wait_for(lambda: p.poll() is not None or "Ctrl-C to stop" in text(out),
                     lambda done: done, timeout=60, what="scripts/run banner")
            if p.poll() is None:
                wait_for(lambda: p.poll() is not None or ours(r), bool, timeout=30,
                         what="scripts/run's own listeners")
                if p.poll() is None:
                    return r
            said = text(out) + text(err)
            # (another run on this port: its directory is not ours to remove)
            r["foreign"] = "is already running" in said
            stop(r)
            if attempt == 4 or not (r["foreign"] or "ddress already in use" in said):
                raise AssertionError(f"scripts/run failed:\n{said}")

    try:
        for _ in range(2):
            runs.append(start())
        for r in runs:
            assert r["p"].poll() is None, text(r["out"]) + text(r["err"])
        for r in runs:
            with open(os.path.join(r["dir"], "nginx.conf")) as f:
                assert f"listen 127.0.0.1:{r['port']};" in f.read()
            with open(os.path.join(r["dir"], "nginx.pid")) as f:
                r["nginx"] = int(f.read())
            os.kill(r["nginx"], 0)
            req = urllib.request.Request(f"http://127.0.0.1:{r['port']}/v1/models",
                                         headers=auth("wechat"))
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200 and resp.headers["X-Cache"] in ("MISS", "HIT")
            with urllib.request.urlopen(f"http://127.0.0.1:{r['upstream']}/", timeout=10) as resp:
                assert resp.status == 200
            banner, errors = text(r["out"]), text(r["err"])
            assert errors.count('zone "gateway_metrics" initialised') == 1, errors
            assert "syntax is ok" not in errors and "test is successful" not in errors
            assert f"http://127.0.0.1:{r['upstream']}/" in banner and r["dir"] in banner
            for k in DEMO_KEYS.values():
                assert k in banner
            assert "Authorization: Bearer sk-demo-" in banner and "X-Namespace" not in banner
        assert runs[0]["nginx"] != runs[1]["nginx"]

        # stop the first (Ctrl-C in a terminal; SIGTERM here: a background job ignores SIGINT)
        runs[0]["p"].send_signal(signal.SIGTERM)
        runs[0]["p"].wait(20)
        wait_for(lambda: os.path.exists(f"/proc/{runs[0]['nginx']}"), lambda alive: not alive,
                 timeout=20, what="first nginx gone")
        second = runs[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{second['port']}/healthz", timeout=10) as resp:
            assert resp.status == 200
        with open(os.path.join(second["dir"], "nginx.pid")) as f:
            assert int(f.read()) == second["nginx"]
    finally:
        for r in runs:
            stop(r)
