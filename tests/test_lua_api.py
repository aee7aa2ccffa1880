"""resty.gateway_metrics under hostile arguments and in odd phases: every bad call returns
nil + a message (never raises, never crashes a worker), rejected C calls are counted, and the
request-scoped calls behave in timers, init_worker and log_by_lua."""
import json
import os
import re

import pytest

import gmharness as gm
from gmharness import Nginx, settle, wait_for

pytestmark = pytest.mark.skipif(not gm.HAVE_LUA, reason="needs Debian's lua-nginx-module")

C_ERRORS = set(re.findall(r'c"([^"]*)"', "".join(
    open(os.path.join(gm.ROOT, f)).read() for f in ("src/lua_api.rs", "core/src/api.rs"))))

C = "hostile_events_total"      # counter {kind}
G = "hostile_level"             # gauge {a, b}
H = "hostile_latency_seconds"   # histogram {op}

# (name, Lua expression). BIG is a 1 MiB string, NAN/INF the obvious numbers.
CASES = [
    ("set_model nil", "gm.set_model(nil)"),
    ("set_model number", "gm.set_model(123)"),
    ("set_model table", "gm.set_model({})"),
    ("set_model function", "gm.set_model(print)"),
    ("set_model boolean", "gm.set_model(true)"),
    ("set_model 1MB", "gm.set_model(BIG)"),
    ("add_tokens nil", "gm.add_tokens(nil)"),
    ("add_tokens no args", "gm.add_tokens()"),
    ("add_tokens negative", "gm.add_tokens(-1, 0)"),
    ("add_tokens NaN", "gm.add_tokens(NAN, 0)"),
    ("add_tokens inf", "gm.add_tokens(INF, 0)"),
    ("add_tokens -inf", "gm.add_tokens(-INF)"),
    ("add_tokens huge", "gm.add_tokens(1e300, 0)"),
    ("add_tokens above 1e12", "gm.add_tokens(1e12 + 1, 0)"),
    ("add_tokens fractional", "gm.add_tokens(1.5, 0)"),
    ("add_tokens tiny fraction", "gm.add_tokens(1e-300, 0)"),
    ("add_tokens -0.5", "gm.add_tokens(-0.5)"),
    ("add_tokens string", "gm.add_tokens('10', 1)"),
    ("add_tokens table", "gm.add_tokens({}, 1)"),
    ("add_tokens function", "gm.add_tokens(print, 1)"),
    ("add_tokens boolean", "gm.add_tokens(true, 1)"),
    ("add_tokens output negative", "gm.add_tokens(1, -2)"),
    ("add_tokens output NaN", "gm.add_tokens(1, NAN)"),
    ("add_tokens output fractional", "gm.add_tokens(1, 0.25)"),
    ("add_tokens output huge", "gm.add_tokens(1, 1e300)"),
    ("add_tokens output string", "gm.add_tokens(1, '2')"),
    ("add_tokens output table", "gm.add_tokens(1, {})"),
    ("add_tokens cached NaN", "gm.add_tokens(1, 1, NAN)"),
    ("add_tokens cached negative", "gm.add_tokens(1, 1, -1)"),
    ("add_tokens cached table", "gm.add_tokens(1, 1, {})"),
    ("add_tokens cached inf", "gm.add_tokens(1, 1, INF)"),
    ("add_tokens reasoning inf", "gm.add_tokens(1, 1, 0, INF)"),
    ("add_tokens reasoning fractional", "gm.add_tokens(1, 1, 0, 0.5)"),
    ("add_tokens reasoning boolean", "gm.add_tokens(1, 1, 0, false)"),
    ("add_tokens reasoning function", "gm.add_tokens(1, 1, 0, print)"),
    ("rate_limit nil namespace", "gm.rate_limit(nil, 'r', true)"),
    ("rate_limit table namespace", "gm.rate_limit({}, 'r')"),
    ("rate_limit number rule", "gm.rate_limit('n', 5)"),
    ("rate_limit nil rule", "gm.rate_limit('n')"),
    ("rate_limit empty rule", "gm.rate_limit('n', '')"),
    ("rate_limit rejected string", "gm.rate_limit('n', 'r', 'yes')"),
    ("rate_limit rejected number", "gm.rate_limit('n', 'r', 1)"),
    ("rate_limit rejected table", "gm.rate_limit('n', 'r', {})"),
    ("rate_limit 1MB namespace", "gm.rate_limit(BIG, 'r', true)"),
    ("rate_limit 1MB rule", "gm.rate_limit('n', BIG, false)"),
    ("cache nil", "gm.cache(nil, true)"),
    ("cache function", "gm.cache(print, true)"),
    ("cache empty", "gm.cache('', true)"),
    ("cache hit nil", "gm.cache('c')"),
    ("cache hit string", "gm.cache('c', 'true')"),
    ("cache hit number", "gm.cache('c', 1)"),
    ("cache 1MB", "gm.cache(BIG, false)"),
    ("inc name nil", f"gm.inc(nil, {{'a'}})"),
    ("inc name number", "gm.inc(5, {'a'})"),
    ("inc name table", "gm.inc({}, {'a'})"),
    ("inc undeclared", "gm.inc('nope_total', {'a'})"),
    ("set undeclared", "gm.set('nope', {}, 1)"),
    ("observe undeclared", "gm.observe('nope_seconds', {}, 1)"),
    ("inc builtin family", "gm.inc('http_requests_total', {'GET','/','200','',''})"),
    ("inc name 1MB", "gm.inc(BIG, {'a'})"),
    ("inc name invalid UTF-8", "gm.inc('hostile_events_total\\xff', {'a'})"),
    ("inc name with NUL", "gm.inc('hostile_events_total\\0', {'a'})"),
    ("inc name empty", "gm.inc('', {'a'})"),
    ("inc labels string", f"gm.inc('{C}', 'a')"),
    ("inc labels number", f"gm.inc('{C}', 7)"),
    ("inc labels function", f"gm.inc('{C}', print)"),
    ("inc too many labels", f"gm.inc('{C}', {{'1','2','3','4','5','6','7','8','9'}})"),
    ("inc 200 labels", f"gm.inc('{C}', LOTS)"),
    ("inc no labels", f"gm.inc('{C}')"),
    ("inc empty labels", f"gm.inc('{C}', {{}})"),
    ("inc two labels for one", f"gm.inc('{C}', {{'a', 'b'}})"),
    ("inc label table", f"gm.inc('{C}', {{{{}}}})"),
    ("inc label boolean", f"gm.inc('{C}', {{true}})"),
    ("inc label function", f"gm.inc('{C}', {{print}})"),
    ("inc label hole", f"gm.inc('{C}', {{nil, 'a'}})"),
    ("inc label 1MB", f"gm.inc('{C}', {{BIG}})"),
    ("inc value NaN", f"gm.inc('{C}', {{'a'}}, NAN)"),
    ("inc value inf", f"gm.inc('{C}', {{'a'}}, INF)"),
    ("inc value string", f"gm.inc('{C}', {{'a'}}, '1')"),
    ("inc value table", f"gm.inc('{C}', {{'a'}}, {{}})"),
    ("inc value boolean", f"gm.inc('{C}', {{'a'}}, true)"),
    ("counter negative inc", f"gm.inc('{C}', {{'a'}}, -1)"),
    ("counter -inf inc", f"gm.inc('{C}', {{'a'}}, -INF)"),
    ("set on counter", f"gm.set('{C}', {{'a'}}, 1)"),
    ("observe on counter", f"gm.observe('{C}', {{'a'}}, 1)"),
    ("inc on histogram", f"gm.inc('{H}', {{'a'}}, 1)"),
    ("set on histogram", f"gm.set('{H}', {{'a'}}, 1)"),
    ("observe on gauge", f"gm.observe('{G}', {{'a', 'b'}}, 1)"),
    ("gauge set NaN", f"gm.set('{G}', {{'a', 'b'}}, NAN)"),
    ("gauge set -inf", f"gm.set('{G}', {{'a', 'b'}}, -INF)"),
    ("gauge inc inf", f"gm.inc('{G}', {{'a', 'b'}}, INF)"),
    ("gauge set nil", f"gm.set('{G}', {{'a', 'b'}})"),
    ("gauge set one label", f"gm.set('{G}', {{'a'}}, 1)"),
    ("gauge set three labels", f"gm.set('{G}', {{'a', 'b', 'c'}}, 1)"),
    ("observe NaN", f"gm.observe('{H}', {{'a'}}, NAN)"),
    ("observe inf", f"gm.observe('{H}', {{'a'}}, INF)"),
    ("observe nil", f"gm.observe('{H}', {{'a'}})"),
    ("observe string", f"gm.observe('{H}', {{'a'}}, '0.5')"),
    ("observe no labels", f"gm.observe('{H}', nil, 0.5)"),
]

# Request-scoped calls, made where there is no request.
NO_REQUEST = [
    ("set_model", "gm.set_model('timer-model')"),
    ("add_tokens", "gm.add_tokens(1, 2)"),
    ("first_token", "gm.first_token()"),
]


def lua_cases(cases):
    return ",\n".join(f"{{ {json.dumps(name)}, function() return {expr} end }}"
                      for name, expr in cases)


RUN_CASES = r"""
local cjson = require "cjson.safe"
local function run_cases(cases)
    local out = {}
    for i, c in ipairs(cases) do
        local ok, r1, r2 = pcall(c[2])
        out[i] = { name = c[1], pcall_ok = ok, r1 = tostring(r1), r2_type = type(r2),
                   r2 = type(r2) == "string" and r2:sub(1, 200) or tostring(r2) }
    end
    return cjson.encode(out)
end
"""

PRELUDE = r"""
local gm = require "resty.gateway_metrics"
local BIG = string.rep("x", 1024 * 1024)
local NAN, INF = 0 / 0, math.huge
local LOTS = {}
for i = 1, 200 do LOTS[i] = "v" .. i end
""" + RUN_CASES

CONF = """
    lua_shared_dict results 1m;
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_counter %(C)s "Hostile test events." kind;
    gateway_metrics_gauge %(G)s "Hostile test level." a b;
    gateway_metrics_histogram %(H)s "Hostile test latency." op buckets=0.1,1,10;

    init_worker_by_lua_block {
        %(PRELUDE)s
        local id = tostring(ngx.worker.id())
        ngx.shared.results:set("init_worker:" .. id, run_cases({ %(NO_REQUEST)s }))
        local ok, err = ngx.timer.at(0, function(premature)
            ngx.shared.results:set("timer:" .. id, run_cases({ %(NO_REQUEST)s }))
            -- not request-scoped: these work from a timer
            local a, e1 = gm.inc("%(C)s", { "timer" })
            local b, e2 = gm.rate_limit("timer-ns", "timer_rule", true)
            ngx.shared.results:set("timer-ok:" .. id, tostring(a) .. tostring(e1) .. "/" .. tostring(b) .. tostring(e2))
        end)
        if not ok then ngx.log(ngx.ERR, "timer: ", err) end
    }

    server {
        listen 127.0.0.1:{port};
        location = /hostile {
            content_by_lua_block {
                %(PRELUDE)s
                ngx.say(run_cases({ %(CASES)s }))
            }
        }
        location = /sane {
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local r = {
                    gm.set_model("sane-model"), gm.add_tokens(10, 20, 3, 4), gm.first_token(),
                    gm.rate_limit("sane-ns", "sane_rule", false), gm.cache("sane_cache", true),
                    gm.inc("%(C)s", { "sane" }), gm.inc("%(C)s", { 42 }, 2.5),
                    gm.set("%(G)s", { "x", "y" }, -3.5), gm.inc("%(G)s", { "x", "y" }, 1),
                    gm.observe("%(H)s", { "sane" }, 0.5),
                    -- invalid UTF-8 and NUL in values: accepted and sanitised (U+FFFD)
                    gm.inc("%(C)s", { "bad\\xff\\xfeutf8" }), gm.inc("%(C)s", { "nul\\0byte" }),
                    gm.rate_limit("ns\\xc3", "rule\\x80", true),
                }
                local out = {}
                for i = 1, 13 do out[i] = tostring(r[i]) end
                ngx.say(table.concat(out, " "))
            }
        }
        location = /badutf8-model {
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                ngx.say(tostring(gm.set_model("m\\xff\\xc0")), " ", tostring(gm.add_tokens(1, 1)))
            }
        }
        location = /results {
            content_by_lua_block {
                local d = ngx.shared.results
                local keys = d:get_keys()
                table.sort(keys)
                local out = {}
                for _, k in ipairs(keys) do out[k] = d:get(k) end
                ngx.say(require("cjson.safe").encode(out))
            }
        }
        # add_tokens in log_by_lua after the request already has a metrics context
        location = /log-with-ctx {
            access_by_lua_block { require("resty.gateway_metrics").set_model("log-model") }
            content_by_lua_block { ngx.say("ok") }
            log_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local ok, err = gm.add_tokens(5, 6, 1, 2)
                ngx.shared.results:set("log-with-ctx", tostring(ok) .. "/" .. tostring(err))
            }
        }
        # ... and when log_by_lua is the first Lua code to touch it
        location = /log-only {
            return 200 "ok";
            log_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local a, e1 = gm.set_model("log-only-model")
                local b, e2 = gm.add_tokens(7, 8)
                ngx.shared.results:set("log-only", tostring(a) .. "/" .. tostring(e1) .. " "
                                       .. tostring(b) .. "/" .. tostring(e2))
            }
        }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
""" % {"C": C, "G": G, "H": H, "PRELUDE": PRELUDE, "CASES": lua_cases(CASES),
       "NO_REQUEST": lua_cases(NO_REQUEST)}


@pytest.fixture(scope="module")
def nginx():
    with Nginx(CONF, workers=2, lua=True) as n:
        n.pids = set(n.worker_pids())
        yield n


def results(n):
    return json.loads(n.get("/results")[1])


def check_error_results(res):
    bad = [r for r in res if not (r["pcall_ok"] and r["r1"] == "nil" and r["r2_type"] == "string"
                                  and r["r2"].strip())]
    assert not bad, "calls that did not return nil + a message:\n" + "\n".join(map(str, bad))


def invalid_calls(m):
    return m.total("gateway_metrics_invalid_calls_total")


def watched(m):
    """The samples a refused call must neither create nor change: model and token families and
    this file's declared families (whatever the other tests of the module recorded before)."""
    return {k: v for k, v in m.items()
            if k[0].startswith(("model_", "namespace_tokens_total", C, G, H))}


def test_hostile_arguments_return_errors_and_workers_survive(nginx):
    n = nginx
    # The workers' init_worker code and timers make refused (counted) calls too: let them finish
    # before taking the baseline.
    wait_for(lambda: results(n), lambda r: len([k for k in r if k.startswith("timer:")]) == 2,
             what="timers ran")
    m0 = n.metrics()
    before = invalid_calls(m0)
    res = []
    for _ in range(3):  # every worker a few times
        s, body, _ = n.get("/hostile")
        assert s == 200, body[:500]
        res = json.loads(body)
        assert [r["name"] for r in res] == [c[0] for c in CASES]
        check_error_results(res)
    # the C side counts what it rejected (the Lua side rejects type errors before calling it)
    from_c = sum(1 for r in res if r["r2"] in C_ERRORS)
    assert from_c >= 40, [r["r2"] for r in res]
    m = n.metrics()
    assert invalid_calls(m) - before == 3 * from_c
    # nothing bad was recorded: no model, no tokens, no custom samples, no rate-limit/cache
    # (compared with before the calls: the other tests of this module may have run first)
    assert watched(m) == watched(m0)
    assert not m.select("rate_limit_hits_total", namespace="n")
    assert not m.select("cache_hits_total", cache_type="c")
    assert not m.select("cache_misses_total", cache_type="c")
    assert set(n.worker_pids()) == n.pids
    assert not n.crashes()
    log = n.error_log()
    assert "exited on signal" not in log and "[alert]" not in log and "[crit]" not in log


def test_valid_calls_still_work_after_hostile_ones(nginx):
    n = nginx
    s, body, _ = n.get("/sane", {"X-Namespace": "sane-ns"})
    assert s == 200
    assert body.decode().split() == ["true"] * 13, body
    # The log phase records the model, then the first token, then the tokens one by one: wait
    # for all of them (the client may have the response before the log phase has run).
    lab = dict(model="sane-model", namespace="sane-ns")
    m = settle(n, lambda m: (
        m.get1("model_tokens_input_total", **lab), m.get1("model_tokens_output_total", **lab),
        m.get1("namespace_tokens_total", namespace="sane-ns", token_type="cached_input"),
        m.get1("namespace_tokens_total", namespace="sane-ns", token_type="reasoning"),
        m.get1("model_time_to_first_token_seconds_count", **lab)) == (10, 20, 3, 4, 1),
        timeout=10)
    assert m.get1("model_tokens_input_total", model="sane-model", namespace="sane-ns") == 10
    assert m.get1("model_tokens_output_total", model="sane-model", namespace="sane-ns") == 20
    assert m.get1("namespace_tokens_total", namespace="sane-ns", token_type="cached_input") == 3
    assert m.get1("namespace_tokens_total", namespace="sane-ns", token_type="reasoning") == 4
    assert m.get1("model_time_to_first_token_seconds_count", model="sane-model", namespace="sane-ns") == 1
    assert m.get1("rate_limit_hits_total", namespace="sane-ns", rule_type="sane_rule") == 1
    assert m.get1("rate_limit_violations_total", namespace="sane-ns", rule_type="sane_rule") == 0
    assert m.get1("cache_hits_total", cache_type="sane_cache") == 1
    assert m.get1(C, kind="sane") == 1
    assert m.get1(C, kind="42") == 2.5
    assert m.get1(G, a="x", b="y") == -2.5
    assert m.get1(H + "_count", op="sane") == 1
    assert m.get1(H + "_bucket", op="sane", le="1") == 1
    assert m.get1(H + "_bucket", op="sane", le="0.1") == 0
    # invalid UTF-8 / NUL became U+FFFD, the page is still valid (promtool ran in metrics())
    assert m.get1(C, kind="bad\ufffd\ufffdutf8") == 1
    assert m.get1(C, kind="nul\ufffdbyte") == 1
    assert m.get1("rate_limit_violations_total", namespace="ns\ufffd", rule_type="rule\ufffd") == 1


def test_invalid_utf8_model_is_sanitised(nginx):
    n = nginx
    s, body, _ = n.get("/badutf8-model", {"X-Namespace": "utf8"})
    assert body.decode().split() == ["true", "true"]
    m = settle(n, lambda m: m.get1("model_tokens_input_total", model="m\ufffd\ufffd",
                                   namespace="utf8") >= 1, timeout=10)
    assert m.get1("model_tokens_input_total", model="m\ufffd\ufffd", namespace="utf8") == 1


def test_request_scoped_calls_without_a_request_fail(nginx):
    """From init_worker_by_lua and from a ngx.timer there is no request: set_model, add_tokens
    and first_token must return nil, "no request" (lua-nginx-module runs that code on a fake
    request, which the wrapper hands to the module as if it were one)."""
    n = nginx
    r = wait_for(lambda: results(n), lambda r: len([k for k in r if k.startswith("timer:")]) == 2,
                 what="timers ran")
    for key in [k for k in r if k.startswith(("timer:", "init_worker:"))]:
        res = json.loads(r[key])
        assert [x["name"] for x in res] == [c[0] for c in NO_REQUEST]
        assert all(x["pcall_ok"] for x in res), res
        wrong = [x for x in res if not (x["r1"] == "nil" and x["r2"] == "no request")]
        assert not wrong, f"{key}: {wrong}"


def test_counters_work_from_timers(nginx):
    n = nginx
    r = wait_for(lambda: results(n), lambda r: len([k for k in r if k.startswith("timer-ok:")]) == 2,
                 what="timers ran")
    for k in [k for k in r if k.startswith("timer-ok:")]:
        assert r[k] == "truenil/truenil", (k, r[k])
    m = n.metrics()
    assert m.get1(C, kind="timer") == 2
    assert m.get1("rate_limit_violations_total", namespace="timer-ns", rule_type="timer_rule") == 2


def test_add_tokens_in_log_by_lua_is_recorded(nginx):
    """The module's log handler is meant to run after log_by_lua (handlers.rs), so tokens added
    in log_by_lua count."""
    n = nginx
    assert n.get("/log-with-ctx", {"X-Namespace": "logphase"})[0] == 200
    r = wait_for(lambda: results(n), lambda r: "log-with-ctx" in r, what="log_by_lua ran")
    assert r["log-with-ctx"] == "true/nil", "add_tokens in log_by_lua returned: " + r["log-with-ctx"]
    lab = dict(model="log-model", namespace="logphase")
    m = settle(n, lambda m: (m.get1("model_requests_total", status="success", **lab),
                             m.get1("model_tokens_input_total", **lab),
                             m.get1("model_tokens_output_total", **lab)) == (1, 5, 6), timeout=10)
    assert m.get1("model_requests_total", status="success", **lab) == 1
    assert m.get1("model_tokens_input_total", model="log-model", namespace="logphase") == 5
    assert m.get1("model_tokens_output_total", model="log-model", namespace="logphase") == 6


def test_set_model_and_add_tokens_only_in_log_by_lua_are_recorded(nginx):
    n = nginx
    assert n.get("/log-only", {"X-Namespace": "logonly"})[0] == 200
    r = wait_for(lambda: results(n), lambda r: "log-only" in r, what="log_by_lua ran")
    assert r["log-only"] == "true/nil true/nil", r["log-only"]
    # (the tokens are recorded just after the request count, in the same log handler)
    lab = dict(model="log-only-model", namespace="logonly")
    m = settle(n, lambda m: (m.total("http_requests_total", namespace="logonly"),
                             m.get1("model_tokens_input_total", **lab),
                             m.get1("model_tokens_output_total", **lab)) == (1, 7, 8), timeout=10)
    assert m.total("http_requests_total", namespace="logonly") == 1
    assert m.get1("model_tokens_input_total", model="log-only-model", namespace="logonly") == 7, \
        "tokens added in log_by_lua were accepted (true) but not recorded"
    assert m.get1("model_tokens_output_total", model="log-only-model", namespace="logonly") == 8
