#!/usr/bin/env python3
"""Mock LLM provider used as an upstream for the gateway-metrics nginx module.

Speaks the four API families a gateway meets, JSON and streamed, in the providers' wire formats,
for end-to-end tests.  Standard library only.

  POST /v1/chat/completions   OpenAI Chat Completions (stream, stream_options.include_usage)
  POST /v1/responses          OpenAI Responses (stream: `event:` + `data:` response.* events)
  POST /v1/embeddings         OpenAI Embeddings (encoding_format float or base64)
  POST /v1/messages           Anthropic Messages (stream: message_start ... message_stop)
  POST /v1beta/models/{model}:generateContent          Gemini, JSON
  POST /v1beta/models/{model}:streamGenerateContent    Gemini, `?alt=sse`: SSE; else a JSON
                                                       array sent piece by piece
  GET  /v1/models             the model list
  GET  /health                "ok"
  GET  any other path outside /v1/ (/, /favicon.ico...): a small page saying all this

Token counts are deterministic, so that tests know the truth (see usage_truth()):
  prompt      X-Mock-Prompt-Tokens, else --prompt-tokens, else the number of whitespace-separated
              words in the request's text (prompt_tokens_of());
  completion  X-Mock-Completion-Tokens, else --completion-tokens, else one per content chunk
              (each chunk is the text "tok ");
  cached, reasoning, cache write   X-Mock-Cached-Tokens, X-Mock-Reasoning-Tokens,
              X-Mock-Cache-Write-Tokens (Anthropic's cache_creation_input_tokens), default 0.
OpenAI counts cached tokens inside prompt_tokens and reasoning inside completion_tokens; Anthropic
reports input_tokens (= prompt), cache_read_input_tokens (= cached) and
cache_creation_input_tokens (= cache write) side by side; Gemini reports promptTokenCount
(= prompt, cached included), candidatesTokenCount (= completion - reasoning) and
thoughtsTokenCount (= reasoning).

Per-request controls (request headers), so that tests can replay edge cases:
  X-Mock-Chunks: N            content chunks (default --chunks)
  X-Mock-Usage: none|last|every|beside-choices
                              where usage goes. Default: where the provider puts it (OpenAI chat
                              streams: a final `"choices": []` chunk only with include_usage;
                              Anthropic: message_start + a cumulative message_delta; Responses:
                              response.completed; Gemini: every chunk, running totals).
                              none: nowhere. last: only the final event. every: every event that
                              can carry it, with running totals. beside-choices (OpenAI chat
                              streams): in the chunk with finish_reason, no separate chunk.
  X-Mock-No-Usage: 1          the same as X-Mock-Usage: none
  X-Mock-Split: whole|random|bytes
                              how each event (or a JSON body) is written: in one piece, in
                              random pieces of 1-64 bytes (X-Mock-Seed picks them), a byte each
  X-Mock-Cut: after-N         end the connection after N events (streams) or N body bytes (JSON),
                              without ending the body (no last chunk)
  X-Mock-Delay-Ms, X-Mock-Chunk-Delay-Ms   sleep before responding / before each content chunk
  X-Mock-Status: S            answer S with the provider's error body
  X-Mock-Echo-Headers: 1      the request headers the mock received, as a JSON object in the
                              X-Mock-Request-Headers response header (what a gateway forwards)

Timing of a streamed response: headers and the events before the content (OpenAI: a role-only
chunk; Anthropic: message_start, content_block_start, ping; Responses: response.created ...
content_part.added) are flushed after delay-ms; every content chunk is preceded by a
chunk-delay-ms sleep; the tail events follow immediately.  So first byte ~ delay, first token ~
delay + chunk_delay, total ~ delay + chunks * chunk_delay.
"""
import argparse
import base64
import html
import json
import random
import re
import signal
import socket
import struct
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK_TEXT = "tok "
MODELS = ["mock-gpt-4o", "mock-gpt-4o-mini", "mock-claude-sonnet", "mock-gemini-2.5-flash"]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error",
               413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 502: "api_error",
               503: "overloaded_error", 529: "overloaded_error"}
GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# request header -> settings key (same name as the CLI option's attribute)
INT_HEADERS = {
    "X-Mock-Prompt-Tokens": "prompt_tokens",
    "X-Mock-Completion-Tokens": "completion_tokens",
    "X-Mock-Cached-Tokens": "cached_tokens",
    "X-Mock-Reasoning-Tokens": "reasoning_tokens",
    "X-Mock-Cache-Write-Tokens": "cache_write_tokens",
    "X-Mock-Delay-Ms": "delay_ms",
    "X-Mock-Chunk-Delay-Ms": "chunk_delay_ms",
    "X-Mock-Chunks": "chunks",
    "X-Mock-Seed": "seed",
}
USAGE_MODES = ("none", "last", "every", "beside-choices")
SPLITS = ("whole", "random", "bytes")
# The request fields whose text is the prompt, per API.
PROMPT_FIELDS = ("messages", "input", "instructions", "system", "contents", "systemInstruction",
                 "prompt")
# Values under these keys are names, not text.
NOT_TEXT = ("role", "type", "model", "mimeType", "name")


def prompt_tokens_of(req):
    """The default prompt token count of a request: the words of its text, at least 1."""
    def words(v):
        if isinstance(v, str):
            return len(v.split())
        if isinstance(v, list):
            return sum(words(x) for x in v)
        if isinstance(v, dict):
            return sum(words(x) for k, x in v.items() if k not in NOT_TEXT)
        return 0
    if not isinstance(req, dict):
        return 1
    return max(1, sum(words(req.get(k)) for k in PROMPT_FIELDS))


def usage_truth(api, prompt, completion, cached=0, reasoning=0, cache_write=0):
    """The tokens a gateway must count for a complete response of `api` (openai, responses,
    anthropic, gemini) made with these settings, in the module's token types (the parts of
    input and output capped by their whole, as the module does)."""
    if api == "anthropic":
        inp = prompt + cached + cache_write
        return {"input": inp, "output": completion, "cached_input": cached,
                "cache_write": cache_write, "reasoning": 0}
    if api == "gemini":
        out = max(completion - reasoning, 0) + reasoning
        return {"input": prompt, "output": out, "cached_input": min(cached, prompt),
                "cache_write": 0, "reasoning": reasoning}
    return {"input": prompt, "output": completion, "cached_input": min(cached, prompt),
            "cache_write": 0, "reasoning": min(reasoning, completion)}


def running(total, i, n):
    """Tokens produced after content chunk i of n (totals are reported as they grow)."""
    return total if n == 0 or i >= n else total * i // n


class BadRequest(Exception):
    pass


class CutShort(Exception):
    """X-Mock-Cut reached: the connection ends here."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # enables keep-alive for Content-Length replies
    server_version = "mock-llm/1.0"
    args = None  # set in main()

    def setup(self):
        super().setup()
        # Stream chunks must leave at once, not wait for a delayed ACK (Nagle): TTFT depends on it.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- plumbing -------------------------------------------------------

    def log_message(self, fmt, *a):
        if not self.args.quiet:
            super().log_message(fmt, *a)

    def read_body(self):
        """Always drain the request body so keep-alive stays in sync even when
        we answer with an error without looking at it."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # skip trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def settings(self):
        s = {key: getattr(self.args, key) for key in INT_HEADERS.values()}
        for header, key in INT_HEADERS.items():
            raw = self.headers.get(header)
            if raw is None:
                continue
            try:
                s[key] = int(raw)
            except ValueError:
                raise BadRequest(f"invalid {header} header: {raw!r}")
            if s[key] < 0:
                raise BadRequest(f"{header} must be >= 0")
        mode = self.headers.get("X-Mock-Usage", "").strip().lower() or None
        if self.headers.get("X-Mock-No-Usage", "").strip().lower() in ("1", "true", "yes"):
            mode = "none"
        if mode is not None and mode not in USAGE_MODES:
            raise BadRequest(f"X-Mock-Usage must be one of {', '.join(USAGE_MODES)}")
        s["usage"] = mode
        split = self.headers.get("X-Mock-Split", "whole").strip().lower()
        if split not in SPLITS:
            raise BadRequest(f"X-Mock-Split must be one of {', '.join(SPLITS)}")
        s["split"] = split
        cut = self.headers.get("X-Mock-Cut", "").strip().lower()
        s["cut"] = None
        if cut:
            m = re.fullmatch(r"after-(\d+)", cut)
            if not m:
                raise BadRequest("X-Mock-Cut must be after-N")
            s["cut"] = int(m.group(1))
        return s

    def tokens(self, s, req):
        """Fills in the token counts not set by a header or the command line (deterministic)."""
        if s["prompt_tokens"] is None:
            s["prompt_tokens"] = prompt_tokens_of(req)
        if s["completion_tokens"] is None:
            s["completion_tokens"] = s["chunks"]
        self.rng = random.Random(s["seed"])
        self.split, self.cut = s["split"], s["cut"]
        return s

    def pieces(self, raw):
        """`raw` cut as X-Mock-Split says."""
        if self.split == "whole" or len(raw) <= 1:
            return [raw]
        out, i = [], 0
        while i < len(raw):
            n = 1 if self.split == "bytes" else self.rng.randint(1, 64)
            out.append(raw[i:i + n])
            i += n
        return out

    def write_pieces(self, raw):
        for k, p in enumerate(self.pieces(raw)):
            if self.chunked:
                p = b"%x\r\n%s\r\n" % (len(p), p)
            self.wfile.write(p)
            self.wfile.flush()
            if k % 8 == 7:  # (now and then a pause, so that nginx reads pieces apart)
                time.sleep(0.001)

    def send_bytes(self, status, body, ctype="application/json", extra=()):
        if status in (204, 304):  # these must not carry a body
            body = b""
        self.send_response(status)
        for name, value in [*extra, *self.echo_headers()]:
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        self.chunked = False
        cut = getattr(self, "cut", None)
        if status == 200 and cut is not None and cut < len(body):
            self.write_pieces(body[:cut])
            raise CutShort()
        if status == 200 and getattr(self, "split", "whole") != "whole":
            return self.write_pieces(body)
        self.wfile.write(body)

    def send_json(self, status, obj, extra=()):
        self.send_bytes(status, json.dumps(obj, separators=(",", ":")).encode(), extra=extra)

    def send_error_json(self, status, message, api="openai", extra=()):
        if api == "gemini":
            body = {"error": {"code": status, "message": message,
                              "status": GEMINI_STATUS.get(status, "UNKNOWN")}}
            return self.send_json(status, body, extra)
        etype = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": etype}}
        if api == "anthropic":  # Anthropic wraps the same shape with a top-level type
            body = {"type": "error", **body}
        self.send_json(status, body, extra)

    def echo_headers(self):
        """X-Mock-Echo-Headers: 1 -> the received request headers, for tests of what a gateway
        forwards (e.g. that it does not pass the client's API key on)."""
        if self.headers.get("X-Mock-Echo-Headers", "").strip() != "1":
            return []
        seen = {k.lower(): v for k, v in self.headers.items()}
        return [("X-Mock-Request-Headers", json.dumps(seen, separators=(",", ":"), ensure_ascii=True))]

    def index_page(self):
        host = html.escape(self.headers.get("Host") or "this server")
        rows = "".join(f"<li><code>{html.escape(r)}</code></li>" for r in (
            "POST /v1/chat/completions   OpenAI Chat Completions (JSON, SSE)",
            "POST /v1/responses          OpenAI Responses (JSON, SSE)",
            "POST /v1/embeddings         OpenAI Embeddings",
            "POST /v1/messages           Anthropic Messages (JSON, SSE)",
            "POST /v1beta/models/MODEL:generateContent         Gemini (JSON)",
            "POST /v1beta/models/MODEL:streamGenerateContent   Gemini (?alt=sse: SSE)",
            "GET  /v1/models             model list",
            "GET  /health                liveness"))
        return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>mock LLM</title></head>"
                f"<body><h1>mock LLM provider</h1><p>{host} is the mock upstream of the "
                f"gateway-metrics demo (scripts/mock_llm.py). It serves:</p><ul>{rows}</ul>"
                f"<p>Token usage, its placement and timing are set per request with X-Mock-* "
                f"headers (X-Mock-Prompt-Tokens, X-Mock-Completion-Tokens, X-Mock-Chunks, "
                f"X-Mock-Usage, X-Mock-Split, X-Mock-Cut, X-Mock-Delay-Ms...). "
                f"Send API traffic through the gateway to see it in its /metrics.</p>"
                f"</body></html>\n").encode()

    def start_stream(self, ctype="text/event-stream"):
        """Send the stream's headers.  HTTP/1.1 clients (nginx with proxy_http_version
        1.1) get chunked encoding and keep-alive; HTTP/1.0 clients (nginx's
        default to upstreams) get a close-delimited body."""
        self.chunked = self.request_version == "HTTP/1.1"
        self.events = 0
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache")
        for name, value in self.echo_headers():
            self.send_header(name, value)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()  # wfile is unbuffered, so this hits the socket now

    def write_raw_event(self, raw):
        if self.cut is not None and self.events >= self.cut:
            raise CutShort()
        self.events += 1
        self.write_pieces(raw)

    def write_event(self, data, event=None, eol="\n"):
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        text = (f"event: {event}{eol}" if event else "") + f"data: {payload}{eol}{eol}"
        self.write_raw_event(text.encode())

    def end_stream(self):
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ---- routing --------------------------------------------------------

    def dispatch(self):
        body = self.read_body()
        path, _, query = self.path.partition("?")
        path = path.rstrip("/") or "/"
        api = "openai"
        gemini = re.fullmatch(r"/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)",
                              path)
        if path == "/health":
            route, allowed = "health", "GET"
        elif gemini:
            route, allowed, api = "gemini", "POST", "gemini"
        elif path.endswith("/models") and path.startswith("/v1"):
            route, allowed = "models", "GET"
        elif path.endswith("/chat/completions"):
            route, allowed = "openai", "POST"
        elif path.endswith("/messages"):
            route, allowed, api = "anthropic", "POST", "anthropic"
        elif path.endswith("/responses") and path.startswith("/v1"):
            route, allowed = "responses", "POST"
        elif path.endswith("/embeddings") and path.startswith("/v1"):
            route, allowed = "embeddings", "POST"
        elif self.command in ("GET", "HEAD") and not path.startswith("/v1"):
            # a browser on the printed URL (/, /favicon.ico...): say what is served here
            return self.send_bytes(200, self.index_page(), "text/html; charset=utf-8")
        else:
            return self.send_error_json(404, f"unknown path {self.path}")
        if self.command != allowed and not (allowed == "GET" and self.command == "HEAD"):
            return self.send_error_json(405, f"method {self.command} not allowed on {path}", api,
                                        [("Allow", allowed)])
        if route == "health":
            return self.send_bytes(200, b"ok", "text/plain")
        if route == "models":
            now = int(time.time())
            return self.send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": now, "owned_by": "mock"} for m in MODELS]})

        try:
            s = self.settings()
            raw = self.headers.get("X-Mock-Status", "200")
            if not raw.strip().isdigit():
                raise BadRequest(f"invalid X-Mock-Status header: {raw!r}")
            status = int(raw)
        except BadRequest as e:
            return self.send_error_json(400, str(e), api)
        if s["delay_ms"]:
            time.sleep(s["delay_ms"] / 1000)
        if status != 200:
            if not 200 <= status <= 599:
                return self.send_error_json(400, f"X-Mock-Status out of range: {status}", api)
            return self.send_error_json(status, f"mock error status {status}", api)
        try:
            req = json.loads(body or b"null")
            if not isinstance(req, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as e:
            return self.send_error_json(400, f"invalid JSON body: {e}", api)
        s = self.tokens(s, req)
        try:
            if route == "gemini":
                stream = gemini.group(2) == "streamGenerateContent"
                return self.gemini(req, s, gemini.group(1), stream, "alt=sse" in query.split("&"))
            {"openai": self.openai, "anthropic": self.anthropic, "responses": self.openai_responses,
             "embeddings": self.openai_embeddings}[route](req, s)
        except CutShort:
            # The body ends here, unfinished: no last chunk, the connection closes.
            self.wfile.flush()
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = dispatch

    def handle_one_request(self):
        # A client going away mid-stream is normal (timeouts, cancels); don't
        # spray tracebacks over the test output.
        self.cut, self.split = None, "whole"
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- OpenAI ---------------------------------------------------------

    def openai(self, req, s):
        model = req.get("model") or "mock-model"
        rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        p, c, n = s["prompt_tokens"], s["completion_tokens"], s["chunks"]
        mode = s["usage"] or "last"

        def usage(out):
            return {"prompt_tokens": p, "completion_tokens": out, "total_tokens": p + out,
                    "prompt_tokens_details": {"cached_tokens": s["cached_tokens"]},
                    "completion_tokens_details": {
                        "reasoning_tokens": min(s["reasoning_tokens"], out) if out < c
                        else s["reasoning_tokens"]}}

        if not req.get("stream"):
            resp = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": CHUNK_TEXT * n,
                                             "refusal": None, "annotations": []}}]}
            if mode != "none":
                resp["usage"] = usage(c)
            return self.send_json(200, resp)

        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        # Real OpenAI: with include_usage every chunk has "usage": null and a last chunk with
        # "choices": [] has the usage. The other modes replay what other providers do.
        usage_key = include_usage or mode in ("every", "beside-choices")

        def chunk(delta, finish=None, choices=True, used=None):
            ch = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                  "system_fingerprint": "fp_mock",
                  "choices": [{"index": 0, "delta": delta, "logprobs": None,
                               "finish_reason": finish}] if choices else []}
            if usage_key:
                ch["usage"] = None if used is None or mode == "none" else usage(used)
            return ch

        every = mode == "every"
        self.start_stream()
        self.write_event(chunk({"role": "assistant", "content": "", "refusal": None},
                               used=0 if every else None))
        for i in range(1, n + 1):
            time.sleep(s["chunk_delay_ms"] / 1000)
            self.write_event(chunk({"content": CHUNK_TEXT}, used=running(c, i, n) if every else None))
        beside = mode == "beside-choices"
        self.write_event(chunk({}, "stop", used=c if beside or every else None))
        if (mode == "last" and include_usage) or every:
            self.write_event(chunk(None, choices=False, used=c))
        self.write_event("[DONE]")
        self.end_stream()

    # ---- OpenAI Responses -----------------------------------------------

    def openai_responses(self, req, s):  # (self.responses is http.server's status table)
        model = req.get("model") or "mock-model"
        rid, mid, created = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex, int(time.time())
        p, c, n = s["prompt_tokens"], s["completion_tokens"], s["chunks"]
        text = CHUNK_TEXT * n
        mode = s["usage"] or "last"

        def usage(out):
            if mode == "none":
                return None
            return {"input_tokens": p,
                    "input_tokens_details": {"cached_tokens": s["cached_tokens"]},
                    "output_tokens": out,
                    "output_tokens_details": {"reasoning_tokens": s["reasoning_tokens"]
                                              if out == c else min(s["reasoning_tokens"], out)},
                    "total_tokens": p + out}

        def response(status, output, usage):
            # the response object as the real API returns it (request settings echoed)
            return {"id": rid, "object": "response", "created_at": created, "status": status,
                    "background": False, "error": None, "incomplete_details": None,
                    "instructions": req.get("instructions"),
                    "max_output_tokens": req.get("max_output_tokens"), "max_tool_calls": None,
                    "model": model, "output": output, "parallel_tool_calls": True,
                    "previous_response_id": req.get("previous_response_id"),
                    "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
                    "store": req.get("store", True), "temperature": req.get("temperature", 1.0),
                    "text": {"format": {"type": "text"}, "verbosity": "medium"},
                    "tool_choice": "auto", "tools": [], "top_logprobs": 0,
                    "top_p": req.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
                    "user": None, "metadata": req.get("metadata") or {}}

        def part(t):
            return {"type": "output_text", "annotations": [], "logprobs": [], "text": t}

        def message(status, content):
            return {"id": mid, "type": "message", "status": status, "content": content,
                    "role": "assistant"}

        if not req.get("stream"):
            return self.send_json(200, response("completed", [message("completed", [part(text)])],
                                                usage(c)))

        seq = iter(range(1 << 30))

        def ev(etype, **fields):
            self.write_event({"type": etype, "sequence_number": next(seq), **fields}, etype)

        early = usage(0) if mode == "every" else None
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        self.start_stream()
        ev("response.created", response=response("in_progress", [], early))
        ev("response.in_progress", response=response("in_progress", [], early))
        ev("response.output_item.added", output_index=0, item=message("in_progress", []))
        ev("response.content_part.added", **where, part=part(""))
        for _ in range(n):
            time.sleep(s["chunk_delay_ms"] / 1000)
            ev("response.output_text.delta", **where, delta=CHUNK_TEXT, logprobs=[])
        ev("response.output_text.done", **where, text=text, logprobs=[])
        ev("response.content_part.done", **where, part=part(text))
        done = message("completed", [part(text)])
        ev("response.output_item.done", output_index=0, item=done)
        ev("response.completed", response=response("completed", [done], usage(c)))
        self.end_stream()

    # ---- OpenAI Embeddings ----------------------------------------------

    def openai_embeddings(self, req, s):
        model = req.get("model") or "mock-embedding"
        inputs = req.get("input")
        # a string, a list of strings, a list of token ids, or a list of token-id lists
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and all(isinstance(t, int) for t in inputs)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return self.send_error_json(400, "input must be a string or a non-empty array")
        dims = req.get("dimensions") or 8
        fmt = req.get("encoding_format") or "float"
        if not isinstance(dims, int) or not 1 <= dims <= 4096 or fmt not in ("float", "base64"):
            return self.send_error_json(400, "invalid dimensions or encoding_format")
        data = []
        for i, item in enumerate(inputs):
            seed = sum(json.dumps(item).encode()) + i
            vec = [round(((seed * (k + 7)) % 1000) / 1000 - 0.5, 6) for k in range(dims)]
            emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if fmt == "base64" else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        resp = {"object": "list", "data": data, "model": model}
        if s["usage"] != "none":
            resp["usage"] = {"prompt_tokens": s["prompt_tokens"], "total_tokens": s["prompt_tokens"]}
        self.send_json(200, resp)

    # ---- Anthropic ------------------------------------------------------

    def anthropic(self, req, s):
        model = req.get("model") or "mock-model"
        mid = "msg_" + uuid.uuid4().hex[:24]
        c, n = s["completion_tokens"], s["chunks"]
        mode = s["usage"] or "last"

        def usage(out):
            return {"input_tokens": s["prompt_tokens"],
                    "cache_creation_input_tokens": s["cache_write_tokens"],
                    "cache_read_input_tokens": s["cached_tokens"], "output_tokens": out}

        if not req.get("stream"):
            resp = {"id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": CHUNK_TEXT * n}],
                    "stop_reason": "end_turn", "stop_sequence": None}
            if mode != "none":
                resp["usage"] = dict(usage(c), service_tier="standard")
            return self.send_json(200, resp)

        msg = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None}
        if mode != "none":  # message_start: the input side, output_tokens provisional (1)
            msg["usage"] = dict(usage(1), service_tier="standard")

        def ev(obj):
            self.write_event(obj, obj["type"])

        def delta(out, stop):
            d = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
            if mode != "none":  # cumulative: the totals so far, not an increment
                d["usage"] = usage(out)
            return d

        self.start_stream()
        ev({"type": "message_start", "message": msg})
        ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        ev({"type": "ping"})
        for i in range(1, n + 1):
            time.sleep(s["chunk_delay_ms"] / 1000)
            ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": CHUNK_TEXT}})
            if mode == "every" and i < n:
                ev(delta(running(c, i, n), None))
        ev({"type": "content_block_stop", "index": 0})
        ev(delta(c, "end_turn"))
        ev({"type": "message_stop"})
        self.end_stream()

    # ---- Gemini ---------------------------------------------------------

    def gemini(self, req, s, model, stream, sse):
        rid = uuid.uuid4().hex[:22]
        p, c, n, r = s["prompt_tokens"], s["completion_tokens"], s["chunks"], s["reasoning_tokens"]
        cand = max(c - r, 0)  # thinking is reported beside the candidates, not in them
        # Gemini reports running totals on every chunk unless told otherwise.
        mode = s["usage"] or ("every" if stream else "last")

        def usage(done):
            u = {"promptTokenCount": p, "candidatesTokenCount": done, "totalTokenCount": p + done + r}
            if s["cached_tokens"]:
                u["cachedContentTokenCount"] = s["cached_tokens"]
            u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": p}]
            if r:
                u["thoughtsTokenCount"] = r
            return u

        def response(text, finish, used):
            cand_obj = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finish:
                cand_obj["finishReason"] = "STOP"
            out = {"candidates": [cand_obj]}
            if used is not None and mode != "none":
                out["usageMetadata"] = usage(used)
            out["modelVersion"] = model
            out["responseId"] = rid
            return out

        if not stream:
            return self.send_json(200, response(CHUNK_TEXT * n, True, cand))

        # One response per content chunk (at least one: the last carries finishReason).
        steps = max(n, 1)
        if sse:
            self.start_stream()
        else:
            self.start_stream("application/json")
        for i in range(1, steps + 1):
            time.sleep(s["chunk_delay_ms"] / 1000)
            last = i == steps
            used = cand if last else (running(cand, i, steps) if mode == "every" else None)
            obj = response(CHUNK_TEXT if n else "", last, used)
            if sse:  # Google's SSE lines end in CRLF
                self.write_event(obj, eol="\r\n")
            else:  # a JSON array, one element at a time
                text = json.dumps(obj, separators=(",", ":"))
                self.write_raw_event((("[" if i == 1 else ",\r\n") + text + ("]" if last else "")).encode())
        self.end_stream()


def main():
    p = argparse.ArgumentParser(description="Mock OpenAI/Anthropic/Gemini LLM upstream")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port (printed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="default: the words of the request's text")
    p.add_argument("--completion-tokens", type=int, default=None,
                   help="default: one per content chunk")
    p.add_argument("--cached-tokens", type=int, default=0)
    p.add_argument("--reasoning-tokens", type=int, default=0)
    p.add_argument("--cache-write-tokens", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0, help="sleep before responding")
    p.add_argument("--chunk-delay-ms", type=int, default=5, help="sleep before each content chunk")
    p.add_argument("--chunks", type=int, default=4, help="content chunks per stream")
    p.add_argument("--seed", type=int, default=0, help="seed of X-Mock-Split: random")
    p.add_argument("--quiet", action="store_true", help="no per-request logging")
    args = p.parse_args()

    Handler.args = args
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True  # in-flight streams must not block exit

    def stop(signum, frame):
        raise KeyboardInterrupt  # unwinds serve_forever in the main thread

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"mock-llm listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
