-- gateway.limiter: a token budget per namespace and fixed time window, kept in a
-- lua_shared_dict so that every worker sees the same numbers.
--
-- A request is admitted while the namespace's window has used less than its budget; the
-- tokens the provider reports for it are consumed when it ends (see gateway.phases). So a burst
-- of concurrent requests admitted together can overshoot the budget by what they use; the next
-- request is then refused until the window rolls over.
--
--   local lim = limiter.new{ dict = "gateway_token_budget", window = 60, warn_ratio = 0.8 }
--   local verdict, used, retry_after = lim:check(ns, budget)  -- "ok" | "near" | "reject"
--   lim:consume(ns, tokens)

local ngx = ngx
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local Limiter = {}
Limiter.__index = Limiter

--- opts: dict (lua_shared_dict name), window (seconds, default 60), warn_ratio (default 0.8:
-- from this share of the budget on, requests are "near" the limit).
function _M.new(opts)
    local dict = ngx.shared[opts.dict]
    if not dict then
        return nil, "no lua_shared_dict \"" .. tostring(opts.dict) .. "\""
    end
    return setmetatable({
        dict = dict,
        window = opts.window or 60,
        warn_ratio = opts.warn_ratio or 0.8,
    }, Limiter)
end

function Limiter:key(ns, now)
    local w = floor(now / self.window)
    return "tb:" .. w .. ":" .. ns, (w + 1) * self.window - now
end

--- Tokens used by `ns` in the current window.
function Limiter:used(ns)
    return self.dict:get((self:key(ns, ngx.now()))) or 0
end

--- Admission check. `budget`: tokens per window (nil or <= 0: unlimited).
-- Returns verdict ("ok", "near" or "reject"), tokens used, seconds until the window ends.
function Limiter:check(ns, budget)
    local key, left = self:key(ns, ngx.now())
    local used = self.dict:get(key) or 0
    if not budget or budget <= 0 then
        return "ok", used, left
    end
    if used >= budget then
        return "reject", used, left
    end
    if used >= budget * self.warn_ratio then
        return "near", used, left
    end
    return "ok", used, left
end

--- Adds the tokens a finished request used to its namespace's current window.
function Limiter:consume(ns, tokens)
    if not tokens or tokens <= 0 then
        return true
    end
    local key = self:key(ns, ngx.now())
    -- The key lives two windows: long enough for the window, short enough to free the dict.
    local _, err = self.dict:incr(key, tokens, 0, 2 * self.window)
    if err then
        return nil, err
    end
    return true
end

return _M
