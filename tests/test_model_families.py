"""The model families of many (model, namespace) pairs in the same workers: every series gets
exactly its own requests' tokens, cost and counts (the log phase finds a pair's token,
throughput and unpriced series from its model_requests series, per worker), short and long label
values, both status classes, priced and unpriced models; and past the cardinality cap, what
overflows is counted in the overflow series and never in another pair's series. The same with
namespace and model from the query string (the log phase finds a request's model_requests series
from its request series and the model)."""
import itertools

import gmharness as gm
from gmharness import Nginx

CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    {extra}
    gateway_metrics_model_price priced-model input=2 output=10;
    gateway_metrics_model_price a-priced-model-with-a-long-name input=3 output=15;
    server {{
        listen 127.0.0.1:{{port}};
        location /v1/ {{
            content_by_lua_block {{
                local gm = require("resty.gateway_metrics")
                local h = ngx.req.get_headers()
                gm.set_model(h["x-model"])
                gm.add_tokens(tonumber(h["x-in"]), tonumber(h["x-out"]))
                ngx.status = tonumber(h["x-status"])
                ngx.say("ok")
            }}
        }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""

# Short and long (over 16 bytes: compared and hashed by their middle bytes too) values, and
# long values that share their first and last 8 bytes.
MODELS = ["m1", "priced-model", "a-priced-model-with-a-long-name", "a-model-name-1-that-is-long",
          "a-model-name-2-that-is-long", "a-model-name-of-more-than-forty-bytes-that-is-long"]
NAMESPACES = ["t1", "t2", "a-namespace-1-longer-than-16", "a-namespace-2-longer-than-16"]
PRICES = {"priced-model": (2, 10), "a-priced-model-with-a-long-name": (3, 15)}


def send(n, rounds):
    """Every model x namespace x status, `rounds` times, with token counts unique to each
    request; returns what each series must show."""
    want = {"input": {}, "output": {}, "requests": {}, "unpriced": {}, "cost": {}}
    conn = gm.Conn(n.port)
    try:
        k = 0
        # Every pair's successes first, then its errors: past the cap, a pair can have its own
        # token series (made by a success) and an overflowed error series.
        for r, (status, model, ns) in itertools.product(range(rounds), itertools.product(
                [200, 500], MODELS, NAMESPACES)):
            k += 1
            tin, tout = 7 * k + r, 3 * k + 1
            headers = {"X-Namespace": ns, "X-Model": model, "X-In": str(tin), "X-Out": str(tout),
                       "X-Status": str(status)}
            got, _, _ = conn.request(gm.request_bytes("/v1/x", headers))
            assert got == status
            pair = (model, ns)
            cls = "success" if status == 200 else "error"
            want["input"][pair] = want["input"].get(pair, 0) + tin
            want["output"][pair] = want["output"].get(pair, 0) + tout
            want["requests"][pair + (cls,)] = want["requests"].get(pair + (cls,), 0) + 1
            if model in PRICES:
                pi, po = PRICES[model]
                want["cost"][pair] = want["cost"].get(pair, 0) + (tin * pi + tout * po) / 1e6
            else:
                want["unpriced"][model] = want["unpriced"].get(model, 0) + 1
    finally:
        conn.close()
    return want


def test_every_pair_gets_exactly_its_own_tokens():
    with Nginx(CONF.format(extra=""), lua=True) as n:
        want = send(n, rounds=3)
        sent = sum(want["requests"].values())
        m = gm.settle(n, lambda m: m.total("model_requests_total") >= sent)
        assert m.total("model_requests_total") == sent
        for (model, ns), v in want["input"].items():
            labels = {"model": model, "namespace": ns}
            assert m.get1("model_tokens_input_total", **labels) == v, labels
            assert m.get1("model_tokens_output_total", **labels) == want["output"][(model, ns)], labels
            # (Throughput needs a request time above 0 ms, which these local answers may not
            # have: its series are checked for consistency below, not counted.)
            cost = m.get1("model_cost_usd_total", **labels)
            assert abs(cost - want["cost"].get((model, ns), 0)) < 1e-9, labels
        for (model, ns, cls), v in want["requests"].items():
            assert m.get1("model_requests_total", model=model, namespace=ns, status=cls) == v
        for model in MODELS:
            assert m.get1("gateway_metrics_unpriced_model_requests_total",
                          model=model) == want["unpriced"].get(model, 0), model
        gm.histogram_consistent(m, "model_throughput_tokens_per_second")
        gm.histogram_consistent(m, "model_request_duration_seconds")


def test_past_the_cap_nothing_lands_in_another_pairs_series():
    # One worker, so that the series are made in the order sent: room for the successes'
    # series (4 in-flight, 4 request, 20 model request, 20 token and 3 unpriced series) and a
    # few more; the errors' model request series overflow, while their token series exist.
    with Nginx(CONF.format(extra="gateway_metrics_max_series 55;"), workers=1, lua=True) as n:
        want = send(n, rounds=2)
        sent = sum(want["requests"].values())
        m = gm.settle(n, lambda m: m.total("model_requests_total") >= sent)
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="max_series") > 0
        # Nothing is lost: the overflow series hold the rest.
        assert m.total("model_requests_total") == sent
        assert m.total("model_tokens_input_total") == sum(want["input"].values())
        assert m.total("model_tokens_output_total") == sum(want["output"].values())
        own = 0
        for (model, ns), v in want["input"].items():
            labels = {"model": model, "namespace": ns}
            got = m.get1("model_tokens_input_total", **labels)
            if ("model_tokens_input_total", frozenset(labels.items())) in m:
                # A pair's own series holds exactly its own tokens.
                assert got == v, labels
                assert m.get1("model_tokens_output_total", **labels) == want["output"][(model, ns)]
                own += 1
        assert own > 0, own
        # The case that matters: a pair's own token series, its error requests overflowed.
        split = 0
        for (model, ns, cls), v in want["requests"].items():
            key = ("model_requests_total", frozenset({"model": model, "namespace": ns, "status": cls}.items()))
            if key in m:
                assert m[key] == v, key
            elif ("model_tokens_input_total", frozenset({"model": model, "namespace": ns}.items())) in m:
                split += 1
        assert split > 0, "no pair with its own token series and overflowed requests"


QUERY_CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $arg_ns;
    gateway_metrics_model $arg_model;
    {extra}
    server {{
        listen 127.0.0.1:{{port}};
        location = /v1/ok {{ return 200 "ok"; }}
        location = /v1/missing {{ return 404; }}
        location = /v1/down {{ return 503; }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
"""


def send_query(n, rounds):
    """Every status x namespace x model from the query string (`ns` and `model` in both orders),
    the models of a namespace one after the other, `rounds` times; returns the model request
    counts each (model, namespace, class) must show and the request count of each namespace."""
    want, per_ns = {}, {}
    conn = gm.Conn(n.port)
    try:
        for r, (path, status), ns, (i, model) in itertools.product(
                range(rounds), [("ok", 200), ("missing", 404), ("down", 503)], NAMESPACES,
                enumerate(MODELS)):
            query = f"ns={ns}&model={model}" if (r + i) % 2 else f"model={model}&ns={ns}"
            got, _, _ = conn.request(gm.request_bytes(f"/v1/{path}?{query}"))
            assert got == status
            key = (model, ns, "success" if status == 200 else "error")
            want[key] = want.get(key, 0) + 1
            per_ns[ns] = per_ns.get(ns, 0) + 1
    finally:
        conn.close()
    return want, per_ns


def test_models_from_the_query_string_count_exactly():
    # The log phase finds a request's model_requests series from its request series (which
    # stands for the namespace and the status class) and the model: several models per request
    # series, short models (up to 16 bytes), long ones (17 to 40 bytes: a table of their own)
    # and longer ones (looked up by all their labels), both classes.
    with Nginx(QUERY_CONF.format(extra=""), workers=1) as n:
        want, per_ns = send_query(n, rounds=3)
        sent = sum(want.values())
        m = gm.settle(n, lambda m: m.total("model_requests_total") >= sent)
        assert m.total("model_requests_total") == sent
        for (model, ns, cls), v in want.items():
            assert m.get1("model_requests_total", model=model, namespace=ns, status=cls) == v
        for ns, v in per_ns.items():
            assert m.total("http_requests_total", namespace=ns) == v, ns
        gm.histogram_consistent(m, "model_request_duration_seconds")


def test_models_from_the_query_string_past_the_cap():
    # Past the cap some request series are overflow series (which never stand for their
    # labels) and some model request series too: counts still land in their own series or in
    # the overflow series, never in another's.
    with Nginx(QUERY_CONF.format(extra="gateway_metrics_max_series 30;"), workers=1) as n:
        want, per_ns = send_query(n, rounds=2)
        sent = sum(want.values())
        m = gm.settle(n, lambda m: m.total("model_requests_total") >= sent)
        assert m.get1("gateway_metrics_dropped_updates_total", zone="gm", reason="max_series") > 0
        assert m.total("model_requests_total") == sent
        assert m.total("http_requests_total") == sum(per_ns.values())
        own = 0
        for (model, ns, cls), v in want.items():
            key = ("model_requests_total", frozenset({"model": model, "namespace": ns, "status": cls}.items()))
            if key in m:
                assert m[key] == v, key
                own += 1
        assert 0 < own < len(want), own
