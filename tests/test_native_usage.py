"""`gateway_metrics_usage`: token usage, model and time to first token read natively from the
upstream's responses as they pass, replayed from the corpus in tests/usage_corpus/ (provider
bodies in their exact wire formats, with their truth in cases.json; core's unit tests replay the
same files through the reader alone). Each body is served by a scripted upstream, whole, split at
random points and byte by byte, through real nginx; the metrics must equal the truth exactly, and
the bytes the client gets must be the upstream's, with or without the directive."""

import gzip
import json
import os
import random
import socket
import threading
import time

import pytest

from gmharness import LoopbackServer, Nginx, settle

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "usage_corpus")
CASES = json.load(open(os.path.join(CORPUS, "cases.json")))
BY_FILE = {c["file"]: c for c in CASES}
TOKEN_TYPES = ["input", "output", "cached_input", "cache_write", "reasoning"]


def body_of(case):
    with open(os.path.join(CORPUS, case["file"]), "rb") as f:
        return f.read()


class CorpusUpstream(LoopbackServer):
    """Serves `/<file>/<split>[/<seed>]`: the corpus body with its case's Content-Type, over
    HTTP/1.1 chunked encoding, each piece sent on its own (TCP_NODELAY, a short pause between
    pieces so that nginx reads them apart). split: `whole`, `random` (1-64-byte pieces), `bytes`
    (one byte a piece). A case that is not complete ends with a connection close instead of the
    last chunk (nginx sees the upstream cut the body). `/gzip/<file>` sends the body
    gzip-compressed with Content-Encoding: gzip."""

    def __init__(self):
        super().__init__(backlog=64)
        self.start()

    def _serve(self, c):
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return c.close()
                data += chunk
            method, path = data.split(b"\r\n", 1)[0].split(b" ")[:2]
            path = path.decode()
            parts = path.strip("/").split("/")
            if parts[0] == "nocontent":
                c.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                return c.close()
            encoded = parts[0] == "gzip"
            if encoded:
                parts = parts[1:]
            case = BY_FILE[parts[0]]
            split = parts[1] if len(parts) > 1 else "whole"
            seed = int(parts[2]) if len(parts) > 2 else 0
            body = body_of(case)
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {case['content_type']}\r\n"
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n")
            if encoded:
                body = gzip.compress(body)
                head += "Content-Encoding: gzip\r\n"
            c.sendall(head.encode() + b"\r\n")
            if method == b"HEAD":
                return c.close()
            rng = random.Random(seed)
            pieces, i = [], 0
            while i < len(body):
                n = {"whole": len(body), "bytes": 1}.get(split) or rng.randint(1, 64)
                pieces.append(body[i:i + n])
                i += n
            for k, p in enumerate(pieces):
                c.sendall(b"%x\r\n%s\r\n" % (len(p), p))
                if split != "whole" and k % 8 == 7:
                    time.sleep(0.001)
            if case["complete"]:
                c.sendall(b"0\r\n\r\n")
            else:
                c.shutdown(socket.SHUT_WR)
            c.close()
        except OSError:
            c.close()


CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_model_price claude-sonnet-4-5-20250929 input=3 output=15 cached_input=0.3 cache_write=3.75;
    upstream corpus {{ server 127.0.0.1:{up}; }}
    server {{
        listen 127.0.0.1:{{port}};
        gateway_metrics on;
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_read_timeout 5s;
        location /auto/ {{ gateway_metrics_usage auto; proxy_pass http://corpus/; }}
        location /openai/ {{ gateway_metrics_usage openai; proxy_pass http://corpus/; }}
        location /anthropic/ {{ gateway_metrics_usage anthropic; proxy_pass http://corpus/; }}
        location /gemini/ {{ gateway_metrics_usage gemini; proxy_pass http://corpus/; }}
        location /buffered/ {{
            gateway_metrics_usage auto;
            proxy_buffering on;
            proxy_pass http://corpus/;
        }}
        location /named/ {{
            gateway_metrics_usage auto;
            gateway_metrics_model $http_x_model;
            proxy_pass http://corpus/;
        }}
        location /off/ {{ proxy_pass http://corpus/; }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""


@pytest.fixture(scope="module")
def gw():
    up = CorpusUpstream()
    n = Nginx(CONF.format(up=up.port), workers=2)
    with n:
        yield n
    up.sock.close()


def fetch(port, path, ns, headers=None, read_limit=None):
    """A POST through nginx; returns the decoded body (HTTP/1.1 chunked) as the client got it.
    With read_limit, closes the connection after that many body bytes."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    req = (f"POST {path} HTTP/1.1\r\nHost: gw\r\nX-Namespace: {ns}\r\n{extra}"
           "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(req.encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
            if read_limit is not None and len(data) > read_limit:
                return None
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    out = b""
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return out


def usage_of(m, ns):
    tokens = {dict(k)["token_type"]: v
              for k, v in m.select("namespace_tokens_total", namespace=ns).items()}
    missing = {(dict(k)["model"], dict(k)["reason"]): v
               for k, v in m.select("model_usage_missing_total", namespace=ns).items()}
    models = {(dict(k)["model"], dict(k)["status"]): v
              for k, v in m.select("model_requests_total", namespace=ns).items()}
    return tokens, missing, models


def recorded(gw, ns, done):
    """The scrape once the namespace's request is recorded as `done(m)` expects (the log phase
    writes the request's families one after the other, and a scrape reads them at different
    moments); the last scrape if it never is: the caller's exact assertions then say what
    differs."""
    return settle(gw, lambda m: m.total("http_requests_total", namespace=ns) >= 1 and done(m),
                  timeout=15)


def expected_tokens(case):
    if case["outcome"] not in ("usage", "partial"):
        return {}
    want = {t: case[t] for t in TOKEN_TYPES}
    # the page shows input and output always, the parts of them once some were reported
    return {t: v for t, v in want.items() if t in ("input", "output") or v > 0}


def check_case(gw, case, split, seed=0, prefix=None):
    ns = f"{case['file'].split('.')[0]}-{split}-{seed}"[:60]
    prefix = prefix or case["format"]
    got = fetch(gw.port, f"/{prefix}/{case['file']}/{split}/{seed}", ns)
    body = body_of(case)
    if case["complete"]:
        assert got == body, f"{case['file']}: the client got other bytes"
    model = case["model"] or ""
    reason = {"absent": "absent", "aborted": "aborted", "malformed": "malformed"}.get(
        case["outcome"])
    # a cut body is an error whatever usage came before the cut
    status = "success" if case["complete"] else "error"
    streamed_content = case["first_content_at"] is not None
    out = case["output"] or 0
    want = {
        "tokens": expected_tokens(case),
        "missing": {(model, reason): 1.0} if reason else {},
        "models": {(model, status): 1.0},
        "ttft": 1 if streamed_content else 0,
        "tpot": 1 if streamed_content and case["outcome"] in ("usage", "partial") and out >= 2
        else 0,
    }

    def views(m):
        tokens, missing, models = usage_of(m, ns)
        return {
            "tokens": tokens, "missing": missing, "models": models,
            "ttft": m.get1("model_time_to_first_token_seconds_count", model=model, namespace=ns),
            "tpot": m.get1("model_time_per_output_token_seconds_count", model=model,
                           namespace=ns),
        }

    m = recorded(gw, ns, lambda m: views(m) == want)
    assert views(m) == want, case["file"]
    return m, ns


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_every_corpus_body_whole_and_split(gw, case):
    check_case(gw, case, "whole")
    check_case(gw, case, "random", seed=7)


BYTE_CASES = ["openai_chat_stream.body", "anthropic_stream.body", "anthropic_stream_cache.body",
              "gemini_stream.body", "openai_responses_stream.body", "openai_chat_json.body"]


@pytest.mark.parametrize("name", [n for n in BYTE_CASES if n in BY_FILE])
def test_byte_by_byte(gw, name):
    check_case(gw, BY_FILE[name], "bytes")


def test_proxy_buffering_on_reads_the_same(gw):
    for name in ("openai_chat_stream.body", "anthropic_json.body"):
        if name in BY_FILE:
            check_case(gw, BY_FILE[name], "random", seed=3, prefix="buffered")


def test_the_response_is_byte_identical_with_and_without_the_directive(gw):
    for case in CASES:
        if not case["complete"]:
            continue
        with_usage = fetch(gw.port, f"/auto/{case['file']}/random/5", "bytes-on")
        without = fetch(gw.port, f"/off/{case['file']}/random/5", "bytes-off")
        assert with_usage == without == body_of(case), case["file"]


def test_an_encoded_body_is_counted_as_encoded_not_read(gw):
    name = "openai_chat_json.body"
    case = BY_FILE[name]
    got = fetch(gw.port, f"/auto/gzip/{name}", "gzipped")
    assert gzip.decompress(got) == body_of(case)
    m = recorded(gw, "gzipped", lambda m: usage_of(m, "gzipped")[1])
    tokens, missing, _ = usage_of(m, "gzipped")
    assert tokens == {} and missing == {("", "encoded"): 1.0}


def test_the_request_model_wins_over_the_response_model(gw):
    case = BY_FILE["openai_chat_stream.body"]
    fetch(gw.port, f"/named/{case['file']}/whole/0", "named", headers={"X-Model": "my-alias"})
    m = recorded(gw, "named", lambda m: usage_of(m, "named")[0].get("input"))
    assert usage_of(m, "named")[2] == {("my-alias", "success"): 1.0}
    assert m.get1("model_tokens_input_total", model="my-alias", namespace="named") == case["input"]
    # an empty configured model falls back to the response's
    fetch(gw.port, f"/named/{case['file']}/whole/0", "unnamed")
    m = recorded(gw, "unnamed", lambda m: usage_of(m, "unnamed")[0].get("input"))
    assert usage_of(m, "unnamed")[2] == {(case["model"], "success"): 1.0}


def test_cache_writes_are_priced_at_their_price(gw):
    name = "anthropic_stream_cache.body"
    if name not in BY_FILE:
        pytest.skip("no cache-write case in the corpus")
    case = BY_FILE[name]
    m, ns = check_case(gw, case, "whole", seed=11, prefix="auto")
    if case["model"] != "claude-sonnet-4-5-20250929":
        pytest.skip("the case's model is not the priced one")
    fresh = case["input"] - case["cached_input"] - case["cache_write"]
    want = (fresh * 3 + case["cached_input"] * 0.3 + case["cache_write"] * 3.75
            + case["output"] * 15) / 1e6
    got = m.get1("model_cost_usd_total", model=case["model"], namespace=ns)
    assert abs(got - want) < 1e-12, (got, want)


def test_a_client_gone_mid_stream_is_an_error_with_usage_aborted(gw):
    """The client reads the first part of a slow stream and leaves: nginx stops, the request is
    an error (client_closed) and its usage, not yet sent, is `aborted`, never estimated."""
    case = BY_FILE["openai_chat_stream.body"]
    fetch(gw.port, f"/auto/{case['file']}/bytes/1", "left", read_limit=400)
    m = recorded(gw, "left", lambda m: usage_of(m, "left")[1])
    tokens, missing, _ = usage_of(m, "left")
    assert tokens == {}
    assert missing == {("", "aborted"): 1.0} or missing == {(case["model"], "aborted"): 1.0}
    assert m.total("model_requests_total", namespace="left", status="error") == 1
    assert m.get1("errors_total", error_type="client_closed", namespace="left",
                  upstream="corpus") == 1


LUA_CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_gauge lua_seen_usage "Usage Lua read back." namespace token_type;
    upstream corpus {{ server 127.0.0.1:{up}; }}
    server {{
        listen 127.0.0.1:{{port}};
        gateway_metrics on;
        gateway_metrics_usage auto;
        proxy_http_version 1.1;
        proxy_buffering off;
        location /readback/ {{
            proxy_pass http://corpus/;
            log_by_lua_block {{
                local gm = require "resty.gateway_metrics"
                local ns = ngx.var.http_x_namespace
                local u, err = gm.response_usage()
                if u then
                    for k, v in pairs(u) do gm.set("lua_seen_usage", {{ ns, k }}, v) end
                else
                    gm.set("lua_seen_usage", {{ ns, err }}, -1)
                end
            }}
        }}
        location /luatokens/ {{
            proxy_pass http://corpus/;
            log_by_lua_block {{
                local gm = require "resty.gateway_metrics"
                assert(gm.add_tokens(7, 3, 0, 0, 2))
            }}
        }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""


@pytest.fixture(scope="module")
def lua_gw():
    up = CorpusUpstream()
    n = Nginx(LUA_CONF.format(up=up.port), workers=1, lua=True)
    with n:
        yield n
    up.sock.close()


def test_lua_reads_the_usage_the_module_read_in_its_log_phase(lua_gw):
    case = BY_FILE["anthropic_stream_cache.body"]
    fetch(lua_gw.port, f"/readback/{case['file']}/random/2", "readback")
    m = recorded(lua_gw, "readback",
                 lambda m: len(m.select("lua_seen_usage", namespace="readback")) == 5)
    seen = {dict(k)["token_type"]: v
            for k, v in m.select("lua_seen_usage", namespace="readback").items()}
    assert seen == {t: case[t] for t in TOKEN_TYPES}
    # a response cut before its usage: Lua is told why, never given a number
    cut = BY_FILE["openai_chat_stream_cut.body"]
    fetch(lua_gw.port, f"/readback/{cut['file']}/whole/0", "readback-cut")
    m = recorded(lua_gw, "readback-cut",
                 lambda m: m.select("lua_seen_usage", namespace="readback-cut"))
    reasons = {dict(k)["token_type"]: v
               for k, v in m.select("lua_seen_usage", namespace="readback-cut").items()}
    assert list(reasons.values()) == [-1] and "not complete" in next(iter(reasons)), reasons


def test_tokens_lua_reported_are_not_counted_again(lua_gw):
    """Lua's gm.add_tokens wins: the response's own usage is then not added on top."""
    case = BY_FILE["openai_chat_stream.body"]
    fetch(lua_gw.port, f"/luatokens/{case['file']}/whole/0", "lua-wins")
    m = recorded(lua_gw, "lua-wins", lambda m: usage_of(m, "lua-wins")[0].get("input"))
    tokens, missing, models = usage_of(m, "lua-wins")
    assert tokens == {"input": 7, "output": 3, "cache_write": 2} and missing == {}
    # the model still comes from the response
    assert models == {(case["model"], "success"): 1.0}


def test_responses_without_a_body_have_no_usage_to_miss(gw):
    """HEAD and 204: nothing to read, so nothing counted as missing (and still recorded)."""
    for ns, method, path in [("head-ns", "HEAD", "/auto/openai_chat_json.body/whole/0"),
                             ("nocontent-ns", "POST", "/auto/nocontent")]:
        req = (f"{method} {path} HTTP/1.1\r\nHost: gw\r\nX-Namespace: {ns}\r\n"
               "Content-Length: 0\r\nConnection: close\r\n\r\n")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            s.sendall(req.encode())
            while s.recv(65536):
                pass
        m = recorded(gw, ns, lambda m: True)
        assert m.total("http_requests_total", namespace=ns) == 1
        assert usage_of(m, ns)[1] == {} and usage_of(m, ns)[0] == {}, ns
