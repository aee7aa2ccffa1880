"""Custom metric families (gateway_metrics_counter / _gauge / _histogram): updates from Lua under
concurrency render exactly, and bad declarations fail `nginx -t` naming the directive."""
import pytest

import gmharness as gm
from gmharness import Nginx, histogram_consistent, run_concurrent, wait_for

pytestmark = pytest.mark.skipif(not gm.HAVE_LUA, reason="needs Debian's lua-nginx-module")

DECLS = """
    gateway_metrics_counter jobs_done_total "Jobs done, per queue and status." queue status;
    gateway_metrics_counter plain_events_total "Events without labels.";
    gateway_metrics_gauge queue_depth "Jobs waiting, per queue." queue;
    gateway_metrics_histogram job_duration_seconds "Job duration in seconds." queue buckets=0.1,1,10;
    gateway_metrics_histogram default_buckets_seconds "Uses the default duration buckets.";
    gateway_metrics_counter eight_labels_total "Eight labels." l1 l2 l3 l4 l5 l6 l7 l8;
    gateway_metrics_histogram model_quality_score "A model_ name the module does not emit." model buckets=0.25,0.5,0.75,1;
"""

CONF = """
    gateway_metrics_zone gm 8m;
    gateway_metrics on;
%s
    server {
        listen 127.0.0.1:{port};
        location = /update {
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local i = tonumber(ngx.var.arg_i)
                local q = "q" .. (i %% 3)
                local r = {
                    gm.inc("jobs_done_total", { q, i %% 2 == 0 and "ok" or "failed" }),
                    gm.inc("plain_events_total", nil, 0.5),
                    gm.inc("queue_depth", { "shared" }, 2),
                    gm.inc("queue_depth", { "shared" }, -1),
                    gm.observe("job_duration_seconds", { q }, (i %% 4) * 0.5),
                    gm.observe("default_buckets_seconds", {}, 0.003),
                    gm.inc("eight_labels_total", { "1", "2", "3", "4", "5", "6", "7", i %% 2 }),
                    gm.observe("model_quality_score", { "gpt-4o" }, 0.6),
                }
                for k = 1, 8 do
                    if r[k] ~= true then ngx.status = 500 ngx.say("call ", k, " failed") return end
                end
                ngx.say("ok")
            }
        }
        location = /set {
            content_by_lua_block {
                local gm = require "resty.gateway_metrics"
                local ok, err = gm.set("queue_depth", { ngx.var.arg_q }, tonumber(ngx.var.arg_v))
                ngx.say(tostring(ok), " ", tostring(err))
            }
        }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
""" % DECLS

N = 240


@pytest.fixture(scope="module")
def nginx():
    with Nginx(CONF, workers=2, lua=True) as n:
        yield n
        assert not n.crashes()


def test_custom_families_render_exactly(nginx):
    n = nginx
    reqs = [("GET", f"/update?i={i}", None, None) for i in range(N)]
    res = run_concurrent(n.port, reqs, threads=12)
    assert all(s == 200 for s, _ in res)
    m = n.metrics()
    for q in range(3):
        for status, parity in (("ok", 0), ("failed", 1)):
            want = sum(1 for i in range(N) if i % 3 == q and i % 2 == parity)
            assert m.get1("jobs_done_total", queue=f"q{q}", status=status) == want
    assert m.get1("plain_events_total") == N * 0.5
    assert m.get1("queue_depth", queue="shared") == N
    for q in range(3):
        vals = [(i % 4) * 0.5 for i in range(N) if i % 3 == q]
        lab = dict(queue=f"q{q}")
        assert m.get1("job_duration_seconds_count", **lab) == len(vals)
        assert m.get1("job_duration_seconds_sum", **lab) == pytest.approx(sum(vals))
        for le, bound in (("0.1", 0.1), ("1", 1.0), ("10", 10.0), ("+Inf", float("inf"))):
            # le is inclusive: an observation of exactly 1 is in le="1"
            assert m.get1("job_duration_seconds_bucket", le=le, **lab) == sum(v <= bound for v in vals)
        les = {dict(k)["le"] for k in m.select("job_duration_seconds_bucket", **lab)}
        assert les == {"0.1", "1", "10", "+Inf"}
    default = {dict(k)["le"] for k in m.select("default_buckets_seconds_bucket")}
    builtin = {dict(k)["le"] for k in m.select("http_request_duration_seconds_bucket")}
    assert default == builtin and "+Inf" in default
    assert m.get1("default_buckets_seconds_count") == N
    assert m.get1("default_buckets_seconds_bucket", le="0.005") == N
    labels8 = dict(l1="1", l2="2", l3="3", l4="4", l5="5", l6="6", l7="7")
    assert m.get1("eight_labels_total", l8="0", **labels8) == N / 2
    assert m.get1("eight_labels_total", l8="1", **labels8) == N / 2
    assert m.get1("model_quality_score_bucket", model="gpt-4o", le="0.75") == N
    assert m.get1("model_quality_score_bucket", model="gpt-4o", le="0.5") == 0
    for h in ("job_duration_seconds", "default_buckets_seconds", "model_quality_score"):
        assert histogram_consistent(m, h) >= 1
    text = n.scrape()
    for name, kind, help_ in (("jobs_done_total", "counter", "Jobs done, per queue and status."),
                              ("queue_depth", "gauge", "Jobs waiting, per queue."),
                              ("job_duration_seconds", "histogram", "Job duration in seconds.")):
        assert f"# TYPE {name} {kind}\n" in text
        assert f"# HELP {name} {help_}\n" in text


def test_gauge_set_last_value_wins(nginx):
    n = nginx
    for v in ("42.5", "-7", "1e-3"):
        s, body, _ = n.get(f"/set?q=fixed&v={v}")
        assert body.decode().split() == ["true", "nil"]
        assert n.metrics().get1("queue_depth", queue="fixed") == float(v)


# ---- declarations that nginx -t must refuse ----------------------------------------------------

BAD = [
    # (declarations, directive named in the error, a word of the message)
    ('gateway_metrics_counter 9x "h";', "gateway_metrics_counter", "metric name"),
    ('gateway_metrics_gauge bad-name "h";', "gateway_metrics_gauge", "metric name"),
    ('gateway_metrics_histogram "" "h";', "gateway_metrics_histogram", "metric name"),
    ('gateway_metrics_counter a_total "h"; gateway_metrics_counter a_total "h";',
     "gateway_metrics_counter", "duplicate"),
    ('gateway_metrics_counter a_total "h"; gateway_metrics_gauge a_total "h";',
     "gateway_metrics_gauge", "duplicate"),
    ('gateway_metrics_counter http_requests_total "h";', "gateway_metrics_counter", "emits"),
    ('gateway_metrics_gauge model_requests_total "h";', "gateway_metrics_gauge", "emits"),
    ('gateway_metrics_histogram model_time_to_first_token_seconds "h";', "gateway_metrics_histogram", "emits"),
    ('gateway_metrics_counter rate_limit_hits_total "h";', "gateway_metrics_counter", "emits"),
    ('gateway_metrics_counter namespace_tokens_total "h";', "gateway_metrics_counter", "emits"),
    ('gateway_metrics_counter cache_hits_total "h";', "gateway_metrics_counter", "emits"),
    ('gateway_metrics_counter gateway_metrics_invalid_calls_total "h";', "gateway_metrics_counter", "emits"),
    ('gateway_metrics_gauge nginx_connections_active "h";', "gateway_metrics_gauge", "emits"),
    ('gateway_metrics_gauge up "h";', "gateway_metrics_gauge", "emits"),
    ('gateway_metrics_counter x_total "h" __x;', "gateway_metrics_counter", "label name"),
    ('gateway_metrics_histogram x_seconds "h" le;', "gateway_metrics_histogram", "label name"),
    ('gateway_metrics_counter x_total "h" le;', "gateway_metrics_counter", "label name"),
    ('gateway_metrics_gauge x "h" quantile;', "gateway_metrics_gauge", "label name"),
    ('gateway_metrics_gauge x "h" 1a;', "gateway_metrics_gauge", "label name"),
    ('gateway_metrics_gauge x "h" a-b;', "gateway_metrics_gauge", "label name"),
    ('gateway_metrics_gauge x "h" k k;', "gateway_metrics_gauge", "duplicate label"),
    ('gateway_metrics_gauge x "h" a b c d e f g h i;', "gateway_metrics_gauge", "too many labels"),
    ('gateway_metrics_counter x_total "h" buckets=1,2;', "gateway_metrics_counter", "buckets="),
    ('gateway_metrics_gauge x "h" buckets=1,2;', "gateway_metrics_gauge", "buckets="),
    ('gateway_metrics_histogram x_seconds "h" buckets=1,0.5;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=1,1;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=a,b;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=1,,2;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=0.5,+Inf;', "gateway_metrics_histogram", "bucket"),
    ('gateway_metrics_histogram x_seconds "h" buckets=NaN;', "gateway_metrics_histogram", "bucket"),
    ('server { location / { gateway_metrics_counter x_total "h"; } }', "gateway_metrics_counter", "not allowed"),
]


def check_refused(decls):
    conf = "gateway_metrics_zone gm 1m;\n" + decls
    n = Nginx(conf, lua=False)
    try:
        return n.test_config()
    finally:
        n.__exit__()


@pytest.mark.parametrize("decls,directive,word", BAD, ids=[b[0][:60] for b in BAD])
def test_bad_declarations_fail_nginx_t(decls, directive, word):
    rc, err = check_refused(decls)
    assert rc != 0, f"accepted: {decls}"
    emerg = [l for l in err.splitlines() if "[emerg]" in l]
    assert emerg, err
    assert f'"{directive}" directive' in emerg[0], emerg[0]
    assert word in emerg[0], emerg[0]


# Declarations nginx -t accepts today whose page then breaks the exposition format (promtool):
# either nginx -t must refuse them (naming the directive) or the page must stay valid.
ACCEPTED_BUT_INVALID = [
    ("counter without _total", 'gateway_metrics_counter jobs "Jobs." kind;',
     'gm.inc("jobs", { "a" })'),
    ("gauge named _total", 'gateway_metrics_gauge depth_total "Depth." kind;',
     'gm.set("depth_total", { "a" }, 1)'),
    ("histogram _count clash", 'gateway_metrics_histogram lat "Lat." buckets=1,2;\n'
                               'gateway_metrics_gauge lat_count "Lat count.";',
     'gm.observe("lat", {}, 1) gm.set("lat_count", {}, 5)'),
    ("empty help", 'gateway_metrics_counter quiet_total;', 'gm.inc("quiet_total", {})'),
]


@pytest.mark.parametrize("name,decls,lua", ACCEPTED_BUT_INVALID, ids=[a[0] for a in ACCEPTED_BUT_INVALID])
def test_accepted_declarations_keep_the_page_valid(name, decls, lua):
    conf = f"""
    gateway_metrics_zone gm 1m;
    gateway_metrics on;
    {decls}
    server {{
        listen 127.0.0.1:{{port}};
        location = /u {{ content_by_lua_block {{ local gm = require "resty.gateway_metrics" {lua} ngx.say("ok") }} }}
        location = /metrics {{ gateway_metrics off; gateway_metrics_exporter; }}
    }}
    """
    n = Nginx(conf, lua=True)
    rc, err = n.test_config()
    if rc != 0:
        assert "gateway_metrics_" in err and '" directive' in err, err
        n.__exit__()
        return
    with n:
        assert n.get("/u")[0] == 200
        text = n.scrape(check=False)
        try:
            gm.promtool_check(text)
        except AssertionError as e:
            pytest.fail(f"nginx -t accepted `{decls}` but the page fails promtool: {e}")
