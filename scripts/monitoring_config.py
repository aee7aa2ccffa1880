#!/usr/bin/env python3
"""Writes a copy of monitoring/prometheus.yml adapted to where it runs: the targets of some jobs
replaced, jobs renamed, intervals changed, relative paths (rule_files, file_sd files) made
absolute. Used by scripts/monitoring (the local stack next to the demo gateway) and by
tests/test_monitoring_stack.py.

    scripts/monitoring_config.py monitoring/prometheus.yml \\
        --targets ai-gateway=127.0.0.1:8080,127.0.0.1:8090 --targets node=127.0.0.1:9100 \\
        [--rename ai-gateway=llm-edge] [--interval 5s] [-o OUT]

A job given --targets gets one static_configs group with exactly those targets and the labels
of its first static group (e.g. `site`: every label the config gives its targets is kept); its
other static groups and service discovery blocks (file_sd_configs, ...) are dropped. The edit is
line-based (standard library only: no YAML module needed) and keeps comments; it expects the
block style of Prometheus' documentation. Check the result with `promtool check config`."""

import argparse
import os
import re
import sys

KEY = re.compile(r"^(\s*)(-\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
INTERVALS = ("scrape_interval", "evaluation_interval", "scrape_timeout")


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _blank(line):
    s = line.strip()
    return not s or s.startswith("#")


def _abs(path, base_dir):
    p = path.strip().strip("'\"")
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))


def _flow_list(items):
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _abs_list_value(value, base_dir):
    """`["a/*.yml", "b.yml"]` (flow) or `a.yml` (scalar) -> the same with absolute paths."""
    v = value.split("#", 1)[0].strip()
    if v.startswith("[") and v.endswith("]"):
        items = [i.strip() for i in v[1:-1].split(",") if i.strip()]
        return " " + _flow_list(_abs(i, base_dir) for i in items)
    if v:
        return f' "{_abs(v, base_dir)}"'
    return value


def rewrite(text, base_dir, targets=None, rename=None, interval=None):
    targets = targets or {}
    rename = rename or {}
    lines = text.splitlines()
    out = []
    section = None          # top-level key
    job = None              # current scrape job (original name)
    job_item_indent = None  # column of the job's "- " in scrape_configs
    seen_jobs = set()
    done_static = set()     # target jobs that got their static_configs
    i = 0

    def skip_block(start, key_indent):
        """Index of the first line after the block of the key at `key_indent` on line start."""
        j = start + 1
        while j < len(lines) and (_blank(lines[j]) or _indent(lines[j]) > key_indent):
            j += 1
        # keep trailing comments/blank lines that belong to what follows
        while j - 1 > start and _blank(lines[j - 1]):
            j -= 1
        return j

    def group_labels(start, stop, key_indent):
        """The `labels:` block of the first group of the static_configs block lines[start:stop]
        (key on line start-1 at key_indent), re-indented for a group written at key_indent + 2."""
        first = None
        for j in range(start, stop):
            if not _blank(lines[j]) and lines[j].lstrip().startswith("- "):
                first = j
                break
        if first is None:
            return []
        item = _indent(lines[first])
        # the group's lines, its "- " replaced by spaces: every key of the group at item + 2
        group = [" " * (item + 2) + lines[first].lstrip()[2:]]
        for ln in lines[first + 1:stop]:
            if not _blank(ln) and _indent(ln) <= item:
                break       # the next group
            group.append(ln)
        out_lines = []
        for k, ln in enumerate(group):
            m = KEY.match(ln)
            if m and not m.group(2) and m.group(3) == "labels" and _indent(ln) == item + 2:
                shift = (key_indent + 4) - _indent(ln)
                out_lines.append(" " * (key_indent + 4) + ln.lstrip())
                for sub in group[k + 1:]:
                    if _blank(sub):
                        continue
                    if _indent(sub) <= item + 2:
                        break
                    out_lines.append(" " * (_indent(sub) + shift) + sub.lstrip())
                break
        return out_lines

    def close_job():
        # a target job without any static_configs gets one at its end
        if job in targets and job not in done_static:
            ind = " " * (job_item_indent + 2)
            out.append(f"{ind}static_configs:")
            out.append(f"{ind}  - targets: {_flow_list(targets[job])}")
            done_static.add(job)

    while i < len(lines):
        line = lines[i]
        m = KEY.match(line)
        ind = _indent(line)

        if job is not None and not _blank(line) and ind <= job_item_indent:
            # the job's block ends here (next job, or the next top-level key)
            close_job()
            job = None

        if m and ind == 0 and not m.group(2):
            section = m.group(3)

        if m and interval and m.group(3) in INTERVALS and section in ("global", "scrape_configs"):
            out.append(f"{m.group(1)}{m.group(2) or ''}{m.group(3)}: {interval}")
            i += 1
            continue

        if section == "rule_files" and ind > 0 and line.lstrip().startswith("- "):
            item = line.lstrip()[2:].split("#", 1)[0]
            out.append(f'{" " * ind}- "{_abs(item, base_dir)}"')
            i += 1
            continue

        if section == "scrape_configs" and m and m.group(3) == "job_name":
            job = m.group(4).split("#", 1)[0].strip().strip("'\"")
            job_item_indent = ind
            seen_jobs.add(job)
            new = rename.get(job, job)
            out.append(f"{m.group(1)}{m.group(2) or ''}job_name: {new}")
            i += 1
            continue

        if job is not None and m and not m.group(2) and ind == job_item_indent + 2:
            key = m.group(3)
            if job in targets and (key == "static_configs" or key.endswith("_sd_configs")):
                end = skip_block(i, ind)
                if key == "static_configs" and job not in done_static:
                    out.append(f"{' ' * ind}static_configs:")
                    out.append(f"{' ' * ind}  - targets: {_flow_list(targets[job])}")
                    out.extend(group_labels(i + 1, end, ind))
                    done_static.add(job)
                i = end
                continue

        if job is not None and m and m.group(3) == "files" and job not in targets:
            if m.group(4).strip():
                out.append(f"{m.group(1)}{m.group(2) or ''}files:{_abs_list_value(m.group(4), base_dir)}")
                i += 1
                continue
            out.append(line)
            j = i + 1
            while j < len(lines) and (_blank(lines[j]) or _indent(lines[j]) > ind):
                item = lines[j].lstrip()
                if item.startswith("- "):
                    out.append(f'{" " * _indent(lines[j])}- "{_abs(item[2:].split("#", 1)[0], base_dir)}"')
                else:
                    out.append(lines[j])
                j += 1
            i = j
            continue

        out.append(line)
        i += 1

    if job is not None:
        close_job()
    missing = (set(targets) | set(rename)) - seen_jobs
    if missing:
        raise ValueError(f"no scrape job named {', '.join(sorted(missing))} in the config")
    return "\n".join(out) + "\n"


def _pairs(values, what):
    out = {}
    for v in values or []:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"--{what} wants JOB=VALUE, got {v!r}")
        out[name] = rest
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="monitoring/prometheus.yml")
    ap.add_argument("-o", "--out", help="output file (default: stdout)")
    ap.add_argument("--targets", action="append", metavar="JOB=HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--rename", action="append", metavar="JOB=NEW_NAME")
    ap.add_argument("--interval", help="scrape, evaluation interval and scrape timeout, e.g. 5s")
    ap.add_argument("--base-dir", help="directory relative paths are resolved against "
                                       "(default: the config file's)")
    a = ap.parse_args(argv)
    targets = {k: [t.strip() for t in v.split(",") if t.strip()]
               for k, v in _pairs(a.targets, "targets").items()}
    with open(a.config) as f:
        text = f.read()
    base = a.base_dir or os.path.dirname(os.path.abspath(a.config))
    try:
        res = rewrite(text, base, targets, _pairs(a.rename, "rename"), a.interval)
    except ValueError as e:
        raise SystemExit(f"{a.config}: {e}")
    if a.out:
        with open(a.out, "w") as f:
            f.write(res)
    else:
        sys.stdout.write(res)


if __name__ == "__main__":
    main()
