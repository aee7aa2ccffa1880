"""Automatic rate-limit and cache events: nginx's own limit_req / limit_conn / proxy_cache (read
from $limit_req_status, $limit_conn_status and $upstream_cache_status at the log phase), checked
against what the client saw, with two workers and the mock LLM upstream (the proxy_cache tests:
one worker, see nginx1)."""
import os
import threading
import time
import pytest

from gmharness import Gate, MockLLM, Nginx, run_concurrent, wait_for

CONF = """
    # 1r/m: only the first request of the test passes, however long its ten requests take
    limit_req_zone $binary_remote_addr zone=strict:1m rate=1r/m;
    limit_req_zone $binary_remote_addr zone=strict503:1m rate=1r/m;
    limit_req_zone $binary_remote_addr zone=burst:1m rate=10r/s;
    limit_conn_zone $binary_remote_addr zone=conn:1m;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=llmcache:1m max_size=10m inactive=10m use_temp_path=off;
    upstream llm { server 127.0.0.1:%(mock)d; keepalive 8; }
    upstream held { server 127.0.0.1:%(held)d; }  # gm.Gate: answers when the test says so

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
            proxy_pass http://held;
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
            proxy_cache_valid 200 2s;
            proxy_pass http://llm/v1/;
        }
        location /plain/ { proxy_pass http://llm/v1/; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


@pytest.fixture(scope="module")
def upstreams():
    with MockLLM() as mock, Gate() as gate:
        yield mock, gate


def start(upstreams, workers):
    mock, gate = upstreams
    n = Nginx(CONF % {"mock": mock.port, "held": gate.port}, workers=workers)
    # gm.Nginx's prefix is mkdtemp's 0700 root directory, but the workers run as "nobody":
    # let them reach the cache directory the master creates (and chowns) inside it.
    os.chmod(n.dir, 0o711)
    n.sent = 0
    n.gate = gate
    return n


@pytest.fixture(scope="module")
def nginx(upstreams):
    with start(upstreams, 2) as n:
        yield n
        assert not n.crashes()


@pytest.fixture(scope="module")
def nginx1(upstreams):
    """One worker, for proxy_cache: nginx commits a cache entry after it has sent the response,
    so with two workers the next request can reach the other worker before the entry exists
    (a second MISS). One worker handles that next request only after the commit."""
    with start(upstreams, 1) as n:
        yield n
        assert not n.crashes()


def sent(n, k, pred=lambda m: True):
    """Waits until `k` more requests (besides /metrics) have been logged, and pred(metrics)
    holds: the module records a request's limiter and cache events just after its
    http_requests_total sample, so a scrape can see the count a moment before the events."""
    n.sent += k
    return wait_for(n.metrics, lambda m: m.total("http_requests_total") >= n.sent and pred(m),
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
    assert codes.count(200) == 1 and rejected == 9, codes
    assert [h["X-Limit-Req"] for s, _, h in statuses if s == code] == ["REJECTED"] * rejected
    m = sent(n, 10, lambda m: rl(m, ns, "limit_req") == (rejected, rejected))
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
    m = sent(n, 6, lambda m: rl(m, "lr-burst", "limit_req") == (delayed, 0))
    assert rl(m, "lr-burst", "limit_req") == (delayed, 0)


def test_limit_conn_rejections(nginx):
    n = nginx
    # The first request holds the only connection slot while the gate holds its upstream
    # answer: the next three are rejected whatever the timing, then the first one completes.
    first = []
    n.gate.hold()
    arrived = n.gate.arrived
    t = threading.Thread(target=lambda: first.append(n.get("/conn/models", {"X-Namespace": "lc"})))
    t.start()
    try:
        n.gate.wait_arrived(arrived + 1)
        res = [n.get("/conn/models", {"X-Namespace": "lc"}) for _ in range(3)]
    finally:
        n.gate.release()
        t.join(30)
    res = first + res
    codes = [s for s, _, _ in res]
    rejected = codes.count(429)
    assert codes == [200, 429, 429, 429], codes
    assert [h["X-Limit-Conn"] for s, _, h in res if s == 429] == ["REJECTED"] * rejected
    m = sent(n, 4, lambda m: rl(m, "lc", "limit_conn") == (rejected, rejected))
    assert rl(m, "lc", "limit_conn") == (rejected, rejected)
    assert rl(m, "lc", "limit_req") == (0, 0)


def cache(m):
    return (m.get1("cache_hits_total", cache_type="proxy_cache"),
            m.get1("cache_misses_total", cache_type="proxy_cache"))


def test_proxy_cache_miss_then_hits(nginx1):
    n = nginx1
    before = cache(n.metrics())
    seen = [n.get("/cached/models")[2]["X-Cache"] for _ in range(6)]
    assert seen == ["MISS"] + ["HIT"] * 5
    # BYPASS is a miss; methods the cache ignores (POST) and uncached locations are no event
    assert n.get("/cached/models", {"X-Bypass": "1"})[2]["X-Cache"] == "BYPASS"
    s, _, h = n.get("/cached/chat/completions", {"Content-Type": "application/json"}, "POST",
                    b'{"model":"m"}')
    assert s == 200 and h.get("X-Cache", "") == ""
    assert n.get("/plain/models")[2].get("X-Cache", "") == ""
    m = sent(n, 9, lambda m: cache(m) == (before[0] + 5, before[1] + 2))
    hits, misses = cache(m)
    assert (hits - before[0], misses - before[1]) == (5, 2)


def test_proxy_cache_expired_is_a_miss(nginx1):
    n = nginx1
    before = cache(n.metrics())
    # Valid 2 s on nginx's whole-second clock: fresh for at least 2 s after the MISS, EXPIRED
    # 2 to 3 s after it. Ask until nginx says EXPIRED rather than guess when that is.
    seen = []
    deadline = time.time() + 30
    while not seen or seen[-1] != "EXPIRED":
        assert time.time() < deadline, f"not EXPIRED after 30 s: {seen}"
        seen.append(n.get("/short/models")[2]["X-Cache"])
        time.sleep(0.1)
    assert seen[0] == "MISS" and seen[1] == "HIT" and set(seen[1:-1]) == {"HIT"}, seen
    hits = seen.count("HIT")
    m = sent(n, len(seen), lambda m: cache(m) == (before[0] + hits, before[1] + 2))
    assert cache(m) == (before[0] + hits, before[1] + 2), (seen, before, cache(m))


def test_no_limit_or_cache_events_elsewhere(nginx):
    n = nginx
    for _ in range(3):
        assert n.get("/plain/models", {"X-Namespace": "plain"})[0] == 200
    m = sent(n, 3)
    assert not m.select("rate_limit_hits_total", namespace="plain")
    assert set(dict(k)["cache_type"] for k in m.select("cache_hits_total")) <= {"proxy_cache"}
