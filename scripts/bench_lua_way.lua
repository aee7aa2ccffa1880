-- scripts/bench_lua_way.lua: the default request families recorded "the common Lua way", as
-- nginx-lua-prometheus and similar libraries do it, for the per-request cost comparison of
-- scripts/bench. Read the labels from ngx.var, build the series keys, and ngx.shared.DICT:incr
-- a counter plus the histogram's bucket, count and sum (4 incr per request). Deliberately lean
-- (no label escaping, no per-worker batching): a lower bound of what such libraries cost.
--
-- nginx.conf:  lua_shared_dict gm_bench_metrics 32m;
--              log_by_lua_block { require("bench_lua_way").log() }
local _M = {}

local BOUNDS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 }
local LE = {}
for i, b in ipairs(BOUNDS) do
    LE[i] = tostring(b)
end
LE[#BOUNDS + 1] = "+Inf"
local NB = #BOUNDS
local tonumber = tonumber

function _M.log()
    local dict = ngx.shared.gm_bench_metrics
    local var = ngx.var
    local method = var.request_method
    local endpoint = var.uri
    local status = var.status
    local namespace = var.http_x_namespace or ""
    local upstream = var.upstream_addr or ""
    local t = tonumber(var.request_time) or 0

    local labels = 'method="' .. method .. '",endpoint="' .. endpoint .. '",status_code="'
        .. status .. '",namespace="' .. namespace .. '",upstream="' .. upstream .. '"'
    dict:incr("http_requests_total{" .. labels .. "}", 1, 0)
    local b = NB + 1
    for i = 1, NB do
        if t <= BOUNDS[i] then
            b = i
            break
        end
    end
    dict:incr("http_request_duration_seconds_bucket{" .. labels .. ',le="' .. LE[b] .. '"}', 1, 0)
    dict:incr("http_request_duration_seconds_count{" .. labels .. "}", 1, 0)
    dict:incr("http_request_duration_seconds_sum{" .. labels .. "}", t, 0)
end

return _M
