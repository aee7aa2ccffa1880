#!/usr/bin/env python3
"""The PromQL of monitoring/: every expression of the rule files and of the Grafana dashboard,
and the metric names they use. Standard library only (no YAML module: the rule files are read
with a small reader for the block style they are written in; the tests cross-check its count
with promtool's).

    scripts/monitoring_promql.py            # list every expression, where it comes from
    scripts/monitoring_promql.py --metrics  # list the metric names they use

Used by tests/test_monitoring.py (metric names must exist in the module's output) and
tests/test_monitoring_stack.py (every expression must run against a real Prometheus)."""

import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MON = os.path.join(ROOT, "monitoring")
RULE_FILES = sorted(glob.glob(os.path.join(MON, "rules", "*.yml")))
DASHBOARDS = sorted(glob.glob(os.path.join(MON, "grafana", "dashboards", "*.json")))

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "offset", "bool", "inf", "nan", "start", "end"}


# ---- rule files -------------------------------------------------------------------------------

def _block_scalar(lines, i, key_indent):
    """The text of a `|` / `>` block scalar starting after line i."""
    body = []
    j = i + 1
    while j < len(lines):
        ln = lines[j]
        if ln.strip() and len(ln) - len(ln.lstrip()) <= key_indent:
            break
        body.append(ln)
        j += 1
    while body and not body[-1].strip():
        body.pop()
    if not body:
        return "", j
    ind = min(len(b) - len(b.lstrip()) for b in body if b.strip())
    return "\n".join(b[ind:] for b in body), j


def _scalar(value):
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1]
        if value.strip()[0] == "'":
            v = v.replace("''", "'")
    return v


def read_rules(path):
    """[{"kind": "record"|"alert", "name", "expr", "for", "labels": {...}, "file", "group"}]."""
    with open(path) as f:
        lines = f.read().splitlines()
    rules = []
    group = None
    cur = None
    in_labels = None
    i = 0
    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        ind = len(ln) - len(ln.lstrip())
        if not s or s.startswith("#"):
            i += 1
            continue
        m = re.match(r"^-?\s*(\w+):\s*(.*)$", s)
        if in_labels is not None and ind > in_labels and m:
            cur["labels"][m.group(1)] = _scalar(m.group(2))
            i += 1
            continue
        in_labels = None
        if not m:
            i += 1
            continue
        key, value = m.group(1), m.group(2)
        key_indent = ind + (2 if s.startswith("- ") else 0)
        if key == "name" and s.startswith("- "):
            group = _scalar(value)
        elif key in ("record", "alert"):
            cur = {"kind": key, "name": _scalar(value), "expr": None, "for": None, "labels": {},
                   "file": path, "group": group}
            rules.append(cur)
        elif key == "expr" and cur is not None:
            if value.strip()[:1] in ("|", ">"):
                text, j = _block_scalar(lines, i, key_indent)
                if value.strip()[0] == ">":
                    text = " ".join(text.split("\n"))
                cur["expr"] = text.strip()
                i = j
                continue
            cur["expr"] = _scalar(value)
        elif key == "for" and cur is not None:
            cur["for"] = _scalar(value)
        elif key == "labels" and cur is not None:
            if value.strip().startswith("{"):
                for part in value.strip()[1:-1].split(","):
                    if ":" in part:
                        k, v = part.split(":", 1)
                        cur["labels"][k.strip()] = _scalar(v)
            else:
                in_labels = key_indent
        elif key == "annotations" and cur is not None:
            cur.setdefault("annotations", [])
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or
                                      len(lines[j]) - len(lines[j].lstrip()) > key_indent):
                mm = re.match(r"^\s*(\w+):", lines[j])
                if mm and len(lines[j]) - len(lines[j].lstrip()) == key_indent + 2:
                    cur["annotations"].append(mm.group(1))
                j += 1
            i = j
            continue
        i += 1
    return rules


def all_rules():
    out = []
    for p in RULE_FILES:
        out += read_rules(p)
    return out


# ---- dashboard --------------------------------------------------------------------------------

LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


def label_values_to_promql(query):
    """Grafana's label_values(selector, label) as the PromQL that gives the same values."""
    m = LABEL_VALUES.match(query)
    if not m:
        return None
    return f"count by ({m.group(2)}) ({m.group(1)})", m.group(2)


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_exprs(path):
    """[(where, expr, kind)]: kind is "panel", "annotation" or "variable" (variables as PromQL)."""
    with open(path) as f:
        d = json.load(f)
    out = []
    for p in _panels(d.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f'panel "{p.get("title")}" {t.get("refId")}', t["expr"], "panel"))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f'annotation "{a.get("name")}"', a["expr"], "annotation"))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            conv = label_values_to_promql(q or "")
            out.append((f'variable "{v["name"]}"', conv[0] if conv else q, "variable"))
    return out


def substitute(expr, values=None, rate_interval="1m", range_="5m", interval="15s"):
    """Replaces Grafana's variables: $__rate_interval, $__range, $__interval, and the
    dashboard's own ($job, ${instance}...) by `values` (default `.*`)."""
    values = values or {}
    s = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    s = s.replace("$__range", range_).replace("${__range}", range_)
    s = s.replace("$__interval", interval).replace("${__interval}", interval)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ".*"), s)


# ---- metric names -----------------------------------------------------------------------------

def metric_names(expr):
    """The metric names an expression selects (recording-rule names included)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"`[^`]*`", "``", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    names = set()
    for m in re.finditer(r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        ident, paren = m.group(2), m.group(3)
        if ident and not paren and ident.lower() not in KEYWORDS:
            names.add(ident)
    return names


def selectors(expr):
    """[(metric name, matcher text)] of the vector selectors of an expression ("" if none)."""
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?", s):
        name, matchers, paren = m.group(1), m.group(2), m.group(3)
        if paren or name.lower() in KEYWORDS:
            continue
        # skip words inside strings/matchers: they are consumed by the matcher group or are
        # preceded by a quote / `=`
        before = s[:m.start()].rstrip()
        if before.endswith(("=", "~", '"', "'")) or re.search(r"\{[^}]*$", s[:m.start()]):
            continue
        if re.fullmatch(r"\d+[smhdwy]?|\d+\.\d+|e\d+", name):
            continue
        out.append((name, (matchers or "")[1:-1]))
    return out


def main():
    exprs = [(f'{os.path.relpath(r["file"], ROOT)} {r["kind"]} {r["name"]}', r["expr"])
             for r in all_rules()]
    for d in DASHBOARDS:
        exprs += [(f"{os.path.relpath(d, ROOT)} {w}", e) for w, e, _ in dashboard_exprs(d)]
    if "--metrics" in sys.argv[1:]:
        names = set()
        for _, e in exprs:
            names |= metric_names(e)
        print("\n".join(sorted(names)))
        return
    for where, e in exprs:
        try:
            print(f"# {where}\n{e}\n")
        except BrokenPipeError:
            return


if __name__ == "__main__":
    main()
