"""`gateway_metrics_model`: the model label without Lua, and Lua's set_model overriding it."""
import gmharness as gm
from gmharness import Nginx

CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_model $http_x_model;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /v1/err { return 502; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def test_model_from_a_variable_without_lua():
    with Nginx(CONF) as n:
        for _ in range(3):
            n.get("/v1/chat", {"X-Namespace": "t1", "X-Model": "gpt-4o"})
        n.get("/v1/err", {"X-Namespace": "t1", "X-Model": "gpt-4o"})
        n.get("/v1/chat", {"X-Namespace": "t1", "X-Model": "claude"})
        n.get("/v1/chat", {"X-Namespace": "t1"})  # no model: no model series
        # The client may have the whole response before the log phase has run.
        # (and the model series just after the request series)
        m = gm.settle(n, lambda m: m.total("http_requests_total") >= 6
                      and m.total("model_requests_total") >= 5)
        assert m.get1("model_requests_total", model="gpt-4o", namespace="t1", status="success") == 3
        assert m.get1("model_requests_total", model="gpt-4o", namespace="t1", status="error") == 1
        assert m.get1("model_requests_total", model="claude", namespace="t1", status="success") == 1
        assert m.total("model_requests_total") == 5
        assert m.get1("model_request_duration_seconds_count", model="gpt-4o", namespace="t1") == 4
        assert gm.histogram_consistent(m, "model_request_duration_seconds") == 2
        # No token series without token usage.
        assert m.total("model_tokens_input_total") == 0


def test_lua_set_model_overrides_the_directive():
    conf = CONF.replace('location /v1/ { return 200 "ok"; }', '''location /v1/ {
            # (not `return`: it answers in the rewrite phase, before any access/content Lua)
            content_by_lua_block {
                require("resty.gateway_metrics").set_model("from-lua")
                ngx.say("ok")
            }
        }''')
    with Nginx(conf, lua=True) as n:
        n.get("/v1/chat", {"X-Namespace": "t2", "X-Model": "from-header"})
        # The client may have the whole response before the log phase has run.
        m = gm.wait_for(n.metrics, lambda m: m.total("model_requests_total") >= 1,
                        what="the request recorded")
        assert m.get1("model_requests_total", model="from-lua", namespace="t2", status="success") == 1
        assert m.total("model_requests_total", model="from-header") == 0
