-- gateway.usage: token usage as the LLM provider reported it, from a response body.
--
-- Pure Lua (only cjson.safe; no ngx.*), so it can be driven from tests chunk by chunk.
--
--   usage.normalize(u)      provider `usage` object -> {input, output, cached, reasoning} | nil
--   usage.from_json(text)   a whole JSON response body -> normalized usage | nil
--   usage.from_tail(text)   the last `"usage":{...}` object in a (truncated) JSON body | nil
--   usage.new_stream()      an SSE parser: s:feed(chunk) -> true when this chunk carried the
--                           first content token; s:finish(); s:result() -> normalized | nil
--
-- Normalized numbers follow the module's convention: `cached` is the part of `input` served
-- from the provider's prompt cache and `reasoning` the part of `output` spent on reasoning.
--
--   OpenAI Chat Completions   input = prompt_tokens (already includes cached_tokens),
--                             cached = prompt_tokens_details.cached_tokens,
--                             output = completion_tokens,
--                             reasoning = completion_tokens_details.reasoning_tokens
--   OpenAI Responses          input_tokens (includes input_tokens_details.cached_tokens),
--                             output_tokens, output_tokens_details.reasoning_tokens
--   Anthropic Messages        input_tokens does NOT include the cache: the total prompt is
--                             input = input_tokens + cache_read_input_tokens
--                                     + cache_creation_input_tokens,
--                             cached = cache_read_input_tokens, output = output_tokens
--
-- Numbers are never estimated: a count that is missing or not a non-negative integer is 0, and
-- a usage object without any count is no usage at all (nil).

local cjson = require "cjson.safe"

local type = type
local find = string.find
local sub = string.sub
local byte = string.byte
local concat = table.concat
local floor = math.floor
local decode = cjson.decode

local _M = { _VERSION = "0.1.0" }

-- Longest partial SSE line kept between chunks; a longer one is skipped (it cannot be an event
-- this parser needs: usage events are a few hundred bytes).
_M.MAX_LINE = 1024 * 1024

local MAX_COUNT = 1e12

-- A provider token count, or nil when it is not a non-negative integer.
local function count(v)
    if type(v) ~= "number" or v ~= v or v < 0 or v > MAX_COUNT or floor(v) ~= v then
        return nil
    end
    return v
end

local function field(t, k)
    if type(t) ~= "table" then
        return nil
    end
    return count(t[k])
end

--- Normalizes a provider's `usage` object (see the header). Returns nil when it has no counts.
function _M.normalize(u)
    if type(u) ~= "table" then
        return nil
    end
    local input, output, cached, reasoning
    if u.prompt_tokens ~= nil or u.completion_tokens ~= nil then
        -- OpenAI Chat Completions / Completions / Embeddings
        input = count(u.prompt_tokens)
        output = count(u.completion_tokens)
        cached = field(u.prompt_tokens_details, "cached_tokens")
        reasoning = field(u.completion_tokens_details, "reasoning_tokens")
    elseif u.input_tokens_details ~= nil or u.output_tokens_details ~= nil
        or (u.total_tokens ~= nil and u.cache_read_input_tokens == nil
            and u.cache_creation_input_tokens == nil) then
        -- OpenAI Responses API
        input = count(u.input_tokens)
        output = count(u.output_tokens)
        cached = field(u.input_tokens_details, "cached_tokens")
        reasoning = field(u.output_tokens_details, "reasoning_tokens")
    else
        -- Anthropic Messages
        local fresh = count(u.input_tokens)
        local read = count(u.cache_read_input_tokens)
        local created = count(u.cache_creation_input_tokens)
        if fresh or read or created then
            input = (fresh or 0) + (read or 0) + (created or 0)
        end
        cached = read
        output = count(u.output_tokens)
    end
    if not (input or output or cached or reasoning) then
        return nil
    end
    return {
        input = input or 0,
        output = output or 0,
        cached = cached or 0,
        reasoning = reasoning or 0,
    }
end

--- Usage of a whole (non-streamed) JSON response body.
function _M.from_json(text)
    if type(text) ~= "string" or text == "" then
        return nil
    end
    local obj = decode(text)
    if type(obj) ~= "table" then
        return nil
    end
    if type(obj.usage) == "table" then
        return _M.normalize(obj.usage)
    end
    -- OpenAI Responses API wraps the response object in some envelopes.
    if type(obj.response) == "table" then
        return _M.normalize(obj.response.usage)
    end
    return nil
end

-- End (inclusive) of the JSON object starting at `start` ('{'), or nil when it is cut off.
local function object_end(text, start)
    local depth, i, n = 0, start, #text
    while i <= n do
        local c = byte(text, i)
        if c == 34 then -- '"': skip the string, honouring backslash escapes
            i = i + 1
            while i <= n do
                local d = byte(text, i)
                if d == 92 then
                    i = i + 1
                elseif d == 34 then
                    break
                end
                i = i + 1
            end
        elseif c == 123 then
            depth = depth + 1
        elseif c == 125 then
            depth = depth - 1
            if depth == 0 then
                return i
            end
        end
        i = i + 1
    end
    return nil
end

--- The last complete `"usage": {...}` object in `text` (for bodies too large to keep whole:
-- providers put usage at the end). Inside JSON strings quotes are escaped, so the pattern only
-- matches real keys.
function _M.from_tail(text)
    if type(text) ~= "string" then
        return nil
    end
    local pos, last = 1, nil
    while true do
        local s, e = find(text, '"usage"%s*:%s*{', pos)
        if not s then
            break
        end
        last = e
        pos = e + 1
    end
    if not last then
        return nil
    end
    local stop = object_end(text, last)
    if not stop then
        return nil
    end
    return _M.normalize(decode(sub(text, last, stop)))
end

-- ---- Server-sent events ---------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

--- A new SSE usage parser for one response.
function _M.new_stream()
    return setmetatable({
        buf = "",         -- the incomplete last line of the previous chunk
        skipping = false, -- dropping an over-long line up to its newline
        event = nil,      -- `event:` of the event being assembled
        data = nil,       -- its `data:` lines
        first = false,    -- a content token was seen
        openai = nil,     -- last non-null OpenAI-style usage object
        anthropic = nil,  -- Anthropic usage merged from message_start and message_delta
        events = 0,       -- events dispatched (for tests and debugging)
    }, Stream)
end

-- Whether a decoded event carries generated content (the first token for TTFT).
local function nonempty(s)
    return type(s) == "string" and s ~= ""
end

local function has_content(obj)
    local t = obj.type
    if t == "content_block_delta" then -- Anthropic: text, thinking or tool input
        return true
    end
    if type(t) == "string" and find(t, "^response%.") then -- OpenAI Responses
        return sub(t, -6) == ".delta" and nonempty(obj.delta)
    end
    local choices = obj.choices -- OpenAI Chat Completions / Completions
    if type(choices) ~= "table" then
        return false
    end
    for i = 1, #choices do
        local c = choices[i]
        if type(c) == "table" then
            if nonempty(c.text) then
                return true
            end
            local d = c.delta
            if type(d) == "table" then
                if nonempty(d.content) or nonempty(d.reasoning_content) or nonempty(d.reasoning)
                    or nonempty(d.refusal) or (type(d.tool_calls) == "table" and #d.tool_calls > 0)
                    or type(d.function_call) == "table" then
                    return true
                end
            end
        end
    end
    return false
end

-- Anthropic counts are cumulative: a later event's value replaces an earlier one.
local ANTHROPIC_FIELDS = { "input_tokens", "output_tokens", "cache_read_input_tokens",
                           "cache_creation_input_tokens" }

function Stream:merge_anthropic(u)
    if type(u) ~= "table" then
        return
    end
    local a = self.anthropic or {}
    for i = 1, #ANTHROPIC_FIELDS do
        local k = ANTHROPIC_FIELDS[i]
        local v = count(u[k])
        if v then
            a[k] = v
        end
    end
    self.anthropic = a
end

-- Returns true when the event is the first one with content.
function Stream:handle(obj)
    local t = obj.type
    if t == "message_start" then
        if type(obj.message) == "table" then
            self:merge_anthropic(obj.message.usage)
        end
    elseif t == "message_delta" then
        self:merge_anthropic(obj.usage)
    elseif t == "response.completed" or t == "response.incomplete" or t == "response.failed" then
        if type(obj.response) == "table" and type(obj.response.usage) == "table" then
            self.openai = obj.response.usage
        end
    elseif type(obj.usage) == "table" then -- OpenAI include_usage chunk ("usage":null elsewhere)
        self.openai = obj.usage
    end
    if not self.first and has_content(obj) then
        self.first = true
        return true
    end
    return false
end

function Stream:dispatch(data)
    self.events = self.events + 1
    if data == "[DONE]" then
        return false
    end
    -- Once the first token is known, only events that mention usage need decoding.
    if self.first and not find(data, '"usage"', 1, true) then
        return false
    end
    local obj = decode(data)
    if type(obj) == "table" then
        return self:handle(obj)
    end
    -- Not one JSON document: tolerate payloads split over several data: lines.
    local first = false
    if find(data, "\n", 1, true) then
        for line in string.gmatch(data, "[^\n]+") do
            obj = decode(line)
            if type(obj) == "table" and self:handle(obj) then
                first = true
            end
        end
    end
    return first
end

-- One line (without its terminator). Returns true when it completed the first content event.
function Stream:line(line)
    if line == "" then
        local data = self.data
        self.event, self.data = nil, nil
        if data then
            return self:dispatch(concat(data, "\n"))
        end
        return false
    end
    local c = byte(line, 1)
    if c == 58 then -- ':' comment / keep-alive
        return false
    end
    local colon = find(line, ":", 1, true)
    local name, value
    if colon then
        name = sub(line, 1, colon - 1)
        value = sub(line, colon + 1)
        if byte(value, 1) == 32 then
            value = sub(value, 2)
        end
    else
        name, value = line, ""
    end
    if name == "data" then
        local d = self.data
        if d then
            d[#d + 1] = value
        else
            self.data = { value }
        end
    elseif name == "event" then
        self.event = value
    end
    return false
end

--- Feeds the next chunk of the body. Returns true when it carried the first content token.
function Stream:feed(chunk)
    if type(chunk) ~= "string" or chunk == "" then
        return false
    end
    local first = false
    local pos = 1
    if self.skipping then
        local nl = find(chunk, "\n", 1, true)
        if not nl then
            return false
        end
        self.skipping = false
        pos = nl + 1
    end
    local buf = chunk
    if self.buf ~= "" then
        buf = self.buf .. (pos == 1 and chunk or sub(chunk, pos))
        pos = 1
    end
    while true do
        local nl = find(buf, "\n", pos, true)
        if not nl then
            break
        end
        local stop = nl - 1
        if stop >= pos and byte(buf, stop) == 13 then -- CRLF
            stop = stop - 1
        end
        if self:line(sub(buf, pos, stop)) then
            first = true
        end
        pos = nl + 1
    end
    local rest = sub(buf, pos)
    if #rest > _M.MAX_LINE then
        rest = ""
        self.skipping = true
    end
    self.buf = rest
    return first
end

--- End of the body: a last line or event without its terminator is still processed.
-- Returns true when that completed the first content event.
function Stream:finish()
    local first = false
    if self.buf ~= "" and not self.skipping then
        local rest = self.buf
        if byte(rest, -1) == 13 then
            rest = sub(rest, 1, -2)
        end
        first = self:line(rest)
    end
    self.buf = ""
    self.skipping = false
    if self:line("") then
        first = true
    end
    return first
end

--- The usage reported by the stream so far (normalized), or nil.
function Stream:result()
    if self.anthropic then
        return _M.normalize(self.anthropic)
    end
    if self.openai then
        return _M.normalize(self.openai)
    end
    return nil
end

return _M
