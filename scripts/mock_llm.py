#!/usr/bin/env python3
"""Mock LLM provider used as an upstream for the gateway-metrics nginx module.

Speaks just enough of the OpenAI Chat Completions, Responses and Embeddings
APIs and of the Anthropic Messages API (JSON and SSE streaming) for end-to-end
tests, in their real wire formats.  Standard library only.

  POST /v1/chat/completions   OpenAI Chat Completions (stream, stream_options.include_usage)
  POST /v1/responses          OpenAI Responses (stream: response.* events)
  POST /v1/embeddings         OpenAI Embeddings (encoding_format float or base64)
  POST /v1/messages           Anthropic Messages (stream: message_start ... message_stop)
  GET  /v1/models             the model list
  GET  /health                "ok"
  GET  any other path outside /v1/ (/, /favicon.ico...): a small page saying all this

Every CLI default can be overridden per request with X-Mock-* headers:
  X-Mock-Prompt-Tokens, X-Mock-Completion-Tokens, X-Mock-Cached-Tokens,
  X-Mock-Reasoning-Tokens, X-Mock-Delay-Ms, X-Mock-Chunk-Delay-Ms,
  X-Mock-Chunks, X-Mock-Status (error status + error JSON),
  X-Mock-No-Usage: 1 (omit usage everywhere),
  X-Mock-Echo-Headers: 1 (the request headers the mock received, as a JSON
  object in the X-Mock-Request-Headers response header: what a gateway
  forwards).
The prompt/completion/cached/reasoning numbers are the usage of every API:
Responses reports them as input_tokens/output_tokens/..._details, Embeddings
as prompt_tokens (= total_tokens), Anthropic as input_tokens/output_tokens/
cache_read_input_tokens.

Timing of a streamed response: headers (and, for Anthropic, message_start and
content_block_start; for OpenAI, a role-only chunk; for Responses,
response.created, response.in_progress, response.output_item.added and
response.content_part.added) are flushed after delay-ms; every content chunk is
preceded by a chunk-delay-ms sleep; the tail events follow immediately.  So
first byte ~ delay, first token ~ delay + chunk_delay, total ~ delay + chunks *
chunk_delay.
"""
import argparse
import base64
import html
import json
import socket
import signal
import struct
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK_TEXT = "tok "
MODELS = ["mock-gpt-4o", "mock-gpt-4o-mini", "mock-claude-sonnet"]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error",
               413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 502: "api_error",
               503: "overloaded_error", 529: "overloaded_error"}
# request header -> settings key (same name as the CLI option's attribute)
INT_HEADERS = {
    "X-Mock-Prompt-Tokens": "prompt_tokens",
    "X-Mock-Completion-Tokens": "completion_tokens",
    "X-Mock-Cached-Tokens": "cached_tokens",
    "X-Mock-Reasoning-Tokens": "reasoning_tokens",
    "X-Mock-Delay-Ms": "delay_ms",
    "X-Mock-Chunk-Delay-Ms": "chunk_delay_ms",
    "X-Mock-Chunks": "chunks",
}


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # enables keep-alive for Content-Length replies

    def setup(self):
        super().setup()
        # Stream chunks must leave at once, not wait for a delayed ACK (Nagle): TTFT depends on it.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server_version = "mock-llm/1.0"
    args = None  # set in main()

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
        s["no_usage"] = self.headers.get("X-Mock-No-Usage", "").strip().lower() in ("1", "true", "yes")
        return s

    def send_bytes(self, status, body, ctype="application/json", extra=()):
        if status in (204, 304):  # these must not carry a body
            body = b""
        self.send_response(status)
        for name, value in [*extra, *self.echo_headers()]:
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, obj, extra=()):
        self.send_bytes(status, json.dumps(obj, separators=(",", ":")).encode(), extra=extra)

    def send_error_json(self, status, message, anthropic=False, extra=()):
        etype = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": etype}}
        if anthropic:  # Anthropic wraps the same shape with a top-level type
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
            "GET  /v1/models             model list",
            "GET  /health                liveness"))
        return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>mock LLM</title></head>"
                f"<body><h1>mock LLM provider</h1><p>{host} is the mock upstream of the "
                f"gateway-metrics demo (scripts/mock_llm.py). It serves:</p><ul>{rows}</ul>"
                f"<p>Token usage and timing are set per request with X-Mock-* headers "
                f"(X-Mock-Prompt-Tokens, X-Mock-Completion-Tokens, X-Mock-Chunks, X-Mock-Delay-Ms...). "
                f"Send API traffic through the gateway to see it in its /metrics.</p>"
                f"</body></html>\n").encode()

    def start_stream(self):
        """Send SSE headers.  HTTP/1.1 clients (nginx with proxy_http_version
        1.1) get chunked encoding and keep-alive; HTTP/1.0 clients (nginx's
        default to upstreams) get a close-delimited body."""
        self.chunked = self.request_version == "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        for name, value in self.echo_headers():
            self.send_header(name, value)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()  # wfile is unbuffered, so this hits the socket now

    def write_event(self, data, event=None):
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        text = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
        raw = text.encode()
        if self.chunked:
            raw = b"%x\r\n%s\r\n" % (len(raw), raw)
        self.wfile.write(raw)
        self.wfile.flush()

    def end_stream(self):
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ---- routing --------------------------------------------------------

    def dispatch(self):
        body = self.read_body()
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            route, allowed = "health", "GET"
        elif path.endswith("/models") and path.startswith("/v1"):
            route, allowed = "models", "GET"
        elif path.endswith("/chat/completions"):
            route, allowed = "openai", "POST"
        elif path.endswith("/messages"):
            route, allowed = "anthropic", "POST"
        elif path.endswith("/responses") and path.startswith("/v1"):
            route, allowed = "responses", "POST"
        elif path.endswith("/embeddings") and path.startswith("/v1"):
            route, allowed = "embeddings", "POST"
        elif self.command in ("GET", "HEAD") and not path.startswith("/v1"):
            # a browser on the printed URL (/, /favicon.ico...): say what is served here
            return self.send_bytes(200, self.index_page(), "text/html; charset=utf-8")
        else:
            return self.send_error_json(404, f"unknown path {self.path}")
        anthropic = route == "anthropic"
        if self.command != allowed and not (allowed == "GET" and self.command == "HEAD"):
            return self.send_error_json(405, f"method {self.command} not allowed on {path}", anthropic,
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
            return self.send_error_json(400, str(e), anthropic)
        if s["delay_ms"]:
            time.sleep(s["delay_ms"] / 1000)
        if status != 200:
            if not 200 <= status <= 599:
                return self.send_error_json(400, f"X-Mock-Status out of range: {status}", anthropic)
            return self.send_error_json(status, f"mock error status {status}", anthropic)
        try:
            req = json.loads(body or b"null")
            if not isinstance(req, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as e:
            return self.send_error_json(400, f"invalid JSON body: {e}", anthropic)
        {"openai": self.openai, "anthropic": self.anthropic, "responses": self.openai_responses,
         "embeddings": self.openai_embeddings}[route](req, s)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = dispatch

    def handle_one_request(self):
        # A client going away mid-stream is normal (timeouts, cancels); don't
        # spray tracebacks over the test output.
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- OpenAI ---------------------------------------------------------

    def openai(self, req, s):
        model = req.get("model") or "mock-model"
        rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        usage = None if s["no_usage"] else {
            "prompt_tokens": s["prompt_tokens"],
            "completion_tokens": s["completion_tokens"],
            "total_tokens": s["prompt_tokens"] + s["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": s["cached_tokens"]},
            "completion_tokens_details": {"reasoning_tokens": s["reasoning_tokens"]},
        }
        if not req.get("stream"):
            resp = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": CHUNK_TEXT * s["chunks"]}}]}
            if usage is not None:
                resp["usage"] = usage
            return self.send_json(200, resp)

        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True and usage is not None

        def chunk(delta, finish=None, choices=True):
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
            if include_usage:  # real OpenAI puts "usage": null on every other chunk
                c["usage"] = None
            return c

        self.start_stream()
        self.write_event(chunk({"role": "assistant", "content": ""}))
        for _ in range(s["chunks"]):
            time.sleep(s["chunk_delay_ms"] / 1000)
            self.write_event(chunk({"content": CHUNK_TEXT}))
        self.write_event(chunk({}, "stop"))
        if include_usage:
            final = chunk(None, choices=False)
            final["usage"] = usage
            self.write_event(final)
        self.write_event("[DONE]")
        self.end_stream()

    # ---- OpenAI Responses -----------------------------------------------

    def openai_responses(self, req, s):  # (self.responses is http.server's status table)
        model = req.get("model") or "mock-model"
        rid, mid, created = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex, int(time.time())
        text = CHUNK_TEXT * s["chunks"]
        usage = None if s["no_usage"] else {
            "input_tokens": s["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": s["cached_tokens"]},
            "output_tokens": s["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": s["reasoning_tokens"]},
            "total_tokens": s["prompt_tokens"] + s["completion_tokens"],
        }

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
            return self.send_json(200, response("completed", [message("completed", [part(text)])], usage))

        seq = iter(range(1 << 30))

        def ev(etype, **fields):
            self.write_event({"type": etype, "sequence_number": next(seq), **fields}, etype)

        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        self.start_stream()
        ev("response.created", response=response("in_progress", [], None))
        ev("response.in_progress", response=response("in_progress", [], None))
        ev("response.output_item.added", output_index=0, item=message("in_progress", []))
        ev("response.content_part.added", **where, part=part(""))
        for _ in range(s["chunks"]):
            time.sleep(s["chunk_delay_ms"] / 1000)
            ev("response.output_text.delta", **where, delta=CHUNK_TEXT, logprobs=[])
        ev("response.output_text.done", **where, text=text, logprobs=[])
        ev("response.content_part.done", **where, part=part(text))
        done = message("completed", [part(text)])
        ev("response.output_item.done", output_index=0, item=done)
        ev("response.completed", response=response("completed", [done], usage))
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
        if not s["no_usage"]:
            resp["usage"] = {"prompt_tokens": s["prompt_tokens"], "total_tokens": s["prompt_tokens"]}
        self.send_json(200, resp)

    # ---- Anthropic ------------------------------------------------------

    def anthropic(self, req, s):
        model = req.get("model") or "mock-model"
        mid = "msg_" + uuid.uuid4().hex[:24]
        usage = None if s["no_usage"] else {
            "input_tokens": s["prompt_tokens"], "output_tokens": s["completion_tokens"],
            "cache_read_input_tokens": s["cached_tokens"]}
        if not req.get("stream"):
            resp = {"id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": CHUNK_TEXT * s["chunks"]}],
                    "stop_reason": "end_turn", "stop_sequence": None}
            if usage is not None:
                resp["usage"] = usage
            return self.send_json(200, resp)

        msg = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None}
        if usage is not None:  # message_start reports input side, output_tokens 1
            msg["usage"] = dict(usage, output_tokens=1)
        delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        if usage is not None:
            delta["usage"] = {"output_tokens": s["completion_tokens"]}

        def ev(obj):
            self.write_event(obj, obj["type"])

        self.start_stream()
        ev({"type": "message_start", "message": msg})
        ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        for _ in range(s["chunks"]):
            time.sleep(s["chunk_delay_ms"] / 1000)
            ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": CHUNK_TEXT}})
        ev({"type": "content_block_stop", "index": 0})
        ev(delta)
        ev({"type": "message_stop"})
        self.end_stream()


def main():
    p = argparse.ArgumentParser(description="Mock OpenAI/Anthropic LLM upstream")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port (printed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prompt-tokens", type=int, default=12)
    p.add_argument("--completion-tokens", type=int, default=24)
    p.add_argument("--cached-tokens", type=int, default=0)
    p.add_argument("--reasoning-tokens", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0, help="sleep before responding")
    p.add_argument("--chunk-delay-ms", type=int, default=5, help="sleep before each content chunk")
    p.add_argument("--chunks", type=int, default=4, help="content chunks per stream")
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
