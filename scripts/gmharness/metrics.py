"""The /metrics exposition: promtool's check, a full parse (prometheus_client) into Samples, the
histogram invariants, a quick lookup of samples by name in raw bytes (big or partial pages), and
the streamed, timed scrape of the benchmarks."""

import re
import subprocess
import time

from .client import Conn, request_bytes


def promtool_check(text):
    """`promtool check metrics` must report nothing (it also lints names and HELP)."""
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        f"promtool check metrics: rc={r.returncode}\n{r.stdout}\n{r.stderr}"


class Samples(dict):
    """{(sample_name, frozenset(labels.items())): value} with helpers."""

    def get1(self, name, **labels):
        return self.get((name, frozenset(labels.items())), 0.0)

    def select(self, name, **labels):
        want = set(labels.items())
        return {k[1]: v for k, v in self.items() if k[0] == name and want <= set(k[1])}

    def total(self, name, **labels):
        return sum(self.select(name, **labels).values())


def parse(text):
    # Imported here: the benchmarks use this package with the standard library only.
    from prometheus_client.parser import text_string_to_metric_families

    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def histogram_consistent(samples, name):
    """Every histogram series of `name`: cumulative buckets monotone, +Inf == _count."""
    series = {}
    for (n, labels), v in samples.items():
        if n == name + "_bucket":
            d = dict(labels)
            le = d.pop("le")
            series.setdefault(frozenset(d.items()), []).append((float(le), v))
    for labels, buckets in series.items():
        buckets.sort()
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{name}{dict(labels)} buckets not monotone: {buckets}"
        assert buckets[-1][0] == float("inf")
        count = samples[(name + "_count", labels)]
        assert buckets[-1][1] == count, f"{name}{dict(labels)} +Inf {buckets[-1][1]} != count {count}"
    return len(series)


def settle(n, pred, timeout=5.0):
    """Scrapes nginx `n` until pred(samples) holds (nginx runs the log phase just after sending
    the response, so a client can be a hair faster than the recording). Returns the last scrape
    either way: the caller's exact assertions then report any difference."""
    deadline = time.time() + timeout
    while True:
        m = n.metrics()
        if pred(m) or time.time() >= deadline:
            return m
        time.sleep(0.05)


def samples_named(body, name):
    """[(labels text, value)] of the samples called exactly `name` in a page (bytes), which may
    be a page's tail only."""
    out = []
    for m in re.finditer(rb"^" + re.escape(name.encode()) + rb"(\{[^\n]*\})? (\S+)$", body, re.M):
        out.append(((m.group(1) or b"").decode(), float(m.group(2))))
    return out


def sample_value(body, name, default=None):
    s = samples_named(body, name)
    return s[0][1] if s else default


def scrape_timed(port, path="/metrics", conn=None, keep_tail=None):
    """One /metrics scrape, streamed: dict(ttfb_s, total_s, bytes, samples, comments, body).
    `body` is the whole page, or only its last `keep_tail` bytes (big pages: the self-metrics
    are at the end). samples = non-comment lines."""
    own = conn is None
    c = conn or Conn(port)
    try:
        t0 = time.perf_counter()
        c.sock.sendall(request_bytes(path))
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        ttfb = time.perf_counter() - t0
        status, head = c.read_head()
        head = b"\r\n".join(head)
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        chunked = re.search(rb"(?im)^transfer-encoding:\s*chunked", head) is not None
        kept = []
        kept_len = 0
        lines = comments = 0
        prev = b"\n"  # the byte before the current chunk
        pieces = c.body_chunked() if chunked else c.body(length)
        length = 0
        for chunk in pieces:
            length += len(chunk)
            lines += chunk.count(b"\n")
            comments += chunk.count(b"\n#") + (1 if prev == b"\n" and chunk[:1] == b"#" else 0)
            prev = chunk[-1:]
            kept.append(chunk)
            kept_len += len(chunk)
            if keep_tail is not None:
                while len(kept) > 1 and kept_len - len(kept[0]) >= keep_tail:
                    kept_len -= len(kept.pop(0))
        total = time.perf_counter() - t0
    finally:
        if own:
            c.close()
    if status != 200:
        raise RuntimeError(f"{path} returned {status}")
    if length and prev != b"\n":
        lines += 1
    body = b"".join(kept)
    return {"ttfb_s": ttfb, "total_s": total, "bytes": length, "samples": lines - comments,
            "comments": comments, "body": body}
