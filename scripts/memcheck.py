"""Driver of scripts/memcheck: nginx under valgrind memcheck, traffic + scrapes + reloads."""
import glob
import http.client
import os
import re
import signal
import socket
import sys
import tempfile
import time

import gmharness as gm

so, n_requests = sys.argv[1], int(sys.argv[2])

HTTP = r"""
    gateway_metrics_zone gm 4m;
    gateway_metrics on;
    gateway_metrics_namespace $http_x_namespace;
    gateway_metrics_max_series 50;
    gateway_metrics_model_price m1 input=1 output=2 cached_input=0.5;
    gateway_metrics_counter memcheck_events_total "events" kind;
    gateway_metrics_histogram memcheck_sizes "sizes" kind buckets=1,10,100;
    server {
        listen 127.0.0.1:{port};
        location /v1/ {
            access_by_lua_block {
                local gm = require "resty.gateway_metrics"
                gm.set_model("m1")
                gm.add_tokens(10, 5, 2, 1)
                gm.add_tokens(-1, "x")
                gm.first_token()
                gm.rate_limit(ngx.var.http_x_namespace or "", "token_limit", false)
                gm.cache("cfg", true)
                gm.inc("memcheck_events_total", {"a"}, 1)
                gm.observe("memcheck_sizes", {"b"}, 7)
                gm.observe("memcheck_events_total", {"a"}, 1)
                gm.inc("nope", {}, 1)
            }
            return 200 "ok";
        }
        location /err/ { return 503; }
        location = /metrics { gateway_metrics off; gateway_metrics_exporter; }
    }
"""

vgdir = tempfile.mkdtemp(prefix="gm-memcheck-")
supp = os.path.join(gm.ROOT, "scripts/memcheck.supp")
valgrind = ["valgrind", "--tool=memcheck", "--trace-children=yes", "--error-exitcode=99",
            "--num-callers=30", f"--suppressions={supp}", "--gen-suppressions=all",
            f"--log-file={vgdir}/vg.%p.log"]
n = gm.Nginx(HTTP, workers=2, lua=True, module=so, foreground=True, wrapper=valgrind,
             prefix="gm-memcheck-nginx-")
print("==> starting nginx under valgrind (slow)", flush=True)
n.start(timeout=120)


def traffic(count):
    c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=60)
    for i in range(count):
        ns = [b"wechat", b"a\"b\\c", b"\xff\xfe", b"x" * 3000, f"ns{i}".encode()][i % 5]
        c.putrequest("GET", "/v1/chat" if i % 7 else "/err/x")
        c.putheader("X-Namespace", ns)
        c.endheaders()
        r = c.getresponse()
        r.read()
        if i % 50 == 0:
            c.request("GET", "/metrics")
            r = c.getresponse()
            assert r.status == 200
            r.read()
    c.close()


try:
    traffic(n_requests // 2)
    for _ in range(2):
        n.reload(wait=False)
        time.sleep(8)  # workers start slowly under valgrind
        traffic(n_requests // 4)
    # an aborted scrape
    s = socket.create_connection(("127.0.0.1", n.port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    s.close()
    time.sleep(1)
    # graceful: every process exits normally and valgrind writes its summary
    if n.stop(signal.SIGQUIT, timeout=180) == -signal.SIGKILL:
        sys.exit("nginx under valgrind did not exit within 180 s")
finally:
    gm.kill_started()

bad = []
for f in sorted(glob.glob(f"{vgdir}/vg.*.log")):
    text = open(f, errors="replace").read()
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    if m and int(m.group(1)) > 0:
        bad.append((f, int(m.group(1))))
print(f"==> valgrind logs in {vgdir}: {len(glob.glob(vgdir + '/vg.*.log'))} processes")
if bad:
    for f, k in bad:
        print(f"MEMCHECK ERRORS: {k} in {f}")
    sys.exit(1)
print(f"==> memcheck clean: {n_requests} requests, scrapes, 2 reloads, an aborted scrape")
