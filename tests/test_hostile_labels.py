"""Hostile label values from request headers: escaping, UTF-8 repair, truncation."""
from gmharness import Nginx, histogram_consistent, parse, raw_request, settle
from gmharness.fixtures import private_module  # noqa: F401 (autouse: nginx loads a private copy of the module)

CONF = """
    gateway_metrics_zone gm 16m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    large_client_header_buffers 4 1m;
    server {
        listen 127.0.0.1:{port};
        location /v1/ { return 200 "ok"; }
        location /ep/ {
            gateway_metrics_endpoint $http_x_ep;
            gateway_metrics_upstream $http_x_up;
            return 200 "ok";
        }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

MAX = 256

HOSTILE = [
    b'quo"te',
    b"back\\slash\\",
    b'both\\"mix\\\\"',
    b"ctl\x01char\x02\x1f",
    b"del\x7f",
    b"tab\tinside",
    b"caf\xe9",                        # latin-1
    b"bad\xff\xfeutf8",                # 0xFF never valid (and is the key separator inside)
    b"\xc3\x28lone",                   # broken 2-byte sequence
    b"cut\xf0\x9f\x98",                # truncated 4-byte sequence at the end
    b"\xed\xa0\x80surrogate",          # encoded surrogate: invalid UTF-8
    b"overlong\xc0\xaf",
    "命名空间-ok".encode(),
    "emoji-\U0001F600".encode(),
    b"A" * 8192,                       # 8 KB
    "é".encode() * 4096,               # 8 KB of 2-byte characters
    b"a" + "é".encode() * 500,         # the 256-byte limit falls inside a character
    b"B" * 255 + b"\xff",              # U+FFFD (3 bytes) does not fit after 255 bytes
    b"C" * 254 + "€".encode() + b"tail",
    b"D" * (900 * 1024),               # 900 KB, accepted with large_client_header_buffers 1m
    b'{}=,"\\n\\\\',
    b"#HELP fake\x0b\x0c",
]


def sanitised(raw):
    """What the module must report: invalid UTF-8 and NUL -> U+FFFD, then cut to 256 bytes at
    a character boundary."""
    s = raw.decode("utf-8", "replace").replace("\0", "\ufffd").encode()
    if len(s) > MAX:
        cut = MAX
        while cut > 0 and (s[cut] & 0xC0) == 0x80:
            cut -= 1
        s = s[:cut]
    return s.decode()


def escaped(v):
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def send(n, path, headers):
    req = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    for k, v in headers.items():
        req += k + b": " + v + b"\r\n"
    status, head, _ = raw_request(n.port, req + b"\r\n")
    return status


def test_hostile_namespace_values():
    # the expected values must be distinct so that each has its own series
    assert len({sanitised(v) for v in HOSTILE}) == len(HOSTILE)
    with Nginx(CONF) as n:
        for v in HOSTILE:
            assert send(n, b"/v1/x", {b"X-Namespace": v}) == 200, v[:40]
        m = settle(n, lambda m: m.total("http_requests_total") >= len(HOSTILE))
        text = n.scrape()  # valid UTF-8 (strict decode), promtool passes
        got = {dict(k)["namespace"]: c for k, c in m.select("http_requests_total").items()}
        want = {sanitised(v): 1 for v in HOSTILE}
        assert got == want, {k: v for k, v in got.items() if k not in want}
        for ns in want:
            assert len(ns.encode()) <= MAX
            # and the raw page carries exactly the escaped form
            assert f'namespace="{escaped(ns)}"' in text, ns[:40]
        # every view agrees
        for name in ("gateway_requests_total", "namespace_requests_total",
                     "http_request_duration_seconds_count"):
            vals = {dict(k)["namespace"] for k in m.select(name)}
            assert vals == set(want), name
        histogram_consistent(m, "http_request_duration_seconds")
        # prometheus_client parses the page (round trip): same values as the first parse
        again = parse(text)
        assert {k: v for k, v in again.items() if k[0] == "http_requests_total"} == \
            {k: v for k, v in m.items() if k[0] == "http_requests_total"}
        assert n.crashes() == []


def test_hostile_endpoint_and_upstream_values():
    cases = [
        (b'ep"1\\', b"up\x01\xff"),
        (b"E" * 5000, "ü".encode() * 300),
        (b"ep\xe9", b'up"}\\'),
    ]
    with Nginx(CONF) as n:
        for ep, up in cases:
            assert send(n, b"/ep/x", {b"X-Ep": ep, b"X-Up": up, b"X-Namespace": b"h"}) == 200
        m = settle(n, lambda m: m.total("http_requests_total") >= len(cases))
        text = n.scrape()
        got = {(dict(k)["endpoint"], dict(k)["upstream"]): c
               for k, c in m.select("http_requests_total").items()}
        assert got == {(sanitised(ep), sanitised(up)): 1 for ep, up in cases}
        ups = {dict(k)["upstream"]: c for k, c in m.select("upstream_requests_total").items()}
        assert ups == {sanitised(up): 1 for _, up in cases}
        paths = {dict(k)["path"] for k in m.select("gateway_requests_total")}
        assert paths == {sanitised(ep) for ep, _ in cases}
        for ep, up in cases:
            assert f'endpoint="{escaped(sanitised(ep))}"' in text
            assert f'upstream="{escaped(sanitised(up))}"' in text
        assert n.crashes() == []
