"""The benchmarks behind scripts/bench, one module per section (the order of the run):
  callgrind  CPU instructions per request (valgrind --tool=callgrind, difference of two runs)
  usage      the same per proxied LLM request (JSON, SSE streams): native usage reading vs Lua
  cardinality  the same with 10 to 10,000 active label sets (header and $arg_ labels)
  wrk        throughput with and without the module (alternating runs, medians)
  scrape     /metrics render time and size by series count; harm to concurrent traffic
  scrape10k  complete scrapes of 10,000 stored series (min/median/max of 20), views off, harm
  memory     zone bytes per series, series that fit in a 32 MiB zone
  ffi        ns per call from LuaJIT: gm.add_tokens vs ngx.shared.DICT:incr
  workers2   exact counts and throughput with worker_processes 2
Each section's run(ctx) prints its figures and returns them for results.json; common.py has what
several use, report.py writes RESULTS.md and the chart, scripts/bench_main.py drives them."""

from . import callgrind, cardinality, ffi, memory, scrape, scrape10k, usage, workers2, wrk

# --only names -> run(ctx), in the order of the run.
SECTIONS = {"callgrind": callgrind.run, "usage": usage.run, "cardinality": cardinality.run, "wrk": wrk.run, "scrape": scrape.run,
            "scrape10k": scrape10k.run,
            "memory": memory.run, "ffi": ffi.run, "workers2": workers2.run}
