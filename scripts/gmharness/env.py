"""Where things are: the checkout, the nginx binary, the module under test, lua-nginx-module.
Environment variables override the defaults (GM_NGINX, GM_MODULE, GM_NO_LUA)."""

import os

# scripts/gmharness/env.py -> the checkout (an editable install keeps __file__ in it).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = os.environ.get("GM_NGINX", "/usr/sbin/nginx")
# The module an Nginx loads unless told otherwise; read when a config is written, so that
# setting it (tests: a private copy, see fixtures.py) affects the instances made afterwards.
MODULE = os.environ.get("GM_MODULE", os.path.join(ROOT, "target/modules/ngx_http_gateway_metrics_module.so"))
LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so"]
# Whether the nginx under test can load Debian's lua module (not the case for other builds).
HAVE_LUA = os.environ.get("GM_NO_LUA") != "1" and all(os.path.exists(p) for p in LUA_MODULES)
