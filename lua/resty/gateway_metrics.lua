-- resty.gateway_metrics: record LLM gateway metrics from Lua into the gateway_metrics module's
-- shared-memory zone. A thin LuaJIT FFI wrapper: the cdef below mirrors the C-ABI functions that
-- ngx_http_gateway_metrics_module.so exports (nginx loads modules RTLD_GLOBAL, so ffi.C has them).
--
-- Every function returns true, or nil and a readable reason. None of them raises.

local ffi = require "ffi"
local base = require "resty.core.base"

local C = ffi.C
local base_get_request = base.get_request
local type = type
local tostring = tostring
local ffi_string = ffi.string

ffi.cdef [[
typedef struct {
    const char *data;
    size_t      len;
} gateway_metrics_str_t;

int gateway_metrics_set_model(void *r, const char *model, size_t len, const char **err);
int gateway_metrics_add_tokens(void *r, double input, double output, double cached_input,
                               double reasoning, double cache_write, const char **err);
int gateway_metrics_first_token(void *r, const char **err);
int gateway_metrics_response_usage(void *r, double *out, const char **err);
int gateway_metrics_rate_limit(const char *namespace, size_t namespace_len, const char *rule_type,
                               size_t rule_type_len, int rejected, const char **err);
int gateway_metrics_cache(const char *cache_type, size_t len, int hit, const char **err);
int gateway_metrics_custom(int op, const char *name, size_t name_len,
                           const gateway_metrics_str_t *labels, size_t n_labels, double value,
                           const char **err);
]]

local _M = { _VERSION = "0.1.0" }

-- Fail at require time, clearly, when the module is not loaded into this nginx.
local loaded, why = pcall(function() return C.gateway_metrics_add_tokens end)
if not loaded then
    error("resty.gateway_metrics: ngx_http_gateway_metrics_module is not loaded (load_module it): "
          .. tostring(why), 2)
end

-- (In timers and init_worker lua-nginx-module gives a fake request: the C side refuses it.)
local get_request = base_get_request

local MAX_LABELS = 8
local OP_INC, OP_SET, OP_OBSERVE = 0, 1, 2

-- Reused per worker (Lua runs one request at a time per worker): no allocation per call.
local errp = ffi.new("const char *[1]")
local label_buf = ffi.new("gateway_metrics_str_t[?]", MAX_LABELS)
local anchors = {}  -- keeps converted label strings alive during the C call

local function result(rc)
    if rc == 0 then
        return true
    end
    return nil, ffi_string(errp[0])
end

local function number_arg(v, name, optional)
    if v == nil and optional then
        return 0
    end
    if type(v) ~= "number" then
        return nil, name .. " must be a number"
    end
    return v
end

--- This request's model (overrides gateway_metrics_model).
function _M.set_model(model)
    if type(model) ~= "string" then
        return nil, "model must be a string"
    end
    local r = get_request()
    if not r then
        return nil, "no request"
    end
    return result(C.gateway_metrics_set_model(r, model, #model, errp))
end

--- Adds token usage to this request; calls accumulate, recorded once at the log phase.
-- cached_input and cache_write (prompt-cache writes) are parts of input, reasoning is part of
-- output, as the provider reported them (see the README's token table).
function _M.add_tokens(input, output, cached_input, reasoning, cache_write)
    local i, err = number_arg(input, "input")
    if not i then return nil, err end
    local o
    o, err = number_arg(output, "output", true)
    if not o then return nil, err end
    local c
    c, err = number_arg(cached_input, "cached_input", true)
    if not c then return nil, err end
    local rs
    rs, err = number_arg(reasoning, "reasoning", true)
    if not rs then return nil, err end
    local cw
    cw, err = number_arg(cache_write, "cache_write", true)
    if not cw then return nil, err end
    local r = get_request()
    if not r then
        return nil, "no request"
    end
    return result(C.gateway_metrics_add_tokens(r, i, o, c, rs, cw, errp))
end

local usage_out = ffi.new("double[5]")

--- The token usage the module read from this request's response (`gateway_metrics_usage`),
-- once its body is whole: {input, output, cached_input, cache_write, reasoning}; nil and the
-- reason otherwise (still streaming, not read, or missing: absent, cut, compressed...).
function _M.response_usage()
    local r = get_request()
    if not r then
        return nil, "no request"
    end
    local ok, err = result(C.gateway_metrics_response_usage(r, usage_out, errp))
    if not ok then
        return nil, err
    end
    return {
        input = tonumber(usage_out[0]),
        output = tonumber(usage_out[1]),
        cached_input = tonumber(usage_out[2]),
        cache_write = tonumber(usage_out[3]),
        reasoning = tonumber(usage_out[4]),
    }
end

--- Marks the time to first token of this (streamed) request; the first call wins.
function _M.first_token()
    local r = get_request()
    if not r then
        return nil, "no request"
    end
    return result(C.gateway_metrics_first_token(r, errp))
end

--- A rate-limit event: always a hit; a violation too when `rejected` is true.
function _M.rate_limit(namespace, rule_type, rejected)
    if type(namespace) ~= "string" then
        return nil, "namespace must be a string"
    end
    if type(rule_type) ~= "string" then
        return nil, "rule_type must be a string"
    end
    if rejected ~= nil and type(rejected) ~= "boolean" then
        return nil, "rejected must be a boolean"
    end
    return result(C.gateway_metrics_rate_limit(namespace, #namespace, rule_type, #rule_type,
                                               rejected and 1 or 0, errp))
end

--- One cache lookup: hit (true) or miss (false).
function _M.cache(cache_type, hit)
    if type(cache_type) ~= "string" then
        return nil, "cache_type must be a string"
    end
    if type(hit) ~= "boolean" then
        return nil, "hit must be a boolean"
    end
    return result(C.gateway_metrics_cache(cache_type, #cache_type, hit and 1 or 0, errp))
end

local function custom(op, name, labels, value)
    if type(name) ~= "string" then
        return nil, "metric name must be a string"
    end
    if type(value) ~= "number" then
        return nil, "value must be a number"
    end
    local n = 0
    if labels ~= nil then
        if type(labels) ~= "table" then
            return nil, "labels must be an array of strings"
        end
        n = #labels
        if n > MAX_LABELS then
            return nil, "too many label values"
        end
        for k = 1, n do
            local v = labels[k]
            local tv = type(v)
            if tv == "number" then
                v = tostring(v)
            elseif tv ~= "string" then
                return nil, "label values must be strings or numbers"
            end
            anchors[k] = v
            label_buf[k - 1].data = v
            label_buf[k - 1].len = #v
        end
    end
    local rc = C.gateway_metrics_custom(op, name, #name, label_buf, n, value, errp)
    for k = 1, n do
        anchors[k] = nil
    end
    return result(rc)
end

--- Adds `n` (default 1) to a declared counter or gauge.
function _M.inc(name, labels, n)
    if n == nil then
        n = 1
    end
    return custom(OP_INC, name, labels, n)
end

--- Sets a declared gauge.
function _M.set(name, labels, v)
    return custom(OP_SET, name, labels, v)
end

--- Observes a value in a declared histogram.
function _M.observe(name, labels, v)
    return custom(OP_OBSERVE, name, labels, v)
end

return _M
