#!/usr/bin/env python3
"""Writes the response-usage corpus: provider response bodies in their exact wire formats
(`<provider>_<case>.body`) and their expected reading (`cases.json`, one object per line inside
a JSON array). core/tests/usage.rs replays every body through UsageReader; integration tests can
replay them through nginx. Rerun after editing: python3 tests/usage_corpus/make_corpus.py

cases.json fields: file, format (auto|openai|anthropic|gemini: the reader's Format), content_type,
complete (false: the body is cut, finish(false)), outcome (usage|partial|absent|aborted|malformed),
input/output/cached_input/cache_write/reasoning (null without usage), model (null if none),
first_content_at (length of the shortest prefix whose feeding dispatches the first event with
generated content; null for none and for JSON bodies).
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SSE = "text/event-stream"
JSON = "application/json"
cases = []


def compact(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)


def gem(o):
    return json.dumps(o, separators=(",", ": "), ensure_ascii=False)


class Stream:
    """An SSE body built event by event, remembering where the first content event ends."""

    def __init__(self, nl="\n"):
        self.out = bytearray()
        self.nl = nl
        self.first = None

    def raw(self, s):
        self.out += s.encode() if isinstance(s, str) else s
        return self

    def event(self, data, name=None, content=False, nl=None):
        nl = nl or self.nl
        text = ""
        if name is not None:
            text += "event: " + name + nl
        for line in data.split("\n"):
            text += "data: " + line + nl
        self.out += text.encode()
        if content and self.first is None:
            # The blank line's first byte dispatches the event.
            self.first = len(self.out) + 1
        self.out += nl.encode()
        return self


def add(name, body, tokens=None, outcome=None, model=None, first=None, fmt="auto", ctype=SSE, complete=True):
    if isinstance(body, Stream):
        first = body.first if first is None else (first or None)
        body = bytes(body.out)
    elif isinstance(body, str):
        body = body.encode()
    if outcome is None:
        outcome = ("usage" if complete else "partial") if tokens else ("absent" if complete else "aborted")
    keys = ["input", "output", "cached_input", "cache_write", "reasoning"]
    t = dict(zip(keys, tokens)) if tokens else dict.fromkeys(keys)
    with open(os.path.join(HERE, name + ".body"), "wb") as f:
        f.write(body)
    cases.append(dict(file=name + ".body", format=fmt, content_type=ctype, complete=complete, outcome=outcome,
                      **t, model=model, first_content_at=first if ctype == SSE else None))


# ---------------------------------------------------------------- OpenAI Chat Completions
CHAT_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
CHAT_MODEL = "gpt-4o-mini-2024-07-18"


def chunk(delta, finish=None, usage=None, choices=True, with_usage_key=True, model=CHAT_MODEL):
    o = {"id": CHAT_ID, "object": "chat.completion.chunk", "created": 1741569952, "model": model,
         "service_tier": "default", "system_fingerprint": "fp_06737a9306",
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if with_usage_key:
        o["usage"] = usage
    return compact(o)


CHAT_USAGE = {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
CHAT_TOKENS = (1117, 46, 1024, 0, 0)


def chat_stream(nl="\n", comments=False, multiline=False, big=None, cut=False, usage=True, bom=False):
    s = Stream(nl)
    if bom:
        s.raw(b"\xef\xbb\xbf")
    if comments:
        s.raw(": OPENROUTER PROCESSING" + nl + nl).raw("retry: 3000" + nl + "id: 1" + nl)
    s.event(chunk({"role": "assistant", "content": "", "refusal": None}))
    if comments:
        s.raw(":" + nl + nl)
    words = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
    if big is not None:
        words = [big] + words
    for i, w in enumerate(words):
        data = chunk({"content": w})
        if multiline and i == 1:
            data = data.replace(',"choices"', ',\n"choices"').replace('"delta":', '"delta":\n')
        s.event(data, content=True)
        if comments and i == 3:
            s.raw(": keep-alive" + nl + nl)
    if cut:
        return s
    s.event(chunk({}, finish="stop"))
    if usage:
        s.event(chunk(None, usage=CHAT_USAGE, choices=False))
    s.event("[DONE]")
    return s


add("openai_chat_stream", chat_stream(), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_crlf", chat_stream("\r\n"), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_cr", chat_stream("\r"), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_comments", chat_stream(comments=True), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_multiline_data", chat_stream(multiline=True), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_bom", chat_stream(bom=True), CHAT_TOKENS, model=CHAT_MODEL)
add("openai_chat_stream_no_usage", chat_stream(usage=False), None, model=CHAT_MODEL)
add("openai_chat_stream_cut", chat_stream(cut=True), None, model=CHAT_MODEL, complete=False)
add("openai_chat_stream_fixed_openai", chat_stream(), CHAT_TOKENS, model=CHAT_MODEL, fmt="openai")
add("openai_chat_stream_read_as_gemini", chat_stream(), None, fmt="gemini", first=0)

# A delta whose text quotes usage JSON (escaped). core/tests/usage.rs builds the 1 MB variant.
quoted = 'The API said "usage": {"prompt_tokens": 999999, "completion_tokens": 999999} and\n\t\\ more. '
add("openai_chat_stream_quoted_usage", chat_stream(big=quoted * 8), CHAT_TOKENS, model=CHAT_MODEL)

# Usage beside non-empty choices, "usage":null chunks, tool calls first, reasoning tokens, and a
# usage key inside tool-call arguments (a string) that must not count.
s = Stream()
s.event(chunk({"role": "assistant", "content": None}))
s.event(chunk({"content": ""}))
tool = {"tool_calls": [{"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}]}
s.event(chunk(tool), content=True)
s.event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"usage\": {\"prompt_tokens\": 7},"}}]}))
s.event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"location\": \"Paris\"}"}}]}))
s.event(chunk({}, finish="tool_calls", usage={"prompt_tokens": 82, "completion_tokens": 298, "total_tokens": 380,
                                              "completion_tokens_details": {"reasoning_tokens": 256}}))
s.event("[DONE]")
add("openai_chat_stream_tool_calls_usage_beside_choices", s, (82, 298, 0, 0, 256), model=CHAT_MODEL)

# Latest non-null usage wins (a proxy reporting running usage on every chunk).
s = Stream()
s.event(chunk({"role": "assistant", "content": "Hi"}, usage={"prompt_tokens": 10, "completion_tokens": 1}), content=True)
s.event(chunk({"content": " there"}, usage={"prompt_tokens": 10, "completion_tokens": 2}))
s.event(chunk({"content": "!"}, usage=None))
s.event(chunk({}, finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 3}))
add("openai_chat_stream_running_usage", s, (10, 3, 0, 0, 0), model=CHAT_MODEL)

# The last event ends at EOF without blank line.
s = chat_stream(usage=False)
body = bytes(s.out).rsplit(b"data: [DONE]", 1)[0] + b"data: " + chunk(None, usage=CHAT_USAGE, choices=False).encode()
add("openai_chat_stream_last_event_at_eof", body, CHAT_TOKENS, model=CHAT_MODEL, first=s.first)

chat_json = {"id": CHAT_ID, "object": "chat.completion", "created": 1741569952, "model": "gpt-4o-2024-08-06",
             "choices": [{"index": 0, "message": {"role": "assistant",
                                                  "content": "The word \"usage\" here is text: {\"usage\": {\"prompt_tokens\": 5}}",
                                                  "refusal": None, "annotations": [{"type": "x", "usage": {"prompt_tokens": 5}}]},
                          "logprobs": None, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                       "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                       "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                     "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
             "service_tier": "default", "system_fingerprint": "fp_50cad350e4"}
add("openai_chat_json", json.dumps(chat_json, indent=2), (19, 10, 0, 0, 0), model="gpt-4o-2024-08-06", ctype=JSON)
first = {"usage": chat_json["usage"], **{k: v for k, v in chat_json.items() if k != "usage"}}
first["model"] = "gpt-4o\\/mini \u00e9"  # written escaped by compact(): "gpt-4o\\/mini é"
body = compact(first).replace("gpt-4o\\\\/mini", "gpt-4o\\/mini").replace("\u00e9", "\\u00e9")
add("openai_chat_json_usage_first", body, (19, 10, 0, 0, 0), model="gpt-4o/mini \u00e9", ctype=JSON)
cut = compact(chat_json)
add("openai_chat_json_cut", cut[: cut.index('"usage":{"prompt')], None, model="gpt-4o-2024-08-06", ctype=JSON, complete=False)
add("openai_chat_json_cut_after_usage", compact(first).replace("gpt-4o\\\\/mini \u00e9", "m")[:520],
    (19, 10, 0, 0, 0), model="m", ctype=JSON, complete=False)
bad = dict(chat_json, usage={"prompt_tokens": -5, "completion_tokens": 2.5, "total_tokens": "x"})
add("openai_chat_json_invalid_counts", compact(bad), None, outcome="malformed", model="gpt-4o-2024-08-06", ctype=JSON)
half = dict(chat_json, usage={"prompt_tokens": 12, "completion_tokens": 10000000000000, "total_tokens": 12})
add("openai_chat_json_absurd_count", compact(half), (12, 0, 0, 0, 0), model="gpt-4o-2024-08-06", ctype=JSON)
add("openai_chat_json_no_usage", compact({k: v for k, v in chat_json.items() if k != "usage"}), None,
    model="gpt-4o-2024-08-06", ctype=JSON)

# ---------------------------------------------------------------- OpenAI Responses
RESP_MODEL = "o4-mini-2025-04-16"


def response(status, output, usage):
    return {"id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", "object": "response",
            "created_at": 1741476542, "status": status, "error": None, "incomplete_details": None,
            "instructions": None, "max_output_tokens": None, "model": RESP_MODEL, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": "medium", "summary": None}, "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": None, "metadata": {}}


RESP_USAGE = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 12}, "output_tokens": 87,
              "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123}


def msg_item(text):
    return {"type": "message", "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def responses_stream(final="response.completed", text="Hi there! \"usage\": {\"input_tokens\": 5}", usage=RESP_USAGE):
    s = Stream()
    seq = [0]

    def ev(kind, content=False, **fields):
        o = {"type": kind, "sequence_number": seq[0], **fields}
        seq[0] += 1
        s.event(compact(o), name=kind, content=content)

    ev("response.created", response=response("in_progress", [], None))
    ev("response.in_progress", response=response("in_progress", [], None))
    ev("response.output_item.added", output_index=0, item={"type": "reasoning", "id": "rs_1", "summary": []})
    ev("response.reasoning_summary_text.delta", item_id="rs_1", output_index=0, summary_index=0, delta="", obfuscation="x")
    ev("response.output_item.done", output_index=1, item={"type": "reasoning", "id": "rs_1", "summary": []})
    ev("response.content_part.added", item_id="msg_1", output_index=1, content_index=0,
       part={"type": "output_text", "text": "", "annotations": []})
    for i, piece in enumerate(["Hi", " there", "!"]):
        ev("response.output_text.delta", content=True, item_id="msg_1", output_index=1, content_index=0, delta=piece,
           logprobs=[])
    ev("response.output_text.done", item_id="msg_1", output_index=1, content_index=0, text=text, logprobs=[])
    ev(final, response=response(final.split(".")[1], [msg_item(text)], usage))
    return s


add("openai_responses_stream", responses_stream(), (36, 87, 12, 0, 64), model=RESP_MODEL)
add("openai_responses_stream_incomplete", responses_stream("response.incomplete"), (36, 87, 12, 0, 64), model=RESP_MODEL)
add("openai_responses_stream_failed", responses_stream("response.failed", usage={"input_tokens": 36, "output_tokens": 0}),
    (36, 0, 0, 0, 0), model=RESP_MODEL)
s = responses_stream()
cut = bytes(s.out)[: bytes(s.out).index(b"event: response.output_text.done")]
add("openai_responses_stream_cut", cut, None, model=RESP_MODEL, first=s.first, complete=False)
add("openai_responses_json", json.dumps(response("completed", [msg_item("Hello \"usage\": {\"input_tokens\": 1}")], RESP_USAGE)),
    (36, 87, 12, 0, 64), model=RESP_MODEL, ctype=JSON)

# ---------------------------------------------------------------- Anthropic Messages
ANT_MODEL = "claude-sonnet-4-5-20250929"


def ant_stream(start_usage, delta_usage, cut_after=None, thinking=False, tool=False, error=False):
    s = Stream()
    msg = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": ANT_MODEL,
           "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    s.event(compact({"type": "message_start", "message": msg}), name="message_start")
    if cut_after == "start":
        return s
    if thinking:
        s.event(compact({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}), name="content_block_start")
        s.event(compact({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}}), name="content_block_delta", content=True)
        s.event(compact({"type": "content_block_stop", "index": 0}), name="content_block_stop")
    if tool:
        s.event(compact({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}), name="content_block_start")
        s.event(compact({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"usage\": {\"output_tokens\": 99"}}), name="content_block_delta", content=True)
    s.event(compact({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), name="content_block_start")
    s.event(compact({"type": "ping"}), name="ping")
    for w in ["Hello", "! \"usage\": {\"output_tokens\": 99}", " How can I help?"]:
        s.event(compact({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
                name="content_block_delta", content=True)
    if cut_after == "deltas":
        return s
    if error:
        s.event(compact({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}), name="error")
        return s
    s.event(compact({"type": "content_block_stop", "index": 0}), name="content_block_stop")
    s.event(compact({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": delta_usage}), name="message_delta")
    s.event(compact({"type": "message_stop"}), name="message_stop")
    return s


START = {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "output_tokens": 1,
         "service_tier": "standard"}
add("anthropic_stream", ant_stream(START, {"output_tokens": 15}), (25, 15, 0, 0, 0), model=ANT_MODEL)
add("anthropic_stream_fixed", ant_stream(START, {"output_tokens": 15}), (25, 15, 0, 0, 0), model=ANT_MODEL, fmt="anthropic")
add("anthropic_stream_cut_after_start", ant_stream(START, None, cut_after="start"), (25, 0, 0, 0, 0), model=ANT_MODEL,
    complete=False)
add("anthropic_stream_cut_after_deltas", ant_stream(START, None, cut_after="deltas"), (25, 0, 0, 0, 0), model=ANT_MODEL,
    complete=False)
add("anthropic_stream_error_event", ant_stream(START, None, error=True), (25, 0, 0, 0, 0), model=ANT_MODEL)
CACHE_START = {"input_tokens": 4, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 20000,
               "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500}, "output_tokens": 2}
add("anthropic_stream_cache", ant_stream(CACHE_START, {"output_tokens": 503}, thinking=True, tool=True),
    (21504, 503, 20000, 1500, 0), model=ANT_MODEL)
# Usage only on message_delta, input and cache fields included (and overriding message_start).
add("anthropic_stream_usage_on_delta", ant_stream({"output_tokens": 1}, {"input_tokens": 30, "cache_read_input_tokens": 100,
                                                                        "cache_creation_input_tokens": 7, "output_tokens": 42}),
    (137, 42, 100, 7, 0), model=ANT_MODEL)
ant_json = {"id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant", "model": ANT_MODEL,
            "content": [{"type": "text", "text": "I'll check. \"usage\": {\"input_tokens\": 1}"},
                        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "record",
                         "input": {"usage": {"input_tokens": 999, "output_tokens": 999}, "model": "not-this"}}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 503}}
add("anthropic_json", json.dumps(ant_json, indent=1), (2095, 503, 0, 0, 0), model=ANT_MODEL, ctype=JSON)
split = dict(ant_json, usage={"input_tokens": 10, "cache_read_input_tokens": 5,
                              "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 40},
                              "output_tokens": 7})
add("anthropic_json_cache_split", compact(split), (355, 7, 5, 340, 0), model=ANT_MODEL, ctype=JSON)

# ---------------------------------------------------------------- Google Gemini
GEM_MODEL = "gemini-2.5-flash"


def gchunk(parts, usage, finish=None):
    cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return gem({"candidates": [cand], "usageMetadata": usage, "modelVersion": GEM_MODEL,
                "responseId": "gtUaaI2wL8Wd1dkP_YnAkA8"})


def gusage(prompt, cand=None, thoughts=None, cached=None):
    u = {"promptTokenCount": prompt}
    if cand is not None:
        u["candidatesTokenCount"] = cand
    u["totalTokenCount"] = prompt + (cand or 0) + (thoughts or 0)
    if cached is not None:
        u["cachedContentTokenCount"] = cached
    u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if thoughts is not None:
        u["thoughtsTokenCount"] = thoughts
    return u


s = Stream("\r\n")
s.event(gchunk([{"text": "Hello"}], gusage(9, 1, 120)), content=True)
s.event(gchunk([{"text": " world, \"usageMetadata\": {\"promptTokenCount\": 1}"}], gusage(9, 8, 120)))
s.event(gchunk([{"text": "!"}], gusage(9, 12, 120, cached=4), finish="STOP"))
add("gemini_stream", s, (9, 132, 4, 0, 120), model=GEM_MODEL)
s = Stream("\r\n")
s.event(gchunk([{"text": ""}], gusage(9)))
s.event(gchunk([{"functionCall": {"name": "get_weather", "args": {"usageMetadata": {"promptTokenCount": 5}}}}],
               gusage(31, 5), finish="STOP"), content=True)
add("gemini_stream_function_call", s, (31, 5, 0, 0, 0), model=GEM_MODEL)
s = Stream("\r\n")
s.event(gchunk([{"text": "Hi"}], gusage(9, 1)), content=True)
s.event(gchunk([{"text": " there"}], gusage(9, 2)))
add("gemini_stream_cut", bytes(s.out) + gchunk([{"text": "!"}], gusage(9, 3)).encode()[:60], (9, 2, 0, 0, 0),
    model=GEM_MODEL, first=s.first, complete=False)
gjson = json.loads(gchunk([{"text": "A haiku:\n\"usage\""}], gusage(8, 17, 48), finish="STOP"))
add("gemini_json", json.dumps(gjson, indent=2), (8, 65, 0, 0, 48), model=GEM_MODEL, ctype=JSON)
arr = [json.loads(gchunk([{"text": "Once"}], gusage(12, 1))), json.loads(gchunk([{"text": " upon"}], gusage(12, 2))),
       json.loads(gchunk([{"text": " a time"}], gusage(12, 5, cached=8), finish="STOP"))]
add("gemini_json_array", "[" + ",\r\n".join(gem(o) for o in arr) + "]", (12, 5, 8, 0, 0), model=GEM_MODEL, ctype=JSON)

# ---------------------------------------------------------------- not provider bodies
add("garbage_json", "<html><body>502 Bad Gateway</body></html>\n", None, outcome="malformed", ctype=JSON)
add("garbage_stream", "data: upstream error\n\ndata: {\"broken\": \n\n", None, outcome="malformed")
add("garbage_stream_lines", "hello world\nthis is not an event stream\n", None)
add("empty_json", "", None, ctype=JSON)
add("empty_stream", "", None)
add("empty_stream_cut", "", None, complete=False)

with open(os.path.join(HERE, "cases.json"), "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")
print(len(cases), "cases")
