"""The benchmark's smoke mode: `scripts/bench --smoke` runs every section with tiny sizes and
prints its figures, so the benchmark does not rot. It asserts nothing about the figures (the
full benchmark, `scripts/bench`, is not part of the tests: too slow, and noisy on a busy machine)."""
import json
import os
import re
import shutil
import subprocess

import pytest

import gmharness as gm


def test_bench_smoke_runs_and_prints_figures(tmp_path):
    for tool in ("valgrind", "callgrind_annotate", "wrk"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    env = dict(os.environ, GM_MODULE=gm.env.MODULE, GM_NGINX=gm.NGINX)
    r = subprocess.run([os.path.join(gm.ROOT, "scripts/bench"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=env)
    out = r.stdout
    assert r.returncode == 0, f"scripts/bench --smoke failed:\n{out[-6000:]}\n{r.stderr[-3000:]}"

    # Every section printed its figures and its ratio against the baseline of the same run.
    expected = [
        r"nginx\s+[\d,]+ instructions/request",
        r"module adds -?[\d,]+ instructions/request",
        r"module\s+[\d,]+ requests/s",
        r"ratio module / nginx alone: [\d.]+",
        r"samples\s+[\d,]+ .* render \(time to first byte\)",
        r"harm \(thread_pool\): traffic [\d,]+ -> [\d,]+ req/s",
        r"histogram: [\d,]+ series fit .* [\d,]+ heap bytes/series",
        r"counted [\d,]+ \(http_requests_total\)",
        r"wrk -t2 .* ratio [\d.]+",
    ]
    if gm.HAVE_LUA:
        expected += [
            r"the Lua way adds [\d,]+ instructions/request",
            r"gm\.add_tokens\s+[\d.]+ ns/call",
            r"shdict:incr\s+[\d.]+ ns/call",
        ]
    for pattern in expected:
        assert re.search(pattern, out), f"missing figure /{pattern}/ in:\n{out[-6000:]}"

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    md = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Targets", "## 1. Instructions per request", "## 2. Throughput",
                    "## 3. Scrape cost", "## 4. Memory", "## 6. Two workers"):
        assert heading in md
    if "chart skipped" not in out:
        assert (tmp_path / "chart.png").stat().st_size > 10_000
