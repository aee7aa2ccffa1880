"""The nginx harness of gateway-metrics, shared by the integration tests (tests/), the
benchmarks (scripts/bench), scripts/memcheck and scripts/cardinality-attack: nginx with the
module and a config of its own (nginx.py), ports and listeners (ports.py), HTTP clients
(client.py), /metrics scraping and parsing (metrics.py), upstreams (servers.py), and pytest
fixtures (fixtures.py, imported by tests only). Imported by name: services.py (Prometheus,
VictoriaMetrics, vmalert, Alertmanager, node_exporter as processes; a query-API client) and
fleet.py (the fleet of scripts/fleet and tests/test_fleet.py).

Installed into the project venv by scripts/setup (`pip install -e scripts`). The paths it
uses are in env.py; set env.MODULE (not a copy of it) to change the module nginx loads.
Standard library only, except parse() (prometheus_client) and fixtures.py (pytest)."""

from . import env
from .client import (Conn, bound_get, pipeline_many, raw_request, request_bytes, run_concurrent,
                     sequential)
from .env import HAVE_LUA, LUA_MODULES, NGINX, ROOT
from .metrics import (Samples, histogram_consistent, parse, promtool_check, sample_value,
                      samples_named, scrape_timed, settle)
from .nginx import Nginx, kill_started
from .ports import free_port, listener_inodes, listener_pids, owns_listener, wait_port
from .servers import Gate, LoopbackServer, MockLLM
from .wait import wait_for

__all__ = [
    "bound_get",
    "env", "HAVE_LUA", "LUA_MODULES", "NGINX", "ROOT",
    "Conn", "pipeline_many", "raw_request", "request_bytes", "run_concurrent", "sequential",
    "Samples", "histogram_consistent", "parse", "promtool_check", "sample_value",
    "samples_named", "scrape_timed", "settle",
    "Nginx", "kill_started",
    "free_port", "listener_inodes", "listener_pids", "owns_listener", "wait_port",
    "Gate", "LoopbackServer", "MockLLM", "wait_for",
]
