"""Labels from a single `$http_*` variable are read straight from the request headers (and from
a single `$arg_*` variable straight from the query string): they must
give exactly what nginx's variable gives (repeated headers, case, `-`/`_`, missing header)."""
import socket

from gmharness import Nginx, settle

CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_tenant_id;
    gateway_metrics_model ${HTTP_X_MODEL};
    server {
        listen 127.0.0.1:{port};
        {extra}
        location /v1/ {
            add_header X-Seen-Ns "[$http_x_tenant_id]" always;
            add_header X-Seen-Model "[$http_x_model]" always;
            return 200 "ok";
        }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""


def raw(port, headers, path="/v1/x"):
    """Sends one request; returns the response's headers (the `[...]`-wrapped ones unwrapped)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
              + b"".join(headers) + b"\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    seen = {}
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(": ")
        seen[k.lower()] = v[1:-1] if v.startswith("[") else v
    return seen


CASES = [
    [b"X-Tenant-Id: acme\r\n", b"X-Model: m1\r\n"],
    [b"x-tenant-id: lower\r\n"],
    [b"X-TENANT-ID: upper\r\n", b"x-model: M2\r\n"],
    [b"X-Tenant-Id: first\r\n", b"X-Tenant-Id: second\r\n"],
    [b"X-Tenant-Idx: notme\r\n", b"X-Tenant: notme\r\n"],
    [b"X-Tenant-Id:\r\n"],
    [],
]


def assert_labels_as_nginx_saw(n, seen):
    """The namespace and model labels of the requests recorded by `n` are, request for request,
    the values nginx's own variables gave (`seen`: each response's X-Seen-Ns/X-Seen-Model).
    Returns the namespaces wanted."""
    expect = {}
    for h in seen:
        key = (h["x-seen-ns"], h["x-seen-model"])
        expect[key] = expect.get(key, 0) + 1
    # (a request's model series is recorded just after its request series)
    with_model = sum(c for (_, model), c in expect.items() if model)
    m = settle(n, lambda m: m.total("http_requests_total") >= len(seen)
               and m.total("model_requests_total") >= with_model)
    got = {}
    for labels, v in m.select("http_requests_total").items():
        got[dict(labels)["namespace"]] = got.get(dict(labels)["namespace"], 0) + v
    want = {}
    for (ns, _), c in expect.items():
        want[ns] = want.get(ns, 0) + c
    assert got == want, (got, want)
    pairs = {}
    for labels, v in m.select("model_requests_total").items():
        key = (dict(labels)["namespace"], dict(labels)["model"])
        pairs[key] = pairs.get(key, 0) + v
    want_pairs = {key: c for key, c in expect.items() if key[1]}
    assert pairs == want_pairs, (pairs, want_pairs)
    return want


def test_header_labels_match_nginx_variables():
    for extra in ("", "underscores_in_headers on;"):
        with Nginx(CONF.replace("{extra}", extra)) as n:
            cases = CASES + ([[b"X_Tenant_Id: under\r\n"]] if extra else [])
            assert_labels_as_nginx_saw(n, [raw(n.port, hs) for hs in cases])


# The request enters its content phase (proxied, or Lua's content handler), where the module
# counts it in flight under its namespace; without a module that writes request headers later
# it keeps that value for the log phase, and with lua-nginx-module loaded it reads it again.
CONTENT_CONF = CONF.replace('return 200 "ok";', "proxy_pass http://127.0.0.1:{port}/ok;")
OK_LOCATION = 'location ^~ /ok { gateway_metrics off; return 200 "ok"; }'

# Lua changes the namespace header after the access phases: set (from its old value), or
# cleared for requests with a model header.
LUA_LOCATION = """
        location /lua/ {
            add_header X-Seen-Ns "[$http_x_tenant_id]" always;
            add_header X-Seen-Model "[$http_x_model]" always;
            content_by_lua_block {
                if ngx.var.http_x_model then
                    ngx.req.clear_header("X-Tenant-Id")
                else
                    ngx.req.set_header("X-Tenant-Id", "late-" .. (ngx.var.http_x_tenant_id or "none"))
                end
                ngx.say("ok")
            }
        }
"""


def test_header_labels_of_requests_that_reach_their_content_phase():
    with Nginx(CONTENT_CONF.replace("{extra}", OK_LOCATION)) as n:
        assert_labels_as_nginx_saw(n, [raw(n.port, hs) for hs in CASES])


def test_header_labels_that_lua_changes_after_the_access_phases():
    """Also: the module's reading of the label as the request enters its content phase leaves
    nginx's variable as it was (a repeated header's value is nginx's variable's: read, it
    would stay cached, and `add_header` would show the header before Lua changed it)."""
    with Nginx(CONTENT_CONF.replace("{extra}", OK_LOCATION + LUA_LOCATION), lua=True) as n:
        seen = [raw(n.port, hs, "/lua/x") for hs in CASES]
        want = assert_labels_as_nginx_saw(n, seen)
        # Set from its value (a repeated header too), or cleared (the requests with a model).
        assert {"late-lower", "late-first", "late-none", ""} <= set(want), want
        # Proxied requests beside them: their namespace as sent.
        assert_labels_as_nginx_saw(n, seen + [raw(n.port, hs) for hs in CASES])


ARG_CONF = """
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $arg_ns;
    gateway_metrics_model ${arg_Model};
    server {
        listen 127.0.0.1:{port};
        location /v1/ {
            add_header X-Seen-Ns "[$arg_ns]" always;
            add_header X-Seen-Model "[$arg_model]" always;
            return 200 "ok";
        }
        location /rw/ {
            # the query string the labels read is the request's at the log phase
            set $args "ns=rewritten&$args";
            add_header X-Seen-Ns "[$arg_ns]" always;
            add_header X-Seen-Model "[$arg_model]" always;
            return 200 "ok";
        }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

ARG_CASES = [
    "/v1/x?ns=acme&model=m1",
    "/v1/x?NS=upper&MODEL=M2",
    "/v1/x?xns=no&ns=yes",
    "/v1/x?a=ns=1&ns=2",
    "/v1/x?ns=first&ns=second",
    "/v1/x?ns=&model=",
    "/v1/x?ns=%20enc%3D&model=a%26b",
    "/v1/x?ns",
    "/v1/x?&ns=lead",
    "/v1/x",
    "/v1/x?model=only",
    "/rw/x?ns=orig&model=m3",
    # long values and arguments (the module skips to the next `&` a word at a time)
    "/v1/x?ns=tenant-00001-" + "x" * 27 + "&model=a-model-name-of-thirty-bytes-0",
    "/v1/x?junk=" + "j" * 50 + "&xx" + "&NS=after-junk&moDel=" + "m" * 21,
    "/v1/x?" + "&" * 9 + "ns=" + "n" * 17 + "&&model&model=",
]


def test_arg_labels_match_nginx_variables():
    """Labels from a single `$arg_*` variable are read from the query string by the module: they
    must give exactly what nginx's variable gives."""
    with Nginx(ARG_CONF) as n:
        want = assert_labels_as_nginx_saw(n, [raw(n.port, [], path) for path in ARG_CASES])
        assert "rewritten" in want and "%20enc%3D" in want and "yes" in want


def test_long_label_values_keep_their_own_series():
    """The series cache holds a namespace of up to 16 bytes in its words, one of 17 to 40 bytes
    whole in a wider key, and a longer one by its edges with its middle compared apart (past 80
    bytes it is not cached). Values of every such length that differ in a single middle byte
    (same length, same first and last 8 bytes), with short and long models, keep their own
    series: the counts per namespace and per model are exact, request after request."""
    values = []
    for size in (16, 17, 23, 24, 25, 32, 33, 40, 41, 48, 64, 80, 81, 100):
        base = bytes(b"abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(size))
        values.append(base)
        for at in sorted({8, size // 2, size - 9}):
            values.append(base[:at] + b"Z" + base[at + 1:])
    models = [b"m1", b"a-model-name-of-thirty-bytes-0", b"a-model-name-of-thirty-bytes-1"]
    with Nginx(CONF.replace("{extra}", "")) as n:
        seen = []
        # Each value several times, interleaved: later requests find what earlier ones cached.
        for rnd in range(3):
            for i, ns in enumerate(values):
                if rnd == 2 and i % 2:
                    continue
                model = models[(i + rnd) % len(models)]
                seen.append(raw(n.port, [b"X-Tenant-Id: " + ns + b"\r\n",
                                         b"X-Model: " + model + b"\r\n"]))
        want = assert_labels_as_nginx_saw(n, seen)
        assert len(want) == len(set(values)), (len(want), len(set(values)))
