"""Automatic rate-limit and cache events: nginx's own limit_req / limit_conn / proxy_cache (read
from $limit_req_status, $limit_conn_status and $upstream_cache_status at the log phase), checked
against what the client saw, with two workers and the mock LLM upstream."""
import os
import time
import pytest

from gm import MockLLM, Nginx, run_concurrent, wait_for

CONF = """
    limit_req_zone $binary_remote_addr zone=strict:1m rate=1r/s;
    limit_req_zone $binary_remote_addr zone=strict503:1m rate=1r/s;
    limit_req_zone $binary_remote_addr zone=burst:1m rate=10r/s;
    limit_conn_zone $binary_remote_addr zone=conn:1m;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=llmcache:1m max_size=10m inactive=10m use_temp_path=off;
    upstream llm { server 127.0.0.1:%(mock)d; keepalive 8; }

    gateway_metrics_zone gm 8m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;

    server {
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Limit-Req $limit_req_status always;
        add_header X-Limit-Conn $limit_conn_status always;
        add_header X-Cache $upstream_cache_status always;

        location /strict/ {
            limit_req zone=strict nodelay;  # burst 0 (nginx refuses an explicit burst=0)
            limit_req_status 429;
            proxy_pass http://llm/v1/;
        }
        location /strict503/ {
            limit_req zone=strict503 nodelay;  # burst 0 (nginx refuses an explicit burst=0)
            proxy_pass http://llm/v1/;
        }
        location /burst/ {
            limit_req zone=burst burst=5;
            proxy_pass http://llm/v1/;
        }
        location /conn/ {
            limit_conn conn 1;
            limit_conn_status 429;
            proxy_set_header X-Mock-Delay-Ms 400;
            proxy_pass http://llm/v1/;
        }
        location /cached/ {
            proxy_cache llmcache;
            proxy_cache_key $request_uri;  # the default key is the upstream URI: /v1/... for both
            proxy_cache_valid 200 1m;
            proxy_cache_bypass $http_x_bypass;
            proxy_pass http://llm/v1/;
        }
        location /short/ {
            proxy_cache llmcache;
            proxy_cache_key $request_uri;
            proxy_cache_valid 200 1s;
            proxy_pass http://llm/v1/;
        }
        location /plain/ { proxy_pass http://llm/v1/; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


@pytest.fixture(scope="module")
def nginx():
    with MockLLM() as mock:
        n = Nginx(CONF % {"mock": mock.port}, workers=2)
        # gm.Nginx's prefix is mkdtemp's 0700 root directory, but the workers run as "nobody":
        # let them reach the cache directory the master creates (and chowns) inside it.
        os.chmod(n.dir, 0o711)
        with n:
            n.sent = 0
            yield n
            assert not n.crashes()


def sent(n, k):
    """Waits until `k` more requests (besides /metrics) have been logged."""
    n.sent += k
    return wait_for(n.metrics, lambda m: m.total("http_requests_total") >= n.sent,
                    what="requests logged")


def rl(m, ns, rule):
    return (m.get1("rate_limit_hits_total", namespace=ns, rule_type=rule),
            m.get1("rate_limit_violations_total", namespace=ns, rule_type=rule))


@pytest.mark.parametrize("path,code", [("/strict/models", 429), ("/strict503/models", 503)])
def test_limit_req_nodelay_rejections(nginx, path, code):
    n = nginx
    ns = "lr-" + path.split("/")[1]
    statuses = [n.get(path, {"X-Namespace": ns}) for _ in range(10)]
    codes = [s for s, _, _ in statuses]
    rejected = codes.count(code)
    assert set(codes) <= {200, code}
    assert 1 <= codes.count(200) <= 2 and rejected >= 8, codes
    assert [h["X-Limit-Req"] for s, _, h in statuses if s == code] == ["REJECTED"] * rejected
    m = sent(n, 10)
    assert rl(m, ns, "limit_req") == (rejected, rejected)
    assert rl(m, ns, "limit_conn") == (0, 0)


def test_limit_req_burst_delays_without_violations(nginx):
    n = nginx
    reqs = [("GET", "/burst/models", {"X-Namespace": "lr-burst"}, None) for _ in range(6)]
    t0 = time.time()
    res = run_concurrent(n.port, reqs, threads=6)
    assert time.time() - t0 < 5
    assert [s for s, _ in res] == [200] * 6
    delayed = [h["X-Limit-Req"] for _, h in res].count("DELAYED")
    assert delayed >= 1, [h["X-Limit-Req"] for _, h in res]
    m = sent(n, 6)
    assert rl(m, "lr-burst", "limit_req") == (delayed, 0)


def test_limit_conn_rejections(nginx):
    n = nginx
    reqs = [("GET", "/conn/models", {"X-Namespace": "lc"}, None) for _ in range(4)]
    res = run_concurrent(n.port, reqs, threads=4)
    codes = [s for s, _ in res]
    rejected = codes.count(429)
    assert 1 <= rejected <= 3 and codes.count(200) == 4 - rejected, codes
    assert [h["X-Limit-Conn"] for s, h in res if s == 429] == ["REJECTED"] * rejected
    m = sent(n, 4)
    assert rl(m, "lc", "limit_conn") == (rejected, rejected)
    assert rl(m, "lc", "limit_req") == (0, 0)


def cache(m):
    return (m.get1("cache_hits_total", cache_type="proxy_cache"),
            m.get1("cache_misses_total", cache_type="proxy_cache"))


def test_proxy_cache_miss_then_hits(nginx):
    n = nginx
    before = cache(n.metrics())
    seen = [n.get("/cached/models")[2]["X-Cache"] for _ in range(6)]
    assert seen == ["MISS"] + ["HIT"] * 5
    # BYPASS is a miss; methods the cache ignores (POST) and uncached locations are no event
    assert n.get("/cached/models", {"X-Bypass": "1"})[2]["X-Cache"] == "BYPASS"
    s, _, h = n.get("/cached/chat/completions", {"Content-Type": "application/json"}, "POST",
                    b'{"model":"m"}')
    assert s == 200 and h.get("X-Cache", "") == ""
    assert n.get("/plain/models")[2].get("X-Cache", "") == ""
    m = sent(n, 9)
    hits, misses = cache(m)
    assert (hits - before[0], misses - before[1]) == (5, 2)


def test_proxy_cache_expired_is_a_miss(nginx):
    n = nginx
    before = cache(n.metrics())
    assert n.get("/short/models")[2]["X-Cache"] == "MISS"
    assert n.get("/short/models")[2]["X-Cache"] == "HIT"
    time.sleep(2.1)  # nginx compares whole seconds: valid_sec < now
    assert n.get("/short/models")[2]["X-Cache"] == "EXPIRED"
    m = sent(n, 3)
    hits, misses = cache(m)
    assert (hits - before[0], misses - before[1]) == (1, 2)


def test_no_limit_or_cache_events_elsewhere(nginx):
    n = nginx
    for _ in range(3):
        assert n.get("/plain/models", {"X-Namespace": "plain"})[0] == 200
    m = sent(n, 3)
    assert not m.select("rate_limit_hits_total", namespace="plain")
    assert set(dict(k)["cache_type"] for k in m.select("cache_hits_total")) <= {"proxy_cache"}
