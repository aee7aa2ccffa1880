"""The example AI gateway (nginx-conf/ai-gateway.conf + lua/gateway/) end to end: real nginx with
two workers, lua-nginx-module and the mock LLM upstream.

Token totals, cost, TTFT, the token budget, the accuracy gauge and the SSE/JSON usage parser
(fed at every possible chunk boundary)."""
import http.client
import json
import os
import random
import re
import time
from collections import Counter, defaultdict

import pytest

import gm
from gm import MockLLM, Nginx, free_port, histogram_consistent, wait_for

pytestmark = pytest.mark.skipif(not gm.HAVE_LUA, reason="needs Debian's lua-nginx-module")

CONF_PATH = os.path.join(gm.ROOT, "nginx-conf", "ai-gateway.conf")
# What gm.Nginx(lua=True) puts in the http block itself.
HARNESS_LUA_PATH = f'lua_package_path "{gm.ROOT}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";'


def gateway_http(upstream_port, extra="", keep_lua_path=False):
    """The gateway template with its placeholders substituted, ready for gm.Nginx: `@PORT@`
    becomes the harness's `{port}`. gm.Nginx(lua=True) adds the same lua_package_path line
    itself and nginx rejects a duplicate, so the template's line is checked to be identical
    and dropped (unless keep_lua_path, for a wrapper that adds none)."""
    with open(CONF_PATH) as f:
        text = f.read()
    assert "{port}" not in text and "{dir}" not in text, "the harness would substitute these"
    text = (text.replace("@PORT@", "{port}").replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@ROOT@", gm.ROOT))
    assert not re.search(r"@[A-Z_]+@", text), "unknown placeholder left"
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


def logged(n, total):
    """Waits until nginx has logged `total` requests to /v1/ (the log phase runs after the
    client has its response) and returns the metrics."""
    return wait_for(n.metrics, lambda m: m.total("http_requests_total", endpoint="/v1/") >= total,
                    what="requests logged")


@pytest.fixture(scope="module")
def gateway():
    with MockLLM("--chunk-delay-ms", "1") as mock:
        with Nginx(gateway_http(mock.port), workers=2, lua=True) as n:
            n.sent = 0  # requests sent to /v1/ so far, for logged()
            yield n
            assert not n.crashes(), n.crashes()
            assert "[error]" not in n.error_log() and "[alert]" not in n.error_log(), \
                n.error_log()[-3000:]


def test_template_as_a_whole_passes_nginx_t():
    """The template with its own lua_package_path (as scripts/run wraps it) is a valid config."""
    http = gateway_http(free_port(), keep_lua_path=True)
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
NAMESPACES = ["tok-a", "tok-b", ""]


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
    if ns:
        headers["X-Namespace"] = ns
    if style == "openai-json-nousage":
        headers["X-Mock-No-Usage"] = "1"
    headers.update(extra_headers or {})
    return ("POST", path, headers, json.dumps(body).encode())


def expected_usage(style, p, c, cached, reasoning):
    """(input, output, cached_input, reasoning) the gateway must report, or None.

    OpenAI's prompt_tokens include the cached ones; Anthropic's input_tokens do not, so the
    gateway reports input = input_tokens + cache_read_input_tokens for Anthropic. Streams
    without stream_options.include_usage carry no usage: nothing is reported (never estimated)."""
    if style in ("openai-sse-nousage", "openai-json-nousage"):
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
    results = fetch_all(n.port, reqs)
    n.sent += len(reqs)
    m = logged(n, n.sent)
    return plan, results, m


def test_responses_pass_through_unchanged(workload):
    plan, results, _ = workload
    for (style, model, ns, p, c, cached, reasoning, chunks), (status, headers, body) in zip(plan, results):
        assert status == 200, (style, body[:300])
        text = body.decode()
        if "sse" in style:
            assert headers["Content-Type"].startswith("text/event-stream")
            assert text.count('"tok "') == chunks, text
            if style.startswith("openai"):
                assert text.rstrip().endswith("data: [DONE]")
                assert (f'"prompt_tokens":{p},' in text) == (style == "openai-sse")
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
    plan, _, m = workload
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
    # no other token series than the expected ones
    got = {(dict(k)["model"], dict(k)["namespace"]) for k in m.select("model_tokens_input_total")}
    assert got == set(per_model), got ^ set(per_model)
    for ns, u in per_ns.items():
        for i, t in enumerate(["input", "output", "cached_input", "reasoning"]):
            assert m.get1("namespace_tokens_total", namespace=ns, token_type=t) == u[i], (ns, t)
    for (model, ns), k in requests.items():
        assert m.get1("model_requests_total", model=model, namespace=ns, status="success") == k
    histogram_consistent(m, "model_request_duration_seconds")
    histogram_consistent(m, "model_throughput_tokens_per_second")


def test_cost_matches_price_table(workload):
    plan, _, m = workload
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
    assert m.get1("gateway_metrics_unpriced_model_requests_total", model="mystery-model") == unpriced
    assert set(m.select("gateway_metrics_unpriced_model_requests_total")) == \
        {frozenset({("model", "mystery-model")})}


def test_ttft_only_for_streams_with_content(workload):
    plan, _, m = workload
    want = Counter()
    for style, model, ns, p, c, cached, reasoning, chunks in plan:
        if "sse" in style and chunks > 0:
            want[(model, ns)] += 1
    for model in MODELS:
        for ns in NAMESPACES:
            got = m.get1("model_time_to_first_token_seconds_count", model=model, namespace=ns)
            assert got == want[(model, ns)], (model, ns)
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
    results = fetch_all(n.port, reqs, threads=10)
    assert all(r[0] == 200 for r in results)
    n.sent += len(reqs)
    m = logged(n, n.sent)
    for model, json_requests in (("gpt-4o-mini", 3), ("claude-sonnet", 1)):
        lab = dict(model=model, namespace="ttft")
        count = m.get1("model_time_to_first_token_seconds_count", **lab)
        assert count == 3, model  # the JSON requests add nothing
        assert m.get1("model_requests_total", status="success", **lab) == 3 + json_requests
        # every first token came after the 200 ms the upstream waited
        assert m.get1("model_time_to_first_token_seconds_bucket", le="0.2", **lab) == 0
        total = m.get1("model_time_to_first_token_seconds_sum", **lab)
        assert 0.2 * count <= total <= 2.0 * count, total
        # and before the request ended
        assert total <= m.get1("model_request_duration_seconds_sum", **lab)


def test_requests_without_model_or_usage_record_no_model_series(gateway):
    n = gateway
    h = {"X-Namespace": "quiet"}
    assert n.get("/v1/models", h)[0] == 200
    assert n.get("/healthz", h)[0] == 200
    # not JSON: no model; the mock answers 400 without usage
    assert n.get("/v1/chat/completions", h, "POST", b"hello")[0] == 400
    # an upstream error with a model: a model series, but no tokens
    s, _, _ = post(n, "/v1/chat/completions", {"model": "gpt-4o"},
                   {"X-Namespace": "quiet-err", "X-Mock-Status": "503"})
    assert s == 503
    n.sent += 3
    m = logged(n, n.sent)
    assert m.total("http_requests_total", namespace="quiet") == 2
    for (name, labels), v in m.items():
        d = dict(labels)
        if name.startswith(("model_", "namespace_tokens")) and d.get("namespace") == "quiet":
            pytest.fail(f"unexpected series {name}{d} = {v}")
    assert m.get1("model_requests_total", model="gpt-4o", namespace="quiet-err", status="error") == 1
    assert not m.select("model_tokens_input_total", namespace="quiet-err")
    assert not m.select("namespace_tokens_total", namespace="quiet-err")
    assert not m.select("model_time_to_first_token_seconds_count", namespace="quiet-err")


# ---- token budget ----------------------------------------------------------------------------

def test_token_budget_near_limit_then_rejects(gateway):
    """free-tier: 2000 tokens per minute, "near" from 1600 on (see the map in the template)."""
    n = gateway
    if time.time() % 60 > 50:  # keep the sequence inside one budget window
        time.sleep(61 - time.time() % 60)
    ns = {"X-Namespace": "free-tier"}

    def send(style, p, c, cached=0):
        method, path, headers, body = make_request(style, "claude-sonnet", "free-tier", p, c,
                                                   cached, 0, 2)
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        out = (r.status, dict(r.headers), r.read())
        conn.close()
        n.sent += 1
        logged(n, n.sent)  # the budget is charged in the log phase
        return out

    s, h, _ = send("anthropic-json", 900, 100)  # 1000 used
    assert s == 200 and h["X-Gateway-Token-Budget-Remaining"] == "2000"
    s, h, _ = send("anthropic-sse", 500, 150, cached=50)  # 1700 used
    assert s == 200 and h["X-Gateway-Token-Budget-Remaining"] == "1000"
    m = n.metrics()
    assert m.get1("rate_limit_hits_total", namespace="free-tier", rule_type="token_limit") == 0
    s, h, _ = send("openai-sse", 350, 50)  # near the limit: admitted, a hit; 2100 used
    assert s == 200 and h["X-Gateway-Token-Budget-Remaining"] == "300"
    m = n.metrics()
    assert m.get1("rate_limit_hits_total", namespace="free-tier", rule_type="token_limit") == 1
    assert m.get1("rate_limit_violations_total", namespace="free-tier", rule_type="token_limit") == 0
    s, h, body = send("openai-json", 10, 10)
    assert s == 429, body
    assert json.loads(body)["error"]["code"] == "token_budget_exceeded"
    assert 1 <= int(h["Retry-After"]) <= 60
    m = n.metrics()
    assert m.get1("rate_limit_hits_total", namespace="free-tier", rule_type="token_limit") == 2
    assert m.get1("rate_limit_violations_total", namespace="free-tier", rule_type="token_limit") == 1
    # the rejected request never reached the provider: no tokens for it
    assert m.get1("model_tokens_input_total", model="claude-sonnet", namespace="free-tier") == 1800
    assert m.get1("model_requests_total", model="claude-sonnet", namespace="free-tier",
                  status="error") == 1
    assert m.get1("errors_total", error_type="rate_limited", namespace="free-tier", upstream="") == 1


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


# ---- the usage parser, chunked every possible way ---------------------------------------------

PARSER_SERVER = r"""
server {
    listen 127.0.0.1:%d;
    gateway_metrics off;
    client_body_buffer_size 1m;
    location = /stream {
        content_by_lua_block {
            local cjson = require "cjson.safe"
            local usage = require "gateway.usage"
            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            local function canon(u)
                if not u then return "nil" end
                return string.format("%%d,%%d,%%d,%%d", u.input, u.output, u.cached, u.reasoning)
            end
            local function run(chunks)
                local s = usage.new_stream()
                local firsts = 0
                for _, c in ipairs(chunks) do
                    if s:feed(c) then firsts = firsts + 1 end
                end
                if s:finish() then firsts = firsts + 1 end
                return canon(s:result()) .. "|" .. firsts
            end
            local seen, n = {}, #body
            local function add(r) seen[r] = (seen[r] or 0) + 1 end
            add(run({ body }))
            for i = 1, n - 1 do  -- every split in two
                add(run({ body:sub(1, i), body:sub(i + 1) }))
            end
            local bytes = {}  -- one byte at a time
            for i = 1, n do bytes[i] = body:sub(i, i) end
            add(run(bytes))
            math.randomseed(n)
            for _ = 1, 200 do  -- random chunkings
                local chunks, pos = {}, 1
                while pos <= n do
                    local len = math.random(1, 40)
                    chunks[#chunks + 1] = body:sub(pos, pos + len - 1)
                    pos = pos + len
                end
                add(run(chunks))
            end
            local keys = {}
            for k in pairs(seen) do keys[#keys + 1] = k end
            ngx.say(table.concat(keys, "\n"))
        }
    }
    location = /json {
        content_by_lua_block {
            local usage = require "gateway.usage"
            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            local function canon(u)
                if not u then return "nil" end
                return string.format("%%d,%%d,%%d,%%d", u.input, u.output, u.cached, u.reasoning)
            end
            ngx.say(canon(usage.from_json(body)), " ", canon(usage.from_tail(body)))
        }
    }
}
"""


def sse(events, eol="\n"):
    out = []
    for ev in events:
        if isinstance(ev, str):
            out.append(ev + eol)  # raw line(s)
            continue
        name, data = ev
        if name:
            out.append(f"event: {name}{eol}")
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append(f"data: {payload}{eol}{eol}")
    return "".join(out)


def openai_chunk(content=None, usage=None, choices=True, with_usage_key=True):
    c = {"id": "x", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {} if content is None else {"content": content},
                      "finish_reason": None}] if choices else []}
    if with_usage_key:
        c["usage"] = usage
    return c


OPENAI_USAGE = {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
                "prompt_tokens_details": {"cached_tokens": 1000},
                "completion_tokens_details": {"reasoning_tokens": 20}}

PARSER_CASES = [
    # OpenAI with include_usage, CRLF line ends, comments, "usage": null on content chunks
    ("openai-crlf", sse([": keep-alive", ("", openai_chunk("")), ("", openai_chunk("Hel")),
                         ("", openai_chunk("lo \u00e9\u4e2d")), ("", openai_chunk(None)),
                         ("", openai_chunk(None, OPENAI_USAGE, choices=False)), ("", "[DONE]")],
                        eol="\r\n"),
     "1234,56,1000,20|1"),
    # role-only and empty deltas are not content; usage still counted
    ("openai-no-content", sse([("", openai_chunk("")), ("", openai_chunk(None)),
                               ("", openai_chunk(None, OPENAI_USAGE, choices=False)),
                               ("", "[DONE]")]),
     "1234,56,1000,20|0"),
    # no include_usage: nothing reported, first token still seen
    ("openai-no-usage", sse([("", openai_chunk("a", with_usage_key=False)),
                             ("", openai_chunk("b", with_usage_key=False)), ("", "[DONE]")]),
     "nil|1"),
    # tool calls are content
    ("openai-tools", sse([("", {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "{"}}]}}], "usage": None}),
        ("", openai_chunk(None, {"prompt_tokens": 5, "completion_tokens": 7}, choices=False))]),
     "5,7,0,0|1"),
    # Anthropic: input from message_start (+ cache), output from the LAST message_delta; ping
    ("anthropic", sse([
        ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {
            "input_tokens": 300, "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 25, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi \"usage\": {"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None},
                           "usage": {"output_tokens": 10}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 42}}),
        ("message_stop", {"type": "message_stop"})]),
     "4325,42,4000,0|1"),
    # last event not terminated by a blank line (connection closed after it)
    ("unterminated", sse([("", openai_chunk("x"))]) +
     "data: " + json.dumps(openai_chunk(None, {"prompt_tokens": 9, "completion_tokens": 8},
                                        choices=False)),
     "9,8,0,0|1"),
    # one JSON document over several data: lines (joined with newlines, per the SSE spec)
    ("multiline-data", 'data: {"choices":[{"delta":{"content":"x"}}],\ndata: "usage":null}\n\n'
                       'data: {"choices":[],\ndata: "usage":{"prompt_tokens":3,\n'
                       'data: "completion_tokens":4}}\n\n',
     "3,4,0,0|1"),
    # OpenAI Responses API stream
    ("responses", sse([
        ("response.created", {"type": "response.created", "response": {"usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        ("response.completed", {"type": "response.completed", "response": {"usage": {
            "input_tokens": 70, "input_tokens_details": {"cached_tokens": 64},
            "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 12},
            "total_tokens": 100}}})]),
     "70,30,64,12|1"),
    # malformed JSON and bogus counts are ignored, never estimated
    ("garbage", "data: {not json\n\ndata: [1,2]\n\ndata: " +
     json.dumps({"choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": 2.5}}) + "\n\n",
     "nil|0"),
]


@pytest.fixture(scope="module")
def parser_port():
    # a second nginx on the same template with a test-only server for the pure parser
    port = free_port()
    with MockLLM() as mock:
        with Nginx(gateway_http(mock.port, PARSER_SERVER % port), workers=1, lua=True) as n:
            gm.wait_port(port)
            yield port
            assert not n.crashes()


@pytest.mark.parametrize("name,body,want", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_stream_parser_any_chunking(parser_port, name, body, want):
    conn = http.client.HTTPConnection("127.0.0.1", parser_port, timeout=30)
    conn.request("POST", "/stream", body=body.encode())
    r = conn.getresponse()
    out = r.read().decode()
    assert r.status == 200, out
    assert out.split() == [want], f"{name}: results over all chunkings: {out.split()}"


def test_json_parser_and_tail_fallback(parser_port):
    def ask(body):
        conn = http.client.HTTPConnection("127.0.0.1", parser_port, timeout=30)
        conn.request("POST", "/json", body=body.encode())
        r = conn.getresponse()
        return r.read().decode().split()

    anthropic = {"type": "message", "content": [{"type": "text", "text": 'say "usage": {"input_tokens": 1}'}],
                 "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 5,
                           "cache_creation_input_tokens": 1}}
    assert ask(json.dumps(anthropic)) == ["16,20,5,0", "16,20,5,0"]
    openai = {"choices": [{"message": {"content": "x" * 200000}}], "usage": OPENAI_USAGE}
    assert ask(json.dumps(openai)) == ["1234,56,1000,20", "1234,56,1000,20"]
    # the tail of a huge body (its head cut off) still yields the usage
    tail = json.dumps(openai)[-5000:]
    assert ask(tail) == ["nil", "1234,56,1000,20"]
    assert ask(json.dumps({"object": "list", "data": []})) == ["nil", "nil"]
    assert ask(json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 2}})[:-3]) == ["nil", "nil"]


def test_aborted_stream_still_reports_the_input_tokens(gateway):
    """A client that goes away mid-stream: the body filter never sees the end, so the gateway
    reports what the provider had said (Anthropic's message_start: the input tokens) from
    log_by_lua. The provider bills those tokens, so they must count."""
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
    n.sent += 1
    m = wait_for(n.metrics, lambda m: m.total("http_requests_total", namespace="abort") == 1,
                 timeout=15, what="aborted request logged")
    assert m.get1("model_time_to_first_token_seconds_count", model="claude-sonnet", namespace="abort") == 1
    assert m.get1("model_tokens_input_total", model="claude-sonnet", namespace="abort") == 1000, \
        "input tokens of an aborted stream were not recorded (add_tokens from log_by_lua)"
