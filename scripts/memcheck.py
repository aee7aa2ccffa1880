"""Driver of scripts/memcheck: nginx under valgrind memcheck, traffic + scrapes + reloads."""
import glob
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import gm  # noqa: E402

so, n_requests = sys.argv[1], int(sys.argv[2])
os.environ["GM_MODULE"] = so
gm.MODULE = so

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

n = gm.Nginx(HTTP, workers=2, lua=True, main="")
vgdir = tempfile.mkdtemp(prefix="gm-memcheck-")
supp = os.path.join(ROOT, "scripts/memcheck.supp")
cmd = ["valgrind", "--tool=memcheck", "--trace-children=yes", "--error-exitcode=99",
       "--num-callers=30", f"--suppressions={supp}", "--gen-suppressions=all",
       f"--log-file={vgdir}/vg.%p.log", gm.NGINX, "-p", n.dir, "-c", n.conf, "-g", "daemon off;"]
print("==> starting nginx under valgrind (slow)", flush=True)
proc = subprocess.Popen(cmd)
gm.wait_port(n.port, timeout=120)


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


traffic(n_requests // 2)
for _ in range(2):
    subprocess.run([gm.NGINX, "-p", n.dir, "-c", n.conf, "-s", "reload"], check=True)
    time.sleep(8)  # workers start slowly under valgrind
    traffic(n_requests // 4)
# an aborted scrape
s = __import__("socket").create_connection(("127.0.0.1", n.port))
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
s.close()
time.sleep(1)
subprocess.run([gm.NGINX, "-p", n.dir, "-c", n.conf, "-s", "quit"], check=False)
proc.wait(timeout=180)

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
