"""The example gateway without Lua (nginx-conf/ai-gateway-native.conf) end to end: the nginx under
test with only the gateway_metrics module loaded, two workers, the mock LLM upstream. Runs on
every build target (no lua-nginx-module needed).

The real SDKs (openai: chat, chat stream, responses, responses stream; anthropic:
messages JSON and stream) and Gemini over plain HTTP, with every counter exact (tokens by type,
requests, model, time to first token); then every API x usage placement x body split the mock
can replay, and streams cut short; API keys, the endpoint label, /metrics for the scrapers
only, and the config as scripts/render-conf writes it."""
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

import gmharness as gm
import mock_llm
from gmharness import MockLLM, Nginx, bound_get, fixtures, free_port

CONF_PATH = os.path.join(gm.ROOT, "nginx-conf", "ai-gateway-native.conf")
KEY_MAP = "map $gateway_api_key $gateway_namespace {\n"
TOKEN_TYPES = ["input", "output", "cached_input", "cache_write", "reasoning"]


@pytest.fixture(scope="module", autouse=True)
def private_module_copy():
    """nginx loads a private copy of the module: a concurrent scripts/build cannot crash it."""
    saved = gm.env.MODULE
    gm.env.MODULE = fixtures.private_module_copy()
    yield
    gm.env.MODULE = saved


def key(ns):
    return f"sk-test-{ns}"


def native_http(upstream_port, namespaces):
    """The template with its placeholders substituted for gm.Nginx (`@PORT@` -> `{port}`,
    `@PREFIX@` -> `{dir}`), and a key sk-test-NS for each of `namespaces` added to its key map."""
    with open(CONF_PATH) as f:
        text = f.read()
    assert "{port}" not in text and "{dir}" not in text, "the harness would substitute these"
    text = (text.replace("@PORT@", "{port}").replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@PREFIX@", "{dir}"))
    assert not re.search(r"@[A-Z_]+@", text), "unknown placeholder left"
    assert text.count(KEY_MAP) == 1
    return text.replace(KEY_MAP, KEY_MAP + "".join(f"    {key(ns)} {ns};\n" for ns in namespaces))


def prices():
    """{model: {input, output, cached_input, cache_write}} from the template's price table."""
    out = {}
    with open(CONF_PATH) as f:
        for line in f:
            m = re.match(r"\s*gateway_metrics_model_price\s+(\S+)\s+(.*);", line)
            if m:
                kv = {k: float(v) for k, v in (a.split("=") for a in m.group(2).split())}
                kv.setdefault("cached_input", kv["input"])
                kv.setdefault("cache_write", kv["input"])
                out[m.group(1)] = kv
    return out


def cost(model, t):
    p = prices()[model]
    fresh = t["input"] - t["cached_input"] - t["cache_write"]
    return (fresh * p["input"] + t["cached_input"] * p["cached_input"]
            + t["cache_write"] * p["cache_write"] + t["output"] * p["output"]) / 1e6


# Every namespace the tests use (the key map is fixed when nginx starts).
SDK_NAMESPACES = ["sdk-chat", "sdk-chat-stream", "sdk-chat-nousage", "sdk-responses",
                  "sdk-responses-stream", "sdk-anthropic", "gemini", "keys", "ep"]
MATRIX = []  # (namespace, api, usage mode, split), filled below
CUTS = []    # (namespace, api, events)


@pytest.fixture(scope="module")
def native():
    with MockLLM("--chunk-delay-ms", "1") as mock:
        names = SDK_NAMESPACES + [c[0] for c in MATRIX] + [c[0] for c in CUTS]
        with Nginx(native_http(mock.port, names), workers=2, lua=False) as n:
            yield n
            assert not n.crashes(), n.crashes()
            log = "\n".join(l for l in n.error_log().splitlines()
                            if "access forbidden by rule" not in l
                            and "upstream prematurely closed" not in l)
            assert "[alert]" not in log and "[emerg]" not in log, log[-3000:]


def tokens_of(m, ns):
    return {dict(k)["token_type"]: v for k, v in m.select("namespace_tokens_total", namespace=ns).items()}


def shown(t):
    """The namespace_tokens_total series a page shows for tokens t: input and output always, the
    parts once some were reported."""
    return {k: float(v) for k, v in t.items() if k in ("input", "output") or v > 0}


def views(m, ns, model):
    return {
        "tokens": tokens_of(m, ns),
        "model_in": m.get1("model_tokens_input_total", model=model, namespace=ns),
        "model_out": m.get1("model_tokens_output_total", model=model, namespace=ns),
        "requests": {(dict(k)["model"], dict(k)["status"]): v
                     for k, v in m.select("model_requests_total", namespace=ns).items()},
        "ttft": m.get1("model_time_to_first_token_seconds_count", model=model, namespace=ns),
        "missing": {(dict(k)["model"], dict(k)["reason"]): v
                    for k, v in m.select("model_usage_missing_total", namespace=ns).items()},
    }


def want_views(model, t, requests=1, ttft=0, missing=None, status="success"):
    t = t or {}
    return {"tokens": shown(t) if t else {}, "model_in": float(t.get("input", 0)),
            "model_out": float(t.get("output", 0)),
            "requests": {(model, status): float(requests)}, "ttft": float(ttft),
            "missing": missing or {}}


def expect(n, cases, timeout=30):
    """cases: [(ns, model, want)]: waits until every namespace shows what is wanted, then
    asserts it (the log phase writes a request's families one after the other)."""
    def ok(m):
        return all(views(m, ns, model) == want for ns, model, want in cases)

    gm.settle(n, ok, timeout=timeout)
    # A page is read family after family, not at one instant: one that shows a request's model
    # figures may have read its http_* figures (written before them, earlier on the page)
    # before its log phase ran. A page taken now has every family of those requests.
    m = n.metrics()
    wrong = {ns: (views(m, ns, model), want) for ns, model, want in cases
             if views(m, ns, model) != want}
    assert not wrong, "\n".join(f"{ns}:\n  got  {g}\n  want {w}" for ns, (g, w) in wrong.items())
    return m


def mock_headers(p, c, cached=0, reasoning=0, cache_write=0, chunks=3, **extra):
    h = {"X-Mock-Prompt-Tokens": str(p), "X-Mock-Completion-Tokens": str(c),
         "X-Mock-Cached-Tokens": str(cached), "X-Mock-Reasoning-Tokens": str(reasoning),
         "X-Mock-Cache-Write-Tokens": str(cache_write), "X-Mock-Chunks": str(chunks)}
    h.update({f"X-Mock-{k.replace('_', '-').title()}": str(v) for k, v in extra.items()})
    return h


# ---- the config -------------------------------------------------------------------------------

def test_the_native_example_uses_no_lua():
    with open(CONF_PATH) as f:
        text = f.read()
    code = "\n".join(l.split("#", 1)[0] for l in text.splitlines())
    assert not re.search(r"\blua_|_by_lua|load_module", code), "the native example needs no Lua"
    assert "gateway_metrics_usage auto;" in code


def test_render_conf_loads_lua_only_for_the_lua_example():
    """scripts/render-conf wraps the template as scripts/run does: no lua-nginx-module for the
    native example (it runs on any nginx), which then passes `nginx -t` on the nginx under test."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "logs"))
        os.makedirs(os.path.join(d, "tmp"))
        out = subprocess.run([os.path.join(gm.ROOT, "scripts/render-conf"), CONF_PATH, d,
                              gm.env.MODULE, str(free_port()), str(free_port())],
                             capture_output=True, text=True, check=True).stdout
        assert "lua_module" not in out and f"load_module {gm.env.MODULE};" in out
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(out)
        r = subprocess.run([gm.NGINX, "-p", d, "-c", conf, "-t"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        lua = subprocess.run([os.path.join(gm.ROOT, "scripts/render-conf"),
                              os.path.join(gm.ROOT, "nginx-conf/ai-gateway.conf"), d,
                              gm.env.MODULE, "1", "2"], capture_output=True, text=True,
                             check=True).stdout
        assert lua.count("load_module /usr/lib/nginx/modules/") == 2


# ---- the real SDKs and Gemini: every counter exact -------------------------------------------

def test_openai_sdk_chat_and_responses_exact(native):
    import openai
    n = native

    def client(ns):
        return openai.OpenAI(base_url=n.url("/v1"), api_key=key(ns), max_retries=0, timeout=30)

    msgs = [{"role": "user", "content": "hello there"}]
    r = client("sdk-chat").chat.completions.create(
        model="gpt-4o", messages=msgs, extra_headers=mock_headers(700, 40, cached=512, reasoning=16))
    assert r.choices[0].message.content == "tok " * 3
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (700, 40)

    chunks = list(client("sdk-chat-stream").chat.completions.create(
        model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True},
        extra_headers=mock_headers(300, 90, cached=100, reasoning=30)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 3
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 90

    # without include_usage the stream carries no usage (no Lua here to add it): counted as
    # missing, never estimated; the request, model and first token are still recorded
    chunks = list(client("sdk-chat-nousage").chat.completions.create(
        model="gpt-4o-mini", messages=msgs, stream=True, extra_headers=mock_headers(300, 90)))
    assert all(c.usage is None for c in chunks)

    r = client("sdk-responses").responses.create(
        model="gpt-4o", input="hi", extra_headers=mock_headers(70, 30, cached=64, reasoning=12))
    assert r.output_text == "tok " * 3 and r.usage.total_tokens == 100
    events = list(client("sdk-responses-stream").responses.create(
        model="gpt-4o", input="hi", stream=True, extra_headers=mock_headers(300, 90, reasoning=30)))
    assert events[-1].type == "response.completed"
    with client("sdk-responses-stream").responses.stream(
            model="gpt-4o", input="hi", extra_headers=mock_headers(50, 20, 10, 0, chunks=2)) as s:
        assert [e.delta for e in s if e.type == "response.output_text.delta"] == ["tok "] * 2
        assert s.get_final_response().usage.total_tokens == 70

    truth = mock_llm.usage_truth
    both = {k: a + b for (k, a), b in zip(truth("responses", 300, 90, 0, 30).items(),
                                          truth("responses", 50, 20, 10, 0).values())}
    m = expect(n, [
        ("sdk-chat", "gpt-4o", want_views("gpt-4o", truth("openai", 700, 40, 512, 16))),
        ("sdk-chat-stream", "gpt-4o-mini",
         want_views("gpt-4o-mini", truth("openai", 300, 90, 100, 30), ttft=1)),
        ("sdk-chat-nousage", "gpt-4o-mini",
         want_views("gpt-4o-mini", None, ttft=1, missing={("gpt-4o-mini", "absent"): 1.0})),
        ("sdk-responses", "gpt-4o", want_views("gpt-4o", truth("responses", 70, 30, 64, 12))),
        ("sdk-responses-stream", "gpt-4o", want_views("gpt-4o", both, requests=2, ttft=2)),
    ])
    assert m.get1("model_cost_usd_total", model="gpt-4o", namespace="sdk-chat") == pytest.approx(
        cost("gpt-4o", truth("openai", 700, 40, 512, 16)), rel=1e-9)
    assert m.total("http_requests_total", namespace="sdk-responses-stream",
                   endpoint="/v1/responses") == 2


def test_anthropic_sdk_messages_exact(native):
    import anthropic  # tests/requirements.txt
    n = native
    client = anthropic.Anthropic(base_url=n.url(""), api_key=key("sdk-anthropic"), max_retries=0,
                                 timeout=30)
    msg = client.messages.create(model="claude-sonnet", max_tokens=64,
                                 messages=[{"role": "user", "content": "hi"}],
                                 extra_headers=mock_headers(500, 40, cached=2000, cache_write=300))
    assert msg.content[0].text == "tok " * 3 and msg.usage.cache_read_input_tokens == 2000
    with client.messages.stream(model="claude-sonnet", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}],
                                extra_headers=mock_headers(100, 20, chunks=2)) as s:
        assert "".join(s.text_stream) == "tok " * 2
        assert s.get_final_message().usage.output_tokens == 20
    a = mock_llm.usage_truth("anthropic", 500, 40, 2000, 0, 300)
    b = mock_llm.usage_truth("anthropic", 100, 20)
    total = {k: a[k] + b[k] for k in a}
    m = expect(n, [("sdk-anthropic", "claude-sonnet",
                    want_views("claude-sonnet", total, requests=2, ttft=1))])
    assert m.get1("model_cost_usd_total", model="claude-sonnet", namespace="sdk-anthropic") == \
        pytest.approx(cost("claude-sonnet", a) + cost("claude-sonnet", b), rel=1e-9)


def gemini_request(n, ns, model, method, body, headers, sse=False):
    path = f"/v1beta/models/{model}:{method}" + ("?alt=sse" if sse else "")
    h = {"x-goog-api-key": key(ns), "Content-Type": "application/json", **headers}
    return n.get(path, h, "POST", json.dumps(body).encode())


def test_gemini_over_http_exact(native):
    n = native
    body = {"contents": [{"role": "user", "parts": [{"text": "say something nice"}]}]}
    model = "gemini-2.5-flash"
    s, b, _ = gemini_request(n, "gemini", model, "generateContent", body,
                             mock_headers(8, 65, reasoning=48))
    assert s == 200 and json.loads(b)["usageMetadata"]["thoughtsTokenCount"] == 48
    s, b, h = gemini_request(n, "gemini", model, "streamGenerateContent", body,
                             mock_headers(9, 132, cached=4, reasoning=120), sse=True)
    assert s == 200 and h["Content-Type"] == "text/event-stream"
    events = [json.loads(l[6:]) for l in b.decode().split("\r\n") if l.startswith("data: ")]
    assert len(events) == 3 and events[-1]["usageMetadata"]["candidatesTokenCount"] == 12
    # without alt=sse: one JSON array, sent piece by piece; the prompt from the request's words
    s, b, _ = gemini_request(n, "gemini", model, "streamGenerateContent", body,
                             {"X-Mock-Chunks": "2"})
    arr = json.loads(b)
    assert s == 200 and len(arr) == 2 and arr[-1]["usageMetadata"]["promptTokenCount"] == 3
    t = [mock_llm.usage_truth("gemini", 8, 65, 0, 48),
         mock_llm.usage_truth("gemini", 9, 132, 4, 120),
         mock_llm.usage_truth("gemini", mock_llm.prompt_tokens_of(body), 2)]
    total = {k: sum(x[k] for x in t) for k in t[0]}
    # (time to first token: of the SSE stream; the JSON array is read as a JSON body)
    m = expect(n, [("gemini", model, want_views(model, total, requests=3, ttft=1))])
    assert m.get1("model_cost_usd_total", model=model, namespace="gemini") == pytest.approx(
        sum(cost(model, x) for x in t), rel=1e-9)
    eps = Counter()
    for k, v in m.select("http_requests_total", namespace="gemini").items():
        eps[dict(k)["endpoint"]] += v
    assert eps == {"/v1beta/models/*:generateContent": 1, "/v1beta/models/*:streamGenerateContent": 2}


# ---- every API x usage placement x split ------------------------------------------------------

# (api, path, body, mock usage modes that carry usage for it, the others: "absent")
APIS = {
    "chat-json": ("openai", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}),
    "chat-stream": ("openai", "/v1/chat/completions",
                    {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
                     "messages": []}),
    "responses-json": ("responses", "/v1/responses", {"model": "gpt-4o", "input": "hi"}),
    "responses-stream": ("responses", "/v1/responses", {"model": "gpt-4o", "input": "hi",
                                                        "stream": True}),
    "anthropic-json": ("anthropic", "/v1/messages", {"model": "claude-sonnet", "messages": []}),
    "anthropic-stream": ("anthropic", "/v1/messages", {"model": "claude-sonnet", "stream": True,
                                                       "messages": []}),
    "gemini-json": ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []}),
    "gemini-sse": ("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                   {"contents": []}),
    "gemini-array": ("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                     {"contents": []}),
}
MODES = ["default", "last", "every", "beside-choices", "none"]
SPLITS = ["whole", "random", "bytes"]
for _api in APIS:
    for _mode in MODES:
        for _split in SPLITS:
            if _split == "bytes" and _mode not in ("default", "every"):
                continue  # (byte by byte is slow: the placements that differ most)
            MATRIX.append((f"mx-{_api}-{_mode}-{_split}", _api, _mode, _split))
# streams cut short: (api, events sent before the cut)
for _api, _events in [("anthropic-stream", 1), ("anthropic-stream", 4), ("chat-stream", 3),
                      ("gemini-sse", 1), ("responses-stream", 5)]:
    CUTS.append((f"cut-{_api}-{_events}", _api, _events))


def raw_post(port, path, ns, body, headers):
    api = APIS_BY_PATH(path)
    auth = {"gemini": "x-goog-api-key", "anthropic": "x-api-key"}.get(api)
    h = {auth: key(ns)} if auth else {"Authorization": f"Bearer {key(ns)}"}
    h.update(headers)
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
    req = (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(data)}\r\nConnection: close\r\n{head}\r\n").encode() + data
    return gm.raw_request(port, req)


def APIS_BY_PATH(path):
    if "/v1beta/" in path:
        return "gemini"
    return "anthropic" if path.endswith("/messages") else "openai"


def model_of(body, path):
    return body.get("model") or re.search(r"models/([^:]+):", path).group(1)


def test_every_api_usage_placement_and_split(native):
    """The mock's replays of where providers put usage (X-Mock-Usage) and how the body arrives
    (X-Mock-Split: whole, random pieces, byte by byte), through the native example: the counts
    are the truth exactly, or missing ("absent") when the response carries none."""
    n = native
    p, c, cached, reasoning, cw = 1200, 300, 1000, 100, 50
    jobs = []
    for ns, api, mode, split in MATRIX:
        fmt, path, body = APIS[api]
        h = mock_headers(p, c, cached, reasoning, cw, chunks=4, split=split, seed=len(ns))
        if mode != "default":
            h["X-Mock-Usage"] = mode
        jobs.append((ns, api, mode, path, body, h))
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda j: raw_post(n.port, j[3], j[0], j[4], j[5]), jobs))
    assert [r[0] for r in results] == [200] * len(jobs)
    cases = []
    for (ns, api, mode, path, body, h) in jobs:
        fmt = APIS[api][0]
        model = model_of(body, path)
        streamed = "json" not in api and api != "gemini-array"  # (an array is a JSON body)
        if mode == "none":
            want = want_views(model, None, ttft=streamed, missing={(model, "absent"): 1.0})
        else:
            want = want_views(model, mock_llm.usage_truth(fmt, p, c, cached, reasoning, cw),
                              ttft=streamed)
        cases.append((ns, model, want))
    expect(n, cases, timeout=60)


def test_streams_cut_short(native):
    """X-Mock-Cut: the upstream ends the connection mid-stream. The request is an error; what
    the provider had reported until then counts (Anthropic's message_start: the input side;
    Gemini's running totals), and a stream cut before any usage is `aborted`."""
    n = native
    p, c, cached, cw = 400, 80, 100, 20
    jobs = []
    for ns, api, events in CUTS:
        fmt, path, body = APIS[api]
        jobs.append((ns, api, events, path, body,
                     mock_headers(p, c, cached, 0, cw, chunks=4, cut=f"after-{events}")))
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda j: raw_post(n.port, j[3], j[0], j[4], j[5]), jobs))
    anth_input = mock_llm.usage_truth("anthropic", p, c, cached, 0, cw)
    cases = []
    for ns, api, events, path, body, _ in jobs:
        model = model_of(body, path)
        if api == "anthropic-stream":
            # message_start's input side; its output_tokens (1) is provisional, not counted
            t = dict(anth_input, output=0)
            ttft = 1 if events >= 4 else 0  # events: start, block start, ping, first delta
            want = want_views(model, t, ttft=ttft, status="error")
        elif api == "gemini-sse":
            # the first chunk's running totals: prompt, a quarter of the candidates
            t = {"input": p, "output": c // 4, "cached_input": cached, "cache_write": 0,
                 "reasoning": 0}
            want = want_views(model, t, ttft=1, status="error")
        else:
            want = want_views(model, None, ttft=1, status="error",
                              missing={(model, "aborted"): 1.0})
        cases.append((ns, model, want))
    expect(n, cases)


# ---- keys, labels, scrapers -------------------------------------------------------------------

def test_unknown_keys_are_refused_and_keys_not_forwarded(native):
    n = native
    body = json.dumps({"model": "gpt-4o", "messages": []}).encode()
    for h in ({}, {"Authorization": "Bearer sk-nope"}, {"x-api-key": "nope"},
              {"X-Namespace": "keys"}):
        s, b, _ = n.get("/v1/chat/completions", {**h, "X-Mock-Status": "500"}, "POST", body)
        assert s == 401 and json.loads(b)["error"]["code"] == "invalid_api_key", (h, b)
    s, b, _ = n.get("/v1beta/models/g:generateContent", {"x-goog-api-key": "nope"}, "POST", b"{}")
    assert s == 401 and json.loads(b)["error"]["status"] == "UNAUTHENTICATED"
    for h in ({"Authorization": f"Bearer {key('keys')}"}, {"x-api-key": key("keys")},
              {"x-goog-api-key": key("keys")}):
        s, b, headers = n.get("/v1/chat/completions", {**h, "X-Mock-Echo-Headers": "1"}, "POST", body)
        assert s == 200, b
        seen = json.loads(headers["X-Mock-Request-Headers"])
        assert key("keys") not in json.dumps(seen) and "accept-encoding" not in seen, seen
    m = gm.settle(n, lambda m: m.total("http_requests_total", namespace="keys") == 3, timeout=15)
    assert m.total("http_requests_total", namespace="keys") == 3
    assert m.total("http_requests_total", namespace="", status_code="401") >= 5
    assert not m.select("model_requests_total", namespace="")


def test_endpoint_label_is_bounded(native):
    n = native
    h = {"Authorization": f"Bearer {key('ep')}"}
    for path in ("/v1/made-up/1", "/v1/made-up/2?x", "/v1/models", "/v1/models"):
        n.get(path, h)
    m = gm.settle(n, lambda m: m.total("http_requests_total", namespace="ep") == 4, timeout=15)
    got = Counter()
    for k, v in m.select("http_requests_total", namespace="ep").items():
        got[dict(k)["endpoint"]] += v  # (a cache hit has no upstream: a series of its own)
    assert got == {"other": 2, "/v1/models": 2}, got
    assert m.total("cache_hits_total", cache_type="proxy_cache") >= 1


def test_metrics_only_from_the_scrapers(native):
    assert bound_get("127.0.0.1", native.port, "/metrics") == 200
    assert bound_get("127.0.0.2", native.port, "/metrics") == 403
    assert bound_get("127.0.0.2", native.port, "/healthz") == 200
