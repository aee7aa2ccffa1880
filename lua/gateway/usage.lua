-- gateway.usage: the token total of a response, for the token budget only.
--
-- The module counts tokens itself (gateway_metrics_usage auto): tokens by type, cost, time to
-- first token all come from its reading. This reader exists because the budget is charged in
-- log_by_lua and the module has no getter for what it read (see nginx-conf/README.md); it keeps
-- one number, input + output, and nothing else.
--
-- Pure Lua (only cjson.safe; no ngx.*), so it can be driven from tests chunk by chunk.
--
--   usage.from_json(text)   a whole JSON body (or a Gemini JSON array) -> total | nil
--   usage.from_tail(text)   the last complete usage object in a (truncated) JSON body | nil
--   usage.new_stream()      an SSE reader: s:feed(chunk); s:finish(); s:total() -> total | nil
--
-- The total counts every token the provider bills on either side:
--   OpenAI Chat         prompt_tokens + completion_tokens
--   OpenAI Responses    input_tokens + output_tokens
--   Anthropic           input_tokens + cache_read_input_tokens + cache_creation_input_tokens
--                       + output_tokens (message_start's output_tokens is provisional: skipped)
--   Gemini              promptTokenCount + toolUsePromptTokenCount + candidatesTokenCount
--                       + thoughtsTokenCount
-- Providers report totals, never increments (Anthropic's message_delta and Gemini's chunks are
-- cumulative): a later report of a field replaces the earlier one. Nothing is estimated: a count
-- that is not a non-negative integer is ignored, and no count at all is no total (nil).

local cjson = require "cjson.safe"

local type = type
local next = next
local find = string.find
local sub = string.sub
local byte = string.byte
local concat = table.concat
local floor = math.floor
local decode = cjson.decode

local _M = { _VERSION = "0.2.0" }

-- Longest partial SSE line kept between chunks; a longer one is skipped (usage events are a few
-- hundred bytes).
_M.MAX_LINE = 1024 * 1024

local MAX_COUNT = 1e12

-- The count fields, by the object that carries them.
local FIELDS = {
    usage = { "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
              "cache_read_input_tokens", "cache_creation_input_tokens" },
    usageMetadata = { "promptTokenCount", "toolUsePromptTokenCount", "candidatesTokenCount",
                      "thoughtsTokenCount" },
}

local function count(v)
    if type(v) ~= "number" or v ~= v or v < 0 or v > MAX_COUNT or floor(v) ~= v then
        return nil
    end
    return v
end

-- Copies the counts of usage object `u` (of kind "usage" or "usageMetadata") into `raw`.
local function merge(raw, kind, u, provisional_output)
    if type(u) ~= "table" then
        return
    end
    local names = FIELDS[kind]
    for i = 1, #names do
        local k = names[i]
        local v = count(u[k])
        if v and not (provisional_output and k == "output_tokens") then
            raw[k] = v
        end
    end
end

-- The usage objects of one decoded payload (a JSON body or an SSE event).
local function collect(raw, obj)
    if type(obj) ~= "table" then
        return
    end
    local t = obj.type
    if t == "message_start" and type(obj.message) == "table" then
        merge(raw, "usage", obj.message.usage, true)
    elseif type(obj.response) == "table" then -- OpenAI Responses events
        merge(raw, "usage", obj.response.usage)
    end
    merge(raw, "usage", obj.usage)
    merge(raw, "usageMetadata", obj.usageMetadata)
end

local function total(raw)
    if next(raw) == nil then
        return nil
    end
    local function g(k) return raw[k] or 0 end
    if raw.promptTokenCount or raw.candidatesTokenCount or raw.thoughtsTokenCount
        or raw.toolUsePromptTokenCount then
        return g("promptTokenCount") + g("toolUsePromptTokenCount")
            + g("candidatesTokenCount") + g("thoughtsTokenCount")
    end
    if raw.prompt_tokens or raw.completion_tokens then
        return g("prompt_tokens") + g("completion_tokens")
    end
    return g("input_tokens") + g("cache_read_input_tokens") + g("cache_creation_input_tokens")
        + g("output_tokens")
end

--- The total of a whole JSON body: one response, or Gemini's array of stream responses.
function _M.from_json(text)
    if type(text) ~= "string" or text == "" then
        return nil
    end
    local obj = decode(text)
    if type(obj) ~= "table" then
        return nil
    end
    local raw = {}
    if obj[1] ~= nil then
        for i = 1, #obj do
            collect(raw, obj[i])
        end
    else
        collect(raw, obj)
    end
    return total(raw)
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

--- The last complete `"usage": {...}` or `"usageMetadata": {...}` object in `text`, for
-- bodies too large to keep whole (providers put usage at the end). Inside JSON strings quotes
-- are escaped, so the pattern only matches real keys.
function _M.from_tail(text)
    if type(text) ~= "string" then
        return nil
    end
    local pos, last, kind = 1, nil, nil
    while true do
        local s, e, k = find(text, '"(usage%a*)"%s*:%s*{', pos)
        if not s then
            break
        end
        if FIELDS[k] then
            last, kind = e, k
        end
        pos = e + 1
    end
    if not last then
        return nil
    end
    local stop = object_end(text, last)
    if not stop then
        return nil
    end
    local raw = {}
    merge(raw, kind, decode(sub(text, last, stop)))
    return total(raw)
end

-- ---- Server-sent events ---------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

--- A new SSE reader for one response.
function _M.new_stream()
    return setmetatable({
        buf = "",         -- the incomplete last line of the previous chunk
        skipping = false, -- dropping an over-long line up to its newline
        data = nil,       -- the `data:` lines of the event being assembled
        raw = {},         -- counts reported so far, by provider field
    }, Stream)
end

function Stream:dispatch(data)
    -- Only events that mention usage are decoded ("usage" and "usageMetadata").
    if not find(data, '"usage', 1, true) then
        return
    end
    local obj = decode(data)
    if type(obj) == "table" then
        return collect(self.raw, obj)
    end
    -- Not one JSON document: tolerate payloads split over several data: lines.
    for line in string.gmatch(data, "[^\n]+") do
        collect(self.raw, decode(line))
    end
end

-- One line, without its terminator.
function Stream:line(line)
    if line == "" then
        local data = self.data
        self.data = nil
        if data then
            self:dispatch(concat(data, "\n"))
        end
        return
    end
    if sub(line, 1, 5) ~= "data:" then -- event:, id:, comments: nothing to read
        return
    end
    local value = sub(line, 6)
    if byte(value, 1) == 32 then
        value = sub(value, 2)
    end
    local d = self.data
    if d then
        d[#d + 1] = value
    else
        self.data = { value }
    end
end

--- Feeds the next chunk of the body.
function Stream:feed(chunk)
    if type(chunk) ~= "string" or chunk == "" then
        return
    end
    local pos = 1
    if self.skipping then
        local nl = find(chunk, "\n", 1, true)
        if not nl then
            return
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
        self:line(sub(buf, pos, stop))
        pos = nl + 1
    end
    local rest = sub(buf, pos)
    if #rest > _M.MAX_LINE then
        rest = ""
        self.skipping = true
    end
    self.buf = rest
end

--- End of the body: a last line or event without its terminator is still read.
function Stream:finish()
    if self.buf ~= "" and not self.skipping then
        local rest = self.buf
        if byte(rest, -1) == 13 then
            rest = sub(rest, 1, -2)
        end
        self:line(rest)
    end
    self.buf = ""
    self.skipping = false
    self:line("")
end

--- The total reported so far, or nil.
function Stream:total()
    return total(self.raw)
end

return _M
