"""Section usage: CPU instructions per proxied LLM request (valgrind --tool=callgrind, the
difference of two runs), for plain proxying, the module's default families, native usage reading
(`gateway_metrics_usage auto`) and the example gateway as it read usage in Lua before
(lua_example_baseline/), for a JSON response (also one with an 8,000-byte answer, which nginx
hands over in several buffers) and SSE streams of 4, 20 and 200 content chunks;
the cost of each further chunk is the slope between 20 and 200 chunks. The same slope is also
measured for Anthropic Messages, Gemini and OpenAI Responses streams (GM_USAGE_PROVIDERS=0
leaves them out)."""

import json
import os
import socket
import statistics
import threading
import time

import gmharness as gm

from .callgrind import callgrind_run
from .common import fmt_int, head, say

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(gm.ROOT, "tests", "usage_corpus")
STREAMS = (4, 20, 200)
# Other providers' streams, for their per-chunk slope only (`/v1/sse_<provider>/N`).
PROVIDER_STREAMS = ("anthropic", "gemini", "responses")
SLOPE = (20, 200)
# Pause between SSE chunks: nginx (slowed down ~50x by valgrind) reads each chunk on its own, as
# it does with real token streams.
GAP = 0.004
# Not counted in any variant: nginx's clock update, which formats its time strings when a second
# has ticked since the last event, so its cost depends on how long a run takes under valgrind
# (±300 per request from run to run, measured, in the JSON figures).
EXCLUDE = ("ngx_time_update",)


def sse_body(n):
    """An OpenAI Chat Completions stream with `n` content chunks and the include_usage chunk."""
    def chunk(delta, usage=None, choices=True):
        o = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench",
             "choices": [{"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": None}] if choices else [],
             "usage": usage}
        return b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n"
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": f" tok{i}"}) for i in range(n)]
    out.append(chunk({}, {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
                     choices=False))
    out.append(b"data: [DONE]\n\n")
    return out


def provider_stream(fmt, n):
    """A stream of `n` content events in another provider's wire format (as the corpus has
    them): Anthropic Messages (`event:` lines, usage on `message_start` then cumulative on
    `message_delta`), Gemini `streamGenerateContent?alt=sse` (running totals on every chunk,
    `\\r\\n` line ends) and OpenAI Responses (usage on `response.completed`)."""
    j = lambda o: json.dumps(o, separators=(",", ":")).encode()
    if fmt == "anthropic":
        ev = lambda name, o: b"event: " + name.encode() + b"\ndata: " + j(o) + b"\n\n"
        out = [ev("message_start", {"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 0, "output_tokens": 1}}}),
               ev("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})]
        out += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": f" tok{i}"}})
                for i in range(n)]
        out += [ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ev("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": n}}),
                ev("message_stop", {"type": "message_stop"})]
        return out
    if fmt == "gemini":
        # Gemini's own spacing: a space after each key's colon.
        g = lambda o: json.dumps(o, separators=(",", ": ")).encode()

        def chunk(i, text):
            return b"data: " + g({"candidates": [{"content": {"parts": [{"text": text}],
                                                              "role": "model"}, "index": 0}],
                                  "usageMetadata": {"promptTokenCount": 9,
                                                    "candidatesTokenCount": i + 1,
                                                    "totalTokenCount": 10 + i},
                                  "modelVersion": "gemini-2.5-flash",
                                  "responseId": "gtUaaI2wL8Wd1dkP_YnAkA8"}) + b"\r\n\r\n"
        return [chunk(i, f" tok{i}") for i in range(n)]
    ev = lambda o: b"event: " + o["type"].encode() + b"\ndata: " + j(o) + b"\n\n"
    resp = {"id": "resp_bench", "object": "response", "model": "gpt-4.1-2025-04-14",
            "output": []}
    out = [ev({"type": "response.created", "sequence_number": 0,
               "response": dict(resp, status="in_progress", usage=None)})]
    out += [ev({"type": "response.output_text.delta", "sequence_number": i + 1,
                "item_id": "msg_bench", "output_index": 0, "content_index": 0,
                "delta": f" tok{i}", "logprobs": []}) for i in range(n)]
    out.append(ev({"type": "response.completed", "sequence_number": n + 1, "response": dict(
        resp, status="completed", usage={"input_tokens": 20, "output_tokens": n,
                                         "total_tokens": 20 + n,
                                         "input_tokens_details": {"cached_tokens": 0},
                                         "output_tokens_details": {"reasoning_tokens": 0}})}))
    return out


def long_answer(body):
    """The corpus body with an 8,000-byte answer (an escaped line break every 80 bytes), as
    `core/examples/usage_cost.rs`'s `json_long`: nginx hands it to the module in several
    buffers, so the reader reads it the resumable way."""
    text = json.loads(body)["choices"][0]["message"]["content"]
    line = ("All work and no play. " * 4)[:78] + "\\n"
    long = body.replace(json.dumps(text)[1:-1].encode(), (line * 100).encode(), 1)
    assert len(long) > 8_000 and json.loads(long)["usage"] == json.loads(body)["usage"]
    return long


ANSWERS = ["Sure.", "The capital of France is Paris.",
           "Here is a list:\n1. one\n2. two\n3. \"three\"",
           "I can't help with that, but here is what I can do instead: explain the idea in "
           "general terms."]


def varied(body, n=64):
    """`n` bodies of `body`'s shape (the corpus' Chat body, in its indentation) with the values
    a provider changes from answer to answer: the id, the time, the answer (of other lengths)
    and the counts. The bench serves them in turn, so that a reading that keeps what it saw of
    the last body is measured on bodies that differ as real ones do."""
    o = json.loads(body)
    out = []
    for k in range(n):
        p, c = 19 + k % 7, 10 + 3 * k
        v = json.loads(body)
        v["id"] = "chatcmpl-B9MHD%024X" % ((k * 0x9E3779B97F4A7C15) % (1 << 96))
        v["created"] = o["created"] + 7 * k
        v["choices"][0]["message"]["content"] = ANSWERS[k % len(ANSWERS)]
        v["usage"].update(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
        out.append(json.dumps(v, indent=2).encode())
    assert out[0].count(b"\n") == body.count(b"\n") and len(set(out)) == n
    return out


class Upstream(gm.LoopbackServer):
    """Keep-alive HTTP/1.1 upstream: `/json` answers bodies of the corpus' Chat Completions JSON
    body's shape with other ids, times, answers and counts in turn (`varied`), `/json_alt`
    those and their compact forms in turn (two shapes), `/json_long` the body with an
    8,000-byte answer,
    `/sse/N` a stream of N content chunks, each sent on its own after a short pause."""

    def __init__(self):
        super().__init__(backlog=64)
        with open(os.path.join(CORPUS, "openai_chat_json.body"), "rb") as f:
            self.json = f.read()
        self.json_long = long_answer(self.json)
        self.json_varied = varied(self.json)
        compact = [json.dumps(json.loads(b), separators=(",", ":")).encode()
                   for b in self.json_varied]
        self.json_alt = [b for pair in zip(self.json_varied, compact) for b in pair]
        self.streams = {n: sse_body(n) for n in STREAMS}
        self.streams.update({(fmt, n): provider_stream(fmt, n)
                             for fmt in PROVIDER_STREAMS for n in SLOPE})
        self.start()

    def _serve(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        # Per connection (a run's nginx keeps one): each run is served the same bodies.
        turn = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head_, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head_.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(rest) < length:
                    rest += c.recv(65536)
                buf = rest[length:]
                path = head_.split(b" ")[1].decode()
                if path.endswith(("/json", "/json_long", "/json_alt")):
                    turn += 1
                    if path.endswith("/json_alt"):
                        body = self.json_alt[turn % len(self.json_alt)]
                    elif path.endswith("/json"):
                        body = self.json_varied[turn % len(self.json_varied)]
                    else:
                        body = self.json_long
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                kind, n = path.rsplit("/", 2)[-2:]
                n = int(n) if kind == "sse" else (kind.split("_", 1)[1], int(n))
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                for ev in self.streams[n]:
                    c.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                    time.sleep(GAP)
                c.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            c.close()


LOCATION = """
        location /v1/ {{
            proxy_pass http://llm/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
{extra}
        }}"""

LUA_EXAMPLE = """
            access_by_lua_block        { require("gateway_baseline.phases").access() }
            header_filter_by_lua_block { require("gateway_baseline.phases").header_filter() }
            body_filter_by_lua_block   { require("gateway_baseline.phases").body_filter() }
            log_by_lua_block           { require("gateway_baseline.phases").log() }"""

# name: (description, module?, lua?, http-level directives, location directives)
VARIANTS = {
    "proxy": ("plain proxy_pass (nginx alone)", False, False, "", ""),
    "module": ("module, default families (usage not read)", True, False, "gateway_metrics on;", ""),
    "usage": ("module + `gateway_metrics_usage auto`", True, False, "gateway_metrics on;",
              "            gateway_metrics_usage auto;"),
    "lua_example": ("module + the example's Lua usage parsing (before native reading)", True,
                    True, "gateway_metrics on;", LUA_EXAMPLE),
}


def http_conf(up_port, module, http_extra, loc_extra, layout=0):
    # Unused map blocks move what nginx allocates at start-up and per request (its heap's
    # layout, and its request pool's), as in the callgrind section.
    pad = "".join(f"    map $http_x_gm_pad{i} $gm_pad{i} {{ default 1; }}\n"
                  for i in range(layout))
    zone = ("    gateway_metrics_zone gm 8m;\n    gateway_metrics_namespace $http_x_namespace;\n"
            if module else "")
    lua = ("    lua_shared_dict gateway_token_budget 1m;\n"
           "    map $http_x_namespace $gateway_namespace { default $http_x_namespace; }\n"
           "    map $http_x_namespace $gateway_token_budget { default \"\"; }\n"
           if "gateway_baseline" in loc_extra else "")
    return (f"{pad}{zone}{lua}    upstream llm {{ server 127.0.0.1:{up_port}; keepalive 4; }}\n"
            "    server {\n        listen 127.0.0.1:{port};\n"
            f"        {http_extra}\n" + LOCATION.format(extra=loc_extra) + "\n    }\n")


def label(path):
    """A path's short name in the printed rows: json, json_long, sse4, anthropic20, ..."""
    kind, last = path.rsplit("/", 2)[-2:]
    if kind == "sse":
        return "sse" + last
    if kind.startswith("sse_"):
        return kind[4:] + last
    return last


def request(path):
    body = json.dumps({"model": "gpt-4o-mini", "stream": "/sse" in path,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    return gm.request_bytes(path, {"X-Namespace": "bench", "Content-Type": "application/json"},
                            method="POST", body=body)


def run(ctx):
    head("usage. native usage reading: CPU instructions per proxied request (callgrind)")
    smoke = ctx.p is not None and ctx.p.get("cg_layouts") == 1
    n1, n2 = (2, 5) if smoke else (10, 30)
    warm = 3
    names = [n for n in VARIANTS if gm.HAVE_LUA or not VARIANTS[n][2]]
    if os.environ.get("GM_USAGE_VARIANTS"):  # e.g. "proxy,usage" while iterating
        names = [n for n in names if n in os.environ["GM_USAGE_VARIANTS"].split(",")]
    paths = ["/v1/json", "/v1/json_long", "/v1/json_alt"] + [f"/v1/sse/{n}" for n in STREAMS]
    # (Not in the smoke run, which only checks that the section works.)
    if not smoke and os.environ.get("GM_USAGE_PROVIDERS", "1") != "0":
        paths += [f"/v1/sse_{fmt}/{n}" for fmt in PROVIDER_STREAMS for n in SLOPE]
    # A JSON response's figure, a few thousand instructions over nginx's own, moves by
    # hundreds with the layout of nginx's heap and request pool (which allocation lands in
    # which block): its median over heap layouts, as in the callgrind section. (A stream's
    # per-chunk slope does not depend on it.)
    layouts = 1 if smoke else 5
    say(f"per request = (Ir(N={n2}) - Ir(N={n1})) / {n2 - n1}, {warm} warm-up requests, one "
        f"keep-alive connection, worker_processes 1; SSE chunks {GAP * 1000:.0f} ms apart (read "
        "one by one); per further chunk = (cost at 200 chunks - cost at 20) / 180; not counted: "
        + ", ".join(EXCLUDE) + " (nginx's clock, which formats its strings when a second ticks)")
    up = Upstream()
    cgdir = os.path.join(ctx.work, "callgrind-usage")
    os.makedirs(cgdir, exist_ok=True)
    res = {"method": {"n1": n1, "n2": n2, "warm": warm, "gap_ms": GAP * 1000}, "cost": {}}
    try:
        for name in names:
            desc, module, lua, http_extra, loc_extra = VARIANTS[name]
            res["cost"][name] = {}
            res.setdefault("json_layouts", {})[name] = {}
            for path in paths:
                per = []
                for layout in range(layouts if "/json" in path else 1):
                    conf = http_conf(up.port, module, http_extra, loc_extra, layout)
                    irs = []
                    for n in (n1, n2):
                        out = os.path.join(cgdir,
                                           f"{name}.{path.rsplit('/', 1)[-1]}.{n}.{layout}.out")
                        irs.append(callgrind_run(
                            ctx, conf, module, [request(path)] * (warm + n), out,
                            f"{name} {path}", lua=lua,
                            lua_dirs=[os.path.join(HERE, "lua_example_baseline")],
                            exclude=EXCLUDE))
                    per.append((irs[1] - irs[0]) / (n2 - n1))
                res["cost"][name][path] = statistics.median(per)
                if len(per) > 1:
                    res["json_layouts"][name][path] = per
            c = res["cost"][name]
            say(f"  {name:12s} " + "  ".join(f"{label(p)} {fmt_int(c[p])}" for p in paths))
    finally:
        up.sock.close()
    if "proxy" not in res["cost"]:
        return res
    base = res["cost"]["proxy"]
    res["added"], res["per_chunk"] = {}, {}
    for name in names:
        c = res["cost"][name]
        added = {p: c[p] - base[p] for p in paths}
        slope = (c["/v1/sse/200"] - c["/v1/sse/20"]) / 180
        res["added"][name], res["per_chunk"][name] = added, slope
        res["per_chunk_providers"] = res.get("per_chunk_providers", {})
        res["per_chunk_providers"][name] = {
            fmt: (c[f"/v1/sse_{fmt}/200"] - c[f"/v1/sse_{fmt}/20"]) / 180
            for fmt in PROVIDER_STREAMS if f"/v1/sse_{fmt}/200" in c}
        say(f"  -> {VARIANTS[name][0]}: JSON {fmt_int(added['/v1/json'])} added (with an "
            f"8,000-byte answer {fmt_int(added['/v1/json_long'])}; two shapes in turn "
            f"{fmt_int(added['/v1/json_alt'])}); SSE 4/20/200 "
            f"chunks {fmt_int(added['/v1/sse/4'])} / {fmt_int(added['/v1/sse/20'])} / "
            f"{fmt_int(added['/v1/sse/200'])} added; {slope:,.0f} per chunk"
            + (f" ({slope - res['per_chunk']['proxy']:,.0f} over proxying)" if name != "proxy"
               else ""))
        lay = res["json_layouts"]
        if name != "proxy" and lay.get(name, {}).get("/v1/json"):
            pairs = zip(lay[name]["/v1/json"], lay["proxy"]["/v1/json"])
            say(f"     JSON added under each heap layout ({len(lay[name]['/v1/json'])}, 0-"
                f"{len(lay[name]['/v1/json']) - 1} unused map blocks; the figure above is the "
                f"median of each variant's): " + ", ".join(fmt_int(u - q) for u, q in pairs))
    pp = res.get("per_chunk_providers", {})
    if "usage" in pp and pp["usage"]:
        say("  per further chunk over proxying, other providers' streams (the same slope, 20 to "
            "200 content events): " + ", ".join(
                f"{fmt} {pp['usage'][fmt] - pp['proxy'][fmt]:,.0f}" for fmt in pp["usage"]))
    if "usage" in names:
        a, k = res["added"]["usage"], res["per_chunk"]["usage"] - res["per_chunk"]["proxy"]
        say(f"  targets: JSON <= 2,500 added: {fmt_int(a['/v1/json'])} "
            f"({'met' if a['/v1/json'] <= 2500 else 'missed'}); SSE <= 300 added per further "
            f"chunk: {k:,.0f} ({'met' if k <= 300 else 'missed'})")
    return res
