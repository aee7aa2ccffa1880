"""`nginx -t`: bad configurations fail naming the directive, good ones pass."""
import shutil

import pytest

from gmharness import Nginx
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

ZONE = "gateway_metrics_zone gm 1m;"
SERVER = """
    server {
        listen 127.0.0.1:{port};
        %s
        location /v1/ { %s return 200; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def http(main="", server="", loc="", zone=ZONE):
    return f"{zone}\n{main}\n" + SERVER % (server, loc)


# (id, http block, directive the error must name, other text the error must contain)
BAD = [
    ("zone-no-size", http(zone="gateway_metrics_zone gm;"), "gateway_metrics_zone", "arguments"),
    ("zone-no-args", http(zone="gateway_metrics_zone;"), "gateway_metrics_zone", "arguments"),
    ("zone-bad-size", http(zone="gateway_metrics_zone gm abc;"), "gateway_metrics_zone", "abc"),
    ("zone-too-small", http(zone="gateway_metrics_zone gm 1k;"), "gateway_metrics_zone", "1k"),
    ("zone-zero", http(zone="gateway_metrics_zone gm 0;"), "gateway_metrics_zone", None),
    ("zone-negative", http(zone="gateway_metrics_zone gm -1m;"), "gateway_metrics_zone", None),
    ("zone-duplicate", http(zone="gateway_metrics_zone gm 1m; gateway_metrics_zone gm2 1m;"),
     "gateway_metrics_zone", "duplicate"),
    ("zone-duplicate-same", http(zone="gateway_metrics_zone gm 1m; gateway_metrics_zone gm 1m;"),
     "gateway_metrics_zone", None),
    ("zone-bad-name", http(zone="gateway_metrics_zone gm.x 1m;"), "gateway_metrics_zone", "gm.x"),
    ("zone-bad-name-slash", http(zone="gateway_metrics_zone g/m 1m;"), "gateway_metrics_zone",
     None),
    ("zone-in-server", http(server="gateway_metrics_zone other 1m;"), "gateway_metrics_zone",
     "not allowed here"),
    ("zone-in-location", http(loc="gateway_metrics_zone other 1m;"), "gateway_metrics_zone",
     "not allowed here"),
    ("enable-maybe", http(main="gateway_metrics maybe;"), "gateway_metrics", "maybe"),
    ("enable-no-args", http(loc="gateway_metrics;"), "gateway_metrics", "arguments"),
    ("enable-two-args", http(loc="gateway_metrics on off;"), "gateway_metrics", "arguments"),
    ("enable-duplicate", http(loc="gateway_metrics on; gateway_metrics off;"), "gateway_metrics",
     "duplicate"),
    ("buckets-x", http(main="gateway_metrics_buckets 0.1 x;"), "gateway_metrics_buckets", "x"),
    ("buckets-decreasing", http(main="gateway_metrics_buckets 1 0.5;"),
     "gateway_metrics_buckets", None),
    ("buckets-duplicate-value", http(main="gateway_metrics_buckets 0.5 1 1;"),
     "gateway_metrics_buckets", None),
    ("buckets-inf", http(main="gateway_metrics_buckets 1 inf;"), "gateway_metrics_buckets",
     "inf"),
    ("buckets-plus-inf", http(main="gateway_metrics_buckets 1 +Inf;"),
     "gateway_metrics_buckets", None),
    ("buckets-nan", http(main="gateway_metrics_buckets NaN;"), "gateway_metrics_buckets", None),
    ("buckets-no-args", http(main="gateway_metrics_buckets;"), "gateway_metrics_buckets",
     "arguments"),
    ("buckets-too-many", http(main="gateway_metrics_buckets "
                              + " ".join(str(i) for i in range(1, 66)) + ";"),
     "gateway_metrics_buckets", None),
    ("buckets-duplicate-directive",
     http(main="gateway_metrics_buckets 1 2; gateway_metrics_buckets 1 2;"),
     "gateway_metrics_buckets", "duplicate"),
    ("buckets-in-server", http(server="gateway_metrics_buckets 1 2;"),
     "gateway_metrics_buckets", "not allowed here"),
    ("max-series-0", http(main="gateway_metrics_max_series 0;"), "gateway_metrics_max_series",
     "0"),
    ("max-series-negative", http(main="gateway_metrics_max_series -5;"),
     "gateway_metrics_max_series", "-5"),
    ("max-series-abc", http(main="gateway_metrics_max_series abc;"),
     "gateway_metrics_max_series", "abc"),
    ("max-series-float", http(main="gateway_metrics_max_series 1.5;"),
     "gateway_metrics_max_series", None),
    ("max-series-no-args", http(main="gateway_metrics_max_series;"),
     "gateway_metrics_max_series", "arguments"),
    ("namespace-duplicate",
     http(loc="gateway_metrics_namespace $http_a; gateway_metrics_namespace $http_b;"),
     "gateway_metrics_namespace", "duplicate"),
    ("namespace-no-args", http(loc="gateway_metrics_namespace;"), "gateway_metrics_namespace",
     "arguments"),
    ("namespace-unknown-var", http(loc="gateway_metrics_namespace $no_such_variable_x;"),
     None, "no_such_variable_x"),
    ("upstream-duplicate",
     http(loc="gateway_metrics_upstream a; gateway_metrics_upstream b;"),
     "gateway_metrics_upstream", "duplicate"),
    ("endpoint-duplicate",
     http(server="gateway_metrics_endpoint a; gateway_metrics_endpoint b;"),
     "gateway_metrics_endpoint", "duplicate"),
    ("enable-without-zone", http(zone="", loc="gateway_metrics on;").replace(
        "gateway_metrics off; gateway_metrics_exporter;", "return 200;"), None,
     "gateway_metrics_zone"),
    ("exporter-without-zone", http(zone=""), None, "gateway_metrics_zone"),
    ("exporter-args", http(loc="gateway_metrics_exporter foo;"), "gateway_metrics_exporter",
     "arguments"),
    ("exporter-in-server", http(server="gateway_metrics_exporter;"), "gateway_metrics_exporter",
     "not allowed here"),
    ("usage-maybe", http(loc="gateway_metrics_usage maybe;"), "gateway_metrics_usage", "maybe"),
    ("usage-no-args", http(loc="gateway_metrics_usage;"), "gateway_metrics_usage", "arguments"),
    ("usage-duplicate", http(loc="gateway_metrics_usage auto; gateway_metrics_usage off;"),
     "gateway_metrics_usage", "duplicate"),
    ("tpot-buckets-x", http(main="gateway_metrics_tpot_buckets 0.1 x;"),
     "gateway_metrics_tpot_buckets", "x"),
    ("tpot-buckets-in-location", http(loc="gateway_metrics_tpot_buckets 1;"),
     "gateway_metrics_tpot_buckets", "not allowed here"),
    ("price-bad-cache-write", http(main="gateway_metrics_model_price m input=1 output=2 "
                                        "cache_write=-1;"), "gateway_metrics_model_price",
     "cache_write=-1"),
    ("views-unknown", http(main="gateway_metrics_views -no_such_family;"),
     "gateway_metrics_views", "-no_such_family"),
    ("views-self-metrics", http(main="gateway_metrics_views -gateway_metrics_series;"),
     "gateway_metrics_views", "self-metrics"),
    ("views-no-args", http(main="gateway_metrics_views;"), "gateway_metrics_views", "arguments"),
    ("views-duplicate", http(main="gateway_metrics_views -errors_total; "
                                  "gateway_metrics_views -errors_total;"),
     "gateway_metrics_views", "duplicate"),
    ("views-in-location", http(loc="gateway_metrics_views -errors_total;"),
     "gateway_metrics_views", "not allowed here"),
]


@pytest.mark.parametrize("conf,directive,text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_fails(conf, directive, text):
    n = Nginx(conf)
    try:
        rc, err = n.test_config()
        assert rc != 0, f"nginx -t accepted:\n{open(n.conf).read()}"
        emerg = [l for l in err.splitlines() if "[emerg]" in l]
        assert emerg, err
        if directive:
            assert f'"{directive}"' in emerg[0], err
        if text:
            assert text in emerg[0], err
        assert "panic" not in err.lower()
    finally:
        shutil.rmtree(n.dir, ignore_errors=True)


GOOD = [
    ("minimal", http()),
    ("no-module-use", http(zone="").replace("gateway_metrics off; gateway_metrics_exporter;",
                                            "return 200;")),
    ("all-directives", http(
        main="""gateway_metrics on; gateway_metrics_namespace $http_x_namespace;
                gateway_metrics_buckets 0.005 0.01 0.1 1 10 60;
                gateway_metrics_max_series 100000;""",
        server="gateway_metrics_upstream $proxy_host; gateway_metrics_endpoint chat;",
        loc="gateway_metrics off; gateway_metrics_namespace \"ns-$http_x_tenant\";")),
    ("zone-sizes", http(zone="gateway_metrics_zone gm_2-x 128k;")),
    ("zone-size-bytes", http(zone="gateway_metrics_zone gm 1048576;")),
    ("single-bucket", http(main="gateway_metrics_buckets 1;")),
    ("max-series-1", http(main="gateway_metrics_max_series 1;")),
    ("flag-case", http(loc="gateway_metrics on;")),
    ("usage-every-format", http(server="gateway_metrics_usage openai;",
                                loc="gateway_metrics_usage anthropic;").replace(
        "location = /metrics {", "location /g { gateway_metrics_usage gemini; return 200; }\n"
        "        location /a { gateway_metrics_usage auto; return 200; }\n"
        "        location /o { gateway_metrics_usage off; return 200; }\n"
        "        location = /metrics {")),
    ("tpot-buckets-and-prices", http(main="gateway_metrics_tpot_buckets 0.01 0.1 1; "
                                          "gateway_metrics_model_price m input=3 output=15 "
                                          "cached_input=0.3 cache_write=3.75;")),
    ("views", http(main="gateway_metrics_views -gateway_requests_total "
                        "-gateway_request_duration_seconds +gateway_requests_total;")),
]


@pytest.mark.parametrize("conf", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_config_passes(conf):
    n = Nginx(conf)
    try:
        rc, err = n.test_config()
        assert rc == 0, err
        assert "test is successful" in err
    finally:
        shutil.rmtree(n.dir, ignore_errors=True)
