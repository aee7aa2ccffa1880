-- A frozen copy of lua/gateway/ as it was before `gateway_metrics_usage` (the example gateway
-- read usage in Lua then): scripts/bench measures it as the baseline of native usage reading.
-- Not used by the example any more; do not edit (it is the thing measured against).
-- gateway.phases: the Lua side of the example AI gateway (nginx-conf/ai-gateway.conf).
--
--   access         no namespace (unknown or missing API key) -> 401; model from the JSON
--                  request body -> gm.set_model; token budget per namespace (429 when spent, a
--                  rate-limit hit when near it)
--   header_filter  decides how to read the response: SSE stream, JSON body, or not at all
--   body_filter    reads usage from the response as it passes (never changes it): the first
--                  content token of a stream -> gm.first_token; at the end -> gm.add_tokens once
--   log            reports usage not reported yet (stream cut short), consumes the budget
--   accuracy       content handler: POSTed evaluation results -> model_accuracy_percent gauge
--
-- Settings come from nginx variables, so the conf stays the one place to configure:
--   $gateway_namespace      the tenant of the request's API key ("" when the key is unknown)
--   $gateway_token_budget   tokens per window for this request's namespace (empty or 0: none)
-- and from _M.options (set them in init_by_lua if the defaults do not fit).

local gm = require "resty.gateway_metrics"
local cjson = require "cjson.safe"
local usage = require "gateway_baseline.usage"
local limiter = require "gateway.limiter"  -- (unchanged since: the live one)

local ngx = ngx
local type = type
local tonumber = tonumber
local concat = table.concat
local find = string.find
local lower = string.lower
local sub = string.sub
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
    max_json_body = 8 * 1024 * 1024,      -- larger JSON responses: usage found in the tail
    json_tail = 64 * 1024,
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
        local req = cjson.decode(request_body() or "")
        if type(req) == "table" and type(req.model) == "string" and req.model ~= "" then
            local ok, err = gm.set_model(req.model)
            if not ok then
                log(WARN, "gateway: set_model: ", err)
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
    if not ctx then
        return
    end
    if ctx.remaining then
        ngx.header["X-Gateway-Token-Budget-Remaining"] = ctx.remaining
    end
    local status = ngx.status
    if status < 200 or status >= 300 or ngx.req.get_method() == "HEAD" then
        return
    end
    local enc = ngx.header["Content-Encoding"]
    if enc and lower(enc) ~= "identity" then
        -- proxy_set_header Accept-Encoding "" should prevent this; usage is not read then.
        log(WARN, "gateway: compressed response (", enc, "), usage not recorded")
        return
    end
    local ct = lower(ngx.header["Content-Type"] or "")
    if find(ct, "text/event-stream", 1, true) then
        ctx.mode = "sse"
        ctx.parser = usage.new_stream()
    elseif find(ct, "json", 1, true) then
        ctx.mode = "json"
        ctx.chunks, ctx.n, ctx.size = {}, 0, 0
    end
    -- The body is only read, never changed, so Content-Length stays valid and is kept.
end

local function first_token(ctx)
    if ctx.first then
        return
    end
    ctx.first = true
    local ok, err = gm.first_token()
    if not ok then
        log(WARN, "gateway: first_token: ", err)
    end
end

-- Reports the usage read so far, exactly once per response.
local function report(ctx, complete)
    if ctx.reported then
        return
    end
    ctx.reported = true
    local u
    if ctx.mode == "sse" then
        u = ctx.parser:result()
    elseif ctx.mode == "json" then
        local text = concat(ctx.chunks, "", 1, ctx.n)
        ctx.chunks = nil
        if not ctx.overflow then
            u = usage.from_json(text)
        end
        if not u and (ctx.overflow or not complete) then
            u = usage.from_tail(text)
        end
    end
    if not u then
        return
    end
    local ok, err = gm.add_tokens(u.input, u.output, u.cached, u.reasoning)
    if not ok then
        log(WARN, "gateway: add_tokens: ", err)
        return
    end
    ctx.tokens = u.input + u.output
end

function _M.body_filter()
    local ctx = ngx.ctx.gateway
    if not ctx or not ctx.mode or ctx.reported then
        return
    end
    local chunk, eof = ngx.arg[1], ngx.arg[2]
    if ctx.mode == "sse" then
        local p = ctx.parser
        if p:feed(chunk) then
            first_token(ctx)
        end
        if eof then
            if p:finish() then
                first_token(ctx)
            end
            report(ctx, true)
        end
        return
    end
    -- JSON: keep the body (or, past max_json_body, its tail) until the end.
    if chunk ~= "" then
        local n = ctx.n + 1
        ctx.chunks[n] = chunk
        ctx.n = n
        ctx.size = ctx.size + #chunk
        local o = _M.options
        if ctx.size > o.max_json_body or (ctx.overflow and ctx.size > 2 * o.json_tail) then
            local tail = sub(concat(ctx.chunks, "", 1, n), -o.json_tail)
            ctx.chunks, ctx.n, ctx.size, ctx.overflow = { tail }, 1, #tail, true
        end
    end
    if eof then
        report(ctx, true)
    end
end

function _M.log()
    local ctx = ngx.ctx.gateway
    if not ctx then
        return
    end
    if ctx.mode and not ctx.reported then
        -- The body filter never saw the end (client or upstream went away): report what the
        -- provider had said until then.
        if ctx.mode == "sse" then
            ctx.parser:finish()
        end
        report(ctx, false)
    end
    if ctx.budget and ctx.tokens then
        local l = get_limiter()
        if l then
            local ok, err = l:consume(ctx.ns, ctx.tokens)
            if not ok then
                log(WARN, "gateway: token budget: ", err)
            end
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
