"""Section cardinality: CPU instructions added per request (callgrind, the difference of two
runs, nginx alone measured on the same requests) while 10 to 10,000 label sets are active, with
sequential (`ns00000`...), random (10 hex digits) and long (40-byte) namespace names, read from a
header (`$http_x_namespace`) or from the query string (`$arg_ns` and `$arg_model`). Each point is
measured in two fresh nginx starts (which slots collide may depend on addresses)."""

import os
import random

import gmharness as gm

from .callgrind import callgrind_run
from .common import base_http, fmt_int, gm_http, head, say

SETS = (10, 100, 1000, 10000)


def names(pattern, n):
    rng = random.Random(n)
    if pattern == "seq":
        return [f"ns{i:05d}" for i in range(n)]
    if pattern == "rand":
        return [f"{rng.getrandbits(40):010x}" for _ in range(n)]
    if pattern == "long56":  # opt-in (GM_CARD_POINTS): past the 40 bytes a key holds whole
        return [f"tenant-{i:05d}-" + "x" * 43 for i in range(n)]
    return [f"tenant-{i:05d}-" + "x" * 27 for i in range(n)]  # 40 bytes


def requests(mode, pattern, n):
    ns = names(pattern, n)
    if mode == "header":
        return [gm.request_bytes("/v1/chat/completions", {"X-Namespace": v}) for v in ns]
    return [gm.request_bytes(f"/v1/chat/completions?ns={v}&model=m{i % 10}") for i, v in
            enumerate(ns)]


ARGS = "gateway_metrics_namespace $arg_ns;\n    gateway_metrics_model $arg_model;"


def measure(ctx, name, http, module, raws, n1, n2, start, pad=0):
    # Unused map blocks move what nginx allocates at start-up (its heap's layout), as in the
    # callgrind section: nginx alone is measured under several layouts and their median taken.
    http = "".join(f"    map $http_x_gm_pad{i} $gm_pad{i} {{ default 1; }}\n"
                   for i in range(pad)) + http
    irs = []
    for n in (n1, n2):
        out = os.path.join(ctx.work, "callgrind-card", f"{name}.{n}.{start}.{pad}.out")
        # every set once (all series exist), then n more cycling through them
        seq = raws + [raws[i % len(raws)] for i in range(n)]
        irs.append(callgrind_run(ctx, http, module, seq, out, name, timeout=600))
    return (irs[1] - irs[0]) / (n2 - n1)


def run(ctx):
    head("cardinality. instructions added per request by active label sets (callgrind)")
    smoke = ctx.p.get("cg_layouts") == 1
    sets = (10, 100) if smoke else SETS
    if os.environ.get("GM_CARD_SETS"):  # e.g. "10,10000"
        sets = tuple(int(x) for x in os.environ["GM_CARD_SETS"].split(","))
    only = os.environ.get("GM_CARD_POINTS")  # e.g. "header:seq" while iterating
    points = [(m, p) for m in ("header", "args") for p in ("seq", "rand", "long")]
    if only:
        points = [(m, p) for m in ("header", "args") for p in ("seq", "rand", "long", "long56")
                  if f"{m}:{p}" in only.split(",")]
    os.makedirs(os.path.join(ctx.work, "callgrind-card"), exist_ok=True)
    say("per request = (Ir(N2) - Ir(N1)) / (N2 - N1) after one request per set, cycling the "
        "sets; N1, N2 = 1,000, 3,000 (at 10,000 sets: 10,000, 30,000); nginx alone on the same "
        "requests (median of 5 heap layouts, as in the callgrind section); two fresh nginx starts "
        "per point")
    res = {"sets": list(sets), "points": {}}
    for mode, pattern in points:
        http_mod = gm_http()
        if mode == "args":
            http_mod = http_mod.replace("gateway_metrics_namespace $http_x_namespace;", ARGS)
        key = f"{mode}:{pattern}"
        res["points"][key] = {}
        # nginx alone does the same work whatever the number of sets (same request sizes):
        # measured once per naming, median over heap layouts (see measure).
        raws = requests(mode, pattern, 100)
        n1, n2 = (40, 120) if smoke else (1000, 3000)
        layouts = 1 if smoke else 5
        bases = [measure(ctx, f"nginx-{mode}-{pattern}", base_http(), False, raws, n1, n2, 0, pad)
                 for pad in range(layouts)]
        base = sorted(bases)[len(bases) // 2]
        say(f"  {key:12s} nginx alone: {fmt_int(base)} (layouts: "
            f"{', '.join(fmt_int(b) for b in bases)})")
        for s in sets:
            n1, n2 = (s, 3 * s) if s >= 10000 else (1000, 3000)
            if smoke:
                n1, n2 = 40, 120
            raws = requests(mode, pattern, s)
            added = [measure(ctx, f"module-{mode}-{pattern}-{s}", http_mod, True, raws, n1, n2,
                             start) - base for start in (1, 2)]
            res["points"][key][s] = {"nginx": base, "added": added}
            say(f"  {key:12s} {s:6,d} sets: module adds "
                f"{fmt_int(added[0])} / {fmt_int(added[1])} (two starts)")
    return res
