-- gateway.phases: the Lua side of the example AI gateway (nginx-conf/ai-gateway.conf).
--
-- The module reads the usage of every response itself (gateway_metrics_usage auto): tokens,
-- cost, time to first token. Lua does what the module cannot:
--   access         no namespace (unknown or missing API key) -> 401; model from the JSON
--                  request body -> gm.set_model; an OpenAI chat stream without
--                  stream_options.include_usage gets it (else the stream carries no usage);
--                  token budget per namespace (429 when spent, a rate-limit hit when near it)
--   header_filter  X-Gateway-Token-Budget-Remaining
--   log            charges the tokens the module read (gm.response_usage) to the budget
--   accuracy       content handler: POSTed evaluation results -> model_accuracy_percent gauge
--
-- Settings come from nginx variables, so the conf stays the one place to configure:
--   $gateway_namespace      the tenant of the request's API key ("" when the key is unknown)
--   $gateway_token_budget   tokens per window for this request's namespace (empty or 0: none)
-- and from _M.options (set them in init_by_lua if the defaults do not fit).

local gm = require "resty.gateway_metrics"
local cjson = require "cjson.safe"
local limiter = require "gateway.limiter"

local ngx = ngx
local type = type
local tonumber = tonumber
local find = string.find
local sub = string.sub
local byte = string.byte
local pcall = pcall
local ceil = math.ceil
local max = math.max
local log = ngx.log
local WARN = ngx.WARN

local _M = { _VERSION = "0.1.0" }

_M.options = {
    namespace_var = "gateway_namespace", -- the same value as gateway_metrics_namespace
    require_namespace = true,             -- requests without a namespace get 401
    budget_var = "gateway_token_budget",
    budget_dict = "gateway_token_budget", -- lua_shared_dict
    window = 60,                          -- seconds
    warn_ratio = 0.8,                     -- "near the limit" from this share of the budget
    max_request_body = 8 * 1024 * 1024,   -- larger request bodies are not parsed for the model
    include_usage_uri = "/v1/chat/completions", -- streams here get stream_options.include_usage
}

local lim  -- per worker, created on first use

local function get_limiter()
    if lim == nil then
        local l, err = limiter.new { dict = _M.options.budget_dict, window = _M.options.window,
                                     warn_ratio = _M.options.warn_ratio }
        if not l then
            log(WARN, "gateway: token budgets disabled: ", err)
        end
        lim = l or false
    end
    return lim or nil
end

-- The request body as a string (in memory or in client_body_temp_path), or nil.
local function request_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body then
        return body
    end
    local path = ngx.req.get_body_file()
    if not path then
        return nil
    end
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local size = f:seek("end")
    if not size or size > _M.options.max_request_body then
        f:close()
        return nil
    end
    f:seek("set")
    body = f:read("*a")
    f:close()
    return body
end

local function reject(ns, budget, used, retry_after)
    local body = cjson.encode {
        error = {
            type = "rate_limit_error",
            code = "token_budget_exceeded",
            message = "token budget of namespace '" .. ns .. "' exceeded: " .. used .. " of "
                      .. budget .. " tokens used in this window",
        },
    }
    ngx.status = 429
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Retry-After"] = ceil(retry_after)
    ngx.header["Content-Length"] = #body
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

-- OpenAI's answer to a bad key, so that SDKs raise their AuthenticationError.
local function unauthorized()
    local body = cjson.encode {
        error = {
            message = "Incorrect or missing API key: send `Authorization: Bearer <key>` "
                      .. "(or `x-api-key: <key>`) with a key of this gateway.",
            type = "invalid_request_error",
            param = cjson.null,
            code = "invalid_api_key",
        },
    }
    ngx.status = 401
    ngx.header["Content-Type"] = "application/json"
    ngx.header["WWW-Authenticate"] = 'Bearer realm="gateway"'
    ngx.header["Content-Length"] = #body
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end


-- ---- stream_options.include_usage ------------------------------------------------------------
-- The body is decoded with cjson to decide, and the change is spliced into the original text:
-- re-encoding the whole body would alter what the client sent (Debian's lua-cjson turns [] into
-- {} and keeps 14 significant digits). These helpers find byte spans in JSON that cjson has
-- already accepted, so they need not validate it.

local function skip_ws(s, i)
    return find(s, "[^ \t\r\n]", i)
end

-- Index of the quote closing the string that starts at i.
local function string_end(s, i)
    local j = i + 1
    while true do
        local q = find(s, '["\\]', j)
        if byte(s, q) == 92 then
            j = q + 2
        else
            return q
        end
    end
end

-- Index of the last byte of the value that starts at i.
local function value_end(s, i)
    local c = byte(s, i)
    if c == 34 then
        return string_end(s, i)
    end
    if c == 123 or c == 91 then
        local depth, j = 0, i
        while true do
            local k = find(s, '[{}%[%]"]', j)
            local d = byte(s, k)
            if d == 34 then
                k = string_end(s, k)
            elseif d == 123 or d == 91 then
                depth = depth + 1
            else
                depth = depth - 1
                if depth == 0 then
                    return k
                end
            end
            j = k + 1
        end
    end
    return (find(s, "[,}%]%s]", i) or #s + 1) - 1 -- number, true, false, null
end

-- The members of the object at i ('{'), in order: { key, vs, ve } (value start and end).
local function members(s, i)
    local out = {}
    local j = skip_ws(s, i + 1)
    if byte(s, j) == 125 then
        return out
    end
    while true do
        local ke = string_end(s, j)
        local vs = skip_ws(s, skip_ws(s, ke + 1) + 1) -- past the ':'
        local ve = value_end(s, vs)
        out[#out + 1] = { key = cjson.decode(sub(s, j, ke)), vs = vs, ve = ve }
        j = skip_ws(s, ve + 1)
        if byte(s, j) == 125 then
            return out
        end
        j = skip_ws(s, j + 1) -- past the ','
    end
end

-- The last member named `key` (cjson, like most parsers, keeps the last of duplicates).
local function member(list, key)
    local m
    for i = 1, #list do
        if list[i].key == key then
            m = list[i]
        end
    end
    return m
end

-- Inserts `text` as the first member of the object at i (with `n` members).
local function insert_member(s, i, n, text)
    return sub(s, 1, i) .. text .. (n > 0 and "," or "") .. sub(s, i + 1)
end

--- The body with stream_options.include_usage set to true, or nil when it needs no change
-- (not a stream, already set, not a JSON object). Other stream_options keys are kept.
function _M.with_include_usage(body)
    local req = cjson.decode(body)
    if type(req) ~= "table" or req.stream ~= true then
        return nil
    end
    local so = req.stream_options
    if type(so) == "table" and so.include_usage == true then
        return nil
    end
    local top = skip_ws(body, 1)
    if byte(body, top) ~= 123 then
        return nil
    end
    local list = members(body, top)
    local m = member(list, "stream_options")
    if not m then
        return insert_member(body, top, #list, '"stream_options":{"include_usage":true}')
    end
    if byte(body, m.vs) ~= 123 then -- null (or not an object): ours replaces it
        return sub(body, 1, m.vs - 1) .. '{"include_usage":true}' .. sub(body, m.ve + 1)
    end
    local inner = members(body, m.vs)
    local iu = member(inner, "include_usage")
    if iu then -- false or anything not true: the gateway needs the usage (budget, metrics)
        return sub(body, 1, iu.vs - 1) .. "true" .. sub(body, iu.ve + 1)
    end
    return insert_member(body, m.vs, #inner, '"include_usage":true')
end

function _M.access()
    local o = _M.options
    local ctx = { ns = ngx.var[o.namespace_var] or "" }
    ngx.ctx.gateway = ctx
    if ctx.ns == "" and o.require_namespace then
        -- Not proxied; recorded by the module as a client error of namespace "".
        return unauthorized()
    end

    local method = ngx.req.get_method()
    if method == "POST" or method == "PUT" or method == "PATCH" then
        local body = request_body() or ""
        local req = cjson.decode(body)
        -- The model the client asked for: the name the price table uses (a response may name
        -- a dated version, e.g. gpt-4o-2024-08-06).
        if type(req) == "table" and type(req.model) == "string" and req.model ~= "" then
            local ok, err = gm.set_model(req.model)
            if not ok then
                log(WARN, "gateway: set_model: ", err)
            end
        end
        if type(req) == "table" and req.stream == true and ngx.var.uri == o.include_usage_uri then
            local ok, new = pcall(_M.with_include_usage, body)
            if not ok then
                log(WARN, "gateway: include_usage: ", new)
            elseif new then
                ngx.req.set_body_data(new)
            end
        end
    end

    local budget = tonumber(ngx.var[o.budget_var] or "")
    local l = budget and budget > 0 and get_limiter()
    if not l then
        return
    end
    local verdict, used, left = l:check(ctx.ns, budget)
    ctx.budget = budget
    ctx.remaining = max(budget - used, 0)
    if verdict == "reject" then
        local ok, err = gm.rate_limit(ctx.ns, "token_limit", true)
        if not ok then
            log(WARN, "gateway: rate_limit: ", err)
        end
        return reject(ctx.ns, budget, used, left)
    elseif verdict == "near" then
        local ok, err = gm.rate_limit(ctx.ns, "token_limit", false)
        if not ok then
            log(WARN, "gateway: rate_limit: ", err)
        end
    end
end

function _M.header_filter()
    local ctx = ngx.ctx.gateway
    if ctx and ctx.remaining then
        ngx.header["X-Gateway-Token-Budget-Remaining"] = ctx.remaining
    end
end

function _M.log()
    local ctx = ngx.ctx.gateway
    if not ctx or not ctx.budget then
        return
    end
    -- What the module read from the response, once its body was whole; nothing when there was
    -- no usage to read (an error status, none in the body, a stream cut short): never a guess.
    local u = gm.response_usage()
    local l = u and get_limiter()
    if l then
        local ok, err = l:consume(ctx.ns, u.input + u.output)
        if not ok then
            log(WARN, "gateway: token budget: ", err)
        end
    end
end

-- POST {"model": "...", "task_type": "...", "accuracy_percent": 97.5} -> 204.
function _M.accuracy()
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "POST"
        return ngx.exit(405)
    end
    local req = cjson.decode(request_body() or "")
    local err
    if type(req) ~= "table" then
        err = "body must be a JSON object"
    elseif type(req.model) ~= "string" or type(req.task_type) ~= "string" then
        err = "model and task_type must be strings"
    elseif type(req.accuracy_percent) ~= "number" or req.accuracy_percent < 0
        or req.accuracy_percent > 100 then
        err = "accuracy_percent must be a number from 0 to 100"
    else
        local ok
        ok, err = gm.set("model_accuracy_percent", { req.model, req.task_type },
                         req.accuracy_percent)
        if ok then
            return ngx.exit(204)
        end
    end
    ngx.status = 400
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode { error = { message = err } })
    return ngx.exit(ngx.HTTP_OK)
end

return _M
