-- scripts/bench_ffi.lua: FFI call cost from LuaJIT for scripts/bench. A content handler that
-- times tight loops of n calls (after a warm-up that lets LuaJIT compile them) and prints one
-- line per case and repetition: "<case> <rep> <ns per call>". Cases alternate within each
-- repetition so that machine noise hits them alike.
--
-- nginx.conf:  lua_shared_dict gm_bench_ffi 1m;
--              gateway_metrics_counter bench_ffi_calls_total "FFI bench counter" tool;
--              location = /ffi { content_by_lua_block { require("bench_ffi").run() } }
local ffi = require "ffi"
local gm = require "resty.gateway_metrics"

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } gm_bench_timespec;
int clock_gettime(int clk_id, gm_bench_timespec *tp);
]])

local C = ffi.C
local ts = ffi.new("gm_bench_timespec")
local CLOCK_MONOTONIC = 1

local function now_ns()
    C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local CASES = {
    -- the loop alone (what every case below includes)
    { "empty_loop", function(n)
        local x = 0
        for i = 1, n do
            x = x + i
        end
        return x
    end },
    -- gm.add_tokens(1, 1): the FFI wrapper's checks + one C call
    { "gm.add_tokens", function(n)
        local add_tokens = gm.add_tokens
        for _ = 1, n do
            add_tokens(1, 1)
        end
    end },
    { "gm.set_model", function(n)
        local set_model = gm.set_model
        for _ = 1, n do
            set_model("gpt-4o")
        end
    end },
    -- a declared counter with one label (lookup in the zone + atomic add)
    { "gm.inc", function(n)
        local inc = gm.inc
        local labels = { "search" }
        for _ = 1, n do
            inc("bench_ffi_calls_total", labels, 1)
        end
    end },
    -- the Lua way: ngx.shared.DICT:incr (lua-resty-core FFI, shm mutex + rbtree lookup)
    { "shdict:incr", function(n)
        local dict = ngx.shared.gm_bench_ffi
        for _ = 1, n do
            dict:incr("http_requests_total{namespace=\"wechat\"}", 1, 0)
        end
    end },
}

local _M = {}

function _M.run()
    local args = ngx.req.get_uri_args()
    local n = tonumber(args.n) or 1000000
    local reps = tonumber(args.reps) or 5
    for _, c in ipairs(CASES) do
        c[2](math.max(1000, math.floor(n / 10)))  -- warm-up: traces compiled before timing
    end
    local out = {}
    for rep = 1, reps do
        for _, c in ipairs(CASES) do
            local t0 = now_ns()
            c[2](n)
            local dt = now_ns() - t0
            out[#out + 1] = string.format("%s %d %.3f", c[1], rep, dt / n)
        end
    end
    local ok, err = gm.add_tokens(1, 1)
    out[#out + 1] = "check add_tokens " .. tostring(ok) .. " " .. tostring(err)
    ngx.header["Content-Type"] = "text/plain"
    ngx.say(table.concat(out, "\n"))
end

return _M
