"""Table-driven `nginx -t` checks for the directives not covered in test_config_errors.py:
each bad use fails with an [emerg] naming the directive; a config using every directive passes."""
import subprocess

import pytest

import gmharness as gm

from gmharness import Nginx

BASE = """
    gateway_metrics_zone gm 1m;
    {http}
    server {{
        listen 127.0.0.1:{{port}};
        {server}
        location = /metrics {{ gateway_metrics_exporter; }}
    }}
"""

BAD = [
    ("gateway_metrics_ttft_buckets;", "", "gateway_metrics_ttft_buckets"),
    ("gateway_metrics_ttft_buckets 1 0.5;", "", "gateway_metrics_ttft_buckets"),
    ("gateway_metrics_ttft_buckets 0.1; gateway_metrics_ttft_buckets 0.2;", "", "gateway_metrics_ttft_buckets"),
    ("gateway_metrics_throughput_buckets x;", "", "gateway_metrics_throughput_buckets"),
    ("gateway_metrics_throughput_buckets 1 inf;", "", "gateway_metrics_throughput_buckets"),
    ("", "gateway_metrics_throughput_buckets 1 2;", "gateway_metrics_throughput_buckets"),
    ("gateway_metrics_model_price;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input=abc;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input=-1;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input=nan;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input=1e999;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o foo=1;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price gpt-4o input=1 input=2;", "", "gateway_metrics_model_price"),
    ("gateway_metrics_model_price m input=1; gateway_metrics_model_price m input=2;", "", "gateway_metrics_model_price"),
    ('gateway_metrics_model_price "" input=1;', "", "gateway_metrics_model_price"),
    ("", "gateway_metrics_model_price m input=1;", "gateway_metrics_model_price"),
    ("gateway_metrics_render_thread_pool;", "", "gateway_metrics_render_thread_pool"),
    ('gateway_metrics_render_thread_pool "";', "", "gateway_metrics_render_thread_pool"),
    ("gateway_metrics_render_thread_pool off; gateway_metrics_render_thread_pool off;", "",
     "gateway_metrics_render_thread_pool"),
    ("", "gateway_metrics_render_thread_pool off;", "gateway_metrics_render_thread_pool"),
    ("gateway_metrics_model;", "", "gateway_metrics_model"),
    ("gateway_metrics_model $http_a; gateway_metrics_model $http_b;", "", "gateway_metrics_model"),
    ("gateway_metrics_upstream;", "", "gateway_metrics_upstream"),
    ("gateway_metrics_upstream a b;", "", "gateway_metrics_upstream"),
    ("gateway_metrics_endpoint;", "", "gateway_metrics_endpoint"),
    ("", "gateway_metrics_endpoint a; gateway_metrics_endpoint b;", "gateway_metrics_endpoint"),
    ("gateway_metrics_counter;", "", "gateway_metrics_counter"),
    ("gateway_metrics_zone gm2 1m;", "", "gateway_metrics_zone"),
    ("gateway_metrics_max_series 4294967297;", "", "gateway_metrics_max_series"),
    ("gateway_metrics_max_series +5;", "", "gateway_metrics_max_series"),
    ("gateway_metrics_max_series 1_000;", "", "gateway_metrics_max_series"),
    ("gateway_metrics on off;", "", "gateway_metrics"),
    ("gateway_metrics_exemplars;", "", "gateway_metrics_exemplars"),
    ("gateway_metrics_exemplars $http_traceparent $http_x;", "", "gateway_metrics_exemplars"),
    ("gateway_metrics_exemplars $http_a; gateway_metrics_exemplars $http_b;", "",
     "gateway_metrics_exemplars"),
]


@pytest.mark.parametrize("http,server,directive", BAD, ids=[f"{a}|{b}"[:70] for a, b, _ in BAD])
def test_bad_directive_fails_nginx_t_naming_it(http, server, directive):
    n = Nginx(BASE.format(http=http, server=server))
    try:
        rc, err = n.test_config()
    finally:
        n.__exit__()
    assert rc != 0, f"accepted: {http} {server}"
    emerg = [line for line in err.splitlines() if "[emerg]" in line]
    assert emerg and f'"{directive}"' in emerg[0], err


def test_every_directive_together_passes():
    http = """
        gateway_metrics on;
        gateway_metrics_namespace $http_x_namespace;
        gateway_metrics_upstream $proxy_host;
        gateway_metrics_endpoint $uri;
        gateway_metrics_model $http_x_model;
        gateway_metrics_buckets 0.1 1 10;
        gateway_metrics_ttft_buckets 0.2 2;
        gateway_metrics_throughput_buckets 10 100;
        gateway_metrics_max_series 1000;
        gateway_metrics_render_thread_pool off;
        gateway_metrics_model_price gpt-4o input=2.50 output=10.00 cached_input=1.25;
        gateway_metrics_counter tool_calls_total "Tool calls." tool;
        gateway_metrics_gauge model_accuracy_percent "Accuracy." model task_type;
        gateway_metrics_histogram prompt_chars "Prompt size." model buckets=100,1000;
        gateway_metrics_exemplars $http_traceparent;
        gateway_metrics_usage auto;
        gateway_metrics_tpot_buckets 0.01 0.1;
        gateway_metrics_views -gateway_requests_total;
    """
    with Nginx(BASE.format(http=http, server="location /v1/ { gateway_metrics off; return 200; }")) as n:
        assert n.get("/metrics")[0] == 200


@pytest.mark.parametrize("http,directive", [
    ("gateway_metrics_zone gm2 1m;", "gateway_metrics_zone"),
    ("gateway_metrics_max_series 5; gateway_metrics_max_series 6;", "gateway_metrics_max_series"),
    ("gateway_metrics_buckets 1; gateway_metrics_buckets 2;", "gateway_metrics_buckets"),
    ("gateway_metrics_render_thread_pool off; gateway_metrics_render_thread_pool off;",
     "gateway_metrics_render_thread_pool"),
])
def test_duplicates_are_worded_as_nginx_words_its_own(http, directive):
    n = Nginx(BASE.format(http=http, server=""))
    try:
        rc, err = n.test_config()
    finally:
        n.__exit__()
    assert rc != 0
    assert f'[emerg]' in err and f'"{directive}" directive is duplicate in ' in err, err


@pytest.mark.skipif("--with-debug" not in subprocess.run(
    [gm.NGINX, "-V"], capture_output=True, text=True).stderr,
    reason="nginx built without --with-debug")
def test_debug_log_shows_label_resolution_and_cache_misses():
    conf = BASE.format(http="gateway_metrics on; gateway_metrics_namespace $http_x_ns;",
                       server="location = /r { return 200; }")
    n = Nginx(conf, workers=1)
    n.write(conf, 1, "")
    with open(n.conf) as f:
        text = f.read().replace("error_log " + n.dir + "/logs/error.log notice;",
                                "error_log " + n.dir + "/logs/error.log debug;")
    with open(n.conf, "w") as f:
        f.write(text)
    with n:
        for _ in range(3):
            assert n.get("/r", {"X-Ns": "dbg"})[0] == 200
        line = 'gateway_metrics: method "GET" endpoint "/r" status 200 namespace "dbg"'
        # (a request's lines are written together, in its log phase)
        log = gm.wait_for(n.error_log, lambda t: t.count(line) >= 3, what="3 requests logged")
    # the first request of a label set misses the worker's series cache, the next ones do not
    assert log.count('series cache miss (namespace "dbg")') == 1, log


def test_views_switched_off_are_not_on_the_page():
    """gateway_metrics_views: the gateway_* copies of the http_* families switched off; the
    rest of the page is as always (and valid for promtool)."""
    from gmharness import Nginx, settle
    conf = """
        gateway_metrics_zone gm 1m;
        gateway_metrics_namespace $http_x_namespace;
        gateway_metrics_views -gateway_requests_total -gateway_request_duration_seconds;
        server {
            listen 127.0.0.1:{port};
            gateway_metrics on;
            location /v1/ { return 200 "ok"; }
            location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
        }
    """
    with Nginx(conf, workers=1) as n:
        n.get("/v1/chat", headers={"X-Namespace": "views"})
        m = settle(n, lambda m: m.total("http_requests_total", namespace="views") == 1)
        assert m.total("http_requests_total", namespace="views") == 1
        assert m.total("namespace_requests_total", namespace="views") == 1
        names = {k[0] for k in m}
        assert not any(x.startswith("gateway_request") for x in names), names
